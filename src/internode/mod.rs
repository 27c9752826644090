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
//! Hostile input: a connection with the wrong magic, version, cluster id or secret, garbage,
//! an oversized frame or an unknown message is closed and counted in
//! `roomcast_internode_rejected_total{reason}`; nothing else is affected.

pub mod codec;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use crate::cluster::{ClusterSecret, ClusterView};
use crate::ids::NodeId;
use crate::metrics as m;
use crate::rooms::{PeerSink, Shards};
use crate::routing::{Input, PeerMsg};
use codec::Frame;

/// Messages a link queues at most.
pub const PEER_QUEUE_MESSAGES: usize = 64 * 1024;
/// Bytes a link queues at most.
pub const PEER_QUEUE_BYTES: usize = 64 * 1024 * 1024;
/// Time allowed for connecting plus the whole handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
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
}

/// The outbound side: one link per peer. Implements [`PeerSink`] for the room shards.
#[derive(Clone)]
pub struct Peers {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: InternodeConfig,
    links: RwLock<HashMap<NodeId, Arc<Link>>>,
    shards: OnceLock<Shards>,
    rt: tokio::runtime::Handle,
    /// Every inbound connection task, by connection number.
    inbound_tasks: Mutex<HashMap<u64, tokio::task::AbortHandle>>,
    /// The inbound connection currently accepted from each peer (a newer one replaces it).
    inbound_current: Mutex<HashMap<NodeId, u64>>,
    next_inbound: AtomicU64,
}

struct Link {
    peer: NodeId,
    tx: mpsc::Sender<PeerMsg>,
    bytes: AtomicUsize,
    overflow: AtomicBool,
    stop: AtomicBool,
    wake: Notify,
    addr: Mutex<String>,
    /// The peer generation this link was made for (0 if unknown).
    generation: AtomicU64,
}

