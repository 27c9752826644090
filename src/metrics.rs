//! Every metric roomcast exports: names, help texts, and the Prometheus recorder.
//!
//! Code records through the `metrics` facade using the helpers here, so names live in one
//! place. Labels are low-cardinality by rule: an error code, a close reason, a direction, a
//! member state — never a room, a connection or a node id. The recorder is
//! `metrics-exporter-prometheus` without its HTTP listener; `/metrics` renders the
//! [`PrometheusHandle`] from an actix route, and a background thread runs its upkeep.
//! The one per-delivery metric, the delivery latency histogram, is kept here in fixed atomic
//! buckets instead (the recorder would store every sample until the next scrape) and appended
//! to the rendered text.

use std::sync::OnceLock;
use std::time::Duration;

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, describe_counter, describe_gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::{CloseReason, ErrorCode};

pub const CONNECTIONS: &str = "roomcast_connections";
pub const ROOMS: &str = "roomcast_rooms";
pub const PUBLISHED: &str = "roomcast_messages_published_total";
pub const DELIVERED: &str = "roomcast_messages_delivered_total";
pub const DELIVERY_LATENCY: &str = "roomcast_delivery_latency_seconds";
pub const SLOW_CONSUMERS: &str = "roomcast_slow_consumer_disconnects_total";
pub const PROTOCOL_ERRORS: &str = "roomcast_protocol_errors_total";
pub const DISCONNECTS: &str = "roomcast_disconnects_total";
pub const SHARD_QUEUE_FULL: &str = "roomcast_shard_queue_full_total";
pub const FEED_GAPS: &str = "roomcast_feed_gaps_total";
pub const GAP_EVICTIONS: &str = "roomcast_gap_evictions_total";
pub const OWNER_CHANGES: &str = "roomcast_room_owner_changes_total";
pub const FRESH_EPOCHS: &str = "roomcast_room_epochs_started_total";
pub const HANDOFFS: &str = "roomcast_handoffs_total";
pub const REQUEST_RETRIES: &str = "roomcast_request_retries_total";
pub const REPLICATION: &str = "roomcast_replication_total";
pub const DUPLICATE_PUBLISHES: &str = "roomcast_publish_duplicates_total";
pub const UNDER_REPLICATED: &str = "roomcast_rooms_under_replicated";
pub const REPLICA_COPIES: &str = "roomcast_room_replica_copies";
pub const QUORUM: &str = "roomcast_quorum";
pub const QUORUM_LOSSES: &str = "roomcast_quorum_losses_total";
pub const CLUSTER_MEMBERS: &str = "roomcast_cluster_members";
pub const INTERNODE_MESSAGES: &str = "roomcast_internode_messages_total";
pub const INTERNODE_BYTES: &str = "roomcast_internode_bytes_total";
pub const INTERNODE_REJECTED: &str = "roomcast_internode_rejected_total";
pub const INTERNODE_DROPPED: &str = "roomcast_internode_queue_overflows_total";
pub const AUTH_FAILURES: &str = "roomcast_auth_failures_total";
pub const API_REQUESTS: &str = "roomcast_api_requests_total";
pub const SSE_CONNECTIONS: &str = "roomcast_sse_connections";
pub const PRESENCE_ENTRIES: &str = "roomcast_presence_entries";
pub const PRESENCE_REFUSED: &str = "roomcast_presence_refused_total";
pub const CONNECTIONS_REFUSED: &str = "roomcast_connections_refused_total";
pub const HANDSHAKES_PENDING: &str = "roomcast_handshakes_pending";
pub const ROOMS_REFUSED: &str = "roomcast_rooms_refused_total";
pub const TLS_RELOADS: &str = "roomcast_tls_reloads_total";
pub const ROUTER_ENTRIES: &str = "roomcast_router_entries";
pub const OUTBOUND_QUEUED_FRAMES: &str = "roomcast_outbound_queued_frames";
pub const OUTBOUND_QUEUED_BYTES: &str = "roomcast_outbound_queued_bytes";
pub const INTERNODE_QUEUED_MESSAGES: &str = "roomcast_internode_queued_messages";
pub const INTERNODE_QUEUED_BYTES: &str = "roomcast_internode_queued_bytes";
pub const INTERNODE_LINKS: &str = "roomcast_internode_links";
pub const SHARD_QUEUED: &str = "roomcast_shard_queued_inputs";
pub const DELIVERY_QUEUED: &str = "roomcast_delivery_batches_queued";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_FDS: &str = "process_open_fds";
pub const PROCESS_START: &str = "process_start_time_seconds";
pub const HEAP_IN_USE: &str = "roomcast_heap_in_use_bytes";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";

