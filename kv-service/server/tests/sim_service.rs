//! The whole service under deterministic simulation: a multi-thread server (`ServerThread`s)
//! on the simulated fabric and the simulated disk, several `kv_client::Client`s and one
//! client that does not route keys (so the server forwards), all stepped from this thread on
//! one virtual clock. Packets are lost, duplicated and reordered; disk I/O completes out of
//! order and fails at random; the server crashes (a process crash, or a power cut in
//! `--durability sync`)
//! and restarts at random points. Every answer, and the state after every restart and at the
//! end, is checked against a model: acknowledged writes are there, and no value that was never
//! written ever appears.
//!
//! Deterministic: a seed fixes everything (fabric, disk, workload); CI runs the seeds written
//! here, `TEST_SEEDS=a,b,c` (ci/soak) runs others, and a failing seed reproduces exactly.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use kv_client::{Client, ClientConfig, Error, Op, Reply};
use kv_engine::backend::sim::SimBackend;
use kv_engine::{open_workers_with, Durability, Engine, EngineConfig, KeyRouter, SimDisk};
use kv_proto::{self as protocol, Request, Status};
use kv_service::{build_threads, register_handlers, Phase, ServerState, ServerThread, Shutdown};
use rpc::{LocalHub, MsgBuf, Nexus, Rpc, RpcConfig, SessionState, VirtualClock};
use transports::sim::{LinkFaults, SimFabric, SimTransport};

const THREADS: usize = 3;
const CLIENTS: usize = 3;
const KEYS_PER_CLIENT: usize = 24;
const MTU: usize = 1024;
const RING: usize = 1024;
/// Value sizes over several size classes; above the MTU a request or response is several
/// packets.
const SIZES: [usize; 5] = [8, 90, 300, 900, 2500];
/// Virtual time after which the run is stuck.
const LIMIT_NS: u64 = 600_000_000_000;
const MS: u64 = 1_000_000;

type Thread = ServerThread<SimTransport, SimBackend>;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// One write of a key.
#[derive(Clone, Debug)]
struct Write {
    /// `None`: a delete.
    value: Option<Vec<u8>>,
    submitted: u64,
    acked: Option<u64>,
}

/// What is known of one key.
#[derive(Default, Debug)]
struct KeyModel {
    writes: Vec<Write>,
    /// A write of the key is outstanding (one at a time per key).
    busy: bool,
    /// No new write before this virtual time: a write that timed out may still be in the
    /// network or the server for a moment.
    quiet_until: u64,
}

impl KeyModel {
    /// Index of the last write acknowledged before `t`.
    fn base(&self, t: u64) -> Option<usize> {
        self.writes
            .iter()
            .rposition(|w| w.acked.is_some_and(|a| a < t))
    }

    /// What a read started at `t0` and answered at `t1` may see: the last write acknowledged
    /// before it started, and any write submitted after that one and before the answer.
    fn allowed(&self, t0: u64, t1: u64) -> Vec<Option<Vec<u8>>> {
        let b = self.base(t0);
        let mut out = vec![b
            .and_then(|i| self.writes.get(i))
            .and_then(|w| w.value.clone())];
        let from = b.map_or(0, |i| i + 1);
        out.extend(
            self.writes
                .iter()
                .skip(from)
                .filter(|w| w.submitted < t1)
                .map(|w| w.value.clone()),
        );
        out
    }
}

fn show(v: &Option<Vec<u8>>) -> String {
    match v {
        None => "(none)".into(),
        Some(v) => format!(
            "{:?} ({} B)",
            String::from_utf8_lossy(v.get(..v.len().min(14)).unwrap_or_default()),
            v.len()
        ),
    }
}

/// What a request in flight was.
#[derive(Clone, Debug)]
enum Pending {
    Get { key: Vec<u8>, t0: u64 },
    Write { key: Vec<u8>, index: usize },
    Scan { start: Vec<u8>, max: usize, t0: u64 },
}

struct Sim {
    seed: u64,
    rng: Rng,
    fabric: SimFabric,
    /// The virtual clock the fabric and every Rpc read.
    clock: VirtualClock,
    /// The in-process session-management network every Nexus is on.
    _hub: LocalHub,
    disk: SimDisk,
    durability: Durability,
    nexus: Nexus<ServerState<SimBackend>>,
    threads: Vec<Thread>,
    shutdown: std::sync::Arc<Shutdown>,
    clients: Vec<Client<SimTransport>>,
    raw: RawClient,
    model: BTreeMap<Vec<u8>, KeyModel>,
    /// Per client (the raw one last): tag -> request.
    pending: Vec<BTreeMap<u64, Pending>>,
    next_tag: u64,
    /// Logical time of the model: strictly increasing over every event.
    tick: u64,
    counter: u64,
    stats: Counters,
    /// While verifying: the answer of every read.
    capture: Option<BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    /// When nothing is due earlier, virtual time jumps no further than this (a driver that
    /// acts at set times, not only on events).
    horizon: u64,
}

