//! The socket layer against real clients: a hand-written raw client (every byte under the
//! test's control), tokio-tungstenite, and Python's `websockets` library. Correctness only —
//! how fast is the bench's business.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

/// Reads frames until one with `op`, skipping the welcome and other frames.
async fn frame_with(raw: &mut RawWs, op: u8) -> Vec<u8> {
    loop {
        let (o, p) = raw.read_frame().await.expect("connection ended");
        if o == op {
            return p;
        }
    }
}

fn close_code(payload: &[u8]) -> u16 {
    u16::from_be_bytes([payload[0], payload[1]])
}

#[tokio::test]
async fn ping_with_payload_gets_the_same_payload_back() {
    let node = Node::start(&[]);
    // Raw client.
    let mut raw = RawWs::connect(node.http).await;
    raw.send_frame(PING, b"hello-125").await;
    assert_eq!(frame_with(&mut raw, PONG).await, b"hello-125");
    // tokio-tungstenite.
    let mut c = node.connect().await;
    c.ws.send(Message::Ping(b"abc".to_vec().into()))
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let m = tokio::time::timeout_at(deadline, c.ws.next())
            .await
            .unwrap();
        if let Some(Ok(Message::Pong(p))) = m {
            assert_eq!(&p[..], b"abc");
            break;
        }
    }
}

#[tokio::test]
async fn fragmented_messages_are_joined_with_control_frames_between() {
    let node = Node::start(&[]);
    let mut raw = RawWs::connect(node.http).await;
    let req = br#"{"op":"ping","id":"frag"}"#;
    raw.send_fragment(false, TEXT, &req[..5]).await;
    raw.send_frame(PING, b"mid").await;
    raw.send_fragment(false, 0, &req[5..12]).await;
    raw.send_fragment(true, 0, &req[12..]).await;
    assert_eq!(frame_with(&mut raw, PONG).await, b"mid");
    let reply = frame_with(&mut raw, TEXT).await;
    let v: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(v["id"], "frag");
    assert_eq!(v["ok"], true);
}

#[tokio::test]
async fn frames_sent_together_with_the_handshake_are_read() {
    // The HTTP layer may read past the request; those bytes belong to the WebSocket.
    let node = Node::start(&[]);
    let first = masked_frame(true, PING, b"early");
    let mut raw = RawWs::connect_with(node.http, &first).await;
    assert_eq!(frame_with(&mut raw, PONG).await, b"early");
}

#[tokio::test]
async fn an_unmasked_client_frame_closes_with_1002() {
    let node = Node::start(&[]);
    let mut raw = RawWs::connect(node.http).await;
    raw.send_raw(&[0x81, 0x02, b'h', b'i']).await;
    assert_eq!(close_code(&frame_with(&mut raw, CLOSE).await), 1002);
    assert!(
        node.metric("roomcast_disconnects_total{reason=\"protocol_error\"}")
            .await
            >= Some(1.0)
    );
}

