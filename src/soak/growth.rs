//! The growth check: does any sampled series grow without bound?
//!
//! A soak cannot prove a bound, so it looks for a trend that would not stop. The first third of
//! the run is warm-up and is not judged: clients ramp up, rooms fill their history (bounded by
//! age, 10 minutes by default, which a 30-minute run's warm-up covers), allocators reach their
//! working size. Then the middle third is compared with the last third. What is comparable
//! over time depends on the series, so there are three kinds ([`RULES`]):
//!
//! * **Per node**, levels that do not depend on which node clients are on: descriptors other
//!   than client connections (`open_fds` − `connections`: listeners, peer links, the runtime),
//!   rooms owned and replica copies, the router tables, queue depths, peer links.
//! * **Cluster totals** of what follows the clients: connections, open descriptors and heap in
//!   use, summed over the nodes at each sample (samples where every node answered). A node's
//!   share moves with every restart — its clients go to the others and come back only as
//!   clients are replaced — but the total does not.
//! * **Resident memory, as a high-water mark.** The allocator keeps what a peak made it take
//!   (measured: a node's RSS went from 84 to 98 MiB while it absorbed a drained node's rooms,
//!   with fewer clients than before, and stayed there), so RSS medians grow whenever a node
//!   first meets a peak it had not met, without any leak. What a leak does is raise the peaks
//!   themselves: the highest RSS of any node in the last third is compared with the highest in
//!   the middle third. (Heap in use, which falls when memory is freed, is the leak signal.)
//!
//! For the first two kinds, samples around node restarts are left out, for every node (a
//! restarted node starts from zero and the others take its clients): from `sample_every` +
//! 30 s before the sample that saw the restart (a drain's last seconds) to `--settle` after
//! it; medians are compared, so one spike is not growth. The high-water rule keeps every
//! sample (the peaks are the restarts) and compares maxima.
//!
//! A series **grew** when the last third's figure exceeds the middle third's by more than
//! `--growth-limit` (20 %) of it *and* by more than the series' absolute floor (noise of a few
//! connections or queued frames is not growth). With fewer than [`MIN_SAMPLES`] samples left in
//! either third the series is reported as not judged (a run too short, or restarts too close
//! together), never as a pass.
//!
//! Pure: samples in, verdicts out.

use std::collections::BTreeMap;

use super::SoakArgs;
use super::sampler::{Samples, col};

/// Which samples a rule looks at, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Each node's own series; medians; restarts left out.
    PerNode,
    /// The sum over the nodes; medians; restarts left out.
    ClusterTotal,
    /// Every node's series together; maxima; every sample.
    HighWater,
}

/// The series judged: name (a column of samples.csv, or `other_fds`), absolute floor, scope.
pub(crate) const RULES: [(&str, f64, Scope); 20] = [
    ("rss_bytes", 32.0 * MIB, Scope::HighWater),
    ("heap_bytes", 32.0 * MIB, Scope::ClusterTotal),
    ("open_fds", 500.0, Scope::ClusterTotal),
    ("connections", 500.0, Scope::ClusterTotal),
    ("other_fds", 50.0, Scope::PerNode),
    ("rooms_owned", 50.0, Scope::PerNode),
    ("replica_copies", 50.0, Scope::PerNode),
    ("under_replicated", 10.0, Scope::PerNode),
    ("member_rooms", 50.0, Scope::PerNode),
    ("pending_requests", 100.0, Scope::PerNode),
    ("hints", 100.0, Scope::PerNode),
    ("moved", 100.0, Scope::PerNode),
    ("pending_owner", 100.0, Scope::PerNode),
    ("publishes_by_room", 100.0, Scope::PerNode),
    ("outbound_frames", 1000.0, Scope::PerNode),
    ("outbound_bytes", MIB, Scope::PerNode),
    ("internode_messages", 1000.0, Scope::PerNode),
    ("internode_bytes", MIB, Scope::PerNode),
    ("internode_links", 2.0, Scope::PerNode),
    ("shard_inputs", 1000.0, Scope::PerNode),
];

const MIB: f64 = 1024.0 * 1024.0;

/// Samples each third must keep for a verdict.
pub(crate) const MIN_SAMPLES: usize = 3;

/// Seconds before a restart's first sample that are left out (a drain takes up to
/// `shutdown_timeout`, 20 s by default, before the node is gone).
const BEFORE_RESTART_S: f64 = 30.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Bounded,
    Grew,
    NotJudged,
}

/// The verdict on one series (of one node, or of the cluster).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub series: &'static str,
    /// `n1`.. for a node, `all` for a cluster total or high-water mark.
    pub node: String,
    pub scope: Scope,
    pub status: Status,
    /// The middle and last thirds' medians (maxima for a high-water mark).
    pub middle: Option<f64>,
    pub last: Option<f64>,
    /// (last - middle) / middle, when middle > 0.
    pub growth: Option<f64>,
    pub floor: f64,
    /// Samples used in the middle and last thirds.
    pub samples: [usize; 2],
}

