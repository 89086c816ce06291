//! Who may pass: per-route requirements from the auth URL's query string (as
//! oauth2-proxy users write them) and route rules from the config, matched on the
//! original request. Plain functions, so tests can call them without HTTP.

use globset::{GlobBuilder, GlobMatcher};

use crate::config::{ConfigError, RuleSettings};
use crate::error::{AuthError, Reason};
use crate::identity::Identity;
use crate::request::OriginalRequest;

/// Requirements on a verified identity. Every non-empty list must be satisfied; within a
/// list, any value matches.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirements {
    pub groups: Vec<String>,
    /// Lower-case addresses.
    pub emails: Vec<String>,
    /// Lower-case domains; `*.example.com` also matches subdomains.
    pub email_domains: Vec<String>,
    /// All of these must be in the token's `scope`/`scp`.
    pub scopes: Vec<String>,
}

impl Requirements {
    /// Parses `allowed_groups`, `allowed_emails`, `allowed_email_domains` and
    /// `required_scopes` from a query string: comma-separated and repeatable. Any other
    /// parameter is refused: a typo such as `allowed_group=` must not silently turn a
    /// restricted route into one open to every valid token.
    pub fn from_query(query: &str) -> Result<Self, AuthError> {
        Self::from_pairs(url::form_urlencoded::parse(query.as_bytes()))
    }

    /// The same keys and values as [`Requirements::from_query`], given as name/value
    /// pairs (Envoy's `context_extensions`); an unknown name is refused alike.
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Result<Self, AuthError>
    where
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut requirements = Self::default();
        for (name, value) in pairs {
            let list = match name.as_ref() {
                "allowed_groups" => &mut requirements.groups,
                "allowed_emails" => &mut requirements.emails,
                "allowed_email_domains" => &mut requirements.email_domains,
                "required_scopes" => &mut requirements.scopes,
                _ => return Err(Reason::BadPolicy.into()),
            };
            list.extend(
                value
                    .as_ref()
                    .split(',')
                    .map(str::trim)
                    .filter(|item| !item.is_empty())
                    .map(str::to_owned),
            );
        }
        requirements.normalize();
        Ok(requirements)
    }

    /// Builds requirements from lists given in the config.
    pub fn from_lists(
        groups: &[String],
        emails: &[String],
        email_domains: &[String],
        scopes: &[String],
    ) -> Self {
        let mut requirements = Self {
            groups: groups.to_vec(),
            emails: emails.to_vec(),
            email_domains: email_domains.to_vec(),
            scopes: scopes.to_vec(),
        };
        requirements.normalize();
        requirements
    }

    fn normalize(&mut self) {
        for email in &mut self.emails {
            *email = email.to_ascii_lowercase();
        }
        for domain in &mut self.email_domains {
            *domain = domain.trim_start_matches('@').trim().to_ascii_lowercase();
        }
        // `allowed_email_domains=@` names no domain: it must not become an empty one.
        self.email_domains.retain(|domain| !domain.is_empty());
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
            && self.emails.is_empty()
            && self.email_domains.is_empty()
            && self.scopes.is_empty()
    }

    /// Checks a verified identity; the denial names which requirement failed.
    pub fn check(&self, identity: &Identity) -> Result<(), AuthError> {
        if !self.groups.is_empty()
            && !self
                .groups
                .iter()
                .any(|group| identity.groups().any(|held| held == group))
        {
            return Err(Reason::NotInGroup.into());
        }
        let email = identity.email().map(str::to_ascii_lowercase);
        if !self.emails.is_empty()
            && !email
                .as_ref()
                .is_some_and(|email| self.emails.contains(email))
        {
            return Err(Reason::EmailNotAllowed.into());
        }
        if !self.email_domains.is_empty() {
            let domain = email
                .as_deref()
                .and_then(|email| email.rsplit_once('@'))
                .map(|(_, domain)| domain);
            let allowed = domain.is_some_and(|domain| {
                self.email_domains
                    .iter()
                    .any(|allowed| domain_matches(allowed, domain))
            });
            if !allowed {
                return Err(Reason::EmailNotAllowed.into());
            }
        }
        if !self
            .scopes
            .iter()
            .all(|scope| identity.scopes().any(|held| held == scope))
        {
            return Err(Reason::InsufficientScope.into());
        }
        Ok(())
    }
}

fn domain_matches(allowed: &str, domain: &str) -> bool {
    match allowed.strip_prefix("*.") {
        Some(parent) => domain.ends_with(&format!(".{parent}")),
        None => allowed == domain,
    }
}

