//! RFC 7662 token introspection: asking the issuer whether a token is active, and the
//! cache of its answers.
//!
//! An opaque token can only be judged by its issuer, and a JWT can only be revoked
//! before its `exp` if someone asks. Asking on every request would put the issuer on
//! the hot path, so answers are cached, keyed by the token's SHA-256:
//!
//! - `active: true` answers for `min(positive_ttl, exp − now)`: **`positive_ttl` is the
//!   revocation window**, a token revoked at the issuer keeps passing that long at most;
//! - `active: false` answers (and answers whose claims we refuse) for `negative_ttl`, so
//!   that a client retrying a dead token does not hammer the issuer;
//! - errors and timeouts are never cached: the next request asks again.
//!
//! Concurrent misses for one token share one upstream call (moka's `try_get_with`).
//! Each issuer bounds its calls in flight, with a short first-come-first-served wait for
//! a free slot and a bound on the waiters ([`super::admission`]), so a flood of distinct
//! tokens can neither pile up requests here, nor be relayed to the issuer, nor starve
//! the real tokens that arrive meanwhile. A token that is not even an RFC 6750
//! `b64token` is refused before any of this. Every call has a timeout; an issuer that is
//! unreachable, slow, answers 5xx or refuses our credentials gives 503 (fail closed),
//! never a 2xx. Answers are parsed strictly: a member named twice
//! (`{"active":false,"active":true}`) makes the answer unusable (503), never a verdict.
//! Refusals and failures are logged at most once per [`LOG_INTERVAL`] per issuer, with
//! the count since the last line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use moka::future::Cache;
use moka::Expiry;
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;
use url::{form_urlencoded, Url};

use super::admission::{Admission, LogLimiter, Refusal};
use super::cache::{entry_bytes, unix_now, Budget, TokenHash, VerifiedToken, ENTRY_OVERHEAD};
use super::issuer::{Issuer, IssuerId};
use super::json;
use super::jwks::KeyStore;
use super::jwt::{check_validity_window, names_audience};
use crate::config::{ClientAuthMethod, ClientSecret, ConfigError, IntrospectionSettings};
use crate::error::{AuthError, CauseChain, Reason};
use crate::identity::IdentityMapping;
use crate::metrics::{IntrospectionResult, IssuerMetrics, Metrics};
use crate::outbound::{self, FetchError};
use crate::revocation::RevocationKeys;

/// Largest introspection answer we read: real ones are well under a KiB.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
/// Longest OAuth `error` code quoted from a refusal in our logs.
const MAX_ERROR_CODE: usize = 64;
/// At most one overload line and one failure line per issuer per this interval; the
/// lines count what happened since the previous one.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Why an introspection call gave no answer. Never holds the token or the secret: these
/// are logged at error level.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionError {
    #[error("introspection refused without asking ({}): {max_in_flight} calls in flight and up to {max_waiting} waiting", refusal.as_str())]
    Overloaded {
        refusal: Refusal,
        max_in_flight: usize,
        max_waiting: usize,
    },
    #[error("no introspection endpoint: none is configured and discovery has not named one")]
    NoEndpoint,
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{url} refused our client credentials (HTTP {status}{error}): check client_id and the client secret")]
    Unauthorized {
        url: String,
        status: u16,
        error: OAuthErrorCode,
    },
    #[error("{url} answered HTTP {status}{error}")]
    Status {
        url: String,
        status: u16,
        error: OAuthErrorCode,
    },
    #[error("{url} sent an invalid introspection answer: {why}")]
    InvalidAnswer { url: String, why: &'static str },
}

impl IntrospectionError {
    /// The denial this error becomes: always a 503, since no verdict was possible.
    pub fn reason(&self) -> Reason {
        match self {
            IntrospectionError::Overloaded { .. } => Reason::IntrospectionOverloaded,
            _ => Reason::IntrospectionUnavailable,
        }
    }
}

/// The OAuth `error` code of a refusal (RFC 6749 §5.2), shown as `, error=invalid_client`
/// in logs. Only a short code of safe characters is kept: the rest of an error body is
/// the issuer's free text.
#[derive(Debug, Default)]
pub struct OAuthErrorCode(Option<String>);

