//! `compile(Settings) -> Runtime`, once: everything a decision needs, built from
//! validated settings. Start-up, `--check-config` and every reload call [`compile`], so
//! a file that passes the check starts, and a reload is judged exactly as a start would
//! be. A reload passes the running runtime as `previous`: what did not change (issuers,
//! key stores, caches, the outbound client) is kept, not rebuilt.

use std::sync::Arc;

use actix_web::http::StatusCode;

use crate::config::{AllowLogLevel, ConfigError, IdentityOutput, Settings};
use crate::gate::Gate;
use crate::metrics::Metrics;
use crate::outbound;
use crate::policy::RouteRules;
use crate::request::{PathParameters, ProxyHeaders, TokenSource};
use crate::revocation::Revocations;
use crate::shutdown::Shutdown;
use crate::verify::issuer::NewKeyStore;
use crate::verify::{Outbound, Previous, Verifier};

/// The compiled configuration: shared by every worker and adapter, swapped whole by a
/// reload. A request holds the runtime it started with until it is answered.
pub struct Runtime {
    pub gate: Gate,
    /// Where tokens are read from, tried in order, and their size cap.
    pub token_sources: Vec<TokenSource>,
    pub max_token_length: usize,
    pub proxy_headers: ProxyHeaders,
    pub path_parameters: PathParameters,
    /// Refuse client-sent `Impersonate-*` headers (Kubernetes impersonation output).
    pub refuse_impersonation_headers: bool,
    /// Bounds on the request head (`server.max_header_bytes`, `server.max_headers`).
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Status of an allowed `/auth` request.
    pub success_status: StatusCode,
    /// Level of the audit line of an allowed request.
    pub allow_log_level: AllowLogLevel,
    /// The settings it was compiled from, for the next reload to compare with.
    pub settings: Settings,
    /// The one outbound client (key fetches, introspection).
    client: reqwest::Client,
}

/// A compiled runtime, and the key stores it created, whose keys nobody fetched yet
/// (start-up waits for their first fetch; a reload lets them load in the background).
pub struct Compiled {
    pub runtime: Runtime,
    pub new_key_stores: Vec<NewKeyStore>,
}

/// Compiles `settings`, as [`Settings::load`] validated them. Reads every file the
/// settings name (client secrets, the CA bundle); fetches nothing. `background` is the signal the key refreshers of new
/// key stores stop on; `revocations` is the application's store (it is not compiled:
/// it outlives reloads); `previous` is the running runtime on a reload.
pub fn compile(
    settings: Settings,
    metrics: &Arc<Metrics>,
    background: &Shutdown,
    revocations: &Arc<Revocations>,
    previous: Option<&Runtime>,
) -> Result<Compiled, ConfigError> {
    let reused_client = previous
        .filter(|previous| previous.settings.http_client == settings.http_client)
        .map(|previous| previous.client.clone());
    let client_unchanged = reused_client.is_some();
    let client = match reused_client {
        Some(client) => client,
        None => outbound::client(&settings.http_client)?,
    };
    let outbound = Outbound {
        client: &client,
        metrics,
        background,
        revocations,
    };
    let compiled = Verifier::compile(
        &settings,
        &outbound,
        previous.map(|previous| Previous {
            verifier: &previous.gate.verifier,
            settings: &previous.settings,
            client_unchanged,
        }),
    )?;
    let rules = RouteRules::new(&settings.rules)?;
    if rules.are_conditional() && settings.proxy_headers.is_none() {
        return Err(ConfigError::new(
            "proxy_headers",
            "must be set when a rule matches on hosts, paths or methods: choose ingress_nginx, nginx, traefik, none (only Envoy on /ext-authz) or auto",
        ));
    }
    let success_status = StatusCode::from_u16(settings.success_status)
        .map_err(|_| ConfigError::new("success_status", "not an HTTP status"))?;
    let runtime = Runtime {
        gate: Gate::new(
            compiled.verifier,
            rules,
            settings.cache.proxy_cache_route_verdicts,
        ),
        token_sources: settings.token_sources()?,
        max_token_length: settings.token.max_length,
        // Unset means no rule depends on the original request (checked above): it is
        // then read for the audit line only.
        proxy_headers: settings.proxy_headers.unwrap_or(ProxyHeaders::Auto),
        path_parameters: settings.path_parameters,
        refuse_impersonation_headers: settings.identity.output
            == IdentityOutput::KubernetesImpersonation,
        max_header_bytes: settings.server.max_header_bytes,
        max_headers: settings.server.max_headers,
        success_status,
        allow_log_level: settings.log.allow_level,
        client,
        settings,
    };
    Ok(Compiled {
        runtime,
        new_key_stores: compiled.new_key_stores,
    })
}

/// `--check-config`: compiles `settings` as a start would, and throws the result away.
pub fn check(settings: Settings) -> Result<(), ConfigError> {
    // Outside the runtime (they need a restart), but read at start-up all the same.
    settings.revocation.secrets()?;
    let metrics = Metrics::new(&prometheus::Registry::new(), &[])
        .map_err(|error| ConfigError::new("metrics", error.to_string()))?;
    let (_stop, background) = crate::shutdown::ShutdownTrigger::new();
    let revocations = Revocations::new(
        &settings.revocation,
        crate::metrics::RevocationMetrics::detached(),
    )
    .0;
    compile(
        settings,
        &Arc::new(metrics),
        &background,
        &revocations,
        None,
    )
    .map(drop)
}
