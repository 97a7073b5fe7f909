//! `kv-bench engine`: the storage engine in-process (no network) under YCSB workloads, with
//! the device's own limit measured in the same run.
//!
//! One driver thread owns all W workers and polls them in turn (the shape of a server thread
//! that polls an RPC endpoint and a worker), keeping `--inflight` requests outstanding per
//! worker. Items are KVell's by default: 8-byte keys (big-endian item number) and 992-byte
//! values, loaded in shuffled order. Latency is measured from submit to completion.
//!
//! The device limit: once the engine is closed, random O_DIRECT block reads and writes through
//! io_uring on the engine's own slab files (blocks picked as a uniform pick of an item picks
//! them, each I/O a whole block), at the engine's total queue depth (W x --queue-depth) and
//! with its own measured read/write mix; writes put back what a read of the same block
//! returned (`kv_engine::backend::measure_slab_io`). Ratio = engine I/Os per second / device
//! I/Os per second: at most 100% when the engine issues the same I/O, below by what it
//! wastes.
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use kv_engine::{
    backend, choose_scan_keys, merge_scan, open_workers, Completion, EngineConfig, KeyRouter, Op,
    Reply, Worker, WorkerStats,
};
use serde::Serialize;

use crate::baseline::rocksdb as baseline;
use crate::report::{new_histogram, say, write_json, Latency};

/// The db_bench run matching the engine's: same items, sizes, cache and concurrency.
fn db_bench_params(args: &EngineArgs, dir: &std::path::Path) -> baseline::DbBenchParams {
    baseline::DbBenchParams {
        workload: workload_letter(args.workload),
        records: args.records,
        key_size: 8,
        value_size: args.value_size,
        cache_bytes: (args.cache_mb as u64) << 20,
        threads: args
            .db_bench_threads
            .unwrap_or(args.workers * args.inflight),
        // The mean of the engine's scan lengths (uniform 1-99).
        seek_nexts: 50,
        duration: args.duration,
        db: dir.join("rocksdb"),
    }
}

/// The workload's letter, as db_bench's mapping takes it.
fn workload_letter(w: Workload) -> char {
    match w {
        Workload::A => 'a',
        Workload::B => 'b',
        Workload::C => 'c',
        Workload::E => 'e',
        Workload::F => 'f',
    }
}

/// YCSB workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// 100% reads.
    C,
    /// 95% scans (length uniform 1-99), 5% inserts.
    E,
    /// 50% reads, 50% read-modify-writes.
    F,
}

/// Key popularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Distribution {
    /// Every item equally likely.
    Uniform,
    /// Scrambled zipfian, θ = 0.99 (YCSB's). Spelled as in `kv-bench ycsb`; `zipf` is an alias.
    #[value(alias = "zipf")]
    Zipfian,
}

/// Arguments of `kv-bench engine`.
#[derive(clap::Args, Debug)]
pub struct EngineArgs {
    /// YCSB workload.
    #[arg(long, value_enum, default_value = "a")]
    workload: Workload,
    /// Items loaded before the run.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Value size in bytes (key: 8 bytes).
    #[arg(long, default_value_t = 992)]
    value_size: usize,
    /// Total page cache in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: usize,
    /// Measured run time in seconds (after a warm-up).
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// Warm-up seconds before measuring.
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// Key distribution.
    #[arg(long, value_enum, default_value = "uniform")]
    distribution: Distribution,
    /// Engine workers W.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Outstanding requests per worker.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// I/O queue depth per worker.
    #[arg(long, default_value_t = 64)]
    queue_depth: u32,
    /// Seconds for the device-limit measurement.
    #[arg(long, default_value_t = 10)]
    device_secs: u64,
    /// Data directory (default: a temporary directory, removed afterwards). If it already
    /// holds exactly `--records` items, the load is skipped.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Write the results as JSON to this file (`-` = stdout).
    #[arg(long)]
    json: Option<String>,
    /// Same-run baseline: `rocksdb` runs RocksDB's `db_bench` (Debian `rocksdb-tools`) on as
    /// many items of the same sizes, with the same cache size and direct reads, after the
    /// engine's run (A, B: `readrandomwriterandom`, C: `readrandom`, E: `seekrandom`).
    #[arg(long)]
    baseline: Option<String>,
    /// db_bench threads (default: the engine's outstanding requests, workers x inflight).
    #[arg(long)]
    db_bench_threads: Option<usize>,
    /// After the measured run, let the engine's background reorganisation
    /// (`EngineConfig::reorg_batch`, this many items per round; docs/STORAGE.md) finish a
    /// pass over the idle engine, then warm up and measure again: the report shows both runs.
    /// 0: no second run.
    #[arg(long, default_value_t = 0)]
    reorganise: usize,
}

