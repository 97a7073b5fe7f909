//! Liveness: when a session end pings its peer, when it declares the peer failed, and how a
//! peer's Nexus answers a ping.
//!
//! With `RpcConfig::failure_timeout = Some(T)`, each live session end remembers when it last
//! heard from its peer (any valid datapath packet of the session, or an `Ok` pong). An end that
//! has heard nothing for `T / 4` pings the peer over the SM channel, at most once per `T / 4`.
//! It declares the peer failed when a pong says anything but `Ok` (at once), or when it has
//! heard nothing for `T` *and* the first ping of this silence went out at least `3T / 4` ago:
//! silence alone is not enough, since this end may itself have been paused; it must have asked.
//! A failed client end is reset, a failed server end is freed (`handshake.rs`).
//!
//! Pings are answered by the peer's *Nexus*, not by its Rpc, from the table of live session
//! ends the runtime keeps from [`Event::SessionUp`](super::Event::SessionUp) and
//! [`Event::SessionDown`](super::Event::SessionDown) /
//! [`Event::SessionReset`](super::Event::SessionReset): liveness means "the process and
//! the Rpc exist", so an application may stop polling for a while without losing its sessions.
//! [`answer_ping`] is that answer; the runtime's table (`runtime/liveness.rs`) and the test
//! harnesses both use it.

use transports::RouteId;

use crate::sm::{SmMsg, SmStatus, SmType};

use super::client::ClientState;
use super::event::Event;
use super::server::ServerSession;
use super::timer::Timer;
use super::Endpoint;

/// What one end knows about its peer's liveness (times in ns).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Liveness {
    last_heard: u64,
    last_ping: u64,
    /// When the first ping of the current silence went out (ignored if `<= last_heard`).
    probe_since: u64,
}

/// What a liveness check decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to do.
    Alive,
    /// Send a ping.
    Ping,
    /// The peer failed.
    Failed,
}

impl Liveness {
    /// Fresh: the peer counts as heard from at `now`.
    pub(crate) fn new(now: u64) -> Self {
        Self {
            last_heard: now,
            last_ping: now,
            probe_since: 0,
        }
    }

    /// The peer was heard from at `now`.
    pub(crate) fn heard(&mut self, now: u64) {
        self.last_heard = now;
    }

    /// Whether a ping went out during the current silence at least `3T / 4` ago.
    fn probe_expired(&self, now: u64, timeout: u64) -> bool {
        self.probe_since > self.last_heard
            && now.saturating_sub(self.probe_since) >= timeout / 4 * 3
    }

    /// Decides at `now` with failure timeout `timeout`; a `Ping` verdict is recorded as sent.
    pub(crate) fn check(&mut self, now: u64, timeout: u64) -> Verdict {
        let interval = timeout / 4;
        let silent = now.saturating_sub(self.last_heard);
        if silent >= timeout && self.probe_expired(now, timeout) {
            return Verdict::Failed;
        }
        if silent >= interval && now.saturating_sub(self.last_ping) >= interval {
            self.last_ping = now;
            if self.probe_since <= self.last_heard {
                self.probe_since = now;
            }
            return Verdict::Ping;
        }
        Verdict::Alive
    }

    /// The earliest time [`Liveness::check`] can decide anything but `Alive`, as things stand.
    pub(crate) fn next_check(&self, timeout: u64) -> u64 {
        let interval = timeout / 4;
        let ping = self.last_heard.max(self.last_ping).saturating_add(interval);
        if self.probe_since > self.last_heard {
            let fail = self
                .last_heard
                .saturating_add(timeout)
                .max(self.probe_since.saturating_add(timeout / 4 * 3));
            ping.min(fail)
        } else {
            ping
        }
    }
}

/// The target of a ping: (Rpc id, session number, token) of the addressed session end.
pub fn ping_target(ping: &SmMsg) -> (u8, u32, u32) {
    match ping.msg_type {
        SmType::ClientPing => (ping.server_rpc, ping.server_session, ping.server_token),
        _ => (ping.client_rpc, ping.client_session, ping.client_token),
    }
}

