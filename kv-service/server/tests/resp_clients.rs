//! The RESP front-end against clients nobody here wrote: redis-cli (one-shot, piped,
//! `--pipe` mass insertion, interactive under tmux), redis-benchmark, and the Python `redis`
//! package — each against the real `kv-service` binary on 127.0.0.1 with ports picked at run
//! time and a temporary data directory. Every wait is bounded; children are killed on drop.
//!
//! `ci/test` installs the clients (Debian `redis-tools`, `tmux`; PyPI `redis`) and sets
//! `KV_RESP_CLIENTS_REQUIRED`, under which a missing client fails its test. Elsewhere (a
//! developer's `cargo test` without them) a test whose client cannot be found says so on
//! stderr and passes without running.

mod common;

use common::wait_timeout;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const SERVER: &str = env!("CARGO_BIN_EXE_kv-service");
const KV_CLI: &str = env!("CARGO_BIN_EXE_kv-cli");

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Whether `tool` runs (`tool --version`).
fn have(tool: &str, version_arg: &str) -> bool {
    Command::new(tool)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether an optional part of a test can run: `ok`, and when not, whether that is allowed
/// (not under `KV_RESP_CLIENTS_REQUIRED`, see the module docs).
fn available(ok: bool, what: &str) -> bool {
    assert!(
        ok || std::env::var_os("KV_RESP_CLIENTS_REQUIRED").is_none(),
        "{what} is not installed, and KV_RESP_CLIENTS_REQUIRED says the RESP client tests \
         must run (ci/test installs it)"
    );
    ok
}

/// Returns from the test, saying so, when `$ok` is false (and that is allowed).
macro_rules! require {
    ($ok:expr, $what:expr) => {
        if !available($ok, $what) {
            eprintln!(
                "SKIPPED {}: {} is not installed here (ci/test installs it)",
                module_path!(),
                $what
            );
            return;
        }
    };
}

fn python_redis() -> bool {
    Command::new("python3")
        .args(["-c", "import redis"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A running kv-service with its RESP port.
struct ServerProc {
    child: Child,
    resp: SocketAddr,
    /// The rpc listen (session-management) address, for kv-cli.
    listen: SocketAddr,
    lines: mpsc::Receiver<String>,
}

impl ServerProc {
    fn start(dir: &Path, extra: &[&str]) -> ServerProc {
        let (child, rx, startup) = common::spawn_until_ready(
            Command::new(SERVER)
                .args(["--listen", "127.0.0.1:0", "--resp", "127.0.0.1:0"])
                .args(["--threads", "2", "--cache-mb", "16", "--spin-ms", "20"])
                .args(["--log-level", "warn"])
                .args(extra)
                .arg("--data-dir")
                .arg(dir),
        );
        let resp = startup
            .iter()
            .find_map(|l| l.strip_prefix("RESP listening on "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no RESP address in {startup:?}"));
        let listen = startup
            .iter()
            .find_map(|l| l.strip_prefix("kv-service listening on "))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no listen address in {startup:?}"));
        ServerProc {
            child,
            resp,
            listen,
            lines: rx,
        }
    }

    fn port(&self) -> String {
        self.resp.port().to_string()
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    fn terminate(mut self) -> Vec<String> {
        // SAFETY: kill(2) on our own child's pid.
        let r = unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        assert_eq!(r, 0);
        let status = wait_timeout(&mut self.child, Duration::from_secs(30));
        assert!(status.success(), "kv-service exited with {status}");
        // The reader thread may not have passed on the last lines yet: take them until it
        // ends at the pipe's end of file (bounded, should a grandchild hold the pipe open).
        let mut lines = Vec::new();
        let end = Instant::now() + Duration::from_secs(10);
        while let Ok(l) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            lines.push(l);
        }
        lines
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with `input` on stdin, killed (and the test failed) after `limit`.
fn run(cmd: &mut Command, input: &[u8], limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let ereader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_timeout(&mut child, limit);
    let _ = writer.join();
    Output {
        status,
        stdout: reader.join().unwrap(),
        stderr: ereader.join().unwrap(),
    }
}

/// `redis-cli -h 127.0.0.1 -p PORT args...` (reading commands from `input` if given):
/// stdout.
fn cli(s: &ServerProc, args: &[&str], input: &[u8]) -> String {
    let port = s.port();
    let out = run(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args(args),
        input,
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "redis-cli {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn redis_cli_one_shot_commands() {
    require!(
        have("redis-cli", "--version"),
        "redis-cli (Debian redis-tools)"
    );
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), &[]);
    let one = |args: &[&str]| cli(&s, args, b"");
    assert_eq!(one(&["PING"]), "PONG\n");
    assert_eq!(one(&["ECHO", "hello world"]), "hello world\n");
    assert_eq!(one(&["GET", "greeting"]), "\n", "nil");
    assert_eq!(one(&["SET", "greeting", "hello"]), "OK\n");
    assert_eq!(one(&["GET", "greeting"]), "hello\n");
    assert_eq!(one(&["SET", "greeting", "again", "NX"]), "\n");
    assert_eq!(one(&["SET", "greeting", "hi", "XX", "GET"]), "hello\n");
    assert_eq!(one(&["GETSET", "greeting", "hey"]), "hi\n");
    assert_eq!(one(&["STRLEN", "greeting"]), "3\n");
    assert_eq!(
        one(&["MSET", "user:1", "ann", "user:2", "bob", "user:3", "cy"]),
        "OK\n"
    );
    assert_eq!(
        one(&["MGET", "user:1", "nokey", "user:3", "greeting"]),
        "ann\n\ncy\nhey\n"
    );
    assert_eq!(one(&["EXISTS", "user:1", "user:2", "nokey"]), "2\n");
    assert_eq!(one(&["DBSIZE"]), "4\n");
    assert_eq!(one(&["DEL", "user:2", "nokey"]), "1\n");
    assert_eq!(one(&["DBSIZE"]), "3\n");
    let mut keys: Vec<String> = one(&["--scan"]).lines().map(String::from).collect();
    keys.sort();
    assert_eq!(keys, ["greeting", "user:1", "user:3"]);
    assert_eq!(one(&["--scan", "--pattern", "user:*"]), "user:1\nuser:3\n");
    assert_eq!(one(&["TYPE", "user:1"]), "string\n");
    assert_eq!(one(&["TTL", "user:1"]), "-1\n");
    assert!(one(&["INFO", "keyspace"]).contains("db0:keys=3,expires=0,avg_ttl=0"));
    let info = one(&["INFO"]);
    for section in [
        "# Server",
        "# Clients",
        "# Persistence",
        "# Stats",
        "# Keyspace",
    ] {
        assert!(info.contains(section), "{section} in {info}");
    }
    assert_eq!(one(&["CONFIG", "GET", "save"]), "save\n\n");
    assert_eq!(one(&["CONFIG", "GET", "appendonly"]), "appendonly\nyes\n");
    // The default durability, periodic, keeps Redis's everysec promise.
    assert_eq!(
        one(&["CONFIG", "GET", "appendfsync"]),
        "appendfsync\neverysec\n"
    );
    assert_eq!(one(&["SELECT", "0"]), "OK\n");
    assert_eq!(one(&["SELECT", "1"]), "ERR DB index is out of range\n\n");
    assert_eq!(
        one(&["NOSUCH", "a"]),
        "ERR unknown command 'NOSUCH', with args beginning with: 'a' \n\n"
    );
    assert_eq!(
        one(&["GET"]),
        "ERR wrong number of arguments for 'get' command\n\n"
    );
    assert!(one(&["SET", "k", "v", "EX", "10"]).starts_with("ERR SET options EX"));
    let count: u32 = one(&["COMMAND", "COUNT"]).trim().parse().unwrap();
    assert!(count > 20, "{count} commands");
    // Several commands on one connection, read from stdin as a script would.
    assert_eq!(
        cli(
            &s,
            &[],
            b"CLIENT SETNAME worker\nCLIENT GETNAME\nCLIENT ID\nHELLO 3\nGET greeting\n"
        )
        .lines()
        .take(2)
        .collect::<Vec<_>>(),
        ["OK", "worker"]
    );
    // RESP3 through redis-cli -3: a null is printed as such, maps work.
    assert_eq!(cli(&s, &["-3", "GET", "nokey"], b""), "\n");
    assert!(cli(&s, &["-3", "HELLO", "3"], b"").contains("proto 3"));
    let lines = s.terminate();
    assert!(
        lines.iter().any(|l| l.contains("stopped cleanly")),
        "{lines:?}"
    );
}

#[test]
fn redis_cli_pipe_mass_insertion() {
    require!(
        have("redis-cli", "--version"),
        "redis-cli (Debian redis-tools)"
    );
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), &[]);
    const N: usize = 20_000;
    let mut input = Vec::new();
    for i in 0..N {
        let (k, v) = (format!("key:{i:06}"), format!("value-{i}"));
        kv_resp::encode_request(&[b"SET", k.as_bytes(), v.as_bytes()], &mut input);
    }
    let out = cli(&s, &["--pipe"], &input);
    assert!(
        out.contains(&format!("errors: 0, replies: {N}")),
        "redis-cli --pipe said: {out}"
    );
    assert_eq!(cli(&s, &["DBSIZE"], b""), format!("{N}\n"));
    assert_eq!(cli(&s, &["GET", "key:012345"], b""), "value-12345\n");
    // The same through the inline protocol (a file of commands, one per line).
    let inline: String = (0..1000)
        .map(|i| format!("SET inline:{i} {i}\r\n"))
        .collect();
    let out = cli(&s, &["--pipe"], inline.as_bytes());
    assert!(out.contains("errors: 0, replies: 1000"), "{out}");
    assert_eq!(cli(&s, &["GET", "inline:999"], b""), "999\n");
    s.terminate();
}

#[test]
fn redis_cli_interactive_uses_command_docs_for_help_and_hints() {
    require!(
        have("redis-cli", "--version"),
        "redis-cli (Debian redis-tools)"
    );
    require!(have("tmux", "-V"), "tmux");
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), &[]);
    let session = format!("kv-resp-test-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    let cmdline = format!("redis-cli -p {}", s.port());
    tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "40",
        &cmdline,
    ]);
    let screen_until = |want: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = tmux(&["capture-pane", "-t", &session, "-p"]);
            if screen.contains(want) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{want:?} never shown; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    // The prompt (tmux drops its trailing blank).
    screen_until(&format!("127.0.0.1:{}>", s.port()));
    tmux(&["send-keys", "-t", &session, "SET a 1", "Enter"]);
    screen_until("OK");
    tmux(&["send-keys", "-t", &session, "help mset", "Enter"]);
    // The help text comes from our COMMAND DOCS.
    screen_until("summary: Sets the string values of one or more keys");
    // Typing a command name shows its arguments as a hint.
    tmux(&["send-keys", "-t", &session, "MGET a"]);
    screen_until("MGET a [key ...]");
    tmux(&["send-keys", "-t", &session, "", "Enter"]);
    screen_until("\"1\"");
    tmux(&["kill-session", "-t", &session]);
    s.terminate();
}

/// Requests per test of the redis-benchmark run: the issue's 200 000 in release builds
/// (`ci/test` runs this file with `--release`), 2 000 in debug builds.
const BENCH_REQUESTS: &str = if cfg!(debug_assertions) {
    "2000"
} else {
    "200000"
};

/// The keyspace of the redis-benchmark run. Without `-r` every request names the same key,
/// and the engine writes one key one write after another, each waiting for the disk: from
/// 10 000 a second on a quiet disk down to a few hundred when other jobs load it, so 200 000
/// SETs of one key can take minutes. The debug run keeps the issue's exact command (one
/// key); the release run spreads its 200 000 requests over 100 000 keys (`-r`), as real
/// traffic does, so that its time does not hang on the disk's latency.
const BENCH_KEYSPACE: Option<&str> = if cfg!(debug_assertions) {
    None
} else {
    Some("100000")
};

#[test]
fn redis_benchmark_gets_every_request_answered() {
    require!(
        have("redis-benchmark", "--version"),
        "redis-benchmark (Debian redis-tools)"
    );
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), &[]);
    let port = s.port();
    // The issue's command (with -r in release, see BENCH_KEYSPACE). redis-benchmark 7 stops
    // at the first error reply it gets, so a clean exit with every test's "N requests
    // completed" line means every request was answered, and answered without an error.
    let out = run(
        Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &port])
            .args([
                "-t",
                "set,get,mset",
                "-n",
                BENCH_REQUESTS,
                "-c",
                "50",
                "-P",
                "16",
            ])
            .args(BENCH_KEYSPACE.iter().flat_map(|r| ["-r", r])),
        b"",
        Duration::from_secs(1200),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "redis-benchmark failed: {text}");
    assert!(!text.contains("Error"), "errors from the server: {text}");
    for test in ["SET", "GET", "MSET (10 keys)"] {
        let section = text
            .split(&format!("====== {test} ======"))
            .nth(1)
            .unwrap_or_else(|| panic!("no {test} section in {text}"));
        assert!(
            section.contains(&format!("{BENCH_REQUESTS} requests completed in")),
            "{test}: not every request was answered: {section}"
        );
    }
    // The server agrees: that many each of SET, GET and MSET ran (plus the CONFIG GETs
    // redis-benchmark sends first).
    let info = cli_or_raw(&s, &["INFO", "stats"]);
    let processed: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("total_commands_processed:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total_commands_processed in {info}"));
    let n: u64 = BENCH_REQUESTS.parse().unwrap();
    assert!(processed >= 3 * n, "{processed} commands processed");
    s.terminate();
}

