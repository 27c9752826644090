//! Replication: a room's owner keeps copies of the room on its *replicas* — the next
//! `RouterConfig::replicas` eligible members in the room's rendezvous order — and a message is
//! *committed* (delivered to subscribers, acknowledged to its publisher) only when every
//! replica holds it.
//!
//! Why this shape. Ownership already follows membership (rendezvous hashing), so we need
//! Raft's *commit rule*, not its elections: the owner is the leader of its rooms, its replicas
//! are the followers, and the owner's commit point is the highest seq every replica
//! acknowledged (Kafka's high-watermark over the in-sync replicas). When an owner dies, the
//! rendezvous order makes its first replica the owner (removing the top node of a ranking
//! leaves the second on top): that replica holds every committed message, so it continues the
//! room **in the same epoch** at `seq + 1`, and subscribers resume with no gap. Its copy may
//! also hold a *tail* of messages sequenced but not committed (no subscriber saw them, no
//! publisher was told); like a new Raft leader, it commits that tail through its own replicas
//! before it serves a read (`hold_until`), so no reader can see a message that a later owner
//! might number differently. Two different messages never share an `(epoch, seq)`: a seq is
//! exposed only once every replica holds it, and the next owner is always one of them.
//!
//! Bringing a replica up to date is a state transfer: the owner sends its whole room
//! (`ReplicaSync`), then every later message (`Replicate`) on the same ordered link; a replica
//! that cannot apply a message (no copy, another owner or epoch, a gap after a link reset)
//! answers `ReplicaAck { ok: false }` and gets a fresh sync. A replica counts toward commit
//! only with what it acknowledged, so a new replica holds commits back until its sync landed.
//!
//! A room with fewer live members than owner + replicas keeps working with the replicas it has
//! (a one-node cluster commits at once) and is reported as under-replicated. Losing the owner
//! and every replica at once loses the room: its next owner starts a new epoch (counted in
//! `RouterStats::fresh_epochs`).
//!
//! Idempotent publish: the owner remembers the last [`KEY_WINDOW`] publish keys of each room
//! with the seq each got (replicated with the room); a publish whose key is known is answered
//! with that seq — at once if committed, else when it commits — instead of being sequenced
//! again.

use std::collections::{HashMap, VecDeque};

use bytestring::ByteString;

use super::history::History;
use super::message::{
    Event, HandoffOffer, PublishAck, ReplicaAck, ReplicaDrop, ReplicaSync, Replicate,
};
use super::owner::OwnedRoom;
use super::presence::PresenceSet;
use super::{Action, HistEntry, PeerMsg, RoomState, Router, hash};
use crate::ids::{Epoch, NodeId, RoomId};

/// Publish keys remembered per room (the idempotency window).
pub const KEY_WINDOW: usize = 1024;
/// A replica sync not acknowledged for this long is sent again.
const RESYNC_AFTER_US: u64 = 5_000_000;
/// How often a stranded copy is offered to the room's owner until it is taken.
const OFFER_EVERY_US: u64 = 1_000_000;

/// A room's recent publish keys and the seq each got, bounded to [`KEY_WINDOW`].
#[derive(Debug, Default)]
pub(super) struct Keys {
    order: VecDeque<ByteString>,
    seqs: HashMap<ByteString, u64>,
}

impl Keys {
    pub(super) fn get(&self, key: &str) -> Option<u64> {
        self.seqs.get(key).copied()
    }

    pub(super) fn insert(&mut self, key: ByteString, seq: u64) {
        if self.seqs.insert(key.clone(), seq).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > KEY_WINDOW {
            if let Some(k) = self.order.pop_front() {
                self.seqs.remove(&k);
            }
        }
    }

    pub(super) fn to_vec(&self) -> Vec<(ByteString, u64)> {
        self.order
            .iter()
            .filter_map(|k| self.seqs.get(k).map(|s| (k.clone(), *s)))
            .collect()
    }

    pub(super) fn from_vec(v: Vec<(ByteString, u64)>) -> Keys {
        let mut k = Keys::default();
        for (key, seq) in v {
            k.insert(key, seq);
        }
        k
    }
}

