//! End-to-end tests: the real `kv-service` and `kv-cli` binaries on 127.0.0.1 with a free
//! port and a temporary data directory. Every wait is bounded; children are killed on drop.
mod common;

use common::wait_timeout;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use kv_client::{Client, ClientConfig, Op, Reply};
use kv_proto::{self as protocol, op, Request, Status};

const SERVER: &str = env!("CARGO_BIN_EXE_kv-service");
const CLI: &str = env!("CARGO_BIN_EXE_kv-cli");

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

fn free_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// A running kv-service process.
struct ServerProc {
    child: Child,
    addr: String,
    data: Vec<SocketAddr>,
    startup: Vec<String>,
    lines: mpsc::Receiver<String>,
}

impl ServerProc {
    fn start(dir: &Path, port: u16) -> ServerProc {
        Self::start_with(dir, port, &[])
    }

    /// With `extra` arguments after the usual ones.
    fn start_with(dir: &Path, port: u16, extra: &[&str]) -> ServerProc {
        let (child, rx, startup) = common::spawn_until_ready(
            Command::new(SERVER)
                .args(["--listen", &format!("127.0.0.1:{port}"), "--threads", "2"])
                .args(["--cache-mb", "16", "--spin-ms", "20", "--log-level", "warn"])
                .arg("--data-dir")
                .arg(dir)
                .args(extra),
        );
        let data = startup
            .iter()
            .filter_map(|l| l.split("data socket ").nth(1))
            .map(|a| a.parse().unwrap())
            .collect::<Vec<SocketAddr>>();
        assert_eq!(data.len(), 2, "{startup:?}");
        ServerProc {
            child,
            addr: format!("127.0.0.1:{port}"),
            data,
            startup,
            lines: rx,
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0);
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    fn terminate(mut self) -> Vec<String> {
        self.signal(libc::SIGTERM);
        let status = wait_timeout(&mut self.child, Duration::from_secs(20));
        assert!(status.success(), "kv-service exited with {status}");
        // The reader thread may still hold the last lines: read until it sees the end of the
        // pipe (it then drops the sender), bounded.
        let mut tail = Vec::new();
        let end = Instant::now() + Duration::from_secs(10);
        while let Ok(l) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            tail.push(l);
        }
        tail
    }

    fn kill9(mut self) {
        self.signal(libc::SIGKILL);
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct CliOut {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs kv-cli with `args` (and `input` on stdin), bounded to 30 s.
fn cli(addr: &str, args: &[&str], input: Option<&[u8]>) -> CliOut {
    let start = Instant::now();
    let mut child = Command::new(CLI)
        .args(["--server", addr])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.map(<[u8]>::to_vec);
    let feeder = std::thread::spawn(move || {
        if let Some(i) = input {
            let _ = stdin.write_all(&i);
        }
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut out, &mut s);
        s
    });
    let e = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut s);
        s
    });
    let status = wait_timeout(&mut child, Duration::from_secs(30));
    feeder.join().unwrap();
    CliOut {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
        took: start.elapsed(),
    }
}

fn ok(o: &CliOut) -> &str {
    assert!(
        o.status.success(),
        "kv-cli failed: {} {}",
        o.stdout,
        o.stderr
    );
    o.stdout.trim_end_matches('\n')
}

fn client(addr: &str) -> Client {
    Client::connect(addr, ClientConfig::default()).unwrap()
}

