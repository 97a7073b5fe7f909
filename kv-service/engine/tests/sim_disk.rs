//! The engine on the simulated disk (`SimDisk`): reordered completions, I/O errors at chosen
//! points, torn and short writes, process crashes and power cuts, each checked against a model.
//! Deterministic: the seeds are written here (`TEST_SEEDS` overrides them, see testkit).

use std::collections::{BTreeMap, HashMap};

use kv_engine::backend::sim::{Fault, SimBackend};
use kv_engine::{
    open_workers_with, Completion, Engine, EngineConfig, Error, KeyRouter, Op, OpenedWorkers,
    Reply, SimDisk, SyncMode, Worker,
};

fn config(workers: usize, sync: SyncMode) -> EngineConfig {
    EngineConfig {
        workers,
        // Small enough that blocks are evicted and read back.
        cache_bytes: workers * (64 << 10),
        queue_depth: 16,
        sync,
        ..EngineConfig::default()
    }
}

fn open(disk: &SimDisk, cfg: &EngineConfig) -> OpenedWorkers<SimBackend> {
    open_workers_with(disk, cfg).expect("open on the simulated disk")
}

/// Polls every worker until the completions of `want` operations are in `done`.
fn drive(workers: &mut [Worker<SimBackend>], done: &mut Vec<Completion>, want: usize) {
    let mut idle = 0;
    while done.len() < want {
        let before = done.len();
        for w in workers.iter_mut() {
            w.poll(done);
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

/// Without `--sync`, `Worker::sync` is a durability point: everything completed before it
/// survives a power cut, slab files created since the last one included.
#[test]
fn worker_sync_makes_completed_writes_survive_a_power_cut() {
    for seed in testkit::seeds(&[41, 42, 43, 44]) {
        let disk = SimDisk::new(seed);
        let cfg = config(1, SyncMode::None);
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
        drop(opened);
        disk.power_cut();
        let engine = Engine::open_with(&disk, cfg.clone()).expect("reopen");
        for (k, v) in &model {
            assert_eq!(engine.get(k).unwrap().as_ref(), Some(v), "seed {seed}");
        }
    }
}

/// The focused proof of the directory-fsync fix: with `--sync`, a put that creates a slab
/// file is acknowledged only once the file's directory entry is durable, so it survives a
/// power cut. (Without the fsync of the directory the file — and the put — is gone.)
#[test]
fn with_sync_a_new_slab_file_survives_a_power_cut() {
    for sync in [SyncMode::Dsync, SyncMode::None] {
        let disk = SimDisk::new(1);
        let cfg = config(1, sync);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        assert!(matches!(
            run(w, put(b"a", b"first file")),
            Ok(Reply::Written)
        ));
        // A value of another size class: a second slab file, created now.
        let big = vec![7u8; 3000];
        assert!(matches!(run(w, put(b"b", &big)), Ok(Reply::Written)));
        disk.power_cut();
        drop(opened);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        match sync {
            SyncMode::Dsync => {
                assert_eq!(
                    run(w, get(b"a")).ok(),
                    Some(Reply::Value(b"first file".to_vec()))
                );
                assert_eq!(run(w, get(b"b")).ok(), Some(Reply::Value(big)));
            }
            // The default mode promises nothing across power loss: the new files are lost
            // (their entries were never synced), and that is all the engine may lose.
            SyncMode::None => {
                assert_eq!(run(w, get(b"a")).ok(), Some(Reply::NotFound));
                assert_eq!(run(w, get(b"b")).ok(), Some(Reply::NotFound));
            }
        }
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

    /// Values the key may hold after a crash: the last acknowledged write, or any write not
    /// acknowledged after it (it may have reached the disk). `torn`: a power cut, which may
    /// tear an unacknowledged write in place and so lose the item (STORAGE.md, Durability).
    /// `lossy`: a power cut in the default mode, which keeps nothing for sure: any value ever
    /// written, or none.
    fn recovered_allowed(&self, key: &[u8], torn: bool, lossy: bool) -> Vec<Option<Vec<u8>>> {
        let ws = self.writes.get(key).map_or(&[][..], Vec::as_slice);
        if lossy {
            let mut all: Vec<_> = ws.iter().map(|w| w.value.clone()).collect();
            all.push(None);
            return all;
        }
        let mut allowed = self.read_allowed(key, u64::MAX, u64::MAX);
        let b = self.base(key, u64::MAX);
        let from = if b == usize::MAX { 0 } else { b + 1 };
        if torn && ws.iter().skip(from).any(|w| w.acked.is_none()) {
            allowed.push(None);
        }
        allowed
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
/// at random points; every answer and every recovered state is checked against the model.
fn workload(seed: u64, sync: SyncMode, crash: CrashKind, write_errors: bool) {
    let disk = SimDisk::new(seed);
    disk.set_completion_chance(0.3);
    let cfg = config(2, sync);
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
    let lossy = sync == SyncMode::None && crash == CrashKind::Power;
    for round in 0..6 {
        if write_errors {
            disk.set_random_faults(0.02, 0.05);
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
                let len = SIZES[rng.below(SIZES.len() as u64) as usize];
                let value = value_of(&key, counter, len);
                let ws = model.writes.entry(key.clone()).or_default();
                ws.push(Write {
                    value: Some(value.clone()),
                    submitted: step,
                    acked: None,
                    failed: false,
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
                for wk in opened.workers.iter_mut() {
                    wk.poll(&mut done);
                }
            }
            step += 1;
            for c in done.drain(..) {
                check(&mut model, &mut inflight, c, step);
            }
        }
        // Crash at a random point: while requests are still in flight, except sometimes.
        if rng.below(4) == 0 {
            let want = inflight.len();
            let mut all = Vec::new();
            drive(&mut opened.workers, &mut all, want);
            step += 1;
            for c in all {
                check(&mut model, &mut inflight, c, step);
            }
        }
        match crash {
            CrashKind::Process => disk.crash(),
            CrashKind::Power => disk.power_cut(),
        }
        // Requests in flight at the crash never answer.
        inflight.clear();
        drop(opened);
        disk.set_random_faults(0.0, 0.0);
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
            let allowed = model.recovered_allowed(key, crash == CrashKind::Power, lossy);
            assert!(
                allowed.contains(&got),
                "seed {seed} round {round} ({crash:?}, {sync:?}): {} recovered as {:?}, allowed {:?}; \
                 its writes this round: {:?}",
                String::from_utf8_lossy(key),
                show(&got),
                allowed.iter().map(show).collect::<Vec<_>>(),
                model.writes.get(key).map_or(Vec::new(), |ws| ws
                    .iter()
                    .map(|w| format!("{} acked={:?} failed={}", show(&w.value), w.acked, w.failed))
                    .collect::<Vec<_>>())
            );
            recovered.insert(key.clone(), got);
        }
        model.reset(recovered);
    }
}

fn check(
    model: &mut Model,
    inflight: &mut HashMap<u64, (Vec<u8>, Option<usize>, u64)>,
    c: Completion,
    step: u64,
) {
    let Some((key, write, start)) = inflight.remove(&c.tag) else {
        panic!("completion of unknown tag {}", c.tag);
    };
    match write {
        Some(i) => {
            let w = &mut model.writes.get_mut(&key).expect("key")[i];
            match (&c.result, &w.value) {
                (Ok(Reply::Written), Some(_)) | (Ok(Reply::Deleted), None) => w.acked = Some(step),
                // A delete of a key that does not exist: nothing to write, also an answer.
                (Ok(Reply::NotFound), None) => w.acked = Some(step),
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
        workload(seed, SyncMode::Dsync, CrashKind::Power, false);
    }
}

#[test]
fn default_mode_keeps_every_acknowledged_write_across_process_crashes() {
    for seed in testkit::seeds(&[21, 22, 23]) {
        println!("seed {seed}");
        workload(seed, SyncMode::None, CrashKind::Process, false);
    }
}

#[test]
fn default_mode_power_cuts_lose_data_but_never_invent_a_value() {
    for seed in testkit::seeds(&[31, 32]) {
        println!("seed {seed}");
        workload(seed, SyncMode::None, CrashKind::Power, false);
    }
}

#[test]
fn random_io_errors_are_answered_undone_and_survive_crashes() {
    for seed in testkit::seeds(&[41, 42, 43]) {
        println!("seed {seed}");
        workload(seed, SyncMode::Dsync, CrashKind::Power, true);
        workload(seed, SyncMode::None, CrashKind::Process, true);
    }
}

/// An overwrite whose write fails (EIO, ENOSPC, short, torn) is an error and is undone: the
/// old value is read back (from disk: the cached block was dropped), and the next put works.
#[test]
fn failed_writes_at_chosen_points_are_errors_and_undone() {
    for fault in [Fault::Eio, Fault::NoSpace, Fault::Short(512), Fault::Torn] {
        let disk = SimDisk::new(5);
        disk.set_completion_chance(1.0);
        let cfg = config(1, SyncMode::Dsync);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        assert!(matches!(run(w, put(b"k", b"old")), Ok(Reply::Written)));
        disk.fail_write(1, fault);
        let r = run(w, put(b"k", b"new"));
        assert!(matches!(r, Err(Error::Io { .. })), "{fault:?}: {r:?}");
        // A torn write may have destroyed the record in place: then the key reads as corrupt,
        // never as a wrong value.
        match run(w, get(b"k")) {
            Ok(Reply::Value(v)) => assert!(v == b"old" || v == b"new", "{fault:?}: {v:?}"),
            Err(Error::Corrupt { .. }) => assert_eq!(fault, Fault::Torn),
            other => panic!("{fault:?}: {other:?}"),
        }
        assert!(matches!(run(w, put(b"k", b"newer")), Ok(Reply::Written)));
        assert_eq!(
            run(w, get(b"k")).ok(),
            Some(Reply::Value(b"newer".to_vec()))
        );
        assert!(disk.stats().faults >= 1);
    }
}

/// A move to another class whose first write (the new copy) fails leaves the old copy; one
/// whose second write (the old copy's tombstone) fails is an error although the new copy is
/// durable (documented in STORAGE.md) — either way, what is read is a value that was written.
#[test]
fn failed_moves_keep_one_readable_copy() {
    let big = vec![b'B'; 3000];
    for nth in [1, 2] {
        let disk = SimDisk::new(6);
        disk.set_completion_chance(1.0);
        let cfg = config(1, SyncMode::Dsync);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        assert!(matches!(run(w, put(b"k", b"small")), Ok(Reply::Written)));
        disk.fail_write(nth, Fault::Eio);
        assert!(matches!(run(w, put(b"k", &big)), Err(Error::Io { .. })));
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
            Some(Reply::Value(want))
        );
    }
}

/// A read error fails the read that needed the block (and only it); the block is read again
/// by the next get.
#[test]
fn read_errors_fail_only_the_read() {
    let disk = SimDisk::new(8);
    let cfg = EngineConfig {
        cache_bytes: 4096, // one block: every other block is read from disk
        ..config(1, SyncMode::None)
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
    disk.fail_read(1, Fault::Eio);
    assert!(matches!(run(w, get(b"k000")), Err(Error::Io { .. })));
    assert_eq!(run(w, get(b"k000")).ok(), Some(Reply::Value(vec![1; 90])));
    disk.fail_read(1, Fault::Short(100));
    assert!(matches!(run(w, get(b"k100")), Err(Error::Io { .. })));
    assert_eq!(run(w, get(b"k100")).ok(), Some(Reply::Value(vec![1; 90])));
}

/// A full disk is `ENOSPC` for the put that needs more space, not a panic, and deleted slots
/// are reused without growing.
#[test]
fn a_full_disk_is_enospc_and_freed_space_is_reused() {
    let disk = SimDisk::new(9);
    disk.set_capacity(Some(300 << 10));
    let engine = Engine::open_with(&disk, config(1, SyncMode::None)).expect("open");
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
        other => panic!("{other:?}"),
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
    assert_eq!(disk.files(), files, "no file grew");
    assert_eq!(
        engine.get(stored[20].as_bytes()).expect("get"),
        Some(vec![3; 900])
    );
}

/// Completions come back in any order (the simulated device shuffles them), yet writes of one
/// key apply in submission order and every read sees the last write submitted before it.
#[test]
fn reordered_completions_keep_each_keys_order() {
    for seed in testkit::seeds(&[51, 52]) {
        let disk = SimDisk::new(seed);
        disk.set_completion_chance(0.2);
        let cfg = config(1, SyncMode::None);
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
        assert!(done.iter().all(|c| matches!(c.result, Ok(Reply::Written))));
        for (k, v) in last {
            assert_eq!(run(w, get(&[k])).ok(), Some(Reply::Value(v)), "seed {seed}");
        }
    }
}

/// A move whose old copy could not be tombstoned leaves that copy live on disk. A later
/// acknowledged delete must tombstone it too, or after a restart the old value would be the
/// key's only live record and come back.
#[test]
fn a_deleted_key_stays_deleted_after_a_failed_move() {
    for crash in [CrashKind::Process, CrashKind::Power] {
        let disk = SimDisk::new(10);
        disk.set_completion_chance(1.0);
        let cfg = config(1, SyncMode::Dsync);
        let mut opened = open(&disk, &cfg);
        let w = &mut opened.workers[0];
        assert!(matches!(run(w, put(b"k", b"small")), Ok(Reply::Written)));
        // The second write of the move (the old copy's tombstone) fails.
        disk.fail_write(2, Fault::Eio);
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
            "{crash:?}: the deleted key came back"
        );
    }
}

/// Nor may that stale copy come back when the key's newest copy is destroyed by a torn
/// overwrite in place: the key's next write tombstones stale copies before anything else.
#[test]
fn a_stale_copy_does_not_come_back_when_the_newest_copy_is_torn() {
    for seed in testkit::seeds(&[1, 2, 3, 4]) {
        let disk = SimDisk::new(seed);
        disk.set_completion_chance(1.0);
        let cfg = config(1, SyncMode::Dsync);
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
        disk.power_cut();
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
