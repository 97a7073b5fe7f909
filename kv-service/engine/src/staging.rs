//! The staging area's on-disk format (see `docs/STORAGE.md`, Staging area).
//!
//! In [`Durability::Periodic`](crate::Durability::Periodic) and
//! [`Durability::Sync`](crate::Durability::Sync) a put or delete is acknowledged once its
//! record is in the worker's staging file `worker-NNNN.stage`, a fixed-size ring; the slab
//! pages it changed are written back later, many changes per page write, and the ring space
//! is reused once those page writes are durable. Recovery applies every valid record of the
//! ring whose sequence number is higher than the one in its slot.
//!
//! The file starts with a 4 KiB header page; the ring is the rest of the file:
//!
//! ```text
//! header page (the first 40 bytes; the rest of the page is zero)
//! offset size field
//!      0    8 magic    b"KVSTAGE\n"
//!      8    4 version  u32 LE, 1
//!     12    4 reserved zero
//!     16    8 salt     u64 LE, random, chosen when the file is created
//!     24    8 ring     u64 LE, bytes of the ring (= file length - 4096)
//!     32    4 crc32c   CRC32C of bytes 0..32, LE
//!     36    4 reserved zero
//! ```
//!
//! The ring holds **chunks**, each written by one write at a ring offset that is a multiple of
//! [`SCAN_ALIGN`] (512 bytes; 4096 with O_DIRECT), never across the end of the ring:
//!
//! ```text
//! chunk header (48 bytes)
//! offset size field
//!      0    4 magic    b"KVSG"
//!      4    4 crc32c   CRC32C of the salt (8 bytes LE) then bytes 8 .. len of the chunk, LE
//!      8    8 lsn      u64 LE: the chunk's position in the staging log (offset = lsn mod size)
//!     16    8 number   u64 LE: chunks are numbered 1, 2, 3, ... in the order they are written
//!                      (a chunk whose write failed leaves its number to the next one)
//!     24    8 settled  u64 LE: every chunk numbered up to this one was on stable storage when
//!                      this one was written
//!     32    4 len      u32 LE: bytes of the chunk, header and entries
//!     36    4 count    u32 LE: entries
//!     40    8 reserved zero
//! then `count` entries, end to end:
//!      0    1 class    size class of the slot
//!      1    3 reserved zero
//!      4    4 slot     u32 LE: slot number in the class's slab file
//!      8    4 rec_len  u32 LE: length of the record that follows
//!     12    . record   the slot's record exactly as in a slab (`record.rs`: live or tombstone)
//! ```
//!
//! A chunk is valid when its magic, length and CRC are right; a torn or overwritten chunk
//! fails its CRC and is skipped as a whole, so the entries of one chunk (e.g. the new copy and
//! the tombstone of a moved item) are recovered together or not at all.
//!
//! Chunks written after the last flush may reach the disk in any order, or not at all, when
//! the power fails. Recovery therefore applies a **prefix**: with `M` the valid chunk of the
//! highest number and `S` its `settled`, it takes every valid chunk numbered up to `S`, then
//! `S + 1`, `S + 2`, ... as long as none is missing. A later chunk that survived without an
//! earlier one is dropped (e.g. an insert into a slot freed by a delete that was lost), so a
//! power cut loses the most recent writes, never an older one without the newer ones. The salt keeps a value
//! that holds bytes shaped like a chunk from ever being taken for one (its writer cannot know
//! the salt), should the real chunk around it be torn.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use crate::record::{self, Slot};
use crate::slab::{Geometry, CLASSES};

/// Magic bytes at the start of a chunk.
pub const CHUNK_MAGIC: &[u8; 4] = b"KVSG";
/// Length of a chunk header.
pub const CHUNK_HEADER: usize = 48;
/// Length of an entry header.
pub const ENTRY_HEADER: usize = 12;
/// Chunks start at multiples of this many bytes; recovery looks for chunks at each.
pub const SCAN_ALIGN: usize = 512;

/// Magic bytes of the header page.
pub const FILE_MAGIC: &[u8; 8] = b"KVSTAGE\n";
/// Version of the staging format.
pub const STAGE_VERSION: u32 = 1;
/// Bytes before the ring (the header page).
pub const RING_START: u64 = 4096;

/// Encodes the header page's first bytes (the rest of the page is zero).
pub fn encode_header(salt: u64, ring: u64) -> [u8; 40] {
    let mut b = [0u8; 40];
    let _ = put(&mut b, 0, FILE_MAGIC);
    let _ = put(&mut b, 8, &STAGE_VERSION.to_le_bytes());
    let _ = put(&mut b, 16, &salt.to_le_bytes());
    let _ = put(&mut b, 24, &ring.to_le_bytes());
    let crc = crc32c::crc32c(b.get(0..32).unwrap_or_default());
    let _ = put(&mut b, 32, &crc.to_le_bytes());
    b
}

