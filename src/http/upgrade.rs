//! `GET /ws` with a WebSocket upgrade: actix-http's upgrade service.
//!
//! actix-http sends every request that asks for a WebSocket upgrade here instead of to the
//! actix-web `App`. This service applies the node's rules (the path is `/ws`; 503 while
//! shutting down or at `max_connections`; the door's bounds of `crate::admission`: 503 past
//! `max_pending_handshakes`, 429 past `max_connections_per_ip`), lets `socket::handshake` check
//! and answer the handshake, and starts the connection actor with the stream (TCP, or TLS when
//! the node serves `wss://` itself). A plain `GET /ws` (no upgrade) still goes to the `App`,
//! which answers 400.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use actix_http::body::BoxBody;
use actix_http::{Request, Response, StatusCode};
use actix_service::{Service, ServiceFactory};
use bytes::Bytes;

use crate::admission::Pending;
use crate::node::NodeContext;
use crate::session::Session;
use crate::socket::handshake::{self, Upgrading};
use crate::socket::stream::IntoClientStream;

/// Why an upgrade ended without a connection (only socket errors; refusals are answered).
#[derive(Debug, thiserror::Error)]
#[error("WebSocket upgrade: {0}")]
pub struct UpgradeError(#[from] std::io::Error);

impl From<UpgradeError> for Response<BoxBody> {
    fn from(_: UpgradeError) -> Self {
        Response::internal_server_error()
    }
}

/// A JSON error answer, as the `App`'s routes give.
fn json_error(status: StatusCode, why: &str) -> Response<Bytes> {
    let body = Bytes::from(serde_json::json!({ "error": why }).to_string());
    let mut res = Response::with_body(status, body);
    let h = res.headers_mut();
    h.insert(
        actix_http::header::CONTENT_TYPE,
        actix_http::header::HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(
            actix_http::header::RETRY_AFTER,
            actix_http::header::HeaderValue::from_static("1"),
        );
    }
    res
}

/// The `token` query parameter (`/ws?token=JWT`), percent-decoded.
fn url_token(req: &Request) -> Option<String> {
    let q = req.uri().query()?;
    let params =
        actix_web::web::Query::<std::collections::HashMap<String, String>>::from_query(q).ok()?;
    params
        .into_inner()
        .remove("token")
        .filter(|t| !t.is_empty())
}

/// The upgrade service of one worker, for connections of type `T` (TCP, or TLS over TCP).
pub struct WsUpgrade<T> {
    node: Arc<NodeContext>,
    _io: std::marker::PhantomData<fn(T)>,
}

impl<T: IntoClientStream> Service<(Request, Upgrading<T>)> for WsUpgrade<T> {
    type Response = ();
    type Error = UpgradeError;
    type Future = Pin<Box<dyn Future<Output = Result<(), UpgradeError>>>>;

    fn poll_ready(&self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&self, (req, mut framed): (Request, Upgrading<T>)) -> Self::Future {
        let node = self.node.clone();
        Box::pin(async move {
            if req.path() != "/ws" {
                return Ok(handshake::respond(
                    &mut framed,
                    json_error(StatusCode::NOT_FOUND, "no WebSocket endpoint here; use /ws"),
                )
                .await?);
            }
            if !node.is_accepting() {
                crate::metrics::connection_refused("shutting_down");
                let res = json_error(StatusCode::SERVICE_UNAVAILABLE, "shutting down");
                return Ok(handshake::respond(&mut framed, res).await?);
            }
            if node.conns.len() >= node.config.max_connections {
                crate::metrics::connection_refused("max_connections");
                let res = json_error(StatusCode::SERVICE_UNAVAILABLE, "connection limit reached");
                return Ok(handshake::respond(&mut framed, res).await?);
            }
            // The door (`crate::admission`): handshakes in progress, then the client's address.
            let pending = req.conn_data::<Pending>();
            if let Some(p) = pending
                && let Err(r) = p.check()
            {
                let res = json_error(StatusCode::SERVICE_UNAVAILABLE, r.message());
                return Ok(handshake::respond(&mut framed, res).await?);
            }
            let ip_slot = match req.peer_addr().map(|a| node.admission.admit_ip(a.ip())) {
                Some(Ok(slot)) => Some(slot),
                Some(Err(r)) => {
                    let mut res = json_error(StatusCode::TOO_MANY_REQUESTS, r.message());
                    res.headers_mut().insert(
                        actix_http::header::RETRY_AFTER,
                        actix_http::header::HeaderValue::from_static("5"),
                    );
                    return Ok(handshake::respond(&mut framed, res).await?);
                }
                None => None,
            };
            if let Err(e) = handshake::check(&req) {
                return Ok(handshake::refuse(&mut framed, e).await?);
            }
            let token = url_token(&req);
            let (stream, leftover) = handshake::accept(&req, framed).await?;
            if let Some(p) = pending {
                p.release();
            }
            Session::start(node, stream, leftover, token, ip_slot);
            Ok(())
        })
    }
}

/// Makes one [`WsUpgrade`] per worker.
pub struct WsUpgradeFactory {
    pub node: Arc<NodeContext>,
}

impl<T: IntoClientStream> ServiceFactory<(Request, Upgrading<T>)> for WsUpgradeFactory {
    type Response = ();
    type Error = UpgradeError;
    type Config = ();
    type Service = WsUpgrade<T>;
    type InitError = ();
    type Future = std::future::Ready<Result<WsUpgrade<T>, ()>>;

    fn new_service(&self, _: ()) -> Self::Future {
        std::future::ready(Ok(WsUpgrade {
            node: self.node.clone(),
            _io: std::marker::PhantomData,
        }))
    }
}
