//! The protected application behind the proxies: a small HTTP/1.1 server of its own, so
//! that it sees the request target byte for byte as the proxy forwarded it (a framework's
//! URI parser would refuse or rewrite some of the targets the attack tests send). It
//! answers 200 with the request it received as JSON and remembers every request, with
//! the handler an ordinary web framework would have routed it to.
//!
//! Frameworks do not agree on how to read a raw target: some route on it verbatim, some
//! percent-decode once, some decode and resolve dot segments (`path.normalize`), Java
//! servlet containers strip `;parameters` first (`/public/..;/admin` is `/admin` to
//! Tomcat), C-based ones stop at a NUL, Windows-minded ones read `\` as `/`, and Express
//! and ASP.NET ignore case and a trailing slash. [`route`] reads the target each of these ways and keeps the most
//! sensitive handler any of them reaches: a request counts as reaching the admin handler
//! if one plausible upstream would have served it there.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use percent_encoding::percent_decode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Where a permissive framework routes a request, from least to most sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Handler {
    /// `/public…`, `/healthz`, and one stylesheet right under `/assets`: served to anyone.
    Public,
    /// Everything else: any valid token.
    App,
    /// `/assets/…` deeper than one level: private files.
    Assets,
    /// `/ops…`: the `ops` group.
    Ops,
    /// `/api/<version>/admin…`: the `admins` group.
    ApiAdmin,
    /// `/admin…`: nobody through the proxy.
    Admin,
}

impl Handler {
    pub fn as_str(self) -> &'static str {
        match self {
            Handler::Public => "public",
            Handler::App => "app",
            Handler::Assets => "assets",
            Handler::Ops => "ops",
            Handler::ApiAdmin => "api-admin",
            Handler::Admin => "admin",
        }
    }

    /// Anything but the public handler needs a token.
    pub fn is_protected(self) -> bool {
        self != Handler::Public
    }
}

/// The most sensitive handler that any common way of reading `target` routes to.
pub fn route(target: &[u8]) -> Handler {
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    readings(path)
        .iter()
        .map(|segments| classify(segments))
        .max()
        .unwrap_or(Handler::App)
}

/// The path's segments as each kind of framework reads them, lower-cased (routing that
/// ignores case), with empty segments dropped (`//` and a trailing slash ignored).
fn readings(path: &[u8]) -> Vec<Vec<String>> {
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let decoded_once = text(&percent_decode(path).collect::<Vec<u8>>());
    let verbatim = text(path);

    // Decoded until nothing changes (bounded), `\` read as `/`, cut at the first
    // control character (C strings end at NUL), `;parameters` stripped.
    let mut exhaustive = path.to_vec();
    for _ in 0..5 {
        let next: Vec<u8> = percent_decode(&exhaustive).collect();
        if next == exhaustive {
            break;
        }
        exhaustive = next;
    }
    if let Some(control) = exhaustive.iter().position(|b| b.is_ascii_control()) {
        exhaustive.truncate(control);
    }
    let exhaustive = text(&exhaustive).replace('\\', "/");

    // A servlet container: `;…` cut off each raw segment, then decoded once.
    let servlet: Vec<String> = verbatim
        .split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .map(|segment| text(&percent_decode(segment.as_bytes()).collect::<Vec<u8>>()))
        .collect();

    let backslash_as_slash = decoded_once.replace('\\', "/");
    vec![
        segments(&verbatim, false),
        segments(&decoded_once, false),
        segments(&backslash_as_slash, false),
        segments(&backslash_as_slash, true),
        resolve(servlet.iter().map(String::as_str)),
        resolve(
            exhaustive
                .split('/')
                .map(|segment| segment.split(';').next().unwrap_or_default()),
        ),
        // A raw `#` read as the start of a fragment.
        segments(decoded_once.split('#').next().unwrap_or_default(), true),
    ]
}

fn segments(path: &str, resolve_dots: bool) -> Vec<String> {
    if resolve_dots {
        resolve(path.split('/'))
    } else {
        path.split('/')
            .filter(|segment| !segment.is_empty())
            .map(str::to_lowercase)
            .collect()
    }
}

