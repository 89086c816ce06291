//! Builds the application from validated settings: the compiled runtime, the first key
//! fetch, background refreshers and the listeners (auth, admin, and gRPC when
//! configured; each on TCP or a unix socket). Binding to port 0 works, and the bound
//! addresses are exposed for tests.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::dev::Server;
use actix_web::{web, App, HttpResponse, HttpServer};
use arc_swap::ArcSwap;
use prometheus::Registry;

use crate::config::{ConfigError, IdentityOutput, RevocationSecrets, Settings, ShutdownSettings};
use crate::grpc::GrpcServer;
use crate::http::revocation::{self, AdminToken};
use crate::http::{admin, auth, ext_authz, AppState};
use crate::listener::{BoundAddress, Listener, SocketFile};
use crate::metrics::{Metrics, RevocationMetrics};
use crate::reload::Reloader;
use crate::revocation::{feed, Revocations};
use crate::runtime;
use crate::shutdown::{BackgroundTasks, Shutdown, ShutdownTrigger};
use crate::verify::issuer::NewKeyStore;

/// Why the application could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {address}")]
    Bind {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on {address}: another process is listening on it (stop it, or choose another path)")]
    SocketInUse { address: String },
    #[error("cannot listen on {address}: the path exists and is not a socket")]
    NotASocket { address: String },
    #[error("metrics registration failed")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot serve on {address}")]
    Listen {
        address: String,
        #[source]
        source: std::io::Error,
    },
    #[error("a listener failed while serving")]
    Serve(#[source] std::io::Error),
}

/// Adds a bound [`Listener`] to an `HttpServer`; a unix socket's file is kept in
/// `$files` (removed when the application is gone). A macro: `HttpServer`'s type
/// parameters carry the whole app factory.
macro_rules! listen_on {
    ($server:expr, $listener:expr, $files:ident) => {
        match $listener {
            Listener::Tcp(listener) => $server.listen(listener),
            Listener::Unix(listener, file) => {
                $files.push(file);
                $server.listen_uds(listener)
            }
        }
    };
}

/// A built, bound, not yet running application.
pub struct Application {
    auth_server: Server,
    admin_server: Server,
    grpc_server: Option<GrpcServer>,
    shutdown: ShutdownSettings,
    auth_address: BoundAddress,
    admin_address: BoundAddress,
    /// The HTTP listeners' socket files, removed once the application is gone.
    _socket_files: Vec<SocketFile>,
    state: web::Data<AppState>,
    tasks: BackgroundTasks,
    /// Ends the background tasks: triggered when serving stops, or dropped with an
    /// application that never ran.
    background: ShutdownTrigger,
    /// What the background tasks watch.
    shutdown_signal: Shutdown,
    /// The configuration file to reload on SIGHUP and on change, if any.
    config_path: Option<PathBuf>,
}

impl Application {
    /// Builds with a fresh metrics registry.
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with_registry(settings, Registry::new()).await
    }

    /// Builds with the given registry, so that tests can read the metrics.
    pub async fn build_with_registry(
        settings: Settings,
        registry: Registry,
    ) -> Result<Self, StartupError> {
        let issuer_names: Vec<String> = settings
            .issuers
            .iter()
            .map(|issuer| issuer.display_name().to_owned())
            .collect();
        let metrics = Arc::new(Metrics::new(&registry, &issuer_names)?);
        let (background, shutdown) = ShutdownTrigger::new();
        let tasks = BackgroundTasks::default();
        let secrets = settings.revocation.secrets()?;
        let revocation_admin_token = secrets.admin_token.as_deref().map(AdminToken::new);
        let revocations = start_revocations(&settings, &secrets, &registry, &shutdown, &tasks)?;
        let compiled = runtime::compile(settings, &metrics, &shutdown, &revocations, None)?;
        start_key_stores(compiled.new_key_stores, &tasks).await;
        let settings = compiled.runtime.settings.clone();
        for issuer in compiled.runtime.gate.verifier.issuers() {
            if issuer.keys.is_ready() && !issuer.introspection_endpoint_known() {
                tracing::error!(
                    issuer = %issuer.name,
                    "introspection is configured, but no endpoint is: the discovery document names \
                     no introspection_endpoint; set introspection.endpoint (not ready until then)"
                );
            }
        }

        if settings.grpc_listen.is_some()
            && settings.identity.output == IdentityOutput::KubernetesImpersonation
        {
            tracing::warn!(
                "identity.output is kubernetes_impersonation and grpc_listen is set: over gRPC, \
                 an identity with several groups is refused (403 several_impersonation_groups), \
                 because Envoy's gRPC ext_authz cannot pass several Impersonate-Group lines; \
                 Envoy's HTTP ext_authz can (docs/grpc.md)"
            );
        }
        let socket_mode = settings.server.socket_mode()?;
        let listener = Listener::bind(&settings.listen, socket_mode)?;
        let admin_listener = Listener::bind(&settings.admin_listen, socket_mode)?;
        let grpc_listener = settings
            .grpc_listen
            .as_ref()
            .map(|address| Listener::bind(address, socket_mode))
            .transpose()?;
        let auth_address = bound_address(&listener, &settings.listen.to_string())?;
        let admin_address = bound_address(&admin_listener, &settings.admin_listen.to_string())?;

        let state = web::Data::new(AppState {
            runtime: ArcSwap::from_pointee(compiled.runtime),
            revocations,
            revocation_admin_token,
            revocation_refusal_logs: Default::default(),
            metrics,
            registry,
            shutting_down: AtomicBool::new(false),
        });

        let workers = settings
            .workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let auth_state = state.clone();
        let auth_server = HttpServer::new(move || {
            App::new()
                .app_data(auth_state.clone())
                .route("/auth", web::route().to(auth::auth))
                // The issuers post logout tokens here (docs/revocation.md: expose only
                // this path to them, never the whole listener to the world).
                .service(
                    web::resource("/backchannel-logout")
                        .app_data(web::PayloadConfig::new(revocation::MAX_LOGOUT_BODY))
                        .route(web::post().to(revocation::backchannel_logout)),
                )
                .route(ext_authz::PREFIX, web::route().to(ext_authz::ext_authz))
                .route(
                    &format!("{}/{{tail:.*}}", ext_authz::PREFIX),
                    web::route().to(ext_authz::ext_authz),
                )
                .default_service(web::to(HttpResponse::NotFound))
        })
        .workers(workers)
        // actix counts per worker; the setting is for the whole listener.
        .max_connections(settings.server.max_connections.div_ceil(workers))
        .keep_alive(settings.server.keep_alive)
        .client_request_timeout(settings.server.client_request_timeout)
        // Signals are handled in `run_until_stopped`: readiness must flip first.
        .disable_signals()
        .shutdown_timeout(settings.shutdown.grace.as_secs().max(1));
        let mut socket_files = Vec::new();
        let auth_server = listen_on!(auth_server, listener, socket_files)
            .map_err(|source| StartupError::Listen {
                address: settings.listen.to_string(),
                source,
            })?
            .run();
        let admin_state = state.clone();
        let admin_server = HttpServer::new(move || {
            App::new()
                .app_data(admin_state.clone())
                .route("/healthz", web::get().to(admin::healthz))
                .route("/readyz", web::get().to(admin::readyz))
                .route("/metrics", web::get().to(admin::metrics))
                .service(
                    web::resource("/revocations")
                        .app_data(web::PayloadConfig::new(revocation::MAX_REVOKE_BODY))
                        .route(web::post().to(revocation::revoke)),
                )
        })
        .workers(1)
        .max_connections(settings.server.admin_max_connections)
        .keep_alive(settings.server.keep_alive)
        .client_request_timeout(settings.server.client_request_timeout)
        .disable_signals()
        .shutdown_timeout(settings.shutdown.grace.as_secs().max(1));
        let admin_server = listen_on!(admin_server, admin_listener, socket_files)
            .map_err(|source| StartupError::Listen {
                address: settings.admin_listen.to_string(),
                source,
            })?
            .run();
        let grpc_server = match grpc_listener {
            Some(listener) => Some(
                GrpcServer::start(
                    listener,
                    state.clone(),
                    &settings.grpc,
                    workers,
                    shutdown.clone(),
                )
                .await?,
            ),
            None => None,
        };

        Ok(Self {
            auth_server,
            admin_server,
            grpc_server,
            shutdown: settings.shutdown.clone(),
            auth_address,
            admin_address,
            _socket_files: socket_files,
            state,
            tasks,
            background,
            shutdown_signal: shutdown,
            config_path: None,
        })
    }

    /// Reloads the configuration from `path` on SIGHUP and whenever the file changes,
    /// while serving (see [`crate::reload`]).
    pub fn reload_from(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Port of the auth listener (0 on a unix socket).
    pub fn port(&self) -> u16 {
        self.auth_address.port()
    }

    /// Port of the admin listener (0 on a unix socket).
    pub fn admin_port(&self) -> u16 {
        self.admin_address.port()
    }

    /// Port of the gRPC listener, if there is one on TCP.
    pub fn grpc_port(&self) -> Option<u16> {
        self.grpc_address()
            .map(BoundAddress::port)
            .filter(|port| *port != 0)
    }

    /// Where the auth listener is bound.
    pub fn auth_address(&self) -> &BoundAddress {
        &self.auth_address
    }

    /// Where the admin listener is bound.
    pub fn admin_address(&self) -> &BoundAddress {
        &self.admin_address
    }

    /// Where the gRPC listener is bound, if `grpc_listen` is set.
    pub fn grpc_address(&self) -> Option<&BoundAddress> {
        self.grpc_server.as_ref().map(GrpcServer::address)
    }

    /// Shared state, for tests and the demo.
    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully (see
    /// [`Application::run_until`]).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` resolves, then: `/readyz` and the gRPC health service turn
    /// not-ready at once; the listeners keep serving for `drain_delay` (so endpoints
    /// controllers and Envoy's health checks stop routing here first); then they stop
    /// accepting and finish in-flight requests and streams; the key refreshers stop. All
    /// within `grace`.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> std::io::Result<()> {
        let auth_handle = self.auth_server.handle();
        let admin_handle = self.admin_server.handle();
        // The servers' futures process the stop commands: they must keep running, and
        // they must not outlive this future if it is dropped (a caller's timeout). The
        // gRPC listener ends with `self.grpc_server` on drop.
        let _stop_on_drop = StopOnDrop([auth_handle.clone(), admin_handle.clone()]);
        if let Some(path) = self.config_path.take() {
            let reloader = Reloader::new(
                path,
                self.state.clone(),
                self.shutdown_signal.clone(),
                self.tasks.clone(),
            );
            self.tasks.spawn(reloader.run(self.shutdown_signal.clone()));
        }
        let mut auth = tokio::spawn(self.auth_server);
        let mut admin = tokio::spawn(self.admin_server);
        let mut grpc = self.grpc_server.as_mut().and_then(GrpcServer::take_task);
        let joined = |result: Result<std::io::Result<()>, tokio::task::JoinError>| {
            result.unwrap_or_else(|error| Err(std::io::Error::other(error)))
        };
        let grpc_ended = async {
            match grpc.as_mut() {
                Some(task) => joined(task.await),
                None => std::future::pending().await,
            }
        };
        let result = tokio::select! {
            result = &mut auth => joined(result),
            result = &mut admin => joined(result),
            result = grpc_ended => result,
            () = stop => {
                let started = std::time::Instant::now();
                self.state.shutting_down.store(true, Ordering::Release);
                if let Some(grpc) = &self.grpc_server {
                    grpc.not_serving().await;
                }
                tracing::info!(drain_delay = ?self.shutdown.drain_delay, grace = ?self.shutdown.grace, "shutting down: not ready any more");
                tokio::time::sleep(self.shutdown.drain_delay).await;
                let left = self.shutdown.grace.saturating_sub(started.elapsed());
                if let Some(grpc) = &mut self.grpc_server {
                    grpc.stop_accepting();
                }
                let grpc_drained = async {
                    if let Some(task) = grpc.as_mut() {
                        let _ = task.await;
                    }
                };
                let drained = tokio::time::timeout(left, async {
                    // Stop accepting and wait for in-flight requests and streams; the
                    // admin listener goes last so that `/readyz` answers "not ready"
                    // until the end.
                    tokio::join!(auth_handle.stop(true), grpc_drained);
                    admin_handle.stop(true).await;
                })
                .await;
                if drained.is_err() {
                    tracing::warn!("grace period over: stopping with requests still in flight");
                    auth_handle.stop(false).await;
                    admin_handle.stop(false).await;
                    if let Some(task) = &grpc {
                        task.abort();
                    }
                }
                tracing::info!(took = ?started.elapsed(), "stopped");
                Ok(())
            }
        };
        self.state.shutting_down.store(true, Ordering::Release);
        self.background.trigger();
        // Each ends at its next await point; a refresh in flight is bounded by the HTTP
        // client's timeout.
        self.tasks.join_all().await;
        // The gRPC runtime and every socket file go with the application.
        drop(self.grpc_server.take());
        result
    }
}

/// Tells both servers to stop when dropped; stopping a stopped server does nothing.
struct StopOnDrop([actix_web::dev::ServerHandle; 2]);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        for handle in &self.0 {
            // The command is sent when `stop` is called; the returned future only waits
            // for it to complete.
            drop(handle.stop(false));
        }
    }
}

