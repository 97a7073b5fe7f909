//! A conformance suite for [`Transport`] implementations: the same cases over every transport,
//! in-tree (udp, sim, tcp) or not (the verbs transports, yours).
//!
//! A transport plugs in through a [`Factory`], which creates endpoints, lets time pass for
//! in-process fabrics, sends raw garbage to an endpoint and kills one. Each case is a public
//! function `fn(&mut F, seed)`; [`conformance_tests!`](crate::conformance_tests) turns the
//! whole list into one `#[test]` per case. The cases panic with a message naming the case and
//! the seed when the transport breaks its contract.
//!
//! What is checked is the contract of [`Transport`]: order within a route, batches (a burst the
//! size of the ring, bursts larger than the ring or the socket buffers, partial sends), packets
//! up to `max_pkt_size` and the rejection of larger ones, 100 peers and many routes to one peer,
//! garbage from outside (dropped and counted in `rx_dropped`, or delivered byte for byte; the
//! endpoint keeps working), peer loss (reported by `poll_route_failure` on a
//! [reliable](Transport::is_reliable) transport; no hang on a datagram transport), the
//! `rx_burst`/`rx_pkt`/`rx_release` ring rules, `route_free` and `resolve` errors, and both ends
//! sending first at once. A transport that is not reliable may lose packets where its contract
//! allows (more than its ring or socket buffers hold); the suite then checks that what arrives
//! is intact, in order and never duplicated, and it paces every other case to fit, where it
//! asserts delivery (loopback and a fault-free simulated fabric lose nothing then).
//!
//! Every route is made the way the rpc layer makes them — both ends `route_alloc`, each
//! resolves the other's info — so connection-oriented transports (RC, one queue pair per
//! route) run every case; order is asserted within each route only, as the contract says.
//!
//! Every wait is bounded (20 s, then a panic naming what was awaited), no case asserts on
//! timing, and sizes and burst shapes come from the seed.
//!
//! ```
//! use transports::conformance::{self, factories::SimFactory};
//!
//! // One case by hand; `conformance_tests!` generates a #[test] for each of them.
//! conformance::order_within_route(&mut SimFactory::new(7), 7);
//! ```
//!
//! An out-of-tree transport implements [`Factory`] and, in its `tests/`, writes
//! `transports::conformance_tests!(|seed| MyFactory::new(seed), [1, 2]);`.

use std::collections::HashMap;
use std::io;
use std::time::{Duration, Instant};

use crate::{RouteId, RoutingInfo, Transport, TransportError, TxPkt};

/// What a case asks of a new endpoint. A factory may clamp to what its transport supports;
/// the cases read the real values back from the endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Wanted `max_pkt_size`.
    pub max_pkt_size: usize,
    /// Wanted `rx_ring_size`.
    pub rx_ring_size: usize,
}

/// Raw input sent to an endpoint from outside any endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Garbage {
    /// An empty packet (datagram transports), an empty frame after a valid handshake
    /// (stream transports).
    Empty,
    /// A packet one byte larger than the endpoint's `max_pkt_size` (or a frame announcing it).
    Oversize,
    /// Arbitrary bytes: as a datagram, or as the first bytes of a new connection.
    Noise(Vec<u8>),
}

/// How the suite creates and drives endpoints of one transport.
pub trait Factory {
    /// The transport under test.
    type Endpoint: Transport;

    /// A new endpoint (for kernel transports on 127.0.0.1 with a port picked at run time).
    fn endpoint(&mut self, spec: &EndpointSpec) -> Result<Self::Endpoint, TransportError>;

    /// Called whenever the suite waits for something: an in-process fabric with virtual time
    /// advances it here. Kernel transports need nothing (the suite calls `wait` briefly).
    fn tick(&mut self) {}

    /// Sends `garbage` to `dst` as a peer outside the transport would (a raw socket, an
    /// injected packet). `Ok(false)`: this transport cannot be sent that kind of garbage.
    fn inject(&mut self, dst: &Self::Endpoint, garbage: &Garbage) -> io::Result<bool>;

    /// Makes `endpoint` vanish as a crashed process would. The default drops it.
    fn kill(&mut self, endpoint: Self::Endpoint) {
        drop(endpoint);
    }
}

/// Every case, by name, in the order [`conformance_tests!`](crate::conformance_tests) runs them.
pub const CASES: &[&str] = &[
    "order_within_route",
    "batching",
    "large_packets",
    "many_routes",
    "garbage",
    "peer_loss",
    "rx_release",
    "route_free",
    "resolve_errors",
    "simultaneous_start",
    "wait_returns",
];

/// One `#[test]` per conformance case for the transport that `$make` (a closure from a seed to
/// a [`Factory`]) builds, each run once per seed of `$seeds` (an iterator of `u64`).
///
/// ```ignore
/// mod sim {
///     transports::conformance_tests!(transports::conformance::factories::SimFactory::new, [1, 2]);
/// }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr, $seeds:expr) => {
        $crate::conformance_tests!(@cases $make, $seeds;
            order_within_route, batching, large_packets, many_routes, garbage, peer_loss,
            rx_release, route_free, resolve_errors, simultaneous_start, wait_returns);
    };
    (@cases $make:expr, $seeds:expr; $($case:ident),*) => {
        $(
            #[test]
            fn $case() {
                for seed in $seeds {
                    println!("{} with seed {seed}", stringify!($case));
                    let mut factory = ($make)(seed);
                    $crate::conformance::$case(&mut factory, seed);
                }
            }
        )*
    };
}

/// Longest wait for anything.
const LIMIT: Duration = Duration::from_secs(20);
/// A wait for "nothing more arrives": this many rounds and this long without a new packet.
const QUIET_ROUNDS: usize = 100;
const QUIET_TIME: Duration = Duration::from_millis(100);

const SPEC: EndpointSpec = EndpointSpec {
    max_pkt_size: 1400,
    rx_ring_size: 256,
};

/// splitmix64: sizes and shapes from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi - lo + 1) as u64) as usize
    }
}

/// A test packet: `[tag u32][seq u32][bytes derived from both]`, at least 8 bytes.
fn make(tag: u32, seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(8);
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&tag.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    let mut x = u64::from(tag) << 32 | u64::from(seq);
    while p.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        p.push((x >> 56) as u8);
    }
    p
}

