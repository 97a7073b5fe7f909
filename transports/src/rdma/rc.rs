//! InfiniBand/RoCE reliable connection transport: one RC queue pair per route.
//!
//! * **Connecting** follows the two-step route protocol of [`Transport`]: `route_alloc`
//!   creates a fresh QP, brings it to INIT and returns its `{LID, QPN, first PSN, MTU, GID}`;
//!   `resolve` with the peer's info moves it to RTR (address vector, path MTU = the smaller of
//!   the two ports', the peer's QPN and PSN) and RTS. The session handshake carries the
//!   routing info both ways, so both ends of a session have a connected QP once it completes.
//!   A QP still in INIT drops what arrives; the sender's ACK timeout resends it, so a peer
//!   that talks before the handshake has finished loses nothing.
//! * **Receiving** uses one shared receive queue for all routes, with `rx_ring_size` slots of
//!   `max_pkt_size` bytes in one registered region, and one receive CQ. The RPC layer admits
//!   sessions so that the credits towards this endpoint never exceed
//!   [`Transport::rx_ring_size`] (the slots minus the repost slack), so a receive is always
//!   posted when a message arrives: RNR does not happen in normal operation. If it does (a
//!   caller holding packets), the sender's HCA waits `min_rnr_timer` and retries, forever by
//!   default (`rnr_retry` 7).
//! * **Large messages** travel as packets: each RPC packet is one SEND of up to
//!   `max_pkt_size` (default 8 KiB, up to the port's message size limit), which the HCA
//!   segments into path-MTU wire packets. The alternative — rrppcc's RDMA READ of the
//!   sender's registered buffer — needs the RPC layer to hand the transport registered
//!   message buffers, which the `Transport` API does not do (it passes borrowed slices); with
//!   packets, multi-packet messages, credits and at-most-once stay in the RPC layer, unchanged.
//! * **Sending**: consecutive packets to one route go out as one post list. Small packets
//!   (up to `max_inline`) are sent inline; others are copied into a slot of a registered
//!   staging pool shared by all routes. Signaling: the last send of each post to a QP, and
//!   every `signal_every`-th, are signaled, so an idle route never holds staging slots. When a
//!   QP's send queue is full, packets wait (staged) in a per-route backlog and are posted as
//!   completions free room; only a full backlog or an exhausted pool drops (and counts) a
//!   packet — and since the transport is reliable, it then reports the route as failed.
//! * **Reliability**: [`Transport::is_reliable`] is true. A QP in ERROR — a send completing
//!   with `RETRY_EXC_ERR` (peer gone), `RNR_RETRY_EXC_ERR`, a remote error, a flush, or a
//!   receive error — makes its route show up once in [`Transport::poll_route_failure`]; its
//!   packets are then dropped until the route is freed. An idle QP's failure shows at its next
//!   send.
//!
//! ```
//! use transports::rdma::sim::SimVerbs;
//! use transports::rdma::rc::{RcConfig, RcTransport};
//! use transports::{Transport, TxPkt};
//!
//! let fabric = SimVerbs::new(1);
//! let cfg = RcConfig { rx_ring_size: 256, tx_pool_size: 256, ..RcConfig::default() };
//! let mut a = RcTransport::new(fabric.open_device(Default::default()), cfg.clone()).unwrap();
//! let mut b = RcTransport::new(fabric.open_device(Default::default()), cfg).unwrap();
//! // The session handshake: a's fresh QP goes to b, b's fresh QP comes back.
//! let (ra, info_a) = a.route_alloc().unwrap();
//! let (rb, info_b) = b.route_alloc().unwrap();
//! b.resolve(rb, &info_a).unwrap();
//! a.resolve(ra, &info_b).unwrap();
//! assert!(a.is_reliable());
//! a.tx_burst(&[TxPkt { route: ra, hdr: b"hi ", data: b"there" }]).unwrap();
//! while b.rx_burst() == 0 {
//!     fabric.step();
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

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use super::common::*;
use super::verbs::*;
use crate::rng::SplitMix64;
use crate::{
    RouteId, RoutingInfo, Transport, TransportError, TransportKind, TransportStats, TxPkt,
};

