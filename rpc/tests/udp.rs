//! The rpc crate over real UDP sockets on 127.0.0.1, server and client on separate threads.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use rpc::{MsgBuf, Nexus, Rpc, RpcConfig, RpcError, RpcStats, SessionId};
use transports::udp::{UdpConfig, UdpTransport};

const ECHO: u8 = 1;

#[derive(Default)]
struct Server {
    runs: HashMap<u64, u32>,
    bad: u32,
}

struct ServerThread {
    uri: String,
    data_addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(RpcStats, HashMap<u64, u32>, u32)>,
}

fn udp(mtu: usize) -> UdpTransport {
    udp_with(mtu, true)
}

fn udp_with(mtu: usize, connect_single_peer: bool) -> UdpTransport {
    UdpTransport::new(UdpConfig {
        max_pkt_size: mtu,
        connect_single_peer,
        ..UdpConfig::default()
    })
    .unwrap()
}

fn start_server(mtu: usize, cfg: RpcConfig) -> ServerThread {
    start_server_with(mtu, cfg, true)
}

fn start_server_with(mtu: usize, cfg: RpcConfig, connect_single_peer: bool) -> ServerThread {
    let nexus: Nexus<Server> = Nexus::new("127.0.0.1:0", 0).unwrap();
    nexus
        .register(ECHO, |st: &mut Server, ctx, req| {
            match parse_request(req.data) {
                Some((id, resp_size)) => {
                    *st.runs.entry(id).or_default() += 1;
                    ctx.respond_with(req.handle, &make_response(id, resp_size as usize))
                        .unwrap();
                }
                None => {
                    st.bad += 1;
                    ctx.respond_with(req.handle, b"").unwrap();
                }
            }
        })
        .unwrap();
    let uri = nexus.uri().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let t = udp_with(mtu, connect_single_peer);
            let addr = t.local_addr();
            let mut rpc = Rpc::new(&nexus, 0, t, Server::default(), cfg).unwrap();
            tx.send(addr).unwrap();
            while !stop.load(Ordering::Relaxed) {
                rpc.run_for(Duration::from_millis(5));
            }
            let st = rpc.stats();
            let s = rpc.state_mut();
            (st, std::mem::take(&mut s.runs), s.bad)
        })
    };
    let data_addr = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    ServerThread {
        uri,
        data_addr,
        stop,
        thread,
    }
}

