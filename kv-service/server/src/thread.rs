//! One server thread as a state machine: [`ServerThread::step`] does one round of work and
//! moves the thread through [`Phase::Serving`], [`Phase::Draining`] and [`Phase::Stopped`].
//! It reads no clock of its own (time comes in as `now`, on the Rpc's clock) and never sleeps,
//! so a test can drive every thread of a server from one OS thread on a simulated network, a
//! virtual clock and a simulated disk; [`Server`](crate::Server) drives each from an OS thread
//! of its own over UDP and adds the idle sleeping.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kv_engine::{Backend, OpenedWorkers};
use rpc::{Nexus, Rpc, RpcConfig, RpcError};
use transports::Transport;

use crate::config::ServerError;
use crate::forward::Post;
use crate::resp::RespFront;
use crate::resp_ops::{Board, RespDriver};
use crate::state::ServerState;

/// Time the threads keep answering (retransmitted requests) after every thread has drained
/// at shutdown.
pub const LINGER: Duration = Duration::from_millis(50);

/// Where a server thread is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Answering requests.
    Serving,
    /// Stop requested: new requests get SHUTTING_DOWN, the ones in progress finish.
    Draining,
    /// Done; drop the thread (which closes its engine worker's files).
    Stopped,
}

/// Shutdown state shared by the threads of one server.
#[derive(Debug)]
pub struct Shutdown {
    stop: Arc<AtomicBool>,
    drained: AtomicUsize,
    threads: usize,
    timeout_ns: u64,
}

impl Shutdown {
    /// For a server of `threads` threads whose drain may take up to `timeout`.
    pub fn new(threads: usize, timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            stop: Arc::new(AtomicBool::new(false)),
            drained: AtomicUsize::new(0),
            threads,
            timeout_ns: u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// Asks every thread to drain and stop.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Whether a stop was asked for.
    pub fn is_stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// The flag behind [`Shutdown::stop`] (e.g. for a signal handler).
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// One more thread has nothing left to finish (or will never run: a thread that failed
    /// to start counts too, or the others would wait for it until the drain timeout).
    pub(crate) fn drained_one(&self) {
        self.drained.fetch_add(1, Ordering::AcqRel);
    }

    fn all_drained(&self) -> bool {
        self.drained.load(Ordering::Acquire) >= self.threads
    }
}

/// One server thread: rpc endpoint `id` of the server's Nexus over transport `T`, and engine
/// worker `id` over backend `B`.
pub struct ServerThread<T: Transport, B: Backend> {
    id: usize,
    rpc: Rpc<T, ServerState<B>>,
    shutdown: Arc<Shutdown>,
    phase: Phase,
    stop_seen: Option<u64>,
    drained_at: Option<u64>,
    /// The thread's share of the RESP connections, if the server speaks RESP.
    resp: Option<RespFront>,
    /// When the engine figures were last published for INFO.
    published_at: u64,
    steps: u64,
}

/// How often a thread with a RESP front-end publishes its engine figures for INFO.
const PUBLISH_NS: u64 = 100_000_000;

/// Steps between two looks at the RESP sockets while the thread has no RESP connection (a
/// look is a system call; new connections can wait a few steps).
const IDLE_RESP_POLL: u64 = 16;

/// Registers the server's request handlers on `nexus` (once per Nexus).
pub fn register_handlers<B: Backend>(nexus: &Nexus<ServerState<B>>) -> Result<(), RpcError> {
    for t in kv_proto::op::ALL.into_iter().chain(kv_proto::op::CLUSTER) {
        nexus.register(t, |st: &mut ServerState<B>, ctx, req| {
            st.on_request(ctx, req)
        })?;
    }
    Ok(())
}

/// Builds the threads of a server: thread `i` gets engine worker `i` of `opened`, transport
/// `i` of `transports` and rpc id `i` of `nexus` (whose handlers [`register_handlers`] set).
/// Threads forward wrong-thread requests to each other in process. This is what
/// [`Server::start`](crate::Server::start) does with UDP sockets; tests do it with simulated
/// transports and a simulated disk.
pub fn build_threads<T: Transport, B: Backend>(
    nexus: &Nexus<ServerState<B>>,
    opened: OpenedWorkers<B>,
    transports: Vec<T>,
    rpc_config: &RpcConfig,
    shutdown: &Arc<Shutdown>,
) -> Result<Vec<ServerThread<T, B>>, ServerError> {
    let w = opened.workers.len();
    if transports.len() != w {
        return Err(ServerError::Config(format!(
            "{} transports for {w} threads",
            transports.len()
        )));
    }
    let mut posts = Post::mesh(w);
    let mut threads = Vec::with_capacity(w);
    for (worker, transport) in opened.workers.into_iter().zip(transports) {
        let post = posts.remove(0);
        threads.push(ServerThread::new(
            nexus,
            opened.router,
            worker,
            post,
            transport,
            rpc_config,
            shutdown.clone(),
        )?);
    }
    Ok(threads)
}

impl<T: Transport, B: Backend> ServerThread<T, B> {
    pub(crate) fn new(
        nexus: &Nexus<ServerState<B>>,
        router: kv_engine::KeyRouter,
        worker: kv_engine::Worker<B>,
        post: Post,
        transport: T,
        rpc_config: &RpcConfig,
        shutdown: Arc<Shutdown>,
    ) -> Result<Self, ServerError> {
        let id = worker.id();
        let rpc_id = u8::try_from(id)
            .map_err(|_| ServerError::Config(format!("thread {id} has no rpc id")))?;
        let state = ServerState::new(id, router, worker, post);
        let rpc = Rpc::new(nexus, rpc_id, transport, state, rpc_config.clone())?;
        Ok(Self {
            id,
            rpc,
            shutdown,
            phase: Phase::Serving,
            stop_seen: None,
            drained_at: None,
            resp: None,
            published_at: 0,
            steps: 0,
        })
    }