#[test]
fn cli_one_shot_commands_and_error_exits() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), free_port());
    let a = s.addr.as_str();
    assert_eq!(ok(&cli(a, &["put", "apple", "red"], None)), "OK");
    assert_eq!(ok(&cli(a, &["put", "banana", "yellow fruit"], None)), "OK");
    assert_eq!(ok(&cli(a, &["get", "apple"], None)), "red");
    assert_eq!(ok(&cli(a, &["get", "banana"], None)), "yellow fruit");
    // Binary-safe through escapes, and through --hex.
    assert_eq!(
        ok(&cli(a, &["put", "bin\\x00key", "\\x00\\xff\\n\\\\"], None)),
        "OK"
    );
    assert_eq!(
        ok(&cli(a, &["get", "bin\\x00key"], None)),
        "\\x00\\xff\\n\\\\"
    );
    assert_eq!(
        ok(&cli(a, &["--hex", "get", "62696e006b6579"], None)),
        "00ff0a5c"
    );
    assert_eq!(
        ok(&cli(a, &["--hex", "put", "ff00", "286e696c29"], None)),
        "OK"
    );
    assert_eq!(ok(&cli(a, &["get", "\\xff\\x00"], None)), "\\x28nil)");
    // A value that starts with '(' cannot be mistaken for "(not found)".
    assert_eq!(ok(&cli(a, &["put", "paren", "(not found)"], None)), "OK");
    assert_eq!(ok(&cli(a, &["get", "paren"], None)), "\\x28not found)");
    assert_eq!(
        ok(&cli(a, &["scan", "b", "2"], None)),
        "banana yellow\\x20fruit\nbin\\x00key \\x00\\xff\\n\\\\"
    );
    assert_eq!(ok(&cli(a, &["scan", "\\xff\\x01"], None)), "(empty)");
    let stats = cli(a, &["stats"], None);
    let stats = ok(&stats);
    assert!(stats.starts_with("threads=2 items=5 "), "{stats}");
    assert_eq!(stats.lines().count(), 3, "{stats}");
    assert_eq!(ok(&cli(a, &["del", "apple"], None)), "OK");
    // Not found: exit status 1.
    let nf = cli(a, &["get", "apple"], None);
    assert_eq!(nf.status.code(), Some(1));
    assert_eq!(nf.stdout, "(not found)\n");
    assert_eq!(cli(a, &["del", "apple"], None).status.code(), Some(1));
    // Errors: exit status 2 with a message.
    let long_key = "k".repeat(2000);
    let e = cli(a, &["put", &long_key, "v"], None);
    assert_eq!(e.status.code(), Some(2));
    assert!(e.stderr.contains("exceeds the limit"), "{}", e.stderr);
    let e = cli(a, &["get", "bad\\q"], None);
    assert_eq!(e.status.code(), Some(2));
    assert!(e.stderr.contains("unknown escape"), "{}", e.stderr);
    // No server there: a clear error within a few seconds.
    let dead = format!("127.0.0.1:{}", free_port());
    let e = cli(&dead, &["--connect-timeout", "1", "get", "x"], None);
    assert_eq!(e.status.code(), Some(2));
    assert!(e.stderr.contains("not reachable"), "{}", e.stderr);
    assert!(e.took < Duration::from_secs(5), "took {:?}", e.took);
    s.terminate();
}

#[test]
fn cli_pipe_mode_answers_every_line_in_order() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), free_port());
    let mut input = String::new();
    let mut want = Vec::new();
    for i in 0..300 {
        input.push_str(&format!("put key{i:03} value\\x00{i}\n"));
        want.push("OK".to_string());
    }
    // Commands on one key stay in order even though they are pipelined.
    for (cmd, w) in [
        ("put same 1", "OK"),
        ("get same", "1"),
        ("put same 2", "OK"),
        ("get same", "2"),
        ("del same", "OK"),
        ("get same", "(not found)"),
        ("del same", "(not found)"),
        ("", ""),
        ("# a comment", ""),
        ("scan key298", "key298 value\\x00298 key299 value\\x00299"),
        ("put \"\" \\sempty\\sval", "OK"),
        ("get \"\"", " empty val"),
        ("scan key299 1", "key299 value\\x00299"),
        (
            "bogus cmd",
            "(error) unknown command \"bogus\" (get, put, del, scan, stats)",
        ),
        ("get", "(error) get: missing argument"),
    ] {
        input.push_str(cmd);
        input.push('\n');
        if !w.is_empty() {
            want.push(w.to_string());
        }
    }
    for i in (0..300).step_by(7) {
        input.push_str(&format!("get key{i:03}\n"));
        want.push(format!("value\\x00{i}"));
    }
    input.push_str("stats\n");
    let o = cli(&s.addr, &[], Some(input.as_bytes()));
    assert_eq!(
        o.status.code(),
        Some(2),
        "an error line makes the exit status 2"
    );
    let got: Vec<&str> = o.stdout.lines().collect();
    assert_eq!(got.len(), want.len() + 1, "{}", o.stdout);
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g, w, "line {i}");
    }
    assert!(
        got.last().unwrap().starts_with("threads=2 items=301 "),
        "{got:?}"
    );
    // A clean pipe run exits 0.
    let o = cli(&s.addr, &[], Some(b"put a b\nget a\n"));
    assert_eq!(ok(&o), "OK\nb");
    s.terminate();
}

