//! The HTTP server API for backends (docs/protocol.md, "Server API"): routes only — the key
//! check, JSON in and out, and the client protocol's error codes mapped to HTTP statuses. The
//! work is `crate::api`'s.
//!
//! * `POST /api/publish {room, data, key?}` → `{room, seq, epoch}`
//! * `POST /api/broadcast {rooms: [..], data}` → `{results: [{room, seq, epoch} | {room, error}]}`
//! * `GET /api/rooms/{room}/history?since=&limit=` → `{room, messages, seq, epoch, recovered}`
//! * `GET /api/rooms?prefix=&cursor=&limit=` → `{rooms: [{room, subscribers}], cursor, missing}`
//! * `GET /api/rooms/{room}/presence` → `{room, members: [{user, conn, info?}]}`
//! * `POST /api/disconnect {user, reason?}` → `{user, disconnected}` (here; other nodes too)
//!
//! Every request needs `Authorization: Bearer KEY` with a key of `api_keys_file`; without
//! that file the API is off (404).

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

use crate::api;
use crate::ids::RoomId;
use crate::node::NodeContext;
use crate::protocol::ErrorCode;
use crate::protocol::encode::Reply;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/publish", web::post().to(publish))
        .route("/api/broadcast", web::post().to(broadcast))
        .route("/api/rooms/{room}/history", web::get().to(history))
        .route("/api/rooms", web::get().to(rooms))
        .route("/api/rooms/{room}/presence", web::get().to(presence))
        .route("/api/disconnect", web::post().to(disconnect));
}

/// The HTTP status of an error code.
fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Unavailable | ErrorCode::RoomLimit => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_json(code: ErrorCode, message: &str) -> Value {
    json!({ "error": { "code": code.as_str(), "message": message } })
}

fn error(endpoint: &'static str, code: ErrorCode, message: &str) -> HttpResponse {
    let st = status(code);
    crate::metrics::api_request(endpoint, st.as_u16());
    let mut res = HttpResponse::build(st);
    match code {
        ErrorCode::Unavailable | ErrorCode::RoomLimit => {
            res.insert_header(("Retry-After", "1"));
        }
        ErrorCode::Unauthorized => {
            res.insert_header(("WWW-Authenticate", "Bearer"));
        }
        _ => {}
    }
    res.json(error_json(code, message))
}

/// A response that ends a request early (boxed: `HttpResponse` is large).
type Refusal = Box<HttpResponse>;

fn ok(endpoint: &'static str, body: Value) -> HttpResponse {
    crate::metrics::api_request(endpoint, 200);
    HttpResponse::Ok().json(body)
}

/// The API is on and the request carries one of its keys; else the response to send.
fn authorise(node: &NodeContext, req: &HttpRequest, endpoint: &'static str) -> Result<(), Refusal> {
    let Some(keys) = &node.api_keys else {
        crate::metrics::api_request(endpoint, 404);
        return Err(Box::new(HttpResponse::NotFound().json(error_json(
            ErrorCode::BadRequest,
            "the server API is off on this node: set api_keys_file",
        ))));
    };
    let header = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match header {
        Some(h) if keys.check_bearer(h) => Ok(()),
        Some(_) => Err(Box::new(error(
            endpoint,
            ErrorCode::Unauthorized,
            "invalid API key",
        ))),
        None => Err(Box::new(error(
            endpoint,
            ErrorCode::Unauthorized,
            "missing Authorization: Bearer <API key>",
        ))),
    }
}

/// Checks the API key, then parses the JSON body.
fn authorised_body<'a, T: Deserialize<'a>>(
    node: &NodeContext,
    req: &HttpRequest,
    endpoint: &'static str,
    bytes: &'a [u8],
) -> Result<T, Refusal> {
    authorise(node, req, endpoint)?;
    body(endpoint, bytes)
}

/// Checks the API key, then the room named in the path.
fn authorised_room(
    node: &NodeContext,
    req: &HttpRequest,
    endpoint: &'static str,
    name: &str,
) -> Result<RoomId, Refusal> {
    authorise(node, req, endpoint)?;
    room(endpoint, name)
}

/// Parses a JSON body, or the `bad_request` response.
fn body<'a, T: Deserialize<'a>>(endpoint: &'static str, bytes: &'a [u8]) -> Result<T, Refusal> {
    serde_json::from_slice(bytes).map_err(|e| {
        Box::new(error(
            endpoint,
            ErrorCode::BadRequest,
            &format!("invalid JSON body: {e}"),
        ))
    })
}

