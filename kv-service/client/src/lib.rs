//! The client library: connects to every thread of a `kv-service` server, routes each key
//! to the thread that owns it, and offers a blocking API ([`Client::get`], [`Client::put`],
//! [`Client::delete`], [`Client::scan`], [`Client::stats`]) and a pipelined one
//! ([`Client::submit`] many requests — GET, PUT, DELETE and SCAN — with your own tags, then
//! [`Client::poll`] / [`Client::wait`] for their [`Reply`]s, in any order). Pipelined GETs,
//! PUTs and DELETEs to one server thread travel together in BATCH messages
//! ([`ClientConfig::batch`]); a scan fans out to every server thread and merges the parts as
//! they arrive.
//!
//! Every wait is bounded: a request without an answer within [`ClientConfig::timeout`]
//! completes with [`Error::Timeout`]. A `Client` is one rpc endpoint driven by the calling
//! thread; use one per thread.
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

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::collections::{HashMap, VecDeque};
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use rpc::{Completion, MsgBuf, Nexus, Rpc, RpcConfig, RpcError, SessionId};
use transports::udp::{UdpConfig, UdpTransport};

use kv_proto::{self as protocol, op, Request, ServerInfo, Status, ThreadStats};
use kv_proto::{merge_scan, KeyRouter, MAX_KEY_LEN, MAX_VALUE_LEN};
pub use kv_proto::{Item, Op, Reply};

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Longest a request may wait for its answer. Default 5 s.
    pub timeout: Duration,
    /// Longest connecting to the server may take. Default 2 s.
    pub connect_timeout: Duration,
    /// Spin while waiting (lowest latency) instead of sleeping in the socket's wait.
    /// Default `true`.
    pub busy_poll: bool,
    /// Pipelined API: most requests [`Client::submit`] coalesces into one BATCH message per
    /// server thread (capped by what the server advertises). Submitted requests wait in a
    /// per-thread buffer until it is full or the next [`Client::poll`] / [`Client::wait`] /
    /// [`Client::flush`], so one message, one response and one trip through both kernels carry
    /// many requests, as Redis pipelining does. A buffer holding a single request goes out as
    /// a plain request. `0` or `1` sends every request on its own. Default 32.
    pub batch: usize,
    /// Receive with UDP GRO (`transports::udp::UdpConfig::gro`). Default `true`.
    pub udp_gro: bool,
    /// Largest UDP packet; `None` (default): the path MTU toward the server less the
    /// headers, at most 8972 (`transports::udp::max_pkt_size_toward`). A session uses the
    /// smaller of this and the server's.
    pub max_pkt_size: Option<usize>,
    /// Receive ring of the client's socket, in packets (preallocated: times the packet
    /// size). It must hold the credits of one session per server thread (32 each). `None`
    /// (default): 1024 packets, enough for servers of up to 32 threads; for a bigger server
    /// the client reopens its endpoint with a ring sized for it while connecting. A fixed
    /// size too small for the server fails the connect with `Error::Rpc(RingExhausted)`.
    pub rx_ring_size: Option<usize>,
    /// Reconnect a session whose server end failed (the server restarted or died) when the
    /// next request needs it. Requests that were in flight when the failure was detected
    /// complete with `Error::Rpc(PeerFailed)` (they may or may not have run: they are not
    /// retried); later ones go out on the new session, or fail with the connect error while
    /// the server is down. Default `true`.
    pub auto_reconnect: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            busy_poll: true,
            batch: 32,
            udp_gro: true,
            max_pkt_size: None,
            rx_ring_size: None,
            auto_reconnect: true,
        }
    }
}