/// Writes every item of `items` with up to `depth` PUTs in flight; each must succeed.
fn put_pipelined(c: &mut Client, items: &BTreeMap<Vec<u8>, Vec<u8>>, depth: usize) {
    for (i, (key, value)) in items.iter().enumerate() {
        let cmd = Op::Put {
            key: key.clone(),
            value: value.clone(),
        };
        c.submit(cmd, i as u64).unwrap();
        if c.in_flight() >= depth {
            let (tag, r) = c.wait().unwrap();
            assert_eq!(r.unwrap(), Reply::Written, "put {tag}");
        }
    }
    while let Some((tag, r)) = c.wait() {
        assert_eq!(r.unwrap(), Reply::Written, "put {tag}");
    }
}

#[test]
fn clean_restart_keeps_all_data() {
    let dir = tempdir();
    let port = free_port();
    let s = ServerProc::start(dir.path(), port);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = (0..600u64)
        .map(|i| {
            let key = format!("r{i:04}").into_bytes();
            (key, vec![(i % 251) as u8; (i as usize * 37) % 3000])
        })
        .collect();
    {
        let mut c = client(&s.addr);
        put_pipelined(&mut c, &model, 32);
        for i in (0..600u64).step_by(5) {
            let key = format!("r{i:04}").into_bytes();
            assert!(c.delete(&key).unwrap());
            model.remove(&key);
        }
    }
    let tail = s.terminate();
    assert!(
        tail.iter().any(|l| l.contains("stopped cleanly")),
        "{tail:?}"
    );
    let s = ServerProc::start(dir.path(), port);
    assert!(
        s.startup
            .iter()
            .any(|l| l.starts_with(&format!("recovery: {} items", model.len()))),
        "{:?}",
        s.startup
    );
    let mut c = client(&s.addr);
    for (k, v) in &model {
        assert_eq!(c.get(k).unwrap().as_ref(), Some(v));
    }
    for i in (0..600u64).step_by(5) {
        assert_eq!(c.get(format!("r{i:04}").as_bytes()).unwrap(), None);
    }
    let all = c.scan(b"", 10_000).unwrap();
    assert_eq!(all, model.into_iter().collect::<Vec<_>>());
    s.terminate();
}

fn crash_value(i: usize) -> String {
    format!("v{i}-{}", "x".repeat(i % 97))
}

#[test]
fn sigkill_keeps_every_acknowledged_write() {
    let dir = tempdir();
    let port = free_port();
    let s = ServerProc::start(dir.path(), port);
    let mut writer = Command::new(CLI)
        .args(["--server", &s.addr, "--timeout", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin: ChildStdin = writer.stdin.take().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let feeder = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut stdin = stdin;
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && i < 200_000 {
                if writeln!(stdin, "put crash{i:06} {}", crash_value(i)).is_err() {
                    break;
                }
                i += 1;
            }
        })
    };
    let (tx, rx) = mpsc::channel();
    let out = writer.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines.len() < 1500 && Instant::now() < deadline {
        if let Ok(l) = rx.recv_timeout(Duration::from_millis(100)) {
            lines.push(l);
        }
    }
    assert!(lines.len() >= 1500, "only {} lines", lines.len());
    s.kill9();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let _ = writer.kill();
    let _ = writer.wait();
    let _ = feeder.join();
    lines.extend(rx.try_iter());
    let acked: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| *l == "OK")
        .map(|(i, _)| i)
        .collect();
    assert!(acked.len() >= 1500);
    let s = ServerProc::start(dir.path(), port);
    let mut c = client(&s.addr);
    for i in acked {
        let v = c.get(format!("crash{i:06}").as_bytes()).unwrap();
        assert_eq!(
            v,
            Some(crash_value(i).into_bytes()),
            "acknowledged write {i} lost"
        );
    }
    s.terminate();
}

