//! Per-worker LRU cache of blocks (4 KiB pages for small classes, one slot for large ones).
//!
//! A hit moves the block to the front of the recency list unless it is already among the most
//! recent quarter of the blocks. Relinking writes the block's two neighbours and the old front
//! — three more random cache lines on every cached read, the largest cost of a hit once the
//! data fits in memory — while reordering the front quarter changes nothing an eviction (from
//! the back) sees. Whether a block is in the front quarter is known without walking the list:
//! every push to the front is numbered, and a block last pushed `d` pushes ago has at most `d`
//! blocks in front of it (later pushes are the only way to get ahead of it).
//!
//! The cache knows nothing of I/O: the block I/O layer (`worker/blocks.rs`) *pins* an entry
//! while it has I/O queued or in flight or operations waiting on it, and a pinned entry is
//! never evicted. The size limit is therefore soft: when every entry is pinned the cache grows
//! past it and shrinks back as entries are unpinned.
use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::backend::AlignedBuf;

/// Identifies a block within one worker: `(class << 56) | block number`.
pub(crate) type BlockKey = u64;

/// Builds a [`BlockKey`].
pub(crate) fn block_key(class: u8, block: u64) -> BlockKey {
    (u64::from(class) << 56) | (block & ((1 << 56) - 1))
}

