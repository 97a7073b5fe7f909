//! `SimVerbs`: an in-process InfiniBand/RoCE fabric with simulated HCAs, for proving the verbs
//! transports on machines without RDMA hardware.
//!
//! A [`SimVerbs`] is the fabric (cheaply cloned, shared by every transport of a process); each
//! [`SimVerbs::open_device`] attaches one simulated HCA with one port and returns a
//! [`SimDevice`], which implements [`VerbsDevice`]. Transports written against the trait run on
//! it unchanged.
//!
//! # What it enforces
//!
//! The simulator models the verbs *contract* — the behaviour the man pages and the IB
//! specification promise and that a transport can get wrong — with real errno values and work
//! completion statuses:
//!
//! * **QP state machine** RESET → INIT → RTR → RTS (and → ERROR / → RESET from anywhere) with
//!   the attribute masks each transition requires and allows, per QP type; anything else is
//!   `EINVAL` (see `rules.rs`). Receives may be posted from INIT on; sends need RTS (`EINVAL`
//!   before). Entering ERROR completes every outstanding work request with `WR_FLUSH_ERR`, and
//!   so does every later post; RESET discards the queues silently.
//! * **Posting**: `ENOMEM` when the send queue holds `max_send_wr` requests (a slot is
//!   reclaimed only when the completion of a *later signaled* request — or an error — is polled,
//!   as providers do), or the receive queue `max_recv_wr`; inline payloads over
//!   `max_inline_data` are `ENOMEM` (as mlx5); too many SGEs, a wrong opcode for the QP type, a
//!   missing or foreign address handle are `EINVAL`. Inline data is copied at post time; other
//!   data is gathered when the simulated HCA processes the request — on a later call — so a
//!   buffer reused before its completion sends the new bytes, as on hardware.
//! * **Memory**: every non-inline SGE must lie inside a registered region of the QP's
//!   protection domain (receive buffers and READ targets also need `LOCAL_WRITE`), else the
//!   request completes with `LOC_PROT_ERR` and the QP enters ERROR. RDMA READ/WRITE check the
//!   rkey, the range, the region's and the responder QP's access rights: `REM_ACCESS_ERR`.
//! * **Receive queues** are FIFO; one message consumes one receive; a message longer than the
//!   receive's SGEs is `LOC_LEN_ERR` at the receiver (the QP enters ERROR; an RC sender gets
//!   `REM_INV_REQ_ERR`).
//! * **UD**: the receive buffer starts with the 40-byte GRH area and `byte_len` counts it (the
//!   GRH is written when the sender's address handle is global, otherwise the 40 bytes are
//!   left as they were and `IBV_WC_GRH` is clear); silent drops — counted in [`SimStats`] —
//!   when no receive is posted, the qkey differs, the QPN or LID/GID is unknown, the
//!   destination QP is not in RTR/RTS, or the payload exceeds the path MTU.
//! * **RC**: messages are delivered in order, exactly once, with PSNs: the requester's
//!   `sq_psn` must match the responder's `rq_psn`, and the responder only accepts from its
//!   `dest_qp_num` at the address it was given. No receive posted → RNR NAK; the requester
//!   waits the responder's `min_rnr_timer` and retries `rnr_retry` times (7 = forever), then
//!   `RNR_RETRY_EXC_ERR` and the QP enters ERROR. Lost packets (injected) and silent drops are
//!   recovered by the requester's ACK timeout (`timeout`) with `retry_cnt` retries, then
//!   `RETRY_EXC_ERR`; an out-of-sequence arrival gets a sequence NAK that rewinds the requester
//!   at once (go-back-N, as the hardware does). Responses cross the reverse link and can be
//!   lost too; a resent request the responder already executed is acknowledged again, not
//!   delivered twice.
//! * **CQs** have the capacity asked for; a CQE that does not fit overflows the CQ, which is
//!   fatal: `poll_cq` fails from then on with [`VerbsError::CqOverflow`] and every QP using the
//!   CQ enters ERROR.
//! * **Faults**: per directed device pair, [`LinkFaults`] drop, duplicate (UD), delay, jitter
//!   (reordering on UD; RC stays in order) and fatal link errors (RC: `RETRY_EXC_ERR`), all
//!   drawn from one generator seeded at [`SimVerbs::new`], and
//!   [`SimVerbs::inject_qp_error`] moves a QP to ERROR as an asynchronous fatal error would.
//!
//! It does not model (see docs/RDMA.md): the SQD/SQE states (`EOPNOTSUPP`), UC/XRC/raw QPs,
//! atomics, memory windows, multicast, completion channels and asynchronous events, SRQ limit
//! events, outstanding-READ limits (`max_rd_atomic`), P_Key tables beyond entry 0, multiple
//! ports, packet-level segmentation of RC messages (a message is one unit), bandwidth and
//! congestion (delay is per message, not per byte), and provider quirks (e.g. mlx5 reports
//! `ENOMEM` for a post before RTS where the man page and rxe say `EINVAL`; the simulator says
//! `EINVAL`).
//!
//! # Time
//!
//! Time is virtual unless the fabric is made with [`SimVerbs::new_realtime`]: nothing happens
//! until a device is called and the clock has moved ([`SimVerbs::advance`],
//! [`SimVerbs::step`]). Every call into a [`SimDevice`] first runs the events that are due —
//! the simulated HCAs of *all* devices act then, as hardware acts without being asked. A
//! single-threaded test that makes the same calls sees the same packets, drops and errors on
//! every run.
//!
//! ```
//! use transports::rdma::sim::{SimVerbs, SimDeviceConfig};
//! use transports::rdma::verbs::VerbsDevice;
//!
//! let fabric = SimVerbs::new(7);
//! let mut dev = fabric.open_device(SimDeviceConfig::default());
//! let port = dev.query_port(1).unwrap();
//! assert_eq!(port.active_mtu.bytes(), 4096);
//! assert!(port.lid != 0);
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod engine;
mod rules;

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::rng::SplitMix64;
use crate::sim::Clock;

