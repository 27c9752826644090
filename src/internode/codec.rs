//! The internode wire format: preamble, length-delimited frames, bincode payloads with limits,
//! and the handshake proofs. (docs/ARCHITECTURE.md, "Internode protocol", is the reference.)
//!
//! ```text
//! connection := preamble(client→server) preamble(server→client) frame*
//! preamble   := "RCST" version:u16be reserved:u16be          (8 bytes)
//! frame      := length:u32be payload[length]                  (tokio-util LengthDelimitedCodec)
//! payload    := bincode-2(standard, varint, limit) of one `Frame`, no trailing bytes
//! ```
//!
//! Frames are at most [`HANDSHAKE_MAX_FRAME`] bytes until the handshake succeeds (an
//! unauthenticated peer can never make us allocate more), then [`MAX_FRAME`]. Decoding uses
//! bincode's byte limit, so a forged length inside a payload fails without allocating. bincode
//! is reached only through this module, so it can be swapped (RUSTSEC-2025-0141 marks it
//! unmaintained).

use bytes::Bytes;
use serde::{Deserialize, Serialize};

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
/// 5 also carries `PeerError::RoomLimit` in `Refused` (an owner at `max_rooms` did not create
/// the room; issue 13) — part of version 5, whose bump lands with the other v5 changes.
pub const PROTOCOL_VERSION: u16 = 4;
pub const PREAMBLE_LEN: usize = 8;
/// Frame limit during the handshake.
pub const HANDSHAKE_MAX_FRAME: usize = 4 * 1024;
/// Frame limit after the handshake (history replies are the largest messages).
pub const MAX_FRAME: usize = 64 * 1024 * 1024;
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
    },
    /// Server → client: who I am, my nonce, and (with a secret) proof that I know it.
    Challenge {
        node_id: NodeId,
        generation: u64,
        nonce: [u8; NONCE_LEN],
        proof: Option<[u8; TAG_LEN]>,
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