/// The pong a Nexus answers `ping` with: `NoSuchRpc` if the addressed Rpc does not exist,
/// `Ok` if the addressed session end is live with the token the ping carries (`live_token`
/// is the token of that end if it is live), `InvalidSession` otherwise.
pub fn answer_ping(ping: &SmMsg, rpc_exists: bool, live_token: Option<u32>) -> SmMsg {
    let (_, _, token) = ping_target(ping);
    let status = if !rpc_exists {
        SmStatus::NoSuchRpc
    } else if live_token == Some(token) {
        SmStatus::Ok
    } else {
        SmStatus::InvalidSession
    };
    ping.reply(status)
}

impl Endpoint {
    /// The liveness timer of session `sid` fired.
    pub(crate) fn on_liveness_timer(&mut self, sid: u32, now: u64) {
        let Some(timeout) = self.p.failure_timeout else {
            return;
        };
        let verdict = match self.sessions.get_mut(sid) {
            Some(super::Session::Client(c)) if c.is_connected() => c.live.check(now, timeout),
            Some(super::Session::Server(s)) if s.is_live() => s.live.check(now, timeout),
            // Not (or no longer) an end whose peer is watched: the timer stops.
            _ => Verdict::Alive,
        };
        match (verdict, self.sessions.client(sid).is_some()) {
            (Verdict::Failed, true) => {
                tracing::info!(session = sid, "peer failed: resetting the session");
                self.reset_client(sid, now);
            }
            (Verdict::Failed, false) => {
                tracing::info!(session = sid, "client failed: freeing its session");
                self.out.stats.server_sessions_reaped += 1;
                self.free_server(sid);
            }
            (Verdict::Ping, true) => {
                if let Some((to, mut m)) = self.client_sm_msg(sid) {
                    m.msg_type = SmType::ClientPing;
                    self.out.stats.pings_sent += 1;
                    self.out.send_sm(to, m);
                }
            }
            (Verdict::Ping, false) => {
                if let Some((to, m)) = self.sessions.server(sid).and_then(|s| self.server_ping(s)) {
                    self.out.stats.pings_sent += 1;
                    self.out.send_sm(to, m);
                }
            }
            (Verdict::Alive, _) => {}
        }
        self.arm_liveness(sid);
    }

    /// Sets the liveness timer of a live end for its next check (stops it otherwise).
    pub(crate) fn arm_liveness(&mut self, sid: u32) {
        let timeout = self.p.failure_timeout;
        let (live, timers) = match self.sessions.get_mut(sid) {
            Some(super::Session::Client(c)) => (c.is_connected().then_some(c.live), &mut c.timers),
            Some(super::Session::Server(s)) => (s.is_live().then_some(s.live), &mut s.timers),
            None => return,
        };
        match (live, timeout) {
            (Some(l), Some(t)) => timers.set(Timer::Liveness, l.next_check(t)),
            _ => timers.stop(Timer::Liveness),
        }
    }

    fn server_ping(&self, s: &ServerSession) -> Option<(crate::sm::SmAddr, SmMsg)> {
        let (_, routing) = s.route?;
        let m = SmMsg {
            msg_type: SmType::ServerPing,
            transport: self.p.kind,
            status: SmStatus::Ok,
            client_rpc: s.client_rpc,
            server_rpc: self.p.rpc_id,
            client_session: s.client_session,
            server_session: s.id,
            client_token: s.client_token,
            server_token: s.local_token,
            seq: 0,
            max_pkt_size: (s.dpp + crate::pkthdr::HDR_SIZE) as u32,
            max_msg_size: s.max_msg as u32,
            credits: s.credits,
            window: s.slots.len() as u32,
            routing,
        };
        Some((s.client.clone(), m))
    }

