//! Revocation: back-channel logout tokens (OpenID Connect Back-Channel Logout 1.0 §2.6),
//! the operator's revoke endpoint, and the check on every request, cache hits included.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, Header};
use serde_json::{json, Value};
use tokengate::config::{BackchannelLogoutSettings, Settings};
use tokengate::http::revocation::REFUSAL_LOG_INTERVAL;
use tokengate::verify::cache::unix_now;
use tokengate::verify::logout::BACKCHANNEL_LOGOUT_EVENT;

use crate::helpers::{
    assert_invalid_token, counter, rsa_key, spawn_app_with, TestApp, TestIssuer, AUDIENCE,
};
use crate::process::{wait_ready, Launch};

/// Our client id at the test issuer, for logout tokens.
const CLIENT_ID: &str = "tokengate-rp";
const ADMIN_SECRET: &str = "an-admin-secret-of-some-length";

fn with_logout(settings: &mut Settings) {
    settings.issuers[0].backchannel_logout = Some(BackchannelLogoutSettings {
        client_id: CLIENT_ID.to_owned(),
        max_age: Duration::from_secs(300),
    });
}

fn with_admin_secret(settings: &mut Settings) {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "tokengate-admin-secret-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::write(&path, format!("{ADMIN_SECRET}\n")).unwrap();
    settings.revocation.admin_token_file = Some(path);
}

async fn spawn(issuer: &TestIssuer) -> TestApp {
    spawn_app_with(issuer, |settings| {
        with_logout(settings);
        with_admin_secret(settings);
    })
    .await
}

fn unique_jti() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "logout-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// Valid logout-token claims for `sub` at `issuer`.
fn logout_claims(issuer: &TestIssuer, sub: &str) -> Value {
    json!({
        "iss": issuer.url(),
        "aud": CLIENT_ID,
        "iat": unix_now(),
        "exp": unix_now() + 120,
        "jti": unique_jti(),
        "sub": sub,
        "events": { BACKCHANNEL_LOGOUT_EVENT: {} },
    })
}

fn sign_logout(kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::RS256);
    header.typ = Some("logout+jwt".to_owned());
    header.kid = Some(kid.to_owned());
    rsa_key(kid).sign_with_header(&header, claims)
}

async fn post_logout_body(app: &TestApp, body: String) -> reqwest::Response {
    app.client
        .post(format!("{}/backchannel-logout", app.address))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .expect("logout request")
}

async fn post_logout(app: &TestApp, token: &str) -> reqwest::Response {
    let body: String = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("logout_token", token)
        .finish();
    post_logout_body(app, body).await
}

/// A token of `sub`, with extra claims.
fn user_token(issuer: &TestIssuer, sub: &str, extra: Value) -> String {
    let mut claims = issuer.claims();
    claims["sub"] = json!(sub);
    for (name, value) in extra.as_object().unwrap() {
        claims[name] = value.clone();
    }
    issuer.sign(&claims)
}

async fn assert_logout_refused(response: reqwest::Response) {
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"error":"invalid_request"}"#
    );
}

/// Posts a bad logout token for user-1 and checks it was refused and revoked nothing:
/// user-1's cached token still passes.
async fn refused_and_nothing_revoked(claims: impl FnOnce(&TestIssuer) -> String) {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    let token = user_token(&issuer, "user-1", json!({}));
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
    assert_logout_refused(post_logout(&app, &claims(&issuer)).await).await;
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_revocation_events_total",
            &[("source", "backchannel"), ("result", "applied")]
        ),
        0.0
    );
}

/// [`refused_and_nothing_revoked`] for user-1's logout claims after `edit`, signed by `k1`.
async fn refused_after(edit: impl FnOnce(&mut Value)) {
    refused_and_nothing_revoked(|issuer| {
        let mut claims = logout_claims(issuer, "user-1");
        edit(&mut claims);
        sign_logout("k1", &claims)
    })
    .await;
}

