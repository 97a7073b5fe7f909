//! A harness that drives two protocol endpoints (`rpc::proto::Endpoint`) against each other
//! directly, in virtual time, in the manner of quinn-proto's test `Pair`: a client and a
//! server node, the two directed links between them as queues that a test can look into and
//! edit (drop, duplicate, delay, hold back and release later — datapath packets and
//! session-management messages alike), and a clock that jumps to the next thing that happens.
//! No threads, sockets or sleeps: a run is a function of its inputs and seeds.
//!
//! Each node also plays its Nexus: it answers liveness pings from the table of live session
//! ends built from its endpoint's `SessionUp` / `SessionDown` / `SessionReset` events (with
//! `rpc::proto::answer_ping`, as the runtime does), answers for an Rpc that does not exist,
//! and plays its transport: it allocates, resolves and frees routes when asked and checks that
//! every packet goes out on a route that is allocated, resolved and not freed.
//!
//! This file is self-contained so that the stateful fuzz target can include it too.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};

use rpc::pkthdr::{PktHdr, PktType};
use rpc::proto::{answer_ping, Completion, Endpoint, Event, LocalEnd, NewRequest, ReqHandle};
use rpc::sm::{SmAddr, SmMsg, SmStatus, SmType};
use rpc::{MsgBuf, RpcConfig, RpcError, SessionId};
use transports::rng::SplitMix64;
use transports::{RouteId, RoutingInfo, TransportKind};

/// The client node's SM address.
pub const CLIENT_ADDR: SmAddr = SmAddr::Local(1);
/// The server node's SM address.
pub const SERVER_ADDR: SmAddr = SmAddr::Local(2);
/// The server's Rpc id (the client connects to it).
pub const SERVER_RPC: u8 = 0;
/// Packet size of both nodes' transports.
pub const MTU: usize = 1024;

/// Something carried by a link.
#[derive(Clone, Debug)]
pub enum Wire {
    /// A datapath packet (header and payload).
    Data(Vec<u8>),
    /// A session-management message, with the SM address of its sender.
    Sm(SmAddr, SmMsg),
}

impl Wire {
    /// The SM message type, if this is an SM message.
    pub fn sm_type(&self) -> Option<SmType> {
        match self {
            Wire::Sm(_, m) => Some(m.msg_type),
            Wire::Data(_) => None,
        }
    }

    /// The packet type, if this is a valid datapath packet.
    pub fn pkt_type(&self) -> Option<PktType> {
        match self {
            Wire::Data(b) => PktHdr::parse(b).ok().map(|(i, _)| i.pkt_type),
            Wire::Sm(..) => None,
        }
    }

    pub fn is_sm(&self, t: SmType) -> bool {
        self.sm_type() == Some(t)
    }

    pub fn is_pkt(&self, t: PktType) -> bool {
        self.pkt_type() == Some(t)
    }
}

/// What a link's filter decides for one thing put on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Deliver after the link's delay.
    Deliver,
    /// Lose it.
    Drop,
    /// Deliver it twice.
    Duplicate,
    /// Deliver it after the link's delay plus this many ns.
    Delay(u64),
    /// Keep it in the link's `held` list until the test releases it.
    Hold,
}

/// A filter deciding the fate of each thing put on a link.
pub type Filter = Box<dyn FnMut(&Wire) -> Fate>;

/// Random faults of a link (seeded).
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    pub drop: f64,
    pub duplicate: f64,
    /// Extra random delay, uniform in `0..=reorder_ns`.
    pub reorder_ns: u64,
    /// Whether SM messages suffer the faults too (else only datapath packets).
    pub sm_too: bool,
}

/// One direction between the nodes.
pub struct Link {
    /// One-way delay (ns).
    pub delay: u64,
    /// Things in flight: (arrival time, sequence number, thing).
    pub in_flight: Vec<(u64, u64, Wire)>,
    /// Things a filter held back; release them with [`Pair::release`].
    pub held: Vec<Wire>,
    pub filter: Option<Filter>,
    pub faults: Faults,
    rng: SplitMix64,
    /// Everything put on the link (before filters and faults): (time, thing).
    pub log: Vec<(u64, Wire)>,
}

