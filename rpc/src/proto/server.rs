//! The server end of a session: its slots, and the transitions of a request from its first
//! packet to the response.
//!
//! Server slot: `Empty → Receiving → InHandler → Responded → (next request) Receiving …`.
//! The handler is queued only on the `Receiving → InHandler` transition, which happens once per
//! request number, so duplicates never run it again (at-most-once); the response stays in the
//! slot until the next request on that slot arrives, which the client sends only after it
//! completed this one, so a lost response is sent again without running the handler. The
//! server has no credits: it answers each request packet with one credit return (non-final)
//! or response packet 0 (final) and each RFR with the response packet it asks for.

use transports::{RouteId, RoutingInfo};

use crate::msgbuf::MsgBuf;
use crate::pkthdr::{PktHdr, PktInfo, PktType, RespStatus, HDR_SIZE};
use crate::sm::{SmAddr, SmMsg};
use crate::RpcError;

use super::event::{Event, ReqHandle, RouteOp};
use super::liveness::Liveness;
use super::output::{DataRef, Out};
use super::session::{pkt_len, pkts_for, slot_of, SessionId};
use super::timer::TimerTable;

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

impl ServerSlot {
    fn empty() -> Self {
        Self {
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
        }
    }
}

/// A server end whose handshake is not finished: its route is being allocated or resolved.
pub(crate) struct Accepting {
    /// The connect request being answered.
    pub req: SmMsg,
}

/// The server end of a session.
pub(crate) struct ServerSession {
    pub id: SessionId,
    pub client: SmAddr,
    pub client_rpc: u8,
    pub client_session: u32,
    pub client_token: u32,
    pub local_token: u32,
    /// The route to the client and the local routing info sent to it (once allocated).
    pub route: Option<(RouteId, RoutingInfo)>,
    pub route_op: Option<RouteOp>,
    /// `Some` until the route is ready and the connect answered; the end is not live before.
    pub accepting: Option<Box<Accepting>>,
    pub dpp: usize,
    pub max_msg: usize,
    /// Credits of the client, reserved in this Rpc's receive ring.
    pub credits: u32,
    pub slots: Vec<ServerSlot>,
    pub live: Liveness,
    pub timers: TimerTable,
}

impl ServerSession {
    /// A new server end for the connect request `req` from `from`, waiting for its route.
    pub(crate) fn new(
        id: SessionId,
        from: SmAddr,
        req: &SmMsg,
        token: u32,
        max_pkt: usize,
        max_msg: usize,
        now: u64,
    ) -> Self {
        Self {
            id,
            client: from,
            client_rpc: req.client_rpc,
            client_session: req.client_session,
            client_token: req.client_token,
            local_token: token,
            route: None,
            route_op: None,
            accepting: Some(Box::new(Accepting { req: *req })),
            dpp: max_pkt
                .min(req.max_pkt_size as usize)
                .saturating_sub(HDR_SIZE),
            max_msg: max_msg.min(req.max_msg_size as usize),
            credits: req.credits,
            slots: (0..req.window).map(|_| ServerSlot::empty()).collect(),
            live: Liveness::new(now),
            timers: TimerTable::default(),
        }
    }

    /// Whether the end is live (its handshake finished).
    pub(crate) fn is_live(&self) -> bool {
        self.accepting.is_none()
    }

    fn handle(&self, req_num: u64) -> ReqHandle {
        ReqHandle {
            session: self.id,
            token: self.local_token,
            req_num,
        }
    }

    /// The slot of a handle, if the handle is current: right token, the slot holds its
    /// request number, and the handler has not answered yet.
    fn handler_slot(&mut self, h: ReqHandle) -> Option<&mut ServerSlot> {
        if self.local_token != h.token {
            return None;
        }
        let n = self.slots.len();
        let slot = self.slots.get_mut(slot_of(h.req_num, n))?;
        (slot.req_num == h.req_num && slot.state == ServerSlotState::InHandler).then_some(slot)
    }

