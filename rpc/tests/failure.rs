//! Deadlines, cancel, peer-failure detection, session reset and reconnect, over real UDP on
//! 127.0.0.1 (and one case against a server in another process that gets SIGKILLed).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rpc::{
    ConnectFailure, MsgBuf, Nexus, ReqHandle, Rpc, RpcConfig, RpcError, RpcStats, SessionState,
};
use transports::udp::{UdpConfig, UdpTransport};

const ECHO: u8 = 1;
/// Never answered: the handler keeps the handle and drops it.
const BLACK_HOLE: u8 = 2;
/// Answered after the number of milliseconds in the request (from the server's loop).
const SLOW: u8 = 3;

#[derive(Default)]
struct State {
    held: Vec<ReqHandle>,
    slow: Vec<(Instant, ReqHandle)>,
    echo_runs: HashMap<Vec<u8>, u32>,
}

fn cfg(failure_ms: u64) -> RpcConfig {
    RpcConfig {
        failure_timeout: Some(Duration::from_millis(failure_ms)),
        // Sleep when idle: these tests measure detection times on a 2-core machine, where
        // spinning threads of parallel tests would steal each other's time slices.
        busy_poll: false,
        ..RpcConfig::default()
    }
}

/// The failure timeout of the tests that detect dead peers. Not smaller: a heavily loaded
/// machine (load average 15 on 2 cores was seen) can leave a process unscheduled for hundreds
/// of milliseconds, and a live peer whose pongs sit unprocessed for a whole timeout would be
/// declared dead.
const FAILURE_MS: u64 = 1000;

/// How soon that failure timeout must have fired, in these tests. Far above the timeout (a
/// loaded machine may not schedule the client for a while) and far below anything else that
/// could end a session here (no deadlines, 30 s defaults): it shows the failure timeout did the
/// work. Detection latency itself is a benchmark figure, not an assert.
const DETECTED_WITHIN: Duration = Duration::from_secs(10);

/// The tests of this file run one at a time (they time failure detection).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn udp() -> UdpTransport {
    UdpTransport::new(UdpConfig::default()).unwrap()
}

fn server_nexus(addr: &str) -> Nexus<State> {
    let n: Nexus<State> = Nexus::new(addr, 0).unwrap();
    n.register(ECHO, |st: &mut State, ctx, req| {
        *st.echo_runs.entry(req.data.to_vec()).or_default() += 1;
        ctx.respond_with(req.handle, req.data).unwrap();
    })
    .unwrap();
    n.register(BLACK_HOLE, |st: &mut State, _ctx, req| {
        st.held.push(req.handle)
    })
    .unwrap();
    n.register(SLOW, |st: &mut State, _ctx, req| {
        let ms = req.data.first().copied().unwrap_or(0);
        st.slow.push((
            Instant::now() + Duration::from_millis(u64::from(ms)),
            req.handle,
        ));
    })
    .unwrap();
    n
}

/// What a server thread returns: its counters and how often the echo handler ran per payload.
type ServerResult = (RpcStats, HashMap<Vec<u8>, u32>);

/// A server Rpc on its own thread; `stop` ends it (dropping the Rpc, keeping the Nexus).
struct Server {
    uri: String,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<ServerResult>>,
    nexus: Option<Nexus<State>>,
}

impl Server {
    fn start(addr: &str, failure_ms: u64) -> Server {
        let nexus = server_nexus(addr);
        let uri = nexus.uri().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let thread = {
            let nexus = nexus.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rpc =
                    Rpc::new(&nexus, 0, udp(), State::default(), cfg(failure_ms)).unwrap();
                tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    rpc.run_for(Duration::from_millis(1));
                    let now = Instant::now();
                    let (st, ctx) = rpc.split();
                    let due: Vec<_> = st.slow.iter().filter(|s| s.0 <= now).map(|s| s.1).collect();
                    st.slow.retain(|s| s.0 > now);
                    for h in due {
                        let _ = ctx.respond_with(h, b"slow");
                    }
                }
                let stats = rpc.stats();
                (stats, std::mem::take(&mut rpc.state_mut().echo_runs))
            })
        };
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
        Server {
            uri,
            stop,
            thread: Some(thread),
            nexus: Some(nexus),
        }
    }

    /// Stops the server Rpc (its thread ends and drops it); the Nexus stays up.
    fn stop_rpc(&mut self) -> ServerResult {
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
        self.nexus.take();
    }
}

