//! The soak's token issuer and load generator, in one program (benches/soak/run.sh;
//! what it measures and why is in docs/soak.md).
//!
//! ```text
//! soak_load --work DIR --out DIR --issuer 127.0.0.1:18500 --tokengate 127.0.0.1:18580 \
//!           --admin 127.0.0.1:18590 [--duration 600] [--outage 30] [--rotating 100000] ...
//! ```
//!
//! 1. Makes three RS256 keys (`soak-stable`, `soak-rot-1`, `soak-rot-2`) and pre-mints the
//!    tokens, on every core.
//! 2. Serves the test kit's issuer on `--issuer`: discovery, the JWKS and an RFC 7662
//!    introspection endpoint, on its own thread. The JWKS starts as {stable, rot-1}; at 35 %
//!    of the run rot-2 is added (new tokens are signed with it from then on), at 50 % rot-1
//!    is withdrawn; at 65 % the issuer stops answering for `--outage` seconds (it accepts
//!    connections and holds every request until the outage ends, as a hung IdP does).
//! 3. Writes `DIR/issuer.ready`, then waits for `DIR/tokengate.pid` (run.sh pins this
//!    process to its core and starts tokengate on the other) and for tokengate's `/readyz`.
//! 4. Sends the mix at fixed rates (open loop: requests are started on schedule, whatever
//!    the answers) and checks every answer against the status its class must get at the
//!    time it was sent. Every 10 s it writes one CSV row (tokengate's RSS and CPU from
//!    `/proc/<pid>`, requests and errors by class, p50/p99), and at the end a per-minute
//!    summary with the pass criteria; the exit status is 0 only when they all hold.
//!
//! Every loop is bounded in time and count, and a watchdog ends the process if the run
//! overstays. Only loopback addresses are accepted.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use clap::Parser;
use jsonwebtoken::Algorithm;
use reqwest::header::{HeaderValue, AUTHORIZATION};
use serde_json::{json, Value};
use testkit::issuer::{shared_key, sign_many, TestIssuer};
use testkit::process::poll_until;
use tokengate::demo::SigningKey;
use tokengate::verify::cache::unix_now;

const AUDIENCE: &str = "soak-api";
const CLIENT_ID: &str = "tokengate-soak";
/// tokengate's allow status on `/auth` (its default).
const ALLOWED: u16 = 202;
const DENIED: u16 = 401;
const NO_VERDICT: u16 = 503;
/// Seconds per CSV row.
const WINDOW_SECS: u64 = 10;
/// Requests in flight at most; beyond it a due request is counted as unsent, not queued.
const MAX_IN_FLIGHT: usize = 4096;
/// Whole-request timeout of the load client; longer than any wait tokengate may impose
/// (introspection 2 s, a JWKS fetch 5 s, queued behind one more).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Slack around the outage for introspection calls that straddle its edges: tokengate's
/// introspection timeout (2 s) and one second more.
const OUTAGE_EDGE_SECS: f64 = 3.0;
/// Opaque tokens: the issuer answers `active: true` for this prefix, `active: false`
/// for anything else. The issuer and its clients are one program, so a prefix stands in
/// for the issuer's token store.
const ACTIVE_OPAQUE: &str = "soakop-a-";

#[derive(Parser, Debug)]
#[command(about = "tokengate soak: token issuer and load generator (benches/soak/run.sh)")]
struct Args {
    /// Handshake files: issuer.ready is written, tokengate.pid is waited for.
    #[arg(long)]
    work: PathBuf,
    /// Where soak.csv, summary.md, timeline.env and errors.log go.
    #[arg(long)]
    out: PathBuf,
    /// Address the issuer listens on (loopback only).
    #[arg(long)]
    issuer: SocketAddr,
    /// tokengate's auth listener.
    #[arg(long)]
    tokengate: SocketAddr,
    /// tokengate's admin listener (for /readyz).
    #[arg(long)]
    admin: SocketAddr,
    /// The introspection client secret tokengate presents (client id `tokengate-soak`).
    #[arg(long)]
    client_secret: String,
    /// Seconds of load.
    #[arg(long, default_value_t = 600)]
    duration: u64,
    /// Seconds the issuer stops answering.
    #[arg(long, default_value_t = 30)]
    outage: u64,
    /// Distinct pre-minted tokens sent round-robin.
    #[arg(long, default_value_t = 100_000)]
    rotating: usize,
    /// New tokens minted (and each sent once) per second during the run.
    #[arg(long, default_value_t = 50.0)]
    new_rate: f64,
    /// Most connections to tokengate at once, like a proxy's upstream pool (0: as many as
    /// there are requests in flight). A request waits for a free one, and the wait counts
    /// in its latency.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Multiplies the rate of every other class (see `Class::rate`).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// tokengate's `keys.refresh_interval` in seconds: a withdrawn key must be refused
    /// within it (plus 5 s) of its withdrawal.
    #[arg(long, default_value_t = 30)]
    refresh_interval: u64,
    /// Clock ticks per second of /proc/<pid>/stat (`getconf CLK_TCK`).
    #[arg(long, default_value_t = 100)]
    clk_tck: u64,
}

/// The kinds of request in the mix, each with the status it must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    /// A few valid tokens sent over and over: verified-token cache hits.
    Cached,
    /// `--rotating` distinct valid tokens round-robin: a large cached working set, re-verified
    /// whenever an entry reaches `cache.max_ttl`.
    Rotating,
    /// Minted during the run and sent once: cache misses, signed with the newest key.
    New,
    /// Valid tokens signed with the key that is withdrawn: allowed until tokengate sees the
    /// withdrawal, refused after.
    OldKey,
    /// A valid token with one signature character changed.
    BadSignature,
    /// Signed by a published key, `exp` an hour ago.
    Expired,
    /// JWT-shaped junk: undecodable segments, `alg: none`, a payload that is not JSON.
    Garbage,
    /// A fresh active opaque token per request: always an introspection call.
    OpaqueNew,
    /// A few active opaque tokens sent over and over: introspection cache hits.
    OpaqueCached,
    /// A fresh opaque token the issuer says is inactive.
    OpaqueInactive,
}

