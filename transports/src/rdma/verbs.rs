//! The verbs device boundary: the [`VerbsDevice`] trait and the plain-data types it speaks.
//!
//! The trait is the legacy verbs API (the one `ibv_post_send`/`ibv_poll_cq` programs use) cut
//! down to what the UD and RC transports need, with Rust types instead of C structs:
//!
//! * **control path** — device and port queries, protection domains, memory regions,
//!   completion queues, shared receive queues, queue pairs and their state machine
//!   ([`VerbsDevice::modify_qp`] with an [`AttrMask`]), address handles;
//! * **datapath** — [`VerbsDevice::post_send`] and [`VerbsDevice::post_recv`] /
//!   [`VerbsDevice::post_srq_recv`] take *lists* of work requests (one doorbell per list),
//!   [`VerbsDevice::poll_cq`] fills a caller-owned array of completions.
//!
//! Two implementations exist: [`crate::rdma::ibv::IbvDevice`] over libibverbs (a real NIC) and
//! [`crate::rdma::sim::SimDevice`] (the in-process simulated fabric). The transports are generic
//! over the trait, so the code that runs in CI on the simulator is the code that runs on a NIC.
//!
//! Objects are named by small copyable handles ([`Pd`], [`Cq`], [`Qp`], ...) that are only
//! meaningful to the device that made them; a stale or foreign handle is an `EINVAL` error,
//! never undefined behaviour. Errors carry the errno value real verbs return, so callers (and
//! tests) can tell "queue full" (`ENOMEM`) from "invalid request" (`EINVAL`).
//!
//! Registered memory is a [`DmaBuf`]: the device keeps its own reference to the allocation for
//! as long as the region is registered, so memory a device may still access is never freed.
use std::fmt;
use std::time::Duration;

pub use super::dma::DmaBuf;

/// `EINVAL`: an invalid argument, attribute mask or state for the request.
pub const EINVAL: i32 = libc::EINVAL;
/// `ENOMEM`: a queue is full or a resource limit is reached.
pub const ENOMEM: i32 = libc::ENOMEM;
/// `EBUSY`: the object is still in use (a PD with QPs, a CQ with QPs attached, ...).
pub const EBUSY: i32 = libc::EBUSY;
/// `EOPNOTSUPP`: the request is valid verbs but outside what this device implements.
pub const EOPNOTSUPP: i32 = libc::EOPNOTSUPP;

/// An error from a verb.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerbsError {
    /// No usable device: the list was empty or could not be read (no RDMA in the kernel), or no
    /// device or port matched what was asked for.
    #[error("no RDMA device ({wanted}): {reason}")]
    NoDevice {
        /// What was looked for (a device name, "any device", a port, ...).
        wanted: String,
        /// Why nothing was found.
        reason: String,
    },
    /// A verb failed with an errno value.
    #[error("{op} failed: {} (errno {errno})", errno_name(*.errno))]
    Errno {
        /// The verb (`ibv_modify_qp`, ...).
        op: &'static str,
        /// The errno value.
        errno: i32,
    },
    /// A completion queue overflowed; it and the queue pairs that use it are unusable.
    #[error("completion queue overflowed (fatal: the CQ and its QPs are in error)")]
    CqOverflow,
}

impl VerbsError {
    /// An [`VerbsError::Errno`] error.
    pub fn errno(op: &'static str, errno: i32) -> Self {
        Self::Errno { op, errno }
    }

    /// The errno value, if this error carries one.
    pub fn errno_value(&self) -> Option<i32> {
        match self {
            Self::Errno { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// A short symbolic name for the errno values verbs return.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EINVAL => "EINVAL",
        libc::ENOMEM => "ENOMEM",
        libc::EBUSY => "EBUSY",
        libc::ENOSYS => "ENOSYS",
        libc::ENODEV => "ENODEV",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EPERM => "EPERM",
        libc::EACCES => "EACCES",
        libc::EAGAIN => "EAGAIN",
        libc::EIO => "EIO",
        libc::EFAULT => "EFAULT",
        _ => "errno",
    }
}

/// A failed post: WRs before `index` were posted, the one at `index` (and the rest) were not —
/// the meaning of `bad_wr` in `ibv_post_send`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("post failed at work request {index}: {} (errno {errno})", errno_name(*.errno))]
pub struct PostError {
    /// Index of the first work request that was not posted.
    pub index: usize,
    /// The errno value.
    pub errno: i32,
}

macro_rules! handle {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(pub(crate) u64);
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({}#{})", stringify!($name), self.0 & 0xffff_ffff, self.0 >> 32)
            }
        }
    };
}

