//! JWKs (RFC 7517) to verifying keys: which members make a key usable, for which
//! algorithms of the issuer's allow-list, its RFC 7638 thumbprint, and the parsed key
//! set that requests read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use aws_lc_rs::signature::{self as lc, ParsedPublicKey, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;

use super::alg::{Alg, KeyFamily};
use crate::error::Reason;

/// Most keys kept from one JWKS; bounds the work for a token without `kid`.
const MAX_KEYS: usize = 64;
/// RSA keys below this size are too weak to trust (NIST SP 800-57).
const MIN_RSA_BITS: usize = 2048;

/// RFC 7638 JWK thumbprint: the SHA-256 of a key's required members. It names the key
/// material itself, whatever `kid` (if any) the JWKS gives it.
pub type Thumbprint = [u8; 32];

/// A public key from the JWKS, ready to verify, with the algorithms it may verify.
pub struct VerifyingKey {
    pub kid: Option<String>,
    /// What the key is, independent of its `kid`: a key published without a `kid`, or a
    /// `kid` reused for new material, is still recognised when it is withdrawn.
    pub thumbprint: Thumbprint,
    /// One parsed public key per algorithm this key may verify: its own `alg` if it names
    /// one, else every allowed algorithm of its `kty`/`crv`, never outside the issuer's
    /// allow-list. Parsed when the JWKS is loaded, so a verification does no key parsing
    /// (for RSA that includes the Montgomery set-up).
    verifiers: Vec<(Alg, ParsedPublicKey)>,
}

impl VerifyingKey {
    pub fn allows(&self, alg: Alg) -> bool {
        self.verifiers.iter().any(|(allowed, _)| *allowed == alg)
    }

    pub fn algorithms(&self) -> impl Iterator<Item = Alg> + '_ {
        self.verifiers.iter().map(|(alg, _)| *alg)
    }

    /// True when `self` (from a new JWKS) still vouches for every token `previous` did:
    /// the same material under the same `kid`, for at least the same algorithms.
    fn succeeds(&self, previous: &VerifyingKey) -> bool {
        self.thumbprint == previous.thumbprint
            && self.kid == previous.kid
            && previous.algorithms().all(|alg| self.allows(alg))
    }

    /// `kid=… thumbprint=…` for log lines (both are public).
    pub fn describe(&self) -> String {
        format!(
            "kid={} thumbprint={}",
            self.kid.as_deref().unwrap_or("(none)"),
            URL_SAFE_NO_PAD.encode(self.thumbprint)
        )
    }

    /// Checks `signature` over `message` with this key, for `alg` only: a key verifies
    /// only its own kty/alg, so an RSA key is never an HMAC secret.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> Result<(), Reason> {
        let (_, key) = self
            .verifiers
            .iter()
            .find(|(allowed, _)| *allowed == alg)
            .ok_or(Reason::AlgorithmNotAllowed)?;
        key.verify_sig(message, signature)
            .map_err(|_| Reason::BadSignature)
    }
}

/// One parsed JWKS, swapped in whole.
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    all: Vec<Arc<VerifyingKey>>,
    pub fetched_at: Instant,
}

impl KeySet {
    /// Parses a JWKS, keeping only keys that are safe to verify with. Keys that are
    /// ignored are logged at debug level with the reason.
    pub fn parse(body: &[u8], allowed: &[Alg]) -> Result<KeySet, serde_json::Error> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        // Duplicate member names are refused here too: a JWKS read two ways could hold
        // two keys under one `kid`.
        let raw: RawSet = super::json::from_slice(body).and_then(serde_json::from_value)?;
        let mut set = KeySet {
            by_kid: HashMap::new(),
            all: Vec::new(),
            fetched_at: Instant::now(),
        };
        for raw_key in raw.keys.iter().take(MAX_KEYS) {
            match usable_key(raw_key, allowed) {
                Ok(key) => {
                    let key = Arc::new(key);
                    if let Some(kid) = &key.kid {
                        set.by_kid.insert(kid.clone(), key.clone());
                    }
                    set.all.push(key);
                }
                Err(why) => {
                    let kid = raw_key.get("kid").and_then(Value::as_str).unwrap_or("");
                    tracing::debug!(kid, why, "JWKS key ignored");
                }
            }
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.by_kid.get(kid)
    }

