//! The per-worker in-memory index: an ordered map from the **full key** to the item's
//! location, in lexicographic byte order (KVell kept only an 8-byte prefix, ordered
//! numerically, and aborted on a prefix collision).
//!
//! Layout: keys are grouped by their first 8 bytes read as a big-endian integer (shorter
//! keys padded with zeros); each group is a bucket of the full keys sharing that prefix
//! (almost always one key). A hash table maps a prefix to its bucket, so a point lookup
//! costs one hash probe and one key comparison; a B-tree of the prefixes alone gives the
//! order for scans. A bucket of up to `FEW_MAX` keys is a sorted vector (a binary search
//! of a few comparisons). Key sets that share long prefixes — `key:000000012345`, as
//! redis-benchmark and many applications name keys — would put every key in one bucket and
//! make a lookup a binary search over all of them (and an insert a move of all of them), so a
//! bucket that grows past `FEW_MAX` becomes a *group*: a hash table of the full keys for
//! point operations and a B-tree of the same keys for order. A lookup then costs two hash
//! probes and one key comparison whatever the key set; the keys of a group are stored twice
//! (the price of O(1) lookups and O(log n) inserts without a tree walk on the read path).
//! (A B-tree of boxed keys followed a pointer and called `memcmp` at every comparison of a
//! lookup, which made the lookup the largest cost of a cached GET; a B-tree of prefixes with
//! buckets still spent a fifth of a loaded server's time walking nodes.) The hash is a
//! multiply-fold keyed with a random seed per index.
//!
//! Keys of up to 22 bytes are stored inline in their entry (the entry is the size of a boxed
//! slice plus its tag either way), so common key shapes — redis-benchmark's 16-byte
//! `key:000000012345`, kv-bench's 8-byte ids — cost no pointer chase and no cache miss beyond
//! the entry itself on a lookup.
//!
//! Order: for two keys whose padded prefixes differ, the integer order is the lexicographic
//! order (at the first differing byte both are real bytes, or the shorter key has ended and
//! is the smaller); keys with equal padded prefixes share a bucket, sorted by full key.
//! Walking buckets in prefix order therefore yields keys in lexicographic order.
use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::ops::Bound;

/// Where an item lives: its size class and slot number within that class's slab file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Location {
    /// Index into [`CLASSES`](crate::slab::CLASSES).
    pub class: u8,
    /// Slot number in the slab file.
    pub slot: u32,
}

/// Longest key stored inline in its bucket: what fits beside the tag and length in the
/// 24 bytes a boxed slice takes anyway.
const INLINE: usize = 22;

// An inline key must not make every entry larger than a boxed one.
const _: () = assert!(std::mem::size_of::<Key>() == 24);

/// A stored key: inline when short (no allocation, no pointer to follow on a lookup),
/// boxed otherwise. Equality, order and hash are those of its bytes (so `&[u8]` can look
/// one up in a map or set of keys).
#[derive(Debug, Clone)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Key {
    fn new(k: &[u8]) -> Key {
        if k.len() <= INLINE {
            let mut bytes = [0u8; INLINE];
            bytes[..k.len()].copy_from_slice(k);
            Key::Inline {
                len: k.len() as u8,
                bytes,
            }
        } else {
            Key::Heap(k.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => bytes.get(..usize::from(*len)).unwrap_or(&[]),
            Key::Heap(b) => b,
        }
    }

    /// Heap bytes this key takes outside its bucket.
    fn heap_bytes(len: usize) -> usize {
        if len <= INLINE {
            0
        } else {
            malloc_bytes(len)
        }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl std::hash::Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state)
    }
}

impl std::borrow::Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

/// Most keys a bucket keeps in a sorted vector; one more makes it a [`Group`].
const FEW_MAX: usize = 16;

/// A group shrinks back to a sorted vector when it has this many keys left (hysteresis, so
/// that a bucket at the boundary does not convert on every insert and remove).
const FEW_AGAIN: usize = FEW_MAX / 2;

/// The keys of a bucket that outgrew [`FEW_MAX`]: the same keys twice, hashed for point
/// operations and ordered for scans. Invariant: `points` and `order` hold the same key set.
#[derive(Debug)]
struct Group {
    points: HashMap<Key, Location, PrefixHash>,
    order: BTreeSet<Key>,
    /// Heap bytes of the boxed keys in `order` (the second copies), kept as keys come and go
    /// so that [`Group::approx_bytes`] is O(1) on the insert path.
    dup_heap: usize,
}