impl Link {
    fn new(seed: u64) -> Self {
        Self {
            delay: 1_000,
            in_flight: Vec::new(),
            held: Vec::new(),
            filter: None,
            faults: Faults::default(),
            rng: SplitMix64::new(seed),
            log: Vec::new(),
        }
    }

    fn put(&mut self, now: u64, seq: &mut u64, w: Wire) {
        self.log.push((now, w.clone()));
        let mut fate = match self.filter.as_mut() {
            Some(f) => f(&w),
            None => Fate::Deliver,
        };
        let faulty = matches!(w, Wire::Data(_)) || self.faults.sm_too;
        if fate == Fate::Deliver && faulty {
            if self.rng.chance(self.faults.drop) {
                fate = Fate::Drop;
            } else if self.rng.chance(self.faults.duplicate) {
                fate = Fate::Duplicate;
            }
        }
        let copies = match fate {
            Fate::Drop => 0,
            Fate::Hold => {
                self.held.push(w);
                return;
            }
            Fate::Duplicate => 2,
            Fate::Deliver | Fate::Delay(_) => 1,
        };
        let extra = if let Fate::Delay(d) = fate { d } else { 0 };
        for _ in 0..copies {
            let jitter = match self.faults.reorder_ns {
                0 => 0,
                r if faulty => self.rng.next_u64() % (r + 1),
                _ => 0,
            };
            *seq += 1;
            self.in_flight
                .push((now + self.delay + extra + jitter, *seq, w.clone()));
        }
    }

    /// How many SM messages of type `t` were put on the link.
    pub fn sm_count(&self, t: SmType) -> usize {
        self.log.iter().filter(|(_, w)| w.is_sm(t)).count()
    }

    /// How many datapath packets of type `t` were put on the link.
    pub fn pkt_count(&self, t: PktType) -> usize {
        self.log.iter().filter(|(_, w)| w.is_pkt(t)).count()
    }
}

/// What a node's handler does with a request: `Some(response)` answers now, `None` keeps
/// the request in [`Node::held`] for the test to answer.
pub type Handler = Box<dyn FnMut(u8, &[u8]) -> Option<Vec<u8>>>;

/// The routes a node's transport has made.
#[derive(Default)]
pub struct Routes {
    next: RouteId,
    pub allocated: HashSet<RouteId>,
    pub resolved: HashSet<RouteId>,
    pub freed: HashSet<RouteId>,
    /// Routes reported failed to the endpoint ([`Pair::fail_routes`]); nothing may be sent
    /// on them, and they are never resolved again.
    pub failed: HashSet<RouteId>,
    /// Make the next allocations fail.
    pub fail_alloc: bool,
    /// Make the next resolutions fail.
    pub fail_resolve: bool,
}

impl Routes {
    /// Routes allocated and not freed.
    pub fn open(&self) -> usize {
        self.allocated.len() - self.freed.len()
    }
}

/// One endpoint with its stand-ins for the Nexus and the transport.
pub struct Node {
    pub ep: Endpoint,
    pub addr: SmAddr,
    /// The routing info its transport hands out.
    pub routing: u8,
    /// The endpoint runs (false: paused — input waits for it, its Nexus still answers).
    pub running: bool,
    /// Its Nexus has this Rpc (false: the Rpc is gone; the Nexus answers `NoSuchRpc`).
    pub rpc_exists: bool,
    /// The process exists (false: everything sent to it is lost, nothing answers).
    pub alive: bool,
    /// The live table of its Nexus: session → token.
    pub live: HashMap<SessionId, u32>,
    pub routes: Routes,
    pub handler: Handler,
    /// Requests the handler kept.
    pub held: Vec<ReqHandle>,
    /// How often a handler ran for each request payload.
    pub runs: HashMap<Vec<u8>, u32>,
    pub completions: Vec<Completion>,
    /// Liveness events per session: (up, down, reset).
    pub session_events: HashMap<SessionId, (u32, u32, u32)>,
}

fn echo() -> Handler {
    Box::new(|_, data| Some(data.to_vec()))
}

impl Node {
    fn new(ep: Endpoint, addr: SmAddr, routing: u8) -> Self {
        Self {
            ep,
            addr,
            routing,
            running: true,
            rpc_exists: true,
            alive: true,
            live: HashMap::new(),
            routes: Routes::default(),
            handler: echo(),
            held: Vec::new(),
            runs: HashMap::new(),
            completions: Vec::new(),
            session_events: HashMap::new(),
        }
    }

