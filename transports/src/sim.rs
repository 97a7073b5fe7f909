//! An in-process, deterministic, fault-injecting fabric.
//!
//! A [`SimFabric`] is shared (cheaply cloned) by every [`SimTransport`] attached to it. Packets
//! sent on a link are delayed, dropped, duplicated and reordered according to that link's
//! [`LinkFaults`], using one seeded random generator, so a single-threaded test that drives the
//! same sequence of calls sees the same packets every run.
//!
//! Time is virtual by default: nothing moves until the test calls [`SimFabric::advance`] or
//! [`SimFabric::set_now`]; [`SimFabric::next_delivery`] tells when the next packet lands, so a
//! driver can jump straight to it. A fabric can also read its time from a clock that someone
//! else owns ([`SimFabric::with_clock`]) — the way a simulation shares one virtual clock between
//! the fabric and the endpoints that use it (the rpc crate's `VirtualClock`). The fabric keeps
//! no clock type of its own. [`SimFabric::new_realtime`] makes a fabric whose clock is the wall
//! clock instead, for tests that run endpoints on several threads.
//!
//! Each endpoint's receive ring holds `ring_size` packets; packets that arrive while it is full
//! are dropped and counted, as a NIC would.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::rng::SplitMix64;
use crate::{
    RouteId, RoutingInfo, Transport, TransportError, TransportKind, TransportStats, TxPkt,
};

/// Fault injection settings of one directed link.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkFaults {
    /// Probability that a packet is dropped.
    pub drop: f64,
    /// Probability that a packet is delivered twice.
    pub duplicate: f64,
    /// Fixed one-way delay in nanoseconds.
    pub delay_ns: u64,
    /// Extra random delay, uniform in `0..=reorder_ns`; packets sent less than this apart may
    /// arrive out of order.
    pub reorder_ns: u64,
}

impl Default for LinkFaults {
    fn default() -> Self {
        Self {
            drop: 0.0,
            duplicate: 0.0,
            delay_ns: 1_000,
            reorder_ns: 0,
        }
    }
}

#[derive(PartialEq, Eq)]
struct InFlight {
    at: u64,
    seq: u64,
    dst: u32,
    data: Vec<u8>,
}

impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Min-heap on (at, seq).
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

struct Node {
    inbox: VecDeque<Vec<u8>>,
    ring_size: usize,
    overruns: u64,
    alive: bool,
}

struct State {
    rng: SplitMix64,
    seq: u64,
    next_node: u32,
    nodes: HashMap<u32, Node>,
    in_flight: BinaryHeap<InFlight>,
    default_faults: LinkFaults,
    links: HashMap<(u32, u32), LinkFaults>,
    spare: Vec<Vec<u8>>,
    delivered: u64,
    dropped: u64,
    duplicated: u64,
    /// Copies of every packet sent while capturing: (destination node, bytes).
    capture: Option<Vec<(u32, Vec<u8>)>>,
}

impl State {
    fn next_rand(&mut self) -> u64 {
        self.rng.next_u64()
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.chance(p)
    }

    fn deliver_due(&mut self, now: u64) {
        while self.in_flight.peek().is_some_and(|p| p.at <= now) {
            let Some(pkt) = self.in_flight.pop() else {
                break;
            };
            match self.nodes.get_mut(&pkt.dst) {
                Some(node) if node.alive && node.inbox.len() < node.ring_size => {
                    node.inbox.push_back(pkt.data);
                    self.delivered += 1;
                }
                Some(node) => {
                    node.overruns += 1;
                    self.spare.push(pkt.data);
                }
                None => self.spare.push(pkt.data),
            }
        }
    }
}

/// Where a simulated fabric's time comes from (also used by the simulated verbs device).
pub(crate) enum Clock {
    /// Virtual time kept by the fabric, moved by `advance` / `set_now`.
    Manual(AtomicU64),
    /// Time read from a clock owned elsewhere (e.g. the rpc crate's `VirtualClock`).
    External(Box<dyn Fn() -> u64 + Send + Sync>),
    /// The wall clock, from the fabric's creation.
    Real(Instant),
}

