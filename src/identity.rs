//! Claims → identity headers. Built once per verified token and kept in the cache, so a
//! cache hit only copies ready header values.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use actix_web::http::header::{HeaderName, HeaderValue};
use bytestring::ByteString;
use regex::Regex;
use serde_json::Value;

use crate::config::{ConfigError, IdentityOutput, IdentitySettings};
use crate::error::Reason;

pub const USER_HEADER: HeaderName = HeaderName::from_static("x-auth-request-user");
pub const EMAIL_HEADER: HeaderName = HeaderName::from_static("x-auth-request-email");
pub const GROUPS_HEADER: HeaderName = HeaderName::from_static("x-auth-request-groups");
pub const IMPERSONATE_USER: HeaderName = HeaderName::from_static("impersonate-user");
pub const IMPERSONATE_GROUP: HeaderName = HeaderName::from_static("impersonate-group");

/// Headers a claim may never set: they carry meaning for HTTP itself, for the proxy
/// (nginx acts on `X-Accel-*`), or are our own identity and cache headers.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "upgrade",
    "authorization",
    "cookie",
    "set-cookie",
    "www-authenticate",
    "cache-control",
    "location",
    "x-auth-request-user",
    "x-auth-request-email",
    "x-auth-request-groups",
];
const RESERVED_PREFIXES: &[&str] = &["x-accel-", "impersonate-", "proxy-"];
/// More would not fit the header budget anyway; it also keeps name indexes small.
const MAX_CLAIM_HEADERS: usize = 64;

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

/// The identity a verified token carries, packed for the cache: every string sits in one
/// shared buffer, so a cached token costs the same few allocations whatever its claims,
/// and the header values of an answer are slices of that buffer rather than copies.
#[derive(Debug, Clone)]
pub struct Identity {
    text: ByteString,
    /// Where each string sits in `text`: `sub`, client id, user and email (in that order,
    /// possibly [`ABSENT`]), then the groups, the scopes and the header values.
    pieces: Box<[Piece]>,
    groups: u32,
    scopes: u32,
    /// The header names that a header value's [`Piece::name`] indexes; one table per
    /// mapping, shared by every identity it builds.
    names: Arc<[HeaderName]>,
    /// Why these headers must not be sent, if they must not (over the size budget, or no
    /// user to impersonate).
    pub problem: Option<Reason>,
}

/// A range of an identity's text; for a header value, also the index of its name.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Piece {
    start: u32,
    end: u32,
    name: u16,
}

/// A field the token does not carry.
const ABSENT: Piece = Piece {
    start: u32::MAX,
    end: u32::MAX,
    name: 0,
};
const SUBJECT: usize = 0;
const CLIENT_ID: usize = 1;
const USER: usize = 2;
const EMAIL: usize = 3;
const FIXED_PIECES: usize = 4;

/// Indexes of the built-in headers in every mapping's name table; claim headers follow.
const USER_NAME: u16 = 0;
const EMAIL_NAME: u16 = 1;
const GROUPS_NAME: u16 = 2;
const IMPERSONATE_USER_NAME: u16 = 3;
const IMPERSONATE_GROUP_NAME: u16 = 4;
const BUILT_IN_NAMES: [HeaderName; 5] = [
    USER_HEADER,
    EMAIL_HEADER,
    GROUPS_HEADER,
    IMPERSONATE_USER,
    IMPERSONATE_GROUP,
];

impl Default for Identity {
    fn default() -> Self {
        Draft::default().pack(Arc::from(BUILT_IN_NAMES))
    }
}

impl Identity {
    /// `sub`, for logs.
    pub fn subject(&self) -> Option<&str> {
        self.fixed(SUBJECT)
    }

    /// The OAuth client the token was issued to (`client_id`, else `azp`), for logs.
    pub fn client_id(&self) -> Option<&str> {
        self.fixed(CLIENT_ID)
    }

