//! `kv-bench ycsb`: YCSB workloads A–F and KVell's production mix against kv-service (a
//! running server or an embedded one), optionally against Redis in the same run.
//!
//! Concurrency: `--threads` driver threads, each owning `--sessions` connections (a
//! kv-service `Client`, or a Redis TCP connection), each keeping `--window` requests in
//! flight (closed loop). "50 clients, pipeline 16" = `--threads 1 --sessions 50 --window 16`
//! for both systems.
pub mod driver;
pub mod gen;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use kv_client::{Client, ClientConfig};
use kv_service::{IdleMode, Server, ServerConfig};
use serde::Serialize;

use crate::baseline::redis::{RedisConn, RedisPersistence, RedisServer, Resp};
use crate::report::{say, write_json};
use driver::{Backend, Conns, Control, Factory, KvBackend, RedisBackend, Stats};
use gen::{Distribution, InsertCounter, OpGen, OpKind, Workload};

/// Arguments of `kv-bench ycsb`.
#[derive(clap::Args, Debug)]
pub struct YcsbArgs {
    /// Workload: a (50/50 read/update), b (95/5), c (reads), d (95/5 read/insert, latest),
    /// e (95/5 scan/insert), f (50/50 read/read-modify-write), production (KVell's).
    #[arg(long, value_enum, default_value = "c")]
    pub workload: Workload,
    /// Key distribution (default: latest for d, zipfian for the others).
    #[arg(long, value_enum)]
    pub distribution: Option<Distribution>,
    /// Items loaded before the run.
    #[arg(long, default_value_t = 100_000)]
    pub records: u64,
    /// Value size in bytes (keys: 8 bytes; production uses its own size mix).
    #[arg(long, default_value_t = 100)]
    pub value_size: usize,
    /// Run this many operations (per system and round).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Run this many seconds (per system and round; default 10 when --ops is not given).
    #[arg(long, conflicts_with = "ops")]
    pub duration: Option<f64>,
    /// Driver threads (client side).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Connections per thread (kv-service clients / Redis connections).
    #[arg(long, default_value_t = 1)]
    pub sessions: usize,
    /// Requests in flight per connection (pipeline depth).
    #[arg(long, default_value_t = 16)]
    pub window: usize,
    /// kv-service client: most pipelined requests per BATCH message (1 = one message per
    /// request; see ClientConfig::batch).
    #[arg(long, default_value_t = 32)]
    pub kv_batch: usize,
    /// kv-service client and embedded server: receive without UDP GRO.
    #[arg(long)]
    pub no_gro: bool,
    /// The system under test: `kv` (kv-service through its own client library over the
    /// rpc protocol: an embedded server, or `--server`), `resp=HOST:PORT` (any RESP
    /// server — kv-service's `--resp` port, Redis — through pipelined RESP connections,
    /// GET/SET only: RESP has no ordered range scan, so YCSB-E's scans are skipped), or
    /// `resp` (an embedded kv-service, through its RESP front-end).
    #[arg(long, default_value = "kv")]
    pub target: String,
    /// A running kv-service (its listen address). Default: an embedded server.
    #[arg(long, conflicts_with = "embedded")]
    pub server: Option<String>,
    /// Start an embedded server in a temporary directory under the current one (default).
    #[arg(long)]
    pub embedded: bool,
    /// Embedded server: threads (engine workers).
    #[arg(long, default_value_t = 1)]
    pub server_threads: usize,
    /// Embedded server: page cache in MiB.
    #[arg(long, default_value_t = 256)]
    pub cache_mb: usize,
    /// Embedded server: spin even when idle (default: spin 100 ms after the last request,
    /// then sleep, so the server leaves the CPU to Redis during the baseline's turn).
    #[arg(long)]
    pub server_busy_poll: bool,
    /// Embedded server: when a write is acknowledged (docs/STORAGE.md, Durability).
    #[arg(long, value_enum, default_value_t = DurabilityArg::Periodic)]
    pub durability: DurabilityArg,
    /// Embedded server with --durability periodic: the flush interval in ms.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub flush_interval_ms: u64,
    /// Embedded server: data directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Same-run baseline: `redis` (starts redis-server on a free loopback port, no
    /// persistence), `redis-aof` (the same with `--appendonly yes --appendfsync everysec`, its
    /// file in a temporary directory under the current one), `redis-sync` (`--appendfsync
    /// always`), or `redis=HOST:PORT` (a running one, persistence as it was started; the bench
    /// writes its keys into database 0).
    #[arg(long)]
    pub baseline: Option<String>,
    /// Rounds; each round runs every system once, alternating the order (default 1, or 2
    /// with a baseline).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Skip the load phase (the server already holds the records).
    #[arg(long)]
    pub skip_load: bool,
    /// Write every figure as JSON to this file (`-` = stdout).
    #[arg(long)]
    pub json: Option<String>,
    /// Draw the latency CDF of the run (all systems) to this SVG file.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// `--durability` of the embedded server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledged after the page's in-place O_DIRECT write.
    Page,
    /// Acknowledged once staged; flushed every --flush-interval-ms.
    Periodic,
    /// Acknowledged once on stable storage (group commit).
    Sync,
}

