//! The loss check: every acknowledged publish against what the witnesses received.
//!
//! An acknowledgement names a position, `(room, epoch, seq)`, and the soak knows the payload
//! it sent, `(p, n)`. Every witness of the room must have received that payload at that
//! position. What no witness has is looked up in the room's history at the end
//! ([`look_up_history`]): found there, it was committed but not delivered; not found, it is
//! lost. Both fail the run, as does a witness that missed what another received, a witness
//! that got another payload at an acknowledged position, and a payload that appears at two
//! positions (sequenced twice despite its idempotency key).

use std::collections::{HashMap, HashSet};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::witness::{RoomLog, WitnessLog};
use super::ws::{self, In};
use super::{Acked, Shared};

/// How many entries of each kind the report spells out.
const EXAMPLES: usize = 20;
/// How many lost candidates are looked up in history at most.
const LOOKUPS: usize = 500;

/// What the check found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    /// Publishes acknowledged to the churning clients.
    pub acked: u64,
    /// Acknowledged and received, with its payload, by every witness of its room.
    pub confirmed: u64,
    /// Acknowledged, received by no witness, and not in the room's history at the end.
    pub lost: u64,
    /// Acknowledged, received by no witness, but in the room's history at the end
    /// (committed, not delivered).
    pub undelivered_in_history: u64,
    /// Acknowledged, received by no witness, too many to look up (counted as lost).
    pub not_looked_up: u64,
    /// Acknowledged, received by some witnesses of the room but not by others.
    pub missed_by_some: u64,
    /// A witness received another payload at an acknowledged position.
    pub wrong_payload: u64,
    /// A payload received at two positions (sequenced twice).
    pub sequenced_twice: u64,
    /// Two witnesses of a room disagree on the payload at one position.
    pub conflicts: u64,
    /// Positions the witnesses received that no acknowledgement names: publishes whose
    /// outcome their client never learned (allowed).
    pub unacknowledged_seen: u64,
    /// Some of the violations, spelled out.
    pub examples: Vec<String>,
}

impl CheckReport {
    pub fn violations(&self) -> u64 {
        self.lost
            + self.undelivered_in_history
            + self.not_looked_up
            + self.missed_by_some
            + self.wrong_payload
            + self.sequenced_twice
            + self.conflicts
    }
}

/// Acknowledged publishes no witness received, for the history look-up.
pub(crate) struct CheckResult {
    pub report: CheckReport,
    pub unseen: Vec<Acked>,
}

