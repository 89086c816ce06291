//! Real nginx `auth_request` in front of an echo upstream, configured with the shipped
//! deploy/nginx/tokengate.conf (only its placeholder addresses substituted), and the real
//! tokengate answering the subrequests.

use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::StatusCode;
use serde_json::Value;
use tokengate::demo::{start_issuer, TokenRequest};

use crate::support::{
    client, closed_address, echoed_header, find_executable, wait_until_listening, EchoUpstream,
    ScratchDir, Tokengate,
};

/// The shipped snippet, as operators copy it.
const DEPLOYED_CONFIG: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/nginx/tokengate.conf"
));

/// The addresses of the shipped snippet that a deployment (and this test) replaces.
fn site_config(listen: SocketAddr, tokengate: SocketAddr, app: SocketAddr) -> String {
    let mut text = DEPLOYED_CONFIG.to_owned();
    for (placeholder, value) in [
        ("server 127.0.0.1:8080;", format!("server {tokengate};")),
        ("server 127.0.0.1:3000;", format!("server {app};")),
        ("listen 80;", format!("listen {listen};")),
    ] {
        assert_eq!(
            text.matches(placeholder).count(),
            1,
            "deploy/nginx/tokengate.conf must contain `{placeholder}` exactly once: \
             the end-to-end test substitutes it"
        );
        text = text.replace(placeholder, &value);
    }
    text
}

/// The main file around the snippet: everything nginx writes stays in `dir`, so that it
/// runs as any user. `master_process off` keeps nginx to one process, so killing the
/// child leaves no worker behind.
fn main_config(dir: &ScratchDir) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    format!(
        "master_process off;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {client_body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    include {site};
}}
",
        client_body = path("client_body_temp"),
        proxy = path("proxy_temp"),
        fastcgi = path("fastcgi_temp"),
        uwsgi = path("uwsgi_temp"),
        scgi = path("scgi_temp"),
        site = path("tokengate.conf"),
    )
}

/// A running nginx child process, killed on drop (also when the test panics).
pub struct Nginx {
    child: Child,
    pub address: SocketAddr,
    dir: ScratchDir,
}

impl Nginx {
    /// Starts nginx with the shipped snippet, protecting `app` with tokengate at
    /// `tokengate`, and waits until it listens.
    pub async fn start(tokengate: SocketAddr, app: SocketAddr) -> Nginx {
        let binary = find_executable("nginx", "TOKENGATE_E2E_NGINX", &["/usr/sbin/nginx"]);
        // The listen port is picked free, then bound by nginx: another process may take
        // it in between, so a lost race is retried on a new port.
        let mut failures = Vec::new();
        for _ in 0..3 {
            match Self::try_start(&binary, tokengate, app).await {
                Ok(nginx) => return nginx,
                Err((error, retry)) if retry => failures.push(error),
                Err((error, _)) => panic!("nginx did not start: {error}"),
            }
        }
        panic!("nginx did not start: {failures:#?}");
    }

