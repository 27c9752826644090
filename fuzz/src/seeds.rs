//! The seed corpora: small valid inputs of every target, in the layout its function reads
//! (`targets.rs`), from which AFL's mutations start, and dictionaries of the tokens of the
//! text formats. `cargo run --bin seeds` writes them to `fuzz/corpus/<target>/` and
//! `fuzz/dict/<target>.dict`, where they are committed (the seeds are replayed by `cargo test`).

use crate::targets::{GOSSIP_SECRET, RIGHT_SECRET, icfg, node, ws_frame};
use roomcast::internode::codec::{self, Frame, NONCE_LEN};
use roomcast::internode::handshake::{Client, ClientStep, Server, ServerStep};

/// `(target, file name, bytes)` of every seed.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut add = |target: &'static str, items: Vec<(&str, Vec<u8>)>| {
        for (name, bytes) in items {
            out.push((target, name.to_string(), bytes));
        }
    };
    add("request_parser", requests());
    add("ws_decoder", ws());
    add("internode_codec", internode_frames());
    add("internode_handshake", handshakes());
    add("gossip_datagram", gossip());
    add("config_loader", configs());
    out
}

/// `(target, tokens)`: AFL dictionaries (`-x`) for the targets that read text.
pub fn dictionaries() -> Vec<(&'static str, Vec<String>)> {
    let json = [
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\"",
        "\\",
        "\\u",
        "\\ud800",
        "true",
        "false",
        "null",
        "-",
        "0",
        "1e9",
        "1.5",
        "18446744073709551616",
        "\"id\"",
        "\"op\"",
        "\"room\"",
        "\"since\"",
        "\"epoch\"",
        "\"limit\"",
        "\"data\"",
        "\"key\"",
        "\"token\"",
        "\"presence\"",
        "\"presence_events\"",
        "\"join\"",
        "\"leave\"",
        "\"publish\"",
        "\"history\"",
        "\"ping\"",
        "\"auth\"",
        "\"refresh\"",
    ];
    let mut config: Vec<String> = roomcast::config::Config::keys();
    let env: Vec<String> = config
        .iter()
        .map(|k| format!("\0{}=", k.to_uppercase()))
        .collect();
    config.extend(env);
    config.extend(
        [
            "=",
            "\"",
            "'",
            "[",
            "]",
            "{",
            "}",
            "\n",
            "\\",
            "\\u",
            "true",
            "false",
            "0",
            "\"1s\"",
            "\"127.0.0.1:0\"",
            "\"[::1]:80\"",
            "[[",
            "]]",
            "\"\"\"",
            "#",
            "\u{e9}",
        ]
        .map(String::from),
    );
    vec![
        ("request_parser", json.map(String::from).to_vec()),
        ("config_loader", config),
    ]
}

/// One token as a line of an AFL dictionary: `"..."`, with `"`, `\` and bytes outside
/// printable ASCII escaped as `\xNN`.
pub fn dict_line(token: &str) -> String {
    let mut s = String::from("\"");
    for &b in token.as_bytes() {
        match b {
            b'"' | b'\\' => s.push_str(&format!("\\{}", b as char)),
            b' '..=b'~' => s.push(b as char),
            _ => s.push_str(&format!("\\x{b:02x}")),
        }
    }
    s.push('"');
    s
}

