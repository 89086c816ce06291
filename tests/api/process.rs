//! The real binary (`CARGO_BIN_EXE_tokengate`) as a child process: free loopback ports to
//! give it, a guard that kills it when the test ends, its readiness and its memory.

use std::time::Duration;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
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
            .expect("/proc/<pid>/status of tokengate");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/<pid>/status");
        kib * 1024
    }
}

/// True once `readyz` answers 200 (polled for 10 s at most).
pub async fn wait_ready(client: &reqwest::Client, readyz: &str) -> bool {
    for _ in 0..100 {
        if client
            .get(readyz)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
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