impl Group {
    fn from_sorted(entries: Vec<(Key, Location)>, hasher: PrefixHash) -> Group {
        let mut points = HashMap::with_capacity_and_hasher(entries.len() * 2, hasher);
        let mut order = BTreeSet::new();
        let mut dup_heap = 0;
        for (k, l) in entries {
            dup_heap += Key::heap_bytes(k.as_slice().len());
            order.insert(k.clone());
            points.insert(k, l);
        }
        Group {
            points,
            order,
            dup_heap,
        }
    }

    /// Adds a key that is not in the group.
    fn insert_new(&mut self, key: &[u8], loc: Location) {
        self.dup_heap += Key::heap_bytes(key.len());
        self.order.insert(Key::new(key));
        self.points.insert(Key::new(key), loc);
    }

    /// Removes `key`, returning its location.
    fn remove(&mut self, key: &[u8]) -> Option<Location> {
        let l = self.points.remove(key)?;
        self.order.remove(key);
        self.dup_heap -= Key::heap_bytes(key.len());
        Some(l)
    }

    /// The entries in key order.
    fn into_sorted(self) -> Vec<(Key, Location)> {
        let mut points = self.points;
        self.order
            .into_iter()
            .filter_map(|k| points.remove(k.as_slice()).map(|l| (k, l)))
            .collect()
    }

    /// Estimated heap bytes: the hash table's slots, the B-tree (nodes assumed 2/3 full) and
    /// the second copy of each boxed key.
    fn approx_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Key, Location)>() + 1;
        std::mem::size_of::<Group>()
            + self.points.capacity() * slot
            + self.order.len() * std::mem::size_of::<Key>() * 3 / 2
            + self.dup_heap
    }
}

/// The keys sharing one 8-byte prefix: almost always one.
#[derive(Debug)]
enum Bucket {
    One((Key, Location)),
    /// Sorted by key; 2 ..= [`FEW_MAX`] entries.
    Few(Vec<(Key, Location)>),
    /// More than [`FEW_AGAIN`] entries (became a group past [`FEW_MAX`]).
    Many(Box<Group>),
}

/// Hashes the `u64` prefixes: `(x ^ seed) * K` as a 128-bit product, halves xor-folded.
#[derive(Clone, Debug)]
struct PrefixHash {
    seed: u64,
}

impl Default for PrefixHash {
    fn default() -> Self {
        Self {
            seed: std::collections::hash_map::RandomState::new().hash_one(0x5eed_u64),
        }
    }
}

impl BuildHasher for PrefixHash {
    type Hasher = PrefixHasher;
    fn build_hasher(&self) -> PrefixHasher {
        PrefixHasher(self.seed)
    }
}

/// See [`PrefixHash`]; other inputs than one `u64` are folded in 8 bytes at a time.
#[derive(Clone, Debug)]
struct PrefixHasher(u64);

impl Hasher for PrefixHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        let m = u128::from(x ^ self.0) * 0x9E37_79B9_7F4A_7C15_u128;
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

/// Ordered full-key index.
#[derive(Debug, Default)]
pub(crate) struct Index {
    map: HashMap<u64, Bucket, PrefixHash>,
    order: BTreeSet<u64>,
    len: usize,
    key_alloc_bytes: usize,
    /// Heap bytes of `Few` vectors and `Many` groups (estimated for groups).
    many_alloc_bytes: usize,
}

#[cfg(test)]
impl Index {
    /// An index whose prefix hash uses `seed` instead of a random one, so that a test's bucket
    /// layout is reproducible (and the seed itself can be a test input).
    fn with_hash_seed(seed: u64) -> Self {
        Self {
            map: HashMap::with_hasher(PrefixHash { seed }),
            ..Self::default()
        }
    }

    /// The shared-prefix bytes recomputed from the buckets, to check the running account.
    fn recount_many_bytes(&self) -> usize {
        self.map
            .values()
            .map(|b| match b {
                Bucket::One(_) => 0,
                Bucket::Few(v) => v.capacity() * MANY_ENTRY,
                Bucket::Many(g) => g.approx_bytes(),
            })
            .sum()
    }

