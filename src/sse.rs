//! The SSE transport (`GET /sse`): room events as Server-Sent Events, for one-way traffic and
//! for browsers behind proxies that break WebSockets.
//!
//! An SSE connection is a client connection like a WebSocket one, for everything behind it:
//! it joins its rooms through the room shards with a `ConnHandle` whose outbox is bounded by
//! the same `outbound_max_*` limits (overflow ends it as a slow consumer), it is registered in
//! the node's connections (counted, closed on shutdown and drain, disconnected by user), and
//! its token and rights are checked like a WebSocket's. What differs is the last hop: the
//! response body is a stream that takes the outbox's frames (WebSocket-encoded, as the shards
//! build them once for every subscriber), strips the WebSocket header and writes each event as
//!
//! ```text
//! id: ROOM:EPOCH:SEQ,ROOM:EPOCH:SEQ
//! data: {"type":"message",...}
//! ```
//!
//! The `id` names the position of **every** room of the connection, so a browser's
//! `EventSource`, reconnecting with `Last-Event-ID`, resumes every room with no gap. Other
//! frames become named events (`welcome`, `joined`, `error`, `reconnect`, `disconnect`,
//! `close`), heartbeats are comments. When the client goes away the body stream is dropped,
//! and its guard leaves the rooms and unregisters the connection.

use std::collections::BTreeMap;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::Stream;

use crate::auth::{AuthMode, CLOCK_LEEWAY_S, Right};
use crate::conn::ConnHandle;
use crate::ids::{ConnId, ConnName, Epoch, RoomId, UserId};
use crate::metrics as m;
use crate::node::NodeContext;
use crate::protocol::{CloseReason, ReqId};
use crate::routing::Input;
use crate::socket::outbox::{self, OutboxReceiver};

/// Why an SSE request was refused before the stream started (the HTTP layer maps these to
/// statuses with the client protocol's error codes).
#[derive(Debug)]
pub enum Refused {
    /// 400: no rooms, too many, an invalid name, an unparsable position.
    BadRequest(String),
    /// 401: no token with `auth = required`, or a token that does not verify.
    Unauthorized(String),
    /// 403: the token grants no `subscribe` right in one of the rooms.
    Forbidden(String),
    /// 503: shutting down, or `max_connections`.
    Unavailable(&'static str),
}

/// A room's position: the epoch (if known) and the last seq delivered.
type Positions = BTreeMap<RoomId, (Option<Epoch>, u64)>;

/// Parses `ROOM:EPOCH:SEQ,...` (`Last-Event-ID`, or the `since` parameter; `EPOCH` may be
/// empty). Room names may contain `:`, epochs and seqs do not, so each item is split from the
/// right.
pub fn parse_positions(s: &str) -> Result<Positions, String> {
    let mut out = Positions::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || format!("position {item:?} is not ROOM:EPOCH:SEQ");
        let (rest, seq) = item.rsplit_once(':').ok_or_else(bad)?;
        let (room, epoch) = rest.rsplit_once(':').ok_or_else(bad)?;
        let seq: u64 = seq.parse().map_err(|_| bad())?;
        let room = RoomId::new(room).map_err(|e| format!("{}: {e}", bad()))?;
        let epoch = match epoch {
            "" => None,
            e if Epoch::is_valid(e) => Some(Epoch::from_wire(e)),
            _ => return Err(bad()),
        };
        out.insert(room, (epoch, seq));
    }
    Ok(out)
}

/// Writes every room's position as an event id.
fn event_id(pos: &Positions) -> String {
    let mut s = String::new();
    for (i, (room, (epoch, seq))) in pos.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(room.as_str());
        s.push(':');
        if let Some(e) = epoch {
            s.push_str(e.as_str());
        }
        s.push(':');
        s.push_str(&seq.to_string());
    }
    s
}

/// What an SSE request asks for, after parsing.
pub struct SseRequest {
    pub rooms: Vec<RoomId>,
    /// Where to resume each room from (`Last-Event-ID` or `since`).
    pub since: Positions,
    pub token: Option<String>,
    /// The connection's place in its client address's count (`crate::admission`).
    pub ip_slot: Option<crate::admission::IpSlot>,
}

