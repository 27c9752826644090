//! The server API's work: requests from a backend (not a client connection) turned into the
//! same room inputs a client's requests become.
//!
//! A backend publishes and reads history through the room's owner exactly like a client: the
//! request enters the room shards with a [`ConnHandle::api`] handle — a connection without a
//! socket, whose one reply comes back on a oneshot channel — so ordering, replication, the
//! idempotency key and every error code are the client protocol's. The HTTP layer
//! (`http::api`) only checks the API key, parses JSON and maps these replies to responses.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::conn::ConnHandle;
use crate::ids::{ConnId, ConnName, NodeId, RoomId, UserId};
use crate::internode::Control;
use crate::node::NodeContext;
use crate::protocol::encode::Reply;
use crate::protocol::{ErrorCode, ReqId};
use crate::routing::Input;

/// Rooms one broadcast may name at most.
pub const MAX_BROADCAST_ROOMS: usize = 1000;

/// Sends `make(handle)` to the room shards and waits for its reply (at most the node's
/// `request_timeout` and a second: the router answers every request by then).
async fn ask(node: &NodeContext, make: impl FnOnce(ConnHandle) -> Input<ConnHandle>) -> Reply {
    let (handle, rx) = ConnHandle::api();
    if node.shards.try_send(make(handle)).is_err() {
        return Reply::error(ErrorCode::Unavailable, "node overloaded; retry");
    }
    let limit = node.config.request_timeout + Duration::from_secs(1);
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(reply)) => reply,
        _ => Reply::error(
            ErrorCode::Unavailable,
            "no answer from the room's owner in time; the outcome is unknown (retry with the same key)",
        ),
    }
}

/// Publishes raw JSON `data` to `room` through its owner (`Reply::Published` or an error).
pub async fn publish(node: &NodeContext, room: RoomId, data: String, key: Option<String>) -> Reply {
    let from = ConnName::new(&node.node_id, ConnId::next());
    ask(node, |handle| Input::Publish {
        handle,
        from,
        user: None,
        room,
        data,
        key,
        req: ReqId::NONE,
    })
    .await
}

/// Publishes the same `data` to every room in `rooms`, concurrently; one reply per room, in
/// the order given.
pub async fn broadcast(node: &Arc<NodeContext>, rooms: Vec<RoomId>, data: String) -> Vec<Reply> {
    let all = rooms.into_iter().map(|room| {
        let node = node.clone();
        let data = data.clone();
        async move { publish(&node, room, data, None).await }
    });
    futures_util::future::join_all(all).await
}

/// Reads `room`'s presence set through its owner (`Reply::Presence` or an error).
pub async fn presence(node: &NodeContext, room: RoomId) -> Reply {
    ask(node, |handle| Input::Presence {
        handle,
        room,
        req: ReqId::NONE,
    })
    .await
}

/// Rooms one page of `GET /api/rooms` lists at most.
pub const MAX_ROOMS_PAGE: usize = 1000;

/// One page of the cluster's rooms with subscribers.
pub struct RoomsPage {
    /// Rooms in name order with their subscriber counts, summed over every node.
    pub rooms: Vec<(RoomId, u64)>,
    /// Where the next page starts (the last room listed), if there may be more.
    pub cursor: Option<RoomId>,
    /// Nodes that did not answer in time (their subscribers are not counted).
    pub missing: Vec<NodeId>,
}

/// Lists the cluster's rooms with subscribers whose names start with `prefix`, after
/// `cursor`, `limit` at most: this node's own, and every live peer's, asked over the internode
/// links (`Control::RoomsQuery`) and merged. Each node answers with its first `limit` rooms
/// after the cursor, so the first `limit` of the merge are exact.
pub async fn rooms(node: &NodeContext, prefix: &str, cursor: &str, limit: usize) -> RoomsPage {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let id = NEXT.fetch_add(1, Ordering::Relaxed);
    let limit = limit.clamp(1, MAX_ROOMS_PAGE);
    let peers: Vec<NodeId> = node
        .views
        .borrow()
        .live()
        .filter(|m| m.id != node.node_id)
        .map(|m| m.id.clone())
        .collect();
    let (tx, mut rx) = tokio::sync::mpsc::channel(peers.len().max(1));
    node.control_replies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(id, tx);
    for p in &peers {
        node.peers.send_control(
            p,
            Control::RoomsQuery {
                id,
                prefix: prefix.to_string(),
                after: cursor.to_string(),
                limit: limit as u32,
            },
        );
    }
    let mut lists = vec![node.shards.local_rooms(prefix, cursor, limit).await];
    let deadline = tokio::time::Instant::now() + node.config.request_timeout;
    let mut answered: Vec<NodeId> = Vec::new();
    while answered.len() < peers.len() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((from, Control::RoomsReply { rooms, .. }))) => {
                if peers.contains(&from) && !answered.contains(&from) {
                    lists.push(rooms);
                    answered.push(from);
                }
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => break,
        }
    }
    node.control_replies
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(&id);
    let full = lists.iter().any(|l| l.len() >= limit);
    let mut merged: std::collections::BTreeMap<RoomId, u64> = Default::default();
    for (room, n) in lists.into_iter().flatten() {
        *merged.entry(room).or_default() += n;
    }
    let more = full || merged.len() > limit;
    let rooms: Vec<(RoomId, u64)> = merged.into_iter().take(limit).collect();
    let cursor = if more {
        rooms.last().map(|(r, _)| r.clone())
    } else {
        None
    };
    let missing = peers
        .into_iter()
        .filter(|p| !answered.contains(p))
        .collect();
    RoomsPage {
        rooms,
        cursor,
        missing,
    }
}

/// Longest `reason` of a disconnect, in bytes.
pub const MAX_REASON_BYTES: usize = 256;

/// Closes every connection of `user` on this node now, and asks every other node to do the
/// same (fire and forget, over the internode links: a node whose link is down misses it).
/// Returns how many connections were closed here.
pub fn disconnect(node: &NodeContext, user: UserId, reason: String) -> usize {
    let here = node.conns.close_user(&user, &reason);
    node.peers
        .broadcast_control(Control::Disconnect { user, reason });
    here
}

/// Reads `room`'s history after `since`, at most `limit` messages (capped by
/// `history_max_messages`).
pub async fn history(node: &NodeContext, room: RoomId, since: u64, limit: u64) -> Reply {
    let limit = limit.clamp(1, node.config.history_max_messages as u64);
    ask(node, |handle| Input::History {
        handle,
        room,
        since,
        limit,
        req: ReqId::NONE,
    })
    .await
}
