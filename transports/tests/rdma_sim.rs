//! The simulated verbs device's rules, exercised through the `VerbsDevice` trait the way a
//! transport would use a NIC: every test states a behaviour of real verbs (man pages, IB spec)
//! and checks that `SimVerbs` shows it. The mistakes a transport can make (and how real verbs
//! punish them) are in `rdma_misuse.rs`.
#![cfg(feature = "rdma")]

mod support;

use support::node::*;
use transports::rdma::sim::{LinkFaults, SimVerbs};
use transports::rdma::verbs::*;

#[test]
fn ud_receive_has_the_grh_area_and_byte_len_counts_it() {
    let f = SimVerbs::new(1);
    let mut a = Node::new(&f);
    let mut b = Node::new(&f);
    let qa = a.ud_qp();
    let qb = b.ud_qp();
    b.write(0, &[0xAA; 40]); // the GRH area of a non-global receive is left as it was
    b.recv(qb.qp, 7, 0, 40 + 100);
    a.write(1000, b"hello verbs");
    let ah = a.ah_to(b.lid);
    let dest = UdDest {
        ah,
        remote_qpn: qb.qp_num,
        remote_qkey: QKEY,
    };
    let mut wr = send_wr(1, Payload::Sg(a.sge(1000, 11)), Some(dest), true);
    wr.op = SendOp::SendWithImm(0xfeed);
    a.dev.post_send(qa.qp, &[wr]).unwrap();
    settle(&f);
    let wcs = b.poll();
    assert_eq!(wcs.len(), 1);
    let wc = wcs[0];
    assert_eq!(wc.status, WcStatus::Success);
    assert_eq!(wc.opcode, WcOpcode::Recv);
    assert_eq!(wc.wr_id, 7);
    assert_eq!(wc.byte_len, 40 + 11, "byte_len includes the 40-byte GRH");
    assert_eq!(wc.src_qp, qa.qp_num);
    assert_eq!(wc.slid, a.lid);
    assert_eq!(wc.imm, Some(0xfeed));
    assert!(!wc.grh, "no GRH on a non-global IB address handle");
    assert_eq!(b.read(0, 40), vec![0xAA; 40]);
    assert_eq!(b.read(40, 11), b"hello verbs");
    let sent = a.poll();
    assert_eq!(sent.len(), 1);
    assert_eq!((sent[0].wr_id, sent[0].status), (1, WcStatus::Success));
}

#[test]
fn ud_global_route_writes_a_grh() {
    let f = SimVerbs::new(1);
    let mut a = Node::new(&f);
    let mut b = Node::new(&f);
    let qa = a.ud_qp();
    let qb = b.ud_qp();
    let dgid = b.dev.query_gid(1, 0).unwrap();
    let sgid = a.dev.query_gid(1, 0).unwrap();
    let ah = a
        .dev
        .create_ah(
            a.pd,
            &AhAttr {
                dlid: b.lid,
                port_num: 1,
                grh: Some(GlobalRoute {
                    dgid,
                    sgid_index: 0,
                    hop_limit: 64,
                    ..GlobalRoute::default()
                }),
                ..AhAttr::default()
            },
        )
        .unwrap();
    b.recv(qb.qp, 1, 0, 4096);
    let dest = UdDest {
        ah,
        remote_qpn: qb.qp_num,
        remote_qkey: QKEY,
    };
    a.dev
        .post_send(
            qa.qp,
            &[send_wr(1, Payload::Inline(b"x", b"yz"), Some(dest), false)],
        )
        .unwrap();
    settle(&f);
    let wc = b.poll()[0];
    assert!(wc.grh);
    let grh = b.read(0, 40);
    assert_eq!(grh[0] >> 4, 6, "IPv6 version nibble");
    assert_eq!(&grh[8..24], &sgid);
    assert_eq!(&grh[24..40], &dgid);
    assert_eq!(b.read(40, 3), b"xyz");
}