handle!(
    /// A protection domain.
    Pd
);
handle!(
    /// A completion queue.
    Cq
);
handle!(
    /// A queue pair.
    Qp
);
handle!(
    /// A shared receive queue.
    Srq
);
handle!(
    /// An address handle (a UD destination).
    Ah
);
handle!(
    /// A memory region's device-side name (see [`Mr`]).
    MrHandle
);

/// A registered memory region: its handle, keys and the address range it covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mr {
    /// The device's handle (for [`VerbsDevice::dereg_mr`]).
    pub handle: MrHandle,
    /// Key for local access (SGEs of this device's work requests).
    pub lkey: u32,
    /// Key for remote access (RDMA READ/WRITE by a peer).
    pub rkey: u32,
    /// First byte covered.
    pub addr: u64,
    /// Bytes covered.
    pub len: usize,
}

impl Mr {
    /// The SGE for `len` bytes at byte `offset` of the region (`None` when out of range).
    pub fn sge(&self, offset: usize, len: usize) -> Option<Sge> {
        let end = offset.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(Sge {
            addr: self.addr + offset as u64,
            length: u32::try_from(len).ok()?,
            lkey: self.lkey,
        })
    }
}

/// Memory and queue-pair access rights (`IBV_ACCESS_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Access(pub u32);

impl Access {
    /// No remote access, no local write.
    pub const NONE: Access = Access(0);
    /// The device may write the memory (needed for RECV buffers and READ targets).
    pub const LOCAL_WRITE: Access = Access(1);
    /// Peers may RDMA WRITE (requires `LOCAL_WRITE` on a memory region).
    pub const REMOTE_WRITE: Access = Access(2);
    /// Peers may RDMA READ.
    pub const REMOTE_READ: Access = Access(4);
    /// Peers may issue atomics.
    pub const REMOTE_ATOMIC: Access = Access(8);

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// Path MTU (`enum ibv_mtu`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mtu {
    /// 256 bytes.
    M256 = 1,
    /// 512 bytes.
    M512 = 2,
    /// 1024 bytes.
    M1024 = 3,
    /// 2048 bytes.
    M2048 = 4,
    /// 4096 bytes.
    M4096 = 5,
}

impl Mtu {
    /// The MTU in bytes.
    pub fn bytes(self) -> usize {
        128 << (self as usize)
    }

    /// Parses the `enum ibv_mtu` value.
    pub fn from_raw(v: u32) -> Option<Mtu> {
        Some(match v {
            1 => Mtu::M256,
            2 => Mtu::M512,
            3 => Mtu::M1024,
            4 => Mtu::M2048,
            5 => Mtu::M4096,
            _ => return None,
        })
    }
}

/// Port state (`enum ibv_port_state`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortState {
    /// No link.
    Down,
    /// Link up, not yet configured by the subnet manager.
    Init,
    /// Configured, not yet active.
    Armed,
    /// Ready for traffic.
    Active,
    /// Active, deferring.
    ActiveDefer,
    /// A value this binding does not name.
    Other(u32),
}

impl PortState {
    /// Parses the `enum ibv_port_state` value.
    pub fn from_raw(v: u32) -> PortState {
        match v {
            1 => PortState::Down,
            2 => PortState::Init,
            3 => PortState::Armed,
            4 => PortState::Active,
            5 => PortState::ActiveDefer,
            o => PortState::Other(o),
        }
    }
}

/// The link layer of a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// InfiniBand: destinations are LIDs; a GRH is optional.
    Infiniband,
    /// Ethernet (RoCE): destinations are GIDs; every address handle needs a GRH.
    Ethernet,
}

/// A 16-byte global identifier (an IPv6 address on RoCE).
pub type Gid = [u8; 16];

/// Device attributes (a subset of `struct ibv_device_attr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceAttr {
    /// Number of physical ports (numbered from 1).
    pub phys_port_cnt: u8,
    /// Most queue pairs.
    pub max_qp: u32,
    /// Most work requests per queue.
    pub max_qp_wr: u32,
    /// Most scatter/gather entries per work request.
    pub max_sge: u32,
    /// Most entries per completion queue.
    pub max_cqe: u32,
    /// Most work requests per shared receive queue.
    pub max_srq_wr: u32,
    /// Most scatter/gather entries per SRQ work request.
    pub max_srq_sge: u32,
    /// Most outstanding RDMA READs per QP, as responder.
    pub max_qp_rd_atom: u32,
    /// Largest memory region.
    pub max_mr_size: u64,
}

