//! Claims → identity headers. Built once per verified token and kept in the cache, so a
//! cache hit only copies ready header values.
//!
//! Every value is cleaned once, when the identity is built ([`clean`]: controls removed,
//! Unicode whitespace trimmed), and then never changed: the policy, the `system:` filter
//! of Kubernetes impersonation and the upstream all see the same string. A value that
//! does not fit a header is left out (or refuses the answer), never cut.

use std::borrow::Cow;
use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;

use bytestring::ByteString;
use http::header::{HeaderName, HeaderValue};
use regex::Regex;
use serde_json::Value;

use crate::config::{
    ConfigError, IdentityOutput, IdentitySettings, ImpersonationEntry, IssuerSettings,
};
use crate::error::Reason;

pub const USER_HEADER: HeaderName = HeaderName::from_static("x-auth-request-user");
pub const EMAIL_HEADER: HeaderName = HeaderName::from_static("x-auth-request-email");
pub const GROUPS_HEADER: HeaderName = HeaderName::from_static("x-auth-request-groups");
pub const IMPERSONATE_USER: HeaderName = HeaderName::from_static("impersonate-user");
pub const IMPERSONATE_GROUP: HeaderName = HeaderName::from_static("impersonate-group");
/// A Kubernetes impersonation header tokengate never sets, and removes where it can.
pub const IMPERSONATE_UID: HeaderName = HeaderName::from_static("impersonate-uid");

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

/// What `bytes` allocates beside a buffer the first time the buffer is shared (the first
/// header value sliced out of an identity): its reference count, the buffer's pointer and
/// its capacity.
const SHARED_BUFFER_HEADER: usize = 3 * std::mem::size_of::<usize>();

impl Identity {
    /// The heap memory this identity holds, in bytes: its text, the header `bytes` adds to
    /// it once it is shared, and the index of pieces. The header name table is shared by
    /// every identity of a mapping and not counted. What the allocator adds per allocation
    /// is not counted either: the cache's entry weight measures it with moka's own
    /// bookkeeping.
    pub fn heap_bytes(&self) -> usize {
        let text = match self.text.len() {
            0 => 0,
            length => length + SHARED_BUFFER_HEADER,
        };
        text + std::mem::size_of_val::<[Piece]>(&self.pieces)
    }

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

    /// The email, only when it is one plain address the issuer did not say is unverified
    /// (see `require_email_verified`); otherwise absent for the policy and the headers.
    pub fn email(&self) -> Option<&str> {
        self.fixed(EMAIL)
    }

