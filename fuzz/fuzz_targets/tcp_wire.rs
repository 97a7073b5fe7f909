//! `transports::tcp::wire`: the TCP transport's handshake frames, data frame headers and
//! routing info (all read from the network: a connection's first frame, every frame header,
//! and the routing info inside an SM connect).
//!
//! Properties: never panics; a handshake payload that parses re-emits byte for byte (with the
//! length prefix `check_len` accepts); routing info that decodes re-encodes to the same bytes
//! and names a routable address; `data_len` accepts exactly 1..=max.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transports::tcp::wire::{data_len, Handshake, Ident, LEN_BYTES};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = Handshake::parse(data) {
        let frame = h.to_vec();
        assert_eq!(&frame[LEN_BYTES..], data);
        let prefix: [u8; LEN_BYTES] = frame[..LEN_BYTES].try_into().unwrap();
        assert_eq!(Handshake::check_len(prefix), Ok(data.len()));
    }
    if let Ok(id) = Ident::decode(data) {
        assert_ne!(id.addr.port(), 0);
        assert!(!id.addr.ip().is_unspecified() && !id.addr.ip().is_multicast());
        assert_eq!(id.routing_info().as_bytes(), data);
    }
    if let Some((&max_byte, rest)) = data.split_first() {
        let max = usize::from(max_byte) * 257 + 1;
        match data_len(rest, max) {
            Ok(Some(len)) => assert!((1..=max).contains(&len)),
            Ok(None) => assert!(rest.len() < LEN_BYTES),
            Err(_) => {
                let len = u32::from_le_bytes(rest[..LEN_BYTES].try_into().unwrap()) as usize;
                assert!(len == 0 || len > max);
            }
        }
    }
});
