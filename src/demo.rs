//! The embedded default behind `tokengate demo`: a small issuer on loopback (discovery,
//! JWKS, a token endpoint minting short-lived RS256 access tokens) and the verifier wired
//! to it. [`SigningKey`] is also what tests and benches sign their tokens with.

use std::sync::Arc;

use actix_web::dev::Server;
use std::collections::HashMap;
use std::sync::Mutex;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SecureRandom;
use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::Settings;
use crate::startup::{Application, StartupError};
use crate::verify::cache::unix_now;
use crate::verify::introspection::basic_authorization;

/// Audience of the demo's access tokens.
pub const DEMO_AUDIENCE: &str = "demo-api";
/// Lifetime of a demo token.
pub const DEMO_TOKEN_TTL_SECS: u64 = 15 * 60;
/// The verifier's credentials at the demo issuer's introspection endpoint.
pub const DEMO_CLIENT_ID: &str = "tokengate-demo";
pub const DEMO_CLIENT_SECRET: &str = "demo-secret";
/// How long the demo verifier trusts an introspection answer: the revocation window.
pub const DEMO_REVOCATION_WINDOW_SECS: u64 = 10;
/// Most opaque tokens the demo issuer remembers.
const MAX_OPAQUE_TOKENS: usize = 10_000;

/// A private signing key with its public JWK.
pub struct SigningKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    public_jwk: Value,
}

impl SigningKey {
    /// Generates a fresh key for `alg` (RS*/PS* → RSA 2048, ES256/ES384, EdDSA → Ed25519).
    pub fn generate(alg: Algorithm, kid: impl Into<String>) -> Self {
        let encoding = match alg {
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .expect("RSA key generation");
                let der = pair.as_der().expect("RSA key encoding");
                EncodingKey::from_rsa_pem(pem("PRIVATE KEY", der.as_ref()).as_bytes())
                    .expect("RSA key import")
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let curve = if alg == Algorithm::ES256 {
                    &ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &ECDSA_P384_SHA384_FIXED_SIGNING
                };
                let pair = EcdsaKeyPair::generate(curve).expect("EC key generation");
                let der = pair.to_pkcs8v1().expect("EC key encoding");
                EncodingKey::from_ec_der(der.as_ref())
            }
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::generate().expect("Ed25519 key generation");
                let der = pair.to_pkcs8v1().expect("Ed25519 key encoding");
                EncodingKey::from_ed_der(der.as_ref())
            }
            _ => panic!("{alg:?} is not an asymmetric signature algorithm"),
        };
        let kid = kid.into();
        let jwk = Jwk::from_encoding_key(&encoding, alg).expect("public JWK");
        let mut public_jwk = serde_json::to_value(jwk).expect("JWK serialisation");
        public_jwk["kid"] = json!(kid);
        public_jwk["use"] = json!("sig");
        Self {
            kid,
            alg,
            encoding,
            public_jwk,
        }
    }

    /// The public half, as published in a JWKS.
    pub fn public_jwk(&self) -> &Value {
        &self.public_jwk
    }

    /// Signs `claims` as an RFC 9068 access token (`typ: at+jwt`) with this key's `kid`.
    pub fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(self.alg);
        header.typ = Some("at+jwt".to_owned());
        header.kid = Some(self.kid.clone());
        self.sign_with_header(&header, claims)
    }

    /// Signs with a caller-built header (tests use it for odd headers).
    pub fn sign_with_header(&self, header: &Header, claims: &Value) -> String {
        jsonwebtoken::encode(header, claims, &self.encoding).expect("signing")
    }
}

/// A JWKS document holding the public halves of `keys`.
pub fn jwks_document<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    json!({ "keys": keys.into_iter().map(SigningKey::public_jwk).collect::<Vec<_>>() })
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut text = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        text.push_str(std::str::from_utf8(line).unwrap_or_default());
        text.push('\n');
    }
    text.push_str(&format!("-----END {label}-----\n"));
    text
}

/// Who a demo token is for.
#[derive(Debug, Deserialize)]
pub struct TokenRequest {
    #[serde(default = "default_user")]
    pub user: String,
    #[serde(default)]
    pub email: Option<String>,
    /// Comma-separated.
    #[serde(default = "default_groups")]
    pub groups: String,
    /// `opaque` for an opaque token (checked by introspection), else a JWT.
    #[serde(default)]
    pub format: Option<String>,
}

fn default_user() -> String {
    "alice".to_owned()
}

fn default_groups() -> String {
    "developers,ops".to_owned()
}

/// The demo issuer's identity, key and opaque tokens.
pub struct DemoIssuer {
    pub url: String,
    key: SigningKey,
    /// Opaque token → (its introspection answer, revoked).
    opaque: Mutex<HashMap<String, (Value, bool)>>,
}

