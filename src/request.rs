//! What the proxy told us: where the client's token is, and what the client asked for
//! (method, host, path), read from the headers each proxy sets on its auth subrequest.

use std::borrow::Cow;
use std::str::FromStr;

use actix_web::http::header::{self, HeaderMap, HeaderName};
use percent_encoding::percent_decode_str;
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
            TokenSource::Cookie(name) => cookie_value(headers, name),
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

/// Reads one cookie from every `Cookie` header without building a cookie jar.
fn cookie_value<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// True when the token has the shape of a JWS compact serialisation: three non-empty
/// base64url segments. Checked before any decoding or crypto.
pub fn looks_like_jwt(token: &str) -> bool {
    // One pass over the bytes: this runs on every cache miss, over tokens of up to
    // `token.max_length` bytes.
    let (mut dots, mut segment) = (0, 0);
    for &byte in token.as_bytes() {
        if byte == b'.' {
            if segment == 0 || dots == 2 {
                return false;
            }
            dots += 1;
            segment = 0;
        } else if is_base64url(byte) {
            segment += 1;
        } else {
            return false;
        }
    }
    dots == 2 && segment > 0
}

fn is_base64url(byte: u8) -> bool {
    BASE64URL[usize::from(byte)]
}

/// The base64url alphabet as a lookup table: one load per byte of a token that can be
/// several KiB long, instead of a chain of range comparisons.
const BASE64URL: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
        byte += 1;
    }
    table
};

/// Which proxy's original-request headers to trust on `/auth`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ProxyHeaders {
    /// Whichever set is present; when several are present they must agree, or the
    /// request is refused (a client may add the headers of a proxy that is not in front
    /// of us, but cannot remove the ones the real proxy sets).
    #[default]
    Auto,
    /// ingress-nginx `auth-url`: `X-Original-URL`, `X-Original-Method`.
    IngressNginx,
    /// Plain nginx `auth_request` with our snippet: `X-Original-URI`,
    /// `X-Original-Method`, `X-Forwarded-Host`.
    Nginx,
    /// Traefik `forwardAuth`: `X-Forwarded-Method`, `-Host`, `-Uri`, `-Proto`.
    Traefik,
}

