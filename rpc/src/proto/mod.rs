//! The protocol core: sessions, slots, credits, multi-packet messages, retransmission,
//! deadlines, liveness and the session-management handshake, as a state machine that performs
//! no I/O and reads no clock.
//!
//! [`Endpoint`] is the protocol state of one Rpc (all its session ends, client and server).
//! It is driven by `rpc::Rpc` (the runtime's event loop, which feeds it from a transport and
//! the SM channel), and it can be driven just as well by a test that moves packets between two
//! endpoints by hand, in virtual time (`rpc/tests/proto.rs`).
//!
//! # The endpoint's methods
//!
//! [`Endpoint`] has four kinds of methods:
//!
//! - **A. Getters**, taking `&self`: [`session_state`](Endpoint::session_state),
//!   [`pending_requests`](Endpoint::pending_requests), [`stats`](Endpoint::stats), ...
//! - **B. Handlers of input from the network and of time**, named `handle_*`:
//!   [`handle_packet`](Endpoint::handle_packet) (one datapath packet),
//!   [`handle_sm`](Endpoint::handle_sm) (one session-management message),
//!   [`handle_timeout`](Endpoint::handle_timeout) (time passed),
//!   [`handle_route_failure`](Endpoint::handle_route_failure) (a reliable transport lost the
//!   connection under a route); and the answers to the route requests it made,
//!   [`route_allocated`](Endpoint::route_allocated) and
//!   [`route_resolved`](Endpoint::route_resolved).
//! - **C. Commands from the application**, which change state but perform no I/O either:
//!   [`connect`](Endpoint::connect), [`reconnect`](Endpoint::reconnect),
//!   [`disconnect`](Endpoint::disconnect), [`enqueue_request`](Endpoint::enqueue_request),
//!   [`cancel_request`](Endpoint::cancel_request), [`respond`](Endpoint::respond) (and, to run
//!   a handler, [`take_request`](Endpoint::take_request) /
//!   [`restore_request`](Endpoint::restore_request)); buffers come from
//!   [`alloc_msg`](Endpoint::alloc_msg) and go back with [`free_msg`](Endpoint::free_msg).
//! - **D. Polls for output**, named `poll_*`: what the driver must carry out.
//!
//! Every method of kinds B and C that depends on time takes the current time `now`, in
//! nanoseconds of whatever clock the driver uses; `now` must never go backwards between calls.
//! The endpoint keeps no notion of time between calls other than the deadlines it computed.
//!
//! # Driving an endpoint
//!
//! After any call of kind B or C, call the polls — in this order — and carry out what they
//! return:
//!
//! 1. [`poll_event`](Endpoint::poll_event) until it returns `None`. Events are requests to
//!    dispatch to handlers ([`Event::Request`]: the handler answers with `respond`, now or
//!    later), completions of this endpoint's requests ([`Event::Completion`]), changes of the
//!    set of live session ends that the Nexus answers liveness pings for
//!    ([`Event::SessionUp`], [`Event::SessionDown`], [`Event::SessionReset`]), and the route
//!    requests for the transport ([`Event::AllocRoute`] and [`Event::ResolveRoute`], which
//!    expect an answer through `route_allocated` / `route_resolved`, and
//!    [`Event::FreeRoute`]). Carrying out an event is itself a B or C call, which may queue
//!    more events: keep polling.
//! 2. [`poll_transmits`](Endpoint::poll_transmits): every datapath packet queued, handed to a
//!    sink in batches shaped for `Transport::tx_burst` (header and payload slices that borrow
//!    the endpoint's buffers: nothing is copied).
//! 3. [`poll_sm`](Endpoint::poll_sm) until `None`: session-management messages to send.
//! 4. [`poll_timeout`](Endpoint::poll_timeout): when to call `handle_timeout` next, at the
//!    latest. It is cheap (a look at the front of a timer queue), so it may be asked every
//!    loop iteration.
//!
//! Events come first so that what carrying them out produces (a handler's response, the
//! ConnectResp that follows a resolved route) leaves in the same round; the timeout comes last
//! because everything before may arm timers. Packets are queued as references to the
//! buffers of their slots, so transmit them before the next input: a packet whose buffer is
//! gone by then (its request completed meanwhile) is skipped and counted in `tx_skipped`.
//!
//! # Inside
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | the endpoint: its inputs, commands and polls; dispatch of each input to a session |
//! | `session.rs` | the session table, states, packet arithmetic |
//! | `client.rs` | the client end: slots, backlog; a request from enqueue to completion (credit returns, responses, RFRs, deadlines, cancel) |
//! | `server.rs` | the server end: slots; a request from its first packet to the response (credit returns, duplicates, RFRs, at-most-once) |
//! | `credits.rs` | a client session's credits; receive-ring admission |
//! | `retransmit.rs` | go-back-N |
//! | `handshake.rs` | connect, disconnect, the route requests, the end of a session |
//! | `liveness.rs` | pings, failure detection, reset; how a Nexus answers pings |
//! | `timer.rs` | the per-session timer table and the endpoint's timer queue |
//! | `event.rs`, `output.rs` | what the endpoint hands out, and the queues it collects it in |
//!
//! The wire formats are `crate::pkthdr` (datapath header) and `crate::sm` (SM message); both
//! are described byte by byte in `docs/PROTOCOL.md`.

