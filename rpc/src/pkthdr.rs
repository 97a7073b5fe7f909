//! The datapath packet header: 32 bytes, versioned, defined with `bytemuck`.
//!
//! Byte layout (all integers little-endian; see `docs/PROTOCOL.md`):
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 1 | `magic` | [`MAGIC`] (`0xE7`); anything else is dropped |
//! | 1 | 1 | `version` | [`VERSION`] |
//! | 2 | 1 | `pkt_type` | [`PktType`] |
//! | 3 | 1 | `req_type` | the request type (handler id) |
//! | 4 | 4 | `dest_session` | session number at the receiver |
//! | 8 | 4 | `pkt_num` | packet number within the exchange (see below) |
//! | 12 | 4 | `msg_size` | size of the whole message this packet belongs to |
//! | 16 | 8 | `req_num` | request number (slot = `req_num % window`) |
//! | 24 | 4 | `token` | the receiver's session token |
//! | 28 | 1 | `status` | responses: [`RespStatus`]; 0 in other packets |
//! | 29 | 3 | `reserved` | must be zero |
//!
//! Packet numbers span the whole exchange: request packets are `0..N`, the credit return for
//! request packet `i` carries `i`, response packet `k` and the request-for-response that pulls it
//! both carry `N - 1 + k`.

use bytemuck::{Pod, Zeroable};

/// Size of the header in bytes.
pub const HDR_SIZE: usize = 32;
/// The first byte of every datapath packet.
pub const MAGIC: u8 = 0xE7;
/// The header version this crate speaks.
pub const VERSION: u8 = 1;

transports::wire_enum! {
    /// The kind of a datapath packet.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PktType {
        /// A request packet (client to server).
        Req = 1,
        /// A request-for-response: the client pulls response packet `k >= 1` (client to server).
        Rfr = 2,
        /// An explicit credit return for a non-final request packet (server to client).
        CreditReturn = 3,
        /// A response packet (server to client).
        Resp = 4,
    }
}

transports::wire_enum! {
    /// Status carried by response packets.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RespStatus {
        /// The handler produced the response.
        Ok = 0,
        /// No handler is registered for the request type.
        NoHandler = 1,
        /// The server could not accept the request right now (background queue full).
        Overloaded = 2,
        /// The handler's response was larger than the session allows.
        ResponseTooLarge = 3,
        /// The handler failed (panicked or dropped the request).
        HandlerFailed = 4,
    }
}

/// The raw 32-byte header as it sits on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct PktHdr {
    magic: u8,
    version: u8,
    pkt_type: u8,
    req_type: u8,
    dest_session: [u8; 4],
    pkt_num: [u8; 4],
    msg_size: [u8; 4],
    req_num: [u8; 8],
    token: [u8; 4],
    status: u8,
    reserved: [u8; 3],
}

const _: () = assert!(std::mem::size_of::<PktHdr>() == HDR_SIZE);

/// The parsed meaning of a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PktInfo {
    /// Packet type.
    pub pkt_type: PktType,
    /// Request type.
    pub req_type: u8,
    /// Receiver's session number.
    pub dest_session: u32,
    /// Packet number within the exchange.
    pub pkt_num: u32,
    /// Size of the message this packet belongs to.
    pub msg_size: u32,
    /// Request number.
    pub req_num: u64,
    /// The receiver's session token.
    pub token: u32,
    /// Response status (raw; validated for responses).
    pub status: u8,
}

/// Why a header was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HdrError {
    /// Fewer than [`HDR_SIZE`] bytes.
    #[error("packet shorter than the header")]
    Short,
    /// Wrong magic byte.
    #[error("bad magic")]
    Magic,
    /// Unsupported version.
    #[error("unsupported header version {0}")]
    Version(u8),
    /// Unknown packet type.
    #[error("unknown packet type {0}")]
    PktType(u8),
    /// Reserved bytes not zero, or a status in a non-response packet.
    #[error("reserved field not zero")]
    Reserved,
}

impl PktHdr {
    /// Encodes `info` into a header.
    pub fn new(info: &PktInfo) -> Self {
        Self {
            magic: MAGIC,
            version: VERSION,
            pkt_type: info.pkt_type as u8,
            req_type: info.req_type,
            dest_session: info.dest_session.to_le_bytes(),
            pkt_num: info.pkt_num.to_le_bytes(),
            msg_size: info.msg_size.to_le_bytes(),
            req_num: info.req_num.to_le_bytes(),
            token: info.token.to_le_bytes(),
            status: info.status,
            reserved: [0; 3],
        }
    }

