//! Revocation: tokens refused before their `exp` because their session ended (OpenID
//! Connect Back-Channel Logout), their subject was logged out, or an operator said so.
//!
//! An entry is one of
//! - `(issuer, sid)`: every token of that session;
//! - `(issuer, jti)`: that one token;
//! - `(issuer, sub)` with the event's time: the subject's tokens issued at or before it
//!   (a token issued later, after the person logged in again, passes).
//!
//! The check runs on every request, verified-token and introspection cache hits
//! included, so it must cost next to nothing: each verified token carries the
//! fingerprints of its `sid`, `jti` and `sub` (computed once, at verification), and the
//! store is a set of immutable hash maps swapped atomically ([`ArcSwap`]), read without a
//! lock. Writes (events are rare: logouts, at human rates) copy one of [`SHARDS`] maps.
//!
//! Entries live for `revocation.retention` and the store holds at most
//! `revocation.max_entries` (the oldest go first). The store is built once per process
//! and outlives configuration reloads.
//!
//! Events come from the back-channel logout endpoint, the admin endpoint, and the Redis
//! [`feed`] that replicas share; local ones are handed to the feed to be written.

pub mod feed;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::digest;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::config::RevocationSettings;
use crate::error::Reason;
use crate::metrics::RevocationMetrics;

/// What an entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A session (`sid`).
    Sid,
    /// One token (`jti`).
    Jti,
    /// A subject (`sub`), for tokens issued at or before the event.
    Sub,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Sid => "sid",
            Kind::Jti => "jti",
            Kind::Sub => "sub",
        }
    }

    fn tag(self) -> u8 {
        match self {
            Kind::Sid => 1,
            Kind::Jti => 2,
            Kind::Sub => 3,
        }
    }
}

/// One revocation, as it travels between replicas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    /// The issuer's configured `issuer` string: the same on every replica, unlike its
    /// position in a configuration.
    pub issuer: String,
    pub kind: Kind,
    pub value: String,
    /// When it happened, in milliseconds since the Unix epoch.
    pub at_ms: u64,
}

impl Event {
    pub fn new(issuer: &str, kind: Kind, value: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            kind,
            value: value.to_owned(),
            at_ms: unix_millis(),
        }
    }

    fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.issuer, self.kind.tag(), &self.value)
    }
}

/// Longest issuer or value in an event: real ones are well under it.
pub const MAX_VALUE_BYTES: usize = 1024;

/// Where an event came from, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Backchannel,
    Admin,
    Feed,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Backchannel, Source::Admin, Source::Feed];

    pub fn as_str(self) -> &'static str {
        match self {
            Source::Backchannel => "backchannel",
            Source::Admin => "admin",
            Source::Feed => "feed",
        }
    }
}

/// What became of an event, as the metrics label it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventResult {
    /// Held from now on.
    Applied,
    /// Refused: an invalid logout token or request, an unreadable feed message.
    Refused,
    /// Valid but not held: older than the retention, too far in the future, too long.
    Ignored,
}

impl EventResult {
    pub const ALL: [EventResult; 3] = [
        EventResult::Applied,
        EventResult::Refused,
        EventResult::Ignored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventResult::Applied => "applied",
            EventResult::Refused => "refused",
            EventResult::Ignored => "ignored",
        }
    }
}

/// 128 bits of SHA-256 over (issuer, kind, value): what the store and the verified
/// tokens hold instead of the strings. A collision could only refuse a token wrongly
/// (fail closed), and at 128 bits it does not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 16]);

impl Fingerprint {
    pub fn of(issuer: &str, tag: u8, value: &str) -> Self {
        let mut context = digest::Context::new(&digest::SHA256);
        // Length-prefixed, so that no (issuer, value) pair reads as another.
        context.update(&(issuer.len() as u64).to_be_bytes());
        context.update(issuer.as_bytes());
        context.update(&[tag]);
        context.update(value.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&context.finish().as_ref()[..16]);
        Self(bytes)
    }

