//! Requests crafted so that tokengate and the application behind the proxy could read
//! them differently, written once and sent through every proxy.
//!
//! Each table row is one request, written byte for byte ([`RawRequest`]), and what must
//! become of it behind each proxy: refused by the proxy itself, refused by tokengate for a
//! given reason (read from tokengate's metrics, so a refusal that nginx shows the client
//! as a 500 is still told apart from a tokengate outage), or let through to the handler
//! that every common reading of the target agrees on (the proxy normalised it first).
//! Whatever the row says, [`crafted_requests`] also checks that no request reached a
//! protected handler of the application without a token ([`crate::upstream::route`]
//! reads each target the ways frameworks do) and that no client-sent identity reached it.
//!
//! The columns are the proxies' real behaviour with the shipped configs, found by
//! running them: nginx resolves `..` only for its own location match and forwards the
//! raw target; Traefik resolves dot segments (`sanitizePath`) and refuses encoded
//! separators (`encodedCharacters`); Envoy normalises (`normalize_path`,
//! `merge_slashes`) and refuses encoded slashes (`path_with_escaped_slashes_action`).

use reqwest::StatusCode;
use serde_json::Value;

use crate::provider::TokengateOptions;
use crate::scenarios::{Deployment, Proxy, Stack};
use crate::support::{
    assert_alice, assert_no_header_name_with_underscore, assert_no_identity_filled_in, RawRequest,
    APP_HOST,
};
use crate::upstream::{echoed_header, Handler};

/// Route rules that the tables attack: restrictions first, then the grants (first match
/// wins), so that a grant only ever applies to a request no restriction matched.
pub const RULES: &str = r#"
rules:
  - name: admin
    paths: [/admin]
    deny: true
  - name: internal
    hosts: [internal.example.com]
    deny: true
  - name: api-admin
    paths: ["/api/*/admin"]
    allowed_groups: [admins]
  - name: read-only-reports
    paths: [/reports]
    methods: [DELETE]
    deny: true
  - name: public
    paths: [/public, /healthz]
    allow_anonymous: true
  - name: stylesheets
    paths: ["/assets/*.css"]
    allow_anonymous: true
  - name: status-page
    hosts: [status.example.com]
    allow_anonymous: true
"#;

/// The proxies in front of tokengate, in the order of a table's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Front {
    /// Plain nginx `auth_request` (deploy/nginx).
    Nginx,
    /// ingress-nginx's auth location (deploy/ingress-nginx).
    IngressNginx,
    /// Traefik `forwardAuth` (deploy/traefik).
    Traefik,
    /// Envoy HTTP `ext_authz` (deploy/envoy).
    Envoy,
}

impl Front {
    fn column(self) -> usize {
        self as usize
    }

    /// What the client gets when tokengate answers `status`: nginx passes 401 and 403 on
    /// and turns anything else into a 500; Traefik and Envoy pass tokengate's answer on.
    fn relayed(self, status: u16) -> u16 {
        match self {
            Front::Nginx | Front::IngressNginx if status != 401 && status != 403 => 500,
            _ => status,
        }
    }
}

/// Runs the table `rows` through deployment `D`: tokengate with [`RULES`], the proxy's
/// shipped config as `D` runs the tables.
pub async fn through<D: Deployment>(rows: fn() -> Vec<Row>) {
    let options = TokengateOptions {
        extra: RULES,
        ..TokengateOptions::default()
    };
    let stack = D::start(options, D::attacked).await;
    crafted_requests(&stack, D::FRONT, &rows()).await;
}

