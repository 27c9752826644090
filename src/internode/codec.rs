//! The internode wire format: preamble, length-delimited frames, bincode payloads with limits,
//! the handshake proofs and session keys, and the sealed frame writer of a link.
//! (docs/ARCHITECTURE.md, "Internode protocol", is the reference.)
//!
//! ```text
//! connection := preamble(client→server) preamble(server→client) handshake* sealed*
//! preamble   := "RCST" version:u16be reserved:u16be          (8 bytes)
//! handshake  := length:u32be payload[length]                 (Hello, Challenge, Proof, Accept)
//! sealed     := length:u32be payload ‖ tag[16]               with a cluster secret (seal.rs):
//!                                                             payload encrypted by default, or
//!                                                             in clear with
//!                                                             internode_encryption = false
//!             | length:u32be payload[length]                 without a secret: in clear
//! payload    := bincode-2(standard, varint, limit) of one `Frame`, no trailing bytes
//! ```
//!
//! Frames are at most [`HANDSHAKE_MAX_FRAME`] bytes until the handshake succeeds (an
//! unauthenticated peer can never make us allocate more), then [`MAX_FRAME`] (plus the tag).
//! Decoding uses bincode's byte limit, so a forged length inside a payload fails without
//! allocating. bincode is reached only through this module, so it can be swapped
//! (RUSTSEC-2025-0141 marks it unmaintained).

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodec};

use super::seal::{self, SealError, Sealer};

use crate::cluster::ClusterSecret;
use crate::cluster::secret::TAG_LEN;
use crate::ids::{NodeId, RoomId, UserId};
use crate::routing::PeerMsg;

pub const MAGIC: [u8; 4] = *b"RCST";
/// Version of the internode protocol; nodes of other versions are refused.
/// 2: `Refused` names the room's new owner, `HandoffAck` confirms handoffs, `HandoffMoving`
/// answers queries for a room in transit (issue 8).
/// 3: replication (issue 10). 4: `HandoffOffer` (a replica offers a room whose owner restarted),
/// `Control` frames, `user` on `Publish`, `epoch` on `PublishAck` (issue 11).
/// 5: with a secret, every frame after the handshake is sealed (ChaCha20-Poly1305, `seal.rs`);
/// `Hello` and `Challenge` carry the `internode_encryption` mode; `Refused` may carry
/// `PeerError::RoomLimit` (an owner at `max_rooms` did not create the room) (issue 13).
pub const PROTOCOL_VERSION: u16 = 5;
pub const PREAMBLE_LEN: usize = 8;
/// Frame limit during the handshake.
pub const HANDSHAKE_MAX_FRAME: usize = 4 * 1024;
/// Payload limit after the handshake (history replies are the largest messages). A sealed
/// frame on the wire is at most this plus [`seal::TAG_LEN`].
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Frame limit on the wire after the handshake.
pub const MAX_WIRE_FRAME: usize = MAX_FRAME + seal::TAG_LEN;
/// bincode's decode limit: the same as the frame limit.
const DECODE_LIMIT: usize = MAX_FRAME;

const BINCODE: bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT>,
> = bincode::config::standard().with_limit::<DECODE_LIMIT>();

/// Nonce size of the challenge-response.
pub const NONCE_LEN: usize = 32;

/// One frame's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Frame {
    /// Client → server, first frame: who I am.
    Hello {
        cluster_id: String,
        node_id: NodeId,
        generation: u64,
        /// Where this node's cluster port is reachable (for replies before gossip tells).
        cluster_addr: String,
        nonce: [u8; NONCE_LEN],
        /// This node's `internode_encryption` (with a secret, both ends must agree).
        encryption: bool,
    },
    /// Server → client: who I am, my nonce, and (with a secret) proof that I know it.
    Challenge {
        node_id: NodeId,
        generation: u64,
        nonce: [u8; NONCE_LEN],
        proof: Option<[u8; TAG_LEN]>,
        /// This node's `internode_encryption`.
        encryption: bool,
    },
    /// Client → server: proof that I know the secret.
    Proof { proof: Option<[u8; TAG_LEN]> },
    /// Server → client: the handshake succeeded; messages may follow.
    Accept,
    /// Either side: the handshake failed, with a reason; the connection closes.
    Reject { reason: String },
    /// One routing message (after the handshake, client → server only).
    Msg(PeerMsg),
    /// A node-wide request that is about no room (after the handshake, client → server only).
    Control(Control),
}

