//! The key store of one issuer: discovery and JWKS fetches, background refresh, and the
//! rate-limited refetch for unknown `kid`s. Parsing keys is [`super::jwk`]'s, reading
//! the discovery document [`super::discovery`]'s.
//!
//! Requests read the current key set through an atomically swapped `Arc` and never wait
//! on a refresh, except the one request that carries a `kid` we have not seen, which waits
//! for (at most) one coalesced fetch.
//!
//! Every key is known by its material (its RFC 7638 thumbprint) as well as its `kid`, so
//! a refresh notices a withdrawn key even when it had no `kid` or when its `kid` now
//! names other material, and the issuer's cached verdicts are dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use url::Url;

use super::alg::Alg;
use super::discovery::ProviderMetadata;
use super::jwk::{KeySet, VerifyingKey};
use crate::config::{IssuerSettings, KeyRefreshSettings};
use crate::error::CauseChain;
use crate::metrics::IssuerMetrics;
use crate::outbound::{self, FetchError};
use crate::shutdown::Shutdown;

/// Largest discovery document or JWKS we accept: real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// First retry delay after a failed fetch; doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Why a discovery or JWKS fetch failed. The last good keys stay in use.
#[derive(Debug, thiserror::Error)]
pub enum KeyFetchError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("JWKS is not a valid key set document")]
    InvalidJwks(#[source] serde_json::Error),
    #[error("discovery document names issuer {found:?}, not the configured one")]
    IssuerMismatch { found: String },
    #[error("discovery document has an invalid jwks_uri")]
    BadJwksUri,
    #[error("JWKS holds no usable signing key")]
    NoUsableKeys,
}

/// Where the JWKS lives: configured, or learned once from discovery.
enum JwksLocation {
    Configured(Url),
    Discover { discovered: Option<Url> },
}

/// What a successful fetch tells the refresher.
pub struct Refreshed {
    /// `Cache-Control: max-age` of the JWKS response.
    pub max_age: Option<Duration>,
}

/// The keys of one issuer.
pub struct KeyStore {
    issuer: String,
    name: String,
    algorithms: Vec<Alg>,
    timing: KeyRefreshSettings,
    client: reqwest::Client,
    metrics: IssuerMetrics,
    current: ArcSwapOption<KeySet>,
    /// `introspection_endpoint` of the discovery document (RFC 8414 §2), learned by the
    /// same fetch that finds the JWKS, for the issuer's introspection client.
    introspection_endpoint: ArcSwapOption<Url>,
    /// Bumped whenever a refresh withdraws a key, recognised by its material (its RFC 7638
    /// thumbprint) and `kid`: cached verdicts made with an older generation are dropped,
    /// so a withdrawn key stops vouching for tokens at once.
    withdrawal_generation: AtomicU64,
    /// Serialises fetches (one at a time per issuer) and holds the discovered JWKS URL.
    fetch_lock: tokio::sync::Mutex<JwksLocation>,
    /// When the last unknown-`kid` refetch started: the cooldown is counted from here.
    last_unknown_kid_fetch: Mutex<Option<Instant>>,
}

impl KeyStore {
    pub fn new(
        settings: &IssuerSettings,
        jwks_uri: Option<Url>,
        algorithms: Vec<Alg>,
        client: reqwest::Client,
        metrics: IssuerMetrics,
    ) -> Self {
        let location = match jwks_uri {
            Some(url) => JwksLocation::Configured(url),
            None => JwksLocation::Discover { discovered: None },
        };
        Self {
            issuer: settings.issuer.clone(),
            name: settings.display_name().to_owned(),
            algorithms,
            timing: settings.keys.clone(),
            client,
            metrics,
            current: ArcSwapOption::empty(),
            introspection_endpoint: ArcSwapOption::empty(),
            withdrawal_generation: AtomicU64::new(0),
            fetch_lock: tokio::sync::Mutex::new(location),
            last_unknown_kid_fetch: Mutex::new(None),
        }
    }

    /// The keys to verify with, unless they were never loaded or are older than
    /// `max_stale` (then no verdict is possible).
    pub fn current(&self) -> Option<Arc<KeySet>> {
        self.current
            .load_full()
            .filter(|set| set.fetched_at.elapsed() <= self.timing.max_stale)
    }

    /// Ready once keys are loaded and not too stale.
    pub fn is_ready(&self) -> bool {
        self.current().is_some()
    }

    /// Seconds since the keys in use were fetched, if any were.
    pub fn key_age(&self) -> Option<Duration> {
        self.current
            .load()
            .as_ref()
            .map(|set| set.fetched_at.elapsed())
    }

    /// The introspection endpoint named by discovery, once discovery has run (never when
    /// `jwks_uri` is configured, since discovery is then skipped).
    pub fn discovered_introspection_endpoint(&self) -> Option<Arc<Url>> {
        self.introspection_endpoint.load_full()
    }

