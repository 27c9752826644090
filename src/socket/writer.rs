//! The connection's writer: drains the outbox into the socket with vectored writes.
//!
//! One task per connection, on the connection's worker thread. When woken it first yields one
//! scheduler turn (the "cork": frames that other tasks on this thread queue meanwhile join the
//! same write; no timer, so an idle node adds no latency), then takes every frame queued (up to
//! [`MAX_PENDING`]), writes them with `writev` — many frames per system call, the
//! shared event frames passed as they are, no copy — and loops until the queue is empty or the
//! socket would block; only then does it wait (for the socket to be writable, or for more
//! frames). A partial write keeps its place: the frames taken from the outbox stay in the
//! writer's own `pending` list until the kernel has every byte, so nothing popped is ever lost
//! (waiting for writability and waiting for a close are both cancel-safe: neither holds a
//! frame).
//!
//! Closing (the outbox was closed with a reason): everything queued before the close goes out
//! first (except for a slow consumer, whose queue is dropped — but a frame already half written
//! is completed, or the stream would be corrupt), then the close frame, then the write side is
//! shut down (FIN). All of it within `grace`: a client that stopped reading cannot hold the
//! connection. The read side belongs to the connection actor, which lets go of it when the
//! client answers the close, hangs up, or the linger time passes.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;

use super::frame;
use super::outbox::{FrameKind, OutboxReceiver};
use crate::metrics as m;
use crate::protocol::CloseReason;

/// Frames taken from the outbox per round at most (a bound on the writer's own list).
pub const MAX_PENDING: usize = 1024;
/// Slices per `writev` at most (Linux allows 1024; 64 already carries ~16 KiB of small frames).
const MAX_IOV: usize = 64;

/// The socket as the writer needs it. Implemented for a client connection's write half (TCP or
/// TLS, `super::stream`) and, in tests, for an in-memory socket that writes partially or blocks
/// on demand.
pub trait Transport {
    /// Writes as much of `bufs` as the socket takes now, without waiting
    /// (`ErrorKind::WouldBlock` if it takes nothing).
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Ready when the socket may take more.
    fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
    /// Ready when bytes the transport buffered itself (TLS records) are on the socket.
    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    /// Shuts the write side down (FIN after what was written).
    fn shutdown(&mut self);
}

/// Frames taken from the outbox and not yet fully written.
#[derive(Default)]
struct Pending {
    frames: VecDeque<Bytes>,
    /// Bytes of the first frame already written.
    offset: usize,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes what the socket takes now. `Ok(true)`: everything pending is written.
    fn write_some<T: Transport>(&mut self, t: &mut T) -> io::Result<bool> {
        while !self.frames.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let mut n_iov = 0;
            for (i, f) in self.frames.iter().take(MAX_IOV).enumerate() {
                let s = if i == 0 { &f[self.offset..] } else { &f[..] };
                iov[n_iov] = IoSlice::new(s);
                n_iov += 1;
            }
            let mut n = match t.try_write_vectored(&iov[..n_iov]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            while n > 0 {
                let left = self.frames[0].len() - self.offset;
                if n >= left {
                    n -= left;
                    self.frames.pop_front();
                    self.offset = 0;
                } else {
                    self.offset += n;
                    n = 0;
                }
            }
        }
        // Everything written: an idle connection keeps no buffer.
        if self.frames.capacity() > 0 {
            self.frames = VecDeque::new();
        }
        Ok(true)
    }

    /// Drops every frame not started yet (a half-written frame is kept: it must be completed).
    fn drop_unstarted(&mut self) {
        let keep = usize::from(self.offset > 0);
        self.frames.truncate(keep);
    }
}

/// Counts deliveries (and their latency) as frames are taken for writing.
struct Counting {
    delivered: metrics::Counter,
    lat: m::LatencyBatch,
}

impl Counting {
    fn take(&mut self, rx: &OutboxReceiver, p: &mut Pending) {
        let now = crate::now_us();
        let mut events = 0u64;
        let room = MAX_PENDING.saturating_sub(p.frames.len());
        let lat = &mut self.lat;
        rx.take(room, |f| {
            match f.kind {
                FrameKind::Event { accepted_us } => {
                    events += 1;
                    lat.add(now.saturating_sub(accepted_us));
                }
                FrameKind::Replay => events += 1,
                FrameKind::Control => {}
            }
            p.frames.push_back(f.bytes);
        });
        if events > 0 {
            m::delivered(&self.delivered, events);
        }
        self.lat.flush();
    }
}

