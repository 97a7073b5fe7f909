//! Batched packet transports behind one trait.
//!
//! A [`Transport`] moves *batches* of datagram-like packets between endpoints. It is the only
//! piece of the RPC stack that touches the network; the `rpc` crate drives it from its per-thread
//! event loop. The trait is shaped so that very different fabrics fit it without contortion:
//!
//! | transport | route (`RouteId`) stands for | routing info exchanged at connect |
//! |---|---|---|
//! | [`udp::UdpTransport`] | a peer socket address | the local socket address |
//! | [`sim::SimTransport`] | a peer node of the in-process fabric | the node id |
//! | [`tcp::TcpTransport`] | a remote endpoint (one connection, shared by its routes) | the listening address and an instance id |
//! | InfiniBand UD (`rdma::ud`, feature `rdma`) | an address handle + remote QPN/QKey | LID/GID, QPN, QKey |
//! | InfiniBand RC (`rdma::rc`, feature `rdma`) | one connected queue pair per route | a fresh QP's LID/GID, QPN, PSN |
//!
//! Connecting is two steps so that connection-oriented transports fit: [`Transport::route_alloc`]
//! creates the local end of a route and returns the routing info to send to the peer (for RC a
//! freshly created queue pair), and [`Transport::resolve`] completes it with the peer's routing
//! info (UDP: parse the address; UD: create an address handle; RC: move the QP to RTS).
//!
//! Sending takes a slice of [`TxPkt`] descriptors, each a header slice and a payload slice, so a
//! transport can gather them without copying the payload (scatter/gather `sendmmsg`, verbs SGEs).
//! Receiving fills a transport-owned ring: [`Transport::rx_burst`] says how many packets are
//! readable, [`Transport::rx_pkt`] borrows one, and [`Transport::rx_release`] hands buffers back
//! (for verbs: re-posts the receives). Transport headers (UDP/IP, the 40-byte GRH of UD) are
//! stripped before the packet is exposed.
//!
//! ```
//! use transports::{sim::{SimFabric, LinkFaults}, Transport, TxPkt};
//!
//! let fabric = SimFabric::new(42);
//! let mut a = fabric.transport(1024, 256);
//! let mut b = fabric.transport(1024, 256);
//! let (route, _a_info) = a.route_alloc().unwrap();
//! a.resolve(route, &b.routing_info()).unwrap();
//! a.tx_burst(&[TxPkt { route, hdr: b"hi ", data: b"there" }]).unwrap();
//! fabric.advance(1_000); // let the simulated link deliver it
//! assert_eq!(b.rx_burst(), 1);
//! assert_eq!(b.rx_pkt(0), b"hi there");
//! b.rx_release(1);
//! ```
#![warn(missing_docs)]

use std::fmt;
use std::time::Duration;

#[macro_use]
pub mod wire;
pub mod conformance;
#[cfg(feature = "rdma")]
pub mod rdma;
pub mod rng;
pub mod sim;
mod sockaddr;
pub mod tcp;
pub mod udp;

/// Identifies one resolved route (a remote endpoint) inside one transport instance.
pub type RouteId = u32;

wire_enum! {
    /// The kind of a transport. Both ends of a session must use the same kind.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum TransportKind {
        /// Kernel UDP sockets.
        Udp = 1,
        /// The in-process simulated fabric.
        Sim = 2,
        /// Kernel TCP streams.
        Tcp = 3,
        /// InfiniBand unreliable datagram (verbs).
        InfinibandUd = 4,
        /// InfiniBand reliable connection (verbs).
        InfinibandRc = 5,
    }
}

