//! `roomcast soak`: a long run with a churning client population, to find what a short
//! benchmark cannot — state that accumulates (memory, file descriptors, rooms, queue entries,
//! router table entries) and acknowledged messages lost across node restarts.
//!
//! Three parts run side by side for `--duration`:
//!
//! * **The churning population** ([`churn`]): `--connections` client slots. Each slot runs one
//!   client *life* after another: connect (to the node where this process has the fewest
//!   connections, as a least-connections load balancer would), join `--rooms-per-conn` rooms,
//!   publish at a steady rate (the population together makes `--publish-rate` publishes/s),
//!   leave one room and join another every `--switch-every`, and after a random lifetime
//!   leave its rooms and close — or, for a fraction `--abrupt`, drop the TCP connection — and
//!   be replaced at once. A client that loses its node, or is told to move by a draining node,
//!   reconnects elsewhere and resumes its rooms with `since` and `epoch`; a publish whose
//!   outcome it did not learn is retried with the same idempotency key. Every delivery it
//!   gets is checked for gaps, duplicates and order within its room's epoch.
//! * **Witnesses** ([`witness`]): `--witnesses` long-lived subscribers per room, on different
//!   nodes, that resume across restarts and keep every message they receive. They are what
//!   "no acknowledged message lost" is checked against: at the end, every publish that got an
//!   acknowledgement (`seq`, `epoch`) must be in every witness's log of its room, with its
//!   payload ([`check`]); whatever is missing is looked up in the room's history to tell a
//!   lost message from an undelivered one.
//! * **The sampler** ([`sampler`]): every `--sample-every`, each node's `/metrics` — resident
//!   memory, open file descriptors, connections, rooms, router table sizes, queue depths — as
//!   a CSV time series. The growth check ([`growth`]) compares each series' median over the
//!   last third of the run with its median over the middle third, leaving out samples around
//!   node restarts (a restarted node starts from zero), and fails a series that grew by more
//!   than `--growth-limit` and more than an absolute floor.
//!
//! Node restarts are not done here: `scripts/soak.sh` (and the short soak in `tests/soak.rs`)
//! restart nodes on a schedule; the sampler notices each restart from the node's
//! `process_start_time_seconds`. Like `roomcast bench`, timing is reported, never judged.

mod check;
mod churn;
mod growth;
mod report;
mod rng;
mod sampler;
mod witness;
mod ws;

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};

pub use report::Report;

/// Options of `roomcast soak`.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct SoakArgs {
    /// Node WebSocket URL (repeatable or comma-separated).
    #[arg(long = "url", value_delimiter = ',', required = true)]
    pub urls: Vec<String>,
    /// Client connections kept open by the churning population.
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    /// Rooms; each has `--witnesses` witnesses, and churning clients pick rooms at random.
    #[arg(long, default_value_t = 1_000)]
    pub rooms: usize,
    /// Rooms each churning client is joined to at a time.
    #[arg(long, default_value_t = 2)]
    pub rooms_per_conn: usize,
    /// Witness subscribers per room (on different nodes while they can be).
    #[arg(long, default_value_t = 2)]
    pub witnesses: usize,
    /// Rooms one witness connection follows (at most the node's `max_rooms_per_conn`).
    #[arg(long, default_value_t = 50)]
    pub witness_rooms: usize,
    /// Publishes per second, the whole population together.
    #[arg(long, default_value_t = 250.0)]
    pub publish_rate: f64,
    /// Payload size in bytes (the JSON `data`, padded).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Client lifetime, uniform between the two: `MIN..MAX` (e.g. `60s..300s`).
    #[arg(long, default_value = "60s..300s", value_parser = parse_range)]
    #[serde(with = "range_serde")]
    pub lifetime: (Duration, Duration),
    /// How often (on average) a client leaves one of its rooms and joins another.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub switch_every: Duration,
    /// Fraction of lives that end by dropping the TCP connection (no leave, no close frame).
    #[arg(long, default_value_t = 0.1)]
    pub abrupt: f64,
    /// New connections per second at most (the ramp-up, replacements and reconnects).
    #[arg(long, default_value_t = 500.0)]
    pub connect_rate: f64,
    /// Total length of the run, ramp-up included.
    #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// How often each node's metrics are sampled.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub sample_every: Duration,
    /// Samples up to this long after a node restart are left out of the growth check.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub settle: Duration,
    /// A series fails the growth check when its last-third median exceeds its middle-third
    /// median by more than this fraction (and by more than the series' absolute floor).
    #[arg(long, default_value_t = 0.2)]
    pub growth_limit: f64,
    /// At the end, how long to wait for witnesses to receive every acknowledged message.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    pub drain: Duration,
    /// Seed of every random choice (default: from the clock; printed in the report).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Directory for samples.csv and report.json (created).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Local source addresses to spread client sockets over (e.g. 127.0.0.2,127.0.0.3).
    #[arg(long, value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,
    /// Prefix of room names.
    #[arg(long, default_value = "soak")]
    pub room_prefix: String,
    /// Print the report as JSON (one object) instead of text.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

