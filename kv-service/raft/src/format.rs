//! The on-disk format of a thread's Raft log, version 1. All integers little-endian.
//!
//! A log is a directory of **segments** named `{seq:016x}.rlog`, `seq` increasing from 1.
//! Each segment is preallocated to the segment size (zeros) and holds a header and then
//! records back to back:
//!
//! ```text
//! header (HEADER_LEN = 40 bytes)
//!   0..8    magic "KVRAFTLG"
//!   8..12   format version (1)
//!   12..16  zero
//!   16..24  seq: this segment's sequence number (= the number in its name)
//!   24..32  tag: the owner's identity (cluster fingerprint, node, thread), checked at open
//!   32..36  CRC32C of bytes 0..32
//!   36..40  zero
//!
//! record (FRAME_LEN = 8 bytes of frame, then the payload)
//!   0..4    len: payload length, 1..=MAX_PAYLOAD (0 = no record here: the zeros past the end)
//!   4..8    CRC32C of seq (8 bytes) ‖ len (4 bytes) ‖ payload
//!   8..     payload: kind (1 byte), then the kind's body
//! ```
//!
//! The CRC covers the segment's `seq`, so bytes left by an earlier file at the same place
//! never pass for a record of this one.
//!
//! Bodies (`shard` is a u32, indexes and terms u64; a conf state is four u32-counted lists of
//! u64 ids — voters, learners, outgoing voters, next learners — and an `auto_leave` byte):
//!
//! | kind | record | body | meaning on replay |
//! |---|---|---|---|
//! | 1 | Entries | shard, first index, count u32, then per entry: term, type u8, data len u32, context len u32, data, context | entries `first..first+count` replace the shard's entries from `first` on |
//! | 2 | HardState | shard, term, vote, commit | the shard's hard state |
//! | 3 | ConfState | shard, conf state | the shard's conf state (a shard's first record) |
//! | 4 | Compact | shard, index, term | entries ≤ index are gone; `term` is index's term |
//! | 5 | Snapshot | shard, index, term, conf state | a snapshot at index was applied: no entries left, compacted to (index, term) |
//! | 6 | ShardMeta | shard, term, vote, commit, compacted index, compacted term, conf state | a shard's whole state but its entries (the checkpoint at the start of each segment) |
//! | 7 | Seal | — | the segment ends here; the next one holds what follows |
//! | 8 | Applied | shard, index, term, data len u32, data | the shard's state machine made everything up to `index` (of `term`) durable; `data` is the owner's own state at that index (the server's client sessions); written again in each segment's checkpoint |
//!
//! Everything here is total: any bytes decode to a value or an error, never a panic.

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, EntryType, HardState};

/// A shard's number.
pub type ShardId = u32;

/// Segment header magic.
pub const MAGIC: [u8; 8] = *b"KVRAFTLG";
/// The format version this code writes and reads.
pub const VERSION: u32 = 1;
/// Bytes of the segment header.
pub const HEADER_LEN: usize = 40;
/// Bytes of a record's frame (length and checksum).
pub const FRAME_LEN: usize = 8;
/// Largest payload a frame may announce (a frame of a larger length is damage).
pub const MAX_PAYLOAD: usize = 1 << 30;
/// Bytes of a Seal record.
pub const SEAL_LEN: usize = FRAME_LEN + 1;
/// Bytes a record of Entries takes besides its entries.
pub const ENTRIES_OVERHEAD: usize = FRAME_LEN + 1 + 4 + 8 + 4;
/// Bytes an entry takes besides its data and context.
pub const ENTRY_OVERHEAD: usize = 8 + 1 + 4 + 4;

const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;
const KIND_COMPACT: u8 = 4;
const KIND_SNAPSHOT: u8 = 5;
const KIND_SHARD_META: u8 = 6;
const KIND_SEAL: u8 = 7;
const KIND_APPLIED: u8 = 8;

/// Why bytes are not what this format says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// The header does not start with [`MAGIC`].
    #[error("not a Raft log segment (bad magic)")]
    BadMagic,
    /// The header names another format version.
    #[error("segment format version {0}; this build reads version {VERSION}")]
    Version(u32),
    /// A checksum does not match.
    #[error("checksum mismatch")]
    Checksum,
    /// The bytes end before the structure does.
    #[error("truncated")]
    Truncated,
    /// A record kind this version does not know.
    #[error("unknown record kind {0}")]
    UnknownKind(u8),
    /// An entry type raft-rs does not define.
    #[error("unknown entry type {0}")]
    UnknownEntryType(u8),
    /// A record whose body is longer than its fields.
    #[error("{0} bytes after the end of a record's body")]
    TrailingBytes(usize),
}

