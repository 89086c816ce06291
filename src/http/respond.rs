//! Decisions on the wire: a [`Reason`] becomes a status, an RFC 6750 challenge and a
//! fixed body; an allow carries the identity headers and one caching statement.

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;

use crate::error::Reason;
use crate::gate::{Decision, Verdict};

/// How long nginx may cache an auth answer (`auth_request` with `proxy_cache`).
pub const X_ACCEL_EXPIRES: HeaderName = HeaderName::from_static("x-accel-expires");

/// The status of a denial.
pub fn status(reason: Reason) -> StatusCode {
    StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// RFC 6750 §3.1 error code: none when no token was sent ("the resource server SHOULD
/// NOT include an error code" then), `invalid_token` for any bad token,
/// `insufficient_scope` for a missing scope, none for other denials.
fn bearer_error(reason: Reason) -> Option<&'static str> {
    match reason.status() {
        401 if reason != Reason::MissingToken => Some("invalid_token"),
        403 if reason == Reason::InsufficientScope => Some("insufficient_scope"),
        _ => None,
    }
}

/// The `WWW-Authenticate` value of a denial, if any.
pub fn challenge(reason: Reason) -> Option<&'static str> {
    match (reason.status(), bearer_error(reason)) {
        (_, Some("invalid_token")) => Some(r#"Bearer error="invalid_token""#),
        (_, Some(_)) => Some(r#"Bearer error="insufficient_scope""#),
        (401, None) => Some("Bearer"),
        _ => None,
    }
}

/// Fixed, tiny JSON body with an RFC 6750 / RFC 6749 error name: never the token, never
/// a library message. Traefik and Envoy hand it to the client as it is.
pub fn body(reason: Reason) -> &'static str {
    match reason.status() {
        503 => r#"{"error":"temporarily_unavailable"}"#,
        400 | 431 => r#"{"error":"invalid_request"}"#,
        403 if reason == Reason::InsufficientScope => r#"{"error":"insufficient_scope"}"#,
        403 => r#"{"error":"access_denied"}"#,
        _ if reason == Reason::MissingToken => r#"{"error":"unauthorized"}"#,
        _ => r#"{"error":"invalid_token"}"#,
    }
}

/// The identity headers an allow carries, in every contract: the verified token's, or
/// none for a request let through anonymously (and for a denial). A name may repeat
/// (`Impersonate-Group`).
pub fn identity_headers<'d>(
    decision: &'d Decision<'_>,
) -> impl Iterator<Item = (HeaderName, HeaderValue)> + 'd {
    let identity = match (&decision.outcome, &decision.token) {
        (Ok(Verdict::Authenticated), Some(token)) => Some(&token.identity),
        _ => None,
    };
    identity.into_iter().flat_map(|identity| identity.headers())
}

/// The headers of a denial besides its status, in every contract: never cached by a
/// proxy, a JSON body, and the RFC 6750 challenge when there is one.
pub fn denial_headers(reason: Reason) -> impl Iterator<Item = (HeaderName, &'static str)> {
    [
        Some((header::CACHE_CONTROL, "no-store")),
        Some((header::CONTENT_TYPE, "application/json")),
        Some((X_ACCEL_EXPIRES, "0")),
        challenge(reason).map(|challenge| (header::WWW_AUTHENTICATE, challenge)),
    ]
    .into_iter()
    .flatten()
}

/// The answer to a decision: `allow_status` with identity headers, or the denial.
pub fn answer(decision: &Decision<'_>, allow_status: StatusCode) -> HttpResponse {
    match &decision.outcome {
        Ok(_) => {
            let mut response = HttpResponse::build(allow_status);
            for header in identity_headers(decision) {
                response.append_header(header);
            }
            // One caching statement, said the same way in both headers: nginx reads
            // `X-Accel-Expires` or `Cache-Control`, whichever its parser meets first.
            if decision.keep_for > 0 {
                response.insert_header((
                    header::CACHE_CONTROL,
                    format!("max-age={}", decision.keep_for),
                ));
                response.insert_header((X_ACCEL_EXPIRES, decision.keep_for));
            } else {
                response
                    .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
                response.insert_header((X_ACCEL_EXPIRES, HeaderValue::from_static("0")));
            }
            response.finish()
        }
        Err(error) => denial(error.reason),
    }
}

/// A denial: its status, challenge and body, never cached by a proxy.
pub fn denial(reason: Reason) -> HttpResponse {
    let mut response = HttpResponse::build(status(reason));
    for (name, value) in denial_headers(reason) {
        response.insert_header((name, HeaderValue::from_static(value)));
    }
    response.body(body(reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_verdict_is_503_without_a_token_error() {
        for reason in [
            Reason::KeysUnavailable,
            Reason::IntrospectionUnavailable,
            Reason::IntrospectionOverloaded,
        ] {
            assert_eq!(status(reason), StatusCode::SERVICE_UNAVAILABLE);
            assert!(reason.is_no_verdict());
            assert_eq!(bearer_error(reason), None);
        }
        assert_eq!(status(Reason::InactiveToken), StatusCode::UNAUTHORIZED);
        assert_eq!(bearer_error(Reason::InactiveToken), Some("invalid_token"));
    }

    #[test]
    fn every_reason_has_a_valid_status() {
        for reason in Reason::ALL {
            assert_ne!(
                status(reason),
                StatusCode::INTERNAL_SERVER_ERROR,
                "{reason}"
            );
        }
    }
}
