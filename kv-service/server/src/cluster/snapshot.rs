//! The chunks of a shard snapshot (`RAFT_SNAPSHOT` requests), leader to follower.
//!
//! A snapshot is the shard's keys and values, streamed from the leader's engine in key
//! order, and raft-rs's `MsgSnapshot` (metadata: index, term, conf state; data: the client
//! sessions at that index) in the last chunk. Chunk `n + 1` is sent once chunk `n` was
//! answered OK: one chunk in flight per transfer.
//!
//! Chunk `n` covers the keys in `(end of chunk n - 1, end]` (chunk 0 from the smallest key;
//! the last chunk to the end of the key space): the follower writes the items and deletes
//! its own keys of the shard in that range that the chunk does not hold, so once the last
//! chunk is applied the shard holds exactly the leader's keys.
//!
//! ```text
//! 0       version (1)
//! 1..9    sender's node id (u64 LE)
//! 9..13   shard (u32 LE)
//! 13..21  transfer id (u64 LE; the sender's, unique per sender run)
//! 21..25  chunk number (u32 LE, from 0)
//! 25      flags: bit 0 = last
//! 26..30  item count (u32 LE)
//! not last: end key length (u32 LE), end key
//! items: key length (u32 LE), key, value length (u32 LE), value — in key order, ≤ end
//! last: message length (u32 LE), the eraftpb::Message (MsgSnapshot, protobuf)
//! ```
//!
//! Decoding is total: any bytes give a chunk or an error, never a panic.

use kv_raft::raft::eraftpb::Message;
use kv_raft::ShardId;
use protobuf::Message as _;

/// The chunk format version.
pub(crate) const CHUNK_VERSION: u8 = 1;
const FLAG_LAST: u8 = 1;

/// A decoded chunk.
#[derive(Debug, PartialEq)]
pub(crate) struct Chunk<'a> {
    pub(crate) from: u64,
    pub(crate) shard: ShardId,
    pub(crate) transfer: u64,
    pub(crate) seq: u32,
    /// Upper end (inclusive) of the key range this chunk covers; `None`: the last chunk, to
    /// the end of the key space.
    pub(crate) end: Option<&'a [u8]>,
    /// The items, in strictly increasing key order, each key ≤ `end`.
    pub(crate) items: Vec<(&'a [u8], &'a [u8])>,
    /// The last chunk's MsgSnapshot.
    pub(crate) msg: Option<Message>,
}

/// Why bytes are not a chunk.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    #[error("snapshot chunk version {0}; this build speaks {CHUNK_VERSION}")]
    Version(u8),
    #[error("snapshot chunk truncated")]
    Truncated,
    #[error("{0} bytes after a snapshot chunk")]
    Trailing(usize),
    #[error("snapshot chunk items out of order or past the chunk's end")]
    Order,
    #[error("snapshot chunk message: {0}")]
    BadMessage(String),
}

/// The header fields of a chunk being encoded.
pub(crate) struct ChunkHeader {
    pub(crate) from: u64,
    pub(crate) shard: ShardId,
    pub(crate) transfer: u64,
    pub(crate) seq: u32,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(b);
}

