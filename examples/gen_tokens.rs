//! Token generator for the load benchmark (benches/load/run.sh).
//!
//! cargo run --release --example gen_tokens -- <out dir> <issuer> <audience> <count> <ttl secs>
//!
//! Generates one RS256 key (kid `bench-rs256`) and one ES256 key (kid `bench-es256`) and writes:
//!   <out>/jwks.json          both public keys
//!   <out>/rs256.txt          <count> distinct RS256 tokens, one a line
//!   <out>/es256.txt          <count> distinct ES256 tokens, one a line
//! Tokens are signed on all available cores.

use std::io::Write;

use jsonwebtoken::Algorithm;
use serde_json::json;
use testkit::issuer::{shared_key, sign_many};
use tokengate::demo::jwks_document;
use tokengate::verify::cache::unix_now;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 6 {
        eprintln!("usage: gen_tokens <out dir> <issuer> <audience> <count> <ttl secs>");
        std::process::exit(2);
    }
    let out = std::path::PathBuf::from(&args[1]);
    let issuer = args[2].clone();
    let audience = args[3].clone();
    let count: usize = args[4].parse().expect("count");
    let ttl: u64 = args[5].parse().expect("ttl");
    std::fs::create_dir_all(&out).expect("out dir");

    let rsa = shared_key(Algorithm::RS256, "bench-rs256");
    let ec = shared_key(Algorithm::ES256, "bench-es256");
    std::fs::write(
        out.join("jwks.json"),
        serde_json::to_string_pretty(&jwks_document([rsa.as_ref(), ec.as_ref()])).unwrap(),
    )
    .expect("jwks.json");

    let now = unix_now();
    for (key, file) in [(&rsa, "rs256.txt"), (&ec, "es256.txt")] {
        let started = std::time::Instant::now();
        let tokens = sign_many(key, count, |i| {
            let user = format!("user{i}");
            json!({
                "iss": issuer,
                "sub": format!("bench-{user}"),
                "aud": audience,
                "iat": now - 60,
                "nbf": now - 60,
                "exp": now + ttl,
                "jti": format!("{}-{i}", key.kid),
                "scope": "read",
                "preferred_username": user,
                "email": format!("{user}@example.com"),
                "groups": ["developers", "ops"],
            })
        });
        let mut writer = std::io::BufWriter::new(std::fs::File::create(out.join(file)).unwrap());
        for token in &tokens {
            writeln!(writer, "{token}").unwrap();
        }
        writer.flush().unwrap();
        eprintln!(
            "gen_tokens: {count} {:?} tokens in {:.1}s -> {}",
            key.alg,
            started.elapsed().as_secs_f64(),
            out.join(file).display()
        );
    }
}
