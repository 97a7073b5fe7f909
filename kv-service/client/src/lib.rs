//! The client library: connects to every thread of a `kv-service` server, routes each key
//! to the thread that owns it, and offers a blocking API ([`Client::get`], [`Client::put`],
//! [`Client::delete`], [`Client::scan`], [`Client::stats`]) and a pipelined one
//! ([`Client::submit`] many requests — GET, PUT, DELETE and SCAN — with your own tags, then
//! [`Client::poll`] / [`Client::wait`] for their [`Reply`]s, in any order). Pipelined GETs,
//! PUTs and DELETEs to one server thread travel together in BATCH messages
//! ([`ClientConfig::batch`]); a scan fans out to every server thread and merges the parts as
//! they arrive ([`kv_proto::ScanMerge`]).
//!
//! Every request is bounded: its rpc deadline is [`ClientConfig::timeout`], after which it
//! completes with [`Error::Timeout`] and the rpc layer frees its slot. A `Client` is one rpc
//! endpoint driven by the calling thread; use one per thread. It depends on `kv-proto` and the
//! rpc crate only — not on the storage engine.
//!
//! ```no_run
//! use kv_client::{Client, ClientConfig, Op, Reply};
//! # fn main() -> Result<(), kv_client::Error> {
//! let mut c = Client::connect("127.0.0.1:31850", ClientConfig::default())?;
//! c.put(b"apple", b"red")?;
//! assert_eq!(c.get(b"apple")?, Some(b"red".to_vec()));
//! // Pipelined: many requests in flight, answers matched by tag.
//! for i in 0..100u64 {
//!     c.submit(Op::Put { key: format!("k{i}").into_bytes(), value: vec![1; 100] }, i)?;
//! }
//! while let Some((tag, reply)) = c.wait() {
//!     assert_eq!(reply?, Reply::Written, "request {tag}");
//! }
//! # Ok(()) }
//! ```
//!
//! **Any transport.** [`Client::connect`] opens a UDP endpoint and blocks until connected;
//! [`Client::connect_tcp`] does the same over TCP, `Client::connect_ud` / `connect_rc` over
//! InfiniBand/RoCE verbs (feature `rdma`), and [`Client::connect_with`] over a
//! [`ClientTransport`] chosen at run time. [`Client::start`] takes an rpc endpoint the caller made — on any transport, on any clock
//! (e.g. the simulated fabric on a virtual clock) — and returns at once; the connection then
//! progresses with every [`Client::run_once`] / [`Client::poll`], so a test can drive clients
//! and servers from one thread, deterministically.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
mod config;
mod decode;
mod error;
mod transport;

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use kv_proto::{self as protocol, op, KeyRouter, Request, ScanMerge, ServerInfo, ThreadStats};
use rpc::{Completion, ConnectFailure, Nexus, Rpc, RpcConfig, RpcError, SessionId, SessionState};
use transports::udp::UdpTransport;
use transports::Transport;

pub use cluster::{ClusterClient, ClusterClientConfig, ClusterCounters};
pub use config::{Backoff, ClientConfig};
pub use error::Error;
pub use kv_proto::{Item, Op, Reply};
pub use transport::{AnyTransport, ClientTransport};

use decode::{decode, decode_batch, Decoded};

/// Who waits for a request's answer.
enum Owner {
    User(u64),
    Sync,
    /// A BATCH message: the user tag and operation of each entry, in order.
    Batch(Vec<(u64, u8)>),
    /// One server thread's part of scan `id` (a key of `Client::scans`).
    ScanPart(u64),
}

/// Who waits for a scan.
#[derive(Clone, Copy)]
enum ScanOwner {
    User(u64),
    Sync(u64),
}

/// A scan in progress: one round asks every server thread for its items from the cursor.
struct ScanOp {
    owner: ScanOwner,
    merge: ScanMerge,
    /// Parts of this round still to come.
    left: usize,
    err: Option<Error>,
}

/// Requests submitted for one server thread and not sent yet (a BATCH message in the
/// making: header first, then each request's encoding).
#[derive(Default)]
struct Pending {
    msg: Vec<u8>,
    tags: Vec<(u64, u8)>,
}

/// A BATCH message is sent once its encoding reaches this size, whatever its count.
const BATCH_BYTES: usize = 64 << 10;

/// A request the rpc layer holds.
struct InFlight {
    owner: Owner,
    op: u8,
    session: SessionId,
}

/// Where reconnecting one server thread's failed session stands.
#[derive(Clone, Copy, Debug, Default)]
struct Redial {
    /// Failed attempts in a row (0: the next attempt may start at once).
    failures: u32,
    /// An attempt (a handshake) is under way.
    attempting: bool,
    /// No attempt before this instant of the rpc clock (ns).
    not_before: u64,
    /// Why the last attempt failed.
    last: Option<ConnectFailure>,
}

/// Counters of a client.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    /// BATCH messages sent.
    pub batches: u64,
    /// Requests those BATCH messages carried.
    pub batched: u64,
    /// Requests sent on their own (single GET / PUT / DELETE, SCAN parts, INFO, STATS).
    pub single: u64,
    /// BATCH messages that carried reads and writes together (only to a server that
    /// acknowledges writes at once, [`protocol::INFO_WRITES_AT_ONCE`]).
    pub mixed_batches: u64,
}

