//! Room shards: the tasks that drive the routing state machine and do its I/O.
//!
//! Rooms are spread over N shards by a hash of the room name; each shard is one task on the
//! node's core runtime that owns a [`Router`] for its rooms, so room work runs in parallel
//! without locks and a room's events are handled in one order. A shard takes [`Input`]s from a
//! bounded queue (connection actors `try_send` and turn a full queue into `unavailable`; the
//! internode reader awaits, which pushes back on the peer), steps the router, and carries out
//! the actions at once: replies, history and events for local connections are collected in a
//! [`Batch`] and handed to the connections' worker threads once per step batch (`delivery`; an
//! event's WebSocket frame is built here once per room message and shared by every subscriber
//! on this node), messages for other nodes go to the [`PeerSink`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use crate::conn::{ConnHandle, JoinDone, reply_frame};
use crate::delivery::{Batch, Workers};
use crate::ids::{NodeId, RoomId};
use crate::metrics as m;
use crate::protocol::CloseReason;
use crate::protocol::encode::Reply;
use crate::routing::hash::shard_of;
use crate::routing::{Action, Input, PeerMsg, Router, RouterConfig, RouterStats};
use crate::socket::frame;
use crate::socket::outbox::{Frame, FrameKind};

/// Where a shard sends messages for other nodes (the internode layer; nothing on one node).
pub trait PeerSink: Send + Sync + 'static {
    /// Queues `msg` for `to` without waiting. Loss is allowed (the link is then reset and the
    /// routing protocol repairs it); reordering is not.
    fn send(&self, to: &NodeId, msg: PeerMsg);
}

/// The sink of a node that is alone: it never has peers to send to.
pub struct NoPeers;

impl PeerSink for NoPeers {
    fn send(&self, to: &NodeId, msg: PeerMsg) {
        tracing::warn!(peer = %to, kind = msg.kind(), "no internode link; message dropped");
    }
}

/// Inputs waiting per shard at most. Past it, client requests get `unavailable`.
pub const SHARD_QUEUE: usize = 16 * 1024;
/// How often shards tick (history expiry, request time-outs, metrics).
const TICK: Duration = Duration::from_millis(500);
/// Inputs handled per wake-up before the shard yields.
const BATCH: usize = 256;

/// What a shard's queue carries: one input, or every message one read from a peer link brought
/// for this shard (handed over in one queue entry, stepped in order).
pub enum ShardInput {
    One(Input<ConnHandle>),
    Peer {
        from: NodeId,
        msgs: Vec<PeerMsg>,
    },
    /// Reads the shard's router (for listings that span shards: `Shards::local_rooms`).
    Inspect(Inspector),
}

/// A read of a shard's router, run on the shard.
pub type Inspector = Box<dyn FnOnce(&Router<ConnHandle>) + Send>;

/// Handles to all shards of the node. Cheap to clone.
#[derive(Clone)]
pub struct Shards {
    txs: Arc<[mpsc::Sender<ShardInput>]>,
    /// Rooms each shard owns, as of its last step (drain waits for zero).
    owned: Arc<[AtomicUsize]>,
    /// Handoffs each shard made that their receiver has not confirmed (drain waits for zero).
    unconfirmed: Arc<[AtomicUsize]>,
    /// Owned rooms each shard has with fewer synced replicas than configured (last tick).
    under: Arc<[AtomicUsize]>,
    /// Replica copies each shard holds (last tick).
    copies: Arc<[AtomicUsize]>,
    /// Whether the shards have a quorum (shard 0's view; every shard gets the same views).
    quorum: Arc<std::sync::atomic::AtomicBool>,
    rt: tokio::runtime::Handle,
}

