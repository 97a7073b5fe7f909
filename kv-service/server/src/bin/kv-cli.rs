//! `kv-cli`: command-line client of `kv-service` (like redis-cli). See `docs/KV-SERVICE.md`.
//!
//! ```text
//! kv-cli [--server ADDR] [--hex] [--timeout SECS] get KEY | put KEY VALUE | del KEY
//!                                                 | scan START [COUNT] | stats
//! kv-cli [--server ADDR] < commands.txt     # pipe mode: one command per line
//! kv-cli --transport tcp ...                 # the server's datapath: udp (default), tcp,
//!                                            # ud | rc [--device NAME] (feature rdma)
//! kv-cli --cluster FILE get KEY | ... | stats  # a replicated cluster (stats: every replica's Raft state)
//! ```
//!
//! Keys and values are bytes. On the command line and in pipe mode they may hold escapes
//! (`\xHH`, `\\`, `\n`, `\r`, `\t`, `\0`, `\s` for a space; `""` alone is the empty string);
//! with `--hex` they are hex instead. Output uses the same escapes (or hex), so every byte
//! string round-trips.
//!
//! Exit status: 0 success, 1 key not found (one-shot get / del), 2 error.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::io::{BufRead, Write};
use std::os::unix::ffi::OsStrExt;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand, ValueEnum};
use kv_client::{
    ClientConfig, ClientTransport, ClusterClient, ClusterClientConfig, Error, Op, Reply,
};
use kv_proto::ThreadStats;

/// A client over the transport chosen with `--transport`.
type Client = kv_client::Client<kv_client::AnyTransport>;

/// Command-line client of kv-service. Without a command, reads commands from stdin, one per
/// line, and prints one result line per command, in order (pipelined over the wire).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server address (its --listen address).
    #[arg(long, default_value = "127.0.0.1:31850")]
    server: String,
    /// The server's datapath transport (its --transport).
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// RDMA device for --transport ud|rc (`ibv_devices` lists them); default: the first.
    #[cfg(feature = "rdma")]
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// Keys and values are hex strings, in input and output.
    #[arg(long)]
    hex: bool,
    /// Seconds to wait for an answer before reporting a timeout.
    #[arg(long, default_value_t = 5.0)]
    timeout: f64,
    /// Seconds to wait for the server to accept the connection.
    #[arg(long, default_value_t = 2.0)]
    connect_timeout: f64,
    /// Requests in flight at most in pipe mode.
    #[arg(long, default_value_t = 64)]
    depth: usize,
    /// Pipe mode, server gone: stop reading input after this many failed reconnect attempts
    /// in a row.
    #[arg(long, default_value_t = 5, value_name = "N")]
    give_up_after: u32,
    /// Pipe mode, server gone: stop reading input once it has been unreachable this long.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    give_up_secs: f64,
    /// Pipe mode, server gone: never stop; wait for it (backing off) however long it takes.
    #[arg(long)]
    keep_retrying: bool,
    /// Spin while waiting for answers (lowest latency, a full core) instead of sleeping
    /// until they arrive.
    #[arg(long)]
    busy_poll: bool,
    /// Talk to a replicated cluster described by this cluster file (docs/CLUSTER.md)
    /// instead of one server: keys go to their shard's leader; `stats` prints every
    /// replica's Raft state. Pipe mode then runs one command at a time.
    #[arg(long, value_name = "FILE")]
    cluster: Option<std::path::PathBuf>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// Kernel UDP.
    Udp,
    /// Kernel TCP.
    Tcp,
    /// InfiniBand/RoCE unreliable datagrams (verbs).
    #[cfg(feature = "rdma")]
    Ud,
    /// InfiniBand/RoCE reliable connections (verbs).
    #[cfg(feature = "rdma")]
    Rc,
}

