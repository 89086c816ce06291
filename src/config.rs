//! Settings: one YAML or TOML file, every key overridable by `TOKENGATE__SECTION__KEY`
//! environment variables, validated once at start-up so that nothing is discovered
//! to be wrong while serving a request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::request::{PathParameters, ProxyHeaders, TokenSource};

mod revocation;
pub use revocation::{
    BackchannelLogoutSettings, RedisFeedSettings, RevocationSecrets, RevocationSettings,
};

/// Prefix of environment overrides: `TOKENGATE__CACHE__MAX_ENTRIES=5000`.
pub const ENV_PREFIX: &str = "TOKENGATE";

/// A configuration problem, reported as one line naming the key and the reason.
#[derive(Debug, thiserror::Error)]
#[error("config error: {key}: {reason}")]
pub struct ConfigError {
    /// Dotted path of the offending key, e.g. `issuers[0].algorithms`.
    pub key: String,
    /// Why the value is refused.
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Address of the auth listener that the proxies call (`/auth`, `/ext-authz/…`):
    /// `host:port`, or `unix:/absolute/path` for a unix socket (a proxy in the same pod).
    #[serde(default = "defaults::listen")]
    pub listen: ListenAddress,
    /// Address of the admin listener (`/healthz`, `/readyz`, `/metrics`); keep it
    /// off the proxy-facing network. `host:port` or `unix:/absolute/path`.
    #[serde(default = "defaults::admin_listen")]
    pub admin_listen: ListenAddress,
    /// Address of the gRPC listener (Envoy's `envoy.service.auth.v3.Authorization/Check`
    /// and `grpc.health.v1`): `host:port` or `unix:/absolute/path`; unset, there is none.
    #[serde(default)]
    pub grpc_listen: Option<ListenAddress>,
    /// The gRPC contract: HTTP/2 limits and what an answer carries.
    #[serde(default)]
    pub grpc: GrpcSettings,
    /// Status of an allowed request on `/auth` (nginx and Traefik accept any 2xx).
    #[serde(default = "defaults::success_status")]
    pub success_status: u16,
    /// HTTP worker threads; defaults to the number of CPUs.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Connection and request limits of the listeners.
    #[serde(default)]
    pub server: ServerSettings,
    /// Which proxy's original-request headers `/auth` trusts: `ingress_nginx`, `nginx`,
    /// `traefik`, `none` (only Envoy calls, on `/ext-authz/…`) or `auto` (whichever is
    /// present: safe only while the proxy sets its headers on every request). Required
    /// as soon as a rule matches on hosts, paths or methods: a client can send another
    /// proxy's headers, so the rules must not trust a guess.
    #[serde(default)]
    pub proxy_headers: Option<ProxyHeaders>,
    /// `;` path parameters (`/admin;x`): `refuse` (400, the default) or `strip` (cut off
    /// each segment's `;…` before matching, as Java servlet containers route).
    #[serde(default)]
    pub path_parameters: PathParameters,
    /// Route rules matched on the original request; the first match wins.
    #[serde(default)]
    pub rules: Vec<RuleSettings>,
    /// The token issuers this instance trusts, chosen by exact `iss` match.
    #[serde(default)]
    pub issuers: Vec<IssuerSettings>,
    /// Where tokens are read from, and how large they may be.
    #[serde(default)]
    pub token: TokenSettings,
    /// How claims become identity headers.
    #[serde(default)]
    pub identity: IdentitySettings,
    /// The verified-token cache.
    #[serde(default)]
    pub cache: CacheSettings,
    /// The HTTP client used for discovery and JWKS.
    #[serde(default)]
    pub http_client: HttpClientSettings,
    /// Log output.
    #[serde(default)]
    pub log: LogSettings,
    /// Graceful shutdown on SIGTERM/SIGINT.
    #[serde(default)]
    pub shutdown: ShutdownSettings,
    /// Revocation: back-channel logout, the operator's revoke, the Redis feed.
    #[serde(default)]
    pub revocation: RevocationSettings,
}

/// Connection and request limits. The defaults fit the shipped 128 MiB memory limit: an
/// open connection holds about 10 KiB, and about 17 KiB once it has served a request (the
/// HTTP layer's read and write buffers), so 1024 of them stay under 18 MiB. glibc keeps
/// that memory after the connections close and reuses it for the next ones, so the peak
/// is what counts, and `max_connections` bounds it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Most open connections on the auth listener, over all workers. Beyond it, new
    /// connections wait in the kernel's accept queue until one closes; the open ones
    /// keep being served (past the accept queue's 1024, the kernel drops new SYNs and
    /// clients retry them). Proxies keep a small pool of keep-alive connections, so a few
    /// hundred is plenty for one replica.
    pub max_connections: usize,
    /// Most open connections on the admin listener.
    pub admin_max_connections: usize,
    /// How long an idle keep-alive connection stays open. Longer than the proxies' own
    /// idle timeout (nginx `keepalive_timeout` 60 s), so that the proxy closes first and
    /// never sends a request on a connection we are closing.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Time a new connection has to send its first request head; a client that trickles
    /// its headers (slowloris) is disconnected after it.
    #[serde(with = "humantime_serde")]
    pub client_request_timeout: Duration,
    /// Largest request head, every header name and value together, in bytes; a larger
    /// one gets 431 before any parsing. (The HTTP layer refuses heads over 128 KiB.)
    pub max_header_bytes: usize,
    /// Most request headers; more get 431. (The HTTP layer refuses more than 96.)
    pub max_headers: usize,
    /// Permissions of every unix socket tokengate creates, in octal: who may connect
    /// (connecting needs write permission). `0660`: the owner and the group, e.g. a
    /// proxy container sharing the pod's `fsGroup`.
    pub unix_socket_mode: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            admin_max_connections: 64,
            keep_alive: Duration::from_secs(75),
            client_request_timeout: Duration::from_secs(5),
            max_header_bytes: 32 * 1024,
            max_headers: 64,
            unix_socket_mode: "0660".to_owned(),
        }
    }
}

