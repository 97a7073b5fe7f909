//! The queue pair state machine of `ibv_modify_qp(3)`: which transitions exist, which
//! attributes each one requires and which it allows, per QP type (the IB specification's table,
//! as the kernel's `ib_modify_qp_is_ok` encodes it), and the range checks on attribute values.
use crate::rdma::verbs::{AttrMask, LinkLayer, Mtu, QpAttr, QpState, QpType, EINVAL, EOPNOTSUPP};

const M_STATE: u32 = AttrMask::STATE.0;
const M_CUR_STATE: u32 = AttrMask::CUR_STATE.0;
const M_ACCESS: u32 = AttrMask::ACCESS_FLAGS.0;
const M_PKEY: u32 = AttrMask::PKEY_INDEX.0;
const M_PORT: u32 = AttrMask::PORT.0;
const M_QKEY: u32 = AttrMask::QKEY.0;
const M_AV: u32 = AttrMask::AV.0;
const M_PATH_MTU: u32 = AttrMask::PATH_MTU.0;
const M_TIMEOUT: u32 = AttrMask::TIMEOUT.0;
const M_RETRY: u32 = AttrMask::RETRY_CNT.0;
const M_RNR_RETRY: u32 = AttrMask::RNR_RETRY.0;
const M_RQ_PSN: u32 = AttrMask::RQ_PSN.0;
const M_MAX_RD: u32 = AttrMask::MAX_QP_RD_ATOMIC.0;
const M_ALT: u32 = AttrMask::ALT_PATH.0;
const M_MIN_RNR: u32 = AttrMask::MIN_RNR_TIMER.0;
const M_SQ_PSN: u32 = AttrMask::SQ_PSN.0;
const M_MAX_DEST_RD: u32 = AttrMask::MAX_DEST_RD_ATOMIC.0;
const M_MIG: u32 = AttrMask::PATH_MIG_STATE.0;
const M_DEST_QPN: u32 = AttrMask::DEST_QPN.0;

/// (required, optional) attributes of the transition `from -> to` for `t`, or `None` if the
/// transition does not exist. `STATE` itself is not listed.
pub(crate) fn transition(t: QpType, from: QpState, to: QpState) -> Option<(u32, u32)> {
    use QpState::*;
    use QpType::*;
    Some(match (t, from, to) {
        (_, _, Reset) | (_, _, Err) => (0, 0),
        (Ud, Reset, Init) => (M_PKEY | M_PORT | M_QKEY, 0),
        (Rc, Reset, Init) => (M_PKEY | M_PORT | M_ACCESS, 0),
        (Ud, Init, Init) => (0, M_PKEY | M_PORT | M_QKEY),
        (Rc, Init, Init) => (0, M_PKEY | M_PORT | M_ACCESS),
        (Ud, Init, Rtr) => (0, M_PKEY | M_QKEY),
        (Rc, Init, Rtr) => (
            M_AV | M_PATH_MTU | M_DEST_QPN | M_RQ_PSN | M_MAX_DEST_RD | M_MIN_RNR,
            M_ALT | M_ACCESS | M_PKEY,
        ),
        (Ud, Rtr, Rts) => (M_SQ_PSN, M_CUR_STATE | M_QKEY),
        (Rc, Rtr, Rts) => (
            M_SQ_PSN | M_TIMEOUT | M_RETRY | M_RNR_RETRY | M_MAX_RD,
            M_CUR_STATE | M_ALT | M_ACCESS | M_MIN_RNR | M_MIG,
        ),
        (Ud, Rts, Rts) => (0, M_CUR_STATE | M_QKEY),
        (Rc, Rts, Rts) => (0, M_CUR_STATE | M_ACCESS | M_ALT | M_MIG | M_MIN_RNR),
        _ => return None,
    })
}

/// What the checks need to know about the port.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PortLimits {
    pub(crate) ports: u8,
    pub(crate) max_mtu: Mtu,
    pub(crate) link_layer: LinkLayer,
    pub(crate) gid_tbl_len: u32,
    pub(crate) max_rd_atom: u8,
}