/// Starts an SSE connection: checks it, registers it, joins its rooms; returns the body.
pub fn open(node: &Arc<NodeContext>, req: SseRequest) -> Result<SseStream, Refused> {
    let cfg = &node.config;
    if !node.is_accepting() {
        m::connection_refused("shutting_down");
        return Err(Refused::Unavailable("shutting down"));
    }
    if node.conns.len() >= cfg.max_connections {
        m::connection_refused("max_connections");
        return Err(Refused::Unavailable("connection limit reached"));
    }
    if req.rooms.is_empty() || req.rooms.len() > cfg.max_rooms_per_conn {
        return Err(Refused::BadRequest(format!(
            "rooms must name 1 to {} rooms",
            cfg.max_rooms_per_conn
        )));
    }
    // Authentication and rights, as for a WebSocket connection.
    let mut expires: Option<u64> = None;
    let mut user: Option<UserId> = None;
    if cfg.auth != AuthMode::Off {
        match (&req.token, &node.verifier) {
            (Some(t), Some(v)) => {
                let claims = v.verify(t).map_err(|f| {
                    m::auth_failure(f.reason());
                    Refused::Unauthorized(f.to_string())
                })?;
                let u = UserId::new(&claims.sub).map_err(|_| {
                    m::auth_failure("bad_claims");
                    Refused::Unauthorized("the token's sub is not a valid user id".into())
                })?;
                if let Some(r) = req
                    .rooms
                    .iter()
                    .find(|r| !claims.allows(r.as_str(), Right::Subscribe))
                {
                    return Err(Refused::Forbidden(format!(
                        "no subscribe right in room {r}"
                    )));
                }
                expires = Some(claims.exp + CLOCK_LEEWAY_S);
                user = Some(u);
            }
            (None, _) if cfg.auth == AuthMode::Required => {
                m::auth_failure("missing");
                return Err(Refused::Unauthorized(
                    "a token is required: /sse?rooms=...&token=JWT".into(),
                ));
            }
            _ => {}
        }
    }
    let id = ConnId::next();
    let name = ConnName::new(&node.node_id, id);
    let (outbox, rx) = outbox::outbox(cfg.outbound_max_messages, cfg.outbound_max_bytes);
    let handle = ConnHandle {
        outbox: outbox.clone(),
        worker: node.workers.current(),
        conn: None,
        reply: None,
    };
    node.conns.register(id, None, outbox.clone());
    if let Some(u) = &user {
        node.conns.set_user(id, u.clone());
    }
    m::sse_connections(1.0);
    let mut positions = Positions::new();
    let _ = outbox.text(
        &crate::protocol::encode::welcome(
            &name,
            &node.node_id,
            cfg.heartbeat_interval.as_millis() as u64,
        ),
        outbox::FrameKind::Control,
    );
    for room in &req.rooms {
        let (epoch, since) = match req.since.get(room) {
            Some((e, s)) => (e.clone(), Some(*s)),
            None => (None, None),
        };
        positions.insert(room.clone(), (epoch.clone(), since.unwrap_or(0)));
        let input = Input::Join {
            conn: id,
            handle: handle.clone(),
            room: room.clone(),
            since,
            epoch,
            req: ReqId::NONE,
            presence: Default::default(),
        };
        if node.shards.try_send(input).is_err() {
            // The guard (dropped with the stream) leaves what was joined.
            let _ = outbox.close(CloseReason::SlowConsumer);
            break;
        }
    }
    let heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + cfg.heartbeat_interval,
        cfg.heartbeat_interval,
    );
    let now_s = crate::now_us() / 1_000_000;
    let expiry = expires.map(|e| {
        let left = Duration::from_secs(e.saturating_sub(now_s));
        Box::pin(tokio::time::sleep(left))
    });
    Ok(SseStream {
        rx,
        positions,
        heartbeat,
        expiry,
        done: false,
        guard: Guard {
            node: node.clone(),
            id,
            handle,
            rooms: req.rooms,
            _ip_slot: req.ip_slot,
        },
    })
}

/// Leaves the rooms and unregisters the connection when the body stream is dropped (the
/// client went away, or the stream ended).
struct Guard {
    node: Arc<NodeContext>,
    id: ConnId,
    handle: ConnHandle,
    rooms: Vec<RoomId>,
    _ip_slot: Option<crate::admission::IpSlot>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let reason = self.handle.outbox.closing().unwrap_or(CloseReason::Normal);
        self.handle.outbox.close(reason);
        m::disconnect(reason);
        m::sse_connections(-1.0);
        self.node.conns.unregister(self.id);
        for room in self.rooms.drain(..) {
            self.node.shards.send_reliable(Input::Leave {
                conn: self.id,
                handle: self.handle.clone(),
                room,
                req: ReqId::NONE,
                reply: false,
            });
        }
    }
}

/// The response body of one SSE connection.
pub struct SseStream {
    rx: OutboxReceiver,
    positions: Positions,
    heartbeat: tokio::time::Interval,
    expiry: Option<Pin<Box<tokio::time::Sleep>>>,
    done: bool,
    guard: Guard,
}

/// The fields of a server frame the SSE layer looks at.
#[derive(serde::Deserialize)]
struct Seen<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<&'a str>,
    #[serde(borrow, default)]
    room: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(borrow, default)]
    epoch: Option<&'a str>,
    #[serde(default)]
    ok: Option<bool>,
}

