//! Per-route policy: the auth URL's query parameters and the config's route rules.

use tokengate::config::RuleSettings;
use tokengate::request::PathParameters;

use crate::helpers::*;

#[tokio::test]
async fn allowed_groups() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token(); // groups: admins, developers
    assert_eq!(
        app.auth_query("allowed_groups=ops,developers", &token)
            .await
            .status(),
        202
    );
    assert_eq!(
        app.auth_query("allowed_groups=ops&allowed_groups=admins", &token)
            .await
            .status(),
        202
    );
    let denied = app.auth_query("allowed_groups=ops", &token).await;
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
        app.auth_query("allowed_emails=bob@example.com,ALICE@example.com", &token)
            .await
            .status(),
        202
    );
    assert_eq!(
        app.auth_query("allowed_emails=bob@example.com", &token)
            .await
            .status(),
        403
    );
    assert_eq!(
        app.auth_query("allowed_email_domains=example.com", &token)
            .await
            .status(),
        202
    );
    assert_eq!(
        app.auth_query("allowed_email_domains=example.org", &token)
            .await
            .status(),
        403
    );
    // Every parameter given must match.
    assert_eq!(
        app.auth_query(
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
    let with_scope = issuer.token_with(|c| c["scope"] = "openid orders:read orders:write".into());
    let with_scp = issuer.token_with(|c| c["scp"] = serde_json::json!(["orders:read"]));
    assert_eq!(
        app.auth_query("required_scopes=orders:read,orders:write", &with_scope)
            .await
            .status(),
        202
    );
    assert_eq!(
        app.auth_query("required_scopes=orders:read", &with_scp)
            .await
            .status(),
        202
    );

    let denied = app
        .auth_query("required_scopes=orders:write", &with_scp)
        .await;
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
    let response = app.auth_query("allowed_group=ops", &issuer.token()).await;
    assert_eq!(response.status(), 400);
    assert_eq!(app.decisions_with_reason("bad_policy"), 1.0);
}

#[tokio::test]
async fn policy_is_checked_on_cache_hits_too() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token();
    assert_eq!(
        app.auth_query("allowed_groups=admins", &token)
            .await
            .status(),
        202
    );
    assert_eq!(
        app.auth_query("allowed_groups=ops", &token).await.status(),
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
    let developer = issuer.token_with(|c| c["groups"] = serde_json::json!(["developers"]));
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
    let writer = issuer.token_with(|c| c["scope"] = "orders:write".into());
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
async fn a_path_that_reads_two_ways_is_refused_before_any_rule() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;
    let token = issuer.token();
    for ambiguous in [
        "/public/../admin",
        "/admin/..%2f..%2fpublic",
        "/admin/.",
        "/admin/%2e%2e/public",
        "/public%2F..%2Fadmin",
        "/./admin?x=/public",
        "/ADMIN/../admin",
        "/admin;x=1",
        "/public;/../admin",
        "/public/%5c..%5cadmin",
        "/public%00/admin",
        "/public/%252e%252e/admin",
    ] {
        for token in [None, Some(token.as_str())] {
            let status = original(&app, "GET", "app.example.com", ambiguous, token, &[]).await;
            assert_eq!(status, 400, "{ambiguous} with token {}", token.is_some());
        }
    }
    assert_eq!(app.decisions_with_reason("ambiguous_path"), 24.0);
}

#[tokio::test]
async fn restrictions_see_through_encoding_case_and_slashes() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;
    let token = issuer.token();
    for variant in ["/%61dmin", "//admin", "/ADMIN", "/Admin/", "/admin/users/"] {
        assert_eq!(
            original(&app, "GET", "app.example.com", variant, Some(&token), &[]).await,
            403,
            "{variant}"
        );
    }
    // Grants match exactly: a case variant of the public path needs a token.
    assert_eq!(
        original(&app, "GET", "app.example.com", "/PUBLIC", None, &[]).await,
        401
    );
    assert_eq!(
        original(&app, "GET", "app.example.com", "/public/a", None, &[]).await,
        202
    );
}

