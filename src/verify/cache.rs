//! The verified-token cache: a hit answers without any parsing or crypto.
//!
//! Keys are SHA-256 digests of the token, never the token itself: a memory dump does not
//! leak live tokens, and unlike a 64-bit hash a collision cannot let one token pass as
//! another. Only verified tokens are inserted, and entries never outlive the token's `exp`.
//!
//! The cache is bounded in bytes, not only in entries: a token's identity can be a few
//! bytes or several kilobytes (a groups claim of a hundred groups), so a count alone lets
//! a client with many large valid tokens, or an IdP with fat tokens, grow memory past the
//! pod's limit. Each entry weighs the memory it really holds ([`entry_bytes`]), and the
//! least useful entries are evicted beyond [`Budget::max_bytes`].

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;
use prometheus::IntCounter;

use super::issuer::IssuerId;
use crate::identity::Identity;
use crate::revocation::RevocationKeys;

/// SHA-256 of a token.
pub type TokenHash = [u8; 32];

pub fn token_hash(token: &str) -> TokenHash {
    let digest = digest::digest(&digest::SHA256, token.as_bytes());
    let mut hash = [0u8; 32];
    hash.copy_from_slice(digest.as_ref());
    hash
}

/// Seconds since the Unix epoch, the unit of `exp`.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// What a successful verification established.
#[derive(Debug)]
pub struct VerifiedToken {
    /// The compiled issuer that verified it: a verdict made under other rules (a reload
    /// that changed or removed the issuer) is never used.
    pub issuer: IssuerId,
    /// The token's `exp`.
    pub expires_at: u64,
    /// The issuer's key-withdrawal generation when the token was verified.
    pub key_generation: u64,
    pub identity: Identity,
    /// What the revocation check looks up, on every request.
    pub revocation: RevocationKeys,
}

/// What one entry costs besides its value's own allocations, in bytes: moka's
/// bookkeeping (the hash table's bucket and slot, the entry with its key and timestamps,
/// its nodes in the access and write orders and in the expiry timer wheel, its share of
/// the frequency sketch) and the allocator's per-allocation overhead. Measured, not
/// derived: RSS growth per entry with a minimal identity (`cargo run --release --example
/// memory -- entry`), less what [`entry_bytes`] counts otherwise. Re-measure it when moka
/// or the allocator changes.
pub const ENTRY_OVERHEAD: usize = 450;

/// The memory one cached verdict holds, in bytes: moka's entry, the `Arc` allocation of
/// the verdict and the identity's buffers.
pub fn entry_bytes(token: &VerifiedToken) -> usize {
    // An `Arc` allocation is its two reference counts and the value.
    let verdict = 2 * std::mem::size_of::<usize>() + std::mem::size_of::<VerifiedToken>();
    ENTRY_OVERHEAD + verdict + token.identity.heap_bytes()
}

/// A cache's bounds: bytes, and entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The memory the entries may hold together, as [`entry_bytes`] counts it.
    pub max_bytes: u64,
    /// The most entries.
    pub max_entries: u64,
}

impl Budget {
    /// What an entry of `bytes` counts against the budget: its bytes, and never less than
    /// one entry's share of the budget (`max_bytes / max_entries`, rounded up), so that the
    /// byte bound also keeps the count at `max_entries` at most, with one moka capacity.
    pub fn weight(&self, bytes: usize) -> u32 {
        let share = self.max_bytes.div_ceil(self.max_entries.max(1));
        let weight = (bytes as u64).max(share);
        u32::try_from(weight).unwrap_or(u32::MAX)
    }
}

/// Bounded cache of verified tokens; clones share the entries (a reload keeps them).
#[derive(Clone)]
pub struct TokenCache {
    entries: Cache<TokenHash, Arc<VerifiedToken>>,
}

impl TokenCache {
    /// `evictions` counts entries pushed out because the cache was full.
    pub fn new(budget: Budget, max_ttl: Duration, evictions: IntCounter) -> Self {
        let entries = Cache::builder()
            .max_capacity(budget.max_bytes)
            .weigher(move |_, token: &Arc<VerifiedToken>| budget.weight(entry_bytes(token)))
            .expire_after(UntilTokenExpiry { max_ttl })
            .eviction_listener(move |_, _, cause| {
                if cause == RemovalCause::Size {
                    evictions.inc();
                }
            })
            .build();
        Self { entries }
    }

    /// The cached verdict, if the token has not expired since. The `exp` check here
    /// does not rely on the cache's own expiry timer, which runs on housekeeping.
    pub fn get(&self, hash: &TokenHash, now: u64) -> Option<Arc<VerifiedToken>> {
        let entry = self.entries.get(hash)?;
        if entry.expires_at <= now {
            self.entries.invalidate(hash);
            return None;
        }
        Some(entry)
    }

    pub fn insert(&self, hash: TokenHash, verified: Arc<VerifiedToken>) {
        self.entries.insert(hash, verified);
    }