/// The (tag, seq) of an intact test packet; `None` if it is not one.
fn parse(p: &[u8]) -> Option<(u32, u32)> {
    let tag = u32::from_le_bytes(p.get(..4)?.try_into().ok()?);
    let seq = u32::from_le_bytes(p.get(4..8)?.try_into().ok()?);
    (make(tag, seq, p.len()) == p).then_some((tag, seq))
}

/// Splits a packet into header and payload at a seed-chosen point (empty halves included).
fn split(p: &[u8], rng: &mut Rng) -> (usize, usize) {
    let at = match rng.next() % 4 {
        0 => 0,
        1 => p.len(),
        2 => p.len().min(32),
        _ => rng.range(0, p.len()),
    };
    (at, p.len())
}

fn pkts<'a>(route: RouteId, bodies: &'a [Vec<u8>], cuts: &[(usize, usize)]) -> Vec<TxPkt<'a>> {
    bodies
        .iter()
        .zip(cuts)
        .map(|(b, &(at, _))| TxPkt {
            route,
            hdr: &b[..at],
            data: &b[at..],
        })
        .collect()
}

/// The endpoints of one case.
struct Net<'f, F: Factory> {
    f: &'f mut F,
    eps: Vec<Option<F::Endpoint>>,
    case: &'static str,
    seed: u64,
}

impl<'f, F: Factory> Net<'f, F> {
    fn new(f: &'f mut F, case: &'static str, seed: u64) -> Self {
        Self {
            f,
            eps: Vec::new(),
            case,
            seed,
        }
    }

    fn fail(&self, msg: impl std::fmt::Display) -> ! {
        panic!("conformance case {} (seed {}): {msg}", self.case, self.seed)
    }

    fn add(&mut self, spec: EndpointSpec) -> usize {
        match self.f.endpoint(&spec) {
            Ok(t) => self.eps.push(Some(t)),
            Err(e) => self.fail(format!("cannot create an endpoint: {e}")),
        }
        self.eps.len() - 1
    }

    fn ep(&mut self, i: usize) -> &mut F::Endpoint {
        match self.eps.get_mut(i).and_then(Option::as_mut) {
            Some(t) => t,
            None => panic!("endpoint {i} was killed"),
        }
    }

    fn kill(&mut self, i: usize) {
        if let Some(t) = self.eps.get_mut(i).and_then(Option::take) {
            self.f.kill(t);
        }
    }

    /// Two new endpoints with routes both ways (see [`Net::connect`]), and the largest packet
    /// both take.
    fn pair(&mut self, spec: EndpointSpec) -> (usize, usize, RouteId, RouteId, usize) {
        let a = self.add(spec);
        let b = self.add(spec);
        let (ab, ba) = self.connect(a, b);
        let max = self.ep(a).max_pkt_size().min(self.ep(b).max_pkt_size());
        (a, b, ab, ba, max)
    }

    /// Routes both ways, set up as an rpc connect does: each end allocates, the accepting end
    /// `b` resolves first with the info `a` sent, then `a` with `b`'s. Every route of the
    /// suite is made this way — it is how the rpc layer makes them, and connection-oriented
    /// transports (RC: one queue pair per route) can make no other.
    fn connect(&mut self, a: usize, b: usize) -> (RouteId, RouteId) {
        let (ra, info_a) = self.ep(a).route_alloc().unwrap_or_else(|e| self.fail(e));
        self.complete(a, ra, &info_a, b)
    }

    /// Completes route `ra` of `a`, whose routing info is `info_a`, with a new route of `b`
    /// (resolved first, with `info_a`); returns both.
    fn complete(
        &mut self,
        a: usize,
        ra: RouteId,
        info_a: &RoutingInfo,
        b: usize,
    ) -> (RouteId, RouteId) {
        let (rb, info_b) = self.ep(b).route_alloc().unwrap_or_else(|e| self.fail(e));
        if let Err(e) = self.ep(b).resolve(rb, info_a) {
            self.fail(format!("resolve: {e}"));
        }
        if let Err(e) = self.ep(a).resolve(ra, &info_b) {
            self.fail(format!("resolve: {e}"));
        }
        (ra, rb)
    }

    /// Another route `a -> b` (made as [`Net::connect`] makes them).
    fn route(&mut self, a: usize, b: usize) -> RouteId {
        self.connect(a, b).0
    }

    fn send(&mut self, a: usize, p: &[TxPkt<'_>]) -> usize {
        match self.ep(a).tx_burst(p) {
            Ok(n) if n <= p.len() => n,
            Ok(n) => self.fail(format!("tx_burst of {} returned {n}", p.len())),
            Err(e) => self.fail(format!("tx_burst: {e}")),
        }
    }

    /// Sends one packet (all of it as the header) within capacity.
    fn send_one(&mut self, a: usize, route: RouteId, p: &[u8]) {
        self.send_all(
            a,
            &[TxPkt {
                route,
                hdr: p,
                data: &[],
            }],
        );
    }

    /// Sends within capacity: every packet must be taken.
    fn send_all(&mut self, a: usize, p: &[TxPkt<'_>]) {
        let n = self.send(a, p);
        if n != p.len() {
            self.fail(format!("tx_burst took {n} of {} valid packets", p.len()));
        }
    }

    /// One round: every endpoint polls (nothing is released), time passes.
    fn round(&mut self) {
        for i in 0..self.eps.len() {
            if let Some(t) = self.eps.get_mut(i).and_then(Option::as_mut) {
                let n = t.rx_burst();
                let cap = t.rx_ring_size();
                if n > cap {
                    self.fail(format!("rx_burst returned {n} > rx_ring_size {cap}"));
                }
            }
        }
        self.f.tick();
    }

    fn pause(&mut self, at: usize) {
        if let Some(t) = self.eps.get_mut(at).and_then(Option::as_mut) {
            if let Err(e) = t.wait(Some(Duration::from_millis(1))) {
                self.fail(format!("wait: {e}"));
            }
        }
    }

    /// Copies and releases what `at` holds; returns the copies.
    fn take(&mut self, at: usize) -> Vec<Vec<u8>> {
        let t = self.ep(at);
        let n = t.rx_burst();
        let out = (0..n).map(|i| t.rx_pkt(i).to_vec()).collect();
        t.rx_release(n);
        out
    }

    /// Runs rounds until `done` (bounded).
    fn until(&mut self, what: &str, at: usize, mut done: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + LIMIT;
        loop {
            self.round();
            if done(self) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!("timed out waiting for {what}"));
            }
            self.pause(at);
        }
    }

