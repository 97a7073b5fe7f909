//! InfiniBand/RoCE unreliable datagram transport, after eRPC's `IBTransport`.
//!
//! One UD queue pair per transport. Every route is an address handle plus the peer's QPN and
//! qkey; packets are single SENDs of at most the port's MTU.
//!
//! * **Receive ring**: `rx_ring_size` slots in one registered region. Each slot is
//!   `64 + MTU` bytes rounded to a cache line; its receive buffer starts at offset 24, so the
//!   40-byte GRH fills the gap and the payload starts cache-line aligned at offset 64. The
//!   buffer holds a full `40 + MTU`, so no peer can make this QP fail with `LOC_LEN_ERR`;
//!   packets longer than [`Transport::max_pkt_size`] are dropped and counted instead. `wr_id`
//!   is the slot index. The receive queue is FIFO and packets are released in order, so freed
//!   slots form a contiguous run of the ring; they are reposted with one post list once
//!   `repost_batch` (32) are free (checked at every `rx_release` and `rx_burst`).
//!   [`Transport::rx_ring_size`] reports the slots minus that slack: with at most that many
//!   packets in flight or held by the caller, a receive is always posted when one arrives.
//! * **Transmit**: post lists of up to `max_post_list` (16) sends; one `ibv_post_send` per
//!   list. Packets of at most `max_inline` (60) bytes go inline (header and payload gathered
//!   from the caller's slices by the device at post time, nothing copied by us); larger ones are
//!   copied into a registered staging slot (the `Transport` API hands us unregistered
//!   slices, so zero-copy would need the RPC layer's buffers to be registered). Selective
//!   signaling: send number `k` is signaled when `k % signal_every == signal_every - 1`
//!   (every 64th), so at most `signal_every - 1` unsignaled sends trail the last signaled one;
//!   with `sq_depth >= 2 * signal_every` the queue never fills with nothing to free it. Send
//!   completions are polled at every `tx_burst`; a slot (SQ entry and staging buffer) is reused
//!   only after the completion covering it was polled. When the send queue fills during a
//!   burst, the transport polls the send CQ once more; if that frees nothing, the rest of the
//!   burst is dropped and counted — the RPC layer retransmits, as with a full socket buffer.
//! * **Routes**: the routing info is `{LID, QPN, qkey, MTU, GID}`; `resolve` creates the
//!   address handle (with a GRH on RoCE, `sgid_index` = the configured GID index, hop limit
//!   64). `route_free` destroys it at once: providers (mlx5, rxe) copy the address vector into
//!   the work request at post time.
//! * **Errors**: a UD QP in ERROR (a completion error, or an injected fatal error) would stop
//!   every route at once, so the transport recovers: RESET, INIT, RTR, RTS with the same QPN
//!   (peers' address handles stay valid), all staging slots freed, every receive slot not
//!   held by the caller posted again. Counted in [`UdStats::recoveries`].
//!
//! ```
//! use transports::rdma::sim::{SimVerbs, SimDeviceConfig};
//! use transports::rdma::ud::{UdConfig, UdTransport};
//! use transports::{Transport, TxPkt};
//!
//! let fabric = SimVerbs::new(1);
//! let cfg = UdConfig { rx_ring_size: 256, ..UdConfig::default() };
//! let mut a = UdTransport::new(fabric.open_device(Default::default()), cfg.clone()).unwrap();
//! let mut b = UdTransport::new(fabric.open_device(Default::default()), cfg).unwrap();
//! let (route, _) = a.route_alloc().unwrap();
//! a.resolve(route, &b.routing_info()).unwrap();
//! assert_eq!(a.tx_burst(&[TxPkt { route, hdr: b"hi ", data: b"there" }]).unwrap(), 1);
//! while b.rx_burst() == 0 {
//!     fabric.step(); // let the simulated HCAs move the packet
//! }
//! assert_eq!(b.rx_pkt(0), b"hi there");
//! b.rx_release(1);
//! ```
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::VecDeque;
use std::time::Duration;

