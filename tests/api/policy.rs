//! Per-route policy: the auth URL's query parameters and the config's route rules.

use tokengate::config::RuleSettings;

use crate::helpers::*;

async fn auth_query(app: &TestApp, query: &str, token: &str) -> reqwest::Response {
    app.client
        .get(format!("{}/auth?{query}", app.address))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

fn token_with(issuer: &TestIssuer, edit: impl FnOnce(&mut serde_json::Value)) -> String {
    let mut claims = issuer.claims();
    edit(&mut claims);
    rsa_key("k1").sign(&claims)
}

#[tokio::test]
async fn allowed_groups() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token(); // groups: admins, developers
    assert_eq!(
        auth_query(&app, "allowed_groups=ops,developers", &token)
            .await
            .status(),
        202
    );
    assert_eq!(
        auth_query(&app, "allowed_groups=ops&allowed_groups=admins", &token)
            .await
            .status(),
        202
    );
    let denied = auth_query(&app, "allowed_groups=ops", &token).await;
    assert_eq!(denied.status(), 403);
    assert!(denied.headers().get("www-authenticate").is_none());
    assert_eq!(denied.headers()["x-accel-expires"], "0");
    assert_eq!(denied.text().await.unwrap(), r#"{"error":"access_denied"}"#);
}

#[tokio::test]
async fn allowed_emails_and_domains() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token(); // alice@example.com
    assert_eq!(
        auth_query(
            &app,
            "allowed_emails=bob@example.com,ALICE@example.com",
            &token
        )
        .await
        .status(),
        202
    );
    assert_eq!(
        auth_query(&app, "allowed_emails=bob@example.com", &token)
            .await
            .status(),
        403
    );
    assert_eq!(
        auth_query(&app, "allowed_email_domains=example.com", &token)
            .await
            .status(),
        202
    );
    assert_eq!(
        auth_query(&app, "allowed_email_domains=example.org", &token)
            .await
            .status(),
        403
    );
    // Every parameter given must match.
    assert_eq!(
        auth_query(
            &app,
            "allowed_email_domains=example.com&allowed_groups=ops",
            &token
        )
        .await
        .status(),
        403
    );
}

#[tokio::test]
async fn required_scopes_from_scope_or_scp() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let with_scope = token_with(&issuer, |c| {
        c["scope"] = "openid orders:read orders:write".into()
    });
    let with_scp = token_with(&issuer, |c| c["scp"] = serde_json::json!(["orders:read"]));
    assert_eq!(
        auth_query(
            &app,
            "required_scopes=orders:read,orders:write",
            &with_scope
        )
        .await
        .status(),
        202
    );
    assert_eq!(
        auth_query(&app, "required_scopes=orders:read", &with_scp)
            .await
            .status(),
        202
    );

    let denied = auth_query(&app, "required_scopes=orders:write", &with_scp).await;
    assert_eq!(denied.status(), 403);
    assert_eq!(
        denied.headers()["www-authenticate"],
        r#"Bearer error="insufficient_scope""#
    );
    assert_eq!(
        denied.text().await.unwrap(),
        r#"{"error":"insufficient_scope"}"#
    );
}

#[tokio::test]
async fn unknown_policy_parameter_fails_closed() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    // A typo must not open the route to every valid token.
    let response = auth_query(&app, "allowed_group=ops", &issuer.token()).await;
    assert_eq!(response.status(), 400);
    assert_eq!(app.decisions_with_reason("bad_policy"), 1.0);
}

#[tokio::test]
async fn policy_is_checked_on_cache_hits_too() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token();
    assert_eq!(
        auth_query(&app, "allowed_groups=admins", &token)
            .await
            .status(),
        202
    );
    assert_eq!(
        auth_query(&app, "allowed_groups=ops", &token)
            .await
            .status(),
        403
    );
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_cache_requests_total",
            &[("result", "hit")]
        ),
        1.0
    );
}

fn rules() -> Vec<RuleSettings> {
    vec![
        RuleSettings {
            name: Some("health".into()),
            paths: vec!["/healthz".into(), "/static/".into()],
            allow_anonymous: true,
            ..Default::default()
        },
        RuleSettings {
            name: Some("internal".into()),
            hosts: vec!["*.internal.example.com".into()],
            deny: true,
            ..Default::default()
        },
        RuleSettings {
            name: Some("admin".into()),
            paths: vec!["/admin".into()],
            allowed_groups: vec!["admins".into()],
            ..Default::default()
        },
        RuleSettings {
            name: Some("api-writes".into()),
            paths: vec!["/api/**".into()],
            methods: vec!["POST".into(), "DELETE".into()],
            required_scopes: vec!["orders:write".into()],
            allow_cors_preflight: true,
            ..Default::default()
        },
        RuleSettings {
            name: Some("api".into()),
            paths: vec!["/api/**".into()],
            allow_cors_preflight: true,
            ..Default::default()
        },
    ]
}

