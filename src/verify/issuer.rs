//! One configured issuer as one value: its JWT rules, its key store, its introspection
//! client, how its claims are read and its metric series, compiled together from its
//! settings. A reload compiles again and keeps what did not change: the whole issuer
//! (same [`IssuerId`], so its cached verdicts still count) when nothing it depends on
//! changed, or only its key store (no refetch) when the keys' source is the same.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use url::Url;

use super::alg::Alg;
use super::introspection::{AnswerRules, IntrospectionClient};
use super::jwks::KeyStore;
use super::jwt::JwtRules;
use crate::config::{BackchannelLogoutSettings, ClientSecret, ConfigError, IssuerSettings};
use crate::identity::ClaimRules;
use crate::metrics::{IssuerMetrics, Metrics};
use crate::shutdown::{Shutdown, ShutdownTrigger};

/// A compiled issuer's identity, unique in the process: cached verdicts carry it, and one
/// whose issuer a reload changed or removed no longer finds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IssuerId(u64);

impl IssuerId {
    /// A number never handed out before.
    pub fn next() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// Everything a verification at one issuer needs.
pub struct Issuer {
    pub id: IssuerId,
    /// The configured name (or the issuer URL): logs and metric labels.
    pub name: String,
    pub jwt: JwtRules,
    pub keys: Arc<KeyStore>,
    /// Present when introspection is configured.
    pub introspection: Option<IntrospectionClient>,
    pub claims: ClaimRules,
    /// The longest `X-Accel-Expires` an allow may carry, in seconds: never longer than we
    /// would trust the token ourselves without checking again (the cache ttl, or the
    /// introspection revocation window).
    pub proxy_cache_cap: u64,
    /// OpenID Connect Back-Channel Logout from this issuer, when configured.
    pub backchannel_logout: Option<BackchannelLogoutSettings>,
    pub metrics: IssuerMetrics,
    /// What it was compiled from, for the next reload to compare with.
    settings: IssuerSettings,
    secret: Option<ClientSecret>,
    /// Shared by every compiled issuer that shares the key store; the refresher stops
    /// when the last of them is dropped.
    refresher: Arc<RefresherStop>,
}

/// Ends a key store's refresher when dropped.
struct RefresherStop(#[allow(dead_code)] ShutdownTrigger);

/// A key store that a compile created: the caller fetches its keys and starts its
/// refresher with `shutdown`.
pub struct NewKeyStore {
    pub keys: Arc<KeyStore>,
    pub shutdown: Shutdown,
}

/// What every issuer of one compile shares.
pub struct IssuerContext<'a> {
    pub client: &'a reqwest::Client,
    pub metrics: &'a Metrics,
    /// The application's background shutdown; each refresher also stops with it.
    pub background: &'a Shutdown,
    pub max_ttl: Duration,
    /// The outbound client and the identity mapping are those the previous issuers were
    /// compiled with: only then may one of them be kept.
    pub shared_unchanged: bool,
    pub client_unchanged: bool,
}

impl Issuer {
    /// Compiles the issuer at `key` (`issuers[2]`), keeping what it can of `previous` (the
    /// issuer of the same `issuer` URL before a reload). Reads the client secret.
    pub fn compile(
        key: &str,
        settings: &IssuerSettings,
        context: &IssuerContext<'_>,
        previous: Option<&Arc<Issuer>>,
        new_key_stores: &mut Vec<NewKeyStore>,
    ) -> Result<Arc<Issuer>, ConfigError> {
        let algorithms = allowed_algorithms(&format!("{key}.algorithms"), &settings.algorithms)?;
        let secret = settings
            .introspection
            .as_ref()
            .map(|introspection| introspection.client_secret(&format!("{key}.introspection")))
            .transpose()?;
        if let Some(previous) = previous {
            if context.shared_unchanged
                && context.client_unchanged
                && previous.settings == *settings
                && previous.secret == secret
            {
                return Ok(previous.clone());
            }
        }
        let name = settings.display_name().to_owned();
        let metrics = context.metrics.issuer(&name);
        let kept = previous.filter(|previous| {
            context.client_unchanged && same_key_source(&previous.settings, settings)
        });
        let (keys, refresher) = match kept {
            Some(previous) => (previous.keys.clone(), previous.refresher.clone()),
            None => {
                let jwks_uri = settings
                    .jwks_uri
                    .as_deref()
                    .map(Url::parse)
                    .transpose()
                    .map_err(|e| ConfigError::new(format!("{key}.jwks_uri"), e.to_string()))?;
                let keys = Arc::new(KeyStore::new(
                    settings,
                    jwks_uri,
                    algorithms.clone(),
                    context.client.clone(),
                    metrics.clone(),
                ));
                let (trigger, shutdown) = ShutdownTrigger::child_of(context.background);
                new_key_stores.push(NewKeyStore {
                    keys: keys.clone(),
                    shutdown,
                });
                (keys, Arc::new(RefresherStop(trigger)))
            }
        };
        let introspection = match (&settings.introspection, &secret) {
            (Some(introspection), Some(secret)) => Some(IntrospectionClient::new(
                &format!("{key}.introspection"),
                &name,
                AnswerRules {
                    issuer: settings.issuer.clone(),
                    audiences: settings.audiences.clone(),
                    require_audience: introspection.require_audience,
                    leeway: settings.leeway.as_secs(),
                },
                introspection,
                secret.clone(),
                keys.clone(),
                metrics.clone(),
            )?),
            _ => None,
        };
        let trusted_for = settings
            .introspection
            .as_ref()
            .map_or(context.max_ttl, |introspection| {
                introspection.positive_ttl.min(context.max_ttl)
            });
        Ok(Arc::new(Issuer {
            id: IssuerId::next(),
            name,
            jwt: JwtRules::new(settings, &algorithms),
            keys,
            introspection,
            claims: ClaimRules::from(settings),
            proxy_cache_cap: trusted_for.as_secs(),
            backchannel_logout: settings.backchannel_logout.clone(),
            metrics,
            settings: settings.clone(),
            secret,
            refresher,
        }))
    }

