//! The churning population: client slots that each run one client life after another.
//!
//! A life connects, joins its rooms, publishes at its share of the rate, switches rooms now
//! and then, and ends — with leaves and a close handshake, or (a fraction of lives) by dropping
//! the TCP connection — to be replaced by a new life at once. A life does one request at a
//! time and reads events while it waits for the reply, which keeps its logic sequential: the
//! reply to a join comes before the join's replayed and live events, and a publish is retried
//! by its key until acknowledged or the life ends.
//!
//! When the connection is lost (a node restarted) or a draining node sends a reconnect hint,
//! the life reconnects to another node and resumes each room with `since` and `epoch`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::rng::Rng;
use super::ws::{self, In, Ws};
use super::{OpenGuard, Shared};

/// How long a request may wait for its reply before the connection is given up (the node
/// answers within its `request_timeout`, 5 s by default, even when a room's owner is gone).
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs lives in slot `slot` until the churn stops.
pub(crate) async fn run_slot(sh: Arc<Shared>, slot: usize) {
    let mut rng = Rng::derive(sh.seed, slot as u64 + 1);
    while !sh.stopping() {
        let life = Life::new(&sh, slot, &mut rng);
        life.run(&sh, &mut rng).await;
    }
}

/// Where a client stands in one of its rooms.
struct RoomPos {
    room: usize,
    /// Joined on the current connection.
    joined: bool,
    /// The epoch and last seq received, for the resume and the order check.
    epoch: Option<String>,
    last: u64,
    /// After a resume that was not recovered, the next event sets the position.
    loose: bool,
}

/// Why a connection was given up.
#[derive(Debug)]
enum Lost {
    /// The node closed it, or the TCP connection ended.
    Closed,
    /// No reply within [`REPLY_TIMEOUT`].
    Stalled,
}

/// One reply, owned.
struct Reply {
    ok: bool,
    code: String,
    seq: u64,
    epoch: String,
    recovered: Option<bool>,
}

struct Life {
    slot: usize,
    pid: u64,
    end: Instant,
    abrupt: bool,
    rooms: Vec<RoomPos>,
    /// Publishes made (the next one's `n`).
    n: u64,
    /// A publish whose outcome is unknown (room index, n): sent again with its key.
    unknown: Option<(usize, u64)>,
    retrying: bool,
    publish_every: Duration,
    next_publish: Instant,
    next_switch: Instant,
    url: usize,
    /// A draining node asked us to move (to this URL, if it named one of ours).
    hint: Option<Option<usize>>,
    next_id: u64,
}

impl Life {
    fn new(sh: &Shared, slot: usize, rng: &mut Rng) -> Life {
        sh.churn.lives.fetch_add(1, Ordering::Relaxed);
        let a = &sh.args;
        let now = Instant::now();
        let mut rooms: Vec<RoomPos> = Vec::with_capacity(a.rooms_per_conn);
        while rooms.len() < a.rooms_per_conn {
            let r = rng.below(a.rooms);
            if rooms.iter().all(|p| p.room != r) {
                rooms.push(RoomPos {
                    room: r,
                    joined: false,
                    epoch: None,
                    last: 0,
                    loose: false,
                });
            }
        }
        // Each client publishes every connections / rate seconds (jittered), so together they
        // make the rate; the first one at a random point of its first interval.
        let publish_every = Duration::from_secs_f64(a.connections as f64 / a.publish_rate);
        Life {
            slot,
            pid: sh.new_pid(),
            end: now + rng.between(a.lifetime.0, a.lifetime.1),
            abrupt: rng.chance(a.abrupt),
            rooms,
            n: 0,
            unknown: None,
            retrying: false,
            publish_every,
            next_publish: now + publish_every.mul_f64(rng.unit()),
            next_switch: now + rng.jitter(a.switch_every),
            url: 0,
            hint: None,
            next_id: 1,
        }
    }

