//! Delivery batches: how the room shards hand frames to the connection worker threads.
//!
//! Room shards run on the core runtime; connections live on the HTTP worker threads. If a shard
//! pushed each frame into each connection's outbox itself, every delivery would wake a writer
//! on another thread — a cross-thread wake (and often a futex) per delivery. Instead a shard
//! collects everything one step batch produces for connections ([`Batch`]): replies, replayed
//! history, live events (one shared frame and the subscriber list, not one entry per
//! subscriber) and closes, grouped by the worker that owns each connection. At the end of the
//! step batch it hands each worker its part in one push and one wake ([`Workers`]). The
//! worker's drain task then queues the frames into its own connections' outboxes — a wake on
//! the same thread, at most once per connection per batch (a connection's writer is woken by
//! the first frame and runs only after the drain task yields) — what nats-server's
//! `flushClients` does.
//!
//! Order: a shard's batches reach a worker in the order it made them, and within a batch the
//! entries keep the order of the shard's actions, so a connection sees a room's frames in the
//! order the shard decided them (a join's reply before the events after it, and so on).

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;

use bytes::Bytes;
use crossbeam_queue::SegQueue;
use futures_util::task::AtomicWaker;

use crate::conn::{ConnHandle, WorkerId};
use crate::protocol::CloseReason;
use crate::routing::Subscribers;
use crate::socket::outbox::{Frame, FrameKind, Outbox};

/// One thing a shard asks a worker to do for its connections.
pub enum Delivery {
    /// Queue `frame` on one connection.
    Frame { to: Outbox, frame: Frame },
    /// Queue one shared event frame on every subscriber of this worker.
    Fanout {
        subs: Subscribers<ConnHandle>,
        frame: Bytes,
        accepted_us: u64,
    },
    /// Close one connection (after what was queued before).
    Close { to: Outbox, reason: CloseReason },
}

/// A worker's inbox: batches from every shard, drained by the worker's drain task.
#[derive(Default)]
struct Inbox {
    queue: SegQueue<Vec<Delivery>>,
    /// Batches pushed and not yet fully applied (a popped batch counts until its last
    /// delivery is in its outbox: shutdown waits for zero before it closes connections).
    unapplied: AtomicUsize,
    waker: AtomicWaker,
    parked: AtomicBool,
}

/// The connection workers of a node, as the shards see them.
pub struct Workers {
    inboxes: Box<[Inbox]>,
    /// The next index handed to a worker thread that registers.
    next: AtomicUsize,
    /// Distinguishes several `Workers` in one process (tests) in the thread-local slot.
    id: usize,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// (the `Workers` id, this thread's worker index) once this thread registered.
    static CURRENT: Cell<(usize, u16)> = const { Cell::new((0, 0)) };
}

impl Workers {
    /// Room for `n` worker threads.
    pub fn new(n: usize) -> Arc<Workers> {
        Arc::new(Workers {
            inboxes: (0..n.clamp(1, u16::MAX as usize))
                .map(|_| Inbox::default())
                .collect(),
            next: AtomicUsize::new(0),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        })
    }

    /// The worker index of the calling thread, registering it (and starting its drain task on
    /// this thread's runtime) on first use. Call it on a connection's worker thread, inside its
    /// runtime.
    pub fn current(self: &Arc<Self>) -> WorkerId {
        let (id, idx) = CURRENT.with(Cell::get);
        if id == self.id {
            return WorkerId(idx);
        }
        let idx = (self.next.fetch_add(1, Ordering::Relaxed) % self.inboxes.len()) as u16;
        CURRENT.with(|c| c.set((self.id, idx)));
        tokio::task::spawn_local(drain(self.clone(), idx));
        WorkerId(idx)
    }

    fn inbox(&self, w: WorkerId) -> &Inbox {
        &self.inboxes[usize::from(w.0) % self.inboxes.len()]
    }

    /// Batches handed to workers and not yet applied to their outboxes.
    pub fn pending(&self) -> usize {
        self.inboxes
            .iter()
            .map(|i| i.unapplied.load(Ordering::Acquire))
            .sum()
    }
}

/// What one shard step batch delivers, grouped by worker. Owned by a shard and reused.
#[derive(Default)]
pub struct Batch {
    per_worker: Vec<Vec<Delivery>>,
    /// Scratch: which workers a fan-out reaches.
    seen: Vec<bool>,
}

