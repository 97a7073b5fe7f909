//! The TCP transport's wire format: routing info, the handshake frames and the data frame
//! header. Pure functions over byte slices; nothing here can panic on any input (the lints
//! below make the compiler hold us to that).
//!
//! Every frame on a connection is `[len: u32 LE][len bytes]`. A connection starts with one
//! handshake frame each way ([`Handshake`]: the connecting side's `Hello`, the accepting side's
//! `Accept` or `Reject`); every later frame is one packet, `1..=max_pkt_size` bytes, where
//! `max_pkt_size` is the one the receiver announced in its handshake frame. `docs/PROTOCOL.md`
//! ("TCP transport framing") has the byte tables.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    clippy::arithmetic_side_effects
)]

use std::cmp::Ordering;
use std::net::SocketAddr;

use crate::{sockaddr, RoutingInfo, ROUTING_INFO_MAX};

/// Bytes of the length prefix of every frame.
pub const LEN_BYTES: usize = 4;
/// First four payload bytes of every handshake frame.
pub const MAGIC: [u8; 4] = [0xE7, b'T', b'C', b'P'];
/// The handshake format version this implementation speaks.
pub const VERSION: u8 = 1;
/// Payload bytes of a handshake frame before the sender's routing info.
pub const HANDSHAKE_FIXED: usize = 21;
/// Largest handshake payload (fixed part plus the longest routing info).
pub const HANDSHAKE_MAX: usize = HANDSHAKE_FIXED + ROUTING_INFO_MAX;
/// Bytes of the instance id that ends a TCP routing info.
pub const INSTANCE_BYTES: usize = 8;
/// Largest data frame payload (packet) the format allows: 16 MiB.
pub const MAX_FRAME: usize = 1 << 24;

/// A malformed routing info, handshake frame or frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed TCP transport frame: {0}")]
pub struct Malformed(pub &'static str);

/// Who an endpoint is: its listening address and the random instance id it drew at start-up
/// (a restarted process on the same address is another endpoint).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ident {
    /// The listening address.
    pub addr: SocketAddr,
    /// The instance id.
    pub instance: u64,
}

impl Ident {
    /// The routing info bytes: the address encoding (as UDP's) followed by the instance id
    /// (`u64` LE), 15 bytes for IPv4 and 31 for IPv6.
    pub fn encode(&self) -> ([u8; sockaddr::MAX_LEN + INSTANCE_BYTES], usize) {
        let mut out = [0u8; sockaddr::MAX_LEN + INSTANCE_BYTES];
        let (a, n) = sockaddr::encode(self.addr);
        let total = n.saturating_add(INSTANCE_BYTES);
        if let (Some(dst), Some(src)) = (out.get_mut(..n), a.get(..n)) {
            dst.copy_from_slice(src);
        }
        if let Some(dst) = out.get_mut(n..total) {
            dst.copy_from_slice(&self.instance.to_le_bytes());
        }
        (out, total)
    }

    /// As routing info.
    pub fn routing_info(&self) -> RoutingInfo {
        let (b, n) = self.encode();
        // At most 31 bytes: always fits ROUTING_INFO_MAX.
        b.get(..n)
            .and_then(RoutingInfo::new)
            .unwrap_or_else(|| RoutingInfo::new(&[]).unwrap_or_else(|| unreachable!()))
    }

    /// Parses TCP routing info bytes; rejects unknown address families, wrong lengths, port 0,
    /// unspecified or multicast addresses, and a missing or extra instance id.
    pub fn decode(b: &[u8]) -> Result<Self, Malformed> {
        let n = sockaddr::encoded_len(b).ok_or(Malformed("unknown address family"))?;
        let (a, inst) = (b.get(..n), b.get(n..));
        let (Some(a), Some(inst)) = (a, inst) else {
            return Err(Malformed("routing info too short"));
        };
        let instance: [u8; INSTANCE_BYTES] = inst
            .try_into()
            .map_err(|_| Malformed("routing info: instance id must be 8 bytes"))?;
        let addr = sockaddr::decode(a).map_err(Malformed)?;
        Ok(Self {
            addr,
            instance: u64::from_le_bytes(instance),
        })
    }
}

impl PartialOrd for Ident {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Endpoints are ordered by their routing info bytes, compared lexicographically; both ends of
/// a simultaneous connect compute the same order (it decides which connection survives).
impl Ord for Ident {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, n) = self.encode();
        let (b, m) = other.encode();
        a.get(..n).cmp(&b.get(..m))
    }
}

