//! The data of a Raft log entry of the replicated service: one client write.
//!
//! ```text
//! version u8 (1) | op u8 (PUT / DELETE) | client u64 | seq u64 | first_unanswered u64
//! | key_len u32 | key | value
//! ```
//! Little-endian. Decoding is total: bytes that are not an entry give `None` (an entry the
//! leader's no-op of a new term left empty is not a write either).

use kv_proto::op;
use kv_raft::sessions::RequestId;

const VERSION: u8 = 1;
const FIXED: usize = 1 + 1 + 8 + 8 + 8 + 4;

/// A write as the log holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Write {
    /// [`op::PUT`] or [`op::DELETE`].
    pub(crate) op: u8,
    /// Its identity (`client == 0`: not de-duplicated).
    pub(crate) id: RequestId,
    pub(crate) key: Vec<u8>,
    /// PUT: the value (DELETE: empty).
    pub(crate) value: Vec<u8>,
}

/// Encodes a write.
pub(crate) fn encode(op: u8, id: &RequestId, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED + key.len() + value.len());
    out.push(VERSION);
    out.push(op);
    out.extend_from_slice(&id.client.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
    out.extend_from_slice(&id.first_unanswered.to_le_bytes());
    out.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    out
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Decodes an entry's data (`None`: not a write).
pub(crate) fn decode(b: &[u8]) -> Option<Write> {
    if b.first() != Some(&VERSION) {
        return None;
    }
    let op = *b.get(1)?;
    if op != op::PUT && op != op::DELETE {
        return None;
    }
    let id = RequestId {
        client: u64_at(b, 2)?,
        seq: u64_at(b, 10)?,
        first_unanswered: u64_at(b, 18)?,
    };
    let key_len = u32::from_le_bytes(b.get(26..30)?.try_into().ok()?) as usize;
    let key = b.get(FIXED..FIXED.checked_add(key_len)?)?.to_vec();
    let value = b.get(FIXED + key_len..)?.to_vec();
    if op == op::DELETE && !value.is_empty() {
        return None;
    }
    Some(Write { op, id, key, value })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_total_decoding() {
        let id = RequestId {
            client: 7,
            seq: 9,
            first_unanswered: 3,
        };
        let e = encode(op::PUT, &id, b"key", b"value");
        let w = decode(&e).unwrap();
        assert_eq!(
            (w.op, w.id, &w.key[..], &w.value[..]),
            (op::PUT, id, &b"key"[..], &b"value"[..])
        );
        let d = encode(op::DELETE, &id, b"k", b"");
        assert_eq!(decode(&d).unwrap().op, op::DELETE);
        // Every prefix of an entry and the empty no-op entry decode to nothing or to a
        // shorter value, never panic.
        for n in 0..e.len() {
            let _ = decode(&e[..n]);
        }
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&e[..FIXED - 1]), None);
        let mut bad = e.clone();
        bad[1] = op::GET;
        assert_eq!(decode(&bad), None);
    }
}