/// The name of segment `seq`.
pub fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.rlog")
}

/// The sequence number in a segment's name, or `None` if `name` is not a segment's.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let hex = name.strip_suffix(".rlog")?;
    if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(hex, 16).ok().filter(|&s| s > 0)
}

/// A segment header's fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The segment's sequence number.
    pub seq: u64,
    /// The owner's identity.
    pub tag: u64,
}

/// The header bytes of segment `seq` owned by `tag`.
pub fn encode_header(h: Header) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    let mut w = Vec::with_capacity(HEADER_LEN);
    w.extend_from_slice(&MAGIC);
    w.extend_from_slice(&VERSION.to_le_bytes());
    w.extend_from_slice(&0u32.to_le_bytes());
    w.extend_from_slice(&h.seq.to_le_bytes());
    w.extend_from_slice(&h.tag.to_le_bytes());
    let crc = crc32c::crc32c(&w);
    w.extend_from_slice(&crc.to_le_bytes());
    w.resize(HEADER_LEN, 0);
    b.copy_from_slice(&w);
    b
}

/// Decodes a segment header.
pub fn decode_header(bytes: &[u8]) -> Result<Header, FormatError> {
    let mut r = Reader::new(bytes.get(..HEADER_LEN).ok_or(FormatError::Truncated)?);
    if r.take(8)? != MAGIC {
        return Err(FormatError::BadMagic);
    }
    let version = r.u32()?;
    let _zero = r.u32()?;
    let seq = r.u64()?;
    let tag = r.u64()?;
    let crc = r.u32()?;
    let covered = bytes.get(..32).ok_or(FormatError::Truncated)?;
    if crc32c::crc32c(covered) != crc {
        return Err(FormatError::Checksum);
    }
    if version != VERSION {
        return Err(FormatError::Version(version));
    }
    Ok(Header { seq, tag })
}

/// A decoded record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// Entries `first..first + entries.len()` of a shard.
    Entries {
        /// The shard.
        shard: ShardId,
        /// Index of the first entry.
        first: u64,
        /// The entries (their `index` fields set).
        entries: Vec<Entry>,
    },
    /// A shard's hard state.
    HardState {
        /// The shard.
        shard: ShardId,
        /// The state.
        hs: HardState,
    },
    /// A shard's conf state.
    ConfState {
        /// The shard.
        shard: ShardId,
        /// The state.
        cs: ConfState,
    },
    /// Entries up to `index` are gone.
    Compact {
        /// The shard.
        shard: ShardId,
        /// Last index compacted away.
        index: u64,
        /// Its term.
        term: u64,
    },
    /// A snapshot at `index` replaced the shard's log.
    Snapshot {
        /// The shard.
        shard: ShardId,
        /// The snapshot's index.
        index: u64,
        /// Its term.
        term: u64,
        /// Its conf state.
        cs: ConfState,
    },
    /// A shard's state without its entries.
    ShardMeta {
        /// The shard.
        shard: ShardId,
        /// Hard state.
        hs: HardState,
        /// Conf state.
        cs: ConfState,
        /// Last compacted index.
        compacted_index: u64,
        /// Its term.
        compacted_term: u64,
    },
    /// End of the segment.
    Seal,
    /// The shard's state machine made everything up to `index` durable.
    Applied {
        /// The shard.
        shard: ShardId,
        /// The applied index.
        index: u64,
        /// Its term.
        term: u64,
        /// The owner's state at that index.
        data: Bytes,
    },
}

/// Appends a record's frame placeholder to `buf`; returns where the record starts, for
/// [`finish_record`].
pub fn begin_record(buf: &mut Vec<u8>) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0u8; FRAME_LEN]);
    start
}