/// Where the connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Conn {
    /// Session 0 is connecting; INFO (sync tag) is queued on it.
    Info(u64),
    /// INFO answered; the sessions to the other threads are connecting.
    Sessions,
    /// Connected to every thread.
    Ready,
}

/// What one connect step found.
enum ConnectStep {
    Pending,
    Ready,
    /// The server needs a receive ring of this many packets (UDP connect only).
    Reopen(usize),
}

/// A connection to a kv-service server (all its threads), over transport `T`. See the module
/// docs.
pub struct Client<T: Transport = UdpTransport> {
    rpc: Rpc<T, ()>,
    nexus: Nexus,
    /// The server's session-management URI.
    server: String,
    sessions: Vec<SessionId>,
    info: ServerInfo,
    router: KeyRouter,
    cfg: ClientConfig,
    conn: Conn,
    /// Reopen the endpoint with a bigger ring when the server needs it (UDP, default ring).
    auto_ring: bool,
    next_tag: u64,
    inflight: HashMap<u64, InFlight>,
    user_inflight: usize,
    done: VecDeque<(u64, Result<Reply, Error>)>,
    sync_done: HashMap<u64, Result<Decoded, Error>>,
    buf: Vec<u8>,
    /// Effective batch size (1: no batching).
    batch: usize,
    /// Submitted requests not sent yet: buffer `2 t` holds thread `t`'s reads, `2 t + 1` its
    /// writes. A BATCH is answered when its slowest entry is done, so where a write waits for
    /// the disk reads batched with it would wait too, and the two go apart; where the server
    /// acknowledges writes at once ([`protocol::INFO_WRITES_AT_ONCE`]) both buffers of a
    /// thread leave as one BATCH, reads first (the server answers leading cached reads
    /// in place), which halves the messages of a mixed workload.
    pending: Vec<Pending>,
    /// Whether a thread's reads and writes share a BATCH (see `pending`).
    mixed: bool,
    /// Tag vectors of finished batches, reused.
    spare_tags: Vec<Vec<(u64, u8)>>,
    /// Scans in progress, by id.
    scans: HashMap<u64, ScanOp>,
    /// Completions taken from the rpc layer, routed after the event loop returns (reused).
    got: Vec<Completion>,
    counters: ClientCounters,
    /// Per server thread (index = thread), the reconnect state of its session.
    redial: Vec<Redial>,
    /// Threads with a reconnect attempt under way.
    redialing: usize,
    /// Jitter of the reconnect backoff (splitmix64 state).
    rng: u64,
}

/// Receive ring of a client whose `ClientConfig::rx_ring_size` is `None`, unless the
/// server has more than 32 threads.
const DEFAULT_RX_RING: usize = 1024;

impl ClientConfig {
    /// The rpc settings a client endpoint needs (for [`Client::start`] callers that build
    /// their own): the connect timeout and busy polling of this configuration.
    pub fn rpc_config(&self) -> RpcConfig {
        RpcConfig {
            connect_timeout: self.connect_timeout,
            busy_poll: self.busy_poll,
            ..RpcConfig::default()
        }
    }
}

impl Client<UdpTransport> {
    /// Connects to the server whose listen (session-management) address is `addr`
    /// (`host:port`) over UDP: asks thread 0 for the server's thread count and partitioning,
    /// then opens a session to every thread. Blocks until connected (at most about the
    /// connect timeout).
    pub fn connect(addr: &str, cfg: ClientConfig) -> Result<Self, Error> {
        transport::connect_over(addr, cfg, &transport::udp)
    }

    /// The server's listen address.
    pub fn server_addr(&self) -> Option<SocketAddr> {
        self.server.parse().ok()
    }
}

impl<T: Transport> Client<T> {
    /// Starts connecting to the server whose Nexus is at `server_uri` (`host:port`, or
    /// `local:NAME` on a [`LocalHub`](rpc::LocalHub)) over an rpc endpoint of `nexus` the
    /// caller made — any transport, any clock (see [`ClientConfig::rpc_config`] for its
    /// settings). Returns at once; the connection progresses with each [`Client::run_once`]
    /// (or `poll`, `wait`, ...) until [`Client::poll_connect`] says it is ready. The
    /// endpoint's receive ring must hold 32 credits per server thread.
    pub fn start(
        nexus: Nexus,
        rpc: Rpc<T, ()>,
        server_uri: &str,
        cfg: ClientConfig,
    ) -> Result<Self, Error> {
        Self::start_inner(nexus, rpc, server_uri, cfg, false)
    }

