//! Kernel UDP transport (Linux): batched `sendmmsg`/`recvmmsg`, UDP GSO on send and UDP GRO on
//! receive, a preallocated receive ring, non-blocking throughout.
//!
//! # Routes
//!
//! A route is a peer socket address. The routing info of an endpoint is its bound address,
//! encoded as `[4, ip(4), port(2, BE)]` (7 bytes) or `[6, ip(16), port(2, BE), scope_id(4, BE)]`
//! (23 bytes). Bind a concrete address (`127.0.0.1:0`, a NIC's address, ...): an unspecified
//! address (`0.0.0.0`, `::`) is not routable for a peer, so [`UdpTransport::new`] rejects it.
//! Port 0 is fine: the kernel picks one and the routing info carries the real port.
//!
//! # Sending
//!
//! [`Transport::tx_burst`] gathers each packet's header and payload with two iovecs (no copy)
//! and hands the whole burst to one `sendmmsg` (more calls only past 64 datagrams or 1024
//! iovecs). Runs of consecutive packets to the same route with equal sizes (the last may be
//! shorter) go out as one GSO super-datagram (`UDP_SEGMENT`, at most 64 segments and 65,507
//! bytes) that the kernel splits into ordinary datagrams, which is where the packet rate comes
//! from on Linux (the per-datagram stack cost, not the syscall, dominates). If the kernel
//! rejects GSO (`EIO`, `EINVAL`, `ENOPROTOOPT`) it is switched off for good and the burst is
//! resent one datagram per packet. When the socket buffer is full (`EAGAIN`, `ENOBUFS`) the
//! rest of the burst is dropped and counted in `tx_dropped`: the RPC layer retransmits. Packets
//! larger than [`UdpConfig::max_pkt_size`] or for unknown routes are dropped and counted too.
//!
//! # Receiving
//!
//! The receive ring is one preallocated arena cut into *chunks*: without GRO a chunk holds one
//! datagram of up to `max_pkt_size` bytes and there are `rx_ring_size` of them; with GRO a chunk
//! holds one coalesced datagram of up to 64 KiB, which is split (without copying) into one ring
//! entry per segment. [`Transport::rx_burst`] does at most one non-blocking receive call into
//! free chunks. Its batch adapts: it asks for as many datagrams as arrived last time and doubles
//! (up to [`UdpConfig::rx_batch`]) while calls come back full, so a lone packet costs a plain
//! `recvmsg` (a `recvmmsg` would go on to try, and fail, to read a second datagram) while a
//! stream is read in batches. Likewise a burst that makes one datagram goes out with `sendmsg`.
//! Datagrams that were truncated, are empty or exceed `max_pkt_size` are dropped and
//! counted in `rx_dropped`. No input can make this module panic. The source address of a
//! datagram is not checked (the RPC header identifies the session).
//!
//! At most `rx_ring_size` packets are readable at once. With GRO, one datagram may carry up to
//! 64 segments, so up to 63 more may be held invisibly until the caller releases some; and
//! since each chunk is 64 KiB, a GRO ring has fewer chunks than `rx_ring_size` (enough for
//! `rx_ring_size × max_pkt_size` bytes, and at least `rx_batch`): when small datagrams arrive
//! one by one (not coalesced) fewer than `rx_ring_size` of them fit and the rest wait in the
//! socket buffer until slots are released. Nothing is lost by that.
//!
//! # Example
//!
//! ```
//! use transports::udp::{UdpConfig, UdpTransport};
//! use transports::{Transport, TxPkt};
//!
//! let cfg = UdpConfig { bind: "127.0.0.1:0".parse().unwrap(), ..UdpConfig::default() };
//! let mut a = UdpTransport::new(cfg.clone()).unwrap();
//! let mut b = UdpTransport::new(cfg).unwrap();
//! let (route, _a_info) = a.route_alloc().unwrap();
//! a.resolve(route, &b.routing_info()).unwrap();
//! assert_eq!(a.tx_burst(&[TxPkt { route, hdr: b"hi ", data: b"there" }]).unwrap(), 1);
//! while b.rx_burst() == 0 {
//!     b.wait(Some(std::time::Duration::from_millis(10))).unwrap();
//! }
//! assert_eq!(b.rx_pkt(0), b"hi there");
//! b.rx_release(1);
//! ```
#![deny(unsafe_code)]

mod sys;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::{
    RouteId, RoutingInfo, Transport, TransportError, TransportKind, TransportStats, TxPkt,
};
use sys::{RecvScratch, SendMsg, SendScratch};

