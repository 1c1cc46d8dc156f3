//! Runs `hub-bench smoke` (tiny fan-out, latency and connection runs against our server, over
//! WebSocket in JSON and MessagePack, SSE over HTTP/1.1 and HTTP/2, and long-polling) and checks its JSON lines: no loss,
//! no errors, every delivery counted.
//! No timing is asserted.

use std::process::Command;

#[test]
fn smoke_runs_without_loss() {
    let out = Command::new(env!("CARGO_BIN_EXE_hub-bench"))
        .arg("smoke")
        .output();
    let out = match out {
        Ok(out) => out,
        Err(e) => panic!("could not run hub-bench: {e}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "hub-bench smoke failed ({}):\n{stdout}\n{stderr}",
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
    for target in ["ws-json", "ws-msgpack", "sse", "sse-h2", "poll"] {
        for scenario in ["fanout", "latency", "conns"] {
            assert!(
                reports
                    .iter()
                    .any(|r| r["target"] == target && r["scenario"] == scenario),
                "no {scenario} report for {target}:\n{stdout}"
            );
        }
    }
    assert_eq!(reports.len(), 15, "expected 15 reports:\n{stdout}");
    for r in &reports {
        assert_eq!(r["loss"], 0, "loss in {r}");
        assert_eq!(r["errors"], 0, "errors in {r}");
    }
    for r in fanouts {
        assert_eq!(r["subs"], 20, "{r}");
        assert_eq!(r["msgs"], 200, "{r}");
        assert_eq!(r["deliveries"], 20 * 200, "deliveries = subs x msgs in {r}");
        assert_eq!(r["deliveries"], r["expected"], "{r}");
    }
}