/// Fills in the frame of the record that starts at `start` (its payload runs to the end of
/// `buf`), checksummed for segment `seq`. Call it again with another `seq` to move the record
/// to another segment.
pub fn finish_record(buf: &mut [u8], start: usize, seq: u64) {
    let Some(rec) = buf.get_mut(start..) else {
        return;
    };
    let len = u32::try_from(rec.len().saturating_sub(FRAME_LEN)).unwrap_or(u32::MAX);
    let crc = frame_crc(seq, len, rec.get(FRAME_LEN..).unwrap_or_default());
    let mut frame = [0u8; FRAME_LEN];
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4..].copy_from_slice(&crc.to_le_bytes());
    if let Some(f) = rec.get_mut(..FRAME_LEN) {
        f.copy_from_slice(&frame);
    }
}

fn frame_crc(seq: u64, len: u32, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(&seq.to_le_bytes());
    let crc = crc32c::crc32c_append(crc, &len.to_le_bytes());
    crc32c::crc32c_append(crc, payload)
}

fn put_u32(buf: &mut Vec<u8>, v: u32) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut Vec<u8>, v: u64) {
    buf.extend_from_slice(&v.to_le_bytes());
}

fn put_ids(buf: &mut Vec<u8>, ids: &[u64]) {
    put_u32(buf, u32::try_from(ids.len()).unwrap_or(u32::MAX));
    for &id in ids {
        put_u64(buf, id);
    }
}

fn put_conf_state(buf: &mut Vec<u8>, cs: &ConfState) {
    put_ids(buf, &cs.voters);
    put_ids(buf, &cs.learners);
    put_ids(buf, &cs.voters_outgoing);
    put_ids(buf, &cs.learners_next);
    buf.push(u8::from(cs.auto_leave));
}

fn put_hard_state(buf: &mut Vec<u8>, hs: &HardState) {
    put_u64(buf, hs.term);
    put_u64(buf, hs.vote);
    put_u64(buf, hs.commit);
}

/// The encoded size of an entry inside an Entries record.
pub fn entry_size(e: &Entry) -> usize {
    ENTRY_OVERHEAD + e.data.len() + e.context.len()
}

/// Appends an Entries record of `entries` (consecutive, starting at `entries[0].index`) for
/// segment `seq`.
pub fn put_entries(buf: &mut Vec<u8>, seq: u64, shard: ShardId, entries: &[Entry]) {
    let start = begin_record(buf);
    buf.push(KIND_ENTRIES);
    put_u32(buf, shard);
    put_u64(buf, entries.first().map_or(0, |e| e.index));
    put_u32(buf, u32::try_from(entries.len()).unwrap_or(u32::MAX));
    for e in entries {
        put_u64(buf, e.term);
        buf.push(e.entry_type as u8);
        put_u32(buf, u32::try_from(e.data.len()).unwrap_or(u32::MAX));
        put_u32(buf, u32::try_from(e.context.len()).unwrap_or(u32::MAX));
        buf.extend_from_slice(&e.data);
        buf.extend_from_slice(&e.context);
    }
    finish_record(buf, start, seq);
}

/// Appends a HardState record.
pub fn put_hard_state_record(buf: &mut Vec<u8>, seq: u64, shard: ShardId, hs: &HardState) {
    let start = begin_record(buf);
    buf.push(KIND_HARD_STATE);
    put_u32(buf, shard);
    put_hard_state(buf, hs);
    finish_record(buf, start, seq);
}

/// Appends a ConfState record.
pub fn put_conf_state_record(buf: &mut Vec<u8>, seq: u64, shard: ShardId, cs: &ConfState) {
    let start = begin_record(buf);
    buf.push(KIND_CONF_STATE);
    put_u32(buf, shard);
    put_conf_state(buf, cs);
    finish_record(buf, start, seq);
}

/// Appends a Compact record.
pub fn put_compact(buf: &mut Vec<u8>, seq: u64, shard: ShardId, index: u64, term: u64) {
    let start = begin_record(buf);
    buf.push(KIND_COMPACT);
    put_u32(buf, shard);
    put_u64(buf, index);
    put_u64(buf, term);
    finish_record(buf, start, seq);
}

/// Appends a Snapshot record.
pub fn put_snapshot(
    buf: &mut Vec<u8>,
    seq: u64,
    shard: ShardId,
    index: u64,
    term: u64,
    cs: &ConfState,
) {
    let start = begin_record(buf);
    buf.push(KIND_SNAPSHOT);
    put_u32(buf, shard);
    put_u64(buf, index);
    put_u64(buf, term);
    put_conf_state(buf, cs);
    finish_record(buf, start, seq);
}

