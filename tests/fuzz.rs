//! Property-based fuzzing of the inputs a peer or an operator controls (issue 13, item 4):
//! the client request parser, the WebSocket frame decoder, the internode frame decoder and
//! handshake, the gossip datagram check and the config loader. Each gets arbitrary bytes and
//! structure-aware inputs (valid ones, then mutated), must never panic, and must keep a real
//! property. Cases per property: `PROPTEST_CASES` (default 256 here, a few seconds in a debug
//! build); `scripts/fuzz.sh MINUTES` runs them for long. Failures are saved under
//! `tests/fuzz.proptest-regressions` and replayed first on every run.
//!
//! The coverage-guided (AFL) targets of the same inputs live in the `fuzz/` crate; their code,
//! `fuzz/src/targets.rs`, is compiled here too, and `fuzz_corpora_and_regressions_replay` feeds
//! it every committed seed (`fuzz/corpus/`) and crash regression (`tests/fuzz-regressions/`).

#[path = "../fuzz/src/targets.rs"]
mod targets;

use proptest::prelude::*;
use roomcast::cluster::ClusterSecret;
use roomcast::cluster::transport::{OVERHEAD, open_datagram, seal_datagram};
use roomcast::config::{Config, ConfigError};
use roomcast::ids::NodeId;
use roomcast::internode::codec::{self, Control, Frame, NONCE_LEN};
use roomcast::internode::handshake::{Client, ClientStep, Server, ServerStep};
use roomcast::protocol::{ErrorCode, Op, ParseLimits, parse_request};
use roomcast::socket::reader::{Message, ReadError};
use targets::{WS_MAX, icfg, node, ws_decode_all, ws_frame};

