//! A simulated HCA with the objects most device-level tests need, and helpers that bring QPs
//! up the way the man pages prescribe.
use transports::rdma::sim::{SimDevice, SimDeviceConfig, SimVerbs};
use transports::rdma::verbs::*;

pub const QKEY: u32 = 0x0205;

/// One simulated HCA with a PD, one CQ for everything and a registered 64 KiB buffer.
pub struct Node {
    pub dev: SimDevice,
    pub pd: Pd,
    pub cq: Cq,
    pub buf: DmaBuf,
    pub mr: Mr,
    pub lid: u16,
}

impl Node {
    pub fn new(fabric: &SimVerbs) -> Self {
        Self::with_cq(fabric, 1024)
    }

    pub fn with_cq(fabric: &SimVerbs, cqe: u32) -> Self {
        let mut dev = fabric.open_device(SimDeviceConfig::default());
        let pd = dev.alloc_pd().unwrap();
        let (cq, _) = dev.create_cq(cqe).unwrap();
        let buf = DmaBuf::new(64 * 1024).unwrap();
        let mr = dev
            .reg_mr(
                pd,
                &buf,
                Access::LOCAL_WRITE | Access::REMOTE_WRITE | Access::REMOTE_READ,
            )
            .unwrap();
        let lid = dev.query_port(1).unwrap().lid;
        Self {
            dev,
            pd,
            cq,
            buf,
            mr,
            lid,
        }
    }

    pub fn qp(&mut self, t: QpType, send_wr: u32, recv_wr: u32, inline: u32) -> QpInfo {
        self.dev
            .create_qp(
                self.pd,
                &QpInit {
                    qp_type: t,
                    send_cq: self.cq,
                    recv_cq: self.cq,
                    srq: None,
                    caps: QpCaps {
                        max_send_wr: send_wr,
                        max_recv_wr: recv_wr,
                        max_send_sge: 2,
                        max_recv_sge: 2,
                        max_inline_data: inline,
                    },
                    sq_sig_all: false,
                },
            )
            .unwrap()
    }

    pub fn ud_qp(&mut self) -> QpInfo {
        let q = self.qp(QpType::Ud, 16, 16, 64);
        ud_up(&mut self.dev, q.qp).unwrap();
        q
    }

    pub fn ah_to(&mut self, lid: u16) -> Ah {
        self.dev
            .create_ah(
                self.pd,
                &AhAttr {
                    dlid: lid,
                    port_num: 1,
                    ..AhAttr::default()
                },
            )
            .unwrap()
    }

    pub fn sge(&self, off: usize, len: usize) -> SgList {
        SgList::one(self.mr.sge(off, len).unwrap())
    }

    pub fn recv(&mut self, qp: Qp, wr_id: u64, off: usize, len: usize) {
        let wr = RecvWr {
            wr_id,
            sg: self.sge(off, len),
        };
        self.dev.post_recv(qp, &[wr]).unwrap();
    }

    pub fn poll(&mut self) -> Vec<Wc> {
        let mut out = [Wc::default(); 64];
        let n = self.dev.poll_cq(self.cq, &mut out).unwrap();
        out[..n].to_vec()
    }

    pub fn write(&mut self, off: usize, data: &[u8]) {
        self.buf
            .slice_mut(off, data.len())
            .unwrap()
            .copy_from_slice(data);
    }

    pub fn read(&self, off: usize, len: usize) -> Vec<u8> {
        self.buf.slice(off, len).unwrap().to_vec()
    }
}

pub fn ud_up(dev: &mut SimDevice, qp: Qp) -> Result<(), VerbsError> {
    let a = QpAttr {
        state: QpState::Init,
        port_num: 1,
        qkey: QKEY,
        ..QpAttr::default()
    };
    dev.modify_qp(qp, &a, AttrMask::UD_INIT)?;
    dev.modify_qp(
        qp,
        &QpAttr {
            state: QpState::Rtr,
            ..a
        },
        AttrMask::STATE,
    )?;
    dev.modify_qp(
        qp,
        &QpAttr {
            state: QpState::Rts,
            sq_psn: 0,
            ..a
        },
        AttrMask::UD_RTS,
    )
}

pub struct RcParams {
    pub rnr_retry: u8,
    pub min_rnr_timer: u8,
    pub retry_cnt: u8,
    pub timeout: u8,
    pub access: Access,
}

impl Default for RcParams {
    fn default() -> Self {
        Self {
            rnr_retry: 3,
            min_rnr_timer: 1,
            retry_cnt: 3,
            timeout: 8,
            access: Access::REMOTE_READ | Access::REMOTE_WRITE,
        }
    }
}

pub fn rc_init(dev: &mut SimDevice, qp: Qp, access: Access) {
    dev.modify_qp(
        qp,
        &QpAttr {
            state: QpState::Init,
            port_num: 1,
            access,
            ..QpAttr::default()
        },
        AttrMask::RC_INIT,
    )
    .unwrap();
}

/// Moves an INIT RC QP to RTS towards (`dlid`, `dest_qpn`), receiving from `rq_psn` and
/// sending from `sq_psn`.
pub fn rc_connect(
    dev: &mut SimDevice,
    qp: Qp,
    dlid: u16,
    dest_qpn: u32,
    rq_psn: u32,
    sq_psn: u32,
    p: &RcParams,
) {
    let a = QpAttr {
        state: QpState::Rtr,
        path_mtu: Mtu::M4096,
        dest_qp_num: dest_qpn,
        rq_psn,
        sq_psn,
        ah: AhAttr {
            dlid,
            port_num: 1,
            ..AhAttr::default()
        },
        max_dest_rd_atomic: 1,
        max_rd_atomic: 1,
        min_rnr_timer: p.min_rnr_timer,
        timeout: p.timeout,
        retry_cnt: p.retry_cnt,
        rnr_retry: p.rnr_retry,
        ..QpAttr::default()
    };
    dev.modify_qp(qp, &a, AttrMask::RC_RTR).unwrap();
    dev.modify_qp(
        qp,
        &QpAttr {
            state: QpState::Rts,
            ..a
        },
        AttrMask::RC_RTS,
    )
    .unwrap();
}

/// Two nodes with one connected RC QP each.
pub fn rc_pair(f: &SimVerbs, p: &RcParams) -> (Node, QpInfo, Node, QpInfo) {
    let mut a = Node::new(f);
    let mut b = Node::new(f);
    let qa = a.qp(QpType::Rc, 16, 16, 64);
    let qb = b.qp(QpType::Rc, 16, 16, 64);
    rc_init(&mut a.dev, qa.qp, p.access);
    rc_init(&mut b.dev, qb.qp, p.access);
    rc_connect(&mut a.dev, qa.qp, b.lid, qb.qp_num, 500, 100, p);
    rc_connect(&mut b.dev, qb.qp, a.lid, qa.qp_num, 100, 500, p);
    (a, qa, b, qb)
}

pub fn send_wr(wr_id: u64, payload: Payload<'_>, ud: Option<UdDest>, signaled: bool) -> SendWr<'_> {
    SendWr {
        wr_id,
        op: SendOp::Send,
        signaled,
        payload,
        ud,
    }
}

/// Runs the fabric until nothing is pending (or `limit` steps).
pub fn settle(f: &SimVerbs) {
    for _ in 0..100_000 {
        if !f.step() {
            return;
        }
    }
    panic!("the fabric did not settle");
}
