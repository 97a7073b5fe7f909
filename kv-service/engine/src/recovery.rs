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
//!
//! First, if the worker has a staging file (`staging.rs`), it is read whole and every record
//! of its valid chunks is taken, the one with the highest sequence number per slot. During the
//! scan each slot is compared with it: a staged record with a higher sequence number than the
//! slot's (or a slot that is empty or corrupt) is written into the slot — in the chunk read,
//! which is written back — before the slot is decoded. Files the staged records need and that
//! are missing or too short (a power cut can lose a new file or its growth) are created or
//! grown first. Patched files are synced before the worker starts, so the staging file can be
//! dropped afterwards.
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::backend::{AlignedBuf, Backend, FileMode};
use super::error::{Error, Result};
use super::index::{Index, Location};
use super::record::{self, Slot};
use super::slab::{Slab, CLASSES};
use super::staging;

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
    /// Records found in the staging areas (valid chunks).
    pub staged: u64,
    /// Staged records newer than their slot's, written into the slabs.
    pub staged_applied: u64,
    /// Bytes of staging areas read.
    pub stage_bytes_read: u64,
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
        self.staged += o.staged;
        self.staged_applied += o.staged_applied;
        self.stage_bytes_read += o.stage_bytes_read;
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

/// The records of a staging file to apply: per class, by slot, the newest record's bytes.
struct Staged {
    image: AlignedBuf,
    /// Per class: (slot, seq, offset, len), sorted by slot, one per slot (the highest seq).
    by_class: Vec<Vec<(u32, u64, usize, usize)>>,
}

impl Staged {
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        self.image
            .as_slice()
            .get(offset..offset + len)
            .unwrap_or_default()
    }
}

/// Reads worker `worker`'s staging file, if `present`.
fn read_stage<B: Backend>(
    backend: &mut B,
    worker: usize,
    stats: &mut RecoveryStats,
) -> Result<Option<Staged>> {
    let name = staging::file_name(worker);
    let file = backend.open(&name, false, FileMode::Buffered)?;
    let len = backend
        .file_len(file)
        .map_err(|e| Error::io("reading the staging file's length", e))?;
    let mut header = AlignedBuf::zeroed(staging::RING_START as usize);
    let n = backend
        .read_at(file, &mut header, 0)
        .map_err(|e| Error::io("reading the staging file", e))?;
    let Some((salt, ring)) = header.as_slice().get(..n).and_then(staging::decode_header) else {
        // Never initialised (a crash while it was created): it holds nothing.
        tracing::warn!(
            worker,
            file = name,
            "staging file without a valid header: ignored"
        );
        return Ok(None);
    };
    let ring = ring.min(len.saturating_sub(staging::RING_START));
    let ring_len = usize::try_from(ring)
        .map_err(|_| Error::UnknownFormat(format!("staging file {name} too large")))?;
    let mut image = AlignedBuf::zeroed(ring_len.max(1));
    let mut off = 0usize;
    const STEP: usize = 4 << 20;
    while off < ring_len {
        let mut chunk = AlignedBuf::zeroed(STEP.min(ring_len - off));
        let got = backend
            .read_at(file, &mut chunk, staging::RING_START + off as u64)
            .map_err(|e| Error::io("reading the staging file", e))?;
        let got = got.min(ring_len - off);
        if got == 0 {
            break;
        }
        if let (Some(dst), Some(src)) = (
            image.as_mut_slice().get_mut(off..off + got),
            chunk.as_slice().get(..got),
        ) {
            dst.copy_from_slice(src);
        }
        off += got;
    }
    stats.stage_bytes_read += off as u64;
    let parsed = staging::parse(image.as_slice().get(..ring_len).unwrap_or_default(), salt);
    if parsed.bad_entries > 0 {
        tracing::warn!(
            worker,
            entries = parsed.bad_entries,
            "invalid entries in the staging file skipped"
        );
    }
    stats.staged += parsed.records.len() as u64;
    let mut newest: HashMap<(u8, u32), (u64, usize, usize)> = HashMap::new();
    for r in parsed.records {
        let e = newest.entry((r.class, r.slot)).or_insert((0, 0, 0));
        if r.seq > e.0 {
            *e = (r.seq, r.offset, r.len);
        }
    }
    let mut by_class: Vec<Vec<(u32, u64, usize, usize)>> = vec![Vec::new(); CLASSES.len()];
    for ((class, slot), (seq, offset, len)) in newest {
        if let Some(v) = by_class.get_mut(usize::from(class)) {
            v.push((slot, seq, offset, len));
        }
    }
    for v in &mut by_class {
        v.sort_unstable_by_key(|r| r.0);
    }
    Ok(Some(Staged { image, by_class }))
}