impl Link {
    fn push(&self, msg: PeerMsg) {
        if self.overflow.load(Ordering::Acquire) {
            return; // Already resetting; everything queued is being discarded anyway.
        }
        let size = msg.approx_size();
        let before = self.bytes.fetch_add(size, Ordering::AcqRel);
        if before + size > PEER_QUEUE_BYTES {
            self.bytes.fetch_sub(size, Ordering::AcqRel);
            self.overflowed();
            return;
        }
        match self.tx.try_send(msg) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.bytes.fetch_sub(size, Ordering::AcqRel);
                self.overflowed();
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.bytes.fetch_sub(size, Ordering::AcqRel);
            }
        }
    }

    fn overflowed(&self) {
        if !self.overflow.swap(true, Ordering::AcqRel) {
            m::internode_queue_overflow();
            tracing::warn!(peer = %self.peer, "peer send queue overflowed; resetting the link");
            self.wake.notify_one();
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

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
            }),
        }
    }

    /// Connects the links to the shards that receive messages and reset notices.
    pub fn set_shards(&self, shards: Shards) {
        let _ = self.inner.shards.set(shards);
    }

    fn shards(&self) -> Option<&Shards> {
        self.inner.shards.get()
    }

    /// Opens links to new live members, closes links to members no longer live, and renews
    /// links to members that restarted (new generation).
    pub fn update_view(&self, view: &ClusterView) {
        let mut links = self.inner.links.write().unwrap_or_else(|p| p.into_inner());
        let mut resets = Vec::new();
        for mbr in &view.members {
            if mbr.id == self.inner.cfg.me {
                continue;
            }
            match links.get(&mbr.id) {
                Some(l) if !mbr.live => {
                    l.stop();
                    links.remove(&mbr.id);
                }
                Some(l) => {
                    let g = l.generation.load(Ordering::Acquire);
                    if g != 0 && g != mbr.generation {
                        // Restarted: whatever was in flight to the old incarnation is lost.
                        l.stop();
                        links.remove(&mbr.id);
                        resets.push(mbr.id.clone());
                        let l = self.spawn_link(&mbr.id, &mbr.cluster, mbr.generation);
                        links.insert(mbr.id.clone(), l);
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
        for peer in resets {
            self.announce_reset(peer);
        }
    }

    /// A peer connected to us and told us its address: make sure we can answer it.
    fn learned(&self, peer: &NodeId, addr: &str, generation: u64) {
        let mut links = self.inner.links.write().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = links.get(peer) {
            let g = l.generation.load(Ordering::Acquire);
            if g == 0 || g == generation {
                l.generation.store(generation, Ordering::Release);
                return;
            }
            // A new incarnation reached us before gossip said so.
            l.stop();
            links.remove(peer);
            let l = self.spawn_link(peer, addr, generation);
            links.insert(peer.clone(), l);
            drop(links);
            self.announce_reset(peer.clone());
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

    /// Tells every shard that messages to or from `peer` may have been lost.
    fn announce_reset(&self, peer: NodeId) {
        if let Some(shards) = self.shards().cloned() {
            self.inner.rt.spawn(async move {
                shards.broadcast(|| Input::PeerReset(peer.clone())).await;
            });
        }
    }
}

/// Why a connection attempt or handshake failed.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("handshake: {0}")]
    Handshake(String),
}

/// The outbound link task of one peer: connect, handshake, write until the connection breaks
/// or the link overflows, reset, repeat — until stopped.
async fn run_link(peers: Peers, link: Arc<Link>, mut rx: mpsc::Receiver<PeerMsg>) {
    let mut backoff = BACKOFF_MIN;
    let (out_msgs, out_bytes) = m::internode_traffic("out");
    loop {
        if link.stop.load(Ordering::Acquire) {
            return;
        }
        if link.overflow.load(Ordering::Acquire) {
            discard(&link, &mut rx);
            peers.announce_reset(link.peer.clone());
        }
        let addr = link.addr.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let connected = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect(&peers, &link, &addr))
            .await
            .unwrap_or(Err(LinkError::Timeout));
        let mut framed = match connected {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(peer = %link.peer, %addr, error = %e, "cannot connect to peer");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = link.wake.notified() => {}
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        backoff = BACKOFF_MIN;
        tracing::debug!(peer = %link.peer, %addr, "link up");
        // Write until something ends the connection.
        let mut batch: Vec<PeerMsg> = Vec::with_capacity(WRITE_BATCH);
        let why = loop {
            if link.stop.load(Ordering::Acquire) {
                return;
            }
            if link.overflow.load(Ordering::Acquire) {
                break "queue overflow";
            }
            tokio::select! {
                biased;
                _ = link.wake.notified() => continue,
                // The server never writes after the handshake: anything readable is its close.
                _ = framed.next() => break "closed by peer",
                n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        return; // Link dropped.
                    }
                    let mut failed = false;
                    for msg in batch.drain(..) {
                        link.bytes.fetch_sub(msg.approx_size(), Ordering::AcqRel);
                        let payload = match codec::encode(&Frame::Msg(msg)) {
                            Ok(p) => p,
                            Err(e) => {
                                tracing::error!(peer = %link.peer, error = %e, "cannot encode a message; dropped");
                                continue;
                            }
                        };
                        if payload.len() > codec::MAX_FRAME {
                            tracing::error!(peer = %link.peer, len = payload.len(), "message over the frame limit; dropped");
                            continue;
                        }
                        out_msgs.increment(1);
                        out_bytes.increment(payload.len() as u64 + 4);
                        if framed.feed(payload).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    if failed || SinkExt::<bytes::Bytes>::flush(&mut framed).await.is_err() {
                        break "write failed";
                    }
                }
            }
        };
        tracing::info!(peer = %link.peer, reason = why, "link reset");
        drop(framed);
        discard(&link, &mut rx);
        link.overflow.store(false, Ordering::Release);
        peers.announce_reset(link.peer.clone());
    }
}

fn discard(link: &Link, rx: &mut mpsc::Receiver<PeerMsg>) {
    while let Ok(m) = rx.try_recv() {
        link.bytes.fetch_sub(m.approx_size(), Ordering::AcqRel);
    }
    link.overflow.store(false, Ordering::Release);
}

fn length_codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max)
        .new_codec()
}

/// Client side of the handshake.
async fn connect(
    peers: &Peers,
    link: &Link,
    addr: &str,
) -> Result<Framed<TcpStream, LengthDelimitedCodec>, LinkError> {
    let cfg = &peers.inner.cfg;
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&codec::preamble()).await?;
    let mut p = [0u8; codec::PREAMBLE_LEN];
    stream.read_exact(&mut p).await?;
    codec::check_preamble(&p).map_err(|e| LinkError::Handshake(format!("{e:?}")))?;
    let mut framed = Framed::new(stream, length_codec(codec::HANDSHAKE_MAX_FRAME));
    let my_nonce = codec::nonce();
    send_frame(
        &mut framed,
        &Frame::Hello {
            cluster_id: cfg.cluster_id.clone(),
            node_id: cfg.me.clone(),
            generation: cfg.generation,
            cluster_addr: cfg.advertise.clone(),
            nonce: my_nonce,
        },
    )
    .await?;
    let (server, their_nonce, proof) = match recv_frame(&mut framed).await? {
        Frame::Challenge {
            node_id,
            nonce,
            proof,
            ..
        } => (node_id, nonce, proof),
        Frame::Reject { reason } => {
            return Err(LinkError::Handshake(format!("rejected: {reason}")));
        }
        other => return Err(LinkError::Handshake(format!("unexpected {other:?}"))),
    };
    if server != link.peer {
        return Err(LinkError::Handshake(format!(
            "expected node {} at {addr}, found {server}",
            link.peer
        )));
    }
    let my_proof = match (&cfg.secret, proof) {
        (Some(secret), Some(proof)) => {
            let want = codec::server_proof(
                secret,
                &cfg.cluster_id,
                &cfg.me,
                &server,
                &my_nonce,
                &their_nonce,
            );
            if !codec::proof_ok(&want, &proof) {
                m::internode_rejected("bad_secret");
                return Err(LinkError::Handshake(
                    "the peer's proof is wrong (another secret)".into(),
                ));
            }
            Some(codec::client_proof(
                secret,
                &cfg.cluster_id,
                &cfg.me,
                &server,
                &my_nonce,
                &their_nonce,
            ))
        }
        (None, None) => None,
        (Some(_), None) => {
            m::internode_rejected("bad_secret");
            return Err(LinkError::Handshake("the peer has no secret".into()));
        }
        (None, Some(_)) => {
            m::internode_rejected("bad_secret");
            return Err(LinkError::Handshake("the peer requires a secret".into()));
        }
    };
    send_frame(&mut framed, &Frame::Proof { proof: my_proof }).await?;
    match recv_frame(&mut framed).await? {
        Frame::Accept => {}
        Frame::Reject { reason } => {
            return Err(LinkError::Handshake(format!("rejected: {reason}")));
        }
        other => return Err(LinkError::Handshake(format!("unexpected {other:?}"))),
    }
    framed.codec_mut().set_max_frame_length(codec::MAX_FRAME);
    Ok(framed)
}

