//! Errors of the rpc crate.

use transports::TransportError;

/// Errors returned by the rpc crate, and carried by failed request completions.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    /// The remote Nexus has no Rpc with that id.
    #[error("the remote Nexus has no Rpc with id {0}")]
    NoSuchRemoteRpc(u8),
    /// A session limit was reached (locally or at the server).
    #[error("too many sessions")]
    TooManySessions,
    /// The receive ring cannot admit another session's credits (locally or at the server).
    #[error("receive ring exhausted: no room for another session's credits")]
    RingExhausted,
    /// Client and server use different transports.
    #[error("transport mismatch (remote uses {remote})")]
    TransportMismatch {
        /// The remote's transport, if known.
        remote: String,
    },
    /// Routing info could not be resolved.
    #[error("routing resolution failed: {0}")]
    RoutingResolution(String),
    /// The remote refused the session parameters.
    #[error("session parameters refused by the remote")]
    BadSessionConfig,
    /// A connect or disconnect got no answer in time.
    #[error("session management timed out")]
    Timeout,
    /// The remote URI could not be parsed or resolved.
    #[error("invalid remote address {0:?}")]
    BadRemote(String),
    /// The session id is not a live session of this Rpc (or not of the right role).
    #[error("invalid session {0}")]
    InvalidSession(u32),
    /// The session is not connected (still connecting, failed, or closing).
    #[error("session {0} is not connected")]
    NotConnected(u32),
    /// The session still has requests in flight.
    #[error("session {0} has requests in flight")]
    SessionBusy(u32),
    /// A message exceeds the session's size limit.
    #[error("message of {size} bytes exceeds the limit of {max} bytes")]
    MsgTooLarge {
        /// The message size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A bounded queue is full; try again later.
    #[error("overloaded: queue full")]
    Overloaded,
    /// The server has no handler for the request type.
    #[error("the server has no handler for request type {0}")]
    NoHandler(u8),
    /// The server was overloaded and refused the request.
    #[error("the server refused the request: overloaded")]
    RemoteOverloaded,
    /// The server's handler failed or its response was too large.
    #[error("the server's handler failed")]
    HandlerFailed,
    /// The request's deadline passed before its response arrived.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The request was cancelled.
    #[error("request cancelled")]
    Cancelled,
    /// The peer stopped answering (or lost the session, e.g. it restarted): the session was
    /// reset. Reconnect with `Rpc::reconnect`.
    #[error("peer failed: session reset")]
    PeerFailed,
    /// The response handle is stale (already answered or its session is gone).
    #[error("stale request handle")]
    StaleHandle,
    /// The Rpc id is already used in this Nexus.
    #[error("rpc id {0} is already in use in this Nexus")]
    RpcIdInUse(u8),
    /// A configuration value is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A transport error.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An operating-system error (SM socket, threads).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}
