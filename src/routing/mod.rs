//! Room routing as a pure state machine: membership + interests + events in, actions out.
//!
//! A [`Router`] holds, for the rooms it is given, both halves of the routing protocol:
//!
//! * the **member** half (`member.rs`): the local subscribers of each room, the *feed* of events
//!   this node follows from the room's owner, joins waiting for the owner's acknowledgement,
//!   and publishes and history reads waiting for their reply;
//! * the **owner** half (`owner.rs`): for rooms whose owner is this node (rendezvous hashing of
//!   the room name over the live members, [`hash`]), the room's epoch, its gap-free `seq`, its
//!   bounded [`history`], and the set of *interested nodes* (nodes with local subscribers), to
//!   which each sequenced message is sent exactly once.
//!
//! The halves talk only through [`PeerMsg`]s. A message to another node becomes
//! [`Action::Send`]; a message to this node itself goes through an internal loopback queue, so
//! a one-node cluster and a hundred-node cluster run exactly the same code.
//!
//! The router does no I/O and reads no clock: time comes in with each [`Router::step`]. Callers
//! (the room shards in `rooms/`) feed it [`Input`]s and carry out the returned [`Action`]s.
//! Every action is self-contained: a `Fanout` carries the subscriber list as it was when the
//! event was accepted (a shared, copy-on-write snapshot), so a subscriber added later in the
//! same step — or before the caller gets to the action — never receives an older event.
//! Handles `H` identify local connections; the router only stores and returns them, which
//! keeps it testable with plain values (see `tests.rs`).
//!
//! Guarantees (the reasoning is in docs/ARCHITECTURE.md): a subscriber's join is acknowledged
//! only after the owner registered this node's interest; history and live events meet with no
//! gap or duplicate, because the owner's acknowledgement travels on the same ordered channel as
//! its events; a gap in the feed (lost messages after a link reset) is detected from `seq` and
//! repaired from the owner's history, or — when history no longer reaches — the affected
//! subscribers are closed so they can resume with `since` rather than silently miss messages.

pub mod hash;
pub mod history;
mod member;
pub mod message;
mod owner;
mod presence;
pub mod quorum;
mod replica;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

/// The hasher of the router's maps: randomly keyed in the product (room names come from
/// clients), fixed in tests so that a randomised schedule replays exactly from its seed (the
/// order in which a router walks its rooms decides the order of the messages it sends).
#[cfg(not(test))]
type MapHasher = std::collections::hash_map::RandomState;
#[cfg(test)]
type MapHasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;
type Map<K, V> = HashMap<K, V, MapHasher>;
use std::sync::Arc;

use bytestring::ByteString;

use crate::ids::{ConnId, ConnName, Epoch, NodeId, RoomId, UserId};
use crate::protocol::ReqId;
use crate::protocol::encode::Reply;
pub use history::{HistEntry, HistoryLimits};
pub use message::{
    Event, Handoff, HandoffAck, HandoffMoving, HandoffOffer, HandoffQuery, HistoryReq, HistoryResp,
    PeerError, PeerMsg, PresenceEntry, Publish, PublishAck, Refused, ReplicaAck, ReplicaDrop,
    ReplicaSync, Replicate, RoomState, Subscribe, SubscribeAck, Unsubscribe,
};
pub use presence::JoinPresence;
pub use replica::KEY_WINDOW;

use member::{MemberRoom, NewPublish, PendingReq};
use owner::{HandoffQueue, Moved, OwnedRoom, PendingOwnership};
use replica::RoomCopy;

/// The local subscribers of a room at one moment: shared by the `Fanout`s made then, copied
/// only when the list changes while one of them is still being carried out.
pub type Subscribers<H> = Arc<Vec<(ConnId, H)>>;

