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
//! cached blocks and their I/O (and, in the staged durability modes, the writeback of dirty
//! blocks), `stage.rs` the staging area where a write becomes durable in those modes, and each
//! operation is a state machine of its own (`get.rs`, `put.rs` — where a put is acknowledged
//! —, `delete.rs`, `scan.rs`) that runs against the worker's [`Core`] until it must wait for a
//! block or a write.
//!
//! A change goes to disk one of two ways ([`Core::write_record`]): in
//! [`Durability::Page`](crate::Durability::Page) the block's own write (O_DIRECT, in place)
//! carries it and acknowledges it; in the staged modes the record is appended to the staging
//! area, which acknowledges it, and the block is written back later with all the changes it
//! gathered meanwhile.
//!
//! Ordering: write operations (put, delete) on the same key run one after another, in
//! submission order; reads see the latest applied write (possibly not yet acknowledged).

mod blocks;
mod delete;
mod get;
mod keys;
mod put;
mod reorg;
mod scan;
mod stage;

pub use get::CachedGet;
pub use scan::choose_scan_keys;

use std::collections::{HashMap, VecDeque};

use ::slab::Slab as OpTable;
use kv_proto::{fnv1a64, Op, Reply};

use crate::backend::{Backend, DiskBackend, FileId, IoCompletion};
use crate::error::{Error, Result};
use crate::index::{Index, Location};
use crate::pagecache::block_key;
use crate::record;
use crate::recovery::{Recovered, RecoveryStats};
use crate::slab::{self as slabs, Allocated, Geometry, Slab, MAX_VALUE_LEN};

use blocks::{Blocks, Event, Phase};
use delete::DeleteOp;
use get::GetOp;
use keys::KeyQueue;
use put::PutOp;
use reorg::Reorg;
use scan::ScanOp;
use stage::Stage;

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
    /// Block read requests submitted; a coalesced read of neighbouring blocks counts once.
    pub reads: u64,
    /// Blocks loaded into the page cache by those reads (≥ `reads`: a coalesced read loads
    /// several).
    pub blocks_read: u64,
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
    /// Staged modes: records appended to the staging area.
    pub staged_records: u64,
    /// Staged modes: chunks written to the staging area (one write each).
    pub stage_chunks: u64,
    /// Staged modes: bytes written to the staging area.
    pub stage_bytes: u64,
    /// Flushes of the staging area begun (periodic: `fdatasync`s; sync: chunk writes).
    pub flushes_started: u64,
    /// Flushes of the staging area completed successfully: every write acknowledged before
    /// the last one began is on stable storage.
    pub flushes_completed: u64,
    /// Flushes of the staging area that failed.
    pub flush_errors: u64,
    /// Staged modes: blocks with changes not yet written back.
    pub dirty_blocks: u64,
    /// Staged modes: writeback batches completed.
    pub writeback_batches: u64,
    /// Staged modes: blocks written back (and synced).
    pub writeback_blocks: u64,
    /// Staged modes: block writebacks (or their syncs) that failed and were retried.
    pub writeback_failures: u64,
    /// Staged modes: times an operation waited because the staging area (or the cache's
    /// budget of dirty blocks) was full, until a writeback freed room: backpressure.
    pub room_waits: u64,
    /// Items the background reorganisation moved next to their neighbours.
    pub reorg_moves: u64,
    /// Passes of the reorganisation over the whole index completed.
    pub reorg_passes: u64,
}

/// What an I/O's tag says it was: the kind in the top byte, a number below.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Tag {
    /// A block's read, or its write in page mode (number: the cache entry).
    Block = 0,
    /// A block's writeback in a staged mode (number: the item in the batch).
    Writeback = 1,
    /// A write of the staging area in sync mode.
    Chunk = 2,
    /// A flush of the staging area in periodic mode.
    StageSync = 3,
    /// A slab file's sync after a writeback (number: the class).
    SlabSync = 4,
    /// A coalesced read of neighbouring blocks (number: the read's, in `Blocks`).
    Run = 5,
}

