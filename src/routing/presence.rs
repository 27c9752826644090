//! Presence: which connections are in a room, cluster-wide, without ghosts.
//!
//! The set is held by the room's **owner**, like the room's sequence, and travels with the
//! room's state (handoffs, replica syncs); every change is copied to the room's replicas
//! (`ReplicaPresence`), so a replica promoted after its owner died holds the set too.
//!
//! Why no ghosts. An entry is a connection on some node, and the owner removes it — with a
//! `leave` event — when any of these says the connection is gone:
//!
//! * the member node withdraws it (`PresenceLeave`: the connection left the room or closed);
//! * the member node's whole set for the room changes (`PresenceSync`: sent whenever its feed
//!   of the room starts or resyncs — after a link reset that may have lost a `PresenceLeave`,
//!   or to a new owner — and it *replaces* that node's entries);
//! * the member node unsubscribes from the room (no local subscriber left);
//! * the member node leaves the view (dead, after `failure_timeout`) or restarts
//!   (`PeerRestarted`), or, on a room this node takes over, is not live any more.
//!
//! The member side keeps the entries of its local connections and the subscribers that asked
//! for presence events; the owner sends each change once per interested node (like events),
//! and the member fans it out to those subscribers. Presence changes are not sequenced: they
//! are not part of the room's `seq` order.

use std::sync::Arc;

use super::message::{
    PresenceEntry, PresenceEvent, PresenceJoin, PresenceLeave, PresenceReq, PresenceResp,
    PresenceSync, ReplicaPresence,
};
use super::{Action, Map, PeerMsg, Router};
use crate::ids::{ConnId, ConnName, NodeId, RoomId};

/// A room's presence set, by connection.
pub(super) type PresenceSet = Map<ConnName, PresenceEntry>;

/// What a join asks of presence: to be in the set, and/or to get its changes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JoinPresence {
    /// This connection's entry (`"presence": true`).
    pub entry: Option<PresenceEntry>,
    /// Send this connection the room's presence changes (`"presence_events": true`).
    pub events: bool,
}

fn node_of(entry: &PresenceEntry) -> Option<NodeId> {
    NodeId::new(entry.node()).ok()
}

impl<H: Clone> Router<H> {
    // ---------------------------------------------------------------- member side

    /// A local connection's join completed: record what it asked of presence, and tell the
    /// owner about its entry if the feed is live.
    pub(super) fn local_presence_joined(
        &mut self,
        room: &RoomId,
        conn: ConnId,
        handle: H,
        p: JoinPresence,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.member_rooms.get_mut(room) else {
            return;
        };
        if p.events && !r.presence_subs.iter().any(|(c, _)| *c == conn) {
            Arc::make_mut(&mut r.presence_subs).push((conn, handle));
        }
        let Some(entry) = p.entry else { return };
        r.presence.retain(|(c, _)| *c != conn);
        r.presence.push((conn, entry.clone()));
        if let Some(owner) = r.feed_owner() {
            let msg = PeerMsg::PresenceJoin(PresenceJoin {
                room: room.clone(),
                entry,
            });
            self.send(owner, msg, out);
        }
    }

    /// A local connection left `room` (or went away): withdraw its entry and its events.
    pub(super) fn local_presence_left(
        &mut self,
        room: &RoomId,
        conn: ConnId,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.member_rooms.get_mut(room) else {
            return;
        };
        if r.presence_subs.iter().any(|(c, _)| *c == conn) {
            Arc::make_mut(&mut r.presence_subs).retain(|(c, _)| *c != conn);
        }
        let Some(i) = r.presence.iter().position(|(c, _)| *c == conn) else {
            return;
        };
        let (_, entry) = r.presence.remove(i);
        if let Some(owner) = r.feed_owner() {
            let msg = PeerMsg::PresenceLeave(PresenceLeave {
                room: room.clone(),
                conn: entry.conn,
            });
            self.send(owner, msg, out);
        }
    }

    /// The feed of `room` (re)started with `owner`: send it this node's whole set for the
    /// room, which replaces whatever the owner held for this node.
    pub(super) fn sync_local_presence(
        &mut self,
        room: &RoomId,
        owner: NodeId,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.member_rooms.get(room) else {
            return;
        };
        let entries: Vec<PresenceEntry> = r.presence.iter().map(|(_, e)| e.clone()).collect();
        let msg = PeerMsg::PresenceSync(PresenceSync {
            room: room.clone(),
            entries,
        });
        self.send(owner, msg, out);
    }

    /// A presence change from the room's owner: to the local subscribers that asked for them.
    pub(super) fn on_presence_event(&mut self, ev: PresenceEvent, out: &mut Vec<Action<H>>) {
        let Some(r) = self.member_rooms.get(&ev.room) else {
            return;
        };
        if r.presence_subs.is_empty() {
            return;
        }
        let frame = crate::protocol::encode::presence_event(&ev.room, ev.join, &ev.entry);
        out.push(Action::Fanout {
            subs: r.presence_subs.clone(),
            frame,
            accepted_us: self.now_us,
        });
    }

    // ---------------------------------------------------------------- owner side