fn config() -> ProptestConfig {
    // Cases: PROPTEST_CASES, else 256 (the whole file then runs in well under a second).
    // Failing inputs are saved in tests/fuzz.proptest-regressions and replayed first.
    ProptestConfig {
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------- client request parser

const LIMITS: ParseLimits = ParseLimits {
    max_data_bytes: 256,
};

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
        "[a-z0-9:._-]{0,10}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request-shaped object: a real op and the protocol's fields, each with a value of a random
/// type (or a plausible one).
fn request_object() -> impl Strategy<Value = serde_json::Map<String, serde_json::Value>> {
    let op = prop_oneof![
        Just("join"),
        Just("leave"),
        Just("publish"),
        Just("history"),
        Just("ping"),
        Just("presence"),
        Just("auth"),
        Just("refresh"),
        Just("nope"),
    ];
    let field = |plausible: BoxedStrategy<serde_json::Value>| {
        prop::option::of(prop_oneof![3 => plausible, 1 => json_value()])
    };
    let room = "[A-Za-z0-9_.:-]{1,12}"
        .prop_map(serde_json::Value::from)
        .boxed();
    let num = any::<u32>().prop_map(serde_json::Value::from).boxed();
    let tok = "[a-z]{0,8}".prop_map(serde_json::Value::from).boxed();
    let flag = any::<bool>().prop_map(serde_json::Value::from).boxed();
    (
        prop::option::of(json_value()),
        op,
        field(room),
        field(num.clone()),
        field(num),
        field(json_value().boxed()),
        field(tok.clone()),
        field(tok),
        field(flag.clone()),
        field(flag),
    )
        .prop_map(
            |(id, op, room, since, limit, data, key, token, presence, events)| {
                let mut m = serde_json::Map::new();
                m.insert("op".into(), op.into());
                for (k, v) in [
                    ("id", id),
                    ("room", room),
                    ("since", since),
                    ("limit", limit),
                    ("data", data),
                    ("key", key),
                    ("token", token),
                    ("presence", presence),
                    ("presence_events", events),
                ] {
                    if let Some(v) = v {
                        m.insert(k.into(), v);
                    }
                }
                m
            },
        )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn request_parser_takes_any_text(text in ".{0,200}") {
        let _ = parse_request(&text, LIMITS);
    }

    #[test]
    fn request_parser_takes_any_utf8_bytes(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_request(&text, LIMITS);
    }

    /// Every reply to an object with an `id` echoes that id exactly; a publish keeps `data`
    /// verbatim; `data` over the limit is TooLarge.
    #[test]
    fn request_parser_echoes_the_id(obj in request_object()) {
        let text = serde_json::Value::Object(obj.clone()).to_string();
        let id = obj.get("id").map(|v| v.to_string());
        let got = match parse_request(&text, LIMITS) {
            Ok(r) => {
                if let Op::Publish { data, .. } = r.op {
                    let want = obj["data"].to_string();
                    prop_assert_eq!(data, want.as_str());
                }
                r.id
            }
            Err(e) => {
                if e.code == ErrorCode::TooLarge {
                    prop_assert!(obj["data"].to_string().len() > LIMITS.max_data_bytes);
                }
                e.id
            }
        };
        prop_assert_eq!(got.json(), id.as_deref().unwrap_or("null"));
    }

    /// A valid request with one byte changed, cut or duplicated: never a panic.
    #[test]
    fn request_parser_takes_mutated_requests(
        obj in request_object(), at in any::<prop::sample::Index>(), b in any::<u8>(), how in 0..3u8,
    ) {
        let mut bytes = serde_json::Value::Object(obj).to_string().into_bytes();
        let i = at.index(bytes.len());
        match how {
            0 => bytes[i] = b,
            1 => bytes.truncate(i),
            _ => { let x = bytes[i]; bytes.insert(i, x) }
        }
        let _ = parse_request(&String::from_utf8_lossy(&bytes), LIMITS);
    }
}

// ---------------------------------------------------------------- WebSocket frame decoder

fn ws_any_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop_oneof![8 => Just(0u8), 1 => 0..8u8],
        prop_oneof![
            Just(0u8),
            Just(1),
            Just(2),
            Just(8),
            Just(9),
            Just(10),
            0..16u8
        ],
        prop_oneof![8 => any::<[u8; 4]>().prop_map(Some), 1 => Just(None)],
        prop_oneof![
            8 => prop::collection::vec(any::<u8>(), 0..140),
            1 => prop::collection::vec(any::<u8>(), 1000..1100),
        ],
    )
        .prop_map(|(fin, rsv, op, mask, p)| ws_frame(fin, rsv, op, mask, &p))
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn ws_decoder_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..300), chunk in 1..64usize) {
        let _ = ws_decode_all(&bytes, chunk);
    }

    /// Sequences of frames of any opcode, flags and size (fragments, control frames,
    /// continuations out of place, unmasked frames), whole or cut/mutated: never a panic, and
    /// no message is ever over the limit.
    #[test]
    fn ws_decoder_takes_frame_sequences(
        frames in prop::collection::vec(ws_any_frame(), 0..6),
        chunk in 1..200usize,
        flip in prop::option::of((any::<prop::sample::Index>(), any::<u8>())),
    ) {
        let mut bytes = frames.concat();
        if let Some((at, b)) = flip && !bytes.is_empty() {
            let i = at.index(bytes.len());
            bytes[i] ^= b;
        }
        let (msgs, _) = ws_decode_all(&bytes, chunk);
        for m in msgs {
            match m {
                Message::Text(t) => prop_assert!(t.len() <= WS_MAX),
                Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => prop_assert!(b.len() <= WS_MAX),
                Message::Close(_) => {}
            }
        }
    }

    /// A valid masked text or binary message, whole or in fragments with pings between,
    /// decodes to its payload whatever the chunking; over the limit it is TooBig.
    #[test]
    fn ws_valid_masked_message_decodes_to_its_payload(
        text in any::<bool>(),
        payload in prop::collection::vec(any::<u8>(), 0..1300),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        mask in any::<[u8; 4]>(),
        chunk in 1..300usize,
    ) {
        let payload = if text { String::from_utf8_lossy(&payload).into_owned().into_bytes() } else { payload };
        let mut at: Vec<usize> = cuts.iter().map(|c| c.index(payload.len() + 1)).collect();
        at.sort_unstable();
        at.dedup();
        at.retain(|&i| i > 0 && i < payload.len());
        let mut bounds = vec![0];
        bounds.extend(at);
        bounds.push(payload.len());
        let parts: Vec<&[u8]> = bounds.windows(2).map(|w| &payload[w[0]..w[1]]).collect();
        let mut bytes = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            let op = if i > 0 { 0 } else if text { 1 } else { 2 };
            bytes.extend(ws_frame(i + 1 == parts.len(), 0, op, Some(mask), p));
            if i + 1 < parts.len() {
                bytes.extend(ws_frame(true, 0, 9, Some(mask), b"p"));
            }
        }
        let (msgs, err) = ws_decode_all(&bytes, chunk);
        if payload.len() > WS_MAX {
            prop_assert!(matches!(err, Some(ReadError::TooBig(WS_MAX))), "{:?}", err);
        } else {
            prop_assert!(err.is_none(), "{:?}", err);
            prop_assert_eq!(msgs.len(), parts.len());
            let want = if text {
                Message::Text(String::from_utf8(payload).unwrap().into())
            } else {
                Message::Binary(payload.into())
            };
            prop_assert_eq!(msgs.last(), Some(&want));
        }
    }
}

