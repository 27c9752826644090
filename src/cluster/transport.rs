//! Gossip over UDP, optionally authenticated: a chitchat `Transport` that appends a timestamp
//! and an HMAC-SHA256 tag to every datagram and drops datagrams whose tag does not verify, that
//! are stale, or that were already received.
//!
//! Datagram layout with a secret:
//!
//! ```text
//! datagram := envelope ‖ stamp:u64be ‖ id:u64be ‖ tag[32]
//! tag      := HMAC-SHA256(secret, "roomcast-gossip-v2" ‖ len ‖ envelope ‖ stamp ‖ id)
//! ```
//!
//! `stamp` is the sender's wall clock in unix milliseconds, `id` a per-socket counter (random
//! start) that makes every datagram's tag unique, even two identical envelopes sent in the
//! same millisecond. Without a secret the datagram is chitchat's own format.
//!
//! Freshness (with a secret; [`Freshness`]): a datagram stamped more than [`WINDOW`] (30 s)
//! before or after the receiver's clock is dropped (`reason="gossip_stale"`), so a captured
//! datagram cannot be replayed later: **nodes need synchronised clocks** (NTP: a skew well
//! under 30 s; a node whose clock is off by more sees every datagram refused and falls out of
//! the cluster, loudly, in that counter). Within the window an exact replay is dropped
//! (`reason="gossip_replay"`): the receiver keeps the tags of the datagrams it accepted in the
//! last window, at most [`SEEN_MAX`] of them (16 bytes of each tag and its stamp: about 0.5 MiB
//! with the set's overhead). Normal gossip stays far below that (a node receives about 9
//! datagrams per gossip round: 2,700 per window at a 100 ms interval). Should the cache ever
//! fill, the oldest entry is evicted and datagrams stamped at or before it are refused as
//! stale from then on: the window shrinks rather than letting a replay through. A datagram
//! captured on its way to one node and replayed to another within the window is accepted
//! there once (its cache never saw it); chitchat's state is versioned, so an old state it
//! carries is ignored.
//!
//! Junk, truncated or unauthenticated datagrams are counted
//! (`roomcast_internode_rejected_total{reason="gossip_auth"|"gossip_garbage"}`) and dropped;
//! they never stop the gossip loop.
//!
//! How: chitchat 0.13 keeps its envelope (de)serialisation private, so this transport lets
//! chitchat's own `UdpSocket` do it on a private loopback socket and relays the bytes. To send,
//! chitchat's socket sends the envelope to our private *relay* socket; we read the bytes back,
//! tag them and send them from the public gossip port. To receive, we verify and strip the tag
//! and forward the body to chitchat's socket, which decodes it; we then report the real sender.
//! Only datagrams from our own loopback sockets are accepted on the private side, and FIFO
//! queues pair datagrams with their addresses, so the pairing survives chitchat cancelling
//! `recv` (it does, every gossip tick).

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use chitchat::ChitchatEnvelope;
use chitchat::transport::{RecvOutcome, SendOutcome, Socket, Transport, UdpSocket};
use tokio::time::Instant;

use super::secret::{ClusterSecret, TAG_LEN};
use crate::metrics as m;

const DOMAIN: &[u8] = b"roomcast-gossip-v2";
/// Bytes of the stamp and id before the tag.
const STAMP_LEN: usize = 16;
/// Bytes a secret adds to a datagram.
pub const OVERHEAD: usize = STAMP_LEN + TAG_LEN;
/// How far a datagram's stamp may be from the receiver's clock, either way.
pub const WINDOW: Duration = Duration::from_secs(30);
/// Tags of accepted datagrams remembered at most (replay detection within the window).
pub const SEEN_MAX: usize = 8192;
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
            buf: vec![0u8; MAX_DATAGRAM + OVERHEAD].into_boxed_slice(),
            next_id: first_id(),
            fresh: Freshness::new(WINDOW, SEEN_MAX),
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
    /// The id of the next datagram sent.
    next_id: u64,
    /// Stale and replayed datagrams are refused.
    fresh: Freshness,
}

/// A random start for datagram ids (a restarted node does not repeat its ids).
fn first_id() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        return crate::now_us();
    }
    u64::from_le_bytes(b)
}

fn now_ms() -> u64 {
    crate::now_us() / 1000
}