/// Port attributes (a subset of `struct ibv_port_attr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortAttr {
    /// Logical state.
    pub state: PortState,
    /// Largest MTU the port supports.
    pub max_mtu: Mtu,
    /// MTU in use.
    pub active_mtu: Mtu,
    /// Local identifier (0 on RoCE).
    pub lid: u16,
    /// Entries of the GID table.
    pub gid_tbl_len: u32,
    /// Largest message.
    pub max_msg_sz: u32,
    /// Link layer.
    pub link_layer: LinkLayer,
}

/// Queue pair transport type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpType {
    /// Reliable connection.
    Rc,
    /// Unreliable datagram.
    Ud,
}

/// Queue pair state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QpState {
    /// Just created or reset: nothing may be posted.
    Reset,
    /// Receives may be posted; nothing is received yet.
    Init,
    /// Ready to receive.
    Rtr,
    /// Ready to send.
    Rts,
    /// Send queue drained.
    Sqd,
    /// Send queue error (UD).
    Sqe,
    /// Error: every outstanding and newly posted work request completes with `WR_FLUSH_ERR`.
    Err,
}

impl QpState {
    /// The `enum ibv_qp_state` value.
    pub fn raw(self) -> u32 {
        match self {
            QpState::Reset => 0,
            QpState::Init => 1,
            QpState::Rtr => 2,
            QpState::Rts => 3,
            QpState::Sqd => 4,
            QpState::Sqe => 5,
            QpState::Err => 6,
        }
    }

    /// Parses the `enum ibv_qp_state` value.
    pub fn from_raw(v: u32) -> Option<QpState> {
        Some(match v {
            0 => QpState::Reset,
            1 => QpState::Init,
            2 => QpState::Rtr,
            3 => QpState::Rts,
            4 => QpState::Sqd,
            5 => QpState::Sqe,
            6 => QpState::Err,
            _ => return None,
        })
    }
}

/// Which attributes of a [`QpAttr`] a [`VerbsDevice::modify_qp`] call sets (`IBV_QP_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AttrMask(pub u32);

impl AttrMask {
    /// `qp_state`.
    pub const STATE: AttrMask = AttrMask(1);
    /// `cur_qp_state`.
    pub const CUR_STATE: AttrMask = AttrMask(1 << 1);
    /// `en_sqd_async_notify`.
    pub const EN_SQD_ASYNC_NOTIFY: AttrMask = AttrMask(1 << 2);
    /// `qp_access_flags`.
    pub const ACCESS_FLAGS: AttrMask = AttrMask(1 << 3);
    /// `pkey_index`.
    pub const PKEY_INDEX: AttrMask = AttrMask(1 << 4);
    /// `port_num`.
    pub const PORT: AttrMask = AttrMask(1 << 5);
    /// `qkey`.
    pub const QKEY: AttrMask = AttrMask(1 << 6);
    /// `ah_attr` (the primary path).
    pub const AV: AttrMask = AttrMask(1 << 7);
    /// `path_mtu`.
    pub const PATH_MTU: AttrMask = AttrMask(1 << 8);
    /// `timeout`.
    pub const TIMEOUT: AttrMask = AttrMask(1 << 9);
    /// `retry_cnt`.
    pub const RETRY_CNT: AttrMask = AttrMask(1 << 10);
    /// `rnr_retry`.
    pub const RNR_RETRY: AttrMask = AttrMask(1 << 11);
    /// `rq_psn`.
    pub const RQ_PSN: AttrMask = AttrMask(1 << 12);
    /// `max_rd_atomic`.
    pub const MAX_QP_RD_ATOMIC: AttrMask = AttrMask(1 << 13);
    /// `alt_ah_attr` and friends.
    pub const ALT_PATH: AttrMask = AttrMask(1 << 14);
    /// `min_rnr_timer`.
    pub const MIN_RNR_TIMER: AttrMask = AttrMask(1 << 15);
    /// `sq_psn`.
    pub const SQ_PSN: AttrMask = AttrMask(1 << 16);
    /// `max_dest_rd_atomic`.
    pub const MAX_DEST_RD_ATOMIC: AttrMask = AttrMask(1 << 17);
    /// `path_mig_state`.
    pub const PATH_MIG_STATE: AttrMask = AttrMask(1 << 18);
    /// `cap`.
    pub const CAP: AttrMask = AttrMask(1 << 19);
    /// `dest_qp_num`.
    pub const DEST_QPN: AttrMask = AttrMask(1 << 20);

