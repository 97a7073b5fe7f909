//! The RC transport on the simulated verbs fabric.
#![cfg(feature = "rdma")]

mod support;

use support::*;
use transports::rdma::rc::{RcConfig, RcTransport};
use transports::rdma::sim::{LinkFaults, SimDevice, SimDeviceConfig, SimVerbs};
use transports::rdma::verbs::{LinkLayer, Mtu, QpState};
use transports::{RouteId, RoutingInfo, Transport, TransportError, TransportKind, TxPkt};

type Rc = RcTransport<SimDevice>;

fn cfg() -> RcConfig {
    RcConfig {
        rx_ring_size: 512,
        tx_pool_size: 512,
        max_routes: 64,
        ..RcConfig::default()
    }
}

fn rc(f: &SimVerbs, c: RcConfig) -> Rc {
    RcTransport::new(f.open_device(SimDeviceConfig::default()), c).expect("RC transport")
}

fn pair_with(f: &SimVerbs, c: RcConfig) -> (Rc, Rc, RouteId, RouteId) {
    let mut a = rc(f, c.clone());
    let mut b = rc(f, c);
    let (ra, rb) = connect(&mut a, &mut b);
    (a, b, ra, rb)
}

fn pair(f: &SimVerbs) -> (Rc, Rc, RouteId, RouteId) {
    pair_with(f, cfg())
}

/// Pumps until `t` reports a route failure (or the budget runs out).
fn wait_failure(f: &SimVerbs, t: &mut Rc, budget: usize) -> Option<RouteId> {
    for _ in 0..budget {
        t.rx_burst();
        if let Some(r) = t.poll_route_failure() {
            return Some(r);
        }
        if !f.step() {
            f.advance(1_000_000);
        }
    }
    None
}

#[test]
fn basics() {
    let f = SimVerbs::new(1);
    let (a, _b, ra, _) = pair(&f);
    assert_eq!(a.kind(), TransportKind::InfinibandRc);
    assert!(a.is_reliable());
    assert_eq!(a.max_pkt_size(), 8192);
    assert_eq!(a.rx_ring_size(), 512 - 32);
    assert!(a.route_qpn(ra).is_some());
    assert_eq!(a.link_layer(), LinkLayer::Infiniband);
}

#[test]
fn order_and_batching() {
    let f = SimVerbs::new(2);
    let (mut a, mut b, ra, _) = pair(&f);
    check_order_and_batching(&f, &mut a, &mut b, ra);
    assert_eq!(a.rc_stats().tx_errors, 0);
}

#[test]
fn large_packets_beyond_the_path_mtu() {
    let f = SimVerbs::new(3);
    let c = RcConfig {
        max_pkt_size: 64 * 1024,
        rx_ring_size: 128,
        tx_pool_size: 64,
        ..cfg()
    };
    let (mut a, mut b, ra, _) = pair_with(&f, c);
    assert!(a.max_pkt_size() > Mtu::M4096.bytes());
    check_large_packets(&f, &mut a, &mut b, ra);
}

#[test]
fn caller_buffers_are_reusable_at_once() {
    let f = SimVerbs::new(4);
    let (mut a, mut b, ra, _) = pair(&f);
    check_caller_buffers_reusable(&f, &mut a, &mut b, ra);
}

#[test]
fn ring_semantics() {
    let f = SimVerbs::new(5);
    let (mut a, mut b, ra, _) = pair(&f);
    check_ring_semantics(&f, &mut a, &mut b, ra);
}

#[test]
fn many_routes_one_qp_each() {
    let f = SimVerbs::new(6);
    let mut server = rc(&f, cfg());
    let mut clients: Vec<Rc> = (0..24).map(|_| rc(&f, cfg())).collect();
    check_many_routes(&f, &mut server, &mut clients, 10);
    let qpns: std::collections::HashSet<u32> =
        (0..24).filter_map(|r| server.route_qpn(r)).collect();
    assert_eq!(qpns.len(), 24, "one QP per route");
}

