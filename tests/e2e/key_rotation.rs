//! Key rotation at the real OpenID Provider, through nginx: the provider restarts on the
//! same issuer URL with a new signing key (new `kid`) and without the old one. The first
//! token signed with the new key makes tokengate refetch the JWKS once, and is accepted;
//! tokens of the withdrawn key are refused from then on.

use reqwest::StatusCode;

use crate::nginx::{site_config, Nginx};
use crate::provider::OidcProvider;
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