    /// Every group the policy checks: each [`clean`]ed exactly as the groups header carries
    /// it, blank ones and ones holding `,` left out. `identity.groups_filter` and the size
    /// limit only shorten the header, never change a name in it.
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
    /// Packs every string into one buffer, sized exactly. The groups sit side by side with
    /// the separator between them, so that the groups header (every group, or the first
    /// ones up to the size limit) is a slice of them; a header value equal to the user, the
    /// email or one group shares its bytes too. Only other values are copied.
    fn pack(self, names: Arc<[HeaderName]>) -> Identity {
        let fixed = [&self.subject, &self.client_id, &self.user, &self.email];
        let size: usize = fixed
            .iter()
            .filter_map(|field| field.as_deref())
            .map(str::len)
            .chain(self.groups.iter().map(|group| group.len() + 1))
            .chain(self.scopes.iter().map(String::len))
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
        for (index, group) in self.groups.iter().enumerate() {
            if index > 0 {
                text.push(GROUP_SEPARATOR);
            }
            pieces.push(push(&mut text, group, 0));
        }
        for scope in &self.scopes {
            pieces.push(push(&mut text, scope, 0));
        }
        let groups = FIXED_PIECES..FIXED_PIECES + self.groups.len();
        let mut next_group = groups.start;
        let shared: Vec<Option<Piece>> = self
            .headers
            .iter()
            .map(|(_, value)| shared_piece(&text, &pieces, groups.clone(), &mut next_group, value))
            .collect();
        let copied: usize = self
            .headers
            .iter()
            .zip(&shared)
            .filter(|(_, shared)| shared.is_none())
            .map(|((_, value), _)| value.len())
            .sum();
        text.reserve_exact(copied);
        for ((name, value), shared) in self.headers.iter().zip(shared) {
            let piece = match shared {
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

/// Where the bytes of `value` already are in `text`, if they are: the user or the email,
/// the start of the groups run (the groups header), or one group. Groups are tried in
/// order from `next_group`, which a match moves past: `Impersonate-Group` values come in
/// the groups' order, so matching them all stays linear.
fn shared_piece(
    text: &str,
    pieces: &[Piece],
    groups: std::ops::Range<usize>,
    next_group: &mut usize,
    value: &str,
) -> Option<Piece> {
    let slice = |piece: Piece| (piece != ABSENT).then(|| &text[piece.range()]);
    if let Some(index) = [USER, EMAIL]
        .into_iter()
        .find(|index| slice(pieces[*index]) == Some(value))
    {
        return Some(pieces[index]);
    }
    if !groups.is_empty() {
        let start = pieces[groups.start].start;
        let run = &text[start as usize..pieces[groups.end - 1].end as usize];
        if run.starts_with(value) {
            return Some(Piece {
                start,
                end: start + value.len() as u32,
                name: 0,
            });
        }
    }
    let offset = pieces[*next_group..groups.end]
        .iter()
        .position(|piece| slice(*piece) == Some(value))?;
    *next_group += offset + 1;
    Some(pieces[*next_group - 1])
}

/// How one issuer's claims are read: the per-issuer `require_email_verified` and
/// `space_separated_groups` settings.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClaimRules {
    /// Use an email only when `email_verified` is present and `true`.
    pub require_email_verified: bool,
    /// A groups claim given as one string lists groups separated by whitespace.
    pub space_separated_groups: bool,
}

impl From<&IssuerSettings> for ClaimRules {
    fn from(issuer: &IssuerSettings) -> Self {
        Self {
            require_email_verified: issuer.require_email_verified,
            space_separated_groups: issuer.space_separated_groups,
        }
    }
}

/// How claims map to identity fields, built once from the settings.
#[derive(Debug, Clone)]
pub struct IdentityMapping {
    user: ClaimPath,
    email: ClaimPath,
    groups: ClaimPath,
    /// The user claim is the email claim (or `email`): the user then follows the email's
    /// rules, so an unverified address cannot become the user either (`Impersonate-User`
    /// with an address anyone can put in their profile).
    user_is_email: bool,
    max_header_length: usize,
    max_headers_bytes: usize,
    claim_headers: Vec<(HeaderName, ClaimPath)>,
    groups_filter: Option<GroupsFilter>,
    output: IdentityOutput,
    /// Lower-case email → (user, groups), cleaned like every header value.
    impersonation_map: HashMap<String, (String, Vec<String>)>,
    /// The built-in header names, then the claim headers' names.
    names: Arc<[HeaderName]>,
    /// Every identity header name tokengate owns, each once (see [`Self::owned_header_names`]).
    owned: Arc<[HeaderName]>,
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
            .enumerate()
            .map(|(index, entry)| impersonation_entry(index, entry))
            .collect::<Result<_, _>>()?;
        let names: Arc<[HeaderName]> = BUILT_IN_NAMES
            .into_iter()
            .chain(claim_headers.iter().map(|(name, _)| name.clone()))
            .collect();
        let mut owned: Vec<HeaderName> = Vec::with_capacity(names.len() + 1);
        for name in names.iter().chain(std::iter::once(&IMPERSONATE_UID)) {
            if !owned.contains(name) {
                owned.push(name.clone());
            }
        }
        Ok(Self {
            names,
            owned: owned.into(),
            user: ClaimPath::new(&settings.user_claim),
            email: ClaimPath::new(&settings.email_claim),
            groups: ClaimPath::new(&settings.groups_claim),
            user_is_email: settings.user_claim == settings.email_claim
                || settings.user_claim == EMAIL_CLAIM,
            max_header_length: settings.max_header_length,
            max_headers_bytes: settings.max_headers_bytes,
            claim_headers,
            groups_filter,
            output: settings.output,
            impersonation_map,
        })
    }

    /// Every identity header name tokengate owns, each once, whichever output is
    /// configured: the `X-Auth-Request-*` names, `Impersonate-User`, `-Group` and `-Uid`
    /// (never set, always owned), then the configured claim headers. Built once with the
    /// mapping. A contract that can remove request headers removes the ones an answer
    /// does not set, so that a client's own never stands in for a claim the token lacks.
    pub fn owned_header_names(&self) -> &[HeaderName] {
        &self.owned
    }

    /// The identity carried by JWT claims, read by the default [`ClaimRules`].
    pub fn identity(&self, claims: &Value) -> Identity {
        self.build(claims, None, ClaimRules::default())
    }

    /// The identity carried by the claims of a JWT, read by its issuer's `rules`: the
    /// configured user claim, else `sub`.
    pub fn jwt_identity(&self, rules: ClaimRules, claims: &Value) -> Identity {
        self.build(claims, None, rules)
    }

    /// The identity in an RFC 7662 introspection answer, read by its issuer's `rules`, with the
    /// same mapping and rules as JWT claims. Introspection names the user `username`
    /// (RFC 7662 §2.2) where JWTs say `preferred_username`, so `username` is tried between
    /// the configured claim and `sub`.
    pub fn introspection_identity(&self, rules: ClaimRules, answer: &Value) -> Identity {
        self.build(answer, Some("username"), rules)
    }

    /// Cleans every value once, here, on the cache miss: the policy then judges exactly
    /// the strings that go on the wire.
    fn build(&self, claims: &Value, fallback: Option<&str>, rules: ClaimRules) -> Identity {
        let subject = claims.get("sub").and_then(scalar_string);
        let email = self.checked_email(&self.email, claims, rules, subject.as_deref());
        // A user claim that holds only controls or spaces is no user: the next candidate
        // is tried, as for a missing claim.
        let configured = match (self.user_is_email, self.user.0 == self.email.0) {
            (true, true) => email.clone(),
            (true, false) => self.checked_email(&self.user, claims, rules, None),
            (false, _) => self.user.lookup(claims).and_then(clean_scalar),
        };
        let user = configured
            .or_else(|| {
                fallback
                    .and_then(|name| claims.get(name))
                    .and_then(clean_scalar)
            })
            .or_else(|| claims.get("sub").and_then(clean_scalar));
        let groups = self
            .groups
            .lookup(claims)
            .map(|value| {
                let space_separated = rules.space_separated_groups;
                group_list(value, space_separated, subject.as_deref(), "group")
            })
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
                Value::Array(_) => {
                    let subject = identity.subject.as_deref();
                    let items = group_list(value, false, subject, "claim header value");
                    join_groups(&items, self.max_header_length)
                }
                other => clean_scalar(other).filter(|v| fits(v, self.max_header_length)),
            });
            if let Some(value) = value {
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

    /// The email, when it may be used at all: the claim is one plain address
    /// ([`is_plain_address`]) and the issuer vouches for it. `email_verified: false` (or
    /// any value other than `true`) means the issuer does not: anyone can put any address
    /// in their profile at many IdPs, and an `allowed_emails` rule or an impersonation map
    /// entry would then trust it (oauth2-proxy refuses such addresses too). A missing
    /// `email_verified` is accepted unless the issuer has `require_email_verified`.
    /// `email_verified` is read at the top level, whatever `email_claim` is (OIDC Core
    /// §5.1). `subject` is for the log lines; `None` keeps them quiet.
    fn checked_email(
        &self,
        path: &ClaimPath,
        claims: &Value,
        rules: ClaimRules,
        subject: Option<&str>,
    ) -> Option<String> {
        let value = path.lookup(claims)?;
        let Some(address) = value.as_str().filter(|address| is_plain_address(address)) else {
            if let Some(subject) = subject {
                tracing::info!(
                    sub = subject,
                    "email left out: the claim is not one plain address"
                );
            }
            return None;
        };
        match claims.get("email_verified") {
            Some(Value::Bool(true)) => {}
            None if !rules.require_email_verified => {}
            verified => {
                if let Some(subject) = subject {
                    tracing::info!(
                        sub = subject,
                        email_verified = verified.map_or("absent", |_| "not true"),
                        "email left out: the issuer does not say it is verified"
                    );
                }
                return None;
            }
        }
        Some(address.to_owned())
    }

    fn emitted_groups<'a>(&'a self, groups: &'a [String]) -> impl Iterator<Item = &'a String> {
        groups.iter().filter(|group| {
            self.groups_filter
                .as_ref()
                .is_none_or(|filter| filter.keeps(group))
        })
    }

    /// The user and the email are never cut: a cut name could be someone else's, so a
    /// value over `max_header_length` refuses the answer instead.
    fn push_auth_request_headers(&self, identity: &mut Draft) {
        let limit = self.max_header_length;
        for (name, value) in [(USER_NAME, &identity.user), (EMAIL_NAME, &identity.email)] {
            match value {
                Some(value) if fits(value, limit) => identity.headers.push((name, value.clone())),
                Some(_) => identity.problem = Some(Reason::IdentityTooLarge),
                None => {}
            }
        }
        let groups: Vec<&String> = self.emitted_groups(&identity.groups).collect();
        if let Some(value) = join_groups(groups, limit) {
            identity.headers.push((GROUPS_NAME, value));
        }
    }

    /// Kubernetes user impersonation: `Impersonate-User` and one `Impersonate-Group` line
    /// per group. Names starting with `system:` never come from a token: a group claim
    /// called `system:masters` would otherwise make its holder cluster-admin. Only the
    /// identity map can grant them. The filter judges the cleaned value, which is exactly
    /// what is sent, and reads it the way the loosest reader downstream could (see
    /// [`is_system_name`]). Without a user the request is refused, because without
    /// `Impersonate-User` the API server would act as the proxy itself.
    fn push_impersonation_headers(&self, identity: &mut Draft) {
        let mapped = identity
            .email
            .as_deref()
            .and_then(|email| self.impersonation_map.get(&email.to_ascii_lowercase()));
        let (user, groups): (Option<&String>, Vec<&String>) = match mapped {
            Some((user, groups)) => (Some(user), groups.iter().collect()),
            None => (
                identity.user.as_ref().filter(|user| !is_system_name(user)),
                self.emitted_groups(&identity.groups)
                    .filter(|group| !is_system_name(group))
                    .collect(),
            ),
        };
        let limit = self.max_header_length;
        let Some(user) = user else {
            identity.problem = Some(Reason::UnusableIdentity);
            return;
        };
        if !fits(user, limit) {
            identity.problem = Some(Reason::IdentityTooLarge);
            return;
        }
        let mut headers = Vec::with_capacity(1 + groups.len());
        headers.push((IMPERSONATE_USER_NAME, user.clone()));
        for group in groups.into_iter().filter(|group| fits(group, limit)) {
            headers.push((IMPERSONATE_GROUP_NAME, group.clone()));
        }
        identity.headers.extend(headers);
    }
}

/// One impersonation map entry, checked and cleaned at start-up like the values a token
/// would give.
fn impersonation_entry(
    index: usize,
    entry: &ImpersonationEntry,
) -> Result<(String, (String, Vec<String>)), ConfigError> {
    let key = |field: &str| format!("identity.impersonation_map[{index}].{field}");
    if !is_plain_address(&entry.email) {
        return Err(ConfigError::new(key("email"), "not a plain email address"));
    }
    let user = clean(&entry.user);
    if user.is_empty() {
        return Err(ConfigError::new(key("user"), "must not be empty"));
    }
    let groups = entry
        .groups
        .iter()
        .map(|group| {
            let clean = clean(group);
            if clean.is_empty() || clean.contains(GROUP_SEPARATOR) {
                return Err(ConfigError::new(
                    key("groups"),
                    format!("'{clean}': a group must be non-empty and hold no ','"),
                ));
            }
            Ok(clean.into_owned())
        })
        .collect::<Result<_, _>>()?;
    Ok((
        entry.email.to_ascii_lowercase(),
        (user.into_owned(), groups),
    ))
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

/// A scalar claim, [`clean`]ed; absent when nothing is left.
fn clean_scalar(value: &Value) -> Option<String> {
    let clean = match value {
        Value::String(text) => clean(text).into_owned(),
        other => scalar_string(other)?,
    };
    (!clean.is_empty()).then_some(clean)
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

/// The OIDC standard email claim, whose `email_verified` says whether it was checked.
const EMAIL_CLAIM: &str = "email";

/// What joins groups in `X-Auth-Request-Groups` (and what proxies use to merge repeated
/// header lines).
const GROUP_SEPARATOR: char = ',';

/// The groups of a groups claim, each [`clean`]ed. A list gives one group per element. A
/// string is one group (`"Finance Admins"` is not the group `Admins`) unless the issuer
/// lists groups space-separated. A group that holds the separator is left out, with a log
/// line: the upstream splits the joined header on `,`, so `a,admins` would reach it as the
/// group `admins`, which the policy never saw.
fn group_list(
    value: &Value,
    space_separated: bool,
    subject: Option<&str>,
    what: &'static str,
) -> Vec<String> {
    let mut groups = Vec::new();
    let mut add = |raw: &str| {
        let group = clean(raw);
        if group.is_empty() {
            return;
        }
        if group.contains(GROUP_SEPARATOR) {
            tracing::info!(
                sub = subject.unwrap_or(""),
                value = %group,
                "{what} left out: it holds ',', which the upstream would read as two values"
            );
            return;
        }
        groups.push(group.into_owned());
    };
    match value {
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::String(text) => add(text),
                    Value::Number(_) | Value::Bool(_) => add(&item.to_string()),
                    _ => {}
                }
            }
        }
        Value::String(text) if space_separated => text.split_whitespace().for_each(add),
        Value::String(text) => add(text),
        _ => {}
    }
    groups
}

/// Removes what would let a claim inject a header line (CR, LF) or what a header may not
/// hold (other control characters), and cuts the value at `limit` bytes on a character
/// boundary. For log fields only: identity header values go through [`clean`] and are
/// never cut.
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

/// A value as it goes on the wire: control characters removed (CR and LF would start a
/// header line; NUL, TAB, NEL and the rest are dropped or mangled by some proxy), then
/// Unicode whitespace trimmed from both ends (NBSP included), because proxies and
/// frameworks trim header values and the upstream would otherwise see another string
/// than the one judged. Borrows when there is nothing to remove.
pub fn clean(value: &str) -> Cow<'_, str> {
    if value.chars().any(char::is_control) {
        let kept: String = value.chars().filter(|ch| !ch.is_control()).collect();
        Cow::Owned(kept.trim().to_owned())
    } else {
        Cow::Borrowed(value.trim())
    }
}

