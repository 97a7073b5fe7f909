//! A link's send queue: framed packets waiting for the socket (while the connection is being
//! set up, or when the kernel's send buffer is full). It holds whole frames, except that the
//! first may have been partly written already; it knows how many frames it holds so that a
//! failure can count them as dropped.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use super::wire::{self, LEN_BYTES};

#[derive(Default, Debug)]
pub(crate) struct TxQueue {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// Frames held (a partly written one included).
    frames: usize,
    /// Bytes left of the partly written first frame (0: `pos` is at a frame boundary).
    head_rem: usize,
}

/// Compact the buffer once this many written bytes sit in front of it.
const COMPACT: usize = 64 << 10;

impl TxQueue {
    /// Bytes waiting.
    pub(crate) fn len(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Frames waiting (a partly written one included).
    pub(crate) fn frames(&self) -> usize {
        self.frames
    }

    /// The bytes to write next.
    pub(crate) fn bytes(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    /// Appends one frame carrying `hdr` + `data`.
    pub(crate) fn push(&mut self, hdr: &[u8], data: &[u8]) {
        self.buf
            .extend_from_slice(&wire::data_header(hdr.len() + data.len()));
        self.buf.extend_from_slice(hdr);
        self.buf.extend_from_slice(data);
        self.frames += 1;
    }

    /// Appends the unwritten tail of a frame whose first bytes went out directly; only valid on
    /// an empty queue (the tail must come first on the wire).
    pub(crate) fn push_tail(&mut self, parts: &[&[u8]]) {
        debug_assert!(self.is_empty());
        let mut n = 0;
        for p in parts {
            self.buf.extend_from_slice(p);
            n += p.len();
        }
        if n > 0 {
            self.frames += 1;
            self.head_rem = n;
        }
    }

    /// Marks `n` bytes from the front as written.
    pub(crate) fn advance(&mut self, n: usize) {
        let mut n = n.min(self.len());
        while n > 0 {
            if self.head_rem == 0 {
                let mut prefix = [0u8; LEN_BYTES];
                if let Some(b) = self.buf.get(self.pos..self.pos + LEN_BYTES) {
                    prefix.copy_from_slice(b);
                }
                self.head_rem = LEN_BYTES + u32::from_le_bytes(prefix) as usize;
            }
            let k = n.min(self.head_rem);
            self.pos += k;
            self.head_rem -= k;
            n -= k;
            if self.head_rem == 0 {
                self.frames = self.frames.saturating_sub(1);
            }
        }
        if self.pos >= self.buf.len() {
            self.buf.clear();
            self.pos = 0;
            self.head_rem = 0;
            self.frames = 0;
        } else if self.pos >= COMPACT && self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Drops every frame carrying more than `max` bytes (the peer announced a smaller maximum
    /// than ours); only valid while nothing was written. Returns how many were dropped.
    pub(crate) fn retain_max(&mut self, max: usize) -> usize {
        if self.head_rem != 0 || self.pos != 0 {
            return 0;
        }
        let mut dropped = 0;
        let mut read = 0;
        let mut write = 0;
        while let Ok(Some(len)) = wire::data_len(self.buf.get(read..).unwrap_or(&[]), usize::MAX) {
            let total = LEN_BYTES + len;
            if len <= max {
                if read != write {
                    self.buf.copy_within(read..read + total, write);
                }
                write += total;
            } else {
                dropped += 1;
            }
            read += total;
        }
        self.buf.truncate(write);
        self.frames -= dropped;
        dropped
    }

    /// Empties the queue; returns the frames it held.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.frames;
        *self = Self {
            buf: std::mem::take(&mut self.buf),
            ..Self::default()
        };
        self.buf.clear();
        n
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn counts_frames_through_partial_writes() {
        let mut q = TxQueue::default();
        q.push(b"ab", b"cde");
        q.push(b"", b"f");
        q.push(b"ghij", b"");
        assert_eq!((q.frames(), q.len()), (3, 9 + 5 + 8));
        q.advance(3);
        assert_eq!(q.frames(), 3);
        q.advance(6);
        assert_eq!(q.frames(), 2);
        q.advance(7);
        assert_eq!(q.frames(), 1);
        assert_eq!(q.bytes(), &[0, 0, b'g', b'h', b'i', b'j']);
        q.advance(100);
        assert!(q.is_empty());
        assert_eq!(q.frames(), 0);
        q.push_tail(&[b"xy", b"z"]);
        assert_eq!((q.frames(), q.bytes()), (1, &b"xyz"[..]));
        q.push(b"k", b"");
        q.advance(3);
        assert_eq!(q.frames(), 1);
        assert_eq!(q.clear(), 1);
        assert!(q.is_empty());
    }

    #[test]
    fn retain_max_drops_oversize_frames() {
        let mut q = TxQueue::default();
        for n in [1usize, 10, 3, 11, 10] {
            q.push(&vec![n as u8; n], b"");
        }
        assert_eq!(q.retain_max(10), 1);
        assert_eq!(q.frames(), 4);
        let mut lens = Vec::new();
        let b = q.bytes().to_vec();
        let mut at = 0;
        while at < b.len() {
            let len = u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
            assert!(b[at + 4..at + 4 + len].iter().all(|&x| x as usize == len));
            lens.push(len);
            at += 4 + len;
        }
        assert_eq!(lens, [1, 10, 3, 10]);
        q.advance(1);
        assert_eq!(q.retain_max(1), 0, "not after a partial write");
    }
}