    /// Takes the completions collected so far.
    pub fn take_completions(&mut self) -> Vec<Completion> {
        std::mem::take(&mut self.completions)
    }

    /// The (up, down, reset) events seen for `session`.
    pub fn events_of(&self, session: SessionId) -> (u32, u32, u32) {
        self.session_events
            .get(&session)
            .copied()
            .unwrap_or_default()
    }

    /// Answers a held request.
    pub fn respond(&mut self, h: ReqHandle, data: &[u8]) -> Result<(), RpcError> {
        let m = self.ep.msg_from(data);
        self.ep.respond(h, m, rpc::pkthdr::RespStatus::Ok)
    }
}

/// The endpoint of a node with `cfg` on a sim-kind transport.
pub fn endpoint(cfg: RpcConfig, rpc_id: u8, ring: usize, seed: u64) -> Endpoint {
    endpoint_on(cfg, rpc_id, ring, seed, TransportKind::Sim)
}

/// The endpoint of a node with `cfg` on a transport of `kind`, reliable if transports of
/// that kind are (TCP, InfiniBand RC).
pub fn endpoint_on(
    cfg: RpcConfig,
    rpc_id: u8,
    ring: usize,
    seed: u64,
    kind: TransportKind,
) -> Endpoint {
    let local = LocalEnd {
        rpc_id,
        transport: kind,
        max_pkt_size: MTU,
        rx_ring_size: ring,
        reliable: matches!(kind, TransportKind::Tcp | TransportKind::InfinibandRc),
    };
    Endpoint::new(cfg, local, seed).expect("valid endpoint configuration")
}

/// Which node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// Two nodes and the links between them.
pub struct Pair {
    /// Virtual time (ns).
    pub now: u64,
    pub client: Node,
    pub server: Node,
    /// Client → server.
    pub to_server: Link,
    /// Server → client.
    pub to_client: Link,
    seq: u64,
    /// Steps at one time with work done, to catch a livelock.
    busy_at_now: u32,
}

/// Virtual time after which a run is considered stuck.
pub const STUCK_NS: u64 = 3_600_000_000_000;

impl Pair {
    /// A pair of endpoints with these configurations (4096-entry rings), links seeded with
    /// `seed`.
    pub fn new(client: RpcConfig, server: RpcConfig, seed: u64) -> Self {
        Self::with_endpoints(
            endpoint(client, 0, 4096, seed ^ 0xC1),
            endpoint(server, SERVER_RPC, 4096, seed ^ 0x5E),
            seed,
        )
    }

    /// A pair of endpoints on a reliable transport (TCP kind): no go-back-N; route
    /// failures come from [`Pair::fail_routes`]. The links are lossless unless a test says
    /// otherwise.
    pub fn reliable(client: RpcConfig, server: RpcConfig, seed: u64) -> Self {
        Self::with_endpoints(
            endpoint_on(client, 0, 4096, seed ^ 0xC1, TransportKind::Tcp),
            endpoint_on(server, SERVER_RPC, 4096, seed ^ 0x5E, TransportKind::Tcp),
            seed,
        )
    }

    /// A pair of the given endpoints.
    pub fn with_endpoints(client: Endpoint, server: Endpoint, seed: u64) -> Self {
        Self {
            now: 0,
            client: Node::new(client, CLIENT_ADDR, 1),
            server: Node::new(server, SERVER_ADDR, 2),
            to_server: Link::new(seed.wrapping_mul(3) | 1),
            to_client: Link::new(seed.wrapping_mul(5) | 1),
            seq: 0,
            busy_at_now: 0,
        }
    }

    pub fn node(&mut self, side: Side) -> &mut Node {
        match side {
            Side::Client => &mut self.client,
            Side::Server => &mut self.server,
        }
    }

    /// Releases everything held on the link towards `side`, to arrive after the link delay.
    pub fn release(&mut self, towards: Side) {
        let now = self.now;
        let link = match towards {
            Side::Client => &mut self.to_client,
            Side::Server => &mut self.to_server,
        };
        for w in std::mem::take(&mut link.held) {
            self.seq += 1;
            link.in_flight.push((now + link.delay, self.seq, w));
        }
    }

