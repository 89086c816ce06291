//! An in-process OpenID issuer whose keys and introspection answers a test controls:
//! discovery, JWKS and an RFC 7662 endpoint on a free loopback port, with counters of
//! what it served. Also the shared signing keys and a signer for tokens no JWT library
//! would produce, and [`sign_many`] for benchmarks that need thousands of tokens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokengate::demo::{jwks_document, SigningKey};

use crate::tls::PrivateCa;
use tokengate::verify::cache::unix_now;

pub const AUDIENCE: &str = "orders-api";
/// The client id and secret the test issuer's introspection endpoint accepts. The secret
/// has the characters that RFC 6749 §2.3.1's form-urlencoding exists for.
pub const INTROSPECTION_CLIENT_ID: &str = "tokengate";
pub const INTROSPECTION_SECRET: &str = "s3cret: with/odd+chars%é";

/// How the test issuer's introspection endpoint behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionMode {
    /// Answers what the test registered for the token (`active: false` if nothing).
    Answer,
    /// Waits this long, then answers.
    Slow(Duration),
    /// Refuses our client credentials: 401 `invalid_client`.
    RejectClient,
}

/// RSA key generation is slow in debug builds: share a few keys across tests.
pub fn rsa_key(kid: &str) -> Arc<SigningKey> {
    shared_key(Algorithm::RS256, kid)
}

/// The key of this algorithm and `kid`, generated once per process and shared by every
/// caller that names the same pair.
pub fn shared_key(alg: Algorithm, kid: &str) -> Arc<SigningKey> {
    static KEYS: OnceLock<Mutex<Vec<Arc<SigningKey>>>> = OnceLock::new();
    let keys = KEYS.get_or_init(|| Mutex::new(Vec::new()));
    let mut keys = keys.lock().unwrap();
    if let Some(key) = keys.iter().find(|key| key.kid == kid && key.alg == alg) {
        return key.clone();
    }
    let key = Arc::new(SigningKey::generate(alg, kid));
    keys.push(key.clone());
    key
}

/// Signs `count` tokens on every core; `claims(i)` gives the claims of the i-th. In order.
pub fn sign_many(
    key: &SigningKey,
    count: usize,
    claims: impl Fn(usize) -> Value + Sync,
) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = count.div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let claims = &claims;
                scope.spawn(move || {
                    (t * chunk..((t + 1) * chunk).min(count))
                        .map(|i| key.sign(&claims(i)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().expect("signing thread"))
            .collect()
    })
}

/// Answers introspection for tokens that have no registered answer (`None`: inactive).
pub type AnswerRule = Box<dyn Fn(&str) -> Option<Value> + Send + Sync>;

/// What the test issuer serves, and what it has seen.
pub struct IssuerState {
    pub url: String,
    /// Keys published in the JWKS.
    pub keys: Mutex<Vec<Arc<SigningKey>>>,
    /// Bumped by every `publish`: which key set the JWKS serves.
    pub jwks_generation: AtomicUsize,
    /// When each generation of the JWKS was first served, by generation.
    pub jwks_first_served: Mutex<HashMap<usize, Instant>>,
    /// Until then every endpoint holds its requests, as a hung issuer does.
    pub hold_until: Mutex<Option<Instant>>,
    /// When set, the JWKS served instead of `keys`' (for odd documents: keys without a
    /// `kid`, a `kid` reused for other material, keys of a [`RawSigner`]).
    pub jwks_override: Mutex<Option<Value>>,
    /// `issuer` in the discovery document (normally `url`).
    pub discovery_issuer: Mutex<Option<String>>,
    /// When false, every endpoint answers 503.
    pub up: AtomicBool,
    /// When false, discovery names no `introspection_endpoint`.
    pub advertise_introspection: AtomicBool,
    pub jwks_fetches: AtomicUsize,
    pub discovery_fetches: AtomicUsize,
    /// Introspection answers by token.
    pub introspection_answers: Mutex<HashMap<String, Value>>,
    /// Introspection answers by token, as raw bodies (for JSON a `Value` cannot hold).
    pub raw_introspection_answers: Mutex<HashMap<String, String>>,
    /// Asked for tokens without a registered answer.
    pub answer_rule: Mutex<Option<AnswerRule>>,
    /// The client id and secret the introspection endpoint accepts.
    pub client: Mutex<(String, String)>,
    pub introspection_mode: Mutex<IntrospectionMode>,
    /// Calls to the introspection endpoint, whatever they were answered.
    pub introspection_calls: AtomicUsize,
    /// How the last accepted introspection call authenticated: `basic` or `post`.
    pub last_client_auth: Mutex<Option<&'static str>>,
}

