//! `kv_proto::parse_scan_items(body, count)`: the items of a SCAN response.
//!
//! Input: bytes 0..4 are `count` (u32 LE), the rest is the body.
//! Properties: never panics; Ok(items) ⇒ `items.len() == count`, every item is within the
//! key and value limits, and re-encoding the items with `encode_scan_item` gives back the
//! body byte for byte (and `scan_item_len` adds up to its length).
#![no_main]

use kv_proto::{MAX_KEY_LEN, MAX_VALUE_LEN};
use kv_proto::{encode_scan_item, parse_scan_items, scan_item_len};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (c, body) = data.split_at(4);
    let count = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    let Ok(items) = parse_scan_items(body, count) else {
        return;
    };
    assert_eq!(items.len() as u64, u64::from(count));
    let mut out = Vec::new();
    let mut total = 0;
    for (k, v) in &items {
        assert!(k.len() <= MAX_KEY_LEN && v.len() <= MAX_VALUE_LEN);
        encode_scan_item(k, v, &mut out);
        total += scan_item_len(k, v);
    }
    assert_eq!(out, body);
    assert_eq!(total, body.len());
});
