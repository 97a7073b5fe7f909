//! The simulated HCAs at work: posting, polling, `modify_qp`, and the events that carry
//! messages across the fabric (UD datagrams; RC requests, ACKs, NAKs and timers).
use super::rules::{ack_timeout_ns, check_modify, rnr_delay_ns};
use super::*;

pub(super) enum Event {
    /// Process the send queue of a QP.
    Transmit {
        dev: u32,
        qp: u64,
    },
    UdArrive(Box<UdPacket>),
    RcArrive(Box<RcPacket>),
    RcResponse(Box<RcResp>),
    /// The ACK timer of an RC requester.
    RcTimer {
        dev: u32,
        qp: u64,
    },
}

pub(super) struct UdPacket {
    dst_dev: u32,
    dst_qpn: u32,
    qkey: u32,
    src_qpn: u32,
    slid: u16,
    /// (sgid, dgid, hop limit, traffic class, flow label) when the sender's AH is global.
    grh: Option<(Gid, Gid, u8, u8, u32)>,
    imm: Option<u32>,
    data: Vec<u8>,
}

pub(super) enum RcOp {
    Send {
        data: Vec<u8>,
        imm: Option<u32>,
    },
    Write {
        addr: u64,
        rkey: u32,
        data: Vec<u8>,
        imm: Option<u32>,
    },
    Read {
        addr: u64,
        rkey: u32,
        len: u32,
    },
}

pub(super) struct RcPacket {
    dst_dev: u32,
    dst_qpn: u32,
    src_dev: u32,
    src_qp: u64,
    src_qpn: u32,
    slid: u16,
    sgid: Option<Gid>,
    psn: u32,
    gen: u32,
    op: RcOp,
}

pub(super) enum RespKind {
    Ack,
    ReadData(Vec<u8>),
    Rnr { delay_ns: u64 },
    SeqNak,
    Nak(WcStatus),
    LinkError,
}

pub(super) struct RcResp {
    dev: u32,
    qp: u64,
    psn: u32,
    gen: u32,
    kind: RespKind,
}

fn bad(index: usize, errno: i32) -> PostError {
    PostError { index, errno }
}

