//! The member half of routing: local subscribers, the feed from each room's owner, and
//! requests waiting for owners.

use bytestring::ByteString;

use super::{Action, EvictReason, HistEntry, PeerError, PeerMsg, Router};
use crate::ids::{ConnId, ConnName, Epoch, NodeId, RoomId};
use crate::protocol::encode::Reply;
use crate::protocol::{ErrorCode, ReqId};

/// This node's view of one room it has local subscribers (or joins in progress) for.
pub(super) struct MemberRoom<H> {
    pub(super) subs: Vec<(ConnId, H)>,
    joins: Vec<PendingJoin<H>>,
    feed: Feed,
    /// Epochs this node's subscribers followed before the current one, with the last seq
    /// delivered in each (newest last, at most [`PAST_EPOCHS`]). While views settle, a room can
    /// move back to an owner whose epoch the subscribers already saw part of: they continue it
    /// where they left it instead of seeing its messages twice.
    past: Vec<(Epoch, u64)>,
}

/// Past epochs remembered per member room.
const PAST_EPOCHS: usize = 8;

/// Where this node stands in the room owner's stream of events.
#[derive(Debug, Clone, PartialEq)]
enum Feed {
    /// No Subscribe acknowledged yet: events are not followed.
    Unregistered,
    /// Following `owner`'s events; `seq` is the last one delivered to local subscribers.
    Live {
        owner: NodeId,
        epoch: Epoch,
        seq: u64,
    },
    /// A gap or an owner change was seen; a Subscribe with `since = seq` (token) is in flight and
    /// events are dropped until its acknowledgement brings the missing ones from history.
    Resyncing {
        owner: NodeId,
        token: u64,
        epoch: Epoch,
        seq: u64,
        retry_at_us: u64,
    },
}

struct PendingJoin<H> {
    conn: ConnId,
    handle: H,
    since: Option<u64>,
    epoch: Option<Epoch>,
    req: ReqId,
    deadline_us: u64,
    /// `(token, owner)` of the Subscribe in flight, or `None` while parked behind a resync.
    sent: Option<(u64, NodeId)>,
}

/// A publish or history read waiting for the owner's reply.
pub(super) struct PendingReq<H> {
    handle: H,
    req: ReqId,
    owner: NodeId,
    deadline_us: u64,
    kind: ReqKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqKind {
    Publish,
    History,
}

fn unavailable(msg: &str) -> Reply {
    Reply::error(ErrorCode::Unavailable, msg)
}

impl<H: Clone> Router<H> {
    // ---------------------------------------------------------------- local requests

    #[allow(clippy::too_many_arguments)]
    pub(super) fn join(
        &mut self,
        conn: ConnId,
        handle: H,
        room: RoomId,
        since: Option<u64>,
        epoch: Option<Epoch>,
        req: ReqId,
        out: &mut Vec<Action<H>>,
    ) {
        let owner = self.owner_of(&room);
        let deadline_us = self.deadline();
        let r = self
            .member_rooms
            .entry(room.clone())
            .or_insert_with(|| MemberRoom {
                subs: Vec::new(),
                joins: Vec::new(),
                feed: Feed::Unregistered,
                past: Vec::new(),
            });
        // Fast path: this node already follows the room and the client wants no history.
        if since.is_none()
            && let Feed::Live {
                owner: o,
                epoch,
                seq,
            } = &r.feed
            && *o == owner
        {
            out.push(Action::Reply {
                to: handle.clone(),
                req,
                reply: Reply::Joined {
                    room,
                    seq: *seq,
                    epoch: epoch.clone(),
                    recovered: None,
                },
            });
            if !r.subs.iter().any(|(c, _)| *c == conn) {
                r.subs.push((conn, handle));
            }
            return;
        }
        let parked = matches!(r.feed, Feed::Resyncing { .. });
        let mut pj = PendingJoin {
            conn,
            handle,
            since,
            epoch,
            req,
            deadline_us,
            sent: None,
        };
        if !parked {
            let token = self.token();
            pj.sent = Some((token, owner.clone()));
            let msg = PeerMsg::Subscribe {
                room: room.clone(),
                token,
                since: pj.since,
                epoch: pj.epoch.clone(),
            };
            self.room_mut(&room).joins.push(pj);
            self.send(owner, msg, out);
        } else {
            self.room_mut(&room).joins.push(pj);
        }
    }