/// Histogram buckets for latencies, in seconds (50 µs … 5 s).
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Installs the process-wide recorder (once) and returns its handle. Starts the upkeep thread.
pub fn install() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), &LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
            let _ = STARTED_AT.set(crate::now_us() as f64 / 1e6);
            let h = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        h.run_upkeep();
                    }
                })
                .map_err(|e| e.to_string())?;
            Ok(handle)
        })
        .clone()
}

fn describe() {
    describe_gauge!(CONNECTIONS, "WebSocket connections open on this node");
    describe_gauge!(ROOMS, "Rooms this node owns (sequences) now");
    describe_counter!(PUBLISHED, "Publishes acknowledged to clients of this node");
    describe_gauge!(
        PRESENCE_ENTRIES,
        "Presence entries held in the rooms this node owns"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Client connections turned away before they started, by reason (per_ip, pending_handshakes, max_connections, shutting_down)"
    );
    describe_counter!(
        TLS_RELOADS,
        "TLS certificate reloads on SIGHUP, by result (ok, error: the previous certificate stays)"
    );
    describe_gauge!(
        HANDSHAKES_PENDING,
        "HTTP connections not yet a WebSocket or SSE stream (max_pending_handshakes)"
    );
    describe_counter!(
        PRESENCE_REFUSED,
        "Joins with presence not recorded because the room's set was full (presence_max_per_room)"
    );
    describe_counter!(
        ROOMS_REFUSED,
        "Requests for rooms that were not created, by reason (node_full: the room's owner here \
         had max_rooms rooms, answered room_limit; connection_rate: a connection addressed more \
         than max_new_rooms_per_minute new rooms, answered rate_limited)"
    );
    describe_gauge!(
        SSE_CONNECTIONS,
        "SSE connections open on this node (also in roomcast_connections)"
    );
    describe_counter!(
        API_REQUESTS,
        "Server API requests answered, by endpoint and HTTP status"
    );
    describe_counter!(
        AUTH_FAILURES,
        "Client tokens refused, by reason (missing, malformed, expired, bad_signature, unknown_key, algorithm, bad_claims)"
    );
    describe_counter!(
        DELIVERED,
        "Event frames written to client sockets on this node"
    );
    describe_counter!(
        SLOW_CONSUMERS,
        "Connections closed because their outbound queue overflowed (1013)"
    );
    describe_counter!(
        PROTOCOL_ERRORS,
        "Error replies sent to clients, by error code"
    );
    describe_counter!(DISCONNECTS, "Connections closed, by close reason");
    describe_counter!(
        SHARD_QUEUE_FULL,
        "Requests refused because a room shard's queue was full"
    );
    describe_counter!(
        FEED_GAPS,
        "Gaps detected in a room feed from its owner (each is resynced)"
    );
    describe_counter!(
        GAP_EVICTIONS,
        "Connections closed because history could not fill a feed gap"
    );
    describe_counter!(
        OWNER_CHANGES,
        "Rooms with local subscribers whose owner node changed"
    );
    describe_counter!(
        FRESH_EPOCHS,
        "Rooms this node started in a new epoch (new rooms, or rooms of a dead owner)"
    );
    describe_counter!(
        HANDOFFS,
        "Room state handoffs, by event (sent, confirmed, resent, conflict)"
    );
    describe_counter!(
        REQUEST_RETRIES,
        "Requests re-sent because the node asked was no longer the room's owner"
    );
    describe_counter!(
        REPLICATION,
        "Replication events, by event (sync: a room sent whole to a replica; promotion: a replica \
         took over a dead owner's room in its epoch; conflict: replication refused while views \
         disagreed)"
    );
    describe_counter!(
        DUPLICATE_PUBLISHES,
        "Publishes answered with the seq of an earlier publish with the same key"
    );
    describe_gauge!(
        UNDER_REPLICATED,
        "Rooms owned here with fewer synced replicas than room_replicas"
    );
    describe_gauge!(
        REPLICA_COPIES,
        "Copies of other nodes' rooms held here as their replica"
    );
    describe_gauge!(
        QUORUM,
        "1 while this node sees a majority of the cluster's stable membership and sequences; 0 while it is cut off"
    );
    describe_counter!(
        QUORUM_LOSSES,
        "Times this node lost the majority of the cluster's stable membership (and stopped sequencing)"
    );
    describe_gauge!(
        CLUSTER_MEMBERS,
        "Cluster members known, by state (live, dead)"
    );
    describe_counter!(
        INTERNODE_MESSAGES,
        "Internode messages, by direction (in, out)"
    );
    describe_counter!(INTERNODE_BYTES, "Internode bytes, by direction (in, out)");
    describe_counter!(
        INTERNODE_REJECTED,
        "Internode connections or datagrams rejected, by reason"
    );
    describe_counter!(
        INTERNODE_DROPPED,
        "Peer links reset because their send queue overflowed"
    );
    describe_gauge!(
        ROUTER_ENTRIES,
        "Entries in the room routers' tables, summed over shards, by table (member_rooms, \
         owned, copies, pending_owner, moved, hints, pending_requests, publishes_by_room)"
    );
}

