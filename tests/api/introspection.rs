//! RFC 7662 introspection: opaque tokens, the answer cache and its revocation window,
//! single flight, the per-issuer call slots and their queue, strict answers, and failing
//! closed when the issuer cannot answer. The test issuer's introspection endpoint counts
//! its calls.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;
use tokengate::config::{ClientAuthMethod, IntrospectionSettings, Settings};
use tokengate::verify::cache::unix_now;

use crate::helpers::*;

/// A file holding the test client secret, with the trailing newline `echo` would write.
fn secret_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tokengate-api-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("introspection-secret");
        std::fs::write(&path, format!("{INTROSPECTION_SECRET}\n")).unwrap();
        path
    })
    .clone()
}

pub(crate) fn introspection_settings() -> IntrospectionSettings {
    IntrospectionSettings {
        endpoint: None,
        client_id: INTROSPECTION_CLIENT_ID.to_owned(),
        client_secret_file: Some(secret_file()),
        client_secret_env: None,
        auth_method: ClientAuthMethod::default(),
        timeout: Duration::from_secs(2),
        positive_ttl: Duration::from_secs(60),
        negative_ttl: Duration::from_secs(5),
        introspect_jwts: false,
        require_audience: false,
        max_in_flight: 64,
        max_waiting: 1024,
        max_wait: Duration::from_secs(1),
    }
}

/// The application with opaque tokens introspected at `issuer`, after `customize`.
pub(crate) async fn spawn_opaque_app(
    issuer: &TestIssuer,
    customize: impl FnOnce(&mut IntrospectionSettings, &mut Settings),
) -> TestApp {
    spawn_app_with(issuer, |settings| {
        let mut introspection = introspection_settings();
        customize(&mut introspection, settings);
        settings.issuers[0].introspection = Some(introspection);
        if !settings.issuers[0]
            .introspection
            .as_ref()
            .is_some_and(|i| i.introspect_jwts)
        {
            settings.token.opaque_issuer = Some(issuer.url().to_owned());
        }
    })
    .await
}

/// Sends `token` until the answer is not 202, for at most `limit`. The wait depends on
/// ttls the test sets; the limit only keeps a broken build from hanging.
async fn first_refusal(app: &TestApp, token: &str, limit: Duration) -> reqwest::Response {
    let deadline = Instant::now() + limit;
    loop {
        let response = app.auth_with_token(token).await;
        if response.status() != 202 || Instant::now() >= deadline {
            return response;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Asserts a 503 with the fixed "temporarily unavailable" body and no token error.
pub(crate) async fn assert_unavailable(response: reqwest::Response) {
    assert_eq!(response.status(), 503);
    assert!(response.headers().get("www-authenticate").is_none());
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"error":"temporarily_unavailable"}"#
    );
}

#[tokio::test]
async fn active_token_gets_202_with_headers_from_the_answer() {
    let issuer = TestIssuer::start().await;
    // The endpoint comes from discovery: none is configured.
    let app = spawn_opaque_app(&issuer, |_, _| {}).await;

    let response = app.auth_with_token(&issuer.opaque_token()).await;

    assert_eq!(response.status(), 202);
    let headers = response.headers();
    assert_eq!(headers["x-auth-request-user"], "bob");
    assert_eq!(headers["x-auth-request-email"], "bob@example.com");
    assert_eq!(headers["x-auth-request-groups"], "ops,support");
    assert_eq!(issuer.introspection_calls(), 1);
    assert_eq!(issuer.last_client_auth(), Some("basic"));
}

#[tokio::test]
async fn identity_uses_the_configured_claims_then_username_then_sub() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |_, settings| {
        settings.identity.groups_claim = "scope".to_owned();
        // `scope` is one space-separated string (RFC 6749 §3.3).
        settings.issuers[0].space_separated_groups = true;
    })
    .await;

    let response = app.auth_with_token(&issuer.opaque_token()).await;
    assert_eq!(
        response.headers()["x-auth-request-groups"],
        "openid,orders:read"
    );

    let mut answer = issuer.active_answer();
    answer.as_object_mut().unwrap().remove("username");
    let response = app.auth_with_token(&issuer.opaque_token_with(answer)).await;
    assert_eq!(response.headers()["x-auth-request-user"], "user-2");
}

