//! Stateful target for the rpc core: a client and a server `rpc::Rpc` on the simulated fabric
//! (virtual time, deterministic), a legitimate multi-packet request in flight, and raw
//! packets from the fuzz input injected at the server (or the client) with
//! `SimFabric::inject` while it runs.
//!
//! The input is a list of operations:
//! - `op & 3 == 0`: run the event loops for the next byte's worth of steps;
//! - otherwise inject one packet; the other bits of `op` patch it so that the fuzzer
//!   reaches the session logic behind the header checks:
//!   - bit 2: inject at the client instead of the server;
//!   - bit 3: set `dest_session` and `token` to the real ones of the destination's session;
//!   - bit 4: set `magic` and `version` to valid values and zero the reserved bytes;
//!   - bit 5: set `req_num` to the legitimate request's plus the next byte (as i8);
//!   - bit 6: set `msg_size` to the legitimate request's (server) or response's (client) size;
//!   - bit 7: the packet is a 32-byte header from the input plus a payload whose length is
//!     the one the receiver expects for (`msg_size`, `pkt_num`); else its length is the next
//!     two bytes (LE, mod 1100). Bytes past the end of the input are zero.
//!
//! Properties:
//! - nothing panics (the rpc crate, the handler, the fabric), with or without forged packets;
//! - no livelock: the event loops do not report work forever without virtual time moving;
//! - when no injected packet carried the right session and token for its destination (so
//!   every one of them must be dropped), the legitimate request completes exactly once, with
//!   the right response, and its handler ran exactly once.
//!
//! A packet carrying the right token can legitimately disturb the exchange (the token is the
//! only thing that authenticates a packet, as in eRPC): then only the first two properties
//! are checked.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use rpc::pkthdr::{PktHdr, PktType, HDR_SIZE, MAGIC, VERSION};
use rpc::{LocalHub, MsgBuf, Nexus, Rpc, RpcConfig, SessionId, SessionState, VirtualClock};
use transports::sim::{SimFabric, SimTransport};
use transports::{RouteId, RoutingInfo, Transport, TransportError, TransportKind};
use transports::{TransportStats, TxPkt};

const ECHO: u8 = 1;
const MTU: usize = 1024;
const DPP: usize = MTU - HDR_SIZE;
const RING: usize = 4096;
/// The legitimate request: 3 request packets, 3 response packets (CRs and RFRs both used).
const REQ_SIZE: usize = 2500;
const RESP_SIZE: u32 = 2300;
const LEGIT_ID: u64 = 0x5eed;
/// Virtual time the legitimate request has to complete in (rto is 5 ms).
const BUDGET_NS: u64 = 2_000_000_000;

/// A transport that records the headers of the packets it sends (to learn the real session
/// numbers and tokens in the discovery run).
struct Tap {
    inner: SimTransport,
    sent: Rc<RefCell<Vec<[u8; HDR_SIZE]>>>,
}

impl Transport for Tap {
    fn kind(&self) -> TransportKind {
        self.inner.kind()
    }
    fn routing_info(&self) -> RoutingInfo {
        self.inner.routing_info()
    }
    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        self.inner.route_alloc()
    }
    fn resolve(&mut self, route: RouteId, remote: &RoutingInfo) -> Result<(), TransportError> {
        self.inner.resolve(route, remote)
    }
    fn route_free(&mut self, route: RouteId) {
        self.inner.route_free(route)
    }
    fn max_pkt_size(&self) -> usize {
        self.inner.max_pkt_size()
    }
    fn rx_ring_size(&self) -> usize {
        self.inner.rx_ring_size()
    }
    fn tx_burst(&mut self, pkts: &[TxPkt<'_>]) -> Result<usize, TransportError> {
        let mut sent = self.sent.borrow_mut();
        for p in pkts {
            if let Ok(h) = p.hdr.try_into() {
                sent.push(h);
            }
        }
        drop(sent);
        self.inner.tx_burst(pkts)
    }
    fn rx_burst(&mut self) -> usize {
        self.inner.rx_burst()
    }
    fn rx_pkt(&self, i: usize) -> &[u8] {
        self.inner.rx_pkt(i)
    }
    fn rx_release(&mut self, n: usize) {
        self.inner.rx_release(n)
    }
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        self.inner.wait(timeout)
    }
    fn stats(&self) -> TransportStats {
        self.inner.stats()
    }
}

#[derive(Default)]
struct Server {
    runs: HashMap<u64, u32>,
    bad: u32,
}

fn pattern_byte(id: u64, i: usize) -> u8 {
    (id.wrapping_mul(0x9E37_79B9).wrapping_add(i as u64 * 7) >> 3) as u8
}

fn make_request(id: u64, size: usize, resp_size: u32) -> Vec<u8> {
    let mut v: Vec<u8> = (0..size.max(12)).map(|i| pattern_byte(id, i)).collect();
    v[..8].copy_from_slice(&id.to_le_bytes());
    v[8..12].copy_from_slice(&resp_size.to_le_bytes());
    v
}

