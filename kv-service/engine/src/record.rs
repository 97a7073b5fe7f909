//! The on-disk record format (see `docs/STORAGE.md`).
//!
//! ```text
//! offset size field
//!      0    4 crc32c     CRC32C (Castagnoli) of bytes 4 .. 20 + key_len + value_len, little endian
//!      4    1 flags      bit 0 = tombstone; bits 1..7 must be zero
//!      5    1 reserved   must be zero
//!      6    2 key_len    u16 little endian (0 for a tombstone)
//!      8    4 value_len  u32 little endian (0 for a tombstone)
//!     12    8 sequence   u64 little endian, per worker, strictly increasing, never 0
//!     20    . key        key_len bytes
//!      .    . value      value_len bytes
//! ```
//!
//! A slot whose 20 header bytes are all zero is empty. Anything else that does not decode
//! (bad checksum, reserved bits, lengths that overflow the slot) is corrupt and is treated
//! as a free slot by recovery; it is never returned to a reader.
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

/// Length of the record header in bytes.
pub const HEADER_LEN: usize = 20;
/// Offset of the CRC32C field.
pub const OFF_CRC: usize = 0;
/// Offset of the flags byte.
pub const OFF_FLAGS: usize = 4;
/// Offset of the reserved byte.
pub const OFF_RESERVED: usize = 5;
/// Offset of the key length (u16 LE).
pub const OFF_KEY_LEN: usize = 6;
/// Offset of the value length (u32 LE).
pub const OFF_VALUE_LEN: usize = 8;
/// Offset of the sequence number (u64 LE).
pub const OFF_SEQ: usize = 12;
/// Flag bit marking a tombstone (a deleted slot).
pub const FLAG_TOMBSTONE: u8 = 1;

/// Bytes a record with this key and value occupies.
pub fn encoded_len(key_len: usize, value_len: usize) -> usize {
    HEADER_LEN + key_len + value_len
}

/// A decoded slot.
#[derive(Debug, PartialEq, Eq)]
pub enum Slot<'a> {
    /// All-zero header: never written (or zeroed).
    Empty,
    /// A live item.
    Live {
        /// Its sequence number.
        seq: u64,
        /// Its key.
        key: &'a [u8],
        /// Its value.
        value: &'a [u8],
    },
    /// A deleted slot.
    Tombstone {
        /// Sequence number of the delete.
        seq: u64,
    },
    /// Checksum mismatch or malformed header: treated as free, never returned.
    Corrupt,
}

/// Writes a live record into the start of `slot` and zeroes the rest of it.
///
/// Returns `None` (and writes nothing) if `slot` is too small or a length does not fit its
/// field; the engine checks sizes before calling, so that is a bug guard, not a code path.
pub fn encode_live(slot: &mut [u8], seq: u64, key: &[u8], value: &[u8]) -> Option<usize> {
    let len = encoded_len(key.len(), value.len());
    let key_len = u16::try_from(key.len()).ok()?;
    let value_len = u32::try_from(value.len()).ok()?;
    if slot.len() < len {
        return None;
    }
    let (rec, rest) = slot.split_at_mut(len);
    write_header(rec, 0, key_len, value_len, seq)?;
    put(rec, HEADER_LEN, key)?;
    put(rec, HEADER_LEN + key.len(), value)?;
    seal(rec)?;
    rest.fill(0);
    Some(len)
}

/// Writes a tombstone into the start of `slot` and zeroes the rest of it.
pub fn encode_tombstone(slot: &mut [u8], seq: u64) -> Option<usize> {
    if slot.len() < HEADER_LEN {
        return None;
    }
    let (rec, rest) = slot.split_at_mut(HEADER_LEN);
    write_header(rec, FLAG_TOMBSTONE, 0, 0, seq)?;
    seal(rec)?;
    rest.fill(0);
    Some(HEADER_LEN)
}

/// Copies `bytes` to `rec` at `off`; `None` if they do not fit (callers size `rec` first).
fn put(rec: &mut [u8], off: usize, bytes: &[u8]) -> Option<()> {
    rec.get_mut(off..off.checked_add(bytes.len())?)?
        .copy_from_slice(bytes);
    Some(())
}