    fn start_inner(
        nexus: Nexus,
        mut rpc: Rpc<T, ()>,
        server_uri: &str,
        cfg: ClientConfig,
        auto_ring: bool,
    ) -> Result<Self, Error> {
        let unreachable = |source| Error::Unreachable {
            addr: server_uri.to_string(),
            source,
        };
        let s0 = rpc.create_session(server_uri, 0).map_err(unreachable)?;
        // Jitter differs between clients (uri, start time) yet repeats under a virtual clock.
        let rng = protocol::fnv1a64(server_uri.as_bytes()) ^ rpc.now_ns();
        let mut client = Client {
            rpc,
            nexus,
            server: server_uri.to_string(),
            sessions: vec![s0],
            info: ServerInfo {
                threads: 1,
                thread_id: 0,
                partitioning: protocol::PARTITION_FNV1A64_MOD,
                max_key: protocol::MAX_KEY_LEN as u32,
                max_value: protocol::MAX_VALUE_LEN as u32,
                max_scan: protocol::MAX_SCAN_ITEMS,
                max_batch: 0,
                flags: 0,
            },
            router: KeyRouter::new(1),
            cfg,
            conn: Conn::Sessions,
            auto_ring,
            next_tag: 1,
            inflight: HashMap::new(),
            user_inflight: 0,
            done: VecDeque::new(),
            sync_done: HashMap::new(),
            buf: Vec::new(),
            batch: 1,
            pending: Vec::new(),
            mixed: false,
            spare_tags: Vec::new(),
            scans: HashMap::new(),
            got: Vec::new(),
            counters: ClientCounters::default(),
            redial: vec![Redial::default()],
            redialing: 0,
            rng,
        };
        // INFO waits in session 0's backlog until the handshake completes.
        let deadline = client.cfg.connect_timeout;
        let tag = client.send_with_deadline(0, &Request::Info, Owner::Sync, deadline)?;
        client.conn = Conn::Info(tag);
        Ok(client)
    }

    /// Drives the connect: `Ok(true)` once connected to every server thread, `Ok(false)` while
    /// under way, an error if it failed.
    pub fn poll_connect(&mut self) -> Result<bool, Error> {
        self.pump(Duration::ZERO);
        match self.connect_step()? {
            ConnectStep::Ready => Ok(true),
            ConnectStep::Pending => Ok(false),
            ConnectStep::Reopen(_) => Err(Error::Rpc(RpcError::RingExhausted)),
        }
    }

    /// Runs the connect until it is done; `Some(ring)` if the endpoint must be reopened with a
    /// ring of that many packets.
    fn block_until_connected(&mut self) -> Result<Option<usize>, Error> {
        loop {
            match self.connect_step()? {
                ConnectStep::Ready => return Ok(None),
                ConnectStep::Reopen(need) => return Ok(Some(need)),
                ConnectStep::Pending => {
                    self.pump(Duration::from_millis(1));
                }
            }
        }
    }

    fn unreachable(&self, source: RpcError) -> Error {
        Error::Unreachable {
            addr: self.server.clone(),
            source,
        }
    }

    fn connect_step(&mut self) -> Result<ConnectStep, Error> {
        match self.conn {
            Conn::Ready => return Ok(ConnectStep::Ready),
            Conn::Info(tag) => {
                let Some(r) = self.sync_done.remove(&tag) else {
                    return Ok(ConnectStep::Pending);
                };
                let info = match r {
                    Ok(Decoded::Info(i)) => i,
                    Ok(_) => return Err(Error::Incompatible("unexpected INFO answer".into())),
                    Err(Error::Rpc(e)) => return Err(self.unreachable(e)),
                    Err(Error::Timeout(_)) => return Err(self.unreachable(RpcError::Timeout)),
                    Err(e) => return Err(e),
                };
                self.on_info(info)?;
                let need = (info.threads as usize * RpcConfig::default().credits as usize + 64)
                    .next_power_of_two();
                if self.auto_ring && need > self.rpc.transport().rx_ring_size() {
                    return Ok(ConnectStep::Reopen(need));
                }
                for t in 1..info.threads {
                    // A local refusal (e.g. RingExhausted: the ring is too small for the
                    // server) is an rpc error; the remote's refusal comes as a failed session.
                    let s = self.rpc.create_session(&self.server, t as u8)?;
                    self.sessions.push(s);
                    self.redial.push(Redial::default());
                }
                self.conn = Conn::Sessions;
            }
            Conn::Sessions => {}
        }
        for &s in &self.sessions {
            match self.rpc.session_state(s) {
                Some(SessionState::Connected) => {}
                Some(SessionState::Connecting) => return Ok(ConnectStep::Pending),
                Some(SessionState::Failed(f)) => {
                    let t = self.sessions.iter().position(|&x| x == s).unwrap_or(0);
                    return Err(self.unreachable(f.to_error(t as u8)));
                }
                _ => return Err(self.unreachable(RpcError::InvalidSession(s))),
            }
        }
        self.conn = Conn::Ready;
        Ok(ConnectStep::Ready)
    }

    /// Takes in what INFO says: the partitioning, the batch size, the buffers.
    fn on_info(&mut self, info: ServerInfo) -> Result<(), Error> {
        if info.partitioning != protocol::PARTITION_FNV1A64_MOD {
            return Err(Error::Incompatible(format!(
                "unknown partitioning scheme {}",
                info.partitioning
            )));
        }
        if info.threads == 0 || info.threads > 255 {
            return Err(Error::Incompatible(format!(
                "server reports {} threads",
                info.threads
            )));
        }
        self.info = info;
        self.router = KeyRouter::new(info.threads as usize);
        self.batch = self
            .cfg
            .batch
            .min(info.max_batch.min(protocol::MAX_BATCH) as usize)
            .max(1);
        self.pending = (0..2 * info.threads).map(|_| Pending::default()).collect();
        self.mixed = info.flags & protocol::INFO_WRITES_AT_ONCE != 0;
        Ok(())
    }

    /// What the server said about itself at connect time.
    pub fn server_info(&self) -> ServerInfo {
        self.info
    }

    /// The server's session-management URI.
    pub fn server_uri(&self) -> &str {
        &self.server
    }

