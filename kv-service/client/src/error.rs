//! The client's errors, and the one place a response status becomes one.

use std::time::Duration;

use kv_proto::{LimitError, ResponseError, Status};
use rpc::RpcError;

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be parsed or resolved.
    #[error("invalid server address {0:?}")]
    BadAddress(String),
    /// The client's transport could not be set up on this machine (no RDMA device, no
    /// socket, ...).
    #[error("cannot set up the {kind} transport: {reason}")]
    Transport {
        /// The transport (`"udp"`, `"tcp"`, `"ud"`, `"rc"`).
        kind: &'static str,
        /// Why.
        reason: String,
    },
    /// The server did not answer the connect.
    #[error("server {addr} not reachable")]
    Unreachable {
        /// The server address.
        addr: String,
        /// Why.
        #[source]
        source: RpcError,
    },
    /// The server thread's session failed and the last reconnect attempts failed too; the
    /// client waits before trying again ([`ClientConfig::reconnect_backoff`](crate::ClientConfig)),
    /// and requests for that thread fail at once meanwhile. Nothing was sent.
    #[error("server {addr} unavailable: {failures} reconnect attempt(s) failed (last: {source}); next attempt in {} ms", retry_in.as_millis())]
    Unavailable {
        /// The server address.
        addr: String,
        /// Failed reconnect attempts in a row.
        failures: u32,
        /// How long until the next attempt.
        retry_in: Duration,
        /// Why the last attempt failed.
        #[source]
        source: RpcError,
    },
    /// No answer within the configured timeout.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// The key is longer than the client sends (checked before sending).
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than the server accepts (checked before sending, against what
    /// the server advertised).
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The server answered with an error status (its limits included, should they be
    /// smaller than this client's: then `status` says which).
    #[error("server error ({status}): {message}")]
    Server {
        /// The status.
        status: Status,
        /// The server's explanation.
        message: String,
    },
    /// The server's answer could not be understood.
    #[error("{0}")]
    Protocol(#[from] ResponseError),
    /// The server is not a compatible kv-service.
    #[error("incompatible server: {0}")]
    Incompatible(String),
    /// The rpc layer failed (local queue full, session lost...).
    #[error("rpc: {0}")]
    Rpc(#[from] RpcError),
}

impl Error {
    /// Whether this is [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// Whether the error says the server (or the way to it) is gone rather than that a
    /// request was wrong: unreachable or unavailable, a failed peer, a handshake that timed
    /// out or found no server thread to talk to, a session that is not connected. A request failing so may be retried once the
    /// server is back (whether it ran is unknown only for [`RpcError::PeerFailed`]).
    pub fn is_connection_error(&self) -> bool {
        match self {
            Error::Unreachable { .. } | Error::Unavailable { .. } => true,
            Error::Rpc(e) => matches!(
                e,
                RpcError::PeerFailed
                    | RpcError::Timeout
                    | RpcError::NotConnected(_)
                    | RpcError::NoSuchRemoteRpc(_)
            ),
            _ => false,
        }
    }

    /// The status of a server error, if this is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Server { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error for a response whose status is neither OK nor an expected NOT_FOUND: the one
    /// mapping from the wire's statuses to client errors.
    pub(crate) fn from_status(status: Status, message: String) -> Error {
        Error::Server { status, message }
    }

    /// The error for a request whose rpc failed (`timeout`: the configured deadline, for
    /// `DeadlineExceeded`).
    pub(crate) fn from_rpc(e: RpcError, timeout: Duration) -> Error {
        match e {
            RpcError::DeadlineExceeded => Error::Timeout(timeout),
            other => Error::Rpc(other),
        }
    }
}

impl From<LimitError> for Error {
    fn from(e: LimitError) -> Self {
        match e {
            LimitError::KeyTooLarge { len, max } => Error::KeyTooLarge { len, max },
            LimitError::ValueTooLarge { len, max } => Error::ValueTooLarge { len, max },
        }
    }
}

/// A copy for each request of a BATCH that failed as a whole. An rpc error holding an OS error
/// (which cannot be cloned) is copied with its kind and message.
impl Clone for Error {
    fn clone(&self) -> Self {
        match self {
            Error::BadAddress(a) => Error::BadAddress(a.clone()),
            Error::Transport { kind, reason } => Error::Transport {
                kind,
                reason: reason.clone(),
            },
            Error::Unreachable { addr, source } => Error::Unreachable {
                addr: addr.clone(),
                source: clone_rpc(source),
            },
            Error::Unavailable {
                addr,
                failures,
                retry_in,
                source,
            } => Error::Unavailable {
                addr: addr.clone(),
                failures: *failures,
                retry_in: *retry_in,
                source: clone_rpc(source),
            },
            Error::Timeout(d) => Error::Timeout(*d),
            Error::KeyTooLarge { len, max } => Error::KeyTooLarge {
                len: *len,
                max: *max,
            },
            Error::ValueTooLarge { len, max } => Error::ValueTooLarge {
                len: *len,
                max: *max,
            },
            Error::Server { status, message } => Error::Server {
                status: *status,
                message: message.clone(),
            },
            Error::Protocol(p) => Error::Protocol(p.clone()),
            Error::Incompatible(s) => Error::Incompatible(s.clone()),
            Error::Rpc(r) => Error::Rpc(clone_rpc(r)),
        }
    }
}

fn clone_rpc(r: &RpcError) -> RpcError {
    match r {
        RpcError::Overloaded => RpcError::Overloaded,
        RpcError::RemoteOverloaded => RpcError::RemoteOverloaded,
        RpcError::DeadlineExceeded => RpcError::DeadlineExceeded,
        RpcError::PeerFailed => RpcError::PeerFailed,
        RpcError::HandlerFailed => RpcError::HandlerFailed,
        RpcError::Cancelled => RpcError::Cancelled,
        RpcError::Timeout => RpcError::Timeout,
        RpcError::RingExhausted => RpcError::RingExhausted,
        RpcError::TooManySessions => RpcError::TooManySessions,
        RpcError::NoHandler(t) => RpcError::NoHandler(*t),
        RpcError::NoSuchRemoteRpc(t) => RpcError::NoSuchRemoteRpc(*t),
        RpcError::NotConnected(s) => RpcError::NotConnected(*s),
        RpcError::InvalidSession(s) => RpcError::InvalidSession(*s),
        RpcError::MsgTooLarge { size, max } => RpcError::MsgTooLarge {
            size: *size,
            max: *max,
        },
        RpcError::TransportMismatch { remote } => RpcError::TransportMismatch {
            remote: remote.clone(),
        },
        RpcError::RoutingResolution(s) => RpcError::RoutingResolution(s.clone()),
        RpcError::BadSessionConfig => RpcError::BadSessionConfig,
        RpcError::BadRemote(s) => RpcError::BadRemote(s.clone()),
        RpcError::SessionBusy(s) => RpcError::SessionBusy(*s),
        RpcError::StaleHandle => RpcError::StaleHandle,
        RpcError::RpcIdInUse(i) => RpcError::RpcIdInUse(*i),
        RpcError::Config(s) => RpcError::Config(s.clone()),
        RpcError::Io(e) => RpcError::Io(std::io::Error::new(e.kind(), e.to_string())),
        other => RpcError::Io(std::io::Error::other(other.to_string())),
    }
}
