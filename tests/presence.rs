//! Presence across real nodes (issue 11): connections on three nodes join a room with
//! `presence`, a subscriber follows `presence_events`, the `presence` op and the server API
//! list the set cluster-wide, and a SIGKILLed node's connections leave the set — with leave
//! events — within `failure_timeout` + 1 s; nothing stale after.

mod common;

use std::time::{Duration, Instant};

use common::{Client, Cluster, http_request};
use serde_json::{Value, json};

const KEY: &str = "presence-api-key-0123456789";

fn conns(reply: &Value) -> Vec<String> {
    let mut v: Vec<String> = reply["members"]
        .as_array()
        .unwrap_or_else(|| panic!("no members: {reply}"))
        .iter()
        .map(|m| m["conn"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// The next presence frame (other frames are kept pending).
async fn next_presence(c: &mut Client, limit: Duration) -> Result<Value, String> {
    if let Some(i) = c.pending.iter().position(|v| v["type"] == "presence") {
        return Ok(c.pending.remove(i).unwrap());
    }
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = c.try_recv_frame(left).await?;
        if v["type"] == "presence" {
            return Ok(v);
        }
        c.pending.push_back(v);
    }
}

#[tokio::test]
async fn presence_is_cluster_wide_and_a_killed_nodes_connections_leave_in_time() {
    let dir = std::env::temp_dir().join(format!("rc-presence-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keys = dir.join("api.keys");
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let mut c = Cluster::start(3, &["--api-keys-file", keys.to_str().unwrap()]).await;
    let ids = c.ids();
    // The room's owner survives; node 2 will be killed.
    let room = c.room_owned_by(0, &ids, "pres");
    let mut watcher = Client::connect(&c.nodes[0].ws_url()).await;
    let r = watcher
        .request(json!({"op":"join","room":room,"presence_events":true}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let mut members = Vec::new();
    for i in 0..3 {
        let mut m = Client::connect(&c.nodes[i].ws_url()).await;
        let r = m
            .request(json!({"op":"join","room":room,"presence":true}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        members.push(m);
    }
    let names: Vec<String> = members
        .iter()
        .map(|m| m.welcome["conn"].as_str().unwrap().to_string())
        .collect();
    for _ in 0..3 {
        let ev = next_presence(&mut watcher, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(ev["action"], "join", "{ev}");
        assert_eq!(
            ev["user"], ev["conn"],
            "anonymous: the user is the connection: {ev}"
        );
    }
    // The set, read on any node (op and API), is the same.
    let mut want = names.clone();
    want.sort();
    for (i, m) in members.iter_mut().enumerate() {
        let r = m.request(json!({"op":"presence","room":room})).await;
        assert_eq!(conns(&r), want, "presence op on node {i}: {r}");
    }
    let auth = format!("Bearer {KEY}");
    let (st, body) = http_request(
        c.nodes[1].http,
        "GET",
        &format!("/api/rooms/{room}/presence"),
        &[("Authorization", auth.as_str())],
        "",
    )
    .await;
    assert_eq!(st, 200, "{body}");
    assert_eq!(conns(&serde_json::from_str(&body).unwrap()), want);

    // Node 2 is SIGKILLed: its connection leaves within failure_timeout (2 s) + 1 s.
    let killed_at = Instant::now();
    c.nodes[2].kill();
    let ev = next_presence(&mut watcher, Duration::from_secs(10))
        .await
        .unwrap();
    let took = killed_at.elapsed();
    assert_eq!(
        (ev["action"].as_str(), ev["conn"].as_str()),
        (Some("leave"), Some(names[2].as_str())),
        "{ev}"
    );
    assert!(took < Duration::from_secs(3), "leave event after {took:?}");
    // Nothing stale after: the set has the two live connections, and no other event came.
    let r = members[0]
        .request(json!({"op":"presence","room":room}))
        .await;
    let mut live = vec![names[0].clone(), names[1].clone()];
    live.sort();
    assert_eq!(conns(&r), live, "{r}");
    assert!(
        next_presence(&mut watcher, Duration::from_millis(500))
            .await
            .is_err()
    );
    // A connection that closes leaves too.
    let m1 = members.remove(1);
    m1.close().await;
    let ev = next_presence(&mut watcher, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        (ev["action"].as_str(), ev["conn"].as_str()),
        (Some("leave"), Some(names[1].as_str())),
        "{ev}"
    );
}
