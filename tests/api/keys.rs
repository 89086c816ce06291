//! Key store behaviour: rotation, the unknown-`kid` cooldown, outages, withdrawal (by
//! `kid` and by key material).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use jsonwebtoken::Algorithm;
use serde_json::Value;
use tokengate::demo::SigningKey;

use crate::helpers::*;

/// Polls `condition` for up to ten seconds.
async fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..100 {
        if condition() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn rotated_key_is_served_after_one_refetch() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    assert_eq!(issuer.jwks_fetches(), 1);

    assert_eq!(publish_and_use(&issuer, &app, "k2").await, 202);
    assert_eq!(issuer.jwks_fetches(), 2);
}

/// Publishes `k1` and `kid`, then sends a token signed by `kid`; the answer's status.
async fn publish_and_use(issuer: &TestIssuer, app: &TestApp, kid: &str) -> reqwest::StatusCode {
    issuer.publish(vec![rsa_key("k1"), rsa_key(kid)]);
    let token = rsa_key(kid).sign(&issuer.claims());
    app.auth_with_token(&token).await.status()
}

#[tokio::test]
async fn unknown_kid_flood_fetches_at_most_once_per_cooldown() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let signer = SigningKey::generate(Algorithm::ES256, "unused");

    let requests = (0..50).map(|i| {
        let app = &app;
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(format!("forged-{i}"));
        let token = signer.sign_with_header(&header, &issuer.claims());
        async move { app.auth_with_token(&token).await.status() }
    });
    let statuses = join_all(requests).await;

    assert!(statuses.iter().all(|status| *status == 401));
    assert_eq!(
        issuer.jwks_fetches(),
        2,
        "one start-up fetch and one refetch"
    );

    // Still inside the cooldown: even a genuinely new key is not fetched yet.
    assert_eq!(publish_and_use(&issuer, &app, "k3").await, 401);
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn concurrent_requests_for_a_new_kid_share_one_fetch() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    issuer.publish(vec![rsa_key("k1"), rsa_key("k2")]);
    let token = rsa_key("k2").sign(&issuer.claims());

    let statuses = join_all((0..20).map(|_| {
        let (app, token) = (&app, &token);
        async move { app.auth_with_token(token).await.status() }
    }))
    .await;

    assert!(statuses.iter().all(|status| *status == 202), "{statuses:?}");
    assert_eq!(issuer.jwks_fetches(), 2);
}

#[tokio::test]
async fn cached_keys_keep_verifying_while_the_issuer_is_down() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    issuer.set_up(false);

    // A token never seen before: verified with the keys fetched at start-up.
    let response = app.auth_with_token(&issuer.token()).await;
    assert_eq!(response.status(), 202);

    // A failed refetch (unknown kid) does not throw the good keys away.
    let unknown = SigningKey::generate(Algorithm::ES256, "nope").sign(&issuer.claims());
    assert_eq!(app.auth_with_token(&unknown).await.status(), 401);
    let mut claims = issuer.claims();
    claims["sub"] = serde_json::json!("user-2");
    assert_eq!(
        app.auth_with_token(&issuer.sign(&claims)).await.status(),
        202
    );
    assert_eq!(app.admin_get("/readyz").await.status(), 200);
}

#[tokio::test]
async fn withdrawn_key_stops_vouching_for_cached_tokens() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let old_token = issuer.token();
    assert_eq!(app.auth_with_token(&old_token).await.status(), 202);

    // The issuer withdraws k1 (compromised) and publishes k2.
    issuer.publish(vec![rsa_key("k2")]);
    let new_token = rsa_key("k2").sign(&issuer.claims());
    assert_eq!(app.auth_with_token(&new_token).await.status(), 202);

    assert_eq!(app.auth_with_token(&old_token).await.status(), 401);
}

/// A token signed by `key` with no `kid` in its header.
fn token_without_kid(key: &SigningKey, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(key.alg);
    header.typ = Some("at+jwt".to_owned());
    key.sign_with_header(&header, claims)
}

fn verified_token_cache_hits(app: &TestApp) -> f64 {
    counter(
        &app.registry,
        "tokengate_cache_requests_total",
        &[("cache", "verified_token"), ("result", "hit")],
    )
}

/// Makes the application refetch the JWKS at once: a token with a `kid` it has not seen,
/// signed by a key the issuer now publishes.
async fn refetch_with(app: &TestApp, issuer: &TestIssuer, new_key: &SigningKey) {
    let fetches = issuer.jwks_fetches();
    let response = app.auth_with_token(&new_key.sign(&issuer.claims())).await;
    assert_eq!(response.status(), 202);
    assert_eq!(issuer.jwks_fetches(), fetches + 1);
}