/// A node-wide request from a peer: handled by the node, not by a room shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Control {
    /// Close every connection of `user` here (the server API's `POST /api/disconnect`).
    Disconnect { user: UserId, reason: String },
    /// List this node's rooms with local subscribers (the server API's `GET /api/rooms`):
    /// up to `limit` whose names start with `prefix` and sort after `after`.
    RoomsQuery {
        id: u64,
        prefix: String,
        after: String,
        limit: u32,
    },
    /// The answer to `RoomsQuery` `id`: rooms and their local subscriber counts.
    RoomsReply { id: u64, rooms: Vec<(RoomId, u64)> },
}

/// The preamble both sides send first.
pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], v[0], v[1], 0, 0]
}

/// Why a preamble was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreambleError {
    BadMagic,
    BadVersion(u16),
}

pub fn check_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<(), PreambleError> {
    if p[..4] != MAGIC {
        return Err(PreambleError::BadMagic);
    }
    let v = u16::from_be_bytes([p[4], p[5]]);
    if v != PROTOCOL_VERSION {
        return Err(PreambleError::BadVersion(v));
    }
    Ok(())
}

/// Encodes a frame's payload.
pub fn encode(frame: &Frame) -> Result<Bytes, String> {
    bincode::serde::encode_to_vec(frame, BINCODE)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// Lets bincode write straight into a frame buffer.
struct BufWriter<'a>(&'a mut BytesMut);

impl bincode::enc::write::Writer for BufWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Encodes a frame's payload at the end of `dst` (on error `dst` may hold part of it).
pub fn encode_into(frame: &Frame, dst: &mut BytesMut) -> Result<(), String> {
    bincode::serde::encode_into_writer(frame, BufWriter(dst), BINCODE).map_err(|e| e.to_string())
}

/// Why a link could not write a frame.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// This message cannot be encoded (dropped; the link goes on).
    #[error("cannot encode a message: {0}")]
    Encode(String),
    /// This message is over the frame limit (dropped; the link goes on).
    #[error("a message of {0} bytes is over the frame limit")]
    TooLarge(usize),
    /// The link must end (its frame counter is exhausted).
    #[error("{0}")]
    Seal(#[from] SealError),
}

/// The codec of a link after the handshake: frames are encoded straight into the connection's
/// write buffer (no buffer per frame), behind their length, and sealed in place when the
/// handshake produced keys. Reading is plain length-delimited framing (the server never writes
/// after the handshake; anything read is its close).
pub struct LinkCodec {
    frames: LengthDelimitedCodec,
    sealer: Option<Sealer>,
    /// Bytes the last encoded frame occupies on the wire (length prefix included).
    pub last_len: usize,
}

impl LinkCodec {
    /// `frames` is the handshake's codec; `sealer` seals every frame (with a secret).
    pub fn new(frames: LengthDelimitedCodec, sealer: Option<Sealer>) -> LinkCodec {
        LinkCodec {
            frames,
            sealer,
            last_len: 0,
        }
    }
}

impl Encoder<Frame> for LinkCodec {
    type Error = WriteError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), WriteError> {
        let start = dst.len();
        dst.put_u32(0);
        if let Err(e) = encode_into(&frame, dst) {
            dst.truncate(start);
            return Err(WriteError::Encode(e));
        }
        let payload = dst.len() - start - 4;
        if payload > MAX_FRAME {
            dst.truncate(start);
            return Err(WriteError::TooLarge(payload));
        }
        if let Some(s) = &mut self.sealer
            && let Err(e) = s.seal(dst, start + 4)
        {
            dst.truncate(start);
            return Err(e.into());
        }
        let len = dst.len() - start;
        dst[start..start + 4].copy_from_slice(&((len - 4) as u32).to_be_bytes());
        self.last_len = len;
        Ok(())
    }
}

impl Decoder for LinkCodec {
    type Item = BytesMut;
    type Error = std::io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, std::io::Error> {
        self.frames.decode(src)
    }
}

