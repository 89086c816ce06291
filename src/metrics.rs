//! Typed metric handles, registered into a registry that the caller passes in (no global
//! state, so tests read their own). Every label value comes from configuration or a
//! closed enum; handles are resolved once here so the request path only increments.

use std::time::Duration;

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use crate::error::Reason;
use crate::revocation::{EventResult, Source};

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

/// The two caches, as their `cache` label names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheName {
    VerifiedToken,
    Introspection,
}

impl CacheName {
    const ALL: [CacheName; 2] = [CacheName::VerifiedToken, CacheName::Introspection];

    fn as_str(self) -> &'static str {
        match self {
            CacheName::VerifiedToken => "verified_token",
            CacheName::Introspection => "introspection",
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
    /// The per-issuer families: each issuer resolves its own handles once
    /// ([`Metrics::issuer`]), when it is compiled (at start-up or on a reload).
    jwks: IntCounterVec,
    introspection_calls: IntCounterVec,
    introspection_duration: HistogramVec,
    key_age: GaugeVec,
    introspection_waiting: IntGaugeVec,
    /// Request latency by outcome: allow, deny, error.
    request_duration: [Histogram; 3],
    in_flight: IntGauge,
    /// Entries pushed out of a full cache, by cache.
    pub verified_token_evictions: IntCounter,
    pub introspection_evictions: IntCounter,
    /// Entries and bytes held, by [`CacheName`].
    cache_entries: [IntGauge; 2],
    cache_bytes: [IntGauge; 2],
    config_reload_ok: IntCounter,
    config_reload_failed: IntCounter,
    config_last_reload_success: Gauge,
}

/// One issuer's series, resolved once so that the request path only increments.
#[derive(Clone)]
pub struct IssuerMetrics {
    jwks_fetch_ok: IntCounter,
    jwks_fetch_failed: IntCounter,
    /// One counter per [`IntrospectionResult`] (in `ALL` order).
    introspection_calls: [IntCounter; 3],
    introspection_duration: Histogram,
    key_age: Gauge,
    pub introspection_waiting: IntGauge,
}

impl IssuerMetrics {
    /// Duration of one introspection call.
    pub fn introspection_duration(&self, elapsed: Duration) {
        self.introspection_duration.observe(elapsed.as_secs_f64());
    }

    /// Sets the key-age gauge (called when metrics are scraped).
    pub fn set_key_age(&self, age: Option<Duration>) {
        self.key_age.set(age.map_or(-1.0, |age| age.as_secs_f64()));
    }

    /// One call to the issuer's introspection endpoint.
    pub fn introspection_call(&self, result: IntrospectionResult) {
        // `ALL` lists the variants in declaration order.
        self.introspection_calls[result as usize].inc();
    }

    pub fn jwks_fetch(&self, success: bool) {
        if success {
            self.jwks_fetch_ok.inc();
        } else {
            self.jwks_fetch_failed.inc();
        }
    }
}

/// From 10 µs (a cache hit) to a second (a slow introspection call).
const LATENCY_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0,
];

/// How a decision ended, for the latency histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Allow,
    Deny,
    Error,
}

impl Outcome {
    pub fn of(result: Result<(), Reason>) -> Self {
        match result {
            Ok(()) => Outcome::Allow,
            Err(reason) if reason.is_no_verdict() => Outcome::Error,
            Err(_) => Outcome::Deny,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::Error => "error",
        }
    }
}

/// Creates metric families and registers each into the registry it holds, if any, so
/// one definition serves both a served registry and detached handles.
struct Families<'a>(Option<&'a Registry>);

