//! What tokengate takes from an issuer's discovery document (OpenID Connect Discovery
//! 1.0, RFC 8414): where its keys are, and its introspection endpoint.

use serde::Deserialize;
use url::Url;

use super::jwks::KeyFetchError;
use crate::outbound::FetchError;

/// What tokengate takes from an issuer's discovery document (OpenID Connect Discovery
/// 1.0, RFC 8414).
#[derive(Debug)]
pub struct ProviderMetadata {
    pub jwks_uri: Url,
    /// The `introspection_endpoint`, when present and an http(s) URL.
    pub introspection_endpoint: Option<Url>,
    /// The document named an introspection endpoint that is not an http(s) URL.
    pub invalid_introspection_endpoint: bool,
}

impl ProviderMetadata {
    /// Parses a discovery document for `issuer`. Its `issuer` must be identical to the
    /// configured one (Discovery §4), or an attacker-controlled document could substitute
    /// its own keys; duplicate member names are refused, so no other reader of the same
    /// document sees another issuer or key location.
    /// `url` is where it was fetched from, for errors.
    pub fn parse(body: &[u8], url: &str, issuer: &str) -> Result<ProviderMetadata, KeyFetchError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
            #[serde(default)]
            introspection_endpoint: Option<String>,
        }
        let json_error = |source| {
            KeyFetchError::Fetch(FetchError::Json {
                url: url.to_owned(),
                source,
            })
        };
        let document: Discovery = super::json::from_slice(body)
            .and_then(serde_json::from_value)
            .map_err(json_error)?;
        if document.issuer != issuer {
            return Err(KeyFetchError::IssuerMismatch {
                found: document.issuer,
            });
        }
        let http_url = |text: &str| {
            Url::parse(text)
                .ok()
                .filter(|url| matches!(url.scheme(), "https" | "http"))
        };
        let jwks_uri = http_url(&document.jwks_uri).ok_or(KeyFetchError::BadJwksUri)?;
        // Only trusted because the document's `issuer` matched above: the endpoint
        // receives our client secret.
        let introspection_endpoint = document.introspection_endpoint.as_deref().map(http_url);
        Ok(ProviderMetadata {
            jwks_uri,
            invalid_introspection_endpoint: matches!(introspection_endpoint, Some(None)),
            introspection_endpoint: introspection_endpoint.flatten(),
        })
    }
}