/// Errors of the client.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be parsed or resolved.
    #[error("invalid server address {0:?}")]
    BadAddress(String),
    /// The server did not answer the connect.
    #[error("server {addr} not reachable")]
    Unreachable {
        /// The server address.
        addr: String,
        /// Why.
        #[source]
        source: RpcError,
    },
    /// No answer within the configured timeout.
    #[error("no answer from the server within {0:?}")]
    Timeout(Duration),
    /// The key is longer than the server accepts.
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than the server accepts.
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The server answered with an error status.
    #[error("server error ({status}): {message}")]
    Server {
        /// The status.
        status: Status,
        /// The server's explanation.
        message: String,
    },
    /// The server's answer could not be understood.
    #[error("{0}")]
    Protocol(#[from] protocol::ResponseError),
    /// The server is not a compatible kv-service.
    #[error("incompatible server: {0}")]
    Incompatible(String),
    /// The rpc layer failed (local queue full, session lost...).
    #[error("rpc: {0}")]
    Rpc(#[from] RpcError),
}

impl Error {
    /// Whether this is [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }
}

/// What a response decodes to.
enum Decoded {
    Reply(Reply),
    Scan(Vec<Item>, bool),
    Info(ServerInfo),
    Stats(ThreadStats),
    /// Each entry's outcome, in order.
    Batch(Vec<Result<Reply, Error>>),
}

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

/// A scan in progress: one round asks every server thread for its items from `cursor`.
struct ScanOp {
    owner: ScanOwner,
    max: usize,
    cursor: Vec<u8>,
    out: Vec<Item>,
    parts: Vec<Vec<Item>>,
    /// Parts of this round still to come.
    left: usize,
    /// Smallest last key among parts that may hold more items.
    bound: Option<Vec<u8>>,
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

struct InFlight {
    owner: Owner,
    op: u8,
    deadline: Instant,
}

/// A connection to a kv-service server (all its threads). See the module docs.
pub struct Client {
    rpc: Rpc<UdpTransport, ()>,
    sessions: Vec<SessionId>,
    info: ServerInfo,
    router: KeyRouter,
    cfg: ClientConfig,
    server: SocketAddr,
    next_tag: u64,
    inflight: HashMap<u64, InFlight>,
    user_inflight: usize,
    done: VecDeque<(u64, Result<Reply, Error>)>,
    sync_done: HashMap<u64, Result<Decoded, Error>>,
    next_expiry_check: Instant,
    buf: Vec<u8>,
    /// Effective batch size (1: no batching).
    batch: usize,
    /// Submitted requests not sent yet: buffer `2 t` holds thread `t`'s reads, `2 t + 1` its
    /// writes (a BATCH is answered when its slowest entry is done, and a write waits for the
    /// disk: reads batched with writes would wait for it too).
    pending: Vec<Pending>,
    /// Tag vectors of finished batches, reused.
    spare_tags: Vec<Vec<(u64, u8)>>,
    /// Scans in progress, by id.
    scans: HashMap<u64, ScanOp>,
    _nexus: Nexus,
}

/// Receive ring of a client whose `ClientConfig::rx_ring_size` is `None`, unless the
/// server has more than 32 threads.
const DEFAULT_RX_RING: usize = 1024;

/// The client's rpc endpoint: rpc `id` of `nexus` on a UDP socket bound to `local_ip`.
fn open_rpc(
    nexus: &Nexus,
    id: u8,
    local_ip: std::net::IpAddr,
    server: SocketAddr,
    cfg: &ClientConfig,
    ring: usize,
) -> Result<Rpc<UdpTransport, ()>, Error> {
    let udp = UdpTransport::new(UdpConfig {
        bind: SocketAddr::new(local_ip, 0),
        gro: cfg.udp_gro,
        max_pkt_size: cfg
            .max_pkt_size
            .unwrap_or_else(|| transports::udp::max_pkt_size_toward(server.ip())),
        rx_ring_size: ring,
        ..UdpConfig::default()
    })
    .map_err(RpcError::from)?;
    let rpc_cfg = RpcConfig {
        connect_timeout: cfg.connect_timeout,
        busy_poll: cfg.busy_poll,
        ..RpcConfig::default()
    };
    Ok(Rpc::new(nexus, id, udp, (), rpc_cfg)?)
}

/// How often in-flight requests are checked against their deadlines.
const EXPIRY_CHECK: Duration = Duration::from_millis(5);

impl Client {
    /// Connects to the server whose listen (session-management) address is `addr`
    /// (`host:port`): asks thread 0 for the server's thread count and partitioning, then
    /// opens a session to every thread.
    pub fn connect(addr: &str, cfg: ClientConfig) -> Result<Client, Error> {
        let server = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| Error::BadAddress(addr.to_string()))?;
        let local_ip = local_ip_for(server).map_err(|_| Error::BadAddress(addr.to_string()))?;
        let unreachable = |source| Error::Unreachable {
            addr: server.to_string(),
            source,
        };
        let nexus: Nexus = Nexus::new(&SocketAddr::new(local_ip, 0).to_string(), 0)?;
        let ring = cfg.rx_ring_size.unwrap_or(DEFAULT_RX_RING);
        let mut rpc = open_rpc(&nexus, 0, local_ip, server, &cfg, ring)?;
        let uri = server.to_string();
        let s0 = rpc.connect(&uri, 0).map_err(unreachable)?;
        let mut client = Client {
            rpc,
            sessions: vec![s0],
            info: ServerInfo {
                threads: 1,
                thread_id: 0,
                partitioning: protocol::PARTITION_FNV1A64_MOD,
                max_key: MAX_KEY_LEN as u32,
                max_value: MAX_VALUE_LEN as u32,
                max_scan: protocol::MAX_SCAN_ITEMS,
                max_batch: 0,
            },
            router: KeyRouter::new(1),
            cfg,
            server,
            next_tag: 1,
            inflight: HashMap::new(),
            user_inflight: 0,
            done: VecDeque::new(),
            sync_done: HashMap::new(),
            next_expiry_check: Instant::now(),
            buf: Vec::new(),
            batch: 1,
            pending: Vec::new(),
            spare_tags: Vec::new(),
            scans: HashMap::new(),
            _nexus: nexus,
        };
        let tag = client.send(0, &Request::Info, Owner::Sync)?;
        let info = match client.wait_sync(tag)? {
            Decoded::Info(i) => i,
            _ => return Err(Error::Incompatible("unexpected INFO answer".into())),
        };
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
        let need = (info.threads as usize * RpcConfig::default().credits as usize + 64)
            .next_power_of_two();
        if client.cfg.rx_ring_size.is_none() && need > ring {
            // Too many server threads for the default ring: reopen the endpoint (as rpc id 1
            // of this Nexus, the old one still exists) with a ring that holds them all.
            let _ = client.rpc.disconnect(s0);
            let mut rpc = open_rpc(&client._nexus, 1, local_ip, server, &client.cfg, need)?;
            let s0 = rpc.connect(&uri, 0).map_err(unreachable)?;
            client.rpc = rpc;
            client.sessions = vec![s0];
        }
        client.info = info;
        client.router = KeyRouter::new(info.threads as usize);
        client.batch = client
            .cfg
            .batch
            .min(info.max_batch.min(protocol::MAX_BATCH) as usize)
            .max(1);
        client.pending = (0..2 * info.threads).map(|_| Pending::default()).collect();
        for t in 1..info.threads {
            let s = client.rpc.create_session(&uri, t as u8)?;
            client.sessions.push(s);
        }
        let deadline = Instant::now() + client.cfg.connect_timeout + Duration::from_millis(500);
        loop {
            let mut pending = false;
            for &s in &client.sessions {
                match client.rpc.session_state(s) {
                    Some(rpc::SessionState::Connected) => {}
                    Some(rpc::SessionState::Connecting) => pending = true,
                    Some(rpc::SessionState::Failed(f)) => {
                        return Err(unreachable(f.to_error(t_of(&client.sessions, s))));
                    }
                    _ => return Err(unreachable(RpcError::InvalidSession(s))),
                }
            }
            if !pending {
                break;
            }
            if Instant::now() >= deadline {
                return Err(unreachable(RpcError::Timeout));
            }
            client.rpc.run_once();
        }
        Ok(client)
    }

    /// What the server said about itself at connect time.
    pub fn server_info(&self) -> ServerInfo {
        self.info
    }

    /// The server's listen address.
    pub fn server_addr(&self) -> SocketAddr {
        self.server
    }

    /// The server thread that owns `key`.
    pub fn thread_for(&self, key: &[u8]) -> usize {
        self.router.partition_of(key)
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
        check_key(start)?;
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

    /// Pipelined API: issues `cmd` without waiting; its outcome comes out of
    /// [`Client::poll`] or [`Client::wait`] with `tag`. Errors here (key or value too large,
    /// local queue full) mean the request was not issued. With batching
    /// ([`ClientConfig::batch`]) the request may wait in a buffer until the next
    /// `poll` / `wait` / [`Client::flush`]; if sending it then fails, the failure is its
    /// outcome. Requests in flight at the same time may execute in any order: do not
    /// pipeline two writes of one key if their order matters.
    pub fn submit(&mut self, op: Op, tag: u64) -> Result<(), Error> {
        if let Op::Scan { start, max } = op {
            check_key(&start)?;
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
        let b = 2 * t + usize::from(!matches!(req, Request::Op(Op::Get { .. })));
        let Some(p) = self.pending.get_mut(b) else {
            return Err(Error::Incompatible(format!("no session to thread {t}")));
        };
        if p.tags.is_empty() {
            protocol::begin_batch(&mut p.msg);
        }
        protocol::append_request(&req, &mut p.msg);
        p.tags.push((tag, req.op()));
        self.user_inflight += 1;
        if p.tags.len() >= batch || p.msg.len() >= BATCH_BYTES {
            self.flush_buffer(b);
        }
        Ok(())
    }

    /// Pipelined API: sends every submitted request still waiting in a batch buffer (`poll`
    /// and `wait` do this themselves).
    pub fn flush(&mut self) {
        for b in 0..self.pending.len() {
            self.flush_buffer(b);
        }
    }

    /// Pipelined requests submitted and not yet returned by `poll` / `wait`.
    pub fn in_flight(&self) -> usize {
        self.user_inflight + self.done.len()
    }

    /// Pipelined API: runs the event loop once (never blocks) and returns a finished
    /// request, if any.
    pub fn poll(&mut self) -> Option<(u64, Result<Reply, Error>)> {
        if self.done.is_empty() {
            self.pump(Duration::ZERO);
        }
        self.done.pop_front()
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
        let key = req.key().unwrap_or(&[]);
        check_key(key)?;
        if let Request::Op(Op::Put { value, .. }) = req {
            if value.len() > self.info.max_value as usize {
                return Err(Error::ValueTooLarge {
                    len: value.len(),
                    max: self.info.max_value as usize,
                });
            }
        }
        Ok(self.router.partition_of(key))
    }

    fn send_routed(&mut self, req: &Request<'_>, owner: Owner) -> Result<u64, Error> {
        let t = self.check_and_route(req)?;
        self.send(t, req, owner)
    }

    fn send(&mut self, thread: usize, req: &Request<'_>, owner: Owner) -> Result<u64, Error> {
        protocol::encode_request(req, &mut self.buf);
        let msg = std::mem::take(&mut self.buf);
        let r = self.send_msg(thread, req.op(), &msg, owner);
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
        if let [(tag, op)] = tags.as_slice() {
            let (tag, op) = (*tag, *op);
            self.recycle(tags);
            let one = msg.get(protocol::HDR_LEN..).unwrap_or(&[]);
            if let Err(e) = self.send_msg(thread, op, one, Owner::User(tag)) {
                self.finish(0, Owner::User(tag), Err(e));
            }
        } else {
            protocol::finish_batch(&mut msg, tags.len() as u32);
            // On failure, send_msg completes the entries itself.
            let _ = self.send_msg(thread, op::BATCH, &msg, Owner::Batch(tags));
        }
        if let Some(p) = self.pending.get_mut(b) {
            p.msg = msg;
        }
    }

    /// Enqueues the encoded request `msg` of rpc type `op` to `thread`; returns its rpc tag.
    /// If it cannot be sent, a BATCH owner's entries complete with the error here.
    fn send_msg(&mut self, thread: usize, op: u8, msg: &[u8], owner: Owner) -> Result<u64, Error> {
        let session = match self.sessions.get(thread) {
            Some(s) => *s,
            None => {
                let e = Error::Incompatible(format!("no session to thread {thread}"));
                return Err(self.fail_owner(owner, e));
            }
        };
        if self.cfg.auto_reconnect
            && matches!(
                self.rpc.session_state(session),
                Some(rpc::SessionState::Failed(_))
            )
        {
            // Requests enqueued now wait for the new handshake (or fail with it).
            if let Err(e) = self.rpc.reconnect(session) {
                tracing::debug!(thread, error = %e, "reconnect refused");
            }
        }
        let ctx = self.rpc.ctx();
        let m = ctx.msg_from(msg);
        let tag = self.next_tag;
        self.next_tag += 1;
        if let Err(e) = self.rpc.enqueue_request(session, op, m, tag) {
            return Err(self.fail_owner(owner, Error::Rpc(e)));
        }
        self.inflight.insert(
            tag,
            InFlight {
                owner,
                op,
                deadline: Instant::now() + self.cfg.timeout,
            },
        );
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

    /// Runs the event loop (once, or up to `max` when not busy-polling), routes
    /// completions and expires overdue requests.
    fn pump(&mut self, max: Duration) {
        self.flush();
        let mut got: Vec<Completion> = Vec::new();
        if self.cfg.busy_poll || max.is_zero() {
            self.rpc.run_once();
            while let Some(c) = self.rpc.poll_completion() {
                got.push(c);
            }
        } else {
            self.rpc.run_until(
                |r| {
                    while let Some(c) = r.poll_completion() {
                        got.push(c);
                    }
                    !got.is_empty()
                },
                max,
            );
        }
        for c in got {
            self.route(c);
        }
        let now = Instant::now();
        if now >= self.next_expiry_check {
            self.next_expiry_check = now + EXPIRY_CHECK;
            let expired: Vec<u64> = self
                .inflight
                .iter()
                .filter(|(_, f)| f.deadline <= now)
                .map(|(t, _)| *t)
                .collect();
            for t in expired {
                if let Some(f) = self.inflight.remove(&t) {
                    self.finish(t, f.owner, Err(Error::Timeout(self.cfg.timeout)));
                }
            }
        }
    }

    fn route(&mut self, c: Completion) {
        let ctx = self.rpc.ctx();
        ctx.free_msg(c.req);
        let Some(f) = self.inflight.remove(&c.tag) else {
            // Answer to a request that already timed out.
            if let Ok(m) = c.result {
                self.rpc.ctx().free_msg(m);
            }
            return;
        };
        let result = match c.result {
            Ok(m) => {
                let r = match &f.owner {
                    Owner::Batch(tags) => decode_batch(tags, &m),
                    _ => decode(f.op, &m),
                };
                self.rpc.ctx().free_msg(m);
                r
            }
            Err(e) => Err(Error::Rpc(e)),
        };
        self.finish(c.tag, f.owner, result);
    }

    /// Starts a scan: a SCAN of the rest to every server thread.
    fn start_scan(&mut self, owner: ScanOwner, start: Vec<u8>, max: usize) {
        let id = self.next_tag;
        self.next_tag += 1;
        self.scans.insert(
            id,
            ScanOp {
                owner,
                max,
                cursor: start,
                out: Vec::new(),
                parts: Vec::new(),
                left: 0,
                bound: None,
                err: None,
            },
        );
        self.scan_round(id);
    }

    /// Sends scan `id`'s next round, or completes it if it has all its items.
    fn scan_round(&mut self, id: u64) {
        let Some(sc) = self.scans.get_mut(&id) else {
            return;
        };
        if sc.out.len() >= sc.max {
            self.end_scan(id);
            return;
        }
        let ask = (sc.max - sc.out.len()).min(self.info.max_scan.max(1) as usize) as u32;
        let cursor = std::mem::take(&mut sc.cursor);
        let threads = self.sessions.len();
        sc.left = threads;
        sc.parts.clear();
        sc.bound = None;
        for t in 0..threads {
            let req = Request::Op(Op::Scan {
                start: &cursor,
                max: ask as usize,
            });
            if let Err(e) = self.send(t, &req, Owner::ScanPart(id)) {
                self.on_scan_part(id, Err(e));
            }
        }
        if let Some(sc) = self.scans.get_mut(&id) {
            sc.cursor = cursor;
        }
    }

    /// One thread's answer to scan `id`'s current round.
    fn on_scan_part(&mut self, id: u64, result: Result<Decoded, Error>) {
        let Some(sc) = self.scans.get_mut(&id) else {
            return;
        };
        match result {
            Ok(Decoded::Scan(items, more)) => {
                if more {
                    match items.last() {
                        Some((last, _)) => {
                            if !matches!(&sc.bound, Some(b) if b <= last) {
                                sc.bound = Some(last.clone());
                            }
                        }
                        None => {
                            sc.err.get_or_insert(Error::Incompatible(
                                "SCAN answer flagged more items but holds none".into(),
                            ));
                        }
                    }
                }
                sc.parts.push(items);
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
        if sc.left > 0 {
            return;
        }
        if sc.err.is_some() {
            self.end_scan(id);
            return;
        }
        // Below `bound`, every partition returned all its items; above it, some did not.
        let parts = std::mem::take(&mut sc.parts);
        let mut merged = merge_scan(parts, sc.max - sc.out.len());
        if let Some(b) = &sc.bound {
            merged.retain(|(k, _)| k <= b);
        }
        sc.out.extend(merged);
        match sc.bound.as_deref().map(successor) {
            Some(Some(next)) if sc.out.len() < sc.max => {
                sc.cursor = next;
                self.scan_round(id);
            }
            _ => self.end_scan(id),
        }
    }

    fn end_scan(&mut self, id: u64) {
        let Some(sc) = self.scans.remove(&id) else {
            return;
        };
        let result = match sc.err {
            Some(e) => Err(e),
            None => Ok(Decoded::Reply(Reply::Items(sc.out))),
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
                self.finish(0, Owner::User(tag), Err(share(&e)));
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
                            self.finish(0, Owner::User(user), Err(share(&e)));
                        }
                    }
                    Err(e) => {
                        for &(user, _) in &tags {
                            self.finish(0, Owner::User(user), Err(share(&e)));
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

/// Index of session `s` in `sessions` (= the server thread it leads to).
fn t_of(sessions: &[SessionId], s: SessionId) -> u8 {
    sessions.iter().position(|&x| x == s).unwrap_or(0) as u8
}

fn check_key(key: &[u8]) -> Result<(), Error> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

/// The smallest key (of at most [`MAX_KEY_LEN`] bytes) greater than `key`, if any.
fn successor(key: &[u8]) -> Option<Vec<u8>> {
    let mut k = key.to_vec();
    if k.len() < MAX_KEY_LEN {
        k.push(0);
        return Some(k);
    }
    while let Some(&last) = k.last() {
        if last == u8::MAX {
            k.pop();
        } else {
            if let Some(b) = k.last_mut() {
                *b += 1;
            }
            return Some(k);
        }
    }
    None
}

/// Decodes the response `m` to a request of type `op`.
fn decode(op: u8, m: &MsgBuf) -> Result<Decoded, Error> {
    let r = protocol::parse_response(m.as_slice())?;
    decode_parsed(op, &r)
}

/// Decodes a parsed response to a request of type `op`.
fn decode_parsed(op: u8, r: &protocol::Response<'_>) -> Result<Decoded, Error> {
    match r.status {
        Status::Ok => {}
        Status::NotFound if op == op::GET || op == op::DELETE => {
            return Ok(Decoded::Reply(Reply::NotFound))
        }
        Status::KeyTooLarge => {
            return Err(Error::KeyTooLarge {
                len: 0,
                max: MAX_KEY_LEN,
            })
        }
        Status::ValueTooLarge => {
            return Err(Error::ValueTooLarge {
                len: 0,
                max: MAX_VALUE_LEN,
            })
        }
        status => {
            return Err(Error::Server {
                status,
                message: r.message(),
            })
        }
    }
    Ok(match op {
        op::GET => Decoded::Reply(Reply::Value(r.body.to_vec())),
        op::PUT => Decoded::Reply(Reply::Written),
        op::DELETE => Decoded::Reply(Reply::Deleted),
        op::SCAN => Decoded::Scan(
            protocol::parse_scan_items(r.body, r.count)?,
            r.flags & protocol::RESP_FLAG_MORE != 0,
        ),
        op::INFO => Decoded::Info(ServerInfo::parse(r.body)?),
        op::STATS => Decoded::Stats(ThreadStats::parse(r.body)?),
        _ => return Err(Error::Incompatible(format!("unknown request type {op}"))),
    })
}

/// Decodes the response to a BATCH whose entries had the operations in `tags`.
fn decode_batch(tags: &[(u64, u8)], m: &MsgBuf) -> Result<Decoded, Error> {
    let r = protocol::parse_response(m.as_slice())?;
    if r.status != Status::Ok {
        return Err(Error::Server {
            status: r.status,
            message: r.message(),
        });
    }
    if r.count as usize != tags.len() {
        return Err(Error::Incompatible(format!(
            "BATCH of {} answered with {} entries",
            tags.len(),
            r.count
        )));
    }
    let parts = protocol::parse_batch_responses(r.body, r.count)?;
    let replies = tags
        .iter()
        .zip(parts)
        .map(|(&(_, op), part)| {
            decode_parsed(op, &part).and_then(|d| match d {
                Decoded::Reply(r) => Ok(r),
                _ => Err(Error::Incompatible("unexpected BATCH entry".into())),
            })
        })
        .collect();
    Ok(Decoded::Batch(replies))
}

/// A copy of `e` for each request of a batch that failed as a whole (rpc errors that hold
/// OS errors are copied as their message).
fn share(e: &Error) -> Error {
    match e {
        Error::BadAddress(a) => Error::BadAddress(a.clone()),
        Error::Timeout(d) => Error::Timeout(*d),
        Error::KeyTooLarge { len, max } => Error::KeyTooLarge {
            len: *len,
            max: *max,
        },
        Error::ValueTooLarge { len, max } => Error::ValueTooLarge {
            len: *len,
            max: *max,
        },
        Error::Server { status, message } => Error::Server {
            status: *status,
            message: message.clone(),
        },
        Error::Protocol(p) => Error::Protocol(p.clone()),
        Error::Incompatible(s) => Error::Incompatible(s.clone()),
        Error::Rpc(r) | Error::Unreachable { source: r, .. } => Error::Rpc(match r {
            RpcError::Overloaded => RpcError::Overloaded,
            RpcError::RemoteOverloaded => RpcError::RemoteOverloaded,
            RpcError::DeadlineExceeded => RpcError::DeadlineExceeded,
            RpcError::PeerFailed => RpcError::PeerFailed,
            RpcError::SessionClosed => RpcError::SessionClosed,
            RpcError::HandlerFailed => RpcError::HandlerFailed,
            RpcError::Cancelled => RpcError::Cancelled,
            RpcError::Timeout => RpcError::Timeout,
            RpcError::NoHandler(t) => RpcError::NoHandler(*t),
            RpcError::NotConnected(s) => RpcError::NotConnected(*s),
            RpcError::InvalidSession(s) => RpcError::InvalidSession(*s),
            RpcError::MsgTooLarge { size, max } => RpcError::MsgTooLarge {
                size: *size,
                max: *max,
            },
            other => RpcError::Io(std::io::Error::other(other.to_string())),
        }),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_is_the_next_key() {
        assert_eq!(successor(b"a"), Some(b"a\0".to_vec()));
        let max = vec![7u8; MAX_KEY_LEN];
        let mut next = max.clone();
        if let Some(b) = next.last_mut() {
            *b = 8;
        }
        assert_eq!(successor(&max), Some(next));
        let mut ff = vec![1u8; MAX_KEY_LEN];
        ff[MAX_KEY_LEN - 1] = 0xff;
        ff[MAX_KEY_LEN - 2] = 0xff;
        let mut want = vec![1u8; MAX_KEY_LEN - 2];
        want[MAX_KEY_LEN - 3] = 2;
        assert_eq!(successor(&ff), Some(want));
        assert_eq!(successor(&vec![0xffu8; MAX_KEY_LEN]), None);
    }
}