/// Decodes a frame's payload; trailing bytes are an error.
pub fn decode(payload: &[u8]) -> Result<Frame, String> {
    let (frame, used): (Frame, usize) =
        bincode::serde::decode_from_slice(payload, BINCODE).map_err(|e| e.to_string())?;
    if used != payload.len() {
        return Err(format!("{} trailing bytes", payload.len() - used));
    }
    Ok(frame)
}

/// Fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    if getrandom::fill(&mut n).is_err() {
        // No OS randomness: fall back to a unique (if predictable) value. The proof stays
        // unforgeable without the secret; only replay protection relies on uniqueness.
        use std::sync::atomic::{AtomicU64, Ordering};
        static C: AtomicU64 = AtomicU64::new(0);
        let t = crate::now_us().to_le_bytes();
        let c = C.fetch_add(1, Ordering::Relaxed).to_le_bytes();
        n[..8].copy_from_slice(&t);
        n[8..16].copy_from_slice(&c);
        n[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    n
}

/// The server's proof: binds the cluster, both node ids and both nonces.
pub fn server_proof(
    secret: &ClusterSecret,
    cluster_id: &str,
    client: &NodeId,
    server: &NodeId,
    client_nonce: &[u8],
    server_nonce: &[u8],
) -> [u8; TAG_LEN] {
    secret.tag(
        b"roomcast-internode-server-v1",
        &[
            cluster_id.as_bytes(),
            client.as_str().as_bytes(),
            server.as_str().as_bytes(),
            client_nonce,
            server_nonce,
        ],
    )
}

/// The client's proof (another domain, nonces in the other order).
pub fn client_proof(
    secret: &ClusterSecret,
    cluster_id: &str,
    client: &NodeId,
    server: &NodeId,
    client_nonce: &[u8],
    server_nonce: &[u8],
) -> [u8; TAG_LEN] {
    secret.tag(
        b"roomcast-internode-client-v1",
        &[
            cluster_id.as_bytes(),
            client.as_str().as_bytes(),
            server.as_str().as_bytes(),
            server_nonce,
            client_nonce,
        ],
    )
}

/// The two keys of a connection: (client → server, server → client). Each binds the secret,
/// the cluster, both node ids, both nonces and the mode, under a domain per direction, so the
/// two directions, two connections and the two modes never share a key (seal.rs).
pub fn session_keys(
    secret: &ClusterSecret,
    encrypt: bool,
    cluster_id: &str,
    client: &NodeId,
    server: &NodeId,
    client_nonce: &[u8],
    server_nonce: &[u8],
) -> ([u8; seal::KEY_LEN], [u8; seal::KEY_LEN]) {
    let mode: &[u8] = if encrypt { b"encrypt" } else { b"authenticate" };
    let parts = [
        cluster_id.as_bytes(),
        client.as_str().as_bytes(),
        server.as_str().as_bytes(),
        client_nonce,
        server_nonce,
        mode,
    ];
    (
        secret.tag(b"roomcast-internode-key-c2s-v1", &parts),
        secret.tag(b"roomcast-internode-key-s2c-v1", &parts),
    )
}

