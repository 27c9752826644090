//! The WebSocket handshake on actix-http's upgrade path.
//!
//! actix-http hands a WebSocket upgrade request to the upgrade service with the connection as a
//! `Framed<T, h1::Codec>`, `T` a TCP or TLS stream (the HTTP/1 dispatcher is finished with it). Here the request
//! is checked with actix-http's own handshake rules, the 101 answer is written, and the TCP
//! stream comes out of the `Framed` together with any bytes the HTTP layer already read past
//! the request (a client may send its first frames right behind the handshake). From then on
//! no HTTP/1 buffer exists for the connection.

use std::io;

use actix_http::body::{BodySize, MessageBody};
use actix_http::h1::{self, Message};
use actix_http::ws::{self, HandshakeError};
use actix_http::{Request, Response};
use bytes::{Bytes, BytesMut};
use futures_util::SinkExt;

use super::stream::{ClientStream, IntoClientStream};

/// The connection as actix-http hands it to the upgrade service.
pub type Upgrading<T> = actix_codec::Framed<T, h1::Codec>;

/// Writes a complete response with a small body, then the connection is done with.
pub async fn respond<T: IntoClientStream>(
    framed: &mut Upgrading<T>,
    res: Response<Bytes>,
) -> io::Result<()> {
    let (res, body) = res.into_parts();
    let len = body.len();
    let res = res.drop_body();
    framed
        .feed(Message::Item((res, BodySize::Sized(len as u64))))
        .await?;
    if len > 0 {
        framed.feed(Message::Chunk(Some(body))).await?;
    }
    framed.send(Message::Chunk(None)).await
}

/// Writes the handshake's refusal (400, 405 or 426, as actix-http decides).
pub async fn refuse<T: IntoClientStream>(
    framed: &mut Upgrading<T>,
    e: HandshakeError,
) -> io::Result<()> {
    let res: Response<actix_http::body::BoxBody> = e.into();
    let (res, body) = res.into_parts();
    let body = body.try_into_bytes().unwrap_or_default();
    respond(framed, res.set_body(body)).await
}

/// Checks the handshake of `req`; `Err` says why it is not one.
pub fn check(req: &Request) -> Result<(), HandshakeError> {
    ws::verify_handshake(req.head())
}

/// Answers a checked handshake with 101 and takes the socket out of the HTTP layer: the
/// stream and the bytes already read past the request.
pub async fn accept<T: IntoClientStream>(
    req: &Request,
    mut framed: Upgrading<T>,
) -> io::Result<(ClientStream, BytesMut)> {
    let res = ws::handshake_response(req.head()).finish().drop_body();
    framed.send(Message::Item((res, BodySize::None))).await?;
    let parts = framed.into_parts();
    // `send` flushed the 101: nothing of the HTTP layer is left to write.
    debug_assert!(parts.write_buf.is_empty());
    Ok((parts.io.into_client_stream(), parts.read_buf))
}
