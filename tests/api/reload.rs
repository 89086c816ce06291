//! Reloading the configuration of the real binary: on SIGHUP, and on a Kubernetes-style
//! ConfigMap swap (`..data` replaced atomically) without a signal. A bad file keeps the
//! running configuration; unchanged issuers keep their keys and cached verdicts.
//!
//! For the SIGHUP tests the configuration path is a symlink to a file in another
//! directory: the watched directory sees no event, so only the signal can reload.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::future::join_all;

use crate::helpers::*;
use crate::process::{free_port, scrape, wait_ready, Child};

/// A running binary and the files it was started with.
struct Served {
    dir: PathBuf,
    /// Where the configuration really is (what `write` changes).
    real: PathBuf,
    port: u16,
    admin_port: u16,
    child: Child,
    client: reqwest::Client,
}

/// Everything a test configuration varies: the issuers (URL and audiences) and the
/// rules, as YAML lines.
#[derive(Clone)]
struct Config {
    issuers: Vec<(String, String)>,
    rules: String,
    extra: String,
}

impl Config {
    fn one(issuer: &TestIssuer) -> Config {
        Config {
            issuers: vec![(issuer.url().to_owned(), AUDIENCE.to_owned())],
            rules: String::new(),
            extra: String::new(),
        }
    }

    fn with_rules(&self, rules: &str) -> Config {
        Config {
            rules: rules.to_owned(),
            ..self.clone()
        }
    }

    fn render(&self, port: u16, admin_port: u16) -> String {
        let mut yaml = format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\nworkers: 2\nproxy_headers: nginx\nlog:\n  format: json\n  filter: info\nhttp_client:\n  connect_timeout: 1s\n  timeout: 2s\nissuers:\n"
        );
        for (index, (url, audiences)) in self.issuers.iter().enumerate() {
            yaml.push_str(&format!(
                "  - issuer: \"{url}\"\n    name: idp-{index}\n    audiences: [{audiences}]\n"
            ));
        }
        if !self.rules.is_empty() {
            yaml.push_str("rules:\n");
            yaml.push_str(&self.rules);
        }
        yaml.push_str(&self.extra);
        yaml
    }
}

const DENY_ADMIN: &str = "  - name: no-admin\n    paths: [\"/admin\"]\n    deny: true\n";

impl Served {
    /// Starts the binary on `config`. With `configmap`, the file sits in a kubelet-style
    /// `..data` layout in the watched directory; otherwise the path is a symlink into
    /// another directory.
    /// A test issuer, a config naming it alone, and the binary started on that config.
    async fn one_issuer(name: &str, configmap: bool) -> (TestIssuer, Config, Served) {
        let issuer = TestIssuer::start().await;
        let config = Config::one(&issuer);
        let served = Served::start(name, &config, configmap).await;
        (issuer, config, served)
    }

