//! What the proxy told us: where the client's token is, and what the client asked for
//! (method, host, path), read from the headers each proxy sets on its auth subrequest.

use std::str::FromStr;

use actix_web::http::header::{self, HeaderMap, HeaderName};
use serde::Deserialize;

use crate::error::{AuthError, Reason};

/// One place a token may be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `Authorization: Bearer <token>` (RFC 6750 §2.1).
    Authorization,
    /// A named header holding the bare token, e.g. `Cf-Access-Jwt-Assertion`.
    Header(HeaderName),
    /// A named cookie, e.g. `CF_Authorization`.
    Cookie(String),
}

impl FromStr for TokenSource {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.eq_ignore_ascii_case("authorization") {
            return Ok(TokenSource::Authorization);
        }
        if let Some(name) = text.strip_prefix("header:") {
            return HeaderName::from_str(name.trim())
                .map(TokenSource::Header)
                .map_err(|_| format!("'{name}' is not a valid header name"));
        }
        if let Some(name) = text.strip_prefix("cookie:") {
            let name = name.trim();
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
            return if valid {
                Ok(TokenSource::Cookie(name.to_owned()))
            } else {
                Err(format!("'{name}' is not a valid cookie name"))
            };
        }
        Err(format!(
            "'{text}' is not a token source (use authorization, header:<name> or cookie:<name>)"
        ))
    }
}

/// Finds the token in the first source that has one. Size is checked here, before any
/// parsing: an oversized value is refused whatever it holds.
pub fn extract_token<'a>(
    headers: &'a HeaderMap,
    sources: &[TokenSource],
    max_length: usize,
) -> Result<&'a str, AuthError> {
    for source in sources {
        let found = match source {
            TokenSource::Authorization => bearer_token(headers)?,
            TokenSource::Header(name) => single_header(headers, name)?.map(str::trim),
            TokenSource::Cookie(name) => cookie_value(headers, name)?,
        };
        if let Some(token) = found {
            if token.len() > max_length {
                return Err(Reason::TokenTooLarge.into());
            }
            if token.is_empty() {
                continue;
            }
            return Ok(token);
        }
    }
    Err(Reason::MissingToken.into())
}

/// The value of a header that must appear at most once: two values would leave it open
/// which one the proxy or the upstream reads, so that is refused as malformed.
fn single_header<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a str>, AuthError> {
    let mut values = headers.get_all(name);
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(Reason::MalformedToken.into());
    }
    // `from_utf8` has a vectorised ASCII fast path, several times faster than
    // `HeaderValue::to_str` on a 1 KiB token; the token's characters are checked later
    // (JWT shape) anyway.
    std::str::from_utf8(first.as_bytes())
        .map(Some)
        .map_err(|_| Reason::MalformedToken.into())
}

/// `Authorization: Bearer <token>`; the scheme is case-insensitive (RFC 7235 §2.1). Other
/// schemes (Basic…) count as no token.
fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, AuthError> {
    let Some(value) = single_header(headers, &header::AUTHORIZATION)? else {
        return Ok(None);
    };
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Ok(None),
    }
}

/// Reads one cookie from every `Cookie` header without building a cookie jar. Two
/// cookies of that name are refused: some frameworks read the first, others the last,
/// so the upstream could act on another token than the one verified here.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, AuthError> {
    let mut found = None;
    let pairs = headers
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='));
    for (key, value) in pairs {
        if key.trim() != name {
            continue;
        }
        if found.is_some() {
            return Err(Reason::MalformedToken.into());
        }
        // RFC 6265 §4.1.1: a value may be wrapped in one pair of quotes.
        let value = value.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|inner| inner.strip_suffix('"'))
            .unwrap_or(value);
        found = Some(unquoted.trim());
    }
    Ok(found)
}