#[test]
fn a_burst_larger_than_the_send_queue_waits_in_the_backlog() {
    let f = SimVerbs::new(7);
    let c = RcConfig {
        sq_depth: 8,
        signal_every: 4,
        ..cfg()
    };
    let (mut a, mut b, ra, _) = pair_with(&f, c);
    let bodies: Vec<Vec<u8>> = (0..100u32).map(|i| payload(i, 100 + i as usize)).collect();
    let pkts: Vec<TxPkt> = bodies
        .iter()
        .map(|p| TxPkt {
            route: ra,
            hdr: &p[..4],
            data: &p[4..],
        })
        .collect();
    assert_eq!(
        a.tx_burst(&pkts).unwrap(),
        100,
        "all taken: reliable transports do not drop"
    );
    assert!(a.rc_stats().backlogged >= 90, "{:?}", a.rc_stats());
    let mut got = Vec::new();
    for _ in 0..10_000 {
        got.extend(recv_n(&f, &mut b, usize::MAX, 1));
        a.tx_burst(&[]).unwrap(); // completions free room; the backlog moves
        if got.len() == 100 {
            break;
        }
    }
    assert_eq!(got, bodies);
    assert!(a.poll_route_failure().is_none());
}

/// One round of an echo: `b` takes what arrived (into `got`) and sends it back to `a` on route
/// `rb`; `a` collects the echoes (into `echoed`).
fn echo_step(
    f: &SimVerbs,
    a: &mut Rc,
    b: &mut Rc,
    rb: RouteId,
    got: &mut Vec<Vec<u8>>,
    echoed: &mut Vec<Vec<u8>>,
) {
    let k = b.rx_burst();
    let mine: Vec<Vec<u8>> = (0..k).map(|i| b.rx_pkt(i).to_vec()).collect();
    b.rx_release(k);
    let back: Vec<TxPkt> = mine
        .iter()
        .map(|p| TxPkt {
            route: rb,
            hdr: &[],
            data: p,
        })
        .collect();
    assert_eq!(
        b.tx_burst(&back).unwrap(),
        back.len(),
        "a reliable transport takes all"
    );
    got.extend(mine);
    echoed.extend(recv_n(f, a, usize::MAX, 1));
}

#[test]
fn injected_loss_is_repaired_by_the_hca_in_order_exactly_once() {
    for seed in testkit::seeds(&[21, 22, 23]) {
        println!("seed {seed}");
        let f = SimVerbs::new(seed);
        f.set_default_faults(LinkFaults {
            drop: 0.05,
            jitter_ns: 2_000,
            ..LinkFaults::default()
        });
        // Short ACK timeout so lost tails are resent soon (virtual time anyway).
        let c = RcConfig {
            timeout: 8,
            ..cfg()
        };
        let (mut a, mut b, ra, rb) = pair_with(&f, c);
        let n = 1_000u32;
        let bodies: Vec<Vec<u8>> = (0..n)
            .map(|i| payload(i, 10 + (i as usize * 13) % 3000))
            .collect();
        let mut got = Vec::new();
        let mut echoed = Vec::new();
        for chunk in bodies.chunks(25) {
            let pkts: Vec<TxPkt> = chunk
                .iter()
                .map(|p| TxPkt {
                    route: ra,
                    hdr: &[],
                    data: p,
                })
                .collect();
            assert_eq!(a.tx_burst(&pkts).unwrap(), pkts.len());
            for _ in 0..20 {
                echo_step(&f, &mut a, &mut b, rb, &mut got, &mut echoed);
                f.step();
            }
        }
        for _ in 0..200_000 {
            if got.len() == n as usize && echoed.len() == n as usize {
                break;
            }
            echo_step(&f, &mut a, &mut b, rb, &mut got, &mut echoed);
            a.tx_burst(&[]).unwrap();
            if !f.step() {
                f.advance(100_000);
            }
        }
        assert_eq!(got, bodies, "seed {seed}: a -> b complete, in order, once");
        assert_eq!(
            echoed, bodies,
            "seed {seed}: b -> a complete, in order, once"
        );
        let s = f.stats();
        assert!(s.rc_lost_injected > 20, "{s:?}");
        assert!(s.rc_retransmits > 0, "{s:?}");
        assert!(a.poll_route_failure().is_none() && b.poll_route_failure().is_none());
    }
}