#[tokio::test]
async fn a_logout_token_signed_by_another_key_is_refused() {
    refused_and_nothing_revoked(|issuer| {
        sign_logout("not-published", &logout_claims(issuer, "user-1"))
    })
    .await;
}

#[tokio::test]
async fn a_logout_token_for_another_audience_is_refused() {
    refused_after(|claims| {
        claims["aud"] = json!("some-other-client");
    })
    .await;
}

#[tokio::test]
async fn a_logout_token_with_a_nonce_is_refused() {
    refused_after(|claims| {
        claims["nonce"] = json!("n-0S6_WzA2Mj");
    })
    .await;
}

#[tokio::test]
async fn a_logout_token_without_events_is_refused() {
    refused_after(|claims| {
        claims.as_object_mut().unwrap().remove("events");
    })
    .await;
}

#[tokio::test]
async fn a_logout_token_with_another_event_is_refused() {
    refused_after(|claims| {
        claims["events"] = json!({"http://schemas.openid.net/event/other": {}});
    })
    .await;
}

#[tokio::test]
async fn a_logout_token_without_sid_and_sub_is_refused() {
    refused_after(|claims| {
        claims.as_object_mut().unwrap().remove("sub");
    })
    .await;
}

#[tokio::test]
async fn a_logout_token_without_jti_is_refused() {
    refused_after(|claims| {
        claims.as_object_mut().unwrap().remove("jti");
    })
    .await;
}

#[tokio::test]
async fn an_old_logout_token_is_refused() {
    refused_after(|claims| {
        claims["iat"] = json!(unix_now() - 3600);
    })
    .await;
}

#[tokio::test]
async fn an_access_token_is_not_a_logout_token() {
    refused_and_nothing_revoked(|issuer| {
        let mut claims = logout_claims(issuer, "user-1");
        claims["aud"] = json!(CLIENT_ID);
        // Signed with `typ: at+jwt`.
        issuer.sign(&claims)
    })
    .await;
}

#[tokio::test]
async fn something_that_is_not_a_jwt_is_refused() {
    refused_and_nothing_revoked(|_| "not-a-jwt".to_owned()).await;
}

#[tokio::test]
async fn a_replayed_logout_token_is_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    let logout = sign_logout("k1", &logout_claims(&issuer, "user-9"));
    assert_eq!(post_logout(&app, &logout).await.status(), 200);
    assert_logout_refused(post_logout(&app, &logout).await).await;
}

#[tokio::test]
async fn an_oversized_logout_body_is_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    let token = user_token(&issuer, "user-1", json!({}));
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
    let valid = sign_logout("k1", &logout_claims(&issuer, "user-1"));
    let body = format!("logout_token={valid}&padding={}", "x".repeat(64 * 1024));
    assert_logout_refused(post_logout_body(&app, body).await).await;
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
}

#[tokio::test]
async fn a_body_that_is_not_a_form_is_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    let valid = sign_logout("k1", &logout_claims(&issuer, "user-1"));
    let response = app
        .client
        .post(format!("{}/backchannel-logout", app.address))
        .header("content-type", "application/json")
        .body(json!({"logout_token": valid}).to_string())
        .send()
        .await
        .unwrap();
    assert_logout_refused(response).await;
}

