//! Per-worker LRU cache of blocks (4 KiB pages for small classes, one slot for large ones).
//!
//! Each entry also carries the block's I/O state, which the worker drives:
//! - `loading`: a read is in flight; operations needing the block wait in `blocked`, so
//!   concurrent misses on one block cause a single read;
//! - `write`: `Queued` (a write is waiting for a submission slot: further modifications join
//!   it, i.e. writes coalesce) or `InFlight` (the kernel owns the buffer: modifications
//!   wait in `blocked` until it completes).
//!
//! An entry with I/O queued or in flight, or with waiting operations, is never evicted. The
//! size limit is therefore soft: when every entry is busy the cache grows past it and
//! shrinks back as entries become idle.
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use super::aligned::AlignedBuf;

/// Identifies a block within one worker: `(class << 56) | block number`.
pub(crate) type BlockKey = u64;

/// Builds a [`BlockKey`].
pub(crate) fn block_key(class: u8, block: u64) -> BlockKey {
    (u64::from(class) << 56) | (block & ((1 << 56) - 1))
}

/// Write state of a cached block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteState {
    Idle,
    Queued,
    InFlight,
}

/// One cached block.
pub(crate) struct Entry {
    pub(crate) key: BlockKey,
    pub(crate) buf: AlignedBuf,
    pub(crate) loading: bool,
    pub(crate) write: WriteState,
    /// Bytes from the block start that the pending write must cover.
    pub(crate) write_len: usize,
    /// Operations whose changes are in the queued / in-flight write.
    pub(crate) write_waiters: Vec<u32>,
    /// Operations waiting for the block to load or for an in-flight write to finish.
    pub(crate) blocked: VecDeque<u32>,
    prev: u32,
    next: u32,
}

impl Entry {
    fn busy(&self) -> bool {
        self.loading
            || self.write != WriteState::Idle
            || !self.blocked.is_empty()
            || !self.write_waiters.is_empty()
    }
}

const NIL: u32 = u32::MAX;
const EVICTION_SCAN: usize = 256;

