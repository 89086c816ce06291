//! Test harness: an in-process issuer whose keys the test controls, and `spawn_app()`
//! starting the real application on port 0 against it.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::{web, App, HttpResponse, HttpServer};
use jsonwebtoken::Algorithm;
use prometheus::Registry;
use serde_json::{json, Value};
use tokengate::config::Settings;
use tokengate::demo::{jwks_document, SigningKey};
use tokengate::startup::Application;
use tokengate::verify::cache::unix_now;

pub const AUDIENCE: &str = "orders-api";

/// RSA key generation is slow in debug builds: share a few keys across tests.
pub fn rsa_key(kid: &str) -> Arc<SigningKey> {
    static KEYS: OnceLock<Mutex<Vec<Arc<SigningKey>>>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| Mutex::new(Vec::new()));
    let mut keys = keys.lock().unwrap();
    if let Some(key) = keys.iter().find(|key| key.kid == kid) {
        return key.clone();
    }
    let key = Arc::new(SigningKey::generate(Algorithm::RS256, kid));
    keys.push(key.clone());
    key
}

/// What the test issuer serves, and what it has seen.
pub struct IssuerState {
    pub url: String,
    /// Keys published in the JWKS.
    pub keys: Mutex<Vec<Arc<SigningKey>>>,
    /// `issuer` in the discovery document (normally `url`).
    pub discovery_issuer: Mutex<Option<String>>,
    /// When false, every endpoint answers 503.
    pub up: AtomicBool,
    pub jwks_fetches: AtomicUsize,
    pub discovery_fetches: AtomicUsize,
}

pub struct TestIssuer {
    pub state: Arc<IssuerState>,
}

impl TestIssuer {
    /// Starts an issuer publishing one RS256 key `k1`.
    pub async fn start() -> TestIssuer {
        Self::start_with_keys(vec![rsa_key("k1")]).await
    }

    pub async fn start_with_keys(keys: Vec<Arc<SigningKey>>) -> TestIssuer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(IssuerState {
            url,
            keys: Mutex::new(keys),
            discovery_issuer: Mutex::new(None),
            up: AtomicBool::new(true),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(discovery),
                )
                .route("/jwks", web::get().to(jwks))
        })
        .workers(1)
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        TestIssuer { state }
    }

    pub fn url(&self) -> &str {
        &self.state.url
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn set_up(&self, up: bool) {
        self.state.up.store(up, Ordering::SeqCst);
    }

    pub fn publish(&self, keys: Vec<Arc<SigningKey>>) {
        *self.state.keys.lock().unwrap() = keys;
    }

    /// Standard claims for this issuer, valid for ten minutes.
    pub fn claims(&self) -> Value {
        let now = unix_now();
        json!({
            "iss": self.url(),
            "sub": "user-1",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            "preferred_username": "alice",
            "email": "alice@example.com",
            "groups": ["admins", "developers"],
        })
    }

    /// A valid token signed by `k1`.
    pub fn token(&self) -> String {
        rsa_key("k1").sign(&self.claims())
    }
}

async fn discovery(state: web::Data<IssuerState>) -> HttpResponse {
    state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let issuer = state
        .discovery_issuer
        .lock()
        .unwrap()
        .clone()
        .unwrap_or_else(|| state.url.clone());
    HttpResponse::Ok().json(json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/jwks", state.url),
    }))
}

async fn jwks(state: web::Data<IssuerState>) -> HttpResponse {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let keys = state.keys.lock().unwrap().clone();
    HttpResponse::Ok().json(jwks_document(keys.iter().map(|key| key.as_ref())))
}

/// A running application and a client for it.
pub struct TestApp {
    pub address: String,
    pub admin_address: String,
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

/// Settings for one issuer at `issuer_url`, on port 0.
pub fn settings_for(issuer_url: &str) -> Settings {
    Settings::from_yaml(&format!(
        r#"
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
workers: 1
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
    tokio::spawn(application.run_until_stopped());
    TestApp {
        address,
        admin_address,
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
