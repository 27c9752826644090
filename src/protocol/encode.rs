//! Writers for the server → client frames: welcome, replies and events.
//!
//! Frames are written by hand rather than through serde: every id we embed (room, node, conn,
//! epoch) is validated to need no escaping, `data` is already-validated raw JSON, and the event
//! frame is on the hot path (it is written once per room message and its bytes are shared by
//! every subscriber). Free text (error messages) goes through `serde_json` for escaping.

use std::fmt::Write as _;

use bytestring::ByteString;

use super::{ErrorCode, ReqId};
use crate::ids::{ConnName, Epoch, NodeId, RoomId, UserId};

/// A reply to one request, before it is written with the request's id.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    Joined {
        room: RoomId,
        seq: u64,
        epoch: Epoch,
        /// Present when the join had `since`: false when history no longer reaches `since+1`.
        recovered: Option<bool>,
    },
    Left {
        room: RoomId,
    },
    Published {
        room: RoomId,
        seq: u64,
        epoch: Epoch,
    },
    History {
        room: RoomId,
        /// Encoded event frames, in seq order.
        messages: Vec<ByteString>,
        seq: u64,
        epoch: Epoch,
        recovered: bool,
    },
    Pong {
        ts: u64,
    },
    /// The room's presence set.
    Presence {
        room: RoomId,
        members: Vec<super::PresenceEntry>,
    },
    /// `auth` or `refresh` succeeded: the connection acts as `user` until `exp` (unix s).
    Authenticated {
        user: UserId,
        exp: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

impl Reply {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        Reply::Error {
            code,
            message: message.into(),
        }
    }
}

/// `{"type":"welcome","conn":C,"node":N,"heartbeat_ms":H}`
pub fn welcome(conn: &ConnName, node: &NodeId, heartbeat_ms: u64) -> ByteString {
    ByteString::from(format!(
        r#"{{"type":"welcome","conn":"{conn}","node":"{node}","heartbeat_ms":{heartbeat_ms}}}"#
    ))
}

