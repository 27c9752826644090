//! Witnesses: long-lived subscribers that keep every message of their rooms, the record the
//! loss check reads.
//!
//! A witness connection follows up to `--witness-rooms` rooms. Witnesses of one room are on
//! different nodes (layer `l` of chunk `c` starts on node `(c + l) mod nodes`), so one node's
//! restart never takes every witness of a room away at once. A witness whose connection is lost
//! — a restart, a drain's reconnect hint — connects to another node and resumes every room with
//! `since` and `epoch`; a resume that is not `recovered` is a violation (the cluster promises
//! recovery across one failure at a time) and is noted with the room and position.
//!
//! Each room's log keeps, per epoch, the payload id `(p, n)` of every seq received, so the
//! check can ask "did this witness get (room, epoch, seq) with this payload".

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::rng::Rng;
use super::ws::{self, In};
use super::{OpenGuard, Shared};

/// The messages of one room in one epoch, as one witness received them.
#[derive(Debug, Default, Clone)]
pub(crate) struct EpochLog {
    /// Seqs up to `base` came before this witness followed the epoch (not expected of it).
    pub base: u64,
    /// The payload of seq `base + 1 + i` at `i`; `None` where a seq was skipped.
    pub got: Vec<Option<(u64, u64)>>,
}

impl EpochLog {
    /// The payload received at `seq`: `None` if the witness did not receive it.
    pub fn get(&self, seq: u64) -> Option<(u64, u64)> {
        if seq <= self.base {
            return None;
        }
        self.got
            .get((seq - self.base - 1) as usize)
            .copied()
            .flatten()
    }
}

/// What one witness received in one room.
#[derive(Debug, Default, Clone)]
pub(crate) struct RoomLog {
    pub epochs: HashMap<u32, EpochLog>,
    /// Resumes that were not recovered: (ms since the start, since, epoch asked, epoch got).
    pub unrecovered: Vec<(u64, u64, String, String)>,
    /// The epoch followed now and the last seq received in it.
    current: Option<u32>,
    last: u64,
    /// The epoch string of `current` (to skip the interner on every event).
    current_name: String,
    joined: bool,
    /// After a resume that was not recovered, the next event starts a new position.
    loose: bool,
}

/// One witness connection's record.
#[derive(Debug, Clone)]
pub(crate) struct WitnessLog {
    pub layer: usize,
    /// (room index, its log)
    pub rooms: Vec<(usize, RoomLog)>,
    /// Times this witness reconnected, ms since the start.
    pub reconnects_at: Vec<u64>,
}

