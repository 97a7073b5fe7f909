//! The KV server: W shared-nothing threads, thread `i` owning rpc [`Rpc`] number `i` (its own
//! UDP socket) and engine worker `i` (the partition of keys with `fnv1a64(key) mod W == i`).
//!
//! Each thread runs one loop: [`Rpc::run_once`] (receive, run handlers, transmit), then
//! [`Worker::poll`] (reap I/O, run operations, submit the next I/O batch), then answers every
//! finished operation through the kept [`ReqHandle`]. A request goes from the network to the
//! disk and back without leaving its thread.
//!
//! - **Wrong thread.** A GET / PUT / DELETE whose key belongs to another thread is
//!   *forwarded*: the receiving thread sends it on an rpc session to the owning thread (every
//!   thread opens one to every other at start) and relays the answer. The client gets the
//!   correct answer either way; the client library routes keys itself, so forwarding only
//!   happens for clients that do not.
//! - **SCAN** is per partition: thread `i` answers with worker `i`'s items. The client fans
//!   a scan out to every thread and merges ([`kv_client::Client::scan`]).
//! - **Writes** are answered only once the engine acknowledged them.
//! - **Idle behaviour** ([`IdleMode`]): spin while busy, sleep in the socket's wait after a
//!   quiet spell, or spin always.
//! - **Shutdown** ([`Server::shutdown`], or the stop flag from [`Server::stop_flag`] set by
//!   a signal handler): each thread answers new requests with
//!   [`Status::ShuttingDown`], finishes the operations
//!   it holds and sends their responses; when every thread is drained they linger briefly (to
//!   answer retransmissions) and exit, closing the engine's files.
//!
//! ```
//! use kv_service::server::{Server, ServerConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let server = Server::start(ServerConfig {
//!     listen: "127.0.0.1:0".into(),
//!     data_dir: dir.path().to_path_buf(),
//!     threads: 2,
//!     ..ServerConfig::default()
//! })?;
//! println!("listening on {}", server.listen_addr());
//! server.shutdown()?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rpc::{Completion as RpcCompletion, Ctx, Nexus, ReqHandle, Request as RpcRequest, Rpc};
use rpc::{RpcConfig, RpcError, SessionId};
use transports::udp::{UdpConfig, UdpTransport};
use transports::TransportError;

use kv_engine::{self as engine, EngineConfig, KeyRouter, RecoveryStats, SyncMode, Worker};
use kv_proto::{self as protocol, op, Op, Reply, Request, Status, ThreadStats, HDR_LEN};

/// What a server thread does when it has nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleMode {
    /// Spin always: lowest latency, one core per thread at 100 %.
    BusyPoll,
    /// Spin while requests keep coming; after `spin` without any, sleep in the socket's wait
    /// (woken by the next packet, at most 1 ms per wait) until a request arrives.
    SpinThenSleep {
        /// How long to keep spinning after the last request.
        spin: Duration,
    },
}

impl Default for IdleMode {
    fn default() -> Self {
        IdleMode::SpinThenSleep {
            spin: Duration::from_millis(100),
        }
    }
}

