//! The sampler: every `--sample-every`, each node's `/metrics` (and this process's own
//! memory), as rows of a time series — in memory for the growth check, and appended to
//! `samples.csv` as they come so a run that dies still leaves its data.
//!
//! Resident memory and open file descriptors come from the node's `process_*` gauges (read
//! from `/proc/self` at each scrape, the same numbers as `/proc/PID/status` `VmRSS` and
//! `/proc/PID/fd`), so samples follow a node across restarts without knowing its PID. A
//! restart shows as a new `process_start_time_seconds`; a node that does not answer is
//! sampled as down.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::Shared;
use super::ws;

/// The series sampled: (column name, metric name, label selector).
pub(crate) const SERIES: [(&str, &str, &str); 24] = [
    ("rss_bytes", "process_resident_memory_bytes", ""),
    ("open_fds", "process_open_fds", ""),
    ("start_time_s", "process_start_time_seconds", ""),
    ("heap_bytes", "roomcast_heap_in_use_bytes", ""),
    ("connections", "roomcast_connections", ""),
    ("rooms_owned", "roomcast_rooms", ""),
    ("replica_copies", "roomcast_room_replica_copies", ""),
    ("under_replicated", "roomcast_rooms_under_replicated", ""),
    (
        "member_rooms",
        "roomcast_router_entries",
        "table=\"member_rooms\"",
    ),
    (
        "pending_requests",
        "roomcast_router_entries",
        "table=\"pending_requests\"",
    ),
    ("hints", "roomcast_router_entries", "table=\"hints\""),
    ("moved", "roomcast_router_entries", "table=\"moved\""),
    (
        "pending_owner",
        "roomcast_router_entries",
        "table=\"pending_owner\"",
    ),
    (
        "publishes_by_room",
        "roomcast_router_entries",
        "table=\"publishes_by_room\"",
    ),
    ("outbound_frames", "roomcast_outbound_queued_frames", ""),
    ("outbound_bytes", "roomcast_outbound_queued_bytes", ""),
    (
        "internode_messages",
        "roomcast_internode_queued_messages",
        "",
    ),
    ("internode_bytes", "roomcast_internode_queued_bytes", ""),
    ("internode_links", "roomcast_internode_links", ""),
    ("shard_inputs", "roomcast_shard_queued_inputs", ""),
    ("delivery_batches", "roomcast_delivery_batches_queued", ""),
    ("published_total", "roomcast_messages_published_total", ""),
    ("delivered_total", "roomcast_messages_delivered_total", ""),
    ("cpu_s", "process_cpu_seconds_total", ""),
];

pub(crate) const N: usize = SERIES.len();

/// Columns the sampler itself reads or fills (checked against [`SERIES`] in the tests).
const START: usize = 2;
const CONNECTIONS: usize = 4;
const PUBLISHED: usize = 21;
const DELIVERED: usize = 22;
const CPU: usize = 23;

/// The column of a series.
pub(crate) fn col(name: &str) -> Option<usize> {
    SERIES.iter().position(|s| s.0 == name)
}

/// One node (or this process, `node == urls.len()`) at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// Seconds since the start of the run.
    pub t: f64,
    pub node: usize,
    pub up: bool,
    pub v: [f64; N],
}

/// What the sampler recorded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Samples {
    pub rows: Vec<Sample>,
    /// (node, seconds since the start): a sample that found the node down or restarted.
    pub restarts: Vec<(usize, f64)>,
    /// Nodes sampled (rows with `node == nodes` are this process).
    pub nodes: usize,
}

