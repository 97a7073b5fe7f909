//! The protocol core driven directly: two `proto::Endpoint`s and the links between them
//! (`common/pair.rs`), in virtual time — no threads, sockets or sleeps. Loss, duplication and
//! reordering of datapath packets and of session-management messages, the connect and
//! disconnect handshakes and their refusals, liveness and failure detection, reset, reconnect,
//! deadlines, cancel, credits, at-most-once execution and the timer queue.

mod common;

use std::time::Duration;

use common::pair::*;
use common::{check, make_request, make_response, parse_request};
use rpc::pkthdr::PktType;
use rpc::sm::SmType;
use rpc::{ConnectFailure, RpcConfig, RpcError, SessionState};
use transports::TransportKind;

const MS: u64 = 1_000_000;
const DPP: usize = MTU - rpc::pkthdr::HDR_SIZE;

fn cfg() -> RpcConfig {
    RpcConfig {
        failure_timeout: None,
        ..RpcConfig::default()
    }
}

/// A configuration with failure detection after `ms` milliseconds.
fn live_cfg(ms: u64) -> RpcConfig {
    RpcConfig {
        failure_timeout: Some(Duration::from_millis(ms)),
        ..RpcConfig::default()
    }
}

/// A server handler answering `common::make_request` messages with `make_response`.
fn pattern_server(p: &mut Pair) {
    p.server.handler = Box::new(|_, data| {
        let (id, resp) = parse_request(data).expect("an intact request");
        Some(make_response(id, resp as usize))
    });
}

/// Enqueues `(id, size, response size)` requests and checks that each completes exactly once
/// with its response and that the server ran each handler exactly once.
fn exchange(p: &mut Pair, s: u32, reqs: &[(u64, usize, u32)], budget_ns: u64) {
    pattern_server(p);
    for &(id, size, resp) in reqs {
        p.enqueue(s, &make_request(id, size, resp), id).unwrap();
    }
    let done = p.completions(reqs.len(), budget_ns);
    let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    let mut want: Vec<u64> = reqs.iter().map(|r| r.0).collect();
    want.sort_unstable();
    assert_eq!(tags, want, "each request completes exactly once");
    for c in &done {
        let r = c.result.as_ref().expect("request succeeded");
        let (_, _, resp) = reqs.iter().find(|q| q.0 == c.tag).unwrap();
        assert_eq!(r.len(), *resp as usize, "response size of {}", c.tag);
        assert!(check(r.as_slice(), !c.tag), "response payload of {}", c.tag);
    }
    for &(id, size, resp) in reqs {
        assert_eq!(
            p.server.runs.get(&make_request(id, size, resp)),
            Some(&1),
            "the handler of {id} ran once"
        );
    }
}

/// The one server end of the pair.
fn server_session(p: &Pair) -> u32 {
    let ids: Vec<u32> = p.server.live.keys().copied().collect();
    assert_eq!(ids.len(), 1, "one live server end");
    ids[0]
}

// ---------------------------------------------------------------------- handshake, data

#[test]
fn connect_takes_one_round_trip_and_requests_flow() {
    let mut p = Pair::new(cfg(), cfg(), 1);
    let s = p.connect();
    assert_eq!(
        p.now,
        2 * p.to_server.delay,
        "connected after one round trip"
    );
    assert_eq!(p.client.events_of(s), (1, 0, 0));
    let ss = server_session(&p);
    assert_eq!(p.server.events_of(ss), (1, 0, 0));
    assert_eq!(p.client.routes.resolved.len(), 1);
    assert_eq!(p.server.routes.resolved.len(), 1);
    p.enqueue(s, b"hello", 7).unwrap();
    let done = p.completions(1, MS);
    assert_eq!(done[0].tag, 7);
    assert_eq!(done[0].result.as_ref().unwrap().as_slice(), b"hello");
    assert_eq!(p.client.ep.stats().retransmissions, 0);
}

#[test]
fn multi_packet_requests_and_responses_use_credit_returns_and_rfrs() {
    let mut p = Pair::new(cfg(), cfg(), 2);
    let s = p.connect();
    let sizes = [12, DPP - 1, DPP, DPP + 1, 2 * DPP + 1, 40 * DPP + 7];
    let mut reqs = Vec::new();
    for (i, &a) in sizes.iter().enumerate() {
        for (j, &b) in sizes.iter().enumerate() {
            reqs.push(((i * 10 + j) as u64, a, b as u32));
        }
    }
    exchange(&mut p, s, &reqs, 10_000 * MS);
    assert!(p.to_client.pkt_count(PktType::CreditReturn) > 0);
    assert!(p.to_server.pkt_count(PktType::Rfr) > 0);
    assert!(
        p.client.ep.stats().credit_stalls > 0,
        "40-packet messages hit the credits"
    );
    assert_eq!(
        p.client.ep.stats().retransmissions,
        0,
        "a lossless link never rewinds"
    );
    assert_eq!(
        p.client.ep.session_credits(s),
        Some(32),
        "every credit came back"
    );
}

#[test]
fn lossy_duplicating_reordering_datapath() {
    for seed in testkit::seeds(&[3, 4]) {
        println!("seed {seed} (rerun: TEST_SEEDS={seed} cargo test -p rpc --test proto)");
        let mut p = Pair::new(cfg(), cfg(), seed);
        let s = p.connect();
        let faults = Faults {
            drop: 0.2,
            duplicate: 0.1,
            reorder_ns: 20_000,
            sm_too: false,
        };
        p.to_server.faults = faults;
        p.to_client.faults = faults;
        let reqs: Vec<_> = (0..40u64)
            .map(|i| {
                (
                    i,
                    12 + (i as usize * 977) % 12_000,
                    ((i * 1231) % 9_000) as u32,
                )
            })
            .collect();
        exchange(&mut p, s, &reqs, 600_000 * MS);
        let st = p.client.ep.stats();
        assert!(st.retransmissions > 0, "{st:?}");
        assert!(st.dropped_unexpected + p.server.ep.stats().dropped_unexpected > 0);
    }
}

