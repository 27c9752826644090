//! Gossip over UDP, optionally authenticated: a chitchat `Transport` that appends an
//! HMAC-SHA256 tag to every datagram and drops datagrams whose tag does not verify.
//!
//! Datagram layout with a secret: `chitchat envelope ‖ tag`, where
//! `tag = HMAC-SHA256(secret, "roomcast-gossip-v1" ‖ len ‖ envelope)` (32 bytes). Without a secret
//! the datagram is chitchat's own format. Junk, truncated or unauthenticated datagrams are
//! counted (`roomcast_internode_rejected_total{reason="gossip_auth"|"gossip_garbage"}`) and
//! dropped; they never stop the gossip loop. Replays are harmless: chitchat's state is
//! versioned and old versions are ignored.
//!
//! How: chitchat 0.13 keeps its envelope (de)serialisation private, so this transport lets
//! chitchat's own `UdpSocket` do it on a private loopback socket and relays the bytes. To send,
//! chitchat's socket sends the envelope to our private *relay* socket; we read the bytes back,
//! tag them and send them from the public gossip port. To receive, we verify and strip the tag
//! and forward the body to chitchat's socket, which decodes it; we then report the real sender.
//! Only datagrams from our own loopback sockets are accepted on the private side, and FIFO
//! queues pair datagrams with their addresses, so the pairing survives chitchat cancelling
//! `recv` (it does, every gossip tick).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use tokio::time::Instant;

use super::secret::{ClusterSecret, TAG_LEN};
use crate::metrics as m;

const DOMAIN: &[u8] = b"roomcast-gossip-v1";
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_507;
/// How long a relayed datagram may take to come back through loopback before it is given up
/// (chitchat silently drops a datagram it cannot decode).
const RELAY_TIMEOUT: Duration = Duration::from_secs(1);

/// A UDP transport on a socket bound by the caller (so its port can match the internode TCP
/// listener), tagging datagrams when a secret is set.
pub struct AuthUdpTransport {
    socket: std::sync::Mutex<Option<std::net::UdpSocket>>,
    secret: Option<ClusterSecret>,
}

impl AuthUdpTransport {
    pub fn new(socket: std::net::UdpSocket, secret: Option<ClusterSecret>) -> Self {
        AuthUdpTransport {
            socket: std::sync::Mutex::new(Some(socket)),
            secret,
        }
    }
}

#[async_trait]
impl Transport for AuthUdpTransport {
    async fn open(&self, listen_addr: SocketAddr) -> anyhow::Result<Box<dyn Socket>> {
        let std_socket = self
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .context("the gossip socket was already opened")?;
        std_socket.set_nonblocking(true)?;
        let public = tokio::net::UdpSocket::from_std(std_socket)
            .with_context(|| format!("gossip socket for {listen_addr}"))?;
        let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
        let inner = UdpSocket::open(loopback).await?;
        let inner_addr = inner.local_addr()?;
        let relay = tokio::net::UdpSocket::bind(loopback).await?;
        let relay_addr = relay.local_addr()?;
        Ok(Box::new(AuthUdpSocket {
            public,
            secret: self.secret.clone(),
            inner,
            inner_addr,
            relay,
            relay_addr,
            to_send: VecDeque::new(),
            received_from: VecDeque::new(),
            buf: vec![0u8; MAX_DATAGRAM + TAG_LEN].into_boxed_slice(),
        }))
    }
}

struct AuthUdpSocket {
    public: tokio::net::UdpSocket,
    secret: Option<ClusterSecret>,
    /// chitchat's socket on a private loopback port: it (de)serialises envelopes.
    inner: UdpSocket,
    inner_addr: SocketAddr,
    /// Our private loopback socket that receives what `inner` sends.
    relay: tokio::net::UdpSocket,
    relay_addr: SocketAddr,
    /// Destinations of envelopes handed to `inner`, in order.
    to_send: VecDeque<SocketAddr>,
    /// Real senders of datagrams forwarded to `inner`, in order, with when they were forwarded.
    received_from: VecDeque<(SocketAddr, usize, Instant)>,
    buf: Box<[u8]>,
}