/// Recovers worker `worker` from the slab files of the given classes (and its staging file if
/// `staged_file`), opening them through `backend` (which the worker then keeps).
pub(crate) fn recover_worker<B: Backend>(
    backend: &mut B,
    worker: usize,
    classes: &[u8],
    max_file_bytes: Option<u64>,
    staged_file: bool,
) -> Result<Recovered> {
    let start = Instant::now();
    let mut slabs: Vec<Option<Slab>> = (0..CLASSES.len()).map(|_| None).collect();
    let mut index = Index::default();
    let mut stats = RecoveryStats::default();
    let mut max_seq = 0u64;
    let mut losers: Vec<Location> = Vec::new();
    let staged = if staged_file {
        read_stage(backend, worker, &mut stats)?
    } else {
        None
    };
    let existing = classes;
    let mut classes: Vec<u8> = classes.to_vec();
    if let Some(st) = &staged {
        for (c, v) in st.by_class.iter().enumerate() {
            let c = c as u8;
            if !v.is_empty() && !classes.contains(&c) {
                classes.push(c);
            }
        }
    }
    let mut patched_files = Vec::new();
    let mut created = false;
    for &class in &classes {
        // A class only the staging area knows of: its file was lost, it is created now.
        created |= !existing.contains(&class);
        let mut slab = Slab::open(backend, worker, class, max_file_bytes)?;
        stats.files += 1;
        let empty = Vec::new();
        let patch = staged
            .as_ref()
            .and_then(|s| s.by_class.get(usize::from(class)))
            .unwrap_or(&empty);
        // Staged records past the end of the file (its growth was lost): grow it first.
        if let Some(&(last, ..)) = patch.last() {
            slab.grow_to_hold(backend, last)?;
        }
        let patched = scan_slab(
            backend,
            &mut slab,
            class,
            &slabs,
            &mut index,
            &mut stats,
            &mut max_seq,
            &mut losers,
            patch,
            staged.as_ref(),
        )?;
        if patched {
            patched_files.push(slab.file());
        }
        if let Some(s) = slabs.get_mut(usize::from(class)) {
            *s = Some(slab);
        }
    }
    for file in patched_files {
        backend
            .sync(file)
            .map_err(|e| Error::io("syncing a slab after applying the staging area", e))?;
    }
    if created {
        backend
            .sync_dir()
            .map_err(|e| Error::io("syncing the data directory during recovery", e))?;
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
        staged = stats.staged,
        staged_applied = stats.staged_applied,
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

/// Scans one slab (applying the staged records `patch` of its class, sorted by slot, from
/// `staged`). Returns whether a staged record was written into it.
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
    patch: &[(u32, u64, usize, usize)],
    staged: Option<&Staged>,
) -> Result<bool> {
    let mut next_patch = 0usize;
    let mut any_patched = false;
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
        // Staged records for slots of this chunk that are newer than what the slot holds.
        let first_slot = first_block * g.slots_per_block as u64;
        let end_slot = first_slot + (n / g.block_size * g.slots_per_block) as u64;
        let mut patched = false;
        while let Some(&(slot, seq, at, len)) = patch.get(next_patch) {
            if u64::from(slot) >= end_slot {
                break;
            }
            next_patch += 1;
            let Some(st) = staged else { break };
            let (b, off) = g.locate(slot);
            let pos = ((b - first_block) as usize) * g.block_size + off;
            let Some(dst) = buf.as_mut_slice().get_mut(pos..pos + g.slot_size) else {
                continue;
            };
            let current = match record::decode(dst) {
                Slot::Live { seq, .. } | Slot::Tombstone { seq } => seq,
                Slot::Empty | Slot::Corrupt => 0,
            };
            if seq <= current {
                continue;
            }
            let rec = st.bytes(at, len);
            if let Some(d) = dst.get_mut(..rec.len()) {
                d.copy_from_slice(rec);
            }
            if let Some(rest) = dst.get_mut(rec.len()..) {
                rest.fill(0);
            }
            stats.staged_applied += 1;
            patched = true;
        }
        if patched {
            backend
                .write_at(slab.file(), &buf, n, offset)
                .map_err(|e| Error::io("applying the staging area to a slab", e))?;
            any_patched = true;
        }
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
    Ok(any_patched)
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
        .write_at(slab.file(), &buf, g.block_size, at)
        .map_err(|e| Error::io("tombstoning a duplicate during recovery", e))?;
    backend
        .sync(slab.file())
        .map_err(|e| Error::io("syncing a slab during recovery", e))
}