/// A command's reply over a raw RESP connection (for tests that should not need
/// redis-cli).
fn cli_or_raw(s: &ServerProc, args: &[&str]) -> String {
    let mut c = TcpStream::connect(s.resp).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let argv: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
    let mut req = Vec::new();
    kv_resp::encode_request(&argv, &mut req);
    c.write_all(&req).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some((v, _)) = kv_resp::parse_reply(&buf).unwrap() {
            return match v {
                kv_resp::Value::Bulk(b) | kv_resp::Value::Simple(b) => {
                    String::from_utf8(b).unwrap()
                }
                kv_resp::Value::Error(e) => format!("-{}", String::from_utf8_lossy(&e)),
                other => format!("{other:?}"),
            };
        }
        let n = c.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before the reply");
        buf.extend_from_slice(&chunk[..n]);
    }
}

const PYTHON_CLIENT: &str = r#"
import sys
import redis

port = int(sys.argv[1])
r = redis.Redis(host="127.0.0.1", port=port, protocol=2, decode_responses=True)
assert r.ping()
assert r.set("fruit:apple", "red")
assert r.get("fruit:apple") == "red"
assert r.get("fruit:none") is None
assert r.set("fruit:apple", "green", nx=True) is None
assert r.set("fruit:kiwi", "brown", nx=True)
assert r.getset("fruit:kiwi", "green") == "brown"
assert r.mset({"fruit:banana": "yellow", "fruit:cherry": "dark red"})
assert r.mget(["fruit:apple", "fruit:none", "fruit:banana"]) == ["red", None, "yellow"]
assert r.exists("fruit:apple", "fruit:none") == 1
assert r.strlen("fruit:cherry") == 8