/// The gRPC contract (`grpc_listen`): Envoy's ext_authz `Check` over HTTP/2.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcSettings {
    /// Most concurrent streams (checks in flight) on one HTTP/2 connection; Envoy opens
    /// few connections and multiplexes every check over them.
    pub max_concurrent_streams: u32,
    /// How often an idle connection is probed with an HTTP/2 PING, so that a peer that
    /// vanished (a node gone, a NAT entry dropped) does not hold a connection forever.
    #[serde(with = "humantime_serde")]
    pub keep_alive_interval: Duration,
    /// How long a PING may go unanswered before the connection is closed.
    #[serde(with = "humantime_serde")]
    pub keep_alive_timeout: Duration,
    /// Also remove the client's `Authorization` header on an allow, so that the upstream
    /// never sees the token (it then cannot forward it either).
    pub remove_authorization: bool,
    /// The key under which an answer's `dynamic_metadata` sits in Envoy's
    /// `envoy.filters.http.ext_authz` namespace (access logs, RBAC, rate limits:
    /// `%DYNAMIC_METADATA(envoy.filters.http.ext_authz:tokengate:user)%`).
    pub metadata_namespace: String,
}

impl Default for GrpcSettings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1024,
            keep_alive_interval: Duration::from_secs(30),
            keep_alive_timeout: Duration::from_secs(10),
            remove_authorization: false,
            metadata_namespace: "tokengate".to_owned(),
        }
    }
}

/// Where a listener listens: a TCP address, or a unix socket (`unix:/absolute/path`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ListenAddress {
    /// `host:port` with an IP address; port 0 lets the kernel choose.
    Tcp(SocketAddr),
    /// An absolute path: a relative one would depend on the working directory.
    Unix(PathBuf),
}

/// The prefix of a unix socket address, as nginx writes it (`http://unix:/path:`).
const UNIX_PREFIX: &str = "unix:";

impl FromStr for ListenAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if let Some(path) = text.strip_prefix(UNIX_PREFIX) {
            let path = PathBuf::from(path);
            if !path.is_absolute() || path.file_name().is_none() {
                return Err(format!(
                    "'{text}': a unix socket needs an absolute path to a file (unix:/run/tokengate/auth.sock)"
                ));
            }
            return Ok(ListenAddress::Unix(path));
        }
        text.parse().map(ListenAddress::Tcp).map_err(|_| {
            format!("'{text}' is neither an IP address with a port (0.0.0.0:8080) nor unix:/absolute/path")
        })
    }
}

impl TryFrom<String> for ListenAddress {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl std::fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddress::Tcp(address) => write!(f, "{address}"),
            ListenAddress::Unix(path) => write!(f, "{UNIX_PREFIX}{}", path.display()),
        }
    }
}

/// Graceful shutdown: readiness turns off at once, then the listeners drain.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownSettings {
    /// How long to keep serving after `/readyz` turned not-ready, so that load balancers
    /// and Kubernetes endpoints stop sending new requests first.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// The whole shutdown, drain delay included, ends within this; keep it below the
    /// pod's `terminationGracePeriodSeconds` (30 s by default).
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
}

impl Default for ShutdownSettings {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_secs(5),
            grace: Duration::from_secs(20),
        }
    }
}

/// Level of the audit line of an allowed request.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AllowLogLevel {
    #[default]
    Info,
    Debug,
    /// No line for allowed requests: busy sites keep only denials.
    Off,
}

/// One trusted issuer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// The issuer identifier: compared byte for byte with the token's `iss`, and the base of
    /// OIDC discovery (`<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    /// Short name used in logs and metric labels; defaults to the issuer URL.
    #[serde(default)]
    pub name: Option<String>,
    /// Accepted audiences: the token's `aud` must contain at least one of them.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Allow-list of signature algorithms (`RS256`, `PS256`, `ES256`, `EdDSA`, …).
    #[serde(default = "defaults::algorithms")]
    pub algorithms: Vec<String>,
    /// JWKS URL; when set, discovery is skipped.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Required JOSE `typ` header, e.g. `at+jwt` for RFC 9068 access tokens (compared
    /// case-insensitively, with or without the `application/` prefix).
    #[serde(default)]
    pub required_typ: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "defaults::leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// Key refresh timing.
    #[serde(default)]
    pub keys: KeyRefreshSettings,
    /// RFC 7662 token introspection at this issuer: for opaque tokens (see
    /// `token.opaque_issuer`) and, with `introspect_jwts`, for instant revocation of JWTs.
    #[serde(default)]
    pub introspection: Option<IntrospectionSettings>,
    /// Use the email only when the token (or introspection answer) says
    /// `email_verified: true`. An `email_verified` that is present and not `true` always
    /// drops the email (no email header, email rules and `impersonation_map` do not
    /// match); this decides what a missing claim means. Turn it on for issuers that send
    /// the claim, so that a token minted without it cannot pass as verified.
    #[serde(default)]
    pub require_email_verified: bool,
    /// This issuer gives a groups claim that is one string as a space-separated list.
    /// Off, the string is one group: `"Finance Admins"` is not the group `Admins`.
    #[serde(default)]
    pub space_separated_groups: bool,
    /// OpenID Connect Back-Channel Logout from this issuer (off when absent).
    #[serde(default)]
    pub backchannel_logout: Option<BackchannelLogoutSettings>,
}

/// How tokengate authenticates to the introspection endpoint (RFC 7662 §2.1 requires
/// some authentication; these are the two client-secret methods of RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// HTTP Basic with the form-urlencoded client id and secret.
    #[default]
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
}

