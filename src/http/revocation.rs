//! Revocation endpoints: `POST /backchannel-logout` on the auth listener (OpenID
//! Connect Back-Channel Logout 1.0, called by the issuers) and `POST /revocations` on
//! the admin listener (an operator's revoke, behind a bearer secret).
//!
//! Both answer bad input with a 400 and a log line naming why, never a 5xx, and never
//! log or echo the token or the secret.

use std::time::Duration;

use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse};
use aws_lc_rs::{constant_time, digest};
use serde::Deserialize;
use url::form_urlencoded;

use super::AppState;
use crate::revocation::{Event, EventResult, Kind, Source};
use crate::verify::admission::LogLimiter;
use crate::verify::json;
use crate::verify::logout::LogoutError;

/// How often a refusal line may be written per endpoint; the refusals in between are
/// counted into the next line (`refused_since_last_line`).
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// One limiter per endpoint, so a flood at one does not hide refusals at the other.
pub struct RefusalLogs {
    logout: LogLimiter,
    revoke: LogLimiter,
}

impl Default for RefusalLogs {
    fn default() -> Self {
        Self {
            logout: LogLimiter::new(REFUSAL_LOG_INTERVAL),
            revoke: LogLimiter::new(REFUSAL_LOG_INTERVAL),
        }
    }
}

/// Largest back-channel logout request body: a form with one signed JWT, a few KiB.
pub const MAX_LOGOUT_BODY: usize = 16 * 1024;
/// Largest revoke request body.
pub const MAX_REVOKE_BODY: usize = 4 * 1024;