# A plain pipeline (no MULTI): 1000 writes, then 1000 reads, in one round trip each.
p = r.pipeline(transaction=False)
for i in range(1000):
    p.set(f"item:{i:04}", i)
assert all(p.execute())
p = r.pipeline(transaction=False)
for i in range(1000):
    p.get(f"item:{i:04}")
assert p.execute() == [str(i) for i in range(1000)]

# scan_iter walks every key once, with MATCH and COUNT, across pages and threads.
items = sorted(r.scan_iter(match="item:*", count=37))
assert items == [f"item:{i:04}" for i in range(1000)], len(items)
assert sorted(r.scan_iter(match="fruit:*")) == [
    "fruit:apple", "fruit:banana", "fruit:cherry", "fruit:kiwi"]
assert r.dbsize() == 1004
assert r.delete("item:0000", "item:0001", "nokey") == 2
assert r.dbsize() == 1002

# A transaction pipeline is refused with a clear error, not half run.
try:
    t = r.pipeline()
    t.set("tx", 1)
    t.execute()
    raise SystemExit("MULTI was accepted")
except redis.ResponseError as e:
    assert "not supported" in str(e), e
assert r.get("tx") is None

# Unknown commands and bad arguments raise as they do against Redis.
try:
    r.execute_command("NOSUCH")
    raise SystemExit("NOSUCH was accepted")
