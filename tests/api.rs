//! The HTTP server API against real nodes (issue 11): key checks, every endpoint, the client
//! protocol's error codes as HTTP statuses, and a publish through the API on one node reaching
//! subscribers on the others like a client's publish.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::{Client, Cluster, Node, http_request};
use serde_json::{Value, json};

const KEY: &str = "test-api-key-0123456789";
const OLD_KEY: &str = "rotated-out-key-9876543210";

fn keys_file(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rc-api-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("api.keys");
    std::fs::write(
        &path,
        format!("# current and previous key\n{KEY}\n\n{OLD_KEY}\n"),
    )
    .unwrap();
    path
}

async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = Vec::new();
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    let (status, text) = http_request(addr, method, path, &headers, body).await;
    let v = serde_json::from_str(&text).unwrap_or(json!({ "raw": text }));
    (status, v)
}

#[tokio::test]
async fn every_endpoint_with_key_checks_and_typed_errors() {
    let keys = keys_file("one");
    let node = Node::start(&[
        "--api-keys-file",
        keys.to_str().unwrap(),
        "--max-data-bytes",
        "1000",
    ]);
    let a = node.http;
    // Keys: missing, wrong, and both keys of the file (rotation).
    let body = r#"{"room":"news","data":{"n":1}}"#;
    let (st, v) = call(a, "POST", "/api/publish", None, body).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (401, Some("unauthorized")),
        "{v}"
    );
    let (st, _) = call(a, "POST", "/api/publish", Some("wrong-key-wrong-key"), body).await;
    assert_eq!(st, 401);
    let mut sub = Client::connect(&node.ws_url()).await;
    sub.join("news").await;
    let (st, v) = call(a, "POST", "/api/publish", Some(KEY), body).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["seq"], 1);
    let epoch = v["epoch"].as_str().unwrap().to_string();
    let ev = sub.next_event().await;
    assert_eq!(
        (ev["seq"].clone(), ev["data"].clone()),
        (json!(1), json!({"n":1}))
    );
    assert_eq!(ev["epoch"], epoch.as_str());
    let (st, v) = call(
        a,
        "POST",
        "/api/publish",
        Some(OLD_KEY),
        r#"{"room":"news","data":2,"key":"k-2"}"#,
    )
    .await;
    assert_eq!((st, v["seq"].clone()), (200, json!(2)), "{v}");
    // A retry with the same key gets the original seq, and no second message.
    let (st, v) = call(
        a,
        "POST",
        "/api/publish",
        Some(KEY),
        r#"{"room":"news","data":2,"key":"k-2"}"#,
    )
    .await;
    assert_eq!((st, v["seq"].clone()), (200, json!(2)), "{v}");
    // Errors: bad JSON, bad room, data too large, bad key.
    let (st, v) = call(a, "POST", "/api/publish", Some(KEY), "{nope").await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (400, Some("bad_request")),
        "{v}"
    );
    let (st, _) = call(
        a,
        "POST",
        "/api/publish",
        Some(KEY),
        r#"{"room":"a b","data":1}"#,
    )
    .await;
    assert_eq!(st, 400);
    let big = format!(r#"{{"room":"news","data":"{}"}}"#, "x".repeat(1200));
    let (st, v) = call(a, "POST", "/api/publish", Some(KEY), &big).await;
    assert_eq!(
        (st, v["error"]["code"].as_str()),
        (413, Some("too_large")),
        "{v}"
    );
    let (st, _) = call(
        a,
        "POST",
        "/api/publish",
        Some(KEY),
        r#"{"room":"news","data":1,"key":""}"#,
    )
    .await;
    assert_eq!(st, 400);

    // Broadcast: one result per room, in order.
    let (st, v) = call(
        a,
        "POST",
        "/api/broadcast",
        Some(KEY),
        r#"{"rooms":["news","sport"],"data":"all"}"#,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let r = v["results"].as_array().unwrap();
    assert_eq!(
        (r[0]["room"].clone(), r[0]["seq"].clone()),
        (json!("news"), json!(3))
    );
    assert_eq!(
        (r[1]["room"].clone(), r[1]["seq"].clone()),
        (json!("sport"), json!(1))
    );
    let (st, _) = call(
        a,
        "POST",
        "/api/broadcast",
        Some(KEY),
        r#"{"rooms":[],"data":1}"#,
    )
    .await;
    assert_eq!(st, 400);

    // History: after `since`, bounded by `limit`, the event frames as JSON.
    let (st, v) = call(
        a,
        "GET",
        "/api/rooms/news/history?since=1&limit=10",
        Some(KEY),
        "",
    )
    .await;
    assert_eq!(st, 200, "{v}");
    let seqs: Vec<u64> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(
        (v["seq"].clone(), v["recovered"].clone()),
        (json!(3), json!(true))
    );
    let (st, v) = call(a, "GET", "/api/rooms/news/history?limit=1", Some(KEY), "").await;
    assert_eq!(
        (st, v["messages"].as_array().map(|m| m.len())),
        (200, Some(1)),
        "{v}"
    );
    let (st, _) = call(a, "GET", "/api/rooms/news/history?since=-1", Some(KEY), "").await;
    assert_eq!(st, 400);
    let (st, _) = call(a, "GET", "/api/rooms/news/history", None, "").await;
    assert_eq!(st, 401);
    node.wait_metric(
        "roomcast_api_requests_total{endpoint=\"publish\",status=\"200\"}",
        |v| v >= 3.0,
    )
    .await;
    node.wait_metric(
        "roomcast_api_requests_total{endpoint=\"publish\",status=\"401\"}",
        |v| v >= 2.0,
    )
    .await;
}

#[tokio::test]
async fn the_api_is_off_without_a_keys_file() {
    let node = Node::start(&[]);
    let (st, v) = call(
        node.http,
        "POST",
        "/api/publish",
        Some(KEY),
        r#"{"room":"a","data":1}"#,
    )
    .await;
    assert_eq!(st, 404, "{v}");
}

#[tokio::test]
async fn an_api_publish_on_one_node_reaches_subscribers_on_every_node_in_order() {
    let keys = keys_file("cluster");
    let c = Cluster::start(3, &["--api-keys-file", keys.to_str().unwrap()]).await;
    let ids = c.ids();
    // A room owned by node 1, published to through node 0's API, heard on node 2.
    let room = c.room_owned_by(1, &ids, "api");
    let mut sub = Client::connect(&c.nodes[2].ws_url()).await;
    sub.join(&room).await;
    let mut client = Client::connect(&c.nodes[0].ws_url()).await;
    for i in 1..=6u64 {
        if i % 2 == 0 {
            let body = json!({"room": room, "data": i}).to_string();
            let (st, v) = call(c.nodes[0].http, "POST", "/api/publish", Some(KEY), &body).await;
            assert_eq!((st, v["seq"].as_u64()), (200, Some(i)), "{v}");
        } else {
            assert_eq!(client.publish(&room, json!(i)).await, i);
        }
    }
    let evs = sub.events(&room, 6).await;
    let data: Vec<u64> = evs.iter().map(|e| e["data"].as_u64().unwrap()).collect();
    assert_eq!(data, vec![1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn disconnect_closes_every_connection_of_the_user_on_every_node() {
    let keys = keys_file("disconnect");
    let secret_path = keys.with_file_name("jwt.secret");
    let secret = b"0123456789abcdef0123456789abcdef-disconnect";
    std::fs::write(&secret_path, secret).unwrap();
    let c = Cluster::start(
        3,
        &[
            "--api-keys-file",
            keys.to_str().unwrap(),
            "--auth",
            "optional",
            "--jwt-secret-file",
            secret_path.to_str().unwrap(),
        ],
    )
    .await;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = |sub: &str| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"sub": sub, "exp": exp}),
            &jsonwebtoken::EncodingKey::from_secret(secret).unwrap(),
        )
        .unwrap()
    };
    let url = |i: usize, sub: &str| format!("{}?token={}", c.nodes[i].ws_url(), token(sub));
    let mut zed0 = Client::connect(&url(0, "zed")).await;
    let mut zed2 = Client::connect(&url(2, "zed")).await;
    let mut amy = Client::connect(&url(2, "amy")).await;
    // Each is authenticated once a request of it has been answered.
    for cl in [&mut zed0, &mut zed2, &mut amy] {
        cl.request(json!({"op":"ping"})).await;
    }
    let (st, v) = call(
        c.nodes[1].http,
        "POST",
        "/api/disconnect",
        Some(KEY),
        r#"{"user":"zed","reason":"banned"}"#,
    )
    .await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["disconnected"], 0, "no zed on the node asked: {v}");
    for z in [&mut zed0, &mut zed2] {
        let f = z.recv_frame().await;
        assert_eq!(
            (f["type"].as_str(), f["reason"].as_str()),
            (Some("disconnect"), Some("banned")),
            "{f}"
        );
        match z.ended().await {
            common::Ended::Closed(code, _) => assert_eq!(code, 4403),
            e => panic!("expected 4403, got {e:?}"),
        }
    }
    // Another user is untouched.
    let r = amy.request(json!({"op":"ping"})).await;
    assert_eq!(r["ok"], true);
    let (st, _) = call(
        c.nodes[1].http,
        "POST",
        "/api/disconnect",
        Some(KEY),
        r#"{"user":""}"#,
    )
    .await;
    assert_eq!(st, 400);
}