impl TransportKind {
    /// A short lowercase name ("udp", "sim", ...).
    pub fn name(self) -> &'static str {
        match self {
            Self::Udp => "udp",
            Self::Sim => "sim",
            Self::Tcp => "tcp",
            Self::InfinibandUd => "ud",
            Self::InfinibandRc => "rc",
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Maximum size of [`RoutingInfo`] in bytes.
pub const ROUTING_INFO_MAX: usize = 64;

/// Opaque, transport-specific routing information exchanged at connect time.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RoutingInfo {
    len: u8,
    bytes: [u8; ROUTING_INFO_MAX],
}

impl RoutingInfo {
    /// Builds routing info from bytes; `None` if longer than [`ROUTING_INFO_MAX`].
    pub fn new(data: &[u8]) -> Option<Self> {
        if data.len() > ROUTING_INFO_MAX {
            return None;
        }
        let mut bytes = [0u8; ROUTING_INFO_MAX];
        bytes[..data.len()].copy_from_slice(data);
        Some(Self {
            len: data.len() as u8,
            bytes,
        })
    }

    /// The routing info bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len).min(ROUTING_INFO_MAX)]
    }
}

impl fmt::Debug for RoutingInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RoutingInfo(")?;
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// One packet to transmit: a header and a payload, gathered by the transport on the wire.
#[derive(Clone, Copy, Debug)]
pub struct TxPkt<'a> {
    /// The route (remote endpoint) to send to.
    pub route: RouteId,
    /// The packet header bytes (sent first).
    pub hdr: &'a [u8],
    /// The payload bytes (sent right after the header).
    pub data: &'a [u8],
}

/// Errors returned by transports.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// An I/O error from the operating system.
    #[error("transport I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The routing info could not be parsed or resolved.
    #[error("cannot resolve routing info: {0}")]
    Resolve(String),
    /// The route id does not name a live route.
    #[error("unknown route {0}")]
    UnknownRoute(RouteId),
    /// No more routes can be created.
    #[error("route table full ({0} routes)")]
    RoutesExhausted(usize),
    /// A packet is larger than the transport's MTU.
    #[error("packet of {size} bytes exceeds the transport MTU of {mtu} bytes")]
    TooLarge {
        /// The packet size.
        size: usize,
        /// The maximum.
        mtu: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid transport configuration: {0}")]
    Config(String),
    /// The requested device or feature is not present on this machine.
    #[error("transport unavailable: {0}")]
    Unavailable(String),
}

/// Counters every transport keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Packets handed to the fabric.
    pub tx_pkts: u64,
    /// Packets received into the ring.
    pub rx_pkts: u64,
    /// Transmit calls (syscalls / post-send batches).
    pub tx_batches: u64,
    /// Receive calls that returned at least one packet.
    pub rx_batches: u64,
    /// Packets the transport could not send (socket buffer full, ...).
    pub tx_dropped: u64,
    /// Packets received that the transport discarded (truncated, wrong source, ...).
    pub rx_dropped: u64,
}

/// A batched packet transport. One instance is owned by one thread.
///
/// Contract:
/// * `tx_burst` sends packets in order; a packet the fabric cannot take right now is dropped and
///   counted (the RPC layer retransmits). It never blocks.
/// * `rx_burst` never blocks; it returns the number of received packets held in the ring and not
///   yet released (including ones returned by earlier calls). Packets are indexed `0..n` in
///   arrival order; `rx_release(k)` frees the first `k` of them.
/// * `wait` blocks until input may be available or the timeout passes (spurious wake-ups are
///   allowed); busy-polling callers never call it.
/// * A *reliable* transport ([`Transport::is_reliable`]) delivers every packet it took from
///   `tx_burst` on a route exactly once and in order, unless that route's connection fails.
///   A failure is reported once per route by [`Transport::poll_route_failure`] (a route freed
///   before it is polled is not reported); from then on `tx_burst` takes nothing for that route
///   (its packets are dropped and counted) until it is resolved again or freed. Packets
///   received before the failure stay readable. A reliable transport still drops and counts
///   packets that are too large, for unknown routes, or beyond a documented queue bound.
/// * The conformance suite ([`conformance`]) checks these rules for any transport.
pub trait Transport {
    /// The kind of this transport.
    fn kind(&self) -> TransportKind;

