//! The Nexus: one per process. Holds the request-handler table, the session-management
//! endpoint (and the thread that serves it, `sm_socket.rs`), and the background-handler
//! threads (`background.rs`).

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;

use crate::sm::SmAddr;
use crate::RpcError;

use super::background::{start_workers, BgJob};
use super::ctx::Ctx;
use super::handlers::{empty_table, Handler, HandlerTable, Request};
use super::sm_socket::{sm_loop, LocalHub, SmChannel, SmRouter};

struct Shared<S> {
    handlers: Mutex<HandlerTable<S>>,
    router: Arc<SmRouter>,
    uri: String,
    stop: Arc<AtomicBool>,
    sm_thread: Mutex<Option<JoinHandle<()>>>,
    bg_tx: Mutex<Option<Sender<BgJob>>>,
    bg_threads: Mutex<Vec<JoinHandle<()>>>,
    hub: Option<(LocalHub, u32)>,
}

impl<S> Drop for Shared<S> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = lock(&self.sm_thread).take() {
            let _ = t.join();
        }
        lock(&self.bg_tx).take();
        for t in lock(&self.bg_threads).drain(..) {
            let _ = t.join();
        }
        if let Some((hub, id)) = &self.hub {
            hub.detach(*id);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The per-process RPC object. `S` is the per-thread state type every Rpc of this Nexus owns
/// and hands to foreground handlers (use `()` if handlers need none).
///
/// Register handlers before creating Rpcs: each Rpc copies the table when it is created.
/// Cloning a `Nexus` gives another handle to the same Nexus; it shuts down (SM thread and
/// background threads joined) when the last handle and the last Rpc are gone.
pub struct Nexus<S = ()> {
    shared: Arc<Shared<S>>,
}

impl<S> Clone for Nexus<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

/// Capacity of the background job queue and of each Rpc's SM queue.
pub(crate) const QUEUE_CAP: usize = 4096;

impl<S: 'static> Nexus<S> {
    /// A Nexus whose session-management endpoint is a UDP socket bound to `sm_addr`
    /// (e.g. `"127.0.0.1:31850"`; port 0 picks a free port), with `bg_threads` threads for
    /// background handlers.
    pub fn new(sm_addr: &str, bg_threads: usize) -> Result<Self, RpcError> {
        let addr: SocketAddr = sm_addr
            .parse()
            .map_err(|_| RpcError::BadRemote(sm_addr.to_string()))?;
        let sock = UdpSocket::bind(addr)?;
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let local = sock.local_addr()?;
        let sock = Arc::new(sock);
        let router = Arc::new(SmRouter::new(SmChannel::Udp(sock.clone())));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let router = router.clone();
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("rpc-sm".into())
                .spawn(move || sm_loop(&sock, &router, &stop))?
        };
        let nexus = Self::build(router, local.to_string(), stop, None);
        *lock(&nexus.shared.sm_thread) = Some(thread);
        nexus.start_bg(bg_threads)?;
        Ok(nexus)
    }

    /// A Nexus attached to an in-process [`LocalHub`] under `name`; other Nexuses on the hub
    /// reach it as `local:NAME`. Delivery of SM messages is immediate and deterministic.
    pub fn new_local(hub: &LocalHub, name: &str, bg_threads: usize) -> Result<Self, RpcError> {
        let id = hub
            .attach(name)
            .ok_or_else(|| RpcError::Config(format!("name {name:?} already on the hub")))?;
        let router = Arc::new(SmRouter::new(SmChannel::Local(hub.clone(), id)));
        hub.set_router(id, &router);
        let nexus = Self::build(
            router,
            format!("local:{name}"),
            Arc::new(AtomicBool::new(false)),
            Some((hub.clone(), id)),
        );
        nexus.start_bg(bg_threads)?;
        Ok(nexus)
    }

    fn build(
        router: Arc<SmRouter>,
        uri: String,
        stop: Arc<AtomicBool>,
        hub: Option<(LocalHub, u32)>,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                handlers: Mutex::new(empty_table()),
                router,
                uri,
                stop,
                sm_thread: Mutex::new(None),
                bg_tx: Mutex::new(None),
                bg_threads: Mutex::new(Vec::new()),
                hub,
            }),
        }
    }

    fn start_bg(&self, n: usize) -> Result<(), RpcError> {
        if n == 0 {
            return Ok(());
        }
        let (tx, rx) = crossbeam_channel::bounded::<BgJob>(QUEUE_CAP);
        lock(&self.shared.bg_threads).extend(start_workers(n, &rx)?);
        *lock(&self.shared.bg_tx) = Some(tx);
        Ok(())
    }

    /// The URI other processes use to reach this Nexus (`host:port` or `local:NAME`).
    pub fn uri(&self) -> &str {
        &self.shared.uri
    }

    /// Registers a foreground handler for `req_type`. Fails if one is already registered.
    ///
    /// The handler gets the Rpc's state, its [`Ctx`] (to respond, allocate buffers, issue
    /// requests) and the [`Request`]. It may respond before returning, or keep
    /// `req.handle` and respond later from the same thread.
    pub fn register<F>(&self, req_type: u8, f: F) -> Result<(), RpcError>
    where
        F: Fn(&mut S, &mut Ctx, Request<'_>) + Send + Sync + 'static,
    {
        self.set_handler(req_type, Handler::Foreground(Arc::new(f)))
    }

    /// Registers a background handler for `req_type`: it runs on one of the Nexus's
    /// background threads (the Nexus must have been created with at least one) and returns
    /// the response bytes.
    pub fn register_background<F>(&self, req_type: u8, f: F) -> Result<(), RpcError>
    where
        F: Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static,
    {
        if lock(&self.shared.bg_tx).is_none() {
            return Err(RpcError::Config(
                "background handlers need a Nexus with background threads".into(),
            ));
        }
        self.set_handler(req_type, Handler::Background(Arc::new(f)))
    }

    fn set_handler(&self, req_type: u8, h: Handler<S>) -> Result<(), RpcError> {
        let mut t = lock(&self.shared.handlers);
        match t.get_mut(usize::from(req_type)) {
            Some(slot @ None) => {
                *slot = Some(h);
                Ok(())
            }
            _ => Err(RpcError::Config(format!(
                "a handler for request type {req_type} is already registered"
            ))),
        }
    }
}

impl<S> Nexus<S> {
    pub(crate) fn handlers(&self) -> HandlerTable<S> {
        lock(&self.shared.handlers).clone()
    }

    pub(crate) fn router(&self) -> &Arc<SmRouter> {
        &self.shared.router
    }

    pub(crate) fn bg_sender(&self) -> Option<Sender<BgJob>> {
        lock(&self.shared.bg_tx).clone()
    }

    /// Resolves a remote Nexus URI to an SM address.
    pub(crate) fn resolve_uri(&self, uri: &str) -> Option<SmAddr> {
        self.shared.router.channel().resolve_uri(uri)
    }

    /// SM messages this Nexus dropped (malformed, or an Rpc's queue was full).
    pub fn sm_dropped(&self) -> u64 {
        self.shared.router.dropped()
    }
}
