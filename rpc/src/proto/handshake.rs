//! Session management: the connect and disconnect handshakes at both ends, with the route
//! operations they ask of the transport, and the end of a session.
//!
//! Client: `connect` admits the session locally (session limit, ring share) and asks for the
//! local end of a route ([`Event::AllocRoute`]); with it, the ConnectReq goes out, carrying the
//! local routing info, and is resent every `sm_retry` until a ConnectResp with this attempt's
//! token and `seq` arrives or `connect_timeout` passes. An `Ok` answer is checked, the server's
//! routing info resolved ([`Event::ResolveRoute`]), and the session is `Connected`; requests
//! queued meanwhile start. Late or duplicate answers match no attempt and are ignored.
//!
//! Server: a ConnectReq is checked (a retry of an accepted connect is answered again; then
//! per-peer limit, transport, parameters, admission); an accepted one creates the server end,
//! which waits for its route to be allocated and resolved before the ConnectResp `Ok` goes
//! out and the end becomes live. Refusals leave no state behind, so a retry is judged afresh.
//!
//! Disconnect is the client's, only for an idle session: a DisconnectReq, retried like a
//! connect, frees the server end; the DisconnectResp (any status) or the timeout frees the
//! client end. See `docs/PROTOCOL.md` §6.

use transports::{RouteId, RoutingInfo, TransportKind};

use crate::config::check_session_params;
use crate::pkthdr::HDR_SIZE;
use crate::sm::{SmAddr, SmMsg, SmStatus, SmType};
use crate::RpcError;

use super::client::{ClientSession, ClientState};
use super::credits::Credits;
use super::event::{Event, RouteOp};
use super::liveness::Liveness;
use super::server::ServerSession;
use super::session::{ConnectFailure, Session, SessionId};
use super::timer::Timer;
use super::Endpoint;

/// Where a connecting client end is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ConnectStep {
    /// Waiting for the local end of its route.
    LocalRoute,
    /// The ConnectReq is out (and retried); waiting for the answer.
    AwaitResp,
    /// Accepted by the server; waiting for the server's routing info to be resolved.
    ResolveRoute,
}

/// The SM exchange (connect or disconnect) a client end has under way.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SmExchange {
    /// Random id of this attempt; answers must echo it.
    pub seq: u64,
    /// When to resend the request (`u64::MAX`: not now).
    pub retry_at: u64,
    /// When the exchange fails.
    pub deadline: u64,
}

/// Who asked for a server end: (SM address, client Rpc, client session, client token).
pub(crate) type ConnKey = (SmAddr, u8, u32, u32);

impl Endpoint {
    /// Admission of a new session end with `credits`: the session limit and the ring.
    fn admit(&self, credits: u32) -> Result<(), SmStatus> {
        if self.sessions.len() >= self.p.max_sessions {
            return Err(SmStatus::TooManySessions);
        }
        if !self.ring.fits(credits) {
            return Err(SmStatus::RingExhausted);
        }
        Ok(())
    }

    fn new_route_op(&mut self, session: SessionId) -> RouteOp {
        self.route_seq = self.route_seq.wrapping_add(1);
        RouteOp {
            session,
            seq: self.route_seq,
        }
    }

    /// Starts opening a session to Rpc `remote_rpc` of the Nexus at `remote`; returns its
    /// number at once. Fails synchronously when this endpoint cannot admit another session
    /// (`TooManySessions`, `RingExhausted`). The session asks for its route with
    /// [`Event::AllocRoute`]; requests enqueued before it is connected wait in its backlog.
    pub fn connect(
        &mut self,
        now: u64,
        remote: SmAddr,
        remote_rpc: u8,
    ) -> Result<SessionId, RpcError> {
        let p = self.p;
        self.admit(p.credits).map_err(|e| match e {
            SmStatus::RingExhausted => RpcError::RingExhausted,
            _ => RpcError::TooManySessions,
        })?;
        let token = self.rand32();
        let sm = SmExchange {
            seq: u64::from(self.rand32()),
            retry_at: u64::MAX,
            deadline: now.saturating_add(p.connect_timeout),
        };
        let sid = self.sessions.insert(|id| {
            Session::Client(Box::new(ClientSession::new(
                id, remote, remote_rpc, token, sm, &p, now,
            )))
        });
        self.ring.reserve(p.credits);
        self.ask_local_route(sid);
        if let Some(c) = self.sessions.client_mut(sid) {
            c.timers.set(Timer::Handshake, sm.deadline);
        }
        self.schedule(sid);
        Ok(sid)
    }