/// RFC 7662 token introspection at one issuer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionSettings {
    /// Introspection endpoint; by default the `introspection_endpoint` of the issuer's
    /// discovery document. Required when `jwks_uri` is set (discovery is then skipped).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Our client id at the issuer.
    pub client_id: String,
    /// File holding the client secret (a trailing newline is ignored). Set exactly one
    /// of `client_secret_file` and `client_secret_env`. Read at start-up and on every reload.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Environment variable holding the client secret.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// `client_secret_basic` (default) or `client_secret_post`.
    #[serde(default)]
    pub auth_method: ClientAuthMethod,
    /// Whole-call timeout. Keep it well below the proxy's own timeout for the auth
    /// subrequest, so that a slow issuer gives a clean 503 rather than a proxy error.
    #[serde(default = "defaults::introspection_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an `active: true` answer is trusted (never past its `exp`). This is the
    /// revocation window: a token revoked at the issuer keeps passing for at most this long.
    #[serde(default = "defaults::positive_ttl", with = "humantime_serde")]
    pub positive_ttl: Duration,
    /// How long an `active: false` answer (or one whose claims we refuse) is kept, so that
    /// a client retrying a dead token does not hammer the issuer.
    #[serde(default = "defaults::negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
    /// Also introspect this issuer's JWTs once their signature verifies, so that a JWT
    /// revoked at the issuer is refused after at most `positive_ttl`, not at its `exp`.
    #[serde(default)]
    pub introspect_jwts: bool,
    /// Refuse an `active: true` answer that names no `aud`. RFC 7662 makes `aud` optional;
    /// without this, a token the issuer gave to another of its services passes too.
    #[serde(default)]
    pub require_audience: bool,
    /// Most calls to this issuer's endpoint in flight at once. A request that needs one
    /// more waits for a free slot (first come, first served) instead of being refused.
    #[serde(default = "defaults::introspection_max_in_flight")]
    pub max_in_flight: usize,
    /// Most requests waiting for a free slot; beyond it a request is refused at once (503).
    /// Size it above the number of concurrent requests a flood can reach: a queued real
    /// token waits its turn behind the garbage, a refused one gets 503. `0`: no waiting.
    #[serde(default = "defaults::introspection_max_waiting")]
    pub max_waiting: usize,
    /// Longest wait for a free slot; then 503. The answer takes up to `max_wait + timeout`:
    /// keep that below the proxy's timeout for the auth subrequest.
    #[serde(default = "defaults::introspection_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
}

/// A client secret read at start-up. `Debug` never shows it, so it cannot leak through a
/// `{:?}` in a log line or a panic message; there is no `Display`. Compared only to tell
/// whether a reload changed it.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientSecret(String);

impl ClientSecret {
    /// The secret itself, for building the one request that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// When and how often the issuer's JWKS is fetched.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct KeyRefreshSettings {
    /// Refresh period when the JWKS response carries no `Cache-Control: max-age`, and the
    /// upper bound when it does.
    #[serde(with = "humantime_serde")]
    pub refresh_interval: Duration,
    /// Lower bound on the refresh period, whatever `max-age` says.
    #[serde(with = "humantime_serde")]
    pub min_refresh_interval: Duration,
    /// A token with an unknown `kid` triggers at most one JWKS fetch per this period, so
    /// that a flood of forged `kid`s cannot turn into a flood of fetches at the issuer.
    #[serde(with = "humantime_serde")]
    pub unknown_kid_cooldown: Duration,
    /// How long the last good keys keep serving while refreshes fail; past it, tokens of
    /// this issuer get 503 (no verdict) rather than trusting keys that may be revoked.
    #[serde(with = "humantime_serde")]
    pub max_stale: Duration,
}

impl Default for KeyRefreshSettings {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(300),
            min_refresh_interval: Duration::from_secs(30),
            unknown_kid_cooldown: Duration::from_secs(30),
            max_stale: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where tokens come from.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenSettings {
    /// Tried in order: `authorization` (Bearer), `header:<name>`, `cookie:<name>`.
    pub sources: Vec<String>,
    /// Tokens longer than this are refused before any parsing or crypto.
    pub max_length: usize,
    /// The issuer (its `issuer` URL or `name`) whose introspection endpoint is asked about
    /// tokens that are not JWTs. An opaque token names no issuer, so this is configured;
    /// without it, a token that is not a JWT is refused as malformed.
    pub opaque_issuer: Option<String>,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            sources: vec!["authorization".to_owned()],
            max_length: 8 * 1024,
            opaque_issuer: None,
        }
    }
}

/// Claims → identity headers.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IdentitySettings {
    /// Claim for `X-Auth-Request-User` (dotted path); falls back to `sub`.
    pub user_claim: String,
    /// Claim for `X-Auth-Request-Email`.
    pub email_claim: String,
    /// Claim for `X-Auth-Request-Groups` (dotted path, e.g. `realm_access.roles`): a list,
    /// or one string (one group, unless the issuer has `space_separated_groups`).
    pub groups_claim: String,
    /// Longest value of one identity header, in bytes. Values are never cut: a longer user
    /// or email refuses the answer (`identity_too_large`), a longer group or claim value is
    /// left out.
    pub max_header_length: usize,
    /// Budget for all identity headers of one answer together (names and values). Over
    /// it the answer is 403 with a log line, instead of nginx failing with a 500 because
    /// the headers overflow its `proxy_buffer_size` (4 KiB by default).
    pub max_headers_bytes: usize,
    /// Extra headers from claims, e.g. `{header: X-Auth-Request-Tenant, claim: tenant_id}`.
    pub claim_headers: Vec<ClaimHeaderSettings>,
    /// Which groups are sent upstream (policy checks always see every group).
    pub groups_filter: Option<GroupsFilterSettings>,
    /// `headers` (`X-Auth-Request-*`) or `kubernetes_impersonation`
    /// (`Impersonate-User` and one `Impersonate-Group` line per group).
    pub output: IdentityOutput,
    /// For `kubernetes_impersonation`: identities by email, replacing the token's user
    /// and groups.
    pub impersonation_map: Vec<ImpersonationEntry>,
}

