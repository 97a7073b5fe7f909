//! What the endpoint hands its driver besides datapath packets: events, session-management
//! messages, and the handles and descriptors they carry.

use std::time::Duration;

use transports::{RouteId, RoutingInfo};

use crate::msgbuf::MsgBuf;
use crate::sm::{SmAddr, SmMsg};
use crate::RpcError;

use super::session::SessionId;

/// An application-facing or driver-facing event, from [`Endpoint::poll_event`].
///
/// [`Endpoint::poll_event`]: super::Endpoint::poll_event
#[derive(Debug)]
pub enum Event {
    /// The last packet of a request arrived: run its handler. Take the request's data with
    /// [`Endpoint::take_request`](super::Endpoint::take_request), answer with
    /// [`Endpoint::respond`](super::Endpoint::respond) now or later.
    Request(ReqHandle),
    /// A request this endpoint issued as a client completed (with its response or an error).
    /// Every enqueued request completes exactly once.
    Completion {
        /// The outcome.
        completion: Completion,
        /// Whether the request was issued by the driver itself (`NewRequest::internal`), e.g.
        /// for a blocking call: such completions are not the application's.
        internal: bool,
    },
    /// A session end became live with `token`: from now on the peer's liveness pings for it
    /// are to be answered `Ok` (see [`answer_ping`](super::answer_ping)). A client end is
    /// live from its first ConnectReq (the server end that request creates may ping before
    /// its answer arrives), a server end from its ConnectResp. Every `SessionUp` is followed
    /// by exactly one `SessionDown` or `SessionReset` for the same session.
    SessionUp {
        /// The session (client or server end).
        session: SessionId,
        /// Its local token, which pings must carry.
        token: u32,
    },
    /// A session end is no longer live (disconnected, freed, reaped): pings for it are to be
    /// answered `InvalidSession`.
    SessionDown {
        /// The session.
        session: SessionId,
    },
    /// A client session's peer failed and the session was reset: it is in
    /// `SessionState::Failed(PeerFailed)` and no longer live; every request it held completes
    /// with `PeerFailed` (those completions follow this event). Emitted once per failure.
    SessionReset {
        /// The session.
        session: SessionId,
    },
    /// Create the local end of a route for a session (the transport's `route_alloc`), then
    /// answer with [`Endpoint::route_allocated`](super::Endpoint::route_allocated).
    AllocRoute {
        /// What the answer refers to.
        op: RouteOp,
    },
    /// Complete `route` with the peer's routing info (the transport's `resolve`), then
    /// answer with [`Endpoint::route_resolved`](super::Endpoint::route_resolved).
    ResolveRoute {
        /// What the answer refers to.
        op: RouteOp,
        /// The route to complete.
        route: RouteId,
        /// The peer's routing info.
        info: RoutingInfo,
    },
    /// Release `route` (the transport's `route_free`). Needs no answer.
    FreeRoute {
        /// The route to release.
        route: RouteId,
    },
}

/// Names one pending route operation of one session; the answer to an
/// [`Event::AllocRoute`] or [`Event::ResolveRoute`] carries it back. An answer whose operation
/// is no longer pending (its session went away meanwhile) is harmless: a route allocated for
/// it is released again with [`Event::FreeRoute`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RouteOp {
    pub(crate) session: SessionId,
    pub(crate) seq: u32,
}

impl RouteOp {
    /// The session the operation is for.
    pub fn session(&self) -> SessionId {
        self.session
    }
}

/// A session-management message to send, from [`Endpoint::poll_sm`](super::Endpoint::poll_sm).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmTransmit {
    /// The SM endpoint (Nexus) to send it to.
    pub to: SmAddr,
    /// The message.
    pub msg: SmMsg,
}

/// Identifies a request received by a server end, to respond to it (now or later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReqHandle {
    pub(crate) session: SessionId,
    pub(crate) token: u32,
    pub(crate) req_num: u64,
}

impl ReqHandle {
    /// The server-end session the request arrived on.
    pub fn session(&self) -> SessionId {
        self.session
    }
    /// The request number (unique per session).
    pub fn req_num(&self) -> u64 {
        self.req_num
    }
}

/// The outcome of a request this endpoint issued as a client.
#[derive(Debug)]
pub struct Completion {
    /// The session the request was sent on.
    pub session: SessionId,
    /// The tag given to `enqueue_request`.
    pub tag: u64,
    /// The request type.
    pub req_type: u8,
    /// The request buffer, returned for reuse.
    pub req: MsgBuf,
    /// The response, or why there is none.
    pub result: Result<MsgBuf, RpcError>,
}

/// A request to issue, for [`Endpoint::enqueue_request`](super::Endpoint::enqueue_request).
#[derive(Debug)]
pub struct NewRequest {
    /// The request type (the server's handler id).
    pub req_type: u8,
    /// The request data.
    pub req: MsgBuf,
    /// Returned in the request's [`Completion`]; also what `cancel_request` looks for.
    pub tag: u64,
    /// Time the request may take, counted from the `now` of the call (`None`: no deadline).
    pub deadline: Option<Duration>,
    /// The driver's own request (e.g. a blocking call), kept apart from the application's:
    /// its completion is marked `internal`, and only a cancel that says `internal` finds it.
    pub internal: bool,
}