    async fn start(name: &str, config: &Config, configmap: bool) -> Served {
        let dir =
            std::env::temp_dir().join(format!("tokengate-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("watched")).unwrap();
        std::fs::create_dir_all(dir.join("elsewhere")).unwrap();
        let (port, admin_port) = (free_port(), free_port());
        let path = dir.join("watched/tokengate.yaml");
        let real = if configmap {
            let version = dir.join("watched/..2026_12_01_00_00_00.000000001");
            std::fs::create_dir_all(&version).unwrap();
            std::os::unix::fs::symlink(version.file_name().unwrap(), dir.join("watched/..data"))
                .unwrap();
            std::os::unix::fs::symlink("..data/tokengate.yaml", &path).unwrap();
            version.join("tokengate.yaml")
        } else {
            let real = dir.join("elsewhere/tokengate.yaml");
            std::os::unix::fs::symlink(&real, &path).unwrap();
            real
        };
        std::fs::write(&real, config.render(port, admin_port)).unwrap();
        // Logs go to stdout, errors before logging starts to stderr: both in one file.
        let log = std::fs::File::create(dir.join("output.log")).unwrap();
        let child = Child(
            Command::new(env!("CARGO_BIN_EXE_tokengate"))
                .args(["--config", path.to_str().unwrap()])
                .env_remove("RUST_LOG")
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("start tokengate"),
        );
        let served = Served {
            dir,
            real,
            port,
            admin_port,
            child,
            client: reqwest::Client::new(),
        };
        let readyz = served.admin("/readyz");
        assert!(
            wait_ready(&served.client, &readyz).await,
            "tokengate became ready:\n{}",
            served.logs()
        );
        served
    }

    fn admin(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin_port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.join("output.log")).unwrap_or_default()
    }

    /// The JSON log lines whose message starts with `message`, once there are `count` of
    /// them (5 s at most: lines are written by a background thread).
    async fn log_lines_until(&self, message: &str, count: usize) -> Vec<serde_json::Value> {
        let started = Instant::now();
        loop {
            let lines: Vec<serde_json::Value> = self
                .logs()
                .lines()
                .filter_map(|line| serde_json::from_str(line).ok())
                .filter(|line: &serde_json::Value| {
                    line["message"].as_str().unwrap_or("").starts_with(message)
                })
                .collect();
            if lines.len() >= count || started.elapsed() > Duration::from_secs(5) {
                assert_eq!(lines.len(), count, "{message}:\n{}", self.logs());
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Rewrites the file behind the configuration path in place.
    fn write(&self, text: &str) {
        std::fs::write(&self.real, text).unwrap();
    }

    fn write_config(&self, config: &Config) {
        self.write(&config.render(self.port, self.admin_port));
    }

    /// Publishes `config` the way the kubelet updates a mounted ConfigMap: a new
    /// timestamped directory, a `..data_tmp` symlink to it renamed over `..data`, the
    /// old directory removed.
    fn swap_configmap(&self, config: &Config, version: &str) {
        let watched = self.dir.join("watched");
        let new = watched.join(format!("..2026_12_01_00_00_00.{version}"));
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("tokengate.yaml"),
            config.render(self.port, self.admin_port),
        )
        .unwrap();
        let old = std::fs::read_link(watched.join("..data")).unwrap();
        std::os::unix::fs::symlink(new.file_name().unwrap(), watched.join("..data_tmp")).unwrap();
        std::fs::rename(watched.join("..data_tmp"), watched.join("..data")).unwrap();
        std::fs::remove_dir_all(watched.join(old)).unwrap();
    }

    fn hangup(&self) {
        let status = Command::new("kill")
            .args(["-HUP", &self.child.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The value of one series of `/metrics`, 0 when absent.
    async fn metric(&self, series: &str) -> f64 {
        scrape(&self.client, &self.admin("/metrics"), series)
            .await
            .unwrap_or(0.0)
    }

    async fn reloads(&self, result: &str) -> f64 {
        self.metric(&format!(
            "tokengate_config_reloads_total{{result=\"{result}\"}}"
        ))
        .await
    }

    /// Waits (10 s at most) until `count` reloads ended with `result`.
    async fn wait_reloads(&self, result: &str, count: f64) {
        let started = Instant::now();
        while self.reloads(result).await < count {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "no {count} reload(s) with result {result}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn verified_cache(&self, result: &str) -> f64 {
        self.metric(&format!(
            "tokengate_cache_requests_total{{cache=\"verified_token\",result=\"{result}\"}}"
        ))
        .await
    }

    /// `/auth` for `uri` with `token`: the status.
    async fn auth(&self, token: &str, uri: &str) -> u16 {
        self.client
            .get(format!("http://127.0.0.1:{}/auth", self.port))
            .bearer_auth(token)
            .header("x-original-uri", uri)
            .send()
            .await
            .expect("tokengate answers")
            .status()
            .as_u16()
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn a_rule_change_applies_on_sighup() {
    let (issuer, config, served) = Served::one_issuer("sighup", false).await;
    let token = issuer.token();
    assert_eq!(served.auth(&token, "/admin").await, 202);

    served.write_config(&config.with_rules(DENY_ADMIN));
    // The file is outside the watched directory: nothing happens without the signal.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(served.auth(&token, "/admin").await, 202);
    assert_eq!(served.reloads("success").await, 0.0);

    served.hangup();
    served.wait_reloads("success", 1.0).await;
    assert_eq!(served.auth(&token, "/admin").await, 403);
    assert_eq!(served.auth(&token, "/orders").await, 202);
    let reloaded = served.log_lines_until("configuration reloaded", 1).await;
    assert_eq!(reloaded[0]["trigger"], "SIGHUP");
    assert_eq!(reloaded[0]["rules"], 1);
    assert!(
        served
            .metric("tokengate_config_last_reload_success_timestamp_seconds")
            .await
            > 0.0
    );
}

#[tokio::test]
async fn a_configmap_swap_applies_without_a_signal() {
    let (issuer, config, served) = Served::one_issuer("configmap", true).await;
    let token = issuer.token();
    assert_eq!(served.auth(&token, "/admin").await, 202);

    served.swap_configmap(&config.with_rules(DENY_ADMIN), "000000002");
    served.wait_reloads("success", 1.0).await;
    assert_eq!(served.auth(&token, "/admin").await, 403);

    // And back, by a second swap.
    served.swap_configmap(&config, "000000003");
    served.wait_reloads("success", 2.0).await;
    assert_eq!(served.auth(&token, "/admin").await, 202);
    let reloaded = served.log_lines_until("configuration reloaded", 2).await;
    assert!(reloaded.iter().all(|line| line["trigger"] == "file change"));
}

#[tokio::test]
async fn a_bad_file_on_reload_keeps_the_running_config() {
    let issuer = TestIssuer::start().await;
    let config = Config::one(&issuer).with_rules(DENY_ADMIN);
    let served = Served::start("bad", &config, false).await;
    let token = issuer.token();
    assert_eq!(served.auth(&token, "/admin").await, 403);

    let good = config.render(served.port, served.admin_port);
    let missing_secret = good.replacen(
        &format!("    audiences: [{AUDIENCE}]\n"),
        &format!(
            "    audiences: [{AUDIENCE}]\n    introspection:\n      client_id: tokengate\n      client_secret_file: {}\n      introspect_jwts: true\n",
            served.dir.join("no-such-secret").display()
        ),
        1,
    );
    let cases = [
        ("issuers: [unclosed\n".to_owned(), "tokengate.yaml"),
        (
            good.replace("  - name: no-admin", "  - nmae: no-admin"),
            "rules[0]",
        ),
        (
            good.replace("    audiences:", "    algorithms: [none]\n    audiences:"),
            "issuers[0].algorithms",
        ),
        (
            missing_secret,
            "issuers[0].introspection.client_secret_file",
        ),
    ];
    for (count, (text, key)) in cases.iter().enumerate() {
        served.write(text);
        served.hangup();
        served.wait_reloads("error", (count + 1) as f64).await;
        // Still the old rules, still ready.
        assert_eq!(served.auth(&token, "/admin").await, 403, "{key}");
        assert_eq!(served.auth(&token, "/orders").await, 202, "{key}");
        let ready = served
            .client
            .get(served.admin("/readyz"))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200, "{key}");
        // Log lines are written by a background thread: wait for this one.
        let failures = served
            .log_lines_until("configuration reload failed", count + 1)
            .await;
        let logs = served.logs();
        let named = failures[count]["key"].as_str().unwrap_or("");
        assert!(
            named.contains(key),
            "the error line names {key}, not {named}:\n{logs}"
        );
    }
    assert_eq!(served.reloads("success").await, 0.0);

    // A good file afterwards applies.
    served.write_config(&Config::one(&issuer));
    served.hangup();
    served.wait_reloads("success", 1.0).await;
    assert_eq!(served.auth(&token, "/admin").await, 202);
}

#[tokio::test]
async fn an_unchanged_issuer_keeps_its_keys_and_cached_verdicts() {
    let (issuer, config, served) = Served::one_issuer("unchanged", false).await;
    let token = issuer.token();
    assert_eq!(served.auth(&token, "/orders").await, 202);
    let fetches = issuer.jwks_fetches();
    let hits = served.verified_cache("hit").await;

    served.write_config(&config.with_rules(DENY_ADMIN));
    served.hangup();
    served.wait_reloads("success", 1.0).await;
    assert_eq!(served.auth(&token, "/orders").await, 202);
    assert_eq!(
        served.verified_cache("hit").await,
        hits + 1.0,
        "a cache hit"
    );
    // Give a background fetch, had there been one, time to happen.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(issuer.jwks_fetches(), fetches, "no JWKS fetch on reload");
}

#[tokio::test]
async fn a_changed_audience_drops_only_that_issuers_verdicts() {
    let first = TestIssuer::start().await;
    let second = TestIssuer::start().await;
    let mut config = Config::one(&first);
    config
        .issuers
        .push((second.url().to_owned(), AUDIENCE.to_owned()));
    let served = Served::start("audience", &config, false).await;
    let (first_token, second_token) = (first.token(), second.token());
    assert_eq!(served.auth(&first_token, "/").await, 202);
    assert_eq!(served.auth(&second_token, "/").await, 202);
    let fetches = first.jwks_fetches();

    config.issuers[0].1 = format!("{AUDIENCE}, billing-api");
    served.write_config(&config);
    served.hangup();
    served.wait_reloads("success", 1.0).await;
    let (hits, misses) = (
        served.verified_cache("hit").await,
        served.verified_cache("miss").await,
    );
    assert_eq!(served.auth(&first_token, "/").await, 202);
    assert_eq!(
        served.verified_cache("miss").await,
        misses + 1.0,
        "the changed issuer's verdict is judged again"
    );
    assert_eq!(served.auth(&second_token, "/").await, 202);
    assert_eq!(
        served.verified_cache("hit").await,
        hits + 1.0,
        "the unchanged issuer's verdict still counts"
    );
    // Its keys' source did not change: the key store was kept, nothing refetched.
    assert_eq!(first.jwks_fetches(), fetches);

    // Narrowed to an audience the token lacks: refused at once, not served from cache.
    config.issuers[0].1 = "billing-api".to_owned();
    served.write_config(&config);
    served.hangup();
    served.wait_reloads("success", 2.0).await;
    assert_eq!(served.auth(&first_token, "/").await, 401);
    assert_eq!(served.auth(&second_token, "/").await, 202);
}

#[tokio::test]
async fn an_added_issuer_becomes_usable_and_a_removed_one_stops() {
    let first = TestIssuer::start().await;
    let second = TestIssuer::start().await;
    let config = Config::one(&first);
    let served = Served::start("added", &config, false).await;
    let second_token = second.token();
    assert_eq!(served.auth(&second_token, "/").await, 401);

    let mut both = config.clone();
    both.issuers
        .push((second.url().to_owned(), AUDIENCE.to_owned()));
    served.write_config(&both);
    served.hangup();
    served.wait_reloads("success", 1.0).await;
    let started = Instant::now();
    while served.auth(&second_token, "/").await != 202 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            served.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready = served
        .client
        .get(served.admin("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert!(second.jwks_fetches() >= 1);

    // Removed again: its tokens are refused, cached or not, and its series are gone.
    served.write_config(&config);
    served.hangup();
    served.wait_reloads("success", 2.0).await;
    assert_eq!(served.auth(&second_token, "/").await, 401);
    assert_eq!(
        served
            .metric("tokengate_jwks_refreshes_total{issuer=\"idp-1\",result=\"success\"}")
            .await,
        0.0
    );
    let reloaded = served.log_lines_until("configuration reloaded", 2).await;
    let removed = reloaded[1]["issuers_removed"].as_str().unwrap_or("");
    assert!(removed.contains("idp-1"), "{removed}");
}

#[tokio::test]
async fn steady_load_through_twenty_reloads_gets_every_answer_right() {
    let issuer = TestIssuer::start().await;
    let config = Config::one(&issuer).with_rules(DENY_ADMIN);
    let served = Served::start("load", &config, false).await;
    let token = issuer.token();
    let forged = format!("{token}x");
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(60);

    // Four clients in a bounded loop: a valid token on an open path (202), on the
    // denied path (403 under both configs), and a bad token (401).
    let clients = join_all((0..4).map(|_| async {
        let mut answered = 0u32;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
            assert_eq!(served.auth(&token, "/orders").await, 202);
            assert_eq!(served.auth(&token, "/admin").await, 403);
            assert_eq!(served.auth(&forged, "/orders").await, 401);
            answered += 3;
        }
        answered
    }));
    let reloads = async {
        for round in 0..20 {
            // Alternate an extra rule on an unrelated path.
            let rules = if round % 2 == 0 {
                format!(
                    "{DENY_ADMIN}  - name: no-legacy\n    paths: [\"/legacy\"]\n    deny: true\n"
                )
            } else {
                DENY_ADMIN.to_owned()
            };
            served.write_config(&config.with_rules(&rules));
            served.hangup();
            served.wait_reloads("success", f64::from(round + 1)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let (answered, ()) = tokio::join!(clients, reloads);
    let answered: u32 = answered.iter().sum();
    assert!(answered > 0);
    assert_eq!(served.reloads("error").await, 0.0);
    eprintln!("{answered} answers, all correct, through 20 reloads");
}

#[tokio::test]
async fn a_setting_that_needs_a_restart_is_kept_with_a_warning_and_the_rest_applies() {
    let (issuer, config, served) = Served::one_issuer("fixed", false).await;
    let token = issuer.token();
    let text = config
        .with_rules(DENY_ADMIN)
        .render(served.port, served.admin_port)
        .replace("workers: 2", "workers: 3");
    served.write(&text);
    served.hangup();
    served.wait_reloads("success", 1.0).await;
    assert_eq!(served.auth(&token, "/admin").await, 403, "the rule applied");
    let warned = served
        .log_lines_until("this setting cannot change without a restart", 1)
        .await;
    assert_eq!(warned[0]["key"], "workers");
}
