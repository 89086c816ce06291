//! One denial type for every way a request can fail. It decides the status, the
//! `WWW-Authenticate` header, the fixed response body and the reason label used in logs
//! and metrics. The label comes from a closed enum, never from client input, so metric
//! cardinality stays bounded and logs cannot be forged.

use std::error::Error as StdError;

use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// How long nginx may cache an auth answer (`auth_request` with `proxy_cache`).
pub const X_ACCEL_EXPIRES: HeaderName = HeaderName::from_static("x-accel-expires");

/// Why a request was not allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// No token in any configured source.
    MissingToken,
    /// Longer than `token.max_length`: refused before any parsing.
    TokenTooLarge,
    /// Not a well-formed JWT (segments, base64url, JSON, header).
    MalformedToken,
    /// `iss` names no configured issuer (or is missing).
    UnknownIssuer,
    /// The token's `alg` is not in the issuer's allow-list or does not fit the key.
    AlgorithmNotAllowed,
    /// No key with the token's `kid`, even after a refetch.
    UnknownKey,
    /// The JOSE `typ` header is not the required one.
    WrongTokenType,
    /// The signature does not verify.
    BadSignature,
    /// `exp` is in the past (beyond the leeway).
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    NotYetValid,
    /// `aud` holds none of the configured audiences.
    WrongAudience,
    /// A required claim is missing or has the wrong type.
    InvalidClaims,
    /// The issuer's keys were never loaded, or are too stale to trust: no verdict.
    KeysUnavailable,
    /// RFC 7662 introspection answered `active: false`: revoked, expired or unknown to
    /// the issuer.
    InactiveToken,
    /// The introspection endpoint could not give an answer (unreachable, timeout, 5xx,
    /// refused our client credentials, unreadable answer): no verdict.
    IntrospectionUnavailable,
    /// The issuer's introspection slots stayed taken: its wait queue was full, or the
    /// wait for a slot ran past `introspection.max_wait`.
    IntrospectionOverloaded,
    /// The proxies' original-request headers contradict each other (see
    /// [`crate::request::ProxyHeaders::Auto`]), or the original URL or `Host` is not a
    /// strictly valid authority and path.
    AmbiguousRequest,
    /// The original path could be read two ways (dot segments, encoded `/` or `\`, a raw
    /// `\`, controls, …): refused before any rule is matched, because the upstream may
    /// resolve it to another route than the one tokengate matched.
    AmbiguousPath,
    /// The request head exceeds `server.max_header_bytes` or `server.max_headers`.
    HeadersTooLarge,
    /// The auth URL's query string holds an unknown policy parameter: a proxy
    /// misconfiguration, refused rather than ignored.
    BadPolicy,
    /// A route rule with `deny: true` matched.
    RouteDenied,
    /// The identity is in none of the allowed groups.
    NotInGroup,
    /// The email (or its domain) is not allowed.
    EmailNotAllowed,
    /// A required scope is missing.
    InsufficientScope,
    /// The identity headers would exceed `identity.max_headers_bytes`.
    IdentityTooLarge,
    /// Kubernetes impersonation without a user to impersonate.
    UnusableIdentity,
    /// The client itself sent an `Impersonate-*` header (in any spelling) while
    /// tokengate speaks Kubernetes impersonation: refused, since no proxy can be trusted
    /// to remove every such header (`Impersonate-Extra-*` has no fixed name).
    ForgedImpersonation,
}

impl Reason {
    /// Every reason, for pre-registering one metric series per reason.
    pub const ALL: [Reason; 27] = [
        Reason::MissingToken,
        Reason::TokenTooLarge,
        Reason::MalformedToken,
        Reason::UnknownIssuer,
        Reason::AlgorithmNotAllowed,
        Reason::UnknownKey,
        Reason::WrongTokenType,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::WrongAudience,
        Reason::InvalidClaims,
        Reason::KeysUnavailable,
        Reason::InactiveToken,
        Reason::IntrospectionUnavailable,
        Reason::IntrospectionOverloaded,
        Reason::AmbiguousRequest,
        Reason::AmbiguousPath,
        Reason::HeadersTooLarge,
        Reason::BadPolicy,
        Reason::RouteDenied,
        Reason::NotInGroup,
        Reason::EmailNotAllowed,
        Reason::InsufficientScope,
        Reason::IdentityTooLarge,
        Reason::UnusableIdentity,
        Reason::ForgedImpersonation,
    ];

