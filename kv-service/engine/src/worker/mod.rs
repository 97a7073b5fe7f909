//! A shared-nothing worker: owns a disjoint part of the key space with its own slab files,
//! index, page cache and I/O backend. It is a state machine driven by two calls:
//!
//! 1. [`Worker::submit`] enqueues an operation (no I/O, no system call);
//! 2. [`Worker::poll`] reaps I/O completions without blocking, runs every operation that
//!    can make progress, hands the gathered reads and writes to the backend (at most
//!    `queue_depth` in flight), and hands back finished operations.
//!
//! [`Worker::wait`] blocks until an I/O completes, for a thread with nothing else to do. A
//! thread that also runs an RPC event loop calls `submit` for each request and `poll` on
//! every loop iteration, so a request goes from network to disk with no hand-off.
//!
//! Inside, one file per concern: `keys.rs` orders the writes of one key, `blocks.rs` owns the
//! cached blocks and their I/O, and each operation is a state machine of its own (`get.rs`,
//! `put.rs` — where a put becomes durable —, `delete.rs`, `scan.rs`) that runs against the
//! worker's [`Core`] until it must wait for a block or a write.
//!
//! Ordering: write operations (put, delete) on the same key run one after another, in
//! submission order; reads see the latest applied write (possibly not yet acknowledged).

mod blocks;
mod delete;
mod get;
mod keys;
mod put;
mod scan;

pub use get::CachedGet;
pub use scan::choose_scan_keys;

use std::collections::{HashMap, VecDeque};

use ::slab::Slab as OpTable;
use kv_proto::{fnv1a64, Op, Reply};

use crate::backend::{Backend, DiskBackend};
use crate::error::{Error, Result};
use crate::index::{Index, Location};
use crate::recovery::{Recovered, RecoveryStats};
use crate::slab::{self as slabs, Allocated, Slab, MAX_VALUE_LEN};

use blocks::{Blocks, Event};
use delete::DeleteOp;
use get::GetOp;
use keys::KeyQueue;
use put::PutOp;
use scan::ScanOp;

/// A finished operation.
#[derive(Debug)]
pub struct Completion {
    /// The tag given to [`Worker::submit`].
    pub tag: u64,
    /// What happened.
    pub result: Result<Reply>,
}

/// Counters of one worker.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerStats {
    /// The I/O backend (`"io_uring"`, `"pread/pwrite"`, `"sim"`).
    pub backend: &'static str,
    /// Operations completed (gets, puts, deletes, scans; scan sub-reads not counted).
    pub ops_completed: u64,
    /// Block reads submitted.
    pub reads: u64,
    /// Block writes submitted.
    pub writes: u64,
    /// Bytes read by block reads.
    pub read_bytes: u64,
    /// Bytes written by block writes.
    pub write_bytes: u64,
    /// System calls made to submit I/O (`io_uring_enter`; one per I/O for pread/pwrite).
    pub submits: u64,
    /// Page cache hits.
    pub cache_hits: u64,
    /// Page cache misses (including new blocks that needed no read).
    pub cache_misses: u64,
    /// Items in the index.
    pub items: u64,
    /// Estimated index memory in bytes.
    pub index_bytes: u64,
    /// Bytes held by the page cache.
    pub cache_bytes: u64,
    /// Sum of slab file lengths in bytes.
    pub file_bytes: u64,
    /// Free slots (below the append positions) ready for reuse.
    pub free_slots: u64,
    /// Items returned by scans.
    pub scan_items: u64,
    /// Items returned by scans whose block was not cached when the scan looked for it (the
    /// reads a scan cannot avoid without reorganising the data).
    pub scan_items_uncached: u64,
}

/// An operation's handle inside its worker.
type OpId = usize;

/// What running an operation's state machine led to.
enum Step {
    /// It waits for a block or a write; an [`Event`] will move it on.
    Wait,
    /// It finished.
    Done(Result<Reply>),
}

