//! `envoy.service.auth.v3.Authorization/Check`: a `CheckRequest` becomes the same call
//! the HTTP `/ext-authz` adapter makes (the client's headers, method, path and `Host`,
//! read by the same functions), and the [`Decision`] becomes a `CheckResponse`: an
//! `OkHttpResponse` with the identity headers, or a `DeniedHttpResponse` with the HTTP
//! contract's status, challenge and body.

use std::collections::HashMap;

use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue as EnvoyHeader, HeaderValueOption};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use envoy_types::pb::google::protobuf::{value::Kind, ListValue, Struct, Value};
use envoy_types::pb::google::rpc;
use tonic::{Request, Response, Status};

use crate::error::{AuthError, Reason};
use crate::gate::{Decision, Verdict};
use crate::http::{judge, respond, AppState, Contract};
use crate::identity::IMPERSONATE_GROUP;
use crate::policy::Requirements;
use crate::request::{OriginalRequest, PathParameters};
use crate::runtime::Runtime;

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const HOST: HeaderName = HeaderName::from_static("host");

/// The `Authorization` service, sharing the HTTP listeners' state: what it reads of it
/// is the runtime (swapped whole by a reload) and the metrics.
pub struct CheckService {
    state: actix_web::web::Data<AppState>,
}

impl CheckService {
    pub fn new(state: actix_web::web::Data<AppState>) -> Self {
        Self { state }
    }

    /// Decides one `CheckRequest`. Never fails: an unreadable call is a denial too.
    pub async fn decide(&self, request: &CheckRequest) -> CheckResponse {
        // The runtime this check started with answers it, whatever a reload does
        // meanwhile.
        let runtime = self.state.runtime.load_full();
        let limits = HeadLimits::of(&runtime);
        let (headers, original, requirements) = match read_request(request, limits) {
            Ok(call) => {
                let original = OriginalRequest::from_ext_authz(
                    call.method,
                    call.path,
                    &call.headers,
                    limits.path_parameters,
                );
                (call.headers, original, call.requirements)
            }
            Err(error) => (HeaderMap::new(), Err(error), Ok(Requirements::default())),
        };
        judge(
            &runtime,
            &self.state.metrics,
            Contract::ExtAuthzGrpc,
            &headers,
            original,
            requirements,
            |decision| render(&runtime, decision),
        )
        .await
    }
}

/// The `CheckResponse` of a decision.
fn render(runtime: &Runtime, decision: &mut Decision<'_>) -> CheckResponse {
    let identity: Vec<(HeaderName, HeaderValue)> = respond::identity_headers(decision).collect();
    if decision.outcome.is_ok() && several_impersonation_groups(&identity) {
        decision.outcome = Err(Reason::SeveralImpersonationGroups.into());
    }
    let metadata = metadata(runtime, decision);
    match &decision.outcome {
        Ok(_) => CheckResponse {
            status: Some(rpc::Status {
                code: tonic::Code::Ok as i32,
                ..rpc::Status::default()
            }),
            http_response: Some(HttpResponse::OkResponse(allow(runtime, &identity))),
            dynamic_metadata: Some(metadata),
        },
        Err(error) => {
            let mut response = denial(error.reason);
            response.dynamic_metadata = Some(metadata);
            response
        }
    }
}

/// The identity headers `set`, with overwrite semantics (a client's own value of the
/// same name never survives beside ours), and every other identity header tokengate
/// owns removed. Envoy applies `headers_to_remove` after the sets, so a name both set
/// and removed would never reach the upstream: only names not set are removed.
fn allow(runtime: &Runtime, set: &[(HeaderName, HeaderValue)]) -> OkHttpResponse {
    let mut headers_to_remove: Vec<String> = runtime
        .gate
        .verifier
        .identity_mapping()
        .owned_header_names()
        .iter()
        .filter(|name| !set.iter().any(|(set, _)| set == *name))
        .map(|name| name.as_str().to_owned())
        .collect();
    if runtime.settings.grpc.remove_authorization {
        headers_to_remove.push("authorization".to_owned());
    }
    OkHttpResponse {
        headers: set
            .iter()
            .map(|(name, value)| {
                set_header(name.as_str(), String::from_utf8_lossy(value.as_bytes()))
            })
            .collect(),
        headers_to_remove,
        ..OkHttpResponse::default()
    }
}

