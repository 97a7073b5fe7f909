//! Slabs, free lists, recovery and the page cache: slot reuse, geometric file growth,
//! class-changing updates (and a crash between their two writes), corrupt and torn records,
//! scans across workers, coalesced writes and shared misses.
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;

use std::time::Duration;

use kv_engine::{open_workers, slab, Durability, Engine, EngineConfig, Op, Reply};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir")
}

/// Page mode: these tests read and damage slab files right after a close, and page mode has
/// written every change in place by then (the staged modes keep changes in the staging area
/// and repair damaged slots from it: `staged_modes_repair_torn_slots_from_the_staging_area`).
fn one_worker() -> EngineConfig {
    EngineConfig {
        workers: 1,
        cache_bytes: 256 << 10,
        durability: Durability::Page,
        ..EngineConfig::default()
    }
}

fn file_len(dir: &Path, class_size: u32) -> u64 {
    let class = slab::CLASSES
        .iter()
        .position(|&c| c == class_size)
        .expect("class") as u8;
    std::fs::metadata(dir.join(slab::file_name(0, class)))
        .map(|m| m.len())
        .unwrap_or(0)
}

#[test]
fn delete_insert_churn_reuses_slots() {
    let dir = tempdir();
    let engine = Engine::open(dir.path(), one_worker()).expect("open");
    for i in 0..1000u32 {
        engine
            .put(format!("k{i:06}").as_bytes(), &[1u8; 900])
            .expect("put");
    }
    let len_before = file_len(dir.path(), 1024);
    assert!(len_before >= 1000 * 1024);
    let mut next = 1000u32;
    for round in 0..10u32 {
        // Delete 300 live keys, insert 300 new ones.
        for i in 0..300u32 {
            let victim = next - 1000 + i;
            assert!(engine
                .delete(format!("k{victim:06}").as_bytes())
                .expect("delete"));
        }
        let free = engine.stats().expect("stats")[0].free_slots;
        assert_eq!(free, 300, "round {round}: deleted slots are free");
        for _ in 0..300u32 {
            engine
                .put(format!("k{next:06}").as_bytes(), &[2u8; 900])
                .expect("put");
            next += 1;
        }
        assert_eq!(engine.stats().expect("stats")[0].free_slots, 0);
    }
    assert_eq!(
        file_len(dir.path(), 1024),
        len_before,
        "churn did not grow the file"
    );
    let s = engine.stats().expect("stats")[0];
    assert_eq!(s.items, 1000);
    engine.close();
    // Free slots are found again by recovery.
    let engine = Engine::open(dir.path(), one_worker()).expect("reopen");
    for i in 0..5u32 {
        let k = format!("k{:06}", next - 1 - i);
        assert!(engine.delete(k.as_bytes()).expect("delete"));
    }
    engine.close();
    let engine = Engine::open(dir.path(), one_worker()).expect("reopen");
    assert_eq!(engine.stats().expect("stats")[0].free_slots, 5);
    for i in 0..5u32 {
        engine
            .put(format!("again{i}").as_bytes(), &[3u8; 900])
            .expect("put");
    }
    assert_eq!(file_len(dir.path(), 1024), len_before);
}

#[test]
fn files_grow_geometrically() {
    let dir = tempdir();
    let engine = Engine::open(dir.path(), one_worker()).expect("open");
    let mut sizes = Vec::new();
    for i in 0..5000u32 {
        engine
            .put(format!("k{i:06}").as_bytes(), &[1u8; 50])
            .expect("put");
        let len = file_len(dir.path(), 100);
        if sizes.last() != Some(&len) {
            sizes.push(len);
        }
    }
    // 5000 items of the 100-byte class = 40 items per page = 125 pages = 500 KiB.
    assert_eq!(sizes, vec![256 << 10, 512 << 10], "doubling from 256 KiB");
    for i in 5000..12_000u32 {
        engine
            .put(format!("k{i:06}").as_bytes(), &[1u8; 50])
            .expect("put");
    }
    assert_eq!(file_len(dir.path(), 100), 2 << 20, "then 1 MiB, then 2 MiB");
}