/// The state an operation's steps work on: everything of the worker but the operations.
struct Core<B: Backend> {
    id: usize,
    /// [`SyncMode::Dsync`](crate::SyncMode::Dsync).
    dsync: bool,
    max_file_bytes: Option<u64>,
    /// By size class; `None`: no file for the class yet.
    slabs: Vec<Option<Slab>>,
    index: Index,
    next_seq: u64,
    blocks: Blocks,
    backend: B,
    /// A slab file was created but the `fsync` of the directory that makes its entry durable
    /// has not succeeded yet: nothing may be allocated until it does.
    dir_sync_pending: bool,
    /// Live copies on disk that a move could not tombstone, by key. They lose to the key's
    /// newer copy at recovery — as long as that copy exists: a delete (tombstones carry no
    /// key) or a torn overwrite in place would leave the stale copy the key's only live
    /// record. So the key's next write, put or delete, tombstones them first.
    stale: HashMap<Vec<u8>, Vec<Location>>,
}

impl<B: Backend> Core<B> {
    /// The next sequence number (every write takes one).
    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// A slot of `class`: a free one, or appended (creating the class's file, or growing it).
    fn allocate(&mut self, class: u8) -> Result<Allocated> {
        let c = usize::from(class);
        if matches!(self.slabs.get(c), Some(None)) {
            let s = Slab::open(&mut self.backend, self.id, class, self.max_file_bytes)?;
            if let Some(slot) = self.slabs.get_mut(c) {
                *slot = Some(s);
            }
            // The new file's directory entry must be durable before anything written into
            // the file is acknowledged: with O_DSYNC the data is on stable storage, but
            // without an fsync of the directory power loss may lose the file itself.
            self.dir_sync_pending |= self.dsync;
        }
        if self.dir_sync_pending {
            self.backend.sync_dir().map_err(|e| {
                Error::io("syncing the data directory after creating a slab file", e)
            })?;
            self.dir_sync_pending = false;
        }
        match self.slabs.get_mut(c) {
            Some(Some(s)) => s.allocate(&mut self.backend),
            _ => Err(Error::InvalidConfig(format!("no size class {class}"))),
        }
    }

    /// Returns a slot to its class's free list.
    fn release_slot(&mut self, loc: Location) {
        if let Some(Some(s)) = self.slabs.get_mut(usize::from(loc.class)) {
            s.release(loc.slot);
        }
    }

    /// Starts tombstoning the next stale copy of `key` for operation `id`: `None` if the key
    /// has none; `Some(None)` if the operation now waits for the copy's block; `Some(Some(loc))`
    /// once the tombstone is in the cached block and its write queued.
    fn unlink_stale(&mut self, key: &[u8], id: OpId) -> Option<Option<Location>> {
        let loc = self.stale.get(key).and_then(|v| v.first().copied())?;
        let (block, _) = slabs::Geometry::of(loc.class).locate(loc.slot);
        let e = match self.blocks.acquire(loc.class, block, id, true, false) {
            Some(e) => e,
            None => return Some(None),
        };
        let seq = self.take_seq();
        let used = self
            .blocks
            .slot_mut(e, loc)
            .and_then(|b| crate::record::encode_tombstone(b, seq))
            .unwrap_or(crate::record::HEADER_LEN);
        self.blocks.mark_write(e, loc, used, id);
        Some(Some(loc))
    }

    /// Remembers a copy of `key` that could not be tombstoned.
    fn add_stale(&mut self, key: &[u8], loc: Location) {
        self.stale.entry(key.to_vec()).or_default().push(loc);
    }

    /// A stale copy of `key` is tombstoned now: forget it and free its slot.
    fn remove_stale(&mut self, key: &[u8], loc: Location) {
        if let Some(v) = self.stale.get_mut(key) {
            v.retain(|&l| l != loc);
            if v.is_empty() {
                self.stale.remove(key);
            }
        }
        self.release_slot(loc);
    }

    fn corrupt(&self, loc: Location) -> Error {
        Error::Corrupt {
            file: slabs::file_name(self.id, loc.class),
            slot: u64::from(loc.slot),
        }
    }
}

/// One operation in the worker.
struct OpEntry {
    tag: u64,
    op: OpState,
}

enum OpState {
    Get(GetOp),
    Put(PutOp),
    Delete(DeleteOp),
    Scan(ScanOp),
}

/// One worker. `Send`: move it to the thread that will drive it. `B`: its I/O backend (the
/// real disk by default; [`SimBackend`](crate::backend::sim::SimBackend) in tests).
pub struct Worker<B: Backend = DiskBackend> {
    core: Core<B>,
    ops: OpTable<OpEntry>,
    keys: KeyQueue,
    runnable: VecDeque<OpId>,
    events: Vec<Event>,
    ready: Vec<Completion>,
    pending: usize,
    ops_completed: u64,
    scan_items: u64,
    scan_items_uncached: u64,
    recovery: RecoveryStats,
}

