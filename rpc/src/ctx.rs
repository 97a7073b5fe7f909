//! The protocol core: sessions, slots, credits, retransmission — with no I/O.
//!
//! [`Ctx`] is a sans-IO state machine in the style of quinn-proto: packets come in through
//! `handle_pkt`, SM messages through `handle_sm`, time through the `now` arguments and
//! `handle_timers`; output accumulates in queues (`txq`, `sm_out`, `routes_to_free`, the ready
//! requests and the completions) that the [`Rpc`](crate::Rpc) event loop drains into the
//! transport, the SM channel, the handlers and the application. Handlers and continuations get
//! `&mut Ctx` to respond, allocate buffers and issue requests.
//!
//! Exchange numbering (per slot): the client's *tx items* are request packets `0..N` followed
//! by RFRs `N..N+M-1`; its *rx items* are credit returns `0..N-1`, then response packets
//! `N-1..N+M-1`. Item `i` in one direction answers item `i` in the other and both carry
//! `pkt_num = i`. Each tx item spends a session credit, each rx item returns one, so
//! `in flight = num_tx - num_rx` and go-back-N is `num_tx = num_rx`.

use std::collections::{HashMap, VecDeque};

use transports::rng::SplitMix64;
use transports::{RouteId, RoutingInfo, TransportError, TransportKind};

use crate::config::RpcConfig;
use crate::msgbuf::{BufPool, MsgBuf};
use crate::pkthdr::{PktHdr, PktInfo, PktType, RespStatus, HDR_SIZE};
use crate::session::*;
use crate::sm::{SmAddr, SmMsg, SmStatus, SmType};
use crate::stats::RpcStats;
use crate::RpcError;

/// Whether a silence may be called a failure: a ping went out during it (after the peer was
/// last heard) at least three quarters of the failure timeout ago. Silence alone is not
/// enough: this end may itself have been paused (not polling), and must ask first.
fn probe_expired(probe_since: u64, last_heard: u64, now: u64, timeout: u64) -> bool {
    probe_since > last_heard && now.saturating_sub(probe_since) >= timeout / 4 * 3
}

/// Route operations the core needs from the transport while handling SM messages.
pub(crate) trait Routes {
    fn alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError>;
    fn resolve(&mut self, route: RouteId, info: &RoutingInfo) -> Result<(), TransportError>;
    fn free(&mut self, route: RouteId);
}

impl<T: transports::Transport> Routes for T {
    fn alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        self.route_alloc()
    }
    fn resolve(&mut self, route: RouteId, info: &RoutingInfo) -> Result<(), TransportError> {
        transports::Transport::resolve(self, route, info)
    }
    fn free(&mut self, route: RouteId) {
        self.route_free(route)
    }
}

/// Identifies a request received by a server end, to respond to it (now or later).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ReqHandle {
    pub(crate) session: u32,
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

/// A request as a handler sees it.
#[derive(Debug)]
pub struct Request<'a> {
    /// Handle to respond with, now or later.
    pub handle: ReqHandle,
    /// The request type.
    pub req_type: u8,
    /// The request data.
    pub data: &'a [u8],
}

/// The outcome of a request this Rpc issued as a client.
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

/// Where a queued packet's payload lives.
#[derive(Clone, Copy)]
pub(crate) enum DataRef {
    None,
    /// Payload from a slot's message: `resp = false` is a client request buffer,
    /// `resp = true` a server response buffer. `pkt0` sends header + data from the headroom.
    Msg {
        session: u32,
        slot: u32,
        req_num: u64,
        resp: bool,
        off: usize,
        len: usize,
        pkt0: bool,
    },
}

pub(crate) struct TxItem {
    pub route: RouteId,
    pub hdr: PktHdr,
    pub data: DataRef,
}

type ConnKey = (SmAddr, u8, u32, u32);

/// The protocol core of one Rpc. See the module docs.
pub struct Ctx {
    pub(crate) cfg: RpcConfig,
    pub(crate) rpc_id: u8,
    kind: TransportKind,
    max_pkt: usize,
    ring_size: usize,
    ring_reserved: usize,
    sessions: Vec<Option<Session>>,
    free_ids: Vec<u32>,
    num_sessions: usize,
    conn_index: HashMap<ConnKey, u32>,
    /// Server-end sessions per remote Nexus (for `max_sessions_per_peer`).
    peer_sessions: HashMap<SmAddr, usize>,
    pub(crate) pool: BufPool,
    pub(crate) txq: Vec<TxItem>,
    pub(crate) sm_out: Vec<(SmAddr, SmMsg)>,
    pub(crate) routes_to_free: Vec<RouteId>,
    /// Changes to the sessions the Nexus answers pings for: (session, Some(token)) when a
    /// session end becomes live, (session, None) when it stops being live.
    pub(crate) liveness_changes: Vec<(u32, Option<u32>)>,
    pub(crate) ready: VecDeque<ReqHandle>,
    pub(crate) completions: VecDeque<Completion>,
    pub(crate) sync_done: Vec<Completion>,
    pub(crate) stats: RpcStats,
    rng: SplitMix64,
    now: u64,
}

impl Ctx {
    pub(crate) fn new(
        cfg: RpcConfig,
        rpc_id: u8,
        kind: TransportKind,
        max_pkt: usize,
        ring_size: usize,
        seed: u64,
    ) -> Self {
        Self {
            pool: BufPool::new(cfg.buffer_cache_bytes),
            cfg,
            rpc_id,
            kind,
            max_pkt,
            ring_size,
            ring_reserved: 0,
            sessions: Vec::new(),
            free_ids: Vec::new(),
            num_sessions: 0,
            conn_index: HashMap::new(),
            peer_sessions: HashMap::new(),
            txq: Vec::with_capacity(256),
            sm_out: Vec::new(),
            routes_to_free: Vec::new(),
            liveness_changes: Vec::new(),
            ready: VecDeque::new(),
            completions: VecDeque::new(),
            sync_done: Vec::new(),
            stats: RpcStats::default(),
            rng: SplitMix64::new(seed),
            now: 0,
        }
    }

    fn rand32(&mut self) -> u32 {
        (self.rng.next_u64() as u32).max(1)
    }

    // ------------------------------------------------------------------ public API

    /// This Rpc's id within its Nexus.
    pub fn rpc_id(&self) -> u8 {
        self.rpc_id
    }

    /// The configuration.
    pub fn config(&self) -> &RpcConfig {
        &self.cfg
    }

    /// The counters.
    pub fn stats(&self) -> RpcStats {
        self.stats
    }

    /// The time of the current event-loop iteration, in nanoseconds of the Rpc's clock.
    pub fn now_ns(&self) -> u64 {
        self.now
    }

    /// A message buffer of `len` bytes from the pool (contents unspecified).
    pub fn alloc_msg(&mut self, len: usize) -> MsgBuf {
        self.pool.alloc(len)
    }

    /// A pooled message buffer holding a copy of `data`.
    pub fn msg_from(&mut self, data: &[u8]) -> MsgBuf {
        let mut m = self.pool.alloc(data.len());
        m.as_mut_slice().copy_from_slice(data);
        m
    }

    /// Returns a buffer to the pool.
    pub fn free_msg(&mut self, buf: MsgBuf) {
        self.pool.free(buf)
    }

    /// Number of live sessions (both ends).
    pub fn num_sessions(&self) -> usize {
        self.num_sessions
    }

    /// The state of a session, or `None` if it does not exist.
    pub fn session_state(&self, session: SessionId) -> Option<SessionState> {
        match self.sessions.get(session as usize)?.as_ref()? {
            Session::Server(_) => Some(SessionState::ServerEnd),
            Session::Client(c) => Some(match c.state {
                ClientState::Connecting => SessionState::Connecting,
                ClientState::Connected => SessionState::Connected,
                ClientState::Disconnecting => SessionState::Disconnecting,
                ClientState::Failed(f) => SessionState::Failed(f),
            }),
        }
    }

