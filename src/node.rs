//! What a running node is, for everything that serves its clients: its identity and config,
//! its room shards, its connections, readiness flags, the membership views and the peers.
//!
//! `server` builds one [`NodeContext`] and hands it to the HTTP routes and connection actors.
//! It is its own module (not part of `server`) so that those layers depend on what a node *is*
//! without reaching up to the code that wires and runs it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::Recipient;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::auth::{ApiKeys, Verifier};
use crate::cluster::{ClusterView, Membership};
use crate::config::Config;
use crate::conn::CloseNow;
use crate::delivery::Workers;
use crate::ids::{ConnId, NodeId, UserId};
use crate::internode::{Control, Peers};
use crate::metrics as m;
use crate::protocol::CloseReason;
use crate::rooms::Shards;
use crate::socket::frame;
use crate::socket::outbox::{FrameKind, Outbox};

/// The live connections of this node: for the connection count, `max_connections` and
/// closing everyone on shutdown. Touched on connect and disconnect only.
#[derive(Default)]
pub struct ConnRegistry {
    conns: Mutex<HashMap<ConnId, Registered>>,
    count: AtomicUsize,
}

/// One registered connection: its actor, its outbox, and its user once authenticated.
struct Registered {
    /// The connection's actor (`None` for an SSE connection: closing its outbox ends it).
    actor: Option<Recipient<CloseNow>>,
    outbox: Outbox,
    user: Option<UserId>,
}

impl ConnRegistry {
    pub fn register(&self, id: ConnId, actor: Option<Recipient<CloseNow>>, outbox: Outbox) {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        g.insert(
            id,
            Registered {
                actor,
                outbox,
                user: None,
            },
        );
        self.count.store(g.len(), Ordering::Release);
        m::connections(1.0);
    }

    pub fn unregister(&self, id: ConnId) {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if g.remove(&id).is_some() {
            m::connections(-1.0);
        }
        self.count.store(g.len(), Ordering::Release);
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames and bytes queued in every connection's outbox (one walk, under the lock; for
    /// `/metrics`).
    pub fn queued(&self) -> (u64, u64) {
        let g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        g.values().fold((0, 0), |(f, b), r| {
            let (rf, rb) = r.outbox.queued();
            (f + rf as u64, b + rb as u64)
        })
    }

    /// Queues a notice for every connection (e.g. the reconnect hint of a drain).
    pub fn send_all(&self, frame: bytestring::ByteString) {
        // One encoded frame, shared by every connection.
        let bytes = frame::text(&frame);
        let g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for r in g.values() {
            let _ = r.outbox.shared(bytes.clone(), FrameKind::Control);
        }
    }

    /// Starts closing every connection with `reason`.
    pub fn close_all(&self, reason: CloseReason) {
        let g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        for r in g.values() {
            r.outbox.close(reason);
            // One message per connection, once: bounded by the connection count.
            if let Some(a) = &r.actor {
                a.do_send(CloseNow(reason));
            }
        }
    }

    /// Records the user a connection authenticated as (for `close_user`).
    pub fn set_user(&self, id: ConnId, user: UserId) {
        let mut g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = g.get_mut(&id) {
            r.user = Some(user);
        }
    }

    /// Closes every connection of `user` with 4403 `disconnected`, after a
    /// `{"type":"disconnect","reason":R}` frame; returns how many.
    pub fn close_user(&self, user: &UserId, reason: &str) -> usize {
        let bytes = frame::text(&crate::protocol::encode::disconnect(reason));
        let g = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let mut n = 0;
        for r in g.values().filter(|r| r.user.as_ref() == Some(user)) {
            let _ = r.outbox.shared(bytes.clone(), FrameKind::Control);
            r.outbox.close(CloseReason::Disconnected);
            if let Some(a) = &r.actor {
                a.do_send(CloseNow(CloseReason::Disconnected));
            }
            n += 1;
        }
        n
    }
}

/// Everything a request handler or connection actor needs from its node.
pub struct NodeContext {
    pub node_id: NodeId,
    pub config: Arc<Config>,
    pub shards: Shards,
    /// The connection worker threads, as the shards hand them deliveries.
    pub workers: Arc<Workers>,
    pub conns: ConnRegistry,
    /// False once shutdown began: `/readyz` says 503 and `/ws` refuses upgrades.
    pub accepting: AtomicBool,
    /// True once the node has met the cluster (or waited long enough): `/readyz` needs it.
    pub cluster_ready: AtomicBool,
    pub metrics: PrometheusHandle,
    /// The advertised HTTP address (`host:port`).
    pub http_addr: String,
    /// The advertised cluster address (`host:port`).
    pub cluster_addr: String,
    /// The membership views (this node's own view of the cluster).
    pub views: watch::Receiver<Arc<ClusterView>>,
    /// Wakes the membership follower to re-apply the view (drain started).
    pub view_nudge: tokio::sync::Notify,
    pub peers: Peers,
    pub membership: Membership,
    pub started: Instant,
    /// Verifies client tokens (`None` when `auth = off`).
    pub verifier: Option<Verifier>,
    /// Keys of the HTTP server API (`None`: no `api_keys_file`, the API is off).
    pub api_keys: Option<ApiKeys>,
    /// Server API queries to peers waiting for their answers, by query id (`api::rooms`).
    /// Bounded by the peers asked: a reply past that is dropped.
    pub control_replies: Mutex<HashMap<u64, tokio::sync::mpsc::Sender<(NodeId, Control)>>>,
    /// Who may connect: per-IP counts and handshakes in progress (`crate::admission`).
    pub admission: crate::admission::Admission,
    /// The demo and dashboard pages and their static files (`crate::assets`).
    pub assets: crate::assets::Assets,
}

impl NodeContext {
    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    pub fn is_ready(&self) -> bool {
        self.is_accepting() && self.cluster_ready.load(Ordering::Acquire)
    }

    /// The node's queue depths now (read when `/metrics` is scraped).
    pub fn queue_depths(&self) -> m::QueueDepths {
        let (outbound_frames, outbound_bytes) = self.conns.queued();
        let links = self.peers.queued();
        m::QueueDepths {
            outbound_frames,
            outbound_bytes,
            internode_messages: links.messages,
            internode_bytes: links.bytes,
            internode_links: links.links,
            shard_inputs: self.shards.queued() as u64,
            delivery_batches: self.workers.pending() as u64,
        }
    }
}
