//! `kv-bench cluster`: the replicated KV service (issue 15, `docs/CLUSTER.md`) against a
//! single node of the same build, in one run.
//!
//! It starts real `kv-service` processes on 127.0.0.1 — three nodes of a cluster file it
//! writes (ports picked at run time, temporary data directories), and a single node — all
//! sleeping when idle (`--spin-ms 0` by default), and measures:
//!
//! - **latency at one request in flight**: replicated PUT and linearizable GET through one
//!   [`ClusterClient`], once with the durable log (`--raft-sync always`, the default) and
//!   once with `--raft-sync never`; single-node PUT and GET through one [`Client`], once
//!   with the server's default durability (`periodic`) and once with `--durability sync`
//!   (acknowledged once on stable storage: what the durable replicated PUT compares with);
//!   then replicated PUT and GET once more with `--raft-sync never --raft-reads lease`
//!   (reads under the leader's lease instead of a ReadIndex round each);
//! - **throughput with many clients**: `--clients` threads, each with its own blocking
//!   client (one request in flight each: `ClusterClient` does not pipeline), writing for
//!   `--secs`;
//! - **leader failover**: `kill -9` of the leader of a shard, then the time until the
//!   first write on that shard is acknowledged, by a client that gives each attempt
//!   `--failover-attempt-ms`; the servers run their default election settings. The killed
//!   node is restarted and caught up before the next round.
//!
//! It ends with a table of the ratios. Every request must be answered: any error
//! ends the run with a non-zero exit.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use hdrhistogram::Histogram;
use kv_client::{Client, ClientConfig, ClusterClient, ClusterClientConfig, ClusterCounters};
use kv_cluster::{Cluster, NodeId, ShardId};
use kv_proto::Role;
use serde::Serialize;

use crate::report::{new_histogram, say, write_json, Latency};

/// How long a single-node request may wait: the cluster client's default deadline (15 s),
/// so that a disk stall of a shared machine does not end the run on one side only.
/// The floor measurements' names (`baseline::relay`).
const FLOOR_ECHO: &str = "floor: UDP echo, 1 sleeping thread, 1 in flight";
const FLOOR_RELAY: &str = "floor: UDP relay, leader + 2 sleeping followers, 1 in flight";

const SINGLE_NODE_TIMEOUT: Duration = Duration::from_secs(15);

/// Arguments of `kv-bench cluster`.
#[derive(clap::Args, Debug, Clone)]
pub struct ClusterArgs {
    /// The `kv-service` binary to start. Default: `kv-service` next to this `kv-bench`
    /// (cargo puts both in `target/<profile>/`), else on PATH.
    #[arg(long, value_name = "PATH")]
    pub server_bin: Option<PathBuf>,
    /// Timed requests per latency measurement (one in flight).
    #[arg(long, default_value_t = 5_000)]
    pub requests: usize,
    /// Untimed requests before each latency measurement.
    #[arg(long, default_value_t = 500)]
    pub warmup: usize,
    /// Throughput: client threads, one blocking client each (0: skip).
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Throughput: seconds of writing per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub secs: f64,
    /// Throughput: the clients spin while they wait for an answer (as the one-in-flight
    /// latency client does). Default: they sleep in the socket's wait, since more spinning
    /// clients than cores take the CPU from the servers.
    #[arg(long)]
    pub clients_spin: bool,
    /// The one-in-flight latency clients sleep in the socket's wait instead of spinning
    /// (a spinning client takes a whole core from the servers on a small machine).
    #[arg(long)]
    pub latency_sleep: bool,
    /// Keep the temporary directory (data directories, cluster file, server logs) and print
    /// where it is.
    #[arg(long)]
    pub keep: bool,
    /// Value size in bytes (keys are 16 bytes).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Distinct keys written.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Leader failovers measured (0: skip).
    #[arg(long, default_value_t = 3)]
    pub failovers: usize,
    /// Failover: how long the measuring client gives each attempt before it tries the next
    /// replica (the client's default, 800 ms, would be measured instead of the cluster).
    #[arg(long, default_value_t = 50)]
    pub failover_attempt_ms: u64,
    /// Shards of the cluster (a multiple of --threads).
    #[arg(long, default_value_t = 6)]
    pub shards: u32,
    /// Server threads of every node, and of the single node.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// `--spin-ms` of every server: how long a thread spins after its last request before
    /// it sleeps (0: sleep at once; never busy-poll).
    #[arg(long, default_value_t = 0)]
    pub spin_ms: u64,
    /// `--raft-election-ms` of the cluster nodes (default: the server's, 100 ms).
    #[arg(long)]
    pub raft_election_ms: Option<u64>,
    /// Also write the results as JSON to this file (`-` = stdout).
    #[arg(long)]
    pub json: Option<String>,
}

