//! Page-aligned memory shared with a (real or simulated) RDMA device.
//!
//! A [`DmaBuf`] is owned by one user (a transport), which reads and writes it through
//! bounds-checked slices. A device that registers it keeps a `DmaMem` — a second reference
//! to the same allocation — so the memory outlives every registration: a device never reads
//! or writes freed memory, whatever order things are dropped in.
//!
//! The device side copies bytes in and out with raw pointer copies, as DMA does, while the
//! owner may hold slices of *other* bytes of the same buffer. The verbs contract keeps the two
//! apart: the owner does not touch bytes it has handed to the device (a posted receive
//! buffer, the data of a send that has not completed) until the device hands them back (a
//! completion). This is the one module of the RDMA code besides the libibverbs bindings that
//! contains `unsafe`.
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::ptr::NonNull;
use std::sync::Arc;

/// Alignment of every buffer: a page, as memory registration likes.
pub const DMA_ALIGN: usize = 4096;

/// Buffers from this size on are anonymous `mmap`s: page-aligned, zero-filled lazily by the
/// kernel (a receive ring of 17 MB costs only the pages it touches), the way RDMA applications
/// allocate what they register. Smaller ones come from the heap.
const MMAP_FROM: usize = 256 * 1024;

struct Alloc {
    ptr: NonNull<u8>,
    len: usize,
    mapped: bool,
}

// SAFETY: `Alloc` is memory with no thread affinity. Shared access from several threads
// happens only through raw-pointer copies on byte ranges that the verbs contract gives to one
// party at a time (see the module doc); the memory itself is released exactly once, when the
// last `Arc` goes.
unsafe impl Send for Alloc {}
// SAFETY: as above.
unsafe impl Sync for Alloc {}

impl Alloc {
    fn layout(len: usize) -> Option<Layout> {
        Layout::from_size_align(len.max(1), DMA_ALIGN).ok()
    }

    fn map_len(len: usize) -> usize {
        len.div_ceil(DMA_ALIGN) * DMA_ALIGN
    }

    fn new(len: usize) -> Option<Self> {
        if len >= MMAP_FROM {
            let map_len = Self::map_len(len);
            // SAFETY: an anonymous private mapping of `map_len` bytes at an address the kernel
            // picks; no file, no existing memory is affected. The result is checked below.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    map_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return None;
            }
            return Some(Self {
                ptr: NonNull::new(p.cast::<u8>())?,
                len,
                mapped: true,
            });
        }
        let layout = Self::layout(len)?;
        // SAFETY: the layout has a non-zero size (`len.max(1)`) and a valid power-of-two
        // alignment, which is all `alloc_zeroed` requires.
        let ptr = NonNull::new(unsafe { alloc::alloc_zeroed(layout) })?;
        Some(Self {
            ptr,
            len,
            mapped: false,
        })
    }
}

