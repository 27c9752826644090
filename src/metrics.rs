//! Every metric roomcast exports: names, help texts, and the Prometheus recorder.
//!
//! Code records through the `metrics` facade using the helpers here, so names live in one
//! place. Labels are low-cardinality by rule: an error code, a close reason, a direction, a
//! member state — never a room, a connection or a node id. The recorder is
//! `metrics-exporter-prometheus` without its HTTP listener; `/metrics` renders the
//! [`PrometheusHandle`] from an actix route, and a background thread runs its upkeep.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{Counter, Histogram, Unit, describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::protocol::ErrorCode;
use crate::session::CloseReason;

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
pub const CLUSTER_MEMBERS: &str = "roomcast_cluster_members";
pub const INTERNODE_MESSAGES: &str = "roomcast_internode_messages_total";
pub const INTERNODE_BYTES: &str = "roomcast_internode_bytes_total";
pub const INTERNODE_REJECTED: &str = "roomcast_internode_rejected_total";
pub const INTERNODE_DROPPED: &str = "roomcast_internode_queue_overflows_total";

/// Histogram buckets for latencies, in seconds (50 µs … 5 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
];

/// Installs the process-wide recorder (once) and returns its handle. Starts the upkeep thread.
pub fn install() -> Result<PrometheusHandle, String> {
    static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_string()), LATENCY_BUCKETS)
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())?;
            describe();
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
    describe_counter!(
        DELIVERED,
        "Event frames written to client sockets on this node"
    );
    describe_histogram!(
        DELIVERY_LATENCY,
        Unit::Seconds,
        "Time from the owner accepting a publish to the event being written to a socket"
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
}

fn cached(cell: &'static OnceLock<Counter>, name: &'static str) -> &'static Counter {
    cell.get_or_init(|| metrics::counter!(name))
}

pub fn published() {
    static C: OnceLock<Counter> = OnceLock::new();
    cached(&C, PUBLISHED).increment(1);
}

pub fn slow_consumer_disconnect() {
    static C: OnceLock<Counter> = OnceLock::new();
    cached(&C, SLOW_CONSUMERS).increment(1);
}

pub fn shard_queue_full() {
    static C: OnceLock<Counter> = OnceLock::new();
    cached(&C, SHARD_QUEUE_FULL).increment(1);
}

/// The delivered-events counter (the writer task adds whole batches).
pub fn delivered_counter() -> Counter {
    metrics::counter!(DELIVERED)
}

/// The delivery latency histogram (the writer task records into it).
pub fn delivery_latency() -> Histogram {
    metrics::histogram!(DELIVERY_LATENCY)
}

pub fn protocol_error(code: ErrorCode) {
    metrics::counter!(PROTOCOL_ERRORS, "code" => code.as_str()).increment(1);
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

pub fn add(name: &'static str, v: u64) {
    if v > 0 {
        metrics::counter!(name).increment(v);
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