pub struct TestIssuer {
    pub state: Arc<IssuerState>,
    /// For an issuer started with [`TestIssuer::start_tls`]: its private CA, PEM, as an
    /// operator would put it in `http_client.ca_file`.
    pub ca_pem: Option<String>,
}

impl TestIssuer {
    /// Starts an issuer publishing one RS256 key `k1`.
    pub async fn start() -> TestIssuer {
        Self::start_with_keys(vec![rsa_key("k1")]).await
    }

    pub async fn start_with_keys(keys: Vec<Arc<SigningKey>>) -> TestIssuer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        Self::start_on(listener, keys)
    }

    /// Starts an issuer on `listener` (on the current Tokio runtime), publishing `keys`.
    /// It installs no signal handler: Ctrl-C still ends the program it runs in.
    pub fn start_on(listener: std::net::TcpListener, keys: Vec<Arc<SigningKey>>) -> TestIssuer {
        Self::serve(listener, keys, None)
    }

    /// Starts an issuer on `https://127.0.0.1:<port>`, with a certificate from a private
    /// CA of its own ([`TestIssuer::ca_pem`]), publishing `k1`.
    pub async fn start_tls() -> TestIssuer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let ca = PrivateCa::for_loopback();
        let tls = (ca.server_config(), ca.ca_pem);
        Self::serve(listener, vec![rsa_key("k1")], Some(tls))
    }

    fn serve(
        listener: std::net::TcpListener,
        keys: Vec<Arc<SigningKey>>,
        tls: Option<(rustls::ServerConfig, String)>,
    ) -> TestIssuer {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", listener.local_addr().unwrap());
        let state = Arc::new(IssuerState {
            url,
            keys: Mutex::new(keys),
            jwks_generation: AtomicUsize::new(0),
            jwks_first_served: Mutex::new(HashMap::new()),
            hold_until: Mutex::new(None),
            jwks_override: Mutex::new(None),
            discovery_issuer: Mutex::new(None),
            up: AtomicBool::new(true),
            advertise_introspection: AtomicBool::new(true),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            introspection_answers: Mutex::new(HashMap::new()),
            raw_introspection_answers: Mutex::new(HashMap::new()),
            answer_rule: Mutex::new(None),
            client: Mutex::new((
                INTROSPECTION_CLIENT_ID.to_owned(),
                INTROSPECTION_SECRET.to_owned(),
            )),
            introspection_mode: Mutex::new(IntrospectionMode::Answer),
            introspection_calls: AtomicUsize::new(0),
            last_client_auth: Mutex::new(None),
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
                .route("/introspect", web::post().to(introspect))
        })
        .workers(1)
        .disable_signals();
        let (server, ca_pem) = match tls {
            Some((config, ca_pem)) => (
                server.listen_rustls_0_23(listener, config).unwrap(),
                Some(ca_pem),
            ),
            None => (server.listen(listener).unwrap(), None),
        };
        tokio::spawn(server.run());
        TestIssuer { state, ca_pem }
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

    pub fn set_advertise_introspection(&self, on: bool) {
        self.state
            .advertise_introspection
            .store(on, Ordering::SeqCst);
    }

    /// Serves these keys from now on; returns the new JWKS generation (see
    /// [`TestIssuer::first_served`]).
    pub fn publish(&self, keys: Vec<Arc<SigningKey>>) -> usize {
        let mut published = self.state.keys.lock().unwrap();
        *published = keys;
        *self.state.jwks_override.lock().unwrap() = None;
        self.state.jwks_generation.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// When the JWKS of this generation (0: the keys the issuer started with) was first
    /// served.
    pub fn first_served(&self, generation: usize) -> Option<Instant> {
        self.state
            .jwks_first_served
            .lock()
            .unwrap()
            .get(&generation)
            .copied()
    }

    /// Every endpoint holds the requests it gets until `until`, then answers them: an
    /// issuer that accepts connections and hangs.
    pub fn hold_until(&self, until: Instant) {
        *self.state.hold_until.lock().unwrap() = Some(until);
    }

    /// Asked for every token that has no registered answer.
    pub fn set_answer_rule(&self, rule: impl Fn(&str) -> Option<Value> + Send + Sync + 'static) {
        *self.state.answer_rule.lock().unwrap() = Some(Box::new(rule));
    }

    /// The client id and secret the introspection endpoint accepts from now on.
    pub fn set_client(&self, id: &str, secret: &str) {
        *self.state.client.lock().unwrap() = (id.to_owned(), secret.to_owned());
    }

    /// Serves a JWKS of exactly these JWKs from now on (until the next `publish`).
    pub fn publish_jwks(&self, jwks: Vec<Value>) {
        *self.state.jwks_override.lock().unwrap() = Some(json!({ "keys": jwks }));
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
        self.sign(&self.claims())
    }

    /// `claims` signed by `k1`, the key the issuer starts with.
    pub fn sign(&self, claims: &Value) -> String {
        rsa_key("k1").sign(claims)
    }

    /// A token signed by `k1` over [`TestIssuer::claims`] after `edit` changed them.
    pub fn token_with(&self, edit: impl FnOnce(&mut Value)) -> String {
        let mut claims = self.claims();
        edit(&mut claims);
        self.sign(&claims)
    }

    /// URL of the RFC 7662 introspection endpoint (also named by discovery).
    pub fn introspection_endpoint(&self) -> String {
        format!("{}/introspect", self.url())
    }

    /// An `active: true` introspection answer for this issuer, valid for ten minutes,
    /// with the members a real issuer sends (`username`, not `preferred_username`).
    pub fn active_answer(&self) -> Value {
        let now = unix_now();
        json!({
            "active": true,
            "iss": self.url(),
            "sub": "user-2",
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 600,
            "client_id": "web-app",
            "scope": "openid orders:read",
            "token_type": "Bearer",
            "username": "bob",
            "email": "bob@example.com",
            "groups": ["ops", "support"],
        })
    }

    /// A fresh opaque token that introspects as [`TestIssuer::active_answer`].
    pub fn opaque_token(&self) -> String {
        self.opaque_token_with(self.active_answer())
    }

    /// A fresh opaque token (not JWT-shaped) that introspects as `answer`.
    pub fn opaque_token_with(&self, answer: Value) -> String {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let token = format!(
            "opaque-{}-{}",
            NEXT.fetch_add(1, Ordering::SeqCst),
            URL_SAFE_NO_PAD.encode(unix_now().to_be_bytes())
        );
        self.set_answer(&token, answer);
        token
    }

    /// What introspection answers for `token` from now on.
    pub fn set_answer(&self, token: &str, answer: Value) {
        self.state
            .introspection_answers
            .lock()
            .unwrap()
            .insert(token.to_owned(), answer);
    }

    /// What introspection answers for `token` from now on, as a raw JSON body.
    pub fn set_raw_answer(&self, token: &str, body: &str) {
        self.state
            .raw_introspection_answers
            .lock()
            .unwrap()
            .insert(token.to_owned(), body.to_owned());
    }

    /// Revokes `token`: introspection answers `active: false` from now on.
    pub fn revoke(&self, token: &str) {
        self.set_answer(token, json!({"active": false}));
    }

    pub fn set_introspection_mode(&self, mode: IntrospectionMode) {
        *self.state.introspection_mode.lock().unwrap() = mode;
    }

    pub fn introspection_calls(&self) -> usize {
        self.state.introspection_calls.load(Ordering::SeqCst)
    }

    pub fn last_client_auth(&self) -> Option<&'static str> {
        *self.state.last_client_auth.lock().unwrap()
    }
}