impl Shards {
    /// Spawns `n` shards on `rt`.
    pub fn start(
        n: usize,
        me: NodeId,
        cfg: RouterConfig,
        rt: &tokio::runtime::Handle,
        peers: Arc<dyn PeerSink>,
        workers: Arc<Workers>,
    ) -> Shards {
        let mut txs = Vec::with_capacity(n);
        let owned: Arc<[AtomicUsize]> = (0..n.max(1)).map(|_| AtomicUsize::new(0)).collect();
        let unconfirmed: Arc<[AtomicUsize]> = (0..n.max(1)).map(|_| AtomicUsize::new(0)).collect();
        let under: Arc<[AtomicUsize]> = (0..n.max(1)).map(|_| AtomicUsize::new(0)).collect();
        let copies: Arc<[AtomicUsize]> = (0..n.max(1)).map(|_| AtomicUsize::new(0)).collect();
        let quorum = Arc::new(std::sync::atomic::AtomicBool::new(true));
        for i in 0..n.max(1) {
            let (tx, rx) = mpsc::channel(SHARD_QUEUE);
            let router = Router::new(me.clone(), cfg);
            let gauges = Gauges {
                idx: i,
                owned: owned.clone(),
                unconfirmed: unconfirmed.clone(),
                under: under.clone(),
                copies: copies.clone(),
                quorum: quorum.clone(),
            };
            rt.spawn(run_shard(
                router,
                rx,
                peers.clone(),
                workers.clone(),
                gauges,
            ));
            txs.push(tx);
        }
        Shards {
            txs: txs.into(),
            owned,
            unconfirmed,
            under,
            copies,
            quorum,
            rt: rt.clone(),
        }
    }

    pub fn len(&self) -> usize {
        self.txs.len()
    }

    /// Rooms this node owns now (summed over shards).
    pub fn owned_rooms(&self) -> usize {
        self.owned.iter().map(|a| a.load(Ordering::Acquire)).sum()
    }

    /// Owned rooms with fewer synced replicas than configured (as of the last tick).
    pub fn under_replicated(&self) -> usize {
        self.under.iter().map(|a| a.load(Ordering::Acquire)).sum()
    }

    /// Whether this node sees a majority of the cluster's stable membership (and sequences).
    pub fn has_quorum(&self) -> bool {
        self.quorum.load(Ordering::Acquire)
    }

    /// Copies of other nodes' rooms held here (as of the last tick).
    pub fn replica_copies(&self) -> usize {
        self.copies.iter().map(|a| a.load(Ordering::Acquire)).sum()
    }

    /// Handoffs of this node not yet confirmed by their new owners (summed over shards).
    pub fn unconfirmed_handoffs(&self) -> usize {
        self.unconfirmed
            .iter()
            .map(|a| a.load(Ordering::Acquire))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.txs.is_empty()
    }

    /// Inputs waiting in the shards' queues now (summed over shards).
    pub fn queued(&self) -> usize {
        self.txs
            .iter()
            .map(|tx| tx.max_capacity() - tx.capacity())
            .sum()
    }

    fn shard(&self, room: &RoomId) -> &mpsc::Sender<ShardInput> {
        &self.txs[shard_of(room, self.txs.len())]
    }

    fn room_of(input: &Input<ConnHandle>) -> Option<&RoomId> {
        match input {
            Input::Join { room, .. }
            | Input::Leave { room, .. }
            | Input::Publish { room, .. }
            | Input::History { room, .. }
            | Input::Presence { room, .. } => Some(room),
            Input::Peer { msg, .. } => Some(msg.room()),
            Input::Members(_)
            | Input::View { .. }
            | Input::PeerReset(_)
            | Input::PeerRestarted(_)
            | Input::Tick => None,
        }
    }