// Everything here handles input from the network: no panics on it, kept by the compiler.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod client;
mod credits;
mod event;
mod handshake;
mod liveness;
mod output;
mod retransmit;
mod server;
mod session;
mod timer;

use std::collections::HashMap;

use transports::rng::SplitMix64;
use transports::{RouteId, TransportKind, TxPkt};

use crate::config::RpcConfig;
use crate::msgbuf::MsgBuf;
use crate::pkthdr::{PktHdr, PktType, RespStatus, HDR_SIZE};
use crate::sm::{SmAddr, SmMsg, SmType};
use crate::stats::{RpcStats, SessionStats};
use crate::RpcError;

pub use event::{Completion, Event, NewRequest, ReqHandle, RouteOp, SmTransmit};
pub use liveness::{answer_ping, ping_target};
pub use session::{ConnectFailure, SessionId, SessionState};

use client::Pending;
use credits::RingBudget;
use handshake::ConnKey;
use output::Out;
use session::{Session, SessionTable};
use timer::{Timer, TimerQueue};

/// What an endpoint needs to know about the transport its Rpc uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalEnd {
    /// This Rpc's id within its Nexus.
    pub rpc_id: u8,
    /// The transport's kind (both ends of a session must agree).
    pub transport: TransportKind,
    /// The transport's largest packet (RPC header + payload).
    pub max_pkt_size: usize,
    /// The transport's receive ring, which session admission reserves credits in.
    pub rx_ring_size: usize,
    /// Whether the transport is reliable (`Transport::is_reliable`: a route's packets arrive
    /// exactly once and in order unless its connection fails). The endpoint then never
    /// retransmits (no go-back-N); deadlines, liveness and at-most-once stay.
    pub reliable: bool,
}

/// The configuration in the units the core works in (ns), computed once.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Params {
    pub rpc_id: u8,
    pub kind: TransportKind,
    pub max_pkt: usize,
    pub max_msg: usize,
    pub window: usize,
    pub credits: u32,
    pub rto: u64,
    /// The transport is reliable (and connection-oriented): no go-back-N; a reconnect takes
    /// a new route.
    pub reliable: bool,
    pub sm_retry: u64,
    pub connect_timeout: u64,
    pub failure_timeout: Option<u64>,
    pub backlog_limit: usize,
    pub max_sessions: usize,
    pub max_sessions_per_peer: usize,
}

