//! The owner half of routing: sequencing, history and interested nodes of the rooms this node
//! owns, and the handoff of that state when ownership moves between live nodes.
//!
//! Handoff. When a node stops owning a room while alive (a node joined and outranks it, or it
//! is draining), it stops sequencing the room *in the same step* as it snapshots the state,
//! and keeps the snapshot (`moved`) until the new owner confirms it (`HandoffAck`). Meanwhile
//! it refuses requests for the room with a hint naming the new owner (members re-send there at
//! once). A snapshot whose link was reset is sent again; one whose receiver left is sent to the
//! room's owner in the current view (or taken back). Unasked handoffs are flow-controlled: at
//! most [`HANDOFF_WINDOW`] snapshots or [`HANDOFF_WINDOW_BYTES`] per router are unconfirmed at
//! once, the rest wait their turn, so thousands of rooms with full histories never overflow a
//! link (an overflow resets the link; the snapshots are then re-sent, never lost).
//!
//! A node about to own a room it has no state for asks every live node (`HandoffQuery`) —
//! shortly after a view change only; in a stable cluster a room is new when its owner has no
//! state — and holds requests for the room until all answered or [`HANDOFF_WAIT_US`] passed. A
//! queried node that holds the room (owned, or a snapshot not yet confirmed) hands it over at
//! once. So the room keeps its epoch, seq and history, and subscribers resume across the move
//! with no gap. A dead owner cannot answer: its rooms start a new epoch (until replication
//! exists), counted in `RouterStats::fresh_epochs`.

use std::collections::VecDeque;

use super::history::History;
use super::message::{
    Handoff, HandoffAck, HandoffMoving, HandoffOffer, HandoffQuery, HistoryReq, HistoryResp,
    Publish, PublishAck, Refused, Subscribe, SubscribeAck, Unsubscribe,
};
use super::presence::PresenceSet;
use super::replica::{Keys, Progress};
use super::{Action, HistEntry, PeerError, PeerMsg, RoomState, Router};
use crate::ids::{Epoch, NodeId, RoomId};
use crate::protocol::encode;

/// How long after a view change a node looks for previous owners of a room it is to own.
const HANDOFF_WINDOW_US: u64 = 30_000_000;
/// How long requests for a room wait for previous owners' answers (unreplicated rooms).
const HANDOFF_WAIT_US: u64 = 2_000_000;
/// The same with replication: a live node that has not answered yet may hold the room's only
/// copy, and opening a new epoch beside it would lose its committed messages, so the wait is
/// long (nodes that leave the view stop being waited for at once; requests held meanwhile
/// time out as `unavailable` and are retried by their clients).
const REPLICATED_HANDOFF_WAIT_US: u64 = 30_000_000;
/// How long a node refuses requests for a room it handed away (with a hint to the new owner),
/// counted from the new owner's confirmation.
pub(super) const MOVED_TTL_US: u64 = 10_000_000;
/// Requests held per room while its state is awaited; more are refused as unavailable.
const MAX_DEFERRED: usize = 4096;
/// Unconfirmed unasked handoffs per router at most (a router is one shard of a node).
pub(super) const HANDOFF_WINDOW: usize = 32;
/// Bytes of unconfirmed unasked handoffs per router at most (one larger snapshot may still go
/// alone). Four shards keep well under a link's 64 MiB queue.
pub(super) const HANDOFF_WINDOW_BYTES: usize = 4 * 1024 * 1024;

/// A room this node sequences.
pub(super) struct OwnedRoom {
    pub(super) epoch: Epoch,
    /// Last assigned seq (0 before the first message of the epoch).
    pub(super) seq: u64,
    /// Handoffs of this epoch so far (see `RoomState::moves`).
    pub(super) moves: u64,
    pub(super) history: History,
    /// Nodes with local subscribers; each gets every event once. A handful at most, so a Vec.
    pub(super) interested: Vec<NodeId>,
    /// The highest seq every replica holds: events and acknowledgements go out up to here.
    pub(super) committed: u64,
    /// Entries sequenced after `committed`, oldest first: their events go out on commit.
    pub(super) tail: VecDeque<HistEntry>,
    /// Publishers waiting for the commit of their seq: `(seq, node, token)`.
    pub(super) waiters: Vec<(u64, NodeId, u64)>,
    /// The room's replicas and what each acknowledged (`replica.rs`).
    pub(super) replicas: Vec<Progress>,
    /// Recent publish keys (idempotency window).
    pub(super) keys: Keys,
    /// Reads (subscribes, history) wait until `committed` reaches this: a room taken over
    /// with an uncommitted tail commits it before anyone can read it.
    pub(super) hold_until: u64,
    pub(super) held: VecDeque<(NodeId, PeerMsg)>,
    /// Handoffs of this room to confirm to their senders once the replicas are synced.
    pub(super) confirms: Vec<(NodeId, Epoch, u64)>,
    /// The room's presence set (`presence.rs`).
    pub(super) presence: PresenceSet,
}

/// A room this node is to own, waiting for a previous owner's state.
pub(super) struct PendingOwnership {
    waiting: Vec<NodeId>,
    /// Nodes the state is on its way to (`HandoffMoving`): their "none" is not final; they are
    /// asked again on each tick until they have it or the wait ends.
    moving: Vec<NodeId>,
    deadline_us: u64,
    pub(super) found: Option<RoomState>,
    /// Handoffs to confirm once the room is installed and its replicas synced.
    confirms: Vec<(NodeId, Epoch, u64)>,
    /// Everyone was asked again after a node we waited for died (once).
    requeried: bool,
    /// Requests that arrived meanwhile, in order, with their sender.
    pub(super) queued: VecDeque<(NodeId, PeerMsg)>,
}

