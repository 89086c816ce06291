//! Typed metric handles, registered into a registry that the caller passes in (no global
//! state, so tests read their own). Every label value comes from configuration or a
//! closed enum; handles are resolved once here so the request path only increments.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

use crate::error::Reason;

/// What one call to an RFC 7662 introspection endpoint gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionResult {
    /// An answer with `active: true` (its claims may still be refused).
    Success,
    /// An answer with `active: false`.
    Inactive,
    /// No usable answer: unreachable, timeout, non-2xx, unreadable body.
    Error,
}

impl IntrospectionResult {
    const ALL: [IntrospectionResult; 3] = [
        IntrospectionResult::Success,
        IntrospectionResult::Inactive,
        IntrospectionResult::Error,
    ];

    fn as_str(self) -> &'static str {
        match self {
            IntrospectionResult::Success => "success",
            IntrospectionResult::Inactive => "inactive",
            IntrospectionResult::Error => "error",
        }
    }
}

pub struct Metrics {
    allowed: IntCounter,
    denied: Vec<IntCounter>,
    cache_hits: IntCounter,
    cache_misses: IntCounter,
    introspection_cache_hits: IntCounter,
    introspection_cache_misses: IntCounter,
    jwks_fetch_ok: Vec<IntCounter>,
    jwks_fetch_failed: Vec<IntCounter>,
    /// Per issuer, one counter per [`IntrospectionResult`] (in `ALL` order).
    introspection_calls: Vec<[IntCounter; 3]>,
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
        let introspection = IntCounterVec::new(
            Opts::new(
                "tokengate_introspection_requests_total",
                "RFC 7662 introspection calls by issuer and result",
            ),
            &["issuer", "result"],
        )?;
        registry.register(Box::new(introspection.clone()))?;

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
            introspection_cache_hits: cache.with_label_values(&["introspection", "hit"]),
            introspection_cache_misses: cache.with_label_values(&["introspection", "miss"]),
            jwks_fetch_ok: per_issuer("success"),
            jwks_fetch_failed: per_issuer("failure"),
            introspection_calls: issuer_names
                .iter()
                .map(|name| {
                    IntrospectionResult::ALL.map(|result| {
                        introspection.with_label_values(&[name.as_str(), result.as_str()])
                    })
                })
                .collect(),
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

    /// A lookup in the introspection cache.
    pub fn introspection_cache_lookup(&self, hit: bool) {
        if hit {
            self.introspection_cache_hits.inc();
        } else {
            self.introspection_cache_misses.inc();
        }
    }

    /// One call to issuer `issuer`'s introspection endpoint.
    pub fn introspection_call(&self, issuer: usize, result: IntrospectionResult) {
        if let Some(counters) = self.introspection_calls.get(issuer) {
            let index = IntrospectionResult::ALL
                .iter()
                .position(|candidate| *candidate == result)
                .unwrap_or_default();
            counters[index].inc();
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
