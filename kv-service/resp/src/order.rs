//! Per-connection order of operations on the same key.
//!
//! Redis runs a connection's commands one after another, so a read pipelined after a write
//! of the same key sees it, and a write pipelined after a read does not disturb it. The
//! store runs operations concurrently and its engine orders only the writes of a key, not a
//! read against a write. So a connection never has a read and a write of the same key in
//! flight together: a command that would conflict with an operation still in flight waits
//! (and the commands behind it with it) until that operation has answered. Writes of the
//! same key may overlap: the store applies them in submission order. A SCAN (and DBSIZE,
//! INFO: they report what the writes did) reads every key, so it waits for every write in
//! flight, and writes wait for a SCAN in flight.
//!
//! Keys are told apart by a 64-bit hash: two keys with the same hash merely wait for each
//! other, which is harmless.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// How an operation uses its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// GET (and the reads of STRLEN, EXISTS, MGET, TYPE, TTL).
    Read,
    /// PUT, DELETE.
    Write,
    /// SET with NX / XX / GET, GETSET: a read and a write.
    ReadWrite,
}

/// The keys a queued command's operations hold, to let go of as they answer.
#[derive(Debug)]
pub(crate) enum Touched {
    /// One operation (part 0).
    One(u64, Access),
    /// One operation per part.
    Many(Vec<(u64, Access)>),
    /// A scan of the whole key space.
    Scan,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    readers: u32,
    writers: u32,
}

/// The hashes are already well mixed: use them as they are.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// FNV-1a, 64 bit, then a final mix (the low bits pick the hash map's bucket).
pub(crate) fn key_hash(key: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^ (h >> 29)
}

/// What one connection has in flight, by key.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    keys: HashMap<u64, Counts, BuildHasherDefault<IdHasher>>,
    /// Write operations in flight, all keys.
    writes: u32,
    /// Scans in flight.
    scans: u32,
}

impl std::fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdHasher")
    }
}

impl InFlight {
    /// Whether an operation of `access` on the key with hash `h` must wait.
    pub(crate) fn conflicts(&self, h: u64, access: Access) -> bool {
        let c = self.keys.get(&h).copied().unwrap_or_default();
        match access {
            Access::Read => c.writers > 0,
            Access::Write => c.readers > 0 || self.scans > 0,
            Access::ReadWrite => c.readers > 0 || c.writers > 0 || self.scans > 0,
        }
    }

    /// Whether a scan (or a read of the server's figures) must wait: writes are in flight.
    pub(crate) fn writes_in_flight(&self) -> bool {
        self.writes > 0
    }

    /// Whether any of `t`'s operations must wait.
    pub(crate) fn blocks(&self, t: &Touched) -> bool {
        match t {
            Touched::One(h, a) => self.conflicts(*h, *a),
            Touched::Many(v) => v.iter().any(|&(h, a)| self.conflicts(h, a)),
            Touched::Scan => self.writes_in_flight(),
        }
    }

    /// `t`'s operations are submitted.
    pub(crate) fn hold(&mut self, t: &Touched) {
        match t {
            Touched::One(h, a) => self.add(*h, *a),
            Touched::Many(v) => v.iter().for_each(|&(h, a)| self.add(h, a)),
            Touched::Scan => self.scans += 1,
        }
    }

    /// Part `part` of `t` has answered.
    pub(crate) fn release(&mut self, t: &Touched, part: u32) {
        match t {
            Touched::One(h, a) => self.remove(*h, *a),
            Touched::Many(v) => {
                if let Some(&(h, a)) = v.get(part as usize) {
                    self.remove(h, a);
                }
            }
            Touched::Scan => self.scans = self.scans.saturating_sub(1),
        }
    }

    fn add(&mut self, h: u64, a: Access) {
        let c = self.keys.entry(h).or_default();
        if a != Access::Write {
            c.readers += 1;
        }
        if a != Access::Read {
            c.writers += 1;
            self.writes += 1;
        }
    }

    fn remove(&mut self, h: u64, a: Access) {
        let Some(c) = self.keys.get_mut(&h) else {
            return;
        };
        if a != Access::Write {
            c.readers = c.readers.saturating_sub(1);
        }
        if a != Access::Read {
            c.writers = c.writers.saturating_sub(1);
            self.writes = self.writes.saturating_sub(1);
        }
        if c.readers == 0 && c.writers == 0 {
            self.keys.remove(&h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_of_a_key_exclude_each_other() {
        let mut f = InFlight::default();
        let (k, other) = (key_hash(b"k"), key_hash(b"other"));
        f.hold(&Touched::One(k, Access::Write));
        assert!(f.conflicts(k, Access::Read), "read after write waits");
        assert!(
            !f.conflicts(k, Access::Write),
            "writes overlap: the store orders them"
        );
        assert!(f.conflicts(k, Access::ReadWrite));
        assert!(!f.conflicts(other, Access::Read));
        assert!(f.blocks(&Touched::Scan), "a scan waits for the writes");
        f.release(&Touched::One(k, Access::Write), 0);
        assert!(!f.conflicts(k, Access::Read));
        f.hold(&Touched::Many(vec![
            (k, Access::Read),
            (other, Access::Read),
        ]));
        assert!(f.conflicts(other, Access::Write), "write after read waits");
        assert!(!f.conflicts(k, Access::Read));
        f.release(
            &Touched::Many(vec![(k, Access::Read), (other, Access::Read)]),
            1,
        );
        assert!(!f.conflicts(other, Access::Write));
        assert!(f.conflicts(k, Access::Write));
        f.hold(&Touched::Scan);
        assert!(f.conflicts(other, Access::Write), "writes wait for a scan");
        assert!(!f.conflicts(other, Access::Read));
    }
}
