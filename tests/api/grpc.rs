//! The gRPC contract (`grpc_listen`): Envoy's `Authorization/Check` answered by the real
//! application, called with tonic's client as Envoy would, and `grpc.health.v1`. Also
//! the unix-socket listeners (auth and gRPC), and what happens to their socket files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::value::Kind;
use hyper_util::rt::TokioIo;
use prometheus::Registry;
use serde_json::json;
use tokengate::config::ListenAddress;
use tokengate::listener::BoundAddress;
use tokengate::startup::{Application, StartupError};
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

use crate::helpers::*;

/// The application with a gRPC listener on a free loopback port.
async fn spawn_grpc_app(
    issuer: &TestIssuer,
    customize: impl FnOnce(&mut tokengate::config::Settings),
) -> TestApp {
    spawn_app_with(issuer, |settings| {
        settings.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
        customize(settings);
    })
    .await
}

/// A channel to a gRPC listener, TCP or unix socket.
async fn channel(address: &BoundAddress) -> Channel {
    match address {
        BoundAddress::Tcp(bound) => {
            Endpoint::from_shared(format!("http://127.0.0.1:{}", bound.port()))
                .unwrap()
                .connect()
                .await
                .expect("connect to the gRPC listener")
        }
        BoundAddress::Unix(path) => {
            let path = path.clone();
            // The URI is a placeholder: the connector dials the socket.
            Endpoint::from_static("http://tokengate.invalid")
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        tokio::net::UnixStream::connect(path)
                            .await
                            .map(TokioIo::new)
                    }
                }))
                .await
                .expect("connect to the gRPC socket")
        }
    }
}

async fn client(app: &TestApp) -> AuthorizationClient<Channel> {
    AuthorizationClient::new(channel(app.grpc.as_ref().expect("a gRPC listener")).await)
}

/// A check as Envoy sends it: the client's request, its headers (pseudo-headers
/// included, as Envoy puts them in the map) and the route's context extensions.
fn check_request(path: &str, headers: &[(&str, &str)], context: &[(&str, &str)]) -> CheckRequest {
    let mut map: HashMap<String, String> = [
        (":authority", "app.example.com"),
        (":method", "GET"),
        (":path", path),
        (":scheme", "https"),
    ]
    .iter()
    .chain(headers)
    .map(|(name, value)| (name.to_string(), value.to_string()))
    .collect();
    map.insert("x-forwarded-proto".to_owned(), "https".to_owned());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "envoy-request-1".to_owned(),
                    method: "GET".to_owned(),
                    path: path.to_owned(),
                    host: "app.example.com".to_owned(),
                    scheme: "https".to_owned(),
                    headers: map,
                    ..HttpRequest::default()
                }),
                ..Request::default()
            }),
            context_extensions: context
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ..AttributeContext::default()
        }),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

async fn check(app: &TestApp, request: CheckRequest) -> CheckResponse {
    client(app)
        .await
        .check(request)
        .await
        .expect("Check answers (a denial is an answer, never an RPC error)")
        .into_inner()
}

fn ok(response: &CheckResponse) -> &OkHttpResponse {
    assert_eq!(
        response.status.as_ref().unwrap().code,
        tonic::Code::Ok as i32,
        "{response:?}"
    );
    match &response.http_response {
        Some(HttpResponse::OkResponse(ok)) => ok,
        other => panic!("not an OK response: {other:?}"),
    }
}

fn denied(response: &CheckResponse, code: tonic::Code, status: i32) -> &DeniedHttpResponse {
    assert_eq!(
        response.status.as_ref().unwrap().code,
        code as i32,
        "{response:?}"
    );
    match &response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            assert_eq!(denied.status.unwrap().code, status, "{response:?}");
            denied
        }
        other => panic!("not a denied response: {other:?}"),
    }
}

