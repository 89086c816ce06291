//! Key rotation at the real OpenID Provider, through nginx: the provider restarts on the
//! same issuer URL with a new signing key and without the old one. With a new `kid`, the
//! first token signed with the new key makes tokengate refetch the JWKS once, and is
//! accepted; tokens of the withdrawn key are refused from then on. With the same `kid`
//! for the new key, tokengate must tell the keys apart by their material.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::nginx::{site_config, Nginx};
use crate::provider::{OidcProvider, TokengateOptions};
use crate::scenarios::Stack;
use crate::support::{client, echoed_header, jwt_header};

/// The provider signing with a key whose `kid` is `kid`, tokengate set up by `options`,
/// the echo upstream and nginx with the shipped snippet.
async fn start(kid: &str, options: TokengateOptions<'_>) -> Stack<Nginx> {
    let provider = OidcProvider::start_with_kid(kid).await;
    Stack::start_on(provider, options, |tokengate, app| {
        let tokengate = tokengate.address;
        Nginx::start(move |listen| site_config(listen, tokengate, app))
    })
    .await
}

/// GET /orders through nginx with `token`.
fn get(stack: &Stack<Nginx>, token: &str) -> reqwest::RequestBuilder {
    client().get(stack.url("/orders")).bearer_auth(token)
}

#[tokio::test]
async fn first_token_with_a_new_kid_is_accepted_after_one_refetch() {
    let mut stack = start("rotation-1", TokengateOptions::default()).await;

    let old_token = stack.provider.jwt("alice", "read").await;
    assert_eq!(jwt_header(&old_token)["kid"], "rotation-1");
    let before = stack.send(get(&stack, &old_token)).await;
    assert_eq!(before.status, StatusCode::OK, "{}", stack.logs());

    stack.provider.restart_with_kid("rotation-2").await;
    assert_eq!(stack.provider.jwks_fetches(), 0, "{}", stack.logs());
    let new_token = stack.provider.jwt("alice", "read").await;
    assert_eq!(jwt_header(&new_token)["kid"], "rotation-2");

    let first = stack.send(get(&stack, &new_token)).await;

    assert_eq!(
        first.status,
        StatusCode::OK,
        "{}\n{}",
        first.body,
        stack.logs()
    );
    assert_eq!(
        echoed_header(&first.echo(), "x-auth-request-user"),
        ["alice"]
    );
    assert_eq!(
        stack.provider.jwks_fetches(),
        1,
        "the new kid should cost exactly one JWKS fetch\n{}",
        stack.logs()
    );

    // Known now: no further fetch.
    let again = stack.send(get(&stack, &new_token)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", stack.logs());

    // The old key left the JWKS: its tokens (even the one verified and cached before)
    // are refused, and within the unknown-kid cooldown they cost the issuer nothing.
    let withdrawn = stack.send(get(&stack, &old_token)).await;
    assert_eq!(
        withdrawn.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        stack.logs()
    );
    assert_eq!(
        withdrawn.www_authenticate(),
        [r#"Bearer error="invalid_token""#]
    );
    assert_eq!(stack.provider.jwks_fetches(), 1, "{}", stack.logs());
    assert_eq!(stack.upstream.requests(), 3);
}

/// The provider restarts with new key material under the same `kid`: a token tokengate
/// verified (and cached) with the old key must be refused once tokengate has loaded the
/// new key set (here by its background refresh, every second), not kept for
/// `cache.max_ttl` because the `kid` still exists.
#[tokio::test]
async fn cached_token_is_refused_once_its_kid_names_new_key_material() {
    let options = TokengateOptions {
        key_refresh: "1s",
        ..TokengateOptions::default()
    };
    let mut stack = start("reused", options).await;

    let old_token = stack.provider.jwt("alice", "read").await;
    for _ in 0..2 {
        // The second answer comes from tokengate's verified-token cache.
        let before = stack.send(get(&stack, &old_token)).await;
        assert_eq!(before.status, StatusCode::OK, "{}", stack.logs());
    }

    stack.provider.restart_with_kid("reused").await;
    let new_token = stack.provider.jwt("alice", "read").await;
    assert_eq!(jwt_header(&new_token)["kid"], "reused");

    // Bounded: the refresh runs every second; a build that keeps the cached verdict
    // would answer 200 until cache.max_ttl (5 minutes).
    let deadline = Instant::now() + Duration::from_secs(15);
    let withdrawn = loop {
        let answer = stack.send(get(&stack, &old_token)).await;
        if answer.status != StatusCode::OK || Instant::now() >= deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        stack.provider.jwks_fetches() > 0,
        "tokengate never fetched the new key set\n{}",
        stack.logs()
    );
    assert_eq!(
        withdrawn.status,
        StatusCode::UNAUTHORIZED,
        "a token of the replaced key still passes\n{}",
        stack.logs()
    );
    assert_eq!(
        withdrawn.www_authenticate(),
        [r#"Bearer error="invalid_token""#]
    );

    let current = stack.send(get(&stack, &new_token)).await;
    assert_eq!(current.status, StatusCode::OK, "{}", stack.logs());
}