async fn send_frame(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
    frame: &Frame,
) -> Result<(), LinkError> {
    let payload = codec::encode(frame).map_err(LinkError::Handshake)?;
    framed.send(payload).await?;
    Ok(())
}

async fn recv_frame(
    framed: &mut Framed<TcpStream, LengthDelimitedCodec>,
) -> Result<Frame, LinkError> {
    match framed.next().await {
        Some(Ok(b)) => codec::decode(&b).map_err(LinkError::Handshake),
        Some(Err(e)) => Err(LinkError::Io(e)),
        None => Err(LinkError::Handshake("connection closed".into())),
    }
}

/// Accepts internode connections until the listener fails.
pub async fn serve(listener: TcpListener, peers: Peers) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let peers2 = peers.clone();
                let id = peers.inner.next_inbound.fetch_add(1, Ordering::Relaxed);
                // Registered before the task can finish, so its own removal always finds it.
                let mut tasks = peers
                    .inner
                    .inbound_tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let task = tokio::spawn(async move { inbound(stream, from, peers2, id).await });
                tasks.insert(id, task.abort_handle());
            }
            Err(e) => {
                tracing::warn!(error = %e, "internode accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Why an inbound connection was refused (the `reason` label).
struct Refused(&'static str, String);

/// Server side of one inbound connection: handshake, then read messages into the shards.
async fn inbound(stream: TcpStream, from: SocketAddr, peers: Peers, conn_id: u64) {
    let _ = stream.set_nodelay(true);
    let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_handshake(stream, &peers)).await;
    let (framed, peer, generation, addr) = match hs {
        Ok(Ok(x)) => x,
        Ok(Err(Refused(reason, detail))) => {
            m::internode_rejected(reason);
            tracing::info!(%from, reason, detail, "internode connection refused");
            forget_task(&peers, conn_id);
            return;
        }
        Err(_) => {
            m::internode_rejected("handshake_timeout");
            tracing::info!(%from, "internode handshake timed out");
            forget_task(&peers, conn_id);
            return;
        }
    };
    // Replace an older connection from the same peer: its unread data belongs to a link the
    // peer has already reset, and must not be processed after this one's.
    let replaced = {
        let mut current = peers
            .inner
            .inbound_current
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let old = current.insert(peer.clone(), conn_id);
        let mut tasks = peers
            .inner
            .inbound_tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        old.and_then(|o| tasks.remove(&o))
            .map(|h| h.abort())
            .is_some()
    };
    if replaced {
        peers.announce_reset(peer.clone());
    }
    peers.learned(&peer, &addr, generation);
    tracing::debug!(%peer, %from, "inbound link up");
    let Some(shards) = peers.shards().cloned() else {
        return;
    };
    let (in_msgs, in_bytes) = m::internode_traffic("in");
    // Everything already read is decoded and handed to the shards together: one queue entry
    // per shard per read, not one per message (`Shards::send_peer_batch`).
    let mut chunks = framed.ready_chunks(READ_BATCH);
    let mut msgs: Vec<PeerMsg> = Vec::with_capacity(READ_BATCH);
    let reason: Option<&'static str> = 'read: loop {
        let Some(chunk) = chunks.next().await else {
            break None;
        };
        let mut why = None;
        for item in chunk {
            let bytes = match item {
                Ok(b) => b,
                // The codec reports an over-limit length prefix as InvalidData.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    why = Some(Some("frame_too_large"));
                    break;
                }
                Err(_) => {
                    why = Some(None);
                    break;
                }
            };
            in_msgs.increment(1);
            in_bytes.increment(bytes.len() as u64 + 4);
            match codec::decode(&bytes) {
                Ok(Frame::Msg(msg)) => {
                    if let Err(w) = validate(&msg) {
                        tracing::warn!(%peer, why = w, "invalid message from peer");
                        why = Some(Some("invalid_message"));
                        break;
                    }
                    msgs.push(msg);
                }
                Ok(other) => {
                    tracing::warn!(%peer, frame = ?other, "unexpected frame after handshake");
                    why = Some(Some("unexpected_frame"));
                    break;
                }
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "undecodable frame from peer");
                    why = Some(Some("decode"));
                    break;
                }
            }
        }
        // What came before a bad frame is still delivered, in order.
        if !msgs.is_empty() {
            shards.send_peer_batch(&peer, &mut msgs).await;
        }
        if let Some(w) = why {
            break 'read w;
        }
    };
    if let Some(r) = reason {
        m::internode_rejected(r);
    }
    forget_inbound(&peers, &peer, conn_id);
    tracing::info!(%peer, reason = reason.unwrap_or("closed"), "inbound link down");
    peers.announce_reset(peer);
}