#[derive(Serialize, Default)]
struct EngineReport {
    date_note: String,
    workload: String,
    distribution: String,
    records: u64,
    value_size: usize,
    cache_mb: usize,
    data_mb: f64,
    workers: usize,
    inflight_per_worker: usize,
    queue_depth: u32,
    load_ops_per_s: f64,
    recovery_secs: f64,
    recovery_mb_per_s: f64,
    duration_s: f64,
    ops: u64,
    ops_per_s: f64,
    latency: Latency,
    reads_per_op: f64,
    writes_per_op: f64,
    ios_per_op: f64,
    engine_iops: f64,
    engine_read_fraction: f64,
    submits_per_op: f64,
    index_bytes_per_item_estimate: f64,
    index_bytes_per_item_rss: f64,
    device_iops: f64,
    device_read_iops: f64,
    device_write_iops: f64,
    /// The probe's read fraction (the engine's, unless it wrote more than half).
    device_read_fraction: f64,
    device_queue_depth: u32,
    ratio_to_device: f64,
    scans: u64,
    items_per_scan: f64,
    uncached_items_per_scan: f64,
    reads_per_scan: f64,
    /// Blocks loaded per scan (a coalesced read of neighbouring blocks is one read).
    blocks_per_scan: f64,
    baseline: Option<BaselineReport>,
    durability: String,
    /// The run after the reorganisation (`--reorganise`).
    reorganised: Option<ReorgReport>,
}

#[derive(Serialize, Default)]
struct ReorgReport {
    batch: usize,
    reorg_secs: f64,
    items_moved: u64,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    reads_per_op: f64,
    writes_per_op: f64,
    items_per_scan: f64,
    uncached_items_per_scan: f64,
    reads_per_scan: f64,
    blocks_per_scan: f64,
}

#[derive(Serialize, Default)]
struct BaselineReport {
    name: String,
    command: String,
    ops_per_s: f64,
    engine_ratio: f64,
}