/// The headers an answer sets, in order, with their append action.
fn set_headers(ok: &OkHttpResponse) -> Vec<(String, String)> {
    ok.headers
        .iter()
        .map(|option| {
            assert_eq!(
                option.append_action,
                HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                "{option:?}"
            );
            let header = option.header.as_ref().unwrap();
            (header.key.clone(), header.value.clone())
        })
        .collect()
}

fn denial_header<'a>(denied: &'a DeniedHttpResponse, name: &str) -> Vec<&'a str> {
    denied
        .headers
        .iter()
        .filter_map(|option| option.header.as_ref())
        .filter(|header| header.key == name)
        .map(|header| header.value.as_str())
        .collect()
}

/// tokengate's own dynamic metadata, under its namespace.
fn metadata(response: &CheckResponse, namespace: &str) -> serde_json::Value {
    fn json(value: &envoy_types::pb::google::protobuf::Value) -> serde_json::Value {
        match value.kind.as_ref() {
            Some(Kind::StringValue(text)) => json!(text),
            Some(Kind::BoolValue(flag)) => json!(flag),
            Some(Kind::NumberValue(number)) => json!(number),
            Some(Kind::ListValue(list)) => list.values.iter().map(json).collect(),
            Some(Kind::StructValue(object)) => object
                .fields
                .iter()
                .map(|(key, value)| (key.clone(), json(value)))
                .collect(),
            _ => serde_json::Value::Null,
        }
    }
    let fields = &response
        .dynamic_metadata
        .as_ref()
        .expect("dynamic metadata")
        .fields;
    json(&fields[namespace])
}

#[tokio::test]
async fn a_valid_token_is_ok_with_identity_headers_and_metadata() {
    let issuer = TestIssuer::start().await;
    let app = spawn_grpc_app(&issuer, |_| {}).await;
    let token = issuer.token();

    let response = check(
        &app,
        check_request("/orders?id=7", &[("authorization", &bearer(&token))], &[]),
    )
    .await;

    let ok = ok(&response);
    assert_eq!(
        set_headers(ok),
        [
            ("x-auth-request-user".to_owned(), "alice".to_owned()),
            (
                "x-auth-request-email".to_owned(),
                "alice@example.com".to_owned()
            ),
            (
                "x-auth-request-groups".to_owned(),
                "admins,developers".to_owned()
            ),
        ]
    );
    // Every other identity header tokengate owns is removed; none that it sets (Envoy
    // removes after it sets).
    assert_eq!(
        ok.headers_to_remove,
        ["impersonate-user", "impersonate-group", "impersonate-uid"]
    );
    assert_eq!(
        metadata(&response, "tokengate"),
        json!({
            "iss": issuer.url(),
            "sub": "user-1",
            "user": "alice",
            "email": "alice@example.com",
            "groups": ["admins", "developers"],
            "scopes": [],
            "cache_hit": false,
            "reason": "ok",
        })
    );
    assert_eq!(app.decisions_with_reason("ok"), 1.0);

    // The second time from the cache, said in the metadata.
    let again = check(
        &app,
        check_request("/orders", &[("authorization", &bearer(&token))], &[]),
    )
    .await;
    assert_eq!(metadata(&again, "tokengate")["cache_hit"], true);
}

/// A token without email or groups: tokengate sets only the user, and removes the
/// email and groups headers, so that a client's own never stands in for them.
#[tokio::test]
async fn headers_to_remove_name_every_owned_header_the_answer_does_not_set() {
    let issuer = TestIssuer::start().await;
    let app = spawn_grpc_app(&issuer, |settings| {
        settings.identity.claim_headers = vec![tokengate::config::ClaimHeaderSettings {
            header: "X-Tenant".to_owned(),
            claim: "tenant".to_owned(),
        }];
    })
    .await;
    let mut claims = issuer.claims();
    let object = claims.as_object_mut().unwrap();
    object.remove("email");
    object.remove("groups");
    let token = issuer.sign(&claims);

    let response = check(
        &app,
        check_request(
            "/orders",
            &[
                ("authorization", &bearer(&token)),
                ("x-auth-request-email", "mallory@example.com"),
                ("x-auth-request-groups", "admins"),
                ("x-tenant", "forged"),
            ],
            &[],
        ),
    )
    .await;

    let ok = ok(&response);
    assert_eq!(
        set_headers(ok),
        [("x-auth-request-user".to_owned(), "alice".to_owned())]
    );
    assert_eq!(
        ok.headers_to_remove,
        [
            "x-auth-request-email",
            "x-auth-request-groups",
            "impersonate-user",
            "impersonate-group",
            "x-tenant",
            "impersonate-uid",
        ]
    );
}

