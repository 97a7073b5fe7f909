//! The per-worker in-memory index: an ordered map from the **full key** to the item's
//! location, in lexicographic byte order (KVell kept only an 8-byte prefix, ordered
//! numerically, and aborted on a prefix collision).
//!
//! Layout: a B-tree keyed by the key's first 8 bytes read as a big-endian integer (shorter
//! keys padded with zeros), each entry a bucket of the full keys sharing that prefix, kept
//! sorted. Searching the tree compares integers stored in the nodes themselves; only the
//! bucket's key (usually one) is read from the heap. A B-tree of boxed keys instead follows
//! a pointer and calls `memcmp` at every comparison, which made the lookup the largest cost
//! of a cached GET.
//!
//! Order: for two keys whose padded prefixes differ, the integer order is the lexicographic
//! order (at the first differing byte both are real bytes, or the shorter key has ended and
//! is the smaller); keys with equal padded prefixes share a bucket, sorted by full key.
//! Walking buckets in tree order therefore yields keys in lexicographic order.
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

/// The keys sharing one 8-byte prefix: almost always one.
#[derive(Debug)]
enum Bucket {
    One((Box<[u8]>, Location)),
    /// Sorted by key; at least two entries.
    Many(Vec<(Box<[u8]>, Location)>),
}

/// Ordered full-key index.
#[derive(Debug, Default)]
pub(crate) struct Index {
    map: BTreeMap<u64, Bucket>,
    len: usize,
    key_alloc_bytes: usize,
    many_alloc_bytes: usize,
}

/// Heap bytes glibc malloc uses for an allocation of `len` bytes (8-byte header, 16-byte
/// granularity, 32-byte minimum).
fn malloc_bytes(len: usize) -> usize {
    (len + 8).max(32).div_ceil(16) * 16
}

/// The first 8 bytes of `key`, zero-padded, as a big-endian integer.
fn prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

const MANY_ENTRY: usize = std::mem::size_of::<(Box<[u8]>, Location)>();

impl Index {
    pub(crate) fn get(&self, key: &[u8]) -> Option<Location> {
        match self.map.get(&prefix(key))? {
            Bucket::One((k, loc)) => (**k == *key).then_some(*loc),
            Bucket::Many(v) => v
                .binary_search_by(|(k, _)| (**k).cmp(key))
                .ok()
                .and_then(|i| v.get(i))
                .map(|(_, l)| *l),
        }
    }

