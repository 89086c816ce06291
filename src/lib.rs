//! tokengate: a fast ext-auth token verifier for nginx `auth_request`, Traefik
//! `forwardAuth` and Envoy `ext_authz`. It reads the client's bearer token, verifies it
//! against the configured issuers' keys, and answers 2xx with identity headers, or
//! 401/403/503. It keeps no session and shows no login page.
//!
//! # Layout
//!
//! - [`config`]: the settings file + `TOKENGATE__…` overrides, as plain data (it imports
//!   no domain module);
//! - [`runtime`]: `compile(Settings) -> Runtime`, once, for start-up, `--check-config`
//!   and reloads: every domain object is built and checked there;
//! - [`startup`]: [`startup::Application`] binds the listeners and runs them;
//! - [`listener`]: TCP or unix-socket listeners, the same for every server;
//! - [`reload`]: SIGHUP and file changes compile the file again and swap the runtime;
//! - [`shutdown`]: the signal every background task watches to end by itself;
//! - [`telemetry`]: the tracing subscriber;
//! - [`error`]: the one denial type (reason → status and label) and the cause-chain printer;
//! - [`outbound`]: the one HTTP client for key fetches and introspection, its size-capped
//!   reads and its one fetch error type;
//! - [`metrics`]: typed Prometheus handles in a registry passed in;
//! - [`gate`]: the one decision path: an [`gate::AuthQuery`] in, a [`gate::Decision`] out;
//! - [`http`]: thin adapters for `/auth`, `/ext-authz` and the admin listener, and
//!   [`http::respond`]: reasons and decisions on the wire;
//! - [`grpc`]: the Envoy gRPC `ext_authz` adapter on the same decision path;
//! - [`request`]: where the token is, and the original request, in the proxy's call;
//! - [`identity`]: claims → sanitised identity headers (or Kubernetes impersonation);
//! - [`policy`]: per-route requirements and route rules (grants narrow, restrictions
//!   broad), pure functions;
//! - [`verify`]: the verifier: cache, JWT validation, key stores, RFC 7662 introspection;
//! - [`revocation`]: sid / jti / sub revocations checked on every request, and the Redis
//!   feed that shares them between replicas;
//! - [`demo`]: the embedded demo issuer behind `tokengate demo`.
//!
//! docs/architecture.md walks one request through these.

#![forbid(unsafe_code)]

pub mod config;
pub mod demo;
pub mod error;
pub mod gate;
pub mod grpc;
pub mod http;
pub mod identity;
pub mod listener;
pub mod metrics;
pub mod outbound;
pub mod policy;
pub mod reload;
pub mod request;
pub mod revocation;
pub mod runtime;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod verify;
