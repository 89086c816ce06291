//! A private CA and a server certificate it signed, for TLS peers (the issuer, Redis)
//! that the system roots do not trust: only a configured CA bundle reaches them.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA of its own and a certificate for `127.0.0.1` it signed, all PEM.
pub struct PrivateCa {
    /// What an operator puts in a `ca_file`.
    pub ca_pem: String,
    pub certificate_pem: String,
    pub key_pem: String,
    certificate_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl PrivateCa {
    pub fn for_loopback() -> PrivateCa {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let certificate = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("server params")
            .signed_by(&key, &*ca)
            .expect("server certificate");
        PrivateCa {
            ca_pem: ca.pem(),
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
            certificate_der: certificate.der().to_vec(),
            key_der: key.serialize_der(),
        }
    }

    /// A rustls server configuration presenting the certificate.
    pub fn server_config(&self) -> rustls::ServerConfig {
        rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![self.certificate_der.clone().into()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone())),
        )
        .expect("TLS config")
    }
}
