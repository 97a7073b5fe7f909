//! Kernel TCP transport: one connection per remote endpoint, length-prefixed packets, coalesced
//! vectored sends, receives parsed in place from one ring, readiness through epoll (`mio`).
//!
//! TCP is [reliable](Transport::is_reliable): packets of a route arrive exactly once and in
//! order while its connection lives, and a connection that closes, resets or breaks the framing
//! is reported for every route over it by [`Transport::poll_route_failure`].
//!
//! # Endpoints, links and routes
//!
//! An endpoint listens on [`TcpConfig::bind`] (a concrete IP; port 0 picks a free port) and
//! draws a random 64-bit *instance id* at start-up. Its routing info is the listening address
//! followed by the instance id (`[4, ip(4), port(2, BE), instance(8, LE)]`, 15 bytes, or the
//! IPv6 form of 31 bytes): a process restarted on the same address is a different endpoint.
//!
//! All routes to one remote endpoint share one *link*: a connection and its send queue.
//! [`Transport::resolve`] binds a route to the link (creating it idle); the link connects when
//! the first packet is sent on one of its routes, unless the peer connected first, in which case
//! its connection is the link. The connecting side starts with a `Hello` handshake frame naming
//! itself and the instance it expects; the acceptor maps the connection to the sender's link
//! and answers `Accept` (or `Reject`: wrong instance, busy). Packets queue until the `Accept`.
//!
//! **Simultaneous connects.** If two endpoints with routes to each other both connect, the
//! connection opened by the endpoint with the *lower* routing info (bytes compared
//! lexicographically) survives: the lower endpoint answers the other's `Hello` with
//! `Reject(Simultaneous)`, and the higher one, when it sees the lower one's `Hello` while its own
//! connection is pending, drops its own and accepts. No data is written before the `Accept`, so
//! nothing is lost or reordered; both ends end with the one connection.
//!
//! A link stays while it has routes. When the endpoint that opened the connection frees its
//! last route there, it closes the connection after [`TcpConfig::linger`] (a new route in the
//! meantime keeps it); the other end keeps its side until the peer closes it, and reports its
//! own routes over it then. A route on a failed link stays failed: `tx_burst` drops and counts
//! its packets until it is resolved again (which opens a new connection) or freed. A peer host
//! that vanishes without closing is found by TCP keepalive ([`TcpConfig::keepalive`]).
//!
//! # Framing
//!
//! Every frame is `[len: u32 LE][len bytes]`. After the handshake frames, each frame is one
//! packet of `1..=max_pkt_size` bytes, the maximum the *receiver* announced in its handshake
//! frame; the sender drops (and counts) packets larger than that. A zero or oversized length,
//! or a bad handshake frame, closes that connection alone; it is counted in
//! [`TcpStats::malformed`] and in `rx_dropped`. The byte layout is in `docs/PROTOCOL.md`
//! ("TCP transport framing") and in [`wire`].
//!
//! # Sending
//!
//! [`Transport::tx_burst`] groups the burst by link (keeping the order within each) and writes
//! each group with one `sendmsg` of gathered iovecs (length prefix, header, payload: no copy),
//! `TCP_NODELAY` set; a group of at most 256 bytes is copied into one buffer and sent as one
//! slice instead, which the kernel's TCP send path takes measurably faster than three iovecs
//! (`docs/BENCHMARKS.md`). What the kernel does not take is copied into the link's queue and
//! written when the socket becomes writable; so is everything sent while the link is
//! connecting. A link's queue holds at most [`TcpConfig::tx_queue_bytes`]: past that, the
//! rest of that link's packets in the burst are dropped and counted (a caller that respects
//! its credits never gets there). `tx_burst` never blocks; it returns the number of packets
//! taken.
//!
//! # Receiving
//!
//! [`Transport::rx_burst`] polls epoll without waiting, accepts new connections (bounded by the
//! listen backlog, [`TcpConfig::max_connections`], [`TcpConfig::max_connections_per_host`] and
//! [`TcpConfig::max_handshaking`]), advances handshakes, and reads the readable connections in
//! turn, one read of up to 64 KiB each, into one arena shared by all of them where frames are
//! parsed in place: a packet is a slice of the arena, no allocation per packet. A frame cut by
//! a read is carried to that connection's next read. At most [`TcpConfig::rx_ring_size`]
//! packets are readable at once; when the ring (or its arena) is full, data waits in the kernel
//! and TCP's flow control slows the sender: nothing is dropped. While few connections are
//! established ([`TcpConfig::direct_reads`], default 2), `rx_burst` reads them without asking
//! epoll first and polls epoll only every [`EPOLL_EVERY`]th call (every call while a send
//! queue waits for its socket to drain): a busy-polling loop then finds a packet with one
//! system call. After [`UNPOLL_AFTER`] such calls without a [`Transport::wait`], the
//! established connections also leave epoll, since a registered socket pays a wait-queue
//! wakeup for every segment that arrives; they go back when the loop waits, when a socket
//! buffer fills (for the writability report), or when more than `direct_reads` connections
//! are established. Closes and resets are seen by the direct reads themselves.
//!
//! [`Transport::wait`] sleeps in `epoll_wait` until a socket is ready or a timer (connect or
//! handshake timeout, linger) is due.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use transports::tcp::{TcpConfig, TcpTransport};
//! use transports::{Transport, TxPkt};
//!
//! let mut a = TcpTransport::new(TcpConfig::default()).unwrap();
//! let mut b = TcpTransport::new(TcpConfig::default()).unwrap();
//! let (route, _a_info) = a.route_alloc().unwrap();
//! a.resolve(route, &b.routing_info()).unwrap();
//! assert_eq!(a.tx_burst(&[TxPkt { route, hdr: b"hi ", data: b"there" }]).unwrap(), 1);
//! // Both ends run their event loops: b accepts and answers the handshake, a then writes.
//! while b.rx_burst() == 0 {
//!     a.rx_burst();
//!     b.wait(Some(Duration::from_millis(1))).unwrap();
//! }
//! assert_eq!(b.rx_pkt(0), b"hi there");
//! b.rx_release(1);
//! ```
#![deny(
    unsafe_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod ring;
mod txq;
pub mod wire;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, IoSlice, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::{
    RouteId, RoutingInfo, Transport, TransportError, TransportKind, TransportStats, TxPkt,
};
use ring::{Carry, PullEnd, RxRing};
use txq::TxQueue;
use wire::{Handshake, Ident, Kind, RejectReason, HANDSHAKE_MAX, LEN_BYTES, MAX_FRAME};

/// Most routes per transport.
const MAX_ROUTES: usize = 1 << 24;
/// Packets gathered into one `sendmsg` (three iovecs each).
const TX_CHUNK: usize = 64;
/// Frames of at most this many bytes in all are copied into one buffer and sent as one
/// slice: the kernel's TCP send costs measurably more per iovec than the copy.
const SMALL_SEND: usize = 256;
/// Connections accepted per `rx_burst` at most (bounded work per call).
const ACCEPT_BUDGET: usize = 64;
/// With direct reads (see [`TcpConfig::direct_reads`]), `rx_burst` polls epoll once in this
/// many calls.
pub const EPOLL_EVERY: u32 = 16;
/// Direct-read `rx_burst` calls in a row, without a `wait`, after which the established
/// connections leave epoll (a busy-polling loop; a loop that sleeps in `wait` keeps them in).
pub const UNPOLL_AFTER: u32 = 64;
/// The listener's epoll token.
const LISTENER: Token = Token(usize::MAX);