#[test]
fn lossy_duplicating_reordering_session_management() {
    for seed in testkit::seeds(&[5, 6]) {
        println!("seed {seed} (rerun: TEST_SEEDS={seed} cargo test -p rpc --test proto)");
        let mut p = Pair::new(cfg(), cfg(), seed);
        let faults = Faults {
            drop: 0.3,
            duplicate: 0.2,
            reorder_ns: 300 * MS,
            sm_too: true,
        };
        p.to_server.faults = faults;
        p.to_client.faults = faults;
        let sessions: Vec<u32> = (0..4).map(|_| p.begin_connect()).collect();
        let ok = p.run_until(60_000 * MS, |p| {
            sessions
                .iter()
                .all(|&s| p.client.ep.session_state(s) != Some(SessionState::Connecting))
        });
        assert!(ok);
        for &s in &sessions {
            assert_eq!(p.client.ep.session_state(s), Some(SessionState::Connected));
        }
        assert_eq!(
            p.server.ep.num_sessions(),
            4,
            "retries and duplicates made no extra ends"
        );
        for &s in &sessions {
            exchange(&mut p, s, &[(u64::from(s), 3000, 3000)], 60_000 * MS);
        }
        for &s in &sessions {
            p.client.ep.disconnect(p.now, s).unwrap();
        }
        let ok = p.run_until(60_000 * MS, |p| p.client.ep.num_sessions() == 0);
        assert!(ok, "every disconnect finished");
        // A disconnect gives up after the connect timeout if every answer is lost; then the
        // server end stays until its own failure detection (off here) would reap it.
        let confirmed = p.server.ep.num_sessions();
        assert!(confirmed <= 4);
        assert_eq!(p.client.routes.open(), 0, "the client freed every route");
        for s in &sessions {
            let (up, down, reset) = p.client.events_of(*s);
            assert_eq!((up, down, reset), (1, 1, 0), "session {s}");
        }
    }
}

#[test]
fn at_most_once_under_duplication_and_replay() {
    let mut p = Pair::new(cfg(), cfg(), 7);
    let s = p.connect();
    p.to_server.filter = Some(every(|w| matches!(w, Wire::Data(_)), Fate::Duplicate));
    p.to_client.filter = Some(every(|w| matches!(w, Wire::Data(_)), Fate::Duplicate));
    let reqs: Vec<_> = (0..20u64)
        .map(|i| (i, 1 + (i as usize % 4) * DPP, 2500))
        .collect();
    exchange(&mut p, s, &reqs, 10_000 * MS);
    // Replay every request packet the client ever sent.
    let replay: Vec<Vec<u8>> = p
        .to_server
        .log
        .iter()
        .filter_map(|(_, w)| match w {
            Wire::Data(b) => Some(b.clone()),
            Wire::Sm(..) => None,
        })
        .collect();
    let replayed_reqs = replay
        .iter()
        .filter(|b| Wire::Data(b.to_vec()).is_pkt(PktType::Req))
        .count() as u64;
    let before = p.server.ep.stats();
    for b in replay.iter().cloned() {
        p.inject(Side::Server, b);
    }
    p.run_for(100 * MS);
    for &(id, size, resp) in &reqs {
        assert_eq!(p.server.runs.get(&make_request(id, size, resp)), Some(&1));
    }
    let after = p.server.ep.stats();
    // Replayed request packets are all duplicates (answered from the slot or dropped);
    // replayed RFRs of a slot's current request are answered again.
    assert!(
        after.dropped_unexpected - before.dropped_unexpected >= replayed_reqs,
        "every replayed request packet is recognised as a duplicate"
    );
    assert!(
        p.client.take_completions().is_empty(),
        "no completion twice"
    );
    assert!(
        p.client.ep.stats().dropped_unexpected > 0,
        "duplicate answers dropped"
    );
}

#[test]
fn credit_exhaustion_stalls_and_go_back_n_recovers() {
    let client = RpcConfig {
        credits: 4,
        ..cfg()
    };
    let mut p = Pair::new(client, cfg(), 8);
    let s = p.connect();
    pattern_server(&mut p);
    // The first two rounds of credit returns are lost.
    p.to_client.filter = Some(first(8, |w| w.is_pkt(PktType::CreditReturn), Fate::Drop));
    let req = make_request(1, 40 * DPP, 100);
    p.enqueue(s, &req, 1).unwrap();
    p.run_for(2 * MS);
    assert_eq!(
        p.client.ep.session_credits(s),
        Some(0),
        "four packets out, no credit left"
    );
    assert_eq!(p.to_server.pkt_count(PktType::Req), 4);
    assert!(p.client.ep.stats().credit_stalls > 0);
    let done = p.completions(1, 10_000 * MS);
    assert!(check(done[0].result.as_ref().unwrap().as_slice(), !1));
    assert!(p.client.ep.stats().retransmissions >= 2, "two rewinds");
    assert_eq!(p.client.ep.session_credits(s), Some(4), "credits recovered");
    assert_eq!(p.server.runs.get(&req), Some(&1));
}

// ---------------------------------------------------------------------- SM faults

#[test]
fn lost_connect_requests_are_retried() {
    let mut p = Pair::new(cfg(), cfg(), 9);
    p.to_server.filter = Some(first(2, |w| w.is_sm(SmType::ConnectReq), Fate::Drop));
    let s = p.connect();
    let retry = 100 * MS;
    assert_eq!(
        p.now,
        2 * retry + 2 * p.to_server.delay,
        "connected on the second retry"
    );
    assert_eq!(p.to_server.sm_count(SmType::ConnectReq), 3);
    assert_eq!(p.server.ep.num_sessions(), 1);
    assert_eq!(p.client.events_of(s), (1, 0, 0));
}

#[test]
fn a_lost_connect_response_is_answered_again_by_the_same_server_end() {
    let mut p = Pair::new(cfg(), cfg(), 10);
    p.to_client.filter = Some(first(1, |w| w.is_sm(SmType::ConnectResp), Fate::Drop));
    let s = p.connect();
    assert_eq!(p.to_client.sm_count(SmType::ConnectResp), 2);
    assert_eq!(
        p.server.ep.num_sessions(),
        1,
        "the retry found the accepted end"
    );
    let ss = server_session(&p);
    assert_eq!(p.server.events_of(ss), (1, 0, 0));
    assert_eq!(p.server.ep.stats().connects_refused, 0);
    exchange(&mut p, s, &[(1, 100, 100)], 100 * MS);
}