    fn ask_local_route(&mut self, sid: SessionId) {
        let op = self.new_route_op(sid);
        if let Some(c) = self.sessions.client_mut(sid) {
            c.route_op = Some(op);
            c.state = ClientState::Connecting(ConnectStep::LocalRoute);
            self.out.event(Event::AllocRoute { op });
        }
    }

    /// Reopens a failed client session — after a peer failure, or a failed connect — with a
    /// new handshake and a new token. Requests may be enqueued while it connects. On a
    /// reliable (connection-oriented) transport the session's old route is released and a
    /// new one asked for ([`Event::FreeRoute`], [`Event::AllocRoute`]); on a datagram one the
    /// route is kept.
    pub fn reconnect(&mut self, now: u64, sid: SessionId) -> Result<(), RpcError> {
        let p = self.p;
        match self.sessions.client(sid) {
            None => return Err(RpcError::InvalidSession(sid)),
            Some(c) if !matches!(c.state, ClientState::Failed(_)) => {
                return Err(RpcError::Config(format!(
                    "session {sid} is not failed; only failed sessions reconnect"
                )))
            }
            Some(_) => {}
        }
        // The session itself is already counted; only its ring share is admitted again.
        if !self.ring.fits(p.credits) {
            return Err(RpcError::RingExhausted);
        }
        let token = self.rand32();
        let seq = u64::from(self.rand32());
        let Some(c) = self.sessions.client_mut(sid) else {
            return Err(RpcError::InvalidSession(sid));
        };
        c.local_token = token;
        c.sm = SmExchange {
            seq,
            retry_at: u64::MAX,
            deadline: now.saturating_add(p.connect_timeout),
        };
        c.credits = Credits::new(p.credits);
        c.dpp = p.max_pkt.saturating_sub(HDR_SIZE);
        c.max_msg = p.max_msg;
        c.remote_session = 0;
        c.remote_token = 0;
        c.live = Liveness::new(now);
        c.timers.set(Timer::Handshake, c.sm.deadline);
        // A connection-oriented route (a TCP link, an RC queue pair) served the old session
        // and cannot be resolved again to the peer's new end: a reconnect takes a new one. A
        // datagram route is just the peer's address and is kept.
        let old_route = if p.reliable { c.route.take() } else { None };
        let has_route = c.route.is_some();
        if let Some((route, _)) = old_route {
            self.release_route(route);
        }
        self.ring.reserve(p.credits);
        if has_route {
            self.send_connect_req(sid, now);
        } else {
            self.ask_local_route(sid);
        }
        self.schedule(sid);
        Ok(())
    }

    /// Starts closing a client session; only without requests pending (`SessionBusy`). A
    /// connected session sends a DisconnectReq and is gone when the server confirms or the
    /// connect timeout passes; a connecting or failed one is freed at once.
    pub fn disconnect(&mut self, now: u64, sid: SessionId) -> Result<(), RpcError> {
        let p = self.p;
        let c = self
            .sessions
            .client_mut(sid)
            .ok_or(RpcError::InvalidSession(sid))?;
        if c.pending() > 0 {
            return Err(RpcError::SessionBusy(sid));
        }
        match c.state {
            ClientState::Connected => {
                c.state = ClientState::Disconnecting;
                c.sm.retry_at = now.saturating_add(p.sm_retry);
                c.sm.deadline = now.saturating_add(p.connect_timeout);
                c.timers
                    .set(Timer::Handshake, c.sm.retry_at.min(c.sm.deadline));
                c.timers.stop(Timer::Retransmit);
                // The peer is not watched while the session closes; the handshake timer
                // bounds how long that takes.
                c.timers.stop(Timer::Liveness);
                if let Some((to, m)) = self.client_sm_msg(sid) {
                    self.out.send_sm(to, m);
                }
                self.schedule(sid);
            }
            ClientState::Disconnecting => {}
            ClientState::Connecting(_) | ClientState::Failed(_) => self.free_client(sid),
        }
        Ok(())
    }

