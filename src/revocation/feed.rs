//! The revocation feed shared by replicas, on Redis.
//!
//! Every local event is written as a key (`<key_prefix><kind>:<fingerprint>`, the event
//! as JSON, expiring when the event's retention ends: Redis forgets what we would) and
//! published on `channel`. Every replica:
//!
//! 1. subscribes first, so that nothing published from then on is missed;
//! 2. then loads every current key (`SCAN`, never `KEYS`, which blocks Redis) and applies
//!    them: events published meanwhile arrive twice, and applying is idempotent;
//! 3. then applies messages as they arrive, except its own (each message names the
//!    replica that published it).
//!
//! The subscriber pings Redis every [`PING_INTERVAL`]: a partition that drops packets
//! without closing the connection counts as a lost connection once a ping goes
//! unanswered for [`TIMEOUT`]. When the connection is lost it goes back to 1 with a
//! backoff (up to [`MAX_BACKOFF`]), serving meanwhile with the entries it holds;
//! `tokengate_revocation_feed_up` is 0 and a warning is logged (at most once per
//! [`LOG_INTERVAL`]). Local events are queued (bounded) and written, in order, once Redis
//! answers again. Both tasks end on the application's [`Shutdown`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{Client, IntoConnectionInfo, RedisError};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::{unix_millis, Event, EventResult, Revocations, Source};
use crate::config::{ConfigError, RedisFeedSettings, RevocationSecrets};
use crate::shutdown::{BackgroundTasks, Shutdown};
use crate::verify::admission::LogLimiter;

/// Longest wait between two attempts to reach Redis.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Connect and command timeout: a partitioned Redis must not hold a task for long.
const TIMEOUT: Duration = Duration::from_secs(2);
/// How often the subscriber pings Redis: a silent partition is noticed within this plus
/// [`TIMEOUT`].
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// At most one warning per this interval per task while Redis is unreachable.
pub const LOG_INTERVAL: Duration = Duration::from_secs(30);
/// Keys read per `SCAN` step and `MGET`.
const SCAN_BATCH: usize = 500;

/// What is published on the channel: the event and the replica that recorded it. A
/// replica skips its own events (applied when they were recorded), so the feed's counts
/// and its propagation lag are other replicas' events only. Keys hold the bare event.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Published {
    origin: String,
    event: Event,
}

struct Feed {
    /// This process's random name on the channel.
    origin: String,
    client: Client,
    channel: String,
    key_prefix: String,
    store: Arc<Revocations>,
    down_log: LogLimiter,
}

/// Starts the subscriber and the writer. `outbox` is the receiving end of the store's
/// queue of local events.
pub fn spawn(
    settings: &RedisFeedSettings,
    secrets: &RevocationSecrets,
    store: Arc<Revocations>,
    outbox: mpsc::Receiver<Event>,
    shutdown: &Shutdown,
    tasks: &BackgroundTasks,
) -> Result<(), ConfigError> {
    let bad_url = |e: RedisError| ConfigError::new("revocation.redis.url", e.to_string());
    let mut info = settings
        .url
        .as_str()
        .into_connection_info()
        .map_err(bad_url)?;
    info.redis.password.clone_from(&secrets.redis_password);
    let client = match &secrets.redis_ca {
        Some(root_cert) => Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root_cert.clone()),
            },
        ),
        None => Client::open(info),
    }
    .map_err(bad_url)?;
    let feed = Arc::new(Feed {
        origin: random_origin(),
        client,
        channel: settings.channel.clone(),
        key_prefix: settings.key_prefix.clone(),
        store,
        down_log: LogLimiter::new(LOG_INTERVAL),
    });
    tasks.spawn(feed.clone().subscribe(shutdown.clone()));
    tasks.spawn(feed.write(outbox, shutdown.clone()));
    Ok(())
}

