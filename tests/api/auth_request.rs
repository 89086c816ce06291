//! The `/auth` contract for nginx `auth_request`: statuses, headers, bodies.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use tokengate::demo::SigningKey;
use tokengate::verify::cache::unix_now;

use crate::helpers::*;

#[tokio::test]
async fn valid_token_gets_202_with_identity_headers() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;

    let response = app.auth_with_token(&issuer.token()).await;

    assert_eq!(response.status(), 202);
    let headers = response.headers();
    assert_eq!(headers["x-auth-request-user"], "alice");
    assert_eq!(headers["x-auth-request-email"], "alice@example.com");
    assert_eq!(headers["x-auth-request-groups"], "admins,developers");
    // No rule depends on the request: a caching proxy may keep the allow, and both
    // caching headers say so with the same lifetime.
    let seconds = headers["x-accel-expires"].to_str().unwrap();
    assert_ne!(seconds, "0");
    assert_eq!(
        headers["cache-control"],
        format!("max-age={seconds}").as_str()
    );
}

#[tokio::test]
async fn success_status_is_configurable() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |settings| settings.success_status = 200).await;
    assert_eq!(app.auth_with_token(&issuer.token()).await.status(), 200);
}

#[tokio::test]
async fn missing_token_gets_bare_bearer_challenge() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;

    let response = app.auth_without_token().await;

    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(response.headers()["cache-control"], "no-store");
}

#[tokio::test]
async fn every_http_method_is_judged() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    for method in [
        reqwest::Method::POST,
        reqwest::Method::DELETE,
        reqwest::Method::PATCH,
    ] {
        let response = app
            .client
            .request(method, format!("{}/auth", app.address))
            .bearer_auth(issuer.token())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
    }
}

#[tokio::test]
async fn bad_signature_is_invalid_token() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token();
    let (message, signature) = token.rsplit_once('.').unwrap();
    let mut signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
    signature[10] ^= 0x01;
    let tampered = format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature));

    let response = app.auth_with_token(&tampered).await;

    assert_invalid_token(response).await;
    assert_eq!(app.decisions_with_reason("bad_signature"), 1.0);
}

#[tokio::test]
async fn token_signed_by_an_unpublished_key_is_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    // Same kid as the published key, different private key.
    let impostor = SigningKey::generate(Algorithm::ES256, "k1");
    let mut claims = issuer.claims();
    claims["sub"] = json!("impostor");
    assert_invalid_token(app.auth_with_token(&impostor.sign(&claims)).await).await;
}

#[tokio::test]
async fn expired_token_is_invalid_token() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    // Beyond the 30 s leeway.
    let token = issuer.token_with(|claims| claims["exp"] = json!(unix_now() - 120));
    assert_invalid_token(app.auth_with_token(&token).await).await;
    assert_eq!(app.decisions_with_reason("expired"), 1.0);
}

#[tokio::test]
async fn expiry_within_the_leeway_is_accepted() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token_with(|claims| claims["exp"] = json!(unix_now() + 2));
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
}

#[tokio::test]
async fn token_without_exp_is_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let mut claims = issuer.claims();
    claims.as_object_mut().unwrap().remove("exp");
    assert_invalid_token(app.auth_with_token(&issuer.sign(&claims)).await).await;
}

#[tokio::test]
async fn token_without_a_usable_aud_is_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    for aud in [None, Some(json!(42)), Some(json!([])), Some(json!([42]))] {
        let mut claims = issuer.claims();
        match aud {
            Some(aud) => claims["aud"] = aud,
            None => drop(claims.as_object_mut().unwrap().remove("aud")),
        }
        assert_invalid_token(app.auth_with_token(&issuer.sign(&claims)).await).await;
    }
}

#[tokio::test]
async fn fractional_exp_is_accepted_and_a_string_exp_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let mut claims = issuer.claims();
    claims["exp"] = json!(unix_now() as f64 + 600.5);
    let response = app.auth_with_token(&issuer.sign(&claims)).await;
    assert_eq!(response.status(), 202);
    claims["exp"] = json!((unix_now() + 600).to_string());
    assert_invalid_token(app.auth_with_token(&issuer.sign(&claims)).await).await;
}

#[tokio::test]
async fn critical_header_extension_is_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    header.crit = Some(vec!["exp".into()]);
    let token = rsa_key("k1").sign_with_header(&header, &issuer.claims());
    assert_invalid_token(app.auth_with_token(&token).await).await;
}

