//! Key rotation at the real OpenID Provider, through nginx: the provider restarts on the
//! same issuer URL with a new signing key and without the old one. With a new `kid`, the
//! first token signed with the new key makes tokengate refetch the JWKS once, and is
//! accepted; tokens of the withdrawn key are refused from then on. With the same `kid`
//! for the new key, tokengate must tell the keys apart by their material.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::nginx::{site_config, Nginx};
use crate::provider::{OidcProvider, TokengateOptions};
use crate::support::{client, echoed_header, jwt_header, send, EchoUpstream};

#[tokio::test]
async fn first_token_with_a_new_kid_is_accepted_after_one_refetch() {
    let mut provider = OidcProvider::start_with_kid("rotation-1").await;
    let tokengate = provider.tokengate("nginx", "").await;
    let upstream = EchoUpstream::start();
    let nginx =
        Nginx::start(|listen| site_config(listen, tokengate.address, upstream.address)).await;
    let logs = |provider: &OidcProvider| format!("{}{}", nginx.logs(), provider.logs());
    let get = |token: &str| client().get(nginx.url("/orders")).bearer_auth(token);

    let old_token = provider.jwt("alice", "read").await;
    assert_eq!(jwt_header(&old_token)["kid"], "rotation-1");
    let before = send(get(&old_token), || logs(&provider)).await;
    assert_eq!(before.status, StatusCode::OK, "{}", logs(&provider));

    provider.restart_with_kid("rotation-2").await;
    assert_eq!(provider.jwks_fetches(), 0, "{}", logs(&provider));
    let new_token = provider.jwt("alice", "read").await;
    assert_eq!(jwt_header(&new_token)["kid"], "rotation-2");

    let first = send(get(&new_token), || logs(&provider)).await;

    assert_eq!(
        first.status,
        StatusCode::OK,
        "{}\n{}",
        first.body,
        logs(&provider)
    );
    assert_eq!(
        echoed_header(&first.echo(), "x-auth-request-user"),
        ["alice"]
    );
    assert_eq!(
        provider.jwks_fetches(),
        1,
        "the new kid should cost exactly one JWKS fetch\n{}",
        logs(&provider)
    );

    // Known now: no further fetch.
    let again = send(get(&new_token), || logs(&provider)).await;
    assert_eq!(again.status, StatusCode::OK, "{}", logs(&provider));

    // The old key left the JWKS: its tokens (even the one verified and cached before)
    // are refused, and within the unknown-kid cooldown they cost the issuer nothing.
    let withdrawn = send(get(&old_token), || logs(&provider)).await;
    assert_eq!(
        withdrawn.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        logs(&provider)
    );
    assert_eq!(
        withdrawn.www_authenticate(),
        [r#"Bearer error="invalid_token""#]
    );
    assert_eq!(provider.jwks_fetches(), 1, "{}", logs(&provider));
    assert_eq!(upstream.requests(), 3);
}

/// The provider restarts with new key material under the same `kid`: a token tokengate
/// verified (and cached) with the old key must be refused once tokengate has loaded the
/// new key set (here by its background refresh, every second), not kept for
/// `cache.max_ttl` because the `kid` still exists.
#[tokio::test]
async fn cached_token_is_refused_once_its_kid_names_new_key_material() {
    let mut provider = OidcProvider::start_with_kid("reused").await;
    let tokengate = provider
        .tokengate_with(TokengateOptions {
            key_refresh: "1s",
            ..TokengateOptions::default()
        })
        .await;
    let upstream = EchoUpstream::start();
    let nginx =
        Nginx::start(|listen| site_config(listen, tokengate.address, upstream.address)).await;
    let logs = |provider: &OidcProvider| format!("{}{}", nginx.logs(), provider.logs());
    let get = |token: &str| client().get(nginx.url("/orders")).bearer_auth(token);

    let old_token = provider.jwt("alice", "read").await;
    for _ in 0..2 {
        // The second answer comes from tokengate's verified-token cache.
        let before = send(get(&old_token), || logs(&provider)).await;
        assert_eq!(before.status, StatusCode::OK, "{}", logs(&provider));
    }

    provider.restart_with_kid("reused").await;
    let new_token = provider.jwt("alice", "read").await;
    assert_eq!(jwt_header(&new_token)["kid"], "reused");

    // Bounded: the refresh runs every second; a build that keeps the cached verdict
    // would answer 200 until cache.max_ttl (5 minutes).
    let deadline = Instant::now() + Duration::from_secs(15);
    let withdrawn = loop {
        let answer = send(get(&old_token), || logs(&provider)).await;
        if answer.status != StatusCode::OK || Instant::now() >= deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        provider.jwks_fetches() > 0,
        "tokengate never fetched the new key set\n{}",
        logs(&provider)
    );
    assert_eq!(
        withdrawn.status,
        StatusCode::UNAUTHORIZED,
        "a token of the replaced key still passes\n{}",
        logs(&provider)
    );
    assert_eq!(
        withdrawn.www_authenticate(),
        [r#"Bearer error="invalid_token""#]
    );

    let current = send(get(&new_token), || logs(&provider)).await;
    assert_eq!(current.status, StatusCode::OK, "{}", logs(&provider));
}