    /// Receives exactly `n` packets at `at` (more is a failure: duplicates).
    fn recv(&mut self, at: usize, n: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        self.until(&format!("{n} packets"), at, |net| {
            got.extend(net.take(at));
            got.len() >= n
        });
        if got.len() > n {
            self.fail(format!("{} packets arrived, {n} were sent", got.len()));
        }
        got
    }

    /// Receives at `at` until nothing more arrives for a while.
    fn recv_quiet(&mut self, at: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut quiet_rounds = 0;
        let mut quiet_since = Instant::now();
        self.until("the end of the traffic", at, |net| {
            let new = net.take(at);
            if new.is_empty() {
                quiet_rounds += 1;
            } else {
                quiet_rounds = 0;
                quiet_since = Instant::now();
                got.extend(new);
            }
            quiet_rounds >= QUIET_ROUNDS && quiet_since.elapsed() >= QUIET_TIME
        });
        got
    }

    /// Checks `got` is exactly `want`.
    fn expect_exact(&self, got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
        if got.len() != want.len() {
            self.fail(format!(
                "{what}: {} packets arrived, {} sent",
                got.len(),
                want.len()
            ));
        }
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            if g != w {
                self.fail(format!(
                    "{what}: packet {i} differs ({} bytes, sent {}; parsed {:?}, sent {:?})",
                    g.len(),
                    w.len(),
                    parse(g),
                    parse(w)
                ));
            }
        }
    }

    /// Checks `got` holds exactly the packets of `want`, each tag's (each route's) in the order
    /// sent; packets of different tags may interleave in any way.
    fn expect_per_route(&self, got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
        let by_tag = |pkts: &[Vec<u8>]| {
            let mut m: HashMap<u32, Vec<Vec<u8>>> = HashMap::new();
            for p in pkts {
                let tag = parse(p).map_or(u32::MAX, |(t, _)| t);
                m.entry(tag).or_default().push(p.clone());
            }
            m
        };
        let (g, w) = (by_tag(got), by_tag(want));
        if let Some(bad) = g.get(&u32::MAX) {
            self.fail(format!("{what}: {} corrupt packets arrived", bad.len()));
        }
        if g.len() != w.len() {
            self.fail(format!(
                "{what}: packets of {} routes arrived, {} were sent on",
                g.len(),
                w.len()
            ));
        }
        for (tag, sent) in &w {
            let arrived = g.get(tag).map_or(&[][..], Vec::as_slice);
            self.expect_exact(arrived, sent, &format!("{what}, tag {tag}"));
        }
    }

    /// Checks `got` is an in-order, duplicate-free subsequence of `want` (a lossy delivery).
    fn expect_subsequence(&self, got: &[Vec<u8>], want: &[Vec<u8>], what: &str) {
        let mut j = 0;
        for (i, g) in got.iter().enumerate() {
            while j < want.len() && want[j] != *g {
                j += 1;
            }
            if j == want.len() {
                self.fail(format!(
                    "{what}: packet {i} ({:?}) is corrupt, duplicated or out of order",
                    parse(g)
                ));
            }
            j += 1;
        }
    }

    fn reliable(&mut self, at: usize) -> bool {
        self.ep(at).is_reliable()
    }
}

/// Bodies tagged `tag`, seqs `from..from+n`, sizes in `lo..=hi`.
fn bodies(rng: &mut Rng, tag: u32, from: u32, n: usize, lo: usize, hi: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| make(tag, from + i as u32, rng.range(lo, hi)))
        .collect()
}

fn cuts(rng: &mut Rng, b: &[Vec<u8>]) -> Vec<(usize, usize)> {
    b.iter().map(|p| split(p, rng)).collect()
}

/// Packets of one route arrive in the order sent, on two routes to one peer and back; bursts
/// of random sizes within the receiver's ring are all taken and all delivered. Order is
/// checked per route, as the contract promises: packets of two routes to one peer may
/// interleave differently from how they were sent (RC gives each route its own queue pair).
pub fn order_within_route<F: Factory>(f: &mut F, seed: u64) {
    let mut rng = Rng(seed);
    let mut net = Net::new(f, "order_within_route", seed);
    let a = net.add(SPEC);
    let b = net.add(SPEC);
    let (ab, ba) = net.connect(a, b);
    let ab2 = net.route(a, b);
    let max = net.ep(a).max_pkt_size().min(net.ep(b).max_pkt_size());
    let window = net.ep(b).rx_ring_size().min(net.ep(a).rx_ring_size()) / 4;
    let mut seqs = [0u32; 3];
    for round in 0..40 {
        // A burst mixing both routes a -> b, then one b -> a.
        let n = rng.range(1, window.max(1));
        let mut want = Vec::new();
        let mut routes = Vec::new();
        for _ in 0..n {
            let which = (rng.next() % 2) as usize;
            want.push(make(which as u32, seqs[which], rng.range(8, max)));
            seqs[which] += 1;
            routes.push([ab, ab2][which]);
        }
        let c = cuts(&mut rng, &want);
        let burst: Vec<TxPkt<'_>> = want
            .iter()
            .zip(&c)
            .zip(&routes)
            .map(|((p, &(at, _)), &route)| TxPkt {
                route,
                hdr: &p[..at],
                data: &p[at..],
            })
            .collect();
        net.send_all(a, &burst);
        let got = net.recv(b, n);
        net.expect_per_route(&got, &want, &format!("round {round} a->b"));
        let k = rng.range(1, window.max(1));
        let back = bodies(&mut rng, 2, seqs[2], k, 8, max);
        seqs[2] += back.len() as u32;
        let c = cuts(&mut rng, &back);
        net.send_all(b, &pkts(ba, &back, &c));
        let got = net.recv(a, back.len());
        net.expect_exact(&got, &back, &format!("round {round} b->a"));
    }
    if net.reliable(a) {
        // A reliable transport needs no pacing: a flood arrives whole and in order.
        let flood = bodies(&mut rng, 9, 0, 2000, 8, 200);
        let c = cuts(&mut rng, &flood);
        for chunk in pkts(ab, &flood, &c).chunks(100) {
            net.send_all(a, chunk);
            net.round();
        }
        let got = net.recv(b, flood.len());
        net.expect_exact(&got, &flood, "flood");
    }
}

