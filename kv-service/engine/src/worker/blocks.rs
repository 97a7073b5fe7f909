//! Block I/O: the page cache's blocks and the I/O that loads and writes them.
//!
//! Per cached block (indexed like the cache's entries; the cache itself knows only whether an
//! entry is pinned):
//! - `loading`: a read is in flight (the cache lent its buffer to the backend); operations that
//!   need the block wait in `blocked`, so concurrent misses on one block cause one read;
//! - `write`: `Queued` (a write waits for room in the backend's queue: further changes join
//!   it, so writes to one block coalesce) or `InFlight` (a copy of the block is being written:
//!   further *changes* wait in `blocked` until it completes, so writes to a block never
//!   overtake each other; *reads* go on, and see the block as the last applied change left it).
//!
//! A block with I/O queued or in flight or operations waiting is pinned in the cache. The
//! outcome of I/O comes back as [`Event`]s for the operations' state machines.

use std::collections::VecDeque;

use crate::backend::{AlignedBuf, Backend, IoCompletion, IoKind, IoRequest};
use crate::error::Error;
use crate::index::Location;
use crate::pagecache::{block_key, PageCache};
use crate::slab::{Geometry, Slab, PAGE};

use super::OpId;

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
    loading: bool,
    write: WriteState,
    /// Bytes from the block's start that the queued / in-flight write covers.
    write_len: usize,
    /// Operations whose changes are in the queued / in-flight write.
    write_waiters: Vec<OpId>,
    /// Operations waiting for the block to load, or (changes) for an in-flight write.
    blocked: VecDeque<OpId>,
}

impl BlockState {
    fn busy(&self) -> bool {
        self.loading
            || self.write != WriteState::Idle
            || !self.blocked.is_empty()
            || !self.write_waiters.is_empty()
    }

    fn clear(&mut self) {
        self.loading = false;
        self.write = WriteState::Idle;
        self.write_len = 0;
        self.write_waiters.clear();
        self.blocked.clear();
    }
}

/// What finished I/O means for an operation.
pub(super) enum Event {
    /// The block it waited for is usable now: run it again.
    Retry(OpId),
    /// The write carrying its change completed, or failed.
    Written(OpId, Result<(), Error>),
    /// The block it waited for could not be read.
    ReadFailed(OpId, Error),
}

/// Counters of the block I/O.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct IoStats {
    pub(super) reads: u64,
    pub(super) writes: u64,
    pub(super) read_bytes: u64,
    pub(super) write_bytes: u64,
}

/// Most spare write buffers of more than 4 KiB kept, in bytes.
const SPARE_LARGE_BYTES: usize = 8 << 20;
/// Most spare 4 KiB write buffers kept.
const SPARE_PAGES: usize = 64;

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
    done: Vec<IoCompletion>,
    failed: Vec<IoCompletion>,
    pub(super) stats: IoStats,
}

impl Blocks {
    pub(super) fn new(cache_bytes: usize, depth: u32) -> Self {
        Self {
            cache: PageCache::new(cache_bytes),
            states: Vec::new(),
            queue: VecDeque::new(),
            depth: depth.max(1) as usize,
            spare: Vec::new(),
            spare_large_bytes: 0,
            done: Vec::new(),
            failed: Vec::new(),
            stats: IoStats::default(),
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
        let busy = self.state(e).busy();
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
            let st = self.state(e);
            // A reader needs the block loaded, nothing more: it reads the block as the last
            // change applied to it left it (that change's write may still be in flight).
            // Changes queue behind an in-flight write and behind each other.
            if st.loading || (write && (st.write == WriteState::InFlight || !st.blocked.is_empty()))
            {
                st.blocked.push_back(id);
                self.update_pin(e);
                return None;
            }
            return Some(e);
        }
        let size = Geometry::of(class).block_size;
        let e = self.cache.insert(key, size);
        self.state(e).clear();
        if fresh {
            if let Some(b) = self.cache.bytes_mut(e) {
                b.fill(0);
            }
            return Some(e);
        }
        let st = self.state(e);
        st.loading = true;
        st.blocked.push_back(id);
        self.queue.push_back((e, IoKind::Read));
        self.update_pin(e);
        None
    }

    /// Block `block` of `class` if it is cached and loaded, as a cache lookup (a hit counts
    /// and the block becomes the most recently used); `None` changes nothing (the operation
    /// that follows counts the miss).
    pub(super) fn loaded_lookup(&mut self, class: u8, block: u64) -> Option<u32> {
        let key = block_key(class, block);
        match self.cache.find(key) {
            Some(e) if !self.state(e).loading => self.cache.lookup(key),
            _ => None,
        }
    }

