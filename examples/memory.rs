//! Memory of the real binary: the verified-token cache and idle connections.
//!
//! ```sh
//! cargo build --release --bin tokengate --example memory
//! target/release/examples/memory cache --tokens 100000 --size 7168 [--max-bytes N] [--max-entries N]
//! target/release/examples/memory entry --count 200000 --size 1024
//! target/release/examples/memory connections --count 10000 [--waves 2]
//! target/release/examples/memory revocations --count 100000
//! ```
//!
//! It serves a JWKS with one Ed25519 key on loopback from the test kit's issuer (Ed25519
//! signs fast: 100 000 tokens take seconds), starts `tokengate` (next to this program, or `TOKENGATE_BIN`) with one
//! worker, and reads `VmRSS` from `/proc/<pid>/status`:
//! - `cache`: RSS before and after `--tokens` distinct valid tokens of about `--size`
//!   bytes, each sent once, and what the cache says it holds (`/metrics`). The tokens'
//!   bulk is a groups claim, which the identity keeps: the costliest kind of large token.
//! - `entry`: in this process, RSS growth per entry of the cache alone against what the
//!   cache counts for it (`entry_bytes`): how `ENTRY_OVERHEAD` was measured.
//! - `revocations`: in this process, RSS growth per entry of the revocation store (sid,
//!   jti and sub entries alike), loaded as the feed loads them, and what each verified
//!   token carries for the check.
//! - `connections`: RSS with `--count` idle connections open (first as plain connections,
//!   then each after one request, as a proxy's keep-alive pool holds them), and after they
//!   close; `--waves` times, to show whether closed connections' memory is reused.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures_util::stream::{self, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use testkit::issuer::{shared_key, sign_many, TestIssuer, AUDIENCE};
use testkit::process::{status_kib, wait_ready, Child, Launch};
use tokengate::demo::SigningKey;
use tokengate::verify::cache::unix_now;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The `iss` of every token: the JWKS comes from the test kit's issuer, named by
/// `jwks_uri`, so the tokens do not depend on its port.
const ISSUER: &str = "https://issuer.memory.test";

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Fill the verified-token cache.
    Cache {
        #[arg(long, default_value_t = 100_000)]
        tokens: usize,
        /// Approximate length of each token, in bytes.
        #[arg(long, default_value_t = 1024)]
        size: usize,
        /// `cache.max_bytes` (left out when not given: the default applies).
        #[arg(long)]
        max_bytes: Option<u64>,
        /// `cache.max_entries`.
        #[arg(long, default_value_t = 100_000)]
        max_entries: u64,
    },
    /// In this process: RSS growth per entry of the cache itself, against what the
    /// cache counts for it (`entry_bytes`); `--size 0` is the smallest identity.
    Entry {
        #[arg(long, default_value_t = 200_000)]
        count: usize,
        #[arg(long, default_value_t = 0)]
        size: usize,
    },
    /// In this process: RSS growth per revocation entry.
    Revocations {
        #[arg(long, default_value_t = 100_000)]
        count: usize,
    },
    /// Open idle connections, then close them.
    Connections {
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        #[arg(long, default_value_t = 2)]
        waves: usize,
    },
}

/// The binary, killed when dropped (the test kit's guard).
struct Tokengate {
    child: Child,
    auth: String,
    admin: String,
}

impl Tokengate {
    fn rss_kib(&self) -> u64 {
        status_kib(self.child.0.id(), "VmRSS")
    }

    fn hwm_kib(&self) -> u64 {
        status_kib(self.child.0.id(), "VmHWM")
    }
}