/// `{"type":"reconnect","reason":R,"url":U}`: the node is going away; reconnect to `url`
/// (absent when no other node is known) and resume with `since`.
pub fn reconnect(reason: &str, url: Option<&str>) -> ByteString {
    let mut s = String::with_capacity(96);
    s.push_str(r#"{"type":"reconnect","reason":"#);
    push_json_str(&mut s, reason);
    if let Some(url) = url {
        s.push_str(r#","url":"#);
        push_json_str(&mut s, url);
    }
    s.push('}');
    ByteString::from(s)
}

/// `{"type":"disconnect","reason":R}`: the server API disconnected this user; a close 4403
/// follows.
pub fn disconnect(reason: &str) -> ByteString {
    let mut s = String::with_capacity(48 + reason.len());
    s.push_str(r#"{"type":"disconnect","reason":"#);
    push_json_str(&mut s, reason);
    s.push('}');
    ByteString::from(s)
}

/// A presence set as a JSON array of members (the `presence` reply's and the API's `members`).
pub fn presence_members(members: &[super::PresenceEntry]) -> String {
    let mut s = String::from("[");
    for (i, m) in members.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        push_member(&mut s, m);
    }
    s.push(']');
    s
}

/// One presence member: `{"user":U,"conn":C,"info":I?}` — `user` is the connection name
/// when the connection is anonymous.
fn push_member(s: &mut String, m: &super::PresenceEntry) {
    s.push_str(r#"{"user":"#);
    match &m.user {
        Some(u) => push_json_str(s, u.as_str()),
        None => push_json_str(s, m.conn.as_str()),
    }
    s.push_str(r#","conn":""#);
    s.push_str(m.conn.as_str());
    s.push('"');
    if let Some(info) = &m.info {
        s.push_str(r#","info":"#);
        s.push_str(info);
    }
    s.push('}');
}

/// A presence change: `{"type":"presence","room":R,"action":"join"|"leave","user":U,"conn":C,
/// "info":I?}`.
pub fn presence_event(room: &RoomId, join: bool, m: &super::PresenceEntry) -> ByteString {
    let mut s = String::with_capacity(96);
    s.push_str(r#"{"type":"presence","room":""#);
    s.push_str(room.as_str());
    s.push_str(if join {
        r#"","action":"join","user":"#
    } else {
        r#"","action":"leave","user":"#
    });
    match &m.user {
        Some(u) => push_json_str(&mut s, u.as_str()),
        None => push_json_str(&mut s, m.conn.as_str()),
    }
    s.push_str(r#","conn":""#);
    s.push_str(m.conn.as_str());
    s.push('"');
    if join && let Some(info) = &m.info {
        s.push_str(r#","info":"#);
        s.push_str(info);
    }
    s.push('}');
    ByteString::from(s)
}

/// The event frame of one room message:
/// `{"type":"message","room":R,"seq":S,"epoch":E,"data":D,"from":C,"ts":T}`.
pub fn event(
    room: &RoomId,
    seq: u64,
    epoch: &Epoch,
    data: &str,
    from: &str,
    user: Option<&UserId>,
    ts: u64,
) -> ByteString {
    let mut s = String::with_capacity(96 + room.as_str().len() + data.len() + from.len());
    s.push_str(r#"{"type":"message","room":""#);
    s.push_str(room.as_str());
    s.push_str(r#"","seq":"#);
    push_u64(&mut s, seq);
    s.push_str(r#","epoch":""#);
    s.push_str(epoch.as_str());
    s.push_str(r#"","data":"#);
    s.push_str(data);
    s.push_str(r#","from":""#);
    s.push_str(from);
    s.push('"');
    if let Some(u) = user {
        s.push_str(r#","user":"#);
        push_json_str(&mut s, u.as_str());
    }
    s.push_str(r#","ts":"#);
    push_u64(&mut s, ts);
    s.push('}');
    ByteString::from(s)
}

/// Writes a reply frame echoing `id`.
pub fn reply(id: &ReqId, reply: &Reply) -> ByteString {
    let mut s = String::with_capacity(64);
    s.push_str(r#"{"id":"#);
    s.push_str(id.json());
    match reply {
        Reply::Joined {
            room,
            seq,
            epoch,
            recovered,
        } => {
            let _ = write!(
                s,
                r#","ok":true,"room":"{room}","seq":{seq},"epoch":"{epoch}""#
            );
            if let Some(r) = recovered {
                let _ = write!(s, r#","recovered":{r}"#);
            }
        }
        Reply::Left { room } => {
            let _ = write!(s, r#","ok":true,"room":"{room}""#);
        }
        Reply::Published { room, seq, epoch } => {
            let _ = write!(
                s,
                r#","ok":true,"room":"{room}","seq":{seq},"epoch":"{epoch}""#
            );
        }
        Reply::History {
            room,
            messages,
            seq,
            epoch,
            recovered,
        } => {
            s.push_str(r#","ok":true,"#);
            push_history(&mut s, room, messages, *seq, epoch, *recovered);
        }
        Reply::Pong { ts } => {
            let _ = write!(s, r#","ok":true,"ts":{ts}"#);
        }
        Reply::Presence { room, members } => {
            let _ = write!(s, r#","ok":true,"room":"{room}","members":"#);
            s.push_str(&presence_members(members));
        }
        Reply::Authenticated { user, exp } => {
            s.push_str(r#","ok":true,"user":"#);
            push_json_str(&mut s, user.as_str());
            let _ = write!(s, r#","exp":{exp}"#);
        }
        Reply::Error { code, message } => {
            let _ = write!(
                s,
                r#","ok":false,"error":{{"code":"{}","message":"#,
                code.as_str()
            );
            push_json_str(&mut s, message);
            s.push('}');
        }
    }
    s.push('}');
    ByteString::from(s)
}

/// `"room":R,"messages":[frames],"seq":S,"epoch":E,"recovered":B` — the fields of a history
/// read, as the `history` reply and the server API's history body share them.
pub fn push_history(
    s: &mut String,
    room: &RoomId,
    messages: &[ByteString],
    seq: u64,
    epoch: &Epoch,
    recovered: bool,
) {
    s.reserve(messages.iter().map(|m| m.len() + 1).sum::<usize>() + 96);
    let _ = write!(s, r#""room":"{room}","messages":["#);
    for (i, m) in messages.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(m);
    }
    let _ = write!(
        s,
        r#"],"seq":{seq},"epoch":"{epoch}","recovered":{recovered}"#
    );
}

fn push_u64(s: &mut String, v: u64) {
    let _ = write!(s, "{v}");
}

fn push_json_str(s: &mut String, text: &str) {
    // serde_json escapes correctly; writing a &str to a String cannot fail.
    match serde_json::to_string(text) {
        Ok(j) => s.push_str(&j),
        Err(_) => s.push_str("\"\""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn parse(b: &ByteString) -> Value {
        serde_json::from_str(b).expect("valid JSON")
    }

    #[test]
    fn frames_are_valid_json() {
        let room = RoomId::new("r:1").unwrap();
        let epoch = Epoch::from_wire("ab-1");
        let node = NodeId::new("n1").unwrap();
        let conn = ConnName::new(&node, crate::ids::ConnId(3));
        assert_eq!(
            parse(&welcome(&conn, &node, 15000)),
            json!({"type":"welcome","conn":"n1/3","node":"n1","heartbeat_ms":15000})
        );
        assert_eq!(
            parse(&event(
                &room,
                7,
                &epoch,
                r#"{"x":[1,"two"]}"#,
                "n1/3",
                None,
                123
            )),
            json!({"type":"message","room":"r:1","seq":7,"epoch":"ab-1","data":{"x":[1,"two"]},"from":"n1/3","ts":123})
        );
        // An authenticated publisher's user id, escaped.
        let user = crate::ids::UserId::new("ann \"a\"").unwrap();
        assert_eq!(
            parse(&event(&room, 8, &epoch, "1", "n1/3", Some(&user), 124)),
            json!({"type":"message","room":"r:1","seq":8,"epoch":"ab-1","data":1,"from":"n1/3","user":"ann \"a\"","ts":124})
        );
        let id = super::super::parse_request(
            r#"{"op":"ping","id":"q\"1"}"#,
            super::super::ParseLimits { max_data_bytes: 10 },
        )
        .unwrap()
        .id;
        assert_eq!(
            parse(&reply(&id, &Reply::Pong { ts: 5 })),
            json!({"id":"q\"1","ok":true,"ts":5})
        );
        assert_eq!(
            parse(&reply(
                &ReqId::NONE,
                &Reply::error(ErrorCode::BadRequest, "bad \"thing\"\n")
            )),
            json!({"id":null,"ok":false,"error":{"code":"bad_request","message":"bad \"thing\"\n"}})
        );
        assert_eq!(
            parse(&reply(
                &ReqId::NONE,
                &Reply::Joined {
                    room: room.clone(),
                    seq: 4,
                    epoch: epoch.clone(),
                    recovered: Some(false)
                }
            )),
            json!({"id":null,"ok":true,"room":"r:1","seq":4,"epoch":"ab-1","recovered":false})
        );
        let ev = event(&room, 1, &epoch, "null", "n1/3", None, 9);
        assert_eq!(
            parse(&reply(
                &ReqId::NONE,
                &Reply::History {
                    room: room.clone(),
                    messages: vec![ev.clone(), ev],
                    seq: 1,
                    epoch,
                    recovered: true
                }
            ))["messages"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            parse(&reconnect("draining", Some("ws://127.0.0.1:1/ws"))),
            json!({"type":"reconnect","reason":"draining","url":"ws://127.0.0.1:1/ws"})
        );
    }
}
