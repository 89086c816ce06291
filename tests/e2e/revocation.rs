//! Revocation across replicas: three real tokengate processes (the built binary) share a
//! real Redis (Debian's `redis-server`, on a free loopback port, without persistence),
//! with tokens and back-channel logouts from the real oidc-provider.
//!
//! Propagation times are printed, never asserted: the bounds below only tell a lost
//! event from a slow one.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::Value;
use testkit::process::{poll_until, scrape};
use testkit::tls::PrivateCa;

use crate::provider::OidcProvider;
use crate::support::{
    client, find_executable, free_address, start_with_retries, ChildKind, Process, ScratchDir,
    StartError,
};

/// Longer than any propagation we measured by orders of magnitude: past it an event is
/// lost, not slow.
const LOST: Duration = Duration::from_secs(5);
/// A reconnect waits for the feed's backoff (at most 5 s) and a reload.
const RECONNECTED: Duration = Duration::from_secs(20);
const ADMIN_SECRET: &str = "e2e-admin-secret-0123456789";

/// How redis-server starts.
const REDIS: ChildKind = ChildKind {
    name: "redis-server",
    own_group: true,
    timeout: Duration::from_secs(10),
    port_in_use: "Address already in use",
};

/// How a replica (the tokengate binary) starts: ready to listen once its admin listener
/// does.
const REPLICA: ChildKind = ChildKind {
    name: "tokengate",
    own_group: false,
    timeout: Duration::from_secs(20),
    port_in_use: "cannot listen",
};

/// Debian's redis-server, on a free loopback port, with no persistence: a restart starts
/// empty, as a cache-only Redis does.
struct Redis {
    process: Process,
    address: SocketAddr,
    binary: PathBuf,
    /// `requirepass`, when the server demands one.
    password: Option<String>,
    /// With TLS only (`rediss://`): its certificate, from a CA of its own.
    tls: Option<Arc<PrivateCa>>,
}

impl Redis {
    async fn start() -> Redis {
        Self::start_with_password(None).await
    }

    /// A server that refuses every command until `AUTH` with `password`, when given.
    async fn start_with_password(password: Option<&str>) -> Redis {
        Self::start_with(password, None).await
    }

    /// A server that speaks TLS only, with a certificate from a private CA.
    async fn start_with_tls() -> Redis {
        Self::start_with(None, Some(Arc::new(PrivateCa::for_loopback()))).await
    }

    async fn start_with(password: Option<&str>, tls: Option<Arc<PrivateCa>>) -> Redis {
        let binary = find_executable("redis-server", "REDIS_SERVER", &["/usr/bin/redis-server"]);
        let password = password.map(str::to_owned);
        let (process, address) = REDIS
            .start(|dir, address| {
                Self::command(&binary, dir, address, password.as_deref(), tls.as_deref())
            })
            .await;
        Redis {
            process,
            address,
            binary,
            password,
            tls,
        }
    }

    fn command(
        binary: &PathBuf,
        dir: &ScratchDir,
        address: SocketAddr,
        password: Option<&str>,
        tls: Option<&PrivateCa>,
    ) -> Command {
        let mut command = Command::new(binary);
        let port = address.port().to_string();
        command.args(["--bind", "127.0.0.1"]);
        match tls {
            Some(tls) => {
                command
                    .args([
                        "--port",
                        "0",
                        "--tls-port",
                        &port,
                        "--tls-auth-clients",
                        "no",
                    ])
                    .arg("--tls-cert-file")
                    .arg(dir.write("redis.crt", &tls.certificate_pem))
                    .arg("--tls-key-file")
                    .arg(dir.write("redis.key", &tls.key_pem))
                    .arg("--tls-ca-cert-file")
                    .arg(dir.write("ca.crt", &tls.ca_pem));
            }
            None => {
                command.args(["--port", &port]);
            }
        }
        command
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir.path);
        if let Some(password) = password {
            command.args(["--requirepass", password]);
        }
        command
    }

    fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{}/", self.address)
    }

    fn stop(&mut self) {
        self.process.kill();
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: its connections stay open and
    /// nothing answers, as in a partition that drops packets silently.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(signal)
            .arg(self.process.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} redis-server");
    }

    /// Starts again on the same port, empty.
    async fn restart(&mut self) {
        let dir = ScratchDir::new(REDIS.name);
        let command = Self::command(
            &self.binary,
            &dir,
            self.address,
            self.password.as_deref(),
            self.tls.as_deref(),
        );
        self.process = REDIS
            .spawn(command, dir, self.address)
            .await
            .unwrap_or_else(|error| panic!("redis-server did not restart: {}", error.message));
    }
}

