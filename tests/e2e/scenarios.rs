//! What every proxy in front of tokengate must do alike, written once: the stack a proxy
//! test runs against (provider, tokengate, echo upstream, the proxy) and the scenarios
//! that the proxies' own tests run on it. Where proxies legitimately differ (the status
//! of a stopped tokengate, the headers a client can forge at all), the test passes the
//! expected value or its own inputs rather than holding every proxy to one of them.

use std::future::Future;
use std::net::SocketAddr;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::attacks::Front;
use crate::provider::{OidcProvider, TokengateOptions};
use crate::support::{
    assert_alice, assert_no_header_name_with_underscore, assert_no_identity_filled_in, client,
    echoed_header, send, send_raw, tampered, Answer, EchoUpstream, RawRequest, Tokengate,
};

/// A running proxy in front of the echo upstream, as the scenarios see it.
pub trait Proxy {
    /// Where clients connect.
    fn address(&self) -> SocketAddr;

    /// The proxy's own logs and console output, for failure messages.
    fn logs(&self) -> String;
}

/// The provider, tokengate, the echo upstream and the proxy `P` in front of it.
pub struct Stack<P> {
    pub provider: OidcProvider,
    pub tokengate: Tokengate,
    pub upstream: EchoUpstream,
    pub proxy: P,
}

impl<P: Proxy> Stack<P> {
    /// Starts the provider, tokengate with `options`, the upstream, and then the proxy
    /// that `start_proxy(tokengate, upstream)` returns.
    pub async fn start_with<F, Fut>(options: TokengateOptions<'_>, start_proxy: F) -> Stack<P>
    where
        F: FnOnce(SocketAddr, SocketAddr) -> Fut,
        Fut: Future<Output = P>,
    {
        Self::start_around(options, |tokengate, app| {
            start_proxy(tokengate.address, app)
        })
        .await
    }

    /// [`Self::start_with`] for a proxy that needs more of tokengate than its auth
    /// listener's TCP address (its gRPC listener, a unix socket).
    pub async fn start_around<F, Fut>(options: TokengateOptions<'_>, start_proxy: F) -> Stack<P>
    where
        F: FnOnce(&Tokengate, SocketAddr) -> Fut,
        Fut: Future<Output = P>,
    {
        Self::start_on(OidcProvider::start().await, options, start_proxy).await
    }

    /// [`Self::start_around`] with a provider the test started itself.
    pub async fn start_on<F, Fut>(
        provider: OidcProvider,
        options: TokengateOptions<'_>,
        start_proxy: F,
    ) -> Stack<P>
    where
        F: FnOnce(&Tokengate, SocketAddr) -> Fut,
        Fut: Future<Output = P>,
    {
        let tokengate = provider.tokengate_with(options).await;
        let upstream = EchoUpstream::start();
        let proxy = start_proxy(&tokengate, upstream.address).await;
        Stack {
            provider,
            tokengate,
            upstream,
            proxy,
        }
    }

    /// `http://<proxy>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.proxy.address())
    }

    /// Sends `request` through the proxy.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        send(request, || self.logs()).await
    }

    /// Sends `request` byte for byte through the proxy; `Err` when the proxy closed the
    /// connection without an answer.
    pub async fn send_raw(&self, request: &RawRequest) -> Result<Answer, String> {
        send_raw(self.proxy.address(), request).await
    }

    /// Sends `request` through the proxy; the client must get `status`.
    pub async fn expect(&self, request: reqwest::RequestBuilder, status: StatusCode) -> Answer {
        let answer = self.send(request).await;
        assert_eq!(answer.status, status, "{}", self.logs());
        answer
    }

    /// GET `path` through the proxy with a fresh token of `client_id` with `scope`.
    pub async fn get_as(&self, client_id: &str, scope: &str, path: &str) -> Answer {
        let token = self.provider.jwt(client_id, scope).await;
        self.send(client().get(self.url(path)).bearer_auth(&token))
            .await
    }

    /// [`Self::get_as`] that must reach the upstream: its echo.
    pub async fn echo_as(&self, client_id: &str, path: &str) -> Value {
        self.get_as(client_id, "read", path)
            .await
            .upstream_echo(|| self.logs())
    }

    /// [`Self::get_as`] that must be refused with `status` before the upstream.
    pub async fn refused_as(&self, client_id: &str, scope: &str, path: &str, status: StatusCode) {
        let answer = self.get_as(client_id, scope, path).await;
        assert_eq!(answer.status, status, "{}", self.logs());
        assert_eq!(self.upstream.requests(), 0);
    }