/// Checks `acked` against the witnesses' logs (pure; see the module docs).
pub(crate) fn check(
    acked: &[Acked],
    logs: &[WitnessLog],
    epochs: &dyn Fn(u32) -> String,
) -> CheckResult {
    let mut r = CheckReport {
        acked: acked.len() as u64,
        ..CheckReport::default()
    };
    let mut by_room: HashMap<usize, Vec<(&WitnessLog, &RoomLog)>> = HashMap::new();
    for w in logs {
        for (room, rl) in &w.rooms {
            by_room.entry(*room).or_default().push((w, rl));
        }
    }
    let mut unseen = Vec::new();
    let example = |r: &mut CheckReport, s: String| {
        if r.examples.len() < EXAMPLES {
            r.examples.push(s);
        }
    };
    let mut acked_at: HashSet<(u32, u32, u64)> = HashSet::with_capacity(acked.len());
    for a in acked {
        acked_at.insert((a.room, a.epoch, a.seq));
        let ws = by_room
            .get(&(a.room as usize))
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        let mut missing = Vec::new();
        let (mut hits, mut wrong) = (0, 0);
        for (w, rl) in ws {
            match rl.epochs.get(&a.epoch).and_then(|e| e.get(a.seq)) {
                Some(pn) if pn == (a.p, a.n) => hits += 1,
                Some(pn) => {
                    wrong += 1;
                    r.wrong_payload += 1;
                    example(
                        &mut r,
                        format!(
                            "wrong payload: room {} epoch {} seq {} acknowledged as {}/{} at {} ms, witness (layer {}) got {}/{}",
                            a.room,
                            epochs(a.epoch),
                            a.seq,
                            a.p,
                            a.n,
                            a.at_ms,
                            w.layer,
                            pn.0,
                            pn.1
                        ),
                    );
                }
                None => missing.push((*w, *rl)),
            }
        }
        if hits == 0 && wrong == 0 {
            // No witness has it: lost, or at least not delivered (the history tells).
            unseen.push(*a);
        } else if hits > 0 && missing.is_empty() && wrong == 0 {
            r.confirmed += 1;
        } else if let (true, Some((w, rl))) = (hits > 0, missing.first()) {
            r.missed_by_some += 1;
            example(
                &mut r,
                format!(
                    "missed by a witness: room {} epoch {} seq {} ({}/{}, acknowledged at {} ms) not received by the witness of layer {} (its reconnects at {:?} ms; unrecovered resumes {:?})",
                    a.room,
                    epochs(a.epoch),
                    a.seq,
                    a.p,
                    a.n,
                    a.at_ms,
                    w.layer,
                    w.reconnects_at,
                    rl.unrecovered
                ),
            );
        }
    }
    // Per room: one payload per position, and one position per payload, across witnesses.
    for (room, ws) in &by_room {
        let mut at: HashMap<(u32, u64), (u64, u64)> = HashMap::new();
        let mut pos_of: HashMap<(u64, u64), (u32, u64)> = HashMap::new();
        for (w, rl) in ws {
            for (e, el) in &rl.epochs {
                for (i, got) in el.got.iter().enumerate() {
                    let Some(pn) = *got else { continue };
                    let seq = el.base + 1 + i as u64;
                    match at.get(&(*e, seq)) {
                        Some(other) if *other != pn => {
                            r.conflicts += 1;
                            example(
                                &mut r,
                                format!(
                                    "witnesses disagree: room {room} epoch {} seq {seq}: {}/{} and {}/{} (layer {})",
                                    epochs(*e),
                                    other.0,
                                    other.1,
                                    pn.0,
                                    pn.1,
                                    w.layer
                                ),
                            );
                        }
                        Some(_) => {}
                        None => {
                            at.insert((*e, seq), pn);
                        }
                    }
                    match pos_of.get(&pn) {
                        Some(p) if *p != (*e, seq) => {
                            r.sequenced_twice += 1;
                            example(
                                &mut r,
                                format!(
                                    "sequenced twice: room {room} payload {}/{} at epoch {} seq {} and epoch {} seq {seq}",
                                    pn.0,
                                    pn.1,
                                    epochs(p.0),
                                    p.1,
                                    epochs(*e)
                                ),
                            );
                        }
                        Some(_) => {}
                        None => {
                            pos_of.insert(pn, (*e, seq));
                        }
                    }
                }
            }
        }
        r.unacknowledged_seen += at
            .keys()
            .filter(|(e, seq)| !acked_at.contains(&(*room as u32, *e, *seq)))
            .count() as u64;
    }
    CheckResult { report: r, unseen }
}

/// Looks the publishes no witness received up in their rooms' history (over a fresh
/// connection to any node that answers) and counts them as lost or undelivered.
pub(crate) async fn look_up_history(sh: &Shared, res: &mut CheckResult) {
    if res.unseen.is_empty() {
        return;
    }
    let unseen = std::mem::take(&mut res.unseen);
    let r = &mut res.report;
    let names = |e: u32| {
        sh.epochs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .name(e)
            .to_string()
    };
    let mut conn: Option<ws::Ws> = None;
    for (k, a) in unseen.iter().enumerate() {
        if k >= LOOKUPS {
            r.not_looked_up += 1;
            continue;
        }
        let epoch = names(a.epoch);
        let found =
            match history_at(sh, &mut conn, &sh.rooms[a.room as usize], a.seq, k as u64).await {
                Some((e, pn)) => e == epoch && pn == Some((a.p, a.n)),
                None => false,
            };
        let what = if found {
            r.undelivered_in_history += 1;
            "in history, but no witness received it"
        } else {
            r.lost += 1;
            "LOST: no witness received it and it is not in history"
        };
        if r.examples.len() < EXAMPLES {
            r.examples.push(format!(
                "{what}: room {} epoch {epoch} seq {} (payload {}/{}, acknowledged at {} ms)",
                sh.rooms[a.room as usize], a.seq, a.p, a.n, a.at_ms
            ));
        }
    }
    if let Some(mut c) = conn {
        let _ = c.close(None).await;
    }
}