/// Largest UDP payload over IPv4 (65,535 − 20 − 8); also the cap used for IPv6.
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Most segments in one GSO send or GRO datagram (the kernel's `UDP_MAX_SEGMENTS` was 64 before
/// Linux 6.9 raised it; 64 works everywhere).
pub const MAX_SEGMENTS: usize = 64;
/// Receive chunk size when GRO is on: room for the largest coalesced datagram.
const GRO_CHUNK: usize = 65_536;
/// Most datagrams per `sendmmsg` call.
const MAX_TX_MSGS: usize = 64;
/// Most iovecs per `sendmmsg` call (a soft cap; one GSO datagram may need up to 128).
const MAX_TX_IOVS: usize = 1024;
/// Most routes per transport.
const MAX_ROUTES: usize = 1 << 24;

/// Configuration of a [`UdpTransport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpConfig {
    /// Local address to bind; must be a concrete (not unspecified) IP. Port 0 picks a free port.
    /// Default `127.0.0.1:0`.
    pub bind: SocketAddr,
    /// Largest packet (RPC header + payload) in bytes, `1..=65507`. Default 1472: a 1500-byte
    /// Ethernet MTU minus the IPv4 and UDP headers (use 1452 for IPv6 on such links; loopback
    /// takes up to 65,507).
    pub max_pkt_size: usize,
    /// Packets the receive ring holds, `1..=1048576`. Default 4096.
    pub rx_ring_size: usize,
    /// Most datagrams pulled by one `recvmmsg`, `1..=1024`. Default 32.
    pub rx_batch: usize,
    /// Socket send buffer in bytes as passed to `SO_SNDBUF`; `None` sizes it from
    /// `rx_ring_size × (max_pkt_size + 256)`, clamped to 256 KiB ..= 32 MiB. Default `None`.
    pub sndbuf: Option<usize>,
    /// Socket receive buffer in bytes (`SO_RCVBUF`); `None`: sized like `sndbuf`.
    /// Default `None`.
    pub rcvbuf: Option<usize>,
    /// Send runs of equal-size packets as UDP GSO super-datagrams when the kernel allows.
    /// Default `true`.
    pub gso: bool,
    /// Ask the kernel to coalesce received datagrams (UDP GRO). Default `true`.
    ///
    /// GRO is what makes receiving a GSO sender's packets cheap (≈ 0.1 µs per packet instead
    /// of ≈ 2.9 µs on loopback): small-RPC throughput with 4 sessions x 8 in flight measured
    /// 1.63 M/s with it and 0.49 M/s without (`kv-bench rpc tput`, same machine, same hour).
    /// Its price is latency: the segment size arrives in a control message, so every receive
    /// uses `recvmsg`, which costs ≈ 0.3 µs more per call than the `recvfrom` used for a lone
    /// packet without GRO. In 2026-11-24 runs of `kv-bench rpc latency` that difference was
    /// inside the run-to-run noise; turn GRO off for a latency-only workload if it shows.
    pub gro: bool,
    /// While every resolved route leads to one peer, `connect(2)` the socket to it, and
    /// disconnect as soon as a second peer is resolved. A connected socket skips the
    /// per-datagram route lookup on send and is found by the kernel's early demux on receive
    /// (≈ 1.5 µs less per round trip on loopback), and it drops datagrams from anyone else.
    /// Default `true`.
    pub connect_single_peer: bool,
}

impl Default for UdpConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            max_pkt_size: 1472,
            rx_ring_size: 4096,
            rx_batch: 32,
            sndbuf: None,
            rcvbuf: None,
            gso: true,
            gro: true,
            connect_single_peer: true,
        }
    }
}

/// Largest packet [`max_pkt_size_toward`] picks, whatever the path allows: 9000-byte jumbo
/// frames less the IPv4 and UDP headers. Larger packets would save little more per byte and
/// make every receive ring preallocate `rx_ring_size` times as much.
pub const MAX_AUTO_PKT_SIZE: usize = 8972;

/// The packet size (RPC header + payload, i.e. the UDP payload) to configure for traffic
/// toward `peer`: the kernel's path MTU for that address less the IP and UDP headers, capped
/// at [`MAX_AUTO_PKT_SIZE`]; 1472 (a 1500-byte Ethernet MTU) if the MTU cannot be learned.
/// On loopback (MTU 65536) this gives 8972: a response of a few KiB then travels as one
/// datagram instead of several, each of which costs a trip through the stack (and, for an
/// RPC response, a request-for-response round trip).
///
/// ```
/// use std::net::Ipv4Addr;
/// use transports::udp::{max_pkt_size_toward, MAX_AUTO_PKT_SIZE};
/// assert_eq!(max_pkt_size_toward(Ipv4Addr::LOCALHOST.into()), MAX_AUTO_PKT_SIZE);
/// ```
pub fn max_pkt_size_toward(peer: std::net::IpAddr) -> usize {
    const DEFAULT: usize = 1472;
    let domain = if peer.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let Ok(sock) = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)) else {
        return DEFAULT;
    };
    // connect(2) on UDP sends nothing; it only looks the route up.
    if sock.connect(&SocketAddr::new(peer, 9).into()).is_err() {
        return DEFAULT;
    }
    let headers = if peer.is_ipv4() { 28 } else { 48 };
    match sys::path_mtu(sock.as_raw_fd(), peer.is_ipv6()) {
        Ok(mtu) if mtu > headers + 64 => (mtu - headers).min(MAX_AUTO_PKT_SIZE),
        _ => DEFAULT,
    }
}