/// One replica of an owned room, as its owner sees it.
#[derive(Debug)]
pub(super) struct Progress {
    pub(super) node: NodeId,
    /// The highest seq of the owner's epoch the replica acknowledged holding.
    pub(super) acked: u64,
    /// A `ReplicaSync` is on its way and not acknowledged yet.
    pub(super) syncing: bool,
    /// When the last `ReplicaSync` went out (one unacknowledged for [`RESYNC_AFTER_US`] is
    /// sent again: its replica may have been fenced, or the message lost).
    pub(super) sync_at_us: u64,
    /// No longer in the view's replica set, kept (and counted toward commit) until every
    /// replica that replaces it is synced: a new replica is useless until then, and the
    /// owner dying in that window must not lose the only up-to-date copy.
    pub(super) leaving: bool,
}

/// This node's copy of a room another node owns.
pub(super) struct RoomCopy {
    /// The node whose `ReplicaSync` made this copy: only its `Replicate`s extend it.
    pub(super) owner: NodeId,
    pub(super) epoch: Epoch,
    seq: u64,
    committed: u64,
    moves: u64,
    history: History,
    keys: Keys,
    /// The room's presence set, as the owner's `ReplicaPresence` changes keep it.
    pub(super) presence: PresenceSet,
    /// The owner restarted (a new incarnation under its id) and so lost the room: this copy
    /// may be the only one. Offered to the room's owner (`HandoffOffer`) until it confirms it
    /// holds the room or syncs this node afresh; counted as under-replicated meanwhile.
    stranded: bool,
    /// When the next offer may go out.
    offer_at_us: u64,
}

/// A room as a replica holds it (no interest, no waiting publishers): what a sync sends and
/// what a copy hands over.
/// The parts of a room a replica holds, borrowed from an owned room or a copy.
struct Replicated<'a> {
    epoch: &'a Epoch,
    seq: u64,
    committed: u64,
    moves: u64,
    history: &'a History,
    keys: &'a Keys,
    presence: &'a PresenceSet,
}

impl Replicated<'_> {
    fn state(&self) -> RoomState {
        RoomState {
            epoch: self.epoch.clone(),
            seq: self.seq,
            moves: self.moves,
            history: self.history.to_vec(),
            interested: Vec::new(),
            committed: self.committed,
            keys: self.keys.to_vec(),
            waiters: Vec::new(),
            presence: self.presence.values().cloned().collect(),
        }
    }
}

impl RoomCopy {
    fn to_state(&self) -> RoomState {
        Replicated {
            epoch: &self.epoch,
            seq: self.seq,
            committed: self.committed,
            moves: self.moves,
            history: &self.history,
            keys: &self.keys,
            presence: &self.presence,
        }
        .state()
    }
}

impl OwnedRoom {
    fn sync_state(&self) -> RoomState {
        Replicated {
            epoch: &self.epoch,
            seq: self.seq,
            committed: self.committed,
            moves: self.moves,
            history: &self.history,
            keys: &self.keys,
            presence: &self.presence,
        }
        .state()
    }
}

impl<H: Clone> Router<H> {
    /// The replicas `room` should have now: the next eligible members after this node in the
    /// room's rendezvous order.
    fn replica_targets(&self, room: &RoomId) -> Vec<NodeId> {
        if self.cfg.replicas == 0 {
            return Vec::new();
        }
        hash::ranked(room, &self.members)
            .into_iter()
            .filter(|n| *n != self.me)
            .take(self.cfg.replicas)
            .collect()
    }

    /// Inserts a room this node now owns, gives it its replicas and commits what it can.
    pub(super) fn install_owned(
        &mut self,
        room: RoomId,
        mut r: OwnedRoom,
        out: &mut Vec<Action<H>>,
    ) {
        // A copy of the same epoch further along supersedes the state being installed (a
        // snapshot this node handed away, taken back after its receiver died — the receiver
        // went on and replicated more to this node).
        if let Some(c) = self.copies.remove(&room)
            && c.epoch == r.epoch
            && c.seq > r.seq
        {
            let limits = self.cfg.history;
            let mut newer = OwnedRoom::from_state(c.to_state(), &limits);
            newer.interested = std::mem::take(&mut r.interested);
            newer.waiters = std::mem::take(&mut r.waiters);
            newer.held = std::mem::take(&mut r.held);
            newer.confirms = std::mem::take(&mut r.confirms);
            r = newer;
        }
        self.owned.insert(room.clone(), r);
        self.refresh_replicas(&room, out);
        // Connections on nodes that are gone are out of the set it came with.
        self.prune_presence(&room, &[], out);
    }