/// The admin endpoint's secret, kept only as its SHA-256: comparing digests of equal
/// length in constant time leaks neither the secret nor its length.
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(secret: &str) -> Self {
        Self(sha256(secret.as_bytes()))
    }

    fn matches(&self, given: &[u8]) -> bool {
        constant_time::verify_slices_are_equal(&self.0, &sha256(given)).is_ok()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// Back-Channel Logout 1.0 §2.8: 200 with `Cache-Control: no-store` when the logout was
/// done, 400 `invalid_request` when the token is refused (and nothing is revoked).
pub async fn backchannel_logout(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    // The runtime this request started with: a reload swaps it, not the store.
    let runtime = state.runtime.load_full();
    let verifier = &runtime.gate.verifier;
    if !verifier.accepts_logouts() {
        return HttpResponse::NotFound().finish();
    }
    let revocations = &state.revocations;
    let refused = |why: &str| {
        revocations
            .metrics
            .event(Source::Backchannel, EventResult::Refused);
        if let Some(count) = state.revocation_refusal_logs.logout.event() {
            tracing::info!(
                target: "tokengate::revocation",
                source = "backchannel",
                refused = why,
                refused_since_last_line = count,
                "logout token refused"
            );
        }
        invalid_request()
    };
    // An oversized or unreadable body is the client's error: 400, never 413 or 5xx.
    let Ok(body) = body else {
        return refused("body_too_large_or_unreadable");
    };
    if !is_form(request.headers()) {
        return refused("not_a_form");
    }
    let mut tokens = form_urlencoded::parse(&body)
        .filter(|(name, _)| name == "logout_token")
        .map(|(_, value)| value);
    let token = match (tokens.next(), tokens.next()) {
        (Some(token), None) => token,
        _ => return refused(LogoutError::NoToken.as_str()),
    };
    let logout = match verifier.verify_logout_token(&token).await {
        Ok(logout) => logout,
        Err(error) => return refused(error.as_str()),
    };
    // A session named: that session ends. Only a subject: every token it was issued
    // until now (§2.4: "all sessions" of the subject at this RP).
    let (kind, value) = match (&logout.sid, &logout.sub) {
        (Some(sid), _) => (Kind::Sid, sid),
        (None, Some(sub)) => (Kind::Sub, sub),
        (None, None) => return refused(LogoutError::NoSubject.as_str()),
    };
    let result = revocations.record(Event::new(&logout.issuer, kind, value), Source::Backchannel);
    tracing::info!(
        target: "tokengate::revocation",
        source = "backchannel",
        issuer = %logout.issuer,
        kind = kind.as_str(),
        sub = logout.sub.as_deref().unwrap_or(""),
        result = result.as_str(),
        "back-channel logout"
    );
    if result != EventResult::Applied {
        // Not held (a value over the size bound): the IdP must not believe it worked.
        return invalid_request();
    }
    no_store(HttpResponse::Ok()).finish()
}

/// Back-Channel Logout §2.8 and the revoke endpoint's refusal: 400 `invalid_request`.
fn invalid_request() -> HttpResponse {
    no_store(HttpResponse::BadRequest())
        .content_type("application/json")
        .body(r#"{"error":"invalid_request"}"#)
}

/// `Authorization: Bearer <credentials>`, the scheme in any case (RFC 7235 §2.1).
fn bearer_credentials(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let scheme = value.get(..7)?;
    scheme.eq_ignore_ascii_case(b"bearer ").then(|| &value[7..])
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

fn no_store(mut response: actix_web::HttpResponseBuilder) -> actix_web::HttpResponseBuilder {
    response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
    response
}

/// The body of `POST /revocations`: an issuer and exactly one of `sub`, `sid`, `jti`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    issuer: String,
    sub: Option<String>,
    sid: Option<String>,
    jti: Option<String>,
}

/// An operator's revoke: `Authorization: Bearer <revocation.admin_token_file's secret>`,
/// `{"issuer": …, "sub"|"sid"|"jti": …}`. Off (404) without a configured secret.
pub async fn revoke(
    state: web::Data<AppState>,
    request: HttpRequest,
    body: Result<web::Bytes, actix_web::Error>,
) -> HttpResponse {
    let Some(admin_token) = &state.revocation_admin_token else {
        return HttpResponse::NotFound().finish();
    };
    let revocations = &state.revocations;
    let bearer = bearer_credentials(request.headers());
    let refusal_log = &state.revocation_refusal_logs.revoke;
    if !bearer.is_some_and(|given| admin_token.matches(given)) {
        if let Some(count) = refusal_log.event() {
            tracing::warn!(
                target: "tokengate::revocation",
                source = "admin",
                refused_since_last_line = count,
                "revoke refused: missing or wrong bearer secret"
            );
        }
        return no_store(HttpResponse::Unauthorized())
            .insert_header((header::WWW_AUTHENTICATE, "Bearer"))
            .content_type("application/json")
            .body(r#"{"error":"unauthorized"}"#);
    }
    let bad = |why: &str| {
        revocations
            .metrics
            .event(Source::Admin, EventResult::Refused);
        if let Some(count) = refusal_log.event() {
            tracing::info!(
                target: "tokengate::revocation",
                source = "admin",
                refused = why,
                refused_since_last_line = count,
                "revoke refused"
            );
        }
        invalid_request()
    };
    let Ok(body) = body else {
        return bad("body_too_large_or_unreadable");
    };
    let Ok(revoke) = json::from_slice(&body).and_then(RevokeRequest::deserialize) else {
        return bad("not_a_revoke_request");
    };
    let (kind, value) = match (revoke.sub, revoke.sid, revoke.jti) {
        (Some(sub), None, None) => (Kind::Sub, sub),
        (None, Some(sid), None) => (Kind::Sid, sid),
        (None, None, Some(jti)) => (Kind::Jti, jti),
        _ => return bad("not_exactly_one_of_sub_sid_jti"),
    };
    let configured = state
        .runtime
        .load()
        .gate
        .verifier
        .by_issuer(&revoke.issuer)
        .is_some();
    if !configured {
        return bad("unknown_issuer");
    }
    let result = revocations.record(Event::new(&revoke.issuer, kind, &value), Source::Admin);
    tracing::info!(
        target: "tokengate::revocation",
        source = "admin",
        issuer = %revoke.issuer,
        kind = kind.as_str(),
        result = result.as_str(),
        "revoked"
    );
    if result != EventResult::Applied {
        return invalid_request();
    }
    no_store(HttpResponse::Ok())
        .content_type("application/json")
        .body(format!(r#"{{"revoked":"{}"}}"#, kind.as_str()))
}