pub(crate) struct WorkerParams {
    pub(crate) id: usize,
    pub(crate) dsync: bool,
    pub(crate) max_file_bytes: Option<u64>,
    pub(crate) cache_bytes: usize,
    pub(crate) queue_depth: u32,
}

impl<B: Backend> Worker<B> {
    pub(crate) fn new(p: WorkerParams, rec: Recovered, backend: B) -> Worker<B> {
        Worker {
            core: Core {
                id: p.id,
                dsync: p.dsync,
                max_file_bytes: p.max_file_bytes,
                slabs: rec.slabs,
                index: rec.index,
                next_seq: rec.next_seq,
                blocks: Blocks::new(p.cache_bytes, p.queue_depth),
                backend,
                dir_sync_pending: false,
                stale: HashMap::new(),
            },
            ops: OpTable::new(),
            keys: KeyQueue::default(),
            runnable: VecDeque::new(),
            events: Vec::new(),
            ready: Vec::new(),
            pending: 0,
            ops_completed: 0,
            scan_items: 0,
            scan_items_uncached: 0,
            recovery: rec.stats,
        }
    }

    /// This worker's number (keys with `partition_of(key) == id()` belong to it).
    pub fn id(&self) -> usize {
        self.core.id
    }

    /// Number of live items.
    pub fn len(&self) -> usize {
        self.core.index.len()
    }

    /// Whether the worker holds no items.
    pub fn is_empty(&self) -> bool {
        self.core.index.len() == 0
    }

    /// Operations submitted and not yet returned by [`Worker::poll`].
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// Block I/Os handed to the backend and not completed yet.
    pub fn io_in_flight(&self) -> usize {
        self.core.backend.in_flight()
    }