    /// The server thread that owns `key`.
    pub fn thread_for(&self, key: &[u8]) -> usize {
        self.router.partition_of(key)
    }

    /// How many requests went out batched and how many alone.
    pub fn counters(&self) -> ClientCounters {
        self.counters
    }

    /// The client's rpc endpoint (e.g. its transport's counters).
    pub fn rpc(&self) -> &Rpc<T, ()> {
        &self.rpc
    }

    /// The value of `key`, or `None` if it does not exist.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        match self.call(Op::Get { key })? {
            Reply::Value(v) => Ok(Some(v)),
            _ => Ok(None),
        }
    }

    /// Sets `key` to `value`; returns once the server's engine acknowledged the write.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.call(Op::Put { key, value }).map(|_| ())
    }

    /// Deletes `key`; returns whether it existed.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, Error> {
        Ok(self.call(Op::Delete { key })? == Reply::Deleted)
    }

    /// Up to `max` items with key ≥ `start`, in key order. Fans out to every server thread
    /// (each holds one partition) and merges; continues past the per-response caps until
    /// `max` items are found or the key space is exhausted.
    pub fn scan(&mut self, start: &[u8], max: usize) -> Result<Vec<Item>, Error> {
        protocol::check_key(start)?;
        let tag = self.next_tag;
        self.next_tag += 1;
        self.start_scan(ScanOwner::Sync(tag), start.to_vec(), max);
        match self.wait_sync(tag)? {
            Decoded::Reply(Reply::Items(items)) => Ok(items),
            _ => Err(Error::Incompatible("unexpected SCAN answer".into())),
        }
    }

    /// The counters of every server thread (thread `i` at index `i`).
    pub fn stats(&mut self) -> Result<Vec<ThreadStats>, Error> {
        let mut tags = Vec::new();
        for t in 0..self.sessions.len() {
            tags.push(self.send(t, &Request::Stats, Owner::Sync)?);
        }
        let mut out = Vec::new();
        for tag in tags {
            match self.wait_sync(tag)? {
                Decoded::Stats(s) => out.push(s),
                _ => return Err(Error::Incompatible("unexpected STATS answer".into())),
            }
        }
        Ok(out)
    }

    /// Pipelined API: issues `op` without waiting; its outcome comes out of
    /// [`Client::poll`] or [`Client::wait`] with `tag`. Errors here (key or value too large,
    /// local queue full) mean the request was not issued. With batching
    /// ([`ClientConfig::batch`]) the request may wait in a buffer until the next
    /// `poll` / `wait` / [`Client::flush`]; if sending it then fails, the failure is its
    /// outcome. Requests in flight at the same time may execute in any order: do not
    /// pipeline two writes of one key if their order matters.
    pub fn submit(&mut self, op: Op, tag: u64) -> Result<(), Error> {
        if let Op::Scan { start, max } = op {
            protocol::check_key(&start)?;
            self.user_inflight += 1;
            self.start_scan(ScanOwner::User(tag), start, max);
            return Ok(());
        }
        let req = Request::Op(op.view());
        if self.batch <= 1 {
            self.send_routed(&req, Owner::User(tag))?;
            self.user_inflight += 1;
            return Ok(());
        }
        let t = self.check_and_route(&req)?;
        let batch = self.batch;
        let b = 2 * t + usize::from(op.is_write());
        let Some(p) = self.pending.get_mut(b) else {
            return Err(Error::Incompatible(format!("no session to thread {t}")));
        };
        if p.tags.is_empty() {
            protocol::begin_batch(&mut p.msg);
        }
        protocol::append_request(&req, &mut p.msg);
        p.tags.push((tag, req.op()));
        self.user_inflight += 1;
        if self.mixed {
            let (n, bytes) = self
                .pending
                .get(2 * t..2 * t + 2)
                .unwrap_or_default()
                .iter()
                .fold((0, 0), |(n, b), p| (n + p.tags.len(), b + p.msg.len()));
            if n >= batch || bytes >= BATCH_BYTES {
                self.flush_thread(t);
            }
        } else if p.tags.len() >= batch || p.msg.len() >= BATCH_BYTES {
            self.flush_buffer(b);
        }
        Ok(())
    }

    /// Pipelined API: sends every submitted request still waiting in a batch buffer (`poll`
    /// and `wait` do this themselves).
    pub fn flush(&mut self) {
        for t in 0..self.pending.len() / 2 {
            self.flush_thread(t);
        }
    }

    /// Sends thread `t`'s buffers: apart, or as one BATCH (reads, then writes) when the
    /// server acknowledges writes at once.
    fn flush_thread(&mut self, t: usize) {
        let (r, w) = (2 * t, 2 * t + 1);
        if self.mixed {
            if let [reads, writes] = self.pending.get_mut(r..=w).unwrap_or_default() {
                if !reads.tags.is_empty() && !writes.tags.is_empty() {
                    // The write buffer's entries (after its BATCH header) join the reads.
                    let entries = writes.msg.get(protocol::HDR_LEN..).unwrap_or_default();
                    reads.msg.extend_from_slice(entries);
                    reads.tags.append(&mut writes.tags);
                    writes.msg.clear();
                    self.counters.mixed_batches += 1;
                }
            }
        }
        self.flush_buffer(r);
        self.flush_buffer(w);
    }

    /// Pipelined requests submitted and not yet returned by `poll` / `wait`.
    pub fn in_flight(&self) -> usize {
        self.user_inflight + self.done.len()
    }

    /// How long until a reconnect may be tried, if some server thread is backing off after
    /// failed reconnect attempts (requests for it fail at once with [`Error::Unavailable`]
    /// until then); `None` if no thread is. A caller that would rather wait than fail sleeps
    /// this long, then sends: the request starts the next attempt.
    pub fn reconnect_wait(&self) -> Option<Duration> {
        let now = self.rpc.now_ns();
        self.redial
            .iter()
            .filter(|r| !r.attempting && r.not_before > now)
            .map(|r| Duration::from_nanos(r.not_before - now))
            .min()
    }

    /// Gives up on every request not yet answered: buffered ones and those the rpc layer
    /// holds complete with `Error::Rpc(RpcError::Cancelled)` (a request already at the server
    /// may still run there). Their outcomes come out of `poll` / `wait` as usual.
    pub fn cancel_all(&mut self) {
        for p in &mut self.pending {
            p.msg.clear();
        }
        let buffered: Vec<(u64, u8)> = self
            .pending
            .iter_mut()
            .flat_map(|p| std::mem::take(&mut p.tags))
            .collect();
        for (tag, _) in buffered {
            self.finish(0, Owner::User(tag), Err(Error::Rpc(RpcError::Cancelled)));
        }
        let mut held: Vec<(u64, SessionId)> =
            self.inflight.iter().map(|(&t, f)| (t, f.session)).collect();
        held.sort_unstable();
        for (tag, session) in held {
            self.rpc.cancel_request(session, tag);
        }
        self.pump(Duration::ZERO);
    }

    /// Closes the sessions to the server (the rpc disconnect handshake), so the server frees
    /// them at once instead of reaping them as failed: cancels what is not answered, then
    /// waits up to the connect timeout for the server to confirm. Dropping a client does the
    /// same with a shorter wait; call this to know whether it worked.
    pub fn close(mut self) -> Result<(), Error> {
        let bound = self.cfg.connect_timeout;
        if self.disconnect_all(bound) {
            Ok(())
        } else {
            Err(self.unreachable(RpcError::Timeout))
        }
    }

    /// Cancels everything, starts disconnecting every connected session and runs the event
    /// loop (sleeping when idle) until they are gone or `bound` has passed in real time.
    /// Returns whether all are gone.
    fn disconnect_all(&mut self, bound: Duration) -> bool {
        self.cancel_all();
        let mut closing = Vec::new();
        for &s in &self.sessions {
            let state = self.rpc.session_state(s);
            let destroyed = matches!(
                state,
                Some(SessionState::Connected | SessionState::Failed(_))
            ) && self.rpc.destroy_session(s).is_ok();
            // Only a connected session waits for the server's confirmation.
            if destroyed && state == Some(SessionState::Connected) {
                closing.push(s);
            }
        }
        let end = std::time::Instant::now() + bound;
        loop {
            closing.retain(|&s| self.rpc.session_state(s).is_some());
            if closing.is_empty() {
                return true;
            }
            if std::time::Instant::now() >= end {
                return false;
            }
            if !self.rpc.run_once() {
                self.rpc.wait_idle(Duration::from_millis(1));
            }
        }
    }

    /// Pipelined API: runs the event loop once (never blocks) and returns a finished
    /// request, if any.
    pub fn poll(&mut self) -> Option<(u64, Result<Reply, Error>)> {
        if self.done.is_empty() {
            self.pump(Duration::ZERO);
        }
        self.done.pop_front()
    }

    /// Runs the event loop once (never blocks): sends buffered requests, receives, routes
    /// completions. Returns whether anything happened — for a driver that steps clients and
    /// servers in turn and moves virtual time on when none has work.
    pub fn run_once(&mut self) -> bool {
        self.pump(Duration::ZERO)
    }

    /// When the client's rpc endpoint next has timer work (ns on its clock).
    pub fn next_timer_ns(&self) -> u64 {
        self.rpc.next_timer_ns()
    }

    /// Pipelined API: waits up to `max` for the next finished request; `None` if none is in
    /// flight or none finished in time.
    pub fn wait_timeout(&mut self, max: Duration) -> Option<(u64, Result<Reply, Error>)> {
        let end = std::time::Instant::now() + max;
        loop {
            if let Some(d) = self.done.pop_front() {
                return Some(d);
            }
            let left = end.saturating_duration_since(std::time::Instant::now());
            if self.user_inflight == 0 || left.is_zero() {
                return None;
            }
            self.pump(left.min(Duration::from_millis(1)));
        }
    }

    /// Failed reconnect attempts in a row, for the server thread with the most (0 while every
    /// session is up or its first attempt is still to come).
    pub fn reconnect_failures(&self) -> u32 {
        self.redial.iter().map(|r| r.failures).max().unwrap_or(0)
    }

    /// Pipelined API: waits for the next finished request; `None` if none is in flight.
    /// Bounded by the request timeout.
    pub fn wait(&mut self) -> Option<(u64, Result<Reply, Error>)> {
        loop {
            if let Some(d) = self.done.pop_front() {
                return Some(d);
            }
            if self.user_inflight == 0 {
                return None;
            }
            self.pump(Duration::from_millis(1));
        }
    }

    // ------------------------------------------------------------------ internals

    fn call(&mut self, op: Op<&[u8]>) -> Result<Reply, Error> {
        let tag = self.send_routed(&Request::Op(op), Owner::Sync)?;
        match self.wait_sync(tag)? {
            Decoded::Reply(r) => Ok(r),
            _ => Err(Error::Incompatible("unexpected answer".into())),
        }
    }

    /// Checks the key and value sizes; returns the server thread that owns the key.
    fn check_and_route(&self, req: &Request<'_>) -> Result<usize, Error> {
        let Request::Op(o) = req else {
            return Ok(0);
        };
        o.check_limits(self.info.max_value as usize)?;
        Ok(self.router.partition_of(o.key()))
    }

    fn send_routed(&mut self, req: &Request<'_>, owner: Owner) -> Result<u64, Error> {
        let t = self.check_and_route(req)?;
        self.send(t, req, owner)
    }

    fn send(&mut self, thread: usize, req: &Request<'_>, owner: Owner) -> Result<u64, Error> {
        let deadline = self.cfg.timeout;
        self.send_with_deadline(thread, req, owner, deadline)
    }

    fn send_with_deadline(
        &mut self,
        thread: usize,
        req: &Request<'_>,
        owner: Owner,
        deadline: Duration,
    ) -> Result<u64, Error> {
        protocol::encode_request(req, &mut self.buf);
        let msg = std::mem::take(&mut self.buf);
        let r = self.send_msg(thread, req.op(), &msg, owner, deadline);
        self.buf = msg;
        r
    }

    /// Sends batch buffer `b` (see `pending`): a BATCH message, or a plain request if it
    /// holds one. If that fails, every request in it completes with the error.
    fn flush_buffer(&mut self, b: usize) {
        let thread = b / 2;
        let Some(p) = self.pending.get_mut(b) else {
            return;
        };
        if p.tags.is_empty() {
            return;
        }
        let spare = self.spare_tags.pop().unwrap_or_default();
        let tags = std::mem::replace(&mut p.tags, spare);
        let mut msg = std::mem::take(&mut p.msg);
        let deadline = self.cfg.timeout;
        if let [(tag, op)] = tags.as_slice() {
            let (tag, op) = (*tag, *op);
            self.recycle(tags);
            let one = msg.get(protocol::HDR_LEN..).unwrap_or(&[]);
            if let Err(e) = self.send_msg(thread, op, one, Owner::User(tag), deadline) {
                self.finish(0, Owner::User(tag), Err(e));
            }
        } else {
            protocol::finish_batch(&mut msg, tags.len() as u32);
            // On failure, send_msg completes the entries itself.
            let _ = self.send_msg(thread, op::BATCH, &msg, Owner::Batch(tags), deadline);
        }
        if let Some(p) = self.pending.get_mut(b) {
            p.msg = msg;
        }
    }

    /// Enqueues the encoded request `msg` of rpc type `op` to `thread` with the given
    /// deadline; returns its rpc tag. If it cannot be sent, a BATCH owner's entries complete
    /// with the error here.
    fn send_msg(
        &mut self,
        thread: usize,
        op: u8,
        msg: &[u8],
        owner: Owner,
        deadline: Duration,
    ) -> Result<u64, Error> {
        let session = match self.sessions.get(thread) {
            Some(s) => *s,
            None => {
                let e = Error::Incompatible(format!("no session to thread {thread}"));
                return Err(self.fail_owner(owner, e));
            }
        };
        if let Err(e) = self.redial_if_failed(thread, session) {
            return Err(self.fail_owner(owner, e));
        }
        let m = self.rpc.ctx().msg_from(msg);
        let tag = self.next_tag;
        self.next_tag += 1;
        if let Err(e) = self
            .rpc
            .enqueue_request_with_deadline(session, op, m, tag, Some(deadline))
        {
            return Err(self.fail_owner(owner, Error::Rpc(e)));
        }
        match &owner {
            Owner::Batch(tags) => {
                self.counters.batches += 1;
                self.counters.batched += tags.len() as u64;
            }
            _ => self.counters.single += 1,
        }
        self.inflight.insert(tag, InFlight { owner, op, session });
        Ok(tag)
    }

    fn wait_sync(&mut self, tag: u64) -> Result<Decoded, Error> {
        loop {
            if let Some(r) = self.sync_done.remove(&tag) {
                return r;
            }
            let scanning = self
                .scans
                .values()
                .any(|s| matches!(s.owner, ScanOwner::Sync(t) if t == tag));
            if !scanning && !self.inflight.contains_key(&tag) {
                return Err(Error::Timeout(self.cfg.timeout));
            }
            self.pump(Duration::from_millis(1));
        }
    }

    /// Runs the event loop (once, or up to `max` when not busy-polling) and routes the
    /// completions. Returns whether anything happened.
    fn pump(&mut self, max: Duration) -> bool {
        self.flush();
        let mut got = std::mem::take(&mut self.got);
        let work = if self.cfg.busy_poll || max.is_zero() {
            let mut w = self.rpc.run_once();
            while let Some(c) = self.rpc.poll_completion() {
                got.push(c);
            }
            if !w && got.is_empty() && !max.is_zero() && self.handshaking() {
                // Only a handshake to wait for (a server that may be down): sleep in the
                // transport's wait instead of spinning, even when busy-polling.
                self.rpc.wait_idle(max);
                w = self.rpc.run_once();
                while let Some(c) = self.rpc.poll_completion() {
                    got.push(c);
                }
            }
            w
        } else {
            self.rpc.run_until(
                |r| {
                    while let Some(c) = r.poll_completion() {
                        got.push(c);
                    }
                    !got.is_empty()
                },
                max,
            )
        };
        let work = work || !got.is_empty();
        for c in got.drain(..) {
            self.route(c);
        }
        self.got = got;
        if self.redialing > 0 {
            self.check_redials();
        }
        work
    }

    /// Whether the client waits for a connect handshake: the first connect, or a reconnect.
    fn handshaking(&self) -> bool {
        self.conn != Conn::Ready || self.redialing > 0
    }

    /// Before a request goes out on `thread`'s `session`: if the session failed, start a
    /// reconnect (the request then waits for the handshake, or fails with it) unless the
    /// thread is backing off after failed attempts — then the request fails at once.
    fn redial_if_failed(&mut self, thread: usize, session: SessionId) -> Result<(), Error> {
        let Some(SessionState::Failed(f)) = self.rpc.session_state(session) else {
            return Ok(());
        };
        if !self.cfg.auto_reconnect {
            return Ok(()); // the rpc layer refuses the request: NotConnected
        }
        let now = self.rpc.now_ns();
        if self.redial.get(thread).is_some_and(|r| r.attempting) {
            self.attempt_failed(thread, f, now);
        }
        let Some(r) = self.redial.get_mut(thread) else {
            return Ok(());
        };
        if now < r.not_before {
            return Err(Error::Unavailable {
                addr: self.server.clone(),
                failures: r.failures,
                retry_in: Duration::from_nanos(r.not_before - now),
                source: r.last.unwrap_or(f).to_error(thread as u8),
            });
        }
        match self.rpc.reconnect(session) {
            Ok(()) => {
                r.attempting = true;
                self.redialing += 1;
                tracing::debug!(thread, failures = r.failures, "reconnecting");
            }
            Err(e) => tracing::debug!(thread, error = %e, "reconnect refused"),
        }
        Ok(())
    }

    /// Looks at the reconnect attempts under way: connected ones reset their thread's
    /// backoff, failed ones extend it.
    fn check_redials(&mut self) {
        let now = self.rpc.now_ns();
        for t in 0..self.redial.len() {
            if !self.redial.get(t).is_some_and(|r| r.attempting) {
                continue;
            }
            let Some(&s) = self.sessions.get(t) else {
                continue;
            };
            match self.rpc.session_state(s) {
                Some(SessionState::Connected) => {
                    if let Some(r) = self.redial.get_mut(t) {
                        *r = Redial::default();
                    }
                    self.redialing = self.redialing.saturating_sub(1);
                    tracing::debug!(thread = t, "reconnected");
                }
                Some(SessionState::Failed(f)) => self.attempt_failed(t, f, now),
                _ => {}
            }
        }
    }

    /// Thread `t`'s reconnect attempt failed with `f` (at `now`): back off.
    fn attempt_failed(&mut self, t: usize, f: ConnectFailure, now: u64) {
        let unit = self.next_unit();
        let backoff = self.cfg.reconnect_backoff;
        let Some(r) = self.redial.get_mut(t) else {
            return;
        };
        r.attempting = false;
        r.failures = r.failures.saturating_add(1);
        r.last = Some(f);
        let wait = backoff.wait(r.failures, unit);
        r.not_before = now.saturating_add(wait.as_nanos().min(u128::from(u64::MAX)) as u64);
        self.redialing = self.redialing.saturating_sub(1);
        tracing::debug!(
            thread = t,
            failures = r.failures,
            ?f,
            wait_ms = wait.as_millis() as u64,
            "reconnect failed; backing off"
        );
    }

    /// A uniform value in `[0, 1)` (splitmix64).
    fn next_unit(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn route(&mut self, c: Completion) {
        self.rpc.ctx().free_msg(c.req);
        let Some(f) = self.inflight.remove(&c.tag) else {
            // Answer to a request already given up on (a cancelled scan part).
            if let Ok(m) = c.result {
                self.rpc.ctx().free_msg(m);
            }
            return;
        };
        let result = match c.result {
            Ok(m) => {
                let r = match &f.owner {
                    Owner::Batch(tags) => decode_batch(tags, m.as_slice()),
                    _ => decode(f.op, m.as_slice()),
                };
                self.rpc.ctx().free_msg(m);
                r
            }
            Err(e) => Err(Error::from_rpc(e, self.cfg.timeout)),
        };
        self.finish(c.tag, f.owner, result);
    }

    /// Starts a scan: a SCAN from `start` to every server thread.
    fn start_scan(&mut self, owner: ScanOwner, start: Vec<u8>, max: usize) {
        let id = self.next_tag;
        self.next_tag += 1;
        self.scans.insert(
            id,
            ScanOp {
                owner,
                merge: ScanMerge::new(start, max),
                left: 0,
                err: None,
            },
        );
        self.scan_round(id);
    }

    /// Sends scan `id`'s next round, or completes it if it has all its items.
    fn scan_round(&mut self, id: u64) {
        let cap = self.info.max_scan;
        let threads = self.sessions.len();
        let Some(sc) = self.scans.get_mut(&id) else {
            return;
        };
        let Some((cursor, count)) = sc.merge.next_round(cap) else {
            self.end_scan(id);
            return;
        };
        let cursor = cursor.to_vec();
        sc.left = threads;
        for t in 0..threads {
            let req = Request::Op(Op::Scan {
                start: &cursor,
                max: count as usize,
            });
            if let Err(e) = self.send(t, &req, Owner::ScanPart(id)) {
                self.on_scan_part(id, Err(e));
            }
        }
    }

    /// One thread's answer to scan `id`'s current round.
    fn on_scan_part(&mut self, id: u64, result: Result<Decoded, Error>) {
        let Some(sc) = self.scans.get_mut(&id) else {
            return;
        };
        let was_ok = sc.err.is_none();
        match result {
            Ok(Decoded::Scan(items, more)) => {
                if let Err(e) = sc.merge.add_part(items, more) {
                    sc.err.get_or_insert(Error::Incompatible(e.to_string()));
                }
            }
            Ok(_) => {
                sc.err
                    .get_or_insert(Error::Incompatible("unexpected SCAN answer".into()));
            }
            Err(e) => {
                sc.err.get_or_insert(e);
            }
        }
        sc.left = sc.left.saturating_sub(1);
        let first_error = was_ok && sc.err.is_some();
        if sc.left > 0 {
            if first_error {
                // The scan has failed: free the other parts' rpc slots now.
                self.cancel_scan_parts(id);
            }
            return;
        }
        if sc.err.is_some() {
            self.end_scan(id);
            return;
        }
        if sc.merge.end_round() {
            self.scan_round(id);
        } else {
            self.end_scan(id);
        }
    }

    /// Cancels the parts of scan `id` still in flight; they complete as cancelled.
    fn cancel_scan_parts(&mut self, id: u64) {
        let mut parts: Vec<(u64, SessionId)> = self
            .inflight
            .iter()
            .filter(|(_, f)| matches!(f.owner, Owner::ScanPart(s) if s == id))
            .map(|(&tag, f)| (tag, f.session))
            .collect();
        // In tag order: the same calls in the same order every run (the map's order is not).
        parts.sort_unstable();
        for (tag, session) in parts {
            self.rpc.cancel_request(session, tag);
        }
    }

    fn end_scan(&mut self, id: u64) {
        let Some(sc) = self.scans.remove(&id) else {
            return;
        };
        let result = match sc.err {
            Some(e) => Err(e),
            None => Ok(Decoded::Reply(Reply::Items(sc.merge.finish()))),
        };
        match sc.owner {
            ScanOwner::Sync(tag) => self.finish(tag, Owner::Sync, result),
            ScanOwner::User(tag) => self.finish(0, Owner::User(tag), result),
        }
    }

    /// A request that could not be sent: a BATCH's entries complete with (a copy of) `e`
    /// now; `e` is returned for the caller of a single request.
    fn fail_owner(&mut self, owner: Owner, e: Error) -> Error {
        if let Owner::Batch(tags) = owner {
            for &(tag, _) in &tags {
                self.finish(0, Owner::User(tag), Err(e.clone()));
            }
            self.recycle(tags);
        }
        e
    }

    fn recycle(&mut self, mut tags: Vec<(u64, u8)>) {
        if self.spare_tags.len() < 64 {
            tags.clear();
            self.spare_tags.push(tags);
        }
    }

    fn finish(&mut self, tag: u64, owner: Owner, result: Result<Decoded, Error>) {
        match owner {
            Owner::Batch(tags) => {
                match result {
                    Ok(Decoded::Batch(mut replies)) if replies.len() == tags.len() => {
                        for (&(user, _), r) in tags.iter().zip(replies.drain(..)) {
                            self.finish(0, Owner::User(user), r.map(Decoded::Reply));
                        }
                    }
                    Ok(_) => {
                        let e = Error::Incompatible("BATCH answer of the wrong shape".into());
                        for &(user, _) in &tags {
                            self.finish(0, Owner::User(user), Err(e.clone()));
                        }
                    }
                    Err(e) => {
                        for &(user, _) in &tags {
                            self.finish(0, Owner::User(user), Err(e.clone()));
                        }
                    }
                }
                self.recycle(tags);
            }
            Owner::Sync => {
                self.sync_done.insert(tag, result);
            }
            Owner::ScanPart(id) => self.on_scan_part(id, result),
            Owner::User(user) => {
                self.user_inflight = self.user_inflight.saturating_sub(1);
                let r = result.and_then(|d| match d {
                    Decoded::Reply(r) => Ok(r),
                    _ => Err(Error::Incompatible("unexpected answer".into())),
                });
                self.done.push_back((user, r));
            }
        }
    }
}

/// A dropped client closes its sessions (see [`Client::close`]), waiting at most 200 ms (or
/// the connect timeout, if shorter) for the server to confirm.
impl<T: Transport> Drop for Client<T> {
    fn drop(&mut self) {
        let bound = self.cfg.connect_timeout.min(Duration::from_millis(200));
        if !self.disconnect_all(bound) {
            tracing::debug!(server = %self.server, "sessions not confirmed closed");
        }
    }
}

/// The local IP the OS would use to reach `server`.
fn local_ip_for(server: SocketAddr) -> std::io::Result<std::net::IpAddr> {
    let any: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().map_err(std::io::Error::other)?
    } else {
        "[::]:0".parse().map_err(std::io::Error::other)?
    };
    let s = UdpSocket::bind(any)?;
    s.connect(server)?;
    Ok(s.local_addr()?.ip())
}
