//! The key store of one issuer: discovery, JWKS fetch and parsing, background refresh,
//! and the rate-limited refetch for unknown `kid`s.
//!
//! Requests read the current key set through an atomically swapped `Arc` and never wait
//! on a refresh, except the one request that carries a `kid` we have not seen, which waits
//! for (at most) one coalesced fetch.
//!
//! Every key is known by its material (its RFC 7638 thumbprint) as well as its `kid`, so
//! a refresh notices a withdrawn key even when it had no `kid` or when its `kid` now
//! names other material, and the issuer's cached verdicts are dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::{self as lc, ParsedPublicKey, RsaPublicKeyComponents};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::alg::{Alg, KeyFamily};
use crate::config::{IssuerSettings, KeyRefreshSettings};
use crate::error::{CauseChain, Reason};
use crate::metrics::IssuerMetrics;
use crate::shutdown::Shutdown;

/// Largest discovery document or JWKS we accept: real ones are a few KiB.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Most keys kept from one JWKS; bounds the work for a token without `kid`.
const MAX_KEYS: usize = 64;
/// RSA keys below this size are too weak to trust (NIST SP 800-57).
const MIN_RSA_BITS: usize = 2048;
/// First retry delay after a failed fetch; doubles up to the refresh interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Why a discovery or JWKS fetch failed. The last good keys stay in use.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url} sent invalid JSON")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("JWKS is not a valid key set document")]
    InvalidJwks(#[source] serde_json::Error),
    #[error("discovery document names issuer {found:?}, not the configured one")]
    IssuerMismatch { found: String },
    #[error("discovery document has an invalid jwks_uri")]
    BadJwksUri,
    #[error("JWKS holds no usable signing key")]
    NoUsableKeys,
}

/// RFC 7638 JWK thumbprint: the SHA-256 of a key's required members. It names the key
/// material itself, whatever `kid` (if any) the JWKS gives it.
pub type Thumbprint = [u8; 32];

/// A public key from the JWKS, ready to verify, with the algorithms it may verify.
pub struct VerifyingKey {
    pub kid: Option<String>,
    /// What the key is, independent of its `kid`: a key published without a `kid`, or a
    /// `kid` reused for new material, is still recognised when it is withdrawn.
    pub thumbprint: Thumbprint,
    /// One parsed public key per algorithm this key may verify: its own `alg` if it names
    /// one, else every allowed algorithm of its `kty`/`crv`, never outside the issuer's
    /// allow-list. Parsed when the JWKS is loaded, so a verification does no key parsing
    /// (for RSA that includes the Montgomery set-up).
    verifiers: Vec<(Alg, ParsedPublicKey)>,
}

impl VerifyingKey {
    pub fn allows(&self, alg: Alg) -> bool {
        self.verifiers.iter().any(|(allowed, _)| *allowed == alg)
    }

    pub fn algorithms(&self) -> impl Iterator<Item = Alg> + '_ {
        self.verifiers.iter().map(|(alg, _)| *alg)
    }

    /// True when `self` (from a new JWKS) still vouches for every token `previous` did:
    /// the same material under the same `kid`, for at least the same algorithms.
    fn succeeds(&self, previous: &VerifyingKey) -> bool {
        self.thumbprint == previous.thumbprint
            && self.kid == previous.kid
            && previous.algorithms().all(|alg| self.allows(alg))
    }

    /// `kid=… thumbprint=…` for log lines (both are public).
    fn describe(&self) -> String {
        format!(
            "kid={} thumbprint={}",
            self.kid.as_deref().unwrap_or("(none)"),
            URL_SAFE_NO_PAD.encode(self.thumbprint)
        )
    }

    /// Checks `signature` over `message` with this key, for `alg` only: a key verifies
    /// only its own kty/alg, so an RSA key is never an HMAC secret.
    pub fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> Result<(), Reason> {
        let (_, key) = self
            .verifiers
            .iter()
            .find(|(allowed, _)| *allowed == alg)
            .ok_or(Reason::AlgorithmNotAllowed)?;
        key.verify_sig(message, signature)
            .map_err(|_| Reason::BadSignature)
    }
}

/// One parsed JWKS, swapped in whole.
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    all: Vec<Arc<VerifyingKey>>,
    fetched_at: Instant,
}

