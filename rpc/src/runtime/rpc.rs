//! The per-thread [`Rpc`]: the event loop that drives the protocol core ([`Endpoint`]) — it
//! feeds it packets and route failures from a transport, SM messages from the Nexus,
//! background results and timer expiries, and carries out its outputs: packets to the transport, SM messages to the
//! SM socket, route requests to the transport, liveness changes to the Nexus's table,
//! requests to handlers, completions to the application.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use transports::{Transport, TransportError};

use crate::config::RpcConfig;
use crate::msgbuf::MsgBuf;
use crate::pkthdr::RespStatus;
use crate::proto::{Completion, Endpoint, Event, LocalEnd, ReqHandle, SessionId, SessionState};
use crate::stats::RpcStats;
use crate::RpcError;

use super::background::{BgDone, BgJob};
use super::clock::{Clock, VirtualClock};
use super::ctx::Ctx;
use super::handlers::{Handler, HandlerTable, Request};
use super::nexus::{Nexus, QUEUE_CAP};
use super::sm_socket::SmIn;

/// A continuation: receives every completion of this Rpc's requests.
pub type Continuation<S> = Box<dyn FnMut(&mut S, &mut Ctx, Completion)>;

/// One Rpc per thread: owns a transport, sessions, buffers, and runs the event loop.
///
/// Completions of requests this Rpc issued go to its continuation if one is set
/// ([`Rpc::set_continuation`]), otherwise they wait for [`Rpc::poll_completion`]. Foreground
/// handlers run inside the event loop; nothing may re-enter the loop from them.
///
/// ```
/// use rpc::{LocalHub, Nexus, Rpc, RpcConfig};
/// use transports::sim::SimFabric;
///
/// let hub = LocalHub::new();
/// let fabric = SimFabric::new_realtime(1);
/// let nexus: Nexus = Nexus::new_local(&hub, "demo", 0).unwrap();
/// nexus
///     .register(1, |_state, ctx, req| {
///         let mut out = req.data.to_vec();
///         out.reverse();
///         ctx.respond_with(req.handle, &out).unwrap();
///     })
///     .unwrap();
/// let mut server = Rpc::new(&nexus, 0, fabric.transport(1024, 1024), (), RpcConfig::default()).unwrap();
/// let mut client = Rpc::new(&nexus, 1, fabric.transport(1024, 1024), (), RpcConfig::default()).unwrap();
/// let session = client.create_session("local:demo", 0).unwrap();
/// let tag = 7;
/// client.enqueue_request(session, 1, rpc::MsgBuf::from_slice(b"abc"), tag).unwrap();
/// let done = loop {
///     server.run_once();
///     client.run_once();
///     if let Some(c) = client.poll_completion() {
///         break c;
///     }
/// };
/// assert_eq!(done.tag, 7);
/// assert_eq!(done.result.unwrap().as_slice(), b"cba");
/// ```
pub struct Rpc<T: Transport, S = ()> {
    ctx: Ctx,
    transport: T,
    state: S,
    handlers: HandlerTable<S>,
    continuation: Option<Continuation<S>>,
    sm_rx: Receiver<SmIn>,
    bg_tx: Option<Sender<BgJob>>,
    bg_done_tx: Sender<BgDone>,
    bg_done_rx: Receiver<BgDone>,
    /// Background jobs handed out whose results have not come back (only then is
    /// `bg_done_rx` worth a look).
    bg_pending: usize,
    clock: Clock,
    nexus: Nexus<S>,
    /// Requests whose handlers are to run (from `Event::Request`).
    ready: VecDeque<ReqHandle>,
    /// Completions for the application (continuation or `poll_completion`).
    completions: VecDeque<Completion>,
    /// Completions of the blocking `call`s in progress.
    sync_done: Vec<Completion>,
    /// The transport's error when it could not allocate a client session's route.
    route_error: Option<(SessionId, TransportError)>,
}

