//! The shipped Kubernetes config (`deploy/kubernetes/base/tokengate.yaml`) on the real
//! binary, as a pod runs it: alive but not ready while its issuer is unreachable; ready
//! once the issuer's keys are loaded, answering, and serving every metric the shipped
//! Grafana dashboard queries; on SIGTERM not ready at once, still answering during
//! `shutdown.drain_delay`, and gone within `shutdown.grace`.
//!
//! Only what a test must change is rewritten: the listen addresses (free loopback
//! ports), the issuer URL (the test issuer) and the client secret's path. The Deployment's
//! security context is checked offline by `scripts/check_deploy.py`, which also runs the
//! image's binary as its user 65532 (`--check-config`).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use regex::Regex;
use serde_json::Value;
use tokengate::config::Settings;

use crate::helpers::*;
use crate::process::{free_port, wait_status, Child, Launch};

const BASE_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/kubernetes/base/tokengate.yaml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/grafana/tokengate-dashboard.json"
);
/// How long a start-up may take before the test gives up (a debug build on a busy
/// machine); the polling ends as soon as the answer comes.
const START: Duration = Duration::from_secs(30);

/// `text` with the value of the one line whose key is `key` (after its indentation,
/// `- ` included) replaced by `value`.
fn replace_value(text: &str, key: &str, value: &str) -> String {
    let mut found = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let indented = line.trim_start();
            let indent = &line[..line.len() - indented.len()];
            if indented
                .strip_prefix(key)
                .is_some_and(|rest| rest.starts_with(": "))
            {
                found += 1;
                format!("{indent}{key}: {value}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(found, 1, "`{key}:` once in {BASE_CONFIG}");
    lines.join("\n") + "\n"
}

/// The shipped binary with the shipped config, pointed at `issuer_url`.
struct Pod {
    child: Child,
    auth: String,
    admin: String,
    settings: Settings,
    client: reqwest::Client,
}

impl Pod {
    fn start(name: &str, issuer_url: &str) -> Pod {
        let launch = Launch::new(&format!("deploy-{name}"));
        // The Secret `tokengate-client-secret`, as the pod mounts it.
        let secret = launch.dir.join("client-secret");
        std::fs::write(&secret, INTROSPECTION_SECRET).unwrap();
        let mut config = std::fs::read_to_string(BASE_CONFIG).expect("the shipped config");
        for (key, value) in [
            ("listen", format!("127.0.0.1:{}", launch.port)),
            ("admin_listen", format!("127.0.0.1:{}", launch.admin_port)),
            ("- issuer", issuer_url.to_owned()),
            ("client_secret_file", secret.display().to_string()),
        ] {
            config = replace_value(&config, key, &value);
        }
        Pod {
            child: launch.spawn(
                Path::new(env!("CARGO_BIN_EXE_tokengate")),
                &config,
                Stdio::null(),
                Stdio::inherit(),
            ),
            auth: launch.url(""),
            admin: launch.admin_url(""),
            settings: Settings::from_yaml(&config).expect("the shipped config parses"),
            client: reqwest::Client::new(),
        }
    }

    async fn status(&self, url: String, token: Option<&str>) -> u16 {
        let mut request = self
            .client
            .get(url)
            // What ingress-nginx sends (the config's proxy_headers).
            .header("x-original-url", "https://shop.example.com/orders/7")
            .header("x-original-method", "GET");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
            .send()
            .await
            .expect("tokengate answers")
            .status()
            .as_u16()
    }
}

/// Every metric name the dashboard's queries use.
fn dashboard_metrics() -> Vec<String> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).expect("the dashboard"))
            .expect("the dashboard is JSON");
    let name = Regex::new(r"\b(?:tokengate|process)_[a-z0-9_]+\b").unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    // Rows hold their collapsed panels.
    let nested = panels.iter().flat_map(|panel| {
        panel["panels"]
            .as_array()
            .map(|panels| panels.iter())
            .into_iter()
            .flatten()
    });
    let mut names: Vec<String> = panels
        .iter()
        .chain(nested)
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_owned))
        .flat_map(|expr| {
            name.find_iter(&expr)
                .map(|found| found.as_str().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test]
async fn shipped_kubernetes_config_is_alive_but_not_ready_while_the_issuer_is_unreachable() {
    // Nothing listens on this port.
    let closed = free_port();
    let pod = Pod::start(
        "unreachable",
        &format!("http://127.0.0.1:{closed}/realms/main"),
    );

    assert!(
        wait_status(&pod.client, &format!("{}/healthz", pod.admin), 200, START).await,
        "/healthz answers 200 (the liveness probe)"
    );
    assert_eq!(
        pod.status(format!("{}/readyz", pod.admin), None).await,
        503,
        "not ready without the issuer's keys"
    );
    // A missing token needs no keys: a plain 401, never a pass.
    assert_eq!(pod.status(format!("{}/auth", pod.auth), None).await, 401);
}

#[tokio::test]
async fn shipped_kubernetes_config_serves_then_drains_on_sigterm() {
    let issuer = TestIssuer::start().await;
    let mut pod = Pod::start("reachable", issuer.url());
    let readyz = format!("{}/readyz", pod.admin);
    let (auth, ext_authz) = (
        format!("{}/auth", pod.auth),
        format!("{}/ext-authz/orders", pod.auth),
    );
    assert!(
        wait_status(&pod.client, &readyz, 200, START).await,
        "/readyz answers 200 once the issuer's keys are loaded"
    );

    // The config introspects every JWT (introspect_jwts): a valid JWT that the issuer
    // does not call active is refused, one it calls active passes.
    let token = issuer.token();
    assert_eq!(pod.status(auth.clone(), Some(&token)).await, 401);
    let mut claims = issuer.claims();
    claims["sub"] = "user-active".into();
    let active = issuer.sign(&claims);
    issuer.set_answer(&active, issuer.active_answer());
    assert_eq!(pod.status(auth.clone(), Some(&active)).await, 202);
    assert_eq!(pod.status(auth.clone(), None).await, 401);
    assert_eq!(pod.status(auth.clone(), Some("not-a-jwt")).await, 401);
    assert_eq!(pod.status(ext_authz.clone(), None).await, 401);
    assert_eq!(pod.status(ext_authz, Some(&active)).await, 200);

    let exposition = pod
        .client
        .get(format!("{}/metrics", pod.admin))
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .unwrap();
    let served: Vec<&str> = exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let wanted = dashboard_metrics();
    assert!(wanted.len() >= 10, "the dashboard queries {wanted:?}");
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|name| !served.contains(&name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which the binary does not serve"
    );

    let shutdown = pod.settings.shutdown.clone();
    pod.child.terminate();
    assert!(
        wait_status(&pod.client, &readyz, 503, shutdown.drain_delay).await,
        "/readyz turns 503 at once on SIGTERM"
    );
    // Still answering while the endpoints catch up (shutdown.drain_delay).
    assert_eq!(pod.status(auth, Some(&active)).await, 202);
    let exit = pod.child.wait_exit(shutdown.grace).await;
    assert_eq!(
        exit.and_then(|status| status.code()),
        Some(0),
        "exits with 0 within shutdown.grace ({:?})",
        shutdown.grace
    );
}
