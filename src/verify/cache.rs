//! The verified-token cache: a hit answers without any parsing or crypto.
//!
//! Keys are SHA-256 digests of the token, never the token itself: a memory dump does not
//! leak live tokens, and unlike a 64-bit hash a collision cannot let one token pass as
//! another. Only verified tokens are inserted, entries never outlive the token's `exp`,
//! and the size bound keeps a flood of distinct tokens from growing memory.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use moka::notification::RemovalCause;
use moka::sync::Cache;
use moka::Expiry;
use prometheus::IntCounter;

use crate::identity::Identity;

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
    /// Index of the issuer in the configuration.
    pub issuer: usize,
    /// The token's `exp`.
    pub expires_at: u64,
    /// The issuer's key-withdrawal generation when the token was verified.
    pub key_generation: u64,
    pub identity: Identity,
}

/// Bounded cache of verified tokens.
pub struct TokenCache {
    entries: Cache<TokenHash, Arc<VerifiedToken>>,
}

impl TokenCache {
    /// `evictions` counts entries pushed out because the cache was full.
    pub fn new(max_entries: u64, max_ttl: Duration, evictions: IntCounter) -> Self {
        let entries = Cache::builder()
            .max_capacity(max_entries)
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
            issuer: 0,
            expires_at,
            key_generation: 0,
            identity: Identity::default(),
        })
    }

    #[test]
    fn expired_entries_are_not_returned() {
        let cache = TokenCache::new(
            10,
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
