//! Test harness: roomcast nodes as real processes, and WebSocket clients.
//!
//! Nodes listen on port 0 and the harness learns the bound address from the node's
//! `listening` log line, so tests run in parallel without port clashes. Every wait has a
//! deadline; nothing sleeps to synchronise (polling loops re-check a condition until their
//! deadline).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Default deadline for anything a test waits for.
pub const DEADLINE: Duration = Duration::from_secs(20);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_roomcast")
}

/// A roomcast node running as a child process.
pub struct Node {
    child: Option<Child>,
    pub http: SocketAddr,
    /// The cluster port (gossip UDP and internode TCP).
    pub cluster: SocketAddr,
    pub id: String,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The arguments it was started with (to restart it).
    pub args: Vec<String>,
}

impl Node {
    /// Starts a node with `args` (plus `--listen 127.0.0.1:0` and a node id unless given).
    pub fn start(args: &[&str]) -> Node {
        Self::start_env(args, &[])
    }

    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Node {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut all: Vec<String> = Vec::new();
        let id = if let Some(i) = args.iter().position(|a| *a == "--node-id") {
            args[i + 1].to_string()
        } else {
            let id = format!("t{}-{}", std::process::id(), n);
            all.extend(["--node-id".to_string(), id.clone()]);
            id
        };
        if !args.contains(&"--listen") {
            all.extend(["--listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        if !args.contains(&"--cluster-listen") {
            all.extend(["--cluster-listen".to_string(), "127.0.0.1:0".to_string()]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = Command::new(bin());
        // Nodes see only the options a test gives them, not the developer's environment.
        for (k, _) in std::env::vars() {
            if k.starts_with("ROOMCAST_") {
                cmd.env_remove(k);
            }
        }
        cmd.args(&all)
            .env("ROOMCAST_LOG_FORMAT", "text")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn roomcast");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(SocketAddr, SocketAddr)>();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent && line.contains("listening") {
                    let http = field(&line, " http=").and_then(|a| a.parse().ok());
                    let cluster = field(&line, " cluster=").and_then(|a| a.parse().ok());
                    if let (Some(h), Some(c)) = (http, cluster) {
                        let _ = tx.send((h, c));
                        sent = true;
                    }
                }
                if std::env::var("RC_TEST_LOGS").is_ok() {
                    eprintln!("[node] {line}");
                }
                log2.lock().unwrap().push(line);
            }
        });
        let (http, cluster) = match rx.recv_timeout(DEADLINE) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "node did not report its address; log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Node {
            child: Some(child),
            http,
            cluster,
            id,
            log,
            args: all,
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let c = self.child.as_mut()?;
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// GET `path`; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    /// The value of a metric line starting with `series` (name plus optional labels).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = self.get("/metrics").await;
        metric_value(&body, series)
    }

