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

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::web::Bytes;
use bytestring::ByteString;
use futures_util::SinkExt;
use futures_util::task::AtomicWaker;
use tokio::sync::{Notify, mpsc};

use super::CloseReason;
use crate::metrics as m;

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
    bytes: AtomicUsize,
    max_bytes: usize,
    /// 0 while open, else a `CloseReason` code + 1.
    close: AtomicU8,
    wake: Notify,
}

/// The producer side of a connection's outbound queue. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Frame>,
    shared: Arc<Shared>,
}

/// The consumer side, handed to [`run_writer`].
pub struct OutboxReceiver {
    rx: mpsc::Receiver<Frame>,
    shared: Arc<Shared>,
}

/// Creates an outbox bounded by `max_messages` and `max_bytes`.
pub fn outbox(max_messages: usize, max_bytes: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::channel(max_messages.max(1));
    let shared = Arc::new(Shared {
        bytes: AtomicUsize::new(0),
        max_bytes,
        close: AtomicU8::new(0),
        wake: Notify::new(),
    });
    (
        Outbox {
            tx,
            shared: shared.clone(),
        },
        OutboxReceiver { rx, shared },
    )
}

impl Outbox {
    /// Queues a frame without waiting. On overflow the connection is closed as a slow consumer.
    pub fn push(&self, frame: Frame) -> Result<(), PushError> {
        if self.shared.close.load(Ordering::Acquire) != 0 {
            return Err(PushError::Closed);
        }
        let cost = frame.cost();
        let before = self.shared.bytes.fetch_add(cost, Ordering::AcqRel);
        if before + cost > self.shared.max_bytes && before > 0 {
            self.shared.bytes.fetch_sub(cost, Ordering::AcqRel);
            self.overflow();
            return Err(PushError::Overflow);
        }
        match self.tx.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.shared.bytes.fetch_sub(cost, Ordering::AcqRel);
                self.overflow();
                Err(PushError::Overflow)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.shared.bytes.fetch_sub(cost, Ordering::AcqRel);
                Err(PushError::Closed)
            }
        }
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
            self.shared.wake.notify_one();
        }
        set
    }

    /// The reason the connection is closing, if it is.
    pub fn closing(&self) -> Option<CloseReason> {
        CloseReason::from_u8(self.shared.close.load(Ordering::Acquire))
    }

    /// Bytes queued now (for tests and diagnostics).
    pub fn queued_bytes(&self) -> usize {
        self.shared.bytes.load(Ordering::Acquire)
    }
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
    mut rx: OutboxReceiver,
    abort: Arc<AbortSignal>,
    grace: Duration,
    actor: actix::Recipient<super::CloseNow>,
) {
    let shared = rx.shared.clone();
    let latency = m::delivery_latency();
    let delivered = m::delivered_counter();
    let mut lat_buf: Vec<u64> = Vec::new();
    let mut replays: u64 = 0;
    'run: loop {
        if shared.close.load(Ordering::Acquire) != 0 {
            break;
        }
        let first = tokio::select! {
            biased;
            _ = shared.wake.notified() => continue 'run,
            f = rx.rx.recv() => match f {
                Some(f) => f,
                None => break 'run,
            },
        };
        // Write `first` and whatever else is queued, then flush once; stop at once on close.
        let write = async {
            let mut next = Some(first);
            let mut n = 0usize;
            while let Some(f) = next.take() {
                shared.bytes.fetch_sub(f.cost(), Ordering::AcqRel);
                let msg = match f {
                    Frame::Text { text, kind } => {
                        match kind {
                            TextKind::Event { accepted_us } => lat_buf.push(accepted_us),
                            TextKind::Replay => replays += 1,
                            TextKind::Control => {}
                        }
                        actix_ws::Message::Text(text)
                    }
                    Frame::Ping => actix_ws::Message::Ping(Bytes::new()),
                    Frame::Pong(b) => actix_ws::Message::Pong(b),
                };
                session.feed(msg).await?;
                n += 1;
                if n < BATCH {
                    next = rx.rx.try_recv().ok();
                }
            }
            session.flush().await
        };
        let result = tokio::select! {
            biased;
            _ = shared.wake.notified() => Ok(()),
            r = write => r,
        };
        if replays > 0 {
            delivered.increment(replays);
            replays = 0;
        }
        if !lat_buf.is_empty() {
            let now = crate::now_us();
            delivered.increment(lat_buf.len() as u64);
            for a in lat_buf.drain(..) {
                latency.record(now.saturating_sub(a) as f64 / 1e6);
            }
        }
        if result.is_err() {
            // The socket is gone; nothing more can be written.
            let _ = shared.close.compare_exchange(
                0,
                CloseReason::Normal as u8 + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            rx.rx.close();
            actor.do_send(super::CloseNow(CloseReason::Normal));
            return;
        }
    }
    // Closing. A slow consumer's queue is discarded (it is the problem); otherwise what is
    // queued (e.g. the error replies that led to the close) goes out before the close frame.
    // The client gets `grace` to take it all before the connection is cut.
    rx.rx.close();
    let reason =
        CloseReason::from_u8(shared.close.load(Ordering::Acquire)).unwrap_or(CloseReason::Normal);
    // The actor stops too (a no-op if it is the one that closed); one message per connection.
    actor.do_send(super::CloseNow(reason));
    let flush_and_close = async {
        if reason != CloseReason::SlowConsumer {
            while let Ok(f) = rx.rx.try_recv() {
                let msg = match f {
                    Frame::Text { text, .. } => actix_ws::Message::Text(text),
                    Frame::Ping | Frame::Pong(_) => continue,
                };
                if session.feed(msg).await.is_err() {
                    return;
                }
            }
        }
        let _ = session.close(Some(reason.to_ws())).await;
    };
    if tokio::time::timeout(grace, flush_and_close).await.is_ok() {
        // The close frame is queued; the body ends after it is written. If the client never
        // reads it, cut the connection after the grace period.
        let _ = tokio::time::timeout(grace, abort.finished()).await;
    }
    while rx.rx.try_recv().is_ok() {}
    shared.bytes.store(0, Ordering::Release);
    abort.abort();
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
