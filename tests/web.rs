//! The browser pages over HTTP (no browser): the demo and dashboard pages name fingerprinted
//! assets; assets are immutable with the right types and CORS; pages revalidate with ETag /
//! 304; gzip only when accepted; `asset_base_url` points pages at a CDN origin; the
//! dashboard's live feed and `/cluster` carry every member's numbers.
//! (tests/browser.rs drives the same pages in a real Chromium.)

mod common;

use std::collections::HashMap;
use std::io::Read as _;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// One HTTP/1.1 request; the body is read by Content-Length (all these responses have one).
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Resp {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let split = buf
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = String::from_utf8_lossy(&buf[..split]).to_string();
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Resp {
            status,
            headers,
            body: buf[split + 4..].to_vec(),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .expect("request timed out")
}

/// The URLs a page's HTML names in `src`/`href` attributes and its import map.
fn asset_urls(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for part in html.split('"').skip(1).step_by(2) {
        if part.contains("/assets/") && !out.contains(&part.to_string()) {
            out.push(part.to_string());
        }
    }
    out
}

#[tokio::test]
async fn pages_and_assets_are_ready_for_browsers_and_caches() {
    let node = Node::start(&[]);
    for path in ["/", "/demo", "/dashboard"] {
        let page = request(node.http, "GET", path, &[]).await;
        assert_eq!(page.status, 200, "{path}");
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(page.header("cache-control"), Some("no-cache"));
        let etag = page.header("etag").expect("pages have an ETag").to_string();
        // Revalidation: the same ETag is a 304 without a body.
        let again = request(node.http, "GET", path, &[("If-None-Match", &etag)]).await;
        assert_eq!(again.status, 304, "{path}");
        assert!(again.body.is_empty());
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let other = request(node.http, "GET", path, &[("If-None-Match", "\"stale\"")]).await;
        assert_eq!(other.status, 200);

        let html = String::from_utf8(page.body).unwrap();
        assert!(!html.contains("{{"), "{path} has an unrendered placeholder");
        let urls = asset_urls(&html);
        assert!(
            urls.len() >= 4,
            "{path} names its script, style, icon and library: {urls:?}"
        );
        for url in urls {
            // Fingerprinted: NAME.HASH.EXT, 10 hex digits.
            let file = url.rsplit('/').next().unwrap();
            let parts: Vec<&str> = file.split('.').collect();
            assert!(
                parts.len() >= 3 && parts[parts.len() - 2].len() == 10,
                "{url} is not fingerprinted"
            );
            let a = request(node.http, "GET", &url, &[]).await;
            assert_eq!(a.status, 200, "{url}");
            assert_eq!(
                a.header("cache-control"),
                Some("public, max-age=31536000, immutable"),
                "{url}"
            );
            assert_eq!(a.header("access-control-allow-origin"), Some("*"));
            assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
            let want = match file.rsplit('.').next().unwrap() {
                "js" => "text/javascript; charset=utf-8",
                "css" => "text/css; charset=utf-8",
                "svg" => "image/svg+xml",
                ext => panic!("unexpected asset type {ext}"),
            };
            assert_eq!(a.header("content-type"), Some(want), "{url}");
            assert!(a.header("content-encoding").is_none());

            // gzip when accepted, and it decodes to the same bytes.
            let z = request(node.http, "GET", &url, &[("Accept-Encoding", "gzip, br")]).await;
            assert_eq!(z.header("vary"), Some("Accept-Encoding"));
            if z.header("content-encoding") == Some("gzip") {
                let mut plain = Vec::new();
                flate2::read::GzDecoder::new(&z.body[..])
                    .read_to_end(&mut plain)
                    .unwrap();
                assert_eq!(plain, a.body, "{url}: gzip decodes to the file");
                assert!(z.body.len() < a.body.len());
                assert_ne!(z.header("etag"), a.header("etag"));
            } else {
                assert_eq!(want, "image/svg+xml", "{url}: text is served gzipped");
            }
            // HEAD answers like GET without a body.
            let h = request(node.http, "HEAD", &url, &[]).await;
            assert_eq!(h.status, 200);
            assert!(h.body.is_empty());
        }
    }
    // The library under its plain name: revalidated, not immutable.
    let lib = request(node.http, "GET", "/assets/roomcast.js", &[]).await;
    assert_eq!(lib.status, 200);
    assert_eq!(lib.header("cache-control"), Some("no-cache"));
    let text = String::from_utf8(lib.body.clone()).unwrap();
    assert!(text.contains("export class RoomcastClient"));
    let etag = lib.header("etag").unwrap().to_string();
    let r = request(
        node.http,
        "GET",
        "/assets/roomcast.js",
        &[("If-None-Match", &etag)],
    )
    .await;
    assert_eq!(r.status, 304);
    let d = request(node.http, "GET", "/assets/roomcast.d.ts", &[]).await;
    assert_eq!(d.status, 200);
    assert_eq!(
        request(node.http, "GET", "/assets/nope.js", &[])
            .await
            .status,
        404
    );
    assert_eq!(
        request(node.http, "GET", "/assets/..%2Fsrc%2Flib.rs", &[])
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn pages_load_assets_from_a_cdn_origin_when_told_to() {
    let node = Node::start(&["--asset-base-url", "https://cdn.example.com"]);
    let page = request(node.http, "GET", "/dashboard", &[]).await;
    let html = String::from_utf8(page.body).unwrap();
    let urls = asset_urls(&html);
    assert!(!urls.is_empty());
    for url in &urls {
        assert!(url.starts_with("https://cdn.example.com/assets/"), "{url}");
        // The CDN pulls the same path from any node.
        let path = url.trim_start_matches("https://cdn.example.com");
        assert_eq!(request(node.http, "GET", path, &[]).await.status, 200);
    }
    // A bad origin is refused at start, with the option named.
    let out = std::process::Command::new(bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "127.0.0.1:0",
            "--asset-base-url",
            "cdn.example.com/",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("asset_base_url"), "{err}");
}

/// Reads SSE `data:` events from a streaming response until `n` arrived; returns the
/// response head too.
async fn sse_events(addr: SocketAddr, path: &str, n: usize) -> (String, Vec<Value>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while out.len() < n {
        let mut chunk = [0u8; 65536];
        let k = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .expect("dashboard events in time")
            .unwrap();
        assert!(k > 0, "stream ended early");
        buf.extend_from_slice(&chunk[..k]);
        let text = String::from_utf8_lossy(&buf).to_string();
        out = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter_map(|d| serde_json::from_str(d).ok())
            .collect();
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let head = text.split("\r\n\r\n").next().unwrap_or("").to_string();
    (head, out)
}

#[tokio::test]
async fn the_dashboard_feed_shows_every_member_with_its_numbers() {
    let c = Cluster::start(3, &[]).await;
    // Some traffic, so rates and p99 have something to show.
    let mut sub = c.nodes[1].connect().await;
    sub.join("dash").await;
    let mut publ = c.nodes[2].connect().await;
    for i in 0..20 {
        publ.publish("dash", serde_json::json!(i)).await;
    }
    sub.events("dash", 20).await;
    let ids = c.ids();
    // Every member's numbers reach every node by gossip within a few rounds.
    wait_until("every member's stats in /cluster", || async {
        let v = c.nodes[0].get_json("/cluster").await;
        v["members"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["stats"]["at_ms"].as_u64().is_some() && m["stats"]["rooms_owned"].is_u64())
    })
    .await;
    wait_until("the deliveries counted", || async {
        let v = c.nodes[0].get_json("/cluster").await;
        v["members"].as_array().unwrap().iter().any(|m| {
            m["id"] == ids[1].as_str() && m["stats"]["delivered_total"].as_u64() >= Some(20)
        })
    })
    .await;
    // The publisher's node counts the acknowledged publishes (sampled and gossiped each
    // second, independently of the subscriber's node).
    wait_until("the publishes counted", || async {
        let v = c.nodes[0].get_json("/cluster").await;
        let published: u64 = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["stats"]["published_total"].as_u64().unwrap_or(0))
            .sum();
        published >= 20
    })
    .await;

    // The feed: a report per second, the same shape as /cluster, with CORS for other origins.
    let (head, events) = sse_events(c.nodes[0].http, "/dashboard/events", 2).await;
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    for e in &events {
        assert_eq!(e["self"], ids[0].as_str());
        assert_eq!(e["members"].as_array().unwrap().len(), 3);
    }
}