impl<T: Transport, S: 'static> Rpc<T, S> {
    /// Creates Rpc number `rpc_id` of `nexus` over `transport`, owning `state`.
    pub fn new(
        nexus: &Nexus<S>,
        rpc_id: u8,
        transport: T,
        state: S,
        cfg: RpcConfig,
    ) -> Result<Self, RpcError> {
        let seed = cfg.seed.unwrap_or_else(os_seed);
        let local = LocalEnd {
            rpc_id,
            transport: transport.kind(),
            max_pkt_size: transport.max_pkt_size(),
            rx_ring_size: transport.rx_ring_size(),
            reliable: transport.is_reliable(),
        };
        let ep = Endpoint::new(cfg, local, seed)?;
        let (sm_tx, sm_rx) = crossbeam_channel::bounded(QUEUE_CAP);
        if !nexus.router().register(rpc_id, sm_tx) {
            return Err(RpcError::RpcIdInUse(rpc_id));
        }
        let (bg_done_tx, bg_done_rx) = crossbeam_channel::bounded(QUEUE_CAP);
        Ok(Self {
            ctx: Ctx::new(ep),
            handlers: nexus.handlers(),
            continuation: None,
            sm_rx,
            bg_tx: nexus.bg_sender(),
            bg_done_tx,
            bg_done_rx,
            bg_pending: 0,
            clock: Clock::wall(),
            transport,
            state,
            nexus: nexus.clone(),
            ready: VecDeque::new(),
            completions: VecDeque::new(),
            sync_done: Vec::new(),
            route_error: None,
        })
    }

    /// Makes the Rpc read time from a virtual clock (for deterministic simulation tests; share
    /// the clock with a simulated fabric through `SimFabric::with_clock(seed, clock.reader())`).
    pub fn use_virtual_clock(&mut self, clock: VirtualClock) {
        self.clock = Clock::Virtual(clock);
    }

    /// Sets the continuation that receives every completion from now on.
    pub fn set_continuation<F>(&mut self, f: F)
    where
        F: FnMut(&mut S, &mut Ctx, Completion) + 'static,
    {
        self.continuation = Some(Box::new(f));
    }

    /// The context handlers get (to respond, allocate buffers, issue requests). Its time is
    /// that of the last event-loop iteration.
    pub fn ctx(&mut self) -> &mut Ctx {
        &mut self.ctx
    }

    /// The per-thread state and the context at once, e.g. to take a finished disk operation
    /// from the state and respond to its request through the context.
    pub fn split(&mut self) -> (&mut S, &mut Ctx) {
        (&mut self.state, &mut self.ctx)
    }

    /// The per-thread state.
    pub fn state(&self) -> &S {
        &self.state
    }

    /// The per-thread state, mutable.
    pub fn state_mut(&mut self) -> &mut S {
        &mut self.state
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// This Rpc's counters (the transport's drop counts folded in).
    pub fn stats(&self) -> RpcStats {
        let mut s = self.ctx.stats();
        let t = self.transport.stats();
        s.tx_dropped = t.tx_dropped;
        s.rx_dropped_transport = t.rx_dropped;
        s
    }

    /// The Nexus this Rpc belongs to.
    pub fn nexus(&self) -> &Nexus<S> {
        &self.nexus
    }

    /// The current time of the Rpc's clock in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.clock.now()
    }

    /// The earliest time (ns) at which the Rpc may have timer work to do; `u64::MAX` if no
    /// timer is armed. A simulation driver jumps virtual time to it (or to the next packet
    /// delivery).
    pub fn next_timer_ns(&self) -> u64 {
        self.ctx.ep.earliest_timer().unwrap_or(u64::MAX)
    }

    /// Starts opening a session to Rpc `remote_rpc` of the Nexus at `remote_uri`
    /// (`host:port` or `local:NAME`). Returns at once; requests enqueued before the session
    /// is connected wait in its backlog. See [`Rpc::connect`] for the blocking form.
    pub fn create_session(
        &mut self,
        remote_uri: &str,
        remote_rpc: u8,
    ) -> Result<SessionId, RpcError> {
        let addr = self
            .nexus
            .resolve_uri(remote_uri)
            .ok_or_else(|| RpcError::BadRemote(remote_uri.to_string()))?;
        let now = self.command_time();
        self.route_error = None;
        let id = self.ctx.ep.connect(now, addr, remote_rpc)?;
        // The local end of the route is made now, so that a transport that cannot make one
        // fails this call rather than the connect later.
        self.carry_out();
        if let Some((sid, e)) = self.route_error.take() {
            if sid == id {
                let _ = self.ctx.ep.disconnect(now, id);
                self.carry_out();
                return Err(e.into());
            }
        }
        Ok(id)
    }

    /// Opens a session and runs the event loop until it is connected or has failed.
    pub fn connect(&mut self, remote_uri: &str, remote_rpc: u8) -> Result<SessionId, RpcError> {
        let id = self.create_session(remote_uri, remote_rpc)?;
        loop {
            match self.ctx.ep.session_state(id) {
                Some(SessionState::Connected) => return Ok(id),
                Some(SessionState::Failed(f)) => {
                    let now = self.command_time();
                    let _ = self.ctx.ep.disconnect(now, id);
                    self.carry_out();
                    return Err(f.to_error(remote_rpc));
                }
                Some(SessionState::Connecting) => {}
                _ => return Err(RpcError::InvalidSession(id)),
            }
            self.run_once();
        }
    }

    /// The state of a session.
    pub fn session_state(&self, session: SessionId) -> Option<SessionState> {
        self.ctx.ep.session_state(session)
    }

    /// Starts closing a client session (only without requests pending). The session is gone
    /// once the server confirms or the connect timeout passes; see [`Rpc::disconnect`].
    pub fn destroy_session(&mut self, session: SessionId) -> Result<(), RpcError> {
        let now = self.command_time();
        self.ctx.ep.disconnect(now, session)?;
        self.carry_out();
        Ok(())
    }

    /// Closes a client session and runs the event loop until it is gone.
    pub fn disconnect(&mut self, session: SessionId) -> Result<(), RpcError> {
        self.destroy_session(session)?;
        while self.ctx.ep.session_state(session).is_some() {
            self.run_once();
        }
        Ok(())
    }

    /// Issues a request; see [`Ctx::enqueue_request`].
    pub fn enqueue_request(
        &mut self,
        session: SessionId,
        req_type: u8,
        req: MsgBuf,
        tag: u64,
    ) -> Result<(), RpcError> {
        self.ctx.now = self.clock.now();
        self.ctx.enqueue_request(session, req_type, req, tag)
    }

    /// Issues a request with its own deadline; see [`Ctx::enqueue_request_with_deadline`].
    pub fn enqueue_request_with_deadline(
        &mut self,
        session: SessionId,
        req_type: u8,
        req: MsgBuf,
        tag: u64,
        deadline: Option<Duration>,
    ) -> Result<(), RpcError> {
        self.ctx.now = self.clock.now();
        self.ctx
            .enqueue_request_with_deadline(session, req_type, req, tag, deadline)
    }

    /// Whether a completion is waiting for [`Rpc::poll_completion`], or core events not yet
    /// sorted that may hold one (e.g. for a loop that sleeps until there is something to do).
    pub fn has_completions(&self) -> bool {
        !self.completions.is_empty() || self.ctx.ep.has_events()
    }

    /// Takes the next completion (when no continuation is set).
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.absorb_events();
        self.completions.pop_front()
    }

    /// Sends one request and runs the event loop until its response arrives or `timeout`
    /// passes: the request's deadline is `timeout`, so it then fails with
    /// [`RpcError::DeadlineExceeded`] and leaves nothing behind. Completions of other requests
    /// are delivered as usual. Without [`RpcConfig::busy_poll`] it sleeps in the transport's
    /// wait while nothing happens instead of spinning.
    pub fn call(
        &mut self,
        session: SessionId,
        req_type: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<MsgBuf, RpcError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let tag = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.ctx.now = self.clock.now();
        let req = self.ctx.msg_from(data);
        self.ctx
            .enqueue(session, req_type, req, tag, Some(timeout), true)?;
        let start = Instant::now();
        loop {
            self.absorb_events();
            if let Some(i) = self.sync_done.iter().position(|c| c.tag == tag) {
                let c = self.sync_done.swap_remove(i);
                self.ctx.free_msg(c.req);
                return c.result;
            }
            // The deadline ends the request on the Rpc's own clock; this guards against a
            // clock that does not move (a virtual one).
            if start.elapsed() >= timeout + Duration::from_secs(1) {
                let now = self.command_time();
                self.ctx.ep.cancel_request(now, session, tag, true);
                self.absorb_events();
                self.sync_done.retain(|c| c.tag != tag);
                return Err(RpcError::DeadlineExceeded);
            }
            if !self.run_once() && !self.ctx.config().busy_poll {
                self.wait_idle(timeout);
            }
        }
    }

    /// Cancels the first pending request on `session` carrying `tag`; see
    /// [`Ctx::cancel_request`].
    pub fn cancel_request(&mut self, session: SessionId, tag: u64) -> bool {
        self.ctx.now = self.clock.now();
        self.ctx.cancel_request(session, tag)
    }

    /// Reopens a failed session — after a peer failure (`SessionState::Failed(PeerFailed)`,
    /// e.g. the server restarted) or a failed connect — with a new handshake. Returns at once;
    /// requests may be enqueued meanwhile. Sessions never reconnect on their own.
    pub fn reconnect(&mut self, session: SessionId) -> Result<(), RpcError> {
        let now = self.command_time();
        self.ctx.ep.reconnect(now, session)?;
        self.carry_out();
        Ok(())
    }

    /// Runs the event loop for `d` of wall-clock time.
    pub fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if !self.run_once() && !self.ctx.config().busy_poll {
                self.wait_idle(end.saturating_duration_since(Instant::now()));
            }
        }
    }

    /// Runs the event loop until `cond` holds or `timeout` passes; returns whether it held.
    pub fn run_until<F>(&mut self, mut cond: F, timeout: Duration) -> bool
    where
        F: FnMut(&mut Self) -> bool,
    {
        let end = Instant::now() + timeout;
        loop {
            if cond(self) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            if !self.run_once() && !self.ctx.config().busy_poll {
                self.wait_idle(end.saturating_duration_since(Instant::now()));
            }
        }
    }

    /// Sleeps until the transport may have input, for at most `max` (and at most 1 ms, since
    /// session-management messages and background results arrive outside the transport; and
    /// no later than the core's next timer). For application loops that poll other things too
    /// (e.g. a disk) and want to sleep when idle.
    pub fn wait_idle(&mut self, max: Duration) {
        let mut t = max.min(Duration::from_millis(1));
        if let Some(at) = self.ctx.ep.poll_timeout() {
            t = t.min(Duration::from_nanos(at.saturating_sub(self.clock.now())));
        }
        let _ = self.transport.wait(Some(t));
    }

    /// One iteration of the event loop: receive a batch, handle SM messages, background
    /// results and timers, run handlers and continuations, transmit. Returns whether
    /// anything happened.
    pub fn run_once(&mut self) -> bool {
        let mut work = false;

        // Requests enqueued since the last iteration go out before we look for input:
        // otherwise they would wait for one (usually empty) receive call.
        if self.ctx.ep.has_transmits() {
            work = true;
            self.flush_tx();
        }

        // Receive. The iteration's time is read after the receive call: sending above needs
        // none, and what arrived is then stamped with the time it was taken in.
        let n = self.transport.rx_burst().min(self.ctx.config().rx_batch);
        let now = self.clock.now();
        self.ctx.now = now;
        if n > 0 {
            work = true;
            for i in 0..n {
                self.ctx.ep.handle_packet(now, self.transport.rx_pkt(i));
            }
            self.transport.rx_release(n);
        }

        // Routes whose connection failed (reliable transports; a datagram transport's
        // `poll_route_failure` is the trait's `None`, which compiles to nothing here).
        while let Some(route) = self.transport.poll_route_failure() {
            work = true;
            self.ctx.ep.handle_route_failure(now, route);
        }

        // Session management. (`is_empty` is a cheaper look than a failing `try_recv`, and
        // both queues are empty in almost every iteration.)
        while !self.sm_rx.is_empty() {
            let Ok(m) = self.sm_rx.try_recv() else {
                break;
            };
            work = true;
            self.ctx.ep.handle_sm(now, m.from, m.msg);
        }

        // Background handler results.
        while self.bg_pending > 0 {
            let Ok(done) = self.bg_done_rx.try_recv() else {
                break;
            };
            self.bg_pending -= 1;
            work = true;
            let status = if done.resp.is_some() {
                RespStatus::Ok
            } else {
                RespStatus::HandlerFailed
            };
            let resp = self.ctx.msg_from(done.resp.as_deref().unwrap_or(&[]));
            self.ctx.ep.restore_request(done.handle, done.req);
            if let Err(e) = self.ctx.ep.respond(done.handle, resp, status) {
                tracing::debug!(error = %e, "background response for a stale request");
            }
        }

        // Timers. The front of the queue may be a stale entry (never later than the true next
        // timer): `handle_timeout` drops it, which is cheaper than asking for the exact time
        // every iteration.
        if self.ctx.ep.earliest_timer().is_some_and(|at| at <= now) {
            self.ctx.ep.handle_timeout(now);
        }

        // Idle iterations (the common case when busy-polling) stop here.
        if self.ctx.ep.has_events()
            || !self.ready.is_empty()
            || (self.continuation.is_some() && !self.completions.is_empty())
        {
            self.dispatch();
            self.deliver_completions();
        }
        if self.ctx.ep.has_transmits() {
            work = true;
            self.flush_tx();
        }
        if self.ctx.ep.has_sm() {
            self.flush_sm();
        }
        work
    }

    /// The time for a command from outside the loop.
    fn command_time(&mut self) -> u64 {
        self.ctx.now = self.clock.now();
        self.ctx.now
    }

    /// Carries out everything the core has queued: events, packets, SM messages.
    fn carry_out(&mut self) {
        self.absorb_events();
        self.flush_tx();
        self.flush_sm();
    }

    /// Takes the core's events: route requests and liveness changes are carried out at once,
    /// requests to dispatch and completions are kept for `dispatch` and
    /// `deliver_completions` (or `poll_completion`, `call`).
    #[inline]
    fn absorb_events(&mut self) {
        // Called after every handler and completion, and usually with nothing queued.
        if self.ctx.ep.has_events() {
            self.absorb_queued_events();
        }
    }

    fn absorb_queued_events(&mut self) {
        let now = self.ctx.now;
        while let Some(ev) = self.ctx.ep.poll_event() {
            match ev {
                Event::Request(h) => self.ready.push_back(h),
                Event::Completion {
                    completion,
                    internal,
                } => {
                    if internal {
                        self.sync_done.push(completion);
                    } else {
                        self.completions.push_back(completion);
                    }
                }
                Event::AllocRoute { op } => {
                    let route = match self.transport.route_alloc() {
                        Ok(r) => Some(r),
                        Err(e) => {
                            tracing::warn!(error = %e, session = op.session(), "route allocation failed");
                            // Kept for `create_session`, which reports a client's failure.
                            let sid = op.session();
                            if self.ctx.ep.session_state(sid) == Some(SessionState::Connecting) {
                                self.route_error = Some((sid, e));
                            }
                            None
                        }
                    };
                    self.ctx.ep.route_allocated(now, op, route);
                }
                Event::ResolveRoute { op, route, info } => {
                    let ok = match self.transport.resolve(route, &info) {
                        Ok(()) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, session = op.session(), "cannot resolve the peer's routing info");
                            false
                        }
                    };
                    self.ctx.ep.route_resolved(now, op, ok);
                }
                Event::FreeRoute { route } => self.transport.route_free(route),
                ev @ (Event::SessionUp { .. }
                | Event::SessionDown { .. }
                | Event::SessionReset { .. }) => {
                    self.nexus.router().live().apply(self.ctx.ep.rpc_id(), &ev);
                }
            }
        }
    }

    /// Runs the handlers of the requests that arrived.
    fn dispatch(&mut self) {
        loop {
            self.absorb_events();
            let Some(h) = self.ready.pop_front() else {
                return;
            };
            let Some((req_type, req)) = self.ctx.ep.take_request(h) else {
                continue;
            };
            match self
                .handlers
                .get(usize::from(req_type))
                .and_then(Option::as_ref)
            {
                Some(Handler::Foreground(f)) => {
                    let (state, ctx) = (&mut self.state, &mut self.ctx);
                    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        f(
                            state,
                            ctx,
                            Request {
                                handle: h,
                                req_type,
                                data: req.as_slice(),
                            },
                        )
                    }));
                    self.ctx.ep.restore_request(h, req);
                    if ran.is_err() {
                        tracing::error!(req_type, "request handler panicked");
                        self.fail_request(h, RespStatus::HandlerFailed);
                    }
                }
                Some(Handler::Background(f)) => {
                    let Some(tx) = self.bg_tx.as_ref() else {
                        self.ctx.ep.restore_request(h, req);
                        self.fail_request(h, RespStatus::HandlerFailed);
                        continue;
                    };
                    let job = BgJob {
                        handler: f.clone(),
                        handle: h,
                        req,
                        reply: self.bg_done_tx.clone(),
                    };
                    match tx.try_send(job) {
                        Ok(()) => self.bg_pending += 1,
                        Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                            self.ctx.ep.restore_request(h, job.req);
                            self.fail_request(h, RespStatus::Overloaded);
                        }
                    }
                }
                None => {
                    self.ctx.ep.restore_request(h, req);
                    self.fail_request(h, RespStatus::NoHandler);
                }
            }
        }
    }

    /// Answers a request with an error status.
    fn fail_request(&mut self, h: ReqHandle, status: RespStatus) {
        let _ = self.ctx.ep.respond(h, MsgBuf::new(0), status);
    }

    /// Hands the completions to the continuation, if one is set (including completions that
    /// the continuation itself causes, e.g. by cancelling).
    fn deliver_completions(&mut self) {
        let Some(mut cont) = self.continuation.take() else {
            return;
        };
        loop {
            self.absorb_events();
            let Some(c) = self.completions.pop_front() else {
                break;
            };
            cont(&mut self.state, &mut self.ctx, c);
        }
        self.continuation = Some(cont);
    }

    fn flush_tx(&mut self) {
        let transport = &mut self.transport;
        self.ctx.ep.poll_transmits(|pkts| {
            if let Err(e) = transport.tx_burst(pkts) {
                tracing::debug!(error = %e, "transmit failed; loss recovery will resend");
            }
        });
    }

    fn flush_sm(&mut self) {
        while let Some(t) = self.ctx.ep.poll_sm() {
            self.nexus.router().channel().send(&t.to, &t.msg);
        }
    }
}

impl<T: Transport, S> Drop for Rpc<T, S> {
    fn drop(&mut self) {
        self.nexus.router().unregister(self.ctx.ep.rpc_id());
    }
}

/// A seed for session tokens from the OS. Tokens only need to be unpredictable to off-path
/// forgers; without OS randomness, the time and process id do.
fn os_seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id())).to_le_bytes();
    }
    u64::from_le_bytes(b)
}
