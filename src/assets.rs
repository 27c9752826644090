//! The browser pages (the demo chat and the cluster dashboard) and their static files,
//! embedded in the binary and made ready for a CDN once, when the node starts.
//!
//! Why this shape: a node is one binary that must serve its pages without a file tree next to
//! it, and the mission wants static content offloaded to a CDN. So:
//!
//! * every file is compiled in (`include_bytes!`), and served under a **fingerprinted** name
//!   (`/assets/roomcast.3f9a0c1b2d.js`, from a hash of its bytes) with
//!   `Cache-Control: public, max-age=31536000, immutable` — a new build changes the name,
//!   never the bytes behind a name, so caches (browsers, CDNs) never need revalidating;
//! * the **pages** (`/`, `/demo`, `/dashboard`) name those fingerprinted URLs (in `<script>`,
//!   `<link>` and an import map, so modules import each other by bare name) and are served
//!   with `Cache-Control: no-cache` and an `ETag`, answered `304` when it matches;
//! * with `asset_base_url` set, pages point at `BASE/assets/NAME.HASH.EXT` on a CDN origin
//!   that pulls from any node; assets carry `Access-Control-Allow-Origin: *` so module scripts
//!   load across origins;
//! * text files are gzipped once at start-up and sent compressed when the client accepts
//!   gzip (`Vary: Accept-Encoding`);
//! * the unfingerprinted names (`/assets/roomcast.js`) stay available, revalidated by ETag,
//!   for people who import the client library straight from a node.
//!
//! Nothing here does I/O: [`Assets::build`] is pure, and the HTTP layer only looks up and
//! negotiates.

use std::collections::HashMap;
use std::io::Write as _;

use bytes::Bytes;
use sha2::{Digest, Sha256};

/// `Cache-Control` of fingerprinted assets: a name's bytes never change.
pub const IMMUTABLE: &str = "public, max-age=31536000, immutable";
/// `Cache-Control` of pages and unfingerprinted names: cache, but revalidate (ETag) each time.
pub const REVALIDATE: &str = "no-cache";

