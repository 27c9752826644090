//! What a person looking at the cluster sees: the `/cluster` report and the live dashboard's
//! stream (`GET /dashboard/events`), without Prometheus.
//!
//! Every second each node samples its headline numbers ([`NodeStats`]: connections, rooms
//! owned, publishes and deliveries per second, delivery p99 over that second, slow-consumer
//! disconnects) and gossips them, so any node can show the whole cluster: a person watching
//! one node's dashboard sees every member, and a member's death or drain within a gossip
//! round or two. The numbers ride in their own gossip key, apart from the membership view, so
//! values that change every second never make a new view (views drive room ownership).
//!
//! The dashboard stream is Server-Sent Events: the same JSON as `/cluster`, every second and
//! at once on a membership change. Streams are few and cheap (one snapshot per second each)
//! but still bounded ([`MAX_DASHBOARD_STREAMS`]); a draining node sends a last snapshot (it
//! shows itself draining) and ends them, so the page moves to another member.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::metrics as m;
use crate::node::NodeContext;

/// How often a node samples and gossips its numbers, and dashboard streams send a snapshot.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Dashboard streams open at once on one node; more are refused with 503. A person needs
/// one; the bound keeps a misbehaving page (or a stranger) from holding thousands.
pub const MAX_DASHBOARD_STREAMS: usize = 64;

/// A node's headline numbers, as gossiped (JSON) and shown in `/cluster` under `stats`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeStats {
    /// Open client connections (WebSocket and SSE).
    pub connections: u64,
    /// Rooms this node sequences.
    pub rooms_owned: u64,
    /// Of those, rooms with fewer synced replicas than `room_replicas`.
    pub rooms_under_replicated: u64,
    /// Publishes acknowledged to this node's clients per second (wherever their rooms are
    /// sequenced), over the last sample interval.
    pub publishes_per_s: f64,
    /// Events written to this node's client sockets per second, over the last interval.
    pub deliveries_per_s: f64,
    /// Delivery latency p99 over the last interval, in milliseconds (owner accepting the
    /// publish → event written to the socket); `None` when nothing was delivered.
    pub delivery_p99_ms: Option<f64>,
    /// Connections cut as slow consumers since the process started.
    pub slow_consumers_total: u64,
    pub published_total: u64,
    pub delivered_total: u64,
    /// When sampled, unix milliseconds (a dead member's numbers show how old they are).
    pub at_ms: u64,
}

/// Turns readings of the process's totals into per-interval rates. Pure (time is passed in).
#[derive(Default)]
pub struct Sampler {
    prev: Option<(Instant, m::Snapshot)>,
}

/// What the node itself counts (not in the metrics totals).
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub connections: u64,
    pub rooms_owned: u64,
    pub rooms_under_replicated: u64,
}

