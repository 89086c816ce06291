//! `/healthz`, `/readyz` and the 503 when no verdict is possible.

use std::time::Duration;

use crate::helpers::*;

#[tokio::test]
async fn ready_once_keys_are_loaded() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    assert_eq!(app.admin_get("/healthz").await.status(), 200);
    assert_eq!(app.admin_get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn issuer_down_at_start_means_not_ready_and_503_until_it_comes_up() {
    let issuer = TestIssuer::start().await;
    issuer.set_up(false);
    let app = spawn_app(&issuer).await;

    assert_eq!(app.admin_get("/healthz").await.status(), 200);
    let readyz = app.admin_get("/readyz").await;
    assert_eq!(readyz.status(), 503);
    let response = app.auth_with_token(&issuer.token()).await;
    assert_eq!(response.status(), 503, "no verdict possible: fail closed");
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"error":"temporarily_unavailable"}"#
    );
    // A missing token needs no keys: still a plain 401.
    assert_eq!(app.auth_without_token().await.status(), 401);

    issuer.set_up(true);
    let mut ready = false;
    for _ in 0..150 {
        if app.admin_get("/readyz").await.status() == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the refresher retries and becomes ready");
    assert_eq!(app.auth_with_token(&issuer.token()).await.status(), 202);
}

#[tokio::test]
async fn unreachable_issuer_is_not_ready() {
    // Nothing listens on this port (bound then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let settings = settings_for(&format!("http://127.0.0.1:{port}"));
    let app = spawn_settings(settings).await;
    assert_eq!(app.admin_get("/readyz").await.status(), 503);
}

#[tokio::test]
async fn metrics_are_served_on_the_admin_listener() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    app.auth_with_token(&issuer.token()).await;

    let body = app.admin_get("/metrics").await.text().await.unwrap();

    assert!(
        body.contains(r#"tokengate_decisions_total{outcome="allow",reason="ok"} 1"#),
        "{body}"
    );
    assert!(body.contains("tokengate_jwks_refreshes_total"));
    let on_auth_port = app
        .client
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(on_auth_port.status(), 404);
}
