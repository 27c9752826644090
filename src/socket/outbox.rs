//! A connection's bounded outbound queue of complete WebSocket frames.
//!
//! Everything a client receives — welcome, replies, history, live events, pings, the close
//! frame — goes through one [`Outbox`], so frames leave in the order they were queued by each
//! producer (the connection actor and the worker's delivery batches). Frames are queued
//! already encoded ([`super::frame`]): a room event's frame is one shared `Bytes` for every
//! subscriber on the node, so a push is a reference count and a queue slot.
//!
//! The queue is bounded twice: by frames and by bytes (one packed atomic counter). A push that
//! would exceed either bound does not wait and does not drop silently: it closes the
//! connection as a *slow consumer* (1013), counts it, and the client can resume with `since`.
//! The consumer is the connection's writer ([`super::writer`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use bytestring::ByteString;
use futures_util::task::AtomicWaker;
use std::collections::VecDeque;
use std::sync::Mutex;

use super::frame;
use crate::metrics as m;
use crate::protocol::CloseReason;

/// One outbound frame, encoded.
#[derive(Debug, Clone)]
pub struct Frame {
    /// The complete WebSocket frame (header and payload).
    pub bytes: Bytes,
    pub kind: FrameKind,
}

impl Frame {
    fn cost(&self) -> usize {
        self.bytes.len()
    }
}

/// What a frame is, for the delivery metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A reply, the welcome, a notice, a ping or pong: not a delivery.
    Control,
    /// A live event, accepted by the room's owner at this unix time (µs): counted as a
    /// delivery and in the delivery latency histogram.
    Event { accepted_us: u64 },
    /// A history event replayed on a resume: counted as a delivery, not in the latency
    /// histogram (it was published long ago).
    Replay,
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The push overflowed a bound; the connection is now closing as a slow consumer.
    Overflow,
    /// The connection is closing already.
    Closed,
}

struct Shared {
    /// The frames, in push order. Lock-free: producers (room shards, the actor) never block
    /// each other or the writer.
    /// A plain locked queue: producers and the writer are almost always on the same worker
    /// thread (uncontended), the writer takes everything queued under one lock, and an empty
    /// queue holds no memory (the writer swaps the buffer out), which matters for idle
    /// connections.
    queue: Mutex<VecDeque<Frame>>,
    /// Frames and bytes queued, packed in one word so a push or pop is one atomic operation:
    /// count in the high 24 bits, bytes in the low 40.
    load: AtomicU64,
    max_messages: usize,
    max_bytes: usize,
    /// 0 while open, else a `CloseReason` code + 1.
    close: AtomicU8,
    /// The writer's waker, and whether it is parked (so producers wake it only then).
    waker: AtomicWaker,
    parked: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        // A plain load first: under load the writer is busy, and the swap (a locked
        // instruction) is skipped.
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            self.waker.wake();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Frame>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pop(&self) -> Option<Frame> {
        let f = self.lock().pop_front()?;
        self.load.fetch_sub(pack(1, f.cost()), Ordering::AcqRel);
        Some(f)
    }

    fn is_closing(&self) -> bool {
        self.close.load(Ordering::Acquire) != 0
    }

    /// Ready when a frame is queued or the outbox is closing.
    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.waker.register(cx.waker());
        self.parked.store(true, Ordering::SeqCst);
        if !self.lock().is_empty() || self.is_closing() {
            self.parked.store(false, Ordering::SeqCst);
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }

    /// Ready once the outbox is closing (queued frames do not count).
    fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_closing() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        self.parked.store(true, Ordering::SeqCst);
        if self.is_closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

/// The producer side of a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The consumer side, owned by the connection's writer.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

impl OutboxReceiver {
    /// Takes the oldest queued frame.
    pub fn pop(&self) -> Option<Frame> {
        self.shared.pop()
    }

    /// Takes up to `max` queued frames, oldest first, under one lock, and passes each to `f`.
    pub fn take(&self, max: usize, mut f: impl FnMut(Frame)) {
        let sh = &*self.shared;
        let (n, bytes) = {
            let mut q = sh.lock();
            let n = q.len().min(max);
            let mut bytes = 0;
            if n == q.len() {
                // All of it: swap the buffer out, so an idle connection keeps no queue memory.
                for fr in std::mem::take(&mut *q) {
                    bytes += fr.cost();
                    f(fr);
                }
            } else {
                for fr in q.drain(..n) {
                    bytes += fr.cost();
                    f(fr);
                }
            }
            (n, bytes)
        };
        if n > 0 {
            sh.load.fetch_sub(pack(n, bytes), Ordering::AcqRel);
        }
    }

    /// The reason the connection is closing, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.shared.close.load(Ordering::Acquire))
    }

    /// Ready when a frame is queued or the outbox is closing.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_ready(cx)
    }

    /// Ready once the outbox is closing.
    pub fn poll_closing(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.shared.poll_closing(cx)
    }

    /// Marks the outbox closed because the socket is gone (nothing more can be written), and
    /// drops what is queued. Producers see `Closed` from now on.
    pub fn socket_gone(&self) {
        let _ = self.shared.close.compare_exchange(
            0,
            CloseReason::Normal as u8 + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        while self.shared.pop().is_some() {}
    }
}