/// One tokengate process: the real binary, trusting the provider, on the shared Redis.
struct Replica {
    process: Process,
    address: SocketAddr,
    admin: SocketAddr,
    /// One client, keeping its connections: a new one per request would measure TLS
    /// setup and connects, not propagation.
    http: reqwest::Client,
}

impl Replica {
    /// Starts a replica and waits until `/readyz` says ready (its first feed load done).
    async fn start(provider: &OidcProvider, redis: &Redis, address: Option<SocketAddr>) -> Replica {
        start_with_retries("tokengate", || async {
            let address = address.unwrap_or_else(free_address);
            let admin = free_address();
            let dir = ScratchDir::new("tokengate-replica");
            let secret = dir.write("admin-secret", &format!("{ADMIN_SECRET}\n"));
            let mut password = match &redis.password {
                Some(password) => {
                    let file = dir.write("redis-password", &format!("{password}\n"));
                    format!("    password_file: \"{}\"\n", file.display())
                }
                None => String::new(),
            };
            if let Some(tls) = &redis.tls {
                let file = dir.write("redis-ca.crt", &tls.ca_pem);
                password.push_str(&format!("    ca_file: \"{}\"\n", file.display()));
            }
            let config = dir.write(
                "tokengate.yaml",
                &format!(
                    r#"
listen: "{address}"
admin_listen: "{admin}"
workers: 1
proxy_headers: nginx
issuers:
  - issuer: "{issuer}"
    name: oidc-provider
    audiences: ["{audience}"]
    algorithms: [RS256]
    required_typ: at+jwt
    backchannel_logout:
      client_id: tokengate
revocation:
  admin_token_file: "{secret}"
  redis:
    url: "{redis}"
{password}log:
  format: json
  filter: info
shutdown:
  drain_delay: 0s
  grace: 1s
"#,
                    issuer = provider.issuer,
                    audience = crate::provider::JWT_RESOURCE,
                    secret = secret.display(),
                    redis = redis.url(),
                ),
            );
            let mut command = Command::new(env!("CARGO_BIN_EXE_tokengate"));
            command.arg("--config").arg(&config);
            let process = REPLICA.spawn(command, dir, admin).await?;
            // Both listeners are bound before the admin one serves.
            process.holds(address).map_err(|message| StartError {
                port_taken: true,
                message,
            })?;
            let replica = Replica {
                process,
                address,
                admin,
                http: client(),
            };
            replica.wait_ready().await;
            Ok(replica)
        })
        .await
    }

    async fn wait_ready(&self) {
        let ready = poll_until(RECONNECTED, Duration::from_millis(50), || self.ready()).await;
        assert!(ready, "replica not ready:\n{}", self.process.logs());
    }

    async fn ready(&self) -> bool {
        self.http
            .get(format!("http://{}/readyz", self.admin))
            .send()
            .await
            .is_ok_and(|response| response.status() == 200)
    }

    /// The status of `/auth` for `token`.
    async fn auth(&self, token: &str) -> u16 {
        self.http
            .get(format!("http://{}/auth", self.address))
            .bearer_auth(token)
            .send()
            .await
            .expect("auth request")
            .status()
            .as_u16()
    }

    /// An operator's revoke of one token, by `jti`.
    async fn revoke_jti(&self, issuer: &str, jti: &str) {
        let response = self
            .http
            .post(format!("http://{}/revocations", self.admin))
            .bearer_auth(ADMIN_SECRET)
            .json(&serde_json::json!({"issuer": issuer, "jti": jti}))
            .send()
            .await
            .expect("revoke request");
        assert_eq!(response.status(), 200, "{}", self.process.logs());
    }