// ---------------------------------------------------------------- internode codec

fn internode_frame() -> impl Strategy<Value = Frame> {
    let s = || ".{0,16}";
    let id = || "[a-z0-9-]{1,12}".prop_map(|s| node(&s));
    prop_oneof![
        (
            s(),
            id(),
            any::<u64>(),
            s(),
            any::<[u8; NONCE_LEN]>(),
            any::<bool>()
        )
            .prop_map(
                |(cluster_id, node_id, generation, cluster_addr, nonce, encryption)| Frame::Hello {
                    cluster_id,
                    node_id,
                    generation,
                    cluster_addr,
                    nonce,
                    encryption,
                }
            ),
        (
            id(),
            any::<u64>(),
            any::<[u8; NONCE_LEN]>(),
            any::<Option<[u8; 32]>>(),
            any::<bool>()
        )
            .prop_map(
                |(node_id, generation, nonce, proof, encryption)| Frame::Challenge {
                    node_id,
                    generation,
                    nonce,
                    proof,
                    encryption
                }
            ),
        any::<Option<[u8; 32]>>().prop_map(|proof| Frame::Proof { proof }),
        Just(Frame::Accept),
        s().prop_map(|reason| Frame::Reject { reason }),
        (s(), s()).prop_map(|(u, reason)| match roomcast::ids::UserId::new(&u) {
            Ok(user) => Frame::Control(Control::Disconnect { user, reason }),
            Err(_) => Frame::Reject { reason },
        }),
        (any::<u64>(), s(), s(), any::<u32>()).prop_map(|(id, prefix, after, limit)| {
            Frame::Control(Control::RoomsQuery {
                id,
                prefix,
                after,
                limit,
            })
        }),
        (
            any::<u64>(),
            prop::collection::vec(("[a-z]{1,8}", any::<u64>()), 0..4)
        )
            .prop_map(|(id, rooms)| Frame::Control(Control::RoomsReply {
                id,
                rooms: rooms
                    .into_iter()
                    .map(|(r, n)| (roomcast::ids::RoomId::new(&r).unwrap(), n))
                    .collect(),
            })),
    ]
}

proptest! {
    #![proptest_config(config())]

    /// Arbitrary payloads: an error or a frame that encodes back to the same bytes.
    #[test]
    fn internode_decode_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(f) = codec::decode(&bytes) {
            let again = codec::encode(&f).unwrap();
            prop_assert_eq!(codec::decode(&again).unwrap(), f);
        }
    }

    #[test]
    fn internode_frames_round_trip(f in internode_frame()) {
        let bytes = codec::encode(&f).unwrap();
        prop_assert_eq!(codec::decode(&bytes).unwrap(), f.clone());
        // Trailing bytes are refused.
        let mut longer = bytes.to_vec();
        longer.push(0);
        prop_assert!(codec::decode(&longer).is_err());
    }

    /// Valid frames mutated (byte changed, cut, bytes inserted): never a panic, and whatever
    /// decodes re-encodes to itself.
    #[test]
    fn internode_decode_takes_mutated_frames(
        f in internode_frame(), at in any::<prop::sample::Index>(), b in any::<u8>(), how in 0..3u8,
        ins in prop::collection::vec(any::<u8>(), 1..10),
    ) {
        let mut bytes = codec::encode(&f).unwrap().to_vec();
        let i = at.index(bytes.len());
        match how {
            0 => bytes[i] ^= b | 1,
            1 => bytes.truncate(i),
            _ => { bytes.splice(i..i, ins); }
        }
        if let Ok(g) = codec::decode(&bytes) {
            let again = codec::encode(&g).unwrap();
            prop_assert_eq!(codec::decode(&again).unwrap(), g);
        }
    }

    #[test]
    fn internode_preamble_check(p in any::<[u8; 8]>()) {
        let ok = codec::check_preamble(&p).is_ok();
        prop_assert_eq!(ok, p[..6] == codec::preamble()[..6]);
    }
}