/// Judges every rule over a run's samples (see the module docs).
pub(crate) fn judge_run(s: &Samples, args: &SoakArgs) -> Vec<Verdict> {
    let run = args.duration.as_secs_f64();
    let before = args.sample_every.as_secs_f64() + BEFORE_RESTART_S;
    let after = args.settle.as_secs_f64();
    let excluded: Vec<(f64, f64)> = s
        .restarts
        .iter()
        .map(|(_, t)| (t - before, t + after))
        .collect();
    let value = |r: &super::sampler::Sample, series: &str| -> Option<f64> {
        let v = if series == "other_fds" {
            r.v[col("open_fds")?] - r.v[col("connections")?]
        } else {
            r.v[col(series)?]
        };
        (r.up && v.is_finite()).then_some(v)
    };
    let mut out = Vec::new();
    for (series, floor, scope) in RULES {
        let judge_points = |node: String, points: &[(f64, f64)]| -> Verdict {
            let (stat, excl): (Stat, &[(f64, f64)]) = match scope {
                Scope::HighWater => (Stat::Max, &[]),
                _ => (Stat::Median, &excluded),
            };
            let mut v = judge(
                series,
                node,
                points,
                run,
                excl,
                args.growth_limit,
                floor,
                stat,
            );
            v.scope = scope;
            v
        };
        match scope {
            Scope::PerNode => {
                for node in 0..s.nodes {
                    let points: Vec<(f64, f64)> = s
                        .rows
                        .iter()
                        .filter(|r| r.node == node)
                        .filter_map(|r| value(r, series).map(|v| (r.t, v)))
                        .collect();
                    out.push(judge_points(format!("n{}", node + 1), &points));
                }
            }
            Scope::ClusterTotal => {
                // Rows of one sample share its time; a total needs every node.
                let mut at: BTreeMap<u64, (usize, f64, f64)> = BTreeMap::new();
                for r in s.rows.iter().filter(|r| r.node < s.nodes) {
                    let e = at.entry(r.t.to_bits()).or_insert((0, r.t, 0.0));
                    if let Some(v) = value(r, series) {
                        e.0 += 1;
                        e.2 += v;
                    }
                }
                let points: Vec<(f64, f64)> = at
                    .values()
                    .filter(|(n, _, _)| *n == s.nodes)
                    .map(|(_, t, v)| (*t, *v))
                    .collect();
                out.push(judge_points("all".into(), &points));
            }
            Scope::HighWater => {
                let points: Vec<(f64, f64)> = s
                    .rows
                    .iter()
                    .filter(|r| r.node < s.nodes)
                    .filter_map(|r| value(r, series).map(|v| (r.t, v)))
                    .collect();
                out.push(judge_points("all".into(), &points));
            }
        }
    }
    out
}

/// How a third is summarised.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stat {
    Median,
    Max,
}

/// Judges one series: `points` are (seconds since the start, value).
#[allow(clippy::too_many_arguments)] // a pure function of its inputs; the tests call it so
pub(crate) fn judge(
    series: &'static str,
    node: String,
    points: &[(f64, f64)],
    run: f64,
    excluded: &[(f64, f64)],
    limit: f64,
    floor: f64,
    stat: Stat,
) -> Verdict {
    let kept = |lo: f64, hi: f64| -> Vec<f64> {
        points
            .iter()
            .filter(|(t, _)| *t >= lo && *t <= hi)
            .filter(|(t, _)| !excluded.iter().any(|(a, b)| t >= a && t <= b))
            .map(|(_, v)| *v)
            .collect()
    };
    let mid = kept(run / 3.0, 2.0 * run / 3.0 - 1e-9);
    let last = kept(2.0 * run / 3.0, run);
    let summary = |xs: &[f64]| match stat {
        Stat::Median => median(xs),
        Stat::Max => xs.iter().copied().reduce(f64::max),
    };
    let (m, l) = (summary(&mid), summary(&last));
    let mut v = Verdict {
        series,
        node,
        scope: Scope::PerNode,
        status: Status::NotJudged,
        middle: m,
        last: l,
        growth: None,
        floor,
        samples: [mid.len(), last.len()],
    };
    let (Some(m), Some(l)) = (m, l) else {
        return v;
    };
    if m > 0.0 {
        v.growth = Some((l - m) / m);
    }
    if mid.len() < MIN_SAMPLES || last.len() < MIN_SAMPLES {
        return v;
    }
    v.status = if l - m > floor && l - m > limit * m.max(0.0) {
        Status::Grew
    } else {
        Status::Bounded
    };
    v
}

