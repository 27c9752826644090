//! The owner half of routing: sequencing, history and interested nodes of the rooms this node
//! owns, and the handoff of that state when ownership moves between live nodes.
//!
//! Handoff. When a node stops owning a room while alive (a node joined and outranks it, or it
//! is draining), it stops sequencing the room and sends its state (`Handoff`) to the new
//! owner, then refuses requests for the room for a while (`moved`). A node about to own a room
//! it has no state for asks the nodes that may have owned it (`HandoffQuery`) — shortly after a
//! view change only; in a stable cluster a room is new when its owner has no state — and holds
//! requests for the room until they answered or [`HANDOFF_WAIT_US`] passed. So the room keeps
//! its epoch, seq and history, and subscribers resume across the move with no gap. A dead
//! owner cannot answer: its rooms start a new epoch (until replication exists).

use std::collections::VecDeque;

use super::history::History;
use super::{Action, HistEntry, PeerError, PeerMsg, RoomState, Router};
use crate::ids::{ConnName, Epoch, NodeId, RoomId};
use crate::protocol::encode;

/// How long after a view change a node looks for previous owners of a room it is to own.
const HANDOFF_WINDOW_US: u64 = 30_000_000;
/// How long requests for a room wait for previous owners' answers.
const HANDOFF_WAIT_US: u64 = 2_000_000;
/// How long a node refuses requests for a room it handed away.
const MOVED_TTL_US: u64 = 10_000_000;
/// Requests held per room while its state is awaited; more are refused as unavailable.
const MAX_DEFERRED: usize = 4096;

/// A room this node sequences.
pub(super) struct OwnedRoom {
    epoch: Epoch,
    /// Last assigned seq (0 before the first message of the epoch).
    seq: u64,
    history: History,
    /// Nodes with local subscribers; each gets every event once. A handful at most, so a Vec.
    interested: Vec<NodeId>,
}

/// A room this node is to own, waiting for a previous owner's state.
pub(super) struct PendingOwnership {
    waiting: Vec<NodeId>,
    deadline_us: u64,
    found: Option<RoomState>,
    /// Requests that arrived meanwhile, in order, with their sender.
    queued: VecDeque<(NodeId, PeerMsg)>,
}

/// Can this node serve a request for the room now?
enum Ownership {
    Ready,
    /// The room's state is awaited; the request must be held.
    Deferred,
    NotOwner,
}

impl OwnedRoom {
    fn fresh(me: &NodeId, now_us: u64) -> OwnedRoom {
        OwnedRoom {
            epoch: Epoch::fresh(me, now_us / 1000),
            seq: 0,
            history: History::default(),
            interested: Vec::new(),
        }
    }

    fn from_state(s: RoomState, limits: &super::HistoryLimits) -> OwnedRoom {
        let mut history = History::default();
        for e in s.history {
            history.push(e, limits);
        }
        OwnedRoom {
            epoch: s.epoch,
            seq: s.seq,
            history,
            interested: s.interested,
        }
    }

    fn into_state(self) -> RoomState {
        RoomState {
            epoch: self.epoch,
            seq: self.seq,
            history: self.history.drain(),
            interested: self.interested,
        }
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
        if let Some((_, until)) = self.moved.get(room) {
            if *until > self.now_us {
                return Ownership::NotOwner;
            }
            self.moved.remove(room);
        }
        if self.owner_of(room) != self.me {
            return Ownership::NotOwner;
        }
        let candidates = self.previous_owners(room);
        if candidates.is_empty() {
            self.owned
                .insert(room.clone(), OwnedRoom::fresh(&self.me, self.now_us));
            return Ownership::Ready;
        }
        for c in &candidates {
            self.send(c.clone(), PeerMsg::HandoffQuery { room: room.clone() }, out);
        }
        self.pending_owner.insert(
            room.clone(),
            PendingOwnership {
                waiting: candidates,
                deadline_us: self.now_us + HANDOFF_WAIT_US,
                found: None,
                queued: VecDeque::new(),
            },
        );
        Ownership::Deferred
    }

    /// Live nodes that may hold `room`'s state: its owner without this node (if this node is
    /// new), and its owner counting draining nodes (if that one is draining). Only shortly
    /// after a view change; otherwise a room without state here is new.
    fn previous_owners(&self, room: &RoomId) -> Vec<NodeId> {
        if self.now_us.saturating_sub(self.view_changed_us) > HANDOFF_WINDOW_US
            || self.live.len() < 2
        {
            return Vec::new();
        }
        let mut c: Vec<NodeId> = Vec::new();
        let others: Vec<NodeId> = self
            .members
            .iter()
            .filter(|n| **n != self.me)
            .cloned()
            .collect();
        if let Some(p) = super::hash::owner(room, &others) {
            c.push(p.clone());
        }
        if let Some(p) = super::hash::owner(room, &self.live)
            && *p != self.me
            && !c.contains(p)
        {
            c.push(p.clone());
        }
        c
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
        self.refuse_msg(from, &msg, PeerError::Unavailable, out);
    }