impl Clock {
    /// Virtual time at 0, kept by the fabric.
    pub(crate) fn manual() -> Self {
        Clock::Manual(AtomicU64::new(0))
    }

    /// Time read from `now`.
    pub(crate) fn external(now: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Clock::External(Box::new(now))
    }

    /// The wall clock, from now.
    pub(crate) fn real() -> Self {
        Clock::Real(Instant::now())
    }

    /// Current time in nanoseconds.
    pub(crate) fn now_ns(&self) -> u64 {
        match self {
            Clock::Manual(t) => t.load(Ordering::Acquire),
            Clock::External(now) => now(),
            Clock::Real(start) => start.elapsed().as_nanos() as u64,
        }
    }

    /// Moves the fabric's own virtual time forward by `ns` (no effect on other clocks).
    pub(crate) fn advance(&self, ns: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ns, Ordering::AcqRel);
        }
    }

    /// Moves the fabric's own virtual time to `ns` if that is later (no effect on other
    /// clocks).
    pub(crate) fn set_now(&self, ns: u64) {
        if let Clock::Manual(t) = self {
            t.fetch_max(ns, Ordering::AcqRel);
        }
    }

    /// Whether this is the wall clock.
    pub(crate) fn is_real(&self) -> bool {
        matches!(self, Clock::Real(_))
    }
}

struct Shared {
    state: Mutex<State>,
    clock: Clock,
}

/// Fabric-wide counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FabricStats {
    /// Packets placed into a receive ring.
    pub delivered: u64,
    /// Packets dropped by fault injection.
    pub dropped: u64,
    /// Extra copies made by fault injection.
    pub duplicated: u64,
    /// Packets currently in flight.
    pub in_flight: usize,
}

/// A simulated network shared by several [`SimTransport`]s. Cloning gives another handle to the
/// same fabric.
#[derive(Clone)]
pub struct SimFabric {
    shared: Arc<Shared>,
}

