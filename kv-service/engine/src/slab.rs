//! Slab files: one per (worker, size class), holding fixed-size slots.
//!
//! Classes up to 4096 bytes are KVell's; a slot of class `s` lies in page `slot / (4096 / s)`,
//! so no item straddles a 4 KiB page and one item is one page I/O. Larger classes are
//! multiples of 4 KiB (one slot = one "block" of `s` bytes, 4 KiB aligned), growing by
//! about 1.5× up to 1.5 MiB so that the largest value ([`MAX_VALUE_LEN`], 1 MiB) with the
//! largest key fits.
//!
//! The unit of caching and I/O is a *block*: a 4 KiB page for classes ≤ 4096, one slot for
//! larger classes. Files grow geometrically (doubling, at least 256 KiB, at most 1 GiB per
//! step) and the new space is reserved with `fallocate`.
use std::io;

use super::backend::{Backend, FileId, FileMode};
use super::error::{Error, Result};
use super::freelist::FreeList;
use super::record::HEADER_LEN;

/// Slot sizes of the size classes, in bytes.
pub const CLASSES: [u32; 25] = [
    100,
    128,
    256,
    400,
    512,
    1024,
    1365,
    2048,
    4096,
    8 << 10,
    12 << 10,
    16 << 10,
    24 << 10,
    32 << 10,
    48 << 10,
    64 << 10,
    96 << 10,
    128 << 10,
    192 << 10,
    256 << 10,
    384 << 10,
    512 << 10,
    768 << 10,
    1024 << 10,
    1536 << 10,
];

pub use kv_proto::{MAX_KEY_LEN, MAX_VALUE_LEN};

/// Page size: the unit of I/O for small classes.
pub const PAGE: usize = 4096;

/// The smallest class whose slot holds a record with this key and value length.
pub fn class_for(key_len: usize, value_len: usize) -> Option<u8> {
    let need = HEADER_LEN + key_len + value_len;
    CLASSES
        .iter()
        .position(|&c| c as usize >= need)
        .and_then(|i| u8::try_from(i).ok())
}

/// Geometry of a class.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Geometry {
    pub(crate) slot_size: usize,
    pub(crate) block_size: usize,
    pub(crate) slots_per_block: usize,
}

impl Geometry {
    pub(crate) fn of(class: u8) -> Geometry {
        let slot_size = CLASSES
            .get(usize::from(class))
            .copied()
            .unwrap_or(PAGE as u32) as usize;
        let block_size = slot_size.max(PAGE).div_ceil(PAGE) * PAGE;
        Geometry {
            slot_size,
            block_size,
            slots_per_block: block_size / slot_size,
        }
    }

    /// (block number, byte offset of the slot inside its block).
    pub(crate) fn locate(&self, slot: u32) -> (u64, usize) {
        let s = slot as usize;
        (
            (s / self.slots_per_block) as u64,
            (s % self.slots_per_block) * self.slot_size,
        )
    }
}

/// File name of the slab of `worker` for class `class`: `worker-NNNN-class-SIZE.slab`.
pub fn file_name(worker: usize, class: u8) -> String {
    format!(
        "worker-{worker:04}-class-{}.slab",
        Geometry::of(class).slot_size
    )
}

/// Parses a slab file name into (worker, class).
pub(crate) fn parse_file_name(name: &str) -> Option<(usize, u8)> {
    let rest = name.strip_prefix("worker-")?.strip_suffix(".slab")?;
    let (w, size) = rest.split_once("-class-")?;
    let w: usize = w.parse().ok()?;
    let size: u32 = size.parse().ok()?;
    let class = CLASSES.iter().position(|&c| c == size)?;
    Some((w, u8::try_from(class).ok()?))
}

const MIN_FILE: u64 = 256 << 10;
const MAX_STEP: u64 = 1 << 30;

/// One slab file and its allocation state.
pub(crate) struct Slab {
    pub(crate) geometry: Geometry,
    file: FileId,
    name: String,
    /// File length in bytes (a multiple of the block size).
    len: u64,
    /// Slots `>= next_append` have never been written since the file was (re)opened
    /// (their header is zero).
    pub(crate) next_append: u32,
    pub(crate) free: FreeList,
    /// Optional cap on the file length (fault injection / quota); `None` = unlimited.
    max_len: Option<u64>,
}

/// Result of allocating a slot.
pub(crate) struct Allocated {
    pub(crate) slot: u32,
    /// The whole block lies beyond everything ever written: it is known to be zero and
    /// need not be read before writing.
    pub(crate) fresh_block: bool,
}