use super::common::*;
use super::verbs::*;
use crate::{
    RouteId, RoutingInfo, Transport, TransportError, TransportKind, TransportStats, TxPkt,
};

/// Configuration of a [`UdTransport`]. The defaults are eRPC's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdConfig {
    /// Port to use; `None`: the first ACTIVE one.
    pub port: Option<u8>,
    /// GID table index for the GRH. RoCE needs one (default 1); on InfiniBand `None` sends
    /// without a GRH (LID routing).
    pub gid_index: Option<u8>,
    /// Largest packet (RPC header + payload); `None` or anything larger: the port's MTU.
    pub max_pkt_size: Option<usize>,
    /// Receive slots, `64..=65536`. Default 4096.
    pub rx_ring_size: usize,
    /// Receive slots freed before they are reposted in one list. Default 32.
    pub repost_batch: usize,
    /// Send queue depth. Default 128.
    pub sq_depth: u32,
    /// Every this many sends, one is signaled. Default 64; `sq_depth >= 2 * signal_every`.
    pub signal_every: u32,
    /// Most sends per post list. Default 16; at most `signal_every`.
    pub max_post_list: usize,
    /// Packets up to this many bytes are sent inline. Default 60.
    pub max_inline: u32,
    /// Queue key of the QP (peers must use the same). Default 0x0205.
    pub qkey: u32,
    /// Most routes. Default 65536.
    pub max_routes: usize,
}

impl Default for UdConfig {
    fn default() -> Self {
        Self {
            port: None,
            gid_index: None,
            max_pkt_size: None,
            rx_ring_size: 4096,
            repost_batch: 32,
            sq_depth: 128,
            signal_every: 64,
            max_post_list: 16,
            max_inline: 60,
            qkey: 0x0205,
            max_routes: 1 << 16,
        }
    }
}

/// Counters specific to the UD transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdStats {
    /// Packets sent inline.
    pub inline_sends: u64,
    /// Packets dropped because the send queue was full.
    pub sq_full_drops: u64,
    /// Send completions with an error status.
    pub tx_errors: u64,
    /// Receive completions with an error status.
    pub rx_errors: u64,
    /// Times the QP was brought back from ERROR.
    pub recoveries: u64,
    /// Receive posts (each a list).
    pub recv_posts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Free,
    Allocated,
    Resolved(UdDest),
}

/// The UD transport over any [`VerbsDevice`].
pub struct UdTransport<D: VerbsDevice> {
    dev: D,
    cfg: UdConfig,
    local: Local,
    max_pkt: usize,
    pd: Pd,
    send_cq: Cq,
    recv_cq: Cq,
    qp: QpInfo,
    rx: RxRing,
    tx: TxPool,
    /// Posted sends not yet covered by a polled completion: (sequence number, staging slot).
    inflight: VecDeque<(u64, Option<u32>)>,
    next_seq: u64,
    routes: Vec<Route>,
    free_routes: Vec<RouteId>,
    send_wcs: Vec<Wc>,
    /// The QP is in ERROR and must be reset.
    broken: bool,
    /// A CQ failed (overflow): the endpoint is unusable; nothing is sent or received.
    dead: bool,
    stats: TransportStats,
    ud: UdStats,
}

impl<D: VerbsDevice> std::fmt::Debug for UdTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdTransport")
            .field("device", &self.dev.name())
            .field("qpn", &self.qp.qp_num)
            .field("lid", &self.local.lid)
            .finish()
    }
}

fn config(msg: impl Into<String>) -> TransportError {
    TransportError::Config(msg.into())
}

