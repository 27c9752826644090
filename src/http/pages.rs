//! The browser pages and their static files (`crate::assets` builds them; this only answers).
//!
//! * `GET /`, `/demo` — the demo chat; `GET /dashboard` — the live cluster dashboard. Pages
//!   are `no-cache` with an `ETag` (304 when `If-None-Match` matches).
//! * `GET /assets/NAME.HASH.EXT` — a fingerprinted file, `immutable` for a year;
//!   `GET /assets/NAME.EXT` — the same file, revalidated by ETag. Both with
//!   `Access-Control-Allow-Origin: *` (module scripts from a CDN origin are CORS requests).
//!
//! HEAD is answered like GET (a CDN probing an origin); gzip when the client accepts it.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};

use crate::assets::{self, Body, Lookup};
use crate::node::NodeContext;

pub fn routes(cfg: &mut web::ServiceConfig) {
    for (path, page) in [
        ("/", "demo"),
        ("/demo", "demo"),
        ("/dashboard", "dashboard"),
    ] {
        let handler = move |node: web::Data<NodeContext>, req: HttpRequest| async move {
            match node.assets.page(page) {
                Some(body) => respond(&req, body, assets::REVALIDATE, false),
                None => HttpResponse::NotFound().finish(),
            }
        };
        cfg.route(path, web::get().to(handler))
            .route(path, web::head().to(handler));
    }
    cfg.route("/assets/{name}", web::get().to(asset))
        .route("/assets/{name}", web::head().to(asset));
}

async fn asset(
    node: web::Data<NodeContext>,
    req: HttpRequest,
    name: web::Path<String>,
) -> HttpResponse {
    match node.assets.asset(&name) {
        Lookup::Immutable(a) => respond(&req, &a.body, assets::IMMUTABLE, true),
        Lookup::Plain(a) => respond(&req, &a.body, assets::REVALIDATE, true),
        Lookup::NotFound => HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no such asset"),
    }
}

fn respond(req: &HttpRequest, body: &Body, cache: &'static str, cors: bool) -> HttpResponse {
    let header_str = |h| {
        req.headers()
            .get(h)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let sel = body.select(header_str(header::ACCEPT_ENCODING));
    let not_modified = assets::etag_matches(header_str(header::IF_NONE_MATCH), &sel.etag);
    let mut res = HttpResponse::build(if not_modified {
        StatusCode::NOT_MODIFIED
    } else {
        StatusCode::OK
    });
    res.insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ETAG, sel.etag.as_str()))
        .insert_header((header::VARY, "Accept-Encoding"))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if cors {
        res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"));
    }
    if not_modified {
        return res.finish();
    }
    res.insert_header((header::CONTENT_TYPE, body.content_type));
    if sel.gzip {
        res.insert_header((header::CONTENT_ENCODING, "gzip"));
    }
    res.body(sel.bytes.clone())
}
