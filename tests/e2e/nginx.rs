//! Real nginx `auth_request` in front of an echo upstream, configured with the shipped
//! deploy/nginx/tokengate.conf (only its placeholder addresses substituted), the real
//! tokengate answering the subrequests, and tokens from the real OpenID Provider.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::attacks::{self, Front, ALICE, NO_CLAIMS};
use crate::provider::{TokengateOptions, POSITIVE_TTL};
use crate::scenarios::{
    self, Deployment, Proxy, FORGED_EMAIL, FORGED_GROUPS, FORGED_GROUPS_UNDERSCORED, FORGED_USER,
    FORGED_USER_UNDERSCORED,
};
use crate::support::{
    client, deployed_config, echoed_header, find_executable, ChildKind, Process, RawRequest,
    ScratchDir,
};

/// The shipped snippet with its placeholders replaced: where nginx listens, tokengate's
/// auth listener and the protected application.
pub fn site_config(
    listen: SocketAddr,
    tokengate: impl std::fmt::Display,
    app: SocketAddr,
) -> String {
    deployed_config(
        "deploy/nginx/tokengate.conf",
        &[
            ("server 127.0.0.1:8080;", format!("server {tokengate};"), 1),
            ("server 127.0.0.1:3000;", format!("server {app};"), 1),
            ("listen 80;", format!("listen {listen};"), 1),
        ],
    )
}

/// The main file around a site snippet: everything nginx writes stays in `dir`, so that
/// it runs as any user. `master_process off` keeps nginx to one process, so killing the
/// child leaves no worker behind.
fn main_config(dir: &Path) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    format!(
        "master_process off;
events {{
    worker_connections 256;
}}
http {{
    access_log off;
    client_body_temp_path {client_body};
    proxy_temp_path {proxy};
    fastcgi_temp_path {fastcgi};
    uwsgi_temp_path {uwsgi};
    scgi_temp_path {scgi};
    include {site};
}}
",
        client_body = path("client_body_temp"),
        proxy = path("proxy_temp"),
        fastcgi = path("fastcgi_temp"),
        uwsgi = path("uwsgi_temp"),
        scgi = path("scgi_temp"),
        site = path("site.conf"),
    )
}

/// How nginx starts.
const NGINX: ChildKind = ChildKind {
    name: "nginx",
    own_group: false,
    timeout: Duration::from_secs(10),
    port_in_use: "Address already in use",
};

/// A running nginx child process, killed on drop (also when the test panics).
pub struct Nginx {
    process: Process,
    pub address: SocketAddr,
}

impl Nginx {
    /// Starts nginx with the site config that `site(listen address)` returns, and waits
    /// until it listens.
    pub async fn start(site: impl Fn(SocketAddr) -> String) -> Nginx {
        let binary = find_executable("nginx", "TOKENGATE_E2E_NGINX", &["/usr/sbin/nginx"]);
        let (process, address) = NGINX
            .start(|dir, address| {
                dir.write("site.conf", &site(address));
                dir.write("nginx.conf", &main_config(&dir.path));
                let mut command = Command::new(&binary);
                command
                    .arg("-p")
                    .arg(&dir.path)
                    .arg("-c")
                    .arg(dir.join("nginx.conf"))
                    // -e: the start-up error log, before the configuration is read (the
                    // default, /var/log/nginx/error.log, is not writable by every user).
                    .arg("-e")
                    .arg(dir.join("error.log"))
                    .arg("-g")
                    .arg(format!(
                        "daemon off; pid {}; error_log {};",
                        dir.join("nginx.pid").display(),
                        dir.join("error.log").display()
                    ));
                command
            })
            .await;
        Nginx { process, address }
    }

    /// nginx's error log and console output, for failure messages.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

impl Proxy for Nginx {
    fn address(&self) -> SocketAddr {
        self.address
    }

    fn logs(&self) -> String {
        Nginx::logs(self)
    }
}

/// The provider, tokengate, the echo upstream and nginx with the shipped snippet.
type Stack = scenarios::Stack<Nginx>;

/// Plain nginx `auth_request` with deploy/nginx/tokengate.conf.
pub struct AuthRequest;

impl Deployment for AuthRequest {
    type Proxy = Nginx;
    const FRONT: Front = Front::Nginx;
    const RULES: &'static str = "";