/// Tiny deterministic PRNG for the tests.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random gets / puts / deletes on this thread's own keys, pipelined and blocking, checked
/// against a model. Returns the model.
/// Even `t`: the client coalesces pipelined requests into BATCH messages (the default);
/// odd `t`: one message per request.
fn model_workload(addr: &str, t: u64, ops: usize) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let cfg = ClientConfig {
        batch: if t.is_multiple_of(2) { 32 } else { 1 },
        ..ClientConfig::default()
    };
    let mut c = Client::connect(addr, cfg).unwrap();
    let mut rng = Rng(0x9E37_79B9 ^ ((t + 1) * 7919));
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut done = 0;
    while done < ops {
        // A pipelined batch on distinct keys, then a few blocking calls.
        let batch = 1 + rng.below(32) as usize;
        let mut keys = std::collections::HashSet::new();
        let mut expect = BTreeMap::new();
        for tag in 0..batch as u64 {
            let key = format!("m{t}-{:03}", rng.below(150)).into_bytes();
            if !keys.insert(key.clone()) {
                continue;
            }
            let (cmd, want) = match rng.below(3) {
                0 => {
                    let want = model
                        .get(&key)
                        .map_or(Reply::NotFound, |v| Reply::Value(v.clone()));
                    (Op::Get { key }, want)
                }
                1 => {
                    let value = vec![rng.below(256) as u8; rng.below(2000) as usize];
                    model.insert(key.clone(), value.clone());
                    (Op::Put { key, value }, Reply::Written)
                }
                _ => {
                    let want = if model.remove(&key).is_some() {
                        Reply::Deleted
                    } else {
                        Reply::NotFound
                    };
                    (Op::Delete { key }, want)
                }
            };
            c.submit(cmd, tag).unwrap();
            expect.insert(tag, want);
        }
        while let Some((tag, r)) = c.wait() {
            assert_eq!(
                r.unwrap(),
                expect.remove(&tag).unwrap(),
                "thread {t} tag {tag}"
            );
            done += 1;
        }
        assert!(expect.is_empty());
        let key = format!("m{t}-{:03}", rng.below(150)).into_bytes();
        assert_eq!(c.get(&key).unwrap().as_ref(), model.get(&key));
        done += 1;
    }
    let prefix = format!("m{t}-").into_bytes();
    let mut end = prefix.clone();
    *end.last_mut().unwrap() += 1;
    let scanned: Vec<_> = c
        .scan(&prefix, 1000)
        .unwrap()
        .into_iter()
        .take_while(|(k, _)| k < &end)
        .collect();
    assert_eq!(
        scanned,
        model.clone().into_iter().collect::<Vec<_>>(),
        "thread {t} scan"
    );
    model
}

#[test]
fn many_clients_match_a_model() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), free_port());
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let addr = s.addr.clone();
            std::thread::spawn(move || model_workload(&addr, t, 800))
        })
        .collect();
    let mut all = BTreeMap::new();
    for t in threads {
        all.extend(t.join().unwrap());
    }
    let mut c = client(&s.addr);
    assert_eq!(
        c.scan(b"", 100_000).unwrap(),
        all.clone().into_iter().collect::<Vec<_>>()
    );
    let items: u64 = c.stats().unwrap().iter().map(|s| s.items).sum();
    assert_eq!(items, all.len() as u64);
    s.terminate();
}

/// Raw rpc access to one server thread, bypassing the client library's routing.
struct Raw {
    rpc: rpc::Rpc<transports::udp::UdpTransport>,
    sessions: Vec<rpc::SessionId>,
    _nexus: rpc::Nexus,
}

impl Raw {
    fn connect(addr: &str) -> Raw {
        let nexus: rpc::Nexus = rpc::Nexus::new("127.0.0.1:0", 0).unwrap();
        let udp = transports::udp::UdpTransport::new(Default::default()).unwrap();
        let mut rpc = rpc::Rpc::new(&nexus, 0, udp, (), rpc::RpcConfig::default()).unwrap();
        let sessions = (0..2).map(|t| rpc.connect(addr, t).unwrap()).collect();
        Raw {
            rpc,
            sessions,
            _nexus: nexus,
        }
    }

    fn call(&mut self, thread: usize, req_type: u8, msg: &[u8]) -> (Status, Vec<u8>) {
        let resp = self
            .rpc
            .call(self.sessions[thread], req_type, msg, Duration::from_secs(5))
            .unwrap();
        let r = protocol::parse_response(resp.as_slice()).unwrap();
        (r.status, r.body.to_vec())
    }

    fn req(&mut self, thread: usize, req: &Request<'_>) -> (Status, Vec<u8>) {
        let mut m = Vec::new();
        protocol::encode_request(req, &mut m);
        self.call(thread, req.op(), &m)
    }
}

