//! HTTP routes, and nothing else: each handler reads the node context or hands the request to
//! the module that owns the concept.
//!
//! * `GET /ws` — WebSocket upgrade (plain GET → 400; shutting down or full → 503).
//! * `GET /healthz` — the process is alive.
//! * `GET /readyz` — the node accepts clients (503 while shutting down).
//! * `GET /metrics` — Prometheus text format.
//! * `GET /cluster` — this node's view of the cluster members.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::node::NodeContext;
use crate::outbox::{AbortSignal, AbortableBody};
use crate::session::Session;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws", web::get().to(ws))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/cluster", web::get().to(cluster));
}

fn unavailable(why: &str) -> HttpResponse {
    HttpResponse::build(StatusCode::SERVICE_UNAVAILABLE)
        .insert_header(("Retry-After", "1"))
        .json(json!({ "error": why }))
}

async fn ws(
    req: HttpRequest,
    body: web::Payload,
    node: web::Data<NodeContext>,
) -> Result<HttpResponse, actix_web::Error> {
    if !node.is_accepting() {
        return Ok(unavailable("shutting down"));
    }
    if node.conns.len() >= node.config.max_connections {
        return Ok(unavailable("connection limit reached"));
    }
    // A request that is not a WebSocket handshake fails here with 400 (or 405/426).
    let (response, session, stream) = actix_ws::handle(&req, body)?;
    let max = node.config.max_frame_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let abort = Arc::new(AbortSignal::default());
    Session::start(node.into_inner(), session, stream, abort.clone());
    Ok(response
        .map_body(|_, body| AbortableBody::new(body, abort))
        .map_into_boxed_body())
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
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

async fn cluster(node: web::Data<NodeContext>) -> HttpResponse {
    let view = node.views.borrow().clone();
    let members: Vec<_> = view
        .members
        .iter()
        .map(|m| {
            let me = m.id == node.node_id;
            json!({
                "id": m.id.as_str(),
                "http": m.http,
                "cluster": m.cluster,
                "live": m.live,
                "ready": if me { node.is_ready() } else { m.ready },
                "draining": if me { !node.is_accepting() } else { m.draining },
                "ws": m.ws,
                // This node's own count is exact; others' are as last gossiped (≈1 s old).
                "connections": if me { node.conns.len() as u64 } else { m.connections },
                "generation": m.generation,
                "version": m.version,
            })
        })
        .collect();
    HttpResponse::Ok().json(json!({ "self": node.node_id.as_str(), "members": members }))
}