#[test]
fn ud_silent_drops_no_recv_wrong_qkey_unknown_qpn_over_mtu() {
    let f = SimVerbs::new(1);
    let mut a = Node::new(&f);
    let mut b = Node::new(&f);
    let qa = a.ud_qp();
    let qb = b.ud_qp();
    let ah = a.ah_to(b.lid);
    let dest = |qpn, qkey| UdDest {
        ah,
        remote_qpn: qpn,
        remote_qkey: qkey,
    };
    // No receive posted.
    a.dev
        .post_send(
            qa.qp,
            &[send_wr(
                1,
                Payload::Inline(b"a", b""),
                Some(dest(qb.qp_num, QKEY)),
                true,
            )],
        )
        .unwrap();
    settle(&f);
    assert_eq!(f.stats().ud_dropped_no_recv, 1);
    // Wrong qkey, unknown QPN (0 is eRPC's flush trick), too large for the 4096 MTU.
    for _ in 0..3 {
        b.recv(qb.qp, 9, 0, 8192);
    }
    a.dev
        .post_send(
            qa.qp,
            &[
                send_wr(
                    2,
                    Payload::Inline(b"b", b""),
                    Some(dest(qb.qp_num, 0x1111)),
                    false,
                ),
                send_wr(3, Payload::Inline(b"c", b""), Some(dest(0, QKEY)), false),
                send_wr(
                    4,
                    Payload::Sg(a.sge(0, 4097)),
                    Some(dest(qb.qp_num, QKEY)),
                    true,
                ),
            ],
        )
        .unwrap();
    settle(&f);
    let s = f.stats();
    assert_eq!(s.ud_dropped_bad_qkey, 1);
    assert_eq!(s.ud_dropped_unknown_dest, 1);
    assert_eq!(s.ud_dropped_over_mtu, 1);
    assert_eq!(s.ud_delivered, 0);
    assert!(
        b.poll().is_empty(),
        "drops are silent: no receive completion"
    );
    // The sends themselves all completed successfully (UD promises nothing).
    let sent = a.poll();
    assert_eq!(sent.iter().map(|w| w.wr_id).collect::<Vec<_>>(), vec![1, 4]);
    assert!(sent.iter().all(|w| w.status == WcStatus::Success));
    // A payload of exactly the MTU does arrive.
    a.dev
        .post_send(
            qa.qp,
            &[send_wr(
                5,
                Payload::Sg(a.sge(0, 4096)),
                Some(dest(qb.qp_num, QKEY)),
                false,
            )],
        )
        .unwrap();
    settle(&f);
    assert_eq!(b.poll()[0].byte_len, 40 + 4096);
}

#[test]
fn receives_are_fifo_one_message_each() {
    let f = SimVerbs::new(1);
    let mut a = Node::new(&f);
    let mut b = Node::new(&f);
    let qa = a.ud_qp();
    let qb = b.ud_qp();
    for i in 0..4u64 {
        b.recv(qb.qp, 100 + i, (i as usize) * 256, 256);
    }
    let ah = a.ah_to(b.lid);
    let dest = Some(UdDest {
        ah,
        remote_qpn: qb.qp_num,
        remote_qkey: QKEY,
    });
    let msgs: Vec<Vec<u8>> = (0..4u8).map(|i| vec![i; 10 + usize::from(i)]).collect();
    let wrs: Vec<SendWr> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| send_wr(i as u64, Payload::Inline(m, b""), dest, false))
        .collect();
    a.dev.post_send(qa.qp, &wrs).unwrap();
    settle(&f);
    let wcs = b.poll();
    assert_eq!(
        wcs.iter().map(|w| w.wr_id).collect::<Vec<_>>(),
        vec![100, 101, 102, 103]
    );
    for (i, wc) in wcs.iter().enumerate() {
        assert_eq!(wc.byte_len as usize, 40 + msgs[i].len());
        assert_eq!(b.read(i * 256 + 40, msgs[i].len()), msgs[i]);
    }
}