    /// Inserts or replaces; returns the previous location.
    pub(crate) fn insert(&mut self, key: &[u8], loc: Location) -> Option<Location> {
        let p = prefix(key);
        let Some(bucket) = self.map.get_mut(&p) else {
            self.map.insert(p, Bucket::One((key.into(), loc)));
            self.len += 1;
            self.key_alloc_bytes += malloc_bytes(key.len());
            return None;
        };
        match bucket {
            Bucket::One((k, l)) if **k == *key => return Some(std::mem::replace(l, loc)),
            Bucket::Many(v) => match v.binary_search_by(|(k, _)| (**k).cmp(key)) {
                Ok(i) => return v.get_mut(i).map(|(_, l)| std::mem::replace(l, loc)),
                Err(i) => {
                    let before = v.capacity();
                    v.insert(i, (key.into(), loc));
                    self.many_alloc_bytes += (v.capacity() - before) * MANY_ENTRY;
                }
            },
            Bucket::One(..) => {
                let Bucket::One((k, l)) = std::mem::replace(bucket, Bucket::Many(Vec::new()))
                else {
                    return None;
                };
                let mut v = Vec::with_capacity(2);
                if *k < *key {
                    v.push((k, l));
                    v.push((key.into(), loc));
                } else {
                    v.push((key.into(), loc));
                    v.push((k, l));
                }
                self.many_alloc_bytes += v.capacity() * MANY_ENTRY;
                *bucket = Bucket::Many(v);
            }
        }
        self.len += 1;
        self.key_alloc_bytes += malloc_bytes(key.len());
        None
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Location> {
        let p = prefix(key);
        let bucket = self.map.get_mut(&p)?;
        let loc = match bucket {
            Bucket::One((k, l)) if **k == *key => {
                let l = *l;
                self.map.remove(&p);
                l
            }
            Bucket::One(..) => return None,
            Bucket::Many(v) => {
                let i = v.binary_search_by(|(k, _)| (**k).cmp(key)).ok()?;
                let (_, l) = v.remove(i);
                if v.len() == 1 {
                    self.many_alloc_bytes -= v.capacity() * MANY_ENTRY;
                    if let Some(last) = v.pop() {
                        *bucket = Bucket::One(last);
                    }
                }
                l
            }
        };
        self.len -= 1;
        self.key_alloc_bytes -= malloc_bytes(key.len());
        Some(loc)
    }

    /// Up to `max` keys ≥ `start`, in order.
    pub(crate) fn range_keys(&self, start: &[u8], max: usize) -> Vec<Box<[u8]>> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        for (_, bucket) in self
            .map
            .range((Bound::Included(prefix(start)), Bound::Unbounded))
        {
            let keys = match bucket {
                Bucket::One(entry) => std::slice::from_ref(entry),
                Bucket::Many(v) => v.as_slice(),
            };
            for (k, _) in keys {
                if **k >= *start {
                    out.push(k.clone());
                    if out.len() >= max {
                        return out;
                    }
                }
            }
        }
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Estimated heap bytes: B-tree nodes (11 entries of prefix + bucket each, assumed 2/3
    /// full), each key's own allocation and the vectors of shared-prefix buckets.
    pub(crate) fn approx_bytes(&self) -> usize {
        let entry = std::mem::size_of::<u64>() + std::mem::size_of::<Bucket>();
        self.map.len() * entry * 3 / 2 + self.key_alloc_bytes + self.many_alloc_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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

    #[test]
    fn short_keys_and_zero_bytes_share_prefixes_in_order() {
        let mut ix = Index::default();
        let keys: [&[u8]; 6] = [b"", b"\0", b"ab", b"ab\0", b"ab\0\0\0\0\0\0\0", b"ab\x01"];
        for (i, k) in keys.iter().enumerate().rev() {
            ix.insert(
                k,
                Location {
                    class: 0,
                    slot: i as u32,
                },
            );
        }
        let all = ix.range_keys(b"", 100);
        assert_eq!(
            all.iter().map(|k| &k[..]).collect::<Vec<_>>(),
            keys.to_vec()
        );
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(ix.get(k).map(|l| l.slot), Some(i as u32), "{k:?}");
        }
        assert_eq!(ix.get(b"ab\0\0"), None);
    }

    proptest! {
        /// Same answers as a BTreeMap of full keys, for keys drawn from a small alphabet
        /// (so that prefixes collide, keys are prefixes of each other, and zero bytes occur).
        #[test]
        fn matches_a_btreemap(ops in prop::collection::vec(
            (0u8..3, prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', 255]), 0..11), any::<u32>(), 0usize..20),
            1..300,
        )) {
            let mut ix = Index::default();
            let mut model: BTreeMap<Vec<u8>, Location> = BTreeMap::new();
            for (kind, key, slot, max) in ops {
                let loc = Location { class: 0, slot };
                match kind {
                    0 => prop_assert_eq!(ix.insert(&key, loc), model.insert(key.clone(), loc)),
                    1 => prop_assert_eq!(ix.remove(&key), model.remove(&key)),
                    _ => {
                        let want: Vec<Vec<u8>> = model
                            .range::<[u8], _>((Bound::Included(&key[..]), Bound::Unbounded))
                            .take(max)
                            .map(|(k, _)| k.clone())
                            .collect();
                        let got: Vec<Vec<u8>> = ix.range_keys(&key, max).iter().map(|k| k.to_vec()).collect();
                        prop_assert_eq!(got, want);
                    }
                }
                prop_assert_eq!(ix.get(&key), model.get(&key).copied());
                prop_assert_eq!(ix.len(), model.len());
            }
        }
    }
}
