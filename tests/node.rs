//! One node, real process, real WebSocket clients: the client protocol's promises.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn welcome_ping_and_http_endpoints() {
    let node = Node::start(&["--heartbeat-interval", "7s"]);
    let mut c = node.connect().await;
    assert_eq!(c.welcome["node"], node.id.as_str());
    assert_eq!(c.welcome["heartbeat_ms"], 7000);
    let conn = c.welcome["conn"].as_str().unwrap().to_string();
    assert!(conn.starts_with(&format!("{}/", node.id)), "{conn}");

    c.send_text(r#"{"op":"ping","id":{"k":"v"}}"#).await;
    let r = c.recv_frame().await;
    assert_eq!(r["id"], json!({"k":"v"}));
    assert_eq!(r["ok"], true);

    assert_eq!(node.get("/healthz").await.0, 200);
    assert_eq!(node.get("/readyz").await.0, 200);
    let cl = node.get_json("/cluster").await;
    assert_eq!(cl["self"], node.id.as_str());
    assert_eq!(cl["members"][0]["id"], node.id.as_str());
    assert_eq!(cl["members"][0]["live"], true);
    assert_eq!(cl["members"][0]["connections"], 1);
    assert_eq!(cl["members"][0]["http"], node.http.to_string());
    node.wait_metric("roomcast_connections", |v| v == 1.0).await;

    // The probe subcommand (container health checks) sees the same.
    let probe = |path: &str| {
        std::process::Command::new(bin())
            .args(["probe", &format!("http://{}{path}", node.http)])
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(probe("/healthz"), Some(0));
    assert_eq!(probe("/nope"), Some(1));

    // A plain GET on /ws is not a WebSocket handshake.
    assert_eq!(node.get("/ws").await.0, 400);
}

#[tokio::test]
async fn every_subscriber_gets_every_message_in_order() {
    let node = Node::start(&["--publish-rate", "0"]);
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut s = node.connect().await;
        let j = s.join("chat").await;
        assert_eq!(j["seq"], 0);
        assert_eq!(j["room"], "chat");
        assert!(j["epoch"].is_string());
        assert!(j.get("recovered").is_none(), "no since, no recovered: {j}");
        subs.push(s);
    }
    let mut p = node.connect().await;
    for i in 1..=200u64 {
        assert_eq!(p.publish("chat", json!({"n": i})).await, i);
    }
    for s in &mut subs {
        let ev = s.events("chat", 200).await;
        assert_eq!(seqs(&ev), (1..=200).collect::<Vec<_>>());
        for (i, e) in ev.iter().enumerate() {
            assert_eq!(e["data"]["n"], i as u64 + 1);
            assert_eq!(e["from"], p.welcome["conn"]);
            assert!(e["ts"].as_u64().unwrap() > 1_600_000_000_000);
            assert_eq!(e["type"], "message");
        }
    }
    let published = node.metric("roomcast_messages_published_total").await;
    assert_eq!(published, Some(200.0));
    node.wait_metric("roomcast_messages_delivered_total", |v| v >= 600.0)
        .await;
    let (_, body) = node.get("/metrics").await;
    assert!(
        body.contains("roomcast_delivery_latency_seconds_bucket"),
        "{body}"
    );
    // Room counts are exported on the shards' tick.
    node.wait_metric("roomcast_rooms", |v| v == 1.0).await;
}