fn cached(cell: &'static OnceLock<Counter>, name: &'static str) -> &'static Counter {
    cell.get_or_init(|| metrics::counter!(name))
}

pub fn published() {
    static C: OnceLock<Counter> = OnceLock::new();
    cached(&C, PUBLISHED).increment(1);
    TOTALS.published.fetch_add(1, Ordering::Relaxed);
}

pub fn slow_consumer_disconnect() {
    static C: OnceLock<Counter> = OnceLock::new();
    cached(&C, SLOW_CONSUMERS).increment(1);
    TOTALS.slow_consumers.fetch_add(1, Ordering::Relaxed);
}

/// Events written to sockets by one writer batch (the counter handle is the writer's own).
pub fn delivered(counter: &Counter, events: u64) {
    counter.increment(events);
    TOTALS.delivered.fetch_add(events, Ordering::Relaxed);
}

/// Totals this process can read back (the recorder's cannot be): what the node's dashboard
/// numbers (`crate::status`) are computed from. One relaxed add per publish, per writer batch
/// and per slow consumer.
struct Totals {
    published: AtomicU64,
    delivered: AtomicU64,
    slow_consumers: AtomicU64,
}

static TOTALS: Totals = Totals {
    published: AtomicU64::new(0),
    delivered: AtomicU64::new(0),
    slow_consumers: AtomicU64::new(0),
};

/// A reading of this process's totals and delivery latency histogram.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Publishes acknowledged to this node's clients (`roomcast_messages_published_total`).
    pub published: u64,
    /// Events written to this node's client sockets.
    pub delivered: u64,
    /// Connections cut as slow consumers.
    pub slow_consumers: u64,
    /// Delivery latencies per bucket of [`LATENCY_BUCKETS`] (not cumulative; the last is +Inf).
    pub latency: [u64; LATENCY_BUCKETS.len() + 1],
}

pub fn snapshot() -> Snapshot {
    Snapshot {
        published: TOTALS.published.load(Ordering::Relaxed),
        delivered: TOTALS.delivered.load(Ordering::Relaxed),
        slow_consumers: TOTALS.slow_consumers.load(Ordering::Relaxed),
        latency: std::array::from_fn(|i| LATENCY.buckets[i].load(Ordering::Relaxed)),
    }
}

