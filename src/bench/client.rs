//! roomcast protocol clients for the bench: subscribers that check every delivery, and
//! publishers that keep `in_flight` publishes outstanding or follow a rate.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::report::SubResult;
use super::{Shared, new_hist};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// `host:port` of a `ws://host:port/path` URL.
pub(crate) fn host_port(url: &str) -> anyhow::Result<&str> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("only ws:// URLs are supported: {url}"))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// Opens a WebSocket to `url`, from the client's source address if one is configured.
pub(crate) async fn connect(shared: &Shared, idx: usize, url: &str) -> anyhow::Result<Ws> {
    let _permit = shared.connect_gate.acquire().await?;
    let addr: SocketAddr = tokio::net::lookup_host(host_port(url)?)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{url} resolves to nothing"))?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = shared.source_ip(idx) {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(Duration::from_secs(30), sock.connect(addr)).await??;
    stream.set_nodelay(true)?;
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
    )
    .await??;
    Ok(ws)
}

#[derive(Deserialize)]
struct Data {
    p: u64,
    n: u64,
    t: u64,
}

#[derive(Deserialize)]
struct ErrBody<'a> {
    code: &'a str,
}

/// Any server frame, read with one parse and no allocation for the fields we look at.
#[derive(Deserialize)]
struct In<'a> {
    #[serde(rename = "type", borrow)]
    ty: Option<&'a str>,
    id: Option<u64>,
    ok: Option<bool>,
    seq: Option<u64>,
    #[serde(borrow)]
    epoch: Option<&'a str>,
    recovered: Option<bool>,
    data: Option<Data>,
    #[serde(borrow)]
    error: Option<ErrBody<'a>>,
    #[serde(borrow)]
    url: Option<&'a str>,
}

/// Where a subscriber stands in its room: the next seq it expects in every epoch it has seen
/// (a room can return to an epoch while views settle), and the epoch it follows now.
#[derive(Default)]
struct Position {
    next: HashMap<String, u64>,
    current: Option<String>,
    /// After a resume that was not recovered: the next event starts a new position.
    loose: bool,
}

/// Latency samples a client keeps before adding them to the shared histogram.
pub(crate) const MERGE_EVERY: u64 = 4096;