/// How a writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterEnd {
    /// The close frame was written for this reason and the write side shut down.
    Closed(CloseReason),
    /// The socket failed (or the client stopped reading past the grace period).
    SocketGone,
}

/// Drains `rx` into `t` until the outbox closes or the socket fails. `on_closing` is called
/// once, when the writer starts closing (to tell the connection actor); the disconnect is
/// counted by its reason then.
pub async fn run<T: Transport>(
    mut t: T,
    rx: OutboxReceiver,
    grace: Duration,
    on_closing: impl FnOnce(CloseReason),
) -> WriterEnd {
    let mut p = Pending::default();
    let mut counting = Counting {
        delivered: m::delivered_counter(),
        lat: m::LatencyBatch::default(),
    };
    let mut rounds = 0u32;
    loop {
        if rx.closing().is_some() {
            break;
        }
        counting.take(&rx, &mut p);
        if p.is_empty() {
            rounds = 0;
            // Flush what the transport buffered (TLS) while waiting for more frames.
            let mut flushed = false;
            let r = std::future::poll_fn(|cx| {
                if !flushed {
                    match t.poll_flush(cx) {
                        Poll::Ready(Ok(())) => flushed = true,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => {}
                    }
                }
                rx.poll_ready(cx).map(Ok)
            })
            .await;
            if r.is_err() {
                rx.socket_gone();
                m::disconnect(CloseReason::Normal);
                on_closing(CloseReason::Normal);
                return WriterEnd::SocketGone;
            }
            // The cork: one scheduler turn, so frames queued meanwhile (more delivery batches,
            // replies) join this write. No timer: an idle node adds no latency.
            tokio::task::yield_now().await;
            continue;
        }
        match p.write_some(&mut t) {
            Ok(true) => {
                // A connection that always has more to write still lets its neighbours run.
                rounds += 1;
                if rounds.is_multiple_of(16) {
                    tokio::task::yield_now().await;
                }
            }
            Ok(false) => {
                // The socket is full: wait until it drains, or until the connection closes.
                let r = std::future::poll_fn(|cx| {
                    if let Poll::Ready(r) = t.poll_writable(cx) {
                        return Poll::Ready(r);
                    }
                    rx.poll_closing(cx).map(|()| Ok(()))
                })
                .await;
                if r.is_err() {
                    rx.socket_gone();
                    m::disconnect(CloseReason::Normal);
                    on_closing(CloseReason::Normal);
                    return WriterEnd::SocketGone;
                }
            }
            Err(_) => {
                rx.socket_gone();
                m::disconnect(CloseReason::Normal);
                on_closing(CloseReason::Normal);
                return WriterEnd::SocketGone;
            }
        }
    }
    let reason = rx.closing().unwrap_or(CloseReason::Normal);
    m::disconnect(reason);
    on_closing(reason);
    if reason == CloseReason::SlowConsumer {
        p.drop_unstarted();
    } else {
        // Everything queued before the close, in order (the outbox takes nothing new now).
        loop {
            let before = p.frames.len();
            counting.take(&rx, &mut p);
            if p.frames.len() == before {
                break;
            }
            // Keep `pending` bounded: write as we go.
            if p.frames.len() >= MAX_PENDING && !flush(&mut t, &mut p, grace).await {
                while rx.pop().is_some() {}
                return WriterEnd::SocketGone;
            }
        }
    }
    while rx.pop().is_some() {}
    p.frames
        .push_back(frame::close(reason.code(), reason.as_str()));
    if !flush(&mut t, &mut p, grace).await {
        return WriterEnd::SocketGone;
    }
    t.shutdown();
    WriterEnd::Closed(reason)
}