    /// Routing info of this endpoint that does not depend on the peer (UDP: the socket address).
    /// Connection-oriented transports return the info of their listening endpoint.
    fn routing_info(&self) -> RoutingInfo;

    /// Creates the local end of a new route and returns it with the routing info to send to the
    /// peer. For datagram transports the info equals [`Transport::routing_info`].
    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError>;

    /// Completes a route with the peer's routing info (the "resolve" step).
    fn resolve(&mut self, route: RouteId, remote: &RoutingInfo) -> Result<(), TransportError>;

    /// Releases a route. Unknown routes are ignored.
    fn route_free(&mut self, route: RouteId);

    /// Maximum bytes (RPC header + payload) that one packet can carry.
    fn max_pkt_size(&self) -> usize;

    /// Number of packets the receive ring holds; the RPC layer admits sessions so that the
    /// packets in flight towards this endpoint never exceed it.
    fn rx_ring_size(&self) -> usize;

    /// Sends a batch of packets; returns how many were handed to the fabric.
    fn tx_burst(&mut self, pkts: &[TxPkt<'_>]) -> Result<usize, TransportError>;

    /// Pulls newly arrived packets into the receive ring; returns the number readable.
    fn rx_burst(&mut self) -> usize;

    /// Borrows received packet `i` (`i < rx_burst()`), transport headers stripped.
    /// Returns an empty slice for an out-of-range index.
    fn rx_pkt(&self, i: usize) -> &[u8];

    /// Releases the first `n` received packets back to the transport.
    fn rx_release(&mut self, n: usize);

    /// Blocks until input may be available, or `timeout` elapses (`None`: no limit).
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError>;

    /// The transport's counters.
    fn stats(&self) -> TransportStats;

    /// Whether packets of one route arrive reliably and in order, exactly once (TCP, InfiniBand RC).
    /// The rpc layer then skips go-back-N retransmission (at-most-once and deadlines stay).
    fn is_reliable(&self) -> bool {
        false
    }

    /// The next route whose underlying connection failed (closed, reset, QP in error) since the
    /// last call; the rpc layer resets that route's sessions at once instead of waiting for
    /// the liveness timeout. `None` when there is nothing to report.
    fn poll_route_failure(&mut self) -> Option<RouteId> {
        None
    }
}

/// A boxed transport is a transport (e.g. `Box<dyn Transport + Send>`, to choose one at run
/// time): every call goes to the box's content, one indirect call each.
impl<T: Transport + ?Sized> Transport for Box<T> {
    fn kind(&self) -> TransportKind {
        (**self).kind()
    }
    fn routing_info(&self) -> RoutingInfo {
        (**self).routing_info()
    }
    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        (**self).route_alloc()
    }
    fn resolve(&mut self, route: RouteId, remote: &RoutingInfo) -> Result<(), TransportError> {
        (**self).resolve(route, remote)
    }
    fn route_free(&mut self, route: RouteId) {
        (**self).route_free(route)
    }
    fn max_pkt_size(&self) -> usize {
        (**self).max_pkt_size()
    }
    fn rx_ring_size(&self) -> usize {
        (**self).rx_ring_size()
    }
    fn tx_burst(&mut self, pkts: &[TxPkt<'_>]) -> Result<usize, TransportError> {
        (**self).tx_burst(pkts)
    }
    fn rx_burst(&mut self) -> usize {
        (**self).rx_burst()
    }
    fn rx_pkt(&self, i: usize) -> &[u8] {
        (**self).rx_pkt(i)
    }
    fn rx_release(&mut self, n: usize) {
        (**self).rx_release(n)
    }
    fn wait(&mut self, timeout: Option<Duration>) -> Result<(), TransportError> {
        (**self).wait(timeout)
    }
    fn stats(&self) -> TransportStats {
        (**self).stats()
    }
    fn is_reliable(&self) -> bool {
        (**self).is_reliable()
    }
    fn poll_route_failure(&mut self) -> Option<RouteId> {
        (**self).poll_route_failure()
    }
}
