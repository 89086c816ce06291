//! An RFC 7662 introspection answer, through the same strict JSON reader and judge as a
//! real answer. Invariants beyond "no panic": an answer is active only when its
//! `active` member is the boolean `true` (and it is named once); an active answer never
//! names another issuer, and is never for a refresh token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokengate::verify::introspection::{AnswerRules, Judged};
use tokengate::verify::json;

const NOW: u64 = 1_700_000_000;

fuzz_target!(|data: &[u8]| {
    let (selector, body) = data.split_first().map_or((0, data), |(s, b)| (*s, b));
    let rules = AnswerRules {
        issuer: "https://sso.example.com".to_owned(),
        audiences: vec!["orders-api".to_owned()],
        require_audience: selector & 1 == 1,
        leeway: u64::from(selector >> 1),
    };
    let Ok(answer) = json::from_slice(body) else {
        return;
    };
    let Ok(Judged::Active { expires_at }) = rules.judge(&answer, NOW) else {
        return;
    };
    assert_eq!(answer.get("active"), Some(&Value::Bool(true)), "{answer}");
    // The lenient reader must agree that `active` is `true`: the strict one refused any
    // document where another member of the same name could say otherwise.
    let lenient: Value = serde_json::from_slice(body).expect("strictly valid JSON");
    assert_eq!(lenient.get("active"), Some(&Value::Bool(true)));
    if let Some(iss) = answer.get("iss") {
        assert_eq!(iss, "https://sso.example.com");
    }
    assert_ne!(
        answer
            .get("token_type")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase),
        Some("refresh_token".to_owned())
    );
    if let Some(exp) = expires_at {
        assert!(exp.saturating_add(u64::from(selector >> 1)) >= NOW);
    }
    if rules.require_audience {
        assert!(answer.get("aud").is_some());
    }
});