/// One latency or throughput measurement.
#[derive(Debug, Clone, Serialize)]
struct Measured {
    what: String,
    requests: u64,
    secs: f64,
    ops_per_sec: f64,
    latency: Latency,
    /// Cluster clients: attempts that did not end their request, by cause.
    retries: Option<Retries>,
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Retries {
    not_leader_hint: u64,
    no_leader: u64,
    timeouts: u64,
    failures: u64,
}

impl Retries {
    fn add(&mut self, c: ClusterCounters) {
        self.not_leader_hint += c.not_leader_hint;
        self.no_leader += c.no_leader;
        self.timeouts += c.timeouts;
        self.failures += c.failures;
    }

    fn diff(after: ClusterCounters, before: ClusterCounters) -> Self {
        Self {
            not_leader_hint: after.not_leader_hint - before.not_leader_hint,
            no_leader: after.no_leader - before.no_leader,
            timeouts: after.timeouts - before.timeouts,
            failures: after.failures - before.failures,
        }
    }

    fn total(&self) -> u64 {
        self.not_leader_hint + self.no_leader + self.timeouts + self.failures
    }
}

/// One failover round.
#[derive(Debug, Clone, Serialize)]
struct Failover {
    shard: ShardId,
    killed: NodeId,
    new_leader: NodeId,
    /// Kill to the first acknowledged write on the shard.
    ms: f64,
    /// Attempts of the measuring client that did not end its write.
    retries: Retries,
}

#[derive(Debug, Serialize)]
struct Report {
    server_bin: String,
    version: String,
    load_average: String,
    cores: usize,
    shards: u32,
    threads: usize,
    spin_ms: u64,
    value_size: usize,
    clients: usize,
    /// How the one-in-flight clients wait: `spin` or `sleep`.
    latency_clients: &'static str,
    /// How the throughput clients wait.
    throughput_clients: &'static str,
    results: Vec<Measured>,
    failovers: Vec<Failover>,
    failover_attempt_ms: u64,
    ratios: Vec<Ratio>,
}

#[derive(Debug, Serialize)]
struct Ratio {
    what: String,
    value: f64,
    target: Option<f64>,
}

/// A `kv-service` process; killed (SIGKILL) when dropped.
struct Proc {
    child: Child,
    listen: String,
}

impl Proc {
    /// Starts `bin` with `args` and waits for its `ready` line.
    fn start(bin: &Path, args: &[String], log: &Path) -> Result<Self> {
        // Appended to: a node restarted after a failover keeps its earlier log.
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let mut child = Command::new(bin)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let out = child.stdout.take().context("the server's stdout")?;
        let mut lines = BufReader::new(out).lines();
        let mut listen = None;
        loop {
            match lines.next() {
                Some(Ok(l)) => {
                    if let Some(rest) = l.strip_prefix("kv-service listening on ") {
                        listen = rest.split_whitespace().next().map(str::to_string);
                    }
                    if l.starts_with("ready") {
                        break;
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let tail = std::fs::read_to_string(log).unwrap_or_default();
                    bail!("{} {args:?} did not start: {tail}", bin.display());
                }
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(Self {
            child,
            listen: listen.context("the server printed no listen address")?,
        })
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The `kv-service` binary: `--server-bin`, else next to this executable, else on PATH.
fn server_bin(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        ensure!(p.is_file(), "--server-bin {}: no such file", p.display());
        return Ok(p.to_path_buf());
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        // Integration tests run from target/<profile>/deps.
        for d in [dir.clone(), dir.join("..")] {
            let p = d.join("kv-service");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path) {
        let p = d.join("kv-service");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "no kv-service binary next to kv-bench or on PATH: build it \
         (cargo build --release -p kv-service --bin kv-service) or give --server-bin"
    )
}

/// Ports free now on 127.0.0.1 (released just before the servers bind them).
fn free_ports(n: usize) -> Result<Vec<u16>> {
    let socks = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    socks.iter().map(|s| Ok(s.local_addr()?.port())).collect()
}

/// The `i`-th key of the bench: 16 bytes, spread over shards and threads by the hash.
fn key(i: u64) -> Vec<u8> {
    format!("cb{i:014}").into_bytes()
}

/// A reproducible spread of `0..keys` for thread `t`.
fn key_index(t: u64, i: u64, keys: u64) -> u64 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(t.wrapping_mul(7919))
        >> 7)
        % keys.max(1)
}

/// A 3-node cluster of `kv-service` processes.
struct ClusterProcs {
    bin: PathBuf,
    file: PathBuf,
    cluster: Cluster,
    dir: PathBuf,
    extra: Vec<String>,
    nodes: BTreeMap<NodeId, Option<Proc>>,
}

impl ClusterProcs {
    fn start(bin: &Path, dir: &Path, a: &ClusterArgs, sync: &str, reads: &str) -> Result<Self> {
        let ports = free_ports(3)?;
        let mut toml = format!(
            "# written by kv-bench cluster\nshards = {}\nreplication = 3\nthreads = {}\n",
            a.shards, a.threads
        );
        for (i, p) in ports.iter().enumerate() {
            toml.push_str(&format!(
                "\n[[node]]\nid = {}\naddr = \"127.0.0.1:{p}\"\n",
                i + 1
            ));
        }
        let cluster = Cluster::from_toml_str(&toml).context("the generated cluster file")?;
        let file = dir.join("cluster.toml");
        std::fs::write(&file, &toml)?;
        let mut extra = vec![
            "--spin-ms".into(),
            a.spin_ms.to_string(),
            "--raft-sync".into(),
            sync.into(),
            "--raft-reads".into(),
            reads.into(),
            "--log-level".into(),
            "warn".into(),
        ];
        if let Some(ms) = a.raft_election_ms {
            extra.extend(["--raft-election-ms".into(), ms.to_string()]);
        }
        let mut c = Self {
            bin: bin.to_path_buf(),
            file,
            cluster,
            dir: dir.to_path_buf(),
            extra,
            nodes: BTreeMap::new(),
        };
        for id in 1..=3 {
            c.start_node(id)?;
        }
        Ok(c)
    }

    fn start_node(&mut self, id: NodeId) -> Result<()> {
        let mut args = vec![
            "--cluster".to_string(),
            self.file.display().to_string(),
            "--node".into(),
            id.to_string(),
            "--data-dir".into(),
            self.dir.join(format!("node{id}")).display().to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        let log = self.dir.join(format!("node{id}.log"));
        let p = Proc::start(&self.bin, &args, &log)?;
        self.nodes.insert(id, Some(p));
        Ok(())
    }

    fn kill9(&mut self, id: NodeId) {
        if let Some(slot) = self.nodes.get_mut(&id) {
            if let Some(mut p) = slot.take() {
                p.kill9();
            }
        }
    }

    fn client(&self, cfg: ClusterClientConfig) -> Result<ClusterClient> {
        ClusterClient::new(self.cluster.clone(), cfg).context("a cluster client")
    }
}

/// Per shard, the node whose replica says it leads, once every shard has one and all
/// running nodes agree on it; waits up to `bound`.
fn wait_leaders(
    c: &mut ClusterClient,
    running: &[NodeId],
    bound: Duration,
) -> Result<BTreeMap<ShardId, NodeId>> {
    let end = Instant::now() + bound;
    let shards = c.cluster().shards();
    loop {
        let mut leaders = BTreeMap::new();
        let mut agree = true;
        for &n in running {
            match c.status_of(n) {
                Ok(st) => {
                    for s in &st {
                        if s.role == Role::Leader {
                            leaders.insert(s.shard, n);
                        }
                    }
                    for s in &st {
                        if s.role != Role::Leader
                            && leaders.get(&s.shard).is_some_and(|&l| s.leader != l)
                        {
                            agree = false;
                        }
                    }
                }
                Err(_) => agree = false,
            }
        }
        if agree && leaders.len() == shards as usize {
            return Ok(leaders);
        }
        ensure!(
            Instant::now() < end,
            "not every shard has a leader after {bound:?}: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until every replica on `node` applied what its shard's leader had committed.
fn wait_caught_up(c: &mut ClusterClient, node: NodeId, bound: Duration) -> Result<()> {
    let end = Instant::now() + bound;
    let ids: Vec<NodeId> = c.cluster().nodes().iter().map(|n| n.id).collect();
    let shards = c.cluster().shards_of(node).count();
    loop {
        let mut commit = BTreeMap::new();
        for &n in &ids {
            if let Ok(st) = c.status_of(n) {
                for s in st.iter().filter(|s| s.role == Role::Leader) {
                    commit.insert(s.shard, s.commit);
                }
            }
        }
        let mine = c.status_of(node).unwrap_or_default();
        if mine.len() == shards
            && mine
                .iter()
                .all(|s| commit.get(&s.shard).is_some_and(|&x| s.applied >= x))
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < end,
            "node {node} did not catch up within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a driver thread runs requests through.
trait Kv {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()>;
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>>;
    fn retries(&self) -> Option<ClusterCounters>;
}

impl Kv for ClusterClient {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        ClusterClient::put(self, key, value).context("replicated PUT")
    }
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        ClusterClient::get(self, key).context("replicated GET")
    }
    fn retries(&self) -> Option<ClusterCounters> {
        Some(self.counters())
    }
}

impl Kv for Client {
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        Client::put(self, key, value).context("single-node PUT")
    }
    fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Client::get(self, key).context("single-node GET")
    }
    fn retries(&self) -> Option<ClusterCounters> {
        None
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Which {
    Put,
    Get,
}

/// `a.requests` requests of kind `which` at one in flight, after `a.warmup` untimed ones;
/// GETs read the keys the PUTs of the same sequence wrote, and check their value.
fn latency(c: &mut dyn Kv, what: &str, which: Which, a: &ClusterArgs) -> Result<Measured> {
    let value = vec![b'v'; a.value_size];
    let run = |c: &mut dyn Kv, i: u64| -> Result<()> {
        let k = key(key_index(0, i, a.keys));
        match which {
            Which::Put => c.put(&k, &value),
            Which::Get => {
                let got = c.get(&k)?;
                ensure!(
                    got.as_deref() == Some(&value[..]),
                    "GET {} returned {:?} bytes, not the value written",
                    String::from_utf8_lossy(&k),
                    got.map(|v| v.len())
                );
                Ok(())
            }
        }
    };
    for i in 0..a.warmup as u64 {
        run(c, i)?;
    }
    let before = c.retries();
    let mut h = new_histogram();
    let start = Instant::now();
    for i in 0..a.requests as u64 {
        let t = Instant::now();
        run(c, a.warmup as u64 + i)?;
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    let secs = start.elapsed().as_secs_f64();
    let retries = match (before, c.retries()) {
        (Some(b), Some(after)) => Some(Retries::diff(after, b)),
        _ => None,
    };
    Ok(Measured {
        what: what.into(),
        requests: h.len(),
        secs,
        ops_per_sec: h.len() as f64 / secs.max(1e-9),
        latency: Latency::from_ns(&h),
        retries,
    })
}

/// `a.clients` threads writing for `a.secs`, each through its own client from `make`.
fn throughput<C, F>(what: &str, a: &ClusterArgs, make: F) -> Result<Option<Measured>>
where
    C: Kv + 'static,
    F: Fn() -> Result<C> + Send + Sync + 'static,
{
    if a.clients == 0 {
        return Ok(None);
    }
    let make = Arc::new(make);
    let go = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut handles = Vec::new();
    for t in 0..a.clients as u64 {
        let (make, go, stop) = (make.clone(), go.clone(), stop.clone());
        let (keys, size) = (a.keys, a.value_size);
        handles.push(std::thread::spawn(
            move || -> Result<(Histogram<u64>, Option<ClusterCounters>)> {
                let mut c = make()?;
                let value = vec![b'w'; size];
                // One untimed write: the sessions this client needs are open.
                c.put(&key(key_index(t, 0, keys)), &value)?;
                let before = c.retries();
                while !go.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let mut h = new_histogram();
                let mut i = 1;
                while !stop.load(Ordering::Acquire) {
                    let k = key(key_index(t + 1, i, keys));
                    let s = Instant::now();
                    c.put(&k, &value)?;
                    h.saturating_record(s.elapsed().as_nanos() as u64);
                    i += 1;
                }
                let retries = match (before, c.retries()) {
                    (Some(b), Some(after)) => Some(ClusterCounters {
                        not_leader_hint: after.not_leader_hint - b.not_leader_hint,
                        no_leader: after.no_leader - b.no_leader,
                        timeouts: after.timeouts - b.timeouts,
                        failures: after.failures - b.failures,
                    }),
                    _ => None,
                };
                Ok((h, retries))
            },
        ));
    }
    // Give the threads time to connect, then start them together.
    std::thread::sleep(Duration::from_millis(300));
    go.store(true, Ordering::Release);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(a.secs));
    stop.store(true, Ordering::Release);
    let mut all = new_histogram();
    let mut retries: Option<Retries> = None;
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok((h, r))) => {
                let _ = all.add(&h);
                if let Some(r) = r {
                    retries.get_or_insert_with(Retries::default).add(r);
                }
            }
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(anyhow::anyhow!("a client thread panicked"));
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = first_err {
        return Err(e.context(format!("{what}: a client failed")));
    }
    Ok(Some(Measured {
        what: what.into(),
        requests: all.len(),
        secs,
        ops_per_sec: all.len() as f64 / secs.max(1e-9),
        latency: Latency::from_ns(&all),
        retries,
    }))
}

/// A key of shard `shard` not written by the other measurements.
fn key_of_shard(cluster: &Cluster, shard: ShardId, from: &mut u64) -> Vec<u8> {
    loop {
        *from += 1;
        let k = format!("fo{:014}", *from).into_bytes();
        if cluster.shard_of(&k) == shard {
            return k;
        }
    }
}

/// `a.failovers` rounds: kill -9 the leader of a shard, time the first acknowledged write
/// on it, restart the node and let it catch up.
fn failovers(c: &mut ClusterProcs, a: &ClusterArgs, json: Option<&str>) -> Result<Vec<Failover>> {
    let mut out = Vec::new();
    let mut admin = c.client(ClusterClientConfig::default())?;
    let probe_cfg = ClusterClientConfig {
        attempt_timeout: Duration::from_millis(a.failover_attempt_ms),
        deadline: Duration::from_secs(30),
        ..ClusterClientConfig::default()
    };
    let mut probe = c.client(probe_cfg)?;
    let all: Vec<NodeId> = c.cluster.nodes().iter().map(|n| n.id).collect();
    let value = vec![b'f'; a.value_size];
    let mut next_key = 0;
    for round in 0..a.failovers {
        let leaders = wait_leaders(&mut admin, &all, Duration::from_secs(30))?;
        let shard = (round as u32) % c.cluster.shards();
        let victim = *leaders.get(&shard).context("a leader")?;
        // The probe's cached leader of the shard is the victim.
        for _ in 0..3 {
            let k = key_of_shard(&c.cluster, shard, &mut next_key);
            probe.put(&k, &value).context("write before the failover")?;
        }
        ensure!(
            probe.leader_hint(shard) == Some(victim),
            "the probe does not address shard {shard}'s leader {victim}"
        );
        let before = probe.counters();
        let k = key_of_shard(&c.cluster, shard, &mut next_key);
        let killed_at = Instant::now();
        c.kill9(victim);
        probe.put(&k, &value).with_context(|| {
            format!("the first write on shard {shard} after killing node {victim}")
        })?;
        let ms = killed_at.elapsed().as_secs_f64() * 1e3;
        let retries = Retries::diff(probe.counters(), before);
        let new_leader = probe.leader_hint(shard).unwrap_or(0);
        say!(
            json,
            "  failover {}: killed node {victim} (leader of shard {shard}); first write \
             acknowledged by node {new_leader} after {ms:.0} ms ({} retried attempts: {} \
             timed out, {} NOT_LEADER with a hint, {} without, {} failed)",
            round + 1,
            retries.total(),
            retries.timeouts,
            retries.not_leader_hint,
            retries.no_leader,
            retries.failures
        );
        out.push(Failover {
            shard,
            killed: victim,
            new_leader,
            ms,
            retries,
        });
        c.start_node(victim)?;
        wait_caught_up(&mut admin, victim, Duration::from_secs(60))?;
    }
    Ok(out)
}

fn print_measured(json: Option<&str>, m: &Measured) {
    let l = &m.latency;
    let retries = m.retries.map_or(String::new(), |r| {
        format!(
            "  retried attempts {} (timed out {}, NOT_LEADER hint {}, no leader {}, failed {})",
            r.total(),
            r.timeouts,
            r.not_leader_hint,
            r.no_leader,
            r.failures
        )
    });
    say!(
        json,
        "  {:<44} {:>7} req {:>9.0}/s  p50 {:>8.1} µs  p99 {:>9.1} µs  p99.9 {:>9.1} µs  max {:>9.1} µs{retries}",
        m.what,
        m.requests,
        m.ops_per_sec,
        l.p50_us,
        l.p99_us,
        l.p999_us,
        l.max_us
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Runs `kv-bench cluster`.
pub fn run(a: ClusterArgs) -> Result<()> {
    let json = a.json.as_deref();
    ensure!(a.requests > 0, "--requests must be at least 1");
    ensure!(a.keys > 0, "--keys must be at least 1");
    ensure!(a.secs > 0.0, "--secs must be positive");
    ensure!(
        a.threads > 0 && a.shards > 0 && (a.shards as usize).is_multiple_of(a.threads),
        "--shards must be a positive multiple of --threads"
    );
    let bin = server_bin(a.server_bin.as_deref())?;
    let version = Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let tmp = crate::ycsb::temp_data_dir("kv-bench-cluster-")?;
    let load_start = load_average();
    say!(
        json,
        "kv-bench cluster: {} ({version}); 3 nodes × {} threads, {} shards, replication 3, \
         and a single node of {} threads; servers --spin-ms {}; latency clients {}, \
         throughput clients {}; {}-byte values, {} keys; load average at start {load_start} \
         on {} cores",
        bin.display(),
        a.threads,
        a.shards,
        a.threads,
        a.spin_ms,
        if a.latency_sleep { "sleep" } else { "spin" },
        if a.clients_spin { "spin" } else { "sleep" },
        a.value_size,
        a.keys,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let mut results: Vec<Measured> = Vec::new();

    // The machine's floor: the same wake-ups over plain sockets (baseline::relay).
    say!(
        json,
        "floor: plain UDP sockets, server threads sleeping in recv between packets:"
    );
    let floor = crate::baseline::relay::sleeping_floor(a.requests, a.warmup, !a.latency_sleep)?;
    for (what, h) in [(FLOOR_ECHO, &floor.echo), (FLOOR_RELAY, &floor.relay)] {
        // One in flight: the rate is the inverse of the mean round trip.
        let latency = Latency::from_ns(h);
        let secs = h.len() as f64 * latency.mean_us / 1e6;
        let m = Measured {
            what: what.into(),
            requests: h.len(),
            secs,
            ops_per_sec: h.len() as f64 / secs.max(1e-9),
            latency,
            retries: None,
        };
        print_measured(json, &m);
        results.push(m);
    }

    // Single node: the server's default durability, then --durability sync.
    for (label, durability) in [("periodic", "periodic"), ("sync", "sync")] {
        let dir = tmp.path().join(format!("single-{label}"));
        let args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--threads",
            &a.threads.to_string(),
            "--spin-ms",
            &a.spin_ms.to_string(),
            "--durability",
            durability,
            "--log-level",
            "warn",
            "--data-dir",
            &dir.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let p = Proc::start(&bin, &args, &tmp.path().join(format!("single-{label}.log")))?;
        say!(
            json,
            "single node, --durability {durability} ({}):",
            p.listen
        );
        let cfg = ClientConfig {
            busy_poll: !a.latency_sleep,
            timeout: SINGLE_NODE_TIMEOUT,
            ..ClientConfig::default()
        };
        let mut c = Client::connect(&p.listen, cfg).context("connecting to the single node")?;
        let kinds: &[(Which, &str)] = if durability == "periodic" {
            &[(Which::Put, "PUT"), (Which::Get, "GET")]
        } else {
            &[(Which::Put, "PUT")]
        };
        for &(which, name) in kinds {
            let m = latency(
                &mut c,
                &format!("single-node {name}, {durability}, 1 in flight"),
                which,
                &a,
            )?;
            print_measured(json, &m);
            results.push(m);
        }
        drop(c);
        let what = format!("single-node PUT, {durability}, {} clients", a.clients);
        let (addr, spin) = (p.listen.clone(), a.clients_spin);
        let connect = move || {
            let cfg = ClientConfig {
                busy_poll: spin,
                timeout: SINGLE_NODE_TIMEOUT,
                ..ClientConfig::default()
            };
            Client::connect(&addr, cfg).context("connecting to the single node")
        };
        if let Some(m) = throughput(&what, &a, connect)? {
            print_measured(json, &m);
            results.push(m);
        }
    }

    let mut failover = Vec::new();
    // The lease cluster only times latency: its writes are the `never` cluster's.
    for (sync, reads) in [("never", "index"), ("always", "index"), ("never", "lease")] {
        let dir = tmp.path().join(format!("cluster-{sync}-{reads}"));
        std::fs::create_dir_all(&dir)?;
        let mut c = ClusterProcs::start(&bin, &dir, &a, sync, reads)?;
        // Measurement names: the ReadIndex clusters keep the names of earlier reports.
        let sync = if reads == "lease" {
            "never, lease reads"
        } else {
            sync
        };
        let mut client = c.client(ClusterClientConfig {
            busy_poll: !a.latency_sleep,
            ..ClusterClientConfig::default()
        })?;
        let all: Vec<NodeId> = c.cluster.nodes().iter().map(|n| n.id).collect();
        let leaders = wait_leaders(&mut client, &all, Duration::from_secs(30))?;
        say!(
            json,
            "cluster, --raft-sync {sync} (leaders by shard {leaders:?}, load average {}):",
            load_average()
        );
        for (which, name) in [(Which::Put, "PUT"), (Which::Get, "GET")] {
            let m = latency(
                &mut client,
                &format!("replicated {name}, raft-sync {sync}, 1 in flight"),
                which,
                &a,
            )?;
            print_measured(json, &m);
            results.push(m);
        }
        drop(client);
        if reads == "lease" {
            continue;
        }
        let (cluster, spin) = (c.cluster.clone(), a.clients_spin);
        let what = format!("replicated PUT, raft-sync {sync}, {} clients", a.clients);
        if let Some(m) = throughput(&what, &a, move || {
            let cfg = ClusterClientConfig {
                busy_poll: spin,
                ..ClusterClientConfig::default()
            };
            ClusterClient::new(cluster.clone(), cfg).context("a cluster client")
        })? {
            print_measured(json, &m);
            results.push(m);
        }
        if sync == "always" && a.failovers > 0 {
            say!(
                json,
                "failover (default election settings; the measuring client gives each attempt \
                 {} ms):",
                a.failover_attempt_ms
            );
            failover = failovers(&mut c, &a, json)?;
        }
    }

    let find = |what: &str| {
        results
            .iter()
            .find(|m| m.what.starts_with(what))
            .map(|m| m.latency.p50_us)
    };
    let mut ratios = Vec::new();
    let mut ratio = |what: &str, num: Option<f64>, den: Option<f64>, target: Option<f64>| {
        if let (Some(n), Some(d)) = (num, den) {
            ratios.push(Ratio {
                what: what.into(),
                value: n / d.max(1e-9),
                target,
            });
        }
    };
    ratio(
        "replicated PUT p50 (raft-sync never) / single-node GET p50",
        find("replicated PUT, raft-sync never, 1"),
        find("single-node GET, periodic"),
        Some(3.0),
    );
    ratio(
        "floor: UDP relay p50 / UDP echo p50 (what wake-ups alone make of the ratio above)",
        find(FLOOR_RELAY),
        find(FLOOR_ECHO),
        None,
    );
    ratio(
        "replicated PUT p50 (raft-sync never) / floor UDP relay p50",
        find("replicated PUT, raft-sync never, 1"),
        find(FLOOR_RELAY),
        None,
    );
    ratio(
        "replicated GET p50 (raft-sync never): ReadIndex / lease reads",
        find("replicated GET, raft-sync never, 1"),
        find("replicated GET, raft-sync never, lease reads, 1"),
        None,
    );
    ratio(
        "replicated GET p50 (lease reads) / single-node GET p50",
        find("replicated GET, raft-sync never, lease reads, 1"),
        find("single-node GET, periodic"),
        None,
    );
    ratio(
        "replicated PUT p50 (raft-sync always) / single-node PUT p50 (durability sync)",
        find("replicated PUT, raft-sync always, 1"),
        find("single-node PUT, sync, 1"),
        Some(1.5),
    );
    ratio(
        "replicated PUT p50 (raft-sync always) / single-node PUT p50 (periodic)",
        find("replicated PUT, raft-sync always, 1"),
        find("single-node PUT, periodic, 1"),
        None,
    );
    ratio(
        "replicated PUT p50 (raft-sync never) / single-node PUT p50 (periodic)",
        find("replicated PUT, raft-sync never, 1"),
        find("single-node PUT, periodic, 1"),
        None,
    );
    let load_end = load_average();
    say!(json, "");
    say!(json, "| measure | value | target |");
    say!(json, "|---|---|---|");
    for r in &ratios {
        say!(
            json,
            "| {} | {:.2}x | {} |",
            r.what,
            r.value,
            r.target.map_or("—".to_string(), |t| format!("≤ {t}x"))
        );
    }
    for (i, f) in failover.iter().enumerate() {
        say!(
            json,
            "| failover {} (kill -9 to first acknowledged write, shard {}) | {:.0} ms | ≤ 1000 ms |",
            i + 1,
            f.shard,
            f.ms
        );
    }
    say!(
        json,
        "load average: {load_start} at start, {load_end} at the end"
    );
    if a.keep {
        let kept = tmp.keep();
        say!(
            json,
            "kept {} (data directories, cluster files, server logs)",
            kept.display()
        );
    }
    write_json(
        json,
        &Report {
            server_bin: bin.display().to_string(),
            version,
            load_average: format!("{load_start} / {load_end}"),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            shards: a.shards,
            threads: a.threads,
            spin_ms: a.spin_ms,
            value_size: a.value_size,
            clients: a.clients,
            latency_clients: if a.latency_sleep { "sleep" } else { "spin" },
            throughput_clients: if a.clients_spin { "spin" } else { "sleep" },
            results,
            failovers: failover,
            failover_attempt_ms: a.failover_attempt_ms,
            ratios,
        },
    )?;
    Ok(())
}
