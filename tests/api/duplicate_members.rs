//! A token whose JOSE header or claims name a member twice is refused as malformed, even
//! with a good signature: RFC 7519 §4 lets a parser keep the last duplicate, and a
//! downstream parser that keeps the first would read another token (another `sub`,
//! another `aud`, another `kid`). Introspection answers: see `introspection.rs`.

use crate::helpers::*;

#[tokio::test]
async fn a_signed_token_with_a_member_named_twice_is_malformed() {
    let issuer = TestIssuer::start().await;
    let signer = RawSigner::generate("raw");
    issuer.publish_jwks(vec![rsa_key("k1").public_jwk().clone(), signer.jwk()]);
    let app = spawn_app(&issuer).await;
    let header = signer.header();
    let claims = issuer.claims().to_string();
    // The signer works: the same header and claims, each member once.
    assert_eq!(
        app.auth_with_token(&signer.sign(&header, &claims))
            .await
            .status(),
        202
    );

    let prefixed = |json: &str, member: &str| json.replacen('{', &format!("{{{member},"), 1);
    let cases = [
        (header.clone(), prefixed(&claims, r#""sub":"admin""#)),
        (
            header.clone(),
            prefixed(&claims, r#""preferred_username":"root""#),
        ),
        (header.clone(), prefixed(&claims, r#""aud":"another-api""#)),
        (header.clone(), prefixed(&claims, r#""exp":1"#)),
        (
            header.clone(),
            prefixed(&claims, r#""groups":["system:masters"]"#),
        ),
        // At any depth, and after unescaping the names.
        (
            header.clone(),
            prefixed(
                &claims,
                r#""realm_access":{"roles":["a"],"roles":["admin"]}"#,
            ),
        ),
        (header.clone(), prefixed(&claims, r#""s\u0075b":"admin""#)),
        // In the header.
        (prefixed(&header, r#""kid":"k1""#), claims.clone()),
        (prefixed(&header, r#""alg":"RS256""#), claims.clone()),
        (prefixed(&header, r#""typ":"JWT""#), claims.clone()),
    ];
    for (header, payload) in &cases {
        let token = signer.sign(header, payload);
        assert_invalid_token(app.auth_with_token(&token).await).await;
    }
    assert_eq!(
        app.decisions_with_reason("malformed_token"),
        cases.len() as f64
    );
}