/// A room this node handed away: requests for it are refused with a hint to `to`, and the
/// snapshot is kept until `to` confirms it.
pub(super) struct Moved {
    to: NodeId,
    /// Refused with the hint until then (while `state` is kept, always).
    until_us: u64,
    /// The snapshot, until the receiver's `HandoffAck`.
    state: Option<RoomState>,
    /// Whether `state` is on a link (counted in the window) rather than waiting its turn.
    sent: bool,
    /// `approx_size` of the Handoff carrying `state`.
    bytes: usize,
    /// Where the room stood when it left (kept after confirmation): a copy of it that comes
    /// back later with no more moves — a re-send whose confirmation crossed it — is stale.
    epoch: Epoch,
    moves: u64,
}

/// Unasked handoffs waiting for the window, and what the window holds now.
#[derive(Default)]
pub(super) struct HandoffQueue {
    waiting: VecDeque<RoomId>,
    in_flight: usize,
    in_flight_bytes: usize,
    /// Snapshots not yet confirmed (sent or waiting): drain waits for zero.
    pub(super) unconfirmed: usize,
}

/// Can this node serve a request for the room now?
enum Ownership {
    Ready,
    /// The room's state is awaited; the request must be held.
    Deferred,
    /// Not this node's; `Some`: it was handed to that node.
    NotOwner(Option<NodeId>),
    /// The room does not exist and this router is at its room limit: not created.
    Full,
}

impl OwnedRoom {
    fn fresh(me: &NodeId, now_us: u64) -> OwnedRoom {
        OwnedRoom {
            epoch: Epoch::fresh(me, now_us / 1000),
            seq: 0,
            moves: 0,
            history: History::default(),
            interested: Vec::new(),
            committed: 0,
            tail: VecDeque::new(),
            waiters: Vec::new(),
            replicas: Vec::new(),
            keys: Keys::default(),
            hold_until: 0,
            held: VecDeque::new(),
            confirms: Vec::new(),
            presence: PresenceSet::default(),
        }
    }

    /// The room from a handed-over state or a promoted copy: entries after its commit point
    /// form the tail, committed (through this node's replicas) before reads are served.
    pub(super) fn from_state(s: RoomState, limits: &super::HistoryLimits) -> OwnedRoom {
        let mut history = History::default();
        for e in s.history {
            history.push(e, limits);
        }
        let committed = s.committed.min(s.seq);
        let tail: VecDeque<HistEntry> = history.after(committed).cloned().collect();
        OwnedRoom {
            epoch: s.epoch,
            seq: s.seq,
            moves: s.moves,
            history,
            interested: s.interested,
            committed,
            tail,
            waiters: s.waiters,
            replicas: Vec::new(),
            keys: Keys::from_vec(s.keys),
            hold_until: s.seq,
            held: VecDeque::new(),
            confirms: Vec::new(),
            presence: s
                .presence
                .into_iter()
                .map(|e| (e.conn.clone(), e))
                .collect(),
        }
    }

    /// The state to hand to the next owner, and the reads held here (the caller refuses them
    /// with a hint so that they follow the room).
    fn into_state(self) -> (RoomState, VecDeque<(NodeId, PeerMsg)>) {
        let state = RoomState {
            epoch: self.epoch,
            seq: self.seq,
            // Leaving: one more move.
            moves: self.moves + 1,
            history: self.history.drain(),
            interested: self.interested,
            committed: self.committed,
            keys: self.keys.to_vec(),
            waiters: self.waiters,
            presence: self.presence.into_values().collect(),
        };
        (state, self.held)
    }
}

impl<H: Clone> Router<H> {
    /// Whether this node can serve a request for `room` now; starts looking for a previous
    /// owner's state when it has none.
    fn ownership(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) -> Ownership {
        if self.owned.contains_key(room) {
            return Ownership::Ready;
        }
        if self.pending_owner.contains_key(room) {
            return Ownership::Deferred;
        }
        if let Some(m) = self.moved.get(room) {
            if m.state.is_some() || m.until_us > self.now_us {
                return Ownership::NotOwner(Some(m.to.clone()));
            }
            self.moved.remove(room);
        }
        if self.owner_of(room) != self.me {
            return Ownership::NotOwner(None);
        }
        // This node replicated the room for an owner that is gone: its copy holds every
        // committed message. (A live owner hands the room over itself: ask it, below.)
        if self.orphan_copy(room) && self.promote(room, out) {
            return Ownership::Ready;
        }
        let candidates = self.previous_owners();
        if candidates.is_empty() {
            if self.promote(room, out) {
                return Ownership::Ready;
            }
            if self.at_room_limit() {
                return Ownership::Full;
            }
            self.stats.fresh_epochs += 1;
            let fresh = OwnedRoom::fresh(&self.me, self.now_us);
            self.install_owned(room.clone(), fresh, out);
            return Ownership::Ready;
        }
        // Asked even at the room limit: a previous owner may hold the room (then it is not
        // new); whether to create it is decided when every answer is in (`resolve_pending`).
        self.ask_for_state(room, candidates, out);
        Ownership::Deferred
    }

    /// True when this router may not create another room: the rooms it owns and those whose
    /// state it is looking for reach its share of `max_rooms`.
    fn at_room_limit(&self) -> bool {
        self.owned.len() + self.pending_owner.len() >= self.cfg.max_rooms
    }

    /// Asks `candidates` for `room`'s state and holds requests for it until they answered.
    fn ask_for_state(&mut self, room: &RoomId, candidates: Vec<NodeId>, out: &mut Vec<Action<H>>) {
        for c in &candidates {
            self.send(
                c.clone(),
                PeerMsg::HandoffQuery(HandoffQuery { room: room.clone() }),
                out,
            );
        }
        // This node's own copy is one answer; a live owner's state (further along) wins.
        let found = self.take_copy(room);
        // Counted as under-replicated until the state came (`under_replicated`).
        self.replication_changed = true;
        self.pending_owner.insert(
            room.clone(),
            PendingOwnership {
                waiting: candidates,
                moving: Vec::new(),
                deadline_us: self.now_us + self.handoff_wait_us(),
                found,
                confirms: Vec::new(),
                requeried: false,
                queued: VecDeque::new(),
            },
        );
    }