/// Waits out a [`TestIssuer::hold_until`].
async fn held(state: &IssuerState) {
    let until = *state.hold_until.lock().unwrap();
    if let Some(until) = until {
        tokio::time::sleep_until(until.into()).await;
    }
}

async fn discovery(state: web::Data<IssuerState>) -> HttpResponse {
    held(&state).await;
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
    let mut document = json!({
        "issuer": issuer,
        "jwks_uri": format!("{}/jwks", state.url),
    });
    if state.advertise_introspection.load(Ordering::SeqCst) {
        document["introspection_endpoint"] = json!(format!("{}/introspect", state.url));
    }
    HttpResponse::Ok().json(document)
}

/// RFC 7662 §2.1: a form POST with `token`, from an authenticated client.
async fn introspect(
    request: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<IssuerState>,
) -> HttpResponse {
    held(&state).await;
    state.introspection_calls.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let mode = *state.introspection_mode.lock().unwrap();
    if let IntrospectionMode::Slow(delay) = mode {
        tokio::time::sleep(delay).await;
    }
    let client_auth = authenticated_client(&request, &form, &state.client.lock().unwrap());
    if mode == IntrospectionMode::RejectClient || client_auth.is_none() {
        return HttpResponse::Unauthorized()
            .insert_header(("www-authenticate", "Basic"))
            .json(json!({"error": "invalid_client"}));
    }
    *state.last_client_auth.lock().unwrap() = client_auth;
    if form.get("token_type_hint").map(String::as_str) != Some("access_token") {
        return HttpResponse::BadRequest().json(json!({"error": "invalid_request"}));
    }
    let raw = form.get("token").and_then(|token| {
        state
            .raw_introspection_answers
            .lock()
            .unwrap()
            .get(token)
            .cloned()
    });
    if let Some(body) = raw {
        return HttpResponse::Ok()
            .content_type("application/json")
            .body(body);
    }
    let answer = form
        .get("token")
        .and_then(|token| {
            state
                .introspection_answers
                .lock()
                .unwrap()
                .get(token)
                .cloned()
        })
        .or_else(|| {
            let rule = state.answer_rule.lock().unwrap();
            rule.as_ref()?(form.get("token")?)
        })
        .unwrap_or_else(|| json!({"active": false}));
    HttpResponse::Ok().json(answer)
}