impl Families<'_> {
    fn add<C: prometheus::core::Collector + Clone + 'static>(
        &self,
        collector: C,
    ) -> prometheus::Result<C> {
        if let Some(registry) = self.0 {
            registry.register(Box::new(collector.clone()))?;
        }
        Ok(collector)
    }

    fn counter(&self, name: &str, help: &str) -> prometheus::Result<IntCounter> {
        self.add(IntCounter::new(name, help)?)
    }

    fn counters(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<IntCounterVec> {
        self.add(IntCounterVec::new(Opts::new(name, help), labels)?)
    }

    fn gauge(&self, name: &str, help: &str) -> prometheus::Result<IntGauge> {
        self.add(IntGauge::new(name, help)?)
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntGaugeVec> {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn float_gauges(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> prometheus::Result<GaugeVec> {
        self.add(GaugeVec::new(Opts::new(name, help), labels)?)
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> prometheus::Result<Histogram> {
        self.add(Histogram::with_opts(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        )?)
    }

    fn histograms(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
        labels: &[&str],
    ) -> prometheus::Result<HistogramVec> {
        self.add(HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )?)
    }
}

impl Metrics {
    /// Registers every series up front, one per issuer name and per denial reason.
    pub fn new(registry: &Registry, issuer_names: &[String]) -> prometheus::Result<Self> {
        let families = Families(Some(registry));
        let decisions = families.counters(
            "tokengate_decisions_total",
            "Auth decisions by outcome and reason",
            &["outcome", "reason"],
        )?;
        let cache = families.counters(
            "tokengate_cache_requests_total",
            "Cache lookups by cache and result",
            &["cache", "result"],
        )?;
        let jwks = families.counters(
            "tokengate_jwks_refreshes_total",
            "JWKS fetches by issuer and result",
            &["issuer", "result"],
        )?;
        let introspection = families.counters(
            "tokengate_introspection_requests_total",
            "RFC 7662 introspection calls by issuer and result",
            &["issuer", "result"],
        )?;
        let durations = families.histograms(
            "tokengate_request_duration_seconds",
            "Time to decide one auth request, by outcome",
            LATENCY_BUCKETS,
            &["outcome"],
        )?;
        let introspection_durations = families.histograms(
            "tokengate_introspection_duration_seconds",
            "Duration of RFC 7662 introspection calls, by issuer",
            LATENCY_BUCKETS,
            &["issuer"],
        )?;
        let in_flight = families.gauge(
            "tokengate_requests_in_flight",
            "Auth requests being decided right now",
        )?;
        let evictions = families.counters(
            "tokengate_cache_evictions_total",
            "Entries evicted from a full cache, by cache",
            &["cache"],
        )?;
        let key_age = families.float_gauges(
            "tokengate_jwks_key_age_seconds",
            "Seconds since each issuer's keys in use were fetched (-1: never)",
            &["issuer"],
        )?;
        let cache_entries = families.gauges(
            "tokengate_cache_entries",
            "Entries held, by cache (as of its last housekeeping)",
            &["cache"],
        )?;
        let cache_bytes = families.gauges(
            "tokengate_cache_bytes",
            "Memory the entries hold as the cache counts it against its max_bytes, by cache",
            &["cache"],
        )?;
        let introspection_waiting = families.gauges(
            "tokengate_introspection_waiting",
            "Requests waiting for a free introspection call slot, by issuer",
            &["issuer"],
        )?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let reloads = families.counters(
            "tokengate_config_reloads_total",
            "Configuration reloads by result",
            &["result"],
        )?;
        let last_reload = families.add(Gauge::new(
            "tokengate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration reload (0: none since start)",
        )?)?;

        let denied = Reason::ALL
            .iter()
            .map(|reason| {
                let outcome = Outcome::of(Err(*reason)).as_str();
                decisions.with_label_values(&[outcome, reason.as_str()])
            })
            .collect();
        let metrics = Self {
            allowed: decisions.with_label_values(&["allow", "ok"]),
            denied,
            cache_hits: cache.with_label_values(&["verified_token", "hit"]),
            cache_misses: cache.with_label_values(&["verified_token", "miss"]),
            introspection_cache_hits: cache.with_label_values(&["introspection", "hit"]),
            introspection_cache_misses: cache.with_label_values(&["introspection", "miss"]),
            jwks,
            introspection_calls: introspection,
            introspection_duration: introspection_durations,
            key_age,
            introspection_waiting,
            request_duration: [Outcome::Allow, Outcome::Deny, Outcome::Error]
                .map(|outcome| durations.with_label_values(&[outcome.as_str()])),
            in_flight,
            verified_token_evictions: evictions.with_label_values(&["verified_token"]),
            introspection_evictions: evictions.with_label_values(&["introspection"]),
            cache_entries: CacheName::ALL
                .map(|cache| cache_entries.with_label_values(&[cache.as_str()])),
            cache_bytes: CacheName::ALL
                .map(|cache| cache_bytes.with_label_values(&[cache.as_str()])),
            config_reload_ok: reloads.with_label_values(&["success"]),
            config_reload_failed: reloads.with_label_values(&["error"]),
            config_last_reload_success: last_reload,
        };
        for name in issuer_names {
            metrics.issuer(name);
        }
        Ok(metrics)
    }

    /// The series of the issuer named `name`, created (at zero) if new.
    pub fn issuer(&self, name: &str) -> IssuerMetrics {
        IssuerMetrics {
            jwks_fetch_ok: self.jwks.with_label_values(&[name, "success"]),
            jwks_fetch_failed: self.jwks.with_label_values(&[name, "failure"]),
            introspection_calls: IntrospectionResult::ALL.map(|result| {
                self.introspection_calls
                    .with_label_values(&[name, result.as_str()])
            }),
            introspection_duration: self.introspection_duration.with_label_values(&[name]),
            key_age: self.key_age.with_label_values(&[name]),
            introspection_waiting: self.introspection_waiting.with_label_values(&[name]),
        }
    }

    /// Drops the series of an issuer a reload removed, so dashboards do not show it
    /// frozen at its last value.
    pub fn forget_issuer(&self, name: &str) {
        for result in ["success", "failure"] {
            let _ = self.jwks.remove_label_values(&[name, result]);
        }
        for result in IntrospectionResult::ALL {
            let _ = self
                .introspection_calls
                .remove_label_values(&[name, result.as_str()]);
        }
        let _ = self.introspection_duration.remove_label_values(&[name]);
        let _ = self.key_age.remove_label_values(&[name]);
        let _ = self.introspection_waiting.remove_label_values(&[name]);
    }

    /// Counts a configuration reload; `at` is the Unix time of a successful one.
    pub fn config_reloaded(&self, success: bool, at: u64) {
        if success {
            self.config_reload_ok.inc();
            self.config_last_reload_success.set(at as f64);
        } else {
            self.config_reload_failed.inc();
        }
    }

    /// Counts a finished decision and its latency.
    pub fn decided(&self, result: Result<(), Reason>, elapsed: Duration) {
        match result {
            Ok(()) => self.allowed.inc(),
            Err(reason) => self.denied[reason.index()].inc(),
        }
        let outcome = Outcome::of(result) as usize;
        self.request_duration[outcome].observe(elapsed.as_secs_f64());
    }

    /// Counts a request as in flight until the guard is dropped.
    pub fn in_flight(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// Sets the size gauges of one cache (called when metrics are scraped).
    pub fn set_cache_size(&self, cache: CacheName, entries: u64, bytes: u64) {
        let gauge = |value: u64| i64::try_from(value).unwrap_or(i64::MAX);
        self.cache_entries[cache as usize].set(gauge(entries));
        self.cache_bytes[cache as usize].set(gauge(bytes));
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
}

/// Decrements the in-flight gauge when the request is done, however it ends.
pub struct InFlight<'a>(&'a IntGauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The revocation store's metrics. Registered once per process, like the store, which
/// outlives configuration reloads.
#[derive(Clone)]
pub struct RevocationMetrics {
    /// By [`Source`] then [`EventResult`], in their `ALL` order.
    events: Vec<[IntCounter; 3]>,
    /// Entries held.
    pub entries: IntGauge,
    /// 1 while the Redis feed is subscribed and loaded, else 0.
    pub feed_up: IntGauge,
    /// Local events that found the feed's queue full: held here, never shared.
    pub feed_dropped: IntCounter,
    /// From an event's time to its application here, for events from the feed.
    pub propagation: Histogram,
}

/// From a millisecond to ten seconds (a replica catching up after an outage).
const PROPAGATION_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl RevocationMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        Self::created(Families(Some(registry)))
    }

    fn created(families: Families<'_>) -> prometheus::Result<Self> {
        let events = families.counters(
            "tokengate_revocation_events_total",
            "Revocation events by source (backchannel, admin, feed) and result",
            &["source", "result"],
        )?;
        Ok(Self {
            events: Source::ALL
                .iter()
                .map(|source| {
                    EventResult::ALL
                        .map(|result| events.with_label_values(&[source.as_str(), result.as_str()]))
                })
                .collect(),
            entries: families.gauge("tokengate_revocation_entries", "Revocation entries held")?,
            feed_up: families.gauge(
                "tokengate_revocation_feed_up",
                "1 while the Redis revocation feed is subscribed and loaded, else 0",
            )?,
            feed_dropped: families.counter(
                "tokengate_revocation_feed_dropped_total",
                "Local revocation events not shared: the feed's queue was full",
            )?,
            propagation: families.histogram(
                "tokengate_revocation_propagation_seconds",
                "From a revocation event's time to its application here (feed events)",
                PROPAGATION_BUCKETS,
            )?,
        })
    }

    /// Handles registered nowhere, for unit tests and benchmarks.
    pub fn detached() -> Self {
        Self::created(Families(None)).expect("valid metric definitions")
    }

    /// Counts one event.
    pub fn event(&self, source: Source, result: EventResult) {
        self.events[source as usize][result as usize].inc();
    }
}
