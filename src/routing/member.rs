//! The member half of routing: local subscribers, the feed from each room's owner, and
//! requests waiting for owners.
//!
//! While a room's ownership moves (drain, scale-out, a node rejoining), requests are never
//! failed for it: a refusal (`Refused { NotOwner }`, which means "not served") re-sends the
//! request at once to the node the refusal names, or — without a name — parks it until the
//! next view change or retry tick; only `request_timeout` ends the wait. A publish refused this
//! way was not sequenced, so re-sending cannot duplicate it.

use std::sync::Arc;

use bytestring::ByteString;

use super::message::{
    Event, HistoryReq, HistoryResp, PresenceEntry, PresenceReq, PresenceResp, Publish, PublishAck,
    Refused, Subscribe, SubscribeAck, Unsubscribe,
};
use super::presence::JoinPresence;
use super::{Action, EvictReason, PeerError, PeerMsg, Router, Subscribers};
use crate::ids::{ConnId, ConnName, Epoch, NodeId, RoomId, UserId};
use crate::protocol::encode::Reply;
use crate::protocol::{ErrorCode, ReqId};

/// This node's view of one room it has local subscribers (or joins in progress) for.
pub(super) struct MemberRoom<H> {
    /// Copy-on-write: `Fanout` actions share the list as it was when they were made.
    pub(super) subs: Subscribers<H>,
    joins: Vec<PendingJoin<H>>,
    feed: Feed,
    /// Epochs this node's subscribers followed before the current one, with the last seq
    /// delivered in each (newest last, at most [`PAST_EPOCHS`]). While views settle, a room can
    /// move back to an owner whose epoch the subscribers already saw part of: they continue it
    /// where they left it instead of seeing its messages twice.
    past: Vec<(Epoch, u64)>,
    /// Local connections in the room's presence set, with their entries (`presence.rs`).
    pub(super) presence: Vec<(ConnId, PresenceEntry)>,
    /// Local subscribers that get the room's presence changes.
    pub(super) presence_subs: Subscribers<H>,
}

impl<H> MemberRoom<H> {
    /// The node this node's feed of the room follows (or is resyncing with), if any.
    pub(super) fn feed_owner(&self) -> Option<NodeId> {
        match &self.feed {
            Feed::Live { owner, .. } | Feed::Resyncing { owner, .. } => Some(owner.clone()),
            Feed::Unregistered => None,
        }
    }
}

/// Past epochs remembered per member room.
const PAST_EPOCHS: usize = 8;
/// How long a request refused without a hint waits before it is re-sent (view changes re-send
/// sooner).
const RETRY_US: u64 = 200_000;
/// Re-sends straight to a hinted node per request, before it waits for the retry timer
/// instead (two nodes whose views disagree cannot bounce a request between them for long).
const MAX_REDIRECTS: u8 = 8;

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
    /// What the join asks of presence, applied when it completes.
    presence: JoinPresence,
    deadline_us: u64,
    /// `(token, owner)` of the Subscribe in flight, or `None` while parked (behind a resync,
    /// or until `retry_at_us` after a refusal).
    sent: Option<(u64, NodeId)>,
    retry_at_us: u64,
    redirects: u8,
}

/// A publish or history read waiting for the owner's reply.
pub(super) struct PendingReq<H> {
    handle: H,
    req: ReqId,
    room: RoomId,
    /// The node the request is in flight to, or `None` while parked until `retry_at_us`.
    owner: Option<NodeId>,
    retry_at_us: u64,
    redirects: u8,
    deadline_us: u64,
    kind: ReqKind,
}

/// A local connection's publish, as `Input::Publish` brings it.
pub(super) struct NewPublish {
    pub(super) from: ConnName,
    pub(super) user: Option<UserId>,
    pub(super) data: String,
    pub(super) key: Option<String>,
}

/// What a waiting request asks, kept so that it can be re-sent.
enum ReqKind {
    Publish {
        from: ConnName,
        user: Option<UserId>,
        data: ByteString,
        key: Option<ByteString>,
    },
    History {
        since: u64,
        limit: u64,
    },
    Presence,
}

