//! Bounds a stranger cannot push past, at the door (`src/admission.rs`) and at start-up:
//! connections per client IP (429), HTTP connections being set up (503) and their timeout,
//! and a history too large for the internode frame that carries it (refused at start).

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends a WebSocket handshake and returns the response's status and body text.
async fn upgrade_status(addr: SocketAddr) -> (u16, String, TcpStream) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(handshake_request(addr, "/ws", "13").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("a response")
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        // A 101 has no body; a refusal has a small JSON body after the head.
        if let Some((head, body)) = text.split_once("\r\n\r\n")
            && (head.starts_with("HTTP/1.1 101") || body.ends_with('}') || n == 0)
        {
            let status = head
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            return (status, body.to_string(), s);
        }
        assert!(
            n > 0 && Instant::now() < deadline,
            "no complete response: {text}"
        );
    }
}

#[tokio::test]
async fn connections_per_client_address_are_bounded() {
    let node = Node::start(&["--max-connections-per-ip", "2"]);
    let (a, _, sa) = upgrade_status(node.http).await;
    let (b, _, _sb) = upgrade_status(node.http).await;
    assert_eq!((a, b), (101, 101));
    let (c, body, _) = upgrade_status(node.http).await;
    assert_eq!(c, 429, "{body}");
    assert!(
        body.contains("too many connections from this address"),
        "{body}"
    );
    // SSE counts toward the same bound.
    let (status, body) = http_get(node.http, "/sse?rooms=x").await;
    assert_eq!(status, 429, "{body}");
    node.wait_metric(
        "roomcast_connections_refused_total{reason=\"per_ip\"}",
        |v| v >= 2.0,
    )
    .await;
    // A connection that ends gives its place back.
    drop(sa);
    wait_until("a place freed", || async {
        upgrade_status(node.http).await.0 == 101
    })
    .await;
}

#[tokio::test]
async fn connections_being_set_up_are_bounded_and_timed_out() {
    let node = Node::start(&["--max-pending-handshakes", "1", "--handshake-timeout", "1s"]);
    // A connection that sends nothing holds the one place.
    let mut idle = TcpStream::connect(node.http).await.unwrap();
    node.wait_metric("roomcast_handshakes_pending", |v| v >= 1.0)
        .await;
    let (status, body, _) = upgrade_status(node.http).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many connections being set up"), "{body}");
    node.wait_metric(
        "roomcast_connections_refused_total{reason=\"pending_handshakes\"}",
        |v| v >= 1.0,
    )
    .await;
    // The silent connection is closed after handshake_timeout (actix-http answers 408).
    let started = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), idle.read_to_end(&mut rest))
        .await
        .expect("the idle connection is closed")
        .ok();
    assert!(started.elapsed() < Duration::from_secs(8));
    // Its place is free again, and an upgraded connection does not hold one.
    wait_until("handshakes possible again", || async {
        upgrade_status(node.http).await.0 == 101
    })
    .await;
    // Refused attempts count until the node sees them closed: retry until one is upgraded.
    let deadline = Instant::now() + Duration::from_secs(20);
    let _kept = loop {
        let (status, _, kept) = upgrade_status(node.http).await;
        if status == 101 {
            break kept;
        }
        assert!(
            Instant::now() < deadline,
            "no upgrade after the idle connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // With the bound at 1, another upgrade can only succeed if the open WebSocket no longer
    // counts as being set up (refused attempts count until the node sees them closed).
    wait_until("an upgrade beside an open WebSocket", || async {
        upgrade_status(node.http).await.0 == 101
    })
    .await;
}

#[test]
fn a_history_that_could_outgrow_an_internode_frame_is_refused_at_start() {
    let out = std::process::Command::new(bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--history-max-bytes",
            "66000000",
            "--outbound-max-bytes",
            "100000000",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("history_max_bytes"), "{err}");
    assert!(err.contains("internode frame limit"), "{err}");
}

#[tokio::test]
async fn internode_connections_in_their_handshake_are_bounded() {
    let node = Node::start(&[]);
    // 64 strangers that connect to the cluster port and say nothing hold every place...
    let mut strangers = Vec::new();
    for _ in 0..64 {
        strangers.push(TcpStream::connect(node.cluster).await.unwrap());
    }
    // ...so the next one is closed at once, and counted.
    wait_until("a stranger past the bound is closed at once", || async {
        let mut s = TcpStream::connect(node.cluster).await.unwrap();
        let mut b = [0u8; 16];
        matches!(
            tokio::time::timeout(Duration::from_millis(500), s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    })
    .await;
    node.wait_metric(
        "roomcast_internode_rejected_total{reason=\"handshake_limit\"}",
        |v| v >= 1.0,
    )
    .await;
    // The handshake timeout (5 s) ends the silent ones, and their places come back.
    let started = Instant::now();
    for s in &mut strangers {
        let mut b = [0u8; 16];
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b)).await;
    }
    assert!(started.elapsed() < Duration::from_secs(9));
    drop(strangers);
    // A real peer can join again.
    let peer = Node::start(&[
        "--seed",
        &node.cluster.to_string(),
        "--gossip-interval",
        "100ms",
        "--failure-timeout",
        "2s",
    ]);
    Cluster::wait_live_set(&node, &[node.id.clone(), peer.id.clone()]).await;
}