crate::wire_enum! {
    /// What a handshake frame says.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Kind {
        /// Connecting side → accepting side: who I am, whom I expect, my largest packet.
        Hello = 1,
        /// Accepting side → connecting side: the connection is the link between us.
        Accept = 2,
        /// Accepting side → connecting side: no; the connection is closed after this frame.
        Reject = 3,
    }
}

crate::wire_enum! {
    /// Why a hello was rejected.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RejectReason {
        /// The hello named another instance than the acceptor's (the peer restarted).
        WrongInstance = 1,
        /// The acceptor is itself connecting to the sender and its connection wins (lower
        /// routing info): the sender waits for that connection instead.
        Simultaneous = 2,
        /// A connection limit was reached.
        Busy = 3,
    }
}

/// A parsed handshake frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// Hello, Accept or Reject.
    pub kind: Kind,
    /// Set for a Reject only.
    pub reason: Option<RejectReason>,
    /// The sender's largest accepted packet (Hello, Accept; 0 in a Reject).
    pub max_pkt_size: u32,
    /// Hello: the instance the sender expects the acceptor to be; Accept and Reject: the
    /// acceptor's instance.
    pub instance: u64,
    /// Hello: the sender's identity (its listening address and instance).
    pub src: Option<Ident>,
}

/// Offsets inside a handshake payload.
mod off {
    pub const VERSION: usize = 4;
    pub const KIND: usize = 5;
    pub const REASON: usize = 6;
    pub const RESERVED: usize = 7;
    pub const MAX_PKT: usize = 8;
    pub const INSTANCE: usize = 12;
    pub const SRC_LEN: usize = 20;
}

impl Handshake {
    /// A hello from `src` to the endpoint whose routing info names `to_instance`.
    pub fn hello(src: Ident, to_instance: u64, max_pkt_size: u32) -> Self {
        Self {
            kind: Kind::Hello,
            reason: None,
            max_pkt_size,
            instance: to_instance,
            src: Some(src),
        }
    }

    /// An accept from the endpoint with instance `instance`.
    pub fn accept(instance: u64, max_pkt_size: u32) -> Self {
        Self {
            kind: Kind::Accept,
            reason: None,
            max_pkt_size,
            instance,
            src: None,
        }
    }

    /// A reject from the endpoint with instance `instance`.
    pub fn reject(instance: u64, reason: RejectReason) -> Self {
        Self {
            kind: Kind::Reject,
            reason: Some(reason),
            max_pkt_size: 0,
            instance,
            src: None,
        }
    }

    /// The whole frame, length prefix included, into `out`; returns its length.
    pub fn emit(&self, out: &mut [u8; LEN_BYTES + HANDSHAKE_MAX]) -> usize {
        let (src, src_len) = match self.src {
            Some(id) => id.encode(),
            None => ([0; sockaddr::MAX_LEN + INSTANCE_BYTES], 0),
        };
        let payload = HANDSHAKE_FIXED.saturating_add(src_len);
        let mut w = Cursor { buf: out, at: 0 };
        w.put(&(payload as u32).to_le_bytes());
        w.put(&MAGIC);
        w.put(&[
            VERSION,
            self.kind as u8,
            self.reason.map_or(0, |r| r as u8),
            0,
        ]);
        w.put(&self.max_pkt_size.to_le_bytes());
        w.put(&self.instance.to_le_bytes());
        w.put(&[src_len as u8]);
        w.put(src.get(..src_len).unwrap_or(&[]));
        w.at
    }