/// Router settings.
#[derive(Debug, Clone, Copy)]
pub struct RouterConfig {
    pub history: HistoryLimits,
    /// How long a request waits for the owner before it fails with `unavailable`.
    pub request_timeout_us: u64,
    /// Copies of each room kept on other nodes besides its owner (`room_replicas`).
    pub replicas: usize,
    /// Presence entries kept per room at most (`presence_max_per_room`).
    pub presence_max: usize,
    /// Rooms this router may *create* (its share of the node's `max_rooms`): a new room is
    /// refused (`PeerError::RoomLimit`) while the rooms it owns plus those whose state it is
    /// looking for reach this. Rooms that come with their state (handoffs, promoted replica
    /// copies, take-overs) are never refused, so moves can take a router past it.
    pub max_rooms: usize,
}

/// An event fed to the router.
#[derive(Debug)]
pub enum Input<H> {
    /// A local connection joins `room`.
    Join {
        conn: ConnId,
        handle: H,
        room: RoomId,
        since: Option<u64>,
        epoch: Option<Epoch>,
        req: ReqId,
        /// What the join asks of the room's presence set.
        presence: JoinPresence,
    },
    /// A local connection leaves `room`. `reply` is false when the connection is gone.
    Leave {
        conn: ConnId,
        handle: H,
        room: RoomId,
        req: ReqId,
        reply: bool,
    },
    /// A local connection publishes raw JSON `data`.
    Publish {
        handle: H,
        from: ConnName,
        /// The publisher's authenticated user, shown in the event (`"user"`).
        user: Option<UserId>,
        room: RoomId,
        data: String,
        /// Idempotency key: a retry with the same key gets the original seq.
        key: Option<String>,
        req: ReqId,
    },
    /// A local connection reads history.
    History {
        handle: H,
        room: RoomId,
        since: u64,
        limit: u64,
        req: ReqId,
    },
    /// A local connection reads the room's presence set.
    Presence { handle: H, room: RoomId, req: ReqId },
    /// A message from a peer node.
    Peer { from: NodeId, msg: PeerMsg },
    /// The live members eligible to own rooms, all of them also live (tests' shorthand for
    /// `View` with `live = eligible`).
    Members(Vec<NodeId>),
    /// The membership view: `eligible` may own rooms (live, ready, not draining; this node
    /// included when it is eligible); `live` are all live members (draining ones too).
    View {
        eligible: Vec<NodeId>,
        live: Vec<NodeId>,
    },
    /// The link to `node` was reset: messages in flight either way may be lost.
    PeerReset(NodeId),
    /// `node` restarted (a new incarnation under the same id, which the view need not show):
    /// its link was reset, and everything it held — rooms, copies, interest — is gone.
    PeerRestarted(NodeId),
    /// Time passed: expire history, time out requests, retry resyncs.
    Tick,
}

/// Why the router wants a local connection closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvictReason {
    /// The node's feed for a room lost messages that history can no longer supply.
    Gap,
}

/// Work for the caller to carry out.
#[derive(Debug)]
pub enum Action<H> {
    /// Send a reply to one local connection.
    Reply { to: H, req: ReqId, reply: Reply },
    /// Send one event frame to one local connection (history replay on join).
    Deliver {
        to: H,
        frame: ByteString,
        accepted_us: u64,
    },
    /// Send one event frame to every connection in `subs` (the room's local subscribers when
    /// the event was accepted: exactly those whose join position precedes it).
    Fanout {
        subs: Subscribers<H>,
        frame: ByteString,
        accepted_us: u64,
    },
    /// A join did not succeed: the connection should forget `room` (its reply was sent).
    JoinFailed { to: H, room: RoomId },
    /// Close a local connection.
    Evict { to: H, reason: EvictReason },
    /// Send a message to a peer node (never this node: those go through the loopback).
    Send { to: NodeId, msg: PeerMsg },
}

