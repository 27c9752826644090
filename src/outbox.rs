//! A connection's bounded outbound queue and the writer task that drains it into the socket.
//!
//! Everything a client receives — welcome, replies, history, live events, pings, the close
//! frame — goes through one [`Outbox`], so frames leave in the order they were queued by each
//! producer (the connection actor and the room shards). The queue is bounded twice: by
//! messages (the channel's capacity) and by bytes (a shared counter). A push that would exceed
//! either bound does not wait and does not drop silently: it closes the connection as a *slow
//! consumer* (1013), counts it, and the client can resume with `since`.
//!
//! The writer task owns the actix-ws `Session`. It writes frames in batches (everything
//! already queued, then one flush). When the outbox is closed it sends the close frame; if the
//! client does not take it within the grace period (it stopped reading), the HTTP body is
//! aborted through [`AbortSignal`], which makes actix drop the TCP connection.
//!
//! This module sits below both the connection actor (`session`) and the room shards (`rooms`):
//! it also defines what a shard holds of a connection ([`ConnHandle`]) and the messages the
//! node sends to connection actors, so neither of those layers reaches up into the other.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::web::Bytes;
use bytestring::ByteString;
use crossbeam_queue::SegQueue;
use futures_util::SinkExt;
use futures_util::task::AtomicWaker;
use tokio::sync::Notify;

use actix::{Message, Recipient};

use crate::ids::RoomId;
use crate::metrics as m;
use crate::protocol::encode::{self, Reply};
use crate::protocol::{CloseReason, ErrorCode, ReqId};

/// One outbound frame.
#[derive(Debug)]
pub enum Frame {
    /// A text frame.
    Text { text: ByteString, kind: TextKind },
    /// A WebSocket ping (heartbeat).
    Ping,
    /// A WebSocket pong answering a client's ping.
    Pong(Bytes),
}

impl Frame {
    fn cost(&self) -> usize {
        match self {
            Frame::Text { text, .. } => text.len(),
            Frame::Ping => 2,
            Frame::Pong(b) => b.len() + 2,
        }
    }
}