#[test]
fn wrong_thread_requests_are_forwarded_and_bad_requests_rejected() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), free_port());
    let mut raw = Raw::connect(&s.addr);
    // Every key written through thread 0 and read through thread 1: half of them are on the
    // other thread either way.
    for i in 0..40 {
        let key = format!("fwd{i}");
        let value = format!("value{i}");
        let put = Request::Op(Op::Put {
            key: key.as_bytes(),
            value: value.as_bytes(),
        });
        assert_eq!(raw.req(0, &put).0, Status::Ok);
        let get = Request::Op(Op::Get {
            key: key.as_bytes(),
        });
        assert_eq!(raw.req(1, &get), (Status::Ok, value.into_bytes()));
    }
    let mut c = client(&s.addr);
    let forwarded: u64 = c.stats().unwrap().iter().map(|s| s.forwarded).sum();
    assert!(forwarded >= 30, "forwarded {forwarded}");
    // Malformed and oversized requests: an error status, and the server keeps serving.
    let big_key = vec![b'k'; 2000];
    assert_eq!(
        raw.req(0, &Request::Op(Op::Get { key: &big_key })).0,
        Status::KeyTooLarge
    );
    let big_value = vec![0u8; (1 << 20) + 1];
    let put = Request::Op(Op::Put {
        key: b"k",
        value: &big_value,
    });
    assert_eq!(raw.req(1, &put).0, Status::ValueTooLarge);
    assert_eq!(raw.call(0, op::GET, b"garbage").0, Status::BadRequest);
    assert_eq!(raw.call(1, op::PUT, &[1u8; 16]).0, Status::BadRequest);
    // An unknown request type is refused by the rpc layer itself.
    let unknown = raw
        .rpc
        .call(raw.sessions[0], 77, &[0u8; 3], Duration::from_secs(5));
    assert!(
        matches!(unknown, Err(rpc::RpcError::NoHandler(77))),
        "{unknown:?}"
    );
    let mut v9 = Vec::new();
    protocol::encode_request(&Request::Stats, &mut v9);
    v9[0] = 9;
    assert_eq!(raw.call(0, op::STATS, &v9).0, Status::UnsupportedVersion);
    assert_eq!(c.get(b"fwd3").unwrap(), Some(b"value3".to_vec()));
    s.terminate();
}

