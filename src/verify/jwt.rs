//! JWT validation against one issuer: header checks, key choice, signature and claims.
//!
//! A token is split and decoded once ([`DecodedJwt`]): the header, the claims and the
//! signature are each base64-decoded and parsed a single time, and the signature is
//! checked with a key parsed when the JWKS was loaded. The claim checks follow RFC 7519
//! §4.1 and RFC 9068 §4.

use std::borrow::Cow;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;

use super::alg::{Alg, HeaderAlg};
use super::cache::unix_now;
use super::json;
use super::jwk::VerifyingKey;
use super::jwks::KeyStore;
use crate::config::IssuerSettings;
use crate::error::{AuthError, Reason};

/// The JOSE header members we act on; the others (`jku`, `x5u`, `jwk`, …) are ignored,
/// so nothing a token names is ever fetched or trusted.
#[derive(Debug, Deserialize)]
pub struct JoseHeader {
    pub alg: HeaderAlg,
    pub typ: Option<String>,
    pub kid: Option<String>,
    /// Only its presence matters: we understand no extension.
    crit: Option<IgnoredAny>,
}

/// A JWS compact token, split once and decoded once, not yet verified.
pub struct DecodedJwt<'a> {
    pub header: JoseHeader,
    /// Claims as sent; trusted only after [`JwtRules::verify`] succeeds.
    pub claims: Value,
    /// `header.payload`: what the signature covers.
    signing_input: &'a [u8],
    signature: Vec<u8>,
}

impl<'a> DecodedJwt<'a> {
    /// Splits `header.payload.signature` and decodes each part. Anything that is not
    /// three base64url parts with a JSON header and a JSON object payload, each without
    /// a duplicate member name, is malformed.
    pub fn parse(token: &'a str) -> Result<Self, AuthError> {
        let (signing_input, signature) = token.rsplit_once('.').ok_or(Reason::MalformedToken)?;
        let (header, payload) = signing_input
            .split_once('.')
            .ok_or(Reason::MalformedToken)?;
        // Both parts go through the strict parser: a member named twice (`alg`, `kid`,
        // `sub`, a nested `roles`…) would let another JWT library read another token.
        let malformed = |e| AuthError::with_source(Reason::MalformedToken, e);
        let header = json::from_slice(&base64url(header)?).map_err(malformed)?;
        let header = JoseHeader::deserialize(&header).map_err(malformed)?;
        let claims = json::from_slice(&base64url(payload)?).map_err(malformed)?;
        if !claims.is_object() {
            return Err(Reason::MalformedToken.into());
        }
        Ok(Self {
            header,
            claims,
            signing_input: signing_input.as_bytes(),
            signature: base64url(signature)?,
        })
    }

    /// The unverified `iss`, only to choose which issuer's keys to verify with. Nothing is
    /// fetched from it, and it must be a single string: an array `iss` could otherwise
    /// match loosely.
    pub fn issuer(&self) -> Result<&str, AuthError> {
        match self.claims.get("iss") {
            Some(Value::String(iss)) => Ok(iss),
            Some(_) => Err(Reason::MalformedToken.into()),
            None => Err(Reason::UnknownIssuer.into()),
        }
    }
}

fn base64url(part: &str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| AuthError::with_source(Reason::MalformedToken, e))
}

/// What a JWT of one issuer must satisfy, built once when the issuer is compiled.
pub struct JwtRules {
    pub issuer: String,
    /// The allow-list: a token's `alg` must be one of these before any key is looked at.
    algorithms: Vec<Alg>,
    audiences: Vec<String>,
    /// Seconds of clock skew accepted on `exp` and `nbf`.
    leeway: u64,
    /// Normalised required `typ` (lower case, without `application/`).
    required_typ: Option<String>,
}

impl JwtRules {
    pub fn new(settings: &IssuerSettings, algorithms: &[Alg]) -> Self {
        Self {
            issuer: settings.issuer.clone(),
            algorithms: algorithms.to_vec(),
            audiences: settings.audiences.clone(),
            leeway: settings.leeway.as_secs(),
            required_typ: settings
                .required_typ
                .as_deref()
                .map(|typ| normalize_typ(typ).into_owned()),
        }
    }

    /// Seconds of clock skew accepted on this issuer's dates.
    pub fn leeway(&self) -> u64 {
        self.leeway
    }

    /// Verifies a token whose `iss` named this issuer with its `keys`; returns its `exp`.
    pub async fn verify(&self, jwt: &DecodedJwt<'_>, keys: &KeyStore) -> Result<u64, AuthError> {
        let header = &jwt.header;
        self.allowed_alg(jwt)?;
        if let Some(required) = &self.required_typ {
            // RFC 9068 §4: access tokens must carry `typ: at+jwt`, which stops an ID
            // token of the same issuer from being replayed as an access token.
            let matches = header
                .typ
                .as_deref()
                .is_some_and(|typ| normalize_typ(typ) == required.as_str());
            if !matches {
                return Err(Reason::WrongTokenType.into());
            }
        }
        if super::logout::is_logout_token(jwt) {
            // Back-Channel Logout 1.0 §2.4: a logout token must never be usable as
            // another kind of token, whatever its `aud` and `exp` say.
            return Err(Reason::WrongTokenType.into());
        }
        self.verify_signed(jwt, keys).await?;
        self.check_claims(&jwt.claims, unix_now())
    }