/// One extra identity header.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClaimHeaderSettings {
    /// Response header name.
    pub header: String,
    /// Claim name or dotted path.
    pub claim: String,
}

/// Keeps only matching groups in the groups header: with hundreds of directory groups,
/// the header would otherwise outgrow the proxy's buffers.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GroupsFilterSettings {
    /// Keep groups starting with one of these.
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Keep groups matching this regular expression.
    #[serde(default)]
    pub pattern: Option<String>,
}

/// How the identity is handed to the upstream.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IdentityOutput {
    #[default]
    Headers,
    KubernetesImpersonation,
}

/// One identity-map entry for Kubernetes impersonation.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ImpersonationEntry {
    /// Matched case-insensitively against the token's email, only when that email is
    /// usable (one plain address, not marked unverified: see `require_email_verified`).
    pub email: String,
    /// Kubernetes user name.
    pub user: String,
    /// Kubernetes groups.
    #[serde(default)]
    pub groups: Vec<String>,
}

/// One route rule. Conditions left empty match anything; a condition on a part of the
/// original request the proxy did not send never matches.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RuleSettings {
    /// Name for logs; defaults to `rules[N]`.
    #[serde(default)]
    pub name: Option<String>,
    /// Hosts (`app.example.com`, or `*.example.com` for subdomains).
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefixes (`/admin` matches `/admin` and `/admin/…`) or globs (`/api/*/admin`,
    /// `/docs/**`), matched on the normalised path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods (`GET`, `POST`, …).
    #[serde(default)]
    pub methods: Vec<String>,
    /// Let matching requests through with no token and no identity headers.
    #[serde(default)]
    pub allow_anonymous: bool,
    /// Refuse matching requests, whatever the token.
    #[serde(default)]
    pub deny: bool,
    /// Let CORS preflights (`OPTIONS` + `Origin` + `Access-Control-Request-Method`)
    /// through without a token.
    #[serde(default)]
    pub allow_cors_preflight: bool,
    /// The identity must be in one of these groups.
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// The email must be one of these.
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    /// The email's domain must be one of these (`*.example.com` for subdomains).
    #[serde(default)]
    pub allowed_email_domains: Vec<String>,
    /// Every one of these scopes must be in `scope`/`scp`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            user_claim: "preferred_username".to_owned(),
            email_claim: "email".to_owned(),
            groups_claim: "groups".to_owned(),
            max_header_length: 2048,
            max_headers_bytes: 3072,
            claim_headers: Vec::new(),
            groups_filter: None,
            output: IdentityOutput::Headers,
            impersonation_map: Vec::new(),
        }
    }
}

/// The verified-token cache.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSettings {
    /// Memory the verified-token cache may hold, in bytes. Each entry counts what it
    /// really holds: its identity (user, email, groups, scopes and header values), the
    /// verdict, and the cache's own bookkeeping (measured: about 1.2 KB for a 1 KB token,
    /// 6.8 KB for a 7 KB token whose bulk is groups). The default, 32 MiB, fits the
    /// shipped Kubernetes memory limit (128 MiB) with the introspection cache, the
    /// connection limit and headroom; size them together (docs/performance.md).
    pub max_bytes: u64,
    /// Most tokens kept, a second bound beside `max_bytes`: an entry counts for at least
    /// `max_bytes / max_entries` bytes.
    pub max_entries: u64,
    /// Longest time a verified token is trusted without re-checking its signature (it
    /// never outlives the token's `exp` either). A key refresh that withdraws a key (by
    /// `kid` or by material) drops the issuer's cached verdicts at once, whatever this says.
    #[serde(with = "humantime_serde")]
    pub max_ttl: Duration,
    /// Memory the introspection cache may hold, in bytes, counted like `max_bytes`: a
    /// positive answer weighs its identity like a verified token, a negative one only the
    /// cache's bookkeeping. With `introspect_jwts`, every JWT also has an answer here.
    pub introspection_max_bytes: u64,
    /// Most introspection answers kept (positive and negative), a second bound beside
    /// `introspection_max_bytes`.
    pub introspection_max_entries: u64,
    /// Let a caching proxy (nginx `proxy_cache`, ingress-nginx `auth-cache-key`) keep
    /// allows whose verdict depended on the request: any rule on hosts, paths or methods,
    /// or requirements in the auth URL. Off by default, since a cache keyed on the token
    /// alone would then serve one route's allow for another; turn it on only with a cache
    /// key holding method, host, URI and token.
    pub proxy_cache_route_verdicts: bool,
}

impl Default for CacheSettings {
    fn default() -> Self {
        Self {
            max_bytes: 32 * 1024 * 1024,
            max_entries: 100_000,
            max_ttl: Duration::from_secs(300),
            introspection_max_bytes: 16 * 1024 * 1024,
            introspection_max_entries: 100_000,
            proxy_cache_route_verdicts: false,
        }
    }
}

/// The outbound HTTP client (discovery, JWKS).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpClientSettings {
    /// TCP + TLS connect timeout.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Whole-request timeout.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// PEM bundle of extra CA certificates, for issuers behind an internal CA.
    pub ca_file: Option<PathBuf>,
    /// Replaced by per-issuer limits (`issuers[].introspection.max_in_flight`,
    /// `max_waiting`, `max_wait`): setting it is a configuration error that says so.
    pub introspection_max_in_flight: Option<usize>,
}

