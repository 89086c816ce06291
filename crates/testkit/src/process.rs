//! Child processes and loopback ports for tests that run real binaries.

use std::future::Future;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// A loopback port that was free a moment ago (the OS picked it for a listener that is
/// closed again), for a child process to bind.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Kills and reaps the child when dropped, whether the test passed or not.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Child {
    /// Resident memory, from `VmRSS` in `/proc/<pid>/status`, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id()))
            .expect("/proc/<pid>/status of the child");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        let status = std::process::Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {}", self.0.id());
    }

    /// The exit status once the child has exited, polled for `timeout` at most; `None`
    /// while it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut exit = None;
        poll_until(timeout, Duration::from_millis(50), || {
            exit = self.0.try_wait().expect("try_wait on the child");
            std::future::ready(exit.is_some())
        })
        .await;
        exit
    }
}

/// Polls `condition` every `interval` until it holds (true) or `timeout` passes (false).
pub async fn poll_until<F, Fut>(timeout: Duration, interval: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return true;
        }
        if started.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(interval).await;
    }
}

/// True once `url` answers 200 (polled for 10 s at most).
pub async fn wait_ready(client: &reqwest::Client, url: &str) -> bool {
    wait_status(client, url, 200, Duration::from_secs(10)).await
}

/// True once `url` answers `status` (polled every 50 ms for `timeout` at most).
pub async fn wait_status(
    client: &reqwest::Client,
    url: &str,
    status: u16,
    timeout: Duration,
) -> bool {
    poll_until(timeout, Duration::from_millis(50), || async {
        client
            .get(url)
            .send()
            .await
            .is_ok_and(|response| response.status() == status)
    })
    .await
}

/// The value of one series (name and labels, as exposed) in the `/metrics` text at
/// `url`; `None` when the series is absent.
pub async fn scrape(client: &reqwest::Client, url: &str, series: &str) -> Option<f64> {
    let text = client
        .get(url)
        .send()
        .await
        .expect("/metrics answers")
        .text()
        .await
        .expect("/metrics body");
    text.lines().find_map(|line| {
        line.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}