/// Server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Session-management address `IP:PORT` clients connect to (port 0 picks one). Each
    /// thread's data socket binds the same IP with an ephemeral port. Default
    /// `127.0.0.1:31850`.
    pub listen: String,
    /// Data directory (created if missing). Default `./kv-data`.
    pub data_dir: PathBuf,
    /// Server threads = engine workers W (1..=255). Recorded in the data directory: reopening
    /// with another W fails. Default 2.
    pub threads: usize,
    /// Engine page cache in bytes, split between threads. Default 64 MiB.
    pub cache_bytes: usize,
    /// Durability of acknowledged writes. Default [`SyncMode::None`].
    pub sync: SyncMode,
    /// Idle behaviour. Default: spin 100 ms, then sleep.
    pub idle: IdleMode,
    /// Longest the shutdown waits for in-flight requests. Default 10 s.
    pub drain_timeout: Duration,
    /// Receive with UDP GRO ([`UdpConfig::gro`]). Default `true`.
    pub udp_gro: bool,
    /// Largest UDP packet of the threads' sockets. Default
    /// [`transports::udp::MAX_AUTO_PKT_SIZE`] (8972): each session uses the smaller of this
    /// and its client's size, which the client library derives from the path MTU (so 8972 on
    /// loopback and 1472 across a 1500-byte Ethernet). Each thread's receive ring
    /// preallocates 4096 packets of this size.
    pub max_pkt_size: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:31850".into(),
            data_dir: PathBuf::from("./kv-data"),
            threads: 2,
            cache_bytes: 64 << 20,
            sync: SyncMode::None,
            idle: IdleMode::default(),
            drain_timeout: Duration::from_secs(10),
            udp_gro: true,
            max_pkt_size: transports::udp::MAX_AUTO_PKT_SIZE,
        }
    }
}

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The engine could not open the data directory.
    #[error("cannot open the data directory {dir}")]
    Engine {
        /// The data directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: engine::Error,
    },
    /// The rpc layer failed (e.g. the listen address is in use).
    #[error("rpc: {0}")]
    Rpc(#[from] RpcError),
    /// The transport could not be set up.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// An operating-system error (spawning threads).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A server thread failed or panicked.
    #[error("server thread {thread} failed: {reason}")]
    Thread {
        /// The thread.
        thread: usize,
        /// Why.
        reason: String,
    },
}

/// A running server. Dropping it shuts it down (like [`Server::shutdown`], ignoring errors).
pub struct Server {
    listen: SocketAddr,
    data_addrs: Vec<SocketAddr>,
    recovery: RecoveryStats,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Result<(), ServerError>>>,
}

/// Shared shutdown state of the threads.
struct Shutdown {
    stop: Arc<AtomicBool>,
    drained: AtomicUsize,
    threads: usize,
    timeout: Duration,
}

