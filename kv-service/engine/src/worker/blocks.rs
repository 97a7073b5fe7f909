//! Block I/O: the page cache's blocks and the I/O that loads and writes them.
//!
//! Per cached block (indexed like the cache's entries; the cache itself knows whether an entry
//! is pinned and whether it is loading, the two facts a cached read and an eviction need):
//! - loading: a read is in flight (the cache lent its buffer to the backend); operations that
//!   need the block wait in `blocked`, so concurrent misses on one block cause one read;
//! - `write`: `Queued` (a write waits for room in the backend's queue: further changes join
//!   it, so writes to one block coalesce) or `InFlight` (a copy of the block is being written:
//!   further *changes* wait in `blocked` until it completes, so writes to a block never
//!   overtake each other; *reads* go on, and see the block as the last applied change left it).
//!
//! In the staged durability modes (periodic, sync) a change does not write its block: it is
//! staged (`stage.rs`) and the block becomes *dirty* — pinned, remembered by the LSN of its
//! oldest staged change. Dirty blocks are written back in **batches**
//! ([`Blocks::start_writeback`]): a snapshot (copy) of each block is taken at a point of the
//! staging log, and written only once the staging area is durable up to that point — so a
//! torn page write can only damage changes that recovery finds in the staging area — then the
//! slab files are synced, and only then does the batch stop holding its LSNs (the staging
//! space they occupy becomes reusable). Changes go on while a block's snapshot is in flight;
//! a block has at most one write in flight.
//!
//! **Coalesced reads.** Reads queued one after another for blocks of one class that lie close
//! together in its slab file (ascending, at most [`RUN_GAP`] unneeded blocks between two
//! needed ones, at most [`RUN_BYTES`] in all) go to the backend as one read — a scan of
//! neighbours queues its missing blocks in key order, which after the background
//! reorganisation is file order. That read lands in a buffer of the worker's own
//! (`run_bufs`, reused), and each needed block's bytes are copied into its cache entry, which
//! kept its buffer and stayed `loading` meanwhile; the bytes of the blocks in between are
//! dropped (a cached copy of such a block may be newer than the file). Each block of the read
//! completes on its own: those the read covered whole are loaded, the others fail as a
//! failed read of their own would.
//!
//! A block with I/O queued or in flight, operations waiting, or changes not yet written back
//! is pinned in the cache. The outcome of I/O comes back as [`Event`]s for the operations'
//! state machines.

use std::collections::{BTreeSet, VecDeque};

use crate::backend::{AlignedBuf, Backend, IoCompletion, IoKind, IoRequest};
use crate::error::Error;
use crate::index::Location;
use crate::pagecache::{block_key, BlockKey, PageCache};
use crate::record;
use crate::slab::{Geometry, Slab, PAGE};

use super::{OpId, Tag};

/// Write state of a cached block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum WriteState {
    #[default]
    Idle,
    Queued,
    InFlight,
}

/// The I/O state of one cached block (indexed like the cache's entries).
#[derive(Default)]
struct BlockState {
    write: WriteState,
    /// Bytes from the block's start that the queued / in-flight write covers.
    write_len: usize,
    /// Operations whose changes are in the queued / in-flight write.
    write_waiters: Vec<OpId>,
    /// Operations waiting for the block to load, or (changes) for an in-flight write.
    blocked: VecDeque<OpId>,
    /// Staged modes: LSN of the oldest change not yet in a durable slab write (`None`: the
    /// slab holds what the cache holds, or a snapshot in the batch will).
    dirty: Option<u64>,
    /// Staged modes: the block's item in the writeback batch.
    wb: Option<u32>,
    /// Operations that need the block to stay cached while they wait for another one.
    holds: u32,
}

impl BlockState {
    /// Busy for a reason other than loading (the cache holds that flag).
    fn busy(&self) -> bool {
        self.write != WriteState::Idle
            || !self.blocked.is_empty()
            || !self.write_waiters.is_empty()
            || self.dirty.is_some()
            || self.wb.is_some()
            || self.holds > 0
    }

    fn clear(&mut self) {
        self.write = WriteState::Idle;
        self.write_len = 0;
        self.write_waiters.clear();
        self.blocked.clear();
        self.dirty = None;
        self.wb = None;
        self.holds = 0;
    }
}

/// Where a writeback batch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Snapshots taken; waiting for the staging area to be durable up to the batch's point.
    Durable,
    /// Slab writes queued or in flight.
    Write,
    /// Writes done: the data directory's entries must be made durable (if a slab file was
    /// created) before the slab files are synced.
    SyncDir,
    /// `fdatasync`s of the slab files queued or in flight.
    Sync,
}

/// One block of a writeback batch.
struct WbItem {
    e: u32,
    class: u8,
    block: u64,
    rec_lsn: u64,
    len: usize,
    buf: Option<AlignedBuf>,
    ok: bool,
}

/// Dirty blocks being written back.
struct Batch {
    point: u64,
    failures: u64,
    min_lsn: u64,
    phase: Phase,
    items: Vec<WbItem>,
    /// Items handed to the backend so far (phase `Write`).
    next: usize,
    /// Writes (phase `Write`) or syncs (phase `Sync`) not completed.
    left: usize,
    /// Classes whose slab file is still to be synced (phase `Sync`).
    to_sync: Vec<u8>,
}