fn room(endpoint: &'static str, name: &str) -> Result<RoomId, Refusal> {
    RoomId::new(name).map_err(|e| {
        Box::new(error(
            endpoint,
            ErrorCode::BadRequest,
            &format!("invalid room: {e}"),
        ))
    })
}

/// `data` as sent, within `max_data_bytes`.
fn data(endpoint: &'static str, node: &NodeContext, raw: &RawValue) -> Result<String, Refusal> {
    let text = raw.get();
    let max = node.config.max_data_bytes;
    if text.len() > max {
        return Err(Box::new(error(
            endpoint,
            ErrorCode::TooLarge,
            &format!(
                "data is {} bytes serialised; the limit is {max}",
                text.len()
            ),
        )));
    }
    Ok(text.to_string())
}

fn publish_result(room: &RoomId, reply: &Reply) -> Result<Value, (ErrorCode, String)> {
    match reply {
        Reply::Published { seq, epoch, .. } => {
            Ok(json!({ "room": room.as_str(), "seq": seq, "epoch": epoch.as_str() }))
        }
        Reply::Error { code, message } => Err((*code, message.clone())),
        other => Err((ErrorCode::Internal, format!("unexpected reply {other:?}"))),
    }
}

#[derive(Deserialize)]
struct PublishBody<'a> {
    room: String,
    #[serde(borrow)]
    data: &'a RawValue,
    #[serde(default)]
    key: Option<String>,
}

async fn publish(
    node: web::Data<NodeContext>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> HttpResponse {
    const EP: &str = "publish";
    let b: PublishBody = match authorised_body(&node, &req, EP, &bytes) {
        Ok(b) => b,
        Err(res) => return *res,
    };
    let (room, data) = match (room(EP, &b.room), data(EP, &node, b.data)) {
        (Ok(r), Ok(d)) => (r, d),
        (Err(res), _) | (_, Err(res)) => return *res,
    };
    if let Some(k) = &b.key
        && (k.is_empty() || k.len() > crate::protocol::MAX_KEY_BYTES)
    {
        let max = crate::protocol::MAX_KEY_BYTES;
        return error(
            EP,
            ErrorCode::BadRequest,
            &format!("field \"key\" must be 1 to {max} bytes"),
        );
    }
    let reply = api::publish(&node, room.clone(), data, b.key).await;
    match publish_result(&room, &reply) {
        Ok(v) => ok(EP, v),
        Err((code, message)) => error(EP, code, &message),
    }
}

#[derive(Deserialize)]
struct BroadcastBody<'a> {
    rooms: Vec<String>,
    #[serde(borrow)]
    data: &'a RawValue,
}

async fn broadcast(
    node: web::Data<NodeContext>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> HttpResponse {
    const EP: &str = "broadcast";
    let b: BroadcastBody = match authorised_body(&node, &req, EP, &bytes) {
        Ok(b) => b,
        Err(res) => return *res,
    };
    if b.rooms.is_empty() || b.rooms.len() > api::MAX_BROADCAST_ROOMS {
        let max = api::MAX_BROADCAST_ROOMS;
        return error(
            EP,
            ErrorCode::BadRequest,
            &format!("field \"rooms\" must list 1 to {max} rooms"),
        );
    }
    let mut rooms = Vec::with_capacity(b.rooms.len());
    for name in &b.rooms {
        match room(EP, name) {
            Ok(r) => rooms.push(r),
            Err(res) => return *res,
        }
    }
    let data = match data(EP, &node, b.data) {
        Ok(d) => d,
        Err(res) => return *res,
    };
    let replies = api::broadcast(&node.clone().into_inner(), rooms.clone(), data).await;
    let results: Vec<Value> = rooms
        .iter()
        .zip(&replies)
        .map(|(room, reply)| match publish_result(room, reply) {
            Ok(v) => v,
            Err((code, message)) => {
                let mut e = error_json(code, &message);
                e["room"] = json!(room.as_str());
                e
            }
        })
        .collect();
    ok(EP, json!({ "results": results }))
}

#[derive(Deserialize)]
struct HistoryQuery {
    #[serde(default)]
    since: u64,
    limit: Option<u64>,
}

async fn history(
    node: web::Data<NodeContext>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    const EP: &str = "history";
    let room = match authorised_room(&node, &req, EP, &path.into_inner()) {
        Ok(r) => r,
        Err(res) => return *res,
    };
    let q = match web::Query::<HistoryQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => {
            return error(
                EP,
                ErrorCode::BadRequest,
                &format!("invalid query: {e} (since and limit are non-negative integers)"),
            );
        }
    };
    if q.limit == Some(0) {
        return error(EP, ErrorCode::BadRequest, "limit must be at least 1");
    }
    let reply = api::history(&node, room, q.since, q.limit.unwrap_or(100)).await;
    match reply {
        Reply::History {
            room,
            messages,
            seq,
            epoch,
            recovered,
        } => {
            // The event frames are JSON already: written as they are, as in the `history` reply.
            let mut text = String::from("{");
            crate::protocol::encode::push_history(
                &mut text, &room, &messages, seq, &epoch, recovered,
            );
            text.push('}');
            crate::metrics::api_request(EP, 200);
            HttpResponse::Ok()
                .content_type("application/json")
                .body(text)
        }
        Reply::Error { code, message } => error(EP, code, &message),
        other => error(
            EP,
            ErrorCode::Internal,
            &format!("unexpected reply {other:?}"),
        ),
    }
}