    /// Brings `room`'s replica set in line with the view: new replicas get a sync, replicas
    /// no longer wanted are told to forget their copy; then commits what the set allows.
    pub(super) fn refresh_replicas(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let targets = self.replica_targets(room);
        self.replication_changed = true;
        let Some(r) = self.owned.get_mut(room) else {
            return;
        };
        let live = &self.live;
        let me = &self.me;
        // Replicas that left the cluster hold nothing useful; live ones outside the set leave
        // once their replacements are synced (`retire_leaving`).
        r.replicas.retain(|p| {
            targets.contains(&p.node) || live.is_empty() || live.binary_search(&p.node).is_ok()
        });
        for p in r.replicas.iter_mut() {
            p.leaving = !targets.contains(&p.node);
        }
        r.replicas.retain(|p| p.node != *me);
        let mut added = Vec::new();
        for t in targets {
            if !r.replicas.iter().any(|p| p.node == t) {
                r.replicas.push(Progress {
                    node: t.clone(),
                    acked: 0,
                    syncing: true,
                    sync_at_us: 0,
                    leaving: false,
                });
                added.push(t);
            }
        }
        for node in added {
            self.sync_replica(room, node, out);
        }
        self.retire_leaving(room, out);
        self.flush_confirms(room, out);
        self.advance_commit(room, out);
    }

    /// Once every replica of the view's set is synced, the replicas that left the set are
    /// told to forget their copies.
    fn retire_leaving(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let Some(r) = self.owned.get_mut(room) else {
            return;
        };
        if r.replicas.iter().any(|p| !p.leaving && p.syncing)
            || !r.replicas.iter().any(|p| p.leaving)
        {
            return;
        }
        let mut gone = Vec::new();
        r.replicas.retain(|p| {
            if p.leaving {
                gone.push(p.node.clone());
            }
            !p.leaving
        });
        for node in gone {
            self.send(
                node,
                PeerMsg::ReplicaDrop(ReplicaDrop { room: room.clone() }),
                out,
            );
        }
    }

    /// Sends `node` the whole room (it then counts toward commit from what it acknowledges).
    fn sync_replica(&mut self, room: &RoomId, node: NodeId, out: &mut Vec<Action<H>>) {
        let Some(r) = self.owned.get_mut(room) else {
            return;
        };
        let now = self.now_us;
        if let Some(p) = r.replicas.iter_mut().find(|p| p.node == node) {
            p.syncing = true;
            p.sync_at_us = now;
        }
        self.replication_changed = true;
        let state = r.sync_state();
        self.stats.replica_syncs += 1;
        self.send(
            node,
            PeerMsg::ReplicaSync(ReplicaSync {
                room: room.clone(),
                state,
            }),
            out,
        );
    }

    /// Sends a newly sequenced entry to every replica.
    pub(super) fn replicate(
        &mut self,
        room: &RoomId,
        entry: &HistEntry,
        key: Option<ByteString>,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.owned.get(room) else {
            return;
        };
        if r.replicas.is_empty() {
            return;
        }
        let msg = Replicate {
            room: room.clone(),
            epoch: r.epoch.clone(),
            seq: entry.seq,
            accepted_us: entry.accepted_us,
            frame: entry.frame.clone(),
            key,
            committed: r.committed,
        };
        let nodes: Vec<NodeId> = r.replicas.iter().map(|p| p.node.clone()).collect();
        for node in nodes {
            self.send(node, PeerMsg::Replicate(msg.clone()), out);
        }
    }

