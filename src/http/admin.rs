//! The admin listener: liveness, readiness and metrics, kept off the proxy-facing port.

use std::sync::atomic::Ordering;

use actix_web::{web, HttpResponse};
use prometheus::{Encoder, TextEncoder};

use crate::metrics::CacheName;

use super::AppState;

/// Alive while the process serves requests.
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain").body("ok\n")
}

/// Ready once every issuer's keys are loaded and every configured introspection has an
/// endpoint, and not while shutting down.
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    match readiness(&state) {
        Ok(()) => HttpResponse::Ok()
            .content_type("text/plain")
            .body("ready\n"),
        Err(why) => HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("{why}\n")),
    }
}

/// Whether tokengate can decide requests right now, and if not, why: what `/readyz`
/// answers, and what the gRPC health service reports.
pub fn readiness(state: &AppState) -> Result<(), String> {
    if state.shutting_down.load(Ordering::Acquire) {
        return Err("shutting down".to_owned());
    }
    let runtime = state.runtime.load();
    let issuers = runtime.gate.verifier.issuers();
    let pending: Vec<&str> = issuers
        .iter()
        .filter(|issuer| !issuer.keys.is_ready())
        .map(|issuer| issuer.name.as_str())
        .collect();
    if !pending.is_empty() {
        return Err(format!("keys not loaded: {}", pending.join(", ")));
    }
    let no_endpoint: Vec<&str> = issuers
        .iter()
        .filter(|issuer| !issuer.introspection_endpoint_known())
        .map(|issuer| issuer.name.as_str())
        .collect();
    if !no_endpoint.is_empty() {
        return Err(format!(
            "introspection endpoint unknown: {}",
            no_endpoint.join(", ")
        ));
    }
    if !state.revocations.is_ready() {
        return Err("revocation feed not loaded yet".to_owned());
    }
    Ok(())
}

/// Prometheus text exposition of the registry passed to the application.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let runtime = state.runtime.load();
    let verifier = &runtime.gate.verifier;
    for issuer in verifier.issuers() {
        issuer.metrics.set_key_age(issuer.keys.key_age());
    }
    let (cache, introspector) = (verifier.cache(), verifier.introspector());
    state.metrics.set_cache_size(
        CacheName::VerifiedToken,
        cache.entry_count(),
        cache.weighted_size(),
    );
    state.metrics.set_cache_size(
        CacheName::Introspection,
        introspector.cache_entries(),
        introspector.cache_bytes(),
    );
    let mut buffer = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buffer) {
        Ok(()) => HttpResponse::Ok()
            .content_type(prometheus::TEXT_FORMAT)
            .body(buffer),
        Err(error) => {
            tracing::error!(%error, "metrics encoding failed");
            HttpResponse::InternalServerError().finish()
        }
    }
}
