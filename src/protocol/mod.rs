//! The client protocol: JSON text frames over WebSocket (docs/protocol.md is the reference).
//!
//! This module has no I/O. It turns a text frame into a typed [`Request`] — or into a
//! [`RequestError`] that still carries the request's `id` whenever the frame was a JSON object,
//! so the error reply can echo it — and writes replies and events ([`encode`]).
//!
//! Parsing is done in two steps so that one ill-typed field never loses the `id`: the frame is
//! first split into raw fields (`serde_json::value::RawValue`, no allocation per field), then each
//! field is checked on its own and a failure names it. `data` is never parsed into a tree: the
//! raw JSON text is validated by the first step and copied verbatim into the event, once.

pub mod close;
pub mod encode;

pub use close::CloseReason;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{ConnName, Epoch, IdError, RoomId, UserId};

/// Error codes of the client protocol (`error.code` in a failed reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Unknown op, missing or ill-typed field, invalid room, not JSON, binary frame.
    BadRequest,
    /// `data` larger than the configured limit.
    TooLarge,
    /// The connection's publish rate limit, or its budget of new rooms per minute, is
    /// exhausted.
    RateLimited,
    /// Not allowed: the connection's token grants no such right in the room, or a limit of
    /// the connection is reached.
    Forbidden,
    /// No token, or a token that does not verify (malformed, expired, bad signature, unknown
    /// key); with `auth = required`, any request before `auth`.
    Unauthorized,
    /// The room's owner node cannot be reached now, or the node is overloaded; retry.
    Unavailable,
    /// A bug or an unexpected failure on the server.
    Internal,
    /// The room does not exist and its owner node already owns `max_rooms` rooms: it was not
    /// created. Existing rooms keep working; retry later.
    RoomLimit,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::BadRequest,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Forbidden,
        ErrorCode::Unavailable,
        ErrorCode::Internal,
        ErrorCode::Unauthorized,
        ErrorCode::RoomLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::RoomLimit => "room_limit",
        }
    }
}

/// One connection in a room's presence set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub conn: ConnName,
    /// The connection's authenticated user (`None`: anonymous; shown as the connection name).
    pub user: Option<UserId>,
    /// The token's `info` claim, raw JSON (checked to be JSON when it comes from a peer).
    pub info: Option<String>,
}

impl PresenceEntry {
    /// Roughly how many bytes it takes (queue bounds).
    pub fn approx_size(&self) -> usize {
        48 + self.conn.as_str().len()
            + self.user.as_ref().map_or(0, |u| u.as_str().len())
            + self.info.as_ref().map_or(0, String::len)
    }

    /// The node the connection is on (the prefix of its name).
    pub fn node(&self) -> &str {
        self.conn.as_str().split('/').next().unwrap_or("")
    }
}

/// A request's `id`, as the raw JSON text the client sent (any JSON value), echoed verbatim in
/// the reply. `None` when the request had no id (the reply then says `"id":null`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReqId(Option<Box<str>>);

impl ReqId {
    pub const NONE: ReqId = ReqId(None);
    /// The JSON text to write after `"id":`.
    pub fn json(&self) -> &str {
        self.0.as_deref().unwrap_or("null")
    }
    /// From raw JSON text (already validated by serde_json).
    fn from_raw(raw: &RawValue) -> ReqId {
        ReqId(Some(raw.get().into()))
    }
}

/// One client request after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Request<'a> {
    pub id: ReqId,
    pub op: Op<'a>,
}

/// The operations of the client protocol.
#[derive(Debug, Clone, PartialEq)]
pub enum Op<'a> {
    /// Subscribe to a room. With `since`, first deliver `since+1..` from history.
    Join {
        room: RoomId,
        since: Option<u64>,
        /// The epoch the client's `since` belongs to, if it knows it.
        epoch: Option<Epoch>,
        /// A token for this room, for rooms the connection's token does not cover.
        token: Option<String>,
        /// Enter the room's presence set.
        presence: bool,
        /// Receive the room's presence changes.
        presence_events: bool,
    },
    Leave {
        room: RoomId,
    },
    /// Publish `data` (raw JSON text) to a room. `key`: an idempotency key — a retry with the
    /// same key gets the original seq instead of a second message.
    Publish {
        room: RoomId,
        data: &'a str,
        key: Option<String>,
    },
    History {
        room: RoomId,
        since: u64,
        limit: Option<u64>,
    },
    Ping,
    /// Read a room's presence set.
    Presence {
        room: RoomId,
    },
    /// Authenticate the connection with a JWT (`auth = optional | required`).
    Auth {
        token: String,
    },
    /// Replace the connection's token with a newer one of the same user (extends it before
    /// `exp`).
    Refresh {
        token: String,
    },
}