/// Runs the benchmark.
pub fn run(args: EngineArgs) -> Result<()> {
    if args.records == 0 || args.workers == 0 || args.inflight == 0 {
        bail!("--records, --workers and --inflight must be positive");
    }
    match args.baseline.as_deref() {
        None | Some("rocksdb") => {}
        Some(b) => bail!("--baseline takes rocksdb, not {b:?}"),
    }
    if args.baseline.is_some() {
        // Fail before the long run, not after it.
        baseline::benchmark_for(workload_letter(args.workload), 50)?;
    }
    let temp;
    let dir: PathBuf = match &args.data_dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("kv-bench-engine-")
                .tempdir_in(std::env::current_dir()?)
                .context("creating a temporary data directory")?;
            temp.path().to_path_buf()
        }
    };
    let config = EngineConfig {
        workers: args.workers,
        cache_bytes: args.cache_mb << 20,
        queue_depth: args.queue_depth,
        ..EngineConfig::default()
    };
    let mut report = EngineReport {
        date_note: "same-run device limit; compare ratios only".into(),
        workload: format!("{:?}", args.workload).to_lowercase(),
        distribution: format!("{:?}", args.distribution).to_lowercase(),
        records: args.records,
        value_size: args.value_size,
        cache_mb: args.cache_mb,
        workers: args.workers,
        inflight_per_worker: args.inflight,
        queue_depth: args.queue_depth,
        durability: config.durability.to_string(),
        ..EngineReport::default()
    };

    // Measured first, while freed memory cannot hide the growth.
    let index_rss = index_rss_per_item(args.records);
    let opened = open_workers(&dir, &config).context("opening the engine")?;
    let router = opened.router;
    let mut workers = opened.workers;
    if opened.recovery.live != args.records {
        if opened.recovery.live != 0 {
            bail!(
                "{} holds {} items, not {}: use an empty directory",
                dir.display(),
                opened.recovery.live,
                args.records
            );
        }
        eprintln!("loading {} items in shuffled order ...", args.records);
        let start = Instant::now();
        load(&mut workers, &router, &args)?;
        report.load_ops_per_s = args.records as f64 / start.elapsed().as_secs_f64();
        eprintln!("loaded at {:.0} items/s", report.load_ops_per_s);
        // Close and reopen: measures recovery.
        drop(workers);
        let opened = open_workers(&dir, &config).context("reopening the engine")?;
        workers = opened.workers;
        let rec = opened.recovery;
        report.recovery_secs = rec.elapsed.as_secs_f64();
        report.recovery_mb_per_s = rec.bytes_read as f64 / 1e6 / report.recovery_secs.max(1e-9);
        eprintln!(
            "recovered {} items ({:.0} MB) in {:.2} s = {:.0} MB/s",
            rec.live,
            rec.bytes_read as f64 / 1e6,
            report.recovery_secs,
            report.recovery_mb_per_s
        );
    } else {
        eprintln!("reusing the {} items in {}", args.records, dir.display());
    }
    let data_bytes: u64 = workers.iter().map(|w| w.stats().file_bytes).sum();
    report.data_mb = data_bytes as f64 / 1e6;

    // Scans need every worker, so workload E uses one driver thread for all workers; the
    // others use one thread per worker, each generating only its own keys (a server thread
    // owning one worker).
    let per_worker_threads = args.workload != Workload::E;
    let mut gens: Vec<Generator> = (0..workers.len())
        .map(|i| Generator::new(&args, i as u64 + 1))
        .collect();
    eprintln!(
        "warm-up {} s, then measuring for {} s ({}) ...",
        args.warmup,
        args.duration,
        if per_worker_threads {
            "one thread per worker"
        } else {
            "one thread for all workers"
        }
    );
    phase(
        &mut workers,
        &router,
        &args,
        &mut gens,
        Duration::from_secs(args.warmup),
        None,
        per_worker_threads,
    )?;
    let before: Vec<WorkerStats> = workers.iter().map(Worker::stats).collect();
    let mut hist = new_histogram();
    let (ops, scans, elapsed) = phase(
        &mut workers,
        &router,
        &args,
        &mut gens,
        Duration::from_secs(args.duration),
        Some(&mut hist),
        per_worker_threads,
    )?;
    let after: Vec<WorkerStats> = workers.iter().map(Worker::stats).collect();
    let sum = |f: fn(&WorkerStats) -> u64| -> u64 {
        after.iter().map(f).sum::<u64>() - before.iter().map(f).sum::<u64>()
    };
    let (reads, writes) = (sum(|s| s.reads), sum(|s| s.writes));
    let secs = elapsed.as_secs_f64();
    report.duration_s = secs;
    report.ops = ops;
    report.ops_per_s = ops as f64 / secs;
    report.latency = Latency::from_ns(&hist);
    report.reads_per_op = reads as f64 / ops.max(1) as f64;
    report.writes_per_op = writes as f64 / ops.max(1) as f64;
    report.ios_per_op = report.reads_per_op + report.writes_per_op;
    report.engine_iops = (reads + writes) as f64 / secs;
    report.engine_read_fraction = reads as f64 / (reads + writes).max(1) as f64;
    report.submits_per_op = sum(|s| s.submits) as f64 / ops.max(1) as f64;
    if scans > 0 {
        let per_scan = |n: u64| n as f64 / scans as f64;
        report.scans = scans;
        report.items_per_scan = per_scan(sum(|s| s.scan_items));
        report.uncached_items_per_scan = per_scan(sum(|s| s.scan_items_uncached));
        // All reads of the run, inserts' included: an upper bound on the scans' own reads.
        report.reads_per_scan = per_scan(reads);
        report.blocks_per_scan = per_scan(sum(|s| s.blocks_read));
    }
    let items: u64 = after.iter().map(|s| s.items).sum();
    let index_bytes: u64 = after.iter().map(|s| s.index_bytes).sum();
    if args.reorganise > 0 {
        report.reorganised = Some(reorganise_and_rerun(
            &mut workers,
            &router,
            &args,
            &mut gens,
            per_worker_threads,
        )?);
    }
    report.index_bytes_per_item_estimate = index_bytes as f64 / items.max(1) as f64;
    drop(workers);
    report.index_bytes_per_item_rss = index_rss;

    let probe_depth = (args.workers as u32)
        .saturating_mul(args.queue_depth)
        .max(1);
    eprintln!(
        "device limit: random block O_DIRECT io_uring QD{probe_depth} on the slab files, {:.0}% reads, {} s ...",
        report.engine_read_fraction * 100.0,
        args.device_secs
    );
    let (probe, probe_reads) = backend::measure_slab_io(
        &dir,
        report.engine_read_fraction,
        probe_depth,
        Duration::from_secs(args.device_secs),
    )
    .context("measuring the device")?;
    report.device_read_fraction = probe_reads;
    report.device_queue_depth = probe_depth;
    let psecs = probe.elapsed.as_secs_f64();
    report.device_iops = probe.iops();
    report.device_read_iops = probe.reads as f64 / psecs;
    report.device_write_iops = probe.writes as f64 / psecs;
    report.ratio_to_device = report.engine_iops / report.device_iops.max(1e-9);

    if args.baseline.is_some() {
        let p = db_bench_params(&args, &dir);
        let r = baseline::load_and_run(&p)?;
        report.baseline = Some(BaselineReport {
            name: format!("rocksdb db_bench {}", r.benchmark),
            command: r.command,
            ops_per_s: r.ops_per_s,
            engine_ratio: report.ops_per_s / r.ops_per_s.max(1e-9),
        });
    }

    print_report(&report, args.json.as_deref());
    write_json(args.json.as_deref(), &report)
}