impl HttpClientSettings {
    /// The extra CA certificates of `ca_file` (none when unset); an unreadable or empty
    /// bundle is a configuration error.
    pub fn ca_certificates(&self) -> Result<Vec<reqwest::Certificate>, ConfigError> {
        let Some(ca_file) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let key = "http_client.ca_file";
        let pem = std::fs::read(ca_file)
            .map_err(|e| ConfigError::new(key, format!("{}: {e}", ca_file.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ConfigError::new(key, format!("not a PEM bundle: {e}")))?;
        if certs.is_empty() {
            return Err(ConfigError::new(key, "holds no certificate"));
        }
        Ok(certs)
    }
}

impl Default for HttpClientSettings {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            ca_file: None,
            introspection_max_in_flight: None,
        }
    }
}

/// Log format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// JSON when stdout is not a terminal, pretty otherwise.
    #[default]
    Auto,
    Json,
    Pretty,
}

/// Log output.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `auto`, `json` or `pretty`.
    pub format: LogFormat,
    /// `RUST_LOG`-style filter, used when `RUST_LOG` is not set.
    pub filter: String,
    /// Level of the audit line of an allowed request: `info`, `debug` or `off`.
    /// Denials are always logged at `info` (503s at `warn`).
    pub allow_level: AllowLogLevel,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Auto,
            filter: "info,actix_server=warn".to_owned(),
            allow_level: AllowLogLevel::Info,
        }
    }
}

mod defaults {
    use super::*;

    pub fn listen() -> ListenAddress {
        ListenAddress::Tcp(SocketAddr::from(([0, 0, 0, 0], 8080)))
    }
    pub fn admin_listen() -> ListenAddress {
        ListenAddress::Tcp(SocketAddr::from(([0, 0, 0, 0], 9090)))
    }
    pub fn success_status() -> u16 {
        202
    }
    pub fn algorithms() -> Vec<String> {
        vec!["RS256".to_owned()]
    }
    pub fn leeway() -> Duration {
        Duration::from_secs(30)
    }
    pub fn introspection_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub fn positive_ttl() -> Duration {
        Duration::from_secs(60)
    }
    pub fn negative_ttl() -> Duration {
        Duration::from_secs(5)
    }
    pub fn introspection_max_in_flight() -> usize {
        64
    }
    pub fn introspection_max_waiting() -> usize {
        1024
    }
    pub fn introspection_max_wait() -> Duration {
        Duration::from_secs(1)
    }
}

/// Longest clock skew we tolerate: more than this hides a broken clock or lets expired
/// tokens live on.
const MAX_LEEWAY: Duration = Duration::from_secs(300);
const MAX_CACHE_ENTRIES: u64 = 10_000_000;
/// A cache budget below this would hold only a few hundred large entries.
const MIN_CACHE_BYTES: u64 = 1024 * 1024;
const MAX_CACHE_BYTES: u64 = 64 * 1024 * 1024 * 1024;
/// Longest trust in an `active: true` introspection answer: it is the revocation window.
const MAX_POSITIVE_TTL: Duration = Duration::from_secs(3600);
/// Longest memory of an `active: false` answer: it is meant to absorb retries, not more.
const MAX_NEGATIVE_TTL: Duration = Duration::from_secs(300);
/// Longest wait on one outbound call; proxies give up on the auth subrequest long before.
const MAX_OUTBOUND_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_INTROSPECTIONS_IN_FLIGHT: usize = 10_000;
const MAX_INTROSPECTIONS_WAITING: usize = 100_000;
/// Longest wait for an introspection slot: past it the proxy has long given up.
const MAX_INTROSPECTION_WAIT: Duration = Duration::from_secs(10);

impl Settings {
    /// Reads `path` (YAML or TOML by extension), applies `TOKENGATE__…` overrides from
    /// `env` (the process environment when `None`) and validates the result.
    pub fn load(path: &Path, env: Option<HashMap<String, String>>) -> Result<Self, ConfigError> {
        let file = config::File::from(path).required(true);
        Self::from_source(file, env)
    }

    /// Parses settings from a YAML string (the demo and tests use this).
    pub fn from_yaml(yaml: &str) -> Result<Self, ConfigError> {
        let source = config::File::from_str(yaml, config::FileFormat::Yaml);
        Self::from_source(source, Some(HashMap::new()))
    }