impl Drop for Alloc {
    fn drop(&mut self) {
        if self.mapped {
            // SAFETY: `ptr` is the start of a mapping of exactly `map_len(len)` bytes made in
            // `new`, unmapped only here, once.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), Self::map_len(self.len)) };
        } else if let Some(layout) = Self::layout(self.len) {
            // SAFETY: `ptr` came from `alloc_zeroed` with exactly this layout (same `len`, same
            // alignment) and is freed only here, once, when the last reference is dropped.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

/// A zeroed, page-aligned buffer to register with a device.
pub struct DmaBuf {
    mem: Arc<Alloc>,
}

impl std::fmt::Debug for DmaBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuf")
            .field("addr", &format_args!("{:#x}", self.addr()))
            .field("len", &self.len())
            .finish()
    }
}

impl DmaBuf {
    /// Allocates `len` zeroed bytes aligned to [`DMA_ALIGN`]; `None` if the allocation fails or
    /// `len` is absurd.
    pub fn new(len: usize) -> Option<Self> {
        Some(Self {
            mem: Arc::new(Alloc::new(len)?),
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.mem.len
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.mem.len == 0
    }

    /// The virtual address of the first byte (what SGEs and memory regions name).
    pub fn addr(&self) -> u64 {
        self.mem.ptr.as_ptr() as u64
    }

    /// Borrows `len` bytes at `off`; `None` when out of range. The caller must not read bytes
    /// it has handed to the device (they may change under it).
    pub fn slice(&self, off: usize, len: usize) -> Option<&[u8]> {
        let end = off.checked_add(len)?;
        if end > self.mem.len {
            return None;
        }
        // SAFETY: `off..end` lies inside the live allocation (checked above; the `Arc` keeps
        // it alive for the borrow of `self`). No `&mut` to these bytes exists: mutable access
        // goes through `slice_mut`, which needs `&mut self`, and the device side copies only
        // into bytes the owner handed over and does not read (module doc).
        Some(unsafe { std::slice::from_raw_parts(self.mem.ptr.as_ptr().add(off), len) })
    }

    /// Mutably borrows `len` bytes at `off`; `None` when out of range. The caller must not
    /// write bytes the device still owns (the data of a send that has not completed, a posted
    /// receive buffer).
    pub fn slice_mut(&mut self, off: usize, len: usize) -> Option<&mut [u8]> {
        let end = off.checked_add(len)?;
        if end > self.mem.len {
            return None;
        }
        // SAFETY: in range of the live allocation (checked above). `&mut self` excludes every
        // other borrow made through this `DmaBuf`; `DmaBuf` is not `Clone`, so it is the only
        // owner-side handle. Device-side copies stay off bytes the owner is using (module doc).
        Some(unsafe { std::slice::from_raw_parts_mut(self.mem.ptr.as_ptr().add(off), len) })
    }

    /// The device-side reference a device keeps while the buffer is registered.
    pub(crate) fn device_mem(&self) -> DmaMem {
        DmaMem {
            mem: Arc::clone(&self.mem),
        }
    }
}

/// A device's reference to a registered [`DmaBuf`]: keeps the allocation alive and copies bytes
/// in and out like DMA. Only device implementations hold these.
#[derive(Clone)]
pub(crate) struct DmaMem {
    mem: Arc<Alloc>,
}

impl DmaMem {
    /// Address of the first byte.
    pub(crate) fn addr(&self) -> u64 {
        self.mem.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub(crate) fn len(&self) -> usize {
        self.mem.len
    }

    fn range(&self, off: usize, len: usize) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        if end > self.mem.len {
            return None;
        }
        // SAFETY: `off <= len` of the allocation, so the offset pointer stays inside it (or
        // one past its end when `len == 0`), as `add` requires.
        Some(unsafe { self.mem.ptr.as_ptr().add(off) })
    }

    /// Device read ("DMA out"): appends `len` bytes at `off` to `out`; `false` when out of
    /// range (nothing appended).
    pub(crate) fn read_into(&self, off: usize, len: usize, out: &mut Vec<u8>) -> bool {
        let Some(src) = self.range(off, len) else {
            return false;
        };
        out.reserve(len);
        let old = out.len();
        // SAFETY: `src..src+len` is inside the live allocation (range check; the `Arc` keeps it
        // alive). The destination is the spare capacity just reserved in `out`, a different
        // allocation, so the regions do not overlap; `set_len` covers exactly the bytes copied.
        unsafe {
            std::ptr::copy_nonoverlapping(src, out.as_mut_ptr().add(old), len);
            out.set_len(old + len);
        }
        true
    }

    /// Device write ("DMA in"): copies `data` to `off`; `false` when out of range (nothing
    /// written).
    pub(crate) fn write_from(&self, off: usize, data: &[u8]) -> bool {
        let Some(dst) = self.range(off, data.len()) else {
            return false;
        };
        // SAFETY: `dst..dst+data.len()` is inside the live allocation (range check). `data` is
        // a Rust slice that cannot alias bytes the owner has handed to the device for writing
        // (they are not borrowed by anyone, per the verbs contract in the module doc).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_zeroed_and_bounds_checked() {
        let mut b = DmaBuf::new(10_000).unwrap();
        assert_eq!(b.addr() % DMA_ALIGN as u64, 0);
        assert!(b.slice(0, 10_000).unwrap().iter().all(|&x| x == 0));
        assert!(b.slice(9_999, 2).is_none());
        assert!(b.slice(usize::MAX, 2).is_none());
        b.slice_mut(100, 3).unwrap().copy_from_slice(b"abc");
        let dev = b.device_mem();
        let mut out = Vec::new();
        assert!(dev.read_into(100, 3, &mut out));
        assert_eq!(out, b"abc");
        assert!(dev.write_from(200, b"xyz"));
        assert_eq!(b.slice(200, 3).unwrap(), b"xyz");
        assert!(!dev.write_from(9_999, b"xy"));
        assert!(!dev.read_into(9_999, 2, &mut out));
    }

    #[test]
    fn large_buffers_are_mapped_zeroed_and_aligned() {
        let mut b = DmaBuf::new(3 * MMAP_FROM + 5).unwrap();
        assert!(b.mem.mapped);
        assert_eq!(b.addr() % DMA_ALIGN as u64, 0);
        let end = b.len() - 1;
        assert_eq!(b.slice(end, 1).unwrap(), &[0]);
        b.slice_mut(end, 1).unwrap()[0] = 9;
        let mut out = Vec::new();
        assert!(b.device_mem().read_into(end, 1, &mut out));
        assert_eq!(out, [9]);
        assert!(b.slice(b.len(), 1).is_none());
        assert!(!DmaBuf::new(100).unwrap().mem.mapped);
    }

    #[test]
    fn device_reference_outlives_owner() {
        let b = DmaBuf::new(64).unwrap();
        let dev = b.device_mem();
        drop(b);
        assert!(dev.write_from(0, b"still alive"));
        let mut out = Vec::new();
        assert!(dev.read_into(0, 5, &mut out));
        assert_eq!(out, b"still");
        assert_eq!(dev.len(), 64);
    }
}