/// Counters the router keeps about itself (exported as metrics by its driver).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RouterStats {
    /// Member rooms whose owner changed with the membership.
    pub owner_changes: u64,
    /// Gaps detected in a feed (each triggers a resync).
    pub gaps: u64,
    /// Events dropped as stale or duplicate.
    pub stale_events: u64,
    /// Local connections closed because their room lost messages.
    pub evictions: u64,
    /// Rooms this node started in a new epoch (new rooms, or a dead owner's).
    pub fresh_epochs: u64,
    /// Handoff snapshots sent (first sends and re-sends).
    pub handoffs_sent: u64,
    /// Handoff snapshots confirmed by their receiver.
    pub handoffs_confirmed: u64,
    /// Handoff snapshots re-aimed after a link reset or their receiver's departure.
    pub handoffs_resent: u64,
    /// Handoffs that met a room already sequenced here in another epoch (kept the local one).
    pub handoff_conflicts: u64,
    /// Requests re-sent because the node asked refused them while the room moved.
    pub retries: u64,
    /// Full room copies sent to replicas (new replicas, resyncs after a link reset or a gap).
    pub replica_syncs: u64,
    /// Replica copies that became the owned room (an owner died or left): same epoch.
    pub promotions: u64,
    /// Publishes answered with the seq of an earlier publish with the same key.
    pub duplicate_publishes: u64,
    /// Replication messages ignored because this node owns the room itself (views disagree).
    pub replica_conflicts: u64,
    /// Times this node lost the quorum (saw less than a majority of the stable membership).
    pub quorum_losses: u64,
    /// Presence entries not recorded because their room's set was full.
    pub presence_refused: u64,
    /// Requests refused because their room did not exist and this router was at
    /// `RouterConfig::max_rooms` (the room was not created).
    pub rooms_refused: u64,
}

/// The routing state machine for a set of rooms on one node.
pub struct Router<H> {
    me: NodeId,
    cfg: RouterConfig,
    /// Live members eligible to own rooms, sorted. Empty means "only me" (before the first
    /// membership view, a node serves alone).
    members: Vec<NodeId>,
    /// All live members (eligible or draining), sorted.
    live: Vec<NodeId>,
    /// When the view last changed (handoffs are looked for only shortly after a change).
    view_changed_us: u64,
    /// The cluster's last stable membership (`quorum.rs`), sorted.
    stable: Vec<NodeId>,
    /// Whether this node sees a majority of `stable` (else it is fenced: no sequencing).
    quorum: bool,
    /// A loss of the quorum was logged (so its end is logged too).
    fence_logged: bool,
    /// Replica sets, syncs or copies changed since the driver last asked (it then recounts
    /// the under-replicated rooms, an O(rooms) walk it does not want after every step).
    replication_changed: bool,
    member_rooms: Map<RoomId, MemberRoom<H>>,
    owned: Map<RoomId, OwnedRoom>,
    /// This node's copies of rooms it replicates for their owners.
    copies: Map<RoomId, RoomCopy>,
    /// Rooms this node is about to own, waiting for a previous owner's state.
    pending_owner: Map<RoomId, PendingOwnership>,
    /// Rooms this node handed to another node: their snapshots until confirmed, and until
    /// when requests for them are refused with a hint to the new owner.
    moved: Map<RoomId, Moved>,
    /// Unasked handoffs waiting for the flow-control window.
    handoffs: HandoffQueue,
    /// Where refusals and events said rooms went, ahead of this node's view (until when).
    hints: Map<RoomId, (NodeId, u64)>,
    /// Publishes and history reads waiting for the owner, by token.
    pending: Map<u64, PendingReq<H>>,
    /// Tokens of the pending publishes of each room (so the publish-order check looks at a
    /// room's few in-flight publishes, not at every pending request of the shard).
    publishes_by_room: Map<RoomId, Vec<u64>>,
    next_token: u64,
    now_us: u64,
    /// Replica acknowledgements held until the end of the step batch, one per room
    /// (`replica.rs`: `defer_ack`).
    acks_due: Map<RoomId, (NodeId, Epoch, u64)>,
    /// Inside `step_batch`: acknowledgements wait for its end.
    batching: bool,
    loopback: VecDeque<PeerMsg>,
    stats: RouterStats,
}