    /// The user name (configured claim, falling back to `sub`).
    pub fn user(&self) -> Option<&str> {
        self.fixed(USER)
    }

    pub fn email(&self) -> Option<&str> {
        self.fixed(EMAIL)
    }

    /// Every group, unfiltered: the policy checks these.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.section(FIXED_PIECES, self.groups)
    }

    /// From `scope` (space-separated) or `scp` (list or string).
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.section(FIXED_PIECES + self.groups as usize, self.scopes)
    }

    /// Ready-to-send response headers; a name may repeat (`Impersonate-Group`). Values
    /// share this identity's buffer: nothing is copied.
    pub fn headers(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let first = FIXED_PIECES + self.groups as usize + self.scopes as usize;
        self.pieces[first.min(self.pieces.len())..]
            .iter()
            .filter_map(|piece| {
                let name = self.names.get(usize::from(piece.name))?.clone();
                let value = self.text.as_bytes().slice(piece.range());
                // Checked when the identity was built; this only re-scans the bytes.
                let value = HeaderValue::from_maybe_shared(value).ok()?;
                Some((name, value))
            })
    }

    fn fixed(&self, index: usize) -> Option<&str> {
        self.pieces
            .get(index)
            .filter(|piece| **piece != ABSENT)
            .map(|piece| &self.text[piece.range()])
    }

    fn section(&self, first: usize, count: u32) -> impl Iterator<Item = &str> {
        let pieces = self
            .pieces
            .get(first..first + count as usize)
            .unwrap_or(&[]);
        pieces.iter().map(|piece| &self.text[piece.range()])
    }
}