    /// Keys that may verify `alg`, for a token without `kid`.
    pub fn candidates(&self, alg: Alg) -> impl Iterator<Item = &Arc<VerifyingKey>> {
        self.all.iter().filter(move |key| key.allows(alg))
    }

    /// The keys of `self` that `next` no longer holds (see [`VerifyingKey::succeeds`]).
    pub fn withdrawn_in<'a>(&'a self, next: &'a KeySet) -> impl Iterator<Item = &'a VerifyingKey> {
        self.all
            .iter()
            .filter(|old| !next.all.iter().any(|new| new.succeeds(old)))
            .map(|old| old.as_ref())
    }
}

/// Decides whether one JWK may be used, and for which algorithms.
fn usable_key(raw: &Value, allowed: &[Alg]) -> Result<VerifyingKey, &'static str> {
    const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
    if PRIVATE_MEMBERS
        .iter()
        .any(|member| raw.get(member).is_some())
    {
        // A published private key (or a symmetric secret) is compromised by definition.
        return Err("holds private key material");
    }
    if let Some(key_use) = raw.get("use") {
        if key_use.as_str() != Some("sig") {
            return Err("not a signature key (use)");
        }
    }
    if let Some(ops) = raw.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("not a verification key (key_ops)");
        }
    }
    let kty = raw.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = raw.get("crv").and_then(Value::as_str).unwrap_or("");
    let family = KeyFamily::of_jwk(kty, crv).ok_or("unsupported kty/crv")?;
    let algorithms: Vec<Alg> = match raw.get("alg") {
        Some(alg) => {
            let alg = alg.as_str().and_then(Alg::from_name).ok_or("unknown alg")?;
            if alg.family() != family {
                return Err("alg does not match kty");
            }
            vec![alg]
        }
        None => family.algorithms().to_vec(),
    };
    let algorithms: Vec<Alg> = algorithms
        .into_iter()
        .filter(|alg| allowed.contains(alg))
        .collect();
    if algorithms.is_empty() {
        return Err("no allowed algorithm");
    }
    let thumbprint;
    let verifiers = match family {
        KeyFamily::Rsa => {
            let modulus = base64_member(raw, "n").ok_or("bad modulus")?;
            let modulus = strip_leading_zeros(&modulus);
            if modulus.len() * 8 < MIN_RSA_BITS {
                return Err("RSA key shorter than 2048 bits");
            }
            let exponent = base64_member(raw, "e").ok_or("bad exponent")?;
            let exponent = strip_leading_zeros(&exponent);
            thumbprint = jwk_thumbprint(&[
                ("e", &URL_SAFE_NO_PAD.encode(exponent)),
                ("kty", "RSA"),
                ("n", &URL_SAFE_NO_PAD.encode(modulus)),
            ]);
            let components = RsaPublicKeyComponents {
                n: modulus,
                e: exponent,
            };
            algorithms
                .iter()
                .map(|alg| {
                    let parameters = alg.rsa_parameters().ok_or("alg does not match kty")?;
                    let parsed = components
                        .to_parsed_public_key(parameters)
                        .map_err(|_| "unusable key material")?;
                    Ok((*alg, parsed))
                })
                .collect::<Result<Vec<_>, &'static str>>()?
        }
        KeyFamily::EcP256 | KeyFamily::EcP384 => {
            // SEC 1 uncompressed point; RFC 7518 §6.2.1.2 requires full-length coordinates.
            let (length, verification): (usize, &'static lc::EcdsaVerificationAlgorithm) =
                if family == KeyFamily::EcP256 {
                    (32, &lc::ECDSA_P256_SHA256_FIXED)
                } else {
                    (48, &lc::ECDSA_P384_SHA384_FIXED)
                };
            let x = base64_member(raw, "x").ok_or("bad x coordinate")?;
            let y = base64_member(raw, "y").ok_or("bad y coordinate")?;
            if x.len() != length || y.len() != length {
                return Err("EC coordinates of the wrong length");
            }
            thumbprint = jwk_thumbprint(&[
                ("crv", crv),
                ("kty", "EC"),
                ("x", &URL_SAFE_NO_PAD.encode(&x)),
                ("y", &URL_SAFE_NO_PAD.encode(&y)),
            ]);
            let point = [&[0x04][..], &x, &y].concat();
            let parsed =
                ParsedPublicKey::new(verification, point).map_err(|_| "unusable key material")?;
            vec![(algorithms[0], parsed)]
        }
        KeyFamily::Ed25519 => {
            let x = base64_member(raw, "x").ok_or("bad x coordinate")?;
            // RFC 8037 §2: the required members of an OKP key are crv, kty and x.
            thumbprint = jwk_thumbprint(&[
                ("crv", crv),
                ("kty", "OKP"),
                ("x", &URL_SAFE_NO_PAD.encode(&x)),
            ]);
            let parsed =
                ParsedPublicKey::new(&lc::ED25519, x).map_err(|_| "unusable key material")?;
            vec![(algorithms[0], parsed)]
        }
    };
    Ok(VerifyingKey {
        kid: raw.get("kid").and_then(Value::as_str).map(str::to_owned),
        thumbprint,
        verifiers,
    })
}