#[tokio::test]
async fn token_without_kid_is_verified_by_the_key_that_signed_it() {
    let (signer, other) = (rsa_key("k1"), rsa_key("k2"));
    let issuer = TestIssuer::start_with_keys(vec![other.clone(), signer.clone()]).await;
    let app = spawn_app(&issuer).await;
    let header = Header::new(Algorithm::RS256);
    let token = signer.sign_with_header(&header, &issuer.claims());
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
    let unpublished = SigningKey::generate(Algorithm::RS256, "k3");
    let forged = unpublished.sign_with_header(&header, &issuer.claims());
    assert_invalid_token(app.auth_with_token(&forged).await).await;
}

#[tokio::test]
async fn not_yet_valid_token_is_invalid_token() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token_with(|claims| claims["nbf"] = json!(unix_now() + 300));
    assert_invalid_token(app.auth_with_token(&token).await).await;
    assert_eq!(app.decisions_with_reason("not_yet_valid"), 1.0);
}

#[tokio::test]
async fn wrong_issuer_is_invalid_token() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    for iss in [
        "https://evil.example.com".to_owned(),
        format!("{}/", issuer.url()), // a trailing slash is another issuer
    ] {
        let mut claims = issuer.claims();
        claims["iss"] = json!(iss);
        assert_invalid_token(app.auth_with_token(&issuer.sign(&claims)).await).await;
    }
    let token = issuer
        .token_with(|claims| claims["iss"] = json!([issuer.url(), "https://evil.example.com"]));
    assert_invalid_token(app.auth_with_token(&token).await).await;
}

#[tokio::test]
async fn wrong_audience_is_invalid_token() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let mut claims = issuer.claims();
    claims["aud"] = json!("another-api");
    assert_invalid_token(app.auth_with_token(&issuer.sign(&claims)).await).await;

    let token = issuer.token_with(|claims| claims["aud"] = json!(["another-api", AUDIENCE]));
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
}

#[tokio::test]
async fn alg_none_is_invalid_token() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let payload = URL_SAFE_NO_PAD.encode(issuer.claims().to_string());
    assert_invalid_token(app.auth_with_token(&format!("{header}.{payload}.")).await).await;
    assert_invalid_token(
        app.auth_with_token(&format!("{header}.{payload}.c2ln"))
            .await,
    )
    .await;
}

#[tokio::test]
async fn hs256_signed_with_the_rsa_public_key_is_invalid_token() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    // The classic key-confusion attack: use the published public key as an HMAC secret.
    let public_key = rsa_key("k1").public_jwk()["n"].as_str().unwrap().to_owned();
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".to_owned());
    let forged = jsonwebtoken::encode(
        &header,
        &issuer.claims(),
        &EncodingKey::from_secret(public_key.as_bytes()),
    )
    .unwrap();

    assert_invalid_token(app.auth_with_token(&forged).await).await;
    assert_eq!(app.decisions_with_reason("algorithm_not_allowed"), 1.0);
}

#[tokio::test]
async fn algorithm_outside_the_allow_list_is_invalid_token() {
    let es256 = std::sync::Arc::new(SigningKey::generate(Algorithm::ES256, "ec1"));
    let issuer = TestIssuer::start_with_keys(vec![rsa_key("k1"), es256.clone()]).await;
    let app = spawn_app_with(&issuer, |settings| {
        settings.issuers[0].algorithms = vec!["RS256".into()]
    })
    .await;

    assert_invalid_token(app.auth_with_token(&es256.sign(&issuer.claims())).await).await;
    assert_eq!(app.auth_with_token(&issuer.token()).await.status(), 202);
}

#[tokio::test]
async fn a_key_verifies_only_its_own_algorithm() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    // k1 is published with alg RS256; PS256 is allowed for the issuer but not for k1.
    let mut header = Header::new(Algorithm::PS256);
    header.kid = Some("k1".to_owned());
    let token = rsa_key("k1").sign_with_header(&header, &issuer.claims());
    assert_invalid_token(app.auth_with_token(&token).await).await;
}

#[tokio::test]
async fn ps256_es256_and_eddsa_tokens_verify() {
    let keys: Vec<_> = [
        (Algorithm::PS256, "ps"),
        (Algorithm::ES256, "es"),
        (Algorithm::EdDSA, "ed"),
    ]
    .into_iter()
    .map(|(alg, kid)| std::sync::Arc::new(SigningKey::generate(alg, kid)))
    .collect();
    let issuer = TestIssuer::start_with_keys(keys.clone()).await;
    let app = spawn_app(&issuer).await;
    for key in &keys {
        let response = app.auth_with_token(&key.sign(&issuer.claims())).await;
        assert_eq!(response.status(), 202, "{:?}", key.alg);
    }
}