/// The `q` quantile (0..1) of per-bucket latency counts, in seconds, interpolated linearly
/// inside its bucket (as Prometheus' `histogram_quantile` does); `None` without samples. A
/// quantile in the +Inf bucket is reported as the last finite bound.
pub fn latency_quantile(counts: &[u64; LATENCY_BUCKETS.len() + 1], q: f64) -> Option<f64> {
    let total: u64 = counts.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &c) in counts.iter().enumerate() {
        if c > 0 && (below + c) as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                return LATENCY_BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let within = ((rank - below as f64) / c as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below += c;
    }
    LATENCY_BUCKETS.last().copied()
}

pub fn shard_queue_full() {
    static C: OnceLock<Counter> = OnceLock::new();
    cached(&C, SHARD_QUEUE_FULL).increment(1);
}

/// The delivered-events counter (the writer task adds whole batches).
pub fn delivered_counter() -> Counter {
    metrics::counter!(DELIVERED)
}

/// The delivery latency histogram, kept here rather than in the recorder: it is recorded for
/// every delivery, and the recorder's histograms store every sample until the next scrape.
/// Writers add whole batches ([`LatencyBatch`]); `/metrics` appends it to the recorder's text.
struct LatencyHistogram {
    /// Cumulative per bound is computed when rendering; these are per-bucket counts, the last
    /// one for +Inf.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64,
}

static LATENCY: LatencyHistogram = LatencyHistogram {
    buckets: [const { AtomicU64::new(0) }; LATENCY_BUCKETS.len() + 1],
    sum_us: AtomicU64::new(0),
};

/// Latencies of one write batch, grouped by bucket (microseconds).
#[derive(Default)]
pub struct LatencyBatch {
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum_us: u64,
}

impl LatencyBatch {
    pub fn add(&mut self, us: u64) {
        let secs = us as f64 / 1e6;
        let i = LATENCY_BUCKETS.partition_point(|b| *b < secs);
        self.counts[i] += 1;
        self.sum_us += us;
    }

    /// Adds the batch to the node's histogram and clears it.
    pub fn flush(&mut self) {
        if self.sum_us == 0 && self.counts.iter().all(|c| *c == 0) {
            return;
        }
        for (i, c) in self.counts.iter_mut().enumerate() {
            if *c > 0 {
                LATENCY.buckets[i].fetch_add(*c, Ordering::Relaxed);
                *c = 0;
            }
        }
        LATENCY.sum_us.fetch_add(self.sum_us, Ordering::Relaxed);
        self.sum_us = 0;
    }
}

