//! `kv-bench`: benchmarks for the rpc crate and kv-service, with same-run baselines.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod baseline;
mod cluster;
mod compare;
mod engine_bench;
mod plot;
mod remote;
mod report;
mod rpc_bench;
mod ycsb;

#[derive(Parser)]
#[command(
    name = "kv-bench",
    version,
    about = "Benchmarks for rpc and kv-service"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// RPC benchmarks (latency, throughput, bandwidth) over UDP or TCP on loopback, or the
    /// verbs transports on the simulated verbs device (feature `rdma`).
    Rpc {
        #[command(subcommand)]
        which: rpc_bench::RpcCmd,
    },
    /// The storage engine in-process (no network), YCSB workloads, with the device's limit.
    Engine(engine_bench::EngineArgs),
    /// YCSB A-F and KVell's production mix against kv-service (embedded or --server), with
    /// an optional same-run Redis baseline (--baseline redis).
    Ycsb(ycsb::YcsbArgs),
    /// One workload in-process and over each transport: the networking overhead.
    Compare(compare::CompareArgs),
    /// The replicated service: a 3-node cluster and a single node of kv-service processes,
    /// replicated PUT latency and throughput (durable and --raft-sync never) next to the
    /// single node's, and leader failover time.
    Cluster(cluster::ClusterArgs),
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Rpc { which } => rpc_bench::run(which),
        Cmd::Engine(args) => engine_bench::run(args),
        Cmd::Ycsb(args) => ycsb::run(args),
        Cmd::Compare(args) => compare::run(args),
        Cmd::Cluster(args) => cluster::run(args),
    }
}