/// One cached block.
struct Entry {
    key: BlockKey,
    /// The block's bytes; [`AlignedBuf::empty`] while lent out for a read.
    buf: AlignedBuf,
    /// The block's size (also while the buffer is lent out).
    size: usize,
    /// Never evicted while set.
    pinned: bool,
    /// A read is filling the buffer (or has it on loan): the bytes are not the block's yet.
    loading: bool,
    /// Bit `i`: the record in slot `i` of the block passed its checksum and the slot's bytes
    /// have not changed since (slots past 64 are never marked). Cleared whenever the bytes
    /// may change, so a set bit lets a cached read skip the checksum. A `Cell`: a read that
    /// verifies a record marks it while it still borrows the bytes.
    verified: Cell<u64>,
    /// The number of the push that last put it at the front.
    pushed: u64,
    prev: u32,
    next: u32,
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
    /// Pushes to the front so far (numbers them).
    pushes: u64,
    used_bytes: usize,
    capacity_bytes: usize,
    spare_pages: Vec<AlignedBuf>,
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
            pushes: 0,
            used_bytes: 0,
            capacity_bytes,
            spare_pages: Vec::new(),
            hits: 0,
            misses: 0,
            evictions: 0,
        }
    }

    /// Bytes held by cached blocks.
    pub(crate) fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// The size limit in bytes (soft: pinned blocks may exceed it).
    pub(crate) fn capacity_bytes(&self) -> usize {
        self.capacity_bytes
    }

    /// Finds a block without marking it used or counting a hit.
    pub(crate) fn peek(&self, key: BlockKey) -> Option<u32> {
        self.map.get(&key).copied()
    }

    /// Finds a block and marks it most recently used.
    pub(crate) fn lookup(&mut self, key: BlockKey) -> Option<u32> {
        let idx = *self.map.get(&key)?;
        self.touch(idx);
        Some(idx)
    }

    /// A hit of entry `idx` (found with [`PageCache::find`]): counted, and the entry is among
    /// the most recent quarter afterwards (moved to the front unless it already was).
    pub(crate) fn touch(&mut self, idx: u32) {
        let relink = self
            .entry(idx)
            .is_some_and(|e| self.behind_front_quarter(e));
        self.hit(idx, relink);
    }

    /// Counts a hit of entry `idx`, moving it to the front if `relink`.
    fn hit(&mut self, idx: u32, relink: bool) {
        self.hits += 1;
        if relink {
            self.unlink(idx);
            self.push_front(idx);
        }
    }

    fn behind_front_quarter(&self, e: &Entry) -> bool {
        self.pushes - e.pushed > (self.map.len() / 4) as u64
    }

    /// A hit of a block that is cached and not loading (as [`PageCache::find`] then
    /// [`PageCache::touch`], reading the entry once); `None` changes nothing.
    pub(crate) fn hit_loaded(&mut self, key: BlockKey) -> Option<u32> {
        let idx = *self.map.get(&key)?;
        let e = self.entry(idx)?;
        if e.loading {
            return None;
        }
        let relink = self.behind_front_quarter(e);
        self.hit(idx, relink);
        Some(idx)
    }

    /// Whether entry `idx` is loading (see [`PageCache::set_loading`]).
    pub(crate) fn loading(&self, idx: u32) -> bool {
        self.entry(idx).is_some_and(|e| e.loading)
    }

    /// Marks entry `idx` as being filled by a read (`true`) or holding the block's bytes.
    pub(crate) fn set_loading(&mut self, idx: u32, loading: bool) {
        if let Some(e) = self.entry_mut(idx) {
            e.loading = loading;
            e.verified.set(0);
        }
    }

    /// Whether slot `slot` of entry `idx` is marked verified (see [`Entry::verified`]).
    pub(crate) fn slot_verified(&self, idx: u32, slot: usize) -> bool {
        slot < 64
            && self
                .entry(idx)
                .is_some_and(|e| e.verified.get() & (1 << slot) != 0)
    }

    /// Marks slot `slot` of entry `idx` verified: its record passed its checksum.
    pub(crate) fn set_slot_verified(&self, idx: u32, slot: usize) {
        if slot < 64 {
            if let Some(e) = self.entry(idx) {
                e.verified.set(e.verified.get() | 1 << slot);
            }
        }
    }

    /// Finds a block without counting a hit or changing the recency order.
    pub(crate) fn find(&self, key: BlockKey) -> Option<u32> {
        self.map.get(&key).copied()
    }

    fn entry(&self, idx: u32) -> Option<&Entry> {
        self.entries.get(idx as usize)?.as_ref()
    }

    fn entry_mut(&mut self, idx: u32) -> Option<&mut Entry> {
        self.entries.get_mut(idx as usize)?.as_mut()
    }

    /// The block key of entry `idx`.
    pub(crate) fn key_of(&self, idx: u32) -> Option<BlockKey> {
        Some(self.entry(idx)?.key)
    }

    /// The bytes of entry `idx`.
    pub(crate) fn bytes(&self, idx: u32) -> Option<&[u8]> {
        Some(self.entry(idx)?.buf.as_slice())
    }

    /// The bytes of entry `idx`, mutably (every slot loses its verified mark).
    pub(crate) fn bytes_mut(&mut self, idx: u32) -> Option<&mut [u8]> {
        let e = self.entry_mut(idx)?;
        e.verified.set(0);
        Some(e.buf.as_mut_slice())
    }

    /// The `slot_size` bytes of slot `slot` of entry `idx` (`None` past the block's end).
    pub(crate) fn slot_bytes(&self, idx: u32, slot: usize, slot_size: usize) -> Option<&[u8]> {
        let start = slot.checked_mul(slot_size)?;
        self.bytes(idx)?.get(start..start.checked_add(slot_size)?)
    }

    /// The bytes of slot `slot` of entry `idx`, mutably: that slot loses its verified mark,
    /// the others keep theirs (nothing outside the slot can change through this).
    pub(crate) fn slot_bytes_mut(
        &mut self,
        idx: u32,
        slot: usize,
        slot_size: usize,
    ) -> Option<&mut [u8]> {
        let start = slot.checked_mul(slot_size)?;
        let end = start.checked_add(slot_size)?;
        let e = self.entry_mut(idx)?;
        let bytes = e.buf.as_mut_slice().get_mut(start..end)?;
        if slot < 64 {
            e.verified.set(e.verified.get() & !(1 << slot));
        }
        Some(bytes)
    }

    /// Pins (never evicted) or unpins entry `idx`.
    pub(crate) fn set_pinned(&mut self, idx: u32, pinned: bool) {
        if let Some(e) = self.entry_mut(idx) {
            e.pinned = pinned;
        }
    }

    /// Lends entry `idx`'s buffer out (for a read into it), leaving a placeholder; give it
    /// back with [`PageCache::restore_buf`].
    pub(crate) fn lend_buf(&mut self, idx: u32) -> Option<AlignedBuf> {
        let e = self.entry_mut(idx)?;
        e.verified.set(0);
        Some(std::mem::replace(&mut e.buf, AlignedBuf::empty()))
    }

    /// Gives entry `idx` its buffer back (or a buffer of the same size); returns it if the
    /// entry is gone.
    pub(crate) fn restore_buf(&mut self, idx: u32, buf: AlignedBuf) -> Option<AlignedBuf> {
        match self.entry_mut(idx) {
            Some(e) => {
                e.buf = buf;
                e.verified.set(0);
                None
            }
            None => Some(buf),
        }
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
            if !e.pinned {
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
        let entry = Entry {
            key,
            buf,
            size,
            pinned: false,
            loading: false,
            verified: Cell::new(0),
            pushed: 0,
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

    /// Keeps a 4 KiB buffer for reuse (up to a few dozen).
    fn recycle(&mut self, buf: AlignedBuf) {
        if buf.len() == super::slab::PAGE && self.spare_pages.len() < 64 {
            self.spare_pages.push(buf);
        }
    }

    /// Removes a block, pinned or not, and returns its buffer.
    pub(crate) fn remove(&mut self, idx: u32) -> Option<AlignedBuf> {
        self.unlink(idx);
        let e = self.entries.get_mut(idx as usize)?.take()?;
        self.map.remove(&e.key);
        self.free_entries.push(idx);
        self.used_bytes -= e.size;
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
        self.pushes += 1;
        let pushed = self.pushes;
        if let Some(e) = self.entry_mut(idx) {
            e.prev = NIL;
            e.next = old;
            e.pushed = pushed;
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
        c.set_pinned(a, true); // I/O in flight: must not be evicted
        let _ = c.lookup(block_key(0, 2));
        let _c3 = c.insert(block_key(0, 3), 4096);
        assert!(c.lookup(block_key(0, 1)).is_some(), "busy block kept");
        assert!(
            c.lookup(block_key(0, 2)).is_none(),
            "idle LRU block evicted"
        );
        let _ = b;
        c.set_pinned(a, false);
        // Now a is most recently used, 3 is LRU.
        let _ = c.insert(block_key(0, 4), 4096);
        assert!(c.lookup(block_key(0, 3)).is_none());
        assert!(c.lookup(block_key(0, 1)).is_some());
        assert_eq!(c.used_bytes(), 2 * 4096);
        assert!(c.evictions >= 2);
    }

    /// Position of `idx` from the front of the recency list.
    fn position(c: &PageCache, idx: u32) -> Option<usize> {
        let mut cur = c.head;
        let mut pos = 0;
        while cur != NIL {
            if cur == idx {
                return Some(pos);
            }
            cur = c.entry(cur)?.next;
            pos += 1;
        }
        None
    }

    proptest::proptest! {
        #![proptest_config(testkit::proptest_config(64, "proptest-regressions/pagecache.txt"))]

        /// Whatever the mix of inserts, hits and removals: a block just hit or inserted has
        /// at most a quarter of the cached blocks in front of it (it is at the front while the
        /// cache holds fewer than 4), every block has no more blocks in front of it than
        /// pushes since its own (the bound the front-quarter test relies on), and the list
        /// holds exactly the cached blocks.
        #[test]
        fn a_hit_block_is_in_the_front_quarter(ops in proptest::collection::vec((0u8..4, 0u64..64), 1..400)) {
            let mut c = PageCache::new(48 * 4096);
            for (kind, b) in ops {
                let key = block_key(0, b);
                match kind {
                    0 | 1 => {
                        let idx = match c.find(key) {
                            Some(i) => { c.touch(i); i }
                            None => c.insert(key, 4096),
                        };
                        let pos = position(&c, idx);
                        proptest::prop_assert!(pos.is_some());
                        let pos = pos.unwrap_or(usize::MAX);
                        proptest::prop_assert!(pos <= (c.map.len() / 4), "position {} of {}", pos, c.map.len());
                    }
                    2 => {
                        if let Some(i) = c.find(key) {
                            c.invalidate(i);
                        }
                    }
                    _ => {
                        let _ = c.lookup(key);
                    }
                }
                let mut n = 0;
                let mut cur = c.head;
                while cur != NIL && n <= c.map.len() {
                    let e = c.entry(cur);
                    proptest::prop_assert!(e.is_some());
                    let Some(e) = e else { break };
                    proptest::prop_assert!(c.pushes - e.pushed >= n as u64, "a block is never further ahead than its pushes allow");
                    cur = e.next;
                    n += 1;
                }
                proptest::prop_assert_eq!(n, c.map.len());
            }
        }
    }

    #[test]
    fn a_loading_block_is_not_a_hit() {
        let mut c = PageCache::new(4 * 4096);
        let a = c.insert(block_key(0, 1), 4096);
        c.set_loading(a, true);
        let hits = c.hits;
        assert_eq!(
            c.hit_loaded(block_key(0, 1)),
            None,
            "its bytes are not the block's yet"
        );
        assert_eq!(c.hits, hits, "a refused hit counts nothing");
        c.set_loading(a, false);
        assert_eq!(c.hit_loaded(block_key(0, 1)), Some(a));
        assert_eq!(c.hits, hits + 1);
        assert_eq!(c.hit_loaded(block_key(0, 2)), None, "not cached");
    }

    #[test]
    fn verified_marks_go_whenever_the_bytes_may_change() {
        let mut c = PageCache::new(4 * 4096);
        let a = c.insert(block_key(0, 1), 4096);
        assert!(!c.slot_verified(a, 0), "a new entry has no verified slot");
        let mark = |c: &mut PageCache| {
            for s in [0, 3, 63] {
                c.set_slot_verified(a, s);
            }
        };
        mark(&mut c);
        assert!(c.slot_verified(a, 0) && c.slot_verified(a, 3) && c.slot_verified(a, 63));
        c.set_slot_verified(a, 64);
        assert!(!c.slot_verified(a, 64), "slots past 64 are never marked");

        assert_eq!(c.slot_bytes_mut(a, 3, 64).map(|b| b.len()), Some(64));
        assert!(!c.slot_verified(a, 3), "the changed slot loses its mark");
        assert!(
            c.slot_verified(a, 0) && c.slot_verified(a, 63),
            "the others keep theirs"
        );

        let _ = c.bytes_mut(a);
        assert!(
            !c.slot_verified(a, 0) && !c.slot_verified(a, 63),
            "the whole block may change"
        );

        mark(&mut c);
        c.set_loading(a, true);
        assert!(!c.slot_verified(a, 0), "a read refills the buffer");

        mark(&mut c);
        let buf = c.lend_buf(a);
        assert!(
            !c.slot_verified(a, 0),
            "a lent buffer may come back with other bytes"
        );
        mark(&mut c);
        if let Some(buf) = buf {
            assert!(c.restore_buf(a, buf).is_none());
        }
        assert!(!c.slot_verified(a, 0) && !c.slot_verified(a, 63));

        c.invalidate(a);
        let b = c.insert(block_key(0, 1), 4096);
        assert!(
            !c.slot_verified(b, 0),
            "a re-inserted block starts unverified"
        );
    }

    #[test]
    fn slot_bytes_are_the_slot_and_nothing_else() {
        let mut c = PageCache::new(4 * 4096);
        let a = c.insert(block_key(0, 1), 4096);
        c.bytes_mut(a).unwrap().fill(7);
        c.slot_bytes_mut(a, 3, 512).unwrap().fill(9);
        let all = c.bytes(a).unwrap();
        assert!(all[..3 * 512].iter().all(|&b| b == 7));
        assert!(all[3 * 512..4 * 512].iter().all(|&b| b == 9));
        assert!(all[4 * 512..].iter().all(|&b| b == 7));
        assert_eq!(c.slot_bytes(a, 3, 512), Some(&[9u8; 512][..]));
        assert_eq!(c.slot_bytes(a, 7, 512).map(<[u8]>::len), Some(512));
        assert!(c.slot_bytes(a, 8, 512).is_none(), "past the block");
        assert!(c.slot_bytes_mut(a, 8, 512).is_none());
        assert!(c.slot_bytes(a, usize::MAX, 512).is_none(), "no overflow");
        assert!(c.slot_bytes_mut(a, 1, usize::MAX).is_none());
    }

    #[test]
    fn soft_limit_when_everything_is_busy() {
        let mut c = PageCache::new(4096);
        let a = c.insert(block_key(1, 1), 4096);
        c.set_pinned(a, true);
        let _ = c.insert(block_key(1, 2), 4096);
        assert_eq!(c.used_bytes(), 8192);
        assert!(c.lookup(block_key(1, 1)).is_some());
    }
}
