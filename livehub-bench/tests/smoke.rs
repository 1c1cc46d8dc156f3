//! Runs `livehub-bench smoke` (tiny fan-out, latency, connection, burst and host-publish runs
//! against our server: over WebSocket in JSON and MessagePack, SSE over HTTP/1.1 and HTTP/2,
//! long-polling, the current-thread and multi-thread runtimes, the axum server of README, and
//! over Redis, one node and a cluster, when `redis-server` is installed) and checks its JSON
//! lines: no loss, no errors, every delivery counted. No timing is asserted.

use std::process::Command;

#[test]
fn smoke_runs_without_loss() {
    let out = Command::new(env!("CARGO_BIN_EXE_livehub-bench"))
        .arg("smoke")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!("could not run livehub-bench: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "livehub-bench smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let reports: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let fanouts: Vec<&serde_json::Value> = reports
        .iter()
        .filter(|r| r["scenario"] == "fanout")
        .collect();
    let redis = std::env::var("HUB_REQUIRE_REDIS").as_deref() == Ok("1")
        || Command::new("redis-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    let mut expected: Vec<(&str, &str)> = Vec::new();
    for target in ["ws-json", "ws-msgpack", "sse", "sse-h2", "poll"] {
        for scenario in ["fanout", "latency", "conns"] {
            expected.push((target, scenario));
        }
    }
    expected.extend([
        ("ws-axum", "fanout"),
        ("ws-axum", "latency"),
        ("ws-json", "burst"),
        ("ws-json@current", "burst"),
        ("ws-json@multi:2", "burst"),
        ("ws-axum", "burst"),
        ("ws-json", "publish"),
        // 3 publishers sharing one stream.
        ("ws-json", "fanout"),
    ]);
    if redis {
        expected.extend([
            ("ws-redis", "fanout"),
            ("ws-cluster", "fanout"),
            ("ws-redis", "latency"),
            ("ws-cluster", "latency"),
            ("ws-redis", "burst"),
            ("ws-cluster", "burst"),
            ("ws-redis", "publish"),
            ("ws-cluster", "fanout"),
        ]);
    }
    for (target, scenario) in &expected {
        assert!(
            reports
                .iter()
                .any(|r| r["target"] == *target && r["scenario"] == *scenario),
            "no {scenario} report for {target}:\n{stdout}"
        );
    }
    assert_eq!(
        reports.len(),
        expected.len(),
        "expected {} reports:\n{stdout}",
        expected.len()
    );
    for r in &reports {
        assert_eq!(r["loss"], 0, "loss in {r}");
        assert_eq!(r["errors"], 0, "errors in {r}");
    }
    for r in reports.iter().filter(|r| r["scenario"] == "burst") {
        assert_eq!(
            r["deliveries"],
            20 * 300,
            "every subscriber got the burst in {r}"
        );
        assert_eq!(r["slow_consumer_closes"], 0, "{r}");
    }
    for r in reports.iter().filter(|r| r["scenario"] == "publish") {
        assert_eq!(r["seq_published"], 2000, "{r}");
        assert_eq!(r["conc_published"], 2000, "{r}");
        assert_eq!(
            r["server_stats"]["published"], 4000,
            "the hub counted them in {r}"
        );
    }
    for r in reports
        .iter()
        .filter(|r| r["target"] == "ws-cluster" && r["scenario"] == "fanout")
    {
        // The subscribers are on the other nodes: each got every message from Redis once
        // (one copy per node, not per subscriber); the publisher's node got none.
        let nodes = r["server_stats"].as_array().cloned().unwrap_or_default();
        assert_eq!(nodes.len(), 3, "three nodes in {r}");
        assert_eq!(nodes[0]["published"], 200, "{r}");
        assert_eq!(nodes[0]["node"]["published_in"], 0, "{r}");
        for n in &nodes[1..] {
            assert_eq!(n["node"]["published_in"], 200, "{r}");
            assert_eq!(n["sessions"], 10, "half of the subscribers on each in {r}");
        }
    }
    let shared = fanouts.iter().filter(|r| r["publishers"] == 3).count();
    assert_eq!(
        shared,
        if redis { 2 } else { 1 },
        "fan-outs from 3 publishers:\n{stdout}"
    );
    for r in fanouts {
        assert_eq!(r["subs"], 20, "{r}");
        assert_eq!(r["msgs"], 200, "{r}");
        assert_eq!(r["deliveries"], 20 * 200, "deliveries = subs x msgs in {r}");
        assert_eq!(r["deliveries"], r["expected"], "{r}");
    }
}