/// Which proxy's original-request headers to trust on `/auth`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyHeaders {
    /// Whichever set is present; when several are present they must agree, or the
    /// request is refused. Safe only while the proxy in front sets its own headers on
    /// every request: a client can add the headers of a proxy that is not there.
    Auto,
    /// ingress-nginx `auth-url`: `X-Original-URL`, `X-Original-Method`.
    IngressNginx,
    /// Plain nginx `auth_request` with our snippet: `X-Original-URI`,
    /// `X-Original-Method`, `X-Forwarded-Host`.
    Nginx,
    /// Traefik `forwardAuth`: `X-Forwarded-Method`, `-Host`, `-Uri`, `-Proto`.
    Traefik,
    /// None: `/auth` knows nothing of the original request (deployments where only
    /// Envoy calls, on `/ext-authz/…`).
    None,
}

/// What to do with `;` path parameters (`/admin;jsessionid=1`), which Java servlet
/// containers cut off before routing and most other frameworks keep.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PathParameters {
    /// A path with a `;` is refused as ambiguous.
    #[default]
    Refuse,
    /// Each segment's `;…` is cut off before matching, as a servlet container does.
    Strip,
}

/// What the client asked the proxy for. Absent parts are unknown: a rule that grants
/// access on them never matches, a rule that restricts always does.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginalRequest {
    /// The method as sent (a valid HTTP token).
    pub method: Option<String>,
    /// Lower-case host, without port and trailing dot.
    pub host: Option<String>,
    /// The path as matched (see [`parse_path`]), without the query string.
    pub path: Option<String>,
}

const X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
const X_ORIGINAL_URI: HeaderName = HeaderName::from_static("x-original-uri");
const X_ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

impl OriginalRequest {
    /// Reads the original request of an `/auth` call from the trusted proxy's headers.
    pub fn from_auth_headers(
        headers: &HeaderMap,
        trust: ProxyHeaders,
        parameters: PathParameters,
    ) -> Result<Self, AuthError> {
        let ingress = || -> Result<Option<Self>, AuthError> {
            let Some(url) = single_header(headers, &X_ORIGINAL_URL)? else {
                return Ok(None);
            };
            let (authority, target) = split_original_url(url)?;
            let method = single_header(headers, &X_ORIGINAL_METHOD)?;
            // An empty authority (HTTP/1.0 without `Host`) is an unknown host, never a
            // made-up one.
            let host = Some(authority).filter(|authority| !authority.is_empty());
            Self::parse(method, host, Some(target), parameters).map(Some)
        };
        let nginx = || -> Result<Option<Self>, AuthError> {
            let Some(uri) = single_header(headers, &X_ORIGINAL_URI)? else {
                return Ok(None);
            };
            let host = match single_header(headers, &X_FORWARDED_HOST)? {
                Some(host) => Some(host),
                None => single_header(headers, &header::HOST)?,
            };
            let method = single_header(headers, &X_ORIGINAL_METHOD)?;
            Self::parse(method, host, Some(uri), parameters).map(Some)
        };
        let traefik = || -> Result<Option<Self>, AuthError> {
            let Some(uri) = single_header(headers, &X_FORWARDED_URI)? else {
                return Ok(None);
            };
            Self::parse(
                single_header(headers, &X_FORWARDED_METHOD)?,
                single_header(headers, &X_FORWARDED_HOST)?,
                Some(uri),
                parameters,
            )
            .map(Some)
        };
        let found = match trust {
            ProxyHeaders::IngressNginx => ingress()?,
            ProxyHeaders::Nginx => nginx()?,
            ProxyHeaders::Traefik => traefik()?,
            ProxyHeaders::None => None,
            ProxyHeaders::Auto => {
                let candidates: Vec<Self> = [ingress()?, nginx()?, traefik()?]
                    .into_iter()
                    .flatten()
                    .collect();
                let Some((first, rest)) = candidates.split_first() else {
                    return Ok(Self::default());
                };
                if rest.iter().any(|other| !first.agrees_with(other)) {
                    return Err(Reason::AmbiguousRequest.into());
                }
                Some(first.clone())
            }
        };
        Ok(found.unwrap_or_default())
    }