    /// Stable label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MissingToken => "missing_token",
            Reason::TokenTooLarge => "token_too_large",
            Reason::MalformedToken => "malformed_token",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::AlgorithmNotAllowed => "algorithm_not_allowed",
            Reason::UnknownKey => "unknown_key",
            Reason::WrongTokenType => "wrong_token_type",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongAudience => "wrong_audience",
            Reason::InvalidClaims => "invalid_claims",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::InactiveToken => "inactive_token",
            Reason::IntrospectionUnavailable => "introspection_unavailable",
            Reason::IntrospectionOverloaded => "introspection_overloaded",
            Reason::AmbiguousRequest => "ambiguous_request",
            Reason::AmbiguousPath => "ambiguous_path",
            Reason::HeadersTooLarge => "headers_too_large",
            Reason::BadPolicy => "bad_policy",
            Reason::RouteDenied => "route_denied",
            Reason::NotInGroup => "not_in_group",
            Reason::EmailNotAllowed => "email_not_allowed",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::IdentityTooLarge => "identity_too_large",
            Reason::UnusableIdentity => "unusable_identity",
            Reason::ForgedImpersonation => "forged_impersonation",
        }
    }

    /// Position in [`Reason::ALL`], for array-indexed metric handles.
    pub fn index(self) -> usize {
        // `ALL` lists the variants in declaration order (a test checks it).
        self as usize
    }

    /// HTTP status for this reason.
    pub fn status(self) -> StatusCode {
        match self {
            // No verdict is possible: 503, which nginx turns into a 500, so the request
            // fails closed instead of being let through.
            Reason::KeysUnavailable
            | Reason::IntrospectionUnavailable
            | Reason::IntrospectionOverloaded => StatusCode::SERVICE_UNAVAILABLE,
            // A broken request from the proxy: nginx turns 400 into 500 (fail closed).
            Reason::AmbiguousRequest | Reason::AmbiguousPath | Reason::BadPolicy => {
                StatusCode::BAD_REQUEST
            }
            Reason::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            // A valid token that the policy does not let through (RFC 6750 §3.1).
            Reason::RouteDenied
            | Reason::NotInGroup
            | Reason::EmailNotAllowed
            | Reason::InsufficientScope
            | Reason::IdentityTooLarge
            | Reason::UnusableIdentity
            | Reason::ForgedImpersonation => StatusCode::FORBIDDEN,
            _ => StatusCode::UNAUTHORIZED,
        }
    }

    /// RFC 6750 §3.1 error code: none when no token was sent ("the resource server SHOULD
    /// NOT include an error code" then), `invalid_token` for any bad token,
    /// `insufficient_scope` for a missing scope, none for other denials.
    fn bearer_error(self) -> Option<&'static str> {
        match self.status() {
            StatusCode::UNAUTHORIZED if self != Reason::MissingToken => Some("invalid_token"),
            StatusCode::FORBIDDEN if self == Reason::InsufficientScope => {
                Some("insufficient_scope")
            }
            _ => None,
        }
    }

    /// `WWW-Authenticate` value, if any.
    fn challenge(self) -> Option<&'static str> {
        match (self.status(), self.bearer_error()) {
            (_, Some("invalid_token")) => Some(r#"Bearer error="invalid_token""#),
            (_, Some(_)) => Some(r#"Bearer error="insufficient_scope""#),
            (StatusCode::UNAUTHORIZED, None) => Some("Bearer"),
            _ => None,
        }
    }

    /// Fixed, tiny JSON body with an RFC 6750 / RFC 6749 error name: never the token,
    /// never a library message. Traefik hands it to the client as it is.
    fn body(self) -> &'static str {
        match self.status() {
            StatusCode::SERVICE_UNAVAILABLE => r#"{"error":"temporarily_unavailable"}"#,
            StatusCode::BAD_REQUEST | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => {
                r#"{"error":"invalid_request"}"#
            }
            StatusCode::FORBIDDEN if self == Reason::InsufficientScope => {
                r#"{"error":"insufficient_scope"}"#
            }
            StatusCode::FORBIDDEN => r#"{"error":"access_denied"}"#,
            _ if self == Reason::MissingToken => r#"{"error":"unauthorized"}"#,
            _ => r#"{"error":"invalid_token"}"#,
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error with its causes, `outer: inner: innermost`: the one way tokengate prints an
/// error chain, in log fields and on stderr.
pub struct CauseChain<'a>(pub &'a dyn StdError);

impl std::fmt::Display for CauseChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(cause) = source {
            write!(f, ": {cause}")?;
            source = cause.source();
        }
        Ok(())
    }
}

