//! ingress-nginx's auth cache (`auth-cache-key`, `auth-cache-duration`): real nginx with
//! its proxy cache on the auth location, as deploy/ingress-nginx/
//! tokengate-ingress-auth-cache.conf reproduces the controller's template, and tokengate
//! with route rules that depend on the method and the path. An allow that nginx keeps
//! must never answer a request that tokengate would refuse.

use std::net::SocketAddr;
use std::path::Path;

use reqwest::StatusCode;

use crate::nginx::{replace_once, Nginx};
use crate::provider::TokengateOptions;
use crate::scenarios::Stack;
use crate::support::{client, deployed_config, echoed_header, ScratchDir};

/// Rules whose verdict depends on the method and the path.
const RULES: &str = r#"
rules:
  - name: no-deletes
    methods: [DELETE]
    deny: true
  - name: admin
    paths: [/admin]
    deny: true
  - name: health
    paths: [/healthz]
    allow_anonymous: true
"#;

/// The key the README used to show: the token alone.
const TOKEN_ONLY_KEY: &str = "$http_authorization";

fn cache_config(
    listen: SocketAddr,
    tokengate: SocketAddr,
    app: SocketAddr,
    cache: &Path,
    key: Option<&str>,
) -> String {
    let config = deployed_config(
        "deploy/ingress-nginx/tokengate-ingress-auth-cache.conf",
        &[
            ("server 127.0.0.1:8080;", format!("server {tokengate};"), 1),
            ("server 127.0.0.1:3000;", format!("server {app};"), 1),
            ("listen 80;", format!("listen {listen};"), 1),
            (
                "/tmp/nginx/nginx-cache-auth",
                cache.display().to_string(),
                1,
            ),
        ],
    );
    match key {
        None => config,
        Some(key) => replace_once(
            &config,
            "Prefix$request_method$host$request_uri$http_authorization'",
            &format!("Prefix{key}'"),
        ),
    }
}

/// The stack behind nginx with the auth cache (in the returned directory), keyed as the
/// shipped file says or by `key`, and tokengate with [`RULES`] plus `cache` (YAML).
async fn start(key: Option<&str>, cache: &str) -> (Stack<Nginx>, ScratchDir) {
    let dir = ScratchDir::new("nginx-auth-cache");
    let extra = format!("{RULES}{cache}");
    let stack = Stack::start_with(
        TokengateOptions {
            proxy_headers: "ingress_nginx",
            extra: &extra,
            ..TokengateOptions::default()
        },
        |tokengate, app| {
            let path = &dir.path;
            Nginx::start(move |listen| cache_config(listen, tokengate, app, path, key))
        },
    )
    .await;
    (stack, dir)
}

/// With the token alone as the key, an allow must not be kept while tokengate's rules
/// depend on the method and the path: a DELETE, /admin and an anonymous /healthz answer
/// must each come from tokengate.
#[tokio::test]
async fn token_only_key_never_serves_an_allow_for_another_route() {
    let (stack, _cache) = start(Some(TOKEN_ONLY_KEY), "").await;
    let token = stack.provider.jwt("alice", "read").await;
    let get = |path: &str| client().get(stack.url(path)).bearer_auth(&token);

    let delete = || client().delete(stack.url("/orders")).bearer_auth(&token);

    stack.expect(get("/orders"), StatusCode::OK).await;
    stack.expect(get("/orders"), StatusCode::OK).await;
    stack.expect(delete(), StatusCode::FORBIDDEN).await;
    stack.expect(get("/admin"), StatusCode::FORBIDDEN).await;

    // No token: the key is empty for every such request; the anonymous allow of
    // /healthz must not answer /orders.
    let anonymous = |path: &str| client().get(stack.url(path));
    stack.expect(anonymous("/healthz"), StatusCode::OK).await;
    stack
        .expect(anonymous("/orders"), StatusCode::UNAUTHORIZED)
        .await;

    assert_eq!(
        stack.tokengate.decision_count().await,
        6,
        "every request must have been decided by tokengate, none by nginx's cache"
    );
    assert_eq!(stack.upstream.requests(), 3);
}

/// With the prescribed key (method, host, URI and token) and the operator's opt-in,
/// nginx serves repeated requests from its cache, and a denied method is still denied.
#[tokio::test]
async fn prescribed_key_caches_allows_per_route() {
    let (stack, _cache) = start(
        None,
        "
cache:
  proxy_cache_route_verdicts: true
",
    )
    .await;
    let token = stack.provider.jwt("alice", "read").await;
    let get = |path: &str| client().get(stack.url(path)).bearer_auth(&token);

    for _ in 0..3 {
        let answer = stack.send(get("/orders")).await;
        let echo = answer.upstream_echo(|| stack.logs());
        // From the cached answer too.
        assert_eq!(
            echoed_header(&echo, "x-auth-request-user"),
            ["alice"],
            "{echo}"
        );
    }
    assert_eq!(
        stack.tokengate.decision_count().await,
        1,
        "repeated requests must be answered from nginx's cache\n{}",
        stack.logs()
    );

    let delete = || client().delete(stack.url("/orders")).bearer_auth(&token);

    for _ in 0..2 {
        stack.expect(delete(), StatusCode::FORBIDDEN).await;
    }
    stack.expect(get("/admin"), StatusCode::FORBIDDEN).await;
    // Denials are never kept: each one was tokengate's.
    assert_eq!(stack.tokengate.decision_count().await, 4);

    stack.expect(get("/orders?page=2"), StatusCode::OK).await;
    assert_eq!(stack.tokengate.decision_count().await, 5);
    assert_eq!(stack.upstream.requests(), 4);
}
