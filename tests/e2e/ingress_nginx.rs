//! ingress-nginx's `auth-url`: real nginx running the auth location of the ingress-nginx
//! template as reproduced in deploy/ingress-nginx/tokengate-ingress.conf (X-Original-URL,
//! X-Original-Method, X-Sent-From, …), with `?allowed_groups=ops` on the auth URL, and
//! tokengate set to `proxy_headers: ingress_nginx`.

use std::net::SocketAddr;

use reqwest::StatusCode;

use crate::nginx::Nginx;
use crate::provider::OidcProvider;
use crate::support::{
    assert_alice, assert_no_header_name_with_underscore, client, deployed_config, echoed_header,
    send, Answer, EchoUpstream, Tokengate,
};

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

struct Stack {
    provider: OidcProvider,
    tokengate: Tokengate,
    upstream: EchoUpstream,
    nginx: Nginx,
}

impl Stack {
    async fn start() -> Stack {
        let provider = OidcProvider::start().await;
        let tokengate = provider.tokengate("ingress_nginx", RULES).await;
        let upstream = EchoUpstream::start();
        let nginx =
            Nginx::start(|listen| ingress_config(listen, tokengate.address, upstream.address))
                .await;
        Stack {
            provider,
            tokengate,
            upstream,
            nginx,
        }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        send(request, || self.logs()).await
    }

    fn logs(&self) -> String {
        format!("{}{}", self.nginx.logs(), self.provider.logs())
    }
}

#[tokio::test]
async fn member_of_the_allowed_group_reaches_the_upstream_with_identity_headers() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;

    let answer = stack
        .send(
            client()
                .get(stack.nginx.url("/orders?id=7"))
                .bearer_auth(&token)
                .header("X-Auth-Request-User", "mallory")
                .header("X_Auth_Request_User", "mallory")
                .header("X-Auth-Request-Groups", "admins"),
        )
        .await;

    let echo = answer.upstream_echo(|| stack.logs());
    assert_eq!(echo["uri"], "/orders?id=7");
    assert_no_header_name_with_underscore(&echo);
    assert!(
        !answer.body.contains("mallory") && !answer.body.contains("admins"),
        "a client-sent identity reached the upstream: {}",
        answer.body
    );
    // What the controller adds to the auth subrequest is not passed on to the
    // application.
    assert!(echoed_header(&echo, "x-sent-from").is_empty(), "{echo}");
    assert_alice(&echo);
}

#[tokio::test]
async fn user_outside_the_allowed_group_is_403() {
    let stack = Stack::start().await;
    // bob is only in `guests`.
    let token = stack.provider.jwt("bob", "read write").await;

    let answer = stack
        .send(client().get(stack.nginx.url("/orders")).bearer_auth(&token))
        .await;

    assert_eq!(answer.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn missing_token_is_401_with_a_bearer_challenge() {
    let stack = Stack::start().await;

    let answer = stack.send(client().get(stack.nginx.url("/orders"))).await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(answer.www_authenticate(), ["Bearer"]);
    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn original_url_and_method_come_from_nginx_not_from_the_client() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read write").await;

    // X-Original-URL names /healthz: the public rule lets it through without a token.
    let public = stack.send(client().get(stack.nginx.url("/healthz"))).await;
    assert_eq!(public.status, StatusCode::OK, "{}", stack.logs());
    assert!(echoed_header(&public.echo(), "x-auth-request-user").is_empty());

    // X-Original-Method is DELETE: refused whatever the token.
    let delete = stack
        .send(
            client()
                .delete(stack.nginx.url("/orders/7"))
                .bearer_auth(&token),
        )
        .await;
    assert_eq!(delete.status, StatusCode::FORBIDDEN, "{}", stack.logs());

    // A client cannot pass its own X-Original-URL / X-Original-Method off as nginx's:
    // the auth location sets both.
    let forged = stack
        .send(
            client()
                .get(stack.nginx.url("/orders"))
                .header(
                    "X-Original-URL",
                    format!("http://{}/healthz", stack.nginx.address),
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
    let mut stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;
    let request = || client().get(stack.nginx.url("/orders")).bearer_auth(&token);
    assert_eq!(stack.send(request()).await.status, StatusCode::OK);

    stack.tokengate.stop().await;
    let after = stack.send(request()).await;

    assert_eq!(
        after.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        stack.logs()
    );
    assert_eq!(
        stack.upstream.requests(),
        1,
        "a request went through unchecked"
    );
}