/// RFC 7638 §3: SHA-256 over the JSON object of the required members, sorted by name,
/// with no whitespace. The members are given sorted, with values re-encoded from the
/// decoded bytes: an RSA integer without leading zero octets (the form RFC 7518 §6.3.1
/// requires), so that `n` with and without a sign byte is the same key. For keys in
/// that canonical form this is exactly the thumbprint other tools compute. No value
/// needs JSON escaping: they are base64url or fixed names.
fn jwk_thumbprint(members: &[(&str, &str)]) -> Thumbprint {
    let mut canonical = String::with_capacity(512);
    canonical.push('{');
    for (index, (name, value)) in members.iter().enumerate() {
        if index > 0 {
            canonical.push(',');
        }
        canonical.push('"');
        canonical.push_str(name);
        canonical.push_str("\":\"");
        canonical.push_str(value);
        canonical.push('"');
    }
    canonical.push('}');
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    let mut thumbprint = [0u8; 32];
    thumbprint.copy_from_slice(digest.as_ref());
    thumbprint
}

/// A base64url JWK member, decoded.
fn base64_member(raw: &Value, member: &str) -> Option<Vec<u8>> {
    raw.get(member)
        .and_then(Value::as_str)
        .and_then(|encoded| URL_SAFE_NO_PAD.decode(encoded).ok())
}