impl SimFabric {
    /// A fabric with virtual time starting at 0 and a random generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self::with_time(seed, Clock::manual())
    }

    /// A fabric whose time is `now()` (nanoseconds), read from a clock owned elsewhere: a test
    /// shares one virtual clock between the fabric and its endpoints this way (with the rpc
    /// crate: `SimFabric::with_clock(seed, clock.reader())`). `now` must never go backwards.
    /// [`SimFabric::advance`] and [`SimFabric::set_now`] have no effect; move the clock itself.
    pub fn with_clock(seed: u64, now: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self::with_time(seed, Clock::external(now))
    }

    /// A fabric whose clock is the wall clock (for multi-threaded tests).
    pub fn new_realtime(seed: u64) -> Self {
        Self::with_time(seed, Clock::real())
    }

    fn with_time(seed: u64, clock: Clock) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    rng: SplitMix64::new(seed),
                    seq: 0,
                    next_node: 1,
                    nodes: HashMap::new(),
                    in_flight: BinaryHeap::new(),
                    default_faults: LinkFaults::default(),
                    links: HashMap::new(),
                    spare: Vec::new(),
                    delivered: 0,
                    dropped: 0,
                    duplicated: 0,
                    capture: None,
                }),
                clock,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent state behind; keep going.
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The fabric's current time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    /// Moves the fabric's own virtual time forward by `ns` (no effect on a fabric whose time
    /// comes from elsewhere).
    pub fn advance(&self, ns: u64) {
        self.shared.clock.advance(ns);
    }

    /// Sets the fabric's own virtual time to `ns` if that is later than now (no effect on a
    /// fabric whose time comes from elsewhere).
    pub fn set_now(&self, ns: u64) {
        self.shared.clock.set_now(ns);
    }

    /// When the next in-flight packet is due, if any.
    pub fn next_delivery(&self) -> Option<u64> {
        self.lock().in_flight.peek().map(|p| p.at)
    }

    /// Sets the faults of every link that has no specific setting.
    pub fn set_default_faults(&self, faults: LinkFaults) {
        self.lock().default_faults = faults;
    }

    /// Sets the faults of the directed link `from -> to` (node ids from
    /// [`SimTransport::node_id`]).
    pub fn set_link_faults(&self, from: u32, to: u32, faults: LinkFaults) {
        self.lock().links.insert((from, to), faults);
    }

    /// Fabric-wide counters.
    pub fn stats(&self) -> FabricStats {
        let s = self.lock();
        FabricStats {
            delivered: s.delivered,
            dropped: s.dropped,
            duplicated: s.duplicated,
            in_flight: s.in_flight.len(),
        }
    }

    /// Attaches a new endpoint with the given maximum packet size and receive ring size.
    pub fn transport(&self, max_pkt_size: usize, ring_size: usize) -> SimTransport {
        let id = {
            let mut s = self.lock();
            let id = s.next_node;
            s.next_node += 1;
            s.nodes.insert(
                id,
                Node {
                    inbox: VecDeque::new(),
                    ring_size: ring_size.max(1),
                    overruns: 0,
                    alive: true,
                },
            );
            id
        };
        SimTransport {
            fabric: self.clone(),
            id,
            max_pkt_size,
            ring_size: ring_size.max(1),
            routes: Vec::new(),
            ring: VecDeque::new(),
            stats: TransportStats::default(),
        }
    }

    /// Starts recording a copy of every packet sent (before fault injection), e.g. to replay
    /// them later with [`SimFabric::inject`].
    pub fn start_capture(&self) {
        self.lock().capture = Some(Vec::new());
    }

    /// Stops recording and returns what was captured: (destination node, packet bytes).
    pub fn take_capture(&self) -> Vec<(u32, Vec<u8>)> {
        self.lock().capture.take().unwrap_or_default()
    }

    /// Injects a raw packet towards node `to`, as if it came from the wire (for tests that
    /// send garbage).
    pub fn inject(&self, to: u32, data: &[u8]) {
        let now = self.now_ns();
        let mut s = self.lock();
        let seq = s.seq;
        s.seq += 1;
        s.in_flight.push(InFlight {
            at: now,
            seq,
            dst: to,
            data: data.to_vec(),
        });
    }
}

/// One endpoint attached to a [`SimFabric`].
pub struct SimTransport {
    fabric: SimFabric,
    id: u32,
    max_pkt_size: usize,
    ring_size: usize,
    /// Route id -> remote node id (0 = allocated but unresolved, `u32::MAX` = free).
    routes: Vec<u32>,
    ring: VecDeque<Vec<u8>>,
    stats: TransportStats,
}

impl SimTransport {
    /// This endpoint's node id in the fabric.
    pub fn node_id(&self) -> u32 {
        self.id
    }

    /// The fabric this endpoint is attached to.
    pub fn fabric(&self) -> &SimFabric {
        &self.fabric
    }

    /// Packets dropped because this endpoint's ring was full.
    pub fn overruns(&self) -> u64 {
        self.fabric
            .lock()
            .nodes
            .get(&self.id)
            .map_or(0, |n| n.overruns)
    }
}

impl Drop for SimTransport {
    fn drop(&mut self) {
        let mut s = self.fabric.lock();
        if let Some(node) = s.nodes.get_mut(&self.id) {
            node.alive = false;
            node.inbox.clear();
        }
    }
}

