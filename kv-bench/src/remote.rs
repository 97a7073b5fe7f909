//! kv-service embedded in this process, for `kv-bench compare`: a server of its own per way
//! in (its own data directory) and the client connections the driver threads make to it —
//! the rpc crate over `rpc/udp` and `rpc/tcp` on loopback, the RESP front-end over TCP
//! (`resp/tcp`, pipelined RESP connections as a Redis client makes them), and with the `rdma`
//! feature `rpc/ud` and `rpc/rc` on the simulated verbs device (labelled as a simulation:
//! never an RDMA measurement).

use std::sync::Arc;

use anyhow::{Context, Result};
use kv_client::{Client, ClientConfig};
use kv_service::{DataTransport, IdleMode, Server, ServerConfig};

use crate::ycsb::driver::{Backend, Conns, Factory, KvBackend};
use crate::ycsb::{redis_conns, temp_data_dir};

/// A way into kv-service that `kv-bench compare` can measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RemoteKind {
    /// The rpc crate over kernel UDP.
    Udp,
    /// The rpc crate over kernel TCP.
    Tcp,
    /// The RESP (Redis protocol) front-end over kernel TCP.
    Resp,
    /// The rpc crate over InfiniBand UD on the simulated verbs device.
    #[cfg(feature = "rdma")]
    Ud,
    /// The rpc crate over InfiniBand RC on the simulated verbs device.
    #[cfg(feature = "rdma")]
    Rc,
}

impl RemoteKind {
    /// Every way of this build.
    pub fn all() -> Vec<RemoteKind> {
        vec![
            Self::Udp,
            Self::Tcp,
            Self::Resp,
            #[cfg(feature = "rdma")]
            Self::Ud,
            #[cfg(feature = "rdma")]
            Self::Rc,
        ]
    }
}

/// A kv-service reached one way, and how to connect to it.
pub struct Remote {
    /// The row's name: `rpc/udp`, `rpc/tcp`, `resp/tcp`, `rpc/ud (simulated)`, ...
    pub name: String,
    /// What it is.
    pub version: String,
    /// On the simulated verbs device.
    pub simulated: bool,
    server: Server,
    _dir: tempfile::TempDir,
    factory: Connect,
}

/// How the driver threads connect to a [`Remote`].
enum Connect {
    /// kv-client over the server's rpc transport.
    Rpc(Factory),
    /// Pipelined RESP connections to this address.
    Resp(String),
}