    /// The whole frame as a vector (for tools and tests that speak the protocol by hand).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut b = [0u8; LEN_BYTES + HANDSHAKE_MAX];
        let n = self.emit(&mut b);
        b.get(..n).unwrap_or(&[]).to_vec()
    }

    /// Checks a handshake frame's length prefix: the payload length that follows.
    pub fn check_len(prefix: [u8; LEN_BYTES]) -> Result<usize, Malformed> {
        let len = u32::from_le_bytes(prefix) as usize;
        if (HANDSHAKE_FIXED..=HANDSHAKE_MAX).contains(&len) {
            Ok(len)
        } else {
            Err(Malformed("handshake frame length out of range"))
        }
    }

    /// Parses a handshake payload (the bytes after the length prefix).
    pub fn parse(p: &[u8]) -> Result<Self, Malformed> {
        if !(HANDSHAKE_FIXED..=HANDSHAKE_MAX).contains(&p.len()) {
            return Err(Malformed("handshake frame length out of range"));
        }
        if p.get(..4) != Some(&MAGIC[..]) {
            return Err(Malformed("bad handshake magic"));
        }
        let byte = |i: usize| p.get(i).copied().unwrap_or(0);
        if byte(off::VERSION) != VERSION {
            return Err(Malformed("unknown handshake version"));
        }
        if byte(off::RESERVED) != 0 {
            return Err(Malformed("reserved handshake byte not zero"));
        }
        let kind =
            Kind::from_u8(byte(off::KIND)).ok_or(Malformed("unknown handshake frame kind"))?;
        let max_pkt: [u8; 4] = p
            .get(off::MAX_PKT..off::INSTANCE)
            .and_then(|b| b.try_into().ok())
            .ok_or(Malformed("short handshake"))?;
        let instance: [u8; 8] = p
            .get(off::INSTANCE..off::SRC_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(Malformed("short handshake"))?;
        let src_len = usize::from(byte(off::SRC_LEN));
        if HANDSHAKE_FIXED.checked_add(src_len) != Some(p.len()) {
            return Err(Malformed(
                "handshake routing info length disagrees with frame length",
            ));
        }
        let src_bytes = p.get(HANDSHAKE_FIXED..).unwrap_or(&[]);
        let max_pkt_size = u32::from_le_bytes(max_pkt);
        let reason_byte = byte(off::REASON);
        let (reason, src) = match kind {
            Kind::Hello | Kind::Accept => {
                if reason_byte != 0 {
                    return Err(Malformed("reason set outside a reject"));
                }
                if max_pkt_size == 0 || max_pkt_size as usize > MAX_FRAME {
                    return Err(Malformed("max_pkt_size out of range"));
                }
                let src = if kind == Kind::Hello {
                    Some(Ident::decode(src_bytes)?)
                } else if src_len != 0 {
                    return Err(Malformed("routing info in an accept"));
                } else {
                    None
                };
                (None, src)
            }
            Kind::Reject => {
                let r =
                    RejectReason::from_u8(reason_byte).ok_or(Malformed("unknown reject reason"))?;
                if src_len != 0 || max_pkt_size != 0 {
                    return Err(Malformed("reject carries fields it must not"));
                }
                (Some(r), None)
            }
        };
        Ok(Self {
            kind,
            reason,
            max_pkt_size,
            instance: u64::from_le_bytes(instance),
            src,
        })
    }
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Cursor<'_> {
    fn put(&mut self, bytes: &[u8]) {
        let end = self.at.saturating_add(bytes.len());
        if let Some(dst) = self.buf.get_mut(self.at..end) {
            dst.copy_from_slice(bytes);
            self.at = end;
        }
    }
}

/// The length prefix of a data frame carrying a `len`-byte packet.
pub fn data_header(len: usize) -> [u8; LEN_BYTES] {
    (len as u32).to_le_bytes()
}

