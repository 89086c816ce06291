//! Identity output: claim headers, groups filter, Kubernetes impersonation (and forged
//! `system:` names), values sent exactly as judged, the header
//! budget and the cache hints.

use reqwest::header::HeaderValue;
use tokengate::config::{
    ClaimHeaderSettings, GroupsFilterSettings, IdentityOutput, ImpersonationEntry,
};
use tokengate::verify::cache::unix_now;

use crate::helpers::*;

#[tokio::test]
async fn claim_headers_from_dotted_paths() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.claim_headers = vec![
            ClaimHeaderSettings {
                header: "X-Auth-Request-Tenant".into(),
                claim: "tenant_id".into(),
            },
            ClaimHeaderSettings {
                header: "X-Auth-Request-Roles".into(),
                claim: "resource_access.orders.roles".into(),
            },
            ClaimHeaderSettings {
                header: "X-Auth-Request-Missing".into(),
                claim: "nope".into(),
            },
        ]
    })
    .await;
    let mut claims = issuer.claims();
    claims["tenant_id"] = "acme".into();
    claims["resource_access"] = serde_json::json!({"orders": {"roles": ["reader", "writer"]}});

    let response = app.auth_with_token(&issuer.sign(&claims)).await;

    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["x-auth-request-tenant"], "acme");
    assert_eq!(response.headers()["x-auth-request-roles"], "reader,writer");
    assert!(response.headers().get("x-auth-request-missing").is_none());
}

#[tokio::test]
async fn groups_filter_limits_emitted_groups_not_policy() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.groups_filter = Some(GroupsFilterSettings {
            prefixes: vec!["dev".into()],
            pattern: None,
        })
    })
    .await;
    let response = app
        .client
        .get(format!("{}/auth?allowed_groups=admins", app.address))
        .bearer_auth(issuer.token())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "policy sees every group");
    assert_eq!(response.headers()["x-auth-request-groups"], "developers");
}

#[tokio::test]
async fn kubernetes_impersonation_repeats_the_group_header() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.output = IdentityOutput::KubernetesImpersonation
    })
    .await;
    let mut claims = issuer.claims();
    claims["groups"] = serde_json::json!(["admins", "developers", "system:masters"]);

    let response = app.auth_with_token(&issuer.sign(&claims)).await;

    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["impersonate-user"], "alice");
    let groups: Vec<&HeaderValue> = response
        .headers()
        .get_all("impersonate-group")
        .iter()
        .collect();
    assert_eq!(
        groups,
        ["admins", "developers"],
        "one line per group; system: groups never from a token"
    );
    assert!(response.headers().get("x-auth-request-user").is_none());
}

#[tokio::test]
async fn kubernetes_impersonation_from_the_identity_map() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.output = IdentityOutput::KubernetesImpersonation;
        s.identity.impersonation_map = vec![ImpersonationEntry {
            email: "Alice@Example.com".into(),
            user: "alice@corp".into(),
            groups: vec!["system:masters".into()],
        }];
    })
    .await;
    let response = app.auth_with_token(&issuer.token()).await;
    assert_eq!(response.headers()["impersonate-user"], "alice@corp");
    let groups: Vec<&HeaderValue> = response
        .headers()
        .get_all("impersonate-group")
        .iter()
        .collect();
    assert_eq!(groups, ["system:masters"]);
}

#[tokio::test]
async fn kubernetes_impersonation_without_a_user_is_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.output = IdentityOutput::KubernetesImpersonation
    })
    .await;
    let mut claims = issuer.claims();
    claims["preferred_username"] = "system:admin".into();
    claims["sub"] = "system:admin".into();
    let response = app.auth_with_token(&issuer.sign(&claims)).await;
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn header_budget_turns_oversized_identities_into_403() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| s.identity.max_headers_bytes = 512).await;
    let mut claims = issuer.claims();
    let groups: Vec<String> = (0..60).map(|i| format!("directory-group-{i:03}")).collect();
    claims["groups"] = serde_json::json!(groups);

    let response = app.auth_with_token(&issuer.sign(&claims)).await;

    assert_eq!(response.status(), 403);
    assert_eq!(app.decisions_with_reason("identity_too_large"), 1.0);
    assert_eq!(app.auth_with_token(&issuer.token()).await.status(), 202);
}