impl Transport for SimTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Sim
    }

    fn routing_info(&self) -> RoutingInfo {
        RoutingInfo::new(&self.id.to_le_bytes()).unwrap_or(RoutingInfo {
            len: 0,
            bytes: [0; crate::ROUTING_INFO_MAX],
        })
    }

    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        let info = self.routing_info();
        if let Some(i) = self.routes.iter().position(|&r| r == u32::MAX) {
            self.routes[i] = 0;
            return Ok((i as RouteId, info));
        }
        if self.routes.len() >= u32::MAX as usize - 1 {
            return Err(TransportError::RoutesExhausted(self.routes.len()));
        }
        self.routes.push(0);
        Ok(((self.routes.len() - 1) as RouteId, info))
    }

    fn resolve(&mut self, route: RouteId, remote: &RoutingInfo) -> Result<(), TransportError> {
        let bytes: [u8; 4] = remote
            .as_bytes()
            .try_into()
            .map_err(|_| TransportError::Resolve("sim routing info must be 4 bytes".into()))?;
        let node = u32::from_le_bytes(bytes);
        if !self.fabric.lock().nodes.contains_key(&node) {
            return Err(TransportError::Resolve(format!("no sim node {node}")));
        }
        match self.routes.get_mut(route as usize) {
            Some(r) if *r != u32::MAX => {
                *r = node;
                Ok(())
            }
            _ => Err(TransportError::UnknownRoute(route)),
        }
    }

    fn route_free(&mut self, route: RouteId) {
        if let Some(r) = self.routes.get_mut(route as usize) {
            *r = u32::MAX;
        }
    }

    fn max_pkt_size(&self) -> usize {
        self.max_pkt_size
    }

    fn rx_ring_size(&self) -> usize {
        self.ring_size
    }

    fn tx_burst(&mut self, pkts: &[TxPkt<'_>]) -> Result<usize, TransportError> {
        let now = self.fabric.now_ns();
        let mut s = self.fabric.lock();
        let mut sent = 0;
        for p in pkts {
            let size = p.hdr.len() + p.data.len();
            if size > self.max_pkt_size {
                self.stats.tx_dropped += 1;
                continue;
            }
            let dst = match self.routes.get(p.route as usize) {
                Some(&d) if d != 0 && d != u32::MAX => d,
                _ => {
                    self.stats.tx_dropped += 1;
                    continue;
                }
            };
            sent += 1;
            if let Some(cap) = s.capture.as_mut() {
                let mut copy = Vec::with_capacity(size);
                copy.extend_from_slice(p.hdr);
                copy.extend_from_slice(p.data);
                cap.push((dst, copy));
            }
            let faults = s
                .links
                .get(&(self.id, dst))
                .copied()
                .unwrap_or(s.default_faults);
            if s.chance(faults.drop) {
                s.dropped += 1;
                continue;
            }
            let copies = if s.chance(faults.duplicate) { 2 } else { 1 };
            if copies == 2 {
                s.duplicated += 1;
            }
            for _ in 0..copies {
                let jitter = if faults.reorder_ns > 0 {
                    s.next_rand() % (faults.reorder_ns + 1)
                } else {
                    0
                };
                let mut data = s.spare.pop().unwrap_or_default();
                data.clear();
                data.extend_from_slice(p.hdr);
                data.extend_from_slice(p.data);
                let seq = s.seq;
                s.seq += 1;
                s.in_flight.push(InFlight {
                    at: now + faults.delay_ns + jitter,
                    seq,
                    dst,
                    data,
                });
            }
        }
        self.stats.tx_pkts += sent as u64;
        self.stats.tx_batches += 1;
        Ok(sent)
    }

    fn rx_burst(&mut self) -> usize {
        let now = self.fabric.now_ns();
        let mut s = self.fabric.lock();
        s.deliver_due(now);
        let before = self.ring.len();
        let mut oversize = Vec::new();
        if let Some(node) = s.nodes.get_mut(&self.id) {
            while self.ring.len() < self.ring_size {
                match node.inbox.pop_front() {
                    // Larger than this endpoint takes (injected, or from a sender with a larger
                    // max_pkt_size): dropped and counted, as a NIC drops frames above its MTU.
                    Some(p) if p.len() > self.max_pkt_size => oversize.push(p),
                    Some(p) => self.ring.push_back(p),
                    None => break,
                }
            }
        }
        self.stats.rx_dropped += oversize.len() as u64;
        s.spare.append(&mut oversize);
        let got = self.ring.len() - before;
        if got > 0 {
            self.stats.rx_pkts += got as u64;
            self.stats.rx_batches += 1;
        }
        self.ring.len()
    }

    fn rx_pkt(&self, i: usize) -> &[u8] {
        self.ring.get(i).map_or(&[], |p| p.as_slice())
    }

    fn rx_release(&mut self, n: usize) {
        let n = n.min(self.ring.len());
        let mut s = self.fabric.lock();
        for p in self.ring.drain(..n) {
            if s.spare.len() < 4096 {
                s.spare.push(p);
            }
        }
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.fabric.shared.clock.is_real() {
            let t = timeout.unwrap_or(Duration::from_micros(100));
            std::thread::sleep(t.min(Duration::from_micros(100)));
        }
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(f: &SimFabric) -> (SimTransport, SimTransport, RouteId) {
        let mut a = f.transport(256, 16);
        let b = f.transport(256, 16);
        let (r, _) = a.route_alloc().unwrap();
        a.resolve(r, &b.routing_info()).unwrap();
        (a, b, r)
    }

    #[test]
    fn delivers_after_delay_in_order() {
        let f = SimFabric::new(1);
        let (mut a, mut b, r) = pair(&f);
        for i in 0..5u8 {
            a.tx_burst(&[TxPkt {
                route: r,
                hdr: &[i],
                data: &[],
            }])
            .unwrap();
        }
        assert_eq!(b.rx_burst(), 0, "nothing before the link delay");
        f.advance(1_000);
        assert_eq!(b.rx_burst(), 5);
        for i in 0..5 {
            assert_eq!(b.rx_pkt(i), &[i as u8]);
        }
        b.rx_release(5);
        assert_eq!(b.rx_burst(), 0);
    }

    #[test]
    fn drops_and_duplicates_are_seeded() {
        let run = |seed| {
            let f = SimFabric::new(seed);
            f.set_default_faults(LinkFaults {
                drop: 0.3,
                duplicate: 0.1,
                delay_ns: 10,
                reorder_ns: 100,
            });
            let (mut a, mut b, r) = pair(&f);
            let mut got = Vec::new();
            for i in 0..200u8 {
                a.tx_burst(&[TxPkt {
                    route: r,
                    hdr: &[i],
                    data: b"x",
                }])
                .unwrap();
                f.advance(50);
                let n = b.rx_burst();
                for j in 0..n {
                    got.push(b.rx_pkt(j)[0]);
                }
                b.rx_release(n);
            }
            f.advance(1_000);
            let n = b.rx_burst();
            for j in 0..n {
                got.push(b.rx_pkt(j)[0]);
            }
            (got, f.stats())
        };
        let (g1, s1) = run(7);
        let (g2, _) = run(7);
        assert_eq!(g1, g2, "same seed, same packets");
        assert!(s1.dropped > 30 && s1.dropped < 100, "{s1:?}");
        assert!(s1.duplicated > 5, "{s1:?}");
        let reordered = g1.windows(2).any(|w| w[0] > w[1]);
        assert!(reordered, "reorder window should reorder some packets");
    }

    #[test]
    fn ring_overrun_drops() {
        let f = SimFabric::new(1);
        let (mut a, mut b, r) = pair(&f);
        for _ in 0..40 {
            a.tx_burst(&[TxPkt {
                route: r,
                hdr: b"h",
                data: &[],
            }])
            .unwrap();
        }
        f.advance(10_000);
        assert_eq!(b.rx_burst(), 16);
        assert_eq!(b.overruns(), 24);
    }

    #[test]
    fn bad_routes_and_oversize() {
        let f = SimFabric::new(1);
        let (mut a, _b, r) = pair(&f);
        assert!(a
            .resolve(99, &RoutingInfo::new(&[1, 0, 0, 0]).unwrap())
            .is_err());
        assert!(a.resolve(r, &RoutingInfo::new(&[1, 2]).unwrap()).is_err());
        assert!(a
            .resolve(r, &RoutingInfo::new(&999u32.to_le_bytes()).unwrap())
            .is_err());
        let big = vec![0u8; 300];
        assert_eq!(
            a.tx_burst(&[TxPkt {
                route: r,
                hdr: &[],
                data: &big
            }])
            .unwrap(),
            0
        );
        assert_eq!(a.stats().tx_dropped, 1);
    }
}