impl OAuthErrorCode {
    fn from_body(body: &[u8]) -> Self {
        let code = serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|value| value.get("error")?.as_str().map(str::to_owned))
            .filter(|code| {
                !code.is_empty()
                    && code.len() <= MAX_ERROR_CODE
                    && code
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
        Self(code)
    }
}

impl std::fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(code) => write!(f, ", error={code}"),
            None => Ok(()),
        }
    }
}

/// A verdict from introspection.
pub struct Introspected {
    pub token: Arc<VerifiedToken>,
    /// True when it came from the cache, without asking the issuer.
    pub cache_hit: bool,
}

/// One cached answer, with the time it may be kept (decided when it was received).
#[derive(Clone)]
struct CachedAnswer {
    /// The compiled issuer that asked: an answer judged by rules a reload replaced is
    /// not used.
    issuer: IssuerId,
    verdict: Verdict,
    ttl: Duration,
}

#[derive(Clone)]
enum Verdict {
    Active(Arc<VerifiedToken>),
    Refused(Reason),
}

impl CachedAnswer {
    /// The memory this answer holds in the cache, counted like a verified token's; a
    /// refusal holds nothing beside the cache's own entry.
    fn bytes(&self) -> usize {
        match &self.verdict {
            Verdict::Active(token) => entry_bytes(token),
            Verdict::Refused(_) => ENTRY_OVERHEAD,
        }
    }

    /// A positive answer whose `exp` has passed is not used, even if the cache has not
    /// dropped it yet: the cache's timer runs on a monotonic clock and on housekeeping,
    /// `exp` on the wall clock. One compare per hit.
    fn is_fresh(&self, now: u64) -> bool {
        match &self.verdict {
            Verdict::Active(token) => token.expires_at > now,
            Verdict::Refused(_) => true,
        }
    }

    fn into_result(self, cache_hit: bool) -> Result<Introspected, AuthError> {
        match self.verdict {
            Verdict::Active(token) => Ok(Introspected { token, cache_hit }),
            Verdict::Refused(reason) => Err(reason.into()),
        }
    }
}

/// Each answer lives for the time decided when it arrived.
struct AnswerExpiry;

impl Expiry<TokenHash, CachedAnswer> for AnswerExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &CachedAnswer,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// What an introspection answer must satisfy to be an allow, for one issuer.
#[derive(Debug, Clone)]
pub struct AnswerRules {
    /// The issuer an `iss` member must name exactly.
    pub issuer: String,
    /// An `aud` member must name one of these.
    pub audiences: Vec<String>,
    /// Refuse answers without `aud` (RFC 7662 makes it optional).
    pub require_audience: bool,
    /// Seconds of clock skew accepted on `exp` and `nbf`.
    pub leeway: u64,
}

impl AnswerRules {
    /// Checks an answer (RFC 7662 §2.2). Only `active: true` means active; the optional
    /// `exp`, `nbf`, `aud` and `iss` members are checked like the same JWT claims when
    /// present, because an issuer may well answer `active: true` for a token it issued to
    /// another audience.
    pub fn judge(&self, answer: &Value, now: u64) -> Result<Judged, &'static str> {
        if !answer.is_object() {
            return Err("not a JSON object");
        }
        match answer.get("active") {
            Some(Value::Bool(true)) => {}
            Some(Value::Bool(false)) => return Ok(Judged::Refused(Reason::InactiveToken)),
            _ => return Err("no boolean `active` member"),
        }
        let refused = |reason| Ok(Judged::Refused(reason));
        if answer
            .get("token_type")
            .and_then(Value::as_str)
            .is_some_and(|kind| kind.eq_ignore_ascii_case("refresh_token"))
        {
            // A refresh token is active too, but it is a credential for the token
            // endpoint only (RFC 6749 §1.5); it must never open a resource.
            return refused(Reason::WrongTokenType);
        }
        match answer.get("iss") {
            None => {}
            Some(Value::String(iss)) if *iss == self.issuer => {}
            // Exact match, like a JWT's `iss`: no normalisation.
            Some(Value::String(_)) => return refused(Reason::UnknownIssuer),
            Some(_) => return refused(Reason::InvalidClaims),
        }
        match answer
            .get("aud")
            .map(|aud| names_audience(aud, &self.audiences))
        {
            None if self.require_audience => return refused(Reason::WrongAudience),
            None | Some(Some(true)) => {}
            Some(Some(false)) => return refused(Reason::WrongAudience),
            Some(None) => return refused(Reason::InvalidClaims),
        }
        match check_validity_window(answer, now, self.leeway) {
            Ok(expires_at) => Ok(Judged::Active { expires_at }),
            Err(reason) => refused(reason),
        }
    }
}