/// Verifies a proof in constant time.
pub fn proof_ok(expected: &[u8; TAG_LEN], got: &[u8; TAG_LEN]) -> bool {
    let mut diff = 0u8;
    for (a, b) in expected.iter().zip(got.iter()) {
        diff |= a ^ b;
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{Epoch, RoomId};
    use crate::routing::Event;

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            Frame::Hello {
                cluster_id: "c".into(),
                node_id: NodeId::new("n1").unwrap(),
                generation: 7,
                cluster_addr: "127.0.0.1:7946".into(),
                nonce: [3; NONCE_LEN],
                encryption: true,
            },
            Frame::Challenge {
                node_id: NodeId::new("n2").unwrap(),
                generation: 8,
                nonce: [4; NONCE_LEN],
                proof: Some([5; TAG_LEN]),
                encryption: false,
            },
            Frame::Accept,
            Frame::Msg(PeerMsg::Event(Event {
                room: RoomId::new("r").unwrap(),
                epoch: Epoch::from_wire("ab-1"),
                seq: 9,
                accepted_us: 1,
                frame: "{}".into(),
            })),
        ];
        for f in frames {
            let b = encode(&f).unwrap();
            assert_eq!(decode(&b).unwrap(), f);
        }
    }

    #[test]
    fn the_link_codec_writes_frames_that_the_reader_opens_in_order() {
        use crate::internode::seal::SessionKeys;
        let keys = SessionKeys {
            send: [5; 32],
            recv: [6; 32],
            encrypt: true,
        };
        let theirs = SessionKeys {
            send: [6; 32],
            recv: [5; 32],
            encrypt: true,
        };
        let frames: Vec<Frame> = (0..3)
            .map(|i| Frame::Reject {
                reason: format!("frame {i}"),
            })
            .collect();
        for sealed in [false, true] {
            let mut w = LinkCodec::new(LengthDelimitedCodec::new(), sealed.then(|| keys.sealer()));
            let mut buf = BytesMut::from(&b"already queued"[..]);
            let mut lens = 0;
            for f in &frames {
                w.encode(f.clone(), &mut buf).unwrap();
                lens += w.last_len;
            }
            assert_eq!(buf.len(), 14 + lens);
            let mut wire = buf.split_off(14);
            let mut r = crate::internode::length_codec(MAX_WIRE_FRAME);
            let mut opener = sealed.then(|| theirs.opener());
            for f in &frames {
                let mut b = r.decode(&mut wire).unwrap().unwrap();
                let payload: &[u8] = match &mut opener {
                    Some(o) => o.open(&mut b).unwrap(),
                    None => &b,
                };
                assert_eq!(&decode(payload).unwrap(), f);
            }
            assert!(wire.is_empty());
        }
    }

    #[test]
    fn garbage_and_trailing_bytes_are_errors() {
        assert!(decode(&[0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(decode(&[]).is_err());
        // An unknown variant index.
        assert!(decode(&[200]).is_err());
        let mut b = encode(&Frame::Accept).unwrap().to_vec();
        b.push(0);
        assert!(decode(&b).unwrap_err().contains("trailing"));
        // A forged length (a huge string) fails without allocating it.
        let mut forged = vec![4u8]; // Reject variant
        forged.extend_from_slice(&[0xfd]); // varint u64 marker
        forged.extend_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode(&forged).is_err());
    }

    #[test]
    fn invalid_ids_inside_frames_are_refused() {
        // A room name with a space, smuggled in by a peer, must not decode.
        #[derive(Serialize)]
        enum Evil {
            #[allow(dead_code)]
            Hello,
            #[allow(dead_code)]
            Challenge,
            #[allow(dead_code)]
            Proof,
            #[allow(dead_code)]
            Accept,
            #[allow(dead_code)]
            Reject,
            Msg(EvilMsg),
        }
        #[derive(Serialize)]
        enum EvilMsg {
            #[allow(dead_code)]
            Subscribe,
            Unsubscribe {
                room: String,
            },
        }
        let b = bincode::serde::encode_to_vec(
            Evil::Msg(EvilMsg::Unsubscribe {
                room: "bad room".into(),
            }),
            BINCODE,
        )
        .unwrap();
        assert!(decode(&b).is_err());
        let ok = bincode::serde::encode_to_vec(
            Evil::Msg(EvilMsg::Unsubscribe {
                room: "good".into(),
            }),
            BINCODE,
        )
        .unwrap();
        assert!(decode(&ok).is_ok());
    }

    #[test]
    fn preamble_checks() {
        assert_eq!(check_preamble(&preamble()), Ok(()));
        let mut p = preamble();
        p[0] = b'X';
        assert_eq!(check_preamble(&p), Err(PreambleError::BadMagic));
        let mut p = preamble();
        p[5] = 9;
        assert_eq!(check_preamble(&p), Err(PreambleError::BadVersion(9)));
    }

    #[test]
    fn proofs_bind_both_sides() {
        let s = ClusterSecret::from_bytes(b"0123456789abcdef");
        let (a, b) = (NodeId::new("a").unwrap(), NodeId::new("b").unwrap());
        let p = server_proof(&s, "c", &a, &b, &[1], &[2]);
        assert!(proof_ok(&p, &server_proof(&s, "c", &a, &b, &[1], &[2])));
        assert!(!proof_ok(&p, &client_proof(&s, "c", &a, &b, &[1], &[2])));
        assert!(!proof_ok(&p, &server_proof(&s, "d", &a, &b, &[1], &[2])));
        assert!(!proof_ok(&p, &server_proof(&s, "c", &b, &a, &[1], &[2])));
    }
}