#[tokio::test]
async fn inactive_token_gets_401_and_the_answer_is_kept_briefly() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |_, _| {}).await;
    let token = issuer.opaque_token_with(json!({"active": false}));

    assert_invalid_token(app.auth_with_token(&token).await).await;
    assert_invalid_token(app.auth_with_token(&token).await).await;

    assert_eq!(
        issuer.introspection_calls(),
        1,
        "negative answers are cached"
    );
    assert_eq!(app.decisions_with_reason("inactive_token"), 2.0);
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_introspection_requests_total",
            &[("result", "inactive")]
        ),
        1.0
    );
}

#[tokio::test]
async fn negative_answers_expire_after_negative_ttl() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |introspection, _| {
        introspection.negative_ttl = Duration::from_secs(1);
    })
    .await;
    let token = issuer.opaque_token_with(json!({"active": false}));
    assert_invalid_token(app.auth_with_token(&token).await).await;

    // Issued late (or the issuer recovered): accepted once the negative answer expires.
    issuer.set_answer(&token, issuer.active_answer());
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.auth_with_token(&token).await.status() != 202 {
        assert!(Instant::now() < deadline, "negative answer never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(issuer.introspection_calls(), 2);
}

#[tokio::test]
async fn repeated_token_makes_one_upstream_call_within_the_ttl() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |_, _| {}).await;
    let token = issuer.opaque_token();

    for _ in 0..5 {
        assert_eq!(app.auth_with_token(&token).await.status(), 202);
    }

    assert_eq!(issuer.introspection_calls(), 1);
    let cache = |result| {
        counter(
            &app.registry,
            "tokengate_cache_requests_total",
            &[("cache", "introspection"), ("result", result)],
        )
    };
    assert_eq!(cache("miss"), 1.0);
    assert_eq!(cache("hit"), 4.0);
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_introspection_requests_total",
            &[("issuer", issuer.url()), ("result", "success")]
        ),
        1.0
    );
}

#[tokio::test]
async fn concurrent_requests_for_a_new_token_make_one_upstream_call() {
    let issuer = TestIssuer::start().await;
    // A slow answer keeps all the requests waiting on the same miss.
    issuer.set_introspection_mode(IntrospectionMode::Slow(Duration::from_millis(300)));
    let app = spawn_opaque_app(&issuer, |_, settings| settings.workers = Some(4)).await;
    let token = issuer.opaque_token();

    let responses = join_all((0..100).map(|_| app.auth_with_token(&token))).await;

    assert!(responses.iter().all(|response| response.status() == 202));
    assert_eq!(issuer.introspection_calls(), 1);
}

#[tokio::test]
async fn revoked_token_is_refused_once_the_ttl_expires() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |introspection, _| {
        introspection.positive_ttl = Duration::from_secs(1);
    })
    .await;
    let token = issuer.opaque_token();
    assert_eq!(app.auth_with_token(&token).await.status(), 202);

    issuer.revoke(&token);

    let response = first_refusal(&app, &token, Duration::from_secs(10)).await;
    assert_invalid_token(response).await;
    assert_eq!(app.decisions_with_reason("inactive_token"), 1.0);
    // The answer cached before the revocation, then one call after its ttl.
    assert_eq!(issuer.introspection_calls(), 2);
}

