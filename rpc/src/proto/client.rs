//! The client end of a session: its slots and backlog, and the transitions of a request from
//! enqueue to completion.
//!
//! Exchange numbering (per slot): the client's *tx items* are request packets `0..N` followed
//! by RFRs `N..N+M-1`; its *rx items* are credit returns `0..N-1`, then response packets
//! `N-1..N+M-1`. Item `i` in one direction answers item `i` in the other and both carry
//! `pkt_num = i`. Each tx item spends a session credit and each rx item returns one, so
//! `in flight = num_tx - num_rx`; go-back-N (`retransmit.rs`) is `num_tx = num_rx`. The client
//! accepts rx items strictly in order and drops everything else.

use std::collections::VecDeque;

use transports::{RouteId, RoutingInfo};

use crate::msgbuf::MsgBuf;
use crate::pkthdr::{PktHdr, PktInfo, PktType, RespStatus, HDR_SIZE};
use crate::sm::SmAddr;
use crate::stats::SessionStats;
use crate::RpcError;

use super::credits::Credits;
use super::event::{Completion, RouteOp};
use super::handshake::{ConnectStep, SmExchange};
use super::liveness::Liveness;
use super::output::{DataRef, Out};
use super::session::{pkt_len, pkts_for, slot_of, ConnectFailure, SessionId};
use super::timer::{Timer, TimerTable};
use super::Params;

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

impl ClientSlot {
    fn idle(req_num: u64) -> Self {
        Self {
            req_num,
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
        }
    }

    /// Packets sent and not yet answered.
    pub(crate) fn in_flight(&self) -> u32 {
        self.num_tx.saturating_sub(self.num_rx)
    }
}

/// Where a client end is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientState {
    /// The connect handshake is under way.
    Connecting(ConnectStep),
    /// Requests flow.
    Connected,
    /// A disconnect is under way.
    Disconnecting,
    /// The connect failed or the peer failed; waits for reconnect or destroy.
    Failed(ConnectFailure),
}

/// The client end of a session.
pub(crate) struct ClientSession {
    pub id: SessionId,
    pub state: ClientState,
    pub remote: SmAddr,
    pub remote_rpc: u8,
    pub remote_session: u32,
    pub remote_token: u32,
    pub local_token: u32,
    /// The route and the local routing info sent to the server (once allocated).
    pub route: Option<(RouteId, RoutingInfo)>,
    /// The route operation this end waits for, if any.
    pub route_op: Option<RouteOp>,
    /// Whether the end is announced live (`Event::SessionUp` with `local_token`): from its
    /// first ConnectReq — the server end it asks for pings it from then on — until it fails,
    /// is reset or is freed.
    pub advertised: bool,
    /// Data bytes per packet agreed for this session.
    pub dpp: usize,
    /// Largest message agreed for this session.
    pub max_msg: usize,
    pub credits: Credits,
    pub slots: Vec<ClientSlot>,
    pub active_slots: usize,
    pub backlog: VecDeque<Pending>,
    /// No backlogged request has a deadline before this (ns); `u64::MAX` when empty.
    pub backlog_min_deadline: u64,
    pub sm: SmExchange,
    pub live: Liveness,
    pub stats: SessionStats,
    pub timers: TimerTable,
}

impl ClientSession {
    /// A new client end, connecting, without a route yet.
    pub(crate) fn new(
        id: SessionId,
        remote: SmAddr,
        remote_rpc: u8,
        token: u32,
        sm: SmExchange,
        p: &Params,
        now: u64,
    ) -> Self {
        Self {
            id,
            state: ClientState::Connecting(ConnectStep::LocalRoute),
            remote,
            remote_rpc,
            remote_session: 0,
            remote_token: 0,
            local_token: token,
            route: None,
            route_op: None,
            advertised: false,
            dpp: p.max_pkt.saturating_sub(HDR_SIZE),
            max_msg: p.max_msg,
            credits: Credits::new(p.credits),
            slots: (0..p.window).map(|i| ClientSlot::idle(i as u64)).collect(),
            active_slots: 0,
            backlog: VecDeque::new(),
            backlog_min_deadline: u64::MAX,
            sm,
            live: Liveness::new(now),
            stats: SessionStats::default(),
            timers: TimerTable::default(),
        }
    }

