//! The bench report: what one run measured, as text for people and JSON for scripts.

use std::fmt;
use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Proto, Shared};

/// What one subscriber saw.
#[derive(Debug, Default, Clone)]
pub(crate) struct SubResult {
    /// The room this subscriber followed.
    pub room: usize,
    /// --strict: every `(publisher, n)` received.
    pub seen: std::collections::HashSet<(u64, u64)>,
    pub received: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Seqs skipped within an epoch (a violation).
    pub gaps: u64,
    /// Resumes answered `recovered: false` (told, not silent).
    pub unrecovered: u64,
    pub epoch_changes: u64,
    /// Deliveries whose (room, epoch, seq) another subscriber saw with other content.
    pub order_conflicts: u64,
    pub bad_frames: u64,
    pub disconnected: bool,
}

/// Measures taken by the driver.
pub(crate) struct Measures {
    pub connect_s: f64,
    pub measured_s: f64,
    pub joined: usize,
    pub connect_failed: usize,
    pub cpu_s: f64,
    pub rss_before: Option<u64>,
    pub rss_after_connect: Option<u64>,
    pub rss_end: Option<u64>,
    /// CPU time the node processes (`--rss-pid`) used during the measured window.
    pub server_cpu_s: Option<f64>,
}

/// Latency percentiles, microseconds (publish sent → event received).
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// The result of one bench run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub proto: Proto,
    pub urls: Vec<String>,
    pub subscribers: usize,
    pub rooms: usize,
    pub publishers: usize,
    pub rate: u64,
    pub in_flight: usize,
    pub size: usize,
    pub duration_s: f64,
    /// Time for all subscribers to connect and be joined.
    pub connect_s: f64,
    pub joined: usize,
    pub connect_failed: usize,
    pub published: u64,
    pub publishes_per_s: f64,
    pub delivered: u64,
    pub deliveries_per_s: f64,
    pub latency: Latency,
    /// Publishes acknowledged over the whole run (warm-up and drain included).
    pub acked_total: u64,
    /// Deliveries the acknowledged publishes call for (acked per room × its subscribers).
    pub expected_deliveries: u64,
    /// Unique, in-order deliveries received over the whole run.
    pub received_total: u64,
    /// Acknowledged messages a subscriber of their room never received. Under `--chaos` this
    /// is reported but not a violation: until replication, an owner's death loses messages it
    /// acknowledged but had not delivered.
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Seqs missing within an epoch at some subscriber.
    pub gaps: u64,
    pub unrecovered: u64,
    pub epoch_changes: u64,
    pub order_conflicts: u64,
    pub errors_unavailable: u64,
    pub errors_rate_limited: u64,
    pub errors_other: u64,
    pub reconnects: u64,
    pub disconnected: u64,
    /// CPU time of the bench process itself.
    pub bench_cpu_s: f64,
    /// Resident memory of the given node processes per connection (after connect − before).
    pub rss_bytes_per_conn: Option<f64>,
    pub rss_end_mb: Option<f64>,
    /// CPU seconds the servers (`--rss-pid`) used in the measured window.
    pub server_cpu_s: Option<f64>,
    /// Deliveries in the window per second of server CPU: the server's cost per delivery,
    /// independent of how much CPU the generator left it.
    pub deliveries_per_server_cpu_s: Option<f64>,
    /// True when the run saw no loss, duplicate, reorder, gap or order conflict.
    pub ok: bool,
}

