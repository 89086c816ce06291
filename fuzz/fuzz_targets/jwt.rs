//! A token against a verifier with one loaded RS256 key and one ES256 key. Inputs are
//! arbitrary bytes, or a real signed token with some bytes changed. Invariant beyond
//! "no panic": a token is allowed only if its signature verifies, under an independent
//! check, with one of the loaded keys and an algorithm the issuer allows, and its
//! claims name the issuer and the audience.
#![no_main]

use std::sync::OnceLock;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use libfuzzer_sys::fuzz_target;
use prometheus::Registry;
use serde_json::{json, Value};
use tokengate::config::Settings;
use tokengate::demo::{jwks_document, SigningKey};
use tokengate::metrics::Metrics;
use tokengate::verify::Verifier;

const ISSUER: &str = "https://sso.example.com/realms/main";
const AUDIENCE: &str = "orders-api";

struct Fixture {
    runtime: tokio::runtime::Runtime,
    verifier: Verifier,
    keys: Vec<SigningKey>,
    token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let keys = vec![
            SigningKey::generate(Algorithm::RS256, "rsa"),
            SigningKey::generate(Algorithm::ES256, "ec"),
        ];
        let settings = Settings::from_yaml(&format!(
            "issuers:\n  - issuer: {ISSUER}\n    audiences: [{AUDIENCE}]\n    \
             algorithms: [RS256, ES256]\n    jwks_uri: http://127.0.0.1:9/jwks\n"
        ))
        .expect("settings");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let metrics = std::sync::Arc::new(
            Metrics::new(&Registry::new(), &[ISSUER.to_owned()]).expect("metrics"),
        );
        let verifier = runtime.block_on(async {
            Verifier::new(&settings, reqwest::Client::new(), metrics).expect("verifier")
        });
        let document = serde_json::to_vec(&jwks_document(&keys)).expect("jwks");
        for issuer in verifier.issuers() {
            issuer.keys.load_jwks(&document).expect("keys load");
        }
        let claims = json!({
            "iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "exp": 4_000_000_000u64,
            "groups": ["admins"],
        });
        let token = keys[0].sign(&claims);
        Fixture {
            runtime,
            verifier,
            keys,
            token,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let fixture = fixture();
    let token = match data.split_first() {
        // Mutate the real token: overwrite a few bytes at the positions given.
        Some((0, edits)) => {
            let mut bytes = fixture.token.clone().into_bytes();
            for pair in edits.chunks(2) {
                if let [position, value] = pair {
                    let index = usize::from(*position) * bytes.len() / 256;
                    bytes[index] = *value;
                }
            }
            String::from_utf8_lossy(&bytes).into_owned()
        }
        _ => String::from_utf8_lossy(data).into_owned(),
    };
    let verdict = fixture
        .runtime
        .block_on(fixture.verifier.verify_token(&token));
    if verdict.is_err() {
        return;
    }
    assert!(
        verifies_independently(fixture, &token),
        "allowed without a valid signature: {token:?}"
    );
});

/// jsonwebtoken's own verification with the public keys: signature, `exp`, `iss`, `aud`.
fn verifies_independently(fixture: &Fixture, token: &str) -> bool {
    fixture.keys.iter().any(|key| {
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_value(key.public_jwk().clone()).expect("public JWK");
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            return false;
        };
        let mut validation = Validation::new(key.alg);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        jsonwebtoken::decode::<Value>(token, &decoding, &validation).is_ok()
    })
}
