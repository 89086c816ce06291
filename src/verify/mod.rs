//! The verifier that handlers call: token → verified identity, or a denial.
//!
//! - [`issuer`]: one configured issuer as one compiled value, kept by a reload when
//!   unchanged;
//! - [`alg`]: the closed set of signature algorithms, matched exhaustively everywhere;
//! - [`cache`]: verified tokens keyed by SHA-256, bounded in bytes, never past `exp`;
//! - [`jwt`]: header checks, key choice, signature and claims for one issuer;
//! - [`jwk`]: JWKs to verifying keys (usable members, algorithms, thumbprints), key sets;
//! - [`discovery`]: what an issuer's discovery document tells us;
//! - [`jwks`]: each issuer's key store: fetches, refresh and the unknown-`kid` cooldown;
//! - [`introspection`]: RFC 7662 introspection of opaque tokens (and, per issuer, of
//!   JWTs) with its cache of answers;
//! - [`admission`]: each issuer's bound on introspection calls, with a short fair wait;
//! - [`logout`]: OpenID Connect Back-Channel Logout tokens, validated with the issuer's
//!   keys;
//! - [`json`]: the JSON parser for tokens and answers, which refuses duplicate names.

pub mod admission;
pub mod alg;
pub mod cache;
pub mod discovery;
pub mod introspection;
pub mod issuer;
pub mod json;
pub mod jwk;
pub mod jwks;
pub mod jwt;
pub mod logout;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{ConfigError, Settings};
use crate::error::{AuthError, Reason};
use crate::identity::IdentityMapping;
use crate::metrics::{Metrics, RevocationMetrics};
use crate::revocation::{RevocationKeys, Revocations};
use crate::shutdown::{Shutdown, ShutdownTrigger};
use cache::{token_hash, unix_now, Budget, TokenCache, TokenHash, VerifiedToken};
use introspection::Introspector;
use issuer::{Issuer, IssuerContext, IssuerId, NewKeyStore};
use jwt::{looks_like_jwt, DecodedJwt};
use logout::{Logout, LogoutError};

/// A verdict to allow, with what it was based on.
pub struct Allowed {
    pub token: Arc<VerifiedToken>,
    /// True when the verdict came from the cache without any crypto.
    pub cache_hit: bool,
}

/// Shared by all workers: the issuers, the verified-token cache, the introspection cache.
pub struct Verifier {
    issuers: Vec<Arc<Issuer>>,
    by_iss: HashMap<String, Arc<Issuer>>,
    /// The issuer asked about opaque tokens (`token.opaque_issuer`).
    opaque_issuer: Option<Arc<Issuer>>,
    cache: TokenCache,
    introspector: Introspector,
    identity: IdentityMapping,
    max_token_length: usize,
    /// Held by the application, not by the configuration: it outlives reloads.
    revocations: Arc<Revocations>,
    metrics: Arc<Metrics>,
}

/// What [`Verifier::compile`] needs besides the settings.
pub struct Outbound<'a> {
    pub client: &'a reqwest::Client,
    pub metrics: &'a Arc<Metrics>,
    /// The application's background shutdown, which every key refresher watches.
    pub background: &'a Shutdown,
    /// The revocation store every verdict is checked against, built once per process.
    pub revocations: &'a Arc<Revocations>,
}

/// The verifier of a previous compile and the settings it came from: a reload keeps its
/// caches, and the issuers and key stores that did not change.
pub struct Previous<'a> {
    pub verifier: &'a Verifier,
    pub settings: &'a Settings,
    /// The outbound client is the one `verifier` was compiled with.
    pub client_unchanged: bool,
}

/// A compiled verifier, and the key stores it created, whose keys nobody fetched yet.
pub struct Compiled {
    pub verifier: Verifier,
    pub new_key_stores: Vec<NewKeyStore>,
}

impl Verifier {
    /// A verifier of its own (benchmarks, fuzzing): keys are not fetched, and no
    /// refresher is started.
    pub fn new(
        settings: &Settings,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let (_no_refreshers, background) = ShutdownTrigger::new();
        let revocations = Revocations::new(&Default::default(), RevocationMetrics::detached()).0;
        let outbound = Outbound {
            client: &client,
            metrics: &metrics,
            background: &background,
            revocations: &revocations,
        };
        Ok(Self::compile(settings, &outbound, None)?.verifier)
    }