/// Counters specific to the UDP transport.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UdpStats {
    /// GSO super-datagrams sent.
    pub gso_datagrams: u64,
    /// Packets sent inside GSO super-datagrams.
    pub gso_segments: u64,
    /// Coalesced (GRO) datagrams received.
    pub gro_datagrams: u64,
    /// Packets received inside coalesced datagrams.
    pub gro_segments: u64,
}

enum Route {
    Free,
    Unresolved,
    Resolved(SockAddr),
}

/// One readable packet: `len` bytes at `off` inside receive chunk `chunk`.
#[derive(Clone, Copy, Default)]
struct Desc {
    chunk: u32,
    off: u32,
    len: u32,
}

/// The receive ring: chunks are filled and freed in FIFO order, packets (descriptors) too.
struct RxRing {
    arena: Vec<u8>,
    chunk_size: usize,
    nchunks: usize,
    chunk_head: usize,
    chunk_used: usize,
    /// Unreleased packets per chunk.
    chunk_refs: Vec<u32>,
    descs: Vec<Desc>,
    desc_head: usize,
    desc_count: usize,
    /// Readable packets at most (`rx_ring_size`).
    visible_cap: usize,
    /// Descriptors one datagram may need (1, or 64 with GRO).
    segs_per_msg: usize,
}

impl RxRing {
    fn new(ring: usize, max_pkt: usize, batch: usize, gro: bool) -> Self {
        let (chunk_size, nchunks, segs) = if gro {
            let bytes = ring.saturating_mul(max_pkt);
            let n = bytes.div_ceil(GRO_CHUNK).max(batch).min(ring).max(1);
            (GRO_CHUNK, n, MAX_SEGMENTS)
        } else {
            (max_pkt, ring, 1)
        };
        Self {
            arena: vec![0; chunk_size * nchunks],
            chunk_size,
            nchunks,
            chunk_head: 0,
            chunk_used: 0,
            chunk_refs: vec![0; nchunks],
            descs: vec![Desc::default(); ring + segs - 1],
            desc_head: 0,
            desc_count: 0,
            visible_cap: ring,
            segs_per_msg: segs,
        }
    }

    fn visible(&self) -> usize {
        self.desc_count.min(self.visible_cap)
    }

    fn desc(&self, i: usize) -> Option<Desc> {
        if i >= self.visible() {
            return None;
        }
        let mut j = self.desc_head + i;
        if j >= self.descs.len() {
            j -= self.descs.len();
        }
        self.descs.get(j).copied()
    }

    /// Appends a packet; false if the descriptor ring is full.
    fn push(&mut self, chunk: usize, off: usize, len: usize) -> bool {
        if self.desc_count >= self.descs.len() {
            return false;
        }
        let mut j = self.desc_head + self.desc_count;
        if j >= self.descs.len() {
            j -= self.descs.len();
        }
        self.descs[j] = Desc {
            chunk: chunk as u32,
            off: off as u32,
            len: len as u32,
        };
        self.chunk_refs[chunk] += 1;
        self.desc_count += 1;
        true
    }

    fn release(&mut self, n: usize) {
        let n = n.min(self.visible());
        for _ in 0..n {
            let d = self.descs[self.desc_head];
            if let Some(r) = self.chunk_refs.get_mut(d.chunk as usize) {
                *r = r.saturating_sub(1);
            }
            self.desc_head += 1;
            if self.desc_head == self.descs.len() {
                self.desc_head = 0;
            }
        }
        self.desc_count -= n;
        self.reclaim();
    }

    /// Frees leading chunks whose packets are all released (or that held none).
    fn reclaim(&mut self) {
        while self.chunk_used > 0 && self.chunk_refs[self.chunk_head] == 0 {
            self.chunk_head += 1;
            if self.chunk_head == self.nchunks {
                self.chunk_head = 0;
            }
            self.chunk_used -= 1;
        }
    }
}

