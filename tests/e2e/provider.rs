//! The real OpenID Provider: panva's `oidc-provider` (npm) running tests/e2e/op/op.mjs as
//! a child process, and tokengate configured to trust it.
//!
//! Tokens come from its token endpoint (client-credentials grant): RS256 `at+jwt` access
//! tokens for the resource `https://api.local`, opaque ones for `https://opaque.local`.
//! The clients `alice` and `bob` carry a user's claims (`preferred_username`, `email`,
//! `groups`), `client` carries none; `tabbed`, `sysuser`, `unverified`, `twoat`, `comma`
//! and `spaced` carry crafted ones (op.mjs lists them). Node.js and the pinned npm packages are installed by
//! `scripts/test.sh`; when they are missing the test fails with that instruction.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::{
    client, find_executable, ChildKind, Process, ScratchDir, Tokengate, TEST_COMMAND,
};

/// Where op.mjs, its package.json and (once installed) its node_modules are.
const OP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/op");
/// Where `scripts/test.sh` installs Node.js when the system's is too old.
const BUNDLED_NODE_PREFIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.e2e/node");
/// The resource (RFC 8707) whose access tokens the provider issues as RS256 `at+jwt`.
pub const JWT_RESOURCE: &str = "https://api.local";
/// The resource whose access tokens the provider makes opaque.
pub const OPAQUE_RESOURCE: &str = "https://opaque.local";
/// How long tokengate trusts an `active: true` introspection answer in these tests: the
/// revocation window.
pub const POSITIVE_TTL: Duration = Duration::from_secs(2);