    /// The proxy's and the provider's logs, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}{}", self.proxy.logs(), self.provider.logs())
    }
}

/// One shipped proxy setup (a proxy and its deploy/ files), as the scenarios and the
/// attack tables start it: each proxy's tests name it, so that what they share is
/// written once for all of them.
pub trait Deployment {
    /// The running proxy.
    type Proxy: Proxy;
    /// Its column in the attack tables.
    const FRONT: Front;
    /// The route rules its plain stack runs with (YAML appended to tokengate's
    /// settings).
    const RULES: &'static str;

    /// The stack with tokengate set up by `options`, with this proxy's `proxy_headers`,
    /// and the proxy running its shipped config as `edit` changes it.
    fn start(
        options: TokengateOptions<'_>,
        edit: fn(String) -> String,
    ) -> impl Future<Output = Stack<Self::Proxy>>;

    /// The shipped config as the attack tables run it ([`crate::attacks`]).
    fn attacked(config: String) -> String {
        config
    }

    /// The plain stack: the shipped config as it is, tokengate with [`Self::RULES`].
    fn start_plain() -> impl Future<Output = Stack<Self::Proxy>> {
        Self::start(
            TokengateOptions {
                extra: Self::RULES,
                ..TokengateOptions::default()
            },
            |config| config,
        )
    }
}

/// Who a client pretends to be in its forged identity headers: every forged value names
/// one of these, so that no part of it (an email's user either) may reach the upstream.
const FORGED_NAMES: [&str; 2] = ["mallory", "admins"];

/// Identity headers a client sends itself, for the `forged` lists of the scenarios. The
/// underscore spellings are what frameworks that map `-` and `_` alike would read as the
/// real names.
pub const FORGED_USER: (&str, &str) = ("X-Auth-Request-User", "mallory");
pub const FORGED_USER_UNDERSCORED: (&str, &str) = ("X_Auth_Request_User", "mallory");
pub const FORGED_GROUPS: (&str, &str) = ("X-Auth-Request-Groups", "admins");
pub const FORGED_GROUPS_UNDERSCORED: (&str, &str) = ("X_Auth_Request_Groups", "admins");
pub const FORGED_EMAIL: (&str, &str) = ("X-Auth-Request-Email", "mallory@example.com");

/// GET `path` with a token of `client_id` and the client's own `forged` headers: the
/// upstream must be reached, with no header name that has an underscore and no forged
/// name anywhere. Returns the upstream's echo.
async fn forged_headers_never_reach_the_upstream<P: Proxy>(
    stack: &Stack<P>,
    client_id: &str,
    scope: &str,
    path: &str,
    forged: &[(&str, &str)],
) -> Value {
    let token = stack.provider.jwt(client_id, scope).await;
    let mut request = client().get(stack.url(path)).bearer_auth(&token);
    for (name, value) in forged {
        assert!(
            FORGED_NAMES.iter().any(|forged| value.contains(forged)),
            "{name}: {value} names none of {FORGED_NAMES:?}, so its absence is not checked"
        );
        request = request.header(*name, *value);
    }

    let answer = stack.send(request).await;

    let echo = answer.upstream_echo(|| stack.logs());
    assert_no_header_name_with_underscore(&echo, "the client's own identity headers");
    assert!(
        !FORGED_NAMES.iter().any(|name| answer.body.contains(name)),
        "a client-sent identity reached the upstream: {}",
        answer.body
    );
    echo
}

/// alice's token with `scope` and the client's `forged` identity headers: the upstream
/// gets the request as sent, once, with alice's identity only. Returns the upstream's
/// echo for the proxy's own checks.
pub async fn identity_reaches_the_upstream<P: Proxy>(
    stack: &Stack<P>,
    scope: &str,
    path: &str,
    forged: &[(&str, &str)],
) -> Value {
    let echo = forged_headers_never_reach_the_upstream(stack, "alice", scope, path, forged).await;
    assert_eq!(echo["uri"], path, "{echo}");
    assert_alice(&echo);
    assert_eq!(stack.upstream.requests(), 1);
    echo
}

/// Client `client` carries no user claims: the user is its `sub`, and tokengate sends no
/// email or groups header at all. The proxy must still not let the client's own
/// `forged` values through in their place.
pub async fn client_sent_identity_never_fills_in_for_a_token_without_claims<P: Proxy>(
    stack: &Stack<P>,
    forged: &[(&str, &str)],
) {
    let echo =
        forged_headers_never_reach_the_upstream(stack, "client", "read", "/orders", forged).await;
    assert_no_identity_filled_in(&echo);
}