#[tokio::test]
async fn a_logout_of_a_subject_refuses_its_cached_tokens_and_no_one_elses() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    let alice = user_token(&issuer, "user-1", json!({}));
    let bob = user_token(&issuer, "user-2", json!({}));
    // Both verified and cached: the next requests are cache hits.
    assert_eq!(app.auth_with_token(&alice).await.status(), 202);
    assert_eq!(app.auth_with_token(&bob).await.status(), 202);

    let response = post_logout(&app, &sign_logout("k1", &logout_claims(&issuer, "user-1"))).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["cache-control"], "no-store");

    assert_invalid_token(app.auth_with_token(&alice).await).await;
    assert_eq!(app.decisions_with_reason("revoked"), 1.0);
    assert_eq!(app.auth_with_token(&bob).await.status(), 202);
    // Logged in again after the logout: a token issued later passes.
    let later = user_token(&issuer, "user-1", json!({"iat": unix_now() + 2}));
    assert_eq!(app.auth_with_token(&later).await.status(), 202);
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_revocation_events_total",
            &[("source", "backchannel"), ("result", "applied")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_logout_of_a_session_refuses_that_sessions_tokens_only() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    let laptop = user_token(&issuer, "user-1", json!({"sid": "session-laptop"}));
    let phone = user_token(&issuer, "user-1", json!({"sid": "session-phone"}));
    assert_eq!(app.auth_with_token(&laptop).await.status(), 202);
    assert_eq!(app.auth_with_token(&phone).await.status(), 202);
    let mut claims = logout_claims(&issuer, "user-1");
    claims["sid"] = json!("session-laptop");
    assert_eq!(
        post_logout(&app, &sign_logout("k1", &claims))
            .await
            .status(),
        200
    );
    assert_invalid_token(app.auth_with_token(&laptop).await).await;
    assert_eq!(app.auth_with_token(&phone).await.status(), 202);
}

#[tokio::test]
async fn the_logout_endpoint_is_off_without_a_configured_issuer() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |_| {}).await;
    let logout = sign_logout("k1", &logout_claims(&issuer, "user-1"));
    assert_eq!(post_logout(&app, &logout).await.status(), 404);
}

async fn post_revoke(app: &TestApp, secret: Option<&str>, body: Value) -> reqwest::Response {
    let mut request = app
        .client
        .post(format!("{}/revocations", app.admin_address))
        .json(&body);
    if let Some(secret) = secret {
        request = request.bearer_auth(secret);
    }
    request.send().await.expect("revoke request")
}

#[tokio::test]
async fn the_revoke_endpoint_without_a_secret_is_unauthorized() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    let response = post_revoke(&app, None, json!({"issuer": issuer.url(), "sub": "user-1"})).await;
    assert_eq!(response.status(), 401);
    let token = user_token(&issuer, "user-1", json!({}));
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
}

#[tokio::test]
async fn the_revoke_endpoint_with_a_wrong_secret_is_unauthorized() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    for wrong in [
        "",
        "an-admin-secret-of-some-lengtH",
        "an-admin-secret-of-some-length-and-more",
    ] {
        let body = json!({"issuer": issuer.url(), "sub": "user-1"});
        assert_eq!(
            post_revoke(&app, Some(wrong), body).await.status(),
            401,
            "{wrong:?}"
        );
    }
    let token = user_token(&issuer, "user-1", json!({}));
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
}

#[tokio::test]
async fn the_revoke_endpoint_is_off_without_a_configured_secret() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, with_logout).await;
    let body = json!({"issuer": issuer.url(), "sub": "user-1"});
    assert_eq!(
        post_revoke(&app, Some(ADMIN_SECRET), body).await.status(),
        404
    );
}

#[tokio::test]
async fn the_revoke_endpoint_refuses_bad_requests() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    for body in [
        json!({"issuer": issuer.url()}),
        json!({"issuer": issuer.url(), "sub": "a", "jti": "b"}),
        json!({"issuer": "https://not-configured.example", "sub": "a"}),
        json!({"issuer": issuer.url(), "sub": "a", "extra": 1}),
        json!(["not", "an", "object"]),
    ] {
        let response = post_revoke(&app, Some(ADMIN_SECRET), body.clone()).await;
        assert_eq!(response.status(), 400, "{body}");
    }
}