    fn shard(&self) -> usize {
        usize::from(self.0[0]) % SHARDS
    }

    /// Hex, for Redis key names.
    pub fn hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }
}

impl Hash for Fingerprint {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: eight of its bytes are the hash. Only issuers
        // and the operator can add entries, so nobody can grind a bucket full.
        let mut word = [0u8; 8];
        word.copy_from_slice(&self.0[8..]);
        state.write_u64(u64::from_le_bytes(word));
    }
}

/// The identity hasher for [`Fingerprint`]s.
#[derive(Default)]
struct WordHasher(u64);

impl Hasher for WordHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = word;
    }
}

/// What a verified token carries for the revocation check: fingerprints of its `sid`,
/// `jti` and `sub`, and its `iat`. Filled once, when the token is verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationKeys {
    sid: Option<Fingerprint>,
    jti: Option<Fingerprint>,
    sub: Option<Fingerprint>,
    issued_at: Option<u64>,
}

impl RevocationKeys {
    /// From a JWT's claims or an RFC 7662 answer (both name these members alike).
    pub fn from_claims(issuer: &str, claims: &Value) -> Self {
        let fingerprint = |kind: Kind| {
            claims
                .get(kind.as_str())
                .and_then(Value::as_str)
                .map(|value| Fingerprint::of(issuer, kind.tag(), value))
        };
        Self {
            sid: fingerprint(Kind::Sid),
            jti: fingerprint(Kind::Jti),
            sub: fingerprint(Kind::Sub),
            issued_at: claims.get("iat").and_then(crate::verify::jwt::numeric_date),
        }
    }
}

/// Number of maps the entries are spread over: a write copies one of them.
pub const SHARDS: usize = 64;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The event's time, in seconds: a `sub` entry refuses tokens issued at or before it.
    at: u64,
    /// When the entry is forgotten, in seconds.
    expires_at: u64,
}

type Shard = HashMap<Fingerprint, Entry, BuildHasherDefault<WordHasher>>;

/// Longest an event may lie in the future (clocks of replicas and issuers disagree).
const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(300);

/// Every revocation this process knows, and where new local ones are sent.
pub struct Revocations {
    shards: Vec<ArcSwap<Shard>>,
    /// Serialises writers; readers never take it.
    writer: Mutex<()>,
    /// Entries held, expired ones not yet pruned included; 0 skips every lookup.
    held: AtomicUsize,
    retention: Duration,
    max_entries: usize,
    /// Logout-token `jti`s already seen (Back-Channel Logout §2.6 step 10).
    seen_logout_tokens: moka::sync::Cache<Fingerprint, ()>,
    /// Local events, to be written to the feed (`None`: no feed configured).
    outbox: Option<mpsc::Sender<Event>>,
    /// The feed has loaded every current entry at least once since start.
    feed_loaded: AtomicBool,
    /// Readiness waits for that first load.
    ready_requires_feed: bool,
    pub metrics: RevocationMetrics,
}

