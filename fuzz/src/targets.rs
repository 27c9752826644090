//! The fuzz targets: one function per decoder of hostile input, bytes in, a panic when an
//! invariant breaks. Shared by the AFL binaries (`fuzz/src/bin/*.rs`, one per target) and by
//! `cargo test` at the root, which includes this file (`tests/fuzz.rs`) to replay the committed
//! seed corpora (`fuzz/corpus/<target>/`) and crash regressions (`tests/fuzz-regressions/
//! <target>/`) through the same functions. So it uses only what both builds have: roomcast,
//! `bytes` and `serde_json` (with `raw_value`).
//!
//! Each target checks what the property tests in `tests/fuzz.rs` check, where that is cheap:
//! no panic, the round trips, and the verdicts that matter (nothing passes the gossip check
//! without its tag, a handshake never completes without the secret). Inputs that need
//! structure (a frame sequence, a sealed datagram, a TOML file plus env vars) are read from the
//! bytes with a small layout, written above each target, so that AFL's mutations of the seeds
//! stay meaningful.

use bytes::{BufMut, BytesMut};
use roomcast::cluster::ClusterSecret;
use roomcast::cluster::transport::{OVERHEAD, open_datagram, seal_datagram};
use roomcast::config::{Config, ConfigError};
use roomcast::ids::NodeId;
use roomcast::internode::InternodeConfig;
use roomcast::internode::codec::{self, Frame, NONCE_LEN, PREAMBLE_LEN};
use roomcast::internode::handshake::{Client, ClientStep, Server, ServerStep};
use roomcast::protocol::encode::{Reply, reply};
use roomcast::protocol::{ErrorCode, Op, ParseLimits, ReqId, parse_request};
use roomcast::socket::reader::{Message, MessageDecoder, ReadError};
use serde_json::value::RawValue;
use std::collections::BTreeMap;

/// A fuzz target: bytes in, a panic when an invariant breaks.
pub type Target = fn(&[u8]);

/// Every target by name: the name is the AFL binary's and the corpus directory's.
pub const TARGETS: &[(&str, Target)] = &[
    ("request_parser", request_parser),
    ("ws_decoder", ws_decoder),
    ("internode_codec", internode_codec),
    ("internode_handshake", internode_handshake),
    ("gossip_datagram", gossip_datagram),
    ("config_loader", config_loader),
];

// ---------------------------------------------------------------- client request parser

/// `data` as in the property tests: small enough that `TooLarge` is reachable.
pub const LIMITS: ParseLimits = ParseLimits {
    max_data_bytes: 256,
};

/// A JSON object's fields, raw (`None` when `text` is not a JSON object).
fn raw_fields(text: &str) -> Option<BTreeMap<String, Box<RawValue>>> {
    serde_json::from_str(text).ok()
}

/// The raw text of field `k`, if `fields` has it.
fn raw_field<'a>(fields: &'a Option<BTreeMap<String, Box<RawValue>>>, k: &str) -> Option<&'a str> {
    fields.as_ref()?.get(k).map(|v| v.get())
}

/// Input: the text of one WebSocket text message (bytes that are not UTF-8 are replaced, as
/// the reader refuses them before the parser). Checks: no panic; the reply written for the
/// outcome is JSON and echoes the request's `id` verbatim; a publish's `data` is the request's
/// raw `data` and within the limit; `TooLarge` only over it; a room that passed validation is
/// written back unchanged.
pub fn request_parser(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let fields = raw_fields(&text);
    let field = |k: &str| raw_field(&fields, k);
    let (id, answer) = match parse_request(&text, LIMITS) {
        Ok(r) => {
            let room = match &r.op {
                Op::Join { room, .. }
                | Op::Leave { room }
                | Op::History { room, .. }
                | Op::Presence { room } => Some(room.clone()),
                Op::Publish { room, data, .. } => {
                    assert!(data.len() <= LIMITS.max_data_bytes, "{data}");
                    assert_eq!(Some(*data), field("data"), "publish data verbatim");
                    Some(room.clone())
                }
                Op::Ping | Op::Auth { .. } | Op::Refresh { .. } => None,
            };
            let answer = match room {
                Some(room) => Reply::Left { room },
                None => Reply::Pong { ts: 1 },
            };
            (r.id, answer)
        }
        Err(e) => {
            if e.code == ErrorCode::TooLarge {
                let d = field("data").expect("TooLarge names a data field");
                assert!(
                    d.len() > LIMITS.max_data_bytes,
                    "TooLarge at {} bytes",
                    d.len()
                );
            }
            (e.id, Reply::error(e.code, e.message))
        }
    };
    if id != ReqId::NONE {
        assert_eq!(Some(id.json()), field("id"), "the id is echoed verbatim");
    }
    let out = reply(&id, &answer);
    let back = raw_fields(&out).unwrap_or_else(|| panic!("a reply is a JSON object: {out}"));
    assert_eq!(back.get("id").map(|v| v.get()), Some(id.json()), "{out}");
    if let Reply::Left { room } = &answer {
        let written: String = serde_json::from_str(back["room"].get()).expect("room is a string");
        assert_eq!(written, room.as_str());
    }
}