/// Creates an outbox bounded by `max_messages` and `max_bytes`.
pub fn outbox(max_messages: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        load: AtomicU64::new(0),
        max_messages: max_messages.clamp(1, MAX_COUNT),
        max_bytes: max_bytes.min(MAX_BYTES),
        close: AtomicU8::new(0),
        waker: AtomicWaker::new(),
        parked: AtomicBool::new(false),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReceiver { shared },
    )
}

impl Outbox {
    /// Queues a frame without waiting. On overflow the connection is closed as a slow consumer.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        let sh = &*self.shared;
        if sh.is_closing() {
            return Err(PushError::Closed);
        }
        let cost = frame.cost().min(MAX_BYTES);
        let (n, before) = unpack(sh.load.fetch_add(pack(1, cost), Ordering::AcqRel));
        // One frame larger than the byte bound still goes when the queue is empty (a big
        // history reply on an idle connection).
        if n >= sh.max_messages || (before + cost > sh.max_bytes && before > 0) {
            sh.load.fetch_sub(pack(1, cost), Ordering::AcqRel);
            self.overflow();
            return Err(PushError::Overflow);
        }
        sh.lock().push_back(frame);
        sh.wake();
        Ok(())
    }

    /// Queues a text frame carrying `text` (encoded here, for this connection only).
    pub fn text(&self, text: &ByteString, kind: FrameKind) -> Result<(), PushError> {
        self.push(Frame {
            bytes: frame::text(text),
            kind,
        })
    }

    /// Queues an encoded frame shared with other connections (a room event).
    pub fn shared(&self, bytes: Bytes, kind: FrameKind) -> Result<(), PushError> {
        self.push(Frame { bytes, kind })
    }

    fn overflow(&self) {
        if self.close(CloseReason::SlowConsumer) {
            m::slow_consumer_disconnect();
        }
    }

    /// Starts closing the connection with `reason`. The first reason wins; returns true if this
    /// call set it. The writer then sends what is still queued (all of it is discarded for a
    /// slow consumer) and the close frame.
    pub fn close(&self, reason: CloseReason) -> bool {
        let set = self
            .shared
            .close
            .compare_exchange(0, reason as u8 + 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if set {
            self.shared.parked.store(false, Ordering::SeqCst);
            self.shared.waker.wake();
        }
        set
    }

    /// The reason the connection is closing, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.shared.close.load(Ordering::Acquire))
    }

    /// Frames and bytes queued now (the node's queue depth gauges).
    pub fn queued(&self) -> (usize, usize) {
        unpack(self.shared.load.load(Ordering::Acquire))
    }

    /// Bytes queued now (for tests and diagnostics).
    pub fn queued_bytes(&self) -> usize {
        unpack(self.shared.load.load(Ordering::Acquire)).1
    }

    /// Room left before the bounds: `(frames, bytes)`.
    pub fn room_left(&self) -> (usize, usize) {
        let (n, b) = unpack(self.shared.load.load(Ordering::Acquire));
        (
            self.shared.max_messages.saturating_sub(n),
            self.shared.max_bytes.saturating_sub(b),
        )
    }
}

const BYTES_BITS: u32 = 40;
const MAX_BYTES: usize = (1 << BYTES_BITS) - 1;
const MAX_COUNT: usize = (1 << (64 - BYTES_BITS)) - 1;

fn pack(count: usize, bytes: usize) -> u64 {
    ((count as u64) << BYTES_BITS) | bytes as u64
}

fn unpack(v: u64) -> (usize, usize) {
    ((v >> BYTES_BITS) as usize, (v & MAX_BYTES as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame {
            bytes: Bytes::copy_from_slice(s.as_bytes()),
            kind: FrameKind::Control,
        }
    }

    #[test]
    fn bounded_by_messages() {
        let (o, _rx) = outbox(2, 1 << 20);
        assert!(o.push(text("a")).is_ok());
        assert!(o.push(text("b")).is_ok());
        assert_eq!(o.push(text("c")), Err(PushError::Overflow));
        assert_eq!(o.closing(), Some(CloseReason::SlowConsumer));
        assert_eq!(o.push(text("d")), Err(PushError::Closed));
    }

    #[test]
    fn bounded_by_bytes() {
        let (o, _rx) = outbox(100, 10);
        assert!(o.push(text("12345678")).is_ok());
        assert_eq!(o.queued_bytes(), 8);
        assert_eq!(o.push(text("123")), Err(PushError::Overflow));
        assert_eq!(o.closing(), Some(CloseReason::SlowConsumer));
    }

    #[test]
    fn one_frame_larger_than_the_byte_bound_still_goes_when_the_queue_is_empty() {
        // A single big history reply must not close an idle connection.
        let (o, _rx) = outbox(100, 4);
        assert!(o.push(text("0123456789")).is_ok());
    }

    #[test]
    fn first_close_reason_wins() {
        let (o, _rx) = outbox(10, 100);
        assert!(o.close(CloseReason::Shutdown));
        assert!(!o.close(CloseReason::SlowConsumer));
        assert_eq!(o.closing(), Some(CloseReason::Shutdown));
    }
}
