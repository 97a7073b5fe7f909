//! The TCP transport's receive side: one byte arena shared by every connection, into which
//! socket reads land and in which data frames are parsed in place, and a FIFO of packet
//! descriptors over it (what `rx_pkt` borrows).
//!
//! The arena is a bip buffer: live bytes are one region `[start, w)`, or two once writing has
//! wrapped (`[start, len)` and `[0, w)`). A read needs contiguous room; when the room at the end
//! is too small and the beginning is free, writing wraps. Bytes of a read that do not complete a
//! packet (a frame cut by the read, or frames beyond a full descriptor ring) are moved to the
//! connection's [`Carry`], so the arena only ever holds packets: `w` rolls back to the end of
//! the last packet, and the next read of another connection reuses the space. The carry goes
//! first on that connection's next read (copied in front of it), so a cut frame costs one copy
//! of its first part. Packets are released in FIFO order, which frees their bytes in order.
//!
//! Nothing here can panic on any input: indexing goes through `get`, and the lints below make
//! the compiler hold us to that.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::io;

use super::wire::{self, Malformed, LEN_BYTES};

/// Most bytes one socket read asks for (beyond the carried-over ones).
pub(crate) const READ_MAX: usize = 64 << 10;
/// Least room a socket read is given (beyond the carried-over ones).
pub(crate) const READ_MIN: usize = 4 << 10;

/// The smallest arena for packets of up to `max_pkt` bytes: room for the largest carry
/// (a read's worth plus a cut frame) and another read, so an empty arena always makes progress.
pub(crate) fn min_arena(max_pkt: usize) -> usize {
    2 * (READ_MAX + max_pkt + LEN_BYTES)
}

#[derive(Clone, Copy, Default, Debug)]
struct Desc {
    off: u32,
    len: u32,
}

/// Bytes of one connection's stream that were read but are not yet packets in the ring.
#[derive(Default, Debug)]
pub(crate) struct Carry {
    buf: Vec<u8>,
    pos: usize,
}