/// `--reorganise`: runs the reorganisation to the end of a pass on the idle workers (one
/// thread each), then the warm-up and the measured run again.
fn reorganise_and_rerun(
    workers: &mut [Worker],
    router: &KeyRouter,
    args: &EngineArgs,
    gens: &mut [Generator],
    per_worker_threads: bool,
) -> Result<ReorgReport> {
    eprintln!(
        "reorganising ({} items per round) until a pass is done ...",
        args.reorganise
    );
    let start = Instant::now();
    let moved0: u64 = workers.iter().map(|w| w.stats().reorg_moves).sum();
    std::thread::scope(|s| {
        for w in workers.iter_mut() {
            s.spawn(move || -> Result<()> {
                w.set_reorg_batch(args.reorganise);
                let passes = w.stats().reorg_passes;
                let mut done = Vec::new();
                while w.reorg_busy() || w.stats().reorg_passes == passes {
                    w.poll(&mut done);
                    w.wait()?;
                }
                Ok(())
            });
        }
    });
    let reorg_secs = start.elapsed().as_secs_f64();
    let items_moved = workers.iter().map(|w| w.stats().reorg_moves).sum::<u64>() - moved0;
    eprintln!("moved {items_moved} items in {reorg_secs:.1} s; warm-up and measuring again ...");
    phase(
        workers,
        router,
        args,
        gens,
        Duration::from_secs(args.warmup),
        None,
        per_worker_threads,
    )?;
    let before: Vec<WorkerStats> = workers.iter().map(Worker::stats).collect();
    let mut hist = new_histogram();
    let (ops, scans, elapsed) = phase(
        workers,
        router,
        args,
        gens,
        Duration::from_secs(args.duration),
        Some(&mut hist),
        per_worker_threads,
    )?;
    let after: Vec<WorkerStats> = workers.iter().map(Worker::stats).collect();
    let sum = |f: fn(&WorkerStats) -> u64| -> u64 {
        after.iter().map(f).sum::<u64>() - before.iter().map(f).sum::<u64>()
    };
    let lat = Latency::from_ns(&hist);
    let per_scan = |n: u64| n as f64 / scans.max(1) as f64;
    Ok(ReorgReport {
        batch: args.reorganise,
        reorg_secs,
        items_moved,
        ops_per_s: ops as f64 / elapsed.as_secs_f64(),
        p50_us: lat.p50_us,
        p99_us: lat.p99_us,
        reads_per_op: sum(|s| s.reads) as f64 / ops.max(1) as f64,
        writes_per_op: sum(|s| s.writes) as f64 / ops.max(1) as f64,
        items_per_scan: per_scan(sum(|s| s.scan_items)),
        uncached_items_per_scan: per_scan(sum(|s| s.scan_items_uncached)),
        reads_per_scan: per_scan(sum(|s| s.reads)),
        blocks_per_scan: per_scan(sum(|s| s.blocks_read)),
    })
}

