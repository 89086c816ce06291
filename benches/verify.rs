//! Micro-benchmarks of the request path: token extraction, full verification per
//! algorithm (cache miss), the verified-token cache hit, the introspection cache hit (an
//! opaque token whose answer is cached), the hit through the swappable runtime, the
//! cache hit with 100 000 revocation entries held beside the same with none, and
//! identity-header building.
//!
//! `cargo bench` runs them; compare numbers within one run only.

use std::hint::black_box;
use std::sync::Arc;

use actix_web::http::header::{HeaderMap, HeaderValue, AUTHORIZATION};
use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use jsonwebtoken::Algorithm;
use prometheus::Registry;
use serde_json::{json, Value};
use testkit::issuer::{
    shared_key, TestIssuer, AUDIENCE, INTROSPECTION_CLIENT_ID, INTROSPECTION_SECRET,
};
use tokengate::config::Settings;
use tokengate::demo::{jwks_document, SigningKey};
use tokengate::identity::IdentityMapping;
use tokengate::metrics::Metrics;
use tokengate::request::{extract_token, TokenSource};
use tokengate::revocation::{Event, Kind, RevocationKeys};
use tokengate::verify::cache::{token_hash, unix_now};
use tokengate::verify::Verifier;

const ISSUER: &str = "https://sso.example.com/realms/main";

fn claims() -> Value {
    let now = unix_now();
    json!({
        "iss": ISSUER, "sub": "f3b1c2d4-0000-4000-8000-000000000001", "aud": AUDIENCE,
        "iat": now, "exp": now + 3600, "preferred_username": "alice",
        "email": "alice@example.com", "groups": ["admins", "developers", "ops"],
        "scope": "openid profile email orders:read",
    })
}

/// An opaque token (not a JWT): it goes to introspection.
const OPAQUE_TOKEN: &str = "bench-opaque-2YotnFZFEjr1zCsicMWpAA-tGzv3JOkF0XG5Qx2TlKWIA";

/// What the test kit's in-process issuer answers when [`OPAQUE_TOKEN`] is introspected.
fn introspection_answer() -> Value {
    let mut answer = claims();
    answer["active"] = json!(true);
    answer["username"] = json!("alice");
    answer
}

/// Starts the test kit's in-process issuer, answering [`OPAQUE_TOKEN`] as active; returns
/// its RFC 7662 endpoint. Only used to fill the cache once, the way a real request would.
fn start_introspection_endpoint() -> String {
    let issuer = TestIssuer::start_on(
        std::net::TcpListener::bind("127.0.0.1:0").expect("bind"),
        Vec::new(),
    );
    issuer.set_answer(OPAQUE_TOKEN, introspection_answer());
    issuer.introspection_endpoint()
}

/// A verifier whose keys are loaded from a JWKS document, without any network, and
/// whose opaque tokens are introspected at `introspection_endpoint`.
fn verifier(keys: &[&SigningKey], introspection_endpoint: &str) -> Verifier {
    let secret = std::env::temp_dir().join(format!("tokengate-bench-{}", std::process::id()));
    std::fs::write(&secret, format!("{INTROSPECTION_SECRET}\n")).expect("secret file");
    let settings = Settings::from_yaml(&format!(
        "issuers:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    algorithms: [RS256, PS256, ES256, EdDSA]
    introspection:
      endpoint: {introspection_endpoint}
      client_id: {INTROSPECTION_CLIENT_ID}
      client_secret_file: {secret}
      positive_ttl: 1h
token:
  opaque_issuer: {ISSUER}
",
        secret = secret.display()
    ))
    .expect("settings");
    let metrics = Arc::new(Metrics::new(&Registry::new(), &["bench".to_owned()]).expect("metrics"));
    let verifier = Verifier::new(&settings, reqwest::Client::new(), metrics).expect("verifier");
    let _ = std::fs::remove_file(&secret);
    let jwks = jwks_document(keys.iter().copied()).to_string();
    for issuer in verifier.issuers() {
        issuer.keys.load_jwks(jwks.as_bytes()).expect("keys");
    }
    verifier
}

