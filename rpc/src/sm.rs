//! Session management (SM) messages: connect, disconnect, liveness pings, and the address of
//! the Nexus endpoint they travel between.
//!
//! SM messages travel outside the datapath, as in eRPC: over kernel UDP between Nexus SM
//! sockets, or through an in-process [`LocalHub`](crate::LocalHub) (the runtime's
//! `sm_socket.rs`); the protocol core (`crate::proto`) reads and writes them as [`SmMsg`].
//!
//! Message layout: a fixed 128-byte `bytemuck` struct, documented field by field in
//! `docs/PROTOCOL.md`.

use std::net::SocketAddr;

use bytemuck::{Pod, Zeroable};
use transports::{RoutingInfo, TransportKind, ROUTING_INFO_MAX};

/// Size of an SM message in bytes.
pub const SM_MSG_SIZE: usize = 128;
const SM_MAGIC: [u8; 2] = *b"SM";
const SM_VERSION: u8 = 1;

transports::wire_enum! {
    /// SM message types.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum SmType {
        /// Client asks to open a session.
        ConnectReq = 1,
        /// Server's answer to a connect request.
        ConnectResp = 2,
        /// Client closes a session.
        DisconnectReq = 3,
        /// Server confirms a disconnect.
        DisconnectResp = 4,
        /// Liveness ping from a client end to its server end.
        ClientPing = 5,
        /// The server end's answer to a [`SmType::ClientPing`].
        ServerPong = 6,
        /// Liveness ping from a server end to its client end.
        ServerPing = 7,
        /// The client end's answer to a [`SmType::ServerPing`].
        ClientPong = 8,
    }
}

transports::wire_enum! {
    /// Status codes carried by SM responses.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum SmStatus {
        /// Success.
        Ok = 0,
        /// The server has no Rpc with the requested id.
        NoSuchRpc = 1,
        /// The server Rpc's session limit is reached.
        TooManySessions = 2,
        /// The server Rpc's receive ring cannot admit another session's credits.
        RingExhausted = 3,
        /// Client and server use different transports.
        TransportMismatch = 4,
        /// The server could not resolve the client's routing info.
        RoutingResolution = 5,
        /// The session named does not exist (disconnect of an unknown session).
        InvalidSession = 6,
        /// Session parameters (window, credits, sizes) are unacceptable.
        BadConfig = 7,
    }
}

#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct RawSm {
    magic: [u8; 2],
    version: u8,
    msg_type: u8,
    transport: u8,
    status: u8,
    client_rpc: u8,
    server_rpc: u8,
    client_session: [u8; 4],
    server_session: [u8; 4],
    client_token: [u8; 4],
    server_token: [u8; 4],
    seq: [u8; 8],
    max_pkt_size: [u8; 4],
    max_msg_size: [u8; 4],
    credits: [u8; 4],
    window: [u8; 4],
    routing_len: u8,
    reserved: [u8; 3],
    routing: [u8; ROUTING_INFO_MAX],
    reserved2: [u8; 12],
}

const _: () = assert!(std::mem::size_of::<RawSm>() == SM_MSG_SIZE);

/// A parsed SM message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SmMsg {
    /// Message type.
    pub msg_type: SmType,
    /// Transport of the sender's datapath.
    pub transport: TransportKind,
    /// Status (responses).
    pub status: SmStatus,
    /// Client Rpc id.
    pub client_rpc: u8,
    /// Server Rpc id.
    pub server_rpc: u8,
    /// Client session number.
    pub client_session: u32,
    /// Server session number (responses, disconnects).
    pub server_session: u32,
    /// Client session token (packets to the client carry it).
    pub client_token: u32,
    /// Server session token (packets to the server carry it).
    pub server_token: u32,
    /// Request id chosen by the client; responses echo it.
    pub seq: u64,
    /// The sender's max packet size (connect request) or the agreed one (response).
    pub max_pkt_size: u32,
    /// The sender's max message size (request) or the agreed one (response).
    pub max_msg_size: u32,
    /// Session credits.
    pub credits: u32,
    /// Session window (slots).
    pub window: u32,
    /// The sender's routing info.
    pub routing: RoutingInfo,
}

/// Why an SM message was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SmParseError {
    /// Wrong length.
    #[error("SM message has {0} bytes, expected {SM_MSG_SIZE}")]
    Length(usize),
    /// Wrong magic or version.
    #[error("bad SM magic or version")]
    Magic,
    /// A field holds an unknown value.
    #[error("invalid SM field {0}")]
    Field(&'static str),
}

impl SmMsg {
    /// Encodes the message.
    pub fn encode(&self) -> [u8; SM_MSG_SIZE] {
        let r = self.routing.as_bytes();
        let mut routing = [0u8; ROUTING_INFO_MAX];
        routing[..r.len()].copy_from_slice(r);
        let raw = RawSm {
            magic: SM_MAGIC,
            version: SM_VERSION,
            msg_type: self.msg_type as u8,
            transport: self.transport as u8,
            status: self.status as u8,
            client_rpc: self.client_rpc,
            server_rpc: self.server_rpc,
            client_session: self.client_session.to_le_bytes(),
            server_session: self.server_session.to_le_bytes(),
            client_token: self.client_token.to_le_bytes(),
            server_token: self.server_token.to_le_bytes(),
            seq: self.seq.to_le_bytes(),
            max_pkt_size: self.max_pkt_size.to_le_bytes(),
            max_msg_size: self.max_msg_size.to_le_bytes(),
            credits: self.credits.to_le_bytes(),
            window: self.window.to_le_bytes(),
            routing_len: r.len() as u8,
            reserved: [0; 3],
            routing,
            reserved2: [0; 12],
        };
        let mut out = [0u8; SM_MSG_SIZE];
        out.copy_from_slice(bytemuck::bytes_of(&raw));
        out
    }

