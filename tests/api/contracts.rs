//! Each proxy's contract: where the original request is read from, which headers are
//! trusted, and the allow status (`/auth` 202 by default; `/ext-authz` always 200).

use tokengate::config::{IdentityOutput, RuleSettings};
use tokengate::request::ProxyHeaders;

use crate::helpers::*;

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
    let app = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;
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
    let app = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;
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
    let app = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;
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
    let app = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;

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
    let app = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;
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
        s.rules = admin_denied_public_open();
        s.proxy_headers = Some(ProxyHeaders::IngressNginx);
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
async fn missing_original_request_matches_every_restriction_and_no_grant() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.rules = admin_denied_public_open()).await;
    // No proxy headers at all: the /admin restriction may be what was asked for, so it
    // holds, with or without a token; /public cannot be recognised.
    assert_eq!(probe(&app, "/auth", &[]).await, 403);
    assert_eq!(app.auth_with_token(&issuer.token()).await.status(), 403);
}

/// Rules on hosts: `admin.example.com` is denied, `public.example.com` anonymous.
fn host_probe_rules() -> Vec<RuleSettings> {
    vec![
        RuleSettings {
            deny: true,
            ..on_hosts(&["admin.example.com"])
        },
        RuleSettings {
            allow_anonymous: true,
            ..on_hosts(&["public.example.com"])
        },
    ]
}

#[tokio::test]
async fn hosts_are_parsed_strictly_before_any_rule() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.rules = host_probe_rules();
        s.proxy_headers = Some(ProxyHeaders::Traefik);
    })
    .await;
    let token = issuer.token();
    let traefik = |host: &str, token: Option<&str>| {
        let mut request = app
            .client
            .get(format!("{}/auth", app.address))
            .header("x-forwarded-method", "GET")
            .header("x-forwarded-uri", "/")
            .header("x-forwarded-host", host);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        async move { request.send().await.unwrap().status().as_u16() }
    };
    // The denied host in the spellings that once slipped past the rule.
    for host in [
        "admin.example.com",
        "ADMIN.example.com.",
        "admin.example.com.:80",
    ] {
        assert_eq!(traefik(host, Some(&token)).await, 403, "{host}");
    }
    for host in [
        "admin.example.com:abc",
        "admin.example.com:",
        "admin..example.com",
    ] {
        assert_eq!(traefik(host, Some(&token)).await, 400, "{host}");
    }
    assert_eq!(traefik("public.example.com:8443", None).await, 202);
    assert_eq!(traefik("public.example.com:x", None).await, 400);
}

#[tokio::test]
async fn ingress_nginx_original_url_is_split_at_the_first_slash() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.rules = admin_denied_public_open();
        s.proxy_headers = Some(ProxyHeaders::IngressNginx);
    })
    .await;
    let ingress = |url: &'static str| [("x-original-url", url), ("x-original-method", "GET")];
    // `Host: app:<tail>` as nginx accepts it, before `$request_uri` = /admin.
    for url in [
        "http://app:\\@x/public/admin",
        "http://app:?/public/admin",
        "http://app:#/public/admin",
        "http://app:@x/public/admin",
        "http://app.example.comhttp://app.example.com/public",
    ] {
        assert_eq!(probe(&app, "/auth", &ingress(url)).await, 400, "{url}");
    }
    // HTTP/1.0 without Host: no host is made up, and the path is still the target's.
    assert_eq!(
        probe(&app, "/auth", &ingress("http:///public/a")).await,
        202
    );
    assert_eq!(probe(&app, "/auth", &ingress("http:///admin")).await, 403);
}

#[tokio::test]
async fn a_missing_host_never_matches_a_host_scoped_grant() {
    let issuer = TestIssuer::start().await;
    let only_the_grant = spawn_app_with(&issuer, |s| {
        s.rules = host_probe_rules().split_off(1);
        s.proxy_headers = Some(ProxyHeaders::IngressNginx);
    })
    .await;
    let no_host = [("x-original-url", "http:///"), ("x-original-method", "GET")];
    assert_eq!(probe(&only_the_grant, "/auth", &no_host).await, 401);
    // …but a host-scoped restriction holds, since the host may well be the denied one.
    let app = spawn_app_with(&issuer, |s| {
        s.rules = host_probe_rules();
        s.proxy_headers = Some(ProxyHeaders::IngressNginx);
    })
    .await;
    let denied = app
        .client
        .get(format!("{}/auth", app.address))
        .header("x-original-url", "http:///")
        .header("x-original-method", "GET")
        .bearer_auth(issuer.token())
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 403);
}

#[tokio::test]
async fn client_sent_impersonation_headers_are_refused_in_impersonation_mode() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.output = IdentityOutput::KubernetesImpersonation;
    })
    .await;
    let token = issuer.token();
    let with = |name: &'static str| {
        app.client
            .get(format!("{}/auth", app.address))
            .bearer_auth(&token)
            .header(name, "system:masters")
            .send()
    };
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
    // `Impersonate-Extra-*` has no fixed name, so no proxy config can strip them all:
    // tokengate refuses them whatever the proxy passes on.
    for name in [
        "Impersonate-User",
        "Impersonate-Group",
        "Impersonate-Uid",
        "Impersonate-Extra-Scopes",
        "impersonate_extra_reason",
        "Impersonate_Group",
        "IMPERSONATE-USER",
    ] {
        let refused = with(name).await.unwrap();
        assert_eq!(refused.status(), 403, "{name}");
        assert_eq!(
            refused.text().await.unwrap(),
            r#"{"error":"access_denied"}"#
        );
    }
    assert_eq!(app.decisions_with_reason("forged_impersonation"), 7.0);

    // With the usual identity headers, such a header means nothing to tokengate.
    let headers_mode = spawn_app(&issuer).await;
    let passed = headers_mode
        .client
        .get(format!("{}/auth", headers_mode.address))
        .bearer_auth(&token)
        .header("Impersonate-User", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(passed.status(), 202);
}