impl Carry {
    fn rest(&self) -> &[u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    fn consume(&mut self, n: usize) {
        self.pos = self.pos.saturating_add(n).min(self.buf.len());
        if self.pos == self.buf.len() {
            self.clear();
        }
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Whether a whole frame waits here (so the connection has input without a socket event).
    /// A malformed prefix counts: the next pull reports it.
    pub(crate) fn has_frame(&self, max_pkt: usize) -> bool {
        let rest = self.rest();
        match wire::data_len(rest, max_pkt) {
            Ok(Some(len)) => rest.len() >= LEN_BYTES + len,
            Ok(None) => false,
            Err(_) => true,
        }
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.rest().len()
    }
}

/// How one [`RxRing::pull`] ended.
#[derive(Debug)]
pub(crate) enum PullEnd {
    /// The socket has nothing more for now (it would block, or a read came back short).
    Drained,
    /// The read filled its buffer: more may be waiting.
    More,
    /// The ring (descriptors or bytes) is full; pull again after a release.
    Full,
    /// The peer closed the connection.
    Eof,
    /// The socket failed.
    Error(io::Error),
    /// The stream broke the framing rules; the connection must be closed.
    Malformed(Malformed),
}

/// The result of one [`RxRing::pull`].
#[derive(Debug)]
pub(crate) struct Pull {
    /// Packets added to the ring.
    pub pkts: usize,
    /// Why it stopped.
    pub end: PullEnd,
    /// Bytes the socket read returned.
    pub bytes: usize,
}

/// The receive ring: a byte arena and a FIFO of packet descriptors. See the module docs.
pub(crate) struct RxRing {
    arena: Vec<u8>,
    descs: Vec<Desc>,
    head: usize,
    count: usize,
    /// Offset of the oldest packet (when `count > 0`).
    start: usize,
    /// Where the next bytes go.
    w: usize,
    /// Whether writing has wrapped: live bytes are `[start, ..)` and `[0, w)`.
    wrapped: bool,
}

impl RxRing {
    /// A ring of `cap` packets over an arena of `arena_bytes` (at least `min_arena(max_pkt)`,
    /// at most `u32::MAX`; the caller checks).
    pub(crate) fn new(cap: usize, arena_bytes: usize) -> Self {
        Self {
            arena: vec![0; arena_bytes],
            descs: vec![Desc::default(); cap.max(1)],
            head: 0,
            count: 0,
            start: 0,
            w: 0,
            wrapped: false,
        }
    }

    /// Readable packets.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// Whether no more packets fit.
    pub(crate) fn is_full(&self) -> bool {
        self.count >= self.descs.len()
    }

    fn slot(&self, i: usize) -> usize {
        let j = self.head.wrapping_add(i);
        if j >= self.descs.len() {
            j.wrapping_sub(self.descs.len())
        } else {
            j
        }
    }

    /// Packet `i` (empty if out of range).
    pub(crate) fn pkt(&self, i: usize) -> &[u8] {
        if i >= self.count {
            return &[];
        }
        let Some(d) = self.descs.get(self.slot(i)) else {
            return &[];
        };
        let off = d.off as usize;
        self.arena
            .get(off..off.saturating_add(d.len as usize))
            .unwrap_or(&[])
    }

    /// Frees the first `n` packets (fewer if fewer are held).
    pub(crate) fn release(&mut self, n: usize) {
        let n = n.min(self.count);
        if n == 0 {
            return;
        }
        self.head = self.slot(n);
        self.count -= n;
        if self.count == 0 {
            self.reset();
            return;
        }
        let new_start = self.descs.get(self.head).map_or(0, |d| d.off as usize);
        if self.wrapped && new_start < self.start {
            // Every packet of the upper region is gone.
            self.wrapped = false;
        }
        self.start = new_start;
    }

    fn reset(&mut self) {
        self.start = 0;
        self.w = 0;
        self.wrapped = false;
    }

    /// Contiguous free bytes at `w`.
    fn room(&self) -> usize {
        if self.wrapped {
            self.start.saturating_sub(self.w)
        } else {
            self.arena.len().saturating_sub(self.w)
        }
    }

    /// Makes `need` contiguous bytes free at the write position (wrapping if that helps);
    /// returns the position, or `None` if the arena is too full.
    fn acquire(&mut self, need: usize) -> Option<usize> {
        if self.count == 0 {
            self.reset();
        }
        if self.room() >= need {
            return Some(self.w);
        }
        if !self.wrapped && self.count > 0 && self.start >= need {
            self.wrapped = true;
            self.w = 0;
            return Some(0);
        }
        None
    }

    /// Appends a descriptor for `len` bytes at `off` (the caller checked there is room).
    fn push(&mut self, off: usize, len: usize) {
        let i = self.slot(self.count);
        if let Some(d) = self.descs.get_mut(i) {
            *d = Desc {
                off: off as u32,
                len: len as u32,
            };
            if self.count == 0 {
                self.start = off;
            }
            self.count += 1;
        }
    }

    /// Turns whole frames waiting in `carry` into packets, as far as the ring has room.
    /// Returns the packets added, or the framing error.
    fn drain_carry(&mut self, carry: &mut Carry, max_pkt: usize) -> Result<usize, Malformed> {
        let mut pkts = 0;
        loop {
            let rest = carry.rest();
            let len = match wire::data_len(rest, max_pkt)? {
                Some(len) if rest.len() >= LEN_BYTES + len => len,
                _ => return Ok(pkts),
            };
            if self.is_full() {
                return Ok(pkts);
            }
            let Some(at) = self.acquire(len) else {
                return Ok(pkts);
            };
            let src = rest.get(LEN_BYTES..LEN_BYTES + len).unwrap_or(&[]);
            if let Some(dst) = self.arena.get_mut(at..at + len) {
                dst.copy_from_slice(src);
            }
            self.push(at, len);
            self.w = at + len;
            carry.consume(LEN_BYTES + len);
            pkts += 1;
        }
    }

    /// Moves packets of one connection into the ring: first the whole frames left in its
    /// `carry`, then (if the ring still has room) at most one socket read through `read`,
    /// parsed in place. Frames are checked against `max_pkt` (1..=max_pkt bytes).
    pub(crate) fn pull(
        &mut self,
        carry: &mut Carry,
        max_pkt: usize,
        read: impl FnOnce(&mut [u8]) -> io::Result<usize>,
    ) -> Pull {
        let done = |pkts, end| Pull {
            pkts,
            end,
            bytes: 0,
        };
        let mut pkts = match self.drain_carry(carry, max_pkt) {
            Ok(n) => n,
            Err(m) => return done(0, PullEnd::Malformed(m)),
        };
        if self.is_full() || carry.has_frame(max_pkt) {
            return done(pkts, PullEnd::Full);
        }
        // The carry now holds less than one frame.
        let c = carry.len();
        let frame = match wire::data_len(carry.rest(), max_pkt) {
            Ok(Some(len)) => LEN_BYTES + len,
            Ok(None) => 0,
            Err(m) => return done(pkts, PullEnd::Malformed(m)),
        };
        let need = frame.max(c + READ_MIN);
        let Some(at) = self.acquire(need) else {
            return done(pkts, PullEnd::Full);
        };
        let room = self.room().min(c + READ_MAX);
        let Some(dst) = self.arena.get_mut(at + c..at + room) else {
            return done(pkts, PullEnd::Full);
        };
        let asked = dst.len();
        let n = match read(dst) {
            Ok(0) => return done(pkts, PullEnd::Eof),
            Ok(n) => n.min(asked),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return done(pkts, PullEnd::Drained),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return done(pkts, PullEnd::More),
            Err(e) => return done(pkts, PullEnd::Error(e)),
        };
        if let Some(dst) = self.arena.get_mut(at..at + c) {
            dst.copy_from_slice(carry.rest());
        }
        carry.clear();
        let end = at + c + n;
        let mut p = at;
        let mut malformed = None;
        while !self.is_full() {
            let avail = self.arena.get(p..end).unwrap_or(&[]);
            match wire::data_len(avail, max_pkt) {
                Ok(Some(len)) if avail.len() >= LEN_BYTES + len => {
                    self.push(p + LEN_BYTES, len);
                    p += LEN_BYTES + len;
                    pkts += 1;
                }
                Ok(_) => break,
                Err(m) => {
                    malformed = Some(m);
                    break;
                }
            }
        }
        self.w = p;
        let bytes = n;
        if let Some(m) = malformed {
            return Pull {
                pkts,
                end: PullEnd::Malformed(m),
                bytes,
            };
        }
        if let Some(rest) = self.arena.get(p..end) {
            carry.buf.extend_from_slice(rest);
        }
        let end = if n < asked {
            PullEnd::Drained
        } else {
            PullEnd::More
        };
        Pull { pkts, end, bytes }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    fn frames(pkts: &[Vec<u8>]) -> Vec<u8> {
        let mut s = Vec::new();
        for p in pkts {
            s.extend_from_slice(&wire::data_header(p.len()));
            s.extend_from_slice(p);
        }
        s
    }

    /// A fake socket: `stream` is read in pieces of the sizes in `cuts` (then WouldBlock).
    struct Fake {
        stream: Vec<u8>,
        at: usize,
        cuts: VecDeque<usize>,
    }

    impl Fake {
        fn read(&mut self, dst: &mut [u8]) -> io::Result<usize> {
            let left = self.stream.len() - self.at;
            if left == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let cut = self.cuts.pop_front().unwrap_or(usize::MAX).max(1);
            let n = cut.min(left).min(dst.len());
            dst[..n].copy_from_slice(&self.stream[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn frames_cut_anywhere_arrive_whole() {
        let pkts: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 1 + i * 37]).collect();
        let mut ring = RxRing::new(64, min_arena(2000));
        let mut carry = Carry::default();
        let mut sock = Fake {
            stream: frames(&pkts),
            at: 0,
            cuts: [1, 2, 3, 5, 700, 1, 1, 4096]
                .into_iter()
                .cycle()
                .take(500)
                .collect(),
        };
        let mut got = Vec::new();
        for _ in 0..2000 {
            let r = ring.pull(&mut carry, 2000, |b| sock.read(b));
            assert!(!matches!(r.end, PullEnd::Malformed(_) | PullEnd::Error(_)));
            for i in 0..ring.len() {
                got.push(ring.pkt(i).to_vec());
            }
            ring.release(ring.len());
            if got.len() == pkts.len() {
                break;
            }
        }
        assert_eq!(got, pkts);
        assert_eq!(carry.len(), 0);
    }

    #[test]
    fn malformed_frames_are_reported() {
        for (bad, max) in [(wire::data_header(0), 10), (wire::data_header(11), 10)] {
            let mut s = frames(&[vec![1; 3]]);
            s.extend_from_slice(&bad);
            s.extend_from_slice(&[0; 20]);
            let mut sock = Fake {
                stream: s,
                at: 0,
                cuts: VecDeque::new(),
            };
            let mut ring = RxRing::new(8, min_arena(max));
            let mut carry = Carry::default();
            let r = ring.pull(&mut carry, max, |b| sock.read(b));
            assert!(matches!(r.end, PullEnd::Malformed(_)), "{r:?}");
            // The packet before the bad frame is delivered.
            assert_eq!((r.pkts, ring.len(), ring.pkt(0)), (1, 1, &[1u8; 3][..]));
        }
    }

    #[test]
    fn full_descriptor_ring_keeps_the_rest_in_the_carry() {
        let pkts: Vec<Vec<u8>> = (0..20).map(|i| vec![i as u8; 10]).collect();
        let mut sock = Fake {
            stream: frames(&pkts),
            at: 0,
            cuts: VecDeque::new(),
        };
        let mut ring = RxRing::new(4, min_arena(100));
        let mut carry = Carry::default();
        let r = ring.pull(&mut carry, 100, |b| sock.read(b));
        assert_eq!(r.pkts, 4);
        assert!(carry.has_frame(100));
        // No read while whole frames wait in the carry.
        let r = ring.pull(&mut carry, 100, |_| panic!("must not read"));
        assert!(matches!(r.end, PullEnd::Full) && r.pkts == 0);
        let mut got: Vec<Vec<u8>> = (0..4).map(|i| ring.pkt(i).to_vec()).collect();
        while got.len() < 20 {
            ring.release(2);
            let r = ring.pull(&mut carry, 100, |b| sock.read(b));
            assert!(r.pkts <= 2);
            for i in ring.len() - r.pkts..ring.len() {
                got.push(ring.pkt(i).to_vec());
            }
        }
        assert_eq!(got, pkts);
    }

    #[test]
    fn eof_error_and_out_of_range() {
        let mut ring = RxRing::new(4, min_arena(100));
        let mut carry = Carry::default();
        assert!(matches!(
            ring.pull(&mut carry, 100, |_| Ok(0)).end,
            PullEnd::Eof
        ));
        assert!(matches!(
            ring.pull(&mut carry, 100, |_| Err(
                io::ErrorKind::ConnectionReset.into()
            ))
            .end,
            PullEnd::Error(_)
        ));
        assert_eq!(ring.pkt(0), b"");
        assert_eq!(ring.pkt(usize::MAX), b"");
        ring.release(usize::MAX);
        assert_eq!(ring.len(), 0);
    }

    /// One connection's test stream.
    struct Stream {
        sock: Fake,
        carry: Carry,
        sent: Vec<Vec<u8>>,
    }

    proptest! {
        #![proptest_config(testkit::proptest_config(96, "proptest-regressions/tcp_ring.txt"))]

        /// Several connections share the ring; frames of random sizes are cut at random places,
        /// pulls and releases interleave at random. Every packet arrives exactly once, whole, in
        /// order per connection, and packets held stay intact while others arrive.
        #[test]
        fn interleaved_connections_deliver_in_order(
            sizes in proptest::collection::vec(proptest::collection::vec(1usize..3000, 0..40), 1..4),
            cuts in proptest::collection::vec(1usize..9000, 1..64),
            ops in proptest::collection::vec((0usize..4, 0usize..6), 1..400),
            cap in 1usize..24,
            extra in 0usize..200_000,
        ) {
            let max = 3000;
            let mut ring = RxRing::new(cap, min_arena(max) + extra);
            let mut streams: Vec<Stream> = sizes.iter().enumerate().map(|(c, s)| {
                let sent: Vec<Vec<u8>> = s.iter().enumerate()
                    .map(|(i, &n)| (0..n).map(|j| (c * 71 + i * 13 + j) as u8).collect())
                    .collect();
                let mut cuts = cuts.clone();
                let k = c % cuts.len();
                cuts.rotate_left(k);
                Stream {
                    sock: Fake { stream: frames(&sent), at: 0, cuts: cuts.into_iter().cycle().take(10_000).collect() },
                    carry: Carry::default(),
                    sent,
                }
            }).collect();
            // The ring's packets (connection, index) and copies of their bytes.
            let mut held: VecDeque<(usize, usize, Vec<u8>)> = VecDeque::new();
            let mut next = vec![0usize; streams.len()];
            let mut op = ops.iter().cycle();
            let total: usize = streams.iter().map(|s| s.sent.len()).sum();
            let mut delivered = 0;
            for _ in 0..100_000 {
                if delivered == total {
                    break;
                }
                let &(conn, rel) = op.next().unwrap();
                let c = conn % streams.len();
                let s = &mut streams[c];
                let r = ring.pull(&mut s.carry, max, |b| s.sock.read(b));
                prop_assert!(!matches!(r.end, PullEnd::Malformed(_) | PullEnd::Error(_) | PullEnd::Eof), "{:?}", r);
                for i in ring.len() - r.pkts..ring.len() {
                    let idx = next[c];
                    next[c] += 1;
                    prop_assert_eq!(ring.pkt(i), &s.sent[idx][..]);
                    held.push_back((c, idx, ring.pkt(i).to_vec()));
                }
                prop_assert_eq!(ring.len(), held.len());
                prop_assert!(ring.len() <= cap);
                for (i, (_, _, bytes)) in held.iter().enumerate() {
                    prop_assert_eq!(ring.pkt(i), &bytes[..]);
                }
                if matches!(r.end, PullEnd::Full) && r.pkts == 0 {
                    // Bytes or descriptors are short: make room.
                    let k = held.len();
                    ring.release(k);
                    held.clear();
                    delivered += k;
                    continue;
                }
                let k = rel.min(held.len());
                ring.release(k);
                held.drain(..k);
                delivered += k;
                if ring.is_full() {
                    let k = held.len();
                    ring.release(k);
                    held.clear();
                    delivered += k;
                }
            }
            prop_assert_eq!(delivered, total);
            for (c, s) in streams.iter().enumerate() {
                prop_assert_eq!(next[c], s.sent.len());
                prop_assert_eq!(s.carry.len(), 0);
            }
        }
    }
}