impl DurabilityArg {
    /// The engine's mode, with the periodic flush interval `interval_ms`.
    pub fn to_engine(self, interval_ms: u64) -> kv_engine::Durability {
        match self {
            DurabilityArg::Page => kv_engine::Durability::Page,
            DurabilityArg::Periodic => kv_engine::Durability::Periodic {
                interval: Duration::from_millis(interval_ms),
            },
            DurabilityArg::Sync => kv_engine::Durability::Sync,
        }
    }
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    /// From a histogram in nanoseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        Self {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: h.max() as f64 / 1000.0,
        }
    }
}

/// One system's results.
#[derive(Serialize, Default)]
pub struct SystemReport {
    pub system: String,
    pub version: String,
    pub load_ops_per_s: f64,
    pub ops: u64,
    pub duration_s: f64,
    pub ops_per_s: f64,
    pub round_ops_per_s: Vec<f64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub not_found: u64,
    pub skipped: u64,
    pub all: Percentiles,
    pub per_op: BTreeMap<String, Percentiles>,
}

impl SystemReport {
    fn fill(&mut self, s: &Stats) {
        self.ops = s.ops();
        self.duration_s = s.elapsed.as_secs_f64();
        self.ops_per_s = s.ops_per_s();
        self.errors = s.errors;
        self.first_error.clone_from(&s.first_error);
        self.not_found = s.not_found;
        self.skipped = s.skipped;
        self.all = Percentiles::of(&s.all);
        self.per_op = OpKind::ALL
            .iter()
            .filter(|k| !s.hists[k.index()].is_empty())
            .map(|k| (k.name().to_string(), Percentiles::of(&s.hists[k.index()])))
            .collect();
    }
}

/// What `--target` names.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// kv-service over its rpc protocol.
    Kv,
    /// A RESP server at this address (`None`: the embedded kv-service's RESP port).
    Resp(Option<String>),
}

impl Target {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "kv" => Ok(Target::Kv),
            "resp" => Ok(Target::Resp(None)),
            _ => match s.strip_prefix("resp=") {
                Some(addr) if !addr.is_empty() => Ok(Target::Resp(Some(addr.to_string()))),
                _ => bail!("--target takes kv, resp or resp=HOST:PORT, not {s:?}"),
            },
        }
    }
}

/// What the RESP server at `addr` says it is (from `INFO server`): kv-service's RESP
/// front-end reports `kv_service_version`, Redis `redis_version`.
fn resp_server_version(addr: &str) -> Result<String> {
    let mut c = RedisConn::connect(addr)?;
    let info = match c.call(&[b"INFO", b"server"])? {
        Resp::Bulk(Some(text)) => String::from_utf8_lossy(&text).into_owned(),
        other => bail!("unexpected answer to INFO from {addr}: {other:?}"),
    };
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    Ok(
        match (field("kv_service_version"), field("redis_version")) {
            (Some(v), _) => format!("kv-service {v} (resp)"),
            (None, Some(v)) => format!("Redis {v} (resp)"),
            _ => "unknown RESP server".into(),
        },
    )
}