fn print_report(r: &EngineReport, json: Option<&str>) {
    say!(json,
        "engine YCSB-{} {} | {} items x {} B ({:.0} MB on disk), cache {} MiB, W={}, {} in flight/worker, durability {}",
        r.workload.to_uppercase(),
        r.distribution,
        r.records,
        r.value_size,
        r.data_mb,
        r.cache_mb,
        r.workers,
        r.inflight_per_worker,
        r.durability
    );
    say!(
        json,
        "  throughput      {:>10.0} ops/s over {:.1} s ({} ops)",
        r.ops_per_s,
        r.duration_s,
        r.ops
    );
    say!(
        json,
        "  latency         p50 {:.0} us  p99 {:.0} us  max {:.0} us",
        r.latency.p50_us,
        r.latency.p99_us,
        r.latency.max_us
    );
    say!(
        json,
        "  I/O per request {:.3} ({:.3} reads + {:.3} writes), {:.3} submit syscalls/op",
        r.ios_per_op,
        r.reads_per_op,
        r.writes_per_op,
        r.submits_per_op
    );
    say!(
        json,
        "  engine I/O      {:>10.0} IOPS ({:.0}% reads)",
        r.engine_iops,
        r.engine_read_fraction * 100.0
    );
    say!(
        json,
        "  device limit    {:>10.0} IOPS (slab files, {:.0}% reads, QD{}: {:.0} reads/s + {:.0} writes/s)",
        r.device_iops,
        r.device_read_fraction * 100.0,
        r.device_queue_depth,
        r.device_read_iops,
        r.device_write_iops
    );
    say!(
        json,
        "  ratio           {:.1}% of the device limit",
        r.ratio_to_device * 100.0
    );
    say!(
        json,
        "  index           {:.1} B/item (engine estimate), {:.1} B/item (RSS of a replica)",
        r.index_bytes_per_item_estimate,
        r.index_bytes_per_item_rss
    );
    if r.scans > 0 {
        say!(
            json,
            "  scans           {:.1} items/scan, {:.1} of them uncached; {:.1} reads/scan loading {:.1} blocks",
            r.items_per_scan,
            r.uncached_items_per_scan,
            r.reads_per_scan,
            r.blocks_per_scan
        );
    }
    if let Some(g) = &r.reorganised {
        say!(
            json,
            "  reorganised     {} items moved in {:.1} s ({} per round); then {:.0} ops/s, p50 {:.0} us p99 {:.0} us, {:.3} reads + {:.3} writes/op",
            g.items_moved,
            g.reorg_secs,
            g.batch,
            g.ops_per_s,
            g.p50_us,
            g.p99_us,
            g.reads_per_op,
            g.writes_per_op
        );
        if g.items_per_scan > 0.0 {
            say!(
                json,
                "  scans after     {:.1} items/scan, {:.1} of them uncached; {:.1} reads/scan loading {:.1} blocks",
                g.items_per_scan,
                g.uncached_items_per_scan,
                g.reads_per_scan,
                g.blocks_per_scan
            );
        }
        if let Some(b) = &r.baseline {
            say!(
                json,
                "  after/baseline  {:.2}x",
                g.ops_per_s / b.ops_per_s.max(1e-9)
            );
        }
    }
    if let Some(b) = &r.baseline {
        say!(
            json,
            "  baseline        {} {:.0} ops/s -> engine = {:.2}x\n  ({})",
            b.name,
            b.ops_per_s,
            b.engine_ratio,
            b.command
        );
    }
    if r.recovery_secs > 0.0 {
        say!(
            json,
            "  load            {:.0} items/s; recovery {:.2} s = {:.0} MB/s",
            r.load_ops_per_s,
            r.recovery_secs,
            r.recovery_mb_per_s
        );
    }
}

fn key_of(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

fn value_of(id: u64, len: usize, salt: u64) -> Vec<u8> {
    let b = (id ^ salt) as u8;
    vec![b; len]
}

/// xorshift64* generator.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// YCSB's zipfian generator (Gray et al.), θ = 0.99, scrambled with FNV so that popular
/// items are spread over the key space.
struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    fn new(n: u64) -> Self {
        let theta = 0.99;
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Self {
            n,
            theta,
            alpha,
            zetan,
            eta,
        }
    }
    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        let rank = if uz < 1.0 {
            0
        } else if uz < 1.0 + 0.5f64.powf(self.theta) {
            1
        } else {
            ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
        };
        kv_engine::fnv1a64(&rank.min(self.n - 1).to_le_bytes()) % self.n
    }
}