#[test]
fn duplicated_and_late_connect_responses_are_ignored() {
    let mut p = Pair::new(cfg(), cfg(), 11);
    // The first answer is held back; the answer to the retry arrives twice.
    let mut n = 0;
    p.to_client.filter = Some(Box::new(move |w: &Wire| {
        if !w.is_sm(SmType::ConnectResp) {
            return Fate::Deliver;
        }
        n += 1;
        if n == 1 {
            Fate::Hold
        } else {
            Fate::Duplicate
        }
    }));
    let s = p.connect();
    p.run_for(MS);
    exchange(&mut p, s, &[(1, 5000, 5000)], 100 * MS);
    p.release(Side::Client);
    p.run_for(10 * MS);
    assert_eq!(p.client.ep.session_state(s), Some(SessionState::Connected));
    assert_eq!(p.client.events_of(s), (1, 0, 0), "connected once");
    assert_eq!(p.client.routes.resolved.len(), 1, "resolved once");
    assert_eq!(p.server.ep.num_sessions(), 1);
    exchange(&mut p, s, &[(2, 5000, 5000)], 100 * MS);
}

#[test]
fn a_timed_out_connect_ignores_late_answers_and_reconnects() {
    let client = RpcConfig {
        connect_timeout: Duration::from_millis(300),
        ..live_cfg(200)
    };
    let mut p = Pair::new(client, live_cfg(200), 12);
    p.to_client.filter = Some(every(|w| w.is_sm(SmType::ConnectResp), Fate::Hold));
    let s = p.begin_connect();
    p.enqueue(s, b"early", 1).unwrap();
    let done = p.completions(1, 1_000 * MS);
    assert!(matches!(done[0].result, Err(RpcError::Timeout)));
    assert_eq!(p.now, 300 * MS, "failed at the connect timeout");
    assert_eq!(
        p.client.ep.session_state(s),
        Some(SessionState::Failed(ConnectFailure::Timeout))
    );
    assert_eq!(p.client.ep.ring_reserved(), 0, "the ring share is released");
    assert_eq!(
        p.to_server.sm_count(SmType::ConnectReq),
        3,
        "sent, retried twice"
    );
    // The held answers arrive now: the attempt they answer is over.
    p.to_client.filter = None;
    p.release(Side::Client);
    p.run_for(10 * MS);
    assert_eq!(
        p.client.ep.session_state(s),
        Some(SessionState::Failed(ConnectFailure::Timeout))
    );
    assert_eq!(
        p.client.events_of(s),
        (1, 1, 0),
        "live while connecting, down on failure"
    );
    p.client.ep.reconnect(p.now, s).unwrap();
    p.enqueue(s, b"queued while reconnecting", 2).unwrap();
    let done = p.completions(1, 1_000 * MS);
    assert_eq!(
        done[0].result.as_ref().unwrap().as_slice(),
        b"queued while reconnecting"
    );
    // The server end of the first attempt has no client: its liveness check reaps it.
    p.run_for(1_000 * MS);
    assert_eq!(p.server.ep.num_sessions(), 1);
    assert_eq!(p.server.ep.stats().server_sessions_reaped, 1);
    assert_eq!(p.server.routes.open(), 1);
}

/// Connects once and returns how the attempt ended.
fn connect_outcome(p: &mut Pair) -> Result<u32, ConnectFailure> {
    let s = p.begin_connect();
    let ok = p.run_until(10_000 * MS, |p| {
        p.client.ep.session_state(s) != Some(SessionState::Connecting)
    });
    assert!(ok);
    match p.client.ep.session_state(s) {
        Some(SessionState::Connected) => Ok(s),
        Some(SessionState::Failed(f)) => {
            assert_eq!(p.client.ep.ring_reserved() % 32, 0);
            p.client.ep.disconnect(p.now, s).unwrap();
            p.step();
            assert_eq!(p.client.ep.session_state(s), None);
            Err(f)
        }
        other => panic!("unexpected state {other:?}"),
    }
}

#[test]
fn connect_refusals_leave_nothing_behind() {
    // No such Rpc: the server's Nexus answers for it.
    let mut p = Pair::new(cfg(), cfg(), 13);
    p.server.rpc_exists = false;
    assert_eq!(
        connect_outcome(&mut p),
        Err(ConnectFailure::NoSuchRemoteRpc)
    );
    assert_eq!(p.client.ep.ring_reserved(), 0);
    assert_eq!(p.client.routes.open(), 0);

    // Too many sessions at the server.
    let server = RpcConfig {
        max_sessions: 1,
        ..cfg()
    };
    let mut p = Pair::new(cfg(), server, 14);
    connect_outcome(&mut p).unwrap();
    assert_eq!(
        connect_outcome(&mut p),
        Err(ConnectFailure::TooManySessions)
    );
    assert_eq!(p.server.ep.num_sessions(), 1);
    assert_eq!(p.server.ep.stats().connects_refused, 1);

    // The server's ring admits one session of 32 credits.
    let mut p = Pair::with_endpoints(
        endpoint(cfg(), 0, 4096, 1),
        endpoint(cfg(), SERVER_RPC, 40, 2),
        15,
    );
    connect_outcome(&mut p).unwrap();
    assert_eq!(connect_outcome(&mut p), Err(ConnectFailure::RingExhausted));
    assert_eq!(p.server.ep.ring_reserved(), 32);

    // Transport mismatch.
    let mut p = Pair::with_endpoints(
        endpoint_on(cfg(), 0, 4096, 1, TransportKind::Tcp),
        endpoint(cfg(), SERVER_RPC, 4096, 2),
        16,
    );
    assert_eq!(
        connect_outcome(&mut p),
        Err(ConnectFailure::TransportMismatch)
    );

    // The server cannot allocate, or cannot resolve, a route.
    for alloc in [true, false] {
        let mut p = Pair::new(cfg(), cfg(), 17);
        if alloc {
            p.server.routes.fail_alloc = true;
        } else {
            p.server.routes.fail_resolve = true;
        }
        assert_eq!(
            connect_outcome(&mut p),
            Err(ConnectFailure::RoutingResolution)
        );
        assert_eq!(p.server.ep.num_sessions(), 0);
        assert_eq!(p.server.ep.ring_reserved(), 0);
        assert_eq!(
            p.server.routes.open(),
            0,
            "a refused end gives its route back"
        );
        assert_eq!(p.server.ep.stats().connects_refused, 1);
        assert!(p.server.live.is_empty());
    }

    // The client cannot allocate its route: nothing is sent.
    let mut p = Pair::new(cfg(), cfg(), 18);
    p.client.routes.fail_alloc = true;
    assert_eq!(
        connect_outcome(&mut p),
        Err(ConnectFailure::RoutingResolution)
    );
    assert!(p.to_server.log.is_empty());

    // The client cannot resolve the server's routing info.
    let mut p = Pair::new(cfg(), cfg(), 19);
    p.client.routes.fail_resolve = true;
    assert_eq!(
        connect_outcome(&mut p),
        Err(ConnectFailure::RoutingResolution)
    );
    assert_eq!(p.client.routes.open(), 0);
    assert_eq!(p.client.ep.num_sessions(), 0);
}

