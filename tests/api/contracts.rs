//! Each proxy's contract: where the original request is read from, which headers are
//! trusted, and the allow status (`/auth` 202 by default; `/ext-authz` always 200).

use tokengate::config::RuleSettings;
use tokengate::request::ProxyHeaders;

use crate::helpers::*;

/// Rules that make the original request observable: `/public` is anonymous and
/// `/admin` is denied, so the answer says which path tokengate understood.
fn path_probe_rules() -> Vec<RuleSettings> {
    vec![
        RuleSettings {
            paths: vec!["/public".into()],
            allow_anonymous: true,
            ..RuleSettings::default()
        },
        RuleSettings {
            paths: vec!["/admin".into()],
            deny: true,
            ..RuleSettings::default()
        },
    ]
}

async fn probe(app: &TestApp, path: &str, headers: &[(&str, &str)]) -> u16 {
    let mut request = app.client.get(format!("{}{path}", app.address));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn ingress_nginx_original_url_and_method() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = path_probe_rules()).await;
    let ingress = |url: &'static str| {
        [
            ("x-original-url", url),
            ("x-original-method", "GET"),
            ("x-sent-from", "nginx-ingress-controller"),
        ]
    };
    assert_eq!(
        probe(
            &app,
            "/auth",
            &ingress("https://app.example.com/public/logo.png")
        )
        .await,
        202
    );
    assert_eq!(
        probe(
            &app,
            "/auth",
            &ingress("https://app.example.com/admin/users?x=1")
        )
        .await,
        403
    );
    assert_eq!(
        probe(&app, "/auth", &ingress("https://app.example.com/orders")).await,
        401
    );
}

#[tokio::test]
async fn plain_nginx_original_uri() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = path_probe_rules()).await;
    assert_eq!(
        probe(
            &app,
            "/auth",
            &[
                ("x-original-uri", "/public/a?b=c"),
                ("x-original-method", "GET")
            ]
        )
        .await,
        202
    );
    assert_eq!(
        probe(
            &app,
            "/auth",
            &[("x-original-uri", "/admin"), ("x-original-method", "GET")]
        )
        .await,
        403
    );
}

#[tokio::test]
async fn traefik_forwarded_headers() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = path_probe_rules()).await;
    let traefik = |uri: &'static str| {
        [
            ("x-forwarded-method", "GET"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "app.example.com"),
            ("x-forwarded-uri", uri),
        ]
    };
    assert_eq!(probe(&app, "/auth", &traefik("/public/x?y=z")).await, 202);
    let denied = app.client.get(format!("{}/auth", app.address));
    let denied = traefik("/admin")
        .iter()
        .fold(denied, |r, (n, v)| r.header(*n, *v))
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    // Traefik hands this body to the client as it is: small, fixed JSON.
    assert_eq!(denied.text().await.unwrap(), r#"{"error":"access_denied"}"#);
}

#[tokio::test]
async fn envoy_ext_authz_allows_with_200_and_reads_the_path_after_the_prefix() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = path_probe_rules()).await;

    let allowed = app
        .client
        .post(format!("{}/ext-authz/orders/42?expand=items", app.address))
        .bearer_auth(issuer.token())
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.status(),
        200,
        "Envoy treats anything but 200 as a denial"
    );
    assert_eq!(allowed.headers()["x-auth-request-user"], "alice");

    assert_eq!(probe(&app, "/ext-authz/public/x", &[]).await, 200);
    assert_eq!(probe(&app, "/ext-authz/admin", &[]).await, 403);
    assert_eq!(probe(&app, "/ext-authz/orders", &[]).await, 401);
    // The client's own X-Original-URI means nothing to the Envoy contract.
    assert_eq!(
        probe(&app, "/ext-authz/admin", &[("x-original-uri", "/public")]).await,
        403
    );
}

#[tokio::test]
async fn contradictory_proxy_headers_are_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = path_probe_rules()).await;
    // ingress-nginx overwrites X-Original-URL, but passes a client-forged X-Forwarded-Uri
    // through: with both present and disagreeing, nothing can be trusted.
    let status = probe(
        &app,
        "/auth",
        &[
            ("x-original-url", "https://app.example.com/admin"),
            ("x-original-method", "GET"),
            ("x-forwarded-uri", "/public"),
        ],
    )
    .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn with_one_trusted_proxy_other_proxies_headers_are_ignored() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.rules = path_probe_rules();
        s.proxy_headers = ProxyHeaders::IngressNginx;
    })
    .await;
    let status = probe(
        &app,
        "/auth",
        &[
            ("x-original-url", "https://app.example.com/admin"),
            ("x-forwarded-uri", "/public"),
            ("x-original-uri", "/public"),
        ],
    )
    .await;
    assert_eq!(status, 403, "judged on X-Original-URL alone");
}

#[tokio::test]
async fn missing_original_request_matches_no_conditional_rule() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = path_probe_rules()).await;
    // No proxy headers at all: /public cannot be recognised, so a token is needed.
    assert_eq!(probe(&app, "/auth", &[]).await, 401);
    assert_eq!(app.auth_with_token(&issuer.token()).await.status(), 202);
}