struct Generator {
    rng: Rng,
    zipf: Option<Zipf>,
    records: u64,
    next_insert: u64,
    value_size: usize,
    workload: Workload,
}

enum Next {
    Read(u64),
    Update(u64),
    Rmw(u64),
    Scan(u64, usize),
    Insert(u64),
}

impl Generator {
    fn new(args: &EngineArgs, seed: u64) -> Self {
        Self {
            rng: Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xA24B_AED4_963E_E407)),
            zipf: (args.distribution == Distribution::Zipfian).then(|| Zipf::new(args.records)),
            records: args.records,
            next_insert: args.records,
            value_size: args.value_size,
            workload: args.workload,
        }
    }
    fn item(&mut self) -> u64 {
        match &self.zipf {
            Some(z) => z.sample(&mut self.rng),
            None => self.rng.below(self.records),
        }
    }
    fn next(&mut self) -> Next {
        let p = self.rng.below(100);
        let id = self.item();
        match self.workload {
            Workload::A if p < 50 => Next::Read(id),
            Workload::A => Next::Update(id),
            Workload::B if p < 95 => Next::Read(id),
            Workload::B => Next::Update(id),
            Workload::C => Next::Read(id),
            Workload::E if p < 95 => Next::Scan(id, 1 + self.rng.below(99) as usize),
            Workload::E => {
                let id = self.next_insert;
                self.next_insert += 1;
                Next::Insert(id)
            }
            Workload::F if p < 50 => Next::Read(id),
            Workload::F => Next::Rmw(id),
        }
    }
}

/// Runs the closed loop for `duration`, either with one thread per worker or with one
/// thread for all workers. Returns (completed requests, elapsed).
fn phase(
    workers: &mut [Worker],
    router: &KeyRouter,
    args: &EngineArgs,
    gens: &mut [Generator],
    duration: Duration,
    hist: Option<&mut hdrhistogram::Histogram<u64>>,
    per_worker_threads: bool,
) -> Result<(u64, u64, Duration)> {
    if !per_worker_threads {
        let gen = gens.first_mut().context("no generator")?;
        return drive(workers, router, args, gen, duration, hist, None);
    }
    let record = hist.is_some();
    type ThreadResult = Result<(u64, u64, Duration, hdrhistogram::Histogram<u64>)>;
    let results: Vec<ThreadResult> = std::thread::scope(|s| {
        let handles: Vec<_> = workers
            .iter_mut()
            .zip(gens.iter_mut())
            .enumerate()
            .map(|(i, (w, gen))| {
                s.spawn(move || {
                    let mut h = new_histogram();
                    let one = std::slice::from_mut(w);
                    let hist = if record { Some(&mut h) } else { None };
                    let (n, sc, e) = drive(one, router, args, gen, duration, hist, Some(i))?;
                    Ok((n, sc, e, h))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("driver thread panicked")))
            })
            .collect()
    });
    let mut ops = 0;
    let mut scans = 0;
    let mut elapsed = Duration::ZERO;
    let mut merged = hist;
    for r in results {
        let (n, sc, e, h) = r?;
        ops += n;
        scans += sc;
        elapsed = elapsed.max(e);
        if let Some(m) = merged.as_deref_mut() {
            m.add(&h).context("merging histograms")?;
        }
    }
    Ok((ops, scans, elapsed))
}

/// Bulk load in shuffled order.
fn load(workers: &mut [Worker], router: &KeyRouter, args: &EngineArgs) -> Result<()> {
    let mut ids: Vec<u64> = (0..args.records).collect();
    let mut rng = Rng(0xDEAD_BEEF_1234_5678);
    for i in (1..ids.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        ids.swap(i, j);
    }
    let mut outstanding = vec![0usize; workers.len()];
    let mut done = Vec::new();
    let mut next = 0usize;
    let mut completed = 0u64;
    let mut backlog: Vec<VecDeque<u64>> = vec![VecDeque::new(); workers.len()];
    while completed < args.records {
        // Route the next ids; keep each worker at `inflight` outstanding puts.
        while next < ids.len() && backlog.iter().all(|b| b.len() < args.inflight) {
            let id = ids[next];
            backlog[router.partition_of(&key_of(id))].push_back(id);
            next += 1;
        }
        for (w, worker) in workers.iter_mut().enumerate() {
            while outstanding[w] < args.inflight {
                let Some(id) = backlog[w].pop_front() else {
                    break;
                };
                let op = Op::Put {
                    key: key_of(id),
                    value: value_of(id, args.value_size, 0),
                };
                worker.submit(op, id);
                outstanding[w] += 1;
            }
            worker.poll(&mut done);
            for c in done.drain(..) {
                if let Err(e) = c.result {
                    bail!("load put of item {} failed: {e}", c.tag);
                }
                outstanding[w] -= 1;
                completed += 1;
            }
        }
    }
    Ok(())
}