/// Writes everything pending within `grace`. False if the socket failed or did not take it.
async fn flush<T: Transport>(t: &mut T, p: &mut Pending, grace: Duration) -> bool {
    let all = async {
        loop {
            match p.write_some(t) {
                Ok(true) => return std::future::poll_fn(|cx| t.poll_flush(cx)).await.is_ok(),
                Ok(false) => {
                    if std::future::poll_fn(|cx| t.poll_writable(cx))
                        .await
                        .is_err()
                    {
                        return false;
                    }
                }
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(grace, all).await.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::outbox::{Frame, Outbox, PushError, outbox};
    use std::sync::{Arc, Mutex};

    /// An in-memory socket: takes at most `chunk` bytes per call and, while `blocked`, nothing
    /// (`WouldBlock`). Records every byte and every call.
    #[derive(Clone, Default)]
    struct Mem(Arc<Mutex<MemState>>);

    #[derive(Default)]
    struct MemState {
        written: Vec<u8>,
        chunk: usize,
        blocked: bool,
        calls: usize,
        max_slices: usize,
        shut: bool,
        fail: bool,
        waker: Option<std::task::Waker>,
    }

    impl Mem {
        fn new(chunk: usize) -> Mem {
            let m = Mem::default();
            m.0.lock().unwrap().chunk = chunk;
            m
        }
        fn set_blocked(&self, b: bool) {
            let mut s = self.0.lock().unwrap();
            s.blocked = b;
            if !b && let Some(w) = s.waker.take() {
                w.wake();
            }
        }
        fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
            self.0.lock().unwrap()
        }
    }

    impl Transport for Mem {
        fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
            let mut s = self.0.lock().unwrap();
            if s.fail {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            if s.blocked {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            s.calls += 1;
            s.max_slices = s.max_slices.max(bufs.len());
            let mut left = s.chunk;
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(left);
                s.written.extend_from_slice(&b[..take]);
                left -= take;
                n += take;
                if left == 0 {
                    break;
                }
            }
            if n == 0 && bufs.iter().any(|b| !b.is_empty()) {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(n)
        }
        fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            let mut s = self.0.lock().unwrap();
            if s.fail {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            if s.blocked {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            } else {
                Poll::Ready(Ok(()))
            }
        }
        fn shutdown(&mut self) {
            self.0.lock().unwrap().shut = true;
        }
    }

    fn push_text(o: &Outbox, s: &str) {
        o.push(Frame {
            bytes: frame::text(s),
            kind: FrameKind::Control,
        })
        .unwrap();
    }

    /// Decodes the server frames in `bytes`: (opcode, payload).
    fn frames(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
        use actix_http::ws::{Codec, Frame as F};
        use tokio_util::codec::Decoder;
        let mut codec = Codec::new().client_mode().max_size(1 << 24);
        let mut buf = bytes::BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = codec.decode(&mut buf).unwrap() {
            out.push(match f {
                F::Text(t) => (1, t.to_vec()),
                F::Ping(p) => (9, p.to_vec()),
                F::Close(r) => (
                    8,
                    r.map(|r| u16::from(r.code).to_be_bytes().to_vec())
                        .unwrap_or_default(),
                ),
                f => panic!("{f:?}"),
            });
        }
        assert!(buf.is_empty(), "a frame was cut: {} bytes left", buf.len());
        out
    }

    fn texts(bytes: &[u8]) -> Vec<String> {
        frames(bytes)
            .into_iter()
            .filter(|(op, _)| *op == 1)
            .map(|(_, p)| String::from_utf8(p).unwrap())
            .collect()
    }

    const GRACE: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn many_frames_go_in_few_vectored_writes_in_order() {
        let mem = Mem::new(usize::MAX);
        let (o, rx) = outbox(10_000, 1 << 24);
        for i in 0..500 {
            push_text(&o, &format!("m{i}"));
        }
        o.close(CloseReason::Shutdown);
        let end = run(mem.clone(), rx, GRACE, |_| {}).await;
        assert_eq!(end, WriterEnd::Closed(CloseReason::Shutdown));
        let s = mem.state();
        let got = texts(&s.written);
        assert_eq!(got, (0..500).map(|i| format!("m{i}")).collect::<Vec<_>>());
        assert!(
            s.calls <= 500 / MAX_IOV + 2,
            "{} writes for 500 frames",
            s.calls
        );
        assert_eq!(s.max_slices, MAX_IOV);
        assert!(s.shut, "the write side is shut down after the close frame");
        assert_eq!(
            frames(&s.written).last().unwrap().0,
            8,
            "the close frame is last"
        );
    }

    #[tokio::test]
    async fn partial_writes_never_cut_or_reorder_a_frame() {
        // 7 bytes per call: every frame is split across calls, often mid-header.
        let mem = Mem::new(7);
        let (o, rx) = outbox(10_000, 1 << 24);
        let msgs: Vec<String> = (0..200)
            .map(|i| "x".repeat(i % 300 + 1) + &i.to_string())
            .collect();
        for m in &msgs {
            push_text(&o, m);
        }
        o.close(CloseReason::Normal);
        run(mem.clone(), rx, GRACE, |_| {}).await;
        assert_eq!(texts(&mem.state().written), msgs);
    }

    #[tokio::test]
    async fn would_block_waits_for_writability_without_spinning() {
        let mem = Mem::new(usize::MAX);
        mem.set_blocked(true);
        let (o, rx) = outbox(100, 1 << 20);
        push_text(&o, "a");
        let task = tokio::spawn(run(mem.clone(), rx, GRACE, |_| {}));
        // While blocked the writer is parked on writability: no write attempts pile up.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert_eq!(mem.state().calls, 0);
        assert!(mem.state().waker.is_some(), "parked on writability");
        push_text(&o, "b");
        mem.set_blocked(false);
        // Wait (with a deadline) until both frames are on the socket.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while texts(&mem.state().written).len() < 2 {
            assert!(tokio::time::Instant::now() < deadline, "frames not written");
            tokio::task::yield_now().await;
        }
        assert_eq!(texts(&mem.state().written), ["a", "b"]);
        o.close(CloseReason::Normal);
        assert_eq!(task.await.unwrap(), WriterEnd::Closed(CloseReason::Normal));
    }

    #[tokio::test]
    async fn a_server_close_writes_everything_queued_before_it_then_the_close_frame() {
        let mem = Mem::new(3);
        mem.set_blocked(true);
        let (o, rx) = outbox(100, 1 << 20);
        let task = tokio::spawn(run(mem.clone(), rx, GRACE, |_| {}));
        for i in 0..50 {
            push_text(&o, &format!("e{i}"));
        }
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        // Closing while frames are popped and blocked: none of them may be lost.
        o.close(CloseReason::Draining);
        mem.set_blocked(false);
        assert_eq!(
            task.await.unwrap(),
            WriterEnd::Closed(CloseReason::Draining)
        );
        let s = mem.state();
        let all = frames(&s.written);
        assert_eq!(
            texts(&s.written),
            (0..50).map(|i| format!("e{i}")).collect::<Vec<_>>()
        );
        assert_eq!(all.last().unwrap(), &(8, 1001u16.to_be_bytes().to_vec()));
    }

    #[tokio::test]
    async fn a_slow_consumer_gets_its_half_written_frame_completed_then_1013() {
        let mem = Mem::new(5);
        let (o, rx) = outbox(4, 1 << 20);
        push_text(&o, &"a".repeat(40));
        let task = tokio::spawn(run(mem.clone(), rx, GRACE, |_| {}));
        // Let the writer start the first frame, then block the socket mid-frame.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while mem.state().written.is_empty() {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::task::yield_now().await;
        }
        mem.set_blocked(true);
        for _ in 0..4 {
            let _ = o.push(Frame {
                bytes: frame::text("b"),
                kind: FrameKind::Control,
            });
        }
        // The fifth push overflows the 4-frame bound: slow consumer.
        assert_eq!(
            o.push(Frame {
                bytes: frame::text("c"),
                kind: FrameKind::Control
            }),
            Err(PushError::Overflow)
        );
        mem.set_blocked(false);
        assert_eq!(
            task.await.unwrap(),
            WriterEnd::Closed(CloseReason::SlowConsumer)
        );
        let s = mem.state();
        let all = frames(&s.written);
        assert_eq!(
            all[0],
            (1, vec![b'a'; 40]),
            "the half-written frame is completed"
        );
        assert_eq!(all.last().unwrap(), &(8, 1013u16.to_be_bytes().to_vec()));
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_cut_after_the_grace_period() {
        let mem = Mem::new(usize::MAX);
        mem.set_blocked(true);
        let (o, rx) = outbox(100, 1 << 20);
        push_text(&o, "x");
        o.close(CloseReason::Shutdown);
        let end = run(mem.clone(), rx, Duration::from_millis(50), |_| {}).await;
        assert_eq!(end, WriterEnd::SocketGone);
        assert!(!mem.state().shut);
    }

    #[tokio::test]
    async fn a_failed_socket_ends_the_writer_and_refuses_new_frames() {
        let mem = Mem::new(usize::MAX);
        mem.0.lock().unwrap().fail = true;
        let (o, rx) = outbox(100, 1 << 20);
        push_text(&o, "x");
        let told = Arc::new(Mutex::new(None));
        let t2 = told.clone();
        let end = run(mem, rx, GRACE, move |r| *t2.lock().unwrap() = Some(r)).await;
        assert_eq!(end, WriterEnd::SocketGone);
        assert_eq!(*told.lock().unwrap(), Some(CloseReason::Normal));
        assert_eq!(
            o.push(Frame {
                bytes: frame::text("y"),
                kind: FrameKind::Control
            }),
            Err(PushError::Closed)
        );
    }
}