    /// The answer to [`Event::AllocRoute`]: the new route and its local routing info, or
    /// `None` if the transport could not make one.
    pub fn route_allocated(
        &mut self,
        now: u64,
        op: RouteOp,
        route: Option<(RouteId, RoutingInfo)>,
    ) {
        let sid = op.session;
        let resolve_op = self.new_route_op(sid);
        match self.sessions.get_mut(sid) {
            Some(Session::Client(c)) if c.route_op == Some(op) => {
                c.route_op = None;
                match route {
                    Some(r) => {
                        c.route = Some(r);
                        self.routes.insert(r.0, sid);
                        self.send_connect_req(sid, now);
                    }
                    None => {
                        tracing::warn!(session = sid, "route allocation failed");
                        self.fail_client(sid, ConnectFailure::RoutingResolution);
                    }
                }
            }
            Some(Session::Server(s)) if s.route_op == Some(op) => {
                s.route_op = None;
                let peer = s.accepting.as_ref().map(|a| a.req.routing);
                match (route, peer) {
                    (Some((route, info)), Some(peer)) => {
                        s.route = Some((route, info));
                        self.routes.insert(route, sid);
                        s.route_op = Some(resolve_op);
                        self.out.event(Event::ResolveRoute {
                            op: resolve_op,
                            route,
                            info: peer,
                        });
                    }
                    (route, _) => {
                        if let Some((route, _)) = route {
                            self.out.event(Event::FreeRoute { route });
                        }
                        tracing::warn!(session = sid, "route allocation failed");
                        self.refuse_accepting(sid, SmStatus::RoutingResolution);
                    }
                }
            }
            _ => {
                // Its session went away meanwhile: give the route back.
                if let Some((route, _)) = route {
                    self.out.event(Event::FreeRoute { route });
                }
            }
        }
        self.schedule(sid);
    }

    /// The answer to [`Event::ResolveRoute`]: whether the route now reaches the peer.
    pub fn route_resolved(&mut self, now: u64, op: RouteOp, ok: bool) {
        let sid = op.session;
        let p = self.p;
        match self.sessions.get_mut(sid) {
            Some(Session::Client(c)) if c.route_op == Some(op) => {
                c.route_op = None;
                if !ok {
                    tracing::warn!(session = sid, "cannot resolve the server's routing info");
                    self.fail_client(sid, ConnectFailure::RoutingResolution);
                } else {
                    c.state = ClientState::Connected;
                    c.live = Liveness::new(now);
                    c.timers.stop(Timer::Handshake);
                    // Requests queued while connecting now go out, up to the window.
                    c.start_backlog(now, &p, &mut self.out);
                    self.arm_liveness(sid);
                }
            }
            Some(Session::Server(s)) if s.route_op == Some(op) => {
                s.route_op = None;
                if !ok {
                    tracing::warn!(session = sid, "cannot resolve a client's routing info");
                    self.refuse_accepting(sid, SmStatus::RoutingResolution);
                } else if let Some(a) = s.accepting.take() {
                    s.live = Liveness::new(now);
                    let token = s.local_token;
                    let to = s.client.clone();
                    let reply = connect_reply(p.kind, s, &a.req);
                    self.out.event(Event::SessionUp {
                        session: sid,
                        token,
                    });
                    if let Some(reply) = reply {
                        self.out.send_sm(to, reply);
                    }
                    self.arm_liveness(sid);
                }
            }
            // Its session went away or moved on; the route goes with the session.
            _ => {}
        }
        self.schedule(sid);
    }