/// The tests of the attack classes through one deployment, each its own test so that
/// they run in parallel and fail apart: the three request tables ([`ambiguous_paths`],
/// [`case_slashes_and_globs`], [`host_tricks`], the last one named `$host_tricks`), and
/// where the proxy passes impersonation headers on, [`forged_impersonation`] with its
/// config as `impersonation` makes it and class 8 for the token `holders`
/// ([`every_spelling_is_removed`]).
macro_rules! table_tests {
    ($deployment:ty, $host_tricks:ident) => {
        #[tokio::test]
        async fn ambiguous_paths_never_reach_a_protected_handler() {
            $crate::attacks::through::<$deployment>($crate::attacks::ambiguous_paths).await;
        }

        #[tokio::test]
        async fn case_trailing_slashes_and_globs_never_dodge_a_rule() {
            $crate::attacks::through::<$deployment>($crate::attacks::case_slashes_and_globs)
                .await;
        }

        #[tokio::test]
        async fn $host_tricks() {
            $crate::attacks::through::<$deployment>($crate::attacks::host_tricks).await;
        }
    };
    ($deployment:ty, $host_tricks:ident, impersonation: $with:path, holders: [$($holder:expr),+]) => {
        $crate::attacks::table_tests!($deployment, $host_tricks);

        #[tokio::test]
        async fn forged_impersonation_headers_are_refused_or_removed() {
            $crate::attacks::impersonation_through::<$deployment>($with).await;
        }

        #[tokio::test]
        async fn every_spelling_of_the_identity_headers_is_removed() {
            let stack = <$deployment as $crate::scenarios::Deployment>::start_plain().await;
            $crate::attacks::every_spelling_is_removed(&stack, &[$($holder),+]).await;
        }
    };
}
pub(crate) use table_tests;

/// Runs [`forged_impersonation`] through deployment `D`, tokengate speaking Kubernetes
/// impersonation and the proxy's config as `with_impersonation` makes it pass
/// tokengate's `Impersonate-*` headers on.
pub async fn impersonation_through<D: Deployment>(with_impersonation: fn(String) -> String) {
    let options = TokengateOptions {
        extra: crate::identity::IMPERSONATION,
        ..TokengateOptions::default()
    };
    let stack = D::start(options, with_impersonation).await;
    crafted_requests(&stack, D::FRONT, &forged_impersonation()).await;
}

/// Whose token [`every_spelling_is_removed`] sends, and what the upstream must then see
/// of the identity.
pub type Holder = (&'static str, fn(&Value));
/// alice: her own user, email and groups.
pub const ALICE: Holder = ("alice", assert_alice);
/// client: a token without user claims, so no email or groups at all.
pub const NO_CLAIMS: Holder = ("client", assert_no_identity_filled_in);

/// Class 8 ([`every_spelling_of_the_identity_headers_is_removed`]) with the token of
/// each of `holders`, and what the upstream then received checked by its assertion.
pub async fn every_spelling_is_removed<P: Proxy>(stack: &Stack<P>, holders: &[Holder]) {
    for (client_id, assert_identity) in holders {
        for echo in every_spelling_of_the_identity_headers_is_removed(stack, client_id).await {
            assert_identity(&echo);
        }
    }
}

/// What must become of one crafted request behind one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The proxy refused it itself with this status: tokengate never saw it.
    Proxy(u16),
    /// tokengate refused it with this reason (its log and metrics label); the client got
    /// tokengate's status as the proxy relays it.
    Refused(&'static str),
    /// It reached the application, routed to this handler by every reading: the proxy
    /// normalised the target before tokengate and the application saw it.
    Reached(Handler),
}

/// tokengate's status for a denial reason.
fn tokengate_status(reason: &str) -> u16 {
    match reason {
        "ambiguous_path" | "ambiguous_request" | "bad_policy" => 400,
        "missing_token" | "malformed_token" | "invalid_token" | "bad_signature" => 401,
        _ => 403,
    }
}

/// Whose token a crafted request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Who {
    Nobody,
    /// bob: groups `guests`.
    Bob,
    /// alice: groups `developers`, `ops`.
    Alice,
}

/// One crafted request and what each proxy must make of it.
pub struct Row {
    pub who: Who,
    pub request: RawRequest,
    /// By [`Front`]: nginx, ingress-nginx, Traefik, Envoy.
    pub expect: [Expect; 4],
}

fn row(who: Who, request: RawRequest, expect: [Expect; 4]) -> Row {
    Row {
        who,
        request,
        expect,
    }
}