/// What finished writebacks did, for the counters and the callers waiting for room.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct WbStats {
    pub(super) batches: u64,
    pub(super) blocks: u64,
    pub(super) bytes: u64,
    pub(super) failed: u64,
}

/// What finished I/O means for an operation.
pub(super) enum Event {
    /// The block it waited for (the key) is usable now: run it again.
    Retry(OpId, BlockKey),
    /// The write carrying its change completed, or failed.
    Written(OpId, Result<(), Error>),
    /// The block it waited for could not be read.
    ReadFailed(OpId, Error),
}

/// Counters of the block I/O.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct IoStats {
    /// Read requests submitted (a coalesced read counts once).
    pub(super) reads: u64,
    /// Blocks loaded by those reads (a coalesced read counts each block it loads).
    pub(super) blocks_read: u64,
    pub(super) writes: u64,
    pub(super) read_bytes: u64,
    pub(super) write_bytes: u64,
}

/// Most spare write buffers of more than 4 KiB kept, in bytes.
const SPARE_LARGE_BYTES: usize = 8 << 20;
/// Most spare 4 KiB write buffers kept.
const SPARE_PAGES: usize = 64;

/// Most bytes one coalesced read covers (its buffer's size): 16 pages. A worker's part of a
/// 100-item scan of 1 KiB items spans about 13 pages once reorganised.
pub(crate) const RUN_BYTES: usize = 64 << 10;
/// Most blocks one coalesced read loads.
const RUN_MAX: usize = RUN_BYTES / PAGE;
/// Most blocks not needed (cached already, or not asked for) that a coalesced read reads
/// through between two needed ones: reading 8 KiB more in one request costs the device less
/// than a second request.
pub(crate) const RUN_GAP: u64 = 2;

/// A coalesced read in flight: blocks `first ..` of `class`, and the cache entries it loads
/// with their position (in blocks) from `first`. Fixed size: no allocation per read.
#[derive(Clone, Copy)]
struct Run {
    class: u8,
    first: u64,
    n: usize,
    entries: [(u32, u16); RUN_MAX],
}

/// The cached blocks of one worker and their I/O.
pub(super) struct Blocks {
    cache: PageCache,
    states: Vec<BlockState>,
    /// Blocks whose read or write waits to be handed to the backend.
    queue: VecDeque<(u32, IoKind)>,
    depth: usize,
    /// Write buffers for reuse.
    spare: Vec<AlignedBuf>,
    spare_large_bytes: usize,
    /// Completions reaped, and I/O that could not be issued at all.
    failed: Vec<IoCompletion>,
    /// Coalesced reads in flight by number (the tag's); `None`: a free number.
    runs: Vec<Option<Run>>,
    free_runs: Vec<u32>,
    /// Buffers of [`RUN_BYTES`] for coalesced reads, for reuse (at most `depth`).
    run_bufs: Vec<AlignedBuf>,
    /// Whether reads are coalesced at all.
    coalesce: bool,
    pub(super) stats: IoStats,
    /// Staged modes: dirty blocks by the LSN of their oldest change.
    dirty: BTreeSet<(u64, u32)>,
    /// Bytes of the blocks that are dirty or being written back (pinned for it).
    dirty_bytes: usize,
    batch: Option<Batch>,
    /// A batch finished since the last [`Blocks::take_finished`].
    finished: bool,
    /// The last finished batch could not write (or sync) everything.
    pub(super) writeback_error: Option<std::io::Error>,
    pub(super) wb_stats: WbStats,
}

impl Blocks {
    pub(super) fn new(cache_bytes: usize, depth: u32, coalesce: bool) -> Self {
        Self {
            cache: PageCache::new(cache_bytes),
            states: Vec::new(),
            queue: VecDeque::new(),
            depth: depth.max(1) as usize,
            spare: Vec::new(),
            spare_large_bytes: 0,
            failed: Vec::new(),
            runs: Vec::new(),
            free_runs: Vec::new(),
            run_bufs: Vec::new(),
            coalesce,
            stats: IoStats::default(),
            dirty: BTreeSet::new(),
            dirty_bytes: 0,
            batch: None,
            finished: false,
            writeback_error: None,
            wb_stats: WbStats::default(),
        }
    }

    pub(super) fn cache(&self) -> &PageCache {
        &self.cache
    }

    fn state(&mut self, e: u32) -> &mut BlockState {
        let i = e as usize;
        if self.states.len() <= i {
            self.states.resize_with(i + 1, BlockState::default);
        }
        // The resize above makes `i` a valid index.
        &mut self.states[i]
    }

    /// Pins the block in the cache exactly while it has I/O or waiters.
    fn update_pin(&mut self, e: u32) {
        let busy = self.cache.loading(e) || self.state(e).busy();
        self.cache.set_pinned(e, busy);
    }