/// A kernel UDP endpoint implementing [`Transport`]. See the [module docs](self).
pub struct UdpTransport {
    socket: Socket,
    local: SocketAddr,
    cfg: UdpConfig,
    gso: bool,
    gro: bool,
    sndbuf: usize,
    rcvbuf: usize,
    routes: Vec<Route>,
    free_routes: Vec<RouteId>,
    ring: RxRing,
    plan: Vec<SendMsg>,
    plan_spare: Vec<SendMsg>,
    tx: SendScratch,
    rx: RecvScratch,
    stats: TransportStats,
    udp_stats: UdpStats,
    logged_tx_error: bool,
    logged_rx_error: bool,
    /// Datagrams the next `rx_burst` asks for (adaptive, `1..=rx_batch`).
    rx_hint: usize,
    /// Whether the last receive call filled its batch.
    rx_last_full: bool,
    /// Resolved routes per peer address.
    peers: std::collections::HashMap<SocketAddr, usize>,
    /// The peer the socket is connected to (see [`UdpConfig::connect_single_peer`]).
    connected: Option<SocketAddr>,
}

impl std::fmt::Debug for UdpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpTransport")
            .field("local", &self.local)
            .field("gso", &self.gso)
            .field("gro", &self.gro)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

/// Binds a non-blocking UDP socket. A request for port 0 is turned into a bind to an explicit
/// port: the kernel forgets an automatically chosen port when a connected UDP socket is
/// disconnected (see [`UdpConfig::connect_single_peer`]), and the port is our routing info.
fn bind_socket(bind: SocketAddr) -> Result<(Socket, SocketAddr), TransportError> {
    let open = |addr: SocketAddr| -> io::Result<(Socket, SocketAddr)> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        let local = socket
            .local_addr()?
            .as_socket()
            .ok_or_else(|| io::Error::other("bound socket has no IP address"))?;
        Ok((socket, local))
    };
    if bind.port() != 0 {
        return Ok(open(bind)?);
    }
    let mut last = None;
    for _ in 0..16 {
        let (probe, local) = open(bind)?;
        drop(probe);
        match open(local) {
            Ok(v) => return Ok(v),
            // Someone took the port between the two binds: try another.
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => last = Some(e),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last
        .unwrap_or_else(|| io::Error::from(io::ErrorKind::AddrInUse))
        .into())
}

fn config_err(msg: impl Into<String>) -> TransportError {
    TransportError::Config(msg.into())
}

impl UdpTransport {
    /// Creates a non-blocking UDP socket bound to `cfg.bind`, sizes its buffers, enables GRO
    /// and probes GSO as configured, and preallocates the receive ring.
    pub fn new(cfg: UdpConfig) -> Result<Self, TransportError> {
        if cfg.bind.ip().is_unspecified() {
            return Err(config_err(format!(
                "bind address {} is unspecified; bind a concrete IP so peers can route to it",
                cfg.bind
            )));
        }
        if !(1..=MAX_UDP_PAYLOAD).contains(&cfg.max_pkt_size) {
            return Err(config_err(format!(
                "max_pkt_size {} not in 1..={MAX_UDP_PAYLOAD}",
                cfg.max_pkt_size
            )));
        }
        if !(1..=1 << 20).contains(&cfg.rx_ring_size) {
            return Err(config_err(format!(
                "rx_ring_size {} not in 1..=1048576",
                cfg.rx_ring_size
            )));
        }
        if !(1..=1024).contains(&cfg.rx_batch) {
            return Err(config_err(format!(
                "rx_batch {} not in 1..=1024",
                cfg.rx_batch
            )));
        }
        let (socket, local) = bind_socket(cfg.bind)?;
        let fd = socket.as_raw_fd();

        let auto = cfg
            .rx_ring_size
            .saturating_mul(cfg.max_pkt_size + 256)
            .clamp(256 << 10, 32 << 20);
        set_buffer(&socket, true, cfg.sndbuf.unwrap_or(auto));
        set_buffer(&socket, false, cfg.rcvbuf.unwrap_or(auto));
        let sndbuf = socket.send_buffer_size()?;
        let rcvbuf = socket.recv_buffer_size()?;

        // Probe GSO: a zero per-socket segment size is accepted by every kernel that knows
        // UDP_SEGMENT and changes nothing (each GSO send passes its size in a cmsg).
        let gso = cfg.gso && sys::set_int_opt(fd, libc::SOL_UDP, libc::UDP_SEGMENT, 0).is_ok();
        let gro = cfg.gro && sys::set_int_opt(fd, libc::SOL_UDP, libc::UDP_GRO, 1).is_ok();
        if cfg.gso != gso || cfg.gro != gro {
            tracing::info!(gso, gro, "UDP offloads not supported by this kernel");
        }
        tracing::debug!(%local, sndbuf, rcvbuf, gso, gro, "UDP transport ready");

        let ring = RxRing::new(cfg.rx_ring_size, cfg.max_pkt_size, cfg.rx_batch, gro);
        Ok(Self {
            socket,
            local,
            gso,
            gro,
            sndbuf,
            rcvbuf,
            routes: Vec::new(),
            free_routes: Vec::new(),
            ring,
            plan: Vec::with_capacity(MAX_TX_MSGS),
            plan_spare: Vec::new(),
            tx: SendScratch::default(),
            rx: RecvScratch::default(),
            stats: TransportStats::default(),
            udp_stats: UdpStats::default(),
            logged_tx_error: false,
            logged_rx_error: false,
            rx_hint: 1,
            rx_last_full: false,
            peers: std::collections::HashMap::new(),
            connected: None,
            cfg,
        })
    }