/// What a matching rule does before any token is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Refuse whatever the token.
    Deny,
    /// Let through without a token and without identity headers.
    Anonymous,
    /// Require a valid token that meets the rule's requirements.
    Authenticated,
}

/// How a rule's conditions are compared with the request. Upstream frameworks differ
/// (Express and ASP.NET route case-insensitively, many ignore a trailing slash), so a
/// rule is read the way that can never open more than the operator wrote: a grant only
/// where it holds exactly, a restriction wherever some upstream might read it as holding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Grants (anonymous access, CORS preflights): exact, case-sensitive; an unknown
    /// part of the request never matches.
    Narrow,
    /// Restrictions (deny, requirements, a token at all): case-insensitive, with or
    /// without a trailing slash, globs also covering everything below them; an unknown
    /// part of the request always matches.
    Broad,
}

/// A compiled route rule.
#[derive(Debug)]
pub struct Rule {
    pub name: String,
    hosts: Vec<HostPattern>,
    paths: Vec<PathPattern>,
    /// Upper-case, as configured.
    methods: Vec<String>,
    pub access: Access,
    allow_cors_preflight: bool,
    pub requirements: Requirements,
}

#[derive(Debug)]
enum HostPattern {
    Exact(String),
    /// `*.example.com`: any subdomain, not the apex.
    Subdomain(String),
}

#[derive(Debug)]
enum PathPattern {
    /// `/admin` matches `/admin` and `/admin/…` (whole segments, not `/administrator`);
    /// `/static/` matches everything below it. `lower` is the broad reading's form.
    Prefix { exact: String, lower: String },
    /// A glob: `*` within one segment, `**` across segments. `lower` is compiled
    /// case-insensitively for the broad reading.
    Glob {
        exact: GlobMatcher,
        lower: GlobMatcher,
    },
}

impl Rule {
    fn compile(index: usize, settings: &RuleSettings) -> Result<Self, ConfigError> {
        let key = |field: &str| format!("rules[{index}].{field}");
        if settings.deny && settings.allow_anonymous {
            return Err(ConfigError::new(
                key("deny"),
                "a rule cannot both deny and allow anonymous access",
            ));
        }
        let requirements = Requirements::from_lists(
            &settings.allowed_groups,
            &settings.allowed_emails,
            &settings.allowed_email_domains,
            &settings.required_scopes,
        );
        if (settings.deny || settings.allow_anonymous) && !requirements.is_empty() {
            return Err(ConfigError::new(
                key("allowed_groups"),
                "requirements make no sense on a deny or allow_anonymous rule",
            ));
        }
        let hosts = settings
            .hosts
            .iter()
            .map(|host| {
                let host = host.trim().to_ascii_lowercase();
                match host.strip_prefix("*.") {
                    Some(parent) if !parent.is_empty() && !parent.contains('*') => {
                        Ok(HostPattern::Subdomain(format!(".{parent}")))
                    }
                    _ if host.is_empty() || host.contains('*') => Err(ConfigError::new(
                        key("hosts"),
                        format!("'{host}' is not a host or *.domain pattern"),
                    )),
                    _ => Ok(HostPattern::Exact(host)),
                }
            })
            .collect::<Result<_, _>>()?;
        let paths = settings
            .paths
            .iter()
            .map(|path| compile_path(path).map_err(|reason| ConfigError::new(key("paths"), reason)))
            .collect::<Result<_, _>>()?;
        let access = if settings.deny {
            Access::Deny
        } else if settings.allow_anonymous {
            Access::Anonymous
        } else {
            Access::Authenticated
        };
        Ok(Self {
            name: settings
                .name
                .clone()
                .unwrap_or_else(|| format!("rules[{index}]")),
            hosts,
            paths,
            methods: settings
                .methods
                .iter()
                .map(|method| method.trim().to_ascii_uppercase())
                .collect(),
            access,
            allow_cors_preflight: settings.allow_cors_preflight,
            requirements,
        })
    }

    /// True when the rule has a condition on the request (host, path or method).
    fn is_conditional(&self) -> bool {
        !self.hosts.is_empty() || !self.paths.is_empty() || !self.methods.is_empty()
    }