    /// Compiles the issuers, the identity mapping and the caches from validated settings,
    /// keeping from `previous` what did not change.
    pub fn compile(
        settings: &Settings,
        outbound: &Outbound<'_>,
        previous: Option<Previous<'_>>,
    ) -> Result<Compiled, ConfigError> {
        let identity = IdentityMapping::new(&settings.identity)?;
        let context = IssuerContext {
            client: outbound.client,
            metrics: outbound.metrics,
            background: outbound.background,
            max_ttl: settings.cache.max_ttl,
            shared_unchanged: previous.as_ref().is_some_and(|previous| {
                previous.settings.identity == settings.identity
                    && previous.settings.cache.max_ttl == settings.cache.max_ttl
            }),
            client_unchanged: previous
                .as_ref()
                .is_some_and(|previous| previous.client_unchanged),
        };
        let mut new_key_stores = Vec::new();
        let mut issuers = Vec::with_capacity(settings.issuers.len());
        let mut by_iss = HashMap::new();
        for (index, issuer) in settings.issuers.iter().enumerate() {
            let before = previous
                .as_ref()
                .and_then(|previous| previous.verifier.by_issuer(&issuer.issuer));
            let compiled = Issuer::compile(
                &format!("issuers[{index}]"),
                issuer,
                &context,
                before,
                &mut new_key_stores,
            )?;
            by_iss.insert(issuer.issuer.clone(), compiled.clone());
            issuers.push(compiled);
        }
        let token_budget = Budget {
            max_bytes: settings.cache.max_bytes,
            max_entries: settings.cache.max_entries,
        };
        let answer_budget = Budget {
            max_bytes: settings.cache.introspection_max_bytes,
            max_entries: settings.cache.introspection_max_entries,
        };
        let cached = |same: fn(&Settings, &Settings) -> bool| {
            previous
                .as_ref()
                .filter(|previous| same(previous.settings, settings))
                .map(|previous| previous.verifier)
        };
        // Caches are kept across reloads (their entries name the compiled issuer that
        // judged them); one whose bounds changed starts empty.
        let cache = cached(|a, b| {
            (a.cache.max_bytes, a.cache.max_entries, a.cache.max_ttl)
                == (b.cache.max_bytes, b.cache.max_entries, b.cache.max_ttl)
        })
        .map_or_else(
            || {
                TokenCache::new(
                    token_budget,
                    settings.cache.max_ttl,
                    outbound.metrics.verified_token_evictions.clone(),
                )
            },
            |previous| previous.cache.clone(),
        );
        let introspector = cached(|a, b| {
            (
                a.cache.introspection_max_bytes,
                a.cache.introspection_max_entries,
            ) == (
                b.cache.introspection_max_bytes,
                b.cache.introspection_max_entries,
            )
        })
        .filter(|_| context.client_unchanged)
        .map_or_else(
            || {
                Introspector::new(
                    answer_budget,
                    outbound.client.clone(),
                    outbound.metrics.clone(),
                )
            },
            |previous| previous.introspector.clone(),
        );
        let opaque_issuer = settings
            .opaque_issuer()?
            .and_then(|position| issuers.get(position).cloned());
        Ok(Compiled {
            verifier: Self {
                issuers,
                by_iss,
                opaque_issuer,
                cache,
                introspector,
                identity,
                max_token_length: settings.token.max_length,
                revocations: outbound.revocations.clone(),
                metrics: outbound.metrics.clone(),
            },
            new_key_stores,
        })
    }

    /// Every issuer, in configuration order.
    pub fn issuers(&self) -> &[Arc<Issuer>] {
        &self.issuers
    }

    /// The issuer whose `iss` is `iss`, exactly.
    pub fn by_issuer(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.by_iss.get(iss)
    }

    /// The compiled issuer `id`, unless a reload replaced it. A scan: there are few.
    pub fn issuer(&self, id: IssuerId) -> Option<&Issuer> {
        self.issuers
            .iter()
            .find(|issuer| issuer.id == id)
            .map(Arc::as_ref)
    }

    /// The name of the compiled issuer `id` (empty once a reload replaced it).
    pub fn issuer_name(&self, id: IssuerId) -> &str {
        self.issuer(id).map_or("", |issuer| issuer.name.as_str())
    }

    /// How long a proxy may cache an allow for a token of issuer `id`.
    pub fn proxy_cache_cap(&self, id: IssuerId) -> u64 {
        self.issuer(id).map_or(0, |issuer| issuer.proxy_cache_cap)
    }

    /// Ready when every issuer has usable keys (and an introspection endpoint if needed).
    pub fn is_ready(&self) -> bool {
        self.issuers.iter().all(|issuer| issuer.is_ready())
    }

    /// How claims become identity headers.
    pub fn identity_mapping(&self) -> &IdentityMapping {
        &self.identity
    }

    pub fn cache(&self) -> &TokenCache {
        &self.cache
    }

    pub fn introspector(&self) -> &Introspector {
        &self.introspector
    }

