//! The SM socket: how a Nexus sends and receives session-management messages, and the router
//! that hands them to its Rpcs.
//!
//! With a UDP Nexus, SM messages are single 128-byte datagrams between Nexus SM sockets: the
//! `rpc-sm` thread receives them ([`sm_loop`]) and routes them; Rpcs send on the shared socket.
//! With a [`LocalHub`], delivery is a synchronous in-process call to the destination Nexus's
//! router. The router parses each message, answers liveness pings itself (from the
//! [`LiveTable`]), answers connect and disconnect requests for Rpc ids that do not exist, and
//! hands everything else to the addressed Rpc's bounded queue.

use std::collections::HashMap;
use std::net::{ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};

use crate::sm::{SmAddr, SmMsg, SmStatus, SmType};

use super::liveness::LiveTable;

/// An SM message with its sender.
#[derive(Clone, Debug)]
pub(crate) struct SmIn {
    /// Who sent it (where to reply).
    pub from: SmAddr,
    /// The message.
    pub msg: SmMsg,
}

/// Routes incoming SM messages of one Nexus to its Rpcs.
pub(crate) struct SmRouter {
    rpcs: Mutex<HashMap<u8, Sender<SmIn>>>,
    /// The live session ends of this Nexus's Rpcs, which pings are answered from.
    live: LiveTable,
    channel: SmChannel,
    dropped: std::sync::atomic::AtomicU64,
}

impl SmRouter {
    pub(crate) fn new(channel: SmChannel) -> Self {
        Self {
            rpcs: Mutex::new(HashMap::new()),
            live: LiveTable::default(),
            channel,
            dropped: Default::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u8, Sender<SmIn>>> {
        self.rpcs.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn channel(&self) -> &SmChannel {
        &self.channel
    }

    /// Registers an Rpc's SM queue; false if the id is taken.
    pub(crate) fn register(&self, rpc_id: u8, tx: Sender<SmIn>) -> bool {
        let mut m = self.lock();
        if m.contains_key(&rpc_id) {
            return false;
        }
        m.insert(rpc_id, tx);
        true
    }

    pub(crate) fn unregister(&self, rpc_id: u8) {
        self.lock().remove(&rpc_id);
        self.live.forget_rpc(rpc_id);
    }

    /// The live session ends this router answers pings from.
    pub(crate) fn live(&self) -> &LiveTable {
        &self.live
    }

    /// SM messages dropped (malformed, or the Rpc's queue was full).
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Handles raw bytes that arrived from `from`.
    pub(crate) fn route(&self, from: SmAddr, bytes: &[u8]) {
        let msg = match SmMsg::parse(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(?from, error = %e, "dropping malformed SM message");
                return;
            }
        };
        if matches!(msg.msg_type, SmType::ClientPing | SmType::ServerPing) {
            self.answer_ping(&from, &msg);
            return;
        }
        let tx = self.lock().get(&msg.dest_rpc()).cloned();
        match tx {
            Some(tx) => match tx.try_send(SmIn { from, msg }) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    self.dropped
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            },
            None => match msg.msg_type {
                // The addressed Rpc does not exist (any more): say so, so that a peer of a
                // dead Rpc learns it at once instead of waiting for its failure timeout.
                SmType::ConnectReq => {
                    self.channel.send(&from, &msg.reply(SmStatus::NoSuchRpc));
                }
                SmType::DisconnectReq => {
                    self.channel
                        .send(&from, &msg.reply(SmStatus::InvalidSession));
                }
                _ => {}
            },
        }
    }
}

impl SmRouter {
    /// Answers a liveness ping on behalf of this Nexus's Rpcs.
    fn answer_ping(&self, from: &SmAddr, msg: &SmMsg) {
        let (rpc, _, _) = crate::proto::ping_target(msg);
        let exists = self.lock().contains_key(&rpc);
        self.channel.send(from, &self.live.answer(msg, exists));
    }
}

/// How a Nexus sends SM messages.
#[derive(Clone)]
pub(crate) enum SmChannel {
    /// The Nexus's UDP SM socket.
    Udp(Arc<UdpSocket>),
    /// A local hub, with this Nexus's id in it.
    Local(LocalHub, u32),
}

impl SmChannel {
    /// Sends `msg` to `to`; failures are logged (the sender retries).
    pub(crate) fn send(&self, to: &SmAddr, msg: &SmMsg) {
        let bytes = msg.encode();
        match (self, to) {
            (SmChannel::Udp(sock), SmAddr::Udp(addr)) => {
                if let Err(e) = sock.send_to(&bytes, addr) {
                    tracing::debug!(%addr, error = %e, "SM send failed");
                }
            }
            (SmChannel::Local(hub, me), SmAddr::Local(id)) => hub.deliver(*me, *id, &bytes),
            _ => tracing::debug!(?to, "SM address of the wrong kind"),
        }
    }

    /// Parses a remote Nexus URI (`host:port` for UDP, `local:NAME` for a hub).
    pub(crate) fn resolve_uri(&self, uri: &str) -> Option<SmAddr> {
        match self {
            SmChannel::Local(hub, _) => {
                let name = uri.strip_prefix("local:")?;
                hub.lookup(name).map(SmAddr::Local)
            }
            SmChannel::Udp(_) => {
                let mut addrs = uri.to_socket_addrs().ok()?;
                addrs.next().map(SmAddr::Udp)
            }
        }
    }
}

#[derive(Default)]
struct HubInner {
    next: u32,
    names: HashMap<String, u32>,
    routers: HashMap<u32, Weak<SmRouter>>,
}

/// An in-process SM network: Nexuses attached to the same hub reach each other by name
/// (`local:NAME`) with immediate, deterministic delivery.
#[derive(Clone, Default)]
pub struct LocalHub {
    inner: Arc<Mutex<HubInner>>,
}

impl LocalHub {
    /// A new, empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, HubInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn attach(&self, name: &str) -> Option<u32> {
        let mut h = self.lock();
        if h.names.contains_key(name) {
            return None;
        }
        h.next += 1;
        let id = h.next;
        h.names.insert(name.to_string(), id);
        Some(id)
    }

    pub(crate) fn set_router(&self, id: u32, router: &Arc<SmRouter>) {
        self.lock().routers.insert(id, Arc::downgrade(router));
    }

    pub(crate) fn detach(&self, id: u32) {
        let mut h = self.lock();
        h.routers.remove(&id);
        h.names.retain(|_, v| *v != id);
    }

    fn lookup(&self, name: &str) -> Option<u32> {
        self.lock().names.get(name).copied()
    }

    fn deliver(&self, from: u32, to: u32, bytes: &[u8]) {
        let router = self.lock().routers.get(&to).and_then(Weak::upgrade);
        if let Some(r) = router {
            r.route(SmAddr::Local(from), bytes);
        }
    }
}

/// The `rpc-sm` thread of a UDP Nexus: receives SM datagrams and routes them until `stop`.
pub(crate) fn sm_loop(sock: &UdpSocket, router: &SmRouter, stop: &AtomicBool) {
    let mut buf = [0u8; 512];
    while !stop.load(Ordering::Acquire) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => router.route(SmAddr::Udp(from), buf.get(..n).unwrap_or(&[])),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => {
                tracing::warn!(error = %e, "SM socket error");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