/// The gauges a soak watches (issue 13, item 5): queue depths read at each scrape follow what
/// is queued (up while a client does not read, back to zero when it is gone), router tables
/// and the process's memory and descriptors are reported.
#[tokio::test]
async fn metrics_report_queue_depths_router_tables_and_the_process() {
    let node = Node::start(&["--publish-rate", "0"]);
    let (_, body) = node.get("/metrics").await;
    for series in [
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        let v = metric_value(&body, series).unwrap_or_else(|| panic!("{series}: {body}"));
        assert!(v > 0.0, "{series} = {v}");
    }
    if cfg!(target_env = "gnu") {
        let heap = metric_value(&body, "roomcast_heap_in_use_bytes").unwrap();
        assert!(heap > 0.0, "{heap}");
    }
    assert_eq!(metric_value(&body, "roomcast_internode_links"), Some(0.0));
    assert_eq!(
        metric_value(&body, "roomcast_shard_queued_inputs"),
        Some(0.0)
    );
    // A subscriber that does not read: what it is sent piles up in its outbound queue.
    let mut slow = Client::connect_small_rcvbuf(&node.ws_url(), node.http).await;
    slow.join("q").await;
    node.wait_metric("roomcast_router_entries{table=\"member_rooms\"}", |v| {
        v == 1.0
    })
    .await;
    let mut p = node.connect().await;
    let data = json!("x".repeat(2000));
    for _ in 0..5000 {
        p.publish("q", data.clone()).await;
    }
    let frames = node
        .wait_metric("roomcast_outbound_queued_frames", |v| v > 0.0)
        .await;
    assert!(frames <= 5000.0, "{frames}");
    let bytes = node.metric("roomcast_outbound_queued_bytes").await.unwrap();
    assert!(
        bytes >= frames * 2000.0,
        "{bytes} bytes for {frames} frames"
    );
    drop(slow);
    node.wait_metric("roomcast_outbound_queued_frames", |v| v == 0.0)
        .await;
    node.wait_metric("roomcast_router_entries{table=\"member_rooms\"}", |v| {
        v == 0.0
    })
    .await;
}