    /// Queues a room input on its shard without waiting; gives it back if the shard is full.
    pub fn try_send(&self, input: Input<ConnHandle>) -> Result<(), Box<Input<ConnHandle>>> {
        let Some(room) = Self::room_of(&input) else {
            return Err(Box::new(input));
        };
        self.shard(room)
            .try_send(ShardInput::One(input))
            .map_err(|e| {
                m::shard_queue_full();
                let (mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i)) = e;
                let ShardInput::One(i) = i else {
                    unreachable!("sent as One")
                };
                Box::new(i)
            })
    }

    /// Queues a room input that must not be lost (a gone connection's leave): if the shard is
    /// full, a task waits for room. Bounded by the number of connections and their rooms.
    pub fn send_reliable(&self, input: Input<ConnHandle>) {
        if let Err(input) = self.try_send(input) {
            let input = *input;
            if let Some(room) = Self::room_of(&input) {
                let tx = self.shard(room).clone();
                self.rt.spawn(async move {
                    let _ = tx.send(ShardInput::One(input)).await;
                });
            }
        }
    }

    /// Queues a room input, waiting while its shard is full (internode receive path).
    pub async fn send(&self, input: Input<ConnHandle>) {
        if let Some(room) = Self::room_of(&input) {
            let _ = self.shard(room).send(ShardInput::One(input)).await;
        }
    }

    /// Hands the messages one read from `from` brought (in arrival order) to their shards: one
    /// queue entry per shard, waiting while a shard is full. Empties `msgs`.
    pub async fn send_peer_batch(&self, from: &NodeId, msgs: &mut Vec<PeerMsg>) {
        let n = self.txs.len();
        if n == 1 || msgs.len() == 1 {
            let idx = shard_of(msgs[0].room(), n);
            if msgs.iter().all(|m| shard_of(m.room(), n) == idx) {
                let batch = ShardInput::Peer {
                    from: from.clone(),
                    msgs: std::mem::take(msgs),
                };
                let _ = self.txs[idx].send(batch).await;
                return;
            }
        }
        let mut per: Vec<Vec<PeerMsg>> = (0..n).map(|_| Vec::new()).collect();
        for m in msgs.drain(..) {
            per[shard_of(m.room(), n)].push(m);
        }
        for (tx, batch) in self.txs.iter().zip(per) {
            if !batch.is_empty() {
                let input = ShardInput::Peer {
                    from: from.clone(),
                    msgs: batch,
                };
                let _ = tx.send(input).await;
            }
        }
    }

    /// This node's rooms with local subscribers (all shards), as `Router::local_rooms` gives
    /// them, merged in name order.
    pub async fn local_rooms(&self, prefix: &str, after: &str, limit: usize) -> Vec<(RoomId, u64)> {
        let mut all = Vec::new();
        for tx in self.txs.iter() {
            let (otx, orx) = tokio::sync::oneshot::channel();
            let (p, a) = (prefix.to_string(), after.to_string());
            let ask = ShardInput::Inspect(Box::new(move |r: &Router<ConnHandle>| {
                let _ = otx.send(r.local_rooms(&p, &a, limit));
            }));
            if tx.send(ask).await.is_ok()
                && let Ok(v) = orx.await
            {
                all.extend(v);
            }
        }
        all.sort();
        all.truncate(limit);
        all
    }

    /// Sends a node-wide input (membership, link reset) to every shard, waiting for room.
    pub async fn broadcast(&self, make: impl Fn() -> Input<ConnHandle>) {
        for tx in self.txs.iter() {
            let _ = tx.send(ShardInput::One(make())).await;
        }
    }
}

/// Where a shard publishes the counts drain waits on.
struct Gauges {
    idx: usize,
    owned: Arc<[AtomicUsize]>,
    unconfirmed: Arc<[AtomicUsize]>,
    under: Arc<[AtomicUsize]>,
    copies: Arc<[AtomicUsize]>,
    quorum: Arc<std::sync::atomic::AtomicBool>,
}