/// Appends a ShardMeta record.
pub fn put_shard_meta(
    buf: &mut Vec<u8>,
    seq: u64,
    shard: ShardId,
    hs: &HardState,
    cs: &ConfState,
    compacted: (u64, u64),
) {
    let start = begin_record(buf);
    buf.push(KIND_SHARD_META);
    put_u32(buf, shard);
    put_hard_state(buf, hs);
    put_u64(buf, compacted.0);
    put_u64(buf, compacted.1);
    put_conf_state(buf, cs);
    finish_record(buf, start, seq);
}

/// Appends an Applied record.
pub fn put_applied(
    buf: &mut Vec<u8>,
    seq: u64,
    shard: ShardId,
    index: u64,
    term: u64,
    data: &[u8],
) {
    let start = begin_record(buf);
    buf.push(KIND_APPLIED);
    put_u32(buf, shard);
    put_u64(buf, index);
    put_u64(buf, term);
    put_u32(buf, u32::try_from(data.len()).unwrap_or(u32::MAX));
    buf.extend_from_slice(data);
    finish_record(buf, start, seq);
}

/// Bytes an Applied record of `data_len` bytes of data takes.
pub fn applied_size(data_len: usize) -> usize {
    FRAME_LEN + 1 + 4 + 8 + 8 + 4 + data_len
}

/// Appends a Seal record.
pub fn put_seal(buf: &mut Vec<u8>, seq: u64) {
    let start = begin_record(buf);
    buf.push(KIND_SEAL);
    finish_record(buf, start, seq);
}

/// What is at a position of a segment.
#[derive(Debug, PartialEq)]
pub enum Frame<'a> {
    /// A record whose checksum matches: its payload, and where the next frame starts.
    Record {
        /// The payload (kind and body).
        payload: &'a [u8],
        /// Offset of the next frame.
        next: usize,
    },
    /// A zero length: nothing was ever written here (the preallocated zeros).
    End,
    /// Something that is not a record of this segment: a torn or damaged write, or the end
    /// of the file inside a frame.
    Invalid(FormatError),
}

/// Reads the frame at offset `pos` of segment `seq`'s bytes.
pub fn read_frame(seg: &[u8], pos: usize, seq: u64) -> Frame<'_> {
    let Some(head) = seg.get(pos..pos.saturating_add(FRAME_LEN)) else {
        return if seg
            .get(pos..)
            .is_none_or(|rest| rest.iter().all(|&b| b == 0))
        {
            Frame::End
        } else {
            Frame::Invalid(FormatError::Truncated)
        };
    };
    let mut r = Reader::new(head);
    let (Ok(len), Ok(crc)) = (r.u32(), r.u32()) else {
        return Frame::Invalid(FormatError::Truncated);
    };
    if len == 0 {
        return if crc == 0 {
            Frame::End
        } else {
            Frame::Invalid(FormatError::Checksum)
        };
    }
    let n = len as usize;
    if n > MAX_PAYLOAD {
        return Frame::Invalid(FormatError::Truncated);
    }
    let start = pos + FRAME_LEN;
    let Some(payload) = seg.get(start..start + n) else {
        return Frame::Invalid(FormatError::Truncated);
    };
    if frame_crc(seq, len, payload) != crc {
        return Frame::Invalid(FormatError::Checksum);
    }
    Frame::Record {
        payload,
        next: start + n,
    }
}

/// A bounds-checked little-endian reader.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if self.buf.len() < n {
            return Err(FormatError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }

    fn u64(&mut self) -> Result<u64, FormatError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }

    fn ids(&mut self) -> Result<Vec<u64>, FormatError> {
        let n = self.u32()? as usize;
        if n > self.buf.len() / 8 {
            return Err(FormatError::Truncated);
        }
        (0..n).map(|_| self.u64()).collect()
    }

    fn conf_state(&mut self) -> Result<ConfState, FormatError> {
        Ok(ConfState {
            voters: self.ids()?,
            learners: self.ids()?,
            voters_outgoing: self.ids()?,
            learners_next: self.ids()?,
            auto_leave: self.u8()? != 0,
            ..ConfState::default()
        })
    }

    fn hard_state(&mut self) -> Result<HardState, FormatError> {
        Ok(HardState {
            term: self.u64()?,
            vote: self.u64()?,
            commit: self.u64()?,
            ..HardState::default()
        })
    }

    fn finish(&self) -> Result<(), FormatError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FormatError::TrailingBytes(self.buf.len()))
        }
    }
}