    /// Block `block` of `class` if it is cached and loaded, for an operation already queued
    /// on it (no new registration; no hit counted twice).
    pub(super) fn loaded(&mut self, class: u8, block: u64) -> Option<u32> {
        let e = self.cache.find(block_key(class, block))?;
        (!self.state(e).loading).then_some(e)
    }

    /// The bytes of the slot `loc` inside cached block `e`.
    pub(super) fn slot(&self, e: u32, loc: Location) -> Option<&[u8]> {
        let g = Geometry::of(loc.class);
        let (_, off) = g.locate(loc.slot);
        self.cache.bytes(e)?.get(off..off + g.slot_size)
    }

    /// The bytes of the slot `loc` inside cached block `e`, to change them.
    pub(super) fn slot_mut(&mut self, e: u32, loc: Location) -> Option<&mut [u8]> {
        let g = Geometry::of(loc.class);
        let (_, off) = g.locate(loc.slot);
        self.cache.bytes_mut(e)?.get_mut(off..off + g.slot_size)
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
            self.queue.pop_front();
            let Some(key) = self.cache.key_of(e) else {
                continue;
            };
            let class = (key >> 56) as u8;
            let block = key & ((1 << 56) - 1);
            let block_size = Geometry::of(class).block_size;
            let (buf, len) = match kind {
                IoKind::Read => match self.cache.lend_buf(e) {
                    Some(b) => (b, block_size),
                    None => continue,
                },
                IoKind::Write => {
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
                    tag: u64::from(e),
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
                tag: u64::from(e),
            };
            match backend.submit(req) {
                Ok(()) => match kind {
                    IoKind::Read => {
                        self.stats.reads += 1;
                        self.stats.read_bytes += len as u64;
                    }
                    IoKind::Write => {
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
                        IoKind::Write => self.recycle(req.buf),
                    }
                    self.queue.push_front((e, kind));
                    break;
                }
            }
        }
    }

    /// Reaps the backend's completions and turns them into events, in completion order: for
    /// a write, its waiters' [`Event::Written`] first, then the blocked operations'
    /// [`Event::Retry`].
    pub(super) fn complete<B: Backend>(&mut self, backend: &mut B, events: &mut Vec<Event>) {
        let mut done = std::mem::take(&mut self.done);
        done.clear();
        done.append(&mut self.failed);
        backend.reap(&mut done);
        for c in done.drain(..) {
            self.on_complete(c, events);
        }
        self.done = done;
    }

    fn on_complete(&mut self, c: IoCompletion, events: &mut Vec<Event>) {
        let Ok(e) = u32::try_from(c.tag) else {
            return;
        };
        let st = self.state(e);
        let expected = match c.kind {
            IoKind::Read => c.buf.len(),
            IoKind::Write => st.write_len,
        };
        let blocked = std::mem::take(&mut st.blocked);
        let waiters = match c.kind {
            IoKind::Read => {
                st.loading = false;
                Vec::new()
            }
            IoKind::Write => {
                st.write = WriteState::Idle;
                st.write_len = 0;
                std::mem::take(&mut st.write_waiters)
            }
        };
        let failure = match &c.result {
            Ok(n) if *n == expected => None,
            Ok(_) => Some(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
            Err(err) => Some(clone_io_error(err)),
        };
        let error = |ctx: &'static str| {
            let source = match &failure {
                Some(err) => clone_io_error(err),
                None => std::io::Error::other("no error"),
            };
            Error::io(ctx, source)
        };
        match c.kind {
            IoKind::Read => {
                if let Some(b) = self.cache.restore_buf(e, c.buf) {
                    self.recycle(b);
                }
                if failure.is_none() {
                    events.extend(blocked.iter().map(|&id| Event::Retry(id)));
                } else {
                    self.drop_block(e);
                    for &id in &blocked {
                        events.push(Event::ReadFailed(id, error("reading a block")));
                    }
                }
            }
            IoKind::Write => {
                self.recycle(c.buf);
                if failure.is_some() {
                    // The block's state on disk is unknown: forget it, re-read it when needed.
                    self.drop_block(e);
                }
                for &id in &waiters {
                    let r = match failure {
                        None => Ok(()),
                        Some(_) => Err(error("writing a block")),
                    };
                    events.push(Event::Written(id, r));
                }
                events.extend(blocked.iter().map(|&id| Event::Retry(id)));
            }
        }
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
