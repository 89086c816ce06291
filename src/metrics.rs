//! Typed metric handles, registered into a registry that the caller passes in (no global
//! state, so tests read their own). Every label value comes from configuration or a
//! closed enum; handles are resolved once here so the request path only increments.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::error::Reason;

pub struct Metrics {
    allowed: IntCounter,
    denied: Vec<IntCounter>,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    jwks_fetch_ok: Vec<IntCounter>,
    jwks_fetch_failed: Vec<IntCounter>,
}

impl Metrics {
    /// Registers every series up front, one per issuer name and per denial reason.
    pub fn new(registry: &Registry, issuer_names: &[String]) -> prometheus::Result<Self> {
        let decisions = IntCounterVec::new(
            Opts::new(
                "tokengate_decisions_total",
                "Auth decisions by outcome and reason",
            ),
            &["outcome", "reason"],
        )?;
        registry.register(Box::new(decisions.clone()))?;
        let cache = IntCounterVec::new(
            Opts::new(
                "tokengate_cache_requests_total",
                "Cache lookups by cache and result",
            ),
            &["cache", "result"],
        )?;
        registry.register(Box::new(cache.clone()))?;
        let jwks = IntCounterVec::new(
            Opts::new(
                "tokengate_jwks_refreshes_total",
                "JWKS fetches by issuer and result",
            ),
            &["issuer", "result"],
        )?;
        registry.register(Box::new(jwks.clone()))?;

        let denied = Reason::ALL
            .iter()
            .map(|reason| {
                let outcome = if reason.status().is_server_error() {
                    "error"
                } else {
                    "deny"
                };
                decisions.with_label_values(&[outcome, reason.as_str()])
            })
            .collect();
        let per_issuer = |result: &str| {
            issuer_names
                .iter()
                .map(|name| jwks.with_label_values(&[name.as_str(), result]))
                .collect()
        };
        Ok(Self {
            allowed: decisions.with_label_values(&["allow", "ok"]),
            denied,
            cache_hits: cache.with_label_values(&["verified_token", "hit"]),
            cache_misses: cache.with_label_values(&["verified_token", "miss"]),
            jwks_fetch_ok: per_issuer("success"),
            jwks_fetch_failed: per_issuer("failure"),
        })
    }

    pub fn allowed(&self) {
        self.allowed.inc();
    }

    pub fn denied(&self, reason: Reason) {
        self.denied[reason.index()].inc();
    }

    pub fn cache_lookup(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    pub fn jwks_fetch(&self, issuer: usize, success: bool) {
        let counters = if success {
            &self.jwks_fetch_ok
        } else {
            &self.jwks_fetch_failed
        };
        if let Some(counter) = counters.get(issuer) {
            counter.inc();
        }
    }
}