/// Resolves on SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = terminate => {}
        result = tokio::signal::ctrl_c() => {
            if let Err(error) = result {
                tracing::error!(%error, "cannot listen for SIGINT");
                std::future::pending::<()>().await;
            }
        }
    }
}

/// Builds the revocation store, once per process (reloads keep it), and starts the Redis
/// feed when one is configured: its first load happens in the background, and readiness
/// waits for it.
fn start_revocations(
    settings: &Settings,
    secrets: &RevocationSecrets,
    registry: &Registry,
    shutdown: &Shutdown,
    tasks: &BackgroundTasks,
) -> Result<Arc<Revocations>, StartupError> {
    let (revocations, outbox) =
        Revocations::new(&settings.revocation, RevocationMetrics::new(registry)?);
    if let (Some(redis), Some(outbox)) = (&settings.revocation.redis, outbox) {
        feed::spawn(redis, secrets, revocations.clone(), outbox, shutdown, tasks)?;
    }
    Ok(revocations)
}

/// Fetches each new key store's keys once, concurrently, then leaves its refresher
/// running. Start-up waits for the first attempts (bounded by the client's timeouts) so
/// that a healthy deployment is ready as soon as it listens; a reload runs this in the
/// background.
pub(crate) async fn start_key_stores(stores: Vec<NewKeyStore>, tasks: &BackgroundTasks) {
    let mut first_fetches = tokio::task::JoinSet::new();
    for NewKeyStore { keys, shutdown } in stores {
        first_fetches.spawn(async move {
            let first = keys.refresh().await;
            (keys, shutdown, first)
        });
    }
    while let Some(joined) = first_fetches.join_next().await {
        if let Ok((keys, shutdown, first)) = joined {
            tasks.spawn(keys.run_refresher(first, shutdown));
        }
    }
}

fn bound_address(listener: &Listener, address: &str) -> Result<BoundAddress, StartupError> {
    listener
        .bound_address()
        .map_err(|source| StartupError::Listen {
            address: address.to_owned(),
            source,
        })
}