    /// The connection of `side` to its peer breaks, as a reliable transport reports it: every
    /// route of that node that is resolved and not freed fails and is reported to its
    /// endpoint (`handle_route_failure`), in route order. Returns the routes reported.
    pub fn fail_routes(&mut self, side: Side) -> Vec<RouteId> {
        let now = self.now;
        let node = self.node(side);
        let mut failed: Vec<RouteId> = node
            .routes
            .resolved
            .iter()
            .copied()
            .filter(|r| !node.routes.freed.contains(r) && !node.routes.failed.contains(r))
            .collect();
        failed.sort_unstable();
        for &r in &failed {
            node.routes.failed.insert(r);
            node.ep.handle_route_failure(now, r);
        }
        failed
    }

    /// Puts a raw datapath packet on the link towards `side` (as if from the wire).
    pub fn inject(&mut self, towards: Side, pkt: Vec<u8>) {
        let link = match towards {
            Side::Client => &mut self.to_client,
            Side::Server => &mut self.to_server,
        };
        self.seq += 1;
        link.in_flight.push((self.now, self.seq, Wire::Data(pkt)));
    }

    /// Puts a raw SM message on the link towards `side`, from the other side's address.
    pub fn inject_sm(&mut self, towards: Side, msg: SmMsg) {
        let (link, from) = match towards {
            Side::Client => (&mut self.to_client, SERVER_ADDR),
            Side::Server => (&mut self.to_server, CLIENT_ADDR),
        };
        self.seq += 1;
        link.in_flight
            .push((self.now, self.seq, Wire::Sm(from, msg)));
    }

    /// Drives both nodes at the current time; returns whether anything happened.
    pub fn step(&mut self) -> bool {
        let now = self.now;
        let mut seq = self.seq;
        let a = drive(
            &mut self.client,
            now,
            &mut self.to_client,
            &mut self.to_server,
            &mut seq,
            self.server.routing,
        );
        let b = drive(
            &mut self.server,
            now,
            &mut self.to_server,
            &mut self.to_client,
            &mut seq,
            self.client.routing,
        );
        self.seq = seq;
        let work = a || b;
        if work {
            self.busy_at_now += 1;
            assert!(self.busy_at_now < 100_000, "livelock at t = {now} ns");
        }
        work
    }

    /// When the next thing happens: an arrival a node can take, or a timer of a running node.
    pub fn next_event(&mut self) -> Option<u64> {
        let mut next: Option<u64> = None;
        let mut consider = |t: u64| next = Some(next.map_or(t, |n| n.min(t)));
        for (node, link) in [
            (&mut self.client, &self.to_client),
            (&mut self.server, &self.to_server),
        ] {
            for (at, _, w) in &link.in_flight {
                if deliverable(node, w) {
                    consider(*at);
                }
            }
            if node.running && node.alive && node.rpc_exists {
                if let Some(t) = node.ep.poll_timeout() {
                    consider(t);
                }
            }
        }
        next
    }

    /// Steps until nothing happens at the current time, then moves time to the next event;
    /// returns false if nothing is left to happen (or it is after `limit`).
    pub fn advance(&mut self, limit: u64) -> bool {
        while self.step() {}
        match self.next_event() {
            Some(t) if t <= limit => {
                if t > self.now {
                    self.now = t;
                    self.busy_at_now = 0;
                }
                true
            }
            _ => false,
        }
    }

    /// Runs until `cond` holds; false if it does not before virtual time `limit` or nothing
    /// is left to happen.
    pub fn run_until(&mut self, limit: u64, mut cond: impl FnMut(&mut Pair) -> bool) -> bool {
        assert!(limit < STUCK_NS, "limit past the stuck bound");
        loop {
            if cond(self) {
                return true;
            }
            if self.step() {
                continue;
            }
            if !self.advance(limit) {
                return cond(self);
            }
        }
    }

    /// Runs everything that happens until virtual time `until` (then `now = until`).
    pub fn run_to(&mut self, until: u64) {
        while self.advance(until) {}
        self.now = self.now.max(until);
        while self.step() {}
    }

    /// Runs for `ns` of virtual time.
    pub fn run_for(&mut self, ns: u64) {
        let until = self.now + ns;
        self.run_to(until);
    }

