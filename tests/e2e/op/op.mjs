// A real OpenID Provider for tokengate's end-to-end tests: panva/oidc-provider v9 on
// 127.0.0.1, issuing RS256 `at+jwt` access tokens (RFC 9068) that tokengate verifies with
// the provider's JWKS, and opaque access tokens that tokengate introspects (RFC 7662) and
// that the tests revoke (RFC 7009).
//
//   node tests/e2e/op/op.mjs PORT
//
// Prints `oidc-provider ready <issuer>` on stdout once it listens, and one line
// `oidc-provider served jwks` / `oidc-provider served discovery` per request to those
// endpoints, so that a test can count how often tokengate fetched the keys.
//
// Issuer: http://127.0.0.1:PORT (discovery names the JWKS, token, introspection and
// revocation endpoints). Clients (client_secret_basic or client_secret_post), all with
// the client_credentials grant and scopes "read write":
//   client / client-secret : no extra claims (the user is its client_id, in `sub`)
//   alice  / alice-secret  : preferred_username alice, email alice@example.com,
//                            groups [developers, ops]
//   bob    / bob-secret    : preferred_username bob, email bob@example.org, groups [guests]
// and identities an attacker could get an IdP to issue (a self-service profile, a group
// name chosen in a directory), each client with the same kind of secret:
//   tabbed     : groups that are `system:masters` once whitespace or controls are gone
//                ("\tsystem:masters", " system:masters", NUL, NEL, "SYSTEM:Masters "),
//                and developers
//   sysuser    : preferred_username "\tsystem:admin"
//   unverified : preferred_username carol, email carol@example.com, email_verified false
//   twoat      : preferred_username eve, email "eve@evil.example@example.com"
//   comma      : preferred_username frank, groups [ops, "a,admins"]
//   spaced     : preferred_username grace, groups "finance ops" (one string)
//   rs     / rs-secret     : the resource server (tokengate): introspection only
//   tokengate              : with OP_BACKCHANNEL_LOGOUT_URI set, the relying party that
//                            receives OpenID Connect Back-Channel Logout tokens there
//                            (features.backchannelLogout; `aud` tokengate, no `sid`
//                            since backchannel_logout_session_required is false)
// The extra claims (extraTokenClaims) go into JWT access tokens and into introspection
// answers for opaque ones; a client-credentials token stands in for a user's token.
// Resources (RFC 8707 `resource` parameter):
//   https://opaque.local (default) -> opaque access tokens, audience https://opaque.local
//   https://api.local              -> RS256 `at+jwt` access tokens, audience https://api.local
// oidc-provider refuses to introspect JWT access tokens, hence opaque ones for that.
//
// Back-channel logout: `POST /e2e/backchannel-logout?sub=SUB[&sid=SID]` makes the provider
// log SUB out at client `tokengate`, with its own Client#backchannelLogout (what its
// end_session endpoint calls for every client of the session): it signs the logout token
// and posts it to OP_BACKCHANNEL_LOGOUT_URI, and answers 204 once that answered 200, or
// 502 with the error.
//
// Signing key: a fresh RSA key at every start, with kid $OP_KID (default `e2e-1`): restart
// with another OP_KID to rotate. With OP_JWKS_FILE, the private JWKS in that file is used
// if it exists, and otherwise generated and written there.
import fs from 'node:fs';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const port = Number(process.argv[2]);
if (!Number.isInteger(port) || port <= 0 || port > 65535) {
  console.error('usage: node op.mjs PORT');
  process.exit(64);
}
const issuer = `http://127.0.0.1:${port}`;

async function generateJwks(kid) {
  const { privateKey } = await jose.generateKeyPair('RS256', { extractable: true });
  const jwk = await jose.exportJWK(privateKey);
  Object.assign(jwk, { kid, alg: 'RS256', use: 'sig' });
  return { keys: [jwk] };
}

async function signingKeys() {
  const kid = process.env.OP_KID || 'e2e-1';
  const file = process.env.OP_JWKS_FILE;
  if (!file) return generateJwks(kid);
  if (fs.existsSync(file)) return JSON.parse(fs.readFileSync(file, 'utf8'));
  const jwks = await generateJwks(kid);
  fs.writeFileSync(file, JSON.stringify(jwks), { mode: 0o600 });
  return jwks;
}

