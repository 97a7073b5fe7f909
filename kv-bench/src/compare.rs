//! `kv-bench compare`: what does the network cost? One workload against the engine
//! in-process (its non-blocking `Worker` API polled by the driver thread: no network, no
//! thread hop) and through kv-service each way this build has — the rpc crate over kernel
//! UDP and TCP (`rpc/udp`, `rpc/tcp`; with the `rdma` feature `rpc/ud` and `rpc/rc` on the
//! simulated verbs device, labelled as a simulation) and the RESP front-end over TCP
//! (`resp/tcp`, pipelined RESP connections, as a Redis client talks) — with the same number
//! of requests in flight; a table with throughput, p50/p99 and the networking overhead
//! (remote − in-process). RESP has no ordered range scan: with YCSB-E its row skips the scans.
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use kv_engine::{open_workers, EngineConfig};
use serde::Serialize;

use crate::remote::{Remote, RemoteKind};
use crate::report::{say, write_json};
use crate::rpc_bench::SIMULATED;
use crate::ycsb::driver::{Backend, Conns, EngineBackend, Pool};
use crate::ycsb::gen::{Distribution, InsertCounter, OpGen, Workload};
use crate::ycsb::{load_system, run_rounds, temp_data_dir, Percentiles, System, SystemReport};

/// Arguments of `kv-bench compare`.
#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// YCSB workload.
    #[arg(long, value_enum, default_value = "c")]
    workload: Workload,
    /// Key distribution (default: the workload's).
    #[arg(long, value_enum)]
    distribution: Option<Distribution>,
    /// Items loaded before the run.
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Seconds per system and round.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Remote: client connections (one driver thread). In-process: the same total in flight.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    window: usize,
    /// Engine workers = server threads.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Page cache in MiB.
    #[arg(long, default_value_t = 256)]
    cache_mb: usize,
    /// Rounds (alternating the order of the systems).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Write every figure as JSON to this file (`-` = stdout).
    #[arg(long)]
    json: Option<String>,
    /// Draw throughput per transport and the latency CDFs to this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The ways into kv-service to compare (comma-separated): `udp`, `tcp` (the rpc crate over
    /// them), `resp` (the RESP front-end over TCP), and with the `rdma` feature `ud`, `rc` on
    /// the simulated verbs device; default: every one of this build.
    #[arg(long, value_enum, value_delimiter = ',')]
    transports: Vec<RemoteKind>,
}

#[derive(Serialize)]
struct Row {
    transport: String,
    /// Measured on the simulated verbs device: a simulation, not an RDMA measurement.
    simulated: bool,
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    overhead_p50_us: f64,
    overhead_p50_pct_of_remote: f64,
    overhead_p99_us: f64,
    throughput_pct_of_local: f64,
    latency: Percentiles,
    errors: u64,
}

#[derive(Serialize)]
struct CompareReport {
    note: String,
    workload: String,
    distribution: String,
    records: u64,
    value_size: usize,
    in_flight: usize,
    workers: usize,
    rounds: usize,
    rows: Vec<Row>,
    systems: Vec<SystemReport>,
}