    pub fn remove(&self, hash: &TokenHash) {
        self.entries.invalidate(hash);
    }

    /// Entries held, as of the cache's last housekeeping.
    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    /// The weight of the entries held ([`Budget::weight`], about their bytes), as of the
    /// cache's last housekeeping.
    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Runs the cache's pending housekeeping (evictions) now rather than on a later
    /// read or write.
    pub fn run_pending_tasks(&self) {
        self.entries.run_pending_tasks();
    }
}

/// Each entry lives until the token's `exp`, and never longer than `max_ttl`.
struct UntilTokenExpiry {
    max_ttl: Duration,
}

impl Expiry<TokenHash, Arc<VerifiedToken>> for UntilTokenExpiry {
    fn expire_after_create(
        &self,
        _key: &TokenHash,
        value: &Arc<VerifiedToken>,
        _created_at: Instant,
    ) -> Option<Duration> {
        let remaining = value.expires_at.saturating_sub(unix_now());
        Some(Duration::from_secs(remaining).min(self.max_ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verified(expires_at: u64) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            issuer: IssuerId::next(),
            expires_at,
            key_generation: 0,
            identity: Identity::default(),
            revocation: RevocationKeys::default(),
        })
    }

    fn budget(max_bytes: u64, max_entries: u64) -> Budget {
        Budget {
            max_bytes,
            max_entries,
        }
    }

    fn counter() -> IntCounter {
        IntCounter::new("e", "e").unwrap()
    }

    /// A verdict whose identity holds `groups` groups of 40 bytes.
    fn large(groups: usize) -> Arc<VerifiedToken> {
        let mapping = crate::identity::IdentityMapping::new(&Default::default()).unwrap();
        let groups: Vec<String> = (0..groups).map(|i| format!("{i:040}")).collect();
        let identity = mapping.identity(&serde_json::json!({"sub": "u-1", "groups": groups}));
        Arc::new(VerifiedToken {
            issuer: IssuerId::next(),
            expires_at: unix_now() + 600,
            key_generation: 0,
            identity,
            revocation: RevocationKeys::default(),
        })
    }

    #[test]
    fn an_entry_weighs_its_identity() {
        let small = entry_bytes(&large(0));
        let fat = entry_bytes(&large(100));
        // 100 groups of 40 bytes with their separators, and their index entries.
        assert!(fat - small >= 100 * 41 + 100 * 12 - 1, "{small} {fat}");
        assert!(small >= ENTRY_OVERHEAD);
    }

    #[test]
    fn the_weight_is_the_bytes_but_at_least_one_entrys_share() {
        let thousand = budget(1000, 10);
        assert_eq!(thousand.weight(50), 100);
        assert_eq!(thousand.weight(500), 500);
        assert_eq!(budget(1001, 10).weight(1), 101);
        assert_eq!(budget(u64::MAX, 1).weight(1), u32::MAX);
    }

    #[test]
    fn large_tokens_are_held_to_the_byte_budget() {
        let max_bytes = 1024 * 1024;
        let cache = TokenCache::new(
            budget(max_bytes, 100_000),
            Duration::from_secs(60),
            counter(),
        );
        let entry = entry_bytes(&large(100)) as u64;
        // Three times what fits.
        let inserted = 3 * max_bytes / entry;
        for index in 0..inserted {
            cache.insert(token_hash(&index.to_string()), large(100));
        }
        cache.run_pending_tasks();
        assert!(
            cache.weighted_size() <= max_bytes,
            "{}",
            cache.weighted_size()
        );
        assert!(cache.entry_count() <= max_bytes / entry);
        assert!(
            cache.entry_count() >= max_bytes / entry / 2,
            "{}",
            cache.entry_count()
        );
    }

    #[test]
    fn small_tokens_are_held_to_the_entry_count() {
        let cache = TokenCache::new(budget(1024 * 1024, 50), Duration::from_secs(60), counter());
        for index in 0..500 {
            cache.insert(token_hash(&index.to_string()), verified(unix_now() + 60));
        }
        cache.run_pending_tasks();
        assert!(cache.entry_count() <= 50, "{}", cache.entry_count());
        assert!(cache.entry_count() >= 25, "{}", cache.entry_count());
    }

    #[test]
    fn expired_entries_are_not_returned() {
        let cache = TokenCache::new(
            budget(1024 * 1024, 10),
            Duration::from_secs(60),
            IntCounter::new("e", "e").unwrap(),
        );
        let now = unix_now();
        cache.insert(token_hash("a"), verified(now + 60));
        cache.insert(token_hash("b"), verified(now + 60));
        assert!(cache.get(&token_hash("a"), now).is_some());
        assert!(cache.get(&token_hash("b"), now + 61).is_none());
    }

    #[test]
    fn distinct_tokens_have_distinct_keys() {
        assert_ne!(token_hash("a.b.c"), token_hash("a.b.d"));
    }
}
