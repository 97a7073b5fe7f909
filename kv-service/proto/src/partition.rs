//! Key partitioning: which server thread (= engine worker) owns a key.
//!
//! A server with W threads gives key `k` to thread `fnv1a64(k) mod W`. Clients route with the
//! same function (they learn W from INFO), the server forwards a request that reached another
//! thread, and the engine places the key's record in that worker's files, so the function is
//! part of the wire protocol *and* of the on-disk format: it never changes.

/// Partitioning scheme number of `ServerInfo::partitioning`: thread = `fnv1a64(key) mod
/// threads`.
pub const PARTITION_FNV1A64_MOD: u32 = 1;

/// FNV-1a, 64 bit (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over the full
/// key. Stable across versions and platforms.
///
/// ```
/// assert_eq!(kv_proto::fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
/// assert_eq!(kv_proto::fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
/// ```
pub fn fnv1a64(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Maps keys to partitions: `fnv1a64(key) % W`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRouter {
    partitions: usize,
}

impl KeyRouter {
    /// A router for `partitions` partitions (at least 1).
    pub fn new(partitions: usize) -> Self {
        Self {
            partitions: partitions.max(1),
        }
    }

    /// Number of partitions W.
    pub fn partitions(&self) -> usize {
        self.partitions
    }

    /// The partition owning `key`.
    ///
    /// ```
    /// let r = kv_proto::KeyRouter::new(4);
    /// assert_eq!(r.partition_of(b"k"), (kv_proto::fnv1a64(b"k") % 4) as usize);
    /// ```
    pub fn partition_of(&self, key: &[u8]) -> usize {
        (fnv1a64(key) % self.partitions as u64) as usize
    }
}