/// Claims of user `index`, with as many groups as make the signed token about `size`
/// bytes long (a short token has a few).
fn claims(issuer: &str, index: usize, size: usize) -> Value {
    let now = unix_now();
    let user = format!("user-{index:06}");
    let mut claims = json!({
        "iss": issuer, "sub": format!("f3b1c2d4-{index:08}-4e5f-9a0b-1c2d3e4f5a6b"),
        "aud": AUDIENCE, "iat": now, "exp": now + 3600, "jti": format!("jti-{index}"),
        "azp": "orders-web", "sid": format!("sid-{index:08}"),
        "scope": "openid profile email orders:read orders:write",
        "preferred_username": user, "email": format!("{user}@example.com"),
        "email_verified": true, "name": format!("User {index}"),
        "groups": [],
    });
    // Header and signature of an EdDSA at+jwt: about 150 bytes around the payload, which
    // base64url makes 4/3 as long.
    let mut length = 150 + claims.to_string().len() * 4 / 3;
    let groups = claims["groups"].as_array_mut().unwrap();
    for group in 0.. {
        if length >= size {
            break;
        }
        let name = format!("/tenants/acme/projects/project-{group:04}/developers");
        length += (name.len() + 3) * 4 / 3;
        groups.push(json!(name));
    }
    claims
}

async fn start(cache: &str, server: &str) -> (Tokengate, Arc<SigningKey>) {
    let key = shared_key(Algorithm::EdDSA, "mem");
    let issuer = TestIssuer::start_with_keys(vec![key.clone()]).await;
    let launch = Launch::new("memory");
    let config = format!(
        r#"
{listeners}
workers: 1
issuers:
  - issuer: {ISSUER}
    audiences: [{AUDIENCE}]
    algorithms: [EdDSA]
    jwks_uri: {jwks_uri}/jwks
log:
  format: json
  filter: warn
  allow_level: "off"
cache:
{cache}
server:
{server}
"#,
        listeners = launch.listeners(),
        jwks_uri = issuer.url(),
    );
    let binary = std::env::var_os("TOKENGATE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let me = std::env::current_exe().unwrap();
            me.parent().unwrap().parent().unwrap().join("tokengate")
        });
    let tokengate = Tokengate {
        child: launch.spawn(&binary, &config, Stdio::null(), Stdio::inherit()),
        auth: launch.url("/auth"),
        admin: launch.admin_url(""),
    };
    let readyz = format!("{}/readyz", tokengate.admin);
    assert!(
        wait_ready(&reqwest::Client::new(), &readyz).await,
        "tokengate did not become ready"
    );
    (tokengate, key)
}

/// Value of the first sample of `name` whose labels contain `labels`.
fn sample(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        if !rest.starts_with(['{', ' ']) || !rest.contains(labels) {
            return None;
        }
        rest.rsplit(' ').next()?.parse().ok()
    })
}