/// Configuration of a [`TcpTransport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpConfig {
    /// Address to listen on; must be a concrete (not unspecified) IP. Port 0 picks a free port.
    /// Default `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// Largest packet (RPC header + payload) in bytes, `1..=16 MiB`. Default 8192. A stream has
    /// no MTU; larger packets mean fewer frames per message but a larger receive arena.
    pub max_pkt_size: usize,
    /// Packets readable at once, `1..=1048576`. Default 4096.
    pub rx_ring_size: usize,
    /// Bytes of the receive arena; `None` sizes it as `rx_ring_size × (max_pkt_size + 4)`
    /// capped at 8 MiB. Never less than `2 × (64 KiB + max_pkt_size + 4)`. Default `None`.
    pub rx_buffer_bytes: Option<usize>,
    /// Bytes a link's send queue holds at most (see the [module docs](self)). Default 16 MiB.
    pub tx_queue_bytes: usize,
    /// `SO_SNDBUF` of every connection; `None` leaves the kernel's autotuning. Default `None`.
    pub sndbuf: Option<usize>,
    /// `SO_RCVBUF` of every connection; `None` leaves the kernel's autotuning. Default `None`.
    /// Below the path's MSS (64 KiB on loopback) the kernel may hold back window updates
    /// until its delayed-ACK timer, stalling a full stream for up to ~200 ms at a time.
    pub rcvbuf: Option<usize>,
    /// Listen backlog (connections the kernel queues before they are accepted). Default 128.
    pub backlog: u32,
    /// Connections (any state, both directions) at most; more incoming ones are refused and
    /// outgoing ones fail their link. Default 1024.
    pub max_connections: usize,
    /// Connections with one remote IP address at most. Default 256.
    pub max_connections_per_host: usize,
    /// Accepted connections whose `Hello` has not arrived yet, at most. Default 256.
    pub max_handshaking: usize,
    /// How long an outgoing connection may take to be accepted (TCP connect and handshake),
    /// and how long a `Reject(Simultaneous)` waits for the peer's connection. Default 5 s.
    pub connect_timeout: Duration,
    /// How long an accepted connection may take to send its `Hello`. Default 5 s.
    pub handshake_timeout: Duration,
    /// How long a connection this end opened stays after its last route is freed. Default 1 s.
    pub linger: Duration,
    /// Detects a peer host that vanished without closing: TCP keepalive probes after this much
    /// silence (4 probes, a quarter of it apart) and `TCP_USER_TIMEOUT` of twice it for unacked
    /// data, so such a connection fails (and is reported) within about twice this. `None`
    /// leaves the kernel's defaults (hours). Default 10 s.
    pub keepalive: Option<Duration>,
    /// While at most this many connections are established, [`Transport::rx_burst`] reads each
    /// of them directly (one `recv` per connection per call) and polls epoll only every
    /// [`EPOLL_EVERY`]th call (for accepts, handshakes, writability), and every call while a
    /// connection's socket buffer is full (only epoll says when it drained). A busy-polling
    /// loop with few peers then finds a packet with one system call instead of two (`epoll_wait`, then
    /// `recv`); an idle spin costs one `recv` per connection instead of one `epoll_wait`.
    /// A loop that calls `rx_burst` [`UNPOLL_AFTER`] times without `wait` also takes these
    /// connections out of epoll (see the [module docs](self)).
    /// 0 turns direct reads off (every call polls epoll and reads only what it reports).
    /// Default 2.
    pub direct_reads: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            max_pkt_size: 8192,
            rx_ring_size: 4096,
            rx_buffer_bytes: None,
            tx_queue_bytes: 16 << 20,
            sndbuf: None,
            rcvbuf: None,
            backlog: 128,
            max_connections: 1024,
            max_connections_per_host: 256,
            max_handshaking: 256,
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(5),
            linger: Duration::from_secs(1),
            keepalive: Some(Duration::from_secs(10)),
            direct_reads: 2,
        }
    }
}

/// Counters specific to the TCP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Outgoing connections started.
    pub connects: u64,
    /// Incoming connections accepted from the listener.
    pub accepted: u64,
    /// Incoming connections closed at once because a connection limit was reached.
    pub refused: u64,
    /// Handshakes completed (either direction).
    pub established: u64,
    /// `Hello`s answered with `Reject`, and `Reject`s received.
    pub rejects: u64,
    /// Simultaneous connects resolved (either by rejecting the peer's or dropping our own).
    pub simultaneous: u64,
    /// Connections closed for breaking the framing or handshake rules.
    pub malformed: u64,
    /// Connections closed or reset by the peer, or failed with a socket error.
    pub closed: u64,
    /// Connections or handshakes that timed out.
    pub timeouts: u64,
    /// Routes reported by `poll_route_failure` (queued for it).
    pub route_failures: u64,
    /// Packets dropped because their link's send queue was full.
    pub tx_queue_full: u64,
    /// `sendmsg`/`send` calls.
    pub write_calls: u64,
    /// Bytes written to sockets.
    pub bytes_written: u64,
    /// `recv` calls on established connections.
    pub read_calls: u64,
    /// Bytes read from established connections.
    pub bytes_read: u64,
    /// Established connections taken out of epoll by a busy-polling loop (see
    /// [`TcpConfig::direct_reads`]).
    pub unpolled: u64,
    /// ... and put back (to sleep in `wait`, to learn writability, or above `direct_reads`).
    pub repolled: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouteState {
    Free,
    Unresolved,
    Resolved(usize),
    Failed,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// No connection yet; connects on the first packet.
    Idle,
    /// Our connection is being set up (TCP connect, then the handshake).
    Connecting,
    /// The peer rejected ours as a simultaneous connect; its own connection is awaited.
    AwaitingPeer,
    /// Connected.
    Up,
}

struct Link {
    ident: Ident,
    state: LinkState,
    conn: Option<usize>,
    routes: usize,
    q: TxQueue,
    /// The peer's `max_pkt_size` (0 until the handshake).
    peer_max: usize,
    /// Whether this end opened the current connection.
    opened: bool,
    /// AwaitingPeer: give up then; Up without routes: linger end.
    deadline: Option<Instant>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Accepted; reading the peer's `Hello`.
    InHello,
    /// Our TCP connect is in progress.
    OutConnecting,
    /// `Hello` sent (or being sent); reading the reply.
    OutHandshake,
    /// Handshake done; data frames both ways.
    Up,
}

struct Conn {
    stream: TcpStream,
    gen: u32,
    peer_ip: IpAddr,
    phase: Phase,
    link: Option<usize>,
    /// A connection to ourselves: we read it; the link is the other socket of the pair.
    selfloop: bool,
    readable: bool,
    writable: bool,
    /// In the read queue.
    queued: bool,
    carry: Carry,
    /// Handshake frame being read.
    hs: [u8; LEN_BYTES + HANDSHAKE_MAX],
    hs_len: usize,
    /// Handshake frame being written (before any data).
    out: [u8; LEN_BYTES + HANDSHAKE_MAX],
    out_len: usize,
    out_pos: usize,
    deadline: Option<Instant>,
    /// Registered with epoll. Established connections that direct reads serve are taken
    /// out (see [`UNPOLL_AFTER`]): epoll's wait-queue entry makes every arriving segment pay
    /// a wakeup.
    polled: bool,
}