    /// The header's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        bytemuck::bytes_of(self)
    }

    /// Parses and validates the header at the start of `pkt`; returns it with the payload.
    pub fn parse(pkt: &[u8]) -> Result<(PktInfo, &[u8]), HdrError> {
        let (head, payload) = pkt.split_at_checked(HDR_SIZE).ok_or(HdrError::Short)?;
        let h: PktHdr = bytemuck::pod_read_unaligned(head);
        if h.magic != MAGIC {
            return Err(HdrError::Magic);
        }
        if h.version != VERSION {
            return Err(HdrError::Version(h.version));
        }
        let pkt_type = PktType::from_u8(h.pkt_type).ok_or(HdrError::PktType(h.pkt_type))?;
        if h.reserved != [0; 3] || (pkt_type != PktType::Resp && h.status != 0) {
            return Err(HdrError::Reserved);
        }
        Ok((
            PktInfo {
                pkt_type,
                req_type: h.req_type,
                dest_session: u32::from_le_bytes(h.dest_session),
                pkt_num: u32::from_le_bytes(h.pkt_num),
                msg_size: u32::from_le_bytes(h.msg_size),
                req_num: u64::from_le_bytes(h.req_num),
                token: u32::from_le_bytes(h.token),
                status: h.status,
            },
            payload,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> PktInfo {
        PktInfo {
            pkt_type: PktType::Resp,
            req_type: 7,
            dest_session: 0x0102_0304,
            pkt_num: 5,
            msg_size: 8 << 20,
            req_num: 0x1122_3344_5566_7788,
            token: 0xdead_beef,
            status: RespStatus::NoHandler as u8,
        }
    }

    #[test]
    fn golden_bytes() {
        let h = PktHdr::new(&sample());
        let expect: [u8; 32] = [
            0xE7, 1, 4, 7, 0x04, 0x03, 0x02, 0x01, 5, 0, 0, 0, 0, 0, 0x80, 0, 0x88, 0x77, 0x66,
            0x55, 0x44, 0x33, 0x22, 0x11, 0xef, 0xbe, 0xad, 0xde, 1, 0, 0, 0,
        ];
        assert_eq!(h.as_bytes(), &expect);
    }

    #[test]
    fn roundtrip_with_payload() {
        let h = PktHdr::new(&sample());
        let mut pkt = h.as_bytes().to_vec();
        pkt.extend_from_slice(b"abc");
        let (info, payload) = PktHdr::parse(&pkt).unwrap();
        assert_eq!(info, sample());
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn rejects_bad_headers() {
        let good = PktHdr::new(&sample()).as_bytes().to_vec();
        assert_eq!(PktHdr::parse(&good[..31]), Err(HdrError::Short));
        let mut b = good.clone();
        b[0] = 0;
        assert_eq!(PktHdr::parse(&b), Err(HdrError::Magic));
        let mut b = good.clone();
        b[1] = 9;
        assert_eq!(PktHdr::parse(&b), Err(HdrError::Version(9)));
        let mut b = good.clone();
        b[2] = 0;
        assert_eq!(PktHdr::parse(&b), Err(HdrError::PktType(0)));
        let mut b = good.clone();
        b[31] = 1;
        assert_eq!(PktHdr::parse(&b), Err(HdrError::Reserved));
        let mut b = good;
        b[2] = PktType::Req as u8; // a status byte in a request is invalid
        assert_eq!(PktHdr::parse(&b), Err(HdrError::Reserved));
    }

    /// What a successful parse promises: the payload is everything after the header, and the
    /// header is canonical — the parsed fields encode back to exactly the bytes given.
    fn check_parse(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok((info, payload)) = PktHdr::parse(bytes) {
            prop_assert_eq!(payload.len(), bytes.len() - HDR_SIZE);
            let h = PktHdr::new(&info);
            prop_assert_eq!(h.as_bytes(), &bytes[..HDR_SIZE]);
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(testkit::proptest_config(256, "proptest-regressions/pkthdr.txt"))]

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            check_parse(&bytes)?;
        }

        /// Arbitrary bytes rarely get past the magic; one changed byte of a valid header
        /// reaches every field check.
        #[test]
        fn mutated_header_never_panics(idx in 0usize..HDR_SIZE, val in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut b = PktHdr::new(&sample()).as_bytes().to_vec();
            b[idx] = val;
            b.extend_from_slice(&payload);
            check_parse(&b)?;
        }
    }
}