    /// Opens a session from the client and runs until it is connected (panics otherwise).
    pub fn connect(&mut self) -> SessionId {
        let s = self.begin_connect();
        let limit = self.now + 10_000_000_000;
        let ok = self.run_until(limit, |p| {
            p.client.ep.session_state(s) != Some(rpc::SessionState::Connecting)
        });
        assert!(ok, "connect did not finish");
        assert_eq!(
            self.client.ep.session_state(s),
            Some(rpc::SessionState::Connected)
        );
        s
    }

    /// Starts opening a session (the route request is carried out at the next step).
    pub fn begin_connect(&mut self) -> SessionId {
        self.client
            .ep
            .connect(self.now, SERVER_ADDR, SERVER_RPC)
            .expect("the client admits the session")
    }

    /// Enqueues a request on the client with the configured default deadline.
    pub fn enqueue(&mut self, s: SessionId, data: &[u8], tag: u64) -> Result<(), RpcError> {
        let deadline = self.client.ep.config().default_deadline;
        self.enqueue_with_deadline(s, data, tag, deadline)
    }

    /// Enqueues a request (type 1) on the client.
    pub fn enqueue_with_deadline(
        &mut self,
        s: SessionId,
        data: &[u8],
        tag: u64,
        deadline: Option<std::time::Duration>,
    ) -> Result<(), RpcError> {
        let req = self.client.ep.msg_from(data);
        let r = NewRequest {
            req_type: 1,
            req,
            tag,
            deadline,
            internal: false,
        };
        self.client.ep.enqueue_request(self.now, s, r)
    }

    /// Runs until the client has `n` completions (panics after `budget_ns` of virtual time).
    pub fn completions(&mut self, n: usize, budget_ns: u64) -> Vec<Completion> {
        let limit = self.now + budget_ns;
        let ok = self.run_until(limit, |p| p.client.completions.len() >= n);
        assert!(
            ok,
            "only {} of {n} completions within {budget_ns} ns",
            self.client.completions.len()
        );
        self.client.take_completions()
    }
}

/// Whether `node` takes `w` now (a paused Rpc leaves input waiting, but its Nexus answers
/// pings; a dead process takes everything and answers nothing).
fn deliverable(node: &Node, w: &Wire) -> bool {
    if !node.alive || !node.rpc_exists {
        return true;
    }
    node.running
        || matches!(w, Wire::Sm(_, m) if matches!(m.msg_type, SmType::ClientPing | SmType::ServerPing))
}

/// Drives one node at `now`: input from `inbox`, output to `outbox`. `peer_routing` is the
/// routing info of the other node (what its routes resolve to).
fn drive(
    node: &mut Node,
    now: u64,
    inbox: &mut Link,
    outbox: &mut Link,
    seq: &mut u64,
    peer_routing: u8,
) -> bool {
    let mut work = false;
    // Input, in arrival order.
    let mut due: Vec<(u64, u64, Wire)> = Vec::new();
    let mut keep = Vec::new();
    for item in inbox.in_flight.drain(..) {
        if item.0 <= now && deliverable(node, &item.2) {
            due.push(item);
        } else {
            keep.push(item);
        }
    }
    inbox.in_flight = keep;
    due.sort_by_key(|&(at, s, _)| (at, s));
    for (_, _, w) in due {
        work = true;
        if !node.alive {
            continue;
        }
        match w {
            Wire::Data(b) => {
                if node.rpc_exists {
                    node.ep.handle_packet(now, &b);
                }
            }
            Wire::Sm(from, m) => match m.msg_type {
                SmType::ClientPing | SmType::ServerPing => {
                    let (_, session, _) = rpc::proto::ping_target(&m);
                    let token = node.live.get(&session).copied();
                    let pong = answer_ping(&m, node.rpc_exists, token);
                    outbox.put(now, seq, Wire::Sm(node.addr.clone(), pong));
                }
                _ if !node.rpc_exists => {
                    let answer = match m.msg_type {
                        SmType::ConnectReq => Some(m.reply(SmStatus::NoSuchRpc)),
                        SmType::DisconnectReq => Some(m.reply(SmStatus::InvalidSession)),
                        _ => None,
                    };
                    if let Some(a) = answer {
                        outbox.put(now, seq, Wire::Sm(node.addr.clone(), a));
                    }
                }
                _ => node.ep.handle_sm(now, from, m),
            },
        }
    }
    if !node.alive || !node.rpc_exists || !node.running {
        return work;
    }
    if node.ep.poll_timeout().is_some_and(|t| t <= now) {
        node.ep.handle_timeout(now);
    }
    // Events.
    while let Some(ev) = node.ep.poll_event() {
        work = true;
        handle_event(node, now, ev, peer_routing);
    }
    // Packets.
    let Node { ep, routes, .. } = node;
    ep.poll_transmits(|pkts| {
        for p in pkts {
            assert!(
                routes.resolved.contains(&p.route) && !routes.freed.contains(&p.route),
                "packet on route {} that is not open and resolved",
                p.route
            );
            assert!(
                !routes.failed.contains(&p.route),
                "packet on route {} after its failure was reported",
                p.route
            );
            let mut b = p.hdr.to_vec();
            b.extend_from_slice(p.data);
            assert!(b.len() <= MTU, "packet larger than the MTU");
            outbox.put(now, seq, Wire::Data(b));
            work = true;
        }
    });
    // SM messages.
    while let Some(t) = node.ep.poll_sm() {
        work = true;
        outbox.put(now, seq, Wire::Sm(node.addr.clone(), t.msg));
    }
    work
}