    /// True when every condition of the rule holds in `reading`. `broad_path` is the
    /// request's path in [`broad_form`], computed once for all rules.
    fn matches(
        &self,
        original: &OriginalRequest,
        broad_path: Option<&str>,
        reading: Reading,
    ) -> bool {
        let unknown = reading == Reading::Broad;
        let host_ok = self.hosts.is_empty()
            || original.host.as_deref().map_or(unknown, |host| {
                self.hosts.iter().any(|pattern| match pattern {
                    HostPattern::Exact(exact) => host == exact,
                    HostPattern::Subdomain(suffix) => host.ends_with(suffix.as_str()),
                })
            });
        let path = match reading {
            Reading::Narrow => original.path.as_deref(),
            Reading::Broad => broad_path,
        };
        let path_ok = self.paths.is_empty()
            || path.map_or(unknown, |path| {
                self.paths.iter().any(|pattern| match reading {
                    Reading::Narrow => pattern.holds(path),
                    Reading::Broad => pattern.holds_broadly(path),
                })
            });
        let method_ok = self.methods.is_empty()
            || original.method.as_deref().map_or(unknown, |method| {
                self.methods.iter().any(|allowed| match reading {
                    Reading::Narrow => allowed == method,
                    Reading::Broad => allowed.eq_ignore_ascii_case(method),
                })
            });
        host_ok && path_ok && method_ok
    }

    /// How this rule is read: an anonymous rule is a grant, every other rule restricts.
    fn reading(&self) -> Reading {
        match self.access {
            Access::Anonymous => Reading::Narrow,
            Access::Deny | Access::Authenticated => Reading::Broad,
        }
    }

    /// Whether this rule lets a CORS preflight through without a token: browsers never
    /// send credentials on a preflight, so requiring one would break every cross-origin
    /// call. It is a grant, so the rule must hold in its exact reading.
    pub fn lets_preflight_through(&self, original: &OriginalRequest) -> bool {
        self.allow_cors_preflight && self.matches(original, None, Reading::Narrow)
    }
}

fn compile_path(path: &str) -> Result<PathPattern, String> {
    if !path.starts_with('/') {
        return Err(format!("'{path}' must start with /"));
    }
    if !path.contains(['*', '?', '[', '{']) {
        return Ok(PathPattern::Prefix {
            exact: path.to_owned(),
            lower: path.to_lowercase(),
        });
    }
    // `literal_separator`: `*` stays within one segment, as documented; only `**`
    // crosses `/`. Without it `/assets/*.css` would match `/assets/admin/x.css`.
    let glob = |case_insensitive: bool| {
        GlobBuilder::new(path)
            .literal_separator(true)
            .case_insensitive(case_insensitive)
            .build()
            .map(|glob| glob.compile_matcher())
            .map_err(|e| e.to_string())
    };
    Ok(PathPattern::Glob {
        exact: glob(false)?,
        lower: glob(true)?,
    })
}

/// The broad reading of a path: lower-case, without a trailing slash.
fn broad_form(path: &str) -> String {
    let lower = path.to_lowercase();
    match lower.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed.to_owned(),
        _ => lower,
    }
}

impl PathPattern {
    fn holds(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix { exact, .. } => prefix_matches(exact, path),
            PathPattern::Glob { exact, .. } => exact.is_match(path),
        }
    }

    /// `path` is in [`broad_form`]. A glob restriction covers what lies below a path it
    /// matches, as a prefix does: `/api/*/admin` also restricts `/api/v1/admin/users`.
    fn holds_broadly(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix { lower, .. } => {
                prefix_matches(lower.strip_suffix('/').unwrap_or(lower), path)
                    || prefix_matches(lower, path)
            }
            PathPattern::Glob { lower, .. } => {
                lower.is_match(path)
                    || path
                        .match_indices('/')
                        .skip(1)
                        .any(|(end, _)| lower.is_match(&path[..end]))
            }
        }
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() {
        return true;
    }
    if prefix.ends_with('/') {
        return path.starts_with(prefix);
    }
    path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The configured rules, in order.
#[derive(Debug, Default)]
pub struct RouteRules {
    rules: Vec<Rule>,
}

