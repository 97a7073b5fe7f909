//! `kv_proto::parse_batch`: every BATCH message the server receives.
//!
//! Properties: never panics; Ok(batch) ⇒ it holds 1..=MAX_BATCH GET / PUT / DELETE entries,
//! each entry's bytes are exactly its own encoding, and building a BATCH from the parsed
//! entries gives back the message byte for byte.
#![no_main]

use kv_proto::{
    append_request, begin_batch, encode_request, finish_batch, parse_batch, Op, Request, MAX_BATCH,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = parse_batch(data) else {
        return;
    };
    let n = batch.len();
    assert!(n >= 1 && n <= MAX_BATCH as usize);
    let mut out = Vec::new();
    begin_batch(&mut out);
    let mut one = Vec::new();
    let mut seen = 0;
    for (r, raw) in batch {
        assert!(matches!(
            r,
            Request::Op(Op::Get { .. } | Op::Put { .. } | Op::Delete { .. })
        ));
        encode_request(&r, &mut one);
        assert_eq!(raw, &one[..]);
        append_request(&r, &mut out);
        seen += 1;
    }
    assert_eq!(seen, n);
    finish_batch(&mut out, n as u32);
    assert_eq!(out, data);
});
