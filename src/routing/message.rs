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
use crate::ids::{ConnName, Epoch, NodeId, RoomId, UserId};

/// An error carried back to a requester.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerError {
    /// The receiver is not the room's owner in its view of the membership.
    NotOwner,
    /// The receiver is overloaded or shutting down.
    Unavailable,
    /// The room does not exist and the receiver, its owner, already owns its share of
    /// `max_rooms`: the room was not created (internode protocol version 5).
    RoomLimit,
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
    /// The room's presence set (connections that joined with `presence: true`).
    pub presence: Vec<PresenceEntry>,
}

pub use crate::protocol::PresenceEntry;

// ---- presence (member → owner, owner → members, owner → replicas) ----

/// Member → owner: a local connection is in the room's presence set. Sent again (idempotent)
/// whenever the member's feed of the room (re)starts, so a new owner learns the set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceJoin {
    pub room: RoomId,
    pub entry: PresenceEntry,
}

/// Member → owner: all of the sender's connections in the room's presence set; replaces what
/// the owner holds for the sender (sent when the sender's feed of the room starts or
/// resyncs, so a lost `PresenceLeave` cannot leave a ghost).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceSync {
    pub room: RoomId,
    pub entries: Vec<PresenceEntry>,
}

/// Member → owner: a local connection left the room (or went away).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceLeave {
    pub room: RoomId,
    pub conn: ConnName,
}

/// Owner → interested nodes: a presence change, for subscribers that asked for them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceEvent {
    pub room: RoomId,
    pub join: bool,
    pub entry: PresenceEntry,
}

/// Member → owner: read the presence set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceReq {
    pub room: RoomId,
    pub token: u64,
}

/// Owner → member: the presence set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceResp {
    pub room: RoomId,
    pub token: u64,
    pub members: Vec<PresenceEntry>,
}

/// Owner → replica: one presence change, applied to the replica's copy (`entry: None` removes
/// `conn`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaPresence {
    pub room: RoomId,
    pub epoch: Epoch,
    pub conn: ConnName,
    pub entry: Option<PresenceEntry>,
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

// ---- member → owner ----

/// Register interest in `room` (idempotent) and reply with the room's position and, with
/// `since`, the history after it. Interest holds until `Unsubscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    pub room: RoomId,
    pub token: u64,
    pub since: Option<u64>,
    /// The epoch `since` belongs to; a mismatch means the history since the start of the
    /// current epoch is sent and `recovered` is false.
    pub epoch: Option<Epoch>,
}

/// Withdraw interest in `room`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsubscribe {
    pub room: RoomId,
}

/// Sequence `data` (raw JSON) into `room`. (`ByteString`: a member keeps a copy to re-send the
/// publish if the owner refuses it while the room moves; cloning it is a refcount.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Publish {
    pub room: RoomId,
    pub token: u64,
    pub from: ConnName,
    /// The publisher's authenticated user (`None`: anonymous).
    pub user: Option<UserId>,
    pub data: ByteString,
    /// The client's idempotency key: a publish whose key the room has seen is answered with
    /// the original seq instead of being sequenced again.
    pub key: Option<ByteString>,
}

/// Read history after `since`, at most `limit` messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryReq {
    pub room: RoomId,
    pub token: u64,
    pub since: u64,
    pub limit: u64,
}

// ---- owner → member ----

/// Reply to `Subscribe`: every event up to `seq` was sent before this message, every later one
/// will follow it, so a subscriber that gets `history` then the live feed has no gap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscribeAck {
    pub room: RoomId,
    pub token: u64,
    pub epoch: Epoch,
    pub seq: u64,
    pub history: Vec<HistEntry>,
    pub recovered: bool,
}

/// One committed message, sent once to each interested node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub room: RoomId,
    pub epoch: Epoch,
    pub seq: u64,
    pub accepted_us: u64,
    pub frame: ByteString,
}

/// Reply to `Publish`: the assigned seq (sent once the message is committed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishAck {
    pub room: RoomId,
    pub token: u64,
    pub seq: u64,
    /// The room's epoch the seq belongs to.
    pub epoch: Epoch,
}