#[test]
fn rnr_when_the_receiver_holds_its_ring_then_delivery_resumes() {
    let f = SimVerbs::new(8);
    let c = RcConfig {
        rx_ring_size: 64,
        repost_batch: 8,
        min_rnr_timer: 1,
        ..cfg()
    };
    let (mut a, mut b, ra, _) = pair_with(&f, c);
    let bodies: Vec<Vec<u8>> = (0..100u32).map(|i| payload(i, 200)).collect();
    let pkts: Vec<TxPkt> = bodies
        .iter()
        .map(|p| TxPkt {
            route: ra,
            hdr: &[],
            data: p,
        })
        .collect();
    assert_eq!(a.tx_burst(&pkts).unwrap(), 100);
    // b reads but holds everything: after 64 slots the SRQ is empty and a's HCA gets RNR NAKs.
    for _ in 0..2_000 {
        b.rx_burst();
        a.tx_burst(&[]).unwrap();
        f.step();
    }
    // At most rx_ring_size packets are readable; the other slots' completions wait.
    let held = b.rx_ring_size();
    assert_eq!(held, 64 - 8);
    assert_eq!(b.rx_burst(), held);
    assert!(f.stats().rc_rnr_naks > 0);
    assert!(
        a.poll_route_failure().is_none(),
        "rnr_retry 7 retries forever"
    );
    let mut got: Vec<Vec<u8>> = (0..held).map(|i| b.rx_pkt(i).to_vec()).collect();
    b.rx_release(held);
    for _ in 0..10_000 {
        got.extend(recv_n(&f, &mut b, usize::MAX, 1));
        a.tx_burst(&[]).unwrap();
        if got.len() == 100 {
            break;
        }
    }
    assert_eq!(
        got, bodies,
        "in order, nothing lost or doubled across the RNR retries"
    );
}

#[test]
fn rnr_retries_exhausted_fail_the_route() {
    let f = SimVerbs::new(9);
    let c = RcConfig {
        rx_ring_size: 64,
        repost_batch: 8,
        min_rnr_timer: 1,
        rnr_retry: 2,
        ..cfg()
    };
    let (mut a, mut b, ra, _) = pair_with(&f, c);
    let p = payload(1, 100);
    let pkts: Vec<TxPkt> = (0..80)
        .map(|_| TxPkt {
            route: ra,
            hdr: &[],
            data: &p,
        })
        .collect();
    assert_eq!(a.tx_burst(&pkts).unwrap(), 80);
    for _ in 0..200 {
        b.rx_burst(); // never released: the SRQ runs dry
        a.tx_burst(&[]).unwrap();
        f.step();
    }
    assert_eq!(wait_failure(&f, &mut a, 1_000), Some(ra));
    let qpn = a.route_qpn(ra).unwrap();
    assert_eq!(f.qp_state(a.device().id(), qpn), Some(QpState::Err));
    assert!(a.rc_stats().tx_errors >= 1);
    assert!(a.poll_route_failure().is_none(), "reported once");
    // Packets to a failed route are dropped and counted; it cannot be resolved again.
    let dropped = a.stats().tx_dropped;
    assert_eq!(a.tx_burst(&pkts[..1]).unwrap(), 0);
    assert_eq!(a.stats().tx_dropped, dropped + 1);
    let (_, fresh) = b.route_alloc().unwrap();
    assert!(matches!(
        a.resolve(ra, &fresh),
        Err(TransportError::Resolve(_))
    ));
}