    async fn run(mut self, sh: &Shared, rng: &mut Rng) {
        let mut not: Option<usize> = None;
        let mut first = true;
        let mut backoff = Duration::from_millis(100);
        'connection: loop {
            if sh.stopping() || Instant::now() >= self.end {
                break;
            }
            sh.connect_turn().await;
            if sh.stopping() {
                break;
            }
            // Placed now, not before the wait: the counts it looks at are current, and they
            // include the connections still in their handshake.
            self.url = match self.hint.take() {
                Some(Some(u)) => u,
                _ => sh.pick_url(not, rng.below(64)),
            };
            let open = OpenGuard::new(sh, self.url);
            let url = &sh.args.urls[self.url];
            let connected = {
                let _permit = sh.connect_gate.acquire().await;
                ws::connect(url, sh.source_ip(self.slot)).await
            };
            let mut ws = match connected {
                Ok(ws) => ws,
                Err(e) => {
                    drop(open);
                    sh.churn.connect_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(url = %url, error = %e, "soak client cannot connect");
                    sh.avoid(self.url);
                    not = Some(self.url);
                    tokio::time::sleep(rng.jitter(backoff)).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    continue;
                }
            };
            sh.churn.connects.fetch_add(1, Ordering::Relaxed);
            if !first {
                sh.churn.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            first = false;
            backoff = Duration::from_millis(100);
            for r in &mut self.rooms {
                r.joined = false;
            }
            match self.session(&mut ws, sh, rng).await {
                Ok(()) => return,
                Err(Lost::Stalled) => {
                    sh.churn.stalls.fetch_add(1, Ordering::Relaxed);
                    not = Some(self.url);
                }
                Err(Lost::Closed) => {
                    if self.hint.is_none() {
                        // The node went away: go elsewhere while it is not back.
                        sh.avoid(self.url);
                    }
                    not = Some(self.url);
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
            drop(open);
            continue 'connection;
        }
        if self.unknown.is_some() {
            sh.churn.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One connection of the life: (re)join, then publish and switch until the life ends
    /// (`Ok`) or the connection is lost.
    async fn session(&mut self, ws: &mut Ws, sh: &Shared, rng: &mut Rng) -> Result<(), Lost> {
        let mut i = 0;
        while i < self.rooms.len() {
            if self.join(ws, sh, rng, i).await? {
                i += 1;
            } else {
                self.rooms.remove(i);
            }
            if self.hint.is_some() {
                return Err(Lost::Closed);
            }
        }
        let mut stop = sh.stop_churn_signal.subscribe();
        loop {
            if self.hint.is_some() {
                return Err(Lost::Closed);
            }
            let now = Instant::now();
            if sh.stopping() || now >= self.end {
                self.finish(ws, sh).await;
                return Ok(());
            }
            if now >= self.next_publish {
                self.publish(ws, sh, rng).await?;
                continue;
            }
            if now >= self.next_switch {
                self.switch(ws, sh, rng).await?;
                self.next_switch = Instant::now() + rng.jitter(sh.args.switch_every);
                continue;
            }
            let wake = self.next_publish.min(self.next_switch).min(self.end);
            tokio::select! {
                // A reply with no request waiting (none is: requests wait for their own).
                m = ws.next() => { self.on_message(sh, m)?; }
                _ = tokio::time::sleep_until(wake) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Joins (or resumes) `self.rooms[i]`; false if the room was refused for good.
    async fn join(
        &mut self,
        ws: &mut Ws,
        sh: &Shared,
        rng: &mut Rng,
        i: usize,
    ) -> Result<bool, Lost> {
        loop {
            let id = self.id();
            let pos = &self.rooms[i];
            let name = &sh.rooms[pos.room];
            let resume = match (&pos.epoch, pos.loose) {
                (Some(e), false) => Some((pos.last, e.clone())),
                _ => None,
            };
            let text = match &resume {
                Some((since, e)) => format!(
                    r#"{{"op":"join","id":{id},"room":"{name}","since":{since},"epoch":"{e}"}}"#
                ),
                None => format!(r#"{{"op":"join","id":{id},"room":"{name}"}}"#),
            };
            let r = self.request(ws, sh, id, text).await?;
            let pos = &mut self.rooms[i];
            if r.ok {
                sh.churn.joins.fetch_add(1, Ordering::Relaxed);
                pos.joined = true;
                match resume {
                    Some((_, e)) => {
                        sh.churn.resumes.fetch_add(1, Ordering::Relaxed);
                        if r.recovered != Some(true) || r.epoch != e {
                            sh.churn.unrecovered.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(room = %sh.rooms[pos.room], since = pos.last, epoch = %e,
                                now_epoch = %r.epoch, seq = r.seq, "soak client: resume not recovered");
                            pos.loose = true;
                        }
                    }
                    None => {
                        pos.epoch = Some(r.epoch);
                        pos.last = r.seq;
                        pos.loose = false;
                    }
                }
                return Ok(true);
            }
            if r.code == "unavailable" && Instant::now() < self.end && !sh.stopping() {
                sh.churn.join_unavailable.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(rng.jitter(Duration::from_millis(300))).await;
                continue;
            }
            sh.churn.join_refused.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(room = %sh.rooms[pos.room], code = %r.code, "soak client: join refused");
            return Ok(false);
        }
    }

    /// Publishes the next message (or the one whose outcome is unknown, with its key).
    async fn publish(&mut self, ws: &mut Ws, sh: &Shared, rng: &mut Rng) -> Result<(), Lost> {
        let (room, n) = match self.unknown {
            Some(u) => {
                if self.retrying {
                    sh.churn.publish_retries.fetch_add(1, Ordering::Relaxed);
                }
                u
            }
            None => {
                if self.rooms.is_empty() {
                    self.next_publish += self.publish_every;
                    return Ok(());
                }
                let room = self.rooms[rng.below(self.rooms.len())].room;
                let n = self.n;
                self.n += 1;
                (room, n)
            }
        };
        // From here until an answer, the outcome is unknown: a lost connection retries it.
        self.unknown = Some((room, n));
        self.retrying = true;
        let id = self.id();
        let data = ws::payload(self.pid, n, sh.args.size);
        let text = format!(
            r#"{{"op":"publish","id":{id},"room":"{}","data":{data},"key":"{}-{n}"}}"#,
            sh.rooms[room], self.pid
        );
        let r = self.request(ws, sh, id, text).await?;
        if r.ok {
            self.unknown = None;
            self.retrying = false;
            sh.churn.publishes_acked.fetch_add(1, Ordering::Relaxed);
            sh.record_ack(room, &r.epoch, r.seq, self.pid, n);
        } else {
            match r.code.as_str() {
                // Maybe sequenced, maybe not: again with the same key, shortly.
                "unavailable" => {
                    sh.churn.publish_unavailable.fetch_add(1, Ordering::Relaxed);
                    self.next_publish = Instant::now() + rng.jitter(Duration::from_millis(300));
                    return Ok(());
                }
                // Not sequenced: again with the same key at the next turn.
                "rate_limited" => {
                    sh.churn
                        .publish_rate_limited
                        .fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    sh.churn.publish_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(code = %r.code, "soak client: publish refused");
                    self.unknown = None;
                    self.retrying = false;
                }
            }
        }
        self.next_publish = Instant::now() + rng.jitter(self.publish_every);
        Ok(())
    }

    /// Leaves one room and joins another.
    async fn switch(&mut self, ws: &mut Ws, sh: &Shared, rng: &mut Rng) -> Result<(), Lost> {
        if !self.rooms.is_empty() {
            let i = rng.below(self.rooms.len());
            let id = self.id();
            let text = format!(
                r#"{{"op":"leave","id":{id},"room":"{}"}}"#,
                sh.rooms[self.rooms[i].room]
            );
            let r = self.request(ws, sh, id, text).await?;
            if !r.ok {
                sh.churn.leave_errors.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            sh.churn.leaves.fetch_add(1, Ordering::Relaxed);
            self.rooms.remove(i);
        }
        let room = loop {
            let r = rng.below(sh.args.rooms);
            if self.rooms.iter().all(|p| p.room != r) {
                break r;
            }
        };
        self.rooms.push(RoomPos {
            room,
            joined: false,
            epoch: None,
            last: 0,
            loose: false,
        });
        let i = self.rooms.len() - 1;
        if !self.join(ws, sh, rng, i).await? {
            self.rooms.remove(i);
        }
        Ok(())
    }

    /// Ends the life: drop the connection, or leave every room and close.
    async fn finish(&mut self, ws: &mut Ws, sh: &Shared) {
        if self.abrupt {
            sh.churn.ends_abrupt.fetch_add(1, Ordering::Relaxed);
            if let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_ref() {
                // Reset rather than close: the client vanished.
                let _ = tcp.set_zero_linger();
            }
            return;
        }
        for i in 0..self.rooms.len() {
            if !self.rooms[i].joined {
                continue;
            }
            let id = self.id();
            let text = format!(
                r#"{{"op":"leave","id":{id},"room":"{}"}}"#,
                sh.rooms[self.rooms[i].room]
            );
            match self.request(ws, sh, id, text).await {
                Ok(r) if r.ok => {
                    sh.churn.leaves.fetch_add(1, Ordering::Relaxed);
                    self.rooms[i].joined = false;
                }
                Ok(_) => {
                    sh.churn.leave_errors.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => return,
            }
        }
        sh.churn.ends_graceful.fetch_add(1, Ordering::Relaxed);
        let _ = ws.close(None).await;
        // Read to the server's close (or the end), briefly.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = ws.next().await {
                if let Message::Close(_) = m {
                    break;
                }
            }
        })
        .await;
    }

    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends a request and reads frames (applying events) until its reply.
    async fn request(
        &mut self,
        ws: &mut Ws,
        sh: &Shared,
        id: u64,
        text: String,
    ) -> Result<Reply, Lost> {
        if ws.send(Message::Text(text.into())).await.is_err() {
            return Err(Lost::Closed);
        }
        let deadline = Instant::now() + REPLY_TIMEOUT;
        loop {
            let m = match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(m) => m,
                Err(_) => return Err(Lost::Stalled),
            };
            if let Some(r) = self.on_message(sh, m)?
                && r.0 == id
            {
                return Ok(r.1);
            }
        }
    }

    /// Handles one message from the socket: events are checked, a reconnect hint noted; a
    /// reply is returned with its id.
    fn on_message(
        &mut self,
        sh: &Shared,
        m: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<Option<(u64, Reply)>, Lost> {
        let text = match m {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(f))) => {
                if let Some(f) = f {
                    sh.close_code(u16::from(f.code));
                }
                return Err(Lost::Closed);
            }
            Some(Ok(_)) => return Ok(None),
            Some(Err(_)) | None => return Err(Lost::Closed),
        };
        let Ok(f) = serde_json::from_str::<In>(text.as_str()) else {
            sh.churn.bad_frames.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        if let Some(ok) = f.ok {
            let Some(id) = f.id else { return Ok(None) };
            return Ok(Some((
                id,
                Reply {
                    ok,
                    code: f.error.map(|e| e.code.into_owned()).unwrap_or_default(),
                    seq: f.seq.unwrap_or(0),
                    epoch: f.epoch.map(|e| e.into_owned()).unwrap_or_default(),
                    recovered: f.recovered,
                },
            )));
        }
        match f.ty.as_deref() {
            Some("message") => self.on_event(sh, &f),
            Some("reconnect") => {
                sh.churn.drain_hints.fetch_add(1, Ordering::Relaxed);
                self.hint = Some(f.url.as_deref().and_then(|u| sh.url_index(u)));
            }
            _ => {}
        }
        Ok(None)
    }

    /// Checks an event against the room's position: one gap-free order within an epoch.
    fn on_event(&mut self, sh: &Shared, f: &In) {
        let c = &sh.churn;
        c.deliveries.fetch_add(1, Ordering::Relaxed);
        let (Some(room), Some(epoch), Some(seq)) = (
            f.room.as_deref().and_then(|r| sh.room_index(r)),
            f.epoch.as_deref(),
            f.seq,
        ) else {
            c.bad_frames.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(pos) = self.rooms.iter_mut().find(|p| p.room == room && p.joined) else {
            c.stray_events.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(room = %sh.rooms[room], seq, "soak client: event of a room it is not in");
            return;
        };
        if pos.loose {
            pos.loose = false;
            pos.epoch = Some(epoch.to_string());
            pos.last = seq;
            return;
        }
        match &pos.epoch {
            Some(e) if e == epoch => {
                if seq == pos.last + 1 {
                    pos.last = seq;
                } else if seq <= pos.last {
                    c.duplicates.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(room = %sh.rooms[room], seq, last = pos.last, "soak client: duplicate");
                } else {
                    c.gaps.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(room = %sh.rooms[room], seq, last = pos.last, "soak client: gap");
                    pos.last = seq;
                }
            }
            _ => {
                c.epoch_changes.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(room = %sh.rooms[room], epoch, seq, "soak client: room restarted in a new epoch");
                if seq != 1 {
                    c.gaps.fetch_add(1, Ordering::Relaxed);
                }
                pos.epoch = Some(epoch.to_string());
                pos.last = seq;
            }
        }
    }
}
