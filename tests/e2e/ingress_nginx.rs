//! ingress-nginx's `auth-url`: real nginx running the auth location of the ingress-nginx
//! template as reproduced in deploy/ingress-nginx/tokengate-ingress.conf (X-Original-URL,
//! X-Original-Method, X-Sent-From, …), with `?allowed_groups=ops` on the auth URL, and
//! tokengate set to `proxy_headers: ingress_nginx`.

use std::net::SocketAddr;

use reqwest::StatusCode;

use crate::nginx::Nginx;
use crate::scenarios::{self, FORGED_GROUPS, FORGED_USER, FORGED_USER_UNDERSCORED};
use crate::support::{client, deployed_config, echoed_header};

/// Route rules that show tokengate read the original request from ingress-nginx's
/// headers: a public path (X-Original-URL) and a method nobody may use (X-Original-Method).
const RULES: &str = r#"
rules:
  - name: health
    paths: [/healthz]
    allow_anonymous: true
  - name: read-only
    methods: [DELETE]
    deny: true
"#;

fn ingress_config(listen: SocketAddr, tokengate: SocketAddr, app: SocketAddr) -> String {
    deployed_config(
        "deploy/ingress-nginx/tokengate-ingress.conf",
        &[
            ("server 127.0.0.1:8080;", format!("server {tokengate};"), 1),
            ("server 127.0.0.1:3000;", format!("server {app};"), 1),
            ("listen 80;", format!("listen {listen};"), 1),
        ],
    )
}

/// The provider, tokengate, the echo upstream and nginx with the ingress auth location.
type Stack = scenarios::Stack<Nginx>;

async fn start() -> Stack {
    Stack::start("ingress_nginx", RULES, |tokengate, app| {
        Nginx::start(move |listen| ingress_config(listen, tokengate, app))
    })
    .await
}

#[tokio::test]
async fn member_of_the_allowed_group_reaches_the_upstream_with_identity_headers() {
    let stack = start().await;

    let echo = scenarios::identity_reaches_the_upstream(
        &stack,
        "read",
        "/orders?id=7",
        &[FORGED_USER, FORGED_USER_UNDERSCORED, FORGED_GROUPS],
    )
    .await;

    // What the controller adds to the auth subrequest is not passed on to the
    // application.
    assert!(echoed_header(&echo, "x-sent-from").is_empty(), "{echo}");
}

#[tokio::test]
async fn user_outside_the_allowed_group_is_403() {
    let stack = start().await;
    // bob is only in `guests`.
    let token = stack.provider.jwt("bob", "read write").await;

    let answer = stack
        .send(client().get(stack.url("/orders")).bearer_auth(&token))
        .await;

    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn missing_token_is_401_with_a_bearer_challenge() {
    let stack = start().await;
    scenarios::missing_token_is_401_with_a_bearer_challenge(&stack).await;
}

#[tokio::test]
async fn original_url_and_method_come_from_nginx_not_from_the_client() {
    let stack = start().await;
    let token = stack.provider.jwt("alice", "read write").await;

    // X-Original-URL names /healthz: the public rule lets it through without a token.
    scenarios::public_path_needs_no_token(&stack).await;

    // X-Original-Method is DELETE: refused whatever the token.
    let delete = stack
        .send(client().delete(stack.url("/orders/7")).bearer_auth(&token))
        .await;
    assert_eq!(delete.status, StatusCode::FORBIDDEN, "{}", stack.logs());

    // A client cannot pass its own X-Original-URL / X-Original-Method off as nginx's:
    // the auth location sets both.
    let forged = stack
        .send(
            client()
                .get(stack.url("/orders"))
                .header(
                    "X-Original-URL",
                    format!("http://{}/healthz", stack.proxy.address),
                )
                .header("X-Original-Method", "GET"),
        )
        .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(
        stack.upstream.requests(),
        1,
        "only the public request may reach the upstream"
    );
}

#[tokio::test]
async fn stopped_tokengate_fails_closed_with_500() {
    let mut stack = start().await;
    scenarios::stopped_tokengate_fails_closed(&mut stack, StatusCode::INTERNAL_SERVER_ERROR).await;
}