const jwks = await signingKeys();

const RESOURCES = {
  'https://opaque.local': { scope: 'read write', audience: 'https://opaque.local',
                            accessTokenTTL: 3600, accessTokenFormat: 'opaque' },
  'https://api.local': { scope: 'read write', audience: 'https://api.local', accessTokenTTL: 3600,
                         accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } },
};

// The identity each client's tokens carry, as an IdP puts a user's into access tokens.
const IDENTITIES = {
  alice: { preferred_username: 'alice', email: 'alice@example.com', groups: ['developers', 'ops'] },
  bob: { preferred_username: 'bob', email: 'bob@example.org', groups: ['guests'] },
  tabbed: {
    preferred_username: 'tabbed',
    groups: ['\tsystem:masters', ' system:masters', 'system:masters\u0000', '\u0085system:masters',
             'SYSTEM:Masters ', 'developers'],
  },
  sysuser: { preferred_username: '\tsystem:admin', groups: ['developers'] },
  unverified: { preferred_username: 'carol', email: 'carol@example.com', email_verified: false,
                groups: ['guests'] },
  twoat: { preferred_username: 'eve', email: 'eve@evil.example@example.com', groups: ['guests'] },
  comma: { preferred_username: 'frank', groups: ['ops', 'a,admins'] },
  spaced: { preferred_username: 'grace', groups: 'finance ops' },
};

const grantClient = (id) => ({
  client_id: id, client_secret: `${id}-secret`, grant_types: ['client_credentials'],
  redirect_uris: [], response_types: [], scope: 'read write',
});

const provider = new Provider(issuer, {
  clients: [
    grantClient('client'),
    grantClient('alice'),
    grantClient('bob'),
    ...['tabbed', 'sysuser', 'unverified', 'twoat', 'comma', 'spaced'].map(grantClient),
    { client_id: 'rs', client_secret: 'rs-secret', grant_types: [], redirect_uris: [],
      response_types: [] },
    ...(process.env.OP_BACKCHANNEL_LOGOUT_URI ? [{
      client_id: 'tokengate', client_secret: 'tokengate-secret', grant_types: [],
      redirect_uris: [], response_types: [],
      backchannel_logout_uri: process.env.OP_BACKCHANNEL_LOGOUT_URI,
      backchannel_logout_session_required: false,
    }] : []),
  ],
  jwks,
  scopes: ['openid', 'read', 'write'],
  extraTokenClaims: (ctx, token) => IDENTITIES[token.clientId],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    backchannelLogout: { enabled: true },
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
  // The provider's outgoing requests (back-channel logout) go to tokengate on loopback,
  // which its SSRF protection refuses as a special-use address: this test provider
  // lives on loopback only, so the plain fetch is used.
  fetch: (url, options) => {
    const { dispatcher, ...plain } = options;
    return globalThis.fetch(url, plain);
  },
});
provider.proxy = false;
provider.on('server_error', (ctx, err) => console.error('server_error', err));

// One stdout line per key fetch, for tests that count them.
provider.use(async (ctx, next) => {
  if (ctx.path === '/e2e/backchannel-logout' && ctx.method === 'POST') {
    const sub = ctx.query.sub;
    const client = await provider.Client.find('tokengate');
    if (!sub || !client) {
      ctx.status = 400;
      ctx.body = 'sub and a configured tokengate client are required';
      return;
    }
    try {
      await client.backchannelLogout(sub, ctx.query.sid);
      ctx.status = 204;
    } catch (err) {
      ctx.status = 502;
      ctx.body = `${err.message}: ${err.cause ? err.cause.message || err.cause : ''}`;
    }
    return;
  }
  await next();
  if (ctx.path === '/jwks') console.log('oidc-provider served jwks');
  if (ctx.path === '/.well-known/openid-configuration') {
    console.log('oidc-provider served discovery');
  }
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`oidc-provider ready ${issuer} kid=${jwks.keys.map((key) => key.kid).join(',')}`);
});
server.on('error', (err) => {
  console.error(`oidc-provider cannot listen on ${issuer}: ${err.message}`);
  process.exit(1);
});
// The test harness kills this process; exit promptly on a polite signal too.
for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));