    /// The allow-list, checked before any key is looked at: a token cannot choose
    /// `none`, an HMAC algorithm, or anything the operator did not allow.
    fn allowed_alg(&self, jwt: &DecodedJwt<'_>) -> Result<Alg, AuthError> {
        match jwt.header.alg {
            HeaderAlg::Supported(alg) if self.algorithms.contains(&alg) => Ok(alg),
            _ => Err(Reason::AlgorithmNotAllowed.into()),
        }
    }

    /// The checks every JWT of this issuer passes, whatever it is for (an access token, a
    /// logout token): `alg` in the allow-list, no `crit`, a key of this issuer's JWKS and
    /// its signature. The caller checks the type and the claims.
    pub async fn verify_signed(
        &self,
        jwt: &DecodedJwt<'_>,
        keys: &KeyStore,
    ) -> Result<(), AuthError> {
        let header = &jwt.header;
        let alg = self.allowed_alg(jwt)?;
        if header.crit.is_some() {
            // RFC 7515 §4.1.11: we understand no extension, so a token that marks one as
            // critical must be refused.
            return Err(Reason::MalformedToken.into());
        }
        let store = keys;
        let keys = store.current().ok_or(Reason::KeysUnavailable)?;
        match header.kid.as_deref() {
            Some(kid) => {
                let key = match keys.get(kid) {
                    Some(key) => key.clone(),
                    None => store
                        .find_after_refetch(kid)
                        .await
                        .ok_or(Reason::UnknownKey)?,
                };
                verify_signature(jwt, alg, &key)?;
            }
            None => {
                // No `kid`: try the keys that fit the algorithm (at most the JWKS size).
                let mut verified = Err(Reason::UnknownKey);
                for key in keys.candidates(alg) {
                    verified = verify_signature(jwt, alg, key);
                    if verified.is_ok() {
                        break;
                    }
                }
                verified?;
            }
        }
        Ok(())
    }

    /// RFC 7519 §4.1: `exp` required, `nbf` honoured, both with the leeway; `iss` exactly
    /// ours; `aud` required and naming one of our audiences. Returns `exp`.
    fn check_claims(&self, claims: &Value, now: u64) -> Result<u64, AuthError> {
        if claims.get("exp").is_none() {
            return Err(Reason::InvalidClaims.into());
        }
        let expires_at =
            check_validity_window(claims, now, self.leeway)?.ok_or(Reason::InvalidClaims)?;
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(Reason::UnknownIssuer.into());
        }
        let accepted = claims
            .get("aud")
            .and_then(|aud| names_audience(aud, &self.audiences))
            .ok_or(Reason::InvalidClaims)?;
        if !accepted {
            return Err(Reason::WrongAudience.into());
        }
        Ok(expires_at)
    }
}

fn verify_signature(jwt: &DecodedJwt<'_>, alg: Alg, key: &VerifyingKey) -> Result<(), Reason> {
    key.verify(alg, jwt.signing_input, &jwt.signature)
}

/// `exp` and `nbf` (RFC 7519 §4.1.4–5), each checked with `leeway` when present; shared
/// with introspection answers, whose members mean the same. Returns `exp`.
pub(crate) fn check_validity_window(
    claims: &Value,
    now: u64,
    leeway: u64,
) -> Result<Option<u64>, Reason> {
    let date = |name| {
        claims
            .get(name)
            .map(|value| numeric_date(value).ok_or(Reason::InvalidClaims))
            .transpose()
    };
    let expires_at = date("exp")?;
    if expires_at.is_some_and(|exp| exp.saturating_add(leeway) < now) {
        return Err(Reason::Expired);
    }
    if date("nbf")?.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(Reason::NotYetValid);
    }
    Ok(expires_at)
}

/// Whether an `aud` (a string, or a list of strings) names one of `audiences`; `None`
/// when it is neither.
pub(crate) fn names_audience(aud: &Value, audiences: &[String]) -> Option<bool> {
    let ours = |aud: &Value| {
        aud.as_str()
            .is_some_and(|aud| audiences.iter().any(|ours| ours == aud))
    };
    match aud {
        Value::Array(list) => Some(list.iter().any(ours)),
        Value::String(_) => Some(ours(aud)),
        _ => None,
    }
}

/// An RFC 7519 NumericDate: seconds since the epoch, possibly with a fraction (cut to
/// whole seconds). Anything other than a non-negative number is `None`.
pub(crate) fn numeric_date(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| {
        value
            .as_f64()
            .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
            .map(|seconds| seconds as u64)
    })
}

/// `at+jwt`, `AT+JWT` and `application/at+jwt` are the same type (RFC 7515 §4.1.9).
pub(crate) fn normalize_typ(typ: &str) -> Cow<'_, str> {
    let typ = typ.trim();
    let typ = match typ.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
        _ => typ,
    };
    if typ.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Owned(typ.to_ascii_lowercase())
    } else {
        Cow::Borrowed(typ)
    }
}