#[async_trait]
impl Socket for AuthUdpSocket {
    fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.public.local_addr()?)
    }

    async fn send(
        &mut self,
        to: SocketAddr,
        envelope: ChitchatEnvelope,
    ) -> anyhow::Result<SendOutcome> {
        self.to_send.push_back(to);
        self.inner.send(self.relay_addr, envelope).await?;
        let deadline = Instant::now() + RELAY_TIMEOUT;
        loop {
            let got = tokio::time::timeout_at(deadline, self.relay.recv_from(&mut self.buf)).await;
            let (n, from) = match got {
                Ok(Ok(x)) => x,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "gossip relay recv error");
                    continue;
                }
                Err(_) => {
                    self.to_send.pop_front();
                    return Ok(SendOutcome { num_bytes_sent: 0 });
                }
            };
            if from != self.inner_addr || n > MAX_DATAGRAM - TAG_LEN {
                continue; // Not ours (another local process), or too big to tag.
            }
            let Some(dest) = self.to_send.pop_front() else {
                continue;
            };
            let len = match &self.secret {
                Some(secret) => {
                    let tag = secret.tag(DOMAIN, &[&self.buf[..n]]);
                    self.buf[n..n + TAG_LEN].copy_from_slice(&tag);
                    n + TAG_LEN
                }
                None => n,
            };
            let sent = match self.public.send_to(&self.buf[..len], dest).await {
                Ok(k) => k,
                Err(e) => {
                    // A peer that is gone must not break gossip with the others.
                    tracing::debug!(%dest, error = %e, "gossip send failed");
                    0
                }
            };
            if self.to_send.is_empty() {
                return Ok(SendOutcome {
                    num_bytes_sent: sent,
                });
            }
        }
    }

    async fn recv(&mut self) -> anyhow::Result<RecvOutcome> {
        loop {
            // First, a datagram already forwarded to chitchat's socket (perhaps by a recv call
            // that chitchat cancelled) is decoded and attributed to its real sender.
            while let Some(&(from, n, at)) = self.received_from.front() {
                match tokio::time::timeout_at(at + RELAY_TIMEOUT, self.inner.recv()).await {
                    Ok(Ok(out)) if out.from_addr == self.relay_addr => {
                        self.received_from.pop_front();
                        return Ok(RecvOutcome {
                            from_addr: from,
                            envelope: out.envelope,
                            num_bytes_received: n,
                        });
                    }
                    Ok(Ok(_)) => {} // Injected into the private socket by someone else: ignored.
                    Ok(Err(e)) => return Err(e),
                    Err(_) => {
                        // chitchat refused to decode it (authentic but unreadable).
                        m::internode_rejected("gossip_garbage");
                        self.received_from.pop_front();
                    }
                }
            }
            let (n, from) = match self.public.recv_from(&mut self.buf).await {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors (refused, reset) surface here on Linux; they are not fatal.
                    tracing::debug!(error = %e, "gossip recv error");
                    continue;
                }
            };
            let body = match &self.secret {
                None => n,
                Some(secret) => {
                    if n < TAG_LEN
                        || !secret.verify(
                            DOMAIN,
                            &[&self.buf[..n - TAG_LEN]],
                            &self.buf[n - TAG_LEN..n],
                        )
                    {
                        m::internode_rejected("gossip_auth");
                        tracing::debug!(%from, "gossip datagram without a valid tag dropped");
                        continue;
                    }
                    n - TAG_LEN
                }
            };
            self.received_from.push_back((from, n, Instant::now()));
            if let Err(e) = self.relay.send_to(&self.buf[..body], self.inner_addr).await {
                self.received_from.pop_back();
                tracing::debug!(error = %e, "gossip relay send failed");
            }
        }
    }
}
