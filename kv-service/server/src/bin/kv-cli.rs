//! `kv-cli`: command-line client of `kv-service` (like redis-cli). See `docs/KV-SERVICE.md`.
//!
//! ```text
//! kv-cli [--server ADDR] [--hex] [--timeout SECS] get KEY | put KEY VALUE | del KEY
//!                                                 | scan START [COUNT] | stats
//! kv-cli [--server ADDR] < commands.txt     # pipe mode: one command per line
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
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};
use kv_client::{Client, ClientConfig, Error, Op, Reply};
use kv_proto::ThreadStats;

/// Command-line client of kv-service. Without a command, reads commands from stdin, one per
/// line, and prints one result line per command, in order (pipelined over the wire).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Server address (its --listen address).
    #[arg(long, default_value = "127.0.0.1:31850")]
    server: String,
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
    #[command(subcommand)]
    cmd: Option<Cmd>,
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
        busy_poll: true,
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
    let mut client = Client::connect(&args.server, cfg)
        .with_context(|| format!("cannot connect to kv-service at {}", args.server))?;
    match line {
        Some(l) => one_shot(&mut client, &codec, l),
        None => pipe(&mut client, &codec, args.depth.max(1)),
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

/// Result line of a blocking scan / stats in pipe mode.
fn blocking_line(client: &mut Client, codec: &Codec, line: &Line) -> (String, bool) {
    match line {
        Line::Op(Op::Scan { start, max }) => {
            reply_line(codec, client.scan(start, *max).map(Reply::Items))
        }
        Line::Stats => match client.stats() {
            Ok(s) => (stats_total(&s), true),
            Err(e) => (format!("(error) {e}"), false),
        },
        _ => ("(error) internal: not a blocking command".into(), false),
    }
}

fn reply_line(codec: &Codec, r: Result<Reply, Error>) -> (String, bool) {
    match r {
        Ok(Reply::Value(v)) => (codec.encode(&v, false), true),
        Ok(Reply::NotFound) => ("(not found)".into(), true),
        Ok(Reply::Written | Reply::Deleted) => ("OK".into(), true),
        Ok(Reply::Items(items)) if items.is_empty() => ("(empty)".into(), true),
        Ok(Reply::Items(items)) => {
            let parts: Vec<String> = items
                .iter()
                .map(|(k, v)| format!("{} {}", codec.encode(k, true), codec.encode(v, true)))
                .collect();
            (parts.join(" "), true)
        }
        Err(e) => (format!("(error) {e}"), false),
    }
}

/// Pipe mode: commands from stdin, results in order on stdout, up to `depth` in flight.
/// A command whose key has a request in flight waits for it (so commands on one key run
/// in order); scan and stats wait until everything before them is answered.
fn pipe(client: &mut Client, codec: &Codec, depth: usize) -> anyhow::Result<ExitCode> {
    let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(4096);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        loop {
            let mut buf = Vec::new();
            match lock.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if tx.send(buf).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let mut out = std::io::stdout().lock();
    // Result lines not printed yet, in command order: outputs[i] is command `base + i`.
    let mut outputs: VecDeque<Option<String>> = VecDeque::new();
    let mut base: u64 = 0;
    let mut busy_keys: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut tag_keys: HashMap<u64, Vec<u8>> = HashMap::new();
    let mut held: Option<Line> = None;
    let mut eof = false;
    let mut failed = false;
    loop {
        // Take in commands while there is room.
        while client.in_flight() < depth {
            let line = match held.take() {
                Some(l) => l,
                None => {
                    if eof {
                        break;
                    }
                    let got = if client.in_flight() == 0 {
                        rx.recv().ok()
                    } else {
                        match rx.try_recv() {
                            Ok(l) => Some(l),
                            Err(mpsc::TryRecvError::Empty) => break,
                            Err(mpsc::TryRecvError::Disconnected) => None,
                        }
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
                    let (s, ok) = blocking_line(client, codec, &line);
                    failed |= !ok;
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
                            failed = true;
                            outputs.push_back(Some(format!("(error) {e}")));
                        }
                    }
                }
            }
        }
        // Collect answers: wait for one if nothing can be printed or taken in.
        let next =
            if client.in_flight() > 0 && (held.is_some() || client.in_flight() >= depth || eof) {
                client.wait()
            } else {
                client.poll()
            };
        if let Some((tag, r)) = next {
            let (s, ok) = reply_line(codec, r);
            failed |= !ok;
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
        let mut printed = false;
        while let Some(Some(_)) = outputs.front() {
            if let Some(Some(s)) = outputs.pop_front() {
                writeln!(out, "{s}")?;
                base += 1;
                printed = true;
            }
        }
        if printed {
            out.flush()?;
        }
        if eof && held.is_none() && client.in_flight() == 0 && outputs.is_empty() {
            break;
        }
    }
    Ok(if failed {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