/// `.` and `..` resolved (never above the root), as RFC 3986 §5.2.4 does.
fn resolve<'a>(raw: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for segment in raw {
        match segment {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            other => out.push(other.to_lowercase()),
        }
    }
    out
}

fn classify(segments: &[String]) -> Handler {
    let segment = |index: usize| segments.get(index).map(String::as_str);
    match segment(0) {
        Some("admin") => Handler::Admin,
        Some("api") if segment(2) == Some("admin") => Handler::ApiAdmin,
        Some("public" | "healthz") => Handler::Public,
        Some("assets") if segments.len() == 2 && segments[1].ends_with(".css") => Handler::Public,
        Some("assets") => Handler::Assets,
        Some("ops") => Handler::Ops,
        _ => Handler::App,
    }
}

/// One request that reached the application.
#[derive(Debug, Clone)]
pub struct Reached {
    pub method: String,
    /// The request target as received (lossy UTF-8).
    pub target: String,
    pub handler: Handler,
    /// Its `Host` header.
    pub host: Option<String>,
    /// The `X-Auth-Request-User` or `Impersonate-User` it carried: the identity tokengate
    /// let through (clients' own are removed by the proxies).
    pub user: Option<String>,
}

/// The protected application: answers 200 with the request it received as JSON,
/// `{"method", "uri", "handler", "headers": {lower-case name: [values…]}}`, and remembers
/// every request. Stops when dropped.
pub struct EchoUpstream {
    pub address: SocketAddr,
    reached: Arc<Mutex<Vec<Reached>>>,
    server: tokio::task::JoinHandle<()>,
}

impl EchoUpstream {
    pub fn start() -> EchoUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the echo upstream");
        let address = listener.local_addr().expect("local address");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let listener = tokio::net::TcpListener::from_std(listener).expect("tokio listener");
        let reached = Arc::new(Mutex::new(Vec::new()));
        let log = reached.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, log.clone()));
            }
        });
        EchoUpstream {
            address,
            reached,
            server,
        }
    }

    /// How many requests reached the application.
    pub fn requests(&self) -> usize {
        self.reached().len()
    }

    /// Every request that reached the application, in order.
    pub fn reached(&self) -> Vec<Reached> {
        self.reached.lock().expect("upstream log").clone()
    }

    /// Fails if a request reached any handler but the public one without an identity
    /// from tokengate, or reached the admin handler at all.
    pub fn assert_no_protected_handler_reached_anonymously(&self) {
        for reached in self.reached() {
            assert!(
                reached.handler != Handler::Admin,
                "the admin handler was reached: {reached:?}"
            );
            assert!(
                !reached.handler.is_protected() || reached.user.is_some(),
                "the {} handler was reached without a token: {reached:?}",
                reached.handler.as_str()
            );
        }
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The most a request head may take; proxies send far less.
const MAX_HEAD: usize = 64 * 1024;
/// How long a kept-alive connection may sit idle before the server closes it.
const IDLE: Duration = Duration::from_secs(30);

/// Serves the requests of one connection, kept alive as HTTP/1.1 says.
async fn serve(stream: TcpStream, log: Arc<Mutex<Vec<Reached>>>) {
    let mut stream = BufReader::new(stream);
    loop {
        let Ok(Ok(Some(request))) = tokio::time::timeout(IDLE, read_request(&mut stream)).await
        else {
            return;
        };
        let handler = route(&request.target);
        let header = |name: &str| {
            request
                .headers
                .get(name)
                .and_then(|values| values.first())
                .cloned()
        };
        log.lock().expect("upstream log").push(Reached {
            method: request.method.clone(),
            target: String::from_utf8_lossy(&request.target).into_owned(),
            handler,
            host: header("host"),
            user: header("x-auth-request-user").or_else(|| header("impersonate-user")),
        });
        let body = json!({
            "method": request.method,
            "uri": String::from_utf8_lossy(&request.target),
            "handler": handler.as_str(),
            "headers": request.headers,
        })
        .to_string();
        let close = request.close;
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        );
        let written = async {
            stream.get_mut().write_all(head.as_bytes()).await?;
            stream.get_mut().write_all(body.as_bytes()).await?;
            stream.get_mut().flush().await
        };
        if written.await.is_err() || close {
            return;
        }
    }
}