#[tokio::test]
async fn an_operator_revokes_one_token_by_jti() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    let revoked = user_token(&issuer, "user-1", json!({"jti": "token-1"}));
    let other = user_token(&issuer, "user-1", json!({"jti": "token-2"}));
    assert_eq!(app.auth_with_token(&revoked).await.status(), 202);
    let body = json!({"issuer": issuer.url(), "jti": "token-1"});
    let response = post_revoke(&app, Some(ADMIN_SECRET), body).await;
    assert_eq!(response.status(), 200);
    assert_invalid_token(app.auth_with_token(&revoked).await).await;
    assert_eq!(app.auth_with_token(&other).await.status(), 202);
}

#[tokio::test]
async fn a_revocation_refuses_introspection_cache_hits_too() {
    let issuer = TestIssuer::start().await;
    let app = crate::introspection::spawn_opaque_app(&issuer, |_, settings| {
        with_admin_secret(settings);
    })
    .await;
    // `active_answer` names sub user-2.
    let opaque = issuer.opaque_token();
    assert_eq!(app.auth_with_token(&opaque).await.status(), 202);
    assert_eq!(app.auth_with_token(&opaque).await.status(), 202);
    let calls = issuer.introspection_calls();
    let body = json!({"issuer": issuer.url(), "sub": "user-2"});
    assert_eq!(
        post_revoke(&app, Some(ADMIN_SECRET), body).await.status(),
        200
    );
    assert_invalid_token(app.auth_with_token(&opaque).await).await;
    // Refused from the cached answer, without asking the issuer again.
    assert_eq!(issuer.introspection_calls(), calls);
}

#[tokio::test]
async fn revocations_outlive_a_reload() {
    use tokengate::reload::Reloader;
    use tokengate::shutdown::{BackgroundTasks, ShutdownTrigger};

    let issuer = TestIssuer::start().await;
    let dir = std::env::temp_dir().join(format!(
        "tokengate-revocation-reload-{}-{}",
        std::process::id(),
        unique_jti()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("admin-secret");
    std::fs::write(&secret, ADMIN_SECRET).unwrap();
    let config = dir.join("tokengate.yaml");
    let yaml = |user_claim: &str| {
        format!(
            r#"
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
workers: 1
issuers:
  - issuer: "{}"
    audiences: ["{}"]
identity:
  user_claim: {user_claim}
revocation:
  admin_token_file: "{}"
"#,
            issuer.url(),
            crate::helpers::AUDIENCE,
            secret.display()
        )
    };
    std::fs::write(&config, yaml("preferred_username")).unwrap();
    let settings = Settings::load(&config, None).unwrap();
    let registry = prometheus::Registry::new();
    let application =
        tokengate::startup::Application::build_with_registry(settings, registry.clone())
            .await
            .unwrap();
    let state = application.state();
    let app = TestApp {
        address: format!("http://127.0.0.1:{}", application.port()),
        admin_address: format!("http://127.0.0.1:{}", application.admin_port()),
        grpc: None,
        registry,
        client: reqwest::Client::new(),
    };
    tokio::spawn(application.run_until_stopped());

    let revoked = user_token(&issuer, "user-1", json!({"jti": "before-reload"}));
    let other = user_token(&issuer, "user-1", json!({"jti": "another"}));
    let body = json!({"issuer": issuer.url(), "jti": "before-reload"});
    assert_eq!(
        post_revoke(&app, Some(ADMIN_SECRET), body).await.status(),
        200
    );
    assert_invalid_token(app.auth_with_token(&revoked).await).await;

    // Another identity mapping: every issuer is compiled anew, every verdict judged again.
    std::fs::write(&config, yaml("email")).unwrap();
    let (_stop, background) = ShutdownTrigger::new();
    let reloader = Reloader::new(config, state, background, BackgroundTasks::default());
    reloader.reload("test").await.expect("the reload succeeds");
    assert_invalid_token(app.auth_with_token(&revoked).await).await;
    let response = app.auth_with_token(&other).await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.headers()["x-auth-request-user"],
        "alice@example.com"
    );
}

/// A Redis URL where nothing listens: the feed is down from the start.
fn with_unreachable_feed(settings: &mut Settings, require: bool) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = closed.local_addr().unwrap();
    drop(closed);
    settings.revocation.require_feed_for_readiness = require;
    settings.revocation.redis = Some(tokengate::config::RedisFeedSettings {
        url: format!("redis://{address}/"),
        password_file: None,
        ca_file: None,
        channel: "tokengate:revocations".to_owned(),
        key_prefix: "tokengate:revocation:".to_owned(),
        max_pending: 100,
    });
}