#[tokio::test]
async fn invalid_utf8_in_a_text_message_closes_with_1007() {
    let node = Node::start(&[]);
    let mut raw = RawWs::connect(node.http).await;
    raw.send_frame(TEXT, &[b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(close_code(&frame_with(&mut raw, CLOSE).await), 1007);
    // Split over fragments too.
    let mut raw = RawWs::connect(node.http).await;
    raw.send_fragment(false, TEXT, b"{\"op\":").await;
    raw.send_fragment(true, 0, &[0xc3]).await; // a code point cut short at the end
    assert_eq!(close_code(&frame_with(&mut raw, CLOSE).await), 1007);
}

#[tokio::test]
async fn an_oversized_frame_or_joined_message_closes_with_1009() {
    let node = Node::start(&["--max-frame-bytes", "10000", "--max-data-bytes", "1000"]);
    let mut raw = RawWs::connect(node.http).await;
    raw.send_frame(TEXT, &vec![b'x'; 10_001]).await;
    assert_eq!(close_code(&frame_with(&mut raw, CLOSE).await), 1009);
    // Fragments each under the limit, together over it.
    let mut raw = RawWs::connect(node.http).await;
    raw.send_fragment(false, TEXT, &vec![b'x'; 6000]).await;
    raw.send_fragment(true, 0, &vec![b'x'; 6000]).await;
    assert_eq!(close_code(&frame_with(&mut raw, CLOSE).await), 1009);
}

#[tokio::test]
async fn the_server_answers_a_client_close_and_closes_tcp_itself() {
    let node = Node::start(&[]);
    let mut raw = RawWs::connect(node.http).await;
    raw.send_frame(CLOSE, &1000u16.to_be_bytes()).await;
    // The answer, then EOF — while this client keeps its side open (it never closes TCP).
    let frames = raw.frames_until_eof().await;
    let (op, p) = frames.last().expect("a close answer");
    assert_eq!(*op, CLOSE);
    assert_eq!(close_code(p), 1000);
    wait_until("the connection to be gone", || async {
        node.metric("roomcast_connections").await == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn every_frame_queued_before_a_server_close_arrives_gap_free() {
    let node = Node::start(&[
        "--publish-rate",
        "0",
        "--shutdown-timeout",
        "5s",
        "--drain-grace",
        "1s",
    ]);
    let mut sub = RawWs::connect(node.http).await;
    sub.send_frame(TEXT, br#"{"op":"join","room":"last","id":1}"#)
        .await;
    frame_with(&mut sub, TEXT).await; // welcome
    frame_with(&mut sub, TEXT).await; // joined
    // And a tokio-tungstenite subscriber.
    let mut tsub = node.connect().await;
    tsub.join("last").await;
    let mut p = node.connect().await;
    for i in 0..300 {
        p.publish("last", json!(i)).await;
    }
    // A burst still in flight when the node shuts down.
    for i in 300..600 {
        p.send_json(&json!({"op":"publish","room":"last","data":i}))
            .await;
    }
    node.signal("TERM");
    let frames = sub.frames_until_eof().await;
    let mut seqs = Vec::new();
    for (op, payload) in &frames {
        if *op == TEXT {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap();
            if v["type"] == "message" {
                seqs.push(v["seq"].as_u64().unwrap());
            }
        }
    }
    assert!(
        seqs.len() >= 300,
        "only {} events before the close",
        seqs.len()
    );
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    let (op, payload) = frames.last().unwrap();
    assert_eq!(
        (*op, close_code(payload)),
        (CLOSE, 1001),
        "the close frame comes last"
    );
    let mut tseqs = Vec::new();
    let end = loop {
        match tsub.try_recv_frame(DEADLINE).await {
            Ok(v) if v["type"] == "message" => tseqs.push(v["seq"].as_u64().unwrap()),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        tseqs.len() >= 300,
        "only {} events before the close",
        tseqs.len()
    );
    assert_eq!(
        tseqs,
        (1..=tseqs.len() as u64).collect::<Vec<_>>(),
        "gap-free from 1"
    );
    assert!(
        end.contains("Away") && end.contains("shutdown"),
        "closed with 1001: {end}"
    );
}

#[tokio::test]
async fn tungstenite_client_close_is_answered() {
    let node = Node::start(&[]);
    let mut c = node.connect().await;
    c.ws.send(Message::Close(None)).await.unwrap();
    // The answer, then the end of the stream.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut answered = false;
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next())
            .await
            .expect("TCP not closed")
        {
            Some(Ok(Message::Close(_))) => answered = true,
            Some(Ok(_)) => {}
            Some(Err(_)) | None => break,
        }
    }
    assert!(answered, "the close was answered");
}

#[tokio::test]
async fn the_handshake_is_checked_on_the_upgrade_path() {
    let node = Node::start(&[]);
    async fn head(node: &Node, req: String) -> String {
        let mut s = tokio::net::TcpStream::connect(node.http).await.unwrap();
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    }
    // Wrong version: 426 naming the one we speak.
    let r = head(&node, handshake_request(node.http, "/ws", "8")).await;
    assert!(r.starts_with("HTTP/1.1 426"), "{r}");
    assert!(
        r.to_ascii_lowercase().contains("sec-websocket-version: 13"),
        "{r}"
    );
    // An upgrade elsewhere: 404.
    let r = head(&node, handshake_request(node.http, "/elsewhere", "13")).await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    // A plain GET /ws reaches the routes: 400.
    assert_eq!(node.get("/ws").await.0, 400);
    // And a good one still works.
    let mut c = node.connect().await;
    assert_eq!(c.request(json!({"op":"ping"})).await["ok"], true);
}

#[tokio::test]
async fn max_connections_refuses_upgrades_with_503() {
    let node = Node::start(&["--max-connections", "2"]);
    let _a = node.connect().await;
    let _b = node.connect().await;
    wait_until("two connections", || async {
        node.metric("roomcast_connections").await == Some(2.0)
    })
    .await;
    let err = tokio_tungstenite::connect_async(node.ws_url())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("503"), "{err}");
}

/// The same checks with Python's `websockets`, an independent client implementation.
#[tokio::test]
async fn python_websockets_client_conformance() {
    // websockets 14 or newer (`send(..., text=True)` writes raw bytes as a text frame).
    let probe = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys, websockets; sys.exit(int(websockets.version.version.split('.')[0]) < 14)",
        ])
        .status();
    if !matches!(probe, Ok(s) if s.success()) {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI must install Python's websockets (.ci/run does)"
        );
        eprintln!("skipped: python3 with the websockets package (>= 14) is not installed");
        return;
    }
    let node = Node::start(&["--max-frame-bytes", "10000", "--max-data-bytes", "1000"]);
    let out = tokio::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/ws_conformance.py"
        ))
        .arg(node.ws_url())
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("python client timed out")
        .expect("run python3");
    assert!(
        out.status.success(),
        "python client failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