    /// What recovery found when this worker was opened.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery
    }

    /// Current counters.
    pub fn stats(&self) -> WorkerStats {
        let c = &self.core;
        let cache = c.blocks.cache();
        let io = c.blocks.stats;
        WorkerStats {
            backend: c.backend.name(),
            ops_completed: self.ops_completed,
            reads: io.reads,
            writes: io.writes,
            read_bytes: io.read_bytes,
            write_bytes: io.write_bytes,
            submits: c.backend.submit_calls(),
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            items: c.index.len() as u64,
            index_bytes: c.index.approx_bytes() as u64,
            cache_bytes: cache.used_bytes() as u64,
            file_bytes: c.slabs.iter().flatten().map(|s| s.len()).sum(),
            free_slots: c.slabs.iter().flatten().map(|s| s.free.len() as u64).sum(),
            scan_items: self.scan_items,
            scan_items_uncached: self.scan_items_uncached,
        }
    }

    /// Enqueues an operation; its [`Completion`] (carrying `tag`) comes out of a later
    /// [`Worker::poll`]. Never blocks and makes no system call. The key must belong to this
    /// worker (see [`KeyRouter`](crate::KeyRouter)); sizes are checked here and
    /// violations complete with [`Error::KeyTooLarge`] / [`Error::ValueTooLarge`].
    pub fn submit(&mut self, op: Op, tag: u64) {
        self.pending += 1;
        if let Err(e) = op.check_limits(MAX_VALUE_LEN) {
            self.ready.push(Completion {
                tag,
                result: Err(e.into()),
            });
            return;
        }
        match op {
            Op::Get { key } => {
                let id = self.ops.insert(OpEntry {
                    tag,
                    op: OpState::Get(GetOp { key }),
                });
                self.runnable.push_back(id);
            }
            Op::Scan { start, max } => {
                let keys = self.scan_keys(&start, max);
                self.start_scan(keys, tag);
            }
            Op::Put { key, value } => {
                let hash = fnv1a64(&key);
                let op = OpState::Put(PutOp::new(key, value, hash));
                self.start_write(tag, hash, op);
            }
            Op::Delete { key } => {
                let hash = fnv1a64(&key);
                let op = OpState::Delete(DeleteOp::new(key, hash));
                self.start_write(tag, hash, op);
            }
        }
    }

    /// A get answered at once if it needs no I/O: the key is missing, or its block is cached
    /// (and no write of the key is in progress, which the get would have to see in order).
    /// No allocation, no operation slot, no completion; [`CachedGet::Miss`] otherwise, and
    /// the caller submits an [`Op::Get`]. The answer is what a submitted get would return.
    pub fn get_cached(&mut self, key: &[u8]) -> CachedGet<'_> {
        if kv_proto::check_key(key).is_err() || self.keys.is_busy(|| fnv1a64(key)) {
            return CachedGet::Miss;
        }
        let r = get::get_cached(&mut self.core, key);
        if r != CachedGet::Miss {
            self.ops_completed += 1;
        }
        r
    }

    /// Like a submitted [`Op::Scan`], limited to the keys for which `keep` holds (decided
    /// from the in-memory index, so the values of other keys are never read): up to `max`
    /// such items with key ≥ `start`, in key order, completing with [`Reply::Items`]. The
    /// replicated service scans one shard of the worker's keys this way.
    pub fn submit_scan_where(
        &mut self,
        start: &[u8],
        max: usize,
        keep: &dyn Fn(&[u8]) -> bool,
        tag: u64,
    ) {
        self.pending += 1;
        if let Err(e) = kv_proto::check_key(start) {
            self.ready.push(Completion {
                tag,
                result: Err(e.into()),
            });
            return;
        }
        let keys = self
            .core
            .index
            .range_keys_where(start, max, keep)
            .into_iter()
            .map(<[u8]>::into_vec)
            .collect();
        self.start_scan(keys, tag);
    }

    /// Up to `max` keys ≥ `start` for which `keep` holds, in key order, from the in-memory
    /// index (no I/O; keys whose writes are still in progress may or may not be listed).
    pub fn keys_where(
        &self,
        start: &[u8],
        max: usize,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Vec<Box<[u8]>> {
        self.core.index.range_keys_where(start, max, keep)
    }

    /// A put or delete runs at once unless a write of the same key is running.
    fn start_write(&mut self, tag: u64, hash: u64, op: OpState) {
        let id = self.ops.insert(OpEntry { tag, op });
        if self.keys.admit(hash, id) {
            self.runnable.push_back(id);
        }
    }

    /// Up to `max` of this worker's keys ≥ `start`, in order, from the index alone (no I/O).
    ///
    /// A scan across workers asks each worker for its keys, keeps the first `max` of them all
    /// ([`choose_scan_keys`](crate::choose_scan_keys)), and reads only those with
    /// [`Worker::submit_scan_of`], instead of reading `max` items in every worker and
    /// throwing the surplus away.
    pub fn scan_keys(&self, start: &[u8], max: usize) -> Vec<Vec<u8>> {
        self.core
            .index
            .range_keys(start, max)
            .into_iter()
            .map(<[u8]>::into_vec)
            .collect()
    }

    /// Enqueues the read of exactly `keys` (this worker's, normally from
    /// [`Worker::scan_keys`]); it completes with [`Reply::Items`] in the order of `keys`,
    /// leaving out keys deleted meanwhile. Keys over [`MAX_KEY_LEN`](crate::MAX_KEY_LEN)
    /// complete with [`Error::KeyTooLarge`]. The missing blocks are read in one batch, each
    /// once.
    pub fn submit_scan_of(&mut self, keys: Vec<Vec<u8>>, tag: u64) {
        self.pending += 1;
        if let Some(Err(e)) = keys
            .iter()
            .map(|k| kv_proto::check_key(k))
            .find(Result::is_err)
        {
            self.ready.push(Completion {
                tag,
                result: Err(e.into()),
            });
            return;
        }
        self.start_scan(keys, tag);
    }

    /// Starts a scan of `keys` (counted in `pending` by the caller).
    fn start_scan(&mut self, keys: Vec<Vec<u8>>, tag: u64) {
        if keys.is_empty() {
            self.complete(tag, Ok(Reply::Items(Vec::new())));
            return;
        }
        let id = self.ops.insert(OpEntry {
            tag,
            op: OpState::Scan(ScanOp::new(keys)),
        });
        self.runnable.push_back(id);
    }

    /// Makes progress without blocking: reaps I/O completions, runs operations, hands the
    /// gathered I/O to the backend, and appends finished operations to `out`. Returns how
    /// many were appended.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        self.reap();
        while let Some(id) = self.runnable.pop_front() {
            self.run(id);
        }
        let c = &mut self.core;
        c.blocks.issue(&mut c.backend, &c.slabs);
        if let Err(e) = c.backend.flush() {
            tracing::warn!(worker = c.id, error = %e, "submitting I/O failed; will retry");
        }
        let n = self.ready.len();
        self.pending -= n.min(self.pending);
        out.append(&mut self.ready);
        n
    }

    /// Makes every write that has completed so far durable — it survives power loss — with
    /// an `fsync` of each of the worker's slab files and of the data directory. Blocking.
    ///
    /// For callers that run without [`SyncMode::Dsync`](crate::SyncMode::Dsync) but need a
    /// durability point now and then: the replicated service, before it compacts its Raft
    /// log below what the engine applied. Writes still in flight are not covered.
    pub fn sync(&mut self) -> Result<()> {
        let c = &mut self.core;
        for s in c.slabs.iter().flatten() {
            c.backend
                .sync(s.file())
                .map_err(|e| Error::io("syncing a slab file", e))?;
        }
        c.backend
            .sync_dir()
            .map_err(|e| Error::io("syncing the data directory", e))
    }

    /// Blocks until at least one I/O completes, unless there is nothing in flight or
    /// something is already ready for [`Worker::poll`]. Call `poll` afterwards.
    pub fn wait(&mut self) -> Result<()> {
        if !self.ready.is_empty() || !self.runnable.is_empty() || self.core.backend.in_flight() == 0
        {
            return Ok(());
        }
        self.core
            .backend
            .wait()
            .map_err(|e| Error::io("waiting for I/O completions", e))
    }

    /// Reaps completions and hands each operation concerned its event.
    fn reap(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        let c = &mut self.core;
        c.blocks.complete(&mut c.backend, &mut events);
        for ev in events.drain(..) {
            match ev {
                Event::Retry(id) => self.runnable.push_back(id),
                Event::Written(id, r) => self.advance(id, |op, id, core| match op {
                    OpState::Put(p) => p.written(id, core, r),
                    OpState::Delete(d) => d.written(id, core, r),
                    OpState::Get(_) | OpState::Scan(_) => Step::Wait,
                }),
                Event::ReadFailed(id, e) => self.advance(id, |op, _, core| match op {
                    OpState::Get(g) => g.read_failed(e),
                    OpState::Put(p) => p.read_failed(core, e),
                    OpState::Delete(d) => d.read_failed(e),
                    OpState::Scan(s) => s.read_failed(e),
                }),
            }
        }
        self.events = events;
    }

    /// Runs an operation as far as it goes.
    fn run(&mut self, id: OpId) {
        self.advance(id, |op, id, core| match op {
            OpState::Get(g) => g.step(id, core),
            OpState::Put(p) => p.step(id, core),
            OpState::Delete(d) => d.step(id, core),
            OpState::Scan(s) => s.step(id, core),
        });
    }

    /// Applies `f` to operation `id` and finishes it if that was its last step.
    fn advance<F>(&mut self, id: OpId, f: F)
    where
        F: FnOnce(&mut OpState, OpId, &mut Core<B>) -> Step,
    {
        let Some(entry) = self.ops.get_mut(id) else {
            return;
        };
        if let Step::Done(result) = f(&mut entry.op, id, &mut self.core) {
            self.finish(id, result);
        }
    }

    /// Completes an operation and frees its handle.
    fn finish(&mut self, id: OpId, result: Result<Reply>) {
        let Some(entry) = self.ops.try_remove(id) else {
            return;
        };
        match entry.op {
            OpState::Scan(s) => {
                if let Ok(Reply::Items(items)) = &result {
                    self.scan_items += items.len() as u64;
                    self.scan_items_uncached += s.uncached.min(items.len() as u64);
                }
                self.complete(entry.tag, result);
            }
            OpState::Put(PutOp { hash, .. }) | OpState::Delete(DeleteOp { hash, .. }) => {
                if let Some(next) = self.keys.release(hash) {
                    self.runnable.push_back(next);
                }
                self.complete(entry.tag, result);
            }
            OpState::Get(_) => self.complete(entry.tag, result),
        }
    }

    fn complete(&mut self, tag: u64, result: Result<Reply>) {
        self.ops_completed += 1;
        self.ready.push(Completion { tag, result });
    }
}
