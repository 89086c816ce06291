//! Token sources: the `Authorization` header, a named header and a cookie header.
//! Invariants beyond "no panic": a found token is non-empty, at most the length cap,
//! has no surrounding whitespace, and is a substring of what the client sent; two
//! `Authorization` headers or two cookies of the token's name are never read as one.
#![no_main]

use std::str::FromStr;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tokengate::request::{extract_token, TokenSource};

const MAX_LENGTH: usize = 256;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut headers = HeaderMap::new();
    let names = ["authorization", "cf-access-jwt-assertion", "cookie"];
    for (index, value) in text.split('\n').take(6).enumerate() {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.append(HeaderName::from_static(names[index % names.len()]), value);
        }
    }
    let sources = [
        TokenSource::Authorization,
        TokenSource::from_str("header:cf-access-jwt-assertion").expect("source"),
        TokenSource::from_str("cookie:CF_Authorization").expect("source"),
    ];
    let Ok(token) = extract_token(&headers, &sources, MAX_LENGTH) else {
        return;
    };
    assert!(!token.is_empty() && token.len() <= MAX_LENGTH, "{token:?}");
    assert_eq!(token.trim(), token);
    assert!(text.contains(token), "{token:?} was not sent");
    let authorizations = headers.get_all("authorization").count();
    assert!(authorizations <= 1 || !token_is_from_authorization(&headers, token));
});

fn token_is_from_authorization(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all("authorization")
        .any(|value| value.to_str().is_ok_and(|value| value.contains(token)))
}