/// True when `name` would read as a `system:` name to a lenient reader: compared with
/// every whitespace, control and invisible formatting character removed, and case
/// ignored, so `" system:masters"`, `"sys\ttem:masters"`, `"SYSTEM:masters"` and
/// `"\u{200B}system:masters"` all count. Names that differ only by such characters are
/// the same name here.
pub fn is_system_name(name: &str) -> bool {
    let mut visible = name.chars().filter(|ch| !is_invisible(*ch));
    "system:".chars().all(|want| {
        visible
            .next()
            .is_some_and(|ch| ch.to_uppercase().eq(want.to_uppercase()))
    })
}

/// Whitespace, controls and the default-ignorable formatting characters (zero-width
/// space and joiners, bidi marks, word joiner, BOM, soft hyphen, variation selectors,
/// tags…): characters a reader may skip without a trace.
fn is_invisible(ch: char) -> bool {
    ch.is_whitespace()
        || ch.is_control()
        || matches!(
            ch,
            '\u{AD}'
                | '\u{34F}'
                | '\u{61C}'
                | '\u{115F}'..='\u{1160}'
                | '\u{17B4}'..='\u{17B5}'
                | '\u{180B}'..='\u{180F}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{206F}'
                | '\u{3164}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF0}'..='\u{FFF8}'
                | '\u{E0000}'..='\u{E0FFF}'
        )
}