/// What an answer says, once its claims are checked.
#[derive(Debug, PartialEq, Eq)]
pub enum Judged {
    /// `active: true` and every claim present is acceptable.
    Active { expires_at: Option<u64> },
    /// `active: false`, or a claim we refuse.
    Refused(Reason),
}

/// The introspection client of one issuer, built once when the issuer is compiled.
pub struct IntrospectionClient {
    name: String,
    /// What an answer must say to be an allow.
    rules: AnswerRules,
    /// Configured endpoint; when absent, the one the key store's discovery found.
    endpoint: Option<Arc<Url>>,
    keys: Arc<KeyStore>,
    auth: ClientAuth,
    timeout: Duration,
    positive_ttl: Duration,
    negative_ttl: Duration,
    introspect_jwts: bool,
    /// This issuer's call slots and the queue in front of them.
    admission: Admission,
    overload_log: LogLimiter,
    failure_log: LogLimiter,
    metrics: IssuerMetrics,
}

/// How we authenticate, ready to use: the Basic header is built once.
enum ClientAuth {
    /// RFC 6749 §2.3.1: `Authorization: Basic base64(urlencode(id) ":" urlencode(secret))`,
    /// marked sensitive so that no HTTP library prints it.
    Basic(HeaderValue),
    /// RFC 6749 §2.3.1: `client_id` and `client_secret` in the form body.
    Post {
        client_id: String,
        secret: ClientSecret,
    },
}

impl ClientAuth {
    fn new(method: ClientAuthMethod, client_id: &str, secret: ClientSecret) -> Option<Self> {
        match method {
            ClientAuthMethod::ClientSecretBasic => {
                basic_authorization(client_id, secret.expose()).map(ClientAuth::Basic)
            }
            ClientAuthMethod::ClientSecretPost => Some(ClientAuth::Post {
                client_id: client_id.to_owned(),
                secret,
            }),
        }
    }
}