impl Piece {
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// An identity while it is being built from claims (on a cache miss only).
#[derive(Default)]
struct Draft {
    subject: Option<String>,
    client_id: Option<String>,
    user: Option<String>,
    email: Option<String>,
    groups: Vec<String>,
    scopes: Vec<String>,
    /// Sanitised, valid header values, with the index of their name.
    headers: Vec<(u16, String)>,
    problem: Option<Reason>,
}

impl Draft {
    /// Packs every string into one buffer. A header value equal to the user or the email
    /// shares its bytes.
    fn pack(self, names: Arc<[HeaderName]>) -> Identity {
        let fixed = [&self.subject, &self.client_id, &self.user, &self.email];
        let strings = fixed.iter().filter_map(|field| field.as_deref());
        let size: usize = strings
            .map(str::len)
            .chain(self.groups.iter().map(String::len))
            .chain(self.scopes.iter().map(String::len))
            .chain(self.headers.iter().map(|(_, value)| value.len()))
            .sum();
        let mut text = String::with_capacity(size);
        let push = |text: &mut String, value: &str, name: u16| {
            let start = text.len() as u32;
            text.push_str(value);
            Piece {
                start,
                end: text.len() as u32,
                name,
            }
        };
        let mut pieces = Vec::with_capacity(
            FIXED_PIECES + self.groups.len() + self.scopes.len() + self.headers.len(),
        );
        for field in fixed {
            let piece = field
                .as_deref()
                .map_or(ABSENT, |value| push(&mut text, value, 0));
            pieces.push(piece);
        }
        for value in self.groups.iter().chain(&self.scopes) {
            pieces.push(push(&mut text, value, 0));
        }
        for (name, value) in &self.headers {
            let same = [USER, EMAIL].into_iter().find_map(|index| {
                let piece = pieces[index];
                (piece != ABSENT && text.get(piece.range()) == Some(value.as_str()))
                    .then_some(piece)
            });
            let piece = match same {
                Some(piece) => Piece {
                    name: *name,
                    ..piece
                },
                None => push(&mut text, value, *name),
            };
            pieces.push(piece);
        }
        Identity {
            text: ByteString::from(text.into_boxed_str()),
            pieces: pieces.into_boxed_slice(),
            groups: self.groups.len() as u32,
            scopes: self.scopes.len() as u32,
            names,
            problem: self.problem,
        }
    }
}

/// How claims map to identity fields, built once from the settings.
#[derive(Debug, Clone)]
pub struct IdentityMapping {
    user: ClaimPath,
    email: ClaimPath,
    groups: ClaimPath,
    max_header_length: usize,
    max_headers_bytes: usize,
    claim_headers: Vec<(HeaderName, ClaimPath)>,
    groups_filter: Option<GroupsFilter>,
    output: IdentityOutput,
    /// Lower-case email → (user, groups).
    impersonation_map: HashMap<String, (String, Vec<String>)>,
    /// The built-in header names, then the claim headers' names.
    names: Arc<[HeaderName]>,
}

#[derive(Debug, Clone)]
struct GroupsFilter {
    prefixes: Vec<String>,
    pattern: Option<Regex>,
}

impl GroupsFilter {
    fn keeps(&self, group: &str) -> bool {
        self.prefixes
            .iter()
            .any(|prefix| group.starts_with(prefix.as_str()))
            || self
                .pattern
                .as_ref()
                .is_some_and(|pattern| pattern.is_match(group))
    }
}

impl IdentityMapping {
    pub fn new(settings: &IdentitySettings) -> Result<Self, ConfigError> {
        if settings.claim_headers.len() > MAX_CLAIM_HEADERS {
            return Err(ConfigError::new(
                "identity.claim_headers",
                format!("at most {MAX_CLAIM_HEADERS} entries"),
            ));
        }
        let claim_headers: Vec<(HeaderName, ClaimPath)> = settings
            .claim_headers
            .iter()
            .enumerate()
            .map(|(index, mapping)| {
                let key = format!("identity.claim_headers[{index}].header");
                let name = HeaderName::from_str(mapping.header.trim())
                    .map_err(|_| ConfigError::new(&key, "not a valid header name"))?;
                let lower = name.as_str();
                if RESERVED_HEADERS.contains(&lower)
                    || RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
                {
                    return Err(ConfigError::new(
                        &key,
                        format!("'{lower}' is reserved and cannot come from a claim"),
                    ));
                }
                if mapping.claim.is_empty() || mapping.claim.split('.').any(str::is_empty) {
                    return Err(ConfigError::new(
                        format!("identity.claim_headers[{index}].claim"),
                        "must be a claim name or a dotted path",
                    ));
                }
                Ok((name, ClaimPath::new(&mapping.claim)))
            })
            .collect::<Result<_, _>>()?;
        let groups_filter = settings
            .groups_filter
            .as_ref()
            .map(|filter| {
                let pattern = filter
                    .pattern
                    .as_deref()
                    .map(Regex::new)
                    .transpose()
                    .map_err(|e| {
                        ConfigError::new(
                            "identity.groups_filter.pattern",
                            e.to_string().replace('\n', " "),
                        )
                    })?;
                if filter.prefixes.is_empty() && pattern.is_none() {
                    return Err(ConfigError::new(
                        "identity.groups_filter",
                        "give prefixes or a pattern",
                    ));
                }
                Ok(GroupsFilter {
                    prefixes: filter.prefixes.clone(),
                    pattern,
                })
            })
            .transpose()?;
        let impersonation_map = settings
            .impersonation_map
            .iter()
            .map(|entry| {
                (
                    entry.email.to_ascii_lowercase(),
                    (entry.user.clone(), entry.groups.clone()),
                )
            })
            .collect();
        let names = BUILT_IN_NAMES
            .into_iter()
            .chain(claim_headers.iter().map(|(name, _)| name.clone()))
            .collect();
        Ok(Self {
            names,
            user: ClaimPath::new(&settings.user_claim),
            email: ClaimPath::new(&settings.email_claim),
            groups: ClaimPath::new(&settings.groups_claim),
            max_header_length: settings.max_header_length,
            max_headers_bytes: settings.max_headers_bytes,
            claim_headers,
            groups_filter,
            output: settings.output,
            impersonation_map,
        })
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

        let scopes = claims
            .get("scope")
            .or_else(|| claims.get("scp"))
            .map(string_list)
            .unwrap_or_default();
        let client_id = claims
            .get("client_id")
            .or_else(|| claims.get("azp"))
            .and_then(scalar_string)
            .map(|id| sanitize(&id, 256));
        let mut identity = Draft {
            subject,
            client_id,
            user,
            email,
            groups,
            scopes,
            headers: Vec::with_capacity(3),
            problem: None,
        };
        match self.output {
            IdentityOutput::Headers => self.push_auth_request_headers(&mut identity),
            IdentityOutput::KubernetesImpersonation => {
                self.push_impersonation_headers(&mut identity)
            }
        }
        for (index, (_, path)) in self.claim_headers.iter().enumerate() {
            let value = path.lookup(claims).and_then(|value| match value {
                Value::Array(_) => Some(string_list(value).join(",")),
                other => scalar_string(other),
            });
            if let Some(value) = value.and_then(|v| header_value(&v, self.max_header_length)) {
                let name = BUILT_IN_NAMES.len() + index;
                identity.headers.push((name as u16, value));
            }
        }
        let bytes: usize = identity
            .headers
            .iter()
            .map(|(name, value)| self.names[usize::from(*name)].as_str().len() + value.len() + 4)
            .sum();
        if bytes > self.max_headers_bytes && identity.problem.is_none() {
            identity.problem = Some(Reason::IdentityTooLarge);
        }
        identity.pack(self.names.clone())
    }