impl Args {
    fn client_transport(&self) -> anyhow::Result<ClientTransport> {
        #[cfg(feature = "rdma")]
        if self.device.is_some() && !matches!(self.transport, Transport::Ud | Transport::Rc) {
            bail!("--device is for --transport ud or rc");
        }
        Ok(match self.transport {
            Transport::Udp => ClientTransport::Udp,
            Transport::Tcp => ClientTransport::Tcp,
            #[cfg(feature = "rdma")]
            Transport::Ud => ClientTransport::Ud {
                device: self.device.clone(),
            },
            #[cfg(feature = "rdma")]
            Transport::Rc => ClientTransport::Rc {
                device: self.device.clone(),
            },
        })
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the value of KEY.
    Get { key: OsString },
    /// Set KEY to VALUE.
    Put { key: OsString, value: OsString },
    /// Delete KEY.
    Del { key: OsString },
    /// Print up to COUNT (default 10) items with key >= START, one per line: KEY VALUE.
    Scan {
        start: OsString,
        count: Option<usize>,
    },
    /// Print the server's counters: the totals, then one line per thread.
    Stats,
}

/// A parsed command (pipe mode or one-shot): a key-value operation, or STATS.
enum Line {
    Op(Op),
    Stats,
}

impl Line {
    /// The key of a GET / PUT / DELETE (the commands that pipeline per key).
    fn key(&self) -> Option<&[u8]> {
        match self {
            Line::Op(o @ (Op::Get { .. } | Op::Put { .. } | Op::Delete { .. })) => Some(o.key()),
            _ => None,
        }
    }
}

const DEFAULT_SCAN: usize = 10;

struct Codec {
    hex: bool,
}

impl Codec {
    fn decode(&self, s: &[u8]) -> anyhow::Result<Vec<u8>> {
        if self.hex {
            decode_hex(s)
        } else {
            unescape(s)
        }
    }