    /// Waits until the metric satisfies `pred`.
    pub async fn wait_metric(&self, series: &str, pred: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let v = self.metric(series).await;
            if let Some(v) = v
                && pred(v)
            {
                return v;
            }
            assert!(Instant::now() < deadline, "metric {series} stuck at {v:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn metric_value(body: &str, series: &str) -> Option<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(series)
                && matches!(l.as_bytes().get(series.len()), Some(b' ') | Some(b'{'))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let i = line.find(key)?;
    line[i + key.len()..].split_whitespace().next()
}

/// A minimal HTTP/1.1 GET (no client crate needed).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, &[], "").await
}

/// A minimal HTTP/1.1 request with extra headers and a body.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect http");
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf).to_string();
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (status, body)
    };
    tokio::time::timeout(DEADLINE, fut)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} timed out"))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a connection ended, as seen by the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Ended {
    Closed(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

/// A WebSocket client speaking the roomcast protocol.
pub struct Client {
    pub ws: Ws,
    pub welcome: Value,
    next_id: u64,
    /// Frames read while waiting for something else (events, replies to other ids).
    pub pending: std::collections::VecDeque<Value>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect timed out")
            .expect("connect");
        let mut c = Client {
            ws,
            welcome: Value::Null,
            next_id: 1,
            pending: Default::default(),
        };
        c.welcome = c.recv_frame().await;
        assert_eq!(c.welcome["type"], "welcome", "first frame: {}", c.welcome);
        c
    }

    /// Connects over a socket with a tiny receive buffer (to make a slow consumer).
    pub async fn connect_small_rcvbuf(url: &str, addr: SocketAddr) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.set_recv_buffer_size(4096).unwrap();
        let stream = sock.connect(addr).await.unwrap();
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("ws handshake");
        let mut c = Client {
            ws,
            welcome: Value::Null,
            next_id: 1,
            pending: Default::default(),
        };
        c.welcome = c.recv_frame().await;
        c
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::Text(text.into().into()))
            .await
            .expect("send");
    }

    pub async fn send_json(&mut self, v: &Value) {
        self.send_text(v.to_string()).await;
    }

    /// Reads the next text frame as JSON (skipping pings), with the default deadline.
    pub async fn recv_frame(&mut self) -> Value {
        match self.try_recv_frame(DEADLINE).await {
            Ok(v) => v,
            Err(e) => panic!("expected a frame, got {e:?}"),
        }
    }

    /// The next text frame, or how the connection ended / "timeout".
    pub async fn try_recv_frame(&mut self, limit: Duration) -> Result<Value, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| "timeout".to_string())?;
            match msg {
                Some(Ok(Message::Text(t))) => {
                    return serde_json::from_str(&t).map_err(|e| format!("bad JSON {e}: {t}"));
                }
                Some(Ok(Message::Close(f))) => return Err(format!("closed {f:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("error {e}")),
                None => return Err("eof".into()),
            }
        }
    }

    /// Sends a request with a fresh numeric id and returns its reply; frames that arrive
    /// meanwhile are kept in `pending`.
    pub async fn request(&mut self, mut req: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        req["id"] = json!(id);
        self.send_json(&req).await;
        self.reply_to(json!(id)).await
    }

    /// Waits for the reply with `id`.
    pub async fn reply_to(&mut self, id: Value) -> Value {
        if let Some(i) = self
            .pending
            .iter()
            .position(|v| v.get("ok").is_some() && v["id"] == id)
        {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let v = self.recv_frame().await;
            if v.get("ok").is_some() && v["id"] == id {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    pub async fn join(&mut self, room: &str) -> Value {
        let r = self.request(json!({"op":"join","room":room})).await;
        assert_eq!(r["ok"], true, "join {room}: {r}");
        r
    }

    pub async fn join_since(&mut self, room: &str, since: u64) -> Value {
        let r = self
            .request(json!({"op":"join","room":room,"since":since}))
            .await;
        assert_eq!(r["ok"], true, "join {room}: {r}");
        r
    }

    /// Publishes and returns the assigned seq.
    pub async fn publish(&mut self, room: &str, data: Value) -> u64 {
        let r = self
            .request(json!({"op":"publish","room":room,"data":data}))
            .await;
        assert_eq!(r["ok"], true, "publish: {r}");
        r["seq"].as_u64().expect("seq")
    }

    /// Publishes with an idempotency key, retrying on `unavailable` (a room moving or failing
    /// over) until acknowledged: a retry can never double the message. Returns the seq.
    pub async fn publish_keyed(&mut self, room: &str, data: Value, key: &str) -> u64 {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let r = self
                .request(json!({"op":"publish","room":room,"data":data,"key":key}))
                .await;
            if r["ok"] == true {
                return r["seq"].as_u64().expect("seq");
            }
            assert_eq!(r["error"]["code"], "unavailable", "{r}");
            assert!(Instant::now() < deadline, "publish never accepted: {r}");
            // Polling with a deadline: the room's new owner is not observable from here.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The next event (a frame with "type":"message"), from `pending` first.
    pub async fn next_event(&mut self) -> Value {
        if let Some(i) = self.pending.iter().position(|v| v["type"] == "message") {
            return self.pending.remove(i).unwrap();
        }
        loop {
            let v = self.recv_frame().await;
            if v["type"] == "message" {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// Collects `n` events of `room`; events of other rooms stay pending, in order.
    pub async fn events(&mut self, room: &str, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        let mut others = Vec::new();
        while out.len() < n {
            let e = self.next_event().await;
            if e["room"] == room {
                out.push(e);
            } else {
                others.push(e);
            }
        }
        for (i, e) in others.into_iter().enumerate() {
            self.pending.insert(i, e);
        }
        out
    }

    /// Reads until the connection ends and reports how.
    pub async fn ended(&mut self) -> Ended {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("connection did not end in time");
            match msg {
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Ended::Closed(code.into(), reason.to_string());
                }
                Some(Ok(Message::Close(None))) => return Ended::Closed(1005, String::new()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Seqs of events.
pub fn seqs(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["seq"].as_u64().unwrap()).collect()
}

/// A raw WebSocket client that does the handshake by hand and then reads frames without ever
/// answering (no pongs, no close echo): a client that is alive on TCP but silent.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    pub async fn connect(addr: SocketAddr) -> RawWs {
        RawWs::connect_with(addr, &[]).await
    }

    /// Connects, writing `first` (e.g. frames) in the same write as the handshake.
    pub async fn connect_with(addr: SocketAddr, first: &[u8]) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req = handshake_request(addr, "/ws", "13").into_bytes();
        req.extend_from_slice(first);
        stream.write_all(&req).await.unwrap();
        let mut buf = Vec::new();
        let mut b = [0u8; 4096];
        loop {
            let n = tokio::time::timeout(DEADLINE, stream.read(&mut b))
                .await
                .expect("handshake timed out")
                .unwrap();
            assert!(n > 0, "eof during handshake");
            buf.extend_from_slice(&b[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..i]).to_string();
                assert!(head.starts_with("HTTP/1.1 101"), "{head}");
                buf.drain(..i + 4);
                break;
            }
        }
        RawWs { stream, buf }
    }

    /// Next frame as (opcode, payload); None at EOF.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((op, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Some((op, payload));
            }
            let mut b = [0u8; 8192];
            let n = tokio::time::timeout(DEADLINE, self.stream.read(&mut b))
                .await
                .expect("read timed out")
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&b[..n]);
        }
    }

    /// Reads frames until a close frame; returns its code (None if the TCP connection ended
    /// first).
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some((op, p)) = self.read_frame().await {
            if op == 0x8 {
                return Some(u16::from_be_bytes([p[0], p[1]]));
            }
        }
        None
    }

    /// Sends one masked frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.send_fragment(true, opcode, payload).await;
    }

    /// Sends one masked frame with FIN set or not (opcode 0 continues a fragmented message).
    pub async fn send_fragment(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let f = masked_frame(fin, opcode, payload);
        self.stream.write_all(&f).await.unwrap();
    }

    /// Sends raw bytes (e.g. an unmasked frame, which clients must never send).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads until the server ends the TCP connection; returns the frames read before, or
    /// panics if the connection is still open at the deadline.
    pub async fn frames_until_eof(&mut self) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(f) = self.read_frame().await {
            out.push(f);
        }
        out
    }
}