/// Runs `kv-bench compare`.
pub fn run(args: CompareArgs) -> Result<()> {
    if args.records == 0 || args.sessions == 0 || args.window == 0 || args.workers == 0 {
        bail!("--records, --sessions, --window and --workers must be positive");
    }
    let json = args.json.as_deref();
    let distribution = args
        .distribution
        .unwrap_or(args.workload.default_distribution());
    let in_flight = args.sessions * args.window;
    let new_gen = || {
        OpGen::new(
            args.workload,
            distribution,
            args.records,
            args.value_size,
            InsertCounter::new(args.records),
            42,
        )
    };

    let local_dir = temp_data_dir("kv-bench-compare-local-")?;
    let opened = open_workers(
        local_dir.path(),
        &EngineConfig {
            workers: args.workers,
            cache_bytes: args.cache_mb << 20,
            ..EngineConfig::default()
        },
    )
    .context("opening the in-process engine")?;
    let engine = EngineBackend::new(opened.workers, opened.router);
    let wanted = if args.transports.is_empty() {
        RemoteKind::all()
    } else {
        args.transports.clone()
    };
    let mut remotes = Vec::new();
    for t in wanted {
        remotes.push(Remote::start(t, args.workers, args.cache_mb, 32)?);
    }

    // The in-process system has one "session" (the engine) with the whole window.
    let mut systems = vec![(
        System {
            name: "in-process".into(),
            version: "engine Worker API, same thread".into(),
            pool: Pool::start(Conns::Owned(vec![vec![
                Box::new(engine) as Box<dyn Backend + Send>
            ]]))?,
            gen: new_gen(),
            stats: None,
            report: SystemReport::default(),
        },
        in_flight,
    )];
    for r in &remotes {
        systems.push((
            System {
                name: r.name.clone(),
                version: r.version.clone(),
                pool: Pool::start(r.conns(1, args.sessions))?,
                gen: new_gen(),
                stats: None,
                report: SystemReport::default(),
            },
            args.window,
        ));
    }
    say!(
        json,
        "compare: YCSB-{} {} | {} items x {} B | {} in flight | {} worker(s) | {} x {} s",
        args.workload.name().to_uppercase(),
        distribution.name(),
        args.records,
        args.value_size,
        in_flight,
        args.workers,
        args.rounds,
        args.duration
    );
    for (sys, window) in systems.iter_mut() {
        load_system(
            sys,
            args.records,
            (*window).max(16),
            args.workload,
            args.value_size,
            json,
        )?;
    }
    // Rounds: alternate the systems (each with its own window).
    let duration = Some(Duration::from_secs_f64(args.duration.max(0.01)));
    for r in 0..args.rounds.max(1) {
        let mut order: Vec<usize> = (0..systems.len()).collect();
        if r % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (sys, window) = &mut systems[i];
            run_rounds(
                std::slice::from_mut(sys),
                1,
                *window,
                None,
                duration,
                args.workload,
                args.value_size,
                json,
            )?;
        }
    }
    let local = systems[0].0.report.all;
    let local_tput = systems[0].0.report.ops_per_s;
    let mut rows = Vec::new();
    say!(
        json,
        "\n| transport | ops/s | p50 us | p99 us | overhead p50 us | overhead p50 % of remote | overhead p99 us | throughput vs in-process |"
    );
    say!(json, "|---|---|---|---|---|---|---|---|");
    for (sys, _) in &systems {
        let r = &sys.report;
        let row = Row {
            transport: sys.name.clone(),
            simulated: remotes.iter().any(|m| m.simulated && m.name == sys.name),
            ops_per_s: r.ops_per_s,
            p50_us: r.all.p50_us,
            p99_us: r.all.p99_us,
            overhead_p50_us: r.all.p50_us - local.p50_us,
            overhead_p50_pct_of_remote: (r.all.p50_us - local.p50_us) / r.all.p50_us.max(1e-9)
                * 100.0,
            overhead_p99_us: r.all.p99_us - local.p99_us,
            throughput_pct_of_local: r.ops_per_s / local_tput.max(1e-9) * 100.0,
            latency: r.all,
            errors: r.errors,
        };
        say!(
            json,
            "| {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.1}% | {:.2} | {:.1}% |",
            row.transport,
            row.ops_per_s,
            row.p50_us,
            row.p99_us,
            row.overhead_p50_us,
            row.overhead_p50_pct_of_remote,
            row.overhead_p99_us,
            row.throughput_pct_of_local
        );
        rows.push(row);
    }
    let simulated = rows.iter().any(|r| r.simulated);
    if simulated {
        say!(json, "rows marked (simulated): {SIMULATED}");
    }
    if let Some(path) = &args.plot {
        let tput: Vec<(String, f64)> = rows
            .iter()
            .map(|r| (r.transport.clone(), r.ops_per_s))
            .collect();
        let series: Vec<(String, &Histogram<u64>)> = systems
            .iter()
            .filter_map(|(s, _)| s.stats.as_ref().map(|st| (s.name.clone(), &st.all)))
            .collect();
        let title = format!(
            "YCSB-{}, {} in flight: throughput{}",
            args.workload.name().to_uppercase(),
            in_flight,
            if simulated {
                " ((simulated): simulated verbs device, not RDMA)"
            } else {
                ""
            }
        );
        crate::plot::compare(path, &title, &tput, &series)?;
        say!(json, "plot written to {}", path.display());
    }
    let errors: u64 = rows.iter().map(|r| r.errors).sum();
    let report = CompareReport {
        note: if simulated {
            format!("same-run comparison; absolute numbers drift between runs; rows marked simulated: {SIMULATED}")
        } else {
            "same-run comparison; absolute numbers drift between runs".into()
        },
        workload: args.workload.name().into(),
        distribution: distribution.name().into(),
        records: args.records,
        value_size: args.value_size,
        in_flight,
        workers: args.workers,
        rounds: args.rounds,
        rows,
        systems: systems
            .into_iter()
            .map(|(mut s, _)| {
                s.report.system.clone_from(&s.name);
                s.report.version.clone_from(&s.version);
                s.report
            })
            .collect(),
    };
    write_json(json, &report)?;
    // The systems (and their connections) are gone with the report; then the servers.
    for r in remotes {
        r.shutdown()?;
    }
    if errors > 0 {
        bail!("{errors} operations failed");
    }
    Ok(())
}
