//! The signature algorithms tokengate verifies, as one closed enum: every place that
//! needs to know an algorithm (the configured allow-list, a JWK's family, the key
//! parameters, a token's header) matches on it exhaustively, so a new algorithm cannot
//! fall through to another's verification.
//!
//! Only asymmetric algorithms exist here. `none` is no algorithm, and an HMAC algorithm
//! would let a token use a published public key as its secret (the key-confusion attack).

use serde::Deserialize;

/// A JWS algorithm we verify (RFC 7518 §3.1, RFC 8037 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// What kind of public key verifies an algorithm: a JWK's `kty` and `crv`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFamily {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl Alg {
    pub const ALL: [Alg; 9] = [
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The algorithm of a JOSE `alg` name: exact and case-sensitive (RFC 7515 §4.1.1).
    pub fn from_name(name: &str) -> Option<Alg> {
        Self::ALL.into_iter().find(|alg| alg.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn family(self) -> KeyFamily {
        match self {
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                KeyFamily::Rsa
            }
            Alg::ES256 => KeyFamily::EcP256,
            Alg::ES384 => KeyFamily::EcP384,
            Alg::EdDSA => KeyFamily::Ed25519,
        }
    }

    /// aws-lc-rs parameters of an RSA algorithm (keys of 2048 bits and up, like our own
    /// minimum); `None` for the others.
    pub fn rsa_parameters(self) -> Option<&'static aws_lc_rs::signature::RsaParameters> {
        use aws_lc_rs::signature as lc;
        match self {
            Alg::RS256 => Some(&lc::RSA_PKCS1_2048_8192_SHA256),
            Alg::RS384 => Some(&lc::RSA_PKCS1_2048_8192_SHA384),
            Alg::RS512 => Some(&lc::RSA_PKCS1_2048_8192_SHA512),
            Alg::PS256 => Some(&lc::RSA_PSS_2048_8192_SHA256),
            Alg::PS384 => Some(&lc::RSA_PSS_2048_8192_SHA384),
            Alg::PS512 => Some(&lc::RSA_PSS_2048_8192_SHA512),
            Alg::ES256 | Alg::ES384 | Alg::EdDSA => None,
        }
    }
}

impl KeyFamily {
    /// The family of a JWK, from its `kty` and `crv`; `None` for anything we do not verify
    /// with (`oct` secrets included).
    pub fn of_jwk(kty: &str, crv: &str) -> Option<KeyFamily> {
        match (kty, crv) {
            ("RSA", _) => Some(KeyFamily::Rsa),
            ("EC", "P-256") => Some(KeyFamily::EcP256),
            ("EC", "P-384") => Some(KeyFamily::EcP384),
            ("OKP", "Ed25519") => Some(KeyFamily::Ed25519),
            _ => None,
        }
    }

    /// The algorithms a key of this family may verify.
    pub fn algorithms(self) -> &'static [Alg] {
        match self {
            KeyFamily::Rsa => &[
                Alg::RS256,
                Alg::RS384,
                Alg::RS512,
                Alg::PS256,
                Alg::PS384,
                Alg::PS512,
            ],
            KeyFamily::EcP256 => &[Alg::ES256],
            KeyFamily::EcP384 => &[Alg::ES384],
            KeyFamily::Ed25519 => &[Alg::EdDSA],
        }
    }
}

/// A token header's `alg`: one we verify, or a symmetric one, named only to be refused as
/// not allowed. Any other value (`none` included) makes the header malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderAlg {
    Supported(Alg),
    Symmetric,
}

impl<'de> Deserialize<'de> for HeaderAlg {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        match Alg::from_name(&name) {
            Some(alg) => Ok(HeaderAlg::Supported(alg)),
            None if matches!(name.as_ref(), "HS256" | "HS384" | "HS512") => {
                Ok(HeaderAlg::Symmetric)
            }
            None => Err(serde::de::Error::custom("unknown JWS algorithm")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_exactly() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
            assert!(alg.family().algorithms().contains(&alg));
        }
        for name in ["none", "None", "rs256", "HS256", "ES512", ""] {
            assert_eq!(Alg::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn only_rsa_algorithms_have_rsa_parameters() {
        for alg in Alg::ALL {
            assert_eq!(
                alg.rsa_parameters().is_some(),
                alg.family() == KeyFamily::Rsa,
                "{alg:?}"
            );
        }
    }

    #[test]
    fn header_algs_are_supported_symmetric_or_malformed() {
        let parse = |name: &str| serde_json::from_value::<HeaderAlg>(serde_json::json!(name));
        assert_eq!(parse("ES256").unwrap(), HeaderAlg::Supported(Alg::ES256));
        assert_eq!(parse("HS256").unwrap(), HeaderAlg::Symmetric);
        assert!(parse("none").is_err());
        assert!(parse("RS1").is_err());
    }
}