    pub(crate) fn is_connected(&self) -> bool {
        matches!(self.state, ClientState::Connected)
    }

    /// Requests issued and not completed (in slots and backlog).
    pub(crate) fn pending(&self) -> usize {
        self.active_slots + self.backlog.len()
    }

    /// Whether a request of `len` bytes may be enqueued now.
    pub(crate) fn admits(&self, len: usize, backlog_limit: usize) -> Result<(), RpcError> {
        match self.state {
            ClientState::Connected | ClientState::Connecting(_) => {
                if len > self.max_msg {
                    Err(RpcError::MsgTooLarge {
                        size: len,
                        max: self.max_msg,
                    })
                } else if self.pending() >= self.slots.len() + backlog_limit {
                    Err(RpcError::Overloaded)
                } else {
                    Ok(())
                }
            }
            _ => Err(RpcError::NotConnected(self.id)),
        }
    }

    /// Places an admitted request: in the first free slot if connected and nothing waits
    /// before it, else at the end of the backlog.
    pub(crate) fn submit(&mut self, p: Pending, now: u64, prm: &Params, out: &mut Out) {
        self.stats.requests += 1;
        let free_slot = if self.is_connected() && self.backlog.is_empty() {
            self.slots.iter().position(|s| !s.active)
        } else {
            None
        };
        match free_slot {
            Some(i) => self.start(i, p, now, prm, out),
            None => {
                self.backlog_min_deadline = self.backlog_min_deadline.min(p.deadline);
                self.timers.arm(Timer::Deadline, p.deadline);
                self.backlog.push_back(p);
            }
        }
    }