    /// Sends (or resends) the ConnectReq of a client end that has its route.
    fn send_connect_req(&mut self, sid: SessionId, now: u64) {
        let retry = self.p.sm_retry;
        let Some(c) = self.sessions.client_mut(sid) else {
            return;
        };
        c.state = ClientState::Connecting(ConnectStep::AwaitResp);
        c.sm.retry_at = now.saturating_add(retry);
        c.timers
            .set(Timer::Handshake, c.sm.retry_at.min(c.sm.deadline));
        if !c.advertised {
            // The server end this request creates may ping before its answer gets here.
            c.advertised = true;
            self.out.event(Event::SessionUp {
                session: sid,
                token: c.local_token,
            });
        }
        if let Some((to, m)) = self.client_sm_msg(sid) {
            self.out.send_sm(to, m);
        }
    }

    /// The SM message describing client end `sid`: its DisconnectReq while disconnecting, its
    /// ConnectReq otherwise (liveness retypes it into a ping). `None` before it has a route.
    pub(crate) fn client_sm_msg(&self, sid: SessionId) -> Option<(SmAddr, SmMsg)> {
        let c = self.sessions.client(sid)?;
        let (_, routing) = c.route?;
        let msg_type = match c.state {
            ClientState::Disconnecting => SmType::DisconnectReq,
            _ => SmType::ConnectReq,
        };
        Some((
            c.remote.clone(),
            SmMsg {
                msg_type,
                transport: self.p.kind,
                status: SmStatus::Ok,
                client_rpc: self.p.rpc_id,
                server_rpc: c.remote_rpc,
                client_session: sid,
                server_session: c.remote_session,
                client_token: c.local_token,
                server_token: c.remote_token,
                seq: c.sm.seq,
                max_pkt_size: self.p.max_pkt as u32,
                max_msg_size: self.p.max_msg as u32,
                credits: self.p.credits,
                window: c.slots.len() as u32,
                routing,
            },
        ))
    }

    /// The handshake timer of client end `sid` fired: retry, or give up.
    pub(crate) fn on_handshake_timer(&mut self, sid: SessionId, now: u64) {
        let retry = self.p.sm_retry;
        let Some(c) = self.sessions.client_mut(sid) else {
            return;
        };
        let retries = match c.state {
            ClientState::Connecting(step) => step == ConnectStep::AwaitResp,
            ClientState::Disconnecting => true,
            _ => {
                c.timers.stop(Timer::Handshake);
                return;
            }
        };
        if now >= c.sm.deadline {
            match c.state {
                ClientState::Disconnecting => {
                    // The server did not confirm; its end will be reclaimed by its failure
                    // detection.
                    self.free_client(sid);
                }
                _ => self.fail_client(sid, ConnectFailure::Timeout),
            }
            return;
        }
        if retries && now >= c.sm.retry_at {
            c.sm.retry_at = now.saturating_add(retry);
            if let Some((to, m)) = self.client_sm_msg(sid) {
                self.out.send_sm(to, m);
            }
        }
        if let Some(c) = self.sessions.client_mut(sid) {
            let next = if retries {
                c.sm.retry_at.min(c.sm.deadline)
            } else {
                c.sm.deadline
            };
            c.timers.set(Timer::Handshake, next);
        }
    }

    /// A connect failed: the session keeps its number in `Failed(why)`, its ring share is
    /// released, and its backlog completes with the matching error.
    pub(crate) fn fail_client(&mut self, sid: SessionId, why: ConnectFailure) {
        let p = self.p;
        let Some(c) = self.sessions.client_mut(sid) else {
            return;
        };
        c.state = ClientState::Failed(why);
        c.route_op = None;
        if std::mem::take(&mut c.advertised) {
            self.out.event(Event::SessionDown { session: sid });
        }
        c.timers.stop(Timer::Handshake);
        c.timers.stop(Timer::Deadline);
        self.ring.release(p.credits);
        let remote_rpc = c.remote_rpc;
        let pending: Vec<_> = c.backlog.drain(..).collect();
        c.backlog_min_deadline = u64::MAX;
        for r in pending {
            c.fail_pending(r, why.to_error(remote_rpc), &mut self.out);
        }
    }

