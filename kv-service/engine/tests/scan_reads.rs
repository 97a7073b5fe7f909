//! Scans that know their keys before reading: every worker lists its first keys from its
//! index, the first `max` of them all are chosen (`choose_scan_keys`), and each worker reads
//! only those (`Worker::submit_scan_of`). Checked on the simulated disk against a model: the
//! answers, the reads they cost (never more than the uncached items returned; one per
//! block), caches small enough that blocks are evicted between a scan's steps, read errors,
//! and keys deleted while a scan runs.

use std::collections::BTreeMap;

use kv_engine::backend::sim::{Fault, SimBackend};
use kv_engine::{
    choose_scan_keys, merge_scan, open_workers_with, Completion, Durability, EngineConfig, Error,
    Op, Reply, SimDisk, Worker,
};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn config(workers: usize, cache_bytes: usize) -> EngineConfig {
    EngineConfig {
        workers,
        cache_bytes,
        queue_depth: 16,
        durability: Durability::Page,
        ..EngineConfig::default()
    }
}

fn drive(workers: &mut [Worker<SimBackend>], done: &mut Vec<Completion>, want: usize) {
    let mut idle = 0;
    while done.len() < want {
        let before = done.len();
        for w in workers.iter_mut() {
            w.poll(done);
        }
        if done.len() == before {
            idle += 1;
            assert!(idle < 10_000, "no progress");
            for w in workers.iter_mut() {
                w.wait().expect("wait");
            }
        } else {
            idle = 0;
        }
    }
}

/// Loads `n` items of 900 bytes (four to a 4 KiB block) in a scattered order.
fn load(workers: &mut [Worker<SimBackend>], n: u32) -> Model {
    let router = kv_engine::KeyRouter::new(workers.len());
    let mut model = Model::new();
    let mut done = Vec::new();
    for i in 0..n {
        let id = i * 7919 % n;
        let key = format!("key{id:05}").into_bytes();
        let value = vec![(id % 251) as u8; 900];
        model.insert(key.clone(), value.clone());
        workers[router.partition_of(&key)].submit(Op::Put { key, value }, u64::from(i));
        if i % 32 == 31 {
            drive(workers, &mut done, 32);
            done.clear();
        }
    }
    let rest = (n % 32) as usize;
    drive(workers, &mut done, rest);
    assert!(done.iter().all(|c| matches!(c.result, Ok(Reply::Written))));
    model
}