#[tokio::test]
async fn expired_exp_in_a_cached_positive_answer_is_refused_inside_the_ttl() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |introspection, settings| {
        introspection.positive_ttl = Duration::from_secs(60);
        settings.issuers[0].leeway = Duration::ZERO;
    })
    .await;
    // An issuer that keeps saying `active: true` past the token's `exp`.
    let mut answer = issuer.active_answer();
    answer["exp"] = json!(unix_now() + 2);
    let token = issuer.opaque_token_with(answer);
    assert_eq!(app.auth_with_token(&token).await.status(), 202);

    let response = first_refusal(&app, &token, Duration::from_secs(10)).await;

    assert_invalid_token(response).await;
    assert_eq!(app.decisions_with_reason("expired"), 1.0);
}

#[tokio::test]
async fn answer_for_another_audience_or_issuer_is_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |_, _| {}).await;
    let cases = [
        ("aud", json!("another-api"), "wrong_audience"),
        ("iss", json!("https://evil.example.com"), "unknown_issuer"),
        ("nbf", json!(unix_now() + 600), "not_yet_valid"),
        ("token_type", json!("refresh_token"), "wrong_token_type"),
    ];
    for (member, value, reason) in cases {
        let mut answer = issuer.active_answer();
        answer[member] = value;
        assert_invalid_token(app.auth_with_token(&issuer.opaque_token_with(answer)).await).await;
        assert_eq!(app.decisions_with_reason(reason), 1.0, "{member}");
    }
}

#[tokio::test]
async fn answer_without_aud_is_refused_when_an_audience_is_required() {
    let issuer = TestIssuer::start().await;
    let mut answer = issuer.active_answer();
    answer.as_object_mut().unwrap().remove("aud");

    let lenient = spawn_opaque_app(&issuer, |_, _| {}).await;
    let token = issuer.opaque_token_with(answer.clone());
    assert_eq!(lenient.auth_with_token(&token).await.status(), 202);

    let strict = spawn_opaque_app(&issuer, |introspection, _| {
        introspection.require_audience = true;
    })
    .await;
    let token = issuer.opaque_token_with(answer);
    assert_invalid_token(strict.auth_with_token(&token).await).await;
    assert_eq!(strict.decisions_with_reason("wrong_audience"), 1.0);
}

#[tokio::test]
async fn no_endpoint_anywhere_means_not_ready_and_503() {
    let issuer = TestIssuer::start().await;
    issuer.set_advertise_introspection(false);
    let app = spawn_opaque_app(&issuer, |_, _| {}).await;

    let readiness = app.admin_get("/readyz").await;
    assert_eq!(readiness.status(), 503);
    let body = readiness.text().await.unwrap();
    assert!(body.contains("introspection endpoint unknown"), "{body}");
    assert_unavailable(app.auth_with_token(&issuer.opaque_token()).await).await;

    // A configured endpoint needs nothing from discovery.
    let configured = spawn_opaque_app(&issuer, |introspection, _| {
        introspection.endpoint = Some(issuer.introspection_endpoint());
    })
    .await;
    assert_eq!(configured.admin_get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn endpoint_slower_than_the_timeout_gets_503_in_bounded_time() {
    let issuer = TestIssuer::start().await;
    issuer.set_introspection_mode(IntrospectionMode::Slow(Duration::from_secs(30)));
    let app = spawn_opaque_app(&issuer, |introspection, _| {
        introspection.timeout = Duration::from_millis(500);
    })
    .await;
    let token = issuer.opaque_token();

    let started = Instant::now();
    let response = app.auth_with_token(&token).await;

    assert_unavailable(response).await;
    // Loosely: long before the endpoint would answer, and before a proxy gives up (10 s).
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(app.decisions_with_reason("introspection_unavailable"), 1.0);

    // Errors are never cached: the next request asks again.
    issuer.set_introspection_mode(IntrospectionMode::Answer);
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
    assert_eq!(issuer.introspection_calls(), 2);
}

#[tokio::test]
async fn endpoint_answering_5xx_gets_503() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |_, _| {}).await;
    let token = issuer.opaque_token();

    issuer.set_up(false);
    assert_unavailable(app.auth_with_token(&token).await).await;

    issuer.set_up(true);
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_introspection_requests_total",
            &[("result", "error")]
        ),
        1.0
    );
}