/// The embedded files: logical name, bytes, content type.
const FILES: &[(&str, &[u8], &str)] = &[
    (
        "roomcast.js",
        include_bytes!("../clients/js/roomcast.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "roomcast.d.ts",
        include_bytes!("../clients/js/roomcast.d.ts"),
        "text/plain; charset=utf-8",
    ),
    (
        "chart.js",
        include_bytes!("../web/chart.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "demo.js",
        include_bytes!("../web/demo.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "dashboard.js",
        include_bytes!("../web/dashboard.js"),
        "text/javascript; charset=utf-8",
    ),
    (
        "style.css",
        include_bytes!("../web/style.css"),
        "text/css; charset=utf-8",
    ),
    (
        "favicon.svg",
        include_bytes!("../web/favicon.svg"),
        "image/svg+xml",
    ),
];

/// The pages: name (as routed), HTML template. `{{asset:NAME}}` becomes NAME's URL.
const PAGES: &[(&str, &str)] = &[
    ("demo", include_str!("../web/demo.html")),
    ("dashboard", include_str!("../web/dashboard.html")),
];

/// One response body, ready in every encoding we offer.
#[derive(Debug)]
pub struct Body {
    pub content_type: &'static str,
    pub identity: Bytes,
    /// Present when gzip makes the body smaller.
    pub gzip: Option<Bytes>,
    /// Strong ETag of the identity bytes (quoted). The gzip variant gets a `-gz` suffix, as
    /// the two are different representations.
    pub etag: String,
}

/// What to send for a request: the bytes and how they are encoded.
pub struct Selected<'a> {
    pub bytes: &'a Bytes,
    pub gzip: bool,
    pub etag: String,
}

impl Body {
    fn new(content_type: &'static str, bytes: Vec<u8>) -> Body {
        let hash = Sha256::digest(&bytes);
        let etag = format!("\"{}\"", hex(&hash[..12]));
        let gzip = if content_type.starts_with("text/") || content_type.starts_with("image/svg") {
            gzip(&bytes).filter(|z| z.len() < bytes.len())
        } else {
            None
        };
        Body {
            content_type,
            identity: Bytes::from(bytes),
            gzip: gzip.map(Bytes::from),
            etag,
        }
    }

    /// The representation for a request's `Accept-Encoding`.
    pub fn select(&self, accept_encoding: Option<&str>) -> Selected<'_> {
        match &self.gzip {
            Some(z) if accepts_gzip(accept_encoding) => Selected {
                bytes: z,
                gzip: true,
                etag: format!("{}-gz\"", self.etag.trim_end_matches('"')),
            },
            _ => Selected {
                bytes: &self.identity,
                gzip: false,
                etag: self.etag.clone(),
            },
        }
    }
}

/// A static file.
#[derive(Debug)]
pub struct Asset {
    /// `NAME.HASH.EXT`.
    pub fingerprinted: String,
    pub body: Body,
}

/// Every page and file, built once per node.
#[derive(Debug)]
pub struct Assets {
    /// By fingerprinted name, and by logical name.
    by_fingerprint: HashMap<String, usize>,
    by_name: HashMap<&'static str, usize>,
    files: Vec<Asset>,
    pages: HashMap<&'static str, Body>,
}

/// How a path under `/assets/` was found.
pub enum Lookup<'a> {
    /// By its fingerprinted name: cache forever.
    Immutable(&'a Asset),
    /// By its plain name: revalidate.
    Plain(&'a Asset),
    NotFound,
}

impl Assets {
    /// Fingerprints and compresses the files and renders the pages. `base_url` is the origin
    /// pages load assets from (`asset_base_url`; `None`: this node).
    pub fn build(base_url: Option<&str>) -> Assets {
        let base = base_url.unwrap_or("");
        let mut files = Vec::new();
        let mut by_fingerprint = HashMap::new();
        let mut by_name = HashMap::new();
        for (name, bytes, content_type) in FILES {
            let fingerprinted = fingerprint(name, bytes);
            by_fingerprint.insert(fingerprinted.clone(), files.len());
            by_name.insert(*name, files.len());
            files.push(Asset {
                fingerprinted,
                body: Body::new(content_type, bytes.to_vec()),
            });
        }
        let url = |name: &str| {
            by_name
                .get(name)
                .map(|i: &usize| format!("{base}/assets/{}", files[*i].fingerprinted))
        };
        let pages = PAGES
            .iter()
            .map(|(name, template)| {
                let html = render(template, &url);
                (
                    *name,
                    Body::new("text/html; charset=utf-8", html.into_bytes()),
                )
            })
            .collect();
        Assets {
            by_fingerprint,
            by_name,
            files,
            pages,
        }
    }

    /// A file under `/assets/`, by fingerprinted or plain name.
    pub fn asset(&self, name: &str) -> Lookup<'_> {
        if let Some(i) = self.by_fingerprint.get(name) {
            Lookup::Immutable(&self.files[*i])
        } else if let Some(i) = self.by_name.get(name) {
            Lookup::Plain(&self.files[*i])
        } else {
            Lookup::NotFound
        }
    }

    /// A rendered page (`demo`, `dashboard`).
    pub fn page(&self, name: &str) -> Option<&Body> {
        self.pages.get(name)
    }

    /// The fingerprinted file name of an embedded file (for tests and docs).
    pub fn fingerprinted(&self, name: &str) -> Option<&str> {
        self.by_name
            .get(name)
            .map(|i| self.files[*i].fingerprinted.as_str())
    }
}

/// `roomcast.js` → `roomcast.<10 hex of sha-256>.js`.
fn fingerprint(name: &str, bytes: &[u8]) -> String {
    let hash = hex(&Sha256::digest(bytes)[..5]);
    match name.rsplit_once('.') {
        Some((stem, ext)) => format!("{stem}.{hash}.{ext}"),
        None => format!("{name}.{hash}"),
    }
}

/// Replaces every `{{asset:NAME}}` with NAME's URL. An unknown name is a build mistake and is
/// left visible in the page (the asset tests catch it).
fn render(template: &str, url: &dyn Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(template.len() + 256);
    let mut rest = template;
    while let Some(start) = rest.find("{{asset:") {
        out.push_str(&rest[..start]);
        let after = &rest[start + "{{asset:".len()..];
        match after.find("}}") {
            Some(end) => {
                let name = &after[..end];
                match url(name) {
                    Some(u) => out.push_str(&u),
                    None => out.push_str(&rest[start..start + "{{asset:".len() + end + 2]),
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn gzip(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(bytes).ok()?;
    enc.finish().ok()
}

/// Whether an `Accept-Encoding` header accepts gzip (`gzip` or `*` with a q-value above 0).
pub fn accepts_gzip(header: Option<&str>) -> bool {
    let Some(h) = header else { return false };
    let mut star = None;
    for item in h.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .and_then(|v| v.trim().parse::<f32>().ok())
            })
            .next()
            .unwrap_or(1.0);
        match coding.as_str() {
            "gzip" | "x-gzip" => return q > 0.0,
            "*" => star = Some(q > 0.0),
            _ => {}
        }
    }
    star.unwrap_or(false)
}

/// Whether an `If-None-Match` header matches `etag` (weak comparison, as RFC 9110 asks for
/// `If-None-Match`; `*` matches anything).
pub fn etag_matches(if_none_match: Option<&str>, etag: &str) -> bool {
    let Some(h) = if_none_match else { return false };
    let strip = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let want = strip(etag);
    h.split(',').any(|t| {
        let t = t.trim();
        t == "*" || strip(t) == want
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_under_a_name_that_changes_with_its_bytes() {
        let a = Assets::build(None);
        for (name, bytes, _) in FILES {
            let fp = a.fingerprinted(name).unwrap();
            assert_ne!(fp, *name);
            assert!(matches!(a.asset(fp), Lookup::Immutable(x) if x.body.identity == *bytes));
            assert!(matches!(a.asset(name), Lookup::Plain(_)));
        }
        assert_ne!(fingerprint("a.js", b"1"), fingerprint("a.js", b"2"));
        assert!(fingerprint("roomcast.js", b"x").starts_with("roomcast."));
        assert!(fingerprint("roomcast.js", b"x").ends_with(".js"));
        assert!(matches!(a.asset("nope.js"), Lookup::NotFound));
    }

    #[test]
    fn pages_name_fingerprinted_assets_on_the_node_or_the_cdn() {
        let local = Assets::build(None);
        let cdn = Assets::build(Some("https://cdn.example.com"));
        for (page, script) in [("demo", "demo.js"), ("dashboard", "dashboard.js")] {
            let html = std::str::from_utf8(&local.page(page).unwrap().identity).unwrap();
            assert!(!html.contains("{{asset:"), "{page} names an unknown asset");
            let lib = local.fingerprinted(script).unwrap();
            assert!(
                html.contains(&format!("\"/assets/{lib}\"")),
                "{page}: {html}"
            );
            let html = std::str::from_utf8(&cdn.page(page).unwrap().identity).unwrap();
            assert!(html.contains(&format!("\"https://cdn.example.com/assets/{lib}\"")));
        }
        assert_ne!(
            local.page("demo").unwrap().etag,
            cdn.page("demo").unwrap().etag
        );
    }

    #[test]
    fn gzip_is_offered_only_to_clients_that_accept_it_and_round_trips() {
        let a = Assets::build(None);
        let Lookup::Plain(js) = a.asset("roomcast.js") else {
            panic!()
        };
        let z = js.body.gzip.as_ref().expect("a JS file compresses");
        let mut plain = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&z[..]), &mut plain).unwrap();
        assert_eq!(plain, js.body.identity);
        let sel = js.body.select(Some("gzip, deflate, br"));
        assert!(sel.gzip && sel.etag != js.body.etag);
        assert!(!js.body.select(None).gzip);
        assert!(!js.body.select(Some("br")).gzip);
        assert!(!js.body.select(Some("gzip;q=0")).gzip);
        assert!(js.body.select(Some("*")).gzip);
        assert!(!js.body.select(Some("*;q=0")).gzip);
    }

    #[test]
    fn etags_match_as_if_none_match_wants() {
        assert!(etag_matches(Some("\"abc\""), "\"abc\""));
        assert!(etag_matches(Some("W/\"abc\""), "\"abc\""));
        assert!(etag_matches(Some("\"x\", \"abc\""), "\"abc\""));
        assert!(etag_matches(Some("*"), "\"abc\""));
        assert!(!etag_matches(Some("\"abd\""), "\"abc\""));
        assert!(!etag_matches(None, "\"abc\""));
    }

    #[test]
    fn templates_replace_known_names_and_leave_unknown_ones_visible() {
        let url = |n: &str| (n == "a.js").then(|| "/assets/a.1.js".to_string());
        assert_eq!(
            render("<{{asset:a.js}}|{{asset:b.js}}|{{asset:", &url),
            "</assets/a.1.js|{{asset:b.js}}|{{asset:"
        );
    }
}
