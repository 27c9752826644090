//! The socket layer: a WebSocket connection's bytes, below the protocol actor.
//!
//! Design note. A delivery is what roomcast exists for, so this path is kept short:
//!
//! 1. [`handshake`] — actix-http's upgrade path gives us the TCP stream right after the
//!    request; we answer 101 and keep the stream (and any bytes read past the request). The
//!    HTTP/1 dispatcher and its two 8 KiB buffers are gone for WebSocket connections.
//! 2. [`reader`] — the connection actor reads client frames itself (actix-http's codec decodes
//!    them; fragments are joined and bounded; text must be UTF-8). No read buffer is held while
//!    the connection is idle.
//! 3. [`frame`] — server frames are built by us as complete `Bytes`. Server frames are not
//!    masked, so an event's frame is built once per room message per node and shared by every
//!    subscriber there.
//! 4. [`outbox`] — each connection's bounded queue of those frames (frames and bytes; overflow
//!    closes the connection with 1013).
//! 5. [`writer`] — one task per connection drains the outbox with vectored writes (many frames
//!    per `writev`), handles partial writes and `WouldBlock`, and closes in order: queued
//!    frames, close frame, FIN.
//!
//! The socket is split: the actor owns the read half, the writer the write half; the socket is
//! closed when both let go. [`stream`] hides whether it is plain TCP or TLS (rustls, when the
//! node serves `wss://` itself); the plain path makes its system calls directly. Nothing here knows rooms or the client protocol's JSON.

pub mod frame;
pub mod handshake;
pub mod outbox;
pub mod reader;
pub mod stream;
pub mod writer;
