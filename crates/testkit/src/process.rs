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

/// Who listens on a TCP port, as [`port_holder`] finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortHolder {
    /// No socket listens on the port.
    Nobody,
    /// Every socket listening on the port belongs to the process or its descendants.
    Process,
    /// Another process listens on it too (or alone): a port picked with [`free_port`]
    /// and bound by a child later can be taken in between by anything that binds port
    /// 0, and a connect check alone cannot tell whose listener answered.
    Other,
}

/// Who listens on TCP `port` (any local address, IPv4 or IPv6): `pid` and its
/// descendants, someone else, or nobody. Read from `/proc` (Linux): the listening
/// sockets' inodes in `/proc/net/tcp{,6}` against the socket descriptors of the process
/// tree. A listener whose owner cannot be read (another user's process) counts as
/// someone else's.
pub fn port_holder(pid: u32, port: u16) -> PortHolder {
    let listening = listening_inodes(port);
    if listening.is_empty() {
        return PortHolder::Nobody;
    }
    let ours: std::collections::HashSet<u64> = process_tree(pid)
        .into_iter()
        .flat_map(socket_inodes)
        .collect();
    if listening.iter().all(|inode| ours.contains(inode)) {
        PortHolder::Process
    } else {
        PortHolder::Other
    }
}

/// The inodes of the sockets in state LISTEN on `port`.
fn listening_inodes(port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    let local_port = fields.get(1)?.rsplit(':').next()?;
                    let listens = u16::from_str_radix(local_port, 16).ok()? == port
                        && *fields.get(3)? == LISTEN;
                    listens.then(|| fields.get(9)?.parse().ok()).flatten()
                })
                .collect::<Vec<u64>>()
        })
        .collect()
}

/// `pid` and every process descended from it (by the parent pid in `/proc/<pid>/stat`).
fn process_tree(pid: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
                .filter_map(|child| {
                    let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
                    // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
                    let after_comm = &stat[stat.rfind(')')? + 1..];
                    let parent = after_comm.split_whitespace().nth(1)?.parse().ok()?;
                    Some((child, parent))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut tree = vec![pid];
    let mut index = 0;
    while index < tree.len() {
        let parent = tree[index];
        tree.extend(
            parents
                .iter()
                .filter(|(child, of)| *of == parent && !tree.contains(child))
                .map(|(child, _)| *child)
                .collect::<Vec<_>>(),
        );
        index += 1;
    }
    tree
}

/// The inodes of the sockets `pid` holds open (`/proc/<pid>/fd/* -> socket:[inode]`).
fn socket_inodes(pid: u32) -> Vec<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|entries| {
            entries
                .filter_map(|entry| {
                    let target = std::fs::read_link(entry.ok()?.path()).ok()?;
                    let target = target.to_str()?;
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_holder_tells_this_process_from_another_and_from_nobody() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a listener");
        let port = listener.local_addr().expect("its address").port();
        assert_eq!(port_holder(std::process::id(), port), PortHolder::Process);
        // To a child of ours, our listener is someone else's.
        let child = Child(
            std::process::Command::new("sleep")
                .arg("10")
                .spawn()
                .expect("sleep"),
        );
        assert_eq!(port_holder(child.0.id(), port), PortHolder::Other);
        drop(listener);
        assert_eq!(port_holder(std::process::id(), port), PortHolder::Nobody);
    }
}