#[test]
fn client_reconnects_after_the_server_restarts() {
    let dir = tempdir();
    let port = free_port();
    let s = ServerProc::start(dir.path(), port);
    let mut c = client(&s.addr);
    c.put(b"survivor", b"v1").unwrap();
    s.kill9();
    let s = ServerProc::start(dir.path(), port);
    // The first request may still go out on the old session and fail (PeerFailed once the
    // restarted server answers the liveness ping); the next ones reconnect.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut failures = Vec::new();
    let got = loop {
        match c.get(b"survivor") {
            Ok(v) => break v,
            Err(e) => {
                failures.push(e.to_string());
                assert!(
                    Instant::now() < deadline,
                    "never reconnected: {} failures, first {:?}",
                    failures.len(),
                    &failures[..failures.len().min(3)]
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(got, Some(b"v1".to_vec()));
    assert!(failures.len() <= 2, "{failures:?}");
    c.put(b"survivor", b"v2").unwrap();
    c.submit(
        Op::Get {
            key: b"survivor".to_vec(),
        },
        1,
    )
    .unwrap();
    assert_eq!(c.wait().unwrap().1.unwrap(), Reply::Value(b"v2".to_vec()));
    assert_eq!(c.scan(b"", 10).unwrap().len(), 1);
    s.terminate();
}

#[test]
fn pipelined_scans_continue_past_the_per_thread_caps() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), free_port());
    let mut c = client(&s.addr);
    // 3000 items over 2 threads: each thread holds ~1500 > 1024 (one SCAN answer's cap), so
    // a full scan needs a second round.
    let model: BTreeMap<Vec<u8>, Vec<u8>> = (0..3000u64)
        .map(|i| {
            let key = format!("s{i:05}").into_bytes();
            (key, format!("v{}", i * 7).into_bytes())
        })
        .collect();
    put_pipelined(&mut c, &model, 64);
    let all: Vec<_> = model.clone().into_iter().collect();
    assert_eq!(c.scan(b"", 5000).unwrap(), all);
    // Several scans and a GET in flight at once, through the pipelined API.
    let range = |from: &str, n: usize| -> Vec<(Vec<u8>, Vec<u8>)> {
        model
            .range(from.as_bytes().to_vec()..)
            .take(n)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let asks = [("s01000", 1500usize), ("s02990", 100), ("", 0), ("t", 10)];
    for (i, (from, n)) in asks.iter().enumerate() {
        let cmd = Op::Scan {
            start: from.as_bytes().to_vec(),
            max: *n,
        };
        c.submit(cmd, i as u64).unwrap();
    }
    c.submit(
        Op::Get {
            key: b"s00042".to_vec(),
        },
        99,
    )
    .unwrap();
    let mut seen = 0;
    while let Some((tag, r)) = c.wait() {
        seen += 1;
        match asks.get(tag as usize) {
            Some((from, n)) => assert_eq!(r.unwrap(), Reply::Items(range(from, *n)), "scan {tag}"),
            None => assert_eq!(r.unwrap(), Reply::Value(b"v294".to_vec())),
        }
    }
    assert_eq!(seen, asks.len() + 1);
    s.terminate();
}

/// A BATCH message built from `reqs`.
fn batch_msg(reqs: &[Request<'_>]) -> Vec<u8> {
    let mut m = Vec::new();
    protocol::begin_batch(&mut m);
    for r in reqs {
        protocol::append_request(r, &mut m);
    }
    protocol::finish_batch(&mut m, reqs.len() as u32);
    m
}

#[test]
fn batch_entries_answer_in_order_across_threads_and_bad_batches_run_nothing() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), free_port());
    let mut raw = Raw::connect(&s.addr);
    let keys: Vec<String> = (0..40).map(|i| format!("batch{i}")).collect();
    let values: Vec<String> = (0..40).map(|i| format!("v{}", i * 37)).collect();
    // 40 PUTs through thread 0: about half of the keys belong to thread 1 (forwarded).
    let puts: Vec<Request<'_>> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| {
            Request::Op(Op::Put {
                key: k.as_bytes(),
                value: v.as_bytes(),
            })
        })
        .collect();
    let (status, body) = raw.call(0, op::BATCH, &batch_msg(&puts));
    assert_eq!(status, Status::Ok);
    let parts = protocol::parse_batch_responses(&body, 40).unwrap();
    assert!(parts
        .iter()
        .all(|p| p.status == Status::Ok && p.body.is_empty()));
    // GETs (hits and misses) and DELETEs mixed, through thread 1, answered in order.
    let mut mixed = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        mixed.push(Request::Op(Op::Get { key: k.as_bytes() }));
        if i % 10 == 0 {
            mixed.push(Request::Op(Op::Get {
                key: b"batch-missing",
            }));
        }
    }
    mixed.push(Request::Op(Op::Delete {
        key: keys[3].as_bytes(),
    }));
    mixed.push(Request::Op(Op::Delete { key: b"nope" }));
    let resp = raw
        .rpc
        .call(
            raw.sessions[1],
            op::BATCH,
            &batch_msg(&mixed),
            Duration::from_secs(5),
        )
        .unwrap();
    let top = protocol::parse_response(resp.as_slice()).unwrap();
    assert_eq!((top.status, top.count as usize), (Status::Ok, mixed.len()));
    let parts = protocol::parse_batch_responses(top.body, top.count).unwrap();
    let mut vi = 0;
    for (req, part) in mixed.iter().zip(&parts) {
        match req {
            Request::Op(Op::Get { key }) if *key == b"batch-missing" => {
                assert_eq!(part.status, Status::NotFound)
            }
            Request::Op(Op::Get { .. }) => {
                assert_eq!(
                    (part.status, part.body),
                    (Status::Ok, values[vi].as_bytes())
                );
                vi += 1;
            }
            Request::Op(Op::Delete { key }) if *key == b"nope" => {
                assert_eq!(part.status, Status::NotFound)
            }
            _ => assert_eq!(part.status, Status::Ok),
        }
    }
    assert_eq!(vi, 40);
    // All or nothing: a valid PUT followed by a malformed entry runs neither.
    let mut bad = batch_msg(&[Request::Op(Op::Put {
        key: b"atomic",
        value: b"x",
    })]);
    bad.extend_from_slice(&[1, op::GET, 0, 0, 200, 0, 0, 0]);
    protocol::finish_batch(&mut bad, 2);
    assert_eq!(raw.call(0, op::BATCH, &bad).0, Status::BadRequest);
    // Nested requests other than GET / PUT / DELETE, an empty batch, too many entries.
    assert_eq!(
        raw.call(0, op::BATCH, &batch_msg(&[Request::Info])).0,
        Status::BadRequest
    );
    assert_eq!(
        raw.call(1, op::BATCH, &batch_msg(&[])).0,
        Status::BadRequest
    );
    let many: Vec<Request<'_>> = (0..=protocol::MAX_BATCH)
        .map(|_| Request::Op(Op::Get { key: b"atomic" }))
        .collect();
    assert_eq!(
        raw.call(0, op::BATCH, &batch_msg(&many)).0,
        Status::BadRequest
    );
    let mut c = client(&s.addr);
    assert_eq!(c.get(b"atomic").unwrap(), None);
    assert_eq!(c.get(keys[3].as_bytes()).unwrap(), None);
    assert_eq!(
        c.get(keys[4].as_bytes()).unwrap(),
        Some(values[4].clone().into_bytes())
    );
    let bad_requests: u64 = c.stats().unwrap().iter().map(|s| s.bad_requests).sum();
    assert_eq!(bad_requests, 4);
    s.terminate();
}