#[test]
fn too_small_receive_is_loc_len_err_and_errors_the_qp() {
    let f = SimVerbs::new(1);
    let mut a = Node::new(&f);
    let mut b = Node::new(&f);
    let qa = a.ud_qp();
    let qb = b.ud_qp();
    b.recv(qb.qp, 1, 0, 40 + 9); // one byte short
    b.recv(qb.qp, 2, 100, 256);
    let ah = a.ah_to(b.lid);
    let dest = Some(UdDest {
        ah,
        remote_qpn: qb.qp_num,
        remote_qkey: QKEY,
    });
    a.dev
        .post_send(
            qa.qp,
            &[send_wr(1, Payload::Inline(b"0123456789", b""), dest, false)],
        )
        .unwrap();
    settle(&f);
    let wcs = b.poll();
    assert_eq!((wcs[0].wr_id, wcs[0].status), (1, WcStatus::LocLenErr));
    assert_eq!((wcs[1].wr_id, wcs[1].status), (2, WcStatus::WrFlushErr));
    assert_eq!(b.dev.query_qp_state(qb.qp).unwrap(), QpState::Err);
}

#[test]
fn error_state_flushes_everything_outstanding_and_every_later_post() {
    let f = SimVerbs::new(1);
    // An RC QP whose peer is not ready: its sends stay outstanding (no ACK).
    let p = RcParams {
        timeout: 20,
        ..RcParams::default()
    };
    let mut a = Node::new(&f);
    let mut b = Node::new(&f);
    let qa = a.qp(QpType::Rc, 8, 8, 64);
    let qb = b.qp(QpType::Rc, 8, 8, 64);
    rc_init(&mut a.dev, qa.qp, p.access);
    rc_init(&mut b.dev, qb.qp, p.access);
    rc_connect(&mut a.dev, qa.qp, b.lid, qb.qp_num, 1, 2, &p);
    for i in 0..3 {
        a.recv(qa.qp, 100 + i, 0, 128);
    }
    a.dev
        .post_send(
            qa.qp,
            &[
                send_wr(1, Payload::Inline(b"a", b""), None, false),
                send_wr(2, Payload::Inline(b"b", b""), None, false),
            ],
        )
        .unwrap();
    for _ in 0..3 {
        f.step();
    }
    assert!(a.poll().is_empty(), "sent, not acknowledged");
    assert!(f.inject_qp_error(a.dev.id(), qa.qp_num));
    assert_eq!(a.dev.query_qp_state(qa.qp).unwrap(), QpState::Err);
    let ids: Vec<(u64, WcStatus)> = a.poll().iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(
        ids,
        vec![
            (1, WcStatus::WrFlushErr),
            (2, WcStatus::WrFlushErr),
            (100, WcStatus::WrFlushErr),
            (101, WcStatus::WrFlushErr),
            (102, WcStatus::WrFlushErr)
        ],
        "unsignaled requests are reported too when they flush"
    );
    a.dev
        .post_send(
            qa.qp,
            &[send_wr(3, Payload::Inline(b"c", b""), None, false)],
        )
        .unwrap();
    a.recv(qa.qp, 103, 0, 128);
    let ids: Vec<(u64, WcStatus)> = a.poll().iter().map(|w| (w.wr_id, w.status)).collect();
    assert_eq!(
        ids,
        vec![(3, WcStatus::WrFlushErr), (103, WcStatus::WrFlushErr)]
    );
    // RESET empties the queues without completions; the QP can be brought up again.
    a.recv(qa.qp, 104, 0, 128);
    a.dev
        .modify_qp(
            qa.qp,
            &QpAttr {
                state: QpState::Reset,
                ..QpAttr::default()
            },
            AttrMask::STATE,
        )
        .unwrap();
    assert!(a.poll().is_empty());
    rc_init(&mut a.dev, qa.qp, p.access);
    rc_connect(&mut a.dev, qa.qp, b.lid, qb.qp_num, 1, 2, &p);
    assert_eq!(a.dev.query_qp_state(qa.qp).unwrap(), QpState::Rts);
}

