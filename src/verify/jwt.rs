//! JWT validation against one issuer: header checks, key choice, signature and claims.

use std::borrow::Cow;
use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::{Error as JwtError, ErrorKind};
use jsonwebtoken::{Algorithm, Header, Validation};
use serde::Deserialize;
use serde_json::Value;

use super::jwks::{KeyStore, VerifyingKey};
use crate::config::IssuerSettings;
use crate::error::{AuthError, Reason};

/// One configured issuer with everything a verification needs, built once at start-up.
pub struct Issuer {
    pub index: usize,
    pub name: String,
    pub issuer: String,
    /// One `Validation` per allowed algorithm, so nothing is built per request.
    validations: Vec<(Algorithm, Validation)>,
    /// Normalised required `typ` (lower case, without `application/`).
    required_typ: Option<String>,
    pub keys: Arc<KeyStore>,
}

/// Claims of a verified token.
pub struct VerifiedClaims {
    pub claims: Value,
    pub expires_at: u64,
}

impl Issuer {
    pub fn new(
        index: usize,
        settings: &IssuerSettings,
        algorithms: &[Algorithm],
        keys: Arc<KeyStore>,
    ) -> Self {
        let issuer = settings.issuer.clone();
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut validation = Validation::new(*alg);
                validation.set_issuer(&[&issuer]);
                validation.set_audience(&settings.audiences);
                validation.set_required_spec_claims(&["exp", "iss", "aud"]);
                validation.leeway = settings.leeway.as_secs();
                validation.validate_exp = true;
                validation.validate_nbf = true;
                (*alg, validation)
            })
            .collect();
        Self {
            index,
            name: settings.display_name().to_owned(),
            issuer,
            validations,
            required_typ: settings.required_typ.as_deref().map(normalize_typ),
            keys,
        }
    }

    fn validation(&self, alg: Algorithm) -> Option<&Validation> {
        self.validations
            .iter()
            .find(|(allowed, _)| *allowed == alg)
            .map(|(_, validation)| validation)
    }

    /// Verifies a token whose `iss` named this issuer.
    pub async fn verify(&self, token: &str, header: &Header) -> Result<VerifiedClaims, AuthError> {
        // The allow-list is checked before any key is looked at: a token cannot choose
        // `none`, an HMAC algorithm, or anything the operator did not allow.
        let validation = self
            .validation(header.alg)
            .ok_or(Reason::AlgorithmNotAllowed)?;
        if let Some(required) = &self.required_typ {
            // RFC 9068 §4: access tokens must carry `typ: at+jwt`, which stops an ID
            // token of the same issuer from being replayed as an access token.
            let matches = header
                .typ
                .as_deref()
                .is_some_and(|typ| normalize_typ(typ) == *required);
            if !matches {
                return Err(Reason::WrongTokenType.into());
            }
        }
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: we understand no extension, so a token that marks one as
            // critical must be refused.
            return Err(Reason::MalformedToken.into());
        }
        let keys = self.keys.current().ok_or(Reason::KeysUnavailable)?;
        match header.kid.as_deref() {
            Some(kid) => {
                let key = match keys.get(kid) {
                    Some(key) => key.clone(),
                    None => self
                        .keys
                        .find_after_refetch(kid)
                        .await
                        .ok_or(Reason::UnknownKey)?,
                };
                decode_with(token, &key, header.alg, validation)
            }
            None => {
                // No `kid`: try the keys that fit the algorithm (at most the JWKS size).
                let mut last = AuthError::new(Reason::UnknownKey);
                for key in keys.candidates(header.alg) {
                    match decode_with(token, key, header.alg, validation) {
                        Err(error) if error.reason == Reason::BadSignature => last = error,
                        other => return other,
                    }
                }
                Err(last)
            }
        }
    }
}

fn decode_with(
    token: &str,
    key: &VerifyingKey,
    alg: Algorithm,
    validation: &Validation,
) -> Result<VerifiedClaims, AuthError> {
    if !key.allows(alg) {
        // A key verifies only its own kty/alg: an RSA key is never an HMAC secret.
        return Err(Reason::AlgorithmNotAllowed.into());
    }
    let data = jsonwebtoken::decode::<Value>(token, &key.key, validation).map_err(denial)?;
    let expires_at = data
        .claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or(Reason::InvalidClaims)?;
    Ok(VerifiedClaims {
        claims: data.claims,
        expires_at,
    })
}

/// Maps the library's error to our closed set of reasons, keeping it as the source.
fn denial(error: JwtError) -> AuthError {
    let reason = match error.kind() {
        ErrorKind::InvalidSignature => Reason::BadSignature,
        ErrorKind::ExpiredSignature => Reason::Expired,
        ErrorKind::ImmatureSignature => Reason::NotYetValid,
        ErrorKind::InvalidAudience => Reason::WrongAudience,
        ErrorKind::InvalidIssuer => Reason::UnknownIssuer,
        ErrorKind::InvalidAlgorithm => Reason::AlgorithmNotAllowed,
        ErrorKind::MissingRequiredClaim(_) | ErrorKind::InvalidClaimFormat(_) => {
            Reason::InvalidClaims
        }
        _ => Reason::MalformedToken,
    };
    AuthError::with_source(reason, error)
}

/// `at+jwt`, `AT+JWT` and `application/at+jwt` are the same type (RFC 7515 §4.1.9).
fn normalize_typ(typ: &str) -> String {
    let lower = typ.trim().to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => lower,
    }
}

/// Reads `iss` from the unverified payload, only to choose which issuer's keys to verify
/// with. Nothing is fetched from it, and it must be a single string: an array `iss` could
/// otherwise match loosely.
pub fn peek_issuer(token: &str) -> Result<String, AuthError> {
    #[derive(Deserialize)]
    struct IssuerOnly<'a> {
        #[serde(borrow)]
        iss: Option<Cow<'a, str>>,
    }
    let payload = token.split('.').nth(1).ok_or(Reason::MalformedToken)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| AuthError::with_source(Reason::MalformedToken, e))?;
    let claims: IssuerOnly = serde_json::from_slice(&json)
        .map_err(|e| AuthError::with_source(Reason::MalformedToken, e))?;
    claims
        .iss
        .map(Cow::into_owned)
        .ok_or_else(|| Reason::UnknownIssuer.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_normalisation() {
        assert_eq!(normalize_typ("application/AT+JWT"), "at+jwt");
        assert_eq!(normalize_typ("at+jwt"), "at+jwt");
    }

    #[test]
    fn array_iss_is_malformed() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"iss":["a","b"]}"#);
        let token = format!("e30.{payload}.c2ln");
        assert_eq!(
            peek_issuer(&token).unwrap_err().reason,
            Reason::MalformedToken
        );
    }

    #[test]
    fn missing_iss_is_unknown_issuer() {
        let payload = URL_SAFE_NO_PAD.encode(r#"{"sub":"a"}"#);
        let token = format!("e30.{payload}.c2ln");
        assert_eq!(
            peek_issuer(&token).unwrap_err().reason,
            Reason::UnknownIssuer
        );
    }
}