async fn cache(tokens: usize, size: usize, max_bytes: Option<u64>, max_entries: u64) {
    let mut cache = format!("  max_entries: {max_entries}\n");
    if let Some(max_bytes) = max_bytes {
        cache.push_str(&format!("  max_bytes: {max_bytes}\n"));
    }
    let (tokengate, key) = start(&cache, "  max_connections: 64").await;
    let started = std::time::Instant::now();
    let signed = sign_many(&key, tokens, |i| claims(ISSUER, i, size));
    let average = signed.iter().map(String::len).sum::<usize>() / signed.len().max(1);
    eprintln!(
        "signed {tokens} tokens of {average} bytes on average in {:.1}s",
        started.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::new();
    // A few requests first, so that the baseline includes the first request's one-time
    // allocations (worker buffers, the key's parsed form).
    for token in signed.iter().take(1) {
        let status = client.get(&tokengate.auth).bearer_auth(token).send().await;
        assert_eq!(status.unwrap().status(), 202);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = tokengate.rss_kib();
    let started = std::time::Instant::now();
    let allowed = stream::iter(signed.iter().skip(1))
        .map(|token| {
            let (client, auth) = (&client, &tokengate.auth);
            async move {
                let response = client.get(auth).bearer_auth(token).send().await.unwrap();
                response.status() == 202
            }
        })
        .buffer_unordered(16)
        .filter(|allowed| std::future::ready(*allowed))
        .count()
        .await;
    eprintln!(
        "sent {} tokens in {:.1}s: {allowed} allowed",
        tokens - 1,
        started.elapsed().as_secs_f64()
    );
    // Lets the cache's housekeeping run (it runs on reads and writes).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for token in signed.iter().take(200) {
        let _ = client.get(&tokengate.auth).bearer_auth(token).send().await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let filled = tokengate.rss_kib();
    let metrics = client
        .get(format!("{}/metrics", tokengate.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let evictions = sample(
        &metrics,
        "tokengate_cache_evictions_total",
        "cache=\"verified_token\"",
    )
    .unwrap_or(0.0);
    let entries = sample(
        &metrics,
        "tokengate_cache_entries",
        "cache=\"verified_token\"",
    );
    let bytes = sample(
        &metrics,
        "tokengate_cache_bytes",
        "cache=\"verified_token\"",
    );
    let growth = filled.saturating_sub(baseline) * 1024;
    let kept = entries.unwrap_or(tokens as f64 - evictions);
    println!(
        "cache: {tokens} tokens of {average} B, max_entries {max_entries}, max_bytes {}",
        max_bytes.map_or("default".to_owned(), |b| b.to_string())
    );
    println!(
        "  RSS {:.1} MiB -> {:.1} MiB (peak {:.1} MiB): +{:.1} MiB",
        baseline as f64 / 1024.0,
        filled as f64 / 1024.0,
        tokengate.hwm_kib() as f64 / 1024.0,
        growth as f64 / 1048576.0
    );
    println!(
        "  entries kept {kept:.0} (evictions {evictions:.0}); cache's own count of bytes {}",
        bytes.map_or("n/a".to_owned(), |b| format!("{:.1} MiB", b / 1048576.0))
    );
    println!(
        "  RSS growth per kept entry: {:.0} B{}",
        growth as f64 / kept.max(1.0),
        bytes.map_or(String::new(), |b| format!(
            "; weight per entry {:.0} B; RSS growth / weight {:.2}",
            b / kept.max(1.0),
            growth as f64 / b.max(1.0)
        ))
    );
}

fn entry(count: usize, size: usize) {
    use tokengate::config::IdentitySettings;
    use tokengate::identity::{Identity, IdentityMapping};
    use tokengate::verify::cache::{entry_bytes, token_hash, Budget, TokenCache, VerifiedToken};

    let mapping = IdentityMapping::new(&IdentitySettings::default()).unwrap();
    let cache = TokenCache::new(
        Budget {
            max_bytes: 1 << 40,
            max_entries: 10_000_000,
        },
        Duration::from_secs(3600),
        prometheus::IntCounter::new("evictions", "evictions").unwrap(),
    );
    let verified = |index: usize| {
        let identity = match size {
            0 => Identity::default(),
            _ => mapping.jwt_identity(Default::default(), &claims(ISSUER, index, size)),
        };
        Arc::new(VerifiedToken {
            issuer: tokengate::verify::issuer::IssuerId::next(),
            expires_at: unix_now() + 3600,
            key_generation: 0,
            identity,
            revocation: Default::default(),
        })
    };
    // Warm up: the first entries allocate the cache's fixed structures.
    for index in 0..1000 {
        cache.insert(token_hash(&format!("warm-{index}")), verified(index));
    }
    cache.run_pending_tasks();
    let before = status_kib(std::process::id(), "VmRSS");
    let mut counted = 0;
    for index in 0..count {
        let token = verified(index);
        // What a cache hit does first: slice a header value, which shares the buffer.
        let _ = token.identity.headers().next();
        counted += entry_bytes(&token);
        cache.insert(token_hash(&index.to_string()), token);
        if index % 1000 == 0 {
            cache.run_pending_tasks();
        }
    }
    cache.run_pending_tasks();
    let after = status_kib(std::process::id(), "VmRSS");
    let growth = (after.saturating_sub(before) * 1024) as f64 / count as f64;
    let counted = counted as f64 / count as f64;
    println!(
        "entry: {count} entries (identity of a {size}-byte token): RSS +{growth:.0} B per entry; entry_bytes {counted:.0} B; RSS / entry_bytes {:.2}; implied overhead {:.0} B (ENTRY_OVERHEAD is {})",
        growth / counted,
        growth - (counted - tokengate::verify::cache::ENTRY_OVERHEAD as f64),
        tokengate::verify::cache::ENTRY_OVERHEAD
    );
    println!("  entries: {}", cache.entry_count());
}

/// Opens a plain TCP connection; with `token`, sends one keep-alive request on it and
/// reads the answer's head (answers of `/auth` have empty bodies).
async fn open(address: &str, token: Option<&str>) -> TcpStream {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    if let Some(token) = token {
        let request = format!(
            "GET /auth HTTP/1.1\r\nHost: tokengate\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut buffer = [0u8; 512];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let read = stream.read(&mut buffer).await.unwrap();
            assert!(read > 0, "connection closed before the answer");
            head.extend_from_slice(&buffer[..read]);
        }
        assert!(head.starts_with(b"HTTP/1.1 202"), "not allowed");
    }
    stream
}

async fn connections(count: usize, waves: usize) {
    let server = format!("  max_connections: {}\n  keep_alive: 10m", count + 100);
    let (tokengate, key) = start("  max_entries: 1000", &server).await;
    let token = key.sign(&claims(ISSUER, 0, 1024));
    let address = tokengate
        .auth
        .trim_start_matches("http://")
        .trim_end_matches("/auth");
    let address = address.to_owned();
    drop(open(&address, Some(&token)).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = tokengate.rss_kib();
    println!(
        "connections: {count} at once, {waves} waves; baseline RSS {:.1} MiB",
        baseline as f64 / 1024.0
    );
    for wave in 1..=waves {
        for with_request in [false, true] {
            let mut open_ones = Vec::with_capacity(count);
            // In batches, so that the accept queue never overflows.
            while open_ones.len() < count {
                let batch = (count - open_ones.len()).min(256);
                let token = with_request.then_some(token.as_str());
                let address = &address;
                let opened: Vec<TcpStream> = stream::iter(0..batch)
                    .map(|_| open(address, token))
                    .buffer_unordered(64)
                    .collect()
                    .await;
                open_ones.extend(opened);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            let held = tokengate.rss_kib();
            drop(open_ones);
            tokio::time::sleep(Duration::from_secs(2)).await;
            let after = tokengate.rss_kib();
            let what = if with_request {
                "after one request"
            } else {
                "nothing sent"
            };
            println!(
                "  wave {wave}, {what}: open {:.1} MiB ({:.1} KiB per connection over the baseline); closed {:.1} MiB (+{:.1} MiB over the baseline)",
                held as f64 / 1024.0,
                held.saturating_sub(baseline) as f64 / count as f64,
                after as f64 / 1024.0,
                after.saturating_sub(baseline) as f64 / 1024.0
            );
        }
    }
}

/// RSS growth per entry of the revocation store.
fn revocations(count: usize) {
    use tokengate::revocation::{Event, Kind, Revocations};
    let settings = tokengate::config::RevocationSettings::default();
    let store = Revocations::new(&settings, tokengate::metrics::RevocationMetrics::detached()).0;
    let kinds = [Kind::Sid, Kind::Jti, Kind::Sub];
    let issuer = "https://sso.example.com/realms/main";
    // Values of the length real ones have (a UUID).
    let events: Vec<Event> = (0..count)
        .map(|index| {
            let value = format!("{index:08x}-0000-4000-8000-000000000000");
            Event::new(issuer, kinds[index % 3], &value)
        })
        .collect();
    let before = status_kib(std::process::id(), "VmRSS");
    store.load(&events);
    let after = status_kib(std::process::id(), "VmRSS");
    assert_eq!(store.len(), count);
    let growth = (after.saturating_sub(before) * 1024) as f64 / count as f64;
    println!(
        "revocations: {count} entries: RSS +{growth:.0} B per entry; each verified token carries {} B for the check",
        std::mem::size_of::<tokengate::revocation::RevocationKeys>()
    );
}

#[tokio::main]
async fn main() {
    match Args::parse().scenario {
        Scenario::Cache {
            tokens,
            size,
            max_bytes,
            max_entries,
        } => cache(tokens, size, max_bytes, max_entries).await,
        Scenario::Entry { count, size } => entry(count, size),
        Scenario::Connections { count, waves } => connections(count, waves).await,
        Scenario::Revocations { count } => revocations(count),
    }
}