    /// The peer the socket is currently connected to, if any.
    pub fn connected_peer(&self) -> Option<SocketAddr> {
        self.connected
    }

    fn peer_add(&mut self, addr: SocketAddr) {
        *self.peers.entry(addr).or_insert(0) += 1;
        self.update_connection();
    }

    fn peer_remove(&mut self, addr: SocketAddr) {
        if let Some(n) = self.peers.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.peers.remove(&addr);
            }
        }
        self.update_connection();
    }

    /// Connects the socket while exactly one peer is resolved; disconnects otherwise.
    fn update_connection(&mut self) {
        let want = if self.cfg.connect_single_peer && self.peers.len() == 1 {
            self.peers.keys().next().copied()
        } else {
            None
        };
        if want == self.connected {
            return;
        }
        let result = match want {
            Some(peer) => self.socket.connect(&peer.into()),
            None => sys::disconnect(self.socket.as_raw_fd()),
        };
        match result {
            Ok(()) => self.connected = want,
            Err(e) => {
                tracing::warn!(error = %e, ?want, "UDP connect/disconnect failed");
                if want.is_none() {
                    // Still connected to the old peer: sends to others name their address and
                    // the kernel refuses them, so stop pretending.
                    self.connected = None;
                } else if sys::disconnect(self.socket.as_raw_fd()).is_ok() {
                    self.connected = None;
                }
            }
        }
    }

    /// The bound local address (with the real port if `bind` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The configuration this transport was created with.
    pub fn config(&self) -> &UdpConfig {
        &self.cfg
    }

    /// The socket buffer sizes `(send, receive)` in bytes that the kernel granted, as reported
    /// by `getsockopt` (Linux reports twice the requested value, for its bookkeeping).
    pub fn socket_buffers(&self) -> (usize, usize) {
        (self.sndbuf, self.rcvbuf)
    }

    /// Whether GSO is in use (configured, supported, and not rejected by the kernel since).
    pub fn gso_enabled(&self) -> bool {
        self.gso
    }

    /// Whether GRO is in use (configured and accepted by the kernel).
    pub fn gro_enabled(&self) -> bool {
        self.gro
    }

    /// UDP-specific counters.
    pub fn udp_stats(&self) -> UdpStats {
        self.udp_stats
    }

    /// Encodes a socket address as UDP routing info (see the [module docs](self)).
    pub fn encode_routing_info(addr: SocketAddr) -> RoutingInfo {
        let (b, n) = crate::sockaddr::encode(addr);
        // 23 bytes always fit in ROUTING_INFO_MAX (64).
        RoutingInfo::new(&b[..n]).unwrap_or_else(|| unreachable!())
    }

    /// Decodes UDP routing info into a peer address; rejects malformed bytes, port 0 and
    /// unspecified or multicast addresses.
    pub fn decode_routing_info(info: &RoutingInfo) -> Result<SocketAddr, TransportError> {
        crate::sockaddr::decode(info.as_bytes())
            .map_err(|why| TransportError::Resolve(format!("UDP routing info {info:?}: {why}")))
    }

    fn route_addr(&self, route: RouteId) -> Option<&SockAddr> {
        match self.routes.get(route as usize) {
            Some(Route::Resolved(a)) => Some(a),
            _ => None,
        }
    }

    /// Builds `self.plan` (one entry per datagram) from `pkts`; drops and counts bad packets.
    fn plan_burst(&mut self, pkts: &[TxPkt<'_>]) {
        self.plan.clear();
        let mut open = false; // whether the last planned datagram may take more segments
        for (i, p) in pkts.iter().enumerate() {
            let size = p.hdr.len() + p.data.len();
            if size > self.cfg.max_pkt_size || self.route_addr(p.route).is_none() {
                self.stats.tx_dropped += 1;
                open = false;
                continue;
            }
            if open {
                // Sessions have routes of their own, but datagrams to one peer coalesce
                // whichever session they belong to: a burst that interleaves sessions (many
                // clients of one server, a load generator) still goes out as GSO runs.
                let same_peer = self.plan.last().is_some_and(|m| {
                    m.route == p.route || self.route_addr(m.route) == self.route_addr(p.route)
                });
                if let Some(m) = self.plan.last_mut() {
                    if same_peer
                        && m.first + m.count == i
                        && m.count < MAX_SEGMENTS
                        && size > 0
                        && size <= usize::from(m.gso_size)
                        && m.bytes + size <= MAX_UDP_PAYLOAD
                    {
                        m.count += 1;
                        m.bytes += size;
                        open = size == usize::from(m.gso_size);
                        continue;
                    }
                }
            }
            self.plan.push(SendMsg {
                first: i,
                count: 1,
                gso_size: size as u16, // size <= max_pkt_size <= 65,507
                bytes: size,
                route: p.route,
            });
            open = self.gso && size > 0;
        }
    }

    /// `tx_burst` of a single packet (a round trip's request or response): the same checks,
    /// errors and counters as a burst, without planning one. Returns the packets sent.
    fn tx_one(&mut self, p: &TxPkt<'_>) -> usize {
        let size = p.hdr.len() + p.data.len();
        let dst = match self.routes.get(p.route as usize) {
            Some(Route::Resolved(a)) if size <= self.cfg.max_pkt_size => a,
            _ => {
                self.stats.tx_dropped += 1;
                return 0;
            }
        };
        // While connected, every resolved route leads to the connected peer (see `tx_burst`).
        let dst = if self.connected.is_some() {
            None
        } else {
            Some(dst)
        };
        let fd = self.socket.as_raw_fd();
        let mut refused_retried = false;
        loop {
            match sys::send_one(fd, p.hdr, p.data, dst) {
                Ok(()) => {
                    self.stats.tx_batches += 1;
                    self.stats.tx_pkts += 1;
                    return 1;
                }
                Err(e) => {
                    let errno = e.raw_os_error();
                    if errno == Some(libc::ECONNREFUSED) && !refused_retried {
                        // A stale ICMP error from an earlier datagram; it is now cleared.
                        refused_retried = true;
                        continue;
                    }
                    if e.kind() != io::ErrorKind::WouldBlock && errno != Some(libc::ENOBUFS) {
                        self.log_tx_error(&e);
                    }
                    self.stats.tx_dropped += 1;
                    return 0;
                }
            }
        }
    }

    /// Replaces plan entries `from..` by one datagram per packet (after GSO was rejected).
    fn unbundle_plan(&mut self, from: usize) {
        self.plan_spare.clear();
        for m in &self.plan[from..] {
            for k in 0..m.count {
                let size = if k + 1 < m.count {
                    usize::from(m.gso_size)
                } else {
                    m.bytes - usize::from(m.gso_size) * (m.count - 1)
                };
                self.plan_spare.push(SendMsg {
                    first: m.first + k,
                    count: 1,
                    gso_size: size as u16,
                    bytes: size,
                    route: m.route,
                });
            }
        }
        self.plan.truncate(from);
        self.plan.append(&mut self.plan_spare);
    }

    fn log_tx_error(&mut self, e: &io::Error) {
        if !self.logged_tx_error {
            self.logged_tx_error = true;
            tracing::warn!(error = %e, "UDP send failed; dropping (further errors only counted)");
        }
    }
}