/// Sends `want` on `route` from `a` to `b` in one burst that may exceed what the transport
/// holds: a reliable one delivers it whole, a datagram one an intact in-order part (and
/// counts what it did not send).
fn overload<F: Factory>(
    net: &mut Net<'_, F>,
    rng: &mut Rng,
    (a, b, route): (usize, usize, RouteId),
    want: Vec<Vec<u8>>,
    what: &str,
) {
    let c = cuts(rng, &want);
    let before = net.ep(a).stats().tx_dropped;
    let n = net.send(a, &pkts(route, &want, &c));
    let dropped = net.ep(a).stats().tx_dropped - before;
    if net.reliable(a) {
        if n != want.len() {
            net.fail(format!(
                "{what}: a reliable transport took {n} of {}",
                want.len()
            ));
        }
        let got = net.recv(b, want.len());
        net.expect_exact(&got, &want, what);
    } else {
        if n as u64 + dropped != want.len() as u64 {
            net.fail(format!(
                "{what}: {n} taken + {dropped} counted as dropped != {} sent",
                want.len()
            ));
        }
        let got = net.recv_quiet(b);
        net.expect_subsequence(&got, &want, what);
        if got.is_empty() {
            net.fail(format!("{what}: nothing arrived"));
        }
    }
}

/// A burst the size of the ring is delivered whole; bursts four times the ring, and bursts of
/// large packets beyond any socket buffer, are delivered whole by a reliable transport and as
/// an intact in-order subsequence by a datagram one (what it did not send is counted).
pub fn batching<F: Factory>(f: &mut F, seed: u64) {
    let mut rng = Rng(seed);
    let mut net = Net::new(f, "batching", seed);
    let spec = EndpointSpec {
        max_pkt_size: 1400,
        rx_ring_size: 64,
    };
    let (a, b, ab, _, max) = net.pair(spec);
    let ring = net.ep(b).rx_ring_size();

    let full = bodies(&mut rng, 1, 0, ring, 8, max);
    let c = cuts(&mut rng, &full);
    net.send_all(a, &pkts(ab, &full, &c));
    let got = net.recv(b, full.len());
    net.expect_exact(&got, &full, "a burst of rx_ring_size packets");

    let over = bodies(&mut rng, 2, 0, 4 * ring, 8, max);
    overload(
        &mut net,
        &mut rng,
        (a, b, ab),
        over,
        "a burst of 4 x rx_ring_size packets",
    );

    // Large packets: bursts of megabytes (partial sends on a stream).
    let big = EndpointSpec {
        max_pkt_size: 32_000,
        rx_ring_size: 32,
    };
    let (c, d, cd, _, max) = net.pair(big);
    for k in 0..4u32 {
        let want = bodies(&mut rng, 10 + k, 0, 32, max / 2, max);
        overload(
            &mut net,
            &mut rng,
            (c, d, cd),
            want,
            &format!("large burst {k}"),
        );
    }
}

/// Packets of 8 bytes up to `max_pkt_size` arrive intact whatever the header/payload split;
/// a packet of `max_pkt_size + 1` is not sent (counted in `tx_dropped`) and does not disturb
/// its neighbours; an empty packet is never delivered as anything but an empty packet.
pub fn large_packets<F: Factory>(f: &mut F, seed: u64) {
    let mut rng = Rng(seed);
    let mut net = Net::new(f, "large_packets", seed);
    let spec = EndpointSpec {
        max_pkt_size: 65_000,
        rx_ring_size: 32,
    };
    let a = net.add(spec);
    let b = net.add(spec);
    let (ab, _) = net.connect(a, b);
    let max = net.ep(a).max_pkt_size().min(net.ep(b).max_pkt_size());
    let sizes = [8, 9, max - 1, max, 100, max, 4096, max - 7];
    let want: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| make(1, i as u32, n))
        .collect();
    // One at a time, then all in one burst.
    for (i, p) in want.iter().enumerate() {
        let (at, _) = split(p, &mut rng);
        net.send_all(
            a,
            &[TxPkt {
                route: ab,
                hdr: &p[..at],
                data: &p[at..],
            }],
        );
        let got = net.recv(b, 1);
        net.expect_exact(&got, &want[i..=i], &format!("packet of {} bytes", p.len()));
    }
    let c = cuts(&mut rng, &want);
    net.send_all(a, &pkts(ab, &want, &c));
    let got = net.recv(b, want.len());
    net.expect_exact(&got, &want, "a burst of large packets");

    // Too large: not sent, counted; the neighbours go out.
    let ok1 = make(2, 0, 64);
    let ok2 = make(2, 1, max);
    let huge = vec![7u8; net.ep(a).max_pkt_size() + 1];
    let before = net.ep(a).stats().tx_dropped;
    let n = net.send(
        a,
        &[
            TxPkt {
                route: ab,
                hdr: &ok1,
                data: &[],
            },
            TxPkt {
                route: ab,
                hdr: &huge[..10],
                data: &huge[10..],
            },
            TxPkt {
                route: ab,
                hdr: &[],
                data: &ok2,
            },
        ],
    );
    let delta = net.ep(a).stats().tx_dropped - before;
    if n != 2 || delta != 1 {
        net.fail(format!(
            "an oversize packet: took {n} of 3 (want 2), tx_dropped +{delta} (want 1)"
        ));
    }
    let got = net.recv(b, 2);
    net.expect_exact(
        &got,
        &[ok1.clone(), ok2.clone()],
        "the neighbours of an oversize packet",
    );

    // Empty: sent or not, it never arrives as anything else.
    let before = net.ep(a).stats().tx_dropped + net.ep(b).stats().rx_dropped;
    net.send(
        a,
        &[
            TxPkt {
                route: ab,
                hdr: &ok1,
                data: &[],
            },
            TxPkt {
                route: ab,
                hdr: &[],
                data: &[],
            },
            TxPkt {
                route: ab,
                hdr: &ok2,
                data: &[],
            },
        ],
    );
    let got = net.recv_quiet(b);
    let empties = got.iter().filter(|p| p.is_empty()).count();
    let rest: Vec<Vec<u8>> = got.into_iter().filter(|p| !p.is_empty()).collect();
    net.expect_exact(&rest, &[ok1, ok2], "the neighbours of an empty packet");
    let counted = net.ep(a).stats().tx_dropped + net.ep(b).stats().rx_dropped - before;
    if empties + counted as usize != 1 {
        net.fail(format!(
            "an empty packet: delivered {empties} times, counted as dropped {counted} times"
        ));
    }
}

