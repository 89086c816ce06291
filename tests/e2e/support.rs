//! Shared harness of the end-to-end tests: the demo issuer and the real tokengate
//! application on port 0, an upstream application that echoes the headers it received,
//! scratch directories, free ports and waiting for a process to listen.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use tokengate::demo::{demo_settings, start_issuer, DemoIssuer, TokenRequest};
use tokengate::startup::Application;

/// The one command that installs every component the end-to-end tests drive.
pub const TEST_COMMAND: &str = "bash scripts/test.sh";

/// The demo issuer and a running tokengate verifying its tokens.
pub struct Tokengate {
    pub issuer: Arc<DemoIssuer>,
    /// tokengate's auth listener.
    pub address: SocketAddr,
}

impl Tokengate {
    /// Starts the demo issuer, then tokengate wired to it (one worker), both on port 0.
    pub async fn start() -> Tokengate {
        let (issuer, issuer_server) = start_issuer("127.0.0.1:0").expect("demo issuer starts");
        tokio::spawn(issuer_server);
        let mut settings = demo_settings(&issuer.url, "127.0.0.1:0", "127.0.0.1:0")
            .expect("demo settings are valid");
        settings.workers = Some(1);
        let application = Application::build(settings)
            .await
            .expect("tokengate starts");
        let address = SocketAddr::from(([127, 0, 0, 1], application.port()));
        tokio::spawn(application.run_until_stopped());
        Tokengate { issuer, address }
    }

    /// A fresh token for `user` in `groups` (comma-separated).
    pub fn token(&self, user: &str, groups: &str) -> String {
        self.issuer.mint(&TokenRequest {
            user: user.to_owned(),
            email: None,
            groups: groups.to_owned(),
        })
    }
}

/// An address nothing listens on: bound once to get a free port, then closed.
pub fn closed_address() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

/// The protected application: answers 200 with the request it received as JSON,
/// `{"method", "uri", "headers": {lower-case name: [values…]}}`, and counts requests.
pub struct EchoUpstream {
    pub address: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl EchoUpstream {
    pub fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo upstream");
        let address = listener.local_addr().expect("local address");
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = web::Data::from(requests.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(counter.clone())
                .default_service(web::to(echo))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("echo upstream listens")
        .run();
        tokio::spawn(server);
        EchoUpstream { address, requests }
    }

    /// How many requests reached the application.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

async fn echo(request: HttpRequest, counter: web::Data<AtomicUsize>) -> HttpResponse {
    counter.fetch_add(1, Ordering::SeqCst);
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    HttpResponse::Ok().json(json!({
        "method": request.method().as_str(),
        "uri": request.uri().to_string(),
        "headers": headers,
    }))
}

/// The values of header `name` (lower-case) in an [`EchoUpstream`] answer.
pub fn echoed_header(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|value| value.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A client that talks to loopback directly, whatever `HTTP_PROXY` says.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("HTTP client")
}

/// A scratch directory under the system temp dir, removed on drop.
pub struct ScratchDir {
    pub path: PathBuf,
}

impl ScratchDir {
    pub fn new(prefix: &str) -> ScratchDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "tokengate-e2e-{prefix}-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst),
        ));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|error| panic!("cannot create {}: {error}", path.display()));
        ScratchDir { path }
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Finds a component's executable: an explicit override in `env_var`, then `PATH`, then
/// the given fixed locations (`/usr/sbin` is not on a normal user's `PATH`). A missing
/// component fails the test with the command that installs it: never a quiet skip.
pub fn find_executable(name: &str, env_var: &str, fixed: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        let path = PathBuf::from(path);
        assert!(
            is_executable(&path),
            "{env_var}={} is not an executable file",
            path.display()
        );
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

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Waits until `address` accepts TCP connections, while `still_running` says the
/// process behind it is alive. Returns an error message on exit or timeout.
pub async fn wait_until_listening(
    address: SocketAddr,
    timeout: Duration,
    mut still_running: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        still_running()?;
        // Loopback: a connect is accepted or refused at once, the timeout is a backstop.
        if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("nothing listens on {address} after {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