#[derive(Default, Debug)]
struct Counters {
    acked_writes: u64,
    failed: u64,
    reads_checked: u64,
    scans_checked: u64,
    restarts: u64,
    outages: u64,
    forwarded_writes_acked: u64,
    acked_after_restart: u64,
    /// Failures by kind.
    failures: BTreeMap<String, u64>,
    /// GET / PUT / DELETE requests the routing clients submitted.
    point_ops: u64,
    /// BATCH messages they sent, the requests in them, and those that mixed reads and writes.
    batches: u64,
    batched: u64,
    mixed_batches: u64,
    /// Virtual time at the end.
    end_ns: u64,
}

/// A client without key routing: sends every request to server thread 0, which forwards the
/// keys of the other threads.
struct RawClient {
    rpc: Rpc<SimTransport, ()>,
    _nexus: Nexus,
    session: u32,
    /// Request type of each request in flight, by tag.
    inflight: BTreeMap<u64, u8>,
}

fn engine_config(durability: Durability) -> EngineConfig {
    EngineConfig {
        workers: THREADS,
        cache_bytes: THREADS * (128 << 10),
        queue_depth: 16,
        durability,
        stage_bytes: 256 << 10,
        ..EngineConfig::default()
    }
}

fn rpc_config(seed: u64) -> RpcConfig {
    RpcConfig {
        seed: Some(seed),
        ..RpcConfig::default()
    }
}

fn client_config() -> ClientConfig {
    ClientConfig {
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(500),
        batch: 8,
        ..ClientConfig::default()
    }
}

fn value_of(key: &[u8], n: u64, len: usize) -> Vec<u8> {
    let seed = format!("{}#{n}#", String::from_utf8_lossy(key));
    seed.bytes().cycle().take(len).collect()
}

impl Sim {
    /// Each mode in turn; the periodic flush runs on the virtual clock.
    fn durability_of(seed: u64) -> Durability {
        match seed % 3 {
            0 => Durability::Sync,
            1 => Durability::Page,
            _ => Durability::Periodic {
                interval: Duration::from_millis(2),
            },
        }
    }

    fn new(seed: u64) -> Sim {
        let durability = Sim::durability_of(seed);
        let clock = VirtualClock::new();
        let fabric = SimFabric::with_clock(seed, clock.reader());
        fabric.set_default_faults(LinkFaults {
            drop: 0.02,
            duplicate: 0.02,
            delay_ns: 2_000,
            reorder_ns: 20_000,
        });
        let hub = LocalHub::new();
        let disk = SimDisk::new(seed ^ 0xd15c);
        disk.set_random_faults(0.005, 0.01);
        let nexus: Nexus<ServerState<SimBackend>> =
            Nexus::new_local(&hub, "server", 0).expect("server nexus");
        register_handlers(&nexus).expect("handlers");
        // The server first: a client's first session needs its Rpcs to exist.
        let shutdown = Shutdown::new(THREADS, Duration::from_secs(10));
        let threads = start_threads(&fabric, &clock, &disk, &nexus, durability, seed, &shutdown);
        let mut clients = Vec::new();
        for i in 0..CLIENTS {
            let cn: Nexus = Nexus::new_local(&hub, &format!("client-{i}"), 0).expect("nexus");
            let cfg = client_config();
            let rc = RpcConfig {
                seed: Some(seed + 100 + i as u64),
                ..cfg.rpc_config()
            };
            let mut rpc = Rpc::new(&cn, 0, fabric.transport(MTU, RING), (), rc).expect("rpc");
            rpc.use_virtual_clock(clock.clone());
            clients.push(Client::start(cn, rpc, "local:server", cfg).expect("start"));
        }
        let rn: Nexus = Nexus::new_local(&hub, "raw", 0).expect("nexus");
        let mut rpc = Rpc::new(
            &rn,
            0,
            fabric.transport(MTU, RING),
            (),
            rpc_config(seed + 200),
        )
        .expect("rpc");
        rpc.use_virtual_clock(clock.clone());
        let session = rpc.create_session("local:server", 0).expect("session");
        let mut sim = Sim {
            seed,
            rng: Rng(seed),
            fabric,
            clock,
            _hub: hub,
            disk,
            durability,
            nexus,
            threads,
            shutdown,
            clients,
            raw: RawClient {
                rpc,
                _nexus: rn,
                session,
                inflight: BTreeMap::new(),
            },
            model: BTreeMap::new(),
            pending: (0..=CLIENTS).map(|_| BTreeMap::new()).collect(),
            next_tag: 1,
            tick: 1,
            counter: 0,
            stats: Counters::default(),
            capture: None,
            horizon: u64::MAX,
        };
        for c in 0..=CLIENTS {
            for k in 0..KEYS_PER_CLIENT {
                sim.model.insert(key_of(c, k), KeyModel::default());
            }
        }
        sim
    }