/// What Envoy keeps of the decision for its access log, RBAC and rate limits, under
/// `grpc.metadata_namespace`: only fields the decision has, never the token.
fn metadata(runtime: &Runtime, decision: &Decision<'_>) -> Struct {
    let mut fields = HashMap::new();
    let mut put = |key: &str, kind: Kind| {
        fields.insert(key.to_owned(), Value { kind: Some(kind) });
    };
    let text = |value: &str| Kind::StringValue(value.to_owned());
    let list = |values: &mut dyn Iterator<Item = &str>| {
        Kind::ListValue(ListValue {
            values: values
                .map(|value| Value {
                    kind: Some(Kind::StringValue(value.to_owned())),
                })
                .collect(),
        })
    };
    if let Some(token) = &decision.token {
        let identity = &token.identity;
        if let Some(issuer) = runtime.gate.verifier.issuer(token.issuer) {
            put("iss", text(issuer.issuer()));
        }
        for (key, value) in [
            ("sub", identity.subject()),
            ("user", identity.user()),
            ("email", identity.email()),
            ("client_id", identity.client_id()),
        ] {
            if let Some(value) = value {
                put(key, text(value));
            }
        }
        put("groups", list(&mut identity.groups()));
        put("scopes", list(&mut identity.scopes()));
    }
    if let Some(rule) = decision.rule {
        put("rule", text(rule));
    }
    put("cache_hit", Kind::BoolValue(decision.cache_hit));
    let outcome = match &decision.outcome {
        Ok(Verdict::Authenticated) => "ok",
        Ok(Verdict::Anonymous) => "anonymous",
        Err(error) => error.reason.as_str(),
    };
    put("reason", text(outcome));
    let mut namespaced = HashMap::new();
    namespaced.insert(
        runtime.settings.grpc.metadata_namespace.clone(),
        Value {
            kind: Some(Kind::StructValue(Struct { fields })),
        },
    );
    Struct { fields: namespaced }
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        // The peer certificate (`attributes.source.certificate`) stays in the request for
        // sender-constrained tokens (RFC 8705); nothing reads it yet.
        Ok(Response::new(self.decide(request.get_ref()).await))
    }
}

/// Whether an allow would need two `Impersonate-Group` lines or more. Envoy's gRPC
/// `ext_authz` turns several header options of one name into one line whatever their
/// `append_action` (the last one wins, or with `append: true` all are joined with `,`),
/// and the Kubernetes API server reads a line as one group: `developers,ops` would be a
/// group of its own, and the last option alone would silently drop the others
/// (tests/e2e/envoy_grpc.rs shows Envoy doing both).
fn several_impersonation_groups(identity: &[(HeaderName, HeaderValue)]) -> bool {
    identity
        .iter()
        .filter(|(name, _)| *name == IMPERSONATE_GROUP)
        .nth(1)
        .is_some()
}

/// A denial: the HTTP contract's status, headers and fixed body, and the gRPC code that
/// says the same (Envoy acts on the HTTP status; its logs and stats show the code).
pub fn denial(reason: Reason) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code(reason) as i32,
            message: reason.as_str().to_owned(),
            details: Vec::new(),
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(reason.status()),
            }),
            headers: respond::denial_headers(reason)
                .map(|(name, value)| set_header(name.as_str(), value.into()))
                .collect(),
            body: respond::body(reason).to_owned(),
        })),
        dynamic_metadata: None,
    }
}

/// The gRPC status code of a denial, by its HTTP status.
pub fn grpc_code(reason: Reason) -> tonic::Code {
    match reason.status() {
        401 => tonic::Code::Unauthenticated,
        403 => tonic::Code::PermissionDenied,
        503 => tonic::Code::Unavailable,
        _ => tonic::Code::InvalidArgument,
    }
}

/// A header set on the upstream request, replacing any value of that name.
fn set_header(name: &str, value: std::borrow::Cow<'_, str>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(EnvoyHeader {
            key: name.to_owned(),
            value: value.into_owned(),
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..HeaderValueOption::default()
    }
}

/// The bounds a call is read within: the HTTP listener's (`server.max_headers`,
/// `server.max_header_bytes`) and how `;` path parameters are read.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub path_parameters: PathParameters,
}

