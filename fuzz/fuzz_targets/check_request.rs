//! A gRPC `CheckRequest` as Envoy (or anyone who reaches the gRPC listener) sends it,
//! decoded from arbitrary bytes like tonic decodes it, then read into the call every
//! adapter makes. Invariants beyond "no panic":
//! - a read call stays within the head limits and holds no pseudo-header;
//! - `host` is `attributes.request.http.host` when that is set;
//! - the original request it gives is parsed strictly (as on `/ext-authz`);
//! - every denial renders with the HTTP contract's status and a gRPC code that is not OK.
#![no_main]

use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tokengate::error::Reason;
use tokengate::grpc::check::{denial, read_request, HeadLimits};
use tokengate::request::{OriginalRequest, PathParameters};

const LIMITS: HeadLimits = HeadLimits {
    max_headers: 16,
    max_header_bytes: 2048,
    path_parameters: PathParameters::Refuse,
};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = CheckRequest::decode(data) else {
        return;
    };
    let call = match read_request(&request, LIMITS) {
        Ok(call) => call,
        Err(error) => {
            assert_denial(error.reason);
            return;
        }
    };
    assert!(
        call.headers.len() <= LIMITS.max_headers + 2,
        "{}",
        call.headers.len()
    );
    assert!(call
        .headers
        .keys()
        .all(|name| !name.as_str().starts_with(':')));
    let http = request
        .attributes
        .as_ref()
        .and_then(|attributes| attributes.request.as_ref())
        .and_then(|request| request.http.as_ref())
        .expect("a read call has an HTTP request");
    if !http.host.is_empty() {
        assert_eq!(
            call.headers.get("host").map(|host| host.as_bytes()),
            Some(http.host.as_bytes())
        );
    }
    if let Err(error) = &call.requirements {
        assert_eq!(error.reason, Reason::BadPolicy);
    }
    match OriginalRequest::from_ext_authz(
        call.method,
        call.path,
        &call.headers,
        LIMITS.path_parameters,
    ) {
        Ok(original) => {
            let path = original.path.expect("a path");
            assert!(path.starts_with('/') && !path.contains("//"), "{path:?}");
            if let Some(host) = original.host {
                assert_eq!(host, host.to_ascii_lowercase());
            }
        }
        Err(error) => assert_denial(error.reason),
    }
});

fn assert_denial(reason: Reason) {
    let response = denial(reason);
    let code = response.status.expect("a status").code;
    assert_ne!(code, tonic::Code::Ok as i32);
    match response.http_response {
        Some(HttpResponse::DeniedResponse(denied)) => {
            assert_eq!(
                denied.status.expect("an HTTP status").code,
                i32::from(reason.status())
            );
            assert!(!denied.body.is_empty());
        }
        other => panic!("{reason}: not a denied response: {other:?}"),
    }
}