    /// Envoy `ext_authz`: the original path (raw, as Envoy forwarded it) follows the
    /// configured prefix, and the method and `Host` are the client's own.
    pub fn from_ext_authz(
        method: &str,
        target: &str,
        headers: &HeaderMap,
        parameters: PathParameters,
    ) -> Result<Self, AuthError> {
        Self::parse(
            Some(method),
            single_header(headers, &header::HOST)?,
            Some(target),
            parameters,
        )
    }

    /// Every part strictly parsed: a part that could be read two ways refuses the whole
    /// request rather than being guessed at.
    fn parse(
        method: Option<&str>,
        host: Option<&str>,
        target: Option<&str>,
        parameters: PathParameters,
    ) -> Result<Self, AuthError> {
        Ok(Self {
            method: method.map(parse_method).transpose()?,
            host: host.map(parse_host).transpose()?,
            path: target
                .map(|target| parse_path(target, parameters))
                .transpose()?,
        })
    }

    /// Two readings agree when every part both of them know is equal.
    fn agrees_with(&self, other: &Self) -> bool {
        fn same(a: &Option<String>, b: &Option<String>) -> bool {
            match (a, b) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
        }
        same(&self.method, &other.method)
            && same(&self.host, &other.host)
            && same(&self.path, &other.path)
    }
}

/// ingress-nginx builds `X-Original-URL` as `$scheme://$http_host$request_uri`, from the
/// client's raw `Host`. nginx accepts `Host: name:<anything but />`, so a lenient URL
/// parser reads `http://app:\@x/public` or `http://app:?/admin` as another path than the
/// request target. The authority therefore ends at the first `/` (nginx refuses a `/`
/// in `Host`), and the path is always the request target after it.
fn split_original_url(url: &str) -> Result<(&str, &str), AuthError> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or(Reason::AmbiguousRequest)?;
    let slash = rest.find('/').ok_or(Reason::AmbiguousRequest)?;
    Ok(rest.split_at(slash))
}

/// A method is an HTTP token (RFC 9110 §9.1), kept as sent: methods are case-sensitive,
/// so a grant for `GET` does not cover `get`, while restrictions compare without case.
fn parse_method(method: &str) -> Result<String, AuthError> {
    let valid = !method.is_empty() && method.bytes().all(is_tchar);
    if !valid {
        return Err(Reason::AmbiguousRequest.into());
    }
    Ok(method.to_owned())
}