fn client(failure_ms: u64) -> (Rpc<UdpTransport>, Nexus) {
    let n: Nexus = Nexus::new("127.0.0.1:0", 0).unwrap();
    (Rpc::new(&n, 0, udp(), (), cfg(failure_ms)).unwrap(), n)
}

/// Runs `rpc` until `n` completions arrived (10 s at most) and returns them.
fn completions(rpc: &mut Rpc<UdpTransport>, n: usize) -> Vec<rpc::Completion> {
    let mut out = Vec::new();
    let ok = rpc.run_until(
        |r| {
            while let Some(c) = r.poll_completion() {
                out.push(c);
            }
            out.len() >= n
        },
        Duration::from_secs(10),
    );
    assert!(ok, "only {} of {n} completions", out.len());
    out
}

#[test]
fn deadlines_end_requests_and_the_session_keeps_working() {
    let _serial = serial();
    let server = Server::start("127.0.0.1:0", 1000);
    let (mut rpc, _n) = client(1000);
    let s = rpc.connect(&server.uri, 0).unwrap();
    let t0 = Instant::now();
    // Fill the window and the backlog with requests the server never answers.
    for i in 0..12u64 {
        rpc.enqueue_request_with_deadline(
            s,
            BLACK_HOLE,
            MsgBuf::from_slice(&i.to_le_bytes()),
            i,
            Some(Duration::from_millis(50)),
        )
        .unwrap();
    }
    let done = completions(&mut rpc, 12);
    // 50 ms deadlines, not the 30 s default, ended them (margin for a loaded machine).
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::DeadlineExceeded))));
    let mut tags: Vec<_> = done.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(
        tags,
        (0..12).collect::<Vec<_>>(),
        "each completes exactly once"
    );
    assert_eq!(rpc.stats().deadline_exceeded, 12);
    assert_eq!(rpc.ctx().session_stats(s).unwrap().deadline_exceeded, 12);
    // Slots and credits came back: the session still works, also for large messages.
    let big = vec![7u8; 300_000];
    let resp = rpc.call(s, ECHO, &big, Duration::from_secs(5)).unwrap();
    assert_eq!(resp.as_slice(), &big[..]);
    // `call` with a short timeout on a slow request fails with the deadline, then the slot
    // is usable again.
    assert!(matches!(
        rpc.call(s, SLOW, &[200], Duration::from_millis(30)),
        Err(RpcError::DeadlineExceeded)
    ));
    assert_eq!(
        rpc.call(s, SLOW, &[1], Duration::from_secs(2))
            .unwrap()
            .as_slice(),
        b"slow"
    );
    assert_eq!(rpc.ctx().pending_requests(s), 0);
}

#[test]
fn cancel_completes_a_pending_request_once() {
    let _serial = serial();
    let server = Server::start("127.0.0.1:0", 1000);
    let (mut rpc, _n) = client(1000);
    let s = rpc.connect(&server.uri, 0).unwrap();
    for i in 0..10u64 {
        rpc.enqueue_request(s, BLACK_HOLE, MsgBuf::from_slice(b"x"), i)
            .unwrap();
    }
    rpc.run_for(Duration::from_millis(5));
    assert!(rpc.cancel_request(s, 3), "in a slot");
    assert!(rpc.cancel_request(s, 9), "in the backlog");
    assert!(!rpc.cancel_request(s, 3), "already cancelled");
    assert!(!rpc.cancel_request(s, 42), "unknown tag");
    let done = completions(&mut rpc, 2);
    let mut tags: Vec<_> = done.iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(tags, vec![3, 9]);
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::Cancelled))));
    for i in [0, 1, 2, 4, 5, 6, 7, 8] {
        assert!(rpc.cancel_request(s, i));
    }
    completions(&mut rpc, 8);
    let resp = rpc.call(s, ECHO, b"after", Duration::from_secs(2)).unwrap();
    assert_eq!(resp.as_slice(), b"after");
}

/// A call on a fresh session that must succeed; says what the session and the counters
/// looked like if it does not.
fn first_call(rpc: &mut Rpc<UdpTransport, ()>, s: u32, data: &[u8]) {
    if let Err(e) = rpc.call(s, ECHO, data, Duration::from_secs(5)) {
        panic!(
            "first call failed: {e:?}; session {:?}, {:?}",
            rpc.session_state(s),
            rpc.stats()
        );
    }
}