    /// Moves the commit point to what every replica holds: sends the newly committed events to
    /// the interested nodes, acknowledges their publishers, and serves the reads held for it.
    pub(super) fn advance_commit(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let Some(r) = self.owned.get_mut(room) else {
            return;
        };
        let target = r
            .replicas
            .iter()
            .map(|p| p.acked)
            .min()
            .unwrap_or(r.seq)
            .min(r.seq);
        if target <= r.committed && (r.held.is_empty() || r.committed < r.hold_until) {
            return;
        }
        r.committed = r.committed.max(target);
        let committed = r.committed;
        let epoch = r.epoch.clone();
        let mut events = Vec::new();
        while r.tail.front().is_some_and(|e| e.seq <= committed) {
            if let Some(e) = r.tail.pop_front() {
                events.push(e);
            }
        }
        let interested = r.interested.clone();
        let mut acks = Vec::new();
        r.waiters.retain(|(seq, node, token)| {
            if *seq <= committed {
                acks.push((node.clone(), *token, *seq));
                false
            } else {
                true
            }
        });
        let held = if committed >= r.hold_until {
            std::mem::take(&mut r.held)
        } else {
            VecDeque::new()
        };
        for e in events {
            for node in &interested {
                self.send(
                    node.clone(),
                    PeerMsg::Event(Event {
                        room: room.clone(),
                        epoch: epoch.clone(),
                        seq: e.seq,
                        accepted_us: e.accepted_us,
                        frame: e.frame.clone(),
                    }),
                    out,
                );
            }
        }
        for (node, token, seq) in acks {
            self.send(
                node,
                PeerMsg::PublishAck(PublishAck {
                    room: room.clone(),
                    token,
                    seq,
                    epoch: epoch.clone(),
                }),
                out,
            );
        }
        for (from, msg) in held {
            self.on_owner_msg(from, msg, out);
        }
    }

    /// A replica's answer: count what it holds, or sync it when it could not apply a message.
    pub(super) fn on_replica_ack(
        &mut self,
        from: NodeId,
        ack: ReplicaAck,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.owned.get_mut(&ack.room) else {
            return;
        };
        if ack.epoch != r.epoch {
            return;
        }
        let Some(p) = r.replicas.iter_mut().find(|p| p.node == from) else {
            return;
        };
        if ack.ok {
            p.acked = p.acked.max(ack.seq);
            let synced = std::mem::take(&mut p.syncing);
            if synced {
                self.replication_changed = true;
                self.retire_leaving(&ack.room, out);
                self.flush_confirms(&ack.room, out);
            }
            self.advance_commit(&ack.room, out);
        } else if !p.syncing {
            // Every message sent before the sync was refused too; their refusals arrive
            // before the sync's acknowledgement (ordered link) and find `syncing` set.
            self.sync_replica(&ack.room, from, out);
        }
    }

    /// The link to `node` was reset: replicate messages may be lost, so every room it
    /// replicates gets a fresh sync.
    pub(super) fn peer_reset_replication(&mut self, node: &NodeId, out: &mut Vec<Action<H>>) {
        let rooms: Vec<RoomId> = self
            .owned
            .iter()
            .filter(|(_, r)| r.replicas.iter().any(|p| p.node == *node))
            .map(|(room, _)| room.clone())
            .collect();
        for room in rooms {
            self.sync_replica(&room, node.clone(), out);
        }
    }

    // ---------------------------------------------------------------- the replica's side

    /// Acknowledges to the owner `to` what this node's copy of `room` holds. Sent at once,
    /// after any acknowledgement of the same room still held for the batch (so the owner sees
    /// them in order).
    fn ack(
        &mut self,
        to: NodeId,
        room: RoomId,
        epoch: Epoch,
        seq: u64,
        ok: bool,
        out: &mut Vec<Action<H>>,
    ) {
        if let Some((n, e, s)) = self.acks_due.remove(&room) {
            self.send_ack(n, room.clone(), e, s, out);
        }
        if ok {
            self.send_ack(to, room, epoch, seq, out);
        } else {
            self.send(
                to,
                PeerMsg::ReplicaAck(ReplicaAck {
                    room,
                    epoch,
                    seq,
                    ok,
                }),
                out,
            );
        }
    }