/// One subscriber: join, check deliveries, and (with --chaos) reconnect and resume.
pub(crate) async fn subscriber(shared: Arc<Shared>, i: usize, joined: mpsc::Sender<bool>) {
    let room_idx = i % shared.args.rooms;
    let room = shared.room(room_idx);
    let mut res = SubResult {
        room: room_idx,
        ..SubResult::default()
    };
    let strict = shared.args.strict;
    let mut hist = new_hist();
    let mut pos = Position::default();
    let mut last_n: HashMap<u64, u64> = HashMap::new();
    let mut url: String = shared.url(i).to_string();
    let mut url_idx = i;
    let mut reported = false;
    let chaos = shared.args.chaos;
    'connection: loop {
        if shared.stop.load(Ordering::Acquire) {
            break;
        }
        let mut ws = match connect(&shared, i, &url).await {
            Ok(ws) => ws,
            Err(e) => {
                if !reported && !chaos {
                    tracing::warn!(url = %url, error = %e, "subscriber cannot connect");
                    shared.connect_errors.fetch_add(1, Ordering::Relaxed);
                    let _ = joined.send(false).await;
                    return;
                }
                url_idx += 1;
                url = shared.url(url_idx).to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Join, resuming after the last seq seen when reconnecting.
        let resume = pos.current.as_ref().map(|e| {
            (
                pos.next.get(e).copied().unwrap_or(1).saturating_sub(1),
                e.clone(),
            )
        });
        let join = match &resume {
            Some((since, epoch)) => format!(
                r#"{{"op":"join","id":1,"room":"{room}","since":{since},"epoch":"{epoch}"}}"#
            ),
            None => format!(r#"{{"op":"join","id":1,"room":"{room}"}}"#),
        };
        if ws.send(Message::Text(join.clone().into())).await.is_err() {
            continue;
        }
        let mut stop = shared.stop_signal.subscribe();
        loop {
            if *stop.borrow_and_update() {
                let _ = ws.close(None).await;
                break 'connection;
            }
            if hist.len() >= MERGE_EVERY {
                let _ = shared.hist.lock().await.add(&hist);
                hist.reset();
            }
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = stop.changed() => continue,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    if !chaos {
                        if !reported {
                            let _ = joined.send(false).await;
                        }
                        res.disconnected = true;
                        break 'connection;
                    }
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    url_idx += 1;
                    url = shared.url(url_idx).to_string();
                    continue 'connection;
                }
                Some(Ok(_)) => continue,
            };
            let Ok(f) = serde_json::from_str::<In>(&text) else {
                res.bad_frames += 1;
                continue;
            };
            if f.id == Some(1) && f.ok.is_some() {
                if f.ok == Some(true) {
                    let epoch = f.epoch.unwrap_or("").to_string();
                    let seq = f.seq.unwrap_or(0);
                    match (&resume, f.recovered) {
                        (Some((_, old)), Some(true)) if *old == epoch => {}
                        (Some(_), _) => {
                            // Not recovered: history no longer reaches (or a new epoch). The
                            // replay starts wherever history does.
                            res.unrecovered += 1;
                            pos.loose = true;
                        }
                        (None, _) => {
                            pos.next.insert(epoch.clone(), seq + 1);
                            pos.current = Some(epoch);
                        }
                    }
                    if !reported {
                        reported = true;
                        shared.joined.fetch_add(1, Ordering::Relaxed);
                        let _ = joined.send(true).await;
                    }
                } else {
                    let code = f.error.as_ref().map(|e| e.code).unwrap_or("");
                    if code == "unavailable" || chaos {
                        // The room's owner is moving; ask again shortly.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        if ws.send(Message::Text(join.clone().into())).await.is_err() {
                            continue 'connection;
                        }
                    } else {
                        tracing::warn!(room = %room, code, "join refused");
                        if !reported {
                            let _ = joined.send(false).await;
                        }
                        return;
                    }
                }
                continue;
            }
            match f.ty {
                Some("message") => {
                    let (Some(seq), Some(epoch), Some(d)) = (f.seq, f.epoch, f.data) else {
                        res.bad_frames += 1;
                        continue;
                    };
                    let now = crate::now_us();
                    shared.delivered_total.fetch_add(1, Ordering::Relaxed);
                    if shared.measuring.load(Ordering::Relaxed)
                        && d.t >= shared.window_start_us.load(Ordering::Relaxed)
                    {
                        shared.delivered_in_window.fetch_add(1, Ordering::Relaxed);
                        let _ = hist.record(now.saturating_sub(d.t).max(1));
                    }
                    // seq and epoch: one gap-free order within an epoch.
                    let loose = std::mem::take(&mut pos.loose);
                    let fresh = match pos.next.get_mut(epoch) {
                        Some(nx) if loose => {
                            *nx = seq + 1;
                            true
                        }
                        Some(nx) => {
                            if seq == *nx {
                                *nx += 1;
                                true
                            } else if seq < *nx {
                                res.duplicated += 1;
                                false
                            } else {
                                res.gaps += 1;
                                *nx = seq + 1;
                                true
                            }
                        }
                        None => {
                            // An epoch new to this subscriber (the room restarted when its owner
                            // died): it must start at the epoch's first message.
                            if pos.current.is_some() && !loose {
                                res.epoch_changes += 1;
                                if seq != 1 {
                                    res.gaps += 1;
                                }
                            }
                            pos.next.insert(epoch.to_string(), seq + 1);
                            true
                        }
                    };
                    if pos.current.as_deref() != Some(epoch) {
                        pos.current = Some(epoch.to_string());
                    }
                    if !fresh {
                        continue;
                    }
                    // Per publisher: its messages in the order it sent them.
                    match last_n.get(&d.p) {
                        Some(&l) if d.n <= l => res.reordered += 1,
                        _ => {
                            last_n.insert(d.p, d.n);
                        }
                    }
                    res.received += 1;
                    if strict {
                        res.seen.insert((d.p, d.n));
                    }
                    shared.received[room_idx].fetch_add(1, Ordering::Relaxed);
                    if chaos {
                        let mut order = shared.order.lock().await;
                        let key = (room_idx, epoch.to_string(), seq);
                        match order.get(&key) {
                            Some(&v) if v != (d.p, d.n) => res.order_conflicts += 1,
                            Some(_) => {}
                            None => {
                                order.insert(key, (d.p, d.n));
                            }
                        }
                    }
                }
                Some("reconnect") => {
                    // The node is draining: follow its hint and resume.
                    if let Some(u) = f.url {
                        url = u.to_string();
                    }
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    let _ = ws.close(None).await;
                    continue 'connection;
                }
                _ => {}
            }
        }
    }
    if !hist.is_empty() {
        let _ = shared.hist.lock().await.add(&hist);
    }
    shared.results.lock().await.push(res);
}