struct Request {
    method: String,
    target: Vec<u8>,
    headers: BTreeMap<String, Vec<String>>,
    /// The connection ends after the answer (HTTP/1.0, `Connection: close`).
    close: bool,
}

/// Reads one request (head and body); `None` when the peer closed the connection or
/// sent something that is not HTTP/1.x.
async fn read_request(stream: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = Vec::new();
    let mut head_size = 0;
    if read_line(stream, &mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let method = String::from_utf8_lossy(method).into_owned();
    let target = target.to_vec();
    let http10 = version == b"HTTP/1.0";
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let read = read_line(stream, &mut line).await?;
        head_size += read;
        if read == 0 || head_size > MAX_HEAD {
            return Ok(None);
        }
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim_matches([' ', '\t'])
            .to_owned();
        headers.entry(name).or_default().push(value);
    }
    let has = |name: &str, token: &str| {
        headers.get(name).is_some_and(|values| {
            values
                .iter()
                .any(|value| value.to_ascii_lowercase().contains(token))
        })
    };
    let close = if http10 {
        !has("connection", "keep-alive")
    } else {
        has("connection", "close")
    };
    if has("transfer-encoding", "chunked") {
        skip_chunked_body(stream).await?;
    } else if let Some(length) = headers
        .get("content-length")
        .and_then(|values| values.first())
        .and_then(|value| value.parse::<u64>().ok())
    {
        let mut body = stream.take(length);
        tokio::io::copy(&mut body, &mut tokio::io::sink()).await?;
    }
    Ok(Some(Request {
        method,
        target,
        headers,
        close,
    }))
}

/// One line into `line`, without its CR LF; the bytes read (0 at the end of the stream).
async fn read_line(
    stream: &mut BufReader<TcpStream>,
    line: &mut Vec<u8>,
) -> std::io::Result<usize> {
    line.clear();
    let read = stream.read_until(b'\n', line).await?;
    while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
        line.pop();
    }
    Ok(read)
}

async fn skip_chunked_body(stream: &mut BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = String::new();
    loop {
        line.clear();
        stream.read_line(&mut line).await?;
        let size =
            usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
        if size == 0 {
            // Trailers, up to the empty line.
            loop {
                line.clear();
                if stream.read_line(&mut line).await? == 0 || line.trim().is_empty() {
                    return Ok(());
                }
            }
        }
        let mut chunk = vec![0; size + 2];
        stream.read_exact(&mut chunk).await?;
    }
}

/// The values of header `name` (lower-case) in an [`EchoUpstream`] answer.
pub fn echoed_header(echo: &Value, name: &str) -> Vec<String> {
    echo["headers"][name]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|value| value.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plausible_reading_counts() {
        for (target, handler) in [
            ("/healthz", Handler::Public),
            ("/public/docs/x?y=1", Handler::Public),
            ("/assets/site.css", Handler::Public),
            ("/assets/private/site.css", Handler::Assets),
            ("/orders/7", Handler::App),
            ("/ADMIN/", Handler::Admin),
            ("/api/V1/Admin/", Handler::ApiAdmin),
            // Verbatim routing.
            ("/admin/%2e%2e/public", Handler::Admin),
            ("/admin/..%2fpublic", Handler::Admin),
            // Decoded and resolved.
            ("/public/%2e%2e/admin", Handler::Admin),
            ("/public/..%5cadmin", Handler::Admin),
            ("/public/%252e%252e/admin", Handler::Admin),
            // A servlet container.
            ("/public/..;/admin", Handler::Admin),
            ("/admin;jsessionid=1", Handler::Admin),
            // Cut at NUL.
            ("/admin%00/../public", Handler::Admin),
            // `\` as a separator.
            ("/admin\\..\\public", Handler::Admin),
        ] {
            assert_eq!(route(target.as_bytes()), handler, "{target}");
        }
    }
}