/// Appends the stamp, id and tag to the envelope in `buf[..n]`; returns the datagram's length.
/// `buf` must have room for [`OVERHEAD`] more bytes. (Public for the fuzz tests.)
pub fn seal_datagram(
    secret: &ClusterSecret,
    buf: &mut [u8],
    n: usize,
    stamp: u64,
    id: u64,
) -> usize {
    buf[n..n + 8].copy_from_slice(&stamp.to_be_bytes());
    buf[n + 8..n + STAMP_LEN].copy_from_slice(&id.to_be_bytes());
    let body = n + STAMP_LEN;
    let tag = secret.tag(DOMAIN, &[&buf[..body]]);
    buf[body..body + TAG_LEN].copy_from_slice(&tag);
    body + TAG_LEN
}

/// An authentic datagram: the envelope's length, its stamp, and the key it is remembered by.
#[derive(Debug, PartialEq)]
pub struct Opened {
    pub envelope: usize,
    pub stamp: u64,
    pub key: [u8; 16],
}

/// Verifies a datagram's tag; `None` if it is too short or its tag does not verify. (The
/// gossip transport's check of every received datagram; public for the fuzz tests.)
pub fn open_datagram(secret: &ClusterSecret, d: &[u8]) -> Option<Opened> {
    let body = d.len().checked_sub(TAG_LEN)?;
    let envelope = body.checked_sub(STAMP_LEN)?;
    let tag = &d[body..];
    if !secret.verify(DOMAIN, &[&d[..body]], tag) {
        return None;
    }
    let mut stamp = [0u8; 8];
    stamp.copy_from_slice(&d[envelope..envelope + 8]);
    let mut key = [0u8; 16];
    key.copy_from_slice(&tag[..16]);
    Some(Opened {
        envelope,
        stamp: u64::from_be_bytes(stamp),
        key,
    })
}

/// Why an authentic datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Stamped outside the window (or before the floor, after the cache overflowed).
    Stale,
    /// Already accepted once.
    Replay,
}

/// Remembers the datagrams accepted within the window, in bounded memory (module comment).
struct Freshness {
    window_ms: u64,
    max: usize,
    seen: HashSet<[u8; 16]>,
    /// Remembered datagrams in arrival order, with their stamps.
    order: VecDeque<(u64, [u8; 16])>,
    /// Datagrams stamped at or before this are refused: it is the newest stamp evicted from a
    /// full cache while still inside the window (0 until the cache ever fills).
    floor: u64,
}

impl Freshness {
    fn new(window: Duration, max: usize) -> Freshness {
        Freshness {
            window_ms: window.as_millis() as u64,
            max,
            seen: HashSet::with_capacity(64),
            order: VecDeque::with_capacity(64),
            floor: 0,
        }
    }

