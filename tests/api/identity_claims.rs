//! How claims become the identity that the policy judges and the upstream receives:
//! `email_verified` and `require_email_verified`, emails that are not one plain address,
//! groups holding the header's separator, and string groups claims
//! (`space_separated_groups`). JWTs and introspection answers follow the same rules.

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::json;
use tokengate::config::{IdentityOutput, ImpersonationEntry, IntrospectionSettings};

use crate::helpers::*;

/// The email header of an allowed answer, if any.
fn email_header(response: &reqwest::Response) -> Option<&str> {
    response
        .headers()
        .get("x-auth-request-email")
        .map(|value| value.to_str().unwrap())
}

#[tokio::test]
async fn unverified_email_is_refused_by_email_rules_and_not_sent() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    for verified in [json!(false), json!("true"), json!(null), json!(0)] {
        let token = issuer.token_with(|claims| {
            claims["email_verified"] = verified.clone();
        });

        let denied = app
            .auth_query("allowed_emails=alice@example.com", &token)
            .await;
        assert_eq!(denied.status(), 403, "email_verified: {verified}");
        let denied = app
            .auth_query("allowed_email_domains=example.com", &token)
            .await;
        assert_eq!(denied.status(), 403, "email_verified: {verified}");

        let allowed = app.auth_with_token(&token).await;
        assert_eq!(allowed.status(), 202);
        assert_eq!(email_header(&allowed), None, "email_verified: {verified}");
        assert_eq!(allowed.headers()["x-auth-request-user"], "alice");
    }
    assert_eq!(app.decisions_with_reason("email_not_allowed"), 8.0);

    let verified = issuer.token_with(|claims| claims["email_verified"] = true.into());
    let allowed = app
        .auth_query("allowed_emails=alice@example.com", &verified)
        .await;
    assert_eq!(allowed.status(), 202);
    assert_eq!(email_header(&allowed), Some("alice@example.com"));
}

#[tokio::test]
async fn absent_email_verified_is_accepted_unless_the_issuer_requires_it() {
    let issuer = TestIssuer::start().await;
    let token = issuer.token(); // no email_verified claim
    let verified = issuer.token_with(|claims| claims["email_verified"] = true.into());

    let lenient = spawn_app(&issuer).await;
    let allowed = lenient
        .auth_query("allowed_emails=alice@example.com", &token)
        .await;
    assert_eq!(allowed.status(), 202);
    assert_eq!(email_header(&allowed), Some("alice@example.com"));

    let strict = spawn_app_with(&issuer, |s| s.issuers[0].require_email_verified = true).await;
    let denied = strict
        .auth_query("allowed_emails=alice@example.com", &token)
        .await;
    assert_eq!(denied.status(), 403);
    let allowed = strict.auth_with_token(&token).await;
    assert_eq!(allowed.status(), 202);
    assert_eq!(email_header(&allowed), None);
    let allowed = strict
        .auth_query("allowed_emails=alice@example.com", &verified)
        .await;
    assert_eq!(allowed.status(), 202);
    assert_eq!(email_header(&allowed), Some("alice@example.com"));
}

#[tokio::test]
async fn unverified_email_does_not_match_the_impersonation_map() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.output = IdentityOutput::KubernetesImpersonation;
        s.identity.impersonation_map = vec![ImpersonationEntry {
            email: "alice@example.com".into(),
            user: "cluster-admin".into(),
            groups: vec!["system:masters".into()],
        }];
    })
    .await;
    let unverified = issuer.token_with(|claims| claims["email_verified"] = false.into());

    let response = app.auth_with_token(&unverified).await;

    assert_eq!(response.status(), 202);
    assert_eq!(response.headers()["impersonate-user"], "alice");
    let groups: Vec<_> = response
        .headers()
        .get_all("impersonate-group")
        .iter()
        .collect();
    assert_eq!(groups, ["admins", "developers"], "the token's own groups");

    let verified = issuer.token_with(|claims| claims["email_verified"] = true.into());
    let response = app.auth_with_token(&verified).await;
    assert_eq!(response.headers()["impersonate-user"], "cluster-admin");
}

#[tokio::test]
async fn an_unverified_email_is_not_the_impersonated_user_either() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.identity.output = IdentityOutput::KubernetesImpersonation;
        s.identity.user_claim = "email".into();
    })
    .await;
    let unverified = issuer.token_with(|claims| claims["email_verified"] = false.into());
    let response = app.auth_with_token(&unverified).await;
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.headers()["impersonate-user"],
        "user-1",
        "falls back to sub"
    );
}

