//! `Worker::get_cached`, the GET answered in place: the same answer a submitted get gives,
//! or `Miss` whenever that answer would need I/O or a write of the key is in progress.

use kv_engine::backend::sim::SimBackend;
use kv_engine::{
    open_workers_with, CachedGet, Durability, EngineConfig, Op, Reply, SimDisk, Worker,
};

fn run(w: &mut Worker<SimBackend>, op: Op) -> Reply {
    w.submit(op, 0);
    let mut done = Vec::new();
    while done.is_empty() {
        w.poll(&mut done);
        if done.is_empty() {
            w.wait().expect("wait");
        }
    }
    done.pop().expect("done").result.expect("ok")
}

#[test]
fn cached_gets_answer_like_submitted_gets_and_miss_when_they_would_wait() {
    let disk = SimDisk::new(3);
    let cfg = EngineConfig {
        workers: 1,
        // Two 4 KiB blocks: most of the 100 items' blocks are not cached.
        cache_bytes: 8 << 10,
        queue_depth: 8,
        durability: Durability::Page,
        ..EngineConfig::default()
    };
    let mut w = open_workers_with(&disk, &cfg)
        .expect("open")
        .workers
        .remove(0);
    for i in 0..100u32 {
        let key = format!("k{i:03}").into_bytes();
        let value = vec![i as u8; 900];
        assert_eq!(run(&mut w, Op::Put { key, value }), Reply::Written);
    }
    assert_eq!(w.get_cached(b"nope"), CachedGet::NotFound);
    let mut hits = 0;
    let mut misses = 0;
    for i in 0..100u32 {
        let key = format!("k{i:03}").into_bytes();
        match w.get_cached(&key) {
            CachedGet::Value(v) => {
                assert_eq!(v, &vec![i as u8; 900][..]);
                hits += 1;
            }
            CachedGet::Miss => {
                misses += 1;
                // The submitted get reads the block; then it is cached.
                assert_eq!(
                    run(&mut w, Op::Get { key: key.clone() }),
                    Reply::Value(vec![i as u8; 900])
                );
                assert_eq!(
                    w.get_cached(&key),
                    CachedGet::Value(&vec![i as u8; 900][..])
                );
            }
            CachedGet::NotFound => panic!("k{i:03} exists"),
        }
    }
    assert!(hits > 0 && misses > 0, "{hits} hits, {misses} misses");
    // A write of the key in progress: the get must wait for it, so no answer in place.
    w.submit(
        Op::Put {
            key: b"k050".to_vec(),
            value: vec![0xAB; 900],
        },
        9,
    );
    assert_eq!(w.get_cached(b"k050"), CachedGet::Miss);
    let mut done = Vec::new();
    while done.is_empty() {
        w.poll(&mut done);
        if done.is_empty() {
            w.wait().expect("wait");
        }
    }
    assert_eq!(w.get_cached(b"k050"), CachedGet::Value(&[0xAB; 900][..]));
    // Too long a key is left to the submitted get, which reports the error.
    assert_eq!(
        w.get_cached(&vec![b'k'; kv_engine::MAX_KEY_LEN + 1]),
        CachedGet::Miss
    );
}
