//! Keys fetched over HTTPS from an issuer whose certificate a private CA signed: the
//! system roots do not trust it, `http_client.ca_file` does.

use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use jsonwebtoken::Algorithm;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokengate::demo::{jwks_document, SigningKey};
use tokengate::verify::cache::unix_now;

use crate::helpers::*;

/// An OpenID issuer on `https://127.0.0.1:<port>` with a certificate from its own CA.
struct TlsIssuer {
    url: String,
    /// The private CA, PEM: what an operator would put in `http_client.ca_file`.
    ca_pem: String,
    key: SigningKey,
}

impl TlsIssuer {
    fn start() -> Self {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let server_certificate = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&server_key, &*ca)
            .expect("server certificate");
        let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![server_certificate.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .expect("TLS config");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!(
            "https://127.0.0.1:{}",
            listener.local_addr().unwrap().port()
        );
        let key = SigningKey::generate(Algorithm::RS256, "tls-k1");
        let jwks = jwks_document([&key]);
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks")});
        let server = HttpServer::new(move || {
            let (jwks, discovery) = (jwks.clone(), discovery.clone());
            App::new()
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(move || json_answer(discovery.clone())),
                )
                .route("/jwks", web::get().to(move || json_answer(jwks.clone())))
        })
        .workers(1)
        .disable_signals()
        .listen_rustls_0_23(listener, tls)
        .expect("listen")
        .run();
        tokio::spawn(server);
        Self {
            url,
            ca_pem: ca.pem(),
            key,
        }
    }

    fn token(&self) -> String {
        let now = unix_now();
        self.key.sign(&json!({
            "iss": self.url, "sub": "user-1", "aud": AUDIENCE, "iat": now, "exp": now + 600,
            "preferred_username": "alice",
        }))
    }
}

async fn json_answer(body: Value) -> HttpResponse {
    HttpResponse::Ok().json(body)
}

#[tokio::test]
async fn issuer_behind_a_private_ca_is_trusted_through_ca_file_only() {
    let issuer = TlsIssuer::start();

    // The system roots do not know this CA: no keys, not ready, and a token gets 503.
    let untrusting = spawn_settings(settings_for(&issuer.url)).await;
    assert_eq!(untrusting.admin_get("/readyz").await.status(), 503);
    assert_eq!(
        untrusting.auth_with_token(&issuer.token()).await.status(),
        503
    );

    let ca_file =
        std::env::temp_dir().join(format!("tokengate-test-ca-{}.pem", std::process::id()));
    std::fs::write(&ca_file, &issuer.ca_pem).expect("CA file");
    let mut settings = settings_for(&issuer.url);
    settings.http_client.ca_file = Some(ca_file);
    let trusting = spawn_settings(settings).await;
    assert_eq!(trusting.admin_get("/readyz").await.status(), 200);
    let response = trusting.auth_with_token(&issuer.token()).await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-auth-request-user"], "alice");
}
