//! Settings of revocation: back-channel logout per issuer, the operator's revoke
//! endpoint, retention, and the optional Redis feed shared by replicas.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

/// OpenID Connect Back-Channel Logout 1.0 at one issuer: the issuer posts logout tokens
/// to `POST /backchannel-logout` on the auth listener.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackchannelLogoutSettings {
    /// Our client id at this issuer: a logout token's `aud` must contain it.
    pub client_id: String,
    /// How old a logout token's `iat` may be (§2.6 step 6: "a reasonable time window").
    #[serde(default = "defaults::logout_max_age", with = "humantime_serde")]
    pub max_age: Duration,
}

/// Revocation: what is kept, who may add to it, and how replicas share it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RevocationSettings {
    /// How long a revocation is kept, locally and in Redis. Keep it at least as long as
    /// the longest token lifetime you accept: a token outliving its revocation passes
    /// again once the entry is forgotten.
    #[serde(with = "humantime_serde")]
    pub retention: Duration,
    /// Most revocation entries held (about 72 bytes each: the default is about 7 MB of
    /// the pod's memory). Beyond it the oldest entries are dropped first (with a
    /// warning): size it well above the logouts of one retention period.
    pub max_entries: usize,
    /// File holding the bearer secret of `POST /revocations` on the admin listener (a
    /// trailing newline is ignored). Unset: the endpoint is off (404).
    pub admin_token_file: Option<PathBuf>,
    /// With `redis`: `/readyz` stays not-ready until the first full load of the feed's
    /// entries, so that a new replica never serves without the revocations the others
    /// know. A later Redis outage does not turn replicas unready (they keep serving with
    /// the entries they hold).
    pub require_feed_for_readiness: bool,
    /// The feed shared by replicas. Without it, each replica knows only the revocations
    /// it received itself.
    pub redis: Option<RedisFeedSettings>,
}

impl Default for RevocationSettings {
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(24 * 3600),
            max_entries: 100_000,
            admin_token_file: None,
            require_feed_for_readiness: true,
            redis: None,
        }
    }
}

/// The Redis revocation feed: every event is a key with a TTL of `retention`, and a
/// message on `channel`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisFeedSettings {
    /// `redis://host:6379/0`, or `rediss://…` for TLS (the system roots, or `ca_file`).
    /// Put no password in it: use `password_file`.
    pub url: String,
    /// File holding the Redis password (`requirepass` or an ACL user's, with the user in
    /// the URL); a trailing newline is ignored.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// With `rediss://`: PEM file of the CA(s) that signed the Redis server's certificate
    /// (an in-cluster Redis behind a private CA). Then only these are trusted, not the
    /// system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Pub/sub channel the events are published on.
    #[serde(default = "defaults::channel")]
    pub channel: String,
    /// Prefix of the keys holding current events (loaded with `SCAN`, never `KEYS`).
    #[serde(default = "defaults::key_prefix")]
    pub key_prefix: String,
    /// Events accepted while Redis is unreachable wait in a queue of this many, and are
    /// written once it is back; beyond it they stay local only (with a warning).
    #[serde(default = "defaults::max_pending")]
    pub max_pending: usize,
}

/// What the files of the revocation settings hold ([`RevocationSettings::secrets`]).
pub struct RevocationSecrets {
    /// The bearer secret of `POST /revocations`; `None`: the endpoint is off.
    pub admin_token: Option<String>,
    pub redis_password: Option<String>,
    /// The CA bundle (PEM) that alone is trusted for `rediss://`.
    pub redis_ca: Option<Vec<u8>>,
}

impl RedisFeedSettings {
    /// The CA bundle, if a file is configured: PEM certificates, read once; a file with
    /// none is a config error rather than a TLS failure at the first connection.
    fn ca_certificates(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.ca_file else {
            return Ok(None);
        };
        let key = "revocation.redis.ca_file";
        let pem = std::fs::read(path)
            .map_err(|e| ConfigError::new(key, format!("{}: {e}", path.display())))?;
        let holds_certificate =
            String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----");
        if !holds_certificate {
            return Err(ConfigError::new(
                key,
                format!("{}: no PEM certificate in it", path.display()),
            ));
        }
        Ok(Some(pem))
    }