    /// Requests issued on a client session and not yet completed (in slots and backlog).
    pub fn pending_requests(&self, session: SessionId) -> usize {
        match self.client(session) {
            Some(c) => c.active_slots + c.backlog.len(),
            None => 0,
        }
    }

    /// Largest message the session accepts (after the connect handshake agreed on it).
    pub fn session_max_msg(&self, session: SessionId) -> Option<usize> {
        match self.sessions.get(session as usize)?.as_ref()? {
            Session::Client(c) => Some(c.max_msg),
            Session::Server(s) => Some(s.max_msg),
        }
    }

    /// Issues a request on a client session. The outcome arrives as a [`Completion`] carrying
    /// `tag` (through the Rpc's continuation, or [`Rpc::poll_completion`](crate::Rpc::poll_completion)).
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
        let d = self.cfg.default_deadline;
        self.enqueue_inner(session, req_type, req, tag, false, d)
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
        deadline: Option<std::time::Duration>,
    ) -> Result<(), RpcError> {
        self.enqueue_inner(session, req_type, req, tag, false, deadline)
    }

    /// Cancels the first pending request on `session` that carries `tag`: it completes with
    /// [`RpcError::Cancelled`] (its slot and credits are recovered; a server that already
    /// received it may still run its handler once). Returns whether a request was found.
    pub fn cancel_request(&mut self, session: SessionId, tag: u64) -> bool {
        self.cancel_inner(session, tag, false)
    }

    pub(crate) fn cancel_inner(&mut self, session: SessionId, tag: u64, internal: bool) -> bool {
        let Some(c) = self.client_mut(session) else {
            return false;
        };
        if let Some(i) = c
            .slots
            .iter()
            .position(|s| s.active && s.tag == tag && s.internal == internal)
        {
            self.stats.cancelled += 1;
            self.complete_slot(session, i, Err(RpcError::Cancelled));
            return true;
        }
        if let Some(i) = c
            .backlog
            .iter()
            .position(|p| p.tag == tag && p.internal == internal)
        {
            if let Some(p) = c.backlog.remove(i) {
                self.stats.cancelled += 1;
                self.fail_pending(session, p, RpcError::Cancelled);
                return true;
            }
        }
        false
    }

    /// Counters and the RTT estimate of a client session.
    pub fn session_stats(&self, session: SessionId) -> Option<crate::stats::SessionStats> {
        self.client(session).map(|c| c.stats)
    }

    pub(crate) fn set_now(&mut self, now: u64) {
        self.now = now;
    }

    pub(crate) fn enqueue_inner(
        &mut self,
        session: SessionId,
        req_type: u8,
        req: MsgBuf,
        tag: u64,
        internal: bool,
        deadline: Option<std::time::Duration>,
    ) -> Result<(), RpcError> {
        let limit = self.cfg.backlog_limit;
        let now = self.now;
        let check = match self.client_mut(session) {
            None => Err(RpcError::InvalidSession(session)),
            Some(c) => match c.state {
                ClientState::Connected | ClientState::Connecting => {
                    if req.len() > c.max_msg {
                        Err(RpcError::MsgTooLarge {
                            size: req.len(),
                            max: c.max_msg,
                        })
                    } else if c.active_slots + c.backlog.len() >= c.slots.len() + limit {
                        Err(RpcError::Overloaded)
                    } else {
                        Ok(matches!(c.state, ClientState::Connected))
                    }
                }
                _ => Err(RpcError::NotConnected(session)),
            },
        };
        let connected = match check {
            Ok(c) => c,
            Err(e) => {
                self.pool.free(req);
                return Err(e);
            }
        };
        self.stats.requests_sent += 1;
        let deadline = deadline.map_or(u64::MAX, |d| {
            now.saturating_add(d.as_nanos().min(u128::from(u64::MAX)) as u64)
        });
        let pending = Pending {
            req_type,
            req,
            tag,
            internal,
            deadline,
        };
        let Some(c) = self.client_mut(session) else {
            return Ok(());
        };
        c.stats.requests += 1;
        let free_slot = if connected && c.backlog.is_empty() {
            c.slots.iter().position(|s| !s.active)
        } else {
            None
        };
        match free_slot {
            Some(i) => self.start_request(session, i, pending, now),
            None => {
                c.backlog_min_deadline = c.backlog_min_deadline.min(pending.deadline);
                c.backlog.push_back(pending);
            }
        }
        Ok(())
    }

    /// Responds to a request with `resp`. Works from inside the handler or any time later on
    /// the Rpc's thread. Fails with [`RpcError::StaleHandle`] if the request was already
    /// answered or its session is gone (the buffer then goes back to the pool).
    pub fn respond(&mut self, handle: ReqHandle, resp: MsgBuf) -> Result<(), RpcError> {
        self.respond_status(handle, resp, RespStatus::Ok)
    }

    /// Responds with a copy of `data`.
    pub fn respond_with(&mut self, handle: ReqHandle, data: &[u8]) -> Result<(), RpcError> {
        let m = self.msg_from(data);
        self.respond(handle, m)
    }

    /// The data of a request whose handler kept the handle to respond later.
    pub fn request_data(&self, handle: ReqHandle) -> Option<&[u8]> {
        let s = self.server(handle.session)?;
        if s.local_token != handle.token {
            return None;
        }
        let slot = s.slots.get(handle.req_num as usize % s.slots.len())?;
        if slot.req_num != handle.req_num || slot.state != ServerSlotState::InHandler {
            return None;
        }
        slot.req.as_ref().map(|b| b.as_slice())
    }

    // ------------------------------------------------------------------ internals: lookup

    fn client(&self, id: u32) -> Option<&ClientSession> {
        match self.sessions.get(id as usize)?.as_ref()? {
            Session::Client(c) => Some(&**c),
            Session::Server(_) => None,
        }
    }

    fn client_mut(&mut self, id: u32) -> Option<&mut ClientSession> {
        match self.sessions.get_mut(id as usize)?.as_mut()? {
            Session::Client(c) => Some(&mut **c),
            Session::Server(_) => None,
        }
    }

    fn server(&self, id: u32) -> Option<&ServerSession> {
        match self.sessions.get(id as usize)?.as_ref()? {
            Session::Server(s) => Some(&**s),
            Session::Client(_) => None,
        }
    }

    fn server_mut(&mut self, id: u32) -> Option<&mut ServerSession> {
        match self.sessions.get_mut(id as usize)?.as_mut()? {
            Session::Server(s) => Some(&mut **s),
            Session::Client(_) => None,
        }
    }

    fn alloc_session_id(&mut self) -> u32 {
        if let Some(id) = self.free_ids.pop() {
            return id;
        }
        self.sessions.push(None);
        (self.sessions.len() - 1) as u32
    }

    fn release_session(&mut self, id: u32) -> Option<Session> {
        let s = self.sessions.get_mut(id as usize)?.take()?;
        self.free_ids.push(id);
        self.num_sessions -= 1;
        Some(s)
    }

    fn admit(&self, credits: u32) -> Result<(), SmStatus> {
        if self.num_sessions >= self.cfg.max_sessions {
            return Err(SmStatus::TooManySessions);
        }
        if self.ring_reserved + credits as usize > self.ring_size {
            return Err(SmStatus::RingExhausted);
        }
        Ok(())
    }

    // ------------------------------------------------------------------ client: sending

    fn start_request(&mut self, session: u32, slot_idx: usize, p: Pending, now: u64) {
        let Some(c) = self.client_mut(session) else {
            return;
        };
        let dpp = c.dpp;
        let Some(slot) = c.slots.get_mut(slot_idx) else {
            return;
        };
        slot.active = true;
        slot.internal = p.internal;
        slot.req_type = p.req_type;
        slot.tag = p.tag;
        slot.n_req = pkts_for(p.req.len(), dpp);
        slot.req = Some(p.req);
        slot.n_resp = 0;
        slot.num_tx = 0;
        slot.num_rx = 0;
        slot.progress = now;
        slot.deadline = p.deadline;
        slot.started = now;
        slot.retransmitted = false;
        c.active_slots += 1;
        self.pump_slot(session, slot_idx);
    }

    /// Sends what the slot may send with the session's credits.
    fn pump_slot(&mut self, session: u32, slot_idx: usize) {
        let Some(Some(Session::Client(c))) = self.sessions.get_mut(session as usize) else {
            return;
        };
        let c = &mut **c;
        let Some(slot) = c.slots.get_mut(slot_idx) else {
            return;
        };
        if !slot.active {
            return;
        }
        loop {
            let can_req = slot.num_tx < slot.n_req;
            let can_rfr = slot.n_resp > 0
                && slot.num_rx >= slot.n_req
                && slot.num_tx < slot.n_req + slot.n_resp - 1;
            if !can_req && !can_rfr {
                break;
            }
            if c.credits == 0 {
                c.stalled = true;
                self.stats.credit_stalls += 1;
                break;
            }
            let p = slot.num_tx;
            let req_len = slot.req.as_ref().map_or(0, |b| b.len());
            let mut info = PktInfo {
                pkt_type: PktType::Req,
                req_type: slot.req_type,
                dest_session: c.remote_session,
                pkt_num: p,
                msg_size: req_len as u32,
                req_num: slot.req_num,
                token: c.remote_token,
                status: 0,
            };
            let data = if can_req {
                let len = pkt_len(req_len, c.dpp, p);
                let hdr = PktHdr::new(&info);
                if p == 0 {
                    if let Some(b) = slot.req.as_mut() {
                        let mut h = [0u8; HDR_SIZE];
                        h.copy_from_slice(hdr.as_bytes());
                        b.set_hdr0(&h);
                    }
                }
                self.txq.push(TxItem {
                    route: c.route,
                    hdr,
                    data: DataRef::Msg {
                        session,
                        slot: slot_idx as u32,
                        req_num: slot.req_num,
                        resp: false,
                        off: p as usize * c.dpp,
                        len,
                        pkt0: p == 0,
                    },
                });
                true
            } else {
                info.pkt_type = PktType::Rfr;
                self.txq.push(TxItem {
                    route: c.route,
                    hdr: PktHdr::new(&info),
                    data: DataRef::None,
                });
                true
            };
            debug_assert!(data);
            self.stats.tx_pkts += 1;
            slot.num_tx += 1;
            c.credits -= 1;
        }
    }

    fn pump_session(&mut self, session: u32) {
        let n = match self.client_mut(session) {
            Some(c) => {
                c.stalled = false;
                c.slots.len()
            }
            None => return,
        };
        for i in 0..n {
            self.pump_slot(session, i);
        }
    }

    fn complete_slot(&mut self, session: u32, slot_idx: usize, result: Result<(), RpcError>) {
        let now = self.now;
        let Some(c) = self.client_mut(session) else {
            return;
        };
        let window = c.slots.len() as u64;
        let Some(slot) = c.slots.get_mut(slot_idx) else {
            return;
        };
        if !slot.active {
            return;
        }
        // Credits of packets still in flight come back: their answers will be dropped as
        // stale once the slot moves on.
        c.credits += slot.num_tx - slot.num_rx;
        slot.active = false;
        slot.req_num += window;
        c.active_slots -= 1;
        let req = slot.req.take().unwrap_or_else(|| MsgBuf::new(0));
        let resp = slot.resp.take();
        let completion = Completion {
            session,
            tag: slot.tag,
            req_type: slot.req_type,
            req,
            result: result.and_then(|()| resp.ok_or(RpcError::HandlerFailed)),
        };
        let internal = slot.internal;
        if completion.result.is_ok() {
            c.stats.completed += 1;
            if !slot.retransmitted {
                let sample = now.saturating_sub(slot.started);
                c.stats.rtt_ns = if c.stats.rtt_ns == 0 {
                    sample
                } else {
                    (c.stats.rtt_ns * 7 + sample) / 8
                };
            }
        } else {
            c.stats.failed += 1;
        }
        self.push_completion(completion, internal);
        self.start_from_backlog(session, slot_idx, now);
        self.pump_session(session);
    }

    /// Hands a completion to `Rpc::call` (internal requests) or to the application.
    fn push_completion(&mut self, c: Completion, internal: bool) {
        if c.result.is_ok() {
            self.stats.responses_received += 1;
        } else {
            self.stats.requests_failed += 1;
        }
        if internal {
            self.sync_done.push(c);
        } else {
            self.completions.push_back(c);
        }
    }

    /// Starts the next backlogged request that fits the session's agreed message size in the
    /// free slot `slot_idx`; requests that do not fit complete with `MsgTooLarge`.
    fn start_from_backlog(&mut self, session: u32, slot_idx: usize, now: u64) {
        loop {
            let Some(c) = self.client_mut(session) else {
                return;
            };
            if !matches!(c.state, ClientState::Connected) {
                return;
            }
            let max = c.max_msg;
            let Some(p) = c.backlog.pop_front() else {
                return;
            };
            if p.req.len() <= max {
                self.start_request(session, slot_idx, p, now);
                return;
            }
            let size = p.req.len();
            self.fail_pending(session, p, RpcError::MsgTooLarge { size, max });
        }
    }

    /// Completes a request that never got a slot with `err`.
    fn fail_pending(&mut self, session: u32, p: Pending, err: RpcError) {
        if let Some(c) = self.client_mut(session) {
            c.stats.failed += 1;
        }
        let internal = p.internal;
        self.push_completion(
            Completion {
                session,
                tag: p.tag,
                req_type: p.req_type,
                req: p.req,
                result: Err(err),
            },
            internal,
        );
    }

    // ------------------------------------------------------------------ server: sending

    fn queue_resp_pkt(&mut self, session: u32, slot_idx: usize, k: u32) {
        let Some(Some(Session::Server(s))) = self.sessions.get_mut(session as usize) else {
            return;
        };
        let Some(slot) = s.slots.get_mut(slot_idx) else {
            return;
        };
        let Some(resp) = slot.resp.as_mut() else {
            return;
        };
        let size = resp.len();
        let info = PktInfo {
            pkt_type: PktType::Resp,
            req_type: slot.req_type,
            dest_session: s.client_session,
            pkt_num: slot.n_req - 1 + k,
            msg_size: size as u32,
            req_num: slot.req_num,
            token: s.client_token,
            status: slot.status,
        };
        let hdr = PktHdr::new(&info);
        if k == 0 {
            let mut h = [0u8; HDR_SIZE];
            h.copy_from_slice(hdr.as_bytes());
            resp.set_hdr0(&h);
        }
        self.txq.push(TxItem {
            route: s.route,
            hdr,
            data: DataRef::Msg {
                session,
                slot: slot_idx as u32,
                req_num: slot.req_num,
                resp: true,
                off: k as usize * s.dpp,
                len: pkt_len(size, s.dpp, k),
                pkt0: k == 0,
            },
        });
        self.stats.tx_pkts += 1;
    }

    fn queue_cr(&mut self, session: u32, slot_idx: usize, p: u32) {
        let Some(s) = self.server(session) else {
            return;
        };
        let Some(slot) = s.slots.get(slot_idx) else {
            return;
        };
        let info = PktInfo {
            pkt_type: PktType::CreditReturn,
            req_type: slot.req_type,
            dest_session: s.client_session,
            pkt_num: p,
            msg_size: slot.msg_size,
            req_num: slot.req_num,
            token: s.client_token,
            status: 0,
        };
        let route = s.route;
        self.txq.push(TxItem {
            route,
            hdr: PktHdr::new(&info),
            data: DataRef::None,
        });
        self.stats.tx_pkts += 1;
    }

    pub(crate) fn respond_status(
        &mut self,
        handle: ReqHandle,
        mut resp: MsgBuf,
        mut status: RespStatus,
    ) -> Result<(), RpcError> {
        let Some(s) = self.server_mut(handle.session) else {
            self.pool.free(resp);
            return Err(RpcError::StaleHandle);
        };
        let slot_idx = handle.req_num as usize % s.slots.len().max(1);
        let max = s.max_msg;
        let dpp = s.dpp;
        let ok = s.local_token == handle.token
            && s.slots.get(slot_idx).is_some_and(|slot| {
                slot.req_num == handle.req_num && slot.state == ServerSlotState::InHandler
            });
        if !ok {
            self.pool.free(resp);
            return Err(RpcError::StaleHandle);
        }
        if resp.len() > max {
            status = RespStatus::ResponseTooLarge;
        }
        if status != RespStatus::Ok {
            resp.resize(0);
        }
        let mut old_req = None;
        if let Some(slot) = s.slots.get_mut(slot_idx) {
            slot.n_resp = pkts_for(resp.len(), dpp);
            slot.status = status as u8;
            slot.resp = Some(resp);
            slot.state = ServerSlotState::Responded;
            old_req = slot.req.take();
        }
        if let Some(b) = old_req {
            self.pool.free(b);
        }
        self.queue_resp_pkt(handle.session, slot_idx, 0);
        Ok(())
    }

    /// Takes the request buffer out of its slot to run the handler on it.
    pub(crate) fn take_request(&mut self, h: ReqHandle) -> Option<(u8, MsgBuf)> {
        let s = self.server_mut(h.session)?;
        if s.local_token != h.token {
            return None;
        }
        let n = s.slots.len();
        let slot = s.slots.get_mut(h.req_num as usize % n)?;
        if slot.req_num != h.req_num || slot.state != ServerSlotState::InHandler {
            return None;
        }
        let req = slot.req.take()?;
        Some((slot.req_type, req))
    }

    /// Puts the request buffer back after the handler ran (if it deferred the response).
    pub(crate) fn restore_request(&mut self, h: ReqHandle, req: MsgBuf) {
        let keep = self.server_mut(h.session).and_then(|s| {
            let n = s.slots.len();
            let slot = s.slots.get_mut(h.req_num as usize % n)?;
            (slot.req_num == h.req_num && slot.state == ServerSlotState::InHandler).then_some(slot)
        });
        match keep {
            Some(slot) => slot.req = Some(req),
            None => self.pool.free(req),
        }
    }

    // ------------------------------------------------------------------ receive path

    /// Handles one received datapath packet.
    pub(crate) fn handle_pkt(&mut self, now: u64, pkt: &[u8]) {
        self.now = now;
        let (info, payload) = match PktHdr::parse(pkt) {
            Ok(v) => v,
            Err(_) => {
                self.stats.dropped_malformed += 1;
                return;
            }
        };
        self.stats.rx_pkts += 1;
        let sid = info.dest_session;
        let now = self.now;
        match self.sessions.get_mut(sid as usize).and_then(|s| s.as_mut()) {
            Some(Session::Client(c)) if c.local_token == info.token => c.last_heard = now,
            Some(Session::Server(s)) if s.local_token == info.token => s.last_heard = now,
            _ => {}
        }
        match self.sessions.get(sid as usize).and_then(|s| s.as_ref()) {
            Some(Session::Client(c))
                if c.local_token == info.token
                    && matches!(c.state, ClientState::Connected | ClientState::Disconnecting) =>
            {
                match info.pkt_type {
                    PktType::CreditReturn => self.client_rx_cr(sid, &info),
                    PktType::Resp => self.client_rx_resp(sid, &info, payload),
                    _ => self.stats.dropped_unexpected += 1,
                }
            }
            Some(Session::Server(s)) if s.local_token == info.token => match info.pkt_type {
                PktType::Req => self.server_rx_req(sid, &info, payload),
                PktType::Rfr => self.server_rx_rfr(sid, &info),
                _ => self.stats.dropped_unexpected += 1,
            },
            _ => self.stats.dropped_bad_session += 1,
        }
    }

    fn client_rx_cr(&mut self, sid: u32, info: &PktInfo) {
        let now = self.now;
        let Some(c) = self.client_mut(sid) else {
            return;
        };
        let n = c.slots.len();
        let idx = info.req_num as usize % n;
        let Some(slot) = c.slots.get_mut(idx) else {
            return;
        };
        let req_len = slot.req.as_ref().map_or(0, |b| b.len());
        let ok = slot.active
            && slot.req_num == info.req_num
            && info.pkt_num == slot.num_rx
            && slot.num_rx < slot.num_tx
            && info.pkt_num + 1 < slot.n_req
            && info.msg_size as usize == req_len;
        if !ok {
            self.stats.dropped_unexpected += 1;
            return;
        }
        slot.num_rx += 1;
        slot.progress = now;
        c.credits += 1;
        let stalled = c.stalled;
        if stalled {
            self.pump_session(sid);
        } else {
            self.pump_slot(sid, idx);
        }
    }

    fn client_rx_resp(&mut self, sid: u32, info: &PktInfo, payload: &[u8]) {
        let now = self.now;
        let Some(c) = self.client_mut(sid) else {
            return;
        };
        let n = c.slots.len();
        let idx = info.req_num as usize % n;
        let dpp = c.dpp;
        let max_msg = c.max_msg;
        let Some(slot) = c.slots.get_mut(idx) else {
            return;
        };
        if !(slot.active
            && slot.req_num == info.req_num
            && info.pkt_num == slot.num_rx
            && slot.num_rx < slot.num_tx
            && info.pkt_num + 1 >= slot.n_req)
        {
            self.stats.dropped_unexpected += 1;
            return;
        }
        let k = info.pkt_num + 1 - slot.n_req;
        let size = info.msg_size as usize;
        if k == 0 {
            let status = RespStatus::from_u8(info.status);
            let err = match status {
                Some(RespStatus::Ok) => None,
                Some(RespStatus::NoHandler) => Some(RpcError::NoHandler(slot.req_type)),
                Some(RespStatus::Overloaded) => Some(RpcError::RemoteOverloaded),
                Some(RespStatus::ResponseTooLarge) | Some(RespStatus::HandlerFailed) => {
                    Some(RpcError::HandlerFailed)
                }
                None => {
                    self.stats.dropped_malformed += 1;
                    return;
                }
            };
            if let Some(e) = err {
                slot.num_rx += 1;
                c.credits += 1;
                self.complete_slot(sid, idx, Err(e));
                return;
            }
            if size > max_msg || payload.len() != pkt_len(size, dpp, 0) {
                self.stats.dropped_malformed += 1;
                return;
            }
            let mut resp = self.pool.alloc(size);
            resp.write_at(0, payload);
            let Some(c) = self.client_mut(sid) else {
                return;
            };
            let Some(slot) = c.slots.get_mut(idx) else {
                return;
            };
            slot.n_resp = pkts_for(size, dpp);
            slot.resp = Some(resp);
        } else {
            let ok = slot.resp.as_ref().is_some_and(|r| r.len() == size)
                && info.status == 0
                && payload.len() == pkt_len(size, dpp, k);
            if !ok {
                self.stats.dropped_malformed += 1;
                return;
            }
            if let Some(r) = slot.resp.as_mut() {
                r.write_at(k as usize * dpp, payload);
            }
        }
        let Some(c) = self.client_mut(sid) else {
            return;
        };
        let Some(slot) = c.slots.get_mut(idx) else {
            return;
        };
        slot.num_rx += 1;
        slot.progress = now;
        c.credits += 1;
        if slot.num_rx == slot.n_req + slot.n_resp - 1 {
            self.complete_slot(sid, idx, Ok(()));
        } else if c.stalled {
            self.pump_session(sid);
        } else {
            self.pump_slot(sid, idx);
        }
    }

    fn server_rx_req(&mut self, sid: u32, info: &PktInfo, payload: &[u8]) {
        let max_msg = self.cfg.max_msg_size;
        let Some(s) = self.server_mut(sid) else {
            return;
        };
        let n = s.slots.len();
        let idx = info.req_num as usize % n;
        let dpp = s.dpp;
        let session_max = s.max_msg.min(max_msg);
        let Some(slot) = s.slots.get_mut(idx) else {
            return;
        };
        let size = info.msg_size as usize;
        let fresh = slot.state == ServerSlotState::Empty || info.req_num > slot.req_num;
        if !fresh && info.req_num < slot.req_num {
            self.stats.dropped_unexpected += 1;
            return;
        }
        if fresh {
            if info.pkt_num != 0 {
                self.stats.dropped_unexpected += 1;
                return;
            }
            if size > session_max || payload.len() != pkt_len(size, dpp, 0) {
                self.stats.dropped_malformed += 1;
                return;
            }
            // A new request on this slot: the previous response is no longer needed.
            let old_resp = slot.resp.take();
            let old_req = slot.req.take();
            slot.req_num = info.req_num;
            slot.state = ServerSlotState::Receiving;
            slot.req_type = info.req_type;
            slot.msg_size = info.msg_size;
            slot.n_req = pkts_for(size, dpp);
            slot.num_rx = 0;
            slot.n_resp = 0;
            slot.status = 0;
            for b in [old_resp, old_req].into_iter().flatten() {
                self.pool.free(b);
            }
            let buf = self.pool.alloc(size);
            let Some(s) = self.server_mut(sid) else {
                return;
            };
            let Some(slot) = s.slots.get_mut(idx) else {
                return;
            };
            slot.req = Some(buf);
        }
        let Some(s) = self.server_mut(sid) else {
            return;
        };
        let Some(slot) = s.slots.get_mut(idx) else {
            return;
        };
        if info.msg_size != slot.msg_size || info.req_type != slot.req_type {
            self.stats.dropped_malformed += 1;
            return;
        }
        let p = info.pkt_num;
        let last = slot.n_req - 1;
        match slot.state {
            ServerSlotState::Receiving if p == slot.num_rx => {
                if payload.len() != pkt_len(size, dpp, p) {
                    self.stats.dropped_malformed += 1;
                    return;
                }
                if let Some(b) = slot.req.as_mut() {
                    b.write_at(p as usize * dpp, payload);
                }
                slot.num_rx += 1;
                if p < last {
                    self.queue_cr(sid, idx, p);
                } else {
                    slot.state = ServerSlotState::InHandler;
                    let token = s.local_token;
                    self.ready.push_back(ReqHandle {
                        session: sid,
                        token,
                        req_num: info.req_num,
                    });
                }
            }
            _ if p < last && p < slot.num_rx => {
                // A retransmitted non-final packet we already have: its credit return was lost.
                self.stats.dropped_unexpected += 1;
                self.queue_cr(sid, idx, p);
            }
            ServerSlotState::Responded if p == last => {
                // The response was lost: send packet 0 again (the client pulls the rest).
                self.stats.dropped_unexpected += 1;
                self.queue_resp_pkt(sid, idx, 0);
            }
            _ => self.stats.dropped_unexpected += 1,
        }
    }

    fn server_rx_rfr(&mut self, sid: u32, info: &PktInfo) {
        let Some(s) = self.server(sid) else {
            return;
        };
        let idx = info.req_num as usize % s.slots.len();
        let Some(slot) = s.slots.get(idx) else {
            return;
        };
        let ok = slot.state == ServerSlotState::Responded
            && slot.req_num == info.req_num
            && info.pkt_num >= slot.n_req
            && info.pkt_num < slot.n_req + slot.n_resp - 1;
        if !ok {
            self.stats.dropped_unexpected += 1;
            return;
        }
        let k = info.pkt_num + 1 - slot.n_req;
        self.queue_resp_pkt(sid, idx, k);
    }

    // ------------------------------------------------------------------ timers

    /// Retransmits stalled slots and retries or times out SM exchanges.
    pub(crate) fn handle_timers(&mut self, now: u64) {
        self.now = now;
        let rto = self.cfg.rto.as_nanos() as u64;
        let retry = self.cfg.sm_retry.as_nanos() as u64;
        for sid in 0..self.sessions.len() as u32 {
            self.expire_deadlines(sid, now);
            self.check_liveness(sid, now);
            let Some(Some(Session::Client(c))) = self.sessions.get_mut(sid as usize) else {
                continue;
            };
            match c.state {
                ClientState::Connected => {
                    if c.active_slots == 0 {
                        continue;
                    }
                    let mut rewound = false;
                    for slot in c.slots.iter_mut() {
                        if slot.active
                            && slot.num_tx > slot.num_rx
                            && now.saturating_sub(slot.progress) >= rto
                        {
                            c.credits += slot.num_tx - slot.num_rx;
                            slot.num_tx = slot.num_rx;
                            slot.progress = now;
                            slot.retransmitted = true;
                            c.stats.retransmissions += 1;
                            self.stats.retransmissions += 1;
                            rewound = true;
                        }
                    }
                    if rewound {
                        self.pump_session(sid);
                    }
                }
                ClientState::Connecting | ClientState::Disconnecting => {
                    if now >= c.sm_deadline {
                        self.sm_timeout(sid);
                    } else if now >= c.sm_retry_at {
                        c.sm_retry_at = now + retry;
                        let msg = self.client_sm_msg(sid);
                        if let Some((to, m)) = msg {
                            self.sm_out.push((to, m));
                        }
                    }
                }
                ClientState::Failed(_) => {}
            }
        }
    }

    /// Completes the requests of a client session whose deadline passed.
    fn expire_deadlines(&mut self, sid: u32, now: u64) {
        let Some(c) = self.client_mut(sid) else {
            return;
        };
        let mut expired = 0u64;
        let due: Vec<usize> = (0..c.slots.len())
            .filter(|&i| {
                c.slots
                    .get(i)
                    .is_some_and(|s| s.active && s.deadline <= now)
            })
            .collect();
        for i in due {
            expired += 1;
            self.complete_slot(sid, i, Err(RpcError::DeadlineExceeded));
        }
        let Some(c) = self.client_mut(sid) else {
            return;
        };
        // The backlog can be long: look at it only when its earliest deadline may have passed
        // (the bound is exact after a scan and only too early after removals).
        if c.backlog_min_deadline <= now {
            let (due, keep): (VecDeque<Pending>, VecDeque<Pending>) =
                c.backlog.drain(..).partition(|p| p.deadline <= now);
            c.backlog_min_deadline = keep.iter().map(|p| p.deadline).min().unwrap_or(u64::MAX);
            c.backlog = keep;
            for p in due {
                expired += 1;
                self.fail_pending(sid, p, RpcError::DeadlineExceeded);
            }
        }
        if expired > 0 {
            self.stats.deadline_exceeded += expired;
            if let Some(c) = self.client_mut(sid) {
                c.stats.deadline_exceeded += expired;
            }
        }
    }

    /// Pings a silent peer; declares it failed after `failure_timeout` of silence.
    fn check_liveness(&mut self, sid: u32, now: u64) {
        let Some(timeout) = self.cfg.failure_timeout else {
            return;
        };
        let timeout = timeout.as_nanos() as u64;
        let interval = timeout / 4;
        let kind = self.kind;
        let rpc_id = self.rpc_id;
        match self.sessions.get_mut(sid as usize).and_then(|s| s.as_mut()) {
            Some(Session::Client(c)) if matches!(c.state, ClientState::Connected) => {
                let silent = now.saturating_sub(c.last_heard);
                if silent >= timeout && probe_expired(c.probe_since, c.last_heard, now, timeout) {
                    tracing::info!(session = sid, "peer failed: resetting the session");
                    self.reset_client(sid);
                } else if silent >= interval && now.saturating_sub(c.last_ping) >= interval {
                    c.last_ping = now;
                    if c.probe_since <= c.last_heard {
                        c.probe_since = now;
                    }
                    if let Some((to, mut m)) = self.client_sm_msg_any(sid) {
                        m.msg_type = SmType::ClientPing;
                        self.stats.pings_sent += 1;
                        self.sm_out.push((to, m));
                    }
                }
            }
            Some(Session::Server(s)) => {
                let silent = now.saturating_sub(s.last_heard);
                if silent >= timeout && probe_expired(s.probe_since, s.last_heard, now, timeout) {
                    tracing::info!(session = sid, "client failed: freeing its session");
                    self.stats.server_sessions_reaped += 1;
                    self.free_server(sid);
                } else if silent >= interval && now.saturating_sub(s.last_ping) >= interval {
                    s.last_ping = now;
                    if s.probe_since <= s.last_heard {
                        s.probe_since = now;
                    }
                    let m = SmMsg {
                        msg_type: SmType::ServerPing,
                        transport: kind,
                        status: SmStatus::Ok,
                        client_rpc: s.client_rpc,
                        server_rpc: rpc_id,
                        client_session: s.client_session,
                        server_session: sid,
                        client_token: s.client_token,
                        server_token: s.local_token,
                        seq: 0,
                        max_pkt_size: (s.dpp + HDR_SIZE) as u32,
                        max_msg_size: s.max_msg as u32,
                        credits: s.credits,
                        window: s.slots.len() as u32,
                        routing: s.local_routing,
                    };
                    self.stats.pings_sent += 1;
                    self.sm_out.push((s.client.clone(), m));
                }
            }
            _ => {}
        }
    }

    /// A connected client session's peer failed: every pending request completes with
    /// `PeerFailed` (exactly once), and the session waits in `Failed(PeerFailed)` for
    /// `reconnect` or `destroy_session`.
    fn reset_client(&mut self, sid: u32) {
        let credits = self.cfg.credits as usize;
        let Some(c) = self.client_mut(sid) else {
            return;
        };
        match c.state {
            ClientState::Connected => {}
            ClientState::Disconnecting => {
                self.free_client(sid);
                return;
            }
            _ => return,
        }
        c.state = ClientState::Failed(ConnectFailure::PeerFailed);
        c.stats.resets += 1;
        let active: Vec<usize> = (0..c.slots.len())
            .filter(|&i| c.slots.get(i).is_some_and(|s| s.active))
            .collect();
        let backlog: Vec<Pending> = c.backlog.drain(..).collect();
        self.liveness_changes.push((sid, None));
        self.stats.sessions_reset += 1;
        self.ring_reserved = self.ring_reserved.saturating_sub(credits);
        for i in active {
            self.complete_slot(sid, i, Err(RpcError::PeerFailed));
        }
        for p in backlog {
            self.fail_pending(sid, p, RpcError::PeerFailed);
        }
    }

    /// Reopens a failed client session (after a peer failure, or a failed connect) with a
    /// new handshake; requests may be enqueued while it connects.
    pub(crate) fn reconnect(&mut self, now: u64, sid: u32) -> Result<(), RpcError> {
        self.now = now;
        let credits = self.cfg.credits;
        match self.client(sid) {
            None => return Err(RpcError::InvalidSession(sid)),
            Some(c) if !matches!(c.state, ClientState::Failed(_)) => {
                return Err(RpcError::Config(format!(
                    "session {sid} is not failed; only failed sessions reconnect"
                )))
            }
            Some(_) => {}
        }
        // The session itself is already counted; only its ring share is re-admitted.
        if self.ring_reserved + credits as usize > self.ring_size {
            return Err(RpcError::RingExhausted);
        }
        let token = self.rand32();
        let seq = u64::from(self.rand32());
        let retry = self.cfg.sm_retry.as_nanos() as u64;
        let timeout = self.cfg.connect_timeout.as_nanos() as u64;
        let max_msg = self.cfg.max_msg_size;
        let dpp = self.max_pkt.saturating_sub(HDR_SIZE);
        let Some(c) = self.client_mut(sid) else {
            return Err(RpcError::InvalidSession(sid));
        };
        c.state = ClientState::Connecting;
        c.local_token = token;
        c.sm_seq = seq;
        c.sm_retry_at = now + retry;
        c.sm_deadline = now + timeout;
        c.credits = credits;
        c.stalled = false;
        c.dpp = dpp;
        c.max_msg = max_msg;
        c.remote_session = 0;
        c.remote_token = 0;
        c.last_heard = now;
        c.last_ping = now;
        c.probe_since = 0;
        self.ring_reserved += credits as usize;
        if let Some(m) = self.client_sm_msg(sid) {
            self.sm_out.push(m);
        }
        Ok(())
    }

    // ------------------------------------------------------------------ session management

    /// Starts a connect to Rpc `remote_rpc` of the Nexus at `remote`.
    pub(crate) fn create_session(
        &mut self,
        now: u64,
        remote: SmAddr,
        remote_rpc: u8,
        routes: &mut dyn Routes,
    ) -> Result<SessionId, RpcError> {
        self.now = now;
        let credits = self.cfg.credits;
        self.admit(credits).map_err(|e| match e {
            SmStatus::RingExhausted => RpcError::RingExhausted,
            _ => RpcError::TooManySessions,
        })?;
        let (route, local_routing) = routes.alloc()?;
        let id = self.alloc_session_id();
        let token = self.rand32();
        let window = self.cfg.window;
        let seq = u64::from(self.rand32());
        let slots = (0..window)
            .map(|i| ClientSlot {
                req_num: i as u64,
                active: false,
                internal: false,
                req_type: 0,
                tag: 0,
                req: None,
                resp: None,
                n_req: 0,
                n_resp: 0,
                num_tx: 0,
                num_rx: 0,
                progress: 0,
                deadline: u64::MAX,
                started: 0,
                retransmitted: false,
            })
            .collect();
        let c = ClientSession {
            state: ClientState::Connecting,
            remote,
            remote_rpc,
            remote_session: 0,
            remote_token: 0,
            local_token: token,
            route,
            local_routing,
            dpp: self.max_pkt.saturating_sub(HDR_SIZE),
            max_msg: self.cfg.max_msg_size,
            credits,
            stalled: false,
            slots,
            active_slots: 0,
            backlog: VecDeque::new(),
            backlog_min_deadline: u64::MAX,
            sm_seq: seq,
            sm_retry_at: now + self.cfg.sm_retry.as_nanos() as u64,
            sm_deadline: now + self.cfg.connect_timeout.as_nanos() as u64,
            last_heard: now,
            last_ping: now,
            probe_since: 0,
            stats: Default::default(),
        };
        if let Some(slot) = self.sessions.get_mut(id as usize) {
            *slot = Some(Session::Client(Box::new(c)));
        }
        self.num_sessions += 1;
        self.ring_reserved += credits as usize;
        if let Some(m) = self.client_sm_msg(id) {
            self.sm_out.push(m);
        }
        Ok(id)
    }

    /// The SM message a client session in Connecting/Disconnecting state (re)sends.
    fn client_sm_msg(&self, sid: u32) -> Option<(SmAddr, SmMsg)> {
        let c = self.client(sid)?;
        if !matches!(
            c.state,
            ClientState::Connecting | ClientState::Disconnecting
        ) {
            return None;
        }
        self.client_sm_msg_any(sid)
    }

    /// An SM message describing a client session (type by state; callers may retype it).
    fn client_sm_msg_any(&self, sid: u32) -> Option<(SmAddr, SmMsg)> {
        let c = self.client(sid)?;
        let msg_type = match c.state {
            ClientState::Disconnecting => SmType::DisconnectReq,
            _ => SmType::ConnectReq,
        };
        Some((
            c.remote.clone(),
            SmMsg {
                msg_type,
                transport: self.kind,
                status: SmStatus::Ok,
                client_rpc: self.rpc_id,
                server_rpc: c.remote_rpc,
                client_session: sid,
                server_session: c.remote_session,
                client_token: c.local_token,
                server_token: c.remote_token,
                seq: c.sm_seq,
                max_pkt_size: self.max_pkt as u32,
                max_msg_size: self.cfg.max_msg_size as u32,
                credits: self.cfg.credits,
                window: c.slots.len() as u32,
                routing: c.local_routing,
            },
        ))
    }

    /// Starts closing a client session. Only without requests pending.
    pub(crate) fn destroy_session(&mut self, now: u64, sid: u32) -> Result<(), RpcError> {
        self.now = now;
        let retry = self.cfg.sm_retry.as_nanos() as u64;
        let timeout = self.cfg.connect_timeout.as_nanos() as u64;
        let c = self.client_mut(sid).ok_or(RpcError::InvalidSession(sid))?;
        if c.active_slots > 0 || !c.backlog.is_empty() {
            return Err(RpcError::SessionBusy(sid));
        }
        match c.state {
            ClientState::Connected => {
                c.state = ClientState::Disconnecting;
                c.sm_retry_at = now + retry;
                c.sm_deadline = now + timeout;
                if let Some(m) = self.client_sm_msg(sid) {
                    self.sm_out.push(m);
                }
            }
            ClientState::Disconnecting => {}
            ClientState::Connecting | ClientState::Failed(_) => self.free_client(sid),
        }
        Ok(())
    }

    fn free_client(&mut self, sid: u32) {
        self.liveness_changes.push((sid, None));
        if let Some(Session::Client(c)) = self.release_session(sid) {
            if !matches!(c.state, ClientState::Failed(_)) {
                self.ring_reserved = self.ring_reserved.saturating_sub(self.cfg.credits as usize);
            }
            self.routes_to_free.push(c.route);
        }
    }

    fn fail_client(&mut self, sid: u32, why: ConnectFailure) {
        let credits = self.cfg.credits as usize;
        let Some(c) = self.client_mut(sid) else {
            return;
        };
        let remote_rpc = c.remote_rpc;
        c.state = ClientState::Failed(why);
        let pending: Vec<Pending> = c.backlog.drain(..).collect();
        self.ring_reserved = self.ring_reserved.saturating_sub(credits);
        for p in pending {
            self.fail_pending(sid, p, why.to_error(remote_rpc));
        }
    }

    fn sm_timeout(&mut self, sid: u32) {
        let state = self.client(sid).map(|c| match c.state {
            ClientState::Connecting => 0,
            ClientState::Disconnecting => 1,
            _ => 2,
        });
        match state {
            Some(0) => self.fail_client(sid, ConnectFailure::Timeout),
            // The server did not confirm; its end will be reclaimed by failure detection.
            Some(1) => self.free_client(sid),
            _ => {}
        }
    }

    /// Handles one SM message.
    pub(crate) fn handle_sm(
        &mut self,
        now: u64,
        from: SmAddr,
        msg: SmMsg,
        routes: &mut dyn Routes,
    ) {
        self.now = now;
        match msg.msg_type {
            SmType::ConnectReq => self.server_connect(from, msg, routes),
            SmType::DisconnectReq => self.server_disconnect(from, msg),
            SmType::ConnectResp => self.client_connect_resp(msg, routes),
            // Pings are answered by the Nexus's SM router on the Rpc's behalf (see
            // `SmRouter::route`), so a client that is not running its event loop right now
            // still counts as alive; they never reach an Rpc.
            SmType::ClientPing | SmType::ServerPing => {}
            SmType::ServerPong => {
                let sid = msg.client_session;
                let ok = self.client(sid).is_some_and(|c| {
                    c.local_token == msg.client_token
                        && c.remote_session == msg.server_session
                        && matches!(c.state, ClientState::Connected)
                });
                if ok {
                    if msg.status == SmStatus::Ok {
                        if let Some(c) = self.client_mut(sid) {
                            c.last_heard = now;
                        }
                    } else {
                        tracing::info!(session = sid, status = ?msg.status, "server lost the session");
                        self.reset_client(sid);
                    }
                }
            }
            SmType::ClientPong => {
                let sid = msg.server_session;
                let ok = self.server(sid).is_some_and(|s| {
                    s.local_token == msg.server_token && s.client_session == msg.client_session
                });
                if ok {
                    if msg.status == SmStatus::Ok {
                        if let Some(s) = self.server_mut(sid) {
                            s.last_heard = now;
                        }
                    } else {
                        self.stats.server_sessions_reaped += 1;
                        self.free_server(sid);
                    }
                }
            }
            SmType::DisconnectResp => {
                let ok = self.client(msg.client_session).is_some_and(|c| {
                    matches!(c.state, ClientState::Disconnecting)
                        && c.local_token == msg.client_token
                        && c.sm_seq == msg.seq
                });
                if ok {
                    self.free_client(msg.client_session);
                }
            }
        }
    }

    fn server_connect(&mut self, from: SmAddr, msg: SmMsg, routes: &mut dyn Routes) {
        let key = (
            from.clone(),
            msg.client_rpc,
            msg.client_session,
            msg.client_token,
        );
        if let Some(&sid) = self.conn_index.get(&key) {
            // A retry of a connect we already accepted: answer the same way again.
            if let Some(reply) = self.server_connect_reply(sid, &msg) {
                self.sm_out.push((from, reply));
            }
            return;
        }
        let refuse = |status| (from.clone(), msg.reply(status));
        if self.peer_sessions.get(&from).copied().unwrap_or(0) >= self.cfg.max_sessions_per_peer {
            self.stats.connects_refused += 1;
            self.sm_out.push(refuse(SmStatus::TooManySessions));
            return;
        }
        if msg.transport != self.kind {
            self.stats.connects_refused += 1;
            self.sm_out.push(refuse(SmStatus::TransportMismatch));
            return;
        }
        let window = msg.window as usize;
        let min_pkt = HDR_SIZE + 1;
        if crate::config::check_session_params(window, msg.credits).is_err()
            || (msg.max_pkt_size as usize) < min_pkt
        {
            self.stats.connects_refused += 1;
            self.sm_out.push(refuse(SmStatus::BadConfig));
            return;
        }
        if let Err(status) = self.admit(msg.credits) {
            self.stats.connects_refused += 1;
            self.sm_out.push(refuse(status));
            return;
        }
        let route = match routes.alloc() {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "route allocation failed");
                self.stats.connects_refused += 1;
                self.sm_out.push(refuse(SmStatus::RoutingResolution));
                return;
            }
        };
        if let Err(e) = routes.resolve(route.0, &msg.routing) {
            tracing::warn!(error = %e, "cannot resolve a client's routing info");
            routes.free(route.0);
            self.stats.connects_refused += 1;
            self.sm_out.push(refuse(SmStatus::RoutingResolution));
            return;
        }
        let id = self.alloc_session_id();
        let token = self.rand32();
        let max_pkt = self.max_pkt.min(msg.max_pkt_size as usize);
        let s = ServerSession {
            client: from.clone(),
            client_rpc: msg.client_rpc,
            client_session: msg.client_session,
            client_token: msg.client_token,
            local_token: token,
            route: route.0,
            local_routing: route.1,
            dpp: max_pkt - HDR_SIZE,
            max_msg: self.cfg.max_msg_size.min(msg.max_msg_size as usize),
            credits: msg.credits,
            slots: (0..window)
                .map(|_| ServerSlot {
                    req_num: 0,
                    state: ServerSlotState::Empty,
                    req_type: 0,
                    msg_size: 0,
                    n_req: 0,
                    num_rx: 0,
                    req: None,
                    resp: None,
                    n_resp: 0,
                    status: 0,
                })
                .collect(),
            last_heard: self.now,
            last_ping: self.now,
            probe_since: 0,
        };
        if let Some(slot) = self.sessions.get_mut(id as usize) {
            *slot = Some(Session::Server(Box::new(s)));
        }
        self.num_sessions += 1;
        self.ring_reserved += msg.credits as usize;
        self.conn_index.insert(key, id);
        self.liveness_changes.push((id, Some(token)));
        *self.peer_sessions.entry(from.clone()).or_insert(0) += 1;
        if let Some(reply) = self.server_connect_reply(id, &msg) {
            self.sm_out.push((from, reply));
        }
    }

    fn server_connect_reply(&self, sid: u32, req: &SmMsg) -> Option<SmMsg> {
        let s = self.server(sid)?;
        Some(SmMsg {
            server_session: sid,
            server_token: s.local_token,
            max_pkt_size: (s.dpp + HDR_SIZE) as u32,
            max_msg_size: s.max_msg as u32,
            routing: s.local_routing,
            transport: self.kind,
            ..req.reply(SmStatus::Ok)
        })
    }

    fn server_disconnect(&mut self, from: SmAddr, msg: SmMsg) {
        let sid = msg.server_session;
        let matches = self.server(sid).map(|s| {
            s.local_token == msg.server_token
                && s.client == from
                && s.client_session == msg.client_session
        });
        match matches {
            Some(true) => {
                self.free_server(sid);
                self.sm_out.push((from, msg.reply(SmStatus::Ok)));
            }
            Some(false) => self
                .sm_out
                .push((from, msg.reply(SmStatus::InvalidSession))),
            // Already gone (a retry after our answer was lost): confirm again.
            None => self.sm_out.push((from, msg.reply(SmStatus::Ok))),
        }
    }

    /// Frees a server-end session and everything it holds.
    fn free_server(&mut self, sid: u32) {
        self.liveness_changes.push((sid, None));
        if let Some(Session::Server(s)) = self.release_session(sid) {
            self.ring_reserved = self.ring_reserved.saturating_sub(s.credits as usize);
            self.conn_index.remove(&(
                s.client.clone(),
                s.client_rpc,
                s.client_session,
                s.client_token,
            ));
            if let Some(n) = self.peer_sessions.get_mut(&s.client) {
                *n -= 1;
                if *n == 0 {
                    self.peer_sessions.remove(&s.client);
                }
            }
            self.routes_to_free.push(s.route);
            for slot in s.slots {
                for b in [slot.req, slot.resp].into_iter().flatten() {
                    self.pool.free(b);
                }
            }
        }
    }

    fn client_connect_resp(&mut self, msg: SmMsg, routes: &mut dyn Routes) {
        let sid = msg.client_session;
        let ok = self.client(sid).is_some_and(|c| {
            matches!(c.state, ClientState::Connecting)
                && c.local_token == msg.client_token
                && c.sm_seq == msg.seq
        });
        if !ok {
            return;
        }
        let failure = match msg.status {
            SmStatus::Ok => None,
            SmStatus::NoSuchRpc => Some(ConnectFailure::NoSuchRemoteRpc),
            SmStatus::TooManySessions => Some(ConnectFailure::TooManySessions),
            SmStatus::RingExhausted => Some(ConnectFailure::RingExhausted),
            SmStatus::TransportMismatch => Some(ConnectFailure::TransportMismatch),
            SmStatus::RoutingResolution => Some(ConnectFailure::RoutingResolution),
            SmStatus::BadConfig | SmStatus::InvalidSession => Some(ConnectFailure::BadConfig),
        };
        if let Some(f) = failure {
            self.fail_client(sid, f);
            return;
        }
        let max_pkt = msg.max_pkt_size as usize;
        if max_pkt <= HDR_SIZE || max_pkt > self.max_pkt {
            self.fail_client(sid, ConnectFailure::BadConfig);
            return;
        }
        let route = match self.client(sid) {
            Some(c) => c.route,
            None => return,
        };
        if let Err(e) = routes.resolve(route, &msg.routing) {
            tracing::warn!(error = %e, "cannot resolve the server's routing info");
            self.fail_client(sid, ConnectFailure::RoutingResolution);
            return;
        }
        let now = self.now;
        let Some(c) = self.client_mut(sid) else {
            return;
        };
        c.state = ClientState::Connected;
        let token = c.local_token;
        self.liveness_changes.push((sid, Some(token)));
        let Some(c) = self.client_mut(sid) else {
            return;
        };
        c.last_heard = now;
        c.last_ping = now;
        c.remote_session = msg.server_session;
        c.remote_token = msg.server_token;
        c.dpp = max_pkt - HDR_SIZE;
        c.max_msg = c.max_msg.min(msg.max_msg_size as usize);
        // Requests queued while connecting now go out, up to the window.
        let free: Vec<usize> = c
            .slots
            .iter()
            .enumerate()
            .filter(|(_, slot)| !slot.active)
            .map(|(i, _)| i)
            .collect();
        for i in free {
            self.start_from_backlog(sid, i, now);
        }
    }

    // ------------------------------------------------------------------ transmit support

    /// Resolves a queued packet into (route, header bytes, payload bytes).
    pub(crate) fn tx_view<'a>(&'a self, item: &'a TxItem) -> Option<(&'a [u8], &'a [u8])> {
        match item.data {
            DataRef::None => Some((item.hdr.as_bytes(), &[])),
            DataRef::Msg {
                session,
                slot,
                req_num,
                resp,
                off,
                len,
                pkt0,
            } => {
                let buf = match self.sessions.get(session as usize)?.as_ref()? {
                    Session::Client(c) if !resp => {
                        let s = c.slots.get(slot as usize)?;
                        if !s.active || s.req_num != req_num {
                            return None;
                        }
                        s.req.as_ref()?
                    }
                    Session::Server(sv) if resp => {
                        let s = sv.slots.get(slot as usize)?;
                        if s.req_num != req_num || s.state != ServerSlotState::Responded {
                            return None;
                        }
                        s.resp.as_ref()?
                    }
                    _ => return None,
                };
                if pkt0 {
                    Some((&[], buf.pkt0(len)))
                } else {
                    Some((item.hdr.as_bytes(), buf.range(off, len)?))
                }
            }
        }
    }
}
