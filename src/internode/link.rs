//! The outbound side of one peer: a task that connects, runs the client handshake
//! ([`super::handshake::Client`]), then writes the peer's queued messages in batches until the
//! connection breaks or the queue overflows — then resets and starts again.
//!
//! Frames are encoded straight into the connection's write buffer by [`codec::LinkCodec`],
//! which seals each one in place with the handshake's keys when there is a cluster secret
//! (`seal.rs`); a batch (`recv_many`) is fed, then flushed once.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::codec::{self, Frame, LinkCodec, WriteError};
use super::handshake::{self, ClientStep};
use super::{
    BACKOFF_MAX, BACKOFF_MIN, HANDSHAKE_TIMEOUT, PEER_QUEUE_BYTES, Peers, WRITE_BATCH, length_codec,
};
use crate::ids::NodeId;
use crate::metrics as m;
use crate::routing::PeerMsg;

pub(super) struct Link {
    pub(super) peer: NodeId,
    pub(super) tx: mpsc::Sender<Frame>,
    pub(super) bytes: AtomicUsize,
    pub(super) overflow: AtomicBool,
    pub(super) stop: AtomicBool,
    pub(super) wake: Notify,
    pub(super) addr: Mutex<String>,
    /// The peer generation this link was made for (0 if unknown).
    pub(super) generation: AtomicU64,
}

impl Link {
    pub(super) fn push(&self, msg: PeerMsg) {
        self.push_frame(Frame::Msg(msg));
    }

    /// Queues a frame after the handshake (`Msg` or `Control`).
    pub(super) fn push_frame(&self, frame: Frame) {
        if self.overflow.load(Ordering::Acquire) {
            return; // Already resetting; everything queued is being discarded anyway.
        }
        let size = approx_size(&frame);
        let msg = frame;
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

    pub(super) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
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
/// Roughly how many bytes a queued frame occupies (for the queue's byte bound).
fn approx_size(frame: &Frame) -> usize {
    match frame {
        Frame::Msg(m) => m.approx_size(),
        _ => 256,
    }
}

pub(super) async fn run_link(peers: Peers, link: Arc<Link>, mut rx: mpsc::Receiver<Frame>) {
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
        let mut batch: Vec<Frame> = Vec::with_capacity(WRITE_BATCH);
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
                    let mut failed = None;
                    let (mut sent, mut bytes) = (0u64, 0u64);
                    for frame in batch.drain(..) {
                        link.bytes.fetch_sub(approx_size(&frame), Ordering::AcqRel);
                        match framed.feed(frame).await {
                            Ok(()) => {
                                sent += 1;
                                bytes += framed.codec().last_len as u64;
                            }
                            Err(e @ (WriteError::Encode(_) | WriteError::TooLarge(_))) => {
                                tracing::error!(peer = %link.peer, error = %e, "message dropped");
                            }
                            Err(WriteError::Seal(_)) => {
                                failed = Some("frame counter exhausted");
                                break;
                            }
                            Err(WriteError::Io(_)) => {
                                failed = Some("write failed");
                                break;
                            }
                        }
                    }
                    out_msgs.increment(sent);
                    out_bytes.increment(bytes);
                    if let Some(why) = failed {
                        break why;
                    }
                    if SinkExt::<Frame>::flush(&mut framed).await.is_err() {
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

fn discard(link: &Link, rx: &mut mpsc::Receiver<Frame>) {
    while let Ok(f) = rx.try_recv() {
        link.bytes.fetch_sub(approx_size(&f), Ordering::AcqRel);
    }
    link.overflow.store(false, Ordering::Release);
}

/// Client side of the handshake: the I/O around [`handshake::Client`]. Returns the connection
/// ready for messages, sealed with the handshake's keys when there are any.
async fn connect(
    peers: &Peers,
    link: &Link,
    addr: &str,
) -> Result<Framed<TcpStream, LinkCodec>, LinkError> {
    let cfg = &peers.inner.cfg;
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    stream.write_all(&codec::preamble()).await?;
    let mut p = [0u8; codec::PREAMBLE_LEN];
    stream.read_exact(&mut p).await?;
    codec::check_preamble(&p).map_err(|e| LinkError::Handshake(format!("{e:?}")))?;
    let mut framed = Framed::new(stream, length_codec(codec::HANDSHAKE_MAX_FRAME));
    let (mut hs, hello) = handshake::Client::start(cfg.clone(), link.peer.clone(), codec::nonce());
    send_frame(&mut framed, &hello).await?;
    let peer = loop {
        let frame = recv_frame(&mut framed).await?;
        match hs.on_frame(frame) {
            Ok(ClientStep::Send(f)) => send_frame(&mut framed, &f).await?,
            Ok(ClientStep::Done(peer)) => break peer,
            Err(e) => {
                if let Some(r) = e.reason {
                    m::internode_rejected(r);
                }
                return Err(LinkError::Handshake(format!("{} (at {addr})", e.detail)));
            }
        }
    };
    framed
        .codec_mut()
        .set_max_frame_length(codec::MAX_WIRE_FRAME);
    let sealer = peer.keys.as_ref().map(|k| k.sealer());
    Ok(framed.map_codec(|frames| LinkCodec::new(frames, sealer)))
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