#[tokio::test]
async fn concurrent_publishers_agree_on_one_order() {
    let node = Node::start(&["--publish-rate", "0"]);
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("r").await;
    b.join("r").await;
    let mut tasks = Vec::new();
    for p in 0..3 {
        let url = node.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&url).await;
            let mut acked = Vec::new();
            for i in 0..100 {
                acked.push(c.publish("r", json!({"p": p, "i": i})).await);
            }
            acked
        }));
    }
    for t in tasks {
        let acked = t.await.unwrap();
        assert!(
            acked.windows(2).all(|w| w[0] < w[1]),
            "a publisher's acks rise"
        );
    }
    let ea = a.events("r", 300).await;
    let eb = b.events("r", 300).await;
    assert_eq!(seqs(&ea), (1..=300).collect::<Vec<_>>());
    assert_eq!(
        ea, eb,
        "both subscribers saw the same frames in the same order"
    );
    // Each publisher's own messages keep their order.
    for p in 0..3 {
        let is: Vec<u64> = ea
            .iter()
            .filter(|e| e["data"]["p"] == p)
            .map(|e| e["data"]["i"].as_u64().unwrap())
            .collect();
        assert_eq!(is, (0..100).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn publisher_that_joined_gets_its_own_message_and_rooms_are_isolated() {
    let node = Node::start(&[]);
    let mut a = node.connect().await;
    let mut b = node.connect().await;
    a.join("one").await;
    b.join("two").await;
    let seq = a.publish("one", json!("mine")).await;
    assert_eq!(seq, 1);
    let e = a.next_event().await;
    assert_eq!(
        (e["room"].clone(), e["data"].clone()),
        (json!("one"), json!("mine"))
    );
    b.publish("two", json!("theirs")).await;
    let e = b.next_event().await;
    assert_eq!(e["room"], "two");
    // a never sees room two's message.
    a.request(json!({"op":"ping"})).await;
    assert!(
        a.pending.iter().all(|v| v["room"] != "two"),
        "{:?}",
        a.pending
    );
    // Seqs are per room.
    assert_eq!(b.publish("two", json!(2)).await, 2);
    assert_eq!(a.publish("one", json!(2)).await, 2);
}

#[tokio::test]
async fn join_since_resumes_with_no_gap_or_duplicate_at_the_seam() {
    let node = Node::start(&["--publish-rate", "0"]);
    let url = node.ws_url();
    let mut p = node.connect().await;
    for i in 1..=20 {
        p.publish("seam", json!(i)).await;
    }
    // Keep publishing while the resuming client joins.
    let publisher = tokio::spawn(async move {
        for i in 21..=220 {
            p.publish("seam", json!(i)).await;
        }
    });
    let mut c = Client::connect(&url).await;
    let j = c.join_since("seam", 5).await;
    assert_eq!(j["recovered"], true);
    let last_at_join = j["seq"].as_u64().unwrap();
    assert!(last_at_join >= 20);
    publisher.await.unwrap();
    let ev = c.events("seam", 215).await;
    assert_eq!(seqs(&ev), (6..=220).collect::<Vec<_>>());
    for e in &ev {
        assert_eq!(e["data"], e["seq"]);
    }
}

#[tokio::test]
async fn join_since_beyond_history_is_not_recovered() {
    let node = Node::start(&["--history-max-messages", "10", "--publish-rate", "0"]);
    let mut p = node.connect().await;
    for i in 1..=30 {
        p.publish("h", json!(i)).await;
    }
    let mut c = node.connect().await;
    let j = c.join_since("h", 5).await;
    assert_eq!(j["recovered"], false);
    assert_eq!(j["seq"], 30);
    let ev = c.events("h", 10).await;
    assert_eq!(seqs(&ev), (21..=30).collect::<Vec<_>>());
    // since = last seq: recovered, nothing replayed.
    let mut d = node.connect().await;
    let j = d.join_since("h", 30).await;
    assert_eq!(j["recovered"], true);
    p.publish("h", json!(31)).await;
    assert_eq!(d.next_event().await["seq"], 31);
}

#[tokio::test]
async fn history_op_is_bounded_by_count_and_limit() {
    let node = Node::start(&["--history-max-messages", "50", "--publish-rate", "0"]);
    let mut p = node.connect().await;
    for i in 1..=60 {
        p.publish("h", json!(i)).await;
    }
    let r = p
        .request(json!({"op":"history","room":"h","since":20,"limit":5}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["seq"], 60);
    assert_eq!(r["recovered"], true);
    assert_eq!(
        seqs(r["messages"].as_array().unwrap()),
        vec![21, 22, 23, 24, 25]
    );
    let r = p
        .request(json!({"op":"history","room":"h","since":0}))
        .await;
    assert_eq!(r["recovered"], false);
    let m = r["messages"].as_array().unwrap();
    assert_eq!(m.len(), 50);
    assert_eq!(m[0]["seq"], 11);
    // The history op does not subscribe.
    p.publish("h", json!(61)).await;
    p.request(json!({"op":"ping"})).await;
    assert!(p.pending.iter().all(|v| v["type"] != "message"));
}

#[tokio::test]
async fn history_expires_by_age_and_an_idle_room_restarts_in_a_new_epoch() {
    let node = Node::start(&["--history-max-age", "1s"]);
    let mut p = node.connect().await;
    let r = p
        .request(json!({"op":"history","room":"old","since":0}))
        .await;
    let epoch1 = r["epoch"].clone();
    p.publish("old", json!(1)).await;
    // Wait until the message aged out of history and the room was dropped.
    wait_until("history to expire", || {
        let url = node.ws_url();
        async move {
            let mut c = Client::connect(&url).await;
            let r = c
                .request(json!({"op":"history","room":"old","since":0}))
                .await;
            r["messages"].as_array().unwrap().is_empty() && r["seq"] == 0
        }
    })
    .await;
    let mut c = node.connect().await;
    let j = c.join_since("old", 1).await;
    assert_ne!(j["epoch"], epoch1, "the room restarted: new epoch");
    assert_eq!(j["seq"], 0);
    assert_eq!(
        j["recovered"], false,
        "since from the old epoch cannot be honoured"
    );
}

#[tokio::test]
async fn leave_stops_delivery() {
    let node = Node::start(&[]);
    let mut a = node.connect().await;
    let mut p = node.connect().await;
    a.join("l").await;
    p.publish("l", json!(1)).await;
    assert_eq!(a.next_event().await["seq"], 1);
    let r = a.request(json!({"op":"leave","room":"l"})).await;
    assert_eq!(r["ok"], true);
    assert_eq!(r["room"], "l");
    p.publish("l", json!(2)).await;
    a.request(json!({"op":"ping"})).await;
    assert!(
        a.pending.iter().all(|v| v["type"] != "message"),
        "{:?}",
        a.pending
    );
    let r = a.request(json!({"op":"leave","room":"l"})).await;
    assert_eq!(r["error"]["code"], "bad_request");
    // Rejoin works and continues the sequence.
    let j = a.join("l").await;
    assert_eq!(j["seq"], 2);
}

#[tokio::test]
async fn requests_get_exactly_one_reply_with_typed_errors() {
    let node = Node::start(&["--max-rooms-per-conn", "2", "--max-data-bytes", "100"]);
    let mut c = node.connect().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        ("not json", Value::Null, "bad_request"),
        ("[1,2,3]", Value::Null, "bad_request"),
        (r#"{"id":1}"#, json!(1), "bad_request"),
        (r#"{"id":2,"op":"dance"}"#, json!(2), "bad_request"),
        (r#"{"id":3,"op":"join"}"#, json!(3), "bad_request"),
        (r#"{"id":4,"op":"join","room":""}"#, json!(4), "bad_request"),
        (
            r#"{"id":5,"op":"join","room":"a b"}"#,
            json!(5),
            "bad_request",
        ),
        (
            r#"{"id":"six","op":"join","room":7}"#,
            json!("six"),
            "bad_request",
        ),
        (
            r#"{"id":7,"op":"publish","room":"r"}"#,
            json!(7),
            "bad_request",
        ),
        (
            r#"{"id":8,"op":"history","room":"r"}"#,
            json!(8),
            "bad_request",
        ),
        (
            r#"{"id":9,"op":"join","room":"r","since":-3}"#,
            json!(9),
            "bad_request",
        ),
        (
            r#"{"id":10,"op":"leave","room":"never-joined"}"#,
            json!(10),
            "bad_request",
        ),
    ];
    for (text, id, code) in &cases {
        c.send_text(*text).await;
        let r = c.recv_frame().await;
        assert_eq!(r["ok"], false, "{text}: {r}");
        assert_eq!(&r["id"], id, "{text}: {r}");
        assert_eq!(r["error"]["code"], *code, "{text}: {r}");
        assert!(r["error"]["message"].as_str().unwrap().len() > 3);
    }
    let long_room = "x".repeat(129);
    let r = c.request(json!({"op":"join","room":long_room})).await;
    assert_eq!(r["error"]["code"], "bad_request");
    let ok_room = "x".repeat(128);
    c.join(&ok_room).await;
    let r = c.request(json!({"op":"join","room":ok_room})).await;
    assert_eq!(r["error"]["code"], "bad_request", "double join: {r}");
    c.join("second").await;
    let r = c.request(json!({"op":"join","room":"third"})).await;
    assert_eq!(r["error"]["code"], "forbidden", "room limit: {r}");
    let big = "y".repeat(200);
    let r = c
        .request(json!({"op":"publish","room":"r","data":big}))
        .await;
    assert_eq!(r["error"]["code"], "too_large");
    // Binary frames are refused with a reply, the connection stays.
    c.ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        vec![1, 2, 3].into(),
    ))
    .await
    .unwrap();
    let r = c.recv_frame().await;
    assert_eq!(
        (r["id"].clone(), r["error"]["code"].clone()),
        (Value::Null, json!("bad_request"))
    );
    let r = c.request(json!({"op":"ping"})).await;
    assert_eq!(r["ok"], true);
    let bad = node
        .metric("roomcast_protocol_errors_total{code=\"bad_request\"}")
        .await
        .unwrap();
    assert!(bad >= 15.0, "{bad}");
    assert!(
        node.metric("roomcast_protocol_errors_total{code=\"too_large\"}")
            .await
            >= Some(1.0)
    );
    assert!(
        node.metric("roomcast_protocol_errors_total{code=\"forbidden\"}")
            .await
            >= Some(1.0)
    );
}

use futures_util::SinkExt;

#[tokio::test]
async fn a_frame_over_the_hard_limit_closes_with_1009() {
    let node = Node::start(&["--max-frame-bytes", "10000", "--max-data-bytes", "1000"]);
    let mut c = node.connect().await;
    let text = format!(
        r#"{{"op":"publish","room":"r","data":"{}"}}"#,
        "z".repeat(20_000)
    );
    c.send_text(text).await;
    assert_eq!(c.ended().await, Ended::Closed(1009, "too_big".into()));
    // The node is fine.
    let mut d = node.connect().await;
    assert_eq!(d.request(json!({"op":"ping"})).await["ok"], true);
}

#[tokio::test]
async fn a_garbage_flood_ends_only_the_flooder() {
    let node = Node::start(&["--publish-rate", "0"]);
    let mut good_sub = node.connect().await;
    good_sub.join("calm").await;
    let url = node.ws_url();
    let flooder = tokio::spawn(async move {
        let mut f = Client::connect(&url).await;
        let mut errors = 0;
        for i in 0..2000 {
            let garbage = match i % 4 {
                0 => "}{".to_string(),
                1 => "\u{0}\u{1}binary-ish".to_string(),
                2 => r#"{"op":42}"#.to_string(),
                _ => "[".repeat(100),
            };
            if f.ws
                .send(tokio_tungstenite::tungstenite::Message::Text(
                    garbage.into(),
                ))
                .await
                .is_err()
            {
                break;
            }
        }
        loop {
            match f.try_recv_frame(DEADLINE).await {
                Ok(v) => {
                    assert_eq!(v["ok"], false);
                    errors += 1;
                }
                Err(e) => return (errors, e),
            }
        }
    });
    let mut good_pub = node.connect().await;
    for i in 1..=100 {
        assert_eq!(good_pub.publish("calm", json!(i)).await, i);
    }
    assert_eq!(
        seqs(&good_sub.events("calm", 100).await),
        (1..=100).collect::<Vec<_>>()
    );
    let (errors, end) = flooder.await.unwrap();
    assert!(
        errors > 100,
        "each bad frame got an error reply until the budget ran out: {errors}"
    );
    assert!(
        end.contains("1008") || end.contains("Policy"),
        "flooder closed with 1008: {end}"
    );
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_1013_and_counted() {
    let node = Node::start(&[
        "--publish-rate",
        "0",
        "--outbound-max-messages",
        "64",
        "--outbound-max-bytes",
        "1000000",
        "--history-max-messages",
        "32",
        "--history-max-bytes",
        "500000",
    ]);
    let mut slow = Client::connect_small_rcvbuf(&node.ws_url(), node.http).await;
    slow.join("firehose").await;
    let mut fast = node.connect().await;
    fast.join("firehose").await;
    let mut p = node.connect().await;
    let payload = "p".repeat(60_000);
    // The slow client never reads while this runs; the fast one does.
    let mut n = 0u64;
    while node
        .metric("roomcast_slow_consumer_disconnects_total")
        .await
        .unwrap_or(0.0)
        < 1.0
    {
        for _ in 0..20 {
            n += 1;
            p.publish("firehose", json!(payload)).await;
        }
        assert_eq!(seqs(&fast.events("firehose", 20).await).last(), Some(&n));
        assert!(n < 5000, "no slow-consumer close after {n} messages");
    }
    // The slow client sees what was sent before the cut, in order, then 1013.
    let mut last = 0;
    let end = loop {
        match slow.try_recv_frame(DEADLINE).await {
            Ok(v) => {
                if v["type"] == "message" {
                    let s = v["seq"].as_u64().unwrap();
                    assert_eq!(s, last + 1, "no gap before the close");
                    last = s;
                }
            }
            Err(e) => break e,
        }
    };
    assert!(
        end.contains("1013") || end.contains("Again"),
        "closed with 1013: {end}"
    );
    assert!(
        last < n,
        "the slow client did not get everything ({last} of {n})"
    );
    // Other clients were not affected.
    p.publish("firehose", json!("after")).await;
    assert_eq!(fast.next_event().await["data"], "after");
    assert!(
        node.metric("roomcast_disconnects_total{reason=\"slow_consumer\"}")
            .await
            >= Some(1.0)
    );
}

#[tokio::test]
async fn the_publish_rate_limit_refuses_with_rate_limited() {
    let node = Node::start(&["--publish-rate", "1", "--publish-burst", "3"]);
    let mut c = node.connect().await;
    for i in 0..10 {
        c.send_json(&json!({"op":"publish","id":i,"room":"r","data":i}))
            .await;
    }
    let mut ok = 0;
    let mut limited = 0;
    for i in 0..10 {
        let r = c.reply_to(json!(i)).await;
        if r["ok"] == true {
            ok += 1;
        } else {
            assert_eq!(r["error"]["code"], "rate_limited", "{r}");
            limited += 1;
        }
    }
    assert!(ok >= 3, "the burst passes: {ok}");
    assert!(limited >= 5, "the rest is refused: {limited}");
    assert!(
        node.metric("roomcast_protocol_errors_total{code=\"rate_limited\"}")
            .await
            >= Some(5.0)
    );
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed() {
    let node = Node::start(&[
        "--heartbeat-interval",
        "200ms",
        "--heartbeat-max-missed",
        "2",
    ]);
    let mut raw = RawWs::connect(node.http).await;
    let (op, welcome) = raw.read_frame().await.unwrap();
    assert_eq!(op, 0x1);
    let w: Value = serde_json::from_slice(&welcome).unwrap();
    assert_eq!(w["heartbeat_ms"], 200);
    let mut pings = 0;
    let code = loop {
        match raw.read_frame().await {
            Some((0x9, _)) => pings += 1,
            Some((0x8, p)) => break u16::from_be_bytes([p[0], p[1]]),
            Some(_) => {}
            None => panic!("dropped without a close frame"),
        }
    };
    assert_eq!(code, 4408);
    assert!(pings >= 1, "pinged before giving up");
    node.wait_metric(
        "roomcast_disconnects_total{reason=\"heartbeat_timeout\"}",
        |v| v >= 1.0,
    )
    .await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays() {
    let node = Node::start(&[
        "--heartbeat-interval",
        "100ms",
        "--heartbeat-max-missed",
        "2",
    ]);
    let mut c = node.connect().await;
    c.join("k").await;
    // tungstenite answers pings while we read; wait for several heartbeat periods of pings by
    // counting them through the metrics of another connection's traffic instead of sleeping:
    // publish a message every round and expect the client to still be there.
    let mut p = node.connect().await;
    for i in 1..=10 {
        p.publish("k", json!(i)).await;
        assert_eq!(c.next_event().await["seq"], i);
        // Read for a while: pings arrive and are answered.
        let _ = c.try_recv_frame(Duration::from_millis(150)).await;
    }
    assert_eq!(c.request(json!({"op":"ping"})).await["ok"], true);
}

#[tokio::test]
async fn sigterm_turns_readyz_503_closes_clients_with_1001_and_exits_0() {
    let mut node = Node::start(&["--shutdown-timeout", "4s", "--drain-grace", "1s"]);
    let mut c = node.connect().await;
    c.join("bye").await;
    // A silent raw client keeps the node in its shutdown window long enough to observe it.
    let mut raw = RawWs::connect(node.http).await;
    node.signal("TERM");
    assert_eq!(c.ended().await, Ended::Closed(1001, "shutdown".into()));
    let (status, _) = node.get("/readyz").await;
    assert_eq!(status, 503);
    let (status, _) = node.get("/ws").await;
    assert_eq!(status, 503);
    assert_eq!(raw.close_code().await, Some(1001));
    let st = node
        .wait_exit(Duration::from_secs(10))
        .expect("exited in time");
    assert!(st.success(), "{st:?}");
}

#[test]
fn config_errors_exit_2_naming_the_option() {
    use std::process::Command;
    let out = Command::new(bin())
        .args(["--listen", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));

    let out = Command::new(bin())
        .env("ROOMCAST_HISTORY_MAX_MESSAGES", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("history_max_messages") && err.contains("ROOMCAST_HISTORY_MAX_MESSAGES"),
        "{err}"
    );

    let dir = std::env::temp_dir().join(format!("roomcast-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, "max_data_bytes = \"big\"\n").unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("max_data_bytes") && err.contains("bad.toml"),
        "{err}"
    );

    let out = Command::new(bin())
        .args(["--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));

    let out = Command::new(bin())
        .args(["--max-frame-bytes", "100", "--max-data-bytes", "200"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_data_bytes"));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn config_file_and_env_are_applied() {
    let dir = std::env::temp_dir().join(format!("roomcast-test-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        "heartbeat_interval = \"9s\"\nmax_rooms_per_conn = 1\n",
    )
    .unwrap();
    let node = Node::start_env(
        &["--config", file.to_str().unwrap()],
        &[("ROOMCAST_MAX_ROOMS_PER_CONN", "2")],
    );
    let mut c = node.connect().await;
    assert_eq!(c.welcome["heartbeat_ms"], 9000, "from the file");
    c.join("a").await;
    c.join("b").await; // env (2) overrides the file (1)
    let r = c.request(json!({"op":"join","room":"c"})).await;
    assert_eq!(r["error"]["code"], "forbidden");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn the_shipped_config_files_are_valid() {
    // Ports and seeds are overridden by flags (flags win), so the files' keys and values are
    // what is checked.
    for f in [
        "cluster-config/node.example.toml",
        "cluster-config/node1.toml",
        "cluster-config/node2.toml",
        "cluster-config/node3.toml",
    ] {
        let path = format!("{}/{f}", env!("CARGO_MANIFEST_DIR"));
        let node = Node::start(&["--config", &path, "--node-id", "cfg-test"]);
        let mut c = node.connect().await;
        assert_eq!(c.request(json!({"op":"ping"})).await["ok"], true, "{f}");
    }
}

/// Issue 10, item 5: a client resuming many full rooms at once is not cut as a slow consumer
/// by its own replay (here 11 rooms x 100 messages against a 250-frame outbound bound): the
/// node paces the resumes, one room's replay at a time, each when the queue has room for it.
#[tokio::test]
async fn resuming_many_full_rooms_at_once_is_paced_not_cut() {
    let node = Node::start(&[
        "--publish-rate",
        "0",
        "--outbound-max-messages",
        "250",
        "--outbound-max-bytes",
        "4000000",
        "--history-max-messages",
        "100",
        "--history-max-bytes",
        "1000000",
    ]);
    let mut p = node.connect().await;
    let rooms: Vec<String> = (0..11).map(|i| format!("full-{i}")).collect();
    for r in &rooms {
        for i in 1..=100 {
            p.publish(r, json!(i)).await;
        }
    }
    let mut c = node.connect().await;
    for (i, r) in rooms.iter().enumerate() {
        c.send_json(&json!({"op":"join","id":i,"room":r,"since":0}))
            .await;
    }
    let mut joined = 0;
    let mut per_room: std::collections::HashMap<String, Vec<u64>> = Default::default();
    while joined < rooms.len() || per_room.values().map(|v| v.len()).sum::<usize>() < 1100 {
        let f = c
            .try_recv_frame(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("the resuming client was cut or stalled: {e}"));
        if f["ok"] == true {
            assert_eq!(f["recovered"], true, "{f}");
            joined += 1;
        } else if f["type"] == "message" {
            per_room
                .entry(f["room"].as_str().unwrap().to_string())
                .or_default()
                .push(f["seq"].as_u64().unwrap());
        } else {
            panic!("unexpected frame {f}");
        }
    }
    for r in &rooms {
        assert_eq!(per_room[r], (1..=100).collect::<Vec<_>>(), "{r}");
    }
    assert_eq!(
        node.metric("roomcast_slow_consumer_disconnects_total")
            .await
            .unwrap_or(0.0),
        0.0
    );
}

/// Reads an SSE response from `addr` for `path` until its body contains `needle` (or 5 s).
async fn sse_until(addr: std::net::SocketAddr, path: &str, needle: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(needle) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn a_full_node_refuses_new_rooms_with_room_limit_and_keeps_its_rooms() {
    let node = Node::start(&["--max-rooms", "4", "--shards", "1"]);
    let mut c = node.connect().await;
    // Reading a room that does not exist works while the node has room.
    let h = c
        .request(json!({"op":"history","room":"r0","since":0}))
        .await;
    assert_eq!(
        (h["ok"].clone(), h["seq"].clone()),
        (json!(true), json!(0)),
        "{h}"
    );
    assert_eq!(h["messages"], json!([]));
    for i in 0..4 {
        assert_eq!(c.publish(&format!("r{i}"), json!(i)).await, 1);
    }
    // A fifth room: join, publish, history and presence are refused, nothing is created.
    for req in [
        json!({"op":"join","room":"r4"}),
        json!({"op":"publish","room":"r4","data":1}),
        json!({"op":"history","room":"r4","since":0}),
        json!({"op":"presence","room":"r4"}),
    ] {
        let r = c.request(req.clone()).await;
        assert_eq!(r["ok"], false, "{req}: {r}");
        assert_eq!(r["error"]["code"], "room_limit", "{req}: {r}");
    }
    // The connection is not closed for it, and the four rooms keep working.
    let mut sub = node.connect().await;
    for i in 0..4 {
        let room = format!("r{i}");
        assert_eq!(sub.join(&room).await["seq"], 1);
        assert_eq!(c.publish(&room, json!("again")).await, 2);
        assert_eq!(sub.next_event().await["seq"], 2);
        let h = c
            .request(json!({"op":"history","room":room,"since":0}))
            .await;
        assert_eq!(h["seq"], 2, "{h}");
    }
    // An SSE stream for a new room gets the join's error as a named event.
    let body = sse_until(node.http, "/sse?rooms=r5", "room_limit").await;
    assert!(body.contains("event: error"), "{body}");
    assert!(body.contains("room_limit"), "{body}");
    node.wait_metric("roomcast_rooms_refused_total{reason=\"node_full\"}", |v| {
        v >= 5.0
    })
    .await;
    node.wait_metric("roomcast_rooms", |v| v == 4.0).await;
}

#[tokio::test]
async fn new_rooms_per_connection_are_rate_limited() {
    let node = Node::start(&["--max-new-rooms-per-minute", "3"]);
    let mut c = node.connect().await;
    c.join("a").await;
    c.publish("b", json!(1)).await;
    let h = c
        .request(json!({"op":"history","room":"c","since":0}))
        .await;
    assert_eq!(h["ok"], true, "{h}");
    // A fourth new name: refused, and not sent to the room.
    let r = c.request(json!({"op":"publish","room":"d","data":1})).await;
    assert_eq!(r["error"]["code"], "rate_limited", "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("too many new rooms: at most 3 per minute per connection"),
        "{r}"
    );
    let r = c.request(json!({"op":"join","room":"e"})).await;
    assert_eq!(r["error"]["code"], "rate_limited", "{r}");
    // The rooms it addressed already are free.
    assert_eq!(c.publish("a", json!(2)).await, 1);
    assert_eq!(c.publish("c", json!(1)).await, 1);
    let h = c
        .request(json!({"op":"history","room":"b","since":0}))
        .await;
    assert_eq!(h["seq"], 1, "{h}");
    let p = c.request(json!({"op":"presence","room":"a"})).await;
    assert_eq!(p["ok"], true, "{p}");
    // Another connection has its own budget; "d" was never created.
    let mut other = node.connect().await;
    let h = other
        .request(json!({"op":"history","room":"d","since":0}))
        .await;
    assert_eq!(h["seq"], 0, "{h}");
    node.wait_metric(
        "roomcast_rooms_refused_total{reason=\"connection_rate\"}",
        |v| v >= 2.0,
    )
    .await;
}
