//! Internode links: authenticated, ordered, bounded message streams between nodes over TCP.
//!
//! For every peer there is one outbound *link* (a task with a bounded queue, see [`Peers`]) that
//! connects to the peer's cluster port, performs the handshake ([`codec`]) and then only
//! writes; the peer's listener ([`serve`]) only reads. So each ordered pair of nodes has one
//! long-lived connection per direction, and messages from one node to another arrive in the
//! order they were queued.
//!
//! Overflow policy: a link's queue is bounded by messages and bytes. A message that does not
//! fit resets the link: the queue is discarded, the connection closed and reopened, and the
//! routing layer is told (`PeerReset`) on both sides, so it repairs what was lost (resync from
//! history; requests in flight fail as `unavailable`). A link is never allowed to grow without
//! bound, and a loss is never silent.
//!
//! Files: `handshake.rs` (the handshake as pure state machines, unit-tested; it derives the
//! session keys), `seal.rs` (ChaCha20-Poly1305 on every frame after the handshake), `link.rs`
//! (the outbound link task of each peer), `inbound.rs` (the listener and the reading side),
//! `codec.rs` (the wire format). This module holds the registry of links ([`Peers`]).
//!
//! With a cluster secret every frame after the handshake is authenticated, and by default
//! encrypted, with per-connection, per-direction keys and implicit counter nonces (`seal.rs`):
//! an injected, altered, replayed, reordered or dropped frame ends the connection. Without a
//! secret (loopback, `--insecure`) frames are in clear and unauthenticated.
//!
//! Hostile input: a connection with the wrong magic, version, cluster id, secret or encryption
//! mode, garbage, an oversized frame, a frame whose tag fails or an unknown message is closed
//! and counted in `roomcast_internode_rejected_total{reason}`; nothing else is affected.

pub mod codec;
pub mod handshake;
mod inbound;
mod link;
pub mod seal;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio_util::codec::LengthDelimitedCodec;

use crate::cluster::{ClusterSecret, ClusterView};
use crate::ids::NodeId;
use crate::metrics as m;
use crate::rooms::{PeerSink, Shards};
use crate::routing::{Input, PeerMsg};
pub use codec::Control;
use codec::Frame;
pub use inbound::serve;
use link::{Link, run_link};

/// Messages a link queues at most.
pub const PEER_QUEUE_MESSAGES: usize = 64 * 1024;
/// Bytes a link queues at most.
pub const PEER_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Time allowed for connecting plus the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Inbound connections in their handshake at once. Peers need one each per restart, so 64
/// is generous for any cluster; past it a new connection is closed at once (counted as
/// `handshake_limit`), so strangers cannot hold more sockets than this for more than
/// [`HANDSHAKE_TIMEOUT`] each.
pub const MAX_INBOUND_HANDSHAKES: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Messages read and handed to the shards together at most.
const READ_BATCH: usize = 256;
/// Messages written per flush at most.
const WRITE_BATCH: usize = 128;

/// Who this node is on the internode protocol.
#[derive(Debug, Clone)]
pub struct InternodeConfig {
    pub me: NodeId,
    pub generation: u64,
    pub cluster_id: String,
    /// This node's advertised cluster address, sent in the handshake.
    pub advertise: String,
    pub secret: Option<ClusterSecret>,
    /// With a secret: encrypt frames after the handshake (true) or only authenticate them
    /// (`internode_encryption`). Both ends must agree. Without a secret, frames are in clear.
    pub encryption: bool,
}

/// The outbound side: one link per peer. Implements [`PeerSink`] for the room shards.
#[derive(Clone)]
pub struct Peers {
    pub(super) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(super) cfg: InternodeConfig,
    links: RwLock<HashMap<NodeId, Arc<Link>>>,
    shards: OnceLock<Shards>,
    rt: tokio::runtime::Handle,
    /// Every inbound connection task, by connection number.
    pub(super) inbound_tasks: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    /// The inbound connection currently accepted from each peer (a newer one replaces it).
    pub(super) inbound_current: Mutex<HashMap<NodeId, u64>>,
    pub(super) next_inbound: AtomicU64,
    /// Inbound connections in their handshake now (bounded by [`MAX_INBOUND_HANDSHAKES`]).
    pub(super) handshaking: std::sync::atomic::AtomicUsize,
    /// The newest incarnation (generation) seen of each peer, from gossip or a handshake,
    /// whether or not a link exists: a higher one means the peer restarted and lost its state.
    generations: Mutex<HashMap<NodeId, u64>>,
    /// What the node does with a peer's `Control` frame (set by the server).
    control: OnceLock<ControlHook>,
}