#[derive(Serialize)]
struct Ratios {
    /// kv-service ops/s ÷ Redis ops/s.
    throughput: f64,
    /// kv-service p50 ÷ Redis p50, all operations.
    p50: f64,
    /// kv-service read p50 ÷ Redis read p50 (when both read).
    read_p50: Option<f64>,
    /// False when only one side skipped part of the mix (scans: Redis and RESP targets skip
    /// them): the ratios then compare different work.
    comparable: bool,
}

#[derive(Serialize)]
struct YcsbReport {
    note: String,
    workload: String,
    distribution: String,
    records: u64,
    value_size: usize,
    threads: usize,
    sessions: usize,
    window: usize,
    in_flight: usize,
    kv_batch: usize,
    target: String,
    server_threads: Option<usize>,
    rounds: usize,
    systems: Vec<SystemReport>,
    ratio_kv_over_redis: Option<Ratios>,
    /// The embedded server's durability mode (`None`: a running server, as it was started).
    kv_durability: Option<String>,
    /// The Redis baseline's persistence (`None`: no baseline, or a running Redis).
    baseline_persistence: Option<String>,
}

/// A system under test with its connections (per thread, per session).
pub struct System {
    pub name: String,
    pub version: String,
    pub pool: driver::Pool,
    pub gen: OpGen,
    pub stats: Option<Stats>,
    pub report: SystemReport,
}

/// A temporary data directory under the current directory (O_DIRECT needs a real file
/// system; /tmp may be tmpfs).
pub fn temp_data_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::current_dir()?)
        .context("creating a temporary data directory")
}

/// Starts an in-process kv-service on a free loopback port (and with `resp`, its RESP
/// front-end on another). At durability mode `durability`.
pub fn start_embedded(
    dir: &Path,
    threads: usize,
    cache_mb: usize,
    busy_poll: bool,
    udp_gro: bool,
    resp: bool,
    durability: kv_engine::Durability,
) -> Result<Server> {
    Server::start(ServerConfig {
        durability,
        resp: resp.then(|| kv_service::resp::RespConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            ..kv_service::resp::RespConfig::default()
        }),
        listen: "127.0.0.1:0".into(),
        data_dir: dir.to_path_buf(),
        threads,
        cache_bytes: cache_mb << 20,
        idle: if busy_poll {
            IdleMode::BusyPoll
        } else {
            IdleMode::default()
        },
        udp_gro,
        ..ServerConfig::default()
    })
    .context("starting the embedded kv-service")
}

/// `threads` × `sessions` kv-service client connections, made on the driver threads.
/// `batch`: [`ClientConfig::batch`]; `udp_gro`: [`ClientConfig::udp_gro`].
pub fn kv_conns(addr: &str, threads: usize, sessions: usize, batch: usize, udp_gro: bool) -> Conns {
    let addr = addr.to_string();
    let factory: Factory = std::sync::Arc::new(move || {
        let cfg = ClientConfig {
            batch,
            udp_gro,
            ..ClientConfig::default()
        };
        let c = Client::connect(&addr, cfg)
            .with_context(|| format!("connecting to kv-service at {addr}"))?;
        Ok(Box::new(KvBackend::new(c)) as Box<dyn Backend>)
    });
    Conns::Connect {
        factory,
        threads,
        sessions,
    }
}

/// `threads` × `sessions` Redis connections, made on the driver threads.
pub fn redis_conns(addr: &str, threads: usize, sessions: usize) -> Conns {
    let addr = addr.to_string();
    let factory: Factory =
        std::sync::Arc::new(
            move || Ok(Box::new(RedisBackend::connect(&addr)?) as Box<dyn Backend>),
        );
    Conns::Connect {
        factory,
        threads,
        sessions,
    }
}