struct Pending {
    start: Instant,
    /// Remaining scan parts (scans go to every worker).
    parts_left: usize,
    parts: Vec<Vec<(Vec<u8>, Vec<u8>)>>,
    scan_len: usize,
    scan: bool,
    /// Read-modify-write: the put still to do.
    rmw: Option<u64>,
    free: bool,
}

/// Closed loop: keeps `inflight` requests per worker outstanding for `duration`. Returns
/// (completed requests, completed scans among them, elapsed).
///
/// A scan runs in two phases, as [`kv_engine::Engine::scan`] does: every worker's first keys
/// from its index (no I/O), the first `len` of them all chosen, then each worker reads only
/// its chosen keys.
fn drive(
    workers: &mut [Worker],
    router: &KeyRouter,
    args: &EngineArgs,
    gen: &mut Generator,
    duration: Duration,
    mut hist: Option<&mut hdrhistogram::Histogram<u64>>,
    owned: Option<usize>,
) -> Result<(u64, u64, Duration)> {
    let w_count = workers.len();
    // With `owned`, `workers` is that one worker and only its keys are generated.
    let route = |key: &[u8]| {
        if owned.is_some() {
            0
        } else {
            router.partition_of(key)
        }
    };
    let mine = |id: u64| owned.is_none_or(|me| router.partition_of(&key_of(id)) == me);
    let limit = args.inflight * w_count;
    let mut pending: Vec<Pending> = Vec::with_capacity(limit);
    let mut free_tags: Vec<u64> = Vec::new();
    let mut outstanding = 0usize;
    let mut done: Vec<Completion> = Vec::new();
    let mut completed = 0u64;
    let mut scans = 0u64;
    let start = Instant::now();
    let mut stopping = false;
    let mut elapsed = Duration::ZERO;
    let salt = start.elapsed().as_nanos() as u64 | 1;
    loop {
        if !stopping && start.elapsed() >= duration {
            stopping = true;
            elapsed = start.elapsed();
        }
        if stopping && outstanding == 0 {
            break;
        }
        while !stopping && outstanding < limit {
            let tag = match free_tags.pop() {
                Some(t) => t,
                None => {
                    pending.push(Pending {
                        start,
                        parts_left: 0,
                        parts: Vec::new(),
                        scan_len: 0,
                        scan: false,
                        rmw: None,
                        free: true,
                    });
                    (pending.len() - 1) as u64
                }
            };
            let p = &mut pending[tag as usize];
            p.start = Instant::now();
            p.free = false;
            p.rmw = None;
            p.scan = false;
            p.parts_left = 1;
            outstanding += 1;
            let next = loop {
                let n = gen.next();
                let id = match n {
                    Next::Read(id) | Next::Update(id) | Next::Insert(id) | Next::Rmw(id) => id,
                    Next::Scan(id, _) => id,
                };
                if mine(id) {
                    break n;
                }
            };
            let (w, op) = match next {
                Next::Read(id) => (route(&key_of(id)), Op::Get { key: key_of(id) }),
                Next::Update(id) | Next::Insert(id) => (
                    route(&key_of(id)),
                    Op::Put {
                        key: key_of(id),
                        value: value_of(id, gen.value_size, salt),
                    },
                ),
                Next::Rmw(id) => {
                    p.rmw = Some(id);
                    (route(&key_of(id)), Op::Get { key: key_of(id) })
                }
                Next::Scan(id, len) => {
                    let start = key_of(id);
                    let mut keys: Vec<Vec<Vec<u8>>> =
                        workers.iter().map(|w| w.scan_keys(&start, len)).collect();
                    choose_scan_keys(&mut keys, len);
                    p.scan = true;
                    p.scan_len = len;
                    p.parts.clear();
                    p.parts_left = keys.iter().filter(|k| !k.is_empty()).count().max(1);
                    let any = keys.iter().any(|k| !k.is_empty());
                    for (i, (worker, keys)) in workers.iter_mut().zip(keys).enumerate() {
                        // With no key anywhere, worker 0 answers the empty scan.
                        if !keys.is_empty() || (!any && i == 0) {
                            worker.submit_scan_of(keys, tag);
                        }
                    }
                    continue;
                }
            };
            workers[w].submit(op, tag);
        }
        for worker in workers.iter_mut() {
            worker.poll(&mut done);
        }
        for c in done.drain(..) {
            let tag = c.tag;
            let p = &mut pending[tag as usize];
            let output = match c.result {
                Ok(o) => o,
                Err(e) => bail!("operation failed: {e}"),
            };
            if let Some(id) = p.rmw.take() {
                let key = key_of(id);
                workers[route(&key)].submit(
                    Op::Put {
                        key,
                        value: value_of(id, gen.value_size, salt),
                    },
                    tag,
                );
                continue;
            }
            if let Reply::Items(items) = output {
                p.parts.push(items);
            }
            p.parts_left -= 1;
            if p.parts_left > 0 {
                continue;
            }
            if !p.parts.is_empty() {
                let merged = merge_scan(std::mem::take(&mut p.parts), p.scan_len);
                std::hint::black_box(merged.len());
            }
            if let Some(h) = hist.as_deref_mut() {
                let _ = h.record(p.start.elapsed().as_nanos() as u64);
            }
            if !stopping {
                completed += 1;
                scans += u64::from(p.scan);
            }
            p.free = true;
            free_tags.push(tag);
            outstanding -= 1;
        }
    }
    Ok((completed, scans, elapsed))
}