/// A hub with routes to 100 peers: each peer's packets arrive in order, replies sent in one
/// interleaved burst reach the right peers in order; 32 routes from one endpoint to the same
/// peer all work.
pub fn many_routes<F: Factory>(f: &mut F, seed: u64) {
    const PEERS: usize = 100;
    const EACH: u32 = 3;
    let mut rng = Rng(seed);
    let mut net = Net::new(f, "many_routes", seed);
    let hub = net.add(EndpointSpec {
        max_pkt_size: 1400,
        rx_ring_size: 1024,
    });
    let spec = EndpointSpec {
        max_pkt_size: 1400,
        rx_ring_size: 16,
    };
    let mut peers = Vec::new();
    for _ in 0..PEERS {
        let p = net.add(spec);
        let (to_hub, from_hub) = net.connect(p, hub);
        peers.push((p, to_hub, from_hub));
    }
    for seq in 0..EACH {
        for (i, &(p, to_hub, _)) in peers.iter().enumerate() {
            let body = make(i as u32, seq, rng.range(8, 200));
            net.send_one(p, to_hub, &body);
        }
    }
    let got = net.recv(hub, PEERS * EACH as usize);
    let mut next = vec![0u32; PEERS];
    for g in &got {
        match parse(g) {
            Some((tag, seq)) if (tag as usize) < PEERS && next[tag as usize] == seq => {
                next[tag as usize] += 1
            }
            other => net.fail(format!("hub got {other:?} out of order or corrupt")),
        }
    }
    // Replies: one burst, routes interleaved.
    let replies: Vec<(RouteId, Vec<u8>)> = (0..EACH)
        .flat_map(|seq| {
            peers
                .iter()
                .enumerate()
                .map(move |(i, &(_, _, back))| (back, make(1000 + i as u32, seq, 40)))
        })
        .collect();
    let burst: Vec<TxPkt<'_>> = replies
        .iter()
        .map(|(r, b)| TxPkt {
            route: *r,
            hdr: &b[..8],
            data: &b[8..],
        })
        .collect();
    net.send_all(hub, &burst);
    for (i, &(p, _, _)) in peers.iter().enumerate() {
        let want: Vec<Vec<u8>> = (0..EACH).map(|s| make(1000 + i as u32, s, 40)).collect();
        let got = net.recv(p, EACH as usize);
        net.expect_exact(&got, &want, &format!("replies to peer {i}"));
    }

    // Many routes from one endpoint to one peer.
    let (p0, _, _) = peers[0];
    let routes: Vec<RouteId> = (0..32).map(|_| net.route(p0, hub)).collect();
    let mut distinct = routes.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() != routes.len() {
        net.fail("route_alloc returned a live route id twice");
    }
    let want: Vec<Vec<u8>> = (0..routes.len())
        .map(|i| make(5000 + i as u32, 0, 16))
        .collect();
    let burst: Vec<TxPkt<'_>> = routes
        .iter()
        .zip(&want)
        .map(|(&route, b)| TxPkt {
            route,
            hdr: b,
            data: &[],
        })
        .collect();
    net.send_all(p0, &burst);
    let got = net.recv(hub, want.len());
    // One packet per route: each arrives intact, in any order across the routes.
    net.expect_per_route(&got, &want, "32 routes to one peer");
}

/// Garbage from outside: empty, oversize and random input is dropped and counted in the
/// receiver's `rx_dropped` or delivered byte for byte (what a datagram transport does with
/// bytes it cannot judge), never delivered otherwise; the endpoint keeps working and its
/// routes do not fail.
pub fn garbage<F: Factory>(f: &mut F, seed: u64) {
    let mut rng = Rng(seed);
    let mut net = Net::new(f, "garbage", seed);
    let a = net.add(SPEC);
    let b = net.add(SPEC);
    let (ab, ba) = net.connect(a, b);
    // b talks to two peers: with one, a UDP socket is connected to it and the kernel drops
    // strangers' datagrams before the transport sees them.
    let c = net.add(SPEC);
    let (cb, _) = net.connect(c, b);
    let mut seq = 0u32;
    let mut legit = |net: &mut Net<'_, F>, from, to, route| {
        let p = make(1, seq, 64);
        seq += 1;
        net.send_one(from, route, &p);
        let got = net.recv(to, 1);
        net.expect_exact(&got, &[p], "a packet after garbage");
    };
    legit(&mut net, a, b, ab);
    legit(&mut net, c, b, cb);
    let max = net.ep(b).max_pkt_size();
    let mut kinds = vec![Garbage::Empty, Garbage::Oversize];
    for _ in 0..6 {
        let n = rng.range(1, 300.min(max));
        kinds.push(Garbage::Noise((0..n).map(|_| rng.next() as u8).collect()));
    }
    let mut injected = 0;
    for g in &kinds {
        let before = net.ep(b).stats().rx_dropped;
        let target = match net.eps.get(b).and_then(Option::as_ref) {
            Some(t) => t,
            None => net.fail("endpoint gone"),
        };
        match net.f.inject(target, g) {
            Ok(true) => injected += 1,
            Ok(false) => continue,
            Err(e) => net.fail(format!("inject: {e}")),
        }
        let what = match g {
            Garbage::Empty => "empty".to_string(),
            Garbage::Oversize => "oversize".to_string(),
            Garbage::Noise(n) => format!("{} bytes of noise", n.len()),
        };
        // Until the garbage is accounted for: counted, or delivered as it was.
        let mut delivered = false;
        net.until(&format!("{what} to be counted or delivered"), b, |net| {
            for p in net.take(b) {
                let same = match g {
                    Garbage::Empty => p.is_empty(),
                    Garbage::Oversize => false,
                    Garbage::Noise(n) => p == *n,
                };
                if !same {
                    net.fail(format!("{what} arrived as a {}-byte packet", p.len()));
                }
                delivered = true;
            }
            delivered || net.ep(b).stats().rx_dropped > before
        });
        legit(&mut net, a, b, ab);
        legit(&mut net, b, a, ba);
    }
    if injected == 0 {
        net.fail("the factory could inject no garbage at all");
    }
    legit(&mut net, c, b, cb);
    for i in [a, b, c] {
        if let Some(r) = net.ep(i).poll_route_failure() {
            net.fail(format!("route {r} failed because of garbage"));
        }
    }
}