    fn room_mut(&mut self, room: &RoomId) -> &mut MemberRoom<H> {
        // Callers only use this right after ensuring the entry exists.
        self.member_rooms
            .get_mut(room)
            .unwrap_or_else(|| unreachable!("member room exists"))
    }

    pub(super) fn leave(
        &mut self,
        conn: ConnId,
        handle: H,
        room: RoomId,
        req: ReqId,
        reply: bool,
        out: &mut Vec<Action<H>>,
    ) {
        if let Some(r) = self.member_rooms.get_mut(&room) {
            r.subs.retain(|(c, _)| *c != conn);
            // A join still waiting for the owner gets its one reply now.
            let mut i = 0;
            while i < r.joins.len() {
                if r.joins[i].conn == conn {
                    let j = r.joins.remove(i);
                    if reply {
                        out.push(Action::Reply {
                            to: j.handle,
                            req: j.req,
                            reply: Reply::error(
                                ErrorCode::BadRequest,
                                format!("left room {room} before the join completed"),
                            ),
                        });
                    }
                } else {
                    i += 1;
                }
            }
        }
        if reply {
            out.push(Action::Reply {
                to: handle,
                req,
                reply: Reply::Left { room: room.clone() },
            });
        }
        self.drop_room_if_unused(&room, out);
    }

    /// Forgets a member room with no subscribers and no joins, withdrawing interest from every
    /// node that may hold it.
    fn drop_room_if_unused(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let Some(r) = self.member_rooms.get(room) else {
            return;
        };
        if !r.subs.is_empty() || !r.joins.is_empty() {
            return;
        }
        let Some(r) = self.member_rooms.remove(room) else {
            return;
        };
        let mut owners: Vec<NodeId> = Vec::new();
        match r.feed {
            Feed::Live { owner, .. } | Feed::Resyncing { owner, .. } => owners.push(owner),
            Feed::Unregistered => {}
        }
        // Joins that were dropped on leave may have registered interest somewhere too; the
        // owner we would ask now is the likely one.
        let current = self.owner_of(room);
        if !owners.contains(&current) {
            owners.push(current);
        }
        for o in owners {
            if self.is_member(&o) {
                self.send(o, PeerMsg::Unsubscribe { room: room.clone() }, out);
            }
        }
    }

    pub(super) fn publish(
        &mut self,
        handle: H,
        from: ConnName,
        room: RoomId,
        data: String,
        req: ReqId,
        out: &mut Vec<Action<H>>,
    ) {
        let owner = self.owner_of(&room);
        let token = self.token();
        self.pending.insert(
            token,
            PendingReq {
                handle,
                req,
                owner: owner.clone(),
                deadline_us: self.deadline(),
                kind: ReqKind::Publish,
            },
        );
        self.send(
            owner,
            PeerMsg::Publish {
                room,
                token,
                from,
                data,
            },
            out,
        );
    }

    pub(super) fn history(
        &mut self,
        handle: H,
        room: RoomId,
        since: u64,
        limit: u64,
        req: ReqId,
        out: &mut Vec<Action<H>>,
    ) {
        let owner = self.owner_of(&room);
        let token = self.token();
        self.pending.insert(
            token,
            PendingReq {
                handle,
                req,
                owner: owner.clone(),
                deadline_us: self.deadline(),
                kind: ReqKind::History,
            },
        );
        self.send(
            owner,
            PeerMsg::HistoryReq {
                room,
                token,
                since,
                limit,
            },
            out,
        );
    }