    /// The password, if a file is configured; empty or unreadable is a config error.
    fn password(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.password_file else {
            return Ok(None);
        };
        let key = "revocation.redis.password_file";
        let raw = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(key, format!("{}: {e}", path.display())))?;
        let password = raw.trim_end_matches(['\r', '\n']);
        if password.is_empty() {
            return Err(ConfigError::new(key, "the password is empty"));
        }
        Ok(Some(password.to_owned()))
    }
}

impl RevocationSettings {
    /// Every file the revocation settings name, read: once, at start-up (and by
    /// `--check-config`). Revocation settings change only with a restart, so nothing
    /// reads these files again.
    pub fn secrets(&self) -> Result<RevocationSecrets, ConfigError> {
        let redis = self.redis.as_ref();
        Ok(RevocationSecrets {
            admin_token: self.admin_token()?,
            redis_password: redis
                .map(RedisFeedSettings::password)
                .transpose()?
                .flatten(),
            redis_ca: redis
                .map(RedisFeedSettings::ca_certificates)
                .transpose()?
                .flatten(),
        })
    }

    /// The admin bearer secret, if a file is configured.
    fn admin_token(&self) -> Result<Option<String>, ConfigError> {
        let Some(path) = &self.admin_token_file else {
            return Ok(None);
        };
        let key = "revocation.admin_token_file";
        let raw = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new(key, format!("{}: {e}", path.display())))?;
        let secret = raw.trim_end_matches(['\r', '\n']);
        if secret.len() < 16 {
            // A short secret on an endpoint that can lock every user out is guessable.
            return Err(ConfigError::new(
                key,
                "the secret must be at least 16 bytes",
            ));
        }
        Ok(Some(secret.to_owned()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retention < Duration::from_secs(60) || self.retention > MAX_RETENTION {
            return Err(ConfigError::new(
                "revocation.retention",
                "must be between 1m and 30d",
            ));
        }
        if !(1..=MAX_ENTRIES).contains(&self.max_entries) {
            return Err(ConfigError::new(
                "revocation.max_entries",
                format!("must be between 1 and {MAX_ENTRIES}"),
            ));
        }
        if let Some(redis) = &self.redis {
            let url = url::Url::parse(&redis.url)
                .map_err(|e| ConfigError::new("revocation.redis.url", format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "redis" | "rediss") {
                return Err(ConfigError::new(
                    "revocation.redis.url",
                    "must be a redis:// or rediss:// URL",
                ));
            }
            if url.password().is_some() {
                return Err(ConfigError::new(
                    "revocation.redis.url",
                    "must not hold a password (it would show in logs): use password_file",
                ));
            }
            if redis.ca_file.is_some() && url.scheme() != "rediss" {
                // A CA bundle with a plain-text URL would read as TLS where there is none.
                return Err(ConfigError::new(
                    "revocation.redis.ca_file",
                    "needs a rediss:// url (TLS)",
                ));
            }
            if redis.channel.is_empty() || redis.key_prefix.is_empty() {
                return Err(ConfigError::new(
                    "revocation.redis",
                    "channel and key_prefix must not be empty",
                ));
            }
            if !(1..=1_000_000).contains(&redis.max_pending) {
                return Err(ConfigError::new(
                    "revocation.redis.max_pending",
                    "must be between 1 and 1000000",
                ));
            }
        }
        Ok(())
    }
}

impl BackchannelLogoutSettings {
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        if self.client_id.is_empty() {
            return Err(ConfigError::new(
                format!("{key}.backchannel_logout.client_id"),
                "must not be empty",
            ));
        }
        if self.max_age < Duration::from_secs(10) || self.max_age > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                format!("{key}.backchannel_logout.max_age"),
                "must be between 10s and 1h",
            ));
        }
        Ok(())
    }
}

const MAX_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
const MAX_ENTRIES: usize = 10_000_000;

/// Defaults of the keys of structs with required fields (the others have one `Default`).
mod defaults {
    use std::time::Duration;

    pub fn logout_max_age() -> Duration {
        Duration::from_secs(300)
    }
    pub fn channel() -> String {
        "tokengate:revocations".to_owned()
    }
    pub fn key_prefix() -> String {
        "tokengate:revocation:".to_owned()
    }
    pub fn max_pending() -> usize {
        10_000
    }
}