impl KeySet {
    /// Parses a JWKS, keeping only keys that are safe to verify with. Keys that are
    /// ignored are logged at debug level with the reason.
    pub fn parse(body: &[u8], allowed: &[Alg]) -> Result<KeySet, serde_json::Error> {
        #[derive(Deserialize)]
        struct RawSet {
            keys: Vec<Value>,
        }
        // Duplicate member names are refused here too: a JWKS read two ways could hold
        // two keys under one `kid`.
        let raw: RawSet = super::json::from_slice(body).and_then(serde_json::from_value)?;
        let mut set = KeySet {
            by_kid: HashMap::new(),
            all: Vec::new(),
            fetched_at: Instant::now(),
        };
        for raw_key in raw.keys.iter().take(MAX_KEYS) {
            match usable_key(raw_key, allowed) {
                Ok(key) => {
                    let key = Arc::new(key);
                    if let Some(kid) = &key.kid {
                        set.by_kid.insert(kid.clone(), key.clone());
                    }
                    set.all.push(key);
                }
                Err(why) => {
                    let kid = raw_key.get("kid").and_then(Value::as_str).unwrap_or("");
                    tracing::debug!(kid, why, "JWKS key ignored");
                }
            }
        }
        Ok(set)
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyingKey>> {
        self.by_kid.get(kid)
    }

    /// Keys that may verify `alg`, for a token without `kid`.
    pub fn candidates(&self, alg: Alg) -> impl Iterator<Item = &Arc<VerifyingKey>> {
        self.all.iter().filter(move |key| key.allows(alg))
    }

    /// The keys of `self` that `next` no longer holds (see [`VerifyingKey::succeeds`]).
    fn withdrawn_in<'a>(&'a self, next: &'a KeySet) -> impl Iterator<Item = &'a VerifyingKey> {
        self.all
            .iter()
            .filter(|old| !next.all.iter().any(|new| new.succeeds(old)))
            .map(|old| old.as_ref())
    }
}

/// Decides whether one JWK may be used, and for which algorithms.
fn usable_key(raw: &Value, allowed: &[Alg]) -> Result<VerifyingKey, &'static str> {
    const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];
    if PRIVATE_MEMBERS
        .iter()
        .any(|member| raw.get(member).is_some())
    {
        // A published private key (or a symmetric secret) is compromised by definition.
        return Err("holds private key material");
    }
    if let Some(key_use) = raw.get("use") {
        if key_use.as_str() != Some("sig") {
            return Err("not a signature key (use)");
        }
    }
    if let Some(ops) = raw.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Err("not a verification key (key_ops)");
        }
    }
    let kty = raw.get("kty").and_then(Value::as_str).unwrap_or("");
    let crv = raw.get("crv").and_then(Value::as_str).unwrap_or("");
    let family = KeyFamily::of_jwk(kty, crv).ok_or("unsupported kty/crv")?;
    let algorithms: Vec<Alg> = match raw.get("alg") {
        Some(alg) => {
            let alg = alg.as_str().and_then(Alg::from_name).ok_or("unknown alg")?;
            if alg.family() != family {
                return Err("alg does not match kty");
            }
            vec![alg]
        }
        None => family.algorithms().to_vec(),
    };
    let algorithms: Vec<Alg> = algorithms
        .into_iter()
        .filter(|alg| allowed.contains(alg))
        .collect();
    if algorithms.is_empty() {
        return Err("no allowed algorithm");
    }
    let thumbprint;
    let verifiers = match family {
        KeyFamily::Rsa => {
            let modulus = base64_member(raw, "n").ok_or("bad modulus")?;
            let modulus = strip_leading_zeros(&modulus);
            if modulus.len() * 8 < MIN_RSA_BITS {
                return Err("RSA key shorter than 2048 bits");
            }
            let exponent = base64_member(raw, "e").ok_or("bad exponent")?;
            let exponent = strip_leading_zeros(&exponent);
            thumbprint = jwk_thumbprint(&[
                ("e", &URL_SAFE_NO_PAD.encode(exponent)),
                ("kty", "RSA"),
                ("n", &URL_SAFE_NO_PAD.encode(modulus)),
            ]);
            let components = RsaPublicKeyComponents {
                n: modulus,
                e: exponent,
            };
            algorithms
                .iter()
                .map(|alg| {
                    let parameters = alg.rsa_parameters().ok_or("alg does not match kty")?;
                    let parsed = components
                        .to_parsed_public_key(parameters)
                        .map_err(|_| "unusable key material")?;
                    Ok((*alg, parsed))
                })
                .collect::<Result<Vec<_>, &'static str>>()?
        }
        KeyFamily::EcP256 | KeyFamily::EcP384 => {
            // SEC 1 uncompressed point; RFC 7518 §6.2.1.2 requires full-length coordinates.
            let (length, verification): (usize, &'static lc::EcdsaVerificationAlgorithm) =
                if family == KeyFamily::EcP256 {
                    (32, &lc::ECDSA_P256_SHA256_FIXED)
                } else {
                    (48, &lc::ECDSA_P384_SHA384_FIXED)
                };
            let x = base64_member(raw, "x").ok_or("bad x coordinate")?;
            let y = base64_member(raw, "y").ok_or("bad y coordinate")?;
            if x.len() != length || y.len() != length {
                return Err("EC coordinates of the wrong length");
            }
            thumbprint = jwk_thumbprint(&[
                ("crv", crv),
                ("kty", "EC"),
                ("x", &URL_SAFE_NO_PAD.encode(&x)),
                ("y", &URL_SAFE_NO_PAD.encode(&y)),
            ]);
            let point = [&[0x04][..], &x, &y].concat();
            let parsed =
                ParsedPublicKey::new(verification, point).map_err(|_| "unusable key material")?;
            vec![(algorithms[0], parsed)]
        }
        KeyFamily::Ed25519 => {
            let x = base64_member(raw, "x").ok_or("bad x coordinate")?;
            // RFC 8037 §2: the required members of an OKP key are crv, kty and x.
            thumbprint = jwk_thumbprint(&[
                ("crv", crv),
                ("kty", "OKP"),
                ("x", &URL_SAFE_NO_PAD.encode(&x)),
            ]);
            let parsed =
                ParsedPublicKey::new(&lc::ED25519, x).map_err(|_| "unusable key material")?;
            vec![(algorithms[0], parsed)]
        }
    };
    Ok(VerifyingKey {
        kid: raw.get("kid").and_then(Value::as_str).map(str::to_owned),
        thumbprint,
        verifiers,
    })
}

