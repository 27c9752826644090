//! NATS text protocol over WebSocket (CONNECT/SUB/PUB/MSG/PING/PONG), so the bench runs the
//! same scenarios against nats-server's WebSocket listener.
//!
//! NATS core has no per-publish acknowledgement; a publisher sends `PING` after every
//! `in_flight` publishes and counts them acknowledged when the matching `PONG` returns (the
//! server has processed everything before it), which bounds outstanding publishes the same way.
//! NATS has no seq: deliveries are checked per publisher (order, duplicates) and counted.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::client::{Ws, connect};
use super::report::SubResult;
use super::{Shared, new_hist};

const CONNECT: &str =
    "CONNECT {\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"headers\":false}\r\nPING\r\n";

/// A parsed server line.
enum Op {
    Msg(Vec<u8>),
    Ping,
    Pong,
    Other,
}

/// Splits the byte stream into protocol operations.
#[derive(Default)]
struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    fn next(&mut self) -> Option<Op> {
        let i = self.buf.windows(2).position(|w| w == b"\r\n")?;
        let line = &self.buf[..i];
        if line.starts_with(b"MSG ") {
            let size: usize = std::str::from_utf8(line)
                .ok()?
                .split_whitespace()
                .last()?
                .parse()
                .ok()?;
            let end = i + 2 + size + 2;
            if self.buf.len() < end {
                return None;
            }
            let payload = self.buf[i + 2..i + 2 + size].to_vec();
            self.buf.drain(..end);
            return Some(Op::Msg(payload));
        }
        let op = if line == b"PING" {
            Op::Ping
        } else if line == b"PONG" {
            Op::Pong
        } else {
            if line.starts_with(b"-ERR") {
                tracing::warn!(line = %String::from_utf8_lossy(line), "nats error");
            }
            Op::Other
        };
        self.buf.drain(..i + 2);
        Some(op)
    }
}

async fn send(ws: &mut Ws, s: String) -> bool {
    ws.send(Message::Text(s.into())).await.is_ok()
}

fn bytes_of(m: Message) -> Option<Vec<u8>> {
    match m {
        Message::Text(t) => Some(t.as_bytes().to_vec()),
        Message::Binary(b) => Some(b.to_vec()),
        _ => None,
    }
}

#[derive(Deserialize)]
struct Data {
    p: u64,
    n: u64,
    t: u64,
}

/// A NATS subscriber of subject `room(i mod R)`.
pub(crate) async fn subscriber(shared: Arc<Shared>, i: usize, joined: mpsc::Sender<bool>) {
    let room_idx = i % shared.args.rooms;
    let subject = shared.room(room_idx);
    let mut res = SubResult::default();
    let mut hist = new_hist();
    let mut last_n: HashMap<u64, u64> = HashMap::new();
    let url = shared.url(i).to_string();
    let mut ws = match connect(&shared, i, &url).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::warn!(url = %url, error = %e, "nats subscriber cannot connect");
            shared.connect_errors.fetch_add(1, Ordering::Relaxed);
            let _ = joined.send(false).await;
            return;
        }
    };
    if !send(&mut ws, format!("{CONNECT}SUB {subject} 1\r\nPING\r\n")).await {
        let _ = joined.send(false).await;
        return;
    }
    let mut parser = Parser::default();
    let mut pongs = 0;
    let mut stop = shared.stop_signal.subscribe();
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        if hist.len() >= super::client::MERGE_EVERY {
            let _ = shared.hist.lock().await.add(&hist);
            hist.reset();
        }
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = stop.changed() => continue,
        };
        let Some(Ok(m)) = msg else {
            res.disconnected = true;
            if pongs < 2 {
                let _ = joined.send(false).await;
            }
            break;
        };
        let Some(b) = bytes_of(m) else { continue };
        parser.push(&b);
        while let Some(op) = parser.next() {
            match op {
                Op::Ping => {
                    let _ = send(&mut ws, "PONG\r\n".into()).await;
                }
                Op::Pong => {
                    pongs += 1;
                    // The first PONG answers CONNECT, the second SUB: subscribed.
                    if pongs == 2 {
                        shared.joined.fetch_add(1, Ordering::Relaxed);
                        let _ = joined.send(true).await;
                    }
                }
                Op::Msg(payload) => {
                    let Ok(d) = serde_json::from_slice::<Data>(&payload) else {
                        res.bad_frames += 1;
                        continue;
                    };
                    shared.delivered_total.fetch_add(1, Ordering::Relaxed);
                    if shared.measuring.load(Ordering::Relaxed)
                        && d.t >= shared.window_start_us.load(Ordering::Relaxed)
                    {
                        shared.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.record(crate::now_us().saturating_sub(d.t).max(1));
                    }
                    match last_n.get(&d.p) {
                        Some(&l) if d.n == l => {
                            res.duplicated += 1;
                            continue;
                        }
                        Some(&l) if d.n < l => res.reordered += 1,
                        _ => {}
                    }
                    last_n.insert(d.p, d.n);
                    res.received += 1;
                    shared.received[room_idx].fetch_add(1, Ordering::Relaxed);
                }
                Op::Other => {}
            }
        }
    }
    if !hist.is_empty() {
        let _ = shared.hist.lock().await.add(&hist);
    }
    shared.results.lock().await.push(res);
}

