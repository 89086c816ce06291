//! OpenID Connect Back-Channel Logout 1.0: validating a logout token (§2.6).
//!
//! The token is verified like any JWT of its issuer, with the same key store and
//! algorithm allow-list ([`JwtRules::verify_signed`]) and the strict JSON parser; what
//! differs is the claims: `aud` is our client id at that issuer, `iat` is recent, `jti`
//! is new, `events` holds the back-channel-logout member, `sid` or `sub` says who, and a
//! `nonce` is refused (it would let an ID token pass as a logout token, §2.4).

use serde_json::Value;

use super::cache::unix_now;
use super::jwks::KeyStore;
use super::jwt::{check_validity_window, names_audience, normalize_typ, DecodedJwt, JwtRules};
use crate::config::BackchannelLogoutSettings;
use crate::error::AuthError;

/// The member of `events` that makes a JWT a logout token (§2.4).
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// Why a logout token was refused: the label of the log line (never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LogoutError {
    #[error("no logout_token in the form, or more than one")]
    NoToken,
    #[error("not a JWT")]
    Malformed,
    #[error("no issuer with backchannel_logout configured has this iss")]
    UnknownIssuer,
    #[error("signature, algorithm or key refused")]
    Signature,
    #[error("typ is not logout+jwt")]
    WrongType,
    #[error("aud does not name our client id")]
    WrongAudience,
    #[error("iat missing, too old or in the future")]
    BadIssuedAt,
    #[error("exp passed")]
    Expired,
    #[error("no jti")]
    NoJti,
    #[error("jti seen before: replayed")]
    Replayed,
    #[error("events has no back-channel logout member")]
    NoEvent,
    #[error("neither sid nor sub")]
    NoSubject,
    #[error("holds a nonce")]
    Nonce,
}

impl LogoutError {
    /// Stable label for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            LogoutError::NoToken => "no_token",
            LogoutError::Malformed => "malformed",
            LogoutError::UnknownIssuer => "unknown_issuer",
            LogoutError::Signature => "signature",
            LogoutError::WrongType => "wrong_type",
            LogoutError::WrongAudience => "wrong_audience",
            LogoutError::BadIssuedAt => "bad_iat",
            LogoutError::Expired => "expired",
            LogoutError::NoJti => "no_jti",
            LogoutError::Replayed => "replayed",
            LogoutError::NoEvent => "no_event",
            LogoutError::NoSubject => "no_sid_or_sub",
            LogoutError::Nonce => "nonce",
        }
    }
}

/// What a valid logout token says: the session, or else the subject, to log out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logout {
    /// The configured `issuer` string.
    pub issuer: String,
    pub sid: Option<String>,
    pub sub: Option<String>,
    pub jti: String,
}

/// True for a JWT that is, or claims to be, a logout token.
pub fn is_logout_token(jwt: &DecodedJwt<'_>) -> bool {
    jwt.header
        .typ
        .as_deref()
        .is_some_and(|typ| normalize_typ(typ) == "logout+jwt")
        || jwt
            .claims
            .get("events")
            .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT))
            .is_some()
}

/// Verifies a logout token of `issuer` (chosen by its exact `iss`) and checks its claims.
/// The `jti` is not recorded here: see [`check_claims`]' caller.
pub async fn verify(
    issuer: &JwtRules,
    keys: &KeyStore,
    settings: &BackchannelLogoutSettings,
    jwt: &DecodedJwt<'_>,
) -> Result<Logout, LogoutError> {
    // §2.6 step 3: `typ` is optional, but when present it must say `logout+jwt`.
    if jwt
        .header
        .typ
        .as_deref()
        .is_some_and(|typ| normalize_typ(typ) != "logout+jwt")
    {
        return Err(LogoutError::WrongType);
    }
    // Step 3: the signature, with this issuer's keys and algorithm allow-list.
    issuer
        .verify_signed(jwt, keys)
        .await
        .map_err(|_: AuthError| LogoutError::Signature)?;
    check_claims(issuer, settings, &jwt.claims, unix_now())
}

/// §2.6 steps 4–7 and 9, on verified claims.
pub fn check_claims(
    issuer: &JwtRules,
    settings: &BackchannelLogoutSettings,
    claims: &Value,
    now: u64,
) -> Result<Logout, LogoutError> {
    // Step 4: `iss` exactly ours (it chose the issuer; checked again as a claim).
    if claims.get("iss").and_then(Value::as_str) != Some(issuer.issuer.as_str()) {
        return Err(LogoutError::UnknownIssuer);
    }
    let ours = [settings.client_id.clone()];
    if claims.get("aud").and_then(|aud| names_audience(aud, &ours)) != Some(true) {
        return Err(LogoutError::WrongAudience);
    }
    // Step 4: `iat` present and recent, so that an old captured token is worthless once
    // its `jti` has left the replay cache.
    let leeway = issuer.leeway();
    let issued_at = claims
        .get("iat")
        .and_then(super::jwt::numeric_date)
        .ok_or(LogoutError::BadIssuedAt)?;
    if issued_at > now.saturating_add(leeway)
        || issued_at.saturating_add(settings.max_age.as_secs()) < now
    {
        return Err(LogoutError::BadIssuedAt);
    }
    // `exp` is optional in logout tokens; when present it is honoured.
    check_validity_window(claims, now, leeway).map_err(|_| LogoutError::Expired)?;
    let text = |name| match claims.get(name) {
        None => Ok(None),
        Some(Value::String(value)) if !value.is_empty() => Ok(Some(value.clone())),
        Some(_) => Err(LogoutError::Malformed),
    };
    let jti = text("jti")?.ok_or(LogoutError::NoJti)?;
    // Step 5: `events` is an object whose back-channel-logout member is an object.
    let event = claims
        .get("events")
        .and_then(|events| events.get(BACKCHANNEL_LOGOUT_EVENT));
    if !event.is_some_and(Value::is_object) {
        return Err(LogoutError::NoEvent);
    }
    // Step 6: `sid` or `sub`.
    let (sid, sub) = (text("sid")?, text("sub")?);
    if sid.is_none() && sub.is_none() {
        return Err(LogoutError::NoSubject);
    }
    // Step 7: no `nonce`, which only ID tokens carry.
    if claims.get("nonce").is_some() {
        return Err(LogoutError::Nonce);
    }
    Ok(Logout {
        issuer: issuer.issuer.clone(),
        sid,
        sub,
        jti,
    })
}