    /// Handles a request packet (already matched to this end by session and token).
    pub(crate) fn on_request(&mut self, info: &PktInfo, payload: &[u8], out: &mut Out) {
        let idx = slot_of(info.req_num, self.slots.len());
        let (dpp, max_msg) = (self.dpp, self.max_msg);
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        let size = info.msg_size as usize;
        let fresh = slot.state == ServerSlotState::Empty || info.req_num > slot.req_num;
        if !fresh && info.req_num < slot.req_num {
            out.stats.dropped_unexpected += 1;
            return;
        }
        if fresh {
            if info.pkt_num != 0 {
                out.stats.dropped_unexpected += 1;
                return;
            }
            if size > max_msg || payload.len() != pkt_len(size, dpp, 0) {
                out.stats.dropped_malformed += 1;
                return;
            }
            // A new request on this slot: the previous request and response are done with.
            for b in [slot.resp.take(), slot.req.take()].into_iter().flatten() {
                out.pool.free(b);
            }
            slot.req_num = info.req_num;
            slot.state = ServerSlotState::Receiving;
            slot.req_type = info.req_type;
            slot.msg_size = info.msg_size;
            slot.n_req = pkts_for(size, dpp);
            slot.num_rx = 0;
            slot.n_resp = 0;
            slot.status = 0;
            slot.req = Some(out.pool.alloc(size));
        }
        if info.msg_size != slot.msg_size || info.req_type != slot.req_type {
            out.stats.dropped_malformed += 1;
            return;
        }
        let p = info.pkt_num;
        let last = slot.n_req - 1;
        match slot.state {
            ServerSlotState::Receiving if p == slot.num_rx => {
                if payload.len() != pkt_len(size, dpp, p) {
                    out.stats.dropped_malformed += 1;
                    return;
                }
                if let Some(b) = slot.req.as_mut() {
                    b.write_at(p as usize * dpp, payload);
                }
                slot.num_rx += 1;
                if p < last {
                    self.queue_credit_return(idx, p, out);
                } else {
                    slot.state = ServerSlotState::InHandler;
                    let h = self.handle(info.req_num);
                    out.event(Event::Request(h));
                }
            }
            _ if p < last && p < slot.num_rx => {
                // A retransmitted non-final packet we already have: its credit return was lost.
                out.stats.dropped_unexpected += 1;
                self.queue_credit_return(idx, p, out);
            }
            ServerSlotState::Responded if p == last => {
                // The response was lost: send packet 0 again (the client pulls the rest).
                out.stats.dropped_unexpected += 1;
                self.queue_response(idx, 0, out);
            }
            _ => out.stats.dropped_unexpected += 1,
        }
    }

    /// Handles an RFR: sends the response packet it asks for, again if need be.
    pub(crate) fn on_rfr(&mut self, info: &PktInfo, out: &mut Out) {
        let idx = slot_of(info.req_num, self.slots.len());
        let Some(slot) = self.slots.get(idx) else {
            return;
        };
        let asks_for_a_packet = slot.state == ServerSlotState::Responded
            && slot.req_num == info.req_num
            && info.pkt_num >= slot.n_req
            && info.pkt_num < slot.n_req + slot.n_resp - 1;
        if !asks_for_a_packet {
            out.stats.dropped_unexpected += 1;
            return;
        }
        let k = info.pkt_num + 1 - slot.n_req;
        self.queue_response(idx, k, out);
    }