#[tokio::test]
async fn unreachable_endpoint_gets_503() {
    let issuer = TestIssuer::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let app = spawn_opaque_app(&issuer, |introspection, _| {
        introspection.endpoint = Some(format!("http://{closed}/introspect"));
    })
    .await;

    let started = Instant::now();
    assert_unavailable(app.auth_with_token(&issuer.opaque_token()).await).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(issuer.introspection_calls(), 0);
}

#[tokio::test]
async fn wrong_client_credentials_get_503_and_an_error_log_that_says_why() {
    let logs = capture_logs();
    let issuer = TestIssuer::start().await;
    issuer.set_introspection_mode(IntrospectionMode::RejectClient);
    let app = spawn_opaque_app(&issuer, |_, _| {}).await;
    let token = issuer.opaque_token();

    assert_unavailable(app.auth_with_token(&token).await).await;

    let logs = logs.text();
    let line = logs
        .lines()
        .find(|line| line.contains(issuer.url()) && line.contains("ERROR"))
        .unwrap_or_else(|| panic!("no error line for {}:\n{logs}", issuer.url()));
    assert!(
        line.contains("refused our client credentials (HTTP 401, error=invalid_client)"),
        "{line}"
    );
    assert!(!logs.contains(&token), "a log line holds the token");
    assert!(
        !logs.contains(INTROSPECTION_SECRET),
        "a log line holds the secret"
    );
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_form() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |introspection, _| {
        introspection.auth_method = ClientAuthMethod::ClientSecretPost;
    })
    .await;

    assert_eq!(
        app.auth_with_token(&issuer.opaque_token()).await.status(),
        202
    );
    assert_eq!(issuer.last_client_auth(), Some("post"));
}