use super::dma::DmaMem;
use super::verbs::*;
use rules::PortLimits;

/// Most inline bytes a simulated QP accepts at creation.
pub const SIM_MAX_INLINE: u32 = 512;

/// Configuration of one simulated HCA (one port).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimDeviceConfig {
    /// Link layer: InfiniBand (routed by LID) or Ethernet/RoCE (routed by GID; every address
    /// handle needs a GRH). Default InfiniBand.
    pub link_layer: LinkLayer,
    /// The port's MTU. Default 4096.
    pub active_mtu: Mtu,
    /// The port's state. Default ACTIVE.
    pub port_state: PortState,
    /// How long the HCA takes to pick up posted sends, in nanoseconds. Default 0: at the
    /// next call into the fabric (never within the post itself).
    pub processing_delay_ns: u64,
}

impl Default for SimDeviceConfig {
    fn default() -> Self {
        Self {
            link_layer: LinkLayer::Infiniband,
            active_mtu: Mtu::M4096,
            port_state: PortState::Active,
            processing_delay_ns: 0,
        }
    }
}

/// Fault injection on one directed link (device to device).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkFaults {
    /// Probability that a packet is lost. UD: gone. RC: the requester's ACK timeout resends it.
    pub drop: f64,
    /// Probability that a UD packet is delivered twice (ignored on RC, whose PSNs deduplicate).
    pub duplicate: f64,
    /// One-way delay in nanoseconds.
    pub delay_ns: u64,
    /// Extra delay uniform in `0..=jitter_ns`: reorders UD packets; RC keeps its order.
    pub jitter_ns: u64,
    /// Probability that an RC message meets a fatal link error: its request completes with
    /// `RETRY_EXC_ERR` and the QP enters ERROR (a pulled cable, a dead switch port).
    pub error: f64,
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            delay_ns: 1_000,
            jitter_ns: 0,
            error: 0.0,
        }
    }
}

/// Fabric-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// UD messages placed in a receive buffer.
    pub ud_delivered: u64,
    /// UD packets dropped by fault injection.
    pub ud_dropped_injected: u64,
    /// UD packets duplicated by fault injection.
    pub ud_duplicated: u64,
    /// UD packets dropped because the destination QP had no receive posted.
    pub ud_dropped_no_recv: u64,
    /// UD packets dropped for a qkey mismatch.
    pub ud_dropped_bad_qkey: u64,
    /// UD packets to an unknown LID/GID or QPN, or a QP that is not UD.
    pub ud_dropped_unknown_dest: u64,
    /// UD packets to a QP not in RTR/RTS.
    pub ud_dropped_qp_state: u64,
    /// UD packets larger than the path MTU.
    pub ud_dropped_over_mtu: u64,
    /// RC messages accepted by a responder (SEND, WRITE, READ).
    pub rc_delivered: u64,
    /// RC packets lost by fault injection.
    pub rc_lost_injected: u64,
    /// RC packets a responder ignored (wrong or absent QP, wrong state or peer).
    pub rc_silent_drops: u64,
    /// RNR NAKs sent (no receive posted).
    pub rc_rnr_naks: u64,
    /// Sequence NAKs sent (out-of-order arrival after a loss).
    pub rc_seq_naks: u64,
    /// Requests a responder saw again (their response was lost) and answered without
    /// delivering them twice.
    pub rc_duplicates: u64,
    /// ACK timeouts that led to a retry.
    pub rc_timeouts: u64,
    /// RC work requests transmitted again (after RNR, sequence NAK or timeout).
    pub rc_retransmits: u64,
    /// Injected fatal link errors.
    pub rc_link_errors: u64,
    /// CQs that overflowed.
    pub cq_overflows: u64,
    /// Events processed.
    pub events: u64,
}

struct Shared {
    fabric: Mutex<Fabric>,
    clock: Clock,
}

/// The simulated fabric. Clones are handles to the same fabric.
#[derive(Clone)]
pub struct SimVerbs {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SimVerbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimVerbs")
            .field("now_ns", &self.now_ns())
            .finish()
    }
}