    /// Takes over `room`, which this node owns in its view and which a live node is known to
    /// hold (a copy stranded by its owner's restart, here or at `holder`): asks every other
    /// live node for the furthest state, however long ago the view changed.
    pub(super) fn take_over(
        &mut self,
        room: &RoomId,
        holder: Option<&NodeId>,
        out: &mut Vec<Action<H>>,
    ) {
        if self.owned.contains_key(room)
            || self.pending_owner.contains_key(room)
            || self.moved.get(room).is_some_and(|m| m.state.is_some())
        {
            return;
        }
        let mut candidates: Vec<NodeId> = self
            .live
            .iter()
            .filter(|n| **n != self.me)
            .cloned()
            .collect();
        if let Some(h) = holder
            && *h != self.me
            && !candidates.contains(h)
        {
            candidates.push(h.clone());
        }
        if candidates.is_empty() {
            self.promote(room, out);
            return;
        }
        self.ask_for_state(room, candidates, out);
    }

    /// A replica offers a room whose owner restarted (`HandoffOffer`).
    pub(super) fn on_handoff_offer(
        &mut self,
        from: NodeId,
        m: HandoffOffer,
        out: &mut Vec<Action<H>>,
    ) {
        if !self.has_quorum() {
            return;
        }
        let HandoffOffer { room, epoch, seq } = m;
        if let Some(r) = self.owned.get(&room) {
            if r.epoch == epoch && r.seq < seq {
                // The offered copy is further along: fetch it (same epoch, longer, wins).
                self.send(from, PeerMsg::HandoffQuery(HandoffQuery { room }), out);
                return;
            }
            if r.epoch != epoch {
                self.stats.handoff_conflicts += 1;
                tracing::warn!(%room, from = %from, "a replica offered a room already in use here in another epoch; kept the local state");
            }
            // Confirmed once this node's replicas hold the room.
            self.confirm_handoff(room, from, epoch, seq, out);
            return;
        }
        if let Some(p) = self.pending_owner.get_mut(&room) {
            if !p.waiting.contains(&from) {
                p.waiting.push(from.clone());
                self.send(from, PeerMsg::HandoffQuery(HandoffQuery { room }), out);
            }
            return;
        }
        if self.owner_of(&room) == self.me {
            self.take_over(&room, Some(&from), out);
        }
    }

    fn handoff_wait_us(&self) -> u64 {
        if self.cfg.replicas > 0 {
            REPLICATED_HANDOFF_WAIT_US
        } else {
            HANDOFF_WAIT_US
        }
    }

    /// Live nodes that may hold a room's state: every other live node (draining ones too),
    /// only shortly after a view change; otherwise a room without state here is new. Asking
    /// all, not just the owners this node's view implies, finds the state wherever views that
    /// disagreed for a moment put it (a restarted node that has not yet seen every member
    /// would otherwise ask the wrong one and open a new epoch beside the real one).
    fn previous_owners(&self) -> Vec<NodeId> {
        if self.now_us.saturating_sub(self.view_changed_us) > HANDOFF_WINDOW_US {
            return Vec::new();
        }
        self.live
            .iter()
            .filter(|n| **n != self.me)
            .cloned()
            .collect()
    }

    /// Holds `msg` until the room's state is known, or refuses it when too many wait.
    fn defer(&mut self, from: NodeId, msg: PeerMsg, out: &mut Vec<Action<H>>) {
        let room = msg.room().clone();
        if let Some(p) = self.pending_owner.get_mut(&room)
            && p.queued.len() < MAX_DEFERRED
        {
            p.queued.push_back((from, msg));
            return;
        }
        self.refuse_msg(from, &msg, PeerError::Unavailable, None, out);
    }

    /// Answers a request with `Refused`; messages that expect no answer (no token) are
    /// dropped. True when a refusal was sent.
    pub(super) fn refuse_msg(
        &mut self,
        to: NodeId,
        msg: &PeerMsg,
        error: PeerError,
        owner: Option<NodeId>,
        out: &mut Vec<Action<H>>,
    ) -> bool {
        let token = match msg {
            PeerMsg::Subscribe(Subscribe { token, .. })
            | PeerMsg::Publish(Publish { token, .. })
            | PeerMsg::HistoryReq(HistoryReq { token, .. })
            | PeerMsg::PresenceReq(super::message::PresenceReq { token, .. }) => *token,
            _ => return false,
        };
        self.send(
            to,
            PeerMsg::Refused(Refused {
                room: msg.room().clone(),
                token,
                error,
                owner,
            }),
            out,
        );
        true
    }

    /// Routes an owner-bound request: served now, held, or refused.
    pub(super) fn owner_gate(
        &mut self,
        from: &NodeId,
        msg: &PeerMsg,
        out: &mut Vec<Action<H>>,
    ) -> bool {
        if self.fenced(from, msg, out) {
            return false;
        }
        match self.ownership(msg.room(), out) {
            Ownership::Ready => true,
            Ownership::Deferred => {
                self.defer(from.clone(), msg.clone(), out);
                false
            }
            Ownership::NotOwner(hint) => {
                self.refuse_msg(from.clone(), msg, PeerError::NotOwner, hint, out);
                false
            }
            Ownership::Full => {
                self.refuse_room(from.clone(), msg, out);
                false
            }
        }
    }

    /// Refuses a request for a room this router did not create because it is at its room
    /// limit (counted once per request that gets an answer).
    fn refuse_room(&mut self, from: NodeId, msg: &PeerMsg, out: &mut Vec<Action<H>>) {
        if self.refuse_msg(from, msg, PeerError::RoomLimit, None, out) {
            self.stats.rooms_refused += 1;
        }
    }

