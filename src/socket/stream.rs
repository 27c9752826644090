//! The client connection's byte stream once the HTTP layer lets go of it: plain TCP, or TLS
//! over TCP (rustls, when the node has `tls_cert_file`/`tls_key_file`).
//!
//! Why an enum and not a generic parameter: the connection actor and its writer are one type
//! each, whatever the transport, and the plain path keeps its direct socket calls (`readable`
//! before a read buffer is allocated, `try_write_vectored` with no copy). The TLS path goes
//! through tokio's `AsyncRead`/`AsyncWrite` on rustls' stream, split in two halves (tokio's
//! `split`: the reader and writer run on the same worker thread, each holding the lock only
//! for one call).
//!
//! TLS writes are buffered: rustls takes plaintext, encrypts it into its own buffer (64 KiB at
//! most) and writes records to the socket as it can. So the TLS write half also has a flush
//! ([`WriteHalf::poll_flush`]): the writer flushes before it waits for more frames, or
//! encrypted bytes would sit in rustls until the next frame.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::writer::Transport;

/// A TLS connection as actix-tls' rustls acceptor hands it over.
pub type TlsStream = actix_tls::accept::rustls_0_23::TlsStream<TcpStream>;

/// A client connection's stream.
pub enum ClientStream {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// The connection types the HTTP layer hands to the upgrade service.
pub trait IntoClientStream: AsyncRead + AsyncWrite + Unpin + 'static {
    fn into_client_stream(self) -> ClientStream;
}

impl IntoClientStream for TcpStream {
    fn into_client_stream(self) -> ClientStream {
        ClientStream::Plain(self)
    }
}

impl IntoClientStream for TlsStream {
    fn into_client_stream(self) -> ClientStream {
        ClientStream::Tls(Box::new(self))
    }
}

impl ClientStream {
    /// Sets `TCP_NODELAY` (frames are batched by the writer, never by Nagle) and splits the
    /// stream for the reader and the writer.
    pub fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            ClientStream::Plain(s) => {
                let _ = s.set_nodelay(true);
                let (r, w) = s.into_split();
                (ReadHalf::Plain(r), WriteHalf::Plain(w))
            }
            ClientStream::Tls(s) => {
                let _ = s.get_ref().0.set_nodelay(true);
                let (r, w) = tokio::io::split(*s);
                (ReadHalf::Tls(r), WriteHalf::Tls(w))
            }
        }
    }
}

/// Bytes read per system call at most; the buffer is allocated only while data is there.
const READ_CHUNK: usize = 4096;

/// The read half.
pub enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<TlsStream>),
}

impl ReadHalf {
    /// Appends what the connection has to `buf`: `Ready(Ok(0))` is the end of the stream.
    /// An empty `buf` is given back without its allocation while nothing is there to read.
    pub fn poll_read_into(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            ReadHalf::Plain(io) => loop {
                // Readable first, so an idle connection holds no buffer.
                ready!(io.as_ref().poll_read_ready(cx))?;
                reserve(buf);
                match io.try_read_buf(buf) {
                    Ok(n) => return Poll::Ready(Ok(n)),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => release_if_empty(buf),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            },
            ReadHalf::Tls(io) => {
                // rustls may hold decrypted bytes already: there is no readiness to wait for
                // first, so the buffer is reserved and let go again if nothing came.
                reserve(buf);
                let r = tokio_util::io::poll_read_buf(Pin::new(io), cx, buf);
                if r.is_pending() {
                    release_if_empty(buf);
                }
                r
            }
        }
    }
}

fn reserve(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < READ_CHUNK / 4 {
        buf.reserve(READ_CHUNK);
    }
}

fn release_if_empty(buf: &mut BytesMut) {
    if buf.is_empty() {
        *buf = BytesMut::new();
    }
}

/// The write half, as the writer ([`Transport`]) uses it.
pub enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<TlsStream>),
}

impl Transport for WriteHalf {
    fn try_write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            WriteHalf::Plain(w) => w.try_write_vectored(bufs),
            WriteHalf::Tls(w) => {
                // rustls takes what fits in its buffer and writes what the socket takes; it
                // says `Pending` only when it took nothing. The wake-up is registered by
                // `poll_writable` (a flush) before the writer waits.
                let mut cx = Context::from_waker(Waker::noop());
                match Pin::new(w).poll_write_vectored(&mut cx, bufs) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    fn poll_writable(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            WriteHalf::Plain(w) => w.as_ref().poll_write_ready(cx),
            // rustls' buffer is full when a write takes nothing: writable again once it has
            // been written out.
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            WriteHalf::Plain(_) => Poll::Ready(Ok(())),
            WriteHalf::Tls(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn shutdown(&mut self) {
        match self {
            WriteHalf::Plain(w) => {
                let _ = socket2::SockRef::from(w.as_ref()).shutdown(std::net::Shutdown::Write);
            }
            WriteHalf::Tls(w) => {
                // close_notify, then FIN: everything before it was flushed, so this completes
                // unless the socket is full (then the connection's end closes it anyway).
                let mut cx = Context::from_waker(Waker::noop());
                let _ = Pin::new(w).poll_shutdown(&mut cx);
            }
        }
    }
}
