//! Reloading the configuration without a restart: on SIGHUP, and when the file changes
//! on disk (including the way the kubelet updates a mounted ConfigMap: the file is a
//! symlink through `..data`, which is swapped atomically to a new directory, so the
//! directory is watched, not the file).
//!
//! A reload loads and compiles the file exactly as a start does ([`runtime::compile`]),
//! with the running runtime as `previous`, so that unchanged issuers keep their key
//! stores, refreshers and cached verdicts. Any error keeps the running configuration:
//! one error line naming the key, a counter, and nothing else changes (readiness
//! included). A good file is swapped in whole: a request in flight finishes on the
//! runtime it started with, the next one sees the new one.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::config::{ConfigError, Settings};
use crate::http::AppState;
use crate::runtime::{self, Runtime};
use crate::shutdown::{BackgroundTasks, Shutdown};
use crate::startup::start_key_stores;
use crate::verify::cache::unix_now;

/// How long the directory must be quiet before the file is read: an editor or the
/// kubelet writes in several steps.
const SETTLE: Duration = Duration::from_millis(300);

/// Reloads the configuration of a running application.
pub struct Reloader {
    path: PathBuf,
    state: actix_web::web::Data<AppState>,
    background: Shutdown,
    tasks: BackgroundTasks,
    /// One reload at a time: a signal and a file change arriving together compile once
    /// each, in turn, never interleaved.
    running: tokio::sync::Mutex<()>,
}

/// What a successful reload changed, for its log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub rules: usize,
    /// Issuer names no issuer carries any more: their metric series go.
    gone_names: Vec<String>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        state: actix_web::web::Data<AppState>,
        background: Shutdown,
        tasks: BackgroundTasks,
    ) -> Self {
        Self {
            path,
            state,
            background,
            tasks,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Loads, compiles and swaps in the file; on any error the running configuration
    /// stays. Logs and counts either way. `why` says what triggered it.
    pub async fn reload(&self, why: &str) -> Result<Changes, ConfigError> {
        let _one_at_a_time = self.running.lock().await;
        let metrics = &self.state.metrics;
        let result = self.compile_and_swap();
        match &result {
            Ok(changes) => {
                tracing::info!(
                    trigger = why,
                    path = %self.path.display(),
                    issuers_added = ?changes.added,
                    issuers_removed = ?changes.removed,
                    issuers_changed = ?changes.changed,
                    rules = changes.rules,
                    "configuration reloaded"
                );
                metrics.config_reloaded(true, unix_now());
            }
            Err(error) => {
                tracing::error!(
                    trigger = why,
                    path = %self.path.display(),
                    key = %error.key,
                    reason = %error.reason,
                    "configuration reload failed: still serving the previous configuration"
                );
                metrics.config_reloaded(false, 0);
            }
        }
        result
    }

    fn compile_and_swap(&self) -> Result<Changes, ConfigError> {
        let mut settings = Settings::load(&self.path, None)?;
        let current = self.state.runtime.load_full();
        keep_fixed_settings(&current.settings, &mut settings);
        let compiled = runtime::compile(
            settings,
            &self.state.metrics,
            &self.background,
            &self.state.revocations,
            Some(&current),
        )?;
        let changes = changes(&current, &compiled.runtime);
        self.state.runtime.store(Arc::new(compiled.runtime));
        for name in &changes.gone_names {
            self.state.metrics.forget_issuer(name);
        }
        // An added issuer loads its keys in the background; readiness waits for it as
        // at start-up.
        let tasks = self.tasks.clone();
        let new_key_stores = compiled.new_key_stores;
        self.tasks
            .spawn(async move { start_key_stores(new_key_stores, &tasks).await });
        Ok(changes)
    }

    /// Reloads on SIGHUP and on changes of the file, until shutdown.
    pub async fn run(self, mut shutdown: Shutdown) {
        let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        {
            Ok(signal) => Some(signal),
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP: reloads follow file changes only");
                None
            }
        };
        let (changed, mut changes) = mpsc::channel(1);
        let _watcher = match watch_directory(&self.path, changed) {
            Ok(watcher) => Some(watcher),
            Err(error) => {
                tracing::error!(
                    path = %self.path.display(),
                    %error,
                    "cannot watch the configuration directory: reloads on SIGHUP only"
                );
                None
            }
        };
        let mut loaded = std::fs::read(&self.path).ok();
        loop {
            let signalled = async {
                match &mut hangup {
                    Some(signal) => signal.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = signalled => {
                    let _ = self.reload("SIGHUP").await;
                    loaded = std::fs::read(&self.path).ok();
                }
                Some(()) = changes.recv() => {
                    // Let the writer finish, then read what the path now leads to.
                    loop {
                        tokio::select! {
                            Some(()) = changes.recv() => {}
                            () = tokio::time::sleep(SETTLE) => break,
                        }
                    }
                    let now = std::fs::read(&self.path).ok();
                    // Other files in the directory change too (a ConfigMap's other keys,
                    // an editor's swap file): only new content is a reason to reload.
                    if now.is_some() && now != loaded {
                        let _ = self.reload("file change").await;
                        loaded = now;
                    }
                }
                () = shutdown.started() => return,
            }
        }
    }
}

/// Watches the directory holding `path`; every event in it sends a wake-up.
fn watch_directory(
    path: &Path,
    changed: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let directory = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // Full means a wake-up is already pending: nothing is lost.
            let _ = changed.try_send(());
        }
    })?;
    watcher.watch(directory, notify::RecursiveMode::NonRecursive)?;
    Ok(watcher)
}