    // ---------------------------------------------------------------- owner replies

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_subscribe_ack(
        &mut self,
        from: NodeId,
        room: RoomId,
        token: u64,
        epoch: Epoch,
        seq: u64,
        history: Vec<HistEntry>,
        recovered: bool,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.member_rooms.get_mut(&room) else {
            return; // We left meanwhile and already sent Unsubscribe.
        };
        // A resync's acknowledgement?
        if let Feed::Resyncing {
            owner, token: t, ..
        } = &r.feed
            && *t == token
            && *owner == from
        {
            self.finish_resync(from, room, epoch, seq, history, recovered, out);
            return;
        }
        let Some(i) = r.joins.iter().position(|j| {
            j.sent
                .as_ref()
                .is_some_and(|(t, o)| *t == token && *o == from)
        }) else {
            return; // A join that was re-sent elsewhere, or left.
        };
        let consistent = match &r.feed {
            Feed::Unregistered => {
                r.feed = Feed::Live {
                    owner: from.clone(),
                    epoch: epoch.clone(),
                    seq,
                };
                true
            }
            Feed::Live {
                owner,
                epoch: e,
                seq: s,
            } => *owner == from && *e == epoch && *s == seq,
            Feed::Resyncing { .. } => false,
        };
        if !consistent {
            // The feed and this acknowledgement disagree: the feed missed something (or the
            // room restarted). Park the join, repair the feed, then ask again.
            r.joins[i].sent = None;
            if matches!(r.feed, Feed::Live { .. }) {
                self.stats.gaps += 1;
                self.start_resync(&room, out);
            }
            return;
        }
        let j = r.joins.remove(i);
        out.push(Action::Reply {
            to: j.handle.clone(),
            req: j.req,
            reply: Reply::Joined {
                room,
                seq,
                epoch,
                recovered: j.since.map(|_| recovered),
            },
        });
        for e in history {
            out.push(Action::Deliver {
                to: j.handle.clone(),
                frame: e.frame,
                accepted_us: e.accepted_us,
            });
        }
        if !r.subs.iter().any(|(c, _)| *c == j.conn) {
            r.subs.push((j.conn, j.handle));
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_event(
        &mut self,
        from: NodeId,
        room: RoomId,
        epoch: Epoch,
        seq: u64,
        accepted_us: u64,
        frame: ByteString,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.member_rooms.get_mut(&room) else {
            // Nobody here wants this room (our Unsubscribe was lost, or we restarted): tell the
            // sender so it stops.
            self.stats.stale_events += 1;
            self.send(from, PeerMsg::Unsubscribe { room }, out);
            return;
        };
        match &mut r.feed {
            Feed::Live {
                owner,
                epoch: e,
                seq: s,
            } if *owner == from && *e == epoch => {
                if seq == *s + 1 {
                    *s = seq;
                    out.push(Action::Fanout {
                        room,
                        frame,
                        accepted_us,
                    });
                } else if seq <= *s {
                    self.stats.stale_events += 1;
                } else {
                    self.stats.gaps += 1;
                    self.start_resync(&room, out);
                }
            }
            Feed::Live { owner, .. } if *owner == from => {
                // Same owner, new epoch: the room restarted at the owner. Repair from history.
                self.stats.gaps += 1;
                self.start_resync(&room, out);
            }
            _ => self.stats.stale_events += 1,
        }
    }

    /// Asks the room's current owner for everything after the feed's last seq; events are
    /// dropped until the answer arrives.
    fn start_resync(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let owner = self.owner_of(room);
        let token = self.token();
        let retry_at_us = self.deadline();
        let Some(r) = self.member_rooms.get_mut(room) else {
            return;
        };
        let (epoch, seq) = match &r.feed {
            Feed::Live { epoch, seq, .. } | Feed::Resyncing { epoch, seq, .. } => {
                (epoch.clone(), *seq)
            }
            Feed::Unregistered => return,
        };
        r.feed = Feed::Resyncing {
            owner: owner.clone(),
            token,
            epoch: epoch.clone(),
            seq,
            retry_at_us,
        };
        self.send(
            owner,
            PeerMsg::Subscribe {
                room: room.clone(),
                token,
                since: Some(seq),
                epoch: Some(epoch),
            },
            out,
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn finish_resync(
        &mut self,
        from: NodeId,
        room: RoomId,
        epoch: Epoch,
        seq: u64,
        history: Vec<HistEntry>,
        recovered: bool,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.member_rooms.get_mut(&room) else {
            return;
        };
        let Feed::Resyncing {
            epoch: old_epoch,
            seq: old_seq,
            ..
        } = &r.feed
        else {
            return;
        };
        let same_epoch = *old_epoch == epoch;
        let old_seq = *old_seq;
        if !same_epoch {
            let old_epoch = old_epoch.clone();
            r.past.retain(|(e, _)| *e != old_epoch);
            r.past.push((old_epoch, old_seq));
            if r.past.len() > PAST_EPOCHS {
                r.past.remove(0);
            }
        }
        // Where the subscribers stand in the epoch they are moving to: its last seq they got
        // if they followed it before, else nothing (it is new to them).
        let delivered = if same_epoch {
            old_seq
        } else {
            r.past
                .iter()
                .find(|(e, _)| *e == epoch)
                .map(|(_, s)| *s)
                .unwrap_or(0)
        };
        // Can the local subscribers continue without a gap? (With a mismatched epoch the owner
        // sent its whole history of the epoch, so `recovered` does not apply.)
        let complete = if same_epoch {
            recovered
        } else {
            seq <= delivered || history.first().is_some_and(|e| e.seq <= delivered + 1)
        };
        if complete {
            for e in history {
                if e.seq > delivered {
                    out.push(Action::Fanout {
                        room: room.clone(),
                        frame: e.frame,
                        accepted_us: e.accepted_us,
                    });
                }
            }
        } else {
            // Messages are gone for good: close the subscribers so they resume with `since` and
            // learn `recovered: false`, instead of silently skipping.
            for (_, h) in r.subs.drain(..) {
                self.stats.evictions += 1;
                out.push(Action::Evict {
                    to: h,
                    reason: EvictReason::Gap,
                });
            }
        }
        let seq = seq.max(delivered);
        r.feed = Feed::Live {
            owner: from,
            epoch,
            seq,
        };
        self.resend_parked_joins(&room, out);
        self.drop_room_if_unused(&room, out);
    }

    /// Sends the Subscribe of every parked join of `room` to the current owner.
    fn resend_parked_joins(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let owner = self.owner_of(room);
        let mut msgs = Vec::new();
        let mut next = self.next_token;
        if let Some(r) = self.member_rooms.get_mut(room) {
            for j in r.joins.iter_mut().filter(|j| j.sent.is_none()) {
                let token = next;
                next += 1;
                j.sent = Some((token, owner.clone()));
                msgs.push(PeerMsg::Subscribe {
                    room: room.clone(),
                    token,
                    since: j.since,
                    epoch: j.epoch.clone(),
                });
            }
        }
        self.next_token = next;
        for m in msgs {
            self.send(owner.clone(), m, out);
        }
    }

    pub(super) fn on_publish_ack(
        &mut self,
        room: RoomId,
        token: u64,
        seq: u64,
        out: &mut Vec<Action<H>>,
    ) {
        if let Some(p) = self.pending.remove(&token) {
            out.push(Action::Reply {
                to: p.handle,
                req: p.req,
                reply: Reply::Published { room, seq },
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_history_resp(
        &mut self,
        room: RoomId,
        token: u64,
        epoch: Epoch,
        seq: u64,
        history: Vec<HistEntry>,
        recovered: bool,
        out: &mut Vec<Action<H>>,
    ) {
        if let Some(p) = self.pending.remove(&token) {
            out.push(Action::Reply {
                to: p.handle,
                req: p.req,
                reply: Reply::History {
                    room,
                    messages: history.into_iter().map(|e| e.frame).collect(),
                    seq,
                    epoch,
                    recovered,
                },
            });
        }
    }

    pub(super) fn on_refused(
        &mut self,
        room: RoomId,
        token: u64,
        error: PeerError,
        out: &mut Vec<Action<H>>,
    ) {
        let text = match error {
            PeerError::NotOwner => "the room's owner is changing; retry",
            PeerError::Unavailable => "the room's owner node is unavailable; retry",
        };
        if let Some(p) = self.pending.remove(&token) {
            out.push(Action::Reply {
                to: p.handle,
                req: p.req,
                reply: unavailable(text),
            });
            return;
        }
        let now = self.now_us;
        let Some(r) = self.member_rooms.get_mut(&room) else {
            return;
        };
        if let Feed::Resyncing {
            token: t,
            retry_at_us,
            ..
        } = &mut r.feed
            && *t == token
        {
            // Retry on a later tick, when the views have likely converged.
            *retry_at_us = now;
            return;
        }
        if let Some(i) = r
            .joins
            .iter()
            .position(|j| j.sent.as_ref().is_some_and(|(t, _)| *t == token))
        {
            let j = r.joins.remove(i);
            out.push(Action::Reply {
                to: j.handle.clone(),
                req: j.req,
                reply: unavailable(text),
            });
            out.push(Action::JoinFailed {
                to: j.handle,
                room: room.clone(),
            });
            self.drop_room_if_unused(&room, out);
        }
    }

    // ---------------------------------------------------------------- membership and time

    /// Re-points every member room whose owner changed, and fails requests waiting on nodes
    /// that left.
    pub(super) fn members_changed_member_side(
        &mut self,
        departed: &[NodeId],
        out: &mut Vec<Action<H>>,
    ) {
        let rooms: Vec<RoomId> = self.member_rooms.keys().cloned().collect();
        for room in rooms {
            let owner = self.owner_of(&room);
            let mut resync = false;
            let mut old_owners: Vec<NodeId> = Vec::new();
            {
                let r = self.room_mut(&room);
                if let Feed::Live { owner: o, .. } | Feed::Resyncing { owner: o, .. } = &r.feed
                    && *o != owner
                {
                    old_owners.push(o.clone());
                    resync = true;
                }
                for j in r.joins.iter_mut() {
                    if let Some((_, o)) = &j.sent
                        && *o != owner
                    {
                        if !old_owners.contains(o) {
                            old_owners.push(o.clone());
                        }
                        j.sent = None;
                    }
                }
            }
            if resync || !old_owners.is_empty() {
                self.stats.owner_changes += 1;
            }
            // Withdraw interest from a previous owner that is still alive.
            for o in old_owners {
                if !departed.contains(&o) && self.is_member(&o) {
                    self.send(o, PeerMsg::Unsubscribe { room: room.clone() }, out);
                }
            }
            if resync {
                self.start_resync(&room, out);
            } else if !matches!(self.room_mut(&room).feed, Feed::Resyncing { .. }) {
                self.resend_parked_joins(&room, out);
            }
        }
        let failed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| departed.contains(&p.owner))
            .map(|(t, _)| *t)
            .collect();
        for t in failed {
            if let Some(p) = self.pending.remove(&t) {
                out.push(Action::Reply {
                    to: p.handle,
                    req: p.req,
                    reply: unavailable("the room's owner node left the cluster; retry"),
                });
            }
        }
    }

    /// The link to `node` was reset: resync rooms fed by it, re-send joins waiting on it, and
    /// fail publishes and reads waiting on it (their outcome is unknown: not acknowledged).
    pub(super) fn peer_reset(&mut self, node: &NodeId, out: &mut Vec<Action<H>>) {
        let rooms: Vec<RoomId> = self.member_rooms.keys().cloned().collect();
        for room in rooms {
            let mut resync = false;
            {
                let r = self.room_mut(&room);
                if let Feed::Live { owner, .. } | Feed::Resyncing { owner, .. } = &r.feed
                    && owner == node
                {
                    resync = true;
                }
                for j in r.joins.iter_mut() {
                    if j.sent.as_ref().is_some_and(|(_, o)| o == node) {
                        j.sent = None;
                    }
                }
            }
            if resync {
                self.start_resync(&room, out);
            } else if !matches!(self.room_mut(&room).feed, Feed::Resyncing { .. }) {
                self.resend_parked_joins(&room, out);
            }
        }
        let failed: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| &p.owner == node)
            .map(|(t, _)| *t)
            .collect();
        for t in failed {
            if let Some(p) = self.pending.remove(&t) {
                let what = match p.kind {
                    ReqKind::Publish => {
                        "the link to the room's owner was reset; the publish may or may not have been sequenced"
                    }
                    ReqKind::History => "the link to the room's owner was reset; retry",
                };
                out.push(Action::Reply {
                    to: p.handle,
                    req: p.req,
                    reply: unavailable(what),
                });
            }
        }
    }

    /// Times out requests and joins, and retries stalled resyncs.
    pub(super) fn tick_members(&mut self, out: &mut Vec<Action<H>>) {
        let now = self.now_us;
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_us <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            if let Some(p) = self.pending.remove(&t) {
                out.push(Action::Reply {
                    to: p.handle,
                    req: p.req,
                    reply: unavailable("the room's owner node did not answer in time; retry"),
                });
            }
        }
        let rooms: Vec<RoomId> = self.member_rooms.keys().cloned().collect();
        for room in rooms {
            let mut failed = Vec::new();
            let mut retry = false;
            {
                let r = self.room_mut(&room);
                let mut i = 0;
                while i < r.joins.len() {
                    if r.joins[i].deadline_us <= now {
                        failed.push(r.joins.remove(i));
                    } else {
                        i += 1;
                    }
                }
                if let Feed::Resyncing { retry_at_us, .. } = &r.feed
                    && *retry_at_us <= now
                {
                    retry = true;
                }
            }
            for j in failed {
                out.push(Action::Reply {
                    to: j.handle.clone(),
                    req: j.req,
                    reply: unavailable("the room's owner node did not answer in time; retry"),
                });
                out.push(Action::JoinFailed {
                    to: j.handle,
                    room: room.clone(),
                });
            }
            if retry {
                self.start_resync(&room, out);
            }
            self.drop_room_if_unused(&room, out);
        }
    }
}
