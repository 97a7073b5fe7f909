//! Server settings and errors.

use std::path::PathBuf;
use std::time::Duration;

use kv_engine::Durability;
use rpc::RpcError;
use transports::TransportError;

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

/// The datapath transport of the server's threads (session management is always UDP, on
/// [`ServerConfig::listen`]). Clients must use the same kind: a mismatch fails their connect
/// with `TransportMismatch`.
#[derive(Clone, Debug, Default)]
pub enum DataTransport {
    /// Kernel UDP sockets, one per thread on the listen IP ([`ServerConfig::udp_gro`] and
    /// [`ServerConfig::max_pkt_size`] apply).
    #[default]
    Udp,
    /// Kernel TCP, one listening socket per thread on the listen IP (packets of up to 8 KiB,
    /// the transport's default); reliable, so the rpc layer does no retransmission, and a
    /// client whose connection closes has its sessions freed at once.
    Tcp,
    /// InfiniBand/RoCE unreliable datagrams over libibverbs on the RDMA device `device`
    /// (`None`: the first one). The server fails to start, before opening the data directory,
    /// if there is no such device.
    #[cfg(feature = "rdma")]
    Ud {
        /// The device name (`ibv_devices`), `None` for the first.
        device: Option<String>,
    },
    /// InfiniBand/RoCE reliable connections (one queue pair per session) over libibverbs.
    #[cfg(feature = "rdma")]
    Rc {
        /// The device name (`ibv_devices`), `None` for the first.
        device: Option<String>,
    },
    /// UD on the simulated verbs fabric `SimVerbs` (one simulated HCA per thread), shared with
    /// clients in this process: for tests and simulations, never an RDMA measurement.
    #[cfg(feature = "rdma")]
    SimUd(transports::rdma::sim::SimVerbs),
    /// RC on the simulated verbs fabric, as [`DataTransport::SimUd`].
    #[cfg(feature = "rdma")]
    SimRc(transports::rdma::sim::SimVerbs),
}

impl DataTransport {
    /// The kind of transport (what clients must use).
    pub fn kind(&self) -> transports::TransportKind {
        use transports::TransportKind as K;
        match self {
            Self::Udp => K::Udp,
            Self::Tcp => K::Tcp,
            #[cfg(feature = "rdma")]
            Self::Ud { .. } | Self::SimUd(_) => K::InfinibandUd,
            #[cfg(feature = "rdma")]
            Self::Rc { .. } | Self::SimRc(_) => K::InfinibandRc,
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
    /// The threads' datapath transport. Default [`DataTransport::Udp`].
    pub transport: DataTransport,
    /// Data directory (created if missing). Default `./kv-data`.
    pub data_dir: PathBuf,
    /// Server threads = engine workers W (1..=255). Recorded in the data directory: reopening
    /// with another W fails. Default 2.
    pub threads: usize,
    /// Engine page cache in bytes, split between threads. Default 64 MiB.
    pub cache_bytes: usize,
    /// When an acknowledged write is durable (`docs/STORAGE.md`, Durability). Default
    /// [`Durability::Periodic`] with a 1 s flush interval.
    pub durability: Durability,
    /// Background reorganisation of each thread's engine worker
    /// ([`EngineConfig::reorg_batch`](kv_engine::EngineConfig::reorg_batch),
    /// `docs/STORAGE.md`): items moved next to their index neighbours per round, a round
    /// running only while the thread's worker has no client operation outstanding. Default
    /// 0: off.
    pub reorg_batch: usize,
    /// Idle behaviour. Default: spin 100 ms, then sleep.
    pub idle: IdleMode,
    /// Longest the shutdown waits for in-flight requests. Default 10 s.
    pub drain_timeout: Duration,
    /// Receive with UDP GRO ([`UdpConfig::gro`](transports::udp::UdpConfig::gro)). Default `true`.
    pub udp_gro: bool,
    /// Largest UDP packet of the threads' sockets. Default
    /// [`transports::udp::MAX_AUTO_PKT_SIZE`] (8972): each session uses the smaller of this
    /// and its client's size, which the client library derives from the path MTU (so 8972 on
    /// loopback and 1472 across a 1500-byte Ethernet). Each thread's receive ring
    /// preallocates 4096 packets of this size.
    pub max_pkt_size: usize,
    /// Also speak RESP (the Redis protocol) on TCP with these settings: every thread serves
    /// its share of the connections (`docs/KV-SERVICE.md`, "RESP"). Default: off.
    pub resp: Option<crate::resp::RespConfig>,
    /// Cluster mode: run this node's shard replicas (`listen` and `threads` then come from
    /// the cluster file). Default `None`: a single server.
    pub cluster: Option<crate::cluster::ClusterOptions>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:31850".into(),
            transport: DataTransport::Udp,
            data_dir: PathBuf::from("./kv-data"),
            threads: 2,
            cache_bytes: 64 << 20,
            durability: Durability::default(),
            reorg_batch: 0,
            idle: IdleMode::default(),
            drain_timeout: Duration::from_secs(10),
            udp_gro: true,
            max_pkt_size: transports::udp::MAX_AUTO_PKT_SIZE,
            resp: None,
            cluster: None,
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
        source: kv_engine::Error,
    },
    /// The rpc layer failed (e.g. the listen address is in use).
    #[error("rpc: {0}")]
    Rpc(#[from] RpcError),
    /// The transport could not be set up.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// The transport asked for cannot run on this machine (no RDMA device).
    #[error("{0}")]
    Unavailable(String),
    /// An operating-system error (spawning threads).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The RESP listener could not be set up.
    #[error("cannot listen for RESP on {addr}: {source}")]
    Resp {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A server thread failed or panicked.
    #[error("server thread {thread} failed: {reason}")]
    Thread {
        /// The thread.
        thread: usize,
        /// Why.
        reason: String,
    },
}
