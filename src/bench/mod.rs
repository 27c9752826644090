//! `roomcast bench`: a load generator and checker for roomcast (and, with `--proto nats`, for
//! nats-server's WebSocket listener, so the same scenarios run against a well-known peer).
//!
//! Subscribers are spread round-robin over the node URLs and over `--rooms` rooms; publishers
//! publish to the rooms in turn, either at a target total rate or as fast as acknowledgements
//! allow with `--in-flight` publishes outstanding. Each payload carries the publisher id, a
//! counter and the send time, so every delivery gives an end-to-end latency and is checked
//! for loss, duplication and reordering. With roomcast, deliveries are also checked against
//! the room's `seq` and `epoch`: within an epoch a subscriber must see every seq once, in
//! order. `--chaos` keeps clients going through node failures (reconnect to the next URL,
//! resume with `since`) and checks that all subscribers agree on one order per room.
//!
//! Timing lives here, never in pass/fail tests: the test suite runs a small bench only to
//! check its counts.

mod client;
mod nats;
mod report;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::sync::{Mutex, Semaphore};

pub use report::Report;

/// Which wire protocol the clients speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Roomcast,
    Nats,
}

/// Options of `roomcast bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Node WebSocket URL (repeatable or comma-separated); clients are spread round-robin.
    #[arg(long = "url", value_delimiter = ',', required = true)]
    pub urls: Vec<String>,
    /// Wire protocol: roomcast, or nats (NATS text protocol over WebSocket).
    #[arg(long, value_enum, default_value = "roomcast")]
    pub proto: Proto,
    /// Subscriber connections.
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Rooms (NATS subjects); subscriber i joins room i mod R.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Publisher connections; publisher j publishes to rooms j, j+P, j+2P... in turn.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Target total publishes per second; 0 = as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Publishes each publisher keeps unacknowledged at most.
    #[arg(long, default_value_t = 16)]
    pub in_flight: usize,
    /// Payload size in bytes (the JSON `data`, padded).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Measured duration, after the warm-up.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Warm-up before measuring (publishing already runs).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// How long to wait for outstanding acks and deliveries at the end.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub drain: Duration,
    /// Print the report as JSON (one object) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Local source addresses to spread client sockets over (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// PIDs of node processes on this machine, to report RSS per connection.
    #[arg(long = "rss-pid", value_delimiter = ',')]
    pub rss_pids: Vec<u32>,
    /// Connect and join only; no publishing (idle connections, connect storms).
    #[arg(long)]
    pub idle: bool,
    /// Keep going through node failures: reconnect to the next URL and resume with `since`;
    /// check that all subscribers agree on one order per room.
    #[arg(long)]
    pub chaos: bool,
    /// With --chaos: also count acknowledged messages that never arrived and resumes that were
    /// not recovered as violations (for drains and rolling restarts, which promise both).
    #[arg(long)]
    pub strict: bool,
    /// Connection handshakes in progress at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Prefix of room names.
    #[arg(long, default_value = "bench")]
    pub room_prefix: String,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the benchmark described by `args` (on its own runtime) and returns the report.
