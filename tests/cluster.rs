//! Several nodes as real processes on loopback: membership, owner-sequenced rooms across
//! nodes, node loss, restart, scale-out, and hostile peers.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Sets `flag`'s value in `args`, replacing it if present.
fn set_arg(args: &mut Vec<String>, flag: &str, value: &str) {
    match args.iter().position(|a| a == flag) {
        Some(i) => args[i + 1] = value.to_string(),
        None => args.extend([flag.to_string(), value.to_string()]),
    }
}

/// Publishes until one publish is acknowledged (ownership may be moving), returning its seq.
async fn publish_eventually(c: &mut Client, room: &str, data: Value) -> u64 {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let r = c
            .request(json!({"op":"publish","room":room,"data":data}))
            .await;
        if r["ok"] == true {
            return r["seq"].as_u64().unwrap();
        }
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
        assert!(
            std::time::Instant::now() < deadline,
            "publish never accepted: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Joins until acknowledged (ownership may be moving).
async fn join_eventually(c: &mut Client, room: &str) -> Value {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let r = c.request(json!({"op":"join","room":room})).await;
        if r["ok"] == true {
            return r;
        }
        assert_eq!(r["error"]["code"], "unavailable", "{r}");
        assert!(
            std::time::Instant::now() < deadline,
            "join never accepted: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn three_nodes_converge_from_one_seed() {
    let c = Cluster::start(3, &[]).await;
    for n in &c.nodes {
        let v = n.get_json("/cluster").await;
        assert_eq!(v["self"], n.id.as_str());
        let members = v["members"].as_array().unwrap();
        assert_eq!(members.len(), 3);
        for m in members {
            let other = c.nodes.iter().find(|x| x.id == m["id"]).unwrap();
            assert_eq!(m["http"], other.http.to_string());
            assert_eq!(m["cluster"], other.cluster.to_string());
            assert_eq!(m["live"], true);
            assert_eq!(m["draining"], false);
        }
        n.wait_metric("roomcast_cluster_members{state=\"live\"}", |v| v == 3.0)
            .await;
    }
}

#[tokio::test]
async fn a_publish_on_any_node_reaches_subscribers_on_all_nodes_in_one_order() {
    let c = Cluster::start(3, &["--publish-rate", "0"]).await;
    let mut subs = Vec::new();
    for n in &c.nodes {
        for _ in 0..2 {
            let mut s = n.connect().await;
            assert_eq!(s.join("everywhere").await["seq"], 0);
            subs.push(s);
        }
    }
    // Concurrent publishers on every node.
    let mut tasks = Vec::new();
    for (i, n) in c.nodes.iter().enumerate() {
        let url = n.ws_url();
        tasks.push(tokio::spawn(async move {
            let mut p = Client::connect(&url).await;
            let mut seqs = Vec::new();
            for k in 0..50 {
                seqs.push(p.publish("everywhere", json!({"node": i, "k": k})).await);
            }
            seqs
        }));
    }
    for t in tasks {
        let s = t.await.unwrap();
        assert!(s.windows(2).all(|w| w[0] < w[1]));
    }
    let first = subs[0].events("everywhere", 150).await;
    assert_eq!(seqs(&first), (1..=150).collect::<Vec<_>>());
    for s in &mut subs[1..] {
        assert_eq!(
            s.events("everywhere", 150).await,
            first,
            "one order everywhere"
        );
    }
    for i in 0..3 {
        let ks: Vec<u64> = first
            .iter()
            .filter(|e| e["data"]["node"] == i)
            .map(|e| e["data"]["k"].as_u64().unwrap())
            .collect();
        assert_eq!(ks, (0..50).collect::<Vec<_>>(), "publisher order kept");
    }
    // Each event is sent once per interested node, not once per subscriber.
    let owner = c.owner_index("everywhere", &c.ids());
    let out = c.nodes[owner]
        .metric("roomcast_internode_messages_total{direction=\"out\"}")
        .await
        .unwrap();
    assert!(out < 150.0 * 2.0 * 2.0 + 200.0, "owner sent {out} messages");
}

#[tokio::test]
async fn a_hundred_rooms_spread_over_the_nodes() {
    let c = Cluster::start(3, &["--publish-rate", "0"]).await;
    let ids = c.ids();
    let mut owned = [0usize; 3];
    let mut sub = c.nodes[0].connect().await;
    let mut pubs = Vec::new();
    for n in &c.nodes {
        pubs.push(n.connect().await);
    }
    for r in 0..100 {
        let room = format!("room-{r}");
        owned[c.owner_index(&room, &ids)] += 1;
        sub.join_since(&room, 0).await;
    }
    assert!(owned.iter().all(|&k| k > 10), "{owned:?}");
    for r in 0..100 {
        let room = format!("room-{r}");
        let seq = pubs[r % 3].publish(&room, json!(r)).await;
        assert_eq!(seq, 1);
    }
    let mut got = std::collections::HashSet::new();
    for _ in 0..100 {
        let e = sub.next_event().await;
        assert_eq!(e["seq"], 1);
        got.insert(e["room"].as_str().unwrap().to_string());
    }
    assert_eq!(got.len(), 100);
    // Every node sequences some of the rooms.
    for n in &c.nodes {
        n.wait_metric("roomcast_rooms", |v| v > 10.0).await;
    }
}

#[tokio::test]
async fn unreplicated_killing_a_node_moves_its_rooms_to_a_new_epoch_and_the_rest_keeps_working() {
    // `room_replicas = 0`: a dead owner's rooms start over (the documented trade-off).
    let mut c = Cluster::start(3, &["--publish-rate", "0", "--room-replicas", "0"]).await;
    let ids = c.ids();
    let victim = 2;
    let room = c.room_owned_by(victim, &ids, "doomed");
    let safe = c.room_owned_by(0, &ids, "safe");
    let mut s0 = c.nodes[0].connect().await;
    let mut s1 = c.nodes[1].connect().await;
    let j = s0.join(&room).await;
    let epoch1 = j["epoch"].clone();
    s1.join(&room).await;
    s1.join(&safe).await;
    let mut p = c.nodes[1].connect().await;
    for i in 1..=5 {
        assert_eq!(p.publish(&room, json!(i)).await, i);
        assert_eq!(p.publish(&safe, json!(i)).await, i);
    }
    assert_eq!(seqs(&s0.events(&room, 5).await), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs(&s1.events(&room, 5).await), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs(&s1.events(&safe, 5).await), vec![1, 2, 3, 4, 5]);

    c.nodes[victim].kill();
    let survivors = vec![ids[0].clone(), ids[1].clone()];
    Cluster::wait_live_set(&c.nodes[0], &survivors).await;
    Cluster::wait_live_set(&c.nodes[1], &survivors).await;

    // The dead owner's room works again, in a new epoch starting at 1, for both subscribers.
    let seq = publish_eventually(&mut p, &room, json!("after")).await;
    assert_eq!(seq, 1);
    let e0 = s0.events(&room, 1).await;
    let e1 = s1.events(&room, 1).await;
    assert_eq!(e0, e1);
    assert_eq!(e0[0]["data"], "after");
    assert_ne!(e0[0]["epoch"], epoch1, "a new epoch");
    // The other room kept its sequence.
    assert_eq!(p.publish(&safe, json!(6)).await, 6);
    assert_eq!(s1.events(&safe, 1).await[0]["seq"], 6);
    // A resume from the old epoch is not recovered.
    let mut late = c.nodes[0].connect().await;
    let r = late
        .request(json!({"op":"join","room":room,"since":5,"epoch":epoch1}))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["recovered"], false);
    // Exported on the shards' next tick.
    c.nodes[0]
        .wait_metric("roomcast_room_owner_changes_total", |v| v >= 1.0)
        .await;
}

/// Issue 10: with the default one replica per room, a SIGKILLed owner's rooms continue on
/// their replica in the same epoch: nothing acknowledged is lost, resumes are recovered.
#[tokio::test]
async fn killing_an_owner_continues_its_rooms_on_their_replicas_in_the_same_epoch() {
    let mut c = Cluster::start(3, &["--publish-rate", "0"]).await;
    let ids = c.ids();
    let victim = 2;
    let room = c.room_owned_by(victim, &ids, "replicated");
    let mut s0 = c.nodes[0].connect().await;
    let mut s1 = c.nodes[1].connect().await;
    let j = s0.join(&room).await;
    let epoch1 = j["epoch"].clone();
    s1.join(&room).await;
    let mut p = c.nodes[1].connect().await;
    for i in 1..=5 {
        assert_eq!(p.publish(&room, json!(i)).await, i);
    }
    assert_eq!(seqs(&s0.events(&room, 5).await), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs(&s1.events(&room, 5).await), vec![1, 2, 3, 4, 5]);

    c.nodes[victim].kill();
    let survivors = vec![ids[0].clone(), ids[1].clone()];
    Cluster::wait_live_set(&c.nodes[0], &survivors).await;
    Cluster::wait_live_set(&c.nodes[1], &survivors).await;

    // The room goes on at seq 6 in its epoch, for both subscribers, with no gap.
    let seq = publish_eventually(&mut p, &room, json!("after")).await;
    assert_eq!(seq, 6);
    let e0 = s0.events(&room, 1).await;
    let e1 = s1.events(&room, 1).await;
    assert_eq!(e0, e1);
    assert_eq!(e0[0]["data"], "after");
    assert_eq!(e0[0]["epoch"], epoch1, "the same epoch");
    // A resume from the epoch is recovered, on either node.
    for n in 0..2 {
        let mut late = c.nodes[n].connect().await;
        let r = late
            .request(json!({"op":"join","room":room,"since":3,"epoch":epoch1}))
            .await;
        assert_eq!(r["ok"], true, "{r}");
        assert_eq!(r["recovered"], true, "{r}");
        assert_eq!(seqs(&late.events(&room, 3).await), vec![4, 5, 6]);
    }
}

/// Issue 10, item 7 (the short strict run): nodes SIGKILLed under traffic, one at a time once
/// the cluster has re-replicated, and restarted with the same id. Clients reconnect elsewhere,
/// resume with `since` and retry publishes of unknown outcome by key: every acknowledged
/// message must reach every subscriber, once, in one order, and every resume be recovered.
#[tokio::test]
async fn strict_chaos_sigkills_lose_nothing_acknowledged_and_every_resume_is_recovered() {
    let mut c = Cluster::start(3, &["--publish-rate", "0"]).await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.ws_url()).collect();
    let bench = spawn_strict_bench(&urls.join(","), "35s", "15s");
    for &i in &[2usize, 0, 1, 2] {
        // The bench's 6 rooms exist and have their replicas (one failure at a time).
        c.wait_replicated(6).await;
        let mut args = c.nodes[i].args.clone();
        args.extend([
            "--seed".to_string(),
            c.nodes[(i + 1) % 3].cluster.to_string(),
        ]);
        set_arg(&mut args, "--listen", &c.nodes[i].http.to_string());
        set_arg(
            &mut args,
            "--cluster-listen",
            &c.nodes[i].cluster.to_string(),
        );
        c.nodes[i].kill();
        let survivors: Vec<String> = (0..3)
            .filter(|j| *j != i)
            .map(|j| c.nodes[j].id.clone())
            .collect();
        for j in (0..3).filter(|j| *j != i) {
            Cluster::wait_live_set(&c.nodes[j], &survivors).await;
        }
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        c.nodes[i] = Node::start(&refs);
        c.wait_converged().await;
    }
    let out = tokio::task::spawn_blocking(move || bench.wait_with_output().unwrap())
        .await
        .unwrap();
    let r = bench_report(&out);
    assert_no_loss(&r);
}

#[tokio::test]
async fn a_node_restarted_with_the_same_id_rejoins() {
    let mut c = Cluster::start(3, &["--publish-rate", "0"]).await;
    let ids = c.ids();
    let args = c.nodes[2].args.clone();
    c.nodes[2].kill();
    Cluster::wait_live_set(&c.nodes[0], &ids[..2]).await;
    // Same id (and flags); chitchat sees a new generation.
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    c.nodes[2] = Node::start(&refs);
    c.wait_converged().await;
    // Traffic flows to and from the restarted node.
    let room = c.room_owned_by(2, &ids, "back");
    let mut s = c.nodes[2].connect().await;
    join_eventually(&mut s, &room).await;
    let mut s0 = c.nodes[0].connect().await;
    join_eventually(&mut s0, &room).await;
    let mut p = c.nodes[1].connect().await;
    let seq = publish_eventually(&mut p, &room, json!("hello")).await;
    assert_eq!(s.events(&room, 1).await[0]["seq"], seq);
    assert_eq!(s0.events(&room, 1).await[0]["seq"], seq);
}

/// Issue 8, (i) and (ii) as a user saw them: a node SIGKILLed and restarted with the same id
/// takes its rooms back under traffic. Joins on it must succeed the first time (no
/// `unavailable` while the rooms move) and a subscriber that joined without `since` must never
/// receive a message from before its join.
#[tokio::test]
async fn a_killed_node_restarts_and_takes_its_rooms_back_without_errors_or_misdelivery() {
    let mut c = Cluster::start(3, &["--publish-rate", "0"]).await;
    let ids = c.ids();
    let rooms: Vec<String> = (0..8)
        .map(|i| c.room_owned_by(2, &ids, &format!("back{i}")))
        .collect();
    let args = c.nodes[2].args.clone();
    c.nodes[2].kill();
    Cluster::wait_live_set(&c.nodes[0], &ids[..2]).await;
    Cluster::wait_live_set(&c.nodes[1], &ids[..2]).await;
    // Traffic on every room, through the restart (a background publisher on node 1).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_publisher = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut p = c.nodes[1].connect().await;
    let publisher = {
        let stop = stop_publisher.clone();
        let rooms = rooms.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let room = &rooms[(n % rooms.len() as u64) as usize];
                let _ = p
                    .request(json!({"op":"publish","room":room,"data":n}))
                    .await;
                n += 1;
            }
            n
        })
    };
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    c.nodes[2] = Node::start(&refs);
    // Joiners on node 2, round after round, while it takes its rooms back and after.
    let url = c.nodes[2].ws_url();
    let joiners: Vec<_> = (0..4)
        .map(|j| {
            let (url, rooms, stop) = (url.clone(), rooms.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut rounds, mut after) = (0, 0);
                while after < 2 {
                    if stop.load(std::sync::atomic::Ordering::Acquire) {
                        after += 1;
                    }
                    let mut s = Client::connect(&url).await;
                    let mut joined: Vec<(Value, u64)> = Vec::new();
                    for room in &rooms {
                        let r = s.request(json!({"op":"join","room":room})).await;
                        assert_eq!(r["ok"], true, "joiner {j} round {rounds}: join {room}: {r}");
                        joined.push((r["epoch"].clone(), r["seq"].as_u64().unwrap()));
                    }
                    for (room, (epoch, seq)) in rooms.iter().zip(&joined) {
                        for e in s.events(room, 1).await {
                            assert!(
                                e["epoch"] != *epoch || e["seq"].as_u64().unwrap() > *seq,
                                "joiner {j} round {rounds}: joined {room} at {epoch}/{seq} \
                                 without since, got {e}"
                            );
                        }
                    }
                    rounds += 1;
                }
                rounds
            })
        })
        .collect();
    c.wait_converged().await;
    // Each joiner does two more rounds once the cluster has converged.
    stop.store(true, std::sync::atomic::Ordering::Release);
    for j in joiners {
        assert!(j.await.unwrap() >= 2);
    }
    stop_publisher.store(true, std::sync::atomic::Ordering::Release);
    let published = publisher.await.unwrap();
    assert!(published > 0);
}