#[test]
fn lost_disconnect_messages_are_retried_and_both_ends_are_freed() {
    let mut p = Pair::new(cfg(), cfg(), 20);
    let s = p.connect();
    let ss = server_session(&p);
    exchange(&mut p, s, &[(1, 10, 10)], 100 * MS);
    p.to_server.filter = Some(first(1, |w| w.is_sm(SmType::DisconnectReq), Fate::Drop));
    p.to_client.filter = Some(first(1, |w| w.is_sm(SmType::DisconnectResp), Fate::Drop));
    p.enqueue(s, &make_request(2, 20, 20), 2).unwrap();
    assert!(matches!(
        p.client.ep.disconnect(p.now, s),
        Err(RpcError::SessionBusy(_))
    ));
    p.completions(1, 100 * MS);
    p.client.ep.disconnect(p.now, s).unwrap();
    assert_eq!(
        p.client.ep.session_state(s),
        Some(SessionState::Disconnecting)
    );
    let ok = p.run_until(10_000 * MS, |p| p.client.ep.session_state(s).is_none());
    assert!(ok);
    assert_eq!(p.to_server.sm_count(SmType::DisconnectReq), 3);
    assert_eq!(p.server.ep.num_sessions(), 0);
    assert_eq!(p.client.events_of(s), (1, 1, 0));
    assert_eq!(p.server.events_of(ss), (1, 1, 0));
    assert_eq!(p.client.routes.open(), 0);
    assert_eq!(p.server.routes.open(), 0);
    assert_eq!(
        (p.client.ep.ring_reserved(), p.server.ep.ring_reserved()),
        (0, 0)
    );
    assert!(matches!(
        p.enqueue(s, b"y", 3),
        Err(RpcError::InvalidSession(_))
    ));
}

// ---------------------------------------------------------------------- liveness

#[test]
fn idle_sessions_ping_at_most_once_per_interval_and_stay_up() {
    let t = 40;
    let mut p = Pair::new(live_cfg(t), live_cfg(t), 21);
    let s = p.connect();
    let start = p.now;
    p.run_for(2_000 * MS);
    assert_eq!(p.client.ep.session_state(s), Some(SessionState::Connected));
    let (c, sv) = (p.client.ep.stats(), p.server.ep.stats());
    assert_eq!((c.sessions_reset, sv.server_sessions_reaped), (0, 0));
    let intervals = (p.now - start) / (t * MS / 4);
    assert!(
        c.pings_sent > 0 && c.pings_sent <= intervals,
        "{}",
        c.pings_sent
    );
    assert!(
        sv.pings_sent > 0 && sv.pings_sent <= intervals,
        "{}",
        sv.pings_sent
    );
    assert_eq!(
        p.to_server.sm_count(SmType::ClientPing) as u64,
        c.pings_sent
    );
}

#[test]
fn a_paused_peer_keeps_its_session() {
    let t = 40;
    let mut p = Pair::new(live_cfg(t), live_cfg(t), 22);
    let s = p.connect();
    p.server.running = false;
    p.run_for(10 * t * MS);
    assert_eq!(p.client.ep.session_state(s), Some(SessionState::Connected));
    assert!(
        p.client.ep.stats().pings_sent > 0,
        "the client pinged the paused server"
    );
    p.server.running = true;
    exchange(&mut p, s, &[(1, 3000, 3000)], 100 * MS);
    p.run_for(4 * t * MS);
    assert_eq!(p.client.ep.stats().sessions_reset, 0);
    assert_eq!(p.server.ep.stats().server_sessions_reaped, 0);
}

#[test]
fn a_stopped_rpc_is_noticed_within_one_ping_interval_and_requests_fail_once() {
    let t = 40;
    let mut p = Pair::new(live_cfg(t), live_cfg(t), 23);
    let s = p.connect();
    p.server.handler = Box::new(|_, _| None);
    for i in 0..20u64 {
        p.enqueue_with_deadline(s, &i.to_le_bytes(), i, None)
            .unwrap();
    }
    let ok = p.run_until(100 * MS, |p| p.server.held.len() == 8);
    assert!(ok, "the window's requests reached the handler");
    p.server.rpc_exists = false;
    let stopped = p.now;
    let done = p.completions(20, 10 * t * MS);
    let detected = p.now;
    assert!(
        detected <= stopped + t * MS / 4 + 2 * p.to_server.delay,
        "detected {} ns after the stop",
        detected - stopped
    );
    let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..20).collect::<Vec<_>>());
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::PeerFailed))));
    p.run_for(10 * t * MS);
    assert!(p.client.completions.is_empty(), "exactly once");
    assert_eq!(p.client.ep.stats().sessions_reset, 1);
    assert_eq!(p.client.events_of(s), (1, 0, 1));
    assert_eq!(
        p.client.ep.session_state(s),
        Some(SessionState::Failed(ConnectFailure::PeerFailed))
    );
    assert!(matches!(
        p.enqueue(s, b"x", 99),
        Err(RpcError::NotConnected(_))
    ));
    assert_eq!(p.client.ep.ring_reserved(), 0);
}

#[test]
fn a_vanished_process_is_noticed_after_the_failure_timeout() {
    let t = 40;
    let mut p = Pair::new(live_cfg(t), live_cfg(t), 24);
    let s = p.connect();
    exchange(&mut p, s, &[(1, 100, 100)], 100 * MS);
    let heard = p.now;
    p.server.alive = false;
    let ok = p.run_until(heard + 10 * t * MS, |p| {
        p.client.ep.session_state(s) != Some(SessionState::Connected)
    });
    assert!(ok);
    let after = p.now - heard;
    // Pings at T/4, T/2, 3T/4 go unanswered; at T both conditions hold.
    assert!(
        (t * MS..=t * MS + t * MS / 4).contains(&after),
        "declared failed {after} ns after the peer was last heard"
    );
    assert!(p.client.ep.stats().pings_sent >= 3);
    assert_eq!(p.client.events_of(s), (1, 0, 1));
}