    fn start_server(&mut self) {
        self.shutdown = Shutdown::new(THREADS, Duration::from_secs(10));
        let seed = self.seed + self.stats.restarts * 10;
        self.threads = start_threads(
            &self.fabric,
            &self.clock,
            &self.disk,
            &self.nexus,
            self.durability,
            seed,
            &self.shutdown,
        );
    }

    fn now(&self) -> u64 {
        self.fabric.now_ns()
    }

    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// One round of the simulation: every server thread and every client once; when none had
    /// anything to do, virtual time jumps to the next packet or timer.
    fn step(&mut self) {
        let now = self.now();
        let mut work = false;
        for t in &mut self.threads {
            work |= t.step(now);
        }
        let busy = self.threads.iter().any(|t| t.busy());
        for i in 0..CLIENTS {
            work |= self.clients[i].run_once();
            while let Some((tag, r)) = self.clients[i].poll() {
                work = true;
                self.on_answer(i, tag, r);
            }
        }
        work |= self.raw.rpc.run_once();
        while let Some(c) = self.raw.rpc.poll_completion() {
            work = true;
            self.on_raw(c);
        }
        if !work && !busy {
            let mut next = self.fabric.next_delivery().unwrap_or(u64::MAX);
            for t in &self.threads {
                next = next.min(t.rpc().next_timer_ns());
            }
            for c in &self.clients {
                next = next.min(c.next_timer_ns());
            }
            next = next.min(self.raw.rpc.next_timer_ns());
            self.clock.advance_to(next.min(self.horizon).max(now + 1));
        }
        assert!(
            self.now() < LIMIT_NS,
            "seed {}: stuck at {} ms of virtual time",
            self.seed,
            self.now() / MS
        );
    }

    fn connect_all(&mut self) {
        let mut ready = [false; CLIENTS];
        while !ready.iter().all(|&r| r) || self.raw_state() != Some(SessionState::Connected) {
            for (i, r) in ready.iter_mut().enumerate() {
                if !*r {
                    *r = self.clients[i].poll_connect().expect("connect");
                }
            }
            self.step();
        }
    }

    fn raw_state(&self) -> Option<SessionState> {
        self.raw.rpc.session_state(self.raw.session)
    }

    /// Submits new requests for client `c` (the raw one is `CLIENTS`) while it has room.
    fn load(&mut self, c: usize) {
        self.load_with(c, false);
    }

    /// As `load`; `reads_only`: GETs only.
    fn load_with(&mut self, c: usize, reads_only: bool) {
        let window = 16;
        let mut tries = 0;
        while self.pending[c].len() < window && tries < 12 {
            tries += 1;
            let k = self.rng.below(KEYS_PER_CLIENT as u64) as usize;
            let key = key_of(c, k);
            let roll = self.rng.below(100);
            let now = self.now();
            if c < CLIENTS && roll >= 90 && !reads_only {
                self.submit_scan(c);
                continue;
            }
            let m = self.model.get(&key).expect("key");
            let writable = !reads_only && !m.busy && m.quiet_until <= now;
            if roll < 40 && writable {
                self.counter += 1;
                let len = SIZES[self.rng.below(SIZES.len() as u64) as usize];
                let value = value_of(&key, self.counter, len);
                self.submit_write(c, key, Some(value));
            } else if roll < 55 && writable {
                self.submit_write(c, key, None);
            } else {
                let t0 = self.tick();
                let tag = self.next_tag;
                self.next_tag += 1;
                let op = Op::Get { key: key.clone() };
                if self.send(c, op, tag) {
                    self.pending[c].insert(tag, Pending::Get { key, t0 });
                }
            }
        }
    }