#[tokio::test]
async fn required_typ_is_enforced() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |settings| {
        settings.issuers[0].required_typ = Some("at+jwt".into())
    })
    .await;
    assert_eq!(app.auth_with_token(&issuer.token()).await.status(), 202);

    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".to_owned());
    header.typ = Some("JWT".to_owned()); // an ID token, say
    let id_token = rsa_key("k1").sign_with_header(&header, &issuer.claims());
    assert_invalid_token(app.auth_with_token(&id_token).await).await;
}

#[tokio::test]
async fn dotted_groups_claim() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |settings| {
        settings.identity.groups_claim = "realm_access.roles".into()
    })
    .await;
    let token = issuer.token_with(|claims| {
        claims["realm_access"] = json!({"roles": ["offline_access", "orders-admin"]})
    });

    let response = app.auth_with_token(&token).await;

    assert_eq!(response.status(), 202);
    assert_eq!(
        response.headers()["x-auth-request-groups"],
        "offline_access,orders-admin"
    );
}

#[tokio::test]
async fn user_falls_back_to_sub_and_values_are_sanitised() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let mut claims = issuer.claims();
    claims.as_object_mut().unwrap().remove("preferred_username");
    claims["email"] = json!("alice@example.com\r\nX-Injected: yes");
    claims["groups"] = json!(["admins\r\nX-Injected: yes"]);

    let response = app.auth_with_token(&issuer.sign(&claims)).await;

    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-auth-request-user"], "user-1");
    assert!(
        response.headers().get("x-auth-request-email").is_none(),
        "an address with controls is no email"
    );
    assert_eq!(
        response.headers()["x-auth-request-groups"],
        "adminsX-Injected: yes"
    );
    assert!(response.headers().get("x-injected").is_none());
}

#[tokio::test]
async fn oversized_token_is_refused_before_any_crypto() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token_with(|claims| claims["padding"] = json!("x".repeat(9000)));

    let response = app.auth_with_token(&token).await;

    assert_invalid_token(response).await;
    assert_eq!(app.decisions_with_reason("token_too_large"), 1.0);
    // Refused before the cache lookup, let alone the signature check.
    assert_eq!(
        counter(&app.registry, "tokengate_cache_requests_total", &[]),
        0.0
    );
}

#[tokio::test]
async fn garbage_tokens_are_invalid_token() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    for garbage in [
        "abc",
        "a.b",
        "a.b.c.d",
        "eyJ.eyJ.sig",
        "!!!.???.***",
        "e30.e30.e30",
    ] {
        assert_invalid_token(app.auth_with_token(garbage).await).await;
    }
}

#[tokio::test]
async fn second_request_is_a_cache_hit() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token();

    assert_eq!(app.auth_with_token(&token).await.status(), 202);
    let response = app.auth_with_token(&token).await;

    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-auth-request-user"], "alice");
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_cache_requests_total",
            &[("result", "hit")]
        ),
        1.0
    );
    assert_eq!(
        counter(
            &app.registry,
            "tokengate_cache_requests_total",
            &[("result", "miss")]
        ),
        1.0
    );
}

#[tokio::test]
async fn token_from_header_and_cookie_sources() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |settings| {
        settings.token.sources = vec![
            "header:cf-access-jwt-assertion".into(),
            "cookie:CF_Authorization".into(),
        ]
    })
    .await;
    let url = format!("{}/auth", app.address);
    let by_header = app
        .client
        .get(&url)
        .header("Cf-Access-Jwt-Assertion", issuer.token())
        .send()
        .await
        .unwrap();
    assert_eq!(by_header.status(), 202);
    let by_cookie = app
        .client
        .get(&url)
        .header(
            "Cookie",
            format!("theme=dark; CF_Authorization={}", issuer.token()),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(by_cookie.status(), 202);
    // Two cookies of the token's name: frameworks disagree on which one wins, so the
    // upstream could act on the one that was not verified.
    for cookies in [
        vec![format!(
            "CF_Authorization={}; CF_Authorization=x.y.z",
            issuer.token()
        )],
        vec![
            format!("CF_Authorization={}", issuer.token()),
            "CF_Authorization=x.y.z".to_owned(),
        ],
    ] {
        let mut request = app.client.get(&url);
        for cookie in cookies {
            request = request.header("Cookie", cookie);
        }
        let answer = request.send().await.unwrap();
        assert_invalid_token(answer).await;
    }
    assert_eq!(app.decisions_with_reason("malformed_token"), 2.0);
}
