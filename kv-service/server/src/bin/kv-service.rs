//! `kv-service`: the persistent key-value server. See `docs/KV-SERVICE.md`.
//!
//! ```text
//! kv-service [--listen 127.0.0.1:31850] [--data-dir ./kv-data] [--threads N] [--cache-mb 64]
//!            [--durability page|periodic|sync] [--flush-interval-ms 1000] [--reorg-batch 0]
//!            [--transport udp|tcp|ud|rc [--device NAME]] [--busy-poll | --spin-ms 100]
//!            [--no-gro] [--log-level info]
//!            [--resp 127.0.0.1:6380 [--requirepass PASS] [--resp-max-clients N] [--resp-timeout S]]
//! kv-service --cluster FILE --node ID --data-dir DIR [--raft-sync always|never] ...
//! ```
//!
//! `ud` and `rc` (InfiniBand/RoCE verbs) exist when built with the cargo feature `rdma`.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use kv_engine::Durability;
use kv_service::resp::RespConfig;
use kv_service::{DataTransport, IdleMode, Server, ServerConfig};

/// Persistent key-value server (KVell-derived engine over eRPC-style RPC).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address clients connect to (the session-management UDP socket); a concrete IP.
    /// Port 0 picks a free port (printed at start).
    #[arg(long, default_value = "127.0.0.1:31850")]
    listen: String,
    /// Data directory, created if missing.
    #[arg(long, default_value = "./kv-data")]
    data_dir: PathBuf,
    /// Server threads = engine partitions. Recorded in the data directory at creation:
    /// reopening it needs the same number. Default: what the data directory records, or for a
    /// new one half the cores (at least 1) — busy threads spin, and clients on the same
    /// machine need cores too.
    #[arg(long)]
    threads: Option<usize>,
    /// Engine page cache in MiB, split between threads.
    #[arg(long, default_value_t = 64)]
    cache_mb: usize,
    /// When a write is acknowledged (docs/STORAGE.md, Durability). `page`: after its page's
    /// O_DIRECT write (survives a process crash). `periodic`: once its record is in the
    /// staging area, flushed every --flush-interval-ms (survives a process crash; a power cut
    /// loses at most the last interval — Redis's appendfsync everysec). `sync`: once its record
    /// is on stable storage, group-committed (survives a power cut).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Periodic)]
    durability: DurabilityArg,
    /// With --durability periodic: longest time, in ms, between a write and the flush that
    /// makes it survive a power cut.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    flush_interval_ms: u64,
    /// Background reorganisation (docs/STORAGE.md): while a thread's engine has no client
    /// request outstanding, it moves up to this many items per round next to their key-order
    /// neighbours, so range scans read a few neighbouring blocks (one coalesced read) instead
    /// of one block per item. A request arriving meanwhile waits behind at most one round's
    /// I/O (about one read, a quarter block write and a tombstone per item: ~150 I/Os for
    /// 64). The first pass grows the slab files by up to the data's size. 0 (default): off;
    /// 64 is the suggested value for scan-heavy data.
    #[arg(long, default_value_t = 0, value_name = "N")]
    reorg_batch: usize,
    /// Same as --durability sync (kept for existing scripts).
    #[arg(long, conflicts_with = "durability")]
    sync: bool,
    /// Datapath transport (clients must use the same). Session management is UDP on
    /// --listen whatever the transport.
    #[arg(long, value_enum, default_value_t = Transport::Udp)]
    transport: Transport,
    /// RDMA device for --transport ud|rc (`ibv_devices` lists them); default: the first.
    #[cfg(feature = "rdma")]
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
    /// Spin always, never sleep when idle (lowest latency, one core per thread at 100 %).
    #[arg(long)]
    busy_poll: bool,
    /// Without --busy-poll: keep spinning this long after the last request, then sleep
    /// until the next packet.
    #[arg(long, default_value_t = 100)]
    spin_ms: u64,
    /// Receive without UDP GRO (on by default: cheaper bursts, ~0.5 µs more per lone
    /// request on this kernel).
    #[arg(long)]
    no_gro: bool,
    /// Also speak RESP (the Redis protocol) on this TCP address, for redis-cli,
    /// redis-benchmark and Redis client libraries (port 0 picks a free one). Off unless given.
    #[arg(long, value_name = "ADDR")]
    resp: Option<std::net::SocketAddr>,
    /// RESP: connections must AUTH with this password first (as Redis's requirepass; the
    /// process list shows it: prefer --requirepass-file).
    #[arg(long, requires = "resp", conflicts_with = "requirepass_file")]
    requirepass: Option<String>,
    /// RESP: read the password from this file (its first line).
    #[arg(long, requires = "resp", value_name = "PATH")]
    requirepass_file: Option<PathBuf>,
    /// RESP: most connections at once, over all threads.
    #[arg(long, requires = "resp", default_value_t = 10_000)]
    resp_max_clients: usize,
    /// RESP: close a connection idle for this many seconds (0: never).
    #[arg(long, requires = "resp", default_value_t = 300)]
    resp_timeout: u64,
    /// Cluster mode: the cluster file (docs/CLUSTER.md). This node runs its replicas of the
    /// cluster's shards; its listen address and thread count come from the file.
    #[arg(long, requires = "node")]
    cluster: Option<PathBuf>,
    /// Cluster mode: this node's id in the cluster file.
    #[arg(long, requires = "cluster")]
    node: Option<u64>,
    /// Cluster mode: `always` fdatasyncs the Raft log once per loop iteration before
    /// anything is acknowledged; `never` does not — UNSAFE: a power cut or kernel crash can
    /// lose acknowledged writes on every replica at once (for latency comparison only).
    #[arg(long, value_enum, default_value_t = RaftSync::Always)]
    raft_sync: RaftSync,
    /// Cluster mode: how the leader confirms linearizable reads (docs/CLUSTER.md, Reads).
    /// `index` (ReadIndex) costs one heartbeat round per batch of reads; `lease` answers
    /// from the leader while its lease holds, assuming the nodes' monotonic clocks run at
    /// rates within 10% of each other (a restarted node then withholds its vote for one
    /// election timeout).
    #[arg(long, value_enum, default_value_t = RaftReads::Index)]
    raft_reads: RaftReads,
    /// Cluster mode: base election timeout in ms (Raft ticks are 1 ms; heartbeats every
    /// tenth of it). A leader that hears from no quorum for this long steps down, and a
    /// follower that hears no leader for 1–1.67 times it (by rank) campaigns. Raise it on
    /// machines where a thread may be descheduled that long.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(20..=60_000))]
    raft_election_ms: u64,
    /// Cluster mode: a shard checkpoints its state machine (engine synced, applied index and
    /// client sessions recorded in the Raft log) and compacts its log every this many applied
    /// entries; restart replays at most about this many. Followers behind the compacted log
    /// get a snapshot.
    #[arg(long, default_value_t = kv_service::CompactionSettings::default().checkpoint_entries,
          value_parser = clap::value_parser!(u64).range(1..))]
    raft_checkpoint_entries: u64,
    /// Cluster mode: entries a leader keeps below its checkpoint for followers that are
    /// behind; one further behind gets a snapshot instead.
    #[arg(long, default_value_t = kv_service::CompactionSettings::default().reserve_entries)]
    raft_reserve_entries: u64,
    /// Log level (error, warn, info, debug, trace) when RUST_LOG is not set.
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RaftReads {
    /// ReadIndex: one heartbeat round with a quorum confirms the reads waiting (no clock
    /// assumption).
    Index,
    /// Leader leases: reads run at once while a quorum answered the leader within the
    /// last 0.9x election timeout. Assumes the nodes' clocks run at rates within 10% of
    /// each other.
    Lease,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum RaftSync {
    /// fdatasync the Raft log every loop iteration (durable).
    Always,
    /// Never fdatasync the Raft log (unsafe).
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DurabilityArg {
    /// Acknowledged after the page's in-place O_DIRECT write (KVell's).
    Page,
    /// Acknowledged once staged; flushed every --flush-interval-ms.
    Periodic,
    /// Acknowledged once on stable storage (group commit).
    Sync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Transport {
    /// Kernel UDP sockets (eRPC-style).
    Udp,
    /// Kernel TCP (reliable: no rpc retransmission).
    Tcp,
    /// InfiniBand/RoCE unreliable datagrams (verbs).
    #[cfg(feature = "rdma")]
    Ud,
    /// InfiniBand/RoCE reliable connections (verbs), one queue pair per session.
    #[cfg(feature = "rdma")]
    Rc,
}

impl Args {
    /// The server's datapath transport.
    fn data_transport(&self) -> anyhow::Result<DataTransport> {
        #[cfg(feature = "rdma")]
        if self.device.is_some() && !matches!(self.transport, Transport::Ud | Transport::Rc) {
            anyhow::bail!("--device is for --transport ud or rc");
        }
        Ok(match self.transport {
            Transport::Udp => DataTransport::Udp,
            Transport::Tcp => DataTransport::Tcp,
            #[cfg(feature = "rdma")]
            Transport::Ud => DataTransport::Ud {
                device: self.device.clone(),
            },
            #[cfg(feature = "rdma")]
            Transport::Rc => DataTransport::Rc {
                device: self.device.clone(),
            },
        })
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level))
        .context("bad --log-level")?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cluster = match (&args.cluster, args.node) {
        (Some(path), Some(node)) => {
            let c = kv_cluster::Cluster::load(path)
                .with_context(|| format!("reading the cluster file {}", path.display()))?;
            let mut o = kv_service::ClusterOptions::new(c, node);
            o.settings.election_ticks = args.raft_election_ms as usize;
            o.settings.heartbeat_ticks = (args.raft_election_ms as usize / 10).max(1);
            o.compaction.checkpoint_entries = args.raft_checkpoint_entries;
            o.reads = match args.raft_reads {
                RaftReads::Index => kv_service::ReadMode::Index,
                RaftReads::Lease => kv_service::ReadMode::Lease,
            };
            o.compaction.reserve_entries = args.raft_reserve_entries;
            if args.raft_sync == RaftSync::Never {
                tracing::warn!("--raft-sync never: the Raft log is not fsynced; a power cut can lose acknowledged writes");
                o.raft_sync = kv_raft::SyncPolicy::Never;
            }
            Some(o)
        }
        _ => None,
    };
    let transport = args.data_transport()?;
    let kind = transport.kind();
    if cluster.is_some() && args.transport != Transport::Udp {
        anyhow::bail!(
            "--cluster runs over --transport udp only (its Raft traffic and clients are tested there)"
        );
    }
    if cluster.is_some() && args.resp.is_some() {
        // RESP commands run on the local engine: in cluster mode they would bypass Raft.
        anyhow::bail!("--resp is not available with --cluster (RESP commands are not replicated)");
    }
    let threads = match (&cluster, args.threads) {
        (Some(c), _) => c.cluster.threads(),
        (None, Some(t)) => t,
        (None, None) => default_threads(&args.data_dir)?,
    };
    let cfg = ServerConfig {
        listen: args.listen.clone(),
        transport,
        data_dir: args.data_dir.clone(),
        threads,
        cache_bytes: args.cache_mb.saturating_mul(1 << 20),
        durability: match (args.sync, args.durability) {
            (true, _) | (_, DurabilityArg::Sync) => Durability::Sync,
            (_, DurabilityArg::Page) => Durability::Page,
            (_, DurabilityArg::Periodic) => Durability::Periodic {
                interval: Duration::from_millis(args.flush_interval_ms),
            },
        },
        idle: if args.busy_poll {
            IdleMode::BusyPoll
        } else {
            IdleMode::SpinThenSleep {
                spin: Duration::from_millis(args.spin_ms),
            }
        },
        udp_gro: !args.no_gro,
        reorg_batch: args.reorg_batch,
        resp: resp_config(&args)?,
        cluster,
        ..ServerConfig::default()
    };
    let cfg_durability = cfg.durability;
    let cfg_reorg = cfg.reorg_batch;
    let server = Server::start(cfg).with_context(|| {
        format!(
            "kv-service could not start (listen {}, data dir {})",
            if args.cluster.is_some() {
                "from the cluster file"
            } else {
                args.listen.as_str()
            },
            args.data_dir.display()
        )
    })?;
    // First SIGINT/SIGTERM: graceful shutdown. A second one: exit at once.
    let stop = server.stop_flag();
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(sig, 130, stop.clone())
            .context("installing the signal handler")?;
        signal_hook::flag::register(sig, stop.clone()).context("installing the signal handler")?;
    }
    let r = server.recovery();
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "kv-service listening on {} ({kind}), {} threads, data dir {}",
        server.listen_addr(),
        threads,
        args.data_dir.display()
    )?;
    writeln!(out, "durability: {}", cfg_durability)?;
    if cfg_reorg > 0 {
        writeln!(
            out,
            "reorganisation: up to {cfg_reorg} items per round while idle"
        )?;
    }
    writeln!(
        out,
        "recovery: {} items, {} tombstones, {} corrupt, {} duplicates, {} files, {:.1} MB read in {:.3} s",
        r.live,
        r.tombstones,
        r.corrupt,
        r.duplicates,
        r.files,
        r.bytes_read as f64 / 1e6,
        r.elapsed.as_secs_f64()
    )?;
    if let Some(a) = server.resp_addr() {
        writeln!(out, "RESP listening on {a} (redis-cli -p {})", a.port())?;
    }
    if server.data_addrs().len() == threads {
        for (i, a) in server.data_addrs().iter().enumerate() {
            writeln!(out, "thread {i} data socket {a}")?;
        }
    } else {
        for (i, e) in server.data_endpoints().iter().enumerate() {
            writeln!(out, "thread {i} data endpoint {e}")?;
        }
    }
    writeln!(out, "ready (Ctrl-C or SIGTERM to stop)")?;
    out.flush()?;
    drop(out);
    server.wait().context("kv-service failed")?;
    println!("kv-service stopped cleanly");
    Ok(())
}

/// The RESP settings, if `--resp` is given.
fn resp_config(args: &Args) -> anyhow::Result<Option<RespConfig>> {
    let Some(listen) = args.resp else {
        return Ok(None);
    };
    let password = match (&args.requirepass, &args.requirepass_file) {
        (Some(p), _) => Some(p.clone().into_bytes()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the password file {}", path.display()))?;
            let first = text.lines().next().unwrap_or_default();
            anyhow::ensure!(!first.is_empty(), "{} holds no password", path.display());
            Some(first.as_bytes().to_vec())
        }
        (None, None) => None,
    };
    Ok(Some(RespConfig {
        listen,
        password,
        max_clients: args.resp_max_clients,
        idle_timeout: Duration::from_secs(args.resp_timeout),
        ..RespConfig::default()
    }))
}

/// The thread count recorded in an existing data directory, else half the cores (≥ 1).
fn default_threads(dir: &std::path::Path) -> anyhow::Result<usize> {
    let recorded = kv_engine::recorded_workers(&kv_engine::Disk::new(dir))
        .with_context(|| format!("reading the manifest in {}", dir.display()))?;
    Ok(match recorded {
        Some(w) => w as usize,
        None => {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / 2).max(1)
        }
    })
}
