//! `rpc::pkthdr::PktHdr::parse`: the 32-byte datapath header of every received packet.
//!
//! Properties: never panics; Ok ⇒ re-encoding the parsed info gives exactly the first 32
//! input bytes, and the payload is the rest of the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rpc::pkthdr::{PktHdr, PktType, HDR_SIZE};

fuzz_target!(|data: &[u8]| {
    if let Ok((info, payload)) = PktHdr::parse(data) {
        assert!(data.len() >= HDR_SIZE);
        assert_eq!(PktHdr::new(&info).as_bytes(), &data[..HDR_SIZE]);
        assert_eq!(payload, &data[HDR_SIZE..]);
        // Only responses may carry a status.
        if info.pkt_type != PktType::Resp {
            assert_eq!(info.status, 0);
        }
    }
});
