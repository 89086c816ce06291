//! A JWKS document and a discovery document, as an issuer (or whoever controls its
//! network path) might serve them. Invariants beyond "no panic":
//! - every key loaded from a JWKS verifies only algorithms of the allow-list;
//! - a discovery document is accepted only when its `issuer` is exactly the configured
//!   one, and then names http(s) URLs only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::verify::jwks::{KeySet, ProviderMetadata};

const ISSUER: &str = "https://sso.example.com/realms/main";

fuzz_target!(|data: &[u8]| {
    let (selector, body) = data.split_first().map_or((0, data), |(s, b)| (*s, b));
    let allowed: &[jsonwebtoken::Algorithm] = match selector % 3 {
        0 => &[jsonwebtoken::Algorithm::RS256],
        1 => &[
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::Algorithm::EdDSA,
        ],
        _ => &[
            jsonwebtoken::Algorithm::PS256,
            jsonwebtoken::Algorithm::RS512,
        ],
    };
    if let Ok(set) = KeySet::parse(body, allowed) {
        for alg in [
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::Algorithm::RS384,
            jsonwebtoken::Algorithm::RS512,
            jsonwebtoken::Algorithm::PS256,
            jsonwebtoken::Algorithm::PS384,
            jsonwebtoken::Algorithm::PS512,
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::Algorithm::ES384,
            jsonwebtoken::Algorithm::EdDSA,
            jsonwebtoken::Algorithm::HS256,
        ] {
            if !allowed.contains(&alg) {
                assert_eq!(set.candidates(alg).count(), 0, "a key verifies {alg:?}");
            }
        }
    }
    if let Ok(metadata) = ProviderMetadata::parse(body, ISSUER) {
        let document: serde_json::Value = serde_json::from_slice(body).expect("parsed once");
        assert_eq!(document["issuer"], ISSUER);
        assert!(matches!(metadata.jwks_uri.scheme(), "https" | "http"));
        if let Some(endpoint) = &metadata.introspection_endpoint {
            assert!(matches!(endpoint.scheme(), "https" | "http"));
        }
    }
});
