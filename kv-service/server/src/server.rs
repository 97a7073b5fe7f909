//! The KV server: W shared-nothing threads, thread `i` owning rpc endpoint `i` (its own UDP
//! socket — or TCP listener, or verbs queue pairs: [`DataTransport`](crate::DataTransport))
//! and engine worker `i` (the partition of keys with `fnv1a64(key) mod W == i`).
//!
//! Each OS thread drives one [`ServerThread`]: its `step` runs the Rpc event loop once
//! (receive, run handlers, transmit), the mail from sibling threads, and the engine worker
//! (reap I/O, run operations, submit the next I/O batch), then answers every finished
//! operation through the kept request handle. A request goes from the network to the disk
//! and back without leaving its thread.
//!
//! - **Wrong thread.** A GET / PUT / DELETE whose key belongs to another thread is
//!   *forwarded* in process to the owning thread's mailbox, and the answer relayed. The client
//!   gets the correct answer either way; the client library routes keys itself, so forwarding
//!   only happens for clients that do not.
//! - **SCAN** is per partition: thread `i` answers with worker `i`'s items. The client fans
//!   a scan out to every thread and merges (`kv_client::Client::scan`).
//! - **Writes** are answered only once the engine acknowledged them.
//! - **Idle behaviour** ([`IdleMode`]): spin while busy, sleep in the socket's wait after a
//!   quiet spell, or spin always.
//! - **Shutdown** ([`Server::shutdown`], or the stop flag from [`Server::stop_flag`] set by
//!   a signal handler): each thread answers new requests with
//!   [`Status::ShuttingDown`], finishes the operations
//!   it holds and sends their responses; when every thread is drained they linger briefly (to
//!   answer retransmissions) and exit, closing the engine's files.
//!
//! ```
//! use kv_service::{Server, ServerConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let server = Server::start(ServerConfig {
//!     listen: "127.0.0.1:0".into(),
//!     data_dir: dir.path().to_path_buf(),
//!     threads: 2,
//!     ..ServerConfig::default()
//! })?;
//! println!("listening on {}", server.listen_addr());
//! server.shutdown()?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use kv_engine::{self as engine, DiskBackend, EngineConfig, RecoveryStats};
use rpc::{Nexus, RpcConfig};
use transports::TransportError;

use crate::config::{IdleMode, ServerConfig, ServerError};
use crate::data::{thread_transports, DataEndpoint, ThreadTransport};
use crate::forward::Post;
use crate::resp::{self, RespFront, RespShared};
use crate::resp_ops::Board;
use crate::state::ServerState;
use crate::thread::{register_handlers, Phase, ServerThread, Shutdown};

/// A running server. Dropping it shuts it down (like [`Server::shutdown`], ignoring errors).
pub struct Server {
    listen: SocketAddr,
    resp_addr: Option<SocketAddr>,
    data_addrs: Vec<SocketAddr>,
    data_endpoints: Vec<String>,
    recovery: RecoveryStats,
    backend: &'static str,
    shutdown: Arc<Shutdown>,
    threads: Vec<JoinHandle<Result<(), ServerError>>>,
}

/// What each OS thread needs to build its server thread.
struct ThreadArgs {
    nexus: Nexus<ServerState>,
    router: kv_engine::KeyRouter,
    worker: kv_engine::Worker,
    post: Post,
    rpc: RpcConfig,
    idle: IdleMode,
    shutdown: Arc<Shutdown>,
    ready: std::sync::mpsc::Sender<(usize, Result<Ready, String>)>,
    resp: Option<ThreadResp>,
    /// Cluster mode: the thread's replicas.
    replicas: Option<crate::cluster::Replicas>,
}

/// A thread's part of the RESP front-end: its listener and what the threads share.
struct ThreadResp {
    listener: std::net::TcpListener,
    shared: Arc<RespShared>,
    board: Arc<Board>,
}

/// Binds one RESP listener per thread on the same address (`SO_REUSEPORT`: the kernel
/// spreads the connections over them). Port 0 is resolved by the first.
fn bind_resp(
    cfg: &crate::resp::RespConfig,
    threads: usize,
) -> Result<(SocketAddr, Vec<std::net::TcpListener>), ServerError> {
    let err = |addr, source| ServerError::Resp { addr, source };
    let first = resp::bind_listener(cfg.listen).map_err(|e| err(cfg.listen, e))?;
    let addr = first.local_addr().map_err(|e| err(cfg.listen, e))?;
    let mut all = vec![first];
    for _ in 1..threads {
        all.push(resp::bind_listener(addr).map_err(|e| err(addr, e))?);
    }
    Ok((addr, all))
}