/// One plain RFC 5321/5322 address, the only form used as an email: a dot-atom local part
/// (at most 64 bytes), exactly one `@`, and a domain of LDH labels (letters, digits,
/// inner hyphens; 1–63 bytes each, no trailing dot), ASCII only, at most 254 bytes. Quoted
/// local parts, comments, domain literals, spaces and controls are refused: parsers
/// disagree on them (`"a@b"@evil.com` has an `@` in its local part), so the policy and
/// the upstream could read two different domains from one string.
pub fn is_plain_address(address: &str) -> bool {
    const ATEXT_SPECIALS: &[u8] = b"!#$%&'*+-/=?^_`{|}~";
    let Some((local, domain)) = address.split_once('@') else {
        return false;
    };
    let atom = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || ATEXT_SPECIALS.contains(&b))
    };
    let label = |part: &str| {
        (1..=63).contains(&part.len())
            && part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !part.starts_with('-')
            && !part.ends_with('-')
    };
    address.len() <= 254
        && local.len() <= 64
        && local.split('.').all(atom)
        && domain.split('.').all(label)
}

/// Whether a cleaned value fits one header; a value that does not is left out, or
/// refuses the answer, but is never cut.
fn fits(value: &str, limit: usize) -> bool {
    !value.is_empty() && value.len() <= limit
}