/// Configuration of an [`RcTransport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RcConfig {
    /// Port to use; `None`: the first ACTIVE one.
    pub port: Option<u8>,
    /// GID table index for the GRH. RoCE needs one (default 1); on InfiniBand `None` uses LID
    /// routing.
    pub gid_index: Option<u8>,
    /// Largest packet (RPC header + payload): one SEND. Default 8192.
    pub max_pkt_size: usize,
    /// Slots of the shared receive queue, `64..=65536`. Default 4096.
    pub rx_ring_size: usize,
    /// Receive slots freed before they are reposted in one list. Default 32.
    pub repost_batch: usize,
    /// Staging slots for non-inline sends, shared by all routes. Default 4096.
    pub tx_pool_size: usize,
    /// Send queue depth of each QP. Default 64.
    pub sq_depth: u32,
    /// Within a post list, every this many sends one is signaled (the last one always is).
    /// Default 16.
    pub signal_every: u32,
    /// Most sends per post list. Default 16.
    pub max_post_list: usize,
    /// Packets up to this many bytes are sent inline. Default 60.
    pub max_inline: u32,
    /// Packets that may wait for send-queue room, per route. Default 256.
    pub backlog: usize,
    /// Most routes (QPs). Default 1024.
    pub max_routes: usize,
    /// Local ACK timeout code (4.096 µs × 2^n; 14 ≈ 67 ms). Default 14.
    pub timeout: u8,
    /// Transport retries before `RETRY_EXC_ERR` (at most 7). Default 7.
    pub retry_cnt: u8,
    /// RNR retries (7 = forever). Default 7.
    pub rnr_retry: u8,
    /// RNR timer this end advertises (12 = 0.64 ms). Default 12.
    pub min_rnr_timer: u8,
}

impl Default for RcConfig {
    fn default() -> Self {
        Self {
            port: None,
            gid_index: None,
            max_pkt_size: 8192,
            rx_ring_size: 4096,
            repost_batch: 32,
            tx_pool_size: 4096,
            sq_depth: 64,
            signal_every: 16,
            max_post_list: 16,
            max_inline: 60,
            backlog: 256,
            max_routes: 1024,
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            min_rnr_timer: 12,
        }
    }
}

/// Counters specific to the RC transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RcStats {
    /// Packets sent inline.
    pub inline_sends: u64,
    /// Packets that waited in a route's backlog for send-queue room.
    pub backlogged: u64,
    /// Routes whose QP failed.
    pub route_failures: u64,
    /// Send completions with an error status (flushes excluded).
    pub tx_errors: u64,
    /// Receive completions with an error status.
    pub rx_errors: u64,
    /// Receive posts (each a list).
    pub recv_posts: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    Allocated,
    Connected,
    Failed,
}

struct RcRoute {
    state: State,
    qp: Option<QpInfo>,
    /// Changes every time the slot gets a new QP, so stale completions are recognised.
    gen: u8,
    psn: u32,
    next_seq: u32,
    /// Posted sends not yet covered by a polled completion: (sequence, staging slot).
    inflight: VecDeque<(u32, Option<u32>)>,
    /// Staged packets waiting for send-queue room: (slot, length).
    backlog: VecDeque<(u32, u32)>,
    unsignaled: u32,
}

impl RcRoute {
    fn empty() -> Self {
        Self {
            state: State::Free,
            qp: None,
            gen: 0,
            psn: 0,
            next_seq: 0,
            inflight: VecDeque::new(),
            backlog: VecDeque::new(),
            unsignaled: 0,
        }
    }
}

