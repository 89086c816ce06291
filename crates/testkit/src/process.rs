//! Child processes and loopback ports for tests that run real binaries.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
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
        status_kib(self.0.id(), "VmRSS") * 1024
    }

    /// Sends SIGTERM, as Kubernetes does to stop a pod.
    pub fn terminate(&self) {
        let status = Command::new("kill")
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

/// A field of `/proc/<pid>/status` counted in KiB (`VmRSS`, `VmHWM`, …).
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|error| panic!("/proc/{pid}/status: {error}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Where a tokengate binary started by a test or an example lives: a directory of its
/// own for its config and files, and two free loopback ports (auth and admin).
pub struct Launch {
    pub dir: PathBuf,
    pub port: u16,
    pub admin_port: u16,
}

impl Launch {
    /// A directory `tokengate-<name>-<pid>` under the temp dir, and two free ports.
    pub fn new(name: &str) -> Launch {
        let dir = std::env::temp_dir().join(format!("tokengate-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("launch directory");
        Launch {
            dir,
            port: free_port(),
            admin_port: free_port(),
        }
    }

    /// The `listen` and `admin_listen` lines of a config, for these ports.
    pub fn listeners(&self) -> String {
        format!(
            "listen: 127.0.0.1:{}\nadmin_listen: 127.0.0.1:{}",
            self.port, self.admin_port
        )
    }

    /// `http://127.0.0.1:<port>` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// `http://127.0.0.1:<admin port>` followed by `path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    /// Writes `config` to `tokengate.yaml` in the directory and starts `binary` on it,
    /// without `RUST_LOG` (the config's log filter applies).
    pub fn spawn(&self, binary: &Path, config: &str, stdout: Stdio, stderr: Stdio) -> Child {
        let path = self.dir.join("tokengate.yaml");
        std::fs::write(&path, config).expect("tokengate.yaml");
        let child = Command::new(binary)
            .arg("--config")
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|error| panic!("start {}: {error}", binary.display()));
        Child(child)
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
