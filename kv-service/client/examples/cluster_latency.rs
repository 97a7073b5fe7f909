//! Single-client replicated PUT and linearizable GET latency against a running cluster
//! (blocking API: one request in flight), next to what `kv_latency` measures on one node.
//!
//! ```text
//! # three nodes of examples/cluster-local.toml (see README), then:
//! cargo run --release -p kv-client --example cluster_latency -- examples/cluster-local.toml 5000
//! ```
//! Prints p50 / p99 / mean per operation (100-byte values, 16-byte keys).
use std::time::{Duration, Instant};

use kv_client::{ClusterClient, ClusterClientConfig};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let mean = v.iter().sum::<Duration>() / v.len().max(1) as u32;
    println!(
        "{name}: n={} p50={:.1}us p99={:.1}us mean={:.1}us",
        v.len(),
        pct(&v, 0.50).as_secs_f64() * 1e6,
        pct(&v, 0.99).as_secs_f64() * 1e6,
        mean.as_secs_f64() * 1e6
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let file = args
        .next()
        .unwrap_or_else(|| "examples/cluster-local.toml".into());
    let n: usize = args.next().map_or(Ok(5_000), |s| s.parse())?;
    let cluster = kv_cluster::Cluster::load(&file)?;
    let mut c = ClusterClient::new(cluster, ClusterClientConfig::default())?;
    let value = vec![b'v'; 100];
    let key = |i: usize| format!("lat-{:012}", i % 10_000).into_bytes();
    for i in 0..500 {
        c.put(&key(i), &value)?;
        c.get(&key(i))?;
    }
    let mut puts = Vec::with_capacity(n);
    let mut gets = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        c.put(&key(i), &value)?;
        puts.push(t.elapsed());
        let t = Instant::now();
        c.get(&key(i))?;
        gets.push(t.elapsed());
    }
    report("replicated PUT", puts);
    report("linearizable GET", gets);
    println!("redirects followed: {}", c.redirects());
    Ok(())
}
