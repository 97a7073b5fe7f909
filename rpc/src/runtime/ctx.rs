//! [`Ctx`]: the handle that handlers and continuations use.

use std::time::Duration;

use crate::config::RpcConfig;
use crate::msgbuf::MsgBuf;
use crate::pkthdr::RespStatus;
use crate::proto::{Endpoint, NewRequest, ReqHandle, SessionId, SessionState};
use crate::stats::{RpcStats, SessionStats};
use crate::RpcError;

/// What handlers and continuations work with: respond to requests, issue requests, allocate
/// buffers, look at sessions. It wraps the Rpc's protocol state ([`Endpoint`]) together with
/// the time of the current event-loop iteration, which the commands that need a time use.
///
/// Foreground handlers get `&mut Ctx` with the request; [`Rpc::split`](crate::Rpc::split)
/// gives it out next to the per-thread state, e.g. to respond from outside a handler.
pub struct Ctx {
    pub(crate) ep: Endpoint,
    /// The time (ns of the Rpc's clock) of the current event-loop iteration or command.
    pub(crate) now: u64,
}

impl Ctx {
    pub(crate) fn new(ep: Endpoint) -> Self {
        Self { ep, now: 0 }
    }

    /// This Rpc's id within its Nexus.
    pub fn rpc_id(&self) -> u8 {
        self.ep.rpc_id()
    }

    /// The configuration.
    pub fn config(&self) -> &RpcConfig {
        self.ep.config()
    }

    /// The counters (without the transport's; see [`Rpc::stats`](crate::Rpc::stats)).
    pub fn stats(&self) -> RpcStats {
        self.ep.stats()
    }

    /// The time of the current event-loop iteration, in nanoseconds of the Rpc's clock.
    pub fn now_ns(&self) -> u64 {
        self.now
    }

    /// The protocol state, for inspection.
    pub fn endpoint(&self) -> &Endpoint {
        &self.ep
    }

    /// A message buffer of `len` bytes from the pool (contents unspecified).
    pub fn alloc_msg(&mut self, len: usize) -> MsgBuf {
        self.ep.alloc_msg(len)
    }

    /// A pooled message buffer holding a copy of `data`.
    pub fn msg_from(&mut self, data: &[u8]) -> MsgBuf {
        self.ep.msg_from(data)
    }

    /// Returns a buffer to the pool.
    pub fn free_msg(&mut self, buf: MsgBuf) {
        self.ep.free_msg(buf)
    }

    /// Number of live sessions (both ends).
    pub fn num_sessions(&self) -> usize {
        self.ep.num_sessions()
    }

    /// The state of a session, or `None` if it does not exist.
    pub fn session_state(&self, session: SessionId) -> Option<SessionState> {
        self.ep.session_state(session)
    }

    /// Requests issued on a client session and not yet completed (in slots and backlog).
    pub fn pending_requests(&self, session: SessionId) -> usize {
        self.ep.pending_requests(session)
    }

    /// Largest message the session accepts (after the connect handshake agreed on it).
    pub fn session_max_msg(&self, session: SessionId) -> Option<usize> {
        self.ep.session_max_msg(session)
    }

    /// Counters and the RTT estimate of a client session.
    pub fn session_stats(&self, session: SessionId) -> Option<SessionStats> {
        self.ep.session_stats(session)
    }

    /// Issues a request on a client session. The outcome arrives as a
    /// [`Completion`](crate::Completion) carrying `tag` (through the Rpc's continuation, or
    /// [`Rpc::poll_completion`](crate::Rpc::poll_completion)).
    ///
    /// Beyond the window, requests wait in a bounded backlog; when that is full this answers
    /// [`RpcError::Overloaded`]. On error the buffer goes back to the pool.
    ///
    /// The request gets the Rpc's default deadline ([`RpcConfig::default_deadline`]); see
    /// [`Ctx::enqueue_request_with_deadline`] to choose one.
    pub fn enqueue_request(
        &mut self,
        session: SessionId,
        req_type: u8,
        req: MsgBuf,
        tag: u64,
    ) -> Result<(), RpcError> {
        let deadline = self.ep.config().default_deadline;
        self.enqueue_request_with_deadline(session, req_type, req, tag, deadline)
    }

    /// Like [`Ctx::enqueue_request`] with an explicit deadline, counted from now (`None`: no
    /// deadline). Past it the request completes with [`RpcError::DeadlineExceeded`]; its slot
    /// and credits are recovered and the session keeps working.
    pub fn enqueue_request_with_deadline(
        &mut self,
        session: SessionId,
        req_type: u8,
        req: MsgBuf,
        tag: u64,
        deadline: Option<Duration>,
    ) -> Result<(), RpcError> {
        self.enqueue(session, req_type, req, tag, deadline, false)
    }

    pub(crate) fn enqueue(
        &mut self,
        session: SessionId,
        req_type: u8,
        req: MsgBuf,
        tag: u64,
        deadline: Option<Duration>,
        internal: bool,
    ) -> Result<(), RpcError> {
        let r = NewRequest {
            req_type,
            req,
            tag,
            deadline,
            internal,
        };
        self.ep.enqueue_request(self.now, session, r)
    }

    /// Cancels the first pending request on `session` that carries `tag`: it completes with
    /// [`RpcError::Cancelled`] (its slot and credits are recovered; a server that already
    /// received it may still run its handler once). Returns whether a request was found.
    pub fn cancel_request(&mut self, session: SessionId, tag: u64) -> bool {
        self.ep.cancel_request(self.now, session, tag, false)
    }

    /// Responds to a request with `resp`. Works from inside the handler or any time later on
    /// the Rpc's thread. Fails with [`RpcError::StaleHandle`] if the request was already
    /// answered or its session is gone (the buffer then goes back to the pool).
    pub fn respond(&mut self, handle: ReqHandle, resp: MsgBuf) -> Result<(), RpcError> {
        self.ep.respond(handle, resp, RespStatus::Ok)
    }

    /// Responds with a copy of `data`.
    pub fn respond_with(&mut self, handle: ReqHandle, data: &[u8]) -> Result<(), RpcError> {
        let m = self.ep.msg_from(data);
        self.respond(handle, m)
    }

    /// The data of a request whose handler kept the handle to respond later.
    pub fn request_data(&self, handle: ReqHandle) -> Option<&[u8]> {
        self.ep.request_data(handle)
    }
}