/// What the client asked the proxy for. Absent parts are unknown, and rules that need
/// them do not match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OriginalRequest {
    /// Upper-case method.
    pub method: Option<String>,
    /// Lower-case host, without port.
    pub host: Option<String>,
    /// Normalised path (see [`normalize_path`]), without the query string.
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
    pub fn from_auth_headers(headers: &HeaderMap, trust: ProxyHeaders) -> Result<Self, AuthError> {
        let ingress = || -> Result<Option<Self>, AuthError> {
            let Some(url) = single_header(headers, &X_ORIGINAL_URL)? else {
                return Ok(None);
            };
            let url = url::Url::parse(url).map_err(|_| Reason::AmbiguousRequest)?;
            Ok(Some(Self::new(
                single_header(headers, &X_ORIGINAL_METHOD)?,
                url.host_str(),
                Some(url.path()),
            )))
        };
        let nginx = || -> Result<Option<Self>, AuthError> {
            let Some(uri) = single_header(headers, &X_ORIGINAL_URI)? else {
                return Ok(None);
            };
            let host = match single_header(headers, &X_FORWARDED_HOST)? {
                Some(host) => Some(host),
                None => single_header(headers, &header::HOST)?,
            };
            Ok(Some(Self::new(
                single_header(headers, &X_ORIGINAL_METHOD)?,
                host,
                Some(uri),
            )))
        };
        let traefik = || -> Result<Option<Self>, AuthError> {
            let Some(uri) = single_header(headers, &X_FORWARDED_URI)? else {
                return Ok(None);
            };
            Ok(Some(Self::new(
                single_header(headers, &X_FORWARDED_METHOD)?,
                single_header(headers, &X_FORWARDED_HOST)?,
                Some(uri),
            )))
        };
        let found = match trust {
            ProxyHeaders::IngressNginx => ingress()?,
            ProxyHeaders::Nginx => nginx()?,
            ProxyHeaders::Traefik => traefik()?,
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

    /// Envoy `ext_authz`: the original path follows the configured prefix, and the
    /// method and `Host` are the client's own.
    pub fn from_ext_authz(
        method: &str,
        path: &str,
        headers: &HeaderMap,
    ) -> Result<Self, AuthError> {
        Ok(Self::new(
            Some(method),
            single_header(headers, &header::HOST)?,
            Some(path),
        ))
    }

    fn new(method: Option<&str>, host: Option<&str>, path_and_query: Option<&str>) -> Self {
        Self {
            method: method.map(|method| method.trim().to_ascii_uppercase()),
            host: host.map(normalize_host),
            path: path_and_query.map(|raw| {
                let path = raw.split(['?', '#']).next().unwrap_or_default();
                normalize_path(path)
            }),
        }
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

/// Lower-case host without port (or IPv6 brackets kept as they are).
fn normalize_host(host: &str) -> String {
    let host = host.trim().trim_end_matches('.');
    let without_port = match host.rsplit_once(':') {
        Some((name, _)) if !name.ends_with(']') && name.contains(':') => host, // bare IPv6
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    without_port.to_ascii_lowercase()
}

/// The path as the upstream will most likely resolve it, so that a rule for `/admin`
/// cannot be dodged with `/%61dmin`, `/public/../admin`, `//admin` or `/admin/.`:
/// percent-decoded once (as nginx does before matching locations), backslashes read as
/// slashes, `.` and `..` segments resolved (never above the root), empty segments
/// collapsed. A trailing slash is kept.
pub fn normalize_path(raw: &str) -> String {
    let decoded: Cow<str> = percent_decode_str(raw).decode_utf8_lossy();
    let unified = decoded.replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for segment in unified.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let trailing = unified.ends_with('/') || unified.ends_with("/.") || unified.ends_with("/..");
    let mut path = String::with_capacity(unified.len() + 1);
    for segment in &segments {
        path.push('/');
        path.push_str(segment);
    }
    if path.is_empty() || (trailing && !segments.is_empty()) {
        path.push('/');
    }
    path
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

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJi.c2ln"));
        assert!(!looks_like_jwt("eyJh.eyJi"));
        assert!(!looks_like_jwt("eyJh.eyJi.c2ln.d"));
        assert!(!looks_like_jwt("eyJh..c2ln"));
        assert!(!looks_like_jwt("eyJh.eyJi.c2l="));
        assert!(!looks_like_jwt("opaque-token"));
    }

    #[test]
    fn path_normalisation_defeats_bypasses() {
        for bypass in [
            "/%61dmin",
            "/public/../admin",
            "//admin",
            "/admin/.",
            "/./admin",
            "/public/%2e%2e/admin",
            "/public%2f..%2fadmin",
            "/x/..\\admin",
            "/../../admin",
        ] {
            let normalized = normalize_path(bypass);
            assert!(
                normalized == "/admin" || normalized == "/admin/",
                "{bypass} -> {normalized}"
            );
        }
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(normalize_path("/a/b/"), "/a/b/");
    }

    #[test]
    fn hosts_lose_port_and_case() {
        assert_eq!(normalize_host("App.Example.com:8443"), "app.example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
    }

    #[test]
    fn ingress_nginx_headers() {
        let map = headers(&[
            ("x-original-url", "https://App.example.com/api/v1?x=1"),
            ("x-original-method", "post"),
        ]);
        let original = OriginalRequest::from_auth_headers(&map, ProxyHeaders::Auto).unwrap();
        assert_eq!(original.method.as_deref(), Some("POST"));
        assert_eq!(original.host.as_deref(), Some("app.example.com"));
        assert_eq!(original.path.as_deref(), Some("/api/v1"));
    }

    #[test]
    fn contradictory_proxy_headers_are_refused_in_auto_mode() {
        let map = headers(&[("x-original-uri", "/admin"), ("x-forwarded-uri", "/public")]);
        let error = OriginalRequest::from_auth_headers(&map, ProxyHeaders::Auto).unwrap_err();
        assert_eq!(error.reason, Reason::AmbiguousRequest);
        // With an explicit proxy, the other proxy's headers are not read at all.
        let original = OriginalRequest::from_auth_headers(&map, ProxyHeaders::Nginx).unwrap();
        assert_eq!(original.path.as_deref(), Some("/admin"));
    }
}