#[tokio::test]
async fn without_its_first_feed_load_a_replica_is_not_ready_but_serves() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |settings| {
        with_unreachable_feed(settings, true);
        with_admin_secret(settings);
    })
    .await;
    let response = app.admin_get("/readyz").await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.text().await.unwrap(),
        "revocation feed not loaded yet\n"
    );
    let token = user_token(&issuer, "user-1", json!({"jti": "while-down"}));
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
    // Accepted and held here meanwhile, to be written once Redis answers.
    let body = json!({"issuer": issuer.url(), "jti": "while-down"});
    assert_eq!(
        post_revoke(&app, Some(ADMIN_SECRET), body).await.status(),
        200
    );
    assert_invalid_token(app.auth_with_token(&token).await).await;
    let metrics = app.admin_get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("tokengate_revocation_feed_up 0"),
        "{metrics}"
    );
}

#[tokio::test]
async fn readiness_can_be_told_not_to_wait_for_the_feed() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |settings| with_unreachable_feed(settings, false)).await;
    assert_eq!(app.admin_get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn the_revoke_endpoint_takes_the_bearer_scheme_in_any_case() {
    let issuer = TestIssuer::start().await;
    let app = spawn(&issuer).await;
    let response = app
        .client
        .post(format!("{}/revocations", app.admin_address))
        .header("authorization", format!("bEARER {ADMIN_SECRET}"))
        .json(&json!({"issuer": issuer.url(), "sub": "user-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// A flood of refused logout tokens writes one log line per interval with a count, not a
/// line per request: whoever can reach the endpoint cannot flood the log. The real
/// binary, so that its log is this test's alone.
#[tokio::test]
async fn a_flood_of_refused_logout_tokens_writes_one_line_per_interval_with_a_count() {
    let issuer = TestIssuer::start().await;
    let launch = Launch::new("logout-flood");
    let config = format!(
        r#"
{listeners}
workers: 1
issuers:
  - issuer: "{issuer}"
    audiences: [{AUDIENCE}]
    backchannel_logout:
      client_id: {CLIENT_ID}
log:
  format: json
  filter: info
"#,
        listeners = launch.listeners(),
        issuer = issuer.url(),
    );
    let mut child = launch.spawn(
        Path::new(env!("CARGO_BIN_EXE_tokengate")),
        &config,
        Stdio::piped(),
        Stdio::null(),
    );
    let client = reqwest::Client::new();
    assert!(wait_ready(&client, &launch.admin_url("/readyz")).await);
    const FLOOD: usize = 50;
    let started = Instant::now();
    for _ in 0..FLOOD {
        let response = client
            .post(launch.url("/backchannel-logout"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("logout_token=not-a-jwt")
            .send()
            .await
            .expect("logout request");
        assert_logout_refused(response).await;
    }
    let elapsed = started.elapsed();
    child.terminate();
    assert!(child.wait_exit(Duration::from_secs(15)).await.is_some());
    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut stdout)
        .unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "logout token refused")
        .collect();
    let intervals = 1 + (elapsed.as_secs() / REFUSAL_LOG_INTERVAL.as_secs()) as usize;
    assert!(
        !lines.is_empty() && lines.len() <= intervals,
        "{} lines for {FLOOD} refusals in {elapsed:?}:\n{stdout}",
        lines.len()
    );
    assert_eq!(lines[0]["refused_since_last_line"], 1, "{}", lines[0]);
    assert_eq!(lines[0]["refused"], "malformed", "{}", lines[0]);
}