fn handle_event(node: &mut Node, now: u64, ev: Event, peer_routing: u8) {
    match ev {
        Event::Request(h) => {
            let Some((req_type, buf)) = node.ep.take_request(h) else {
                return;
            };
            *node.runs.entry(buf.to_vec()).or_default() += 1;
            let answer = (node.handler)(req_type, buf.as_slice());
            node.ep.restore_request(h, buf);
            match answer {
                Some(resp) => {
                    let m = node.ep.msg_from(&resp);
                    node.ep
                        .respond(h, m, rpc::pkthdr::RespStatus::Ok)
                        .expect("a fresh handle answers");
                }
                None => node.held.push(h),
            }
        }
        Event::Completion { completion, .. } => node.completions.push(completion),
        Event::AllocRoute { op } => {
            let r = &mut node.routes;
            let route = if r.fail_alloc {
                None
            } else {
                r.next += 1;
                r.allocated.insert(r.next);
                RoutingInfo::new(&[node.routing]).map(|info| (r.next, info))
            };
            node.ep.route_allocated(now, op, route);
        }
        Event::ResolveRoute { op, route, info } => {
            let r = &mut node.routes;
            assert!(
                r.allocated.contains(&route) && !r.freed.contains(&route),
                "resolve of route {route} that is not open"
            );
            assert!(
                !r.failed.contains(&route),
                "resolve of route {route} after its failure was reported"
            );
            let ok = !r.fail_resolve && info.as_bytes() == [peer_routing];
            if ok {
                r.resolved.insert(route);
            }
            node.ep.route_resolved(now, op, ok);
        }
        Event::FreeRoute { route } => {
            let r = &mut node.routes;
            assert!(
                r.allocated.contains(&route),
                "free of unknown route {route}"
            );
            assert!(r.freed.insert(route), "route {route} freed twice");
        }
        Event::SessionUp { session, token } => {
            assert!(
                node.live.insert(session, token).is_none(),
                "session {session} up twice"
            );
            node.session_events.entry(session).or_default().0 += 1;
        }
        Event::SessionDown { session } => {
            assert!(node.live.remove(&session).is_some(), "down without up");
            node.session_events.entry(session).or_default().1 += 1;
        }
        Event::SessionReset { session } => {
            assert!(node.live.remove(&session).is_some(), "reset without up");
            node.session_events.entry(session).or_default().2 += 1;
        }
    }
}

/// A filter that gives the first `n` things matching `pred` the fate `fate`, and lets
/// everything else through.
pub fn first(n: usize, pred: impl Fn(&Wire) -> bool + 'static, fate: Fate) -> Filter {
    let mut left = n;
    Box::new(move |w| {
        if left > 0 && pred(w) {
            left -= 1;
            fate
        } else {
            Fate::Deliver
        }
    })
}

/// A filter that gives every thing matching `pred` the fate `fate`.
pub fn every(pred: impl Fn(&Wire) -> bool + 'static, fate: Fate) -> Filter {
    Box::new(move |w| if pred(w) { fate } else { Fate::Deliver })
}

/// A message with a fresh buffer (for tests that respond by hand).
pub fn msg(data: &[u8]) -> MsgBuf {
    MsgBuf::from_slice(data)
}