/// RFC 7638 §3: SHA-256 over the JSON object of the required members, sorted by name,
/// with no whitespace. The members are given sorted, with values re-encoded from the
/// decoded bytes: an RSA integer without leading zero octets (the form RFC 7518 §6.3.1
/// requires), so that `n` with and without a sign byte is the same key. For keys in
/// that canonical form this is exactly the thumbprint other tools compute. No value
/// needs JSON escaping: they are base64url or fixed names.
fn jwk_thumbprint(members: &[(&str, &str)]) -> Thumbprint {
    let mut canonical = String::with_capacity(512);
    canonical.push('{');
    for (index, (name, value)) in members.iter().enumerate() {
        if index > 0 {
            canonical.push(',');
        }
        canonical.push('"');
        canonical.push_str(name);
        canonical.push_str("\":\"");
        canonical.push_str(value);
        canonical.push('"');
    }
    canonical.push('}');
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    let mut thumbprint = [0u8; 32];
    thumbprint.copy_from_slice(digest.as_ref());
    thumbprint
}

/// A base64url JWK member, decoded.
fn base64_member(raw: &Value, member: &str) -> Option<Vec<u8>> {
    raw.get(member)
        .and_then(Value::as_str)
        .and_then(|encoded| URL_SAFE_NO_PAD.decode(encoded).ok())
}

/// Big-endian integers in the wild sometimes carry a sign byte; the key parser wants none.
fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|byte| *byte != 0)
        .unwrap_or(bytes.len());
    &bytes[start..]
}

/// What tokengate takes from an issuer's discovery document (OpenID Connect Discovery
/// 1.0, RFC 8414).
#[derive(Debug)]
pub struct ProviderMetadata {
    pub jwks_uri: Url,
    /// The `introspection_endpoint`, when present and an http(s) URL.
    pub introspection_endpoint: Option<Url>,
    /// The document named an introspection endpoint that is not an http(s) URL.
    pub invalid_introspection_endpoint: bool,
}