/// One publisher: rooms j, j+P, ... in turn; `in_flight` outstanding, or paced by `rate`.
pub(crate) async fn publisher(shared: Arc<Shared>, j: usize) {
    let args = &shared.args;
    let mut rooms: Vec<usize> = (j..args.rooms).step_by(args.publishers.max(1)).collect();
    if rooms.is_empty() {
        rooms.push(j % args.rooms);
    }
    let names: Vec<String> = rooms.iter().map(|r| shared.room(*r)).collect();
    let interval = if args.rate > 0 {
        Some(Duration::from_secs_f64(
            args.publishers as f64 / args.rate as f64,
        ))
    } else {
        None
    };
    let mut url_idx = j;
    let mut url = shared.url(url_idx).to_string();
    let mut n: u64 = 0;
    let mut drain_deadline: Option<Instant> = None;
    // --chaos: every publish carries an idempotency key; with --strict, a publish whose outcome
    // is unknown (`unavailable`, or the connection dropped) is sent again with the same key
    // before anything newer — what a careful client does, and how it gets exactly-once.
    let mut retry: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    'connection: loop {
        let mut ws = match connect(&shared, args.subscribers + j, &url).await {
            Ok(ws) => ws,
            Err(e) => {
                if !args.chaos {
                    tracing::warn!(url = %url, error = %e, "publisher cannot connect");
                    return;
                }
                if shared.stop_publishing.load(Ordering::Acquire) {
                    return;
                }
                url_idx += 1;
                url = shared.url(url_idx).to_string();
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let mut inflight: HashMap<u64, usize> = HashMap::new();
        let mut next_at = tokio::time::Instant::now();
        let requeue = |inflight: &HashMap<u64, usize>,
                       retry: &mut std::collections::VecDeque<u64>| {
            if args.strict {
                let mut lost: Vec<u64> = inflight.keys().copied().collect();
                lost.extend(retry.drain(..));
                lost.sort_unstable();
                lost.dedup();
                retry.extend(lost);
            }
        };
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            let stopping = shared.stop_publishing.load(Ordering::Acquire);
            if stopping {
                let d = *drain_deadline.get_or_insert_with(|| Instant::now() + args.drain);
                if (inflight.is_empty() && (retry.is_empty() || !args.strict)) || Instant::now() > d
                {
                    let _ = ws.close(None).await;
                    return;
                }
            }
            // Send what is allowed now.
            let mut batch = 0;
            while (!stopping || !retry.is_empty())
                && inflight.len() < args.in_flight
                && (!retry.is_empty()
                    || interval.is_none_or(|_| tokio::time::Instant::now() >= next_at))
                && batch < 64
            {
                let (m, fresh) = match retry.pop_front() {
                    Some(m) => (m, false),
                    None => (n, true),
                };
                let k = (m as usize) % rooms.len();
                let data = super::payload(j as u64, m, args.size);
                let text = if args.chaos {
                    format!(
                        r#"{{"op":"publish","id":{m},"room":"{}","data":{data},"key":"{j}-{m}"}}"#,
                        names[k]
                    )
                } else {
                    format!(
                        r#"{{"op":"publish","id":{m},"room":"{}","data":{data}}}"#,
                        names[k]
                    )
                };
                inflight.insert(m, rooms[k]);
                if ws.feed(Message::Text(text.into())).await.is_err() {
                    requeue(&inflight, &mut retry);
                    continue 'connection;
                }
                if fresh {
                    n += 1;
                    if let Some(iv) = interval {
                        next_at += iv;
                    }
                }
                batch += 1;
            }
            if batch > 0 && ws.flush().await.is_err() {
                requeue(&inflight, &mut retry);
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                url_idx += 1;
                url = shared.url(url_idx).to_string();
                continue 'connection;
            }
            let wait_for_rate = interval.is_some() && inflight.len() < args.in_flight && !stopping;
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = tokio::time::sleep_until(next_at), if wait_for_rate => continue,
                _ = tick.tick() => continue,
            };
            let text = match msg {
                Some(Ok(Message::Text(t))) => t,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    // In-flight publishes have an unknown outcome: not acknowledged (sent again
                    // by key with --strict).
                    if !args.chaos || (stopping && !args.strict) {
                        return;
                    }
                    requeue(&inflight, &mut retry);
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                    url_idx += 1;
                    url = shared.url(url_idx).to_string();
                    continue 'connection;
                }
                Some(Ok(_)) => continue,
            };
            let Ok(f) = serde_json::from_str::<In>(&text) else {
                continue;
            };
            if f.ty == Some("reconnect") {
                // The node is draining: follow its hint (in-flight publishes still get their
                // replies until it closes us, but they are given up here as unacknowledged).
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
                requeue(&inflight, &mut retry);
                url = match f.url {
                    Some(u) => u.to_string(),
                    None => {
                        url_idx += 1;
                        shared.url(url_idx).to_string()
                    }
                };
                let _ = ws.close(None).await;
                continue 'connection;
            }
            let (Some(id), Some(ok)) = (f.id, f.ok) else {
                continue;
            };
            let Some(room) = inflight.remove(&id) else {
                continue;
            };
            if ok {
                shared.acked[room].fetch_add(1, Ordering::Relaxed);
                if args.strict {
                    shared.acked_msgs.lock().unwrap_or_else(|e| e.into_inner())[room]
                        .insert((j as u64, id));
                }
                if shared.measuring.load(Ordering::Relaxed) {
                    shared.published_in_window.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                let code = f.error.as_ref().map(|e| e.code);
                if args.strict && code == Some("unavailable") {
                    retry.push_back(id);
                    let mut v: Vec<u64> = retry.drain(..).collect();
                    v.sort_unstable();
                    retry.extend(v);
                    // Let the room's new owner settle before trying again.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                match code {
                    Some("unavailable") => &shared.errors_unavailable,
                    Some("rate_limited") => &shared.errors_rate_limited,
                    _ => &shared.errors_other,
                }
                .fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