/// Keeps the settings that only a restart can change at their running values, with a
/// warning naming each that the file changed: the listeners are bound, their workers
/// and connection limits set, logging is set up, the shutdown timing is armed.
fn keep_fixed_settings(running: &Settings, new: &mut Settings) {
    macro_rules! fixed {
        ($($field:ident).+, $key:literal) => {
            if running.$($field).+ != new.$($field).+ {
                tracing::warn!(key = $key, "this setting cannot change without a restart: keeping the running value, applying the rest");
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    fixed!(listen, "listen");
    fixed!(admin_listen, "admin_listen");
    fixed!(grpc_listen, "grpc_listen");
    fixed!(server.unix_socket_mode, "server.unix_socket_mode");
    fixed!(grpc.max_concurrent_streams, "grpc.max_concurrent_streams");
    fixed!(grpc.keep_alive_interval, "grpc.keep_alive_interval");
    fixed!(grpc.keep_alive_timeout, "grpc.keep_alive_timeout");
    fixed!(workers, "workers");
    fixed!(server.max_connections, "server.max_connections");
    fixed!(server.admin_max_connections, "server.admin_max_connections");
    fixed!(server.keep_alive, "server.keep_alive");
    fixed!(
        server.client_request_timeout,
        "server.client_request_timeout"
    );
    fixed!(shutdown, "shutdown");
    fixed!(log.format, "log.format");
    fixed!(log.filter, "log.filter");
    // The revocation store, its admin secret and its feed are built once: they outlive
    // reloads (and with them every revocation held).
    fixed!(revocation, "revocation");
}

/// Issuers added, removed and changed (recompiled: a new identity for their verdicts),
/// by name, and the number of rules.
fn changes(before: &Runtime, after: &Runtime) -> Changes {
    let before = before.gate.verifier.issuers();
    let after_issuers = after.gate.verifier.issuers();
    let find = |issuers: &[Arc<crate::verify::issuer::Issuer>], iss: &str| {
        issuers
            .iter()
            .find(|issuer| issuer.issuer() == iss)
            .cloned()
    };
    let mut changes = Changes {
        rules: after.settings.rules.len(),
        ..Changes::default()
    };
    for issuer in after_issuers {
        match find(before, issuer.issuer()) {
            None => changes.added.push(issuer.name.clone()),
            Some(old) if old.id != issuer.id => changes.changed.push(issuer.name.clone()),
            Some(_) => {}
        }
    }
    for issuer in before {
        if find(after_issuers, issuer.issuer()).is_none() {
            changes.removed.push(issuer.name.clone());
        }
        if !after_issuers.iter().any(|after| after.name == issuer.name) {
            changes.gone_names.push(issuer.name.clone());
        }
    }
    changes
}