/// Multiplicative hasher for `u64` block keys.
#[derive(Default)]
pub(crate) struct KeyHasher(u64);
impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (n ^ (n >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// The LRU block cache.
pub(crate) struct PageCache {
    map: HashMap<BlockKey, u32, BuildHasherDefault<KeyHasher>>,
    entries: Vec<Option<Entry>>,
    free_entries: Vec<u32>,
    /// Most recently used.
    head: u32,
    /// Least recently used.
    tail: u32,
    used_bytes: usize,
    capacity_bytes: usize,
    spare_pages: Vec<AlignedBuf>,
    spare_vecs: Vec<(Vec<u32>, VecDeque<u32>)>,
    pub(crate) hits: u64,
    pub(crate) misses: u64,
    pub(crate) evictions: u64,
}

impl PageCache {
    pub(crate) fn new(capacity_bytes: usize) -> Self {
        Self {
            map: HashMap::default(),
            entries: Vec::new(),
            free_entries: Vec::new(),
            head: NIL,
            tail: NIL,
            used_bytes: 0,
            capacity_bytes,
            spare_pages: Vec::new(),
            spare_vecs: Vec::new(),
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    /// Bytes held by cached blocks.
    pub(crate) fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Finds a block and marks it most recently used.
    pub(crate) fn lookup(&mut self, key: BlockKey) -> Option<u32> {
        let idx = *self.map.get(&key)?;
        self.unlink(idx);
        self.push_front(idx);
        self.hits += 1;
        Some(idx)
    }

    pub(crate) fn entry(&self, idx: u32) -> Option<&Entry> {
        self.entries.get(idx as usize)?.as_ref()
    }

    pub(crate) fn entry_mut(&mut self, idx: u32) -> Option<&mut Entry> {
        self.entries.get_mut(idx as usize)?.as_mut()
    }

    /// Inserts a block of `size` bytes (not present before), evicting idle least recently
    /// used blocks to stay within the capacity. The buffer's contents are unspecified.
    pub(crate) fn insert(&mut self, key: BlockKey, size: usize) -> u32 {
        self.misses += 1;
        let mut reuse = None;
        let mut cursor = self.tail;
        let mut scanned = 0;
        while self.used_bytes + size > self.capacity_bytes
            && cursor != NIL
            && scanned < EVICTION_SCAN
        {
            scanned += 1;
            let Some(e) = self.entry(cursor) else { break };
            let prev = e.prev;
            if !e.busy() {
                if let Some(buf) = self.remove(cursor) {
                    self.evictions += 1;
                    if reuse.is_none() && buf.len() == size {
                        reuse = Some(buf);
                    } else {
                        self.recycle(buf);
                    }
                }
            }
            cursor = prev;
        }
        let buf = reuse
            .or_else(|| {
                if size == super::slab::PAGE {
                    self.spare_pages.pop()
                } else {
                    None
                }
            })
            .unwrap_or_else(|| AlignedBuf::zeroed(size));
        let (write_waiters, blocked) = self.spare_vecs.pop().unwrap_or_default();
        let entry = Entry {
            key,
            buf,
            loading: false,
            write: WriteState::Idle,
            write_len: 0,
            write_waiters,
            blocked,
            prev: NIL,
            next: NIL,
        };
        self.used_bytes += size;
        let idx = match self.free_entries.pop() {
            Some(i) => {
                if let Some(slot) = self.entries.get_mut(i as usize) {
                    *slot = Some(entry);
                }
                i
            }
            None => {
                self.entries.push(Some(entry));
                u32::try_from(self.entries.len() - 1).unwrap_or(NIL)
            }
        };
        self.map.insert(key, idx);
        self.push_front(idx);
        idx
    }

    fn recycle(&mut self, buf: AlignedBuf) {
        if buf.len() == super::slab::PAGE && self.spare_pages.len() < 64 {
            self.spare_pages.push(buf);
        }
    }

    /// Removes a block (whatever its state: the caller must know no I/O is in flight) and
    /// returns its buffer.
    pub(crate) fn remove(&mut self, idx: u32) -> Option<AlignedBuf> {
        self.unlink(idx);
        let mut e = self.entries.get_mut(idx as usize)?.take()?;
        self.map.remove(&e.key);
        self.free_entries.push(idx);
        self.used_bytes -= e.buf.len();
        e.write_waiters.clear();
        e.blocked.clear();
        if self.spare_vecs.len() < 64 {
            self.spare_vecs.push((e.write_waiters, e.blocked));
        }
        Some(e.buf)
    }

    /// Removes a block and keeps its buffer for reuse.
    pub(crate) fn invalidate(&mut self, idx: u32) {
        if let Some(buf) = self.remove(idx) {
            self.recycle(buf);
        }
    }

    fn unlink(&mut self, idx: u32) {
        let Some(e) = self.entry(idx) else { return };
        let (prev, next) = (e.prev, e.next);
        if prev != NIL {
            if let Some(p) = self.entry_mut(prev) {
                p.next = next;
            }
        } else if self.head == idx {
            self.head = next;
        }
        if next != NIL {
            if let Some(n) = self.entry_mut(next) {
                n.prev = prev;
            }
        } else if self.tail == idx {
            self.tail = prev;
        }
        if let Some(e) = self.entry_mut(idx) {
            e.prev = NIL;
            e.next = NIL;
        }
    }

    fn push_front(&mut self, idx: u32) {
        let old = self.head;
        if let Some(e) = self.entry_mut(idx) {
            e.prev = NIL;
            e.next = old;
        }
        if old != NIL {
            if let Some(o) = self.entry_mut(old) {
                o.prev = idx;
            }
        } else {
            self.tail = idx;
        }
        self.head = idx;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lru_eviction_skips_busy_blocks() {
        let mut c = PageCache::new(2 * 4096);
        let a = c.insert(block_key(0, 1), 4096);
        let b = c.insert(block_key(0, 2), 4096);
        if let Some(e) = c.entry_mut(a) {
            e.loading = true; // I/O in flight: must not be evicted
        }
        let _ = c.lookup(block_key(0, 2));
        let _c3 = c.insert(block_key(0, 3), 4096);
        assert!(c.lookup(block_key(0, 1)).is_some(), "busy block kept");
        assert!(
            c.lookup(block_key(0, 2)).is_none(),
            "idle LRU block evicted"
        );
        let _ = b;
        if let Some(e) = c.entry_mut(a) {
            e.loading = false;
        }
        // Now a is most recently used, 3 is LRU.
        let _ = c.insert(block_key(0, 4), 4096);
        assert!(c.lookup(block_key(0, 3)).is_none());
        assert!(c.lookup(block_key(0, 1)).is_some());
        assert_eq!(c.used_bytes(), 2 * 4096);
        assert!(c.evictions >= 2);
    }

    #[test]
    fn soft_limit_when_everything_is_busy() {
        let mut c = PageCache::new(4096);
        let a = c.insert(block_key(1, 1), 4096);
        if let Some(e) = c.entry_mut(a) {
            e.write = WriteState::InFlight;
        }
        let _ = c.insert(block_key(1, 2), 4096);
        assert_eq!(c.used_bytes(), 8192);
        assert!(c.lookup(block_key(1, 1)).is_some());
    }
}