#[test]
fn the_server_reaps_the_sessions_of_a_dead_client() {
    let t = 40;
    let mut p = Pair::new(live_cfg(t), live_cfg(t), 25);
    let a = p.connect();
    let b = p.connect();
    exchange(&mut p, a, &[(1, 10, 10)], 100 * MS);
    exchange(&mut p, b, &[(2, 10, 10)], 100 * MS);
    let ends: Vec<u32> = p.server.live.keys().copied().collect();
    p.client.alive = false;
    p.run_for(3 * t * MS);
    let st = p.server.ep.stats();
    assert_eq!(st.server_sessions_reaped, 2);
    assert_eq!(p.server.ep.num_sessions(), 0);
    assert_eq!(p.server.ep.ring_reserved(), 0);
    assert_eq!(p.server.routes.open(), 0);
    for e in ends {
        assert_eq!(p.server.events_of(e), (1, 1, 0));
    }
}

#[test]
fn a_reset_happens_once_however_many_failure_answers_arrive() {
    let t = 40;
    let mut p = Pair::new(live_cfg(t), live_cfg(t), 26);
    let s = p.connect();
    p.server.handler = Box::new(|_, _| None);
    for i in 0..5u64 {
        p.enqueue_with_deadline(s, &i.to_le_bytes(), i, None)
            .unwrap();
    }
    p.run_for(MS);
    // Every pong arrives three times: the original and two later copies.
    p.to_client.filter = Some(every(|w| w.is_sm(SmType::ServerPong), Fate::Duplicate));
    p.server.rpc_exists = false;
    let done = p.completions(5, 10 * t * MS);
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::PeerFailed))));
    let pongs: Vec<_> = p
        .to_client
        .log
        .iter()
        .filter(|(_, w)| w.is_sm(SmType::ServerPong))
        .map(|(_, w)| w.clone())
        .collect();
    for w in pongs {
        if let Wire::Sm(_, m) = w {
            p.inject_sm(Side::Client, m);
        }
    }
    p.run_for(10 * t * MS);
    assert!(p.client.completions.is_empty());
    assert_eq!(p.client.ep.stats().sessions_reset, 1);
    assert_eq!(p.client.events_of(s), (1, 0, 1));
    assert_eq!(p.client.ep.session_stats(s).unwrap().resets, 1);
}

#[test]
fn reconnect_after_the_server_restarts() {
    let t = 40;
    let mut p = Pair::new(live_cfg(t), live_cfg(t), 27);
    let s = p.connect();
    exchange(&mut p, s, &[(1, 3000, 3000)], 100 * MS);
    // The server process restarts: a new endpoint, an empty live table.
    p.server.ep = endpoint(live_cfg(t), SERVER_RPC, 4096, 999);
    p.server.live.clear();
    p.server.routes = Routes::default();
    p.server.runs.clear();
    let ok = p.run_until(p.now + 10 * t * MS, |p| {
        p.client.ep.session_state(s) != Some(SessionState::Connected)
    });
    assert!(ok);
    assert_eq!(
        p.client.ep.session_state(s),
        Some(SessionState::Failed(ConnectFailure::PeerFailed)),
        "the restarted server's Nexus did not know the session"
    );
    assert!(matches!(
        p.enqueue(s, b"x", 9),
        Err(RpcError::NotConnected(_))
    ));
    p.client.ep.reconnect(p.now, s).unwrap();
    assert!(matches!(
        p.client.ep.reconnect(p.now, s),
        Err(RpcError::Config(_))
    ));
    exchange(&mut p, s, &[(2, 5000, 5000)], 1_000 * MS);
    assert_eq!(p.client.events_of(s), (2, 0, 1));
    assert_eq!(p.client.ep.session_stats(s).unwrap().resets, 1);
}

// ---------------------------------------------------------------------- deadlines, cancel

#[test]
fn deadlines_end_requests_in_slots_and_backlog_and_the_session_keeps_working() {
    let mut p = Pair::new(cfg(), cfg(), 28);
    let s = p.connect();
    p.server.handler = Box::new(|_, _| None);
    let start = p.now;
    for i in 0..12u64 {
        p.enqueue_with_deadline(s, &i.to_le_bytes(), i, Some(Duration::from_millis(50)))
            .unwrap();
    }
    let done = p.completions(12, 1_000 * MS);
    assert_eq!(p.now, start + 50 * MS, "they ended at their deadline");
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::DeadlineExceeded))));
    assert_eq!(p.client.ep.stats().deadline_exceeded, 12);
    assert_eq!(p.client.ep.session_stats(s).unwrap().deadline_exceeded, 12);
    assert_eq!(p.client.ep.pending_requests(s), 0);
    assert_eq!(
        p.client.ep.session_credits(s),
        Some(32),
        "credits recovered"
    );
    // The server answers late: the client drops the answers.
    let before = p.client.ep.stats().dropped_unexpected;
    for h in std::mem::take(&mut p.server.held) {
        p.server.respond(h, b"late").unwrap();
    }
    p.run_for(MS);
    assert!(p.client.ep.stats().dropped_unexpected > before);
    assert!(p.client.completions.is_empty());
    exchange(&mut p, s, &[(1, 3000, 300)], 100 * MS);
}

#[test]
fn cancel_in_a_slot_and_in_the_backlog() {
    let client = RpcConfig { window: 2, ..cfg() };
    let mut p = Pair::new(client, cfg(), 29);
    let s = p.connect();
    p.server.handler = Box::new(|_, _| None);
    for i in 0..4u64 {
        p.enqueue(s, &[i as u8; 10], i).unwrap();
    }
    p.run_for(MS);
    assert_eq!(p.server.held.len(), 2);
    assert!(p.client.ep.cancel_request(p.now, s, 1, false), "in a slot");
    assert!(
        p.client.ep.cancel_request(p.now, s, 3, false),
        "in the backlog"
    );
    assert!(
        !p.client.ep.cancel_request(p.now, s, 1, false),
        "already cancelled"
    );
    assert!(
        !p.client.ep.cancel_request(p.now, s, 2, true),
        "another owner's tag"
    );
    assert!(!p.client.ep.cancel_request(p.now, s, 42, false), "unknown");
    p.step();
    let mut done = p.client.take_completions();
    done.sort_by_key(|c| c.tag);
    assert_eq!(done.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![1, 3]);
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::Cancelled))));
    // Request 2 took the cancelled one's slot; once it is at the server, the old handle is
    // stale.
    p.run_for(MS);
    assert_eq!(p.server.held.len(), 3);
    let held = std::mem::take(&mut p.server.held);
    for h in held {
        let r = p.server.respond(h, b"ok");
        if h.req_num() == 1 {
            assert!(matches!(r, Err(RpcError::StaleHandle)));
        } else {
            r.unwrap();
        }
    }
    let mut done = p.completions(2, 100 * MS);
    done.sort_by_key(|c| c.tag);
    assert_eq!(done.iter().map(|c| c.tag).collect::<Vec<_>>(), vec![0, 2]);
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert_eq!(p.client.ep.stats().cancelled, 2);
}

