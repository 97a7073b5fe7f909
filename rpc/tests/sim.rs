//! Protocol tests over the simulated fabric, driven deterministically in virtual time.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rpc::{
    ConnectFailure, LocalHub, MsgBuf, Nexus, ReqHandle, Rpc, RpcConfig, RpcError, SessionId,
    SessionState,
};
use transports::sim::{LinkFaults, SimTransport};
use transports::{
    RouteId, RoutingInfo, Transport, TransportError, TransportKind, TransportStats, TxPkt,
};

const ECHO: u8 = 1;
const EMPTY: u8 = 2;
const MTU: usize = 1024;
const RING: usize = 4096;

/// Rpc 0 of `nexus` on a new endpoint of `fabric`, with deterministic tokens from `seed`, on the
/// fabric's virtual clock when it has one.
fn sim_rpc<S: 'static>(
    nexus: &Nexus<S>,
    fabric: &Sim,
    ring: usize,
    state: S,
    cfg: RpcConfig,
) -> Rpc<SimTransport, S> {
    let mut rpc = Rpc::new(nexus, 0, fabric.transport(MTU, ring), state, cfg).unwrap();
    fabric.adopt(&mut rpc);
    rpc
}

/// Per-thread state of the test servers: how often the handler ran for each request id.
#[derive(Default)]
struct Server {
    runs: HashMap<u64, u32>,
    bad: u32,
}

fn server_nexus(hub: &LocalHub, name: &str) -> Nexus<Server> {
    let n = Nexus::new_local(hub, name, 0).unwrap();
    n.register(ECHO, |st: &mut Server, ctx, req| {
        match parse_request(req.data) {
            Some((id, resp_size)) => {
                *st.runs.entry(id).or_default() += 1;
                let resp = make_response(id, resp_size as usize);
                ctx.respond_with(req.handle, &resp).unwrap();
            }
            None => {
                st.bad += 1;
                ctx.respond_with(req.handle, b"").unwrap();
            }
        }
    })
    .unwrap();
    n.register(EMPTY, |_st: &mut Server, ctx, req| {
        assert!(req.data.is_empty());
        ctx.respond_with(req.handle, &[]).unwrap();
    })
    .unwrap();
    n
}

struct Net {
    fabric: Sim,
    _hub: LocalHub,
    server: Rpc<SimTransport, Server>,
    client: Rpc<SimTransport, ()>,
    _nexus: (Nexus<Server>, Nexus<()>),
}

fn net(seed: u64, server_cfg: RpcConfig, client_cfg: RpcConfig) -> Net {
    let fabric = Sim::new(seed);
    let hub = LocalHub::new();
    let sn = server_nexus(&hub, "server");
    let cn: Nexus<()> = Nexus::new_local(&hub, "client", 0).unwrap();
    let server = sim_rpc(&sn, &fabric, RING, Server::default(), server_cfg);
    let client = sim_rpc(&cn, &fabric, RING, (), client_cfg);
    Net {
        fabric,
        _hub: hub,
        server,
        client,
        _nexus: (sn, cn),
    }
}

fn connect(n: &mut Net) -> SessionId {
    let s = n.client.create_session("local:server", 0).unwrap();
    let Net {
        fabric,
        server,
        client,
        ..
    } = n;
    let mut done = false;
    let mut state = None;
    while !done {
        step(fabric, &mut [server, client]);
        state = client.session_state(s);
        done = state != Some(SessionState::Connecting);
    }
    assert_eq!(state, Some(SessionState::Connected));
    s
}

/// Issues the requests `(id, req_size, resp_size)` on `session` and runs until all complete;
/// checks every response and that every handler ran exactly once.
fn run_requests(n: &mut Net, session: SessionId, reqs: &[(u64, usize, u32)], max_ns: u64) {
    for &(id, size, resp) in reqs {
        let m = MsgBuf::from_slice(&make_request(id, size, resp));
        n.client.enqueue_request(session, ECHO, m, id).unwrap();
    }
    let mut got: HashMap<u64, u32> = HashMap::new();
    let want = reqs.len();
    let Net {
        fabric,
        server,
        client,
        ..
    } = n;
    let mut count = 0;
    while count < want {
        step(fabric, &mut [server, client]);
        assert!(
            fabric.now_ns() < max_ns,
            "not done within the virtual time budget"
        );
        while let Some(c) = client.poll_completion() {
            let resp = c.result.expect("request failed");
            let (_, _, resp_size) = reqs.iter().find(|r| r.0 == c.tag).unwrap();
            assert_eq!(
                resp.len(),
                *resp_size as usize,
                "response size of {}",
                c.tag
            );
            assert!(
                check(resp.as_slice(), !c.tag),
                "response payload of {}",
                c.tag
            );
            *got.entry(c.tag).or_default() += 1;
            count += 1;
        }
    }
    for &(id, _, _) in reqs {
        assert_eq!(got.get(&id), Some(&1), "request {id} completed once");
        assert_eq!(
            server.state().runs.get(&id),
            Some(&1),
            "handler ran once for {id}"
        );
    }
    assert_eq!(server.state().bad, 0, "the server saw no corrupted request");
}