/// A peer vanishes: a reliable transport reports every route to it exactly once (and then
/// takes nothing for them); a datagram transport does not hang or fail; other peers are
/// unaffected either way.
pub fn peer_loss<F: Factory>(f: &mut F, seed: u64) {
    let mut rng = Rng(seed);
    let mut net = Net::new(f, "peer_loss", seed);
    let a = net.add(SPEC);
    let b = net.add(SPEC);
    let c = net.add(SPEC);
    let (ab, _) = net.connect(a, b);
    let ab2 = net.route(a, b);
    let (ac, ca) = net.connect(a, c);
    let reliable = net.reliable(a);
    let mut seq = 0;
    for route in [ab, ab2] {
        let p = bodies(&mut rng, 1, seq, 5, 8, 300);
        seq += 5;
        let cut = cuts(&mut rng, &p);
        net.send_all(a, &pkts(route, &p, &cut));
        let got = net.recv(b, 5);
        net.expect_exact(&got, &p, "before the loss");
    }
    net.kill(b);
    let mut failed: Vec<RouteId> = Vec::new();
    let x = make(3, 0, 32);
    let probe = [
        TxPkt {
            route: ab,
            hdr: &x,
            data: &[],
        },
        TxPkt {
            route: ab2,
            hdr: &x,
            data: &[],
        },
    ];
    let start = Instant::now();
    net.until("the loss to be reported", a, |net| {
        net.send(a, &probe);
        while let Some(r) = net.ep(a).poll_route_failure() {
            failed.push(r);
        }
        if reliable {
            failed.len() >= 2
        } else {
            start.elapsed() > QUIET_TIME
        }
    });
    failed.sort_unstable();
    let mut want = vec![ab, ab2];
    want.sort_unstable();
    if reliable && failed != want {
        net.fail(format!("reported {failed:?}, want {want:?} once each"));
    }
    if failed.iter().any(|r| !want.contains(r)) {
        net.fail(format!(
            "reported {failed:?}, but only {want:?} lost their peer"
        ));
    }
    if reliable {
        if let Some(r) = net.ep(a).poll_route_failure() {
            net.fail(format!("route {r} reported twice"));
        }
        let n = net.send(a, &probe);
        if n != 0 {
            net.fail(format!("a failed route took {n} packets"));
        }
    }
    let p = make(4, 0, 100);
    net.send_one(a, ac, &p);
    let got = net.recv(c, 1);
    net.expect_exact(&got, std::slice::from_ref(&p), "to a surviving peer");
    net.send_one(c, ca, &p);
    let got = net.recv(a, 1);
    net.expect_exact(&got, &[p], "from a surviving peer");
}

/// `rx_burst` counts unreleased packets (again and again, same contents), `rx_pkt` out of
/// range is empty, `rx_release(k)` frees the first `k` (at most all), held packets stay intact
/// while more arrive, and no more than `rx_ring_size` are ever readable.
pub fn rx_release<F: Factory>(f: &mut F, seed: u64) {
    let mut rng = Rng(seed);
    let mut net = Net::new(f, "rx_release", seed);
    let spec = EndpointSpec {
        max_pkt_size: 1400,
        rx_ring_size: 16,
    };
    let (a, b, ab, _, max) = net.pair(spec);
    let ring = net.ep(b).rx_ring_size();
    let first = bodies(&mut rng, 1, 0, 10.min(ring), 8, max);
    let n = first.len();
    let c = cuts(&mut rng, &first);
    net.send_all(a, &pkts(ab, &first, &c));
    net.until("packets to be readable", b, |net| net.ep(b).rx_burst() >= n);
    let t = net.ep(b);
    let held: Vec<Vec<u8>> = (0..n).map(|i| t.rx_pkt(i).to_vec()).collect();
    let empty_ok = t.rx_pkt(n).is_empty() && t.rx_pkt(usize::MAX).is_empty();
    let again = t.rx_burst();
    let same = (0..n).all(|i| t.rx_pkt(i) == &held[i][..]);
    t.rx_release(0);
    let after_zero = t.rx_burst();
    t.rx_release(3);
    let after_three = t.rx_burst();
    let shifted = t.rx_pkt(0) == &held[3][..];
    net.expect_exact(&held, &first, "readable packets");
    if !empty_ok {
        net.fail("rx_pkt out of range is not empty");
    }
    if again != n || !same || after_zero != n {
        net.fail(format!(
            "rx_burst without release changed: {n} -> {again} -> {after_zero} (same: {same})"
        ));
    }
    if after_three != n - 3 || !shifted {
        net.fail(format!(
            "after rx_release(3) of {n}: {after_three} left, shifted: {shifted}"
        ));
    }
    // More arrives while 7 are held: those stay intact.
    let more = bodies(&mut rng, 1, n as u32, 5.min(ring - (n - 3)), 8, max);
    let c = cuts(&mut rng, &more);
    net.send_all(a, &pkts(ab, &more, &c));
    let total = n - 3 + more.len();
    net.until("more packets", b, |net| net.ep(b).rx_burst() >= total);
    let t = net.ep(b);
    let now: Vec<Vec<u8>> = (0..total).map(|i| t.rx_pkt(i).to_vec()).collect();
    t.rx_release(usize::MAX);
    let left = t.rx_burst();
    let want: Vec<Vec<u8>> = first[3..].iter().chain(&more).cloned().collect();
    net.expect_exact(&now, &want, "held packets while more arrived");
    if left != 0 {
        net.fail(format!("rx_release(usize::MAX) left {left}"));
    }

    // Twice the ring, sent in small bursts, nothing released meanwhile.
    let flood = bodies(&mut rng, 2, 0, 2 * ring, 8, 200);
    let c = cuts(&mut rng, &flood);
    let mut readable = 0;
    for chunk in pkts(ab, &flood, &c).chunks(4) {
        net.send(a, chunk);
        net.round();
        readable = readable.max(net.ep(b).rx_burst());
    }
    net.until("a full ring", b, |net| {
        readable = readable.max(net.ep(b).rx_burst());
        readable >= ring || !net.reliable(a)
    });
    let got = if net.reliable(a) {
        let got = net.recv(b, flood.len());
        net.expect_exact(&got, &flood, "twice the ring");
        got
    } else {
        let got = net.recv_quiet(b);
        net.expect_subsequence(&got, &flood, "twice the ring");
        got
    };
    if got.is_empty() {
        net.fail("nothing of twice the ring arrived");
    }
}