fn parse_range(s: &str) -> Result<(Duration, Duration), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected MIN..MAX, got {s:?}"))?;
    let lo = humantime::parse_duration(a.trim()).map_err(|e| e.to_string())?;
    let hi = humantime::parse_duration(b.trim()).map_err(|e| e.to_string())?;
    if hi < lo {
        return Err(format!("{s}: MAX is below MIN"));
    }
    Ok((lo, hi))
}

mod range_serde {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(
        r: &(Duration, Duration),
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!(
            "{}..{}",
            humantime::format_duration(r.0),
            humantime::format_duration(r.1)
        ))
    }
}

/// Defines a group of event counters and the plain struct they are reported as.
macro_rules! counters {
    ($name:ident, $report:ident { $($(#[$doc:meta])* $field:ident),* $(,)? }) => {
        #[derive(Default)]
        pub(crate) struct $name {
            $($(#[$doc])* pub $field: AtomicU64,)*
        }

        #[derive(Debug, Clone, Default, serde::Serialize)]
        pub struct $report {
            $($(#[$doc])* pub $field: u64,)*
        }

        impl $name {
            pub fn report(&self) -> $report {
                $report {
                    $($field: self.$field.load(Ordering::Relaxed),)*
                }
            }
        }
    };
}

counters!(
    ChurnCounters,
    ChurnReport {
        /// Client lives started.
        lives,
        /// WebSocket connections made (first connections and reconnects).
        connects,
        /// Connection attempts that failed (refused, 503 while draining, time-outs).
        connect_errors,
        /// Connections lost in the middle of a life (the node went away), then made again.
        reconnects,
        /// Reconnect hints of a draining node followed.
        drain_hints,
        /// Requests whose reply did not come within the reply time-out (the connection is then
        /// dropped and made again).
        stalls,
        joins,
        /// Joins answered `unavailable` (tried again).
        join_unavailable,
        /// Joins refused for another reason (the room is given up for this life).
        join_refused,
        leaves,
        leave_errors,
        /// Joins with `since` after a reconnect.
        resumes,
        /// Of those, answered `recovered: false`: a violation (nothing here should lose history).
        unrecovered,
        publishes_acked,
        /// Publishes answered `unavailable` (retried with the same key).
        publish_unavailable,
        publish_rate_limited,
        publish_errors,
        /// Publishes sent again with the same key after an unknown outcome.
        publish_retries,
        /// Publishes whose outcome was still unknown when the life ended (not checked).
        abandoned,
        /// Events received by churning clients.
        deliveries,
        /// Violations seen by churning clients: a seq skipped within an epoch,
        gaps,
        /// a seq received twice,
        duplicates,
        /// a room that restarted in a new epoch under a subscriber,
        epoch_changes,
        /// an event of a room the client had not joined (or had left).
        stray_events,
        /// Lives that ended with leaves and a close handshake.
        ends_graceful,
        /// Lives that ended by dropping the TCP connection.
        ends_abrupt,
        /// Frames that were not JSON the soak understands.
        bad_frames,
    }
);

counters!(
    WitnessCounters,
    WitnessReport {
        connects,
        connect_errors,
        /// Connections lost (node restarted or drained), then made again.
        reconnects,
        drain_hints,
        /// Joins answered `unavailable` (sent again).
        join_retries,
        resumes,
        /// Resumes answered `recovered: false`: a violation.
        unrecovered,
        deliveries,
        gaps,
        duplicates,
        epoch_changes,
        stray_events,
        bad_frames,
    }
);

/// One acknowledged publish: what the checker looks for in the witnesses' logs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acked {
    pub room: u32,
    pub epoch: u32,
    pub seq: u64,
    pub p: u64,
    pub n: u64,
    /// When the acknowledgement came, ms since the start.
    pub at_ms: u64,
}

/// Epoch strings, each stored once and named by a number.
#[derive(Default)]
pub(crate) struct Epochs {
    ids: HashMap<String, u32>,
    names: Vec<String>,
}

impl Epochs {
    pub fn id(&mut self, e: &str) -> u32 {
        if let Some(&i) = self.ids.get(e) {
            return i;
        }
        let i = self.names.len() as u32;
        self.names.push(e.to_string());
        self.ids.insert(e.to_string(), i);
        i
    }

    pub fn name(&self, i: u32) -> &str {
        self.names
            .get(i as usize)
            .map(|s| s.as_str())
            .unwrap_or("?")
    }
}

/// What every task of the run shares.
pub(crate) struct Shared {
    pub args: SoakArgs,
    pub seed: u64,
    pub started: Instant,
    pub rooms: Vec<String>,
    /// The churn stops at its next step when set (end of the run).
    pub stop_churn: AtomicBool,
    pub stop_churn_signal: watch::Sender<bool>,
    /// Witnesses close when set (after the final drain).
    pub stop_witnesses: watch::Sender<bool>,
    pub churn: ChurnCounters,
    pub witness: WitnessCounters,
    /// (witness, room) pairs joined now; all of them before churn starts and at the end.
    pub witness_joined: AtomicI64,
    pub acked: Mutex<Vec<Acked>>,
    pub epochs: Mutex<Epochs>,
    /// Connections this process has open to each URL (placement picks the fewest).
    pub open: Vec<AtomicI64>,
    /// Until when (ms since the start) a URL is avoided after a failed connection.
    pub avoid_until: Vec<AtomicU64>,
    next_pid: AtomicU64,
    /// The connection rate governor: when the next connection may start.
    next_connect: Mutex<tokio::time::Instant>,
    /// WebSocket handshakes in progress at once.
    pub connect_gate: Semaphore,
    /// Close codes the server sent, with how often.
    pub close_codes: Mutex<BTreeMap<u16, u64>>,
}

impl Shared {
    fn new(args: SoakArgs, seed: u64) -> Shared {
        let n = args.urls.len();
        Shared {
            seed,
            started: Instant::now(),
            rooms: (0..args.rooms)
                .map(|i| format!("{}-{i}", args.room_prefix))
                .collect(),
            stop_churn: AtomicBool::new(false),
            stop_churn_signal: watch::Sender::new(false),
            stop_witnesses: watch::Sender::new(false),
            churn: ChurnCounters::default(),
            witness: WitnessCounters::default(),
            witness_joined: AtomicI64::new(0),
            acked: Mutex::new(Vec::new()),
            epochs: Mutex::new(Epochs::default()),
            open: (0..n).map(|_| AtomicI64::new(0)).collect(),
            avoid_until: (0..n).map(|_| AtomicU64::new(0)).collect(),
            next_pid: AtomicU64::new(1),
            next_connect: Mutex::new(tokio::time::Instant::now()),
            connect_gate: Semaphore::new(256),
            close_codes: Mutex::new(BTreeMap::new()),
            args,
        }
    }

    /// Milliseconds since the start of the run.
    pub fn ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn stopping(&self) -> bool {
        self.stop_churn.load(Ordering::Acquire)
    }

    /// A publisher id no other client life has.
    pub fn new_pid(&self) -> u64 {
        self.next_pid.fetch_add(1, Ordering::Relaxed)
    }

    /// The room index of a room name of this run.
    pub fn room_index(&self, name: &str) -> Option<usize> {
        let i: usize = name
            .strip_prefix(self.args.room_prefix.as_str())?
            .strip_prefix('-')?
            .parse()
            .ok()?;
        (i < self.rooms.len()).then_some(i)
    }

    pub fn source_ip(&self, i: usize) -> Option<IpAddr> {
        (!self.args.source_ips.is_empty())
            .then(|| self.args.source_ips[i % self.args.source_ips.len()])
    }

    /// The URL index for a new connection: the one this process has the fewest connections
    /// to, among those not failing lately and other than `not` (ties broken by `pick`).
    pub fn pick_url(&self, not: Option<usize>, pick: usize) -> usize {
        let n = self.open.len();
        let now = self.ms();
        let usable = |i: &usize| Some(*i) != not || n == 1;
        let fresh: Vec<usize> = (0..n)
            .filter(usable)
            .filter(|i| self.avoid_until[*i].load(Ordering::Relaxed) <= now)
            .collect();
        let pool: Vec<usize> = if fresh.is_empty() {
            (0..n).filter(usable).collect()
        } else {
            fresh
        };
        let least = pool
            .iter()
            .map(|i| self.open[*i].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        let ties: Vec<usize> = pool
            .into_iter()
            .filter(|i| self.open[*i].load(Ordering::Relaxed) == least)
            .collect();
        ties[pick % ties.len().max(1)]
    }

    /// The index of a URL given by a reconnect hint, if it is one of ours.
    pub fn url_index(&self, url: &str) -> Option<usize> {
        self.args.urls.iter().position(|u| u == url)
    }

    /// Marks `url` as failing for a moment, so new connections go elsewhere.
    pub fn avoid(&self, url: usize) {
        self.avoid_until[url].store(self.ms() + 2_000, Ordering::Relaxed);
    }

    /// Waits for this connection's turn under `--connect-rate`.
    pub async fn connect_turn(&self) {
        let interval = Duration::from_secs_f64(1.0 / self.args.connect_rate.max(1.0));
        let at = {
            let mut next = self.next_connect.lock().unwrap_or_else(|p| p.into_inner());
            let now = tokio::time::Instant::now();
            let at = (*next).max(now);
            *next = at + interval;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    pub fn record_ack(&self, room: usize, epoch: &str, seq: u64, p: u64, n: u64) {
        let epoch = self
            .epochs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .id(epoch);
        let at_ms = self.ms();
        self.acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Acked {
                room: room as u32,
                epoch,
                seq,
                p,
                n,
                at_ms,
            });
    }

    pub fn epoch_id(&self, e: &str) -> u32 {
        self.epochs.lock().unwrap_or_else(|p| p.into_inner()).id(e)
    }

    pub fn close_code(&self, code: u16) {
        *self
            .close_codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code)
            .or_default() += 1;
    }
}

/// Counts a connection to a URL while it is open.
pub(crate) struct OpenGuard<'a> {
    sh: &'a Shared,
    url: usize,
}

impl<'a> OpenGuard<'a> {
    pub fn new(sh: &'a Shared, url: usize) -> Self {
        sh.open[url].fetch_add(1, Ordering::Relaxed);
        OpenGuard { sh, url }
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.sh.open[self.url].fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs the soak described by `args` (on its own runtime) and returns the report.
pub fn run(args: SoakArgs) -> anyhow::Result<Report> {
    raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run_async(args))
}

async fn run_async(args: SoakArgs) -> anyhow::Result<Report> {
    anyhow::ensure!(!args.urls.is_empty(), "give at least one --url");
    anyhow::ensure!(args.rooms > 0, "--rooms must be at least 1");
    anyhow::ensure!(
        args.rooms_per_conn >= 1 && args.rooms_per_conn < args.rooms,
        "--rooms-per-conn must be at least 1 and less than --rooms"
    );
    anyhow::ensure!(
        (1..=100).contains(&args.witness_rooms),
        "--witness-rooms must be 1..=100"
    );
    anyhow::ensure!(args.witnesses >= 1, "--witnesses must be at least 1");
    anyhow::ensure!(args.publish_rate > 0.0, "--publish-rate must be positive");
    anyhow::ensure!(
        !args.sample_every.is_zero(),
        "--sample-every must be positive"
    );
    for u in &args.urls {
        ws::host_port(u)?;
    }
    let seed = args.seed.unwrap_or_else(|| crate::now_us() ^ 0x5eed);
    let progress = !args.quiet && !args.json;
    if let Some(dir) = &args.out {
        std::fs::create_dir_all(dir)?;
    }
    let sh = Arc::new(Shared::new(args.clone(), seed));
    if progress {
        eprintln!(
            "soak: seed {seed}; {} connections, {} rooms, {} witnesses per room, {} publishes/s, {} over {} node(s)",
            args.connections,
            args.rooms,
            args.witnesses,
            args.publish_rate,
            humantime::format_duration(args.duration),
            args.urls.len()
        );
    }

    // The sampler runs from the start (its first sample is the cluster at rest).
    let (sampler_stop, sampler_stopped) = watch::channel(false);
    let sampler = tokio::spawn(sampler::run(sh.clone(), sampler_stopped));

    // Witnesses first: every room has its witnesses before anything is published.
    let mut witnesses = Vec::new();
    for layer in 0..args.witnesses {
        for (chunk, rooms) in (0..args.rooms)
            .collect::<Vec<_>>()
            .chunks(args.witness_rooms)
            .enumerate()
        {
            witnesses.push(tokio::spawn(witness::run(
                sh.clone(),
                layer,
                chunk,
                rooms.to_vec(),
            )));
        }
    }
    let want = (args.rooms * args.witnesses) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while sh.witness_joined.load(Ordering::Acquire) < want {
        if Instant::now() > deadline {
            sh.stop_witnesses.send_replace(true);
            let _ = sampler_stop.send(true);
            anyhow::bail!(
                "witnesses could not join their rooms in 120 s ({} of {want})",
                sh.witness_joined.load(Ordering::Acquire)
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The churning population.
    let mut slots = Vec::with_capacity(args.connections);
    for slot in 0..args.connections {
        slots.push(tokio::spawn(churn::run_slot(sh.clone(), slot)));
    }
    let end = sh.started + args.duration;
    let mut last_print = Instant::now();
    while Instant::now() < end {
        tokio::time::sleep(
            end.saturating_duration_since(Instant::now())
                .min(Duration::from_secs(1)),
        )
        .await;
        if progress && last_print.elapsed() >= Duration::from_secs(10) {
            last_print = Instant::now();
            let c = sh.churn.report();
            let open: i64 = sh.open.iter().map(|o| o.load(Ordering::Relaxed)).sum();
            eprintln!(
                "soak: t={:>5}s open {open:>6}  lives {:>7}  acked {:>8}  reconnects {:>6}  violations so far {}",
                sh.started.elapsed().as_secs(),
                c.lives,
                c.publishes_acked,
                c.reconnects + sh.witness.reconnects.load(Ordering::Relaxed),
                c.gaps + c.duplicates + c.stray_events + c.unrecovered + c.epoch_changes
            );
        }
    }

    // The end: lives finish (leaves, closes), then witnesses get what is still on its way.
    if progress {
        eprintln!("soak: stopping the churn");
    }
    sh.stop_churn.store(true, Ordering::Release);
    sh.stop_churn_signal.send_replace(true);
    let slot_deadline = Instant::now() + Duration::from_secs(60);
    for s in slots {
        let left = slot_deadline.saturating_duration_since(Instant::now());
        let abort = s.abort_handle();
        if tokio::time::timeout(left, s).await.is_err() {
            abort.abort();
        }
    }
    if progress {
        eprintln!("soak: waiting for the witnesses to catch up");
    }
    drain_witnesses(&sh).await;
    sh.stop_witnesses.send_replace(true);
    let mut logs = Vec::new();
    for w in witnesses {
        if let Ok(log) = w.await {
            logs.push(log);
        }
    }
    let _ = sampler_stop.send(true);
    let samples = sampler.await.unwrap_or_default();

    let acked = std::mem::take(&mut *sh.acked.lock().unwrap_or_else(|e| e.into_inner()));
    let mut result = {
        let epochs = sh.epochs.lock().unwrap_or_else(|e| e.into_inner());
        check::check(&acked, &logs, &|e| epochs.name(e).to_string())
    };
    check::look_up_history(&sh, &mut result).await;
    let growth = growth::judge_run(&samples, &args);
    let report = report::build(&sh, &acked, result, samples, growth);
    if let Some(dir) = &args.out {
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    Ok(report)
}

/// Waits until the witnesses have been idle (no new message, every room joined) for 5 s, or
/// `--drain` has passed: what was acknowledged is then either in their logs or not coming.
async fn drain_witnesses(sh: &Shared) {
    let deadline = Instant::now() + sh.args.drain;
    let want = (sh.args.rooms * sh.args.witnesses) as i64;
    let mut last = u64::MAX;
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        let got = sh.witness.deliveries.load(Ordering::Acquire);
        let joined = sh.witness_joined.load(Ordering::Acquire) >= want;
        if got != last || !joined {
            last = got;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(5) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The default options with one URL.
    pub(crate) fn args() -> SoakArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            soak: SoakArgs,
        }
        <Cli as clap::Parser>::parse_from(["soak", "--url", "ws://127.0.0.1:1/ws"]).soak
    }

    #[test]
    fn the_defaults_are_the_issue_s_soak() {
        let a = args();
        assert_eq!(a.connections, 15_000);
        assert_eq!(a.duration, Duration::from_secs(1800));
        assert_eq!(a.sample_every, Duration::from_secs(10));
    }

    #[test]
    fn lifetimes_parse_as_a_range() {
        assert_eq!(
            parse_range("60s..5m").unwrap(),
            (Duration::from_secs(60), Duration::from_secs(300))
        );
        assert!(parse_range("5m..60s").is_err());
        assert!(parse_range("60s").is_err());
    }
}