fn expected(model: &Model, start: &[u8], max: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    model
        .range(start.to_vec()..)
        .take(max)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Submits the two-phase scan with `tag` to every worker that has keys for it; returns how
/// many completions it will produce.
fn submit_scan(workers: &mut [Worker<SimBackend>], start: &[u8], max: usize, tag: u64) -> usize {
    let mut keys: Vec<Vec<Vec<u8>>> = workers.iter().map(|w| w.scan_keys(start, max)).collect();
    choose_scan_keys(&mut keys, max);
    let mut parts = 0;
    for (w, k) in workers.iter_mut().zip(keys) {
        w.submit_scan_of(k, tag);
        parts += 1;
    }
    parts
}

fn items(c: &Completion) -> Vec<(Vec<u8>, Vec<u8>)> {
    match &c.result {
        Ok(Reply::Items(items)) => items.clone(),
        other => panic!("scan failed: {other:?}"),
    }
}

fn sum(workers: &[Worker<SimBackend>], f: fn(&kv_engine::WorkerStats) -> u64) -> u64 {
    workers.iter().map(|w| f(&w.stats())).sum()
}

const SCANS: [(&[u8], usize); 7] = [
    (b"", 1),
    (b"key00100", 50),
    (b"key00333", 99),
    (b"key0", 17),
    (b"key00999", 10),
    (b"kez", 5),
    (b"key00500", 1),
];

#[test]
fn scans_answer_like_the_model_and_read_no_more_than_their_uncached_items() {
    for seed in testkit::seeds(&[1, 2, 3]) {
        let disk = SimDisk::new(seed);
        // Room for one scan's blocks (99 items, 25 blocks per worker at most).
        let cfg = config(2, 2 * (128 << 10));
        let mut workers = open_workers_with(&disk, &cfg).expect("open").workers;
        let model = load(&mut workers, 1000);
        for (start, max) in SCANS {
            let (reads, uncached, returned) = (
                sum(&workers, |s| s.reads),
                sum(&workers, |s| s.scan_items_uncached),
                sum(&workers, |s| s.scan_items),
            );
            let parts = submit_scan(&mut workers, start, max, 7);
            let mut done = Vec::new();
            drive(&mut workers, &mut done, parts);
            let got = merge_scan(done.iter().map(items).collect(), max);
            let want = expected(&model, start, max);
            assert_eq!(got, want, "seed {seed}: scan {start:?} {max}");
            let reads = sum(&workers, |s| s.reads) - reads;
            let uncached = sum(&workers, |s| s.scan_items_uncached) - uncached;
            assert_eq!(
                sum(&workers, |s| s.scan_items) - returned,
                want.len() as u64
            );
            assert!(uncached <= want.len() as u64);
            assert!(
                reads <= uncached,
                "seed {seed}: scan {start:?} {max}: {reads} reads for {uncached} uncached items"
            );
        }
        // The same scan twice in a row: the second finds every block cached, reads nothing.
        for round in 0..2 {
            let before = sum(&workers, |s| s.reads);
            let parts = submit_scan(&mut workers, b"key00333", 20, 8);
            let mut done = Vec::new();
            drive(&mut workers, &mut done, parts);
            let read = sum(&workers, |s| s.reads) - before;
            assert!(
                round == 0 || read == 0,
                "seed {seed}: the repeated scan read {read}"
            );
        }
    }
}

/// Many scans and gets in flight at once on a cache of a few blocks: blocks loaded for a scan
/// are evicted before it runs again, and it reads them again — the answers stay right.
#[test]
fn concurrent_scans_on_a_tiny_cache_answer_like_the_model() {
    for seed in testkit::seeds(&[4, 5]) {
        let disk = SimDisk::new(seed);
        disk.set_completion_chance(0.5);
        let cfg = config(2, 2 * (16 << 10));
        let mut workers = open_workers_with(&disk, &cfg).expect("open").workers;
        let model = load(&mut workers, 600);
        let mut parts = 0;
        let mut done = Vec::new();
        // Staggered: each scan starts while the earlier ones wait for their reads, so its
        // misses evict blocks loaded for them before they run again.
        for (tag, (start, max)) in SCANS.iter().enumerate() {
            parts += submit_scan(&mut workers, start, *max, tag as u64);
            for w in workers.iter_mut() {
                w.poll(&mut done);
            }
        }
        // The one-phase per-worker scan (the server's) in the same mix.
        for w in workers.iter_mut() {
            w.submit(
                Op::Scan {
                    start: b"key00200".to_vec(),
                    max: 30,
                },
                100,
            );
            parts += 1;
        }
        drive(&mut workers, &mut done, parts);
        for (tag, (start, max)) in SCANS.iter().enumerate() {
            let got = merge_scan(
                done.iter()
                    .filter(|c| c.tag == tag as u64)
                    .map(items)
                    .collect(),
                *max,
            );
            assert_eq!(got, expected(&model, start, *max), "seed {seed}: {start:?}");
        }
        let got = merge_scan(
            done.iter().filter(|c| c.tag == 100).map(items).collect(),
            30,
        );
        assert_eq!(got, expected(&model, b"key00200", 30));
        let pending: Vec<usize> = workers.iter().map(Worker::pending).collect();
        assert_eq!(
            pending,
            vec![0, 0],
            "seed {seed}: {} completions",
            done.len()
        );
    }
}

#[test]
fn a_read_error_fails_the_scan_and_the_next_scan_works() {
    let disk = SimDisk::new(9);
    let cfg = config(1, 16 << 10);
    let mut workers = open_workers_with(&disk, &cfg).expect("open").workers;
    let model = load(&mut workers, 300);
    disk.fail_read(3, Fault::Eio);
    let parts = submit_scan(&mut workers, b"key00010", 40, 1);
    let mut done = Vec::new();
    drive(&mut workers, &mut done, parts);
    assert!(
        matches!(done[0].result, Err(Error::Io { .. })),
        "{:?}",
        done[0].result
    );
    assert_eq!(workers[0].pending(), 0);
    done.clear();
    let parts = submit_scan(&mut workers, b"key00010", 40, 2);
    drive(&mut workers, &mut done, parts);
    assert_eq!(items(&done[0]), expected(&model, b"key00010", 40));
}

#[test]
fn keys_deleted_while_a_scan_runs_are_left_out_and_the_rest_is_returned() {
    let disk = SimDisk::new(10);
    let cfg = config(1, 16 << 10);
    let mut workers = open_workers_with(&disk, &cfg).expect("open").workers;
    let mut model = load(&mut workers, 300);
    let keys = workers[0].scan_keys(b"key00100", 30);
    assert_eq!(keys.len(), 30);
    let victim = keys[5].clone();
    workers[0].submit_scan_of(keys, 1);
    workers[0].submit(
        Op::Delete {
            key: victim.clone(),
        },
        2,
    );
    let mut done = Vec::new();
    drive(&mut workers, &mut done, 2);
    let scan = done.iter().find(|c| c.tag == 1).expect("scan done");
    let got = items(scan);
    let with = expected(&model, b"key00100", 30);
    model.remove(&victim);
    let without: Vec<_> = with.iter().filter(|(k, _)| k != &victim).cloned().collect();
    assert!(got == with || got == without, "{} items", got.len());
    // Keys too long for the engine are refused, not looked up.
    workers[0].submit_scan_of(vec![vec![b'k'; kv_engine::MAX_KEY_LEN + 1]], 3);
    done.clear();
    drive(&mut workers, &mut done, 1);
    assert!(matches!(done[0].result, Err(Error::KeyTooLarge { .. })));
}