impl Op<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Op::Join { .. } => "join",
            Op::Leave { .. } => "leave",
            Op::Publish { .. } => "publish",
            Op::History { .. } => "history",
            Op::Ping => "ping",
            Op::Presence { .. } => "presence",
            Op::Auth { .. } => "auth",
            Op::Refresh { .. } => "refresh",
        }
    }
}

/// Why a frame was rejected, with the id to echo (if the frame got far enough to have one).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestError {
    pub id: ReqId,
    pub code: ErrorCode,
    pub message: String,
}

impl RequestError {
    fn bad(id: &ReqId, message: impl Into<String>) -> RequestError {
        RequestError {
            id: id.clone(),
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }
}

/// The fields a request may have, each kept raw until it is checked on its own. Unknown fields
/// are ignored (forward compatibility).
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    op: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    epoch: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    limit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    key: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    presence: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    presence_events: Option<&'a RawValue>,
}

/// `Some(raw)` for a present field, even when its value is `null` (plain `Option` would turn a
/// JSON null into `None`, and `"data": null` is a valid publish).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// Limits the parser enforces.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    /// Maximum serialised size of `data`, in bytes.
    pub max_data_bytes: usize,
}

/// Parses and validates one text frame.
pub fn parse_request<'a>(text: &'a str, limits: ParseLimits) -> Result<Request<'a>, RequestError> {
    // serde would also read a struct from a JSON array; only objects are requests.
    if !text.trim_start().starts_with('{') {
        return Err(match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => RequestError::bad(&ReqId::NONE, "request must be a JSON object"),
            Err(e) => RequestError::bad(&ReqId::NONE, format!("invalid JSON: {e}")),
        });
    }
    let raw: RawRequest<'a> = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let message = if e.is_data() {
                // Valid JSON of the wrong shape (array, number, duplicate field...).
                format!("request must be a JSON object with an \"op\" field: {e}")
            } else {
                format!("invalid JSON: {e}")
            };
            return Err(RequestError::bad(&ReqId::NONE, message));
        }
    };
    let id = raw.id.map(ReqId::from_raw).unwrap_or_default();
    let op_name: Cow<'a, str> = match raw.op {
        None => return Err(RequestError::bad(&id, "missing field \"op\"")),
        Some(v) => serde_json::from_str(v.get())
            .map_err(|_| RequestError::bad(&id, "field \"op\" must be a string"))?,
    };
    let op = match op_name.as_ref() {
        "join" => Op::Join {
            room: room(&id, raw.room)?,
            since: opt_u64(&id, "since", raw.since)?,
            epoch: opt_epoch(&id, raw.epoch)?,
            token: match raw.token {
                None => None,
                Some(_) => Some(token(&id, raw.token)?),
            },
            presence: flag(&id, "presence", raw.presence)?,
            presence_events: flag(&id, "presence_events", raw.presence_events)?,
        },
        "presence" => Op::Presence {
            room: room(&id, raw.room)?,
        },
        "leave" => Op::Leave {
            room: room(&id, raw.room)?,
        },
        "publish" => {
            let room = room(&id, raw.room)?;
            let data = raw
                .data
                .ok_or_else(|| RequestError::bad(&id, "missing field \"data\""))?
                .get();
            if data.len() > limits.max_data_bytes {
                return Err(RequestError {
                    id,
                    code: ErrorCode::TooLarge,
                    message: format!(
                        "data is {} bytes serialised; the limit is {}",
                        data.len(),
                        limits.max_data_bytes
                    ),
                });
            }
            let key = publish_key(&id, raw.key)?;
            Op::Publish { room, data, key }
        }
        "history" => Op::History {
            room: room(&id, raw.room)?,
            since: opt_u64(&id, "since", raw.since)?
                .ok_or_else(|| RequestError::bad(&id, "missing field \"since\""))?,
            limit: match opt_u64(&id, "limit", raw.limit)? {
                Some(0) => {
                    return Err(RequestError::bad(&id, "field \"limit\" must be at least 1"));
                }
                l => l,
            },
        },
        "ping" => Op::Ping,
        "auth" => Op::Auth {
            token: token(&id, raw.token)?,
        },
        "refresh" => Op::Refresh {
            token: token(&id, raw.token)?,
        },
        other => {
            let shown: String = other.chars().take(32).collect();
            return Err(RequestError::bad(
                &id,
                format!(
                    "unknown op {shown:?}; expected join, leave, publish, history, presence, ping, auth or refresh"
                ),
            ));
        }
    };
    Ok(Request { id, op })
}