/// Tells the client why before the connection closes (best effort).
async fn send_reject(framed: &mut Framed<TcpStream, LengthDelimitedCodec>, reason: String) {
    if let Ok(p) = codec::encode(&Frame::Reject { reason }) {
        let _ = framed.send(p).await;
    }
}

fn forget_task(peers: &Peers, conn_id: u64) {
    let mut tasks = peers
        .inner
        .inbound_tasks
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    tasks.remove(&conn_id);
}

fn forget_inbound(peers: &Peers, peer: &NodeId, conn_id: u64) {
    let mut current = peers
        .inner
        .inbound_current
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if current.get(peer) == Some(&conn_id) {
        current.remove(peer);
    }
    drop(current);
    forget_task(peers, conn_id);
}

/// Checks what the routing layer trusts a message to be (it writes `data` into client frames).
fn validate(msg: &PeerMsg) -> Result<(), &'static str> {
    if let PeerMsg::Publish { data, .. } = msg
        && serde_json::from_str::<serde::de::IgnoredAny>(data).is_err()
    {
        return Err("publish data is not JSON");
    }
    Ok(())
}

async fn accept_handshake(
    mut stream: TcpStream,
    peers: &Peers,
) -> Result<(Framed<TcpStream, LengthDelimitedCodec>, NodeId, u64, String), Refused> {
    let cfg = &peers.inner.cfg;
    let io = |e: std::io::Error| Refused("handshake_io", e.to_string());
    let mut p = [0u8; codec::PREAMBLE_LEN];
    stream
        .read_exact(&mut p)
        .await
        .map_err(|e| Refused("bad_magic", e.to_string()))?;
    match codec::check_preamble(&p) {
        Ok(()) => {}
        Err(codec::PreambleError::BadMagic) => {
            return Err(Refused("bad_magic", format!("{p:02x?}")));
        }
        Err(codec::PreambleError::BadVersion(v)) => {
            // Tell the client our version before closing.
            let _ = stream.write_all(&codec::preamble()).await;
            return Err(Refused("bad_version", format!("version {v}")));
        }
    }
    stream.write_all(&codec::preamble()).await.map_err(io)?;
    let mut framed = Framed::new(stream, length_codec(codec::HANDSHAKE_MAX_FRAME));
    let hello = match framed.next().await {
        Some(Ok(b)) => codec::decode(&b).map_err(|e| Refused("decode", e))?,
        Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            return Err(Refused("frame_too_large", e.to_string()));
        }
        Some(Err(e)) => return Err(io(e)),
        None => return Err(Refused("handshake_io", "closed".into())),
    };
    let Frame::Hello {
        cluster_id,
        node_id: client,
        generation,
        cluster_addr,
        nonce: their_nonce,
    } = hello
    else {
        return Err(Refused("unexpected_frame", "expected Hello".into()));
    };
    if cluster_id != cfg.cluster_id {
        send_reject(&mut framed, "wrong cluster id".into()).await;
        return Err(Refused(
            "wrong_cluster",
            format!("cluster {cluster_id:?} from {client}"),
        ));
    }
    if client == cfg.me {
        send_reject(&mut framed, "same node id as the server".into()).await;
        return Err(Refused("self", client.to_string()));
    }
    let my_nonce = codec::nonce();
    let proof = cfg.secret.as_ref().map(|s| {
        codec::server_proof(
            s,
            &cfg.cluster_id,
            &client,
            &cfg.me,
            &their_nonce,
            &my_nonce,
        )
    });
    let challenge = codec::encode(&Frame::Challenge {
        node_id: cfg.me.clone(),
        generation: cfg.generation,
        nonce: my_nonce,
        proof,
    })
    .map_err(|e| Refused("decode", e))?;
    framed.send(challenge).await.map_err(io)?;
    let their_proof = match framed.next().await {
        Some(Ok(b)) => match codec::decode(&b).map_err(|e| Refused("decode", e))? {
            Frame::Proof { proof } => proof,
            Frame::Reject { reason } => {
                return Err(Refused(
                    "bad_secret",
                    format!("client refused us: {reason}"),
                ));
            }
            _ => return Err(Refused("unexpected_frame", "expected Proof".into())),
        },
        Some(Err(e)) => return Err(io(e)),
        None => return Err(Refused("handshake_io", "closed".into())),
    };
    let ok = match (&cfg.secret, their_proof) {
        (Some(s), Some(p)) => codec::proof_ok(
            &codec::client_proof(
                s,
                &cfg.cluster_id,
                &client,
                &cfg.me,
                &their_nonce,
                &my_nonce,
            ),
            &p,
        ),
        (None, None) => true,
        _ => false,
    };
    if !ok {
        send_reject(&mut framed, "authentication failed".into()).await;
        return Err(Refused("bad_secret", format!("from {client}")));
    }
    let accept = codec::encode(&Frame::Accept).map_err(|e| Refused("decode", e))?;
    framed.send(accept).await.map_err(io)?;
    framed.codec_mut().set_max_frame_length(codec::MAX_FRAME);
    Ok((framed, client, generation, cluster_addr))
}