impl ReqKind {
    fn to_msg(&self, room: &RoomId, token: u64) -> PeerMsg {
        match self {
            ReqKind::Publish {
                from,
                user,
                data,
                key,
            } => PeerMsg::Publish(Publish {
                room: room.clone(),
                token,
                from: from.clone(),
                user: user.clone(),
                data: data.clone(),
                key: key.clone(),
            }),
            ReqKind::History { since, limit } => PeerMsg::HistoryReq(HistoryReq {
                room: room.clone(),
                token,
                since: *since,
                limit: *limit,
            }),
            ReqKind::Presence => PeerMsg::PresenceReq(PresenceReq {
                room: room.clone(),
                token,
            }),
        }
    }
}

fn unavailable(msg: &str) -> Reply {
    Reply::error(ErrorCode::Unavailable, msg)
}

/// The reply to a request whose room its owner did not create (`PeerError::RoomLimit`).
fn room_limit(room: &RoomId) -> Reply {
    Reply::error(
        ErrorCode::RoomLimit,
        format!(
            "room {room} does not exist and its owner node has max_rooms rooms: \
             it was not created; retry later"
        ),
    )
}

/// Answers a join that will not complete with `reply` (`unavailable` unless the room was
/// refused), and the connection forgets the room.
fn fail_join<H: Clone>(j: PendingJoin<H>, room: &RoomId, reply: Reply, out: &mut Vec<Action<H>>) {
    out.push(Action::Reply {
        to: j.handle.clone(),
        req: j.req,
        reply,
    });
    out.push(Action::JoinFailed {
        to: j.handle,
        room: room.clone(),
    });
}

impl<H: Clone> Router<H> {
    // ---------------------------------------------------------------- local requests

