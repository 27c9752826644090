//! `roomcast bench` against spawned nodes: correctness of its counts only (no timing
//! assertions; timing belongs in scripts/bench.sh).

mod common;

use common::*;
use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let out = std::process::Command::new(bin())
        .arg("bench")
        .args(["--json", "--quiet"])
        .args(args)
        .output()
        .expect("run bench");
    let report = bench_report(&out);
    assert_eq!(
        out.status.success(),
        report["ok"] == true,
        "exit status follows the verdict: {report}"
    );
    report
}

#[tokio::test]
async fn a_small_bench_run_loses_nothing_and_counts_right() {
    let node = Node::start(&["--publish-rate", "0"]);
    let url = node.ws_url();
    let pid = node.pid().to_string();
    let r = tokio::task::spawn_blocking(move || {
        bench(&[
            "--url",
            &url,
            "--subscribers",
            "20",
            "--rooms",
            "4",
            "--publishers",
            "2",
            "--in-flight",
            "4",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
            "--rss-pid",
            &pid,
        ])
    })
    .await
    .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["joined"], 20);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["duplicated"], 0);
    assert_eq!(r["reordered"], 0);
    assert_eq!(r["gaps"], 0);
    let acked = r["acked_total"].as_u64().unwrap();
    assert!(acked > 0, "{r}");
    // Every acknowledged publish reached each of its room's 5 subscribers exactly once.
    assert_eq!(r["expected_deliveries"], r["received_total"], "{r}");
    assert_eq!(r["received_total"].as_u64().unwrap(), acked * 5);
    assert!(r["latency"]["count"].as_u64().unwrap() > 0);
    assert!(r["rss_bytes_per_conn"].is_number());
    assert!(r["bench_cpu_s"].as_f64().unwrap() > 0.0);
    // The node counted the same deliveries.
    let delivered = node
        .metric("roomcast_messages_delivered_total")
        .await
        .unwrap();
    assert_eq!(delivered as u64, r["received_total"].as_u64().unwrap());
}

#[tokio::test]
async fn a_rate_limited_bench_on_three_nodes_loses_nothing() {
    let c = Cluster::start(3, &["--publish-rate", "0"]).await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.ws_url()).collect();
    let urls = urls.join(",");
    let r = tokio::task::spawn_blocking(move || {
        bench(&[
            "--url",
            &urls,
            "--subscribers",
            "30",
            "--rooms",
            "6",
            "--publishers",
            "3",
            "--rate",
            "300",
            "--duration",
            "1s",
            "--warmup",
            "200ms",
        ])
    })
    .await
    .unwrap();
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["expected_deliveries"], r["received_total"], "{r}");
    assert!(r["acked_total"].as_u64().unwrap() > 100, "{r}");
}

#[tokio::test]
async fn idle_mode_connects_and_joins_everyone() {
    let node = Node::start(&[]);
    let url = node.ws_url();
    let r = tokio::task::spawn_blocking(move || {
        bench(&[
            "--url",
            &url,
            "--idle",
            "--subscribers",
            "200",
            "--rooms",
            "50",
            "--duration",
            "200ms",
            "--warmup",
            "0s",
            "--source-ips",
            "127.0.0.1,127.0.0.2",
        ])
    })
    .await
    .unwrap();
    assert_eq!(r["joined"], 200, "{r}");
    assert_eq!(r["publishers"], 0);
    assert_eq!(r["ok"], true);
    assert!(r["connect_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn a_bench_against_nothing_fails_cleanly() {
    let out = std::process::Command::new(bin())
        .args([
            "bench",
            "--quiet",
            "--url",
            "ws://127.0.0.1:1/ws",
            "--subscribers",
            "2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
}
