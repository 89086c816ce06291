//! Thin handlers: extract, call the verifier, map the outcome.
//!
//! - [`auth`]: `/auth` for nginx `auth_request` and Traefik `forwardAuth`;
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` on the admin listener.

pub mod admin;
pub mod auth;

use std::sync::atomic::AtomicBool;

use actix_web::http::StatusCode;
use prometheus::Registry;

use crate::metrics::Metrics;
use crate::verify::Verifier;
use std::sync::Arc;

/// State shared by every worker of both listeners, built once.
pub struct AppState {
    pub verifier: Verifier,
    pub metrics: Arc<Metrics>,
    pub registry: Registry,
    /// Status of an allowed `/auth` request.
    pub success_status: StatusCode,
    /// Set on shutdown so that `/readyz` turns not-ready before the listener closes.
    pub shutting_down: AtomicBool,
}
