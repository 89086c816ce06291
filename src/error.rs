//! One denial type for every way a request can fail, and the one cause-chain printer.
//! A denial's reason decides its status and the label used in logs and metrics; how it
//! is written on the wire (`WWW-Authenticate`, body) is the HTTP layer's
//! ([`crate::http::respond`]). The label comes from a closed enum, never from client
//! input, so metric cardinality stays bounded and logs cannot be forged.

use std::error::Error as StdError;

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
    /// A revocation names the token: its session (`sid`) ended, the token (`jti`) was
    /// revoked, or its subject (`sub`) was logged out after it was issued.
    Revoked,
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
    /// A gRPC `CheckRequest` that describes no HTTP request (no `attributes.request.http`,
    /// no method or path) or carries a header that is no valid HTTP header (a bad name,
    /// a control character, raw bytes that are not UTF-8): a broken call, refused.
    BadCheckRequest,
    /// Kubernetes impersonation with several groups over Envoy's gRPC `ext_authz`:
    /// Envoy turns several `Impersonate-Group` options into one line (the last, or all
    /// joined with `,`, which the API server reads as one group). Refused rather than
    /// sent wrong; the HTTP `ext_authz` contract carries one line per group.
    SeveralImpersonationGroups,
}

impl Reason {
    /// Every reason, for pre-registering one metric series per reason.
    pub const ALL: [Reason; 30] = [
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
        Reason::Revoked,
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
        Reason::BadCheckRequest,
        Reason::SeveralImpersonationGroups,
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
            Reason::Revoked => "revoked",
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
            Reason::BadCheckRequest => "bad_check_request",
            Reason::SeveralImpersonationGroups => "several_impersonation_groups",
        }
    }

    /// Position in [`Reason::ALL`], for array-indexed metric handles.
    pub fn index(self) -> usize {
        // `ALL` lists the variants in declaration order (a test checks it).
        self as usize
    }

    /// The HTTP status of this denial, in every protocol tokengate answers (the gRPC
    /// contract carries the same status in its denied response).
    pub fn status(self) -> u16 {
        match self {
            // No verdict is possible: 503, which nginx turns into a 500, so the request
            // fails closed instead of being let through.
            Reason::KeysUnavailable
            | Reason::IntrospectionUnavailable
            | Reason::IntrospectionOverloaded => 503,
            // A request that can be read two ways, or a broken call from the proxy: nginx
            // turns 400 into 500 (fail closed).
            Reason::AmbiguousRequest
            | Reason::AmbiguousPath
            | Reason::BadPolicy
            | Reason::BadCheckRequest => 400,
            Reason::HeadersTooLarge => 431,
            // A valid token that the policy does not let through (RFC 6750 §3.1).
            Reason::RouteDenied
            | Reason::NotInGroup
            | Reason::EmailNotAllowed
            | Reason::InsufficientScope
            | Reason::IdentityTooLarge
            | Reason::UnusableIdentity
            | Reason::ForgedImpersonation
            | Reason::SeveralImpersonationGroups => 403,
            _ => 401,
        }
    }

    /// True when no verdict was possible (the issuer's keys or introspection failed):
    /// an error of ours or the issuer's, not a judgement of the request.
    pub fn is_no_verdict(self) -> bool {
        self.status() == 503
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
                | Reason::Revoked
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
                | Reason::ForgedImpersonation
                | Reason::BadCheckRequest
                | Reason::SeveralImpersonationGroups => {}
            }
        }
        let labels: std::collections::HashSet<_> =
            Reason::ALL.iter().map(|reason| reason.as_str()).collect();
        assert_eq!(labels.len(), Reason::ALL.len());
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), index);
        }
    }
}