/// The peer links' queues at one moment ([`Peers::queued`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct LinkQueues {
    pub links: u64,
    pub messages: u64,
    /// Approximate (the links' byte bound counts messages by their estimated size).
    pub bytes: u64,
}

/// The node's handler of `Control` frames from peers.
pub type ControlHook = Box<dyn Fn(NodeId, Control) + Send + Sync>;

impl PeerSink for Peers {
    fn send(&self, to: &NodeId, msg: PeerMsg) {
        let link = {
            let links = self.inner.links.read().unwrap_or_else(|p| p.into_inner());
            links.get(to).cloned()
        };
        match link {
            Some(l) => l.push(msg),
            None => {
                // The peer is unknown here (gossip has not told us yet, and it never connected
                // to us): the message is lost, which the routing layer tolerates (requests time
                // out, feeds resync).
                m::internode_rejected("unknown_peer");
                tracing::debug!(peer = %to, kind = msg.kind(), "no link to peer; message dropped");
            }
        }
    }
}

impl Peers {
    pub fn new(cfg: InternodeConfig, rt: tokio::runtime::Handle) -> Peers {
        Peers {
            inner: Arc::new(Inner {
                cfg,
                links: RwLock::new(HashMap::new()),
                shards: OnceLock::new(),
                rt,
                inbound_tasks: Mutex::new(HashMap::new()),
                inbound_current: Mutex::new(HashMap::new()),
                next_inbound: AtomicU64::new(1),
                handshaking: std::sync::atomic::AtomicUsize::new(0),
                generations: Mutex::new(HashMap::new()),
                control: OnceLock::new(),
            }),
        }
    }

    /// What the peer links hold now: links, and messages and bytes waiting in their queues
    /// (for `/metrics`).
    pub fn queued(&self) -> LinkQueues {
        let links = self.inner.links.read().unwrap_or_else(|p| p.into_inner());
        let mut q = LinkQueues {
            links: links.len() as u64,
            ..LinkQueues::default()
        };
        for l in links.values() {
            q.messages += (l.tx.max_capacity() - l.tx.capacity()) as u64;
            q.bytes += l.bytes.load(Ordering::Acquire) as u64;
        }
        q
    }

    /// Connects the links to the shards that receive messages and reset notices.
    pub fn set_shards(&self, shards: Shards) {
        let _ = self.inner.shards.set(shards);
    }

    pub(super) fn shards(&self) -> Option<&Shards> {
        self.inner.shards.get()
    }

    /// Opens links to new live members, closes links to members no longer live, and renews
    /// links to members that restarted (new generation).
    pub fn update_view(&self, view: &ClusterView) {
        let mut links = self.inner.links.write().unwrap_or_else(|p| p.into_inner());
        let mut restarts = Vec::new();
        for mbr in &view.members {
            if mbr.id == self.inner.cfg.me {
                continue;
            }
            if self.saw_generation(&mbr.id, mbr.generation) {
                restarts.push(mbr.id.clone());
            }
            match links.get(&mbr.id) {
                Some(l) if !mbr.live => {
                    l.stop();
                    links.remove(&mbr.id);
                }
                Some(l) => {
                    let g = l.generation.load(Ordering::Acquire);
                    if g != 0 && mbr.generation > g {
                        // Restarted: whatever was in flight to the old incarnation is lost.
                        l.stop();
                        links.remove(&mbr.id);
                        let l = self.spawn_link(&mbr.id, &mbr.cluster, mbr.generation);
                        links.insert(mbr.id.clone(), l);
                    } else if mbr.generation < g {
                        // Gossip has not caught up with an incarnation that already connected
                        // to us (`learned`): keep the link to the newer one.
                    } else {
                        l.generation.store(mbr.generation, Ordering::Release);
                        *l.addr.lock().unwrap_or_else(|p| p.into_inner()) = mbr.cluster.clone();
                    }
                }
                None if mbr.live => {
                    let l = self.spawn_link(&mbr.id, &mbr.cluster, mbr.generation);
                    links.insert(mbr.id.clone(), l);
                }
                None => {}
            }
        }
        drop(links);
        for peer in restarts {
            self.announce_restart(peer);
        }
    }