#[test]
fn class_changes_keep_exactly_one_copy() {
    let dir = tempdir();
    let engine = Engine::open(dir.path(), one_worker()).expect("open");
    let sizes = [10usize, 5000, 300, 100_000, 0, 2000, 20];
    for (round, &n) in sizes.iter().enumerate() {
        for k in 0..20u8 {
            engine.put(&[b'k', k], &vec![round as u8; n]).expect("put");
        }
    }
    engine.close();
    let engine = Engine::open(dir.path(), one_worker()).expect("reopen");
    let rec = engine.recovery_stats();
    assert_eq!((rec.live, rec.duplicates, rec.corrupt), (20, 0, 0));
    for k in 0..20u8 {
        assert_eq!(engine.get(&[b'k', k]).expect("get"), Some(vec![6u8; 20]));
    }
}

/// A crash between writing the new copy of a moved item and tombstoning the old one leaves
/// two live copies; recovery keeps the newer and tombstones the older, so a later delete is
/// final.
#[test]
fn interrupted_move_recovers_to_the_newer_copy() {
    let dir = tempdir();
    let engine = Engine::open(dir.path(), one_worker()).expect("open");
    engine.put(b"moved", &[1u8; 900]).expect("put"); // class 1024
    engine.put(b"other", &[9u8; 900]).expect("put");
    engine.close();
    let small = dir.path().join(slab::file_name(0, 5));
    let saved = std::fs::read(&small).expect("read slab");
    let engine = Engine::open(dir.path(), one_worker()).expect("open");
    engine.put(b"moved", &[2u8; 3000]).expect("put"); // class 4096: new copy, then tombstone
    engine.close();
    // Undo the tombstone: as if the process died between the two writes.
    std::fs::write(&small, &saved).expect("restore slab");
    let engine = Engine::open(dir.path(), one_worker()).expect("reopen");
    let rec = engine.recovery_stats();
    assert_eq!(rec.duplicates, 1);
    assert_eq!(rec.live, 2);
    assert_eq!(engine.get(b"moved").expect("get"), Some(vec![2u8; 3000]));
    assert_eq!(engine.get(b"other").expect("get"), Some(vec![9u8; 900]));
    assert!(engine.delete(b"moved").expect("delete"));
    engine.close();
    let engine = Engine::open(dir.path(), one_worker()).expect("reopen");
    assert_eq!(
        engine.recovery_stats().duplicates,
        0,
        "the loser was tombstoned"
    );
    assert_eq!(
        engine.get(b"moved").expect("get"),
        None,
        "deleted stays deleted"
    );
    // The loser's slot was freed and is reused.
    let len = file_len(dir.path(), 1024);
    engine.put(b"reuse", &[3u8; 900]).expect("put");
    assert_eq!(file_len(dir.path(), 1024), len);
}

fn corrupt_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open slab");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read");
    b[0] ^= 0x40;
    f.write_all_at(&b, offset).expect("write");
}

