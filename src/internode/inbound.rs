//! The inbound side: the listener, the server handshake (the I/O around
//! [`super::handshake::Server`]), and the reading loop that validates each message and hands
//! the shards everything one read brought, in one queue entry per shard.
//!
//! With a cluster secret each frame is opened in place (`seal.rs`: its tag checked against the
//! next counter of the connection's client-to-server key, and decrypted) before it is decoded;
//! a frame that fails ends the connection (`reason="frame_auth"`). What came before it in the
//! same read was authentic and is still delivered, in order.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::codec::{self, Frame};
use super::handshake::{self, ServerStep};
use super::seal::SessionKeys;
use super::{HANDSHAKE_TIMEOUT, Peers, READ_BATCH, length_codec};
use crate::ids::NodeId;
use crate::metrics as m;
use crate::routing::{PeerMsg, PresenceEntry, Publish};

/// Accepts internode connections until the listener fails.
pub async fn serve(listener: TcpListener, peers: Peers) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let Some(slot) = HandshakeSlot::take(&peers) else {
                    m::internode_rejected("handshake_limit");
                    tracing::debug!(%from, "too many internode handshakes in progress; closed");
                    drop(stream);
                    continue;
                };
                let peers2 = peers.clone();
                let id = peers.inner.next_inbound.fetch_add(1, Ordering::Relaxed);
                // Registered before the task can finish, so its own removal always finds it.
                let mut tasks = peers
                    .inner
                    .inbound_tasks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                let task =
                    tokio::spawn(async move { inbound(stream, from, peers2, id, slot).await });
                tasks.insert(id, task.abort_handle());
            }
            Err(e) => {
                tracing::warn!(error = %e, "internode accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One place among the inbound connections in their handshake; given back when dropped.
struct HandshakeSlot(Peers);

impl HandshakeSlot {
    fn take(peers: &Peers) -> Option<HandshakeSlot> {
        peers
            .inner
            .handshaking
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < super::MAX_INBOUND_HANDSHAKES).then_some(n + 1)
            })
            .ok()
            .map(|_| HandshakeSlot(peers.clone()))
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        self.0.inner.handshaking.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why an inbound connection was refused (the `reason` label).
struct Refused(&'static str, String);

/// Server side of one inbound connection: handshake, then read messages into the shards.
async fn inbound(
    stream: TcpStream,
    from: SocketAddr,
    peers: Peers,
    conn_id: u64,
    slot: HandshakeSlot,
) {
    let _ = stream.set_nodelay(true);
    let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept_handshake(stream, &peers)).await;
    // The handshake is over, one way or the other.
    drop(slot);
    let (framed, peer, generation, addr, keys) = match hs {
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
    let mut opener = keys.map(|k| k.opener());
    let reason: Option<&'static str> = 'read: loop {
        let Some(chunk) = chunks.next().await else {
            break None;
        };
        let mut why = None;
        for item in chunk {
            let mut bytes = match item {
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
            let payload: &[u8] = match &mut opener {
                None => &bytes,
                Some(o) => match o.open(&mut bytes) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::warn!(%peer, error = %e, "frame from peer failed authentication");
                        why = Some(Some("frame_auth"));
                        break;
                    }
                },
            };
            match codec::decode(payload) {
                Ok(Frame::Msg(msg)) => {
                    if let Err(w) = validate(&msg) {
                        tracing::warn!(%peer, why = w, "invalid message from peer");
                        why = Some(Some("invalid_message"));
                        break;
                    }
                    msgs.push(msg);
                }
                Ok(Frame::Control(c)) => peers.on_control(&peer, c),
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
    let json = |s: &str| serde_json::from_str::<serde::de::IgnoredAny>(s).is_ok();
    if let PeerMsg::Publish(Publish { data, .. }) = msg
        && !json(data)
    {
        return Err("publish data is not JSON");
    }
    // Presence `info` is written into client frames too.
    let entries: Vec<&PresenceEntry> = match msg {
        PeerMsg::PresenceJoin(m) => vec![&m.entry],
        PeerMsg::PresenceEvent(m) => vec![&m.entry],
        PeerMsg::PresenceSync(m) => m.entries.iter().collect(),
        PeerMsg::PresenceResp(m) => m.members.iter().collect(),
        PeerMsg::ReplicaPresence(m) => m.entry.iter().collect(),
        PeerMsg::ReplicaSync(m) => m.state.presence.iter().collect(),
        PeerMsg::Handoff(m) => m.state.iter().flat_map(|s| s.presence.iter()).collect(),
        _ => Vec::new(),
    };
    if entries
        .iter()
        .any(|e| e.info.as_deref().is_some_and(|i| !json(i)))
    {
        return Err("presence info is not JSON");
    }
    Ok(())
}

/// What an accepted handshake gives: the connection, the peer, its generation and cluster
/// address, and the keys (with a secret).
type Accepted = (
    Framed<TcpStream, LengthDelimitedCodec>,
    NodeId,
    u64,
    String,
    Option<SessionKeys>,
);

/// Server side of the handshake: the I/O around [`handshake::Server`].
async fn accept_handshake(mut stream: TcpStream, peers: &Peers) -> Result<Accepted, Refused> {
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
    let mut hs = handshake::Server::new(cfg.clone(), codec::nonce());
    loop {
        let frame = match framed.next().await {
            Some(Ok(b)) => codec::decode(&b).map_err(|e| Refused("decode", e))?,
            Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(Refused("frame_too_large", e.to_string()));
            }
            Some(Err(e)) => return Err(io(e)),
            None => return Err(Refused("handshake_io", "closed".into())),
        };
        match hs.on_frame(frame) {
            Ok(ServerStep::Send(f)) => {
                let b = codec::encode(&f).map_err(|e| Refused("decode", e))?;
                framed.send(b).await.map_err(io)?;
            }
            Ok(ServerStep::Accepted(f, peer)) => {
                let b = codec::encode(&f).map_err(|e| Refused("decode", e))?;
                framed.send(b).await.map_err(io)?;
                framed
                    .codec_mut()
                    .set_max_frame_length(codec::MAX_WIRE_FRAME);
                let addr = peer.cluster_addr.unwrap_or_default();
                return Ok((framed, peer.node, peer.generation, addr, peer.keys));
            }
            Err(e) => {
                if let Some(reply) = &e.reply
                    && let Ok(b) = codec::encode(reply)
                {
                    let _ = framed.send(b).await;
                }
                return Err(Refused(e.reason.unwrap_or("handshake"), e.detail));
            }
        }
    }
}