/// 128 random bits, hex: unique among the replicas that share a channel.
fn random_origin() -> String {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system's random source");
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `*`, `?`, `[`, `]` and `\` mean something in a `SCAN MATCH` pattern.
fn glob_escape(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('*');
    pattern
}

impl Feed {
    /// Subscribes, loads, applies; again after every disconnection, until shutdown.
    async fn subscribe(self: Arc<Self>, mut shutdown: Shutdown) {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let session = tokio::select! {
                result = self.session(&mut backoff) => result,
                () = shutdown.started() => return,
            };
            self.store.metrics.feed_up.set(0);
            if let Err(error) = session {
                if let Some(count) = self.down_log.event() {
                    tracing::warn!(
                        target: "tokengate::revocation",
                        %error,
                        failures = count,
                        retry_in = ?backoff,
                        "revocation feed down: serving with the revocations held here"
                    );
                }
            }
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = shutdown.started() => return,
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One connection's life: subscribe, load, then messages until it is lost.
    async fn session(&self, backoff: &mut Duration) -> Result<(), FeedError> {
        let mut pubsub = timeout(self.client.get_async_pubsub()).await?;
        timeout(pubsub.subscribe(&self.channel)).await?;
        let mut connection = timeout(self.client.get_multiplexed_async_connection()).await?;
        let loaded = self.load(&mut connection).await?;
        drop(connection);
        self.store.set_feed_loaded();
        self.store.metrics.feed_up.set(1);
        *backoff = FIRST_BACKOFF;
        tracing::info!(target: "tokengate::revocation", loaded, "revocation feed up");
        let (mut sink, mut messages) = pubsub.split();
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ping.tick().await;
        loop {
            let message = tokio::select! {
                message = messages.next() => message,
                _ = ping.tick() => {
                    // A partition that drops packets silently leaves the TCP connection
                    // open for a long time: without an answer here the feed is down.
                    timeout(sink.ping::<redis::Value>()).await?;
                    continue;
                }
            };
            let Some(message) = message else {
                return Err(FeedError::Disconnected);
            };
            match serde_json::from_slice::<Published>(message.get_payload_bytes()) {
                Ok(published) if published.origin == self.origin => {}
                Ok(published) => {
                    self.store
                        .apply(std::slice::from_ref(&published.event), Source::Feed);
                }
                Err(_) => {
                    self.store.metrics.event(Source::Feed, EventResult::Refused);
                    tracing::warn!(target: "tokengate::revocation", "unreadable revocation feed message ignored");
                }
            }
        }
    }

    /// Applies every current event key; returns how many were read.
    async fn load(&self, connection: &mut MultiplexedConnection) -> Result<usize, FeedError> {
        let pattern = glob_escape(&self.key_prefix);
        let mut cursor: u64 = 0;
        let mut loaded = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = timeout(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_BATCH)
                    .query_async(connection),
            )
            .await?;
            if !keys.is_empty() {
                // A key may have expired between SCAN and MGET: `None`.
                let values: Vec<Option<Vec<u8>>> =
                    timeout(redis::cmd("MGET").arg(&keys).query_async(connection)).await?;
                let events: Vec<Event> = values
                    .iter()
                    .flatten()
                    .filter_map(|value| serde_json::from_slice(value).ok())
                    .collect();
                loaded += events.len();
                self.store.load(&events);
            }
            if next == 0 {
                return Ok(loaded);
            }
            cursor = next;
        }
    }

    /// Writes local events in order, each until Redis took it, until shutdown.
    async fn write(self: Arc<Self>, mut outbox: mpsc::Receiver<Event>, mut shutdown: Shutdown) {
        let mut connection: Option<ConnectionManager> = None;
        loop {
            let event = tokio::select! {
                event = outbox.recv() => event,
                () = shutdown.started() => None,
            };
            let Some(event) = event else { return };
            let mut backoff = FIRST_BACKOFF;
            loop {
                let written = tokio::select! {
                    written = self.write_one(&mut connection, &event) => written,
                    () = shutdown.started() => return,
                };
                match written {
                    Ok(()) => break,
                    Err(error) => {
                        if let Some(count) = self.down_log.event() {
                            tracing::warn!(
                                target: "tokengate::revocation",
                                %error,
                                failures = count,
                                queued = outbox.len() + 1,
                                "revocation feed down: events are held here and queued until Redis is back"
                            );
                        }
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    () = shutdown.started() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// `SET key event EX <rest of the retention>` and `PUBLISH`, in one round trip.
    async fn write_one(
        &self,
        connection: &mut Option<ConnectionManager>,
        event: &Event,
    ) -> Result<(), FeedError> {
        let retention_ms = self.store.retention().as_millis() as u64;
        let age_ms = unix_millis().saturating_sub(event.at_ms);
        let Some(left_ms) = retention_ms.checked_sub(age_ms).filter(|left| *left > 1000) else {
            // Forgotten everywhere by now: nothing to share.
            return Ok(());
        };
        if connection.is_none() {
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(TIMEOUT)
                .set_response_timeout(TIMEOUT)
                .set_number_of_retries(1);
            *connection =
                Some(timeout(self.client.get_connection_manager_with_config(config)).await?);
        }
        let Some(manager) = connection.as_mut() else {
            return Err(FeedError::Disconnected);
        };
        let key = format!(
            "{}{}:{}",
            self.key_prefix,
            event.kind.as_str(),
            event.fingerprint().hex()
        );
        let json = serde_json::to_string(event).map_err(|_| FeedError::Disconnected)?;
        let published = serde_json::to_string(&Published {
            origin: self.origin.clone(),
            event: event.clone(),
        })
        .map_err(|_| FeedError::Disconnected)?;
        timeout(
            redis::pipe()
                .cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("PX")
                .arg(left_ms)
                .ignore()
                .cmd("PUBLISH")
                .arg(&self.channel)
                .arg(&published)
                .ignore()
                .query_async::<()>(manager),
        )
        .await
    }
}

/// Why the feed is not up.
#[derive(Debug, thiserror::Error)]
enum FeedError {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("no answer within {TIMEOUT:?}")]
    Timeout,
    #[error("connection lost")]
    Disconnected,
}

async fn timeout<T>(
    future: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, FeedError> {
    match tokio::time::timeout(TIMEOUT, future).await {
        Ok(result) => result.map_err(FeedError::from),
        Err(_) => Err(FeedError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_prefix_is_matched_literally() {
        assert_eq!(
            glob_escape("tokengate:revocation:"),
            "tokengate:revocation:*"
        );
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\*");
    }
}
