//! `/ext-authz/<original path>`: Envoy's HTTP `ext_authz` service. Envoy appends the
//! client's path (and query) to the configured `path_prefix` and keeps the client's method
//! and `Host`; only **200** allows (any other status, 202 included, is a denial).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::{decide, AppState, Contract};
use crate::policy::Requirements;
use crate::request::OriginalRequest;

/// The path prefix Envoy's `http_service.path_prefix` must be set to.
pub const PREFIX: &str = "/ext-authz";

pub async fn ext_authz(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    // The runtime this request started with answers it, whatever a reload does meanwhile.
    let runtime = state.runtime.load_full();
    // The raw path, as Envoy forwarded it: `parse_path` judges and decodes it. The query
    // string is the client's own, so it carries no policy: Envoy routes use config rules.
    let raw = request.uri().path();
    let path = raw
        .strip_prefix(PREFIX)
        .filter(|rest| !rest.is_empty())
        .unwrap_or("/");
    let original = OriginalRequest::from_ext_authz(
        request.method().as_str(),
        path,
        request.headers(),
        runtime.path_parameters,
    );
    decide(
        &runtime,
        &state.metrics,
        Contract::ExtAuthzHttp,
        request.headers(),
        original,
        Ok(Requirements::default()),
        Some(StatusCode::OK),
    )
    .await
}
