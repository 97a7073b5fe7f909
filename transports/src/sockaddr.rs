//! The byte encoding of socket addresses inside routing info, shared by the UDP and TCP
//! transports: `[4, ip(4), port(2, BE)]` (7 bytes) or `[6, ip(16), port(2, BE), scope_id(4, BE)]`
//! (23 bytes; the flow label is not carried).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

/// Longest encoding (IPv6).
pub(crate) const MAX_LEN: usize = 23;

/// Encodes `addr`; returns the buffer and the number of bytes used (7 or 23).
pub(crate) fn encode(addr: SocketAddr) -> ([u8; MAX_LEN], usize) {
    let mut b = [0u8; MAX_LEN];
    let mut w = Writer { buf: &mut b, at: 0 };
    match addr {
        SocketAddr::V4(a) => {
            w.put(&[4]);
            w.put(&a.ip().octets());
            w.put(&a.port().to_be_bytes());
        }
        SocketAddr::V6(a) => {
            w.put(&[6]);
            w.put(&a.ip().octets());
            w.put(&a.port().to_be_bytes());
            w.put(&a.scope_id().to_be_bytes());
        }
    }
    let n = w.at;
    (b, n)
}

struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.buf.get_mut(self.at..self.at + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.at += bytes.len();
        }
    }
}

/// Length of the address encoding that `bytes` starts with, from its family byte.
pub(crate) fn encoded_len(bytes: &[u8]) -> Option<usize> {
    match bytes.first() {
        Some(4) => Some(7),
        Some(6) => Some(23),
        _ => None,
    }
}

/// Decodes exactly one encoded address; rejects other lengths, unknown families, port 0 and
/// unspecified or multicast addresses (not routable for a peer).
pub(crate) fn decode(b: &[u8]) -> Result<SocketAddr, &'static str> {
    let addr = match (b.first(), b.len()) {
        (Some(4), 7) => {
            let ip: [u8; 4] = array(b.get(1..5))?;
            let port: [u8; 2] = array(b.get(5..7))?;
            SocketAddr::from((Ipv4Addr::from(ip), u16::from_be_bytes(port)))
        }
        (Some(6), 23) => {
            let ip: [u8; 16] = array(b.get(1..17))?;
            let port: [u8; 2] = array(b.get(17..19))?;
            let scope: [u8; 4] = array(b.get(19..23))?;
            SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(ip),
                u16::from_be_bytes(port),
                0,
                u32::from_be_bytes(scope),
            ))
        }
        (Some(4 | 6), _) => return Err("wrong length"),
        _ => return Err("unknown address family"),
    };
    if addr.port() == 0 {
        return Err("port 0");
    }
    if addr.ip().is_unspecified() || addr.ip().is_multicast() {
        return Err("address not routable");
    }
    Ok(addr)
}

fn array<const N: usize>(b: Option<&[u8]>) -> Result<[u8; N], &'static str> {
    b.and_then(|b| b.try_into().ok()).ok_or("wrong length")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        for a in ["127.0.0.1:9", "[::1]:65535", "[fe80::1%3]:80"] {
            let a: SocketAddr = a.parse().unwrap();
            let (b, n) = encode(a);
            assert_eq!(encoded_len(&b[..n]), Some(n));
            assert_eq!(decode(&b[..n]).unwrap(), a);
        }
        for bad in [
            &[][..],
            &[4, 127, 0, 0, 1, 0][..],
            &[4, 127, 0, 0, 1, 0, 0][..],
            &[4, 0, 0, 0, 0, 0, 9][..],
            &[4, 224, 0, 0, 1, 0, 9][..],
            &[5, 127, 0, 0, 1, 0, 9][..],
            &[6; 22][..],
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