impl ProviderMetadata {
    /// Parses a discovery document for `issuer`. Its `issuer` must be identical to the
    /// configured one (Discovery §4), or an attacker-controlled document could substitute
    /// its own keys; duplicate member names are refused, so no other reader of the same
    /// document sees another issuer or key location.
    pub fn parse(body: &[u8], issuer: &str) -> Result<ProviderMetadata, FetchError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
            #[serde(default)]
            introspection_endpoint: Option<String>,
        }
        let json_error = |source| FetchError::Json {
            url: "discovery document".to_owned(),
            source,
        };
        let document: Discovery = super::json::from_slice(body)
            .and_then(serde_json::from_value)
            .map_err(json_error)?;
        if document.issuer != issuer {
            return Err(FetchError::IssuerMismatch {
                found: document.issuer,
            });
        }
        let http_url = |text: &str| {
            Url::parse(text)
                .ok()
                .filter(|url| matches!(url.scheme(), "https" | "http"))
        };
        let jwks_uri = http_url(&document.jwks_uri).ok_or(FetchError::BadJwksUri)?;
        // Only trusted because the document's `issuer` matched above: the endpoint
        // receives our client secret.
        let introspection_endpoint = document.introspection_endpoint.as_deref().map(http_url);
        Ok(ProviderMetadata {
            jwks_uri,
            invalid_introspection_endpoint: matches!(introspection_endpoint, Some(None)),
            introspection_endpoint: introspection_endpoint.flatten(),
        })
    }
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
    pub async fn refresh(&self) -> Result<Refreshed, FetchError> {
        let mut location = self.fetch_lock.lock().await;
        self.refresh_locked(&mut location).await
    }

    async fn refresh_locked(&self, location: &mut JwksLocation) -> Result<Refreshed, FetchError> {
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

    async fn fetch(&self, location: &mut JwksLocation) -> Result<Refreshed, FetchError> {
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
    pub fn load_jwks(&self, body: &[u8]) -> Result<usize, FetchError> {
        let set = KeySet::parse(body, &self.algorithms).map_err(FetchError::InvalidJwks)?;
        if set.is_empty() {
            return Err(FetchError::NoUsableKeys);
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
    async fn discover(&self) -> Result<Url, FetchError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let url = Url::parse(&url).map_err(|_| FetchError::BadJwksUri)?;
        let (body, _) = self.get_bounded(&url).await?;
        let metadata =
            ProviderMetadata::parse(&body, &self.issuer).map_err(|error| match error {
                FetchError::Json { source, .. } => FetchError::Json {
                    url: url.to_string(),
                    source,
                },
                other => other,
            })?;
        if metadata.invalid_introspection_endpoint {
            tracing::warn!(issuer = %self.name, "discovery document has an invalid introspection_endpoint; ignored");
        }
        self.introspection_endpoint
            .store(metadata.introspection_endpoint.map(Arc::new));
        Ok(metadata.jwks_uri)
    }

    /// GET with a size cap, returning the body and the response's `max-age`.
    async fn get_bounded(&self, url: &Url) -> Result<(Vec<u8>, Option<Duration>), FetchError> {
        let http_error = |source| FetchError::Http {
            url: url.to_string(),
            source,
        };
        let mut response = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(http_error)?;
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
        if response
            .content_length()
            .is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(FetchError::TooLarge {
                url: url.to_string(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http_error)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(FetchError::TooLarge {
                    url: url.to_string(),
                });
            }
            body.extend_from_slice(&chunk);
        }
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
        first: Result<Refreshed, FetchError>,
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
    use serde_json::json;

    const ALL: &[Alg] = &Alg::ALL;

    fn rsa_jwk(bits: usize) -> Value {
        let mut modulus = vec![0xC5u8; bits / 8];
        modulus[bits / 8 - 1] = 0x01;
        json!({"kty": "RSA", "kid": "r", "n": URL_SAFE_NO_PAD.encode(modulus), "e": "AQAB"})
    }

    #[test]
    fn rsa_key_without_alg_serves_every_allowed_rsa_algorithm() {
        let key = usable_key(&rsa_jwk(2048), &[Alg::RS256, Alg::ES256]).unwrap();
        assert_eq!(key.algorithms().collect::<Vec<_>>(), [Alg::RS256]);
    }

    #[test]
    fn short_rsa_keys_are_ignored() {
        assert!(usable_key(&rsa_jwk(1024), ALL).is_err());
    }

    #[test]
    fn encryption_and_private_keys_are_ignored() {
        let mut enc = rsa_jwk(2048);
        enc["use"] = json!("enc");
        assert!(usable_key(&enc, ALL).is_err());
        let mut private = rsa_jwk(2048);
        private["d"] = json!("AAAA");
        assert!(usable_key(&private, ALL).is_err());
        let secret = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert!(usable_key(&secret, ALL).is_err());
    }

    #[test]
    fn alg_must_match_kty() {
        let mut key = rsa_jwk(2048);
        key["alg"] = json!("ES256");
        assert!(usable_key(&key, ALL).is_err());
        key["alg"] = json!("HS256");
        assert!(usable_key(&key, ALL).is_err());
    }

    #[test]
    fn ec_keys_are_parsed_once_and_checked_when_loaded() {
        let key = crate::demo::SigningKey::generate(jsonwebtoken::Algorithm::ES256, "e");
        let jwk = key.public_jwk().clone();
        let parsed = usable_key(&jwk, ALL).unwrap();
        assert_eq!(parsed.algorithms().collect::<Vec<_>>(), [Alg::ES256]);
        // A short coordinate, or a point that is not on the curve, never becomes a key.
        let mut short = jwk.clone();
        short["x"] = json!(URL_SAFE_NO_PAD.encode([7u8; 31]));
        assert_eq!(
            usable_key(&short, ALL).err(),
            Some("EC coordinates of the wrong length")
        );
        let mut off_curve = jwk.clone();
        off_curve["y"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
        assert_eq!(
            usable_key(&off_curve, ALL).err(),
            Some("unusable key material")
        );
    }

    #[test]
    fn a_parsed_key_verifies_only_its_algorithms() {
        let key = usable_key(&rsa_jwk(2048), &[Alg::RS256]).unwrap();
        assert_eq!(
            key.verify(Alg::PS256, b"m", b"s"),
            Err(Reason::AlgorithmNotAllowed)
        );
        assert_eq!(
            key.verify(Alg::RS256, b"m", b"s"),
            Err(Reason::BadSignature)
        );
    }

    #[test]
    fn one_bad_key_does_not_spoil_the_set() {
        let body = json!({"keys": [{"kty": "weird"}, rsa_jwk(2048)]}).to_string();
        let set = KeySet::parse(body.as_bytes(), ALL).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.get("r").is_some());
    }

    /// RFC 7638 §3.1's example key, whose thumbprint the RFC gives.
    fn rfc7638_key() -> Value {
        json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        })
    }

    fn thumbprint_of(jwk: &Value) -> String {
        URL_SAFE_NO_PAD.encode(usable_key(jwk, ALL).unwrap().thumbprint)
    }

    #[test]
    fn thumbprint_is_rfc_7638s() {
        assert_eq!(
            thumbprint_of(&rfc7638_key()),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn thumbprint_names_the_material_only() {
        let expected = thumbprint_of(&rfc7638_key());
        // Optional members do not count.
        let mut other = rfc7638_key();
        other["kid"] = json!("renamed");
        other["use"] = json!("sig");
        other.as_object_mut().unwrap().remove("alg");
        assert_eq!(thumbprint_of(&other), expected);
        // A sign byte in front of the modulus is the same integer.
        let n = URL_SAFE_NO_PAD
            .decode(rfc7638_key()["n"].as_str().unwrap())
            .unwrap();
        other["n"] = json!(URL_SAFE_NO_PAD.encode([&[0u8][..], &n].concat()));
        assert_eq!(thumbprint_of(&other), expected);
        // Other material is another key.
        assert_ne!(thumbprint_of(&rsa_jwk(2048)), expected);
    }

    #[test]
    fn ec_and_okp_thumbprints_hash_their_required_members() {
        use jsonwebtoken::Algorithm;
        for alg in [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
            let key = crate::demo::SigningKey::generate(alg, "x");
            let jwk = key.public_jwk();
            let required: &[&str] = match alg {
                Algorithm::EdDSA => &["crv", "kty", "x"],
                _ => &["crv", "kty", "x", "y"],
            };
            // serde_json's map is sorted and `to_string` adds no whitespace: the RFC 7638
            // form, built independently of the code under test.
            let members: serde_json::Map<String, Value> = required
                .iter()
                .map(|name| (name.to_string(), jwk[*name].clone()))
                .collect();
            let canonical = Value::Object(members).to_string();
            let digest =
                aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
            assert_eq!(
                thumbprint_of(jwk),
                URL_SAFE_NO_PAD.encode(digest.as_ref()),
                "{alg:?}"
            );
        }
    }

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
