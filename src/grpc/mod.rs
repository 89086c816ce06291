//! The gRPC listener (`grpc_listen`): Envoy's `envoy.service.auth.v3.Authorization/Check`
//! ([`check`]) and the standard `grpc.health.v1` service, over HTTP/2 on TCP or a unix
//! socket.
//!
//! It runs on a runtime of its own, with as many threads as the HTTP listener has
//! workers: Envoy multiplexes every check over a few HTTP/2 connections, and each stream
//! is a task that any of these threads may run. The decision state is the HTTP
//! listener's, shared: one cache, one set of keys.
//!
//! Health says SERVING only while `/readyz` would answer 200, and NOT_SERVING from the
//! moment shutdown starts; stopping drains the open streams like the HTTP listeners.

pub mod check;

use std::sync::atomic::Ordering;
use std::time::Duration;

use actix_web::web;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::config::GrpcSettings;
use crate::http::{admin, AppState};
use crate::listener::{BoundAddress, Listener, SocketFile};
use crate::shutdown::Shutdown;
use crate::startup::StartupError;
use check::CheckService;

/// How often the health service re-reads readiness (keys loaded, not too stale).
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
/// Largest `CheckRequest` decoded: the head limits are at most 128 KiB, and Envoy only
/// adds a body when `with_request_body` asks it to (tokengate never reads one).
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// The health service names that report tokengate's readiness: the whole server, and
/// the authorization service (Envoy's `grpc_health_check.service_name`).
const HEALTH_SERVICES: [&str; 2] = [
    "",
    <AuthorizationServer<CheckService> as NamedService>::NAME,
];

/// The gRPC listener, serving from [`GrpcServer::start`] until it is stopped or dropped.
pub struct GrpcServer {
    address: BoundAddress,
    health: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    /// Dropped last, after the runtime: connections are gone before the file is.
    runtime: Option<tokio::runtime::Runtime>,
    _socket: Option<SocketFile>,
}

impl GrpcServer {
    /// Starts serving on `listener` with `threads` threads; the health service starts
    /// from the readiness at this moment and follows it until `shutdown`.
    pub async fn start(
        listener: Listener,
        state: web::Data<AppState>,
        settings: &GrpcSettings,
        threads: usize,
        shutdown: Shutdown,
    ) -> Result<GrpcServer, StartupError> {
        let address = listener
            .bound_address()
            .map_err(|source| StartupError::Listen {
                address: "grpc_listen".to_owned(),
                source,
            })?;
        let listen_failed = |source| StartupError::Listen {
            address: address.to_string(),
            source,
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("tokengate-grpc")
            .enable_all()
            .build()
            .map_err(listen_failed)?;

        let (health, health_service) = tonic_health::server::health_reporter();
        report(&health, serving(&state)).await;
        let check = AuthorizationServer::new(CheckService::new(state.clone()))
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(settings.max_concurrent_streams)
            .http2_keepalive_interval(Some(settings.keep_alive_interval))
            .http2_keepalive_timeout(Some(settings.keep_alive_timeout))
            .add_service(health_service)
            .add_service(check);

        let (stop, stopped) = oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let (task, socket) = match listener {
            Listener::Tcp(listener) => {
                listener.set_nonblocking(true).map_err(listen_failed)?;
                let task = runtime.spawn(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)?;
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    router
                        .serve_with_incoming_shutdown(incoming, stopped)
                        .await
                        .map_err(std::io::Error::other)
                });
                (task, None)
            }
            Listener::Unix(listener, socket) => {
                listener.set_nonblocking(true).map_err(listen_failed)?;
                let task = runtime.spawn(async move {
                    let listener = tokio::net::UnixListener::from_std(listener)?;
                    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
                    router
                        .serve_with_incoming_shutdown(incoming, stopped)
                        .await
                        .map_err(std::io::Error::other)
                });
                (task, Some(socket))
            }
        };
        runtime.spawn(follow_readiness(health.clone(), state, shutdown));
        Ok(GrpcServer {
            address,
            health,
            stop: Some(stop),
            task: Some(task),
            runtime: Some(runtime),
            _socket: socket,
        })
    }

    /// Where it listens.
    pub fn address(&self) -> &BoundAddress {
        &self.address
    }

    /// The serving task, to be awaited by the caller: it ends when the listener stops
    /// (after [`GrpcServer::stop_accepting`], once the open streams are done) or fails.
    pub fn take_task(&mut self) -> Option<JoinHandle<std::io::Result<()>>> {
        self.task.take()
    }

    /// Health turns NOT_SERVING (shutdown has begun); checks are still answered.
    pub async fn not_serving(&self) {
        report(&self.health, ServingStatus::NotServing).await;
    }

    /// Stops accepting connections and asks the open ones to end (HTTP/2 GOAWAY): streams
    /// in flight finish, new ones go elsewhere.
    pub fn stop_accepting(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        // Whatever is still running ends now; a runtime cannot be dropped the blocking way
        // inside another runtime, which is where the application runs.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// SERVING when `/readyz` would answer 200.
fn serving(state: &AppState) -> ServingStatus {
    match admin::readiness(state) {
        Ok(()) => ServingStatus::Serving,
        Err(_) => ServingStatus::NotServing,
    }
}

async fn report(health: &HealthReporter, status: ServingStatus) {
    for service in HEALTH_SERVICES {
        health.set_service_status(service, status).await;
    }
}

/// Keeps the health status in step with readiness (keys can become too stale to trust,
/// and become ready late). Shutdown's own NOT_SERVING always wins: the flag is read
/// after each report, so a SERVING reported just as shutdown began is corrected at once.
async fn follow_readiness(
    health: HealthReporter,
    state: web::Data<AppState>,
    mut shutdown: Shutdown,
) {
    loop {
        report(&health, serving(&state)).await;
        if state.shutting_down.load(Ordering::Acquire) {
            report(&health, ServingStatus::NotServing).await;
            return;
        }
        tokio::select! {
            () = shutdown.started() => {
                report(&health, ServingStatus::NotServing).await;
                return;
            }
            () = tokio::time::sleep(HEALTH_INTERVAL) => {}
        }
    }
}