    fn refuse_msg(
        &mut self,
        to: NodeId,
        msg: &PeerMsg,
        error: PeerError,
        out: &mut Vec<Action<H>>,
    ) {
        let token = match msg {
            PeerMsg::Subscribe { token, .. }
            | PeerMsg::Publish { token, .. }
            | PeerMsg::HistoryReq { token, .. } => *token,
            _ => return,
        };
        self.send(
            to,
            PeerMsg::Refused {
                room: msg.room().clone(),
                token,
                error,
            },
            out,
        );
    }

    /// Routes an owner-bound request: served now, held, or refused.
    fn owner_gate(&mut self, from: &NodeId, msg: &PeerMsg, out: &mut Vec<Action<H>>) -> bool {
        match self.ownership(msg.room(), out) {
            Ownership::Ready => true,
            Ownership::Deferred => {
                self.defer(from.clone(), msg.clone(), out);
                false
            }
            Ownership::NotOwner => {
                self.refuse_msg(from.clone(), msg, PeerError::NotOwner, out);
                false
            }
        }
    }

    pub(super) fn owner_subscribe(
        &mut self,
        from: NodeId,
        room: RoomId,
        token: u64,
        since: Option<u64>,
        epoch: Option<Epoch>,
        out: &mut Vec<Action<H>>,
    ) {
        let msg = PeerMsg::Subscribe {
            room: room.clone(),
            token,
            since,
            epoch: epoch.clone(),
        };
        if !self.owner_gate(&from, &msg, out) {
            return;
        }
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
                let s = r.history.since(since, r.seq, usize::MAX);
                (s.entries, s.recovered && same_epoch)
            }
        };
        let msg = PeerMsg::SubscribeAck {
            room,
            token,
            epoch: r.epoch.clone(),
            seq: r.seq,
            history,
            recovered,
        };
        self.send(from, msg, out);
    }

    pub(super) fn owner_unsubscribe(&mut self, from: &NodeId, room: &RoomId) {
        if let Some(r) = self.owned.get_mut(room) {
            r.interested.retain(|n| n != from);
        }
        if let Some(p) = self.pending_owner.get_mut(room) {
            // Keep the order of this node's requests: an unsubscribe after a held subscribe.
            p.queued
                .push_back((from.clone(), PeerMsg::Unsubscribe { room: room.clone() }));
        }
    }

    pub(super) fn owner_publish(
        &mut self,
        from: NodeId,
        room: RoomId,
        token: u64,
        conn: ConnName,
        data: String,
        out: &mut Vec<Action<H>>,
    ) {
        let now_us = self.now_us;
        let limits = self.cfg.history;
        let msg = PeerMsg::Publish {
            room: room.clone(),
            token,
            from: conn,
            data,
        };
        if !self.owner_gate(&from, &msg, out) {
            return;
        }
        let PeerMsg::Publish {
            from: conn, data, ..
        } = msg
        else {
            return;
        };
        let Some(r) = self.owned.get_mut(&room) else {
            return;
        };
        r.seq += 1;
        let seq = r.seq;
        let frame = encode::event(&room, seq, &r.epoch, &data, conn.as_str(), now_us / 1000);
        r.history.push(
            HistEntry {
                seq,
                accepted_us: now_us,
                frame: frame.clone(),
            },
            &limits,
        );
        let epoch = r.epoch.clone();
        let targets = r.interested.clone();
        for node in targets {
            self.send(
                node,
                PeerMsg::Event {
                    room: room.clone(),
                    epoch: epoch.clone(),
                    seq,
                    accepted_us: now_us,
                    frame: frame.clone(),
                },
                out,
            );
        }
        self.send(from, PeerMsg::PublishAck { room, token, seq }, out);
    }

    pub(super) fn owner_history(
        &mut self,
        from: NodeId,
        room: RoomId,
        token: u64,
        since: u64,
        limit: u64,
        out: &mut Vec<Action<H>>,
    ) {
        let msg = PeerMsg::HistoryReq {
            room: room.clone(),
            token,
            since,
            limit,
        };
        if !self.owner_gate(&from, &msg, out) {
            return;
        }
        let Some(r) = self.owned.get_mut(&room) else {
            return;
        };
        let s = r
            .history
            .since(since, r.seq, usize::try_from(limit).unwrap_or(usize::MAX));
        let msg = PeerMsg::HistoryResp {
            room,
            token,
            epoch: r.epoch.clone(),
            seq: r.seq,
            history: s.entries,
            recovered: s.recovered,
        };
        self.send(from, msg, out);
    }

    /// A node about to own `room` asks for its state: give it up if this node has it.
    pub(super) fn on_handoff_query(
        &mut self,
        from: NodeId,
        room: RoomId,
        out: &mut Vec<Action<H>>,
    ) {
        let state = self.owned.remove(&room).map(OwnedRoom::into_state);
        if state.is_some() {
            self.moved
                .insert(room.clone(), (from.clone(), self.now_us + MOVED_TTL_US));
        }
        self.send(from, PeerMsg::Handoff { room, state }, out);
    }

    /// A previous owner's state (or its answer that it has none).
    pub(super) fn on_handoff(
        &mut self,
        from: NodeId,
        room: RoomId,
        state: Option<RoomState>,
        out: &mut Vec<Action<H>>,
    ) {
        if let Some(p) = self.pending_owner.get_mut(&room) {
            p.waiting.retain(|n| *n != from);
            if let Some(s) = state {
                // Two holders (views disagreed for a while): keep the one further along.
                if p.found.as_ref().is_none_or(|f| s.seq > f.seq) {
                    p.found = Some(s);
                }
            }
            if p.waiting.is_empty() {
                self.resolve_pending(&room, out);
            }
            return;
        }
        let Some(s) = state else { return };
        self.moved.remove(&room);
        match self.owned.get_mut(&room) {
            None => {
                let limits = self.cfg.history;
                self.owned.insert(room, OwnedRoom::from_state(s, &limits));
            }
            // A room this node created but has not used yet yields to the handed state.
            Some(r) if r.seq == 0 && r.history.is_empty() => {
                let mut interested = std::mem::take(&mut r.interested);
                let limits = self.cfg.history;
                let mut new = OwnedRoom::from_state(s, &limits);
                interested.retain(|n| !new.interested.contains(n));
                new.interested.extend(interested);
                self.owned.insert(room, new);
            }
            Some(_) => {
                tracing::warn!(%room, from = %from, "a handoff arrived for a room already in use here; kept the local state");
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
            None => OwnedRoom::fresh(&self.me, self.now_us),
        };
        self.owned.insert(room.clone(), owned);
        for (from, msg) in p.queued {
            self.on_owner_msg(from, msg, out);
        }
    }

    /// Dispatches an owner-bound request (from a peer, or held until the room's state came).
    pub(super) fn on_owner_msg(&mut self, from: NodeId, msg: PeerMsg, out: &mut Vec<Action<H>>) {
        match msg {
            PeerMsg::Subscribe {
                room,
                token,
                since,
                epoch,
            } => self.owner_subscribe(from, room, token, since, epoch, out),
            PeerMsg::Unsubscribe { room } => self.owner_unsubscribe(&from, &room),
            PeerMsg::Publish {
                room,
                token,
                from: conn,
                data,
            } => self.owner_publish(from, room, token, conn, data, out),
            PeerMsg::HistoryReq {
                room,
                token,
                since,
                limit,
            } => self.owner_history(from, room, token, since, limit, out),
            _ => {}
        }
    }

    /// After a view change: forget interest of departed nodes, hand rooms this node no longer
    /// owns to their new owners, and stop waiting for departed previous owners.
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
                self.moved
                    .insert(room.clone(), (owner.clone(), self.now_us + MOVED_TTL_US));
                self.send(
                    owner,
                    PeerMsg::Handoff {
                        room,
                        state: Some(r.into_state()),
                    },
                    out,
                );
            }
        }
        let pending: Vec<RoomId> = self.pending_owner.keys().cloned().collect();
        for room in pending {
            if self.owner_of(&room) != self.me {
                // Not ours after all: refuse what was held (the senders retry elsewhere).
                if let Some(p) = self.pending_owner.remove(&room) {
                    for (from, msg) in p.queued {
                        self.refuse_msg(from, &msg, PeerError::NotOwner, out);
                    }
                }
                continue;
            }
            let done = match self.pending_owner.get_mut(&room) {
                Some(p) => {
                    p.waiting.retain(|n| !departed.contains(n));
                    p.waiting.is_empty()
                }
                None => false,
            };
            if done {
                self.resolve_pending(&room, out);
            }
        }
    }

    /// Expires history, drops rooms nobody follows whose history is gone, stops waiting for
    /// previous owners that did not answer, and forgets old `moved` marks.
    pub(super) fn tick_owned(&mut self, out: &mut Vec<Action<H>>) {
        let now = self.now_us;
        let limits = self.cfg.history;
        self.owned.retain(|_, r| {
            r.history.expire(now, &limits);
            !(r.interested.is_empty() && r.history.is_empty())
        });
        let late: Vec<RoomId> = self
            .pending_owner
            .iter()
            .filter(|(_, p)| p.deadline_us <= now)
            .map(|(r, _)| r.clone())
            .collect();
        for room in late {
            tracing::debug!(%room, "previous owners did not answer; taking the room over as it is");
            self.resolve_pending(&room, out);
        }
        self.moved.retain(|_, (_, until)| *until > now);
    }
}