    /// Encodes for output; `token`: also escape spaces and quotes (scan items).
    fn encode(&self, b: &[u8], token: bool) -> String {
        if self.hex {
            return if b.is_empty() && token {
                "\"\"".into()
            } else {
                b.iter().map(|x| format!("{x:02x}")).collect()
            };
        }
        if b.is_empty() && token {
            return "\"\"".into();
        }
        let mut s = String::with_capacity(b.len());
        for (i, &c) in b.iter().enumerate() {
            match c {
                b'\\' => s.push_str("\\\\"),
                b'\n' => s.push_str("\\n"),
                b'\r' => s.push_str("\\r"),
                b'\t' => s.push_str("\\t"),
                // A leading '(' would look like "(not found)" / "(error)".
                b'(' if i == 0 => s.push_str("\\x28"),
                b' ' | b'"' if token => s.push_str(&format!("\\x{c:02x}")),
                0x20..=0x7e => s.push(c as char),
                _ => s.push_str(&format!("\\x{c:02x}")),
            }
        }
        s
    }
}

fn unescape(s: &[u8]) -> anyhow::Result<Vec<u8>> {
    if s == b"\"\"" {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(s.len());
    let mut it = s.iter().copied();
    while let Some(c) = it.next() {
        if c != b'\\' {
            out.push(c);
            continue;
        }
        match it.next() {
            Some(b'\\') => out.push(b'\\'),
            Some(b'n') => out.push(b'\n'),
            Some(b'r') => out.push(b'\r'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b's') => out.push(b' '),
            Some(b'x') => {
                let hi = it.next().and_then(hex_val);
                let lo = it.next().and_then(hex_val);
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => bail!("bad escape: \\x needs two hex digits"),
                }
            }
            Some(o) => bail!("unknown escape \\{}", o as char),
            None => bail!("a lone \\ at the end"),
        }
    }
    Ok(out)
}

fn hex_val(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

fn decode_hex(s: &[u8]) -> anyhow::Result<Vec<u8>> {
    if s == b"\"\"" {
        return Ok(Vec::new());
    }
    s.chunks(2)
        .map(|p| match p {
            [h, l] => match (hex_val(*h), hex_val(*l)) {
                (Some(h), Some(l)) => Ok(h << 4 | l),
                _ => Err(anyhow!("not a hex string")),
            },
            _ => Err(anyhow!("odd number of hex digits")),
        })
        .collect()
}

fn parse_line(codec: &Codec, line: &[u8]) -> anyhow::Result<Option<Line>> {
    let toks: Vec<&[u8]> = line
        .split(|c| c.is_ascii_whitespace())
        .filter(|t| !t.is_empty())
        .collect();
    let Some((cmd, rest)) = toks.split_first() else {
        return Ok(None);
    };
    if cmd.first() == Some(&b'#') {
        return Ok(None);
    }
    let cmd = String::from_utf8_lossy(cmd).to_ascii_lowercase();
    let arg = |i: usize| -> anyhow::Result<Vec<u8>> {
        let t = rest
            .get(i)
            .ok_or_else(|| anyhow!("{cmd}: missing argument"))?;
        codec.decode(t)
    };
    let want = |n: usize| -> anyhow::Result<()> {
        if rest.len() > n {
            bail!("{cmd}: too many arguments (escape spaces as \\s or \\x20)");
        }
        Ok(())
    };
    let l = match cmd.as_str() {
        "get" => {
            want(1)?;
            Line::Op(Op::Get { key: arg(0)? })
        }
        "put" | "set" => {
            want(2)?;
            Line::Op(Op::Put {
                key: arg(0)?,
                value: arg(1)?,
            })
        }
        "del" | "delete" => {
            want(1)?;
            Line::Op(Op::Delete { key: arg(0)? })
        }
        "scan" => {
            want(2)?;
            let count = match rest.get(1) {
                Some(c) => String::from_utf8_lossy(c)
                    .parse()
                    .context("scan: COUNT must be a number")?,
                None => DEFAULT_SCAN,
            };
            Line::Op(Op::Scan {
                start: arg(0)?,
                max: count,
            })
        }
        "stats" => {
            want(0)?;
            Line::Stats
        }
        other => bail!("unknown command {other:?} (get, put, del, scan, stats)"),
    };
    Ok(Some(l))
}

fn stats_total(stats: &[ThreadStats]) -> String {
    let mut total = ThreadStats::default();
    for s in stats {
        total.add(s);
    }
    let line = total.to_line();
    let line = line
        .split(' ')
        .filter(|p| !p.starts_with("thread_id="))
        .collect::<Vec<_>>()
        .join(" ");
    format!("threads={} {line}", stats.len())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kv-cli: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn secs(s: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| anyhow!("bad duration {s}"))
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    let codec = Codec { hex: args.hex };
    let cfg = ClientConfig {
        timeout: secs(args.timeout)?,
        connect_timeout: secs(args.connect_timeout)?,
        busy_poll: args.busy_poll,
        ..ClientConfig::default()
    };
    // Parse the command before connecting, so usage errors do not wait for the network.
    let line = match &args.cmd {
        None => None,
        Some(c) => Some(match c {
            Cmd::Get { key } => Line::Op(Op::Get {
                key: codec.decode(key.as_bytes())?,
            }),
            Cmd::Put { key, value } => Line::Op(Op::Put {
                key: codec.decode(key.as_bytes())?,
                value: codec.decode(value.as_bytes())?,
            }),
            Cmd::Del { key } => Line::Op(Op::Delete {
                key: codec.decode(key.as_bytes())?,
            }),
            Cmd::Scan { start, count } => Line::Op(Op::Scan {
                start: codec.decode(start.as_bytes())?,
                max: count.unwrap_or(DEFAULT_SCAN),
            }),
            Cmd::Stats => Line::Stats,
        }),
    };
    if let Some(path) = &args.cluster {
        return run_cluster(&args, path, &codec, line);
    }
    let transport = args.client_transport()?;
    let mut client = Client::connect_with(&args.server, &transport, cfg)
        .with_context(|| format!("cannot connect to kv-service at {}", args.server))?;
    match line {
        Some(l) => {
            let code = one_shot(&mut client, &codec, l);
            // Close the sessions, so the server frees them now instead of reaping them later.
            let _ = client.close();
            code
        }
        None => {
            let give_up = GiveUp {
                after: args.give_up_after.max(1),
                secs: secs(args.give_up_secs)?,
                never: args.keep_retrying,
            };
            let code = pipe(&mut client, &codec, args.depth.max(1), give_up)?;
            // A normal end closes the sessions (the server frees them at once); after giving
            // up the server is gone and there is nothing to close.
            if code == ExitCode::SUCCESS || client.reconnect_failures() == 0 {
                let _ = client.close();
            }
            Ok(code)
        }
    }
}

/// Cluster mode: one-shot, or pipe mode one command at a time.
fn run_cluster(
    args: &Args,
    path: &std::path::Path,
    codec: &Codec,
    line: Option<Line>,
) -> anyhow::Result<ExitCode> {
    let cluster = kv_cluster::Cluster::load(path)
        .with_context(|| format!("reading the cluster file {}", path.display()))?;
    let cfg = ClusterClientConfig {
        deadline: secs(args.timeout)?,
        connect_timeout: secs(args.connect_timeout)?.min(Duration::from_millis(500)),
        ..ClusterClientConfig::default()
    };
    let mut client = ClusterClient::new(cluster, cfg).context("opening the client endpoint")?;
    let mut out = std::io::stdout().lock();
    if let Some(l) = line {
        let (text, code) = cluster_line(&mut client, codec, l);
        writeln!(out, "{text}")?;
        out.flush()?;
        return Ok(code);
    }
    let mut failed = false;
    for l in std::io::stdin().lock().split(b'\n') {
        let l = l.context("reading stdin")?;
        let text = match parse_line(codec, &l) {
            Ok(None) => continue,
            Ok(Some(l)) => {
                let (text, code) = cluster_line(&mut client, codec, l);
                failed |= code == ExitCode::from(2);
                text
            }
            Err(e) => {
                failed = true;
                format!("(error) {e:#}")
            }
        };
        writeln!(out, "{text}")?;
        out.flush()?;
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Runs one command on a cluster: its output and exit code (1: not found, 2: error).
fn cluster_line(client: &mut ClusterClient, codec: &Codec, line: Line) -> (String, ExitCode) {
    let r: Result<(String, ExitCode), Error> = (|| {
        Ok(match line {
            Line::Op(Op::Get { key }) => match client.get(&key)? {
                Some(v) => (codec.encode(&v, false), ExitCode::SUCCESS),
                None => ("(not found)".into(), ExitCode::from(1)),
            },
            Line::Op(Op::Put { key, value }) => {
                client.put(&key, &value)?;
                ("OK".into(), ExitCode::SUCCESS)
            }
            Line::Op(Op::Delete { key }) => {
                if client.delete(&key)? {
                    ("OK".into(), ExitCode::SUCCESS)
                } else {
                    ("(not found)".into(), ExitCode::from(1))
                }
            }
            Line::Op(Op::Scan { start, max }) => {
                let items = client.scan(&start, max)?;
                let text = if items.is_empty() {
                    "(empty)".to_string()
                } else {
                    items
                        .iter()
                        .map(|(k, v)| {
                            format!("{} {}", codec.encode(k, true), codec.encode(v, true))
                        })
                        .collect::<Vec<_>>()
                        .join("\n")
                };
                (text, ExitCode::SUCCESS)
            }
            Line::Stats => {
                let nodes: Vec<u64> = client.cluster().nodes().iter().map(|n| n.id).collect();
                let mut lines = Vec::new();
                for n in nodes {
                    match client.status_of(n) {
                        Ok(st) => lines.extend(st.iter().map(|s| {
                            format!(
                                "node={} shard={} role={} term={} leader={} commit={} applied={} last_index={} compacted={}",
                                s.node, s.shard, s.role.name(), s.term, s.leader, s.commit,
                                s.applied, s.last_index, s.compacted
                            )
                        })),
                        Err(e) => lines.push(format!("node={n} (error) {e}")),
                    }
                }
                (lines.join("\n"), ExitCode::SUCCESS)
            }
        })
    })();
    r.unwrap_or_else(|e| (format!("(error) {e}"), ExitCode::from(2)))
}

/// When pipe mode stops waiting for a server that is gone.
#[derive(Clone, Copy, Debug)]
struct GiveUp {
    /// Failed reconnect attempts in a row.
    after: u32,
    /// Time since the first connection error with no success since.
    secs: Duration,
    /// Never give up.
    never: bool,
}

/// Lines of stdin, read by a thread only as far as asked for (at most `ahead` lines beyond
/// what was taken), so that at any point kv-cli knows every line it has read.
struct Input {
    rx: mpsc::Receiver<Option<Vec<u8>>>,
    want: mpsc::SyncSender<()>,
    /// Lines asked for and not received yet.
    asked: usize,
    ahead: usize,
}

impl Input {
    fn new(ahead: usize) -> Self {
        let (tx, rx) = mpsc::sync_channel::<Option<Vec<u8>>>(ahead + 1);
        let (want, want_rx) = mpsc::sync_channel::<()>(ahead + 1);
        std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            for () in want_rx {
                let mut buf = Vec::new();
                let line = match lock.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => None,
                    Ok(_) => Some(buf),
                };
                let end = line.is_none();
                if tx.send(line).is_err() || end {
                    break;
                }
            }
        });
        Input {
            rx,
            want,
            asked: 0,
            ahead,
        }
    }

    fn ask(&mut self) {
        while self.asked < self.ahead && self.want.try_send(()).is_ok() {
            self.asked += 1;
        }
    }

    /// The next line (blocking when `block`); `Some(None)` at the end of input; `None` if no
    /// line is ready (non-blocking).
    fn next(&mut self, block: bool) -> Option<Option<Vec<u8>>> {
        self.ask();
        let got = if block {
            self.rx.recv().ok().or(Some(None))
        } else {
            match self.rx.try_recv() {
                Ok(l) => Some(l),
                Err(mpsc::TryRecvError::Empty) => None,
                Err(mpsc::TryRecvError::Disconnected) => Some(None),
            }
        };
        if got.is_some() {
            self.asked = self.asked.saturating_sub(1);
        }
        got
    }

    /// Stops reading; returns the lines already read and not taken (waiting briefly for one
    /// the reader may be in the middle of: a pipe delivers it at once, a terminal may not).
    fn stop(self) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut left = self.asked;
        while left > 0 {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Some(l)) => lines.push(l),
                Ok(None) | Err(_) => break,
            }
            left -= 1;
        }
        lines
    }
}