const CLASSES: [Class; 10] = [
    Class::Cached,
    Class::Rotating,
    Class::New,
    Class::OldKey,
    Class::BadSignature,
    Class::Expired,
    Class::Garbage,
    Class::OpaqueNew,
    Class::OpaqueCached,
    Class::OpaqueInactive,
];

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Cached => "cached",
            Class::Rotating => "rotating",
            Class::New => "new",
            Class::OldKey => "old_key",
            Class::BadSignature => "bad_signature",
            Class::Expired => "expired",
            Class::Garbage => "garbage",
            Class::OpaqueNew => "opaque_new",
            Class::OpaqueCached => "opaque_cached",
            Class::OpaqueInactive => "opaque_inactive",
        }
    }

    /// Requests per second at `--scale 1` (the `new` class has its own `--new-rate`).
    fn rate(self) -> f64 {
        match self {
            Class::Cached => 2000.0,
            Class::Rotating => 2000.0,
            Class::New => 0.0,
            Class::OldKey => 5.0,
            Class::BadSignature => 100.0,
            Class::Expired => 50.0,
            Class::Garbage => 100.0,
            Class::OpaqueNew => 100.0,
            Class::OpaqueCached => 200.0,
            Class::OpaqueInactive => 50.0,
        }
    }

    fn index(self) -> usize {
        CLASSES.iter().position(|class| *class == self).unwrap_or(0)
    }

    /// What the status means for this class, for a request sent `sent` seconds into the run.
    fn judge(self, timeline: &Timeline, sent: f64, status: u16) -> Verdict {
        let must = |expected: u16| {
            if status == expected {
                Verdict::Expected
            } else {
                Verdict::Wrong
            }
        };
        match self {
            Class::Cached | Class::Rotating | Class::New => must(ALLOWED),
            Class::BadSignature | Class::Expired | Class::Garbage => must(DENIED),
            Class::OldKey => {
                if sent < timeline.withdraw {
                    must(ALLOWED)
                } else if sent < timeline.withdrawal_deadline() {
                    // Published no more, but tokengate has not refetched yet.
                    if status == ALLOWED || status == DENIED {
                        Verdict::Expected
                    } else {
                        Verdict::Wrong
                    }
                } else {
                    must(DENIED)
                }
            }
            Class::OpaqueNew | Class::OpaqueInactive => {
                let normal = if self == Class::OpaqueNew {
                    ALLOWED
                } else {
                    DENIED
                };
                match (timeline.outage_at(sent), status) {
                    (Outage::Outside, _) => must(normal),
                    (Outage::Edge | Outage::Inside, NO_VERDICT) => Verdict::Outage503,
                    (Outage::Edge, _) => must(normal),
                    // No answer can come from the issuer now: any verdict but 503 was
                    // made without it.
                    (Outage::Inside, _) => Verdict::Wrong,
                }
            }
            Class::OpaqueCached => match (timeline.outage_at(sent), status) {
                (Outage::Edge | Outage::Inside, NO_VERDICT) => Verdict::Outage503,
                _ => must(ALLOWED),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    Expected,
    /// A 503 for a token that needs the issuer, sent while the issuer did not answer.
    Outage503,
    Wrong,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outage {
    Outside,
    /// Within `OUTAGE_EDGE_SECS` of its start or end: an answer or a 503.
    Edge,
    Inside,
}

/// When things happen, in seconds from the start of the load.
struct Timeline {
    start: OnceLock<Instant>,
    duration: f64,
    rotate_add: f64,
    withdraw: f64,
    outage_start: f64,
    outage_end: f64,
    refresh_interval: f64,
    /// The issuer, which knows when it first served each JWKS.
    issuer: Arc<TestIssuer>,
}

impl Timeline {
    fn new(duration: u64, outage: u64, refresh_interval: u64, issuer: Arc<TestIssuer>) -> Self {
        let duration = duration as f64;
        let outage_start = (0.65 * duration).round();
        Self {
            start: OnceLock::new(),
            duration,
            rotate_add: (0.35 * duration).round(),
            withdraw: (0.5 * duration).round(),
            outage_start,
            outage_end: (outage_start + outage as f64).min(duration),
            refresh_interval: refresh_interval as f64,
            issuer,
        }
    }

    /// Seconds since the load started; `None` before.
    fn now(&self) -> Option<f64> {
        self.start.get().map(|start| start.elapsed().as_secs_f64())
    }

    fn outage_at(&self, t: f64) -> Outage {
        if t < self.outage_start - OUTAGE_EDGE_SECS || t >= self.outage_end + OUTAGE_EDGE_SECS {
            Outage::Outside
        } else if t >= self.outage_start && t < self.outage_end - OUTAGE_EDGE_SECS {
            Outage::Inside
        } else {
            Outage::Edge
        }
    }

    /// When the issuer first served this JWKS generation, in seconds from the start.
    fn served(&self, generation: usize) -> Option<f64> {
        let start = self.start.get()?;
        let served = self.issuer.first_served(generation)?;
        Some(served.saturating_duration_since(*start).as_secs_f64())
    }

    /// From when a token of the withdrawn key must be refused: a second after tokengate
    /// fetched the JWKS without it, and at the latest one refresh interval (plus 5 s) after
    /// the withdrawal.
    fn withdrawal_deadline(&self) -> f64 {
        let latest = self.withdraw + self.refresh_interval + 5.0;
        self.served(WITHDRAWN_JWKS)
            .map_or(latest, |seen| (seen + 1.0).min(latest))
    }

    fn events(&self) -> String {
        format!(
            "ROTATE_ADD={}\nWITHDRAW={}\nOUTAGE_START={}\nOUTAGE_END={}\nDURATION={}\n",
            self.rotate_add, self.withdraw, self.outage_start, self.outage_end, self.duration
        )
    }
}

// ---------------------------------------------------------------------------------------
// The issuer.

/// The JWKS generations the issuer serves: {stable, rot-1} from the start, then with
/// rot-2 added, then with rot-1 withdrawn (each `publish` makes the next).
const ADDED_JWKS: usize = 1;
const WITHDRAWN_JWKS: usize = 2;

/// Starts the test kit's issuer on `listener`, on its own thread (a runtime of its own,
/// one worker), publishing {stable, rot-1}; opaque tokens with the [`ACTIVE_OPAQUE`] prefix
/// introspect as active, any other as inactive.
fn start_issuer(
    listener: std::net::TcpListener,
    keys: Vec<Arc<SigningKey>>,
    client_secret: &str,
) -> Arc<TestIssuer> {
    let (started, issuer) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let issuer = Arc::new(TestIssuer::start_on(listener, keys));
            let _ = started.send(issuer);
            std::future::pending::<()>().await
        })
    });
    let issuer = issuer.recv().expect("the issuer starts");
    issuer.set_client(CLIENT_ID, client_secret);
    let url = issuer.url().to_owned();
    issuer.set_answer_rule(move |token| {
        let now = unix_now();
        token.starts_with(ACTIVE_OPAQUE).then(|| {
            json!({
                "active": true,
                "iss": url,
                "sub": "soak-opaque-user",
                "aud": AUDIENCE,
                "iat": now,
                "exp": now + 600,
                "client_id": "soak-client",
                "scope": "read",
                "token_type": "Bearer",
                "username": "opaque-user",
                "email": "opaque-user@example.com",
                "groups": ["developers"],
            })
        })
    });
    issuer
}

