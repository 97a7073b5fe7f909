//! The rpc crate over the TCP transport on 127.0.0.1: messages of every size, many sessions on
//! one connection, and failures that the transport reports (a killed server process, a client
//! that vanishes) ending sessions at once through the route failure, with liveness far too
//! slow to be what noticed. Ports are picked at run time; the tests run one at a time.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{check, make_request, make_response, parse_request};
use rpc::{
    ConnectFailure, MsgBuf, Nexus, ReqHandle, Rpc, RpcConfig, RpcError, RpcStats, SessionId,
    SessionState,
};
use transports::tcp::{TcpConfig, TcpTransport};
use transports::Transport;

/// Answers `common::make_request` messages with `make_response`.
const PATTERN: u8 = 1;
/// Never answered: the handler keeps the handle.
const BLACK_HOLE: u8 = 2;

/// Liveness this slow cannot be what ends a session within these tests' bounds: a failure
/// seen sooner was the transport's route failure.
const SLOW_LIVENESS: Duration = Duration::from_secs(120);
/// How soon a route failure must have ended a session: far below `SLOW_LIVENESS` and every
/// default deadline (30 s), with room for a loaded machine. Not a latency measurement.
const AT_ONCE: Duration = Duration::from_secs(10);

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct State {
    runs: HashMap<u64, u32>,
    bad: u32,
    held: Vec<ReqHandle>,
}

fn cfg() -> RpcConfig {
    RpcConfig {
        failure_timeout: Some(SLOW_LIVENESS),
        // Sleep in epoll when idle: two cores are shared with other tests.
        busy_poll: false,
        ..RpcConfig::default()
    }
}

fn tcp() -> TcpTransport {
    TcpTransport::new(TcpConfig::default()).unwrap()
}

fn server_nexus(addr: &str) -> Nexus<State> {
    let n: Nexus<State> = Nexus::new(addr, 0).unwrap();
    n.register(PATTERN, |st: &mut State, ctx, req| {
        match parse_request(req.data) {
            Some((id, resp)) => {
                *st.runs.entry(id).or_default() += 1;
                ctx.respond_with(req.handle, &make_response(id, resp as usize))
                    .unwrap();
            }
            None => {
                st.bad += 1;
                ctx.respond_with(req.handle, b"").unwrap();
            }
        }
    })
    .unwrap();
    n.register(BLACK_HOLE, |st: &mut State, _ctx, req| {
        st.held.push(req.handle)
    })
    .unwrap();
    n
}

/// What a server thread returns: its counters, its handler runs, malformed requests seen.
type ServerResult = (RpcStats, HashMap<u64, u32>, u32);

/// A server Rpc over TCP on its own thread.
struct Server {
    uri: String,
    /// The server Rpc's counters, as of its last loop iteration.
    stats: Arc<std::sync::Mutex<RpcStats>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ServerResult>>,
}

impl Server {
    fn start() -> Server {
        let nexus = server_nexus("127.0.0.1:0");
        let uri = nexus.uri().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(std::sync::Mutex::new(RpcStats::default()));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let stop = stop.clone();
            let stats = stats.clone();
            std::thread::spawn(move || {
                let mut rpc = Rpc::new(&nexus, 0, tcp(), State::default(), cfg()).unwrap();
                tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    rpc.run_for(Duration::from_millis(2));
                    *stats.lock().unwrap() = rpc.stats();
                }
                let st = rpc.stats();
                let s = rpc.state_mut();
                (st, std::mem::take(&mut s.runs), s.bad)
            })
        };
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Server {
            uri,
            stats,
            stop,
            thread: Some(thread),
        }
    }

    fn stats(&self) -> RpcStats {
        *self.stats.lock().unwrap()
    }

    fn finish(mut self) -> ServerResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn client() -> (Rpc<TcpTransport>, Nexus) {
    let n: Nexus = Nexus::new("127.0.0.1:0", 0).unwrap();
    (Rpc::new(&n, 0, tcp(), (), cfg()).unwrap(), n)
}

/// Runs `rpc` until `n` completions arrived (60 s at most) and returns them.
fn completions(rpc: &mut Rpc<TcpTransport>, n: usize) -> Vec<rpc::Completion> {
    let mut out = Vec::new();
    let ok = rpc.run_until(
        |r| {
            while let Some(c) = r.poll_completion() {
                out.push(c);
            }
            out.len() >= n
        },
        Duration::from_secs(60),
    );
    assert!(ok, "only {} of {n} completions", out.len());
    out
}

