//! The real binary: one audit line per decision (and never the token), and a graceful
//! SIGTERM during load.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::*;
use crate::process::{wait_ready, Launch};

#[tokio::test]
async fn audit_lines_and_graceful_sigterm_during_load() {
    let issuer = TestIssuer::start().await;
    issuer.set_introspection_mode(IntrospectionMode::Slow(Duration::from_millis(1500)));
    let launch = Launch::new("lifecycle");
    let secret = launch.dir.join("secret");
    std::fs::write(&secret, INTROSPECTION_SECRET).unwrap();
    let config = format!(
        r#"
{listeners}
workers: 2
issuers:
  - issuer: "{issuer}"
    name: test-idp
    audiences: [{AUDIENCE}]
    introspection:
      client_id: {INTROSPECTION_CLIENT_ID}
      client_secret_file: {secret}
      timeout: 5s
token:
  opaque_issuer: test-idp
log:
  format: json
  filter: info
shutdown:
  drain_delay: 1s
  grace: 10s
"#,
        listeners = launch.listeners(),
        issuer = issuer.url(),
        secret = secret.display(),
    );
    let mut child = launch.spawn(
        Path::new(env!("CARGO_BIN_EXE_tokengate")),
        &config,
        Stdio::piped(),
        Stdio::piped(),
    );
    let client = reqwest::Client::new();
    let auth = launch.url("/auth");
    let readyz = launch.admin_url("/readyz");
    assert!(wait_ready(&client, &readyz).await, "tokengate became ready");

    // Two decisions with known request ids.
    let token = issuer.token();
    let allowed = client
        .get(&auth)
        .bearer_auth(&token)
        .header("x-request-id", "req-allow-1")
        .header("x-original-uri", "/orders/7?secret=query")
        .header("x-original-method", "DELETE")
        .header("x-forwarded-host", "shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(allowed.status(), 202);
    let denied = client
        .get(&auth)
        .bearer_auth(format!("{token}x"))
        .header("x-request-id", "req-deny-1")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), 401);

    // Load: slow introspections in flight when SIGTERM arrives.
    let opaque: Vec<String> = (0..4).map(|_| issuer.opaque_token()).collect();
    let in_flight = join_all(opaque.iter().map(|token| {
        let (client, auth) = (&client, &auth);
        async move {
            client
                .get(auth)
                .bearer_auth(token)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    }));
    let signal = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let status = Command::new("kill")
            .args(["-TERM", &child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let signalled = Instant::now();
        // Readiness turns off at once, while the listener still drains.
        let mut not_ready = false;
        while signalled.elapsed() < Duration::from_millis(900) {
            if client
                .get(&readyz)
                .send()
                .await
                .is_ok_and(|r| r.status() == 503)
            {
                not_ready = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (signalled, not_ready)
    };
    let (statuses, (signalled, not_ready)) = tokio::join!(in_flight, signal);
    assert!(
        not_ready,
        "/readyz must turn 503 as soon as SIGTERM arrives"
    );
    for status in &statuses {
        assert_eq!(
            status.as_ref().ok(),
            Some(&202),
            "in-flight requests are answered: {statuses:?}"
        );
    }

    let exit = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "exits within the grace period"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(exit.code(), Some(0));

    let mut stdout = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let audit: Vec<Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == "tokengate::audit")
        .collect();
    assert_eq!(audit.len(), 6, "one line per decision:\n{stdout}");
    let allow = audit
        .iter()
        .find(|line| line["request_id"] == "req-allow-1")
        .expect("allow line");
    assert_eq!(allow["outcome"], "allow");
    assert_eq!(allow["issuer"], "test-idp");
    assert_eq!(allow["sub"], "user-1");
    assert_eq!(allow["method"], "DELETE");
    assert_eq!(allow["host"], "shop.example.com");
    assert_eq!(allow["path"], "/orders/7");
    assert_eq!(allow["cache_hit"], false);
    assert!(allow["timestamp"].is_string());
    let deny = audit
        .iter()
        .find(|line| line["request_id"] == "req-deny-1")
        .expect("deny line");
    assert_eq!(deny["outcome"], "deny");
    assert_eq!(deny["reason"], "malformed_token");
    assert!(audit
        .iter()
        .all(|line| line["request_id"].as_str().is_some_and(|id| !id.is_empty())));
    for secret in [token.as_str(), "secret=query", INTROSPECTION_SECRET] {
        assert!(!stdout.contains(secret), "logs must never hold {secret:?}");
    }
    for token in &opaque {
        assert!(!stdout.contains(token.as_str()));
    }
}