    /// A peer connected to us and told us its address: make sure we can answer it.
    pub(super) fn learned(&self, peer: &NodeId, addr: &str, generation: u64) {
        if self.saw_generation(peer, generation) {
            self.announce_restart(peer.clone());
        }
        let mut links = self.inner.links.write().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = links.get(peer) {
            let g = l.generation.load(Ordering::Acquire);
            if g == 0 || g == generation {
                l.generation.store(generation, Ordering::Release);
                return;
            }
            if generation < g {
                // A connection from an incarnation older than the one we know (it is gone).
                return;
            }
            // A new incarnation reached us before gossip said so.
            l.stop();
            links.remove(peer);
            let l = self.spawn_link(peer, addr, generation);
            links.insert(peer.clone(), l);
            return;
        }
        let l = self.spawn_link(peer, addr, generation);
        links.insert(peer.clone(), l);
    }

    fn spawn_link(&self, peer: &NodeId, addr: &str, generation: u64) -> Arc<Link> {
        let (tx, rx) = mpsc::channel(PEER_QUEUE_MESSAGES);
        let link = Arc::new(Link {
            peer: peer.clone(),
            tx,
            bytes: AtomicUsize::new(0),
            overflow: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            wake: Notify::new(),
            addr: Mutex::new(addr.to_string()),
            generation: AtomicU64::new(generation),
        });
        self.inner
            .rt
            .spawn(run_link(self.clone(), link.clone(), rx));
        link
    }

    /// Sets what the node does with `Control` frames from peers (once).
    pub fn set_control_hook(&self, hook: ControlHook) {
        let _ = self.inner.control.set(hook);
    }

    /// Sends `c` to every peer with a link (fire and forget: a peer whose link is down misses
    /// it).
    pub fn broadcast_control(&self, c: Control) {
        let links: Vec<Arc<Link>> = {
            let links = self.inner.links.read().unwrap_or_else(|p| p.into_inner());
            links.values().cloned().collect()
        };
        for l in links {
            l.push_frame(Frame::Control(c.clone()));
        }
    }

    /// Sends `c` to one peer (dropped if there is no link to it).
    pub fn send_control(&self, to: &NodeId, c: Control) {
        let link = {
            let links = self.inner.links.read().unwrap_or_else(|p| p.into_inner());
            links.get(to).cloned()
        };
        if let Some(l) = link {
            l.push_frame(Frame::Control(c));
        }
    }

    pub(super) fn on_control(&self, from: &NodeId, c: Control) {
        tracing::debug!(peer = %from, control = ?c, "control request from peer");
        if let Some(hook) = self.inner.control.get() {
            hook(from.clone(), c);
        }
    }

    /// Tells every shard that messages to or from `peer` may have been lost.
    pub(super) fn announce_reset(&self, peer: NodeId) {
        if let Some(shards) = self.shards().cloned() {
            self.inner.rt.spawn(async move {
                shards.broadcast(|| Input::PeerReset(peer.clone())).await;
            });
        }
    }

    /// Records `generation` for `peer`; true if it is newer than one already known (the peer
    /// restarted since). The first generation seen of a peer is not a restart.
    fn saw_generation(&self, peer: &NodeId, generation: u64) -> bool {
        let mut gens = self
            .inner
            .generations
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match gens.get_mut(peer) {
            Some(g) if generation > *g => {
                *g = generation;
                true
            }
            Some(_) => false,
            None => {
                gens.insert(peer.clone(), generation);
                false
            }
        }
    }

    /// Tells every shard that `peer` restarted: its link was reset and it lost its state.
    fn announce_restart(&self, peer: NodeId) {
        tracing::info!(%peer, "peer restarted (new generation)");
        if let Some(shards) = self.shards().cloned() {
            self.inner.rt.spawn(async move {
                shards
                    .broadcast(|| Input::PeerRestarted(peer.clone()))
                    .await;
            });
        }
    }
}

pub(super) fn length_codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max)
        .new_codec()
}