impl DemoIssuer {
    /// Mints an access token with user, email and groups claims: a JWT, or an opaque
    /// token when `format=opaque`.
    pub fn mint(&self, request: &TokenRequest) -> String {
        let claims = self.claims(request);
        if request.format.as_deref() != Some("opaque") {
            return self.key.sign(&claims);
        }
        let token = format!("demo-{}", random_id());
        let mut answer = claims;
        answer["username"] = answer["preferred_username"].take();
        answer["token_type"] = json!("Bearer");
        let mut opaque = self
            .opaque
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = unix_now();
        opaque.retain(|_, (answer, _)| answer["exp"].as_u64().is_some_and(|exp| exp > now));
        if opaque.len() >= MAX_OPAQUE_TOKENS {
            opaque.clear();
        }
        opaque.insert(token.clone(), (answer, false));
        token
    }

    /// RFC 7662 answer for `token`.
    fn introspect(&self, token: &str) -> Value {
        let opaque = self
            .opaque
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match opaque.get(token) {
            Some((answer, false)) if answer["exp"].as_u64().is_some_and(|exp| exp > unix_now()) => {
                let mut answer = answer.clone();
                answer["active"] = json!(true);
                answer
            }
            _ => json!({ "active": false }),
        }
    }

    /// RFC 7009 revocation.
    fn revoke(&self, token: &str) {
        let mut opaque = self
            .opaque
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, revoked)) = opaque.get_mut(token) {
            *revoked = true;
        }
    }

    fn claims(&self, request: &TokenRequest) -> Value {
        let now = unix_now();
        let email = request
            .email
            .clone()
            .unwrap_or_else(|| format!("{}@example.com", request.user));
        let groups: Vec<&str> = request
            .groups
            .split(',')
            .map(str::trim)
            .filter(|group| !group.is_empty())
            .collect();
        json!({
            "iss": self.url,
            "sub": format!("demo-{}", request.user),
            "aud": DEMO_AUDIENCE,
            "iat": now,
            "nbf": now,
            "exp": now + DEMO_TOKEN_TTL_SECS,
            "jti": random_id(),
            "client_id": "demo",
            "scope": "read",
            "preferred_username": request.user,
            "email": email,
            "groups": groups,
        })
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/jwks", self.url),
            "token_endpoint": format!("{}/token", self.url),
            "introspection_endpoint": format!("{}/introspect", self.url),
            "revocation_endpoint": format!("{}/revoke", self.url),
            "id_token_signing_alg_values_supported": ["RS256"],
        })
    }
}

fn random_id() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("system randomness");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Starts the demo issuer on `address` (port 0 picks a free port).
pub fn start_issuer(address: &str) -> std::io::Result<(Arc<DemoIssuer>, Server)> {
    let listener = std::net::TcpListener::bind(address)?;
    let url = format!("http://{}", listener.local_addr()?);
    let issuer = Arc::new(DemoIssuer {
        url,
        key: SigningKey::generate(Algorithm::RS256, "demo-1"),
        opaque: Mutex::new(HashMap::new()),
    });
    let data = web::Data::from(issuer.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route(
                "/.well-known/openid-configuration",
                web::get().to(|issuer: web::Data<DemoIssuer>| async move {
                    HttpResponse::Ok().json(issuer.discovery())
                }),
            )
            .route(
                "/jwks",
                web::get().to(|issuer: web::Data<DemoIssuer>| async move {
                    HttpResponse::Ok()
                        .insert_header(("cache-control", "max-age=300"))
                        .json(jwks_document([&issuer.key]))
                }),
            )
            .route("/token", web::route().to(token_endpoint))
            .route("/introspect", web::post().to(introspection_endpoint))
            .route("/revoke", web::post().to(revocation_endpoint))
    })
    .workers(1)
    .listen(listener)?
    .run();
    Ok((issuer, server))
}

async fn token_endpoint(
    issuer: web::Data<DemoIssuer>,
    request: web::Query<TokenRequest>,
) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({
            "access_token": issuer.mint(&request),
            "token_type": "Bearer",
            "expires_in": DEMO_TOKEN_TTL_SECS,
        }))
}

/// RFC 7662: only the demo verifier's client credentials may introspect.
async fn introspection_endpoint(
    issuer: web::Data<DemoIssuer>,
    request: HttpRequest,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    let expected = basic_authorization(DEMO_CLIENT_ID, DEMO_CLIENT_SECRET);
    let presented = request
        .headers()
        .get(actix_web::http::header::AUTHORIZATION);
    let matches = expected
        .as_ref()
        .zip(presented)
        .is_some_and(|(expected, presented)| expected.as_bytes() == presented.as_bytes());
    if !matches {
        return HttpResponse::Unauthorized().json(json!({ "error": "invalid_client" }));
    }
    let token = form.get("token").map_or("", String::as_str);
    HttpResponse::Ok().json(issuer.introspect(token))
}