// ---------------------------------------------------------------- WebSocket message decoder

/// The reader's message limit in these targets (`max_frame_bytes`).
pub const WS_MAX: usize = 1024;

/// One client frame: FIN, RSV bits, opcode, mask key (None: unmasked), payload.
pub fn ws_frame(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u8(((fin as u8) << 7) | ((rsv & 7) << 4) | (opcode & 0xf));
    let m = if mask.is_some() { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        b.put_u8(m | n as u8);
    } else if n <= 0xffff {
        b.put_u8(m | 126);
        b.put_u16(n as u16);
    } else {
        b.put_u8(m | 127);
        b.put_u64(n as u64);
    }
    match mask {
        Some(k) => {
            b.put_slice(&k);
            b.extend(payload.iter().enumerate().map(|(i, x)| x ^ k[i % 4]));
        }
        None => b.put_slice(payload),
    }
    b.to_vec()
}

/// Decodes everything in `bytes`, fed in chunks of `chunk` bytes; stops at the first error, as
/// the reader does.
pub fn ws_decode_all(bytes: &[u8], chunk: usize) -> (Vec<Message>, Option<ReadError>) {
    let mut dec = MessageDecoder::new(WS_MAX);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

/// The payload of a valid message of `payload`'s bytes, cut into fragments of `frag` bytes
/// with a ping between fragments: what [`ws_decoder`]'s second mode sends.
pub fn ws_fragmented(text: bool, payload: &[u8], frag: usize, mask: [u8; 4]) -> Vec<u8> {
    let parts: Vec<&[u8]> = if payload.is_empty() {
        vec![payload]
    } else {
        payload.chunks(frag.max(1)).collect()
    };
    let mut bytes = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let op = if i > 0 {
            0
        } else if text {
            1
        } else {
            2
        };
        bytes.extend(ws_frame(i + 1 == parts.len(), 0, op, Some(mask), p));
        if i + 1 < parts.len() {
            bytes.extend(ws_frame(true, 0, 9, Some(mask), b"p"));
        }
    }
    bytes
}

/// Input: `mode` then the rest. Mode bit 6 clear: the rest are client bytes, fed in chunks of
/// `(mode & 63) + 1` bytes; no panic and no message over the limit. Bit 6 set: the rest is
/// `frag` then a payload, sent as one valid masked message (text if bit 7, the payload made
/// UTF-8) in fragments of `frag + 1` bytes with pings between; it decodes to the payload (and a
/// pong for every ping), or `TooBig` over the limit.
pub fn ws_decoder(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunk = (mode & 63) as usize + 1;
    if mode & 64 == 0 {
        let (msgs, _) = ws_decode_all(rest, chunk);
        for m in msgs {
            match m {
                Message::Text(t) => assert!(t.len() <= WS_MAX),
                Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => {
                    assert!(b.len() <= WS_MAX)
                }
                Message::Close(_) => {}
            }
        }
        return;
    }
    let Some((&frag, payload)) = rest.split_first() else {
        return;
    };
    let text = mode & 128 != 0;
    let payload = if text {
        String::from_utf8_lossy(payload).into_owned().into_bytes()
    } else {
        payload.to_vec()
    };
    let mask = [frag, mode, 0x5a, 0xa5];
    let bytes = ws_fragmented(text, &payload, frag as usize + 1, mask);
    let (msgs, err) = ws_decode_all(&bytes, chunk);
    if payload.len() > WS_MAX {
        assert!(matches!(err, Some(ReadError::TooBig(WS_MAX))), "{err:?}");
        return;
    }
    assert!(err.is_none(), "{err:?}");
    let pings = payload.len().div_ceil(frag as usize + 1).max(1) - 1;
    assert_eq!(msgs.len(), pings + 1);
    assert!(
        msgs[..pings]
            .iter()
            .all(|m| *m == Message::Ping(b"p"[..].into()))
    );
    let want = if text {
        Message::Text(String::from_utf8(payload).expect("made UTF-8").into())
    } else {
        Message::Binary(payload.into())
    };
    assert_eq!(msgs.last(), Some(&want));
}