/// Big-endian integers in the wild sometimes carry a sign byte; the key parser wants none.
fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALL: &[Alg] = &Alg::ALL;

    fn rsa_jwk(bits: usize) -> Value {
        let mut modulus = vec![0xC5u8; bits / 8];
        modulus[bits / 8 - 1] = 0x01;
        json!({"kty": "RSA", "kid": "r", "n": URL_SAFE_NO_PAD.encode(modulus), "e": "AQAB"})
    }

    #[test]
    fn rsa_key_without_alg_serves_every_allowed_rsa_algorithm() {
        let key = usable_key(&rsa_jwk(2048), &[Alg::RS256, Alg::ES256]).unwrap();
        assert_eq!(key.algorithms().collect::<Vec<_>>(), [Alg::RS256]);
    }

    #[test]
    fn short_rsa_keys_are_ignored() {
        assert!(usable_key(&rsa_jwk(1024), ALL).is_err());
    }

    #[test]
    fn encryption_and_private_keys_are_ignored() {
        let mut enc = rsa_jwk(2048);
        enc["use"] = json!("enc");
        assert!(usable_key(&enc, ALL).is_err());
        let mut private = rsa_jwk(2048);
        private["d"] = json!("AAAA");
        assert!(usable_key(&private, ALL).is_err());
        let secret = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(usable_key(&secret, ALL).is_err());
    }

    #[test]
    fn alg_must_match_kty() {
        let mut key = rsa_jwk(2048);
        key["alg"] = json!("ES256");
        assert!(usable_key(&key, ALL).is_err());
        key["alg"] = json!("HS256");
        assert!(usable_key(&key, ALL).is_err());
    }

    #[test]
    fn ec_keys_are_parsed_once_and_checked_when_loaded() {
        let key = crate::demo::SigningKey::generate(jsonwebtoken::Algorithm::ES256, "e");
        let jwk = key.public_jwk().clone();
        let parsed = usable_key(&jwk, ALL).unwrap();
        assert_eq!(parsed.algorithms().collect::<Vec<_>>(), [Alg::ES256]);
        // A short coordinate, or a point that is not on the curve, never becomes a key.
        let mut short = jwk.clone();
        short["x"] = json!(URL_SAFE_NO_PAD.encode([7u8; 31]));
        assert_eq!(
            usable_key(&short, ALL).err(),
            Some("EC coordinates of the wrong length")
        );
        let mut off_curve = jwk.clone();
        off_curve["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert_eq!(
            usable_key(&off_curve, ALL).err(),
            Some("unusable key material")
        );
    }

    #[test]
    fn a_parsed_key_verifies_only_its_algorithms() {
        let key = usable_key(&rsa_jwk(2048), &[Alg::RS256]).unwrap();
        assert_eq!(
            key.verify(Alg::PS256, b"m", b"s"),
            Err(Reason::AlgorithmNotAllowed)
        );
        assert_eq!(
            key.verify(Alg::RS256, b"m", b"s"),
            Err(Reason::BadSignature)
        );
    }

    #[test]
    fn one_bad_key_does_not_spoil_the_set() {
        let body = json!({"keys": [{"kty": "weird"}, rsa_jwk(2048)]}).to_string();
        let set = KeySet::parse(body.as_bytes(), ALL).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.get("r").is_some());
    }

    /// RFC 7638 §3.1's example key, whose thumbprint the RFC gives.
    fn rfc7638_key() -> Value {
        json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        })
    }

    fn thumbprint_of(jwk: &Value) -> String {
        URL_SAFE_NO_PAD.encode(usable_key(jwk, ALL).unwrap().thumbprint)
    }

    #[test]
    fn thumbprint_is_rfc_7638s() {
        assert_eq!(
            thumbprint_of(&rfc7638_key()),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn thumbprint_names_the_material_only() {
        let expected = thumbprint_of(&rfc7638_key());
        // Optional members do not count.
        let mut other = rfc7638_key();
        other["kid"] = json!("renamed");
        other["use"] = json!("sig");
        other.as_object_mut().unwrap().remove("alg");
        assert_eq!(thumbprint_of(&other), expected);
        // A sign byte in front of the modulus is the same integer.
        let n = URL_SAFE_NO_PAD
            .decode(rfc7638_key()["n"].as_str().unwrap())
            .unwrap();
        other["n"] = json!(URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()));
        assert_eq!(thumbprint_of(&other), expected);
        // Other material is another key.
        assert_ne!(thumbprint_of(&rsa_jwk(2048)), expected);
    }

    #[test]
    fn ec_and_okp_thumbprints_hash_their_required_members() {
        use jsonwebtoken::Algorithm;
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
            let key = crate::demo::SigningKey::generate(alg, "x");
            let jwk = key.public_jwk();
            let required: &[&str] = match alg {
                Algorithm::EdDSA => &["crv", "kty", "x"],
                _ => &["crv", "kty", "x", "y"],
            };
            // serde_json's map is sorted and `to_string` adds no whitespace: the RFC 7638
            // form, built independently of the code under test.
            let members: serde_json::Map<String, Value> = required
                .iter()
                .map(|name| (name.to_string(), jwk[*name].clone()))
                .collect();
            let canonical = Value::Object(members).to_string();
            let digest =
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
            assert_eq!(
                thumbprint_of(jwk),
                URL_SAFE_NO_PAD.encode(digest.as_ref()),
                "{alg:?}"
            );
        }
    }
}