fn parse_request(data: &[u8]) -> Option<(u64, u32)> {
    let id = u64::from_le_bytes(data.get(..8)?.try_into().ok()?);
    let resp = u32::from_le_bytes(data.get(8..12)?.try_into().ok()?);
    let ok = data
        .iter()
        .enumerate()
        .skip(12)
        .all(|(i, &b)| b == pattern_byte(id, i));
    // Bound what a forged request can make the handler allocate.
    (ok && resp <= 64 << 10).then_some((id, resp))
}

fn check(buf: &[u8], id: u64) -> bool {
    buf.iter()
        .enumerate()
        .all(|(i, &b)| b == pattern_byte(id, i))
}

struct Net {
    fabric: SimFabric,
    clock: VirtualClock,
    _hub: LocalHub,
    server: Rpc<Tap, Server>,
    client: Rpc<Tap, ()>,
    _nexus: (Nexus<Server>, Nexus<()>),
    server_sent: Rc<RefCell<Vec<[u8; HDR_SIZE]>>>,
    client_sent: Rc<RefCell<Vec<[u8; HDR_SIZE]>>>,
    session: SessionId,
}

fn config() -> RpcConfig {
    RpcConfig {
        seed: Some(42),
        max_msg_size: 256 << 10,
        buffer_cache_bytes: 1 << 20,
        ..RpcConfig::default()
    }
}

/// Builds the two Rpcs and connects the client to the server.
fn net() -> Net {
    let clock = VirtualClock::new();
    let fabric = SimFabric::with_clock(7, clock.reader());
    let hub = LocalHub::new();
    let sn: Nexus<Server> = Nexus::new_local(&hub, "server", 0).unwrap();
    sn.register(ECHO, |st: &mut Server, ctx, req| {
        match parse_request(req.data) {
            Some((id, resp_size)) => {
                *st.runs.entry(id).or_default() += 1;
                let resp: Vec<u8> = (0..resp_size as usize)
                    .map(|i| pattern_byte(!id, i))
                    .collect();
                ctx.respond_with(req.handle, &resp).unwrap();
            }
            None => {
                st.bad += 1;
                ctx.respond_with(req.handle, b"").unwrap();
            }
        }
    })
    .unwrap();
    let cn: Nexus<()> = Nexus::new_local(&hub, "client", 0).unwrap();
    let server_sent = Rc::new(RefCell::new(Vec::new()));
    let client_sent = Rc::new(RefCell::new(Vec::new()));
    let st = Tap {
        inner: fabric.transport(MTU, RING),
        sent: server_sent.clone(),
    };
    let ct = Tap {
        inner: fabric.transport(MTU, RING),
        sent: client_sent.clone(),
    };
    let mut server = Rpc::new(&sn, 0, st, Server::default(), config()).unwrap();
    let mut client = Rpc::new(&cn, 0, ct, (), config()).unwrap();
    server.use_virtual_clock(clock.clone());
    client.use_virtual_clock(clock.clone());
    let session = client.create_session("local:server", 0).unwrap();
    let mut n = Net {
        fabric,
        clock,
        _hub: hub,
        server,
        client,
        _nexus: (sn, cn),
        server_sent,
        client_sent,
        session,
    };
    let mut guard = Guard::default();
    while n.client.session_state(session) == Some(SessionState::Connecting) {
        step(&mut n, &mut guard);
    }
    assert_eq!(
        n.client.session_state(session),
        Some(SessionState::Connected)
    );
    n
}

/// Detects a livelock: event loops that report work forever while time stands still.
#[derive(Default)]
struct Guard {
    busy_steps: u32,
}

/// Steps both Rpcs once; when neither had work, jumps virtual time to the next event.
fn step(n: &mut Net, g: &mut Guard) {
    let mut work = n.server.run_once();
    work |= n.client.run_once();
    if work {
        g.busy_steps += 1;
        assert!(
            g.busy_steps < 200_000,
            "livelock: 200000 busy steps without time moving"
        );
    } else {
        g.busy_steps = 0;
        let timer = n.server.next_timer_ns().min(n.client.next_timer_ns());
        let next = n.fabric.next_delivery().map_or(timer, |d| d.min(timer));
        n.clock.advance_to(next.max(n.fabric.now_ns() + 1));
    }
}

/// What the discovery run learns: the real headers of both directions.
#[derive(Clone, Copy, Debug)]
struct Known {
    /// (dest_session, token) of packets to the server.
    to_server: (u32, u32),
    /// (dest_session, token) of packets to the client.
    to_client: (u32, u32),
    /// req_num of the legitimate request.
    req_num: u64,
}

fn hdr_fields(h: &[u8]) -> (u32, u32, u64) {
    let session = u32::from_le_bytes(h[4..8].try_into().unwrap());
    let token = u32::from_le_bytes(h[24..28].try_into().unwrap());
    let req_num = u64::from_le_bytes(h[16..24].try_into().unwrap());
    (session, token, req_num)
}

