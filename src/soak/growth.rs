//! The growth check: does any sampled series grow without bound?
//!
//! A soak cannot prove a bound, so it looks for a trend that would not stop. The criterion,
//! per node and series:
//!
//! * The first third of the run is warm-up and is not judged: clients ramp up, rooms fill
//!   their history (bounded by age, 10 minutes by default, so a 30-minute run's warm-up
//!   covers it), allocators reach their working size.
//! * Samples around a node restart are left out, for every node (a restarted node starts from
//!   zero and the others take its clients for a while): from `sample_every` + 30 s before the
//!   sample that saw the restart (a drain's last seconds) to `--settle` after it.
//! * The median of what remains in the last third is compared with the median of the middle
//!   third. The series **grew** when the last exceeds the middle by more than `--growth-limit`
//!   (20 %) of the middle *and* by more than the series' absolute floor ([`RULES`]: noise of a
//!   few connections or queued frames is not growth). Medians, so one spike is not growth.
//! * With fewer than [`MIN_SAMPLES`] samples left in either third, the series is reported as
//!   not judged (a run too short, or restarts too close together), never as a pass.
//!
//! Pure: samples in, verdicts out.

use super::SoakArgs;
use super::sampler::{Samples, col};

/// The series judged, with the absolute growth below which a change is noise.
pub(crate) const RULES: [(&str, f64); 19] = [
    ("rss_bytes", 32.0 * 1024.0 * 1024.0),
    ("open_fds", 500.0),
    ("connections", 500.0),
    ("rooms_owned", 50.0),
    ("replica_copies", 50.0),
    ("under_replicated", 10.0),
    ("member_rooms", 50.0),
    ("pending_requests", 100.0),
    ("hints", 100.0),
    ("moved", 100.0),
    ("pending_owner", 100.0),
    ("publishes_by_room", 100.0),
    ("outbound_frames", 1000.0),
    ("outbound_bytes", 1024.0 * 1024.0),
    ("internode_messages", 1000.0),
    ("internode_bytes", 1024.0 * 1024.0),
    ("internode_links", 2.0),
    ("shard_inputs", 1000.0),
    ("delivery_batches", 100.0),
];

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

/// The verdict on one series of one node.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Verdict {
    pub series: &'static str,
    pub node: String,
    pub status: Status,
    /// Medians of the middle and last thirds.
    pub middle: Option<f64>,
    pub last: Option<f64>,
    /// (last - middle) / middle, when middle > 0.
    pub growth: Option<f64>,
    pub floor: f64,
    /// Samples used in the middle and last thirds.
    pub samples: [usize; 2],
}

/// Judges every node's series of a run (see the module docs).
pub(crate) fn judge_run(s: &Samples, args: &SoakArgs) -> Vec<Verdict> {
    let run = args.duration.as_secs_f64();
    let before = args.sample_every.as_secs_f64() + BEFORE_RESTART_S;
    let after = args.settle.as_secs_f64();
    let excluded: Vec<(f64, f64)> = s
        .restarts
        .iter()
        .map(|(_, t)| (t - before, t + after))
        .collect();
    let mut out = Vec::new();
    for node in 0..s.nodes {
        for (series, floor) in RULES {
            let Some(c) = col(series) else { continue };
            let points: Vec<(f64, f64)> = s
                .rows
                .iter()
                .filter(|r| r.node == node && r.up && r.v[c].is_finite())
                .map(|r| (r.t, r.v[c]))
                .collect();
            out.push(judge(
                series,
                format!("n{}", node + 1),
                &points,
                run,
                &excluded,
                args.growth_limit,
                floor,
            ));
        }
    }
    out
}

/// Judges one series: `points` are (seconds since the start, value).
pub(crate) fn judge(
    series: &'static str,
    node: String,
    points: &[(f64, f64)],
    run: f64,
    excluded: &[(f64, f64)],
    limit: f64,
    floor: f64,
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
    let (m, l) = (median(&mid), median(&last));
    let mut v = Verdict {
        series,
        node,
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
        judge("x", "n1".into(), points, 900.0, excluded, 0.2, floor)
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
}
