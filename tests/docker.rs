//! The container path, end to end: build the images (scripts/docker-build.sh), bring up
//! cluster-config/docker-compose.yml (3 nodes, HAProxy, Prometheus) on free loopback ports,
//! check membership, routing through HAProxy, Prometheus scraping, and a rolling restart
//! (`docker-compose restart`, i.e. SIGTERM → drain) under traffic without loss.
//!
//! Where no Docker daemon runs the test is skipped with a message; with CI=true it is
//! mandatory and fails instead.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True if a Docker daemon answers; with CI=true its absence is a failure.
fn docker_or_skip() -> bool {
    let ok = Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true: the Docker tests are mandatory, but no Docker daemon answers `docker info`"
        );
        eprintln!(
            "SKIPPED: no Docker daemon (docker info failed); the container tests did not run"
        );
    }
    ok
}

fn compose_cmd() -> Vec<String> {
    let v1 = Command::new("docker-compose")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if v1 {
        vec!["docker-compose".into()]
    } else {
        vec!["docker".into(), "compose".into()]
    }
}

/// A compose project on free ports, torn down on drop.
struct Compose {
    project: String,
    env: Vec<(String, String)>,
    base: Vec<String>,
    lb: u16,
    nodes: [u16; 3],
    prometheus: u16,
}

/// `N` distinct free loopback ports. The listeners are held until all are chosen: released one
/// by one, the kernel may hand the same port out twice (it did: two services of one project
/// were given the same host port, and compose failed with "port is already allocated").
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

impl Compose {
    fn up() -> Compose {
        let project = format!("rctest{}", std::process::id());
        let [lb, prometheus, n1, n2, n3] = free_ports::<5>();
        let nodes = [n1, n2, n3];
        let env = vec![
            ("RC_LB_PORT".to_string(), lb.to_string()),
            ("RC_NODE1_PORT".to_string(), nodes[0].to_string()),
            ("RC_NODE2_PORT".to_string(), nodes[1].to_string()),
            ("RC_NODE3_PORT".to_string(), nodes[2].to_string()),
            ("RC_PROMETHEUS_PORT".to_string(), prometheus.to_string()),
        ];
        let mut base = compose_cmd();
        base.extend([
            "-f".into(),
            repo()
                .join("cluster-config/docker-compose.yml")
                .display()
                .to_string(),
            "-p".into(),
            project.clone(),
        ]);
        let c = Compose {
            project,
            env,
            base,
            lb,
            nodes,
            prometheus,
        };
        c.run(&["up", "-d"]);
        c
    }