fn median(xs: &[f64]) -> Option<f64> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(f64) -> f64) -> Vec<(f64, f64)> {
        (0..=90)
            .map(|i| (i as f64 * 10.0, f(i as f64 * 10.0)))
            .collect()
    }

    fn j(points: &[(f64, f64)], excluded: &[(f64, f64)], floor: f64) -> Verdict {
        judge(
            "x",
            "n1".into(),
            points,
            900.0,
            excluded,
            0.2,
            floor,
            Stat::Median,
        )
    }

    #[test]
    fn a_flat_series_after_a_ramp_is_bounded() {
        // Ramps up during the warm-up third, then noise around 100 MB.
        let p = series(|t| {
            if t < 300.0 {
                t / 3.0
            } else {
                100.0 + (t % 7.0)
            }
        });
        let v = j(&p, &[], 10.0);
        assert_eq!(v.status, Status::Bounded, "{v:?}");
        assert_eq!(v.samples, [30, 31]);
    }

    #[test]
    fn steady_growth_is_caught() {
        let p = series(|t| 100.0 + t / 2.0);
        let v = j(&p, &[], 10.0);
        assert_eq!(v.status, Status::Grew, "{v:?}");
        assert!(v.growth.unwrap() > 0.2);
    }

    #[test]
    fn growth_below_the_floor_is_noise() {
        // From 0 to 5 queued frames is infinite relative growth, but not growth.
        let p = series(|t| if t < 600.0 { 0.0 } else { 5.0 });
        assert_eq!(j(&p, &[], 1000.0).status, Status::Bounded);
        assert_eq!(j(&p, &[], 1.0).status, Status::Grew);
    }

    #[test]
    fn one_spike_is_not_growth() {
        let p = series(|t| if t == 800.0 { 1e9 } else { 50.0 });
        assert_eq!(j(&p, &[], 10.0).status, Status::Bounded);
    }

    #[test]
    fn samples_around_a_restart_are_left_out() {
        // A restart at 650 s: the node starts from zero and refills by 770 s.
        let p = series(|t| {
            if (650.0..770.0).contains(&t) {
                (t - 650.0) / 1.2
            } else {
                100.0
            }
        });
        let v = j(&p, &[(610.0, 770.0)], 10.0);
        assert_eq!(v.status, Status::Bounded, "{v:?}");
        // Everything excluded: not judged, which is not a pass.
        let all = j(&p, &[(0.0, 900.0)], 10.0);
        assert_eq!(all.status, Status::NotJudged);
    }

    #[test]
    fn a_high_water_mark_that_stays_is_bounded_and_one_that_climbs_is_not() {
        // Peaks at restarts (every 150 s) that reach the same height, retained in between.
        let same = series(|t| if t < 150.0 { 50.0 } else { 100.0 });
        let v = judge("rss", "all".into(), &same, 900.0, &[], 0.2, 10.0, Stat::Max);
        assert_eq!(v.status, Status::Bounded, "{v:?}");
        // Each peak higher than the last.
        let climbing = series(|t| 50.0 + (t / 150.0).floor() * 30.0);
        let v = judge(
            "rss",
            "all".into(),
            &climbing,
            900.0,
            &[],
            0.2,
            10.0,
            Stat::Max,
        );
        assert_eq!(v.status, Status::Grew, "{v:?}");
    }

    #[test]
    fn totals_and_per_node_series_of_a_run() {
        use crate::soak::sampler::{N, Sample};
        // Two nodes; at 400 s most of node 2's clients move to node 1 and stay: per node the
        // connections change, the total does not. Meanwhile the total heap leaks.
        let mut s = Samples {
            nodes: 2,
            ..Samples::default()
        };
        for i in 0..=90 {
            let t = i as f64 * 10.0;
            for node in 0..2 {
                let mut v = [0.0; N];
                let conns = match (node, t >= 400.0) {
                    (_, false) => 1000.0,
                    (0, true) => 1900.0,
                    _ => 100.0,
                };
                v[col("connections").unwrap()] = conns;
                v[col("open_fds").unwrap()] = conns + 30.0;
                v[col("rss_bytes").unwrap()] = 64.0 * MIB;
                v[col("heap_bytes").unwrap()] = 32.0 * MIB + t * 0.2 * MIB;
                s.rows.push(Sample {
                    t,
                    node,
                    up: true,
                    v,
                });
            }
        }
        let mut args = crate::soak::tests::args();
        args.duration = std::time::Duration::from_secs(900);
        let verdicts = judge_run(&s, &args);
        let find = |series: &str, node: &str| {
            verdicts
                .iter()
                .find(|v| v.series == series && v.node == node)
                .unwrap()
                .status
        };
        assert_eq!(find("connections", "all"), Status::Bounded);
        assert_eq!(find("open_fds", "all"), Status::Bounded);
        assert_eq!(find("other_fds", "n1"), Status::Bounded);
        assert_eq!(find("rss_bytes", "all"), Status::Bounded);
        assert_eq!(find("heap_bytes", "all"), Status::Grew);
        assert_eq!(find("rooms_owned", "n2"), Status::Bounded);
        // 4 cluster-wide rules, 16 per node.
        assert_eq!(verdicts.len(), 4 + 16 * 2);
    }
}