    pub fn withdrawal_generation(&self) -> u64 {
        self.withdrawal_generation.load(Ordering::Acquire)
    }

    /// Fetches the JWKS (after discovery if needed) and swaps it in.
    pub async fn refresh(&self) -> Result<Refreshed, KeyFetchError> {
        let mut location = self.fetch_lock.lock().await;
        self.refresh_locked(&mut location).await
    }

    async fn refresh_locked(
        &self,
        location: &mut JwksLocation,
    ) -> Result<Refreshed, KeyFetchError> {
        let result = self.fetch(location).await;
        match &result {
            Ok(refreshed) => {
                self.metrics.jwks_fetch(true);
                let count = self.current.load().as_ref().map_or(0, |set| set.len());
                tracing::debug!(issuer = %self.name, keys = count, max_age = ?refreshed.max_age, "JWKS refreshed");
            }
            Err(error) => {
                self.metrics.jwks_fetch(false);
                tracing::warn!(issuer = %self.name, error = %CauseChain(error), "JWKS refresh failed; keeping the last good keys");
            }
        }
        result
    }

    async fn fetch(&self, location: &mut JwksLocation) -> Result<Refreshed, KeyFetchError> {
        let jwks_uri = match location {
            JwksLocation::Configured(url) => url.clone(),
            JwksLocation::Discover {
                discovered: Some(url),
            } => url.clone(),
            JwksLocation::Discover { discovered } => {
                let url = self.discover().await?;
                *discovered = Some(url.clone());
                url
            }
        };
        let (body, max_age) = self.get_bounded(&jwks_uri).await?;
        self.load_jwks(&body)?;
        Ok(Refreshed { max_age })
    }

    /// Parses a JWKS document and swaps it in, keeping the old keys if it holds no usable
    /// key. Returns the number of usable keys.
    pub fn load_jwks(&self, body: &[u8]) -> Result<usize, KeyFetchError> {
        let set = KeySet::parse(body, &self.algorithms).map_err(KeyFetchError::InvalidJwks)?;
        if set.is_empty() {
            return Err(KeyFetchError::NoUsableKeys);
        }
        let count = set.len();
        let current = Arc::new(set);
        let previous = self.current.swap(Some(current.clone()));
        if let Some(previous) = previous {
            // By material, not by `kid` alone: a key published without a `kid`, or a `kid`
            // that now names other material, is withdrawn just the same. The generation is
            // bumped after the swap, so a verdict reached with the old keys is always
            // stamped with the old generation.
            let withdrawn: Vec<String> = previous
                .withdrawn_in(&current)
                .map(VerifyingKey::describe)
                .collect();
            if !withdrawn.is_empty() {
                self.withdrawal_generation.fetch_add(1, Ordering::AcqRel);
                tracing::info!(
                    issuer = %self.name,
                    withdrawn = withdrawn.join(", "),
                    "signing keys withdrawn; every cached verdict of this issuer dropped"
                );
            }
        }
        Ok(count)
    }

    /// Learns the JWKS location (and the introspection endpoint) from the issuer's
    /// discovery document.
    async fn discover(&self) -> Result<Url, KeyFetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let url = Url::parse(&url).map_err(|_| KeyFetchError::BadJwksUri)?;
        let (body, _) = self.get_bounded(&url).await?;
        let metadata = ProviderMetadata::parse(&body, url.as_str(), &self.issuer)?;
        if metadata.invalid_introspection_endpoint {
            tracing::warn!(issuer = %self.name, "discovery document has an invalid introspection_endpoint; ignored");
        }
        self.introspection_endpoint
            .store(metadata.introspection_endpoint.map(Arc::new));
        Ok(metadata.jwks_uri)
    }

    /// GET with a size cap, returning the body and the response's `max-age`.
    async fn get_bounded(&self, url: &Url) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let request = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json");
        let mut response = outbound::send(request, url.as_str()).await?;
        if !response.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: response.status().as_u16(),
            });
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|value| value.to_str().ok())
            .and_then(parse_max_age);
        let body = outbound::read_capped(&mut response, url.as_str(), MAX_DOCUMENT_BYTES).await?;
        Ok((body, max_age))
    }

    /// Looks a `kid` up after at most one refetch per cooldown. Concurrent callers queue on
    /// the fetch lock and then find the key the first one fetched; callers inside the
    /// cooldown get no fetch at all.
    pub async fn find_after_refetch(&self, kid: &str) -> Option<Arc<VerifyingKey>> {
        let mut location = self.fetch_lock.lock().await;
        if let Some(key) = self.current().and_then(|set| set.get(kid).cloned()) {
            return Some(key);
        }
        {
            let mut last = self
                .last_unknown_kid_fetch
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if last.is_some_and(|at| at.elapsed() < self.timing.unknown_kid_cooldown) {
                return None;
            }
            *last = Some(Instant::now());
        }
        tracing::info!(issuer = %self.name, "token with an unknown kid; refetching the JWKS");
        self.refresh_locked(&mut location).await.ok()?;
        self.current().and_then(|set| set.get(kid).cloned())
    }

    /// Refreshes forever: on success after the response's `max-age` clamped to the
    /// configured bounds, on failure (already logged) with exponential backoff.
    pub async fn run_refresher(
        self: Arc<Self>,
        first: Result<Refreshed, KeyFetchError>,
        mut shutdown: Shutdown,
    ) {
        let mut last = first;
        let mut retry = FIRST_RETRY;
        loop {
            let wait = match &last {
                Ok(refreshed) => {
                    retry = FIRST_RETRY;
                    self.next_refresh(refreshed.max_age)
                }
                Err(_) => {
                    let wait = retry;
                    retry = (retry * 2).min(self.timing.refresh_interval);
                    wait
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.started() => return,
            }
            last = tokio::select! {
                refreshed = self.refresh() => refreshed,
                () = shutdown.started() => return,
            };
        }
    }

    fn next_refresh(&self, max_age: Option<Duration>) -> Duration {
        max_age.unwrap_or(self.timing.refresh_interval).clamp(
            self.timing.min_refresh_interval,
            self.timing.refresh_interval,
        )
    }
}

