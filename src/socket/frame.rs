//! Server-to-client WebSocket frames, built once as complete `Bytes` (header + payload).
//!
//! Server frames are never masked (RFC 6455 §5.1), so a frame's bytes are the same for every
//! client: a room event's frame is built once per room message on each node and every
//! subscriber there shares it (a reference count, not a copy). The writer hands these slices
//! to `writev` as they are.

use bytes::{BufMut, Bytes, BytesMut};

/// Opcodes of the frames a server sends.
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const FIN: u8 = 0x80;

/// Header length for a payload of `len` bytes.
fn header_len(len: usize) -> usize {
    if len < 126 {
        2
    } else if len <= u16::MAX as usize {
        4
    } else {
        10
    }
}

fn put_header(dst: &mut BytesMut, opcode: u8, len: usize) {
    dst.put_u8(FIN | opcode);
    if len < 126 {
        dst.put_u8(len as u8);
    } else if len <= u16::MAX as usize {
        dst.put_u8(126);
        dst.put_u16(len as u16);
    } else {
        dst.put_u8(127);
        dst.put_u64(len as u64);
    }
}

fn frame(opcode: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(header_len(payload.len()) + payload.len());
    put_header(&mut b, opcode, payload.len());
    b.put_slice(payload);
    b.freeze()
}

/// A complete, unfragmented text frame carrying `text`.
pub fn text(text: &str) -> Bytes {
    frame(TEXT, text.as_bytes())
}

/// A ping frame with an empty payload (the heartbeat).
pub fn ping() -> Bytes {
    // Two bytes; `from_static` shares them without allocating.
    Bytes::from_static(&[FIN | PING, 0])
}

/// A pong frame echoing `payload` (at most 125 bytes: the codec refuses longer pings).
pub fn pong(payload: &[u8]) -> Bytes {
    frame(PONG, &payload[..payload.len().min(125)])
}

/// A close frame with `code` and a reason text (cut to fit a control frame's 125 bytes).
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut b = BytesMut::with_capacity(4 + cut);
    put_header(&mut b, CLOSE, 2 + cut);
    b.put_u16(code);
    b.put_slice(&reason.as_bytes()[..cut]);
    b.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_http::ws::{Codec, Frame};
    use tokio_util::codec::Decoder;

    /// Decodes a server frame the way a client does.
    fn decode(b: &Bytes) -> Frame {
        let mut codec = Codec::new().client_mode().max_size(1 << 20);
        let mut buf = BytesMut::from(&b[..]);
        let f = codec.decode(&mut buf).unwrap().unwrap();
        assert!(buf.is_empty(), "one frame, nothing after it");
        f
    }

    #[test]
    fn text_frames_of_every_length_class_decode() {
        for len in [0, 1, 125, 126, 65_535, 65_536, 100_000] {
            let s = "x".repeat(len);
            let b = text(&s);
            assert_eq!(b.len(), header_len(len) + len);
            match decode(&b) {
                Frame::Text(t) => assert_eq!(t.len(), len),
                f => panic!("{f:?}"),
            }
        }
    }

    #[test]
    fn control_frames_decode() {
        assert!(matches!(decode(&ping()), Frame::Ping(p) if p.is_empty()));
        assert!(matches!(decode(&pong(b"abc")), Frame::Pong(p) if &p[..] == b"abc"));
        match decode(&close(1013, "slow_consumer")) {
            Frame::Close(Some(r)) => {
                assert_eq!(u16::from(r.code), 1013);
                assert_eq!(r.description.as_deref(), Some("slow_consumer"));
            }
            f => panic!("{f:?}"),
        }
        // A long reason is cut on a character boundary to fit 125 bytes.
        let long = "é".repeat(100);
        let c = close(1000, &long);
        assert!(c.len() <= 127);
        assert!(matches!(decode(&c), Frame::Close(Some(_))));
    }
}
