//! ingress-nginx's `auth-url`: real nginx running the auth location of the ingress-nginx
//! template as reproduced in deploy/ingress-nginx/tokengate-ingress.conf (X-Original-URL,
//! X-Original-Method, X-Sent-From, …), with `?allowed_groups=ops` on the auth URL, and
//! tokengate set to `proxy_headers: ingress_nginx`.

use std::future::Future;
use std::net::SocketAddr;

use reqwest::StatusCode;

use crate::attacks::{self, Front, ALICE};
use crate::nginx::{replace_once, Nginx};
use crate::provider::TokengateOptions;
use crate::scenarios::{self, Deployment, FORGED_GROUPS, FORGED_USER, FORGED_USER_UNDERSCORED};
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

pub fn ingress_config(listen: SocketAddr, tokengate: SocketAddr, app: SocketAddr) -> String {
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

/// ingress-nginx's `auth-url`: nginx with deploy/ingress-nginx/tokengate-ingress.conf.
pub struct AuthUrl;

impl Deployment for AuthUrl {
    type Proxy = Nginx;
    const FRONT: Front = Front::IngressNginx;
    const RULES: &'static str = RULES;

    fn start(
        options: TokengateOptions<'_>,
        edit: fn(String) -> String,
    ) -> impl Future<Output = Stack> {
        start_with(options, edit)
    }

    /// The tables' route rules decide alone: no policy in the auth URL.
    fn attacked(config: String) -> String {
        without_policy(config)
    }
}

async fn start() -> Stack {
    AuthUrl::start_plain().await
}

/// The stack with tokengate set up by `options` (`proxy_headers: ingress_nginx`) and
/// nginx running the shipped file as `edit` changes it.
async fn start_with(options: TokengateOptions<'_>, edit: fn(String) -> String) -> Stack {
    let options = TokengateOptions {
        proxy_headers: "ingress_nginx",
        ..options
    };
    Stack::start_with(options, |tokengate, app| {
        Nginx::start(move |listen| edit(ingress_config(listen, tokengate, app)))
    })
    .await
}

/// [`start_with`] tokengate's route rules `rules`.
async fn start_with_rules(rules: &str, edit: fn(String) -> String) -> Stack {
    let options = TokengateOptions {
        extra: rules,
        ..TokengateOptions::default()
    };
    start_with(options, edit).await
}

/// An Ingress whose `auth-url` carries no policy (deploy/ingress-nginx/README.md: "No policy"): its route rules
/// in tokengate's config then decide alone.
fn without_policy(conf: String) -> String {
    replace_once(
        &conf,
        "proxy_pass http://tokengate/auth?allowed_groups=ops;",
        "proxy_pass http://tokengate/auth;",
    )
}

/// `auth-response-headers` with the Kubernetes impersonation headers added, as the
/// controller writes them (nginx keeps only the first `Impersonate-Group` line).
fn with_impersonation(conf: String) -> String {
    replace_once(
        &conf,
        "proxy_set_header 'X-Auth-Request-Groups' $authHeader2;",
        "proxy_set_header 'X-Auth-Request-Groups' $authHeader2;
        auth_request_set $authHeader3 $upstream_http_impersonate_user;
        proxy_set_header 'Impersonate-User' $authHeader3;
        auth_request_set $authHeader4 $upstream_http_impersonate_group;
        proxy_set_header 'Impersonate-Group' $authHeader4;",
    )
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
    stack
        .refused_as("bob", "read write", "/orders", StatusCode::FORBIDDEN)
        .await;
}

#[tokio::test]
async fn missing_token_is_401_with_a_bearer_challenge() {
    let stack = start().await;
    scenarios::missing_token_is_401_with_a_bearer_challenge(&stack).await;
}

#[tokio::test]
async fn original_url_and_method_come_from_nginx_not_from_the_client() {
    let stack = start_with_rules(RULES, without_policy).await;
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

/// Anonymous rules do not apply when the auth URL carries requirements: the Ingress said
/// `allowed_groups=ops`, and a public rule in tokengate's config must not open it.
#[tokio::test]
async fn public_rule_does_not_open_an_ingress_with_requirements() {
    let stack = start().await;
    let bob = stack.provider.jwt("bob", "read").await;
    let alice = stack.provider.jwt("alice", "read").await;

    let anonymous = stack.send(client().get(stack.url("/healthz"))).await;
    assert_eq!(
        anonymous.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        stack.logs()
    );
    let outsider = stack
        .send(client().get(stack.url("/healthz")).bearer_auth(&bob))
        .await;
    assert_eq!(outsider.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(stack.upstream.requests(), 0);

    let member = stack
        .send(client().get(stack.url("/healthz")).bearer_auth(&alice))
        .await;
    assert_eq!(member.status, StatusCode::OK, "{}", stack.logs());
}

// X-Original-URL is `$scheme://$http_host$request_uri`: the client's `Host` as sent.
attacks::table_tests!(
    AuthUrl,
    host_tricks_in_the_original_url_are_refused,
    impersonation: with_impersonation,
    holders: [ALICE]
);

/// A group with the header's separator in it: the upstream splits
/// `X-Auth-Request-Groups: ops,a,admins` into three, so `a,admins` must never be sent
/// as it is (nor count for the policy).
#[tokio::test]
async fn group_with_a_comma_never_reaches_the_upstream() {
    let stack = start().await;
    // `comma`: groups [ops, "a,admins"].
    let echo = stack.echo_as("comma", "/orders").await;

    assert_eq!(
        echoed_header(&echo, "x-auth-request-groups"),
        ["ops"],
        "{echo}"
    );
    assert!(!echo.to_string().contains("admins"), "{echo}");
}

/// A groups claim given as one string is one group: `"finance ops"` is not in `ops`.
#[tokio::test]
async fn string_groups_claim_is_one_group() {
    let stack = start().await;
    // `spaced`: groups "finance ops".
    stack
        .refused_as("spaced", "read", "/orders", StatusCode::FORBIDDEN)
        .await;
}

/// A parameter repeated in the auth URL: any one of the groups will do (as oauth2-proxy
/// reads `allowed_groups`), so alice (`ops`) passes and bob (`guests`) does not.
#[tokio::test]
async fn repeated_groups_in_the_auth_url_are_any_of() {
    let stack = start_with_rules("", |conf| {
        replace_once(
            &conf,
            "proxy_pass http://tokengate/auth?allowed_groups=ops;",
            "proxy_pass http://tokengate/auth?allowed_groups=admins&allowed_groups=ops;",
        )
    })
    .await;
    let alice = stack.provider.jwt("alice", "read").await;
    let bob = stack.provider.jwt("bob", "read").await;

    let member = stack
        .send(client().get(stack.url("/orders")).bearer_auth(&alice))
        .await;
    assert_eq!(member.status, StatusCode::OK, "{}", stack.logs());
    let outsider = stack
        .send(client().get(stack.url("/orders")).bearer_auth(&bob))
        .await;
    assert_eq!(outsider.status, StatusCode::FORBIDDEN, "{}", stack.logs());
    assert_eq!(stack.upstream.requests(), 1);
}