    /// `Err((message, worth_retrying))`.
    async fn try_start(
        binary: &PathBuf,
        tokengate: SocketAddr,
        app: SocketAddr,
    ) -> Result<Nginx, (String, bool)> {
        let dir = ScratchDir::new("nginx");
        let address = closed_address();
        let write = |name: &str, text: String| {
            std::fs::write(dir.join(name), text).map_err(|e| (format!("{name}: {e}"), false))
        };
        write("tokengate.conf", site_config(address, tokengate, app))?;
        write("nginx.conf", main_config(&dir))?;
        let output = |name: &str| {
            File::create(dir.join(name))
                .map(Stdio::from)
                .map_err(|e| (format!("{name}: {e}"), false))
        };
        let child = Command::new(binary)
            .arg("-p")
            .arg(&dir.path)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            // -e: the start-up error log, before the configuration is read (the default,
            // /var/log/nginx/error.log, is not writable by every user).
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-g")
            .arg(format!(
                "daemon off; pid {}; error_log {};",
                dir.join("nginx.pid").display(),
                dir.join("error.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(output("stdout.log")?)
            .stderr(output("stderr.log")?)
            .spawn()
            .map_err(|e| (format!("cannot run {}: {e}", binary.display()), false))?;
        let mut nginx = Nginx {
            child,
            address,
            dir,
        };
        let started = wait_until_listening(address, Duration::from_secs(10), || {
            match nginx.child.try_wait() {
                Ok(None) => Ok(()),
                Ok(Some(status)) => Err(format!("nginx exited with {status}")),
                Err(error) => Err(format!("cannot watch nginx: {error}")),
            }
        })
        .await;
        match started {
            Ok(()) => Ok(nginx),
            Err(error) => {
                let logs = nginx.logs();
                let retry = logs.contains("Address already in use");
                Err((format!("{error}\n{logs}"), retry))
            }
        }
    }

    /// `http://<nginx>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// nginx's error log and console output, for failure messages.
    pub fn logs(&self) -> String {
        ["error.log", "stderr.log", "stdout.log"]
            .iter()
            .map(|name| {
                let text = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                format!("--- nginx {name} ---\n{text}")
            })
            .collect()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tokengate, the echo upstream and nginx in front of it.
struct Stack {
    tokengate: Tokengate,
    upstream: EchoUpstream,
    nginx: Nginx,
}

impl Stack {
    async fn start() -> Stack {
        let tokengate = Tokengate::start().await;
        let upstream = EchoUpstream::start();
        let nginx = Nginx::start(tokengate.address, upstream.address).await;
        Stack {
            tokengate,
            upstream,
            nginx,
        }
    }

    /// Sends `request` through nginx; returns status, headers and body text.
    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Response) {
        let response = request.send().await.unwrap_or_else(|error| {
            panic!(
                "request through nginx failed: {error}\n{}",
                self.nginx.logs()
            )
        });
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.expect("response body");
        (status, Response { headers, body })
    }
}

struct Response {
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Response {
    fn echo(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not the upstream's echo ({error}): {}", self.body))
    }

    fn www_authenticate(&self) -> Vec<String> {
        self.headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .map(|value| value.to_str().unwrap_or_default().to_owned())
            .collect()
    }
}

#[tokio::test]
async fn valid_token_reaches_the_upstream_with_identity_headers() {
    let stack = Stack::start().await;
    // The token comes from the demo issuer's token endpoint, with its default groups.
    let minted: Value = client()
        .get(format!("{}/token?user=alice", stack.tokengate.issuer.url))
        .send()
        .await
        .expect("demo issuer answers")
        .json()
        .await
        .expect("token JSON");
    let token = minted["access_token"].as_str().expect("access_token");

    let (status, response) = stack
        .send(
            client()
                .get(stack.nginx.url("/orders?id=7"))
                .bearer_auth(token),
        )
        .await;

    assert_eq!(
        status,
        StatusCode::OK,
        "{}\n{}",
        response.body,
        stack.nginx.logs()
    );
    let echo = response.echo();
    assert_eq!(echo["uri"], "/orders?id=7");
    assert_eq!(echoed_header(&echo, "x-auth-request-user"), ["alice"]);
    assert_eq!(
        echoed_header(&echo, "x-auth-request-email"),
        ["alice@example.com"]
    );
    assert_eq!(
        echoed_header(&echo, "x-auth-request-groups"),
        ["developers,ops"]
    );
    assert_eq!(stack.upstream.requests(), 1);
}

#[tokio::test]
async fn missing_token_is_401_with_a_bearer_challenge() {
    let stack = Stack::start().await;

    let (status, response) = stack.send(client().get(stack.nginx.url("/orders"))).await;

    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", stack.nginx.logs());
    // Copied from tokengate's answer by nginx itself: exactly one, no error attribute
    // when no token was sent (RFC 6750 §3.1).
    let challenges = response.www_authenticate();
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    assert!(challenges[0].starts_with("Bearer"), "{challenges:?}");
    assert!(!challenges[0].contains("error="), "{challenges:?}");
    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn tampered_token_is_401_invalid_token() {
    let stack = Stack::start().await;
    let token = stack.tokengate.token("alice", "developers");
    // Edit the signed payload: claim to be mallory in the admins group.
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let payload = URL_SAFE_NO_PAD
        .decode(&parts[1])
        .expect("payload is base64url");
    let mut claims: Value = serde_json::from_slice(&payload).expect("payload is JSON");
    claims["preferred_username"] = "mallory".into();
    claims["groups"] = serde_json::json!(["admins"]);
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims"));
    let tampered = parts.join(".");

    let (status, response) = stack
        .send(
            client()
                .get(stack.nginx.url("/orders"))
                .bearer_auth(&tampered),
        )
        .await;

    assert_eq!(status, StatusCode::UNAUTHORIZED, "{}", stack.nginx.logs());
    let challenges = response.www_authenticate();
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    assert!(
        challenges[0].starts_with("Bearer") && challenges[0].contains(r#"error="invalid_token""#),
        "{challenges:?}"
    );
    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let stack = Stack::start().await;
    let token = stack.tokengate.token("alice", "developers,ops");

    let (status, response) = stack
        .send(
            client()
                .get(stack.nginx.url("/orders"))
                .bearer_auth(&token)
                .header("X-Auth-Request-User", "mallory")
                // Underscore spelling: frameworks that map `-` and `_` alike would read
                // it as X-Auth-Request-User. nginx must drop it.
                .header("X_Auth_Request_User", "mallory")
                .header("X-Auth-Request-Email", "mallory@example.com"),
        )
        .await;

    assert_eq!(
        status,
        StatusCode::OK,
        "{}\n{}",
        response.body,
        stack.nginx.logs()
    );
    let echo = response.echo();
    assert_eq!(echoed_header(&echo, "x-auth-request-user"), ["alice"]);
    assert_eq!(
        echoed_header(&echo, "x-auth-request-email"),
        ["alice@example.com"]
    );
    assert_no_header_name_with_underscore(&echo);
    assert!(
        !response.body.contains("mallory"),
        "a client-sent identity reached the upstream: {}",
        response.body
    );
}

#[tokio::test]
async fn client_sent_groups_never_fill_in_for_a_token_without_groups() {
    let stack = Stack::start().await;
    // tokengate sends no groups header at all for this token: nginx must still not let
    // the client's own value through in its place.
    let token = stack.tokengate.token("alice", "");

    let (status, response) = stack
        .send(
            client()
                .get(stack.nginx.url("/orders"))
                .bearer_auth(&token)
                .header("X-Auth-Request-Groups", "admins")
                .header("X_Auth_Request_Groups", "admins"),
        )
        .await;

    assert_eq!(
        status,
        StatusCode::OK,
        "{}\n{}",
        response.body,
        stack.nginx.logs()
    );
    let echo = response.echo();
    assert_eq!(echoed_header(&echo, "x-auth-request-user"), ["alice"]);
    assert!(
        echoed_header(&echo, "x-auth-request-groups").is_empty(),
        "{echo}"
    );
    assert_no_header_name_with_underscore(&echo);
    assert!(
        !response.body.contains("admins"),
        "a client-sent group reached the upstream: {}",
        response.body
    );
}

#[tokio::test]
async fn tokengate_down_fails_closed_with_500() {
    // A real, valid token: the answer must not depend on what the client holds.
    let (issuer, issuer_server) = start_issuer("127.0.0.1:0").expect("demo issuer starts");
    tokio::spawn(issuer_server);
    let token = issuer.mint(&TokenRequest {
        user: "alice".to_owned(),
        email: None,
        groups: "developers".to_owned(),
    });
    let upstream = EchoUpstream::start();
    let nginx = Nginx::start(closed_address(), upstream.address).await;

    let response = client()
        .get(nginx.url("/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap_or_else(|error| panic!("request through nginx failed: {error}\n{}", nginx.logs()));

    assert_eq!(
        response.status(),
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        nginx.logs()
    );
    assert_eq!(upstream.requests(), 0, "the request went through unchecked");
}

fn assert_no_header_name_with_underscore(echo: &Value) {
    let names: Vec<&String> = echo["headers"]
        .as_object()
        .map(|headers| headers.keys().filter(|name| name.contains('_')).collect())
        .unwrap_or_default();
    assert!(
        names.is_empty(),
        "nginx passed headers with underscores: {names:?}"
    );
}