// ---------------------------------------------------------------------- timers

#[test]
fn an_idle_endpoint_without_liveness_has_no_timer() {
    let mut p = Pair::new(cfg(), cfg(), 30);
    let s = p.connect();
    exchange(&mut p, s, &[(1, 10, 10)], 100 * MS);
    p.run_for(10 * MS);
    assert_eq!(
        p.client.ep.poll_timeout(),
        Some(p.client.ep.earliest_timer().unwrap())
    );
    // Only the (lower-bound) deadline of the last request can be left; it expires harmlessly.
    p.run_for(40_000 * MS);
    assert_eq!(p.client.ep.poll_timeout(), None);
    assert_eq!(p.server.ep.poll_timeout(), None);
}

#[test]
fn the_retransmit_timer_fires_at_its_exact_time() {
    let mut p = Pair::new(cfg(), cfg(), 31);
    let s = p.connect();
    p.server.handler = Box::new(|_, _| None);
    p.enqueue(s, b"held", 1).unwrap();
    let sent = p.now;
    p.step();
    let rto = 5 * MS;
    assert_eq!(p.client.ep.poll_timeout(), Some(sent + rto));
    p.run_to(sent + rto - 1);
    assert_eq!(p.client.ep.stats().retransmissions, 0);
    p.run_to(sent + rto);
    assert_eq!(p.client.ep.stats().retransmissions, 1);
    assert_eq!(p.client.ep.poll_timeout(), Some(sent + 2 * rto));
}

#[test]
fn timer_work_grows_with_due_sessions_only() {
    let t = 40;
    let mut p = Pair::new(live_cfg(t), live_cfg(t), 32);
    let sessions: Vec<u32> = (0..100).map(|_| p.begin_connect()).collect();
    let ok = p.run_until(1_000 * MS, |p| {
        sessions
            .iter()
            .all(|&s| p.client.ep.session_state(s) == Some(SessionState::Connected))
    });
    assert!(ok);
    let start = p.now;
    let pings = p.client.ep.stats().pings_sent;
    p.run_for(400 * MS);
    let intervals = (p.now - start) / (t * MS / 4) + 1;
    let sent = p.client.ep.stats().pings_sent - pings;
    assert!(sent > 0 && sent <= 100 * intervals, "{sent} pings");
    assert_eq!(p.client.ep.stats().sessions_reset, 0);
}

#[test]
fn a_disconnect_outlasting_the_liveness_interval_ends_at_its_timeout() {
    // Every DisconnectReq is lost; the liveness interval (10 ms) passes many times while the
    // client end is disconnecting, and its liveness timer must not keep firing.
    let client = RpcConfig {
        connect_timeout: Duration::from_millis(300),
        ..live_cfg(40)
    };
    let mut p = Pair::new(client, live_cfg(40), 33);
    let s = p.connect();
    p.to_server.filter = Some(every(|w| w.is_sm(SmType::DisconnectReq), Fate::Drop));
    let start = p.now;
    p.client.ep.disconnect(p.now, s).unwrap();
    let ok = p.run_until(start + 1_000 * MS, |p| {
        p.client.ep.session_state(s).is_none()
    });
    assert!(ok);
    assert_eq!(p.now, start + 300 * MS, "freed at the disconnect's timeout");
    assert_eq!(
        p.to_server.sm_count(SmType::DisconnectReq),
        3,
        "sent, retried twice"
    );
    assert_eq!(p.client.events_of(s), (1, 1, 0));
    // The server end, never told, is reaped by its own failure detection.
    p.run_for(200 * MS);
    assert_eq!(p.server.ep.num_sessions(), 0);
    assert_eq!(p.server.ep.stats().server_sessions_reaped, 1);
}

#[test]
fn every_timer_is_left_armed_for_later_or_stopped() {
    // A mix of everything that arms timers, with failure detection, faults and deadlines;
    // `handle_timeout` asserts (in debug builds) that no timer is left due after it fired.
    for seed in testkit::seeds(&[34]) {
        let t = 40;
        let mut p = Pair::new(live_cfg(t), live_cfg(t), seed);
        let faults = Faults {
            drop: 0.1,
            duplicate: 0.1,
            reorder_ns: MS,
            sm_too: true,
        };
        p.to_server.faults = faults;
        p.to_client.faults = faults;
        let sessions: Vec<u32> = (0..8).map(|_| p.begin_connect()).collect();
        p.run_for(500 * MS);
        for (i, &s) in sessions.iter().enumerate() {
            let deadline = Some(Duration::from_millis(5 * i as u64 + 1));
            let _ = p.enqueue_with_deadline(s, &make_request(i as u64, 4000, 4000), 0, deadline);
            if i % 3 == 0 {
                let _ = p.client.ep.disconnect(p.now, s);
            }
        }
        pattern_server(&mut p);
        p.run_for(2_000 * MS);
        for &s in &sessions {
            if let Some(SessionState::Failed(_)) = p.client.ep.session_state(s) {
                p.client.ep.reconnect(p.now, s).unwrap();
            }
        }
        p.run_for(2_000 * MS);
    }
}