/// A masked client frame.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let len = payload.len();
        if len < 126 {
            f.push(0x80 | len as u8);
        } else if len < 65536 {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        let mask = [1u8, 2, 3, 4];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }
}

/// The opening handshake of a raw client, for tests that write it themselves.
pub fn handshake_request(addr: SocketAddr, path: &str, version: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: {version}\r\n\r\n"
    )
}

pub fn parse_frame(b: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if b.len() < 2 {
        return None;
    }
    let op = b[0] & 0x0f;
    let mut len = u64::from(b[1] & 0x7f);
    let mut i = 2;
    if len == 126 {
        if b.len() < 4 {
            return None;
        }
        len = u64::from(u16::from_be_bytes([b[2], b[3]]));
        i = 4;
    } else if len == 127 {
        if b.len() < 10 {
            return None;
        }
        len = u64::from_be_bytes(b[2..10].try_into().unwrap());
        i = 10;
    }
    let end = i + len as usize;
    if b.len() < end {
        return None;
    }
    Some((op, b[i..end].to_vec(), end))
}

/// Polls `cond` until it is true or the deadline passes.
pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Options that make test clusters detect failures quickly.
pub const FAST_GOSSIP: [&str; 4] = ["--gossip-interval", "100ms", "--failure-timeout", "2s"];

/// Several nodes as separate processes, seeded by the first.
pub struct Cluster {
    pub nodes: Vec<Node>,
    /// Arguments every node gets.
    pub common: Vec<String>,
}

impl Cluster {
    /// Starts `n` nodes seeded by the first and waits until every node sees all of them live.
    pub async fn start(n: usize, args: &[&str]) -> Cluster {
        let mut common: Vec<String> = FAST_GOSSIP.iter().map(|s| s.to_string()).collect();
        common.extend(args.iter().map(|s| s.to_string()));
        let mut c = Cluster {
            nodes: Vec::new(),
            common,
        };
        for _ in 0..n {
            c.add(&[]);
        }
        c.wait_converged().await;
        c
    }

    /// Starts one more node seeded by the first, with extra `args`.
    pub fn add(&mut self, args: &[&str]) -> &Node {
        let node = self.spawn(args);
        self.nodes.push(node);
        self.nodes.last().unwrap()
    }