/// A freed route takes nothing (counted), double and unknown frees are ignored, a freed id
/// cannot be resolved, a new route works, and the other routes to the same peer are untouched.
pub fn route_free<F: Factory>(f: &mut F, seed: u64) {
    let mut net = Net::new(f, "route_free", seed);
    let a = net.add(SPEC);
    let b = net.add(SPEC);
    // `back` is b's end of r2: after r1 is freed, r1's far end may reach nothing (RC: its
    // queue pair's peer is gone), r2's ends must be untouched.
    let (r1, _) = net.connect(a, b);
    let (r2, back) = net.connect(a, b);
    let p = |s| make(1, s, 50);
    let one = |net: &mut Net<'_, F>, from, to, route, s| {
        let body = p(s);
        net.send_one(from, route, &body);
        let got = net.recv(to, 1);
        net.expect_exact(&got, &[body], &format!("packet {s}"));
    };
    one(&mut net, a, b, r1, 0);
    one(&mut net, a, b, r2, 1);
    net.ep(a).route_free(r1);
    let before = net.ep(a).stats().tx_dropped;
    let body = p(2);
    let n = net.send(
        a,
        &[TxPkt {
            route: r1,
            hdr: &body,
            data: &[],
        }],
    );
    if n != 0 || net.ep(a).stats().tx_dropped != before + 1 {
        net.fail(format!("a freed route took {n} packets"));
    }
    net.ep(a).route_free(r1);
    net.ep(a).route_free(1_000_000);
    let info = net.ep(b).routing_info();
    match net.ep(a).resolve(r1, &info) {
        Err(TransportError::UnknownRoute(r)) if r == r1 => {}
        other => net.fail(format!("resolving a freed route: {other:?}")),
    }
    one(&mut net, a, b, r2, 3);
    one(&mut net, b, a, back, 4);
    let r3 = net.route(a, b);
    one(&mut net, a, b, r3, 5);
    one(&mut net, b, a, back, 6);
}

/// Bad routing info is a `Resolve` error, unknown ids an `UnknownRoute` error; packets for
/// unresolved or unknown routes are not sent and are counted; an empty burst is fine.
pub fn resolve_errors<F: Factory>(f: &mut F, seed: u64) {
    let mut net = Net::new(f, "resolve_errors", seed);
    let a = net.add(SPEC);
    let b = net.add(SPEC);
    let (r, info_a) = net.ep(a).route_alloc().unwrap_or_else(|e| net.fail(e));
    for bad in [
        &[][..],
        &[1, 2, 3][..],
        &[0xff; crate::ROUTING_INFO_MAX][..],
    ] {
        let info = RoutingInfo::new(bad).unwrap_or_else(|| net.fail("routing info"));
        match net.ep(a).resolve(r, &info) {
            Err(TransportError::Resolve(_)) => {}
            other => net.fail(format!("resolve({bad:?}): {other:?}")),
        }
    }
    let info = net.ep(b).routing_info();
    match net.ep(a).resolve(999_999, &info) {
        Err(TransportError::UnknownRoute(999_999)) => {}
        other => net.fail(format!("resolve of an unknown route: {other:?}")),
    }
    let before = net.ep(a).stats().tx_dropped;
    let x = make(1, 0, 20);
    for route in [r, 999_999] {
        let n = net.send(
            a,
            &[TxPkt {
                route,
                hdr: &x,
                data: &[],
            }],
        );
        if n != 0 {
            net.fail(format!("route {route} (not resolved) took a packet"));
        }
    }
    if net.ep(a).stats().tx_dropped != before + 2 {
        net.fail("packets for unresolved routes were not counted as dropped");
    }
    if net.send(a, &[]) != 0 {
        net.fail("an empty burst sent something");
    }
    // The route still resolves properly afterwards (with a peer's route, as rpc does).
    net.complete(a, r, &info_a, b);
    net.send_one(a, r, &x);
    let got = net.recv(b, 1);
    net.expect_exact(&got, &[x], "after resolve errors");
}

/// Both ends send before either has polled (for connection-oriented transports: two connects
/// meet); everything arrives, in order, both ways.
pub fn simultaneous_start<F: Factory>(f: &mut F, seed: u64) {
    let mut rng = Rng(seed);
    let mut net = Net::new(f, "simultaneous_start", seed);
    for round in 0..4u32 {
        let a = net.add(SPEC);
        let b = net.add(SPEC);
        let (ab, ba) = net.connect(a, b);
        let from_a = bodies(&mut rng, 1, round * 100, 20, 8, 500);
        let from_b = bodies(&mut rng, 2, round * 100, 20, 8, 500);
        let ca = cuts(&mut rng, &from_a);
        let cb = cuts(&mut rng, &from_b);
        if round % 2 == 0 {
            net.send_all(a, &pkts(ab, &from_a, &ca));
            net.send_all(b, &pkts(ba, &from_b, &cb));
        } else {
            net.send_all(b, &pkts(ba, &from_b, &cb));
            net.send_all(a, &pkts(ab, &from_a, &ca));
        }
        let mut got_a = Vec::new();
        let mut got_b = Vec::new();
        net.until("both directions", a, |net| {
            got_a.extend(net.take(a));
            got_b.extend(net.take(b));
            got_a.len() >= 20 && got_b.len() >= 20
        });
        net.expect_exact(&got_b, &from_a, &format!("round {round} a->b"));
        net.expect_exact(&got_a, &from_b, &format!("round {round} b->a"));
        for i in [a, b] {
            if let Some(r) = net.ep(i).poll_route_failure() {
                net.fail(format!("route {r} failed"));
            }
        }
        net.kill(a);
        net.kill(b);
    }
}