impl HeadLimits {
    fn of(runtime: &Runtime) -> Self {
        Self {
            max_headers: runtime.max_headers,
            max_header_bytes: runtime.max_header_bytes,
            path_parameters: runtime.path_parameters,
        }
    }
}

/// The client's request as a `CheckRequest` describes it, in the HTTP adapters' terms.
#[derive(Debug)]
pub struct ClientRequest<'a> {
    pub method: &'a str,
    /// The request target, path and query, as the client sent it.
    pub path: &'a str,
    /// The client's headers (pseudo-headers left out), with `host` from `:authority`
    /// and `x-request-id` from Envoy's request id when the client sent none.
    pub headers: HeaderMap,
    /// From `context_extensions`, with the auth URL query's keys.
    pub requirements: Result<Requirements, AuthError>,
}

/// Reads a `CheckRequest`. A call that describes no HTTP request, or one whose headers
/// are not valid HTTP headers, is refused, as is one over the head limits (counted
/// before anything is copied).
pub fn read_request(
    request: &CheckRequest,
    limits: HeadLimits,
) -> Result<ClientRequest<'_>, AuthError> {
    let attributes = request.attributes.as_ref().ok_or(Reason::BadCheckRequest)?;
    let http = attributes
        .request
        .as_ref()
        .and_then(|request| request.http.as_ref())
        .ok_or(Reason::BadCheckRequest)?;
    let headers = client_headers(http, limits)?;
    let method = Some(http.method.as_str())
        .filter(|method| !method.is_empty())
        .ok_or(Reason::BadCheckRequest)?;
    let path = Some(http.path.as_str())
        .filter(|path| !path.is_empty())
        .ok_or(Reason::BadCheckRequest)?;
    Ok(ClientRequest {
        method,
        path,
        headers,
        requirements: Requirements::from_pairs(&attributes.context_extensions),
    })
}