    /// A read (`Subscribe`, `HistoryReq`) that may be served now, given back; `None` when it
    /// was refused, deferred (the room's state is on its way) or held until the owner's
    /// uncommitted tail is committed (reads see committed entries only).
    fn gate_read(
        &mut self,
        from: &NodeId,
        msg: PeerMsg,
        out: &mut Vec<Action<H>>,
    ) -> Option<PeerMsg> {
        if !self.owner_gate(from, &msg, out) {
            return None;
        }
        let r = self.owned.get_mut(msg.room())?;
        if r.committed < r.hold_until {
            r.held.push_back((from.clone(), msg));
            return None;
        }
        Some(msg)
    }

    /// Registers `from`'s interest and answers with the room's committed position and, with
    /// `since`, the history after it. `msg` is a `PeerMsg::Subscribe`, kept whole so that it
    /// can be held or refused as it came.
    pub(super) fn owner_subscribe(&mut self, from: NodeId, msg: PeerMsg, out: &mut Vec<Action<H>>) {
        let Some(PeerMsg::Subscribe(Subscribe {
            room,
            token,
            since,
            epoch,
        })) = self.gate_read(&from, msg, out)
        else {
            return;
        };
        let Some(r) = self.owned.get_mut(&room) else {
            return;
        };
        if !r.interested.contains(&from) {
            r.interested.push(from.clone());
        }
        let (history, recovered) = match since {
            None => (Vec::new(), true),
            Some(since) => {
                // A `since` from another epoch means nothing here: offer the whole epoch.
                let same_epoch = epoch.as_ref().is_none_or(|e| *e == r.epoch);
                let since = if same_epoch { since } else { 0 };
                let s = r.history.since(since, r.committed, usize::MAX);
                (s.entries, s.recovered && same_epoch)
            }
        };
        let msg = PeerMsg::SubscribeAck(SubscribeAck {
            room,
            token,
            epoch: r.epoch.clone(),
            seq: r.committed,
            history,
            recovered,
        });
        self.send(from, msg, out);
    }

    pub(super) fn owner_unsubscribe(
        &mut self,
        from: &NodeId,
        room: &RoomId,
        out: &mut Vec<Action<H>>,
    ) {
        if let Some(r) = self.owned.get_mut(room) {
            r.interested.retain(|n| n != from);
        }
        // No subscriber left there: none of its connections is present either.
        self.prune_presence(room, std::slice::from_ref(from), out);
        if let Some(p) = self.pending_owner.get_mut(room) {
            // Keep the order of this node's requests: an unsubscribe after a held subscribe.
            p.queued.push_back((
                from.clone(),
                PeerMsg::Unsubscribe(Unsubscribe { room: room.clone() }),
            ));
        }
    }

    /// Sequences a publish (or answers a retry of one by its key): the entry goes to the
    /// history, the tail and every replica; its event and acknowledgement go out when it is
    /// committed (at once without replicas).
    pub(super) fn owner_publish(&mut self, from: NodeId, msg: PeerMsg, out: &mut Vec<Action<H>>) {
        let now_us = self.now_us;
        let limits = self.cfg.history;
        if !self.owner_gate(&from, &msg, out) {
            return;
        }
        let PeerMsg::Publish(Publish {
            room,
            token,
            from: conn,
            user,
            data,
            key,
        }) = msg
        else {
            return;
        };
        let Some(r) = self.owned.get_mut(&room) else {
            return;
        };
        if let Some(seq) = key.as_deref().and_then(|k| r.keys.get(k)) {
            // A retry: the original seq, once it is committed.
            self.stats.duplicate_publishes += 1;
            if seq <= r.committed {
                let epoch = r.epoch.clone();
                self.send(
                    from,
                    PeerMsg::PublishAck(PublishAck {
                        room,
                        token,
                        seq,
                        epoch,
                    }),
                    out,
                );
            } else {
                r.waiters.push((seq, from, token));
            }
            return;
        }
        r.seq += 1;
        let seq = r.seq;
        let frame = encode::event(
            &room,
            seq,
            &r.epoch,
            &data,
            conn.as_str(),
            user.as_ref(),
            now_us / 1000,
        );
        let entry = HistEntry {
            seq,
            accepted_us: now_us,
            frame,
        };
        r.history.push(entry.clone(), &limits);
        if let Some(k) = &key {
            r.keys.insert(k.clone(), seq);
        }
        r.waiters.push((seq, from, token));
        self.replicate(&room, &entry, key, out);
        if let Some(r) = self.owned.get_mut(&room) {
            r.tail.push_back(entry);
        }
        self.advance_commit(&room, out);
    }

    /// Answers a history read (`msg` is a `PeerMsg::HistoryReq`) from committed entries.
    pub(super) fn owner_history(&mut self, from: NodeId, msg: PeerMsg, out: &mut Vec<Action<H>>) {
        let Some(PeerMsg::HistoryReq(HistoryReq {
            room,
            token,
            since,
            limit,
        })) = self.gate_read(&from, msg, out)
        else {
            return;
        };
        let Some(r) = self.owned.get_mut(&room) else {
            return;
        };
        let s = r.history.since(
            since,
            r.committed,
            usize::try_from(limit).unwrap_or(usize::MAX),
        );
        let msg = PeerMsg::HistoryResp(HistoryResp {
            room,
            token,
            epoch: r.epoch.clone(),
            seq: r.committed,
            history: s.entries,
            recovered: s.recovered,
        });
        self.send(from, msg, out);
    }