/// Enqueues `(id, size, response size)` requests round-robin on `sessions` and checks that
/// each completes once with its response.
fn exchange(rpc: &mut Rpc<TcpTransport>, sessions: &[SessionId], reqs: &[(u64, usize, u32)]) {
    for (i, &(id, size, resp)) in reqs.iter().enumerate() {
        let s = sessions[i % sessions.len()];
        rpc.enqueue_request(
            s,
            PATTERN,
            MsgBuf::from_slice(&make_request(id, size, resp)),
            id,
        )
        .unwrap();
    }
    let done = completions(rpc, reqs.len());
    let mut seen = HashMap::new();
    for c in &done {
        let r = c
            .result
            .as_ref()
            .unwrap_or_else(|e| panic!("request {} failed: {e}", c.tag));
        let (_, _, resp) = reqs.iter().find(|q| q.0 == c.tag).unwrap();
        assert_eq!(r.len(), *resp as usize, "response size of {}", c.tag);
        assert!(check(r.as_slice(), !c.tag), "response payload of {}", c.tag);
        *seen.entry(c.tag).or_insert(0) += 1;
    }
    assert_eq!(seen.len(), reqs.len());
    assert!(seen.values().all(|&n| n == 1), "each completes once");
}

#[test]
fn small_and_large_messages() {
    let _serial = serial();
    let server = Server::start();
    let (mut rpc, _n) = client();
    let s = rpc.connect(&server.uri, 0).unwrap();
    assert!(rpc.transport().is_reliable());
    let dpp = TcpConfig::default().max_pkt_size - rpc::pkthdr::HDR_SIZE;
    let sizes = [
        12,
        100,
        dpp - 1,
        dpp,
        dpp + 1,
        3 * dpp + 5,
        300_000,
        8 << 20,
    ];
    let mut reqs = Vec::new();
    for (i, &a) in sizes.iter().enumerate() {
        for (j, &b) in [12usize, dpp + 1, 1 << 20].iter().enumerate() {
            reqs.push(((i * 10 + j) as u64, a, b as u32));
        }
    }
    exchange(&mut rpc, &[s], &reqs);
    let st = rpc.stats();
    assert_eq!(st.retransmissions, 0, "no go-back-N on TCP");
    assert_eq!(st.tx_dropped, 0);
    assert!(st.credit_stalls > 0, "multi-packet messages ran on credits");
    assert_eq!(rpc.ctx().pending_requests(s), 0);
    drop(rpc);
    let (sst, runs, bad) = server.finish();
    assert_eq!(bad, 0, "no corrupted request reached a handler");
    assert_eq!(runs.len(), reqs.len());
    assert!(runs.values().all(|&n| n == 1), "each handler ran once");
    assert_eq!(sst.retransmissions, 0);
}

#[test]
fn many_sessions_share_one_connection() {
    let _serial = serial();
    let server = Server::start();
    let (mut rpc, _n) = client();
    let sessions: Vec<SessionId> = (0..64)
        .map(|_| rpc.create_session(&server.uri, 0).unwrap())
        .collect();
    // Requests wait in the backlogs while the sessions connect.
    let reqs: Vec<_> = (0..640u64)
        .map(|i| {
            (
                i,
                12 + (i as usize * 977) % 20_000,
                ((i * 131) % 12_000) as u32,
            )
        })
        .collect();
    exchange(&mut rpc, &sessions, &reqs);
    for &s in &sessions {
        assert_eq!(rpc.session_state(s), Some(SessionState::Connected));
    }
    assert_eq!(
        rpc.transport().established_connections(),
        1,
        "all routes to one server share one connection"
    );
    for &s in &sessions {
        rpc.disconnect(s).unwrap();
    }
    drop(rpc);
    let (sst, runs, _) = server.finish();
    assert_eq!(runs.len(), reqs.len());
    assert!(runs.values().all(|&n| n == 1));
    assert_eq!(sst.retransmissions, 0);
}