impl ServerThread {
    fn finish(self) -> (RpcStats, HashMap<u64, u32>, u32) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn client(mtu: usize) -> (Rpc<UdpTransport>, Nexus) {
    let nexus: Nexus = Nexus::new("127.0.0.1:0", 0).unwrap();
    let rpc = Rpc::new(&nexus, 0, udp(mtu), (), RpcConfig::default()).unwrap();
    (rpc, nexus)
}

/// Enqueues `reqs` (id, size, response size) round-robin over `sessions` and checks every
/// response.
fn run(rpc: &mut Rpc<UdpTransport>, sessions: &[SessionId], reqs: &[(u64, usize, u32)]) {
    for (i, &(id, size, resp)) in reqs.iter().enumerate() {
        let s = sessions[i % sessions.len()];
        rpc.enqueue_request(
            s,
            ECHO,
            MsgBuf::from_slice(&make_request(id, size, resp)),
            id,
        )
        .unwrap();
    }
    let mut got = HashMap::new();
    let ok = rpc.run_until(
        |rpc| {
            while let Some(c) = rpc.poll_completion() {
                let resp = c.result.expect("request failed");
                let (_, _, rs) = reqs.iter().find(|r| r.0 == c.tag).unwrap();
                assert_eq!(resp.len(), *rs as usize);
                assert!(check(resp.as_slice(), !c.tag), "payload of {}", c.tag);
                *got.entry(c.tag).or_insert(0) += 1;
            }
            got.len() == reqs.len()
        },
        Duration::from_secs(60),
    );
    assert!(
        ok,
        "only {} of {} requests completed",
        got.len(),
        reqs.len()
    );
    assert!(got.values().all(|&n| n == 1));
}

#[test]
fn small_rpcs_many_in_flight() {
    let server = start_server(1472, RpcConfig::default());
    let (mut rpc, _n) = client(1472);
    let s = rpc.connect(&server.uri, 0).unwrap();
    let resp = rpc
        .call(s, ECHO, &make_request(999, 32, 32), Duration::from_secs(5))
        .unwrap();
    assert!(check(resp.as_slice(), !999));
    let reqs: Vec<_> = (0..500).map(|i| (i, 32, 32)).collect();
    run(&mut rpc, &[s], &reqs);
    let (stats, runs, bad) = server.finish();
    assert_eq!(bad, 0);
    assert_eq!(runs.len(), 501);
    assert!(runs.values().all(|&n| n == 1), "at-most-once");
    assert_eq!(stats.dropped_malformed, 0);
}

#[test]
fn large_messages_both_directions() {
    let server = start_server(8192, RpcConfig::default());
    let (mut rpc, _n) = client(8192);
    let s = rpc.connect(&server.uri, 0).unwrap();
    let max = 8 << 20;
    let reqs = [
        (1, max, 16),
        (2, 12, max as u32),
        (3, max, max as u32),
        (4, 3_000_001, 1_234_567),
        (5, 0, 0),
        (6, 8179, 8180),
    ];
    run(&mut rpc, &[s], &reqs);
    let (_, runs, bad) = server.finish();
    assert_eq!(bad, 0);
    assert_eq!(runs.len(), 6);
}

#[test]
fn many_sessions_and_reconnect() {
    let server = start_server(1472, RpcConfig::default());
    let (mut rpc, _n) = client(1472);
    let sessions: Vec<_> = (0..64)
        .map(|_| rpc.connect(&server.uri, 0).unwrap())
        .collect();
    let reqs: Vec<_> = (0..640)
        .map(|i| (i, 100 + (i as usize % 3000), 64))
        .collect();
    run(&mut rpc, &sessions, &reqs);
    for &s in &sessions {
        rpc.disconnect(s).unwrap();
    }
    assert_eq!(rpc.ctx().num_sessions(), 0);
    let s = rpc.connect(&server.uri, 0).unwrap();
    run(&mut rpc, &[s], &[(10_000, 40, 40)]);
    let (_, runs, _) = server.finish();
    assert_eq!(runs.len(), 641);
}

#[test]
fn connect_errors_over_udp() {
    let server = start_server(1472, RpcConfig::default());
    let (mut rpc, _n) = client(1472);
    assert!(matches!(
        rpc.connect(&server.uri, 7),
        Err(RpcError::NoSuchRemoteRpc(7))
    ));
    // Nothing listens on this port: the connect times out.
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_uri = dead.local_addr().unwrap().to_string();
    let nexus: Nexus = Nexus::new("127.0.0.1:0", 0).unwrap();
    let cfg = RpcConfig {
        connect_timeout: Duration::from_millis(300),
        ..RpcConfig::default()
    };
    let mut impatient = Rpc::new(&nexus, 0, udp(1472), (), cfg).unwrap();
    let t0 = Instant::now();
    assert!(matches!(
        impatient.connect(&dead_uri, 0),
        Err(RpcError::Timeout)
    ));
    assert!(t0.elapsed() < Duration::from_secs(3));
    server.finish();
}

#[test]
fn garbage_datagrams_do_not_disturb_a_working_client() {
    // With one client, the server's socket would be connected to it and the kernel would
    // drop the garbage before the rpc layer sees it: turn that off to exercise the parsers.
    let server = start_server_with(1472, RpcConfig::default(), false);
    let (mut rpc, _n) = client(1472);
    let s = rpc.connect(&server.uri, 0).unwrap();
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let sm_addr: SocketAddr = server.uri.parse().unwrap();
    let mut rng = 7u64;
    let mut sent = 0u64;
    for round in 0..20u64 {
        for _ in 0..100 {
            rng = rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (rng >> 40) as usize % 200;
            let mut pkt: Vec<u8> = (0..len).map(|j| (rng >> (j % 57)) as u8).collect();
            if rng.is_multiple_of(3) && pkt.len() >= 32 {
                // A plausible header: right magic and version, random everything else.
                pkt[0] = rpc::pkthdr::MAGIC;
                pkt[1] = rpc::pkthdr::VERSION;
            }
            attacker.send_to(&pkt, server.data_addr).unwrap();
            attacker.send_to(&pkt, sm_addr).unwrap();
            sent += 1;
        }
        let reqs: Vec<_> = (0..10).map(|i| (round * 100 + i, 50, 50)).collect();
        run(&mut rpc, &[s], &reqs);
    }
    let (stats, runs, bad) = server.finish();
    assert_eq!(bad, 0);
    assert_eq!(runs.len(), 200);
    assert_eq!(
        stats.dropped_malformed + stats.dropped_bad_session + stats.rx_dropped_transport,
        sent,
        "every garbage datagram is counted: {stats:?}"
    );
}