fn ns(d: std::time::Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// The protocol state of one Rpc: every session end it holds, as client or server. See the
/// [module docs](self) for how to drive it.
pub struct Endpoint {
    cfg: RpcConfig,
    p: Params,
    sessions: SessionTable,
    ring: RingBudget,
    /// Server ends by who asked for them (recognises retried connects).
    conn_index: HashMap<ConnKey, SessionId>,
    /// Server ends per remote Nexus (for `max_sessions_per_peer`).
    peer_sessions: HashMap<SmAddr, usize>,
    /// The session end that holds each route (for `handle_route_failure`).
    routes: HashMap<RouteId, SessionId>,
    out: Out,
    timers: TimerQueue,
    rng: SplitMix64,
    route_seq: u32,
}

impl Endpoint {
    /// An endpoint with configuration `cfg` over the transport described by `local`; session
    /// tokens and request ids are drawn from a generator seeded with `seed` (the runtime uses
    /// `cfg.seed` or OS randomness).
    pub fn new(cfg: RpcConfig, local: LocalEnd, seed: u64) -> Result<Self, RpcError> {
        cfg.validate().map_err(RpcError::Config)?;
        if local.max_pkt_size <= HDR_SIZE {
            return Err(RpcError::Config(format!(
                "transport packets of {} bytes cannot hold the {HDR_SIZE}-byte header",
                local.max_pkt_size
            )));
        }
        let p = Params {
            rpc_id: local.rpc_id,
            kind: local.transport,
            max_pkt: local.max_pkt_size,
            max_msg: cfg.max_msg_size,
            window: cfg.window,
            credits: cfg.credits,
            rto: ns(cfg.rto),
            reliable: local.reliable,
            sm_retry: ns(cfg.sm_retry),
            connect_timeout: ns(cfg.connect_timeout),
            failure_timeout: cfg.failure_timeout.map(ns),
            backlog_limit: cfg.backlog_limit,
            max_sessions: cfg.max_sessions,
            max_sessions_per_peer: cfg.max_sessions_per_peer,
        };
        Ok(Self {
            out: Out::new(cfg.buffer_cache_bytes),
            cfg,
            p,
            sessions: SessionTable::default(),
            ring: RingBudget::new(local.rx_ring_size),
            conn_index: HashMap::new(),
            peer_sessions: HashMap::new(),
            routes: HashMap::new(),
            timers: TimerQueue::default(),
            rng: SplitMix64::new(seed),
            route_seq: 0,
        })
    }

    /// A random non-zero 32-bit value (tokens, request ids).
    fn rand32(&mut self) -> u32 {
        (self.rng.next_u64() as u32).max(1)
    }

    /// Queues `sid` in the timer queue if one of its timers moved earlier.
    fn schedule(&mut self, sid: SessionId) {
        if let Some(s) = self.sessions.get_mut(sid) {
            self.timers.schedule(sid, s.timers_mut());
        }
    }

    // ------------------------------------------------------------------ A. getters

    /// This Rpc's id within its Nexus.
    pub fn rpc_id(&self) -> u8 {
        self.p.rpc_id
    }

    /// The configuration.
    pub fn config(&self) -> &RpcConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> RpcStats {
        self.out.stats
    }

    /// Number of live session ends (client and server).
    pub fn num_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The state of a session, or `None` if it does not exist.
    pub fn session_state(&self, session: SessionId) -> Option<SessionState> {
        self.sessions.get(session).map(Session::state)
    }

    /// Requests issued on a client session and not yet completed (in slots and backlog).
    pub fn pending_requests(&self, session: SessionId) -> usize {
        self.sessions.client(session).map_or(0, |c| c.pending())
    }

    /// Largest message the session accepts (after the connect handshake: the agreed one).
    pub fn session_max_msg(&self, session: SessionId) -> Option<usize> {
        match self.sessions.get(session)? {
            Session::Client(c) => Some(c.max_msg),
            Session::Server(s) => Some(s.max_msg),
        }
    }

    /// Counters and the RTT estimate of a client session.
    pub fn session_stats(&self, session: SessionId) -> Option<SessionStats> {
        self.sessions.client(session).map(|c| c.stats)
    }

    /// Credits a client session has not spent (all of them when nothing is in flight).
    pub fn session_credits(&self, session: SessionId) -> Option<u32> {
        self.sessions.client(session).map(|c| c.credits.available())
    }

    /// Receive-ring entries reserved for this endpoint's session ends.
    pub fn ring_reserved(&self) -> usize {
        self.ring.reserved()
    }

    /// The front of the timer queue without the work of [`poll_timeout`](Endpoint::poll_timeout)
    /// (which first drops entries made stale since): never later than `poll_timeout`, at
    /// worst an early wake-up.
    #[inline]
    pub fn earliest_timer(&self) -> Option<u64> {
        self.timers.front()
    }

    /// The data of a request whose handler kept the handle to respond later.
    pub fn request_data(&self, handle: ReqHandle) -> Option<&[u8]> {
        self.sessions.server(handle.session)?.request_data(handle)
    }

    // ------------------------------------------------------------------ B. input

    /// Handles one received datapath packet.
    ///
    /// Malformed packets, packets naming no live session end or carrying the wrong token,
    /// and packets out of order are dropped and counted (`docs/PROTOCOL.md` §2).
    pub fn handle_packet(&mut self, now: u64, pkt: &[u8]) {
        let Ok((info, payload)) = PktHdr::parse(pkt) else {
            self.out.stats.dropped_malformed += 1;
            return;
        };
        self.out.stats.rx_pkts += 1;
        let sid = info.dest_session;
        let p = &self.p;
        let out = &mut self.out;
        match self.sessions.get_mut(sid) {
            Some(Session::Client(c))
                if c.local_token == info.token
                    && matches!(
                        c.state,
                        client::ClientState::Connected | client::ClientState::Disconnecting
                    ) =>
            {
                c.live.heard(now);
                match info.pkt_type {
                    PktType::CreditReturn => c.on_credit_return(&info, now, p, out),
                    PktType::Resp => c.on_response(&info, payload, now, p, out),
                    _ => out.stats.dropped_unexpected += 1,
                }
                self.timers.schedule(sid, &mut c.timers);
            }
            Some(Session::Server(s)) if s.local_token == info.token && s.is_live() => {
                s.live.heard(now);
                match info.pkt_type {
                    PktType::Req => s.on_request(&info, payload, out),
                    PktType::Rfr => s.on_rfr(&info, out),
                    _ => out.stats.dropped_unexpected += 1,
                }
            }
            _ => out.stats.dropped_bad_session += 1,
        }
    }

    /// Handles one session-management message that arrived from `from`.
    ///
    /// Pings never reach an endpoint: the peer's Nexus answers them ([`answer_ping`]).
    pub fn handle_sm(&mut self, now: u64, from: SmAddr, msg: SmMsg) {
        self.out.stats.sm_rx += 1;
        let sid = match msg.msg_type {
            SmType::ConnectReq => {
                self.on_connect_req(now, from, msg);
                return;
            }
            SmType::DisconnectReq => {
                self.on_disconnect_req(from, msg);
                return;
            }
            SmType::ConnectResp => {
                self.on_connect_resp(msg);
                msg.client_session
            }
            SmType::DisconnectResp => {
                self.on_disconnect_resp(msg);
                return;
            }
            SmType::ServerPong => {
                self.on_pong(now, msg);
                msg.client_session
            }
            SmType::ClientPong => {
                self.on_pong(now, msg);
                msg.server_session
            }
            SmType::ClientPing | SmType::ServerPing => return,
        };
        self.schedule(sid);
    }

    /// Handles the failure of a route that the transport reported
    /// (`Transport::poll_route_failure`: the connection under it closed or was reset, its
    /// queue pair entered ERROR): nothing more will arrive or leave on it, so its session end
    /// is ended at once instead of by the liveness timeout.
    ///
    /// A connected client end is reset as after a failed liveness check (every request it
    /// holds completes with [`RpcError::PeerFailed`], exactly once; [`Event::SessionReset`]);
    /// a connecting one fails its connect (`ConnectFailure::RoutingResolution`); a
    /// disconnecting one is freed. A server end is freed. The route is released
    /// ([`Event::FreeRoute`]), so a later [`reconnect`](Endpoint::reconnect) asks for a new
    /// one. A route no session end holds — freed already, or reported twice — is ignored.
    pub fn handle_route_failure(&mut self, now: u64, route: RouteId) {
        let Some(&sid) = self.routes.get(&route) else {
            return;
        };
        self.on_route_failure(sid, route, now);
        self.schedule(sid);
    }

    /// Handles the passing of time: every timer due at `now` fires — request deadlines,
    /// liveness pings and failure detection, go-back-N retransmission, SM retries and
    /// timeouts. Calling it early or more often than [`poll_timeout`](Endpoint::poll_timeout)
    /// asks is harmless.
    pub fn handle_timeout(&mut self, now: u64) {
        while let Some((at, sid)) = self.timers.pop_due(now) {
            let Some(s) = self.sessions.get_mut(sid) else {
                continue;
            };
            let t = s.timers_mut();
            if !timer::is_current(t, at) {
                continue;
            }
            timer::dequeued(t);
            self.service(sid, now);
            // Every service sets its timer for a later time or stops it; a timer left due
            // would fire again at once, and this loop would not end.
            if let Some(s) = self.sessions.get_mut(sid) {
                let left_due = s.timers_mut().stop_expired(now);
                debug_assert!(!left_due, "a timer of session {sid} was left due");
                if left_due {
                    tracing::error!(session = sid, "a timer was left due after its service");
                }
            }
            self.schedule(sid);
        }
    }

    /// Fires the due timers of one session end, in the order of [`Timer`].
    fn service(&mut self, sid: SessionId, now: u64) {
        let p = self.p;
        let due = |e: &Self, t: Timer| {
            e.sessions.get(sid).is_some_and(|s| match s {
                Session::Client(c) => c.timers.expired(t, now),
                Session::Server(s) => s.timers.expired(t, now),
            })
        };
        if due(self, Timer::Deadline) {
            if let Some(c) = self.sessions.client_mut(sid) {
                c.on_deadline_timer(now, &p, &mut self.out);
            }
        }
        if due(self, Timer::Liveness) {
            self.on_liveness_timer(sid, now);
        }
        if due(self, Timer::Retransmit) {
            if let Some(c) = self.sessions.client_mut(sid) {
                c.on_retransmit_timer(now, &p, &mut self.out);
            }
        }
        if due(self, Timer::Handshake) {
            self.on_handshake_timer(sid, now);
        }
    }

    // ------------------------------------------------------------------ C. commands

    /// A message buffer of `len` bytes from the pool (contents unspecified).
    pub fn alloc_msg(&mut self, len: usize) -> MsgBuf {
        self.out.pool.alloc(len)
    }

    /// A pooled message buffer holding a copy of `data`.
    pub fn msg_from(&mut self, data: &[u8]) -> MsgBuf {
        let mut m = self.out.pool.alloc(data.len());
        m.as_mut_slice().copy_from_slice(data);
        m
    }

    /// Returns a buffer to the pool.
    pub fn free_msg(&mut self, buf: MsgBuf) {
        self.out.pool.free(buf)
    }

    /// Issues a request on a client session. It ends in exactly one [`Event::Completion`].
    ///
    /// Up to `window` requests are in slots; more wait in a bounded backlog. Errors
    /// (`InvalidSession`, `NotConnected`, `MsgTooLarge`, `Overloaded` when the backlog is
    /// full) are returned at once, and the buffer goes back to the pool.
    pub fn enqueue_request(
        &mut self,
        now: u64,
        session: SessionId,
        r: NewRequest,
    ) -> Result<(), RpcError> {
        let p = self.p;
        let admitted = match self.sessions.client(session) {
            None => Err(RpcError::InvalidSession(session)),
            Some(c) => c.admits(r.req.len(), p.backlog_limit),
        };
        if let Err(e) = admitted {
            self.out.pool.free(r.req);
            return Err(e);
        }
        let Some(c) = self.sessions.client_mut(session) else {
            return Err(RpcError::InvalidSession(session));
        };
        self.out.stats.requests_sent += 1;
        let deadline = r.deadline.map_or(u64::MAX, |d| now.saturating_add(ns(d)));
        let pending = Pending {
            req_type: r.req_type,
            req: r.req,
            tag: r.tag,
            internal: r.internal,
            deadline,
        };
        c.submit(pending, now, &p, &mut self.out);
        self.timers.schedule(session, &mut c.timers);
        Ok(())
    }

    /// Cancels the first pending request on `session` that carries `tag` (and was issued with
    /// the same `internal`): it completes with [`RpcError::Cancelled`], its slot and credits
    /// are recovered. A server that received it already may still run its handler once.
    /// Returns whether a request was found.
    pub fn cancel_request(
        &mut self,
        now: u64,
        session: SessionId,
        tag: u64,
        internal: bool,
    ) -> bool {
        let p = self.p;
        let Some(c) = self.sessions.client_mut(session) else {
            return false;
        };
        let found = c.cancel(tag, internal, now, &p, &mut self.out);
        self.timers.schedule(session, &mut c.timers);
        found
    }

    /// Responds to a request with `resp` and `status` (anything but `Ok` sends an empty
    /// error response). Works from the handler or any time later. Fails with
    /// [`RpcError::StaleHandle`] if the request was answered already or its session is gone;
    /// the buffer then goes back to the pool.
    pub fn respond(
        &mut self,
        handle: ReqHandle,
        resp: MsgBuf,
        status: RespStatus,
    ) -> Result<(), RpcError> {
        match self.sessions.server_mut(handle.session) {
            Some(s) => s.respond(handle, resp, status, &mut self.out),
            None => {
                self.out.pool.free(resp);
                Err(RpcError::StaleHandle)
            }
        }
    }

    /// Takes the data of a request announced by [`Event::Request`] out of its slot, to run
    /// its handler on it: `(req_type, data)`. Give the buffer back with
    /// [`restore_request`](Endpoint::restore_request) when the handler returns. `None` if the
    /// request was answered or its session is gone.
    pub fn take_request(&mut self, handle: ReqHandle) -> Option<(u8, MsgBuf)> {
        let taken = self
            .sessions
            .server_mut(handle.session)?
            .take_request(handle);
        if taken.is_some() {
            self.out.stats.handlers_run += 1;
        }
        taken
    }

    /// Puts a request's data back after its handler ran (kept for
    /// [`request_data`](Endpoint::request_data) if the handler answers later).
    pub fn restore_request(&mut self, handle: ReqHandle, req: MsgBuf) {
        match self.sessions.server_mut(handle.session) {
            Some(s) => s.restore_request(handle, req, &mut self.out),
            None => self.out.pool.free(req),
        }
    }

    // ------------------------------------------------------------------ D. output

    /// The next event, if any (see the [module docs](self) for the order of the polls).
    #[must_use]
    #[inline]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.out.events.pop_front()
    }

    /// Whether events are queued for [`poll_event`](Endpoint::poll_event).
    #[inline]
    pub fn has_events(&self) -> bool {
        !self.out.events.is_empty()
    }

    /// Whether datapath packets are queued for [`poll_transmits`](Endpoint::poll_transmits).
    #[inline]
    pub fn has_transmits(&self) -> bool {
        !self.out.txq.is_empty()
    }

    /// Whether SM messages are queued for [`poll_sm`](Endpoint::poll_sm).
    #[inline]
    pub fn has_sm(&self) -> bool {
        !self.out.sm.is_empty()
    }

    /// Hands every queued datapath packet to `send`, in batches of at most 64 descriptors,
    /// grouped by route (in the order they were queued within a route, so that one peer's
    /// packets of an iteration are consecutive and a datagram transport can coalesce them, as
    /// UDP GSO does); each descriptor is a route, a header slice and a payload
    /// slice borrowed from the endpoint's buffers. Packets whose buffer is gone (their
    /// request completed since they were queued) are skipped and counted in `tx_skipped`.
    #[inline]
    pub fn poll_transmits(&mut self, send: impl FnMut(&[TxPkt<'_>])) {
        if self.out.txq.is_empty() {
            return;
        }
        let skipped = output::drain_transmits(
            &self.sessions,
            &mut self.out.txq,
            &mut self.out.tx_order,
            send,
        );
        self.out.stats.tx_skipped += skipped;
    }

    /// The next session-management message to send, if any.
    #[must_use]
    #[inline]
    pub fn poll_sm(&mut self) -> Option<SmTransmit> {
        self.out.sm.pop_front()
    }

    /// When [`handle_timeout`](Endpoint::handle_timeout) must be called next (ns), or `None`
    /// if no timer is armed. Timers may be armed early (see `timer.rs`): `handle_timeout` then
    /// finds less to do and arms them again.
    pub fn poll_timeout(&mut self) -> Option<u64> {
        let sessions = &self.sessions;
        self.timers.peek(|sid, at| {
            sessions.get(sid).is_some_and(|s| match s {
                Session::Client(c) => timer::is_current(&c.timers, at),
                Session::Server(s) => timer::is_current(&s.timers, at),
            })
        })
    }
}