#[tokio::test]
async fn cache_hint_never_outlives_the_token() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let mut claims = issuer.claims();
    claims["exp"] = (unix_now() + 120).into();

    let response = app.auth_with_token(&issuer.sign(&claims)).await;

    let seconds: u64 = response.headers()["x-accel-expires"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((100..=120).contains(&seconds), "{seconds}");
    let denied = app.auth_without_token().await;
    assert_eq!(denied.headers()["x-accel-expires"], "0");
}

/// Group and user names that an API server, or a proxy that trims or drops odd
/// characters on the way, could read as a `system:` name.
const FORGED_SYSTEM_NAMES: &[&str] = &[
    "\tsystem:masters",
    "\u{0}system:masters",
    "\u{85}system:masters",
    "\u{A0}system:masters",
    " system:masters",
    "system:masters ",
    "sys\ttem:masters",
    "sys tem:masters",
    "SYSTEM:masters",
    "\u{200B}system:masters",
];

/// Whether any response header value reads as a `system:` name once whitespace and
/// controls are gone and case is ignored.
fn any_system_header(response: &reqwest::Response) -> bool {
    response.headers().iter().any(|(_, value)| {
        let visible: String = String::from_utf8_lossy(value.as_bytes())
            .chars()
            .filter(|ch| !ch.is_whitespace() && !ch.is_control() && *ch != '\u{200B}')
            .collect();
        visible.to_ascii_lowercase().starts_with("system:")
    })
}

#[tokio::test]
async fn forged_system_groups_never_become_impersonate_group() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.output = IdentityOutput::KubernetesImpersonation
    })
    .await;
    let mut claims = issuer.claims();
    let mut groups: Vec<&str> = FORGED_SYSTEM_NAMES.to_vec();
    groups.push("developers");
    claims["groups"] = serde_json::json!(groups);

    let response = app.auth_with_token(&issuer.sign(&claims)).await;

    assert_eq!(response.status(), 202);
    assert!(!any_system_header(&response));
    let sent: Vec<&HeaderValue> = response
        .headers()
        .get_all("impersonate-group")
        .iter()
        .collect();
    assert_eq!(sent, ["developers"]);
}

#[tokio::test]
async fn forged_system_users_are_refused() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.output = IdentityOutput::KubernetesImpersonation
    })
    .await;
    for name in FORGED_SYSTEM_NAMES {
        let mut claims = issuer.claims();
        claims["preferred_username"] = (*name).into();
        let response = app.auth_with_token(&issuer.sign(&claims)).await;
        assert_eq!(response.status(), 403, "{name:?}");
        assert!(!any_system_header(&response), "{name:?}");
    }
    assert_eq!(
        app.decisions_with_reason("unusable_identity"),
        FORGED_SYSTEM_NAMES.len() as f64
    );
}

#[tokio::test]
async fn identity_header_values_are_sent_as_judged() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.claim_headers = vec![ClaimHeaderSettings {
            header: "X-Auth-Request-Tenant".into(),
            claim: "tenant_id".into(),
        }]
    })
    .await;
    let mut claims = issuer.claims();
    claims["preferred_username"] = "\u{A0}alice\t".into();
    claims["groups"] = serde_json::json!(["\u{85}admins ", "\u{0}"]);
    claims["tenant_id"] = " acme\r\n".into();

    let response = app
        .client
        .get(format!("{}/auth?allowed_groups=admins", app.address))
        .bearer_auth(issuer.sign(&claims))
        .send()
        .await
        .unwrap();

    assert_eq!(
        response.status(),
        202,
        "the policy judged the cleaned group"
    );
    assert_eq!(response.headers()["x-auth-request-user"], "alice");
    assert_eq!(response.headers()["x-auth-request-groups"], "admins");
    assert_eq!(response.headers()["x-auth-request-tenant"], "acme");
}