fn is_tchar(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

/// A host with an optional port of digits (RFC 3986 §3.2.2–3, restricted to what DNS
/// names and IP literals use), returned lower-case without the port and without one
/// trailing dot — in that order, so that `admin.example.com.:80` is `admin.example.com`.
/// Anything else (`name:abc`, `name:\`, `name:@x`, empty labels) could be read as
/// another host by the next parser, so it is refused.
pub fn parse_host(raw: &str) -> Result<String, AuthError> {
    let invalid = || AuthError::from(Reason::AmbiguousRequest);
    let (name, port) = if raw.starts_with('[') {
        let end = raw.find(']').ok_or_else(invalid)?;
        let literal = &raw[1..end];
        let valid = !literal.is_empty()
            && literal.contains(':')
            && literal
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !valid {
            return Err(invalid());
        }
        (&raw[..=end], &raw[end + 1..])
    } else {
        match raw.find(':') {
            Some(colon) => raw.split_at(colon),
            None => (raw, ""),
        }
    };
    if !port.is_empty() {
        let digits = port.strip_prefix(':').ok_or_else(invalid)?;
        if digits.is_empty() || digits.len() > 5 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
    }
    if name.starts_with('[') {
        return Ok(name.to_ascii_lowercase());
    }
    let name = name.strip_suffix('.').unwrap_or(name);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !valid {
        return Err(invalid());
    }
    Ok(name.to_ascii_lowercase())
}

/// The path of a raw request target, as rules match it: percent-decoded once, with
/// empty segments collapsed (`//admin` is `/admin`), without the query string.
///
/// Refused as ambiguous, before any rule is matched, is every target that the upstream
/// could resolve to another route than the one matched here: nginx (`proxy_pass` without
/// a URI), Traefik and Envoy forward the raw target, and many frameworks route on it
/// without normalising, or normalise differently. So `/admin/..%2f..%2fpublic` must not
/// match a rule for `/public` — nor be "resolved" to anything:
/// - dot segments, raw or percent-encoded (`.`, `..`, `%2e`, `.%2E`);
/// - an encoded separator (`%2f`, `%5c`), a raw `\`, an encoded `%` (`%25`: decoded
///   twice by some stacks), an encoded `;` (`%3b`);
/// - controls, raw or encoded (NUL, CR, LF, TAB, DEL, the C1 range with NEL…), a raw
///   space, a raw `#`;
/// - invalid percent-encoding, or bytes that are not UTF-8 once decoded;
/// - a target that does not start with `/` (absolute-form, `*`);
/// - `;` path parameters, unless [`PathParameters::Strip`].
pub fn parse_path(target: &str, parameters: PathParameters) -> Result<String, AuthError> {
    let ambiguous = || AuthError::from(Reason::AmbiguousPath);
    let raw = target.split_once('?').map_or(target, |(path, _)| path);
    if !raw.starts_with('/') {
        return Err(ambiguous());
    }
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let byte = bytes[index];
        match byte {
            b'%' => {
                let digit = |offset: usize| {
                    bytes
                        .get(index + offset)
                        .and_then(|&digit| char::from(digit).to_digit(16))
                };
                let (Some(high), Some(low)) = (digit(1), digit(2)) else {
                    return Err(ambiguous());
                };
                let value = (high * 16 + low) as u8;
                if matches!(value, b'/' | b'\\' | b'%' | b';' | b'#') || is_control(value) {
                    return Err(ambiguous());
                }
                decoded.push(value);
                index += 3;
            }
            b';' => match parameters {
                PathParameters::Refuse => return Err(ambiguous()),
                PathParameters::Strip => {
                    // Up to the next segment, as a servlet container does.
                    while index < bytes.len() && bytes[index] != b'/' {
                        index += 1;
                    }
                }
            },
            b'\\' | b'#' | b' ' => return Err(ambiguous()),
            byte if is_control(byte) => return Err(ambiguous()),
            byte => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    let decoded = String::from_utf8(decoded).map_err(|_| ambiguous())?;
    // C1 controls (U+0080–U+009F, NEL among them) arrive as UTF-8, not as single bytes.
    if decoded.chars().any(char::is_control) {
        return Err(ambiguous());
    }
    let mut path = String::with_capacity(decoded.len() + 1);
    for segment in decoded.split('/') {
        match segment {
            "." | ".." => return Err(ambiguous()),
            "" => {}
            segment => {
                path.push('/');
                path.push_str(segment);
            }
        }
    }
    if path.is_empty() || decoded.ends_with('/') {
        path.push('/');
    }
    Ok(path)
}

fn is_control(byte: u8) -> bool {
    byte < 0x20 || byte == 0x7f
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::http::header::HeaderValue;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_str(name).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn bearer_scheme_is_case_insensitive() {
        let map = headers(&[("authorization", "bEaReR abc.def.ghi")]);
        let token = extract_token(&map, &[TokenSource::Authorization], 100).unwrap();
        assert_eq!(token, "abc.def.ghi");
    }

    #[test]
    fn basic_auth_is_no_token() {
        let map = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        let err = extract_token(&map, &[TokenSource::Authorization], 100).unwrap_err();
        assert_eq!(err.reason, Reason::MissingToken);
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let map = headers(&[
            ("authorization", "Bearer a.b.c"),
            ("authorization", "Bearer d.e.f"),
        ]);
        let err = extract_token(&map, &[TokenSource::Authorization], 100).unwrap_err();
        assert_eq!(err.reason, Reason::MalformedToken);
    }

    #[test]
    fn sources_are_tried_in_order() {
        let map = headers(&[("cookie", "a=1; CF_Authorization=x.y.z; b=2")]);
        let sources = [
            TokenSource::Authorization,
            TokenSource::from_str("header:cf-access-jwt-assertion").unwrap(),
            TokenSource::from_str("cookie:CF_Authorization").unwrap(),
        ];
        assert_eq!(extract_token(&map, &sources, 100).unwrap(), "x.y.z");
    }

    #[test]
    fn oversized_token_is_refused() {
        let long = format!("Bearer {}", "a".repeat(101));
        let map = headers(&[("authorization", &long)]);
        let err = extract_token(&map, &[TokenSource::Authorization], 100).unwrap_err();
        assert_eq!(err.reason, Reason::TokenTooLarge);
    }

    fn path(target: &str) -> Result<String, Reason> {
        parse_path(target, PathParameters::Refuse).map_err(|error| error.reason)
    }

    #[test]
    fn targets_that_read_two_ways_are_refused() {
        for ambiguous in [
            "/public/../admin",
            "/admin/..%2f..%2fpublic",
            "/admin/%2e%2e/public",
            "/admin/.%2E/public",
            "/admin/%2E./public",
            "/./admin",
            "/admin/.",
            "/admin/..",
            "/public%2f..%2fadmin",
            "/public%2Fadmin",
            "/public%5cadmin",
            "/x/..\\admin",
            "/public\\admin",
            "/admin%00",
            "/admin\u{0}",
            "/admin%0d%0aX: 1",
            "/admin%7f",
            "/admin\t",
            "/admin x",
            "/public%252e%252e/admin",
            "/admin;x",
            "/public;/../admin",
            "/admin%3bx",
            "/admin#/public",
            "/admin%zz",
            "/admin%2",
            "/admin%+f",
            "/%c0%af",
            "/public\u{85}/admin",
            "/public%C2%85admin",
            "http://other/admin",
            "*",
            "",
        ] {
            assert_eq!(path(ambiguous), Err(Reason::AmbiguousPath), "{ambiguous:?}");
        }
    }

    #[test]
    fn paths_are_decoded_once_with_empty_segments_collapsed() {
        assert_eq!(path("/%61dmin").unwrap(), "/admin");
        assert_eq!(path("//admin").unwrap(), "/admin");
        assert_eq!(path("/a//b/").unwrap(), "/a/b/");
        assert_eq!(path("/orders?id=7&x=../..").unwrap(), "/orders");
        assert_eq!(path("/files/a%20b.txt").unwrap(), "/files/a b.txt");
        assert_eq!(path("/caf%C3%A9").unwrap(), "/café");
        assert_eq!(path("/...").unwrap(), "/...");
        assert_eq!(path("/").unwrap(), "/");
    }

    #[test]
    fn path_parameters_are_refused_or_stripped() {
        assert_eq!(path("/admin;jsessionid=1"), Err(Reason::AmbiguousPath));
        let strip = |target| parse_path(target, PathParameters::Strip).map_err(|e| e.reason);
        assert_eq!(strip("/admin;jsessionid=1").unwrap(), "/admin");
        assert_eq!(strip("/a;x/b;y=1/").unwrap(), "/a/b/");
        assert_eq!(strip("/..;/admin"), Err(Reason::AmbiguousPath));
        assert_eq!(strip("/public;/../admin"), Err(Reason::AmbiguousPath));
        assert_eq!(strip("/admin%3bx"), Err(Reason::AmbiguousPath));
    }

    #[test]
    fn hosts_are_parsed_strictly() {
        let host = |raw| parse_host(raw).map_err(|error| error.reason);
        assert_eq!(host("App.Example.com:8443").unwrap(), "app.example.com");
        assert_eq!(host("admin.example.com.:80").unwrap(), "admin.example.com");
        assert_eq!(host("admin.example.com.").unwrap(), "admin.example.com");
        assert_eq!(host("[::1]:80").unwrap(), "[::1]");
        assert_eq!(host("10.0.0.1").unwrap(), "10.0.0.1");
        for bad in [
            "admin.example.com:abc",
            "app:\\",
            "app:?",
            "app:#",
            "app:@evil",
            "app:",
            "app:123456",
            "app..",
            ".app",
            "a..b",
            "",
            ":80",
            "app example",
            "app/x",
            "[::1",
            "[]",
            "[zz]",
            "[::1]x",
        ] {
            assert_eq!(host(bad), Err(Reason::AmbiguousRequest), "{bad:?}");
        }
    }

    #[test]
    fn ingress_url_takes_its_path_from_the_request_target() {
        let read = |url: &str| {
            let map = headers(&[("x-original-url", url), ("x-original-method", "GET")]);
            OriginalRequest::from_auth_headers(
                &map,
                ProxyHeaders::IngressNginx,
                PathParameters::Refuse,
            )
            .map_err(|error| error.reason)
        };
        for trick in [
            "http://app:\\@x/public/admin",
            "http://app:?/public",
            "http://app:#/public",
            "http://app:@x/public",
            "http://app.example.comhttp://other/admin",
            "ftp://app/admin",
            "http://app",
        ] {
            assert!(read(trick).is_err(), "{trick}");
        }
        // HTTP/1.0 without Host: the host is unknown, not made up.
        let original = read("http:///admin").unwrap();
        assert_eq!(original.host, None);
        assert_eq!(original.path.as_deref(), Some("/admin"));
    }

    #[test]
    fn methods_are_tokens_kept_as_sent() {
        assert_eq!(parse_method("get").unwrap(), "get");
        assert!(parse_method("GE T").is_err());
        assert!(parse_method("").is_err());
    }

    #[test]
    fn a_quoted_cookie_loses_one_pair_of_quotes_and_its_whitespace() {
        // Found by fuzzing: whitespace inside the quotes stayed around the token.
        let map = headers(&[("cookie", "CF_Authorization=\"a.b.c\t\t\"")]);
        let sources = [TokenSource::from_str("cookie:CF_Authorization").unwrap()];
        assert_eq!(extract_token(&map, &sources, 100).unwrap(), "a.b.c");
        let map = headers(&[("cookie", "CF_Authorization=\"\"a\"\"")]);
        assert_eq!(extract_token(&map, &sources, 100).unwrap(), "\"a\"");
    }

    #[test]
    fn two_cookies_of_the_token_name_are_refused() {
        let map = headers(&[("cookie", "CF_Authorization=a.b.c; CF_Authorization=d.e.f")]);
        let sources = [TokenSource::from_str("cookie:CF_Authorization").unwrap()];
        let err = extract_token(&map, &sources, 100).unwrap_err();
        assert_eq!(err.reason, Reason::MalformedToken);
        let map = headers(&[
            ("cookie", "CF_Authorization=a.b.c"),
            ("cookie", "other=1; CF_Authorization=d.e.f"),
        ]);
        let err = extract_token(&map, &sources, 100).unwrap_err();
        assert_eq!(err.reason, Reason::MalformedToken);
    }

    #[test]
    fn ingress_nginx_headers() {
        let map = headers(&[
            ("x-original-url", "https://App.example.com/api/v1?x=1"),
            ("x-original-method", "POST"),
        ]);
        let original =
            OriginalRequest::from_auth_headers(&map, ProxyHeaders::Auto, PathParameters::Refuse)
                .unwrap();
        assert_eq!(original.method.as_deref(), Some("POST"));
        assert_eq!(original.host.as_deref(), Some("app.example.com"));
        assert_eq!(original.path.as_deref(), Some("/api/v1"));
    }

    #[test]
    fn contradictory_proxy_headers_are_refused_in_auto_mode() {
        let map = headers(&[("x-original-uri", "/admin"), ("x-forwarded-uri", "/public")]);
        let error =
            OriginalRequest::from_auth_headers(&map, ProxyHeaders::Auto, PathParameters::Refuse)
                .unwrap_err();
        assert_eq!(error.reason, Reason::AmbiguousRequest);
        // With an explicit proxy, the other proxy's headers are not read at all.
        let original =
            OriginalRequest::from_auth_headers(&map, ProxyHeaders::Nginx, PathParameters::Refuse)
                .unwrap();
        assert_eq!(original.path.as_deref(), Some("/admin"));
    }
}