    /// Starts `p` in the free slot `idx`.
    fn start(&mut self, idx: usize, p: Pending, now: u64, prm: &Params, out: &mut Out) {
        let dpp = self.dpp;
        let Some(slot) = self.slots.get_mut(idx) else {
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
        self.active_slots += 1;
        self.timers.arm(Timer::Deadline, p.deadline);
        self.pump_slot(idx, now, prm, out);
    }

    /// Queues what slot `idx` may send with the session's credits: request packets from
    /// `num_tx`, or RFRs once response packet 0 is in. A slot that had nothing in flight
    /// (new, rewound, or waiting for credits) starts its retransmission clock now: the
    /// timeout measures silence while packets are out, not time spent waiting to send.
    pub(crate) fn pump_slot(&mut self, idx: usize, now: u64, prm: &Params, out: &mut Out) {
        if !self.is_connected() {
            return;
        }
        let Some((route, _)) = self.route else {
            return;
        };
        let Self {
            id,
            slots,
            credits,
            remote_session,
            remote_token,
            dpp,
            timers,
            ..
        } = self;
        let Some(slot) = slots.get_mut(idx) else {
            return;
        };
        if !slot.active {
            return;
        }
        let mut sent = false;
        loop {
            let can_req = slot.num_tx < slot.n_req;
            let can_rfr = slot.n_resp > 0
                && slot.num_rx >= slot.n_req
                && slot.num_tx < slot.n_req + slot.n_resp - 1;
            if !can_req && !can_rfr {
                break;
            }
            if !credits.try_spend() {
                out.stats.credit_stalls += 1;
                break;
            }
            if slot.in_flight() == 0 {
                slot.progress = now;
            }
            let p = slot.num_tx;
            let req_len = slot.req.as_ref().map_or(0, |b| b.len());
            let mut info = PktInfo {
                pkt_type: PktType::Req,
                req_type: slot.req_type,
                dest_session: *remote_session,
                pkt_num: p,
                msg_size: req_len as u32,
                req_num: slot.req_num,
                token: *remote_token,
                status: 0,
            };
            if can_req {
                let hdr = PktHdr::new(&info);
                if p == 0 {
                    if let Some(b) = slot.req.as_mut() {
                        let mut h = [0u8; HDR_SIZE];
                        h.copy_from_slice(hdr.as_bytes());
                        b.set_hdr0(&h);
                    }
                }
                let data = DataRef::Msg {
                    session: *id,
                    slot: idx as u32,
                    req_num: slot.req_num,
                    resp: false,
                    off: p as usize * *dpp,
                    len: pkt_len(req_len, *dpp, p),
                    pkt0: p == 0,
                };
                out.transmit(route, hdr, data);
            } else {
                info.pkt_type = PktType::Rfr;
                out.transmit(route, PktHdr::new(&info), DataRef::None);
            }
            slot.num_tx += 1;
            sent = true;
        }
        // A reliable transport delivers what it took: nothing to time out and resend.
        if sent && !prm.reliable {
            timers.arm(Timer::Retransmit, slot.progress.saturating_add(prm.rto));
        }
    }

    /// Pumps every slot (after credits came back to a stalled session, or a rewind).
    pub(crate) fn pump_all(&mut self, now: u64, prm: &Params, out: &mut Out) {
        self.credits.clear_stall();
        for i in 0..self.slots.len() {
            self.pump_slot(i, now, prm, out);
        }
    }

    /// After a credit came back on slot `idx`: pump that slot, or every slot if one was
    /// waiting for credits.
    fn pump_after_credit(&mut self, idx: usize, now: u64, prm: &Params, out: &mut Out) {
        if self.credits.is_stalled() {
            self.pump_all(now, prm, out);
        } else {
            self.pump_slot(idx, now, prm, out);
        }
    }

    /// Completes the request in slot `idx`: its in-flight credits come back (late answers are
    /// then dropped as stale), the slot moves to its next request number, the next backlog
    /// entry starts in it.
    pub(crate) fn complete(
        &mut self,
        idx: usize,
        result: Result<(), RpcError>,
        now: u64,
        prm: &Params,
        out: &mut Out,
    ) {
        let window = self.slots.len() as u64;
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        if !slot.active {
            return;
        }
        self.credits.give_back(slot.in_flight());
        slot.active = false;
        slot.req_num += window;
        self.active_slots -= 1;
        let req = slot.req.take().unwrap_or_else(|| MsgBuf::new(0));
        let resp = slot.resp.take();
        let completion = Completion {
            session: self.id,
            tag: slot.tag,
            req_type: slot.req_type,
            req,
            // A match, not `ok_or`: that builds (and drops) the error on every success.
            result: match (result, resp) {
                (Ok(()), Some(r)) => Ok(r),
                (Ok(()), None) => Err(RpcError::HandlerFailed),
                (Err(e), _) => Err(e),
            },
        };
        if completion.result.is_ok() {
            self.stats.completed += 1;
            if !slot.retransmitted {
                let sample = now.saturating_sub(slot.started);
                self.stats.rtt_ns = if self.stats.rtt_ns == 0 {
                    sample
                } else {
                    (self.stats.rtt_ns * 7 + sample) / 8
                };
            }
        } else {
            self.stats.failed += 1;
        }
        out.complete(completion, slot.internal);
        self.start_from_backlog(idx, now, prm, out);
        // The credits that came back can only help a slot that could not send for lack of
        // them, and such a slot marked the session stalled: every other slot has sent all it
        // may (a slot's next packet becomes sendable only in a transition that pumps it).
        if self.credits.is_stalled() {
            self.pump_all(now, prm, out);
        }
    }

    /// Starts the next backlogged request that fits the agreed message size in the free slot
    /// `idx`; requests that do not fit complete with `MsgTooLarge`.
    pub(crate) fn start_from_backlog(&mut self, idx: usize, now: u64, prm: &Params, out: &mut Out) {
        while self.is_connected() {
            let Some(p) = self.backlog.pop_front() else {
                return;
            };
            if p.req.len() <= self.max_msg {
                self.start(idx, p, now, prm, out);
                return;
            }
            let err = RpcError::MsgTooLarge {
                size: p.req.len(),
                max: self.max_msg,
            };
            self.fail_pending(p, err, out);
        }
    }

    /// Fills every free slot from the backlog (after the session connected).
    pub(crate) fn start_backlog(&mut self, now: u64, prm: &Params, out: &mut Out) {
        for i in 0..self.slots.len() {
            if self.slots.get(i).is_some_and(|s| !s.active) {
                self.start_from_backlog(i, now, prm, out);
            }
        }
    }

    /// Completes a request that never got a slot with `err`.
    pub(crate) fn fail_pending(&mut self, p: Pending, err: RpcError, out: &mut Out) {
        self.stats.failed += 1;
        out.complete(
            Completion {
                session: self.id,
                tag: p.tag,
                req_type: p.req_type,
                req: p.req,
                result: Err(err),
            },
            p.internal,
        );
    }

    /// Completes every pending request — slots, then backlog — with the error `err()` makes.
    pub(crate) fn fail_all(
        &mut self,
        err: impl Fn() -> RpcError,
        now: u64,
        prm: &Params,
        out: &mut Out,
    ) {
        let backlog: Vec<Pending> = self.backlog.drain(..).collect();
        self.backlog_min_deadline = u64::MAX;
        for i in 0..self.slots.len() {
            if self.slots.get(i).is_some_and(|s| s.active) {
                self.complete(i, Err(err()), now, prm, out);
            }
        }
        for p in backlog {
            self.fail_pending(p, err(), out);
        }
    }

    /// Cancels the first pending request carrying (`tag`, `internal`); whether one was found.
    pub(crate) fn cancel(
        &mut self,
        tag: u64,
        internal: bool,
        now: u64,
        prm: &Params,
        out: &mut Out,
    ) -> bool {
        if let Some(i) = self
            .slots
            .iter()
            .position(|s| s.active && s.tag == tag && s.internal == internal)
        {
            out.stats.cancelled += 1;
            self.complete(i, Err(RpcError::Cancelled), now, prm, out);
            return true;
        }
        if let Some(i) = self
            .backlog
            .iter()
            .position(|p| p.tag == tag && p.internal == internal)
        {
            if let Some(p) = self.backlog.remove(i) {
                out.stats.cancelled += 1;
                self.fail_pending(p, RpcError::Cancelled, out);
                return true;
            }
        }
        false
    }

    /// The deadline timer fired: completes every request, in a slot or in the backlog, whose
    /// deadline passed, then sets the timer for the earliest one left.
    pub(crate) fn on_deadline_timer(&mut self, now: u64, prm: &Params, out: &mut Out) {
        let mut expired = 0u64;
        loop {
            let mut round = 0;
            for i in 0..self.slots.len() {
                if self
                    .slots
                    .get(i)
                    .is_some_and(|s| s.active && s.deadline <= now)
                {
                    round += 1;
                    self.complete(i, Err(RpcError::DeadlineExceeded), now, prm, out);
                }
            }
            // The backlog can be long: look at it only when its earliest deadline may have
            // passed (the bound is exact after a pass and only too early after removals).
            if self.backlog_min_deadline <= now {
                let (due, keep): (VecDeque<Pending>, VecDeque<Pending>) =
                    self.backlog.drain(..).partition(|p| p.deadline <= now);
                self.backlog_min_deadline =
                    keep.iter().map(|p| p.deadline).min().unwrap_or(u64::MAX);
                self.backlog = keep;
                for p in due {
                    round += 1;
                    self.fail_pending(p, RpcError::DeadlineExceeded, out);
                }
            }
            // A completion starts the next backlog entry in its slot, which may be past its
            // deadline already: go round until nothing expired.
            if round == 0 {
                break;
            }
            expired += round;
        }
        if expired > 0 {
            out.stats.deadline_exceeded += expired;
            self.stats.deadline_exceeded += expired;
        }
        let next = self
            .slots
            .iter()
            .filter(|s| s.active)
            .map(|s| s.deadline)
            .fold(self.backlog_min_deadline, u64::min);
        self.timers.set(Timer::Deadline, next);
    }

    /// Handles a credit return (already matched to this end by session and token).
    pub(crate) fn on_credit_return(
        &mut self,
        info: &PktInfo,
        now: u64,
        prm: &Params,
        out: &mut Out,
    ) {
        let idx = slot_of(info.req_num, self.slots.len());
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        let req_len = slot.req.as_ref().map_or(0, |b| b.len());
        let in_order = slot.active
            && slot.req_num == info.req_num
            && info.pkt_num == slot.num_rx
            && slot.num_rx < slot.num_tx
            && info.pkt_num + 1 < slot.n_req
            && info.msg_size as usize == req_len;
        if !in_order {
            out.stats.dropped_unexpected += 1;
            return;
        }
        slot.num_rx += 1;
        slot.progress = now;
        self.credits.give_back(1);
        self.pump_after_credit(idx, now, prm, out);
    }

    /// Handles a response packet (already matched to this end by session and token).
    pub(crate) fn on_response(
        &mut self,
        info: &PktInfo,
        payload: &[u8],
        now: u64,
        prm: &Params,
        out: &mut Out,
    ) {
        let idx = slot_of(info.req_num, self.slots.len());
        let (dpp, max_msg) = (self.dpp, self.max_msg);
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        if !(slot.active
            && slot.req_num == info.req_num
            && info.pkt_num == slot.num_rx
            && slot.num_rx < slot.num_tx
            && info.pkt_num + 1 >= slot.n_req)
        {
            out.stats.dropped_unexpected += 1;
            return;
        }
        let k = info.pkt_num + 1 - slot.n_req;
        let size = info.msg_size as usize;
        if k == 0 {
            let err = match RespStatus::from_u8(info.status) {
                Some(RespStatus::Ok) => None,
                Some(RespStatus::NoHandler) => Some(RpcError::NoHandler(slot.req_type)),
                Some(RespStatus::Overloaded) => Some(RpcError::RemoteOverloaded),
                Some(RespStatus::ResponseTooLarge) | Some(RespStatus::HandlerFailed) => {
                    Some(RpcError::HandlerFailed)
                }
                None => {
                    out.stats.dropped_malformed += 1;
                    return;
                }
            };
            if let Some(e) = err {
                // An error response is one packet; it returns its credit like any other.
                slot.num_rx += 1;
                self.credits.give_back(1);
                self.complete(idx, Err(e), now, prm, out);
                return;
            }
            if size > max_msg || payload.len() != pkt_len(size, dpp, 0) {
                out.stats.dropped_malformed += 1;
                return;
            }
            let mut resp = out.pool.alloc(size);
            resp.write_at(0, payload);
            slot.n_resp = pkts_for(size, dpp);
            slot.resp = Some(resp);
        } else {
            let fits = slot.resp.as_ref().is_some_and(|r| r.len() == size)
                && info.status == 0
                && payload.len() == pkt_len(size, dpp, k);
            if !fits {
                out.stats.dropped_malformed += 1;
                return;
            }
            if let Some(r) = slot.resp.as_mut() {
                r.write_at(k as usize * dpp, payload);
            }
        }
        slot.num_rx += 1;
        slot.progress = now;
        self.credits.give_back(1);
        if slot.num_rx == slot.n_req + slot.n_resp - 1 {
            self.complete(idx, Ok(()), now, prm, out);
        } else {
            self.pump_after_credit(idx, now, prm, out);
        }
    }
}