    /// `PresenceJoin`, `PresenceLeave`, `PresenceSync` or `PresenceReq` for an owned room
    /// (through the owner gate, like every owner-bound request).
    pub(super) fn owner_presence(&mut self, from: NodeId, msg: PeerMsg, out: &mut Vec<Action<H>>) {
        if !self.owner_gate(&from, &msg, out) {
            return;
        }
        match msg {
            // A node speaks only for its own connections.
            PeerMsg::PresenceJoin(PresenceJoin { room, entry })
                if entry.node() == from.as_str() =>
            {
                self.presence_put(&room, entry, out);
            }
            PeerMsg::PresenceLeave(PresenceLeave { room, conn })
                if conn.as_str().split('/').next() == Some(from.as_str()) =>
            {
                self.presence_remove(&room, &conn, out);
            }
            PeerMsg::PresenceSync(PresenceSync { room, entries }) => {
                let keep: Vec<ConnName> = entries
                    .iter()
                    .filter(|e| e.node() == from.as_str())
                    .map(|e| e.conn.clone())
                    .collect();
                let gone: Vec<ConnName> = self
                    .owned
                    .get(&room)
                    .map(|r| {
                        r.presence
                            .values()
                            .filter(|e| e.node() == from.as_str() && !keep.contains(&e.conn))
                            .map(|e| e.conn.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                for conn in gone {
                    self.presence_remove(&room, &conn, out);
                }
                for e in entries.into_iter().filter(|e| e.node() == from.as_str()) {
                    self.presence_put(&room, e, out);
                }
            }
            PeerMsg::PresenceReq(PresenceReq { room, token }) => {
                let members: Vec<PresenceEntry> = self
                    .owned
                    .get(&room)
                    .map(|r| r.presence.values().cloned().collect())
                    .unwrap_or_default();
                let msg = PeerMsg::PresenceResp(PresenceResp {
                    room,
                    token,
                    members,
                });
                self.send(from, msg, out);
            }
            _ => {}
        }
    }

    /// Adds or updates an entry (within the bound), telling replicas and interested nodes.
    fn presence_put(&mut self, room: &RoomId, entry: PresenceEntry, out: &mut Vec<Action<H>>) {
        let max = self.cfg.presence_max;
        let Some(r) = self.owned.get_mut(room) else {
            return;
        };
        match r.presence.get(&entry.conn) {
            Some(e) if *e == entry => return,
            None if r.presence.len() >= max => {
                // Full: the connection stays joined, without presence (counted).
                self.stats.presence_refused += 1;
                return;
            }
            _ => {}
        }
        r.presence.insert(entry.conn.clone(), entry.clone());
        self.presence_changed(room, entry.conn.clone(), Some(entry), out);
    }

    fn presence_remove(&mut self, room: &RoomId, conn: &ConnName, out: &mut Vec<Action<H>>) {
        let Some(r) = self.owned.get_mut(room) else {
            return;
        };
        let Some(entry) = r.presence.remove(conn) else {
            return;
        };
        self.presence_changed(room, conn.clone(), None, out);
        self.presence_event(room, false, entry, out);
    }

    /// Copies a change to the replicas and, for an addition, tells the interested nodes.
    fn presence_changed(
        &mut self,
        room: &RoomId,
        conn: ConnName,
        entry: Option<PresenceEntry>,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.owned.get(room) else {
            return;
        };
        let msg = ReplicaPresence {
            room: room.clone(),
            epoch: r.epoch.clone(),
            conn,
            entry: entry.clone(),
        };
        let nodes: Vec<NodeId> = r.replicas.iter().map(|p| p.node.clone()).collect();
        for n in nodes {
            self.send(n, PeerMsg::ReplicaPresence(msg.clone()), out);
        }
        if let Some(e) = entry {
            self.presence_event(room, true, e, out);
        }
    }

    fn presence_event(
        &mut self,
        room: &RoomId,
        join: bool,
        entry: PresenceEntry,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.owned.get(room) else {
            return;
        };
        let ev = PresenceEvent {
            room: room.clone(),
            join,
            entry,
        };
        for n in r.interested.clone() {
            self.send(n, PeerMsg::PresenceEvent(ev.clone()), out);
        }
    }

    /// Removes, with leave events, the entries of `room` whose connections are on `gone`
    /// nodes — or, with `gone` empty, on nodes that are not live in this node's view.
    pub(super) fn prune_presence(
        &mut self,
        room: &RoomId,
        gone: &[NodeId],
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.owned.get(room) else {
            return;
        };
        let stale: Vec<ConnName> = r
            .presence
            .values()
            .filter(|e| match node_of(e) {
                Some(n) if gone.is_empty() => !self.is_member(&n),
                Some(n) => gone.contains(&n),
                None => true,
            })
            .map(|e| e.conn.clone())
            .collect();
        for conn in stale {
            self.presence_remove(room, &conn, out);
        }
    }

    /// Every owned room: drop the entries of nodes that are gone (view change) or restarted.
    pub(super) fn prune_presence_everywhere(&mut self, gone: &[NodeId], out: &mut Vec<Action<H>>) {
        let rooms: Vec<RoomId> = self
            .owned
            .iter()
            .filter(|(_, r)| !r.presence.is_empty())
            .map(|(room, _)| room.clone())
            .collect();
        for room in rooms {
            self.prune_presence(&room, gone, out);
        }
    }

    /// Presence entries held in the rooms this node owns.
    pub fn presence_entries(&self) -> usize {
        self.owned.values().map(|r| r.presence.len()).sum()
    }

    // ---------------------------------------------------------------- replica side

    pub(super) fn on_replica_presence(&mut self, from: &NodeId, m: ReplicaPresence) {
        if let Some(c) = self.copies.get_mut(&m.room)
            && c.owner == *from
            && c.epoch == m.epoch
        {
            match m.entry {
                Some(e) => {
                    c.presence.insert(m.conn, e);
                }
                None => {
                    c.presence.remove(&m.conn);
                }
            }
        }
    }
}