async fn run_shard(
    mut router: Router<ConnHandle>,
    mut rx: mpsc::Receiver<ShardInput>,
    peers: Arc<dyn PeerSink>,
    workers: Arc<Workers>,
    gauges: Gauges,
) {
    let idx = gauges.idx;
    let mut out: Vec<Action<ConnHandle>> = Vec::with_capacity(64);
    let mut batch = Batch::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reported = Reported::default();
    tracing::debug!(shard = idx, "room shard started");
    loop {
        tokio::select! {
            input = rx.recv() => {
                let Some(input) = input else { break };
                let mut n = take(&mut router, input, &mut out, &mut batch, &*peers);
                while n < BATCH {
                    match rx.try_recv() {
                        Ok(input) => n += take(&mut router, input, &mut out, &mut batch, &*peers),
                        Err(_) => break,
                    }
                }
            }
            _ = tick.tick() => {
                step(&mut router, Input::Tick, &mut out, &mut batch, &*peers);
                reported.export(&router);
                gauges.under[idx].store(reported.under, Ordering::Release);
                gauges.copies[idx].store(reported.copies, Ordering::Release);
                if idx == 0 {
                    // Node-wide facts, the same in every shard: exported once.
                    let q = router.has_quorum();
                    gauges.quorum.store(q, Ordering::Release);
                    m::gauge_set(m::QUORUM, if q { 1.0 } else { 0.0 });
                    let losses = router.stats().quorum_losses;
                    m::add(m::QUORUM_LOSSES, losses - reported.quorum_losses);
                    reported.quorum_losses = losses;
                }
            }
        }
        // Everything this step batch produced for local connections, one handoff per worker.
        batch.flush(&workers);
        let owned = router.owned_rooms();
        if router.take_replication_changed() || gauges.owned[idx].load(Ordering::Relaxed) != owned {
            // Fresh for `/cluster` (tests and chaos scripts wait on it between failures); the
            // Prometheus gauges follow on the next tick.
            gauges.under[idx].store(router.under_replicated(), Ordering::Release);
            gauges.copies[idx].store(router.replica_copies(), Ordering::Release);
        }
        gauges.owned[idx].store(owned, Ordering::Release);
        gauges.unconfirmed[idx].store(router.unconfirmed_handoffs(), Ordering::Release);
    }
    tracing::debug!(shard = idx, "room shard stopped");
}

/// Steps the router through one queue entry; returns the number of inputs it held.
fn take(
    router: &mut Router<ConnHandle>,
    input: ShardInput,
    out: &mut Vec<Action<ConnHandle>>,
    batch: &mut Batch,
    peers: &dyn PeerSink,
) -> usize {
    match input {
        ShardInput::One(input) => {
            step(router, input, out, batch, peers);
            1
        }
        ShardInput::Peer { from, msgs } => {
            let n = msgs.len();
            for msg in &msgs {
                tracing::trace!(%from, kind = msg.kind(), room = %msg.room(), "peer message in");
            }
            // One read's messages in one router batch: a replica acknowledges them per room.
            let inputs = msgs.into_iter().map(|msg| Input::Peer {
                from: from.clone(),
                msg,
            });
            router.step_batch(crate::now_us(), inputs, out);
            carry_out(out, batch, peers);
            n
        }
        ShardInput::Inspect(f) => {
            f(router);
            1
        }
    }
}

/// One router step, its actions carried out at once.
fn step(
    router: &mut Router<ConnHandle>,
    input: Input<ConnHandle>,
    out: &mut Vec<Action<ConnHandle>>,
    batch: &mut Batch,
    peers: &dyn PeerSink,
) {
    router.step(crate::now_us(), input, out);
    carry_out(out, batch, peers);
}