impl Sampler {
    pub fn sample(&mut self, now: Instant, snap: m::Snapshot, g: Gauges, at_ms: u64) -> NodeStats {
        let mut stats = NodeStats {
            connections: g.connections,
            rooms_owned: g.rooms_owned,
            rooms_under_replicated: g.rooms_under_replicated,
            slow_consumers_total: snap.slow_consumers,
            published_total: snap.published,
            delivered_total: snap.delivered,
            at_ms,
            ..NodeStats::default()
        };
        if let Some((then, prev)) = &self.prev {
            let secs = now.duration_since(*then).as_secs_f64();
            if secs > 0.0 {
                let rate = |a: u64, b: u64| round2(a.saturating_sub(b) as f64 / secs);
                stats.publishes_per_s = rate(snap.published, prev.published);
                stats.deliveries_per_s = rate(snap.delivered, prev.delivered);
            }
            let delta: [u64; m::LATENCY_BUCKETS.len() + 1] =
                std::array::from_fn(|i| snap.latency[i].saturating_sub(prev.latency[i]));
            stats.delivery_p99_ms = m::latency_quantile(&delta, 0.99).map(|s| round2(s * 1e3));
        }
        self.prev = Some((now, snap));
        stats
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Samples this node's numbers every [`SAMPLE_INTERVAL`] and gossips them, with the
/// connection count that reconnect hints and load-aware clients use.
pub async fn run_sampler(node: Arc<NodeContext>) {
    let mut sampler = Sampler::default();
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    loop {
        tick.tick().await;
        let stats = sampler.sample(
            Instant::now(),
            m::snapshot(),
            Gauges {
                connections: node.conns.len() as u64,
                rooms_owned: node.shards.owned_rooms() as u64,
                rooms_under_replicated: node.shards.under_replicated() as u64,
            },
            crate::now_us() / 1000,
        );
        node.membership.set_connections(node.conns.len()).await;
        if let Ok(text) = serde_json::to_string(&stats) {
            node.membership.set_stats(text).await;
        }
    }
}

/// The `/cluster` report: this node's view of every member (live and recently dead) with
/// its gossiped numbers, and this node's rooms.
pub async fn cluster_report(node: &NodeContext) -> Value {
    let view = node.views.borrow().clone();
    let stats = node.membership.member_stats().await;
    let members: Vec<Value> = view
        .members
        .iter()
        .map(|mbr| {
            let me = mbr.id == node.node_id;
            let stats: Value = stats
                .get(&mbr.id)
                .and_then(|s| serde_json::from_str::<NodeStats>(s).ok())
                .map_or(Value::Null, |s| json!(s));
            json!({
                "id": mbr.id.as_str(),
                "http": mbr.http,
                "cluster": mbr.cluster,
                "live": mbr.live,
                "ready": if me { node.is_ready() } else { mbr.ready },
                "draining": if me { !node.is_accepting() } else { mbr.draining },
                "ws": mbr.ws,
                // This node's own count is exact; others' are as last gossiped (≈1 s old).
                "connections": if me { node.conns.len() as u64 } else { mbr.connections },
                "generation": mbr.generation,
                "version": mbr.version,
                "stats": stats,
            })
        })
        .collect();
    json!({
        "self": node.node_id.as_str(),
        "members": members,
        // This node's rooms: owned, and owned with fewer synced replicas than
        // `room_replicas` (as of the shards' last tick).
        "rooms": {
            "owned": node.shards.owned_rooms(),
            "under_replicated": node.shards.under_replicated(),
            "replica_copies": node.shards.replica_copies(),
            "room_replicas": node.config.room_replicas,
        },
        // Whether this node sees a majority of the cluster's stable membership (else it does
        // not sequence: docs/OPERATIONS.md, Partitions).
        "quorum": node.shards.has_quorum(),
    })
}

static DASHBOARD_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// Counts an open dashboard stream; dropping it (the client went away) frees the slot.
struct StreamSlot;

impl StreamSlot {
    fn take() -> Option<StreamSlot> {
        DASHBOARD_STREAMS
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_DASHBOARD_STREAMS).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot)
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        DASHBOARD_STREAMS.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a dashboard stream was not opened.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamRefused {
    ShuttingDown,
    TooMany,
}

/// The dashboard's SSE body: a `retry:` hint, then `data: <cluster report>` every
/// [`SAMPLE_INTERVAL`] and on every membership change, until the client goes away or the
/// node stops accepting (after one last report that shows it draining).
pub fn dashboard_stream(
    node: Arc<NodeContext>,
) -> Result<impl Stream<Item = Result<Bytes, Infallible>>, StreamRefused> {
    if !node.is_accepting() {
        return Err(StreamRefused::ShuttingDown);
    }
    let slot = StreamSlot::take().ok_or(StreamRefused::TooMany)?;
    struct State {
        node: Arc<NodeContext>,
        views: tokio::sync::watch::Receiver<Arc<crate::cluster::ClusterView>>,
        tick: tokio::time::Interval,
        started: bool,
        ended: bool,
        _slot: StreamSlot,
    }
    let state = State {
        views: node.views.clone(),
        node,
        tick: tokio::time::interval(SAMPLE_INTERVAL),
        started: false,
        ended: false,
        _slot: slot,
    };
    Ok(futures_util::stream::unfold(state, |mut st| async move {
        if st.ended {
            return None;
        }
        let mut out = String::new();
        if !st.started {
            st.started = true;
            // EventSource waits this long before reconnecting on its own.
            out.push_str("retry: 1000\n\n");
        } else {
            tokio::select! {
                _ = st.tick.tick() => {}
                r = st.views.changed() => if r.is_err() { st.ended = true },
            }
        }
        if !st.node.is_accepting() {
            st.ended = true;
        }
        let report = cluster_report(&st.node).await;
        out.push_str("data: ");
        out.push_str(&report.to_string());
        out.push_str("\n\n");
        Some((Ok(Bytes::from(out)), st))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(published: u64, delivered: u64, fast: u64, slow: u64) -> m::Snapshot {
        let mut s = m::Snapshot {
            published,
            delivered,
            slow_consumers: 2,
            ..Default::default()
        };
        s.latency[4] = fast; // (0.5 ms, 1 ms]
        s.latency[10] = slow; // (50 ms, 100 ms]
        s
    }

    #[test]
    fn rates_and_p99_are_over_the_last_interval_only() {
        let mut s = Sampler::default();
        let t0 = Instant::now();
        let g = Gauges {
            connections: 5,
            rooms_owned: 3,
            rooms_under_replicated: 1,
        };
        // The first sample has totals but no rates yet. Its history (slow deliveries before
        // the interval) must not count in the next interval's p99.
        let first = s.sample(t0, snap(100, 1000, 0, 500), g, 1);
        assert_eq!(first.publishes_per_s, 0.0);
        assert_eq!(first.delivery_p99_ms, None);
        assert_eq!(
            (
                first.connections,
                first.rooms_owned,
                first.rooms_under_replicated
            ),
            (5, 3, 1)
        );
        let second = s.sample(
            t0 + Duration::from_secs(2),
            snap(300, 5000, 1000, 500),
            g,
            2,
        );
        assert_eq!(second.publishes_per_s, 100.0);
        assert_eq!(second.deliveries_per_s, 2000.0);
        let p99 = second.delivery_p99_ms.unwrap();
        assert!(p99 > 0.5 && p99 <= 1.0, "{p99}");
        assert_eq!(second.slow_consumers_total, 2);
        assert_eq!(second.published_total, 300);
        // Nothing delivered in the next interval: no p99, zero rates.
        let third = s.sample(
            t0 + Duration::from_secs(3),
            snap(300, 5000, 1000, 500),
            g,
            3,
        );
        assert_eq!(third.delivery_p99_ms, None);
        assert_eq!(third.deliveries_per_s, 0.0);
    }

    #[test]
    fn stats_survive_the_gossip_encoding() {
        let s = NodeStats {
            connections: 7,
            delivery_p99_ms: Some(1.25),
            ..Default::default()
        };
        let text = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<NodeStats>(&text).unwrap(), s);
    }
}