/// An optional boolean field (absent = false).
fn flag(id: &ReqId, field: &str, raw: Option<&RawValue>) -> Result<bool, RequestError> {
    match raw {
        None => Ok(false),
        Some(v) => serde_json::from_str::<bool>(v.get())
            .map_err(|_| RequestError::bad(id, format!("field \"{field}\" must be a boolean"))),
    }
}

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

fn token(id: &ReqId, raw: Option<&RawValue>) -> Result<String, RequestError> {
    let raw = raw.ok_or_else(|| RequestError::bad(id, "missing field \"token\""))?;
    let t: String = serde_json::from_str(raw.get())
        .map_err(|_| RequestError::bad(id, "field \"token\" must be a string"))?;
    if t.is_empty() || t.len() > MAX_TOKEN_BYTES {
        return Err(RequestError::bad(
            id,
            format!("field \"token\" must be 1 to {MAX_TOKEN_BYTES} bytes"),
        ));
    }
    Ok(t)
}

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

fn publish_key(id: &ReqId, raw: Option<&RawValue>) -> Result<Option<String>, RequestError> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.get() == "null" {
        return Ok(None);
    }
    let key: String = serde_json::from_str(raw.get())
        .map_err(|_| RequestError::bad(id, "field \"key\" must be a string"))?;
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(RequestError::bad(
            id,
            format!("field \"key\" must be 1 to {MAX_KEY_BYTES} bytes"),
        ));
    }
    Ok(Some(key))
}

fn room(id: &ReqId, raw: Option<&RawValue>) -> Result<RoomId, RequestError> {
    let raw = raw.ok_or_else(|| RequestError::bad(id, "missing field \"room\""))?;
    let s: Cow<'_, str> = serde_json::from_str(raw.get())
        .map_err(|_| RequestError::bad(id, "field \"room\" must be a string"))?;
    RoomId::new(&s).map_err(|e: IdError| RequestError::bad(id, format!("invalid room: {e}")))
}

fn opt_u64(id: &ReqId, field: &str, raw: Option<&RawValue>) -> Result<Option<u64>, RequestError> {
    match raw {
        None => Ok(None),
        Some(v) => serde_json::from_str::<u64>(v.get()).map(Some).map_err(|_| {
            RequestError::bad(
                id,
                format!("field \"{field}\" must be a non-negative integer"),
            )
        }),
    }
}