impl<H: Clone> Router<H> {
    pub fn new(me: NodeId, cfg: RouterConfig) -> Self {
        Router {
            me,
            cfg,
            members: Vec::new(),
            live: Vec::new(),
            view_changed_us: 0,
            stable: Vec::new(),
            quorum: true,
            fence_logged: false,
            replication_changed: false,
            member_rooms: Map::default(),
            owned: Map::default(),
            copies: Map::default(),
            pending_owner: Map::default(),
            moved: Map::default(),
            handoffs: HandoffQueue::default(),
            hints: Map::default(),
            pending: Map::default(),
            publishes_by_room: Map::default(),
            // Set from the clock at the first step (see `step`).
            next_token: 0,
            now_us: 0,
            acks_due: Map::default(),
            batching: false,
            loopback: VecDeque::new(),
            stats: RouterStats::default(),
        }
    }

    /// Feeds one input at time `now_us` (unix microseconds) and appends the resulting actions
    /// to `out`. The caller must carry out the actions before the next call.
    pub fn step(&mut self, now_us: u64, input: Input<H>, out: &mut Vec<Action<H>>) {
        self.now_us = self.now_us.max(now_us);
        if self.next_token == 0 {
            // Tokens start from the clock (x16), not from 1: a node restarted under the same
            // id must not reuse a token its previous incarnation has in flight, or a late
            // reply to the old request would answer a new one.
            self.next_token = self.now_us.saturating_mul(16).max(1);
        }
        // Cut off from the majority: answer at once. (A node that merely has no owner in its
        // view yet — it is starting — lets requests wait for one, like a room that moves.)
        if !self.quorum
            && !self.members.is_empty()
            && let Input::Join { handle, req, .. }
            | Input::Publish { handle, req, .. }
            | Input::History { handle, req, .. }
            | Input::Presence { handle, req, .. } = &input
        {
            out.push(Action::Reply {
                to: handle.clone(),
                req: req.clone(),
                reply: Reply::error(
                    crate::protocol::ErrorCode::Unavailable,
                    self.fenced_reason(),
                ),
            });
            if let Input::Join { handle, room, .. } = input {
                out.push(Action::JoinFailed { to: handle, room });
            }
            return;
        }
        match input {
            Input::Join {
                conn,
                handle,
                room,
                since,
                epoch,
                req,
                presence,
            } => self.join(conn, handle, room, (since, epoch, presence), req, out),
            Input::Leave {
                conn,
                handle,
                room,
                req,
                reply,
            } => self.leave(conn, handle, room, req, reply, out),
            Input::Publish {
                handle,
                from,
                user,
                room,
                data,
                key,
                req,
            } => {
                let p = NewPublish {
                    from,
                    user,
                    data,
                    key,
                };
                self.publish(handle, room, p, req, out)
            }
            Input::History {
                handle,
                room,
                since,
                limit,
                req,
            } => self.history(handle, room, since, limit, req, out),
            Input::Presence { handle, room, req } => self.presence_query(handle, room, req, out),
            Input::Peer { from, msg } => self.on_peer(from, msg, out),
            Input::Members(members) => self.set_members(members.clone(), members, out),
            Input::View { eligible, live } => self.set_members(eligible, live, out),
            Input::PeerReset(node) => {
                self.peer_reset(&node, out);
                self.peer_reset_owner_side(&node, out);
                self.peer_reset_replication(&node, out);
            }
            Input::PeerRestarted(node) => {
                self.peer_reset(&node, out);
                self.peer_reset_owner_side(&node, out);
                self.peer_reset_replication(&node, out);
                self.peer_restarted_copies(&node, out);
                self.prune_presence_everywhere(std::slice::from_ref(&node), out);
            }
            Input::Tick => {
                self.tick_quorum(out);
                self.tick_members(out);
                self.tick_owned(out);
            }
        }
        // Messages this node sent to itself, in order, as if over an ordered link.
        while let Some(msg) = self.loopback.pop_front() {
            let me = self.me.clone();
            self.on_peer(me, msg, out);
        }
        if !self.batching {
            self.flush_acks(out);
        }
    }

