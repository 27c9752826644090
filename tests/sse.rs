//! The SSE transport against real nodes (issue 11): events as Server-Sent Events with ids that
//! name every room's position, resume with `Last-Event-ID` on another node after the first
//! one was SIGKILLed and on that node once restarted, and the same auth as WebSocket
//! connections.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Client, Cluster, DEADLINE, Node};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One SSE event as a client sees it.
#[derive(Debug, Clone)]
struct Event {
    id: Option<String>,
    event: Option<String>,
    data: String,
}

impl Event {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or(Value::Null)
    }
}

/// A minimal SSE client over HTTP/1.1 (chunked body), as a browser's EventSource reads it.
struct Sse {
    rd: BufReader<TcpStream>,
    text: String,
}

impl Sse {
    /// Opens `path` and returns the status and, on 200, the client.
    async fn open(
        addr: SocketAddr,
        path: &str,
        last_id: Option<&str>,
    ) -> (u16, Option<Sse>, String) {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        if let Some(id) = last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut rd = BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(DEADLINE, rd.read_line(&mut line))
                .await
                .unwrap()
                .unwrap();
            if n == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status != 200 {
            let mut body = String::new();
            let _ =
                tokio::time::timeout(Duration::from_secs(2), rd.read_to_string(&mut body)).await;
            return (status, None, body);
        }
        assert!(
            head.to_ascii_lowercase().contains("text/event-stream"),
            "{head}"
        );
        (
            status,
            Some(Sse {
                rd,
                text: String::new(),
            }),
            head,
        )
    }

    /// Reads one chunk of the body into `text`; false at the end of the body.
    async fn read_chunk(&mut self) -> bool {
        let mut size = String::new();
        if self.rd.read_line(&mut size).await.unwrap_or(0) == 0 {
            return false;
        }
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            return false;
        }
        let mut buf = vec![0u8; n + 2];
        if self.rd.read_exact(&mut buf).await.is_err() {
            return false;
        }
        self.text.push_str(&String::from_utf8_lossy(&buf[..n]));
        true
    }

    /// The next event (comments skipped), or None when the stream ended.
    async fn next(&mut self) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            while let Some(i) = self.text.find("\n\n") {
                let block: String = self.text.drain(..i + 2).collect();
                let mut ev = Event {
                    id: None,
                    event: None,
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        ev.id = Some(v.to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        ev.event = Some(v.to_string());
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        ev.data.push_str(v);
                        any = true;
                    }
                }
                if any {
                    return Some(ev);
                }
            }
            let more = tokio::time::timeout_at(deadline, self.read_chunk())
                .await
                .expect("SSE event in time");
            if !more {
                return None;
            }
        }
    }

    /// The next `n` message events (unnamed), skipping named ones.
    async fn messages(&mut self, n: usize) -> Vec<Event> {
        let mut out = Vec::new();
        while out.len() < n {
            let ev = self.next().await.expect("stream ended early");
            if ev.event.is_none() {
                out.push(ev);
            }
        }
        out
    }
}

