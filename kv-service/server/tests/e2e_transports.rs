//! End-to-end tests over the transports beside UDP: the real `kv-service` and `kv-cli`
//! binaries with `--transport tcp` on 127.0.0.1 (ports picked at run time, temporary data
//! directories), the client library's `Client::connect_tcp`, a SIGKILLed server noticed
//! through its closed connections and reconnected to after a restart; and, with the `rdma`
//! feature, `--transport ud|rc` on a machine without an RDMA device failing at once with a
//! clear message. Every wait is bounded; children are killed on drop.
mod common;

use common::wait_timeout;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kv_client::{Client, ClientConfig, Error, Op, Reply};
use rpc::RpcError;
use transports::tcp::TcpTransport;

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
    startup: Vec<String>,
}

impl ServerProc {
    /// Starts `kv-service --transport tcp` with 2 threads on `port` and waits until it is
    /// ready (20 s at most).
    fn start_tcp(dir: &Path, port: u16) -> ServerProc {
        let (child, _lines, startup) = common::spawn_until_ready(
            Command::new(SERVER)
                .args(["--listen", &format!("127.0.0.1:{port}"), "--threads", "2"])
                .args(["--transport", "tcp"])
                .args(["--cache-mb", "16", "--spin-ms", "20", "--log-level", "warn"])
                .arg("--data-dir")
                .arg(dir),
        );
        ServerProc {
            child,
            addr: format!("127.0.0.1:{port}"),
            startup,
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(r, 0);
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    fn terminate(mut self) {
        self.signal(libc::SIGTERM);
        let status = wait_timeout(&mut self.child, Duration::from_secs(20));
        assert!(status.success(), "kv-service exited with {status}");
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

/// Runs a binary with `args` (and `input` on stdin) to its end, bounded to 30 s; returns its
/// output and how long it took.
fn run(bin: &str, args: &[&str], input: &[u8]) -> (Output, Duration) {
    let start = Instant::now();
    let mut child = Command::new(bin)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the child ended within 30 s")
        .unwrap();
    feeder.join().unwrap();
    (out, start.elapsed())
}

/// kv-cli over TCP against `addr`; its stdout, asserting success.
fn cli_tcp(addr: &str, args: &[&str], input: &[u8]) -> String {
    let mut all = vec!["--server", addr, "--transport", "tcp"];
    all.extend_from_slice(args);
    let (o, _) = run(CLI, &all, input);
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "kv-cli {args:?} failed: {stdout} {}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout.trim_end_matches('\n').to_string()
}

fn tcp_client(addr: &str) -> Client<TcpTransport> {
    Client::connect_tcp(addr, ClientConfig::default()).unwrap()
}

#[test]
fn kv_cli_and_the_client_library_over_tcp() {
    let dir = tempdir();
    let s = ServerProc::start_tcp(dir.path(), free_port());
    assert!(
        s.startup.iter().any(|l| l.contains("(tcp), 2 threads")),
        "{:?}",
        s.startup
    );
    let a = s.addr.as_str();
    assert_eq!(cli_tcp(a, &["put", "apple", "red"], b""), "OK");
    assert_eq!(cli_tcp(a, &["put", "banana", "yellow fruit"], b""), "OK");
    assert_eq!(cli_tcp(a, &["get", "apple"], b""), "red");
    assert_eq!(
        cli_tcp(a, &["scan", "a", "5"], b""),
        "apple red\nbanana yellow\\x20fruit"
    );
    assert_eq!(cli_tcp(a, &["del", "apple"], b""), "OK");
    // Pipe mode: every line answered in order.
    let mut input = String::new();
    let mut want = Vec::new();
    for i in 0..200 {
        input.push_str(&format!("put key{i:03} value{i}\n"));
        want.push("OK".to_string());
    }
    for i in (0..200).step_by(9) {
        input.push_str(&format!("get key{i:03}\n"));
        want.push(format!("value{i}"));
    }
    input.push_str("get apple\nscan key198\n");
    want.push("(not found)".into());
    want.push("key198 value198 key199 value199".into());
    let out = cli_tcp(a, &[], input.as_bytes());
    assert_eq!(out.lines().collect::<Vec<_>>(), want);
    let stats = cli_tcp(a, &["stats"], b"");
    assert!(stats.starts_with("threads=2 items=201 "), "{stats}");

    // The client library: pipelined writes, reads, a scan across both threads.
    let mut c = tcp_client(a);
    let items: BTreeMap<Vec<u8>, Vec<u8>> = (0..500u32)
        .map(|i| {
            (
                format!("lib{i:04}").into_bytes(),
                vec![i as u8; 1 + (i as usize * 37) % 3000],
            )
        })
        .collect();
    for (i, (k, v)) in items.iter().enumerate() {
        c.submit(
            Op::Put {
                key: k.clone(),
                value: v.clone(),
            },
            i as u64,
        )
        .unwrap();
        if c.in_flight() >= 64 {
            let (tag, r) = c.wait().unwrap();
            assert_eq!(r.unwrap(), Reply::Written, "put {tag}");
        }
    }
    while let Some((tag, r)) = c.wait() {
        assert_eq!(r.unwrap(), Reply::Written, "put {tag}");
    }
    for (k, v) in items.iter().step_by(11) {
        assert_eq!(c.get(k).unwrap().as_ref(), Some(v));
    }
    let scanned = c.scan(b"lib", 1000).unwrap();
    assert_eq!(scanned.len(), items.len());
    assert!(scanned
        .iter()
        .zip(&items)
        .all(|(a, b)| a.0 == *b.0 && a.1 == *b.1));
    assert_eq!(c.rpc().stats().retransmissions, 0, "no go-back-N over TCP");

    // A client on another transport is refused with a clear error, soon.
    let (o, took) = run(
        CLI,
        &["--server", a, "--connect-timeout", "2", "get", "banana"],
        b"",
    );
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("transport mismatch"), "{err}");
    assert!(took < Duration::from_secs(20), "{took:?}");
    drop(c);
    s.terminate();
}

#[test]
fn a_sigkilled_tcp_server_is_noticed_at_once_and_clients_reconnect_after_its_restart() {
    let dir = tempdir();
    let port = free_port();
    let s = ServerProc::start_tcp(dir.path(), port);
    let a = s.addr.clone();
    let mut c = tcp_client(&a);
    for i in 0..100u32 {
        c.put(format!("k{i:03}").as_bytes(), format!("v{i}").as_bytes())
            .unwrap();
    }
    // Requests in flight when the server dies.
    for i in 0..32u64 {
        c.submit(
            Op::Get {
                key: format!("k{i:03}").into_bytes(),
            },
            i,
        )
        .unwrap();
    }
    c.flush();
    s.kill9();
    // The kernel closed the server's connections: the sessions are reset through the route
    // failure, well before the 5 s request timeout (and the rpc layer's liveness timeout).
    let t0 = Instant::now();
    let mut outcomes = Vec::new();
    while let Some((_, r)) = c.wait() {
        outcomes.push(r);
    }
    assert_eq!(outcomes.len(), 32, "every request ends");
    let failed: Vec<&Error> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed
            .iter()
            .all(|e| matches!(e, Error::Rpc(RpcError::PeerFailed))),
        "{failed:?}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(4),
        "waited {:?}: ended by the timeout, not the closed connection",
        t0.elapsed()
    );
    let st = c.rpc().stats();
    assert!(st.route_failures >= 1, "{st:?}");
    assert_eq!(st.retransmissions, 0);

    // The server restarts on the same address and data directory: the client reconnects and
    // finds every acknowledged write.
    let s = ServerProc::start_tcp(dir.path(), port);
    let deadline = Instant::now() + Duration::from_secs(20);
    let got = loop {
        match c.get(b"k007") {
            Ok(v) => break v,
            Err(e) => {
                assert!(Instant::now() < deadline, "never reconnected: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    assert_eq!(got, Some(b"v7".to_vec()));
    for i in 0..100u32 {
        assert_eq!(
            c.get(format!("k{i:03}").as_bytes()).unwrap(),
            Some(format!("v{i}").into_bytes())
        );
    }
    c.put(b"after", b"restart").unwrap();
    assert_eq!(cli_tcp(&a, &["get", "after"], b""), "restart");
    assert_eq!(cli_tcp(&a, &["scan", "k098"], b""), "k098 v98\nk099 v99");
    drop(c);
    s.terminate();
}

/// `--transport ud|rc` where there is no RDMA device (this machine's kernel has no RDMA:
/// `ibv_get_device_list` fails with ENOSYS): the server exits at once with the device it
/// looked for and why there is none, before creating its data directory; kv-cli likewise.
#[cfg(feature = "rdma")]
#[test]
fn verbs_transports_without_an_rdma_device_fail_at_once_with_a_clear_error() {
    if let Ok(names) = transports::rdma::ibv::device_names() {
        if !names.is_empty() {
            println!("skipping: this machine has RDMA devices ({names:?})");
            return;
        }
    }
    let dir = tempdir();
    let data = dir.path().join("never-created");
    let listen = format!("127.0.0.1:{}", free_port());
    for (transport, device, wanted) in [
        ("ud", None, "no RDMA device (any device)"),
        ("rc", Some("mlx5_7"), "no RDMA device (device \"mlx5_7\")"),
    ] {
        let mut args = vec!["--transport", transport, "--listen", &listen];
        args.extend(["--data-dir", data.to_str().unwrap()]);
        if let Some(d) = device {
            args.extend(["--device", d]);
        }
        let (o, took) = run(SERVER, &args, b"");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "kv-service --transport {transport} started"
        );
        assert!(
            err.contains(&format!("transport {transport} needs an RDMA device"))
                && err.contains(wanted),
            "{err}"
        );
        assert!(err.contains("ibv_get_device_list"), "the reason: {err}");
        assert!(took < Duration::from_secs(20), "{took:?}");
        assert!(!data.exists(), "the data directory was not touched");
        assert!(o.stdout.is_empty(), "nothing printed as if serving");

        let mut args = vec!["--server", &listen, "--transport", transport];
        if let Some(d) = device {
            args.extend(["--device", d]);
        }
        args.extend(["get", "x"]);
        let (o, took) = run(CLI, &args, b"");
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(
            err.contains(&format!("cannot set up the {transport} transport"))
                && err.contains(wanted),
            "{err}"
        );
        assert!(took < Duration::from_secs(20), "{took:?}");
    }
    // --device without a verbs transport is a usage error.
    let (o, _) = run(CLI, &["--device", "mlx5_0", "get", "x"], b"");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--device is for --transport ud or rc"));
}