#[tokio::test]
async fn configured_endpoint_needs_no_discovery() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |introspection, settings| {
        settings.issuers[0].jwks_uri = Some(format!("{}/jwks", issuer.url()));
        introspection.endpoint = Some(issuer.introspection_endpoint());
    })
    .await;

    assert_eq!(
        app.auth_with_token(&issuer.opaque_token()).await.status(),
        202
    );
    assert_eq!(
        issuer
            .state
            .discovery_fetches
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Starts a call for a fresh token in the background and waits until the issuer has it,
/// so that it holds a call slot.
async fn hold_a_slot(app: &Arc<TestApp>, issuer: &TestIssuer) -> tokio::task::JoinHandle<u16> {
    let calls = issuer.introspection_calls();
    let token = issuer.opaque_token();
    let held = {
        let app = app.clone();
        tokio::spawn(async move { app.auth_with_token(&token).await.status().as_u16() })
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while issuer.introspection_calls() == calls {
        assert!(Instant::now() < deadline, "the first call never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held
}

#[tokio::test]
async fn a_request_waits_its_turn_for_a_call_slot() {
    let issuer = TestIssuer::start().await;
    issuer.set_introspection_mode(IntrospectionMode::Slow(Duration::from_millis(300)));
    let app = Arc::new(
        spawn_opaque_app(&issuer, |introspection, _| {
            introspection.max_in_flight = 1;
            introspection.max_wait = Duration::from_secs(5);
        })
        .await,
    );
    let held = hold_a_slot(&app, &issuer).await;

    // A second, different token while the only slot is taken: it waits, then is asked.
    assert_eq!(
        app.auth_with_token(&issuer.opaque_token()).await.status(),
        202
    );

    assert_eq!(held.await.unwrap(), 202);
    assert_eq!(issuer.introspection_calls(), 2);
    assert_eq!(app.decisions_with_reason("introspection_overloaded"), 0.0);
}

#[tokio::test]
async fn a_full_queue_gets_503_at_once() {
    let issuer = TestIssuer::start().await;
    issuer.set_introspection_mode(IntrospectionMode::Slow(Duration::from_secs(1)));
    let app = Arc::new(
        spawn_opaque_app(&issuer, |introspection, _| {
            introspection.timeout = Duration::from_secs(5);
            introspection.max_in_flight = 1;
            introspection.max_waiting = 0;
        })
        .await,
    );
    let held = hold_a_slot(&app, &issuer).await;

    // No place to wait: refused without asking.
    assert_unavailable(app.auth_with_token(&issuer.opaque_token()).await).await;

    assert_eq!(held.await.unwrap(), 202);
    assert_eq!(app.decisions_with_reason("introspection_overloaded"), 1.0);
    assert_eq!(issuer.introspection_calls(), 1);
}

#[tokio::test]
async fn waiting_longer_than_max_wait_gets_503() {
    let issuer = TestIssuer::start().await;
    issuer.set_introspection_mode(IntrospectionMode::Slow(Duration::from_secs(2)));
    let app = Arc::new(
        spawn_opaque_app(&issuer, |introspection, _| {
            introspection.timeout = Duration::from_secs(5);
            introspection.max_in_flight = 1;
            introspection.max_wait = Duration::from_millis(200);
        })
        .await,
    );
    let held = hold_a_slot(&app, &issuer).await;

    assert_unavailable(app.auth_with_token(&issuer.opaque_token()).await).await;

    assert_eq!(app.decisions_with_reason("introspection_overloaded"), 1.0);
    assert_eq!(held.await.unwrap(), 202);
    assert_eq!(issuer.introspection_calls(), 1);
}

#[tokio::test]
async fn a_token_that_is_no_b64token_is_refused_without_asking() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |_, _| {}).await;

    for token in ["opaque,with,commas", "opaque\"quoted\"", "tök", "a=b"] {
        let value = format!("Bearer {token}");
        let response = app
            .client
            .get(format!("{}/auth", app.address))
            .header(
                "authorization",
                reqwest::header::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
            )
            .send()
            .await
            .unwrap();
        assert_invalid_token(response).await;
    }

    assert_eq!(app.decisions_with_reason("malformed_token"), 4.0);
    assert_eq!(issuer.introspection_calls(), 0);
}

#[tokio::test]
async fn an_answer_with_a_member_named_twice_is_no_answer() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |_, _| {}).await;
    let active = issuer.active_answer().to_string();
    let bodies = [
        // Read last-wins this would be active, read first-wins inactive.
        active.replacen('{', r#"{"active":false,"#, 1),
        active.replacen('{', r#"{"sub":"admin","#, 1),
        active.replacen('{', r#"{"groups":["system:masters"],"#, 1),
        active.replacen('{', r#"{"ext":{"role":"a","role":"b"},"#, 1),
    ];
    for (index, body) in bodies.iter().enumerate() {
        let token = issuer.opaque_token();
        issuer.set_raw_answer(&token, body);
        // No verdict (503), never an allow; and nothing cached: the next request asks again.
        assert_unavailable(app.auth_with_token(&token).await).await;
        assert_unavailable(app.auth_with_token(&token).await).await;
        assert_eq!(issuer.introspection_calls(), 2 * (index + 1), "{body}");
    }
    assert_eq!(
        app.decisions_with_reason("introspection_unavailable"),
        2.0 * bodies.len() as f64
    );

    // The same answer with each member once is fine.
    let token = issuer.opaque_token();
    issuer.set_raw_answer(&token, &active);
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
}

#[tokio::test]
async fn jwts_can_be_introspected_for_instant_revocation() {
    let issuer = TestIssuer::start().await;
    let app = spawn_opaque_app(&issuer, |introspection, _| {
        introspection.introspect_jwts = true;
        introspection.positive_ttl = Duration::from_secs(1);
    })
    .await;
    let token = issuer.token();
    issuer.set_answer(&token, issuer.active_answer());

    let response = app.auth_with_token(&token).await;
    assert_eq!(response.status(), 202);
    // Identity still comes from the signed claims.
    assert_eq!(response.headers()["x-auth-request-user"], "alice");

    issuer.revoke(&token);
    let response = first_refusal(&app, &token, Duration::from_secs(10)).await;
    assert_invalid_token(response).await;
    assert_eq!(app.decisions_with_reason("inactive_token"), 1.0);

    // A JWT the issuer does not know is refused although its signature is good.
    assert_invalid_token(app.auth_with_token(&issuer.sign(&issuer.claims())).await).await;
}

#[tokio::test]
async fn opaque_token_without_an_opaque_issuer_is_malformed() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;

    assert_invalid_token(app.auth_with_token(&issuer.opaque_token()).await).await;
    assert_eq!(app.decisions_with_reason("malformed_token"), 1.0);
    assert_eq!(issuer.introspection_calls(), 0);
}

// --- configuration -------------------------------------------------------------------

const ISSUER_YAML: &str = "
issuers:
  - issuer: https://sso.example.com/realms/main
    name: keycloak
    audiences: [orders-api]
";

fn with_introspection(extra: &str) -> String {
    format!(
        "{ISSUER_YAML}    introspection:\n      client_id: tokengate\n      client_secret_file: {}\n{extra}token:\n  opaque_issuer: keycloak\n",
        secret_file().display()
    )
}

#[test]
fn introspection_settings_are_validated_naming_the_key() {
    let secret = secret_file().display().to_string();
    let introspection = "    introspection:\n      client_id: tokengate\n";
    let opaque = "token:\n  opaque_issuer: keycloak\n";
    let cases = [
        (
            format!("{ISSUER_YAML}{introspection}{opaque}"),
            "issuers[0].introspection",
        ),
        (
            format!("{ISSUER_YAML}{introspection}      client_secret_file: {secret}\n      client_secret_env: HOME\n{opaque}"),
            "issuers[0].introspection",
        ),
        (
            format!("{ISSUER_YAML}{introspection}      client_secret_file: /nonexistent/secret\n{opaque}"),
            "issuers[0].introspection.client_secret_file",
        ),
        (
            format!("{ISSUER_YAML}{introspection}      client_secret_env: TOKENGATE_TEST_UNSET_SECRET\n{opaque}"),
            "issuers[0].introspection.client_secret_env",
        ),
        (
            with_introspection("      endpoint: not a url\n"),
            "issuers[0].introspection.endpoint",
        ),
        (
            with_introspection("      timeout: 0s\n"),
            "issuers[0].introspection.timeout",
        ),
        (
            with_introspection("      positive_ttl: 2h\n"),
            "issuers[0].introspection.positive_ttl",
        ),
        (
            with_introspection("      negative_ttl: 1h\n"),
            "issuers[0].introspection.negative_ttl",
        ),
        (
            with_introspection("      client_id: \"\"\n").replacen("      client_id: tokengate\n", "", 1),
            "issuers[0].introspection.client_id",
        ),
        (
            with_introspection("").replace("opaque_issuer: keycloak", "opaque_issuer: nobody"),
            "token.opaque_issuer",
        ),
        (
            format!("{ISSUER_YAML}{opaque}"),
            "token.opaque_issuer",
        ),
        (
            with_introspection("").replace("token:\n  opaque_issuer: keycloak\n", ""),
            "issuers[0].introspection",
        ),
        (
            with_introspection("").replace(
                "    audiences:",
                "    jwks_uri: https://sso.example.com/certs\n    audiences:",
            ),
            "issuers[0].introspection.endpoint",
        ),
        (
            format!("{}cache:\n  introspection_max_entries: 0\n", with_introspection("")),
            "cache.introspection_max_entries",
        ),
        (
            format!("{}http_client:\n  introspection_max_in_flight: 64\n", with_introspection("")),
            "http_client.introspection_max_in_flight",
        ),
        (
            with_introspection("      max_in_flight: 0\n"),
            "issuers[0].introspection.max_in_flight",
        ),
        (
            with_introspection("      max_waiting: 1000000\n"),
            "issuers[0].introspection.max_waiting",
        ),
        (
            with_introspection("      max_wait: 1m\n"),
            "issuers[0].introspection.max_wait",
        ),
        (
            with_introspection("      auth_method: private_key_jwt\n"),
            "auth_method",
        ),
    ];
    for (yaml, key) in cases {
        // Parsed and compiled, as a start or `--check-config` does: the secret files are
        // read by the compile.
        let error = Settings::from_yaml(&yaml)
            .and_then(tokengate::runtime::check)
            .expect_err(&yaml);
        assert!(
            error.to_string().contains(key),
            "{error} should name {key}:\n{yaml}"
        );
    }
}

#[test]
fn the_secret_is_read_without_its_trailing_newline_and_never_shown() {
    let settings = Settings::from_yaml(&with_introspection(
        "      auth_method: client_secret_post\n      introspect_jwts: true\n",
    ))
    .unwrap();
    let introspection = settings.issuers[0].introspection.as_ref().unwrap();
    let secret = introspection.client_secret("key").unwrap();
    assert_eq!(secret.expose(), INTROSPECTION_SECRET);
    assert_eq!(format!("{secret:?}"), "<redacted>");
    assert_eq!(
        introspection.auth_method,
        ClientAuthMethod::ClientSecretPost
    );
    assert_eq!(introspection.positive_ttl, Duration::from_secs(60));
    assert_eq!(introspection.negative_ttl, Duration::from_secs(5));
    assert_eq!(introspection.timeout, Duration::from_secs(2));
    assert_eq!(introspection.max_in_flight, 64);
    assert_eq!(introspection.max_waiting, 1024);
    assert_eq!(introspection.max_wait, Duration::from_secs(1));
}

#[test]
fn missing_or_empty_secret_exits_64_and_the_env_variable_works() {
    let dir = std::env::temp_dir().join(format!("tokengate-api-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("introspection-env.yaml");
    let yaml = with_introspection("").replace(
        &format!("client_secret_file: {}", secret_file().display()),
        "client_secret_env: TOKENGATE_TEST_INTROSPECTION_SECRET",
    );
    std::fs::write(&config, yaml).unwrap();
    let check = |secret: Option<&str>| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
        command.args(["--config", config.to_str().unwrap(), "--check-config"]);
        command.env_remove("TOKENGATE_TEST_INTROSPECTION_SECRET");
        if let Some(secret) = secret {
            command.env("TOKENGATE_TEST_INTROSPECTION_SECRET", secret);
        }
        let output = command.output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        (output.status.code(), stderr)
    };

    assert_eq!(check(Some("s3cret")).0, Some(0));
    for secret in [None, Some(""), Some("\n")] {
        let (code, stderr) = check(secret);
        assert_eq!(code, Some(64), "{secret:?}: {stderr}");
        assert!(
            stderr.contains("issuers[0].introspection.client_secret_env"),
            "{stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
}

// --- log capture ---------------------------------------------------------------------

/// Everything the application logs in this test binary, at debug level: the tests that
/// read it look for their own issuer's URL, and check that no line holds a secret.
#[derive(Clone)]
pub(crate) struct CapturedLogs(Arc<Mutex<Vec<u8>>>);

impl CapturedLogs {
    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for CapturedLogs {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub(crate) fn capture_logs() -> CapturedLogs {
    static LOGS: OnceLock<CapturedLogs> = OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = CapturedLogs(Arc::new(Mutex::new(Vec::new())));
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("tokengate=debug")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in the API tests");
        logs
    })
    .clone()
}