/// A kernel TCP endpoint implementing [`Transport`]. See the [module docs](self).
pub struct TcpTransport {
    cfg: TcpConfig,
    ident: Ident,
    info: RoutingInfo,
    poll: Poll,
    events: Events,
    ev_scratch: Vec<(Token, bool, bool)>,
    listener: TcpListener,
    accept_ready: bool,
    conns: Vec<Option<Conn>>,
    free_conns: Vec<usize>,
    next_gen: u32,
    conns_live: usize,
    /// Slots of the established connections (phase `Up`), for direct reads.
    up: Vec<usize>,
    /// `rx_burst` calls since epoll was last polled.
    since_epoll: u32,
    handshaking: usize,
    per_host: HashMap<IpAddr, usize>,
    links: Vec<Option<Link>>,
    free_links: Vec<usize>,
    peers: HashMap<Ident, usize>,
    routes: Vec<RouteState>,
    free_routes: Vec<RouteId>,
    failures: VecDeque<RouteId>,
    ring: RxRing,
    ready: VecDeque<(usize, u32)>,
    plan: Vec<(u32, u32)>,
    next_deadline: Option<Instant>,
    /// Direct-read `rx_burst` calls since the last `wait` (saturating).
    busy_calls: u32,
    /// Established connections out of epoll.
    unpolled: usize,
    stats: TransportStats,
    tcp: TcpStats,
    logged_error: bool,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpTransport")
            .field("local", &self.ident.addr)
            .field("instance", &self.ident.instance)
            .field("connections", &self.conns_live)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

fn config_err(msg: impl Into<String>) -> TransportError {
    TransportError::Config(msg.into())
}

/// A fresh random instance id (std's randomly keyed hasher, fed the clock and the pid).
fn random_instance() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

fn token(slot: usize, gen: u32) -> Token {
    Token((slot << 32) | gen as usize)
}

fn untoken(t: Token) -> (usize, u32) {
    (t.0 >> 32, (t.0 & 0xffff_ffff) as u32)
}

/// Writes with `MSG_NOSIGNAL` (a peer's reset must not raise SIGPIPE).
fn send(stream: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    SockRef::from(stream).send_vectored_with_flags(bufs, libc::MSG_NOSIGNAL)
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

impl TcpTransport {
    /// Creates the listening socket (non-blocking, `SO_REUSEADDR`), the epoll instance and the
    /// receive ring, and draws the instance id.
    pub fn new(cfg: TcpConfig) -> Result<Self, TransportError> {
        if cfg.bind.ip().is_unspecified() {
            return Err(config_err(format!(
                "bind address {} is unspecified; bind a concrete IP so peers can route to it",
                cfg.bind
            )));
        }
        if !(1..=MAX_FRAME).contains(&cfg.max_pkt_size) {
            return Err(config_err(format!(
                "max_pkt_size {} not in 1..={MAX_FRAME}",
                cfg.max_pkt_size
            )));
        }
        if !(1..=1 << 20).contains(&cfg.rx_ring_size) {
            return Err(config_err(format!(
                "rx_ring_size {} not in 1..=1048576",
                cfg.rx_ring_size
            )));
        }
        if cfg.max_connections == 0 || cfg.max_connections_per_host == 0 {
            return Err(config_err("connection limits must be at least 1"));
        }
        if cfg.tx_queue_bytes < cfg.max_pkt_size + LEN_BYTES {
            return Err(config_err("tx_queue_bytes must hold at least one packet"));
        }
        let floor = ring::min_arena(cfg.max_pkt_size);
        let arena = cfg
            .rx_buffer_bytes
            .unwrap_or_else(|| {
                cfg.rx_ring_size
                    .saturating_mul(cfg.max_pkt_size + LEN_BYTES)
                    .min(8 << 20)
            })
            .max(floor);
        if arena > u32::MAX as usize {
            return Err(config_err("rx_buffer_bytes must be below 4 GiB"));
        }

        let socket = Socket::new(
            Domain::for_address(cfg.bind),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&cfg.bind.into())?;
        socket.listen(cfg.backlog.clamp(1, i32::MAX as u32) as i32)?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("listening socket has no IP address"))?;
        let mut listener = TcpListener::from_std(socket.into());
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let ident = Ident {
            addr: local,
            instance: random_instance(),
        };
        tracing::debug!(%local, instance = ident.instance, "TCP transport listening");
        Ok(Self {
            ring: RxRing::new(cfg.rx_ring_size, arena),
            ident,
            info: ident.routing_info(),
            poll,
            events: Events::with_capacity(256),
            ev_scratch: Vec::with_capacity(256),
            listener,
            accept_ready: true,
            conns: Vec::new(),
            free_conns: Vec::new(),
            next_gen: 0,
            conns_live: 0,
            up: Vec::new(),
            since_epoll: 0,
            handshaking: 0,
            per_host: HashMap::new(),
            links: Vec::new(),
            free_links: Vec::new(),
            peers: HashMap::new(),
            routes: Vec::new(),
            free_routes: Vec::new(),
            failures: VecDeque::new(),
            ready: VecDeque::new(),
            plan: Vec::new(),
            next_deadline: None,
            busy_calls: 0,
            unpolled: 0,
            stats: TransportStats::default(),
            tcp: TcpStats::default(),
            logged_error: false,
            cfg,
        })
    }

    /// The listening address (with the real port if `bind` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.ident.addr
    }

    /// The instance id drawn at start-up (part of the routing info).
    pub fn instance(&self) -> u64 {
        self.ident.instance
    }

    /// The configuration this transport was created with.
    pub fn config(&self) -> &TcpConfig {
        &self.cfg
    }

    /// TCP-specific counters.
    pub fn tcp_stats(&self) -> TcpStats {
        self.tcp
    }

    /// Open connections (any state).
    pub fn connections(&self) -> usize {
        self.conns_live
    }

    /// Connections that completed their handshake (one per remote endpoint in use, plus
    /// connections to ourselves).
    pub fn established_connections(&self) -> usize {
        self.up.len()
    }

    /// Bytes waiting in send queues (all links).
    pub fn queued_bytes(&self) -> usize {
        self.links.iter().flatten().map(|l| l.q.len()).sum()
    }

    /// Packets waiting in send queues (all links; a partly written one included).
    pub fn queued_packets(&self) -> usize {
        self.links.iter().flatten().map(|l| l.q.frames()).sum()
    }

    /// Encodes a listening address and instance id as TCP routing info.
    pub fn encode_routing_info(addr: SocketAddr, instance: u64) -> RoutingInfo {
        Ident { addr, instance }.routing_info()
    }

    /// Decodes TCP routing info into the listening address and instance id; rejects malformed
    /// bytes, port 0 and unspecified or multicast addresses.
    pub fn decode_routing_info(info: &RoutingInfo) -> Result<(SocketAddr, u64), TransportError> {
        Ident::decode(info.as_bytes())
            .map(|i| (i.addr, i.instance))
            .map_err(|e| TransportError::Resolve(format!("TCP routing info {info:?}: {}", e.0)))
    }

    fn log_error(&mut self, what: &str, e: &io::Error) {
        if !self.logged_error {
            self.logged_error = true;
            tracing::warn!(error = %e, "TCP transport: {what} (further errors only counted)");
        } else {
            tracing::debug!(error = %e, "TCP transport: {what}");
        }
    }

    fn arm(&mut self, at: Instant) {
        self.next_deadline = Some(self.next_deadline.map_or(at, |d| d.min(at)));
    }

    // ---- connections ----------------------------------------------------------------------

    fn conn(&self, slot: usize) -> Option<&Conn> {
        self.conns.get(slot).and_then(Option::as_ref)
    }

    fn conn_mut(&mut self, slot: usize) -> Option<&mut Conn> {
        self.conns.get_mut(slot).and_then(Option::as_mut)
    }

    fn link(&self, l: usize) -> Option<&Link> {
        self.links.get(l).and_then(Option::as_ref)
    }

    fn link_mut(&mut self, l: usize) -> Option<&mut Link> {
        self.links.get_mut(l).and_then(Option::as_mut)
    }

