//! The soak's WebSocket plumbing: connecting with small buffers (15,000 clients live in one
//! process: tungstenite's default 128 KiB read buffer each would be 2 GB), reading server
//! frames with one borrowed parse, and a plain HTTP GET for the sampler.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a TCP connect or a WebSocket handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `host:port` of a `ws://host:port/path` URL.
pub(crate) fn host_port(url: &str) -> anyhow::Result<&str> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| anyhow::anyhow!("only ws:// URLs are supported: {url}"))?;
    Ok(rest.split('/').next().unwrap_or(rest))
}

/// Opens a WebSocket to `url` (from `source` if given) and returns it.
pub(crate) async fn connect(url: &str, source: Option<IpAddr>) -> anyhow::Result<Ws> {
    let addr: SocketAddr = tokio::net::lookup_host(host_port(url)?)
        .await?
        .next()
        .ok_or_else(|| anyhow::anyhow!("{url} resolves to nothing"))?;
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = tokio::time::timeout(CONNECT_TIMEOUT, sock.connect(addr)).await??;
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(0);
    let (ws, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(stream),
            Some(config),
        ),
    )
    .await??;
    Ok(ws)
}

/// The payload the soak publishes: who (`p`, one id per client incarnation) and which of its
/// publishes (`n`). Padding (`x`) is ignored.
#[derive(Debug, Deserialize, Clone, Copy)]
pub(crate) struct Data {
    pub p: u64,
    pub n: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrBody<'a> {
    #[serde(borrow)]
    pub code: Cow<'a, str>,
}

/// Any server frame, read with one parse; only the fields the soak looks at.
#[derive(Debug, Deserialize)]
pub(crate) struct In<'a> {
    #[serde(rename = "type", borrow)]
    pub ty: Option<Cow<'a, str>>,
    pub id: Option<u64>,
    pub ok: Option<bool>,
    #[serde(borrow)]
    pub room: Option<Cow<'a, str>>,
    pub seq: Option<u64>,
    #[serde(borrow)]
    pub epoch: Option<Cow<'a, str>>,
    pub recovered: Option<bool>,
    pub data: Option<Data>,
    #[serde(borrow)]
    pub error: Option<ErrBody<'a>>,
    #[serde(borrow)]
    pub url: Option<Cow<'a, str>>,
    /// `history` replies.
    #[serde(default)]
    pub messages: Vec<HistMsg>,
}

/// One message of a `history` reply.
#[derive(Debug, Deserialize)]
pub(crate) struct HistMsg {
    pub seq: u64,
    pub epoch: String,
    pub data: Option<Data>,
}

/// The payload of publish `n` of client `p`, about `size` bytes of JSON.
pub(crate) fn payload(p: u64, n: u64, size: usize) -> String {
    let head = format!(r#"{{"p":{p},"n":{n},"x":""#);
    let pad = size.saturating_sub(head.len() + 2);
    let mut s = String::with_capacity(head.len() + pad + 2);
    s.push_str(&head);
    s.extend(std::iter::repeat_n('x', pad));
    s.push_str("\"}");
    s
}

/// GET `path` on `addr` (HTTP/1.0, body read to the end); the status and the body.
pub(crate) async fn http_get(addr: &str, path: &str, limit: Duration) -> Option<(u16, String)> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        Some((status, body.to_string()))
    };
    tokio::time::timeout(limit, fut).await.ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_with_borrowed_fields() {
        let t = r#"{"type":"message","room":"soak-3","seq":7,"epoch":"ab-cd-0","data":{"p":4,"n":9,"x":"xx"},"from":"n/1","ts":1}"#;
        let f: In = serde_json::from_str(t).unwrap();
        assert_eq!(f.ty.as_deref(), Some("message"));
        assert_eq!(f.room.as_deref(), Some("soak-3"));
        assert_eq!((f.seq, f.data.map(|d| (d.p, d.n))), (Some(7), Some((4, 9))));
        let r = r#"{"id":3,"ok":false,"error":{"code":"unavailable","message":"x"}}"#;
        let f: In = serde_json::from_str(r).unwrap();
        assert_eq!(f.error.unwrap().code, "unavailable");
        let p = payload(1, 2, 64);
        assert_eq!(p.len(), 64);
        let d: Data = serde_json::from_str(&p).unwrap();
        assert_eq!((d.p, d.n), (1, 2));
    }

    #[test]
    fn host_port_of_a_ws_url() {
        assert_eq!(
            host_port("ws://127.0.0.1:8080/ws").unwrap(),
            "127.0.0.1:8080"
        );
        assert!(host_port("http://x").is_err());
    }
}