impl Server {
    /// Opens the data directory (running recovery), binds the listen address and starts the
    /// threads. Returns once every thread serves.
    pub fn start(cfg: ServerConfig) -> Result<Server, ServerError> {
        let w = cfg.threads;
        if w == 0 || w > 255 {
            return Err(ServerError::Config(format!(
                "threads must be 1..=255, got {w}"
            )));
        }
        let listen: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|_| ServerError::Config(format!("bad listen address {:?}", cfg.listen)))?;
        if listen.ip().is_unspecified() {
            return Err(ServerError::Config(format!(
                "listen address {listen} must be a concrete IP (clients are told the data \
                 sockets' addresses, which take this IP)"
            )));
        }
        let engine_cfg = EngineConfig {
            workers: w,
            cache_bytes: cfg.cache_bytes,
            sync: cfg.sync,
            ..EngineConfig::default()
        };
        let opened =
            engine::open_workers(&cfg.data_dir, &engine_cfg).map_err(|e| ServerError::Engine {
                dir: cfg.data_dir.clone(),
                source: e,
            })?;
        let nexus: Nexus<ThreadState> = Nexus::new(&listen.to_string(), 0)?;
        for t in op::ALL {
            nexus.register(t, |st: &mut ThreadState, ctx, req| st.on_request(ctx, req))?;
        }
        let sm_addr: SocketAddr = nexus
            .uri()
            .parse()
            .map_err(|_| ServerError::Config(format!("unexpected nexus uri {}", nexus.uri())))?;
        let stop = Arc::new(AtomicBool::new(false));
        let shutdown = Arc::new(Shutdown {
            stop: stop.clone(),
            drained: AtomicUsize::new(0),
            threads: w,
            timeout: cfg.drain_timeout,
        });
        let barrier = Arc::new(Barrier::new(w));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(w);
        for worker in opened.workers {
            let id = worker.id();
            let nexus = nexus.clone();
            let shutdown = shutdown.clone();
            let thread_barrier = barrier.clone();
            let ready_tx = ready_tx.clone();
            let router = opened.router;
            let idle = cfg.idle;
            let gro = cfg.udp_gro;
            let max_pkt = cfg.max_pkt_size;
            let bind = SocketAddr::new(listen.ip(), 0);
            let spawned = std::thread::Builder::new()
                .name(format!("kv-{id}"))
                .spawn(move || {
                    let r = thread_main(ThreadArgs {
                        id,
                        worker,
                        router,
                        nexus,
                        bind,
                        idle,
                        gro,
                        max_pkt,
                        barrier: thread_barrier,
                        ready: ready_tx,
                        shutdown: shutdown.clone(),
                    });
                    if let Err(e) = &r {
                        tracing::error!(thread = id, error = %e, "server thread failed");
                        shutdown.stop.store(true, Ordering::Release);
                    }
                    r
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // Threads already started wait at the barrier for this one: release them.
                    stop.store(true, Ordering::Release);
                    for _ in threads.len()..w {
                        let b = barrier.clone();
                        std::thread::spawn(move || b.wait());
                    }
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(ServerError::Io(e));
                }
            }
        }
        drop(ready_tx);
        let mut data_addrs = vec![sm_addr; w];
        let mut failure = None;
        for _ in 0..w {
            match ready_rx.recv() {
                Ok((id, Ok(addr))) => {
                    if let Some(slot) = data_addrs.get_mut(id) {
                        *slot = addr;
                    }
                }
                Ok((id, Err(e))) => {
                    failure = Some(ServerError::Thread {
                        thread: id,
                        reason: e,
                    });
                }
                Err(_) => {
                    failure.get_or_insert(ServerError::Thread {
                        thread: 0,
                        reason: "a thread exited during start".into(),
                    });
                    break;
                }
            }
        }
        let server = Server {
            listen: sm_addr,
            data_addrs,
            recovery: opened.recovery,
            stop,
            threads,
        };
        match failure {
            Some(e) => {
                let _ = server.shutdown();
                Err(e)
            }
            None => Ok(server),
        }
    }

    /// The session-management address clients connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The data socket address of each thread (thread `i` at index `i`).
    pub fn data_addrs(&self) -> &[SocketAddr] {
        &self.data_addrs
    }

    /// What the engine's recovery found at start.
    pub fn recovery(&self) -> RecoveryStats {
        self.recovery
    }

    /// The flag that stops the server when set (e.g. from a signal handler).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Waits until the server stops (after the stop flag is set, or a thread failed).
    pub fn wait(mut self) -> Result<(), ServerError> {
        self.join_all()
    }

    /// Stops the server gracefully and waits for it: new requests get
    /// [`Status::ShuttingDown`], the ones in flight are finished and answered, the engine is
    /// closed.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.stop.store(true, Ordering::Release);
        self.join_all()
    }

    fn join_all(&mut self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (i, t) in self.threads.drain(..).enumerate() {
            let r = match t.join() {
                Ok(r) => r,
                Err(_) => Err(ServerError::Thread {
                    thread: i,
                    reason: "panicked".into(),
                }),
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.join_all();
    }
}

struct ThreadArgs {
    id: usize,
    worker: Worker,
    router: KeyRouter,
    nexus: Nexus<ThreadState>,
    bind: SocketAddr,
    idle: IdleMode,
    gro: bool,
    max_pkt: usize,
    barrier: Arc<Barrier>,
    ready: std::sync::mpsc::Sender<(usize, Result<SocketAddr, String>)>,
    shutdown: Arc<Shutdown>,
}

/// Where the answer to one operation goes.
#[derive(Clone, Copy, Debug)]
enum Dest {
    /// A request of its own: answered with a response message.
    Single(ReqHandle),
    /// Entry `pos` of BATCH `id` (a key of [`ThreadState::batches`]).
    Batch { id: usize, pos: usize },
}

/// One entry's answer inside a BATCH response.
#[derive(Default)]
struct Part {
    status: Option<Status>,
    body: Vec<u8>,
}

/// A BATCH whose entries are not all answered yet.
struct PendingBatch {
    handle: ReqHandle,
    left: usize,
    parts: Vec<Part>,
}

/// An operation submitted to the worker, waiting for its completion.
struct PendingOp {
    dest: Dest,
    op: u8,
    /// SCAN: the item count asked for (after the server's cap).
    scan_max: u32,
}

/// The per-thread state handed to the rpc handlers.
struct ThreadState {
    id: usize,
    router: KeyRouter,
    worker: Worker,
    next_tag: u64,
    ops: HashMap<u64, PendingOp>,
    forwards: HashMap<u64, Dest>,
    batches: slab::Slab<PendingBatch>,
    peers: Vec<Option<SessionId>>,
    stopping: bool,
    stats: ThreadStats,
    done: Vec<engine::Completion>,
    scratch: Vec<u8>,
}

/// Time the threads keep answering (retransmitted requests, late forwards) after every
/// thread has drained at shutdown.
const LINGER: Duration = Duration::from_millis(50);

fn thread_main(a: ThreadArgs) -> Result<(), ServerError> {
    let ThreadArgs {
        id,
        worker,
        router,
        nexus,
        bind,
        idle,
        gro,
        max_pkt,
        barrier,
        ready,
        shutdown,
    } = a;
    let threads = router.partitions();
    let state = ThreadState {
        id,
        router,
        worker,
        next_tag: 1,
        ops: HashMap::new(),
        forwards: HashMap::new(),
        batches: slab::Slab::new(),
        peers: vec![None; threads],
        stopping: false,
        stats: ThreadStats {
            thread_id: id as u64,
            ..ThreadStats::default()
        },
        done: Vec::new(),
        scratch: Vec::new(),
    };
    let rpc_cfg = RpcConfig {
        busy_poll: idle == IdleMode::BusyPoll,
        ..RpcConfig::default()
    };
    let made = UdpTransport::new(UdpConfig {
        bind,
        gro,
        max_pkt_size: max_pkt,
        ..UdpConfig::default()
    })
    .map_err(ServerError::from)
    .and_then(|udp| Ok(Rpc::new(&nexus, id as u8, udp, state, rpc_cfg)?));
    // Every Rpc must exist before any thread opens its forwarding sessions.
    barrier.wait();
    let mut rpc = match made {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send((id, Err(e.to_string())));
            shutdown.drained.fetch_add(1, Ordering::AcqRel);
            return Err(e);
        }
    };
    let _ = ready.send((id, Ok(rpc.transport().local_addr())));
    drop(ready);
    let uri = nexus.uri().to_string();
    for peer in 0..threads {
        if peer == id {
            continue;
        }
        match rpc.create_session(&uri, peer as u8) {
            Ok(s) => {
                if let Some(slot) = rpc.state_mut().peers.get_mut(peer) {
                    *slot = Some(s);
                }
            }
            Err(e) => tracing::warn!(thread = id, peer, error = %e, "no forwarding session"),
        }
    }
    rpc.set_continuation(|st: &mut ThreadState, ctx, c| st.on_forwarded(ctx, c));
    tracing::debug!(thread = id, addr = %rpc.transport().local_addr(), "serving");

    let mut last_work = Instant::now();
    let mut stop_seen: Option<Instant> = None;
    let mut drained_at: Option<Instant> = None;
    loop {
        let mut work = rpc.run_once();
        {
            let (st, ctx) = rpc.split();
            let mut done = std::mem::take(&mut st.done);
            if st.worker.poll(&mut done) > 0 {
                work = true;
            }
            for c in done.drain(..) {
                st.on_engine_done(ctx, c);
            }
            st.done = done;
        }
        let now = Instant::now();
        if work {
            last_work = now;
        }
        if stop_seen.is_none() && shutdown.stop.load(Ordering::Acquire) {
            stop_seen = Some(now);
            rpc.state_mut().stopping = true;
            tracing::debug!(thread = id, "stopping");
        }
        if let Some(since) = stop_seen {
            let st = rpc.state();
            let idle_now = st.ops.is_empty() && st.forwards.is_empty() && st.worker.pending() == 0;
            if drained_at.is_none() && idle_now {
                drained_at = Some(now);
                shutdown.drained.fetch_add(1, Ordering::AcqRel);
            }
            let all = shutdown.drained.load(Ordering::Acquire) >= shutdown.threads;
            if all && drained_at.is_some_and(|d| now.duration_since(d) >= LINGER) {
                break;
            }
            if now.duration_since(since) > shutdown.timeout {
                tracing::warn!(
                    thread = id,
                    pending = st.ops.len() + st.forwards.len(),
                    "shutdown timed out with requests in flight"
                );
                if drained_at.is_none() {
                    shutdown.drained.fetch_add(1, Ordering::AcqRel);
                }
                break;
            }
        }
        if let IdleMode::SpinThenSleep { spin } = idle {
            if !work
                && stop_seen.is_none()
                && rpc.state().worker.pending() == 0
                && now.duration_since(last_work) >= spin
            {
                let stop = &shutdown.stop;
                if rpc.run_until(
                    |r| r.state().worker.pending() > 0 || stop.load(Ordering::Relaxed),
                    Duration::from_millis(10),
                ) {
                    last_work = Instant::now();
                }
            }
        }
    }
    tracing::debug!(thread = id, "stopped");
    // Dropping the Rpc and then the worker (inside the state) closes the files.
    drop(rpc);
    Ok(())
}

