//! Who may open a client connection, and how many at once: bounds a stranger could otherwise
//! push, applied at the door before any session or room exists.
//!
//! * **Connections per client IP** (`max_connections_per_ip`, WebSocket and SSE alike): a
//!   connection holds an [`IpSlot`] for its life; past the bound a new one is refused with
//!   HTTP 429 before the upgrade. Behind a load balancer every client shares the balancer's
//!   address: set 0 (unlimited) there and bound clients at the balancer.
//! * **HTTP connections not yet a stream** (`max_pending_handshakes`): counted from accept
//!   (actix-http's on-connect hook puts a [`Pending`] in the connection's data) until the
//!   connection becomes a WebSocket or an SSE stream, or ends. Past the bound, upgrades and
//!   SSE opens are refused with HTTP 503 (the answer is cheap; the socket closes). A
//!   connection that does not send its request head within `handshake_timeout` is closed by
//!   actix-http, so a slow-loris client holds its slot that long at most; actix-server's own
//!   per-worker connection cap stops accepting beyond that.
//!
//! Refusals are counted in `roomcast_connections_refused_total{reason}`; the pending count is
//! the gauge `roomcast_handshakes_pending`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::metrics as m;

/// Why a connection was turned away at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_connections_per_ip` (HTTP 429).
    PerIp,
    /// `max_pending_handshakes` (HTTP 503).
    PendingHandshakes,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip",
            Refusal::PendingHandshakes => "pending_handshakes",
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Refusal::PerIp => "too many connections from this address",
            Refusal::PendingHandshakes => "too many connections being set up; retry",
        }
    }
}

/// The node's door: shared by every worker (cheap to clone).
#[derive(Clone)]
pub struct Admission {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    max_per_ip: usize,
    pending: Arc<AtomicUsize>,
    max_pending: usize,
}

impl Admission {
    pub fn new(max_per_ip: usize, max_pending: usize) -> Admission {
        Admission {
            per_ip: Arc::default(),
            max_per_ip,
            pending: Arc::default(),
            max_pending,
        }
    }

    /// Takes a slot for one more connection from `ip` (always, when unlimited).
    pub fn admit_ip(&self, ip: IpAddr) -> Result<IpSlot, Refusal> {
        if self.max_per_ip == 0 {
            return Ok(IpSlot { map: None, ip });
        }
        let mut g = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = g.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            drop(g);
            m::connection_refused(Refusal::PerIp.reason());
            return Err(Refusal::PerIp);
        }
        *n += 1;
        Ok(IpSlot {
            map: Some(self.per_ip.clone()),
            ip,
        })
    }

    /// Counts a newly accepted HTTP connection (from actix-http's on-connect hook).
    pub fn accepted(&self) -> Pending {
        let n = self.pending.fetch_add(1, Ordering::AcqRel) + 1;
        m::handshakes_pending(1.0);
        Pending {
            counter: self.pending.clone(),
            over: n > self.max_pending,
            released: AtomicBool::new(false),
        }
    }

    /// Connections of `ip` now (for tests and diagnostics).
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        let g = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        g.get(&ip).copied().unwrap_or(0)
    }

    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// One connection's place in its address's count; dropping it gives the place back.
pub struct IpSlot {
    map: Option<Arc<Mutex<HashMap<IpAddr, usize>>>>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(map) = &self.map else { return };
        let mut g = map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = g.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.remove(&self.ip);
            }
        }
    }
}

/// An HTTP connection that is not (yet) a WebSocket or SSE stream. Lives in the connection's
/// data (actix-http drops it with the connection); [`Pending::release`] gives the place back
/// early, when the connection becomes a stream.
pub struct Pending {
    counter: Arc<AtomicUsize>,
    /// It was accepted past `max_pending_handshakes`: its upgrade is refused.
    pub over: bool,
    released: AtomicBool,
}

impl Pending {
    /// Checks the bound; `Err` when this connection came in past it.
    pub fn check(&self) -> Result<(), Refusal> {
        if self.over {
            m::connection_refused(Refusal::PendingHandshakes.reason());
            return Err(Refusal::PendingHandshakes);
        }
        Ok(())
    }

    /// The connection became a stream: it no longer counts as pending.
    pub fn release(&self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            self.counter.fetch_sub(1, Ordering::AcqRel);
            m::handshakes_pending(-1.0);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ip_slots_are_bounded_and_given_back() {
        let a = Admission::new(2, 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let s1 = a.admit_ip(ip).unwrap();
        let _s2 = a.admit_ip(ip).unwrap();
        assert_eq!(a.admit_ip(ip).err(), Some(Refusal::PerIp));
        // Another address is not affected.
        let _o = a.admit_ip(other).unwrap();
        drop(s1);
        assert_eq!(a.connections_from(ip), 1);
        let _s3 = a.admit_ip(ip).unwrap();
        assert_eq!(a.connections_from(ip), 2);
    }

    #[test]
    fn unlimited_per_ip_counts_nothing() {
        let a = Admission::new(0, 10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let slots: Vec<_> = (0..100).map(|_| a.admit_ip(ip).unwrap()).collect();
        assert_eq!(a.connections_from(ip), 0);
        drop(slots);
    }

    #[test]
    fn pending_connections_past_the_bound_are_refused_and_counted_until_released() {
        let a = Admission::new(0, 2);
        let p1 = a.accepted();
        let p2 = a.accepted();
        let p3 = a.accepted();
        assert!(p1.check().is_ok() && p2.check().is_ok());
        assert_eq!(p3.check(), Err(Refusal::PendingHandshakes));
        assert_eq!(a.pending(), 3);
        p1.release();
        p1.release(); // once only
        assert_eq!(a.pending(), 2);
        drop(p1);
        assert_eq!(a.pending(), 2);
        drop(p3);
        assert_eq!(a.pending(), 1);
        // Room again: a new connection is within the bound.
        let p4 = a.accepted();
        assert!(p4.check().is_ok());
        drop((p2, p4));
        assert_eq!(a.pending(), 0);
    }
}
