//! 4 KiB-aligned heap buffers for O_DIRECT I/O.
//!
//! `unsafe` is allowed here for the allocation and the slice views; the invariant each block
//! relies on is stated once, on [`AlignedBuf`].
#![allow(unsafe_code)]

use std::alloc::{self, Layout};
use std::ptr::NonNull;

/// Alignment of every I/O buffer (and of every O_DIRECT offset and length).
pub const ALIGN: usize = 4096;

/// A zero-initialised, 4 KiB-aligned byte buffer whose length is a multiple of 4 KiB (or 0).
///
/// Invariant: when `len > 0`, `ptr` is the start of an allocation made by
/// `alloc_zeroed(Layout::from_size_align(len, ALIGN))`, owned by this value alone, all of whose
/// bytes are initialised; when `len == 0`, `ptr` is dangling and nothing is allocated. The heap
/// allocation never moves while the value lives, even when the value itself is moved — which is
/// what lets a backend hand the bytes to the kernel while it holds the value.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `AlignedBuf` owns its allocation exclusively (like a `Box<[u8]>`); nothing in it is
// tied to the creating thread.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes (`len` is rounded up to a multiple of 4 KiB, minimum 4 KiB).
    pub fn zeroed(len: usize) -> Self {
        let len = len.max(ALIGN).div_ceil(ALIGN) * ALIGN;
        let Ok(layout) = Layout::from_size_align(len, ALIGN) else {
            // Only reachable for lengths near usize::MAX.
            alloc::handle_alloc_error(Layout::new::<[u8; ALIGN]>())
        };
        // SAFETY: `layout` has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        Self { ptr, len }
    }

    /// A buffer of length 0 that allocates nothing: a placeholder for a buffer lent out.
    pub fn empty() -> Self {
        Self {
            ptr: NonNull::dangling(),
            len: 0,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer has no bytes (the [`AlignedBuf::empty`] placeholder).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: by the type's invariant `ptr` points to `len` initialised bytes owned by
        // `self`, borrowed shared for the lifetime of `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        if self.len == 0 {
            return &mut [];
        }
        // SAFETY: by the type's invariant `ptr` points to `len` initialised bytes owned
        // exclusively by `self`, borrowed mutably for the lifetime of `&mut self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// The address of the first byte, to hand the buffer to the kernel. The caller must keep
    /// this value alive (and not touch the bytes) until the kernel is done with them.
    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.len == 0 {
            return;
        }
        if let Ok(layout) = Layout::from_size_align(self.len, ALIGN) {
            // SAFETY: by the type's invariant the allocation was made with exactly this layout
            // and is owned by `self` alone.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::zeroed(5000);
        assert_eq!(b.len(), 8192);
        assert_eq!(b.as_mut_ptr() as usize % ALIGN, 0);
        assert!(b.as_slice().iter().all(|&x| x == 0));
        b.as_mut_slice()[8191] = 1;
        assert_eq!(b.as_slice()[8191], 1);
    }

    #[test]
    fn the_placeholder_allocates_nothing() {
        let mut e = AlignedBuf::empty();
        assert!(e.is_empty());
        assert!(e.as_slice().is_empty());
        assert!(e.as_mut_slice().is_empty());
    }
}