pub fn run(args: BenchArgs) -> anyhow::Result<Report> {
    raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

/// chaos: (room index, epoch, seq) → (publisher, n): who published each message, for the
/// check that all subscribers agree on one order.
pub(crate) type OrderMap = HashMap<(usize, String, u64), (u64, u64)>;

/// Counters shared by all client tasks.
pub(crate) struct Shared {
    pub args: BenchArgs,
    /// True while deliveries count towards throughput and latency.
    pub measuring: AtomicBool,
    /// Publishers stop sending when set.
    pub stop_publishing: AtomicBool,
    /// Subscribers stop when set.
    pub stop: AtomicBool,
    /// Wakes subscribers to stop (a per-client timer would cost more than the clients do).
    pub stop_signal: tokio::sync::watch::Sender<bool>,
    pub window_start_us: AtomicU64,
    pub published_in_window: AtomicU64,
    pub delivered_in_window: AtomicU64,
    pub delivered_total: AtomicU64,
    /// Acknowledged publishes per room.
    pub acked: Vec<AtomicU64>,
    /// Unique in-order deliveries per room, summed over subscribers.
    pub received: Vec<AtomicU64>,
    pub subscribers_per_room: Vec<u64>,
    pub errors_unavailable: AtomicU64,
    pub errors_rate_limited: AtomicU64,
    pub errors_other: AtomicU64,
    pub reconnects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub joined: AtomicU64,
    pub results: Mutex<Vec<report::SubResult>>,
    pub hist: Mutex<Histogram<u64>>,
    /// chaos: (room, epoch, seq) → (publisher, n), for the one-order check.
    pub order: Mutex<OrderMap>,
    /// --strict: the acknowledged messages of each room, `(publisher, n)`, to check that each
    /// one reached every subscriber (counts alone would let an unacknowledged delivery hide
    /// a lost acknowledged one).
    pub acked_msgs: std::sync::Mutex<Vec<std::collections::HashSet<(u64, u64)>>>,
    pub connect_gate: Semaphore,
}

impl Shared {
    pub fn room(&self, i: usize) -> String {
        format!("{}-{}", self.args.room_prefix, i)
    }
    pub fn url(&self, i: usize) -> &str {
        &self.args.urls[i % self.args.urls.len()]
    }
    pub fn source_ip(&self, i: usize) -> Option<IpAddr> {
        if self.args.source_ips.is_empty() {
            None
        } else {
            Some(self.args.source_ips[i % self.args.source_ips.len()])
        }
    }
}

pub(crate) fn new_hist() -> Histogram<u64> {
    // 1 µs .. 60 s, 3 significant digits.
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"))
    })
}