impl ThreadState {
    fn respond(
        &mut self,
        ctx: &mut Ctx,
        h: ReqHandle,
        status: Status,
        flags: u16,
        count: u32,
        body: &[u8],
    ) {
        let mut m = ctx.alloc_msg(HDR_LEN + body.len());
        let buf = m.as_mut_slice();
        protocol::write_resp_header(buf, status, flags, count, body.len());
        if let Some(dst) = buf.get_mut(HDR_LEN..) {
            dst.copy_from_slice(body);
        }
        if status != Status::Ok && status != Status::NotFound {
            self.stats.errors += 1;
        }
        if let Err(e) = ctx.respond(h, m) {
            tracing::debug!(thread = self.id, error = %e, "response not sent");
        }
    }

    fn respond_err(&mut self, ctx: &mut Ctx, h: ReqHandle, status: Status, msg: &str) {
        self.respond(ctx, h, status, 0, 0, msg.as_bytes());
    }

    /// A parsed request may run: answers a malformed one with its error status (counted in
    /// `bad_requests`) and any one with SHUTTING_DOWN once the server is stopping.
    fn admit<T>(
        &mut self,
        ctx: &mut Ctx,
        h: ReqHandle,
        parsed: Result<T, protocol::RequestError>,
    ) -> Option<T> {
        match parsed {
            Err(e) => {
                self.stats.bad_requests += 1;
                tracing::debug!(thread = self.id, error = %e, "bad request");
                self.respond_err(ctx, h, e.status(), &e.to_string());
                None
            }
            Ok(_) if self.stopping => {
                self.respond_err(ctx, h, Status::ShuttingDown, "the server is shutting down");
                None
            }
            Ok(r) => Some(r),
        }
    }