    /// Feeds inputs that arrived together (one read from a peer link) and appends the actions
    /// of all of them to `out`: like calling `step` for each, except that what a replica
    /// acknowledges is acknowledged once per room for the whole batch.
    pub fn step_batch(
        &mut self,
        now_us: u64,
        inputs: impl IntoIterator<Item = Input<H>>,
        out: &mut Vec<Action<H>>,
    ) {
        self.batching = true;
        for input in inputs {
            self.step(now_us, input, out);
        }
        self.batching = false;
        self.flush_acks(out);
    }

    /// Rooms this node owns (sequences) now.
    pub fn owned_rooms(&self) -> usize {
        self.owned.len()
    }

    /// Rooms handed away whose new owner has not confirmed them yet (drain waits for zero).
    pub fn unconfirmed_handoffs(&self) -> usize {
        self.handoffs.unconfirmed
    }

    /// The number of entries in each of the router's tables, by name: what a long run watches
    /// to tell state that comes and goes from state that only accumulates
    /// (`roomcast_router_entries{table}`).
    pub fn table_sizes(&self) -> [(&'static str, usize); 8] {
        [
            ("member_rooms", self.member_rooms.len()),
            ("owned", self.owned.len()),
            ("copies", self.copies.len()),
            ("pending_owner", self.pending_owner.len()),
            ("moved", self.moved.len()),
            ("hints", self.hints.len()),
            ("pending_requests", self.pending.len()),
            ("publishes_by_room", self.publishes_by_room.len()),
        ]
    }

    /// Rooms with local subscribers or joins in progress.
    pub fn member_rooms(&self) -> usize {
        self.member_rooms.len()
    }

    /// Up to `limit` rooms with local subscribers whose names start with `prefix` and sort
    /// after `after`, in name order, with their local subscriber counts.
    pub fn local_rooms(&self, prefix: &str, after: &str, limit: usize) -> Vec<(RoomId, u64)> {
        let mut v: Vec<(RoomId, u64)> = self
            .member_rooms
            .iter()
            .filter(|(r, m)| {
                !m.subs.is_empty() && r.as_str().starts_with(prefix) && r.as_str() > after
            })
            .map(|(r, m)| (r.clone(), m.subs.len() as u64))
            .collect();
        v.sort();
        v.truncate(limit);
        v
    }

    pub fn stats(&self) -> RouterStats {
        self.stats
    }

    pub fn me(&self) -> &NodeId {
        &self.me
    }

    /// The owner of `room` in the current view.
    pub fn owner_of(&self, room: &RoomId) -> NodeId {
        hash::owner(room, &self.members)
            .cloned()
            .unwrap_or_else(|| self.me.clone())
    }

    /// Where requests for `room` go: a fresh hint (the node a refusal or the feed said holds
    /// the room now — it may be newer than this node's view) until the view catches up, else
    /// the view's owner.
    fn route(&self, room: &RoomId) -> NodeId {
        match self.hints.get(room) {
            Some((n, until)) if *until > self.now_us => n.clone(),
            _ => self.owner_of(room),
        }
    }

    fn set_hint(&mut self, room: &RoomId, node: NodeId) {
        let until = self.now_us + owner::MOVED_TTL_US;
        self.hints.insert(room.clone(), (node, until));
    }

    /// True if `node` is live in this node's view (before any view: everyone is assumed live).
    fn is_member(&self, node: &NodeId) -> bool {
        node == &self.me || self.live.is_empty() || self.live.binary_search(node).is_ok()
    }

    fn token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn deadline(&self) -> u64 {
        self.now_us + self.cfg.request_timeout_us
    }

    fn send(&mut self, to: NodeId, msg: PeerMsg, out: &mut Vec<Action<H>>) {
        if to == self.me {
            self.loopback.push_back(msg);
        } else {
            out.push(Action::Send { to, msg });
        }
    }

    fn on_peer(&mut self, from: NodeId, msg: PeerMsg, out: &mut Vec<Action<H>>) {
        match msg {
            PeerMsg::Subscribe(_)
            | PeerMsg::Unsubscribe(_)
            | PeerMsg::Publish(_)
            | PeerMsg::HistoryReq(_) => self.on_owner_msg(from, msg, out),
            PeerMsg::SubscribeAck(m) => self.on_subscribe_ack(from, m, out),
            PeerMsg::Event(m) => self.on_event(from, m, out),
            PeerMsg::PublishAck(m) => self.on_publish_ack(m, out),
            PeerMsg::HistoryResp(m) => self.on_history_resp(m, out),
            PeerMsg::Refused(m) => self.on_refused(from, m, out),
            PeerMsg::HandoffQuery(m) => self.on_handoff_query(from, m, out),
            PeerMsg::Handoff(m) => self.on_handoff(from, m, out),
            PeerMsg::HandoffAck(m) => self.on_handoff_ack(from, m, out),
            PeerMsg::HandoffMoving(m) => self.on_handoff_moving(from, m, out),
            PeerMsg::Replicate(m) => self.on_replicate(from, m, out),
            PeerMsg::ReplicaSync(m) => self.on_replica_sync(from, m, out),
            PeerMsg::ReplicaAck(m) => self.on_replica_ack(from, m, out),
            PeerMsg::ReplicaDrop(m) => self.on_replica_drop(&from, m),
            PeerMsg::HandoffOffer(m) => self.on_handoff_offer(from, m, out),
            PeerMsg::PresenceJoin(_)
            | PeerMsg::PresenceSync(_)
            | PeerMsg::PresenceLeave(_)
            | PeerMsg::PresenceReq(_) => self.owner_presence(from, msg, out),
            PeerMsg::PresenceEvent(m) => self.on_presence_event(m, out),
            PeerMsg::PresenceResp(m) => self.on_presence_resp(m, out),
            PeerMsg::ReplicaPresence(m) => self.on_replica_presence(&from, m),
        }
    }

    fn set_members(
        &mut self,
        mut eligible: Vec<NodeId>,
        mut live: Vec<NodeId>,
        out: &mut Vec<Action<H>>,
    ) {
        eligible.sort();
        eligible.dedup();
        live.extend(eligible.iter().cloned());
        live.sort();
        live.dedup();
        if eligible == self.members && live == self.live {
            return;
        }
        let old_eligible = std::mem::replace(&mut self.members, eligible);
        let old_live = std::mem::replace(&mut self.live, live);
        self.view_changed_us = self.now_us;
        // Nodes that are gone (not merely draining).
        let departed: Vec<NodeId> = old_live
            .iter()
            .filter(|n| self.live.binary_search(n).is_err())
            .cloned()
            .collect();
        // Hints the view has caught up with, or that point at departed nodes, are done.
        let now = self.now_us;
        let members = std::mem::take(&mut self.members);
        self.hints.retain(|room, (n, until)| {
            *until > now
                && !departed.contains(n)
                && hash::owner(room, &members).is_some_and(|o| o != n)
        });
        self.members = members;
        // Members that announced a drain (live, not eligible) and then left.
        let left_draining: Vec<NodeId> = departed
            .iter()
            .filter(|n| old_eligible.binary_search(n).is_err())
            .cloned()
            .collect();
        self.view_changed_quorum(&left_draining, out);
        self.members_changed_member_side(&departed, out);
        self.members_changed_owner_side(&departed, out);
        self.members_changed_replica_side(out);
        if !departed.is_empty() {
            // Their connections are gone: out of every presence set, with leave events.
            self.prune_presence_everywhere(&departed, out);
        }
    }
}
