//! HTTP routes, and nothing else: each handler reads the node context or hands the request to
//! the module that owns the concept.
//!
//! * `GET /ws` — WebSocket upgrade, handled by [`upgrade`] on actix-http's upgrade path
//!   (shutting down or full → 503); a plain GET reaches the `App` and gets 400.
//! * `GET /healthz` — the process is alive.
//! * `GET /readyz` — the node accepts clients (503 while shutting down).
//! * `GET /metrics` — Prometheus text format.
//! * `GET /cluster` — this node's view of the cluster members (`crate::status`).
//! * `GET /dashboard/events` — the same report every second, as SSE (`crate::status`).
//! * `GET /sse?rooms=a,b&token=..&since=..` — the SSE transport (`crate::sse`).
//! * `/api/...` — the server API for backends ([`api`]).
//! * `/`, `/demo`, `/dashboard`, `/assets/...` — the browser pages and their files ([`pages`]).

pub mod api;
pub mod pages;
pub mod upgrade;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde_json::json;

use crate::node::NodeContext;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(ws))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/cluster", web::get().to(cluster))
        .route("/sse", web::get().to(sse))
        .route("/dashboard/events", web::get().to(dashboard_events))
        .configure(api::routes)
        .configure(pages::routes);
}

/// Lets pages of other origins read a response: the SSE stream (a browser's `EventSource` on
/// another origin needs it; tokens travel in the URL, never in cookies, so no credential is
/// exposed) and `/cluster` (public membership, used by clients to find other nodes).
const CORS_ANY: (&str, &str) = ("Access-Control-Allow-Origin", "*");

fn unavailable(why: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
        .insert_header(("Retry-After", "1"))
        .json(json!({ "error": why }))
}

/// `GET /ws` without an upgrade (upgrades never reach the `App`).
async fn ws(node: web::Data<NodeContext>) -> HttpResponse {
    if !node.is_accepting() {
        return unavailable("shutting down");
    }
    HttpResponse::BadRequest()
        .json(json!({ "error": "expected a WebSocket upgrade (Upgrade: websocket)" }))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn readyz(node: web::Data<NodeContext>) -> HttpResponse {
    if !node.is_accepting() {
        unavailable("shutting down")
    } else if !node.is_ready() {
        unavailable("joining the cluster")
    } else {
        HttpResponse::Ok().json(json!({ "status": "ready" }))
    }
}

async fn metrics(node: web::Data<NodeContext>) -> HttpResponse {
    let mut text = node.metrics.render();
    crate::metrics::render_latency(&mut text);
    crate::metrics::render_queue_depths(&mut text, &node.queue_depths());
    crate::metrics::render_process(&mut text);
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

async fn cluster(node: web::Data<NodeContext>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(CORS_ANY)
        .json(crate::status::cluster_report(&node).await)
}

/// `GET /dashboard/events`: the dashboard's live feed (`crate::status`).
async fn dashboard_events(node: web::Data<NodeContext>) -> HttpResponse {
    use crate::status::StreamRefused;
    match crate::status::dashboard_stream(node.into_inner()) {
        Ok(stream) => HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .insert_header(("X-Accel-Buffering", "no"))
            .insert_header(CORS_ANY)
            .streaming(stream),
        Err(StreamRefused::ShuttingDown) => unavailable("shutting down"),
        Err(StreamRefused::TooMany) => unavailable("too many dashboard streams"),
    }
}

#[derive(serde::Deserialize)]
struct SseQuery {
    #[serde(default)]
    rooms: String,
    token: Option<String>,
    since: Option<String>,
}

/// `GET /sse`: checks the request and streams the connection's events (`crate::sse`).
async fn sse(node: web::Data<NodeContext>, req: actix_web::HttpRequest) -> HttpResponse {
    use crate::protocol::ErrorCode;
    use crate::sse::Refused;
    // Refusals carry CORS too, so a page of another origin can read why.
    let refuse = |code: ErrorCode, status: StatusCode, message: &str| {
        crate::metrics::protocol_error(code);
        HttpResponse::build(status)
            .insert_header(CORS_ANY)
            .json(json!({ "error": { "code": code.as_str(), "message": message } }))
    };
    let q = match web::Query::<SseQuery>::from_query(req.query_string()) {
        Ok(q) => q.into_inner(),
        Err(e) => {
            return refuse(
                ErrorCode::BadRequest,
                StatusCode::BAD_REQUEST,
                &format!("invalid query: {e}"),
            );
        }
    };
    let mut rooms = Vec::new();
    for name in q.rooms.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match crate::ids::RoomId::new(name) {
            Ok(r) if !rooms.contains(&r) => rooms.push(r),
            Ok(_) => {}
            Err(e) => {
                return refuse(
                    ErrorCode::BadRequest,
                    StatusCode::BAD_REQUEST,
                    &format!("invalid room {name:?}: {e}"),
                );
            }
        }
    }
    // `Last-Event-ID` (an EventSource reconnecting) wins over an explicit `since`.
    let last = req
        .headers()
        .get("Last-Event-ID")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let since = match last.or(q.since) {
        Some(s) => match crate::sse::parse_positions(&s) {
            Ok(p) => p,
            Err(e) => return refuse(ErrorCode::BadRequest, StatusCode::BAD_REQUEST, &e),
        },
        None => Default::default(),
    };
    // The door (`crate::admission`): handshakes in progress, then the client's address.
    let pending = req.conn_data::<crate::admission::Pending>();
    if let Some(p) = pending
        && let Err(r) = p.check()
    {
        let mut res = unavailable(r.message());
        res.headers_mut().insert(
            actix_web::http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
            actix_web::http::header::HeaderValue::from_static("*"),
        );
        return res;
    }
    let ip_slot = match req.peer_addr().map(|a| node.admission.admit_ip(a.ip())) {
        Some(Ok(slot)) => Some(slot),
        Some(Err(r)) => {
            return HttpResponse::TooManyRequests()
                .insert_header(CORS_ANY)
                .insert_header(("Retry-After", "5"))
                .json(json!({ "error": r.message() }));
        }
        None => None,
    };
    let request = crate::sse::SseRequest {
        rooms,
        since,
        token: q.token,
        ip_slot,
    };
    match crate::sse::open(&node.clone().into_inner(), request) {
        Ok(stream) => {
            // A stream now, not a connection being set up.
            if let Some(p) = pending {
                p.release();
            }
            HttpResponse::Ok()
                .content_type("text/event-stream")
                .insert_header(CORS_ANY)
                .insert_header(("Cache-Control", "no-cache"))
                .insert_header(("X-Accel-Buffering", "no"))
                .streaming(stream)
        }
        Err(Refused::BadRequest(m)) => refuse(ErrorCode::BadRequest, StatusCode::BAD_REQUEST, &m),
        Err(Refused::Unauthorized(m)) => {
            refuse(ErrorCode::Unauthorized, StatusCode::UNAUTHORIZED, &m)
        }
        Err(Refused::Forbidden(m)) => refuse(ErrorCode::Forbidden, StatusCode::FORBIDDEN, &m),
        Err(Refused::Unavailable(m)) => {
            let mut res = unavailable(m);
            res.headers_mut().insert(
                actix_web::http::header::ACCESS_CONTROL_ALLOW_ORIGIN,
                actix_web::http::header::HeaderValue::from_static("*"),
            );
            res
        }
    }
}