    fn send_ack(
        &mut self,
        to: NodeId,
        room: RoomId,
        epoch: Epoch,
        seq: u64,
        out: &mut Vec<Action<H>>,
    ) {
        let ack = ReplicaAck {
            room,
            epoch,
            seq,
            ok: true,
        };
        self.send(to, PeerMsg::ReplicaAck(ack), out);
    }

    /// Acknowledges an applied `Replicate`: held until the end of the step batch, where one
    /// acknowledgement per room covers every message of the batch (acknowledgements are
    /// cumulative: "the copy holds everything up to `seq`"). The owner then commits, and sends
    /// the events on, in groups rather than one by one.
    fn defer_ack(
        &mut self,
        to: NodeId,
        room: RoomId,
        epoch: Epoch,
        seq: u64,
        out: &mut Vec<Action<H>>,
    ) {
        match self.acks_due.get_mut(&room) {
            Some((n, e, s)) if *n == to && *e == epoch => *s = (*s).max(seq),
            _ => {
                if let Some((n, e, s)) = self.acks_due.insert(room.clone(), (to, epoch, seq)) {
                    self.send_ack(n, room, e, s, out);
                }
            }
        }
    }

    /// Sends the acknowledgements held for the step batch.
    pub(super) fn flush_acks(&mut self, out: &mut Vec<Action<H>>) {
        if self.acks_due.is_empty() {
            return;
        }
        let due: Vec<(RoomId, (NodeId, Epoch, u64))> = self.acks_due.drain().collect();
        for (room, (to, epoch, seq)) in due {
            self.send_ack(to, room, epoch, seq, out);
        }
    }

    /// Whether replication for `room` is ignored here: this node is fenced, or it owns the
    /// room itself (views disagree about who owns it: holding the sender's commits back is the
    /// safe answer until they agree, and one of the two then hands the room over).
    fn refuses_replication(&mut self, room: &RoomId) -> bool {
        if !self.has_quorum() {
            return true;
        }
        if self.owned.contains_key(room) {
            self.stats.replica_conflicts += 1;
            return true;
        }
        false
    }

    pub(super) fn on_replicate(&mut self, from: NodeId, m: Replicate, out: &mut Vec<Action<H>>) {
        if self.refuses_replication(&m.room) {
            return;
        }
        let limits = self.cfg.history;
        let applied = match self.copies.get_mut(&m.room) {
            Some(c) if c.owner == from && c.epoch == m.epoch && m.seq <= c.seq + 1 => {
                if m.seq == c.seq + 1 {
                    c.seq = m.seq;
                    c.history.push(
                        HistEntry {
                            seq: m.seq,
                            accepted_us: m.accepted_us,
                            frame: m.frame,
                        },
                        &limits,
                    );
                    if let Some(k) = m.key {
                        c.keys.insert(k, m.seq);
                    }
                }
                c.committed = c.committed.max(m.committed);
                Some(c.seq)
            }
            _ => None,
        };
        match applied {
            Some(seq) => self.defer_ack(from, m.room, m.epoch, seq, out),
            None => self.ack(from, m.room, m.epoch, 0, false, out),
        }
    }

    pub(super) fn on_replica_sync(
        &mut self,
        from: NodeId,
        m: ReplicaSync,
        out: &mut Vec<Action<H>>,
    ) {
        if self.refuses_replication(&m.room) {
            return;
        }
        let limits = self.cfg.history;
        let s = m.state;
        let mut history = History::default();
        for e in s.history {
            history.push(e, &limits);
        }
        let (epoch, seq) = (s.epoch.clone(), s.seq);
        self.replication_changed = true;
        self.copies.insert(
            m.room.clone(),
            RoomCopy {
                owner: from.clone(),
                epoch: s.epoch,
                seq: s.seq,
                committed: s.committed,
                moves: s.moves,
                history,
                keys: Keys::from_vec(s.keys),
                presence: s
                    .presence
                    .into_iter()
                    .map(|e| (e.conn.clone(), e))
                    .collect(),
                stranded: false,
                offer_at_us: 0,
            },
        );
        self.ack(from, m.room, epoch, seq, true, out);
    }

