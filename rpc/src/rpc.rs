//! The per-thread [`Rpc`]: the event loop that glues the protocol core ([`Ctx`]) to a
//! transport, the SM channel, the handlers and the application.

use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use transports::{Transport, TxPkt};

use crate::config::RpcConfig;
use crate::ctx::{Completion, Ctx, Request};
use crate::msgbuf::MsgBuf;
use crate::nexus::{BgDone, BgJob, Handler, HandlerTable, Nexus, QUEUE_CAP};
use crate::pkthdr::RespStatus;
use crate::runtime::clock::{Clock, VirtualClock};
use crate::session::{SessionId, SessionState};
use crate::sm::SmIn;
use crate::stats::RpcStats;
use crate::RpcError;

/// A continuation: receives every completion of this Rpc's requests.
pub type Continuation<S> = Box<dyn FnMut(&mut S, &mut Ctx, Completion)>;

/// Packets handed to the transport per `tx_burst` call.
const TX_BATCH: usize = 32;

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
    clock: Clock,
    next_scan: u64,
    scan_interval: u64,
    nexus: Nexus<S>,
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
        cfg.validate().map_err(RpcError::Config)?;
        if transport.max_pkt_size() <= crate::pkthdr::HDR_SIZE {
            return Err(RpcError::Config(format!(
                "transport packets of {} bytes cannot hold the {}-byte header",
                transport.max_pkt_size(),
                crate::pkthdr::HDR_SIZE
            )));
        }
        let (sm_tx, sm_rx) = crossbeam_channel::bounded(QUEUE_CAP);
        if !nexus.router().register(rpc_id, sm_tx) {
            return Err(RpcError::RpcIdInUse(rpc_id));
        }
        let seed = match cfg.seed {
            Some(s) => s,
            None => {
                let mut b = [0u8; 8];
                // Tokens only need to be unpredictable to off-path forgers; fall back to time.
                if getrandom::fill(&mut b).is_err() {
                    let t = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64);
                    b = (t ^ u64::from(std::process::id())).to_le_bytes();
                }
                u64::from_le_bytes(b)
            }
        };
        let scan_interval = (cfg.rto.as_nanos() as u64 / 10).max(1);
        let (bg_done_tx, bg_done_rx) = crossbeam_channel::bounded(QUEUE_CAP);
        let ctx = Ctx::new(
            cfg,
            rpc_id,
            transport.kind(),
            transport.max_pkt_size(),
            transport.rx_ring_size(),
            seed,
        );
        Ok(Self {
            ctx,
            handlers: nexus.handlers(),
            continuation: None,
            sm_rx,
            bg_tx: nexus.bg_sender(),
            bg_done_tx,
            bg_done_rx,
            clock: Clock::wall(),
            next_scan: 0,
            scan_interval,
            transport,
            state,
            nexus: nexus.clone(),
        })
    }

    /// Makes the Rpc read time from a virtual clock (for deterministic simulation tests; share
    /// the clock with a simulated fabric through `SimFabric::with_clock(seed, clock.reader())`).
    pub fn use_virtual_clock(&mut self, clock: VirtualClock) {
        self.clock = Clock::Virtual(clock);
        self.next_scan = 0;
    }

    /// Sets the continuation that receives every completion from now on.
    pub fn set_continuation<F>(&mut self, f: F)
    where
        F: FnMut(&mut S, &mut Ctx, Completion) + 'static,
    {
        self.continuation = Some(Box::new(f));
    }

    /// The protocol context (to respond, allocate buffers, issue requests).
    pub fn ctx(&mut self) -> &mut Ctx {
        &mut self.ctx
    }

    /// The per-thread state and the protocol context at once, e.g. to take a finished disk
    /// operation from the state and respond to its request through the context.
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

    /// The earliest time (ns) at which the Rpc has timer work to do.
    pub fn next_timer_ns(&self) -> u64 {
        self.next_scan
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
        let now = self.clock.now();
        let id = self
            .ctx
            .create_session(now, addr, remote_rpc, &mut self.transport)?;
        self.flush_sm();
        Ok(id)
    }

    /// Opens a session and runs the event loop until it is connected or has failed.
    pub fn connect(&mut self, remote_uri: &str, remote_rpc: u8) -> Result<SessionId, RpcError> {
        let id = self.create_session(remote_uri, remote_rpc)?;
        loop {
            match self.ctx.session_state(id) {
                Some(SessionState::Connected) => return Ok(id),
                Some(SessionState::Failed(f)) => {
                    let _ = self.ctx.destroy_session(self.clock.now(), id);
                    self.flush_routes();
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
        self.ctx.session_state(session)
    }

    /// Starts closing a client session (only without requests pending). The session is gone
    /// once the server confirms or the connect timeout passes; see [`Rpc::disconnect`].
    pub fn destroy_session(&mut self, session: SessionId) -> Result<(), RpcError> {
        self.ctx.destroy_session(self.clock.now(), session)?;
        self.flush_sm();
        self.flush_routes();
        Ok(())
    }

    /// Closes a client session and runs the event loop until it is gone.
    pub fn disconnect(&mut self, session: SessionId) -> Result<(), RpcError> {
        self.destroy_session(session)?;
        while self.ctx.session_state(session).is_some() {
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
        self.ctx.set_now(self.clock.now());
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
        self.ctx.set_now(self.clock.now());
        self.ctx
            .enqueue_request_with_deadline(session, req_type, req, tag, deadline)
    }

    /// Takes the next completion (when no continuation is set).
    pub fn poll_completion(&mut self) -> Option<Completion> {
        self.ctx.completions.pop_front()
    }

    /// Sends one request and runs the event loop until its response arrives or `timeout`
    /// passes: the request's deadline is `timeout`, so it then fails with
    /// [`RpcError::DeadlineExceeded`] and leaves nothing behind. Completions of other requests
    /// are delivered as usual.
    pub fn call(
        &mut self,
        session: SessionId,
        req_type: u8,
        data: &[u8],
        timeout: Duration,
    ) -> Result<MsgBuf, RpcError> {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let tag = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let req = self.ctx.msg_from(data);
        self.ctx.set_now(self.clock.now());
        self.ctx
            .enqueue_inner(session, req_type, req, tag, true, Some(timeout))?;
        let start = Instant::now();
        loop {
            if let Some(i) = self.ctx.sync_done.iter().position(|c| c.tag == tag) {
                let c = self.ctx.sync_done.swap_remove(i);
                self.ctx.free_msg(c.req);
                return c.result;
            }
            // The deadline ends the request on the Rpc's own clock; this guards against a
            // clock that does not move (a virtual one).
            if start.elapsed() >= timeout + Duration::from_secs(1) {
                self.ctx.cancel_inner(session, tag, true);
                self.ctx.sync_done.retain(|c| c.tag != tag);
                return Err(RpcError::DeadlineExceeded);
            }
            self.run_once();
        }
    }

    /// Cancels the first pending request on `session` carrying `tag`; see
    /// [`Ctx::cancel_request`].
    pub fn cancel_request(&mut self, session: SessionId, tag: u64) -> bool {
        self.ctx.cancel_request(session, tag)
    }

    /// Reopens a failed session — after a peer failure (`SessionState::Failed(PeerFailed)`,
    /// e.g. the server restarted) or a failed connect — with a new handshake. Returns at once;
    /// requests may be enqueued meanwhile. Sessions never reconnect on their own.
    pub fn reconnect(&mut self, session: SessionId) -> Result<(), RpcError> {
        self.ctx.reconnect(self.clock.now(), session)?;
        self.flush_sm();
        Ok(())
    }

    /// Runs the event loop for `d` of wall-clock time.
    pub fn run_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if !self.run_once() && !self.ctx.cfg.busy_poll {
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
            if !self.run_once() && !self.ctx.cfg.busy_poll {
                self.wait_idle(end.saturating_duration_since(Instant::now()));
            }
        }
    }

    /// Sleeps until the transport may have input, for at most `max` (and at most 1 ms, since
    /// session-management messages and background results arrive outside the transport). For
    /// application loops that poll other things too (e.g. a disk) and want to sleep when idle.
    pub fn wait_idle(&mut self, max: Duration) {
        let t = max.min(Duration::from_millis(1));
        let _ = self.transport.wait(Some(t));
    }

    /// One iteration of the event loop: receive a batch, handle SM messages, background
    /// results and timers, run handlers and continuations, transmit. Returns whether
    /// anything happened.
    pub fn run_once(&mut self) -> bool {
        let now = self.clock.now();
        let mut work = false;

        // Requests enqueued since the last iteration go out before we look for input:
        // otherwise they would wait for one (usually empty) receive call.
        if !self.ctx.txq.is_empty() {
            work = true;
            self.flush_tx();
        }

        // Receive.
        let n = self.transport.rx_burst().min(self.ctx.cfg.rx_batch);
        if n > 0 {
            work = true;
            for i in 0..n {
                let pkt = self.transport.rx_pkt(i);
                self.ctx.handle_pkt(now, pkt);
            }
            self.transport.rx_release(n);
        }

        // Session management.
        while let Ok(m) = self.sm_rx.try_recv() {
            work = true;
            self.ctx.stats.sm_rx += 1;
            self.ctx.handle_sm(now, m.from, m.msg, &mut self.transport);
        }

        // Background handler results.
        while let Ok(done) = self.bg_done_rx.try_recv() {
            work = true;
            let status = if done.resp.is_some() {
                RespStatus::Ok
            } else {
                RespStatus::HandlerFailed
            };
            let resp = self.ctx.msg_from(done.resp.as_deref().unwrap_or(&[]));
            self.ctx.restore_request(done.handle, done.req);
            if let Err(e) = self.ctx.respond_status(done.handle, resp, status) {
                tracing::debug!(error = %e, "background response for a stale request");
            }
        }

        // Timers.
        if now >= self.next_scan {
            self.next_scan = now + self.scan_interval;
            self.ctx.handle_timers(now);
        }

        self.dispatch();
        self.deliver_completions();
        if !self.ctx.txq.is_empty() {
            work = true;
            self.flush_tx();
        }
        self.flush_sm();
        self.flush_routes();
        work
    }

    fn dispatch(&mut self) {
        while let Some(h) = self.ctx.ready.pop_front() {
            let Some((req_type, req)) = self.ctx.take_request(h) else {
                continue;
            };
            self.ctx.stats.handlers_run += 1;
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
                    self.ctx.restore_request(h, req);
                    if ran.is_err() {
                        tracing::error!(req_type, "request handler panicked");
                        let _ =
                            self.ctx
                                .respond_status(h, MsgBuf::new(0), RespStatus::HandlerFailed);
                    }
                }
                Some(Handler::Background(f)) => {
                    let Some(tx) = self.bg_tx.as_ref() else {
                        self.ctx.restore_request(h, req);
                        let _ =
                            self.ctx
                                .respond_status(h, MsgBuf::new(0), RespStatus::HandlerFailed);
                        continue;
                    };
                    let job = BgJob {
                        handler: f.clone(),
                        handle: h,
                        req,
                        reply: self.bg_done_tx.clone(),
                    };
                    if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
                        tx.try_send(job)
                    {
                        self.ctx.restore_request(h, job.req);
                        let _ = self
                            .ctx
                            .respond_status(h, MsgBuf::new(0), RespStatus::Overloaded);
                    }
                }
                None => {
                    self.ctx.restore_request(h, req);
                    let _ = self
                        .ctx
                        .respond_status(h, MsgBuf::new(0), RespStatus::NoHandler);
                }
            }
        }
    }

    fn deliver_completions(&mut self) {
        if let Some(cont) = self.continuation.as_mut() {
            while let Some(c) = self.ctx.completions.pop_front() {
                cont(&mut self.state, &mut self.ctx, c);
            }
            // Continuations may have queued requests, and handlers may not have run on
            // requests that arrived meanwhile: both happen in this same iteration.
        }
    }

    fn flush_tx(&mut self) {
        let mut start = 0;
        let mut skipped = 0;
        let total = self.ctx.txq.len();
        while start < total {
            let mut pkts: [TxPkt<'_>; TX_BATCH] = [TxPkt {
                route: 0,
                hdr: &[],
                data: &[],
            }; TX_BATCH];
            let mut n = 0;
            let mut i = start;
            while i < total && n < TX_BATCH {
                if let Some(item) = self.ctx.txq.get(i) {
                    match self.ctx.tx_view(item) {
                        Some((hdr, data)) => {
                            pkts[n] = TxPkt {
                                route: item.route,
                                hdr,
                                data,
                            };
                            n += 1;
                        }
                        None => skipped += 1,
                    }
                }
                i += 1;
            }
            start = i;
            if n > 0 {
                if let Err(e) = self.transport.tx_burst(&pkts[..n]) {
                    tracing::debug!(error = %e, "transmit failed; loss recovery will resend");
                }
            }
        }
        self.ctx.txq.clear();
        self.ctx.stats.tx_skipped += skipped;
    }

    fn flush_sm(&mut self) {
        if self.ctx.sm_out.is_empty() {
            return;
        }
        let channel = self.nexus.router().channel().clone();
        for (to, msg) in self.ctx.sm_out.drain(..) {
            self.ctx.stats.sm_tx += 1;
            channel.send(&to, &msg);
        }
    }

    fn flush_routes(&mut self) {
        for r in self.ctx.routes_to_free.drain(..) {
            self.transport.route_free(r);
        }
        if !self.ctx.liveness_changes.is_empty() {
            let router = self.nexus.router();
            for (session, token) in self.ctx.liveness_changes.drain(..) {
                router.set_live(self.ctx.rpc_id, session, token);
            }
        }
    }
}

impl<T: Transport, S> Drop for Rpc<T, S> {
    fn drop(&mut self) {
        self.nexus.router().unregister(self.ctx.rpc_id);
    }
}