/// RFC 7009: anyone holding the token may revoke it.
async fn revocation_endpoint(
    issuer: web::Data<DemoIssuer>,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    if let Some(token) = form.get("token") {
        issuer.revoke(token);
    }
    HttpResponse::Ok().finish()
}

/// Settings of the verifier wired to the demo issuer.
pub fn demo_settings(
    issuer_url: &str,
    listen: &str,
    admin_listen: &str,
) -> Result<Settings, crate::config::ConfigError> {
    let secret_file = demo_secret_file().map_err(|e| {
        crate::config::ConfigError::new("demo", format!("cannot write the demo secret: {e}"))
    })?;
    Settings::from_yaml(&format!(
        r#"
listen: "{listen}"
admin_listen: "{admin_listen}"
workers: 2
issuers:
  - issuer: "{issuer_url}"
    name: demo
    audiences: ["{DEMO_AUDIENCE}"]
    algorithms: [RS256]
    required_typ: at+jwt
    introspection:
      client_id: {DEMO_CLIENT_ID}
      client_secret_file: "{secret}"
      positive_ttl: {DEMO_REVOCATION_WINDOW_SECS}s
      negative_ttl: 2s
token:
  opaque_issuer: demo
shutdown:
  drain_delay: 0s
  grace: 5s
"#,
        secret = secret_file.display(),
    ))
}

/// The demo verifier reads its client secret from a file, like a real deployment.
fn demo_secret_file() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("tokengate-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("client-secret");
    std::fs::write(&path, DEMO_CLIENT_SECRET)?;
    Ok(path)
}

/// `tokengate demo`: issuer + verifier on loopback, and instructions on stdout.
pub async fn run(listen: &str, admin_listen: &str) -> Result<(), StartupError> {
    let (issuer, issuer_server) =
        start_issuer("127.0.0.1:0").map_err(|source| StartupError::Listen {
            address: "127.0.0.1:0 (demo issuer)".to_owned(),
            source,
        })?;
    let issuer_handle = issuer_server.handle();
    let issuer_task = tokio::spawn(issuer_server);
    let settings = demo_settings(&issuer.url, listen, admin_listen)?;
    let application = Application::build(settings).await?;
    let auth_url =
        format!("http://{listen}/auth").replace(":0/", &format!(":{}/", application.port()));
    let admin_url =
        format!("http://{admin_listen}").replace(":0", &format!(":{}", application.admin_port()));
    let request = |format: Option<&str>| TokenRequest {
        user: default_user(),
        email: None,
        groups: default_groups(),
        format: format.map(str::to_owned),
    };
    let token = issuer.mint(&request(None));
    let opaque = issuer.mint(&request(Some("opaque")));
    println!(
        r#"tokengate demo: a demo issuer and the verifier, on loopback.

  issuer    {issuer}   (discovery, /jwks, /token, /introspect, /revoke)
  verifier  {auth_url}
  admin     {admin_url}/readyz  {admin_url}/metrics

A token for alice, valid {minutes} minutes (mint more: curl -s '{issuer}/token?user=bob&groups=dev'):

TOKEN={token}

Try it from another terminal (paste the TOKEN line first):

  curl -i -H "Authorization: Bearer $TOKEN" {auth_url}      # 202 + X-Auth-Request-User/Email/Groups
  curl -i {auth_url}                                        # 401, WWW-Authenticate: Bearer
  curl -i -H "Authorization: Bearer ${{TOKEN}}x" {auth_url}  # 401, error="invalid_token"

An opaque token, checked by RFC 7662 introspection at the issuer:

OPAQUE={opaque}

  curl -i -H "Authorization: Bearer $OPAQUE" {auth_url}     # 202, from the introspection answer
  curl -s -X POST -d "token=$OPAQUE" {issuer}/revoke         # revoke it at the issuer
  sleep {window}; curl -i -H "Authorization: Bearer $OPAQUE" {auth_url}   # 401: the {window} s revocation window is over

Ctrl-C stops it."#,
        window = DEMO_REVOCATION_WINDOW_SECS,
        issuer = issuer.url,
        minutes = DEMO_TOKEN_TTL_SECS / 60,
    );
    let result = application.run_until_stopped().await;
    // The issuer goes after the verifier, which may still be asking it during its drain.
    issuer_handle.stop(true).await;
    let _ = issuer_task.await;
    result.map_err(StartupError::Serve)
}
