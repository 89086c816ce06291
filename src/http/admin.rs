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
    if state.shutting_down.load(Ordering::Acquire) {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("shutting down\n");
    }
    let pending: Vec<&str> = state
        .gate
        .verifier
        .key_stores()
        .enumerate()
        .filter(|(_, keys)| !keys.is_ready())
        .map(|(index, _)| state.gate.verifier.issuer_name(index))
        .collect();
    if !pending.is_empty() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!("keys not loaded: {}\n", pending.join(", ")));
    }
    let introspector = state.gate.verifier.introspector();
    let no_endpoint: Vec<&str> = (0..state.gate.verifier.key_stores().count())
        .filter(|index| !introspector.endpoint_known(*index))
        .map(|index| state.gate.verifier.issuer_name(index))
        .collect();
    if !no_endpoint.is_empty() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body(format!(
                "introspection endpoint unknown: {}\n",
                no_endpoint.join(", ")
            ));
    }
    if !state.gate.verifier.revocations().is_ready() {
        return HttpResponse::ServiceUnavailable()
            .content_type("text/plain")
            .body("revocation feed not loaded yet\n");
    }
    HttpResponse::Ok()
        .content_type("text/plain")
        .body("ready\n")
}

/// Prometheus text exposition of the registry passed to the application.
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    for (index, keys) in state.gate.verifier.key_stores().enumerate() {
        state.metrics.set_key_age(index, keys.key_age());
    }
    let verifier = &state.gate.verifier;
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