    fn submit_write(&mut self, c: usize, key: Vec<u8>, value: Option<Vec<u8>>) {
        let submitted = self.tick();
        let tag = self.next_tag;
        self.next_tag += 1;
        let op = match &value {
            Some(v) => Op::Put {
                key: key.clone(),
                value: v.clone(),
            },
            None => Op::Delete { key: key.clone() },
        };
        let m = self.model.get_mut(&key).expect("key");
        m.writes.push(Write {
            value,
            submitted,
            acked: None,
        });
        m.busy = true;
        let index = m.writes.len() - 1;
        if self.send(c, op, tag) {
            self.pending[c].insert(tag, Pending::Write { key, index });
        } else {
            // Not issued at all: it can never apply.
            let m = self.model.get_mut(&key).expect("key");
            m.writes.pop();
            m.busy = false;
        }
    }

    fn submit_scan(&mut self, c: usize) {
        let start = format!("c{c}/").into_bytes();
        let max = [3usize, 7, 40, 10_000][self.rng.below(4) as usize];
        let t0 = self.tick();
        let tag = self.next_tag;
        self.next_tag += 1;
        let op = Op::Scan {
            start: start.clone(),
            max,
        };
        if self.send(c, op, tag) {
            self.pending[c].insert(tag, Pending::Scan { start, max, t0 });
        }
    }

    /// Issues `op`; false if the client refused it on the spot (then it never runs).
    fn send(&mut self, c: usize, op: Op, tag: u64) -> bool {
        if c < CLIENTS {
            if !matches!(op, Op::Scan { .. }) {
                self.stats.point_ops += 1;
            }
            return match self.clients[c].submit(op, tag) {
                Ok(()) => true,
                Err(Error::Rpc(rpc::RpcError::Overloaded)) => false,
                Err(e) => panic!("seed {}: submit refused: {e}", self.seed),
            };
        }
        // The raw client: one request to thread 0, whoever owns the key.
        if matches!(self.raw_state(), Some(SessionState::Failed(_))) {
            let _ = self.raw.rpc.reconnect(self.raw.session);
        }
        let mut msg = Vec::new();
        protocol::encode_request(&Request::Op(op.view()), &mut msg);
        let code = op.code();
        let r = self.raw.rpc.enqueue_request_with_deadline(
            self.raw.session,
            code,
            MsgBuf::from_slice(&msg),
            tag,
            Some(Duration::from_millis(300)),
        );
        match r {
            Ok(()) => {
                self.raw.inflight.insert(tag, code);
                true
            }
            Err(_) => false,
        }
    }

    fn on_raw(&mut self, c: rpc::Completion) {
        let tag = c.tag;
        let Some(code) = self.raw.inflight.remove(&tag) else {
            return;
        };
        let result = match c.result {
            Ok(m) => match protocol::parse_response(m.as_slice()) {
                Ok(r) => match (r.status, code) {
                    (Status::Ok, protocol::op::GET) => Ok(Reply::Value(r.body.to_vec())),
                    (Status::Ok, protocol::op::PUT) => Ok(Reply::Written),
                    (Status::Ok, protocol::op::DELETE) => Ok(Reply::Deleted),
                    (Status::NotFound, _) => Ok(Reply::NotFound),
                    (status, _) => Err(Error::Server {
                        status,
                        message: r.message(),
                    }),
                },
                Err(e) => panic!("seed {}: malformed response: {e}", self.seed),
            },
            Err(e) => Err(Error::Rpc(e)),
        };
        self.on_answer(CLIENTS, tag, result);
    }