impl Fabric {
    pub(super) fn handle(&mut self, at: u64, ev: Event) {
        match ev {
            Event::Transmit { dev, qp } => self.transmit(dev, qp, at),
            Event::UdArrive(p) => self.ud_arrive(*p, at),
            Event::RcArrive(p) => self.rc_arrive(*p, at),
            Event::RcResponse(r) => self.rc_response(*r, at),
            Event::RcTimer { dev, qp } => self.rc_timer(dev, qp, at),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Control path.

    pub(super) fn modify_qp(
        &mut self,
        d: u32,
        h: u64,
        attr: &QpAttr,
        mask: AttrMask,
        now: u64,
    ) -> Result<(), VerbsError> {
        const OP: &str = "ibv_modify_qp";
        let dev = self.dev(d).ok_or(err(OP, EINVAL))?;
        let limits = dev.limits();
        let q = dev.qps.get(h).ok_or(err(OP, EINVAL))?;
        let (qp_type, cur) = (q.qp_type, q.state);
        let next = check_modify(qp_type, cur, attr, mask, &limits).map_err(|e| err(OP, e))?;
        if next == QpState::Reset && cur != QpState::Reset {
            self.purge_cqes(d, h);
        }
        if next == QpState::Err {
            self.enter_error(d, h, now);
            return Ok(());
        }
        let q = self.qp_mut(d, h).ok_or(err(OP, EINVAL))?;
        let m = |bit: AttrMask| mask.contains(bit);
        if m(AttrMask::QKEY) {
            q.qkey = attr.qkey;
        }
        if m(AttrMask::ACCESS_FLAGS) {
            q.access = attr.access;
        }
        if m(AttrMask::AV) {
            q.av = attr.ah;
        }
        if m(AttrMask::PATH_MTU) {
            q.path_mtu = attr.path_mtu;
        }
        if m(AttrMask::DEST_QPN) {
            q.dest_qpn = attr.dest_qp_num;
        }
        if m(AttrMask::RQ_PSN) {
            q.rq_psn = attr.rq_psn;
        }
        if m(AttrMask::SQ_PSN) {
            q.sq_psn = attr.sq_psn;
        }
        if m(AttrMask::TIMEOUT) {
            q.timeout = attr.timeout;
        }
        if m(AttrMask::RETRY_CNT) {
            q.retry_cnt = attr.retry_cnt;
        }
        if m(AttrMask::RNR_RETRY) {
            q.rnr_retry = attr.rnr_retry;
        }
        if m(AttrMask::MIN_RNR_TIMER) {
            q.min_rnr_timer = attr.min_rnr_timer;
        }
        match (cur, next) {
            (_, QpState::Reset) => {
                q.sq.clear();
                q.rq.clear();
                q.rq_outstanding = 0;
                q.tx_next = q.next_seq;
                q.cq_next = q.next_seq;
                q.gen = q.gen.wrapping_add(1);
                q.timer_armed = false;
                q.stalled_until = 0;
                q.nak_sent = false;
            }
            (QpState::Init, QpState::Rtr) => {
                q.epsn = q.rq_psn;
                q.nak_sent = false;
            }
            (QpState::Rtr, QpState::Rts) => {
                q.psn_base = q.next_seq;
                q.tx_next = q.next_seq;
                q.retry_left = q.retry_cnt;
                q.rnr_left = q.rnr_retry;
            }
            _ => {}
        }
        q.state = next;
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Datapath: posting and polling.

    pub(super) fn post_send(
        &mut self,
        d: u32,
        h: u64,
        wrs: &[SendWr<'_>],
        now: u64,
    ) -> Result<(), PostError> {
        let dev = self.dev(d).ok_or(bad(0, EINVAL))?;
        let q = dev.qps.get(h).ok_or(bad(0, EINVAL))?;
        if !matches!(q.state, QpState::Rts | QpState::Err) {
            return Err(bad(0, EINVAL));
        }
        let mut result = Ok(());
        let mut entries = Vec::with_capacity(wrs.len());
        for (i, wr) in wrs.iter().enumerate() {
            let valid_op = match q.qp_type {
                QpType::Ud => matches!(wr.op, SendOp::Send | SendOp::SendWithImm(_)),
                QpType::Rc => true,
            };
            if !valid_op {
                result = Err(bad(i, EINVAL));
                break;
            }
            let ud = match (q.qp_type, wr.ud) {
                (QpType::Ud, Some(u)) => match dev.ahs.get(u.ah.0) {
                    // The address vector is copied into the request, as providers copy it
                    // into the WQE: destroying the AH afterwards does not affect this send.
                    Some(ah) => Some((ah.attr, u.remote_qpn, u.remote_qkey)),
                    None => {
                        result = Err(bad(i, EINVAL));
                        break;
                    }
                },
                (QpType::Ud, None) => {
                    result = Err(bad(i, EINVAL));
                    break;
                }
                (QpType::Rc, _) => None,
            };
            let data = match wr.payload {
                Payload::Sg(l) => {
                    if l.as_slice().len() > q.caps.max_send_sge as usize {
                        result = Err(bad(i, EINVAL));
                        break;
                    }
                    Stored::Sg(l)
                }
                Payload::Inline(a, b) => {
                    if matches!(wr.op, SendOp::RdmaRead { .. }) {
                        result = Err(bad(i, EINVAL));
                        break;
                    }
                    if a.len() + b.len() > q.caps.max_inline_data as usize {
                        result = Err(bad(i, ENOMEM));
                        break;
                    }
                    // Inline data is copied now: the caller may reuse its buffers at once.
                    let mut v = Vec::with_capacity(a.len() + b.len());
                    v.extend_from_slice(a);
                    v.extend_from_slice(b);
                    Stored::Inline(v)
                }
            };
            if q.sq.len() + entries.len() >= q.caps.max_send_wr as usize {
                result = Err(bad(i, ENOMEM));
                break;
            }
            entries.push((wr.wr_id, wr.op, data, wr.signaled, ud));
        }
        let state = q.state;
        let Some(q) = self.qp_mut(d, h) else {
            return Err(bad(0, EINVAL));
        };
        for (wr_id, op, data, signaled, ud) in entries {
            let seq = q.next_seq;
            q.next_seq += 1;
            q.sq.push_back(SqEntry {
                seq,
                wr_id,
                op,
                data,
                signaled,
                ud,
                state: if state == QpState::Err {
                    EntryState::Done {
                        status: WcStatus::WrFlushErr,
                        byte_len: 0,
                    }
                } else {
                    EntryState::Pending
                },
                transmissions: 0,
            });
        }
        if state == QpState::Err {
            self.complete_ready(d, h);
        } else if let Some(q) = self.qp_mut(d, h) {
            if !q.tx_scheduled && q.tx_next < q.next_seq {
                q.tx_scheduled = true;
                // The HCA gets to it "later": at the next call into the fabric, never within
                // this post — so non-inline data is read after the post has returned.
                let at = now.max(q.stalled_until);
                let at = at + self.dev(d).map_or(0, |x| x.cfg.processing_delay_ns);
                self.schedule(at, Event::Transmit { dev: d, qp: h });
            }
        }
        result
    }

    pub(super) fn post_recv(&mut self, d: u32, h: u64, wrs: &[RecvWr]) -> Result<(), PostError> {
        let q = self.qp_mut(d, h).ok_or(bad(0, EINVAL))?;
        if q.srq.is_some() || q.state == QpState::Reset {
            return Err(bad(0, EINVAL));
        }
        let mut flushed = Vec::new();
        let mut result = Ok(());
        for (i, wr) in wrs.iter().enumerate() {
            if wr.sg.as_slice().len() > q.caps.max_recv_sge as usize {
                result = Err(bad(i, EINVAL));
                break;
            }
            if q.rq_outstanding >= q.caps.max_recv_wr {
                result = Err(bad(i, ENOMEM));
                break;
            }
            q.rq_outstanding += 1;
            if q.state == QpState::Err {
                flushed.push(wr.wr_id);
            } else {
                q.rq.push_back(*wr);
            }
        }
        for wr_id in flushed {
            self.flush_recv(d, h, wr_id);
        }
        result
    }

    pub(super) fn poll_cq(&mut self, d: u32, cq: u64, out: &mut [Wc]) -> Result<usize, VerbsError> {
        let dev = self.dev_mut(d).ok_or(err("ibv_poll_cq", EINVAL))?;
        let c = dev.cqs.get(cq).ok_or(err("ibv_poll_cq", EINVAL))?;
        if c.overflowed {
            return Err(VerbsError::CqOverflow);
        }
        let mut n = 0;
        while n < out.len() {
            let Some(e) = dev.cqs.get_mut(cq).and_then(|c| c.q.pop_front()) else {
                break;
            };
            if let Some(slot) = out.get_mut(n) {
                *slot = e.wc;
            }
            n += 1;
            // Releasing at poll time is what providers do: the send queue's tail moves when
            // the CQE of a signaled request is consumed.
            match e.release {
                Release::Send(seq) => {
                    if let Some(q) = dev.qps.get_mut(e.qp) {
                        while q.sq.front().is_some_and(|f| f.seq <= seq) {
                            q.sq.pop_front();
                        }
                    }
                }
                Release::Recv => {
                    if let Some(q) = dev.qps.get_mut(e.qp) {
                        q.rq_outstanding = q.rq_outstanding.saturating_sub(1);
                    }
                }
                Release::Srq(s) => {
                    if let Some(s) = dev.srqs.get_mut(s) {
                        s.outstanding = s.outstanding.saturating_sub(1);
                    }
                }
            }
        }
        Ok(n)
    }

    // -----------------------------------------------------------------------------------------
    // Memory access (the HCA's DMA engine).

    /// Reads the data of a send entry: inline bytes as stored, or gathered from registered
    /// memory of protection domain `pd`. `Err` is `LOC_PROT_ERR`.
    fn gather(dev: &Dev, pd: u64, data: &Stored) -> Result<Vec<u8>, WcStatus> {
        match data {
            Stored::Inline(v) => Ok(v.clone()),
            Stored::Sg(list) => {
                let mut out = Vec::with_capacity(list.total_len() as usize);
                for sge in list.as_slice() {
                    let mr = dev
                        .lkeys
                        .get(&sge.lkey)
                        .and_then(|h| dev.mrs.get(*h))
                        .filter(|m| m.pd == pd)
                        .ok_or(WcStatus::LocProtErr)?;
                    let off = sge
                        .addr
                        .checked_sub(mr.mem.addr())
                        .and_then(|o| usize::try_from(o).ok())
                        .ok_or(WcStatus::LocProtErr)?;
                    if !mr.mem.read_into(off, sge.length as usize, &mut out) {
                        return Err(WcStatus::LocProtErr);
                    }
                }
                Ok(out)
            }
        }
    }

    /// Writes `data` at logical offset `start` of the buffer the SGE list describes. The
    /// regions must be of `pd` with `LOCAL_WRITE`. `Err` is `LOC_PROT_ERR`.
    fn scatter(
        dev: &Dev,
        pd: u64,
        list: &SgList,
        start: usize,
        data: &[u8],
    ) -> Result<(), WcStatus> {
        let mut pos = 0usize; // logical offset of the current SGE
        let mut rest = data;
        let mut at = start;
        for sge in list.as_slice() {
            if rest.is_empty() {
                break;
            }
            let len = sge.length as usize;
            let end = pos + len;
            if at >= end {
                pos = end;
                continue;
            }
            let mr = dev
                .lkeys
                .get(&sge.lkey)
                .and_then(|h| dev.mrs.get(*h))
                .filter(|m| m.pd == pd && m.access.contains(Access::LOCAL_WRITE))
                .ok_or(WcStatus::LocProtErr)?;
            let base = sge
                .addr
                .checked_sub(mr.mem.addr())
                .and_then(|o| usize::try_from(o).ok())
                .ok_or(WcStatus::LocProtErr)?;
            let skip = at - pos;
            let n = (len - skip).min(rest.len());
            let (now, later) = rest.split_at(n);
            if !mr.mem.write_from(base + skip, now) {
                return Err(WcStatus::LocProtErr);
            }
            rest = later;
            at += n;
            pos = end;
        }
        if rest.is_empty() {
            Ok(())
        } else {
            Err(WcStatus::LocLenErr)
        }
    }

    /// Finds the remote region for an RDMA operation: rkey, PD of the responder QP, access,
    /// range. Returns the region's handle and the offset.
    fn remote_region(
        dev: &Dev,
        pd: u64,
        qp_access: Access,
        rkey: u32,
        addr: u64,
        len: usize,
        need: Access,
    ) -> Option<(u64, usize)> {
        if !qp_access.contains(need) {
            return None;
        }
        let h = *dev.rkeys.get(&rkey)?;
        let mr = dev.mrs.get(h)?;
        if mr.pd != pd || !mr.access.contains(need) {
            return None;
        }
        let off = usize::try_from(addr.checked_sub(mr.mem.addr())?).ok()?;
        (off.checked_add(len)? <= mr.mem.len()).then_some((h, off))
    }

    /// The device an address vector reaches.
    fn route(&self, av: &AhAttr) -> Option<u32> {
        self.devices
            .iter()
            .position(|d| d.matches(av))
            .map(|i| i as u32)
    }

    // -----------------------------------------------------------------------------------------
    // Sending.

    fn transmit(&mut self, d: u32, h: u64, at: u64) {
        let Some(q) = self.qp_mut(d, h) else { return };
        q.tx_scheduled = false;
        if q.state != QpState::Rts {
            return;
        }
        if at < q.stalled_until {
            q.tx_scheduled = true;
            let when = q.stalled_until;
            self.schedule(when, Event::Transmit { dev: d, qp: h });
            return;
        }
        match q.qp_type {
            QpType::Ud => self.ud_transmit(d, h, at),
            QpType::Rc => self.rc_transmit(d, h, at),
        }
    }

    fn ud_transmit(&mut self, d: u32, h: u64, at: u64) {
        loop {
            let Some(dev) = self.dev(d) else { return };
            let Some(q) = dev.qps.get(h) else { return };
            if q.state != QpState::Rts {
                return;
            }
            let seq = q.tx_next;
            let Some(e) = q.entry(seq) else { break };
            if e.state != EntryState::Pending {
                break;
            }
            let data = match Self::gather(dev, q.pd, &e.data) {
                Ok(v) => v,
                Err(status) => {
                    self.fail_entry(d, h, seq, status, at);
                    return;
                }
            };
            let Some((av, dst_qpn, qkey)) = e.ud else {
                self.fail_entry(d, h, seq, WcStatus::LocQpOpErr, at);
                return;
            };
            let imm = match e.op {
                SendOp::SendWithImm(i) => Some(i),
                _ => None,
            };
            let src_mtu = dev.cfg.active_mtu.bytes();
            let slid = dev.lid;
            let sgid = av
                .grh
                .and_then(|g| dev.gids.get(usize::from(g.sgid_index)).copied());
            let src_qpn = q.qpn;
            let len = data.len() as u32;
            if let Some(q) = self.qp_mut(d, h) {
                q.tx_next += 1;
                if let Some(e) = q.entry_mut(seq) {
                    e.transmissions += 1;
                    // A UD send completes once the HCA has sent it; delivery is not promised.
                    e.state = EntryState::Done {
                        status: WcStatus::Success,
                        byte_len: len,
                    };
                }
            }
            let Some(dst) = self.route(&av) else {
                self.stats.ud_dropped_unknown_dest += 1;
                continue;
            };
            let dst_mtu = self.dev(dst).map_or(src_mtu, |x| x.cfg.active_mtu.bytes());
            if data.len() > src_mtu.min(dst_mtu) {
                self.stats.ud_dropped_over_mtu += 1;
                continue;
            }
            let faults = self.faults(d, dst);
            if self.rng.chance(faults.drop) {
                self.stats.ud_dropped_injected += 1;
                continue;
            }
            let copies = if self.rng.chance(faults.duplicate) {
                self.stats.ud_duplicated += 1;
                2
            } else {
                1
            };
            let grh = match (av.grh, sgid) {
                (Some(g), Some(s)) => Some((s, g.dgid, g.hop_limit, g.traffic_class, g.flow_label)),
                _ => None,
            };
            for _ in 0..copies {
                let when = at + faults.delay_ns + self.rng.upto(faults.jitter_ns);
                self.schedule(
                    when,
                    Event::UdArrive(Box::new(UdPacket {
                        dst_dev: dst,
                        dst_qpn,
                        qkey,
                        src_qpn,
                        slid,
                        grh,
                        imm,
                        data: data.clone(),
                    })),
                );
            }
        }
        self.complete_ready(d, h);
    }

    fn rc_transmit(&mut self, d: u32, h: u64, at: u64) {
        loop {
            let Some(dev) = self.dev(d) else { return };
            let Some(q) = dev.qps.get(h) else { return };
            if q.state != QpState::Rts {
                return;
            }
            let seq = q.tx_next;
            let Some(e) = q.entry(seq) else { break };
            if e.state != EntryState::Pending {
                break;
            }
            let op = match e.op {
                SendOp::Send
                | SendOp::SendWithImm(_)
                | SendOp::RdmaWrite { .. }
                | SendOp::RdmaWriteWithImm { .. } => {
                    // The payload is read at every (re)transmission, as the HCA does.
                    let data = match Self::gather(dev, q.pd, &e.data) {
                        Ok(v) => v,
                        Err(status) => {
                            self.fail_entry(d, h, seq, status, at);
                            return;
                        }
                    };
                    match e.op {
                        SendOp::Send => RcOp::Send { data, imm: None },
                        SendOp::SendWithImm(i) => RcOp::Send { data, imm: Some(i) },
                        SendOp::RdmaWrite { remote_addr, rkey } => RcOp::Write {
                            addr: remote_addr,
                            rkey,
                            data,
                            imm: None,
                        },
                        SendOp::RdmaWriteWithImm {
                            remote_addr,
                            rkey,
                            imm,
                        } => RcOp::Write {
                            addr: remote_addr,
                            rkey,
                            data,
                            imm: Some(imm),
                        },
                        SendOp::RdmaRead { .. } => return,
                    }
                }
                SendOp::RdmaRead { remote_addr, rkey } => {
                    let len = match &e.data {
                        Stored::Sg(l) => l.total_len(),
                        Stored::Inline(v) => v.len() as u64,
                    };
                    RcOp::Read {
                        addr: remote_addr,
                        rkey,
                        len: u32::try_from(len).unwrap_or(u32::MAX),
                    }
                }
            };
            let retransmission = e.transmissions > 0;
            let psn = q.psn_of_seq(seq);
            let av = q.av;
            let (src_qpn, dst_qpn, gen, timeout) = (q.qpn, q.dest_qpn, q.gen, q.timeout);
            let slid = dev.lid;
            let sgid = av
                .grh
                .and_then(|g| dev.gids.get(usize::from(g.sgid_index)).copied());
            let had_inflight = q.cq_next < q.tx_next
                && (q.cq_next..q.tx_next)
                    .any(|s| q.entry(s).is_some_and(|e| e.state == EntryState::Sent));
            if retransmission {
                self.stats.rc_retransmits += 1;
            }
            if let Some(q) = self.qp_mut(d, h) {
                q.tx_next += 1;
                if !had_inflight {
                    q.last_progress = at;
                }
                if let Some(e) = q.entry_mut(seq) {
                    e.transmissions += 1;
                    e.state = EntryState::Sent;
                }
            }
            // Arm the ACK timer; it covers lost packets and silent responders alike.
            if let Some(t) = ack_timeout_ns(timeout) {
                if let Some(q) = self.qp_mut(d, h) {
                    if !q.timer_armed {
                        q.timer_armed = true;
                        self.schedule(at + t, Event::RcTimer { dev: d, qp: h });
                    }
                }
            }
            let Some(dst) = self.route(&av) else {
                self.stats.rc_silent_drops += 1; // no such destination: nothing answers
                continue;
            };
            let faults = self.faults(d, dst);
            if self.rng.chance(faults.error) {
                self.stats.rc_link_errors += 1;
                self.schedule(
                    at + faults.delay_ns,
                    Event::RcResponse(Box::new(RcResp {
                        dev: d,
                        qp: h,
                        psn,
                        gen,
                        kind: RespKind::LinkError,
                    })),
                );
                continue;
            }
            if self.rng.chance(faults.drop) {
                self.stats.rc_lost_injected += 1;
                continue;
            }
            let jitter = self.rng.upto(faults.jitter_ns);
            let Some(q) = self.qp_mut(d, h) else { return };
            let when = (at + faults.delay_ns + jitter).max(q.last_tx_arrival);
            q.last_tx_arrival = when;
            self.schedule(
                when,
                Event::RcArrive(Box::new(RcPacket {
                    dst_dev: dst,
                    dst_qpn,
                    src_dev: d,
                    src_qp: h,
                    src_qpn,
                    slid,
                    sgid,
                    psn,
                    gen,
                    op,
                })),
            );
        }
    }

    // -----------------------------------------------------------------------------------------
    // Receiving.

    /// Takes the next receive of a QP (its RQ or its SRQ); returns it and what polling its
    /// CQE releases.
    fn take_recv(&mut self, d: u32, h: u64) -> Option<(RecvWr, Release)> {
        let dev = self.dev_mut(d)?;
        let q = dev.qps.get_mut(h)?;
        match q.srq {
            Some(s) => {
                let srq = dev.srqs.get_mut(s)?;
                srq.q.pop_front().map(|r| (r, Release::Srq(s)))
            }
            None => q.rq.pop_front().map(|r| (r, Release::Recv)),
        }
    }

    fn recv_cqe(&mut self, d: u32, h: u64, release: Release, wc: Wc) {
        let Some(q) = self.qp(d, h) else { return };
        let cq = q.recv_cq;
        self.cq_push(d, cq, Cqe { wc, qp: h, release });
    }

    fn ud_arrive(&mut self, p: UdPacket, at: u64) {
        let Some(dev) = self.dev(p.dst_dev) else {
            self.stats.ud_dropped_unknown_dest += 1;
            return;
        };
        let Some(&h) = dev.qpns.get(&p.dst_qpn) else {
            self.stats.ud_dropped_unknown_dest += 1;
            return;
        };
        let Some(q) = dev.qps.get(h) else {
            self.stats.ud_dropped_unknown_dest += 1;
            return;
        };
        if q.qp_type != QpType::Ud {
            self.stats.ud_dropped_unknown_dest += 1;
            return;
        }
        if !matches!(q.state, QpState::Rtr | QpState::Rts) {
            self.stats.ud_dropped_qp_state += 1;
            return;
        }
        if q.qkey != p.qkey {
            self.stats.ud_dropped_bad_qkey += 1;
            return;
        }
        let (pd, qpn) = (q.pd, q.qpn);
        let d = p.dst_dev;
        let Some((recv, release)) = self.take_recv(d, h) else {
            self.stats.ud_dropped_no_recv += 1;
            return;
        };
        let need = GRH_LEN + p.data.len();
        let base = Wc {
            wr_id: recv.wr_id,
            opcode: WcOpcode::Recv,
            qp_num: qpn,
            ..Wc::default()
        };
        let fail = |f: &mut Self, status| {
            f.recv_cqe(d, h, release, Wc { status, ..base });
            f.enter_error(d, h, at);
        };
        if (recv.sg.total_len() as usize) < need {
            fail(self, WcStatus::LocLenErr);
            return;
        }
        let Some(dev) = self.dev(d) else { return };
        if let Some((sgid, dgid, hop, tclass, flow)) = p.grh {
            let mut grh = [0u8; GRH_LEN];
            let vtf = (6u32 << 28) | (u32::from(tclass) << 20) | (flow & 0xf_ffff);
            grh[0..4].copy_from_slice(&vtf.to_be_bytes());
            grh[4..6].copy_from_slice(&(p.data.len() as u16).to_be_bytes());
            grh[6] = 0x1b; // next header: IBA transport
            grh[7] = hop;
            grh[8..24].copy_from_slice(&sgid);
            grh[24..40].copy_from_slice(&dgid);
            if let Err(status) = Self::scatter(dev, pd, &recv.sg, 0, &grh) {
                fail(self, status);
                return;
            }
        }
        if let Err(status) = Self::scatter(dev, pd, &recv.sg, GRH_LEN, &p.data) {
            fail(self, status);
            return;
        }
        self.stats.ud_delivered += 1;
        self.recv_cqe(
            d,
            h,
            release,
            Wc {
                byte_len: need as u32,
                imm: p.imm,
                src_qp: p.src_qpn,
                slid: p.slid,
                grh: p.grh.is_some(),
                ..base
            },
        );
    }

    pub(super) fn inject_rc_message(&mut self, d: u32, data: &[u8]) -> bool {
        let Some(dev) = self.dev(d) else { return false };
        let Some((h, q)) = dev
            .qps
            .iter()
            .filter(|(_, q)| {
                q.qp_type == QpType::Rc && matches!(q.state, QpState::Rtr | QpState::Rts)
            })
            .min_by_key(|(h, _)| *h)
        else {
            return false;
        };
        let (pd, qpn, src_qp, slid) = (q.pd, q.qpn, q.dest_qpn, q.av.dlid);
        let fits = match q.srq.and_then(|s| dev.srqs.get(s)) {
            Some(srq) => srq.q.front().map(|r| r.sg.total_len()),
            None => q.rq.front().map(|r| r.sg.total_len()),
        };
        if fits.is_none_or(|cap| cap < data.len() as u64) {
            return false;
        }
        let Some((recv, release)) = self.take_recv(d, h) else {
            return false;
        };
        let Some(dev) = self.dev(d) else { return false };
        let status = match Self::scatter(dev, pd, &recv.sg, 0, data) {
            Ok(()) => WcStatus::Success,
            Err(e) => e,
        };
        self.recv_cqe(
            d,
            h,
            release,
            Wc {
                wr_id: recv.wr_id,
                status,
                opcode: WcOpcode::Recv,
                byte_len: data.len() as u32,
                qp_num: qpn,
                src_qp,
                slid,
                ..Wc::default()
            },
        );
        status == WcStatus::Success
    }

    fn respond(&mut self, p: &RcPacket, responder: (u32, u64), kind: RespKind, at: u64) {
        self.respond_psn(p, responder, p.psn, kind, at);
    }

    /// Sends a response for `psn` back to the requester of `p`. Responses cross the reverse
    /// link and may be lost too: the requester's ACK timeout then resends, and the responder
    /// answers the duplicate without delivering it again.
    fn respond_psn(
        &mut self,
        p: &RcPacket,
        responder: (u32, u64),
        psn: u32,
        kind: RespKind,
        at: u64,
    ) {
        let faults = self.faults(p.dst_dev, p.src_dev);
        if self.rng.chance(faults.drop) {
            self.stats.rc_lost_injected += 1;
            return;
        }
        let Some(q) = self.qp_mut(responder.0, responder.1) else {
            return;
        };
        // Responses of one connection arrive in the order they were sent.
        let when = (at + faults.delay_ns).max(q.last_resp_at);
        q.last_resp_at = when;
        self.schedule(
            when,
            Event::RcResponse(Box::new(RcResp {
                dev: p.src_dev,
                qp: p.src_qp,
                psn,
                gen: p.gen,
                kind,
            })),
        );
    }

    fn rc_arrive(&mut self, p: RcPacket, at: u64) {
        let d = p.dst_dev;
        let Some(dev) = self.dev(d) else {
            self.stats.rc_silent_drops += 1;
            return;
        };
        let src_lid_ok = |q: &QpS| match dev.cfg.link_layer {
            LinkLayer::Infiniband => q.av.dlid == p.slid,
            LinkLayer::Ethernet => q.av.grh.map(|g| g.dgid) == p.sgid,
        };
        let found = dev.qpns.get(&p.dst_qpn).and_then(|&h| {
            let q = dev.qps.get(h)?;
            (q.qp_type == QpType::Rc
                && matches!(q.state, QpState::Rtr | QpState::Rts)
                && q.dest_qpn == p.src_qpn
                && src_lid_ok(q))
            .then_some(h)
        });
        let Some(h) = found else {
            // Wrong or absent QP, not ready, or not connected to this sender: the responder
            // says nothing and the requester's ACK timer takes over.
            self.stats.rc_silent_drops += 1;
            return;
        };
        let Some(q) = dev.qps.get(h) else { return };
        let (pd, qpn, access, min_rnr) = (q.pd, q.qpn, q.access, q.min_rnr_timer);
        let diff = p.psn.wrapping_sub(q.epsn) & PSN_MASK;
        if diff != 0 {
            if diff >= 0x80_0000 {
                // A duplicate of something already executed (the requester resent after a
                // timeout): acknowledge it again, do not deliver it twice.
                let kind = match &p.op {
                    RcOp::Read { addr, rkey, len } => {
                        match Self::remote_region(
                            dev,
                            pd,
                            access,
                            *rkey,
                            *addr,
                            *len as usize,
                            Access::REMOTE_READ,
                        ) {
                            Some((mr, off)) => {
                                let mut v = Vec::new();
                                if let Some(m) = dev.mrs.get(mr) {
                                    m.mem.read_into(off, *len as usize, &mut v);
                                }
                                RespKind::ReadData(v)
                            }
                            None => RespKind::Nak(WcStatus::RemAccessErr),
                        }
                    }
                    _ => RespKind::Ack,
                };
                self.stats.rc_duplicates += 1;
                self.respond(&p, (d, h), kind, at);
            } else if let Some(q) = self.qp_mut(d, h) {
                // Out of sequence: a packet before this one was lost. One NAK per gap makes the
                // requester go back to the expected PSN.
                if !q.nak_sent {
                    q.nak_sent = true;
                    let epsn = q.epsn;
                    self.stats.rc_seq_naks += 1;
                    self.respond_psn(&p, (d, h), epsn, RespKind::SeqNak, at);
                }
            }
            return;
        }
        let kind = match &p.op {
            RcOp::Send { data, imm } => {
                let Some((recv, release)) = self.take_recv(d, h) else {
                    self.stats.rc_rnr_naks += 1;
                    self.respond(
                        &p,
                        (d, h),
                        RespKind::Rnr {
                            delay_ns: rnr_delay_ns(min_rnr),
                        },
                        at,
                    );
                    return;
                };
                let base = Wc {
                    wr_id: recv.wr_id,
                    opcode: WcOpcode::Recv,
                    qp_num: qpn,
                    src_qp: p.src_qpn,
                    slid: p.slid,
                    ..Wc::default()
                };
                let Some(dev) = self.dev(d) else { return };
                let res = if (recv.sg.total_len() as usize) < data.len() {
                    Err(WcStatus::LocLenErr)
                } else {
                    Self::scatter(dev, pd, &recv.sg, 0, data)
                };
                if let Err(status) = res {
                    self.recv_cqe(d, h, release, Wc { status, ..base });
                    self.enter_error(d, h, at);
                    let remote = if status == WcStatus::LocLenErr {
                        WcStatus::RemInvReqErr
                    } else {
                        WcStatus::RemOpErr
                    };
                    self.respond(&p, (d, h), RespKind::Nak(remote), at);
                    return;
                }
                self.recv_cqe(
                    d,
                    h,
                    release,
                    Wc {
                        byte_len: data.len() as u32,
                        imm: *imm,
                        ..base
                    },
                );
                RespKind::Ack
            }
            RcOp::Write {
                addr,
                rkey,
                data,
                imm,
            } => {
                let Some(region) = Self::remote_region(
                    dev,
                    pd,
                    access,
                    *rkey,
                    *addr,
                    data.len(),
                    Access::REMOTE_WRITE,
                ) else {
                    self.respond(&p, (d, h), RespKind::Nak(WcStatus::RemAccessErr), at);
                    return;
                };
                let recv = if imm.is_some() {
                    // WRITE with immediate also consumes a receive: RNR applies.
                    match self.take_recv(d, h) {
                        Some(r) => Some(r),
                        None => {
                            self.stats.rc_rnr_naks += 1;
                            self.respond(
                                &p,
                                (d, h),
                                RespKind::Rnr {
                                    delay_ns: rnr_delay_ns(min_rnr),
                                },
                                at,
                            );
                            return;
                        }
                    }
                } else {
                    None
                };
                let Some(dev) = self.dev(d) else { return };
                if let Some(m) = dev.mrs.get(region.0) {
                    m.mem.write_from(region.1, data);
                }
                if let Some((r, release)) = recv {
                    self.recv_cqe(
                        d,
                        h,
                        release,
                        Wc {
                            wr_id: r.wr_id,
                            opcode: WcOpcode::RecvRdmaWithImm,
                            byte_len: data.len() as u32,
                            imm: *imm,
                            qp_num: qpn,
                            src_qp: p.src_qpn,
                            slid: p.slid,
                            ..Wc::default()
                        },
                    );
                }
                RespKind::Ack
            }
            RcOp::Read { addr, rkey, len } => {
                match Self::remote_region(
                    dev,
                    pd,
                    access,
                    *rkey,
                    *addr,
                    *len as usize,
                    Access::REMOTE_READ,
                ) {
                    Some((mr, off)) => {
                        let mut v = Vec::new();
                        if let Some(m) = dev.mrs.get(mr) {
                            m.mem.read_into(off, *len as usize, &mut v);
                        }
                        RespKind::ReadData(v)
                    }
                    None => {
                        self.respond(&p, (d, h), RespKind::Nak(WcStatus::RemAccessErr), at);
                        return;
                    }
                }
            }
        };
        self.stats.rc_delivered += 1;
        if let Some(q) = self.qp_mut(d, h) {
            q.epsn = q.epsn.wrapping_add(1) & PSN_MASK;
            q.nak_sent = false;
        }
        self.respond(&p, (d, h), kind, at);
    }

    // -----------------------------------------------------------------------------------------
    // The requester's side of RC.

    /// Goes back to `seq`: it and everything after it are sent again; responses to the old
    /// transmissions are ignored (new generation).
    fn rewind(&mut self, d: u32, h: u64, seq: u64, at: u64) {
        let Some(q) = self.qp_mut(d, h) else { return };
        q.gen = q.gen.wrapping_add(1);
        let end = q.tx_next;
        for s in seq..end {
            if let Some(e) = q.entry_mut(s) {
                if e.state == EntryState::Sent {
                    e.state = EntryState::Pending;
                }
            }
        }
        q.tx_next = seq.min(q.tx_next);
        q.last_progress = at;
    }

    fn rc_response(&mut self, r: RcResp, at: u64) {
        let (d, h) = (r.dev, r.qp);
        let Some(q) = self.qp(d, h) else { return };
        if q.state != QpState::Rts {
            return;
        }
        let seq = q.seq_of_psn(r.psn);
        let sent = q.entry(seq).is_some_and(|e| e.state == EntryState::Sent);
        let current = r.gen == q.gen;
        match r.kind {
            RespKind::Ack | RespKind::ReadData(_) => {
                if !sent {
                    return; // a late ACK for something already handled
                }
                let byte_len;
                if let RespKind::ReadData(data) = &r.kind {
                    let Some(dev) = self.dev(d) else { return };
                    let Some(q) = dev.qps.get(h) else { return };
                    let Some(e) = q.entry(seq) else { return };
                    let res = match &e.data {
                        Stored::Sg(l) => Self::scatter(dev, q.pd, l, 0, data),
                        Stored::Inline(_) => Err(WcStatus::LocProtErr),
                    };
                    if let Err(status) = res {
                        let status = if status == WcStatus::LocLenErr {
                            WcStatus::LocLenErr
                        } else {
                            WcStatus::LocProtErr
                        };
                        self.fail_entry(d, h, seq, status, at);
                        return;
                    }
                    byte_len = data.len() as u32;
                } else {
                    byte_len =
                        self.qp(d, h)
                            .and_then(|q| q.entry(seq))
                            .map_or(0, |e| match &e.data {
                                Stored::Sg(l) => l.total_len() as u32,
                                Stored::Inline(v) => v.len() as u32,
                            });
                }
                let Some(q) = self.qp_mut(d, h) else { return };
                // ACKs are cumulative: everything sent before this request has arrived too.
                let from = q.cq_next;
                for s in from..=seq {
                    if let Some(e) = q.entry_mut(s) {
                        if e.state == EntryState::Sent {
                            let len = if s == seq {
                                byte_len
                            } else {
                                match &e.data {
                                    Stored::Sg(l) => l.total_len() as u32,
                                    Stored::Inline(v) => v.len() as u32,
                                }
                            };
                            e.state = EntryState::Done {
                                status: WcStatus::Success,
                                byte_len: len,
                            };
                        }
                    }
                }
                q.last_progress = at;
                q.retry_left = q.retry_cnt;
                q.rnr_left = q.rnr_retry;
                self.complete_ready(d, h);
            }
            RespKind::Rnr { delay_ns } => {
                if !sent || !current {
                    return;
                }
                let Some(q) = self.qp_mut(d, h) else { return };
                if q.rnr_retry != 7 {
                    if q.rnr_left == 0 {
                        self.fail_entry(d, h, seq, WcStatus::RnrRetryExcErr, at);
                        return;
                    }
                    q.rnr_left -= 1;
                }
                q.stalled_until = at + delay_ns;
                let when = q.stalled_until;
                self.rewind(d, h, seq, at);
                self.schedule_transmit(d, h, when);
            }
            RespKind::SeqNak => {
                if !sent || !current {
                    return;
                }
                let Some(q) = self.qp_mut(d, h) else { return };
                if q.retry_left == 0 {
                    self.fail_entry(d, h, seq, WcStatus::RetryExcErr, at);
                    return;
                }
                q.retry_left -= 1;
                self.rewind(d, h, seq, at);
                self.schedule_transmit(d, h, at);
            }
            RespKind::Nak(status) => {
                if sent {
                    self.fail_entry(d, h, seq, status, at);
                }
            }
            RespKind::LinkError => {
                if sent && current {
                    self.fail_entry(d, h, seq, WcStatus::RetryExcErr, at);
                }
            }
        }
    }

    fn schedule_transmit(&mut self, d: u32, h: u64, at: u64) {
        if let Some(q) = self.qp_mut(d, h) {
            if !q.tx_scheduled {
                q.tx_scheduled = true;
                self.schedule(at, Event::Transmit { dev: d, qp: h });
            }
        }
    }

    fn rc_timer(&mut self, d: u32, h: u64, at: u64) {
        let Some(q) = self.qp_mut(d, h) else { return };
        q.timer_armed = false;
        if q.state != QpState::Rts {
            return;
        }
        let Some(t) = ack_timeout_ns(q.timeout) else {
            return;
        };
        let oldest = (q.cq_next..q.tx_next)
            .find(|&s| q.entry(s).is_some_and(|e| e.state == EntryState::Sent));
        let Some(oldest) = oldest else { return };
        if at < q.last_progress + t {
            q.timer_armed = true;
            let when = q.last_progress + t;
            self.schedule(when, Event::RcTimer { dev: d, qp: h });
            return;
        }
        if q.retry_left == 0 {
            self.fail_entry(d, h, oldest, WcStatus::RetryExcErr, at);
            return;
        }
        q.retry_left -= 1;
        q.timer_armed = true;
        self.stats.rc_timeouts += 1;
        self.schedule(at + t, Event::RcTimer { dev: d, qp: h });
        self.rewind(d, h, oldest, at);
        self.schedule_transmit(d, h, at);
    }
}
