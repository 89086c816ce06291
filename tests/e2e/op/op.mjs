// A real OpenID Provider for tokengate's end-to-end tests: panva/oidc-provider v9 on
// 127.0.0.1, issuing opaque access tokens that tokengate introspects (RFC 7662) and that
// the tests revoke (RFC 7009).
//
//   node tests/e2e/op/op.mjs PORT
//
// Prints `oidc-provider ready <issuer>` on stdout once it listens.
//
// Issuer: http://127.0.0.1:PORT (discovery names the JWKS, token, introspection and
// revocation endpoints). Clients (client_secret_basic or client_secret_post):
//   client / client-secret : client_credentials, scopes "read write"
//   rs     / rs-secret     : the resource server (tokengate): introspection only
// Resources (RFC 8707 `resource` parameter):
//   https://opaque.local (default) -> opaque access tokens, audience https://opaque.local
//   https://api.local              -> RS256 `at+jwt` access tokens (RFC 9068)
// oidc-provider refuses to introspect JWT access tokens, hence opaque ones for this test.
// The signing key is generated at every start and never written to disk.
import Provider from 'oidc-provider';
import * as jose from 'jose';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node op.mjs PORT');
  process.exit(64);
}
const issuer = `http://127.0.0.1:${port}`;

const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
const jwk = await jose.exportJWK(privateKey);
Object.assign(jwk, { kid: 'e2e-1', alg: 'RS256', use: 'sig' });

const RESOURCES = {
  'https://opaque.local': { scope: 'read write', audience: 'https://opaque.local',
                            accessTokenTTL: 3600, accessTokenFormat: 'opaque' },
  'https://api.local': { scope: 'read write', audience: 'https://api.local', accessTokenTTL: 3600,
                         accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
};

const provider = new Provider(issuer, {
  clients: [
    { client_id: 'client', client_secret: 'client-secret', grant_types: ['client_credentials'],
      redirect_uris: [], response_types: [], scope: 'read write' },
    { client_id: 'rs', client_secret: 'rs-secret', grant_types: [], redirect_uris: [],
      response_types: [] },
  ],
  jwks: { keys: [jwk] },
  scopes: ['openid', 'read', 'write'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://opaque.local',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        const info = RESOURCES[resourceIndicator];
        if (!info) throw new Error('unknown resource'); // -> invalid_target
        return info;
      },
    },
  },
  ttl: { ClientCredentials: 3600 },
});
provider.proxy = false;
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ready ${issuer}`);
});
server.on('error', (err) => {
  console.error(`oidc-provider cannot listen on ${issuer}: ${err.message}`);
  process.exit(1);
});
// The test harness kills this process; exit promptly on a polite signal too.
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