    fn on_answer(&mut self, c: usize, tag: u64, r: Result<Reply, Error>) {
        let seed = self.seed;
        let Some(p) = self.pending[c].remove(&tag) else {
            panic!("seed {seed}: client {c} answered unknown tag {tag}");
        };
        let t1 = self.tick();
        let now = self.now();
        match p {
            Pending::Write { key, index } => {
                let forwarded = c == CLIENTS && KeyRouter::new(THREADS).partition_of(&key) != 0;
                let restarts = self.stats.restarts;
                let m = self.model.get_mut(&key).expect("key");
                m.busy = false;
                let is_put = m.writes.get(index).is_some_and(|w| w.value.is_some());
                match r {
                    Ok(Reply::Written) if is_put => {
                        m.writes[index].acked = Some(t1);
                        self.stats.acked_writes += 1;
                        if forwarded {
                            self.stats.forwarded_writes_acked += 1;
                        }
                        if restarts > 0 {
                            self.stats.acked_after_restart += 1;
                        }
                    }
                    // A delete of a key that is not there: it is not there (checked below).
                    Ok(reply @ (Reply::Deleted | Reply::NotFound)) if !is_put => {
                        if reply == Reply::NotFound {
                            let allowed = m.allowed(m.writes[index].submitted, t1);
                            assert!(
                                allowed.contains(&None),
                                "seed {seed}: delete of {} found nothing; allowed {:?}",
                                String::from_utf8_lossy(&key),
                                allowed.iter().map(show).collect::<Vec<_>>()
                            );
                        }
                        m.writes[index].acked = Some(t1);
                        self.stats.acked_writes += 1;
                    }
                    Err(e) => {
                        check_failure(seed, &e);
                        // It may still be applied for a moment (a timed-out request in the
                        // network): no write of this key until that cannot be.
                        m.quiet_until = now + 50 * MS;
                        self.count_failure(&e);
                    }
                    Ok(other) => panic!("seed {seed}: write of {key:?} answered {other:?}"),
                }
            }
            Pending::Get { key, t0 } => {
                let got = match r {
                    Ok(Reply::Value(v)) => Some(v),
                    Ok(Reply::NotFound) => None,
                    Ok(other) => panic!("seed {seed}: get answered {other:?}"),
                    Err(e) => {
                        check_failure(seed, &e);
                        self.count_failure(&e);
                        return;
                    }
                };
                let m = self.model.get(&key).expect("key");
                let allowed = m.allowed(t0, t1);
                assert!(
                    allowed.contains(&got),
                    "seed {seed}: get {} answered {}; allowed {:?}; writes {:?}",
                    String::from_utf8_lossy(&key),
                    show(&got),
                    allowed.iter().map(show).collect::<Vec<_>>(),
                    m.writes
                        .iter()
                        .map(|w| (show(&w.value), w.submitted, w.acked))
                        .collect::<Vec<_>>()
                );
                self.stats.reads_checked += 1;
                if let Some(cap) = &mut self.capture {
                    cap.insert(key, got);
                }
            }
            Pending::Scan { start, max, t0 } => {
                let items = match r {
                    Ok(Reply::Items(items)) => items,
                    Ok(other) => panic!("seed {seed}: scan answered {other:?}"),
                    Err(e) => {
                        check_failure(seed, &e);
                        self.count_failure(&e);
                        return;
                    }
                };
                self.check_scan(&start, max, t0, t1, &items);
            }
        }
    }

    fn count_failure(&mut self, e: &Error) {
        self.stats.failed += 1;
        let kind = match e {
            Error::Server { status, .. } => format!("Server {status:?}"),
            Error::Rpc(r) => format!("Rpc {r:?}"),
            Error::Timeout(_) => "Timeout".to_string(),
            Error::Unavailable { .. } => "Unavailable".to_string(),
            other => format!("{other:?}"),
        };
        *self.stats.failures.entry(kind).or_default() += 1;
    }

    fn check_scan(
        &mut self,
        start: &[u8],
        max: usize,
        t0: u64,
        t1: u64,
        items: &[(Vec<u8>, Vec<u8>)],
    ) {
        let seed = self.seed;
        assert!(
            items.len() <= max,
            "seed {seed}: scan returned {} > {max}",
            items.len()
        );
        assert!(
            items.windows(2).all(|w| w[0].0 < w[1].0),
            "seed {seed}: scan not in key order"
        );
        assert!(items.iter().all(|(k, _)| k.as_slice() >= start));
        for (k, v) in items {
            let m = self
                .model
                .get(k)
                .unwrap_or_else(|| panic!("seed {seed}: scan invented key {k:?}"));
            let allowed = m.allowed(t0, t1);
            assert!(
                allowed.contains(&Some(v.clone())),
                "seed {seed}: scan gave {} = {}; allowed {:?}",
                String::from_utf8_lossy(k),
                show(&Some(v.clone())),
                allowed.iter().map(show).collect::<Vec<_>>()
            );
        }
        // Complete: with room for every key, every key that was certainly there is there.
        if max >= self.model.len() {
            for (k, m) in self.model.range(start.to_vec()..) {
                if !m.allowed(t0, t1).contains(&None) {
                    assert!(
                        items.iter().any(|(ik, _)| ik == k),
                        "seed {seed}: scan from {:?} missed {}",
                        String::from_utf8_lossy(start),
                        String::from_utf8_lossy(k)
                    );
                }
            }
        }
        self.stats.scans_checked += 1;
    }

    /// The server dies at a random point, with whatever it had in flight, and restarts on
    /// what its disk kept.
    fn crash_and_restart(&mut self) {
        // Sync mode promises that acknowledged writes survive a power cut (and a key never
        // loses its last acknowledged value to a torn write); the other modes promise a
        // process crash.
        if self.durability == Durability::Sync {
            self.disk.power_cut();
        } else {
            self.disk.crash();
        }
        self.threads.clear();
        self.stats.restarts += 1;
        // Down for a moment of virtual time.
        let down = self.now() + (1 + self.rng.below(50)) * MS;
        while self.now() < down {
            self.step();
        }
        self.start_server();
        // After a restart the recovered state is checked key by key, when quiet.
        self.quiesce();
        self.verify_all();
    }

