//! The RESP front-end on one server thread: a listener of its own (all threads bind the same
//! address with `SO_REUSEPORT`, so the kernel spreads new connections over them), the
//! thread's connections, and their sockets, polled without blocking from the thread's step
//! loop.
//!
//! The protocol is `kv_resp`'s sans-IO [`Connection`]; this module only moves bytes between
//! sockets and connections, and hands each connection's key-value operations to a
//! [`RespBackend`] (the server thread's state) tagged with a [`RespTag`] that names the
//! connection, so that the outcome finds its way back ([`RespFront::complete`]) — or is
//! dropped, if the connection closed meanwhile (its slot's generation changed).
//!
//! Work per call is bounded (events per poll, accepts per poll, reads and commands per
//! connection), so one busy client cannot starve the rpc path of the same thread; a
//! connection with work left is serviced again on the next call. The thread sleeps in one
//! place, [`RespFront::wait`], whose epoll set also holds the rpc transport's descriptor
//! ([`RespFront::watch_fd`]).
//!
//! Bounds, besides `kv_resp`'s per-connection ones (query buffer, pipeline depth, unsent
//! output — a client that does not read stops being read): the connection count over all
//! threads (past it a new connection gets `-ERR max number of clients reached` and is
//! closed), and an idle timeout for connections with nothing in progress.

use std::collections::VecDeque;
use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kv_resp::{Connection, Figures, KvOp, OpId, Outcome, Shared, Store};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

/// Settings of the RESP front-end (`kv-service --resp ADDR`).
#[derive(Clone, Debug)]
pub struct RespConfig {
    /// The address every thread's listener binds (port 0: one is picked, then shared).
    pub listen: SocketAddr,
    /// `requirepass`: connections must `AUTH` first.
    pub password: Option<Vec<u8>>,
    /// Most RESP connections at once, over all threads.
    pub max_clients: usize,
    /// Close a connection with nothing in progress after this long without traffic
    /// (`Duration::ZERO`: never).
    pub idle_timeout: Duration,
    /// Per-connection bounds (query buffer, pipeline, output, bulk and argument limits).
    pub limits: kv_resp::Limits,
}

impl Default for RespConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 6380)),
            password: None,
            max_clients: 10_000,
            idle_timeout: Duration::from_secs(300),
            // The keys and values the engine stores; longer ones are refused with an error
            // reply (bulk strings up to 8 MiB are read, larger ones close the connection).
            limits: kv_resp::Limits {
                max_key_len: kv_proto::MAX_KEY_LEN,
                max_value_len: kv_proto::MAX_VALUE_LEN,
                ..kv_resp::Limits::default()
            },
        }
    }
}

/// One RESP operation in flight: connection slot `conn` (in its generation `gen`) of the
/// thread that submitted it, and the operation's id on that connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RespTag {
    /// The connection's slot on its thread.
    pub conn: u32,
    /// The slot's generation when the operation was submitted.
    pub gen: u32,
    /// The operation on its connection.
    pub op: OpId,
}

/// An owned [`Outcome`]: how the server thread hands an operation's answer back to its
/// front-end after the step that produced it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespAnswer {
    /// GET: the value.
    Value(Vec<u8>),
    /// GET / DELETE: no such key.
    NotFound,
    /// PUT: durable.
    Written,
    /// DELETE: done, durably.
    Deleted,
    /// A conditional SET: whether it wrote, and the old value if asked for.
    Set {
        /// The write happened.
        written: bool,
        /// The value before (when asked for and the key existed).
        old: Option<Vec<u8>>,
    },
    /// SCAN: items in key order, and whether the key space may go on.
    Items {
        /// The items.
        items: Vec<kv_resp::Item>,
        /// More may follow.
        more: bool,
    },
    /// The operation failed (the message, with its code word if it has one).
    Error(String),
}

impl RespAnswer {
    /// The borrowed outcome `kv_resp` takes.
    pub fn outcome(&self) -> Outcome<'_> {
        match self {
            RespAnswer::Value(v) => Outcome::Value(v),
            RespAnswer::NotFound => Outcome::NotFound,
            RespAnswer::Written => Outcome::Written,
            RespAnswer::Deleted => Outcome::Deleted,
            RespAnswer::Set { written, old } => Outcome::Set {
                written: *written,
                old: old.as_deref(),
            },
            RespAnswer::Items { items, more } => Outcome::Items { items, more: *more },
            RespAnswer::Error(e) => Outcome::Error(e),
        }
    }
}