#[test]
fn rc_delivers_in_order_exactly_once_with_signaled_acks() {
    let f = SimVerbs::new(1);
    let (mut a, qa, mut b, qb) = rc_pair(&f, &RcParams::default());
    for i in 0..16u64 {
        b.recv(qb.qp, i, (i as usize) * 512, 512);
    }
    let msgs: Vec<Vec<u8>> = (0..16u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
    for (i, m) in msgs.iter().enumerate() {
        a.write(i * 512, m);
    }
    let wrs: Vec<SendWr> = msgs
        .iter()
        .enumerate()
        .map(|(i, m)| {
            send_wr(
                i as u64,
                Payload::Sg(a.sge(i * 512, m.len())),
                None,
                i == 15,
            )
        })
        .collect();
    a.dev.post_send(qa.qp, &wrs).unwrap();
    settle(&f);
    let wcs = b.poll();
    assert_eq!(wcs.len(), 16);
    for (i, wc) in wcs.iter().enumerate() {
        assert_eq!((wc.wr_id, wc.status), (i as u64, WcStatus::Success));
        assert_eq!(wc.byte_len as usize, msgs[i].len(), "RC has no GRH");
        assert_eq!(wc.src_qp, qa.qp_num);
        assert_eq!(b.read(i * 512, msgs[i].len()), msgs[i]);
    }
    let sent = a.poll();
    assert_eq!(sent.len(), 1, "only the signaled one reports");
    assert_eq!(sent[0].wr_id, 15);
}

#[test]
fn rc_rnr_retry_seven_waits_for_a_late_receive_and_keeps_order() {
    let f = SimVerbs::new(1);
    let p = RcParams {
        rnr_retry: 7,
        min_rnr_timer: 1, // 10 us
        ..RcParams::default()
    };
    let (mut a, qa, mut b, qb) = rc_pair(&f, &p);
    a.dev
        .post_send(
            qa.qp,
            &[
                send_wr(1, Payload::Inline(b"first", b""), None, false),
                send_wr(2, Payload::Inline(b"second", b""), None, true),
            ],
        )
        .unwrap();
    // Let it bounce off the empty receive queue a while (virtual time).
    for _ in 0..50 {
        f.step();
    }
    assert!(f.stats().rc_rnr_naks >= 3);
    assert!(a.poll().is_empty());
    b.recv(qb.qp, 10, 0, 64);
    b.recv(qb.qp, 11, 64, 64);
    settle(&f);
    let wcs = b.poll();
    assert_eq!(wcs.len(), 2);
    assert_eq!(b.read(0, 5), b"first");
    assert_eq!(b.read(64, 6), b"second");
    assert_eq!(a.poll()[0].wr_id, 2);
}

#[test]
fn rc_psn_mismatch_fails_or_silently_loses_as_on_hardware() {
    let f = SimVerbs::new(1);
    let p = RcParams::default();
    let setup = |rq_psn_b: u32| {
        let mut a = Node::new(&f);
        let mut b = Node::new(&f);
        let qa = a.qp(QpType::Rc, 16, 16, 64);
        let qb = b.qp(QpType::Rc, 16, 16, 64);
        rc_init(&mut a.dev, qa.qp, p.access);
        rc_init(&mut b.dev, qb.qp, p.access);
        rc_connect(&mut a.dev, qa.qp, b.lid, qb.qp_num, 500, 100, &p);
        rc_connect(&mut b.dev, qb.qp, a.lid, qa.qp_num, rq_psn_b, 500, &p);
        b.recv(qb.qp, 1, 0, 64);
        (a, qa, b)
    };
    // The requester starts ahead of what the responder expects: every request is out of
    // sequence, the NAK names a PSN the requester never sent, retries run out.
    let (mut a, qa, mut b) = setup(50);
    a.dev
        .post_send(qa.qp, &[send_wr(1, Payload::Inline(b"x", b""), None, true)])
        .unwrap();
    settle(&f);
    assert_eq!(a.poll()[0].status, WcStatus::RetryExcErr);
    assert!(b.poll().is_empty(), "nothing was delivered");
    // The requester starts behind: its requests look like duplicates of executed ones, which a
    // responder acknowledges again without delivering them — the send "succeeds" and the data
    // is gone. Why both ends must agree on the PSNs.
    let (mut a, qa, mut b) = setup(7_000);
    a.dev
        .post_send(qa.qp, &[send_wr(1, Payload::Inline(b"x", b""), None, true)])
        .unwrap();
    settle(&f);
    assert_eq!(a.poll()[0].status, WcStatus::Success);
    assert!(
        b.poll().is_empty(),
        "acknowledged as a duplicate, never delivered"
    );
}

#[test]
fn rc_to_a_qp_not_yet_rtr_is_retried_until_it_is() {
    let f = SimVerbs::new(1);
    let p = RcParams {
        retry_cnt: 7,
        timeout: 10, // ~4 ms
        ..RcParams::default()
    };
    let mut a = Node::new(&f);
    let mut b = Node::new(&f);
    let qa = a.qp(QpType::Rc, 16, 16, 64);
    let qb = b.qp(QpType::Rc, 16, 16, 64);
    rc_init(&mut a.dev, qa.qp, p.access);
    rc_init(&mut b.dev, qb.qp, p.access);
    b.recv(qb.qp, 1, 0, 64); // receives may be posted in INIT
    rc_connect(&mut a.dev, qa.qp, b.lid, qb.qp_num, 500, 100, &p);
    a.dev
        .post_send(
            qa.qp,
            &[send_wr(1, Payload::Inline(b"early", b""), None, true)],
        )
        .unwrap();
    for _ in 0..5 {
        f.step();
    }
    assert!(f.stats().rc_silent_drops >= 1);
    rc_connect(&mut b.dev, qb.qp, a.lid, qa.qp_num, 100, 500, &p);
    settle(&f);
    assert_eq!(b.poll()[0].byte_len, 5);
    assert_eq!(a.poll()[0].status, WcStatus::Success);
    assert!(f.stats().rc_timeouts >= 1);
}

#[test]
fn rc_rdma_write_and_read_check_rkey_range_and_access() {
    let f = SimVerbs::new(1);
    let (mut a, qa, mut b, _qb) = rc_pair(&f, &RcParams::default());
    b.write(5000, b"remote bytes");
    a.write(0, b"written by a");
    let rkey = b.mr.rkey;
    let base = b.mr.addr;
    let wr = SendWr {
        wr_id: 1,
        op: SendOp::RdmaWrite {
            remote_addr: base + 100,
            rkey,
        },
        signaled: true,
        payload: Payload::Sg(a.sge(0, 12)),
        ud: None,
    };
    let rd = SendWr {
        wr_id: 2,
        op: SendOp::RdmaRead {
            remote_addr: base + 5000,
            rkey,
        },
        signaled: true,
        payload: Payload::Sg(a.sge(300, 12)),
        ud: None,
    };
    a.dev.post_send(qa.qp, &[wr, rd]).unwrap();
    settle(&f);
    let wcs = a.poll();
    assert_eq!(
        wcs.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
        vec![(1, WcStatus::Success), (2, WcStatus::Success)]
    );
    assert_eq!(wcs[1].opcode, WcOpcode::RdmaRead);
    assert_eq!(b.read(100, 12), b"written by a");
    assert_eq!(a.read(300, 12), b"remote bytes");
    assert!(b.poll().is_empty(), "a plain WRITE consumes no receive");
    // Out of range: REM_ACCESS_ERR, and the requester's QP is in ERROR.
    let bad = SendWr {
        wr_id: 3,
        op: SendOp::RdmaRead {
            remote_addr: base + 64 * 1024 - 4,
            rkey,
        },
        ..rd
    };
    a.dev.post_send(qa.qp, &[bad]).unwrap();
    settle(&f);
    assert_eq!(a.poll()[0].status, WcStatus::RemAccessErr);
    assert_eq!(a.dev.query_qp_state(qa.qp).unwrap(), QpState::Err);
}

#[test]
fn rc_rdma_needs_the_qp_to_grant_remote_access_and_a_valid_rkey() {
    let f = SimVerbs::new(1);
    let p = RcParams {
        access: Access::NONE,
        ..RcParams::default()
    };
    let (mut a, qa, b, _qb) = rc_pair(&f, &p);
    let wr = SendWr {
        wr_id: 1,
        op: SendOp::RdmaWrite {
            remote_addr: b.mr.addr,
            rkey: b.mr.rkey,
        },
        signaled: true,
        payload: Payload::Sg(a.sge(0, 8)),
        ud: None,
    };
    a.dev.post_send(qa.qp, &[wr]).unwrap();
    settle(&f);
    assert_eq!(a.poll()[0].status, WcStatus::RemAccessErr);

    let (mut a, qa, b, _qb) = rc_pair(&f, &RcParams::default());
    let wr = SendWr {
        op: SendOp::RdmaWrite {
            remote_addr: b.mr.addr,
            rkey: b.mr.rkey ^ 1,
        },
        payload: Payload::Sg(a.sge(0, 8)),
        ..wr
    };
    a.dev.post_send(qa.qp, &[wr]).unwrap();
    settle(&f);
    assert_eq!(a.poll()[0].status, WcStatus::RemAccessErr, "wrong rkey");
}

#[test]
fn rc_message_longer_than_the_receive_fails_both_ends() {
    let f = SimVerbs::new(1);
    let (mut a, qa, mut b, qb) = rc_pair(&f, &RcParams::default());
    b.recv(qb.qp, 1, 0, 4);
    a.dev
        .post_send(
            qa.qp,
            &[send_wr(1, Payload::Inline(b"too long", b""), None, true)],
        )
        .unwrap();
    settle(&f);
    assert_eq!(b.poll()[0].status, WcStatus::LocLenErr);
    assert_eq!(a.poll()[0].status, WcStatus::RemInvReqErr);
    assert_eq!(a.dev.query_qp_state(qa.qp).unwrap(), QpState::Err);
    assert_eq!(b.dev.query_qp_state(qb.qp).unwrap(), QpState::Err);
}

#[test]
fn rc_recovers_injected_loss_in_order_and_exactly_once() {
    for seed in testkit::seeds(&[3, 17, 99]) {
        println!("seed {seed}");
        let f = SimVerbs::new(seed);
        f.set_default_faults(LinkFaults {
            drop: 0.2,
            jitter_ns: 500,
            ..LinkFaults::default()
        });
        let p = RcParams {
            retry_cnt: 7,
            timeout: 5,
            ..RcParams::default()
        };
        let (mut a, qa, mut b, qb) = rc_pair(&f, &p);
        let n = 200usize;
        let mut got = Vec::new();
        let mut sent = 0usize;
        let mut acked = 0usize;
        let mut posted_recv = 0usize;
        for _ in 0..200_000 {
            while posted_recv < got.len() + 16 {
                b.recv(qb.qp, posted_recv as u64, (posted_recv % 16) * 64, 64);
                posted_recv += 1;
            }
            if sent < n && sent - acked < 8 {
                let v = (sent as u32).to_le_bytes();
                a.dev
                    .post_send(
                        qa.qp,
                        &[send_wr(sent as u64, Payload::Inline(&v, b""), None, true)],
                    )
                    .unwrap();
                sent += 1;
            }
            for wc in a.poll() {
                assert_eq!(wc.status, WcStatus::Success, "seed {seed}");
                assert_eq!(wc.wr_id as usize, acked, "completions in order");
                acked += 1;
            }
            for wc in b.poll() {
                assert_eq!(wc.status, WcStatus::Success);
                let slot = (wc.wr_id as usize % 16) * 64;
                let v = u32::from_le_bytes(b.read(slot, 4).try_into().unwrap());
                got.push(v);
            }
            if acked == n && got.len() == n {
                break;
            }
            if !f.step() {
                continue;
            }
        }
        assert_eq!(got, (0..n as u32).collect::<Vec<_>>(), "seed {seed}");
        let s = f.stats();
        assert!(s.rc_lost_injected > 10, "{s:?}");
        assert!(s.rc_retransmits > 0, "{s:?}");
        assert!(
            s.rc_duplicates > 0,
            "lost ACKs made the responder see duplicates: {s:?}"
        );
    }
}

#[test]
fn ud_faults_are_seeded_drop_duplicate_reorder() {
    let run = |seed: u64| {
        let f = SimVerbs::new(seed);
        f.set_default_faults(LinkFaults {
            drop: 0.2,
            duplicate: 0.1,
            delay_ns: 100,
            jitter_ns: 2_000,
            error: 0.0,
        });
        let mut a = Node::new(&f);
        let mut b = Node::new(&f);
        let qa = a.ud_qp();
        let qb = b.qp(QpType::Ud, 16, 512, 64);
        ud_up(&mut b.dev, qb.qp).unwrap();
        for i in 0..300 {
            b.recv(qb.qp, i, (i as usize % 200) * 64, 64);
        }
        let ah = a.ah_to(b.lid);
        let dest = Some(UdDest {
            ah,
            remote_qpn: qb.qp_num,
            remote_qkey: QKEY,
        });
        let mut got = Vec::new();
        for i in 0..200u8 {
            a.dev
                .post_send(
                    qa.qp,
                    &[send_wr(
                        u64::from(i),
                        Payload::Inline(&[i], b""),
                        dest,
                        i % 8 == 7,
                    )],
                )
                .unwrap();
            a.poll();
            f.advance(300);
            for wc in b.poll() {
                got.push(b.read((wc.wr_id as usize % 200) * 64 + 40, 1)[0]);
            }
        }
        settle(&f);
        for wc in b.poll() {
            got.push(b.read((wc.wr_id as usize % 200) * 64 + 40, 1)[0]);
        }
        (got, f.stats())
    };
    let (g1, s1) = run(42);
    let (g2, s2) = run(42);
    assert_eq!(g1, g2, "same seed, same deliveries");
    assert_eq!(s1, s2);
    assert!(s1.ud_dropped_injected > 15, "{s1:?}");
    assert!(s1.ud_duplicated > 5, "{s1:?}");
    assert!(g1.windows(2).any(|w| w[0] > w[1]), "jitter reorders");
    let mut seen = std::collections::HashMap::new();
    for v in &g1 {
        *seen.entry(*v).or_insert(0) += 1;
    }
    assert!(seen.values().any(|&c| c == 2), "some packet arrived twice");
    let (g3, _) = run(43);
    assert_ne!(g1, g3, "another seed, another run");
}

#[test]
fn rc_link_error_injection_fails_the_request_with_retry_exc_err() {
    let f = SimVerbs::new(5);
    let (mut a, qa, mut b, qb) = rc_pair(&f, &RcParams::default());
    f.set_link_faults(
        a.dev.id(),
        b.dev.id(),
        LinkFaults {
            error: 1.0,
            ..LinkFaults::default()
        },
    );
    b.recv(qb.qp, 1, 0, 64);
    a.dev
        .post_send(
            qa.qp,
            &[send_wr(1, Payload::Inline(b"x", b""), None, false)],
        )
        .unwrap();
    settle(&f);
    assert_eq!(a.poll()[0].status, WcStatus::RetryExcErr);
    assert_eq!(f.stats().rc_link_errors, 1);
}

#[test]
fn destroyed_objects_and_busy_objects() {
    let f = SimVerbs::new(1);
    let mut a = Node::new(&f);
    let q = a.qp(QpType::Ud, 4, 4, 0);
    assert_eq!(
        a.dev.destroy_cq(a.cq).unwrap_err().errno_value(),
        Some(EBUSY)
    );
    assert_eq!(
        a.dev.dealloc_pd(a.pd).unwrap_err().errno_value(),
        Some(EBUSY)
    );
    a.dev.destroy_qp(q.qp).unwrap();
    assert_eq!(
        a.dev.query_qp_state(q.qp).unwrap_err().errno_value(),
        Some(EINVAL),
        "stale handle"
    );
    a.dev.destroy_cq(a.cq).unwrap();
    // Remote write without local write is refused at registration.
    let b = DmaBuf::new(64).unwrap();
    assert_eq!(
        a.dev
            .reg_mr(a.pd, &b, Access::REMOTE_WRITE)
            .unwrap_err()
            .errno_value(),
        Some(EINVAL)
    );
    // Too much inline at creation.
    let (cq, _) = a.dev.create_cq(4).unwrap();
    let e = a
        .dev
        .create_qp(
            a.pd,
            &QpInit {
                qp_type: QpType::Ud,
                send_cq: cq,
                recv_cq: cq,
                srq: None,
                caps: QpCaps {
                    max_send_wr: 4,
                    max_recv_wr: 4,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    max_inline_data: 100_000,
                },
                sq_sig_all: false,
            },
        )
        .unwrap_err();
    assert_eq!(e.errno_value(), Some(EINVAL));
}

#[test]
fn srq_feeds_several_qps_and_is_not_flushed_by_a_qp_error() {
    let f = SimVerbs::new(1);
    let p = RcParams::default();
    let mut a = Node::new(&f);
    let mut b = Node::new(&f);
    let srq = b.dev.create_srq(b.pd, 8, 1).unwrap();
    let mk = |n: &mut Node, srq| {
        n.dev
            .create_qp(
                n.pd,
                &QpInit {
                    qp_type: QpType::Rc,
                    send_cq: n.cq,
                    recv_cq: n.cq,
                    srq,
                    caps: QpCaps {
                        max_send_wr: 8,
                        max_recv_wr: 8,
                        max_send_sge: 1,
                        max_recv_sge: 1,
                        max_inline_data: 64,
                    },
                    sq_sig_all: false,
                },
            )
            .unwrap()
    };
    let (a1, a2) = (mk(&mut a, None), mk(&mut a, None));
    let (b1, b2) = (mk(&mut b, Some(srq)), mk(&mut b, Some(srq)));
    for q in [a1.qp, a2.qp] {
        rc_init(&mut a.dev, q, p.access);
    }
    for q in [b1.qp, b2.qp] {
        rc_init(&mut b.dev, q, p.access);
    }
    rc_connect(&mut a.dev, a1.qp, b.lid, b1.qp_num, 1, 2, &p);
    rc_connect(&mut b.dev, b1.qp, a.lid, a1.qp_num, 2, 1, &p);
    rc_connect(&mut a.dev, a2.qp, b.lid, b2.qp_num, 3, 4, &p);
    rc_connect(&mut b.dev, b2.qp, a.lid, a2.qp_num, 4, 3, &p);
    // post_recv on an SRQ-attached QP is refused.
    let rwr = RecvWr {
        wr_id: 0,
        sg: b.sge(0, 64),
    };
    assert_eq!(b.dev.post_recv(b1.qp, &[rwr]).unwrap_err().errno, EINVAL);
    let wrs: Vec<RecvWr> = (0..8)
        .map(|i| RecvWr {
            wr_id: i,
            sg: b.sge(i as usize * 64, 64),
        })
        .collect();
    b.dev.post_srq_recv(srq, &wrs).unwrap();
    assert_eq!(
        b.dev.post_srq_recv(srq, &wrs[..1]).unwrap_err().errno,
        ENOMEM
    );
    a.dev
        .post_send(
            a1.qp,
            &[send_wr(1, Payload::Inline(b"one", b""), None, false)],
        )
        .unwrap();
    a.dev
        .post_send(
            a2.qp,
            &[send_wr(2, Payload::Inline(b"two", b""), None, false)],
        )
        .unwrap();
    settle(&f);
    let wcs = b.poll();
    assert_eq!(wcs.len(), 2);
    let mut qpns: Vec<u32> = wcs.iter().map(|w| w.qp_num).collect();
    qpns.sort();
    let mut want = vec![b1.qp_num, b2.qp_num];
    want.sort();
    assert_eq!(qpns, want);
    assert!(f.inject_qp_error(b.dev.id(), b1.qp_num));
    assert!(
        b.poll().is_empty(),
        "SRQ receives are not flushed by one QP's error"
    );
    a.dev
        .post_send(
            a2.qp,
            &[send_wr(3, Payload::Inline(b"three", b""), None, false)],
        )
        .unwrap();
    settle(&f);
    assert_eq!(
        b.poll()[0].qp_num,
        b2.qp_num,
        "the other QP still receives from the SRQ"
    );
}