    /// Loses most packets for `d` of virtual time, with the load going on.
    fn outage(&mut self, d: Duration) {
        let normal = LinkFaults {
            drop: 0.02,
            duplicate: 0.02,
            delay_ns: 2_000,
            reorder_ns: 20_000,
        };
        self.fabric.set_default_faults(LinkFaults {
            drop: 0.9,
            ..normal
        });
        let end = self.now() + u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        while self.now() < end {
            for c in 0..=CLIENTS {
                if self.rng.chance(30) {
                    self.load(c);
                }
            }
            self.step();
        }
        self.fabric.set_default_faults(normal);
        self.stats.outages += 1;
    }

    /// Runs until no request is in flight.
    fn quiesce(&mut self) {
        while self.pending.iter().any(|p| !p.is_empty()) {
            self.step();
        }
    }

    /// Reads every key (the raw client's through client 0), checks each answer against the
    /// model and returns them. A read that fails (an injected fault) is retried.
    fn verify_all(&mut self) -> BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        self.capture = Some(BTreeMap::new());
        let keys: Vec<(usize, Vec<u8>)> = (0..=CLIENTS)
            .flat_map(|c| (0..KEYS_PER_CLIENT).map(move |k| (c.min(CLIENTS - 1), key_of(c, k))))
            .collect();
        for (c, key) in keys {
            let mut attempts = 0;
            while !self.capture.as_ref().is_some_and(|m| m.contains_key(&key)) {
                attempts += 1;
                assert!(attempts < 100, "seed {}: cannot read {key:?}", self.seed);
                let t0 = self.tick();
                let tag = self.next_tag;
                self.next_tag += 1;
                assert!(self.send(c, Op::Get { key: key.clone() }, tag));
                self.pending[c].insert(
                    tag,
                    Pending::Get {
                        key: key.clone(),
                        t0,
                    },
                );
                while self.pending[c].contains_key(&tag) {
                    self.step();
                }
            }
        }
        self.capture.take().unwrap_or_default()
    }
}

/// Recovers the engine from `disk` and builds the server threads on new endpoints of
/// `fabric`, on the virtual `clock` they share.
fn start_threads(
    fabric: &SimFabric,
    clock: &VirtualClock,
    disk: &SimDisk,
    nexus: &Nexus<ServerState<SimBackend>>,
    durability: Durability,
    seed: u64,
    shutdown: &std::sync::Arc<Shutdown>,
) -> Vec<Thread> {
    // Recovery writes (it applies the staging area to the slabs) and the disk fails writes
    // at random: a recovery that fails with an I/O error changes nothing it cannot redo, so
    // the operator's answer, opening again, must succeed.
    let mut attempt = 0;
    let opened = loop {
        match open_workers_with(disk, &engine_config(durability)) {
            Ok(o) => break o,
            Err(kv_engine::Error::Io { .. }) if attempt < 50 => attempt += 1,
            Err(e) => panic!("recover (attempt {attempt}): {e:?}"),
        }
    };
    let transports = (0..THREADS).map(|_| fabric.transport(MTU, RING)).collect();
    let mut threads =
        build_threads(nexus, opened, transports, &rpc_config(seed), shutdown).expect("threads");
    for t in &mut threads {
        t.rpc_mut().use_virtual_clock(clock.clone());
    }
    threads
}

/// Errors a request may end with under these faults; anything else is a bug.
fn check_failure(seed: u64, e: &Error) {
    match e {
        Error::Timeout(_) => {}
        Error::Rpc(rpc::RpcError::PeerFailed | rpc::RpcError::Timeout) => {}
        Error::Rpc(rpc::RpcError::NoSuchRemoteRpc(_) | rpc::RpcError::Cancelled) => {}
        Error::Rpc(rpc::RpcError::DeadlineExceeded | rpc::RpcError::NotConnected(_)) => {}
        // The server was down long enough for a reconnect attempt to fail: backing off.
        Error::Unavailable { .. } => {}
        // An injected disk error, or the server stopping.
        Error::Server {
            status: Status::Internal | Status::ShuttingDown,
            ..
        } => {}
        other => panic!("seed {seed}: unexpected error {other:?}"),
    }
}

fn key_of(client: usize, k: usize) -> Vec<u8> {
    if client < CLIENTS {
        format!("c{client}/k{k:02}").into_bytes()
    } else {
        format!("r/k{k:02}").into_bytes()
    }
}

