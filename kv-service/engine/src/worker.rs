//! A shared-nothing worker: owns a disjoint part of the key space with its own slab files,
//! index, page cache and io_uring ring. It is a state machine driven by two calls:
//!
//! 1. [`Worker::submit`] enqueues an operation (no I/O, no system call);
//! 2. [`Worker::poll`] reaps I/O completions without blocking, runs every operation that
//!    can make progress, submits the gathered reads and writes to io_uring in one system
//!    call (at most `queue_depth` in flight), and hands back finished operations.
//!
//! [`Worker::wait`] blocks until an I/O completes, for a thread with nothing else to do. A
//! thread that also runs an RPC event loop calls `submit` for each request and `poll` on
//! every loop iteration, so a request goes from network to disk with no hand-off.
//!
//! Ordering: write operations (put, delete) on the same key run one after another, in
//! submission order; reads see the latest applied write (possibly not yet acknowledged).
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::path::PathBuf;

use kv_proto::{Op, Reply};

use super::error::{Error, Result};
use super::fnv1a64;
use super::index::{Index, Location};
use super::ioengine::{IoRequest, Ring};
use super::pagecache::{block_key, KeyHasher, PageCache, WriteState};
use super::record::{self, Slot};
use super::recovery::{Recovered, RecoveryStats};
use super::slab::{self, Geometry, Slab, MAX_VALUE_LEN, PAGE};

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
    /// `io_uring_enter` calls made to submit.
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
}

#[derive(Clone, Copy, Debug)]
enum PutPhase {
    Start,
    Write {
        target: Location,
        fresh: bool,
        old: Option<Location>,
        applied: bool,
    },
    Tombstone {
        old: Location,
        applied: bool,
    },
}

enum St {
    Free,
    Get {
        key: Vec<u8>,
        parent: Option<(u32, usize)>,
    },
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
        hash: u64,
        phase: PutPhase,
    },
    Delete {
        key: Vec<u8>,
        hash: u64,
        loc: Option<Location>,
    },
    Scan {
        results: Vec<Option<(Vec<u8>, Vec<u8>)>>,
        pending: usize,
        error: Option<Error>,
    },
}

struct OpSlot {
    tag: u64,
    st: St,
}

type FastMap<V> = HashMap<u64, V, BuildHasherDefault<KeyHasher>>;

/// One worker. `Send`: move it to the thread that will drive it.
pub struct Worker {
    id: usize,
    dir: PathBuf,
    dsync: bool,
    max_file_bytes: Option<u64>,
    slabs: Vec<Option<Slab>>,
    index: Index,
    next_seq: u64,
    cache: PageCache,
    ring: Ring,
    ops: Vec<OpSlot>,
    free_ops: Vec<u32>,
    busy: FastMap<VecDeque<u32>>,
    runnable: VecDeque<u32>,
    io_queue: VecDeque<(u32, bool)>,
    ready: Vec<Completion>,
    cqes: Vec<(u64, i32)>,
    scratch: VecDeque<u32>,
    pending: usize,
    stats: WorkerStats,
    recovery: RecoveryStats,
}

pub(crate) struct WorkerParams {
    pub(crate) id: usize,
    pub(crate) dir: PathBuf,
    pub(crate) dsync: bool,
    pub(crate) max_file_bytes: Option<u64>,
    pub(crate) cache_bytes: usize,
    pub(crate) queue_depth: u32,
}

impl Worker {
    pub(crate) fn new(p: WorkerParams, rec: Recovered) -> Result<Worker> {
        let ring = Ring::new(p.queue_depth)?;
        Ok(Worker {
            id: p.id,
            dir: p.dir,
            dsync: p.dsync,
            max_file_bytes: p.max_file_bytes,
            slabs: rec.slabs,
            index: rec.index,
            next_seq: rec.next_seq,
            cache: PageCache::new(p.cache_bytes),
            ring,
            ops: Vec::new(),
            free_ops: Vec::new(),
            busy: FastMap::default(),
            runnable: VecDeque::new(),
            io_queue: VecDeque::new(),
            ready: Vec::new(),
            cqes: Vec::new(),
            scratch: VecDeque::new(),
            pending: 0,
            stats: WorkerStats::default(),
            recovery: rec.stats,
        })
    }

    /// This worker's number (keys with `partition_of(key) == id()` belong to it).
    pub fn id(&self) -> usize {
        self.id
    }