#[test]
fn a_slot_that_waited_for_credits_is_not_retransmitted_as_soon_as_it_sends() {
    // One credit, two slots: B waits for the credit while A's response is held for 2.5 RTOs
    // (A is retransmitted twice meanwhile). When A completes, B sends; its retransmission
    // clock starts then, not when it was enqueued.
    let client = RpcConfig {
        credits: 1,
        window: 2,
        ..cfg()
    };
    let mut p = Pair::new(client, cfg(), 35);
    let s = p.connect();
    p.server.handler = Box::new(|_, data| (data != b"A").then(|| data.to_vec()));
    p.enqueue(s, b"A", 1).unwrap();
    p.enqueue(s, b"B", 2).unwrap();
    let rto = 5 * MS;
    let start = p.now;
    p.run_to(start + 5 * rto / 2);
    assert_eq!(p.client.ep.stats().retransmissions, 2, "A went back twice");
    let h = p.server.held.pop().expect("A is held");
    p.server.respond(h, b"a").unwrap();
    let done = p.completions(2, 100 * MS);
    assert!(done.iter().all(|c| c.result.is_ok()));
    assert_eq!(
        p.client.ep.stats().retransmissions,
        2,
        "B was not retransmitted"
    );
    assert_eq!(
        p.to_server.pkt_count(PktType::Req),
        4,
        "A three times, B once"
    );
}

// ---------------------------------------------------------------------- reliable transports

#[test]
fn a_reliable_transport_is_never_retransmitted_on() {
    // The same held request on both kinds of transport: the datagram endpoint rewinds every
    // RTO, the reliable one never arms the timer; both complete exactly once, and a
    // multi-packet exchange runs on credit returns and RFRs alone.
    for reliable in [false, true] {
        let mut p = if reliable {
            Pair::reliable(cfg(), cfg(), 40)
        } else {
            Pair::new(cfg(), cfg(), 40)
        };
        let s = p.connect();
        p.server.handler = Box::new(|_, _| None);
        p.enqueue(s, b"held", 1).unwrap();
        p.step();
        let rto = 5 * MS;
        let sent = p.now;
        p.run_to(sent + 10 * rto);
        let h = p
            .server
            .held
            .pop()
            .expect("the request reached the handler");
        p.server.respond(h, b"late").unwrap();
        let done = p.completions(1, 100 * MS);
        assert_eq!(done[0].result.as_ref().unwrap().as_slice(), b"late");
        let retransmissions = p.client.ep.stats().retransmissions;
        if reliable {
            assert_eq!(retransmissions, 0);
            assert_eq!(p.to_server.pkt_count(PktType::Req), 1, "sent once");
        } else {
            assert_eq!(retransmissions, 10, "one rewind per RTO");
        }
        assert_eq!(p.server.runs.get(b"held".as_slice()), Some(&1));
        let reqs: Vec<_> = (0..6u64)
            .map(|i| {
                (
                    10 + i,
                    1 + i as usize * 7 * DPP,
                    (i as u32 + 1) * 9 * DPP as u32,
                )
            })
            .collect();
        exchange(&mut p, s, &reqs, 10_000 * MS);
        assert_eq!(p.client.ep.session_credits(s), Some(32));
        if reliable {
            assert_eq!(p.client.ep.stats().retransmissions, 0);
        }
    }
}

#[test]
fn on_a_reliable_transport_deadlines_still_end_requests() {
    // A packet lost although the transport is reliable (what a transport refusing a packet
    // beyond its queue bound amounts to) is not resent: the request's deadline ends it, once,
    // and the session keeps working.
    let mut p = Pair::reliable(cfg(), cfg(), 41);
    let s = p.connect();
    p.to_server.filter = Some(first(1, |w| w.is_pkt(PktType::Req), Fate::Drop));
    let start = p.now;
    p.enqueue_with_deadline(s, b"lost", 1, Some(Duration::from_millis(50)))
        .unwrap();
    let done = p.completions(1, 1_000 * MS);
    assert!(matches!(done[0].result, Err(RpcError::DeadlineExceeded)));
    assert_eq!(p.now, start + 50 * MS, "at its deadline");
    assert_eq!(p.client.ep.stats().retransmissions, 0);
    assert_eq!(p.server.runs.get(b"lost".as_slice()), None);
    exchange(&mut p, s, &[(2, 3 * DPP, 3 * DPP as u32)], 100 * MS);
    p.run_for(1_000 * MS);
    assert!(p.client.completions.is_empty(), "exactly once");
}

#[test]
fn a_route_failure_resets_the_client_at_once_and_requests_fail_once() {
    // Liveness is on but slow (10 s): only the route failure can end the session this soon.
    let mut p = Pair::reliable(live_cfg(10_000), live_cfg(10_000), 42);
    let s = p.connect();
    p.server.handler = Box::new(|_, _| None);
    for i in 0..20u64 {
        p.enqueue_with_deadline(s, &i.to_le_bytes(), i, None)
            .unwrap();
    }
    let ok = p.run_until(100 * MS, |p| p.server.held.len() == 8);
    assert!(ok, "the window's requests reached the handler");
    let failed_at = p.now;
    let routes = p.fail_routes(Side::Client);
    assert_eq!(routes.len(), 1, "one session, one route");
    // At once: the completions are there before any time passes.
    p.step();
    let done = p.client.take_completions();
    assert_eq!(p.now, failed_at);
    let mut tags: Vec<u64> = done.iter().map(|c| c.tag).collect();
    tags.sort_unstable();
    assert_eq!(tags, (0..20).collect::<Vec<_>>(), "slots and backlog");
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::PeerFailed))));
    assert_eq!(
        p.client.ep.session_state(s),
        Some(SessionState::Failed(ConnectFailure::PeerFailed))
    );
    // The same failure reported again (or after the route is gone) changes nothing.
    p.client.ep.handle_route_failure(p.now, routes[0]);
    p.run_for(100 * MS);
    assert!(p.client.completions.is_empty(), "exactly once");
    let st = p.client.ep.stats();
    assert_eq!((st.route_failures, st.sessions_reset), (1, 1));
    assert_eq!(p.client.events_of(s), (1, 0, 1));
    assert_eq!(p.client.ep.ring_reserved(), 0);
    assert_eq!(p.client.routes.open(), 0, "the failed route was released");
    assert!(matches!(
        p.enqueue(s, b"x", 99),
        Err(RpcError::NotConnected(_))
    ));
}

