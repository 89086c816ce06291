//! Test harness: `spawn_app()` starting the real application on port 0 against the
//! test kit's in-process issuer (re-exported here, so every test reads `helpers::*`).

use prometheus::Registry;
use tokengate::config::{RuleSettings, Settings};
use tokengate::listener::BoundAddress;
use tokengate::startup::Application;

pub use testkit::issuer::*;

/// A running application and a client for it.
pub struct TestApp {
    pub address: String,
    pub admin_address: String,
    /// The gRPC listener, when `grpc_listen` is set.
    pub grpc: Option<BoundAddress>,
    pub registry: Registry,
    pub client: reqwest::Client,
}

impl TestApp {
    pub async fn auth_with_token(&self, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/auth", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("request to /auth")
    }

    /// `/auth?<query>` with `token`: the per-route policy of the auth URL.
    pub async fn auth_query(&self, query: &str, token: &str) -> reqwest::Response {
        self.client
            .get(format!("{}/auth?{query}", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("request to /auth")
    }

    /// Decisions counted so far with this denial reason.
    pub fn decisions_with_reason(&self, reason: &str) -> f64 {
        counter(
            &self.registry,
            "tokengate_decisions_total",
            &[("reason", reason)],
        )
    }

    pub async fn auth_without_token(&self) -> reqwest::Response {
        self.client
            .get(format!("{}/auth", self.address))
            .send()
            .await
            .expect("request to /auth")
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.admin_address))
            .send()
            .await
            .expect("admin request")
    }
}

/// Settings for one issuer at `issuer_url`, on port 0. `proxy_headers: auto`, which any
/// config with route rules must choose explicitly, lets each test speak for whichever
/// proxy it plays.
pub fn settings_for(issuer_url: &str) -> Settings {
    Settings::from_yaml(&format!(
        r#"
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
workers: 1
proxy_headers: auto
issuers:
  - issuer: "{issuer_url}"
    audiences: ["{AUDIENCE}"]
    algorithms: [RS256, PS256, ES256, EdDSA]
http_client:
  connect_timeout: 1s
  timeout: 2s
"#
    ))
    .expect("test settings")
}

/// Starts the application against `issuer`, after `customize` adjusts the settings.
pub async fn spawn_app_with(issuer: &TestIssuer, customize: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = settings_for(issuer.url());
    customize(&mut settings);
    spawn_settings(settings).await
}

pub async fn spawn_app(issuer: &TestIssuer) -> TestApp {
    spawn_app_with(issuer, |_| {}).await
}

pub async fn spawn_settings(settings: Settings) -> TestApp {
    let registry = Registry::new();
    let application = Application::build_with_registry(settings, registry.clone())
        .await
        .expect("application builds");
    let address = format!("http://127.0.0.1:{}", application.port());
    let admin_address = format!("http://127.0.0.1:{}", application.admin_port());
    let grpc = application.grpc_address().cloned();
    tokio::spawn(application.run_until_stopped());
    TestApp {
        address,
        admin_address,
        grpc,
        registry,
        client: reqwest::Client::new(),
    }
}

/// Value of a counter series in the registry, 0 when absent.
pub fn counter(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> f64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .filter(|metric| {
            labels.iter().all(|(key, value)| {
                metric
                    .get_label()
                    .iter()
                    .any(|pair| pair.name() == *key && pair.value() == *value)
            })
        })
        .map(|metric| metric.get_counter().get_value())
        .sum()
}

/// Asserts a 401 with `error="invalid_token"` and the fixed body.
pub async fn assert_invalid_token(response: reqwest::Response) {
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers()["www-authenticate"],
        r#"Bearer error="invalid_token""#
    );
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"error":"invalid_token"}"#
    );
}

/// A rule on these paths, for a struct update that says what it does.
pub fn on_paths(paths: &[&str]) -> RuleSettings {
    RuleSettings {
        paths: paths.iter().map(|path| path.to_string()).collect(),
        ..RuleSettings::default()
    }
}

/// A rule on these hosts, for a struct update that says what it does.
pub fn on_hosts(hosts: &[&str]) -> RuleSettings {
    RuleSettings {
        hosts: hosts.iter().map(|host| host.to_string()).collect(),
        ..RuleSettings::default()
    }
}

/// Rules that make the original request observable: `/admin` is denied and `/public` is
/// anonymous, so the answer says which path tokengate understood.
pub fn admin_denied_public_open() -> Vec<RuleSettings> {
    vec![
        RuleSettings {
            deny: true,
            ..on_paths(&["/admin"])
        },
        RuleSettings {
            allow_anonymous: true,
            ..on_paths(&["/public"])
        },
    ]
}
