//! The connection's reader: client WebSocket frames in, whole messages out.
//!
//! Frames are decoded by actix-http's WebSocket codec (server mode: an unmasked client frame is
//! a protocol error; reserved opcodes, bad control frames and misplaced continuations too).
//! [`Assembler`] joins fragmented messages (control frames may come between the fragments),
//! bounds the joined size and checks that a text message is UTF-8.
//!
//! Memory: the reader waits for the socket to be *readable* before it allocates a read buffer,
//! and lets the buffer go whenever everything read has been decoded, so an idle connection
//! holds no read buffer at all (the HTTP/1 dispatcher kept 8 KiB for the life of a WebSocket).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::stream::ReadHalf;

use actix_http::ws::{Codec, Frame, Item, ProtocolError};
use bytes::{Bytes, BytesMut};
use bytestring::ByteString;
use futures_util::Stream;
use tokio_util::codec::Decoder;

/// A whole client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// The client's close frame (its code, if it sent one).
    Close(Option<u16>),
}

/// Why the client's input ends the connection.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Invalid framing (1002).
    #[error("invalid WebSocket framing: {0}")]
    Protocol(String),
    /// A frame or a joined message over the limit (1009).
    #[error("message over the {0}-byte limit")]
    TooBig(usize),
    /// A text message that is not UTF-8 (1007).
    #[error("text message is not valid UTF-8")]
    InvalidUtf8,
    /// The socket failed.
    #[error("socket: {0}")]
    Io(#[from] io::Error),
}

/// Joins fragments into messages, within `max` bytes.
#[derive(Debug)]
pub struct Assembler {
    max: usize,
    /// A fragmented message in progress: (is text, bytes so far).
    partial: Option<(bool, BytesMut)>,
}

impl Assembler {
    pub fn new(max: usize) -> Assembler {
        Assembler { max, partial: None }
    }

    /// Takes one decoded frame; a whole message when there is one.
    pub fn push(&mut self, f: Frame) -> Result<Option<Message>, ReadError> {
        Ok(match f {
            Frame::Text(b) | Frame::Binary(b) if self.partial.is_some() => {
                let _ = b;
                return Err(ReadError::Protocol(
                    "a new message began before the fragmented one ended".into(),
                ));
            }
            Frame::Text(b) => Some(Message::Text(utf8(b)?)),
            Frame::Binary(b) => Some(Message::Binary(b)),
            Frame::Ping(b) => Some(Message::Ping(b)),
            Frame::Pong(b) => Some(Message::Pong(b)),
            Frame::Close(r) => Some(Message::Close(r.map(|r| u16::from(r.code)))),
            Frame::Continuation(item) => match item {
                Item::FirstText(b) | Item::FirstBinary(b) if self.partial.is_some() => {
                    let _ = b;
                    return Err(ReadError::Protocol(
                        "a new message began before the fragmented one ended".into(),
                    ));
                }
                Item::FirstText(b) => {
                    self.start(true, b)?;
                    None
                }
                Item::FirstBinary(b) => {
                    self.start(false, b)?;
                    None
                }
                Item::Continue(b) => {
                    self.append(b)?;
                    None
                }
                Item::Last(b) => {
                    self.append(b)?;
                    let Some((text, buf)) = self.partial.take() else {
                        unreachable!("append checked the message in progress");
                    };
                    let b = buf.freeze();
                    Some(if text {
                        Message::Text(utf8(b)?)
                    } else {
                        Message::Binary(b)
                    })
                }
            },
        })
    }

    fn start(&mut self, text: bool, b: Bytes) -> Result<(), ReadError> {
        if b.len() > self.max {
            return Err(ReadError::TooBig(self.max));
        }
        self.partial = Some((text, BytesMut::from(&b[..])));
        Ok(())
    }

    fn append(&mut self, b: Bytes) -> Result<(), ReadError> {
        let Some((_, buf)) = self.partial.as_mut() else {
            return Err(ReadError::Protocol(
                "a continuation frame without a message in progress".into(),
            ));
        };
        if buf.len() + b.len() > self.max {
            return Err(ReadError::TooBig(self.max));
        }
        buf.extend_from_slice(&b);
        Ok(())
    }
}

fn utf8(b: Bytes) -> Result<ByteString, ReadError> {
    ByteString::try_from(b).map_err(|_| ReadError::InvalidUtf8)
}

fn protocol(e: ProtocolError, max: usize) -> ReadError {
    match e {
        ProtocolError::Overflow => ReadError::TooBig(max),
        ProtocolError::Io(e) => ReadError::Io(e),
        e => ReadError::Protocol(e.to_string()),
    }
}

/// The client's messages, read from the socket's read half. Ends after the client's close
/// frame's message, at EOF, or after the first error.
pub struct Reader {
    io: ReadHalf,
    buf: BytesMut,
    dec: MessageDecoder,
    done: bool,
}