/// Decodes a header page: `(salt, ring bytes)`, or `None` if it is not a valid header.
pub fn decode_header(b: &[u8]) -> Option<(u64, u64)> {
    if b.get(0..8)? != FILE_MAGIC
        || le_u32(b, 8)? != STAGE_VERSION
        || le_u32(b, 12)? != 0
        || le_u32(b, 36)? != 0
        || crc32c::crc32c(b.get(0..32)?) != le_u32(b, 32)?
    {
        return None;
    }
    Some((le_u64(b, 16)?, le_u64(b, 24)?))
}

/// The CRC of a chunk's bytes after the CRC field, salted.
fn chunk_crc(salt: u64, body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&salt.to_le_bytes()), body)
}

/// File name of worker `worker`'s staging area: `worker-NNNN.stage`.
pub fn file_name(worker: usize) -> String {
    format!("worker-{worker:04}.stage")
}

/// Parses a staging file name into its worker number.
pub fn parse_file_name(name: &str) -> Option<usize> {
    let w = name.strip_prefix("worker-")?.strip_suffix(".stage")?;
    if w.len() < 4 || !w.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    w.parse().ok()
}

/// Bytes an entry for a record of `rec_len` bytes takes in a chunk.
pub fn entry_len(rec_len: usize) -> usize {
    ENTRY_HEADER + rec_len
}

fn put(buf: &mut [u8], off: usize, bytes: &[u8]) -> Option<()> {
    buf.get_mut(off..off.checked_add(bytes.len())?)?
        .copy_from_slice(bytes);
    Some(())
}

fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Appends an entry at byte `at` of a chunk buffer; returns the bytes it took, or `None` if it
/// does not fit (nothing written).
pub fn put_entry(chunk: &mut [u8], at: usize, class: u8, slot: u32, rec: &[u8]) -> Option<usize> {
    let len = entry_len(rec.len());
    let rec_len = u32::try_from(rec.len()).ok()?;
    chunk.get(at..at.checked_add(len)?)?;
    put(chunk, at, &[class, 0, 0, 0])?;
    put(chunk, at + 4, &slot.to_le_bytes())?;
    put(chunk, at + 8, &rec_len.to_le_bytes())?;
    put(chunk, at + ENTRY_HEADER, rec)?;
    Some(len)
}

/// What a chunk header says besides its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkId {
    /// Position in the staging log.
    pub lsn: u64,
    /// Chunk number (1, 2, ...).
    pub number: u64,
    /// Every chunk up to this number was settled when this one was sealed.
    pub settled: u64,
}

/// Writes the header of a chunk whose entries fill bytes `CHUNK_HEADER .. len` of `chunk`,
/// and its checksum (with the ring's `salt`). `None` if `len` does not fit the buffer.
pub fn seal(chunk: &mut [u8], salt: u64, id: ChunkId, len: usize, count: u32) -> Option<()> {
    let len32 = u32::try_from(len).ok()?;
    if len < CHUNK_HEADER || len > chunk.len() {
        return None;
    }
    put(chunk, 0, CHUNK_MAGIC)?;
    put(chunk, 8, &id.lsn.to_le_bytes())?;
    put(chunk, 16, &id.number.to_le_bytes())?;
    put(chunk, 24, &id.settled.to_le_bytes())?;
    put(chunk, 32, &len32.to_le_bytes())?;
    put(chunk, 36, &count.to_le_bytes())?;
    put(chunk, 40, &[0; 8])?;
    let crc = chunk_crc(salt, chunk.get(8..len)?);
    put(chunk, 4, &crc.to_le_bytes())
}

/// One record found in a staging image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staged {
    /// Size class of the slot.
    pub class: u8,
    /// Slot number.
    pub slot: u32,
    /// The record's sequence number.
    pub seq: u64,
    /// Where the record's bytes are in the image.
    pub offset: usize,
    /// The record's length.
    pub len: usize,
}

/// What [`parse`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    /// Every record of every chunk of the prefix recovery applies (module documentation), in
    /// chunk order.
    pub records: Vec<Staged>,
    /// Valid chunks.
    pub chunks: u64,
    /// Valid chunks left out: they follow a missing one.
    pub dropped: u64,
    /// Entries inside valid chunks that do not hold a valid record for their class (a bug or
    /// bit rot); skipped.
    pub bad_entries: u64,
}

/// A valid chunk: its header and its records.
struct Chunk {
    id: ChunkId,
    records: Vec<Staged>,
}