    /// Whether every bucket has the shape its size calls for.
    fn buckets_well_formed(&self) -> bool {
        self.map.values().all(|b| match b {
            Bucket::One(_) => true,
            Bucket::Few(v) => {
                (2..=FEW_MAX).contains(&v.len()) && v.windows(2).all(|w| w[0].0 < w[1].0)
            }
            Bucket::Many(g) => {
                g.points.len() > FEW_AGAIN
                    && g.points.len() == g.order.len()
                    && g.order.iter().all(|k| g.points.contains_key(k.as_slice()))
                    && g.dup_heap
                        == g.order
                            .iter()
                            .map(|k| Key::heap_bytes(k.as_slice().len()))
                            .sum::<usize>()
            }
        })
    }
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

const MANY_ENTRY: usize = std::mem::size_of::<(Key, Location)>();

impl Index {
    pub(crate) fn get(&self, key: &[u8]) -> Option<Location> {
        match self.map.get(&prefix(key))? {
            Bucket::One((k, loc)) => (k.as_slice() == key).then_some(*loc),
            Bucket::Few(v) => v
                .binary_search_by(|(k, _)| k.as_slice().cmp(key))
                .ok()
                .and_then(|i| v.get(i))
                .map(|(_, l)| *l),
            Bucket::Many(g) => g.points.get(key).copied(),
        }
    }

    /// Inserts or replaces; returns the previous location.
    pub(crate) fn insert(&mut self, key: &[u8], loc: Location) -> Option<Location> {
        let p = prefix(key);
        let Some(bucket) = self.map.get_mut(&p) else {
            self.map.insert(p, Bucket::One((Key::new(key), loc)));
            self.order.insert(p);
            self.len += 1;
            self.key_alloc_bytes += Key::heap_bytes(key.len());
            return None;
        };
        match bucket {
            Bucket::One((k, l)) if k.as_slice() == key => return Some(std::mem::replace(l, loc)),
            Bucket::Many(g) => {
                if let Some(l) = g.points.get_mut(key) {
                    return Some(std::mem::replace(l, loc));
                }
                let before = g.approx_bytes();
                g.insert_new(key, loc);
                self.many_alloc_bytes = self.many_alloc_bytes - before + g.approx_bytes();
            }
            Bucket::Few(v) => match v.binary_search_by(|(k, _)| k.as_slice().cmp(key)) {
                Ok(i) => return v.get_mut(i).map(|(_, l)| std::mem::replace(l, loc)),
                Err(i) if v.len() < FEW_MAX => {
                    let before = v.capacity();
                    v.insert(i, (Key::new(key), loc));
                    self.many_alloc_bytes += (v.capacity() - before) * MANY_ENTRY;
                }
                Err(i) => {
                    let mut v = std::mem::take(v);
                    self.many_alloc_bytes -= v.capacity() * MANY_ENTRY;
                    v.insert(i, (Key::new(key), loc));
                    let g = Group::from_sorted(v, self.map.hasher().clone());
                    self.many_alloc_bytes += g.approx_bytes();
                    if let Some(b) = self.map.get_mut(&p) {
                        *b = Bucket::Many(Box::new(g));
                    }
                }
            },
            Bucket::One(..) => {
                let Bucket::One((k, l)) = std::mem::replace(bucket, Bucket::Few(Vec::new())) else {
                    return None;
                };
                let mut v = Vec::with_capacity(2);
                if k.as_slice() < key {
                    v.push((k, l));
                    v.push((Key::new(key), loc));
                } else {
                    v.push((Key::new(key), loc));
                    v.push((k, l));
                }
                self.many_alloc_bytes += v.capacity() * MANY_ENTRY;
                *bucket = Bucket::Few(v);
            }
        }
        self.len += 1;
        self.key_alloc_bytes += Key::heap_bytes(key.len());
        None
    }

