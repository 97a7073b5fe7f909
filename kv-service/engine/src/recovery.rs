//! Recovery: rebuilds a worker's state from its slab files at open.
//!
//! Each slab is read sequentially in large chunks (4 MiB, O_DIRECT), with the backend's
//! synchronous reads. For every slot:
//! - empty (zero header): free if below the append position;
//! - tombstone: free;
//! - corrupt (bad checksum or malformed): counted in [`RecoveryStats::corrupt`], logged and
//!   treated as free — it is never returned to a reader;
//! - live: indexed. If the key is already indexed (a crash between writing the new copy of
//!   a moved item and tombstoning the old one), the higher sequence number wins; the loser
//!   is tombstoned on disk and freed.
//!
//! The append position of a slab is one past its last non-empty slot; the worker's next
//! sequence number is one past the highest sequence seen.
use std::time::{Duration, Instant};

use super::backend::{AlignedBuf, Backend};
use super::error::{Error, Result};
use super::index::{Index, Location};
use super::record::{self, Slot};
use super::slab::{Slab, CLASSES};

/// What recovery found, per worker (or summed over workers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    /// Slab files read.
    pub files: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Live items indexed.
    pub live: u64,
    /// Tombstones seen.
    pub tombstones: u64,
    /// Records whose checksum (or header) was bad; treated as free.
    pub corrupt: u64,
    /// Keys found twice (interrupted moves); the older copy was tombstoned.
    pub duplicates: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl RecoveryStats {
    /// Adds another worker's figures (elapsed: the maximum, since workers recover in
    /// parallel).
    pub fn merge(&mut self, o: &RecoveryStats) {
        self.files += o.files;
        self.bytes_read += o.bytes_read;
        self.live += o.live;
        self.tombstones += o.tombstones;
        self.corrupt += o.corrupt;
        self.duplicates += o.duplicates;
        self.elapsed = self.elapsed.max(o.elapsed);
    }
}

/// A worker's rebuilt state.
pub(crate) struct Recovered {
    pub(crate) slabs: Vec<Option<Slab>>,
    pub(crate) index: Index,
    pub(crate) next_seq: u64,
    pub(crate) stats: RecoveryStats,
}

const CHUNK: usize = 4 << 20;

/// Recovers worker `worker` from the slab files of the given classes, opening them through
/// `backend` (which the worker then keeps).
pub(crate) fn recover_worker<B: Backend>(
    backend: &mut B,
    worker: usize,
    classes: &[u8],
    max_file_bytes: Option<u64>,
) -> Result<Recovered> {
    let start = Instant::now();
    let mut slabs: Vec<Option<Slab>> = (0..CLASSES.len()).map(|_| None).collect();
    let mut index = Index::default();
    let mut stats = RecoveryStats::default();
    let mut max_seq = 0u64;
    let mut losers: Vec<Location> = Vec::new();
    for &class in classes {
        let mut slab = Slab::open(backend, worker, class, max_file_bytes)?;
        stats.files += 1;
        scan_slab(
            backend,
            &mut slab,
            class,
            &slabs,
            &mut index,
            &mut stats,
            &mut max_seq,
            &mut losers,
        )?;
        if let Some(s) = slabs.get_mut(usize::from(class)) {
            *s = Some(slab);
        }
    }
    for loser in losers {
        max_seq += 1;
        if let Some(Some(slab)) = slabs.get_mut(usize::from(loser.class)) {
            tombstone_sync(backend, slab, loser.slot, max_seq)?;
            slab.release(loser.slot);
        }
    }
    stats.elapsed = start.elapsed();
    let secs = stats.elapsed.as_secs_f64();
    tracing::info!(
        worker,
        files = stats.files,
        mb = stats.bytes_read as f64 / 1e6,
        secs,
        mb_per_s = stats.bytes_read as f64 / 1e6 / secs.max(1e-9),
        live = stats.live,
        tombstones = stats.tombstones,
        corrupt = stats.corrupt,
        duplicates = stats.duplicates,
        "worker recovered"
    );
    Ok(Recovered {
        slabs,
        index,
        next_seq: max_seq + 1,
        stats,
    })
}

