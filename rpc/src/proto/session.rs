//! The session table and what both ends of a session share: ids, states, packet arithmetic.
//!
//! A session is one-to-one: requests flow from the client end to the server end. Each end has
//! `window` slots; request number `r` uses slot `r % window`. The client end (`client.rs`)
//! holds the credits and clocks both directions; the server end (`server.rs`) keeps the last
//! response of each slot so a duplicate request is answered again without running the handler
//! twice. Client and server ends of one Rpc share one table and one number space; freed
//! numbers are reused, and the per-end random token tells incarnations apart.

use super::client::{ClientSession, ClientState};
use super::server::ServerSession;
use super::timer::TimerTable;

/// Identifies a session inside one Rpc.
pub type SessionId = u32;

/// The state of a session, as seen by the application.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// The connect handshake is under way; requests wait in the backlog.
    Connecting,
    /// Ready for requests.
    Connected,
    /// A disconnect is under way.
    Disconnecting,
    /// The connect failed, or the peer failed; the reason is in [`ConnectFailure`]. Reconnect
    /// or destroy the session.
    Failed(ConnectFailure),
    /// This is the server end of a session opened by a remote client.
    ServerEnd,
}

/// Why a connect failed (or a connected session was reset).
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

/// One end of a session.
pub(crate) enum Session {
    Client(Box<ClientSession>),
    Server(Box<ServerSession>),
}

impl Session {
    pub(crate) fn timers_mut(&mut self) -> &mut TimerTable {
        match self {
            Session::Client(c) => &mut c.timers,
            Session::Server(s) => &mut s.timers,
        }
    }

    pub(crate) fn state(&self) -> SessionState {
        match self {
            Session::Server(_) => SessionState::ServerEnd,
            Session::Client(c) => match c.state {
                ClientState::Connecting(_) => SessionState::Connecting,
                ClientState::Connected => SessionState::Connected,
                ClientState::Disconnecting => SessionState::Disconnecting,
                ClientState::Failed(f) => SessionState::Failed(f),
            },
        }
    }
}

/// Every session end of one endpoint, addressed by number.
#[derive(Default)]
pub(crate) struct SessionTable {
    slots: Vec<Option<Session>>,
    free: Vec<SessionId>,
    len: usize,
}

impl SessionTable {
    /// Live session ends.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn get(&self, id: SessionId) -> Option<&Session> {
        self.slots.get(id as usize)?.as_ref()
    }

    pub(crate) fn get_mut(&mut self, id: SessionId) -> Option<&mut Session> {
        self.slots.get_mut(id as usize)?.as_mut()
    }

    pub(crate) fn client(&self, id: SessionId) -> Option<&ClientSession> {
        match self.get(id)? {
            Session::Client(c) => Some(c),
            Session::Server(_) => None,
        }
    }

    pub(crate) fn client_mut(&mut self, id: SessionId) -> Option<&mut ClientSession> {
        match self.get_mut(id)? {
            Session::Client(c) => Some(c),
            Session::Server(_) => None,
        }
    }

    pub(crate) fn server(&self, id: SessionId) -> Option<&ServerSession> {
        match self.get(id)? {
            Session::Server(s) => Some(s),
            Session::Client(_) => None,
        }
    }

    pub(crate) fn server_mut(&mut self, id: SessionId) -> Option<&mut ServerSession> {
        match self.get_mut(id)? {
            Session::Server(s) => Some(s),
            Session::Client(_) => None,
        }
    }

    /// Stores the session `make` builds for the number it is given; returns that number.
    pub(crate) fn insert(&mut self, make: impl FnOnce(SessionId) -> Session) -> SessionId {
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as SessionId
            }
        };
        if let Some(slot) = self.slots.get_mut(id as usize) {
            *slot = Some(make(id));
            self.len += 1;
        }
        id
    }

    /// Takes a session out; its number becomes free for reuse.
    pub(crate) fn remove(&mut self, id: SessionId) -> Option<Session> {
        let s = self.slots.get_mut(id as usize)?.take()?;
        self.free.push(id);
        self.len -= 1;
        Some(s)
    }
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

/// The slot of request number `req_num` in a window of `window` slots.
pub(crate) fn slot_of(req_num: u64, window: usize) -> usize {
    (req_num % window.max(1) as u64) as usize
}