/// Carries out a router's actions, in order (each action carries what it needs: a `Fanout`
/// names its subscribers).
fn carry_out(out: &mut Vec<Action<ConnHandle>>, batch: &mut Batch, peers: &dyn PeerSink) {
    for action in out.drain(..) {
        match action {
            Action::Reply { to, req, reply } => {
                if matches!(reply, Reply::Published { .. }) {
                    m::published();
                }
                if let Some(slot) = &to.reply {
                    // A server API request: no socket, one reply.
                    slot.send(reply);
                    continue;
                }
                batch.frame(&to, reply_frame(&req, &reply));
                if let Reply::Joined {
                    room,
                    recovered: Some(_),
                    ..
                } = reply
                {
                    // A resume: its replay follows in this batch; the connection paces the next.
                    // One message per resume the connection itself sent, and it sends one at a
                    // time (`session`'s pacing): bounded.
                    if let Some(c) = &to.conn {
                        c.do_send(JoinDone { room, ok: true });
                    }
                }
            }
            Action::Deliver { to, frame, .. } => {
                let bytes = frame::text(&frame);
                batch.frame(
                    &to,
                    Frame {
                        bytes,
                        kind: FrameKind::Replay,
                    },
                );
            }
            Action::Fanout {
                subs,
                frame,
                accepted_us,
            } => {
                // The event's WebSocket frame, built once for every subscriber on this node.
                let bytes = frame::text(&frame);
                batch.fanout(&subs, &bytes, accepted_us);
            }
            Action::JoinFailed { to, room } => {
                // One message per failed join the connection itself asked for: bounded.
                if let Some(c) = &to.conn {
                    c.do_send(JoinDone { room, ok: false });
                }
            }
            Action::Evict { to, .. } => {
                batch.close(&to, CloseReason::Gap);
            }
            Action::Send { to, msg } => {
                tracing::trace!(%to, kind = msg.kind(), room = %msg.room(), "peer message out");
                peers.send(&to, msg)
            }
        }
    }
}

/// What a shard last added to the node-wide metrics, to export deltas.
#[derive(Default)]
struct Reported {
    rooms: usize,
    quorum_losses: u64,
    under: usize,
    copies: usize,
    presence: usize,
    tables: [usize; 8],
    stats: RouterStats,
}

impl Reported {
    fn export(&mut self, router: &Router<ConnHandle>) {
        let rooms = router.owned_rooms();
        if rooms != self.rooms {
            m::rooms(rooms as f64 - self.rooms as f64);
            self.rooms = rooms;
        }
        let under = router.under_replicated();
        if under != self.under {
            m::gauge_add(m::UNDER_REPLICATED, under as f64 - self.under as f64);
            self.under = under;
        }
        let copies = router.replica_copies();
        if copies != self.copies {
            m::gauge_add(m::REPLICA_COPIES, copies as f64 - self.copies as f64);
            self.copies = copies;
        }
        let presence = router.presence_entries();
        if presence != self.presence {
            m::gauge_add(m::PRESENCE_ENTRIES, presence as f64 - self.presence as f64);
            self.presence = presence;
        }
        for (i, (table, n)) in router.table_sizes().into_iter().enumerate() {
            m::router_entries(table, n as f64 - self.tables[i] as f64);
            self.tables[i] = n;
        }
        let s = router.stats();
        m::add(
            m::PRESENCE_REFUSED,
            s.presence_refused - self.stats.presence_refused,
        );
        m::rooms_refused("node_full", s.rooms_refused - self.stats.rooms_refused);
        m::add(m::FEED_GAPS, s.gaps - self.stats.gaps);
        m::add(m::GAP_EVICTIONS, s.evictions - self.stats.evictions);
        m::add(m::OWNER_CHANGES, s.owner_changes - self.stats.owner_changes);
        m::add(m::FRESH_EPOCHS, s.fresh_epochs - self.stats.fresh_epochs);
        let (now, before) = (s, self.stats);
        for (event, n, b) in [
            ("sent", now.handoffs_sent, before.handoffs_sent),
            (
                "confirmed",
                now.handoffs_confirmed,
                before.handoffs_confirmed,
            ),
            ("resent", now.handoffs_resent, before.handoffs_resent),
            ("conflict", now.handoff_conflicts, before.handoff_conflicts),
        ] {
            m::add_labeled(m::HANDOFFS, event, n - b);
        }
        m::add(m::REQUEST_RETRIES, s.retries - self.stats.retries);
        for (event, n, b) in [
            ("sync", now.replica_syncs, before.replica_syncs),
            ("promotion", now.promotions, before.promotions),
            ("conflict", now.replica_conflicts, before.replica_conflicts),
        ] {
            m::add_labeled(m::REPLICATION, event, n - b);
        }
        m::add(
            m::DUPLICATE_PUBLISHES,
            s.duplicate_publishes - self.stats.duplicate_publishes,
        );
        self.stats = s;
    }
}