    /// Gives the thread its share of the RESP connections: `front` is served from every
    /// [`ServerThread::step`]. Every thread of a server with a front-end must have one
    /// (conditional SETs run at their key's owner, whichever thread that is; `board` is where
    /// the threads publish their figures).
    pub(crate) fn attach_resp(&mut self, front: RespFront, board: Arc<Board>) {
        let id = self.id;
        let st = self.rpc.state_mut();
        st.resp.enable(board, id);
        st.resp.publish_stats(&st.worker.stats());
        self.resp = Some(front);
    }

    /// The RESP front-end, if any.
    pub(crate) fn resp_mut(&mut self) -> Option<&mut RespFront> {
        self.resp.as_mut()
    }

    /// Runs `replicas` (cluster mode) on this thread from now on.
    pub fn attach_cluster(&mut self, replicas: crate::cluster::Replicas) {
        self.rpc.state_mut().cluster = Some(Box::new(replicas));
    }

    /// The Raft state of this thread's replicas (cluster mode; empty otherwise).
    pub fn cluster_status(&self) -> Vec<kv_proto::ShardStatus> {
        self.rpc
            .state()
            .cluster
            .as_ref()
            .map_or_else(Vec::new, |c| c.status())
    }

    /// Counters of this thread's replicas (cluster mode; zeros otherwise): replay at start,
    /// checkpoints, snapshots, the size of the live log.
    pub fn cluster_stats(&self) -> crate::cluster::ReplicaStats {
        self.rpc
            .state()
            .cluster
            .as_ref()
            .map_or_else(Default::default, |c| c.stats())
    }

    /// The thread's number (= its rpc id and its engine worker's id).
    pub fn id(&self) -> usize {
        self.id
    }

    /// The current time of the thread's Rpc clock, in ns (the `now` [`ServerThread::step`]
    /// takes).
    pub fn now_ns(&self) -> u64 {
        self.rpc.now_ns()
    }

    /// The thread's Rpc, e.g. to put it on a virtual clock or read its transport.
    pub fn rpc_mut(&mut self) -> &mut Rpc<T, ServerState<B>> {
        &mut self.rpc
    }