impl<D: VerbsDevice> UdTransport<D> {
    /// Opens the transport on `dev`: picks the port, creates the PD, CQs, QP (brought to RTS)
    /// and registered buffers, and posts every receive.
    pub fn new(mut dev: D, cfg: UdConfig) -> Result<Self, TransportError> {
        if !(64..=65_536).contains(&cfg.rx_ring_size) {
            return Err(config("rx_ring_size must be in 64..=65536"));
        }
        if cfg.repost_batch == 0 || cfg.repost_batch >= cfg.rx_ring_size / 2 {
            return Err(config("repost_batch must be in 1..rx_ring_size/2"));
        }
        if cfg.signal_every == 0 || cfg.sq_depth < 2 * cfg.signal_every {
            return Err(config(
                "sq_depth must be at least 2 * signal_every (and signal_every > 0)",
            ));
        }
        if cfg.max_post_list == 0 || cfg.max_post_list > cfg.signal_every as usize {
            return Err(config("max_post_list must be in 1..=signal_every"));
        }
        if cfg.max_routes == 0 || cfg.max_routes > 1 << 24 {
            return Err(config("max_routes must be in 1..=2^24"));
        }
        let local = open_port(&mut dev, cfg.port, cfg.gid_index)?;
        let mtu = local.mtu.bytes();
        let max_pkt = cfg.max_pkt_size.unwrap_or(mtu).min(mtu);
        if max_pkt == 0 {
            return Err(config("max_pkt_size must be positive"));
        }
        let v = |what: &'static str| move |e| verbs_err(what, e);
        let pd = dev.alloc_pd().map_err(v("ibv_alloc_pd"))?;
        let (send_cq, _) = dev
            .create_cq(cfg.sq_depth)
            .map_err(v("create the send CQ"))?;
        let (recv_cq, _) = dev
            .create_cq(cfg.rx_ring_size as u32)
            .map_err(v("create the receive CQ"))?;
        let qp = dev
            .create_qp(
                pd,
                &QpInit {
                    qp_type: QpType::Ud,
                    send_cq,
                    recv_cq,
                    srq: None,
                    caps: QpCaps {
                        max_send_wr: cfg.sq_depth,
                        max_recv_wr: cfg.rx_ring_size as u32,
                        max_send_sge: 2,
                        max_recv_sge: 1,
                        max_inline_data: cfg.max_inline,
                    },
                    sq_sig_all: false,
                },
            )
            .map_err(v("create the UD QP"))?;
        let lay = RingLayout {
            slots: cfg.rx_ring_size,
            stride: line_align(64 + mtu),
            recv_off: 64 - GRH_LEN,
            recv_len: GRH_LEN + mtu,
            strip: GRH_LEN,
            max_pkt,
        };
        let rx = RxRing::new(
            &mut dev,
            pd,
            recv_cq,
            RecvTarget::Qp(qp.qp),
            lay,
            cfg.repost_batch,
        )?;
        let tx = TxPool::new(&mut dev, pd, cfg.sq_depth as usize, max_pkt)?;
        let mut t = Self {
            dev,
            local,
            max_pkt,
            pd,
            send_cq,
            recv_cq,
            qp,
            rx,
            tx,
            inflight: VecDeque::with_capacity(cfg.sq_depth as usize),
            next_seq: 0,
            routes: Vec::new(),
            free_routes: Vec::new(),
            send_wcs: vec![Wc::default(); 64],
            broken: false,
            dead: false,
            stats: TransportStats::default(),
            ud: UdStats::default(),
            cfg,
        };
        t.bring_up()?;
        Ok(t)
    }

    /// RESET (or just created) → INIT → RTR → RTS, then posts every free receive slot (in
    /// INIT already, so nothing arriving after RTR finds the queue empty).
    fn bring_up(&mut self) -> Result<(), TransportError> {
        let qp = self.qp.qp;
        let a = QpAttr {
            state: QpState::Init,
            port_num: self.local.port,
            pkey_index: 0,
            qkey: self.cfg.qkey,
            ..QpAttr::default()
        };
        let v = |what: &'static str| move |e| verbs_err(what, e);
        self.dev
            .modify_qp(qp, &a, AttrMask::UD_INIT)
            .map_err(v("UD QP to INIT"))?;
        self.rx.repost(&mut self.dev, true).map_err(|e| {
            verbs_err(
                "post the receive ring",
                VerbsError::errno("ibv_post_recv", e.errno),
            )
        })?;
        self.dev
            .modify_qp(
                qp,
                &QpAttr {
                    state: QpState::Rtr,
                    ..a
                },
                AttrMask::STATE,
            )
            .map_err(v("UD QP to RTR"))?;
        self.dev
            .modify_qp(
                qp,
                &QpAttr {
                    state: QpState::Rts,
                    sq_psn: 0,
                    ..a
                },
                AttrMask::UD_RTS,
            )
            .map_err(v("UD QP to RTS"))?;
        Ok(())
    }