    /// What RESET → INIT requires of a UD QP: state, P_Key index, port, qkey.
    pub const UD_INIT: AttrMask =
        AttrMask(Self::STATE.0 | Self::PKEY_INDEX.0 | Self::PORT.0 | Self::QKEY.0);
    /// What RTR → RTS requires of a UD QP: state, send PSN.
    pub const UD_RTS: AttrMask = AttrMask(Self::STATE.0 | Self::SQ_PSN.0);
    /// What RESET → INIT requires of an RC QP: state, P_Key index, port, access flags.
    pub const RC_INIT: AttrMask =
        AttrMask(Self::STATE.0 | Self::PKEY_INDEX.0 | Self::PORT.0 | Self::ACCESS_FLAGS.0);
    /// What INIT → RTR requires of an RC QP: state, address vector, path MTU, remote QPN,
    /// receive PSN, responder READ depth, RNR timer.
    pub const RC_RTR: AttrMask = AttrMask(
        Self::STATE.0
            | Self::AV.0
            | Self::PATH_MTU.0
            | Self::DEST_QPN.0
            | Self::RQ_PSN.0
            | Self::MAX_DEST_RD_ATOMIC.0
            | Self::MIN_RNR_TIMER.0,
    );
    /// What RTR → RTS requires of an RC QP: state, send PSN, ACK timeout, retry counts,
    /// requester READ depth.
    pub const RC_RTS: AttrMask = AttrMask(
        Self::STATE.0
            | Self::SQ_PSN.0
            | Self::TIMEOUT.0
            | Self::RETRY_CNT.0
            | Self::RNR_RETRY.0
            | Self::MAX_QP_RD_ATOMIC.0,
    );

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: AttrMask) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for AttrMask {
    type Output = AttrMask;
    fn bitor(self, rhs: AttrMask) -> AttrMask {
        AttrMask(self.0 | rhs.0)
    }
}

/// The global route header part of an address vector (`struct ibv_global_route`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalRoute {
    /// Destination GID.
    pub dgid: Gid,
    /// Flow label.
    pub flow_label: u32,
    /// Index of the source GID in the local port's GID table.
    pub sgid_index: u8,
    /// Hop limit (the IP TTL on RoCE v2).
    pub hop_limit: u8,
    /// Traffic class.
    pub traffic_class: u8,
}

/// An address vector (`struct ibv_ah_attr`): where a UD address handle or an RC QP sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AhAttr {
    /// Destination LID (InfiniBand).
    pub dlid: u16,
    /// Service level.
    pub sl: u8,
    /// Source path bits.
    pub src_path_bits: u8,
    /// Local port.
    pub port_num: u8,
    /// The GRH, for global routing (required on RoCE).
    pub grh: Option<GlobalRoute>,
}

/// Queue pair attributes for [`VerbsDevice::modify_qp`]; only the fields named by the mask count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpAttr {
    /// Target state (`AttrMask::STATE`).
    pub state: QpState,
    /// Assumed current state (`AttrMask::CUR_STATE`).
    pub cur_state: QpState,
    /// Path MTU (RC).
    pub path_mtu: Mtu,
    /// Queue key (UD).
    pub qkey: u32,
    /// Receive PSN (RC).
    pub rq_psn: u32,
    /// Send PSN.
    pub sq_psn: u32,
    /// Remote QP number (RC).
    pub dest_qp_num: u32,
    /// Remote access rights the QP grants (RC).
    pub access: Access,
    /// Primary path (RC).
    pub ah: AhAttr,
    /// P_Key index.
    pub pkey_index: u16,
    /// Outstanding RDMA READs as requester (RC).
    pub max_rd_atomic: u8,
    /// Outstanding RDMA READs as responder (RC).
    pub max_dest_rd_atomic: u8,
    /// RNR NAK timer code the responder advertises (RC, 0..=31).
    pub min_rnr_timer: u8,
    /// Port number.
    pub port_num: u8,
    /// Local ACK timeout code: 4.096 µs × 2^timeout, 0 = infinite (RC).
    pub timeout: u8,
    /// Transport retries before `RETRY_EXC_ERR` (RC, 0..=7).
    pub retry_cnt: u8,
    /// RNR retries before `RNR_RETRY_EXC_ERR`; 7 = infinite (RC).
    pub rnr_retry: u8,
}