#[test]
fn corrupt_and_torn_records_are_detected_and_never_returned() {
    let dir = tempdir();
    let engine = Engine::open(dir.path(), one_worker()).expect("open");
    for i in 0..12u32 {
        engine
            .put(format!("item{i:02}").as_bytes(), &[i as u8; 900])
            .expect("put");
    }
    for i in 0..3u32 {
        engine
            .put(format!("large{i}").as_bytes(), &[0xEE; 15_000])
            .expect("put"); // 16 KiB class
    }
    engine.close();
    let slab_1k = dir.path().join(slab::file_name(0, 5));
    let slab_16k = dir.path().join(slab::file_name(0, 11));
    // Which keys sit in slots 3 and 5 (records start with a 20-byte header, then the key).
    let read_key = |slot: u64| {
        let f = std::fs::File::open(&slab_1k).expect("open");
        let mut k = [0u8; 6];
        f.read_exact_at(&mut k, slot * 1024 + 20).expect("read key");
        k.to_vec()
    };
    let (k3, k5) = (read_key(3), read_key(5));
    // Bit flip inside slot 3's value.
    corrupt_byte(&slab_1k, 3 * 1024 + 500);
    // A torn write: slot 5's record loses its last 200 bytes.
    {
        let f = OpenOptions::new().write(true).open(&slab_1k).expect("open");
        f.write_all_at(&[0u8; 200], 5 * 1024 + 700).expect("tear");
    }
    // A torn multi-page write of a large record: its second 4 KiB page is stale (zeros).
    {
        let f = OpenOptions::new()
            .write(true)
            .open(&slab_16k)
            .expect("open");
        f.write_all_at(&[0u8; 4096], 16384 + 4096)
            .expect("tear large");
    }
    let engine = Engine::open(dir.path(), one_worker()).expect("reopen");
    let rec = engine.recovery_stats();
    assert_eq!(rec.corrupt, 3, "{rec:?}");
    assert_eq!(rec.live, 12);
    assert_eq!(
        engine.get(&k3).expect("get"),
        None,
        "corrupt record not returned"
    );
    assert_eq!(
        engine.get(&k5).expect("get"),
        None,
        "torn record not returned"
    );
    let mut intact = 0;
    for i in 0..12u32 {
        if let Some(v) = engine.get(format!("item{i:02}").as_bytes()).expect("get") {
            assert_eq!(v, vec![i as u8; 900]);
            intact += 1;
        }
    }
    assert_eq!(intact, 10);
    let large: Vec<_> = (0..3)
        .filter_map(|i| engine.get(format!("large{i}").as_bytes()).expect("get"))
        .collect();
    assert_eq!(large.len(), 2);
    assert!(large.iter().all(|v| v == &vec![0xEE; 15_000]));
    // The corrupt slots are free: new inserts reuse them instead of growing the file.
    let free = engine.stats().expect("stats")[0].free_slots;
    assert_eq!(free, 3);
}

#[test]
fn scans_merge_all_workers_in_lexicographic_order() {
    let dir = tempdir();
    let config = EngineConfig {
        workers: 4,
        cache_bytes: 1 << 20,
        ..EngineConfig::default()
    };
    let engine = Engine::open(dir.path(), config).expect("open");
    let mut model = BTreeMap::new();
    for i in 0..400u32 {
        // Variable-length keys, so lexicographic order differs from numeric order.
        let k = format!("{}", i * 7919 % 1000).into_bytes();
        let v = format!("v{i}").into_bytes();
        engine.put(&k, &v).expect("put");
        model.insert(k, v);
    }
    let per_worker: Vec<u64> = engine
        .stats()
        .expect("stats")
        .iter()
        .map(|s| s.items)
        .collect();
    assert!(
        per_worker.iter().all(|&n| n > 50),
        "keys spread over workers: {per_worker:?}"
    );
    for (start, max) in [
        (&b""[..], 1000usize),
        (b"5", 17),
        (b"99", 3),
        (b"999", 10),
        (b"a", 5),
    ] {
        let expected: Vec<_> = model
            .range(start.to_vec()..)
            .take(max)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(engine.scan(start, max).expect("scan"), expected);
    }
}