/// RFC 6749 §2.3.1: HTTP Basic with form-urlencoded id and secret, or both in the body.
fn authenticated_client(
    request: &HttpRequest,
    form: &HashMap<String, String>,
    (id, secret): &(String, String),
) -> Option<&'static str> {
    let expected = (id.as_str(), secret.as_str());
    if let Some(value) = request.headers().get("authorization") {
        let encoded = value.to_str().ok()?.strip_prefix("Basic ")?;
        let decoded = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
        let (id, secret) = decoded.split_once(':')?;
        let pairs: HashMap<String, String> =
            url::form_urlencoded::parse(format!("id={id}&secret={secret}").as_bytes())
                .into_owned()
                .collect();
        let presented = (pairs.get("id")?.as_str(), pairs.get("secret")?.as_str());
        return (presented == expected).then_some("basic");
    }
    let presented = (
        form.get("client_id")?.as_str(),
        form.get("client_secret")?.as_str(),
    );
    (presented == expected).then_some("post")
}

async fn jwks(state: web::Data<IssuerState>) -> HttpResponse {
    held(&state).await;
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if !state.up.load(Ordering::SeqCst) {
        return HttpResponse::ServiceUnavailable().finish();
    }
    if let Some(document) = state.jwks_override.lock().unwrap().clone() {
        return HttpResponse::Ok().json(document);
    }
    let keys = {
        // Under the keys' lock, so that the generation is the one of these keys.
        let keys = state.keys.lock().unwrap();
        let generation = state.jwks_generation.load(Ordering::SeqCst);
        state
            .jwks_first_served
            .lock()
            .unwrap()
            .entry(generation)
            .or_insert_with(Instant::now);
        keys.clone()
    };
    HttpResponse::Ok().json(jwks_document(keys.iter().map(|key| key.as_ref())))
}

/// The public JWK of `key` without its `kid`, as some issuers publish keys.
pub fn jwk_without_kid(key: &SigningKey) -> Value {
    let mut jwk = key.public_jwk().clone();
    jwk.as_object_mut().unwrap().remove("kid");
    jwk
}

/// Signs `header.payload` given as JSON text, byte for byte: for tokens that a JWT
/// library would never produce, such as a member named twice. An Ed25519 key.
pub struct RawSigner {
    pair: aws_lc_rs::signature::Ed25519KeyPair,
    pub kid: String,
}

impl RawSigner {
    pub fn generate(kid: &str) -> Self {
        Self {
            pair: aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap(),
            kid: kid.to_owned(),
        }
    }

    /// The public JWK, for [`TestIssuer::publish_jwks`].
    pub fn jwk(&self) -> Value {
        use aws_lc_rs::signature::KeyPair;
        json!({
            "kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(self.pair.public_key().as_ref()),
        })
    }

    /// `{"alg":"EdDSA","kid":…}`: the header for this key.
    pub fn header(&self) -> String {
        json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid}).to_string()
    }

    pub fn sign(&self, header: &str, payload: &str) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let signature = self.pair.sign(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}