    /// The revocation store (the application's, shared by every compile).
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revocations
    }

    /// True when some issuer sends back-channel logouts.
    pub fn accepts_logouts(&self) -> bool {
        self.issuers
            .iter()
            .any(|issuer| issuer.backchannel_logout.is_some())
    }

    /// Validates a back-channel logout token (OpenID Connect Back-Channel Logout 1.0
    /// §2.6) and records its `jti`: a token is accepted once.
    pub async fn verify_logout_token(&self, token: &str) -> Result<Logout, LogoutError> {
        if token.len() > self.max_token_length || !looks_like_jwt(token) {
            return Err(LogoutError::Malformed);
        }
        let jwt = DecodedJwt::parse(token).map_err(|_| LogoutError::Malformed)?;
        let iss = jwt.issuer().map_err(|_| LogoutError::UnknownIssuer)?;
        // Exact `iss`, and only issuers the operator configured for logouts: nothing in
        // the token chooses which keys are trusted.
        let issuer = self.by_issuer(iss).ok_or(LogoutError::UnknownIssuer)?;
        let settings = issuer
            .backchannel_logout
            .as_ref()
            .ok_or(LogoutError::UnknownIssuer)?;
        let logout = logout::verify(&issuer.jwt, &issuer.keys, settings, &jwt).await?;
        // §2.6 step 10: a `jti` seen before is a replay. Recorded last, so that a bad
        // token cannot spend the `jti` of a good one.
        if !self
            .revocations
            .first_sight_of_logout_token(&logout.issuer, &logout.jti)
        {
            return Err(LogoutError::Replayed);
        }
        Ok(logout)
    }

    /// Verifies one token, then checks it against the revocations: on every request,
    /// whichever cache answered, so that a logout takes effect on the next request.
    pub async fn verify_token(&self, token: &str) -> Result<Allowed, AuthError> {
        // One clock read for both: the cache's `exp` check and the revocations'.
        let now = unix_now();
        let allowed = self.verify_unrevoked(token, now).await?;
        self.revocations.check(&allowed.token.revocation, now)?;
        Ok(allowed)
    }

    /// Cache first, then the full check. A JWT is verified locally; a token that is not
    /// a JWT is introspected at the configured opaque-token issuer.
    async fn verify_unrevoked(&self, token: &str, now: u64) -> Result<Allowed, AuthError> {
        if token.len() > self.max_token_length {
            return Err(Reason::TokenTooLarge.into());
        }
        let hash = token_hash(token);
        if let Some(cached) = self.cache.get(&hash, now) {
            // A verdict of an issuer a reload changed or removed is judged again.
            if let Some(issuer) = self.issuer(cached.issuer) {
                if cached.key_generation == issuer.keys.withdrawal_generation() {
                    self.metrics.cache_lookup(true);
                    let introspection_hit = self.require_active(issuer, token, &hash).await?;
                    return Ok(Allowed {
                        token: cached,
                        cache_hit: introspection_hit,
                    });
                }
            }
            self.cache.remove(&hash);
        }
        // Only verified JWTs enter this cache, so the shape check can wait until a miss.
        if !looks_like_jwt(token) {
            // An opaque token names no issuer: it goes only to the one the operator
            // configured, so nothing in the token chooses where it (or our client
            // secret) is sent.
            let issuer = self
                .opaque_issuer
                .as_deref()
                .ok_or(Reason::MalformedToken)?;
            let answer = self
                .introspector
                .verify(issuer, &self.identity, token, &hash)
                .await?;
            return Ok(Allowed {
                token: answer.token,
                cache_hit: answer.cache_hit,
            });
        }
        self.metrics.cache_lookup(false);

        let jwt = DecodedJwt::parse(token)?;
        // The issuer is chosen by exact string match on `iss`: no normalisation (a
        // trailing slash is a different issuer), and nothing named in the token is fetched.
        let issuer = self.by_issuer(jwt.issuer()?).ok_or(Reason::UnknownIssuer)?;
        let key_generation = issuer.keys.withdrawal_generation();
        let expires_at = issuer.jwt.verify(&jwt, &issuer.keys).await?;
        self.require_active(issuer, token, &hash).await?;
        let token = Arc::new(VerifiedToken {
            issuer: issuer.id,
            expires_at,
            key_generation,
            identity: self.identity.jwt_identity(issuer.claims, &jwt.claims),
            revocation: RevocationKeys::from_claims(&issuer.jwt.issuer, &jwt.claims),
        });
        self.cache.insert(hash, token.clone());
        Ok(Allowed {
            token,
            cache_hit: false,
        })
    }

    /// With `introspect_jwts`, a JWT whose signature verified must also be active at its
    /// issuer: that is what makes revocation take effect before `exp`. Identity still
    /// comes from the signed claims. Returns whether the answer came from the cache
    /// (true when the issuer does not introspect JWTs: nothing was asked).
    async fn require_active(
        &self,
        issuer: &Issuer,
        token: &str,
        hash: &TokenHash,
    ) -> Result<bool, AuthError> {
        if !issuer.introspects_jwts() {
            return Ok(true);
        }
        let answer = self
            .introspector
            .verify(issuer, &self.identity, token, hash)
            .await?;
        Ok(answer.cache_hit)
    }
}