    pub fn spawn(&self, args: &[&str]) -> Node {
        let mut all: Vec<String> = self.common.clone();
        if let Some(first) = self.nodes.first() {
            all.extend(["--seed".to_string(), first.cluster.to_string()]);
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = all.iter().map(|s| s.as_str()).collect();
        Node::start(&refs)
    }

    pub fn ids(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.id.clone()).collect()
    }

    /// Waits until `node` sees exactly `ids` as its live and ready members.
    pub async fn wait_live_set(node: &Node, ids: &[String]) {
        let mut want: Vec<String> = ids.to_vec();
        want.sort();
        let deadline = Instant::now() + DEADLINE;
        loop {
            let v = node.get_json("/cluster").await;
            let mut live: Vec<String> = v["members"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|m| m["live"] == true && m["ready"] == true)
                .map(|m| m["id"].as_str().unwrap().to_string())
                .collect();
            live.sort();
            if live == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} sees live {live:?}, want {want:?}",
                node.id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until at least `rooms` rooms exist and no node has a room with fewer synced
    /// replicas than configured: the cluster (re-)replicated and can lose a node.
    pub async fn wait_replicated(&self, rooms: u64) {
        wait_until("rooms replicated", || async {
            let mut owned = 0;
            for n in &self.nodes {
                let v = n.get_json("/cluster").await;
                if v["rooms"]["under_replicated"] != 0 {
                    return false;
                }
                owned += v["rooms"]["owned"].as_u64().unwrap_or(0);
            }
            owned >= rooms
        })
        .await;
    }

    /// Waits until every node sees every node live.
    pub async fn wait_converged(&self) {
        let ids = self.ids();
        for n in &self.nodes {
            Self::wait_live_set(n, &ids).await;
        }
        for n in &self.nodes {
            wait_until("readyz", || async { n.get("/readyz").await.0 == 200 }).await;
        }
    }

    /// The index of the node that owns `room` among the given node ids.
    pub fn owner_index(&self, room: &str, among: &[String]) -> usize {
        let members: Vec<roomcast::ids::NodeId> = among
            .iter()
            .map(|s| roomcast::ids::NodeId::new(s).unwrap())
            .collect();
        let r = roomcast::ids::RoomId::new(room).unwrap();
        let owner = roomcast::routing::hash::owner(&r, &members).unwrap();
        self.nodes
            .iter()
            .position(|n| n.id == owner.as_str())
            .unwrap()
    }

    /// A room name owned by node `idx` among `among`.
    pub fn room_owned_by(&self, idx: usize, among: &[String], prefix: &str) -> String {
        (0..)
            .map(|i| format!("{prefix}-{i}"))
            .find(|r| self.owner_index(r, among) == idx)
            .unwrap()
    }
}

/// Asserts a `roomcast bench --chaos --strict` report of a drain or rolling restart: traffic
/// flowed, clients moved, and nothing acknowledged was lost, skipped, repeated or disputed.
pub fn assert_no_loss(r: &Value) {
    assert!(r["acked_total"].as_u64().unwrap() > 1000, "{r}");
    assert_eq!(r["lost"], 0, "{r}");
    assert_eq!(r["unrecovered"], 0, "{r}");
    assert_eq!(r["gaps"], 0, "{r}");
    assert_eq!(r["duplicated"], 0, "{r}");
    assert_eq!(r["order_conflicts"], 0, "{r}");
    // Drained rooms move with their state: no subscriber ever sees a room restart.
    assert_eq!(r["epoch_changes"], 0, "{r}");
    assert!(r["reconnects"].as_u64().unwrap() > 0, "clients moved: {r}");
    assert_eq!(r["ok"], true, "{r}");
}

/// Parses the JSON report a `roomcast bench --json` run printed.
pub fn bench_report(out: &std::process::Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "bench output is not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Starts the traffic of a drain or rolling-restart test: clients that follow reconnect hints
/// and resume with `since`; with --strict, any loss of an acknowledged message, and any
/// resume that is not recovered, is a violation.
pub fn spawn_strict_bench(urls: &str, duration: &str, drain: &str) -> std::process::Child {
    Command::new(bin())
        .args([
            "bench",
            "--json",
            "--quiet",
            "--chaos",
            "--strict",
            "--url",
            urls,
            "--subscribers",
            "30",
            "--rooms",
            "6",
            "--publishers",
            "3",
            "--rate",
            "150",
            // One publish in flight per publisher: a publish retried by key after an unknown
            // outcome then cannot overtake a newer one (per-publisher order stays checkable).
            "--in-flight",
            "1",
            "--warmup",
            "1s",
            "--duration",
            duration,
            "--drain",
            drain,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start roomcast bench")
}
