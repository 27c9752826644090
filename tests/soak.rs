//! The short soak (issue 13, item 5): `roomcast soak` with a few hundred churning clients on
//! a 3-node cluster of real processes, one node SIGKILLed and restarted under the load. Long
//! runs are `scripts/soak.sh` (docs/SOAK.md); this one checks in about a minute and a half
//! that the machinery works and that nothing acknowledged is lost across a restart while
//! clients connect, join, publish, leave and disconnect all the time. No timing is judged.

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

/// Replaces the value after `flag` in `args`.
fn set_arg(args: &mut [String], flag: &str, value: &str) {
    let i = args.iter().position(|a| a == flag).expect("flag present");
    args[i + 1] = value.to_string();
}

/// Sum of a metric over the nodes.
async fn total(c: &Cluster, series: &str) -> f64 {
    let mut sum = 0.0;
    for n in &c.nodes {
        sum += n.metric(series).await.unwrap_or(0.0);
    }
    sum
}

#[tokio::test]
async fn a_short_soak_with_a_node_restart_loses_nothing_and_nothing_grows() {
    let mut c = Cluster::start(3, &["--publish-rate", "0"]).await;
    let urls: Vec<String> = c.nodes.iter().map(|n| n.ws_url()).collect();
    let out = std::env::temp_dir().join(format!("roomcast-soak-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let soak = Command::new(bin())
        .args(["soak", "--json", "--quiet", "--url", &urls.join(",")])
        .args([
            "--connections",
            "300",
            "--rooms",
            "30",
            "--witness-rooms",
            "10",
        ])
        .args([
            "--publish-rate",
            "60",
            "--lifetime",
            "5s..20s",
            "--switch-every",
            "4s",
        ])
        .args([
            "--duration",
            "75s",
            "--sample-every",
            "2s",
            "--settle",
            "15s",
        ])
        .args(["--drain", "30s", "--seed", "13"])
        .arg("--out")
        .arg(&out)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start roomcast soak");

    // Once the population is connected and publishes are acknowledged, and every room has its
    // replica (one failure at a time), a node dies and comes back with the same id.
    wait_until("the soak's clients connected and publishing", || async {
        total(&c, "roomcast_connections").await >= 300.0
            && total(&c, "roomcast_messages_published_total").await >= 100.0
    })
    .await;
    c.wait_replicated(30).await;
    let i = 1;
    let mut args = c.nodes[i].args.clone();
    args.extend(["--seed".to_string(), c.nodes[2].cluster.to_string()]);
    set_arg(&mut args, "--listen", &c.nodes[i].http.to_string());
    set_arg(
        &mut args,
        "--cluster-listen",
        &c.nodes[i].cluster.to_string(),
    );
    c.nodes[i].kill();
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    c.nodes[i] = Node::start(&refs);
    c.wait_converged().await;

    let done = tokio::task::spawn_blocking(move || soak.wait_with_output().unwrap())
        .await
        .unwrap();
    let r = bench_report(&done);
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert_eq!(r["ok"], true, "failures {}\n{stderr}", r["failures"]);
    assert!(done.status.success(), "exit status follows the verdict");

    // Traffic and churn happened, and crossed the restart.
    let acked = r["check"]["acked"].as_u64().unwrap();
    assert!(acked > 500, "{}", r["check"]);
    assert_eq!(r["check"]["confirmed"], acked, "{}", r["check"]);
    for k in [
        "lost",
        "undelivered_in_history",
        "missed_by_some",
        "sequenced_twice",
    ] {
        assert_eq!(r["check"][k], 0, "{k}: {}", r["check"]);
    }
    let churn = &r["churn"];
    assert!(churn["lives"].as_u64().unwrap() > 600, "{churn}");
    assert!(churn["ends_abrupt"].as_u64().unwrap() > 0, "{churn}");
    assert!(churn["leaves"].as_u64().unwrap() > 300, "{churn}");
    assert!(churn["reconnects"].as_u64().unwrap() > 0, "{churn}");
    assert_eq!(churn["unrecovered"], 0, "{churn}");
    assert!(
        r["witness"]["resumes"].as_u64().unwrap() > 0,
        "{}",
        r["witness"]
    );

    // The sampler saw the restart of node 2, and judged every series of every node.
    let restarts = r["restarts_seen"].as_array().unwrap();
    assert!(
        restarts.iter().any(|x| x[0] == "n2"),
        "restarts seen: {restarts:?}"
    );
    let growth = r["growth"].as_array().unwrap();
    assert_eq!(
        growth.len(),
        4 + 3 * 16,
        "4 cluster-wide rules, 16 per node"
    );
    for v in growth {
        assert_ne!(v["status"], "grew", "{v}");
        // Memory and descriptors had samples enough on both sides of the restart to judge.
        if ["rss_bytes", "heap_bytes", "open_fds", "other_fds"]
            .contains(&v["series"].as_str().unwrap())
        {
            assert_eq!(v["status"], "bounded", "{v}");
        }
    }
    for n in r["nodes"].as_array().unwrap() {
        let rss = &n["series"][0];
        assert_eq!(rss["series"], "rss_bytes");
        assert!(rss["max"].as_f64().unwrap() > 1e6, "{n}");
    }

    // The time series is on disk, a row per node and one for the soak process per sample.
    let csv = std::fs::read_to_string(out.join("samples.csv")).unwrap();
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(&header[..4], ["t_s", "node", "up", "rss_bytes"]);
    let rows: Vec<&str> = lines.collect();
    assert!(rows.len() >= 4 * 20, "{} rows", rows.len());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["ok"], true);
    let _ = std::fs::remove_dir_all(&out);
}