    /// Number of live items.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether the worker holds no items.
    pub fn is_empty(&self) -> bool {
        self.index.len() == 0
    }

    /// Operations submitted and not yet returned by [`Worker::poll`].
    pub fn pending(&self) -> usize {
        self.pending
    }

    /// What recovery found when this worker was opened.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery
    }

    /// Current counters.
    pub fn stats(&self) -> WorkerStats {
        let mut s = self.stats;
        s.submits = self.ring.submits;
        s.cache_hits = self.cache.hits;
        s.cache_misses = self.cache.misses;
        s.items = self.index.len() as u64;
        s.index_bytes = self.index.approx_bytes() as u64;
        s.cache_bytes = self.cache.used_bytes() as u64;
        s.file_bytes = self.slabs.iter().flatten().map(|s| s.len()).sum();
        s.free_slots = self
            .slabs
            .iter()
            .flatten()
            .map(|s| s.free.len() as u64)
            .sum();
        s
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
        let (st, write_hash) = match op {
            Op::Get { key } => (St::Get { key, parent: None }, None),
            Op::Scan { start, max } => {
                let id = self.alloc_op(tag, St::Free);
                self.start_scan(id, &start, max);
                return;
            }
            Op::Put { key, value } => {
                let hash = fnv1a64(&key);
                (
                    St::Put {
                        key,
                        value,
                        hash,
                        phase: PutPhase::Start,
                    },
                    Some(hash),
                )
            }
            Op::Delete { key } => {
                let hash = fnv1a64(&key);
                (
                    St::Delete {
                        key,
                        hash,
                        loc: None,
                    },
                    Some(hash),
                )
            }
        };
        let id = self.alloc_op(tag, st);
        match write_hash {
            Some(h) => match self.busy.get_mut(&h) {
                Some(queue) => queue.push_back(id),
                None => {
                    self.busy.insert(h, VecDeque::new());
                    self.runnable.push_back(id);
                }
            },
            None => self.runnable.push_back(id),
        }
    }

    /// Makes progress without blocking: reaps I/O completions, runs operations, submits
    /// the gathered I/O in one system call, and appends finished operations to `out`.
    /// Returns how many were appended.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        self.reap();
        self.drive();
        self.flush();
        let n = self.ready.len();
        self.pending -= n.min(self.pending);
        out.append(&mut self.ready);
        n
    }

    /// Blocks until at least one I/O completes, unless there is nothing in flight or
    /// something is already ready for [`Worker::poll`]. Call `poll` afterwards.
    pub fn wait(&mut self) -> Result<()> {
        if !self.ready.is_empty() || !self.runnable.is_empty() || self.ring.in_flight() == 0 {
            return Ok(());
        }
        self.ring
            .wait()
            .map_err(|e| Error::io("waiting for I/O completions", e))
    }

    fn alloc_op(&mut self, tag: u64, st: St) -> u32 {
        if let Some(id) = self.free_ops.pop() {
            if let Some(slot) = self.ops.get_mut(id as usize) {
                *slot = OpSlot { tag, st };
                return id;
            }
        }
        self.ops.push(OpSlot { tag, st });
        u32::try_from(self.ops.len() - 1).unwrap_or(u32::MAX)
    }

    fn take_st(&mut self, id: u32) -> St {
        match self.ops.get_mut(id as usize) {
            Some(s) => std::mem::replace(&mut s.st, St::Free),
            None => St::Free,
        }
    }

    fn put_st(&mut self, id: u32, st: St) {
        if let Some(s) = self.ops.get_mut(id as usize) {
            s.st = st;
        }
    }

    /// Completes an operation (top level or scan sub-read) and frees its slot.
    fn finish(&mut self, id: u32, result: Result<Reply>) {
        let st = self.take_st(id);
        let tag = self.ops.get(id as usize).map(|s| s.tag).unwrap_or(0);
        self.free_ops.push(id);
        match st {
            St::Get {
                key,
                parent: Some((parent, pos)),
            } => self.finish_sub_get(parent, pos, key, result),
            St::Put { hash, .. } | St::Delete { hash, .. } => {
                self.release_key(hash);
                self.complete(tag, result);
            }
            _ => self.complete(tag, result),
        }
    }

    fn complete(&mut self, tag: u64, result: Result<Reply>) {
        self.stats.ops_completed += 1;
        self.ready.push(Completion { tag, result });
    }

    fn release_key(&mut self, hash: u64) {
        let next = match self.busy.get_mut(&hash) {
            Some(q) => q.pop_front(),
            None => return,
        };
        match next {
            Some(id) => self.runnable.push_back(id),
            None => {
                self.busy.remove(&hash);
            }
        }
    }

    fn start_scan(&mut self, id: u32, start: &[u8], max: usize) {
        let keys = self.index.range_keys(start, max);
        if keys.is_empty() {
            self.finish(id, Ok(Reply::Items(Vec::new())));
            return;
        }
        let n = keys.len();
        self.put_st(
            id,
            St::Scan {
                results: (0..n).map(|_| None).collect(),
                pending: n,
                error: None,
            },
        );
        for (pos, key) in keys.into_iter().enumerate() {
            let sub = self.alloc_op(
                0,
                St::Get {
                    key: key.into_vec(),
                    parent: Some((id, pos)),
                },
            );
            self.runnable.push_back(sub);
        }
    }

    fn finish_sub_get(&mut self, parent: u32, pos: usize, key: Vec<u8>, r: Result<Reply>) {
        let mut st = self.take_st(parent);
        let done = if let St::Scan {
            results,
            pending,
            error,
        } = &mut st
        {
            match r {
                Ok(Reply::Value(v)) => {
                    if let Some(slot) = results.get_mut(pos) {
                        *slot = Some((key, v));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
            *pending -= 1;
            *pending == 0
        } else {
            false
        };
        if !done {
            self.put_st(parent, st);
            return;
        }
        let result = match st {
            St::Scan { error: Some(e), .. } => Err(e),
            St::Scan { results, .. } => Ok(Reply::Items(results.into_iter().flatten().collect())),
            _ => Err(Error::Closed),
        };
        self.finish(parent, result);
    }

    /// Runs every runnable operation as far as it can go without waiting.
    fn drive(&mut self) {
        while let Some(id) = self.runnable.pop_front() {
            self.run(id);
        }
    }

    fn run(&mut self, id: u32) {
        match self.take_st(id) {
            St::Get { key, parent } => self.run_get(id, key, parent),
            St::Put {
                key,
                value,
                hash,
                phase,
            } => self.run_put(id, key, value, hash, phase),
            St::Delete { key, hash, loc } => self.run_delete(id, key, hash, loc),
            other => self.put_st(id, other),
        }
    }

    /// Makes sure the block is cached and usable. `None`: the operation was queued on the
    /// block and will be made runnable again.
    fn acquire(&mut self, class: u8, block: u64, id: u32, write: bool, fresh: bool) -> Option<u32> {
        let key = block_key(class, block);
        if let Some(e) = self.cache.lookup(key) {
            let entry = self.cache.entry_mut(e)?;
            // A reader needs the block loaded, nothing more: it reads the block as the last
            // writer applied to it left it (that write may still be in flight, as it always
            // could); writers queued behind an in-flight write have not touched it yet.
            // Making readers queue behind those writers made every read of a hot block wait
            // for one or two disk writes (YCSB-D: read p50 163 µs).
            if entry.loading
                || (write && (entry.write == WriteState::InFlight || !entry.blocked.is_empty()))
            {
                entry.blocked.push_back(id);
                return None;
            }
            return Some(e);
        }
        let size = Geometry::of(class).block_size;
        let e = self.cache.insert(key, size);
        let entry = self.cache.entry_mut(e)?;
        if fresh {
            entry.buf.as_mut_slice().fill(0);
            return Some(e);
        }
        entry.loading = true;
        entry.blocked.push_back(id);
        self.io_queue.push_back((e, false));
        None
    }

    fn slot_bytes(&mut self, e: u32, loc: Location) -> Option<&mut [u8]> {
        let g = Geometry::of(loc.class);
        let (_, off) = g.locate(loc.slot);
        self.cache
            .entry_mut(e)?
            .buf
            .as_mut_slice()
            .get_mut(off..off + g.slot_size)
    }

    /// Queues (or joins) the block's write, covering the slot's first `used` bytes.
    fn mark_write(&mut self, e: u32, loc: Location, used: usize, id: u32) {
        let g = Geometry::of(loc.class);
        let (_, off) = g.locate(loc.slot);
        let Some(entry) = self.cache.entry_mut(e) else {
            return;
        };
        let need = (off + used).div_ceil(PAGE) * PAGE;
        entry.write_len = entry.write_len.max(need.min(g.block_size));
        entry.write_waiters.push(id);
        if entry.write == WriteState::Idle {
            entry.write = WriteState::Queued;
            self.io_queue.push_back((e, true));
        }
    }

    fn corrupt(&self, loc: Location) -> Error {
        Error::Corrupt {
            file: slab::file_name(self.id, loc.class),
            slot: u64::from(loc.slot),
        }
    }

    fn run_get(&mut self, id: u32, key: Vec<u8>, parent: Option<(u32, usize)>) {
        let Some(loc) = self.index.get(&key) else {
            self.put_st(id, St::Get { key, parent });
            self.finish(id, Ok(Reply::NotFound));
            return;
        };
        let (block, _) = Geometry::of(loc.class).locate(loc.slot);
        let Some(e) = self.acquire(loc.class, block, id, false, false) else {
            self.put_st(id, St::Get { key, parent });
            return;
        };
        let result = match self.slot_bytes(e, loc).map(|b| record::decode(b)) {
            Some(Slot::Live { key: k, value, .. }) if k == key.as_slice() => {
                Ok(Reply::Value(value.to_vec()))
            }
            _ => Err(self.corrupt(loc)),
        };
        self.put_st(id, St::Get { key, parent });
        self.finish(id, result);
    }

    fn slab_mut(&mut self, class: u8) -> Result<&mut Slab> {
        let c = usize::from(class);
        let missing = matches!(self.slabs.get(c), Some(None));
        if missing {
            let s = Slab::open(&self.dir, self.id, class, self.dsync, self.max_file_bytes)?;
            if let Some(slot) = self.slabs.get_mut(c) {
                *slot = Some(s);
            }
        }
        match self.slabs.get_mut(c) {
            Some(Some(s)) => Ok(s),
            _ => Err(Error::InvalidConfig(format!("no size class {class}"))),
        }
    }

    fn release_slot(&mut self, loc: Location) {
        if let Some(Some(s)) = self.slabs.get_mut(usize::from(loc.class)) {
            s.release(loc.slot);
        }
    }

    /// Puts a put's state back in its slot (to wait, or before finishing it).
    fn park_put(&mut self, id: u32, key: Vec<u8>, value: Vec<u8>, hash: u64, phase: PutPhase) {
        self.put_st(
            id,
            St::Put {
                key,
                value,
                hash,
                phase,
            },
        );
    }

    fn run_put(&mut self, id: u32, key: Vec<u8>, value: Vec<u8>, hash: u64, phase: PutPhase) {
        match phase {
            PutPhase::Start => {
                let Some(class) = slab::class_for(key.len(), value.len()) else {
                    let len = value.len();
                    self.park_put(id, key, value, hash, phase);
                    self.finish(
                        id,
                        Err(Error::ValueTooLarge {
                            len,
                            max: MAX_VALUE_LEN,
                        }),
                    );
                    return;
                };
                let old = self.index.get(&key);
                let (target, fresh) = match old {
                    Some(o) if o.class == class => (o, false),
                    _ => match self.slab_mut(class).and_then(|s| s.allocate()) {
                        Ok(a) => (
                            Location {
                                class,
                                slot: a.slot,
                            },
                            a.fresh_block,
                        ),
                        Err(e) => {
                            self.park_put(id, key, value, hash, phase);
                            self.finish(id, Err(e));
                            return;
                        }
                    },
                };
                let phase = PutPhase::Write {
                    target,
                    fresh,
                    old,
                    applied: false,
                };
                self.run_put(id, key, value, hash, phase);
            }
            PutPhase::Write {
                target,
                fresh,
                old,
                applied: false,
            } => {
                let (block, _) = Geometry::of(target.class).locate(target.slot);
                let Some(e) = self.acquire(target.class, block, id, true, fresh) else {
                    self.park_put(id, key, value, hash, phase);
                    return;
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                let used = self
                    .slot_bytes(e, target)
                    .and_then(|b| record::encode_live(b, seq, &key, &value));
                let Some(used) = used else {
                    let err = self.corrupt(target);
                    self.park_put(id, key, value, hash, phase);
                    self.fail(id, err);
                    return;
                };
                self.index.insert(&key, target);
                self.mark_write(e, target, used, id);
                let phase = PutPhase::Write {
                    target,
                    fresh,
                    old,
                    applied: true,
                };
                self.park_put(id, key, value, hash, phase);
            }
            PutPhase::Tombstone {
                old,
                applied: false,
            } => {
                let (block, _) = Geometry::of(old.class).locate(old.slot);
                let Some(e) = self.acquire(old.class, block, id, true, false) else {
                    self.park_put(id, key, value, hash, phase);
                    return;
                };
                let seq = self.next_seq;
                self.next_seq += 1;
                let used = self
                    .slot_bytes(e, old)
                    .and_then(|b| record::encode_tombstone(b, seq))
                    .unwrap_or(record::HEADER_LEN);
                self.mark_write(e, old, used, id);
                let phase = PutPhase::Tombstone { old, applied: true };
                self.park_put(id, key, value, hash, phase);
            }
            // Applied phases wait for their write; nothing to run.
            _ => self.park_put(id, key, value, hash, phase),
        }
    }

    fn run_delete(&mut self, id: u32, key: Vec<u8>, hash: u64, loc: Option<Location>) {
        if loc.is_some() {
            // Tombstone applied; waiting for its write.
            self.put_st(id, St::Delete { key, hash, loc });
            return;
        }
        let Some(target) = self.index.get(&key) else {
            self.put_st(id, St::Delete { key, hash, loc });
            self.finish(id, Ok(Reply::NotFound));
            return;
        };
        let (block, _) = Geometry::of(target.class).locate(target.slot);
        let Some(e) = self.acquire(target.class, block, id, true, false) else {
            self.put_st(id, St::Delete { key, hash, loc });
            return;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let used = self
            .slot_bytes(e, target)
            .and_then(|b| record::encode_tombstone(b, seq))
            .unwrap_or(record::HEADER_LEN);
        self.index.remove(&key);
        self.mark_write(e, target, used, id);
        self.put_st(
            id,
            St::Delete {
                key,
                hash,
                loc: Some(target),
            },
        );
    }

    /// The block write carrying this operation's change completed (or failed).
    fn on_write_done(&mut self, id: u32, result: Result<()>) {
        if let Err(e) = result {
            self.fail(id, e);
            return;
        }
        match self.take_st(id) {
            St::Put {
                key,
                value,
                hash,
                phase:
                    PutPhase::Write {
                        target,
                        old,
                        applied: true,
                        ..
                    },
            } => match old {
                Some(old) if old != target => {
                    let phase = PutPhase::Tombstone {
                        old,
                        applied: false,
                    };
                    self.park_put(id, key, value, hash, phase);
                    self.runnable.push_back(id);
                }
                _ => {
                    self.park_put(id, key, value, hash, PutPhase::Start);
                    self.finish(id, Ok(Reply::Written));
                }
            },
            St::Put {
                key,
                value,
                hash,
                phase: PutPhase::Tombstone { old, applied: true },
            } => {
                self.release_slot(old);
                self.park_put(id, key, value, hash, PutPhase::Start);
                self.finish(id, Ok(Reply::Written));
            }
            St::Delete {
                key,
                hash,
                loc: Some(loc),
            } => {
                self.release_slot(loc);
                self.put_st(
                    id,
                    St::Delete {
                        key,
                        hash,
                        loc: None,
                    },
                );
                self.finish(id, Ok(Reply::Deleted));
            }
            other => self.put_st(id, other),
        }
    }

    /// Fails an operation, undoing what it changed in memory.
    fn fail(&mut self, id: u32, err: Error) {
        let st = self.take_st(id);
        match &st {
            St::Put {
                key,
                phase:
                    PutPhase::Write {
                        target,
                        old,
                        applied,
                        ..
                    },
                ..
            } => {
                if *applied {
                    match old {
                        Some(o) => {
                            self.index.insert(key, *o);
                        }
                        None => {
                            self.index.remove(key);
                        }
                    }
                }
                if *old != Some(*target) {
                    self.release_slot(*target);
                }
            }
            St::Put {
                phase: PutPhase::Tombstone { old, .. },
                ..
            } => {
                // The new copy is durable; the old one keeps its slot (not reused) and loses
                // to the newer sequence at the next recovery.
                tracing::error!(worker = self.id, class = old.class, slot = old.slot, error = %err, "could not tombstone the old copy of a moved item");
            }
            St::Delete {
                key,
                loc: Some(loc),
                ..
            } => {
                self.index.insert(key, *loc);
            }
            _ => {}
        }
        let st = match st {
            St::Delete { key, hash, .. } => St::Delete {
                key,
                hash,
                loc: None,
            },
            other => other,
        };
        self.put_st(id, st);
        self.finish(id, Err(err));
    }

    /// Reaps completions and applies them.
    fn reap(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.clear();
        self.ring.reap(&mut cqes);
        for &(ud, res) in &cqes {
            let e = u32::try_from(ud >> 1).unwrap_or(u32::MAX);
            let write = ud & 1 == 1;
            self.on_io_done(e, write, res);
        }
        self.cqes = cqes;
    }

    fn on_io_done(&mut self, e: u32, write: bool, res: i32) {
        let Some(entry) = self.cache.entry_mut(e) else {
            return;
        };
        let expected = if write {
            entry.write_len
        } else {
            entry.buf.len()
        };
        let ok = usize::try_from(res).map(|n| n == expected).unwrap_or(false);
        let err = |ctx| {
            if res < 0 {
                Error::errno(ctx, -res)
            } else {
                Error::io(ctx, std::io::Error::from(std::io::ErrorKind::UnexpectedEof))
            }
        };
        // Everyone blocked on the block may try again.
        let mut blocked = std::mem::take(&mut self.scratch);
        std::mem::swap(&mut blocked, &mut entry.blocked);
        if write {
            entry.write = WriteState::Idle;
            entry.write_len = 0;
            let waiters = std::mem::take(&mut entry.write_waiters);
            if !ok {
                self.cache.invalidate(e);
            }
            for &w in &waiters {
                let r = if ok {
                    Ok(())
                } else {
                    Err(err("writing a block"))
                };
                self.on_write_done(w, r);
            }
            // Give the vector's capacity back if the entry is still there.
            if let Some(entry) = self.cache.entry_mut(e) {
                if entry.write_waiters.is_empty() {
                    let mut waiters = waiters;
                    waiters.clear();
                    entry.write_waiters = waiters;
                }
            }
            self.runnable.extend(blocked.drain(..));
        } else {
            entry.loading = false;
            if ok {
                self.runnable.extend(blocked.drain(..));
            } else {
                self.cache.invalidate(e);
                for w in blocked.drain(..) {
                    self.fail(w, err("reading a block"));
                }
            }
        }
        self.scratch = blocked;
    }

    /// Moves queued I/O into the ring (up to the depth limit) and submits it in one call.
    fn flush(&mut self) {
        while self.ring.has_room() {
            let Some(&(e, write)) = self.io_queue.front() else {
                break;
            };
            let Some(entry) = self.cache.entry_mut(e) else {
                self.io_queue.pop_front();
                continue;
            };
            let class = (entry.key >> 56) as u8;
            let block = entry.key & ((1 << 56) - 1);
            let block_size = entry.buf.len();
            let len = if write { entry.write_len } else { block_size };
            if write {
                entry.write = WriteState::InFlight;
            }
            let buf = entry.buf.as_mut_ptr();
            let fd = match self.slabs.get(usize::from(class)) {
                Some(Some(s)) => s.fd(),
                _ => {
                    self.io_queue.pop_front();
                    continue;
                }
            };
            let req = IoRequest {
                write,
                fd,
                buf,
                len: u32::try_from(len).unwrap_or(u32::MAX),
                offset: block * block_size as u64,
                user_data: u64::from(e) << 1 | u64::from(write),
            };
            // SAFETY: the buffer belongs to cache entry `e`, which has a read or write
            // outstanding from now until its completion is reaped, so the cache neither
            // evicts nor removes it (busy entries are skipped) and no operation touches
            // its bytes (readers wait while loading, writers while a write is in flight);
            // `Drop for Worker` drains the ring before the cache is freed.
            if !unsafe { self.ring.push(req) } {
                if write {
                    if let Some(entry) = self.cache.entry_mut(e) {
                        entry.write = WriteState::Queued;
                    }
                }
                break;
            }
            self.io_queue.pop_front();
            if write {
                self.stats.writes += 1;
                self.stats.write_bytes += len as u64;
            } else {
                self.stats.reads += 1;
                self.stats.read_bytes += len as u64;
            }
        }
        if let Err(e) = self.ring.submit_due() {
            tracing::warn!(worker = self.id, error = %e, "io_uring submit failed; will retry");
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // The kernel may still read or write cache buffers: wait for every request.
        let mut cqes = Vec::new();
        while self.ring.in_flight() > 0 {
            if self.ring.wait().is_err() {
                // Cannot be sure the kernel is done with the buffers: leak them.
                let cache = std::mem::replace(&mut self.cache, PageCache::new(0));
                std::mem::forget(cache);
                return;
            }
            cqes.clear();
            self.ring.reap(&mut cqes);
        }
    }
}
