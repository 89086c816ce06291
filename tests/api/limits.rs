//! Connection and request limits (`server:`): connections beyond `max_connections` wait
//! while open ones keep being served, a client that trickles its headers is cut off, an
//! oversized request head is refused, and a body sent to `/auth` is never waited for.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// `host:port` of an app's auth listener.
fn authority(app: &TestApp) -> String {
    app.address.trim_start_matches("http://").to_owned()
}

/// A raw HTTP/1.1 connection, to control exactly what is sent and when.
struct RawConnection {
    stream: TcpStream,
}

impl RawConnection {
    async fn open(app: &TestApp) -> RawConnection {
        let stream = TcpStream::connect(authority(app)).await.expect("connect");
        RawConnection { stream }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// A keep-alive GET /auth with `token`.
    async fn send_auth(&mut self, token: &str) {
        let request = format!(
            "GET /auth HTTP/1.1\r\nHost: tokengate\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        self.send(request.as_bytes()).await.expect("send request");
    }

    /// The status of the next answer's head, if one arrives within `wait`; the rest of
    /// the head is read and dropped (answers of `/auth` have empty bodies).
    async fn status_within(&mut self, wait: Duration) -> Option<u16> {
        let mut head = Vec::new();
        let read = tokio::time::timeout(wait, async {
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                if self.stream.read(&mut byte).await.ok()? == 0 {
                    return None;
                }
                head.push(byte[0]);
            }
            Some(())
        })
        .await;
        read.ok().flatten()?;
        let text = String::from_utf8_lossy(&head);
        let body_length: usize = text
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse().ok())
                    .flatten()
            })
            .unwrap_or(0);
        let mut body = vec![0u8; body_length];
        self.stream.read_exact(&mut body).await.ok()?;
        text.split_whitespace().nth(1)?.parse().ok()
    }

    /// True once the server has closed the connection (bounded by `wait`).
    async fn closed_within(&mut self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        let mut buffer = [0u8; 256];
        while Instant::now() < deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut buffer)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // e.g. a 408 before the close
                Err(_) => return false,
            }
        }
        false
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_wait_while_open_ones_are_served() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.workers = Some(1);
        s.server.max_connections = 2;
    })
    .await;
    let token = issuer.token();
    let mut first = RawConnection::open(&app).await;
    let mut second = RawConnection::open(&app).await;
    for connection in [&mut first, &mut second] {
        connection.send_auth(&token).await;
        assert_eq!(
            connection.status_within(Duration::from_secs(5)).await,
            Some(202)
        );
    }

    // The third connection is accepted by the kernel, but not served while two are open.
    let mut third = RawConnection::open(&app).await;
    third.send_auth(&token).await;
    assert_eq!(third.status_within(Duration::from_millis(500)).await, None);
    // The open ones keep working.
    first.send_auth(&token).await;
    assert_eq!(first.status_within(Duration::from_secs(5)).await, Some(202));

    // Once one closes, the waiting one is served.
    drop(second);
    assert_eq!(third.status_within(Duration::from_secs(5)).await, Some(202));
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_cut_off() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.server.client_request_timeout = Duration::from_secs(1);
    })
    .await;
    let mut slow = RawConnection::open(&app).await;
    slow.send(b"GET /auth HTTP/1.1\r\nHost: tokengate\r\n")
        .await
        .unwrap();
    // One header byte every 200 ms: never a complete head. Bounded to 25 bytes (5 s).
    let trickle = async {
        for byte in b"X-Slow: aaaaaaaaaaaaaaaa".iter().copied() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if slow.send(&[byte]).await.is_err() {
                return;
            }
        }
    };
    trickle.await;
    assert!(
        slow.closed_within(Duration::from_secs(5)).await,
        "the connection is still open after the request timeout"
    );
}

#[tokio::test]
async fn an_oversized_request_head_is_refused_with_431() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app_with(&issuer, |s| {
        s.server.max_headers = 16;
        s.server.max_header_bytes = 4096;
    })
    .await;
    let token = issuer.token();
    let mut many = app
        .client
        .get(format!("{}/auth", app.address))
        .bearer_auth(&token);
    for index in 0..20 {
        many = many.header(format!("x-filler-{index}"), "1");
    }
    let refused = many.send().await.unwrap();
    assert_eq!(refused.status(), 431);
    assert_eq!(
        refused.text().await.unwrap(),
        r#"{"error":"invalid_request"}"#
    );

    let large = app
        .client
        .get(format!("{}/auth", app.address))
        .bearer_auth(&token)
        .header("x-filler", "a".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(large.status(), 431);
    assert_eq!(app.decisions_with_reason("headers_too_large"), 2.0);
    // Within the limits: judged as usual.
    assert_eq!(app.auth_with_token(&token).await.status(), 202);
}

#[tokio::test]
async fn a_body_sent_to_auth_is_never_waited_for() {
    let issuer = TestIssuer::start().await;
    let app = spawn_app(&issuer).await;
    let token = issuer.token();
    let mut connection = RawConnection::open(&app).await;
    // A 100 MiB body is announced, and only its first bytes are sent: the answer must not
    // depend on the rest, which tokengate never reads into memory.
    let head = format!(
        "POST /auth HTTP/1.1\r\nHost: tokengate\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 104857600\r\n\r\n"
    );
    connection.send(head.as_bytes()).await.unwrap();
    connection.send(&[b'x'; 1024]).await.unwrap();
    assert_eq!(
        connection.status_within(Duration::from_secs(5)).await,
        Some(202)
    );
}