/// The delivery latency histogram in Prometheus text format.
pub fn render_latency(out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP {DELIVERY_LATENCY} Time from the owner accepting a publish to the event being written to a socket"
    );
    let _ = writeln!(out, "# TYPE {DELIVERY_LATENCY} histogram");
    let mut cumulative = 0u64;
    for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
        cumulative += LATENCY.buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{DELIVERY_LATENCY}_bucket{{le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += LATENCY.buckets[LATENCY_BUCKETS.len()].load(Ordering::Relaxed);
    let _ = writeln!(out, "{DELIVERY_LATENCY}_bucket{{le=\"+Inf\"}} {cumulative}");
    let sum = LATENCY.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(out, "{DELIVERY_LATENCY}_sum {sum}");
    let _ = writeln!(out, "{DELIVERY_LATENCY}_count {cumulative}");
}

/// A client connection turned away before it started (`crate::admission`, shutdown,
/// `max_connections`), by reason.
pub fn connection_refused(reason: &'static str) {
    metrics::counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// A TLS certificate reload (SIGHUP) that worked or failed.
pub fn tls_reload(ok: bool) {
    let result = if ok { "ok" } else { "error" };
    metrics::counter!(TLS_RELOADS, "result" => result).increment(1);
}

/// HTTP connections not yet a WebSocket or SSE stream.
pub fn handshakes_pending(delta: f64) {
    metrics::gauge!(HANDSHAKES_PENDING).increment(delta);
}

pub fn protocol_error(code: ErrorCode) {
    metrics::counter!(PROTOCOL_ERRORS, "code" => code.as_str()).increment(1);
}

/// Requests for rooms not created, by reason: `node_full` (this node, the room's owner, is at
/// `max_rooms`) or `connection_rate` (`max_new_rooms_per_minute`).
pub fn rooms_refused(reason: &'static str, v: u64) {
    if v > 0 {
        metrics::counter!(ROOMS_REFUSED, "reason" => reason).increment(v);
    }
}

/// SSE connections open (also counted in `roomcast_connections`).
pub fn sse_connections(delta: f64) {
    metrics::gauge!(SSE_CONNECTIONS).increment(delta);
}

/// A server API request answered, by endpoint and HTTP status.
pub fn api_request(endpoint: &'static str, status: u16) {
    metrics::counter!(API_REQUESTS, "endpoint" => endpoint, "status" => status.to_string())
        .increment(1);
}

/// A client token refused (or missing, or expired), by reason (`auth::Failure::reason`).
pub fn auth_failure(reason: &'static str) {
    metrics::counter!(AUTH_FAILURES, "reason" => reason).increment(1);
}

pub fn disconnect(reason: CloseReason) {
    metrics::counter!(DISCONNECTS, "reason" => reason.as_str()).increment(1);
}

pub fn connections(delta: f64) {
    metrics::gauge!(CONNECTIONS).increment(delta);
}

pub fn rooms(delta: f64) {
    metrics::gauge!(ROOMS).increment(delta);
}

/// Sets gauge `name`.
pub fn gauge_set(name: &'static str, v: f64) {
    metrics::gauge!(name).set(v);
}

/// Adds `delta` to gauge `name`.
pub fn gauge_add(name: &'static str, delta: f64) {
    metrics::gauge!(name).increment(delta);
}

pub fn add(name: &'static str, v: u64) {
    if v > 0 {
        metrics::counter!(name).increment(v);
    }
}

/// Adds `v` to counter `name` with the label `event`.
pub fn add_labeled(name: &'static str, event: &'static str, v: u64) {
    if v > 0 {
        metrics::counter!(name, "event" => event).increment(v);
    }
}

/// Adds `delta` to the router table size gauge of `table` (one of a fixed set of names).
pub fn router_entries(table: &'static str, delta: f64) {
    if delta != 0.0 {
        metrics::gauge!(ROUTER_ENTRIES, "table" => table).increment(delta);
    }
}

pub fn internode_rejected(reason: &'static str) {
    metrics::counter!(INTERNODE_REJECTED, "reason" => reason).increment(1);
}

pub fn internode_queue_overflow() {
    static C: OnceLock<Counter> = OnceLock::new();
    cached(&C, INTERNODE_DROPPED).increment(1);
}

/// Internode traffic counters: (messages, bytes) for a direction ("in" or "out").
pub fn internode_traffic(direction: &'static str) -> (Counter, Counter) {
    (
        metrics::counter!(INTERNODE_MESSAGES, "direction" => direction),
        metrics::counter!(INTERNODE_BYTES, "direction" => direction),
    )
}

/// When the recorder was installed (the node's start), unix seconds.
static STARTED_AT: OnceLock<f64> = OnceLock::new();

/// Queue depths of a node, read when `/metrics` is scraped: sums over every connection, peer
/// link, room shard and worker inbox. They are not kept in the recorder because keeping them
/// current would cost an atomic operation per frame on the hot path; reading them costs one
/// walk over the connections per scrape.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueDepths {
    /// Frames and bytes waiting in client connections' outboxes.
    pub outbound_frames: u64,
    pub outbound_bytes: u64,
    /// Messages and (approximate) bytes waiting in the peer links' send queues.
    pub internode_messages: u64,
    pub internode_bytes: u64,
    /// Outbound peer links (one per known peer).
    pub internode_links: u64,
    /// Inputs waiting in the room shards' queues.
    pub shard_inputs: u64,
    /// Delivery batches handed to connection worker threads and not yet applied.
    pub delivery_batches: u64,
}

/// Appends the node's queue depths ([`QueueDepths`]) as gauges.
pub fn render_queue_depths(out: &mut String, d: &QueueDepths) {
    for (name, help, v) in [
        (
            OUTBOUND_QUEUED_FRAMES,
            "Frames waiting in client connections' outbound queues (sum over connections)",
            d.outbound_frames,
        ),
        (
            OUTBOUND_QUEUED_BYTES,
            "Bytes waiting in client connections' outbound queues (sum over connections)",
            d.outbound_bytes,
        ),
        (
            INTERNODE_QUEUED_MESSAGES,
            "Messages waiting in the peer links' send queues (sum over peers)",
            d.internode_messages,
        ),
        (
            INTERNODE_QUEUED_BYTES,
            "Approximate bytes waiting in the peer links' send queues (sum over peers)",
            d.internode_bytes,
        ),
        (
            INTERNODE_LINKS,
            "Outbound peer links this node keeps (one per known peer)",
            d.internode_links,
        ),
        (
            SHARD_QUEUED,
            "Inputs waiting in the room shards' queues (sum over shards)",
            d.shard_inputs,
        ),
        (
            DELIVERY_QUEUED,
            "Delivery batches handed to connection worker threads, not yet applied",
            d.delivery_batches,
        ),
    ] {
        gauge_line(out, name, help, v as f64);
    }
}

/// Appends this process's resident memory, open file descriptors, CPU time and start time
/// under the names Prometheus client libraries use for them (`process_*`), read from
/// `/proc/self` at each scrape, and its heap in use. On a system without `/proc` only the
/// start time is there.
pub fn render_process(out: &mut String) {
    if let Some(cpu) = process_cpu_seconds() {
        use std::fmt::Write as _;
        let _ = writeln!(
            out,
            "# HELP {PROCESS_CPU} Total user and system CPU time spent in seconds"
        );
        let _ = writeln!(out, "# TYPE {PROCESS_CPU} counter");
        let _ = writeln!(out, "{PROCESS_CPU} {cpu}");
    }
    if let Some(rss) = process_rss_bytes() {
        gauge_line(
            out,
            PROCESS_RSS,
            "Resident memory size in bytes",
            rss as f64,
        );
    }
    if let Some(fds) = process_open_fds() {
        gauge_line(
            out,
            PROCESS_FDS,
            "Number of open file descriptors",
            fds as f64,
        );
    }
    if let Some(heap) = heap_in_use_bytes() {
        gauge_line(
            out,
            HEAP_IN_USE,
            "Bytes allocated and not yet freed (the allocator's count; unlike resident memory it \
             falls when memory is freed)",
            heap as f64,
        );
    }
    if let Some(t) = STARTED_AT.get() {
        gauge_line(
            out,
            PROCESS_START,
            "Start time of the process since unix epoch in seconds",
            *t,
        );
    }
}

fn gauge_line(out: &mut String, name: &str, help: &str, v: f64) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} gauge");
    let _ = writeln!(out, "{name} {v}");
}