/// The Node.js to run op.mjs with: `$TOKENGATE_E2E_NODE`, else the one `scripts/test.sh`
/// installed into .e2e/node, else `node` on `PATH`. It must be recent enough for
/// oidc-provider 9 (which calls `crypto.hash`, Node.js 20.12).
fn node() -> PathBuf {
    let bundled = ["x64", "arm64"]
        .iter()
        .map(|arch| format!("{BUNDLED_NODE_PREFIX}/node_modules/node-linux-{arch}/bin/node"))
        .find(|path| Path::new(path).is_file());
    let node = match (std::env::var_os("TOKENGATE_E2E_NODE"), bundled) {
        (None, Some(bundled)) => PathBuf::from(bundled),
        _ => find_executable("node", "TOKENGATE_E2E_NODE", &[]),
    };
    let output = Command::new(&node)
        .args(["-p", "process.versions.node"])
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", node.display()));
    let version = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let mut parts = version
        .split('.')
        .map(|part| part.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!(
        major > 20 || (major == 20 && minor >= 12),
        "{} is Node.js {version:?}; oidc-provider 9 needs 20.12 or later. Run `{TEST_COMMAND}` \
         from the repository root: it installs a recent Node.js into .e2e/node when needed.",
        node.display()
    );
    node
}

/// The npm packages of the provider and their pins in scripts/versions.env.
const OP_PACKAGES: [(&str, &str); 2] = [
    ("oidc-provider", "OIDC_PROVIDER_VERSION"),
    ("jose", "JOSE_VERSION"),
];

/// A `NAME=value` pin of scripts/versions.env.
fn pinned_version(variable: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/versions.env");
    let pins = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    pins.lines()
        .find_map(|line| line.strip_prefix(variable)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("{} pins no {variable}", path.display()))
        .trim()
        .to_owned()
}

/// Fails unless every package pinned for the provider in scripts/versions.env is
/// installed at its version.
fn assert_op_packages_installed() {
    let read = |path: &Path| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    for (name, variable) in OP_PACKAGES {
        let version = pinned_version(variable);
        let version = version.as_str();
        let installed = read(
            &Path::new(OP_DIR)
                .join("node_modules")
                .join(name)
                .join("package.json"),
        );
        let installed = installed
            .as_ref()
            .and_then(|package| package["version"].as_str());
        assert_eq!(
            installed,
            Some(version),
            "npm package {name} {version} is not installed in tests/e2e/op/node_modules. \
             The end-to-end tests drive the real oidc-provider: run `{TEST_COMMAND}` from the \
             repository root, which installs it and runs every test."
        );
    }
}

/// How the provider's process starts: Node.js loads oidc-provider for a second or more
/// before it binds its port.
const OP: ChildKind = ChildKind {
    name: "oidc-provider",
    own_group: false,
    timeout: Duration::from_secs(30),
    port_in_use: "EADDRINUSE",
};

/// A running oidc-provider, killed on drop (also when the test panics).
pub struct OidcProvider {
    process: Process,
    node: PathBuf,
    address: SocketAddr,
    /// Extra environment of the process (`OP_BACKCHANNEL_LOGOUT_URI`).
    env: Vec<(String, String)>,
    /// `http://127.0.0.1:<port>`: the `iss` of its tokens.
    pub issuer: String,
}

impl OidcProvider {
    /// Starts the provider on a free port with a fresh signing key whose `kid` is `e2e-1`.
    pub async fn start() -> OidcProvider {
        Self::start_with_kid("e2e-1").await
    }

    /// Starts the provider on a free port with a fresh signing key whose `kid` is `kid`.
    pub async fn start_with_kid(kid: &str) -> OidcProvider {
        Self::start_with_env(kid, Vec::new()).await
    }

    /// Starts the provider with extra environment variables (see op.mjs).
    pub async fn start_with_env(kid: &str, env: Vec<(String, String)>) -> OidcProvider {
        let node = node();
        assert_op_packages_installed();
        let (process, address) = OP
            .start(|_, address| Self::command(&node, address, kid, &env))
            .await;
        OidcProvider {
            process,
            node,
            address,
            env,
            issuer: format!("http://{address}"),
        }
    }

    fn command(node: &Path, address: SocketAddr, kid: &str, env: &[(String, String)]) -> Command {
        let mut command = Command::new(node);
        command.envs(env.iter().map(|(name, value)| (name, value)));
        command
            .arg(Path::new(OP_DIR).join("op.mjs"))
            .arg(address.port().to_string())
            .env("OP_KID", kid)
            .env_remove("OP_JWKS_FILE")
            .current_dir(OP_DIR);
        command
    }

    /// Stops the provider and starts it again on the same address (same issuer) with a
    /// new signing key whose `kid` is `kid`: a key rotation at the issuer, old key gone.
    /// The new process's output starts empty, so [`Self::jwks_fetches`] counts afresh.
    pub async fn restart_with_kid(&mut self, kid: &str) {
        self.process.kill();
        // The port was ours a moment ago; no retry on another port, since the issuer
        // URL must stay the same (a process that took the port meanwhile fails the
        // start, never answers in the provider's place).
        let command = Self::command(&self.node, self.address, kid, &self.env);
        self.process = OP
            .spawn(command, ScratchDir::new(OP.name), self.address)
            .await
            .unwrap_or_else(|error| panic!("oidc-provider did not restart: {}", error.message));
    }

    /// The provider's console output, for failure messages.
    pub fn logs(&self) -> String {
        self.process.logs()
    }

    /// How many times the JWKS was served since this process started.
    pub fn jwks_fetches(&self) -> usize {
        self.process
            .stdout()
            .lines()
            .filter(|line| *line == "oidc-provider served jwks")
            .count()
    }

    /// Logs `sub` out at client `tokengate` through the provider's own back-channel
    /// logout (op.mjs): it signs a logout token and posts it to tokengate. Returns once
    /// tokengate answered 200.
    pub async fn backchannel_logout(&self, sub: &str) {
        let response = client()
            .post(format!(
                "{}/e2e/backchannel-logout?{}",
                self.issuer,
                form(&[("sub", sub)])
            ))
            .send()
            .await
            .expect("back-channel logout request");
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}\n{}", self.logs());
    }

    /// A client-credentials access token of `client_id` (secret `<client_id>-secret`)
    /// for `resource`, with `scope`.
    async fn token(&self, client_id: &str, scope: &str, resource: &str) -> String {
        let response = client()
            .post(format!("{}/token", self.issuer))
            .basic_auth(client_id, Some(format!("{client_id}-secret")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("grant_type", "client_credentials"),
                ("scope", scope),
                ("resource", resource),
            ]))
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: Value = response.json().await.expect("token response JSON");
        assert_eq!(status, StatusCode::OK, "{body}\n{}", self.logs());
        body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned()
    }

    /// An RS256 `at+jwt` access token of `client_id` with `scope` (space-separated).
    pub async fn jwt(&self, client_id: &str, scope: &str) -> String {
        let token = self.token(client_id, scope, JWT_RESOURCE).await;
        assert_eq!(token.split('.').count(), 3, "not a JWT: {token}");
        token
    }

    /// An opaque access token of `client_id` with `scope`.
    pub async fn opaque(&self, client_id: &str, scope: &str) -> String {
        let token = self.token(client_id, scope, OPAQUE_RESOURCE).await;
        assert_eq!(token.split('.').count(), 1, "not an opaque token");
        token
    }

    /// RFC 7009 revocation, by the client the token was issued to.
    pub async fn revoke(&self, client_id: &str, token: &str) {
        let response = client()
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth(client_id, Some(format!("{client_id}-secret")))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("token", token),
                ("token_type_hint", "access_token"),
            ]))
            .send()
            .await
            .expect("revocation request");
        assert_eq!(response.status(), StatusCode::OK, "{}", self.logs());
    }

    /// tokengate trusting this provider, as an operator would configure it: JWTs for
    /// `https://api.local` verified with the discovered JWKS (RS256, `typ` `at+jwt`),
    /// opaque tokens for `https://opaque.local` introspected as resource server `rs`, and
    /// the identity from `preferred_username`, `email` and `groups` (the defaults).
    /// `options` chooses the rest: the proxy in front, appended YAML (`rules:`), ….
    /// Keys are not refreshed in the background during a test (unless `options` say
    /// so), so that every JWKS fetch the provider sees after start-up is an unknown-`kid`
    /// refetch; a stop ([`Tokengate::stop`]) closes the listener at once.
    pub async fn tokengate_with(&self, options: TokengateOptions<'_>) -> Tokengate {
        let dir = ScratchDir::new("tokengate");
        let secret = dir.write("rs-secret", "rs-secret\n");
        let yaml = format!(
            r#"
listen: "{listen}"
admin_listen: "127.0.0.1:0"
workers: 1
proxy_headers: {proxy_headers}
issuers:
  - issuer: "{issuer}"
    name: oidc-provider
    audiences: ["{JWT_RESOURCE}", "{OPAQUE_RESOURCE}"]
    algorithms: [RS256]
    required_typ: at+jwt
    keys:
      refresh_interval: {refresh}
      min_refresh_interval: {refresh}
      unknown_kid_cooldown: 30s
    introspection:
      client_id: rs
      client_secret_file: "{secret}"
      positive_ttl: {ttl}s
      negative_ttl: 1s
{issuer_extra}
token:
  opaque_issuer: oidc-provider
{token}
shutdown:
{shutdown}
{extra}
"#,
            proxy_headers = options.proxy_headers,
            listen = options.listen,
            issuer = self.issuer,
            refresh = options.key_refresh,
            secret = secret.display(),
            ttl = POSITIVE_TTL.as_secs(),
            issuer_extra = options.issuer,
            token = options.token,
            shutdown = options.shutdown,
            extra = options.extra,
        );
        Tokengate::start(&yaml, dir).await
    }
}