/// Changes the issuer on the timeline: rot-2 added, rot-1 withdrawn, then the outage,
/// during which it holds every request until the outage ends.
async fn drive_issuer(timeline: Arc<Timeline>, keys: [Arc<SigningKey>; 3]) {
    let Some(start) = timeline.start.get().copied() else {
        return;
    };
    let at = |t: f64| tokio::time::sleep_until((start + Duration::from_secs_f64(t)).into());
    let [stable, old, new] = keys;
    at(timeline.rotate_add).await;
    let added = timeline
        .issuer
        .publish(vec![stable.clone(), old, new.clone()]);
    at(timeline.withdraw).await;
    let withdrawn = timeline.issuer.publish(vec![stable, new]);
    debug_assert_eq!((added, withdrawn), (ADDED_JWKS, WITHDRAWN_JWKS));
    at(timeline.outage_start).await;
    timeline
        .issuer
        .hold_until(start + Duration::from_secs_f64(timeline.outage_end));
}

// ---------------------------------------------------------------------------------------
// Tokens.

/// xorshift64*: enough to make junk and distinct opaque tokens.
struct Rng(u64);

impl Rng {
    fn seeded(salt: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |elapsed| elapsed.as_nanos() as u64);
        Rng((nanos ^ salt.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn base64url(&mut self, bytes: usize) -> String {
        let raw: Vec<u8> = (0..bytes).map(|_| self.next() as u8).collect();
        URL_SAFE_NO_PAD.encode(raw)
    }
}

fn claims(issuer: &str, user: &str, jti: &str, iat: u64, exp: u64) -> Value {
    json!({
        "iss": issuer,
        "sub": format!("soak-{user}"),
        "aud": AUDIENCE,
        "iat": iat,
        "nbf": iat,
        "exp": exp,
        "jti": jti,
        "scope": "read",
        "preferred_username": user,
        "email": format!("{user}@example.com"),
        "groups": ["developers", "ops"],
    })
}

fn bearer(token: &str) -> HeaderValue {
    HeaderValue::from_str(&format!("Bearer {token}")).expect("tokens are header-safe")
}

/// One changed character in the middle of the signature.
fn break_signature(token: &str) -> String {
    let at = token.rfind('.').expect("a JWT") + 10;
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ASCII")
}

/// The pre-minted tokens of each class.
struct Tokens {
    cached: Vec<HeaderValue>,
    rotating: Vec<HeaderValue>,
    old_key: Vec<HeaderValue>,
    bad_signature: Vec<HeaderValue>,
    expired: Vec<HeaderValue>,
    garbage: Vec<HeaderValue>,
    opaque_cached: Vec<HeaderValue>,
}

fn mint_tokens(
    issuer: &str,
    stable: &SigningKey,
    old: &SigningKey,
    rotating: usize,
    duration: u64,
) -> Tokens {
    let now = unix_now();
    // Valid for the whole run and the set-up around it.
    let exp = now + duration + 3600;
    let valid = |prefix: &'static str| {
        move |i: usize| {
            let user = format!("{prefix}{i}");
            claims(issuer, &user, &format!("{prefix}-{i}"), now - 60, exp)
        }
    };
    let started = Instant::now();
    let rotating: Vec<HeaderValue> = sign_many(stable, rotating, valid("user"))
        .iter()
        .map(|token| bearer(token))
        .collect();
    eprintln!(
        "soak_load: {} rotating tokens minted in {:.1}s",
        rotating.len(),
        started.elapsed().as_secs_f64()
    );
    let cached = sign_many(stable, 4, valid("cached"));
    let old_key = sign_many(old, 8, valid("oldkey"));
    let bad_signature: Vec<String> = sign_many(stable, 16, valid("forged"))
        .iter()
        .map(|token| break_signature(token))
        .collect();
    let expired = sign_many(stable, 8, |i| {
        let user = format!("expired{i}");
        claims(issuer, &user, &user, now - 7200, now - 3600)
    });
    let mut rng = Rng::seeded(1);
    let mut garbage = Vec::new();
    for i in 0..16 {
        let token = match i % 3 {
            // Segments that decode to nothing.
            0 => format!(
                "{}.{}.{}",
                rng.base64url(12),
                rng.base64url(120),
                rng.base64url(256)
            ),
            // Unsigned (RFC 7519 §6): the classic `alg: none` forgery.
            1 => format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"at+jwt"}"#),
                URL_SAFE_NO_PAD.encode(valid("none")(i).to_string()),
                rng.base64url(32)
            ),
            // A good header over a payload that is not JSON.
            _ => format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(
                    json!({"alg": "RS256", "typ": "at+jwt", "kid": stable.kid}).to_string()
                ),
                URL_SAFE_NO_PAD.encode(format!("not json {}", rng.next())),
                rng.base64url(256)
            ),
        };
        garbage.push(token);
    }
    let opaque_cached: Vec<String> = (0..4)
        .map(|i| format!("{ACTIVE_OPAQUE}cached-{i}-{}", rng.base64url(16)))
        .collect();
    let headers = |tokens: &[String]| tokens.iter().map(|token| bearer(token)).collect();
    Tokens {
        cached: headers(&cached),
        rotating,
        old_key: headers(&old_key),
        bad_signature: headers(&bad_signature),
        expired: headers(&expired),
        garbage: headers(&garbage),
        opaque_cached: headers(&opaque_cached),
    }
}

