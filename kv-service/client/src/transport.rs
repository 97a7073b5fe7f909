//! Connecting over each transport: [`Client::connect`] (UDP), [`Client::connect_tcp`],
//! [`Client::connect_ud`] and [`Client::connect_rc`] (feature `rdma`, on a real RDMA device),
//! and [`Client::connect_with`] for a transport chosen at run time ([`ClientTransport`], as
//! `kv-cli --transport` does). The server must run the same transport (`kv-service
//! --transport`); a mismatch fails the connect with `TransportMismatch`. Session management is
//! UDP to the server's listen address whatever the datapath.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use rpc::{Nexus, Rpc};
use transports::tcp::{TcpConfig, TcpTransport};
use transports::udp::{UdpConfig, UdpTransport};
use transports::{Transport, TransportError};

#[cfg(feature = "rdma")]
use transports::rdma::{
    ibv::IbvDevice,
    rc::{RcConfig, RcTransport},
    ud::{UdConfig, UdTransport},
};

use crate::{local_ip_for, Client, ClientConfig, Error, DEFAULT_RX_RING};

/// A transport chosen at run time, for [`Client::connect_with`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClientTransport {
    /// Kernel UDP (the default; what [`Client::connect`] uses).
    #[default]
    Udp,
    /// Kernel TCP ([`Client::connect_tcp`]).
    Tcp,
    /// InfiniBand/RoCE unreliable datagrams on RDMA device `device` (`None`: the first).
    #[cfg(feature = "rdma")]
    Ud {
        /// The device name (`ibv_devices`).
        device: Option<String>,
    },
    /// InfiniBand/RoCE reliable connections on RDMA device `device` (`None`: the first).
    #[cfg(feature = "rdma")]
    Rc {
        /// The device name (`ibv_devices`).
        device: Option<String>,
    },
}

/// A transport of any kind behind one type: what [`Client::connect_with`] gives (the cost is
/// one indirect call per transport call, not per packet).
pub type AnyTransport = Box<dyn Transport + Send>;

/// Makes a client's transport: (local IP to bind, server address, config, receive ring in
/// packets).
type Make<'a, T> = dyn Fn(IpAddr, SocketAddr, &ClientConfig, usize) -> Result<T, Error> + 'a;

/// Connects to the server at `addr` over transports that `make` makes: asks thread 0 for the
/// server's layout, then opens a session to every thread. With `cfg.rx_ring_size` unset, a
/// server with too many threads for the default ring gets a second endpoint (rpc id 1 of the
/// same Nexus) with a ring sized for it. Blocks until connected.
pub(crate) fn connect_over<T: Transport>(
    addr: &str,
    cfg: ClientConfig,
    make: &Make<'_, T>,
) -> Result<Client<T>, Error> {
    let server = addr
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| Error::BadAddress(addr.to_string()))?;
    let local_ip = local_ip_for(server).map_err(|_| Error::BadAddress(addr.to_string()))?;
    let nexus: Nexus = Nexus::new(&SocketAddr::new(local_ip, 0).to_string(), 0)?;
    let open = |nexus: &Nexus, id: u8, cfg: &ClientConfig, ring: usize| {
        let t = make(local_ip, server, cfg, ring)?;
        Ok::<_, Error>(Rpc::new(nexus, id, t, (), ClientConfig::rpc_config(cfg))?)
    };
    let ring = cfg.rx_ring_size.unwrap_or(DEFAULT_RX_RING);
    let rpc = open(&nexus, 0, &cfg, ring)?;
    let auto_ring = cfg.rx_ring_size.is_none();
    let mut client = Client::start_inner(nexus, rpc, &server.to_string(), cfg, auto_ring)?;
    match client.block_until_connected()? {
        None => Ok(client),
        Some(need) => {
            // Too many server threads for the default ring: reopen the endpoint (as rpc id
            // 1 of the same Nexus, the old one still exists) with a ring that holds them all.
            let nexus = client.nexus.clone();
            let cfg = client.cfg.clone();
            let s0 = client.sessions.first().copied();
            if let Some(s0) = s0 {
                let _ = client.rpc.disconnect(s0);
            }
            let rpc = open(&nexus, 1, &cfg, need)?;
            drop(client);
            let mut client = Client::start_inner(nexus, rpc, &server.to_string(), cfg, false)?;
            client.block_until_connected()?;
            Ok(client)
        }
    }
}

/// The client's UDP socket on `local_ip`, packets sized from the path MTU toward the server
/// unless `cfg.max_pkt_size` says.
pub(crate) fn udp(
    local_ip: IpAddr,
    server: SocketAddr,
    cfg: &ClientConfig,
    ring: usize,
) -> Result<UdpTransport, Error> {
    UdpTransport::new(UdpConfig {
        bind: SocketAddr::new(local_ip, 0),
        gro: cfg.udp_gro,
        max_pkt_size: cfg
            .max_pkt_size
            .unwrap_or_else(|| transports::udp::max_pkt_size_toward(server.ip())),
        rx_ring_size: ring,
        ..UdpConfig::default()
    })
    .map_err(setup("udp"))
}