#[tokio::test]
async fn remove_authorization_removes_the_token_on_an_allow() {
    let issuer = TestIssuer::start().await;
    let app = spawn_grpc_app(&issuer, |settings| {
        settings.grpc.remove_authorization = true;
        settings.grpc.metadata_namespace = "auth.example".to_owned();
    })
    .await;
    let response = check(
        &app,
        check_request("/", &[("authorization", &bearer(&issuer.token()))], &[]),
    )
    .await;
    assert!(ok(&response)
        .headers_to_remove
        .contains(&"authorization".to_owned()));
    assert_eq!(metadata(&response, "auth.example")["user"], "alice");
}

#[tokio::test]
async fn no_token_or_a_bad_one_is_denied_401_with_the_challenge() {
    let issuer = TestIssuer::start().await;
    let app = spawn_grpc_app(&issuer, |_| {}).await;

    let missing = check(&app, check_request("/orders", &[], &[])).await;
    let denied_missing = denied(&missing, tonic::Code::Unauthenticated, 401);
    assert_eq!(
        denial_header(denied_missing, "www-authenticate"),
        ["Bearer"]
    );
    assert_eq!(
        denial_header(denied_missing, "content-type"),
        ["application/json"]
    );
    assert_eq!(denied_missing.body, r#"{"error":"unauthorized"}"#);
    assert_eq!(metadata(&missing, "tokengate")["reason"], "missing_token");

    let bad = format!("{}x", issuer.token());
    let tampered = check(
        &app,
        check_request("/orders", &[("authorization", &bearer(&bad))], &[]),
    )
    .await;
    let denied_bad = denied(&tampered, tonic::Code::Unauthenticated, 401);
    assert_eq!(
        denial_header(denied_bad, "www-authenticate"),
        [r#"Bearer error="invalid_token""#]
    );
    assert_eq!(denied_bad.body, r#"{"error":"invalid_token"}"#);

    let oversized = format!("Bearer {}", "a".repeat(9000));
    let response = check(
        &app,
        check_request("/", &[("authorization", &oversized)], &[]),
    )
    .await;
    denied(&response, tonic::Code::Unauthenticated, 401);
    assert_eq!(app.decisions_with_reason("token_too_large"), 1.0);
}

/// `context_extensions` carry the auth URL query's keys: a member passes, a non-member
/// gets 403, an unknown key is a broken route config (400), as on `/auth`.
#[tokio::test]
async fn context_extensions_are_per_route_requirements() {
    let issuer = TestIssuer::start().await;
    let app = spawn_grpc_app(&issuer, |_| {}).await;
    let authorization = bearer(&issuer.token());
    let headers = [("authorization", authorization.as_str())];
    let with_extensions =
        |extensions: &[(&str, &str)]| check(&app, check_request("/", &headers, extensions));

    let member = with_extensions(&[("allowed_groups", "ops,admins")]).await;
    ok(&member);

    let outsider = with_extensions(&[("allowed_groups", "ops")]).await;
    let refused = denied(&outsider, tonic::Code::PermissionDenied, 403);
    assert_eq!(refused.body, r#"{"error":"access_denied"}"#);
    assert!(denial_header(refused, "www-authenticate").is_empty());

    let scope = with_extensions(&[("required_scopes", "orders:write")]).await;
    let refused = denied(&scope, tonic::Code::PermissionDenied, 403);
    assert_eq!(
        denial_header(refused, "www-authenticate"),
        [r#"Bearer error="insufficient_scope""#]
    );

    let typo = with_extensions(&[("allowed_group", "ops")]).await;
    let refused = denied(&typo, tonic::Code::InvalidArgument, 400);
    assert_eq!(refused.body, r#"{"error":"invalid_request"}"#);
    assert_eq!(app.decisions_with_reason("bad_policy"), 1.0);
}

/// A call that describes no HTTP request, or a head over the limits, is a denial with
/// its reason, never an allow and never an RPC error.
#[tokio::test]
async fn broken_calls_are_denials() {
    let issuer = TestIssuer::start().await;
    let app = spawn_grpc_app(&issuer, |_| {}).await;
    let token = bearer(&issuer.token());

    let empty = check(&app, CheckRequest::default()).await;
    let refused = denied(&empty, tonic::Code::InvalidArgument, 400);
    assert_eq!(refused.body, r#"{"error":"invalid_request"}"#);
    let mut no_http = check_request("/", &[("authorization", &token)], &[]);
    no_http.attributes.as_mut().unwrap().request = None;
    denied(
        &check(&app, no_http).await,
        tonic::Code::InvalidArgument,
        400,
    );
    assert_eq!(app.decisions_with_reason("bad_check_request"), 2.0);

    let large = "x".repeat(40 * 1024);
    let oversized = check(
        &app,
        check_request("/", &[("authorization", &token), ("x-large", &large)], &[]),
    )
    .await;
    denied(&oversized, tonic::Code::InvalidArgument, 431);
    assert_eq!(app.decisions_with_reason("headers_too_large"), 1.0);

    let control = check(
        &app,
        check_request(
            "/",
            &[("authorization", &token), ("x-bad", "a\u{7f}b")],
            &[],
        ),
    )
    .await;
    denied(&control, tonic::Code::InvalidArgument, 400);

    // A path that can be read two ways, as on /ext-authz.
    let ambiguous = check(
        &app,
        check_request("/public/%2e%2e/admin", &[("authorization", &token)], &[]),
    )
    .await;
    denied(&ambiguous, tonic::Code::InvalidArgument, 400);
}

async fn health(address: &BoundAddress, service: &str) -> ServingStatus {
    let response = HealthClient::new(channel(address).await)
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .expect("health answers")
        .into_inner();
    ServingStatus::try_from(response.status).unwrap()
}

const AUTHORIZATION_SERVICE: &str = "envoy.service.auth.v3.Authorization";

/// SERVING while `/readyz` is 200: not before the keys are loaded, and not from the
/// moment shutdown starts (while checks are still answered during the drain delay).
#[tokio::test]
async fn health_follows_readiness_and_turns_not_serving_at_shutdown() {
    let issuer = TestIssuer::start().await;
    issuer.set_up(false);
    let mut settings = settings_for(issuer.url());
    settings.grpc_listen = Some("127.0.0.1:0".parse().unwrap());
    settings.shutdown.drain_delay = Duration::from_secs(3);
    settings.shutdown.grace = Duration::from_secs(5);
    let application = Application::build_with_registry(settings, Registry::new())
        .await
        .unwrap();
    let grpc = application.grpc_address().unwrap().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    for service in ["", AUTHORIZATION_SERVICE] {
        assert_eq!(
            health(&grpc, service).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }

    issuer.set_up(true);
    let mut serving = false;
    for _ in 0..150 {
        if health(&grpc, AUTHORIZATION_SERVICE).await == ServingStatus::Serving {
            serving = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(serving, "SERVING once the keys are loaded");
    assert_eq!(health(&grpc, "").await, ServingStatus::Serving);

    stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    for service in ["", AUTHORIZATION_SERVICE] {
        assert_eq!(
            health(&grpc, service).await,
            ServingStatus::NotServing,
            "{service:?}"
        );
    }
    // Still answering checks during the drain delay.
    let token = bearer(&issuer.token());
    let response = AuthorizationClient::new(channel(&grpc).await)
        .check(check_request("/", &[("authorization", &token)], &[]))
        .await
        .unwrap()
        .into_inner();
    ok(&response);
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops within the grace period")
        .unwrap()
        .unwrap();
}

fn socket_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokengate-api-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unix(path: &Path) -> ListenAddress {
    ListenAddress::Unix(path.to_owned())
}

/// `/auth` and `Check` over unix sockets, with the configured mode; the files are gone
/// once the application stopped.
#[tokio::test]
async fn every_listener_can_be_a_unix_socket() {
    use std::os::unix::fs::PermissionsExt;
    let issuer = TestIssuer::start().await;
    let dir = socket_dir("sockets");
    let (auth_path, admin_path, grpc_path) = (
        dir.join("auth.sock"),
        dir.join("admin.sock"),
        dir.join("grpc.sock"),
    );
    let mut settings = settings_for(issuer.url());
    settings.listen = unix(&auth_path);
    settings.admin_listen = unix(&admin_path);
    settings.grpc_listen = Some(unix(&grpc_path));
    settings.server.unix_socket_mode = "0600".to_owned();
    settings.shutdown.drain_delay = Duration::ZERO;
    settings.shutdown.grace = Duration::from_secs(2);
    let application = Application::build(settings).await.unwrap();
    assert_eq!(
        application.auth_address(),
        &BoundAddress::Unix(auth_path.clone())
    );
    assert_eq!(application.port(), 0);
    assert_eq!(application.grpc_port(), None);
    let grpc = application.grpc_address().unwrap().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until(async move {
        let _ = stopped.await;
    }));
    for path in [&auth_path, &admin_path, &grpc_path] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", path.display());
    }

    let over = |path: &Path| {
        reqwest::Client::builder()
            .unix_socket(path)
            .build()
            .unwrap()
    };
    let allowed = over(&auth_path)
        .get("http://tokengate/auth")
        .bearer_auth(issuer.token())
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 202);
    assert_eq!(allowed.headers()["x-auth-request-user"], "alice");
    assert_invalid_token(
        over(&auth_path)
            .get("http://tokengate/auth")
            .bearer_auth("not-a-token.x.y")
            .send()
            .await
            .unwrap(),
    )
    .await;
    let ready = over(&admin_path)
        .get("http://tokengate/readyz")
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);

    let token = bearer(&issuer.token());
    let response = AuthorizationClient::new(channel(&grpc).await)
        .check(check_request("/", &[("authorization", &token)], &[]))
        .await
        .unwrap()
        .into_inner();
    ok(&response);
    assert_eq!(health(&grpc, "").await, ServingStatus::Serving);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("stops")
        .unwrap()
        .unwrap();
    for path in [&auth_path, &admin_path, &grpc_path] {
        assert!(
            !path.exists(),
            "{} removed on a clean shutdown",
            path.display()
        );
    }
}

/// A socket file left by a crash is replaced; one a live process accepts on refuses the
/// start, naming the address, and is left alone.
#[tokio::test]
async fn a_stale_socket_is_replaced_and_a_live_one_refuses_the_start() {
    let issuer = TestIssuer::start().await;
    let dir = socket_dir("stale");
    let path = dir.join("auth.sock");
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists(), "a stale socket file");

    let mut settings = settings_for(issuer.url());
    settings.listen = unix(&path);
    let running = Application::build(settings.clone())
        .await
        .expect("the stale file is replaced");

    let error = match Application::build(settings).await {
        Ok(_) => panic!("a second instance started on a live socket"),
        Err(error) => error,
    };
    assert!(matches!(error, StartupError::SocketInUse { .. }), "{error}");
    assert!(
        error
            .to_string()
            .contains(&format!("unix:{}", path.display())),
        "{error}"
    );
    assert!(path.exists(), "the live socket is left alone");
    drop(running);
    assert!(!path.exists(), "removed with the application");
}
