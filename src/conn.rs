//! What the rest of the node holds of a client connection, and the messages it sends to one.
//!
//! A room shard keeps a [`ConnHandle`] per local subscriber: the connection's outbox (where its
//! frames go), the worker thread that owns the connection (so deliveries are batched per
//! worker, see `delivery`), and the actor to tell when a join failed. This module sits below
//! both the connection actor (`session`) and the room shards (`rooms`), so neither reaches up
//! into the other.

use std::sync::{Arc, Mutex};

use actix::{Message, Recipient};
use tokio::sync::oneshot;

use crate::ids::RoomId;
use crate::metrics as m;
use crate::protocol::encode::{self, Reply};
use crate::protocol::{CloseReason, ErrorCode, ReqId};
use crate::socket::outbox::{Frame, FrameKind, Outbox};

/// The index of the HTTP worker thread that owns a connection (its actor and socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkerId(pub u16);

/// What the room shards hold for a local connection: where to write, which worker owns it,
/// and whom to tell when a join failed. A server API request (`api`) is a connection without
/// a socket: it never joins, and its one reply goes to its [`ReplySlot`].
#[derive(Clone)]
pub struct ConnHandle {
    pub outbox: Outbox,
    pub worker: WorkerId,
    /// The connection's actor (`None` for a server API request).
    pub conn: Option<Recipient<JoinDone>>,
    /// A server API request's reply goes here instead of to `outbox`.
    pub reply: Option<Arc<ReplySlot>>,
}

impl ConnHandle {
    /// The handle of one server API request, and where its reply arrives.
    pub fn api() -> (ConnHandle, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        // Never written to: the reply goes to the slot.
        let (outbox, _) = crate::socket::outbox::outbox(1, 1);
        let handle = ConnHandle {
            outbox,
            worker: WorkerId(0),
            conn: None,
            reply: Some(Arc::new(ReplySlot(Mutex::new(Some(tx))))),
        };
        (handle, rx)
    }
}

/// Where the one reply of a server API request goes.
pub struct ReplySlot(Mutex<Option<oneshot::Sender<Reply>>>);

impl ReplySlot {
    /// Hands the reply over (the first one; a request has exactly one).
    pub fn send(&self, reply: Reply) {
        let tx = self.0.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(tx) = tx {
            let _ = tx.send(reply);
        }
    }
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnHandle(worker {})", self.worker.0)
    }
}

/// Sent by a shard when a join did not succeed (`ok: false`: the connection forgets the room),
/// or when a join with `since` succeeded (its replay is queued: the connection may let its next
/// resume through, see `session`'s resume pacing).
#[derive(Message)]
#[rtype(result = "()")]
pub struct JoinDone {
    pub room: RoomId,
    pub ok: bool,
}

/// Sent to a connection's actor to close it (shutdown, drain; the writer when the outbox
/// closed from elsewhere, e.g. a slow consumer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseNow(pub CloseReason);

/// The frame of a reply, counting errors by code.
pub fn reply_frame(id: &ReqId, reply: &Reply) -> Frame {
    if let Reply::Error { code, .. } = reply
        && *code != ErrorCode::RateLimited
    {
        // Rate-limit refusals are counted where they are decided.
        m::protocol_error(*code);
    }
    Frame {
        bytes: crate::socket::frame::text(&encode::reply(id, reply)),
        kind: FrameKind::Control,
    }
}

/// Writes a reply to `outbox` now (the connection actor's own replies).
pub fn send_reply(outbox: &Outbox, id: &ReqId, reply: &Reply) {
    let _ = outbox.push(reply_frame(id, reply));
}