fn one_shot(client: &mut Client, codec: &Codec, line: Line) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    match line {
        Line::Op(Op::Get { key: k }) => match client.get(&k)? {
            Some(v) => writeln!(out, "{}", codec.encode(&v, false))?,
            None => {
                writeln!(out, "(not found)")?;
                return Ok(ExitCode::from(1));
            }
        },
        Line::Op(Op::Put { key: k, value: v }) => {
            client.put(&k, &v)?;
            writeln!(out, "OK")?;
        }
        Line::Op(Op::Delete { key: k }) => {
            if client.delete(&k)? {
                writeln!(out, "OK")?;
            } else {
                writeln!(out, "(not found)")?;
                return Ok(ExitCode::from(1));
            }
        }
        Line::Op(Op::Scan { start, max }) => {
            let items = client.scan(&start, max)?;
            if items.is_empty() {
                writeln!(out, "(empty)")?;
            }
            for (k, v) in items {
                writeln!(out, "{} {}", codec.encode(&k, true), codec.encode(&v, true))?;
            }
        }
        Line::Stats => {
            let stats = client.stats()?;
            writeln!(out, "{}", stats_total(&stats))?;
            for s in stats {
                writeln!(out, "{}", s.to_line())?;
            }
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// How a pipe-mode command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// An error about the request or the server's answer.
    Failed,
    /// The server is gone (or the way to it): `Error::is_connection_error`.
    Unreachable,
}

impl Outcome {
    fn of_error(e: &Error) -> Outcome {
        if e.is_connection_error() {
            Outcome::Unreachable
        } else {
            Outcome::Failed
        }
    }
}

/// Result line of a blocking scan / stats in pipe mode.
fn blocking_line(client: &mut Client, codec: &Codec, line: &Line) -> (String, Outcome) {
    match line {
        Line::Op(Op::Scan { start, max }) => {
            reply_line(codec, client.scan(start, *max).map(Reply::Items))
        }
        Line::Stats => match client.stats() {
            Ok(s) => (stats_total(&s), Outcome::Ok),
            Err(e) => (format!("(error) {e}"), Outcome::of_error(&e)),
        },
        _ => (
            "(error) internal: not a blocking command".into(),
            Outcome::Failed,
        ),
    }
}

fn reply_line(codec: &Codec, r: Result<Reply, Error>) -> (String, Outcome) {
    let line = match r {
        Ok(Reply::Value(v)) => codec.encode(&v, false),
        Ok(Reply::NotFound) => "(not found)".into(),
        Ok(Reply::Written | Reply::Deleted) => "OK".into(),
        Ok(Reply::Items(items)) if items.is_empty() => "(empty)".into(),
        Ok(Reply::Items(items)) => {
            let parts: Vec<String> = items
                .iter()
                .map(|(k, v)| format!("{} {}", codec.encode(k, true), codec.encode(v, true)))
                .collect();
            parts.join(" ")
        }
        Err(e) => return (format!("(error) {e}"), Outcome::of_error(&e)),
    };
    (line, Outcome::Ok)
}

/// Keeps `down_since` (when the server became unreachable, with no success since) and
/// `failed` (any command failed) up to date with one command's outcome.
fn note(outcome: Outcome, down_since: &mut Option<Instant>, failed: &mut bool) {
    match outcome {
        Outcome::Ok => *down_since = None,
        Outcome::Failed => *failed = true,
        Outcome::Unreachable => {
            *failed = true;
            down_since.get_or_insert_with(Instant::now);
        }
    }
}

/// Pipe mode: commands from stdin, results in order on stdout, up to `depth` in flight.
/// A command whose key has a request in flight waits for it (so commands on one key run
/// in order); scan and stats wait until everything before them is answered.
///
/// When the server goes away, requests fail (their lines say why) and the client backs off
/// between reconnect attempts; kv-cli then takes no new command while the client waits,
/// sleeping, so the first command after the server is back succeeds. Once the server has been
/// unreachable for `give_up` (attempts or time), it cancels what is in flight, prints a line
/// for every command it has read, says why on stderr and returns exit status 2.
fn pipe(
    client: &mut Client,
    codec: &Codec,
    depth: usize,
    give_up: GiveUp,
) -> anyhow::Result<ExitCode> {
    let mut input = Input::new(depth);
    let mut out = std::io::stdout().lock();
    // Result lines not printed yet, in command order: outputs[i] is command `base + i`.
    let mut outputs: VecDeque<Option<String>> = VecDeque::new();
    let mut base: u64 = 0;
    let mut busy_keys: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut tag_keys: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut held: Option<Line> = None;
    let mut eof = false;
    let mut failed = false;
    // Since when the server has been unreachable (first connection error, no success since).
    let mut down_since: Option<Instant> = None;
    let mut gave_up: Option<String> = None;
    loop {
        if let Some(since) = down_since.filter(|_| !give_up.never) {
            let attempts = client.reconnect_failures();
            if attempts >= give_up.after || since.elapsed() >= give_up.secs {
                gave_up = Some(format!(
                    "server {} unreachable for {:.1} s ({attempts} failed reconnect attempts)",
                    client.server_uri(),
                    since.elapsed().as_secs_f64()
                ));
                break;
            }
        }
        // While the client backs off, wait (asleep) instead of failing commands at once.
        let backing_off = client.reconnect_wait();
        if let Some(wait) = backing_off.filter(|_| client.in_flight() == 0) {
            let left = match down_since {
                Some(since) if !give_up.never => give_up.secs.saturating_sub(since.elapsed()),
                _ => wait,
            };
            std::thread::sleep(wait.min(left).min(Duration::from_millis(100)));
            continue;
        }
        // Take in commands while there is room.
        while backing_off.is_none() && client.in_flight() < depth {
            let line = match held.take() {
                Some(l) => l,
                None => {
                    if eof {
                        break;
                    }
                    let Some(got) = input.next(client.in_flight() == 0) else {
                        break;
                    };
                    let Some(raw) = got else {
                        eof = true;
                        break;
                    };
                    match parse_line(codec, &raw) {
                        Ok(Some(l)) => l,
                        Ok(None) => continue,
                        Err(e) => {
                            failed = true;
                            outputs.push_back(Some(format!("(error) {e:#}")));
                            continue;
                        }
                    }
                }
            };
            let seq = base + outputs.len() as u64;
            match line.key() {
                None => {
                    if client.in_flight() > 0 {
                        held = Some(line);
                        break;
                    }
                    let (s, outcome) = blocking_line(client, codec, &line);
                    note(outcome, &mut down_since, &mut failed);
                    outputs.push_back(Some(s));
                }
                Some(key) => {
                    if busy_keys.contains_key(key) {
                        held = Some(line);
                        break;
                    }
                    let key = key.to_vec();
                    let Line::Op(op) = line else {
                        continue;
                    };
                    match client.submit(op, seq) {
                        Ok(()) => {
                            *busy_keys.entry(key.clone()).or_default() += 1;
                            tag_keys.insert(seq, key);
                            outputs.push_back(None);
                        }
                        Err(e) => {
                            note(Outcome::of_error(&e), &mut down_since, &mut failed);
                            outputs.push_back(Some(format!("(error) {e}")));
                        }
                    }
                }
            }
        }
        // Collect answers: wait for one if nothing can be printed or taken in (while the
        // server is down, a bounded wait, so the give-up budget is checked in time).
        let waiting =
            client.in_flight() > 0 && (held.is_some() || client.in_flight() >= depth || eof);
        let next = if waiting && down_since.is_some() {
            client.wait_timeout(Duration::from_millis(100))
        } else if waiting {
            client.wait()
        } else {
            client.poll()
        };
        if let Some((tag, r)) = next {
            let (s, outcome) = reply_line(codec, r);
            note(outcome, &mut down_since, &mut failed);
            if let Some(key) = tag_keys.remove(&tag) {
                if let Some(n) = busy_keys.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        busy_keys.remove(&key);
                    }
                }
            }
            if let Some(slot) = tag
                .checked_sub(base)
                .and_then(|i| outputs.get_mut(i as usize))
            {
                *slot = Some(s);
            }
        }
        print_ready(&mut out, &mut outputs, &mut base)?;
        if eof && held.is_none() && client.in_flight() == 0 && outputs.is_empty() {
            break;
        }
    }
    if let Some(why) = gave_up {
        // Every command read gets its line: cancelled ones, then those never sent.
        client.cancel_all();
        while let Some((tag, r)) = client.wait() {
            let (s, _) = reply_line(codec, r);
            if let Some(slot) = tag
                .checked_sub(base)
                .and_then(|i| outputs.get_mut(i as usize))
            {
                *slot = Some(s);
            }
        }
        print_ready(&mut out, &mut outputs, &mut base)?;
        let not_sent = "(error) not sent: kv-cli gave up on the server";
        let mut skipped = usize::from(held.is_some());
        if held.is_some() {
            writeln!(out, "{not_sent}")?;
        }
        for raw in input.stop() {
            if matches!(parse_line(codec, &raw), Ok(Some(_)) | Err(_)) {
                writeln!(out, "{not_sent}")?;
                skipped += 1;
            }
        }
        out.flush()?;
        eprintln!(
            "kv-cli: giving up: {why}; {skipped} command(s) read but not sent; \
             the rest of the input was not read (--keep-retrying waits instead)"
        );
        return Ok(ExitCode::from(2));
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints the result lines that are ready, in command order.
fn print_ready(
    out: &mut impl Write,
    outputs: &mut VecDeque<Option<String>>,
    base: &mut u64,
) -> std::io::Result<()> {
    let mut printed = false;
    while let Some(Some(_)) = outputs.front() {
        if let Some(Some(s)) = outputs.pop_front() {
            writeln!(out, "{s}")?;
            *base += 1;
            printed = true;
        }
    }
    if printed {
        out.flush()?;
    }
    Ok(())
}