fn parse_max_age(cache_control: &str) -> Option<Duration> {
    cache_control
        .split(',')
        .filter_map(|directive| directive.trim().strip_prefix("max-age="))
        .find_map(|seconds| seconds.trim_matches('"').parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const ALL: &[Alg] = &Alg::ALL;

    fn key_store() -> KeyStore {
        let settings: IssuerSettings = serde_json::from_value(json!({
            "issuer": "https://sso.example.com",
            "audiences": ["orders-api"],
        }))
        .unwrap();
        let metrics = crate::metrics::Metrics::new(&prometheus::Registry::new(), &[]).unwrap();
        KeyStore::new(
            &settings,
            None,
            ALL.to_vec(),
            reqwest::Client::new(),
            metrics.issuer("test"),
        )
    }

    fn without_kid(jwk: &Value) -> Value {
        let mut jwk = jwk.clone();
        jwk.as_object_mut().unwrap().remove("kid");
        jwk
    }

    /// Loads each JWKS in turn; returns the generation after each.
    fn generations(documents: &[Vec<Value>]) -> Vec<u64> {
        let store = key_store();
        documents
            .iter()
            .map(|keys| {
                let body = json!({ "keys": keys }).to_string();
                store.load_jwks(body.as_bytes()).unwrap();
                store.withdrawal_generation()
            })
            .collect()
    }

    #[test]
    fn a_key_is_withdrawn_when_its_material_goes_whatever_its_kid() {
        let new = |kid: &str| {
            crate::demo::SigningKey::generate(jsonwebtoken::Algorithm::ES256, kid)
                .public_jwk()
                .clone()
        };
        let (a, b) = (new("a"), new("b"));
        // Unchanged, reordered, or grown: nothing withdrawn.
        assert_eq!(
            generations(&[vec![a.clone()], vec![a.clone()], vec![b.clone(), a.clone()]]),
            [0, 0, 0]
        );
        // The `kid` goes: withdrawn (as before).
        assert_eq!(
            generations(&[vec![a.clone(), b.clone()], vec![b.clone()]]),
            [0, 1]
        );
        // A key without `kid` goes: withdrawn.
        let a_anonymous = without_kid(&a);
        assert_eq!(
            generations(&[vec![a_anonymous.clone(), b.clone()], vec![b.clone()]]),
            [0, 1]
        );
        // A `kid` now names other material: the old material is withdrawn.
        let a_reused = new("a");
        assert_eq!(
            generations(&[vec![a.clone()], vec![a_reused.clone()]]),
            [0, 1]
        );
        // The same material under another `kid` no longer matches the tokens that name
        // the old one: counted as withdrawn too (dropping verdicts is the safe side).
        let mut a_renamed = a.clone();
        a_renamed["kid"] = json!("a2");
        assert_eq!(generations(&[vec![a.clone()], vec![a_renamed]]), [0, 1]);
        // A key without `kid` published again without `kid`: kept.
        assert_eq!(
            generations(&[vec![a_anonymous.clone()], vec![b, a_anonymous]]),
            [0, 0]
        );
    }

    #[test]
    fn max_age() {
        assert_eq!(
            parse_max_age("public, max-age=600"),
            Some(Duration::from_secs(600))
        );
        assert_eq!(parse_max_age("no-cache"), None);
    }
}