#[test]
fn one_small_rpc() {
    let mut n = net(1, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    run_requests(&mut n, s, &[(1, 32, 32)], 1_000_000_000);
    assert_eq!(n.client.stats().retransmissions, 0);
    assert_eq!(n.client.stats().responses_received, 1);
}

#[test]
fn empty_request_and_response() {
    let mut n = net(1, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    n.client
        .enqueue_request(s, EMPTY, MsgBuf::new(0), 5)
        .unwrap();
    let Net {
        fabric,
        server,
        client,
        ..
    } = &mut n;
    let mut done = None;
    step(fabric, &mut [server, client]);
    while done.is_none() {
        step(fabric, &mut [server, client]);
        done = client.poll_completion();
    }
    let c = done.unwrap();
    assert_eq!(c.tag, 5);
    assert!(c.result.unwrap().is_empty());
}

#[test]
fn eight_in_flight_on_one_session() {
    let mut n = net(2, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    let reqs: Vec<_> = (0..8).map(|i| (i, 64, 64)).collect();
    run_requests(&mut n, s, &reqs, 1_000_000_000);
}

#[test]
fn backlog_beyond_the_window() {
    let mut n = net(3, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    let reqs: Vec<_> = (0..200).map(|i| (i, 16 + i as usize, 100)).collect();
    run_requests(&mut n, s, &reqs, 1_000_000_000);
}

#[test]
fn backlog_limit_answers_overloaded() {
    let cfg = RpcConfig {
        backlog_limit: 4,
        ..sim_config(2)
    };
    let mut n = net(3, sim_config(1), cfg);
    let s = connect(&mut n);
    for i in 0..12 {
        n.client
            .enqueue_request(s, ECHO, MsgBuf::from_slice(&make_request(i, 16, 16)), i)
            .unwrap();
    }
    let err = n
        .client
        .enqueue_request(s, ECHO, MsgBuf::from_slice(&make_request(99, 16, 16)), 99)
        .unwrap_err();
    assert!(matches!(err, RpcError::Overloaded), "{err}");
}

#[test]
fn multi_packet_requests_and_responses() {
    let mut n = net(4, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    let dpp = (MTU - rpc::pkthdr::HDR_SIZE) as u32;
    let sizes = [
        12,
        dpp - 1,
        dpp,
        dpp + 1,
        2 * dpp,
        2 * dpp + 1,
        33 * dpp,
        100 * dpp + 17,
    ];
    let mut reqs = Vec::new();
    for (i, &a) in sizes.iter().enumerate() {
        for (j, &b) in sizes.iter().enumerate() {
            reqs.push(((i * 100 + j) as u64, a as usize, b));
        }
    }
    run_requests(&mut n, s, &reqs, 10_000_000_000);
    assert!(
        n.client.stats().credit_stalls > 0,
        "large messages hit the credit limit"
    );
}

#[test]
fn random_sizes_up_to_8_mb() {
    let mut n = net(5, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    let mut rng = 0x1234_5678_u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let max = 8 << 20;
    let mut reqs: Vec<(u64, usize, u32)> = (0..12)
        .map(|i| (i, (next() % max) as usize, (next() % max) as u32))
        .collect();
    reqs.push((100, max as usize, max as u32));
    reqs.push((101, 12, max as u32));
    reqs.push((102, max as usize, 0));
    run_requests(&mut n, s, &reqs, 60_000_000_000);
}

#[test]
fn too_large_messages_are_refused() {
    let mut n = net(5, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    let err = n
        .client
        .enqueue_request(s, ECHO, MsgBuf::new((8 << 20) + 1), 1)
        .unwrap_err();
    assert!(matches!(err, RpcError::MsgTooLarge { .. }), "{err}");
}

#[test]
fn many_sessions() {
    let mut n = net(6, sim_config(1), sim_config(2));
    let sessions: Vec<_> = (0..100)
        .map(|_| n.client.create_session("local:server", 0).unwrap())
        .collect();
    let mut id = 0;
    let mut reqs = Vec::new();
    for &s in &sessions {
        for _ in 0..3 {
            let m = MsgBuf::from_slice(&make_request(id, 40, 40));
            n.client.enqueue_request(s, ECHO, m, id).unwrap();
            reqs.push(id);
            id += 1;
        }
    }
    let Net {
        fabric,
        server,
        client,
        ..
    } = &mut n;
    let mut done = 0;
    while done < reqs.len() {
        step(fabric, &mut [server, client]);
        while let Some(c) = client.poll_completion() {
            assert!(check(c.result.unwrap().as_slice(), !c.tag));
            done += 1;
        }
    }
    assert_eq!(server.ctx().num_sessions(), 100);
    assert!(server.state().runs.values().all(|&r| r == 1));
}

#[test]
fn continuation_issues_requests_beyond_the_window() {
    #[derive(Default)]
    struct Client {
        session: SessionId,
        issued: u64,
        done: Vec<u64>,
    }
    let fabric = Sim::new(7);
    let hub = LocalHub::new();
    let sn = server_nexus(&hub, "server");
    let cn: Nexus<Client> = Nexus::new_local(&hub, "client", 0).unwrap();
    let mut server = sim_rpc(&sn, &fabric, RING, Server::default(), sim_config(1));
    let mut client = sim_rpc(&cn, &fabric, RING, Client::default(), sim_config(2));
    const TOTAL: u64 = 300;
    client.set_continuation(|st: &mut Client, ctx, c| {
        assert!(check(c.result.unwrap().as_slice(), !c.tag));
        st.done.push(c.tag);
        ctx.free_msg(c.req);
        // Each completion issues two more requests until TOTAL: the backlog grows past
        // the window from inside continuations.
        for _ in 0..2 {
            if st.issued < TOTAL {
                let id = st.issued;
                st.issued += 1;
                let m = ctx.msg_from(&make_request(id, 20, 30));
                ctx.enqueue_request(st.session, ECHO, m, id).unwrap();
            }
        }
    });
    let s = client.create_session("local:server", 0).unwrap();
    client.state_mut().session = s;
    let m = MsgBuf::from_slice(&make_request(0, 20, 30));
    client.enqueue_request(s, ECHO, m, 0).unwrap();
    client.state_mut().issued = 1;
    let mut finished = false;
    while !finished {
        step(&fabric, &mut [&mut server, &mut client]);
        finished = client.state().done.len() as u64 == TOTAL;
    }
    let mut done = client.state().done.clone();
    done.sort();
    assert_eq!(done, (0..TOTAL).collect::<Vec<_>>());
}

#[test]
fn nested_rpc_from_a_handler() {
    // client -> middle -> backend: the middle's handler keeps the request handle, calls the
    // backend, and responds from its continuation when the backend answers.
    #[derive(Default)]
    struct Middle {
        backend: SessionId,
        waiting: HashMap<u64, ReqHandle>,
        next_tag: u64,
    }
    let fabric = Sim::new(8);
    let hub = LocalHub::new();
    let bn = server_nexus(&hub, "backend");
    let mn: Nexus<Middle> = Nexus::new_local(&hub, "middle", 0).unwrap();
    mn.register(ECHO, |st: &mut Middle, ctx, req| {
        let tag = st.next_tag;
        st.next_tag += 1;
        st.waiting.insert(tag, req.handle);
        let fwd = ctx.msg_from(req.data);
        ctx.enqueue_request(st.backend, ECHO, fwd, tag).unwrap();
    })
    .unwrap();
    let cn: Nexus<()> = Nexus::new_local(&hub, "client", 0).unwrap();
    let mut backend = sim_rpc(&bn, &fabric, RING, Server::default(), sim_config(1));
    let mut middle = sim_rpc(&mn, &fabric, RING, Middle::default(), sim_config(2));
    let mut client = sim_rpc(&cn, &fabric, RING, (), sim_config(3));
    middle.set_continuation(|st: &mut Middle, ctx, c| {
        let h = st.waiting.remove(&c.tag).unwrap();
        let resp = c.result.unwrap();
        ctx.respond(h, resp).unwrap();
        ctx.free_msg(c.req);
    });
    let b = middle.create_session("local:backend", 0).unwrap();
    middle.state_mut().backend = b;
    let s = client.create_session("local:middle", 0).unwrap();
    for id in 0..20u64 {
        let m = MsgBuf::from_slice(&make_request(id, 100 + id as usize * 300, 5000));
        client.enqueue_request(s, ECHO, m, id).unwrap();
    }
    let mut done = 0;
    while done < 20 {
        step(&fabric, &mut [&mut backend, &mut middle, &mut client]);
        while let Some(c) = client.poll_completion() {
            let r = c.result.unwrap();
            assert_eq!(r.len(), 5000);
            assert!(check(r.as_slice(), !c.tag));
            done += 1;
        }
    }
    assert!(middle.state().waiting.is_empty());
    assert_eq!(backend.state().runs.len(), 20);
}

#[test]
fn background_handlers_run_on_nexus_threads() {
    let fabric = Sim::realtime(9);
    let hub = LocalHub::new();
    let sn: Nexus<()> = Nexus::new_local(&hub, "server", 2).unwrap();
    let main_thread = std::thread::current().id();
    sn.register_background(3, move |data| {
        assert_ne!(std::thread::current().id(), main_thread);
        std::thread::sleep(Duration::from_millis(2));
        let mut v = data.to_vec();
        v.reverse();
        v
    })
    .unwrap();
    let cn: Nexus<()> = Nexus::new_local(&hub, "client", 0).unwrap();
    let mut server = sim_rpc(&sn, &fabric, RING, (), sim_config(1));
    let mut client = sim_rpc(&cn, &fabric, RING, (), sim_config(2));
    let s = client.create_session("local:server", 0).unwrap();
    for i in 0..16u64 {
        let data: Vec<u8> = (0..3000).map(|j| (j as u64 * i) as u8).collect();
        client
            .enqueue_request(s, 3, MsgBuf::from_slice(&data), i)
            .unwrap();
    }
    let mut done = 0;
    let start = std::time::Instant::now();
    while done < 16 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "background requests stuck"
        );
        server.run_once();
        client.run_once();
        while let Some(c) = client.poll_completion() {
            let mut expect: Vec<u8> = (0..3000).map(|j| (j as u64 * c.tag) as u8).collect();
            expect.reverse();
            assert_eq!(c.result.unwrap().as_slice(), &expect[..]);
            done += 1;
        }
    }
    assert_eq!(server.stats().handlers_run, 16);
}

#[test]
fn unknown_request_type_gets_an_error() {
    let mut n = net(10, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    n.client
        .enqueue_request(s, 200, MsgBuf::from_slice(b"x"), 1)
        .unwrap();
    let Net {
        fabric,
        server,
        client,
        ..
    } = &mut n;
    let mut c = None;
    while c.is_none() {
        step(fabric, &mut [server, client]);
        c = client.poll_completion();
    }
    assert!(matches!(c.unwrap().result, Err(RpcError::NoHandler(200))));
}

/// A transport that claims any kind and whose routing info is garbage, for the error matrix.
struct FakeTransport(TransportKind);
impl Transport for FakeTransport {
    fn kind(&self) -> TransportKind {
        self.0
    }
    fn routing_info(&self) -> RoutingInfo {
        RoutingInfo::new(b"??").unwrap()
    }
    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        Ok((0, self.routing_info()))
    }
    fn resolve(&mut self, _: RouteId, _: &RoutingInfo) -> Result<(), TransportError> {
        Ok(())
    }
    fn route_free(&mut self, _: RouteId) {}
    fn max_pkt_size(&self) -> usize {
        MTU
    }
    fn rx_ring_size(&self) -> usize {
        RING
    }
    fn tx_burst(&mut self, p: &[TxPkt<'_>]) -> Result<usize, TransportError> {
        Ok(p.len())
    }
    fn rx_burst(&mut self) -> usize {
        0
    }
    fn rx_pkt(&self, _: usize) -> &[u8] {
        &[]
    }
    fn rx_release(&mut self, _: usize) {}
    fn wait(&mut self, _: Option<Duration>) -> Result<(), TransportError> {
        Ok(())
    }
    fn stats(&self) -> TransportStats {
        TransportStats::default()
    }
}

/// Opens a session from `client` and steps both until it leaves Connecting.
fn try_connect<T: Transport, S: 'static>(
    server: &mut Rpc<SimTransport, Server>,
    client: &mut Rpc<T, S>,
    uri: &str,
    rpc_id: u8,
) -> Result<SessionId, ConnectFailure> {
    let s = client.create_session(uri, rpc_id).unwrap();
    let start = std::time::Instant::now();
    loop {
        server.run_once();
        client.run_once();
        match client.session_state(s) {
            Some(SessionState::Connected) => return Ok(s),
            Some(SessionState::Failed(f)) => {
                client.destroy_session(s).unwrap();
                assert_eq!(client.session_state(s), None);
                return Err(f);
            }
            _ => assert!(start.elapsed() < Duration::from_secs(10)),
        }
    }
}

#[test]
fn connect_error_matrix() {
    let fabric = Sim::realtime(11);
    let hub = LocalHub::new();
    let sn = server_nexus(&hub, "server");
    let cfg = RpcConfig {
        max_sessions: 3,
        ..sim_config(1)
    };
    let mut server = sim_rpc(&sn, &fabric, RING, Server::default(), cfg);
    let cn: Nexus<()> = Nexus::new_local(&hub, "client", 0).unwrap();
    let mut client = sim_rpc(&cn, &fabric, RING, (), sim_config(2));

    // No such remote Rpc.
    assert_eq!(
        try_connect(&mut server, &mut client, "local:server", 9),
        Err(ConnectFailure::NoSuchRemoteRpc)
    );
    // An unknown Nexus name is refused before anything is sent.
    assert!(matches!(
        client.create_session("local:nobody", 0),
        Err(RpcError::BadRemote(_))
    ));
    // Max sessions, then max + 1.
    for _ in 0..3 {
        try_connect(&mut server, &mut client, "local:server", 0).unwrap();
    }
    assert_eq!(
        try_connect(&mut server, &mut client, "local:server", 0),
        Err(ConnectFailure::TooManySessions)
    );
    assert_eq!(server.ctx().num_sessions(), 3);

    // Transport mismatch and routing resolution failure.
    let xn: Nexus<()> = Nexus::new_local(&hub, "odd", 0).unwrap();
    let mut tcp = Rpc::new(&xn, 0, FakeTransport(TransportKind::Tcp), (), sim_config(3)).unwrap();
    let sn2 = server_nexus(&hub, "server2");
    let mut server2 = sim_rpc(&sn2, &fabric, RING, Server::default(), sim_config(4));
    assert_eq!(
        try_connect(&mut server2, &mut tcp, "local:server2", 0),
        Err(ConnectFailure::TransportMismatch)
    );
    let mut garbled =
        Rpc::new(&xn, 1, FakeTransport(TransportKind::Sim), (), sim_config(5)).unwrap();
    assert_eq!(
        try_connect(&mut server2, &mut garbled, "local:server2", 0),
        Err(ConnectFailure::RoutingResolution)
    );

    // Ring exhausted: a 64-entry ring admits two 32-credit sessions.
    let sn3 = server_nexus(&hub, "server3");
    let mut small = sim_rpc(&sn3, &fabric, 64, Server::default(), sim_config(6));
    for _ in 0..2 {
        try_connect(&mut small, &mut client, "local:server3", 0).unwrap();
    }
    assert_eq!(
        try_connect(&mut small, &mut client, "local:server3", 0),
        Err(ConnectFailure::RingExhausted)
    );

    // The client's own ring and session limits are checked locally.
    let ln: Nexus<()> = Nexus::new_local(&hub, "tiny", 0).unwrap();
    let mut tiny = sim_rpc(&ln, &fabric, 32, (), sim_config(7));
    try_connect(&mut server2, &mut tiny, "local:server2", 0).unwrap();
    assert!(matches!(
        tiny.create_session("local:server2", 0),
        Err(RpcError::RingExhausted)
    ));

    // Timeout: the remote Rpc exists but never runs its event loop.
    let dn = server_nexus(&hub, "dead");
    let _dead = sim_rpc(&dn, &fabric, RING, Server::default(), sim_config(8));
    let tn: Nexus<()> = Nexus::new_local(&hub, "impatient", 0).unwrap();
    // 2 s of 20 ms retries: at least 3 attempts even if a loaded machine leaves this thread
    // unscheduled for most of the timeout (the fabric runs in real time here).
    let cfg = RpcConfig {
        connect_timeout: Duration::from_secs(2),
        sm_retry: Duration::from_millis(20),
        ..sim_config(9)
    };
    let mut impatient = sim_rpc(&tn, &fabric, RING, (), cfg);
    assert_eq!(
        try_connect(&mut server, &mut impatient, "local:dead", 0),
        Err(ConnectFailure::Timeout)
    );
    assert!(
        impatient.stats().sm_tx >= 3,
        "the connect request was retried"
    );
}

#[test]
fn requests_on_a_failed_session_complete_with_errors() {
    let fabric = Sim::realtime(12);
    let hub = LocalHub::new();
    let sn = server_nexus(&hub, "server");
    let mut server = sim_rpc(&sn, &fabric, RING, Server::default(), sim_config(1));
    let cn: Nexus<()> = Nexus::new_local(&hub, "client", 0).unwrap();
    let mut client = sim_rpc(&cn, &fabric, RING, (), sim_config(2));
    let s = client.create_session("local:server", 42).unwrap();
    for i in 0..3 {
        client
            .enqueue_request(s, ECHO, MsgBuf::from_slice(b"abc"), i)
            .unwrap();
    }
    let mut errors = 0;
    while errors < 3 {
        server.run_once();
        client.run_once();
        while let Some(c) = client.poll_completion() {
            assert!(matches!(c.result, Err(RpcError::NoSuchRemoteRpc(42))));
            errors += 1;
        }
    }
    assert!(matches!(
        client.enqueue_request(s, ECHO, MsgBuf::new(1), 9),
        Err(RpcError::NotConnected(_))
    ));
}

#[test]
fn disconnect_frees_both_ends() {
    let mut n = net(13, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    n.client
        .enqueue_request(s, ECHO, MsgBuf::from_slice(&make_request(1, 20, 20)), 1)
        .unwrap();
    assert!(matches!(
        n.client.destroy_session(s),
        Err(RpcError::SessionBusy(_))
    ));
    let Net {
        fabric,
        server,
        client,
        ..
    } = &mut n;
    while client.poll_completion().is_none() {
        step(fabric, &mut [server, client]);
    }
    assert_eq!(server.ctx().num_sessions(), 1);
    client.destroy_session(s).unwrap();
    assert_eq!(client.session_state(s), Some(SessionState::Disconnecting));
    while client.session_state(s).is_some() {
        step(fabric, &mut [server, client]);
    }
    assert_eq!(server.ctx().num_sessions(), 0);
    assert_eq!(client.ctx().num_sessions(), 0);
    assert!(matches!(
        client.enqueue_request(s, ECHO, MsgBuf::new(1), 2),
        Err(RpcError::InvalidSession(_))
    ));
    // A new session works after the old one is gone, and stale packets of the old one are
    // dropped by token.
    let s2 = connect(&mut n);
    run_requests(&mut n, s2, &[(7, 30, 30)], 1_000_000_000);
}

fn lossy(seed: u64, faults: LinkFaults) -> Net {
    let n = net(seed, sim_config(seed), sim_config(seed + 1));
    n.fabric.set_default_faults(faults);
    n
}

#[test]
fn thirty_percent_drop_with_multi_packet_requests() {
    let mut n = lossy(
        14,
        LinkFaults {
            drop: 0.3,
            ..LinkFaults::default()
        },
    );
    let s = connect(&mut n);
    let s2 = connect(&mut n);
    let dpp = MTU - rpc::pkthdr::HDR_SIZE;
    // 64-96 packet requests, as in eRPC's loss test, with small and multi-packet responses.
    let reqs: Vec<_> = (0..12u64)
        .map(|i| {
            (
                i,
                dpp * (64 + (i as usize * 7) % 33),
                if i % 2 == 0 { 32 } else { 20_000 },
            )
        })
        .collect();
    let (a, b) = reqs.split_at(6);
    for &(id, size, resp) in b {
        let m = MsgBuf::from_slice(&make_request(id, size, resp));
        n.client.enqueue_request(s2, ECHO, m, id).unwrap();
    }
    run_requests_keep(&mut n, s, a, b);
    assert!(n.client.stats().retransmissions > 10);
    assert!(n.fabric.stats().dropped > 100);
}

/// Like `run_requests` for `mine`, while `others` are already enqueued on another session.
fn run_requests_keep(
    n: &mut Net,
    session: SessionId,
    mine: &[(u64, usize, u32)],
    others: &[(u64, usize, u32)],
) {
    for &(id, size, resp) in mine {
        let m = MsgBuf::from_slice(&make_request(id, size, resp));
        n.client.enqueue_request(session, ECHO, m, id).unwrap();
    }
    let all: Vec<_> = mine.iter().chain(others).copied().collect();
    let mut got: HashMap<u64, u32> = HashMap::new();
    let Net {
        fabric,
        server,
        client,
        ..
    } = n;
    while got.values().sum::<u32>() < all.len() as u32 {
        step(fabric, &mut [server, client]);
        while let Some(c) = client.poll_completion() {
            let resp = c.result.expect("request failed");
            let (_, _, rs) = all.iter().find(|r| r.0 == c.tag).unwrap();
            assert_eq!(resp.len(), *rs as usize);
            assert!(check(resp.as_slice(), !c.tag));
            *got.entry(c.tag).or_default() += 1;
        }
    }
    for (id, _, _) in &all {
        assert_eq!(got.get(id), Some(&1));
        assert_eq!(
            server.state().runs.get(id),
            Some(&1),
            "handler ran once for {id}"
        );
    }
}

#[test]
fn duplicates_and_reordering() {
    let mut n = lossy(
        15,
        LinkFaults {
            drop: 0.05,
            duplicate: 0.2,
            delay_ns: 2_000,
            reorder_ns: 20_000,
        },
    );
    let s = connect(&mut n);
    let reqs: Vec<_> = (0..60u64)
        .map(|i| {
            (
                i,
                12 + (i as usize * 977) % 20_000,
                ((i * 1231) % 15_000) as u32,
            )
        })
        .collect();
    run_requests(&mut n, s, &reqs, 600_000_000_000);
    assert!(n.fabric.stats().duplicated > 10);
    assert!(n.client.stats().dropped_unexpected + n.server.stats().dropped_unexpected > 0);
}

#[test]
fn simulation_is_deterministic() {
    let run = || {
        let mut n = lossy(
            16,
            LinkFaults {
                drop: 0.2,
                duplicate: 0.05,
                delay_ns: 1_000,
                reorder_ns: 5_000,
            },
        );
        let s = connect(&mut n);
        let reqs: Vec<_> = (0..20u64).map(|i| (i, 3000 * i as usize, 2000)).collect();
        run_requests(&mut n, s, &reqs, 600_000_000_000);
        (n.client.stats(), n.server.stats(), n.fabric.now_ns())
    };
    assert_eq!(run(), run());
}

#[test]
fn garbage_packets_are_counted_and_dropped() {
    let mut n = net(17, sim_config(1), sim_config(2));
    let s = connect(&mut n);
    let server_node = 1; // the server's transport was attached first
    let mut rng = 99u64;
    for i in 0..2000u32 {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let len = (rng >> 33) as usize % 80;
        let mut pkt: Vec<u8> = (0..len).map(|j| (rng >> (j % 56)) as u8).collect();
        if i % 2 == 0 && pkt.len() >= 32 {
            // Well-formed headers naming live and dead sessions with wrong tokens.
            let h = rpc::pkthdr::PktHdr::new(&rpc::pkthdr::PktInfo {
                pkt_type: rpc::pkthdr::PktType::Req,
                req_type: ECHO,
                dest_session: i % 3,
                pkt_num: 0,
                msg_size: (pkt.len() - 32) as u32,
                req_num: u64::from(i),
                token: i,
                status: 0,
            });
            pkt[..32].copy_from_slice(h.as_bytes());
        }
        n.fabric.inject(server_node, &pkt);
    }
    run_requests(&mut n, s, &[(1, 100, 100), (2, 5000, 5000)], 1_000_000_000);
    let st = n.server.stats();
    assert_eq!(
        st.dropped_malformed + st.dropped_bad_session,
        2000,
        "every garbage packet is accounted for: {st:?}"
    );
    assert_eq!(n.server.state().runs.len(), 2, "no handler saw garbage");
}

/// Completes every pending request on the client; returns the completions.
fn collect(n: &mut Net, count: usize) -> Vec<rpc::Completion> {
    let Net {
        fabric,
        server,
        client,
        ..
    } = n;
    let mut out = Vec::new();
    while out.len() < count {
        step(fabric, &mut [server, client]);
        while let Some(c) = client.poll_completion() {
            out.push(c);
        }
    }
    out
}

#[test]
fn error_responses_return_their_credit() {
    let cfg = RpcConfig {
        credits: 4,
        ..sim_config(2)
    };
    let mut n = net(20, sim_config(1), cfg);
    let s = connect(&mut n);
    for i in 0..20 {
        n.client
            .enqueue_request(s, 250, MsgBuf::from_slice(b"?"), i)
            .unwrap();
    }
    let done = collect(&mut n, 20);
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::NoHandler(250)))));
    run_requests(&mut n, s, &[(1, 10_000, 10_000)], 10_000_000_000);
}

#[test]
fn backlog_limit_holds_while_connecting() {
    let cfg = RpcConfig {
        backlog_limit: 4,
        ..sim_config(2)
    };
    let mut n = net(21, sim_config(1), cfg);
    let s = n.client.create_session("local:server", 0).unwrap();
    for i in 0..12 {
        n.client
            .enqueue_request(s, ECHO, MsgBuf::from_slice(&make_request(i, 16, 16)), i)
            .unwrap();
    }
    assert!(matches!(
        n.client
            .enqueue_request(s, ECHO, MsgBuf::from_slice(&make_request(99, 16, 16)), 99),
        Err(RpcError::Overloaded)
    ));
    let done = collect(&mut n, 12);
    assert!(done.iter().all(|c| c.result.is_ok()));
}

#[test]
fn backlogged_requests_over_the_agreed_size_fail_and_the_rest_run() {
    // The server accepts smaller messages than the client: requests queued while connecting
    // that exceed the agreed limit complete with MsgTooLarge; the others still run.
    let server_cfg = RpcConfig {
        max_msg_size: 4096,
        ..sim_config(1)
    };
    let mut n = net(22, server_cfg, sim_config(2));
    let s = n.client.create_session("local:server", 0).unwrap();
    let mut small = 0;
    for i in 0..30u64 {
        let size = if i % 3 == 0 { 1000 } else { 10_000 };
        if size == 1000 {
            small += 1;
        }
        n.client
            .enqueue_request(s, ECHO, MsgBuf::from_slice(&make_request(i, size, 64)), i)
            .unwrap();
    }
    let done = collect(&mut n, 30);
    let ok = done.iter().filter(|c| c.result.is_ok()).count();
    let too_large = done
        .iter()
        .filter(|c| matches!(c.result, Err(RpcError::MsgTooLarge { max: 4096, .. })))
        .count();
    assert_eq!((ok, too_large), (small, 30 - small));
    assert_eq!(n.client.ctx().session_max_msg(s), Some(4096));
}

#[test]
fn a_panicking_handler_fails_its_request_only() {
    let fabric = Sim::new(23);
    let hub = LocalHub::new();
    let sn: Nexus<()> = Nexus::new_local(&hub, "server", 0).unwrap();
    sn.register(ECHO, |_, ctx, req| {
        if req.data == b"boom" {
            panic!("handler bug");
        }
        ctx.respond_with(req.handle, req.data).unwrap();
    })
    .unwrap();
    let cn: Nexus<()> = Nexus::new_local(&hub, "client", 0).unwrap();
    let mut server = sim_rpc(&sn, &fabric, RING, (), sim_config(1));
    let mut client = sim_rpc(&cn, &fabric, RING, (), sim_config(2));
    let s = client.create_session("local:server", 0).unwrap();
    for (i, m) in [&b"ok"[..], b"boom", b"fine"].iter().enumerate() {
        client
            .enqueue_request(s, ECHO, MsgBuf::from_slice(m), i as u64)
            .unwrap();
    }
    let mut done = Vec::new();
    while done.len() < 3 {
        step(&fabric, &mut [&mut server, &mut client]);
        while let Some(c) = client.poll_completion() {
            done.push(c);
        }
    }
    done.sort_by_key(|c| c.tag);
    assert_eq!(done[0].result.as_ref().unwrap().as_slice(), b"ok");
    assert!(matches!(done[1].result, Err(RpcError::HandlerFailed)));
    assert_eq!(done[2].result.as_ref().unwrap().as_slice(), b"fine");
}

/// A transport that cannot make routes.
struct NoRoutes(SimTransport);
impl Transport for NoRoutes {
    fn kind(&self) -> TransportKind {
        self.0.kind()
    }
    fn routing_info(&self) -> RoutingInfo {
        self.0.routing_info()
    }
    fn route_alloc(&mut self) -> Result<(RouteId, RoutingInfo), TransportError> {
        Err(TransportError::RoutesExhausted(0))
    }
    fn resolve(&mut self, r: RouteId, i: &RoutingInfo) -> Result<(), TransportError> {
        self.0.resolve(r, i)
    }
    fn route_free(&mut self, r: RouteId) {
        self.0.route_free(r)
    }
    fn max_pkt_size(&self) -> usize {
        self.0.max_pkt_size()
    }
    fn rx_ring_size(&self) -> usize {
        self.0.rx_ring_size()
    }
    fn tx_burst(&mut self, p: &[TxPkt<'_>]) -> Result<usize, TransportError> {
        self.0.tx_burst(p)
    }
    fn rx_burst(&mut self) -> usize {
        self.0.rx_burst()
    }
    fn rx_pkt(&self, i: usize) -> &[u8] {
        self.0.rx_pkt(i)
    }
    fn rx_release(&mut self, n: usize) {
        self.0.rx_release(n)
    }
    fn wait(&mut self, t: Option<Duration>) -> Result<(), TransportError> {
        self.0.wait(t)
    }
    fn stats(&self) -> TransportStats {
        self.0.stats()
    }
}

#[test]
fn a_transport_that_cannot_make_a_route_fails_create_session() {
    let fabric = Sim::new(24);
    let hub = LocalHub::new();
    let _sn = server_nexus(&hub, "server");
    let cn: Nexus<()> = Nexus::new_local(&hub, "client", 0).unwrap();
    let t = NoRoutes(fabric.transport(MTU, RING));
    let mut client = Rpc::new(&cn, 0, t, (), sim_config(2)).unwrap();
    fabric.adopt(&mut client);
    assert!(matches!(
        client.create_session("local:server", 0),
        Err(RpcError::Transport(TransportError::RoutesExhausted(_)))
    ));
    assert_eq!(client.ctx().num_sessions(), 0, "nothing is left behind");
    assert_eq!(client.stats().sm_tx, 0, "nothing was sent");
}

#[test]
fn liveness_through_the_nexus_in_virtual_time() {
    // The Nexus answers pings from the live table its Rpcs keep: an idle session stays up
    // for as long as both Rpcs exist, and a server Rpc that goes away is noticed at the
    // client's next ping (its Nexus answers NoSuchRpc).
    let t = Duration::from_millis(40);
    let cfg = |seed| RpcConfig {
        failure_timeout: Some(t),
        ..sim_config(seed)
    };
    let mut n = net(25, cfg(1), cfg(2));
    let s = connect(&mut n);
    let Net {
        fabric,
        server,
        client,
        ..
    } = &mut n;
    let idle_until = fabric.now_ns() + 25 * t.as_nanos() as u64;
    while fabric.now_ns() < idle_until {
        step(fabric, &mut [server, client]);
    }
    assert_eq!(client.session_state(s), Some(SessionState::Connected));
    assert!(client.stats().pings_sent > 0 && server.stats().pings_sent > 0);
    assert_eq!(client.stats().sessions_reset, 0);
    assert_eq!(server.stats().server_sessions_reaped, 0);
    client
        .enqueue_request_with_deadline(s, ECHO, MsgBuf::from_slice(b"pending"), 1, None)
        .unwrap();
    let Net {
        fabric,
        server,
        client,
        ..
    } = &mut n;
    // The server Rpc goes away (its Nexus stays).
    let gone = std::mem::replace(
        server,
        sim_rpc(
            &server_nexus(&LocalHub::new(), "elsewhere"),
            fabric,
            RING,
            Server::default(),
            sim_config(9),
        ),
    );
    drop(gone);
    let stopped = fabric.now_ns();
    while client.session_state(s) == Some(SessionState::Connected) {
        step(fabric, &mut [client]);
    }
    assert!(fabric.now_ns() - stopped <= t.as_nanos() as u64 / 4 + 1_000_000);
    assert_eq!(
        client.session_state(s),
        Some(SessionState::Failed(ConnectFailure::PeerFailed))
    );
    let c = client
        .poll_completion()
        .expect("the pending request completed");
    assert!(matches!(c.result, Err(RpcError::PeerFailed)));
    assert_eq!(client.stats().sessions_reset, 1);
}
