//! Property test: random puts, gets, deletes and scans with random key and value sizes
//! (including class changes and large classes) against a `BTreeMap` model, closing and
//! reopening the engine at random points.
use std::collections::BTreeMap;

use std::time::Duration;

use kv_engine::{Durability, Engine, EngineConfig, IoMode};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Action {
    Put(Vec<u8>, usize, u8),
    Get(Vec<u8>),
    Delete(Vec<u8>),
    Scan(Vec<u8>, usize),
    Reopen,
}

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A small alphabet and short keys so that operations hit the same keys often; some
    // keys share long prefixes (KVell's 8-byte-prefix index would abort on them).
    prop_oneof![
        prop::collection::vec(prop::sample::select(vec![b'a', b'b', b'c']), 0..4),
        prop::collection::vec(prop::sample::select(vec![b'x', b'y']), 9..11),
    ]
}

fn value_len() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => 0usize..120,       // classes 100 / 128 / 256
        3 => 300usize..1400,    // 400 .. 1365
        2 => 1900usize..4100,   // 2048 / 4096 / 8K
        1 => 8000usize..40_000, // large classes
    ]
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        8 => (key(), value_len(), any::<u8>()).prop_map(|(k, l, b)| Action::Put(k, l, b)),
        5 => key().prop_map(Action::Get),
        3 => key().prop_map(Action::Delete),
        2 => (key(), 0usize..12).prop_map(|(k, n)| Action::Scan(k, n)),
        1 => Just(Action::Reopen),
    ]
}

fn config(workers: usize, io: IoMode, durability: Durability) -> EngineConfig {
    EngineConfig {
        workers,
        // Tiny cache: most operations need real I/O and evictions happen (and, in the staged
        // modes, dirty blocks are written back all the time).
        cache_bytes: workers * 48 * 1024,
        io,
        durability,
        // A small staging area: it wraps, and records up to 256 KiB fit.
        stage_bytes: 1 << 20,
        ..EngineConfig::default()
    }
}

fn durability() -> impl Strategy<Value = Durability> {
    prop::sample::select(vec![
        Durability::Page,
        Durability::Periodic {
            interval: Duration::from_millis(5),
        },
        Durability::Sync,
    ])
}

proptest! {
    #![proptest_config(testkit::proptest_config(40, "proptest-regressions/engine_model.txt"))]

    #[test]
    fn engine_matches_btreemap(
        workers in 1usize..4,
        // Both block I/O backends of a real disk: io_uring, and the pread/pwrite fallback.
        io in prop::sample::select(vec![IoMode::Auto, IoMode::Sync]),
        mode in durability(),
        actions in prop::collection::vec(action(), 1..80),
    ) {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("temp dir");
        let mut engine = Engine::open(dir.path(), config(workers, io, mode)).expect("open");
        let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for a in actions {
            match a {
                Action::Put(k, len, b) => {
                    let v: Vec<u8> = (0..len).map(|i| b.wrapping_add(i as u8)).collect();
                    engine.put(&k, &v).expect("put");
                    model.insert(k, v);
                }
                Action::Get(k) => {
                    prop_assert_eq!(engine.get(&k).expect("get"), model.get(&k).cloned());
                }
                Action::Delete(k) => {
                    prop_assert_eq!(engine.delete(&k).expect("delete"), model.remove(&k).is_some());
                }
                Action::Scan(start, max) => {
                    let expected: Vec<(Vec<u8>, Vec<u8>)> = model
                        .range(start.clone()..)
                        .take(max)
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    prop_assert_eq!(engine.scan(&start, max).expect("scan"), expected);
                }
                Action::Reopen => {
                    engine.close();
                    engine = Engine::open(dir.path(), config(workers, io, mode)).expect("reopen");
                    let rec = engine.recovery_stats();
                    prop_assert_eq!(rec.live as usize, model.len());
                    prop_assert_eq!(rec.corrupt, 0);
                    prop_assert_eq!(rec.duplicates, 0);
                }
            }
        }
        // Final full comparison, after one more reopen.
        engine.close();
        let engine = Engine::open(dir.path(), config(workers, io, mode)).expect("reopen");
        let all: Vec<(Vec<u8>, Vec<u8>)> = model.into_iter().collect();
        prop_assert_eq!(engine.scan(b"", usize::MAX).expect("scan"), all);
    }
}
