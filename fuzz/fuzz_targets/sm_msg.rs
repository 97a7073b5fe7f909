//! `rpc::sm::SmMsg::parse`: the 128-byte session-management message (from the SM UDP socket).
//!
//! Input: byte 0 is a mode, the rest is the message. Mode bit 0: set the magic (`"SM"`) and
//! version; bit 1: zero `reserved` and `reserved2`. (Without them libFuzzer does not get past
//! the merged magic+version compare: 48 M runs of the raw form stayed at the length check.)
//!
//! Properties: never panics; Ok(m) ⇒ `parse(encode(m)) == Ok(m)`, and `encode(m)` equals the
//! input byte for byte except the routing bytes past `routing_len` (the encoder zero-pads
//! them; the parser does not check the padding); the same holds for `m.reply(..)`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc::sm::{SmMsg, SM_MSG_SIZE};

/// Offsets in the wire layout (see `docs/PROTOCOL.md`).
const ROUTING_OFF: usize = 52;
const RESERVED_OFF: usize = 49;
const RESERVED2_OFF: usize = 116;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, msg)) = data.split_first() else {
        return;
    };
    let mut msg = msg.to_vec();
    if msg.len() == SM_MSG_SIZE {
        if mode & 1 != 0 {
            msg[..3].copy_from_slice(b"SM\x01");
        }
        if mode & 2 != 0 {
            msg[RESERVED_OFF..RESERVED_OFF + 3].fill(0);
            msg[RESERVED2_OFF..].fill(0);
        }
    }
    let Ok(m) = SmMsg::parse(&msg) else {
        return;
    };
    let enc = m.encode();
    assert_eq!(SmMsg::parse(&enc), Ok(m));
    let used = ROUTING_OFF + m.routing.as_bytes().len();
    assert_eq!(&enc[..used], &msg[..used]);
    assert_eq!(&enc[ROUTING_OFF + 64..], &msg[ROUTING_OFF + 64..]);
    // The reply of a message is a message too.
    let r = m.reply(m.status);
    assert_eq!(SmMsg::parse(&r.encode()), Ok(r));
    let _ = m.dest_rpc();
    let _ = r.dest_rpc();
});