fn wr_id(route: RouteId, gen: u8, seq: u32) -> u64 {
    (u64::from(route) << 40) | (u64::from(gen) << 32) | u64::from(seq)
}

fn split_wr_id(id: u64) -> (RouteId, u8, u32) {
    ((id >> 40) as RouteId, (id >> 32) as u8, id as u32)
}

/// The RC transport over any [`VerbsDevice`].
pub struct RcTransport<D: VerbsDevice> {
    dev: D,
    cfg: RcConfig,
    local: Local,
    pd: Pd,
    send_cq: Cq,
    recv_cq: Cq,
    srq: Srq,
    rx: RxRing,
    tx: TxPool,
    routes: Vec<RcRoute>,
    free_routes: Vec<RouteId>,
    by_qpn: HashMap<u32, RouteId>,
    failures: VecDeque<RouteId>,
    /// Routes with a non-empty backlog.
    waiting: Vec<RouteId>,
    psn_rng: SplitMix64,
    send_wcs: Vec<Wc>,
    stats: TransportStats,
    rc: RcStats,
}

impl<D: VerbsDevice> std::fmt::Debug for RcTransport<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RcTransport")
            .field("device", &self.dev.name())
            .field("lid", &self.local.lid)
            .field("routes", &self.by_qpn.len())
            .finish()
    }
}

fn config(msg: impl Into<String>) -> TransportError {
    TransportError::Config(msg.into())
}

impl<D: VerbsDevice> RcTransport<D> {
    /// Opens the transport on `dev`: picks the port, creates the PD, CQs, the shared receive
    /// queue (all receives posted) and the registered buffers. QPs come with routes.
    pub fn new(mut dev: D, cfg: RcConfig) -> Result<Self, TransportError> {
        if !(64..=65_536).contains(&cfg.rx_ring_size) {
            return Err(config("rx_ring_size must be in 64..=65536"));
        }
        if cfg.repost_batch == 0 || cfg.repost_batch >= cfg.rx_ring_size / 2 {
            return Err(config("repost_batch must be in 1..rx_ring_size/2"));
        }
        if cfg.sq_depth < 2 || cfg.signal_every == 0 {
            return Err(config(
                "sq_depth must be at least 2 and signal_every positive",
            ));
        }
        if cfg.max_post_list == 0 || cfg.max_post_list > 16 {
            return Err(config("max_post_list must be in 1..=16"));
        }
        if cfg.tx_pool_size == 0 || cfg.max_routes == 0 || cfg.max_routes > 1 << 24 {
            return Err(config(
                "tx_pool_size must be positive, max_routes in 1..=2^24",
            ));
        }
        if cfg.retry_cnt > 7 || cfg.rnr_retry > 7 || cfg.timeout > 31 || cfg.min_rnr_timer > 31 {
            return Err(config(
                "retry_cnt, rnr_retry <= 7; timeout, min_rnr_timer <= 31",
            ));
        }
        let local = open_port(&mut dev, cfg.port, cfg.gid_index)?;
        if cfg.max_pkt_size == 0 || cfg.max_pkt_size > local.max_msg as usize {
            return Err(config(format!(
                "max_pkt_size must be in 1..={} (the port's message size limit)",
                local.max_msg
            )));
        }
        let v = |what: &'static str| move |e| verbs_err(what, e);
        let pd = dev.alloc_pd().map_err(v("ibv_alloc_pd"))?;
        let attr = dev.query_device().map_err(v("ibv_query_device"))?;
        // Every QP can flush its whole send queue into the shared send CQ at once.
        let send_cqe =
            (cfg.max_routes as u64 * u64::from(cfg.sq_depth)).min(u64::from(attr.max_cqe)) as u32;
        let (send_cq, send_cap) = dev.create_cq(send_cqe).map_err(v("create the send CQ"))?;
        let (recv_cq, _) = dev
            .create_cq(cfg.rx_ring_size as u32)
            .map_err(v("create the receive CQ"))?;
        let srq = dev
            .create_srq(pd, cfg.rx_ring_size as u32, 1)
            .map_err(v("create the shared receive queue"))?;
        let lay = RingLayout {
            slots: cfg.rx_ring_size,
            stride: line_align(cfg.max_pkt_size),
            recv_off: 0,
            recv_len: cfg.max_pkt_size,
            strip: 0,
            max_pkt: cfg.max_pkt_size,
        };
        let mut rx = RxRing::new(
            &mut dev,
            pd,
            recv_cq,
            RecvTarget::Srq(srq),
            lay,
            cfg.repost_batch,
        )?;
        rx.repost(&mut dev, true).map_err(|e| {
            verbs_err(
                "post the receive ring",
                VerbsError::errno("ibv_post_srq_recv", e.errno),
            )
        })?;
        let tx = TxPool::new(&mut dev, pd, cfg.tx_pool_size, cfg.max_pkt_size)?;
        let mut cfg = cfg;
        // Never more QPs than the send CQ can absorb flushes of.
        cfg.max_routes = cfg
            .max_routes
            .min((send_cap / cfg.sq_depth.max(1)).max(1) as usize);
        let seed = u64::from(local.lid) << 32
            ^ u64::from_le_bytes(local.gid[8..16].try_into().unwrap_or([0; 8]));
        Ok(Self {
            dev,
            local,
            pd,
            send_cq,
            recv_cq,
            srq,
            rx,
            tx,
            routes: Vec::new(),
            free_routes: Vec::new(),
            by_qpn: HashMap::new(),
            failures: VecDeque::new(),
            waiting: Vec::new(),
            psn_rng: SplitMix64::new(seed ^ 0x5253_4e50),
            send_wcs: vec![Wc::default(); 64],
            stats: TransportStats::default(),
            rc: RcStats::default(),
            cfg,
        })
    }