impl Batch {
    fn slot(&mut self, w: WorkerId) -> &mut Vec<Delivery> {
        let i = usize::from(w.0);
        if self.per_worker.len() <= i {
            self.per_worker.resize_with(i + 1, Vec::new);
        }
        &mut self.per_worker[i]
    }

    /// Queue `frame` on one connection.
    pub fn frame(&mut self, to: &ConnHandle, frame: Frame) {
        self.slot(to.worker).push(Delivery::Frame {
            to: to.outbox.clone(),
            frame,
        });
    }

    /// Close one connection after what is queued for it.
    pub fn close(&mut self, to: &ConnHandle, reason: CloseReason) {
        self.slot(to.worker).push(Delivery::Close {
            to: to.outbox.clone(),
            reason,
        });
    }

    /// Queue one shared event frame on every subscriber in `subs`: one entry per worker that
    /// has any of them.
    pub fn fanout(&mut self, subs: &Subscribers<ConnHandle>, frame: &Bytes, accepted_us: u64) {
        self.seen.clear();
        for (_, h) in subs.iter() {
            let i = usize::from(h.worker.0);
            if self.seen.len() <= i {
                self.seen.resize(i + 1, false);
            }
            if !self.seen[i] {
                self.seen[i] = true;
                self.slot(h.worker).push(Delivery::Fanout {
                    subs: subs.clone(),
                    frame: frame.clone(),
                    accepted_us,
                });
            }
        }
    }

    /// True if nothing is waiting to be handed over.
    pub fn is_empty(&self) -> bool {
        self.per_worker.iter().all(Vec::is_empty)
    }

    /// Hands each worker its part: one push and at most one wake per worker.
    pub fn flush(&mut self, workers: &Workers) {
        for (i, v) in self.per_worker.iter_mut().enumerate() {
            if v.is_empty() {
                continue;
            }
            let inbox = workers.inbox(WorkerId(i as u16));
            inbox.unapplied.fetch_add(1, Ordering::AcqRel);
            inbox.queue.push(std::mem::take(v));
            if inbox.parked.load(Ordering::SeqCst) && inbox.parked.swap(false, Ordering::SeqCst) {
                inbox.waker.wake();
            }
        }
    }

    /// Carries out the deliveries on the calling thread, whatever worker they are for (a node
    /// with no worker threads: tests, tools).
    pub fn apply_here(&mut self) {
        for (i, v) in self.per_worker.iter_mut().enumerate() {
            for d in v.drain(..) {
                apply(d, WorkerId(i as u16));
            }
        }
    }
}

/// A worker's drain task: queues every batch handed to this worker into its connections'
/// outboxes. Runs on the worker's thread for the life of the process.
async fn drain(workers: Arc<Workers>, idx: u16) {
    let me = WorkerId(idx);
    let inbox = workers.inbox(me);
    loop {
        std::future::poll_fn(|cx| {
            inbox.waker.register(cx.waker());
            inbox.parked.store(true, Ordering::SeqCst);
            if inbox.queue.is_empty() {
                Poll::Pending
            } else {
                inbox.parked.store(false, Ordering::SeqCst);
                Poll::Ready(())
            }
        })
        .await;
        // A bounded amount of work per wake-up, then yield so the connections' writers run.
        for _ in 0..64 {
            let Some(batch) = inbox.queue.pop() else {
                break;
            };
            for d in batch {
                apply(d, me);
            }
            inbox.unapplied.fetch_sub(1, Ordering::AcqRel);
        }
        tokio::task::yield_now().await;
    }
}

fn apply(d: Delivery, me: WorkerId) {
    match d {
        Delivery::Frame { to, frame } => {
            // A full outbox closes its connection (counted there).
            let _ = to.push(frame);
        }
        Delivery::Fanout {
            subs,
            frame,
            accepted_us,
        } => {
            let kind = FrameKind::Event { accepted_us };
            for (_, h) in subs.iter() {
                if h.worker == me {
                    let _ = h.outbox.shared(frame.clone(), kind);
                }
            }
        }
        Delivery::Close { to, reason } => {
            to.close(reason);
        }
    }
}
