//! The real `oidc-provider` issuing opaque access tokens, introspected by the real
//! tokengate (RFC 7662) on `/auth` directly, then revoked at the provider (RFC 7009):
//! refused once the cached answer's ttl (the revocation window) has passed. The same
//! through nginx is in [`crate::nginx`]; this one also maps other claims of the
//! introspection answer to identity headers.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::provider::{OidcProvider, TokengateOptions, POSITIVE_TTL};
use crate::support::{client, Tokengate};

/// tokengate trusting the provider, introspecting its opaque tokens as resource server
/// `rs` (endpoint from discovery), with the user from `client_id` and the groups from
/// `scope` of the introspection answer.
async fn start_tokengate(provider: &OidcProvider) -> Tokengate {
    provider
        .tokengate_with(TokengateOptions {
            // Called directly, with no proxy in front.
            proxy_headers: "none",
            // `scope` is one space-separated string (RFC 7662 section 2.2).
            issuer: "    space_separated_groups: true",
            extra: "
identity:
  user_claim: client_id
  groups_claim: scope
",
            ..TokengateOptions::default()
        })
        .await
}

async fn auth(tokengate: SocketAddr, token: &str) -> reqwest::Response {
    client()
        .get(format!("http://{tokengate}/auth"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request to tokengate")
}

#[tokio::test]
async fn opaque_token_is_introspected_then_refused_once_revoked() {
    let provider = OidcProvider::start().await;
    let tokengate = start_tokengate(&provider).await;
    let token = provider.opaque("client", "read write").await;

    let response = auth(tokengate.address, &token).await;

    assert_eq!(
        response.status(),
        StatusCode::ACCEPTED,
        "{}",
        provider.logs()
    );
    // From the introspection answer: client-credentials tokens carry no `sub`.
    assert_eq!(response.headers()["x-auth-request-user"], "client");
    assert_eq!(response.headers()["x-auth-request-groups"], "read,write");

    provider.revoke("client", &token).await;

    // Refused once the answer cached before the revocation expires (POSITIVE_TTL); the
    // limit only keeps a broken build from hanging.
    let deadline = Instant::now() + POSITIVE_TTL + Duration::from_secs(15);
    let refused = loop {
        let response = auth(tokengate.address, &token).await;
        if response.status() != StatusCode::ACCEPTED || Instant::now() >= deadline {
            break response;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        refused.status(),
        StatusCode::UNAUTHORIZED,
        "{}",
        provider.logs()
    );
    assert_eq!(
        refused.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
}