fn write_header(rec: &mut [u8], flags: u8, key_len: u16, value_len: u32, seq: u64) -> Option<()> {
    put(rec, OFF_FLAGS, &[flags])?;
    put(rec, OFF_RESERVED, &[0])?;
    put(rec, OFF_KEY_LEN, &key_len.to_le_bytes())?;
    put(rec, OFF_VALUE_LEN, &value_len.to_le_bytes())?;
    put(rec, OFF_SEQ, &seq.to_le_bytes())
}

fn seal(rec: &mut [u8]) -> Option<()> {
    let crc = crc32c::crc32c(rec.get(OFF_FLAGS..)?);
    put(rec, OFF_CRC, &crc.to_le_bytes())
}

fn le_u16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// Decodes the record at the start of `slot` (the whole slot, as read from disk).
/// Never panics, whatever the bytes.
pub fn decode(slot: &[u8]) -> Slot<'_> {
    decode_checked(slot, true)
}

/// [`decode`] without the checksum, for a slot whose record already passed it and has not
/// changed since. Every other check stays, so this never panics either and never returns a
/// key or value reaching outside the record's bounds.
pub fn decode_verified(slot: &[u8]) -> Slot<'_> {
    decode_checked(slot, false)
}

fn decode_checked(slot: &[u8], check_crc: bool) -> Slot<'_> {
    let Some(header) = slot.get(..HEADER_LEN) else {
        return Slot::Corrupt;
    };
    if header.iter().all(|&b| b == 0) {
        return Slot::Empty;
    }
    decode_nonempty(slot, check_crc).unwrap_or(Slot::Corrupt)
}

fn decode_nonempty(slot: &[u8], check_crc: bool) -> Option<Slot<'_>> {
    let crc = le_u32(slot, OFF_CRC)?;
    let flags = *slot.get(OFF_FLAGS)?;
    let reserved = *slot.get(OFF_RESERVED)?;
    let key_len = usize::from(le_u16(slot, OFF_KEY_LEN)?);
    let value_len = usize::try_from(le_u32(slot, OFF_VALUE_LEN)?).ok()?;
    let seq = le_u64(slot, OFF_SEQ)?;
    if reserved != 0 || flags & !FLAG_TOMBSTONE != 0 || seq == 0 {
        return None;
    }
    let tombstone = flags & FLAG_TOMBSTONE != 0;
    if tombstone && (key_len != 0 || value_len != 0) {
        return None;
    }
    // A record the engine could never have written (found by fuzzing): not a valid item.
    if key_len > crate::slab::MAX_KEY_LEN || value_len > crate::slab::MAX_VALUE_LEN {
        return None;
    }
    let end = HEADER_LEN.checked_add(key_len)?.checked_add(value_len)?;
    let rec = slot.get(..end)?;
    if check_crc && crc32c::crc32c(rec.get(OFF_FLAGS..)?) != crc {
        return None;
    }
    if tombstone {
        return Some(Slot::Tombstone { seq });
    }
    let key = rec.get(HEADER_LEN..HEADER_LEN + key_len)?;
    let value = rec.get(HEADER_LEN + key_len..)?;
    Some(Slot::Live { seq, key, value })
}