    /// Frees a client end: its number, its ring share (unless failed), its route.
    pub(crate) fn free_client(&mut self, sid: SessionId) {
        let Some(Session::Client(c)) = self.sessions.remove(sid) else {
            return;
        };
        if c.advertised {
            self.out.event(Event::SessionDown { session: sid });
        }
        if !matches!(c.state, ClientState::Failed(_)) {
            self.ring.release(self.p.credits);
        }
        if let Some((route, _)) = c.route {
            self.release_route(route);
        }
        let ClientSession { slots, backlog, .. } = *c;
        for b in slots.into_iter().flat_map(|s| [s.req, s.resp]).flatten() {
            self.out.pool.free(b);
        }
        for r in backlog {
            self.out.pool.free(r.req);
        }
    }

    /// Gives a session end's route back to the transport ([`Event::FreeRoute`]); it names no
    /// session end from now on.
    pub(crate) fn release_route(&mut self, route: RouteId) {
        self.routes.remove(&route);
        self.out.event(Event::FreeRoute { route });
    }

    /// Handles a ConnectReq (server side).
    pub(crate) fn on_connect_req(&mut self, now: u64, from: SmAddr, msg: SmMsg) {
        let key: ConnKey = (
            from.clone(),
            msg.client_rpc,
            msg.client_session,
            msg.client_token,
        );
        if let Some(&sid) = self.conn_index.get(&key) {
            // A retry of a connect we accepted: answer the same way again (or, while the end
            // still waits for its route, let the coming answer do).
            if let Some(reply) = self
                .sessions
                .server(sid)
                .filter(|s| s.is_live())
                .and_then(|s| connect_reply(self.p.kind, s, &msg))
            {
                self.out.send_sm(from, reply);
            }
            return;
        }
        let refused = if self.peer_sessions.get(&from).copied().unwrap_or(0)
            >= self.p.max_sessions_per_peer
        {
            Some(SmStatus::TooManySessions)
        } else if msg.transport != self.p.kind {
            Some(SmStatus::TransportMismatch)
        } else if check_session_params(msg.window as usize, msg.credits).is_err()
            || (msg.max_pkt_size as usize) < HDR_SIZE + 1
        {
            Some(SmStatus::BadConfig)
        } else {
            self.admit(msg.credits).err()
        };
        if let Some(status) = refused {
            self.out.stats.connects_refused += 1;
            self.out.send_sm(from, msg.reply(status));
            return;
        }
        let token = self.rand32();
        let (max_pkt, max_msg) = (self.p.max_pkt, self.p.max_msg);
        let sid = self.sessions.insert(|id| {
            Session::Server(Box::new(ServerSession::new(
                id,
                from.clone(),
                &msg,
                token,
                max_pkt,
                max_msg,
                now,
            )))
        });
        self.ring.reserve(msg.credits);
        self.conn_index.insert(key, sid);
        *self.peer_sessions.entry(from).or_insert(0) += 1;
        let op = self.new_route_op(sid);
        if let Some(s) = self.sessions.server_mut(sid) {
            s.route_op = Some(op);
        }
        self.out.event(Event::AllocRoute { op });
    }

    /// Refuses the connect of a server end still waiting for its route, and frees it.
    fn refuse_accepting(&mut self, sid: SessionId, status: SmStatus) {
        let Some(s) = self.sessions.server(sid) else {
            return;
        };
        if let Some(a) = s.accepting.as_ref() {
            let reply = a.req.reply(status);
            let to = s.client.clone();
            self.out.stats.connects_refused += 1;
            self.out.send_sm(to, reply);
        }
        self.free_server(sid);
    }

    /// Handles a DisconnectReq (server side).
    pub(crate) fn on_disconnect_req(&mut self, from: SmAddr, msg: SmMsg) {
        let sid = msg.server_session;
        let matches = self.sessions.server(sid).map(|s| {
            s.local_token == msg.server_token
                && s.client == from
                && s.client_session == msg.client_session
        });
        let status = match matches {
            Some(true) => {
                // A normal end of a session, unlike a reaped one (liveness logs that at INFO).
                tracing::debug!(session = sid, "client closed its session");
                self.free_server(sid);
                SmStatus::Ok
            }
            Some(false) => SmStatus::InvalidSession,
            // Already gone (a retry after our answer was lost): confirm again.
            None => SmStatus::Ok,
        };
        self.out.send_sm(from, msg.reply(status));
    }