// ---------------------------------------------------------------- internode frame codec

/// Input: one frame's payload (after the length prefix). Checks: no panic; what decodes
/// re-encodes and decodes to the same frame, and refuses a trailing byte; the first 8 bytes,
/// read as a preamble, pass exactly when they hold the magic and the protocol version.
pub fn internode_codec(data: &[u8]) {
    if let Ok(f) = codec::decode(data) {
        let again = codec::encode(&f).expect("a decoded frame encodes");
        assert_eq!(codec::decode(&again).expect("re-encoded frame decodes"), f);
        let mut longer = again.to_vec();
        longer.push(0);
        assert!(
            codec::decode(&longer).is_err(),
            "a trailing byte is refused"
        );
    }
    if let Some(p) = data.first_chunk::<PREAMBLE_LEN>() {
        let ok = codec::check_preamble(p).is_ok();
        assert_eq!(ok, p[..6] == codec::preamble()[..6]);
    }
}

// ---------------------------------------------------------------- internode handshake

/// A node id from a string known to be valid.
pub fn node(s: &str) -> NodeId {
    NodeId::new(s).expect("a valid node id")
}

/// The handshake configuration of node `me` in cluster `c`.
pub fn icfg(me: &str, secret: Option<&[u8]>, encryption: bool) -> InternodeConfig {
    InternodeConfig {
        me: node(me),
        generation: 1,
        cluster_id: "c".into(),
        advertise: format!("{me}:9000"),
        secret: secret.map(ClusterSecret::from_bytes),
        encryption,
    }
}

/// The secret of the attacked sides (the attacker does not know it).
pub const RIGHT_SECRET: &[u8] = b"right-secret";
const WRONG_SECRET: &[u8] = b"wrong-secret";
const SERVER_NONCE: [u8; NONCE_LEN] = [7; NONCE_LEN];
const CLIENT_NONCE: [u8; NONCE_LEN] = [9; NONCE_LEN];

/// Cuts `data` into records `how:u8 len:u8 payload[len]` (the last one may be short).
fn records(mut data: &[u8]) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    while let [how, len, rest @ ..] = data {
        let n = (*len as usize).min(rest.len());
        out.push((*how, &rest[..n]));
        data = &rest[n..];
    }
    out
}

/// Input: `role` then the rest.
///
/// Role 0: a server with the secret reads the frames in the rest, records `how len payload`
/// (payload: an encoded frame; undecodable ones are skipped); `how % 4` = 1 makes a Hello
/// well-formed for the cluster, 2 replays the server's own challenge proof, 3 sends a proof
/// made with a wrong secret. The server must never accept, nor panic.
///
/// Role 1: a client with the secret reads the frames likewise (`how` 1: a Challenge from the
/// expected node, 2: with a wrong-secret proof, 3: an early Accept); it must never complete.
///
/// Role 2: two honest sides, secrets and modes from the rest (`flags sa_len sa[..] sb`; flags
/// bit 0/1: side a/b has no secret, bit 2/3: a/b encrypts): they complete exactly when their
/// secrets are the same key (HMAC pads keys with zeros: keys that differ only in trailing zero
/// bytes are one key) and, with a secret, their modes agree; then their session keys mirror
/// each other and a frame sealed by one side opens on the other.
pub fn internode_handshake(data: &[u8]) {
    let Some((&role, rest)) = data.split_first() else {
        return;
    };
    match role % 3 {
        0 => handshake_server_attacked(rest),
        1 => handshake_client_attacked(rest),
        _ => handshake_honest(rest),
    }
}

