//! TLS for clients (`tls_cert_file`/`tls_key_file`): `https://`, `wss://` and SSE served by the
//! node itself with rustls, and the certificate reloaded on SIGHUP without dropping the
//! connections already open. Certificates are made with the `openssl` command (Debian's
//! `openssl`; present wherever `ca-certificates` is).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A self-signed certificate for 127.0.0.1 and localhost, and its key, in `dir/NAME.{crt,key}`.
fn make_cert(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "2", "-subj"])
        .arg(format!("/CN={name}"))
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        // A server certificate, not a CA (openssl's default): rustls refuses a CA as the end
        // entity.
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .args(["-addext", "extendedKeyUsage=serverAuth"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("the openssl command (Debian package openssl) makes the test certificates");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("roomcast-tls-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A client that trusts only the certificate in `ca`.
fn connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

/// A TLS connection to the node, checked against `ca`.
async fn tls(addr: SocketAddr, ca: &Path) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    tokio::time::timeout(DEADLINE, connector(ca).connect(name, tcp))
        .await
        .map_err(|_| std::io::Error::other("TLS handshake timed out"))?
}

/// An HTTPS request; returns (status, head, body).
async fn https(addr: SocketAddr, ca: &Path, path: &str) -> (u16, String, String) {
    let mut s = tls(addr, ca).await.expect("TLS handshake");
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    // The node closes after the answer; rustls reports a missing close_notify as an error,
    // after the bytes.
    let _ = tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

/// A WebSocket client over TLS, frames read and written by hand (`common::parse_frame`,
/// `masked_frame`): the test controls exactly when it reads.
struct Wss {
    s: TlsStream<TcpStream>,
    buf: Vec<u8>,
}

/// A `wss://` connection; returns it after its `welcome`.
async fn wss(addr: SocketAddr, ca: &Path) -> Wss {
    let mut s = tls(addr, ca).await.expect("TLS handshake");
    s.write_all(handshake_request(addr, "/ws", "13").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .expect("handshake answer in time")
            .unwrap();
        assert!(n > 0, "EOF in the handshake");
        buf.extend_from_slice(&b[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            assert!(buf.starts_with(b"HTTP/1.1 101"));
            buf.drain(..i + 4);
            break;
        }
    }
    let mut ws = Wss { s, buf };
    let w = recv(&mut ws).await;
    assert_eq!(w["type"], "welcome", "{w}");
    ws
}

/// The next text frame, as JSON (pings and other control frames are skipped).
async fn recv(ws: &mut Wss) -> Value {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some((op, payload, used)) = parse_frame(&ws.buf) {
            ws.buf.drain(..used);
            if ws.buf.capacity() > 1 << 20 && ws.buf.len() < 1 << 16 {
                ws.buf.shrink_to_fit();
            }
            match op {
                0x1 => return serde_json::from_slice(&payload).unwrap(),
                0x8 => panic!("closed: {payload:?}"),
                _ => continue,
            }
        }
        let mut b = vec![0u8; 65536];
        let n = tokio::time::timeout_at(deadline, ws.s.read(&mut b))
            .await
            .expect("a frame in time")
            .unwrap();
        assert!(n > 0, "EOF");
        ws.buf.extend_from_slice(&b[..n]);
    }
}

async fn send(ws: &mut Wss, v: Value) {
    ws.s.write_all(&masked_frame(true, 0x1, v.to_string().as_bytes()))
        .await
        .unwrap();
}

/// Sends a request and returns its reply (events that come first are kept in `events`).
async fn request(ws: &mut Wss, v: Value, events: &mut Vec<Value>) -> Value {
    let id = v["id"].clone();
    send(ws, v).await;
    loop {
        let f = recv(ws).await;
        if f["id"] == id {
            return f;
        }
        events.push(f);
    }
}

/// Reads until `n` events of `room` are in `events`; returns them.
async fn events(ws: &mut Wss, room: &str, n: usize, events: &mut Vec<Value>) -> Vec<Value> {
    let is_mine = |f: &Value| f["type"] == "message" && f["room"] == room;
    let mut got = events.iter().filter(|f| is_mine(f)).count();
    while got < n {
        let f = tokio::time::timeout(DEADLINE, recv(ws))
            .await
            .unwrap_or_else(|_| panic!("{got} of {n} events of {room}"));
        got += usize::from(is_mine(&f));
        events.push(f);
    }
    events.iter().filter(|f| is_mine(f)).cloned().collect()
}

/// Waits until one reload with `result` is counted (metrics read over HTTPS, trusting `ca`:
/// the handshake itself fails until the node presents that certificate).
async fn wait_reloads(addr: SocketAddr, ca: &Path, result: &str) {
    let series = format!("roomcast_tls_reloads_total{{result=\"{result}\"}}");
    let deadline = Instant::now() + DEADLINE;
    loop {
        if tls(addr, ca).await.is_ok() {
            let (_, _, body) = https(addr, ca, "/metrics").await;
            if metric_value(&body, &series) == Some(1.0) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "no {series} counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Messages of the burst (2 KB each).
const BURST: i64 = 2000;

#[tokio::test]
async fn https_wss_and_sse_then_the_certificate_is_reloaded_on_sighup_without_dropping_anyone() {
    let dir = temp_dir("reload");
    let (a_crt, a_key) = make_cert(&dir, "first");
    let (b_crt, b_key) = make_cert(&dir, "second");
    let crt = dir.join("node.crt");
    let key = dir.join("node.key");
    std::fs::copy(&a_crt, &crt).unwrap();
    std::fs::copy(&a_key, &key).unwrap();
    let node = Node::start(&[
        "--tls-cert-file",
        crt.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
    ]);
    let addr = node.http;

    // HTTPS, with the first certificate.
    let (st, _, body) = https(addr, &a_crt, "/healthz").await;
    assert_eq!(st, 200, "{body}");
    // The container health check's probe speaks https too.
    let probe = Command::new(bin())
        .args(["probe", &format!("https://{addr}/healthz")])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "{}",
        String::from_utf8_lossy(&probe.stderr)
    );
    // Only TLS is served on the port: plain HTTP gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain HTTP answered on a TLS port: {}",
        String::from_utf8_lossy(&answer)
    );
    // The node announces wss:// for itself.
    let (st, _, body) = https(addr, &a_crt, "/cluster").await;
    assert_eq!(st, 200, "{body}");
    assert!(body.contains(&format!("wss://{addr}/ws")), "{body}");

    // WebSocket over TLS: a subscriber and a publisher, and a burst (~4 MB, the subscriber
    // reading only once it is all published) far larger than rustls' buffer and the socket's,
    // so the writer's flushes and full-socket waits are exercised.
    let mut seen = Vec::new();
    let mut sub = wss(addr, &a_crt).await;
    let r = request(
        &mut sub,
        json!({"op":"join","id":1,"room":"tls"}),
        &mut seen,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let mut publ = wss(addr, &a_crt).await;
    let mut publ_seen = Vec::new();
    let big = "x".repeat(2000);
    for i in 0..BURST {
        let r = request(
            &mut publ,
            json!({"op":"publish","id":i + 10,"room":"tls","data":{"i":i,"pad":big}}),
            &mut publ_seen,
        )
        .await;
        assert_eq!(r["ok"], true, "{r}");
    }
    let evs = events(&mut sub, "tls", BURST as usize, &mut seen).await;
    let is: Vec<i64> = evs
        .iter()
        .map(|e| e["data"]["i"].as_i64().unwrap())
        .collect();
    assert_eq!(is, (0..BURST).collect::<Vec<_>>());
    seen.clear();

    // SSE over HTTPS.
    let mut sse = tls(addr, &a_crt).await.unwrap();
    sse.write_all(
        format!("GET /sse?rooms=tls HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut sse_buf = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while !String::from_utf8_lossy(&sse_buf).contains("event: joined") {
        assert!(Instant::now() < deadline, "no SSE joined event");
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, sse.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "SSE stream ended");
        sse_buf.extend_from_slice(&chunk[..n]);
    }
    assert!(String::from_utf8_lossy(&sse_buf).starts_with("HTTP/1.1 200"));

    // Rotate: the second pair replaces the first in the same files, then SIGHUP.
    std::fs::copy(&b_crt, &crt).unwrap();
    std::fs::copy(&b_key, &key).unwrap();
    node.signal("HUP");
    wait_reloads(addr, &b_crt, "ok").await;

    // New handshakes present the second certificate.
    let (st, _, _) = https(addr, &b_crt, "/healthz").await;
    assert_eq!(st, 200);
    assert!(
        tls(addr, &a_crt).await.is_err(),
        "the old certificate is still presented after the reload"
    );

    // Connections made before the reload are still there and still work, both ways.
    let r = request(
        &mut publ,
        json!({"op":"publish","id":-1,"room":"tls","data":{"i":BURST}}),
        &mut publ_seen,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let evs = events(&mut sub, "tls", 1, &mut seen).await;
    assert_eq!(evs[0]["data"]["i"], BURST);
    let mut sse_more = Vec::new();
    while !String::from_utf8_lossy(&sse_more).contains(&format!("\"i\":{BURST}")) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(DEADLINE, sse.read(&mut chunk))
            .await
            .expect("the SSE stream opened before the reload still delivers")
            .unwrap();
        assert!(n > 0, "SSE stream ended by the reload");
        sse_more.extend_from_slice(&chunk[..n]);
    }
    // A client on the new certificate reaches the old ones.
    let mut late = wss(addr, &b_crt).await;
    let mut late_seen = Vec::new();
    let r = request(
        &mut late,
        json!({"op":"publish","id":1,"room":"tls","data":{"i":BURST + 1}}),
        &mut late_seen,
    )
    .await;
    assert_eq!(r["ok"], true, "{r}");
    let evs = events(&mut sub, "tls", 2, &mut seen).await;
    assert_eq!(evs[1]["data"]["i"], BURST + 1);

    // A broken pair is refused on reload; the second certificate stays in use.
    std::fs::write(&crt, "not a certificate").unwrap();
    node.signal("HUP");
    wait_reloads(addr, &b_crt, "error").await;
    assert!(
        node.log_text().contains("TLS certificate not reloaded"),
        "{}",
        node.log_text()
    );
    let (st, _, _) = https(addr, &b_crt, "/healthz").await;
    assert_eq!(st, 200);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs a node that must refuse to start; returns its stderr.
fn refused(args: &[&str]) -> String {
    let out = Command::new(bin())
        .args(["--listen", "127.0.0.1:0", "--cluster-listen", "127.0.0.1:0"])
        .args(args)
        .env_remove("ROOMCAST_TLS_CERT_FILE")
        .env_remove("ROOMCAST_TLS_KEY_FILE")
        .output()
        .unwrap();
    assert!(!out.status.success(), "started with {args:?}");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn bad_tls_files_stop_the_node_at_start_with_the_reason() {
    let dir = temp_dir("bad");
    let (a_crt, a_key) = make_cert(&dir, "first");
    let (_, b_key) = make_cert(&dir, "second");
    let (a_crt, a_key, b_key) = (
        a_crt.to_str().unwrap(),
        a_key.to_str().unwrap(),
        b_key.to_str().unwrap(),
    );
    let err = refused(&["--tls-cert-file", a_crt]);
    assert!(err.contains("tls_key_file is not"), "{err}");
    let err = refused(&["--tls-key-file", a_key]);
    assert!(err.contains("tls_cert_file is not"), "{err}");
    let err = refused(&["--tls-cert-file", a_crt, "--tls-key-file", b_key]);
    assert!(err.contains("does not belong to the certificate"), "{err}");
    let err = refused(&["--tls-cert-file", a_key, "--tls-key-file", a_key]);
    assert!(err.contains("no PEM certificate"), "{err}");
    let missing = dir.join("missing.crt");
    let err = refused(&[
        "--tls-cert-file",
        missing.to_str().unwrap(),
        "--tls-key-file",
        a_key,
    ]);
    assert!(err.contains("missing.crt"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