impl Default for QpAttr {
    fn default() -> Self {
        Self {
            state: QpState::Reset,
            cur_state: QpState::Reset,
            path_mtu: Mtu::M1024,
            qkey: 0,
            rq_psn: 0,
            sq_psn: 0,
            dest_qp_num: 0,
            access: Access::NONE,
            ah: AhAttr::default(),
            pkey_index: 0,
            max_rd_atomic: 0,
            max_dest_rd_atomic: 0,
            min_rnr_timer: 0,
            port_num: 0,
            timeout: 0,
            retry_cnt: 0,
            rnr_retry: 0,
        }
    }
}

/// Queue capacities (`struct ibv_qp_cap`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QpCaps {
    /// Send queue depth.
    pub max_send_wr: u32,
    /// Receive queue depth (ignored with an SRQ).
    pub max_recv_wr: u32,
    /// SGEs per send work request.
    pub max_send_sge: u32,
    /// SGEs per receive work request.
    pub max_recv_sge: u32,
    /// Most bytes of inline data per send.
    pub max_inline_data: u32,
}

/// What [`VerbsDevice::create_qp`] needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpInit {
    /// Transport type.
    pub qp_type: QpType,
    /// CQ for send completions.
    pub send_cq: Cq,
    /// CQ for receive completions.
    pub recv_cq: Cq,
    /// Shared receive queue, if receives come from one.
    pub srq: Option<Srq>,
    /// Requested capacities.
    pub caps: QpCaps,
    /// Signal every send (otherwise only those with [`SendWr::signaled`]).
    pub sq_sig_all: bool,
}

/// A created queue pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpInfo {
    /// Its handle.
    pub qp: Qp,
    /// Its QP number (what a peer addresses).
    pub qp_num: u32,
    /// The capacities the device granted (at least those asked for).
    pub caps: QpCaps,
}

/// One scatter/gather element: `length` bytes at `addr` of the region with key `lkey`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Sge {
    /// Virtual address.
    pub addr: u64,
    /// Length in bytes.
    pub length: u32,
    /// Local key of the memory region.
    pub lkey: u32,
}

/// Most SGEs one work request carries in this API.
pub const MAX_SGE: usize = 4;

/// A short scatter/gather list stored inline in the work request (no allocation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SgList {
    sge: [Sge; MAX_SGE],
    len: u8,
}

impl SgList {
    /// An empty list (a zero-byte message).
    pub const fn new() -> Self {
        Self {
            sge: [Sge {
                addr: 0,
                length: 0,
                lkey: 0,
            }; MAX_SGE],
            len: 0,
        }
    }

    /// A list of one element.
    pub fn one(sge: Sge) -> Self {
        let mut l = Self::new();
        l.sge[0] = sge;
        l.len = 1;
        l
    }

    /// Appends an element; `false` if the list is full.
    pub fn push(&mut self, sge: Sge) -> bool {
        match self.sge.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = sge;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// The elements.
    pub fn as_slice(&self) -> &[Sge] {
        self.sge.get(..usize::from(self.len)).unwrap_or(&[])
    }

    /// Total bytes.
    pub fn total_len(&self) -> u64 {
        self.as_slice().iter().map(|s| u64::from(s.length)).sum()
    }
}

/// Send opcodes (`enum ibv_wr_opcode`) with their operands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendOp {
    /// SEND: consumes one receive at the destination.
    Send,
    /// SEND with 32 bits of immediate data delivered in the receive completion.
    SendWithImm(u32),
    /// RDMA WRITE to `remote_addr` of the peer region with `rkey` (RC).
    RdmaWrite {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
    /// RDMA WRITE that also consumes a receive at the destination and delivers `imm` (RC).
    RdmaWriteWithImm {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
        /// Immediate data.
        imm: u32,
    },
    /// RDMA READ from `remote_addr` of the peer region with `rkey` into the local SGEs (RC).
    RdmaRead {
        /// Remote virtual address.
        remote_addr: u64,
        /// Remote key.
        rkey: u32,
    },
}

/// The data of a send work request.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    /// Gathered by the device from registered memory when it processes the request (maybe
    /// long after the post returns: the memory must not change until the request completes).
    Sg(SgList),
    /// Copied at post time (`IBV_SEND_INLINE`): the concatenation of the two slices, which need
    /// not be registered and may be reused as soon as the post returns. At most the QP's
    /// `max_inline_data` bytes.
    Inline(&'a [u8], &'a [u8]),
}