/// The message at `seq` of `room` in its history now: (epoch, payload).
async fn history_at(
    sh: &Shared,
    conn: &mut Option<ws::Ws>,
    room: &str,
    seq: u64,
    id: u64,
) -> Option<(String, Option<(u64, u64)>)> {
    for _attempt in 0..3 {
        if conn.is_none() {
            for url in &sh.args.urls {
                if let Ok(c) = ws::connect(url, None).await {
                    *conn = Some(c);
                    break;
                }
            }
        }
        let c = conn.as_mut()?;
        let req = format!(
            r#"{{"op":"history","id":{id},"room":"{room}","since":{},"limit":1}}"#,
            seq - 1
        );
        if c.send(Message::Text(req.into())).await.is_err() {
            *conn = None;
            continue;
        }
        let reply = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while let Some(Ok(m)) = c.next().await {
                if let Message::Text(t) = m
                    && let Ok(f) = serde_json::from_str::<In>(t.as_str())
                    && f.id == Some(id)
                    && f.ok.is_some()
                {
                    return Some(
                        f.messages
                            .first()
                            .filter(|m| m.seq == seq)
                            .map(|m| (m.epoch.clone(), m.data.map(|d| (d.p, d.n))))
                            .unwrap_or_else(|| {
                                (f.epoch.map(|e| e.into_owned()).unwrap_or_default(), None)
                            }),
                    );
                }
            }
            None
        })
        .await;
        match reply {
            Ok(Some(v)) => return Some(v),
            _ => *conn = None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::soak::witness::EpochLog;

    fn log(layer: usize, room: usize, base: u64, got: Vec<Option<(u64, u64)>>) -> WitnessLog {
        let mut rl = RoomLog::default();
        rl.epochs.insert(0, EpochLog { base, got });
        WitnessLog {
            layer,
            rooms: vec![(room, rl)],
            reconnects_at: vec![],
        }
    }

    fn ack(seq: u64, p: u64, n: u64) -> Acked {
        Acked {
            room: 0,
            epoch: 0,
            seq,
            p,
            n,
            at_ms: 0,
        }
    }

    fn names(_: u32) -> String {
        "e".into()
    }

    #[test]
    fn every_witness_has_every_acknowledged_message() {
        let w = vec![
            log(0, 0, 0, vec![Some((1, 0)), Some((2, 0)), Some((1, 1))]),
            log(1, 0, 0, vec![Some((1, 0)), Some((2, 0)), Some((1, 1))]),
        ];
        // seq 2 was sequenced but its publisher never learned it: allowed.
        let r = check(&[ack(1, 1, 0), ack(3, 1, 1)], &w, &names);
        assert_eq!(r.report.confirmed, 2);
        assert_eq!(r.report.violations(), 0);
        assert_eq!(r.report.unacknowledged_seen, 1);
        assert!(r.unseen.is_empty());
    }

    #[test]
    fn a_message_missing_everywhere_is_unseen_and_one_missing_once_is_missed() {
        let w = vec![
            log(0, 0, 0, vec![Some((1, 0)), None, Some((1, 2))]),
            log(1, 0, 0, vec![None, None, Some((1, 2))]),
        ];
        let r = check(&[ack(1, 1, 0), ack(2, 1, 1), ack(3, 1, 2)], &w, &names);
        assert_eq!(r.report.confirmed, 1);
        assert_eq!(r.report.missed_by_some, 1);
        assert_eq!(r.unseen.len(), 1);
        assert_eq!(r.unseen[0].seq, 2);
    }

    #[test]
    fn another_payload_or_a_payload_twice_are_violations() {
        let w = vec![
            log(0, 0, 0, vec![Some((1, 0)), Some((1, 0))]),
            log(1, 0, 0, vec![Some((9, 9)), Some((1, 0))]),
        ];
        let r = check(&[ack(1, 1, 0)], &w, &names);
        assert_eq!(r.report.wrong_payload, 1);
        assert!(r.report.conflicts >= 1);
        assert!(r.report.sequenced_twice >= 1);
        assert!(!r.report.examples.is_empty());
    }

    #[test]
    fn what_came_before_a_witness_joined_is_not_expected_of_it() {
        let el = EpochLog {
            base: 5,
            got: vec![Some((1, 1))],
        };
        assert_eq!(el.get(5), None);
        assert_eq!(el.get(6), Some((1, 1)));
        assert_eq!(el.get(7), None);
    }
}
