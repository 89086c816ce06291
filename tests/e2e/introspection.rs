//! The real `oidc-provider` (panva, from npm) issuing opaque access tokens, introspected
//! by the real tokengate (RFC 7662), then revoked at the provider (RFC 7009): refused
//! once the cached answer's ttl (the revocation window) has passed.
//!
//! The provider is tests/e2e/op/op.mjs, run by Node.js as a child process. Node.js and the
//! pinned npm packages are installed by `scripts/test.sh`; when they are missing the test
//! fails with that instruction, it is never skipped.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;
use tokengate::config::Settings;
use tokengate::startup::Application;

use crate::support::{
    client, closed_address, find_executable, wait_until_listening, ScratchDir, TEST_COMMAND,
};

/// Where op.mjs, its package.json and (once installed) its node_modules are.
const OP_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/op");
/// Where `scripts/test.sh` installs Node.js when the system's is too old.
const BUNDLED_NODE_PREFIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.e2e/node");
/// The resource (RFC 8707) whose access tokens the provider makes opaque.
const OPAQUE_RESOURCE: &str = "https://opaque.local";
/// How long tokengate trusts an `active: true` answer in this test.
const POSITIVE_TTL: Duration = Duration::from_secs(2);

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

/// Fails unless every package pinned in tests/e2e/op/package.json is installed at its
/// version.
fn assert_op_packages_installed() {
    let read = |path: &Path| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    let manifest =
        read(&Path::new(OP_DIR).join("package.json")).expect("tests/e2e/op/package.json");
    let wanted = manifest["dependencies"]
        .as_object()
        .expect("package.json lists dependencies");
    for (name, version) in wanted {
        let version = version.as_str().unwrap_or_default();
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

/// A running oidc-provider child process, killed on drop (also when the test panics).
struct OidcProvider {
    child: Child,
    issuer: String,
    dir: ScratchDir,
}

impl OidcProvider {
    async fn start() -> OidcProvider {
        let node = node();
        assert_op_packages_installed();
        // The port is picked free, then bound by node: another process may take it in
        // between, so a lost race is retried on a new port.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(&node).await {
                Ok(provider) => return provider,
                Err((error, retry)) if retry => failures.push(error),
                Err((error, _)) => panic!("oidc-provider did not start: {error}"),
            }
        }
        panic!("oidc-provider did not start: {failures:#?}");
    }

    /// `Err((message, worth_retrying))`.
    async fn try_start(node: &Path) -> Result<OidcProvider, (String, bool)> {
        let dir = ScratchDir::new("oidc-provider");
        let address: SocketAddr = closed_address();
        let output = |name: &str| {
            File::create(dir.join(name))
                .map(Stdio::from)
                .map_err(|e| (format!("{name}: {e}"), false))
        };
        let child = Command::new(node)
            .arg(Path::new(OP_DIR).join("op.mjs"))
            .arg(address.port().to_string())
            .current_dir(OP_DIR)
            .stdin(Stdio::null())
            .stdout(output("stdout.log")?)
            .stderr(output("stderr.log")?)
            .spawn()
            .map_err(|e| (format!("cannot run {}: {e}", node.display()), false))?;
        let mut provider = OidcProvider {
            child,
            issuer: format!("http://{address}"),
            dir,
        };
        let started = wait_until_listening(address, Duration::from_secs(30), || {
            match provider.child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(format!("node exited with {status}")),
                Err(error) => Err(format!("cannot watch node: {error}")),
            }
        })
        .await;
        match started {
            Ok(()) => Ok(provider),
            Err(error) => {
                let logs = provider.logs();
                let retry = logs.contains("EADDRINUSE");
                Err((format!("{error}\n{logs}"), retry))
            }
        }
    }

    /// The provider's console output, for failure messages.
    fn logs(&self) -> String {
        ["stdout.log", "stderr.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                format!("--- oidc-provider {name} ---\n{text}")
            })
            .collect()
    }

    /// An opaque access token from the client-credentials grant of client `client`.
    async fn opaque_token(&self) -> String {
        let response = client()
            .post(format!("{}/token", self.issuer))
            .basic_auth("client", Some("client-secret"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form(&[
                ("grant_type", "client_credentials"),
                ("scope", "read write"),
                ("resource", OPAQUE_RESOURCE),
            ]))
            .send()
            .await
            .expect("token request");
        let status = response.status();
        let body: Value = response.json().await.expect("token response JSON");
        assert_eq!(status, StatusCode::OK, "{body}\n{}", self.logs());
        let token = body["access_token"]
            .as_str()
            .expect("access_token")
            .to_owned();
        assert_eq!(token.split('.').count(), 1, "not an opaque token: {body}");
        token
    }

    /// RFC 7009 revocation, by the client the token was issued to.
    async fn revoke(&self, token: &str) {
        let response = client()
            .post(format!("{}/token/revocation", self.issuer))
            .basic_auth("client", Some("client-secret"))
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
}

/// An `application/x-www-form-urlencoded` body.
fn form(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tokengate trusting the provider, introspecting its opaque tokens as resource server
/// `rs` (endpoint from discovery), with identity headers from the introspection answer.
async fn start_tokengate(provider: &OidcProvider, dir: &ScratchDir) -> SocketAddr {
    let secret = dir.join("rs-secret");
    std::fs::write(&secret, "rs-secret\n").expect("secret file");
    let settings = Settings::from_yaml(&format!(
        r#"
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
workers: 1
issuers:
  - issuer: "{issuer}"
    name: oidc-provider
    audiences: ["{OPAQUE_RESOURCE}"]
    algorithms: [RS256]
    introspection:
      client_id: rs
      client_secret_file: "{secret}"
      positive_ttl: {ttl}s
      negative_ttl: 1s
token:
  opaque_issuer: oidc-provider
identity:
  user_claim: client_id
  groups_claim: scope
"#,
        issuer = provider.issuer,
        secret = secret.display(),
        ttl = POSITIVE_TTL.as_secs(),
    ))
    .expect("tokengate settings are valid");
    let application = Application::build(settings)
        .await
        .expect("tokengate starts");
    let address = SocketAddr::from(([127, 0, 0, 1], application.port()));
    tokio::spawn(application.run_until_stopped());
    address
}

async fn auth(tokengate: SocketAddr, token: &str) -> reqwest::Response {
    client()
        .get(format!("http://{tokengate}/auth"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request to tokengate")
}

#[tokio::test]
async fn opaque_token_is_introspected_then_refused_once_revoked() {
    let provider = OidcProvider::start().await;
    let dir = ScratchDir::new("op-tokengate");
    let tokengate = start_tokengate(&provider, &dir).await;
    let token = provider.opaque_token().await;

    let response = auth(tokengate, &token).await;

    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "{}",
        provider.logs()
    );
    // From the introspection answer: client-credentials tokens carry no `sub`.
    assert_eq!(response.headers()["x-auth-request-user"], "client");
    assert_eq!(response.headers()["x-auth-request-groups"], "read,write");

    provider.revoke(&token).await;

    // Refused once the answer cached before the revocation expires (POSITIVE_TTL); the
    // limit only keeps a broken build from hanging.
    let deadline = Instant::now() + POSITIVE_TTL + Duration::from_secs(15);
    let refused = loop {
        let response = auth(tokengate, &token).await;
        if response.status() != StatusCode::ACCEPTED || Instant::now() >= deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        provider.logs()
    );
    assert_eq!(
        refused.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
}