/// Comma-joins whole groups (already [`clean`]ed, none holding `,`) up to `limit` bytes:
/// a group is dropped, never cut, so the upstream cannot see a truncated name that
/// happens to be another group.
fn join_groups<'a>(groups: impl IntoIterator<Item = &'a String>, limit: usize) -> Option<String> {
    let mut joined = String::new();
    for group in groups {
        let extra = group.len() + usize::from(!joined.is_empty());
        if joined.len() + extra > limit {
            tracing::debug!(
                limit,
                "groups header reached its size limit; later groups left out"
            );
            break;
        }
        if !joined.is_empty() {
            joined.push(GROUP_SEPARATOR);
        }
        joined.push_str(group);
    }
    (!joined.is_empty()).then_some(joined)
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

    /// A mapping and the claim rules of the issuer it reads for.
    struct ForIssuer(IdentityMapping, ClaimRules);

    impl ForIssuer {
        fn jwt_identity(&self, claims: &Value) -> Identity {
            self.0.jwt_identity(self.1, claims)
        }

        fn introspection_identity(&self, answer: &Value) -> Identity {
            self.0.introspection_identity(self.1, answer)
        }
    }

    fn with_rules(mapping: IdentityMapping, rules: ClaimRules) -> ForIssuer {
        ForIssuer(mapping, rules)
    }

    fn impersonation(settings: IdentitySettings) -> IdentityMapping {
        IdentityMapping::new(&IdentitySettings {
            output: IdentityOutput::KubernetesImpersonation,
            ..settings
        })
        .unwrap()
    }

    fn headers(identity: &Identity) -> Vec<(String, String)> {
        identity
            .headers()
            .map(|(name, value)| (name.to_string(), value.to_str().unwrap().to_owned()))
            .collect()
    }

    fn header_values(identity: &Identity, name: &str) -> Vec<String> {
        headers(identity)
            .into_iter()
            .filter(|(header, _)| header == name)
            .map(|(_, value)| value)
            .collect()
    }

    /// Independent of `is_system_name`: what the API server, or a proxy that trims or
    /// drops odd characters, could read as a `system:` name.
    fn reads_as_system(value: &str) -> bool {
        let visible: String = value
            .chars()
            .filter(|ch| !ch.is_whitespace() && !ch.is_control() && *ch != '\u{200B}')
            .collect();
        visible.to_ascii_lowercase().starts_with("system:")
    }

    const FORGED_SYSTEM_NAMES: &[&str] = &[
        "system:masters",
        "\tsystem:masters",
        "\u{0}system:masters",
        "\u{85}system:masters",
        "\u{A0}system:masters",
        " system:masters",
        "system:masters ",
        "\r\nsystem:masters",
        "sys\ttem:masters",
        "sys tem:masters",
        "SYSTEM:masters",
        "System:Masters",
        "\u{200B}system:masters",
        "\u{FEFF}system:masters",
        "\u{3000}system:masters",
        "system\u{7F}:masters",
        "system :masters",
    ];

    #[test]
    fn clean_removes_controls_then_trims_unicode_whitespace() {
        assert_eq!(clean("alice"), "alice");
        assert!(matches!(clean(" alice "), Cow::Borrowed("alice")));
        assert_eq!(clean("\talice\r\n"), "alice");
        assert_eq!(clean("\u{85}alice\u{0}"), "alice");
        assert_eq!(clean("\u{A0}alice\u{2003}"), "alice");
        assert_eq!(clean("\u{0} \u{A0}"), "");
        // Inside a value, controls go and spaces stay.
        assert_eq!(clean("sys\ttem"), "system");
        assert_eq!(clean("Finance Admins"), "Finance Admins");
    }

    #[test]
    fn system_names_are_judged_without_whitespace_controls_or_case() {
        for name in FORGED_SYSTEM_NAMES {
            assert!(is_system_name(name), "{name:?}");
        }
        for name in ["systemd", "sys-admins", "my-system:x", "system", "", "   "] {
            assert!(!is_system_name(name), "{name:?}");
        }
    }

    #[test]
    fn forged_system_groups_never_reach_impersonate_group() {
        let mapping = impersonation(IdentitySettings::default());
        let mut groups: Vec<&str> = FORGED_SYSTEM_NAMES.to_vec();
        groups.push("developers");
        let identity = mapping.identity(&json!({"sub": "u-1", "groups": groups}));
        assert_eq!(identity.problem, None);
        assert_eq!(header_values(&identity, "impersonate-user"), ["u-1"]);
        let sent = header_values(&identity, "impersonate-group");
        assert_eq!(sent, ["developers"]);
        for (_, value) in headers(&identity) {
            assert!(!reads_as_system(&value), "{value:?}");
        }
    }

    #[test]
    fn forged_system_users_are_refused() {
        let mapping = impersonation(IdentitySettings::default());
        for name in FORGED_SYSTEM_NAMES {
            let claims = json!({"sub": "u-1", "preferred_username": name});
            let identity = mapping.identity(&claims);
            assert_eq!(identity.problem, Some(Reason::UnusableIdentity), "{name:?}");
            assert!(
                headers(&identity).iter().all(|(_, v)| !reads_as_system(v)),
                "{name:?}"
            );
        }
    }

    #[test]
    fn impersonation_values_are_cleaned_and_the_map_may_grant_system_names() {
        let mapping = impersonation(IdentitySettings {
            impersonation_map: vec![ImpersonationEntry {
                email: "Root@Example.com".into(),
                user: " root\t".into(),
                groups: vec!["system:masters".into()],
            }],
            ..IdentitySettings::default()
        });
        let claims = json!({"preferred_username": "\u{A0}alice\u{0}", "groups": ["\tdev "]});
        let identity = mapping.identity(&claims);
        assert_eq!(header_values(&identity, "impersonate-user"), ["alice"]);
        assert_eq!(header_values(&identity, "impersonate-group"), ["dev"]);

        let claims = json!({"sub": "u-1", "email": "root@example.com", "email_verified": true});
        let identity = mapping.identity(&claims);
        assert_eq!(header_values(&identity, "impersonate-user"), ["root"]);
        assert_eq!(
            header_values(&identity, "impersonate-group"),
            ["system:masters"]
        );
    }

    #[test]
    fn every_header_value_is_cleaned_and_policy_sees_the_same_values() {
        let mapping = IdentityMapping::new(&IdentitySettings {
            claim_headers: vec![crate::config::ClaimHeaderSettings {
                header: "X-Auth-Request-Tenant".into(),
                claim: "tenant".into(),
            }],
            ..IdentitySettings::default()
        })
        .unwrap();
        let claims = json!({
            "preferred_username": " alice\t", "email": "alice@example.com",
            "groups": ["\u{A0}admins ", "\u{85}dev", "\u{0}", " "], "tenant": "\tacme\u{85}",
        });
        let identity = mapping.identity(&claims);
        assert_eq!(identity.user(), Some("alice"));
        assert_eq!(identity.groups().collect::<Vec<_>>(), ["admins", "dev"]);
        assert_eq!(
            headers(&identity),
            [
                ("x-auth-request-user".into(), "alice".into()),
                ("x-auth-request-email".into(), "alice@example.com".into()),
                ("x-auth-request-groups".into(), "admins,dev".into()),
                ("x-auth-request-tenant".into(), "acme".into()),
            ]
        );
    }

    #[test]
    fn a_blank_user_claim_falls_back_like_a_missing_one() {
        let identity =
            mapping("groups").identity(&json!({"sub": "u-1", "preferred_username": "\t "}));
        assert_eq!(identity.user(), Some("u-1"));
    }

    #[test]
    fn values_over_the_limit_are_never_cut() {
        let long = "a".repeat(65);
        let identity = mapping("groups").identity(&json!({"preferred_username": long}));
        assert_eq!(identity.problem, Some(Reason::IdentityTooLarge));
        let identity = mapping("groups").identity(&json!({"sub": "u-1", "groups": [long, "dev"]}));
        assert_eq!(
            header_values(&identity, "x-auth-request-groups"),
            Vec::<String>::new()
        );
        let identity = impersonation(IdentitySettings {
            max_header_length: 64,
            ..IdentitySettings::default()
        })
        .identity(&json!({"sub": "u-1", "groups": ["dev", long]}));
        assert_eq!(header_values(&identity, "impersonate-group"), ["dev"]);
    }

    #[test]
    fn unverified_email_is_not_used_at_all() {
        let mapping = mapping("groups");
        for verified in [
            json!(false),
            json!("true"),
            json!(1),
            json!(null),
            json!("yes"),
        ] {
            let claims =
                json!({"sub": "u-1", "email": "alice@example.com", "email_verified": verified});
            let identity = mapping.identity(&claims);
            assert_eq!(identity.email(), None, "{verified}");
            assert!(header_values(&identity, "x-auth-request-email").is_empty());
        }
        let claims = json!({"sub": "u-1", "email": "alice@example.com", "email_verified": true});
        assert_eq!(mapping.identity(&claims).email(), Some("alice@example.com"));
    }

    #[test]
    fn absent_email_verified_follows_the_issuer_setting() {
        let claims = json!({"sub": "u-1", "email": "alice@example.com"});
        let verified = json!({"sub": "u-1", "email": "alice@example.com", "email_verified": true});
        let lenient = with_rules(mapping("groups"), ClaimRules::default());
        assert_eq!(
            lenient.jwt_identity(&claims).email(),
            Some("alice@example.com")
        );
        let strict = with_rules(
            mapping("groups"),
            ClaimRules {
                require_email_verified: true,
                ..ClaimRules::default()
            },
        );
        assert_eq!(strict.jwt_identity(&claims).email(), None);
        assert_eq!(strict.introspection_identity(&claims).email(), None);
        assert_eq!(
            strict.jwt_identity(&verified).email(),
            Some("alice@example.com")
        );
    }

    #[test]
    fn introspection_answers_follow_the_email_rule() {
        let answer = json!({"active": true, "sub": "u-2", "email": "bob@example.com", "email_verified": false});
        assert_eq!(
            mapping("groups")
                .introspection_identity(ClaimRules::default(), &answer)
                .email(),
            None
        );
    }

    #[test]
    fn unverified_email_does_not_match_the_impersonation_map() {
        let mapping = impersonation(IdentitySettings {
            impersonation_map: vec![ImpersonationEntry {
                email: "root@example.com".into(),
                user: "root".into(),
                groups: vec!["system:masters".into()],
            }],
            ..IdentitySettings::default()
        });
        let claims = json!({"sub": "u-1", "email": "root@example.com", "email_verified": false});
        let identity = mapping.identity(&claims);
        assert_eq!(header_values(&identity, "impersonate-user"), ["u-1"]);
        assert!(header_values(&identity, "impersonate-group").is_empty());
    }

    #[test]
    fn an_unverified_email_does_not_become_the_user_either() {
        let mapping = impersonation(IdentitySettings {
            user_claim: "email".into(),
            ..IdentitySettings::default()
        });
        let claims = json!({"sub": "u-1", "email": "root@example.com", "email_verified": false});
        assert_eq!(mapping.identity(&claims).user(), Some("u-1"));
        let claims = json!({"sub": "u-1", "email": "a@b@example.com"});
        assert_eq!(mapping.identity(&claims).user(), Some("u-1"));
        let claims = json!({"sub": "u-1", "email": "root@example.com"});
        assert_eq!(mapping.identity(&claims).user(), Some("root@example.com"));
    }

    #[test]
    fn only_a_plain_address_is_an_email() {
        for address in [
            "alice@example.com",
            "a.b+tag@sub.example.co",
            "o'brien@example.ie",
            "x@localhost",
            "UPPER@Example.COM",
        ] {
            assert!(is_plain_address(address), "{address:?}");
        }
        for address in [
            "a@b@example.com",
            "\"a@b\"@evil.com",
            "\"alice\"@example.com",
            "alice example@example.com",
            " alice@example.com",
            "alice@example.com\n",
            "alice@example.com\u{0}",
            "ålice@example.com",
            "alice@exämple.com",
            "@example.com",
            "alice@",
            "alice",
            "",
            ".alice@example.com",
            "alice.@example.com",
            "al..ice@example.com",
            "alice@example.com.",
            "alice@.example.com",
            "alice@-example.com",
            "alice@example-.com",
            "alice@exa_mple.com",
            "alice@[192.0.2.1]",
            "alice(comment)@example.com",
            "alice@example.com (Alice)",
            "<alice@example.com>",
            "alice@evil.com,bob@example.com",
        ] {
            assert!(!is_plain_address(address), "{address:?}");
            let claims = json!({"sub": "u-1", "email": address});
            assert_eq!(
                mapping("groups").identity(&claims).email(),
                None,
                "{address:?}"
            );
        }
        assert!(!is_plain_address(&format!(
            "{}@example.com",
            "a".repeat(65)
        )));
        assert!(!is_plain_address(&format!("a@{}.com", "b".repeat(64))));
        assert!(!is_plain_address(&format!(
            "a@{}",
            vec!["b".repeat(60); 5].join(".")
        )));
        assert_eq!(
            mapping("groups").identity(&json!({"email": 42})).email(),
            None
        );
    }

    #[test]
    fn groups_holding_the_separator_are_dropped_for_policy_and_header() {
        let claims = json!({"sub": "u-1", "groups": ["a,admins", "dev", " ,admins"]});
        let identity = mapping("groups").identity(&claims);
        assert_eq!(identity.groups().collect::<Vec<_>>(), ["dev"]);
        assert_eq!(header_values(&identity, "x-auth-request-groups"), ["dev"]);
        let identity = impersonation(IdentitySettings::default()).identity(&claims);
        assert_eq!(header_values(&identity, "impersonate-group"), ["dev"]);
    }

    #[test]
    fn a_string_groups_claim_is_one_group_unless_space_separated() {
        let claims = json!({"sub": "u-1", "groups": "Finance Admins"});
        let identity = mapping("groups").identity(&claims);
        assert_eq!(identity.groups().collect::<Vec<_>>(), ["Finance Admins"]);
        let spaced = with_rules(
            mapping("groups"),
            ClaimRules {
                space_separated_groups: true,
                ..ClaimRules::default()
            },
        );
        let identity = spaced.jwt_identity(&claims);
        assert_eq!(identity.groups().collect::<Vec<_>>(), ["Finance", "Admins"]);
        let identity = spaced.jwt_identity(&json!({"groups": "a,b c"}));
        assert_eq!(identity.groups().collect::<Vec<_>>(), ["c"]);
        let identity = mapping("groups").identity(&json!({"groups": " admins\t"}));
        assert_eq!(identity.groups().collect::<Vec<_>>(), ["admins"]);
    }

    #[test]
    fn claim_header_lists_drop_elements_holding_the_separator() {
        let mapping = IdentityMapping::new(&IdentitySettings {
            claim_headers: vec![crate::config::ClaimHeaderSettings {
                header: "X-Auth-Request-Roles".into(),
                claim: "roles".into(),
            }],
            ..IdentitySettings::default()
        })
        .unwrap();
        let identity = mapping.identity(&json!({"roles": ["reader", "x,admin", " writer\t", 7]}));
        assert_eq!(
            header_values(&identity, "x-auth-request-roles"),
            ["reader,writer,7"]
        );
    }

    #[test]
    fn impersonation_map_entries_are_checked_at_start_up() {
        let entry = |email: &str, user: &str, group: &str| IdentitySettings {
            impersonation_map: vec![ImpersonationEntry {
                email: email.into(),
                user: user.into(),
                groups: vec![group.into()],
            }],
            ..IdentitySettings::default()
        };
        let key = |settings: IdentitySettings| IdentityMapping::new(&settings).unwrap_err().key;
        assert_eq!(
            key(entry("a@b@example.com", "a", "g")),
            "identity.impersonation_map[0].email"
        );
        assert_eq!(
            key(entry("a@example.com", " \t", "g")),
            "identity.impersonation_map[0].user"
        );
        assert_eq!(
            key(entry("a@example.com", "a", "x,system:masters")),
            "identity.impersonation_map[0].groups"
        );
        assert!(IdentityMapping::new(&entry("a@example.com", "a", "system:masters")).is_ok());
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
        assert_eq!(
            mapping
                .introspection_identity(ClaimRules::default(), &answer)
                .user(),
            Some("bob")
        );
        let answer = json!({"sub": "u-1", "username": "bob", "preferred_username": "alice"});
        assert_eq!(
            mapping
                .introspection_identity(ClaimRules::default(), &answer)
                .user(),
            Some("alice")
        );
        let answer = json!({"sub": "u-1"});
        assert_eq!(
            mapping
                .introspection_identity(ClaimRules::default(), &answer)
                .user(),
            Some("u-1")
        );
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
    fn header_values_share_the_bytes_of_the_user_the_email_and_the_groups() {
        let groups: Vec<String> = (0..40)
            .map(|i| format!("/tenants/acme/team-{i:02}"))
            .collect();
        let claims = json!({
            "sub": "u-1", "preferred_username": "alice", "email": "alice@example.com",
            "groups": groups,
        });
        let strings = "u-1alicealice@example.com".len();
        let groups_run = groups.iter().map(String::len).sum::<usize>() + groups.len() - 1;
        let text_bytes = |identity: &Identity| {
            identity.heap_bytes() - std::mem::size_of_val::<[Piece]>(&identity.pieces)
        };
        let headers_output = IdentityMapping::new(&IdentitySettings::default()).unwrap();
        // The whole groups header, a prefix of it (64-byte limit), one line per group:
        // nothing is copied.
        for mapping in [
            headers_output.clone(),
            mapping("groups"),
            impersonation(IdentitySettings::default()),
        ] {
            let identity = mapping.identity(&claims);
            assert_eq!(identity.problem, None);
            assert_eq!(
                text_bytes(&identity),
                strings + groups_run + SHARED_BUFFER_HEADER
            );
        }
        let identity = headers_output.identity(&claims);
        assert_eq!(
            header_values(&identity, "x-auth-request-groups"),
            [groups.join(",")]
        );
        let identity = mapping("groups").identity(&claims);
        assert_eq!(
            header_values(&identity, "x-auth-request-groups"),
            [groups[..2].join(",")]
        );
        let identity = impersonation(IdentitySettings::default()).identity(&claims);
        assert_eq!(header_values(&identity, "impersonate-group"), groups);

        // A filtered groups header is not a slice of the groups: it is copied.
        let filtered = IdentityMapping::new(&IdentitySettings {
            groups_filter: Some(crate::config::GroupsFilterSettings {
                prefixes: vec![],
                pattern: Some("team-0[13]".into()),
            }),
            ..IdentitySettings::default()
        })
        .unwrap();
        let identity = filtered.identity(&claims);
        let sent = "/tenants/acme/team-01,/tenants/acme/team-03";
        assert_eq!(header_values(&identity, "x-auth-request-groups"), [sent]);
        assert_eq!(
            text_bytes(&identity),
            strings + groups_run + sent.len() + SHARED_BUFFER_HEADER
        );
        assert_eq!(Identity::default().heap_bytes(), FIXED_PIECES * 12);
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