/// Encodes a chunk: `end` `None` with `msg` for the last one.
pub(crate) fn encode_chunk(
    h: &ChunkHeader,
    end: Option<&[u8]>,
    items: &[(Vec<u8>, Vec<u8>)],
    msg: Option<&Message>,
) -> Vec<u8> {
    let size: usize = items.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(64 + size + end.map_or(0, <[u8]>::len));
    out.push(CHUNK_VERSION);
    out.extend_from_slice(&h.from.to_le_bytes());
    out.extend_from_slice(&h.shard.to_le_bytes());
    out.extend_from_slice(&h.transfer.to_le_bytes());
    out.extend_from_slice(&h.seq.to_le_bytes());
    out.push(if end.is_none() { FLAG_LAST } else { 0 });
    out.extend_from_slice(&u32::try_from(items.len()).unwrap_or(u32::MAX).to_le_bytes());
    if let Some(e) = end {
        put_bytes(&mut out, e);
    }
    for (k, v) in items {
        put_bytes(&mut out, k);
        put_bytes(&mut out, v);
    }
    if end.is_none() {
        let m = msg
            .and_then(|m| m.write_to_bytes().ok())
            .unwrap_or_default();
        put_bytes(&mut out, &m);
    }
    out
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ChunkError> {
        if self.0.len() < n {
            return Err(ChunkError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ChunkError> {
        Ok(self.take(1)?.first().copied().unwrap_or(0))
    }
    fn u32(&mut self) -> Result<u32, ChunkError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, ChunkError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Result<&'a [u8], ChunkError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

/// Decodes a chunk, checking it whole (items in order and within the chunk's range).
pub(crate) fn decode_chunk(b: &[u8]) -> Result<Chunk<'_>, ChunkError> {
    let mut r = Reader(b);
    let v = r.u8()?;
    if v != CHUNK_VERSION {
        return Err(ChunkError::Version(v));
    }
    let from = r.u64()?;
    let shard = r.u32()?;
    let transfer = r.u64()?;
    let seq = r.u32()?;
    let last = r.u8()? & FLAG_LAST != 0;
    let count = r.u32()? as usize;
    let end = if last { None } else { Some(r.bytes()?) };
    if count > r.0.len() / 8 {
        return Err(ChunkError::Truncated);
    }
    let mut items: Vec<(&[u8], &[u8])> = Vec::with_capacity(count);
    for _ in 0..count {
        let k = r.bytes()?;
        let v = r.bytes()?;
        if items.last().is_some_and(|(p, _)| *p >= k) || end.is_some_and(|e| k > e) {
            return Err(ChunkError::Order);
        }
        items.push((k, v));
    }
    let msg = if last {
        let m = r.bytes()?;
        Some(Message::parse_from_bytes(m).map_err(|e| ChunkError::BadMessage(e.to_string()))?)
    } else {
        None
    };
    if !r.0.is_empty() {
        return Err(ChunkError::Trailing(r.0.len()));
    }
    Ok(Chunk {
        from,
        shard,
        transfer,
        seq,
        end,
        items,
        msg,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use kv_raft::raft::eraftpb::MessageType;

    fn header(seq: u32) -> ChunkHeader {
        ChunkHeader {
            from: 2,
            shard: 5,
            transfer: 9,
            seq,
        }
    }

    #[test]
    fn chunks_round_trip_and_any_prefix_or_garbage_is_an_error() {
        let items = vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), Vec::new())];
        let mid = encode_chunk(&header(0), Some(b"c"), &items, None);
        let c = decode_chunk(&mid).unwrap();
        assert_eq!((c.from, c.shard, c.transfer, c.seq), (2, 5, 9, 0));
        assert_eq!(c.end, Some(&b"c"[..]));
        assert_eq!(c.items, vec![(&b"a"[..], &b"1"[..]), (&b"b"[..], &b""[..])]);
        assert!(c.msg.is_none());
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgSnapshot);
        m.to = 3;
        let last = encode_chunk(&header(1), None, &[], Some(&m));
        let c = decode_chunk(&last).unwrap();
        assert_eq!(c.end, None);
        assert_eq!(c.msg.as_ref().map(|m| m.to), Some(3));
        for bytes in [&mid, &last] {
            for cut in 0..bytes.len() {
                assert!(decode_chunk(&bytes[..cut]).is_err(), "prefix {cut}");
            }
        }
        // Out of order, or past the end.
        let bad = vec![(b"b".to_vec(), Vec::new()), (b"a".to_vec(), Vec::new())];
        let e = encode_chunk(&header(0), Some(b"z"), &bad, None);
        assert_eq!(decode_chunk(&e), Err(ChunkError::Order));
        let e = encode_chunk(&header(0), Some(b"a"), &items, None);
        assert_eq!(decode_chunk(&e), Err(ChunkError::Order));
        let mut x: u64 = 7;
        for len in 0..300 {
            let mut b: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_chunk(&b);
            if let Some(f) = b.first_mut() {
                *f = CHUNK_VERSION;
            }
            let _ = decode_chunk(&b);
        }
    }
}