#[test]
fn a_route_failure_frees_the_server_end_at_once() {
    let mut p = Pair::reliable(live_cfg(10_000), live_cfg(10_000), 43);
    let a = p.connect();
    let b = p.connect();
    p.server.handler = Box::new(|_, _| None);
    p.enqueue(a, b"held", 1).unwrap();
    let ok = p.run_until(100 * MS, |p| p.server.held.len() == 1);
    assert!(ok);
    let ends: Vec<u32> = p.server.live.keys().copied().collect();
    assert_eq!(ends.len(), 2);
    // The client process dies; the server's transport sees its connection close.
    p.client.alive = false;
    let reported = p.fail_routes(Side::Server);
    assert_eq!(reported.len(), 2);
    p.step();
    assert_eq!(p.server.ep.num_sessions(), 0);
    let st = p.server.ep.stats();
    assert_eq!((st.route_failures, st.server_sessions_reaped), (2, 2));
    assert_eq!(p.server.ep.ring_reserved(), 0);
    for e in ends {
        assert_eq!(p.server.events_of(e), (1, 1, 0));
    }
    assert_eq!(p.server.routes.open(), 0);
    let h = p.server.held.pop().unwrap();
    assert!(matches!(
        p.server.respond(h, b"too late"),
        Err(RpcError::StaleHandle)
    ));
    let _ = b;
}

#[test]
fn reconnect_after_a_route_failure_takes_a_new_route() {
    let mut p = Pair::reliable(live_cfg(10_000), live_cfg(10_000), 44);
    let s = p.connect();
    exchange(&mut p, s, &[(1, 2 * DPP, 100)], 100 * MS);
    // The server process restarts: its connection breaks at both ends; the new process
    // knows nothing.
    p.fail_routes(Side::Client);
    p.server.ep = endpoint_on(live_cfg(10_000), SERVER_RPC, 4096, 999, TransportKind::Tcp);
    p.server.live.clear();
    p.server.routes = Routes::default();
    p.server.runs.clear();
    assert_eq!(
        p.client.ep.session_state(s),
        Some(SessionState::Failed(ConnectFailure::PeerFailed))
    );
    p.client.ep.reconnect(p.now, s).unwrap();
    exchange(&mut p, s, &[(2, 5 * DPP, 5 * DPP as u32)], 1_000 * MS);
    assert_eq!(p.client.routes.allocated.len(), 2, "a fresh route");
    assert_eq!(p.client.routes.open(), 1);
    assert_eq!(p.client.events_of(s), (2, 0, 1));
    assert_eq!(p.client.ep.session_stats(s).unwrap().resets, 1);
    assert_eq!(p.client.ep.stats().retransmissions, 0);
}

#[test]
fn a_liveness_reset_on_a_reliable_transport_reconnects_on_a_new_route() {
    // No route failure is reported (a host that vanished without closing): liveness still
    // detects it; the reconnect does not reuse the route of the dead connection. Run twice:
    // the second time the dead connection is reported after the reset, when it ends nothing.
    for report_late in [false, true] {
        let t = 40;
        let mut p = Pair::reliable(live_cfg(t), live_cfg(t), 45);
        let s = p.connect();
        exchange(&mut p, s, &[(1, 100, 100)], 100 * MS);
        p.server.rpc_exists = false;
        let ok = p.run_until(p.now + 10 * t * MS, |p| {
            p.client.ep.session_state(s) != Some(SessionState::Connected)
        });
        assert!(ok);
        assert_eq!(p.client.ep.stats().sessions_reset, 1);
        let old: Vec<_> = p.client.routes.resolved.iter().copied().collect();
        assert_eq!(old.len(), 1);
        if report_late {
            assert_eq!(p.fail_routes(Side::Client), old);
            p.step();
            assert_eq!(
                p.client.routes.open(),
                0,
                "the failed end gave its route back"
            );
        }
        assert_eq!(
            p.client.ep.stats().route_failures,
            0,
            "none ended a session"
        );
        assert_eq!(p.client.ep.stats().sessions_reset, 1);
        p.server.ep = endpoint_on(live_cfg(t), SERVER_RPC, 4096, 998, TransportKind::Tcp);
        p.server.rpc_exists = true;
        p.server.live.clear();
        p.server.routes = Routes::default();
        p.server.runs.clear();
        p.client.ep.reconnect(p.now, s).unwrap();
        exchange(&mut p, s, &[(2, 100, 100)], 1_000 * MS);
        assert_eq!(p.client.routes.allocated.len(), 2, "a fresh route");
        assert!(
            p.client.routes.freed.contains(&old[0]),
            "the old one released"
        );
        assert_eq!(p.client.routes.open(), 1);
    }
}

#[test]
fn route_failures_of_connecting_disconnecting_and_failed_sessions() {
    let mut p = Pair::reliable(cfg(), cfg(), 46);
    // Disconnecting: the end is freed at once.
    let d = p.connect();
    p.to_server.filter = Some(every(|w| w.is_sm(SmType::DisconnectReq), Fate::Drop));
    p.client.ep.disconnect(p.now, d).unwrap();
    p.fail_routes(Side::Client);
    p.step();
    assert_eq!(p.client.ep.session_state(d), None);
    assert_eq!(p.client.events_of(d), (1, 1, 0));
    p.to_server.filter = None;
    // Connecting (the ConnectReq is out, the route allocated): the connect fails.
    p.to_server.filter = Some(every(|w| w.is_sm(SmType::ConnectReq), Fate::Hold));
    let c = p.begin_connect();
    p.step();
    let (route, _) = {
        let r = &p.client.routes;
        let open: Vec<_> = r.allocated.difference(&r.freed).copied().collect();
        assert_eq!(open.len(), 1);
        (open[0], ())
    };
    p.client.ep.handle_route_failure(p.now, route);
    assert_eq!(
        p.client.ep.session_state(c),
        Some(SessionState::Failed(ConnectFailure::RoutingResolution))
    );
    p.step();
    assert_eq!(p.client.routes.open(), 0);
    // Failed: only the route goes; the reconnect asks for a new one and works.
    p.to_server.filter = None;
    p.release(Side::Server);
    p.client.ep.reconnect(p.now, c).unwrap();
    let ok = p.run_until(p.now + 1_000 * MS, |p| {
        p.client.ep.session_state(c) == Some(SessionState::Connected)
    });
    assert!(ok, "{:?}", p.client.ep.session_state(c));
    exchange(&mut p, c, &[(1, 10, 10)], 100 * MS);
    // An unknown route is ignored.
    p.client.ep.handle_route_failure(p.now, 12_345);
    assert_eq!(p.client.ep.stats().route_failures, 2);
    assert_eq!(p.client.ep.session_state(c), Some(SessionState::Connected));
}