use Expect::{Proxy as ProxyRefuses, Reached, Refused};

fn get(target: &str) -> RawRequest {
    RawRequest::get(target)
}
use Who::{Alice, Bob, Nobody};

const AMBIGUOUS_PATH: Expect = Refused("ambiguous_path");
const AMBIGUOUS_REQUEST: Expect = Refused("ambiguous_request");
const PUBLIC: Expect = Reached(Handler::Public);

/// Class 1: a protected path with dot segments, encoded separators, `;` parameters or
/// controls that ends in a public one (or the reverse). tokengate used to resolve them
/// into the public path while the application routed the raw one to its admin handler.
pub fn ambiguous_paths() -> Vec<Row> {
    let refused_by_all = [AMBIGUOUS_PATH; 4];
    let nginx_forwards =
        |traefik: Expect, envoy: Expect| [AMBIGUOUS_PATH, AMBIGUOUS_PATH, traefik, envoy];
    vec![
        // Encoded dot segments: nginx forwards them raw; Traefik and Envoy resolve them.
        row(
            Nobody,
            get("/admin/%2e%2e/public"),
            nginx_forwards(PUBLIC, PUBLIC),
        ),
        row(
            Nobody,
            get("/admin/.%2E/public"),
            nginx_forwards(PUBLIC, PUBLIC),
        ),
        // Raw dot segments: nginx resolves them only to pick its location.
        row(
            Nobody,
            get("/admin/../public"),
            nginx_forwards(PUBLIC, PUBLIC),
        ),
        // Encoded `/` and `\`: Traefik and Envoy refuse them with the shipped settings.
        row(
            Nobody,
            get("/admin/..%2fpublic"),
            nginx_forwards(ProxyRefuses(400), ProxyRefuses(400)),
        ),
        row(
            Nobody,
            get("/admin%2F..%2Fpublic"),
            nginx_forwards(ProxyRefuses(400), ProxyRefuses(400)),
        ),
        row(
            Nobody,
            get("/admin/..%5cpublic"),
            nginx_forwards(ProxyRefuses(400), ProxyRefuses(400)),
        ),
        // A raw `\`: Envoy reads it as `/` and resolves the path.
        row(
            Nobody,
            get(r"/admin\..\public"),
            nginx_forwards(ProxyRefuses(400), PUBLIC),
        ),
        // `;` parameters: `..;` is `..` to a servlet container, and to Envoy, which
        // then forwards (and checks) `/admin`.
        row(
            Nobody,
            get("/public/..;/admin"),
            nginx_forwards(AMBIGUOUS_PATH, Refused("route_denied")),
        ),
        row(Bob, get("/admin;jsessionid=1"), refused_by_all),
        // Double encoding: Traefik refuses %25.
        row(
            Nobody,
            get("/admin/%252e%252e/public"),
            nginx_forwards(ProxyRefuses(400), AMBIGUOUS_PATH),
        ),
        // Controls. nginx and Envoy refuse an encoded NUL themselves; Traefik resolves
        // the dot segments first, and the NUL goes with them.
        row(
            Nobody,
            get("/admin%00/../public"),
            [
                ProxyRefuses(400),
                ProxyRefuses(400),
                PUBLIC,
                ProxyRefuses(400),
            ],
        ),
        row(Bob, get("/admin%1f"), refused_by_all),
        row(
            Nobody,
            RawRequest::get(b"/admin\0/../public"),
            [ProxyRefuses(400); 4],
        ),
        // A raw `#` (a fragment to some parsers): Traefik and Envoy refuse it.
        row(
            Nobody,
            get("/public#/../admin"),
            nginx_forwards(ProxyRefuses(400), ProxyRefuses(400)),
        ),
        // Invalid percent-encoding: nginx and Traefik refuse it themselves.
        row(
            Nobody,
            get("/public/%zz"),
            [
                ProxyRefuses(400),
                ProxyRefuses(400),
                ProxyRefuses(400),
                AMBIGUOUS_PATH,
            ],
        ),
    ]
}