    /// Makes block `block` of `class` usable by operation `id`: `Some(entry)` if it is now;
    /// `None` if the operation was queued on the block (it gets an [`Event::Retry`] or
    /// [`Event::ReadFailed`] later). `write`: the operation will change the block. `fresh`:
    /// the block lies past everything ever written, so it is zero and needs no read.
    pub(super) fn acquire(
        &mut self,
        class: u8,
        block: u64,
        id: OpId,
        write: bool,
        fresh: bool,
    ) -> Option<u32> {
        let key = block_key(class, block);
        if let Some(e) = self.cache.lookup(key) {
            let loading = self.cache.loading(e);
            let st = self.state(e);
            // A reader needs the block loaded, nothing more: it reads the block as the last
            // change applied to it left it (that change's write may still be in flight).
            // Changes queue behind an in-flight write and behind each other.
            if loading || (write && (st.write == WriteState::InFlight || !st.blocked.is_empty())) {
                st.blocked.push_back(id);
                self.update_pin(e);
                return None;
            }
            return Some(e);
        }
        let size = Geometry::of(class).block_size;
        let e = self.cache.insert(key, size);
        self.cache.set_loading(e, false);
        self.state(e).clear();
        if fresh {
            if let Some(b) = self.cache.bytes_mut(e) {
                b.fill(0);
            }
            return Some(e);
        }
        self.cache.set_loading(e, true);
        let st = self.state(e);
        st.blocked.push_back(id);
        self.queue.push_back((e, IoKind::Read));
        self.update_pin(e);
        None
    }

    /// Block `block` of `class` if it is cached and loaded, as a cache lookup (a hit counts
    /// and the block becomes the most recently used); `None` changes nothing (the operation
    /// that follows counts the miss).
    pub(super) fn loaded_lookup(&mut self, class: u8, block: u64) -> Option<u32> {
        self.cache.hit_loaded(block_key(class, block))
    }

    /// Block `block` of `class` if it is cached and loaded, for an operation already queued
    /// on it (no new registration; no hit counted twice).
    pub(super) fn loaded(&mut self, class: u8, block: u64) -> Option<u32> {
        let e = self.cache.find(block_key(class, block))?;
        (!self.cache.loading(e)).then_some(e)
    }

    /// Slot `loc`'s index within its block and the slot size.
    fn slot_in_block(loc: Location) -> (usize, usize) {
        let g = Geometry::of(loc.class);
        (loc.slot as usize % g.slots_per_block, g.slot_size)
    }

    /// The bytes of the slot `loc` inside cached block `e`.
    pub(super) fn slot(&self, e: u32, loc: Location) -> Option<&[u8]> {
        let (n, size) = Self::slot_in_block(loc);
        self.cache.slot_bytes(e, n, size)
    }

    /// The bytes of the slot `loc` inside cached block `e`, to change them.
    pub(super) fn slot_mut(&mut self, e: u32, loc: Location) -> Option<&mut [u8]> {
        let (n, size) = Self::slot_in_block(loc);
        self.cache.slot_bytes_mut(e, n, size)
    }