/// Entry point of the child process of the killed-server test (`RPC_TCP_CHILD` = the SM
/// address to listen on).
#[test]
fn child_server_process() {
    let Some(addr) = std::env::var_os("RPC_TCP_CHILD") else {
        return;
    };
    let nexus = server_nexus(addr.to_str().unwrap());
    let mut rpc = Rpc::new(&nexus, 0, tcp(), State::default(), cfg()).unwrap();
    println!("URI {}", nexus.uri());
    loop {
        rpc.run_for(Duration::from_millis(10));
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts a server process listening for SM on `addr`; returns it and its URI.
fn spawn_server_process(addr: &str) -> (KillOnDrop, String) {
    let exe = std::env::current_exe().unwrap();
    let mut child = KillOnDrop(
        Command::new(exe)
            .args([
                "--exact",
                "child_server_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RPC_TCP_CHILD", addr)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // The harness prints "test child_server_process ... " on the same line first.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(i) = line.find("URI ") {
                let _ = tx.send(line[i + 4..].trim().to_string());
                return;
            }
        }
    });
    let uri = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the child server printed its URI");
    (child, uri)
}

#[test]
fn a_killed_server_process_is_detected_at_once_and_the_session_reconnects() {
    let _serial = serial();
    let (mut child, uri) = spawn_server_process("127.0.0.1:0");
    let (mut rpc, _n) = client();
    let s = rpc.connect(&uri, 0).unwrap();
    exchange(&mut rpc, &[s], &[(1, 20_000, 20_000)]);
    // Requests in the slots (held by the server's handler) and in the backlog.
    for i in 0..20u64 {
        rpc.enqueue_request_with_deadline(s, BLACK_HOLE, MsgBuf::from_slice(b"x"), 100 + i, None)
            .unwrap();
    }
    rpc.run_for(Duration::from_millis(20));
    child.0.kill().unwrap(); // SIGKILL: the kernel closes its sockets
    child.0.wait().unwrap();
    let t0 = Instant::now();
    let failed = rpc.run_until(
        |r| r.session_state(s) != Some(SessionState::Connected),
        AT_ONCE,
    );
    let took = t0.elapsed();
    assert!(failed, "not detected within {AT_ONCE:?}");
    assert!(took < SLOW_LIVENESS / 4, "{took:?}: not the route failure");
    assert_eq!(
        rpc.session_state(s),
        Some(SessionState::Failed(ConnectFailure::PeerFailed))
    );
    let st = rpc.stats();
    assert_eq!((st.route_failures, st.sessions_reset), (1, 1), "{st:?}");
    let done = completions(&mut rpc, 20);
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::PeerFailed))));
    rpc.run_for(Duration::from_millis(50));
    assert!(rpc.poll_completion().is_none(), "exactly once");

    // A new server process on the same SM address (a restart): the session reconnects over
    // a new connection, and requests queued meanwhile go out.
    let addr = uri.clone();
    let (_child2, uri2) = spawn_server_process(&addr);
    assert_eq!(uri2, uri);
    rpc.reconnect(s).unwrap();
    rpc.enqueue_request(
        s,
        PATTERN,
        MsgBuf::from_slice(&make_request(7, 5000, 5000)),
        7,
    )
    .unwrap();
    let done = completions(&mut rpc, 1);
    assert!(check(done[0].result.as_ref().unwrap().as_slice(), !7));
    assert_eq!(rpc.session_state(s), Some(SessionState::Connected));
    exchange(&mut rpc, &[s], &[(8, 100_000, 100)]);
    assert_eq!(rpc.ctx().session_stats(s).unwrap().resets, 1);
    assert_eq!(rpc.stats().retransmissions, 0);
}

#[test]
fn the_server_frees_the_sessions_of_a_vanished_client_at_once() {
    let _serial = serial();
    let server = Server::start();
    {
        let (mut rpc, _n) = client();
        for i in 0..3u64 {
            let s = rpc.connect(&server.uri, 0).unwrap();
            exchange(&mut rpc, &[s], &[(i, 100, 100)]);
        }
        // The client Rpc and its Nexus go away without disconnecting: its transport's
        // sockets close.
    }
    // Liveness would take 120 s; the closed connection ends the server ends at once.
    let t0 = Instant::now();
    while server.stats().server_sessions_reaped < 3 && t0.elapsed() < AT_ONCE {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (sst, _, _) = server.finish();
    assert_eq!(sst.server_sessions_reaped, 3, "{sst:?}");
    assert_eq!(sst.route_failures, 3, "{sst:?}");
}