#[test]
fn garbage_datagrams_do_not_disturb_clients() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), free_port());
    let stop = Arc::new(AtomicBool::new(false));
    let mut targets: Vec<SocketAddr> = s.data.clone();
    targets.push(s.addr.parse().unwrap());
    let noise = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut rng = Rng(12345);
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let to = targets[rng.below(targets.len() as u64) as usize];
                let mut pkt = match rng.below(3) {
                    // Random bytes.
                    0 => (0..rng.below(1500))
                        .map(|_| rng.next() as u8)
                        .collect::<Vec<u8>>(),
                    // A well-formed rpc header with random fields (mutated real traffic).
                    _ => {
                        let info = rpc::pkthdr::PktInfo {
                            pkt_type: rpc::pkthdr::PktType::from_u8(1 + rng.below(4) as u8)
                                .unwrap(),
                            req_type: rng.below(8) as u8,
                            dest_session: rng.below(16) as u32,
                            pkt_num: rng.below(4) as u32,
                            msg_size: rng.below(5000) as u32,
                            req_num: rng.below(64),
                            token: rng.next() as u32,
                            status: rng.below(8) as u8,
                        };
                        let mut p = rpc::pkthdr::PktHdr::new(&info).as_bytes().to_vec();
                        p.extend((0..rng.below(100)).map(|_| rng.next() as u8));
                        p
                    }
                };
                if rng.below(4) == 0 && !pkt.is_empty() {
                    let i = rng.below(pkt.len() as u64) as usize;
                    pkt[i] ^= 1 << rng.below(8);
                }
                let _ = sock.send_to(&pkt, to);
                sent += 1;
                if sent & 63 == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            sent
        })
    };
    let model = model_workload(&s.addr, 9, 1500);
    stop.store(true, Ordering::Relaxed);
    let sent = noise.join().unwrap();
    assert!(sent > 1000, "sent {sent}");
    // Still serving, with every item in place.
    let mut c = client(&s.addr);
    for (k, v) in &model {
        assert_eq!(c.get(k).unwrap().as_ref(), Some(v));
    }
    s.terminate();
}

/// CPU time (user + system, all threads) of process `pid` so far; `None` once it is gone.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(Duration::from_secs_f64(ticks as f64 / hz.max(1) as f64))
}

#[test]
fn pipe_mode_gives_up_on_a_dead_server_soon_and_asleep() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), free_port());
    let budget = Duration::from_secs(2);
    let mut child = Command::new(CLI)
        .args(["--server", &s.addr, "--give-up-secs", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let feeder = std::thread::spawn(move || {
        for i in 0..1000 {
            writeln!(stdin, "put before{i} v").unwrap();
        }
        stdin.flush().unwrap();
        if go_rx.recv().is_err() {
            return;
        }
        // kv-cli stops reading when it gives up: later writes may fail (broken pipe).
        for i in 0..2000 {
            if writeln!(stdin, "put after{i} v").is_err() {
                return;
            }
        }
    });
    let (tx, rx) = mpsc::channel::<(Instant, String)>();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), l)).is_err() {
                break;
            }
        }
    });
    let mut err = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut e = String::new();
        let _ = std::io::Read::read_to_string(&mut err, &mut e);
        e
    });
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines.len() < 1000 {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, l) = rx.recv_timeout(left).expect("1000 answers before the kill");
        lines.push(l);
    }
    assert!(lines.iter().all(|l| l == "OK"), "{:?}", &lines[..3]);
    s.kill9();
    let killed = Instant::now();
    let cpu_at_kill = cpu_time(pid).expect("kv-cli is running");
    go_tx.send(()).unwrap();
    // Sample kv-cli's CPU time until it exits (the last sample is of the exiting process).
    let mut last = (killed, cpu_at_kill);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "kv-cli never gave up"
        );
        if let Some(c) = cpu_time(pid) {
            last = (Instant::now(), c);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let exited = Instant::now();
    feeder.join().unwrap();
    let stderr = stderr.join().unwrap();
    let rest: Vec<(Instant, String)> = rx.try_iter().collect();
    assert_eq!(status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("giving up"), "{stderr}");
    // Every line after the kill is an error (no command is lost without a line), and the
    // failure budget ran from the first of them.
    assert!(
        !rest.is_empty(),
        "no error line after the kill; stderr: {stderr}"
    );
    assert!(
        rest.iter().all(|(_, l)| l.starts_with("(error)")),
        "{:?}",
        rest.iter().find(|(_, l)| !l.starts_with("(error)"))
    );
    let first_error = rest[0].0;
    let after_budget = exited.saturating_duration_since(first_error + budget);
    assert!(
        after_budget < Duration::from_secs(2),
        "exited {after_budget:?} after its failure budget; stderr: {stderr}"
    );
    // Waiting for a dead server costs next to nothing.
    let cpu = last.1.saturating_sub(cpu_at_kill).as_secs_f64();
    let wall = last.0.duration_since(killed).as_secs_f64().max(0.1);
    assert!(
        cpu / wall < 0.10,
        "kv-cli used {cpu:.2} s of CPU in {wall:.2} s while the server was gone"
    );
    // It said for every command it read what became of it: all 3000 lines either got a
    // result line or were never read.
    assert!(1000 + rest.len() <= 3000);
}