/// Parses a valid chunk at the start of `b` (at `base` in the image): its length, or `None`.
fn chunk_at(
    b: &[u8],
    salt: u64,
    base: usize,
    chunks: &mut Vec<Chunk>,
    bad: &mut u64,
) -> Option<usize> {
    if b.get(0..4)? != CHUNK_MAGIC {
        return None;
    }
    let len = le_u32(b, 32)? as usize;
    let count = le_u32(b, 36)?;
    if len < CHUNK_HEADER || b.get(40..48)? != [0u8; 8] {
        return None;
    }
    let body = b.get(8..len)?;
    if chunk_crc(salt, body) != le_u32(b, 4)? {
        return None;
    }
    let mut at = CHUNK_HEADER;
    let mut found = Vec::new();
    for _ in 0..count {
        let class = *b.get(at)?;
        let slot = le_u32(b, at + 4)?;
        let rec_len = le_u32(b, at + 8)? as usize;
        let start = at + ENTRY_HEADER;
        let end = start.checked_add(rec_len)?;
        if end > len {
            return None;
        }
        let rec = b.get(start..end)?;
        let fits = CLASSES.get(usize::from(class)).is_some()
            && rec_len <= Geometry::of(class).slot_size
            && b.get(at + 1..at + 4)? == [0u8; 3];
        let seq = match record::decode(rec) {
            Slot::Live { seq, .. } | Slot::Tombstone { seq } if fits => Some(seq),
            _ => None,
        };
        match seq {
            Some(seq) => found.push(Staged {
                class,
                slot,
                seq,
                offset: base + start,
                len: rec_len,
            }),
            None => *bad += 1,
        }
        at = end;
    }
    let id = ChunkId {
        lsn: le_u64(b, 8)?,
        number: le_u64(b, 16)?,
        settled: le_u64(b, 24)?,
    };
    chunks.push(Chunk { id, records: found });
    Some(len)
}