fn handshake_server_attacked(data: &[u8]) {
    let mut server = Server::new(icfg("srv", Some(RIGHT_SECRET), true), SERVER_NONCE);
    let wrong = ClusterSecret::from_bytes(WRONG_SECRET);
    // What the attacker saw: its Hello's node and nonce, the server's challenge proof.
    let mut hello: Option<(NodeId, [u8; NONCE_LEN])> = None;
    let mut proof_seen: Option<Option<[u8; 32]>> = None;
    for (how, payload) in records(data) {
        let Ok(f) = codec::decode(payload) else {
            continue;
        };
        let f = match (how % 4, f) {
            (
                1,
                Frame::Hello {
                    node_id,
                    generation,
                    nonce,
                    ..
                },
            ) => Frame::Hello {
                cluster_id: "c".into(),
                node_id,
                generation,
                cluster_addr: "x:1".into(),
                nonce,
                encryption: true,
            },
            (2, f) => match proof_seen {
                Some(proof) => Frame::Proof { proof },
                None => f,
            },
            (3, f) => match &hello {
                Some((client, cn)) => Frame::Proof {
                    proof: Some(codec::client_proof(
                        &wrong,
                        "c",
                        client,
                        &node("srv"),
                        cn,
                        &SERVER_NONCE,
                    )),
                },
                None => f,
            },
            (_, f) => f,
        };
        if let Frame::Hello { node_id, nonce, .. } = &f {
            hello = Some((node_id.clone(), *nonce));
        }
        match server.on_frame(f) {
            Ok(ServerStep::Accepted(..)) => panic!("accepted without the secret"),
            Ok(ServerStep::Send(Frame::Challenge { proof, .. })) => proof_seen = Some(proof),
            Ok(ServerStep::Send(_)) => {}
            Err(_) => break,
        }
    }
}

fn handshake_client_attacked(data: &[u8]) {
    let cfg = icfg("cli", Some(RIGHT_SECRET), true);
    let (mut client, _hello) = Client::start(cfg, node("srv"), CLIENT_NONCE);
    let wrong = ClusterSecret::from_bytes(WRONG_SECRET);
    for (how, payload) in records(data) {
        let Ok(f) = codec::decode(payload) else {
            continue;
        };
        let f = match (how % 4, f) {
            (
                h @ (1 | 2),
                Frame::Challenge {
                    generation,
                    nonce,
                    proof,
                    ..
                },
            ) => Frame::Challenge {
                node_id: node("srv"),
                generation,
                nonce,
                encryption: true,
                proof: if h == 2 {
                    Some(codec::server_proof(
                        &wrong,
                        "c",
                        &node("cli"),
                        &node("srv"),
                        &CLIENT_NONCE,
                        &nonce,
                    ))
                } else {
                    proof
                },
            },
            (3, _) => Frame::Accept,
            (_, f) => f,
        };
        match client.on_frame(f) {
            Ok(ClientStep::Done(_)) => panic!("completed without the secret"),
            Ok(ClientStep::Send(_)) => {}
            Err(_) => break,
        }
    }
}