/// Index memory per item measured from the process's resident size while building a
/// replica of one worker's index type (full keys in a B-tree) for `records` 8-byte keys.
fn index_rss_per_item(records: u64) -> f64 {
    fn rss() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * 4096)
    }
    let Some(before) = rss() else { return f64::NAN };
    let mut map = std::collections::BTreeMap::<Box<[u8]>, kv_engine::index::Location>::new();
    for id in 0..records {
        map.insert(
            key_of(id).into_boxed_slice(),
            kv_engine::index::Location {
                class: 5,
                slot: id as u32,
            },
        );
    }
    let after = rss().unwrap_or(before);
    let per = after.saturating_sub(before) as f64 / records.max(1) as f64;
    drop(std::hint::black_box(map));
    per
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: EngineArgs,
    }

    #[test]
    fn db_bench_runs_with_the_engine_runs_sizes_cache_and_concurrency() {
        let cli = Cli::try_parse_from([
            "engine",
            "--workload",
            "e",
            "--records",
            "5000",
            "--value-size",
            "100",
            "--cache-mb",
            "128",
            "--workers",
            "2",
            "--inflight",
            "8",
            "--duration",
            "7",
            "--baseline",
            "rocksdb",
        ])
        .unwrap();
        let p = db_bench_params(&cli.args, std::path::Path::new("/data"));
        assert_eq!(p.workload, 'e');
        assert_eq!((p.records, p.key_size, p.value_size), (5000, 8, 100));
        assert_eq!(p.cache_bytes, 128 << 20);
        assert_eq!(p.threads, 16, "one db_bench thread per outstanding request");
        assert_eq!(p.duration, 7);
        assert_eq!(p.db, std::path::PathBuf::from("/data/rocksdb"));
        let args = baseline::run_args(&p).unwrap();
        assert!(
            args.iter().any(|a| a == "--benchmarks=seekrandom"),
            "{args:?}"
        );
        let cli = Cli::try_parse_from(["engine", "--db-bench-threads", "3"]).unwrap();
        assert_eq!(
            db_bench_params(&cli.args, std::path::Path::new("/d")).threads,
            3
        );
        assert_eq!(
            db_bench_params(&cli.args, std::path::Path::new("/d")).workload,
            'a'
        );
    }

    #[test]
    fn zipfian_is_spelled_as_in_ycsb_and_zipf_is_an_alias() {
        for spelling in ["zipfian", "zipf"] {
            let cli = Cli::try_parse_from(["engine", "--distribution", spelling]).unwrap();
            assert_eq!(cli.args.distribution, Distribution::Zipfian, "{spelling}");
        }
        assert!(Cli::try_parse_from(["engine", "--distribution", "zipfy"]).is_err());
    }
}
