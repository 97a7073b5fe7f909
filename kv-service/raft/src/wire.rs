//! Raft messages between server threads: one rpc request carries every message one loop
//! iteration has for the replicas on one peer thread.
//!
//! ```text
//! batch
//!   0       version (1)
//!   1..9    sender's node id (u64 LE)
//!   9..13   message count (u32 LE)
//!   then per message: shard (u32 LE), length (u32 LE), the eraftpb::Message (protobuf)
//! ```
//!
//! Decoding is total: any bytes give a batch or an error, never a panic; a batch is checked
//! whole before any of it is used.

use protobuf::Message as _;
use raft::eraftpb::Message;

use crate::format::ShardId;

/// The batch format version.
pub const BATCH_VERSION: u8 = 1;

/// Bytes of a batch's header.
pub const BATCH_HEADER: usize = 13;

/// Bytes each message adds besides its protobuf encoding.
pub const PER_MESSAGE: usize = 8;

/// Why bytes are not a batch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Another version.
    #[error("raft batch version {0}; this build speaks {BATCH_VERSION}")]
    Version(u8),
    /// The bytes end inside the batch.
    #[error("raft batch truncated")]
    Truncated,
    /// Bytes after the last message.
    #[error("{0} bytes after a raft batch")]
    Trailing(usize),
    /// A message does not parse.
    #[error("raft message {index} of the batch: {reason}")]
    BadMessage {
        /// Its position in the batch.
        index: usize,
        /// The protobuf error.
        reason: String,
    },
}

/// Appends a batch of `msgs` from node `from` to `out`.
pub fn encode_batch<'a>(
    from: u64,
    msgs: impl ExactSizeIterator<Item = (ShardId, &'a Message)>,
    out: &mut Vec<u8>,
) {
    out.push(BATCH_VERSION);
    out.extend_from_slice(&from.to_le_bytes());
    out.extend_from_slice(&u32::try_from(msgs.len()).unwrap_or(u32::MAX).to_le_bytes());
    for (shard, m) in msgs {
        out.extend_from_slice(&shard.to_le_bytes());
        let len_at = out.len();
        out.extend_from_slice(&[0; 4]);
        // Writing a message to a Vec cannot fail.
        let _ = m.write_to_vec(out);
        let len = u32::try_from(out.len() - len_at - 4).unwrap_or(u32::MAX);
        if let Some(dst) = out.get_mut(len_at..len_at + 4) {
            dst.copy_from_slice(&len.to_le_bytes());
        }
    }
}

/// The encoded size of one message in a batch.
pub fn message_size(m: &Message) -> usize {
    PER_MESSAGE + m.compute_size() as usize
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], WireError> {
    if b.len() < n {
        return Err(WireError::Truncated);
    }
    let (a, rest) = b.split_at(n);
    *b = rest;
    Ok(a)
}

fn u32_of(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(b.get(..4).unwrap_or(&[0; 4]));
    u32::from_le_bytes(a)
}

/// Decodes a batch: the sender's node id and its messages.
pub fn decode_batch(bytes: &[u8]) -> Result<(u64, Vec<(ShardId, Message)>), WireError> {
    let mut b = bytes;
    let version = take(&mut b, 1)?.first().copied().unwrap_or(0);
    if version != BATCH_VERSION {
        return Err(WireError::Version(version));
    }
    let mut from = [0u8; 8];
    from.copy_from_slice(take(&mut b, 8)?);
    let count = u32_of(take(&mut b, 4)?) as usize;
    if count > b.len() / PER_MESSAGE {
        return Err(WireError::Truncated);
    }
    let mut msgs = Vec::with_capacity(count);
    for index in 0..count {
        let shard = u32_of(take(&mut b, 4)?);
        let len = u32_of(take(&mut b, 4)?) as usize;
        let body = take(&mut b, len)?;
        let m = Message::parse_from_bytes(body).map_err(|e| WireError::BadMessage {
            index,
            reason: e.to_string(),
        })?;
        msgs.push((shard, m));
    }
    if !b.is_empty() {
        return Err(WireError::Trailing(b.len()));
    }
    Ok((u64::from_le_bytes(from), msgs))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use raft::eraftpb::{Entry, MessageType};

    fn msg(to: u64, n: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgAppend);
        m.to = to;
        m.from = 1;
        m.term = 3;
        m.index = n;
        m.entries = (0..n)
            .map(|i| Entry {
                index: i,
                term: 3,
                data: Bytes::from(vec![i as u8; 10]),
                ..Entry::default()
            })
            .collect::<Vec<_>>()
            .into();
        m
    }

    #[test]
    fn batches_round_trip() {
        let msgs = [(4u32, msg(2, 0)), (9, msg(2, 3)), (4, msg(2, 1))];
        let mut out = Vec::new();
        encode_batch(1, msgs.iter().map(|(s, m)| (*s, m)), &mut out);
        let expected: usize =
            BATCH_HEADER + msgs.iter().map(|(_, m)| message_size(m)).sum::<usize>();
        assert_eq!(out.len(), expected);
        let (from, got) = decode_batch(&out).unwrap();
        assert_eq!(from, 1);
        assert_eq!(got, msgs.to_vec());
        // Empty batch.
        let mut out = Vec::new();
        encode_batch(7, std::iter::empty(), &mut out);
        assert_eq!(decode_batch(&out).unwrap(), (7, vec![]));
    }

    #[test]
    fn damage_is_an_error() {
        let msgs = [(4u32, msg(2, 2))];
        let mut out = Vec::new();
        encode_batch(1, msgs.iter().map(|(s, m)| (*s, m)), &mut out);
        for cut in 0..out.len() {
            assert!(decode_batch(&out[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = out.clone();
        extra.push(0);
        assert_eq!(decode_batch(&extra), Err(WireError::Trailing(1)));
        let mut v2 = out.clone();
        v2[0] = 2;
        assert_eq!(decode_batch(&v2), Err(WireError::Version(2)));
        // Flipped bytes anywhere: an error or another valid batch, never a panic.
        for i in 0..out.len() {
            for bit in [0x01, 0x80] {
                let mut bad = out.clone();
                bad[i] ^= bit;
                let _ = decode_batch(&bad);
            }
        }
        let mut x: u64 = 99;
        for len in 0..300 {
            let mut junk = vec![BATCH_VERSION];
            junk.extend((0..len).map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            }));
            let _ = decode_batch(&junk);
        }
    }
}