/// The client's TCP endpoint: listening on `local_ip` (a port the kernel picks; its address
/// is the routing info the server gets), packets of `cfg.max_pkt_size` or 8 KiB.
fn tcp(
    local_ip: IpAddr,
    _server: SocketAddr,
    cfg: &ClientConfig,
    ring: usize,
) -> Result<TcpTransport, Error> {
    let defaults = TcpConfig::default();
    TcpTransport::new(TcpConfig {
        bind: SocketAddr::new(local_ip, 0),
        max_pkt_size: cfg.max_pkt_size.unwrap_or(defaults.max_pkt_size),
        rx_ring_size: ring,
        ..defaults
    })
    .map_err(setup("tcp"))
}

/// The error for a `kind` transport that could not be made.
fn setup(kind: &'static str) -> impl FnOnce(TransportError) -> Error {
    move |e| Error::Transport {
        kind,
        reason: e.to_string(),
    }
}

/// Opens the RDMA device `name` for the `kind` transport; the error names what was looked
/// for and why it is not there.
#[cfg(feature = "rdma")]
fn open_device(kind: &'static str, name: Option<&str>) -> Result<IbvDevice, Error> {
    IbvDevice::open(name).map_err(|e| {
        setup(kind)(TransportError::Unavailable(format!(
            "it needs an RDMA device: {e}"
        )))
    })
}

/// A UD transport on RDMA device `device`.
#[cfg(feature = "rdma")]
fn ud(
    device: Option<&str>,
) -> impl Fn(IpAddr, SocketAddr, &ClientConfig, usize) -> Result<UdTransport<IbvDevice>, Error> + '_
{
    move |_ip, _server, cfg, ring| {
        UdTransport::new(
            open_device("ud", device)?,
            UdConfig {
                max_pkt_size: cfg.max_pkt_size,
                rx_ring_size: ring.max(64),
                ..UdConfig::default()
            },
        )
        .map_err(setup("ud"))
    }
}

/// An RC transport on RDMA device `device`.
#[cfg(feature = "rdma")]
fn rc(
    device: Option<&str>,
) -> impl Fn(IpAddr, SocketAddr, &ClientConfig, usize) -> Result<RcTransport<IbvDevice>, Error> + '_
{
    move |_ip, _server, cfg, ring| {
        let defaults = RcConfig::default();
        RcTransport::new(
            open_device("rc", device)?,
            RcConfig {
                max_pkt_size: cfg.max_pkt_size.unwrap_or(defaults.max_pkt_size),
                rx_ring_size: ring.max(64),
                ..defaults
            },
        )
        .map_err(setup("rc"))
    }
}

/// `make` with its transport boxed.
fn boxed<'a, T: Transport + Send + 'static>(
    make: impl Fn(IpAddr, SocketAddr, &ClientConfig, usize) -> Result<T, Error> + 'a,
) -> impl Fn(IpAddr, SocketAddr, &ClientConfig, usize) -> Result<AnyTransport, Error> + 'a {
    move |ip, server, cfg, ring| Ok(Box::new(make(ip, server, cfg, ring)?) as AnyTransport)
}

impl Client<TcpTransport> {
    /// Connects to the server whose listen (session-management) address is `addr` over TCP
    /// (the server runs `kv-service --transport tcp`): one connection to each server thread,
    /// no rpc retransmission, and a server that dies is noticed as soon as its connections
    /// close. Blocks until connected, like [`Client::connect`].
    pub fn connect_tcp(addr: &str, cfg: ClientConfig) -> Result<Self, Error> {
        connect_over(addr, cfg, &tcp)
    }
}

#[cfg(feature = "rdma")]
impl Client<UdTransport<IbvDevice>> {
    /// Connects over InfiniBand/RoCE UD on RDMA device `device` (`None`: the first); fails at
    /// once, naming the device looked for, when there is none.
    pub fn connect_ud(addr: &str, device: Option<&str>, cfg: ClientConfig) -> Result<Self, Error> {
        connect_over(addr, cfg, &ud(device))
    }
}

#[cfg(feature = "rdma")]
impl Client<RcTransport<IbvDevice>> {
    /// Connects over InfiniBand/RoCE RC (one queue pair per server thread) on RDMA device
    /// `device` (`None`: the first); fails at once, naming the device looked for, when there
    /// is none.
    pub fn connect_rc(addr: &str, device: Option<&str>, cfg: ClientConfig) -> Result<Self, Error> {
        connect_over(addr, cfg, &rc(device))
    }
}

impl Client<AnyTransport> {
    /// Connects over `transport`, chosen at run time.
    pub fn connect_with(
        addr: &str,
        transport: &ClientTransport,
        cfg: ClientConfig,
    ) -> Result<Self, Error> {
        match transport {
            ClientTransport::Udp => connect_over(addr, cfg, &boxed(udp)),
            ClientTransport::Tcp => connect_over(addr, cfg, &boxed(tcp)),
            #[cfg(feature = "rdma")]
            ClientTransport::Ud { device } => {
                connect_over(addr, cfg, &boxed(ud(device.as_deref())))
            }
            #[cfg(feature = "rdma")]
            ClientTransport::Rc { device } => {
                connect_over(addr, cfg, &boxed(rc(device.as_deref())))
            }
        }
    }
}
