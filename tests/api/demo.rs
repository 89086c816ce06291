//! `tokengate demo`'s pieces: the embedded issuer and the verifier wired to it.

use serde_json::Value;
use tokengate::demo::{demo_settings, start_issuer, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET};

use crate::helpers::*;

#[tokio::test]
async fn demo_issuer_serves_jwts_opaque_tokens_introspection_and_revocation() {
    let (issuer, server) = start_issuer("127.0.0.1:0").unwrap();
    tokio::spawn(server);
    let app =
        spawn_settings(demo_settings(&issuer.url, "127.0.0.1:0", "127.0.0.1:0").unwrap()).await;
    let client = reqwest::Client::new();
    let mint = |format: &'static str| {
        let client = client.clone();
        let url = format!("{}/token?user=bob&groups=dev,qa{format}", issuer.url);
        async move {
            let body: Value = client.get(url).send().await.unwrap().json().await.unwrap();
            body["access_token"].as_str().unwrap().to_owned()
        }
    };

    let jwt = mint("").await;
    let response = app.auth_with_token(&jwt).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-auth-request-user"], "bob");
    assert_eq!(response.headers()["x-auth-request-groups"], "dev,qa");

    let opaque = mint("&format=opaque").await;
    let response = app.auth_with_token(&opaque).await;
    assert_eq!(response.status(), 202, "introspected at the demo issuer");
    assert_eq!(response.headers()["x-auth-request-user"], "bob");

    // Revocation at the issuer: its introspection answer turns inactive at once.
    let introspect = |credentials: (&'static str, &'static str)| {
        let client = client.clone();
        let (url, token) = (format!("{}/introspect", issuer.url), opaque.clone());
        async move {
            client
                .post(url)
                .basic_auth(credentials.0, Some(credentials.1))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("token={token}"))
                .send()
                .await
                .unwrap()
        }
    };
    let answer: Value = introspect((DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["active"], true);
    client
        .post(format!("{}/revoke", issuer.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={opaque}"))
        .send()
        .await
        .unwrap();
    let answer: Value = introspect((DEMO_CLIENT_ID, DEMO_CLIENT_SECRET))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["active"], false);
    assert_eq!(introspect((DEMO_CLIENT_ID, "wrong")).await.status(), 401);
}