/// Waits until `s` leaves Connected; returns how long that took.
fn time_to_failure(rpc: &mut Rpc<UdpTransport>, s: u32) -> Duration {
    let t0 = Instant::now();
    let failed = rpc.run_until(
        |r| r.session_state(s) != Some(SessionState::Connected),
        2 * DETECTED_WITHIN,
    );
    assert!(failed, "failure not detected");
    t0.elapsed()
}

#[test]
fn a_stopped_server_rpc_is_detected_and_pending_requests_fail_once() {
    let _serial = serial();
    let mut server = Server::start("127.0.0.1:0", FAILURE_MS);
    let (mut rpc, _n) = client(FAILURE_MS);
    let s = rpc.connect(&server.uri, 0).unwrap();
    assert_eq!(
        rpc.call(s, ECHO, b"hi", Duration::from_secs(2))
            .unwrap()
            .as_slice(),
        b"hi"
    );
    for i in 0..20u64 {
        rpc.enqueue_request_with_deadline(s, BLACK_HOLE, MsgBuf::from_slice(b"x"), i, None)
            .unwrap();
    }
    rpc.run_for(Duration::from_millis(5));
    server.stop_rpc();
    let took = time_to_failure(&mut rpc, s);
    assert!(took < DETECTED_WITHIN, "detected after {took:?}");
    assert_eq!(
        rpc.session_state(s),
        Some(SessionState::Failed(ConnectFailure::PeerFailed))
    );
    let done = completions(&mut rpc, 20);
    assert!(done
        .iter()
        .all(|c| matches!(c.result, Err(RpcError::PeerFailed))));
    rpc.run_for(Duration::from_millis(20));
    assert!(rpc.poll_completion().is_none(), "exactly once");
    assert_eq!(rpc.stats().sessions_reset, 1);
    assert!(matches!(
        rpc.enqueue_request(s, ECHO, MsgBuf::new(1), 99),
        Err(RpcError::NotConnected(_))
    ));
}

#[test]
fn a_vanished_server_process_is_detected_by_timeout() {
    let _serial = serial();
    // The whole server Nexus goes away (nothing answers pings): the failure timeout decides.
    let server = Server::start("127.0.0.1:0", FAILURE_MS);
    let (mut rpc, _n) = client(FAILURE_MS);
    let s = rpc.connect(&server.uri, 0).unwrap();
    first_call(&mut rpc, s, b"hi");
    drop(server);
    let took = time_to_failure(&mut rpc, s);
    assert!(took < DETECTED_WITHIN, "detected after {took:?}");
}

#[test]
fn reconnect_after_the_server_restarts() {
    let _serial = serial();
    let mut server = Server::start("127.0.0.1:0", FAILURE_MS);
    let uri = server.uri.clone();
    let (mut rpc, _n) = client(FAILURE_MS);
    let s = rpc.connect(&uri, 0).unwrap();
    first_call(&mut rpc, s, b"one");
    server.stop_rpc();
    drop(server);
    time_to_failure(&mut rpc, s);
    // The server comes back on the same address.
    let server = Server::start(&uri, FAILURE_MS);
    rpc.reconnect(s).unwrap();
    rpc.enqueue_request(s, ECHO, MsgBuf::from_slice(b"queued"), 1)
        .unwrap();
    let ok = rpc.run_until(
        |r| r.session_state(s) == Some(SessionState::Connected),
        Duration::from_secs(5),
    );
    assert!(ok, "reconnected: {:?}", rpc.session_state(s));
    let done = completions(&mut rpc, 1);
    assert_eq!(done[0].result.as_ref().unwrap().as_slice(), b"queued");
    assert_eq!(
        rpc.call(s, ECHO, b"two", Duration::from_secs(2))
            .unwrap()
            .as_slice(),
        b"two"
    );
    assert_eq!(rpc.ctx().session_stats(s).unwrap().resets, 1);
    drop(server);
}

#[test]
fn the_server_frees_the_sessions_of_a_dead_client() {
    let _serial = serial();
    let mut server = Server::start("127.0.0.1:0", FAILURE_MS);
    {
        let (mut rpc, _n) = client(FAILURE_MS);
        for _ in 0..3 {
            let s = rpc.connect(&server.uri, 0).unwrap();
            rpc.call(s, ECHO, b"x", Duration::from_secs(2)).unwrap();
        }
        // The client Rpc and its Nexus disappear without disconnecting.
    }
    // 5x the failure timeout: enough for the server's reaper on a loaded machine.
    std::thread::sleep(Duration::from_millis(5 * FAILURE_MS));
    let (stats, _) = server.stop_rpc();
    assert_eq!(stats.server_sessions_reaped, 3, "{stats:?}");
}