/// Sets SO_SNDBUF/SO_RCVBUF, trying the privileged *FORCE variant first (exceeds the sysctl
/// limits as root), silently falling back to the plain option.
fn set_buffer(socket: &Socket, send: bool, bytes: usize) {
    let v = bytes.min(i32::MAX as usize / 2);
    if let Some((snd_force, rcv_force)) = sys::SO_BUFFORCE {
        let name = if send { snd_force } else { rcv_force };
        if sys::set_int_opt(socket.as_raw_fd(), libc::SOL_SOCKET, name, v as i32).is_ok() {
            return;
        }
    }
    let r = if send {
        socket.set_send_buffer_size(v)
    } else {
        socket.set_recv_buffer_size(v)
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, send, bytes = v, "cannot set socket buffer size");
    }
}

fn is_gso_rejection(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT)
    )
}

impl Transport for UdpTransport {
    fn kind(&self) -> TransportKind {
        TransportKind::Udp
    }

    fn routing_info(&self) -> RoutingInfo {
        Self::encode_routing_info(self.local)
    }

    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        let id = if let Some(id) = self.free_routes.pop() {
            id
        } else {
            if self.routes.len() >= MAX_ROUTES {
                return Err(TransportError::RoutesExhausted(self.routes.len()));
            }
            self.routes.push(Route::Free);
            (self.routes.len() - 1) as RouteId
        };
        self.routes[id as usize] = Route::Unresolved;
        Ok((id, self.routing_info()))
    }

    fn resolve(&mut self, route: RouteId, remote: &RoutingInfo) -> Result<(), TransportError> {
        let addr = Self::decode_routing_info(remote)?;
        if addr.is_ipv4() != self.local.is_ipv4() {
            return Err(TransportError::Resolve(format!(
                "peer {addr} and local {} are of different address families",
                self.local
            )));
        }
        let old = match self.routes.get_mut(route as usize) {
            Some(r @ (Route::Unresolved | Route::Resolved(_))) => {
                std::mem::replace(r, Route::Resolved(addr.into()))
            }
            _ => return Err(TransportError::UnknownRoute(route)),
        };
        if let Route::Resolved(a) = old {
            if let Some(a) = a.as_socket() {
                self.peer_remove(a);
            }
        }
        self.peer_add(addr);
        Ok(())
    }

    fn route_free(&mut self, route: RouteId) {
        let old = match self.routes.get_mut(route as usize) {
            Some(r) if !matches!(r, Route::Free) => std::mem::replace(r, Route::Free),
            _ => return,
        };
        self.free_routes.push(route);
        if let Route::Resolved(a) = old {
            if let Some(a) = a.as_socket() {
                self.peer_remove(a);
            }
        }
    }

    fn max_pkt_size(&self) -> usize {
        self.cfg.max_pkt_size
    }

    fn rx_ring_size(&self) -> usize {
        self.cfg.rx_ring_size
    }

    fn tx_burst(&mut self, pkts: &[TxPkt<'_>]) -> Result<usize, TransportError> {
        if let [one] = pkts {
            return Ok(self.tx_one(one));
        }
        self.plan_burst(pkts);
        let fd = self.socket.as_raw_fd();
        let mut sent = 0;
        let mut next = 0;
        let mut refused_retried = false;
        while next < self.plan.len() {
            // Bound one call by datagrams and (softly) by iovecs.
            let mut end = next;
            let mut iovs = 0;
            while end < self.plan.len() && end - next < MAX_TX_MSGS {
                iovs += 2 * self.plan[end].count;
                if end > next && iovs > MAX_TX_IOVS {
                    break;
                }
                end += 1;
            }
            let routes = &self.routes;
            // While connected, every resolved route leads to the connected peer: send without
            // a destination so the kernel uses the socket's cached route.
            let connected = self.connected.is_some();
            let result = sys::send_batch(
                fd,
                &mut self.tx,
                pkts,
                &self.plan[next..end],
                connected,
                |r| match routes.get(r as usize) {
                    Some(Route::Resolved(a)) => Some(a),
                    _ => None,
                },
            );
            match result {
                Ok(n) if n > 0 => {
                    self.stats.tx_batches += 1;
                    for m in &self.plan[next..next + n.min(end - next)] {
                        sent += m.count;
                        if m.count > 1 {
                            self.udp_stats.gso_datagrams += 1;
                            self.udp_stats.gso_segments += m.count as u64;
                        }
                    }
                    next += n.min(end - next);
                }
                Ok(_) => {
                    // Nothing taken and no error: treat as a full buffer.
                    break;
                }
                Err(e) => {
                    let errno = e.raw_os_error();
                    if e.kind() == io::ErrorKind::WouldBlock || errno == Some(libc::ENOBUFS) {
                        break;
                    }
                    if self.plan[next].count > 1 && is_gso_rejection(&e) {
                        tracing::warn!(error = %e, "kernel rejected UDP GSO; sending one datagram per packet from now on");
                        self.gso = false;
                        self.unbundle_plan(next);
                        continue;
                    }
                    if errno == Some(libc::ECONNREFUSED) && !refused_retried {
                        // A stale ICMP error from an earlier datagram; it is now cleared.
                        refused_retried = true;
                        continue;
                    }
                    // Any other error concerns this datagram (unreachable peer, ...): skip it.
                    self.log_tx_error(&e);
                    self.stats.tx_dropped += self.plan[next].count as u64;
                    next += 1;
                }
            }
        }
        for m in &self.plan[next..] {
            self.stats.tx_dropped += m.count as u64;
        }
        self.stats.tx_pkts += sent as u64;
        Ok(sent)
    }

    fn rx_burst(&mut self) -> usize {
        let ring = &mut self.ring;
        if ring.desc_count >= ring.visible_cap {
            return ring.visible();
        }
        let free_descs = ring.descs.len() - ring.desc_count;
        let first = {
            let t = ring.chunk_head + ring.chunk_used;
            if t >= ring.nchunks {
                t - ring.nchunks
            } else {
                t
            }
        };
        let k = self
            .rx_hint
            .min(ring.nchunks - ring.chunk_used)
            .min(ring.nchunks - first)
            .min(free_descs / ring.segs_per_msg);
        if k == 0 {
            return ring.visible();
        }
        let fd = self.socket.as_raw_fd();
        let n = match sys::recv_batch(
            fd,
            &mut self.rx,
            &mut ring.arena,
            ring.chunk_size,
            first,
            k,
            self.gro,
        ) {
            Ok(n) => n,
            Err(e) => {
                self.rx_last_full = false;
                if e.kind() != io::ErrorKind::WouldBlock && !self.logged_rx_error {
                    self.logged_rx_error = true;
                    tracing::warn!(error = %e, "UDP receive failed (further errors not logged)");
                }
                return ring.visible();
            }
        };
        // Adapt the batch: ask for what arrived last time, and double while calls come back
        // full twice in a row (a steady stream). A lone packet then costs one datagram's worth
        // of kernel work: recvmmsg would otherwise try (and fail) to read a second one.
        if n == k && n > 0 {
            if self.rx_last_full {
                self.rx_hint = (k * 2).min(self.cfg.rx_batch);
            }
            self.rx_last_full = true;
        } else if n > 0 {
            self.rx_hint = n;
            self.rx_last_full = false;
        } else {
            self.rx_last_full = false;
        }
        let max_pkt = self.cfg.max_pkt_size;
        let mut got = 0u64;
        for (i, meta) in self.rx.meta.iter().take(n).enumerate() {
            let chunk = first + i;
            ring.chunk_used += 1;
            let seg = if meta.segment_size > 0 {
                meta.segment_size
            } else {
                meta.len
            };
            if meta.truncated || meta.len == 0 || seg > max_pkt {
                self.stats.rx_dropped += if seg > 0 {
                    meta.len.div_ceil(seg).max(1) as u64
                } else {
                    1
                };
                continue;
            }
            if meta.len > seg {
                self.udp_stats.gro_datagrams += 1;
                self.udp_stats.gro_segments += meta.len.div_ceil(seg) as u64;
            }
            let mut off = 0;
            while off < meta.len {
                let len = seg.min(meta.len - off);
                if ring.push(chunk, off, len) {
                    got += 1;
                } else {
                    self.stats.rx_dropped += 1;
                }
                off += len;
            }
        }
        if n > 0 {
            self.stats.rx_batches += 1;
            self.stats.rx_pkts += got;
        }
        ring.reclaim();
        ring.visible()
    }

    fn rx_pkt(&self, i: usize) -> &[u8] {
        let Some(d) = self.ring.desc(i) else {
            return &[];
        };
        let start = d.chunk as usize * self.ring.chunk_size + d.off as usize;
        self.ring
            .arena
            .get(start..start + d.len as usize)
            .unwrap_or(&[])
    }

    fn rx_release(&mut self, n: usize) {
        self.ring.release(n);
    }

    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        if self.ring.visible() > 0 {
            return Ok(());
        }
        sys::poll_readable(self.socket.as_raw_fd(), timeout)?;
        Ok(())
    }

    fn stats(&self) -> TransportStats {
        self.stats
    }
}