/// Runs one witness connection for `rooms` until the witnesses are stopped; returns its log.
pub(crate) async fn run(
    sh: Arc<Shared>,
    layer: usize,
    chunk: usize,
    rooms: Vec<usize>,
) -> WitnessLog {
    let mut log = WitnessLog {
        layer,
        rooms: rooms.iter().map(|r| (*r, RoomLog::default())).collect(),
        reconnects_at: Vec::new(),
    };
    let n = sh.args.urls.len();
    let mut url = (chunk + layer) % n;
    let mut rng = Rng::derive(sh.seed, 1_000_000_000 + (layer * 100_000 + chunk) as u64);
    let mut stop = sh.stop_witnesses.subscribe();
    let mut first = true;
    let mut backoff = Duration::from_millis(100);
    let c = &sh.witness;
    loop {
        if *stop.borrow_and_update() {
            break;
        }
        let mut ws = match ws::connect(&sh.args.urls[url], sh.source_ip(chunk)).await {
            Ok(ws) => ws,
            Err(e) => {
                c.connect_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(url = %sh.args.urls[url], error = %e, "witness cannot connect");
                url = (url + 1) % n;
                tokio::time::sleep(rng.jitter(backoff)).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let _open = OpenGuard::new(&sh, url);
        c.connects.fetch_add(1, Ordering::Relaxed);
        if !first {
            c.reconnects.fetch_add(1, Ordering::Relaxed);
            log.reconnects_at.push(sh.ms());
        }
        first = false;
        let (next, stopped) = follow(&sh, &mut log, &mut ws, &mut stop, &mut rng).await;
        // Whatever happened, the rooms are not joined on the next connection yet.
        let joined = log.rooms.iter().filter(|(_, r)| r.joined).count() as i64;
        sh.witness_joined.fetch_sub(joined, Ordering::AcqRel);
        for (_, r) in &mut log.rooms {
            r.joined = false;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
        if stopped {
            break;
        }
        url = next.unwrap_or((url + 1) % n);
    }
    log
}

/// One connection: join (or resume) every room, then record events until the connection ends
/// (returns the URL a drain hinted, if any) or the witnesses are stopped (`true`).
async fn follow(
    sh: &Shared,
    log: &mut WitnessLog,
    ws: &mut ws::Ws,
    stop: &mut tokio::sync::watch::Receiver<bool>,
    rng: &mut Rng,
) -> (Option<usize>, bool) {
    let c = &sh.witness;
    // Joins by room position in this connection's list (id = position + 1); resends of joins
    // answered `unavailable`, due at a time.
    let mut resend: Vec<(usize, Instant)> = Vec::new();
    for k in 0..log.rooms.len() {
        if ws
            .send(Message::Text(join_text(sh, log, k).into()))
            .await
            .is_err()
        {
            return (None, false);
        }
    }
    loop {
        let wake = resend
            .iter()
            .map(|(_, t)| *t)
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
        let m = tokio::select! {
            m = ws.next() => m,
            _ = tokio::time::sleep_until(wake) => {
                let now = Instant::now();
                let due: Vec<usize> = resend.iter().filter(|(_, t)| *t <= now).map(|(k, _)| *k).collect();
                resend.retain(|(_, t)| *t > now);
                for k in due {
                    c.join_retries.fetch_add(1, Ordering::Relaxed);
                    if ws.send(Message::Text(join_text(sh, log, k).into())).await.is_err() {
                        return (None, false);
                    }
                }
                continue;
            }
            _ = stop.changed() => return (None, true),
        };
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                if let Some(f) = f {
                    sh.close_code(u16::from(f.code));
                }
                return (None, false);
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return (None, false),
        };
        let Ok(f) = serde_json::from_str::<In>(text.as_str()) else {
            c.bad_frames.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if let Some(ok) = f.ok {
            let Some(k) = f.id.and_then(|id| id.checked_sub(1)).map(|k| k as usize) else {
                continue;
            };
            if k >= log.rooms.len() {
                continue;
            }
            if ok {
                on_joined(sh, log, k, &f);
            } else {
                // `unavailable` while a room moves or its owner fails over: ask again.
                tracing::debug!(room = %sh.rooms[log.rooms[k].0],
                    code = f.error.as_ref().map(|e| e.code.as_ref()).unwrap_or(""), "witness join refused");
                resend.push((k, Instant::now() + rng.jitter(Duration::from_millis(500))));
            }
            continue;
        }
        match f.ty.as_deref() {
            Some("message") => on_event(sh, log, &f),
            Some("reconnect") => {
                c.drain_hints.fetch_add(1, Ordering::Relaxed);
                return (f.url.as_deref().and_then(|u| sh.url_index(u)), false);
            }
            _ => {}
        }
    }
}

fn join_text(sh: &Shared, log: &WitnessLog, k: usize) -> String {
    let (room, r) = &log.rooms[k];
    let name = &sh.rooms[*room];
    let id = k + 1;
    match (r.current, r.loose) {
        (Some(_), false) => format!(
            r#"{{"op":"join","id":{id},"room":"{name}","since":{},"epoch":"{}"}}"#,
            r.last, r.current_name
        ),
        _ => format!(r#"{{"op":"join","id":{id},"room":"{name}"}}"#),
    }
}

fn on_joined(sh: &Shared, log: &mut WitnessLog, k: usize, f: &In) {
    let c = &sh.witness;
    let (room, r) = &mut log.rooms[k];
    if r.joined {
        return;
    }
    r.joined = true;
    sh.witness_joined.fetch_add(1, Ordering::AcqRel);
    let epoch = f.epoch.as_deref().unwrap_or("");
    let seq = f.seq.unwrap_or(0);
    match (r.current, r.loose) {
        (Some(_), false) => {
            c.resumes.fetch_add(1, Ordering::Relaxed);
            if f.recovered != Some(true) || epoch != r.current_name {
                c.unrecovered.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(room = %sh.rooms[*room], since = r.last, epoch = %r.current_name,
                    now_epoch = epoch, seq, "witness: resume not recovered");
                r.unrecovered
                    .push((sh.ms(), r.last, r.current_name.clone(), epoch.to_string()));
                r.loose = true;
            }
        }
        _ => {
            // A first join: this witness follows the epoch from the room's seq now on.
            let e = sh.epoch_id(epoch);
            r.current = Some(e);
            r.current_name = epoch.to_string();
            r.last = seq;
            r.loose = false;
            r.epochs.entry(e).or_insert_with(|| EpochLog {
                base: seq,
                got: Vec::new(),
            });
        }
    }
}

fn on_event(sh: &Shared, log: &mut WitnessLog, f: &In) {
    let c = &sh.witness;
    c.deliveries.fetch_add(1, Ordering::Relaxed);
    let (Some(room), Some(epoch), Some(seq), Some(d)) = (
        f.room.as_deref().and_then(|r| sh.room_index(r)),
        f.epoch.as_deref(),
        f.seq,
        f.data,
    ) else {
        c.bad_frames.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Some((_, r)) = log.rooms.iter_mut().find(|(i, r)| *i == room && r.joined) else {
        c.stray_events.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(room = %sh.rooms[room], seq, "witness: event of a room it is not in");
        return;
    };
    let same = r.current.is_some() && r.current_name == epoch;
    let e = if same {
        r.current.unwrap_or_default()
    } else {
        let e = sh.epoch_id(epoch);
        if !r.loose {
            c.epoch_changes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(room = %sh.rooms[room], from = %r.current_name, to = epoch, seq,
                "witness: room restarted in a new epoch");
        }
        r.current = Some(e);
        r.current_name = epoch.to_string();
        e
    };
    let el = r.epochs.entry(e).or_insert_with(|| EpochLog {
        // A new epoch starts at seq 1; after an unrecovered resume, where the replay starts.
        base: if r.loose { seq.saturating_sub(1) } else { 0 },
        got: Vec::new(),
    });
    let was_loose = std::mem::take(&mut r.loose);
    if seq <= el.base {
        c.duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let i = (seq - el.base - 1) as usize;
    if i < el.got.len() {
        if el.got[i].is_some() {
            c.duplicates.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(room = %sh.rooms[room], seq, "witness: duplicate");
        } else {
            el.got[i] = Some((d.p, d.n));
        }
    } else {
        if i > el.got.len() && !was_loose {
            c.gaps.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(room = %sh.rooms[room], seq, expected = el.base + el.got.len() as u64 + 1,
                "witness: gap");
        }
        el.got.resize(i, None);
        el.got.push(Some((d.p, d.n)));
    }
    r.last = seq;
}
