//! Messages between the two halves of room routing: a *member* node (one with local
//! subscribers or publishers of a room) and the room's *owner* node.
//!
//! The same enum travels between nodes (internode protocol, bincode) and from a node to itself
//! (the router's loopback when it owns the room it serves), so one code path handles both.
//! Every request carries a `token` chosen by the requester; the owner echoes it in the reply.
//! Types are plain (no serde `flatten`/`tag`/`skip`) so that bincode encodes them faithfully.
//! The wire meaning of each variant is documented in docs/ARCHITECTURE.md.

use bytestring::ByteString;
use serde::{Deserialize, Serialize};

use super::history::HistEntry;
use crate::ids::{ConnName, Epoch, NodeId, RoomId};

/// An error carried back to a requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerError {
    /// The receiver is not the room's owner in its view of the membership.
    NotOwner,
    /// The receiver is overloaded or shutting down.
    Unavailable,
}

/// A room's owner state, as handed from one owner to the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoomState {
    pub epoch: Epoch,
    pub seq: u64,
    /// How many times the room has moved in this epoch (each handoff adds one): a copy that
    /// comes back to a node with no more moves than when it left that node is a stale re-send,
    /// however its seq compares.
    pub moves: u64,
    pub history: Vec<HistEntry>,
    /// Nodes that had registered interest with the previous owner.
    pub interested: Vec<NodeId>,
    /// The highest seq every replica held (committed: delivered and acknowledged). Entries
    /// after it are sequenced but not yet committed; the receiver commits them before it
    /// serves a read.
    pub committed: u64,
    /// Recent idempotency keys of publishes, oldest first, with the seq each got.
    pub keys: Vec<(ByteString, u64)>,
    /// Publishers waiting for the commit of an uncommitted seq: `(seq, node, token)`.
    pub waiters: Vec<(u64, NodeId, u64)>,
}

/// Owner → replica: one sequenced message, appended to the replica's copy of the room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replicate {
    pub room: RoomId,
    pub epoch: Epoch,
    pub seq: u64,
    pub accepted_us: u64,
    pub frame: ByteString,
    /// The publish's idempotency key, remembered with the copy.
    pub key: Option<ByteString>,
    /// The owner's commit point when it sent this (the replica's copy knows which of its
    /// entries were delivered if it is promoted).
    pub committed: u64,
}

/// Owner → replica: the whole room, replacing whatever copy the replica had (a new replica, or
/// one that could not apply a `Replicate`). `state.interested` and `state.waiters` are empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaSync {
    pub room: RoomId,
    pub state: RoomState,
}

/// Replica → owner: the replica's copy holds everything up to `seq` of `epoch` (`ok`), or it
/// could not apply a `Replicate` (`!ok`: no copy, another epoch or owner, or a gap) and needs
/// a `ReplicaSync`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaAck {
    pub room: RoomId,
    pub epoch: Epoch,
    pub seq: u64,
    pub ok: bool,
}

/// Owner → replica: forget your copy (the room was dropped, or you are no longer its replica).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaDrop {
    pub room: RoomId,
}

/// One member ↔ owner (or owner ↔ owner) message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    // ---- member → owner ----
    /// Register interest in `room` (idempotent) and reply with the room's position and, with
    /// `since`, the history after it. Interest holds until `Unsubscribe`.
    Subscribe {
        room: RoomId,
        token: u64,
        since: Option<u64>,
        /// The epoch `since` belongs to; a mismatch means the history since the start of the
        /// current epoch is sent and `recovered` is false.
        epoch: Option<Epoch>,
    },
    /// Withdraw interest in `room`.
    Unsubscribe {
        room: RoomId,
    },
    /// Sequence `data` (raw JSON) into `room`. (`ByteString`: a member keeps a copy to re-send
    /// the publish if the owner refuses it while the room moves; cloning it is a refcount.)
    Publish {
        room: RoomId,
        token: u64,
        from: ConnName,
        data: ByteString,
        /// The client's idempotency key: a publish whose key the room has seen is answered
        /// with the original seq instead of being sequenced again.
        key: Option<ByteString>,
    },
    /// Read history after `since`, at most `limit` messages.
    HistoryReq {
        room: RoomId,
        token: u64,
        since: u64,
        limit: u64,
    },

    // ---- owner → member ----
    /// Reply to `Subscribe`: every event up to `seq` was sent before this message, every later
    /// one will follow it, so a subscriber that gets `history` then the live feed has no gap.
    SubscribeAck {
        room: RoomId,
        token: u64,
        epoch: Epoch,
        seq: u64,
        history: Vec<HistEntry>,
        recovered: bool,
    },
    /// One sequenced message, sent once to each interested node.
    Event {
        room: RoomId,
        epoch: Epoch,
        seq: u64,
        accepted_us: u64,
        frame: ByteString,
    },
    /// Reply to `Publish`: the assigned seq.
    PublishAck {
        room: RoomId,
        token: u64,
        seq: u64,
    },
    /// Reply to `HistoryReq`.
    HistoryResp {
        room: RoomId,
        token: u64,
        epoch: Epoch,
        seq: u64,
        history: Vec<HistEntry>,
        recovered: bool,
    },
    /// A request could not be served (and was not: a refused publish was not sequenced, so
    /// re-sending it is safe). `owner`: where the refusing node handed the room, when it knows
    /// — the requester re-sends there at once instead of waiting for its view to catch up.
    Refused {
        room: RoomId,
        token: u64,
        error: PeerError,
        owner: Option<NodeId>,
    },

    // ---- owner → owner ----
    /// A node about to own `room` asks a node that may have owned it for its state.
    HandoffQuery {
        room: RoomId,
    },
    /// The state of `room` (`None`: the sender has none). Sent in answer to `HandoffQuery`, or
    /// unasked when the sender stops owning the room while alive (a node joined, or the
    /// sender is draining). The sender stops sequencing the room before it snapshots the state
    /// and keeps the snapshot until the receiver confirms it with `HandoffAck`: a link reset
    /// or a departed receiver makes it send the snapshot again (to the room's owner then).
    Handoff {
        room: RoomId,
        state: Option<RoomState>,
    },
    /// The receiver of a `Handoff` holds the state (or a later one of the same epoch): the
    /// sender may forget its snapshot. Drain waits for these, not for empty queues.
    HandoffAck {
        room: RoomId,
        epoch: Epoch,
        seq: u64,
    },
    /// Answer to `HandoffQuery`: the sender handed the room's state to `to` and `to` has not
    /// confirmed it yet — ask `to` (again, until it has it) instead of concluding nobody has
    /// the room and opening a new epoch beside it.
    HandoffMoving {
        room: RoomId,
        to: NodeId,
    },

    // ---- owner ↔ replica ----
    Replicate(Replicate),
    ReplicaSync(ReplicaSync),
    ReplicaAck(ReplicaAck),
    ReplicaDrop(ReplicaDrop),
}