// ---------------------------------------------------------------- internode handshake

/// What the attacker saw: its node id, its nonce, the server's nonce and proof.
type Seen = (NodeId, [u8; NONCE_LEN], [u8; NONCE_LEN], Option<[u8; 32]>);

/// A frame an attacker without the secret can send: arbitrary, or built from what it has seen
/// (the server's own challenge and proof replayed, proofs computed with a wrong secret).
fn attacker_frame() -> impl Strategy<Value = (u8, Frame)> {
    (0..4u8, internode_frame())
}

proptest! {
    #![proptest_config(config())]

    /// A server with a secret, fed any frames in any order by a client without it (which may
    /// replay the server's own challenge proof, or prove with a wrong secret): it never
    /// accepts, and never panics.
    #[test]
    fn handshake_server_never_accepts_without_the_secret(
        frames in prop::collection::vec(attacker_frame(), 0..6),
        server_nonce in any::<[u8; NONCE_LEN]>(),
    ) {
        let mut server = Server::new(icfg("srv", Some(b"right-secret"), true), server_nonce);
        let wrong = ClusterSecret::from_bytes(b"wrong-secret");
        let mut seen: Option<Seen> = None;
        let mut last_hello: Option<(NodeId, [u8; NONCE_LEN])> = None;
        for (how, f) in frames {
            let f = match (how, &f, &seen) {
                // A well-formed Hello for this cluster.
                (1, Frame::Hello { node_id, nonce, generation, .. }, _) => Frame::Hello {
                    cluster_id: "c".into(), node_id: node_id.clone(), generation: *generation,
                    cluster_addr: "x:1".into(), nonce: *nonce, encryption: true,
                },
                // Replay the server's own proof as ours.
                (2, _, Some((_, _, _, proof))) => Frame::Proof { proof: *proof },
                // A proof made with a wrong secret over the right inputs.
                (3, _, Some((client, cn, sn, _))) => Frame::Proof {
                    proof: Some(codec::client_proof(&wrong, "c", client, &node("srv"), cn, sn)),
                },
                _ => f,
            };
            if let Frame::Hello { node_id, nonce, .. } = &f {
                last_hello = Some((node_id.clone(), *nonce));
            }
            match server.on_frame(f) {
                Ok(ServerStep::Accepted(..)) => prop_assert!(false, "accepted without the secret"),
                Ok(ServerStep::Send(Frame::Challenge { nonce, proof, .. })) => {
                    let (client, cn) = last_hello.clone().unwrap();
                    seen = Some((client, cn, nonce, proof));
                }
                Ok(ServerStep::Send(_)) => {}
                Err(_) => break,
            }
        }
    }

    /// A client with a secret, fed any server frames in any order (a Challenge with a random
    /// or wrong-secret proof, an early Accept): it never completes, and never panics.
    #[test]
    fn handshake_client_never_completes_without_the_secret(
        frames in prop::collection::vec(attacker_frame(), 0..6),
        client_nonce in any::<[u8; NONCE_LEN]>(),
    ) {
        let (mut client, _hello) = Client::start(icfg("cli", Some(b"right-secret"), true), node("srv"), client_nonce);
        let wrong = ClusterSecret::from_bytes(b"wrong-secret");
        for (how, f) in frames {
            let f = match (how, f) {
                (1 | 2, Frame::Challenge { generation, nonce, proof, .. }) => Frame::Challenge {
                    node_id: node("srv"), generation, nonce, encryption: true,
                    proof: if how == 2 {
                        Some(codec::server_proof(&wrong, "c", &node("cli"), &node("srv"), &client_nonce, &nonce))
                    } else { proof },
                },
                (3, _) => Frame::Accept,
                (_, f) => f,
            };
            match client.on_frame(f) {
                Ok(ClientStep::Done(_)) => prop_assert!(false, "completed without the secret"),
                Ok(ClientStep::Send(_)) => {}
                Err(_) => break,
            }
        }
    }

    /// Two honest sides complete with the same secret (or none), and not with different ones.
    #[test]
    fn handshake_completes_exactly_when_secrets_match(
        a in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        b in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
        cn in any::<[u8; NONCE_LEN]>(), sn in any::<[u8; NONCE_LEN]>(),
    ) {
        let (mut c, hello) = Client::start(icfg("cli", a.as_deref(), true), node("srv"), cn);
        let mut s = Server::new(icfg("srv", b.as_deref(), true), sn);
        let done = (|| {
            let Ok(ServerStep::Send(ch)) = s.on_frame(hello) else { return false };
            let Ok(ClientStep::Send(proof)) = c.on_frame(ch) else { return false };
            let Ok(ServerStep::Accepted(acc, _)) = s.on_frame(proof) else { return false };
            matches!(c.on_frame(acc), Ok(ClientStep::Done(_)))
        })();
        // HMAC pads keys with zero bytes: keys that differ only by trailing zeros are the same
        // key (found by this test; real secrets are >= 16 bytes of trimmed file text).
        let key = |k: &Option<Vec<u8>>| k.as_ref().map(|k| {
            let n = k.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            k[..n].to_vec()
        });
        prop_assert_eq!(done, key(&a) == key(&b));
    }
}