fn run(seed: u64) -> Counters {
    let mut sim = Sim::new(seed);
    sim.connect_all();
    let rounds = 20_000;
    let mut crash_at: VecDeque<u64> =
        VecDeque::from([2_000 + sim.rng.below(6_000), 10_000 + sim.rng.below(6_000)]);
    // A network outage (most packets lost) long enough for requests to time out.
    let outage = 1_000 + sim.rng.below(16_000);
    for round in 0..rounds {
        if round == outage {
            sim.outage(Duration::from_millis(400));
        }
        for c in 0..=CLIENTS {
            if sim.rng.chance(30) {
                sim.load(c);
            }
        }
        sim.step();
        if crash_at.front() == Some(&round) {
            crash_at.pop_front();
            sim.crash_and_restart();
        }
    }
    sim.quiesce();
    sim.disk.set_random_faults(0.0, 0.0);
    let answered = sim.verify_all();
    // A graceful stop, with reads still coming (answered, or refused with SHUTTING_DOWN);
    // then the engine alone reads back what the service answered.
    sim.shutdown.stop();
    let mut drain_steps = 0u64;
    while sim.threads.iter().any(|t| t.phase() != Phase::Stopped) {
        if drain_steps < 300 {
            for c in 0..CLIENTS {
                if sim.rng.chance(30) {
                    sim.load_with(c, true);
                }
            }
        }
        sim.step();
        drain_steps += 1;
    }
    assert!(
        sim.stats.failures.contains_key("Server ShuttingDown") && drain_steps > 0,
        "seed {seed}: nothing was refused while draining: {:?}",
        sim.stats
    );
    sim.threads.clear();
    let engine = Engine::open_with(&sim.disk, engine_config(sim.durability)).expect("reopen");
    for (key, want) in &answered {
        assert_eq!(
            &engine.get(key).expect("get"),
            want,
            "seed {seed}: {} on disk differs from the last answer",
            String::from_utf8_lossy(key)
        );
    }
    sim.stats.batches = sim.clients.iter().map(|c| c.counters().batches).sum();
    sim.stats.batched = sim.clients.iter().map(|c| c.counters().batched).sum();
    sim.stats.mixed_batches = sim.clients.iter().map(|c| c.counters().mixed_batches).sum();
    sim.stats.end_ns = sim.now();
    sim.stats
}

#[test]
fn the_service_survives_loss_disk_faults_and_crashes() {
    for seed in testkit::seeds(&[1, 2, 3, 4]) {
        println!("seed {seed}");
        let s = run(seed);
        println!("seed {seed}: {s:?}");
        assert!(s.acked_writes > 100, "seed {seed}: too little work: {s:?}");
        assert!(
            s.reads_checked > 100 && s.scans_checked > 10,
            "seed {seed}: {s:?}"
        );
        assert_eq!(s.restarts, 2);
        assert!(
            s.acked_after_restart > 10,
            "seed {seed}: no progress after restarts: {s:?}"
        );
        assert!(
            s.forwarded_writes_acked > 5,
            "seed {seed}: forwarding untested: {s:?}"
        );
        assert!(
            s.failures.keys().any(|k| k.starts_with("Timeout")),
            "seed {seed}: no request timed out: {s:?}"
        );
        assert!(
            s.batches > 10 && s.batched >= 2 * s.batches,
            "seed {seed}: requests were not batched: {s:?}"
        );
        // Reads and writes share a BATCH exactly where writes are acknowledged at once
        // (periodic); where a write waits for the disk, reads batched with it would too.
        if matches!(Sim::durability_of(seed), Durability::Periodic { .. }) {
            assert!(s.mixed_batches > 10, "seed {seed}: no mixed BATCH: {s:?}");
        } else {
            assert_eq!(s.mixed_batches, 0, "seed {seed}: {s:?}");
        }
    }
}

/// A seed reproduces exactly: the same run, to the nanosecond of virtual time.
#[test]
fn a_seed_reproduces_exactly() {
    let a = format!("{:?}", run(7));
    let b = format!("{:?}", run(7));
    assert_eq!(a, b);
}

