//! The transport conformance suite (`transports::conformance`) over the verbs transports on
//! the simulated fabric: one test per case and transport, from fixed seeds (`TEST_SEEDS`
//! overrides them, as ci/soak does).
//!
//! Both transports run every case: the suite makes every route the way the rpc layer does
//! (`route_alloc` on both ends, each resolving the other's info — for RC, the other's fresh
//! QP), and asserts order within each route only.
#![cfg(feature = "rdma")]

use std::io;

use transports::conformance::{EndpointSpec, Factory, Garbage};
use transports::rdma::rc::{RcConfig, RcTransport};
use transports::rdma::sim::{SimDevice, SimDeviceConfig, SimVerbs};
use transports::rdma::ud::{UdConfig, UdTransport};
use transports::{Transport, TransportError, TxPkt};

fn io_err(e: TransportError) -> io::Error {
    io::Error::other(e.to_string())
}

/// Ring sizes the verbs transports accept (at least 64 slots) and the repost slack for them.
fn ring(spec: &EndpointSpec) -> (usize, usize) {
    let slots = spec.rx_ring_size.clamp(64, 65_536);
    (slots, (slots / 8).clamp(1, 32))
}

/// Lets virtual time run to the next event (or a microsecond when nothing is pending).
fn tick(fabric: &SimVerbs) {
    if !fabric.step() {
        fabric.advance(1_000);
        fabric.progress();
    }
}

/// UD endpoints, each on its own simulated HCA of one fault-free fabric in virtual time.
/// Garbage comes from a UD endpoint outside the case's, as raw packets to the target's QP.
struct SimUdFactory {
    fabric: SimVerbs,
    outsider: Option<UdTransport<SimDevice>>,
}

impl SimUdFactory {
    fn new(seed: u64) -> Self {
        Self {
            fabric: SimVerbs::new(seed),
            outsider: None,
        }
    }
}

impl Factory for SimUdFactory {
    type Endpoint = UdTransport<SimDevice>;

    fn endpoint(&mut self, spec: &EndpointSpec) -> Result<Self::Endpoint, TransportError> {
        let (slots, batch) = ring(spec);
        UdTransport::new(
            self.fabric.open_device(SimDeviceConfig::default()),
            UdConfig {
                max_pkt_size: Some(spec.max_pkt_size),
                rx_ring_size: slots,
                repost_batch: batch,
                ..UdConfig::default()
            },
        )
    }

    fn tick(&mut self) {
        tick(&self.fabric);
    }

    fn inject(&mut self, dst: &Self::Endpoint, g: &Garbage) -> io::Result<bool> {
        let src = match &mut self.outsider {
            Some(t) => t,
            None => self.outsider.insert(
                UdTransport::new(
                    self.fabric.open_device(SimDeviceConfig::default()),
                    UdConfig {
                        rx_ring_size: 64,
                        repost_batch: 8,
                        ..UdConfig::default()
                    },
                )
                .map_err(io_err)?,
            ),
        };
        let bytes = match g {
            Garbage::Empty => Vec::new(),
            Garbage::Oversize => vec![0x5A; dst.max_pkt_size() + 1],
            Garbage::Noise(n) => n.clone(),
        };
        let (r, _) = src.route_alloc().map_err(io_err)?;
        src.resolve(r, &dst.routing_info()).map_err(io_err)?;
        let n = src
            .tx_burst(&[TxPkt {
                route: r,
                hdr: &[],
                data: &bytes,
            }])
            .map_err(io_err)?;
        src.route_free(r);
        // A packet larger than the path MTU cannot be sent at all (the outsider refuses it).
        Ok(n == 1)
    }
}

/// RC endpoints on one fault-free fabric. Send queues back up into the backlog (4096 packets
/// per route, from a pool of 4096 staging slots): the suite floods a reliable transport
/// without flow control. A short ACK timeout and 3 retries make a vanished peer show soon.
/// Garbage can only reach an RC endpoint over an established connection (the HCA drops
/// everything else), so it is injected as a message on the target's first connected QP;
/// `Oversize` is refused: on RC a message longer than the receive buffer is, by the verbs
/// rules, a fatal error for that connection (`rdma_rc.rs` tests that).
struct SimRcFactory {
    fabric: SimVerbs,
}

impl SimRcFactory {
    fn new(seed: u64) -> Self {
        Self {
            fabric: SimVerbs::new(seed),
        }
    }
}

impl Factory for SimRcFactory {
    type Endpoint = RcTransport<SimDevice>;

    fn endpoint(&mut self, spec: &EndpointSpec) -> Result<Self::Endpoint, TransportError> {
        let (slots, batch) = ring(spec);
        RcTransport::new(
            self.fabric.open_device(SimDeviceConfig::default()),
            RcConfig {
                max_pkt_size: spec.max_pkt_size,
                rx_ring_size: slots,
                repost_batch: batch,
                tx_pool_size: 4096,
                backlog: 4096,
                timeout: 10,
                retry_cnt: 3,
                ..RcConfig::default()
            },
        )
    }

    fn tick(&mut self) {
        tick(&self.fabric);
    }

    fn inject(&mut self, dst: &Self::Endpoint, g: &Garbage) -> io::Result<bool> {
        let bytes = match g {
            Garbage::Empty => Vec::new(),
            Garbage::Oversize => return Ok(false),
            Garbage::Noise(n) => n.clone(),
        };
        Ok(self.fabric.inject_rc_message(dst.device().id(), &bytes))
    }
}

mod ud {
    transports::conformance_tests!(super::SimUdFactory::new, testkit::seeds(&[0x0d_u64]));
}

mod rc {
    transports::conformance_tests!(super::SimRcFactory::new, testkit::seeds(&[0x7c_u64]));
}