#[test]
fn a_qp_error_reports_only_its_route() {
    let f = SimVerbs::new(10);
    let mut server = rc(&f, cfg());
    let mut c1 = rc(&f, cfg());
    let mut c2 = rc(&f, cfg());
    let (r1, s1) = connect(&mut c1, &mut server);
    let (r2, s2) = connect(&mut c2, &mut server);
    let p = payload(1, 500);
    for (c, r) in [(&mut c1, r1), (&mut c2, r2)] {
        assert_eq!(
            c.tx_burst(&[TxPkt {
                route: r,
                hdr: &[],
                data: &p
            }])
            .unwrap(),
            1
        );
    }
    assert_eq!(recv_n(&f, &mut server, 2, 1_000).len(), 2);
    // The QP behind the server's route to c1 fails (as an asynchronous fatal error would).
    let qpn = server.route_qpn(s1).unwrap();
    assert!(f.inject_qp_error(server.device().id(), qpn));
    // It is noticed at the next send on it (the flush), and only that route is reported.
    server
        .tx_burst(&[
            TxPkt {
                route: s1,
                hdr: &[],
                data: &p,
            },
            TxPkt {
                route: s2,
                hdr: &[],
                data: &p,
            },
        ])
        .unwrap();
    assert_eq!(wait_failure(&f, &mut server, 100), Some(s1));
    assert!(server.poll_route_failure().is_none());
    assert_eq!(recv_n(&f, &mut c2, 1, 1_000).len(), 1, "c2's route is fine");
    // The peer's QP is still up, but nothing answers it any more: its sends time out.
    assert_eq!(
        c1.tx_burst(&[TxPkt {
            route: r1,
            hdr: &[],
            data: &p
        }])
        .unwrap(),
        1
    );
    assert_eq!(wait_failure(&f, &mut c1, 10_000), Some(r1));
    // The server frees the route and a new connection works.
    server.route_free(s1);
    c1.route_free(r1);
    let (r1, _) = connect(&mut c1, &mut server);
    assert_eq!(
        c1.tx_burst(&[TxPkt {
            route: r1,
            hdr: &[],
            data: &p
        }])
        .unwrap(),
        1
    );
    assert_eq!(recv_n(&f, &mut server, 1, 1_000), vec![p]);
}

#[test]
fn a_vanished_peer_fails_the_route_after_the_retries() {
    let f = SimVerbs::new(11);
    let c = RcConfig {
        timeout: 10,
        retry_cnt: 3,
        ..cfg()
    };
    let (mut a, b, ra, _) = pair_with(&f, c);
    drop(b); // the peer process is gone: nothing answers
    let p = payload(1, 100);
    assert_eq!(
        a.tx_burst(&[TxPkt {
            route: ra,
            hdr: &[],
            data: &p
        }])
        .unwrap(),
        1
    );
    assert_eq!(wait_failure(&f, &mut a, 10_000), Some(ra));
    assert!(f.stats().rc_timeouts >= 3);
}

#[test]
fn a_link_error_fails_the_route() {
    let f = SimVerbs::new(12);
    let (mut a, b, ra, _) = pair(&f);
    f.set_link_faults(
        a.device().id(),
        b.device().id(),
        LinkFaults {
            error: 1.0,
            ..LinkFaults::default()
        },
    );
    let p = payload(1, 100);
    a.tx_burst(&[TxPkt {
        route: ra,
        hdr: &[],
        data: &p,
    }])
    .unwrap();
    assert_eq!(wait_failure(&f, &mut a, 1_000), Some(ra));
}

#[test]
fn a_peer_sending_more_than_our_ring_slot_kills_only_that_connection() {
    let f = SimVerbs::new(13);
    let mut big = rc(
        &f,
        RcConfig {
            max_pkt_size: 16_384,
            ..cfg()
        },
    );
    let mut small = rc(
        &f,
        RcConfig {
            max_pkt_size: 1024,
            ..cfg()
        },
    );
    let (rb, rs) = connect(&mut big, &mut small);
    let p = payload(1, 2000); // > small's slots: LOC_LEN_ERR there, REM_INV_REQ_ERR here
    big.tx_burst(&[TxPkt {
        route: rb,
        hdr: &[],
        data: &p,
    }])
    .unwrap();
    assert_eq!(wait_failure(&f, &mut small, 1_000), Some(rs));
    assert_eq!(wait_failure(&f, &mut big, 1_000), Some(rb));
    assert!(small.rc_stats().rx_errors >= 1);
}