/// While the server is down, a client fails requests at once instead of sending them,
/// reconnects with waits that grow (exponential backoff with jitter), and once the server is
/// back, the first request that gets through succeeds.
#[test]
fn a_client_backs_off_while_the_server_is_down_and_comes_back_with_it() {
    let seed = 11;
    let mut sim = Sim::new(seed);
    sim.connect_all();
    let key = key_of(0, 3);
    let backoff = client_config().reconnect_backoff;
    // One GET from client 0 every 5 ms of virtual time; outcomes are checked by the model.
    let every = 5 * MS;
    let get = |sim: &mut Sim| {
        let t0 = sim.tick();
        let tag = sim.next_tag;
        sim.next_tag += 1;
        if sim.send(0, Op::Get { key: key.clone() }, tag) {
            sim.pending[0].insert(
                tag,
                Pending::Get {
                    key: key.clone(),
                    t0,
                },
            );
        }
    };
    let run_for = |sim: &mut Sim, d: u64, attempts: &mut Vec<(u64, u32)>| {
        let end = sim.now() + d;
        let mut next = sim.now();
        while sim.now() < end {
            if sim.now() >= next {
                get(sim);
                next += every;
            }
            sim.horizon = next;
            sim.step();
            let f = sim.clients[0].reconnect_failures();
            if attempts.last().map_or(f > 0, |&(_, g)| f != g) {
                attempts.push((sim.now(), f));
            }
        }
        sim.horizon = u64::MAX;
    };
    let mut attempts = Vec::new();
    run_for(&mut sim, 200 * MS, &mut attempts);
    sim.quiesce();
    assert!(attempts.is_empty(), "seed {seed}: {attempts:?}");
    let before = sim.stats.failures.clone();
    let sm_before = sim.clients[0].rpc().stats().sm_tx;

    // The server process goes away: its threads are gone, nothing answers for them.
    sim.disk.crash();
    sim.threads.clear();
    let outage = 6_000 * MS;
    let down_at = sim.now();
    run_for(&mut sim, outage, &mut attempts);
    let during = |k: &str, sim: &Sim| {
        sim.stats.failures.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
    };
    let unavailable = during("Unavailable", &sim);
    let requests = outage / every;
    // Failed attempts in a row, as the client counts them: 1, 2, 3, ... each after a wait at
    // least the jittered backoff for the count before.
    let counts: Vec<u32> = attempts.iter().map(|&(_, f)| f).collect();
    assert!(
        counts.len() >= 4 && counts.iter().enumerate().all(|(i, &f)| f == i as u32 + 1),
        "seed {seed}: attempts {attempts:?}"
    );
    for pair in attempts.windows(2) {
        let [(t0, n), (t1, _)] = pair else { continue };
        let least = backoff.base(*n).mul_f64(1.0 - backoff.jitter);
        assert!(
            Duration::from_nanos(t1 - t0) >= least,
            "seed {seed}: attempt {} came {} ms after the one before (backoff {:?}): {attempts:?}",
            n + 1,
            (t1 - t0) / MS,
            least
        );
    }
    // Waits grow: the last gap is longer than the first (doubling from 100 ms to 2 s).
    let gaps: Vec<u64> = attempts.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps.last() > gaps.first(),
        "seed {seed}: gaps {gaps:?} ms/1e6"
    );
    // Nearly every request failed at once (nothing sent) rather than waiting for a handshake,
    // and the few handshakes cost few session-management messages.
    assert!(
        unavailable * 10 >= requests * 8,
        "seed {seed}: only {unavailable} of {requests} requests failed at once: {:?}",
        sim.stats.failures
    );
    let sm = sim.clients[0].rpc().stats().sm_tx - sm_before;
    println!("seed {seed}: attempts {attempts:?}, {unavailable} of {requests} refused at once, {sm} SM messages");
    assert!(
        sm <= 20 * attempts.len() as u64,
        "seed {seed}: {sm} SM messages for {} attempts",
        attempts.len()
    );

    // The server comes back: within one backoff period the client is back too, and the first
    // GET that was not refused locally read the key.
    sim.start_server();
    let back_at = sim.now();
    let ok_before = sim.stats.reads_checked;
    let refused_before = during("Unavailable", &sim);
    let fails_before = sim.stats.failed;
    run_for(
        &mut sim,
        backoff.max.as_nanos() as u64 + 500 * MS,
        &mut attempts,
    );
    sim.quiesce();
    assert!(
        sim.stats.reads_checked > ok_before + 50,
        "seed {seed}: not back after {} ms: {:?}",
        (sim.now() - back_at) / MS,
        sim.stats
    );
    let refused_after = during("Unavailable", &sim) - refused_before;
    // Every failure after the restart is a local refusal during the last backoff wait (or
    // the attempt that was under way when the server returned).
    let other_failures = sim.stats.failed - fails_before - refused_after;
    assert!(
        other_failures <= 8,
        "seed {seed}: {other_failures} requests failed otherwise after the restart: {:?}",
        sim.stats.failures
    );
    assert_eq!(sim.clients[0].reconnect_failures(), 0);
    assert!(down_at < back_at);
}