// ---------------------------------------------------------------- gossip datagram check

proptest! {
    #![proptest_config(config())]

    #[test]
    fn gossip_check_takes_any_datagram(
        d in prop::collection::vec(any::<u8>(), 0..100), key in prop::collection::vec(any::<u8>(), 0..40),
    ) {
        let s = ClusterSecret::from_bytes(&key);
        // Without the datagram's tag (2^-256 to guess) nothing passes, and nothing panics.
        prop_assert_eq!(open_datagram(&s, &d), None);
    }

    /// A sealed envelope opens to itself with its stamp; any changed byte, a cut, or another
    /// secret drops it.
    #[test]
    fn gossip_sealed_datagram_opens_and_tampering_drops_it(
        body in prop::collection::vec(any::<u8>(), 0..200), stamp in any::<u64>(), id in any::<u64>(),
        at in any::<prop::sample::Index>(), x in 1..=255u8, cut in any::<prop::sample::Index>(),
    ) {
        let s = ClusterSecret::from_bytes(b"gossip-secret");
        let mut buf = body.clone();
        buf.resize(body.len() + OVERHEAD, 0);
        let n = seal_datagram(&s, &mut buf, body.len(), stamp, id);
        let d = &buf[..n];
        let opened = open_datagram(&s, d).expect("a sealed datagram opens");
        prop_assert_eq!(opened.envelope, body.len());
        prop_assert_eq!(opened.stamp, stamp);
        prop_assert_eq!(&d[..opened.envelope], &body[..]);
        prop_assert_eq!(open_datagram(&ClusterSecret::from_bytes(b"other"), d), None);
        let mut bad = d.to_vec();
        let i = at.index(bad.len());
        bad[i] ^= x;
        prop_assert_eq!(open_datagram(&s, &bad), None);
        let k = cut.index(d.len());
        prop_assert_eq!(open_datagram(&s, &d[..k]), None);
    }
}

// ---------------------------------------------------------------- config loader

/// A TOML value of any type.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u32>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        any::<bool>().prop_map(|v| v.to_string()),
        "[ -~]{0,12}".prop_map(|s| format!("{s:?}")),
        prop_oneof![
            Just("\"1s\""),
            Just("\"500ms\""),
            Just("\"0s\""),
            Just("\"127.0.0.1:0\""),
            Just("\"[::1]:80\"")
        ]
        .prop_map(String::from),
        prop::collection::vec(any::<u16>(), 0..3).prop_map(|v| format!("{v:?}")),
        Just("{ a = 1 }".to_string()),
    ]
}

fn option_name() -> impl Strategy<Value = String> {
    let keys = Config::keys();
    prop_oneof![
        6 => prop::sample::select(keys),
        1 => "[a-z_]{1,12}",
    ]
}

fn env_value() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        Just("1s".to_string()),
        Just("true".into()),
        Just("[1, 2]".into()),
        Just("a,b".into()),
        "[ -~]{0,12}",
        ".{0,12}",
        // Quoted, with escapes and non-ASCII characters: figment 0.10.19 panicked on some
        // (`figment_env_unescape_panics` below, docs/FUZZING.md).
        "(\\\\[\"\\\\nt0u]|[ -~]|\\PC){0,8}".prop_map(|s| format!("\"{s}\"")),
    ]
}

