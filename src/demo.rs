//! The embedded default behind `tokengate demo`: a small issuer on loopback (discovery,
//! JWKS, a token endpoint minting short-lived RS256 access tokens) and the verifier wired
//! to it. [`SigningKey`] is also what tests and benches sign their tokens with.

use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
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

/// Audience of the demo's access tokens.
pub const DEMO_AUDIENCE: &str = "demo-api";
/// Lifetime of a demo token.
pub const DEMO_TOKEN_TTL_SECS: u64 = 15 * 60;

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
}

fn default_user() -> String {
    "alice".to_owned()
}

fn default_groups() -> String {
    "developers,ops".to_owned()
}

/// The demo issuer's identity and key.
pub struct DemoIssuer {
    pub url: String,
    key: SigningKey,
}

impl DemoIssuer {
    /// Mints an access token with user, email and groups claims.
    pub fn mint(&self, request: &TokenRequest) -> String {
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
        let claims = json!({
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
        });
        self.key.sign(&claims)
    }

    fn discovery(&self) -> Value {
        json!({
            "issuer": self.url,
            "jwks_uri": format!("{}/jwks", self.url),
            "token_endpoint": format!("{}/token", self.url),
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

/// Settings of the verifier wired to the demo issuer.
pub fn demo_settings(
    issuer_url: &str,
    listen: &str,
    admin_listen: &str,
) -> Result<Settings, crate::config::ConfigError> {
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
shutdown:
  drain_delay: 0s
  grace: 5s
"#
    ))
}

/// `tokengate demo`: issuer + verifier on loopback, and instructions on stdout.
pub async fn run(listen: &str, admin_listen: &str) -> Result<(), StartupError> {
    let (issuer, issuer_server) = start_issuer("127.0.0.1:0")?;
    let issuer_task = tokio::spawn(issuer_server);
    let settings = demo_settings(&issuer.url, listen, admin_listen)?;
    let application = Application::build(settings).await?;
    let auth_url =
        format!("http://{listen}/auth").replace(":0/", &format!(":{}/", application.port()));
    let admin_url =
        format!("http://{admin_listen}").replace(":0", &format!(":{}", application.admin_port()));
    let token = issuer.mint(&TokenRequest {
        user: default_user(),
        email: None,
        groups: default_groups(),
    });
    println!(
        r#"tokengate demo: a demo issuer and the verifier, on loopback.

  issuer    {issuer}   (discovery, /jwks, /token)
  verifier  {auth_url}
  admin     {admin_url}/readyz  {admin_url}/metrics

A token for alice, valid {minutes} minutes (mint more: curl -s '{issuer}/token?user=bob&groups=dev'):

TOKEN={token}

Try it from another terminal (paste the TOKEN line first):

  curl -i -H "Authorization: Bearer $TOKEN" {auth_url}      # 202 + X-Auth-Request-User/Email/Groups
  curl -i {auth_url}                                        # 401, WWW-Authenticate: Bearer
  curl -i -H "Authorization: Bearer ${{TOKEN}}x" {auth_url}  # 401, error="invalid_token"

Ctrl-C stops it."#,
        issuer = issuer.url,
        minutes = DEMO_TOKEN_TTL_SECS / 60,
    );
    let result = application.run_until_stopped().await;
    issuer_task.abort();
    result.map_err(StartupError::from)
}