/// The `Authorization` value of `client_secret_basic`. RFC 6749 §2.3.1 has the id and the
/// secret form-urlencoded before they are joined with `:` and base64-encoded, so a `:`
/// or a non-ASCII character in the secret survives the trip.
pub fn basic_authorization(client_id: &str, secret: &str) -> Option<HeaderValue> {
    let id: String = form_urlencoded::byte_serialize(client_id.as_bytes()).collect();
    let secret: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let credentials = STANDARD.encode(format!("{id}:{secret}"));
    let mut value = HeaderValue::from_str(&format!("Basic {credentials}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

impl IntrospectionClient {
    /// The client for `introspection` of the issuer compiled from `rules`; `key` names
    /// the settings in errors, `secret` was read from the configured file.
    pub fn new(
        key: &str,
        name: &str,
        rules: AnswerRules,
        introspection: &IntrospectionSettings,
        secret: ClientSecret,
        keys: Arc<KeyStore>,
        metrics: IssuerMetrics,
    ) -> Result<Self, ConfigError> {
        let endpoint = introspection
            .endpoint
            .as_deref()
            .map(Url::parse)
            .transpose()
            .map_err(|e| ConfigError::new(format!("{key}.endpoint"), e.to_string()))?
            .map(Arc::new);
        let auth = ClientAuth::new(introspection.auth_method, &introspection.client_id, secret)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("{key}.client_id"),
                    "cannot be sent in an Authorization header",
                )
            })?;
        Ok(Self {
            name: name.to_owned(),
            rules,
            endpoint,
            keys,
            auth,
            timeout: introspection.timeout,
            positive_ttl: introspection.positive_ttl,
            negative_ttl: introspection.negative_ttl,
            introspect_jwts: introspection.introspect_jwts,
            admission: Admission::new(
                introspection.max_in_flight,
                introspection.max_waiting,
                introspection.max_wait,
                metrics.introspection_waiting.clone(),
            ),
            overload_log: LogLimiter::new(LOG_INTERVAL),
            failure_log: LogLimiter::new(LOG_INTERVAL),
            metrics,
        })
    }

    /// False when no endpoint is known: none was configured and the discovery document
    /// (once fetched) named none. Every token that needs it would get 503, so the
    /// instance must not report ready.
    pub fn endpoint_known(&self) -> bool {
        self.endpoint().is_some()
    }

    /// True when the issuer's JWTs must also be found active by introspection.
    pub fn introspects_jwts(&self) -> bool {
        self.introspect_jwts
    }

    fn endpoint(&self) -> Option<Arc<Url>> {
        self.endpoint
            .clone()
            .or_else(|| self.keys.discovered_introspection_endpoint())
    }

    /// One RFC 7662 §2.1 request: a form POST with the token and our credentials.
    async fn call(&self, http: &reqwest::Client, token: &str) -> Result<Value, IntrospectionError> {
        let endpoint = self.endpoint().ok_or(IntrospectionError::NoEndpoint)?;
        let url = endpoint.to_string();
        // The form serializer is not `Send`: it lives in this block only, never across an
        // await, so that the decision future can run on any thread (the gRPC runtime).
        let (request, form) = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token)
                .append_pair("token_type_hint", "access_token");
            let mut request = http
                .post(endpoint.as_str())
                .header(ACCEPT, "application/json")
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .timeout(self.timeout);
            match &self.auth {
                ClientAuth::Basic(authorization) => {
                    request = request.header(AUTHORIZATION, authorization.clone());
                }
                ClientAuth::Post { client_id, secret } => {
                    form.append_pair("client_id", client_id)
                        .append_pair("client_secret", secret.expose());
                }
            }
            (request, form.finish())
        };
        let mut response = outbound::send(request.body(form), &url).await?;
        let status = response.status();
        let body = outbound::read_capped(&mut response, &url, MAX_ANSWER_BYTES).await?;
        if !status.is_success() {
            let error = OAuthErrorCode::from_body(&body);
            let status = status.as_u16();
            // RFC 7662 §2.3: invalid client credentials give a 401. We treat 403 alike:
            // either way our client is not allowed to introspect, which no retry fixes.
            return Err(if matches!(status, 401 | 403) {
                IntrospectionError::Unauthorized { url, status, error }
            } else {
                IntrospectionError::Status { url, status, error }
            });
        }
        // Strict: with a member named twice, another reader of the same answer could
        // see another verdict (`active`) or other claims, so it is no answer at all.
        json::from_slice(&body).map_err(|source| FetchError::Json { url, source }.into())
    }

    /// How long a judged answer may be kept: positive ones never past their `exp`.
    fn ttl(&self, judged: &Judged, now: u64) -> Duration {
        match judged {
            Judged::Active {
                expires_at: Some(exp),
            } => self
                .positive_ttl
                .min(Duration::from_secs(exp.saturating_sub(now))),
            Judged::Active { expires_at: None } => self.positive_ttl,
            Judged::Refused(_) => self.negative_ttl,
        }
    }
}

