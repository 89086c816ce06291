//! Memory bounds. Of the real binary, read from `/proc/<pid>/status` (`VmRSS`): a flood of
//! large valid tokens stays within the verified-token cache's byte budget, and the memory
//! of 10 000 connections opened and closed does not pile up. In process: fat introspection
//! answers stay within theirs. The bounds are generous: they tell a bounded process from
//! an unbounded one, they do not measure (the example `examples/memory.rs` does).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};
use tokengate::demo::SigningKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;
use crate::process::{wait_ready, Child, Launch};

const MIB: u64 = 1024 * 1024;

/// The binary, started against `issuer` with `extra` appended to its config.
struct Tokengate {
    child: Child,
    auth: String,
    admin: String,
    client: reqwest::Client,
}

impl Tokengate {
    async fn start(issuer: &TestIssuer, name: &str, extra: &str) -> Tokengate {
        let launch = Launch::new(name);
        let config = format!(
            r#"
{listeners}
workers: 1
issuers:
  - issuer: "{issuer}"
    audiences: [{AUDIENCE}]
    algorithms: [EdDSA]
log:
  format: json
  filter: warn
  allow_level: "off"
{extra}
"#,
            listeners = launch.listeners(),
            issuer = issuer.url(),
        );
        let child = launch.spawn(
            Path::new(env!("CARGO_BIN_EXE_tokengate")),
            &config,
            Stdio::null(),
            Stdio::inherit(),
        );
        let tokengate = Tokengate {
            child,
            auth: format!("127.0.0.1:{}", launch.port),
            admin: launch.admin_url(""),
            client: reqwest::Client::new(),
        };
        let readyz = format!("{}/readyz", tokengate.admin);
        assert!(
            wait_ready(&tokengate.client, &readyz).await,
            "tokengate became ready"
        );
        tokengate
    }

    /// Sends each token once, `concurrency` at a time; the number allowed.
    async fn send_all(&self, tokens: &[String], concurrency: usize) -> usize {
        let url = format!("http://{}/auth", self.auth);
        stream::iter(tokens)
            .map(|token| {
                let request = self.client.get(&url).bearer_auth(token).send();
                async move { request.await.is_ok_and(|r| r.status() == 202) }
            })
            .buffer_unordered(concurrency)
            .filter(|allowed| std::future::ready(*allowed))
            .count()
            .await
    }

    /// The value of one series in `/metrics`.
    async fn metric(&self, series: &str) -> f64 {
        let url = format!("{}/metrics", self.admin);
        crate::process::scrape(&self.client, &url, series)
            .await
            .unwrap_or_else(|| panic!("{series} in /metrics"))
    }
}

/// A valid token of about 7 KB whose bulk is 100 groups, which the cached identity keeps
/// (the costliest kind of large token: about 6.8 KB per cached entry).
fn large_token(issuer: &TestIssuer, key: &SigningKey, index: usize) -> String {
    let mut claims: Value = issuer.claims();
    claims["sub"] = json!(format!("user-{index}"));
    claims["groups"] = (0..100)
        .map(|group| format!("/tenants/acme/projects/project-{group:04}/developers"))
        .collect();
    key.sign(&claims)
}

#[tokio::test]
async fn a_flood_of_large_valid_tokens_stays_within_the_cache_budget() {
    let key = shared_key(Algorithm::EdDSA, "ed-1");
    let issuer = TestIssuer::start_with_keys(vec![key.clone()]).await;
    let budget = 8 * MIB;
    let extra = format!("cache:\n  max_bytes: {budget}\n  max_entries: 100000");
    let tokengate = Tokengate::start(&issuer, "cache-budget", &extra).await;
    // 5 000 distinct tokens: about 34 MB of cached identities if nothing bounded them.
    let tokens: Vec<String> = (0..5000)
        .map(|index| large_token(&issuer, &key, index))
        .collect();
    assert!(tokens
        .iter()
        .all(|token| (6500..8000).contains(&token.len())));
    // The first requests' one-time allocations belong to the baseline.
    assert_eq!(tokengate.send_all(&tokens[..10], 1).await, 10);
    let baseline = tokengate.child.rss();

    assert_eq!(
        tokengate.send_all(&tokens[10..], 8).await,
        tokens.len() - 10
    );
    let grown = tokengate.child.rss().saturating_sub(baseline);
    eprintln!(
        "cache budget: RSS +{} KiB over {} KiB",
        grown / 1024,
        baseline / 1024
    );
    let counted = tokengate
        .metric("tokengate_cache_bytes{cache=\"verified_token\"}")
        .await;
    let evicted = tokengate
        .metric("tokengate_cache_evictions_total{cache=\"verified_token\"}")
        .await;
    assert!(evicted > 0.0, "the budget was reached and entries evicted");
    // moka evicts on its housekeeping, a few hundred writes at most after the fact.
    assert!(
        counted <= (budget + MIB) as f64,
        "the cache counts {counted} bytes"
    );
    assert!(
        grown < 2 * budget,
        "RSS grew by {} MiB for a cache budget of {} MiB",
        grown / MIB,
        budget / MIB
    );
}