#[tokio::test]
async fn path_parameters_can_be_stripped_for_matching() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.rules = admin_denied_public_open();
        s.path_parameters = PathParameters::Strip;
    })
    .await;
    let token = issuer.token();
    assert_eq!(
        original(
            &app,
            "GET",
            "app.example.com",
            "/admin;jsessionid=1",
            Some(&token),
            &[]
        )
        .await,
        403
    );
    assert_eq!(
        original(&app, "GET", "app.example.com", "/public;v=1/x", None, &[]).await,
        202
    );
    assert_eq!(
        original(
            &app,
            "GET",
            "app.example.com",
            "/public/..;/admin",
            None,
            &[]
        )
        .await,
        400
    );
}

#[tokio::test]
async fn anonymous_rules_do_not_lift_requirements_in_the_auth_url() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;
    let ask = |query: &str, token: Option<String>| {
        let mut request = app
            .client
            .get(format!("{}/auth?{query}", app.address))
            .header("x-original-uri", "/public/a")
            .header("x-original-method", "GET");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(ask("", None).await, 202);
    // The location says only `ops` may pass: a site-wide anonymous rule does not open it.
    assert_eq!(ask("allowed_groups=ops", None).await, 401);
    assert_eq!(ask("allowed_groups=ops", Some(issuer.token())).await, 403);
    assert_eq!(
        ask("allowed_groups=admins", Some(issuer.token())).await,
        202
    );
    // Repeated parameters: any listed group will do; every listed scope is required.
    assert_eq!(
        ask(
            "allowed_groups=ops&allowed_groups=admins",
            Some(issuer.token())
        )
        .await,
        202
    );
}

/// The caching statement of an answer: `(Cache-Control, X-Accel-Expires)`.
fn caching(response: &reqwest::Response) -> (String, String) {
    let header = |name| response.headers()[name].to_str().unwrap().to_owned();
    (header("cache-control"), header("x-accel-expires"))
}

fn assert_not_cacheable(response: &reqwest::Response) {
    assert_eq!(caching(response), ("no-store".to_owned(), "0".to_owned()));
}

#[tokio::test]
async fn allows_that_depend_on_the_route_are_not_cacheable_by_default() {
    let issuer = TestIssuer::start().await;
    let token = issuer.token();
    let with_rules = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;
    let request = |app: &TestApp, query: &str| {
        app.client
            .get(format!("{}/auth?{query}", app.address))
            .header("x-original-uri", "/orders")
            .header("x-original-method", "GET")
            .bearer_auth(&token)
            .send()
    };

    // Any rule on the route: a proxy cache keyed on the token alone would serve this
    // allow for /admin.
    let allowed = request(&with_rules, "").await.unwrap();
    assert_eq!(allowed.status(), 202);
    assert_not_cacheable(&allowed);
    let anonymous = with_rules
        .client
        .get(format!("{}/auth", with_rules.address))
        .header("x-original-uri", "/public")
        .header("x-original-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 202);
    assert_not_cacheable(&anonymous);

    // Requirements in the auth URL: the same.
    let without_rules = spawn_app(&issuer).await;
    let allowed = request(&without_rules, "allowed_groups=admins")
        .await
        .unwrap();
    assert_eq!(allowed.status(), 202);
    assert_not_cacheable(&allowed);
    // Neither: cacheable, with one lifetime in both headers.
    let allowed = request(&without_rules, "").await.unwrap();
    let (cache_control, seconds) = caching(&allowed);
    assert_eq!(cache_control, format!("max-age={seconds}"));

    // The operator's opt-in, for a cache key that holds method, host, URI and token.
    let opted_in = spawn_app_with(&issuer, |s| {
        s.rules = admin_denied_public_open();
        s.cache.proxy_cache_route_verdicts = true;
    })
    .await;
    let allowed = request(&opted_in, "allowed_groups=admins").await.unwrap();
    let (cache_control, seconds) = caching(&allowed);
    assert_ne!(seconds, "0");
    assert_eq!(cache_control, format!("max-age={seconds}"));
    // Denials never are.
    let denied = opted_in
        .client
        .get(format!("{}/auth", opted_in.address))
        .header("x-original-uri", "/admin")
        .header("x-original-method", "GET")
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
    assert_not_cacheable(&denied);
}