#[tokio::test]
async fn rooms_are_listed_cluster_wide_with_subscriber_counts_and_pages() {
    let keys = keys_file("rooms");
    let c = Cluster::start(3, &["--api-keys-file", keys.to_str().unwrap()]).await;
    let mut clients = Vec::new();
    for (node, room) in [
        (0, "chat.a"),
        (0, "chat.a"),
        (2, "chat.a"),
        (1, "chat.b"),
        (1, "news"),
    ] {
        let mut cl = Client::connect(&c.nodes[node].ws_url()).await;
        cl.join(room).await;
        clients.push(cl);
    }
    let a = c.nodes[2].http;
    let (st, v) = call(a, "GET", "/api/rooms?prefix=chat.", Some(KEY), "").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        v["rooms"],
        json!([{"room":"chat.a","subscribers":3},{"room":"chat.b","subscribers":1}])
    );
    assert_eq!(
        (v["cursor"].clone(), v["missing"].clone()),
        (Value::Null, json!([]))
    );
    // One room per page: follow the cursor.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (st, v) = call(
            a,
            "GET",
            &format!("/api/rooms?limit=1&cursor={cursor}"),
            Some(KEY),
            "",
        )
        .await;
        assert_eq!(st, 200, "{v}");
        for r in v["rooms"].as_array().unwrap() {
            seen.push((
                r["room"].as_str().unwrap().to_string(),
                r["subscribers"].as_u64().unwrap(),
            ));
        }
        match v["cursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
        assert!(seen.len() <= 3, "{seen:?}");
    }
    assert_eq!(
        seen,
        vec![
            ("chat.a".into(), 3),
            ("chat.b".into(), 1),
            ("news".into(), 1)
        ]
    );
    let (st, _) = call(a, "GET", "/api/rooms?limit=0", Some(KEY), "").await;
    assert_eq!(st, 400);
}