#[allow(clippy::too_many_arguments)]
fn scan_slab<B: Backend>(
    backend: &mut B,
    slab: &mut Slab,
    class: u8,
    others: &[Option<Slab>],
    index: &mut Index,
    stats: &mut RecoveryStats,
    max_seq: &mut u64,
    losers: &mut Vec<Location>,
) -> Result<()> {
    let g = slab.geometry;
    let chunk_len = (CHUNK / g.block_size).max(1) * g.block_size;
    let mut buf = AlignedBuf::zeroed(chunk_len);
    let len = slab.len();
    let mut offset = 0u64;
    // One past the last non-empty slot seen so far.
    let mut end: u32 = 0;
    let mut free_below_end: Vec<u32> = Vec::new();
    while offset < len {
        let n = backend
            .read_at(slab.file(), &mut buf, offset)
            .map_err(|e| Error::io("reading a slab during recovery", e))?;
        let n = n.min((len - offset) as usize) / g.block_size * g.block_size;
        if n == 0 {
            break;
        }
        stats.bytes_read += n as u64;
        let first_block = offset / g.block_size as u64;
        let data = buf.as_slice().get(..n).unwrap_or_default();
        for (b, block) in data.chunks_exact(g.block_size).enumerate() {
            for (s, bytes) in block.chunks_exact(g.slot_size).enumerate() {
                let slot_no = (first_block + b as u64) * g.slots_per_block as u64 + s as u64;
                let Ok(slot) = u32::try_from(slot_no) else {
                    continue;
                };
                let decoded = record::decode(bytes);
                if decoded == Slot::Empty {
                    continue;
                }
                // Non-empty: every empty slot since the previous non-empty one is free.
                free_below_end.extend(end..slot);
                end = slot + 1;
                match decoded {
                    Slot::Empty => {}
                    Slot::Corrupt => {
                        stats.corrupt += 1;
                        tracing::warn!(file = slab.name(), slot, "corrupt record treated as free");
                        free_below_end.push(slot);
                    }
                    Slot::Tombstone { seq } => {
                        stats.tombstones += 1;
                        *max_seq = (*max_seq).max(seq);
                        free_below_end.push(slot);
                    }
                    Slot::Live { seq, key, .. } => {
                        *max_seq = (*max_seq).max(seq);
                        let here = Location { class, slot };
                        match index.get(key) {
                            None => {
                                index.insert(key, here);
                                stats.live += 1;
                            }
                            Some(prev) => {
                                stats.duplicates += 1;
                                let prev_seq = if prev.class == class {
                                    read_seq(backend, slab, prev.slot)?
                                } else {
                                    match others.get(usize::from(prev.class)) {
                                        Some(Some(o)) => read_seq(backend, o, prev.slot)?,
                                        _ => 0,
                                    }
                                };
                                if seq > prev_seq {
                                    index.insert(key, here);
                                    losers.push(prev);
                                } else {
                                    losers.push(here);
                                }
                            }
                        }
                    }
                }
            }
        }
        offset += n as u64;
    }
    slab.next_append = end;
    // Slots found free stay free; losers are freed after being tombstoned.
    for s in free_below_end {
        slab.release(s);
    }
    Ok(())
}

/// Reads one slot's sequence number with a synchronous read (rare: duplicates only).
fn read_seq<B: Backend>(backend: &mut B, slab: &Slab, slot: u32) -> Result<u64> {
    let g = slab.geometry;
    let (block, off) = g.locate(slot);
    let mut buf = AlignedBuf::zeroed(g.block_size);
    backend
        .read_at(slab.file(), &mut buf, block * g.block_size as u64)
        .map_err(|e| Error::io("reading a duplicate during recovery", e))?;
    Ok(buf
        .as_slice()
        .get(off..off + g.slot_size)
        .map(record::sequence_of)
        .unwrap_or(0))
}

/// Writes a tombstone into a slot with a synchronous read-modify-write of its block.
fn tombstone_sync<B: Backend>(backend: &mut B, slab: &Slab, slot: u32, seq: u64) -> Result<()> {
    let g = slab.geometry;
    let (block, off) = g.locate(slot);
    let mut buf = AlignedBuf::zeroed(g.block_size);
    let at = block * g.block_size as u64;
    backend
        .read_at(slab.file(), &mut buf, at)
        .map_err(|e| Error::io("reading a duplicate during recovery", e))?;
    if let Some(bytes) = buf.as_mut_slice().get_mut(off..off + g.slot_size) {
        record::encode_tombstone(bytes, seq);
    }
    backend
        .write_at(slab.file(), &buf, at)
        .map_err(|e| Error::io("tombstoning a duplicate during recovery", e))?;
    backend
        .sync(slab.file())
        .map_err(|e| Error::io("syncing a slab during recovery", e))
}