except redis.ResponseError as e:
    assert str(e).startswith("unknown command 'NOSUCH'"), e
try:
    r.set("k", "v", ex=10)
    raise SystemExit("SET EX was accepted")
except redis.ResponseError as e:
    assert "not supported" in str(e), e

info = r.info()
assert info["redis_version"] and info["connected_clients"] >= 1, info
assert r.config_get("appendonly") == {"appendonly": "yes"}

# RESP3 (HELLO 3) with the same client.
r3 = redis.Redis(host="127.0.0.1", port=port, protocol=3, decode_responses=True)
assert r3.get("fruit:apple") == "red"
assert r3.get("fruit:none") is None
assert r3.mget(["fruit:apple", "fruit:none"]) == ["red", None]
print("python redis client: all checks passed")
"#;

#[test]
fn python_redis_client() {
    require!(python_redis(), "the Python redis package (PyPI redis)");
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), &[]);
    let out = run(
        Command::new("python3").args(["-c", PYTHON_CLIENT, &s.port()]),
        b"",
        Duration::from_secs(120),
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the Python client failed:\n{text}");
    assert!(text.contains("all checks passed"), "{text}");
    s.terminate();
}

#[test]
fn requirepass_gates_every_client() {
    let dir = tempdir();
    let pass = dir.path().join("password");
    std::fs::write(&pass, "s3cret pass\n").unwrap();
    let data = dir.path().join("data");
    let s = ServerProc::start(&data, &["--requirepass-file", pass.to_str().unwrap()]);
    assert_eq!(
        cli_or_raw(&s, &["GET", "k"]),
        "-NOAUTH Authentication required."
    );
    if available(have("redis-cli", "--version"), "redis-cli") {
        assert_eq!(
            cli(&s, &["SET", "k", "v"], b""),
            "NOAUTH Authentication required.\n\n"
        );
        let port = s.port();
        let out = run(
            Command::new("redis-cli")
                .args(["-h", "127.0.0.1", "-p", &port, "--no-auth-warning"])
                .args(["-a", "s3cret pass", "SET", "k", "v"]),
            b"",
            Duration::from_secs(30),
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "OK\n");
    } else {
        eprintln!("redis-cli not installed: its part of requirepass_gates_every_client skipped");
    }
    if available(python_redis(), "the Python redis package") {
        let script = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), password="s3cret pass")