/// What a thread reports once it serves: its data socket (IP transports) and a description.
type Ready = (Option<SocketAddr>, String);

impl Server {
    /// Opens the data directory (running recovery), binds the listen address and starts the
    /// threads. Returns once every thread serves.
    pub fn start(mut cfg: ServerConfig) -> Result<Server, ServerError> {
        if let Some(c) = &cfg.cluster {
            let node = c.cluster.node(c.node).ok_or_else(|| {
                ServerError::Config(format!("node {} is not in the cluster file", c.node))
            })?;
            cfg.listen = node.addr.to_string();
            cfg.threads = c.cluster.threads();
            crate::cluster::check_data_dir(&cfg.data_dir, c)?;
        }
        let w = cfg.threads;
        if w == 0 || w > 255 {
            return Err(ServerError::Config(format!(
                "threads must be 1..=255, got {w}"
            )));
        }
        let listen: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|_| ServerError::Config(format!("bad listen address {:?}", cfg.listen)))?;
        if listen.ip().is_unspecified() {
            return Err(ServerError::Config(format!(
                "listen address {listen} must be a concrete IP (clients are told the data \
                 sockets' addresses, which take this IP)"
            )));
        }
        // Before the data directory: a transport that cannot be had (no RDMA device) fails
        // the start at once.
        let transports = thread_transports(&cfg, listen)?;
        let engine_cfg = EngineConfig {
            workers: w,
            cache_bytes: cfg.cache_bytes,
            durability: cfg.durability,
            reorg_batch: cfg.reorg_batch,
            ..EngineConfig::default()
        };
        let opened =
            engine::open_workers(&cfg.data_dir, &engine_cfg).map_err(|e| ServerError::Engine {
                dir: cfg.data_dir.clone(),
                source: e,
            })?;
        let backend = opened.workers.first().map_or("", |w| w.stats().backend);
        let nexus: Nexus<ServerState> = Nexus::new(&listen.to_string(), 0)?;
        register_handlers(&nexus)?;
        let sm_addr: SocketAddr = nexus
            .uri()
            .parse()
            .map_err(|_| ServerError::Config(format!("unexpected nexus uri {}", nexus.uri())))?;
        let shutdown = Shutdown::new(w, cfg.drain_timeout);
        let rpc_cfg = RpcConfig {
            busy_poll: cfg.idle == IdleMode::BusyPoll,
            ..RpcConfig::default()
        };
        let mut resp_addr = None;
        let mut resp_parts: Vec<Option<ThreadResp>> = (0..w).map(|_| None).collect();
        if let Some(rc) = &cfg.resp {
            let (addr, listeners) = bind_resp(rc, w)?;
            resp_addr = Some(addr);
            let facts = kv_resp::ServerFacts {
                tcp_port: addr.port(),
                threads: w,
                data_dir: cfg.data_dir.display().to_string(),
                sync_writes: cfg.durability == engine::Durability::Sync,
                // Page: in place with O_DIRECT, no fsync (survives a process crash, as
                // Redis's `no` does); periodic: flushed within the interval, as `everysec`.
                appendfsync: match cfg.durability {
                    engine::Durability::Sync => "always",
                    engine::Durability::Periodic { .. } => "everysec",
                    engine::Durability::Page => "no",
                },
                io_backend: backend.to_string(),
                ..kv_resp::ServerFacts::default()
            };
            let shared = RespShared::new(rc, facts);
            let board = Board::new(w);
            for (slot, listener) in resp_parts.iter_mut().zip(listeners) {
                *slot = Some(ThreadResp {
                    listener,
                    shared: shared.clone(),
                    board: board.clone(),
                });
            }
        }
        let mut replicas: Vec<Option<crate::cluster::Replicas>> = Vec::with_capacity(w);
        for i in 0..w {
            replicas.push(match &cfg.cluster {
                Some(c) => Some(crate::cluster::Replicas::open(&cfg.data_dir, c, i)?),
                None => None,
            });
        }
        let mut replicas = replicas.into_iter();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let mut threads = Vec::with_capacity(w);
        let router = opened.router;
        let parts = opened
            .workers
            .into_iter()
            .zip(Post::mesh(w))
            .zip(transports)
            .zip(resp_parts);
        for (((worker, post), transport), resp) in parts {
            let id = worker.id();
            let args = ThreadArgs {
                nexus: nexus.clone(),
                router,
                worker,
                post,
                rpc: rpc_cfg.clone(),
                idle: cfg.idle,
                shutdown: shutdown.clone(),
                ready: ready_tx.clone(),
                resp,
                replicas: replicas.next().flatten(),
            };
            let spawned = std::thread::Builder::new()
                .name(format!("kv-{id}"))
                .spawn(move || {
                    let shutdown = args.shutdown.clone();
                    let r = thread_main(id, args, transport);
                    if let Err(e) = &r {
                        tracing::error!(thread = id, error = %e, "server thread failed");
                        shutdown.stop();
                    }
                    r
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    shutdown.stop();
                    // This thread and the ones after it never run.
                    for _ in threads.len()..w {
                        shutdown.drained_one();
                    }
                    for t in threads {
                        let _ = t.join();
                    }
                    return Err(ServerError::Io(e));
                }
            }
        }
        drop(ready_tx);
        let mut data: Vec<Ready> = vec![(None, String::new()); w];
        let mut failure = None;
        for _ in 0..w {
            match ready_rx.recv() {
                Ok((id, Ok(ready))) => {
                    if let Some(slot) = data.get_mut(id) {
                        *slot = ready;
                    }
                }
                Ok((id, Err(e))) => {
                    failure = Some(ServerError::Thread {
                        thread: id,
                        reason: e,
                    });
                }
                Err(_) => {
                    failure.get_or_insert(ServerError::Thread {
                        thread: 0,
                        reason: "a thread exited during start".into(),
                    });
                    break;
                }
            }
        }
        let server = Server {
            listen: sm_addr,
            resp_addr,
            data_addrs: data.iter().filter_map(|d| d.0).collect(),
            data_endpoints: data.into_iter().map(|d| d.1).collect(),
            recovery: opened.recovery,
            backend,
            shutdown,
            threads,
        };
        match failure {
            Some(e) => {
                let _ = server.shutdown();
                Err(e)
            }
            None => Ok(server),
        }
    }

    /// The session-management address clients connect to.
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The RESP address (every thread listens on it), when the server speaks RESP.
    pub fn resp_addr(&self) -> Option<SocketAddr> {
        self.resp_addr
    }

    /// The data socket address of each thread (thread `i` at index `i`) on the IP
    /// transports (UDP socket, TCP listener); empty on the verbs transports.
    pub fn data_addrs(&self) -> &[SocketAddr] {
        &self.data_addrs
    }

    /// Each thread's data endpoint described for people (`"udp 127.0.0.1:40000"`, `"tcp
    /// ..."`, `"ud device mlx5_0 port 1 QPN 0x1a"`, ...), thread `i` at index `i`.
    pub fn data_endpoints(&self) -> &[String] {
        &self.data_endpoints
    }

    /// What the engine's recovery found at start.
    pub fn recovery(&self) -> RecoveryStats {
        self.recovery
    }

    /// The engine's block I/O (`"io_uring"`, or `"pread/pwrite"` where io_uring is
    /// unavailable).
    pub fn io_backend(&self) -> &'static str {
        self.backend
    }

    /// The flag that stops the server when set (e.g. from a signal handler).
    pub fn stop_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.flag()
    }

    /// Waits until the server stops (after the stop flag is set, or a thread failed).
    pub fn wait(mut self) -> Result<(), ServerError> {
        self.join_all()
    }

    /// Stops the server gracefully and waits for it: new requests get
    /// SHUTTING_DOWN, the ones in flight are finished and answered, the engine is closed.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.shutdown.stop();
        self.join_all()
    }

    fn join_all(&mut self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (i, t) in self.threads.drain(..).enumerate() {
            let r = match t.join() {
                Ok(r) => r,
                Err(_) => Err(ServerError::Thread {
                    thread: i,
                    reason: "panicked".into(),
                }),
            };
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown.stop();
        let _ = self.join_all();
    }
}

