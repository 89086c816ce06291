//! Identity output: arbitrary claims (a JWT's or an introspection answer's) through four
//! identity mappings, `headers` and `kubernetes_impersonation`, tight limits and defaults.
//! Invariants beyond "no panic", for every identity that may be sent (no `problem`):
//! - no header value holds a control character, and every value is trimmed and non-empty;
//! - each value fits `max_header_length`, and all of them `max_headers_bytes`;
//! - `Impersonate-User` is present, and no `Impersonate-User`/`-Group` reads as a
//!   `system:` name (whitespace, controls, zero-width characters and case ignored) unless
//!   the impersonation map gave it;
//! - the user and email headers are the identity's user and email, and the groups the
//!   headers carry are the policy's groups, in order: what the policy judged is what the
//!   upstream gets.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tokengate::config::{IdentityOutput, Settings};
use tokengate::identity::{ClaimRules, Identity, IdentityMapping};

/// What the map in the impersonation mapping grants.
const MAPPED_EMAIL: &str = "root@example.com";
const MAPPED_GROUP: &str = "system:masters";

struct Case {
    mapping: IdentityMapping,
    rules: ClaimRules,
    output: IdentityOutput,
    max_header_length: usize,
    max_headers_bytes: usize,
    filtered: bool,
    mapped: bool,
}

const CONFIGS: [&str; 4] = [
    // Headers, default limits, claim headers.
    r#"
identity:
  claim_headers:
    - { header: X-Auth-Request-Tenant, claim: tenant }
    - { header: X-Auth-Request-Roles, claim: realm_access.roles }
"#,
    // Headers, tight limits, a groups filter; strict email, space-separated groups.
    r#"
identity:
  user_claim: email
  max_header_length: 64
  max_headers_bytes: 256
  groups_filter: { prefixes: ["/team-"], pattern: "^app-" }
  claim_headers:
    - { header: X-Auth-Request-Tenant, claim: tenant }
strict: true
"#,
    // Kubernetes impersonation with a map entry granting a system: group.
    r#"
identity:
  output: kubernetes_impersonation
  impersonation_map:
    - { email: root@example.com, user: root, groups: ["system:masters"] }
"#,
    // Kubernetes impersonation, tight limits, dotted groups claim.
    r#"
identity:
  output: kubernetes_impersonation
  groups_claim: realm_access.roles
  max_header_length: 64
  max_headers_bytes: 512
strict: true
"#,
];

fn cases() -> &'static [Case] {
    static CASES: OnceLock<Vec<Case>> = OnceLock::new();
    CASES.get_or_init(|| {
        CONFIGS
            .iter()
            .map(|config| {
                let strict = config.contains("strict: true");
                let rules = if strict {
                    "    require_email_verified: true\n    space_separated_groups: true\n"
                } else {
                    ""
                };
                let yaml = format!(
                    "issuers:\n  - issuer: https://sso.example.com\n    audiences: [api]\n{rules}{}",
                    config.replace("strict: true\n", "")
                );
                let settings = Settings::from_yaml(&yaml).expect("fuzz settings");
                let identity = &settings.identity;
                Case {
                    mapping: IdentityMapping::new(identity).expect("mapping"),
                    rules: ClaimRules::from(&settings.issuers[0]),
                    output: identity.output,
                    max_header_length: identity.max_header_length,
                    max_headers_bytes: identity.max_headers_bytes,
                    filtered: identity.groups_filter.is_some(),
                    mapped: !identity.impersonation_map.is_empty(),
                }
            })
            .collect()
    })
}

/// What a lenient reader could take for a `system:` name: whitespace, controls and
/// zero-width characters dropped, case ignored. Written apart from the code under test.
fn reads_as_system(value: &str) -> bool {
    let visible: String = value
        .chars()
        .filter(|ch| {
            !ch.is_whitespace()
                && !ch.is_control()
                && !matches!(ch, '\u{200B}'..='\u{200F}' | '\u{2060}' | '\u{FEFF}')
        })
        .flat_map(char::to_lowercase)
        .collect();
    visible.starts_with("system:")
}

/// True when every item of `part` appears in `whole`, in the same order.
fn in_order<'a>(part: impl IntoIterator<Item = &'a str>, whole: &[&str]) -> bool {
    let mut rest = whole.iter();
    part.into_iter()
        .all(|item| rest.any(|candidate| *candidate == item))
}

fn check(case: &Case, identity: &Identity) {
    let groups: Vec<&str> = identity.groups().collect();
    for group in &groups {
        assert!(!group.is_empty() && !group.contains(','), "{group:?}");
        assert_eq!(group.trim(), *group);
        assert!(!group.chars().any(char::is_control), "{group:?}");
    }
    if identity.problem.is_some() {
        return; // refused: nothing is sent
    }
    let headers: Vec<(String, String)> = identity
        .headers()
        .map(|(name, value)| {
            let value = std::str::from_utf8(value.as_bytes()).expect("UTF-8 header value");
            (name.as_str().to_owned(), value.to_owned())
        })
        .collect();
    let mut bytes = 0;
    for (name, value) in &headers {
        assert!(!value.is_empty(), "{name}: empty");
        assert_eq!(value.trim(), value, "{name}: not trimmed");
        assert!(!value.chars().any(char::is_control), "{name}: {value:?}");
        assert!(
            value.len() <= case.max_header_length,
            "{name}: over the limit"
        );
        bytes += name.len() + value.len() + 4;
    }
    assert!(bytes <= case.max_headers_bytes, "{bytes} bytes of headers");
    let values = |wanted: &str| -> Vec<&str> {
        headers
            .iter()
            .filter(|(name, _)| name == wanted)
            .map(|(_, value)| value.as_str())
            .collect()
    };
    let mapped = case.mapped
        && identity
            .email()
            .is_some_and(|email| email.eq_ignore_ascii_case(MAPPED_EMAIL));
    match case.output {
        IdentityOutput::Headers => {
            assert_eq!(
                values("x-auth-request-user").first().copied(),
                identity.user()
            );
            assert_eq!(
                values("x-auth-request-email").first().copied(),
                identity.email()
            );
            assert!(values("impersonate-user").is_empty());
            for joined in values("x-auth-request-groups") {
                let sent = joined.split(',');
                if case.filtered {
                    assert!(in_order(sent, &groups), "{joined:?} from {groups:?}");
                } else {
                    // Without a filter, the first groups, up to the size limit.
                    let sent: Vec<&str> = sent.collect();
                    assert_eq!(sent[..], groups[..sent.len()], "{joined:?}");
                }
            }
        }
        IdentityOutput::KubernetesImpersonation => {
            let users = values("impersonate-user");
            assert_eq!(users.len(), 1, "one Impersonate-User: {headers:?}");
            let sent = values("impersonate-group");
            if !mapped {
                assert_eq!(users.first().copied(), identity.user());
                assert!(in_order(sent.iter().copied(), &groups), "{sent:?}");
            }
            for value in users.iter().chain(&sent) {
                if reads_as_system(value) {
                    assert!(mapped && *value == MAPPED_GROUP, "{value:?} from a token");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(claims) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    for case in cases() {
        check(case, &case.mapping.jwt_identity(case.rules, &claims));
        check(
            case,
            &case.mapping.introspection_identity(case.rules, &claims),
        );
    }
});