impl PeerMsg {
    /// The room this message is about (every message is about exactly one room, which is how
    /// the receiving node picks the shard that handles it).
    pub fn room(&self) -> &RoomId {
        match self {
            PeerMsg::Subscribe { room, .. }
            | PeerMsg::Unsubscribe { room }
            | PeerMsg::Publish { room, .. }
            | PeerMsg::HistoryReq { room, .. }
            | PeerMsg::SubscribeAck { room, .. }
            | PeerMsg::Event { room, .. }
            | PeerMsg::PublishAck { room, .. }
            | PeerMsg::HistoryResp { room, .. }
            | PeerMsg::Refused { room, .. }
            | PeerMsg::HandoffQuery { room }
            | PeerMsg::Handoff { room, .. }
            | PeerMsg::HandoffAck { room, .. }
            | PeerMsg::HandoffMoving { room, .. } => room,
            PeerMsg::Replicate(m) => &m.room,
            PeerMsg::ReplicaSync(m) => &m.room,
            PeerMsg::ReplicaAck(m) => &m.room,
            PeerMsg::ReplicaDrop(m) => &m.room,
        }
    }

    /// Roughly how many bytes this message occupies (for queue byte bounds).
    pub fn approx_size(&self) -> usize {
        let hist = |h: &Vec<HistEntry>| h.iter().map(|e| e.frame.len() + 24).sum::<usize>();
        64 + match self {
            PeerMsg::Publish { data, key, .. } => data.len() + key.as_ref().map_or(0, |k| k.len()),
            PeerMsg::Event { frame, .. } => frame.len(),
            PeerMsg::Replicate(m) => m.frame.len() + m.key.as_ref().map_or(0, |k| k.len()),
            PeerMsg::ReplicaSync(m) => {
                hist(&m.state.history)
                    + m.state
                        .keys
                        .iter()
                        .map(|(k, _)| k.len() + 16)
                        .sum::<usize>()
            }
            PeerMsg::SubscribeAck { history, .. } | PeerMsg::HistoryResp { history, .. } => {
                hist(history)
            }
            PeerMsg::Handoff { state: Some(s), .. } => {
                hist(&s.history) + s.keys.iter().map(|(k, _)| k.len() + 16).sum::<usize>()
            }
            _ => 0,
        }
    }

    /// A short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMsg::Subscribe { .. } => "subscribe",
            PeerMsg::Unsubscribe { .. } => "unsubscribe",
            PeerMsg::Publish { .. } => "publish",
            PeerMsg::HistoryReq { .. } => "history_req",
            PeerMsg::SubscribeAck { .. } => "subscribe_ack",
            PeerMsg::Event { .. } => "event",
            PeerMsg::PublishAck { .. } => "publish_ack",
            PeerMsg::HistoryResp { .. } => "history_resp",
            PeerMsg::Refused { .. } => "refused",
            PeerMsg::HandoffQuery { .. } => "handoff_query",
            PeerMsg::Handoff { .. } => "handoff",
            PeerMsg::HandoffAck { .. } => "handoff_ack",
            PeerMsg::HandoffMoving { .. } => "handoff_moving",
            PeerMsg::Replicate(_) => "replicate",
            PeerMsg::ReplicaSync(_) => "replica_sync",
            PeerMsg::ReplicaAck(_) => "replica_ack",
            PeerMsg::ReplicaDrop(_) => "replica_drop",
        }
    }
}
