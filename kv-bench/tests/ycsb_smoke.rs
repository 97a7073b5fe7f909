//! End-to-end smoke runs of the real `kv-bench ycsb` binary against an embedded server, and
//! (when `redis-server` is installed) with the same-run Redis baseline.
use std::process::Command;

use serde_json::Value;

fn run_ycsb(extra: &[&str]) -> Value {
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let json = work.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_kv-bench"))
        .current_dir(work.path())
        .args(["ycsb", "--embedded", "--records", "2000", "--window", "8"])
        .args(extra)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("running kv-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kv-bench failed\n{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&json).expect("json written");
    serde_json::from_str(&text).expect("valid json")
}

fn check_system(v: &Value, name: &str) {
    let systems = v["systems"].as_array().expect("systems");
    let s = systems
        .iter()
        .find(|s| s["system"] == name)
        .unwrap_or_else(|| panic!("no {name} in {v}"));
    assert!(s["ops"].as_u64().unwrap_or(0) > 0, "{s}");
    assert!(s["ops_per_s"].as_f64().unwrap_or(0.0) > 0.0, "{s}");
    assert_eq!(s["errors"].as_u64(), Some(0), "{s}");
}

#[test]
fn ycsb_embedded_smoke() {
    let v = run_ycsb(&["--workload", "a", "--duration", "1.5", "--sessions", "2"]);
    check_system(&v, "kv-service");
    let per_op = &v["systems"][0]["per_op"];
    assert!(
        per_op["read"]["count"].as_u64().unwrap_or(0) > 0,
        "{per_op}"
    );
    assert!(
        per_op["update"]["p99_us"].as_f64().unwrap_or(0.0) > 0.0,
        "{per_op}"
    );
    assert!(v["ratio_kv_over_redis"].is_null());
}

#[test]
fn ycsb_embedded_scans_and_production_mix() {
    let v = run_ycsb(&["--workload", "e", "--ops", "300"]);
    check_system(&v, "kv-service");
    assert!(
        v["systems"][0]["per_op"]["scan"]["count"]
            .as_u64()
            .unwrap_or(0)
            > 0
    );
    let v = run_ycsb(&["--workload", "production", "--ops", "1000"]);
    check_system(&v, "kv-service");
}

#[test]
fn ycsb_redis_baseline_smoke() {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()))
        .unwrap_or(false);
    if !on_path {
        eprintln!("skipped: redis-server is not on PATH (apt-get install redis-server)");
        return;
    }
    let v = run_ycsb(&["--workload", "c", "--duration", "1", "--baseline", "redis"]);
    check_system(&v, "kv-service");
    check_system(&v, "redis");
    assert!(
        v["ratio_kv_over_redis"]["throughput"]
            .as_f64()
            .unwrap_or(0.0)
            > 0.0
    );
}

/// `--baseline redis-aof` / `redis-sync` start Redis with the append-only file at
/// `appendfsync everysec` / `always`, and the report names both sides' durability.
#[test]
fn ycsb_redis_persistence_baselines_name_their_durability() {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()))
        .unwrap_or(false);
    if !on_path {
        eprintln!("skipped: redis-server is not on PATH (apt-get install redis-server)");
        return;
    }
    for (baseline, durability, fsync) in [
        ("redis-aof", "periodic", "appendfsync everysec"),
        ("redis-sync", "sync", "appendfsync always"),
    ] {
        let v = run_ycsb(&[
            "--workload",
            "a",
            "--ops",
            "2000",
            "--rounds",
            "1",
            "--baseline",
            baseline,
            "--durability",
            durability,
        ]);
        check_system(&v, "kv-service");
        check_system(&v, baseline);
        let kv = v["kv_durability"].as_str().unwrap_or_default();
        assert!(kv.starts_with(durability), "{v}");
        let redis = v["baseline_persistence"].as_str().unwrap_or_default();
        assert!(redis.contains(fsync), "{v}");
        assert!(
            v["ratio_kv_over_redis"]["throughput"]
                .as_f64()
                .unwrap_or(0.0)
                > 0.0
        );
    }
}