impl RouteRules {
    pub fn new(settings: &[RuleSettings]) -> Result<Self, ConfigError> {
        let rules = settings
            .iter()
            .enumerate()
            .map(|(index, rule)| Rule::compile(index, rule))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    /// True when some rule depends on the request's host, path or method: then every
    /// verdict does, since any request might have matched it.
    pub fn are_conditional(&self) -> bool {
        self.rules.iter().any(Rule::is_conditional)
    }

    /// The first rule whose conditions hold in its reading. Anonymous rules are skipped
    /// unless `grants_apply`.
    pub fn first_match(&self, original: &OriginalRequest, grants_apply: bool) -> Option<&Rule> {
        if self.rules.is_empty() {
            return None;
        }
        let broad_path = original.path.as_deref().map(broad_form);
        self.rules
            .iter()
            .filter(|rule| grants_apply || rule.access != Access::Anonymous)
            .find(|rule| rule.matches(original, broad_path.as_deref(), rule.reading()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(groups: &[&str], email: &str, scopes: &[&str]) -> Identity {
        let mapping = crate::identity::IdentityMapping::new(&Default::default()).unwrap();
        mapping.identity(&serde_json::json!({
            "email": email,
            "groups": groups,
            "scope": scopes.join(" "),
        }))
    }

    fn original(method: &str, host: &str, path: &str) -> OriginalRequest {
        OriginalRequest {
            method: Some(method.to_owned()),
            host: Some(host.to_owned()),
            path: Some(path.to_owned()),
        }
    }

    #[test]
    fn query_lists_are_comma_separated_and_repeatable() {
        let requirements =
            Requirements::from_query("allowed_groups=a,b&allowed_groups=c&required_scopes=read")
                .unwrap();
        assert_eq!(requirements.groups, ["a", "b", "c"]);
        assert_eq!(requirements.scopes, ["read"]);
    }

    #[test]
    fn a_bare_at_sign_names_no_domain() {
        // Found by fuzzing: `@` became an empty domain requirement.
        let requirements = Requirements::from_query("allowed_email_domains=@").unwrap();
        assert!(requirements.email_domains.is_empty());
    }

    #[test]
    fn unknown_query_parameter_is_refused() {
        assert_eq!(
            Requirements::from_query("allowed_group=a")
                .unwrap_err()
                .reason,
            Reason::BadPolicy
        );
    }

    #[test]
    fn every_parameter_given_must_match() {
        let requirements =
            Requirements::from_query("allowed_groups=ops,dev&allowed_email_domains=example.com")
                .unwrap();
        assert!(requirements
            .check(&identity(&["dev"], "a@example.com", &[]))
            .is_ok());
        assert_eq!(
            requirements
                .check(&identity(&["dev"], "a@evil.com", &[]))
                .unwrap_err()
                .reason,
            Reason::EmailNotAllowed
        );
        assert_eq!(
            requirements
                .check(&identity(&["qa"], "a@example.com", &[]))
                .unwrap_err()
                .reason,
            Reason::NotInGroup
        );
    }

    #[test]
    fn scopes_must_all_be_present() {
        let requirements = Requirements::from_query("required_scopes=read,write").unwrap();
        assert!(requirements
            .check(&identity(&[], "a@b.c", &["read", "write", "x"]))
            .is_ok());
        assert_eq!(
            requirements
                .check(&identity(&[], "a@b.c", &["read"]))
                .unwrap_err()
                .reason,
            Reason::InsufficientScope
        );
    }

    #[test]
    fn emails_are_case_insensitive_and_domains_can_be_wildcards() {
        let requirements = Requirements::from_query("allowed_emails=Alice@Example.com").unwrap();
        assert!(requirements
            .check(&identity(&[], "alice@example.COM", &[]))
            .is_ok());
        let requirements = Requirements::from_query("allowed_email_domains=*.example.com").unwrap();
        assert!(requirements
            .check(&identity(&[], "a@eu.example.com", &[]))
            .is_ok());
        assert!(requirements
            .check(&identity(&[], "a@example.com", &[]))
            .is_err());
        assert!(requirements
            .check(&identity(&[], "a@evilexample.com", &[]))
            .is_err());
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/admin", "/admin"));
        assert!(prefix_matches("/admin", "/admin/users"));
        assert!(!prefix_matches("/admin", "/administrator"));
        assert!(prefix_matches("/static/", "/static/app.js"));
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = RouteRules::new(&[
            RuleSettings {
                paths: vec!["/public".into()],
                allow_anonymous: true,
                ..RuleSettings::default()
            },
            RuleSettings {
                hosts: vec!["*.internal.example.com".into()],
                deny: true,
                ..RuleSettings::default()
            },
            RuleSettings {
                paths: vec!["/api/*/admin".into()],
                methods: vec!["delete".into()],
                ..RuleSettings::default()
            },
        ])
        .unwrap();
        let first = |o: &OriginalRequest| rules.first_match(o, true).map(|rule| rule.name.clone());
        assert_eq!(
            first(&original("GET", "app.example.com", "/public/x")).as_deref(),
            Some("rules[0]")
        );
        assert_eq!(
            first(&original("GET", "db.internal.example.com", "/x")).as_deref(),
            Some("rules[1]")
        );
        assert_eq!(
            first(&original("DELETE", "app.example.com", "/api/v1/admin")).as_deref(),
            Some("rules[2]")
        );
        assert_eq!(
            first(&original("GET", "app.example.com", "/api/v1/admin")),
            None
        );
        assert_eq!(
            first(&OriginalRequest::default()).as_deref(),
            Some("rules[1]"),
            "an unknown request matches no grant, but every restriction"
        );
    }

    /// Rules from lines of `name kind path…`, to keep the tests short.
    fn rules_from(spec: &str) -> RouteRules {
        let rules: Vec<serde_json::Value> = spec
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(|line| {
                let mut parts = line.split_whitespace();
                let name = parts.next().unwrap();
                let kind = parts.next().unwrap();
                let paths: Vec<&str> = parts.collect();
                let mut rule = serde_json::json!({"name": name, "paths": paths});
                match kind {
                    "deny" => rule["deny"] = true.into(),
                    "anonymous" => rule["allow_anonymous"] = true.into(),
                    "ops" => rule["allowed_groups"] = serde_json::json!(["ops"]),
                    other => panic!("unknown kind {other}"),
                }
                rule
            })
            .collect();
        let settings: Vec<RuleSettings> =
            serde_json::from_value(serde_json::Value::Array(rules)).unwrap();
        RouteRules::new(&settings).unwrap()
    }

    fn matched(rules: &RouteRules, method: &str, path: &str) -> Option<String> {
        rules
            .first_match(&original(method, "app.example.com", path), true)
            .map(|rule| rule.name.clone())
    }

    #[test]
    fn restrictions_match_case_insensitively_and_with_a_trailing_slash() {
        let rules = rules_from(
            "admin deny /admin
             api-admin ops /api/*/admin",
        );
        for path in ["/admin", "/ADMIN", "/Admin/", "/admin/users", "/aDmIn/x/"] {
            assert_eq!(
                matched(&rules, "GET", path).as_deref(),
                Some("admin"),
                "{path}"
            );
        }
        for path in [
            "/api/v1/admin",
            "/api/v1/admin/",
            "/API/V1/ADMIN",
            "/api/v2/admin/users",
        ] {
            assert_eq!(
                matched(&rules, "GET", path).as_deref(),
                Some("api-admin"),
                "{path}"
            );
        }
        assert_eq!(matched(&rules, "GET", "/administrator"), None);
        assert_eq!(matched(&rules, "GET", "/api/v1/v2/admin"), None);
    }

    #[test]
    fn grants_match_exactly_and_a_star_stays_within_a_segment() {
        let rules = rules_from(
            "css anonymous /assets/*.css
             public anonymous /public",
        );
        assert_eq!(
            matched(&rules, "GET", "/assets/app.css").as_deref(),
            Some("css")
        );
        assert_eq!(matched(&rules, "GET", "/assets/admin/app.css"), None);
        assert_eq!(matched(&rules, "GET", "/assets/APP.CSS"), None);
        assert_eq!(
            matched(&rules, "GET", "/public/x").as_deref(),
            Some("public")
        );
        assert_eq!(matched(&rules, "GET", "/PUBLIC"), None);
        let deep = rules_from("docs anonymous /docs/**");
        assert_eq!(
            matched(&deep, "GET", "/docs/a/b/c.html").as_deref(),
            Some("docs")
        );
    }

    #[test]
    fn methods_grant_exactly_and_restrict_without_case() {
        let rules = RouteRules::new(&[
            RuleSettings {
                name: Some("no-delete".into()),
                methods: vec!["DELETE".into()],
                deny: true,
                ..RuleSettings::default()
            },
            RuleSettings {
                name: Some("read".into()),
                methods: vec!["GET".into()],
                allow_anonymous: true,
                ..RuleSettings::default()
            },
        ])
        .unwrap();
        assert_eq!(
            matched(&rules, "delete", "/x").as_deref(),
            Some("no-delete")
        );
        assert_eq!(matched(&rules, "GET", "/x").as_deref(), Some("read"));
        assert_eq!(matched(&rules, "get", "/x"), None);
    }

    #[test]
    fn anonymous_rules_do_not_lift_the_auth_urls_requirements() {
        let rules = rules_from("public anonymous /public");
        let request = original("GET", "app.example.com", "/public");
        assert!(rules.first_match(&request, true).is_some());
        assert!(rules.first_match(&request, false).is_none());
    }

    #[test]
    fn unknown_parts_never_match_a_grant() {
        let rules = RouteRules::new(&[RuleSettings {
            hosts: vec!["public.example.com".into()],
            allow_anonymous: true,
            ..RuleSettings::default()
        }])
        .unwrap();
        let no_host = OriginalRequest {
            host: None,
            ..original("GET", "", "/")
        };
        assert!(rules.first_match(&no_host, true).is_none());
    }
}
