//! Claims → identity headers. Built once per verified token and kept in the cache, so a
//! cache hit only copies ready header values.

use actix_web::http::header::{HeaderName, HeaderValue};
use serde_json::Value;

use crate::config::IdentitySettings;

pub const USER_HEADER: HeaderName = HeaderName::from_static("x-auth-request-user");
pub const EMAIL_HEADER: HeaderName = HeaderName::from_static("x-auth-request-email");
pub const GROUPS_HEADER: HeaderName = HeaderName::from_static("x-auth-request-groups");

/// A claim name or a dotted path into nested objects (`realm_access.roles`).
#[derive(Debug, Clone)]
pub struct ClaimPath(Vec<String>);

impl ClaimPath {
    pub fn new(path: &str) -> Self {
        Self(path.split('.').map(str::to_owned).collect())
    }

    /// The value at this path, if every step exists. A top-level claim whose name contains
    /// dots (`https://example.com/groups`) is matched whole first.
    pub fn lookup<'a>(&self, claims: &'a Value) -> Option<&'a Value> {
        if self.0.len() > 1 {
            if let Some(value) = claims.get(self.0.join(".")) {
                return Some(value);
            }
        }
        self.0
            .iter()
            .try_fold(claims, |value, step| value.get(step.as_str()))
    }
}

/// The identity a verified token carries.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// `sub`, for logs.
    pub subject: Option<String>,
    /// The user name (configured claim, falling back to `sub`).
    pub user: Option<String>,
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// Ready-to-send response headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// How claims map to identity fields, built once from the settings.
#[derive(Debug, Clone)]
pub struct IdentityMapping {
    user: ClaimPath,
    email: ClaimPath,
    groups: ClaimPath,
    max_header_length: usize,
}

impl IdentityMapping {
    pub fn new(settings: &IdentitySettings) -> Self {
        Self {
            user: ClaimPath::new(&settings.user_claim),
            email: ClaimPath::new(&settings.email_claim),
            groups: ClaimPath::new(&settings.groups_claim),
            max_header_length: settings.max_header_length,
        }
    }

    /// The identity carried by JWT claims: the configured user claim, else `sub`.
    pub fn identity(&self, claims: &Value) -> Identity {
        self.identity_with_user_fallback(claims, None)
    }

    /// The identity in an RFC 7662 introspection answer, with the same mapping as JWT
    /// claims. Introspection names the user `username` (RFC 7662 §2.2) where JWTs say
    /// `preferred_username`, so `username` is tried between the configured claim and `sub`.
    pub fn introspection_identity(&self, answer: &Value) -> Identity {
        self.identity_with_user_fallback(answer, Some("username"))
    }

    fn identity_with_user_fallback(&self, claims: &Value, fallback: Option<&str>) -> Identity {
        let subject = claims.get("sub").and_then(scalar_string);
        let user = self
            .user
            .lookup(claims)
            .and_then(scalar_string)
            .or_else(|| {
                fallback
                    .and_then(|name| claims.get(name))
                    .and_then(scalar_string)
            })
            .or_else(|| subject.clone());
        let email = self.email.lookup(claims).and_then(scalar_string);
        let groups = self
            .groups
            .lookup(claims)
            .map(string_list)
            .unwrap_or_default();

        let mut headers = Vec::with_capacity(3);
        let limit = self.max_header_length;
        if let Some(value) = user.as_deref().and_then(|v| header_value(v, limit)) {
            headers.push((USER_HEADER, value));
        }
        if let Some(value) = email.as_deref().and_then(|v| header_value(v, limit)) {
            headers.push((EMAIL_HEADER, value));
        }
        if let Some(value) = join_groups(&groups, limit) {
            headers.push((GROUPS_HEADER, value));
        }
        Identity {
            subject,
            user,
            email,
            groups,
            headers,
        }
    }
}

/// Strings as they are; numbers and booleans in their JSON form; anything else is absent.
fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

