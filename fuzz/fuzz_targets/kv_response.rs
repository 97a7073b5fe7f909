//! `kv_proto::parse_response`: every KV response the client receives, followed
//! by the body parsers the client applies to a successful response (SCAN items, INFO, STATS).
//!
//! Properties: never panics; Ok(r) ⇒ `encode_response(r)` parses back to `r` and equals the
//! input except the 4 reserved header bytes 12..16 (the parser does not check them);
//! the body is the input after the 16-byte header.
#![no_main]

use kv_proto::{
    encode_response, parse_batch_responses, parse_response, parse_scan_items, ServerInfo, ThreadStats, HDR_LEN,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = parse_response(data) else {
        return;
    };
    assert_eq!(r.body, &data[HDR_LEN..]);
    let mut out = Vec::new();
    encode_response(r.status, r.flags, r.count, r.body, &mut out);
    assert_eq!(out.len(), data.len());
    assert_eq!(&out[..12], &data[..12]);
    assert_eq!(&out[HDR_LEN..], &data[HDR_LEN..]);
    assert_eq!(parse_response(&out), Ok(r));
    let _ = r.message();
    // What the client does with the body: any of these may fail, none may panic.
    let _ = parse_scan_items(r.body, r.count);
    let _ = ServerInfo::parse(r.body);
    let _ = ThreadStats::parse(r.body);
    let _ = parse_batch_responses(r.body, r.count);
});
