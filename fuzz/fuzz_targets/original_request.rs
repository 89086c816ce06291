//! Original-request parsing for each proxy's headers, path normalisation and rule
//! matching. Invariants beyond "no panic":
//! - an accepted path is in normal form: it starts with `/`, has no empty, `.` or `..`
//!   segment, no `\` and no control character, and re-encoding it gives it back
//!   (normalising twice equals normalising once);
//! - a refused path stays refused when any of its letters, digits or dots are
//!   percent-encoded (no encoding turns an ambiguous target into an accepted one);
//! - a grant that matches a request implies that a restriction written the same way
//!   matches it too (grants narrow, restrictions broad).
#![no_main]

use std::sync::OnceLock;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use tokengate::config::RuleSettings;
use tokengate::policy::RouteRules;
use tokengate::request::{parse_path, OriginalRequest, PathParameters, ProxyHeaders};

const PATTERNS: &[&str] = &[
    "/admin",
    "/api/*/admin",
    "/assets/*.css",
    "/docs/**",
    "/public/",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(3, '\n');
    let target = parts.next().unwrap_or_default();
    let method = parts.next().unwrap_or_default();
    let host = parts.next().unwrap_or_default();
    let parameters = if selector & 0x80 == 0 {
        PathParameters::Refuse
    } else {
        PathParameters::Strip
    };

    check_path(target, parameters);

    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), value);
        }
    };
    let original = match selector % 5 {
        0 => {
            put("x-original-url", &format!("http://{host}{target}"));
            put("x-original-method", method);
            OriginalRequest::from_auth_headers(&headers, ProxyHeaders::IngressNginx, parameters)
        }
        1 => {
            put("x-original-uri", target);
            put("x-original-method", method);
            put("x-forwarded-host", host);
            OriginalRequest::from_auth_headers(&headers, ProxyHeaders::Nginx, parameters)
        }
        2 => {
            put("x-forwarded-uri", target);
            put("x-forwarded-method", method);
            put("x-forwarded-host", host);
            OriginalRequest::from_auth_headers(&headers, ProxyHeaders::Traefik, parameters)
        }
        3 => {
            put("x-original-uri", target);
            put("x-forwarded-uri", target);
            put("x-forwarded-host", host);
            OriginalRequest::from_auth_headers(&headers, ProxyHeaders::Auto, parameters)
        }
        _ => {
            put("host", host);
            OriginalRequest::from_ext_authz(method, target, &headers, parameters)
        }
    };
    let Ok(original) = original else {
        return;
    };
    if let Some(path) = &original.path {
        assert_normal(path);
    }
    if let Some(host) = &original.host {
        assert!(!host.ends_with(':') && !host.contains(['/', '\\', '@', '?', '#', ' ']));
        assert_eq!(host, &host.to_ascii_lowercase());
    }
    for (pattern, grant, restriction) in rules() {
        let granted = grant.first_match(&original, true).is_some();
        let restricted = restriction.first_match(&original, true).is_some();
        assert!(
            !granted || restricted,
            "{pattern}: granted but not restricted: {original:?}"
        );
    }
});

/// For each pattern, a grant and a restriction written the same way; built once.
fn rules() -> &'static [(&'static str, RouteRules, RouteRules)] {
    static RULES: OnceLock<Vec<(&'static str, RouteRules, RouteRules)>> = OnceLock::new();
    RULES.get_or_init(|| {
        let rule = |pattern: &str, deny: bool| {
            RouteRules::new(&[RuleSettings {
                paths: vec![pattern.to_owned()],
                methods: vec!["GET".to_owned()],
                deny,
                allow_anonymous: !deny,
                ..RuleSettings::default()
            }])
            .expect("valid rule")
        };
        PATTERNS
            .iter()
            .map(|pattern| (*pattern, rule(pattern, false), rule(pattern, true)))
            .collect()
    })
}

fn check_path(target: &str, parameters: PathParameters) {
    match parse_path(target, parameters) {
        Ok(path) => {
            assert_normal(&path);
            assert_eq!(
                parse_path(&reencode(&path), parameters).ok().as_deref(),
                Some(path.as_str()),
                "normalising twice differs from once: {target:?}"
            );
        }
        Err(_) => {
            let encoded = encode_some(target);
            assert!(
                parse_path(&encoded, parameters).is_err(),
                "{target:?} is refused but {encoded:?} is accepted"
            );
        }
    }
}

fn assert_normal(path: &str) {
    assert!(path.starts_with('/'), "{path:?}");
    assert!(!path.contains("//"), "{path:?}");
    assert!(!path.contains('\\'), "{path:?}");
    assert!(!path.chars().any(char::is_control), "{path:?}");
    for segment in path.split('/') {
        assert!(segment != "." && segment != "..", "{path:?}");
    }
}

/// Percent-encodes every byte of a normal-form path that is not plain in a target.
fn reencode(path: &str) -> String {
    let mut out = String::with_capacity(path.len() * 3);
    for &byte in path.as_bytes() {
        if byte.is_ascii_alphanumeric() || b"/-._~!$&'()*+,=:@".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Percent-encodes every second letter, digit or dot of a raw target.
fn encode_some(target: &str) -> String {
    let mut out = String::with_capacity(target.len() * 3);
    let mut toggle = false;
    for ch in target.chars() {
        if ch.is_ascii_alphanumeric() || ch == '.' {
            toggle = !toggle;
            if toggle {
                out.push_str(&format!("%{:02X}", ch as u8));
                continue;
            }
        }
        out.push(ch);
    }
    out
}
