//! The soak's report: what ran, what was checked, the verdict and why.

use std::collections::BTreeMap;
use std::fmt;

use super::check::{CheckReport, CheckResult};
use super::growth::{Scope, Status, Verdict};
use super::sampler::{Samples, col};
use super::{Acked, ChurnReport, Shared, SoakArgs, WitnessReport};

/// The series summarised per node in the report (all are in samples.csv).
const SUMMARY: [&str; 12] = [
    "rss_bytes",
    "heap_bytes",
    "open_fds",
    "connections",
    "rooms_owned",
    "replica_copies",
    "member_rooms",
    "pending_requests",
    "outbound_frames",
    "internode_messages",
    "internode_bytes",
    "shard_inputs",
];

/// One series of one node over the run: medians of its thirds, and its maximum.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SeriesSummary {
    pub series: &'static str,
    /// Medians of the first, middle and last thirds (all samples the node answered).
    pub thirds: [Option<f64>; 3],
    pub max: Option<f64>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeSummary {
    pub node: String,
    pub url: String,
    /// Samples answered and not answered.
    pub samples_up: usize,
    pub samples_down: usize,
    pub series: Vec<SeriesSummary>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// True when nothing acknowledged was lost, no guarantee was broken and no series grew.
    pub ok: bool,
    /// Why not, one line each.
    pub failures: Vec<String>,
    pub seed: u64,
    pub args: SoakArgs,
    pub elapsed_s: f64,
    pub churn: ChurnReport,
    pub witness: WitnessReport,
    pub check: CheckReport,
    /// Close codes the nodes sent to clients.
    pub close_codes: BTreeMap<u16, u64>,
    /// Samples that found a node down or restarted: (node, seconds since the start).
    pub restarts_seen: Vec<(String, f64)>,
    pub nodes: Vec<NodeSummary>,
    /// This process's resident memory at the first and last sample (not judged).
    pub soak_rss_bytes: [Option<f64>; 2],
    pub growth: Vec<Verdict>,
}

pub(crate) fn build(
    sh: &Shared,
    acked: &[Acked],
    result: CheckResult,
    samples: Samples,
    growth: Vec<Verdict>,
) -> Report {
    let churn = sh.churn.report();
    let witness = sh.witness.report();
    let check = result.report;
    let mut failures = Vec::new();
    if acked.is_empty() {
        failures.push("no publish was acknowledged: nothing was tested".to_string());
    }
    for (what, n) in [
        ("acknowledged messages lost", check.lost),
        (
            "acknowledged messages no witness received (in history at the end)",
            check.undelivered_in_history,
        ),
        (
            "acknowledged messages no witness received (not looked up)",
            check.not_looked_up,
        ),
        (
            "acknowledged messages a witness missed",
            check.missed_by_some,
        ),
        (
            "acknowledged positions with another payload",
            check.wrong_payload,
        ),
        ("payloads sequenced twice", check.sequenced_twice),
        ("positions the witnesses disagree on", check.conflicts),
        ("gaps seen by witnesses", witness.gaps),
        ("duplicates seen by witnesses", witness.duplicates),
        (
            "rooms restarted in a new epoch under a witness",
            witness.epoch_changes,
        ),
        ("witness resumes not recovered", witness.unrecovered),
        ("events of rooms a witness was not in", witness.stray_events),
        ("gaps seen by clients", churn.gaps),
        ("duplicates seen by clients", churn.duplicates),
        (
            "rooms restarted in a new epoch under a client",
            churn.epoch_changes,
        ),
        ("client resumes not recovered", churn.unrecovered),
        ("events of rooms a client was not in", churn.stray_events),
    ] {
        if n > 0 {
            failures.push(format!("{what}: {n}"));
        }
    }
    for v in growth.iter().filter(|v| v.status == Status::Grew) {
        failures.push(format!(
            "{} of {} grew: {} {} in the middle third, {} in the last",
            v.series,
            v.node,
            if v.scope == Scope::HighWater {
                "maximum"
            } else {
                "median"
            },
            fmt_num(v.middle),
            fmt_num(v.last)
        ));
    }
    let run = sh.args.duration.as_secs_f64();
    let mut nodes = Vec::new();
    for (i, url) in sh.args.urls.iter().enumerate() {
        let rows: Vec<_> = samples.rows.iter().filter(|r| r.node == i).collect();
        let up = rows.iter().filter(|r| r.up).count();
        if up == 0 {
            failures.push(format!("node n{} ({url}) never answered /metrics", i + 1));
        }
        let series = SUMMARY
            .iter()
            .filter_map(|s| col(s).map(|c| (*s, c)))
            .map(|(s, c)| {
                let third = |k: f64| {
                    let xs: Vec<f64> = rows
                        .iter()
                        .filter(|r| r.up && r.v[c].is_finite())
                        .filter(|r| r.t >= k * run / 3.0 && r.t <= (k + 1.0) * run / 3.0)
                        .map(|r| r.v[c])
                        .collect();
                    median(&xs)
                };
                SeriesSummary {
                    series: s,
                    thirds: [third(0.0), third(1.0), third(2.0)],
                    max: rows
                        .iter()
                        .filter(|r| r.up && r.v[c].is_finite() && r.t <= run)
                        .map(|r| r.v[c])
                        .reduce(f64::max),
                }
            })
            .collect();
        nodes.push(NodeSummary {
            node: format!("n{}", i + 1),
            url: url.clone(),
            samples_up: up,
            samples_down: rows.len() - up,
            series,
        });
    }
    let own: Vec<f64> = samples
        .rows
        .iter()
        .filter(|r| r.node == samples.nodes)
        .map(|r| r.v[0])
        .collect();
    Report {
        ok: failures.is_empty(),
        failures,
        seed: sh.seed,
        args: sh.args.clone(),
        elapsed_s: sh.started.elapsed().as_secs_f64(),
        churn,
        witness,
        check,
        close_codes: sh
            .close_codes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        restarts_seen: samples
            .restarts
            .iter()
            .map(|(n, t)| (format!("n{}", n + 1), (t * 10.0).round() / 10.0))
            .collect(),
        nodes,
        soak_rss_bytes: [own.first().copied(), own.last().copied()],
        growth,
    }
}

fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    Some(v[v.len() / 2])
}

fn fmt_num(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(x) if x.abs() >= 1024.0 * 1024.0 => format!("{:.1}Mi", x / (1024.0 * 1024.0)),
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.1}"),
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = &self.args;
        writeln!(
            f,
            "roomcast soak: {} connections, {} rooms x {} witnesses, {} publishes/s, lifetime {}..{}, {:.0} s, seed {}",
            a.connections,
            a.rooms,
            a.witnesses,
            a.publish_rate,
            humantime::format_duration(a.lifetime.0),
            humantime::format_duration(a.lifetime.1),
            self.elapsed_s,
            self.seed
        )?;
        let c = &self.churn;
        writeln!(
            f,
            "clients: {} lives, {} connects ({} failed), {} reconnects, {} drain hints, {} joins, {} leaves, {} ended gracefully, {} abruptly",
            c.lives,
            c.connects,
            c.connect_errors,
            c.reconnects,
            c.drain_hints,
            c.joins,
            c.leaves,
            c.ends_graceful,
            c.ends_abrupt
        )?;
        writeln!(
            f,
            "publishes: {} acknowledged, {} unavailable (retried by key: {}), {} rate limited, {} other errors, {} abandoned with an unknown outcome",
            c.publishes_acked,
            c.publish_unavailable,
            c.publish_retries,
            c.publish_rate_limited,
            c.publish_errors,
            c.abandoned
        )?;
        let w = &self.witness;
        writeln!(
            f,
            "witnesses: {} deliveries, {} reconnects, {} resumes ({} not recovered), {} join retries",
            w.deliveries, w.reconnects, w.resumes, w.unrecovered, w.join_retries
        )?;
        let k = &self.check;
        writeln!(
            f,
            "check: {} acknowledged, {} confirmed by every witness, {} lost, {} undelivered (in history), {} missed by a witness, {} wrong payload, {} sequenced twice, {} conflicts; {} unacknowledged messages seen",
            k.acked,
            k.confirmed,
            k.lost + k.not_looked_up,
            k.undelivered_in_history,
            k.missed_by_some,
            k.wrong_payload,
            k.sequenced_twice,
            k.conflicts,
            k.unacknowledged_seen
        )?;
        for e in &k.examples {
            writeln!(f, "  {e}")?;
        }
        writeln!(f, "close codes from nodes: {:?}", self.close_codes)?;
        writeln!(f, "restarts seen by the sampler: {:?}", self.restarts_seen)?;
        writeln!(
            f,
            "per node, medians of the first / middle / last third (max):"
        )?;
        for n in &self.nodes {
            writeln!(
                f,
                "  {} {} ({} samples, {} down)",
                n.node, n.url, n.samples_up, n.samples_down
            )?;
            for s in &n.series {
                writeln!(
                    f,
                    "    {:<20} {:>9} {:>9} {:>9}  ({})",
                    s.series,
                    fmt_num(s.thirds[0]),
                    fmt_num(s.thirds[1]),
                    fmt_num(s.thirds[2]),
                    fmt_num(s.max)
                )?;
            }
        }
        let judged = self
            .growth
            .iter()
            .filter(|v| v.status != Status::NotJudged)
            .count();
        writeln!(
            f,
            "growth (last third vs middle third: medians, maxima for rss; limit {:.0}% and a floor per series; 'all' = summed over the nodes): {} series judged, {} not judged (too few samples)",
            a.growth_limit * 100.0,
            judged,
            self.growth.len() - judged
        )?;
        for v in &self.growth {
            writeln!(
                f,
                "  {:<4} {:<20} {:<10} middle {:>9} last {:>9} {}",
                v.node,
                v.series,
                match v.status {
                    Status::Bounded => "bounded",
                    Status::Grew => "GREW",
                    Status::NotJudged => "not judged",
                },
                fmt_num(v.middle),
                fmt_num(v.last),
                v.growth
                    .map(|g| format!("{:+.1}%", g * 100.0))
                    .unwrap_or_default()
            )?;
        }
        if self.ok {
            write!(f, "verdict: PASS")
        } else {
            writeln!(f, "verdict: FAIL")?;
            for x in &self.failures {
                writeln!(f, "  {x}")?;
            }
            Ok(())
        }
    }
}