    fn start(
        options: TokengateOptions<'_>,
        edit: fn(String) -> String,
    ) -> impl Future<Output = Stack> {
        start_with(options, edit)
    }
}

async fn start() -> Stack {
    AuthRequest::start_plain().await
}

/// The stack with tokengate set up by `options` (`proxy_headers: nginx` unless they say
/// otherwise) and nginx running the shipped snippet as `edit` changes it.
pub async fn start_with(options: TokengateOptions<'_>, edit: fn(String) -> String) -> Stack {
    Stack::start_with(options, |tokengate, app| {
        Nginx::start(move |listen| edit(site_config(listen, tokengate, app)))
    })
    .await
}

/// The shipped snippet as the Kubernetes impersonation recipe (docs/identity.md) changes it: the
/// application gets tokengate's `Impersonate-User` and first `Impersonate-Group` (nginx
/// keeps only the first line of a repeated upstream header).
pub fn with_impersonation(site: String) -> String {
    replace_once(
        &replace_once(
            &site,
            r#"proxy_set_header Impersonate-User "";"#,
            "auth_request_set $imp_user $upstream_http_impersonate_user;\n        \
             proxy_set_header Impersonate-User $imp_user;",
        ),
        r#"proxy_set_header Impersonate-Group "";"#,
        "auth_request_set $imp_group $upstream_http_impersonate_group;\n        \
         proxy_set_header Impersonate-Group $imp_group;",
    )
}

/// `text` with `from`, which must occur exactly once, replaced by `to`.
pub fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(
        text.matches(from).count(),
        1,
        "the shipped config must contain `{from}` once"
    );
    text.replace(from, to)
}

#[tokio::test]
async fn provider_jwt_reaches_the_upstream_with_identity_headers() {
    let stack = start().await;
    scenarios::identity_reaches_the_upstream(&stack, "read write", "/orders?id=7", &[]).await;
}

#[tokio::test]
async fn missing_token_is_401_with_a_bearer_challenge() {
    let stack = start().await;
    // Copied from tokengate's answer by nginx itself.
    scenarios::missing_token_is_401_with_a_bearer_challenge(&stack).await;
}

#[tokio::test]
async fn tampered_token_is_401_invalid_token() {
    let stack = start().await;
    scenarios::tampered_token_is_401_invalid_token(&stack).await;
}

#[tokio::test]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let stack = start().await;
    scenarios::identity_reaches_the_upstream(
        &stack,
        "read",
        "/orders",
        // nginx must drop the underscore spelling (`underscores_in_headers off`).
        &[FORGED_USER, FORGED_USER_UNDERSCORED, FORGED_EMAIL],
    )
    .await;
}

#[tokio::test]
async fn client_sent_groups_never_fill_in_for_a_token_without_groups() {
    let stack = start().await;
    scenarios::client_sent_identity_never_fills_in_for_a_token_without_claims(
        &stack,
        &[FORGED_GROUPS, FORGED_GROUPS_UNDERSCORED, FORGED_EMAIL],
    )
    .await;
}

#[tokio::test]
async fn stopped_tokengate_fails_closed_with_500() {
    let mut stack = start().await;
    scenarios::stopped_tokengate_fails_closed(&mut stack, StatusCode::INTERNAL_SERVER_ERROR).await;
}