fn handshake_honest(data: &[u8]) {
    let [flags, la, rest @ ..] = data else {
        return;
    };
    let la = (*la as usize).min(rest.len());
    let a = (flags & 1 == 0).then_some(&rest[..la]);
    let b = (flags & 2 == 0).then_some(&rest[la..]);
    let (enc_a, enc_b) = (flags & 4 != 0, flags & 8 != 0);
    let (mut c, hello) = Client::start(icfg("cli", a, enc_a), node("srv"), CLIENT_NONCE);
    let mut s = Server::new(icfg("srv", b, enc_b), SERVER_NONCE);
    let done = (|| {
        let Ok(ServerStep::Send(ch)) = s.on_frame(hello) else {
            return None;
        };
        let Ok(ClientStep::Send(proof)) = c.on_frame(ch) else {
            return None;
        };
        let Ok(ServerStep::Accepted(acc, server_side)) = s.on_frame(proof) else {
            return None;
        };
        match c.on_frame(acc) {
            Ok(ClientStep::Done(client_side)) => Some((client_side, server_side)),
            _ => None,
        }
    })();
    let key = |k: Option<&[u8]>| {
        k.map(|k| {
            let n = k.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            k[..n].to_vec()
        })
    };
    let should = key(a) == key(b) && (a.is_none() || enc_a == enc_b);
    assert_eq!(
        done.is_some(),
        should,
        "a={a:?} b={b:?} enc={enc_a}/{enc_b}"
    );
    let Some((client_side, server_side)) = done else {
        return;
    };
    assert_eq!(client_side.node, node("srv"));
    assert_eq!(server_side.node, node("cli"));
    match (client_side.keys, server_side.keys) {
        (None, None) => assert!(a.is_none()),
        (Some(ck), Some(sk)) => {
            assert!(ck.send == sk.recv && ck.recv == sk.send && ck.send != ck.recv);
            assert_eq!((ck.encrypt, sk.encrypt), (enc_a, enc_b));
            // A frame sealed by the client opens on the server, once.
            let payload = codec::encode(&Frame::Accept).expect("encodes");
            let mut buf = BytesMut::from(&payload[..]);
            ck.sealer().seal(&mut buf, 0).expect("seals");
            let mut copy = buf.clone();
            let mut opener = sk.opener();
            assert_eq!(opener.open(&mut buf).expect("opens"), &payload[..]);
            assert!(opener.open(&mut copy).is_err(), "a replay is refused");
        }
        (ck, sk) => panic!("keys on one side only: {ck:?} {sk:?}"),
    }
}

// ---------------------------------------------------------------- gossip datagram check

/// The secret of the gossip target.
pub const GOSSIP_SECRET: &[u8] = b"gossip-secret";

/// Input: `at:u16be x:u8 cut:u16be stamp:u64be id:u64be` then an envelope. Checks: the input
/// itself, taken as a datagram, never passes the check (it has no tag for the secret); the
/// envelope sealed with `stamp` and `id` opens to itself with its stamp; with byte `at` changed
/// by `x`, cut to `cut` bytes, or under another secret it is dropped.
pub fn gossip_datagram(data: &[u8]) {
    let s = ClusterSecret::from_bytes(GOSSIP_SECRET);
    assert_eq!(
        open_datagram(&s, data),
        None,
        "a datagram without a tag passed"
    );
    let Some((head, body)) = data.split_first_chunk::<21>() else {
        return;
    };
    let at = u16::from_be_bytes([head[0], head[1]]) as usize;
    let x = head[2].max(1);
    let cut = u16::from_be_bytes([head[3], head[4]]) as usize;
    let stamp = u64::from_be_bytes(head[5..13].try_into().expect("8 bytes"));
    let id = u64::from_be_bytes(head[13..21].try_into().expect("8 bytes"));
    let mut buf = body.to_vec();
    buf.resize(body.len() + OVERHEAD, 0);
    let n = seal_datagram(&s, &mut buf, body.len(), stamp, id);
    let d = &buf[..n];
    let opened = open_datagram(&s, d).expect("a sealed datagram opens");
    assert_eq!(opened.envelope, body.len());
    assert_eq!(opened.stamp, stamp);
    assert_eq!(&d[..opened.envelope], body);
    assert_eq!(open_datagram(&ClusterSecret::from_bytes(b"other"), d), None);
    let mut bad = d.to_vec();
    bad[at % n] ^= x;
    assert_eq!(open_datagram(&s, &bad), None, "byte {} changed", at % n);
    assert_eq!(open_datagram(&s, &d[..cut % n]), None, "cut to {}", cut % n);
}

// ---------------------------------------------------------------- config loader

/// Input: a config file's text, then environment variables, each after a NUL byte as
/// `OPTION=value` (without the `ROOMCAST_` prefix); invalid UTF-8 is replaced. Checks: no
/// panic; `Ok` or an error that names the option or says what is wrong; never a file error
/// (no file is read).
pub fn config_loader(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let toml = parts.next().unwrap_or_default();
    let env: Vec<(String, String)> = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    match Config::load_from_text(toml, &env) {
        Ok(_) => {}
        Err(ConfigError::Invalid { option, .. }) => assert!(!option.is_empty()),
        Err(ConfigError::Other(m)) => assert!(!m.is_empty()),
        Err(e @ ConfigError::File { .. }) => panic!("no file is read: {e}"),
    }
}