r.set("p", "1")
assert r.get("p") == b"1"
try:
    redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), password="wrong").ping()
    raise SystemExit("a wrong password was accepted")
except redis.AuthenticationError:
    pass
print("auth ok")
"#;
        let out = run(
            Command::new("python3").args(["-c", script, &s.port()]),
            b"",
            Duration::from_secs(60),
        );
        assert!(
            out.status.success() && String::from_utf8_lossy(&out.stdout).contains("auth ok"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    s.terminate();
}

#[test]
fn a_malformed_stream_closes_that_connection_alone() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), &[]);
    let mut good = TcpStream::connect(s.resp).unwrap();
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut bad = TcpStream::connect(s.resp).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    bad.write_all(b"*2\r\n$3\r\nGET\r\n$99999999999\r\n")
        .unwrap();
    let mut got = Vec::new();
    bad.read_to_end(&mut got).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR Protocol error: bulk length 99999999999 exceeds the limit of 8388608 bytes\r\n"
    );
    good.write_all(b"PING\r\n").unwrap();
    let mut pong = [0u8; 7];
    good.read_exact(&mut pong).unwrap();
    assert_eq!(&pong, b"+PONG\r\n");
    s.terminate();
}

#[test]
fn idle_connections_are_closed_and_writes_survive_a_restart() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), &["--resp-timeout", "1"]);
    let mut c = TcpStream::connect(s.resp).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(b"SET durable yes\r\n").unwrap();
    let mut ok = [0u8; 5];
    c.read_exact(&mut ok).unwrap();
    assert_eq!(&ok, b"+OK\r\n");
    // Idle past the timeout: the server closes it (the sweep runs once a second).
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    s.terminate();
    let s = ServerProc::start(dir.path(), &[]);
    assert_eq!(cli_or_raw(&s, &["GET", "durable"]), "yes");
    s.terminate();
}

/// The RESP front-end beside the rpc datapath over TCP: the server threads sleep in the
/// front-end's poll, which must wake for the TCP transport's connections too. Each request
/// is sent after an idle spell longer than the spin (20 ms), so the thread is asleep.
#[test]
fn resp_and_kv_cli_over_the_tcp_transport_share_the_data() {
    let dir = tempdir();
    let s = ServerProc::start(dir.path(), &["--transport", "tcp"]);
    let kv = |args: &[&str]| {
        std::thread::sleep(Duration::from_millis(100));
        let out = run(
            Command::new(KV_CLI)
                .args(["--server", &s.listen.to_string(), "--transport", "tcp"])
                .args(args),
            b"",
            Duration::from_secs(30),
        );
        assert!(
            out.status.success(),
            "kv-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let resp = |args: &[&str]| {
        std::thread::sleep(Duration::from_millis(100));
        cli_or_raw(&s, args)
    };
    for i in 0..4 {
        let (a, b) = (format!("rpc{i}"), format!("resp{i}"));
        assert_eq!(kv(&["put", &a, "from-kv-cli"]), "OK\n");
        assert_eq!(resp(&["GET", &a]), "from-kv-cli");
        assert_eq!(resp(&["SET", &b, "from-resp"]), "OK");
        assert_eq!(kv(&["get", &b]), "from-resp\n");
    }
    assert_eq!(resp(&["DBSIZE"]), "Integer(8)");
    let lines = s.terminate();
    assert!(
        lines.iter().any(|l| l.contains("stopped cleanly")),
        "{lines:?}"
    );
}
