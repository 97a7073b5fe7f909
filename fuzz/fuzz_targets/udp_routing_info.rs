//! `transports::udp::UdpTransport::decode_routing_info`: the peer address carried in the
//! `routing` field of an SM connect message (network input, resolved by the server).
//!
//! Properties: never panics; Ok(addr) ⇒ the address is routable (port ≠ 0, not unspecified or
//! multicast) and `encode_routing_info(addr)` gives back the input bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use transports::udp::UdpTransport;
use transports::RoutingInfo;

fuzz_target!(|data: &[u8]| {
    let Some(info) = RoutingInfo::new(data) else {
        assert!(data.len() > transports::ROUTING_INFO_MAX);
        return;
    };
    assert_eq!(info.as_bytes(), data);
    if let Ok(addr) = UdpTransport::decode_routing_info(&info) {
        assert_ne!(addr.port(), 0);
        assert!(!addr.ip().is_unspecified() && !addr.ip().is_multicast());
        assert_eq!(UdpTransport::encode_routing_info(addr).as_bytes(), data);
    }
});