/// An OS thread of the server: makes its transport and runs [`serve`] on it.
fn thread_main(id: usize, a: ThreadArgs, transport: ThreadTransport) -> Result<(), ServerError> {
    use transports::tcp::TcpTransport;
    use transports::udp::UdpTransport;
    match transport {
        ThreadTransport::Udp(c) => serve(id, a, UdpTransport::new(c)),
        ThreadTransport::Tcp(c) => serve(id, a, TcpTransport::new(c)),
        #[cfg(feature = "rdma")]
        ThreadTransport::IbvUd(dev) => serve(id, a, crate::data::ud(dev)),
        #[cfg(feature = "rdma")]
        ThreadTransport::IbvRc(dev) => serve(id, a, crate::data::rc(dev)),
        #[cfg(feature = "rdma")]
        ThreadTransport::SimUd(dev) => serve(id, a, crate::data::ud(dev)),
        #[cfg(feature = "rdma")]
        ThreadTransport::SimRc(dev) => serve(id, a, crate::data::rc(dev)),
    }
}

/// Builds the thread's [`ServerThread`] on `transport`, then steps it until it stops,
/// sleeping in the transport's wait when idle (per [`IdleMode`]).
fn serve<T: DataEndpoint>(
    id: usize,
    a: ThreadArgs,
    transport: Result<T, TransportError>,
) -> Result<(), ServerError> {
    let made = transport.map_err(ServerError::from).and_then(|t| {
        ServerThread::<T, DiskBackend>::new(
            &a.nexus,
            a.router,
            a.worker,
            a.post,
            t,
            &a.rpc,
            a.shutdown.clone(),
        )
    });
    let made = made.and_then(|mut t| {
        if let Some(r) = a.resp {
            let front = RespFront::new(r.listener, r.shared)?;
            // The thread sleeps in the front-end's poll: the data transport's descriptor (if
            // it has one) wakes it there too.
            if let Some(fd) = t.rpc().transport().wake_fd() {
                front.watch_fd(fd)?;
            }
            t.attach_resp(front, r.board);
        }
        Ok(t)
    });
    let mut t = match made {
        Ok(t) => t,
        Err(e) => {
            a.shutdown.drained_one();
            let _ = a.ready.send((id, Err(e.to_string())));
            return Err(e);
        }
    };
    let cluster_mode = a.replicas.is_some();
    if let Some(r) = a.replicas {
        t.attach_cluster(r);
    }
    let endpoint = t.rpc().transport().describe();
    tracing::debug!(thread = id, endpoint = %endpoint, "serving");
    let _ = a
        .ready
        .send((id, Ok((t.rpc().transport().socket_addr(), endpoint))));
    drop(a.ready);
    let spin_ns = match a.idle {
        IdleMode::SpinThenSleep { spin } => {
            Some(u64::try_from(spin.as_nanos()).unwrap_or(u64::MAX))
        }
        IdleMode::BusyPoll => None,
    };
    let stop = a.shutdown.flag();
    let mut last_work = t.now_ns();
    loop {
        let now = t.now_ns();
        if t.step(now) {
            last_work = now;
        }
        if t.phase() == Phase::Stopped {
            break;
        }
        let Some(spin_ns) = spin_ns else {
            continue;
        };
        if t.phase() == Phase::Serving
            && !t.busy()
            && !t.engine_pending()
            && now.saturating_sub(last_work) >= spin_ns
        {
            // Nothing for a while: sleep in the socket's wait (at most 1 ms at a time, so mail
            // from a sibling thread waits at most that long) until there is work. With a RESP
            // front-end, its poll is that one place (the data transport's descriptor is in its
            // epoll set); a transport without one (verbs: no completion channel) naps as its
            // own wait would.
            let nap = if t.rpc().transport().wake_fd().is_some() {
                Duration::from_millis(1)
            } else {
                Duration::from_micros(20)
            };
            if let Some(front) = t.resp_mut() {
                front.wait(nap, now);
                continue;
            }
            let woke = t.rpc_mut().run_until(
                |r| {
                    let st = r.state();
                    st.worker.pending() > 0
                        || st.post.has_mail()
                        || st.cluster.as_ref().is_some_and(|c| c.wants_step())
                        // Answers to Raft requests carry the peers' messages.
                        || (cluster_mode && r.has_completions())
                        || stop.load(Ordering::Relaxed)
                },
                // Cluster mode: Raft ticks every 1 ms and heartbeats every 10.
                Duration::from_millis(if cluster_mode { 1 } else { 10 }),
            );
            if woke {
                last_work = t.now_ns();
            }
        }
    }
    // Dropping the thread drops its Rpc, then its worker, which closes the files.
    drop(t);
    Ok(())
}