impl SimVerbs {
    /// A fabric with virtual time starting at 0 and fault injection seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_time(seed, Clock::manual())
    }

    /// A fabric whose time is `now()` (nanoseconds), read from a clock owned elsewhere — e.g.
    /// the rpc crate's `VirtualClock`, shared with the Rpcs that use the fabric. `now` must
    /// never go backwards; [`SimVerbs::advance`] and [`SimVerbs::step`] do not move it.
    pub fn with_clock(seed: u64, now: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self::with_time(seed, Clock::external(now))
    }

    /// A fabric whose clock is the wall clock (for tests that run devices on several threads).
    pub fn new_realtime(seed: u64) -> Self {
        Self::with_time(seed, Clock::real())
    }

    fn with_time(seed: u64, clock: Clock) -> Self {
        Self {
            shared: Arc::new(Shared {
                fabric: Mutex::new(Fabric::new(seed)),
                clock,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Fabric> {
        // The fabric's invariants hold between events, and no event handler panics on input;
        // a panic elsewhere while holding the lock leaves consistent state behind.
        self.shared
            .fabric
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The fabric's current time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// Moves the fabric's own virtual time forward by `ns` (no effect in real time or on a
    /// clock owned elsewhere). Events run at the next device call (or [`SimVerbs::progress`]).
    pub fn advance(&self, ns: u64) {
        self.shared.clock.advance(ns);
    }

    /// When the next pending event is due, if any.
    pub fn next_event_at(&self) -> Option<u64> {
        self.lock().next_event_at()
    }

    /// Moves virtual time to the next pending event (if later than now) and runs everything
    /// due; `false` when no event is pending.
    pub fn step(&self) -> bool {
        let Some(at) = self.next_event_at() else {
            return false;
        };
        self.shared.clock.set_now(at);
        self.progress();
        true
    }

    /// Runs every event that is due now.
    pub fn progress(&self) {
        let now = self.now_ns();
        self.lock().run(now);
    }

    /// Sets the faults of every link without a specific setting.
    pub fn set_default_faults(&self, faults: LinkFaults) {
        self.lock().default_faults = faults;
    }

    /// Sets the faults of the directed link from device `from` to device `to` (ids from
    /// [`SimDevice::id`]).
    pub fn set_link_faults(&self, from: u32, to: u32, faults: LinkFaults) {
        self.lock().links.insert((from, to), faults);
    }

    /// Fabric-wide counters.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Moves QP `qpn` of device `device` to ERROR, as an asynchronous fatal error (or a QP the
    /// peer saw reset) would: its outstanding work requests complete with `WR_FLUSH_ERR`.
    /// Returns whether such a QP exists.
    pub fn inject_qp_error(&self, device: u32, qpn: u32) -> bool {
        let now = self.now_ns();
        let mut f = self.lock();
        f.run(now);
        let Some(h) = f
            .devices
            .get(device as usize)
            .and_then(|d| d.qpns.get(&qpn).copied())
        else {
            return false;
        };
        f.enter_error(device, h, now);
        f.settle(now);
        true
    }

    /// Delivers `data` as a SEND arriving on the first connected RC QP (RTR or RTS) of
    /// `device`, as if its peer had sent it: it consumes a receive and completes like any
    /// message. A test hook for feeding garbage to an RC endpoint, which can only receive on
    /// established connections (the HCA drops everything else). Returns `false` when there is
    /// no such QP, no receive posted, or `data` does not fit the receive (nothing happens).
    pub fn inject_rc_message(&self, device: u32, data: &[u8]) -> bool {
        let now = self.now_ns();
        let mut f = self.lock();
        f.run(now);
        let ok = f.inject_rc_message(device, data);
        f.settle(now);
        ok
    }

    /// The state of QP `qpn` of device `device` (for tests).
    pub fn qp_state(&self, device: u32, qpn: u32) -> Option<QpState> {
        let f = self.lock();
        let d = f.devices.get(device as usize)?;
        let h = d.qpns.get(&qpn)?;
        d.qps.get(*h).map(|q| q.state)
    }

    /// Attaches a new simulated HCA.
    pub fn open_device(&self, cfg: SimDeviceConfig) -> SimDevice {
        let mut f = self.lock();
        let id = f.devices.len() as u32;
        let dev = Dev::new(id, cfg);
        let name = dev.name.clone();
        f.devices.push(dev);
        SimDevice {
            fabric: self.clone(),
            id,
            name,
        }
    }
}

/// One simulated HCA attached to a [`SimVerbs`] fabric. Dropping it closes the device: its
/// objects are destroyed and packets to it are dropped.
pub struct SimDevice {
    fabric: SimVerbs,
    id: u32,
    name: String,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish()
    }
}

impl SimDevice {
    /// This device's id in the fabric (for [`SimVerbs::set_link_faults`] and
    /// [`SimVerbs::inject_qp_error`]).
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The fabric this device is attached to.
    pub fn fabric(&self) -> &SimVerbs {
        &self.fabric
    }

    /// Runs due events, then `op` on this device's state.
    fn with<R>(&self, op: impl FnOnce(&mut Fabric, u32, u64) -> R) -> R {
        let now = self.fabric.now_ns();
        let mut f = self.fabric.lock();
        f.run(now);
        let r = op(&mut f, self.id, now);
        f.settle(now);
        r
    }

    fn with_dev<R>(
        &self,
        op: impl FnOnce(&mut Dev) -> Result<R, VerbsError>,
    ) -> Result<R, VerbsError> {
        self.with(|f, id, _| match f.devices.get_mut(id as usize) {
            Some(d) if d.open => op(d),
            _ => Err(VerbsError::errno("sim device", libc::ENODEV)),
        })
    }
}

impl Drop for SimDevice {
    fn drop(&mut self) {
        let mut f = self.fabric.lock();
        if let Some(d) = f.devices.get_mut(self.id as usize) {
            d.close();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Device state.

pub(super) struct MrS {
    pd: u64,
    mem: DmaMem,
    access: Access,
    lkey: u32,
    rkey: u32,
}

pub(super) struct CqS {
    cap: u32,
    q: VecDeque<Cqe>,
    overflowed: bool,
    users: u32,
}

/// What polling a CQE releases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Release {
    /// Send-queue entries up to and including this sequence number.
    Send(u64),
    /// One receive-queue slot of the QP.
    Recv,
    /// One slot of this SRQ.
    Srq(u64),
}

pub(super) struct Cqe {
    wc: Wc,
    qp: u64,
    release: Release,
}

pub(super) struct SrqS {
    pd: u64,
    max_wr: u32,
    max_sge: u32,
    q: VecDeque<RecvWr>,
    outstanding: u32,
    users: u32,
}

pub(super) struct AhS {
    pd: u64,
    attr: AhAttr,
}

#[derive(Clone, Debug)]
pub(super) enum Stored {
    Inline(Vec<u8>),
    Sg(SgList),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EntryState {
    Pending,
    Sent,
    Done { status: WcStatus, byte_len: u32 },
}

#[derive(Clone, Debug)]
pub(super) struct SqEntry {
    seq: u64,
    wr_id: u64,
    op: SendOp,
    data: Stored,
    signaled: bool,
    /// UD: the address vector copied from the AH at post time, remote QPN and qkey.
    ud: Option<(AhAttr, u32, u32)>,
    state: EntryState,
    transmissions: u32,
}

pub(super) struct QpS {
    qpn: u32,
    pd: u64,
    qp_type: QpType,
    send_cq: u64,
    recv_cq: u64,
    srq: Option<u64>,
    caps: QpCaps,
    sq_sig_all: bool,
    state: QpState,
    // Attributes.
    qkey: u32,
    access: Access,
    av: AhAttr,
    path_mtu: Mtu,
    dest_qpn: u32,
    rq_psn: u32,
    sq_psn: u32,
    timeout: u8,
    retry_cnt: u8,
    rnr_retry: u8,
    min_rnr_timer: u8,
    // Send queue: entries posted and not yet released by a polled completion, by `seq`.
    sq: VecDeque<SqEntry>,
    next_seq: u64,
    tx_next: u64,
    cq_next: u64,
    psn_base: u64,
    gen: u32,
    tx_scheduled: bool,
    // RC requester.
    retry_left: u8,
    rnr_left: u8,
    timer_armed: bool,
    last_progress: u64,
    last_tx_arrival: u64,
    stalled_until: u64,
    // Receive side.
    rq: VecDeque<RecvWr>,
    rq_outstanding: u32,
    epsn: u32,
    nak_sent: bool,
    last_resp_at: u64,
}

impl QpS {
    fn entry(&self, seq: u64) -> Option<&SqEntry> {
        let front = self.sq.front()?.seq;
        self.sq.get(usize::try_from(seq.checked_sub(front)?).ok()?)
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut SqEntry> {
        let front = self.sq.front()?.seq;
        self.sq
            .get_mut(usize::try_from(seq.checked_sub(front)?).ok()?)
    }

    /// Requester sequence number of RC packet sequence number `psn`.
    fn seq_of_psn(&self, psn: u32) -> u64 {
        self.psn_base + u64::from(psn.wrapping_sub(self.sq_psn) & PSN_MASK)
    }

    fn psn_of_seq(&self, seq: u64) -> u32 {
        (self
            .sq_psn
            .wrapping_add(seq.wrapping_sub(self.psn_base) as u32))
            & PSN_MASK
    }
}

const PSN_MASK: u32 = 0x00ff_ffff;

pub(super) struct Dev {
    name: String,
    open: bool,
    cfg: SimDeviceConfig,
    lid: u16,
    gids: [Gid; 2],
    pds: Slab<()>,
    mrs: Slab<MrS>,
    lkeys: HashMap<u32, u64>,
    rkeys: HashMap<u32, u64>,
    next_key: u32,
    cqs: Slab<CqS>,
    srqs: Slab<SrqS>,
    qps: Slab<QpS>,
    ahs: Slab<AhS>,
    qpns: HashMap<u32, u64>,
    next_qpn: u32,
}

impl Dev {
    fn new(id: u32, cfg: SimDeviceConfig) -> Self {
        let n = id + 1;
        let lid = match cfg.link_layer {
            LinkLayer::Infiniband => (n & 0xbfff) as u16, // unicast LIDs are 1..=0xbfff
            LinkLayer::Ethernet => 0,
        };
        let mut gid0 = [0u8; 16];
        gid0[0] = 0xfe;
        gid0[1] = 0x80;
        gid0[8..12].copy_from_slice(&[0x02, 0x00, 0x5e, 0xff]);
        gid0[12..16].copy_from_slice(&n.to_be_bytes());
        let mut gid1 = [0u8; 16];
        gid1[10] = 0xff;
        gid1[11] = 0xff;
        gid1[12] = 10;
        gid1[13..16].copy_from_slice(&n.to_be_bytes()[1..4]);
        Self {
            name: format!("sim{id}"),
            open: true,
            cfg,
            lid,
            gids: [gid0, gid1],
            pds: Slab::default(),
            mrs: Slab::default(),
            lkeys: HashMap::new(),
            rkeys: HashMap::new(),
            next_key: 0x100,
            cqs: Slab::default(),
            srqs: Slab::default(),
            qps: Slab::default(),
            ahs: Slab::default(),
            qpns: HashMap::new(),
            // Every device numbers its QPs alike, so a packet sent to the right QPN at the wrong
            // device lands on a wrong QP or none — as it would on a real fabric.
            next_qpn: 0x11,
        }
    }

    fn close(&mut self) {
        self.open = false;
        self.qps = Slab::default();
        self.qpns.clear();
        self.ahs = Slab::default();
        self.srqs = Slab::default();
        self.cqs = Slab::default();
        self.mrs = Slab::default();
        self.lkeys.clear();
        self.rkeys.clear();
        self.pds = Slab::default();
    }

    fn port_attr(&self) -> PortAttr {
        PortAttr {
            state: self.cfg.port_state,
            max_mtu: self.cfg.active_mtu,
            active_mtu: self.cfg.active_mtu,
            lid: self.lid,
            gid_tbl_len: self.gids.len() as u32,
            max_msg_sz: 1 << 30,
            link_layer: self.cfg.link_layer,
        }
    }

    fn limits(&self) -> PortLimits {
        PortLimits {
            ports: 1,
            max_mtu: self.cfg.active_mtu,
            link_layer: self.cfg.link_layer,
            gid_tbl_len: self.gids.len() as u32,
            max_rd_atom: 16,
        }
    }

    fn device_attr() -> DeviceAttr {
        DeviceAttr {
            phys_port_cnt: 1,
            max_qp: 1 << 17,
            max_qp_wr: 32_768,
            max_sge: 30,
            max_cqe: (1 << 22) - 1,
            max_srq_wr: 32_767,
            max_srq_sge: 31,
            max_qp_rd_atom: 16,
            max_mr_size: u64::MAX,
        }
    }

    /// Whether this device answers to address vector `av` (LID on InfiniBand, GID on RoCE).
    fn matches(&self, av: &AhAttr) -> bool {
        if !self.open {
            return false;
        }
        match self.cfg.link_layer {
            LinkLayer::Infiniband => av.dlid != 0 && av.dlid == self.lid,
            LinkLayer::Ethernet => av.grh.is_some_and(|g| self.gids.contains(&g.dgid)),
        }
    }

    fn new_key(&mut self) -> u32 {
        self.next_key = self.next_key.wrapping_add(0x101);
        self.next_key
    }
}

fn err(op: &'static str, errno: i32) -> VerbsError {
    VerbsError::errno(op, errno)
}

struct Timed {
    at: u64,
    seq: u64,
    ev: engine::Event,
}

impl PartialEq for Timed {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Timed {}
impl PartialOrd for Timed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Timed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Min-heap on (at, seq): equal times run in scheduling order.
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

pub(super) struct Fabric {
    rng: SplitMix64,
    seq: u64,
    events: BinaryHeap<Timed>,
    devices: Vec<Dev>,
    default_faults: LinkFaults,
    links: HashMap<(u32, u32), LinkFaults>,
    stats: SimStats,
    /// QPs whose CQ overflowed, to move to ERROR once the current operation is done.
    doomed: Vec<(u32, u64)>,
}

impl Fabric {
    fn new(seed: u64) -> Self {
        Self {
            rng: SplitMix64::new(seed),
            seq: 0,
            events: BinaryHeap::new(),
            devices: Vec::new(),
            default_faults: LinkFaults::default(),
            links: HashMap::new(),
            stats: SimStats::default(),
            doomed: Vec::new(),
        }
    }

    fn dev(&self, d: u32) -> Option<&Dev> {
        self.devices.get(d as usize).filter(|d| d.open)
    }

    fn dev_mut(&mut self, d: u32) -> Option<&mut Dev> {
        self.devices.get_mut(d as usize).filter(|d| d.open)
    }

    fn qp(&self, d: u32, h: u64) -> Option<&QpS> {
        self.dev(d)?.qps.get(h)
    }

    fn qp_mut(&mut self, d: u32, h: u64) -> Option<&mut QpS> {
        self.dev_mut(d)?.qps.get_mut(h)
    }

    fn faults(&self, from: u32, to: u32) -> LinkFaults {
        self.links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_faults)
    }

    fn schedule(&mut self, at: u64, ev: engine::Event) {
        let seq = self.seq;
        self.seq += 1;
        self.events.push(Timed { at, seq, ev });
    }

    fn next_event_at(&self) -> Option<u64> {
        self.events.peek().map(|t| t.at)
    }

    /// Runs every event due at `now`, each at its own time.
    fn run(&mut self, now: u64) {
        while self.events.peek().is_some_and(|t| t.at <= now) {
            let Some(t) = self.events.pop() else { break };
            self.stats.events += 1;
            self.handle(t.at, t.ev);
            self.settle(t.at);
        }
    }

    /// Moves the QPs of overflowed CQs to ERROR.
    fn settle(&mut self, now: u64) {
        while let Some((d, h)) = self.doomed.pop() {
            self.enter_error(d, h, now);
        }
    }

    /// Appends a completion; on overflow the CQ breaks and its QPs are doomed.
    fn cq_push(&mut self, d: u32, cq: u64, cqe: Cqe) {
        let Some(dev) = self.devices.get_mut(d as usize).filter(|d| d.open) else {
            return;
        };
        let Some(c) = dev.cqs.get_mut(cq) else { return };
        if c.overflowed {
            return;
        }
        if c.q.len() >= c.cap as usize {
            c.overflowed = true;
            c.q.clear();
            self.stats.cq_overflows += 1;
            let users: Vec<u64> = dev
                .qps
                .iter()
                .filter(|(_, q)| q.send_cq == cq || q.recv_cq == cq)
                .map(|(h, _)| h)
                .collect();
            self.doomed.extend(users.into_iter().map(|h| (d, h)));
            return;
        }
        c.q.push_back(cqe);
    }

    /// Generates the completions of send-queue entries that are done, in order.
    fn complete_ready(&mut self, d: u32, h: u64) {
        loop {
            let Some(q) = self.qp_mut(d, h) else { return };
            let seq = q.cq_next;
            let Some(e) = q.entry(seq) else { return };
            let EntryState::Done { status, byte_len } = e.state else {
                return;
            };
            let report = e.signaled || q.sq_sig_all || status != WcStatus::Success;
            let wc = Wc {
                wr_id: e.wr_id,
                status,
                opcode: match e.op {
                    SendOp::Send | SendOp::SendWithImm(_) => WcOpcode::Send,
                    SendOp::RdmaWrite { .. } | SendOp::RdmaWriteWithImm { .. } => {
                        WcOpcode::RdmaWrite
                    }
                    SendOp::RdmaRead { .. } => WcOpcode::RdmaRead,
                },
                byte_len,
                qp_num: q.qpn,
                ..Wc::default()
            };
            q.cq_next += 1;
            let cq = q.send_cq;
            if report {
                self.cq_push(
                    d,
                    cq,
                    Cqe {
                        wc,
                        qp: h,
                        release: Release::Send(seq),
                    },
                );
            }
        }
    }

    /// Moves a QP to ERROR: flushes its send queue and (without an SRQ) its receive queue.
    pub(super) fn enter_error(&mut self, d: u32, h: u64, _now: u64) {
        let Some(q) = self.qp_mut(d, h) else { return };
        if q.state == QpState::Err {
            return;
        }
        q.state = QpState::Err;
        q.gen = q.gen.wrapping_add(1);
        q.timer_armed = false;
        for e in q.sq.iter_mut() {
            if !matches!(e.state, EntryState::Done { .. }) {
                e.state = EntryState::Done {
                    status: WcStatus::WrFlushErr,
                    byte_len: 0,
                };
            }
        }
        let flushed: Vec<RecvWr> = q.rq.drain(..).collect();
        self.complete_ready(d, h);
        for r in flushed {
            self.flush_recv(d, h, r.wr_id);
        }
    }

    /// Completes receive `wr_id` of QP `h` (no SRQ) with `WR_FLUSH_ERR`.
    pub(super) fn flush_recv(&mut self, d: u32, h: u64, wr_id: u64) {
        let Some(q) = self.qp(d, h) else { return };
        let (qpn, cq) = (q.qpn, q.recv_cq);
        let wc = Wc {
            wr_id,
            status: WcStatus::WrFlushErr,
            opcode: WcOpcode::Recv,
            qp_num: qpn,
            ..Wc::default()
        };
        self.cq_push(
            d,
            cq,
            Cqe {
                wc,
                qp: h,
                release: Release::Recv,
            },
        );
    }

    /// Completes entry `seq` with `status` (earlier unfinished ones flush) and moves the QP to
    /// ERROR.
    pub(super) fn fail_entry(&mut self, d: u32, h: u64, seq: u64, status: WcStatus, now: u64) {
        if let Some(q) = self.qp_mut(d, h) {
            let from = q.cq_next;
            for s in from..seq {
                if let Some(e) = q.entry_mut(s) {
                    if !matches!(e.state, EntryState::Done { .. }) {
                        e.state = EntryState::Done {
                            status: WcStatus::WrFlushErr,
                            byte_len: 0,
                        };
                    }
                }
            }
            if let Some(e) = q.entry_mut(seq) {
                e.state = EntryState::Done {
                    status,
                    byte_len: 0,
                };
            }
        }
        self.enter_error(d, h, now);
    }

    /// Removes the CQEs of QP `h` from its CQs (what destroy and RESET do on mlx5), returning
    /// SRQ slots their receives held.
    fn purge_cqes(&mut self, d: u32, h: u64) {
        let Some(dev) = self.dev_mut(d) else { return };
        let Some(q) = dev.qps.get(h) else { return };
        let cqs = [q.send_cq, q.recv_cq];
        let mut srq_release: Vec<u64> = Vec::new();
        for cq in cqs {
            if let Some(c) = dev.cqs.get_mut(cq) {
                c.q.retain(|e| {
                    if e.qp != h {
                        return true;
                    }
                    if let Release::Srq(s) = e.release {
                        srq_release.push(s);
                    }
                    false
                });
            }
        }
        for s in srq_release {
            if let Some(srq) = dev.srqs.get_mut(s) {
                srq.outstanding = srq.outstanding.saturating_sub(1);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The verbs.

impl VerbsDevice for SimDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn query_device(&mut self) -> Result<DeviceAttr, VerbsError> {
        self.with_dev(|_| Ok(Dev::device_attr()))
    }

    fn query_port(&mut self, port: u8) -> Result<PortAttr, VerbsError> {
        self.with_dev(|d| {
            if port != 1 {
                return Err(err("ibv_query_port", EINVAL));
            }
            Ok(d.port_attr())
        })
    }

    fn query_gid(&mut self, port: u8, index: u8) -> Result<Gid, VerbsError> {
        self.with_dev(|d| {
            if port != 1 {
                return Err(err("ibv_query_gid", EINVAL));
            }
            d.gids
                .get(usize::from(index))
                .copied()
                .ok_or(err("ibv_query_gid", EINVAL))
        })
    }

    fn alloc_pd(&mut self) -> Result<Pd, VerbsError> {
        self.with_dev(|d| Ok(Pd(d.pds.insert(()))))
    }

    fn dealloc_pd(&mut self, pd: Pd) -> Result<(), VerbsError> {
        self.with_dev(|d| {
            d.pds.get(pd.0).ok_or(err("ibv_dealloc_pd", EINVAL))?;
            let used = d.mrs.iter().any(|(_, m)| m.pd == pd.0)
                || d.qps.iter().any(|(_, q)| q.pd == pd.0)
                || d.ahs.iter().any(|(_, a)| a.pd == pd.0)
                || d.srqs.iter().any(|(_, s)| s.pd == pd.0);
            if used {
                return Err(err("ibv_dealloc_pd", EBUSY));
            }
            d.pds.remove(pd.0);
            Ok(())
        })
    }

    fn reg_mr(&mut self, pd: Pd, buf: &DmaBuf, access: Access) -> Result<Mr, VerbsError> {
        self.with_dev(|d| {
            d.pds.get(pd.0).ok_or(err("ibv_reg_mr", EINVAL))?;
            // Remote write needs local write (ibv_reg_mr(3)).
            if buf.is_empty()
                || (access.contains(Access::REMOTE_WRITE) && !access.contains(Access::LOCAL_WRITE))
                || access.0 & !0xf != 0
            {
                return Err(err("ibv_reg_mr", EINVAL));
            }
            let lkey = d.new_key();
            let rkey = d.new_key() ^ 0x8000_0000;
            let mem = buf.device_mem();
            let (addr, len) = (mem.addr(), mem.len());
            let h = d.mrs.insert(MrS {
                pd: pd.0,
                mem,
                access,
                lkey,
                rkey,
            });
            d.lkeys.insert(lkey, h);
            d.rkeys.insert(rkey, h);
            Ok(Mr {
                handle: MrHandle(h),
                lkey,
                rkey,
                addr,
                len,
            })
        })
    }

    fn dereg_mr(&mut self, mr: MrHandle) -> Result<(), VerbsError> {
        self.with_dev(|d| {
            let m = d.mrs.remove(mr.0).ok_or(err("ibv_dereg_mr", EINVAL))?;
            d.lkeys.remove(&m.lkey);
            d.rkeys.remove(&m.rkey);
            Ok(())
        })
    }

    fn create_cq(&mut self, cqe: u32) -> Result<(Cq, u32), VerbsError> {
        self.with_dev(|d| {
            if cqe == 0 || cqe > Dev::device_attr().max_cqe {
                return Err(err("ibv_create_cq", EINVAL));
            }
            let h = d.cqs.insert(CqS {
                cap: cqe,
                q: VecDeque::new(),
                overflowed: false,
                users: 0,
            });
            Ok((Cq(h), cqe))
        })
    }

    fn destroy_cq(&mut self, cq: Cq) -> Result<(), VerbsError> {
        self.with_dev(|d| {
            let c = d.cqs.get(cq.0).ok_or(err("ibv_destroy_cq", EINVAL))?;
            if c.users > 0 {
                return Err(err("ibv_destroy_cq", EBUSY));
            }
            d.cqs.remove(cq.0);
            Ok(())
        })
    }

    fn create_srq(&mut self, pd: Pd, max_wr: u32, max_sge: u32) -> Result<Srq, VerbsError> {
        self.with_dev(|d| {
            d.pds.get(pd.0).ok_or(err("ibv_create_srq", EINVAL))?;
            let a = Dev::device_attr();
            if max_wr == 0 || max_wr > a.max_srq_wr || max_sge == 0 || max_sge > a.max_srq_sge {
                return Err(err("ibv_create_srq", EINVAL));
            }
            Ok(Srq(d.srqs.insert(SrqS {
                pd: pd.0,
                max_wr,
                max_sge,
                q: VecDeque::new(),
                outstanding: 0,
                users: 0,
            })))
        })
    }

    fn destroy_srq(&mut self, srq: Srq) -> Result<(), VerbsError> {
        self.with_dev(|d| {
            let s = d.srqs.get(srq.0).ok_or(err("ibv_destroy_srq", EINVAL))?;
            if s.users > 0 {
                return Err(err("ibv_destroy_srq", EBUSY));
            }
            d.srqs.remove(srq.0);
            Ok(())
        })
    }

    fn create_qp(&mut self, pd: Pd, init: &QpInit) -> Result<QpInfo, VerbsError> {
        self.with_dev(|d| {
            const OP: &str = "ibv_create_qp";
            d.pds.get(pd.0).ok_or(err(OP, EINVAL))?;
            d.cqs.get(init.send_cq.0).ok_or(err(OP, EINVAL))?;
            d.cqs.get(init.recv_cq.0).ok_or(err(OP, EINVAL))?;
            if let Some(s) = init.srq {
                let srq = d.srqs.get(s.0).ok_or(err(OP, EINVAL))?;
                if srq.pd != pd.0 {
                    return Err(err(OP, EINVAL));
                }
            }
            let a = Dev::device_attr();
            let c = init.caps;
            let recv_ok = init.srq.is_some() || (c.max_recv_wr <= a.max_qp_wr);
            if c.max_send_wr > a.max_qp_wr
                || !recv_ok
                || c.max_send_sge > a.max_sge
                || c.max_recv_sge > a.max_sge
                || c.max_inline_data > SIM_MAX_INLINE
                || d.qps.len() >= a.max_qp as usize
            {
                return Err(err(OP, EINVAL));
            }
            let qpn = d.next_qpn;
            d.next_qpn = (d.next_qpn + 1) & PSN_MASK;
            if d.next_qpn < 0x11 {
                d.next_qpn = 0x11;
            }
            let h = d.qps.insert(QpS {
                qpn,
                pd: pd.0,
                qp_type: init.qp_type,
                send_cq: init.send_cq.0,
                recv_cq: init.recv_cq.0,
                srq: init.srq.map(|s| s.0),
                caps: c,
                sq_sig_all: init.sq_sig_all,
                state: QpState::Reset,
                qkey: 0,
                access: Access::NONE,
                av: AhAttr::default(),
                path_mtu: Mtu::M256,
                dest_qpn: 0,
                rq_psn: 0,
                sq_psn: 0,
                timeout: 0,
                retry_cnt: 0,
                rnr_retry: 0,
                min_rnr_timer: 0,
                sq: VecDeque::new(),
                next_seq: 0,
                tx_next: 0,
                cq_next: 0,
                psn_base: 0,
                gen: 0,
                tx_scheduled: false,
                retry_left: 0,
                rnr_left: 0,
                timer_armed: false,
                last_progress: 0,
                last_tx_arrival: 0,
                stalled_until: 0,
                rq: VecDeque::new(),
                rq_outstanding: 0,
                epsn: 0,
                nak_sent: false,
                last_resp_at: 0,
            });
            d.qpns.insert(qpn, h);
            for cq in [init.send_cq.0, init.recv_cq.0] {
                if let Some(cq) = d.cqs.get_mut(cq) {
                    cq.users += 1;
                }
            }
            if let Some(s) = init.srq.and_then(|s| d.srqs.get_mut(s.0)) {
                s.users += 1;
            }
            Ok(QpInfo {
                qp: Qp(h),
                qp_num: qpn,
                caps: c,
            })
        })
    }

    fn modify_qp(&mut self, qp: Qp, attr: &QpAttr, mask: AttrMask) -> Result<(), VerbsError> {
        self.with(|f, d, now| f.modify_qp(d, qp.0, attr, mask, now))
    }

    fn query_qp_state(&mut self, qp: Qp) -> Result<QpState, VerbsError> {
        self.with(|f, d, _| {
            f.qp(d, qp.0)
                .map(|q| q.state)
                .ok_or(err("ibv_query_qp", EINVAL))
        })
    }

    fn destroy_qp(&mut self, qp: Qp) -> Result<(), VerbsError> {
        self.with(|f, d, _| {
            f.qp(d, qp.0).ok_or(err("ibv_destroy_qp", EINVAL))?;
            f.purge_cqes(d, qp.0);
            let dev = f.dev_mut(d).ok_or(err("ibv_destroy_qp", EINVAL))?;
            let q = dev.qps.remove(qp.0).ok_or(err("ibv_destroy_qp", EINVAL))?;
            dev.qpns.remove(&q.qpn);
            for cq in [q.send_cq, q.recv_cq] {
                if let Some(cq) = dev.cqs.get_mut(cq) {
                    cq.users = cq.users.saturating_sub(1);
                }
            }
            if let Some(s) = q.srq.and_then(|s| dev.srqs.get_mut(s)) {
                s.users = s.users.saturating_sub(1);
            }
            Ok(())
        })
    }

    fn create_ah(&mut self, pd: Pd, attr: &AhAttr) -> Result<Ah, VerbsError> {
        self.with_dev(|d| {
            d.pds.get(pd.0).ok_or(err("ibv_create_ah", EINVAL))?;
            rules::check_av(attr, &d.limits()).map_err(|e| err("ibv_create_ah", e))?;
            Ok(Ah(d.ahs.insert(AhS {
                pd: pd.0,
                attr: *attr,
            })))
        })
    }

    fn destroy_ah(&mut self, ah: Ah) -> Result<(), VerbsError> {
        self.with_dev(|d| {
            d.ahs
                .remove(ah.0)
                .map(|_| ())
                .ok_or(err("ibv_destroy_ah", EINVAL))
        })
    }

    fn post_send(&mut self, qp: Qp, wrs: &[SendWr<'_>]) -> Result<(), PostError> {
        self.with(|f, d, now| f.post_send(d, qp.0, wrs, now))
    }

    fn post_recv(&mut self, qp: Qp, wrs: &[RecvWr]) -> Result<(), PostError> {
        self.with(|f, d, _| f.post_recv(d, qp.0, wrs))
    }

    fn post_srq_recv(&mut self, srq: Srq, wrs: &[RecvWr]) -> Result<(), PostError> {
        self.with(|f, d, _| {
            let bad = |index| PostError {
                index,
                errno: EINVAL,
            };
            let dev = f.dev_mut(d).ok_or(bad(0))?;
            let s = dev.srqs.get_mut(srq.0).ok_or(bad(0))?;
            for (i, wr) in wrs.iter().enumerate() {
                if wr.sg.as_slice().len() > s.max_sge as usize {
                    return Err(bad(i));
                }
                if s.outstanding >= s.max_wr {
                    return Err(PostError {
                        index: i,
                        errno: ENOMEM,
                    });
                }
                s.q.push_back(*wr);
                s.outstanding += 1;
            }
            Ok(())
        })
    }

    fn poll_cq(&mut self, cq: Cq, out: &mut [Wc]) -> Result<usize, VerbsError> {
        self.with(|f, d, _| f.poll_cq(d, cq.0, out))
    }

    fn idle(&mut self, timeout: Option<Duration>) {
        if self.fabric.shared.clock.is_real() {
            let t = timeout.unwrap_or(Duration::from_micros(50));
            std::thread::sleep(t.min(Duration::from_micros(50)));
        }
    }
}