    /// A node about to own `room` asks for its state: hand it over at once if this node holds
    /// it (owned, or a snapshot not yet confirmed), else say it has none.
    pub(super) fn on_handoff_query(
        &mut self,
        from: NodeId,
        q: HandoffQuery,
        out: &mut Vec<Action<H>>,
    ) {
        let HandoffQuery { room } = q;
        if let Some(r) = self.owned.remove(&room) {
            self.give_up(room.clone(), from, r, out);
            self.send_snapshot_now(&room, out);
            return;
        }
        let retarget = match self.moved.get(&room) {
            Some(m) if m.state.is_some() => {
                if m.to == from {
                    self.send_snapshot_now(&room, out);
                    return;
                }
                // Views disagree about who owns the room. A snapshot still waiting here goes
                // to the asker when this node's view agrees with it; one already on its way
                // elsewhere stays there (two copies could both be sequenced).
                !m.sent && self.owner_of(&room) == from
            }
            _ => false,
        };
        if retarget {
            if let Some(m) = self.moved.get_mut(&room) {
                m.to = from;
            }
            self.send_snapshot_now(&room, out);
            return;
        }
        if let Some(m) = self.moved.get(&room)
            && m.state.is_some()
        {
            // On its way elsewhere: the asker must not conclude that nobody has it.
            let to = m.to.clone();
            self.send(
                from,
                PeerMsg::HandoffMoving(HandoffMoving { room, to }),
                out,
            );
            return;
        }
        // A replica's copy holds every committed message: the asker may continue from it.
        let state = self.copy_state(&room);
        self.send(from, PeerMsg::Handoff(Handoff { room, state }), out);
    }

    /// A queried node handed the room to `to`, unconfirmed: wait for `to` instead.
    pub(super) fn on_handoff_moving(
        &mut self,
        from: NodeId,
        m: HandoffMoving,
        out: &mut Vec<Action<H>>,
    ) {
        let HandoffMoving { room, to } = m;
        let me = self.me.clone();
        let deadline = self.now_us + self.handoff_wait_us();
        let Some(p) = self.pending_owner.get_mut(&room) else {
            return;
        };
        p.waiting.retain(|n| *n != from);
        // The state exists: give it time to land where it is going.
        p.deadline_us = p.deadline_us.max(deadline);
        if to != me {
            if !p.moving.contains(&to) {
                p.moving.push(to.clone());
            }
            if !p.waiting.contains(&to) {
                p.waiting.push(to.clone());
                self.send(
                    to,
                    PeerMsg::HandoffQuery(HandoffQuery { room: room.clone() }),
                    out,
                );
            }
        }
        if self
            .pending_owner
            .get(&room)
            .is_some_and(|p| p.waiting.is_empty())
        {
            self.resolve_pending(&room, out);
        }
    }

    /// Hands an owned room (already removed from `owned`) to `to`; the reads it held are
    /// refused with a hint naming `to`, where their senders re-send them.
    fn give_up(&mut self, room: RoomId, to: NodeId, r: OwnedRoom, out: &mut Vec<Action<H>>) {
        // The next owner syncs its own replicas; the others forget their copies.
        for p in &r.replicas {
            if p.node != to {
                let drop = super::message::ReplicaDrop { room: room.clone() };
                self.send(p.node.clone(), PeerMsg::ReplicaDrop(drop), out);
            }
        }
        // Confirmations still owed: the snapshot kept below answers for those states now.
        for (node, epoch, seq) in &r.confirms {
            let ack = PeerMsg::HandoffAck(HandoffAck {
                room: room.clone(),
                epoch: epoch.clone(),
                seq: *seq,
            });
            self.send(node.clone(), ack, out);
        }
        let (state, held) = r.into_state();
        for (from, msg) in held {
            self.refuse_msg(from, &msg, PeerError::NotOwner, Some(to.clone()), out);
        }
        self.hand_off(room, to, state);
    }

    /// Stops owning `room`: keeps its snapshot for `to` until confirmed and queues it for the
    /// handoff window (the caller removed it from `owned` in the same step, so nothing is
    /// sequenced after the snapshot).
    fn hand_off(&mut self, room: RoomId, to: NodeId, state: RoomState) {
        let bytes = PeerMsg::Handoff(Handoff {
            room: room.clone(),
            state: None,
        })
        .approx_size()
            + state
                .history
                .iter()
                .map(|e| e.frame.len() + 24)
                .sum::<usize>();
        if let Some(old) = self.moved.remove(&room) {
            self.forget_snapshot(&old);
        }
        self.moved.insert(
            room.clone(),
            Moved {
                to,
                until_us: self.now_us + MOVED_TTL_US,
                epoch: state.epoch.clone(),
                moves: state.moves,
                state: Some(state),
                sent: false,
                bytes,
            },
        );
        self.handoffs.unconfirmed += 1;
        self.handoffs.waiting.push_back(room);
    }

    /// Takes a snapshot's share of the window and the unconfirmed count back.
    fn forget_snapshot(&mut self, m: &Moved) {
        if m.state.is_some() {
            self.handoffs.unconfirmed -= 1;
            if m.sent {
                self.handoffs.in_flight -= 1;
                self.handoffs.in_flight_bytes -= m.bytes;
            }
        }
    }

    /// Sends `room`'s snapshot now, outside the window's order (someone is waiting for it).
    /// A snapshot already sent is sent again: the receiver confirms duplicates.
    fn send_snapshot_now(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let Some(m) = self.moved.get_mut(room) else {
            return;
        };
        let Some(state) = m.state.clone() else {
            return;
        };
        if !m.sent {
            m.sent = true;
            self.handoffs.in_flight += 1;
            self.handoffs.in_flight_bytes += m.bytes;
        }
        let to = m.to.clone();
        self.stats.handoffs_sent += 1;
        self.send(
            to,
            PeerMsg::Handoff(Handoff {
                room: room.clone(),
                state: Some(state),
            }),
            out,
        );
    }

    /// Sends waiting snapshots while the window has room (at least one when it is empty).
    pub(super) fn pump_handoffs(&mut self, out: &mut Vec<Action<H>>) {
        while self.handoffs.in_flight < HANDOFF_WINDOW
            && (self.handoffs.in_flight == 0
                || self.handoffs.in_flight_bytes < HANDOFF_WINDOW_BYTES)
        {
            let Some(room) = self.handoffs.waiting.pop_front() else {
                return;
            };
            // Entries confirmed, re-sent on demand or taken back meanwhile are skipped.
            if self
                .moved
                .get(&room)
                .is_some_and(|m| m.state.is_some() && !m.sent)
            {
                self.send_snapshot_now(&room, out);
            }
        }
    }

