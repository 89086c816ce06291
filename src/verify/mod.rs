//! The verifier that handlers call: token → verified identity, or a denial.
//!
//! - [`cache`]: verified tokens keyed by SHA-256, bounded in bytes, never past `exp`;
//! - [`jwt`]: header checks, key choice, signature and claims for one issuer;
//! - [`jwks`]: each issuer's keys, discovery, refresh and the unknown-`kid` cooldown;
//! - [`introspection`]: RFC 7662 introspection of opaque tokens (and, per issuer, of
//!   JWTs) with its cache of answers;
//! - [`admission`]: each issuer's bound on introspection calls, with a short fair wait;
//! - [`json`]: the JSON parser for tokens and answers, which refuses duplicate names.

pub mod admission;
pub mod cache;
pub mod introspection;
pub mod json;
pub mod jwks;
pub mod jwt;

use std::collections::HashMap;
use std::sync::Arc;

use url::Url;

use crate::config::{ConfigError, Settings};
use crate::error::{AuthError, Reason};
use crate::identity::IdentityMapping;
use crate::metrics::Metrics;
use cache::{token_hash, unix_now, Budget, TokenCache, TokenHash, VerifiedToken};
use introspection::Introspector;
use jwks::KeyStore;
use jwt::{looks_like_jwt, DecodedJwt, Issuer};

/// A verdict to allow, with what it was based on.
pub struct Allowed {
    pub token: Arc<VerifiedToken>,
    /// True when the verdict came from the cache without any crypto.
    pub cache_hit: bool,
}

/// Shared by all workers: one cache, one key store per issuer, one introspection cache.
pub struct Verifier {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    cache: TokenCache,
    introspector: Introspector,
    identity: IdentityMapping,
    max_token_length: usize,
    /// Per issuer, the longest `X-Accel-Expires` an allow may carry, in seconds.
    proxy_cache_caps: Vec<u64>,
    metrics: Arc<Metrics>,
}

impl Verifier {
    /// Builds the verifier; keys are not fetched yet (see [`Verifier::key_stores`]).
    pub fn new(
        settings: &Settings,
        client: reqwest::Client,
        metrics: Arc<Metrics>,
    ) -> Result<Self, ConfigError> {
        let mut issuers = Vec::with_capacity(settings.issuers.len());
        let mut by_iss = HashMap::new();
        for (index, issuer) in settings.issuers.iter().enumerate() {
            let key = format!("issuers[{index}]");
            let algorithms = issuer.parsed_algorithms(&key)?;
            let jwks_uri = issuer
                .jwks_uri
                .as_deref()
                .map(Url::parse)
                .transpose()
                .map_err(|e| ConfigError::new(format!("{key}.jwks_uri"), e.to_string()))?;
            let keys = Arc::new(KeyStore::new(
                index,
                issuer,
                jwks_uri,
                algorithms.clone(),
                client.clone(),
                metrics.clone(),
            ));
            issuers.push(Issuer::new(index, issuer, &algorithms, keys));
            by_iss.insert(issuer.issuer.clone(), index);
        }
        let key_stores: Vec<Arc<KeyStore>> =
            issuers.iter().map(|issuer| issuer.keys.clone()).collect();
        let introspector = Introspector::new(settings, &key_stores, client, metrics.clone())?;
        Ok(Self {
            issuers,
            by_iss,
            cache: TokenCache::new(
                Budget {
                    max_bytes: settings.cache.max_bytes,
                    max_entries: settings.cache.max_entries,
                },
                settings.cache.max_ttl,
                metrics.verified_token_evictions.clone(),
            ),
            proxy_cache_caps: settings
                .issuers
                .iter()
                .map(|issuer| {
                    let ttl = issuer
                        .introspection
                        .as_ref()
                        .map_or(settings.cache.max_ttl, |introspection| {
                            introspection.positive_ttl.min(settings.cache.max_ttl)
                        });
                    ttl.as_secs()
                })
                .collect(),
            introspector,
            identity: IdentityMapping::new(&settings.identity)?.with_issuers(&settings.issuers),
            max_token_length: settings.token.max_length,
            metrics,
        })
    }