/// What runs the key-value operations of a thread's RESP connections.
pub trait RespBackend {
    /// Starts `op`; answer with [`RespFront::complete`] and `tag`.
    fn submit(&mut self, tag: RespTag, op: KvOp<'_>);
    /// A GET answered without waiting, or `None` (see [`Store::get_now`]).
    fn get_now(&mut self, key: &[u8]) -> Option<Outcome<'_>> {
        let _ = key;
        None
    }
    /// The store's own figures (keys, memory, disk, engine I/O); the front-end adds the
    /// connection figures.
    fn figures(&self) -> Figures;

    /// Whether to run more commands now (false: operations wait for room; the connections
    /// try again on the next poll).
    fn accepting(&self) -> bool {
        true
    }
}

/// Counters shared by the RESP front-ends of all threads (INFO, the connection limit).
#[derive(Debug, Default)]
struct Counters {
    clients: AtomicU64,
    total_connections: AtomicU64,
    rejected: AtomicU64,
    commands: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

/// What the RESP front-ends of one server share: the protocol state of `kv_resp` (config,
/// SCAN cursors, client ids) and the counters.
#[derive(Debug)]
pub struct RespShared {
    resp: Arc<Shared>,
    counters: Counters,
    max_clients: u64,
    idle_timeout_ns: u64,
    started: Instant,
}

impl RespShared {
    /// Shared state for a server's front-ends; `facts` is what INFO reports about the server.
    pub fn new(cfg: &RespConfig, facts: kv_resp::ServerFacts) -> Arc<Self> {
        let config = kv_resp::Config {
            password: cfg.password.clone(),
            limits: cfg.limits,
            facts: kv_resp::ServerFacts {
                max_clients: cfg.max_clients,
                idle_timeout_secs: cfg.idle_timeout.as_secs(),
                ..facts
            },
        };
        Arc::new(Self {
            resp: Shared::new(config),
            counters: Counters::default(),
            max_clients: cfg.max_clients as u64,
            idle_timeout_ns: u64::try_from(cfg.idle_timeout.as_nanos()).unwrap_or(u64::MAX),
            started: Instant::now(),
        })
    }

    /// Fills the connection figures into `f`.
    fn fill(&self, f: &mut Figures) {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        f.connected_clients = get(&c.clients);
        f.total_connections_received = get(&c.total_connections);
        f.rejected_connections = get(&c.rejected);
        f.total_commands_processed = get(&c.commands);
        f.keyspace_hits = get(&c.hits);
        f.keyspace_misses = get(&c.misses);
        f.total_net_input_bytes = get(&c.bytes_in);
        f.total_net_output_bytes = get(&c.bytes_out);
        f.uptime_secs = self.started.elapsed().as_secs();
    }

    /// RESP connections open now, over all threads.
    pub fn clients(&self) -> u64 {
        self.counters.clients.load(Ordering::Relaxed)
    }
}

/// Binds a RESP listener on `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`, so that every
/// server thread can bind one on the same address.
pub fn bind_listener(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

const LISTENER: Token = Token(usize::MAX - 1);
const WATCHED: Token = Token(usize::MAX - 2);
/// Accepts per poll at most.
const ACCEPTS: usize = 64;
/// Reads per connection per service at most (each up to the connection's read buffer).
const READS: usize = 4;
/// Read-run-write rounds per connection per service at most.
const ROUNDS: usize = 4;
/// How often idle connections are looked for.
const SWEEP_NS: u64 = 1_000_000_000;

/// One connection and its socket.
struct Entry {
    sock: TcpStream,
    conn: Connection,
    gen: u32,
    /// The socket may have bytes to read (no `WouldBlock` and no short read since the last
    /// readable event).
    readable: bool,
    /// The peer's end of stream was reported: reads go on until it is seen, short or not.
    read_closed: bool,
    /// The socket may take bytes (no `WouldBlock` since the last writable event).
    writable: bool,
    /// In the queue of connections to service.
    queued: bool,
    last_active_ns: u64,
}

/// The RESP connections of one server thread (see the [module docs](self)).
pub struct RespFront {
    poll: Poll,
    events: Events,
    listener: Option<TcpListener>,
    conns: slab::Slab<Entry>,
    next_gen: u32,
    queue: VecDeque<usize>,
    shared: Arc<RespShared>,
    last_sweep_ns: u64,
    draining: bool,
}

/// The adapter a connection sees as its store: tags its operations with the connection.
struct ConnStore<'a, B> {
    backend: &'a mut B,
    conn: u32,
    gen: u32,
    shared: &'a RespShared,
}

impl<B: RespBackend> Store for ConnStore<'_, B> {
    fn submit(&mut self, op: OpId, kv: KvOp<'_>) {
        let tag = RespTag {
            conn: self.conn,
            gen: self.gen,
            op,
        };
        self.backend.submit(tag, kv);
    }