    /// The record in slot `loc` of cached block `e`, decoded; its checksum is verified
    /// unless it passed since the slot last changed (a record the engine encoded, or read
    /// and verified, is not checked again on every cached read).
    pub(super) fn decode_slot(&self, e: u32, loc: Location) -> Option<record::Slot<'_>> {
        let (n, size) = Self::slot_in_block(loc);
        let bytes = self.cache.slot_bytes(e, n, size)?;
        if self.cache.slot_verified(e, n) {
            return Some(record::decode_verified(bytes));
        }
        let slot = record::decode(bytes);
        if !matches!(slot, record::Slot::Corrupt) {
            self.cache.set_slot_verified(e, n);
        }
        Some(slot)
    }

    /// Queues (or joins) the write of block `e` so that it covers the slot `loc`'s first
    /// `used` bytes; operation `id` gets an [`Event::Written`] when it completes.
    pub(super) fn mark_write(&mut self, e: u32, loc: Location, used: usize, id: OpId) {
        let g = Geometry::of(loc.class);
        let (_, off) = g.locate(loc.slot);
        let need = (off + used).div_ceil(PAGE) * PAGE;
        let st = self.state(e);
        st.write_len = st.write_len.max(need.min(g.block_size));
        st.write_waiters.push(id);
        let queue = st.write == WriteState::Idle;
        if queue {
            st.write = WriteState::Queued;
            self.queue.push_back((e, IoKind::Write));
        }
        self.update_pin(e);
    }

    fn take_buf(&mut self, size: usize) -> AlignedBuf {
        match self.spare.iter().position(|b| b.len() == size) {
            Some(i) => {
                let b = self.spare.swap_remove(i);
                if size > PAGE {
                    self.spare_large_bytes -= size;
                }
                b
            }
            None => AlignedBuf::zeroed(size),
        }
    }

    fn recycle(&mut self, buf: AlignedBuf) {
        let size = buf.len();
        if size == PAGE {
            if self.spare.iter().filter(|b| b.len() == PAGE).count() < SPARE_PAGES {
                self.spare.push(buf);
            }
        } else if size > PAGE && self.spare_large_bytes + size <= SPARE_LARGE_BYTES {
            self.spare_large_bytes += size;
            self.spare.push(buf);
        }
    }

    /// Hands queued reads and writes to the backend while it has room. A write goes out as a
    /// copy of the block, so the cached block stays readable while it is in flight.
    pub(super) fn issue<B: Backend>(&mut self, backend: &mut B, slabs: &[Option<Slab>]) {
        while backend.in_flight() < self.depth {
            let Some(&(e, kind)) = self.queue.front() else {
                break;
            };
            let Some(key) = self.cache.key_of(e) else {
                self.queue.pop_front();
                continue;
            };
            let class = (key >> 56) as u8;
            let block = key & ((1 << 56) - 1);
            let block_size = Geometry::of(class).block_size;
            if kind == IoKind::Read {
                let n = self.run_len(class, block, block_size);
                if n >= 2 {
                    if !self.issue_run(backend, slabs, class, block, n) {
                        return;
                    }
                    continue;
                }
            }
            self.queue.pop_front();
            let (buf, len) = match kind {
                IoKind::Read => match self.cache.lend_buf(e) {
                    Some(b) => (b, block_size),
                    None => continue,
                },
                IoKind::Write | IoKind::Sync => {
                    let len = self.state(e).write_len.min(block_size);
                    let mut b = self.take_buf(block_size);
                    if let (Some(dst), Some(src)) = (
                        b.as_mut_slice().get_mut(..len),
                        self.cache.bytes(e).and_then(|s| s.get(..len)),
                    ) {
                        dst.copy_from_slice(src);
                    }
                    (b, len)
                }
            };
            let Some(Some(slab)) = slabs.get(usize::from(class)) else {
                // A block of a class without a file cannot be: fail it rather than hang.
                self.failed.push(IoCompletion {
                    tag: Tag::Block.encode(e),
                    kind,
                    buf,
                    result: Err(std::io::Error::from_raw_os_error(libc::EBADF)),
                });
                continue;
            };
            let req = IoRequest {
                kind,
                file: slab.file(),
                offset: block * block_size as u64,
                len,
                buf,
                tag: Tag::Block.encode(e),
            };
            match backend.submit(req) {
                Ok(()) => match kind {
                    IoKind::Read => {
                        self.stats.reads += 1;
                        self.stats.blocks_read += 1;
                        self.stats.read_bytes += len as u64;
                    }
                    IoKind::Write | IoKind::Sync => {
                        self.state(e).write = WriteState::InFlight;
                        self.stats.writes += 1;
                        self.stats.write_bytes += len as u64;
                    }
                },
                Err(req) => {
                    // No room after all: put everything back and try again next time.
                    match kind {
                        IoKind::Read => {
                            if let Some(b) = self.cache.restore_buf(e, req.buf) {
                                self.recycle(b);
                            }
                        }
                        IoKind::Write | IoKind::Sync => self.recycle(req.buf),
                    }
                    self.queue.push_front((e, kind));
                    return;
                }
            }
        }
        self.issue_writeback(backend, slabs);
    }

    /// How many reads at the front of the queue (the first one: block `first` of `class`,
    /// blocks of `block_size` bytes) one coalesced read can carry: reads of blocks of the same
    /// class following each other in the queue, each past the previous one by at most
    /// [`RUN_GAP`] + 1 blocks, all within [`RUN_BYTES`] of the first block's start.
    fn run_len(&self, class: u8, first: u64, block_size: usize) -> usize {
        let span = (RUN_BYTES / block_size) as u64;
        if span < 2 || !self.coalesce {
            return 1;
        }
        let mut last = first;
        let mut n = 1;
        for &(e, kind) in self.queue.iter().skip(1) {
            if kind != IoKind::Read || n >= RUN_MAX {
                break;
            }
            let Some(key) = self.cache.key_of(e) else {
                break;
            };
            let (c, b) = ((key >> 56) as u8, key & ((1 << 56) - 1));
            if c != class || b <= last || b - last > RUN_GAP + 1 || b - first >= span {
                break;
            }
            last = b;
            n += 1;
        }
        n
    }

    /// Hands the first `n` queued reads (blocks of `class` from `first` on, as
    /// [`Blocks::run_len`] found them) to the backend as one read. Returns false (the reads
    /// stay queued) if the backend has no room.
    fn issue_run<B: Backend>(
        &mut self,
        backend: &mut B,
        slabs: &[Option<Slab>],
        class: u8,
        first: u64,
        n: usize,
    ) -> bool {
        let block_size = Geometry::of(class).block_size;
        let mut run = Run {
            class,
            first,
            n: 0,
            entries: [(0, 0); RUN_MAX],
        };
        let mut last = first;
        for _ in 0..n.min(RUN_MAX) {
            let Some((e, _)) = self.queue.pop_front() else {
                break;
            };
            let block = self.cache.key_of(e).map_or(first, |k| k & ((1 << 56) - 1));
            last = last.max(block);
            if let Some(slot) = run.entries.get_mut(run.n) {
                *slot = (e, u16::try_from(block - first).unwrap_or(u16::MAX));
                run.n += 1;
            }
        }
        let len = (last - first + 1) as usize * block_size;
        let buf = self
            .run_bufs
            .pop()
            .unwrap_or_else(|| AlignedBuf::zeroed(RUN_BYTES));
        let r = match self.free_runs.pop() {
            Some(r) => r,
            None => {
                self.runs.push(None);
                u32::try_from(self.runs.len() - 1).unwrap_or(u32::MAX)
            }
        };
        if let Some(cell) = self.runs.get_mut(r as usize) {
            *cell = Some(run);
        }
        let tag = Tag::Run.encode(r);
        let Some(Some(slab)) = slabs.get(usize::from(class)) else {
            // A block of a class without a file cannot be: fail it rather than hang.
            self.failed.push(IoCompletion {
                tag,
                kind: IoKind::Read,
                buf,
                result: Err(std::io::Error::from_raw_os_error(libc::EBADF)),
            });
            return true;
        };
        let req = IoRequest {
            kind: IoKind::Read,
            file: slab.file(),
            offset: first * block_size as u64,
            len,
            buf,
            tag,
        };
        match backend.submit(req) {
            Ok(()) => {
                self.stats.reads += 1;
                self.stats.blocks_read += run.n as u64;
                self.stats.read_bytes += len as u64;
                true
            }
            Err(req) => {
                // No room after all: everything back as it was.
                self.run_bufs.push(req.buf);
                if let Some(cell) = self.runs.get_mut(r as usize) {
                    *cell = None;
                }
                self.free_runs.push(r);
                for &(e, _) in run.entries.get(..run.n).unwrap_or_default().iter().rev() {
                    self.queue.push_front((e, IoKind::Read));
                }
                false
            }
        }
    }

    /// The coalesced read number `r` completed: each block it covered whole is loaded (its
    /// bytes copied into its cache entry), each other block failed.
    pub(super) fn on_run_complete(&mut self, r: u32, c: IoCompletion, events: &mut Vec<Event>) {
        let run = self.runs.get_mut(r as usize).and_then(Option::take);
        let IoCompletion { buf, result, .. } = c;
        let Some(run) = run else {
            tracing::error!(run = r, "the completion of an unknown coalesced read");
            self.recycle_run_buf(buf);
            return;
        };
        self.free_runs.push(r);
        let block_size = Geometry::of(run.class).block_size;
        let got = match &result {
            Ok(n) => (*n).min(buf.len()),
            Err(_) => 0,
        };
        for &(e, pos) in run.entries.get(..run.n).unwrap_or_default() {
            let start = usize::from(pos) * block_size;
            let end = start + block_size;
            let expected = block_key(run.class, run.first + u64::from(pos));
            if self.cache.key_of(e) != Some(expected) {
                // A loading block stays cached (pinned) until its read completes.
                tracing::error!(entry = e, "a block left the cache while being read");
                continue;
            }
            let failure = if end <= got {
                match (self.cache.bytes_mut(e), buf.as_slice().get(start..end)) {
                    (Some(dst), Some(src)) if dst.len() == src.len() => {
                        dst.copy_from_slice(src);
                        None
                    }
                    _ => Some(std::io::Error::other(
                        "a coalesced read's block does not fit",
                    )),
                }
            } else {
                Some(match &result {
                    Err(err) => clone_io_error(err),
                    Ok(_) => std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
                })
            };
            self.read_done(e, failure, events);
        }
        self.recycle_run_buf(buf);
    }

    fn recycle_run_buf(&mut self, buf: AlignedBuf) {
        if buf.len() == RUN_BYTES && self.run_bufs.len() < self.depth {
            self.run_bufs.push(buf);
        }
    }

    /// Block `e`'s read finished (`failure`: how it failed): the operations waiting for it
    /// get [`Event::Retry`], or [`Event::ReadFailed`] and the block leaves the cache.
    fn read_done(&mut self, e: u32, failure: Option<std::io::Error>, events: &mut Vec<Event>) {
        let key = self.cache.key_of(e).unwrap_or(u64::MAX);
        self.cache.set_loading(e, false);
        let st = self.state(e);
        let mut blocked = std::mem::take(&mut st.blocked);
        match failure {
            None => events.extend(blocked.iter().map(|&id| Event::Retry(id, key))),
            Some(err) => {
                self.drop_block(e);
                for &id in &blocked {
                    let source = clone_io_error(&err);
                    events.push(Event::ReadFailed(id, Error::io("reading a block", source)));
                }
            }
        }
        if self.cache.key_of(e).is_some() {
            // Still cached: give the vector's capacity back to the block.
            let st = self.state(e);
            if st.blocked.is_empty() {
                blocked.clear();
                st.blocked = blocked;
            }
            self.update_pin(e);
        }
    }

    /// Moves the I/O that could not be issued at all (completed with an error) to `out`.
    pub(super) fn take_failed(&mut self, out: &mut Vec<IoCompletion>) {
        out.append(&mut self.failed);
    }

    /// Turns the completion of block `e`'s read or (page mode) write into events: for a
    /// write, its waiters' [`Event::Written`] first, then the blocked operations'
    /// [`Event::Retry`].
    pub(super) fn on_complete(&mut self, e: u32, c: IoCompletion, events: &mut Vec<Event>) {
        if c.kind == IoKind::Read {
            let failure = match &c.result {
                Ok(n) if *n == c.buf.len() => None,
                Ok(_) => Some(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                Err(err) => Some(clone_io_error(err)),
            };
            if let Some(b) = self.cache.restore_buf(e, c.buf) {
                self.recycle(b);
            }
            self.read_done(e, failure, events);
            return;
        }
        let key = self.cache.key_of(e).unwrap_or(u64::MAX);
        let st = self.state(e);
        let expected = st.write_len;
        let blocked = std::mem::take(&mut st.blocked);
        st.write = WriteState::Idle;
        st.write_len = 0;
        let waiters = std::mem::take(&mut st.write_waiters);
        let failure = match &c.result {
            Ok(n) if *n == expected => None,
            Ok(_) => Some(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Err(err) => Some(clone_io_error(err)),
        };
        self.recycle(c.buf);
        if failure.is_some() {
            // The block's state on disk is unknown: forget it, re-read it when needed.
            self.drop_block(e);
        }
        for &id in &waiters {
            let r = match &failure {
                None => Ok(()),
                Some(err) => Err(Error::io("writing a block", clone_io_error(err))),
            };
            events.push(Event::Written(id, r));
        }
        events.extend(blocked.iter().map(|&id| Event::Retry(id, key)));
        if self.cache.key_of(e).is_some() {
            // Still cached: give the vectors' capacity back to the block.
            let st = self.state(e);
            if st.blocked.is_empty() {
                let mut b = blocked;
                b.clear();
                st.blocked = b;
            }
            if st.write_waiters.is_empty() && waiters.capacity() > 0 {
                let mut w = waiters;
                w.clear();
                st.write_waiters = w;
            }
            self.update_pin(e);
        }
    }

    /// Staged modes: block `e` holds a change of the slot `loc`'s first `used` bytes, staged
    /// at `lsn`: it is dirty (pinned) until written back.
    pub(super) fn mark_dirty(&mut self, e: u32, loc: Location, used: usize, lsn: u64) {
        let g = Geometry::of(loc.class);
        let (_, off) = g.locate(loc.slot);
        let need = (off + used).div_ceil(PAGE) * PAGE;
        let st = self.state(e);
        st.write_len = st.write_len.max(need.min(g.block_size));
        if st.dirty.is_none() {
            let newly = st.wb.is_none();
            st.dirty = Some(lsn);
            self.dirty.insert((lsn, e));
            if newly {
                self.dirty_bytes += g.block_size;
            }
        }
        self.update_pin(e);
    }

    /// Keeps block `e` cached (pinned) until [`Blocks::release`]: for an operation that needs
    /// it and another block at once, while it waits for the other.
    pub(super) fn hold(&mut self, e: u32) {
        self.state(e).holds += 1;
        self.update_pin(e);
    }

    /// Ends a [`Blocks::hold`].
    pub(super) fn release(&mut self, e: u32) {
        let st = self.state(e);
        st.holds = st.holds.saturating_sub(1);
        self.update_pin(e);
    }

    /// Whether block `e` has changes not yet written back.
    pub(super) fn is_dirty(&self, e: u32) -> bool {
        self.states
            .get(e as usize)
            .is_some_and(|s| s.dirty.is_some())
    }

    /// Bytes of the blocks that are dirty or being written back.
    pub(super) fn dirty_bytes(&self) -> usize {
        self.dirty_bytes
    }

    /// Dirty blocks.
    pub(super) fn dirty_blocks(&self) -> usize {
        self.dirty.len()
    }

    /// The page cache's size limit in bytes.
    pub(super) fn cache_capacity(&self) -> usize {
        self.cache.capacity_bytes()
    }

    /// The cached block `key`, without touching the LRU order or the counters.
    pub(super) fn peek(&self, key: BlockKey) -> Option<u32> {
        self.cache.peek(key)
    }

    /// The oldest LSN a dirty block or the batch in progress still needs from the staging
    /// area.
    pub(super) fn oldest_needed(&self) -> Option<u64> {
        let d = self.dirty.first().map(|&(l, _)| l);
        let b = self.batch.as_ref().map(|b| b.min_lsn);
        match (d, b) {
            (Some(x), Some(y)) => Some(x.min(y)),
            (x, y) => x.or(y),
        }
    }

    /// Where the writeback batch stands, if there is one.
    pub(super) fn batch_phase(&self) -> Option<Phase> {
        self.batch.as_ref().map(|b| b.phase)
    }

    /// Whether a batch finished since the last call.
    pub(super) fn take_finished(&mut self) -> bool {
        std::mem::take(&mut self.finished)
    }

    /// Starts a writeback batch of up to `max_bytes` of dirty blocks, oldest change first,
    /// unless one is in progress: each block's bytes are copied now (its changes until now
    /// are staged before `point`) and written once the staging area is durable up to `point`
    /// with no chunk write failed since (`failures` = the failure count now). Returns the
    /// blocks taken.
    pub(super) fn start_writeback(&mut self, point: u64, failures: u64, max_bytes: usize) -> usize {
        if self.batch.is_some() {
            return 0;
        }
        let mut chosen = Vec::new();
        let mut bytes = 0usize;
        for &(lsn, e) in &self.dirty {
            if bytes >= max_bytes {
                break;
            }
            // A block whose previous snapshot is still being written waits for the next batch.
            if self.states.get(e as usize).is_some_and(|s| s.wb.is_some()) {
                continue;
            }
            let Some(key) = self.cache.key_of(e) else {
                continue;
            };
            let class = (key >> 56) as u8;
            bytes += Geometry::of(class).block_size;
            chosen.push((lsn, e, class, key & ((1 << 56) - 1)));
        }
        if chosen.is_empty() {
            return 0;
        }
        let mut items = Vec::with_capacity(chosen.len());
        let mut min_lsn = u64::MAX;
        for (lsn, e, class, block) in chosen {
            let size = Geometry::of(class).block_size;
            let st = self.state(e);
            let len = st.write_len.clamp(PAGE, size);
            st.write_len = 0;
            st.dirty = None;
            st.wb = u32::try_from(items.len()).ok();
            self.dirty.remove(&(lsn, e));
            let mut buf = self.take_buf(size);
            if let (Some(dst), Some(src)) = (
                buf.as_mut_slice().get_mut(..len),
                self.cache.bytes(e).and_then(|b| b.get(..len)),
            ) {
                dst.copy_from_slice(src);
            }
            min_lsn = min_lsn.min(lsn);
            items.push(WbItem {
                e,
                class,
                block,
                rec_lsn: lsn,
                len,
                buf: Some(buf),
                ok: false,
            });
        }
        let n = items.len();
        self.batch = Some(Batch {
            point,
            failures,
            min_lsn,
            phase: Phase::Durable,
            items,
            next: 0,
            left: 0,
            to_sync: Vec::new(),
        });
        n
    }

    /// The staging area is durable up to `durable` and `failures` chunk writes failed so far:
    /// a batch waiting for that starts writing — or, if a chunk write failed meanwhile (its
    /// changes were undone after the snapshots were taken), is dropped and its blocks dirty
    /// again.
    pub(super) fn writeback_ready(&mut self, durable: u64, failures: u64) {
        let Some(b) = self.batch.as_mut() else {
            return;
        };
        if b.phase != Phase::Durable || durable < b.point {
            return;
        }
        if b.failures != failures {
            self.end_batch(false);
            return;
        }
        b.phase = Phase::Write;
        b.left = b.items.len();
    }

    /// Hands the batch's writes, then its syncs, to the backend while it has room.
    fn issue_writeback<B: Backend>(&mut self, backend: &mut B, slabs: &[Option<Slab>]) {
        let Some(b) = self.batch.as_mut() else {
            return;
        };
        while backend.in_flight() < self.depth {
            match b.phase {
                Phase::Write => {
                    let i = b.next;
                    let Some(item) = b.items.get_mut(i) else {
                        return;
                    };
                    let Some(buf) = item.buf.take() else {
                        b.next += 1;
                        continue;
                    };
                    let file = match slabs.get(usize::from(item.class)) {
                        Some(Some(s)) => s.file(),
                        _ => {
                            // A dirty block of a class without a file cannot be.
                            tracing::error!(
                                class = item.class,
                                "writeback of a class without a file"
                            );
                            item.ok = false;
                            item.buf = Some(buf);
                            b.next += 1;
                            b.left = b.left.saturating_sub(1);
                            if b.left == 0 && b.next >= b.items.len() {
                                b.phase = Phase::SyncDir;
                            }
                            continue;
                        }
                    };
                    let size = Geometry::of(item.class).block_size as u64;
                    let req = IoRequest {
                        kind: IoKind::Write,
                        file,
                        offset: item.block * size,
                        len: item.len,
                        buf,
                        tag: Tag::Writeback.encode(i as u32),
                    };
                    let len = item.len;
                    match backend.submit(req) {
                        Ok(()) => {
                            b.next += 1;
                            self.stats.writes += 1;
                            self.stats.write_bytes += len as u64;
                        }
                        Err(req) => {
                            item.buf = Some(req.buf);
                            return;
                        }
                    }
                }
                Phase::Sync => {
                    let Some(&class) = b.to_sync.last() else {
                        return;
                    };
                    let Some(Some(slab)) = slabs.get(usize::from(class)) else {
                        b.to_sync.pop();
                        b.left -= 1;
                        continue;
                    };
                    let req = IoRequest {
                        kind: IoKind::Sync,
                        file: slab.file(),
                        offset: 0,
                        len: 0,
                        buf: AlignedBuf::empty(),
                        tag: Tag::SlabSync.encode(u32::from(class)),
                    };
                    if backend.submit(req).is_err() {
                        return;
                    }
                    b.to_sync.pop();
                }
                Phase::Durable | Phase::SyncDir => return,
            }
        }
    }

    /// Item `i` of the batch was written, or not.
    pub(super) fn on_writeback_done(&mut self, i: u32, c: IoCompletion) {
        let Some(b) = self.batch.as_mut() else {
            self.recycle(c.buf);
            return;
        };
        if let Some(item) = b.items.get_mut(i as usize) {
            item.ok = matches!(c.result, Ok(n) if n == item.len);
            if !item.ok {
                tracing::warn!(
                    class = item.class,
                    block = item.block,
                    result = ?c.result,
                    "writing back a block failed; it stays dirty and is retried"
                );
                if let Err(e) = &c.result {
                    self.writeback_error = Some(super::stage::clone_io_error(e));
                }
            }
            b.left = b.left.saturating_sub(1);
        }
        if b.phase == Phase::Write && b.left == 0 && b.next >= b.items.len() {
            b.phase = Phase::SyncDir;
        }
        self.recycle(c.buf);
    }

    /// After the data directory's sync (`dir_ok`: it succeeded, or none was needed): queues
    /// the syncs of the slab files written.
    pub(super) fn start_slab_syncs(&mut self, dir_ok: bool) {
        let Some(b) = self.batch.as_mut() else {
            return;
        };
        if b.phase != Phase::SyncDir {
            return;
        }
        if !dir_ok {
            for it in &mut b.items {
                it.ok = false;
            }
        }
        let mut classes: Vec<u8> = b.items.iter().filter(|i| i.ok).map(|i| i.class).collect();
        classes.sort_unstable();
        classes.dedup();
        b.left = classes.len();
        b.to_sync = classes;
        b.phase = Phase::Sync;
        if b.left == 0 {
            self.end_batch(true);
        }
    }

    /// The sync of `class`'s slab file completed.
    pub(super) fn on_slab_sync_done(&mut self, class: u8, c: &IoCompletion) {
        let Some(b) = self.batch.as_mut() else {
            return;
        };
        if let Err(e) = &c.result {
            tracing::warn!(class, error = %e, "syncing a slab file failed; its blocks are written back again");
            self.writeback_error = Some(super::stage::clone_io_error(e));
            for it in b.items.iter_mut().filter(|i| i.class == class) {
                it.ok = false;
            }
        }
        b.left = b.left.saturating_sub(1);
        if b.phase == Phase::Sync && b.left == 0 && b.to_sync.is_empty() {
            self.end_batch(true);
        }
    }

    /// Ends the batch: blocks written and synced are clean (as far as the snapshot goes);
    /// the others are dirty again with their old LSN. `ran`: the batch was written (not
    /// dropped before).
    fn end_batch(&mut self, ran: bool) {
        let Some(b) = self.batch.take() else {
            return;
        };
        let mut failed = 0u64;
        for it in b.items {
            if let Some(buf) = it.buf {
                self.recycle(buf);
            }
            let size = Geometry::of(it.class).block_size;
            if let Some(st) = self.states.get_mut(it.e as usize) {
                st.wb = None;
                if st.dirty.is_none() {
                    self.dirty_bytes -= size;
                }
            }
            if it.ok {
                self.wb_stats.blocks += 1;
                self.wb_stats.bytes += it.len as u64;
            } else {
                failed += u64::from(ran);
                self.redirty(it.e, it.class, it.rec_lsn);
            }
            self.update_pin(it.e);
        }
        if ran {
            self.wb_stats.batches += 1;
            self.wb_stats.failed += failed;
            if failed == 0 {
                self.writeback_error = None;
            }
        }
        self.finished = true;
    }

    /// Block `e` (of `class`) needs its changes from `lsn` on written back again.
    fn redirty(&mut self, e: u32, class: u8, lsn: u64) {
        let size = Geometry::of(class).block_size;
        let st = self.state(e);
        st.write_len = size;
        match st.dirty {
            None => {
                let newly = st.wb.is_none();
                st.dirty = Some(lsn);
                self.dirty.insert((lsn, e));
                if newly {
                    self.dirty_bytes += size;
                }
            }
            Some(l) if l > lsn => {
                st.dirty = Some(lsn);
                self.dirty.remove(&(l, e));
                self.dirty.insert((lsn, e));
            }
            Some(_) => {}
        }
    }

    /// Removes block `e` from the cache with its I/O state.
    fn drop_block(&mut self, e: u32) {
        self.state(e).clear();
        self.cache.invalidate(e);
    }
}

/// A copy of an I/O error (an OS error keeps its code).
fn clone_io_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class 0 (100-byte slots): slots 0..40 share block 0.
    fn loc(slot: u32) -> Location {
        Location { class: 0, slot }
    }

    fn write(b: &mut Blocks, e: u32, slot: u32, value: &[u8]) {
        let bytes = b.slot_mut(e, loc(slot));
        assert!(bytes.is_some());
        if let Some(bytes) = bytes {
            assert!(record::encode_live(bytes, 1, b"k", value).is_some());
        }
    }

    #[test]
    fn a_cached_read_checks_a_slot_again_after_it_changes() {
        let mut b = Blocks::new(1 << 20, 8, false);
        let e = b.acquire(0, 0, 1, true, true);
        assert!(e.is_some(), "a fresh block needs no read");
        let Some(e) = e else { return };
        write(&mut b, e, 2, b"one");
        write(&mut b, e, 3, b"two");
        for _ in 0..2 {
            assert!(matches!(
                b.decode_slot(e, loc(2)),
                Some(record::Slot::Live { value: b"one", .. })
            ));
        }
        // A change the checksum does not cover (as a bit flipped in memory or a torn copy
        // would leave): the slot is checked again, its neighbour keeps its mark.
        if let Some(bytes) = b.slot_mut(e, loc(2)) {
            if let Some(v) = bytes.get_mut(record::HEADER_LEN + 1) {
                *v ^= 0x20;
            }
        }
        assert!(matches!(
            b.decode_slot(e, loc(2)),
            Some(record::Slot::Corrupt)
        ));
        assert!(matches!(
            b.decode_slot(e, loc(3)),
            Some(record::Slot::Live { value: b"two", .. })
        ));
        write(&mut b, e, 2, b"three");
        assert!(matches!(
            b.decode_slot(e, loc(2)),
            Some(record::Slot::Live {
                value: b"three",
                ..
            })
        ));
    }
}