impl Remote {
    /// Starts kv-service with `workers` threads and a `cache_mb` page cache for `t`; rpc
    /// connections pipeline up to `batch` requests per BATCH message.
    pub fn start(t: RemoteKind, workers: usize, cache_mb: usize, batch: usize) -> Result<Self> {
        let cfg = ClientConfig {
            batch,
            ..ClientConfig::default()
        };
        let (name, version, simulated, transport) = match t {
            RemoteKind::Udp => (
                "rpc/udp",
                "kv-service over rpc + kernel UDP, loopback",
                false,
                DataTransport::Udp,
            ),
            RemoteKind::Tcp => (
                "rpc/tcp",
                "kv-service over rpc + kernel TCP, loopback",
                false,
                DataTransport::Tcp,
            ),
            RemoteKind::Resp => (
                "resp/tcp",
                "kv-service's RESP front-end, pipelined RESP over TCP, loopback",
                false,
                DataTransport::Udp,
            ),
            #[cfg(feature = "rdma")]
            RemoteKind::Ud => (
                "rpc/ud (simulated)",
                "kv-service over rpc + InfiniBand UD on SimVerbs: simulated verbs device — not an RDMA measurement",
                true,
                DataTransport::SimUd(transports::rdma::sim::SimVerbs::new_realtime(7)),
            ),
            #[cfg(feature = "rdma")]
            RemoteKind::Rc => (
                "rpc/rc (simulated)",
                "kv-service over rpc + InfiniBand RC on SimVerbs: simulated verbs device — not an RDMA measurement",
                true,
                DataTransport::SimRc(transports::rdma::sim::SimVerbs::new_realtime(8)),
            ),
        };
        let dir = temp_data_dir(&format!("kv-bench-compare-{t:?}-"))?;
        let server = Server::start(ServerConfig {
            listen: "127.0.0.1:0".into(),
            transport: transport.clone(),
            data_dir: dir.path().to_path_buf(),
            threads: workers,
            cache_bytes: cache_mb << 20,
            idle: IdleMode::default(),
            resp: (t == RemoteKind::Resp).then(|| kv_service::resp::RespConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                ..kv_service::resp::RespConfig::default()
            }),
            ..ServerConfig::default()
        })
        .with_context(|| format!("starting the embedded kv-service for {name}"))?;
        let factory = match server.resp_addr() {
            Some(resp) => Connect::Resp(resp.to_string()),
            None => Connect::Rpc(connector(&server.listen_addr().to_string(), cfg, transport)),
        };
        Ok(Self {
            name: name.into(),
            version: version.into(),
            simulated,
            server,
            _dir: dir,
            factory,
        })
    }

    /// `threads` × `sessions` client connections, made on the driver threads.
    pub fn conns(&self, threads: usize, sessions: usize) -> Conns {
        match &self.factory {
            Connect::Rpc(factory) => Conns::Connect {
                factory: factory.clone(),
                threads,
                sessions,
            },
            Connect::Resp(addr) => redis_conns(addr, threads, sessions),
        }
    }

    /// Stops the server gracefully.
    pub fn shutdown(self) -> Result<()> {
        self.server
            .shutdown()
            .with_context(|| format!("stopping the embedded server of {}", self.name))
    }
}

/// Makes one client connection to the server at `addr` over `transport`.
fn connector(addr: &str, cfg: ClientConfig, transport: DataTransport) -> Factory {
    let addr = addr.to_string();
    let what = format!("connecting to kv-service at {addr}");
    match transport {
        DataTransport::Tcp => Arc::new(move || {
            let c = Client::connect_tcp(&addr, cfg.clone()).context(what.clone())?;
            Ok(Box::new(KvBackend::new(c)) as Box<dyn Backend>)
        }),
        #[cfg(feature = "rdma")]
        DataTransport::SimUd(fabric) => Arc::new(move || {
            use transports::rdma::{sim::SimDeviceConfig, ud::UdTransport};
            let dev = fabric.open_device(SimDeviceConfig::default());
            let t = UdTransport::new(dev, Default::default())?;
            sim_client(&addr, t, &cfg).context(what.clone())
        }),
        #[cfg(feature = "rdma")]
        DataTransport::SimRc(fabric) => Arc::new(move || {
            use transports::rdma::{rc::RcTransport, sim::SimDeviceConfig};
            let dev = fabric.open_device(SimDeviceConfig::default());
            let t = RcTransport::new(dev, Default::default())?;
            sim_client(&addr, t, &cfg).context(what.clone())
        }),
        _ => Arc::new(move || {
            let c = Client::connect(&addr, cfg.clone()).context(what.clone())?;
            Ok(Box::new(KvBackend::new(c)) as Box<dyn Backend>)
        }),
    }
}

/// A client over a transport made here (the simulated verbs ones), connected before it is
/// returned.
#[cfg(feature = "rdma")]
fn sim_client<T: transports::Transport + 'static>(
    addr: &str,
    t: T,
    cfg: &ClientConfig,
) -> Result<Box<dyn Backend>> {
    let nexus: rpc::Nexus = rpc::Nexus::new("127.0.0.1:0", 0)?;
    let rpc = rpc::Rpc::new(&nexus, 0, t, (), cfg.rpc_config())?;
    let mut c = Client::start(nexus, rpc, addr, cfg.clone())?;
    let end = std::time::Instant::now() + cfg.connect_timeout * 2;
    while !c.poll_connect()? {
        anyhow::ensure!(std::time::Instant::now() < end, "connect timed out");
    }
    Ok(Box::new(KvBackend::new(c)))
}