// ---------------------------------------------------------------------------------------
// Statistics.

#[derive(Default)]
struct Window {
    requests: [u64; CLASSES.len()],
    errors: [u64; CLASSES.len()],
    outage_503: [u64; CLASSES.len()],
    /// Latency of every answer, in microseconds.
    latencies: Vec<u32>,
}

#[derive(Default)]
struct Minute {
    requests: u64,
    errors: u64,
    outage_503: u64,
    latencies: Vec<u32>,
    rss_max_kib: u64,
    cpu_ticks: u64,
    sockets_max: u64,
    /// Milliseconds tokengate and the load generator waited for their cores.
    tg_wait_ms: f64,
    load_wait_ms: f64,
    lag_max_ms: f64,
}

struct Stats {
    window: Window,
    minutes: Vec<Minute>,
    totals: [u64; CLASSES.len()],
    total_errors: [u64; CLASSES.len()],
    total_outage_503: [u64; CLASSES.len()],
    /// Wrong answers by class and status (0: no answer).
    wrong: BTreeMap<(Class, u16), u64>,
    /// The first wrong answers, for errors.log.
    error_lines: Vec<String>,
    /// Latency of the first answer to a token of the added key (microseconds).
    first_new_key_answer: Option<(f64, u16, u32)>,
    /// When the first refusal of the withdrawn key's tokens was sent.
    first_old_key_refusal: Option<f64>,
}

impl Stats {
    fn record(&mut self, class: Class, sent: f64, status: u16, micros: u32, verdict: Verdict) {
        let c = class.index();
        let window = &mut self.window;
        window.requests[c] += 1;
        window.latencies.push(micros);
        self.totals[c] += 1;
        match verdict {
            Verdict::Expected => {}
            Verdict::Outage503 => {
                window.outage_503[c] += 1;
                self.total_outage_503[c] += 1;
            }
            Verdict::Wrong => {
                window.errors[c] += 1;
                self.total_errors[c] += 1;
                *self.wrong.entry((class, status)).or_default() += 1;
                if self.error_lines.len() < 200 {
                    self.error_lines.push(format!(
                        "t={sent:.3}s class={} status={status} latency_us={micros}",
                        class.name()
                    ));
                }
            }
        }
        if class == Class::OldKey && status == DENIED && self.first_old_key_refusal.is_none() {
            self.first_old_key_refusal = Some(sent);
        }
    }
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    f64::from(sorted[rank - 1]) / 1000.0
}

/// utime + stime of the whole process (every thread), in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: the
    // first is field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let fields: Vec<&str> = stat.get(stat.rfind(')')? + 2..)?.split(' ').collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Nanoseconds the threads of a process spent runnable but waiting for a CPU (the second
/// field of /proc/<pid>/task/<tid>/schedstat), summed: time another process had its core.
fn run_queue_wait_ns(pid: &str) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|line| line.split(' ').nth(1)?.trim().parse::<u64>().ok())
        .sum()
}

/// Open sockets of a process: its listeners, the proxies' (here the load's) connections
/// and its own connections to the issuer.
fn sockets(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |fds| {
        fds.filter_map(Result::ok)
            .filter(|fd| {
                std::fs::read_link(fd.path())
                    .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            })
            .count() as u64
    })
}

/// Steal time of every CPU (the hypervisor ran someone else), in clock ticks.
fn steal_ticks() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| {
            let line = stat.lines().find(|line| line.starts_with("cpu "))?;
            line.split_whitespace().nth(8)?.parse().ok()
        })
        .unwrap_or_default()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------------------
// The run.

struct Load {
    client: reqwest::Client,
    url: String,
    timeline: Arc<Timeline>,
    stats: Mutex<Stats>,
    in_flight: AtomicUsize,
    /// One permit per connection to tokengate, unless unbounded.
    connections: Option<tokio::sync::Semaphore>,
    unsent: AtomicU64,
    /// Largest lateness of the schedule's 1 ms tick in the window, in microseconds: the
    /// load generator's own stalls.
    lag_max_us: AtomicU64,
    /// Set when tokengate is gone: the schedule stops.
    aborted: AtomicBool,
}