impl Payload<'_> {
    /// Total bytes.
    pub fn len(&self) -> u64 {
        match self {
            Payload::Sg(l) => l.total_len(),
            Payload::Inline(a, b) => (a.len() + b.len()) as u64,
        }
    }

    /// Whether the payload is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The UD destination of a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdDest {
    /// Address handle.
    pub ah: Ah,
    /// Destination QP number.
    pub remote_qpn: u32,
    /// Queue key the destination QP must have.
    pub remote_qkey: u32,
}

/// A send work request (`struct ibv_send_wr` without the linked-list plumbing).
#[derive(Clone, Copy, Debug)]
pub struct SendWr<'a> {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Operation.
    pub op: SendOp,
    /// Request a completion (`IBV_SEND_SIGNALED`). Unsignaled requests complete silently, and
    /// their send-queue slots are only reclaimed when a later signaled one completes.
    pub signaled: bool,
    /// Data.
    pub payload: Payload<'a>,
    /// Destination, for UD QPs (ignored on RC).
    pub ud: Option<UdDest>,
}

/// A receive work request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecvWr {
    /// Returned in the completion.
    pub wr_id: u64,
    /// Where the message goes.
    pub sg: SgList,
}

/// Completion status (`enum ibv_wc_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcStatus {
    /// Success.
    Success,
    /// Local length error: the message did not fit the receive buffer.
    LocLenErr,
    /// Local QP operation error.
    LocQpOpErr,
    /// Local protection error: an SGE outside a registered region of the QP's PD, or without
    /// the access the operation needs.
    LocProtErr,
    /// Flushed: the QP was in the error state.
    WrFlushErr,
    /// Local access error.
    LocAccessErr,
    /// Remote invalid request (e.g. the message did not fit the peer's receive buffer).
    RemInvReqErr,
    /// Remote access error (bad rkey, range or rights for RDMA READ/WRITE).
    RemAccessErr,
    /// Remote operation error.
    RemOpErr,
    /// Transport retries exhausted (no ACK: peer gone, wrong address or PSN).
    RetryExcErr,
    /// RNR retries exhausted (the peer had no receive posted).
    RnrRetryExcErr,
    /// Fatal error.
    FatalErr,
    /// General error.
    GeneralErr,
    /// Another `enum ibv_wc_status` value.
    Other(u32),
}

impl WcStatus {
    /// Parses the `enum ibv_wc_status` value.
    pub fn from_raw(v: u32) -> WcStatus {
        match v {
            0 => WcStatus::Success,
            1 => WcStatus::LocLenErr,
            2 => WcStatus::LocQpOpErr,
            4 => WcStatus::LocProtErr,
            5 => WcStatus::WrFlushErr,
            8 => WcStatus::LocAccessErr,
            9 => WcStatus::RemInvReqErr,
            10 => WcStatus::RemAccessErr,
            11 => WcStatus::RemOpErr,
            12 => WcStatus::RetryExcErr,
            13 => WcStatus::RnrRetryExcErr,
            19 => WcStatus::FatalErr,
            21 => WcStatus::GeneralErr,
            o => WcStatus::Other(o),
        }
    }

    /// The `enum ibv_wc_status` value.
    pub fn raw(self) -> u32 {
        match self {
            WcStatus::Success => 0,
            WcStatus::LocLenErr => 1,
            WcStatus::LocQpOpErr => 2,
            WcStatus::LocProtErr => 4,
            WcStatus::WrFlushErr => 5,
            WcStatus::LocAccessErr => 8,
            WcStatus::RemInvReqErr => 9,
            WcStatus::RemAccessErr => 10,
            WcStatus::RemOpErr => 11,
            WcStatus::RetryExcErr => 12,
            WcStatus::RnrRetryExcErr => 13,
            WcStatus::FatalErr => 19,
            WcStatus::GeneralErr => 21,
            WcStatus::Other(o) => o,
        }
    }
}

/// Completion opcode (`enum ibv_wc_opcode`); only meaningful for successful completions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WcOpcode {
    /// A SEND completed.
    Send,
    /// An RDMA WRITE completed.
    RdmaWrite,
    /// An RDMA READ completed.
    RdmaRead,
    /// A receive consumed by a SEND.
    Recv,
    /// A receive consumed by an RDMA WRITE with immediate.
    RecvRdmaWithImm,
    /// Another value.
    Other(u32),
}

impl WcOpcode {
    /// Parses the `enum ibv_wc_opcode` value.
    pub fn from_raw(v: u32) -> WcOpcode {
        match v {
            0 => WcOpcode::Send,
            1 => WcOpcode::RdmaWrite,
            2 => WcOpcode::RdmaRead,
            128 => WcOpcode::Recv,
            129 => WcOpcode::RecvRdmaWithImm,
            o => WcOpcode::Other(o),
        }
    }
}