    fn run(&self, args: &[&str]) {
        let mut cmd = Command::new(&self.base[0]);
        cmd.args(&self.base[1..]).args(args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run compose");
        assert!(
            out.status.success(),
            "compose {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn node_addr(&self, i: usize) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.nodes[i]).parse().unwrap()
    }

    fn node_url(&self, i: usize) -> String {
        format!("ws://127.0.0.1:{}/ws", self.nodes[i])
    }
}

impl Drop for Compose {
    fn drop(&mut self) {
        if std::env::var("RC_KEEP_COMPOSE").is_ok() {
            eprintln!("keeping compose project {}", self.project);
            return;
        }
        let mut cmd = Command::new(&self.base[0]);
        cmd.args(&self.base[1..])
            .args(["down", "-v", "--timeout", "30"]);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let _ = cmd.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// GET that tolerates a server not up yet: None until it answers.
async fn try_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(3), async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    })
    .await
    .ok()
    .flatten()
}

/// Waits (up to `limit`) until every node lists all three as live and ready.
async fn wait_cluster(c: &Compose, limit: Duration) {
    let deadline = Instant::now() + limit;
    for i in 0..3 {
        loop {
            let ok = match try_get(c.node_addr(i), "/cluster").await {
                Some((200, body)) => serde_json::from_str::<Value>(&body).is_ok_and(|v| {
                    v["members"].as_array().is_some_and(|m| {
                        m.iter()
                            .filter(|m| m["live"] == true && m["ready"] == true)
                            .count()
                            == 3
                    })
                }),
                _ => false,
            };
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node{} never saw 3 ready members",
                i + 1
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Waits (up to `limit`) until HAProxy forwards WebSocket requests to a node. Its health checks
/// (every 2 s, two passes to rise) and its DNS resolution of the node names trail the nodes' own
/// readiness by seconds: until then it answers 503 itself. A plain GET of /ws that reaches a
/// node gets the node's 400 (not an upgrade); /ws has its own backend, so it is what is probed.
async fn wait_lb(c: &Compose, limit: Duration) {
    let lb: std::net::SocketAddr = format!("127.0.0.1:{}", c.lb).parse().unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if let Some((400, _)) = try_get(lb, "/ws").await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "HAProxy never forwarded to a ready node"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn the_compose_cluster_routes_is_monitored_and_drains_without_loss() {
    if !docker_or_skip() {
        return;
    }
    // 1. The images (several minutes from scratch; cached after).
    let st = Command::new(repo().join("scripts/docker-build.sh"))
        .current_dir(repo())
        .status()
        .expect("run scripts/docker-build.sh");
    assert!(st.success(), "scripts/docker-build.sh failed");

    // 2. The cluster: all three nodes see each other.
    let c = Compose::up();
    wait_cluster(&c, Duration::from_secs(120)).await;

    // 3. A message published through HAProxy reaches subscribers on every node.
    let mut subs = Vec::new();
    for i in 0..3 {
        let mut s = Client::connect(&c.node_url(i)).await;
        assert_eq!(s.welcome["node"], format!("node{}", i + 1));
        s.join("compose").await;
        subs.push(s);
    }
    wait_lb(&c, Duration::from_secs(60)).await;
    let mut p = Client::connect(&format!("ws://127.0.0.1:{}/ws", c.lb)).await;
    let seq = p.publish("compose", json!("through haproxy")).await;
    for s in &mut subs {
        let e = s.events("compose", 1).await;
        assert_eq!(
            (e[0]["seq"].as_u64(), e[0]["data"].clone()),
            (Some(seq), json!("through haproxy"))
        );
    }
    drop(subs);

    // 3b. HAProxy spreads WebSocket connections (least connections, no stickiness): clients
    // that all come from one address (Docker's port publishing) reach every node.
    let mut held = Vec::new();
    let mut nodes = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while nodes.len() < 3 && Instant::now() < deadline && held.len() < 200 {
        let cl = Client::connect(&format!("ws://127.0.0.1:{}/ws", c.lb)).await;
        nodes.insert(cl.welcome["node"].as_str().unwrap_or("").to_string());
        held.push(cl);
        // Polling with a deadline: HAProxy's health checks bring servers up one by one.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        nodes.len(),
        3,
        "connections through haproxy reached only {nodes:?}"
    );
    drop(held);

    // 4. Prometheus scrapes all three nodes and has roomcast series.
    let prom: std::net::SocketAddr = format!("127.0.0.1:{}", c.prometheus).parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let up = match try_get(prom, "/api/v1/targets").await {
            Some((200, body)) => serde_json::from_str::<Value>(&body).map_or(0, |v| {
                v["data"]["activeTargets"]
                    .as_array()
                    .map_or(0, |t| t.iter().filter(|t| t["health"] == "up").count())
            }),
            _ => 0,
        };
        let series = match try_get(prom, "/api/v1/query?query=roomcast_connections").await {
            Some((200, body)) => serde_json::from_str::<Value>(&body)
                .map_or(0, |v| v["data"]["result"].as_array().map_or(0, |r| r.len())),
            _ => 0,
        };
        if up == 3 && series >= 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus: {up} targets up, {series} series"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // 5. Rolling restart under traffic: `compose restart` sends SIGTERM (the node drains:
    //    rooms handed over, clients hinted to another node), then starts it again. Clients
    //    follow the hints and resume with `since`; nothing acknowledged may be lost.
    let urls: Vec<String> = (0..3).map(|i| c.node_url(i)).collect();
    let bench = spawn_strict_bench(&urls.join(","), "45s", "15s");
    for n in ["node1", "node2", "node3"] {
        c.run(&["restart", "--timeout", "30", n]);
        wait_cluster(&c, Duration::from_secs(60)).await;
    }
    let out = tokio::task::spawn_blocking(move || bench.wait_with_output().unwrap())
        .await
        .unwrap();
    let r = bench_report(&out);
    assert_no_loss(&r);
}