    /// A pong arrived: the peer is alive (`Ok`), or it lost the session or the Rpc.
    pub(crate) fn on_pong(&mut self, now: u64, msg: SmMsg) {
        match msg.msg_type {
            SmType::ServerPong => {
                let sid = msg.client_session;
                let matches = self.sessions.client(sid).is_some_and(|c| {
                    c.local_token == msg.client_token
                        && c.remote_session == msg.server_session
                        && c.is_connected()
                });
                if !matches {
                    return;
                }
                if msg.status == SmStatus::Ok {
                    if let Some(c) = self.sessions.client_mut(sid) {
                        c.live.heard(now);
                    }
                } else {
                    tracing::info!(session = sid, status = ?msg.status, "server lost the session");
                    self.reset_client(sid, now);
                }
            }
            SmType::ClientPong => {
                let sid = msg.server_session;
                let matches = self.sessions.server(sid).is_some_and(|s| {
                    s.local_token == msg.server_token
                        && s.client_session == msg.client_session
                        && s.is_live()
                });
                if !matches {
                    return;
                }
                if msg.status == SmStatus::Ok {
                    if let Some(s) = self.sessions.server_mut(sid) {
                        s.live.heard(now);
                    }
                } else {
                    self.out.stats.server_sessions_reaped += 1;
                    self.free_server(sid);
                }
            }
            _ => {}
        }
    }

    /// The route of session end `sid` failed (see `Endpoint::handle_route_failure`).
    pub(crate) fn on_route_failure(&mut self, sid: u32, route: RouteId, now: u64) {
        let client_state = match self.sessions.get(sid) {
            Some(super::Session::Client(c)) => Some(c.state),
            Some(super::Session::Server(_)) => None,
            None => return,
        };
        if !matches!(client_state, Some(ClientState::Failed(_))) {
            self.out.stats.route_failures += 1;
        }
        match client_state {
            None => {
                tracing::info!(
                    session = sid,
                    route,
                    "route to the client failed: freeing its session"
                );
                self.out.stats.server_sessions_reaped += 1;
                self.free_server(sid);
                return;
            }
            Some(ClientState::Connected) => {
                tracing::info!(
                    session = sid,
                    route,
                    "route to the server failed: resetting the session"
                );
                self.reset_client(sid, now);
            }
            Some(ClientState::Disconnecting) => {
                self.free_client(sid);
                return;
            }
            Some(ClientState::Connecting(_)) => {
                tracing::info!(session = sid, route, "route failed while connecting");
                self.fail_client(sid, super::ConnectFailure::RoutingResolution);
            }
            Some(ClientState::Failed(_)) => {}
        }
        // The end stays (failed); its route goes, and a reconnect asks for a new one.
        if let Some(c) = self.sessions.client_mut(sid) {
            if c.route.is_some_and(|(r, _)| r == route) {
                c.route = None;
                self.release_route(route);
            }
        }
    }

    /// A connected client end's peer failed: every pending request completes with
    /// `PeerFailed` (exactly once), and the session waits in `Failed(PeerFailed)` for
    /// `reconnect` or `disconnect`. A disconnecting end is simply freed.
    pub(crate) fn reset_client(&mut self, sid: u32, now: u64) {
        let p = self.p;
        let Some(c) = self.sessions.client_mut(sid) else {
            return;
        };
        match c.state {
            super::client::ClientState::Connected => {}
            super::client::ClientState::Disconnecting => {
                self.free_client(sid);
                return;
            }
            _ => return,
        }
        c.state = super::client::ClientState::Failed(super::ConnectFailure::PeerFailed);
        c.stats.resets += 1;
        c.advertised = false;
        c.timers.stop(Timer::Liveness);
        c.timers.stop(Timer::Retransmit);
        self.out.stats.sessions_reset += 1;
        self.out.event(Event::SessionReset { session: sid });
        self.ring.release(p.credits);
        c.fail_all(|| crate::RpcError::PeerFailed, now, &p, &mut self.out);
        c.timers.stop(Timer::Deadline);
    }
}