    /// Registers a new connection; returns its slot.
    fn add_conn(
        &mut self,
        mut stream: TcpStream,
        peer_ip: IpAddr,
        phase: Phase,
        link: Option<usize>,
    ) -> io::Result<usize> {
        let slot = match self.free_conns.pop() {
            Some(s) => s,
            None => {
                self.conns.push(None);
                self.conns.len() - 1
            }
        };
        self.next_gen = self.next_gen.wrapping_add(1);
        let gen = self.next_gen;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            token(slot, gen),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free_conns.push(slot);
            return Err(e);
        }
        let timeout = match phase {
            Phase::InHello => self.cfg.handshake_timeout,
            _ => self.cfg.connect_timeout,
        };
        let deadline = Instant::now() + timeout;
        self.arm(deadline);
        if let Some(c) = self.conns.get_mut(slot) {
            *c = Some(Conn {
                stream,
                gen,
                peer_ip,
                phase,
                link,
                selfloop: false,
                readable: false,
                writable: false,
                queued: false,
                carry: Carry::default(),
                hs: [0; LEN_BYTES + HANDSHAKE_MAX],
                hs_len: 0,
                out: [0; LEN_BYTES + HANDSHAKE_MAX],
                out_len: 0,
                out_pos: 0,
                deadline: Some(deadline),
                polled: true,
            });
        }
        self.conns_live += 1;
        if phase == Phase::InHello {
            self.handshaking += 1;
        }
        *self.per_host.entry(peer_ip).or_insert(0) += 1;
        Ok(slot)
    }

    /// Closes a connection (not its link: the caller deals with that).
    fn close_conn(&mut self, slot: usize) {
        let Some(mut c) = self.conns.get_mut(slot).and_then(Option::take) else {
            return;
        };
        if c.polled {
            let _ = self.poll.registry().deregister(&mut c.stream);
        } else {
            self.unpolled -= 1;
        }
        self.conns_live -= 1;
        match c.phase {
            Phase::InHello => self.handshaking -= 1,
            Phase::Up => self.up.retain(|&s| s != slot),
            Phase::OutConnecting | Phase::OutHandshake => {}
        }
        if let Some(n) = self.per_host.get_mut(&c.peer_ip) {
            *n -= 1;
            if *n == 0 {
                self.per_host.remove(&c.peer_ip);
            }
        }
        self.free_conns.push(slot);
    }

    /// Closes a connection that ended (EOF, error, malformed input, timeout): its link (if the
    /// connection is the link's) fails.
    fn conn_failed(&mut self, slot: usize) {
        let link = self.conn(slot).and_then(|c| c.link);
        match link {
            Some(l) if self.link(l).is_some_and(|k| k.conn == Some(slot)) => self.fail_link(l),
            _ => self.close_conn(slot),
        }
    }

    /// Moves a connection to phase `Up` (handshake done; an accepted one no longer counts
    /// against `max_handshaking`).
    fn set_up(&mut self, slot: usize) {
        if let Some(Some(c)) = self.conns.get_mut(slot) {
            if c.phase != Phase::Up {
                if c.phase == Phase::InHello {
                    self.handshaking -= 1;
                }
                c.phase = Phase::Up;
                self.up.push(slot);
            }
        }
    }

    fn enqueue_read(&mut self, slot: usize) {
        if let Some(c) = self.conn_mut(slot) {
            if !c.queued {
                c.queued = true;
                let gen = c.gen;
                self.ready.push_back((slot, gen));
            }
        }
    }

    /// Writes the pending handshake frame of a connection; `Ok(true)` once it is all out.
    fn write_out(&mut self, slot: usize) -> io::Result<bool> {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return Ok(true);
        };
        while c.out_pos < c.out_len {
            if !c.writable {
                return Ok(false);
            }
            let buf = c.out.get(c.out_pos..c.out_len).unwrap_or(&[]);
            match send(&c.stream, &[IoSlice::new(buf)]) {
                Ok(n) => {
                    self.tcp.write_calls += 1;
                    self.tcp.bytes_written += n as u64;
                    c.out_pos += n;
                    if c.out_pos < c.out_len {
                        c.writable = false;
                    }
                }
                Err(e) if would_block(&e) => c.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    fn set_out(&mut self, slot: usize, hs: &Handshake) {
        if let Some(c) = self.conn_mut(slot) {
            c.out_len = hs.emit(&mut c.out);
            c.out_pos = 0;
        }
    }

    /// Reads the handshake frame of a connection: `Ok(None)` until it is complete.
    fn read_handshake(&mut self, slot: usize) -> Result<Option<Handshake>, HsError> {
        let Some(c) = self.conn_mut(slot) else {
            return Err(HsError::Closed);
        };
        // A connection that ends inside a handshake frame sent a malformed one.
        let closed = |c: &Conn| {
            if c.hs_len > 0 {
                HsError::Malformed(wire::Malformed(
                    "connection closed inside a handshake frame",
                ))
            } else {
                HsError::Closed
            }
        };
        loop {
            let want = if c.hs_len < LEN_BYTES {
                LEN_BYTES
            } else {
                let mut prefix = [0u8; LEN_BYTES];
                prefix.copy_from_slice(c.hs.get(..LEN_BYTES).unwrap_or(&[0; LEN_BYTES]));
                LEN_BYTES + Handshake::check_len(prefix).map_err(HsError::Malformed)?
            };
            if c.hs_len >= want {
                let p = c.hs.get(LEN_BYTES..want).unwrap_or(&[]);
                return Handshake::parse(p).map(Some).map_err(HsError::Malformed);
            }
            let Some(dst) = c.hs.get_mut(c.hs_len..want) else {
                return Err(HsError::Closed);
            };
            match (&c.stream).read(dst) {
                Ok(0) => return Err(closed(c)),
                Ok(n) => c.hs_len += n,
                Err(e) if would_block(&e) => {
                    c.readable = false;
                    return Ok(None);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Err(closed(c)),
            }
        }
    }

    // ---- links ----------------------------------------------------------------------------

    fn new_link(&mut self, ident: Ident, state: LinkState) -> usize {
        let link = Link {
            ident,
            state,
            conn: None,
            routes: 0,
            q: TxQueue::default(),
            peer_max: 0,
            opened: false,
            deadline: None,
        };
        let l = match self.free_links.pop() {
            Some(l) => l,
            None => {
                self.links.push(None);
                self.links.len() - 1
            }
        };
        if let Some(s) = self.links.get_mut(l) {
            *s = Some(link);
        }
        self.peers.insert(ident, l);
        l
    }

    /// Removes a link and closes its connection; its queued packets count as dropped. Routes
    /// must not point at it any more (the callers make sure).
    fn remove_link(&mut self, l: usize) {
        let Some(mut link) = self.links.get_mut(l).and_then(Option::take) else {
            return;
        };
        self.stats.tx_dropped += link.q.clear() as u64;
        if let Some(c) = link.conn {
            self.close_conn(c);
        }
        if self.peers.get(&link.ident) == Some(&l) {
            self.peers.remove(&link.ident);
        }
        self.free_links.push(l);
    }

    /// The link's connection is gone: every route over it fails (reported once each).
    fn fail_link(&mut self, l: usize) {
        if self.link(l).is_some_and(|k| k.routes > 0) {
            for (id, r) in self.routes.iter_mut().enumerate() {
                if *r == RouteState::Resolved(l) {
                    *r = RouteState::Failed;
                    self.failures.push_back(id as RouteId);
                    self.tcp.route_failures += 1;
                }
            }
        }
        if let Some(k) = self.link(l) {
            tracing::debug!(peer = %k.ident.addr, "TCP link failed");
        }
        self.remove_link(l);
    }

    /// A link's route count dropped: an unused link is closed (see the module docs).
    fn link_unused(&mut self, l: usize) {
        let Some(k) = self.link(l) else {
            return;
        };
        if k.routes > 0 {
            return;
        }
        match k.state {
            LinkState::Idle | LinkState::Connecting | LinkState::AwaitingPeer => {
                self.remove_link(l)
            }
            LinkState::Up if k.opened => {
                if self.cfg.linger.is_zero() {
                    self.remove_link(l);
                } else {
                    let at = Instant::now() + self.cfg.linger;
                    if let Some(k) = self.link_mut(l) {
                        k.deadline = Some(at);
                    }
                    self.arm(at);
                }
            }
            LinkState::Up => {}
        }
    }

    /// Opens our connection for an idle link.
    fn connect(&mut self, l: usize) {
        let Some(addr) = self.link(l).map(|k| k.ident.addr) else {
            return;
        };
        let per_host = self.per_host.get(&addr.ip()).copied().unwrap_or(0);
        if self.conns_live >= self.cfg.max_connections
            || per_host >= self.cfg.max_connections_per_host
        {
            tracing::debug!(%addr, "TCP connection limit reached; failing the link");
            self.fail_link(l);
            return;
        }
        self.tcp.connects += 1;
        let stream = match self.open(addr) {
            Ok(s) => s,
            Err(e) => {
                self.log_error("connect failed", &e);
                self.fail_link(l);
                return;
            }
        };
        match self.add_conn(stream, addr.ip(), Phase::OutConnecting, Some(l)) {
            Ok(c) => {
                if let Some(k) = self.link_mut(l) {
                    k.state = LinkState::Connecting;
                    k.conn = Some(c);
                    k.opened = true;
                    k.deadline = None;
                }
            }
            Err(e) => {
                self.log_error("cannot register a connection", &e);
                self.fail_link(l);
            }
        }
    }

    fn open(&self, addr: SocketAddr) -> io::Result<TcpStream> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_nonblocking(true)?;
        self.tune(&s)?;
        match s.connect(&addr.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        Ok(TcpStream::from_std(s.into()))
    }

    fn tune(&self, s: &Socket) -> io::Result<()> {
        s.set_nodelay(true)?;
        if let Some(b) = self.cfg.sndbuf {
            s.set_send_buffer_size(b)?;
        }
        if let Some(b) = self.cfg.rcvbuf {
            s.set_recv_buffer_size(b)?;
        }
        if let Some(t) = self.cfg.keepalive {
            let t = t.max(Duration::from_secs(1));
            let probes = socket2::TcpKeepalive::new()
                .with_time(t)
                .with_interval((t / 4).max(Duration::from_secs(1)))
                .with_retries(4);
            s.set_tcp_keepalive(&probes)?;
            s.set_tcp_user_timeout(Some(t * 2))?;
        }
        Ok(())
    }

    /// Makes `c` the connection of link `l` (handshake done) and starts writing its queue.
    fn link_up(&mut self, l: usize, c: usize, peer_max: usize) {
        let mut dropped = 0;
        if let Some(k) = self.link_mut(l) {
            k.state = LinkState::Up;
            k.conn = Some(c);
            k.peer_max = peer_max;
            k.deadline = None;
            dropped = k.q.retain_max(peer_max);
        }
        self.stats.tx_dropped += dropped as u64;
        self.set_up(c);
        if let Some(conn) = self.conn_mut(c) {
            conn.link = Some(l);
            conn.deadline = None;
        }
        self.rearm();
        self.tcp.established += 1;
        // Data may have arrived right behind the handshake frame.
        self.enqueue_read(c);
        self.flush(l);
    }

    /// Writes what a link has queued, as far as the socket takes it; fails the link on a
    /// socket error.
    fn flush(&mut self, l: usize) {
        let Some(c) = self.link(l).and_then(|k| k.conn) else {
            return;
        };
        if !matches!(self.conn(c), Some(k) if k.phase == Phase::Up) {
            return;
        }
        match self.write_out(c) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                self.log_error("send failed", &e);
                self.tcp.closed += 1;
                self.fail_link(l);
                return;
            }
        }
        let (Some(Some(link)), Some(Some(conn))) = (self.links.get_mut(l), self.conns.get_mut(c))
        else {
            return;
        };
        let mut failed = None;
        while conn.writable && !link.q.is_empty() {
            match send(&conn.stream, &[IoSlice::new(link.q.bytes())]) {
                Ok(n) => {
                    self.tcp.write_calls += 1;
                    self.tcp.bytes_written += n as u64;
                    if n < link.q.len() {
                        conn.writable = false;
                    }
                    link.q.advance(n);
                }
                Err(e) if would_block(&e) => conn.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            self.log_error("send failed", &e);
            self.tcp.closed += 1;
            self.fail_link(l);
        }
    }

    // ---- events ---------------------------------------------------------------------------

    /// Polls epoll once (`timeout` zero: without waiting) and acts on what it reports.
    fn poll_events(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        match self.poll.poll(&mut self.events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        self.ev_scratch.clear();
        for ev in self.events.iter() {
            let bad = ev.is_error() || ev.is_read_closed() || ev.is_write_closed();
            self.ev_scratch
                .push((ev.token(), ev.is_readable() || bad, ev.is_writable() || bad));
        }
        let evs = std::mem::take(&mut self.ev_scratch);
        for &(tok, readable, writable) in &evs {
            if tok == LISTENER {
                self.accept_ready = true;
                continue;
            }
            let (slot, gen) = untoken(tok);
            if self.conn(slot).is_some_and(|c| c.gen == gen) {
                self.on_ready(slot, readable, writable);
            }
        }
        self.ev_scratch = evs;
        Ok(())
    }

    fn on_ready(&mut self, slot: usize, readable: bool, writable: bool) {
        let Some(c) = self.conn_mut(slot) else {
            return;
        };
        c.readable |= readable;
        c.writable |= writable;
        match c.phase {
            Phase::InHello => {
                if c.readable {
                    self.on_hello(slot);
                }
            }
            Phase::OutConnecting => {
                if c.readable || c.writable {
                    self.on_connected(slot);
                }
            }
            Phase::OutHandshake => self.hello_progress(slot),
            Phase::Up => {
                let link = c.link;
                if readable {
                    self.enqueue_read(slot);
                }
                if writable {
                    if let Some(l) = link {
                        self.flush(l);
                    }
                }
            }
        }
    }

    /// Our TCP connect finished (or failed): send the `Hello`.
    fn on_connected(&mut self, slot: usize) {
        let Some(c) = self.conn(slot) else {
            return;
        };
        let err = match c.stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match c.stream.peer_addr() {
                Ok(_) => None,
                Err(e)
                    if e.kind() == io::ErrorKind::NotConnected
                        || would_block(&e)
                        || e.raw_os_error() == Some(libc::EINPROGRESS) =>
                {
                    return; // still connecting
                }
                Err(e) => Some(e),
            },
        };
        if let Some(e) = err {
            tracing::debug!(error = %e, "TCP connect failed");
            self.tcp.closed += 1;
            self.conn_failed(slot);
            return;
        }
        let Some((to, max)) = c
            .link
            .and_then(|l| self.link(l))
            .map(|k| (k.ident.instance, self.cfg.max_pkt_size as u32))
        else {
            self.close_conn(slot);
            return;
        };
        let hello = Handshake::hello(self.ident, to, max);
        self.set_out(slot, &hello);
        if let Some(c) = self.conn_mut(slot) {
            c.phase = Phase::OutHandshake;
            c.writable = true;
        }
        self.hello_progress(slot);
    }

    /// Writes what is left of our `Hello` (if the socket takes it) and reads the reply if it is
    /// there.
    fn hello_progress(&mut self, slot: usize) {
        if let Err(e) = self.write_out(slot) {
            self.log_error("send failed", &e);
            self.tcp.closed += 1;
            self.conn_failed(slot);
            return;
        }
        if self.conn(slot).is_some_and(|c| c.readable) {
            self.on_reply(slot);
        }
    }

    fn malformed(&mut self, slot: usize, why: wire::Malformed) {
        tracing::debug!(error = %why, "closing a TCP connection");
        self.tcp.malformed += 1;
        self.stats.rx_dropped += 1;
        self.conn_failed(slot);
    }

    /// The acceptor's answer to our `Hello`.
    fn on_reply(&mut self, slot: usize) {
        let hs = match self.read_handshake(slot) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(HsError::Closed) => {
                self.tcp.closed += 1;
                self.conn_failed(slot);
                return;
            }
            Err(HsError::Malformed(m)) => return self.malformed(slot, m),
        };
        let Some(l) = self.conn(slot).and_then(|c| c.link) else {
            self.close_conn(slot);
            return;
        };
        let Some(expected) = self
            .link(l)
            .filter(|k| k.conn == Some(slot))
            .map(|k| k.ident.instance)
        else {
            // The link moved on (it adopted the peer's connection).
            self.close_conn(slot);
            return;
        };
        match (hs.kind, hs.reason) {
            (Kind::Accept, _) if hs.instance == expected => {
                self.link_up(l, slot, hs.max_pkt_size as usize);
            }
            (Kind::Reject, Some(RejectReason::Simultaneous)) => {
                self.tcp.rejects += 1;
                self.tcp.simultaneous += 1;
                self.close_conn(slot);
                let at = Instant::now() + self.cfg.connect_timeout;
                if let Some(k) = self.link_mut(l) {
                    k.state = LinkState::AwaitingPeer;
                    k.conn = None;
                    k.deadline = Some(at);
                }
                self.arm(at);
            }
            (Kind::Reject, reason) => {
                tracing::debug!(?reason, "TCP hello rejected");
                self.tcp.rejects += 1;
                self.fail_link(l);
            }
            _ => self.malformed(slot, wire::Malformed("unexpected handshake reply")),
        }
    }

    /// A `Hello` on an accepted connection.
    fn on_hello(&mut self, slot: usize) {
        let hs = match self.read_handshake(slot) {
            Ok(Some(h)) => h,
            Ok(None) => return,
            Err(HsError::Closed) => {
                self.close_conn(slot);
                return;
            }
            Err(HsError::Malformed(m)) => return self.malformed(slot, m),
        };
        let (Kind::Hello, Some(src)) = (hs.kind, hs.src) else {
            return self.malformed(slot, wire::Malformed("expected a hello"));
        };
        // A rejected connection stays `InHello` until `reject` closes it, which counts it
        // out of the handshaking ones; an accepted one is counted out by `set_up`.
        if let Some(c) = self.conn_mut(slot) {
            c.deadline = None;
        }
        self.rearm();
        let peer_max = hs.max_pkt_size as usize;
        let accept = Handshake::accept(self.ident.instance, self.cfg.max_pkt_size as u32);
        if hs.instance != self.ident.instance {
            self.tcp.rejects += 1;
            return self.reject(slot, RejectReason::WrongInstance);
        }
        if src == self.ident {
            // A route of ours leads to ourselves: this end of the pair only reads.
            self.set_out(slot, &accept);
            self.set_up(slot);
            if let Some(c) = self.conn_mut(slot) {
                c.selfloop = true;
                c.writable = true;
            }
            self.tcp.established += 1;
            if self.write_out(slot).is_err() {
                self.close_conn(slot);
                return;
            }
            self.enqueue_read(slot);
            return;
        }
        let l = match self.peers.get(&src).copied() {
            None => self.new_link(src, LinkState::Idle),
            Some(l) => {
                let state = self.link(l).map(|k| k.state);
                match state {
                    Some(LinkState::Connecting) if self.ident < src => {
                        // Our own connection wins; the peer waits for it.
                        self.tcp.simultaneous += 1;
                        self.tcp.rejects += 1;
                        return self.reject(slot, RejectReason::Simultaneous);
                    }
                    Some(LinkState::Connecting) => {
                        self.tcp.simultaneous += 1;
                        if let Some(old) = self.link(l).and_then(|k| k.conn) {
                            self.close_conn(old);
                        }
                        l
                    }
                    Some(LinkState::Up) => {
                        // The peer would not connect again if it still had our old connection.
                        self.fail_link(l);
                        self.new_link(src, LinkState::Idle)
                    }
                    _ => l,
                }
            }
        };
        self.set_out(slot, &accept);
        if let Some(k) = self.link_mut(l) {
            k.opened = false;
            k.conn = Some(slot);
        }
        if let Some(c) = self.conn_mut(slot) {
            c.writable = true;
        }
        self.link_up(l, slot, peer_max);
    }

    /// Answers a hello with a reject and closes the connection.
    fn reject(&mut self, slot: usize, reason: RejectReason) {
        self.set_out(slot, &Handshake::reject(self.ident.instance, reason));
        if let Some(c) = self.conn_mut(slot) {
            c.writable = true;
        }
        let _ = self.write_out(slot); // best effort: the connection closes either way
        self.close_conn(slot);
    }

    fn accept_all(&mut self) {
        for _ in 0..ACCEPT_BUDGET {
            let (stream, addr) = match self.listener.accept() {
                Ok(v) => v,
                Err(e) if would_block(&e) => {
                    self.accept_ready = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: the connection stays queued; try again next time.
                    self.log_error("accept failed", &e);
                    return;
                }
            };
            self.tcp.accepted += 1;
            let per_host = self.per_host.get(&addr.ip()).copied().unwrap_or(0);
            if self.conns_live >= self.cfg.max_connections
                || per_host >= self.cfg.max_connections_per_host
                || self.handshaking >= self.cfg.max_handshaking
            {
                self.tcp.refused += 1;
                let busy = Handshake::reject(self.ident.instance, RejectReason::Busy).to_vec();
                let _ = send(&stream, &[IoSlice::new(&busy)]);
                continue;
            }
            if let Err(e) = self.tune(&SockRef::from(&stream)) {
                self.log_error("cannot set socket options", &e);
            }
            match self.add_conn(stream, addr.ip(), Phase::InHello, None) {
                // The hello may already be there; edge-triggered epoll reports it anyway.
                Ok(_) => {}
                Err(e) => self.log_error("cannot register a connection", &e),
            }
        }
    }

    /// The earliest deadline of a connection or link (later than `after`, if given).
    fn earliest_deadline(&self, after: Option<Instant>) -> Option<Instant> {
        let conns = self.conns.iter().flatten().filter_map(|c| c.deadline);
        let links = self.links.iter().flatten().filter_map(|k| k.deadline);
        conns
            .chain(links)
            .filter(|&d| after.is_none_or(|a| d > a))
            .min()
    }

    /// After a deadline was cleared: without this, `next_deadline` would stay armed until
    /// then, and every `rx_burst` until then would read the clock.
    fn rearm(&mut self) {
        if self.next_deadline.is_some() {
            self.next_deadline = self.earliest_deadline(None);
        }
    }

    /// Fires the deadlines that passed.
    fn run_timers(&mut self) {
        let Some(due) = self.next_deadline else {
            return;
        };
        let now = Instant::now();
        if now < due {
            return;
        }
        let expired = |d: Option<Instant>| d.is_some_and(|d| d <= now);
        let expired_conns: Vec<usize> = (self.conns.iter().enumerate())
            .filter_map(|(slot, c)| c.as_ref().filter(|c| expired(c.deadline)).map(|_| slot))
            .collect();
        let expired_links: Vec<usize> = (self.links.iter().enumerate())
            .filter_map(|(l, k)| k.as_ref().filter(|k| expired(k.deadline)).map(|_| l))
            .collect();
        self.next_deadline = self.earliest_deadline(Some(now));
        for slot in expired_conns {
            tracing::debug!("TCP handshake timed out");
            self.tcp.timeouts += 1;
            self.conn_failed(slot);
        }
        for l in expired_links {
            let Some(k) = self.link(l) else { continue };
            match k.state {
                LinkState::AwaitingPeer => {
                    self.tcp.timeouts += 1;
                    self.fail_link(l);
                }
                LinkState::Up if k.routes == 0 && k.opened => self.remove_link(l),
                _ => {
                    if let Some(k) = self.link_mut(l) {
                        k.deadline = None;
                    }
                }
            }
        }
    }

    /// One round of background work: events without waiting, accepts, timers.
    fn drive(&mut self) {
        if let Err(e) = self.poll_events(Some(Duration::ZERO)) {
            self.log_error("epoll failed", &e);
        }
        self.after_events();
    }

    fn after_events(&mut self) {
        if self.accept_ready {
            self.accept_all();
        }
        self.run_timers();
    }

    /// Whether an established connection's last write found its socket buffer full.
    fn tx_blocked(&self) -> bool {
        self.up
            .iter()
            .any(|&slot| self.conn(slot).is_some_and(|c| !c.writable))
    }

    /// Puts connection `slot` into epoll (`true`) or takes it out. Registering reports what
    /// is ready at once, so no edge is lost while it was out.
    fn set_polled(&mut self, slot: usize, on: bool) {
        let Some(Some(c)) = self.conns.get_mut(slot) else {
            return;
        };
        if c.polled == on {
            return;
        }
        let r = if on {
            self.poll.registry().register(
                &mut c.stream,
                token(slot, c.gen),
                Interest::READABLE | Interest::WRITABLE,
            )
        } else {
            self.poll.registry().deregister(&mut c.stream)
        };
        match r {
            Ok(()) => {
                c.polled = on;
                if on {
                    self.unpolled -= 1;
                    self.tcp.repolled += 1;
                } else {
                    self.unpolled += 1;
                    self.tcp.unpolled += 1;
                }
            }
            Err(e) => self.log_error("epoll registration failed", &e),
        }
    }

    /// Every established connection into epoll (`true`) or out of it.
    fn set_all_polled(&mut self, on: bool) {
        for i in 0..self.up.len() {
            if let Some(&slot) = self.up.get(i) {
                self.set_polled(slot, on);
            }
        }
    }

    /// Reads the readable connections into the ring, one read each, in turn.
    fn read_ready(&mut self) -> usize {
        let mut got = 0;
        let max = self.cfg.max_pkt_size;
        for _ in 0..self.ready.len() {
            if self.ring.is_full() {
                break;
            }
            let Some((slot, gen)) = self.ready.pop_front() else {
                break;
            };
            let Some(Some(c)) = self.conns.get_mut(slot) else {
                continue;
            };
            if c.gen != gen {
                continue;
            }
            c.queued = false;
            if c.phase != Phase::Up {
                continue;
            }
            let r = self.ring.pull(&mut c.carry, max, |b| (&c.stream).read(b));
            got += r.pkts;
            if r.bytes > 0 {
                self.tcp.read_calls += 1;
                self.tcp.bytes_read += r.bytes as u64;
            }
            match r.end {
                PullEnd::Drained => {
                    c.readable = false;
                    if c.carry.has_frame(max) {
                        self.enqueue_read(slot);
                    }
                }
                PullEnd::More | PullEnd::Full => self.enqueue_read(slot),
                PullEnd::Eof => {
                    tracing::debug!("TCP connection closed by the peer");
                    self.tcp.closed += 1;
                    self.conn_failed(slot);
                }
                PullEnd::Error(e) => {
                    tracing::debug!(error = %e, "TCP connection failed");
                    self.tcp.closed += 1;
                    self.conn_failed(slot);
                }
                PullEnd::Malformed(m) => self.malformed(slot, m),
            }
        }
        got
    }

    /// Sends the packets `idx` (indices into `pkts`, in order) of one link; returns how many
    /// were taken.
    fn send_link(&mut self, l: usize, pkts: &[TxPkt<'_>], idx: &[(u32, u32)]) -> usize {
        let Some(k) = self.link(l) else {
            self.stats.tx_dropped += idx.len() as u64;
            return 0;
        };
        let state = k.state;
        let direct = state == LinkState::Up
            && k.q.is_empty()
            && k.conn
                .and_then(|c| self.conn(c))
                .is_some_and(|c| c.phase == Phase::Up && c.writable && c.out_pos >= c.out_len);
        let mut taken = 0;
        let mut rest = idx;
        if direct {
            match self.write_direct(l, pkts, idx) {
                Ok(n) => {
                    taken = n;
                    rest = idx.get(n..).unwrap_or(&[]);
                }
                Err(()) => {
                    // The link failed while writing; what was not written is lost.
                    return 0;
                }
            }
        }
        // Whatever the socket did not take waits in the queue (up to its bound).
        let cap = self.cfg.tx_queue_bytes;
        if let Some(Some(k)) = self.links.get_mut(l) {
            let mut dropped = 0;
            for (n, &(_, i)) in rest.iter().enumerate() {
                let Some(p) = pkts.get(i as usize) else {
                    continue;
                };
                let size = LEN_BYTES + p.hdr.len() + p.data.len();
                if k.q.len() + size > cap {
                    dropped = rest.len() - n;
                    break;
                }
                k.q.push(p.hdr, p.data);
                taken += 1;
            }
            self.stats.tx_dropped += dropped as u64;
            self.tcp.tx_queue_full += dropped as u64;
        }
        match state {
            LinkState::Idle => self.connect(l),
            LinkState::Up if !direct => self.flush(l),
            _ => {}
        }
        taken
    }

    /// Writes packets straight from the caller's slices; returns how many were taken: written
    /// whole, or partly written with their tail queued. `Err` if the link failed.
    fn write_direct(
        &mut self,
        l: usize,
        pkts: &[TxPkt<'_>],
        idx: &[(u32, u32)],
    ) -> Result<usize, ()> {
        let Some(c) = self.link(l).and_then(|k| k.conn) else {
            return Ok(0);
        };
        let mut done = 0;
        while done < idx.len() {
            let chunk = idx
                .get(done..(done + TX_CHUNK).min(idx.len()))
                .unwrap_or(&[]);
            let Some(Some(conn)) = self.conns.get_mut(c) else {
                return Ok(done);
            };
            // The arrays are sized to the chunk: filling 192 empty iovecs and 64 prefixes
            // cost more than the rest of a one-packet send.
            let frames = Frames { pkts, chunk };
            let res = match chunk.len() {
                _ if frames.bytes() <= SMALL_SEND => frames.send_copied(&conn.stream),
                0..=1 => frames.send::<1, 3>(&conn.stream),
                2..=8 => frames.send::<8, 24>(&conn.stream),
                _ => frames.send::<TX_CHUNK, { 3 * TX_CHUNK }>(&conn.stream),
            };
            let written = match res {
                Ok(n) => {
                    self.tcp.write_calls += 1;
                    self.tcp.bytes_written += n as u64;
                    n
                }
                Err(e) if would_block(&e) => {
                    conn.writable = false;
                    return Ok(done);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.log_error("send failed", &e);
                    self.tcp.closed += 1;
                    self.stats.tx_dropped += (idx.len() - done) as u64;
                    self.fail_link(l);
                    return Err(());
                }
            };
            // Walk the chunk: whole packets are done; a cut one has its tail queued.
            let mut left = written;
            for &(_, i) in chunk {
                let Some(p) = pkts.get(i as usize) else {
                    done += 1;
                    continue;
                };
                let size = LEN_BYTES + p.hdr.len() + p.data.len();
                if left >= size {
                    left -= size;
                    done += 1;
                    continue;
                }
                // Cut inside this packet (or not reached: left == 0).
                if left > 0 {
                    let pre = wire::data_header(p.hdr.len() + p.data.len());
                    let mut skip = left;
                    let mut parts: [&[u8]; 3] = [&[], &[], &[]];
                    for (part, s) in parts.iter_mut().zip([&pre[..], p.hdr, p.data]) {
                        let k = skip.min(s.len());
                        *part = s.get(k..).unwrap_or(&[]);
                        skip -= k;
                    }
                    if let Some(k) = self.link_mut(l) {
                        k.q.push_tail(&parts);
                    }
                    done += 1;
                }
                if let Some(Some(conn)) = self.conns.get_mut(c) {
                    conn.writable = false;
                }
                return Ok(done);
            }
        }
        Ok(done)
    }
}

/// One chunk of packets of [`TcpTransport::write_direct`] (at most [`TX_CHUNK`]), written
/// with one send call: gathered iovecs, or one copied buffer when small.
struct Frames<'a, 'p> {
    pkts: &'a [TxPkt<'p>],
    chunk: &'a [(u32, u32)],
}

impl Frames<'_, '_> {
    /// The bytes of the chunk's frames.
    fn bytes(&self) -> usize {
        (self.chunk.iter())
            .filter_map(|&(_, i)| self.pkts.get(i as usize))
            .map(|p| LEN_BYTES + p.hdr.len() + p.data.len())
            .sum()
    }

    /// Sends the chunk's frames copied into one contiguous buffer; the caller checked they
    /// fit in [`SMALL_SEND`] bytes.
    fn send_copied(&self, stream: &TcpStream) -> io::Result<usize> {
        let mut buf = [0u8; SMALL_SEND];
        let mut at = 0;
        for &(_, i) in self.chunk {
            let Some(p) = self.pkts.get(i as usize) else {
                continue;
            };
            let pre = wire::data_header(p.hdr.len() + p.data.len());
            for s in [&pre[..], p.hdr, p.data] {
                if let Some(dst) = buf.get_mut(at..at + s.len()) {
                    dst.copy_from_slice(s);
                    at += s.len();
                }
            }
        }
        send(stream, &[IoSlice::new(buf.get(..at).unwrap_or(&[]))])
    }

    /// Sends the frames (length prefix, header, data of each packet; empty parts left out)
    /// of the chunk through `I` = 3 × `P` iovecs. `P` must be at least the chunk's length:
    /// the caller takes a short write for a full socket buffer.
    fn send<const P: usize, const I: usize>(&self, stream: &TcpStream) -> io::Result<usize> {
        debug_assert!(I == 3 * P && self.chunk.len() <= P);
        let mut prefixes = [[0u8; LEN_BYTES]; P];
        let mut iov = [IoSlice::new(&[]); I];
        let mut n_iov = 0;
        for (pre, &(_, i)) in prefixes.iter_mut().zip(self.chunk) {
            let Some(p) = self.pkts.get(i as usize) else {
                continue;
            };
            *pre = wire::data_header(p.hdr.len() + p.data.len());
            for s in [&pre[..], p.hdr, p.data] {
                if !s.is_empty() {
                    if let Some(v) = iov.get_mut(n_iov) {
                        *v = IoSlice::new(s);
                        n_iov += 1;
                    }
                }
            }
        }
        send(stream, iov.get(..n_iov).unwrap_or(&[]))
    }
}

enum HsError {
    Closed,
    Malformed(wire::Malformed),
}

impl Transport for TcpTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn routing_info(&self) -> RoutingInfo {
        self.info
    }

    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        let id = if let Some(id) = self.free_routes.pop() {
            id
        } else {
            if self.routes.len() >= MAX_ROUTES {
                return Err(TransportError::RoutesExhausted(self.routes.len()));
            }
            self.routes.push(RouteState::Free);
            (self.routes.len() - 1) as RouteId
        };
        if let Some(r) = self.routes.get_mut(id as usize) {
            *r = RouteState::Unresolved;
        }
        Ok((id, self.info))
    }

    fn resolve(&mut self, route: RouteId, remote: &RoutingInfo) -> Result<(), TransportError> {
        let (addr, instance) = Self::decode_routing_info(remote)?;
        let old = match self.routes.get(route as usize) {
            Some(RouteState::Free) | None => return Err(TransportError::UnknownRoute(route)),
            Some(&r) => r,
        };
        let ident = Ident { addr, instance };
        let l = match self.peers.get(&ident) {
            Some(&l) => l,
            None => self.new_link(ident, LinkState::Idle),
        };
        if let Some(k) = self.link_mut(l) {
            k.routes += 1;
            if k.state == LinkState::Up {
                k.deadline = None; // no longer lingering
            }
        }
        if let Some(r) = self.routes.get_mut(route as usize) {
            *r = RouteState::Resolved(l);
        }
        self.failures.retain(|&f| f != route);
        if let RouteState::Resolved(o) = old {
            if let Some(k) = self.link_mut(o) {
                k.routes -= 1;
            }
            self.link_unused(o);
        }
        Ok(())
    }

    fn route_free(&mut self, route: RouteId) {
        let old = match self.routes.get_mut(route as usize) {
            Some(r) if *r != RouteState::Free => std::mem::replace(r, RouteState::Free),
            _ => return,
        };
        self.free_routes.push(route);
        self.failures.retain(|&f| f != route);
        if let RouteState::Resolved(l) = old {
            if let Some(k) = self.link_mut(l) {
                k.routes -= 1;
            }
            self.link_unused(l);
        }
    }

    fn max_pkt_size(&self) -> usize {
        self.cfg.max_pkt_size
    }

    fn rx_ring_size(&self) -> usize {
        self.cfg.rx_ring_size
    }

    fn tx_burst(&mut self, pkts: &[TxPkt<'_>]) -> Result<usize, TransportError> {
        let mut plan = std::mem::take(&mut self.plan);
        plan.clear();
        for (i, p) in pkts.iter().enumerate() {
            let size = p.hdr.len() + p.data.len();
            let link = match self.routes.get(p.route as usize) {
                Some(&RouteState::Resolved(l)) => self.link(l).map(|k| (l, k.peer_max)),
                _ => None,
            };
            match link {
                Some((l, peer_max))
                    if size > 0
                        && size <= self.cfg.max_pkt_size
                        && (peer_max == 0 || size <= peer_max) =>
                {
                    plan.push((l as u32, i as u32));
                }
                _ => self.stats.tx_dropped += 1,
            }
        }
        if plan
            .windows(2)
            .any(|w| w.first().map(|a| a.0) != w.get(1).map(|b| b.0))
        {
            plan.sort_unstable();
        }
        let mut taken = 0;
        let mut at = 0;
        while at < plan.len() {
            let l = plan.get(at).map_or(0, |p| p.0);
            let end = plan
                .get(at..)
                .and_then(|r| r.iter().position(|p| p.0 != l))
                .map_or(plan.len(), |k| at + k);
            let group = plan.get(at..end).unwrap_or(&[]);
            let before = self.stats.tx_dropped;
            let n = self.send_link(l as usize, pkts, group);
            taken += n;
            if n > 0 || self.stats.tx_dropped > before {
                self.stats.tx_batches += 1;
            }
            at = end;
        }
        self.plan = plan;
        self.stats.tx_pkts += taken as u64;
        Ok(taken)
    }

    fn rx_burst(&mut self) -> usize {
        // Direct reads skip epoll, but not while a connection's socket buffer is full: only
        // epoll says when it drained, and the queued packets wait for that.
        let direct = !self.up.is_empty() && self.up.len() <= self.cfg.direct_reads;
        let blocked = direct && self.tx_blocked();
        if direct && !blocked && self.busy_calls >= UNPOLL_AFTER && self.unpolled < self.up.len() {
            self.set_all_polled(false);
        }
        if direct {
            self.busy_calls = self.busy_calls.saturating_add(1);
        }
        if (blocked || !direct) && self.unpolled > 0 {
            // Writability (or, above `direct_reads`, everything) comes from epoll.
            self.set_all_polled(true);
        }
        if direct {
            // Established connections are read whether or not epoll reported them (out of
            // epoll, it cannot): a read that finds nothing costs what an `epoll_wait` would.
            for i in 0..self.up.len() {
                if let Some(&slot) = self.up.get(i) {
                    self.enqueue_read(slot);
                }
            }
        }
        if direct && self.since_epoll + 1 < EPOLL_EVERY && !blocked {
            self.since_epoll += 1;
            self.after_events();
        } else {
            self.since_epoll = 0;
            self.drive();
        }
        let got = self.read_ready();
        if got > 0 {
            self.stats.rx_pkts += got as u64;
            self.stats.rx_batches += 1;
        }
        self.ring.len()
    }

    fn rx_pkt(&self, i: usize) -> &[u8] {
        self.ring.pkt(i)
    }

    fn rx_release(&mut self, n: usize) {
        self.ring.release(n);
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.ring.len() > 0 || !self.ready.is_empty() || self.accept_ready {
            return Ok(());
        }
        // Sleeping needs every connection in epoll; a loop that sleeps keeps them there.
        self.busy_calls = 0;
        if self.unpolled > 0 {
            self.set_all_polled(true);
        }
        let mut t = timeout;
        if let Some(d) = self.next_deadline {
            let until = d.saturating_duration_since(Instant::now());
            t = Some(t.map_or(until, |t| t.min(until)));
        }
        self.poll_events(t)?;
        self.after_events();
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }

    fn is_reliable(&self) -> bool {
        true
    }

    fn poll_route_failure(&mut self) -> Option<RouteId> {
        self.failures.pop_front()
    }
}

/// The epoll instance: readable when any of the transport's sockets is ready.
impl AsRawFd for TcpTransport {
    fn as_raw_fd(&self) -> RawFd {
        self.poll.as_raw_fd()
    }
}