/// Class 2: restrictions match whatever the case and with or without a trailing slash
/// (Express and ASP.NET route `/ADMIN/` to `/admin`), globs never cross `/`, grants match
/// exactly.
pub fn case_slashes_and_globs() -> Vec<Row> {
    let all = |expect: Expect| [expect; 4];
    vec![
        row(Bob, get("/ADMIN"), all(Refused("route_denied"))),
        row(Bob, get("/Admin/"), all(Refused("route_denied"))),
        row(Bob, get("/api/v1/admin/"), all(Refused("not_in_group"))),
        row(Bob, get("/API/V2/Admin"), all(Refused("not_in_group"))),
        row(
            Bob,
            get("/Reports/").method("DELETE"),
            all(Refused("route_denied")),
        ),
        // A lower-case method: only Traefik passes it on.
        row(
            Bob,
            get("/reports").method("delete"),
            [
                ProxyRefuses(400),
                ProxyRefuses(400),
                Refused("route_denied"),
                ProxyRefuses(400),
            ],
        ),
        // `*` stays within one segment: a deeper file is no stylesheet of the grant.
        row(
            Nobody,
            get("/assets/x/admin.css"),
            all(Refused("missing_token")),
        ),
        row(Nobody, get("/assets/site.css"), all(PUBLIC)),
        // Grants are case-sensitive.
        row(Nobody, get("/PUBLIC/docs"), all(Refused("missing_token"))),
        row(Nobody, get("/public/docs"), all(PUBLIC)),
    ]
}

/// Class 3: `Host` values that made the original URL read as another path or host, a
/// missing `Host`, and a denied host with a trailing dot or a port that is not a number.
/// Plain nginx hands tokengate its own `$host` (lower-cased, port and trailing dot
/// removed); ingress-nginx builds `X-Original-URL` from the client's `Host` as sent.
pub fn host_tricks() -> Vec<Row> {
    vec![
        // Read as `/healthz/orders` (public) by a lenient URL parser.
        row(
            Nobody,
            get("/orders").host(r"app.example.com:\healthz"),
            [
                Refused("missing_token"),
                AMBIGUOUS_REQUEST,
                ProxyRefuses(400),
                ProxyRefuses(400),
            ],
        ),
        // Read as `/`, past the `/admin` deny rule.
        row(
            Bob,
            get("/admin").host("app.example.com:?"),
            [
                Refused("route_denied"),
                AMBIGUOUS_REQUEST,
                ProxyRefuses(400),
                ProxyRefuses(400),
            ],
        ),
        row(
            Bob,
            get("/admin").host("app.example.com:#"),
            [
                Refused("route_denied"),
                AMBIGUOUS_REQUEST,
                ProxyRefuses(400),
                ProxyRefuses(400),
            ],
        ),
        // Read as the public host status.example.com.
        row(
            Nobody,
            get("/orders").host("app.example.com:@status.example.com"),
            [
                Refused("missing_token"),
                AMBIGUOUS_REQUEST,
                ProxyRefuses(400),
                AMBIGUOUS_REQUEST,
            ],
        ),
        // No host at all: `http:///status.example.com` must not make one up. The host
        // is unknown, which no host grant matches and every host restriction does (the
        // `internal` deny rule). Plain nginx puts its server name in; Traefik sends an
        // empty X-Forwarded-Host, which is no valid host; Envoy refuses HTTP/1.0.
        row(
            Nobody,
            get("/status.example.com").http10().without_host(),
            [
                Refused("missing_token"),
                Refused("route_denied"),
                AMBIGUOUS_REQUEST,
                ProxyRefuses(426),
            ],
        ),
        // The denied host, spelled so that it used to dodge the rule.
        row(
            Bob,
            get("/orders").host("internal.example.com.:80"),
            [Refused("route_denied"); 4],
        ),
        row(
            Bob,
            get("/orders").host("internal.example.com:abc"),
            [
                Refused("route_denied"),
                AMBIGUOUS_REQUEST,
                AMBIGUOUS_REQUEST,
                AMBIGUOUS_REQUEST,
            ],
        ),
        row(
            Bob,
            get("/orders").host("INTERNAL.example.com."),
            [Refused("route_denied"); 4],
        ),
    ]
}

