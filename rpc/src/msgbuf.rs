//! Message buffers and the per-Rpc buffer pool.
//!
//! A [`MsgBuf`] holds one request or response. Its memory starts with [`HDR_SIZE`] bytes of
//! headroom for the first packet's header, so a single-packet message goes to the transport as
//! one contiguous slice (`[hdr0][data]`); the headers of later packets are built separately and
//! gathered by the transport with the payload, so the application always sees contiguous data
//! and multi-packet sends copy nothing.
//!
//! Buffers come from a per-Rpc [`BufPool`] of power-of-two size classes, so a steady stream of
//! requests allocates nothing.

use crate::pkthdr::HDR_SIZE;

/// A message buffer: contiguous application data with headroom for a packet header.
#[derive(Clone, PartialEq, Eq)]
pub struct MsgBuf {
    /// `HDR_SIZE` bytes of headroom followed by the data area (its length is the capacity).
    buf: Vec<u8>,
    len: usize,
}

impl std::fmt::Debug for MsgBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgBuf")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl MsgBuf {
    /// A zero-filled buffer of `len` bytes (capacity `len`).
    pub fn new(len: usize) -> Self {
        Self {
            buf: vec![0; HDR_SIZE + len],
            len,
        }
    }

    /// A buffer holding a copy of `data`.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(HDR_SIZE + data.len());
        buf.resize(HDR_SIZE, 0);
        buf.extend_from_slice(data);
        Self {
            buf,
            len: data.len(),
        }
    }

    /// Data length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the message is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many data bytes fit without reallocating.
    pub fn capacity(&self) -> usize {
        self.buf.len().saturating_sub(HDR_SIZE)
    }

    /// The data.
    pub fn as_slice(&self) -> &[u8] {
        self.buf.get(HDR_SIZE..HDR_SIZE + self.len).unwrap_or(&[])
    }

    /// The data, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let end = HDR_SIZE + self.len;
        self.buf.get_mut(HDR_SIZE..end).unwrap_or(&mut [])
    }

    /// Sets the data length; grows the buffer (zero-filled) if `len` exceeds the capacity.
    pub fn resize(&mut self, len: usize) {
        if len > self.capacity() {
            self.buf.resize(HDR_SIZE + len, 0);
        }
        self.len = len;
    }

    /// Replaces the contents with a copy of `data`.
    pub fn set(&mut self, data: &[u8]) {
        self.resize(data.len());
        self.as_mut_slice().copy_from_slice(data);
    }

    /// Copies the data out.
    pub fn to_vec(&self) -> Vec<u8> {
        self.as_slice().to_vec()
    }

    /// Writes the first packet's header into the headroom.
    pub(crate) fn set_hdr0(&mut self, hdr: &[u8; HDR_SIZE]) {
        if let Some(h) = self.buf.get_mut(..HDR_SIZE) {
            h.copy_from_slice(hdr);
        }
    }

    /// The headroom header followed by the first `n` data bytes: packet 0 as one slice.
    pub(crate) fn pkt0(&self, n: usize) -> &[u8] {
        self.buf.get(..HDR_SIZE + n.min(self.len)).unwrap_or(&[])
    }

    /// `len` data bytes starting at `off`, if in range.
    pub(crate) fn range(&self, off: usize, len: usize) -> Option<&[u8]> {
        let end = off.checked_add(len)?;
        if end > self.len {
            return None;
        }
        self.buf.get(HDR_SIZE + off..HDR_SIZE + end)
    }

    /// Copies `data` to offset `off`; false if it does not fit in the current length.
    pub(crate) fn write_at(&mut self, off: usize, data: &[u8]) -> bool {
        let Some(end) = off.checked_add(data.len()) else {
            return false;
        };
        if end > self.len {
            return false;
        }
        match self.buf.get_mut(HDR_SIZE + off..HDR_SIZE + end) {
            Some(dst) => {
                dst.copy_from_slice(data);
                true
            }
            None => false,
        }
    }
}

const MIN_CLASS_SHIFT: u32 = 6; // 64 B
const NUM_CLASSES: usize = 24; // up to 512 MiB, far past the 8 MiB message limit

/// A pool of [`MsgBuf`]s in power-of-two size classes.
pub struct BufPool {
    free: Vec<Vec<MsgBuf>>,
    cached_bytes: usize,
    max_cached_bytes: usize,
    allocated: u64,
}

impl BufPool {
    /// A pool that keeps at most `max_cached_bytes` of free buffers.
    pub fn new(max_cached_bytes: usize) -> Self {
        Self {
            free: (0..NUM_CLASSES).map(|_| Vec::new()).collect(),
            cached_bytes: 0,
            max_cached_bytes,
            allocated: 0,
        }
    }

    fn class_of(cap: usize) -> usize {
        let shift = cap.max(1).next_power_of_two().trailing_zeros();
        (shift.saturating_sub(MIN_CLASS_SHIFT) as usize).min(NUM_CLASSES - 1)
    }

    /// A buffer with `len` bytes of data (contents unspecified).
    pub fn alloc(&mut self, len: usize) -> MsgBuf {
        let class = Self::class_of(len);
        let class_cap = 1usize << (class as u32 + MIN_CLASS_SHIFT);
        if let Some(mut b) = self.free.get_mut(class).and_then(|f| f.pop()) {
            self.cached_bytes = self.cached_bytes.saturating_sub(b.capacity());
            b.resize(len);
            return b;
        }
        self.allocated += 1;
        let mut b = MsgBuf::new(class_cap.max(len));
        b.resize(len);
        b
    }

    /// Returns a buffer to the pool (or frees it if the pool is full).
    pub fn free(&mut self, buf: MsgBuf) {
        let cap = buf.capacity();
        if !cap.is_power_of_two() || cap < (1 << MIN_CLASS_SHIFT) {
            return;
        }
        if self.cached_bytes + cap > self.max_cached_bytes {
            return;
        }
        let class = Self::class_of(cap);
        if let Some(list) = self.free.get_mut(class) {
            self.cached_bytes += cap;
            list.push(buf);
        }
    }

    /// How many buffers the pool has allocated from the heap so far.
    pub fn heap_allocations(&self) -> u64 {
        self.allocated
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msgbuf_basics() {
        let mut m = MsgBuf::from_slice(b"hello");
        assert_eq!(m.as_slice(), b"hello");
        m.resize(3);
        assert_eq!(m.as_slice(), b"hel");
        assert!(m.write_at(1, b"ZZ"));
        assert!(!m.write_at(2, b"ZZ"));
        assert_eq!(m.range(0, 3), Some(&b"hZZ"[..]));
        assert_eq!(m.range(2, 5), None);
        m.set_hdr0(&[9; HDR_SIZE]);
        assert_eq!(m.pkt0(3).len(), HDR_SIZE + 3);
        m.set(&[1; 100]);
        assert_eq!(m.len(), 100);
    }

    #[test]
    fn pool_reuses() {
        let mut p = BufPool::new(1 << 20);
        let a = p.alloc(100);
        assert_eq!(a.len(), 100);
        assert_eq!(a.capacity(), 128);
        p.free(a);
        let b = p.alloc(70);
        assert_eq!(b.capacity(), 128);
        assert_eq!(p.heap_allocations(), 1);
        let big = p.alloc(8 << 20);
        assert_eq!(big.len(), 8 << 20);
        p.free(big); // over the cache limit: dropped
        let _ = p.alloc(8 << 20);
        assert_eq!(p.heap_allocations(), 3);
    }
}