/// tokengate's settings in a test, beyond the provider's issuer that it always trusts.
#[derive(Debug, Clone, Copy)]
pub struct TokengateOptions<'a> {
    /// `proxy_headers`: the proxy in front.
    pub proxy_headers: &'a str,
    /// `listen`: the auth listener (`127.0.0.1:0`, or `unix:/path`).
    pub listen: &'a str,
    /// YAML lines of the `shutdown:` block, indented by two spaces: by default no drain
    /// delay and a one-second grace, so that a stop closes the listeners at once.
    pub shutdown: &'a str,
    /// YAML lines added to the provider's issuer entry, indented by four spaces
    /// (`    require_email_verified: true`).
    pub issuer: &'a str,
    /// YAML lines added to the `token:` block, indented by two spaces
    /// (`  sources: ["cookie:session"]`).
    pub token: &'a str,
    /// The issuer's `keys.refresh_interval` and `min_refresh_interval`: by default
    /// longer than any test, so that keys are only refetched for an unknown `kid`.
    pub key_refresh: &'a str,
    /// YAML appended at the top level (`rules:`, `identity:`, `cache:`, …).
    pub extra: &'a str,
}

impl Default for TokengateOptions<'_> {
    fn default() -> Self {
        TokengateOptions {
            proxy_headers: "nginx",
            listen: "127.0.0.1:0",
            shutdown: "  drain_delay: 0s\n  grace: 1s",
            issuer: "",
            token: "",
            key_refresh: "10m",
            extra: "",
        }
    }
}

/// An `application/x-www-form-urlencoded` body.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}
