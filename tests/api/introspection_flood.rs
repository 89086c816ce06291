//! Introspection under a flood of made-up opaque tokens at a slow endpoint: a real token
//! that arrives meanwhile still gets its answer, and the refusals are logged once per
//! interval with a count, not once per request.
//!
//! The numbers are printed (`--nocapture`); the only assertion on them is the target:
//! at least 95 % of the real tokens get 202 within their timeout.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus::Registry;
use tokengate::verify::introspection::LOG_INTERVAL;

use crate::helpers::*;
use crate::introspection::{capture_logs, spawn_opaque_app};

/// Call slots of the issuer under test.
const MAX_IN_FLIGHT: usize = 4;
/// Concurrent flooding clients: twelve times the slots.
const FLOOD_CLIENTS: usize = 12 * MAX_IN_FLIGHT;
/// Requests per flooding client at most, so that a broken build cannot loop forever.
const FLOOD_LIMIT: usize = 2_000;
/// How long the endpoint takes to answer each call.
const ENDPOINT_DELAY: Duration = Duration::from_millis(50);
/// The introspection timeout, and the time a real token's request is given.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Real tokens tried during the flood.
const TRIES: usize = 24;

/// What the flood and the real tokens got.
struct Trial {
    /// Per real token: the status (none when the client gave up at `TIMEOUT`) and the time.
    tries: Vec<(Option<u16>, Duration)>,
    flood_sent: usize,
    flood_refused: usize,
    /// The deepest queue seen while the real tokens were tried.
    max_waiting_seen: i64,
}

impl Trial {
    fn got_through(&self) -> usize {
        self.tries
            .iter()
            .filter(|(status, elapsed)| *status == Some(202) && *elapsed <= TIMEOUT)
            .count()
    }

    fn report(&self, name: &str) {
        let mut times: Vec<Duration> = self.tries.iter().map(|(_, elapsed)| *elapsed).collect();
        times.sort();
        eprintln!(
            "{name}: {}/{} real tokens got 202 within {TIMEOUT:?}; latency p50 {:?}, p95 {:?}, max {:?}; \
             flood: {FLOOD_CLIENTS} clients at {MAX_IN_FLIGHT} slots, {} requests, {} refused with 503, \
             deepest queue {}",
            self.got_through(),
            self.tries.len(),
            times[times.len() / 2],
            times[times.len() * 95 / 100],
            times[times.len() - 1],
            self.flood_sent,
            self.flood_refused,
            self.max_waiting_seen,
        );
    }
}

fn gauge(registry: &Registry, name: &str) -> i64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == name)
        .flat_map(|family| family.get_metric().iter())
        .map(|metric| metric.get_gauge().get_value() as i64)
        .sum()
}

/// Floods `issuer`'s slow endpoint with distinct random tokens from `FLOOD_CLIENTS`
/// concurrent clients, each sending its next token as soon as it has an answer, and tries
/// `TRIES` real tokens one after the other meanwhile.
async fn flood_trial(max_waiting: usize) -> Trial {
    let issuer = TestIssuer::start().await;
    issuer.set_introspection_mode(IntrospectionMode::Slow(ENDPOINT_DELAY));
    let app = Arc::new(
        spawn_opaque_app(&issuer, |introspection, settings| {
            introspection.max_in_flight = MAX_IN_FLIGHT;
            introspection.max_waiting = max_waiting;
            introspection.timeout = TIMEOUT;
            settings.workers = Some(2);
        })
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicUsize::new(0));
    let flood: Vec<_> = (0..FLOOD_CLIENTS)
        .map(|client| {
            let (app, stop, refused) = (app.clone(), stop.clone(), refused.clone());
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) && sent < FLOOD_LIMIT {
                    let token = format!("garbage-{client}-{sent}-{}", random_suffix());
                    let status = app.auth_with_token(&token).await.status();
                    if status == 503 {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    sent += 1;
                }
                sent
            })
        })
        .collect();
    // Let the flood fill the slots (and the queue, if there is one) first.
    let deadline = Instant::now() + Duration::from_secs(10);
    while issuer.introspection_calls() < 2 * FLOOD_CLIENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut tries = Vec::with_capacity(TRIES);
    let mut max_waiting_seen = 0;
    for _ in 0..TRIES {
        max_waiting_seen =
            max_waiting_seen.max(gauge(&app.registry, "tokengate_introspection_waiting"));
        let token = issuer.opaque_token();
        let started = Instant::now();
        let status = app
            .client
            .get(format!("{}/auth", app.address))
            .bearer_auth(&token)
            .timeout(TIMEOUT)
            .send()
            .await
            .ok()
            .map(|response| response.status().as_u16());
        tries.push((status, started.elapsed()));
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut flood_sent = 0;
    for client in flood {
        flood_sent += client.await.unwrap();
    }
    Trial {
        tries,
        flood_sent,
        flood_refused: refused.load(Ordering::Relaxed),
        max_waiting_seen,
    }
}

/// A few hex digits that differ between calls, so no two flood tokens are alike.
fn random_suffix() -> String {
    use std::hash::{BuildHasher, RandomState};
    format!("{:016x}", RandomState::new().hash_one(Instant::now()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_tokens_get_through_a_flood_of_random_ones() {
    let trial = flood_trial(1024).await;
    trial.report("queue of 1024");
    assert!(
        trial.got_through() * 100 >= TRIES * 95,
        "only {}/{TRIES} real tokens got 202 within {TIMEOUT:?}",
        trial.got_through()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_are_logged_once_per_interval_with_a_count() {
    let logs = capture_logs();
    let issuer = TestIssuer::start().await;
    issuer.set_introspection_mode(IntrospectionMode::Slow(ENDPOINT_DELAY));
    let app = Arc::new(
        spawn_opaque_app(&issuer, |introspection, _| {
            introspection.max_in_flight = 1;
            introspection.max_waiting = 0;
        })
        .await,
    );
    let started = Instant::now();
    let clients: Vec<_> = (0..20)
        .map(|client| {
            let app = app.clone();
            tokio::spawn(async move {
                for request in 0..10 {
                    let token = format!("garbage-{client}-{request}-{}", random_suffix());
                    app.auth_with_token(&token).await;
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    let elapsed = started.elapsed();

    let refused = app.decisions_with_reason("introspection_overloaded");
    let logs = logs.text();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains(issuer.url()) && line.contains("introspection overloaded"))
        .collect();
    eprintln!(
        "{refused} refusals in {elapsed:?} wrote {} overload line(s): {lines:?}",
        lines.len()
    );
    assert!(
        refused >= 50.0,
        "the flood was refused {refused} times only"
    );
    let intervals = 1 + (elapsed.as_secs() / LOG_INTERVAL.as_secs()) as usize;
    assert!(
        !lines.is_empty() && lines.len() <= intervals,
        "{} lines for {refused} refusals in {elapsed:?}",
        lines.len()
    );
    assert!(lines[0].contains("refused=1"), "{}", lines[0]);
}