impl Slab {
    /// Opens (creating it if missing) the slab file of `worker` for `class` through `backend`.
    pub(crate) fn open<B: Backend>(
        backend: &mut B,
        worker: usize,
        class: u8,
        max_len: Option<u64>,
    ) -> Result<Slab> {
        let name = file_name(worker, class);
        let file = backend.open(&name, true, FileMode::Direct)?;
        let len = backend
            .file_len(file)
            .map_err(|e| Error::io("reading a slab file's length", e))?;
        let geometry = Geometry::of(class);
        let len = len / geometry.block_size as u64 * geometry.block_size as u64;
        Ok(Slab {
            geometry,
            file,
            name,
            len,
            next_append: 0,
            free: FreeList::default(),
            max_len,
        })
    }

    pub(crate) fn file(&self) -> FileId {
        self.file
    }
    pub(crate) fn name(&self) -> &str {
        &self.name
    }
    /// File length in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    fn capacity_slots(&self) -> u64 {
        self.len / self.geometry.block_size as u64 * self.geometry.slots_per_block as u64
    }

    /// Takes a free slot, or appends one (growing the file through `backend` if needed).
    pub(crate) fn allocate<B: Backend>(&mut self, backend: &mut B) -> Result<Allocated> {
        if let Some(slot) = self.free.pop() {
            return Ok(Allocated {
                slot,
                fresh_block: false,
            });
        }
        let slot = self.next_append;
        if u64::from(slot) >= self.capacity_slots() {
            self.grow(backend)?;
        }
        let next = slot.checked_add(1).ok_or_else(|| {
            Error::io(
                "allocating a slot",
                io::Error::from_raw_os_error(libc::EFBIG),
            )
        })?;
        self.next_append = next;
        Ok(Allocated {
            slot,
            fresh_block: (slot as usize).is_multiple_of(self.geometry.slots_per_block),
        })
    }

    /// Reorganisation: the first slot of a whole block that was never written, appended at
    /// the end of the file (growing it if needed), with every slot of that block taken. Slots
    /// skipped to reach the block boundary go to the free list.
    pub(crate) fn allocate_block<B: Backend>(&mut self, backend: &mut B) -> Result<u32> {
        let spb = self.geometry.slots_per_block as u32;
        let first = self.next_append.div_ceil(spb).checked_mul(spb);
        let end = first.and_then(|f| f.checked_add(spb)).ok_or_else(|| {
            Error::io(
                "allocating a block",
                io::Error::from_raw_os_error(libc::EFBIG),
            )
        })?;
        let first = end - spb;
        while u64::from(end) > self.capacity_slots() {
            self.grow(backend)?;
        }
        for s in self.next_append..first {
            self.free.push(s);
        }
        self.next_append = end;
        Ok(first)
    }

    /// Recovery: makes the file long enough to hold `slot` (a staged record can lie past the
    /// end of a file whose growth a power cut lost).
    pub(crate) fn grow_to_hold<B: Backend>(&mut self, backend: &mut B, slot: u32) -> Result<()> {
        if u64::from(slot) < self.capacity_slots() {
            return Ok(());
        }
        let g = self.geometry;
        let blocks = u64::from(slot) / g.slots_per_block as u64 + 1;
        let new_len = blocks * g.block_size as u64;
        backend
            .grow(self.file, new_len)
            .map_err(|e| Error::io("growing a slab file during recovery", e))?;
        self.len = new_len;
        Ok(())
    }

    /// Returns a slot to the free list.
    pub(crate) fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }

    fn grow<B: Backend>(&mut self, backend: &mut B) -> Result<()> {
        let block = self.geometry.block_size as u64;
        let step = self.len.clamp(MIN_FILE, MAX_STEP);
        let new_len = (self.len + step).div_ceil(block) * block;
        if let Some(max) = self.max_len {
            if new_len > max {
                return Err(Error::io(
                    "growing a slab file",
                    io::Error::from_raw_os_error(libc::ENOSPC),
                ));
            }
        }
        backend
            .grow(self.file, new_len)
            .map_err(|e| Error::io("growing a slab file", e))?;
        tracing::debug!(file = %self.name, from = self.len, to = new_len, "slab file grown");
        self.len = new_len;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_never_straddle_pages() {
        for (i, &c) in CLASSES.iter().enumerate() {
            let g = Geometry::of(i as u8);
            assert_eq!(g.block_size % PAGE, 0);
            assert!(g.slots_per_block * g.slot_size <= g.block_size);
            if c as usize > PAGE {
                assert_eq!(c as usize % PAGE, 0, "large classes are multiples of 4 KiB");
            }
        }
        assert!(class_for(MAX_KEY_LEN, MAX_VALUE_LEN).is_some());
        assert_eq!(class_for(8, 992), Some(5), "YCSB item fits the 1 KiB class");
        assert_eq!(class_for(0, 80), Some(0));
        assert_eq!(class_for(0, 81), Some(1));
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(3, 5), "worker-0003-class-1024.slab");
        assert_eq!(parse_file_name("worker-0003-class-1024.slab"), Some((3, 5)));
        assert_eq!(parse_file_name("worker-0003-class-1000.slab"), None);
        assert_eq!(parse_file_name("MANIFEST"), None);
    }
}