/// A work completion (`struct ibv_wc`). For an error status only `wr_id`, `status` and
/// `qp_num` are meaningful.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wc {
    /// The work request's `wr_id`.
    pub wr_id: u64,
    /// Status.
    pub status: WcStatus,
    /// Opcode.
    pub opcode: WcOpcode,
    /// Bytes received (receives; on UD it counts the 40-byte GRH area) or read.
    pub byte_len: u32,
    /// Immediate data, if the sender attached some.
    pub imm: Option<u32>,
    /// The local QP number.
    pub qp_num: u32,
    /// The sender's QP number (receives).
    pub src_qp: u32,
    /// The sender's LID (receives).
    pub slid: u16,
    /// Whether the first 40 bytes of the receive buffer hold a GRH (UD receives).
    pub grh: bool,
    /// Vendor error syndrome.
    pub vendor_err: u32,
}

impl Default for Wc {
    fn default() -> Self {
        Self {
            wr_id: 0,
            status: WcStatus::Success,
            opcode: WcOpcode::Send,
            byte_len: 0,
            imm: None,
            qp_num: 0,
            src_qp: 0,
            slid: 0,
            grh: false,
            vendor_err: 0,
        }
    }
}

/// Bytes of the global route header at the start of every UD receive buffer.
pub const GRH_LEN: usize = 40;

/// A verbs device context: the boundary between the transports and a NIC (or the simulator).
///
/// One context is used by one thread (methods take `&mut self`); create one per transport.
/// Every method is safe: a device validates handles and (like hardware) checks the memory
/// named by non-inline SGEs against its registered regions, failing the request with
/// `LOC_PROT_ERR` rather than touching anything else.
pub trait VerbsDevice {
    /// The device name (`mlx5_0`, `rxe0`, `sim3`, ...).
    fn name(&self) -> &str;

    /// Device attributes.
    fn query_device(&mut self) -> Result<DeviceAttr, VerbsError>;
    /// Attributes of port `port` (numbered from 1).
    fn query_port(&mut self, port: u8) -> Result<PortAttr, VerbsError>;
    /// Entry `index` of port `port`'s GID table.
    fn query_gid(&mut self, port: u8, index: u8) -> Result<Gid, VerbsError>;

    /// Allocates a protection domain.
    fn alloc_pd(&mut self) -> Result<Pd, VerbsError>;
    /// Frees a protection domain (`EBUSY` while objects use it).
    fn dealloc_pd(&mut self, pd: Pd) -> Result<(), VerbsError>;

    /// Registers all of `buf` with `access` rights. The device keeps the allocation alive
    /// until [`VerbsDevice::dereg_mr`] (or the device is dropped).
    fn reg_mr(&mut self, pd: Pd, buf: &DmaBuf, access: Access) -> Result<Mr, VerbsError>;
    /// Deregisters a memory region.
    fn dereg_mr(&mut self, mr: MrHandle) -> Result<(), VerbsError>;

    /// Creates a completion queue for at least `cqe` entries; returns it and its capacity.
    fn create_cq(&mut self, cqe: u32) -> Result<(Cq, u32), VerbsError>;
    /// Destroys a completion queue (`EBUSY` while QPs use it).
    fn destroy_cq(&mut self, cq: Cq) -> Result<(), VerbsError>;

    /// Creates a shared receive queue of `max_wr` requests of `max_sge` SGEs.
    fn create_srq(&mut self, pd: Pd, max_wr: u32, max_sge: u32) -> Result<Srq, VerbsError>;
    /// Destroys a shared receive queue (`EBUSY` while QPs use it).
    fn destroy_srq(&mut self, srq: Srq) -> Result<(), VerbsError>;

    /// Creates a queue pair in the RESET state.
    fn create_qp(&mut self, pd: Pd, init: &QpInit) -> Result<QpInfo, VerbsError>;
    /// Modifies a queue pair: state transitions and attributes (`EINVAL` for a transition or
    /// mask the state machine does not allow).
    fn modify_qp(&mut self, qp: Qp, attr: &QpAttr, mask: AttrMask) -> Result<(), VerbsError>;
    /// The queue pair's current state.
    fn query_qp_state(&mut self, qp: Qp) -> Result<QpState, VerbsError>;
    /// Destroys a queue pair; its completions still in the CQs are discarded.
    fn destroy_qp(&mut self, qp: Qp) -> Result<(), VerbsError>;

