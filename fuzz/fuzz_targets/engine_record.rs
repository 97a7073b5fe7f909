//! `kv_engine::record::decode`: a slab slot as read from disk (recovery and reads).
//! (`decode_nonempty`, the helper behind it, is private; `decode` and `sequence_of` are the
//! public entry points and cover it entirely.)
//!
//! Input: byte 0 is a mode, the rest is the slot. Mode bit 0 set: the CRC field (bytes 0..4)
//! is recomputed over the record the header describes before decoding, so the fuzzer gets
//! past the checksum and exercises the length/flag logic behind it.
//!
//! Properties: never panics; `Live`/`Tombstone` ⇒ encoding the decoded record into a slot
//! of the same size reproduces the record bytes (the slot tail after the record is not
//! covered by the checksum, so it is not compared), and `sequence_of` agrees; `Empty` ⇔ the
//! 20 header bytes are zero; a slot shorter than the header is `Corrupt`.
#![no_main]

use kv_engine::record::{
    decode, encode_live, encode_tombstone, encoded_len, sequence_of, Slot, HEADER_LEN, OFF_FLAGS,
    OFF_KEY_LEN, OFF_VALUE_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, slot)) = data.split_first() else {
        return;
    };
    let mut slot = slot.to_vec();
    if mode & 1 != 0 && slot.len() >= HEADER_LEN {
        let kl = u16::from_le_bytes([slot[OFF_KEY_LEN], slot[OFF_KEY_LEN + 1]]) as usize;
        let vl =
            u32::from_le_bytes(slot[OFF_VALUE_LEN..OFF_VALUE_LEN + 4].try_into().unwrap()) as usize;
        let end = HEADER_LEN + kl + vl;
        if end <= slot.len() {
            let crc = crc32c(&slot[OFF_FLAGS..end]);
            slot[..4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let slot = &slot[..];
    let d = decode(slot);
    match d {
        Slot::Empty => {
            assert!(slot.len() >= HEADER_LEN && slot[..HEADER_LEN].iter().all(|&b| b == 0));
            assert_eq!(sequence_of(slot), 0);
        }
        Slot::Corrupt => {
            if slot.len() >= HEADER_LEN {
                assert!(slot[..HEADER_LEN].iter().any(|&b| b != 0));
            }
            assert_eq!(sequence_of(slot), 0);
        }
        Slot::Live { seq, key, value } => {
            assert_ne!(seq, 0);
            let n = encoded_len(key.len(), value.len());
            assert!(n <= slot.len());
            let mut again = vec![0xA5u8; slot.len()];
            assert_eq!(encode_live(&mut again, seq, key, value), Some(n));
            assert_eq!(&again[..n], &slot[..n]);
            assert_eq!(sequence_of(slot), seq);
            assert_eq!(decode(&again), Slot::Live { seq, key, value });
        }
        Slot::Tombstone { seq } => {
            assert_ne!(seq, 0);
            let mut again = vec![0xA5u8; slot.len()];
            assert_eq!(encode_tombstone(&mut again, seq), Some(HEADER_LEN));
            assert_eq!(&again[..HEADER_LEN], &slot[..HEADER_LEN]);
            assert_eq!(sequence_of(slot), seq);
        }
    }
});

/// CRC32C (Castagnoli), bitwise, independent of the engine's `crc32c` crate.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}