    /// The link layer of the port in use (InfiniBand or Ethernet/RoCE).
    pub fn link_layer(&self) -> LinkLayer {
        self.local.link_layer
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// The device, mutably (for tests and tools).
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// The RC counters.
    pub fn rc_stats(&self) -> RcStats {
        RcStats {
            rx_errors: self.rx.stats.rx_errors,
            recv_posts: self.rx.stats.posts,
            ..self.rc
        }
    }

    /// The QP number of `route`, if it has a QP.
    pub fn route_qpn(&self, route: RouteId) -> Option<u32> {
        self.routes
            .get(route as usize)
            .and_then(|r| r.qp.map(|q| q.qp_num))
    }

    /// The configuration in effect.
    pub fn config(&self) -> &RcConfig {
        &self.cfg
    }

    fn fail(&mut self, route: RouteId, why: &str) {
        let Some(r) = self.routes.get_mut(route as usize) else {
            return;
        };
        if matches!(r.state, State::Allocated | State::Connected) {
            r.state = State::Failed;
            tracing::warn!(route, why, "RC route failed");
            self.rc.route_failures += 1;
            self.failures.push_back(route);
            for (slot, _) in r.backlog.drain(..) {
                self.tx.release(slot);
            }
        }
    }

    fn reap_send(&mut self) {
        loop {
            let n = match self.dev.poll_cq(self.send_cq, &mut self.send_wcs) {
                Ok(n) => n,
                Err(e) => {
                    // A broken send CQ takes every QP with it.
                    tracing::error!(error = %e, "RC send CQ failed");
                    let live: Vec<RouteId> = (0..self.routes.len() as RouteId).collect();
                    for r in live {
                        self.fail(r, "send CQ failed");
                    }
                    return;
                }
            };
            for i in 0..n {
                let Some(wc) = self.send_wcs.get(i).copied() else {
                    break;
                };
                let (route, gen, seq) = split_wr_id(wc.wr_id);
                let Some(r) = self.routes.get_mut(route as usize) else {
                    continue;
                };
                if r.gen != gen || r.qp.is_none() {
                    continue; // a completion of a QP since destroyed
                }
                while r
                    .inflight
                    .front()
                    .is_some_and(|&(s, _)| seq.wrapping_sub(s) as i32 >= 0)
                {
                    if let Some((_, Some(slot))) = r.inflight.pop_front() {
                        self.tx.release(slot);
                    }
                }
                if !r.backlog.is_empty() && !self.waiting.contains(&route) {
                    self.waiting.push(route);
                }
                if wc.status != WcStatus::Success {
                    if wc.status != WcStatus::WrFlushErr {
                        self.rc.tx_errors += 1;
                    }
                    let why = format!("send completed with {:?}", wc.status);
                    self.fail(route, &why);
                }
            }
            if n < self.send_wcs.len() {
                return;
            }
        }
    }

    /// Posts `wrs` on `route`'s QP; the last one is signaled. Returns how many were posted.
    fn post(&mut self, route: RouteId, wrs: &mut [SendWr<'_>], slots: &[Option<u32>]) -> usize {
        let Some(r) = self.routes.get_mut(route as usize) else {
            return 0;
        };
        let Some(qp) = r.qp else { return 0 };
        let every = self.cfg.signal_every;
        let k = wrs.len();
        for (i, w) in wrs.iter_mut().enumerate() {
            r.unsignaled += 1;
            w.signaled = r.unsignaled >= every || i + 1 == k;
            if w.signaled {
                r.unsignaled = 0;
            }
            w.wr_id = wr_id(route, r.gen, r.next_seq);
            r.inflight
                .push_back((r.next_seq, slots.get(i).copied().flatten()));
            r.next_seq = r.next_seq.wrapping_add(1);
        }
        self.stats.tx_batches += 1;
        match self.dev.post_send(qp.qp, wrs) {
            Ok(()) => k,
            Err(e) => {
                let posted = e.index.min(k);
                let r = match self.routes.get_mut(route as usize) {
                    Some(r) => r,
                    None => return posted,
                };
                for _ in posted..k {
                    if let Some((_, Some(slot))) = r.inflight.pop_back() {
                        self.tx.release(slot);
                    }
                    r.next_seq = r.next_seq.wrapping_sub(1);
                }
                let why = format!("post_send failed: {e}");
                self.fail(route, &why);
                posted
            }
        }
    }

    /// Posts what waits in the backlogs of routes that have send-queue room again.
    fn drain_backlogs(&mut self) {
        let mut i = 0;
        while let Some(&route) = self.waiting.get(i) {
            let mut wrs: [SendWr<'_>; 16] = [NO_WR; 16];
            let mut slots = [None; 16];
            while let Some(r) = self.routes.get_mut(route as usize) {
                if r.state != State::Connected {
                    break;
                }
                let room = (self.cfg.sq_depth as usize).saturating_sub(r.inflight.len());
                let k = room.min(r.backlog.len()).min(self.cfg.max_post_list);
                if k == 0 {
                    break;
                }
                let mut n = 0;
                for _ in 0..k {
                    let Some((slot, len)) = r.backlog.pop_front() else {
                        break;
                    };
                    let Some(sge) = self.tx.sge(slot, len as usize) else {
                        self.tx.release(slot);
                        continue;
                    };
                    if let (Some(w), Some(s)) = (wrs.get_mut(n), slots.get_mut(n)) {
                        *w = SendWr {
                            payload: Payload::Sg(SgList::one(sge)),
                            ..NO_WR
                        };
                        *s = Some(slot);
                        n += 1;
                    }
                }
                let (Some(w), Some(s)) = (wrs.get_mut(..n), slots.get(..n)) else {
                    break;
                };
                self.post(route, w, s);
            }
            let done = self
                .routes
                .get(route as usize)
                .is_none_or(|r| r.backlog.is_empty() || r.state != State::Connected);
            if done {
                self.waiting.swap_remove(i);
            } else {
                i += 1;
            }
        }
    }

    fn handle_recv_error(&mut self, qpn: u32) {
        if let Some(&route) = self.by_qpn.get(&qpn) {
            self.fail(route, "receive completed with an error");
        }
    }

    fn destroy_route_qp(&mut self, route: RouteId) {
        let Some(r) = self.routes.get_mut(route as usize) else {
            return;
        };
        if let Some(qp) = r.qp.take() {
            // Destroying the QP discards its completions; its staging slots are free after.
            let _ = self.dev.destroy_qp(qp.qp);
            self.by_qpn.remove(&qp.qp_num);
        }
        for (_, slot) in r.inflight.drain(..) {
            if let Some(s) = slot {
                self.tx.release(s);
            }
        }
        for (slot, _) in r.backlog.drain(..) {
            self.tx.release(slot);
        }
        r.unsignaled = 0;
        r.gen = r.gen.wrapping_add(1);
    }
}

impl<D: VerbsDevice> Drop for RcTransport<D> {
    fn drop(&mut self) {
        for r in 0..self.routes.len() as RouteId {
            self.destroy_route_qp(r);
        }
        let _ = self.dev.destroy_srq(self.srq);
        let _ = self.dev.destroy_cq(self.send_cq);
        let _ = self.dev.destroy_cq(self.recv_cq);
        let _ = self.dev.dereg_mr(self.rx.mr());
        let _ = self.dev.dereg_mr(self.tx.mr());
        let _ = self.dev.dealloc_pd(self.pd);
    }
}

impl<D: VerbsDevice> Transport for RcTransport<D> {
    fn kind(&self) -> TransportKind {
        TransportKind::InfinibandRc
    }

    /// The port's address (QPN 0): RC has no listening endpoint; routes carry their QP's info.
    fn routing_info(&self) -> RoutingInfo {
        Addr {
            tag: TAG_RC,
            global: self.local.global,
            lid: self.local.lid,
            qpn: 0,
            key: 0,
            mtu: self.local.mtu,
            gid: self.local.gid,
        }
        .encode()
    }

    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        let route = match self.free_routes.pop() {
            Some(r) => r,
            None => {
                if self.routes.len() >= self.cfg.max_routes {
                    return Err(TransportError::RoutesExhausted(self.routes.len()));
                }
                self.routes.push(RcRoute::empty());
                (self.routes.len() - 1) as RouteId
            }
        };
        let v = |what: &'static str| move |e| verbs_err(what, e);
        let created = self
            .dev
            .create_qp(
                self.pd,
                &QpInit {
                    qp_type: QpType::Rc,
                    send_cq: self.send_cq,
                    recv_cq: self.recv_cq,
                    srq: Some(self.srq),
                    caps: QpCaps {
                        max_send_wr: self.cfg.sq_depth,
                        max_recv_wr: 0,
                        max_send_sge: 2,
                        max_recv_sge: 1,
                        max_inline_data: self.cfg.max_inline,
                    },
                    sq_sig_all: false,
                },
            )
            .map_err(v("create an RC QP"));
        let qp = match created {
            Ok(q) => q,
            Err(e) => {
                self.free_routes.push(route);
                return Err(e);
            }
        };
        // No remote access: the transport only SENDs.
        let init = QpAttr {
            state: QpState::Init,
            port_num: self.local.port,
            pkey_index: 0,
            access: Access::NONE,
            ..QpAttr::default()
        };
        if let Err(e) = self.dev.modify_qp(qp.qp, &init, AttrMask::RC_INIT) {
            let _ = self.dev.destroy_qp(qp.qp);
            self.free_routes.push(route);
            return Err(verbs_err("RC QP to INIT", e));
        }
        let psn = (self.psn_rng.next_u64() as u32) & 0x00ff_ffff;
        let Some(r) = self.routes.get_mut(route as usize) else {
            let _ = self.dev.destroy_qp(qp.qp);
            return Err(TransportError::UnknownRoute(route));
        };
        r.state = State::Allocated;
        r.qp = Some(qp);
        r.psn = psn;
        r.next_seq = 0;
        r.unsignaled = 0;
        self.by_qpn.insert(qp.qp_num, route);
        let info = Addr {
            tag: TAG_RC,
            global: self.local.global,
            lid: self.local.lid,
            qpn: qp.qp_num,
            key: psn,
            mtu: self.local.mtu,
            gid: self.local.gid,
        }
        .encode();
        Ok((route, info))
    }

    fn resolve(&mut self, route: RouteId, remote: &RoutingInfo) -> Result<(), TransportError> {
        let (qp, psn) = match self.routes.get(route as usize) {
            Some(RcRoute {
                state: State::Allocated,
                qp: Some(qp),
                psn,
                ..
            }) => (qp.qp, *psn),
            Some(RcRoute {
                state: State::Connected,
                ..
            }) => {
                return Err(TransportError::Resolve(format!(
                    "route {route} is already connected"
                )))
            }
            Some(RcRoute {
                state: State::Failed,
                ..
            }) => {
                return Err(TransportError::Resolve(format!(
                    "route {route} failed; free it and connect a new one (a QP in error is \
                     not reconnected)"
                )))
            }
            _ => return Err(TransportError::UnknownRoute(route)),
        };
        let peer = Addr::decode(remote, TAG_RC)?;
        if peer.qpn == 0 {
            return Err(TransportError::Resolve(
                "RC routes connect to the peer's fresh QP (the info its route_alloc returned); \
                 a port address from routing_info() names no QP"
                    .into(),
            ));
        }
        let a = QpAttr {
            state: QpState::Rtr,
            path_mtu: self.local.mtu.min(peer.mtu),
            dest_qp_num: peer.qpn,
            rq_psn: peer.key,
            sq_psn: psn,
            ah: self.local.av_to(&peer),
            max_dest_rd_atomic: 1,
            max_rd_atomic: 1,
            min_rnr_timer: self.cfg.min_rnr_timer,
            timeout: self.cfg.timeout,
            retry_cnt: self.cfg.retry_cnt,
            rnr_retry: self.cfg.rnr_retry,
            ..QpAttr::default()
        };
        self.dev
            .modify_qp(qp, &a, AttrMask::RC_RTR)
            .map_err(|e| TransportError::Resolve(format!("RC QP to RTR: {e}")))?;
        self.dev
            .modify_qp(
                qp,
                &QpAttr {
                    state: QpState::Rts,
                    ..a
                },
                AttrMask::RC_RTS,
            )
            .map_err(|e| TransportError::Resolve(format!("RC QP to RTS: {e}")))?;
        if let Some(r) = self.routes.get_mut(route as usize) {
            r.state = State::Connected;
        }
        Ok(())
    }

    fn route_free(&mut self, route: RouteId) {
        let Some(r) = self.routes.get_mut(route as usize) else {
            return;
        };
        if r.state == State::Free {
            return;
        }
        r.state = State::Free;
        self.destroy_route_qp(route);
        self.failures.retain(|&f| f != route);
        self.waiting.retain(|&w| w != route);
        self.free_routes.push(route);
    }

    fn max_pkt_size(&self) -> usize {
        self.cfg.max_pkt_size
    }

    fn rx_ring_size(&self) -> usize {
        self.rx.capacity()
    }

    fn tx_burst(&mut self, pkts: &[TxPkt<'_>]) -> Result<usize, TransportError> {
        self.reap_send();
        self.drain_backlogs();
        let mut sent = 0;
        let mut i = 0;
        let list = self.cfg.max_post_list.min(16);
        while i < pkts.len() {
            let Some(first) = pkts.get(i) else { break };
            let route = first.route;
            let mut wrs: [SendWr<'_>; 16] = [NO_WR; 16];
            let mut slots: [Option<u32>; 16] = [None; 16];
            let mut k = 0;
            while k < list {
                let Some(p) = pkts.get(i) else { break };
                if p.route != route {
                    break;
                }
                i += 1;
                let len = p.hdr.len() + p.data.len();
                let Some((state, inflight, waiting)) = self
                    .routes
                    .get(route as usize)
                    .map(|r| (r.state, r.inflight.len(), r.backlog.len()))
                else {
                    self.stats.tx_dropped += 1;
                    continue;
                };
                if state != State::Connected || len > self.cfg.max_pkt_size {
                    self.stats.tx_dropped += 1;
                    continue;
                }
                if waiting > 0 || inflight + k >= self.cfg.sq_depth as usize {
                    // No send-queue room: stage it and let it wait its turn.
                    if waiting >= self.cfg.backlog {
                        self.stats.tx_dropped += 1;
                        self.fail(route, "backlog full");
                        continue;
                    }
                    let Some((slot, _)) = self.tx.stage(p.hdr, p.data) else {
                        self.stats.tx_dropped += 1;
                        self.fail(route, "transmit pool exhausted");
                        continue;
                    };
                    if let Some(r) = self.routes.get_mut(route as usize) {
                        r.backlog.push_back((slot, len as u32));
                    }
                    self.rc.backlogged += 1;
                    if !self.waiting.contains(&route) {
                        self.waiting.push(route);
                    }
                    sent += 1;
                    continue;
                }
                let (payload, slot) = if len <= self.cfg.max_inline as usize {
                    self.rc.inline_sends += 1;
                    (Payload::Inline(p.hdr, p.data), None)
                } else {
                    match self.tx.stage(p.hdr, p.data) {
                        Some((slot, sge)) => (Payload::Sg(SgList::one(sge)), Some(slot)),
                        None => {
                            self.stats.tx_dropped += 1;
                            self.fail(route, "transmit pool exhausted");
                            continue;
                        }
                    }
                };
                if let (Some(w), Some(s)) = (wrs.get_mut(k), slots.get_mut(k)) {
                    *w = SendWr { payload, ..NO_WR };
                    *s = slot;
                    k += 1;
                }
            }
            if k > 0 {
                if let (Some(w), Some(s)) = (wrs.get_mut(..k), slots.get(..k)) {
                    sent += self.post(route, w, s);
                }
            }
        }
        self.stats.tx_pkts += sent as u64;
        Ok(sent)
    }

    fn rx_burst(&mut self) -> usize {
        let mut bad_qpns: Vec<u32> = Vec::new();
        let res = self.rx.poll(&mut self.dev, |wc| {
            tracing::warn!(status = ?wc.status, qpn = wc.qp_num, "RC receive failed");
            bad_qpns.push(wc.qp_num);
        });
        if let Err(e) = res {
            tracing::error!(error = %e, "RC receive CQ failed");
            let live: Vec<RouteId> = (0..self.routes.len() as RouteId).collect();
            for r in live {
                self.fail(r, "receive CQ failed");
            }
        }
        for q in bad_qpns {
            self.handle_recv_error(q);
        }
        if let Err(e) = self.rx.repost(&mut self.dev, false) {
            tracing::error!(error = %e, "RC post_srq_recv failed");
        }
        // Completions free send-queue room for backlogged packets even when nothing is sent.
        if !self.waiting.is_empty() {
            self.reap_send();
            self.drain_backlogs();
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
        if let Err(e) = self.rx.repost(&mut self.dev, false) {
            tracing::error!(error = %e, "RC post_srq_recv failed");
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

    fn is_reliable(&self) -> bool {
        true
    }

    fn poll_route_failure(&mut self) -> Option<RouteId> {
        if self.failures.is_empty() {
            // Failures surface through completions: look at them even if nobody sent.
            self.reap_send();
        }
        self.failures.pop_front()
    }
}
