//! The engine on the simulated disk (`SimDisk`): reordered completions, I/O errors at chosen
//! points, torn and short writes, process crashes and power cuts, each checked against a model
//! of what the durability mode promises (`docs/STORAGE.md`, Durability):
//!
//! - every mode: after a process crash, each key holds its last acknowledged value or a newer
//!   one;
//! - `Sync`: the same after a power cut;
//! - `Periodic`: after a power cut, each key holds the last value a *completed flush* covered,
//!   or a newer one — and a flush begins within the interval of the first write it covers;
//! - `Page`: a power cut keeps nothing for sure, but never invents a value.
//!
//! The workers run on a virtual clock (`Worker::poll_at`), so the periodic flush happens in
//! the middle of the workloads. Deterministic: the seeds are written here (`TEST_SEEDS`
//! overrides them, see testkit).

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use kv_engine::backend::sim::{Fault, SimBackend};
use kv_engine::{
    open_workers_with, Completion, Durability, Engine, EngineConfig, Error, KeyRouter, Op,
    OpenedWorkers, Reply, SimDisk, Worker,
};

/// Virtual time of one poll round.
const TICK_NS: u64 = 10_000;
/// The periodic flush interval of these tests: a few dozen poll rounds.
const INTERVAL: Duration = Duration::from_micros(300);

const PAGE: Durability = Durability::Page;
const SYNC: Durability = Durability::Sync;
const PERIODIC: Durability = Durability::Periodic { interval: INTERVAL };
const MODES: [Durability; 3] = [PAGE, PERIODIC, SYNC];

fn config(workers: usize, durability: Durability) -> EngineConfig {
    EngineConfig {
        workers,
        // Small enough that blocks are evicted and read back, and that the dirty blocks of the
        // staged modes are written back often.
        cache_bytes: workers * (64 << 10),
        queue_depth: 16,
        durability,
        // The smallest staging area: it wraps many times in a workload.
        stage_bytes: 256 << 10,
        ..EngineConfig::default()
    }
}

fn open(disk: &SimDisk, cfg: &EngineConfig) -> OpenedWorkers<SimBackend> {
    open_workers_with(disk, cfg).expect("open on the simulated disk")
}

