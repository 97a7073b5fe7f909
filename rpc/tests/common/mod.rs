//! Helpers shared by the rpc integration tests: a deterministic driver for Rpcs on the
//! simulated fabric, and payload patterns that let both ends verify every byte.
#![allow(dead_code)]

pub mod pair;

use rpc::{Rpc, RpcConfig, VirtualClock};
use transports::sim::SimFabric;

/// A simulated fabric and the virtual clock it shares with the Rpcs of a test (none for a
/// real-time fabric). Derefs to the fabric.
pub struct Sim {
    pub fabric: SimFabric,
    pub clock: Option<VirtualClock>,
}

impl Sim {
    /// A fabric in virtual time, seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        let clock = VirtualClock::new();
        Self {
            fabric: SimFabric::with_clock(seed, clock.reader()),
            clock: Some(clock),
        }
    }

    /// A fabric on the wall clock (for tests that also use threads).
    pub fn realtime(seed: u64) -> Self {
        Self {
            fabric: SimFabric::new_realtime(seed),
            clock: None,
        }
    }

    /// Puts `rpc` on this simulation's virtual clock, if it has one.
    pub fn adopt<T: transports::Transport, S: 'static>(&self, rpc: &mut Rpc<T, S>) {
        if let Some(c) = &self.clock {
            rpc.use_virtual_clock(c.clone());
        }
    }

    /// Moves virtual time to `ns` (no effect in real time).
    pub fn set_now(&self, ns: u64) {
        if let Some(c) = &self.clock {
            c.advance_to(ns);
        }
    }
}

impl std::ops::Deref for Sim {
    type Target = SimFabric;
    fn deref(&self) -> &SimFabric {
        &self.fabric
    }
}

/// Something the driver can step.
pub trait Step {
    fn step(&mut self) -> bool;
    fn next_timer(&self) -> u64;
}

impl<T: transports::Transport, S: 'static> Step for Rpc<T, S> {
    fn step(&mut self) -> bool {
        self.run_once()
    }
    fn next_timer(&self) -> u64 {
        self.next_timer_ns()
    }
}

/// Virtual time after which a test is considered stuck.
pub const VIRTUAL_LIMIT_NS: u64 = 2_000_000_000_000;

/// Steps every Rpc once; when none had work, jumps virtual time to the next packet delivery
/// or timer. Panics when virtual time passes [`VIRTUAL_LIMIT_NS`] (a stuck test).
pub fn step(fabric: &Sim, rpcs: &mut [&mut dyn Step]) {
    let mut work = false;
    for r in rpcs.iter_mut() {
        work |= r.step();
    }
    if !work {
        let timer = rpcs
            .iter()
            .map(|r| r.next_timer())
            .min()
            .unwrap_or(u64::MAX);
        let next = fabric.next_delivery().map_or(timer, |d| d.min(timer));
        fabric.set_now(next.max(fabric.now_ns() + 1));
    }
    assert!(
        fabric.now_ns() < VIRTUAL_LIMIT_NS,
        "stuck: {} s of virtual time passed",
        VIRTUAL_LIMIT_NS / 1_000_000_000
    );
}

/// Config for sim tests: deterministic tokens.
pub fn sim_config(seed: u64) -> RpcConfig {
    RpcConfig {
        seed: Some(seed),
        ..RpcConfig::default()
    }
}

/// Byte `i` of the pattern for message `id`.
pub fn pattern_byte(id: u64, i: usize) -> u8 {
    (id.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 * 7) >> 3) as u8
}

/// Fills `buf` with the pattern of `id` (after an 8-byte id and 4-byte response size header
/// when there is room).
pub fn fill(buf: &mut [u8], id: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(id, i);
    }
}

/// Checks that `buf` holds the pattern of `id`.
pub fn check(buf: &[u8], id: u64) -> bool {
    buf.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(id, i))
}

/// A request: 8-byte id, 4-byte response size, then pattern bytes (total `size` ≥ 12).
pub fn make_request(id: u64, size: usize, resp_size: u32) -> Vec<u8> {
    let size = size.max(12);
    let mut v = vec![0u8; size];
    fill(&mut v, id);
    v[..8].copy_from_slice(&id.to_le_bytes());
    v[8..12].copy_from_slice(&resp_size.to_le_bytes());
    v
}

/// Parses and verifies a request; returns (id, response size).
pub fn parse_request(data: &[u8]) -> Option<(u64, u32)> {
    let id = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let resp = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let mut expect = vec![0u8; data.len()];
    fill(&mut expect, id);
    (data[12..] == expect[12..]).then_some((id, resp))
}

/// The response to request `id`: the pattern of `!id`.
pub fn make_response(id: u64, size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size];
    fill(&mut v, !id);
    v
}
