//! Real nginx `auth_request` in front of an echo upstream, configured with the shipped
//! deploy/nginx/tokengate.conf (only its placeholder addresses substituted), the real
//! tokengate answering the subrequests, and tokens from the real OpenID Provider.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::provider::{OidcProvider, POSITIVE_TTL};
use crate::support::{
    assert_alice, assert_no_header_name_with_underscore, assert_no_identity_filled_in, client,
    closed_address, deployed_config, echoed_header, find_executable, send, start_with_retries,
    tampered, Answer, EchoUpstream, Process, ScratchDir, StartError, Tokengate,
};

/// The shipped snippet with its placeholders replaced: where nginx listens, tokengate's
/// auth listener and the protected application.
pub fn site_config(listen: SocketAddr, tokengate: SocketAddr, app: SocketAddr) -> String {
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
        start_with_retries("nginx", || {
            let dir = ScratchDir::new("nginx");
            let address = closed_address();
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
            async move {
                let mut process =
                    Process::spawn("nginx", command, dir, false).map_err(StartError::fatal)?;
                match process
                    .wait_until_listening(address, Duration::from_secs(10))
                    .await
                {
                    Ok(()) => Ok(Nginx { process, address }),
                    Err(error) => {
                        let logs = process.logs();
                        Err(StartError {
                            port_taken: logs.contains("Address already in use"),
                            message: format!("{error}\n{logs}"),
                        })
                    }
                }
            }
        })
        .await
    }

    /// `http://<nginx>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// nginx's error log and console output, for failure messages.
    pub fn logs(&self) -> String {
        self.process.logs()
    }
}

/// The provider, tokengate, the echo upstream and nginx in front of it.
struct Stack {
    provider: OidcProvider,
    tokengate: Tokengate,
    upstream: EchoUpstream,
    nginx: Nginx,
}

impl Stack {
    async fn start() -> Stack {
        let provider = OidcProvider::start().await;
        let tokengate = provider.tokengate("nginx", "").await;
        let upstream = EchoUpstream::start();
        let nginx =
            Nginx::start(|listen| site_config(listen, tokengate.address, upstream.address)).await;
        Stack {
            provider,
            tokengate,
            upstream,
            nginx,
        }
    }

    /// Sends `request` through nginx.
    async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        send(request, || self.logs()).await
    }

    fn logs(&self) -> String {
        format!("{}{}", self.nginx.logs(), self.provider.logs())
    }
}

#[tokio::test]
async fn provider_jwt_reaches_the_upstream_with_identity_headers() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read write").await;

    let answer = stack
        .send(
            client()
                .get(stack.nginx.url("/orders?id=7"))
                .bearer_auth(&token),
        )
        .await;

    let echo = answer.upstream_echo(|| stack.logs());
    assert_eq!(echo["uri"], "/orders?id=7");
    assert_alice(&echo);
    assert_eq!(stack.upstream.requests(), 1);
}

#[tokio::test]
async fn missing_token_is_401_with_a_bearer_challenge() {
    let stack = Stack::start().await;

    let answer = stack.send(client().get(stack.nginx.url("/orders"))).await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    // Copied from tokengate's answer by nginx itself: exactly one, no error attribute
    // when no token was sent (RFC 6750 §3.1).
    let challenges = answer.www_authenticate();
    assert_eq!(challenges.len(), 1, "{challenges:?}");
    assert!(challenges[0].starts_with("Bearer"), "{challenges:?}");
    assert!(!challenges[0].contains("error="), "{challenges:?}");
    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn tampered_token_is_401_invalid_token() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;

    let answer = stack
        .send(
            client()
                .get(stack.nginx.url("/orders"))
                .bearer_auth(tampered(&token)),
        )
        .await;

    assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{}", stack.logs());
    let challenges = answer.www_authenticate();
    assert_eq!(challenges, [r#"Bearer error="invalid_token""#]);
    assert_eq!(stack.upstream.requests(), 0);
}

#[tokio::test]
async fn client_sent_identity_headers_never_reach_the_upstream() {
    let stack = Stack::start().await;
    let token = stack.provider.jwt("alice", "read").await;

    let answer = stack
        .send(
            client()
                .get(stack.nginx.url("/orders"))
                .bearer_auth(&token)
                .header("X-Auth-Request-User", "mallory")
                // Underscore spelling: frameworks that map `-` and `_` alike would read
                // it as X-Auth-Request-User. nginx must drop it.
                .header("X_Auth_Request_User", "mallory")
                .header("X-Auth-Request-Email", "mallory@example.com"),
        )
        .await;

    let echo = answer.upstream_echo(|| stack.logs());
    assert_alice(&echo);
    assert_no_header_name_with_underscore(&echo);
    assert!(
        !answer.body.contains("mallory"),
        "a client-sent identity reached the upstream: {}",
        answer.body
    );
}

#[tokio::test]
async fn client_sent_groups_never_fill_in_for_a_token_without_groups() {
    let stack = Stack::start().await;
    // Client `client` carries no user claims: the user is its `sub`, and tokengate sends
    // no email or groups header at all. nginx must still not let the client's own
    // values through in their place.
    let token = stack.provider.jwt("client", "read").await;

    let answer = stack
        .send(
            client()
                .get(stack.nginx.url("/orders"))
                .bearer_auth(&token)
                .header("X-Auth-Request-Groups", "admins")
                .header("X_Auth_Request_Groups", "admins")
                .header("X-Auth-Request-Email", "mallory@example.com"),
        )
        .await;

    let echo = answer.upstream_echo(|| stack.logs());
    assert_no_identity_filled_in(&echo);
    assert_no_header_name_with_underscore(&echo);
    assert!(
        !answer.body.contains("admins") && !answer.body.contains("mallory"),
        "a client-sent identity reached the upstream: {}",
        answer.body
    );
}

#[tokio::test]
async fn stopped_tokengate_fails_closed_with_500() {
    let mut stack = Stack::start().await;
    // A real, valid token: the answer must not depend on what the client holds.
    let token = stack.provider.jwt("alice", "read").await;
    let request = || client().get(stack.nginx.url("/orders")).bearer_auth(&token);
    let before = stack.send(request()).await;
    assert_eq!(before.status, StatusCode::OK, "{}", stack.logs());

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

#[tokio::test]
async fn opaque_token_is_introspected_then_refused_once_revoked() {
    let stack = Stack::start().await;
    let token = stack.provider.opaque("alice", "read").await;
    let request = || client().get(stack.nginx.url("/orders")).bearer_auth(&token);

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