    fn on_request(&mut self, ctx: &mut Ctx, req: RpcRequest<'_>) {
        let h = req.handle;
        if req.req_type == op::BATCH {
            self.on_batch(ctx, h, req.data);
            return;
        }
        let parsed = protocol::parse_request(req.req_type, req.data);
        let Some(parsed) = self.admit(ctx, h, parsed) else {
            return;
        };
        match parsed {
            Request::Info => {
                let info = protocol::ServerInfo {
                    threads: self.router.partitions() as u32,
                    thread_id: self.id as u32,
                    partitioning: protocol::PARTITION_FNV1A64_MOD,
                    max_key: engine::MAX_KEY_LEN as u32,
                    max_value: engine::MAX_VALUE_LEN as u32,
                    max_scan: protocol::MAX_SCAN_ITEMS,
                    max_batch: protocol::MAX_BATCH,
                }
                .encode();
                self.respond(ctx, h, Status::Ok, 0, 0, bytemuck::bytes_of(&info));
            }
            Request::Stats => {
                let ws = self.worker.stats();
                let mut s = self.stats;
                s.items = ws.items;
                s.engine_reads = ws.reads;
                s.engine_writes = ws.writes;
                s.cache_hits = ws.cache_hits;
                s.cache_misses = ws.cache_misses;
                s.file_bytes = ws.file_bytes;
                s.index_bytes = ws.index_bytes;
                s.sessions = ctx.num_sessions() as u64;
                let body = s.encode();
                self.respond(ctx, h, Status::Ok, 0, 0, bytemuck::bytes_of(&body));
            }
            Request::Op(Op::Scan { max: 0, .. }) => {
                self.stats.scans += 1;
                self.respond(ctx, h, Status::Ok, 0, 0, b"");
            }
            Request::Op(o) => self.execute(ctx, Dest::Single(h), o, req.data),
        }
    }