#[tokio::test]
async fn a_fourth_node_takes_over_some_rooms_and_subscribers_follow() {
    let mut c = Cluster::start(3, &["--publish-rate", "0"]).await;
    let mut sub = c.nodes[0].connect().await;
    let rooms: Vec<String> = (0..20).map(|i| format!("scale-{i}")).collect();
    for r in &rooms {
        sub.join(r).await;
    }
    c.add(&[]);
    c.wait_converged().await;
    let ids = c.ids();
    let moved: Vec<&String> = rooms
        .iter()
        .filter(|r| c.owner_index(r, &ids) == 3)
        .collect();
    assert!(!moved.is_empty(), "some rooms move to the new node");
    // Every room, moved or not, delivers to the old subscriber, published from the new node.
    let mut p = c.nodes[3].connect().await;
    for r in &rooms {
        publish_eventually(&mut p, r, json!(r)).await;
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < rooms.len() {
        let e = sub.next_event().await;
        got.insert(e["room"].as_str().unwrap().to_string());
    }
    c.nodes[3]
        .wait_metric("roomcast_rooms", |v| v >= moved.len() as f64)
        .await;
}

#[tokio::test]
async fn nodes_with_another_secret_or_cluster_id_are_kept_out() {
    let dir = std::env::temp_dir().join(format!("rc-secrets-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good = dir.join("good");
    let bad = dir.join("bad");
    std::fs::write(&good, "the-right-secret-0123456789\n").unwrap();
    std::fs::write(&bad, "the-wrong-secret-9876543210\n").unwrap();
    let mut c = Cluster {
        nodes: Vec::new(),
        common: FAST_GOSSIP.iter().map(|s| s.to_string()).collect(),
    };
    c.add(&["--cluster-secret-file", good.to_str().unwrap()]);
    c.add(&["--cluster-secret-file", good.to_str().unwrap()]);
    c.wait_converged().await;
    let intruder = c.spawn(&["--cluster-secret-file", bad.to_str().unwrap()]);
    let stranger = c.spawn(&[
        "--cluster-id",
        "another-cluster",
        "--cluster-secret-file",
        good.to_str().unwrap(),
    ]);
    // The intruder's datagrams (to its seed) are dropped by the member.
    // Ten refused rounds from the intruder take ten gossip intervals: by then the stranger
    // (authentic datagrams, another cluster id) has had as many rounds with its seed.
    c.nodes[0]
        .wait_metric(
            "roomcast_internode_rejected_total{reason=\"gossip_auth\"}",
            |v| v >= 10.0,
        )
        .await;
    let ids = c.ids();
    for n in &c.nodes {
        Cluster::wait_live_set(n, &ids).await;
    }
    Cluster::wait_live_set(&intruder, std::slice::from_ref(&intruder.id)).await;
    Cluster::wait_live_set(&stranger, std::slice::from_ref(&stranger.id)).await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn nodes_with_a_shared_secret_form_a_cluster_and_route() {
    let dir = std::env::temp_dir().join(format!("rc-secret-ok-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = dir.join("s");
    std::fs::write(&s, "shared-secret-for-the-test\n").unwrap();
    let c = Cluster::start(2, &["--cluster-secret-file", s.to_str().unwrap()]).await;
    let room = c.room_owned_by(1, &c.ids(), "secure");
    let mut sub = c.nodes[0].connect().await;
    sub.join(&room).await;
    let mut p = c.nodes[0].connect().await;
    p.publish(&room, json!("authenticated")).await;
    assert_eq!(sub.next_event().await["data"], "authenticated");
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 13: with a secret, three nodes form a cluster and route across nodes whether frames
/// are encrypted (the default) or only authenticated, and no frame fails its tag.
#[tokio::test]
async fn three_nodes_with_a_secret_route_in_both_internode_encryption_modes() {
    let dir = std::env::temp_dir().join(format!("rc-secret-modes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = dir.join("s");
    std::fs::write(&s, "shared-secret-for-the-modes-test\n").unwrap();
    for mode in ["true", "false"] {
        let c = Cluster::start(
            3,
            &[
                "--cluster-secret-file",
                s.to_str().unwrap(),
                "--internode-encryption",
                mode,
                "--publish-rate",
                "0",
            ],
        )
        .await;
        // Owned by node 1, published on node 0, subscribed on nodes 0 and 2.
        let room = c.room_owned_by(1, &c.ids(), &format!("sealed-{mode}"));
        let mut far = c.nodes[2].connect().await;
        far.join(&room).await;
        let mut near = c.nodes[0].connect().await;
        near.join(&room).await;
        let mut p = c.nodes[0].connect().await;
        for i in 1..=20 {
            p.publish(&room, json!({"i": i, "mode": mode})).await;
        }
        for sub in [&mut far, &mut near] {
            let ev = sub.events(&room, 20).await;
            assert_eq!(seqs(&ev), (1..=20).collect::<Vec<_>>(), "mode {mode}");
            assert_eq!(ev[19]["data"]["i"], 20);
        }
        for n in &c.nodes {
            assert!(
                n.metric("roomcast_internode_messages_total{direction=\"in\"}")
                    .await
                    .unwrap_or(0.0)
                    > 0.0
            );
            for reason in ["frame_auth", "encryption_mismatch", "bad_secret"] {
                let series = format!("roomcast_internode_rejected_total{{reason=\"{reason}\"}}");
                assert_eq!(n.metric(&series).await, None, "{reason} on {}", n.id);
            }
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// Issue 13: nodes that disagree on internode_encryption gossip (same secret) but refuse each
/// other's internode connections with a clear reason, rather than garbling frames.
#[tokio::test]
async fn nodes_with_another_internode_encryption_mode_are_refused_at_the_handshake() {
    let dir = std::env::temp_dir().join(format!("rc-secret-mismatch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = dir.join("s");
    std::fs::write(&s, "shared-secret-for-the-mismatch-test\n").unwrap();
    let secret = s.to_str().unwrap();
    let mut c = Cluster {
        nodes: Vec::new(),
        common: FAST_GOSSIP.iter().map(|s| s.to_string()).collect(),
    };
    c.add(&["--cluster-secret-file", secret]);
    c.add(&[
        "--cluster-secret-file",
        secret,
        "--internode-encryption",
        "false",
    ]);
    for n in &c.nodes {
        n.wait_metric(
            "roomcast_internode_rejected_total{reason=\"encryption_mismatch\"}",
            |v| v >= 1.0,
        )
        .await;
    }
    assert_eq!(
        c.nodes[0]
            .metric("roomcast_internode_rejected_total{reason=\"frame_auth\"}")
            .await,
        None
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn garbage_on_the_cluster_port_is_counted_and_harmless() {
    use tokio::io::AsyncWriteExt;
    let c = Cluster::start(2, &[]).await;
    let target = &c.nodes[0];
    // UDP junk.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for i in 0..20u8 {
        udp.send_to(&[i; 100], target.cluster).await.unwrap();
    }
    udp.send_to(&[], target.cluster).await.unwrap();
    // TCP junk: wrong magic, and a silent connection that never finishes the handshake.
    let mut t = tokio::net::TcpStream::connect(target.cluster)
        .await
        .unwrap();
    t.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let _silent = tokio::net::TcpStream::connect(target.cluster)
        .await
        .unwrap();
    target
        .wait_metric(
            "roomcast_internode_rejected_total{reason=\"bad_magic\"}",
            |v| v >= 1.0,
        )
        .await;
    target
        .wait_metric(
            "roomcast_internode_rejected_total{reason=\"gossip_garbage\"}",
            |v| v >= 1.0,
        )
        .await;
    // Still one cluster that routes.
    Cluster::wait_live_set(target, &c.ids()).await;
    let room = c.room_owned_by(1, &c.ids(), "after-junk");
    let mut sub = target.connect().await;
    sub.join(&room).await;
    let mut p = c.nodes[1].connect().await;
    p.publish(&room, json!(1)).await;
    assert_eq!(sub.next_event().await["seq"], 1);
}

mod fake_peer {
    use super::*;
    use futures_util::{SinkExt, StreamExt};
    use roomcast::cluster::ClusterSecret;
    use roomcast::internode::codec::{self, Frame};
    use roomcast::internode::seal::{Sealer, SessionKeys};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_util::codec::{Framed, LengthDelimitedCodec};

    type Conn = Framed<tokio::net::TcpStream, LengthDelimitedCodec>;

    /// Connects, exchanges preambles and sends a Hello; returns the server's answer.
    async fn hello(node: &Node, cluster_id: &str, id: &str) -> (Conn, Frame) {
        hello_with(node, cluster_id, id, true).await
    }

    /// `hello` with the given `internode_encryption` mode.
    async fn hello_with(
        node: &Node,
        cluster_id: &str,
        id: &str,
        encryption: bool,
    ) -> (Conn, Frame) {
        let mut s = tokio::net::TcpStream::connect(node.cluster).await.unwrap();
        s.write_all(&codec::preamble()).await.unwrap();
        let mut p = [0u8; 8];
        s.read_exact(&mut p).await.unwrap();
        assert_eq!(codec::check_preamble(&p), Ok(()));
        let mut f = Framed::new(
            s,
            LengthDelimitedCodec::builder()
                .length_field_type::<u32>()
                .max_frame_length(1 << 20)
                .new_codec(),
        );
        let h = Frame::Hello {
            cluster_id: cluster_id.into(),
            node_id: roomcast::ids::NodeId::new(id).unwrap(),
            generation: 1,
            cluster_addr: "127.0.0.1:1".into(),
            nonce: [7; codec::NONCE_LEN],
            encryption,
        };
        f.send(codec::encode(&h).unwrap()).await.unwrap();
        let reply = codec::decode(&f.next().await.unwrap().unwrap()).unwrap();
        (f, reply)
    }

    /// A fake peer that completes the handshake (the node has no secret).
    async fn accepted(node: &Node) -> Conn {
        let (mut f, reply) = hello(node, "roomcast", "fake-peer").await;
        assert!(
            matches!(reply, Frame::Challenge { proof: None, .. }),
            "{reply:?}"
        );
        f.send(codec::encode(&Frame::Proof { proof: None }).unwrap())
            .await
            .unwrap();
        let r = codec::decode(&f.next().await.unwrap().unwrap()).unwrap();
        assert_eq!(r, Frame::Accept);
        f
    }

    /// A fake peer that knows the node's secret and completes a real handshake (proofs and
    /// session keys computed as a node would); returns the connection and its keys.
    async fn accepted_with_secret(
        node: &Node,
        secret: &ClusterSecret,
        encryption: bool,
    ) -> (Conn, SessionKeys) {
        let me = roomcast::ids::NodeId::new("fake-peer").unwrap();
        let (mut f, reply) = hello_with(node, "roomcast", me.as_str(), encryption).await;
        let Frame::Challenge {
            node_id: server,
            nonce: ns,
            proof: Some(server_proof),
            ..
        } = reply
        else {
            panic!("{reply:?}");
        };
        let nc = [7; codec::NONCE_LEN];
        assert!(codec::proof_ok(
            &codec::server_proof(secret, "roomcast", &me, &server, &nc, &ns),
            &server_proof
        ));
        let proof = codec::client_proof(secret, "roomcast", &me, &server, &nc, &ns);
        f.send(codec::encode(&Frame::Proof { proof: Some(proof) }).unwrap())
            .await
            .unwrap();
        let r = codec::decode(&f.next().await.unwrap().unwrap()).unwrap();
        assert_eq!(r, Frame::Accept);
        let (c2s, s2c) =
            codec::session_keys(secret, encryption, "roomcast", &me, &server, &nc, &ns);
        let keys = SessionKeys {
            send: c2s,
            recv: s2c,
            encrypt: encryption,
        };
        (f, keys)
    }

    /// One frame's payload, sealed (what a node writes after the length prefix).
    fn sealed(sealer: &mut Sealer, frame: &Frame) -> bytes::Bytes {
        let mut b = bytes::BytesMut::new();
        codec::encode_into(frame, &mut b).unwrap();
        sealer.seal(&mut b, 0).unwrap();
        b.freeze()
    }

    fn unsubscribe(room: &str) -> Frame {
        Frame::Msg(roomcast::routing::PeerMsg::Unsubscribe(
            roomcast::routing::Unsubscribe {
                room: roomcast::ids::RoomId::new(room).unwrap(),
            },
        ))
    }

    fn secret_file(tag: &str) -> (std::path::PathBuf, std::path::PathBuf, ClusterSecret) {
        let dir = std::env::temp_dir().join(format!("rc-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = dir.join("s");
        std::fs::write(&s, "a-secret-the-fake-peer-knows\n").unwrap();
        let secret = ClusterSecret::from_file(&s).unwrap();
        (dir, s, secret)
    }

    /// Issue 13: a peer that knows the secret and completed a real handshake still cannot
    /// slip a frame past the seal: a flipped byte, a replayed frame, a frame in clear or one
    /// sealed in the other mode ends the connection, counted as `frame_auth`; the node goes on
    /// serving. A mode mismatch is refused at the handshake.
    #[tokio::test]
    async fn tampered_replayed_or_unsealed_frames_end_the_connection_and_are_counted() {
        let (dir, s, secret) = secret_file("fake-seal");
        let node = Node::start(&["--cluster-secret-file", s.to_str().unwrap()]);
        let frame_auth = "roomcast_internode_rejected_total{reason=\"frame_auth\"}";
        let in_msgs = "roomcast_internode_messages_total{direction=\"in\"}";

        // Properly sealed frames are accepted.
        let (mut f, keys) = accepted_with_secret(&node, &secret, true).await;
        let mut sealer = keys.sealer();
        for i in 0..3 {
            f.send(sealed(&mut sealer, &unsubscribe(&format!("ok-{i}"))))
                .await
                .unwrap();
        }
        node.wait_metric(in_msgs, |v| v >= 3.0).await;
        // One flipped byte in the next frame.
        let mut bad = sealed(&mut sealer, &unsubscribe("tampered")).to_vec();
        bad[2] ^= 0x20;
        f.send(bytes::Bytes::from(bad)).await.unwrap();
        closed(&mut f).await;
        node.wait_metric(frame_auth, |v| v >= 1.0).await;

        // A frame replayed on the same connection.
        let (mut f, keys) = accepted_with_secret(&node, &secret, true).await;
        let mut sealer = keys.sealer();
        let once = sealed(&mut sealer, &unsubscribe("once"));
        f.send(once.clone()).await.unwrap();
        f.send(once).await.unwrap();
        closed(&mut f).await;
        node.wait_metric(frame_auth, |v| v >= 2.0).await;

        // A frame from an earlier connection replayed on a new one (other keys).
        let (f, keys) = accepted_with_secret(&node, &secret, true).await;
        let earlier = sealed(&mut keys.sealer(), &unsubscribe("earlier"));
        drop(f);
        let (mut f2, _) = accepted_with_secret(&node, &secret, true).await;
        f2.send(earlier).await.unwrap();
        closed(&mut f2).await;
        node.wait_metric(frame_auth, |v| v >= 3.0).await;

        // An Event injected in clear (as one could before issue 13).
        let (mut f, _) = accepted_with_secret(&node, &secret, true).await;
        let event = Frame::Msg(roomcast::routing::PeerMsg::Event(
            roomcast::routing::Event {
                room: roomcast::ids::RoomId::new("victim").unwrap(),
                epoch: roomcast::ids::Epoch::from_wire("e-1"),
                seq: 1,
                accepted_us: 1,
                frame: "{\"type\":\"message\",\"data\":\"injected\"}".into(),
            },
        ));
        f.send(codec::encode(&event).unwrap()).await.unwrap();
        closed(&mut f).await;
        node.wait_metric(frame_auth, |v| v >= 4.0).await;

        // Sealed in the other mode (authenticated only) on an encrypting connection.
        let (mut f, keys) = accepted_with_secret(&node, &secret, true).await;
        let other_mode = SessionKeys {
            encrypt: false,
            ..keys
        };
        f.send(sealed(&mut other_mode.sealer(), &unsubscribe("mode")))
            .await
            .unwrap();
        closed(&mut f).await;
        node.wait_metric(frame_auth, |v| v >= 5.0).await;

        // The other mode in the handshake is refused with its reason.
        let (mut f, reply) = hello_with(&node, "roomcast", "fake-peer", false).await;
        match reply {
            Frame::Reject { reason } => {
                assert!(reason.contains("internode_encryption"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        closed(&mut f).await;
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"encryption_mismatch\"}",
            |v| v >= 1.0,
        )
        .await;

        // The node is healthy and serves clients.
        assert_eq!(node.get("/healthz").await.0, 200);
        let mut c = node.connect().await;
        c.join("still-fine").await;
        let mut p = node.connect().await;
        p.publish("still-fine", json!("real")).await;
        assert_eq!(c.next_event().await["data"], "real");
        std::fs::remove_dir_all(&dir).ok();
    }

    async fn closed(f: &mut Conn) {
        let end = tokio::time::timeout(DEADLINE, f.next())
            .await
            .expect("closed in time");
        assert!(!matches!(end, Some(Ok(_))), "no frame expected: {end:?}");
    }

    #[tokio::test]
    async fn bad_handshakes_are_refused_and_counted() {
        let node = Node::start(&[]);
        let (mut f, reply) = hello(&node, "some-other-cluster", "fake").await;
        assert!(matches!(reply, Frame::Reject { .. }), "{reply:?}");
        closed(&mut f).await;
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"wrong_cluster\"}",
            |v| v >= 1.0,
        )
        .await;
        // A wrong version in the preamble.
        let mut s = tokio::net::TcpStream::connect(node.cluster).await.unwrap();
        let mut p = codec::preamble();
        p[5] = 99;
        s.write_all(&p).await.unwrap();
        let mut back = [0u8; 8];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(
            codec::check_preamble(&back),
            Ok(()),
            "the node tells its version"
        );
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"bad_version\"}",
            |v| v >= 1.0,
        )
        .await;
        // A client claiming a secret the node does not have (a proof where none is expected).
        let (mut f, _) = hello(&node, "roomcast", "fake2").await;
        f.send(
            codec::encode(&Frame::Proof {
                proof: Some([1; 32]),
            })
            .unwrap(),
        )
        .await
        .unwrap();
        let r = codec::decode(&f.next().await.unwrap().unwrap()).unwrap();
        assert!(matches!(r, Frame::Reject { .. }));
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"bad_secret\"}",
            |v| v >= 1.0,
        )
        .await;
    }

    #[tokio::test]
    async fn a_wrong_proof_is_refused_when_the_node_has_a_secret() {
        let dir = std::env::temp_dir().join(format!("rc-fake-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = dir.join("s");
        std::fs::write(&s, "a-secret-the-fake-does-not-know").unwrap();
        let node = Node::start(&["--cluster-secret-file", s.to_str().unwrap()]);
        let (mut f, reply) = hello(&node, "roomcast", "fake").await;
        assert!(matches!(reply, Frame::Challenge { proof: Some(_), .. }));
        f.send(
            codec::encode(&Frame::Proof {
                proof: Some([0; 32]),
            })
            .unwrap(),
        )
        .await
        .unwrap();
        let r = codec::decode(&f.next().await.unwrap().unwrap()).unwrap();
        assert!(matches!(r, Frame::Reject { .. }), "{r:?}");
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"bad_secret\"}",
            |v| v >= 1.0,
        )
        .await;
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn an_oversized_frame_closes_the_connection() {
        let node = Node::start(&[]);
        // Before the handshake the limit is 4 KiB.
        let mut s = tokio::net::TcpStream::connect(node.cluster).await.unwrap();
        s.write_all(&codec::preamble()).await.unwrap();
        let mut p = [0u8; 8];
        s.read_exact(&mut p).await.unwrap();
        s.write_all(&(1u32 << 20).to_be_bytes()).await.unwrap();
        s.write_all(&[0u8; 1024]).await.unwrap();
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"frame_too_large\"}",
            |v| v >= 1.0,
        )
        .await;
        // After the handshake, a length beyond the 64 MiB limit.
        let f = accepted(&node).await;
        let mut s = f.into_inner();
        s.write_all(&(200u32 << 20).to_be_bytes()).await.unwrap();
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"frame_too_large\"}",
            |v| v >= 2.0,
        )
        .await;
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(DEADLINE, s.read(&mut b))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed");
        // The node still serves clients.
        let mut c = node.connect().await;
        c.join("fine").await;
    }

    #[tokio::test]
    async fn unknown_messages_and_invalid_content_close_the_connection() {
        let node = Node::start(&[]);
        let mut f = accepted(&node).await;
        f.send(bytes::Bytes::from_static(&[5, 200, 1, 2, 3]))
            .await
            .unwrap();
        closed(&mut f).await;
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"decode\"}",
            |v| v >= 1.0,
        )
        .await;
        // A handshake frame after the handshake.
        let mut f = accepted(&node).await;
        f.send(codec::encode(&Frame::Accept).unwrap())
            .await
            .unwrap();
        closed(&mut f).await;
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"unexpected_frame\"}",
            |v| v >= 1.0,
        )
        .await;
        // A publish whose data is not JSON.
        let mut f = accepted(&node).await;
        let msg = roomcast::routing::PeerMsg::Publish(roomcast::routing::Publish {
            room: roomcast::ids::RoomId::new("r").unwrap(),
            token: 1,
            from: serde_json::from_str("\"fake-peer/1\"").unwrap(),
            user: None,
            data: "{not json".into(),
            key: None,
        });
        f.send(codec::encode(&Frame::Msg(msg)).unwrap())
            .await
            .unwrap();
        closed(&mut f).await;
        node.wait_metric(
            "roomcast_internode_rejected_total{reason=\"invalid_message\"}",
            |v| v >= 1.0,
        )
        .await;
        // A well-formed message from the fake peer is accepted (it is an authenticated peer).
        let mut f = accepted(&node).await;
        let msg = roomcast::routing::PeerMsg::Unsubscribe(roomcast::routing::Unsubscribe {
            room: roomcast::ids::RoomId::new("r").unwrap(),
        });
        f.send(codec::encode(&Frame::Msg(msg)).unwrap())
            .await
            .unwrap();
        node.wait_metric("roomcast_internode_messages_total{direction=\"in\"}", |v| {
            v >= 1.0
        })
        .await;
        let mut c = node.connect().await;
        c.join("still-fine").await;
    }
}

#[tokio::test]
async fn draining_a_node_hints_its_clients_and_hands_over_its_rooms() {
    let mut c = Cluster::start(3, &["--publish-rate", "0", "--drain-grace", "3s"]).await;
    let ids = c.ids();
    let room = c.room_owned_by(2, &ids, "drained");
    let mut on_victim = c.nodes[2].connect().await;
    let j = on_victim.join(&room).await;
    let epoch = j["epoch"].clone();
    let mut elsewhere = c.nodes[0].connect().await;
    elsewhere.join(&room).await;
    let mut p = c.nodes[1].connect().await;
    for i in 1..=5 {
        p.publish(&room, json!(i)).await;
    }
    assert_eq!(seqs(&on_victim.events(&room, 5).await), vec![1, 2, 3, 4, 5]);
    assert_eq!(seqs(&elsewhere.events(&room, 5).await), vec![1, 2, 3, 4, 5]);

    c.nodes[2].signal("TERM");
    // The victim's client is told where to go (the least-loaded other node), then closed.
    let hint = loop {
        let f = on_victim.recv_frame().await;
        if f["type"] == "reconnect" {
            break f;
        }
    };
    assert_eq!(hint["reason"], "draining");
    let url = hint["url"].as_str().unwrap().to_string();
    assert!(
        url == c.nodes[0].ws_url() || url == c.nodes[1].ws_url(),
        "{url}"
    );
    assert_eq!(
        on_victim.ended().await,
        Ended::Closed(1001, "draining".into())
    );
    let st = c.nodes[2]
        .wait_exit(Duration::from_secs(30))
        .expect("exits");
    assert!(st.success(), "{st:?}");

    // Nothing acknowledged is lost and the room keeps its epoch: the state moved.
    let seq = publish_eventually(&mut p, &room, json!(6)).await;
    assert_eq!(seq, 6);
    let e = elsewhere.events(&room, 1).await;
    assert_eq!(
        (e[0]["seq"].clone(), e[0]["epoch"].clone()),
        (json!(6), epoch.clone())
    );
    let mut back = Client::connect(&url).await;
    let r = back
        .request(json!({"op":"join","room":room,"since":5,"epoch":epoch}))
        .await;
    assert_eq!(
        (r["ok"].clone(), r["recovered"].clone()),
        (json!(true), json!(true)),
        "{r}"
    );
    assert_eq!(back.events(&room, 1).await[0]["seq"], 6);
}

#[tokio::test]
async fn a_rolling_restart_under_traffic_loses_no_acknowledged_message() {
    let mut c = Cluster::start(3, &["--publish-rate", "0", "--drain-grace", "2s"]).await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.ws_url()).collect();
    let urls = urls.join(",");
    // Clients that follow reconnect hints and resume with `since`; --strict makes any loss of
    // an acknowledged message, and any resume that is not recovered, a violation.
    let bench = spawn_strict_bench(&urls, "25s", "10s");
    for i in 0..3 {
        // Restart one node at a time, each once the cluster is whole again (seeded by a
        // neighbour: node 0, the original seed, restarts too).
        let mut args = c.nodes[i].args.clone();
        args.extend([
            "--seed".to_string(),
            c.nodes[(i + 1) % 3].cluster.to_string(),
        ]);
        // Same addresses, as a real rolling restart would have (clients keep their URLs).
        set_arg(&mut args, "--listen", &c.nodes[i].http.to_string());
        set_arg(
            &mut args,
            "--cluster-listen",
            &c.nodes[i].cluster.to_string(),
        );
        c.nodes[i].signal("TERM");
        let st = c.nodes[i]
            .wait_exit(Duration::from_secs(30))
            .expect("drained in time");
        assert!(st.success(), "node {i}: {st:?}");
        let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        c.nodes[i] = Node::start(&refs);
        c.wait_converged().await;
    }
    let out = tokio::task::spawn_blocking(move || bench.wait_with_output().unwrap())
        .await
        .unwrap();
    let r = bench_report(&out);
    assert_no_loss(&r);
    assert!(r["reconnects"].as_u64().unwrap() > 0, "clients moved: {r}");
}

/// Issue 13: gossip datagrams carry a timestamp and a unique id inside their HMAC; a datagram
/// stamped outside the ±30 s window is refused as stale, and one received twice as a replay,
/// both counted, and the node stays a healthy member.
#[tokio::test]
async fn stale_and_replayed_gossip_datagrams_are_refused_and_counted() {
    let dir = std::env::temp_dir().join(format!("rc-gossip-fresh-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let s = dir.join("s");
    std::fs::write(&s, "shared-secret-for-the-gossip-test\n").unwrap();
    let c = Cluster::start(2, &["--cluster-secret-file", s.to_str().unwrap()]).await;
    let target = &c.nodes[0];
    let secret = roomcast::cluster::ClusterSecret::from_file(&s).unwrap();
    // envelope ‖ stamp:u64be (unix ms) ‖ id:u64be ‖ HMAC(secret, "roomcast-gossip-v2", ...)
    let datagram = |stamp_ms: u64, id: u64| {
        let mut d = b"not really a chitchat envelope".to_vec();
        d.extend_from_slice(&stamp_ms.to_be_bytes());
        d.extend_from_slice(&id.to_be_bytes());
        let tag = secret.tag(b"roomcast-gossip-v2", &[&d]);
        d.extend_from_slice(&tag);
        d
    };
    let now_ms = roomcast::now_us() / 1000;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    // Captured a minute ago, or stamped a minute ahead: stale.
    udp.send_to(&datagram(now_ms - 60_000, 1), target.cluster)
        .await
        .unwrap();
    udp.send_to(&datagram(now_ms + 60_000, 2), target.cluster)
        .await
        .unwrap();
    target
        .wait_metric(
            "roomcast_internode_rejected_total{reason=\"gossip_stale\"}",
            |v| v >= 2.0,
        )
        .await;
    // Fresh and authentic: the first copy is accepted (chitchat then finds no envelope in
    // it: gossip_garbage), the second is a replay.
    let fresh = datagram(now_ms, 3);
    udp.send_to(&fresh, target.cluster).await.unwrap();
    target
        .wait_metric(
            "roomcast_internode_rejected_total{reason=\"gossip_garbage\"}",
            |v| v >= 1.0,
        )
        .await;
    udp.send_to(&fresh, target.cluster).await.unwrap();
    target
        .wait_metric(
            "roomcast_internode_rejected_total{reason=\"gossip_replay\"}",
            |v| v >= 1.0,
        )
        .await;
    assert_eq!(
        target
            .metric("roomcast_internode_rejected_total{reason=\"gossip_auth\"}")
            .await,
        None,
        "authentic datagrams are not counted as forged"
    );
    // Still one cluster that routes.
    Cluster::wait_live_set(target, &c.ids()).await;
    let room = c.room_owned_by(1, &c.ids(), "after-replay");
    let mut sub = target.connect().await;
    sub.join(&room).await;
    let mut p = c.nodes[1].connect().await;
    p.publish(&room, json!(1)).await;
    assert_eq!(sub.next_event().await["data"], 1);
    std::fs::remove_dir_all(&dir).ok();
}