    /// The same with the `tokengate revoke` subcommand, as an operator types it.
    fn revoke_jti_with_cli(&self, issuer: &str, jti: &str) {
        let secret = self
            .process
            .dir
            .write("cli-secret", &format!("{ADMIN_SECRET}\n"));
        let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
            .args(["revoke", "--admin", &format!("http://{}", self.admin)])
            .arg("--token-file")
            .arg(&secret)
            .args(["--issuer", issuer, "--jti", jti])
            .output()
            .expect("tokengate revoke runs");
        assert!(
            output.status.success(),
            "tokengate revoke: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// A gauge or counter without labels, from `/metrics` (-1 when absent).
    async fn metric(&self, name: &str) -> f64 {
        scrape(&self.http, &self.metrics_url(), name)
            .await
            .unwrap_or(-1.0)
    }

    fn metrics_url(&self) -> String {
        format!("http://{}/metrics", self.admin)
    }

    /// Waits until `token` is refused here; returns how long that took, or `None` past
    /// `bound`.
    async fn refused_within(
        &self,
        token: &str,
        started: Instant,
        bound: Duration,
    ) -> Option<Duration> {
        loop {
            if self.auth(token).await == 401 {
                return Some(started.elapsed());
            }
            if started.elapsed() > bound {
                return None;
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }

    /// `tokengate_revocation_events_total` for one source and result (-1 when absent).
    async fn events(&self, source: &str, result: &str) -> f64 {
        let series =
            format!("tokengate_revocation_events_total{{result=\"{result}\",source=\"{source}\"}}");
        scrape(&self.http, &self.metrics_url(), &series)
            .await
            .unwrap_or(-1.0)
    }

    async fn wait_metric(&self, name: &str, value: f64, bound: Duration) {
        let deadline = Instant::now() + bound;
        while self.metric(name).await != value {
            assert!(
                Instant::now() < deadline,
                "{name} never became {value}:\n{}",
                self.process.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The claims of a JWT, unverified (the test's own tokens).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).expect("base64url")).expect("JSON")
}

fn jti(token: &str) -> String {
    claims(token)["jti"].as_str().expect("a jti").to_owned()
}

async fn replicas(
    provider: &OidcProvider,
    redis: &Redis,
    first: Option<SocketAddr>,
) -> Vec<Replica> {
    let mut replicas = vec![Replica::start(provider, redis, first).await];
    for _ in 0..2 {
        replicas.push(Replica::start(provider, redis, None).await);
    }
    replicas
}

/// Asserts that every replica refuses `token` within `bound` (each timed from when it is
/// asked), naming the one that still lets it through.
async fn assert_refused_at_every_replica(replicas: &[Replica], token: &str, bound: Duration) {
    for (index, replica) in replicas.iter().enumerate() {
        let took = replica.refused_within(token, Instant::now(), bound).await;
        assert!(
            took.is_some(),
            "revocation lost at replica {index}:\n{}",
            replica.process.logs()
        );
    }
}

#[tokio::test]
async fn a_logout_at_the_provider_refuses_that_users_tokens_at_every_replica() {
    let first = free_address();
    let provider = OidcProvider::start_with_env(
        "e2e-1",
        vec![(
            "OP_BACKCHANNEL_LOGOUT_URI".to_owned(),
            format!("http://{first}/backchannel-logout"),
        )],
    )
    .await;
    let redis = Redis::start().await;
    let replicas = replicas(&provider, &redis, Some(first)).await;
    let alice = provider.jwt("alice", "read").await;
    let bob = provider.jwt("bob", "read").await;
    // What oidc-provider puts in its at+jwt access tokens decides what can be revoked:
    // no `sid`, so its logouts (which then carry only `sub`) revoke by subject and time.
    let alice_claims = claims(&alice);
    assert!(alice_claims.get("sid").is_none(), "{alice_claims}");
    assert_eq!(alice_claims["sub"], "alice");
    for replica in &replicas {
        assert_eq!(replica.auth(&alice).await, 202);
        assert_eq!(replica.auth(&bob).await, 202);
    }

    let started = Instant::now();
    provider.backchannel_logout("alice").await;
    for (index, replica) in replicas.iter().enumerate() {
        let took = replica.refused_within(&alice, started, LOST).await;
        let took = took.unwrap_or_else(|| panic!("alice still passes at replica {index}"));
        println!("logout at the provider -> alice refused at replica {index} after {took:?}");
    }
    for replica in &replicas {
        assert_eq!(replica.auth(&bob).await, 202);
    }
    // Logged in again after the logout (a later second: `iat` has whole seconds).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = provider.jwt("alice", "read").await;
    for replica in &replicas {
        assert_eq!(replica.auth(&again).await, 202);
    }
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

#[tokio::test]
async fn propagation_of_a_hundred_revocations_is_measured() {
    let provider = OidcProvider::start().await;
    let redis = Redis::start().await;
    let replicas = replicas(&provider, &redis, None).await;
    let mut tokens = Vec::new();
    for _ in 0..100 {
        tokens.push(provider.jwt("alice", "read").await);
    }
    let spare = provider.jwt("alice", "read").await;
    for token in tokens.iter().chain([&spare]) {
        for replica in &replicas {
            assert_eq!(replica.auth(token).await, 202);
        }
    }
    let mut lags = Vec::new();
    for (index, token) in tokens.iter().enumerate() {
        let at = &replicas[index % 3];
        let started = Instant::now();
        at.revoke_jti(&provider.issuer, &jti(token)).await;
        assert_eq!(at.auth(token).await, 401);
        for (other, replica) in replicas.iter().enumerate() {
            if other == index % 3 {
                continue;
            }
            let took = replica.refused_within(token, started, LOST).await;
            lags.push(took.unwrap_or_else(|| panic!("revocation {index} lost at replica {other}")));
        }
    }
    lags.sort();
    println!(
        "revocation propagation over {} events x 2 replicas (revoke call -> refused at another replica): p50 {:?}, p99 {:?}, max {:?}",
        tokens.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags[lags.len() - 1]
    );
    for replica in &replicas {
        assert_eq!(replica.auth(&spare).await, 202);
    }
    // Each replica took its own events from the revoke call and the others' from the
    // feed; its own never came back as feed events (they would skew the lag). A moment
    // for a late echo to show if there were one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (index, replica) in replicas.iter().enumerate() {
        let own = (0..tokens.len()).filter(|event| event % 3 == index).count() as f64;
        assert_eq!(
            replica.events("admin", "applied").await,
            own,
            "replica {index}"
        );
        assert_eq!(
            replica.events("feed", "applied").await,
            tokens.len() as f64 - own,
            "replica {index}: feed events are the other replicas' only"
        );
    }
}

#[tokio::test]
async fn a_replica_started_after_the_event_refuses_too() {
    let provider = OidcProvider::start().await;
    let redis = Redis::start().await;
    let first = Replica::start(&provider, &redis, None).await;
    let witness = Replica::start(&provider, &redis, None).await;
    let revoked = provider.jwt("alice", "read").await;
    let other = provider.jwt("alice", "read").await;
    first.revoke_jti_with_cli(&provider.issuer, &jti(&revoked));
    // The witness hears of it by the message that follows the key's write.
    assert!(witness
        .refused_within(&revoked, Instant::now(), LOST)
        .await
        .is_some());
    let late = Replica::start(&provider, &redis, None).await;
    assert_eq!(late.auth(&revoked).await, 401, "{}", late.process.logs());
    assert_eq!(late.auth(&other).await, 202);
}

#[tokio::test]
async fn redis_restarted_mid_run_loses_no_event_and_replicas_keep_serving() {
    let provider = OidcProvider::start().await;
    let mut redis = Redis::start().await;
    let replicas = replicas(&provider, &redis, None).await;
    let before = provider.jwt("alice", "read").await;
    let during = provider.jwt("alice", "read").await;
    let after = provider.jwt("alice", "read").await;
    let valid = provider.jwt("bob", "read").await;
    for replica in &replicas {
        for token in [&before, &during, &after, &valid] {
            assert_eq!(replica.auth(token).await, 202);
        }
    }
    replicas[0]
        .revoke_jti(&provider.issuer, &jti(&before))
        .await;
    assert_refused_at_every_replica(&replicas, &before, LOST).await;

    redis.stop();
    for replica in &replicas {
        replica
            .wait_metric("tokengate_revocation_feed_up", 0.0, RECONNECTED)
            .await;
    }
    // Redis down: every replica keeps serving, with the entries it holds, and stays ready.
    for replica in &replicas {
        assert_eq!(replica.auth(&valid).await, 202);
        assert_eq!(replica.auth(&before).await, 401);
        assert!(replica.ready().await);
    }
    // Accepted while Redis is down: applied at once where it was posted, shared later.
    replicas[1]
        .revoke_jti(&provider.issuer, &jti(&during))
        .await;
    assert_eq!(replicas[1].auth(&during).await, 401);

    redis.restart().await;
    let restarted = Instant::now();
    for (index, replica) in replicas.iter().enumerate() {
        let took = replica
            .refused_within(&during, restarted, RECONNECTED)
            .await;
        let took = took.unwrap_or_else(|| {
            panic!(
                "event from the outage lost at replica {index}:\n{}",
                replica.process.logs()
            )
        });
        println!("event from the outage refused at replica {index} {took:?} after the restart");
        replica
            .wait_metric("tokengate_revocation_feed_up", 1.0, RECONNECTED)
            .await;
    }
    replicas[2].revoke_jti(&provider.issuer, &jti(&after)).await;
    assert_refused_at_every_replica(&replicas, &after, LOST).await;
    for replica in &replicas {
        assert_eq!(replica.auth(&before).await, 401);
        assert_eq!(replica.auth(&valid).await, 202);
    }
}

/// A Redis that stops answering without closing its connections (SIGSTOP: a partition
/// that drops packets) is noticed by the subscriber's ping; replicas keep serving, and
/// when it answers again the feed is back and the event from meanwhile reaches everyone.
#[tokio::test]
async fn a_silent_redis_is_noticed_by_the_ping_and_the_feed_comes_back() {
    let provider = OidcProvider::start().await;
    let redis = Redis::start().await;
    let replicas = replicas(&provider, &redis, None).await;
    let during = provider.jwt("alice", "read").await;
    let valid = provider.jwt("bob", "read").await;
    for replica in &replicas {
        assert_eq!(replica.auth(&during).await, 202);
    }

    redis.signal("-STOP");
    for replica in &replicas {
        replica
            .wait_metric("tokengate_revocation_feed_up", 0.0, RECONNECTED)
            .await;
        assert_eq!(replica.auth(&valid).await, 202);
        assert!(replica.ready().await);
    }
    replicas[0]
        .revoke_jti(&provider.issuer, &jti(&during))
        .await;
    assert_eq!(replicas[0].auth(&during).await, 401);

    redis.signal("-CONT");
    let resumed = Instant::now();
    for (index, replica) in replicas.iter().enumerate() {
        replica
            .wait_metric("tokengate_revocation_feed_up", 1.0, RECONNECTED)
            .await;
        let took = replica.refused_within(&during, resumed, RECONNECTED).await;
        assert!(
            took.is_some(),
            "event from the silence lost at replica {index}:\n{}",
            replica.process.logs()
        );
        assert_eq!(replica.auth(&valid).await, 202);
    }
}

/// `rediss://` to a Redis behind a private CA, trusted through `ca_file` only: the feed
/// carries an event between replicas over TLS.
#[tokio::test]
async fn a_redis_behind_a_private_ca_carries_the_feed_over_tls() {
    let provider = OidcProvider::start().await;
    let redis = Redis::start_with_tls().await;
    // Ready means each replica made a TLS connection and loaded the feed once.
    let replicas = replicas(&provider, &redis, None).await;
    let token = provider.jwt("alice", "read").await;
    for replica in &replicas {
        assert_eq!(replica.auth(&token).await, 202);
        assert_eq!(replica.metric("tokengate_revocation_feed_up").await, 1.0);
    }
    replicas[0].revoke_jti(&provider.issuer, &jti(&token)).await;
    assert_refused_at_every_replica(&replicas, &token, LOST).await;
}

#[tokio::test]
async fn a_password_protected_redis_carries_the_feed() {
    let provider = OidcProvider::start().await;
    let redis = Redis::start_with_password(Some("e2e-redis-password-0123")).await;
    // Ready means each replica authenticated and loaded the feed once.
    let first = Replica::start(&provider, &redis, None).await;
    let second = Replica::start(&provider, &redis, None).await;
    let revoked = provider.jwt("alice", "read").await;
    let other = provider.jwt("alice", "read").await;
    assert_eq!(second.auth(&revoked).await, 202);
    first.revoke_jti(&provider.issuer, &jti(&revoked)).await;
    assert!(
        second
            .refused_within(&revoked, Instant::now(), LOST)
            .await
            .is_some(),
        "{}",
        second.process.logs()
    );
    assert_eq!(second.auth(&other).await, 202);
    assert_eq!(second.metric("tokengate_revocation_feed_up").await, 1.0);
}