fn entry_type(b: u8) -> Result<EntryType, FormatError> {
    match b {
        0 => Ok(EntryType::EntryNormal),
        1 => Ok(EntryType::EntryConfChange),
        2 => Ok(EntryType::EntryConfChangeV2),
        other => Err(FormatError::UnknownEntryType(other)),
    }
}

/// Decodes a record's payload (as [`read_frame`] found it).
pub fn decode_record(payload: &[u8]) -> Result<Record, FormatError> {
    let mut r = Reader::new(payload);
    let rec = match r.u8()? {
        KIND_ENTRIES => {
            let shard = r.u32()?;
            let first = r.u64()?;
            let count = r.u32()? as usize;
            if count > r.buf.len() / ENTRY_OVERHEAD {
                return Err(FormatError::Truncated);
            }
            let mut entries = Vec::with_capacity(count);
            for i in 0..count as u64 {
                let term = r.u64()?;
                let entry_type = entry_type(r.u8()?)?;
                let dlen = r.u32()? as usize;
                let clen = r.u32()? as usize;
                entries.push(Entry {
                    term,
                    entry_type,
                    data: Bytes::copy_from_slice(r.take(dlen)?),
                    context: Bytes::copy_from_slice(r.take(clen)?),
                    index: first.checked_add(i).ok_or(FormatError::Truncated)?,
                    ..Entry::default()
                });
            }
            Record::Entries {
                shard,
                first,
                entries,
            }
        }
        KIND_HARD_STATE => Record::HardState {
            shard: r.u32()?,
            hs: r.hard_state()?,
        },
        KIND_CONF_STATE => Record::ConfState {
            shard: r.u32()?,
            cs: r.conf_state()?,
        },
        KIND_COMPACT => Record::Compact {
            shard: r.u32()?,
            index: r.u64()?,
            term: r.u64()?,
        },
        KIND_SNAPSHOT => Record::Snapshot {
            shard: r.u32()?,
            index: r.u64()?,
            term: r.u64()?,
            cs: r.conf_state()?,
        },
        KIND_SHARD_META => {
            let shard = r.u32()?;
            let hs = r.hard_state()?;
            let compacted_index = r.u64()?;
            let compacted_term = r.u64()?;
            Record::ShardMeta {
                shard,
                hs,
                cs: r.conf_state()?,
                compacted_index,
                compacted_term,
            }
        }
        KIND_SEAL => Record::Seal,
        KIND_APPLIED => {
            let shard = r.u32()?;
            let index = r.u64()?;
            let term = r.u64()?;
            let n = r.u32()? as usize;
            Record::Applied {
                shard,
                index,
                term,
                data: Bytes::copy_from_slice(r.take(n)?),
            }
        }
        other => return Err(FormatError::UnknownKind(other)),
    };
    r.finish()?;
    Ok(rec)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]
mod tests {
    use super::*;