/// Validates a `modify_qp` call on a QP of type `t` in state `cur`; returns the next state or
/// the errno value (`EINVAL`, or `EOPNOTSUPP` for the SQD/SQE states this device does not
/// model).
pub(crate) fn check_modify(
    t: QpType,
    cur: QpState,
    attr: &QpAttr,
    mask: AttrMask,
    port: &PortLimits,
) -> Result<QpState, i32> {
    let known = (1u32 << 21) - 1;
    if mask.0 & !known != 0 {
        return Err(EINVAL);
    }
    if mask.contains(AttrMask::CUR_STATE) && attr.cur_state != cur {
        return Err(EINVAL);
    }
    let next = if mask.contains(AttrMask::STATE) {
        attr.state
    } else {
        cur
    };
    if matches!(next, QpState::Sqd | QpState::Sqe) || matches!(cur, QpState::Sqd | QpState::Sqe) {
        return Err(EOPNOTSUPP);
    }
    let (req, opt) = transition(t, cur, next).ok_or(EINVAL)?;
    let given = mask.0 & !M_STATE;
    if given & req != req || given & !(req | opt) != 0 {
        return Err(EINVAL);
    }
    // Range checks on what is being set.
    if given & M_PORT != 0 && (attr.port_num == 0 || attr.port_num > port.ports) {
        return Err(EINVAL);
    }
    if given & M_PKEY != 0 && attr.pkey_index != 0 {
        return Err(EINVAL); // one-entry P_Key table
    }
    if given & M_PATH_MTU != 0 && attr.path_mtu > port.max_mtu {
        return Err(EINVAL);
    }
    if given & M_TIMEOUT != 0 && attr.timeout > 31 {
        return Err(EINVAL);
    }
    if given & M_RETRY != 0 && attr.retry_cnt > 7 {
        return Err(EINVAL);
    }
    if given & M_RNR_RETRY != 0 && attr.rnr_retry > 7 {
        return Err(EINVAL);
    }
    if given & M_MIN_RNR != 0 && attr.min_rnr_timer > 31 {
        return Err(EINVAL);
    }
    if given & M_MAX_RD != 0 && attr.max_rd_atomic > port.max_rd_atom {
        return Err(EINVAL);
    }
    if given & M_MAX_DEST_RD != 0 && attr.max_dest_rd_atomic > port.max_rd_atom {
        return Err(EINVAL);
    }
    if given & M_DEST_QPN != 0 && attr.dest_qp_num > 0x00ff_ffff {
        return Err(EINVAL);
    }
    if given & (M_RQ_PSN | M_SQ_PSN) != 0 && (attr.rq_psn | attr.sq_psn) > 0x00ff_ffff {
        return Err(EINVAL);
    }
    if given & M_AV != 0 {
        check_av(&attr.ah, port)?;
    }
    Ok(next)
}

/// Checks an address vector (for `create_ah` and the RC path): port in range; on Ethernet a
/// GRH is mandatory; the source GID index exists.
pub(crate) fn check_av(av: &crate::rdma::verbs::AhAttr, port: &PortLimits) -> Result<(), i32> {
    if av.port_num == 0 || av.port_num > port.ports {
        return Err(EINVAL);
    }
    match &av.grh {
        None if port.link_layer == LinkLayer::Ethernet => Err(EINVAL),
        Some(g) if u32::from(g.sgid_index) >= port.gid_tbl_len => Err(EINVAL),
        _ => Ok(()),
    }
}

/// The local ACK timeout of an RC QP: 4.096 µs × 2^`code`; `None` (infinite) for 0.
pub(crate) fn ack_timeout_ns(code: u8) -> Option<u64> {
    (code != 0).then(|| 4096u64 << code.min(31))
}

