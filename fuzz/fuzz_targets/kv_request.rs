//! `kv_proto::parse_request(req_type, data)`: every KV request the server receives.
//!
//! Input: byte 0 is the rpc request type, the rest is the request message.
//! Properties: never panics; Ok(r) ⇒ `r.op() == req_type`, the limits hold, and
//! `encode_request(r)` gives back the message byte for byte. Err(e) ⇒ `e.status()` is an
//! error status.
#![no_main]

use kv_proto::{MAX_KEY_LEN, MAX_VALUE_LEN};
use kv_proto::{encode_request, parse_request, Op, Request, Status};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&req_type, msg)) = data.split_first() else {
        return;
    };
    match parse_request(req_type, msg) {
        Ok(r) => {
            assert_eq!(r.op(), req_type);
            assert_eq!(r.encoded_len(), msg.len());
            if let Some(k) = r.key() {
                assert!(k.len() <= MAX_KEY_LEN);
            }
            if let Request::Op(Op::Put { value, .. }) = r {
                assert!(value.len() <= MAX_VALUE_LEN);
            }
            let mut out = Vec::new();
            encode_request(&r, &mut out);
            assert_eq!(out, msg);
            assert_eq!(parse_request(req_type, &out), Ok(r));
        }
        Err(e) => {
            assert_ne!(e.status(), Status::Ok);
            let _ = e.to_string();
        }
    }
});