/// What a text frame is, for the delivery metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextKind {
    /// A reply, the welcome, a notice: not a delivery.
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
    queue: SegQueue<Frame>,
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

    fn pop(&self) -> Option<Frame> {
        let f = self.queue.pop()?;
        self.load.fetch_sub(pack(1, f.cost()), Ordering::AcqRel);
        Some(f)
    }

    fn is_closing(&self) -> bool {
        self.close.load(Ordering::Acquire) != 0
    }

    /// Waits until a frame is queued or the outbox is closing.
    async fn ready(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            self.parked.store(true, Ordering::SeqCst);
            if !self.queue.is_empty() || self.is_closing() {
                self.parked.store(false, Ordering::SeqCst);
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// The producer side of a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    shared: Arc<Shared>,
}

/// The consumer side, handed to [`run_writer`].
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

/// Creates an outbox bounded by `max_messages` and `max_bytes`.
pub fn outbox(max_messages: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        queue: SegQueue::new(),
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
        sh.queue.push(frame);
        sh.wake();
        Ok(())
    }

    /// Queues a text frame.
    pub fn text(&self, text: ByteString, kind: TextKind) -> Result<(), PushError> {
        self.push(Frame::Text { text, kind })
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

    /// Bytes queued now (for tests and diagnostics).
    pub fn queued_bytes(&self) -> usize {
        unpack(self.shared.load.load(Ordering::Acquire)).1
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

/// Makes actix drop a connection whose response body is still streaming (a client that stopped
/// reading cannot be reached by a close frame).
#[derive(Default)]
pub struct AbortSignal {
    aborted: AtomicBool,
    waker: AtomicWaker,
    /// Set when actix dropped the body (the connection is finished).
    finished: AtomicBool,
    finished_wake: Notify,
}

impl AbortSignal {
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Waits until the connection is finished (its body dropped by actix).
    async fn finished(&self) {
        loop {
            let n = self.finished_wake.notified();
            if self.finished.load(Ordering::Acquire) {
                return;
            }
            n.await;
        }
    }
}

/// The WebSocket response body, abortable.
pub struct AbortableBody {
    inner: BoxBody,
    signal: Arc<AbortSignal>,
}

impl AbortableBody {
    pub fn new(inner: BoxBody, signal: Arc<AbortSignal>) -> Self {
        AbortableBody { inner, signal }
    }
}

impl Drop for AbortableBody {
    fn drop(&mut self) {
        self.signal.finished.store(true, Ordering::Release);
        self.signal.finished_wake.notify_waiters();
    }
}

#[derive(Debug, thiserror::Error)]
#[error("connection aborted: the client stopped reading")]
struct Aborted;

impl MessageBody for AbortableBody {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> BodySize {
        self.inner.size()
    }

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.signal.waker.register(cx.waker());
        if self.signal.aborted.load(Ordering::Acquire) {
            return Poll::Ready(Some(Err(Box::new(Aborted))));
        }
        Pin::new(&mut self.inner).poll_next(cx)
    }
}

/// Frames written per flush at most (a bound on the work done between two checks for close).
const BATCH: usize = 256;

/// Drains the outbox into the socket until the connection closes. Runs on the connection's
/// worker thread (the session is bound to it).
pub async fn run_writer(
    mut session: actix_ws::Session,
    rx: OutboxReceiver,
    abort: Arc<AbortSignal>,
    grace: Duration,
    actor: actix::Recipient<CloseNow>,
) {
    let shared = rx.shared;
    let delivered = m::delivered_counter();
    let mut lat = m::LatencyBatch::default();
    loop {
        shared.ready().await;
        if shared.is_closing() {
            break;
        }
        // Write what is queued, then flush once; stop at once on close.
        let write = async {
            let now = crate::now_us();
            let mut n = 0usize;
            let mut events = 0u64;
            while n < BATCH {
                let Some(f) = shared.pop() else { break };
                let msg = match f {
                    Frame::Text { text, kind } => {
                        match kind {
                            TextKind::Event { accepted_us } => {
                                events += 1;
                                lat.add(now.saturating_sub(accepted_us));
                            }
                            TextKind::Replay => events += 1,
                            TextKind::Control => {}
                        }
                        actix_ws::Message::Text(text)
                    }
                    Frame::Ping => actix_ws::Message::Ping(Bytes::new()),
                    Frame::Pong(b) => actix_ws::Message::Pong(b),
                };
                session.feed(msg).await?;
                n += 1;
            }
            if events > 0 {
                delivered.increment(events);
            }
            session.flush().await
        };
        let result = tokio::select! {
            biased;
            _ = closing(&shared) => Ok(()),
            r = write => r,
        };
        lat.flush();
        if result.is_err() {
            // The socket is gone; nothing more can be written.
            let _ = shared.close.compare_exchange(
                0,
                CloseReason::Normal as u8 + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            while shared.pop().is_some() {}
            actor.do_send(CloseNow(CloseReason::Normal));
            return;
        }
    }
    // Closing. A slow consumer's queue is discarded (it is the problem); otherwise what is
    // queued (e.g. the error replies that led to the close) goes out before the close frame.
    // The client gets `grace` to take it all before the connection is cut.
    let reason =
        CloseReason::from_u8(shared.close.load(Ordering::Acquire)).unwrap_or(CloseReason::Normal);
    // The actor stops too (a no-op if it is the one that closed); one message per connection.
    actor.do_send(CloseNow(reason));
    let flush_and_close = async {
        if reason != CloseReason::SlowConsumer {
            while let Some(f) = shared.pop() {
                let msg = match f {
                    Frame::Text { text, .. } => actix_ws::Message::Text(text),
                    Frame::Ping | Frame::Pong(_) => continue,
                };
                if session.feed(msg).await.is_err() {
                    return;
                }
            }
        }
        let _ = session.close(Some(close_frame(reason))).await;
    };
    if tokio::time::timeout(grace, flush_and_close).await.is_ok() {
        // The close frame is queued; the body ends after it is written. If the client never
        // reads it, cut the connection after the grace period.
        let _ = tokio::time::timeout(grace, abort.finished()).await;
    }
    while shared.pop().is_some() {}
    abort.abort();
}

/// Resolves once the outbox is closing.
async fn closing(shared: &Shared) {
    std::future::poll_fn(|cx| {
        if shared.is_closing() {
            return Poll::Ready(());
        }
        shared.waker.register(cx.waker());
        if shared.is_closing() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

/// What the room shards hold for a local connection: where to write, and whom to tell when a
/// join failed.
#[derive(Clone)]
pub struct ConnHandle {
    pub outbox: Outbox,
    pub conn: Recipient<JoinFailed>,
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ConnHandle")
    }
}

/// Sent by a shard when a join did not succeed, so the connection forgets the room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct JoinFailed(pub RoomId);

/// Sent by the node to close a connection (shutdown, drain).
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseNow(pub CloseReason);

/// Writes a reply to `outbox`, counting errors by code.
pub fn send_reply(outbox: &Outbox, id: &ReqId, reply: &Reply) {
    if let Reply::Error { code, .. } = reply
        && *code != ErrorCode::RateLimited
    {
        // Rate-limit refusals are counted where they are decided.
        m::protocol_error(*code);
    }
    let _ = outbox.text(encode::reply(id, reply), TextKind::Control);
}

/// The WebSocket close frame for `reason`: its code and reason text.
fn close_frame(reason: CloseReason) -> actix_ws::CloseReason {
    actix_ws::CloseReason {
        code: actix_ws::CloseCode::from(reason.code()),
        description: Some(reason.as_str().to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame::Text {
            text: ByteString::from(s.to_string()),
            kind: TextKind::Control,
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