/// `wait` returns after its timeout when nothing arrives, and a waiting receiver gets a packet.
pub fn wait_returns<F: Factory>(f: &mut F, seed: u64) {
    let mut net = Net::new(f, "wait_returns", seed);
    let a = net.add(SPEC);
    let b = net.add(SPEC);
    let (ab, _) = net.connect(a, b);
    let t = Instant::now();
    if let Err(e) = net.ep(b).wait(Some(Duration::from_millis(5))) {
        net.fail(format!("wait: {e}"));
    }
    if t.elapsed() > LIMIT {
        net.fail("wait(5 ms) took more than 20 s");
    }
    let x = make(1, 0, 30);
    net.send_one(a, ab, &x);
    let deadline = Instant::now() + LIMIT;
    let mut got: HashMap<u32, Vec<u8>> = HashMap::new();
    while got.is_empty() {
        if Instant::now() > deadline {
            net.fail("a waiting receiver never got the packet");
        }
        net.ep(a).rx_burst();
        if let Err(e) = net.ep(b).wait(Some(Duration::from_millis(20))) {
            net.fail(format!("wait: {e}"));
        }
        net.f.tick();
        for p in net.take(b) {
            got.insert(0, p);
        }
    }
    net.expect_exact(&got.into_values().collect::<Vec<_>>(), &[x], "after wait");
}

/// Factories for the transports of this crate.
pub mod factories {
    use std::io::{self, Write};
    use std::net::{TcpStream, UdpSocket};

    use super::{EndpointSpec, Factory, Garbage};
    use crate::sim::{SimFabric, SimTransport};
    use crate::tcp::{wire, TcpConfig, TcpTransport};
    use crate::udp::{UdpConfig, UdpTransport, MAX_UDP_PAYLOAD};
    use crate::TransportError;

    /// Endpoints on one simulated fabric without faults (virtual time: each tick is 1 µs).
    pub struct SimFactory {
        /// The fabric.
        pub fabric: SimFabric,
    }

    impl SimFactory {
        /// A fabric seeded with `seed`.
        pub fn new(seed: u64) -> Self {
            Self {
                fabric: SimFabric::new(seed),
            }
        }
    }

    impl Factory for SimFactory {
        type Endpoint = SimTransport;

        fn endpoint(&mut self, spec: &EndpointSpec) -> Result<SimTransport, TransportError> {
            Ok(self.fabric.transport(spec.max_pkt_size, spec.rx_ring_size))
        }

        fn tick(&mut self) {
            self.fabric.advance(1_000);
        }

        fn inject(&mut self, dst: &SimTransport, g: &Garbage) -> io::Result<bool> {
            let bytes = match g {
                Garbage::Empty => Vec::new(),
                Garbage::Oversize => vec![0x5A; crate::Transport::max_pkt_size(dst) + 1],
                Garbage::Noise(n) => n.clone(),
            };
            self.fabric.inject(dst.node_id(), &bytes);
            Ok(true)
        }
    }

    /// Kernel UDP endpoints on 127.0.0.1; garbage comes from a plain socket.
    #[derive(Default)]
    pub struct UdpFactory {
        /// Applied to every endpoint (`bind`, `max_pkt_size` and `rx_ring_size` are set from
        /// the spec).
        pub base: UdpConfig,
    }

    impl Factory for UdpFactory {
        type Endpoint = UdpTransport;

        fn endpoint(&mut self, spec: &EndpointSpec) -> Result<UdpTransport, TransportError> {
            UdpTransport::new(UdpConfig {
                bind: ([127, 0, 0, 1], 0).into(),
                max_pkt_size: spec.max_pkt_size.min(MAX_UDP_PAYLOAD),
                rx_ring_size: spec.rx_ring_size,
                ..self.base.clone()
            })
        }

        fn inject(&mut self, dst: &UdpTransport, g: &Garbage) -> io::Result<bool> {
            let bytes = match g {
                Garbage::Empty => Vec::new(),
                Garbage::Oversize if dst.config().max_pkt_size < MAX_UDP_PAYLOAD => {
                    vec![0x5A; dst.config().max_pkt_size + 1]
                }
                Garbage::Oversize => return Ok(false),
                Garbage::Noise(n) => n.clone(),
            };
            let s = UdpSocket::bind("127.0.0.1:0")?;
            s.send_to(&bytes, dst.local_addr())?;
            Ok(true)
        }
    }

    /// Kernel TCP endpoints on 127.0.0.1; garbage comes from raw connections (kept open until
    /// the factory is dropped, so the transport is the one that closes them).
    #[derive(Default)]
    pub struct TcpFactory {
        /// Applied to every endpoint (`bind`, `max_pkt_size` and `rx_ring_size` are set from
        /// the spec).
        pub base: TcpConfig,
        raw: Vec<TcpStream>,
    }

    impl TcpFactory {
        /// A factory whose endpoints start from `base`.
        pub fn with_config(base: TcpConfig) -> Self {
            Self {
                base,
                raw: Vec::new(),
            }
        }
    }

    impl Factory for TcpFactory {
        type Endpoint = TcpTransport;

        fn endpoint(&mut self, spec: &EndpointSpec) -> Result<TcpTransport, TransportError> {
            TcpTransport::new(TcpConfig {
                bind: ([127, 0, 0, 1], 0).into(),
                max_pkt_size: spec.max_pkt_size,
                rx_ring_size: spec.rx_ring_size,
                ..self.base.clone()
            })
        }

        fn inject(&mut self, dst: &TcpTransport, g: &Garbage) -> io::Result<bool> {
            let mut s = TcpStream::connect(dst.local_addr())?;
            // A valid hello from an identity of its own, then the bad frame.
            let hello = || {
                let me = wire::Ident {
                    addr: ([127, 0, 0, 1], 1 + self.raw.len() as u16).into(),
                    instance: 0xC0FF_EE00 + self.raw.len() as u64,
                };
                wire::Handshake::hello(me, dst.instance(), 1400).to_vec()
            };
            let max = crate::Transport::max_pkt_size(dst);
            let bytes = match g {
                Garbage::Empty => [hello(), wire::data_header(0).to_vec()].concat(),
                Garbage::Oversize => {
                    [hello(), wire::data_header(max + 1).to_vec(), vec![0x5A; 64]].concat()
                }
                Garbage::Noise(n) => n.clone(),
            };
            s.write_all(&bytes)?;
            self.raw.push(s);
            Ok(true)
        }
    }
}