    /// The new owner holds the state: forget the snapshot, free its window share.
    pub(super) fn on_handoff_ack(
        &mut self,
        from: NodeId,
        ack: HandoffAck,
        out: &mut Vec<Action<H>>,
    ) {
        let HandoffAck { room, epoch, seq } = ack;
        self.stranded_copy_taken(&room, &epoch, seq);
        let now = self.now_us;
        if let Some(m) = self.moved.get_mut(&room)
            && m.to == from
            && m.state.is_some()
        {
            m.state = None;
            m.until_us = now + MOVED_TTL_US;
            let sent = std::mem::take(&mut m.sent);
            self.handoffs.unconfirmed -= 1;
            if sent {
                self.handoffs.in_flight -= 1;
                self.handoffs.in_flight_bytes -= m.bytes;
            }
            self.stats.handoffs_confirmed += 1;
        }
        self.pump_handoffs(out);
    }

    /// A previous owner's state (or its answer that it has none).
    pub(super) fn on_handoff(&mut self, from: NodeId, h: Handoff, out: &mut Vec<Action<H>>) {
        let Handoff { room, state } = h;
        if !self.has_quorum() {
            // Fenced: take nothing, confirm nothing (the sender keeps its snapshot and sends it
            // again after a link reset or to the room's next owner).
            return;
        }
        let ack = state.as_ref().map(|s| (s.epoch.clone(), s.seq));
        self.take_handoff(from.clone(), room.clone(), state, out);
        if let Some((epoch, seq)) = ack {
            self.confirm_handoff(room, from, epoch, seq, out);
        }
    }

    /// Confirms a received state to its sender once this node holds it durably: at once when
    /// it did not take it (or holds it in a snapshot of its own), else when every replica of
    /// the room has it — the sender forgets its snapshot on the confirmation, and this node
    /// dying before its replicas synced must not lose the room.
    fn confirm_handoff(
        &mut self,
        room: RoomId,
        to: NodeId,
        epoch: Epoch,
        seq: u64,
        out: &mut Vec<Action<H>>,
    ) {
        if let Some(r) = self.owned.get_mut(&room) {
            r.confirms.push((to, epoch, seq));
            self.flush_confirms(&room, out);
            return;
        }
        if let Some(p) = self.pending_owner.get_mut(&room) {
            p.confirms.push((to, epoch, seq));
            return;
        }
        self.send(
            to,
            PeerMsg::HandoffAck(HandoffAck { room, epoch, seq }),
            out,
        );
    }

    /// Sends the confirmations waiting for `room`'s replicas, once they are synced.
    pub(super) fn flush_confirms(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let Some(r) = self.owned.get_mut(room) else {
            return;
        };
        if r.confirms.is_empty() || r.replicas.iter().any(|p| !p.leaving && p.syncing) {
            return;
        }
        for (to, epoch, seq) in std::mem::take(&mut r.confirms) {
            let room = room.clone();
            self.send(
                to,
                PeerMsg::HandoffAck(HandoffAck { room, epoch, seq }),
                out,
            );
        }
    }

    fn take_handoff(
        &mut self,
        from: NodeId,
        room: RoomId,
        state: Option<RoomState>,
        out: &mut Vec<Action<H>>,
    ) {
        if let Some(p) = self.pending_owner.get_mut(&room) {
            if state.is_none() && p.moving.contains(&from) {
                // The state is still on its way there: ask again on the next tick.
                return;
            }
            p.waiting.retain(|n| *n != from);
            if let Some(s) = state {
                // Two holders (views disagreed for a while, or the owner and its replica):
                // keep the one further along, with every interested node either knew.
                if let Some(f) = &p.found
                    && f.epoch != s.epoch
                {
                    self.stats.handoff_conflicts += 1;
                }
                p.found = Some(match p.found.take() {
                    Some(f) => further_along(f, s),
                    None => s,
                });
            }
            if p.waiting.is_empty() {
                self.resolve_pending(&room, out);
            }
            return;
        }
        let Some(s) = state else { return };
        // The room comes back (views flapped: its receiver hands it back, maybe before its
        // confirmation reached us) or a newer state supersedes our snapshot. Only an older copy
        // of our own snapshot — or the same one from a third node — is stale.
        if let Some(m) = self.moved.get(&room) {
            // A room that went on and came back (over any number of nodes) has moved more.
            let stale = m.epoch == s.epoch && s.moves <= m.moves;
            if stale {
                return;
            }
            if let Some(m) = self.moved.remove(&room) {
                self.forget_snapshot(&m);
            }
        }
        let limits = self.cfg.history;
        match self.owned.get_mut(&room) {
            None => {
                self.install_owned(room, OwnedRoom::from_state(s, &limits), out);
            }
            // The same state again (a re-send after a link reset), or an older one of it. What
            // it knows still counts when the room here came from a replica's copy (installed
            // after the wait for the owner ran out), which knows no interested nodes and has
            // fewer moves: the owner that let the room go now counts it one move further.
            Some(r) if r.epoch == s.epoch && r.seq >= s.seq => {
                r.moves = r.moves.max(s.moves);
                for n in s.interested {
                    if !r.interested.contains(&n) {
                        r.interested.push(n);
                    }
                }
            }
            // A room this node created but has not used yet, or a shorter copy of the same
            // epoch, yields to the handed state.
            Some(r) if (r.seq == 0 && r.history.is_empty()) || r.epoch == s.epoch => {
                let mut interested = std::mem::take(&mut r.interested);
                let held = std::mem::take(&mut r.held);
                let mut new = OwnedRoom::from_state(s, &limits);
                interested.retain(|n| !new.interested.contains(n));
                new.interested.extend(interested);
                self.install_owned(room, new, out);
                for (from, msg) in held {
                    self.on_owner_msg(from, msg, out);
                }
            }
            Some(_) => {
                // Both sides sequenced the room in different epochs (possible only when views
                // disagreed around a failure): neither can be renumbered, keep the local one.
                self.stats.handoff_conflicts += 1;
                tracing::warn!(%room, from = %from, "a handoff arrived for a room already in use here in another epoch; kept the local state");
            }
        }
    }