#[derive(Deserialize)]
struct DisconnectBody {
    user: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn disconnect(
    node: web::Data<NodeContext>,
    req: HttpRequest,
    bytes: web::Bytes,
) -> HttpResponse {
    const EP: &str = "disconnect";
    let b: DisconnectBody = match authorised_body(&node, &req, EP, &bytes) {
        Ok(b) => b,
        Err(res) => return *res,
    };
    let user = match crate::ids::UserId::new(&b.user) {
        Ok(u) => u,
        Err(e) => return error(EP, ErrorCode::BadRequest, &format!("invalid user: {e}")),
    };
    let reason = b
        .reason
        .unwrap_or_else(|| "disconnected by the server".to_string());
    if reason.len() > api::MAX_REASON_BYTES {
        let max = api::MAX_REASON_BYTES;
        return error(
            EP,
            ErrorCode::BadRequest,
            &format!("field \"reason\" must be at most {max} bytes"),
        );
    }
    let here = api::disconnect(&node, user.clone(), reason);
    ok(EP, json!({ "user": user.as_str(), "disconnected": here }))
}

async fn presence(
    node: web::Data<NodeContext>,
    req: HttpRequest,
    path: web::Path<String>,
) -> HttpResponse {
    const EP: &str = "presence";
    let room = match authorised_room(&node, &req, EP, &path.into_inner()) {
        Ok(r) => r,
        Err(res) => return *res,
    };
    match api::presence(&node, room).await {
        Reply::Presence { room, members } => {
            // The same member objects as the client protocol's `presence` reply.
            let text = format!(
                r#"{{"room":"{room}","members":{}}}"#,
                crate::protocol::encode::presence_members(&members)
            );
            crate::metrics::api_request(EP, 200);
            HttpResponse::Ok()
                .content_type("application/json")
                .body(text)
        }
        Reply::Error { code, message } => error(EP, code, &message),
        other => error(
            EP,
            ErrorCode::Internal,
            &format!("unexpected reply {other:?}"),
        ),
    }
}

#[derive(Deserialize)]
struct RoomsQuery {
    #[serde(default)]
    prefix: String,
    #[serde(default)]
    cursor: String,
    limit: Option<usize>,
}

async fn rooms(node: web::Data<NodeContext>, req: HttpRequest) -> HttpResponse {
    const EP: &str = "rooms";
    if let Err(res) = authorise(&node, &req, EP) {
        return *res;
    }
    let q = match web::Query::<RoomsQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => return error(EP, ErrorCode::BadRequest, &format!("invalid query: {e}")),
    };
    let max = api::MAX_ROOMS_PAGE;
    if q.prefix.len() > crate::ids::MAX_ROOM_LEN || q.cursor.len() > crate::ids::MAX_ROOM_LEN {
        return error(
            EP,
            ErrorCode::BadRequest,
            "prefix and cursor are at most 128 bytes",
        );
    }
    if q.limit.is_some_and(|l| l == 0 || l > max) {
        return error(
            EP,
            ErrorCode::BadRequest,
            &format!("limit must be 1 to {max}"),
        );
    }
    let page = api::rooms(&node, &q.prefix, &q.cursor, q.limit.unwrap_or(100)).await;
    let rooms: Vec<Value> = page
        .rooms
        .iter()
        .map(|(r, n)| json!({ "room": r.as_str(), "subscribers": n }))
        .collect();
    let missing: Vec<&str> = page.missing.iter().map(|n| n.as_str()).collect();
    ok(
        EP,
        json!({
            "rooms": rooms,
            "cursor": page.cursor.as_ref().map(|r| r.as_str()),
            "missing": missing,
        }),
    )
}