    fn emitted_groups<'a>(&'a self, groups: &'a [String]) -> impl Iterator<Item = &'a String> {
        groups.iter().filter(|group| {
            self.groups_filter
                .as_ref()
                .is_none_or(|filter| filter.keeps(group))
        })
    }

    fn push_auth_request_headers(&self, identity: &mut Draft) {
        let limit = self.max_header_length;
        if let Some(value) = identity
            .user
            .as_deref()
            .and_then(|v| header_value(v, limit))
        {
            identity.headers.push((USER_NAME, value));
        }
        if let Some(value) = identity
            .email
            .as_deref()
            .and_then(|v| header_value(v, limit))
        {
            identity.headers.push((EMAIL_NAME, value));
        }
        let groups: Vec<&String> = self.emitted_groups(&identity.groups).collect();
        if let Some(value) = join_groups(groups, limit) {
            identity.headers.push((GROUPS_NAME, value));
        }
    }

    /// Kubernetes user impersonation: `Impersonate-User` and one `Impersonate-Group` line
    /// per group. Names starting with `system:` never come from a token: a group claim
    /// called `system:masters` would otherwise make its holder cluster-admin. Only the
    /// identity map can grant them. Without a user the request is refused, because
    /// without `Impersonate-User` the API server would act as the proxy itself.
    fn push_impersonation_headers(&self, identity: &mut Draft) {
        let mapped = identity
            .email
            .as_deref()
            .and_then(|email| self.impersonation_map.get(&email.to_ascii_lowercase()));
        let (user, groups): (Option<String>, Vec<String>) = match mapped {
            Some((user, groups)) => (Some(user.clone()), groups.clone()),
            None => (
                identity
                    .user
                    .clone()
                    .filter(|user| !user.starts_with("system:")),
                self.emitted_groups(&identity.groups)
                    .filter(|group| !group.starts_with("system:"))
                    .cloned()
                    .collect(),
            ),
        };
        let limit = self.max_header_length;
        let Some(user) = user.as_deref().and_then(|user| header_value(user, limit)) else {
            identity.problem = Some(Reason::UnusableIdentity);
            return;
        };
        identity.headers.push((IMPERSONATE_USER_NAME, user));
        for group in &groups {
            if let Some(value) = header_value(group, limit) {
                identity.headers.push((IMPERSONATE_GROUP_NAME, value));
            }
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

/// The sanitised value, if it is non-empty and a valid header value.
fn header_value(value: &str, limit: usize) -> Option<String> {
    let clean = sanitize(value, limit);
    let valid = !clean.is_empty() && HeaderValue::from_bytes(clean.as_bytes()).is_ok();
    valid.then_some(clean)
}

/// Comma-joins whole groups up to `limit` bytes: a group is dropped, never cut, so the
/// upstream cannot see a truncated name that happens to be another group.
fn join_groups<'a>(groups: impl IntoIterator<Item = &'a String>, limit: usize) -> Option<String> {
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
    header_value(&joined, limit)
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
        .unwrap()
    }

    #[test]
    fn user_falls_back_to_sub() {
        let identity = mapping("groups").identity(&json!({"sub": "u-1"}));
        assert_eq!(identity.user(), Some("u-1"));
    }

    #[test]
    fn introspection_user_is_claim_then_username_then_sub() {
        let mapping = mapping("groups");
        let answer = json!({"sub": "u-1", "username": "bob"});
        assert_eq!(mapping.introspection_identity(&answer).user(), Some("bob"));
        let answer = json!({"sub": "u-1", "username": "bob", "preferred_username": "alice"});
        assert_eq!(
            mapping.introspection_identity(&answer).user(),
            Some("alice")
        );
        let answer = json!({"sub": "u-1"});
        assert_eq!(mapping.introspection_identity(&answer).user(), Some("u-1"));
        // JWTs keep their mapping: `username` is not a JWT user claim.
        let claims = json!({"sub": "u-1", "username": "bob"});
        assert_eq!(mapping.identity(&claims).user(), Some("u-1"));
    }

    #[test]
    fn dotted_groups_claim() {
        let claims = json!({"realm_access": {"roles": ["admin", "dev"]}});
        let identity = mapping("realm_access.roles").identity(&claims);
        assert_eq!(identity.groups().collect::<Vec<_>>(), ["admin", "dev"]);
    }

    #[test]
    fn claim_name_with_dots_matches_whole() {
        let claims = json!({"https://example.com/groups": ["a"]});
        let identity = mapping("https://example.com/groups").identity(&claims);
        assert_eq!(identity.groups().collect::<Vec<_>>(), ["a"]);
    }

    #[test]
    fn packed_identity_gives_back_every_field_and_header() {
        let claims = json!({
            "sub": "u-1", "azp": "web", "preferred_username": "alice",
            "email": "alice@example.com", "groups": ["ops", "dev"], "scope": "read write",
        });
        let identity = mapping("groups").identity(&claims);
        assert_eq!(identity.subject(), Some("u-1"));
        assert_eq!(identity.client_id(), Some("web"));
        assert_eq!(identity.user(), Some("alice"));
        assert_eq!(identity.email(), Some("alice@example.com"));
        assert_eq!(identity.groups().collect::<Vec<_>>(), ["ops", "dev"]);
        assert_eq!(identity.scopes().collect::<Vec<_>>(), ["read", "write"]);
        let headers: Vec<(String, String)> = identity
            .headers()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect();
        let expected = [
            ("x-auth-request-user", "alice"),
            ("x-auth-request-email", "alice@example.com"),
            ("x-auth-request-groups", "ops,dev"),
        ];
        assert_eq!(headers.len(), expected.len());
        for ((name, value), (want_name, want_value)) in headers.iter().zip(expected) {
            assert_eq!((name.as_str(), value.as_str()), (want_name, want_value));
        }

        let empty = mapping("groups").identity(&json!({}));
        assert_eq!(empty.subject(), None);
        assert_eq!(empty.user(), None);
        assert_eq!(empty.groups().count(), 0);
        assert_eq!(empty.headers().count(), 0);
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
        assert_eq!(value, "group-00,group-01,group-02");
    }
}