    /// The link layer of the port in use (InfiniBand or Ethernet/RoCE).
    pub fn link_layer(&self) -> LinkLayer {
        self.local.link_layer
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutably (for tests and tools; the transport assumes nobody touches its
    /// objects).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// This endpoint's QP number.
    pub fn qp_num(&self) -> u32 {
        self.qp.qp_num
    }

    /// The port in use.
    pub fn port(&self) -> u8 {
        self.local.port
    }

    /// The UD counters.
    pub fn ud_stats(&self) -> UdStats {
        UdStats {
            rx_errors: self.rx.stats.rx_errors,
            recv_posts: self.rx.stats.posts,
            ..self.ud
        }
    }

    /// The configuration.
    pub fn config(&self) -> &UdConfig {
        &self.cfg
    }

    fn local_addr(&self) -> Addr {
        Addr {
            tag: TAG_UD,
            global: self.local.global,
            lid: self.local.lid,
            qpn: self.qp.qp_num,
            key: self.cfg.qkey,
            mtu: self.local.mtu,
            gid: self.local.gid,
        }
    }

    /// Frees the staging slots of sends up to and including `seq`.
    fn complete_upto(&mut self, seq: u64) {
        while self.inflight.front().is_some_and(|&(s, _)| s <= seq) {
            if let Some((_, Some(slot))) = self.inflight.pop_front() {
                self.tx.release(slot);
            }
        }
    }

    fn reap_send(&mut self) {
        loop {
            let Some(wcs) = self.send_wcs.get_mut(..) else {
                return;
            };
            let n = match self.dev.poll_cq(self.send_cq, wcs) {
                Ok(n) => n,
                Err(e) => {
                    self.die(&e);
                    return;
                }
            };
            let mut last = None;
            for wc in wcs.iter().take(n) {
                if wc.status != WcStatus::Success {
                    if wc.status != WcStatus::WrFlushErr {
                        self.ud.tx_errors += 1;
                        tracing::warn!(status = ?wc.status, vendor_err = wc.vendor_err, "UD send failed");
                    }
                    self.broken = true;
                }
                last = Some(wc.wr_id);
            }
            if let Some(seq) = last {
                self.complete_upto(seq);
            }
            if n < self.send_wcs.len() {
                return;
            }
        }
    }

    /// Brings the QP back from ERROR (see the module doc).
    fn recover(&mut self) {
        tracing::warn!(qpn = self.qp.qp_num, "UD QP in error; resetting it");
        let reset = QpAttr {
            state: QpState::Reset,
            ..QpAttr::default()
        };
        if let Err(e) = self.dev.modify_qp(self.qp.qp, &reset, AttrMask::STATE) {
            tracing::error!(error = %e, "cannot reset the UD QP");
            return;
        }
        // Whatever completions are left belong to the dead incarnation.
        let mut scratch = [Wc::default(); 64];
        for cq in [self.send_cq, self.recv_cq] {
            while matches!(self.dev.poll_cq(cq, &mut scratch), Ok(n) if n > 0) {}
        }
        while let Some((_, slot)) = self.inflight.pop_front() {
            if let Some(s) = slot {
                self.tx.release(s);
            }
        }
        self.rx.forget_posted();
        match self.bring_up() {
            Ok(()) => {
                self.broken = false;
                self.ud.recoveries += 1;
            }
            Err(e) => tracing::error!(error = %e, "cannot bring the UD QP back up"),
        }
    }

    fn check_health(&mut self) {
        if self.broken && !self.dead {
            self.recover();
        }
    }

    /// A CQ failed: resetting the QP cannot help (the CQs are sized so that this does not
    /// happen); stop using the endpoint and say so once.
    fn die(&mut self, e: &VerbsError) {
        if !self.dead {
            tracing::error!(error = %e, "UD completion queue failed; the endpoint is unusable");
            self.dead = true;
        }
    }

    /// Whether a completion queue failed and the endpoint no longer moves packets.
    pub fn is_dead(&self) -> bool {
        self.dead
    }
}

impl<D: VerbsDevice> Drop for UdTransport<D> {
    fn drop(&mut self) {
        // The QP first (no more DMA), then what it used. Errors cannot be handled here.
        let _ = self.dev.destroy_qp(self.qp.qp);
        for r in &self.routes {
            if let Route::Resolved(d) = r {
                let _ = self.dev.destroy_ah(d.ah);
            }
        }
        let _ = self.dev.destroy_cq(self.send_cq);
        let _ = self.dev.destroy_cq(self.recv_cq);
        let _ = self.dev.dereg_mr(self.rx.mr());
        let _ = self.dev.dereg_mr(self.tx.mr());
        let _ = self.dev.dealloc_pd(self.pd);
    }
}

impl<D: VerbsDevice> Transport for UdTransport<D> {
    fn kind(&self) -> TransportKind {
        TransportKind::InfinibandUd
    }

    fn routing_info(&self) -> RoutingInfo {
        self.local_addr().encode()
    }

    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        let info = self.routing_info();
        if let Some(r) = self.free_routes.pop() {
            if let Some(slot) = self.routes.get_mut(r as usize) {
                *slot = Route::Allocated;
                return Ok((r, info));
            }
        }
        if self.routes.len() >= self.cfg.max_routes {
            return Err(TransportError::RoutesExhausted(self.routes.len()));
        }
        self.routes.push(Route::Allocated);
        Ok(((self.routes.len() - 1) as RouteId, info))
    }

    fn resolve(&mut self, route: RouteId, remote: &RoutingInfo) -> Result<(), TransportError> {
        match self.routes.get(route as usize) {
            Some(Route::Allocated) | Some(Route::Resolved(_)) => {}
            _ => return Err(TransportError::UnknownRoute(route)),
        }
        let peer = Addr::decode(remote, TAG_UD)?;
        let ah = self
            .dev
            .create_ah(self.pd, &self.local.av_to(&peer))
            .map_err(|e| {
                TransportError::Resolve(format!("cannot create the address handle: {e}"))
            })?;
        let dest = UdDest {
            ah,
            remote_qpn: peer.qpn,
            remote_qkey: peer.key,
        };
        if let Some(slot) = self.routes.get_mut(route as usize) {
            if let Route::Resolved(old) = std::mem::replace(slot, Route::Resolved(dest)) {
                let _ = self.dev.destroy_ah(old.ah);
            }
        }
        Ok(())
    }

    fn route_free(&mut self, route: RouteId) {
        let Some(slot) = self.routes.get_mut(route as usize) else {
            return;
        };
        match std::mem::replace(slot, Route::Free) {
            Route::Free => return,
            Route::Resolved(d) => {
                let _ = self.dev.destroy_ah(d.ah);
            }
            Route::Allocated => {}
        }
        self.free_routes.push(route);
    }

    fn max_pkt_size(&self) -> usize {
        self.max_pkt
    }

    fn rx_ring_size(&self) -> usize {
        self.rx.capacity()
    }

    fn tx_burst(&mut self, pkts: &[TxPkt<'_>]) -> Result<usize, TransportError> {
        self.reap_send();
        self.check_health();
        if self.dead {
            self.stats.tx_dropped += pkts.len() as u64;
            return Ok(0);
        }
        let mut sent = 0;
        let mut i = 0;
        let list = self.cfg.max_post_list.min(16);
        let mut wrs: [SendWr<'_>; 16] = [NO_WR; 16];
        // Set when reaping completions freed nothing: the rest of the burst is dropped.
        let mut stalled = false;
        while i < pkts.len() {
            let mut k = 0;
            while k < list {
                let Some(p) = pkts.get(i) else { break };
                let len = p.hdr.len() + p.data.len();
                let dest = match self.routes.get(p.route as usize) {
                    Some(Route::Resolved(d)) if len <= self.max_pkt => *d,
                    _ => {
                        i += 1;
                        self.stats.tx_dropped += 1;
                        continue;
                    }
                };
                if self.inflight.len() >= self.cfg.sq_depth as usize {
                    if k > 0 {
                        break; // post what we have, then look at the completions
                    }
                    let before = self.inflight.len();
                    if !stalled {
                        self.reap_send();
                        stalled = self.inflight.len() == before;
                        continue;
                    }
                    i += 1;
                    self.stats.tx_dropped += 1;
                    self.ud.sq_full_drops += 1;
                    continue;
                }
                i += 1;
                let seq = self.next_seq;
                let (payload, slot) = if len <= self.cfg.max_inline as usize {
                    self.ud.inline_sends += 1;
                    (Payload::Inline(p.hdr, p.data), None)
                } else {
                    match self.tx.stage(p.hdr, p.data) {
                        Some((slot, sge)) => (Payload::Sg(SgList::one(sge)), Some(slot)),
                        None => {
                            self.stats.tx_dropped += 1;
                            continue;
                        }
                    }
                };
                let every = u64::from(self.cfg.signal_every);
                if let Some(w) = wrs.get_mut(k) {
                    *w = SendWr {
                        wr_id: seq,
                        op: SendOp::Send,
                        signaled: seq % every == every - 1,
                        payload,
                        ud: Some(dest),
                    };
                }
                self.inflight.push_back((seq, slot));
                self.next_seq += 1;
                k += 1;
            }
            if k == 0 {
                continue;
            }
            let Some(batch) = wrs.get(..k) else { break };
            self.stats.tx_batches += 1;
            match self.dev.post_send(self.qp.qp, batch) {
                Ok(()) => sent += k,
                Err(e) => {
                    // Requests from `e.index` on were not posted: take them back.
                    tracing::warn!(error = %e, "UD post_send failed");
                    let posted = e.index.min(k);
                    for _ in posted..k {
                        if let Some((_, Some(slot))) = self.inflight.pop_back() {
                            self.tx.release(slot);
                        }
                        self.next_seq -= 1;
                    }
                    sent += posted;
                    self.stats.tx_dropped += (pkts.len() - i + k - posted) as u64;
                    self.broken = true;
                    break;
                }
            }
        }
        self.stats.tx_pkts += sent as u64;
        Ok(sent)
    }

    fn rx_burst(&mut self) -> usize {
        if self.dead {
            return self.rx.len();
        }
        let mut broken = false;
        let res = self.rx.poll(&mut self.dev, |wc| {
            if wc.status != WcStatus::WrFlushErr {
                tracing::warn!(status = ?wc.status, "UD receive failed");
            }
            broken = true;
        });
        if let Err(e) = res {
            self.die(&e);
            return self.rx.len();
        }
        if broken {
            self.broken = true;
        }
        self.check_health();
        if !self.broken {
            match self.rx.repost(&mut self.dev, false) {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "UD post_recv failed");
                    self.broken = true;
                }
            }
        }
        self.rx.len()
    }

    fn rx_pkt(&self, i: usize) -> &[u8] {
        self.rx.pkt(i).unwrap_or(&[])
    }

    fn rx_release(&mut self, n: usize) {
        self.rx.release(n);
        // Repost a full batch at once, so that at most `repost_batch - 1` free slots are ever
        // unposted — what `rx_ring_size` promises.
        if !self.broken && !self.dead {
            if let Err(e) = self.rx.repost(&mut self.dev, false) {
                tracing::warn!(error = %e, "UD post_recv failed");
                self.broken = true;
            }
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        self.dev.idle(timeout);
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        let r = self.rx.stats;
        TransportStats {
            rx_pkts: r.rx_pkts,
            rx_batches: r.rx_batches,
            rx_dropped: r.rx_dropped,
            ..self.stats
        }
    }
}