    fn get_now(&mut self, key: &[u8]) -> Option<Outcome<'_>> {
        self.backend.get_now(key)
    }

    fn figures(&self) -> Figures {
        let mut f = self.backend.figures();
        self.shared.fill(&mut f);
        f
    }

    fn accepting(&self) -> bool {
        self.backend.accepting()
    }
}

impl RespFront {
    /// A front-end accepting on `listener` (from [`bind_listener`]).
    pub fn new(listener: std::net::TcpListener, shared: Arc<RespShared>) -> io::Result<Self> {
        listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Self {
            poll,
            events: Events::with_capacity(256),
            listener: Some(listener),
            conns: slab::Slab::new(),
            next_gen: 0,
            queue: VecDeque::new(),
            shared,
            last_sweep_ns: 0,
            draining: false,
        })
    }

    /// Also wakes [`RespFront::wait`] when `fd` becomes readable (the rpc transport's
    /// socket or epoll descriptor), so the thread sleeps in one place. `fd` must outlive
    /// the front-end.
    pub fn watch_fd(&self, fd: RawFd) -> io::Result<()> {
        self.poll
            .registry()
            .register(&mut SourceFd(&fd), WATCHED, Interest::READABLE)
    }

    /// The listener's address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Connections open on this thread.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Whether there is work that needs no outside event (a connection to service).
    pub fn busy(&self) -> bool {
        !self.queue.is_empty()
    }

    /// One round without blocking: socket events, accepts, and every connection with work
    /// (reading, running commands into `backend`, writing). Returns whether anything
    /// happened.
    pub fn poll<B: RespBackend>(&mut self, backend: &mut B, now_ns: u64) -> bool {
        let mut work = self.take_events(Some(Duration::ZERO), now_ns);
        let n = self.queue.len();
        for _ in 0..n {
            let Some(idx) = self.queue.pop_front() else {
                break;
            };
            work |= self.service(idx, backend, now_ns);
        }
        if now_ns.saturating_sub(self.last_sweep_ns) >= SWEEP_NS {
            self.last_sweep_ns = now_ns;
            self.sweep(now_ns);
        }
        work
    }

    /// Sleeps until a socket of the front-end (or the watched descriptor) is ready, or
    /// `timeout`. The events are kept for the next [`RespFront::poll`].
    pub fn wait(&mut self, timeout: Duration, now_ns: u64) {
        if self.queue.is_empty() {
            self.take_events(Some(timeout), now_ns);
        }
    }

    /// The outcome of a RESP operation. Dropped if the connection has closed since.
    pub fn complete(&mut self, tag: RespTag, outcome: Outcome<'_>, now_ns: u64) {
        let idx = tag.conn as usize;
        let Some(e) = self.conns.get_mut(idx).filter(|e| e.gen == tag.gen) else {
            return;
        };
        if let Err(err) = e.conn.complete(tag.op, outcome) {
            tracing::debug!(error = %err, "stray RESP completion");
            return;
        }
        e.last_active_ns = now_ns;
        if !e.queued {
            e.queued = true;
            self.queue.push_back(idx);
        }
    }

    /// Stops accepting and reading: connections close once their commands in progress have
    /// answered (or at once if none is). Part of the server's shutdown.
    pub fn begin_drain(&mut self) {
        if self.draining {
            return;
        }
        self.draining = true;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, e)| e.conn.queued_replies() == 0)
            .map(|(i, _)| i)
            .collect();
        for i in idle {
            self.close(i);
        }
        for (i, e) in self.conns.iter_mut() {
            e.readable = false;
            if !e.queued {
                e.queued = true;
                self.queue.push_back(i);
            }
        }
    }

    /// Whether draining is over (no connection left).
    pub fn drained(&self) -> bool {
        self.draining && self.conns.is_empty()
    }

    fn take_events(&mut self, timeout: Option<Duration>, now_ns: u64) -> bool {
        if let Err(e) = self.poll.poll(&mut self.events, timeout) {
            if e.kind() != ErrorKind::Interrupted {
                tracing::warn!(error = %e, "RESP poll failed");
            }
            return false;
        }
        let mut work = false;
        let mut accept = false;
        for ev in self.events.iter() {
            match ev.token() {
                LISTENER => accept = true,
                WATCHED => {}
                Token(idx) => {
                    if let Some(e) = self.conns.get_mut(idx) {
                        work = true;
                        if (ev.is_readable() || ev.is_read_closed()) && !self.draining {
                            e.readable = true;
                        }
                        if ev.is_read_closed() {
                            e.read_closed = true;
                        }
                        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
                            e.writable = true;
                        }
                        if !e.queued {
                            e.queued = true;
                            self.queue.push_back(idx);
                        }
                    }
                }
            }
        }
        if accept {
            work |= self.accept(now_ns);
        }
        work
    }

    fn accept(&mut self, now_ns: u64) -> bool {
        let mut any = false;
        for _ in 0..ACCEPTS {
            let Some(listener) = &self.listener else {
                break;
            };
            let (mut sock, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: leave the rest in the backlog for later.
                    tracing::warn!(error = %e, "RESP accept failed");
                    break;
                }
            };
            any = true;
            let c = &self.shared.counters;
            if c.clients.load(Ordering::Relaxed) >= self.shared.max_clients {
                c.rejected.fetch_add(1, Ordering::Relaxed);
                // Best effort, as Redis: the socket is new, its buffer takes the line.
                let _ = sock.write(b"-ERR max number of clients reached\r\n");
                continue;
            }
            let _ = sock.set_nodelay(true);
            let idx = self.conns.vacant_key();
            if let Err(e) = self.poll.registry().register(
                &mut sock,
                Token(idx),
                Interest::READABLE | Interest::WRITABLE,
            ) {
                tracing::warn!(error = %e, "RESP register failed");
                continue;
            }
            c.clients.fetch_add(1, Ordering::Relaxed);
            c.total_connections.fetch_add(1, Ordering::Relaxed);
            let mut conn = Connection::new(self.shared.resp.clone());
            let local = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
            conn.set_addrs(peer, local);
            let gen = self.next_gen;
            self.next_gen = self.next_gen.wrapping_add(1);
            self.conns.insert(Entry {
                sock,
                conn,
                gen,
                readable: true,
                read_closed: false,
                writable: true,
                queued: true,
                last_active_ns: now_ns,
            });
            self.queue.push_back(idx);
        }
        any
    }

    /// Reads, runs and writes one connection, a bounded amount; queues it again if it has
    /// work left that needs no outside event.
    fn service<B: RespBackend>(&mut self, idx: usize, backend: &mut B, now_ns: u64) -> bool {
        let shared = self.shared.clone();
        let draining = self.draining;
        let Some(e) = self.conns.get_mut(idx) else {
            return false;
        };
        e.queued = false;
        let mut any = false;
        let mut failed = false;
        for _ in 0..ROUNDS {
            let mut progress = false;
            match write_out(e) {
                Ok(w) => progress |= w,
                Err(_) => failed = true,
            }
            if !draining && !failed {
                match read_in(e) {
                    Ok(r) => progress |= r,
                    Err(_) => failed = true,
                }
                let mut store = ConnStore {
                    backend: &mut *backend,
                    conn: idx as u32,
                    gen: e.gen,
                    shared: &shared,
                };
                progress |= e.conn.process(&mut store) > 0;
            }
            if !failed {
                match write_out(e) {
                    Ok(w) => progress |= w,
                    Err(_) => failed = true,
                }
            }
            if failed || !progress {
                break;
            }
            any = true;
        }
        if any {
            e.last_active_ns = now_ns;
        }
        flush_stats(&shared.counters, e.conn.take_stats());
        let done = failed
            || e.conn.is_finished()
            || (draining && e.conn.queued_replies() == 0 && !e.conn.wants_write());
        // Work left that needs no outside event: input to read or run within the bounds,
        // output the socket may take.
        let more = (e.readable && e.conn.wants_read())
            || e.conn.can_process()
            || (e.writable && e.conn.wants_write());
        if done {
            self.close(idx);
            return true;
        }
        if more {
            e.queued = true;
            self.queue.push_back(idx);
        }
        any
    }

    fn close(&mut self, idx: usize) {
        if let Some(mut e) = self.conns.try_remove(idx) {
            let _ = self.poll.registry().deregister(&mut e.sock);
            flush_stats(&self.shared.counters, e.conn.take_stats());
            self.shared.counters.clients.fetch_sub(1, Ordering::Relaxed);
            if e.queued {
                self.queue.retain(|&q| q != idx);
            }
        }
    }

    /// Closes the connections idle past the timeout (nothing in progress, nothing unsent).
    fn sweep(&mut self, now_ns: u64) {
        let limit = self.shared.idle_timeout_ns;
        if limit == 0 {
            return;
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, e)| {
                e.conn.queued_replies() == 0
                    && !e.conn.wants_write()
                    && now_ns.saturating_sub(e.last_active_ns) > limit
            })
            .map(|(i, _)| i)
            .collect();
        for i in idle {
            tracing::debug!(conn = i, "closing an idle RESP connection");
            self.close(i);
        }
    }
}