    pub(super) fn on_replica_drop(&mut self, from: &NodeId, m: ReplicaDrop) {
        if self.copies.get(&m.room).is_some_and(|c| c.owner == *from) {
            self.copies.remove(&m.room);
            self.replication_changed = true;
        }
    }

    /// The copy of `room` this node holds, as a state to hand to a node that asks for it.
    pub(super) fn copy_state(&self, room: &RoomId) -> Option<RoomState> {
        self.copies.get(room).map(RoomCopy::to_state)
    }

    /// Whether this node holds a copy of `room` whose owner left the cluster (the copy is then
    /// the room: this node continues it when it is the room's owner now).
    pub(super) fn orphan_copy(&self, room: &RoomId) -> bool {
        self.copies
            .get(room)
            .is_some_and(|c| c.owner == self.me || !self.is_member(&c.owner))
    }

    /// Takes this node's copy of `room` out (it is about to own the room).
    pub(super) fn take_copy(&mut self, room: &RoomId) -> Option<RoomState> {
        self.copies.remove(room).map(|c| c.to_state())
    }

    /// After a view change: a copy of a room this node now owns becomes the room (same epoch,
    /// its tail committed before reads are served); copies of rooms this node no longer
    /// replicates are dropped; every owned room's replica set follows the view.
    pub(super) fn members_changed_replica_side(&mut self, out: &mut Vec<Action<H>>) {
        self.replication_changed = true;
        let rooms: Vec<RoomId> = self.copies.keys().cloned().collect();
        for room in rooms {
            let owner_alive = self
                .copies
                .get(&room)
                .is_some_and(|c| self.is_member(&c.owner) && c.owner != self.me);
            if owner_alive {
                // The owner still answers for the room: it hands it over if this node is to
                // own it, and tells this node to drop its copy when it no longer needs it.
                continue;
            }
            let ranked = hash::ranked(&room, &self.members);
            let first = ranked.first().is_none_or(|n| *n == self.me);
            if first {
                if self.owned.contains_key(&room) {
                    self.copies.remove(&room);
                    continue;
                }
                if let Some(p) = self.pending_owner.get_mut(&room) {
                    // Already asking around: the copy is one answer.
                    if let Some(s) = self.copies.remove(&room).map(|c| c.to_state())
                        && p.found.as_ref().is_none_or(|f| s.seq > f.seq)
                    {
                        p.found = Some(s);
                    }
                    continue;
                }
                self.promote(&room, out);
                continue;
            }
            // The owner died and another node takes over: it syncs its replicas itself.
            let replica = ranked
                .iter()
                .skip(1)
                .take(self.cfg.replicas)
                .any(|n| *n == self.me);
            if !replica {
                self.copies.remove(&room);
            }
        }
        let owned: Vec<RoomId> = self.owned.keys().cloned().collect();
        for room in owned {
            // Publishers on nodes that left cannot be answered (their clients retry by key).
            let live = self.live.clone();
            if let Some(r) = self.owned.get_mut(&room) {
                r.waiters
                    .retain(|(_, n, _)| live.is_empty() || live.binary_search(n).is_ok());
            }
            self.refresh_replicas(&room, out);
        }
        self.offer_stranded(out);
    }

    /// Turns this node's copy of `room` into the owned room.
    pub(super) fn promote(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) -> bool {
        let Some(state) = self.take_copy(room) else {
            return false;
        };
        self.stats.promotions += 1;
        tracing::debug!(%room, epoch = %state.epoch, seq = state.seq, "promoting this node's replica copy: the room continues in its epoch");
        let limits = self.cfg.history;
        self.install_owned(room.clone(), OwnedRoom::from_state(state, &limits), out);
        true
    }