fn benches(c: &mut Criterion) {
    let keys: Vec<Arc<SigningKey>> = [
        (Algorithm::RS256, "rs256"),
        (Algorithm::PS256, "ps256"),
        (Algorithm::ES256, "es256"),
        (Algorithm::EdDSA, "eddsa"),
    ]
    .into_iter()
    .map(|(alg, kid)| shared_key(alg, kid))
    .collect();
    let key_refs: Vec<&SigningKey> = keys.iter().map(Arc::as_ref).collect();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let endpoint = runtime.block_on(async { start_introspection_endpoint() });
    let verifier = Arc::new(verifier(&key_refs, &endpoint));

    let token = keys[0].sign(&claims());
    let mut headers = HeaderMap::new();
    headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    c.bench_function("extract_token", |b| {
        b.iter(|| {
            extract_token(black_box(&headers), &[TokenSource::Authorization], 8192)
                .unwrap()
                .len()
        })
    });

    let mut group = c.benchmark_group("verify_miss");
    for key in &keys {
        let token = key.sign(&claims());
        let hash = token_hash(&token);
        group.bench_function(format!("{:?}", key.alg), |b| {
            b.iter(|| {
                let allowed = verifier
                    .verify_token(black_box(&token))
                    .now_or_never()
                    .expect("no waiting on the request path")
                    .expect("valid token");
                verifier.cache().remove(&hash);
                allowed
            })
        });
    }
    group.finish();

    let token = keys[0].sign(&claims());
    let hit = |verifier: &Verifier| {
        verifier
            .verify_token(black_box(&token))
            .now_or_never()
            .expect("no waiting on the request path")
            .expect("valid token")
    };
    c.bench_function("verify_cache_hit", |b| b.iter(|| hit(&verifier)));

    // One real introspection fills the cache; every iteration after it is a cache hit.
    let first = runtime
        .block_on(verifier.verify_token(OPAQUE_TOKEN))
        .expect("active answer");
    assert!(!first.cache_hit);
    c.bench_function("introspection_cache_hit", |b| {
        b.iter(|| {
            let allowed = verifier
                .verify_token(black_box(OPAQUE_TOKEN))
                .now_or_never()
                .expect("no waiting on the request path")
                .expect("active token");
            debug_assert!(allowed.cache_hit);
            allowed
        })
    });

    // The revocation check on a cache hit: nothing held, then 100 000 entries (a third
    // each of sid, jti and sub, none naming this token; one naming its subject before
    // it was issued), with a token that carries all three claims.
    let mut revocable = claims();
    revocable["sid"] = json!("a5c3e1f0-session-0001");
    revocable["jti"] = json!("0b7d9e2c-token-0001");
    let revocable = keys[0].sign(&revocable);
    let mut group = c.benchmark_group("verify_cache_hit_revocations");
    for held in [0usize, 100_000] {
        // A verifier of its own, with a store of its own.
        let checked = runtime.block_on(async { crate::verifier(&key_refs, &endpoint) });
        let kinds = [Kind::Sid, Kind::Jti, Kind::Sub];
        // `held` entries in all: the default `max_entries` (100 000) holds them.
        let mut events: Vec<Event> = (1..held)
            .map(|index| Event::new(ISSUER, kinds[index % 3], &format!("revoked-{index}")))
            .collect();
        if held > 0 {
            let mut before = Event::new(ISSUER, Kind::Sub, "f3b1c2d4-0000-4000-8000-000000000001");
            before.at_ms -= 60_000;
            events.push(before);
        }
        checked.revocations().load(&events);
        assert_eq!(checked.revocations().len(), held);
        checked
            .verify_token(&revocable)
            .now_or_never()
            .expect("no waiting")
            .expect("valid token");
        // The check alone, on the same token's fingerprints: what it adds to a hit.
        let keys_of_token = RevocationKeys::from_claims(
            ISSUER,
            &json!({"sub": "f3b1c2d4-0000-4000-8000-000000000001",
                "sid": "a5c3e1f0-session-0001", "jti": "0b7d9e2c-token-0001", "iat": unix_now()}),
        );
        let store = checked.revocations().clone();
        group.bench_function(format!("check_only_{held}_entries"), |b| {
            let now = unix_now();
            b.iter(|| store.check(black_box(&keys_of_token), now))
        });
        group.bench_function(format!("{held}_entries"), |b| {
            b.iter(|| {
                checked
                    .verify_token(black_box(&revocable))
                    .now_or_never()
                    .expect("no waiting on the request path")
                    .expect("valid token")
            })
        });
    }
    group.finish();

    // A request loads the runtime a reload may swap: the hit path read directly, and
    // through the `ArcSwap` as the handlers read it, side by side.
    let swappable = ArcSwap::new(verifier.clone());
    let mut group = c.benchmark_group("swappable_runtime");
    group.bench_function("cache_hit_direct", |b| b.iter(|| hit(&verifier)));
    group.bench_function("cache_hit_through_arc_swap", |b| {
        b.iter(|| hit(&swappable.load_full()))
    });
    group.finish();

    let mapping = IdentityMapping::new(&Default::default()).expect("mapping");
    let claims = claims();
    c.bench_function("identity_headers", |b| {
        b.iter(|| mapping.identity(black_box(&claims)))
    });
}

criterion_group!(verify, benches);
criterion_main!(verify);