fn bar(label: &str, len: u64, unit: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(len);
    let template =
        format!("{{prefix:>22}} [{{elapsed_precise}}] {{bar:30}} {{pos}}/{{len}} {unit} {{msg}}");
    if let Ok(style) = ProgressStyle::with_template(&template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_prefix(label.to_string());
    pb
}

/// What a phase does on each thread.
pub enum PhaseKind<'a> {
    /// Insert the items of the shuffled `order`.
    Load { order: &'a [u64] },
    /// The workload, until `--ops` or `--duration`.
    Run {
        ops: Option<u64>,
        duration: Option<Duration>,
    },
}

/// Runs one phase on `sys`: on each of its driver threads, with a progress bar.
pub fn run_phase(
    sys: &mut System,
    window: usize,
    kind: PhaseKind<'_>,
    workload: Workload,
    value_size: usize,
    seed: u64,
) -> Result<Stats> {
    let threads = sys.pool.threads();
    let (ctl, pb) = match &kind {
        PhaseKind::Load { order } => (
            Control::new(None, None),
            bar(&format!("load {}", sys.name), order.len() as u64, "items"),
        ),
        PhaseKind::Run { ops, duration } => {
            let pb = match (ops, duration) {
                (Some(n), _) => bar(&format!("run {}", sys.name), *n, "ops"),
                (None, Some(d)) => bar(&format!("run {}", sys.name), d.as_millis() as u64, "ms"),
                _ => bar("run", 0, ""),
            };
            (Control::new(*ops, *duration), pb)
        }
    };
    let ctl = Arc::new(ctl);
    let salt = seed | 1;
    let start = Instant::now();
    let (tx, rx) = mpsc::channel::<Result<Stats>>();
    for t in 0..threads {
        let ctl = ctl.clone();
        let tx = tx.clone();
        let mut g = sys.gen.reseed(seed.wrapping_add(t as u64 * 7919));
        let inserts = g.inserts();
        let mut load_iter = match &kind {
            PhaseKind::Load { order } => {
                let mine: Vec<u64> = order.iter().skip(t).step_by(threads).copied().collect();
                Some(driver::load_ops(mine, workload, value_size))
            }
            PhaseKind::Run { .. } => None,
        };
        sys.pool.send(
            t,
            Box::new(move |conns| {
                let mut next = || match load_iter.as_mut() {
                    Some(it) => it.next(),
                    None => ctl.may_issue().then(|| g.next_op()),
                };
                let acked = |id| inserts.ack(id);
                let _ = tx.send(driver::drive(conns, window, &mut next, &acked, &ctl, salt));
            }),
        )?;
    }
    drop(tx);
    let mut total = Stats::new();
    let mut got = 0;
    while got < threads {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(r) => {
                total.merge_parallel(&r?)?;
                got += 1;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("a driver thread died"),
        }
        let done = ctl.completed.load(Ordering::Relaxed);
        let secs = start.elapsed().as_secs_f64();
        match &kind {
            PhaseKind::Run { ops: None, .. } => pb.set_position(start.elapsed().as_millis() as u64),
            _ => pb.set_position(done),
        }
        pb.set_message(format!("{:.0} ops/s", done as f64 / secs.max(1e-9)));
    }
    pb.finish_and_clear();
    Ok(total)
}

/// Loads `sys` in shuffled order and fills its load figure.
pub fn load_system(
    sys: &mut System,
    records: u64,
    window: usize,
    workload: Workload,
    value_size: usize,
    json: Option<&str>,
) -> Result<()> {
    let order = gen::load_order(records, 0xDEAD_BEEF);
    let st = run_phase(
        sys,
        window,
        PhaseKind::Load { order: &order },
        workload,
        value_size,
        1,
    )?;
    if st.errors > 0 {
        bail!(
            "loading {}: {} of {} inserts failed (first: {})",
            sys.name,
            st.errors,
            records,
            st.first_error.as_deref().unwrap_or("?")
        );
    }
    sys.report.load_ops_per_s = st.ops_per_s();
    say!(
        json,
        "loaded {} items into {} at {:.0} items/s",
        records,
        sys.name,
        sys.report.load_ops_per_s
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
/// Runs the measured rounds, alternating the systems' order, and fills their reports.
pub fn run_rounds(
    systems: &mut [System],
    rounds: usize,
    window: usize,
    ops: Option<u64>,
    duration: Option<Duration>,
    workload: Workload,
    value_size: usize,
    json: Option<&str>,
) -> Result<()> {
    for r in 0..rounds {
        let mut order: Vec<usize> = (0..systems.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let sys = &mut systems[i];
            let st = run_phase(
                sys,
                window,
                PhaseKind::Run { ops, duration },
                workload,
                value_size,
                1000 + r as u64,
            )?;
            say!(
                json,
                "round {}/{} {:<12} {:>10.0} ops/s  p50 {:.1} us  p99 {:.1} us  errors {}",
                r + 1,
                rounds,
                sys.name,
                st.ops_per_s(),
                st.all.value_at_quantile(0.5) as f64 / 1000.0,
                st.all.value_at_quantile(0.99) as f64 / 1000.0,
                st.errors
            );
            sys.report.round_ops_per_s.push(st.ops_per_s());
            match sys.stats.as_mut() {
                Some(total) => total.merge_serial(&st)?,
                None => sys.stats = Some(st),
            }
        }
    }
    for sys in systems.iter_mut() {
        if let Some(st) = &sys.stats {
            sys.report.fill(st);
        }
    }
    Ok(())
}

fn print_system(r: &SystemReport, json: Option<&str>) {
    say!(
        json,
        "{}{}: {:.0} ops/s ({} ops in {:.2} s), errors {}, not found {}, skipped {}",
        r.system,
        if r.version.is_empty() {
            String::new()
        } else {
            format!(" ({})", r.version)
        },
        r.ops_per_s,
        r.ops,
        r.duration_s,
        r.errors,
        r.not_found,
        r.skipped
    );
    if let Some(e) = &r.first_error {
        say!(json, "  first error: {e}");
    }
    say!(
        json,
        "  {:<8} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "op",
        "count",
        "p50 us",
        "p90 us",
        "p99 us",
        "p99.9 us",
        "max us"
    );
    let rows = r
        .per_op
        .iter()
        .map(|(k, p)| (k.as_str(), p))
        .chain(std::iter::once(("all", &r.all)));
    for (name, p) in rows {
        say!(
            json,
            "  {:<8} {:>10} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            name,
            p.count,
            p.p50_us,
            p.p90_us,
            p.p99_us,
            p.p999_us,
            p.max_us
        );
    }
}

/// Runs `kv-bench ycsb`.
pub fn run(args: YcsbArgs) -> Result<()> {
    if args.records == 0 || args.threads == 0 || args.sessions == 0 || args.window == 0 {
        bail!("--records, --threads, --sessions and --window must be positive");
    }
    let json = args.json.as_deref();
    let distribution = args
        .distribution
        .unwrap_or(args.workload.default_distribution());
    let duration = match (args.ops, args.duration) {
        (Some(_), _) => None,
        (None, d) => Some(Duration::from_secs_f64(d.unwrap_or(10.0).max(0.01))),
    };
    // `Some(Err(p))`: start a Redis with persistence `p`; `Some(Ok(addr))`: a running one.
    let redis_addr: Option<std::result::Result<String, RedisPersistence>> =
        match args.baseline.as_deref() {
            None => None,
            Some("redis") => Some(Err(RedisPersistence::None)),
            Some("redis-aof") => Some(Err(RedisPersistence::AofEverysec)),
            Some("redis-sync") => Some(Err(RedisPersistence::AofAlways)),
            Some(b) => match b.strip_prefix("redis=") {
                Some(addr) if !addr.is_empty() => Some(Ok(addr.to_string())),
                _ => bail!(
                    "--baseline takes redis, redis-aof, redis-sync or redis=HOST:PORT, not {b:?}"
                ),
            },
        };
    let durability = args.durability.to_engine(args.flush_interval_ms);
    let rounds = args
        .rounds
        .unwrap_or(if redis_addr.is_some() { 2 } else { 1 })
        .max(1);

    let mut under_test = Target::parse(&args.target)?;
    if matches!(under_test, Target::Resp(Some(_))) && (args.server.is_some() || args.embedded) {
        bail!("--target resp=ADDR measures the RESP server at ADDR: --server and --embedded do not apply");
    }
    if matches!(under_test, Target::Resp(None)) && args.server.is_some() {
        bail!("--target resp starts an embedded server; for a running one give --target resp=HOST:PORT");
    }

    // The kv-service under test (--target kv, or resp embedded).
    let mut temp = None;
    let mut server = None;
    let (addr, target) = match (&under_test, &args.server) {
        (Target::Resp(Some(a)), _) => (a.clone(), format!("resp={a}")),
        (Target::Kv, Some(a)) => (a.clone(), a.clone()),
        (Target::Kv | Target::Resp(None), None) => {
            let dir = match &args.data_dir {
                Some(d) => d.clone(),
                None => {
                    let t = temp_data_dir("kv-bench-ycsb-")?;
                    let p = t.path().to_path_buf();
                    temp = Some(t);
                    p
                }
            };
            let s = start_embedded(
                &dir,
                args.server_threads,
                args.cache_mb,
                args.server_busy_poll,
                !args.no_gro,
                matches!(under_test, Target::Resp(None)),
                durability,
            )?;
            let a = match s.resp_addr() {
                Some(r) if matches!(under_test, Target::Resp(None)) => {
                    under_test = Target::Resp(Some(r.to_string()));
                    r.to_string()
                }
                _ => s.listen_addr().to_string(),
            };
            server = Some(s);
            (a, "embedded".to_string())
        }
        (_, Some(_)) => bail!("--target resp with --server"),
    };
    let kv_durability = server.as_ref().map(|_| durability.to_string());
    let mut redis_server = None;
    let mut redis_dir = None;
    let mut persistence = None;
    let redis = match redis_addr {
        None => None,
        Some(Ok(a)) => Some((a, String::new(), "redis".to_string())),
        Some(Err(p)) => {
            let dir = match p {
                RedisPersistence::None => None,
                _ => Some(temp_data_dir("kv-bench-redis-")?),
            };
            let s = RedisServer::start_with(p, dir.as_ref().map(|d| d.path()))?;
            let a = (
                s.addr.clone(),
                s.version.clone(),
                p.system_name().to_string(),
            );
            redis_server = Some(s);
            redis_dir = dir;
            persistence = Some(p);
            Some(a)
        }
    };

    let new_gen = |inserts| {
        OpGen::new(
            args.workload,
            distribution,
            args.records,
            args.value_size,
            inserts,
            42,
        )
    };
    let mut systems = Vec::new();
    let inserts = InsertCounter::new(args.records);
    let (name, version, conns) = match &under_test {
        Target::Kv => (
            "kv-service",
            match &kv_durability {
                Some(d) => format!(
                    "kv-service {} (udp, durability {d})",
                    env!("CARGO_PKG_VERSION")
                ),
                None => format!("kv-service {} (udp)", env!("CARGO_PKG_VERSION")),
            },
            kv_conns(
                &addr,
                args.threads,
                args.sessions,
                args.kv_batch,
                !args.no_gro,
            ),
        ),
        Target::Resp(a) => {
            let a = a.as_deref().unwrap_or(&addr);
            (
                "resp",
                resp_server_version(a)?,
                redis_conns(a, args.threads, args.sessions),
            )
        }
    };
    systems.push(System {
        name: name.into(),
        version,
        pool: driver::Pool::start(conns)?,
        gen: new_gen(inserts),
        stats: None,
        report: SystemReport::default(),
    });
    if let Some((raddr, version, rname)) = &redis {
        let conns = redis_conns(raddr, args.threads, args.sessions);
        let inserts = InsertCounter::new(args.records);
        systems.push(System {
            name: rname.clone(),
            version: version.clone(),
            pool: driver::Pool::start(conns)?,
            gen: new_gen(inserts),
            stats: None,
            report: SystemReport::default(),
        });
    }
    say!(
        json,
        "YCSB-{} {} | {} items x {} B | {} thread(s) x {} session(s) x window {} = {} in flight | {}: {}{}",
        args.workload.name().to_uppercase(),
        distribution.name(),
        args.records,
        args.value_size,
        args.threads,
        args.sessions,
        args.window,
        args.threads * args.sessions * args.window,
        match &under_test {
            Target::Kv => format!("kv-service (batch {})", args.kv_batch),
            Target::Resp(_) => systems[0].version.clone(),
        },
        target,
        if server.is_some() { format!(" ({} server thread(s))", args.server_threads) } else { String::new() }
    );
    if matches!(under_test, Target::Resp(_)) && args.workload.has_scans() {
        say!(
            json,
            "note: RESP has no ordered range scan: the target's scans are skipped (not counted)"
        );
    }
    say!(
        json,
        "kv-service durability: {}",
        kv_durability
            .as_deref()
            .unwrap_or("as the running server was started")
    );
    if let Some((a, v, rname)) = &redis {
        say!(
            json,
            "baseline: {rname}: Redis at {a} {v}, {}",
            persistence.map_or("persistence as the running server was started", |p| p
                .describe())
        );
        if args.workload.has_scans() {
            say!(json, "note: Redis has no ordered scan over plain keys: scans are skipped for Redis (not counted), so the ratios compare different work");
        }
    }
    if !args.skip_load {
        for sys in systems.iter_mut() {
            load_system(
                sys,
                args.records,
                args.window.max(32),
                args.workload,
                args.value_size,
                json,
            )?;
        }
    }
    run_rounds(
        &mut systems,
        rounds,
        args.window,
        args.ops,
        duration,
        args.workload,
        args.value_size,
        json,
    )?;

    for sys in &mut systems {
        sys.report.system.clone_from(&sys.name);
        sys.report.version.clone_from(&sys.version);
        print_system(&sys.report, json);
    }
    let ratio = match systems.as_slice() {
        [kv, rd] => {
            let read_p50 = match (kv.report.per_op.get("read"), rd.report.per_op.get("read")) {
                (Some(a), Some(b)) => Some(a.p50_us / b.p50_us.max(1e-9)),
                _ => None,
            };
            let r = Ratios {
                throughput: kv.report.ops_per_s / rd.report.ops_per_s.max(1e-9),
                p50: kv.report.all.p50_us / rd.report.all.p50_us.max(1e-9),
                read_p50,
                comparable: (rd.report.skipped > 0) == (kv.report.skipped > 0),
            };
            say!(
                json,
                "ratio {} ({}) / {} ({}): throughput {:.2}x, p50 {:.2}x{}{}",
                kv.name,
                kv_durability.as_deref().unwrap_or("running server"),
                rd.name,
                persistence.map_or("as started", |p| p.describe()),
                r.throughput,
                r.p50,
                r.read_p50
                    .map(|x| format!(", read p50 {x:.2}x"))
                    .unwrap_or_default(),
                if r.comparable {
                    ""
                } else {
                    " (not comparable: only one side skipped the scans)"
                }
            );
            Some(r)
        }
        _ => None,
    };
    if let Some(path) = &args.plot {
        let series: Vec<(String, &Histogram<u64>)> = systems
            .iter()
            .filter_map(|s| s.stats.as_ref().map(|st| (s.name.clone(), &st.all)))
            .collect();
        crate::plot::latency_cdf(
            path,
            &format!("YCSB-{} latency CDF", args.workload.name().to_uppercase()),
            &series,
        )?;
        say!(json, "plot written to {}", path.display());
    }
    let errors: u64 = systems.iter().map(|s| s.report.errors).sum();
    let report = YcsbReport {
        note: "same-run comparison; absolute numbers drift between runs".into(),
        workload: args.workload.name().into(),
        distribution: distribution.name().into(),
        records: args.records,
        value_size: args.value_size,
        threads: args.threads,
        sessions: args.sessions,
        window: args.window,
        in_flight: args.threads * args.sessions * args.window,
        kv_batch: args.kv_batch,
        target,
        server_threads: server.is_some().then_some(args.server_threads),
        rounds,
        systems: systems.into_iter().map(|s| s.report).collect(),
        ratio_kv_over_redis: ratio,
        kv_durability,
        baseline_persistence: persistence.map(|p| p.describe().to_string()),
    };
    write_json(json, &report)?;
    drop(redis_server);
    drop(redis_dir);
    if let Some(s) = server {
        s.shutdown().context("stopping the embedded server")?;
    }
    drop(temp);
    if errors > 0 {
        bail!("{errors} operations failed");
    }
    Ok(())
}
