//! The server API's work: requests from a backend (not a client connection) turned into the
//! same room inputs a client's requests become.
//!
//! A backend publishes and reads history through the room's owner exactly like a client: the
//! request enters the room shards with a [`ConnHandle::api`] handle — a connection without a
//! socket, whose one reply comes back on a oneshot channel — so ordering, replication, the
//! idempotency key and every error code are the client protocol's. The HTTP layer
//! (`http::api`) only checks the API key, parses JSON and maps these replies to responses.

use std::sync::Arc;
use std::time::Duration;

use crate::conn::ConnHandle;
use crate::ids::{ConnId, ConnName, RoomId, UserId};
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