    /// A BATCH: every entry is checked before any runs (a bad one rejects the whole
    /// message); then each runs like a request of its own (forwarded if another thread owns
    /// its key) and the response goes out when the last entry is answered.
    fn on_batch(&mut self, ctx: &mut Ctx, h: ReqHandle, data: &[u8]) {
        let Some(reqs) = self.admit(ctx, h, protocol::parse_batch(data)) else {
            return;
        };
        let n = reqs.len();
        let id = self.batches.insert(PendingBatch {
            handle: h,
            left: n,
            parts: (0..n).map(|_| Part::default()).collect(),
        });
        for (pos, (r, raw)) in reqs.enumerate() {
            match r {
                Request::Op(o) => self.execute(ctx, Dest::Batch { id, pos }, o, raw),
                // parse_batch admits only GET, PUT and DELETE.
                Request::Info | Request::Stats => {
                    let msg = b"not allowed in a BATCH".to_vec();
                    self.answer(ctx, Dest::Batch { id, pos }, Status::BadRequest, msg);
                }
            }
        }
    }

    /// Runs a GET / PUT / DELETE / SCAN (`raw`: its encoding, for forwarding).
    fn execute(&mut self, ctx: &mut Ctx, dest: Dest, o: Op<&[u8]>, raw: &[u8]) {
        let req_type = o.code();
        let mut scan_max = 0;
        if let Op::Scan { max, .. } = o {
            // One SCAN answers for this thread's partition, capped per response.
            scan_max = u32::try_from(max)
                .unwrap_or(u32::MAX)
                .min(protocol::MAX_SCAN_ITEMS);
        } else {
            let owner = self.router.partition_of(o.key());
            if owner != self.id {
                self.forward(ctx, dest, owner, req_type, raw);
                return;
            }
        }
        let op = match o {
            Op::Scan { start, .. } => Op::Scan {
                start: start.to_vec(),
                max: scan_max as usize,
            },
            other => other.to_vec(),
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        self.ops.insert(
            tag,
            PendingOp {
                dest,
                op: req_type,
                scan_max,
            },
        );
        self.worker.submit(op, tag);
    }

    /// Answers a GET / PUT / DELETE (no flags, no count): a response of its own, or an entry
    /// of a BATCH (sent when it is the last one).
    fn answer(&mut self, ctx: &mut Ctx, dest: Dest, status: Status, body: Vec<u8>) {
        let id = match dest {
            Dest::Single(h) => {
                self.respond(ctx, h, status, 0, 0, &body);
                return;
            }
            Dest::Batch { id, pos } => {
                let Some(b) = self.batches.get_mut(id) else {
                    return;
                };
                if let Some(p) = b.parts.get_mut(pos) {
                    if p.status.is_none() {
                        b.left -= 1;
                    }
                    *p = Part {
                        status: Some(status),
                        body,
                    };
                }
                if status != Status::Ok && status != Status::NotFound {
                    self.stats.errors += 1;
                }
                if b.left > 0 {
                    return;
                }
                id
            }
        };
        let Some(b) = self.batches.try_remove(id) else {
            return;
        };
        let body_len: usize = b.parts.iter().map(|p| HDR_LEN + p.body.len()).sum();
        let mut m = ctx.alloc_msg(HDR_LEN + body_len);
        let buf = m.as_mut_slice();
        protocol::write_resp_header(buf, Status::Ok, 0, b.parts.len() as u32, body_len);
        let mut off = HDR_LEN;
        for p in &b.parts {
            let status = p.status.unwrap_or(Status::Internal);
            if let Some(dst) = buf.get_mut(off..) {
                protocol::write_resp_header(dst, status, 0, 0, p.body.len());
            }
            off += HDR_LEN;
            if let Some(dst) = buf.get_mut(off..off + p.body.len()) {
                dst.copy_from_slice(&p.body);
            }
            off += p.body.len();
        }
        if let Err(e) = ctx.respond(b.handle, m) {
            tracing::debug!(thread = self.id, error = %e, "batch response not sent");
        }
    }

    fn forward(&mut self, ctx: &mut Ctx, dest: Dest, owner: usize, req_type: u8, data: &[u8]) {
        let Some(session) = self.peers.get(owner).copied().flatten() else {
            let msg = b"no session to the key's owner thread".to_vec();
            self.answer(ctx, dest, Status::Internal, msg);
            return;
        };
        let tag = self.next_tag;
        self.next_tag += 1;
        let m = ctx.msg_from(data);
        match ctx.enqueue_request(session, req_type, m, tag) {
            Ok(()) => {
                self.stats.forwarded += 1;
                self.forwards.insert(tag, dest);
            }
            Err(RpcError::Overloaded) => {
                let msg = b"forwarding queue full".to_vec();
                self.answer(ctx, dest, Status::Overloaded, msg);
            }
            Err(e) => {
                let msg = format!("forwarding to thread {owner} failed: {e}");
                self.answer(ctx, dest, Status::Internal, msg.into_bytes());
            }
        }
    }

    fn on_forwarded(&mut self, ctx: &mut Ctx, c: RpcCompletion) {
        ctx.free_msg(c.req);
        let Some(dest) = self.forwards.remove(&c.tag) else {
            if let Ok(m) = c.result {
                ctx.free_msg(m);
            }
            return;
        };
        match (c.result, dest) {
            (Ok(resp), Dest::Single(h)) => {
                if let Err(e) = ctx.respond(h, resp) {
                    tracing::debug!(thread = self.id, error = %e, "forwarded response not sent");
                }
            }
            (Ok(resp), Dest::Batch { .. }) => {
                let (status, body) = match protocol::parse_response(resp.as_slice()) {
                    Ok(r) => (r.status, r.body.to_vec()),
                    Err(e) => (
                        Status::Internal,
                        format!("forwarded request: {e}").into_bytes(),
                    ),
                };
                ctx.free_msg(resp);
                self.answer(ctx, dest, status, body);
            }
            (Err(e), dest) => {
                let msg = format!("forwarded request failed: {e}");
                self.answer(ctx, dest, Status::Internal, msg.into_bytes());
            }
        }
    }

    fn on_engine_done(&mut self, ctx: &mut Ctx, c: engine::Completion) {
        let Some(p) = self.ops.remove(&c.tag) else {
            return;
        };
        match p.op {
            op::GET => self.stats.gets += 1,
            op::PUT => self.stats.puts += 1,
            op::DELETE => self.stats.deletes += 1,
            _ => self.stats.scans += 1,
        }
        let result = match (c.result, p.dest) {
            (Ok(Reply::Items(items)), Dest::Single(h)) => {
                self.respond_scan(ctx, h, &items, p.scan_max);
                return;
            }
            (r, _) => r,
        };
        let (status, body) = match result {
            Ok(Reply::Value(v)) => (Status::Ok, v),
            Ok(Reply::Written | Reply::Deleted) => (Status::Ok, Vec::new()),
            Ok(Reply::NotFound) => {
                self.stats.not_found += 1;
                (Status::NotFound, Vec::new())
            }
            Ok(Reply::Items(_)) => (Status::Internal, b"scan inside a batch".to_vec()),
            Err(e) => {
                let status = status_of(&e);
                if status == Status::Internal {
                    tracing::warn!(thread = self.id, error = %e, "engine error");
                }
                (status, e.to_string().into_bytes())
            }
        };
        self.answer(ctx, p.dest, status, body);
    }

    fn respond_scan(&mut self, ctx: &mut Ctx, h: ReqHandle, items: &[protocol::Item], max: u32) {
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        let mut count = 0u32;
        let mut more = false;
        for (k, v) in items {
            if body.len() + protocol::scan_item_len(k, v) > protocol::MAX_SCAN_BODY && count > 0 {
                more = true;
                break;
            }
            protocol::encode_scan_item(k, v, &mut body);
            count += 1;
        }
        // The client got all the items it asked for: there may be more.
        more |= count >= max;
        let flags = if more { protocol::RESP_FLAG_MORE } else { 0 };
        self.respond(ctx, h, Status::Ok, flags, count, &body);
        body.clear();
        if body.capacity() <= protocol::MAX_SCAN_BODY {
            self.scratch = body;
        }
    }
}

/// The status answering an engine error: the one mapping from engine errors to the wire.
fn status_of(e: &engine::Error) -> Status {
    match e {
        engine::Error::KeyTooLarge { .. } => Status::KeyTooLarge,
        engine::Error::ValueTooLarge { .. } => Status::ValueTooLarge,
        engine::Error::Closed => Status::ShuttingDown,
        _ => Status::Internal,
    }
}