/// Reply to `HistoryReq`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryResp {
    pub room: RoomId,
    pub token: u64,
    pub epoch: Epoch,
    pub seq: u64,
    pub history: Vec<HistEntry>,
    pub recovered: bool,
}

/// A request could not be served (and was not: a refused publish was not sequenced, so
/// re-sending it is safe). `owner`: where the refusing node handed the room, when it knows —
/// the requester re-sends there at once instead of waiting for its view to catch up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Refused {
    pub room: RoomId,
    pub token: u64,
    pub error: PeerError,
    pub owner: Option<NodeId>,
}

// ---- owner → owner ----

/// A node about to own `room` asks a node that may have owned it for its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffQuery {
    pub room: RoomId,
}

/// The state of `room` (`None`: the sender has none). Sent in answer to `HandoffQuery`, or
/// unasked when the sender stops owning the room while alive (a node joined, or the sender is
/// draining). The sender stops sequencing the room before it snapshots the state and keeps
/// the snapshot until the receiver confirms it with `HandoffAck`: a link reset or a departed
/// receiver makes it send the snapshot again (to the room's owner then). A replica answers a
/// query with its copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub room: RoomId,
    pub state: Option<RoomState>,
}

/// The receiver of a `Handoff` holds the state (or a later one of the same epoch), with its
/// replicas synced: the sender may forget its snapshot. Drain waits for these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffAck {
    pub room: RoomId,
    pub epoch: Epoch,
    pub seq: u64,
}

/// Answer to `HandoffQuery`: the sender handed the room's state to `to` and `to` has not
/// confirmed it yet — ask `to` (again, until it has it) instead of concluding nobody has the
/// room and opening a new epoch beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffMoving {
    pub room: RoomId,
    pub to: NodeId,
}

/// A replica whose copy's owner restarted (and so lost the room) tells the room's owner in
/// its view that it holds the room at `(epoch, seq)`: if the receiver owns the room (or should,
/// in its own view) it fetches the state the usual way (`HandoffQuery` to every live node, the
/// furthest state wins) and confirms with `HandoffAck` once its replicas hold it. Sent again
/// until confirmed, so a room nobody asks about does not sit on one copy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffOffer {
    pub room: RoomId,
    pub epoch: Epoch,
    pub seq: u64,
}

/// One member ↔ owner, owner ↔ owner or owner ↔ replica message. Each variant is a struct
/// passed whole to its handler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PeerMsg {
    Subscribe(Subscribe),
    Unsubscribe(Unsubscribe),
    Publish(Publish),
    HistoryReq(HistoryReq),
    SubscribeAck(SubscribeAck),
    Event(Event),
    PublishAck(PublishAck),
    HistoryResp(HistoryResp),
    Refused(Refused),
    HandoffQuery(HandoffQuery),
    Handoff(Handoff),
    HandoffAck(HandoffAck),
    HandoffMoving(HandoffMoving),
    Replicate(Replicate),
    ReplicaSync(ReplicaSync),
    ReplicaAck(ReplicaAck),
    ReplicaDrop(ReplicaDrop),
    HandoffOffer(HandoffOffer),
    PresenceJoin(PresenceJoin),
    PresenceSync(PresenceSync),
    PresenceLeave(PresenceLeave),
    PresenceEvent(PresenceEvent),
    PresenceReq(PresenceReq),
    PresenceResp(PresenceResp),
    ReplicaPresence(ReplicaPresence),
}

impl PeerMsg {
    /// The room this message is about (every message is about exactly one room, which is how
    /// the receiving node picks the shard that handles it).
    pub fn room(&self) -> &RoomId {
        match self {
            PeerMsg::Subscribe(m) => &m.room,
            PeerMsg::Unsubscribe(m) => &m.room,
            PeerMsg::Publish(m) => &m.room,
            PeerMsg::HistoryReq(m) => &m.room,
            PeerMsg::SubscribeAck(m) => &m.room,
            PeerMsg::Event(m) => &m.room,
            PeerMsg::PublishAck(m) => &m.room,
            PeerMsg::HistoryResp(m) => &m.room,
            PeerMsg::Refused(m) => &m.room,
            PeerMsg::HandoffQuery(m) => &m.room,
            PeerMsg::Handoff(m) => &m.room,
            PeerMsg::HandoffAck(m) => &m.room,
            PeerMsg::HandoffMoving(m) => &m.room,
            PeerMsg::Replicate(m) => &m.room,
            PeerMsg::ReplicaSync(m) => &m.room,
            PeerMsg::ReplicaAck(m) => &m.room,
            PeerMsg::ReplicaDrop(m) => &m.room,
            PeerMsg::HandoffOffer(m) => &m.room,
            PeerMsg::PresenceJoin(m) => &m.room,
            PeerMsg::PresenceSync(m) => &m.room,
            PeerMsg::PresenceLeave(m) => &m.room,
            PeerMsg::PresenceEvent(m) => &m.room,
            PeerMsg::PresenceReq(m) => &m.room,
            PeerMsg::PresenceResp(m) => &m.room,
            PeerMsg::ReplicaPresence(m) => &m.room,
        }
    }