    type Put<'a> = Box<dyn Fn(&mut Vec<u8>) + 'a>;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: Bytes::copy_from_slice(data),
            context: Bytes::from_static(b"ctx"),
            ..Entry::default()
        }
    }

    fn one(buf: &[u8], seq: u64) -> Record {
        match read_frame(buf, 0, seq) {
            Frame::Record { payload, next } => {
                assert_eq!(next, buf.len());
                decode_record(payload).unwrap()
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn records_round_trip() {
        let cs = ConfState {
            voters: vec![1, 2, 3],
            learners: vec![4],
            ..ConfState::default()
        };
        let hs = HardState {
            term: 5,
            vote: 2,
            commit: 9,
            ..HardState::default()
        };
        let entries = vec![entry(10, 4, b"a"), entry(11, 5, b"")];
        let cases: Vec<(Put, Record)> = vec![
            (
                Box::new(|b| put_entries(b, 3, 7, &entries)),
                Record::Entries {
                    shard: 7,
                    first: 10,
                    entries: entries.clone(),
                },
            ),
            (
                Box::new(|b| put_hard_state_record(b, 3, 1, &hs)),
                Record::HardState {
                    shard: 1,
                    hs: hs.clone(),
                },
            ),
            (
                Box::new(|b| put_conf_state_record(b, 3, 2, &cs)),
                Record::ConfState {
                    shard: 2,
                    cs: cs.clone(),
                },
            ),
            (
                Box::new(|b| put_compact(b, 3, 2, 8, 4)),
                Record::Compact {
                    shard: 2,
                    index: 8,
                    term: 4,
                },
            ),
            (
                Box::new(|b| put_snapshot(b, 3, 2, 8, 4, &cs)),
                Record::Snapshot {
                    shard: 2,
                    index: 8,
                    term: 4,
                    cs: cs.clone(),
                },
            ),
            (
                Box::new(|b| put_shard_meta(b, 3, 6, &hs, &cs, (8, 4))),
                Record::ShardMeta {
                    shard: 6,
                    hs: hs.clone(),
                    cs: cs.clone(),
                    compacted_index: 8,
                    compacted_term: 4,
                },
            ),
            (Box::new(|b| put_seal(b, 3)), Record::Seal),
            (
                Box::new(|b| put_applied(b, 3, 5, 12, 4, b"sessions")),
                Record::Applied {
                    shard: 5,
                    index: 12,
                    term: 4,
                    data: Bytes::from_static(b"sessions"),
                },
            ),
        ];
        for (put, want) in cases {
            let mut buf = Vec::new();
            put(&mut buf);
            assert_eq!(one(&buf, 3), want);
            // Another segment's seq: not a record of this one.
            assert_eq!(
                read_frame(&buf, 0, 4),
                Frame::Invalid(FormatError::Checksum)
            );
        }
        let mut buf = Vec::new();
        put_entries(&mut buf, 1, 7, &entries);
        let expected: usize = ENTRIES_OVERHEAD + entries.iter().map(entry_size).sum::<usize>();
        assert_eq!(buf.len(), expected);
        let mut buf = Vec::new();
        put_seal(&mut buf, 1);
        assert_eq!(buf.len(), SEAL_LEN);
    }

    #[test]
    fn a_record_moves_to_another_segment_by_refinishing_it() {
        let mut buf = vec![9u8; 5];
        put_compact(&mut buf, 1, 0, 2, 3);
        finish_record(&mut buf, 5, 2);
        let rec = buf.split_off(5);
        assert!(matches!(one(&rec, 2), Record::Compact { index: 2, .. }));
    }

    #[test]
    fn zeros_end_a_segment_and_damage_is_invalid() {
        assert_eq!(read_frame(&[0u8; 64], 0, 1), Frame::End);
        assert_eq!(read_frame(&[0u8; 3], 0, 1), Frame::End);
        assert_eq!(read_frame(&[], 0, 1), Frame::End);
        assert!(matches!(read_frame(&[1, 0, 0], 0, 1), Frame::Invalid(_)));
        let mut buf = Vec::new();
        put_compact(&mut buf, 1, 0, 2, 3);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(
                matches!(read_frame(&bad, 0, 1), Frame::Invalid(_)),
                "flipped byte {i}"
            );
        }
        // Cut short anywhere: never a record.
        for cut in 1..buf.len() {
            assert!(matches!(read_frame(&buf[..cut], 0, 1), Frame::Invalid(_)));
        }
    }

    #[test]
    fn headers_round_trip_and_check_themselves() {
        let h = Header { seq: 42, tag: 7 };
        let b = encode_header(h);
        assert_eq!(decode_header(&b), Ok(h));
        let mut bad = b;
        bad[20] ^= 1;
        assert_eq!(decode_header(&bad), Err(FormatError::Checksum));
        let mut other = b;
        other[0] = b'X';
        assert_eq!(decode_header(&other), Err(FormatError::BadMagic));
        assert_eq!(decode_header(&b[..10]), Err(FormatError::Truncated));
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_name(26), "000000000000001a.rlog");
        assert_eq!(parse_segment_name("000000000000001a.rlog"), Some(26));
        assert_eq!(parse_segment_name("000000000000001a.rlog.tmp"), None);
        assert_eq!(parse_segment_name("1a.rlog"), None);
        assert_eq!(parse_segment_name("0000000000000000.rlog"), None);
        assert_eq!(parse_segment_name("zzzzzzzzzzzzzzzz.rlog"), None);
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x1234_5678;
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_record(&bytes);
            let _ = decode_header(&bytes);
            let _ = read_frame(&bytes, 0, 1);
            for k in 1..=8u8 {
                let mut b = bytes.clone();
                b.insert(0, k);
                let _ = decode_record(&b);
            }
        }
    }
}