impl Revocations {
    /// The store, and with a feed configured the receiving end of its outbox.
    pub fn new(
        settings: &RevocationSettings,
        metrics: RevocationMetrics,
    ) -> (Arc<Self>, Option<mpsc::Receiver<Event>>) {
        let (outbox, inbox) = match &settings.redis {
            Some(redis) => {
                let (sender, receiver) = mpsc::channel(redis.max_pending);
                (Some(sender), Some(receiver))
            }
            None => (None, None),
        };
        let store = Self {
            shards: (0..SHARDS)
                .map(|_| ArcSwap::from_pointee(Shard::default()))
                .collect(),
            writer: Mutex::new(()),
            held: AtomicUsize::new(0),
            retention: settings.retention,
            max_entries: settings.max_entries,
            // Bounded: a logout token older than its issuer's `max_age` (at most 1 h) is
            // refused anyway, so its `jti` need not be remembered longer.
            seen_logout_tokens: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(2 * 3600))
                .build(),
            outbox,
            feed_loaded: AtomicBool::new(false),
            ready_requires_feed: settings.redis.is_some() && settings.require_feed_for_readiness,
            metrics,
        };
        (Arc::new(store), inbox)
    }

    /// Refuses a token that an entry names. O(1): at most three hash probes, none when
    /// nothing is held.
    pub fn check(&self, keys: &RevocationKeys, now: u64) -> Result<(), Reason> {
        if self.held.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let revoked = keys.sid.is_some_and(|sid| self.lookup(&sid, now).is_some())
            || keys.jti.is_some_and(|jti| self.lookup(&jti, now).is_some())
            || keys.sub.is_some_and(|sub| {
                // A token without `iat` cannot show it came after the event: refused.
                self.lookup(&sub, now)
                    .is_some_and(|at| keys.issued_at.is_none_or(|iat| iat <= at))
            });
        if revoked {
            Err(Reason::Revoked)
        } else {
            Ok(())
        }
    }

    fn lookup(&self, fingerprint: &Fingerprint, now: u64) -> Option<u64> {
        let shard = self.shards[fingerprint.shard()].load();
        shard
            .get(fingerprint)
            .filter(|entry| entry.expires_at > now)
            .map(|entry| entry.at)
    }

    /// Records a local event (back-channel logout, admin): applied here, then handed to
    /// the feed, if any, to be shared.
    pub fn record(&self, event: Event, source: Source) -> EventResult {
        let result = self.apply(std::slice::from_ref(&event), source);
        if result == EventResult::Applied {
            if let Some(outbox) = &self.outbox {
                if outbox.try_send(event).is_err() {
                    self.metrics.feed_dropped.inc();
                    tracing::warn!(
                        "revocation feed queue full: an event is held here but not shared"
                    );
                }
            }
        }
        result
    }

    /// Applies events, counting each under `source`; returns the last one's result. The
    /// propagation lag of feed events is observed.
    pub fn apply(&self, events: &[Event], source: Source) -> EventResult {
        self.apply_timed(events, source, source == Source::Feed)
    }

    /// Applies events loaded from the feed's keys: their lag says how old they are, not
    /// how fast they travelled, so it is not observed.
    pub fn load(&self, events: &[Event]) {
        self.apply_timed(events, Source::Feed, false);
    }

    fn apply_timed(&self, events: &[Event], source: Source, observe_lag: bool) -> EventResult {
        let now_ms = unix_millis();
        let now = now_ms / 1000;
        let retention = self.retention.as_secs();
        let mut by_shard: Vec<Vec<(Fingerprint, Entry, Kind)>> = vec![Vec::new(); SHARDS];
        let mut last = EventResult::Ignored;
        for event in events {
            let at = event.at_ms / 1000;
            let result = if event.issuer.is_empty()
                || event.value.is_empty()
                || event.issuer.len() > MAX_VALUE_BYTES
                || event.value.len() > MAX_VALUE_BYTES
            {
                EventResult::Refused
            } else if at + retention <= now || at > now + MAX_CLOCK_AHEAD.as_secs() {
                EventResult::Ignored
            } else {
                let fingerprint = event.fingerprint();
                let entry = Entry {
                    at,
                    expires_at: at + retention,
                };
                by_shard[fingerprint.shard()].push((fingerprint, entry, event.kind));
                if observe_lag {
                    self.metrics
                        .propagation
                        .observe(now_ms.saturating_sub(event.at_ms) as f64 / 1000.0);
                }
                EventResult::Applied
            };
            self.metrics.event(source, result);
            last = result;
        }
        if by_shard.iter().all(Vec::is_empty) {
            return last;
        }
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        for (index, additions) in by_shard.into_iter().enumerate() {
            if additions.is_empty() {
                continue;
            }
            let mut shard = Shard::clone(&self.shards[index].load());
            let before = shard.len();
            shard.retain(|_, entry| entry.expires_at > now);
            for (fingerprint, entry, kind) in additions {
                shard
                    .entry(fingerprint)
                    .and_modify(|held| {
                        // A later logout of the same subject moves its not-before on;
                        // an earlier one (a replayed feed entry) changes nothing.
                        if kind == Kind::Sub && entry.at > held.at {
                            *held = entry;
                        } else if entry.expires_at > held.expires_at {
                            held.expires_at = entry.expires_at;
                        }
                    })
                    .or_insert(entry);
            }
            let after = shard.len();
            self.shards[index].store(Arc::new(shard));
            if after >= before {
                self.held.fetch_add(after - before, Ordering::Relaxed);
            } else {
                self.held.fetch_sub(before - after, Ordering::Relaxed);
            }
        }
        self.enforce_cap();
        self.metrics
            .entries
            .set(i64::try_from(self.held.load(Ordering::Relaxed)).unwrap_or(i64::MAX));
        last
    }

    /// Beyond `max_entries`, drops the oldest entries down to 99 % of it, so that a
    /// full store pays for the sort once per 1 % of new entries, not on every write
    /// (called with the writer lock held).
    fn enforce_cap(&self) {
        let held = self.held.load(Ordering::Relaxed);
        if held <= self.max_entries {
            return;
        }
        let excess = held - self.max_entries * 99 / 100;
        let mut ages: Vec<u64> = self
            .shards
            .iter()
            .flat_map(|shard| {
                shard
                    .load()
                    .values()
                    .map(|entry| entry.at)
                    .collect::<Vec<_>>()
            })
            .collect();
        ages.sort_unstable();
        let cutoff = ages[excess.min(ages.len()) - 1];
        let mut dropped = 0;
        for slot in &self.shards {
            let mut shard = Shard::clone(&slot.load());
            let before = shard.len();
            // Ties at the cutoff go too: a few more than needed, never fewer.
            shard.retain(|_, entry| entry.at > cutoff);
            dropped += before - shard.len();
            slot.store(Arc::new(shard));
        }
        self.held.fetch_sub(dropped, Ordering::Relaxed);
        tracing::warn!(
            dropped,
            max_entries = self.max_entries,
            "revocation.max_entries reached: the oldest revocations were forgotten"
        );
    }

    /// True the first time this logout token's `jti` is seen (for its issuer).
    pub fn first_sight_of_logout_token(&self, issuer: &str, jti: &str) -> bool {
        self.seen_logout_tokens
            .entry(Fingerprint::of(issuer, 0, jti))
            .or_insert(())
            .is_fresh()
    }

    /// Entries held (expired ones not yet pruned included).
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long entries are kept.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Whether a feed is configured.
    pub fn has_feed(&self) -> bool {
        self.outbox.is_some()
    }

    /// The feed has loaded every current entry at least once since start.
    pub fn feed_loaded(&self) -> bool {
        self.feed_loaded.load(Ordering::Acquire)
    }

    /// Ready unless readiness waits for the feed's first load and it has not happened.
    pub fn is_ready(&self) -> bool {
        !self.ready_requires_feed || self.feed_loaded()
    }

    pub(crate) fn set_feed_loaded(&self) {
        self.feed_loaded.store(true, Ordering::Release);
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(max_entries: usize) -> Arc<Revocations> {
        let settings = RevocationSettings {
            max_entries,
            ..RevocationSettings::default()
        };
        Revocations::new(&settings, RevocationMetrics::detached()).0
    }

    const ISS: &str = "https://issuer.example";

    fn keys(claims: Value) -> RevocationKeys {
        RevocationKeys::from_claims(ISS, &claims)
    }

    #[test]
    fn nothing_held_refuses_nothing() {
        let store = store(10);
        let now = unix_millis() / 1000;
        assert_eq!(
            store.check(&keys(json!({"sub": "a", "sid": "s"})), now),
            Ok(())
        );
    }

    #[test]
    fn sid_and_jti_entries_refuse_whatever_the_iat() {
        let store = store(10);
        store.apply(&[Event::new(ISS, Kind::Sid, "s-1")], Source::Admin);
        store.apply(&[Event::new(ISS, Kind::Jti, "j-1")], Source::Admin);
        let now = unix_millis() / 1000;
        let later = now + 100;
        for claims in [
            json!({"sid": "s-1", "iat": later}),
            json!({"jti": "j-1", "iat": later}),
        ] {
            assert_eq!(store.check(&keys(claims), now), Err(Reason::Revoked));
        }
        for claims in [
            json!({"sid": "s-2"}),
            json!({"jti": "j-2"}),
            json!({"sub": "s-1"}),
        ] {
            assert_eq!(store.check(&keys(claims), now), Ok(()));
        }
    }

    #[test]
    fn a_sub_entry_refuses_tokens_issued_up_to_the_event() {
        let store = store(10);
        let event = Event::new(ISS, Kind::Sub, "alice");
        let at = event.at_ms / 1000;
        store.apply(&[event], Source::Backchannel);
        let now = at;
        let check = |claims| store.check(&keys(claims), now);
        assert_eq!(
            check(json!({"sub": "alice", "iat": at - 10})),
            Err(Reason::Revoked)
        );
        assert_eq!(
            check(json!({"sub": "alice", "iat": at})),
            Err(Reason::Revoked)
        );
        assert_eq!(check(json!({"sub": "alice"})), Err(Reason::Revoked));
        assert_eq!(check(json!({"sub": "alice", "iat": at + 1})), Ok(()));
        assert_eq!(check(json!({"sub": "bob", "iat": at - 10})), Ok(()));
        // Another issuer's alice is another person.
        let other = RevocationKeys::from_claims("https://other", &json!({"sub": "alice"}));
        assert_eq!(store.check(&other, now), Ok(()));
    }

    #[test]
    fn entries_are_forgotten_after_the_retention() {
        let store = store(10);
        store.apply(&[Event::new(ISS, Kind::Sid, "s")], Source::Admin);
        let now = unix_millis() / 1000;
        let past_retention = now + store.retention().as_secs() + 1;
        assert_eq!(
            store.check(&keys(json!({"sid": "s"})), now),
            Err(Reason::Revoked)
        );
        assert_eq!(
            store.check(&keys(json!({"sid": "s"})), past_retention),
            Ok(())
        );
        let mut old = Event::new(ISS, Kind::Sid, "old");
        old.at_ms -= store.retention().as_millis() as u64 + 1000;
        assert_eq!(store.apply(&[old], Source::Feed), EventResult::Ignored);
    }

    #[test]
    fn the_oldest_entries_go_beyond_the_cap() {
        let store = store(100);
        let now_ms = unix_millis();
        let events: Vec<Event> = (0..150)
            .map(|index| Event {
                at_ms: now_ms - 150_000 + index * 1000,
                ..Event::new(ISS, Kind::Jti, &format!("j-{index}"))
            })
            .collect();
        store.apply(&events, Source::Feed);
        assert_eq!(store.len(), 99);
        let now = now_ms / 1000;
        assert_eq!(
            store.check(&keys(json!({"jti": "j-149"})), now),
            Err(Reason::Revoked)
        );
        assert_eq!(store.check(&keys(json!({"jti": "j-0"})), now), Ok(()));
    }

    #[test]
    fn a_logout_token_is_seen_once() {
        let store = store(10);
        assert!(store.first_sight_of_logout_token(ISS, "j"));
        assert!(!store.first_sight_of_logout_token(ISS, "j"));
        assert!(store.first_sight_of_logout_token("https://other", "j"));
    }

    #[test]
    fn bad_events_are_refused() {
        let store = store(10);
        let long = "x".repeat(MAX_VALUE_BYTES + 1);
        for event in [
            Event::new(ISS, Kind::Sub, ""),
            Event::new(ISS, Kind::Sub, &long),
        ] {
            assert_eq!(store.apply(&[event], Source::Feed), EventResult::Refused);
        }
        assert!(store.is_empty());
    }
}
