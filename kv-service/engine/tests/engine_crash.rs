//! Crash test: a child process writes and reports each acknowledged write over a pipe; the
//! parent SIGKILLs it at random moments, reopens the data and checks that every
//! acknowledged write is there (and deleted keys stay deleted). 12 cycles per durability
//! mode: every mode promises that an acknowledged write survives the process being killed.
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kv_engine::{Engine, EngineConfig};

const KEYS: u64 = 240;

fn value_for(key: u64, counter: u64, len: usize) -> Vec<u8> {
    let seed = format!("{key}:{counter}:");
    seed.bytes().cycle().take(len).collect()
}

#[derive(Clone, Debug, PartialEq)]
enum State {
    Absent,
    Value(Vec<u8>),
}

fn parse_op(key: u64, rest: &[&str]) -> Option<State> {
    match rest {
        ["D"] => Some(State::Absent),
        ["P", counter, len] => Some(State::Value(value_for(
            key,
            counter.parse().ok()?,
            len.parse().ok()?,
        ))),
        _ => None,
    }
}

#[test]
fn acknowledged_writes_survive_sigkill_in_page_mode() {
    sigkill_cycles("page", 0x1234_5678_9ABC_DEF1);
}

#[test]
fn acknowledged_writes_survive_sigkill_in_periodic_mode() {
    sigkill_cycles("periodic", 0x2345_6789_ABCD_EF12);
}

#[test]
fn acknowledged_writes_survive_sigkill_in_sync_mode() {
    sigkill_cycles("sync", 0x3456_789A_BCDE_F123);
}

fn sigkill_cycles(mode: &str, seed: u64) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
    let child_exe = env!("CARGO_BIN_EXE_engine-crash-child");
    // Model: the last acknowledged state of each key, and an unacknowledged intent.
    let mut acked: HashMap<u64, State> = (0..KEYS).map(|k| (k, State::Absent)).collect();
    let mut rng = seed;
    let mut total_acks = 0usize;
    let cycles = 12;
    for cycle in 0..cycles {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let run_for = Duration::from_millis(80 + rng % 400);
        let mut child = Command::new(child_exe)
            .args([
                "crash",
                dir.path().to_str().expect("utf-8 path"),
                &cycle.to_string(),
                mode,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().expect("child stdout");
        let reader = std::thread::spawn(move || {
            let mut lines = Vec::new();
            for line in BufReader::new(stdout).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
            lines
        });
        let start = Instant::now();
        while start.elapsed() < run_for {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("child exited early: {status}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let lines = reader.join().expect("reader thread");
        let mut intent: HashMap<u64, State> = HashMap::new();
        for line in &lines {
            let parts: Vec<&str> = line.split_whitespace().collect();
            match parts.as_slice() {
                ["I", key, rest @ ..] => {
                    let key: u64 = key.parse().expect("key");
                    // A torn last line (killed mid-write) has no valid op; skip it.
                    if let Some(st) = parse_op(key, rest) {
                        intent.insert(key, st);
                    }
                }
                ["A", key] => {
                    let key: u64 = key.parse().expect("key");
                    let st = intent.remove(&key).expect("ack without intent");
                    acked.insert(key, st);
                    total_acks += 1;
                }
                _ => {}
            }
        }
        // Reopen and check every key.
        let engine = Engine::open(
            dir.path(),
            // Recovery does not depend on the mode it reopens in.
            EngineConfig {
                workers: 2,
                durability: kv_engine::Durability::Page,
                ..EngineConfig::default()
            },
        )
        .expect("reopen after SIGKILL");
        let rec = engine.recovery_stats();
        assert_eq!(rec.corrupt, 0, "{mode}: SIGKILL cannot tear a page write");
        for k in 0..KEYS {
            let got = match engine.get(format!("key-{k:04}").as_bytes()).expect("get") {
                Some(v) => State::Value(v),
                None => State::Absent,
            };
            let expected = &acked[&k];
            if &got == expected {
                continue;
            }
            // The operation in flight at the kill may or may not have landed.
            match intent.get(&k) {
                Some(pending) if *pending == got => {
                    acked.insert(k, got);
                }
                _ => panic!(
                    "{mode} cycle {cycle}: key {k}: got {:?}, acknowledged {:?}",
                    summary(&got),
                    summary(expected)
                ),
            }
        }
        // Nothing else is in the store, in order.
        let all = engine.scan(b"", usize::MAX).expect("scan");
        let present = acked
            .values()
            .filter(|s| matches!(s, State::Value(_)))
            .count();
        assert_eq!(all.len(), present, "cycle {cycle}: scan count");
        assert!(all.windows(2).all(|w| w[0].0 < w[1].0));
        engine.close();
    }
    assert!(
        total_acks > 100,
        "the child made too little progress ({total_acks} acks) for the test to mean much"
    );
}

fn summary(s: &State) -> String {
    match s {
        State::Absent => "absent".into(),
        State::Value(v) => format!(
            "{} bytes {:?}",
            v.len(),
            String::from_utf8_lossy(&v[..v.len().min(16)])
        ),
    }
}
