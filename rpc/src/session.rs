//! Session and slot state, for both ends of a session.
//!
//! A session is one-to-one: requests flow from the client end to the server end. Each end has
//! `window` slots; request number `r` uses slot `r % window`. The client end holds the credits
//! and clocks both directions; the server end keeps the last response of each slot so a
//! duplicate request is answered again without running the handler twice.

use std::collections::VecDeque;

use transports::{RouteId, RoutingInfo};

use crate::msgbuf::MsgBuf;
use crate::sm::SmAddr;

/// Identifies a session inside one Rpc.
pub type SessionId = u32;

/// The state of a client session, as seen by the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// The connect handshake is under way; requests wait in the backlog.
    Connecting,
    /// Ready for requests.
    Connected,
    /// A disconnect is under way.
    Disconnecting,
    /// The connect failed; the reason is in [`ConnectFailure`]. Destroy the session.
    Failed(ConnectFailure),
    /// This is the server end of a session opened by a remote client.
    ServerEnd,
}

/// Why a connect failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectFailure {
    /// No Rpc with that id at the remote Nexus.
    NoSuchRemoteRpc,
    /// The server has too many sessions.
    TooManySessions,
    /// The server's receive ring has no room for this session's credits.
    RingExhausted,
    /// Client and server transports differ.
    TransportMismatch,
    /// Routing info could not be resolved (at either end).
    RoutingResolution,
    /// The server refused the session parameters.
    BadConfig,
    /// No answer within the connect timeout.
    Timeout,
    /// The session was connected, then its peer stopped answering or lost the session (e.g.
    /// it restarted). Reconnect with `Rpc::reconnect`, or destroy the session.
    PeerFailed,
}

impl ConnectFailure {
    /// The [`RpcError`](crate::RpcError) for this failure (`remote_rpc`: the Rpc id asked for).
    pub fn to_error(self, remote_rpc: u8) -> crate::RpcError {
        use crate::RpcError as E;
        match self {
            Self::NoSuchRemoteRpc => E::NoSuchRemoteRpc(remote_rpc),
            Self::TooManySessions => E::TooManySessions,
            Self::RingExhausted => E::RingExhausted,
            Self::TransportMismatch => E::TransportMismatch {
                remote: "a different transport".into(),
            },
            Self::RoutingResolution => E::RoutingResolution("see the server's log".into()),
            Self::BadConfig => E::BadSessionConfig,
            Self::Timeout => E::Timeout,
            Self::PeerFailed => E::PeerFailed,
        }
    }
}

/// A request waiting for a free slot.
pub(crate) struct Pending {
    pub req_type: u8,
    pub req: MsgBuf,
    pub tag: u64,
    pub internal: bool,
    /// Absolute deadline (ns), `u64::MAX` for none.
    pub deadline: u64,
}

/// One client slot.
pub(crate) struct ClientSlot {
    /// Request number of the current (or next) request in this slot.
    pub req_num: u64,
    pub active: bool,
    pub internal: bool,
    pub req_type: u8,
    pub tag: u64,
    pub req: Option<MsgBuf>,
    pub resp: Option<MsgBuf>,
    /// Request packets.
    pub n_req: u32,
    /// Response packets (0 until response packet 0 arrived).
    pub n_resp: u32,
    /// Exchange items sent (request packets, then RFRs).
    pub num_tx: u32,
    /// Exchange items received in order (credit returns, then response packets).
    pub num_rx: u32,
    /// When this slot last made progress (ns).
    pub progress: u64,
    /// Absolute deadline (ns), `u64::MAX` for none.
    pub deadline: u64,
    /// When the request started (ns), for the RTT estimate.
    pub started: u64,
    /// Whether the request was retransmitted (its RTT sample would be wrong).
    pub retransmitted: bool,
}

pub(crate) enum ClientState {
    Connecting,
    Connected,
    Disconnecting,
    Failed(ConnectFailure),
}

pub(crate) struct ClientSession {
    pub state: ClientState,
    pub remote: SmAddr,
    pub remote_rpc: u8,
    pub remote_session: u32,
    pub remote_token: u32,
    pub local_token: u32,
    pub route: RouteId,
    pub local_routing: RoutingInfo,
    /// Data bytes per packet agreed for this session.
    pub dpp: usize,
    /// Largest message agreed for this session.
    pub max_msg: usize,
    pub credits: u32,
    /// Some slot could not send for lack of credits.
    pub stalled: bool,
    pub slots: Vec<ClientSlot>,
    pub active_slots: usize,
    pub backlog: VecDeque<Pending>,
    /// No backlogged request has a deadline before this (ns); `u64::MAX` when empty.
    pub backlog_min_deadline: u64,
    /// SM exchange in progress: request id, next retry, deadline.
    pub sm_seq: u64,
    pub sm_retry_at: u64,
    pub sm_deadline: u64,
    /// Liveness: when the peer was last heard from, when we last pinged it (ns).
    pub last_heard: u64,
    pub last_ping: u64,
    /// When the first ping of the current silence went out (ignored if `<= last_heard`).
    pub probe_since: u64,
    pub stats: crate::stats::SessionStats,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerSlotState {
    Empty,
    Receiving,
    InHandler,
    Responded,
}

pub(crate) struct ServerSlot {
    pub req_num: u64,
    pub state: ServerSlotState,
    pub req_type: u8,
    pub msg_size: u32,
    pub n_req: u32,
    pub num_rx: u32,
    pub req: Option<MsgBuf>,
    pub resp: Option<MsgBuf>,
    pub n_resp: u32,
    pub status: u8,
}

pub(crate) struct ServerSession {
    pub client: SmAddr,
    pub client_rpc: u8,
    pub client_session: u32,
    pub client_token: u32,
    pub local_token: u32,
    pub route: RouteId,
    pub local_routing: RoutingInfo,
    pub dpp: usize,
    pub max_msg: usize,
    pub credits: u32,
    pub slots: Vec<ServerSlot>,
    /// Liveness: when the client was last heard from, when we last pinged it (ns).
    pub last_heard: u64,
    pub last_ping: u64,
    /// When the first ping of the current silence went out (ignored if `<= last_heard`).
    pub probe_since: u64,
}

pub(crate) enum Session {
    Client(Box<ClientSession>),
    Server(Box<ServerSession>),
}

/// Packets needed for a message of `size` bytes with `dpp` data bytes per packet.
pub(crate) fn pkts_for(size: usize, dpp: usize) -> u32 {
    if size == 0 || dpp == 0 {
        1
    } else {
        size.div_ceil(dpp).min(u32::MAX as usize) as u32
    }
}

/// Payload bytes of packet `i` of a `size`-byte message.
pub(crate) fn pkt_len(size: usize, dpp: usize, i: u32) -> usize {
    let off = (i as usize).saturating_mul(dpp);
    size.saturating_sub(off).min(dpp)
}