/// Many operations in flight on one worker: puts to one page coalesce into few writes,
/// concurrent misses on one page cause one read, and every completion carries its tag.
#[test]
fn in_flight_operations_share_page_io() {
    let dir = tempdir();
    let config = EngineConfig {
        workers: 1,
        cache_bytes: 64 << 10,
        durability: Durability::Page,
        ..EngineConfig::default()
    };
    let mut opened = open_workers(dir.path(), &config).expect("open");
    let w = &mut opened.workers[0];
    // 40 items of the 100-byte class fit one page: submit them in one batch.
    for i in 0..40u64 {
        w.submit(
            Op::Put {
                key: format!("p{i:02}").into_bytes(),
                value: vec![i as u8; 50],
            },
            i,
        );
    }
    let mut out = Vec::new();
    while out.len() < 40 {
        w.poll(&mut out);
        if out.len() < 40 {
            w.wait().expect("wait");
        }
    }
    assert!(out.iter().all(|c| matches!(c.result, Ok(Reply::Written))));
    let mut tags: Vec<u64> = out.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..40).collect::<Vec<_>>());
    let s = w.stats();
    assert_eq!(
        s.writes, 1,
        "40 puts to one fresh page coalesce into one write"
    );
    assert_eq!(s.reads, 0, "a fresh page needs no read");
    drop(opened);

    // Reopen (cold cache) and read all 40 at once: one read.
    let mut opened = open_workers(dir.path(), &config).expect("reopen");
    let w = &mut opened.workers[0];
    for i in 0..40u64 {
        w.submit(
            Op::Get {
                key: format!("p{i:02}").into_bytes(),
            },
            100 + i,
        );
    }
    let mut out = Vec::new();
    while out.len() < 40 {
        w.poll(&mut out);
        if out.len() < 40 {
            w.wait().expect("wait");
        }
    }
    for c in &out {
        let i = c.tag - 100;
        assert_eq!(
            c.result.as_ref().ok(),
            Some(&Reply::Value(vec![i as u8; 50]))
        );
    }
    assert_eq!(
        w.stats().reads,
        1,
        "concurrent misses on one page share one read"
    );

    // Overwrites of every item while a write is in flight: all acknowledged, last wins.
    for round in 0..3u8 {
        for i in 0..40u64 {
            w.submit(
                Op::Put {
                    key: format!("p{i:02}").into_bytes(),
                    value: vec![round; 60],
                },
                1000 + i,
            );
        }
        w.poll(&mut Vec::new());
    }
    let mut out = Vec::new();
    while w.pending() > 0 {
        w.poll(&mut out);
        w.wait().expect("wait");
    }
    assert!(out.iter().all(|c| c.result.is_ok()));
    w.submit(
        Op::Get {
            key: b"p07".to_vec(),
        },
        1,
    );
    let mut out = Vec::new();
    w.poll(&mut out);
    assert_eq!(
        out[0].result.as_ref().ok(),
        Some(&Reply::Value(vec![2u8; 60]))
    );
}

#[test]
fn a_filtered_scan_reads_only_the_keys_it_keeps() {
    let dir = tempdir();
    let mut opened = open_workers(dir.path(), &one_worker()).expect("open");
    let w = &mut opened.workers[0];
    let mut done = Vec::new();
    let run = |w: &mut kv_engine::Worker, done: &mut Vec<kv_engine::Completion>, n: usize| {
        while done.len() < n {
            w.poll(done);
            if done.len() < n {
                w.wait().expect("wait");
            }
        }
    };
    for i in 0..60u32 {
        let op = Op::Put {
            key: format!("k{i:03}").into_bytes(),
            value: format!("v{i}").into_bytes(),
        };
        w.submit(op, u64::from(i));
    }
    run(w, &mut done, 60);
    done.clear();
    // Keep the keys whose number is a multiple of 3: "k000", "k003", ...
    let keep = |k: &[u8]| {
        std::str::from_utf8(&k[1..])
            .ok()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|n| n % 3 == 0)
    };
    let keys = w.keys_where(b"k010", 4, &keep);
    let keys: Vec<&[u8]> = keys.iter().map(|k| &k[..]).collect();
    assert_eq!(keys, [&b"k012"[..], b"k015", b"k018", b"k021"]);
    let reads_before = w.stats().reads + w.stats().cache_hits;
    w.submit_scan_where(b"k050", 100, &keep, 99);
    run(w, &mut done, 1);
    let c = done.pop().expect("done");
    assert_eq!(c.tag, 99);
    let Ok(Reply::Items(items)) = c.result else {
        panic!("scan: {:?}", c.result);
    };
    let got: Vec<(String, String)> = items
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k).unwrap(), String::from_utf8(v).unwrap()))
        .collect();
    let want: Vec<(String, String)> = [51u32, 54, 57]
        .iter()
        .map(|i| (format!("k{i:03}"), format!("v{i}")))
        .collect();
    assert_eq!(got, want);
    // Three gets, no more: the other keys' values were never looked at.
    assert_eq!(w.stats().reads + w.stats().cache_hits - reads_before, 3);
}