async fn run_async(args: BenchArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(!args.urls.is_empty(), "give at least one --url");
    anyhow::ensure!(args.rooms > 0, "--rooms must be at least 1");
    anyhow::ensure!(args.in_flight > 0, "--in-flight must be at least 1");
    let mut per_room = vec![0u64; args.rooms];
    for i in 0..args.subscribers {
        per_room[i % args.rooms] += 1;
    }
    let shared = Arc::new(Shared {
        measuring: AtomicBool::new(false),
        stop_publishing: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        stop_signal: tokio::sync::watch::Sender::new(false),
        window_start_us: AtomicU64::new(u64::MAX),
        published_in_window: AtomicU64::new(0),
        delivered_in_window: AtomicU64::new(0),
        delivered_total: AtomicU64::new(0),
        acked: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
        received: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
        subscribers_per_room: per_room,
        errors_unavailable: AtomicU64::new(0),
        errors_rate_limited: AtomicU64::new(0),
        errors_other: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        connect_errors: AtomicU64::new(0),
        joined: AtomicU64::new(0),
        results: Mutex::new(Vec::new()),
        hist: Mutex::new(new_hist()),
        order: Mutex::new(HashMap::new()),
        acked_msgs: std::sync::Mutex::new(vec![Default::default(); args.rooms]),
        connect_gate: Semaphore::new(args.connect_concurrency.max(1)),
        args: args.clone(),
    });
    let rss_before = rss_total(&args.rss_pids);
    let cpu_before = cpu_seconds();

    // Subscribers: connect and join, all of them, before anything is published.
    let connect_start = Instant::now();
    let (joined_tx, mut joined_rx) = tokio::sync::mpsc::channel::<bool>(args.subscribers.max(1));
    let mut subs = Vec::with_capacity(args.subscribers);
    for i in 0..args.subscribers {
        let shared = shared.clone();
        let tx = joined_tx.clone();
        subs.push(tokio::spawn(async move {
            match shared.args.proto {
                Proto::Roomcast => client::subscriber(shared, i, tx).await,
                Proto::Nats => nats::subscriber(shared, i, tx).await,
            }
        }));
    }
    drop(joined_tx);
    let mut joined = 0usize;
    let mut failed = 0usize;
    let progress = !args.quiet && !args.json;
    let mut last_print = Instant::now();
    while joined + failed < args.subscribers {
        match tokio::time::timeout(Duration::from_secs(120), joined_rx.recv()).await {
            Ok(Some(true)) => joined += 1,
            Ok(Some(false)) => failed += 1,
            Ok(None) | Err(_) => break,
        }
        if progress && last_print.elapsed() > Duration::from_secs(1) {
            eprintln!(
                "connecting: {joined}/{} joined, {failed} failed",
                args.subscribers
            );
            last_print = Instant::now();
        }
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    if failed > 0 && !args.chaos {
        shared.stop.store(true, Ordering::Release);
        shared.stop_signal.send_replace(true);
        anyhow::bail!(
            "{failed} of {} subscribers could not connect and join (see warnings above)",
            args.subscribers
        );
    }
    let rss_after_connect = rss_total(&args.rss_pids);

    let mut pubs = Vec::new();
    if !args.idle {
        for j in 0..args.publishers {
            let shared = shared.clone();
            pubs.push(tokio::spawn(async move {
                match shared.args.proto {
                    Proto::Roomcast => client::publisher(shared, j).await,
                    Proto::Nats => nats::publisher(shared, j).await,
                }
            }));
        }
    }

    // Warm-up, then the measured window, with a progress line.
    tokio::time::sleep(args.warmup).await;
    let window_start = Instant::now();
    let server_cpu_before = proc_cpu_seconds(&args.rss_pids);
    shared
        .window_start_us
        .store(crate::now_us(), Ordering::Release);
    shared.measuring.store(true, Ordering::Release);
    let mut prev = (0u64, 0u64);
    while window_start.elapsed() < args.duration {
        let left = args.duration.saturating_sub(window_start.elapsed());
        tokio::time::sleep(left.min(Duration::from_secs(1))).await;
        if progress {
            let p = shared.published_in_window.load(Ordering::Relaxed);
            let d = shared.delivered_in_window.load(Ordering::Relaxed);
            let p99 = shared.hist.lock().await.value_at_quantile(0.99);
            eprintln!(
                "t={:>4.1}s  publishes/s {:>9}  deliveries/s {:>10}  (window p99 {} µs so far; errors {})",
                window_start.elapsed().as_secs_f64(),
                p - prev.0,
                d - prev.1,
                p99,
                shared.errors_unavailable.load(Ordering::Relaxed)
                    + shared.errors_other.load(Ordering::Relaxed)
            );
            prev = (p, d);
        }
    }
    let measured = window_start.elapsed().as_secs_f64();
    let server_cpu_s = match (server_cpu_before, proc_cpu_seconds(&args.rss_pids)) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    shared.measuring.store(false, Ordering::Release);
    shared.stop_publishing.store(true, Ordering::Release);
    let rss_end = rss_total(&args.rss_pids);
    for p in pubs {
        let _ = p.await;
    }
    // Drain: wait until every subscriber has every acknowledged message, or no progress.
    let expected: u64 = (0..args.rooms)
        .map(|r| shared.acked[r].load(Ordering::Acquire) * shared.subscribers_per_room[r])
        .sum();
    let drain_deadline = Instant::now() + args.drain;
    let mut last = u64::MAX;
    let mut still_since = Instant::now();
    loop {
        let got: u64 = shared
            .received
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .sum();
        if got >= expected || Instant::now() > drain_deadline {
            break;
        }
        if got != last {
            last = got;
            still_since = Instant::now();
        } else if still_since.elapsed() > Duration::from_secs(2) && !args.chaos {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shared.stop.store(true, Ordering::Release);
    shared.stop_signal.send_replace(true);
    for s in subs {
        let _ = s.await;
    }
    let cpu_s = cpu_seconds() - cpu_before;
    Ok(report::build(
        &shared,
        report::Measures {
            connect_s,
            measured_s: measured,
            joined,
            connect_failed: failed,
            cpu_s,
            rss_before,
            rss_after_connect,
            rss_end,
            server_cpu_s,
        },
    )
    .await)
}

/// Total resident set size of `pids`, in bytes (Linux /proc).
fn rss_total(pids: &[u32]) -> Option<u64> {
    if pids.is_empty() {
        return None;
    }
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        total += kb * 1024;
    }
    Some(total)
}

/// This process's CPU time (user + system), seconds.
/// CPU time (user + system) of the given processes, from /proc (the servers under test).
fn proc_cpu_seconds(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let mut total = 0.0;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the command name (which may contain spaces) start after ") ".
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line: 11 and 12 here (0-based).
        let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
        total += ticks / hz;
    }
    Some(total)
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass and reads nothing else.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    if rc != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the open-file soft limit to the hard limit (many client sockets).
fn raise_nofile_limit() {
    // SAFETY: plain libc calls on a struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// The payload of one publish: a JSON object of about `size` bytes.
pub(crate) fn payload(p: u64, n: u64, size: usize) -> String {
    let head = format!(r#"{{"p":{p},"n":{n},"t":{},"x":""#, crate::now_us());
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}