/// No token: 401 with exactly one challenge, `Bearer` without an error attribute (RFC
/// 6750 §3.1), and the upstream not reached. Returns the answer for the proxy's own
/// checks.
pub async fn missing_token_is_401_with_a_bearer_challenge<P: Proxy>(stack: &Stack<P>) -> Answer {
    let answer = stack.send(client().get(stack.url("/orders"))).await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(answer.www_authenticate(), ["Bearer"]);
    assert_eq!(stack.upstream.requests(), 0);
    answer
}

/// A token whose signature no longer matches: 401 `invalid_token`, the upstream not
/// reached. Returns the answer for the proxy's own checks.
pub async fn tampered_token_is_401_invalid_token<P: Proxy>(stack: &Stack<P>) -> Answer {
    let token = stack.provider.jwt("alice", "read").await;

    let answer = stack
        .send(
            client()
                .get(stack.url("/orders"))
                .bearer_auth(tampered(&token)),
        )
        .await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(
        answer.www_authenticate(),
        [r#"Bearer error="invalid_token""#]
    );
    assert_eq!(stack.upstream.requests(), 0);
    answer
}

/// For proxies that pass tokengate's denial through whole: the client gets its status,
/// its challenge and its JSON body.
pub async fn denials_reach_the_client_with_status_challenge_and_body<P: Proxy>(stack: &Stack<P>) {
    let missing = missing_token_is_401_with_a_bearer_challenge(stack).await;
    assert_eq!(missing.json(), json!({"error": "unauthorized"}));

    let bad = tampered_token_is_401_invalid_token(stack).await;
    assert_eq!(bad.json(), json!({"error": "invalid_token"}));
}

/// /ops/reports needs the `ops` group (by a route rule or the auth URL): refused to bob,
/// who is only in `guests`, with tokengate's body; let through for alice.
pub async fn ops_group_is_required_on_ops<P: Proxy>(stack: &Stack<P>) {
    let alice = stack.provider.jwt("alice", "read").await;
    let bob = stack.provider.jwt("bob", "read").await;

    let refused = stack
        .send(client().get(stack.url("/ops/reports")).bearer_auth(&bob))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(refused.json(), json!({"error": "access_denied"}));
    assert_eq!(stack.upstream.requests(), 0);

    let allowed = stack
        .send(client().get(stack.url("/ops/reports")).bearer_auth(&alice))
        .await;
    assert_eq!(allowed.status, StatusCode::OK, "{}", stack.logs());
}

/// /healthz is public by a route rule, which tokengate can only apply if it reads the
/// original path from the proxy: no token needed, and no identity headers.
pub async fn public_path_needs_no_token<P: Proxy>(stack: &Stack<P>) {
    let public = stack.send(client().get(stack.url("/healthz"))).await;
    assert_eq!(public.status, StatusCode::OK, "{}", stack.logs());
    assert!(echoed_header(&public.echo(), "x-auth-request-user").is_empty());
}

/// No token, and the client's own `X-Forwarded-Uri: /healthz` (Traefik's header for the
/// original path) on a request for /orders: 401, the public rule of /healthz not
/// applied.
pub async fn forwarded_uri_from_the_client_is_not_the_original<P: Proxy>(stack: &Stack<P>) {
    let forged = stack
        .send(
            client()
                .get(stack.url("/orders"))
                .header("X-Forwarded-Uri", "/healthz")
                .header("X-Forwarded-Method", "GET"),
        )
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
}

/// A request with a real, valid token goes through; once tokengate is stopped the same
/// request gets `expected` (the proxy's own failure status) and never reaches the
/// upstream: the answer must not depend on what the client holds.
pub async fn stopped_tokengate_fails_closed<P: Proxy>(stack: &mut Stack<P>, expected: StatusCode) {
    let token = stack.provider.jwt("alice", "read").await;
    let url = stack.url("/orders");
    let request = || client().get(&url).bearer_auth(&token);
    let before = stack.send(request()).await;
    assert_eq!(before.status, StatusCode::OK, "{}", stack.logs());

    stack.tokengate.stop().await;
    let after = stack.send(request()).await;

    assert_eq!(after.status, expected, "{}", stack.logs());
    assert_eq!(
        stack.upstream.requests(),
        1,
        "a request went through unchecked"
    );
}