    /// Sends again the syncs that were not acknowledged in time.
    pub(super) fn tick_replication(&mut self, out: &mut Vec<Action<H>>) {
        let now = self.now_us;
        let late: Vec<(RoomId, NodeId)> = self
            .owned
            .iter()
            .flat_map(|(room, r)| {
                r.replicas
                    .iter()
                    .filter(|p| p.syncing && p.sync_at_us + RESYNC_AFTER_US <= now)
                    .map(move |p| (room.clone(), p.node.clone()))
            })
            .collect();
        for (room, node) in late {
            self.sync_replica(&room, node, out);
        }
        self.offer_stranded(out);
    }

    /// Expires the history of copies by age, like their owners do.
    pub(super) fn tick_copies(&mut self) {
        let now = self.now_us;
        let limits = self.cfg.history;
        for c in self.copies.values_mut() {
            c.history.expire(now, &limits);
        }
    }

    /// Whether replica sets, syncs or copies changed since the last call.
    pub fn take_replication_changed(&mut self) -> bool {
        std::mem::take(&mut self.replication_changed)
    }

    /// Copies of other nodes' rooms this node holds.
    pub fn replica_copies(&self) -> usize {
        self.copies.len()
    }

    /// Rooms with fewer up-to-date copies than configured, as far as this node knows: owned
    /// rooms short of synced replicas, rooms this node is taking over whose state has not come
    /// yet, and copies stranded by their owner's restart (the only copy, until taken).
    pub fn under_replicated(&self) -> usize {
        let owned = self
            .owned
            .values()
            .filter(|r| {
                r.replicas
                    .iter()
                    .filter(|p| !p.syncing && !p.leaving)
                    .count()
                    < self.cfg.replicas
            })
            .count();
        let stranded = self.copies.values().filter(|c| c.stranded).count();
        let taking_over = if self.cfg.replicas > 0 {
            self.pending_owner.len()
        } else {
            0
        };
        owned + stranded + taking_over
    }

    // ------------------------------------------------- copies stranded by a restart

    /// `node` restarted: the rooms it owned are gone there, and this node's copies of them may
    /// be the only ones left. Mark them and offer them to the rooms' owners.
    pub(super) fn peer_restarted_copies(&mut self, node: &NodeId, out: &mut Vec<Action<H>>) {
        let mut any = false;
        for c in self.copies.values_mut().filter(|c| c.owner == *node) {
            c.stranded = true;
            c.offer_at_us = 0;
            any = true;
        }
        if any {
            self.replication_changed = true;
            self.offer_stranded(out);
        }
    }

    /// Offers each stranded copy that is due to the room's owner in this node's view; a room
    /// this node owns now is taken over the usual way (asking every live node for the
    /// furthest state, this copy among them).
    pub(super) fn offer_stranded(&mut self, out: &mut Vec<Action<H>>) {
        let now = self.now_us;
        let due: Vec<RoomId> = self
            .copies
            .iter()
            .filter(|(_, c)| c.stranded && c.offer_at_us <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for room in due {
            let owner = self.owner_of(&room);
            if owner == self.me {
                self.take_over(&room, None, out);
                continue;
            }
            let Some(c) = self.copies.get_mut(&room) else {
                continue;
            };
            c.offer_at_us = now + OFFER_EVERY_US;
            let offer = HandoffOffer {
                room: room.clone(),
                epoch: c.epoch.clone(),
                seq: c.seq,
            };
            self.send(owner, PeerMsg::HandoffOffer(offer), out);
        }
    }

    /// The room's owner confirmed it holds `room` at `(epoch, seq)` or later: a stranded copy
    /// it covers is no longer the only one, and is dropped unless this node replicates the
    /// room in its view (the owner then syncs it afresh).
    pub(super) fn stranded_copy_taken(&mut self, room: &RoomId, epoch: &Epoch, seq: u64) {
        let covered = self
            .copies
            .get(room)
            .is_some_and(|c| c.stranded && c.epoch == *epoch && c.seq <= seq);
        if !covered {
            return;
        }
        self.replication_changed = true;
        let replica = hash::ranked(room, &self.members)
            .iter()
            .skip(1)
            .take(self.cfg.replicas)
            .any(|n| *n == self.me);
        if replica {
            if let Some(c) = self.copies.get_mut(room) {
                c.stranded = false;
            }
        } else {
            self.copies.remove(room);
        }
    }
}