/// The reader's decoding without the socket: bytes in, whole messages out (the fuzz tests feed
/// it arbitrary bytes).
#[derive(Debug)]
pub struct MessageDecoder {
    codec: Codec,
    asm: Assembler,
    max: usize,
}

impl MessageDecoder {
    /// Frames and joined messages of at most `max` bytes (`max_frame_bytes`).
    pub fn new(max: usize) -> MessageDecoder {
        MessageDecoder {
            codec: Codec::new().max_size(max),
            asm: Assembler::new(max),
            max,
        }
    }

    /// Decodes frames from the front of `buf` until one completes a message (`Ok(None)`: more
    /// bytes are needed). After an error the connection is to be closed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Message>, ReadError> {
        loop {
            let frame = self.codec.decode(buf).map_err(|e| protocol(e, self.max))?;
            if buf.is_empty() {
                // Nothing left to decode: let the allocation go (payloads split from it keep
                // their part alive only as long as they are used).
                *buf = BytesMut::new();
            }
            let Some(frame) = frame else { return Ok(None) };
            if let Some(msg) = self.asm.push(frame)? {
                return Ok(Some(msg));
            }
        }
    }
}

impl Reader {
    /// `leftover`: bytes the HTTP layer read past the handshake (the client's first frames).
    pub fn new(io: ReadHalf, leftover: BytesMut, max: usize) -> Reader {
        Reader {
            io,
            buf: leftover,
            dec: MessageDecoder::new(max),
            done: false,
        }
    }
}

impl Stream for Reader {
    type Item = Result<Message, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match this.dec.decode(&mut this.buf) {
                Ok(Some(msg)) => {
                    if matches!(msg, Message::Close(_)) {
                        this.done = true;
                    }
                    return Poll::Ready(Some(Ok(msg)));
                }
                Ok(None) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            match ready!(this.io.poll_read_into(cx, &mut this.buf)) {
                Ok(0) => {
                    // EOF (a partial frame left is simply dropped with the connection).
                    this.done = true;
                    return Poll::Ready(None);
                }
                Ok(_) => {}
                Err(e) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn fragments_join_with_control_frames_between() {
        let mut a = Assembler::new(100);
        assert_eq!(
            a.push(Frame::Continuation(Item::FirstText(text("he"))))
                .unwrap(),
            None
        );
        assert_eq!(
            a.push(Frame::Ping(text("p"))).unwrap(),
            Some(Message::Ping(text("p")))
        );
        assert_eq!(
            a.push(Frame::Continuation(Item::Continue(text("ll"))))
                .unwrap(),
            None
        );
        assert_eq!(
            a.push(Frame::Continuation(Item::Last(text("o")))).unwrap(),
            Some(Message::Text("hello".into()))
        );
    }

    #[test]
    fn joined_size_is_bounded() {
        let mut a = Assembler::new(4);
        a.push(Frame::Continuation(Item::FirstText(text("abc"))))
            .unwrap();
        assert!(matches!(
            a.push(Frame::Continuation(Item::Last(text("de")))),
            Err(ReadError::TooBig(4))
        ));
    }

    #[test]
    fn invalid_utf8_is_its_own_error_whole_or_fragmented() {
        let mut a = Assembler::new(100);
        let bad = Bytes::from_static(&[0x61, 0xff, 0x62]);
        assert!(matches!(
            a.push(Frame::Text(bad.clone())),
            Err(ReadError::InvalidUtf8)
        ));
        let mut a = Assembler::new(100);
        // A code point split across fragments is fine; only the whole message counts.
        let e = "é".as_bytes();
        a.push(Frame::Continuation(Item::FirstText(
            Bytes::copy_from_slice(&e[..1]),
        )))
        .unwrap();
        assert_eq!(
            a.push(Frame::Continuation(Item::Last(Bytes::copy_from_slice(
                &e[1..]
            ))))
            .unwrap(),
            Some(Message::Text("é".into()))
        );
        a.push(Frame::Continuation(Item::FirstText(bad))).unwrap();
        assert!(matches!(
            a.push(Frame::Continuation(Item::Last(text("")))),
            Err(ReadError::InvalidUtf8)
        ));
    }

    #[test]
    fn misplaced_frames_are_protocol_errors() {
        let mut a = Assembler::new(100);
        assert!(matches!(
            a.push(Frame::Continuation(Item::Continue(text("x")))),
            Err(ReadError::Protocol(_))
        ));
        let mut a = Assembler::new(100);
        a.push(Frame::Continuation(Item::FirstText(text("x"))))
            .unwrap();
        assert!(matches!(
            a.push(Frame::Text(text("y"))),
            Err(ReadError::Protocol(_))
        ));
    }

    #[test]
    fn the_codec_refuses_unmasked_client_frames() {
        // An unmasked text frame "hi" from a client.
        let mut codec = Codec::new();
        let mut buf = BytesMut::from(&[0x81u8, 0x02, b'h', b'i'][..]);
        assert!(matches!(
            codec.decode(&mut buf).map_err(|e| protocol(e, 10)),
            Err(ReadError::Protocol(_))
        ));
    }
}