/// The payload of a server WebSocket frame (unmasked: 2, 4 or 10 header bytes), if it is a
/// text frame.
fn ws_payload(b: &[u8]) -> Option<&[u8]> {
    if b.len() < 2 || b[0] & 0x0f != 0x1 {
        return None;
    }
    let off = match b[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    b.get(off..)
}

impl SseStream {
    /// Turns one queued frame into SSE text (nothing for pings and other control frames).
    fn encode(&mut self, frame: &[u8], out: &mut BytesMut) {
        let Some(payload) = ws_payload(frame) else {
            return;
        };
        let Ok(text) = std::str::from_utf8(payload) else {
            return;
        };
        let Ok(seen) = serde_json::from_str::<Seen>(text) else {
            return;
        };
        let event = match (seen.kind, seen.ok) {
            (Some("message"), _) => {
                if let (Some(room), Some(seq), Some(epoch)) = (seen.room, seen.seq, seen.epoch)
                    && let Ok(room) = RoomId::new(room)
                {
                    self.positions
                        .insert(room, (Some(Epoch::from_wire(epoch)), seq));
                }
                None
            }
            (Some(kind), _) => Some(kind.to_string()),
            (None, Some(true)) => {
                // A join's reply: the room's position, for the ids of later events — unless
                // the join resumes from a position of its own (its replay follows the reply
                // and moves the position event by event).
                if let (Some(room), Some(seq), Some(epoch)) = (seen.room, seen.seq, seen.epoch)
                    && let Ok(room) = RoomId::new(room)
                    && self.positions.get(&room) == Some(&(None, 0))
                {
                    self.positions
                        .insert(room, (Some(Epoch::from_wire(epoch)), seq));
                }
                Some("joined".to_string())
            }
            (None, _) => Some("error".to_string()),
        };
        match event {
            None => {
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(event_id(&self.positions).as_bytes());
                out.extend_from_slice(b"\n");
            }
            Some(name) => {
                out.extend_from_slice(b"event: ");
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\n");
            }
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\n\n");
    }

    /// The last event before the stream ends: why.
    fn close_event(reason: CloseReason, out: &mut BytesMut) {
        let json = serde_json::json!({"code": reason.code(), "reason": reason.as_str()});
        out.extend_from_slice(format!("event: close\ndata: {json}\n\n").as_bytes());
    }
}

impl Stream for SseStream {
    type Item = Result<Bytes, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        let mut out = BytesMut::new();
        if let Some(exp) = this.expiry.as_mut()
            && exp.as_mut().poll(cx).is_ready()
        {
            m::auth_failure("expired");
            this.guard.handle.outbox.close(CloseReason::Unauthorized);
        }
        // Everything queued (ready until the queue is empty; pending registers the waker). A
        // slow consumer's queue is discarded, as a WebSocket writer discards it.
        let mut frames = Vec::new();
        let slow = this.rx.closing() == Some(CloseReason::SlowConsumer);
        while !slow && this.rx.poll_ready(cx).is_ready() && frames.len() < 1024 {
            let before = frames.len();
            this.rx.take(256, |f| frames.push(f));
            if frames.len() == before {
                break; // Ready because closing.
            }
        }
        for f in &frames {
            this.encode(&f.bytes, &mut out);
        }
        if let Some(reason) = this.rx.closing() {
            Self::close_event(reason, &mut out);
            this.done = true;
            return Poll::Ready(Some(Ok(out.freeze())));
        }
        if this.heartbeat.poll_tick(cx).is_ready() {
            out.extend_from_slice(b": ping\n\n");
        }
        if out.is_empty() {
            Poll::Pending
        } else {
            Poll::Ready(Some(Ok(out.freeze())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_round_trip_through_the_event_id() {
        let p = parse_positions("chat:lobby:ab-1:7,news::3").unwrap();
        assert_eq!(p.len(), 2);
        let lobby = &p[&RoomId::new("chat:lobby").unwrap()];
        assert_eq!(
            (lobby.0.as_ref().map(Epoch::as_str), lobby.1),
            (Some("ab-1"), 7)
        );
        assert_eq!(p[&RoomId::new("news").unwrap()], (None, 3));
        assert_eq!(parse_positions(&event_id(&p)).unwrap(), p);
        for bad in ["x", "a:1", "a:zz:1", "a:ab:-1", "a b::1"] {
            assert!(parse_positions(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn websocket_payloads_are_found_under_every_header_size() {
        for n in [5usize, 300, 70_000] {
            let text = "x".repeat(n);
            let f = crate::socket::frame::text(&text);
            assert_eq!(ws_payload(&f), Some(text.as_bytes()));
        }
        assert_eq!(ws_payload(&crate::socket::frame::ping()), None);
    }
}
