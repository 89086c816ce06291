//! Thin handlers: read what the proxy sent, call the policy and the verifier, map the
//! outcome to an answer and one log line.
//!
//! - [`auth`]: `/auth` for nginx `auth_request`, ingress-nginx and Traefik `forwardAuth`;
//! - [`ext_authz`]: `/ext-authz/…` for Envoy's HTTP `ext_authz`;
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` on the admin listener.

pub mod admin;
pub mod auth;
pub mod ext_authz;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use prometheus::Registry;
use tracing::Level;

use crate::config::AllowLogLevel;
use crate::error::{AuthError, Reason, X_ACCEL_EXPIRES};
use crate::identity::Identity;
use crate::metrics::{Metrics, Outcome};
use crate::policy::{self, Decision, Requirements, RouteRules, Verdict};
use crate::request::{OriginalRequest, PathParameters, ProxyHeaders};
use crate::verify::cache::unix_now;
use crate::verify::Verifier;

/// State shared by every worker of both listeners, built once.
pub struct AppState {
    pub verifier: Verifier,
    pub rules: RouteRules,
    pub proxy_headers: ProxyHeaders,
    pub path_parameters: PathParameters,
    /// Refuse client-sent `Impersonate-*` headers (Kubernetes impersonation output).
    pub refuse_impersonation_headers: bool,
    /// Whether an allow may tell a caching proxy to keep it (see [`proxy_cacheable`]).
    pub proxy_cache_route_verdicts: bool,
    /// Some rule matches on host, path or method.
    pub rules_are_conditional: bool,
    /// Bounds on the request head (`server.max_header_bytes`, `server.max_headers`).
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Status of an allowed `/auth` request.
    pub success_status: StatusCode,
    /// Level of the audit line of an allowed request.
    pub allow_log_level: AllowLogLevel,
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
    let started = Instant::now();
    let _in_flight = state.metrics.in_flight();
    let original = original.and_then(|original| {
        if headers.len() > state.max_headers || head_bytes(headers) > state.max_header_bytes {
            return Err(Reason::HeadersTooLarge.into());
        }
        if state.refuse_impersonation_headers && has_impersonation_header(headers) {
            return Err(Reason::ForgedImpersonation.into());
        }
        Ok(original)
    });
    let mut cacheable = false;
    let (original, decision) = match (original, query) {
        (Ok(original), Ok(query)) => {
            cacheable = proxy_cacheable(state, &query);
            let decision =
                policy::authorize(&state.verifier, &state.rules, &original, headers, &query).await;
            (original, decision)
        }
        (Err(error), _) | (_, Err(error)) => {
            let decision = Decision {
                outcome: Err(error),
                token: None,
                cache_hit: false,
                rule: None,
            };
            (OriginalRequest::default(), decision)
        }
    };
    let response = respond(state, &decision, allow_status, cacheable);
    let elapsed = started.elapsed();
    let result = decision
        .outcome
        .as_ref()
        .map(|_| ())
        .map_err(|error| error.reason);
    state.metrics.decided(result, elapsed);
    audit(state, headers, &original, &decision, elapsed);
    response
}

/// Whether an allow may be kept by a caching proxy. Its cache key is the operator's
/// (ingress-nginx `auth-cache-key`), often the token alone: an allow that depended on the
/// route (a rule on host, path or method, or requirements in the auth URL) would then be
/// served for another route. So only with no such dependency, or the operator's opt-in.
fn proxy_cacheable(state: &AppState, query: &Requirements) -> bool {
    state.proxy_cache_route_verdicts || (!state.rules_are_conditional && query.is_empty())
}

fn respond(
    state: &AppState,
    decision: &Decision<'_>,
    allow_status: StatusCode,
    cacheable: bool,
) -> HttpResponse {
    match &decision.outcome {
        Ok(verdict) => {
            let mut response = HttpResponse::build(allow_status);
            let mut keep_for = 0;
            if let (Verdict::Authenticated, Some(token)) = (verdict, &decision.token) {
                for header in token.identity.headers() {
                    response.append_header(header);
                }
                // Never past the token's expiry, nor longer than we would trust it
                // ourselves without checking again.
                if cacheable {
                    keep_for = token
                        .expires_at
                        .saturating_sub(unix_now())
                        .min(state.verifier.proxy_cache_cap(token.issuer));
                }
            }
            // One caching statement, said the same way in both headers: nginx reads
            // `X-Accel-Expires` or `Cache-Control`, whichever its parser meets first.
            if keep_for > 0 {
                response.insert_header((header::CACHE_CONTROL, format!("max-age={keep_for}")));
                response.insert_header((X_ACCEL_EXPIRES, keep_for));
            } else {
                response
                    .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
                response.insert_header((X_ACCEL_EXPIRES, HeaderValue::from_static("0")));
            }
            response.finish()
        }
        Err(error) => error.error_response(),
    }
}

/// Bytes of every header name and value, as the limit counts them.
fn head_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

/// A header the client sent that the Kubernetes API server would read as an
/// impersonation header: `Impersonate-User`, `-Group`, `-Uid`, `-Extra-<any>`, in any
/// case and with `_` for `-` (CGI-style servers map them alike).
fn has_impersonation_header(headers: &HeaderMap) -> bool {
    const PREFIX: &[u8] = b"impersonate-";
    headers.keys().any(|name| {
        let name = name.as_str().as_bytes();
        name.len() >= PREFIX.len()
            && name
                .iter()
                .zip(PREFIX)
                .all(|(&byte, &wanted)| byte == wanted || (byte == b'_' && wanted == b'-'))
    })
}

/// One structured line per decision (target `tokengate::audit`): who, what, which way
/// and why. Never the token, a cookie or the query string.
fn audit(
    state: &AppState,
    headers: &HeaderMap,
    original: &OriginalRequest,
    decision: &Decision<'_>,
    elapsed: std::time::Duration,
) {
    let level = match &decision.outcome {
        Ok(_) => match state.allow_log_level {
            AllowLogLevel::Off => return,
            AllowLogLevel::Debug => Level::DEBUG,
            AllowLogLevel::Info => Level::INFO,
        },
        // An overloaded introspection queue is summarised by one rate-limited warning
        // with counts; each refused request still gets its decision line.
        Err(error) if error.reason == Reason::IntrospectionOverloaded => Level::INFO,
        Err(error) if error.reason.status().is_server_error() => Level::WARN,
        Err(_) => Level::INFO,
    };
    // Checked before any field is formatted: a disabled level costs one comparison.
    let enabled = match level {
        Level::DEBUG => tracing::enabled!(target: "tokengate::audit", Level::DEBUG),
        Level::WARN => tracing::enabled!(target: "tokengate::audit", Level::WARN),
        _ => tracing::enabled!(target: "tokengate::audit", Level::INFO),
    };
    if !enabled {
        return;
    }
    let token = decision.token.as_deref();
    let identity = token.map(|token| &token.identity);
    let request_id = request_id(headers);
    let (outcome, reason, status) = match &decision.outcome {
        Ok(Verdict::Authenticated) => ("allow", "ok", 200),
        Ok(Verdict::Anonymous) => ("allow", "anonymous", 200),
        Err(error) => {
            let reason = error.reason;
            (
                Outcome::of(Err(reason)).as_str(),
                reason.as_str(),
                reason.status().as_u16(),
            )
        }
    };
    macro_rules! line {
        ($macro:ident) => {
            tracing::$macro!(
                target: "tokengate::audit",
                request_id = %request_id,
                outcome,
                reason,
                status,
                issuer = token.map_or("", |token| state.verifier.issuer_name(token.issuer)),
                sub = identity.and_then(Identity::subject).unwrap_or(""),
                user = identity.and_then(Identity::user).unwrap_or(""),
                client_id = identity.and_then(Identity::client_id).unwrap_or(""),
                method = original.method.as_deref().unwrap_or(""),
                host = original.host.as_deref().unwrap_or(""),
                path = original.path.as_deref().unwrap_or(""),
                rule = decision.rule.unwrap_or(""),
                cache_hit = decision.cache_hit,
                latency_us = elapsed.as_micros() as u64,
                "decision"
            )
        };
    }
    match level {
        Level::DEBUG => line!(debug),
        Level::WARN => line!(warn),
        _ => line!(info),
    }
    if let Err(error) = &decision.outcome {
        // Library messages may quote attacker-chosen claim text: debug level only.
        if let Some(source) = &error.source {
            tracing::debug!(request_id = %request_id, reason = error.reason.as_str(), detail = %source, "denial detail");
        }
    }
}

/// The proxy's `X-Request-ID` (ingress-nginx and Traefik set one) when it is a sane token,
/// else a new one: a process-random prefix and a counter, unique without a syscall.
fn request_id(headers: &HeaderMap) -> Cow<'_, str> {
    const X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
    if let Some(id) = headers
        .get(X_REQUEST_ID)
        .and_then(|value| value.to_str().ok())
        .filter(|id| (1..=128).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic()))
    {
        return Cow::Borrowed(id);
    }
    static PREFIX: OnceLock<String> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 6];
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    Cow::Owned(format!(
        "tg-{prefix}-{}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}
