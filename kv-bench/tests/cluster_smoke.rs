//! A small run of the real `kv-bench cluster`: three `kv-service` cluster nodes and a
//! single node as processes (the `kv-service` binary next to `kv-bench`, which `cargo test
//! --workspace` builds), every measurement and one failover. Asserts only that every request
//! was answered (the bench fails otherwise) and that the report is complete — no timing.
use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn cluster_bench_smoke() {
    let bench = Path::new(env!("CARGO_BIN_EXE_kv-bench"));
    let server = bench.with_file_name("kv-service");
    assert!(
        server.is_file(),
        "{} is missing: build it first (cargo build -p kv-service --bin kv-service; \
         cargo test --workspace builds it)",
        server.display()
    );
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let json = work.path().join("out.json");
    let (requests, clients) = (60u64, 2);
    let out = Command::new(bench)
        .current_dir(work.path())
        .args([
            "cluster", "--warmup", "10", "--secs", "0.5", "--keys", "200",
        ])
        .args(["--requests", &requests.to_string()])
        .args(["--clients", &clients.to_string()])
        .args(["--failovers", "1"])
        .arg("--server-bin")
        .arg(&server)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running kv-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kv-bench failed\n{stdout}\n{stderr}");
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
        .expect("valid json");

    let results = v["results"].as_array().expect("results");
    let names: Vec<&str> = results.iter().filter_map(|r| r["what"].as_str()).collect();
    for want in [
        "floor: UDP echo, 1 sleeping thread, 1 in flight",
        "floor: UDP relay, leader + 2 sleeping followers, 1 in flight",
        "single-node PUT, periodic, 1 in flight",
        "single-node GET, periodic, 1 in flight",
        "single-node PUT, periodic, 2 clients",
        "single-node PUT, sync, 1 in flight",
        "single-node PUT, sync, 2 clients",
        "replicated PUT, raft-sync never, 1 in flight",
        "replicated GET, raft-sync never, 1 in flight",
        "replicated PUT, raft-sync never, 2 clients",
        "replicated PUT, raft-sync always, 1 in flight",
        "replicated GET, raft-sync always, 1 in flight",
        "replicated PUT, raft-sync always, 2 clients",
        "replicated PUT, raft-sync never, lease reads, 1 in flight",
        "replicated GET, raft-sync never, lease reads, 1 in flight",
    ] {
        assert!(names.contains(&want), "no {want:?} in {names:?}");
    }
    for r in results {
        let what = r["what"].as_str().unwrap_or_default();
        let n = r["requests"].as_u64().unwrap_or(0);
        if what.ends_with("1 in flight") {
            assert_eq!(n, requests, "{r}");
        } else {
            assert!(n > 0, "{r}");
        }
        assert!(r["latency"]["p50_us"].as_f64().unwrap_or(0.0) > 0.0, "{r}");
        assert_eq!(
            r["latency"]["samples"].as_u64(),
            Some(n),
            "every request timed: {r}"
        );
        if what.starts_with("replicated") {
            assert!(r["retries"].is_object(), "{r}");
        }
    }
    let failovers = v["failovers"].as_array().expect("failovers");
    assert_eq!(failovers.len(), 1, "{v}");
    let f = &failovers[0];
    assert!(f["ms"].as_f64().unwrap_or(0.0) > 0.0, "{f}");
    assert_ne!(f["killed"], f["new_leader"], "{f}");
    let ratios = v["ratios"].as_array().expect("ratios");
    assert_eq!(ratios.len(), 8, "{v}");
    assert!(
        ratios
            .iter()
            .all(|r| r["value"].as_f64().unwrap_or(0.0) > 0.0),
        "{v}"
    );
    // The human-readable table is printed too.
    assert!(stdout.contains("| measure | value | target |"), "{stdout}");
    assert!(stdout.contains("failover 1"), "{stdout}");
}