    /// Handles a ConnectResp (client side).
    pub(crate) fn on_connect_resp(&mut self, msg: SmMsg) {
        let sid = msg.client_session;
        let awaited = self.sessions.client(sid).is_some_and(|c| {
            c.state == ClientState::Connecting(ConnectStep::AwaitResp)
                && c.local_token == msg.client_token
                && c.sm.seq == msg.seq
        });
        if !awaited {
            return;
        }
        let failure = match msg.status {
            SmStatus::Ok => None,
            SmStatus::NoSuchRpc => Some(ConnectFailure::NoSuchRemoteRpc),
            SmStatus::TooManySessions => Some(ConnectFailure::TooManySessions),
            SmStatus::RingExhausted => Some(ConnectFailure::RingExhausted),
            SmStatus::TransportMismatch => Some(ConnectFailure::TransportMismatch),
            SmStatus::RoutingResolution => Some(ConnectFailure::RoutingResolution),
            SmStatus::BadConfig | SmStatus::InvalidSession => Some(ConnectFailure::BadConfig),
        };
        if let Some(f) = failure {
            self.fail_client(sid, f);
            return;
        }
        let max_pkt = msg.max_pkt_size as usize;
        if max_pkt <= HDR_SIZE || max_pkt > self.p.max_pkt {
            self.fail_client(sid, ConnectFailure::BadConfig);
            return;
        }
        let op = self.new_route_op(sid);
        let Some(c) = self.sessions.client_mut(sid) else {
            return;
        };
        let Some((route, _)) = c.route else {
            self.fail_client(sid, ConnectFailure::RoutingResolution);
            return;
        };
        c.remote_session = msg.server_session;
        c.remote_token = msg.server_token;
        c.dpp = max_pkt - HDR_SIZE;
        c.max_msg = c.max_msg.min(msg.max_msg_size as usize);
        c.state = ClientState::Connecting(ConnectStep::ResolveRoute);
        c.route_op = Some(op);
        self.out.event(Event::ResolveRoute {
            op,
            route,
            info: msg.routing,
        });
    }

    /// Handles a DisconnectResp (client side): frees the session whatever the status.
    pub(crate) fn on_disconnect_resp(&mut self, msg: SmMsg) {
        let sid = msg.client_session;
        let awaited = self.sessions.client(sid).is_some_and(|c| {
            matches!(c.state, ClientState::Disconnecting)
                && c.local_token == msg.client_token
                && c.sm.seq == msg.seq
        });
        if awaited {
            self.free_client(sid);
        }
    }

    /// Frees a server end and everything it holds: ring share, connection key, route,
    /// buffers.
    pub(crate) fn free_server(&mut self, sid: SessionId) {
        let Some(Session::Server(s)) = self.sessions.remove(sid) else {
            return;
        };
        if s.is_live() {
            self.out.event(Event::SessionDown { session: sid });
        }
        self.ring.release(s.credits);
        self.conn_index.remove(&(
            s.client.clone(),
            s.client_rpc,
            s.client_session,
            s.client_token,
        ));
        if let Some(n) = self.peer_sessions.get_mut(&s.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.peer_sessions.remove(&s.client);
            }
        }
        if let Some((route, _)) = s.route {
            self.release_route(route);
        }
        s.free_buffers(&mut self.out);
    }
}

/// The successful ConnectResp of server end `s` (on a `kind` transport) to the ConnectReq
/// `req`; `None` before the end has its route.
fn connect_reply(kind: TransportKind, s: &ServerSession, req: &SmMsg) -> Option<SmMsg> {
    let (_, routing) = s.route?;
    Some(SmMsg {
        server_session: s.id,
        server_token: s.local_token,
        max_pkt_size: (s.dpp + HDR_SIZE) as u32,
        max_msg_size: s.max_msg as u32,
        routing,
        transport: kind,
        ..req.reply(SmStatus::Ok)
    })
}