/// A claim holding one string, a list of strings, or a space-separated string
/// (`scope`-style) as a list.
pub fn string_list(value: &Value) -> Vec<String> {
    match value {
        Value::Array(items) => items.iter().filter_map(scalar_string).collect(),
        Value::String(text) => text.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Removes what would let a claim inject a header line (CR, LF) or what a header may not
/// hold (other control characters), and cuts the value at `limit` bytes on a character
/// boundary.
pub fn sanitize(value: &str, limit: usize) -> String {
    let mut clean = String::with_capacity(value.len().min(limit));
    for ch in value.chars().filter(|ch| !ch.is_control()) {
        if clean.len() + ch.len_utf8() > limit {
            break;
        }
        clean.push(ch);
    }
    clean
}

fn header_value(value: &str, limit: usize) -> Option<HeaderValue> {
    let clean = sanitize(value, limit);
    if clean.is_empty() {
        return None;
    }
    HeaderValue::from_str(&clean)
        .or_else(|_| HeaderValue::from_bytes(clean.as_bytes()))
        .ok()
}

/// Comma-joins whole groups up to `limit` bytes: a group is dropped, never cut, so the
/// upstream cannot see a truncated name that happens to be another group.
fn join_groups(groups: &[String], limit: usize) -> Option<HeaderValue> {
    let mut joined = String::new();
    for group in groups {
        let clean = sanitize(group, limit);
        if clean.is_empty() {
            continue;
        }
        let extra = clean.len() + usize::from(!joined.is_empty());
        if joined.len() + extra > limit {
            tracing::debug!(
                limit,
                "groups header reached its size limit; later groups left out"
            );
            break;
        }
        if !joined.is_empty() {
            joined.push(',');
        }
        joined.push_str(&clean);
    }
    if joined.is_empty() {
        return None;
    }
    HeaderValue::from_bytes(joined.as_bytes()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mapping(groups_claim: &str) -> IdentityMapping {
        IdentityMapping::new(&IdentitySettings {
            groups_claim: groups_claim.to_owned(),
            max_header_length: 64,
            ..IdentitySettings::default()
        })
    }

    #[test]
    fn user_falls_back_to_sub() {
        let identity = mapping("groups").identity(&json!({"sub": "u-1"}));
        assert_eq!(identity.user.as_deref(), Some("u-1"));
    }

    #[test]
    fn introspection_user_is_claim_then_username_then_sub() {
        let mapping = mapping("groups");
        let answer = json!({"sub": "u-1", "username": "bob"});
        assert_eq!(
            mapping.introspection_identity(&answer).user.as_deref(),
            Some("bob")
        );
        let answer = json!({"sub": "u-1", "username": "bob", "preferred_username": "alice"});
        assert_eq!(
            mapping.introspection_identity(&answer).user.as_deref(),
            Some("alice")
        );
        let answer = json!({"sub": "u-1"});
        assert_eq!(
            mapping.introspection_identity(&answer).user.as_deref(),
            Some("u-1")
        );
        // JWTs keep their mapping: `username` is not a JWT user claim.
        let claims = json!({"sub": "u-1", "username": "bob"});
        assert_eq!(mapping.identity(&claims).user.as_deref(), Some("u-1"));
    }

    #[test]
    fn dotted_groups_claim() {
        let claims = json!({"realm_access": {"roles": ["admin", "dev"]}});
        let identity = mapping("realm_access.roles").identity(&claims);
        assert_eq!(identity.groups, ["admin", "dev"]);
    }

    #[test]
    fn claim_name_with_dots_matches_whole() {
        let claims = json!({"https://example.com/groups": ["a"]});
        let identity = mapping("https://example.com/groups").identity(&claims);
        assert_eq!(identity.groups, ["a"]);
    }

    #[test]
    fn control_characters_are_removed() {
        assert_eq!(sanitize("alice\r\nX-Evil: 1", 100), "aliceX-Evil: 1");
    }

    #[test]
    fn values_are_cut_on_char_boundaries() {
        assert_eq!(sanitize("ééé", 5), "éé");
    }

    #[test]
    fn groups_are_dropped_whole_at_the_limit() {
        let groups: Vec<String> = (0..20).map(|i| format!("group-{i:02}")).collect();
        let value = join_groups(&groups, 30).unwrap();
        assert_eq!(value.to_str().unwrap(), "group-00,group-01,group-02");
    }
}
