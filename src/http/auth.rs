//! `/auth`: the subrequest of nginx `auth_request`, ingress-nginx `auth-url` and Traefik
//! `forwardAuth`. The auth URL's query string carries per-route requirements.

use actix_web::{web, HttpRequest, HttpResponse};

use super::{decide, AppState, Contract};
use crate::policy::Requirements;
use crate::request::OriginalRequest;

/// Any method: nginx always sends GET, Traefik forwards the client's method.
pub async fn auth(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    // The runtime this request started with answers it, whatever a reload does meanwhile.
    let runtime = state.runtime.load_full();
    let headers = request.headers();
    let original =
        OriginalRequest::from_auth_headers(headers, runtime.proxy_headers, runtime.path_parameters);
    let query = Requirements::from_query(request.query_string());
    decide(
        &runtime,
        &state.metrics,
        Contract::Auth,
        headers,
        original,
        query,
        None,
    )
    .await
}