#[test]
fn connect_floods_are_refused_per_peer() {
    let _serial = serial();
    let nexus = server_nexus("127.0.0.1:0");
    let uri = nexus.uri().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let t = {
        let stop = stop.clone();
        let nexus = nexus.clone();
        std::thread::spawn(move || {
            let c = RpcConfig {
                max_sessions_per_peer: 5,
                ..RpcConfig::default()
            };
            let mut rpc = Rpc::new(&nexus, 0, udp(), State::default(), c).unwrap();
            tx.send(()).unwrap();
            while !stop.load(Ordering::Relaxed) {
                rpc.run_for(Duration::from_millis(1));
            }
            rpc.stats()
        })
    };
    rx.recv().unwrap();
    let (mut a, _na) = client(1000);
    for _ in 0..5 {
        a.connect(&uri, 0).unwrap();
    }
    assert!(matches!(a.connect(&uri, 0), Err(RpcError::TooManySessions)));
    // Another peer still gets in.
    let (mut b, _nb) = client(1000);
    let s = b.connect(&uri, 0).unwrap();
    assert_eq!(
        b.call(s, ECHO, b"ok", Duration::from_secs(2))
            .unwrap()
            .as_slice(),
        b"ok"
    );
    stop.store(true, Ordering::Relaxed);
    let stats = t.join().unwrap();
    // One refused session; its ConnectReq may have been retried (a loaded machine answers
    // late), and each copy is refused and counted again.
    assert!(stats.connects_refused >= 1, "{stats:?}");
}

/// Entry point of the child process in `a_killed_server_process_is_detected`.
#[test]
fn child_server_process() {
    if std::env::var_os("RPC_TEST_CHILD_SERVER").is_none() {
        return;
    }
    let nexus = server_nexus("127.0.0.1:0");
    let mut rpc = Rpc::new(&nexus, 0, udp(), State::default(), cfg(FAILURE_MS)).unwrap();
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

#[test]
fn a_killed_server_process_is_detected() {
    let _serial = serial();
    let exe = std::env::current_exe().unwrap();
    let mut child = KillOnDrop(
        Command::new(exe)
            .args([
                "--exact",
                "child_server_process",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("RPC_TEST_CHILD_SERVER", "1")
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
        .recv_timeout(Duration::from_secs(20))
        .expect("the child server printed its URI");
    let (mut rpc, _n) = client(FAILURE_MS);
    let s = rpc.connect(&uri, 0).unwrap();
    assert_eq!(
        rpc.call(s, ECHO, b"alive", Duration::from_secs(2))
            .unwrap()
            .as_slice(),
        b"alive"
    );
    rpc.enqueue_request_with_deadline(s, BLACK_HOLE, MsgBuf::from_slice(b"x"), 1, None)
        .unwrap();
    rpc.run_for(Duration::from_millis(5));
    child.0.kill().unwrap(); // SIGKILL
    let took = time_to_failure(&mut rpc, s);
    assert!(took < DETECTED_WITHIN, "detected after {took:?}");
    let done = completions(&mut rpc, 1);
    assert!(matches!(done[0].result, Err(RpcError::PeerFailed)));
}

#[test]
fn a_client_that_does_not_poll_for_a_while_keeps_its_session() {
    let _serial = serial();
    // Liveness is the process's and the Rpc's, not the event loop's: the Nexus answers pings
    // for its Rpcs, so a client that computes for a while (no polling) is not declared dead.
    // A 200 ms timeout, so that a loaded machine starving the Nexus threads for a few time
    // slices cannot fail the session; the client is silent for 4x that.
    let mut server = Server::start("127.0.0.1:0", 200);
    let (mut rpc, _n) = client(200);
    let s = rpc.connect(&server.uri, 0).unwrap();
    rpc.call(s, ECHO, b"before", Duration::from_secs(2))
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let resp = rpc.call(s, ECHO, b"after", Duration::from_secs(2)).unwrap();
    assert_eq!(resp.as_slice(), b"after");
    assert_eq!(rpc.stats().sessions_reset, 0);
    let (stats, _) = server.stop_rpc();
    assert_eq!(stats.server_sessions_reaped, 0);
    assert!(stats.pings_sent > 0, "the server pinged its silent client");
}