impl Tag {
    pub(crate) fn encode(self, n: u32) -> u64 {
        ((self as u64) << 56) | u64::from(n)
    }

    fn decode(tag: u64) -> Option<(Tag, u32)> {
        let n = (tag & 0xFFFF_FFFF) as u32;
        let kind = match tag >> 56 {
            0 => Tag::Block,
            1 => Tag::Writeback,
            2 => Tag::Chunk,
            3 => Tag::StageSync,
            4 => Tag::SlabSync,
            5 => Tag::Run,
            _ => return None,
        };
        Some((kind, n))
    }
}

/// The staging area a staged-mode worker writes to (opened by `open_workers_with`).
pub(crate) struct StageFile {
    pub(crate) file: FileId,
    pub(crate) salt: u64,
    pub(crate) ring: u64,
    /// `None`: sync mode.
    pub(crate) interval_ns: Option<u64>,
}

/// Longest a writeback batch is, in bytes.
const BATCH_BYTES: usize = 16 << 20;

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
    max_file_bytes: Option<u64>,
    /// By size class; `None`: no file for the class yet.
    slabs: Vec<Option<Slab>>,
    index: Index,
    next_seq: u64,
    blocks: Blocks,
    backend: B,
    /// Staged modes: the staging area.
    stage: Option<Stage>,
    /// Staged modes: a slab file was created and the `fsync` of the directory that makes its
    /// entry durable has not succeeded yet. Its records are in the staging area (recovery
    /// recreates a lost file); the next writeback syncs the directory before its batch lets
    /// the staging space go.
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
            self.dir_sync_pending |= self.stage.is_some();
        }
        match self.slabs.get_mut(c) {
            Some(Some(s)) => s.allocate(&mut self.backend),
            _ => Err(Error::InvalidConfig(format!("no size class {class}"))),
        }
    }

    /// A fresh block of `class` at the end of its slab (which exists: it holds the items to
    /// move), every slot of it taken: its first slot (reorganisation).
    fn allocate_block(&mut self, class: u8) -> Result<u32> {
        match self.slabs.get_mut(usize::from(class)) {
            Some(Some(s)) => s.allocate_block(&mut self.backend),
            _ => Err(Error::InvalidConfig(format!("no size class {class}"))),
        }
    }

    /// Returns a slot to its class's free list.
    fn release_slot(&mut self, loc: Location) {
        if let Some(Some(s)) = self.slabs.get_mut(usize::from(loc.class)) {
            s.release(loc.slot);
        }
    }

    /// Starts tombstoning the next stale copy of `key` for operation `id`.
    fn unlink_stale(&mut self, key: &[u8], id: OpId) -> StaleStep {
        let Some(loc) = self.stale.get(key).and_then(|v| v.first().copied()) else {
            return StaleStep::None;
        };
        let (block, _) = slabs::Geometry::of(loc.class).locate(loc.slot);
        let Some(e) = self.blocks.acquire(loc.class, block, id, true, false) else {
            return StaleStep::Wait;
        };
        match self.room(e, loc.class, record::HEADER_LEN, id) {
            Err(err) => StaleStep::Failed(err),
            Ok(false) => StaleStep::Wait,
            Ok(true) => match self.write_record(e, loc, Some(id), record::encode_tombstone) {
                Some(undo) => StaleStep::Started(loc, undo),
                None => StaleStep::Failed(self.corrupt(loc)),
            },
        }
    }

    /// Whether staging area (staged modes) has room now for a change of `rec_len` bytes to
    /// block `e` of `class`; if not, operation `id` waits for room (an [`Event::Retry`]).
    /// `Err` when the change cannot be made: writes are refused (a failed flush), the record
    /// is too large for the staging area, or the ring is full and writebacks fail.
    fn room(&mut self, e: u32, class: u8, rec_len: usize, id: OpId) -> Result<bool> {
        let Some(st) = &self.stage else {
            return Ok(true);
        };
        let tail = self.tail();
        let mut ok = st.room(tail, rec_len)?;
        // The cache's dirty budget: half the cache (a block already dirty costs nothing more).
        let dirty = self.blocks.dirty_bytes();
        if ok && dirty > 0 && !self.blocks.is_dirty(e) {
            let size = Geometry::of(class).block_size;
            ok = dirty + size <= self.blocks.cache_capacity() / 2;
        }
        if ok {
            return Ok(true);
        }
        if let Some(err) = &self.blocks.writeback_error {
            return Err(Error::io(
                "writing back to the slab files (the staging area is full)",
                stage::clone_io_error(err),
            ));
        }
        if let Some(st) = self.stage.as_mut() {
            st.waiters.push(id);
            st.stats.room_waits += 1;
        }
        Ok(false)
    }

    /// The oldest LSN the staging area must keep (staged modes).
    fn tail(&self) -> u64 {
        let head = self.stage.as_ref().map_or(0, Stage::head);
        self.blocks.oldest_needed().unwrap_or(head).min(head)
    }

    /// Writes a record into slot `loc` of cached block `e` — `encode` writes it (with a fresh
    /// sequence number) and returns its length — and queues it to disk: page mode, the
    /// block's write (joining one already queued); staged modes, the staging area (the block
    /// becomes dirty). `waiter`: the operation that gets an [`Event::Written`] for it (always
    /// one in page mode; in staged modes `None` for a record that goes with the previous one,
    /// in its chunk). Returns, in staged modes, the slot's bytes from before (to undo the
    /// change if its write fails: [`Core::restore_slot`]); `None` if the record could not be
    /// encoded (a bug guard: sizes are checked before).
    fn write_record<F>(
        &mut self,
        e: u32,
        loc: Location,
        waiter: Option<OpId>,
        encode: F,
    ) -> Option<Undo>
    where
        F: FnOnce(&mut [u8], u64) -> Option<usize>,
    {
        let seq = self.take_seq();
        let staged = self.stage.is_some();
        let slot = self.blocks.slot_mut(e, loc)?;
        let undo = if staged {
            let n = slot.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            Some(slot.get(..n).unwrap_or_default().to_vec())
        } else {
            None
        };
        let used = encode(slot, seq)?;
        match (self.stage.as_mut(), waiter) {
            (None, Some(id)) => self.blocks.mark_write(e, loc, used, id),
            (None, None) => tracing::error!("a page-mode write without a waiter"),
            (Some(st), _) => {
                let rec = self
                    .blocks
                    .slot(e, loc)
                    .and_then(|b| b.get(..used))
                    .unwrap_or_default();
                let lsn = st.append(loc.class, loc.slot, rec, waiter);
                self.blocks.mark_dirty(e, loc, used, lsn);
            }
        }
        Some(Undo(undo))
    }

    /// Staged modes: the records of these lengths, staged next, go into one chunk.
    fn reserve(&mut self, rec_lens: &[usize]) {
        if let Some(st) = self.stage.as_mut() {
            st.reserve(rec_lens.iter().map(|&l| crate::staging::entry_len(l)).sum());
        }
    }

    /// Staged modes: puts the bytes a failed change replaced back into its slot (in the cache:
    /// the block is dirty, so cached). The staging area may or may not hold the failed
    /// record; like any failed write it may be found after a crash.
    fn restore_slot(&mut self, loc: Location, undo: Undo) {
        let Some(old) = undo.0 else {
            return;
        };
        let (block, _) = Geometry::of(loc.class).locate(loc.slot);
        let Some(e) = self.blocks.peek(block_key(loc.class, block)) else {
            tracing::error!(
                class = loc.class,
                slot = loc.slot,
                "a dirty block left the cache"
            );
            return;
        };
        if let Some(slot) = self.blocks.slot_mut(e, loc) {
            let n = old.len().min(slot.len());
            if let (Some(dst), Some(src)) = (slot.get_mut(..n), old.get(..n)) {
                dst.copy_from_slice(src);
            }
            if let Some(rest) = slot.get_mut(n..) {
                rest.fill(0);
            }
        }
    }

    /// Routes a completed I/O by its tag.
    fn on_io(&mut self, c: IoCompletion, now_ns: u64, events: &mut Vec<Event>) {
        match Tag::decode(c.tag) {
            Some((Tag::Block, e)) => self.blocks.on_complete(e, c, events),
            Some((Tag::Run, r)) => self.blocks.on_run_complete(r, c, events),
            Some((Tag::Writeback, i)) => self.blocks.on_writeback_done(i, c),
            Some((Tag::SlabSync, class)) => {
                self.blocks.on_slab_sync_done(class as u8, &c);
            }
            Some((Tag::Chunk, _)) => {
                if let Some(st) = self.stage.as_mut() {
                    st.on_chunk_done(&mut self.backend, c, events);
                }
            }
            Some((Tag::StageSync, _)) => {
                if let Some(st) = self.stage.as_mut() {
                    st.on_sync_done(&c, now_ns);
                }
            }
            None => tracing::error!(tag = c.tag, "a completion with an unknown tag"),
        }
    }

    /// Staged modes, at the end of a poll: the periodic flush when it is due, and the
    /// writeback of dirty blocks when the staging area or the cache's dirty budget fills up
    /// (each batch waits for the staging area to be durable up to its snapshot, then writes,
    /// then syncs the slab files). Returns whether a batch finished (operations waiting for
    /// room should try again).
    fn maintain(&mut self, now_ns: u64) -> bool {
        let Some(st) = self.stage.as_mut() else {
            return false;
        };
        self.blocks.writeback_ready(st.durable, st.failures);
        if self.blocks.batch_phase() == Some(Phase::SyncDir) {
            let ok = !self.dir_sync_pending
                || match self.backend.sync_dir() {
                    Ok(()) => {
                        self.dir_sync_pending = false;
                        true
                    }
                    Err(e) => {
                        tracing::warn!(worker = self.id, error = %e, "syncing the data directory failed; the writeback is retried");
                        false
                    }
                };
            self.blocks.start_slab_syncs(ok);
        }
        let head = st.head();
        let tail = self.blocks.oldest_needed().unwrap_or(head).min(head);
        let cap = st.capacity();
        let pressure = st.used(tail) > cap / 2
            || self.blocks.dirty_bytes() > self.blocks.cache_capacity() / 4
            || !st.waiters.is_empty();
        let start =
            pressure && self.blocks.batch_phase().is_none() && self.blocks.dirty_blocks() > 0;
        if st.is_sync() {
            if start {
                // The snapshots must lie before their point: close the open chunk first.
                st.seal_now();
                let point = st.head();
                self.blocks.start_writeback(point, st.failures, BATCH_BYTES);
                st.flush(&mut self.backend, now_ns, &mut Vec::new());
            }
        } else {
            let start = start && st.open_is_empty();
            match st.maybe_sync(&mut self.backend, now_ns, start) {
                Some(point) if start => {
                    self.blocks.start_writeback(point, st.failures, BATCH_BYTES);
                }
                None if start && st.all_durable() => {
                    self.blocks
                        .start_writeback(st.durable, st.failures, BATCH_BYTES);
                }
                _ => {}
            }
        }
        self.blocks.writeback_ready(st.durable, st.failures);
        self.blocks.take_finished()
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

/// What [`Core::unlink_stale`] did.
enum StaleStep {
    /// The key has no stale copy.
    None,
    /// The operation waits (for the copy's block, or for room in the staging area).
    Wait,
    /// The tombstone is in the cached block and queued to disk.
    Started(Location, Undo),
    /// It cannot be done.
    Failed(Error),
}

/// A slot's bytes before a change (staged modes; `None` in page mode, where a failed write
/// drops the block from the cache instead).
#[derive(Debug, Default)]
struct Undo(Option<Vec<u8>>);

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
    done: Vec<IoCompletion>,
    ready: Vec<Completion>,
    pending: usize,
    ops_completed: u64,
    scan_items: u64,
    scan_items_uncached: u64,
    recovery: RecoveryStats,
    /// Origin of [`Worker::poll`]'s clock.
    clock: std::time::Instant,
    /// The time of the current (or last) poll, ns.
    now_ns: u64,
    /// Background reorganisation (`worker/reorg.rs`).
    reorg: Reorg,
}

