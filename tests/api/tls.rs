//! Keys fetched over HTTPS from an issuer whose certificate a private CA signed: the
//! system roots do not trust it, `http_client.ca_file` does.

use crate::helpers::*;

#[tokio::test]
async fn issuer_behind_a_private_ca_is_trusted_through_ca_file_only() {
    let issuer = TestIssuer::start_tls().await;
    let ca_pem = issuer.ca_pem.as_deref().expect("a TLS issuer has a CA");

    // The system roots do not know this CA: no keys, not ready, and a token gets 503.
    let untrusting = spawn_settings(settings_for(issuer.url())).await;
    assert_eq!(untrusting.admin_get("/readyz").await.status(), 503);
    assert_eq!(
        untrusting.auth_with_token(&issuer.token()).await.status(),
        503
    );

    let ca_file =
        std::env::temp_dir().join(format!("tokengate-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, ca_pem).expect("CA file");
    let mut settings = settings_for(issuer.url());
    settings.http_client.ca_file = Some(ca_file);
    let trusting = spawn_settings(settings).await;
    assert_eq!(trusting.admin_get("/readyz").await.status(), 200);
    let response = trusting.auth_with_token(&issuer.token()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-auth-request-user"], "alice");
}