#[tokio::test]
async fn fat_introspection_answers_stay_within_their_budget() {
    let issuer = TestIssuer::start().await;
    let budget = MIB;
    let app = crate::introspection::spawn_opaque_app(&issuer, |_, settings| {
        settings.cache.introspection_max_bytes = budget;
    })
    .await;
    // 400 opaque tokens whose answers carry 100 groups each: about 2.7 MB of cached
    // identities if nothing bounded them, 150 or so within the budget.
    let mut answer = issuer.active_answer();
    answer["groups"] = (0..100)
        .map(|group| format!("/tenants/acme/projects/project-{group:04}/developers"))
        .collect();
    let tokens: Vec<String> = (0..400)
        .map(|_| issuer.opaque_token_with(answer.clone()))
        .collect();
    let allowed = stream::iter(&tokens)
        .map(|token| app.auth_with_token(token))
        .buffer_unordered(8)
        .filter(|response| std::future::ready(response.status() == 202))
        .count()
        .await;
    assert_eq!(allowed, tokens.len());
    // moka evicts on its housekeeping: a few more lookups let it run.
    for token in &tokens[..100] {
        app.auth_with_token(token).await;
    }
    let metrics = app.admin_get("/metrics").await.text().await.unwrap();
    let series = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in /metrics"))
    };
    let counted = series("tokengate_cache_bytes{cache=\"introspection\"}");
    let entries = series("tokengate_cache_entries{cache=\"introspection\"}");
    assert!(
        (budget as f64 / 2.0..=budget as f64).contains(&counted),
        "the cache counts {counted} bytes"
    );
    assert!(entries < 200.0, "{entries} answers kept");
    assert!(series("tokengate_cache_evictions_total{cache=\"introspection\"}") > 0.0);
}

/// Opens a connection, sends one request for `token`, reads the answer's head, keeps the
/// connection idle for `idle`, closes it.
async fn one_connection(address: &str, token: &str, idle: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect(address).await else {
        return false;
    };
    let request =
        format!("GET /auth HTTP/1.1\r\nHost: tokengate\r\nAuthorization: Bearer {token}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = Vec::new();
    let mut buffer = [0u8; 512];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return false,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    tokio::time::sleep(idle).await;
    head.starts_with(b"HTTP/1.1 202")
}

#[tokio::test]
async fn memory_of_10_000_closed_connections_stays_near_the_baseline() {
    let key = shared_key(Algorithm::EdDSA, "ed-1");
    let issuer = TestIssuer::start_with_keys(vec![key.clone()]).await;
    // 1 000 clients at once, each idle 50 ms after its answer, against 128 connection
    // slots: the others wait in the accept queue (1 024 deep). Served all at once, they
    // would hold about 17 MiB of connection buffers (17 KiB each), which glibc keeps
    // after they close; 128 at once hold about 2 MiB.
    let tokengate = Tokengate::start(
        &issuer,
        "connections",
        "server:\n  max_connections: 128\n  keep_alive: 60s",
    )
    .await;
    let token = key.sign(&issuer.claims());
    let address = tokengate.auth.clone();
    assert!(one_connection(&address, &token, Duration::ZERO).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let baseline = tokengate.child.rss();

    let mut after = Vec::new();
    for _round in 0..2 {
        let served = stream::iter(0..5000)
            .map(|_| one_connection(&address, &token, Duration::from_millis(50)))
            .buffer_unordered(1000)
            .filter(|served| std::future::ready(*served))
            .count()
            .await;
        assert_eq!(served, 5000, "every connection was served");
        tokio::time::sleep(Duration::from_millis(500)).await;
        after.push(tokengate.child.rss());
    }
    let [first, second] = after[..] else {
        unreachable!()
    };
    eprintln!(
        "connections: RSS {} KiB, then {} KiB and {} KiB",
        baseline / 1024,
        first / 1024,
        second / 1024
    );
    assert!(
        first.saturating_sub(baseline) < 8 * MIB,
        "RSS {} MiB after 5 000 connections closed, {} MiB before",
        first / MIB,
        baseline / MIB
    );
    // The second 5 000 reuse the memory of the first.
    assert!(
        second.saturating_sub(first) < 4 * MIB,
        "RSS {} MiB after 10 000 connections, {} MiB after 5 000",
        second / MIB,
        first / MIB
    );
}