async fn original(
    app: &TestApp,
    method: &str,
    host: &str,
    uri: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> u16 {
    let mut request = app
        .client
        .get(format!("{}/auth", app.address))
        .header("x-original-uri", uri)
        .header("x-original-method", method)
        .header("x-forwarded-host", host);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap().status().as_u16()
}

#[tokio::test]
async fn rules_match_host_path_and_method_first_match_wins() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = rules()).await;
    let token = issuer.token(); // admins, developers; no scopes
    let host = "app.example.com";

    assert_eq!(
        original(&app, "GET", host, "/healthz", None, &[]).await,
        202,
        "anonymous"
    );
    assert_eq!(
        original(&app, "GET", host, "/static/app.js", None, &[]).await,
        202,
        "anonymous prefix"
    );
    assert_eq!(
        original(&app, "GET", host, "/staticfoo", None, &[]).await,
        401,
        "prefix is not a substring"
    );
    assert_eq!(
        original(
            &app,
            "GET",
            "db.internal.example.com",
            "/healthz",
            Some(&token),
            &[]
        )
        .await,
        202,
        "first match wins"
    );
    assert_eq!(
        original(
            &app,
            "GET",
            "db.internal.example.com",
            "/x",
            Some(&token),
            &[]
        )
        .await,
        403,
        "deny by host"
    );
    assert_eq!(
        original(&app, "GET", host, "/admin/users", Some(&token), &[]).await,
        202
    );
    let developer = token_with(&issuer, |c| c["groups"] = serde_json::json!(["developers"]));
    assert_eq!(
        original(&app, "GET", host, "/admin/users", Some(&developer), &[]).await,
        403
    );
    assert_eq!(
        original(&app, "GET", host, "/api/orders/1", Some(&token), &[]).await,
        202
    );
    assert_eq!(
        original(&app, "DELETE", host, "/api/orders/1", Some(&token), &[]).await,
        403,
        "method rule needs a scope"
    );
    let writer = token_with(&issuer, |c| c["scope"] = "orders:write".into());
    assert_eq!(
        original(&app, "DELETE", host, "/api/orders/1", Some(&writer), &[]).await,
        202
    );
}

#[tokio::test]
async fn anonymous_answers_carry_no_identity() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = rules()).await;
    let response = app
        .client
        .get(format!("{}/auth", app.address))
        .header("x-original-uri", "/healthz")
        .bearer_auth(issuer.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert!(response.headers().get("x-auth-request-user").is_none());
}

#[tokio::test]
async fn cors_preflight_passes_only_where_allowed() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = rules()).await;
    let preflight = [
        ("origin", "https://web.example.com"),
        ("access-control-request-method", "POST"),
    ];
    let host = "app.example.com";
    assert_eq!(
        original(&app, "OPTIONS", host, "/api/orders", None, &preflight).await,
        202
    );
    assert_eq!(
        original(
            &app,
            "OPTIONS",
            host,
            "/api/orders",
            None,
            &[("origin", "https://web.example.com")]
        )
        .await,
        401,
        "not a preflight"
    );
    assert_eq!(
        original(&app, "OPTIONS", host, "/admin", None, &preflight).await,
        401,
        "rule without allow_cors_preflight"
    );
}

#[tokio::test]
async fn path_normalisation_defeats_rule_bypasses() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.rules = vec![
            RuleSettings {
                paths: vec!["/admin".into()],
                deny: true,
                ..Default::default()
            },
            RuleSettings {
                paths: vec!["/public".into()],
                allow_anonymous: true,
                ..Default::default()
            },
        ]
    })
    .await;
    let token = issuer.token();
    for bypass in [
        "/%61dmin",
        "/public/../admin",
        "//admin",
        "/admin/.",
        "/public/%2e%2e/admin",
        "/public%2F..%2Fadmin",
        "/./admin?x=/public",
        "/ADMIN/../admin",
    ] {
        assert_eq!(
            original(&app, "GET", "app.example.com", bypass, Some(&token), &[]).await,
            403,
            "{bypass}"
        );
    }
    assert_eq!(
        original(
            &app,
            "GET",
            "app.example.com",
            "/public/../public/a",
            None,
            &[]
        )
        .await,
        202
    );
}