/// The RNR NAK delay that `min_rnr_timer` code `code` advertises (IB spec table 45).
pub(crate) fn rnr_delay_ns(code: u8) -> u64 {
    const US: [u64; 32] = [
        655_360, 10, 20, 30, 40, 60, 80, 120, 160, 240, 320, 480, 640, 960, 1_280, 1_920, 2_560,
        3_840, 5_120, 7_680, 10_240, 15_360, 20_480, 30_720, 40_960, 61_440, 81_920, 122_880,
        163_840, 245_760, 327_680, 491_520,
    ];
    US.get(usize::from(code)).copied().unwrap_or(491_520) * 1_000
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rdma::verbs::{AhAttr, GlobalRoute};

    fn port() -> PortLimits {
        PortLimits {
            ports: 1,
            max_mtu: Mtu::M4096,
            link_layer: LinkLayer::Infiniband,
            gid_tbl_len: 2,
            max_rd_atom: 16,
        }
    }

    fn attr(state: QpState) -> QpAttr {
        QpAttr {
            state,
            port_num: 1,
            path_mtu: Mtu::M4096,
            ah: AhAttr {
                dlid: 1,
                port_num: 1,
                ..AhAttr::default()
            },
            ..QpAttr::default()
        }
    }

    #[test]
    fn ud_bring_up_needs_exactly_the_documented_masks() {
        let p = port();
        let init = AttrMask::UD_INIT;
        let a = attr(QpState::Init);
        assert_eq!(
            check_modify(QpType::Ud, QpState::Reset, &a, init, &p),
            Ok(QpState::Init)
        );
        // Missing QKEY.
        let short = AttrMask::STATE | AttrMask::PKEY_INDEX | AttrMask::PORT;
        assert_eq!(
            check_modify(QpType::Ud, QpState::Reset, &a, short, &p),
            Err(EINVAL)
        );
        // An attribute the transition does not allow.
        let extra = init | AttrMask::SQ_PSN;
        assert_eq!(
            check_modify(QpType::Ud, QpState::Reset, &a, extra, &p),
            Err(EINVAL)
        );
        let a = attr(QpState::Rtr);
        assert_eq!(
            check_modify(QpType::Ud, QpState::Init, &a, AttrMask::STATE, &p),
            Ok(QpState::Rtr)
        );
        let a = attr(QpState::Rts);
        assert_eq!(
            check_modify(QpType::Ud, QpState::Rtr, &a, AttrMask::STATE, &p),
            Err(EINVAL),
            "RTS needs SQ_PSN"
        );
        assert_eq!(
            check_modify(QpType::Ud, QpState::Rtr, &a, AttrMask::UD_RTS, &p),
            Ok(QpState::Rts)
        );
    }

    #[test]
    fn rc_rtr_and_rts_masks() {
        let p = port();
        let rtr = AttrMask::RC_RTR;
        let a = attr(QpState::Rtr);
        assert_eq!(
            check_modify(QpType::Rc, QpState::Init, &a, rtr, &p),
            Ok(QpState::Rtr)
        );
        for missing in [
            AttrMask::AV,
            AttrMask::PATH_MTU,
            AttrMask::DEST_QPN,
            AttrMask::RQ_PSN,
            AttrMask::MAX_DEST_RD_ATOMIC,
            AttrMask::MIN_RNR_TIMER,
        ] {
            let m = AttrMask(rtr.0 & !missing.0);
            assert_eq!(
                check_modify(QpType::Rc, QpState::Init, &a, m, &p),
                Err(EINVAL),
                "{missing:?}"
            );
        }
        let rts = AttrMask::RC_RTS;
        let a = attr(QpState::Rts);
        assert_eq!(
            check_modify(QpType::Rc, QpState::Rtr, &a, rts, &p),
            Ok(QpState::Rts)
        );
        let m = AttrMask(rts.0 & !AttrMask::RNR_RETRY.0);
        assert_eq!(
            check_modify(QpType::Rc, QpState::Rtr, &a, m, &p),
            Err(EINVAL)
        );
    }

    #[test]
    fn skipping_states_and_bad_values_are_einval() {
        let p = port();
        let a = attr(QpState::Rts);
        let all = AttrMask((1 << 21) - 1);
        assert_eq!(
            check_modify(QpType::Ud, QpState::Reset, &a, all, &p),
            Err(EINVAL)
        );
        assert_eq!(
            check_modify(
                QpType::Ud,
                QpState::Init,
                &attr(QpState::Rts),
                AttrMask::STATE,
                &p
            ),
            Err(EINVAL),
            "INIT -> RTS skips RTR"
        );
        // Any state -> ERROR and -> RESET need nothing else.
        for s in [
            QpState::Reset,
            QpState::Init,
            QpState::Rtr,
            QpState::Rts,
            QpState::Err,
        ] {
            assert_eq!(
                check_modify(QpType::Rc, s, &attr(QpState::Err), AttrMask::STATE, &p),
                Ok(QpState::Err)
            );
            assert_eq!(
                check_modify(QpType::Rc, s, &attr(QpState::Reset), AttrMask::STATE, &p),
                Ok(QpState::Reset)
            );
        }
        let mut bad_port = attr(QpState::Init);
        bad_port.port_num = 2;
        let init = AttrMask::UD_INIT;
        assert_eq!(
            check_modify(QpType::Ud, QpState::Reset, &bad_port, init, &p),
            Err(EINVAL)
        );
        let mut big_mtu = attr(QpState::Rtr);
        big_mtu.path_mtu = Mtu::M4096;
        let small = PortLimits {
            max_mtu: Mtu::M1024,
            ..p
        };
        let rtr = AttrMask::RC_RTR;
        assert_eq!(
            check_modify(QpType::Rc, QpState::Init, &big_mtu, rtr, &small),
            Err(EINVAL)
        );
        let mut wrong_cur = attr(QpState::Err);
        wrong_cur.cur_state = QpState::Rts;
        assert_eq!(
            check_modify(
                QpType::Rc,
                QpState::Init,
                &wrong_cur,
                AttrMask::STATE | AttrMask::CUR_STATE,
                &p
            ),
            Err(EINVAL)
        );
        assert_eq!(
            check_modify(
                QpType::Rc,
                QpState::Rts,
                &attr(QpState::Sqd),
                AttrMask::STATE,
                &p
            ),
            Err(EOPNOTSUPP)
        );
    }

    #[test]
    fn roce_needs_a_grh() {
        let p = PortLimits {
            link_layer: LinkLayer::Ethernet,
            ..port()
        };
        let mut av = AhAttr {
            port_num: 1,
            ..AhAttr::default()
        };
        assert_eq!(check_av(&av, &p), Err(EINVAL));
        av.grh = Some(GlobalRoute {
            sgid_index: 1,
            hop_limit: 64,
            ..GlobalRoute::default()
        });
        assert_eq!(check_av(&av, &p), Ok(()));
        av.grh = Some(GlobalRoute {
            sgid_index: 2,
            ..GlobalRoute::default()
        });
        assert_eq!(check_av(&av, &p), Err(EINVAL));
    }

    #[test]
    fn timers() {
        assert_eq!(ack_timeout_ns(0), None);
        assert_eq!(ack_timeout_ns(14), Some(4096 << 14)); // ~67 ms
        assert_eq!(rnr_delay_ns(12), 640_000);
        assert_eq!(rnr_delay_ns(0), 655_360_000);
        assert_eq!(rnr_delay_ns(1), 10_000);
    }
}
