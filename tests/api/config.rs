//! Configuration: validation, environment overrides, and the binary's exit codes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use tokengate::config::Settings;

const VALID: &str = r#"
listen: 127.0.0.1:0
issuers:
  - issuer: https://sso.example.com/realms/main
    audiences: [orders-api]
    algorithms: [RS256, ES256]
"#;

fn write_config(name: &str, content: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tokengate-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

fn run_binary(args: &[&str]) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_tokengate"))
        .args(args)
        .output()
        .expect("run tokengate");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn check_config_accepts_a_valid_file() {
    let path = write_config("valid.yaml", VALID);
    let (code, _) = run_binary(&["--config", path.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 0);
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let cases = [
        (
            "alg-none.yaml",
            VALID.replace("[RS256, ES256]", "[RS256, none]"),
            "issuers[0].algorithms",
        ),
        (
            "hs256.yaml",
            VALID.replace("[RS256, ES256]", "[HS256]"),
            "issuers[0].algorithms",
        ),
        (
            "no-aud.yaml",
            VALID.replace("audiences: [orders-api]", "audiences: []"),
            "issuers[0].audiences",
        ),
        (
            "leeway.yaml",
            VALID.replace("algorithms:", "leeway: 1h\n    algorithms:"),
            "issuers[0].leeway",
        ),
        (
            "status.yaml",
            format!("success_status: 302\n{VALID}"),
            "success_status",
        ),
        (
            "no-issuers.yaml",
            "listen: 127.0.0.1:0\n".to_owned(),
            "issuers",
        ),
        (
            "cache.yaml",
            format!("cache:\n  max_entries: 0\n{VALID}"),
            "cache.max_entries",
        ),
        (
            "cache-bytes.yaml",
            format!("cache:\n  max_bytes: 4096\n{VALID}"),
            "cache.max_bytes",
        ),
        (
            "introspection-bytes.yaml",
            format!("cache:\n  introspection_max_bytes: 100000000000000\n{VALID}"),
            "cache.introspection_max_bytes",
        ),
        (
            "unknown.yaml",
            format!("cache:\n  max_entrys: 10\n{VALID}"),
            "max_entrys",
        ),
        (
            "source.yaml",
            format!("token:\n  sources: [query:token]\n{VALID}"),
            "token.sources[0]",
        ),
        (
            "rules-without-proxy-headers.yaml",
            format!("rules:\n  - paths: [/public]\n    allow_anonymous: true\n{VALID}"),
            "proxy_headers",
        ),
        (
            "ca.yaml",
            format!("http_client:\n  ca_file: /nonexistent/ca.pem\n{VALID}"),
            "http_client.ca_file",
        ),
        (
            "redis-ca-without-tls.yaml",
            format!(
                "revocation:\n  redis:\n    url: redis://127.0.0.1:6379/\n    ca_file: {}\n{VALID}",
                write_config("redis-ca.pem", "-----BEGIN CERTIFICATE-----\n").display()
            ),
            "revocation.redis.ca_file",
        ),
        (
            "redis-ca-not-pem.yaml",
            format!(
                "revocation:\n  redis:\n    url: rediss://127.0.0.1:6379/\n    ca_file: {}\n{VALID}",
                write_config("redis-ca.txt", "not a certificate").display()
            ),
            "revocation.redis.ca_file",
        ),
    ];
    for (name, content, key) in cases {
        let path = write_config(name, &content);
        let (code, stderr) = run_binary(&["--config", path.to_str().unwrap(), "--check-config"]);
        assert_eq!(code, 64, "{name}: {stderr}");
        assert!(stderr.contains(key), "{name}: {stderr:?} should name {key}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{name}: one line: {stderr:?}"
        );
    }
}

#[test]
fn missing_file_exits_64() {
    let (code, stderr) = run_binary(&["--config", "/nonexistent/tokengate.yaml", "--check-config"]);
    assert_eq!(code, 64, "{stderr}");
}

#[test]
fn toml_works_too() {
    let toml = r#"
success_status = 200
[[issuers]]
issuer = "https://sso.example.com/realms/main"
audiences = ["orders-api"]
"#;
    let settings =
        Settings::load(&write_config("settings.toml", toml), Some(HashMap::new())).unwrap();
    assert_eq!(settings.success_status, 200);
    assert_eq!(settings.issuers[0].algorithms, ["RS256"]);
}

#[test]
fn environment_overrides_file_values() {
    let path = write_config("env.yaml", VALID);
    let env = HashMap::from([
        ("TOKENGATE__SUCCESS_STATUS".to_owned(), "200".to_owned()),
        (
            "TOKENGATE__CACHE__MAX_ENTRIES".to_owned(),
            "5000".to_owned(),
        ),
        (
            "TOKENGATE__IDENTITY__GROUPS_CLAIM".to_owned(),
            "realm_access.roles".to_owned(),
        ),
    ]);
    let settings = Settings::load(&path, Some(env)).unwrap();
    assert_eq!(settings.success_status, 200);
    assert_eq!(settings.cache.max_entries, 5000);
    assert_eq!(settings.identity.groups_claim, "realm_access.roles");

    let env = HashMap::from([("TOKENGATE__CACHE__MAX_ENTRIES".to_owned(), "0".to_owned())]);
    let error = Settings::load(&path, Some(env)).unwrap_err();
    assert_eq!(error.key, "cache.max_entries");

    let env = HashMap::from([(
        "TOKENGATE__CACHE__MAX_BYTES".to_owned(),
        "67108864".to_owned(),
    )]);
    let settings = Settings::load(&path, Some(env)).unwrap();
    assert_eq!(settings.cache.max_bytes, 64 * 1024 * 1024);
}

#[test]
fn shipped_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/tokengate.example.yaml");
    let (code, stderr) = run_binary(&["--config", path, "--check-config"]);
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn shipped_cloudflare_access_config_is_valid_once_filled_in() {
    let template = include_str!("../../deploy/cloudflare-access.yaml");
    let filled = template.replace("<team>", "example").replace(
        "<aud-tag>",
        "4714c1358e65fe4b408ad6d432a5f878f08194bdb4752441fd56faefa9b2b6f2",
    );
    let path = write_config("cloudflare.yaml", &filled);
    let (code, stderr) = run_binary(&["--config", path.to_str().unwrap(), "--check-config"]);
    assert_eq!(code, 0, "{stderr}");
}

/// The listener forms and the gRPC settings: each bad value names its key.
#[test]
fn listener_and_grpc_settings_are_validated() {
    let with = |extra: &str| Settings::from_yaml(&format!("{extra}\n{VALID}"));
    let key = |extra: &str| with(extra).expect_err(extra).key;
    let unix = with(
        "admin_listen: unix:/run/tokengate/admin.sock\ngrpc_listen: unix:/run/tokengate/grpc.sock",
    )
    .expect("unix sockets");
    assert_eq!(
        unix.grpc_listen.unwrap().to_string(),
        "unix:/run/tokengate/grpc.sock"
    );
    assert_eq!(unix.server.socket_mode().unwrap(), 0o660);
    assert!(
        with("").unwrap().grpc_listen.is_none(),
        "no gRPC listener by default"
    );
    for (extra, wanted) in [
        ("grpc_listen: unix:relative.sock", "grpc_listen"),
        ("grpc_listen: localhost:8081", "grpc_listen"),
        ("admin_listen: unix:/", "admin_listen"),
        (
            "admin_listen: unix:/run/a.sock\ngrpc_listen: unix:/run/a.sock",
            "grpc_listen",
        ),
        ("grpc_listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:9999\nserver:\n  unix_socket_mode: \"0999\"", "server.unix_socket_mode"),
        ("server:\n  unix_socket_mode: \"rw\"", "server.unix_socket_mode"),
        ("grpc:\n  max_concurrent_streams: 0", "grpc.max_concurrent_streams"),
        ("grpc:\n  keep_alive_interval: 0s", "grpc.keep_alive_interval"),
        ("grpc:\n  keep_alive_timeout: 1h", "grpc.keep_alive_timeout"),
        ("grpc:\n  metadata_namespace: \"a:b\"", "grpc.metadata_namespace"),
        ("grpc:\n  max_streams: 10", "grpc"),
    ] {
        assert!(key(extra).starts_with(wanted), "{extra}: {}", key(extra));
    }
    // Port 0 twice is two free ports, not one address.
    assert!(with("admin_listen: 127.0.0.1:0\ngrpc_listen: 127.0.0.1:0").is_ok());
}
