//! Background reorganisation (docs/STORAGE.md, Reorganisation) on the simulated disk: it
//! puts neighbouring keys onto shared blocks, so a cold scan reads far fewer blocks; it loses
//! and resurrects nothing when a process crash or a power cut hits in the middle of it; and a
//! client write that arrives while its key is being moved wins.

use std::collections::BTreeMap;

use kv_engine::backend::sim::SimBackend;
use kv_engine::{
    open_workers_with, Completion, Durability, EngineConfig, Op, OpenedWorkers, Reply, SimDisk,
    Worker,
};

const TICK_NS: u64 = 10_000;
const INTERVAL: std::time::Duration = std::time::Duration::from_micros(300);
/// 8-byte keys, 992-byte values: class 1024, 4 items per block (the YCSB items).
const VALUE: usize = 992;
const ITEMS: usize = 320;

fn config(durability: Durability, reorg_batch: usize) -> EngineConfig {
    EngineConfig {
        workers: 1,
        cache_bytes: 256 << 10,
        queue_depth: 16,
        durability,
        stage_bytes: 1 << 20,
        reorg_batch,
        ..EngineConfig::default()
    }
}

fn open(disk: &SimDisk, cfg: &EngineConfig) -> OpenedWorkers<SimBackend> {
    open_workers_with(disk, cfg).expect("open on the simulated disk")
}

struct Clock(u64);

impl Clock {
    fn poll(&mut self, w: &mut Worker<SimBackend>, done: &mut Vec<Completion>) -> usize {
        self.0 += TICK_NS;
        w.poll_at(self.0, done)
    }

    /// Polls until `want` completions are in `done`.
    fn drive(&mut self, w: &mut Worker<SimBackend>, done: &mut Vec<Completion>, want: usize) {
        let mut idle = 0;
        while done.len() < want {
            if self.poll(w, done) == 0 {
                idle += 1;
                assert!(idle < 100_000, "no progress");
                w.wait().expect("wait");
            }
        }
    }

    fn run(&mut self, w: &mut Worker<SimBackend>, op: Op) -> Reply {
        w.submit(op, 0);
        let mut done = Vec::new();
        self.drive(w, &mut done, 1);
        done.pop().expect("one").result.expect("operation")
    }

    /// Polls an idle worker until its reorganisation has finished a pass and rests.
    fn settle(&mut self, w: &mut Worker<SimBackend>) {
        let mut done = Vec::new();
        let mut rounds = 0u64;
        while w.reorg_busy() || w.stats().reorg_passes == 0 {
            self.poll(w, &mut done);
            w.wait().expect("wait");
            rounds += 1;
            assert!(rounds < 2_000_000, "reorganisation never settles");
        }
        assert!(
            done.is_empty(),
            "reorganisation answered something: {done:?}"
        );
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i:07}").into_bytes()
}

fn value(i: usize, version: u64) -> Vec<u8> {
    let mut v = format!("{i}:{version}:").into_bytes();
    v.resize(VALUE, b'.');
    v
}

/// A shuffled load (xorshift, fixed seed), so that neighbours are scattered.
fn shuffled(seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..ITEMS).collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

fn load(clock: &mut Clock, w: &mut Worker<SimBackend>, seed: u64) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut model = BTreeMap::new();
    for i in shuffled(seed) {
        assert_eq!(
            clock.run(
                w,
                Op::Put {
                    key: key(i),
                    value: value(i, 0)
                }
            ),
            Reply::Written
        );
        model.insert(key(i), value(i, 0));
    }
    model
}

/// Blocks read by a scan of `n` items from `start` on a cold cache (a fresh open); how
/// many requests carried them is `tests/coalesce.rs`'s concern.
fn cold_scan_reads(disk: &SimDisk, cfg: &EngineConfig, start: usize, n: usize) -> u64 {
    let mut opened = open(disk, cfg);
    let w = &mut opened.workers[0];
    w.set_reorg_batch(0);
    let mut clock = Clock(0);
    let before = w.stats().blocks_read;
    match clock.run(
        w,
        Op::Scan {
            start: key(start),
            max: n,
        },
    ) {
        Reply::Items(items) => assert_eq!(items.len(), n),
        other => panic!("scan: {other:?}"),
    }
    w.stats().blocks_read - before
}

fn check_all(clock: &mut Clock, w: &mut Worker<SimBackend>, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for (k, v) in model {
        assert_eq!(
            clock.run(w, Op::Get { key: k.clone() }),
            Reply::Value(v.clone()),
            "{k:?}"
        );
    }
    match clock.run(
        w,
        Op::Scan {
            start: Vec::new(),
            max: ITEMS + 10,
        },
    ) {
        Reply::Items(items) => {
            let want: Vec<(Vec<u8>, Vec<u8>)> =
                model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            assert!(items == want, "a full scan differs from the model");
        }
        other => panic!("scan: {other:?}"),
    }
}