/// True when the token has the shape of a JWS compact serialisation: three non-empty
/// base64url segments. Checked before any decoding or crypto.
pub fn looks_like_jwt(token: &str) -> bool {
    // One pass over the bytes: this runs on every cache miss, over tokens of up to
    // `token.max_length` bytes.
    let (mut dots, mut segment) = (0, 0);
    for &byte in token.as_bytes() {
        if byte == b'.' {
            if segment == 0 || dots == 2 {
                return false;
            }
            dots += 1;
            segment = 0;
        } else if is_base64url(byte) {
            segment += 1;
        } else {
            return false;
        }
    }
    dots == 2 && segment > 0
}

fn is_base64url(byte: u8) -> bool {
    BASE64URL[usize::from(byte)]
}

/// The base64url alphabet as a lookup table: one load per byte of a token that can be
/// several KiB long, instead of a chain of range comparisons.
const BASE64URL: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        byte += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
        assert!(!looks_like_jwt("eyJh.eyJi"));
        assert!(!looks_like_jwt("eyJh.eyJi.c2ln.d"));
        assert!(!looks_like_jwt("eyJh..c2ln"));
        assert!(!looks_like_jwt("eyJh.eyJi.c2l="));
        assert!(!looks_like_jwt("opaque-token"));
    }

    #[test]
    fn typ_normalisation() {
        assert_eq!(normalize_typ("application/AT+JWT"), "at+jwt");
        assert_eq!(normalize_typ("at+jwt"), "at+jwt");
    }

    fn token(header: &str, payload: &str) -> String {
        format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    fn issuer_of(header: &str, payload: &str) -> Result<String, Reason> {
        let token = token(header, payload);
        let jwt = DecodedJwt::parse(&token).map_err(|e| e.reason)?;
        jwt.issuer().map(str::to_owned).map_err(|e| e.reason)
    }

    const RS256: &str = r#"{"alg":"RS256","kid":"k"}"#;

    #[test]
    fn array_iss_is_malformed() {
        let found = issuer_of(RS256, r#"{"iss":["a","b"]}"#);
        assert_eq!(found, Err(Reason::MalformedToken));
    }

    #[test]
    fn missing_iss_is_unknown_issuer() {
        let found = issuer_of(RS256, r#"{"sub":"a"}"#);
        assert_eq!(found, Err(Reason::UnknownIssuer));
    }

    #[test]
    fn shapes_that_are_not_a_jws_are_malformed() {
        for (header, payload) in [
            (r#"{"alg":"none"}"#, r#"{"iss":"a"}"#),
            (r#"{"kid":"k"}"#, r#"{"iss":"a"}"#),
            (RS256, r#"["iss","a"]"#),
            (RS256, "not json"),
        ] {
            assert_eq!(issuer_of(header, payload), Err(Reason::MalformedToken));
        }
        let extra_part = format!("{}.c2ln", token(RS256, r#"{"iss":"a"}"#));
        assert!(DecodedJwt::parse(&extra_part).is_err());
        assert!(DecodedJwt::parse("no-dots-at-all").is_err());
    }

    #[test]
    fn duplicate_member_names_are_malformed() {
        for (header, payload) in [
            (r#"{"alg":"RS256","alg":"none"}"#, r#"{"iss":"a"}"#),
            (
                r#"{"alg":"RS256","kid":"k","kid":"other"}"#,
                r#"{"iss":"a"}"#,
            ),
            (r#"{"alg":"RS256","x5u":"a","x5u":"b"}"#, r#"{"iss":"a"}"#),
            (RS256, r#"{"iss":"a","sub":"alice","sub":"admin"}"#),
            (RS256, r#"{"iss":"a","iss":"b"}"#),
            (
                RS256,
                r#"{"iss":"a","realm_access":{"roles":[],"roles":["admin"]}}"#,
            ),
            (RS256, r#"{"iss":"a","groups":[{"id":1,"id":2}]}"#),
            (RS256, r#"{"iss":"a","email":"a@x","em\u0061il":"b@x"}"#),
        ] {
            assert_eq!(
                issuer_of(header, payload),
                Err(Reason::MalformedToken),
                "{header} {payload}"
            );
        }
        // The same name in sibling objects is not a duplicate.
        assert_eq!(
            issuer_of(RS256, r#"{"iss":"a","x":{"id":1},"y":{"id":1}}"#),
            Ok("a".to_owned())
        );
    }

    #[test]
    fn numeric_dates() {
        assert_eq!(
            numeric_date(&serde_json::json!(1700000000)),
            Some(1700000000)
        );
        assert_eq!(
            numeric_date(&serde_json::json!(1700000000.9)),
            Some(1700000000)
        );
        for bad in [
            serde_json::json!(-1),
            serde_json::json!("1700000000"),
            serde_json::json!(null),
        ] {
            assert_eq!(numeric_date(&bad), None);
        }
    }
}
