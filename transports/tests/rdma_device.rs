//! The verbs transports on a real RDMA device through libibverbs.
//!
//! The `#[ignore]`d tests need a device (a ConnectX NIC, or Soft-RoCE: see docs/RDMA.md):
//!
//! ```text
//! RDMA_DEVICE=mlx5_0 RDMA_GID_INDEX=3 \
//!   cargo test -p transports --features rdma --test rdma_device -- --ignored --test-threads 1
//! ```
//!
//! `RDMA_DEVICE` picks the device (default: the first), `RDMA_PORT` the port (default: the
//! first ACTIVE), `RDMA_GID_INDEX` the GID for RoCE (default 1). Without a device they print
//! why and pass. The test that is not ignored runs everywhere: on a machine without RDMA it
//! checks that opening a device fails cleanly, with an error naming what was looked for.
#![cfg(feature = "rdma")]

mod support;

use support::*;
use transports::rdma::ibv::{device_names, IbvDevice};
use transports::rdma::rc::{RcConfig, RcTransport};
use transports::rdma::ud::{UdConfig, UdTransport};
use transports::rdma::verbs::*;
use transports::Transport;

fn wanted() -> Option<String> {
    std::env::var("RDMA_DEVICE").ok().filter(|s| !s.is_empty())
}

fn env_u8(name: &str) -> Option<u8> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Opens the configured device, or says why not and returns `None` (the test then passes).
fn open() -> Option<IbvDevice> {
    match IbvDevice::open(wanted().as_deref()) {
        Ok(d) => Some(d),
        Err(e @ VerbsError::NoDevice { .. }) => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("opening the RDMA device failed: {e}"),
    }
}

#[test]
fn opening_a_device_works_or_fails_clearly() {
    match IbvDevice::open(wanted().as_deref()) {
        Ok(mut d) => {
            let attr = d.query_device().unwrap();
            assert!(attr.phys_port_cnt >= 1);
            eprintln!("found {} ({} ports)", d.name(), attr.phys_port_cnt);
        }
        Err(VerbsError::NoDevice { wanted, reason }) => {
            assert!(!wanted.is_empty());
            assert!(
                reason.contains("ibv_get_device_list") || reason.contains("present:"),
                "the reason says what failed: {reason}"
            );
            eprintln!("no RDMA device ({wanted}): {reason}");
            // Listing agrees: it fails the same way, or lists devices without the one wanted.
            match device_names() {
                Err(e) => assert!(matches!(e, VerbsError::NoDevice { .. }), "{e}"),
                Ok(names) => assert!(wanted != "any device" || names.is_empty(), "{names:?}"),
            }
        }
        Err(e) => panic!("unexpected error opening a device: {e}"),
    }
    // A name that cannot exist is always NoDevice.
    assert!(matches!(
        IbvDevice::open(Some("no-such-device-0")),
        Err(VerbsError::NoDevice { .. })
    ));
}

fn ud_cfg() -> UdConfig {
    UdConfig {
        port: env_u8("RDMA_PORT"),
        gid_index: env_u8("RDMA_GID_INDEX"),
        rx_ring_size: 1024,
        ..UdConfig::default()
    }
}

fn rc_cfg() -> RcConfig {
    RcConfig {
        port: env_u8("RDMA_PORT"),
        gid_index: env_u8("RDMA_GID_INDEX"),
        rx_ring_size: 1024,
        tx_pool_size: 1024,
        max_routes: 64,
        timeout: 12,
        ..RcConfig::default()
    }
}

#[test]
#[ignore = "needs an RDMA device (RDMA_DEVICE=...)"]
fn device_and_port_attributes() {
    let Some(mut d) = open() else { return };
    let attr = d.query_device().unwrap();
    eprintln!("{}: {attr:?}", d.name());
    for p in 1..=attr.phys_port_cnt {
        let pa = d.query_port(p).unwrap();
        eprintln!("port {p}: {pa:?}");
        for i in 0..pa.gid_tbl_len.min(4) {
            if let Ok(g) = d.query_gid(p, i as u8) {
                eprintln!("  gid[{i}] = {g:02x?}");
            }
        }
    }
}

#[test]
#[ignore = "needs an RDMA device (RDMA_DEVICE=...)"]
fn ud_on_a_real_device() {
    let (Some(da), Some(db)) = (open(), open()) else {
        return;
    };
    let mut a = UdTransport::new(da, ud_cfg()).unwrap();
    let mut b = UdTransport::new(db, ud_cfg()).unwrap();
    let (r, _) = connect(&mut a, &mut b);
    check_order_and_batching(&WallClock, &mut a, &mut b, r);
    check_large_packets(&WallClock, &mut a, &mut b, r);
    check_caller_buffers_reusable(&WallClock, &mut a, &mut b, r);
    check_ring_semantics(&WallClock, &mut a, &mut b, r);
    eprintln!("{:?}", a.ud_stats());
}

#[test]
#[ignore = "needs an RDMA device (RDMA_DEVICE=...)"]
fn rc_on_a_real_device() {
    let (Some(da), Some(db)) = (open(), open()) else {
        return;
    };
    let mut a = RcTransport::new(da, rc_cfg()).unwrap();
    let mut b = RcTransport::new(db, rc_cfg()).unwrap();
    let (r, _) = connect(&mut a, &mut b);
    check_order_and_batching(&WallClock, &mut a, &mut b, r);
    check_large_packets(&WallClock, &mut a, &mut b, r);
    check_caller_buffers_reusable(&WallClock, &mut a, &mut b, r);
    check_ring_semantics(&WallClock, &mut a, &mut b, r);
    assert!(a.poll_route_failure().is_none());
}

#[test]
#[ignore = "needs an RDMA device (RDMA_DEVICE=...)"]
fn rc_many_routes_on_a_real_device() {
    let Some(ds) = open() else { return };
    let mut server = RcTransport::new(ds, rc_cfg()).unwrap();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let Some(d) = open() else { return };
        clients.push(RcTransport::new(d, rc_cfg()).unwrap());
    }
    check_many_routes(&WallClock, &mut server, &mut clients, 50);
}

#[test]
#[ignore = "needs an RDMA device (RDMA_DEVICE=...)"]
fn posting_before_rts_fails_on_a_real_device() {
    let Some(mut d) = open() else { return };
    let pd = d.alloc_pd().unwrap();
    let (cq, _) = d.create_cq(16).unwrap();
    let q = d
        .create_qp(
            pd,
            &QpInit {
                qp_type: QpType::Rc,
                send_cq: cq,
                recv_cq: cq,
                srq: None,
                caps: QpCaps {
                    max_send_wr: 4,
                    max_recv_wr: 4,
                    max_send_sge: 1,
                    max_recv_sge: 1,
                    max_inline_data: 16,
                },
                sq_sig_all: false,
            },
        )
        .unwrap();
    let wr = SendWr {
        wr_id: 1,
        op: SendOp::Send,
        signaled: true,
        payload: Payload::Inline(b"x", b""),
        ud: None,
    };
    let e = d.post_send(q.qp, &[wr]).unwrap_err();
    eprintln!("post_send in RESET: {e}");
    assert!(e.errno == EINVAL || e.errno == ENOMEM, "{e}");
    // A wrong mask is EINVAL from the kernel's state table.
    let err = d
        .modify_qp(
            q.qp,
            &QpAttr {
                state: QpState::Init,
                ..QpAttr::default()
            },
            AttrMask::STATE,
        )
        .unwrap_err();
    assert_eq!(err.errno_value(), Some(EINVAL));
    d.destroy_qp(q.qp).unwrap();
}