    fn from_source<S>(source: S, env: Option<HashMap<String, String>>) -> Result<Self, ConfigError>
    where
        S: config::Source + Send + Sync + 'static,
    {
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(env);
        let settings: Settings = config::Config::builder()
            .add_source(source)
            .add_source(environment)
            .build()
            .and_then(|raw| raw.try_deserialize())
            .map_err(from_config_error)?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks what the settings say on their own, without reading any other file: the
    /// rest (rules, identity mapping, secrets, CA bundle) is checked by compiling them
    /// (`runtime::compile`), once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(200..=299).contains(&self.success_status) {
            return Err(ConfigError::new(
                "success_status",
                "must be a 2xx status: proxies treat anything else as a denial",
            ));
        }
        if self.issuers.is_empty() {
            return Err(ConfigError::new(
                "issuers",
                "at least one issuer is required",
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for (index, issuer) in self.issuers.iter().enumerate() {
            issuer.validate(&format!("issuers[{index}]"))?;
            if let Some(logout) = &issuer.backchannel_logout {
                logout.validate(&format!("issuers[{index}]"))?;
            }
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(ConfigError::new(
                    format!("issuers[{index}].issuer"),
                    "listed twice",
                ));
            }
        }
        self.token_sources()?;
        if !(256..=65_536).contains(&self.token.max_length) {
            return Err(ConfigError::new(
                "token.max_length",
                "must be between 256 and 65536 bytes",
            ));
        }
        for (key, claim) in [
            ("identity.user_claim", &self.identity.user_claim),
            ("identity.email_claim", &self.identity.email_claim),
            ("identity.groups_claim", &self.identity.groups_claim),
        ] {
            if claim.is_empty() || claim.split('.').any(str::is_empty) {
                return Err(ConfigError::new(
                    key,
                    "must be a claim name or a dotted path",
                ));
            }
        }
        if !(64..=16_384).contains(&self.identity.max_header_length) {
            return Err(ConfigError::new(
                "identity.max_header_length",
                "must be between 64 and 16384 bytes",
            ));
        }
        if !(256..=65_536).contains(&self.identity.max_headers_bytes) {
            return Err(ConfigError::new(
                "identity.max_headers_bytes",
                "must be between 256 and 65536 bytes",
            ));
        }
        if !(1..=MAX_CACHE_ENTRIES).contains(&self.cache.max_entries) {
            return Err(ConfigError::new(
                "cache.max_entries",
                format!("must be between 1 and {MAX_CACHE_ENTRIES}"),
            ));
        }
        for (key, bytes) in [
            ("cache.max_bytes", self.cache.max_bytes),
            (
                "cache.introspection_max_bytes",
                self.cache.introspection_max_bytes,
            ),
        ] {
            if !(MIN_CACHE_BYTES..=MAX_CACHE_BYTES).contains(&bytes) {
                return Err(ConfigError::new(
                    key,
                    format!(
                        "must be between {MIN_CACHE_BYTES} (1 MiB) and {MAX_CACHE_BYTES} (64 GiB)"
                    ),
                ));
            }
        }
        self.server.validate()?;
        self.revocation.validate()?;
        self.grpc.validate()?;
        self.validate_listeners()?;
        if self.shutdown.grace > Duration::from_secs(120) {
            return Err(ConfigError::new("shutdown.grace", "must be at most 120s"));
        }
        if self.shutdown.drain_delay >= self.shutdown.grace {
            return Err(ConfigError::new(
                "shutdown.drain_delay",
                "must be shorter than shutdown.grace",
            ));
        }
        if self.cache.max_ttl < Duration::from_secs(1) {
            return Err(ConfigError::new("cache.max_ttl", "must be at least 1s"));
        }
        if !(1..=MAX_CACHE_ENTRIES).contains(&self.cache.introspection_max_entries) {
            return Err(ConfigError::new(
                "cache.introspection_max_entries",
                format!("must be between 1 and {MAX_CACHE_ENTRIES}"),
            ));
        }
        if self.http_client.introspection_max_in_flight.is_some() {
            return Err(ConfigError::new(
                "http_client.introspection_max_in_flight",
                "was replaced by per-issuer limits: set issuers[].introspection.max_in_flight (and max_waiting, max_wait) instead",
            ));
        }
        let opaque_issuer = self.opaque_issuer()?;
        for (index, issuer) in self.issuers.iter().enumerate() {
            let Some(introspection) = &issuer.introspection else {
                continue;
            };
            if !introspection.introspect_jwts && opaque_issuer != Some(index) {
                // Configured but never asked: the operator expects revocation to be
                // honoured and it would not be. Say so now rather than never.
                return Err(ConfigError::new(
                    format!("issuers[{index}].introspection"),
                    "is never used: name this issuer in token.opaque_issuer, or set introspect_jwts: true",
                ));
            }
        }
        let http = &self.http_client;
        if http.connect_timeout.is_zero() || http.timeout.is_zero() {
            return Err(ConfigError::new(
                "http_client",
                "timeouts must be greater than zero",
            ));
        }
        if http.timeout > MAX_OUTBOUND_TIMEOUT {
            return Err(ConfigError::new(
                "http_client.timeout",
                "must be at most 60s",
            ));
        }
        Ok(())
    }

    /// Index of the issuer whose introspection endpoint is asked about opaque tokens.
    pub fn opaque_issuer(&self) -> Result<Option<usize>, ConfigError> {
        let Some(wanted) = &self.token.opaque_issuer else {
            return Ok(None);
        };
        let index = self
            .issuers
            .iter()
            .position(|issuer| issuer.issuer == *wanted || issuer.name.as_deref() == Some(wanted))
            .ok_or_else(|| {
                ConfigError::new(
                    "token.opaque_issuer",
                    format!("'{wanted}' is neither the issuer nor the name of a configured issuer"),
                )
            })?;
        if self.issuers[index].introspection.is_none() {
            return Err(ConfigError::new(
                "token.opaque_issuer",
                format!("issuer '{wanted}' has no introspection configured: only its issuer can vouch for an opaque token"),
            ));
        }
        Ok(Some(index))
    }

    /// The parsed token sources, in the order they are tried.
    pub fn token_sources(&self) -> Result<Vec<TokenSource>, ConfigError> {
        if self.token.sources.is_empty() {
            return Err(ConfigError::new(
                "token.sources",
                "at least one source is required",
            ));
        }
        self.token
            .sources
            .iter()
            .enumerate()
            .map(|(index, source)| {
                TokenSource::from_str(source)
                    .map_err(|reason| ConfigError::new(format!("token.sources[{index}]"), reason))
            })
            .collect()
    }
}

impl Settings {
    /// Every listener on its own address: two on one would fail to bind, or (unix
    /// sockets) the second would remove the first one's socket file.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let listeners = [
            ("listen", Some(&self.listen)),
            ("admin_listen", Some(&self.admin_listen)),
            ("grpc_listen", self.grpc_listen.as_ref()),
        ];
        for (index, (key, address)) in listeners.iter().enumerate() {
            let Some(address) = address else { continue };
            let taken = listeners[..index].iter().find(|(_, other)| {
                other.is_some_and(|other| match (other, address) {
                    (ListenAddress::Tcp(a), ListenAddress::Tcp(b)) => a == b && a.port() != 0,
                    (a, b) => a == *b,
                })
            });
            if let Some((other, _)) = taken {
                return Err(ConfigError::new(
                    *key,
                    format!("'{address}' is already the address of {other}"),
                ));
            }
        }
        Ok(())
    }
}