/// The sidecar layout: tokengate's auth listener on a unix socket in a shared directory,
/// nginx's `upstream` pointing at it (`server unix:/path;`, the keep-alive form of
/// `proxy_pass http://unix:/path:/auth`). The same contract as over TCP.
#[tokio::test]
async fn auth_request_over_a_unix_socket() {
    let dir = ScratchDir::new("auth-socket");
    let listen = format!("unix:{}", dir.join("auth.sock").display());
    let options = TokengateOptions {
        listen: &listen,
        ..TokengateOptions::default()
    };
    let mut stack = Stack::start_around(options, |tokengate, app| {
        let socket = tokengate
            .auth
            .unix_path()
            .expect("a unix socket")
            .to_owned();
        Nginx::start(move |listen| site_config(listen, format!("unix:{}", socket.display()), app))
    })
    .await;
    scenarios::missing_token_is_401_with_a_bearer_challenge(&stack).await;
    scenarios::tampered_token_is_401_invalid_token(&stack).await;
    scenarios::identity_reaches_the_upstream(
        &stack,
        "read",
        "/orders?id=7",
        &[FORGED_USER, FORGED_USER_UNDERSCORED],
    )
    .await;
    // Stopped: the socket file is gone, nginx fails closed.
    stack.tokengate.stop().await;
    assert!(
        !dir.join("auth.sock").exists(),
        "the socket file is removed on shutdown"
    );
    let token = stack.provider.jwt("alice", "read").await;
    let after = stack
        .send(client().get(stack.url("/orders")).bearer_auth(&token))
        .await;
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

#[tokio::test]
async fn opaque_token_is_introspected_then_refused_once_revoked() {
    let stack = start().await;
    let token = stack.provider.opaque("alice", "read").await;
    let request = || client().get(stack.url("/orders")).bearer_auth(&token);

    let answer = stack.send(request()).await;

    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}\n{}",
        answer.body,
        stack.logs()
    );
    // The identity comes from the provider's introspection answer.
    let echo = answer.echo();
    assert_eq!(echoed_header(&echo, "x-auth-request-user"), ["alice"]);
    assert_eq!(
        echoed_header(&echo, "x-auth-request-groups"),
        ["developers,ops"]
    );

    stack.provider.revoke("alice", &token).await;

    // Refused once the answer cached before the revocation expires (POSITIVE_TTL); the
    // limit only keeps a broken build from hanging.
    let deadline = Instant::now() + POSITIVE_TTL + Duration::from_secs(15);
    let refused = loop {
        let answer = stack.send(request()).await;
        if answer.status != StatusCode::OK || Instant::now() >= deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    assert_eq!(
        refused.www_authenticate(),
        [r#"Bearer error="invalid_token""#]
    );
}

// nginx resolves `..` only for its own location match and forwards the raw target;
// underscores_in_headers off drops every spelling of a header name with `_`, and
// proxy_set_header replaces every case of the others.
attacks::table_tests!(
    AuthRequest,
    host_tricks_meet_nginx_own_host,
    impersonation: with_impersonation,
    holders: [ALICE, NO_CLAIMS]
);

/// With `proxy_headers: nginx`, tokengate reads the original path from `X-Original-URI`
/// only. An nginx whose auth location lacks that line sends none, and a client-sent
/// `X-Forwarded-Uri: /healthz` (Traefik's header) must not make the public rule match.
#[tokio::test]
async fn forwarded_uri_from_the_client_never_steers_the_rules() {
    let options = TokengateOptions {
        extra: "
rules:
  - name: health
    paths: [/healthz]
    allow_anonymous: true
",
        ..TokengateOptions::default()
    };
    let stack = start_with(options, |site| {
        replace_once(
            &site,
            "proxy_set_header X-Original-URI $request_uri;",
            "# (no X-Original-URI)",
        )
    })
    .await;

    scenarios::forwarded_uri_from_the_client_is_not_the_original(&stack).await;
    assert_eq!(stack.upstream.requests(), 0);
}

/// Two cookies of the token's name: frameworks disagree on which one counts (the first,
/// or the last), so tokengate must not pick one for them.
#[tokio::test]
async fn two_token_cookies_are_401() {
    let options = TokengateOptions {
        token: r#"  sources: ["cookie:session"]"#,
        ..TokengateOptions::default()
    };
    let stack = start_with(options, |site| site).await;
    let alice = stack.provider.jwt("alice", "read").await;
    let bob = stack.provider.jwt("bob", "read").await;

    let one = stack
        .send_raw(&RawRequest::get("/orders").header("Cookie", format!("session={alice}")))
        .await
        .unwrap_or_else(|error| panic!("{error}\n{}", stack.logs()));
    assert_eq!(one.status, StatusCode::OK, "{}\n{}", one.body, stack.logs());

    for request in [
        RawRequest::get("/orders").header("Cookie", format!("session={bob}; session={alice}")),
        RawRequest::get("/orders")
            .header("Cookie", format!("session={bob}"))
            .header("Cookie", format!("theme=dark; session={alice}")),
    ] {
        let answer = stack
            .send_raw(&request)
            .await
            .unwrap_or_else(|error| panic!("{error}\n{}", stack.logs()));
        assert_eq!(
            answer.status,
            StatusCode::UNAUTHORIZED,
            "{}\n{}",
            request.describe(),
            stack.logs()
        );
        assert_eq!(
            answer.www_authenticate(),
            [r#"Bearer error="invalid_token""#]
        );
    }
    assert_eq!(stack.upstream.requests(), 1);
}