    /// How long a proxy may cache an allow for a token of `issuer`: never longer than we
    /// would trust it ourselves without re-checking (the cache ttl, or the introspection
    /// revocation window).
    pub fn proxy_cache_cap(&self, issuer: usize) -> u64 {
        self.proxy_cache_caps
            .get(issuer)
            .copied()
            .unwrap_or_default()
    }

    /// Every issuer's key store, for the background refreshers and readiness.
    pub fn key_stores(&self) -> impl Iterator<Item = &Arc<KeyStore>> {
        self.issuers.iter().map(|issuer| &issuer.keys)
    }

    /// Ready when every issuer has usable keys.
    pub fn is_ready(&self) -> bool {
        self.key_stores().all(|keys| keys.is_ready())
    }

    /// The configured name of issuer `index`.
    pub fn issuer_name(&self, index: usize) -> &str {
        self.issuers
            .get(index)
            .map_or("", |issuer| issuer.name.as_str())
    }

    /// The `iss` of issuer `index`, exactly as its tokens carry it.
    pub fn issuer_url(&self, index: usize) -> &str {
        self.issuers
            .get(index)
            .map_or("", |issuer| issuer.issuer.as_str())
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

    /// Verifies one token: cache first, then the full check. A JWT is verified locally; a
    /// token that is not a JWT is introspected at the configured opaque-token issuer.
    pub async fn verify_token(&self, token: &str) -> Result<Allowed, AuthError> {
        if token.len() > self.max_token_length {
            return Err(Reason::TokenTooLarge.into());
        }
        let hash = token_hash(token);
        let now = unix_now();
        if let Some(cached) = self.cache.get(&hash, now) {
            let issuer = &self.issuers[cached.issuer];
            if cached.key_generation == issuer.keys.withdrawal_generation() {
                self.metrics.cache_lookup(true);
                let introspection_hit = self.require_active(cached.issuer, token, &hash).await?;
                return Ok(Allowed {
                    token: cached,
                    cache_hit: introspection_hit,
                });
            }
            self.cache.remove(&hash);
        }
        // Only verified JWTs enter this cache, so the shape check can wait until a miss.
        if !looks_like_jwt(token) {
            // An opaque token names no issuer: it goes only to the one the operator
            // configured, so nothing in the token chooses where it (or our client
            // secret) is sent.
            let issuer = self
                .introspector
                .opaque_issuer()
                .ok_or(Reason::MalformedToken)?;
            let answer = self.introspector.verify(issuer, token, &hash).await?;
            return Ok(Allowed {
                token: answer.token,
                cache_hit: answer.cache_hit,
            });
        }
        self.metrics.cache_lookup(false);

        let jwt = DecodedJwt::parse(token)?;
        // The issuer is chosen by exact string match on `iss`: no normalisation (a
        // trailing slash is a different issuer), and nothing named in the token is fetched.
        let issuer = self
            .by_iss
            .get(jwt.issuer()?)
            .map(|index| &self.issuers[*index])
            .ok_or(Reason::UnknownIssuer)?;
        let key_generation = issuer.keys.withdrawal_generation();
        let expires_at = issuer.verify(&jwt).await?;
        self.require_active(issuer.index, token, &hash).await?;
        let token = Arc::new(VerifiedToken {
            issuer: issuer.index,
            expires_at,
            key_generation,
            identity: self.identity.jwt_identity(issuer.index, &jwt.claims),
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
        issuer: usize,
        token: &str,
        hash: &TokenHash,
    ) -> Result<bool, AuthError> {
        if !self.introspector.introspects_jwts(issuer) {
            return Ok(true);
        }
        let answer = self.introspector.verify(issuer, token, hash).await?;
        Ok(answer.cache_hit)
    }
}
