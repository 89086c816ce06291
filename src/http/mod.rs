//! Thin adapters: read what the proxy sent into an [`AuthQuery`], call the [`Gate`],
//! render the [`Decision`] and write one log line.
//!
//! - [`auth`]: `/auth` for nginx `auth_request`, ingress-nginx and Traefik `forwardAuth`;
//! - [`ext_authz`]: `/ext-authz/…` for Envoy's HTTP `ext_authz`;
//! - [`respond`]: reasons and decisions on the wire;
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` on the admin listener;
//! - [`revocation`]: `/backchannel-logout` (auth listener) and `/revocations` (admin).

pub mod admin;
pub mod auth;
pub mod ext_authz;
pub mod respond;
pub mod revocation;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use actix_web::http::header::{self, HeaderMap, HeaderName};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use arc_swap::ArcSwap;
use prometheus::Registry;
use tracing::Level;

use crate::config::AllowLogLevel;
use crate::error::{AuthError, Reason};
use crate::gate::{AuthQuery, Decision, Verdict};
use crate::identity::Identity;
use crate::metrics::{Metrics, Outcome};
use crate::policy::Requirements;
use crate::request::{extract_token, OriginalRequest};
use crate::runtime::Runtime;

/// State shared by every worker of every listener, built once.
pub struct AppState {
    /// The compiled configuration; a reload swaps it whole.
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Revocations: held here, outside the runtime, so that they outlive reloads.
    pub revocations: Arc<crate::revocation::Revocations>,
    /// The bearer secret of `POST /revocations` (read at start-up); `None`: it is off.
    pub revocation_admin_token: Option<revocation::AdminToken>,
    /// Refused logout tokens and revoke calls are logged at most once per interval,
    /// with a count: anyone who can reach the endpoint must not be able to flood the log.
    pub revocation_refusal_logs: revocation::RefusalLogs,
    /// Set on shutdown so that `/readyz` turns not-ready before the listener closes.
    pub shutting_down: AtomicBool,
}

/// Which contract a call came in on, for the audit line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `/auth`: nginx `auth_request`, ingress-nginx, Traefik `forwardAuth`.
    Auth,
    /// `/ext-authz/…`: Envoy's HTTP `ext_authz`.
    ExtAuthzHttp,
    /// `Check` on the gRPC listener: Envoy's gRPC `ext_authz`.
    ExtAuthzGrpc,
}

impl Contract {
    pub fn as_str(self) -> &'static str {
        match self {
            Contract::Auth => "auth",
            Contract::ExtAuthzHttp => "ext_authz_http",
            Contract::ExtAuthzGrpc => "ext_authz_grpc",
        }
    }
}

/// Answers an HTTP call: [`judge`], rendered as an HTTP response with `allow_status` on
/// success (the runtime's `success_status` when `None`).
async fn decide(
    runtime: &Runtime,
    metrics: &Metrics,
    contract: Contract,
    headers: &HeaderMap,
    original: Result<OriginalRequest, AuthError>,
    requirements: Result<Requirements, AuthError>,
    allow_status: Option<StatusCode>,
) -> HttpResponse {
    let allow_status = allow_status.unwrap_or(runtime.success_status);
    judge(
        runtime,
        metrics,
        contract,
        headers,
        original,
        requirements,
        |decision| respond::answer(decision, allow_status),
    )
    .await
}

/// The one path of every adapter's call, whatever its protocol: the head limits and the
/// impersonation check, the token from the configured sources, the CORS preflight, the
/// [`Gate`](crate::gate::Gate)'s decision, then `render` (the adapter's answer), the
/// metrics and the audit line. `headers` are the client's request headers as the proxy
/// passed them on; `original` and `requirements` are what the adapter read from its
/// proxy's call with the same `runtime`. `render` may turn an allow into a denial that
/// only its contract needs: it changes the decision, so that the metrics and the log
/// line say what was answered.
pub(crate) async fn judge<R>(
    runtime: &Runtime,
    metrics: &Metrics,
    contract: Contract,
    headers: &HeaderMap,
    original: Result<OriginalRequest, AuthError>,
    requirements: Result<Requirements, AuthError>,
    render: impl FnOnce(&mut Decision<'_>) -> R,
) -> R {
    let started = Instant::now();
    let _in_flight = metrics.in_flight();
    let read = check_head(runtime, headers).and_then(|()| Ok((original?, requirements?)));
    let (original, mut decision) = match read {
        Ok((original, requirements)) => {
            let query = AuthQuery {
                preflight: is_cors_preflight(&original, headers),
                original: &original,
                requirements,
                token: extract_token(headers, &runtime.token_sources, runtime.max_token_length),
            };
            let decision = runtime.gate.decide(query).await;
            (original, decision)
        }
        Err(error) => (OriginalRequest::default(), Decision::refused(error)),
    };
    let response = render(&mut decision);
    let elapsed = started.elapsed();
    let result = decision
        .outcome
        .as_ref()
        .map(|_| ())
        .map_err(|error| error.reason);
    metrics.decided(result, elapsed);
    audit(runtime, contract, headers, &original, &decision, elapsed);
    response
}

/// What is refused about the call's head before anything in it is read.
fn check_head(runtime: &Runtime, headers: &HeaderMap) -> Result<(), AuthError> {
    if headers.len() > runtime.max_headers || head_bytes(headers) > runtime.max_header_bytes {
        return Err(Reason::HeadersTooLarge.into());
    }
    if runtime.refuse_impersonation_headers && has_impersonation_header(headers) {
        return Err(Reason::ForgedImpersonation.into());
    }
    Ok(())
}

/// A CORS preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_cors_preflight(original: &OriginalRequest, headers: &HeaderMap) -> bool {
    const ORIGIN: HeaderName = HeaderName::from_static("origin");
    const REQUEST_METHOD: HeaderName = HeaderName::from_static("access-control-request-method");
    original.method.as_deref() == Some("OPTIONS")
        && headers.contains_key(ORIGIN)
        && headers.contains_key(REQUEST_METHOD)
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
    runtime: &Runtime,
    contract: Contract,
    headers: &HeaderMap,
    original: &OriginalRequest,
    decision: &Decision<'_>,
    elapsed: std::time::Duration,
) {
    let level = match &decision.outcome {
        Ok(_) => match runtime.allow_log_level {
            AllowLogLevel::Off => return,
            AllowLogLevel::Debug => Level::DEBUG,
            AllowLogLevel::Info => Level::INFO,
        },
        // An overloaded introspection queue is summarised by one rate-limited warning
        // with counts; each refused request still gets its decision line.
        Err(error) if error.reason == Reason::IntrospectionOverloaded => Level::INFO,
        Err(error) if error.reason.is_no_verdict() => Level::WARN,
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
                reason.status(),
            )
        }
    };
    macro_rules! line {
        ($macro:ident) => {
            tracing::$macro!(
                target: "tokengate::audit",
                request_id = %request_id,
                contract = contract.as_str(),
                outcome,
                reason,
                status,
                issuer = token.map_or("", |token| runtime.gate.verifier.issuer_name(token.issuer)),
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