#[test]
fn one_shot_cli_calls_close_their_sessions() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), free_port());
    for i in 0..100 {
        let o = cli(&s.addr, &["put", &format!("k{i}"), "v"], None);
        assert_eq!(ok(&o), "OK");
    }
    let mut c = client(&s.addr);
    let threads = c.server_info().threads as u64;
    let check = |c: &mut Client| {
        let stats = c.stats().unwrap();
        let live: u64 = stats.iter().map(|t| t.sessions).sum();
        let reaped: u64 = stats.iter().map(|t| t.sessions_reaped).sum();
        // Only this client's own sessions (one per thread) are left, none was reaped.
        assert_eq!((live, reaped), (threads, 0), "{stats:?}");
    };
    check(&mut c);
    // Past the server's failure timeout (1 s): still nothing for the reaper to find.
    std::thread::sleep(Duration::from_millis(1500));
    check(&mut c);
    drop(c);
    s.terminate();
}

/// Engine block reads of a scan of 40 neighbours right after a start (a cold cache), on data
/// loaded in shuffled order by a server started with `--reorg-batch reorg` and left idle
/// until its engine writes nothing more.
fn cold_scan_reads_after_idling(reorg: &str) -> u64 {
    let dir = tempdir();
    let s = ServerProc::start_with(
        dir.path(),
        free_port(),
        &["--durability", "page", "--reorg-batch", reorg],
    );
    let mut c = client(&s.addr);
    let n = 400u64;
    for i in 0..n {
        // A permutation of 0..n (7919 is prime to 400): neighbours land far apart.
        let id = i * 7919 % n;
        c.put(format!("k{id:05}").as_bytes(), &[(id % 251) as u8; 1000])
            .unwrap();
    }
    // The reorganisation runs while the threads have nothing outstanding; wait (bounded)
    // until the engines' writes stay still for a second.
    let writes =
        |c: &mut Client| -> u64 { c.stats().unwrap().iter().map(|t| t.engine_writes).sum() };
    let end = Instant::now() + Duration::from_secs(60);
    let (mut last, mut still) = (writes(&mut c), 0);
    while still < 10 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(100));
        let now = writes(&mut c);
        still = if now == last { still + 1 } else { 0 };
        last = now;
    }
    drop(c);
    s.terminate();
    let s = ServerProc::start(dir.path(), free_port());
    let mut c = client(&s.addr);
    let reads = |c: &mut Client| -> u64 { c.stats().unwrap().iter().map(|t| t.engine_reads).sum() };
    let before = reads(&mut c);
    let items = c.scan(b"k00100", 40).unwrap();
    assert_eq!(items.len(), 40);
    for (j, (k, v)) in items.iter().enumerate() {
        let id = 100 + j as u64;
        assert_eq!(k, format!("k{id:05}").as_bytes());
        assert_eq!(v, &vec![(id % 251) as u8; 1000]);
    }
    let read = reads(&mut c) - before;
    drop(c);
    s.terminate();
    read
}

#[test]
fn reorg_batch_moves_neighbours_together_while_the_server_idles() {
    let scattered = cold_scan_reads_after_idling("0");
    let placed = cold_scan_reads_after_idling("16");
    // Each thread reads its first 40 keys from the start. Scattered: about one read per
    // item. Reorganised while the load went on: mostly full blocks side by side, a read per
    // stretch of them (24 reads against 74 when this was written; one pass after the load
    // would do better, tests/reorg.rs in the engine).
    assert!(scattered >= 50, "{scattered} reads without reorganisation");
    assert!(
        placed * 2 <= scattered,
        "{placed} reads after reorganising, {scattered} without"
    );
}