/// Staged modes: the puts of one poll go to the staging area as one chunk (one write), are
/// acknowledged by it (periodic: in the same poll), and their page is written back later, once.
#[test]
fn staged_puts_of_one_poll_share_one_staging_write_and_one_page_write() {
    for mode in [
        Durability::Periodic {
            interval: Duration::from_millis(1),
        },
        Durability::Sync,
    ] {
        let dir = tempdir();
        let config = EngineConfig {
            workers: 1,
            cache_bytes: 64 << 10,
            durability: mode,
            stage_bytes: 1 << 20,
            ..EngineConfig::default()
        };
        let mut opened = open_workers(dir.path(), &config).expect("open");
        let w = &mut opened.workers[0];
        for i in 0..40u64 {
            w.submit(
                Op::Put {
                    key: format!("p{i:02}").into_bytes(),
                    value: vec![i as u8; 50],
                },
                i,
            );
        }
        let mut out = Vec::new();
        w.poll(&mut out);
        if matches!(mode, Durability::Periodic { .. }) {
            assert_eq!(
                out.len(),
                40,
                "{mode}: acknowledged in the poll that staged them"
            );
        }
        while out.len() < 40 {
            w.wait().expect("wait");
            w.poll(&mut out);
        }
        assert!(out.iter().all(|c| matches!(c.result, Ok(Reply::Written))));
        let s = w.stats();
        assert_eq!((s.staged_records, s.stage_chunks), (40, 1), "{mode}");
        assert_eq!(s.writes, 0, "{mode}: no page written yet");
        assert_eq!(s.dirty_blocks, 1, "{mode}");
        drop(opened);
        // Recovery applies the staged records; the page is written once.
        let engine = Engine::open(dir.path(), config.clone()).expect("reopen");
        let rec = engine.recovery_stats();
        assert_eq!(
            (rec.live, rec.staged, rec.staged_applied),
            (40, 40, 40),
            "{mode}"
        );
        for i in 0..40u64 {
            assert_eq!(
                engine.get(format!("p{i:02}").as_bytes()).expect("get"),
                Some(vec![i as u8; 50])
            );
        }
    }
}

/// Staged modes: a slot that is damaged on disk (a torn page write) while its record is still
/// in the staging area is repaired at recovery, not lost.
#[test]
fn staged_modes_repair_torn_slots_from_the_staging_area() {
    let dir = tempdir();
    let config = EngineConfig {
        durability: Durability::Sync,
        stage_bytes: 1 << 20,
        ..one_worker()
    };
    let engine = Engine::open(dir.path(), config.clone()).expect("open");
    for i in 0..12u32 {
        engine
            .put(format!("item{i:02}").as_bytes(), &[i as u8; 900])
            .expect("put");
    }
    engine.close();
    // Recovery wrote the staged records into the slab; stage them once more, then tear.
    let engine = Engine::open(dir.path(), config.clone()).expect("reopen");
    for i in 0..12u32 {
        engine
            .put(format!("item{i:02}").as_bytes(), &[100 + i as u8; 900])
            .expect("put");
    }
    engine.close();
    let slab_1k = dir.path().join(slab::file_name(0, 5));
    corrupt_byte(&slab_1k, 3 * 1024 + 500);
    {
        let f = OpenOptions::new().write(true).open(&slab_1k).expect("open");
        f.write_all_at(&[0u8; 200], 5 * 1024 + 700).expect("tear");
    }
    let engine = Engine::open(dir.path(), config).expect("reopen");
    let rec = engine.recovery_stats();
    assert_eq!((rec.live, rec.corrupt), (12, 0), "{rec:?}");
    for i in 0..12u32 {
        assert_eq!(
            engine.get(format!("item{i:02}").as_bytes()).expect("get"),
            Some(vec![100 + i as u8; 900])
        );
    }
}