    /// The `iss` its tokens carry.
    pub fn issuer(&self) -> &str {
        &self.settings.issuer
    }

    /// Ready when its keys are loaded and, with introspection, an endpoint is known.
    pub fn is_ready(&self) -> bool {
        self.keys.is_ready() && self.introspection_endpoint_known()
    }

    /// False when introspection is configured but no endpoint is: none was configured and
    /// the discovery document (once fetched) named none.
    pub fn introspection_endpoint_known(&self) -> bool {
        self.introspection
            .as_ref()
            .is_none_or(IntrospectionClient::endpoint_known)
    }

    /// True when its JWTs must also be found active by introspection.
    pub fn introspects_jwts(&self) -> bool {
        self.introspection
            .as_ref()
            .is_some_and(IntrospectionClient::introspects_jwts)
    }
}

/// The key store depends on where keys come from, which of them are usable, how often
/// they are fetched, and the name its logs and metrics carry.
fn same_key_source(before: &IssuerSettings, after: &IssuerSettings) -> bool {
    before.issuer == after.issuer
        && before.name == after.name
        && before.jwks_uri == after.jwks_uri
        && before.algorithms == after.algorithms
        && before.keys == after.keys
}

/// The issuer's allow-list, from the configured names at `key`: `none` and the symmetric
/// algorithms are refused by name, so a configuration cannot open the classic attacks.
fn allowed_algorithms(key: &str, names: &[String]) -> Result<Vec<Alg>, ConfigError> {
    if names.is_empty() {
        return Err(ConfigError::new(key, "at least one algorithm is required"));
    }
    names
        .iter()
        .map(|name| {
            if name.eq_ignore_ascii_case("none") {
                return Err(ConfigError::new(
                    key,
                    "'none' is never allowed: it means unsigned tokens",
                ));
            }
            Alg::from_name(name).ok_or_else(|| {
                ConfigError::new(
                    key,
                    format!(
                        "'{name}' is not supported (use RS256/384/512, PS256/384/512, ES256/384 or EdDSA)"
                    ),
                )
            })
        })
        .collect()
}