fn opt_epoch(id: &ReqId, raw: Option<&RawValue>) -> Result<Option<Epoch>, RequestError> {
    match raw {
        None => Ok(None),
        Some(v) => {
            let s: Cow<'_, str> = serde_json::from_str(v.get())
                .map_err(|_| RequestError::bad(id, "field \"epoch\" must be a string"))?;
            if !Epoch::is_valid(&s) {
                return Err(RequestError::bad(id, "field \"epoch\" is not an epoch"));
            }
            Ok(Some(Epoch::from_wire(&s)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const L: ParseLimits = ParseLimits {
        max_data_bytes: 100,
    };

    fn err(text: &str) -> RequestError {
        parse_request(text, L).unwrap_err()
    }

    #[test]
    fn parses_every_op() {
        let r = parse_request(r#"{"op":"join","id":1,"room":"a","since":5}"#, L).unwrap();
        assert_eq!(r.id.json(), "1");
        assert_eq!(
            r.op,
            Op::Join {
                room: RoomId::new("a").unwrap(),
                since: Some(5),
                epoch: None,
                token: None,
                presence: false,
                presence_events: false,
            }
        );
        let r = parse_request(
            r#"{"op":"publish","id":"x","room":"a","data":{"k":[1,2]}}"#,
            L,
        )
        .unwrap();
        assert_eq!(r.id.json(), "\"x\"");
        assert_eq!(
            r.op,
            Op::Publish {
                room: RoomId::new("a").unwrap(),
                data: r#"{"k":[1,2]}"#,
                key: None,
            }
        );
        let r = parse_request(r#"{"op":"publish","room":"a","data":null}"#, L).unwrap();
        assert_eq!(r.id, ReqId::NONE);
        assert!(matches!(r.op, Op::Publish { data: "null", .. }));
        let r = parse_request(r#"{"op":"leave","room":"a"}"#, L).unwrap();
        assert!(matches!(r.op, Op::Leave { .. }));
        let r = parse_request(r#"{"op":"history","room":"a","since":0,"limit":3}"#, L).unwrap();
        assert!(matches!(
            r.op,
            Op::History {
                since: 0,
                limit: Some(3),
                ..
            }
        ));
        let r = parse_request(r#"{"op":"ping","id":{"any":["json"]}}"#, L).unwrap();
        assert_eq!(r.id.json(), r#"{"any":["json"]}"#);
        assert_eq!(r.op, Op::Ping);
        // Unknown fields are ignored; escaped room names are unescaped before validation.
        let r = parse_request(r#"{"op":"join","room":"\u0061b","extra":true}"#, L).unwrap();
        assert!(matches!(r.op, Op::Join { room, .. } if room.as_str() == "ab"));
    }

    #[test]
    fn rejects_bad_frames_with_the_id_when_possible() {
        let e = err("not json");
        assert_eq!((e.id.json(), e.code), ("null", ErrorCode::BadRequest));
        assert!(e.message.contains("invalid JSON"));
        let e = err("[1,2]");
        assert_eq!(e.id.json(), "null");
        let e = err(r#"{"id":7}"#);
        assert_eq!(e.id.json(), "7");
        assert!(e.message.contains("\"op\""));
        let e = err(r#"{"id":7,"op":5}"#);
        assert!(e.message.contains("must be a string"));
        let e = err(r#"{"id":7,"op":"dance"}"#);
        assert!(e.message.contains("unknown op"));
        let e = err(r#"{"id":7,"op":"join"}"#);
        assert!(e.message.contains("missing field \"room\""));
        let e = err(r#"{"id":7,"op":"join","room":""}"#);
        assert!(e.message.contains("invalid room"));
        let e = err(r#"{"id":7,"op":"join","room":"a b"}"#);
        assert!(e.message.contains("invalid room"));
        let long = format!(r#"{{"id":7,"op":"join","room":"{}"}}"#, "a".repeat(129));
        assert!(err(&long).message.contains("invalid room"));
        let e = err(r#"{"id":7,"op":"join","room":3}"#);
        assert!(e.message.contains("\"room\" must be a string"));
        let e = err(r#"{"id":7,"op":"join","room":"a","since":-1}"#);
        assert!(e.message.contains("\"since\""));
        let e = err(r#"{"id":7,"op":"join","room":"a","since":1.5}"#);
        assert!(e.message.contains("\"since\""));
        let e = err(r#"{"id":7,"op":"publish","room":"a"}"#);
        assert!(e.message.contains("missing field \"data\""));
        let e = err(r#"{"id":7,"op":"history","room":"a"}"#);
        assert!(e.message.contains("missing field \"since\""));
        let e = err(r#"{"id":7,"op":"history","room":"a","since":0,"limit":0}"#);
        assert!(e.message.contains("limit"));
        let e = err(r#"{"id":7,"op":"join","room":"a","epoch":"x\"y"}"#);
        assert!(e.message.contains("epoch"));
        {
            let e = err(r#"{"id":7,"op":"join"}"#);
            assert_eq!(e.id.json(), "7");
            assert_eq!(e.code, ErrorCode::BadRequest);
        }
    }

    #[test]
    fn data_size_limit() {
        let data = format!("\"{}\"", "x".repeat(98)); // exactly 100 bytes serialised
        let ok = format!(r#"{{"op":"publish","room":"a","data":{data}}}"#);
        assert!(parse_request(&ok, L).is_ok());
        let data = format!("\"{}\"", "x".repeat(99));
        let big = format!(r#"{{"id":1,"op":"publish","room":"a","data":{data}}}"#);
        let e = parse_request(&big, L).unwrap_err();
        assert_eq!((e.code, e.id.json()), (ErrorCode::TooLarge, "1"));
    }

    #[test]
    fn error_codes_have_stable_names() {
        let names: Vec<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "bad_request",
                "too_large",
                "rate_limited",
                "forbidden",
                "unavailable",
                "internal",
                "unauthorized",
                "room_limit"
            ]
        );
    }
}