/// Class 4: client-sent Kubernetes impersonation headers, in every spelling, while
/// tokengate speaks `kubernetes_impersonation`: refused by tokengate when they reach it,
/// or removed by the proxy; never at the upstream. Every proxy drops header names with
/// `_` (Traefik with `aliasHeadersStrategy: delete`).
/// The shipped configs strip `Impersonate-User`, `-Group` and `-Uid` before the upstream
/// (Traefik and Envoy even before tokengate); `Impersonate-Extra-*` has no fixed name and
/// reaches tokengate everywhere.
pub fn forged_impersonation() -> Vec<Row> {
    let forged = |name: &str, value: &str| get("/orders").header(name, value);
    let stripped = Reached(Handler::App);
    let refused = Refused("forged_impersonation");
    let dash = [refused, refused, stripped, stripped];
    let underscore = [stripped; 4];
    vec![
        row(Alice, forged("Impersonate-User", "mallory"), dash),
        row(Alice, forged("Impersonate-Group", "admins"), dash),
        row(Alice, forged("Impersonate-Uid", "mallory"), dash),
        row(Alice, forged("IMPERSONATE-UID", "mallory"), dash),
        row(
            Alice,
            forged("Impersonate-Extra-Scopes", "admins"),
            [refused; 4],
        ),
        row(
            Alice,
            forged("impersonate-extra-reason", "mallory"),
            [refused; 4],
        ),
        row(Alice, forged("Impersonate_User", "mallory"), underscore),
        row(Alice, forged("Impersonate_Group", "admins"), underscore),
        row(
            Alice,
            forged("Impersonate-Extra_Scopes", "admins"),
            underscore,
        ),
    ]
}

/// What a client pretends to be in forged identity values: none of it may reach the
/// upstream.
pub const FORGED_NAMES: [&str; 2] = ["mallory", "admins"];

