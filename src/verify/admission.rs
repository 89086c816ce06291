//! Each issuer's bound on introspection calls in flight, with a short fair wait, and the
//! rate limit on the log lines that report refusals.
//!
//! Why a wait and not an instant refusal: with a fixed number of slots and an instant
//! 503 when they are all taken, a flood of made-up opaque tokens keeps every slot busy,
//! and each flooding client that is refused retries at once. A real token arrives once,
//! finds the slots taken nearly every time, and is refused nearly every time: garbage
//! starves it. Here a request that finds every slot taken joins a FIFO queue (tokio's
//! semaphore hands slots out in request order) for at most `max_wait`, and the queue
//! holds at most `max_waiting` requests. A real token then waits its turn, about
//! `queued / max_in_flight` times the endpoint's latency, whatever the garbage does;
//! only a queue that is full or too slow to drain within `max_wait` refuses it (503).
//! Each issuer has its own slots and queue, so a flood at one issuer's endpoint never
//! delays another's.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use prometheus::IntGauge;
use tokio::sync::{Semaphore, SemaphorePermit};

/// Why a call was refused without asking the issuer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_waiting` requests were already waiting for a slot.
    QueueFull,
    /// No slot came free within `max_wait`.
    WaitedTooLong,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue full",
            Refusal::WaitedTooLong => "no call slot within max_wait",
        }
    }
}

/// The call slots of one issuer and the queue in front of them.
pub struct Admission {
    slots: Semaphore,
    max_in_flight: usize,
    waiting: AtomicUsize,
    max_waiting: usize,
    max_wait: Duration,
    /// Requests waiting now, for `/metrics`.
    waiting_gauge: IntGauge,
}

impl Admission {
    pub fn new(
        max_in_flight: usize,
        max_waiting: usize,
        max_wait: Duration,
        waiting_gauge: IntGauge,
    ) -> Self {
        Self {
            slots: Semaphore::new(max_in_flight),
            max_in_flight,
            waiting: AtomicUsize::new(0),
            max_waiting,
            max_wait,
            waiting_gauge,
        }
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight
    }

    pub fn max_waiting(&self) -> usize {
        self.max_waiting
    }

    /// A slot for one call: at once when one is free, else after a FIFO wait of at most
    /// `max_wait` if fewer than `max_waiting` requests are waiting already. The slot is
    /// given back when the permit is dropped, however the call ends.
    pub async fn admit(&self) -> Result<SemaphorePermit<'_>, Refusal> {
        // A free slot cannot jump the queue: the semaphore hands a released slot to the
        // first waiter, so `try_acquire` succeeds only when nobody waits.
        if let Ok(permit) = self.slots.try_acquire() {
            return Ok(permit);
        }
        let _queued = Queued::join(self).ok_or(Refusal::QueueFull)?;
        match tokio::time::timeout(self.max_wait, self.slots.acquire()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; a closed one would have no slot to give.
            Ok(Err(_)) | Err(_) => Err(Refusal::WaitedTooLong),
        }
    }
}

/// One place in the queue, given up when dropped (served, timed out or cancelled).
struct Queued<'a>(&'a Admission);

impl<'a> Queued<'a> {
    fn join(admission: &'a Admission) -> Option<Self> {
        admission
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < admission.max_waiting).then_some(waiting + 1)
            })
            .ok()?;
        admission.waiting_gauge.inc();
        Some(Queued(admission))
    }
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.waiting_gauge.dec();
    }
}

/// Lets one log line through per `interval` and counts the events in between, so that a
/// flood writes one line per interval with a count instead of one line per request.
pub struct LogLimiter {
    interval: Duration,
    start: Instant,
    /// Milliseconds since `start` before which no line is written.
    next_line_at: AtomicU64,
    /// Events since the last line (the one that writes the next line included).
    events: AtomicU64,
}

impl LogLimiter {
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            start: Instant::now(),
            next_line_at: AtomicU64::new(0),
            events: AtomicU64::new(0),
        }
    }

    /// Records one event. Returns the number of events since the last line when this one
    /// should write a line now, `None` when it is only counted. The first event always
    /// writes a line at once; lock-free, so a flood of callers never waits here.
    pub fn event(&self) -> Option<u64> {
        self.events.fetch_add(1, Ordering::AcqRel);
        let now = self.start.elapsed().as_millis() as u64;
        let due = self.next_line_at.load(Ordering::Acquire);
        if now < due {
            return None;
        }
        let next = now.saturating_add(self.interval.as_millis() as u64);
        self.next_line_at
            .compare_exchange(due, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        Some(self.events.swap(0, Ordering::AcqRel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn admission(max_in_flight: usize, max_waiting: usize, max_wait: Duration) -> Arc<Admission> {
        Arc::new(Admission::new(
            max_in_flight,
            max_waiting,
            max_wait,
            IntGauge::new("w", "w").unwrap(),
        ))
    }

    #[tokio::test]
    async fn waiters_are_served_in_arrival_order() {
        let admission = admission(1, 10, Duration::from_secs(5));
        let held = admission.admit().await.unwrap();
        let order = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for index in 0..5 {
            let (queued, order) = (admission.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = queued.admit().await.unwrap();
                order.lock().unwrap().push(index);
            }));
            // Each waiter is queued before the next one arrives.
            while admission.waiting.load(Ordering::Acquire) <= index {
                tokio::task::yield_now().await;
            }
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2, 3, 4]);
        assert_eq!(admission.waiting_gauge.get(), 0);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_and_the_wait_is_short() {
        let admission = admission(1, 1, Duration::from_millis(50));
        let _held = admission.admit().await.unwrap();
        let waiter = {
            let admission = admission.clone();
            tokio::spawn(async move { admission.admit().await.map(|_| ()) })
        };
        while admission.waiting.load(Ordering::Acquire) == 0 {
            tokio::task::yield_now().await;
        }
        // The one place is taken: refused at once.
        assert_eq!(admission.admit().await.err(), Some(Refusal::QueueFull));
        // The waiter gives up after max_wait and frees its place.
        assert_eq!(waiter.await.unwrap(), Err(Refusal::WaitedTooLong));
        assert_eq!(admission.waiting.load(Ordering::Acquire), 0);
        assert_eq!(admission.waiting_gauge.get(), 0);
    }

    #[tokio::test]
    async fn no_waiting_means_an_instant_refusal() {
        let admission = admission(1, 0, Duration::from_secs(5));
        let _held = admission.admit().await.unwrap();
        assert_eq!(admission.admit().await.err(), Some(Refusal::QueueFull));
    }

    #[test]
    fn one_line_per_interval_with_the_count() {
        let limiter = LogLimiter::new(Duration::from_secs(3600));
        assert_eq!(limiter.event(), Some(1), "the first event writes at once");
        for _ in 0..99 {
            assert_eq!(limiter.event(), None);
        }
        // Due again: the line counts everything since the last one.
        limiter.next_line_at.store(0, Ordering::Release);
        assert_eq!(limiter.event(), Some(100));
        assert_eq!(limiter.event(), None);
    }
}