/// Runs the legitimate request once, without injection, and records the headers.
fn discover() -> Known {
    let mut n = net();
    let (done, _) = run_legit(&mut n, false);
    assert!(done, "discovery: the legitimate request did not complete");
    let c = n.client_sent.borrow()[0];
    let s = n.server_sent.borrow()[0];
    let (cs, ct, req_num) = hdr_fields(&c);
    let (ss, st, _) = hdr_fields(&s);
    assert_eq!(PktHdr::parse(&c).unwrap().0.pkt_type, PktType::Req);
    Known {
        to_server: (cs, ct),
        to_client: (ss, st),
        req_num,
    }
}

/// Enqueues the legitimate request and runs until it completes or the budget is spent.
/// Returns (completed correctly, completions seen).
fn run_legit(n: &mut Net, already_enqueued: bool) -> (bool, u32) {
    if !already_enqueued {
        enqueue_legit(n);
    }
    let deadline = n.fabric.now_ns() + BUDGET_NS;
    let mut g = Guard::default();
    let mut ok = false;
    let mut seen = 0;
    while n.fabric.now_ns() < deadline && seen == 0 {
        step(n, &mut g);
        while let Some(c) = n.client.poll_completion() {
            seen += 1;
            assert_eq!(c.tag, LEGIT_ID);
            if let Ok(resp) = &c.result {
                ok = resp.len() == RESP_SIZE as usize && check(resp.as_slice(), !LEGIT_ID);
            }
        }
    }
    (ok, seen)
}

fn enqueue_legit(n: &mut Net) {
    let m = MsgBuf::from_slice(&make_request(LEGIT_ID, REQ_SIZE, RESP_SIZE));
    n.client
        .enqueue_request(n.session, ECHO, m, LEGIT_ID)
        .unwrap();
}

fn known() -> Known {
    static K: OnceLock<Known> = OnceLock::new();
    *K.get_or_init(discover)
}

/// Reads the fuzz input front to back; zeros past its end.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        let take = n.min(self.0.len());
        let mut v = self.0[..take].to_vec();
        self.0 = &self.0[take..];
        v.resize(n, 0);
        v
    }
}

fn pkt_len(size: usize, i: u32) -> usize {
    size.saturating_sub((i as usize).saturating_mul(DPP))
        .min(DPP)
}

fuzz_target!(|data: &[u8]| {
    let k = known();
    let mut n = net();
    let server_node = n.server.transport().inner.node_id();
    let client_node = n.client.transport().inner.node_id();
    enqueue_legit(&mut n);
    let mut input = Input(data);
    let mut authentic = false;
    let mut g = Guard::default();
    let mut injected = 0;
    while !input.0.is_empty() && injected < 256 {
        let op = input.byte();
        if op & 3 == 0 {
            for _ in 0..input.byte() {
                step(&mut n, &mut g);
            }
            continue;
        }
        injected += 1;
        let to_client = op & 4 != 0;
        let mut pkt = input.bytes(HDR_SIZE);
        let (session, token) = if to_client { k.to_client } else { k.to_server };
        if op & 8 != 0 {
            pkt[4..8].copy_from_slice(&session.to_le_bytes());
            pkt[24..28].copy_from_slice(&token.to_le_bytes());
        }
        if op & 16 != 0 {
            pkt[0] = MAGIC;
            pkt[1] = VERSION;
            pkt[29..32].fill(0);
        }
        if op & 32 != 0 {
            let delta = input.byte() as i8 as i64;
            let r = k.req_num.wrapping_add_signed(delta);
            pkt[16..24].copy_from_slice(&r.to_le_bytes());
        }
        if op & 64 != 0 {
            let size = if to_client {
                RESP_SIZE as usize
            } else {
                REQ_SIZE
            };
            pkt[12..16].copy_from_slice(&(size as u32).to_le_bytes());
        }
        let payload_len = if op & 128 != 0 {
            let size = u32::from_le_bytes(pkt[12..16].try_into().unwrap()) as usize;
            let pkt_num = u32::from_le_bytes(pkt[8..12].try_into().unwrap());
            // Response packet k ≥ 1 carries pkt_num = n_req - 1 + k.
            let i = if to_client {
                let n_req = REQ_SIZE.div_ceil(DPP) as u32;
                pkt_num.saturating_sub(n_req - 1)
            } else {
                pkt_num
            };
            pkt_len(size, i)
        } else {
            let lo = input.byte() as usize;
            let hi = input.byte() as usize;
            (lo | hi << 8) % 1100
        };
        pkt.extend(input.bytes(payload_len.min(MTU)));
        if let Ok((info, _)) = PktHdr::parse(&pkt) {
            if (info.dest_session, info.token) == (session, token) {
                authentic = true;
            }
        }
        n.fabric
            .inject(if to_client { client_node } else { server_node }, &pkt);
    }
    let (ok, seen) = run_legit(&mut n, true);
    if !authentic {
        assert_eq!(seen, 1, "legitimate request did not complete");
        assert!(ok, "legitimate request completed with a wrong response");
        assert_eq!(n.server.state().runs.get(&LEGIT_ID), Some(&1));
        assert_eq!(n.server.state().bad, 0);
    }
    // Either way, keep the loops running a little: late packets, timers, retransmissions.
    let mut g = Guard::default();
    for _ in 0..64 {
        step(&mut n, &mut g);
        while n.client.poll_completion().is_some() {}
    }
});