pub(crate) async fn build(shared: &Shared, m: Measures) -> Report {
    let a = &shared.args;
    let results = shared.results.lock().await.clone();
    let sum = |f: fn(&SubResult) -> u64| results.iter().map(f).sum::<u64>();
    let (mut lost, mut acked_total, mut expected, mut received_total) = (0, 0, 0, 0);
    for r in 0..a.rooms {
        let acked = shared.acked[r].load(Ordering::Acquire);
        let want = acked * shared.subscribers_per_room[r];
        let got = shared.received[r].load(Ordering::Acquire);
        lost += want.saturating_sub(got);
        acked_total += acked;
        expected += want;
        received_total += got;
    }
    if a.strict {
        // Message by message: each acknowledged one must have reached every subscriber of
        // its room (subscribers that gave up are counted as losing everything they missed).
        let acked = shared
            .acked_msgs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        lost = results
            .iter()
            .map(|s| {
                acked.get(s.room).map_or(0, |set| {
                    set.iter().filter(|m| !s.seen.contains(m)).count() as u64
                })
            })
            .sum();
    }
    let h = shared.hist.lock().await;
    let q = |x: f64| {
        if h.is_empty() {
            0
        } else {
            h.value_at_quantile(x)
        }
    };
    let published = shared.published_in_window.load(Ordering::Acquire);
    let delivered = shared.delivered_in_window.load(Ordering::Acquire);
    let secs = m.measured_s.max(1e-9);
    let conns = (a.subscribers + if a.idle { 0 } else { a.publishers }) as f64;
    let rss_per_conn = match (m.rss_before, m.rss_after_connect) {
        (Some(b), Some(c)) if a.subscribers > 0 => {
            Some((c as f64 - b as f64) / (a.subscribers as f64).max(1.0))
        }
        _ => None,
    };
    let _ = conns;
    let duplicated = sum(|r| r.duplicated);
    let reordered = sum(|r| r.reordered);
    let gaps = sum(|r| r.gaps);
    let order_conflicts = sum(|r| r.order_conflicts);
    Report {
        proto: a.proto,
        urls: a.urls.clone(),
        subscribers: a.subscribers,
        rooms: a.rooms,
        publishers: if a.idle { 0 } else { a.publishers },
        rate: a.rate,
        in_flight: a.in_flight,
        size: a.size,
        duration_s: m.measured_s,
        connect_s: m.connect_s,
        joined: m.joined,
        connect_failed: m.connect_failed,
        published,
        publishes_per_s: published as f64 / secs,
        delivered,
        deliveries_per_s: delivered as f64 / secs,
        latency: Latency {
            count: h.len(),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
        },
        acked_total,
        expected_deliveries: expected,
        received_total,
        lost,
        duplicated,
        reordered,
        gaps,
        unrecovered: sum(|r| r.unrecovered),
        epoch_changes: sum(|r| r.epoch_changes),
        order_conflicts,
        errors_unavailable: shared.errors_unavailable.load(Ordering::Acquire),
        errors_rate_limited: shared.errors_rate_limited.load(Ordering::Acquire),
        errors_other: shared.errors_other.load(Ordering::Acquire),
        reconnects: shared.reconnects.load(Ordering::Acquire),
        disconnected: results.iter().filter(|r| r.disconnected).count() as u64,
        bench_cpu_s: m.cpu_s,
        rss_bytes_per_conn: rss_per_conn,
        rss_end_mb: m.rss_end.map(|b| b as f64 / 1048576.0),
        server_cpu_s: m.server_cpu_s,
        deliveries_per_server_cpu_s: m
            .server_cpu_s
            .filter(|c| *c > 0.0)
            .map(|c| delivered as f64 / c),
        ok: (a.chaos && !a.strict || lost == 0)
            && !(a.strict && results.iter().any(|r| r.unrecovered > 0))
            && duplicated == 0
            && reordered == 0
            && gaps == 0
            && order_conflicts == 0
            && m.connect_failed == 0,
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "roomcast bench ({:?}): {} subscribers, {} rooms, {} publishers, {} B, {} in flight, rate {}",
            self.proto,
            self.subscribers,
            self.rooms,
            self.publishers,
            self.size,
            self.in_flight,
            if self.rate == 0 {
                "max".to_string()
            } else {
                format!("{}/s", self.rate)
            }
        )?;
        writeln!(
            f,
            "  connect+join  {:.2} s for {} clients ({} failed)",
            self.connect_s, self.joined, self.connect_failed
        )?;
        writeln!(
            f,
            "  publishes     {:>12.0} /s  ({} in {:.1} s)",
            self.publishes_per_s, self.published, self.duration_s
        )?;
        writeln!(
            f,
            "  deliveries    {:>12.0} /s  ({})",
            self.deliveries_per_s, self.delivered
        )?;
        let l = &self.latency;
        writeln!(
            f,
            "  latency µs    p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
            l.p50_us, l.p90_us, l.p99_us, l.p999_us, l.max_us, l.count
        )?;
        writeln!(
            f,
            "  checks        lost {}  duplicated {}  reordered {}  gaps {}  order conflicts {}  unrecovered {}  epoch changes {}",
            self.lost,
            self.duplicated,
            self.reordered,
            self.gaps,
            self.order_conflicts,
            self.unrecovered,
            self.epoch_changes
        )?;
        writeln!(
            f,
            "  errors        unavailable {}  rate_limited {}  other {}  reconnects {}  disconnected {}",
            self.errors_unavailable,
            self.errors_rate_limited,
            self.errors_other,
            self.reconnects,
            self.disconnected
        )?;
        write!(f, "  bench cpu     {:.2} s", self.bench_cpu_s)?;
        if let (Some(c), Some(d)) = (self.server_cpu_s, self.deliveries_per_server_cpu_s) {
            write!(
                f,
                "\n  server cpu    {c:.2} s ({d:.0} deliveries per server core-second)"
            )?;
        }
        if let Some(r) = self.rss_bytes_per_conn {
            write!(f, "\n  node rss      {:.0} B per connection", r)?;
        }
        if let Some(r) = self.rss_end_mb {
            write!(f, " ({:.1} MiB at the end)", r)?;
        }
        write!(
            f,
            "\n  verdict       {}",
            if self.ok { "OK" } else { "VIOLATIONS" }
        )
    }
}