/// The client's headers as an HTTP header map. Envoy sends them either as a map of
/// strings (repeated headers joined with `,`, non-UTF-8 bytes replaced by `!`) or, with
/// `encode_raw_headers`, as a list of raw values, repeats kept apart; raw values must be
/// UTF-8. Pseudo-headers (`:authority`, `:path`, …) are no headers of the request: the
/// authority becomes `host`, as HTTP/1.1 carries it.
fn client_headers(http: &HttpRequest, limits: HeadLimits) -> Result<HeaderMap, AuthError> {
    let raw = http
        .header_map
        .as_ref()
        .map(|map| map.headers.as_slice())
        .filter(|headers| !headers.is_empty());
    let entries: Vec<(&str, &[u8])> = match raw {
        Some(headers) => headers
            .iter()
            .map(|header| {
                let value = if header.raw_value.is_empty() {
                    header.value.as_bytes()
                } else {
                    header.raw_value.as_slice()
                };
                (header.key.as_str(), value)
            })
            .collect(),
        None => http
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
            .collect(),
    };
    let count = entries
        .iter()
        .filter(|(name, _)| !name.starts_with(':'))
        .count();
    let bytes: usize = entries
        .iter()
        .map(|(name, value)| name.len() + value.len())
        .sum();
    // Checked before the map is built: a call over the limits costs no more than
    // counting it.
    if count > limits.max_headers || bytes > limits.max_header_bytes {
        return Err(Reason::HeadersTooLarge.into());
    }
    let mut headers = HeaderMap::with_capacity(count + 2);
    let mut authority = None;
    for (name, value) in entries {
        if let Some(pseudo) = name.strip_prefix(':') {
            if pseudo == "authority" {
                authority = Some(value);
            }
            continue;
        }
        // RFC 9110 §5.5: obs-text is allowed in a field value, but tokengate reads header
        // values as text; bytes that are no UTF-8 can only come from a raw header.
        if std::str::from_utf8(value).is_err() {
            return Err(Reason::BadCheckRequest.into());
        }
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| Reason::BadCheckRequest)?;
        let value = HeaderValue::from_bytes(value).map_err(|_| Reason::BadCheckRequest)?;
        headers.append(name, value);
    }
    let host = Some(http.host.as_bytes())
        .filter(|host| !host.is_empty())
        .or(authority);
    if let Some(host) = host {
        let host = HeaderValue::from_bytes(host).map_err(|_| Reason::BadCheckRequest)?;
        headers.insert(HOST, host);
    }
    if !headers.contains_key(X_REQUEST_ID) && !http.id.is_empty() {
        if let Ok(id) = HeaderValue::from_str(&http.id) {
            headers.insert(X_REQUEST_ID, id);
        }
    }
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderMap as EnvoyHeaderMap;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::Request as AttrRequest;
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    const LIMITS: HeadLimits = HeadLimits {
        max_headers: 8,
        max_header_bytes: 1024,
        path_parameters: PathParameters::Refuse,
    };

    fn check(http: HttpRequest, context: &[(&str, &str)]) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(AttrRequest {
                    http: Some(http),
                    ..AttrRequest::default()
                }),
                context_extensions: context
                    .iter()
                    .map(|(key, value)| (key.to_string(), value.to_string()))
                    .collect(),
                ..AttributeContext::default()
            }),
        }
    }

    fn http(headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            id: "envoy-id-1".to_owned(),
            method: "GET".to_owned(),
            path: "/orders?id=7".to_owned(),
            host: "App.Example.com:8443".to_owned(),
            headers: headers
                .iter()
                .map(|(key, value)| (key.to_string(), value.to_string()))
                .collect(),
            ..HttpRequest::default()
        }
    }

    fn reason(result: Result<ClientRequest<'_>, AuthError>) -> Reason {
        result.expect_err("refused").reason
    }

    #[test]
    fn headers_host_and_request_id_are_read_like_an_http_call() {
        let request = check(
            http(&[
                (":authority", "ignored.example.com"),
                (":path", "/ignored"),
                ("authorization", "Bearer abc"),
            ]),
            &[("allowed_groups", "ops, admins")],
        );
        let call = read_request(&request, LIMITS).unwrap();
        assert_eq!(call.method, "GET");
        assert_eq!(call.path, "/orders?id=7");
        assert_eq!(call.headers.get("host").unwrap(), "App.Example.com:8443");
        assert_eq!(call.headers.get("authorization").unwrap(), "Bearer abc");
        assert_eq!(call.headers.get("x-request-id").unwrap(), "envoy-id-1");
        assert_eq!(call.headers.len(), 3);
        assert_eq!(call.requirements.unwrap().groups, ["ops", "admins"]);
    }

    #[test]
    fn the_authority_stands_in_for_an_empty_host() {
        let mut http = http(&[(":authority", "app.example.com")]);
        http.host.clear();
        let request = check(http, &[]);
        assert_eq!(
            read_request(&request, LIMITS)
                .unwrap()
                .headers
                .get("host")
                .unwrap(),
            "app.example.com"
        );
    }

    #[test]
    fn a_call_without_an_http_request_is_refused() {
        let empty = CheckRequest::default();
        assert_eq!(
            reason(read_request(&empty, LIMITS)),
            Reason::BadCheckRequest
        );
        let no_http = CheckRequest {
            attributes: Some(AttributeContext::default()),
        };
        assert_eq!(
            reason(read_request(&no_http, LIMITS)),
            Reason::BadCheckRequest
        );
        for edit in [
            |http: &mut HttpRequest| http.method.clear(),
            |http: &mut HttpRequest| http.path.clear(),
        ] {
            let mut request = http(&[]);
            edit(&mut request);
            let request = check(request, &[]);
            assert_eq!(
                reason(read_request(&request, LIMITS)),
                Reason::BadCheckRequest
            );
        }
    }

    #[test]
    fn invalid_headers_are_refused() {
        for (name, value) in [
            ("bad name", "x"),
            ("x-control", "a\u{1}b"),
            ("x-newline", "a\r\nx-auth-request-user: mallory"),
        ] {
            let request = check(http(&[(name, value)]), &[]);
            assert_eq!(
                reason(read_request(&request, LIMITS)),
                Reason::BadCheckRequest,
                "{name}: {value:?}"
            );
        }
        let mut raw = http(&[]);
        raw.header_map = Some(EnvoyHeaderMap {
            headers: vec![EnvoyHeader {
                key: "x-latin1".to_owned(),
                raw_value: vec![b'a', 0xe9, b'b'],
                ..EnvoyHeader::default()
            }],
        });
        assert_eq!(
            reason(read_request(&check(raw, &[]), LIMITS)),
            Reason::BadCheckRequest
        );
    }

    #[test]
    fn raw_headers_keep_repeats_apart() {
        let mut raw = http(&[("authorization", "ignored when raw headers are sent")]);
        raw.header_map = Some(EnvoyHeaderMap {
            headers: ["Bearer a", "Bearer b"]
                .iter()
                .map(|value| EnvoyHeader {
                    key: "authorization".to_owned(),
                    raw_value: value.as_bytes().to_vec(),
                    ..EnvoyHeader::default()
                })
                .collect(),
        });
        let request = check(raw, &[]);
        let call = read_request(&request, LIMITS).unwrap();
        let values: Vec<_> = call.headers.get_all("authorization").collect();
        assert_eq!(values, ["Bearer a", "Bearer b"]);
    }

    #[test]
    fn heads_over_the_limits_are_refused_before_they_are_copied() {
        let many: Vec<(String, String)> = (0..9).map(|i| (format!("x-{i}"), "v".into())).collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let request = check(http(&many), &[]);
        assert_eq!(
            reason(read_request(&request, LIMITS)),
            Reason::HeadersTooLarge
        );
        let large = "x".repeat(1024);
        let request = check(http(&[("x-large", &large)]), &[]);
        assert_eq!(
            reason(read_request(&request, LIMITS)),
            Reason::HeadersTooLarge
        );
        // Pseudo-headers are not counted as headers (their bytes are).
        let pseudo = [(":method", "GET"), (":path", "/"), (":scheme", "https")];
        let mut headers = many[..8].to_vec();
        headers.extend(pseudo);
        assert!(read_request(&check(http(&headers), &[]), LIMITS).is_ok());
    }

    #[test]
    fn context_extensions_use_the_query_keys() {
        let request = check(http(&[]), &[("allowed_group", "ops")]);
        let call = read_request(&request, LIMITS).unwrap();
        assert_eq!(call.requirements.unwrap_err().reason, Reason::BadPolicy);
    }

    /// The fuzz target's seeds are real encoded `CheckRequest`s, read as they should be.
    #[test]
    fn the_fuzz_seeds_decode_and_read() {
        use prost::Message;
        let seed = |name: &str| {
            let path = format!(
                "{}/fuzz/corpus/check_request/{name}",
                env!("CARGO_MANIFEST_DIR")
            );
            CheckRequest::decode(std::fs::read(path).unwrap().as_slice()).unwrap()
        };
        let allow = seed("allow");
        let call = read_request(&allow, LIMITS).unwrap();
        assert_eq!(call.path, "/orders?id=7");
        assert_eq!(call.headers.get("authorization").unwrap(), "Bearer a.b.c");
        let context = seed("context");
        let call = read_request(&context, LIMITS).unwrap();
        assert_eq!(call.requirements.unwrap().scopes, ["read"]);
        assert!(read_request(&seed("ambiguous"), LIMITS).is_ok());
        assert_eq!(
            reason(read_request(&seed("no-http"), LIMITS)),
            Reason::BadCheckRequest
        );
    }

    #[test]
    fn denials_carry_the_http_contract() {
        for (reason, code, status) in [
            (Reason::MissingToken, tonic::Code::Unauthenticated, 401),
            (Reason::NotInGroup, tonic::Code::PermissionDenied, 403),
            (Reason::BadCheckRequest, tonic::Code::InvalidArgument, 400),
            (Reason::HeadersTooLarge, tonic::Code::InvalidArgument, 431),
            (Reason::KeysUnavailable, tonic::Code::Unavailable, 503),
        ] {
            let response = denial(reason);
            assert_eq!(response.status.unwrap().code, code as i32, "{reason}");
            let Some(HttpResponse::DeniedResponse(denied)) = response.http_response else {
                panic!("a denied response for {reason}");
            };
            assert_eq!(denied.status.unwrap().code, status);
            assert_eq!(denied.body, respond::body(reason));
            let challenge: Vec<_> = denied
                .headers
                .iter()
                .filter_map(|option| option.header.as_ref())
                .filter(|header| header.key == "www-authenticate")
                .map(|header| header.value.as_str())
                .collect();
            assert_eq!(
                challenge,
                respond::challenge(reason).into_iter().collect::<Vec<_>>()
            );
        }
    }
}