fn flush_stats(c: &Counters, s: kv_resp::ConnStats) {
    let add = |a: &AtomicU64, v: u64| {
        if v > 0 {
            a.fetch_add(v, Ordering::Relaxed);
        }
    };
    add(&c.commands, s.commands);
    add(&c.hits, s.keyspace_hits);
    add(&c.misses, s.keyspace_misses);
    add(&c.bytes_in, s.bytes_in);
    add(&c.bytes_out, s.bytes_out);
}

/// Writes what the connection has to send, until the socket would block. Whether it wrote.
fn write_out(e: &mut Entry) -> io::Result<bool> {
    let mut wrote = false;
    while e.writable && e.conn.wants_write() {
        match e.sock.write(e.conn.output()) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => {
                e.conn.sent(n);
                wrote = true;
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => e.writable = false,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(wrote)
}

/// Reads what the connection takes, until the socket would block or a read comes back short,
/// the connection stops wanting input (a bound), or [`READS`] reads. Whether it read.
///
/// A read shorter than the buffer emptied the socket's receive queue, so the socket is not
/// readable any more until new bytes arrive — and their arrival is a new readiness edge.
/// Stopping there saves the read that would only return `WouldBlock` (one system call per
/// pipelined batch). The exception is a reported end of stream: it raised its edge already,
/// so reading goes on until the read that returns 0.
fn read_in(e: &mut Entry) -> io::Result<bool> {
    let mut read = false;
    let mut reads = 0;
    while e.readable && e.conn.wants_read() && reads < READS {
        let buf = e.conn.read_buf();
        let room = buf.len();
        if room == 0 {
            break;
        }
        match e.sock.read(buf) {
            Ok(0) => {
                e.conn.input_closed();
                e.readable = false;
                read = true;
            }
            Ok(n) => {
                e.conn.received(n);
                read = true;
                reads += 1;
                if n < room && !e.read_closed {
                    e.readable = false;
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => e.readable = false,
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    Ok(read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::io::BufRead;
    use std::net::TcpStream as StdStream;
    use std::sync::atomic::AtomicBool;

    /// An in-memory backend answering every operation on the next step.
    #[derive(Default)]
    struct Mem {
        data: BTreeMap<Vec<u8>, Vec<u8>>,
        done: Vec<(RespTag, Option<Vec<u8>>, bool)>,
        /// Hold answers back (to test throttling and drains).
        hold: bool,
    }

    impl RespBackend for Mem {
        fn submit(&mut self, tag: RespTag, op: KvOp<'_>) {
            let (v, found) = match op {
                KvOp::Get { key } => {
                    let v = self.data.get(key).cloned();
                    let found = v.is_some();
                    (v, found)
                }
                KvOp::Put { key, value } => {
                    self.data.insert(key.to_vec(), value.to_vec());
                    (None, true)
                }
                KvOp::Delete { key } => (None, self.data.remove(key).is_some()),
                _ => (None, false),
            };
            self.done.push((tag, v, found));
        }
        fn figures(&self) -> Figures {
            Figures {
                keys: self.data.len() as u64,
                ..Figures::default()
            }
        }
    }

    /// Runs a front-end on its own thread until `stop`; returns its address.
    fn serve(
        cfg: RespConfig,
        mem: Mem,
        stop: Arc<AtomicBool>,
    ) -> (SocketAddr, std::thread::JoinHandle<Mem>, Arc<RespShared>) {
        let shared = RespShared::new(&cfg, kv_resp::ServerFacts::default());
        let listener = bind_listener(cfg.listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let sh = shared.clone();
        let h = std::thread::spawn(move || {
            let mut front = RespFront::new(listener, sh).unwrap();
            let mut mem = mem;
            let t0 = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let now = t0.elapsed().as_nanos() as u64;
                front.poll(&mut mem, now);
                if !mem.hold {
                    for (tag, v, found) in std::mem::take(&mut mem.done) {
                        let outcome = match (&v, found) {
                            (Some(v), _) => Outcome::Value(v),
                            (None, true) => Outcome::Written,
                            (None, false) => Outcome::NotFound,
                        };
                        front.complete(tag, outcome, now);
                    }
                }
                if !front.busy() {
                    front.wait(Duration::from_millis(1), now);
                }
            }
            mem
        });
        (addr, h, shared)
    }

    fn cfg() -> RespConfig {
        RespConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..RespConfig::default()
        }
    }

    fn client(addr: SocketAddr) -> (StdStream, std::io::BufReader<StdStream>) {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let r = std::io::BufReader::new(s.try_clone().unwrap());
        (s, r)
    }

    fn line(r: &mut impl BufRead) -> String {
        let mut l = String::new();
        r.read_line(&mut l).unwrap();
        l
    }

    #[test]
    fn pipelined_commands_over_a_socket() {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, h, _) = serve(cfg(), Mem::default(), stop.clone());
        let (mut s, mut r) = client(addr);
        let mut req = Vec::new();
        for i in 0..100 {
            kv_resp::encode_request(&[&b"SET"[..], format!("k{i}").as_bytes(), b"v"], &mut req);
        }
        kv_resp::encode_request(&[&b"GET"[..], b"k7"], &mut req);
        req.extend_from_slice(b"DBSIZE\r\n");
        s.write_all(&req).unwrap();
        for _ in 0..100 {
            assert_eq!(line(&mut r), "+OK\r\n");
        }
        assert_eq!(line(&mut r), "$1\r\n");
        assert_eq!(line(&mut r), "v\r\n");
        assert_eq!(line(&mut r), ":100\r\n");
        stop.store(true, Ordering::Relaxed);
        assert_eq!(h.join().unwrap().data.len(), 100);
    }

    #[test]
    fn a_malformed_stream_closes_that_connection_alone() {
        let stop = Arc::new(AtomicBool::new(false));
        let (addr, h, _) = serve(cfg(), Mem::default(), stop.clone());
        let (mut good, mut good_r) = client(addr);
        let (mut bad, mut bad_r) = client(addr);
        bad.write_all(b"*1\r\n:x\r\n").unwrap();
        assert_eq!(
            line(&mut bad_r),
            "-ERR Protocol error: expected '$', got ':'\r\n"
        );
        assert_eq!(line(&mut bad_r), "", "closed after the error");
        good.write_all(b"PING\r\n").unwrap();
        assert_eq!(line(&mut good_r), "+PONG\r\n");
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn past_the_client_limit_a_connection_is_refused() {
        let stop = Arc::new(AtomicBool::new(false));
        let c = RespConfig {
            max_clients: 1,
            ..cfg()
        };
        let (addr, h, shared) = serve(c, Mem::default(), stop.clone());
        let (mut first, mut first_r) = client(addr);
        first.write_all(b"PING\r\n").unwrap();
        assert_eq!(line(&mut first_r), "+PONG\r\n");
        let (_second, mut second_r) = client(addr);
        assert_eq!(
            line(&mut second_r),
            "-ERR max number of clients reached\r\n"
        );
        assert_eq!(line(&mut second_r), "");
        assert_eq!(shared.counters.rejected.load(Ordering::Relaxed), 1);
        first.write_all(b"INFO stats\r\n").unwrap();
        let mut info = String::new();
        let n: usize = line(&mut first_r)
            .trim_start_matches('$')
            .trim()
            .parse()
            .unwrap();
        while info.len() < n {
            info.push_str(&line(&mut first_r));
        }
        assert!(info.contains("rejected_connections:1\r\n"), "{info}");
        assert!(info.contains("total_connections_received:1\r\n"), "{info}");
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn idle_connections_are_closed_after_the_timeout() {
        let stop = Arc::new(AtomicBool::new(false));
        let c = RespConfig {
            idle_timeout: Duration::from_millis(200),
            ..cfg()
        };
        let (addr, h, shared) = serve(c, Mem::default(), stop.clone());
        let (mut s, mut r) = client(addr);
        s.write_all(b"PING\r\n").unwrap();
        assert_eq!(line(&mut r), "+PONG\r\n");
        // The sweep runs once a second: the close comes within a few seconds.
        assert_eq!(line(&mut r), "", "closed by the server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.clients() != 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(shared.clients(), 0);
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn a_client_that_does_not_read_stops_being_read() {
        let stop = Arc::new(AtomicBool::new(false));
        let mut c = cfg();
        c.limits.max_output_buffer = 64 << 10;
        let (addr, h, shared) = serve(c, Mem::default(), stop.clone());
        // A small receive buffer, so that unread replies back up into the server soon.
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.set_recv_buffer_size(32 << 10).unwrap();
        sock.connect(&addr.into()).unwrap();
        let s: StdStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = std::io::BufReader::new(s.try_clone().unwrap());
        let mut w = s.try_clone().unwrap();
        w.write_all(b"SET k ").unwrap();
        w.write_all(&[b'x'; 100]).unwrap();
        w.write_all(b"\r\n").unwrap();
        assert_eq!(line(&mut r), "+OK\r\n");
        // 200 000 pipelined GETs (21 MB of replies), none read for now.
        const N: u64 = 200_000;
        let writer = std::thread::spawn(move || {
            let batch = b"GET k\r\n".repeat(1000);
            for _ in 0..N / 1000 {
                w.write_all(&batch).unwrap();
            }
        });
        // Wait until the server stops making progress (the count is unchanged over three
        // looks 100 ms apart), then see how far it got.
        let commands = || shared.counters.commands.load(Ordering::Relaxed);
        let mut last = (commands(), 0);
        for _ in 0..200 {
            std::thread::sleep(Duration::from_millis(100));
            let now = commands();
            last = if now == last.0 {
                (now, last.1 + 1)
            } else {
                (now, 0)
            };
            if last.1 >= 3 {
                break;
            }
        }
        assert!(last.1 >= 3, "the server never stopped");
        assert!(
            last.0 < N / 2,
            "the server ran {} of {N} commands for a client that reads nothing",
            last.0
        );
        // Now read: every GET is answered.
        for _ in 0..N {
            assert_eq!(line(&mut r), "$100\r\n");
            assert_eq!(line(&mut r).len(), 102);
        }
        writer.join().unwrap();
        stop.store(true, Ordering::Relaxed);
        h.join().unwrap();
    }

    #[test]
    fn a_drain_lets_commands_in_progress_answer_then_closes() {
        let stop = Arc::new(AtomicBool::new(false));
        let shared = RespShared::new(&cfg(), kv_resp::ServerFacts::default());
        let listener = bind_listener(cfg().listen).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut front = RespFront::new(listener, shared).unwrap();
        let mut mem = Mem {
            hold: true,
            ..Mem::default()
        };
        let (mut busy, mut busy_r) = client(addr);
        let (_idle, mut idle_r) = client(addr);
        busy.write_all(b"SET k v\r\n").unwrap();
        let t0 = Instant::now();
        let now = || t0.elapsed().as_nanos() as u64;
        while mem.done.is_empty() || front.connections() < 2 {
            front.poll(&mut mem, now());
            front.wait(Duration::from_millis(1), now());
            assert!(t0.elapsed() < Duration::from_secs(10));
        }
        front.begin_drain();
        assert_eq!(front.connections(), 1, "the idle one closed at once");
        assert_eq!(line(&mut idle_r), "");
        assert!(!front.drained());
        for (tag, _, _) in std::mem::take(&mut mem.done) {
            front.complete(tag, Outcome::Written, now());
        }
        while !front.drained() {
            front.poll(&mut mem, now());
            assert!(t0.elapsed() < Duration::from_secs(10));
        }
        assert_eq!(line(&mut busy_r), "+OK\r\n");
        assert_eq!(line(&mut busy_r), "");
        stop.store(true, Ordering::Relaxed);
    }
}