/// Samples until `stop`; then one last time, and returns everything.
pub(crate) async fn run(sh: Arc<Shared>, mut stop: watch::Receiver<bool>) -> Samples {
    let urls = sh.args.urls.clone();
    let addrs: Vec<String> = urls
        .iter()
        .map(|u| ws::host_port(u).unwrap_or("").to_string())
        .collect();
    let mut out = Samples {
        nodes: urls.len(),
        ..Samples::default()
    };
    let mut csv = sh.args.out.as_ref().and_then(|dir| {
        let mut f = std::fs::File::create(dir.join("samples.csv")).ok()?;
        let cols: Vec<&str> = SERIES.iter().map(|s| s.0).collect();
        let _ = writeln!(f, "t_s,node,up,{}", cols.join(","));
        Some(f)
    });
    // The start time each node had at its last sample (to see restarts).
    let mut starts: Vec<Option<f64>> = vec![None; urls.len()];
    let mut tick = tokio::time::interval(sh.args.sample_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            _ = tick.tick() => false,
            _ = stop.changed() => true,
        };
        let t = sh.started.elapsed().as_secs_f64();
        let scrapes = futures_util::future::join_all(
            addrs
                .iter()
                .map(|a| ws::http_get(a, "/metrics", Duration::from_secs(5))),
        )
        .await;
        for (node, scrape) in scrapes.into_iter().enumerate() {
            let s = match scrape {
                Some((200, body)) => Sample {
                    t,
                    node,
                    up: true,
                    v: parse(&body),
                },
                _ => Sample {
                    t,
                    node,
                    up: false,
                    v: [f64::NAN; N],
                },
            };
            let start = s.v[START];
            let restarted = match (starts[node], s.up) {
                (_, false) => true,
                (Some(prev), true) => prev != start,
                (None, true) => false,
            };
            if s.up {
                starts[node] = Some(start);
            }
            if restarted {
                out.restarts.push((node, t));
            }
            write_row(&mut csv, &s, &urls);
            out.rows.push(s);
        }
        let own = own_sample(&sh, t, urls.len());
        write_row(&mut csv, &own, &urls);
        out.rows.push(own);
        if stopping {
            return out;
        }
    }
}

fn write_row(csv: &mut Option<std::fs::File>, s: &Sample, urls: &[String]) {
    let Some(f) = csv else { return };
    let name = if s.node < urls.len() {
        format!("n{}", s.node + 1)
    } else {
        "soak".to_string()
    };
    let vals: Vec<String> =
        s.v.iter()
            .map(|v| {
                if v.is_nan() {
                    String::new()
                } else {
                    format!("{v}")
                }
            })
            .collect();
    let _ = writeln!(f, "{:.1},{name},{},{}", s.t, u8::from(s.up), vals.join(","));
    let _ = f.flush();
}

/// This process: its memory, descriptors and open connections (not judged; it keeps every
/// acknowledgement and witness log by design).
fn own_sample(sh: &Shared, t: f64, node: usize) -> Sample {
    let mut v = [f64::NAN; N];
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kb) = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|k| k.parse::<f64>().ok())
    {
        v[0] = kb * 1024.0;
    }
    if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
        v[1] = d.count() as f64;
    }
    v[CONNECTIONS] = sh
        .open
        .iter()
        .map(|o| o.load(Ordering::Relaxed))
        .sum::<i64>() as f64;
    v[CPU] = crate::metrics::process_cpu_seconds().unwrap_or(f64::NAN);
    v[PUBLISHED] = sh.churn.publishes_acked.load(Ordering::Relaxed) as f64;
    v[DELIVERED] = (sh.churn.deliveries.load(Ordering::Relaxed)
        + sh.witness.deliveries.load(Ordering::Relaxed)) as f64;
    Sample {
        t,
        node,
        up: true,
        v,
    }
}

/// The sampled series of a Prometheus text body; a series not there is 0 (it appears once
/// recorded), except the process and heap gauges (the first four), which are NaN when missing.
pub(crate) fn parse(body: &str) -> [f64; N] {
    let mut v = [0.0; N];
    v[..4].fill(f64::NAN);
    for line in body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((key, val)) = line.rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = match key.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (key, ""),
        };
        if let Some(i) = SERIES
            .iter()
            .position(|(_, m, sel)| *m == name && *sel == labels)
            && let Ok(x) = val.parse::<f64>()
        {
            v[i] = x;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_text_becomes_a_row() {
        let body = "# HELP x y\nprocess_resident_memory_bytes 1048576\nprocess_open_fds 12\n\
                    roomcast_router_entries{table=\"hints\"} 3\nroomcast_connections 7\n\
                    roomcast_connections_refused_total{reason=\"per_ip\"} 9\n";
        let v = parse(body);
        assert_eq!(v[col("rss_bytes").unwrap()], 1048576.0);
        assert_eq!(v[col("open_fds").unwrap()], 12.0);
        assert_eq!(v[col("hints").unwrap()], 3.0);
        assert_eq!(v[col("connections").unwrap()], 7.0);
        assert_eq!(v[col("moved").unwrap()], 0.0);
        assert!(v[col("start_time_s").unwrap()].is_nan());
        assert!(v[col("heap_bytes").unwrap()].is_nan());
        assert_eq!(SERIES[START].0, "start_time_s");
        assert_eq!(SERIES[CONNECTIONS].0, "connections");
        assert_eq!(SERIES[PUBLISHED].0, "published_total");
        assert_eq!(SERIES[DELIVERED].0, "delivered_total");
        assert_eq!(SERIES[CPU].0, "cpu_s");
    }
}