impl Load {
    /// Sends one request in a task of its own; `first_of_new_key` marks the first token of
    /// the added key, whose answer (and latency: it carries an unknown `kid`) is reported.
    fn send(self: &Arc<Self>, class: Class, token: HeaderValue, first_of_new_key: bool) {
        if self.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            self.unsent.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let load = self.clone();
        tokio::spawn(async move {
            // Latency counts from here: time spent waiting for a connection is part of it.
            let started = Instant::now();
            let _connection = match &load.connections {
                Some(connections) => connections.acquire().await.ok(),
                None => None,
            };
            let sent = load.timeline.now().unwrap_or_default();
            let answer = load
                .client
                .get(&load.url)
                .header(AUTHORIZATION, token)
                .send()
                .await;
            let status = match answer {
                Ok(response) => {
                    let status = response.status().as_u16();
                    match response.bytes().await {
                        Ok(_) => status,
                        Err(_) => 0,
                    }
                }
                Err(_) => 0,
            };
            let micros = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
            let verdict = class.judge(&load.timeline, sent, status);
            {
                let mut stats = load.stats.lock().unwrap_or_else(|e| e.into_inner());
                stats.record(class, sent, status, micros, verdict);
                if first_of_new_key {
                    stats.first_new_key_answer = Some((sent, status, micros));
                }
            }
            load.in_flight.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Starts every scheduled request on time, one tick a millisecond, until the end.
async fn schedule(load: Arc<Load>, tokens: Arc<Tokens>, scale: f64) {
    let mut sent = [0u64; CLASSES.len()];
    let mut rng = Rng::seeded(2);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ticks = (load.timeline.duration * 1000.0) as u64 + 1;
    for _ in 0..ticks {
        let due = tick.tick().await;
        let late = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
        load.lag_max_us.fetch_max(late, Ordering::Relaxed);
        let Some(t) = load.timeline.now() else { break };
        if t >= load.timeline.duration || load.aborted.load(Ordering::Relaxed) {
            break;
        }
        for class in CLASSES {
            if class == Class::New {
                continue; // sent by the minting thread
            }
            let c = class.index();
            let due = (t * class.rate() * scale) as u64;
            while sent[c] < due {
                let n = sent[c] as usize;
                sent[c] += 1;
                let token = match class {
                    Class::Cached => tokens.cached[n % tokens.cached.len()].clone(),
                    Class::Rotating => tokens.rotating[n % tokens.rotating.len()].clone(),
                    Class::OldKey => tokens.old_key[n % tokens.old_key.len()].clone(),
                    Class::BadSignature => {
                        tokens.bad_signature[n % tokens.bad_signature.len()].clone()
                    }
                    Class::Expired => tokens.expired[n % tokens.expired.len()].clone(),
                    Class::Garbage => tokens.garbage[n % tokens.garbage.len()].clone(),
                    Class::OpaqueCached => {
                        tokens.opaque_cached[n % tokens.opaque_cached.len()].clone()
                    }
                    Class::OpaqueNew => {
                        bearer(&format!("{ACTIVE_OPAQUE}{n}-{}", rng.base64url(24)))
                    }
                    Class::OpaqueInactive => bearer(&format!("soakop-x-{n}-{}", rng.base64url(24))),
                    Class::New => break,
                };
                load.send(class, token, false);
            }
        }
    }
}

/// Mints new tokens at `rate` per second on a thread of its own (RS256 signing takes about
/// a millisecond), each sent once as soon as it is signed: with the first rotating key
/// until the second is published, with the second after.
fn mint_new(
    load: Arc<Load>,
    runtime: tokio::runtime::Handle,
    issuer: String,
    old: Arc<SigningKey>,
    new: Arc<SigningKey>,
    rate: f64,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if rate <= 0.0 {
            return;
        }
        let timeline = load.timeline.clone();
        let Some(start) = timeline.start.get().copied() else {
            return;
        };
        let count = (timeline.duration * rate) as u64;
        let mut new_key_used = false;
        for i in 0..count {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let t = start.elapsed().as_secs_f64();
            if t >= timeline.duration || load.aborted.load(Ordering::Relaxed) {
                break;
            }
            let with_new_key = t >= timeline.rotate_add;
            let key = if with_new_key { &new } else { &old };
            let first_of_new_key = with_new_key && !new_key_used;
            new_key_used |= with_new_key;
            let now = unix_now();
            let user = format!("new{i}");
            let token = key.sign(&claims(&issuer, &user, &user, now, now + 900));
            let load = load.clone();
            runtime.spawn(async move { load.send(Class::New, bearer(&token), first_of_new_key) });
        }
    })
}

/// One CSV row every `WINDOW_SECS`, with tokengate's RSS and CPU.
struct Sampler {
    pid: u32,
    clk_tck: u64,
    csv: std::io::BufWriter<std::fs::File>,
    last_ticks: u64,
    last_jwks: u64,
    last_introspections: u64,
    last_tg_wait_ns: u64,
    last_load_wait_ns: u64,
    last_steal: u64,
}

impl Sampler {
    fn header(&mut self) -> std::io::Result<()> {
        let mut line = String::from(
            "time_s,rss_mib,cpu_us_per_req,requests,rps,errors,outage_503,p50_ms,p99_ms,max_ms,unsent,issuer_jwks,issuer_introspections,tg_sockets,tg_runq_wait_ms,load_runq_wait_ms,steal_ms,load_lag_max_ms",
        );
        for class in CLASSES {
            let _ = write!(line, ",{0}_req,{0}_err", class.name());
        }
        writeln!(self.csv, "{line}")
    }

    /// Closes the window that ended at `t` seconds.
    fn sample(
        &mut self,
        load: &Load,
        issuer: &TestIssuer,
        window_start: f64,
        t: f64,
    ) -> std::io::Result<bool> {
        let (Some(ticks), Some(rss)) = (cpu_ticks(self.pid), rss_kib(self.pid)) else {
            return Ok(false);
        };
        let jwks = issuer.jwks_fetches() as u64;
        let introspections = issuer.introspection_calls() as u64;
        let unsent = load.unsent.swap(0, Ordering::Relaxed);
        let tg_sockets = sockets(self.pid);
        let tg_wait = run_queue_wait_ns(&self.pid.to_string());
        let load_wait = run_queue_wait_ns("self");
        let steal = steal_ticks();
        let lag_ms = load.lag_max_us.swap(0, Ordering::Relaxed) as f64 / 1000.0;
        let mut stats = load.stats.lock().unwrap_or_else(|e| e.into_inner());
        let mut window = std::mem::take(&mut stats.window);
        window.latencies.sort_unstable();
        let requests: u64 = window.requests.iter().sum();
        let errors: u64 = window.errors.iter().sum();
        let outage_503: u64 = window.outage_503.iter().sum();
        let delta_ticks = ticks - self.last_ticks;
        let cpu_us = if requests > 0 {
            delta_ticks as f64 * 1e6 / self.clk_tck as f64 / requests as f64
        } else {
            f64::NAN
        };
        let (p50, p99) = (
            percentile(&window.latencies, 0.50),
            percentile(&window.latencies, 0.99),
        );
        let max = percentile(&window.latencies, 1.0);
        let mut line = format!(
            "{t:.0},{:.1},{cpu_us:.2},{requests},{:.0},{errors},{outage_503},{p50:.3},{p99:.3},{max:.3},{unsent},{},{},{tg_sockets},{:.1},{:.1},{:.0},{lag_ms:.1}",
            rss as f64 / 1024.0,
            requests as f64 / (t - window_start).max(1.0),
            jwks - self.last_jwks,
            introspections - self.last_introspections,
            tg_wait.saturating_sub(self.last_tg_wait_ns) as f64 / 1e6,
            load_wait.saturating_sub(self.last_load_wait_ns) as f64 / 1e6,
            steal.saturating_sub(self.last_steal) as f64 * 1000.0 / self.clk_tck as f64,
        );
        for c in 0..CLASSES.len() {
            let _ = write!(line, ",{},{}", window.requests[c], window.errors[c]);
        }
        writeln!(self.csv, "{line}")?;
        self.csv.flush()?;
        eprintln!(
            "soak_load: t={t:>4.0}s rss={:.1}MiB cpu={cpu_us:.1}us/req {:.0}req/s p50={p50:.2}ms p99={p99:.2}ms errors={errors} outage503={outage_503} sockets={tg_sockets} lag={lag_ms:.0}ms",
            rss as f64 / 1024.0,
            requests as f64 / (t - window_start).max(1.0),
        );

        let minute_index = (window_start / 60.0) as usize;
        if stats.minutes.len() <= minute_index {
            stats.minutes.resize_with(minute_index + 1, Minute::default);
        }
        let minute = &mut stats.minutes[minute_index];
        minute.requests += requests;
        minute.errors += errors;
        minute.outage_503 += outage_503;
        minute.rss_max_kib = minute.rss_max_kib.max(rss);
        minute.cpu_ticks += delta_ticks;
        minute.sockets_max = minute.sockets_max.max(tg_sockets);
        minute.tg_wait_ms += tg_wait.saturating_sub(self.last_tg_wait_ns) as f64 / 1e6;
        minute.load_wait_ms += load_wait.saturating_sub(self.last_load_wait_ns) as f64 / 1e6;
        minute.lag_max_ms = minute.lag_max_ms.max(lag_ms);
        minute.latencies.extend_from_slice(&window.latencies);
        self.last_ticks = ticks;
        self.last_jwks = jwks;
        self.last_introspections = introspections;
        self.last_tg_wait_ns = tg_wait;
        self.last_load_wait_ns = load_wait;
        self.last_steal = steal;
        Ok(true)
    }
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() >= deadline {
            eprintln!("soak_load: gave up waiting for {what} after {limit:?}");
            std::process::exit(2);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn main() {
    let args = Args::parse();
    for address in [args.issuer, args.tokengate, args.admin] {
        if !address.ip().is_loopback() {
            eprintln!("soak_load: {address} is not a loopback address; the soak only runs on this machine");
            std::process::exit(2);
        }
    }
    if args.duration < 10 || args.outage >= args.duration {
        eprintln!("soak_load: --duration must be at least 10 s and longer than --outage");
        std::process::exit(2);
    }
    // Watchdog: minting, waiting for tokengate and the run itself, with room to spare.
    let overstay = Duration::from_secs(args.duration + 900);
    std::thread::spawn(move || {
        std::thread::sleep(overstay);
        eprintln!("soak_load: still running after {overstay:?}; stopping");
        std::process::exit(3);
    });
    std::fs::create_dir_all(&args.out).expect("output directory");

    let issuer_url = format!("http://{}", args.issuer);
    let stable = shared_key(Algorithm::RS256, "soak-stable");
    let old = shared_key(Algorithm::RS256, "soak-rot-1");
    let new = shared_key(Algorithm::RS256, "soak-rot-2");
    let tokens = Arc::new(mint_tokens(
        &issuer_url,
        &stable,
        &old,
        args.rotating.max(1),
        args.duration,
    ));

    let listener = std::net::TcpListener::bind(args.issuer).expect("issuer address");
    let issuer = start_issuer(
        listener,
        vec![stable.clone(), old.clone()],
        &args.client_secret,
    );
    let timeline = Arc::new(Timeline::new(
        args.duration,
        args.outage,
        args.refresh_interval,
        issuer,
    ));
    std::fs::write(args.work.join("issuer.ready"), format!("{issuer_url}\n")).expect("ready file");

    let pid_file = args.work.join("tokengate.pid");
    wait_for("tokengate.pid", Duration::from_secs(120), || {
        pid_file.exists()
    });
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .expect("a pid in tokengate.pid");

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let passed = runtime.block_on(run(&args, pid, timeline, tokens, [stable, old, new]));
    std::process::exit(if passed { 0 } else { 1 });
}

async fn run(
    args: &Args,
    pid: u32,
    timeline: Arc<Timeline>,
    tokens: Arc<Tokens>,
    keys: [Arc<SigningKey>; 3],
) -> bool {
    let issuer = timeline.issuer.clone();
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(CLIENT_TIMEOUT)
        .pool_max_idle_per_host(if args.connections > 0 {
            args.connections
        } else {
            MAX_IN_FLIGHT
        })
        .tcp_nodelay(true)
        .build()
        .expect("HTTP client");
    let readyz = format!("http://{}/readyz", args.admin);
    let ready = poll_until(
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            client
                .get(&readyz)
                .send()
                .await
                .is_ok_and(|response| response.status().is_success())
        },
    )
    .await;
    if !ready {
        eprintln!("soak_load: tokengate {readyz} not ready after 30 s");
        return false;
    }

    let load = Arc::new(Load {
        client,
        url: format!("http://{}/auth", args.tokengate),
        timeline: timeline.clone(),
        stats: Mutex::new(Stats {
            window: Window::default(),
            minutes: Vec::new(),
            totals: [0; CLASSES.len()],
            total_errors: [0; CLASSES.len()],
            total_outage_503: [0; CLASSES.len()],
            wrong: BTreeMap::new(),
            error_lines: Vec::new(),
            first_new_key_answer: None,
            first_old_key_refusal: None,
        }),
        in_flight: AtomicUsize::new(0),
        connections: (args.connections > 0).then(|| tokio::sync::Semaphore::new(args.connections)),
        unsent: AtomicU64::new(0),
        lag_max_us: AtomicU64::new(0),
        aborted: AtomicBool::new(false),
    });
    std::fs::write(args.out.join("timeline.env"), timeline.events()).expect("timeline.env");
    let mut sampler = Sampler {
        pid,
        clk_tck: args.clk_tck.max(1),
        csv: std::io::BufWriter::new(
            std::fs::File::create(args.out.join("soak.csv")).expect("soak.csv"),
        ),
        last_ticks: cpu_ticks(pid).unwrap_or_default(),
        last_jwks: 0,
        last_introspections: 0,
        last_tg_wait_ns: run_queue_wait_ns(&pid.to_string()),
        last_load_wait_ns: run_queue_wait_ns("self"),
        last_steal: steal_ticks(),
    };
    sampler.header().expect("soak.csv");
    let rss_start = rss_kib(pid).unwrap_or_default();
    eprintln!(
        "soak_load: {}s of load at {:.0} req/s (+{} new tokens/s) over {} connections; rotation {}s/{}s, outage {}s-{}s",
        args.duration,
        CLASSES.iter().map(|class| class.rate()).sum::<f64>() * args.scale,
        args.new_rate,
        if args.connections > 0 { args.connections.to_string() } else { "unbounded".to_owned() },
        timeline.rotate_add,
        timeline.withdraw,
        timeline.outage_start,
        timeline.outage_end
    );
    let start = Instant::now();
    let _ = timeline.start.set(start);

    let [stable, old, new] = keys;
    tokio::spawn(drive_issuer(
        timeline.clone(),
        [stable, old.clone(), new.clone()],
    ));
    let scheduler = tokio::spawn(schedule(load.clone(), tokens.clone(), args.scale));
    let minter = mint_new(
        load.clone(),
        tokio::runtime::Handle::current(),
        issuer.url().to_owned(),
        old,
        new,
        args.new_rate,
    );
    let windows = args.duration.div_ceil(WINDOW_SECS);
    let mut window_start = 0.0;
    for w in 1..=windows {
        let end = (w * WINDOW_SECS).min(args.duration) as f64;
        tokio::time::sleep_until((start + Duration::from_secs_f64(end)).into()).await;
        if w == windows {
            // The last window also takes the answers still on their way (bounded).
            for _ in 0..250 {
                if load.in_flight.load(Ordering::Relaxed) == 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        match sampler.sample(&load, &issuer, window_start, end) {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("soak_load: tokengate (pid {pid}) is gone at t={end:.0}s");
                load.aborted.store(true, Ordering::Relaxed);
                break;
            }
            Err(error) => {
                eprintln!("soak_load: cannot write soak.csv: {error}");
                load.aborted.store(true, Ordering::Relaxed);
                break;
            }
        }
        window_start = end;
    }
    let _ = scheduler.await;
    let _ = tokio::task::spawn_blocking(move || minter.join()).await;

    let stats = load.stats.lock().unwrap_or_else(|e| e.into_inner());
    let (report, passed) = report(
        args,
        &timeline,
        &stats,
        rss_start,
        load.aborted.load(Ordering::Relaxed),
        &load.unsent,
    );
    print!("{report}");
    std::fs::write(args.out.join("summary.md"), &report).expect("summary.md");
    let mut errors = stats.error_lines.join("\n");
    errors.push('\n');
    std::fs::write(args.out.join("errors.log"), errors).expect("errors.log");
    passed
}

/// The per-minute table, the per-class totals and the pass criteria, as Markdown.
fn report(
    args: &Args,
    timeline: &Timeline,
    stats: &Stats,
    rss_start_kib: u64,
    aborted: bool,
    unsent: &AtomicU64,
) -> (String, bool) {
    let mut out = String::new();
    let minute_p = |m: &Minute, q: f64| {
        let mut sorted = m.latencies.clone();
        sorted.sort_unstable();
        percentile(&sorted, q)
    };
    let _ = writeln!(
        out,
        "| minute | events | requests | req/s | RSS max MiB | p50 ms | p99 ms | CPU µs/req | errors | outage 503s | sockets max | tokengate / load waited for CPU ms | load lag max ms |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, minute) in stats.minutes.iter().enumerate() {
        let (from, to) = (i as f64 * 60.0, (i as f64 + 1.0) * 60.0);
        let mut events = Vec::new();
        if i == 0 {
            events.push("warm-up".to_owned());
        }
        for (at, what) in [
            (timeline.rotate_add, "key added"),
            (timeline.withdraw, "old key withdrawn"),
            (timeline.outage_start, "IdP outage starts"),
            (timeline.outage_end, "IdP outage ends"),
        ] {
            if at >= from && at < to {
                events.push(format!("{what} ({at:.0} s)"));
            }
        }
        let seconds = (timeline.duration - from).clamp(1.0, 60.0);
        let cpu = minute.cpu_ticks as f64 * 1e6 / args.clk_tck.max(1) as f64;
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.0} | {:.1} | {:.3} | {:.3} | {:.2} | {} | {} | {} | {:.0} / {:.0} | {:.0} |",
            i + 1,
            events.join(", "),
            minute.requests,
            minute.requests as f64 / seconds,
            minute.rss_max_kib as f64 / 1024.0,
            minute_p(minute, 0.50),
            minute_p(minute, 0.99),
            cpu / minute.requests.max(1) as f64,
            minute.errors,
            minute.outage_503,
            minute.sockets_max,
            minute.tg_wait_ms,
            minute.load_wait_ms,
            minute.lag_max_ms,
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| class | requests | expected 503s (outage) | errors |"
    );
    let _ = writeln!(out, "|---|---|---|---|");
    for class in CLASSES {
        let c = class.index();
        let wrong: Vec<String> = stats
            .wrong
            .iter()
            .filter(|((of, _), _)| *of == class)
            .map(|((_, status), count)| match status {
                0 => format!("{count} without answer"),
                status => format!("{count} × {status}"),
            })
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}{} |",
            class.name(),
            stats.totals[c],
            stats.total_outage_503[c],
            stats.total_errors[c],
            if wrong.is_empty() {
                String::new()
            } else {
                format!(" ({})", wrong.join(", "))
            }
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "RSS before the load: {:.1} MiB. Key added at {:.0} s (first served {}); old key withdrawn at {:.0} s (JWKS without it first served {}, first refusal of its tokens for a request sent at {}). First request with a token of the added key: {}. Requests not sent (load generator over {MAX_IN_FLIGHT} in flight): {}.",
        rss_start_kib as f64 / 1024.0,
        timeline.rotate_add,
        timeline.served(ADDED_JWKS).map_or("never".to_owned(), |t| format!("at {t:.1} s")),
        timeline.withdraw,
        timeline.served(WITHDRAWN_JWKS).map_or("never".to_owned(), |t| format!("at {t:.1} s")),
        stats.first_old_key_refusal.map_or("never".to_owned(), |t| format!("{t:.1} s")),
        stats.first_new_key_answer.map_or("none".to_owned(), |(t, status, micros)| format!("sent at {t:.1} s, answered {status} in {:.1} ms", f64::from(micros) / 1000.0)),
        unsent.load(Ordering::Relaxed),
    );
    let _ = writeln!(out);

    // Pass criteria: minute two is [60 s, 120 s), the last minute the last 60 s.
    let mut passed = !aborted;
    let mut criteria = Vec::new();
    let minutes = &stats.minutes;
    if aborted {
        criteria
            .push("FAIL the run was cut short (tokengate gone, or the CSV unwritable)".to_owned());
    }
    if minutes.len() >= 3 {
        let (second, last) = (&minutes[1], &minutes[minutes.len() - 1]);
        let rss_ok = last.rss_max_kib as f64 <= 1.1 * second.rss_max_kib as f64;
        criteria.push(format!(
            "{} RSS flat after warm-up: last minute's max {:.1} MiB ≤ 1.1 × minute two's max {:.1} MiB = {:.1} MiB",
            if rss_ok { "PASS" } else { "FAIL" },
            last.rss_max_kib as f64 / 1024.0,
            second.rss_max_kib as f64 / 1024.0,
            1.1 * second.rss_max_kib as f64 / 1024.0,
        ));
        let (p99_second, p99_last) = (minute_p(second, 0.99), minute_p(last, 0.99));
        let p99_ok = p99_last <= 2.0 * p99_second;
        criteria.push(format!(
            "{} p99 stable: last minute's p99 {p99_last:.3} ms ≤ 2 × minute two's p99 {p99_second:.3} ms = {:.3} ms",
            if p99_ok { "PASS" } else { "FAIL" },
            2.0 * p99_second,
        ));
        passed &= rss_ok && p99_ok;
    } else {
        criteria.push("FAIL fewer than three minutes: no warm-up, minute two and last minute to compare (run at least 180 s)".to_owned());
        passed = false;
    }
    let errors: u64 = stats.total_errors.iter().sum();
    let outage_503: u64 = stats.total_outage_503.iter().sum();
    let errors_ok = errors == 0;
    criteria.push(format!(
        "{} no error answers: {errors} wrong statuses or missing answers; {outage_503} 503s, all for tokens needing introspection sent during the outage",
        if errors_ok { "PASS" } else { "FAIL" },
    ));
    let outage_seen = stats.total_outage_503[Class::OpaqueNew.index()] > 0;
    criteria.push(format!(
        "{} the outage was felt: {} fresh opaque tokens got 503 while the issuer was down",
        if outage_seen { "PASS" } else { "FAIL" },
        stats.total_outage_503[Class::OpaqueNew.index()],
    ));
    passed &= errors_ok && outage_seen;
    for line in &criteria {
        let _ = writeln!(out, "- {line}");
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "Overall: {}", if passed { "PASS" } else { "FAIL" });
    (out, passed)
}