fn check_config(r: Result<Config, ConfigError>) -> Result<(), TestCaseError> {
    match r {
        Ok(_) => {}
        Err(ConfigError::Invalid { option, .. }) => prop_assert!(!option.is_empty()),
        Err(ConfigError::Other(m)) => prop_assert!(!m.is_empty()),
        Err(e @ ConfigError::File { .. }) => prop_assert!(false, "no file is read: {e}"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_takes_any_text(text in ".{0,200}") {
        check_config(Config::load_from_text(&text, &[]))?;
    }

    /// Real option names (and some unknown ones) with values of every TOML type, from the file
    /// and the environment: Ok, or an error that names the option.
    #[test]
    fn config_takes_any_typed_values(
        file in prop::collection::vec((option_name(), toml_value()), 0..6),
        env in prop::collection::vec((option_name(), env_value()), 0..4),
    ) {
        let mut text = String::new();
        let mut seen = std::collections::HashSet::new();
        for (k, v) in &file {
            if seen.insert(k.clone()) {
                text.push_str(&format!("{k} = {v}\n"));
            }
        }
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_uppercase(), v)).collect();
        let r = Config::load_from_text(&text, &env);
        if let Err(ConfigError::Invalid { option, .. }) = &r {
            // A value of the wrong shape is named by its path (`auth.a` for `auth = { a = 1 }`).
            let option = option.split('.').next().unwrap_or_default();
            let named = file.iter().map(|(k, _)| k).chain(env.iter().map(|(k, _)| k))
                .any(|k| k.eq_ignore_ascii_case(option));
            // A relation between options may name one that was left at its default.
            prop_assert!(named || Config::keys().iter().any(|k| k == option), "{:?}", r.as_ref().err());
        }
        check_config(r)?;
    }
}

#[test]
fn config_from_text_reads_the_file_and_env_layers() {
    let c = Config::load_from_text(
        "max_data_bytes = 1000\n",
        &[
            ("HISTORY_MAX_MESSAGES".into(), "7".into()),
            ("SERVICE_HOST".into(), "x".into()),
        ],
    )
    .unwrap();
    assert_eq!(c.max_data_bytes, 1000);
    assert_eq!(c.history_max_messages, 7);
    let e = Config::load_from_text("max_data_bytes = \"lots\"\n", &[]).unwrap_err();
    assert!(e.to_string().contains("max_data_bytes"), "{e}");
}

/// Found by `config_takes_any_typed_values`: figment 0.10.19's unescaping of a quoted env value
/// slices a string at a byte index inside a multi-byte character and panics, so
/// `ROOMCAST_ADVERTISE='"¡\0"' roomcast serve` panicked at start-up instead of printing a config
/// error. Fixed by refusing such values before figment parses them (`config::check_env_value`).
#[test]
fn figment_env_unescape_panics() {
    let r = Config::load_from_text("", &[("ADVERTISE".into(), "\"\u{a1}\\0\"".into())]);
    match r {
        Err(ConfigError::Invalid { option, origin, .. }) => {
            assert_eq!(option, "advertise");
            assert!(origin.contains("ROOMCAST_ADVERTISE"), "{origin}");
        }
        other => panic!("{other:?}"),
    }
}

// ---------------------------------------------------------------- AFL corpora and crashes

/// Every committed seed of the AFL targets (`fuzz/corpus/<target>/*`) and every crash they
/// found (`tests/fuzz-regressions/<target>/*`, minimised; the bug fixed) goes through the same
/// target function as under AFL: a crash that comes back fails here, in every `cargo test`.
#[test]
fn fuzz_corpora_and_regressions_replay() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (name, target) in targets::TARGETS {
        let mut seeds = 0;
        for dir in ["fuzz/corpus", "tests/fuzz-regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(name)) else {
                continue;
            };
            for e in entries {
                let path = e.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let r = std::panic::catch_unwind(|| target(&bytes));
                assert!(r.is_ok(), "{} fails {name}", path.display());
                seeds += usize::from(dir == "fuzz/corpus");
            }
        }
        assert!(seeds > 0, "no seed corpus for {name} in fuzz/corpus/{name}");
    }
}
