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

/// Why an outbound call (a key fetch, an introspection call) gave no usable answer: the
/// transport's part, before the caller judges what it received.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url} did not answer in time")]
    Timeout {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} sent more than {max} bytes")]
    TooLarge { url: String, max: usize },
    #[error("{url} sent invalid JSON")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

impl FetchError {
    /// A failed send or read; a timeout is told apart, since it names a slow party
    /// rather than a broken one.
    pub fn transport(url: &str, source: reqwest::Error) -> Self {
        let url = url.to_owned();
        if source.is_timeout() {
            FetchError::Timeout { url, source }
        } else {
            FetchError::Http { url, source }
        }
    }
}

/// Sends `request` to `url` (named in the error).
pub async fn send(
    request: reqwest::RequestBuilder,
    url: &str,
) -> Result<reqwest::Response, FetchError> {
    request
        .send()
        .await
        .map_err(|source| FetchError::transport(url, source))
}

/// Reads the whole body, refusing more than `max` bytes: at once when the length is
/// announced, else as soon as the chunks pass it.
pub async fn read_capped(
    response: &mut reqwest::Response,
    url: &str,
    max: usize,
) -> Result<Vec<u8>, FetchError> {
    let too_large = || FetchError::TooLarge {
        url: url.to_owned(),
        max,
    };
    if response
        .content_length()
        .is_some_and(|length| length > max as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|source| FetchError::transport(url, source))?
    {
        if body.len() + chunk.len() > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