    fn queue_response(&mut self, idx: usize, k: u32, out: &mut Out) {
        let Some((route, _)) = self.route else {
            return;
        };
        let (dpp, id) = (self.dpp, self.id);
        let (client_session, client_token) = (self.client_session, self.client_token);
        let Some(slot) = self.slots.get_mut(idx) else {
            return;
        };
        let Some(resp) = slot.resp.as_mut() else {
            return;
        };
        let size = resp.len();
        let hdr = PktHdr::new(&PktInfo {
            pkt_type: PktType::Resp,
            req_type: slot.req_type,
            dest_session: client_session,
            pkt_num: slot.n_req - 1 + k,
            msg_size: size as u32,
            req_num: slot.req_num,
            token: client_token,
            status: slot.status,
        });
        if k == 0 {
            let mut h = [0u8; HDR_SIZE];
            h.copy_from_slice(hdr.as_bytes());
            resp.set_hdr0(&h);
        }
        let data = DataRef::Msg {
            session: id,
            slot: idx as u32,
            req_num: slot.req_num,
            resp: true,
            off: k as usize * dpp,
            len: pkt_len(size, dpp, k),
            pkt0: k == 0,
        };
        out.transmit(route, hdr, data);
    }

    fn queue_credit_return(&self, idx: usize, p: u32, out: &mut Out) {
        let (Some((route, _)), Some(slot)) = (self.route, self.slots.get(idx)) else {
            return;
        };
        let hdr = PktHdr::new(&PktInfo {
            pkt_type: PktType::CreditReturn,
            req_type: slot.req_type,
            dest_session: self.client_session,
            pkt_num: p,
            msg_size: slot.msg_size,
            req_num: slot.req_num,
            token: self.client_token,
            status: 0,
        });
        out.transmit(route, hdr, DataRef::None);
    }

    /// Answers the request of `h` with `resp` (an error status sends an empty response);
    /// `StaleHandle` if the request was answered already or its slot moved on.
    pub(crate) fn respond(
        &mut self,
        h: ReqHandle,
        mut resp: MsgBuf,
        mut status: RespStatus,
        out: &mut Out,
    ) -> Result<(), RpcError> {
        let (dpp, max_msg) = (self.dpp, self.max_msg);
        let Some(slot) = self.handler_slot(h) else {
            out.pool.free(resp);
            return Err(RpcError::StaleHandle);
        };
        if resp.len() > max_msg {
            status = RespStatus::ResponseTooLarge;
        }
        if status != RespStatus::Ok {
            resp.resize(0);
        }
        slot.n_resp = pkts_for(resp.len(), dpp);
        slot.status = status as u8;
        slot.resp = Some(resp);
        slot.state = ServerSlotState::Responded;
        if let Some(b) = slot.req.take() {
            out.pool.free(b);
        }
        let idx = slot_of(h.req_num, self.slots.len());
        self.queue_response(idx, 0, out);
        Ok(())
    }

    /// Takes the request buffer out of its slot to run the handler on it.
    pub(crate) fn take_request(&mut self, h: ReqHandle) -> Option<(u8, MsgBuf)> {
        let slot = self.handler_slot(h)?;
        let req = slot.req.take()?;
        Some((slot.req_type, req))
    }

    /// Puts the request buffer back after the handler ran (if it deferred the response);
    /// frees it if the request is answered or gone.
    pub(crate) fn restore_request(&mut self, h: ReqHandle, req: MsgBuf, out: &mut Out) {
        match self.handler_slot(h) {
            Some(slot) => slot.req = Some(req),
            None => out.pool.free(req),
        }
    }

    /// The data of a request whose handler has not answered yet.
    pub(crate) fn request_data(&self, h: ReqHandle) -> Option<&[u8]> {
        if self.local_token != h.token {
            return None;
        }
        let slot = self.slots.get(slot_of(h.req_num, self.slots.len()))?;
        if slot.req_num != h.req_num || slot.state != ServerSlotState::InHandler {
            return None;
        }
        slot.req.as_ref().map(|b| b.as_slice())
    }

    /// Returns every buffer the end holds to the pool.
    pub(crate) fn free_buffers(self, out: &mut Out) {
        for slot in self.slots {
            for b in [slot.req, slot.resp].into_iter().flatten() {
                out.pool.free(b);
            }
        }
    }
}