/// Reads a data frame's length prefix and checks it against the receiver's `max_pkt_size`:
/// `Ok(Some(len))` when `b` starts with a valid prefix, `Ok(None)` when fewer than 4 bytes are
/// there yet.
pub fn data_len(b: &[u8], max_pkt_size: usize) -> Result<Option<usize>, Malformed> {
    let Some(prefix) = b.get(..LEN_BYTES) else {
        return Ok(None);
    };
    let mut a = [0u8; LEN_BYTES];
    a.copy_from_slice(prefix);
    let len = u32::from_le_bytes(a) as usize;
    if len == 0 {
        return Err(Malformed("empty data frame"));
    }
    if len > max_pkt_size {
        return Err(Malformed("data frame larger than max_pkt_size"));
    }
    Ok(Some(len))
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects
)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(s: &str, instance: u64) -> Ident {
        Ident {
            addr: s.parse().unwrap(),
            instance,
        }
    }

    #[test]
    fn routing_info_round_trips() {
        for i in [id("127.0.0.1:9", 1), id("[::1]:65535", u64::MAX)] {
            let info = i.routing_info();
            assert_eq!(Ident::decode(info.as_bytes()).unwrap(), i);
        }
        let v4 = id("127.0.0.1:4660", 0x0102_0304_0506_0708);
        assert_eq!(
            v4.routing_info().as_bytes(),
            [4, 127, 0, 0, 1, 0x12, 0x34, 8, 7, 6, 5, 4, 3, 2, 1]
        );
        for bad in [
            &[][..],
            &[4, 127, 0, 0, 1, 0x12, 0x34][..],
            &[4, 127, 0, 0, 1, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7][..],
            &[4, 127, 0, 0, 1, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8, 9][..],
            &[4, 0, 0, 0, 0, 0x12, 0x34, 1, 2, 3, 4, 5, 6, 7, 8][..],
            &[4, 127, 0, 0, 1, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8][..],
            &[9; 15][..],
        ] {
            assert!(Ident::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn order_is_the_routing_info_byte_order() {
        let a = id("127.0.0.1:5000", 9);
        let b = id("127.0.0.1:5001", 1);
        let c = id("127.0.0.2:1", 0);
        assert!(a < b && b < c);
        // Instance ids compare by their LE bytes: 256 = [0, 1, ..] < 1 = [1, 0, ..].
        assert!(id("127.0.0.1:1", 256) < id("127.0.0.1:1", 1));
        assert!(id("127.0.0.1:1", 0) < id("[::1]:1", 0));
    }

    #[test]
    fn golden_hello_accept_reject() {
        let h = Handshake::hello(id("127.0.0.1:4660", 0x11), 0x22, 1500);
        let b = h.to_vec();
        assert_eq!(
            b,
            [
                36, 0, 0, 0, // payload length
                0xE7, b'T', b'C', b'P', 1, 1, 0, 0, // magic, version, Hello, reason, reserved
                0xDC, 0x05, 0, 0, // max_pkt_size 1500
                0x22, 0, 0, 0, 0, 0, 0, 0,  // the acceptor's instance as expected
                15, // routing info length
                4, 127, 0, 0, 1, 0x12, 0x34, 0x11, 0, 0, 0, 0, 0, 0, 0,
            ]
        );
        assert_eq!(Handshake::check_len([36, 0, 0, 0]), Ok(36));
        assert_eq!(Handshake::parse(&b[4..]), Ok(h));
        let a = Handshake::accept(0x22, 9000);
        let ab = a.to_vec();
        assert_eq!(ab.len(), 25);
        assert_eq!(Handshake::parse(&ab[4..]), Ok(a));
        let r = Handshake::reject(0x22, RejectReason::Simultaneous);
        let rb = r.to_vec();
        assert_eq!(&rb[4..12], &[0xE7, b'T', b'C', b'P', 1, 3, 2, 0]);
        assert_eq!(Handshake::parse(&rb[4..]), Ok(r));
    }

    #[test]
    fn bad_handshakes_are_rejected() {
        let good = Handshake::hello(id("127.0.0.1:4660", 1), 2, 1500).to_vec();
        let p = &good[4..];
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for (i, v) in [(0, 0u8), (4, 2), (5, 9), (6, 1), (7, 1), (20, 14), (20, 16)] {
            let mut c = p.to_vec();
            c[i] = v;
            cases.push(c);
        }
        let mut zero_max = p.to_vec();
        zero_max[8..12].fill(0);
        cases.push(zero_max);
        let mut huge_max = p.to_vec();
        huge_max[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(huge_max);
        cases.push(p[..20].to_vec());
        cases.push(p[..p.len() - 1].to_vec());
        let mut long = p.to_vec();
        long.push(0);
        cases.push(long);
        for c in &cases {
            assert!(Handshake::parse(c).is_err(), "{c:?}");
        }
        for bad_len in [0u32, 20, 86, u32::MAX] {
            assert!(Handshake::check_len(bad_len.to_le_bytes()).is_err());
        }
    }

    #[test]
    fn data_frame_lengths() {
        assert_eq!(data_len(&[1, 0, 0], 10), Ok(None));
        assert_eq!(data_len(&data_header(10), 10), Ok(Some(10)));
        assert!(data_len(&data_header(11), 10).is_err());
        assert!(data_len(&data_header(0), 10).is_err());
        assert!(data_len(&[0xff; 4], MAX_FRAME).is_err());
    }

    proptest! {
        #![proptest_config(testkit::proptest_config(512, "proptest-regressions/tcp_wire.txt"))]

        /// Any bytes: parsing never panics, and whatever parses re-emits to the same bytes.
        #[test]
        fn parse_is_total_and_canonical(p in proptest::collection::vec(any::<u8>(), 0..100)) {
            if let Ok(h) = Handshake::parse(&p) {
                let again = h.to_vec();
                prop_assert_eq!(&again[4..], &p[..]);
            }
        }

        /// A well-formed hello round-trips and survives no single-byte corruption of its fixed
        /// fields except the ones that do not change its meaning (none).
        #[test]
        fn hello_round_trips(port in 1u16.., inst in any::<u64>(), to in any::<u64>(),
                             max in 1u32..=(MAX_FRAME as u32), v6 in any::<bool>()) {
            let addr = if v6 { format!("[::1]:{port}") } else { format!("127.0.0.1:{port}") };
            let h = Handshake::hello(id(&addr, inst), to, max);
            let b = h.to_vec();
            prop_assert_eq!(Handshake::check_len(b[..4].try_into().unwrap()), Ok(b.len() - 4));
            prop_assert_eq!(Handshake::parse(&b[4..]), Ok(h));
        }
    }
}
