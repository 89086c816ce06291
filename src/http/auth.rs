//! `/auth`: the subrequest of nginx `auth_request` and Traefik `forwardAuth`.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use super::AppState;
use crate::error::AuthError;
use crate::verify::Allowed;

/// Any method: nginx always sends GET, Traefik forwards the client's method.
pub async fn auth(request: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let outcome = state.verifier.verify_request(request.headers()).await;
    respond(&state, outcome)
}

fn respond(state: &AppState, outcome: Result<Allowed, AuthError>) -> HttpResponse {
    match outcome {
        Ok(allowed) => {
            state.metrics.allowed();
            let token = &allowed.token;
            tracing::debug!(
                outcome = "allow",
                issuer = state.verifier.issuer_name(token.issuer),
                sub = token.identity.subject.as_deref().unwrap_or(""),
                cache_hit = allowed.cache_hit,
                "allowed"
            );
            let mut response = HttpResponse::build(state.success_status);
            response.insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-store")));
            for (name, value) in &token.identity.headers {
                response.insert_header((name.clone(), value.clone()));
            }
            response.finish()
        }
        Err(error) => {
            state.metrics.denied(error.reason);
            tracing::info!(
                outcome = "deny",
                reason = error.reason.as_str(),
                status = error.reason.status().as_u16(),
                "denied"
            );
            // Library messages may quote attacker-chosen claim text: debug level only.
            if let Some(source) = &error.source {
                tracing::debug!(reason = error.reason.as_str(), detail = %source, "denial detail");
            }
            error.error_response()
        }
    }
}