#[test]
fn reorganised_neighbours_share_blocks_in_every_mode() {
    for mode in [
        Durability::Page,
        Durability::Periodic { interval: INTERVAL },
        Durability::Sync,
    ] {
        let disk = SimDisk::new(7);
        let cfg = config(mode, 32);
        let mut opened = open(&disk, &cfg);
        let mut clock = Clock(0);
        let w = &mut opened.workers[0];
        w.set_reorg_batch(0);
        let model = load(&mut clock, w, 99);
        drop(opened);
        let scattered = cold_scan_reads(&disk, &cfg, 100, 40);
        // Shuffled: nearly every item in a block of its own.
        assert!(scattered >= 30, "{mode}: {scattered} blocks before");

        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        clock.settle(w);
        let moved = w.stats().reorg_moves;
        assert!(moved as usize >= ITEMS * 9 / 10, "{mode}: moved {moved}");
        check_all(&mut clock, w, &model);
        // A second pass has nothing to do: the reorganisation rests.
        let passes = w.stats().reorg_passes;
        clock.settle(w);
        assert_eq!(
            w.stats().reorg_moves,
            moved,
            "{mode}: a second pass moved items"
        );
        assert!(!w.reorg_busy());
        assert!(w.stats().reorg_passes >= passes);
        drop(opened);

        let placed = cold_scan_reads(&disk, &cfg, 100, 40);
        // 40 neighbours in 4-item blocks: 10 blocks, 11 if the scan starts mid-block.
        assert!(
            placed <= 12,
            "{mode}: {placed} blocks after ({scattered} before)"
        );
        let mut opened = open(&disk, &cfg);
        assert_eq!(opened.recovery.duplicates, 0, "{mode}");
        assert_eq!(opened.recovery.live as usize, ITEMS, "{mode}");
        check_all(&mut clock, &mut opened.workers[0], &model);
    }
}

/// Crashes at random points of a reorganisation with client updates of the keys being moved
/// in flight: every key recovers with its last acknowledged value or the newer one in flight
/// — never an older value, never missing, and nothing comes back that was deleted.
#[test]
fn crashes_in_the_middle_of_a_reorganisation_lose_and_resurrect_nothing() {
    let cases = [
        (Durability::Sync, true),
        (Durability::Periodic { interval: INTERVAL }, false),
        (Durability::Sync, false),
        (Durability::Page, false),
    ];
    for seed in testkit::seeds(&[3, 4, 5, 6, 7, 8]) {
        for (mode, power) in cases {
            let disk = SimDisk::new(seed);
            disk.set_completion_chance(0.3);
            let cfg = config(mode, 16);
            let mut opened = open(&disk, &cfg);
            let mut clock = Clock(0);
            let w = &mut opened.workers[0];
            w.set_reorg_batch(0);
            let model = load(&mut clock, w, seed);
            w.sync().expect("sync");
            // Allowed values per key: the acknowledged one, plus any in flight.
            let mut allowed: BTreeMap<Vec<u8>, Vec<Option<Vec<u8>>>> = model
                .iter()
                .map(|(k, v)| (k.clone(), vec![Some(v.clone())]))
                .collect();
            w.set_reorg_batch(16);
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let mut rnd = |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let mut done = Vec::new();
            let mut tags: BTreeMap<u64, (Vec<u8>, Option<Vec<u8>>)> = BTreeMap::new();
            // A pass takes a few hundred polls: crash in the middle of it.
            let rounds = 5 + rnd(250);
            let mut version = 1;
            for r in 0..rounds {
                clock.poll(w, &mut done);
                // Now and then an update or delete of a key, likely one being moved (the
                // reorganisation runs only while no client operation is outstanding).
                if rnd(40) == 0 && tags.len() < 4 {
                    let i = rnd(ITEMS as u64) as usize;
                    let k = key(i);
                    let v = (rnd(5) != 0).then(|| value(i, version));
                    version += 1;
                    let op = match &v {
                        Some(v) => Op::Put {
                            key: k.clone(),
                            value: v.clone(),
                        },
                        None => Op::Delete { key: k.clone() },
                    };
                    w.submit(op, r + 1);
                    allowed.entry(k.clone()).or_default().push(v.clone());
                    tags.insert(r + 1, (k, v));
                }
                for c in done.drain(..) {
                    let (k, v) = tags.remove(&c.tag).expect("known tag");
                    let reply = c.result.expect("write");
                    assert!(matches!(
                        reply,
                        Reply::Written | Reply::Deleted | Reply::NotFound
                    ));
                    // Acknowledged: older values are no longer allowed (in page mode only
                    // after a process crash; a power cut in page mode promises nothing for
                    // writes that were not synced).
                    if !(power && mode == Durability::Page) {
                        let a = allowed.entry(k).or_default();
                        let pos = a.iter().position(|x| *x == v).expect("allowed");
                        a.drain(..pos);
                    }
                }
                if w.io_in_flight() > 0 && rnd(3) == 0 {
                    w.wait().expect("wait");
                }
            }
            let moved = w.stats().reorg_moves;
            if power {
                disk.power_cut();
            } else {
                disk.crash();
            }
            drop(opened);
            let mut opened = open(&disk, &cfg);
            println!(
                "seed {seed} {mode} power={power}: {rounds} polls, {moved} moved, {} duplicates at recovery",
                opened.recovery.duplicates
            );
            let w = &mut opened.workers[0];
            w.set_reorg_batch(0);
            for (k, a) in &allowed {
                let got = match clock.run(w, Op::Get { key: k.clone() }) {
                    Reply::Value(v) => Some(v),
                    Reply::NotFound => None,
                    other => panic!("get: {other:?}"),
                };
                assert!(
                    a.contains(&got),
                    "seed {seed} {mode} power={power} (moved {moved}): {k:?} recovered as \
                     {:?}, allowed {} values",
                    got.as_ref()
                        .map(|v| String::from_utf8_lossy(&v[..12]).into_owned()),
                    a.len()
                );
            }
            // Every key once: the reorganisation's two copies were resolved.
            let live = allowed
                .values()
                .filter(|a| a.iter().any(Option::is_some))
                .count();
            assert!(
                opened.recovery.live as usize <= live,
                "seed {seed} {mode}: extra items"
            );
        }
    }
}