#[tokio::test]
async fn withdrawn_key_without_kid_stops_vouching_for_cached_tokens() {
    let issuer = TestIssuer::start().await;
    let anonymous = SigningKey::generate(Algorithm::ES256, "unpublished");
    issuer.publish_jwks(vec![
        rsa_key("k1").public_jwk().clone(),
        jwk_without_kid(&anonymous),
    ]);
    let app = spawn_app(&issuer).await;
    let old_token = token_without_kid(&anonymous, &issuer.claims());
    assert_eq!(app.auth_with_token(&old_token).await.status(), 202);
    assert_eq!(app.auth_with_token(&old_token).await.status(), 202);
    assert_eq!(
        verified_token_cache_hits(&app),
        1.0,
        "the verdict is cached"
    );

    // The issuer withdraws the key that had no `kid`: no `kid` disappears from the JWKS.
    let next = SigningKey::generate(Algorithm::ES256, "next");
    issuer.publish_jwks(vec![
        rsa_key("k1").public_jwk().clone(),
        next.public_jwk().clone(),
    ]);
    refetch_with(&app, &issuer, &next).await;

    // Verified again, with the keys that fit the algorithm: none is the old one.
    assert_invalid_token(app.auth_with_token(&old_token).await).await;
    assert_eq!(app.decisions_with_reason("bad_signature"), 1.0);
}

#[tokio::test]
async fn kid_reused_for_new_material_stops_vouching_for_the_old_keys_tokens() {
    let issuer = TestIssuer::start().await;
    let old_key = Arc::new(SigningKey::generate(Algorithm::ES256, "signing"));
    issuer.publish(vec![rsa_key("k1"), old_key.clone()]);
    let app = spawn_app(&issuer).await;
    let old_token = old_key.sign(&issuer.claims());
    assert_eq!(app.auth_with_token(&old_token).await.status(), 202);

    // Same `kid`, new material: the `kid` never disappears from the JWKS.
    let new_key = Arc::new(SigningKey::generate(Algorithm::ES256, "signing"));
    let next = Arc::new(SigningKey::generate(Algorithm::ES256, "next"));
    issuer.publish(vec![rsa_key("k1"), new_key.clone(), next.clone()]);
    refetch_with(&app, &issuer, &next).await;

    assert_invalid_token(app.auth_with_token(&old_token).await).await;
    assert_eq!(app.decisions_with_reason("bad_signature"), 1.0);
    // The new material under that `kid` is trusted.
    assert_eq!(
        app.auth_with_token(&new_key.sign(&issuer.claims()))
            .await
            .status(),
        202
    );
}

#[tokio::test]
async fn a_refresh_that_keeps_the_material_keeps_the_cached_verdicts() {
    let issuer = TestIssuer::start().await;
    let anonymous = SigningKey::generate(Algorithm::ES256, "unpublished");
    issuer.publish_jwks(vec![
        rsa_key("k1").public_jwk().clone(),
        jwk_without_kid(&anonymous),
    ]);
    let app = spawn_app(&issuer).await;
    let tokens = [
        token_without_kid(&anonymous, &issuer.claims()),
        issuer.token(),
    ];
    for token in &tokens {
        assert_eq!(app.auth_with_token(token).await.status(), 202);
    }

    // A key is added and the order changes; every key that was there still is.
    let next = SigningKey::generate(Algorithm::ES256, "next");
    issuer.publish_jwks(vec![
        next.public_jwk().clone(),
        jwk_without_kid(&anonymous),
        rsa_key("k1").public_jwk().clone(),
    ]);
    refetch_with(&app, &issuer, &next).await;

    let hits = verified_token_cache_hits(&app);
    for token in &tokens {
        assert_eq!(app.auth_with_token(token).await.status(), 202);
    }
    assert_eq!(verified_token_cache_hits(&app), hits + 2.0);
}

#[tokio::test]
async fn configured_jwks_uri_skips_discovery() {
    let issuer = TestIssuer::start().await;
    let jwks_uri = format!("{}/jwks", issuer.url());
    let app = spawn_app_with(&issuer, |settings| {
        settings.issuers[0].jwks_uri = Some(jwks_uri)
    })
    .await;

    assert_eq!(app.auth_with_token(&issuer.token()).await.status(), 202);
    assert_eq!(
        issuer
            .state
            .discovery_fetches
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

#[tokio::test]
async fn keys_are_refreshed_in_the_background() {
    let issuer = TestIssuer::start().await;
    let _app = spawn_app_with(&issuer, |settings| {
        let keys = &mut settings.issuers[0].keys;
        keys.min_refresh_interval = Duration::from_secs(1);
        keys.refresh_interval = Duration::from_secs(1);
    })
    .await;
    assert!(eventually(|| issuer.jwks_fetches() >= 3).await);
}

#[tokio::test]
async fn discovery_naming_another_issuer_is_refused() {
    let issuer = TestIssuer::start().await;
    *issuer.state.discovery_issuer.lock().unwrap() = Some("https://evil.example.com".to_owned());
    let app = spawn_app(&issuer).await;

    assert_eq!(
        issuer.jwks_fetches(),
        0,
        "no keys fetched from a mismatching document"
    );
    assert_eq!(app.admin_get("/readyz").await.status(), 503);
    assert_eq!(app.auth_with_token(&issuer.token()).await.status(), 503);
}