/// RFC 6750 §2.1: `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" )
/// *"="`, the shape of every bearer token (a JWT is one too).
fn is_b64token(token: &str) -> bool {
    let bytes = token.as_bytes();
    let body = bytes.len() - bytes.iter().rev().take_while(|&&byte| byte == b'=').count();
    body > 0
        && bytes[..body].iter().all(|&byte| {
            byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The answer cache shared by every issuer's introspection client (each with its own
/// call slots, in its [`Issuer`]), kept across reloads.
#[derive(Clone)]
pub struct Introspector {
    cache: Cache<TokenHash, CachedAnswer>,
    http: reqwest::Client,
    metrics: Arc<Metrics>,
}

impl Introspector {
    /// An empty answer cache held to `budget`.
    pub fn new(budget: Budget, http: reqwest::Client, metrics: Arc<Metrics>) -> Self {
        // Bounded in bytes like the verified-token cache (see `super::cache`): a flood of
        // opaque tokens with fat answers must not grow memory past the pod's limit.
        Self {
            cache: Cache::builder()
                .max_capacity(budget.max_bytes)
                .weigher(move |_, answer: &CachedAnswer| budget.weight(answer.bytes()))
                .expire_after(AnswerExpiry)
                .eviction_listener({
                    let evictions = metrics.introspection_evictions.clone();
                    move |_, _, cause| {
                        if cause == moka::notification::RemovalCause::Size {
                            evictions.inc();
                        }
                    }
                })
                .build(),
            http,
            metrics,
        }
    }

    /// Answers held, as of the cache's last housekeeping.
    pub fn cache_entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// The weight of the answers held (about their bytes), as of the last housekeeping.
    pub fn cache_bytes(&self) -> u64 {
        self.cache.weighted_size()
    }

    /// Asks `issuer` (through the cache) whether `token` is active; an active answer's
    /// identity is read by `identity`.
    pub async fn verify(
        &self,
        issuer: &Issuer,
        identity: &IdentityMapping,
        token: &str,
        hash: &TokenHash,
    ) -> Result<Introspected, AuthError> {
        let client = issuer
            .introspection
            .as_ref()
            .ok_or(Reason::IntrospectionUnavailable)?;
        if let Some(answer) = self.cache.get(hash).await {
            if answer.issuer == issuer.id && answer.is_fresh(unix_now()) {
                self.metrics.introspection_cache_lookup(true);
                return answer.into_result(true);
            }
            self.cache.invalidate(hash).await;
        }
        self.metrics.introspection_cache_lookup(false);
        if !is_b64token(token) {
            // RFC 6750 §2.1: a bearer token is a `b64token`. Anything else is no token of
            // any issuer; refusing it here costs one pass over the bytes, where asking
            // would cost the issuer a call and a slot that a real token may need.
            return Err(Reason::MalformedToken.into());
        }
        // Single flight: concurrent misses for this token wait for the one call made
        // here. An error is handed to those waiters and never inserted.
        self.cache
            .try_get_with(*hash, self.ask(issuer, client, identity, token))
            .await
            .map_err(|error| AuthError::with_source(error.reason(), error))?
            .into_result(false)
    }

    /// The one upstream call behind a cache miss, and the answer to cache.
    async fn ask(
        &self,
        issuer: &Issuer,
        client: &IntrospectionClient,
        identity: &IdentityMapping,
        token: &str,
    ) -> Result<CachedAnswer, IntrospectionError> {
        // The slot is taken here, by the caller that really calls out, so a burst of
        // requests for one token needs a single slot (the others wait on this future).
        let admission = &client.admission;
        let _slot = match admission.admit().await {
            Ok(slot) => slot,
            Err(refusal) => {
                if let Some(refused) = client.overload_log.event() {
                    tracing::warn!(
                        issuer = %client.name,
                        reason = refusal.as_str(),
                        refused,
                        max_in_flight = admission.max_in_flight(),
                        max_waiting = admission.max_waiting(),
                        interval_s = LOG_INTERVAL.as_secs(),
                        "introspection overloaded: {refused} request(s) refused with 503 since the last such line"
                    );
                }
                return Err(IntrospectionError::Overloaded {
                    refusal,
                    max_in_flight: admission.max_in_flight(),
                    max_waiting: admission.max_waiting(),
                });
            }
        };
        let started = std::time::Instant::now();
        let called = client.call(&self.http, token).await;
        client.metrics.introspection_duration(started.elapsed());
        let answer = match called {
            Ok(answer) => answer,
            Err(error) => return Err(self.failed(client, error)),
        };
        let now = unix_now();
        let judged = match client.rules.judge(&answer, now) {
            Ok(judged) => judged,
            Err(why) => {
                let url = client.endpoint().map(|url| url.to_string());
                let error = IntrospectionError::InvalidAnswer {
                    url: url.unwrap_or_default(),
                    why,
                };
                return Err(self.failed(client, error));
            }
        };
        let result = match &judged {
            Judged::Refused(Reason::InactiveToken) => IntrospectionResult::Inactive,
            _ => IntrospectionResult::Success,
        };
        client.metrics.introspection_call(result);
        let ttl = client.ttl(&judged, now);
        let verdict = match judged {
            Judged::Active { expires_at } => Verdict::Active(Arc::new(VerifiedToken {
                issuer: issuer.id,
                expires_at: expires_at.unwrap_or(u64::MAX),
                key_generation: 0,
                // Built once per answer: a cache hit only copies ready header values.
                identity: identity.introspection_identity(issuer.claims, &answer),
                // RFC 7662 §2.2 answers name `sub`, `jti` and `iat` like JWT claims.
                revocation: RevocationKeys::from_claims(&issuer.jwt.issuer, &answer),
            })),
            Judged::Refused(reason) => Verdict::Refused(reason),
        };
        Ok(CachedAnswer {
            issuer: issuer.id,
            verdict,
            ttl,
        })
    }

    /// Counts and logs a failed call, once for all the requests waiting on it. The log
    /// says why (status, timeout, refused credentials…); it never holds the token or the
    /// secret, which no error variant carries.
    fn failed(
        &self,
        client: &IntrospectionClient,
        error: IntrospectionError,
    ) -> IntrospectionError {
        client
            .metrics
            .introspection_call(IntrospectionResult::Error);
        if let Some(failures) = client.failure_log.event() {
            // The first failure after a quiet interval is logged whole; the ones after it
            // are counted into the next line, so a flood of timeouts is a line per interval.
            tracing::error!(
                issuer = %client.name,
                error = %CauseChain(&error),
                failures,
                interval_s = LOG_INTERVAL.as_secs(),
                "token introspection failed; answering 503 (fail closed)"
            );
        }
        error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::jwt::numeric_date;
    use serde_json::json;

    fn client(leeway: u64) -> IntrospectionClient {
        let settings: crate::config::IssuerSettings = serde_json::from_value(json!({
            "issuer": "https://sso.example.com",
            "audiences": ["orders-api"],
        }))
        .unwrap();
        let metrics = Metrics::new(&prometheus::Registry::new(), &[])
            .unwrap()
            .issuer("test");
        let keys = Arc::new(KeyStore::new(
            &settings,
            None,
            vec![crate::verify::alg::Alg::RS256],
            reqwest::Client::new(),
            metrics.clone(),
        ));
        IntrospectionClient {
            name: "test".to_owned(),
            rules: AnswerRules {
                issuer: settings.issuer,
                audiences: settings.audiences,
                require_audience: false,
                leeway,
            },
            endpoint: None,
            keys,
            auth: ClientAuth::Basic(HeaderValue::from_static("Basic eDp5")),
            timeout: Duration::from_secs(1),
            positive_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(5),
            introspect_jwts: false,
            admission: Admission::new(1, 0, Duration::ZERO, metrics.introspection_waiting.clone()),
            overload_log: LogLimiter::new(LOG_INTERVAL),
            failure_log: LogLimiter::new(LOG_INTERVAL),
            metrics,
        }
    }

    const NOW: u64 = 1_700_000_000;

    fn judge(answer: Value) -> Result<Judged, &'static str> {
        client(0).rules.judge(&answer, NOW)
    }

    #[test]
    fn require_audience_refuses_answers_without_aud() {
        let mut strict = client(0);
        strict.rules.require_audience = true;
        let judged = |answer: Value| strict.rules.judge(&answer, NOW);
        assert_eq!(
            judged(json!({"active": true})),
            Ok(Judged::Refused(Reason::WrongAudience))
        );
        assert_eq!(
            judged(json!({"active": true, "aud": "orders-api"})),
            Ok(Judged::Active { expires_at: None })
        );
        // The default stays RFC 7662's: `aud` is checked only when present.
        assert_eq!(
            judge(json!({"active": true})),
            Ok(Judged::Active { expires_at: None })
        );
    }

    #[test]
    fn only_active_true_is_active() {
        assert_eq!(
            judge(json!({"active": true})),
            Ok(Judged::Active { expires_at: None })
        );
        assert_eq!(
            judge(json!({"active": false, "sub": "x"})),
            Ok(Judged::Refused(Reason::InactiveToken))
        );
        // Not a boolean: the issuer is broken, no verdict (503), nothing cached.
        assert!(judge(json!({"active": "true"})).is_err());
        assert!(judge(json!({"sub": "x"})).is_err());
        assert!(judge(json!([true])).is_err());
    }

    #[test]
    fn claims_present_are_checked_like_jwt_claims() {
        let refused = |answer| match judge(answer) {
            Ok(Judged::Refused(reason)) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            refused(json!({"active": true, "exp": NOW - 1})),
            Reason::Expired
        );
        assert_eq!(
            refused(json!({"active": true, "nbf": NOW + 10})),
            Reason::NotYetValid
        );
        assert_eq!(
            refused(json!({"active": true, "aud": "another-api"})),
            Reason::WrongAudience
        );
        assert_eq!(
            refused(json!({"active": true, "aud": ["a", "b"]})),
            Reason::WrongAudience
        );
        assert_eq!(
            refused(json!({"active": true, "iss": "https://sso.example.com/"})),
            Reason::UnknownIssuer
        );
        assert_eq!(
            refused(json!({"active": true, "exp": "soon"})),
            Reason::InvalidClaims
        );
        assert_eq!(
            refused(json!({"active": true, "token_type": "refresh_token"})),
            Reason::WrongTokenType
        );
        assert_eq!(
            judge(json!({
                "active": true, "exp": NOW + 30, "nbf": NOW, "iss": "https://sso.example.com",
                "aud": ["other", "orders-api"], "token_type": "Bearer",
            })),
            Ok(Judged::Active {
                expires_at: Some(NOW + 30)
            })
        );
    }

    #[test]
    fn leeway_applies_to_exp_and_nbf() {
        let lenient = client(30);
        let answer = json!({"active": true, "exp": NOW - 10, "nbf": NOW + 10});
        assert_eq!(
            lenient.rules.judge(&answer, NOW),
            Ok(Judged::Active {
                expires_at: Some(NOW - 10)
            })
        );
    }

    #[test]
    fn positive_answers_never_outlive_exp() {
        let client = client(0);
        let active = |exp| Judged::Active { expires_at: exp };
        assert_eq!(
            client.ttl(&active(Some(NOW + 10)), NOW),
            Duration::from_secs(10)
        );
        assert_eq!(
            client.ttl(&active(Some(NOW + 3600)), NOW),
            Duration::from_secs(60)
        );
        assert_eq!(client.ttl(&active(None), NOW), Duration::from_secs(60));
        assert_eq!(
            client.ttl(&Judged::Refused(Reason::InactiveToken), NOW),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn basic_credentials_are_form_urlencoded_first() {
        // RFC 6749 §2.3.1 and its errata: "a b:c/é" → "a+b%3Ac%2F%C3%A9".
        let value = basic_authorization("client one", "a b:c/é").unwrap();
        assert!(value.is_sensitive());
        let encoded = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(STANDARD.decode(encoded).unwrap()).unwrap();
        assert_eq!(decoded, "client+one:a+b%3Ac%2F%C3%A9");
    }

    #[test]
    fn oauth_error_codes_are_quoted_only_when_short_and_plain() {
        let code = |body: &str| OAuthErrorCode::from_body(body.as_bytes()).to_string();
        assert_eq!(
            code(r#"{"error":"invalid_client"}"#),
            ", error=invalid_client"
        );
        assert_eq!(code(r#"{"error":"bad\nline"}"#), "");
        assert_eq!(code("<html>"), "");
    }

    #[test]
    fn only_b64tokens_are_worth_asking_about() {
        for token in [
            "2YotnFZFEjr1zCsicMWpAA",
            "a.b.c",
            "mF_9.B5f-4.1JqM",
            "abc+/~==",
            "x=",
        ] {
            assert!(is_b64token(token), "{token}");
        }
        for token in [
            "", "==", "a b", "a=b", "a\tb", "tök", "a,b", "a;b", "\"a\"", "a%20",
        ] {
            assert!(!is_b64token(token), "{token:?}");
        }
    }

    #[test]
    fn fractional_numeric_dates() {
        assert_eq!(numeric_date(&json!(12.7)), Some(12));
        assert_eq!(numeric_date(&json!(-1)), None);
    }
}