    /// Installs the awaited state (or a fresh epoch) and serves the held requests in order.
    fn resolve_pending(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let Some(p) = self.pending_owner.remove(room) else {
            return;
        };
        let limits = self.cfg.history;
        let owned = match p.found {
            Some(s) => OwnedRoom::from_state(s, &limits),
            None if self.at_room_limit() => {
                // Nobody had it: the room would be new, and this router is full.
                for (to, epoch, seq) in p.confirms {
                    let ack = HandoffAck {
                        room: room.clone(),
                        epoch,
                        seq,
                    };
                    self.send(to, PeerMsg::HandoffAck(ack), out);
                }
                for (from, msg) in p.queued {
                    self.refuse_room(from, &msg, out);
                }
                return;
            }
            None => {
                self.stats.fresh_epochs += 1;
                tracing::info!(
                    %room,
                    unanswered = ?p.waiting,
                    moving = ?p.moving,
                    "no live node had the room's state: starting a new epoch"
                );
                OwnedRoom::fresh(&self.me, self.now_us)
            }
        };
        self.install_owned(room.clone(), owned, out);
        if let Some(r) = self.owned.get_mut(room) {
            r.confirms.extend(p.confirms);
        }
        self.flush_confirms(room, out);
        for (from, msg) in p.queued {
            self.on_owner_msg(from, msg, out);
        }
    }

    /// Dispatches an owner-bound request (from a peer, or held until the room's state came).
    pub(super) fn on_owner_msg(&mut self, from: NodeId, msg: PeerMsg, out: &mut Vec<Action<H>>) {
        match msg {
            PeerMsg::Subscribe(_) => self.owner_subscribe(from, msg, out),
            PeerMsg::Unsubscribe(Unsubscribe { room }) => self.owner_unsubscribe(&from, &room, out),
            PeerMsg::PresenceJoin(_)
            | PeerMsg::PresenceSync(_)
            | PeerMsg::PresenceLeave(_)
            | PeerMsg::PresenceReq(_) => self.owner_presence(from, msg, out),
            PeerMsg::Publish(_) => self.owner_publish(from, msg, out),
            PeerMsg::HistoryReq(_) => self.owner_history(from, msg, out),
            _ => {}
        }
    }

    /// After a view change: forget interest of departed nodes, hand rooms this node no longer
    /// owns to their new owners, re-aim snapshots whose receiver left, and stop waiting for
    /// departed previous owners.
    pub(super) fn members_changed_owner_side(
        &mut self,
        departed: &[NodeId],
        out: &mut Vec<Action<H>>,
    ) {
        let rooms: Vec<RoomId> = self.owned.keys().cloned().collect();
        for room in rooms {
            let owner = self.owner_of(&room);
            if let Some(r) = self.owned.get_mut(&room) {
                r.interested.retain(|n| !departed.contains(n));
            }
            if owner == self.me {
                continue;
            }
            if let Some(r) = self.owned.remove(&room) {
                self.give_up(room, owner, r, out);
            }
        }
        let orphans: Vec<RoomId> = self
            .moved
            .iter()
            .filter(|(_, m)| m.state.is_some() && !self.is_member(&m.to))
            .map(|(r, _)| r.clone())
            .collect();
        for room in orphans {
            self.retarget_snapshot(&room, out);
        }
        self.pump_handoffs(out);
        let pending: Vec<RoomId> = self.pending_owner.keys().cloned().collect();
        for room in pending {
            let owner = self.owner_of(&room);
            if owner != self.me {
                // Not ours after all. A state that already came here (and was confirmed to its
                // sender, who forgot it) goes on to the owner; what was held is refused, naming
                // it (the senders retry there).
                if let Some(p) = self.pending_owner.remove(&room) {
                    let hint = p.found.is_some().then(|| owner.clone());
                    if let Some(mut state) = p.found {
                        // Passing it on is a move too.
                        state.moves += 1;
                        self.hand_off(room.clone(), owner, state);
                    }
                    for (from, msg) in p.queued {
                        self.refuse_msg(from, &msg, PeerError::NotOwner, hint.clone(), out);
                    }
                }
                continue;
            }
            let replicated = self.cfg.replicas > 0;
            let others: Vec<NodeId> = self
                .live
                .iter()
                .filter(|n| **n != self.me)
                .cloned()
                .collect();
            let mut ask_again = Vec::new();
            let done = match self.pending_owner.get_mut(&room) {
                Some(p) => {
                    let before = p.waiting.len();
                    p.waiting.retain(|n| !departed.contains(n));
                    if replicated && p.waiting.len() < before && p.found.is_none() && !p.requeried {
                        // A node that may have held the room died while we waited for it: its
                        // replica may have received the room after it answered "none". Ask
                        // everyone once more before concluding the room is lost.
                        p.requeried = true;
                        p.waiting = others.clone();
                        ask_again = others;
                    }
                    p.waiting.is_empty()
                }
                None => false,
            };
            for n in ask_again {
                self.send(
                    n,
                    PeerMsg::HandoffQuery(HandoffQuery { room: room.clone() }),
                    out,
                );
            }
            if done {
                self.resolve_pending(&room, out);
            }
        }
    }

