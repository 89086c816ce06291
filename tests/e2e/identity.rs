//! Identities an attacker can get the provider to issue (a self-service profile, a group
//! named in a directory; the clients of tests/e2e/op/op.mjs), through the real proxies:
//! what the upstream receives is exactly what tokengate judged, an unverified or
//! malformed email is no email, and no name becomes `system:` once a proxy or the
//! Kubernetes API server trims or drops a character.

use reqwest::StatusCode;
use serde_json::Value;

use crate::envoy;
use crate::nginx;
use crate::provider::TokengateOptions;
use crate::scenarios::{Proxy, Stack};
use crate::support::echoed_header;
use crate::traefik;

/// tokengate speaking Kubernetes impersonation, with one identity-map entry that makes
/// carol@example.com a cluster admin.
pub const IMPERSONATION: &str = r#"
identity:
  output: kubernetes_impersonation
  impersonation_map:
    - { email: carol@example.com, user: carol-admin, groups: ["system:masters"] }
"#;

/// tokengate speaking Kubernetes impersonation, with alice (alice@example.com) mapped to
/// three groups: what each contract makes of several `Impersonate-Group` lines.
pub const THREE_GROUPS: &str = r#"
identity:
  output: kubernetes_impersonation
  impersonation_map:
    - { email: alice@example.com, user: alice, groups: [developers, ops, readers] }
"#;

/// The name as the Kubernetes API server would compare it: no whitespace or controls
/// anywhere, lower case.
fn squeezed(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace() && !c.is_control())
        .flat_map(char::to_lowercase)
        .collect()
}

/// Fails if an impersonation header of the echo names a `system:` user or group in any
/// spelling.
fn assert_no_system_names(echo: &Value) {
    for name in ["impersonate-user", "impersonate-group"] {
        for value in echoed_header(echo, name) {
            assert!(
                !squeezed(&value).starts_with("system:"),
                "{name}: {value:?} reached the upstream: {echo}"
            );
        }
    }
}

/// `tabbed` is in groups that read `system:masters` once a tab, a space, a NUL, a NEL or
/// the case is gone, and in `developers`: only `developers` reaches the upstream.
async fn crafted_system_groups<P: Proxy>(stack: &Stack<P>) {
    let echo = stack.echo_as("tabbed", "/orders").await;
    assert_eq!(
        echoed_header(&echo, "impersonate-user"),
        ["tabbed"],
        "{echo}"
    );
    assert_no_system_names(&echo);
    let groups: Vec<String> = echoed_header(&echo, "impersonate-group")
        .iter()
        .flat_map(|value| value.split(',').map(str::trim).map(str::to_owned))
        .collect();
    assert_eq!(groups, ["developers"], "{echo}");
}

fn impersonation() -> TokengateOptions<'static> {
    TokengateOptions {
        extra: IMPERSONATION,
        ..TokengateOptions::default()
    }
}

#[tokio::test]
async fn crafted_system_groups_never_reach_traefik_upstream() {
    let stack = traefik::start_with(impersonation(), traefik::with_impersonation).await;
    crafted_system_groups(&stack).await;
}

#[tokio::test]
async fn crafted_system_groups_never_reach_envoy_upstream() {
    let stack = envoy::start_with(impersonation(), envoy::with_impersonation).await;
    crafted_system_groups(&stack).await;
}

/// `sysuser`'s `preferred_username` is "\tsystem:admin": never impersonated as that, nor
/// as anyone else.
#[tokio::test]
async fn crafted_system_user_is_never_impersonated() {
    let stack = traefik::start_with(impersonation(), traefik::with_impersonation).await;

    // Refused for want of a usable user: without Impersonate-User the API server would
    // act as the proxy itself.
    stack
        .refused_as("sysuser", "read", "/orders", StatusCode::FORBIDDEN)
        .await;
}

/// carol's token says `email_verified: false`: her address must not select the
/// identity-map entry that makes carol@example.com a cluster admin.
#[tokio::test]
async fn unverified_email_never_selects_an_impersonation_map_entry() {
    let stack = traefik::start_with(impersonation(), traefik::with_impersonation).await;

    let echo = stack.echo_as("unverified", "/orders").await;
    assert_eq!(
        echoed_header(&echo, "impersonate-user"),
        ["carol"],
        "{echo}"
    );
    assert_no_system_names(&echo);
}

/// Route rules that grant by email, behind nginx.
const EMAIL_RULES: &str = r#"
rules:
  - name: billing
    paths: [/billing]
    allowed_emails: [carol@example.com]
  - name: staff
    paths: [/staff]
    allowed_email_domains: [example.com]
"#;

fn email_rules() -> TokengateOptions<'static> {
    TokengateOptions {
        extra: EMAIL_RULES,
        ..TokengateOptions::default()
    }
}

/// A token whose email must not count: refused on `path`, which a rule grants by that
/// email, and let through to /orders without an email header. Returns the echo of
/// /orders.
async fn email_is_not_used(client_id: &str, path: &str) -> Value {
    let stack = nginx::start_with(email_rules(), |site| site).await;
    stack
        .refused_as(client_id, "read", path, StatusCode::FORBIDDEN)
        .await;

    let echo = stack.echo_as(client_id, "/orders").await;
    assert!(
        echoed_header(&echo, "x-auth-request-email").is_empty(),
        "{echo}"
    );
    assert_eq!(stack.upstream.requests(), 1);
    echo
}

/// carol's token says `email_verified: false`: her address is not used at all, neither
/// for `allowed_emails` nor in the email header.
#[tokio::test]
async fn unverified_email_is_not_used() {
    let echo = email_is_not_used("unverified", "/billing").await;
    assert_eq!(
        echoed_header(&echo, "x-auth-request-user"),
        ["carol"],
        "{echo}"
    );
}

/// eve's email is "eve@evil.example@example.com": not one address, so no email. Read
/// from the last `@`, it would pass `allowed_email_domains: [example.com]`.
#[tokio::test]
async fn email_that_is_not_one_address_is_no_email() {
    email_is_not_used("twoat", "/staff").await;
}

/// The `Impersonate-Group` lines the upstream receives for alice mapped to three groups
/// ([`THREE_GROUPS`]), and her `Impersonate-User`.
pub async fn impersonation_groups_upstream<P: Proxy>(stack: &Stack<P>) -> Vec<String> {
    let echo = stack.echo_as("alice", "/orders").await;
    assert_eq!(
        echoed_header(&echo, "impersonate-user"),
        ["alice"],
        "{echo}"
    );
    echoed_header(&echo, "impersonate-group")
}

fn three_groups() -> TokengateOptions<'static> {
    TokengateOptions {
        extra: THREE_GROUPS,
        ..TokengateOptions::default()
    }
}

/// Traefik's `authResponseHeaders` copies every line: one group per line, as the
/// Kubernetes API server reads them.
#[tokio::test]
async fn three_impersonation_groups_through_traefik_are_three_lines() {
    let stack = traefik::start_with(three_groups(), traefik::with_impersonation).await;
    let groups = impersonation_groups_upstream(&stack).await;
    assert_eq!(groups, ["developers", "ops", "readers"]);
}

/// nginx's `$upstream_http_impersonate_group` holds the first line only: the other
/// groups are lost (never joined into one). Use Traefik or Envoy's HTTP `ext_authz` for
/// several groups.
#[tokio::test]
async fn three_impersonation_groups_through_nginx_keep_the_first_only() {
    let stack = nginx::start_with(three_groups(), nginx::with_impersonation).await;
    let groups = impersonation_groups_upstream(&stack).await;
    assert_eq!(groups, ["developers"]);
}