#[tokio::test]
async fn an_email_that_is_not_one_plain_address_is_no_email() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    for (address, domain) in [
        ("alice@example.com@evil.com", "evil.com"),
        (r#""alice@example.com"@evil.com"#, "evil.com"),
        ("alice@evil.com\n", "evil.com"),
        ("alice@evil.com.", "evil.com"),
        (" alice@evil.com", "evil.com"),
        ("alice@evil.com,bob@example.com", "example.com"),
    ] {
        let token = issuer.token_with(|claims| {
            claims["email"] = address.into();
            claims["email_verified"] = true.into();
        });
        let query = format!("allowed_email_domains={domain}");
        let denied = app.auth_query(&query, &token).await;
        assert_eq!(denied.status(), 403, "{address:?}");
        let allowed = app.auth_with_token(&token).await;
        assert_eq!(email_header(&allowed), None, "{address:?}");
    }
}

#[tokio::test]
async fn a_group_holding_a_comma_is_dropped_for_policy_and_header() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token_with(|claims| {
        claims["groups"] = json!(["a,admins", "developers", " ops "]);
    });

    let denied = app.auth_query("allowed_groups=admins", &token).await;
    assert_eq!(denied.status(), 403);
    assert_eq!(app.decisions_with_reason("not_in_group"), 1.0);
    let allowed = app.auth_query("allowed_groups=ops", &token).await;
    assert_eq!(allowed.status(), 202);
    assert_eq!(
        allowed.headers()["x-auth-request-groups"],
        "developers,ops",
        "the header carries exactly the groups the policy judged"
    );
}

#[tokio::test]
async fn a_string_groups_claim_is_one_group() {
    let issuer = TestIssuer::start().await;
    let token = issuer.token_with(|claims| claims["groups"] = "Finance Admins".into());

    let app = spawn_app(&issuer).await;
    let denied = app.auth_query("allowed_groups=Admins", &token).await;
    assert_eq!(denied.status(), 403);
    let allowed = app
        .auth_query("allowed_groups=Finance%20Admins", &token)
        .await;
    assert_eq!(allowed.status(), 202);
    assert_eq!(allowed.headers()["x-auth-request-groups"], "Finance Admins");

    let spaced = spawn_app_with(&issuer, |s| s.issuers[0].space_separated_groups = true).await;
    let allowed = spaced.auth_query("allowed_groups=Admins", &token).await;
    assert_eq!(allowed.status(), 202);
    assert_eq!(allowed.headers()["x-auth-request-groups"], "Finance,Admins");
}

/// A file holding the test client secret.
fn secret_file() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("tokengate-claims-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("introspection-secret");
        std::fs::write(&path, INTROSPECTION_SECRET).unwrap();
        path
    })
    .clone()
}

#[tokio::test]
async fn introspection_answers_follow_the_same_rules() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        let introspection: IntrospectionSettings = serde_json::from_value(json!({
            "client_id": INTROSPECTION_CLIENT_ID,
            "client_secret_file": secret_file(),
        }))
        .unwrap();
        s.issuers[0].introspection = Some(introspection);
        s.issuers[0].require_email_verified = true;
        s.token.opaque_issuer = Some(issuer.url().to_owned());
    })
    .await;
    let mut unverified = issuer.active_answer(); // bob@example.com, no email_verified
    unverified["groups"] = json!(["ops", "x,support"]);
    let token = issuer.opaque_token_with(unverified);

    let denied = app
        .auth_query("allowed_emails=bob@example.com", &token)
        .await;
    assert_eq!(denied.status(), 403);
    let allowed = app.auth_with_token(&token).await;
    assert_eq!(allowed.status(), 202);
    assert_eq!(email_header(&allowed), None);
    assert_eq!(allowed.headers()["x-auth-request-groups"], "ops");

    let mut verified = issuer.active_answer();
    verified["email_verified"] = true.into();
    let token = issuer.opaque_token_with(verified);
    let allowed = app
        .auth_query("allowed_emails=bob@example.com", &token)
        .await;
    assert_eq!(allowed.status(), 202);
    assert_eq!(email_header(&allowed), Some("bob@example.com"));
}