impl GrpcSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=100_000).contains(&self.max_concurrent_streams) {
            return Err(ConfigError::new(
                "grpc.max_concurrent_streams",
                "must be between 1 and 100000",
            ));
        }
        if self.keep_alive_interval < Duration::from_secs(1)
            || self.keep_alive_interval > Duration::from_secs(3600)
        {
            return Err(ConfigError::new(
                "grpc.keep_alive_interval",
                "must be between 1s and 1h",
            ));
        }
        if self.keep_alive_timeout < Duration::from_secs(1)
            || self.keep_alive_timeout > Duration::from_secs(300)
        {
            return Err(ConfigError::new(
                "grpc.keep_alive_timeout",
                "must be between 1s and 5m",
            ));
        }
        // Envoy's metadata keys are free strings, but this one is typed into access-log
        // format strings (`%DYNAMIC_METADATA(ns:key)%`), where `:` separates the path.
        let namespace = &self.metadata_namespace;
        if namespace.is_empty()
            || namespace.len() > 128
            || !namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ConfigError::new(
                "grpc.metadata_namespace",
                "must be 1 to 128 letters, digits, '.', '_' or '-'",
            ));
        }
        Ok(())
    }
}

impl ServerSettings {
    /// `unix_socket_mode` as permission bits.
    pub fn socket_mode(&self) -> Result<u32, ConfigError> {
        let text = self.unix_socket_mode.trim();
        let mode = (!text.is_empty()
            && text.len() <= 4
            && text.bytes().all(|b| (b'0'..=b'7').contains(&b)))
        .then(|| u32::from_str_radix(text, 8).ok())
        .flatten()
        .filter(|mode| *mode <= 0o777)
        .ok_or_else(|| {
            ConfigError::new(
                "server.unix_socket_mode",
                "must be permission bits in octal, such as 0660 (at most 0777)",
            )
        })?;
        Ok(mode)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.socket_mode()?;
        if !(1..=1_000_000).contains(&self.max_connections) {
            return Err(ConfigError::new(
                "server.max_connections",
                "must be between 1 and 1000000",
            ));
        }
        if !(1..=10_000).contains(&self.admin_max_connections) {
            return Err(ConfigError::new(
                "server.admin_max_connections",
                "must be between 1 and 10000",
            ));
        }
        if self.keep_alive > Duration::from_secs(3600) {
            return Err(ConfigError::new("server.keep_alive", "must be at most 1h"));
        }
        if self.client_request_timeout.is_zero()
            || self.client_request_timeout > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                "server.client_request_timeout",
                "must be greater than zero and at most 60s",
            ));
        }
        if !(1024..=128 * 1024).contains(&self.max_header_bytes) {
            return Err(ConfigError::new(
                "server.max_header_bytes",
                "must be between 1024 and 131072 bytes",
            ));
        }
        if !(8..=96).contains(&self.max_headers) {
            return Err(ConfigError::new(
                "server.max_headers",
                "must be between 8 and 96",
            ));
        }
        Ok(())
    }
}

impl IssuerSettings {
    fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let issuer_url = Url::parse(&self.issuer)
            .map_err(|e| ConfigError::new(format!("{key}.issuer"), format!("not a URL: {e}")))?;
        if !matches!(issuer_url.scheme(), "https" | "http") {
            return Err(ConfigError::new(
                format!("{key}.issuer"),
                "must be an http(s) URL",
            ));
        }
        if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
            // OpenID Connect Discovery 1.0 §2: the issuer has no query or fragment.
            return Err(ConfigError::new(
                format!("{key}.issuer"),
                "must not have a query or fragment",
            ));
        }
        if let Some(jwks_uri) = &self.jwks_uri {
            let url = Url::parse(jwks_uri).map_err(|e| {
                ConfigError::new(format!("{key}.jwks_uri"), format!("not a URL: {e}"))
            })?;
            if !matches!(url.scheme(), "https" | "http") {
                return Err(ConfigError::new(
                    format!("{key}.jwks_uri"),
                    "must be an http(s) URL",
                ));
            }
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            // Without an audience check, a token minted for any other client of the same
            // issuer would be accepted here (RFC 9068 §4).
            return Err(ConfigError::new(
                format!("{key}.audiences"),
                "at least one non-empty audience is required",
            ));
        }
        if self.leeway > MAX_LEEWAY {
            return Err(ConfigError::new(
                format!("{key}.leeway"),
                format!("must be at most {}s", MAX_LEEWAY.as_secs()),
            ));
        }
        if let Some(typ) = &self.required_typ {
            if typ.trim().is_empty() {
                return Err(ConfigError::new(
                    format!("{key}.required_typ"),
                    "must not be empty",
                ));
            }
        }
        if let Some(introspection) = &self.introspection {
            introspection.validate(&format!("{key}.introspection"), self.jwks_uri.is_some())?;
        }
        let keys = &self.keys;
        if keys.min_refresh_interval < Duration::from_secs(1) {
            return Err(ConfigError::new(
                format!("{key}.keys.min_refresh_interval"),
                "must be at least 1s",
            ));
        }
        if keys.refresh_interval < keys.min_refresh_interval {
            return Err(ConfigError::new(
                format!("{key}.keys.refresh_interval"),
                "must be at least keys.min_refresh_interval",
            ));
        }
        if keys.unknown_kid_cooldown < Duration::from_secs(1) {
            return Err(ConfigError::new(
                format!("{key}.keys.unknown_kid_cooldown"),
                "must be at least 1s",
            ));
        }
        if keys.max_stale < keys.refresh_interval {
            return Err(ConfigError::new(
                format!("{key}.keys.max_stale"),
                "must be at least keys.refresh_interval",
            ));
        }
        Ok(())
    }

    /// Name used in logs and metric labels.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.issuer)
    }
}