#[test]
fn connecting_before_the_peer_is_ready_loses_nothing() {
    let f = SimVerbs::new(14);
    let c = RcConfig {
        timeout: 8,
        ..cfg()
    };
    let mut a = rc(&f, c.clone());
    let mut b = rc(&f, c);
    let (ra, info_a) = a.route_alloc().unwrap();
    let (rb, info_b) = b.route_alloc().unwrap();
    // a is connected first and talks at once, while b's QP is still in INIT.
    a.resolve(ra, &info_b).unwrap();
    let p = payload(1, 300);
    a.tx_burst(&[TxPkt {
        route: ra,
        hdr: &[],
        data: &p,
    }])
    .unwrap();
    for _ in 0..3 {
        f.step();
    }
    assert!(f.stats().rc_silent_drops >= 1);
    b.resolve(rb, &info_a).unwrap();
    let mut got = Vec::new();
    for _ in 0..10_000 {
        got.extend(recv_n(&f, &mut b, usize::MAX, 1));
        if !got.is_empty() {
            break;
        }
        a.tx_burst(&[]).unwrap();
        if !f.step() {
            f.advance(1_000_000);
        }
    }
    assert_eq!(got, vec![p]);
}

#[test]
fn roce_ports_connect_by_gid() {
    let f = SimVerbs::new(15);
    let mut a = RcTransport::new(f.open_device(roce()), cfg()).unwrap();
    let mut b = RcTransport::new(f.open_device(roce()), cfg()).unwrap();
    let (ra, _) = connect(&mut a, &mut b);
    check_order_and_batching(&f, &mut a, &mut b, ra);
}

#[test]
fn resolve_errors() {
    let f = SimVerbs::new(16);
    let (mut a, b, ra, _) = pair(&f);
    let info = b.routing_info(); // a port address: QPN 0
    let (r2, _) = a.route_alloc().unwrap();
    assert!(matches!(
        a.resolve(r2, &info),
        Err(TransportError::Resolve(_))
    ));
    let ud_like = RoutingInfo::new(&[b'U'; 32]).unwrap();
    assert!(matches!(
        a.resolve(r2, &ud_like),
        Err(TransportError::Resolve(_))
    ));
    let (_, fresh) = rc(&f, cfg()).route_alloc().unwrap();
    assert!(
        matches!(a.resolve(ra, &fresh), Err(TransportError::Resolve(_))),
        "already connected"
    );
    assert!(matches!(
        a.resolve(999, &fresh),
        Err(TransportError::UnknownRoute(999))
    ));
    a.route_free(r2);
    a.route_free(r2);
}

#[test]
fn route_table_limit() {
    let f = SimVerbs::new(17);
    let mut a = rc(
        &f,
        RcConfig {
            max_routes: 3,
            ..cfg()
        },
    );
    for _ in 0..3 {
        a.route_alloc().unwrap();
    }
    assert!(matches!(
        a.route_alloc(),
        Err(TransportError::RoutesExhausted(3))
    ));
    a.route_free(1);
    assert_eq!(a.route_alloc().unwrap().0, 1);
}

#[test]
fn real_time_fabric_across_threads() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let f = SimVerbs::new_realtime(18);
    let mut a = rc(&f, cfg());
    let mut b = rc(&f, cfg());
    let (ra, rb) = connect(&mut a, &mut b);
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = Arc::clone(&stop);
    let server = std::thread::spawn(move || echo_until(&mut b, rb, &s2));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let echoes = ping_pong(&mut a, ra, 200, deadline);
    stop.store(true, Ordering::Release);
    server.join().unwrap();
    assert_eq!(
        echoes.len(),
        200,
        "each ping answered once, no resend needed on RC"
    );
    assert!(a.poll_route_failure().is_none());
}