impl AsRawFd for UdpTransport {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl AsFd for UdpTransport {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.socket.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_info_round_trips() {
        for a in ["127.0.0.1:9", "[::1]:65535", "[fe80::1%3]:80"] {
            let a: SocketAddr = a.parse().unwrap();
            let info = UdpTransport::encode_routing_info(a);
            assert_eq!(UdpTransport::decode_routing_info(&info).unwrap(), a);
        }
        for bad in [
            &[][..],
            &[4, 127, 0, 0, 1, 0][..],
            &[4, 127, 0, 0, 1, 0, 0][..],
            &[4, 0, 0, 0, 0, 0, 9][..],
            &[5, 127, 0, 0, 1, 0, 9][..],
            &[6; 22][..],
        ] {
            let info = RoutingInfo::new(bad).unwrap();
            assert!(UdpTransport::decode_routing_info(&info).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ring_wraps_and_reclaims() {
        let mut r = RxRing::new(3, 16, 2, false);
        assert_eq!(r.nchunks, 3);
        for round in 0..10 {
            r.chunk_used += 1;
            let c = (r.chunk_head + r.chunk_used - 1) % r.nchunks;
            assert!(r.push(c, 0, round + 1));
            assert_eq!(r.visible(), 1);
            assert_eq!(r.desc(0).unwrap().len as usize, round + 1);
            assert!(r.desc(1).is_none());
            r.release(5);
            assert_eq!((r.visible(), r.chunk_used), (0, 0));
        }
    }
}