/// A denial, with the underlying library error kept for debug logs only.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct AuthError {
    pub reason: Reason,
    #[source]
    pub source: Option<Box<dyn StdError + Send + Sync>>,
}

impl AuthError {
    pub fn new(reason: Reason) -> Self {
        Self {
            reason,
            source: None,
        }
    }

    pub fn with_source(reason: Reason, source: impl StdError + Send + Sync + 'static) -> Self {
        Self {
            reason,
            source: Some(Box::new(source)),
        }
    }
}

impl From<Reason> for AuthError {
    fn from(reason: Reason) -> Self {
        AuthError::new(reason)
    }
}

impl ResponseError for AuthError {
    fn status_code(&self) -> StatusCode {
        self.reason.status()
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status_code());
        response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
        response.insert_header((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
        // Tell a caching proxy (ingress-nginx `auth-cache-key`) never to keep a denial.
        response.insert_header((X_ACCEL_EXPIRES, HeaderValue::from_static("0")));
        if let Some(challenge) = self.reason.challenge() {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            ));
        }
        response.body(self.reason.body())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_lists_every_reason_once() {
        // Adding a variant breaks this match: extend `Reason::ALL` (and this list) too.
        for reason in Reason::ALL {
            match reason {
                Reason::MissingToken
                | Reason::TokenTooLarge
                | Reason::MalformedToken
                | Reason::UnknownIssuer
                | Reason::AlgorithmNotAllowed
                | Reason::UnknownKey
                | Reason::WrongTokenType
                | Reason::BadSignature
                | Reason::Expired
                | Reason::NotYetValid
                | Reason::WrongAudience
                | Reason::InvalidClaims
                | Reason::KeysUnavailable
                | Reason::InactiveToken
                | Reason::IntrospectionUnavailable
                | Reason::IntrospectionOverloaded
                | Reason::AmbiguousRequest
                | Reason::AmbiguousPath
                | Reason::HeadersTooLarge
                | Reason::BadPolicy
                | Reason::RouteDenied
                | Reason::NotInGroup
                | Reason::EmailNotAllowed
                | Reason::InsufficientScope
                | Reason::IdentityTooLarge
                | Reason::UnusableIdentity
                | Reason::ForgedImpersonation => {}
            }
        }
        let labels: std::collections::HashSet<_> =
            Reason::ALL.iter().map(|reason| reason.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), index);
        }
    }

    #[test]
    fn no_verdict_is_503_without_a_token_error() {
        for reason in [
            Reason::KeysUnavailable,
            Reason::IntrospectionUnavailable,
            Reason::IntrospectionOverloaded,
        ] {
            assert_eq!(reason.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(reason.bearer_error(), None);
        }
        assert_eq!(Reason::InactiveToken.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(Reason::InactiveToken.bearer_error(), Some("invalid_token"));
    }
}
