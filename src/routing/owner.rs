//! The owner half of routing: sequencing, history and interested nodes of the rooms this node
//! owns.

use super::history::History;
use super::{Action, PeerError, PeerMsg, Router};
use crate::ids::{ConnName, Epoch, NodeId, RoomId};
use crate::protocol::encode;

/// A room this node sequences.
pub(super) struct OwnedRoom {
    epoch: Epoch,
    /// Last assigned seq (0 before the first message of the epoch).
    seq: u64,
    history: History,
    /// Nodes with local subscribers; each gets every event once. A handful at most, so a Vec.
    interested: Vec<NodeId>,
}

impl<H: Clone> Router<H> {
    /// The owned room, created (new epoch, seq 0) if this node owns `room` and has no state for
    /// it; `None` if another node owns it in this node's view.
    fn owned_room(&mut self, room: &RoomId) -> Option<&mut OwnedRoom> {
        if !self.owned.contains_key(room) {
            if self.owner_of(room) != self.me {
                return None;
            }
            let epoch = Epoch::fresh(&self.me, self.now_us / 1000);
            self.owned.insert(
                room.clone(),
                OwnedRoom {
                    epoch,
                    seq: 0,
                    history: History::default(),
                    interested: Vec::new(),
                },
            );
        }
        self.owned.get_mut(room)
    }

    fn refuse(&mut self, to: NodeId, room: RoomId, token: u64, out: &mut Vec<Action<H>>) {
        self.send(
            to,
            PeerMsg::Refused {
                room,
                token,
                error: PeerError::NotOwner,
            },
            out,
        );
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
        let Some(r) = self.owned_room(&room) else {
            return self.refuse(from, room, token, out);
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
        let Some(r) = self.owned_room(&room) else {
            return self.refuse(from, room, token, out);
        };
        r.seq += 1;
        let seq = r.seq;
        let frame = encode::event(&room, seq, &r.epoch, &data, conn.as_str(), now_us / 1000);
        r.history.push(
            super::HistEntry {
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
        let Some(r) = self.owned_room(&room) else {
            return self.refuse(from, room, token, out);
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

    /// After a membership change: forget interest of departed nodes, and give up rooms this
    /// node no longer owns (their new owner starts a new epoch: until handoff exists, history
    /// does not move with ownership).
    pub(super) fn members_changed_owner_side(&mut self, departed: &[NodeId]) {
        let me = self.me.clone();
        let members = self.members.clone();
        self.owned.retain(|room, r| {
            r.interested.retain(|n| !departed.contains(n));
            super::hash::owner(room, &members).is_none_or(|o| *o == me)
        });
    }

    /// Expires history and drops rooms nobody follows whose history is gone.
    pub(super) fn tick_owned(&mut self) {
        let now = self.now_us;
        let limits = self.cfg.history;
        self.owned.retain(|_, r| {
            r.history.expire(now, &limits);
            !(r.interested.is_empty() && r.history.is_empty())
        });
    }
}