/// Reads just the sequence number of a slot (0 if the slot does not decode).
pub fn sequence_of(slot: &[u8]) -> u64 {
    match decode(slot) {
        Slot::Live { seq, .. } | Slot::Tombstone { seq } => seq,
        Slot::Empty | Slot::Corrupt => 0,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn records_over_the_size_limits_are_not_items() {
        // A record with a valid CRC but a key longer than the engine allows: not an item.
        let key = vec![b'k'; crate::slab::MAX_KEY_LEN + 1];
        let mut slot = vec![0u8; 4096];
        assert!(encode_live(&mut slot, 1, &key, b"v").is_some());
        assert!(!matches!(decode(&slot), Slot::Live { .. }));
    }

    /// The byte layout documented in `docs/STORAGE.md`, frozen.
    #[test]
    fn golden_bytes_live() {
        let mut slot = [0xAAu8; 32];
        let n = encode_live(&mut slot, 0x0102_0304_0506_0708, b"key", b"value");
        assert_eq!(n, Some(28));
        let expected_header: [u8; 20] = {
            let mut h = [0u8; 20];
            h[4] = 0; // flags
            h[5] = 0; // reserved
            h[6..8].copy_from_slice(&3u16.to_le_bytes());
            h[8..12].copy_from_slice(&5u32.to_le_bytes());
            h[12..20].copy_from_slice(&[0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01]);
            h
        };
        assert_eq!(&slot[4..20], &expected_header[4..20]);
        assert_eq!(&slot[20..23], b"key");
        assert_eq!(&slot[23..28], b"value");
        assert_eq!(&slot[28..], &[0, 0, 0, 0], "rest of the slot is zeroed");
        // CRC32C of bytes 4..28, stored little endian (0x44a2_5e71, checked independently).
        let crc = crc32c::crc32c(&slot[4..28]);
        assert_eq!(&slot[0..4], &crc.to_le_bytes());
        assert_eq!(
            slot[..28],
            [
                0x71, 0x5e, 0xa2, 0x44, 0x00, 0x00, 0x03, 0x00, 0x05, 0x00, 0x00, 0x00, 0x08, 0x07,
                0x06, 0x05, 0x04, 0x03, 0x02, 0x01, b'k', b'e', b'y', b'v', b'a', b'l', b'u', b'e'
            ]
        );
        assert_eq!(
            decode(&slot),
            Slot::Live {
                seq: 0x0102_0304_0506_0708,
                key: b"key",
                value: b"value"
            }
        );
    }

    #[test]
    fn tombstone_and_empty() {
        let mut slot = [0u8; 100];
        assert_eq!(decode(&slot), Slot::Empty);
        assert_eq!(encode_tombstone(&mut slot, 9), Some(HEADER_LEN));
        assert_eq!(slot[OFF_FLAGS], FLAG_TOMBSTONE);
        assert_eq!(decode(&slot), Slot::Tombstone { seq: 9 });
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut slot = [0u8; 64];
        encode_live(&mut slot, 7, b"abc", b"0123456789").unwrap_or_default();
        let len = encoded_len(3, 10);
        for byte in 0..len {
            for bit in 0..8 {
                let mut s = slot;
                s[byte] ^= 1 << bit;
                assert!(
                    !matches!(decode(&s), Slot::Live { .. }),
                    "flip at {byte}:{bit} not detected"
                );
            }
        }
    }

    #[test]
    fn garbage_never_panics() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..200usize {
            let mut buf = vec![0u8; len];
            for b in &mut buf {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = x as u8;
            }
            let _ = decode(&buf);
            let _ = decode_verified(&buf);
        }
        assert_eq!(decode(&[0u8; 5]), Slot::Corrupt, "short slot");
        assert_eq!(decode_verified(&[0u8; 5]), Slot::Corrupt, "short slot");
    }

    #[test]
    fn decode_verified_skips_only_the_checksum() {
        let mut slot = [0u8; 128];
        let n = encode_live(&mut slot, 7, b"key", b"value");
        assert!(n.is_some());
        assert_eq!(
            decode_verified(&slot),
            decode(&slot),
            "a sound record reads the same"
        );
        let mut bad_crc = slot;
        bad_crc[OFF_CRC] ^= 1;
        assert_eq!(decode(&bad_crc), Slot::Corrupt);
        assert!(matches!(
            decode_verified(&bad_crc),
            Slot::Live { seq: 7, .. }
        ));
        let mut bad_len = slot;
        bad_len[OFF_KEY_LEN] = 0xff;
        bad_len[OFF_KEY_LEN + 1] = 0xff;
        assert_eq!(
            decode_verified(&bad_len),
            Slot::Corrupt,
            "bounds are still checked"
        );
        assert_eq!(decode_verified(&[0u8; 128]), Slot::Empty);
    }
}