/// VmRSS of this process, in bytes (Linux).
fn process_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Bytes allocated and not freed, as glibc's allocator counts them (`mallinfo2`: in use in
/// its arenas plus its directly mapped large blocks). Resident memory keeps what the
/// allocator retains after a peak; this does not, so it tells a leak from a high-water mark.
/// `mallinfo2` walks every arena's free lists under their locks: fine once per scrape.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn heap_in_use_bytes() -> Option<u64> {
    // SAFETY: mallinfo2 has no preconditions; it only reads the allocator's state.
    let mi = unsafe { libc::mallinfo2() };
    Some((mi.uordblks + mi.hblkhd) as u64)
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn heap_in_use_bytes() -> Option<u64> {
    None
}

/// User + system CPU time of this process, in seconds (Linux).
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name (which may hold spaces) start after ") ": utime and
    // stime are the 14th and 15th fields of the line, the 12th and 13th after it.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut f = rest.split_whitespace().skip(11);
    let ticks = f.next()?.parse::<f64>().ok()? + f.next()?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

/// Open file descriptors of this process (Linux; the directory read itself holds one more).
fn process_open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_quantile_interpolates_inside_the_bucket() {
        let mut counts = [0u64; LATENCY_BUCKETS.len() + 1];
        assert_eq!(latency_quantile(&counts, 0.99), None);
        // 100 samples in (0.5 ms, 1 ms]: p50 is half way, p99 near the top.
        counts[4] = 100;
        let p50 = latency_quantile(&counts, 0.5).unwrap();
        assert!((p50 - 0.00075).abs() < 1e-9, "{p50}");
        let p99 = latency_quantile(&counts, 0.99).unwrap();
        assert!(p99 > 0.00099 && p99 <= 0.001, "{p99}");
        // One slow sample in 100 does not move p99 out of the first bucket; two do.
        counts[4] = 99;
        counts[10] = 1;
        assert!(latency_quantile(&counts, 0.99).unwrap() <= 0.001);
        counts[4] = 98;
        counts[10] = 2;
        assert!(latency_quantile(&counts, 0.99).unwrap() > 0.05);
        // Beyond the last bound: reported as the last bound.
        let mut inf = [0u64; LATENCY_BUCKETS.len() + 1];
        inf[LATENCY_BUCKETS.len()] = 5;
        assert_eq!(latency_quantile(&inf, 0.99), Some(5.0));
    }

    #[test]
    fn latency_histogram_renders_cumulative_buckets() {
        let mut b = LatencyBatch::default();
        b.add(40); // 40 µs: first bucket (≤ 50 µs)
        b.add(700); // ≤ 1 ms
        b.add(9_000_000); // 9 s: +Inf
        b.flush();
        let mut out = String::new();
        render_latency(&mut out);
        let line = |le: &str| {
            out.lines()
                .find(|l| l.contains(&format!("le=\"{le}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap()
        };
        assert!(line("0.00005") >= 1);
        assert!(line("0.001") > line("0.00005"));
        assert!(line("+Inf") > line("5"));
        assert!(out.contains("roomcast_delivery_latency_seconds_count"));
        assert!(out.contains("# TYPE roomcast_delivery_latency_seconds histogram"));
    }

    #[test]
    fn process_and_queue_gauges_render_as_prometheus_lines() {
        let mut out = String::new();
        render_process(&mut out);
        let rss = metric(&out, PROCESS_RSS).expect("VmRSS on Linux");
        assert!(rss > 1_000_000.0, "{out}");
        let fds = metric(&out, PROCESS_FDS).expect("/proc/self/fd on Linux");
        assert!(fds >= 3.0, "{out}");
        assert!(metric(&out, PROCESS_CPU).expect("/proc/self/stat on Linux") >= 0.0);
        if cfg!(target_env = "gnu") {
            // A live 64 MiB allocation is counted (other tests allocate meanwhile: half of it
            // must show).
            let before = metric(&out, HEAP_IN_USE).expect("mallinfo2 with glibc");
            let block = std::hint::black_box(vec![1u8; 64 << 20]);
            out.clear();
            render_process(&mut out);
            let after = metric(&out, HEAP_IN_USE).unwrap();
            assert!(after - before >= (32 << 20) as f64, "{before} -> {after}");
            drop(block);
        }
        let depths = QueueDepths {
            outbound_frames: 3,
            internode_bytes: 1024,
            ..QueueDepths::default()
        };
        out.clear();
        render_queue_depths(&mut out, &depths);
        assert_eq!(metric(&out, OUTBOUND_QUEUED_FRAMES), Some(3.0));
        assert_eq!(metric(&out, INTERNODE_QUEUED_BYTES), Some(1024.0));
        assert_eq!(metric(&out, SHARD_QUEUED), Some(0.0));
        assert!(out.contains(&format!("# TYPE {DELIVERY_QUEUED} gauge")));
    }

    fn metric(text: &str, name: &str) -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name) && l.as_bytes().get(name.len()) == Some(&b' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}