/// The records recovery applies from the image of a ring whose salt is `salt`: those of the
/// prefix of chunks described in the [module documentation](self), in chunk order (offsets in
/// the result are offsets in `image`). Never panics, whatever the bytes.
pub fn parse(image: &[u8], salt: u64) -> Parsed {
    let mut out = Parsed::default();
    let mut chunks = Vec::new();
    let mut pos = 0usize;
    while pos < image.len() {
        let rest = image.get(pos..).unwrap_or_default();
        match chunk_at(rest, salt, pos, &mut chunks, &mut out.bad_entries) {
            Some(len) => pos += len.div_ceil(SCAN_ALIGN).max(1) * SCAN_ALIGN,
            None => pos += SCAN_ALIGN,
        }
    }
    out.chunks = chunks.len() as u64;
    // A number seen twice (a chunk whose write failed after landing, and the chunk that
    // followed it): the later position wins.
    chunks.sort_by_key(|c| (c.id.number, c.id.lsn));
    chunks.dedup_by(|later, earlier| {
        if later.id.number == earlier.id.number {
            std::mem::swap(later, earlier);
            true
        } else {
            false
        }
    });
    let settled = chunks.last().map_or(0, |c| c.id.settled);
    let mut expect = settled.saturating_add(1);
    for c in chunks {
        if c.id.number > settled {
            if c.id.number != expect {
                out.dropped += 1;
                continue;
            }
            expect += 1;
        }
        out.records.extend(c.records);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    const SALT: u64 = 0x5A17;

    fn chunk_with(records: &[(u8, u32, Vec<u8>)], lsn: u64) -> Vec<u8> {
        chunk_numbered(records, lsn, lsn / 4096 + 1, 0)
    }

    fn chunk_numbered(
        records: &[(u8, u32, Vec<u8>)],
        lsn: u64,
        number: u64,
        settled: u64,
    ) -> Vec<u8> {
        let mut c = vec![0u8; 4096];
        let mut at = CHUNK_HEADER;
        for (class, slot, rec) in records {
            at += put_entry(&mut c, at, *class, *slot, rec).unwrap();
        }
        let id = ChunkId {
            lsn,
            number,
            settled,
        };
        seal(&mut c, SALT, id, at, records.len() as u32).unwrap();
        c
    }

    fn live(seq: u64, key: &[u8], value: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; record::encoded_len(key.len(), value.len())];
        record::encode_live(&mut b, seq, key, value).unwrap();
        b
    }

    #[test]
    fn golden_chunk() {
        let c = chunk_numbered(&[(0, 7, live(5, b"k", b"v"))], 0x0102, 3, 2);
        let len = CHUNK_HEADER + ENTRY_HEADER + 22;
        assert_eq!(&c[0..4], b"KVSG");
        assert_eq!(&c[8..16], &[0x02, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&c[16..24], &[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&c[24..32], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&c[32..36], &(len as u32).to_le_bytes());
        assert_eq!(&c[36..40], &[1, 0, 0, 0]);
        assert_eq!(&c[48..60], &[0, 0, 0, 0, 7, 0, 0, 0, 22, 0, 0, 0]);
        assert_eq!(
            &c[4..8],
            &crc32c::crc32c_append(crc32c::crc32c(&SALT.to_le_bytes()), &c[8..len]).to_le_bytes(),
            "the CRC covers the salt and everything after itself"
        );
        assert_eq!(parse(&c, SALT).chunks, 1);
        assert_eq!(
            parse(&c, SALT + 1).chunks,
            0,
            "another ring's salt: not a chunk"
        );
    }

    #[test]
    fn parse_finds_valid_chunks_and_skips_torn_ones() {
        let mut image = vec![0u8; 8 * SCAN_ALIGN * 8];
        let a = chunk_with(
            &[(0, 1, live(3, b"a", b"1")), (5, 9, live(4, b"b", b"2"))],
            0,
        );
        image[..a.len()].copy_from_slice(&a);
        let b = chunk_with(&[(1, 2, live(8, b"c", b"3"))], 4096);
        image[4096..4096 + b.len()].copy_from_slice(&b);
        let p = parse(&image, SALT);
        assert_eq!(p.chunks, 2);
        assert_eq!(
            p.records
                .iter()
                .map(|r| (r.class, r.slot, r.seq))
                .collect::<Vec<_>>(),
            vec![(0, 1, 3), (5, 9, 4), (1, 2, 8)]
        );
        let r = p.records[2];
        assert_eq!(
            record::decode(&image[r.offset..r.offset + r.len]),
            Slot::Live {
                seq: 8,
                key: b"c",
                value: b"3"
            }
        );
        // A torn chunk (one byte of an entry changed) is skipped as a whole; the chunk after
        // it is left out too (it would be applied without the one before).
        image[60] ^= 1;
        let p = parse(&image, SALT);
        assert_eq!((p.chunks, p.dropped, p.records.len()), (1, 1, 0));
    }

    #[test]
    fn only_the_prefix_after_the_settled_chunks_is_applied() {
        let rec = |seq| vec![(0u8, seq as u32, live(seq, b"k", b"v"))];
        // Chunks 1..=3 settled (say 2 was reclaimed and overwritten), then 4, 5, 7: 6 is
        // missing, so 7 is left out.
        let mut image = vec![0u8; 8 * 4096];
        for (slot, (number, settled)) in [(1, 0), (3, 1), (4, 3), (5, 3), (7, 3)]
            .into_iter()
            .enumerate()
        {
            let c = chunk_numbered(&rec(number), slot as u64 * 4096, number, settled);
            image[slot * 4096..(slot + 1) * 4096].copy_from_slice(&c);
        }
        let p = parse(&image, SALT);
        assert_eq!((p.chunks, p.dropped), (5, 1));
        assert_eq!(
            p.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 3, 4, 5]
        );
        // Once a later chunk says 6 had settled (it was durable, then reclaimed), 7 counts.
        let c = chunk_numbered(&rec(8), 6 * 4096, 8, 7);
        image[6 * 4096..7 * 4096].copy_from_slice(&c);
        let p = parse(&image, SALT);
        assert_eq!(p.dropped, 0);
        assert_eq!(
            p.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 3, 4, 5, 7, 8]
        );
    }

    #[test]
    fn entries_that_do_not_fit_their_class_are_skipped() {
        // A 200-byte record cannot live in class 0 (100-byte slots).
        let c = chunk_with(
            &[
                (0, 1, live(3, b"k", &[7; 170])),
                (2, 1, live(4, b"k", b"x")),
            ],
            0,
        );
        let p = parse(&c, SALT);
        assert_eq!((p.chunks, p.records.len(), p.bad_entries), (1, 1, 1));
        assert_eq!(p.records[0].class, 2);
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = encode_header(0xDEAD_BEEF, 1 << 20);
        assert_eq!(&h[0..8], b"KVSTAGE\n");
        assert_eq!(decode_header(&h), Some((0xDEAD_BEEF, 1 << 20)));
        for i in 0..40 {
            let mut d = h;
            d[i] ^= 0x10;
            assert_eq!(decode_header(&d), None, "byte {i} changed");
        }
    }

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(3), "worker-0003.stage");
        assert_eq!(parse_file_name("worker-0003.stage"), Some(3));
        assert_eq!(parse_file_name("worker-3.stage"), None);
        assert_eq!(parse_file_name("worker-0003-class-100.slab"), None);
    }

    #[test]
    fn parse_never_panics_on_garbage() {
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        for n in 0..200 {
            let mut b = vec![0u8; 2048];
            for x in b.iter_mut() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                *x = rng as u8;
            }
            // Plant magics so the header paths are taken.
            for at in (0..b.len()).step_by(SCAN_ALIGN) {
                b[at..at + 4].copy_from_slice(CHUNK_MAGIC);
                b[at + 32..at + 36].copy_from_slice(&((n * 7 % 600) as u32).to_le_bytes());
            }
            let _ = parse(&b, SALT);
        }
    }
}
