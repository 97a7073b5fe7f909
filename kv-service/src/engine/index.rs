//! The per-worker in-memory index: an ordered map from the **full key** to the item's
//! location, in lexicographic byte order (KVell kept only an 8-byte prefix, ordered
//! numerically, and aborted on a prefix collision).
use std::collections::BTreeMap;
use std::ops::Bound;

/// Where an item lives: its size class and slot number within that class's slab file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Index into [`CLASSES`](crate::engine::slab::CLASSES).
    pub class: u8,
    /// Slot number in the slab file.
    pub slot: u32,
}

/// Ordered full-key index.
#[derive(Debug, Default)]
pub(crate) struct Index {
    map: BTreeMap<Box<[u8]>, Location>,
    key_alloc_bytes: usize,
}

/// Heap bytes glibc malloc uses for an allocation of `len` bytes (8-byte header, 16-byte
/// granularity, 32-byte minimum).
fn malloc_bytes(len: usize) -> usize {
    (len + 8).max(32).div_ceil(16) * 16
}

impl Index {
    pub(crate) fn get(&self, key: &[u8]) -> Option<Location> {
        self.map.get(key).copied()
    }

    /// Inserts or replaces; returns the previous location.
    pub(crate) fn insert(&mut self, key: &[u8], loc: Location) -> Option<Location> {
        if let Some(l) = self.map.get_mut(key) {
            return Some(std::mem::replace(l, loc));
        }
        self.key_alloc_bytes += malloc_bytes(key.len());
        self.map.insert(key.into(), loc);
        None
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Location> {
        let loc = self.map.remove(key)?;
        self.key_alloc_bytes -= malloc_bytes(key.len());
        Some(loc)
    }

    /// Up to `max` keys ≥ `start`, in order.
    pub(crate) fn range_keys(&self, start: &[u8], max: usize) -> Vec<Box<[u8]>> {
        self.map
            .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
            .take(max)
            .map(|(k, _)| k.clone())
            .collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    /// Estimated heap bytes: B-tree nodes (11 entries of key box + location each, assumed
    /// 2/3 full) plus each key's own allocation.
    pub(crate) fn approx_bytes(&self) -> usize {
        let entry = std::mem::size_of::<Box<[u8]>>() + std::mem::size_of::<Location>();
        self.map.len() * entry * 3 / 2 + self.key_alloc_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicographic_full_keys() {
        let mut ix = Index::default();
        let loc = Location { class: 0, slot: 1 };
        // Same 8-byte prefix: KVell would abort here.
        ix.insert(b"abcdefgh-1", loc);
        ix.insert(b"abcdefgh-2", Location { class: 1, slot: 2 });
        ix.insert(b"b", loc);
        ix.insert(b"a", loc);
        assert_eq!(ix.len(), 4);
        let keys = ix.range_keys(b"abcdefgh", 10);
        assert_eq!(
            keys.iter().map(|k| &k[..]).collect::<Vec<_>>(),
            vec![&b"abcdefgh-1"[..], b"abcdefgh-2", b"b"]
        );
        assert_eq!(ix.remove(b"b"), Some(loc));
        assert_eq!(ix.get(b"abcdefgh-2"), Some(Location { class: 1, slot: 2 }));
        assert!(ix.approx_bytes() > 0);
    }
}