    /// A local join; `(since, epoch, presence)` as `Input::Join` has them.
    pub(super) fn join(
        &mut self,
        conn: ConnId,
        handle: H,
        room: RoomId,
        (since, epoch, presence): (Option<u64>, Option<Epoch>, JoinPresence),
        req: ReqId,
        out: &mut Vec<Action<H>>,
    ) {
        let owner = self.route(&room);
        let deadline_us = self.deadline();
        let r = self
            .member_rooms
            .entry(room.clone())
            .or_insert_with(|| MemberRoom {
                subs: Arc::new(Vec::new()),
                joins: Vec::new(),
                feed: Feed::Unregistered,
                past: Vec::new(),
                presence: Vec::new(),
                presence_subs: Arc::new(Vec::new()),
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
                    room: room.clone(),
                    seq: *seq,
                    epoch: epoch.clone(),
                    recovered: None,
                },
            });
            if !r.subs.iter().any(|(c, _)| *c == conn) {
                Arc::make_mut(&mut r.subs).push((conn, handle.clone()));
            }
            self.local_presence_joined(&room, conn, handle, presence, out);
            return;
        }
        let parked = matches!(r.feed, Feed::Resyncing { .. });
        let mut pj = PendingJoin {
            conn,
            handle,
            since,
            epoch,
            req,
            presence,
            deadline_us,
            sent: None,
            retry_at_us: 0,
            redirects: 0,
        };
        if !parked {
            let token = self.token();
            pj.sent = Some((token, owner.clone()));
            let msg = PeerMsg::Subscribe(Subscribe {
                room: room.clone(),
                token,
                since: pj.since,
                epoch: pj.epoch.clone(),
            });
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
        self.local_presence_left(&room, conn, out);
        if let Some(r) = self.member_rooms.get_mut(&room) {
            if r.subs.iter().any(|(c, _)| *c == conn) {
                Arc::make_mut(&mut r.subs).retain(|(c, _)| *c != conn);
            }
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
        let current = self.route(room);
        if !owners.contains(&current) {
            owners.push(current);
        }
        for o in owners {
            if self.is_member(&o) {
                self.send(
                    o,
                    PeerMsg::Unsubscribe(Unsubscribe { room: room.clone() }),
                    out,
                );
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn publish(
        &mut self,
        handle: H,
        room: RoomId,
        p: NewPublish,
        req: ReqId,
        out: &mut Vec<Action<H>>,
    ) {
        let kind = ReqKind::Publish {
            from: p.from,
            user: p.user,
            data: ByteString::from(p.data),
            key: p.key.map(ByteString::from),
        };
        self.request(handle, room, req, kind, out);
    }

    pub(super) fn presence_query(
        &mut self,
        handle: H,
        room: RoomId,
        req: ReqId,
        out: &mut Vec<Action<H>>,
    ) {
        self.request(handle, room, req, ReqKind::Presence, out);
    }

    /// The owner's answer to a presence read.
    pub(super) fn on_presence_resp(&mut self, resp: PresenceResp, out: &mut Vec<Action<H>>) {
        let PresenceResp {
            room,
            token,
            members,
        } = resp;
        if let Some(p) = self.take_pending(token) {
            out.push(Action::Reply {
                to: p.handle,
                req: p.req,
                reply: Reply::Presence { room, members },
            });
        }
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
        self.request(handle, room, req, ReqKind::History { since, limit }, out);
    }

    /// Sends a publish or history read to the room's owner and waits for the reply.
    fn request(
        &mut self,
        handle: H,
        room: RoomId,
        req: ReqId,
        kind: ReqKind,
        out: &mut Vec<Action<H>>,
    ) {
        let owner = self.route(&room);
        let token = self.token();
        let msg = kind.to_msg(&room, token);
        // A publish waits behind earlier publishes of the room that are being redirected, so
        // that the owner sequences this node's publishes in the order they were made.
        let publish = matches!(kind, ReqKind::Publish { .. });
        let held = publish && self.publishes_moving(&room, &owner);
        if publish {
            self.publishes_by_room
                .entry(room.clone())
                .or_default()
                .push(token);
        }
        self.pending.insert(
            token,
            PendingReq {
                handle,
                req,
                room,
                owner: (!held).then(|| owner.clone()),
                retry_at_us: 0,
                redirects: 0,
                deadline_us: self.deadline(),
                kind,
            },
        );
        if !held {
            self.send(owner, msg, out);
        }
    }

    /// True while publishes for `room` are parked, or out at a node other than `to`.
    fn publishes_moving(&self, room: &RoomId, to: &NodeId) -> bool {
        self.publishes_by_room.get(room).is_some_and(|tokens| {
            tokens.iter().any(|t| {
                self.pending
                    .get(t)
                    .is_some_and(|p| p.owner.as_ref().is_none_or(|o| o != to))
            })
        })
    }

    /// Removes a pending request (and its entry in the per-room publish index).
    fn take_pending(&mut self, token: u64) -> Option<PendingReq<H>> {
        let p = self.pending.remove(&token)?;
        if matches!(p.kind, ReqKind::Publish { .. })
            && let Some(tokens) = self.publishes_by_room.get_mut(&p.room)
        {
            tokens.retain(|t| *t != token);
            if tokens.is_empty() {
                self.publishes_by_room.remove(&p.room);
            }
        }
        Some(p)
    }

    /// Sends the parked publishes of `room`, in the order they were made, once none is still
    /// out at a node other than where the room is now (its refusal is yet to come back).
    fn release_publishes(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let to = self.route(room);
        let mut parked: Vec<u64> = Vec::new();
        let tokens = self
            .publishes_by_room
            .get(room)
            .cloned()
            .unwrap_or_default();
        for t in &tokens {
            let Some(p) = self.pending.get(t) else {
                continue;
            };
            match &p.owner {
                Some(o) if *o != to => return,
                Some(_) => {}
                None => parked.push(*t),
            }
        }
        parked.sort_unstable();
        for t in parked {
            self.resend_request(t, out);
        }
    }

    /// Re-sends a parked request to where its room is now.
    fn resend_request(&mut self, token: u64, out: &mut Vec<Action<H>>) {
        let Some(p) = self.pending.get(&token) else {
            return;
        };
        let owner = self.route(&p.room);
        let msg = p.kind.to_msg(&p.room, token);
        if let Some(p) = self.pending.get_mut(&token) {
            p.owner = Some(owner.clone());
        }
        self.stats.retries += 1;
        self.send(owner, msg, out);
    }

    /// Re-sends every parked request and join whose time has come (`force`: all of them, the
    /// view changed).
    fn resend_parked(&mut self, force: bool, out: &mut Vec<Action<H>>) {
        let now = self.now_us;
        let mut due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                matches!(p.kind, ReqKind::History { .. })
                    && p.owner.is_none()
                    && (force || p.retry_at_us <= now)
            })
            .map(|(t, _)| *t)
            .collect();
        due.sort_unstable();
        for t in due {
            self.resend_request(t, out);
        }
        let mut publish_rooms: Vec<RoomId> = self
            .pending
            .values()
            .filter(|p| matches!(p.kind, ReqKind::Publish { .. }) && p.owner.is_none())
            .map(|p| p.room.clone())
            .collect();
        publish_rooms.sort();
        publish_rooms.dedup();
        for room in publish_rooms {
            self.release_publishes(&room, out);
        }
        let rooms: Vec<RoomId> = self
            .member_rooms
            .iter()
            .filter(|(_, r)| {
                !matches!(r.feed, Feed::Resyncing { .. })
                    && r.joins
                        .iter()
                        .any(|j| j.sent.is_none() && (force || j.retry_at_us <= now))
            })
            .map(|(room, _)| room.clone())
            .collect();
        for room in rooms {
            self.resend_parked_joins(&room, out);
        }
    }

    // ---------------------------------------------------------------- owner replies

    pub(super) fn on_subscribe_ack(
        &mut self,
        from: NodeId,
        ack: SubscribeAck,
        out: &mut Vec<Action<H>>,
    ) {
        let Some(r) = self.member_rooms.get_mut(&ack.room) else {
            return; // We left meanwhile and already sent Unsubscribe.
        };
        // A resync's acknowledgement?
        if let Feed::Resyncing {
            owner, token: t, ..
        } = &r.feed
            && *t == ack.token
            && *owner == from
        {
            self.finish_resync(from, ack, out);
            return;
        }
        let SubscribeAck {
            room,
            token,
            epoch,
            seq,
            history,
            recovered,
        } = ack;
        let Some(i) = r.joins.iter().position(|j| {
            j.sent
                .as_ref()
                .is_some_and(|(t, o)| *t == token && *o == from)
        }) else {
            return; // A join that was re-sent elsewhere, or left.
        };
        let consistent = match &mut r.feed {
            Feed::Unregistered => {
                r.feed = Feed::Live {
                    owner: from.clone(),
                    epoch: epoch.clone(),
                    seq,
                };
                true
            }
            // The owner may have changed with the room's state (same epoch): the feed moves to
            // it when it stands exactly where the acknowledgement says.
            Feed::Live {
                owner,
                epoch: e,
                seq: s,
            } if *e == epoch && *s == seq => {
                *owner = from.clone();
                true
            }
            Feed::Live { .. } | Feed::Resyncing { .. } => false,
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
                room: room.clone(),
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
            Arc::make_mut(&mut r.subs).push((j.conn, j.handle.clone()));
        }
        // The feed is live with `from`: it learns this node's set, then this connection.
        self.sync_local_presence(&room, from, out);
        self.local_presence_joined(&room, j.conn, j.handle, j.presence, out);
    }

    pub(super) fn on_event(&mut self, from: NodeId, ev: Event, out: &mut Vec<Action<H>>) {
        let Event {
            room,
            epoch,
            seq,
            accepted_us,
            frame,
        } = ev;
        let Some(r) = self.member_rooms.get_mut(&room) else {
            // Nobody here wants this room (our Unsubscribe was lost, or we restarted): tell the
            // sender so it stops.
            self.stats.stale_events += 1;
            self.send(from, PeerMsg::Unsubscribe(Unsubscribe { room }), out);
            return;
        };
        let mut resync_at: Option<NodeId> = None;
        // The room moved with its state: its new owner learns this node's presence set too.
        let mut resync_presence = false;
        match &mut r.feed {
            Feed::Live {
                owner,
                epoch: e,
                seq: s,
            } if *e == epoch => {
                if seq == *s + 1 {
                    // The next event of the same epoch continues the feed, also from another
                    // node: the room moved with its state, maybe before this node's view did.
                    if *owner != from {
                        *owner = from.clone();
                        let until = self.now_us + super::owner::MOVED_TTL_US;
                        self.hints.insert(room.clone(), (from.clone(), until));
                        resync_presence = true;
                    }
                    *s = seq;
                    out.push(Action::Fanout {
                        subs: r.subs.clone(),
                        frame,
                        accepted_us,
                    });
                } else if seq <= *s {
                    self.stats.stale_events += 1;
                } else {
                    // Events are missing: repair from the node that sent this one (it holds
                    // the epoch now).
                    self.stats.gaps += 1;
                    resync_at = Some(from.clone());
                }
            }
            Feed::Live { owner, .. } if *owner == from => {
                // Same owner, new epoch: the room restarted at the owner. Repair from history.
                self.stats.gaps += 1;
                resync_at = Some(from.clone());
            }
            _ => self.stats.stale_events += 1,
        }
        if resync_presence {
            self.sync_local_presence(&room, from.clone(), out);
        }
        if let Some(node) = resync_at {
            if node != self.owner_of(&room) {
                self.set_hint(&room, node);
            }
            self.start_resync(&room, out);
        }
    }

    /// Asks the room's current owner for everything after the feed's last seq; events are
    /// dropped until the answer arrives.
    pub(super) fn start_resync(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let owner = self.route(room);
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
            PeerMsg::Subscribe(Subscribe {
                room: room.clone(),
                token,
                since: Some(seq),
                epoch: Some(epoch),
            }),
            out,
        );
    }

    fn finish_resync(&mut self, from: NodeId, ack: SubscribeAck, out: &mut Vec<Action<H>>) {
        let SubscribeAck {
            room,
            epoch,
            seq,
            history,
            recovered,
            ..
        } = ack;
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
                        subs: r.subs.clone(),
                        frame: e.frame,
                        accepted_us: e.accepted_us,
                    });
                }
            }
        } else {
            // Messages are gone for good: close the subscribers so they resume with `since` and
            // learn `recovered: false`, instead of silently skipping.
            for (_, h) in std::mem::take(&mut r.subs).iter().cloned() {
                self.stats.evictions += 1;
                out.push(Action::Evict {
                    to: h,
                    reason: EvictReason::Gap,
                });
            }
        }
        let seq = seq.max(delivered);
        r.feed = Feed::Live {
            owner: from.clone(),
            epoch,
            seq,
        };
        self.sync_local_presence(&room, from, out);
        self.resend_parked_joins(&room, out);
        self.drop_room_if_unused(&room, out);
    }

    /// Sends the Subscribe of every parked join of `room` to where the room is now.
    fn resend_parked_joins(&mut self, room: &RoomId, out: &mut Vec<Action<H>>) {
        let owner = self.route(room);
        let mut msgs = Vec::new();
        let mut next = self.next_token;
        if let Some(r) = self.member_rooms.get_mut(room) {
            for j in r.joins.iter_mut().filter(|j| j.sent.is_none()) {
                let token = next;
                next += 1;
                j.sent = Some((token, owner.clone()));
                msgs.push(PeerMsg::Subscribe(Subscribe {
                    room: room.clone(),
                    token,
                    since: j.since,
                    epoch: j.epoch.clone(),
                }));
            }
        }
        self.next_token = next;
        for m in msgs {
            self.send(owner.clone(), m, out);
        }
    }

    pub(super) fn on_publish_ack(&mut self, ack: PublishAck, out: &mut Vec<Action<H>>) {
        let PublishAck {
            room,
            token,
            seq,
            epoch,
        } = ack;
        if let Some(p) = self.take_pending(token) {
            out.push(Action::Reply {
                to: p.handle,
                req: p.req,
                reply: Reply::Published {
                    room: room.clone(),
                    seq,
                    epoch,
                },
            });
            self.release_publishes(&room, out);
        }
    }

    pub(super) fn on_history_resp(&mut self, resp: HistoryResp, out: &mut Vec<Action<H>>) {
        let HistoryResp {
            room,
            token,
            epoch,
            seq,
            history,
            recovered,
        } = resp;
        if let Some(p) = self.take_pending(token) {
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

    /// A request was not served. `NotOwner` means the room is moving: the request is re-sent
    /// at once to the node `hint` names, or parked until the view changes or `RETRY_US`
    /// passed — never failed before its deadline. `Unavailable` (an overloaded owner) fails it,
    /// and so does `RoomLimit` (the room does not exist and its owner would not create it),
    /// answered `room_limit`. A resync refused either way is retried on a later tick (its
    /// room has subscribers here; they wait for the owner to have the room).
    pub(super) fn on_refused(&mut self, from: NodeId, r: Refused, out: &mut Vec<Action<H>>) {
        let Refused {
            room,
            token,
            error,
            owner: hint,
        } = r;
        let moving = error == PeerError::NotOwner;
        // A hint names the node the room was handed to; the refusing node has a link to it
        // even when this node's view has not met it yet.
        let hint = hint.filter(|h| *h != from);
        if moving {
            match &hint {
                Some(h) => self.set_hint(&room, h.clone()),
                // The node a hint sent us to does not have the room: forget the hint, the
                // view decides again.
                None => {
                    if self.hints.get(&room).is_some_and(|(n, _)| *n == from) {
                        self.hints.remove(&room);
                    }
                }
            }
        }
        let retry_at = self.now_us + RETRY_US;
        if let Some(p) = self.pending.get_mut(&token) {
            let publish = matches!(p.kind, ReqKind::Publish { .. });
            // A publish is re-sent only when the refusing node names where the room went: it
            // keeps refusing the room, so every publish out there comes back, in order, and
            // goes on in that order. Without a name, that node may become the owner before the
            // next publish arrives; re-sending this one later could put it after that one.
            let follow = moving && (hint.is_some() || !publish) && p.redirects < MAX_REDIRECTS;
            if !follow {
                let reply = if error == PeerError::RoomLimit {
                    room_limit(&room)
                } else if !moving {
                    unavailable("the room's owner node is overloaded; retry")
                } else if publish {
                    unavailable(
                        "the room's owner is changing; the publish was not sequenced; retry",
                    )
                } else {
                    unavailable("the room's owner is changing; retry")
                };
                if let Some(p) = self.take_pending(token) {
                    out.push(Action::Reply {
                        to: p.handle,
                        req: p.req,
                        reply,
                    });
                }
                if publish {
                    self.release_publishes(&room, out);
                }
                return;
            }
            p.owner = None;
            p.retry_at_us = retry_at;
            if publish {
                p.redirects += 1;
                self.release_publishes(&room, out);
            } else if hint.is_some() {
                p.redirects += 1;
                self.resend_request(token, out);
            }
            return;
        }
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
            if hint.is_some() {
                self.start_resync(&room, out);
            } else {
                // Retry on a later tick, when the views have likely converged.
                *retry_at_us = retry_at;
            }
            return;
        }
        let Some(i) = r
            .joins
            .iter()
            .position(|j| j.sent.as_ref().is_some_and(|(t, _)| *t == token))
        else {
            return;
        };
        if moving {
            let j = &mut r.joins[i];
            j.sent = None;
            j.retry_at_us = retry_at;
            let resyncing = matches!(r.feed, Feed::Resyncing { .. });
            if hint.is_some() && j.redirects < MAX_REDIRECTS && !resyncing {
                j.redirects += 1;
                self.resend_parked_joins(&room, out);
            }
            return;
        }
        let j = r.joins.remove(i);
        let reply = if error == PeerError::RoomLimit {
            room_limit(&room)
        } else {
            unavailable("the room's owner node is overloaded; retry")
        };
        fail_join(j, &room, reply, out);
        self.drop_room_if_unused(&room, out);
    }

    // ---------------------------------------------------------------- membership and time

    /// Re-points every member room whose owner changed, re-sends what waited for a moving
    /// room, and fails publishes waiting on nodes that left (their outcome is unknown).
    pub(super) fn members_changed_member_side(
        &mut self,
        departed: &[NodeId],
        out: &mut Vec<Action<H>>,
    ) {
        let rooms: Vec<RoomId> = self.member_rooms.keys().cloned().collect();
        for room in rooms {
            let owner = self.route(&room);
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
                    self.send(
                        o,
                        PeerMsg::Unsubscribe(Unsubscribe { room: room.clone() }),
                        out,
                    );
                }
            }
            if resync {
                self.start_resync(&room, out);
            }
        }
        self.fail_requests_to(departed, "the room's owner node left the cluster", out);
        // Requests in flight to a node that is still live wait for its answer; parked ones go
        // where the new view says.
        self.resend_parked(true, out);
    }

    /// Fails the publishes in flight to any of `nodes` (whether they were sequenced is
    /// unknown) and parks the history reads (re-sent, they are harmless).
    fn fail_requests_to(&mut self, nodes: &[NodeId], why: &str, out: &mut Vec<Action<H>>) {
        let affected: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.owner.as_ref().is_some_and(|o| nodes.contains(o)))
            .map(|(t, _)| *t)
            .collect();
        for t in affected {
            let Some(p) = self.pending.get_mut(&t) else {
                continue;
            };
            if matches!(p.kind, ReqKind::History { .. }) {
                p.owner = None;
                p.retry_at_us = 0;
                continue;
            }
            if let Some(p) = self.take_pending(t) {
                out.push(Action::Reply {
                    to: p.handle,
                    req: p.req,
                    reply: unavailable(&format!(
                        "{why}; the publish may or may not have been sequenced"
                    )),
                });
            }
        }
    }

    /// The link to `node` was reset: resync rooms fed by it, re-send joins waiting on it, and
    /// fail publishes waiting on it (their outcome is unknown: not acknowledged).
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
                        j.retry_at_us = 0;
                    }
                }
            }
            if resync {
                self.start_resync(&room, out);
            }
        }
        self.fail_requests_to(
            std::slice::from_ref(node),
            "the link to the room's owner was reset",
            out,
        );
        self.resend_parked(false, out);
    }

    /// Every followed room resyncs from its last seq (the owner side's registrations may be
    /// gone: this node was fenced, or it is fenced no more).
    pub(super) fn resync_all(&mut self, out: &mut Vec<Action<H>>) {
        let rooms: Vec<RoomId> = self
            .member_rooms
            .iter()
            .filter(|(_, r)| !matches!(r.feed, Feed::Unregistered))
            .map(|(room, _)| room.clone())
            .collect();
        for room in rooms {
            self.start_resync(&room, out);
        }
    }

    /// Times out requests and joins, retries parked ones, and retries stalled resyncs.
    pub(super) fn tick_members(&mut self, out: &mut Vec<Action<H>>) {
        let now = self.now_us;
        self.hints.retain(|_, (_, until)| *until > now);
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline_us <= now)
            .map(|(t, _)| *t)
            .collect();
        for t in expired {
            if let Some(p) = self.take_pending(t) {
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
                let why = "the room's owner node did not answer in time; retry";
                fail_join(j, &room, unavailable(why), out);
            }
            if retry {
                self.start_resync(&room, out);
            }
            self.drop_room_if_unused(&room, out);
        }
        self.resend_parked(false, out);
    }
}

#[cfg(test)]
impl<H: Clone> Router<H> {
    /// Test-only: this node's member and owner state of `room`, for failure reports.
    pub(super) fn debug_room(&self, room: &RoomId) -> String {
        let member = self.member_rooms.get(room).map(|r| {
            format!(
                "feed {:?} subs {} joins {:?}",
                r.feed,
                r.subs.len(),
                r.joins.iter().map(|j| j.sent.clone()).collect::<Vec<_>>()
            )
        });
        format!(
            "{}: member {:?}; owner {}; hint {:?}",
            self.me,
            member,
            self.debug_owned(room),
            self.hints.get(room)
        )
    }
}
