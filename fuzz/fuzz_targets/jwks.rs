//! A JWKS document and a discovery document, as an issuer (or whoever controls its
//! network path) might serve them. Invariants beyond "no panic":
//! - every key loaded from a JWKS verifies only algorithms of the allow-list;
//! - a discovery document is accepted only when its `issuer` is exactly the configured
//!   one, and then names http(s) URLs only.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::verify::alg::Alg;
use tokengate::verify::discovery::ProviderMetadata;
use tokengate::verify::jwk::KeySet;

const ISSUER: &str = "https://sso.example.com/realms/main";

fuzz_target!(|data: &[u8]| {
    let (selector, body) = data.split_first().map_or((0, data), |(s, b)| (*s, b));
    let allowed: &[Alg] = match selector % 3 {
        0 => &[Alg::RS256],
        1 => &[Alg::ES256, Alg::EdDSA],
        _ => &[Alg::PS256, Alg::RS512],
    };
    if let Ok(set) = KeySet::parse(body, allowed) {
        // Symmetric algorithms are not even representable: no key can verify one.
        for alg in Alg::ALL {
            if !allowed.contains(&alg) {
                assert_eq!(set.candidates(alg).count(), 0, "a key verifies {alg:?}");
            }
        }
    }
    if let Ok(metadata) = ProviderMetadata::parse(body, "fuzz input", ISSUER) {
        let document: serde_json::Value = serde_json::from_slice(body).expect("parsed once");
        assert_eq!(document["issuer"], ISSUER);
        assert!(matches!(metadata.jwks_uri.scheme(), "https" | "http"));
        if let Some(endpoint) = &metadata.introspection_endpoint {
            assert!(matches!(endpoint.scheme(), "https" | "http"));
        }
    }
});
