//! Thin handlers: read what the proxy sent, call the policy and the verifier, map the
//! outcome to an answer and one log line.
//!
//! - [`auth`]: `/auth` for nginx `auth_request`, ingress-nginx and Traefik `forwardAuth`;
//! - [`ext_authz`]: `/ext-authz/…` for Envoy's HTTP `ext_authz`;
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` on the admin listener.

pub mod admin;
pub mod auth;
pub mod ext_authz;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use prometheus::Registry;

use crate::error::AuthError;
use crate::metrics::Metrics;
use crate::policy::{self, Decision, Requirements, RouteRules, Verdict};
use crate::request::{OriginalRequest, ProxyHeaders};
use crate::verify::cache::unix_now;
use crate::verify::Verifier;

/// State shared by every worker of both listeners, built once.
pub struct AppState {
    pub verifier: Verifier,
    pub rules: RouteRules,
    pub proxy_headers: ProxyHeaders,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Status of an allowed `/auth` request.
    pub success_status: StatusCode,
    /// Set on shutdown so that `/readyz` turns not-ready before the listener closes.
    pub shutting_down: AtomicBool,
}

/// Decides on what the proxy sent and answers with `allow_status` on success.
async fn decide(
    state: &AppState,
    headers: &HeaderMap,
    original: Result<OriginalRequest, AuthError>,
    query: Result<Requirements, AuthError>,
    allow_status: StatusCode,
) -> HttpResponse {
    let (original, query) = match (original, query) {
        (Ok(original), Ok(query)) => (original, query),
        (Err(error), _) | (_, Err(error)) => {
            let decision = Decision {
                outcome: Err(error),
                token: None,
                cache_hit: false,
                rule: None,
            };
            return respond(state, &OriginalRequest::default(), decision, allow_status);
        }
    };
    let decision =
        policy::authorize(&state.verifier, &state.rules, &original, headers, &query).await;
    respond(state, &original, decision, allow_status)
}

fn respond(
    state: &AppState,
    original: &OriginalRequest,
    decision: Decision<'_>,
    allow_status: StatusCode,
) -> HttpResponse {
    let token = decision.token.as_deref();
    let issuer = token.map_or("", |token| state.verifier.issuer_name(token.issuer));
    let subject = token
        .and_then(|token| token.identity.subject.as_deref())
        .unwrap_or("");
    let method = original.method.as_deref().unwrap_or("");
    let host = original.host.as_deref().unwrap_or("");
    let path = original.path.as_deref().unwrap_or("");
    let rule = decision.rule.unwrap_or("");
    match decision.outcome {
        Ok(verdict) => {
            state.metrics.allowed();
            tracing::debug!(
                outcome = "allow",
                anonymous = verdict == Verdict::Anonymous,
                issuer,
                sub = subject,
                method,
                host,
                path,
                rule,
                cache_hit = decision.cache_hit,
                "allowed"
            );
            let mut response = HttpResponse::build(allow_status);
            response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
            if let (Verdict::Authenticated, Some(token)) = (verdict, token) {
                for (name, value) in &token.identity.headers {
                    response.append_header((name.clone(), value.clone()));
                }
                // A caching proxy (ingress-nginx `auth-cache-key`) may keep this answer,
                // but never past the token's expiry.
                let remaining = token.expires_at.saturating_sub(unix_now());
                response.insert_header(("x-accel-expires", remaining));
            }
            response.finish()
        }
        Err(error) => {
            state.metrics.denied(error.reason);
            tracing::info!(
                outcome = "deny",
                reason = error.reason.as_str(),
                status = error.reason.status().as_u16(),
                issuer,
                sub = subject,
                method,
                host,
                path,
                rule,
                "denied"
            );
            // Library messages may quote attacker-chosen claim text: debug level only.
            if let Some(source) = &error.source {
                tracing::debug!(reason = error.reason.as_str(), detail = %source, "denial detail");
            }
            error.error_response()
        }
    }
}