    /// Accepts a datagram stamped `stamp` with `key` at `now` (unix ms), or says why not.
    fn check(&mut self, now: u64, stamp: u64, key: [u8; 16]) -> Result<(), Refusal> {
        let oldest = now.saturating_sub(self.window_ms);
        if stamp < oldest || stamp > now.saturating_add(self.window_ms) || stamp <= self.floor {
            return Err(Refusal::Stale);
        }
        while let Some(&(t, k)) = self.order.front() {
            if t >= oldest {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&k);
        }
        if self.seen.contains(&key) {
            return Err(Refusal::Replay);
        }
        if self.order.len() >= self.max
            && let Some((t, k)) = self.order.pop_front()
        {
            self.seen.remove(&k);
            self.floor = self.floor.max(t);
        }
        self.order.push_back((stamp, key));
        self.seen.insert(key);
        Ok(())
    }
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
            if from != self.inner_addr || n > MAX_DATAGRAM - OVERHEAD {
                continue; // Not ours (another local process), or too big to tag.
            }
            let Some(dest) = self.to_send.pop_front() else {
                continue;
            };
            let len = match &self.secret {
                Some(secret) => {
                    let id = self.next_id;
                    self.next_id = id.wrapping_add(1);
                    seal_datagram(secret, &mut self.buf, n, now_ms(), id)
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
                    let Some(d) = open_datagram(secret, &self.buf[..n]) else {
                        m::internode_rejected("gossip_auth");
                        tracing::debug!(%from, "gossip datagram without a valid tag dropped");
                        continue;
                    };
                    match self.fresh.check(now_ms(), d.stamp, d.key) {
                        Ok(()) => d.envelope,
                        Err(Refusal::Stale) => {
                            m::internode_rejected("gossip_stale");
                            tracing::debug!(%from, stamp = d.stamp, "stale gossip datagram dropped (clocks out of sync, or a replay)");
                            continue;
                        }
                        Err(Refusal::Replay) => {
                            m::internode_rejected("gossip_replay");
                            tracing::debug!(%from, "replayed gossip datagram dropped");
                            continue;
                        }
                    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn secret() -> ClusterSecret {
        ClusterSecret::from_bytes(b"0123456789abcdef")
    }

    fn datagram(envelope: &[u8], stamp: u64, id: u64) -> Vec<u8> {
        let mut buf = vec![0u8; envelope.len() + OVERHEAD];
        buf[..envelope.len()].copy_from_slice(envelope);
        let n = seal_datagram(&secret(), &mut buf, envelope.len(), stamp, id);
        assert_eq!(n, buf.len());
        buf
    }

    #[test]
    fn datagrams_open_with_the_secret_only_and_any_change_fails() {
        let d = datagram(b"envelope", NOW, 7);
        let o = open_datagram(&secret(), &d).unwrap();
        assert_eq!((o.envelope, o.stamp), (8, NOW));
        assert_eq!(&d[..o.envelope], b"envelope");
        let other = ClusterSecret::from_bytes(b"fedcba9876543210");
        assert_eq!(open_datagram(&other, &d), None);
        for i in 0..d.len() {
            let mut bad = d.clone();
            bad[i] ^= 1;
            assert_eq!(open_datagram(&secret(), &bad), None, "byte {i}");
        }
        for n in 0..d.len() {
            assert_eq!(open_datagram(&secret(), &d[..n]), None, "{n} bytes");
        }
        // The same envelope in the same millisecond: another id, another tag.
        let again = open_datagram(&secret(), &datagram(b"envelope", NOW, 8)).unwrap();
        assert_ne!(again.key, o.key);
    }

    #[test]
    fn stale_and_future_datagrams_are_refused() {
        let mut f = Freshness::new(WINDOW, 100);
        let w = WINDOW.as_millis() as u64;
        let key = |i: u8| [i; 16];
        assert_eq!(f.check(NOW, NOW - w - 1, key(1)), Err(Refusal::Stale));
        assert_eq!(f.check(NOW, NOW + w + 1, key(2)), Err(Refusal::Stale));
        assert_eq!(f.check(NOW, NOW - w, key(3)), Ok(()));
        assert_eq!(f.check(NOW, NOW + w, key(4)), Ok(()));
        assert_eq!(f.check(NOW, NOW, key(5)), Ok(()));
    }

    #[test]
    fn a_replay_within_the_window_is_refused_and_later_it_is_stale() {
        let mut f = Freshness::new(WINDOW, 100);
        let w = WINDOW.as_millis() as u64;
        assert_eq!(f.check(NOW, NOW, [1; 16]), Ok(()));
        assert_eq!(f.check(NOW + 10, NOW, [1; 16]), Err(Refusal::Replay));
        assert_eq!(f.check(NOW + w, NOW, [1; 16]), Err(Refusal::Replay));
        // Past the window the entry is forgotten, and the datagram is stale anyway.
        assert_eq!(f.check(NOW + w + 1, NOW, [1; 16]), Err(Refusal::Stale));
        assert_eq!(f.check(NOW + w + 1, NOW + w + 1, [2; 16]), Ok(()));
        assert_eq!(f.order.len(), 1, "expired entries are dropped");
        assert_eq!(f.seen.len(), 1);
    }

    #[test]
    fn memory_is_bounded_and_a_full_cache_shrinks_the_window_instead_of_admitting_replays() {
        let mut f = Freshness::new(WINDOW, 4);
        for i in 0..10u8 {
            assert_eq!(f.check(NOW, NOW + i as u64, [i; 16]), Ok(()));
            assert!(f.order.len() <= 4 && f.seen.len() <= 4);
        }
        // Entries 0..=5 were evicted: replaying them is refused as stale, not accepted.
        for i in 0..6u8 {
            assert_eq!(f.check(NOW, NOW + i as u64, [i; 16]), Err(Refusal::Stale));
        }
        // The remembered ones are replays.
        for i in 6..10u8 {
            assert_eq!(f.check(NOW, NOW + i as u64, [i; 16]), Err(Refusal::Replay));
        }
        // New datagrams still pass.
        assert_eq!(f.check(NOW, NOW + 20, [20; 16]), Ok(()));
    }
}