    pub(crate) fn remove(&mut self, key: &[u8]) -> Option<Location> {
        let p = prefix(key);
        let bucket = self.map.get_mut(&p)?;
        let loc = match bucket {
            Bucket::One((k, l)) if k.as_slice() == key => {
                let l = *l;
                self.map.remove(&p);
                self.order.remove(&p);
                l
            }
            Bucket::One(..) => return None,
            Bucket::Few(v) => {
                let i = v.binary_search_by(|(k, _)| k.as_slice().cmp(key)).ok()?;
                let (_, l) = v.remove(i);
                if v.len() == 1 {
                    self.many_alloc_bytes -= v.capacity() * MANY_ENTRY;
                    if let Some(last) = v.pop() {
                        *bucket = Bucket::One(last);
                    }
                }
                l
            }
            Bucket::Many(g) => {
                let before = g.approx_bytes();
                let l = g.remove(key)?;
                if g.points.len() <= FEW_AGAIN {
                    self.many_alloc_bytes -= before;
                    let Bucket::Many(g) = std::mem::replace(bucket, Bucket::Few(Vec::new())) else {
                        return None;
                    };
                    let v = g.into_sorted();
                    self.many_alloc_bytes += v.capacity() * MANY_ENTRY;
                    *bucket = Bucket::Few(v);
                } else {
                    self.many_alloc_bytes = self.many_alloc_bytes - before + g.approx_bytes();
                }
                l
            }
        };
        self.len -= 1;
        self.key_alloc_bytes -= Key::heap_bytes(key.len());
        Some(loc)
    }

    /// Up to `max` keys ≥ `start`, in order.
    pub(crate) fn range_keys(&self, start: &[u8], max: usize) -> Vec<Box<[u8]>> {
        self.range_keys_where(start, max, &|_| true)
    }