    /// Parses and validates a message.
    pub fn parse(bytes: &[u8]) -> Result<Self, SmParseError> {
        if bytes.len() != SM_MSG_SIZE {
            return Err(SmParseError::Length(bytes.len()));
        }
        let raw: RawSm = bytemuck::pod_read_unaligned(bytes);
        if raw.magic != SM_MAGIC || raw.version != SM_VERSION {
            return Err(SmParseError::Magic);
        }
        if raw.reserved != [0; 3] || raw.reserved2 != [0; 12] {
            return Err(SmParseError::Field("reserved"));
        }
        let len = usize::from(raw.routing_len);
        let routing = raw
            .routing
            .get(..len)
            .and_then(RoutingInfo::new)
            .ok_or(SmParseError::Field("routing_len"))?;
        Ok(Self {
            msg_type: SmType::from_u8(raw.msg_type).ok_or(SmParseError::Field("msg_type"))?,
            transport: TransportKind::from_u8(raw.transport)
                .ok_or(SmParseError::Field("transport"))?,
            status: SmStatus::from_u8(raw.status).ok_or(SmParseError::Field("status"))?,
            client_rpc: raw.client_rpc,
            server_rpc: raw.server_rpc,
            client_session: u32::from_le_bytes(raw.client_session),
            server_session: u32::from_le_bytes(raw.server_session),
            client_token: u32::from_le_bytes(raw.client_token),
            server_token: u32::from_le_bytes(raw.server_token),
            seq: u64::from_le_bytes(raw.seq),
            max_pkt_size: u32::from_le_bytes(raw.max_pkt_size),
            max_msg_size: u32::from_le_bytes(raw.max_msg_size),
            credits: u32::from_le_bytes(raw.credits),
            window: u32::from_le_bytes(raw.window),
            routing,
        })
    }

    /// The Rpc id this message is addressed to.
    pub fn dest_rpc(&self) -> u8 {
        match self.msg_type {
            SmType::ConnectReq
            | SmType::DisconnectReq
            | SmType::ClientPing
            | SmType::ClientPong => self.server_rpc,
            SmType::ConnectResp
            | SmType::DisconnectResp
            | SmType::ServerPing
            | SmType::ServerPong => self.client_rpc,
        }
    }

    /// A response to this request with the given status (fields echoed).
    pub fn reply(&self, status: SmStatus) -> Self {
        let msg_type = match self.msg_type {
            SmType::ConnectReq => SmType::ConnectResp,
            SmType::DisconnectReq => SmType::DisconnectResp,
            SmType::ClientPing => SmType::ServerPong,
            SmType::ServerPing => SmType::ClientPong,
            other => other,
        };
        Self {
            msg_type,
            status,
            ..*self
        }
    }
}

/// The address of a Nexus's SM endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SmAddr {
    /// A UDP socket address.
    Udp(SocketAddr),
    /// A Nexus attached to a [`LocalHub`](crate::LocalHub).
    Local(u32),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> SmMsg {
        SmMsg {
            msg_type: SmType::ConnectReq,
            transport: TransportKind::Udp,
            status: SmStatus::Ok,
            client_rpc: 3,
            server_rpc: 4,
            client_session: 10,
            server_session: 20,
            client_token: 0xabcd,
            server_token: 0x1234,
            seq: 99,
            max_pkt_size: 1472,
            max_msg_size: 8 << 20,
            credits: 32,
            window: 8,
            routing: RoutingInfo::new(b"\x01\x02\x03").unwrap(),
        }
    }

    #[test]
    fn roundtrip() {
        let m = sample();
        assert_eq!(SmMsg::parse(&m.encode()), Ok(m));
        let r = m.reply(SmStatus::RingExhausted);
        assert_eq!(r.msg_type, SmType::ConnectResp);
        assert_eq!(r.dest_rpc(), 3);
    }

    #[test]
    fn rejects() {
        let good = sample().encode();
        assert_eq!(SmMsg::parse(&good[..100]), Err(SmParseError::Length(100)));
        let mut b = good;
        b[0] = b'X';
        assert_eq!(SmMsg::parse(&b), Err(SmParseError::Magic));
        let mut b = good;
        b[3] = 77;
        assert_eq!(SmMsg::parse(&b), Err(SmParseError::Field("msg_type")));
        let mut b = good;
        b[48] = 65; // routing_len > 64
        assert_eq!(SmMsg::parse(&b), Err(SmParseError::Field("routing_len")));
    }

    /// What a successful parse promises: the message encodes to bytes that parse to the same
    /// message. (Not byte equality: routing bytes past `routing_len` are not read.)
    fn check_parse(bytes: &[u8]) -> Result<(), TestCaseError> {
        if let Ok(m) = SmMsg::parse(bytes) {
            prop_assert_eq!(SmMsg::parse(&m.encode()), Ok(m));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(testkit::proptest_config(256, "proptest-regressions/sm.txt"))]

        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            check_parse(&bytes)?;
        }

        /// One changed byte of a valid message reaches every field check.
        #[test]
        fn mutated_never_panics(idx in 0usize..SM_MSG_SIZE, val in any::<u8>()) {
            let mut b = sample().encode();
            b[idx] = val;
            check_parse(&b)?;
        }
    }
}