thread_local! {
    /// The virtual clock of a test: one per test thread, so that tests running in parallel
    /// cannot make each other's periodic flushes due.
    static CLOCK: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Moves the test's virtual clock on by `ns`; returns the time before.
fn advance_clock(ns: u64) -> u64 {
    CLOCK.with(|c| {
        let now = c.get();
        c.set(now + ns);
        now
    })
}

/// One poll round of a worker at the virtual time, which then moves on by [`TICK_NS`].
fn poll(w: &mut Worker<SimBackend>, done: &mut Vec<Completion>) -> usize {
    let now = advance_clock(TICK_NS);
    w.poll_at(now, done)
}

/// Polls every worker until the completions of `want` operations are in `done`.
fn drive(workers: &mut [Worker<SimBackend>], done: &mut Vec<Completion>, want: usize) {
    let mut idle = 0;
    while done.len() < want {
        let before = done.len();
        for w in workers.iter_mut() {
            poll(w, done);
        }
        if done.len() == before {
            idle += 1;
            assert!(idle < 10_000, "no progress with {} I/Os in flight", {
                workers.iter().map(|w| w.io_in_flight()).sum::<usize>()
            });
            for w in workers.iter_mut() {
                w.wait().expect("wait");
            }
        } else {
            idle = 0;
        }
    }
}

/// Runs one operation to completion on a single worker.
fn run(w: &mut Worker<SimBackend>, op: Op) -> kv_engine::Result<Reply> {
    w.submit(op, 0);
    let mut done = Vec::new();
    drive(std::slice::from_mut(w), &mut done, 1);
    done.pop().expect("one completion").result
}

fn put(key: &[u8], value: &[u8]) -> Op {
    Op::Put {
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

fn get(key: &[u8]) -> Op {
    Op::Get { key: key.to_vec() }
}

/// `Worker::sync` is a durability point in the modes that do not make every acknowledged
/// write durable at once (page, and periodic between flushes): everything completed before it
/// survives a power cut, slab files created since the last one included. The power is cut
/// before the workers close (a periodic worker's close would flush the staging area itself).
#[test]
fn worker_sync_makes_completed_writes_survive_a_power_cut() {
    for mode in [
        PAGE,
        Durability::Periodic {
            interval: Duration::from_secs(3600),
        },
    ] {
        for seed in testkit::seeds(&[41, 42, 43, 44]) {
            let disk = SimDisk::new(seed);
            let cfg = config(1, mode);
            let mut opened = open(&disk, &cfg);
            let w = &mut opened.workers[0];
            // Values of several size classes, so that several slab files exist.
            let mut model = BTreeMap::new();
            for i in 0..200u32 {
                let key = format!("k{i}").into_bytes();
                let value = vec![i as u8; 1 + (i as usize * 37) % 3000];
                assert!(matches!(run(w, put(&key, &value)), Ok(Reply::Written)));
                model.insert(key, value);
            }
            w.sync().expect("sync");
            // Written after the sync point: may or may not survive.
            for i in 0..50u32 {
                let _ = run(w, put(format!("later{i}").as_bytes(), b"x"));
            }
            disk.power_cut();
            drop(opened);
            let engine = Engine::open_with(&disk, cfg.clone()).expect("reopen");
            for (k, v) in &model {
                assert_eq!(
                    engine.get(k).unwrap().as_ref(),
                    Some(v),
                    "{mode:?} seed {seed}"
                );
            }
        }
    }
}

/// Staged modes: the staging area is a fixed-size ring whose space is reused once the pages
/// it covers are written back and durable, and a burst larger than the ring (or than the
/// cache's dirty budget) waits for room instead of failing or losing anything. Many times
/// the ring's size goes through it; its file never grows; every write is acknowledged and
/// survives what the mode promises (sync: a power cut; periodic: a process crash).
#[test]
fn a_full_staging_ring_applies_backpressure_and_its_space_is_reused() {
    for mode in [PERIODIC, SYNC] {
        let disk = SimDisk::new(5);
        let cfg = config(1, mode);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        // All submitted at once: 4 rounds over 1000 keys, ~1.4 MB of records, 5x the ring.
        let mut model = BTreeMap::new();
        let mut n = 0;
        for round in 0..4u8 {
            for k in 0..1000u32 {
                let key = format!("key{k:04}").into_bytes();
                let value = vec![round.wrapping_mul(31).wrapping_add(k as u8); 300];
                w.submit(put(&key, &value), n);
                model.insert(key, value);
                n += 1;
            }
        }
        let mut done = Vec::new();
        drive(std::slice::from_mut(w), &mut done, n as usize);
        assert!(
            done.iter().all(|c| matches!(c.result, Ok(Reply::Written))),
            "{mode:?}: every write succeeds"
        );
        let s = w.stats();
        assert!(s.room_waits > 0, "{mode:?}: the burst had to wait for room");
        assert!(
            s.stage_bytes > 4 * cfg.stage_bytes,
            "{mode:?}: {} bytes went through a ring of {}",
            s.stage_bytes,
            cfg.stage_bytes
        );
        assert!(s.writeback_batches > 0, "{mode:?}");
        let ring_len: Vec<u64> = disk
            .files()
            .into_iter()
            .filter(|(name, _)| name.ends_with(".stage"))
            .map(|(_, len)| len)
            .collect();
        assert_eq!(ring_len, vec![4096 + cfg.stage_bytes], "{mode:?}");
        if mode == SYNC {
            disk.power_cut();
        } else {
            disk.crash();
        }
        drop(opened);
        let engine = Engine::open_with(&disk, cfg.clone()).expect("reopen");
        for (k, v) in &model {
            assert_eq!(engine.get(k).unwrap().as_ref(), Some(v), "{mode:?}");
        }
    }
}

/// Sync mode: writes of one hot key, queued behind one another, share group commits (the next
/// one runs once the previous one is staged) and are acknowledged in submission order.
#[test]
fn sync_mode_hot_key_writes_share_group_commits() {
    let disk = SimDisk::new(9);
    let cfg = config(1, SYNC);
    let mut opened = open(&disk, &cfg);
    let w = &mut opened.workers[0];
    for i in 0..64u64 {
        w.submit(put(b"hot", format!("v{i}").as_bytes()), i);
    }
    let mut done = Vec::new();
    drive(std::slice::from_mut(w), &mut done, 64);
    assert!(done.iter().all(|c| matches!(c.result, Ok(Reply::Written))));
    let tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    assert_eq!(tags, (0..64).collect::<Vec<_>>(), "acknowledged in order");
    let chunks = w.stats().flushes_started;
    assert!(
        chunks <= 4,
        "{chunks} O_DSYNC writes for 64 puts of one key"
    );
    assert!(matches!(run(w, get(b"hot")), Ok(Reply::Value(v)) if v == b"v63"));
    disk.power_cut();
    drop(opened);
    let engine = Engine::open_with(&disk, cfg.clone()).expect("reopen");
    assert_eq!(engine.get(b"hot").unwrap(), Some(b"v63".to_vec()));
}

/// Sync mode: when a chunk write fails, every write staged after it fails too (a key's next
/// write may have been applied on top of the failed one), each undone, so a key reads — and
/// recovers — as its last acknowledged value.
#[test]
fn sync_mode_a_failed_chunk_fails_the_writes_staged_after_it() {
    let disk = SimDisk::new(10);
    let cfg = config(1, SYNC);
    let mut opened = open(&disk, &cfg);
    let w = &mut opened.workers[0];
    assert!(matches!(run(w, put(b"hot", b"base")), Ok(Reply::Written)));
    assert!(matches!(run(w, put(b"other", b"base")), Ok(Reply::Written)));
    // The next chunk write fails; hold completions so that later writes stage meanwhile.
    disk.fail_write(1, Fault::Eio);
    disk.set_completion_chance(0.0);
    let mut done = Vec::new();
    w.submit(put(b"hot", b"first"), 0);
    poll(w, &mut done);
    assert_eq!(w.io_in_flight(), 1, "the first chunk is in flight");
    for i in 1..10u64 {
        w.submit(put(b"hot", format!("v{i}").as_bytes()), i);
    }
    w.submit(put(b"other", b"later"), 10);
    w.submit(
        Op::Delete {
            key: b"other".to_vec(),
        },
        11,
    );
    poll(w, &mut done);
    disk.set_completion_chance(1.0);
    drive(std::slice::from_mut(w), &mut done, 12);
    for c in &done {
        assert!(
            matches!(c.result, Err(Error::Io { .. })),
            "write {} staged after the failed chunk: {:?}",
            c.tag,
            c.result
        );
    }
    assert!(matches!(run(w, get(b"hot")), Ok(Reply::Value(v)) if v == b"base"));
    assert!(matches!(run(w, get(b"other")), Ok(Reply::Value(v)) if v == b"base"));
    // The worker goes on: the next writes succeed.
    assert!(matches!(run(w, put(b"hot", b"after")), Ok(Reply::Written)));
    disk.power_cut();
    drop(opened);
    let engine = Engine::open_with(&disk, cfg.clone()).expect("reopen");
    assert_eq!(engine.get(b"hot").unwrap(), Some(b"after".to_vec()));
    assert_eq!(engine.get(b"other").unwrap(), Some(b"base".to_vec()));
}

/// Puts that create slab files (whose directory entries are not durable yet) survive a power
/// cut in sync mode — recovery recreates the files from the staging area — and in periodic
/// mode once a flush completed; page mode promises nothing across power loss (the new files
/// are lost, their entries never synced), and that is all it may lose.
#[test]
fn puts_that_create_slab_files_survive_a_power_cut_as_each_mode_promises() {
    for mode in MODES {
        let disk = SimDisk::new(1);
        let cfg = config(1, mode);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        assert!(matches!(
            run(w, put(b"a", b"first file")),
            Ok(Reply::Written)
        ));
        // A value of another size class: a second slab file, created now.
        let big = vec![7u8; 3000];
        assert!(matches!(run(w, put(b"b", &big)), Ok(Reply::Written)));
        if mode == PERIODIC {
            flush_now(w);
        }
        disk.power_cut();
        drop(opened);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        if mode == PAGE {
            assert_eq!(run(w, get(b"a")).ok(), Some(Reply::NotFound));
            assert_eq!(run(w, get(b"b")).ok(), Some(Reply::NotFound));
        } else {
            assert_eq!(
                run(w, get(b"a")).ok(),
                Some(Reply::Value(b"first file".to_vec())),
                "{mode}"
            );
            assert_eq!(run(w, get(b"b")).ok(), Some(Reply::Value(big)), "{mode}");
        }
    }
}

/// Periodic mode: moves virtual time on by the interval and polls until the flush it makes
/// due has completed.
fn flush_now(w: &mut Worker<SimBackend>) {
    let mut done = Vec::new();
    // A flush already in flight may not cover the latest writes: let it finish first.
    for _ in 0..10_000 {
        let s = w.stats();
        if s.flushes_completed + s.flush_errors >= s.flushes_started {
            break;
        }
        poll(w, &mut done);
        w.wait().expect("wait");
    }
    let (started, completed) = (w.stats().flushes_started, w.stats().flushes_completed);
    advance_clock(INTERVAL.as_nanos() as u64);
    poll(w, &mut done);
    if w.stats().flushes_started == started {
        // Nothing was left to flush.
        assert!(done.is_empty());
        return;
    }
    for _ in 0..10_000 {
        if w.stats().flushes_completed > completed {
            assert!(done.is_empty());
            return;
        }
        w.wait().expect("wait");
        poll(w, &mut done);
    }
    panic!("the periodic flush never completed");
}

/// Periodic mode's promise, step by step: an acknowledged write is flushed within the interval
/// (on the worker's clock), and once that flush completed it survives a power cut.
#[test]
fn periodic_mode_flushes_within_the_interval_and_then_survives_power_cuts() {
    for seed in testkit::seeds(&[61, 62, 63]) {
        let disk = SimDisk::new(seed);
        let cfg = config(1, PERIODIC);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        let t0 = 1_000_000_000u64;
        let mut done = Vec::new();
        w.submit(put(b"k", b"v1"), 1);
        w.poll_at(t0, &mut done);
        assert!(
            matches!(done.as_slice(), [c] if matches!(c.result, Ok(Reply::Written))),
            "seed {seed}: acknowledged in the poll that staged it: {done:?}"
        );
        let flushes = w.stats().flushes_started;
        // Not before the interval is over...
        let interval = INTERVAL.as_nanos() as u64;
        w.poll_at(t0 + interval - 1, &mut done);
        assert_eq!(
            w.stats().flushes_started,
            flushes,
            "seed {seed}: flushed early"
        );
        assert_eq!(w.next_deadline(), Some(Duration::from_nanos(t0 + interval)));
        // ... but when it is.
        w.poll_at(t0 + interval, &mut done);
        assert_eq!(
            w.stats().flushes_started,
            flushes + 1,
            "seed {seed}: no flush"
        );
        let mut now = t0 + interval;
        while w.stats().flushes_completed < flushes + 1 {
            now += TICK_NS;
            w.wait().expect("wait");
            w.poll_at(now, &mut done);
        }
        assert_eq!(
            w.next_deadline(),
            None,
            "seed {seed}: nothing left to flush"
        );
        // A second write, acknowledged but not flushed yet: it may be lost, v1 may not.
        w.submit(put(b"k", b"v2"), 2);
        w.poll_at(now + TICK_NS, &mut done);
        assert_eq!(done.len(), 2);
        disk.power_cut();
        drop(opened);
        let mut opened = open(&disk, &cfg);
        let got = run(&mut opened.workers[0], get(b"k")).ok();
        assert!(
            got == Some(Reply::Value(b"v1".to_vec())) || got == Some(Reply::Value(b"v2".to_vec())),
            "seed {seed}: {got:?}"
        );
    }
}

/// One write of a key in the model.
#[derive(Clone, Debug)]
struct Write {
    /// `None`: a delete.
    value: Option<Vec<u8>>,
    /// Step at which it was submitted.
    submitted: u64,
    /// Step at which it was acknowledged, if it was.
    acked: Option<u64>,
    /// It failed with an error (it may have reached the disk anyway).
    failed: bool,
    /// Periodic mode: the number of its worker's flush that covers it (flushes are numbered
    /// from 1 in the order they begin; the write is on stable storage once that one has
    /// completed).
    covered_by: Option<u64>,
    /// It is known to be on stable storage (sync: acknowledged; periodic: covered by a
    /// completed flush).
    durable: bool,
}

/// The history of every key, and what the engine may answer.
#[derive(Default)]
struct Model {
    /// Per key, in submission order (= the order the engine applies them).
    writes: BTreeMap<Vec<u8>, Vec<Write>>,
}

impl Model {
    fn base(&self, key: &[u8], before: u64) -> usize {
        // Index of the last write acknowledged before `before` (or none: usize::MAX).
        self.writes
            .get(key)
            .and_then(|ws| ws.iter().rposition(|w| w.acked.is_some_and(|a| a < before)))
            .unwrap_or(usize::MAX)
    }

    /// Values a read submitted at `start` and answered at `end` may return: the last write
    /// acknowledged before it started, or any write submitted after that one and before the
    /// read was answered (applied, not yet acknowledged — or failed and undone).
    fn read_allowed(&self, key: &[u8], start: u64, end: u64) -> Vec<Option<Vec<u8>>> {
        let ws = self.writes.get(key).map_or(&[][..], Vec::as_slice);
        let b = self.base(key, start);
        let mut out = Vec::new();
        match ws.get(b) {
            Some(w) => out.push(w.value.clone()),
            None => out.push(None),
        }
        let from = if b == usize::MAX { 0 } else { b + 1 };
        for w in ws.iter().skip(from).filter(|w| w.submitted < end) {
            out.push(w.value.clone());
        }
        out
    }

    /// Values the key may hold after a crash: the last write that is sure to have survived,
    /// or any write after it (it may have reached the disk). After a process crash the last
    /// acknowledged write survives; after a power cut, in sync mode too, in periodic mode the
    /// last one a completed flush covers, and in page mode nothing is sure (`lossy`: any value
    /// ever written, or none). No staged mode may lose an item entirely.
    fn recovered_allowed(
        &self,
        key: &[u8],
        crash: CrashKind,
        mode: Durability,
    ) -> Vec<Option<Vec<u8>>> {
        let ws = self.writes.get(key).map_or(&[][..], Vec::as_slice);
        if crash == CrashKind::Power && mode == PAGE {
            let mut all: Vec<_> = ws.iter().map(|w| w.value.clone()).collect();
            all.push(None);
            return all;
        }
        let sure = |w: &Write| match (crash, mode) {
            (CrashKind::Process, _) | (CrashKind::Power, SYNC) => w.acked.is_some(),
            (CrashKind::Power, _) => w.durable,
        };
        let b = ws.iter().rposition(sure);
        let mut out = vec![match b {
            Some(i) => ws[i].value.clone(),
            None => None,
        }];
        let from = b.map_or(0, |i| i + 1);
        out.extend(ws.iter().skip(from).map(|w| w.value.clone()));
        out
    }

    /// Periodic mode: worker `w`'s flushes up to number `completed` are done.
    fn flushed(&mut self, router: &KeyRouter, w: usize, completed: u64) {
        for (k, ws) in self.writes.iter_mut() {
            if router.partition_of(k) != w {
                continue;
            }
            for x in ws.iter_mut() {
                if x.covered_by.is_some_and(|f| f <= completed) {
                    x.durable = true;
                }
            }
        }
    }

    /// After a crash the recovered state is the new baseline.
    fn reset(&mut self, recovered: HashMap<Vec<u8>, Option<Vec<u8>>>) {
        self.writes.clear();
        for (k, v) in recovered {
            self.writes.insert(
                k,
                vec![Write {
                    value: v,
                    submitted: 0,
                    acked: Some(0),
                    failed: false,
                    covered_by: None,
                    durable: true,
                }],
            );
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CrashKind {
    /// `SimDisk::crash`: the process dies, the kernel keeps completed writes.
    Process,
    /// `SimDisk::power_cut`.
    Power,
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Sizes spanning several classes (100 B .. 8 KiB), so puts move items between classes and
/// create slab files as the run goes.
const SIZES: [usize; 6] = [10, 90, 200, 900, 3000, 6000];

/// A value for messages: its first bytes and its length.
fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "(none)".into(),
        Some(v) => format!(
            "{:?}.. ({} B)",
            String::from_utf8_lossy(v.get(..v.len().min(12)).unwrap_or_default()),
            v.len()
        ),
    }
}

fn value_of(key: &[u8], n: u64, len: usize) -> Vec<u8> {
    let seed = format!("{}:{n}:", String::from_utf8_lossy(key));
    seed.bytes().cycle().take(len).collect()
}

/// A seeded random workload of puts, deletes and gets over few keys with many requests in
/// flight (several per key), reordered completions, optional random I/O errors, and crashes
/// at random points; every answer and every recovered state is checked against the model of
/// what `mode` promises.
fn workload(seed: u64, mode: Durability, crash: CrashKind, write_errors: bool) {
    workload_with(seed, mode, crash, write_errors, 0);
}

/// [`workload`] with the background reorganisation on (`reorg_batch` items per round): it
/// runs whenever a worker has nothing outstanding, and the crashes hit it too.
fn workload_with(
    seed: u64,
    mode: Durability,
    crash: CrashKind,
    write_errors: bool,
    reorg_batch: usize,
) {
    let disk = SimDisk::new(seed);
    disk.set_completion_chance(0.3);
    let cfg = EngineConfig {
        reorg_batch,
        ..config(2, mode)
    };
    let router = KeyRouter::new(cfg.workers);
    let mut opened = open(&disk, &cfg);
    let mut rng = Rng(seed | 1);
    let mut model = Model::default();
    let keys: Vec<Vec<u8>> = (0..24)
        .map(|i| format!("key-{i:02}").into_bytes())
        .collect();
    let mut step = 0u64;
    let mut counter = 0u64;
    // tag -> (key, Some(write index) for writes / None + start step for gets)
    let mut inflight: HashMap<u64, (Vec<u8>, Option<usize>, u64)> = HashMap::new();
    let mut next_tag = 1u64;
    let mut done = Vec::new();
    let mut flushes = 0u64;
    let mut reorg_moves = 0u64;
    for round in 0..6 {
        if write_errors {
            disk.set_random_faults(0.02, 0.05);
            disk.set_random_sync_faults(0.05);
        }
        let ops = 150 + rng.below(150);
        for _ in 0..ops {
            step += 1;
            let key = keys[rng.below(keys.len() as u64) as usize].clone();
            let w = router.partition_of(&key);
            let tag = next_tag;
            next_tag += 1;
            let roll = rng.below(10);
            let op = if roll < 5 {
                counter += 1;
                // With the reorganisation, mostly one class, so that neighbours can share
                // blocks (and other sizes still move keys between classes).
                let len = if reorg_batch > 0 && rng.below(4) != 0 {
                    900
                } else {
                    SIZES[rng.below(SIZES.len() as u64) as usize]
                };
                let value = value_of(&key, counter, len);
                let ws = model.writes.entry(key.clone()).or_default();
                ws.push(Write {
                    value: Some(value.clone()),
                    submitted: step,
                    acked: None,
                    failed: false,
                    covered_by: None,
                    durable: false,
                });
                inflight.insert(tag, (key.clone(), Some(ws.len() - 1), step));
                Op::Put { key, value }
            } else if roll < 7 {
                let ws = model.writes.entry(key.clone()).or_default();
                ws.push(Write {
                    value: None,
                    submitted: step,
                    acked: None,
                    failed: false,
                    covered_by: None,
                    durable: false,
                });
                inflight.insert(tag, (key.clone(), Some(ws.len() - 1), step));
                Op::Delete { key }
            } else {
                inflight.insert(tag, (key.clone(), None, step));
                Op::Get { key }
            };
            opened.workers[w].submit(op, tag);
            // Keep a few dozen in flight; poll now and then.
            if rng.below(4) == 0 || inflight.len() > 48 {
                for (wi, wk) in opened.workers.iter_mut().enumerate() {
                    let before = wk.stats().flushes_started;
                    poll(wk, &mut done);
                    step += 1;
                    for c in done.drain(..) {
                        check(&mut model, &mut inflight, c, step, before + 1);
                    }
                    let completed = wk.stats().flushes_completed;
                    model.flushed(&router, wi, completed);
                    flushes = flushes.max(completed);
                }
            }
        }
        // Crash at a random point: while requests are still in flight, except sometimes.
        if rng.below(4) == 0 {
            let mut idle = 0;
            while !inflight.is_empty() {
                let mut any = false;
                for (wi, wk) in opened.workers.iter_mut().enumerate() {
                    let before = wk.stats().flushes_started;
                    any |= poll(wk, &mut done) > 0;
                    step += 1;
                    for c in done.drain(..) {
                        check(&mut model, &mut inflight, c, step, before + 1);
                    }
                    model.flushed(&router, wi, wk.stats().flushes_completed);
                    wk.wait().expect("wait");
                }
                idle = if any { 0 } else { idle + 1 };
                assert!(idle < 100_000, "seed {seed}: no progress");
            }
        }
        reorg_moves += opened
            .workers
            .iter()
            .map(|w| w.stats().reorg_moves)
            .sum::<u64>();
        match crash {
            CrashKind::Process => disk.crash(),
            CrashKind::Power => disk.power_cut(),
        }
        // Requests in flight at the crash never answer.
        inflight.clear();
        drop(opened);
        disk.set_random_faults(0.0, 0.0);
        disk.set_random_sync_faults(0.0);
        opened = open(&disk, &cfg);
        // Every key holds an allowed value.
        let mut recovered = HashMap::new();
        for key in &keys {
            let w = router.partition_of(key);
            let got = match run(&mut opened.workers[w], get(key)) {
                Ok(Reply::Value(v)) => Some(v),
                Ok(Reply::NotFound) => None,
                other => panic!("seed {seed} round {round}: get {key:?} after recovery: {other:?}"),
            };
            let allowed = model.recovered_allowed(key, crash, mode);
            assert!(
                allowed.contains(&got),
                "seed {seed} round {round} ({crash:?}, {mode}): {} recovered as {:?}, allowed {:?}; \
                 its writes this round: {:?}",
                String::from_utf8_lossy(key),
                show(&got),
                allowed.iter().map(show).collect::<Vec<_>>(),
                model.writes.get(key).map_or(Vec::new(), |ws| ws
                    .iter()
                    .map(|w| format!(
                        "{} acked={:?} failed={} flush={:?} durable={}",
                        show(&w.value),
                        w.acked,
                        w.failed,
                        w.covered_by,
                        w.durable
                    ))
                    .collect::<Vec<_>>())
            );
            recovered.insert(key.clone(), got);
        }
        model.reset(recovered);
    }
    if reorg_batch > 0 {
        println!("seed {seed} {mode} {crash:?}: {reorg_moves} items reorganised");
    }
    if mode == PERIODIC && !write_errors {
        assert!(flushes > 0, "seed {seed}: no periodic flush ever completed");
    }
}

/// Checks one answer against the model; `flush`: the number of the periodic flush that covers
/// a write acknowledged by the poll that returned it.
fn check(
    model: &mut Model,
    inflight: &mut HashMap<u64, (Vec<u8>, Option<usize>, u64)>,
    c: Completion,
    step: u64,
    flush: u64,
) {
    let Some((key, write, start)) = inflight.remove(&c.tag) else {
        panic!("completion of unknown tag {}", c.tag);
    };
    match write {
        Some(i) => {
            let w = &mut model.writes.get_mut(&key).expect("key")[i];
            match (&c.result, &w.value) {
                (Ok(Reply::Written), Some(_)) | (Ok(Reply::Deleted), None) => {
                    w.acked = Some(step);
                    w.covered_by = Some(flush);
                }
                // A delete of a key that does not exist: nothing to write, also an answer
                // (and as durable as the delete that made the key absent).
                (Ok(Reply::NotFound), None) => {
                    w.acked = Some(step);
                    w.covered_by = Some(flush);
                }
                (Err(Error::Io { .. }), _) => w.failed = true,
                other => panic!("write of {key:?}: {other:?}"),
            }
        }
        None => {
            let got = match c.result {
                Ok(Reply::Value(v)) => Some(v),
                Ok(Reply::NotFound) => None,
                // An I/O error (injected) is a valid answer; a wrong value never is.
                Err(Error::Io { .. }) => return,
                other => panic!("get of {key:?}: {other:?}"),
            };
            let allowed = model.read_allowed(&key, start, step);
            assert!(
                allowed.contains(&got),
                "get {} answered {:?}, allowed {:?}",
                String::from_utf8_lossy(&key),
                show(&got),
                allowed.iter().map(show).collect::<Vec<_>>()
            );
        }
    }
}

#[test]
fn sync_mode_keeps_every_acknowledged_write_across_power_cuts() {
    for seed in testkit::seeds(&[11, 12, 13]) {
        println!("seed {seed}");
        workload(seed, SYNC, CrashKind::Power, false);
    }
}

#[test]
fn periodic_mode_keeps_every_flushed_write_across_power_cuts() {
    for seed in testkit::seeds(&[14, 15, 16]) {
        println!("seed {seed}");
        workload(seed, PERIODIC, CrashKind::Power, false);
    }
}

#[test]
fn every_mode_keeps_every_acknowledged_write_across_process_crashes() {
    for seed in testkit::seeds(&[21, 22, 23]) {
        for mode in MODES {
            println!("seed {seed} {mode}");
            workload(seed, mode, CrashKind::Process, false);
        }
    }
}

#[test]
fn page_mode_power_cuts_lose_data_but_never_invent_a_value() {
    for seed in testkit::seeds(&[31, 32]) {
        println!("seed {seed}");
        workload(seed, PAGE, CrashKind::Power, false);
    }
}

#[test]
fn the_reorganisation_keeps_every_promise_across_crashes_and_io_errors() {
    for seed in testkit::seeds(&[51, 52]) {
        println!("seed {seed}");
        workload_with(seed, SYNC, CrashKind::Power, false, 4);
        workload_with(seed, PERIODIC, CrashKind::Power, false, 4);
        workload_with(seed, PAGE, CrashKind::Process, false, 4);
        workload_with(seed, SYNC, CrashKind::Power, true, 4);
        workload_with(seed, PERIODIC, CrashKind::Process, true, 4);
        workload_with(seed, PAGE, CrashKind::Process, true, 4);
    }
}

#[test]
fn random_io_errors_are_answered_undone_and_survive_crashes() {
    for seed in testkit::seeds(&[41, 42, 43]) {
        println!("seed {seed}");
        workload(seed, SYNC, CrashKind::Power, true);
        workload(seed, PERIODIC, CrashKind::Power, true);
        workload(seed, PAGE, CrashKind::Process, true);
        workload(seed, PERIODIC, CrashKind::Process, true);
    }
}

/// An overwrite whose write fails (EIO, ENOSPC, short, torn) is an error and is undone: the
/// old value is read back (page mode: from disk, the cached block was dropped; staged modes:
/// the slot's old bytes are put back in the cached block), and the next put works. The
/// failing write is the page write in page mode and the staging area's write in the others.
#[test]
fn failed_writes_at_chosen_points_are_errors_and_undone() {
    for mode in MODES {
        for fault in [Fault::Eio, Fault::NoSpace, Fault::Short(512), Fault::Torn] {
            let disk = SimDisk::new(5);
            disk.set_completion_chance(1.0);
            let cfg = config(1, mode);
            let mut opened = open(&disk, &cfg);
            let w = &mut opened.workers[0];
            assert!(matches!(run(w, put(b"k", b"old")), Ok(Reply::Written)));
            disk.fail_write(1, fault);
            let r = run(w, put(b"k", b"new"));
            assert!(
                matches!(r, Err(Error::Io { .. })),
                "{mode} {fault:?}: {r:?}"
            );
            // A torn page write may have destroyed the record in place: then the key reads as
            // corrupt, never as a wrong value. In the staged modes the failed change is undone.
            match run(w, get(b"k")) {
                Ok(Reply::Value(v)) if mode == PAGE => {
                    assert!(v == b"old" || v == b"new", "{fault:?}: {v:?}")
                }
                Ok(Reply::Value(v)) => assert_eq!(v, b"old", "{mode} {fault:?}"),
                Err(Error::Corrupt { .. }) => assert!(fault == Fault::Torn && mode == PAGE),
                other => panic!("{mode} {fault:?}: {other:?}"),
            }
            assert!(matches!(run(w, put(b"k", b"newer")), Ok(Reply::Written)));
            assert_eq!(
                run(w, get(b"k")).ok(),
                Some(Reply::Value(b"newer".to_vec()))
            );
            assert!(disk.stats().faults >= 1);
            // After a crash: the last acknowledged value.
            if mode == PERIODIC {
                flush_now(&mut opened.workers[0]);
            }
            disk.power_cut();
            drop(opened);
            if mode != PAGE {
                let mut opened = open(&disk, &cfg);
                assert_eq!(
                    run(&mut opened.workers[0], get(b"k")).ok(),
                    Some(Reply::Value(b"newer".to_vec())),
                    "{mode} {fault:?}"
                );
            }
        }
    }
}

/// Page mode: a move to another class whose first write (the new copy) fails leaves the old
/// copy; one whose second write (the old copy's tombstone) fails is an error although the new
/// copy is durable (documented in STORAGE.md). Staged modes: the move is one write (both
/// records in one chunk): if it fails, the old copy stays. Either way, what is read is a value
/// that was written, and the newer of two live copies wins at recovery.
#[test]
fn failed_moves_keep_one_readable_copy() {
    let big = vec![b'B'; 3000];
    for mode in MODES {
        let writes: &[u64] = if mode == PAGE { &[1, 2] } else { &[1] };
        for &nth in writes {
            let disk = SimDisk::new(6);
            disk.set_completion_chance(1.0);
            let cfg = config(1, mode);
            let mut opened = open(&disk, &cfg);
            let w = &mut opened.workers[0];
            assert!(matches!(run(w, put(b"k", b"small")), Ok(Reply::Written)));
            disk.fail_write(nth, Fault::Eio);
            assert!(
                matches!(run(w, put(b"k", &big)), Err(Error::Io { .. })),
                "{mode} write {nth}"
            );
            let want = if nth == 1 {
                b"small".to_vec()
            } else {
                big.clone()
            };
            assert_eq!(run(w, get(b"k")).ok(), Some(Reply::Value(want.clone())));
            // And after a crash the newer of two live copies wins.
            disk.crash();
            drop(opened);
            let mut opened = open(&disk, &cfg);
            assert_eq!(
                run(&mut opened.workers[0], get(b"k")).ok(),
                Some(Reply::Value(want)),
                "{mode} write {nth}"
            );
        }
    }
}

/// A read error fails the read that needed the block (and only it); the block is read again
/// by the next get.
#[test]
fn read_errors_fail_only_the_read() {
    for mode in MODES {
        let disk = SimDisk::new(8);
        let cfg = EngineConfig {
            cache_bytes: 4096, // one block: every other block is read from disk
            ..config(1, mode)
        };
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        for i in 0..200u32 {
            let k = format!("k{i:03}");
            assert!(matches!(
                run(w, put(k.as_bytes(), &[1; 90])),
                Ok(Reply::Written)
            ));
        }
        // Written back: the blocks are read from the slab again.
        for _ in 0..100 {
            let mut done = Vec::new();
            poll(w, &mut done);
            w.wait().expect("wait");
        }
        assert_eq!(w.stats().dirty_blocks, 0, "{mode}");
        disk.fail_read(1, Fault::Eio);
        assert!(
            matches!(run(w, get(b"k000")), Err(Error::Io { .. })),
            "{mode}"
        );
        assert_eq!(run(w, get(b"k000")).ok(), Some(Reply::Value(vec![1; 90])));
        disk.fail_read(1, Fault::Short(100));
        assert!(
            matches!(run(w, get(b"k100")), Err(Error::Io { .. })),
            "{mode}"
        );
        assert_eq!(run(w, get(b"k100")).ok(), Some(Reply::Value(vec![1; 90])));
    }
}

/// A full disk is `ENOSPC` for the put that needs more space, not a panic, and deleted slots
/// are reused without growing.
#[test]
fn a_full_disk_is_enospc_and_freed_space_is_reused() {
    for mode in MODES {
        let disk = SimDisk::new(9);
        let engine = Engine::open_with(&disk, config(1, mode)).expect("open");
        // The staging area is allocated at open; the slabs get 300 KiB.
        let used: u64 = disk.files().iter().map(|(_, l)| l).sum();
        disk.set_capacity(Some(used + (300 << 10)));
        let mut stored = Vec::new();
        let err = loop {
            let k = format!("k{:05}", stored.len());
            match engine.put(k.as_bytes(), &[3; 900]) {
                Ok(()) => stored.push(k),
                Err(e) => break e,
            }
            assert!(stored.len() < 10_000, "the capacity is never reached");
        };
        match err {
            Error::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC)),
            other => panic!("{mode}: {other:?}"),
        }
        let files = disk.files();
        for k in stored.iter().take(10) {
            assert!(engine.delete(k.as_bytes()).expect("delete"));
        }
        for i in 0..10 {
            engine
                .put(format!("again{i}").as_bytes(), &[4; 900])
                .expect("a freed slot is reused");
        }
        assert_eq!(disk.files(), files, "{mode}: no file grew");
        assert_eq!(
            engine.get(stored[20].as_bytes()).expect("get"),
            Some(vec![3; 900])
        );
    }
}

/// Completions come back in any order (the simulated device shuffles them), yet writes of one
/// key apply in submission order and every read sees the last write submitted before it.
#[test]
fn reordered_completions_keep_each_keys_order() {
    for (seed, mode) in testkit::seeds(&[51, 52, 53])
        .into_iter()
        .zip(MODES.into_iter().cycle())
    {
        let disk = SimDisk::new(seed);
        disk.set_completion_chance(0.2);
        let cfg = config(1, mode);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        let mut rng = Rng(seed);
        let mut last: HashMap<u8, Vec<u8>> = HashMap::new();
        for i in 0..400u64 {
            let k = vec![b'a' + rng.below(4) as u8];
            let len = SIZES[rng.below(SIZES.len() as u64) as usize];
            let v = value_of(&k, i, len);
            last.insert(k[0], v.clone());
            w.submit(Op::Put { key: k, value: v }, i);
        }
        let mut done = Vec::new();
        drive(std::slice::from_mut(w), &mut done, 400);
        assert!(
            done.iter().all(|c| matches!(c.result, Ok(Reply::Written))),
            "seed {seed} {mode}"
        );
        for (k, v) in last {
            assert_eq!(
                run(w, get(&[k])).ok(),
                Some(Reply::Value(v)),
                "seed {seed} {mode}"
            );
        }
    }
}

/// A move whose old copy could not be tombstoned (page mode: its second write failed) leaves
/// that copy live on disk. A later acknowledged delete must tombstone it too, or after a
/// restart the old value would be the key's only live record and come back. (Staged modes: the
/// failed move is undone as a whole, and the delete holds across a crash too.)
#[test]
fn a_deleted_key_stays_deleted_after_a_failed_move() {
    for (crash, mode) in [
        (CrashKind::Process, PAGE),
        (CrashKind::Process, PERIODIC),
        (CrashKind::Power, SYNC),
    ] {
        let disk = SimDisk::new(10);
        disk.set_completion_chance(1.0);
        let cfg = config(1, mode);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        assert!(matches!(run(w, put(b"k", b"small")), Ok(Reply::Written)));
        // Page mode: the second write of the move (the old copy's tombstone) fails; staged
        // modes: the move's one write.
        disk.fail_write(if mode == PAGE { 2 } else { 1 }, Fault::Eio);
        assert!(matches!(
            run(w, put(b"k", &[b'B'; 3000])),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            run(w, Op::Delete { key: b"k".to_vec() }),
            Ok(Reply::Deleted)
        ));
        assert_eq!(run(w, get(b"k")).ok(), Some(Reply::NotFound));
        match crash {
            CrashKind::Process => disk.crash(),
            CrashKind::Power => disk.power_cut(),
        }
        drop(opened);
        let mut opened = open(&disk, &cfg);
        assert_eq!(
            run(&mut opened.workers[0], get(b"k")).ok(),
            Some(Reply::NotFound),
            "{crash:?} {mode}: the deleted key came back"
        );
    }
}

/// Nor may that stale copy come back when the key's newest copy is destroyed by a torn
/// overwrite in place (page mode: the write tears, then the process dies): the key's next
/// write tombstones stale copies before anything else.
#[test]
fn a_stale_copy_does_not_come_back_when_the_newest_copy_is_torn() {
    for seed in testkit::seeds(&[1, 2, 3, 4]) {
        let disk = SimDisk::new(seed);
        disk.set_completion_chance(1.0);
        let cfg = config(1, PAGE);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        assert!(matches!(run(w, put(b"k", b"small")), Ok(Reply::Written)));
        disk.fail_write(2, Fault::Eio); // the move's tombstone of "small"
        assert!(matches!(
            run(w, put(b"k", &[b'M'; 200])),
            Err(Error::Io { .. })
        ));
        assert!(matches!(
            run(w, put(b"k", &[b'L'; 6000])),
            Ok(Reply::Written)
        ));
        disk.fail_write(1, Fault::Torn); // the overwrite in place
        assert!(matches!(
            run(w, put(b"k", &[b'N'; 6000])),
            Err(Error::Io { .. })
        ));
        disk.crash();
        drop(opened);
        let mut opened = open(&disk, &cfg);
        match run(&mut opened.workers[0], get(b"k")) {
            Ok(Reply::NotFound) => {}
            Ok(Reply::Value(v)) => assert!(
                v == [b'L'; 6000] || v == [b'N'; 6000],
                "seed {seed}: an older value came back: {:?}",
                String::from_utf8_lossy(&v[..v.len().min(8)])
            ),
            other => panic!("seed {seed}: {other:?}"),
        }
    }
}