fn requests() -> Vec<(&'static str, Vec<u8>)> {
    [
        ("join", r#"{"id":1,"op":"join","room":"chat:lobby"}"#),
        (
            "join-since",
            r#"{"id":"a","op":"join","room":"r.1","since":41,"epoch":"18f-3a","presence":true,"presence_events":true,"token":"x.y.z"}"#,
        ),
        ("leave", r#"{"id":[1,{"k":null}],"op":"leave","room":"r"}"#),
        (
            "publish",
            r#"{"id":2.5e3,"op":"publish","room":"r","data":{"text":"h\u00e9llo","n":[1,2]},"key":"k1"}"#,
        ),
        ("publish-null", r#"{"op":"publish","room":"r","data":null}"#),
        ("history", r#"{"id":3,"op":"history","room":"r","since":0,"limit":10}"#),
        ("ping", r#"{"id":null,"op":"ping"}"#),
        ("presence", r#"{"id":4,"op":"presence","room":"r"}"#),
        ("auth", r#"{"id":5,"op":"auth","token":"eyJ.eyJ.sig"}"#),
        ("refresh", r#"{"id":6,"op":"refresh","token":"t"}"#),
        ("unknown-op", r#"{"id":7,"op":"nope","extra":true}"#),
        ("bad-room", r#"{"id":8,"op":"join","room":"a b"}"#),
        ("not-object", r#"[1,"op"]"#),
        ("dup-field", r#"{"id":1,"id":2,"op":"ping"}"#),
    ]
    .into_iter()
    .map(|(n, t)| (n, t.as_bytes().to_vec()))
    .chain([(
        "too-large",
        format!(
            r#"{{"id":9,"op":"publish","room":"r","data":"{}"}}"#,
            "x".repeat(300)
        )
        .into_bytes(),
    )])
    .collect()
}

fn ws() -> Vec<(&'static str, Vec<u8>)> {
    let m = Some([1, 2, 3, 4]);
    let raw = |chunk: u8, frames: Vec<Vec<u8>>| [vec![chunk & 63], frames.concat()].concat();
    vec![
        ("text", raw(63, vec![ws_frame(true, 0, 1, m, b"hello")])),
        (
            "binary",
            raw(7, vec![ws_frame(true, 0, 2, m, &[0, 1, 2, 255])]),
        ),
        (
            "fragments-ping",
            raw(
                2,
                vec![
                    ws_frame(false, 0, 1, m, b"hel"),
                    ws_frame(true, 0, 9, m, b"p"),
                    ws_frame(true, 0, 0, m, "lo \u{e9}".as_bytes()),
                ],
            ),
        ),
        (
            "close",
            raw(63, vec![ws_frame(true, 0, 8, m, &[0x03, 0xe8, b'b', b'y'])]),
        ),
        ("pong", raw(63, vec![ws_frame(true, 0, 10, m, b"")])),
        ("len16", raw(40, vec![ws_frame(true, 0, 2, m, &[7; 200])])),
        (
            "too-big",
            raw(63, vec![ws_frame(true, 0, 2, m, &[7; 1100])]),
        ),
        ("unmasked", raw(63, vec![ws_frame(true, 0, 1, None, b"hi")])),
        ("rsv", raw(63, vec![ws_frame(true, 4, 1, m, b"hi")])),
        (
            "valid-text",
            [&[0x80 | 64 | 5, 3][..], "h\u{e9}llo, w\u{f6}rld".as_bytes()].concat(),
        ),
        (
            "valid-binary",
            [&[64 | 1, 0][..], &[0, 1, 2, 3, 4][..]].concat(),
        ),
    ]
}

fn frame(json: &str) -> Frame {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("seed frame {json}: {e}"))
}

fn encoded(f: &Frame) -> Vec<u8> {
    codec::encode(f).expect("a seed frame encodes").to_vec()
}

fn internode_frames() -> Vec<(&'static str, Vec<u8>)> {
    const E: &str = r#""epoch":"18f3a2-1""#;
    let hist = r#"[{"seq":1,"accepted_us":5,"frame":"{\"type\":\"event\"}"}]"#;
    let state = format!(
        r#"{{{E},"seq":1,"moves":0,"history":{hist},"interested":["n2"],"committed":1,
        "keys":[["k",1]],"waiters":[[1,"n2",3]],
        "presence":[{{"conn":"n1/7","user":"u","info":"{{}}"}}]}}"#
    );
    let json: Vec<(&str, String)> = vec![
        ("hello", format!(r#"{{"Hello":{{"cluster_id":"c","node_id":"n1","generation":1,"cluster_addr":"10.0.0.1:7946","nonce":{n},"encryption":true}}}}"#, n = nonce(3))),
        ("challenge", format!(r#"{{"Challenge":{{"node_id":"n2","generation":2,"nonce":{n},"proof":{p},"encryption":false}}}}"#, n = nonce(4), p = nonce(5))),
        ("proof", format!(r#"{{"Proof":{{"proof":{p}}}}}"#, p = nonce(6))),
        ("proof-none", r#"{"Proof":{"proof":null}}"#.into()),
        ("accept", r#""Accept""#.into()),
        ("reject", r#"{"Reject":{"reason":"wrong cluster id"}}"#.into()),
        ("subscribe", r#"{"Msg":{"Subscribe":{"room":"r","token":1,"since":3,"epoch":"ab-1"}}}"#.into()),
        ("publish", r#"{"Msg":{"Publish":{"room":"r","token":2,"from":"n1/3","user":"alice","data":"{\"a\":1}","key":"k"}}}"#.into()),
        ("event", format!(r#"{{"Msg":{{"Event":{{"room":"r",{E},"seq":9,"accepted_us":1,"frame":"{{}}"}}}}}}"#)),
        ("subscribe-ack", format!(r#"{{"Msg":{{"SubscribeAck":{{"room":"r","token":1,{E},"seq":1,"history":{hist},"recovered":true}}}}}}"#)),
        ("refused", r#"{"Msg":{"Refused":{"room":"r","token":1,"error":"NotOwner","owner":"n3"}}}"#.into()),
        ("handoff", format!(r#"{{"Msg":{{"Handoff":{{"room":"r","state":{state}}}}}}}"#)),
        ("replica-sync", format!(r#"{{"Msg":{{"ReplicaSync":{{"room":"r","state":{state}}}}}}}"#)),
        ("presence-join", r#"{"Msg":{"PresenceJoin":{"room":"r","entry":{"conn":"n1/1","user":null,"info":null}}}}"#.into()),
        ("disconnect", r#"{"Control":{"Disconnect":{"user":"bob","reason":"banned"}}}"#.into()),
        ("rooms-query", r#"{"Control":{"RoomsQuery":{"id":1,"prefix":"chat:","after":"","limit":100}}}"#.into()),
        ("rooms-reply", r#"{"Control":{"RoomsReply":{"id":1,"rooms":[["chat:a",3],["chat:b",0]]}}}"#.into()),
    ];
    let mut out: Vec<(&str, Vec<u8>)> =
        json.iter().map(|(n, j)| (*n, encoded(&frame(j)))).collect();
    out.push(("preamble", codec::preamble().to_vec()));
    out
}

/// A JSON array of 32 bytes `b`.
fn nonce(b: u8) -> String {
    format!("{:?}", [b; NONCE_LEN])
}

/// Records `how len payload` of the handshake target.
fn records(items: &[(u8, &Frame)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (how, f) in items {
        let bytes = encoded(f);
        out.push(*how);
        out.push(bytes.len().min(255) as u8);
        out.extend(&bytes[..bytes.len().min(255)]);
    }
    out
}

fn handshakes() -> Vec<(&'static str, Vec<u8>)> {
    // The frames of an honest handshake between two nodes with the secret.
    let (mut c, hello) = Client::start(
        icfg("cli", Some(RIGHT_SECRET), true),
        node("srv"),
        [1; NONCE_LEN],
    );
    let mut s = Server::new(icfg("srv", Some(RIGHT_SECRET), true), [2; NONCE_LEN]);
    let Ok(ServerStep::Send(challenge)) = s.on_frame(hello.clone()) else {
        panic!("honest challenge")
    };
    let Ok(ClientStep::Send(proof)) = c.on_frame(challenge.clone()) else {
        panic!("honest proof")
    };
    let reject = Frame::Reject {
        reason: "no".into(),
    };
    let honest = |flags: u8, a: &[u8], b: &[u8]| [&[2, flags, a.len() as u8][..], a, b].concat();
    vec![
        (
            "server-replayed",
            [vec![0], records(&[(0, &hello), (0, &proof)])].concat(),
        ),
        (
            "server-own-proof",
            [vec![0], records(&[(1, &hello), (2, &proof)])].concat(),
        ),
        (
            "server-wrong-secret",
            [vec![0], records(&[(1, &hello), (3, &proof)])].concat(),
        ),
        (
            "server-reject",
            [vec![0], records(&[(0, &hello), (0, &reject)])].concat(),
        ),
        (
            "client-replayed",
            [vec![1], records(&[(0, &challenge), (0, &Frame::Accept)])].concat(),
        ),
        (
            "client-wrong-secret",
            [vec![1], records(&[(2, &challenge), (3, &Frame::Accept)])].concat(),
        ),
        ("honest-same", honest(4 | 8, b"secret", b"secret")),
        ("honest-auth-only", honest(0, b"secret", b"secret")),
        ("honest-differ", honest(4 | 8, b"secret", b"Secret")),
        ("honest-modes", honest(4, b"secret", b"secret")),
        ("honest-none", honest(3, b"", b"")),
        ("honest-one", honest(2 | 4 | 8, b"secret", b"")),
    ]
}

fn gossip() -> Vec<(&'static str, Vec<u8>)> {
    let head = |at: u16, x: u8, cut: u16, stamp: u64, id: u64| {
        [
            &at.to_be_bytes()[..],
            &[x],
            &cut.to_be_bytes(),
            &stamp.to_be_bytes(),
            &id.to_be_bytes(),
        ]
        .concat()
    };
    // A sealed datagram of the target's secret, to start the raw check from a real layout.
    let secret = roomcast::cluster::ClusterSecret::from_bytes(GOSSIP_SECRET);
    let mut sealed = b"chitchat envelope".to_vec();
    let n = sealed.len();
    sealed.resize(n + roomcast::cluster::transport::OVERHEAD, 0);
    roomcast::cluster::transport::seal_datagram(&secret, &mut sealed, n, 1_700_000_000_000, 1);
    vec![
        (
            "envelope",
            [
                head(3, 1, 10, 1_700_000_000_000, 7),
                b"envelope bytes".to_vec(),
            ]
            .concat(),
        ),
        ("empty", head(0, 255, 0, 0, 0)),
        (
            "big-stamp",
            [head(500, 128, 499, u64::MAX, u64::MAX), vec![0; 64]].concat(),
        ),
        // Not a valid datagram for the target: the whole input is opened first.
        ("sealed-shifted", [vec![0], sealed].concat()),
    ]
}

fn configs() -> Vec<(&'static str, Vec<u8>)> {
    // The example config's settings, without its comments (small seeds fuzz faster).
    let example: String = include_str!("../../cluster-config/node.example.toml")
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    [
        ("empty", String::new()),
        ("example", example),
        (
            "options",
            "listen = \"127.0.0.1:0\"\nmax_data_bytes = 1000\nhistory_max_age = \"5m\"\n\
             peers = [\"10.0.0.2:7946\"]\n"
                .to_string(),
        ),
        (
            "env",
            "max_data_bytes = 10\n\0HISTORY_MAX_MESSAGES=7\0ADVERTISE=\"n1:7946\"\0PEERS=[\"a:1\", \"b:2\"]"
                .to_string(),
        ),
        ("env-escape", "\0CLUSTER_ID=\"\\u00e9\\t\"\0NODE_ID=n\\1".to_string()),
        ("bad-type", "max_data_bytes = \"lots\"\nauth = { a = 1 }\n".to_string()),
    ]
    .into_iter()
    .map(|(n, t)| (n, t.into_bytes()))
    .collect()
}