    /// Creates an address handle.
    fn create_ah(&mut self, pd: Pd, attr: &AhAttr) -> Result<Ah, VerbsError>;
    /// Destroys an address handle.
    fn destroy_ah(&mut self, ah: Ah) -> Result<(), VerbsError>;

    /// Posts a list of send work requests with one doorbell.
    fn post_send(&mut self, qp: Qp, wrs: &[SendWr<'_>]) -> Result<(), PostError>;
    /// Posts a list of receive work requests to a QP without an SRQ.
    fn post_recv(&mut self, qp: Qp, wrs: &[RecvWr]) -> Result<(), PostError>;
    /// Posts a list of receive work requests to a shared receive queue.
    fn post_srq_recv(&mut self, srq: Srq, wrs: &[RecvWr]) -> Result<(), PostError>;
    /// Polls up to `out.len()` completions into `out`; returns how many.
    fn poll_cq(&mut self, cq: Cq, out: &mut [Wc]) -> Result<usize, VerbsError>;

    /// Lets time pass when a caller has nothing to do: at most `timeout`, maybe less.
    fn idle(&mut self, timeout: Option<Duration>);
}

/// A table of objects named by handles that are never confused with a later object in the
/// same slot (index in the low 32 bits, generation in the high 32 bits).
pub(crate) struct Slab<T> {
    entries: Vec<(u32, Option<T>)>,
    free: Vec<u32>,
    live: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            free: Vec::new(),
            live: 0,
        }
    }
}

impl<T> Slab<T> {
    pub(crate) fn insert(&mut self, v: T) -> u64 {
        self.live += 1;
        if let Some(i) = self.free.pop() {
            if let Some(e) = self.entries.get_mut(i as usize) {
                e.0 = e.0.wrapping_add(1);
                e.1 = Some(v);
                return (u64::from(e.0) << 32) | u64::from(i);
            }
        }
        let i = self.entries.len() as u32;
        self.entries.push((0, Some(v)));
        u64::from(i)
    }

    fn slot(&self, h: u64) -> Option<&(u32, Option<T>)> {
        let e = self.entries.get((h & 0xffff_ffff) as usize)?;
        (u64::from(e.0) == h >> 32).then_some(e)
    }

    pub(crate) fn get(&self, h: u64) -> Option<&T> {
        self.slot(h)?.1.as_ref()
    }

    pub(crate) fn get_mut(&mut self, h: u64) -> Option<&mut T> {
        let e = self.entries.get_mut((h & 0xffff_ffff) as usize)?;
        if u64::from(e.0) != h >> 32 {
            return None;
        }
        e.1.as_mut()
    }

    pub(crate) fn remove(&mut self, h: u64) -> Option<T> {
        let i = (h & 0xffff_ffff) as u32;
        let e = self.entries.get_mut(i as usize)?;
        if u64::from(e.0) != h >> 32 {
            return None;
        }
        let v = e.1.take()?;
        self.free.push(i);
        self.live -= 1;
        Some(v)
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (u64, &T)> {
        self.entries
            .iter()
            .enumerate()
            .filter_map(|(i, (g, v))| v.as_ref().map(|v| ((u64::from(*g) << 32) | i as u64, v)))
    }

    pub(crate) fn keys(&self) -> Vec<u64> {
        self.iter().map(|(k, _)| k).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slab_handles_are_not_reused_for_new_objects() {
        let mut s = Slab::default();
        let a = s.insert(1);
        assert_eq!(s.remove(a), Some(1));
        let b = s.insert(2);
        assert_ne!(a, b, "same slot, new generation");
        assert_eq!(s.get(a), None);
        assert_eq!(s.get(b), Some(&2));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn mtu_bytes() {
        assert_eq!(Mtu::M256.bytes(), 256);
        assert_eq!(Mtu::M4096.bytes(), 4096);
        assert_eq!(Mtu::from_raw(3), Some(Mtu::M1024));
    }

    #[test]
    fn mr_sge_checks_range() {
        let mr = Mr {
            handle: MrHandle(0),
            lkey: 7,
            rkey: 8,
            addr: 0x1000,
            len: 100,
        };
        assert_eq!(
            mr.sge(10, 20),
            Some(Sge {
                addr: 0x100a,
                length: 20,
                lkey: 7
            })
        );
        assert_eq!(mr.sge(90, 11), None);
        assert_eq!(mr.sge(usize::MAX, 2), None);
    }
}
