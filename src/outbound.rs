//! The one outbound HTTP client (key fetches, introspection) and the size-capped body
//! reader both use: an issuer, or whoever controls the network path to it, must not be
//! able to make us buffer an unbounded answer.

use crate::config::{ConfigError, HttpClientSettings};
use crate::error::CauseChain;

/// Bounded timeouts, no redirects (keys come only from the configured or discovered URL,
/// and a redirect would carry our client secret elsewhere), optional extra CA bundle.
pub fn client(settings: &HttpClientSettings) -> Result<reqwest::Client, ConfigError> {
    reqwest::Client::builder()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("tokengate/", env!("CARGO_PKG_VERSION")))
        .tls_certs_merge(settings.ca_certificates()?)
        .build()
        .map_err(|error| {
            ConfigError::new(
                "http_client",
                format!("cannot build the HTTP client: {}", CauseChain(&error)),
            )
        })
}

/// Why a body could not be read.
#[derive(Debug)]
pub enum BodyError {
    /// Longer than the cap (announced or sent).
    TooLarge,
    Http(reqwest::Error),
}

/// Reads the whole body, refusing more than `max` bytes: at once when the length is
/// announced, else as soon as the chunks pass it.
pub async fn read_capped(
    response: &mut reqwest::Response,
    max: usize,
) -> Result<Vec<u8>, BodyError> {
    if response
        .content_length()
        .is_some_and(|length| length > max as u64)
    {
        return Err(BodyError::TooLarge);
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Http)? {
        if body.len() + chunk.len() > max {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