    /// Roughly how many bytes this message occupies (for queue byte bounds).
    pub fn approx_size(&self) -> usize {
        let hist = |h: &Vec<HistEntry>| h.iter().map(|e| e.frame.len() + 24).sum::<usize>();
        let pres = |p: &Vec<PresenceEntry>| p.iter().map(PresenceEntry::approx_size).sum::<usize>();
        64 + match self {
            PeerMsg::Publish(m) => m.data.len() + m.key.as_ref().map_or(0, |k| k.len()),
            PeerMsg::Event(m) => m.frame.len(),
            PeerMsg::Replicate(m) => m.frame.len() + m.key.as_ref().map_or(0, |k| k.len()),
            PeerMsg::ReplicaSync(m) => {
                pres(&m.state.presence)
                    + hist(&m.state.history)
                    + m.state
                        .keys
                        .iter()
                        .map(|(k, _)| k.len() + 16)
                        .sum::<usize>()
            }
            PeerMsg::SubscribeAck(m) => hist(&m.history),
            PeerMsg::HistoryResp(m) => hist(&m.history),
            PeerMsg::Handoff(Handoff { state: Some(s), .. }) => {
                pres(&s.presence)
                    + hist(&s.history)
                    + s.keys.iter().map(|(k, _)| k.len() + 16).sum::<usize>()
            }
            PeerMsg::PresenceJoin(m) => m.entry.approx_size(),
            PeerMsg::PresenceSync(m) => pres(&m.entries),
            PeerMsg::PresenceEvent(m) => m.entry.approx_size(),
            PeerMsg::PresenceResp(m) => pres(&m.members),
            PeerMsg::ReplicaPresence(m) => m.entry.as_ref().map_or(0, PresenceEntry::approx_size),
            _ => 0,
        }
    }

    /// A short name for logs and metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMsg::Subscribe(_) => "subscribe",
            PeerMsg::Unsubscribe(_) => "unsubscribe",
            PeerMsg::Publish(_) => "publish",
            PeerMsg::HistoryReq(_) => "history_req",
            PeerMsg::SubscribeAck(_) => "subscribe_ack",
            PeerMsg::Event(_) => "event",
            PeerMsg::PublishAck(_) => "publish_ack",
            PeerMsg::HistoryResp(_) => "history_resp",
            PeerMsg::Refused(_) => "refused",
            PeerMsg::HandoffQuery(_) => "handoff_query",
            PeerMsg::Handoff(_) => "handoff",
            PeerMsg::HandoffAck(_) => "handoff_ack",
            PeerMsg::HandoffMoving(_) => "handoff_moving",
            PeerMsg::Replicate(_) => "replicate",
            PeerMsg::ReplicaSync(_) => "replica_sync",
            PeerMsg::ReplicaAck(_) => "replica_ack",
            PeerMsg::ReplicaDrop(_) => "replica_drop",
            PeerMsg::HandoffOffer(_) => "handoff_offer",
            PeerMsg::PresenceJoin(_) => "presence_join",
            PeerMsg::PresenceSync(_) => "presence_sync",
            PeerMsg::PresenceLeave(_) => "presence_leave",
            PeerMsg::PresenceEvent(_) => "presence_event",
            PeerMsg::PresenceReq(_) => "presence_req",
            PeerMsg::PresenceResp(_) => "presence_resp",
            PeerMsg::ReplicaPresence(_) => "replica_presence",
        }
    }
}