    /// The thread's Rpc.
    pub fn rpc(&self) -> &Rpc<T, ServerState<B>> {
        &self.rpc
    }

    /// Where the thread is.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether the thread has work that needs no outside event: engine I/O in flight, a
    /// background reorganisation round to start, or mail from a sibling. (A simulation must
    /// keep stepping rather than move time on.)
    pub fn busy(&self) -> bool {
        let st = self.rpc.state();
        st.worker.io_in_flight() > 0
            || st.worker.reorg_busy()
            || st.post.has_mail()
            || !st.resp.done.is_empty()
            || self.resp.as_ref().is_some_and(RespFront::busy)
    }

    /// Whether the engine worker has operations in progress.
    pub(crate) fn engine_pending(&self) -> bool {
        self.rpc.state().worker.pending() > 0
    }

    /// One round: the rpc event loop once (receive, run handlers, transmit), the mail from
    /// sibling threads, the engine worker (reap, run, submit), and the answers of what the
    /// worker finished; then the phase. Returns whether anything happened.
    pub fn step(&mut self, now: u64) -> bool {
        if self.phase == Phase::Stopped {
            return false;
        }
        let mut work = self.rpc.run_once();
        work |= crate::cluster::drive(&mut self.rpc, now);
        {
            let (st, ctx) = self.rpc.split();
            work |= st.on_mail(ctx);
            work |= st.poll_worker(ctx, now);
            if let Some(front) = &mut self.resp {
                self.steps = self.steps.wrapping_add(1);
                for (tag, answer) in st.resp.done.drain(..) {
                    front.complete(tag, answer.outcome(), now);
                    work = true;
                }
                let look = front.connections() > 0
                    || front.busy()
                    || self.steps.is_multiple_of(IDLE_RESP_POLL);
                if look && front.poll(&mut RespDriver { st, ctx }, now) {
                    work = true;
                    // What the commands just read submitted often completes at once (cache
                    // hits): run the worker again and write those replies in this step,
                    // rather than one step later.
                    if st.worker.pending() > 0
                        && st.poll_worker(ctx, now)
                        && !st.resp.done.is_empty()
                    {
                        for (tag, answer) in st.resp.done.drain(..) {
                            front.complete(tag, answer.outcome(), now);
                        }
                        front.poll(&mut RespDriver { st, ctx }, now);
                    }
                }
            }
        }
        if self.resp.is_some() && now.saturating_sub(self.published_at) >= PUBLISH_NS {
            self.published_at = now;
            let st = self.rpc.state();
            st.resp.publish_stats(&st.worker.stats());
        }
        self.advance_phase(now);
        work
    }

    fn advance_phase(&mut self, now: u64) {
        if self.stop_seen.is_none() && self.shutdown.is_stopping() {
            self.stop_seen = Some(now);
            self.phase = Phase::Draining;
            self.rpc.state_mut().stopping = true;
            if let Some(front) = &mut self.resp {
                front.begin_drain();
            }
            tracing::debug!(thread = self.id, "draining");
        }
        let Some(since) = self.stop_seen else {
            return;
        };
        let st = self.rpc.state();
        let resp_done = self.resp.as_ref().is_none_or(RespFront::drained);
        if self.drained_at.is_none() && st.is_idle() && resp_done {
            self.drained_at = Some(now);
            self.shutdown.drained_one();
        }
        let linger = u64::try_from(LINGER.as_nanos()).unwrap_or(u64::MAX);
        if self.shutdown.all_drained()
            && self
                .drained_at
                .is_some_and(|d| now.saturating_sub(d) >= linger)
        {
            self.phase = Phase::Stopped;
            tracing::debug!(thread = self.id, "stopped");
            return;
        }
        if now.saturating_sub(since) > self.shutdown.timeout_ns {
            tracing::warn!(
                thread = self.id,
                pending = st.in_progress(),
                "shutdown timed out with requests in flight"
            );
            if self.drained_at.is_none() {
                self.shutdown.drained_one();
            }
            self.phase = Phase::Stopped;
        }
    }
}