/// Sends every row through `stack` (the proxy `front`, tokengate with [`RULES`] or the
/// test's own) and checks each outcome. Every mismatch is reported at once, as a table of
/// what the proxy and tokengate really did.
pub async fn crafted_requests<P: Proxy>(stack: &Stack<P>, front: Front, rows: &[Row]) {
    let alice = stack.provider.jwt("alice", "read").await;
    let bob = stack.provider.jwt("bob", "read").await;
    let mut report = Vec::new();
    let mut failed = false;
    for row in rows {
        let request = match row.who {
            Who::Nobody => row.request.clone(),
            Who::Bob => row.request.clone().bearer(&bob),
            Who::Alice => row.request.clone().bearer(&alice),
        };
        let decided_before = stack.tokengate.decisions().await;
        let reached_before = stack.upstream.requests();

        let answer = stack.send_raw(&request).await;

        let decided: Vec<String> = stack
            .tokengate
            .decisions()
            .await
            .into_iter()
            .flat_map(|(reason, count)| {
                let new = count - decided_before.get(&reason).copied().unwrap_or(0);
                std::iter::repeat_n(reason, new as usize)
            })
            .collect();
        let reached = stack.upstream.reached()[reached_before..].to_vec();
        let status = answer.as_ref().map(|answer| answer.status.as_u16());
        let expected = row.expect[front.column()];
        let ok = match expected {
            Expect::Proxy(want) => status == Ok(want) && decided.is_empty() && reached.is_empty(),
            Expect::Refused(reason) => {
                status == Ok(front.relayed(tokengate_status(reason)))
                    && decided == [reason]
                    && reached.is_empty()
            }
            Expect::Reached(handler) => {
                status == Ok(StatusCode::OK.as_u16())
                    && decided == ["ok"]
                    && reached.len() == 1
                    && reached[0].handler == handler
                    && answer
                        .as_ref()
                        .is_ok_and(|answer| no_forged_identity(&answer.body))
            }
        };
        failed |= !ok;
        report.push(format!(
            "{mark} {who:?} {request}\n      expected {expected:?}; got {status}, tokengate \
             decided {decided:?}, upstream got {reached}",
            mark = if ok { "ok  " } else { "FAIL" },
            who = row.who,
            request = row.request.describe(),
            status = match &answer {
                Ok(answer) => answer.status.as_u16().to_string(),
                Err(error) => error.clone(),
            },
            reached = if reached.is_empty() {
                "nothing".to_owned()
            } else {
                reached
                    .iter()
                    .map(|reached| {
                        let host = match reached.host.as_deref() {
                            Some(APP_HOST) => String::new(),
                            host => format!(" (Host {host:?})"),
                        };
                        format!(
                            "{} {}{host} → {}",
                            reached.method,
                            reached.target,
                            reached.handler.as_str()
                        )
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        ));
    }
    assert!(
        !failed,
        "behind {front:?}:\n{}\n{}",
        report.join("\n"),
        stack.logs()
    );
    stack
        .upstream
        .assert_no_protected_handler_reached_anonymously();
}

/// True when no forged identity value occurs in an upstream echo.
fn no_forged_identity(echo: &str) -> bool {
    !FORGED_NAMES.iter().any(|name| echo.contains(name))
}

/// Every spelling that some upstream reads as `name`: each `-` may be `_` (a CGI-style
/// server maps both to `HTTP_X_AUTH_REQUEST_USER`), in three cases.
pub fn spellings(name: &str) -> Vec<String> {
    let separators: Vec<usize> = name
        .char_indices()
        .filter(|(_, c)| *c == '-')
        .map(|(index, _)| index)
        .collect();
    let mut spellings = Vec::new();
    for mask in 0..(1u32 << separators.len()) {
        let mut spelled: Vec<char> = name.chars().collect();
        for (bit, &index) in separators.iter().enumerate() {
            if mask & (1 << bit) != 0 {
                spelled[index] = '_';
            }
        }
        let spelled: String = spelled.into_iter().collect();
        spellings.push(spelled.to_ascii_lowercase());
        spellings.push(spelled.to_ascii_uppercase());
        spellings.push(spelled);
    }
    spellings
}

/// The identity headers tokengate answers with, and the forged value a client sends in
/// each of their spellings.
const IDENTITY_HEADERS: [(&str, &str); 3] = [
    ("X-Auth-Request-User", "mallory"),
    ("X-Auth-Request-Email", "mallory@example.com"),
    ("X-Auth-Request-Groups", "admins"),
];

/// Class 8: every spelling of every identity header (any mix of `-` and `_`, any case),
/// sent with a token of `client_id`, reaches the upstream as tokengate's value or not at
/// all: never a header name with `_`, never a forged value. One request per header (24
/// spellings: tokengate takes at most 64 headers), whose echoes are returned.
pub async fn every_spelling_of_the_identity_headers_is_removed<P: Proxy>(
    stack: &Stack<P>,
    client_id: &str,
) -> Vec<Value> {
    let token = stack.provider.jwt(client_id, "read").await;
    let mut echoes = Vec::new();
    for (name, value) in IDENTITY_HEADERS {
        let spellings = spellings(name);
        assert_eq!(spellings.len(), 8 * 3, "three `-`, three cases");
        let request = spellings.iter().fold(
            RawRequest::get("/orders").bearer(&token),
            |request, spelling| request.header(spelling, value),
        );

        let answer = stack
            .send_raw(&request)
            .await
            .unwrap_or_else(|error| panic!("{error}\n{}", stack.logs()));

        let echo = answer.upstream_echo(|| stack.logs());
        assert_no_header_name_with_underscore(&echo, name);
        assert!(
            no_forged_identity(&answer.body),
            "a client-sent {name} reached the upstream: {}",
            answer.body
        );
        assert!(
            echoed_header(&echo, &name.to_ascii_lowercase()).len() <= 1,
            "{name} reached the upstream more than once: {echo}"
        );
        echoes.push(echo);
    }
    echoes
}