    /// Up to `max` keys ≥ `start` for which `keep` holds, in order.
    pub(crate) fn range_keys_where(
        &self,
        start: &[u8],
        max: usize,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Vec<Box<[u8]>> {
        self.range_keys_between_where(start, None, max, keep)
    }

    /// Up to `max` keys in `start..=end` (`end` `None`: no upper bound) for which `keep`
    /// holds, in order. Stops at the first key past `end`.
    pub(crate) fn range_keys_between_where(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        max: usize,
        keep: &dyn Fn(&[u8]) -> bool,
    ) -> Vec<Box<[u8]>> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        // Pushes `k` if it qualifies; true when `out` is full or `k` is past `end` (keys
        // come in order: buckets in prefix order, each in key order, so nothing later fits).
        let take = |k: &Key, out: &mut Vec<Box<[u8]>>| {
            if end.is_some_and(|e| k.as_slice() > e) {
                return true;
            }
            if k.as_slice() >= start && keep(k.as_slice()) {
                out.push(k.as_slice().into());
            }
            out.len() >= max
        };
        for p in self
            .order
            .range((Bound::Included(prefix(start)), Bound::Unbounded))
        {
            let Some(bucket) = self.map.get(p) else {
                continue;
            };
            let full = match bucket {
                Bucket::One((k, _)) => take(k, &mut out),
                Bucket::Few(v) => v.iter().any(|(k, _)| take(k, &mut out)),
                Bucket::Many(g) => g
                    .order
                    .range::<[u8], _>((Bound::Included(start), Bound::Unbounded))
                    .any(|k| take(k, &mut out)),
            };
            if full {
                return out;
            }
        }
        out
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Estimated heap bytes: the hash table (prefix + bucket + a control byte per slot of its
    /// capacity), the prefix B-tree (8 bytes per prefix, nodes assumed 2/3 full), the
    /// allocations of keys over 15 bytes and the vectors and groups of shared-prefix buckets.
    pub(crate) fn approx_bytes(&self) -> usize {
        let slot = std::mem::size_of::<u64>() + std::mem::size_of::<Bucket>() + 1;
        self.map.capacity() * slot
            + self.order.len() * std::mem::size_of::<u64>() * 3 / 2
            + self.key_alloc_bytes
            + self.many_alloc_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn ranges_with_an_end_stop_there_in_every_kind_of_bucket() {
        let mut ix = Index::default();
        let loc = Location { class: 0, slot: 1 };
        // One key, a few sharing a prefix, and a group of many sharing one.
        let mut all: Vec<Vec<u8>> = vec![b"a".to_vec(), b"zz".to_vec()];
        all.extend((0..4).map(|i| format!("fewfewfe{i}").into_bytes()));
        all.extend((0..40).map(|i| format!("manymany{i:03}").into_bytes()));
        for k in &all {
            ix.insert(k, loc);
        }
        all.sort();
        for (start, end) in [
            (&b""[..], Some(&b"fewfewfe2"[..])),
            (b"fewfewfe1", Some(b"manymany017")),
            (b"manymany005", Some(b"manymany005")),
            (b"b", None),
            (b"zzz", Some(b"zzzz")),
        ] {
            let got = ix.range_keys_between_where(start, end, usize::MAX, &|k| k.len() != 2);
            let want: Vec<&[u8]> = all
                .iter()
                .map(Vec::as_slice)
                .filter(|k| *k >= start && end.is_none_or(|e| *k <= e) && k.len() != 2)
                .collect();
            assert_eq!(got.iter().map(|k| &k[..]).collect::<Vec<_>>(), want);
        }
    }

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

    #[test]
    fn keys_sharing_a_long_prefix_become_a_group_and_back() {
        let mut ix = Index::default();
        let key = |i: u32| format!("key:{i:012}").into_bytes();
        for i in (0..1000).rev() {
            assert_eq!(ix.insert(&key(i), Location { class: 0, slot: i }), None);
        }
        assert!(matches!(
            ix.map.get(&prefix(b"key:0000")),
            Some(Bucket::Many(_))
        ));
        assert_eq!(
            ix.get(&key(777)),
            Some(Location {
                class: 0,
                slot: 777
            })
        );
        assert_eq!(ix.get(b"key:0000"), None);
        let got = ix.range_keys(&key(995), 10);
        let want: Vec<Box<[u8]>> = (995..1000).map(|i| key(i).into()).collect();
        assert_eq!(got, want);
        for i in 0..1000 - FEW_AGAIN as u32 {
            assert_eq!(ix.remove(&key(i)).map(|l| l.slot), Some(i));
        }
        assert!(
            matches!(ix.map.get(&prefix(b"key:0000")), Some(Bucket::Few(v)) if v.len() == FEW_AGAIN)
        );
        assert_eq!(ix.many_alloc_bytes, ix.recount_many_bytes());
        assert!(ix.buckets_well_formed());
    }

    proptest! {
        #![proptest_config(testkit::proptest_config(256, "proptest-regressions/index.txt"))]

        /// Same answers as a BTreeMap of full keys, for keys drawn from a small alphabet
        /// (so that prefixes collide, keys are prefixes of each other, and zero bytes occur), both
        /// inline (up to 22 bytes) and boxed.
        ///
        /// With `shared`, every key starts with the same 8 bytes (as `key:000000012345` keys
        /// do), so buckets grow past `FEW_MAX` into groups and shrink back.
        #[test]
        fn matches_a_btreemap(hash_seed in any::<u64>(), shared in any::<bool>(), ops in prop::collection::vec(
            (0u8..3, prop::collection::vec(prop::sample::select(vec![0u8, 1, b'a', 255]), 0..30), any::<u32>(), 0usize..20),
            1..300,
        )) {
            let mut ix = Index::with_hash_seed(hash_seed);
            let mut model: BTreeMap<Vec<u8>, Location> = BTreeMap::new();
            for (kind, key, slot, max) in ops {
                let key = if shared { [&b"key:0000"[..], &key].concat() } else { key };
                // Removals are drawn less often than inserts, so groups form.
                let kind = if shared && kind == 1 && slot % 3 != 0 { 0 } else { kind };
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
                prop_assert!(ix.buckets_well_formed());
                prop_assert_eq!(ix.many_alloc_bytes, ix.recount_many_bytes());
            }
            // Emptying the index (in a key order that differs from insertion) leaves no
            // shared-prefix bytes accounted.
            let keys: Vec<Vec<u8>> = model.keys().rev().cloned().collect();
            for k in keys {
                prop_assert_eq!(ix.remove(&k), model.remove(&k));
                prop_assert!(ix.buckets_well_formed());
                prop_assert_eq!(ix.many_alloc_bytes, ix.recount_many_bytes());
            }
            prop_assert_eq!(ix.len(), 0);
            prop_assert_eq!(ix.many_alloc_bytes, 0);
            prop_assert_eq!(ix.key_alloc_bytes, 0);
        }
    }
}