impl IntrospectionSettings {
    fn validate(&self, key: &str, discovery_skipped: bool) -> Result<(), ConfigError> {
        match &self.endpoint {
            Some(endpoint) => {
                let url = Url::parse(endpoint).map_err(|e| {
                    ConfigError::new(format!("{key}.endpoint"), format!("not a URL: {e}"))
                })?;
                if !matches!(url.scheme(), "https" | "http") {
                    return Err(ConfigError::new(
                        format!("{key}.endpoint"),
                        "must be an http(s) URL",
                    ));
                }
            }
            None if discovery_skipped => {
                return Err(ConfigError::new(
                    format!("{key}.endpoint"),
                    "is required when jwks_uri is set: discovery, which would name it, is skipped",
                ));
            }
            None => {}
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.client_id"),
                "must not be empty",
            ));
        }
        if self.client_secret_file.is_some() == self.client_secret_env.is_some() {
            return Err(ConfigError::new(
                key,
                "set exactly one of client_secret_file and client_secret_env",
            ));
        }
        if self.timeout.is_zero() || self.timeout > MAX_OUTBOUND_TIMEOUT {
            return Err(ConfigError::new(
                format!("{key}.timeout"),
                format!(
                    "must be greater than zero and at most {}s",
                    MAX_OUTBOUND_TIMEOUT.as_secs()
                ),
            ));
        }
        if self.positive_ttl > MAX_POSITIVE_TTL {
            return Err(ConfigError::new(
                format!("{key}.positive_ttl"),
                format!(
                    "must be at most {}s: a revoked token keeps passing this long",
                    MAX_POSITIVE_TTL.as_secs()
                ),
            ));
        }
        if self.negative_ttl > MAX_NEGATIVE_TTL {
            return Err(ConfigError::new(
                format!("{key}.negative_ttl"),
                format!("must be at most {}s", MAX_NEGATIVE_TTL.as_secs()),
            ));
        }
        if !(1..=MAX_INTROSPECTIONS_IN_FLIGHT).contains(&self.max_in_flight) {
            return Err(ConfigError::new(
                format!("{key}.max_in_flight"),
                format!("must be between 1 and {MAX_INTROSPECTIONS_IN_FLIGHT}"),
            ));
        }
        if self.max_waiting > MAX_INTROSPECTIONS_WAITING {
            return Err(ConfigError::new(
                format!("{key}.max_waiting"),
                format!("must be at most {MAX_INTROSPECTIONS_WAITING}"),
            ));
        }
        if self.max_wait > MAX_INTROSPECTION_WAIT {
            return Err(ConfigError::new(
                format!("{key}.max_wait"),
                format!(
                    "must be at most {}s: the proxy gives up on the request long before",
                    MAX_INTROSPECTION_WAIT.as_secs()
                ),
            ));
        }
        Ok(())
    }

    /// Reads the client secret from its file or environment variable. Missing or empty is
    /// a configuration error: it is checked at start-up, never discovered on a request.
    /// Error messages name the file or variable, never the value.
    pub fn client_secret(&self, key: &str) -> Result<ClientSecret, ConfigError> {
        let raw = match (&self.client_secret_file, &self.client_secret_env) {
            (Some(path), None) => std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    format!("{key}.client_secret_file"),
                    format!("{}: {e}", path.display()),
                )
            })?,
            (None, Some(variable)) => std::env::var(variable).map_err(|e| {
                ConfigError::new(
                    format!("{key}.client_secret_env"),
                    format!("{variable}: {e}"),
                )
            })?,
            _ => {
                return Err(ConfigError::new(
                    key,
                    "set exactly one of client_secret_file and client_secret_env",
                ))
            }
        };
        // Files written by `echo` or an editor end with a newline that is not part of
        // the secret.
        let secret = raw.trim_end_matches(['\r', '\n']);
        if secret.is_empty() {
            let source = if self.client_secret_file.is_some() {
                "client_secret_file"
            } else {
                "client_secret_env"
            };
            return Err(ConfigError::new(
                format!("{key}.{source}"),
                "the client secret is empty",
            ));
        }
        Ok(ClientSecret(secret.to_owned()))
    }
}

/// Turns the `config` crate's error into our one-line form, keeping the key it names.
fn from_config_error(error: config::ConfigError) -> ConfigError {
    let error = from_config_error_raw(error);
    ConfigError {
        key: dotted_key(&error.key),
        reason: error.reason,
    }
}

/// The `config` crate writes a field after an index without a dot
/// (`issuers[0]introspection.timeout`); our keys have one (`issuers[0].introspection.timeout`).
fn dotted_key(key: &str) -> String {
    let mut dotted = String::with_capacity(key.len() + 4);
    let mut chars = key.chars().peekable();
    while let Some(ch) = chars.next() {
        dotted.push(ch);
        if ch == ']'
            && chars
                .peek()
                .is_some_and(|next| next.is_alphanumeric() || *next == '_')
        {
            dotted.push('.');
        }
    }
    dotted
}

fn from_config_error_raw(error: config::ConfigError) -> ConfigError {
    match &error {
        config::ConfigError::Type {
            key: Some(key),
            unexpected,
            expected,
            ..
        } => ConfigError::new(
            key.clone(),
            format!("invalid type: {unexpected}, expected {expected}"),
        ),
        config::ConfigError::At {
            error: inner,
            key: Some(key),
            ..
        } => ConfigError::new(key.clone(), inner.to_string().replace('\n', " ")),
        config::ConfigError::NotFound(key) => ConfigError::new(key.clone(), "missing"),
        config::ConfigError::FileParse { uri, cause } => ConfigError::new(
            uri.clone().unwrap_or_else(|| "file".to_owned()),
            cause.to_string().replace('\n', " "),
        ),
        // serde's own messages name the field (``missing field `issuer` ``): keep them whole.
        other => ConfigError::new("file", other.to_string().replace('\n', " ")),
    }
}