fn data_of(evs: &[Event]) -> Vec<u64> {
    evs.iter()
        .map(|e| e.json()["data"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn events_carry_ids_naming_every_room_and_match_the_websocket_frames() {
    let node = Node::start(&[]);
    let (st, sse, _) = Sse::open(node.http, "/sse?rooms=alpha,beta", None).await;
    assert_eq!(st, 200);
    let mut sse = sse.unwrap();
    let welcome = sse.next().await.unwrap();
    assert_eq!(welcome.event.as_deref(), Some("welcome"));
    for _ in 0..2 {
        let j = sse.next().await.unwrap();
        assert_eq!(j.event.as_deref(), Some("joined"), "{j:?}");
    }
    let mut ws = Client::connect(&node.ws_url()).await;
    ws.join("alpha").await;
    ws.publish("alpha", json!(1)).await;
    ws.publish("beta", json!(2)).await;
    ws.publish("alpha", json!(3)).await;
    let evs = sse.messages(3).await;
    assert_eq!(data_of(&evs), vec![1, 2, 3]);
    // The data is the WebSocket event frame, byte for byte.
    let ws_ev = ws.next_event().await;
    assert_eq!(evs[0].json(), ws_ev);
    let epoch = ws_ev["epoch"].as_str().unwrap();
    let last = evs[2].id.as_deref().unwrap();
    assert!(last.contains(&format!("alpha:{epoch}:2")), "{last}");
    assert!(last.contains(":1") && last.contains("beta:"), "{last}");
    // Bad requests are refused with the protocol's codes.
    let (st, _, body) = Sse::open(node.http, "/sse?rooms=", None).await;
    assert_eq!(st, 400, "{body}");
    let (st, _, _) = Sse::open(node.http, "/sse?rooms=a%20b", None).await;
    assert_eq!(st, 400);
    let (st, _, _) = Sse::open(node.http, "/sse?rooms=a", Some("garbage")).await;
    assert_eq!(st, 400);
    node.wait_metric("roomcast_sse_connections", |v| v >= 1.0)
        .await;
}

#[tokio::test]
async fn last_event_id_resumes_every_room_on_another_node_and_on_the_restarted_one() {
    let mut c = Cluster::start(3, &[]).await;
    // Node 0 seeds the others; the SSE client is on node 2, which is killed and restarted.
    let mut ws = Client::connect(&c.nodes[0].ws_url()).await;
    let (st, sse, _) = Sse::open(c.nodes[2].http, "/sse?rooms=r1,r2", None).await;
    assert_eq!(st, 200);
    let mut sse = sse.unwrap();
    // Both joins answered before publishing (the joins wait for the rooms' owners).
    let mut joined = 0;
    while joined < 2 {
        if sse.next().await.unwrap().event.as_deref() == Some("joined") {
            joined += 1;
        }
    }
    let room = |i: u64| if i % 2 == 1 { "r1" } else { "r2" };
    for i in 1..=4u64 {
        ws.publish_keyed(room(i), json!(i), &format!("k{i}")).await;
    }
    let evs = sse.messages(4).await;
    assert_eq!(data_of(&evs), vec![1, 2, 3, 4]);
    let last_id = evs[3].id.clone().unwrap();
    // The node the SSE client was on dies; more messages are published meanwhile (retried
    // by key while the rooms it held fail over).
    let args = c.nodes[2].args.clone();
    c.nodes[2].kill();
    for i in 5..=8u64 {
        ws.publish_keyed(room(i), json!(i), &format!("k{i}")).await;
    }
    // The browser reconnects elsewhere with Last-Event-ID: every room resumes, no gap.
    let (st, sse, _) = Sse::open(c.nodes[1].http, "/sse?rooms=r1,r2", Some(&last_id)).await;
    assert_eq!(st, 200);
    let mut sse = sse.unwrap();
    let mut got = sse.messages(4).await;
    got.sort_by_key(|e| e.json()["data"].as_u64());
    assert_eq!(data_of(&got), vec![5, 6, 7, 8]);
    ws.publish_keyed("r1", json!(9), "k9").await;
    let ev9 = sse.messages(1).await;
    assert_eq!(data_of(&ev9), vec![9]);
    // The killed node comes back (same id); the browser reconnects to it with the last id it
    // got, while more is published: still no gap and no duplicate.
    let last_id = ev9[0].id.clone().unwrap();
    drop(sse);
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    c.nodes[2] = Node::start(&refs);
    c.wait_converged().await;
    ws.publish_keyed("r2", json!(10), "k10").await;
    let (st, sse, _) = Sse::open(c.nodes[2].http, "/sse?rooms=r1,r2", Some(&last_id)).await;
    assert_eq!(st, 200);
    let mut sse = sse.unwrap();
    assert_eq!(data_of(&sse.messages(1).await), vec![10]);
    ws.publish_keyed("r1", json!(11), "k11").await;
    assert_eq!(data_of(&sse.messages(1).await), vec![11]);
}

#[tokio::test]
async fn sse_requires_the_same_token_and_rights_as_websocket() {
    let dir = std::env::temp_dir().join(format!("rc-sse-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("secret");
    let secret = b"0123456789abcdef0123456789abcdef-sse-secret";
    std::fs::write(&path, secret).unwrap();
    let node = Node::start(&[
        "--auth",
        "required",
        "--jwt-secret-file",
        path.to_str().unwrap(),
    ]);
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "sam", "exp": exp, "rooms": {"open.*": ["subscribe"]}}),
        &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
    )
    .unwrap();
    let (st, _, body) = Sse::open(node.http, "/sse?rooms=open.a", None).await;
    assert_eq!(st, 401, "{body}");
    let (st, _, _) = Sse::open(node.http, "/sse?rooms=open.a&token=bad", None).await;
    assert_eq!(st, 401);
    let (st, _, body) = Sse::open(
        node.http,
        &format!("/sse?rooms=open.a,closed&token={token}"),
        None,
    )
    .await;
    assert_eq!(st, 403, "{body}");
    let (st, sse, _) =
        Sse::open(node.http, &format!("/sse?rooms=open.a&token={token}"), None).await;
    assert_eq!(st, 200);
    assert!(sse.is_some());
}

/// An SSE client that does not read is cut as a slow consumer, like a WebSocket one: the
/// stream ends with `close` 1013 and the disconnect is counted.
#[tokio::test]
async fn a_client_that_does_not_read_is_cut_as_a_slow_consumer() {
    let node = Node::start(&[
        "--publish-rate",
        "0",
        "--history-max-messages",
        "10",
        "--outbound-max-messages",
        "64",
    ]);
    // A tiny receive buffer, and no reading until the end.
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(node.http).await.unwrap();
    let req = format!(
        "GET /sse?rooms=flood HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        node.http
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut ws = Client::connect(&node.ws_url()).await;
    // Wait until the SSE connection has joined (it counts as a subscriber of the room).
    common::wait_until("the SSE client joined", || async {
        node.metric("roomcast_sse_connections").await == Some(1.0)
    })
    .await;
    let big = "x".repeat(16 * 1024);
    let mut i = 0u64;
    // Publish until the node gives up on the client (bounded: the kernel buffers a few MiB).
    let cut = loop {
        i += 1;
        ws.publish("flood", json!(big)).await;
        if node
            .metric("roomcast_slow_consumer_disconnects_total")
            .await
            == Some(1.0)
        {
            break true;
        }
        if i > 20_000 {
            break false;
        }
    };
    assert!(cut, "never cut after {i} messages");
    // The stream ends with the close event naming the reason.
    let mut body = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut body)).await;
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("event: close"), "no close event at the end");
    assert!(text.contains(r#""code":1013"#) && text.contains("slow_consumer"));
}
