//! `kv_raft::wire::decode_batch`: a batch of Raft messages as received from a peer thread.
//!
//! Properties: never panics; Ok(batch) ⇒ encoding it again decodes to the same batch (the
//! protobuf bytes need not be identical: unknown fields and field order may differ).
#![no_main]

use kv_raft::wire::{decode_batch, encode_batch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((from, msgs)) = decode_batch(data) else {
        return;
    };
    let mut again = Vec::new();
    encode_batch(from, msgs.iter().map(|(s, m)| (*s, m)), &mut again);
    let (from2, msgs2) = decode_batch(&again).expect("a re-encoded batch decodes");
    assert_eq!(from, from2);
    assert_eq!(msgs.len(), msgs2.len());
    for ((s1, m1), (s2, m2)) in msgs.iter().zip(&msgs2) {
        assert_eq!(s1, s2);
        assert_eq!(m1.get_msg_type(), m2.get_msg_type());
        assert_eq!((m1.to, m1.from, m1.term, m1.index), (m2.to, m2.from, m2.term, m2.index));
        assert_eq!(m1.entries.len(), m2.entries.len());
    }
});