pub(crate) struct WorkerParams {
    pub(crate) id: usize,
    pub(crate) max_file_bytes: Option<u64>,
    pub(crate) cache_bytes: usize,
    pub(crate) queue_depth: u32,
    /// Staged modes: the staging area.
    pub(crate) stage: Option<StageFile>,
    /// Items moved per reorganisation round; 0: off.
    pub(crate) reorg_batch: usize,
    /// Neighbouring blocks are read with one request.
    pub(crate) coalesce_reads: bool,
}

impl<B: Backend> Worker<B> {
    pub(crate) fn new(p: WorkerParams, rec: Recovered, backend: B) -> Worker<B> {
        let stage = p
            .stage
            .map(|s| Stage::new(s.file, s.salt, s.ring, s.interval_ns));
        Worker {
            core: Core {
                id: p.id,
                max_file_bytes: p.max_file_bytes,
                slabs: rec.slabs,
                index: rec.index,
                next_seq: rec.next_seq,
                blocks: Blocks::new(p.cache_bytes, p.queue_depth, p.coalesce_reads),
                backend,
                stage,
                dir_sync_pending: false,
                stale: HashMap::new(),
            },
            ops: OpTable::new(),
            keys: KeyQueue::default(),
            runnable: VecDeque::new(),
            events: Vec::new(),
            done: Vec::new(),
            ready: Vec::new(),
            pending: 0,
            ops_completed: 0,
            scan_items: 0,
            scan_items_uncached: 0,
            recovery: rec.stats,
            clock: std::time::Instant::now(),
            now_ns: 0,
            reorg: Reorg {
                batch: p.reorg_batch,
                ..Reorg::default()
            },
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

    /// Whether a write is acknowledged without waiting for a disk write
    /// ([`Durability::Periodic`](crate::Durability::Periodic): once staged, by a buffered
    /// write in the same poll). Then a write answers about as fast as a cached read, and a
    /// client may batch the two together.
    pub fn acks_writes_at_once(&self) -> bool {
        self.core.stage.as_ref().is_some_and(|s| !s.is_sync())
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
        let st = c.stage.as_ref().map(|s| s.stats).unwrap_or_default();
        let wb = c.blocks.wb_stats;
        WorkerStats {
            backend: c.backend.name(),
            ops_completed: self.ops_completed,
            reads: io.reads,
            blocks_read: io.blocks_read,
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
            staged_records: st.records,
            stage_chunks: st.chunks,
            stage_bytes: st.bytes,
            flushes_started: st.flushes_started,
            flushes_completed: st.flushes_completed,
            flush_errors: st.flush_errors,
            dirty_blocks: c.blocks.dirty_blocks() as u64,
            writeback_batches: wb.batches,
            writeback_blocks: wb.blocks,
            writeback_failures: wb.failed,
            room_waits: st.room_waits,
            reorg_moves: self.reorg.moved,
            reorg_passes: self.reorg.passes,
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
                self.reorg.wake();
                let hash = fnv1a64(&key);
                let op = OpState::Put(PutOp::new(key, value, hash));
                self.start_write(tag, hash, op);
            }
            Op::Delete { key } => {
                self.reorg.wake();
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

    /// Like [`Worker::keys_where`], limited to keys ≤ `end` (`None`: no limit); the walk of
    /// the index stops at the first key past `end`.
    pub fn keys_between_where(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        max: usize,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Vec<Box<[u8]>> {
        self.core
            .index
            .range_keys_between_where(start, end, max, keep)
    }

    /// A put or delete runs at once unless a write of the same key is running.
    fn start_write(&mut self, tag: u64, hash: u64, op: OpState) {
        let id = self.ops.insert(OpEntry { tag, op });
        if self.keys.admit(hash, id) {
            self.admit(id);
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

    /// Makes progress without blocking: reaps I/O completions, runs operations, writes what
    /// they staged (staged modes), hands the gathered I/O to the backend, and appends finished
    /// operations to `out`. Returns how many were appended. Time (for the periodic flush) is
    /// the worker's own monotonic clock; [`Worker::poll_at`] takes it from the caller instead.
    pub fn poll(&mut self, out: &mut Vec<Completion>) -> usize {
        let now = u64::try_from(self.clock.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.poll_at(now, out)
    }

    /// [`Worker::poll`] at time `now_ns` (nanoseconds on any monotonic clock the caller keeps
    /// using for this worker, e.g. a simulation's virtual clock).
    pub fn poll_at(&mut self, now_ns: u64, out: &mut Vec<Completion>) -> usize {
        self.now_ns = self.now_ns.max(now_ns);
        self.reap();
        self.run_runnable();
        self.reorganise();
        if self.core.stage.is_some() {
            // Write what the operations staged; in periodic mode that acknowledges them, and
            // their next steps (a move's tombstone, the key's next write) may stage more.
            for _ in 0..4 {
                let staged = self.core.stage.as_ref().is_some_and(|s| !s.open_is_empty());
                if !staged {
                    break;
                }
                let mut events = std::mem::take(&mut self.events);
                let now = self.now_ns;
                let c = &mut self.core;
                if let Some(st) = c.stage.as_mut() {
                    st.flush(&mut c.backend, now, &mut events);
                }
                self.handle(events);
                self.run_runnable();
                if self.core.stage.as_ref().is_some_and(Stage::is_sync) {
                    break;
                }
            }
            if self.core.maintain(self.now_ns) {
                if let Some(st) = self.core.stage.as_mut() {
                    self.runnable.extend(st.waiters.drain(..));
                }
            }
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
    /// an `fsync` of each of the worker's slab files, of the staging area (staged modes) and
    /// of the data directory. Blocking.
    ///
    /// For callers that need a durability point beyond what their [`Durability`] mode
    /// promises (page mode, or periodic mode between flushes): the replicated service, before
    /// it compacts its Raft log below what the engine applied. Writes still in flight are not
    /// covered.
    ///
    /// [`Durability`]: crate::Durability
    pub fn sync(&mut self) -> Result<()> {
        let c = &mut self.core;
        for s in c.slabs.iter().flatten() {
            c.backend
                .sync(s.file())
                .map_err(|e| Error::io("syncing a slab file", e))?;
        }
        if let Some(st) = c.stage.as_mut() {
            st.sync_blocking(&mut c.backend)
                .map_err(|e| Error::io("syncing the staging area", e))?;
        }
        c.backend
            .sync_dir()
            .map_err(|e| Error::io("syncing the data directory", e))
    }

    /// Sets how many items a background reorganisation round moves at most (0: off); see
    /// [`EngineConfig::reorg_batch`](crate::EngineConfig::reorg_batch). Rounds under way
    /// finish.
    pub fn set_reorg_batch(&mut self, batch: usize) {
        self.reorg.batch = batch;
        self.reorg.wake();
    }

    /// Whether the background reorganisation has work it would do if polled now, or moves
    /// under way: a thread that drives the worker keeps polling while this holds, even with
    /// no client operation pending.
    pub fn reorg_busy(&self) -> bool {
        self.reorg.in_flight > 0 || (self.reorg.wants_round() && self.pending == 0)
    }

    /// Starts a reorganisation round if the worker is idle: no client operation outstanding,
    /// nothing runnable, the previous round finished.
    fn reorganise(&mut self) {
        if !self.reorg.wants_round() || self.pending > 0 || !self.runnable.is_empty() {
            return;
        }
        let batch = self.reorg.batch;
        // Look a few blocks' worth further than the round may move, so that placed runs
        // are skipped quickly.
        let listed = self
            .core
            .index
            .range_keys(&self.reorg.cursor, batch * 4 + 64);
        let complete = listed.len() < batch * 4 + 64;
        let locs: Vec<Location> = listed
            .iter()
            .filter_map(|k| self.core.index.get(k))
            .collect();
        if locs.len() != listed.len() {
            tracing::error!(worker = self.core.id, "an index key without a location");
            self.reorg.paused = true;
            return;
        }
        let (groups, dealt) = reorg::plan(&locs, complete, batch);
        for g in groups {
            let Some(class) = locs.get(g.start).map(|l| l.class) else {
                continue;
            };
            let first = match self.core.allocate_block(class) {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(worker = self.core.id, error = %e, "reorganisation: no block");
                    self.reorg.paused = true;
                    return;
                }
            };
            let spb = Geometry::of(class).slots_per_block;
            for (n, i) in g.clone().enumerate() {
                let (Some(key), Some(&old)) = (listed.get(i), locs.get(i)) else {
                    continue;
                };
                let target = Location {
                    class,
                    slot: first + n as u32,
                };
                let hash = fnv1a64(key);
                let op = OpState::Put(PutOp::relocation(key.to_vec(), hash, old, target));
                self.reorg.in_flight += 1;
                self.start_write(u64::MAX, hash, op);
            }
            // A short group leaves the rest of its block to later inserts.
            for n in g.len()..spb {
                self.core.release_slot(Location {
                    class,
                    slot: first + n as u32,
                });
            }
        }
        match listed.get(dealt) {
            Some(k) => self.reorg.cursor = k.to_vec(),
            None if complete => self.reorg.pass_done(),
            None => {
                if let Some(k) = listed.last() {
                    // Everything listed was dealt with: go on after the last key.
                    self.reorg.cursor = k.to_vec();
                    self.reorg.cursor.push(0);
                }
            }
        }
        self.run_runnable();
    }

    fn run_runnable(&mut self) {
        while let Some(id) = self.runnable.pop_front() {
            self.run(id);
        }
    }

    /// Blocks until at least one I/O completes, unless there is nothing in flight or
    /// something is already ready for [`Worker::poll`]. Call `poll` afterwards. (A periodic
    /// flush that is due does not wake it: see [`Worker::next_deadline`].)
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

    /// When the worker next needs a [`Worker::poll`] although nothing else happens (the
    /// periodic flush of the staging area), as a time on [`Worker::poll`]'s clock
    /// ([`Worker::now`]); `None` if never.
    pub fn next_deadline(&self) -> Option<std::time::Duration> {
        self.core
            .stage
            .as_ref()
            .and_then(Stage::next_deadline)
            .map(std::time::Duration::from_nanos)
    }

    /// The time on [`Worker::poll`]'s clock.
    pub fn now(&self) -> std::time::Duration {
        self.clock.elapsed()
    }

    /// Reaps completions and hands each operation concerned its event.
    fn reap(&mut self) {
        let mut events = std::mem::take(&mut self.events);
        let mut done = std::mem::take(&mut self.done);
        let c = &mut self.core;
        c.blocks.take_failed(&mut done);
        c.backend.reap(&mut done);
        for io in done.drain(..) {
            c.on_io(io, self.now_ns, &mut events);
        }
        self.done = done;
        self.handle(events);
    }

    /// Hands each event to its operation.
    fn handle(&mut self, mut events: Vec<Event>) {
        for ev in events.drain(..) {
            match ev {
                Event::Retry(id, block) => {
                    // A scan waits for several blocks at once: it notes each one loaded and
                    // runs once for all those loaded meanwhile.
                    if let Some(OpEntry {
                        op: OpState::Scan(s),
                        ..
                    }) = self.ops.get_mut(id)
                    {
                        if !s.loaded(block) {
                            continue;
                        }
                    }
                    self.runnable.push_back(id);
                }
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
        // A wake-up meant for an operation that has finished can reach the one that took its
        // handle; a write still queued behind its key must not run on it.
        if let Some(
            OpState::Put(PutOp {
                admitted: false, ..
            })
            | OpState::Delete(DeleteOp {
                admitted: false, ..
            }),
        ) = self.ops.get(id).map(|e| &e.op)
        {
            return;
        }
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
        match f(&mut entry.op, id, &mut self.core) {
            Step::Done(result) => self.finish(id, result),
            Step::Wait => {
                // Sync mode: once a write's last record is staged, the key's next write may
                // run. It stages into the same chunk or a later one, and chunks become durable
                // — and acknowledge — in order, so the key's writes are still acknowledged in
                // submission order; a hot key's queued writes share group commits instead of
                // taking one O_DSYNC write each. If a chunk write fails, every write staged
                // after it fails too (`Stage::on_chunk_done`), so none survives a predecessor
                // it was applied on top of.
                if !self.core.stage.as_ref().is_some_and(Stage::is_sync) {
                    return;
                }
                let hash = match &mut entry.op {
                    OpState::Put(p) if !p.released && p.staged_final() => {
                        p.released = true;
                        p.hash
                    }
                    OpState::Delete(d) if !d.released && d.staged_final() => {
                        d.released = true;
                        d.hash
                    }
                    _ => return,
                };
                if let Some(next) = self.keys.release(hash) {
                    self.admit(next);
                }
            }
        }
    }

    /// The key queue lets write `id` run.
    fn admit(&mut self, id: OpId) {
        match self.ops.get_mut(id).map(|e| &mut e.op) {
            Some(OpState::Put(p)) => p.admitted = true,
            Some(OpState::Delete(d)) => d.admitted = true,
            _ => {}
        }
        self.runnable.push_back(id);
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
            OpState::Put(PutOp { hash, released, .. })
            | OpState::Delete(DeleteOp { hash, released, .. }) => {
                let (relocation, moved) = match &entry.op {
                    OpState::Put(p) => (p.relocation, p.moved),
                    _ => (false, false),
                };
                if !released {
                    if let Some(next) = self.keys.release(hash) {
                        self.admit(next);
                    }
                } else if result.is_err() {
                    // The key's next write ran on what this one left, now undone. If it has
                    // staged, it failed with this one (`Stage::on_chunk_done`); if not, a put
                    // that already chose its slot starts over.
                    if let Some(r) = self.keys.running(hash).filter(|&r| r != id) {
                        if let Some(OpEntry {
                            op: OpState::Put(p),
                            ..
                        }) = self.ops.get_mut(r)
                        {
                            if p.restart(&mut self.core) {
                                self.runnable.push_back(r);
                            }
                        }
                    }
                }
                if relocation {
                    if let Err(e) = &result {
                        tracing::debug!(worker = self.core.id, error = %e, "a reorganisation move failed");
                    }
                    self.reorg.finished(moved);
                } else {
                    self.complete(entry.tag, result);
                }
            }
            OpState::Get(_) => self.complete(entry.tag, result),
        }
    }

    fn complete(&mut self, tag: u64, result: Result<Reply>) {
        self.ops_completed += 1;
        self.ready.push(Completion { tag, result });
    }
}

impl<B: Backend> Drop for Worker<B> {
    /// Periodic mode: what was written to the staging area is made durable before the files
    /// close (a clean stop loses nothing to a later power cut).
    fn drop(&mut self) {
        let c = &mut self.core;
        if let Some(st) = c.stage.as_mut() {
            st.close(&mut c.backend);
        }
    }
}
