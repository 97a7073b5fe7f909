//! The server threads' datapath transports: what [`DataTransport`] gives each thread, made
//! before any thread starts (so a missing RDMA device fails the start at once, before the
//! data directory is opened), and how a thread's endpoint is described.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};

use transports::tcp::{TcpConfig, TcpTransport};
use transports::udp::{UdpConfig, UdpTransport};
use transports::Transport;

#[cfg(feature = "rdma")]
use transports::rdma::{
    ibv::IbvDevice,
    rc::{RcConfig, RcTransport},
    sim::{SimDevice, SimDeviceConfig},
    ud::{UdConfig, UdTransport},
    verbs::VerbsDevice,
};
#[cfg(feature = "rdma")]
use transports::TransportError;

use crate::config::{DataTransport, ServerConfig, ServerError};

/// What one server thread builds its transport from.
pub(crate) enum ThreadTransport {
    Udp(UdpConfig),
    Tcp(TcpConfig),
    #[cfg(feature = "rdma")]
    IbvUd(IbvDevice),
    #[cfg(feature = "rdma")]
    IbvRc(IbvDevice),
    #[cfg(feature = "rdma")]
    SimUd(SimDevice),
    #[cfg(feature = "rdma")]
    SimRc(SimDevice),
}

/// One transport description per thread of a server with `cfg`, whose threads' sockets bind
/// `listen`'s IP. RDMA devices are opened here, one context per thread.
pub(crate) fn thread_transports(
    cfg: &ServerConfig,
    listen: SocketAddr,
) -> Result<Vec<ThreadTransport>, ServerError> {
    let bind = SocketAddr::new(listen.ip(), 0);
    let each = |make: &mut dyn FnMut() -> Result<ThreadTransport, ServerError>| {
        (0..cfg.threads).map(|_| make()).collect()
    };
    match &cfg.transport {
        DataTransport::Udp => each(&mut || {
            Ok(ThreadTransport::Udp(UdpConfig {
                bind,
                gro: cfg.udp_gro,
                max_pkt_size: cfg.max_pkt_size,
                ..UdpConfig::default()
            }))
        }),
        DataTransport::Tcp => each(&mut || {
            Ok(ThreadTransport::Tcp(TcpConfig {
                bind,
                ..TcpConfig::default()
            }))
        }),
        #[cfg(feature = "rdma")]
        DataTransport::Ud { device } => {
            each(&mut || open_device("ud", device.as_deref()).map(ThreadTransport::IbvUd))
        }
        #[cfg(feature = "rdma")]
        DataTransport::Rc { device } => {
            each(&mut || open_device("rc", device.as_deref()).map(ThreadTransport::IbvRc))
        }
        #[cfg(feature = "rdma")]
        DataTransport::SimUd(fabric) => each(&mut || {
            Ok(ThreadTransport::SimUd(
                fabric.open_device(SimDeviceConfig::default()),
            ))
        }),
        #[cfg(feature = "rdma")]
        DataTransport::SimRc(fabric) => each(&mut || {
            Ok(ThreadTransport::SimRc(
                fabric.open_device(SimDeviceConfig::default()),
            ))
        }),
    }
}

/// Opens the RDMA device the `what` transport runs on, with an error that says what was
/// looked for and why it is not there.
#[cfg(feature = "rdma")]
fn open_device(what: &str, name: Option<&str>) -> Result<IbvDevice, ServerError> {
    IbvDevice::open(name).map_err(|e| {
        ServerError::Unavailable(format!("transport {what} needs an RDMA device: {e}"))
    })
}

#[cfg(feature = "rdma")]
pub(crate) fn ud<D: VerbsDevice>(dev: D) -> Result<UdTransport<D>, TransportError> {
    UdTransport::new(dev, UdConfig::default())
}

#[cfg(feature = "rdma")]
pub(crate) fn rc<D: VerbsDevice>(dev: D) -> Result<RcTransport<D>, TransportError> {
    RcTransport::new(dev, RcConfig::default())
}

/// What a server thread says about its data endpoint.
pub(crate) trait DataEndpoint: Transport {
    /// The socket address clients' packets arrive at (IP transports only).
    fn socket_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// A line for the log and the start-up banner.
    fn describe(&self) -> String;

    /// A descriptor that becomes readable when the transport has work (a packet, a
    /// connection), for a thread that sleeps in another poll (the RESP front-end's); `None`
    /// when the transport has none (the verbs ones: no completion channel).
    fn wake_fd(&self) -> Option<RawFd> {
        None
    }
}

impl DataEndpoint for UdpTransport {
    fn socket_addr(&self) -> Option<SocketAddr> {
        Some(self.local_addr())
    }

    fn describe(&self) -> String {
        format!("udp {}", self.local_addr())
    }

    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

impl DataEndpoint for TcpTransport {
    fn socket_addr(&self) -> Option<SocketAddr> {
        Some(self.local_addr())
    }

    fn describe(&self) -> String {
        format!("tcp {}", self.local_addr())
    }

    /// The transport's epoll instance: readable when any of its sockets is.
    fn wake_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }
}

#[cfg(feature = "rdma")]
impl<D: VerbsDevice> DataEndpoint for UdTransport<D> {
    fn describe(&self) -> String {
        format!(
            "ud device {} port {} QPN {:#x}",
            self.device().name(),
            self.port(),
            self.qp_num()
        )
    }
}

#[cfg(feature = "rdma")]
impl<D: VerbsDevice> DataEndpoint for RcTransport<D> {
    fn describe(&self) -> String {
        format!("rc device {} (one QP per session)", self.device().name())
    }
}