    /// A snapshot's receiver left the cluster before it confirmed: send the snapshot to the
    /// room's owner in the current view, or take the room back if that is this node. (Had the
    /// receiver passed the room on before it died, that node's later state supersedes this
    /// one where they meet: same epoch, higher seq.)
    fn retarget_snapshot(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let Some(m) = self.moved.remove(room) else {
            return;
        };
        let owner = self.owner_of(room);
        self.forget_snapshot(&m);
        let Some(state) = m.state else { return };
        if owner == self.me {
            let limits = self.cfg.history;
            self.install_owned(room.clone(), OwnedRoom::from_state(state, &limits), out);
        } else {
            self.stats.handoffs_resent += 1;
            self.hand_off(room.clone(), owner, state);
        }
    }

    /// The link to `node` was reset: snapshots sent to it and not confirmed may be lost — or
    /// may have arrived and be in use there, their confirmation lost. So they are sent again
    /// to `node` itself, never elsewhere and never taken back: `node` confirms a copy it has,
    /// and two nodes can never sequence the same epoch from one snapshot.
    pub(super) fn peer_reset_owner_side(&mut self, node: &NodeId, out: &mut Vec<Action<H>>) {
        let rooms: Vec<RoomId> = self
            .moved
            .iter()
            .filter(|(_, m)| m.state.is_some() && m.sent && m.to == *node)
            .map(|(r, _)| r.clone())
            .collect();
        for room in rooms {
            if let Some(m) = self.moved.get_mut(&room) {
                m.sent = false;
                self.handoffs.in_flight -= 1;
                self.handoffs.in_flight_bytes -= m.bytes;
                self.handoffs.waiting.push_back(room);
                self.stats.handoffs_resent += 1;
            }
        }
        self.pump_handoffs(out);
        // A question about a room's state, or its answer, may have been lost with the link:
        // ask again rather than wait out the deadline and open a new epoch.
        let asks: Vec<RoomId> = self
            .pending_owner
            .iter()
            .filter(|(_, p)| p.waiting.contains(node))
            .map(|(r, _)| r.clone())
            .collect();
        for room in asks {
            self.send(
                node.clone(),
                PeerMsg::HandoffQuery(HandoffQuery { room }),
                out,
            );
        }
    }

    /// Expires history, drops rooms nobody follows whose history is gone, stops waiting for
    /// previous owners that did not answer, and forgets old `moved` marks.
    pub(super) fn tick_owned(&mut self, out: &mut Vec<Action<H>>) {
        let now = self.now_us;
        let limits = self.cfg.history;
        let mut drops: Vec<(NodeId, RoomId)> = Vec::new();
        self.owned.retain(|room, r| {
            r.history.expire(now, &limits);
            let keep = !(r.interested.is_empty()
                && r.history.is_empty()
                && r.tail.is_empty()
                && r.waiters.is_empty()
                && r.held.is_empty());
            if !keep {
                drops.extend(r.replicas.iter().map(|p| (p.node.clone(), room.clone())));
            }
            keep
        });
        for (node, room) in drops {
            self.send(
                node,
                PeerMsg::ReplicaDrop(super::message::ReplicaDrop { room }),
                out,
            );
        }
        self.tick_copies();
        self.tick_replication(out);
        let late: Vec<RoomId> = self
            .pending_owner
            .iter()
            .filter(|(_, p)| p.deadline_us <= now)
            .map(|(r, _)| r.clone())
            .collect();
        // Ask again where a room's state is on its way to — and, with replication, every node
        // that has not answered yet: a question or its answer can be lost without a reset
        // reaching this node (a peer that restarted dropped the link it answered on), and the
        // node that holds the room may die before the wait ends.
        let replicated = self.cfg.replicas > 0;
        let again: Vec<(NodeId, RoomId)> = self
            .pending_owner
            .iter()
            .filter(|(_, p)| p.deadline_us > now)
            .flat_map(|(r, p)| {
                p.waiting
                    .iter()
                    .filter(move |n| replicated || p.moving.contains(n))
                    .map(move |n| (n.clone(), r.clone()))
            })
            .collect();
        for (node, room) in again {
            self.send(node, PeerMsg::HandoffQuery(HandoffQuery { room }), out);
        }
        for room in late {
            tracing::debug!(%room, "previous owners did not answer; taking the room over as it is");
            self.resolve_pending(&room, out);
        }
        self.moved
            .retain(|_, m| m.state.is_some() || m.until_us > now);
    }
}

/// Of two states of one room found while looking for it, the one further along: the higher
/// seq, then the more moves. A live owner hands its room over with one more move than any
/// copy its replicas hold, so with equal seqs the room itself wins over a replica's copy —
/// which matters twice: a copy knows no interested nodes and no waiting publishers, and a copy
/// installed in place of the room would later be handed back to that owner with no more moves
/// than the room left it with, which the owner takes for a stale re-send of its own snapshot
/// and drops (then nobody holds the room). The interested nodes of both are kept: a node
/// registered with either must go on getting events (one that no longer follows the room
/// answers an event with `Unsubscribe`), and no member re-registers unless its view changes.
fn further_along(a: RoomState, b: RoomState) -> RoomState {
    let (mut keep, other) = if (b.seq, b.moves) > (a.seq, a.moves) {
        (b, a)
    } else {
        (a, b)
    };
    for n in other.interested {
        if !keep.interested.contains(&n) {
            keep.interested.push(n);
        }
    }
    keep
}

#[cfg(test)]
impl<H: Clone> Router<H> {
    pub(super) fn debug_owned(&self, room: &RoomId) -> String {
        let owned = self
            .owned
            .get(room)
            .map(|r| format!("owned {}/{} interested {:?}", r.epoch, r.seq, r.interested));
        let moved = self.moved.get(room).map(|m| {
            format!(
                "moved to {} snapshot {:?}",
                m.to,
                m.state.as_ref().map(|s| (s.epoch.clone(), s.seq))
            )
        });
        let pending = self
            .pending_owner
            .get(room)
            .map(|p| format!("pending {:?}", p.waiting));
        format!("{owned:?} {moved:?} {pending:?}")
    }
}
