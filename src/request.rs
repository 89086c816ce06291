//! What the proxy told us: where the client's token is.

use std::str::FromStr;

use actix_web::http::header::{self, HeaderMap, HeaderName};

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
    let mut segments = 0;
    for segment in token.split('.') {
        segments += 1;
        if segments > 3 || segment.is_empty() || !segment.bytes().all(is_base64url) {
            return false;
        }
    }
    segments == 3
}

fn is_base64url(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_'
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
}