/// A NATS publisher: PUBs in turn over its subjects, a PING after every `in_flight` of them.
pub(crate) async fn publisher(shared: Arc<Shared>, j: usize) {
    let args = &shared.args;
    let mut rooms: Vec<usize> = (j..args.rooms).step_by(args.publishers.max(1)).collect();
    if rooms.is_empty() {
        rooms.push(j % args.rooms);
    }
    let names: Vec<String> = rooms.iter().map(|r| shared.room(*r)).collect();
    let interval =
        (args.rate > 0).then(|| Duration::from_secs_f64(args.publishers as f64 / args.rate as f64));
    let url = shared.url(j).to_string();
    let mut ws = match connect(&shared, args.subscribers + j, &url).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::warn!(url = %url, error = %e, "nats publisher cannot connect");
            return;
        }
    };
    if !send(&mut ws, CONNECT.to_string()).await {
        return;
    }
    let mut parser = Parser::default();
    // Rooms of the publishes each outstanding PING covers; the first PING is CONNECT's.
    let mut batches: VecDeque<Vec<usize>> = VecDeque::from([Vec::new()]);
    let mut unpinged: Vec<usize> = Vec::new();
    let mut n: u64 = 0;
    let mut next_at = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut drain_deadline: Option<Instant> = None;
    loop {
        let stopping = shared.stop_publishing.load(Ordering::Acquire);
        if stopping {
            if !unpinged.is_empty() {
                batches.push_back(std::mem::take(&mut unpinged));
                let _ = send(&mut ws, "PING\r\n".into()).await;
            }
            let d = *drain_deadline.get_or_insert_with(|| Instant::now() + args.drain);
            if batches.is_empty() || Instant::now() > d {
                let _ = ws.close(None).await;
                return;
            }
        }
        let outstanding: usize = batches.iter().map(Vec::len).sum::<usize>() + unpinged.len();
        let mut out = String::new();
        while !stopping
            && outstanding + unpinged.len() < args.in_flight * 2
            && batches.len() <= 2
            && interval.is_none_or(|_| tokio::time::Instant::now() >= next_at)
            && out.len() < 64 * 1024
        {
            let k = (n as usize) % rooms.len();
            let data = super::payload(j as u64, n, args.size);
            out.push_str(&format!("PUB {} {}\r\n{}\r\n", names[k], data.len(), data));
            unpinged.push(rooms[k]);
            n += 1;
            if let Some(iv) = interval {
                next_at += iv;
            }
            if unpinged.len() >= args.in_flight {
                out.push_str("PING\r\n");
                batches.push_back(std::mem::take(&mut unpinged));
            }
        }
        if interval.is_some() && !unpinged.is_empty() && batches.is_empty() {
            // Paced: do not let a partial batch wait for the next publishes.
            out.push_str("PING\r\n");
            batches.push_back(std::mem::take(&mut unpinged));
        }
        if !out.is_empty() && !send(&mut ws, out).await {
            return;
        }
        let msg = tokio::select! {
            m = ws.next() => m,
            _ = tokio::time::sleep_until(next_at), if interval.is_some() && !stopping => continue,
            _ = tick.tick() => continue,
        };
        let Some(Ok(m)) = msg else { return };
        let Some(b) = bytes_of(m) else { continue };
        parser.push(&b);
        while let Some(op) = parser.next() {
            match op {
                Op::Pong => {
                    if let Some(done) = batches.pop_front() {
                        for r in &done {
                            shared.acked[*r].fetch_add(1, Ordering::Relaxed);
                        }
                        if shared.measuring.load(Ordering::Relaxed) {
                            shared
                                .published_in_window
                                .fetch_add(done.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
                Op::Ping => {
                    let _ = send(&mut ws, "PONG\r\n".into()).await;
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_split_messages() {
        let mut p = Parser::default();
        p.push(b"INFO {}\r\nMSG a 1 5\r\nhel");
        assert!(matches!(p.next(), Some(Op::Other)));
        assert!(p.next().is_none());
        p.push(b"lo\r\nPING\r\n");
        match p.next() {
            Some(Op::Msg(b)) => assert_eq!(b, b"hello"),
            _ => panic!("expected MSG"),
        }
        assert!(matches!(p.next(), Some(Op::Ping)));
        assert!(p.next().is_none());
    }
}
