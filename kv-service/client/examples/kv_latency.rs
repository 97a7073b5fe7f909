//! Single-client GET and PUT latency against a running kv-service.
//!
//! ```text
//! cargo run --release -p kv-service --bin kv-service -- --data-dir /tmp/kv-lat --busy-poll &
//! cargo run --release -p kv-client --example kv_latency -- 127.0.0.1:31850 20000
//! ```
//! Prints p50 / p99 / mean per operation (100-byte values, 16-byte keys, blocking API).
use std::time::{Duration, Instant};

use kv_client::{Client, ClientConfig};

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
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:31850".into());
    let n: usize = args.next().map_or(Ok(20_000), |s| s.parse())?;
    let mut c = Client::connect(&addr, ClientConfig::default())?;
    let value = vec![b'v'; 100];
    let key = |i: usize| format!("lat-{:012}", i % 10_000).into_bytes();
    // Warm-up.
    for i in 0..1000 {
        c.put(&key(i), &value)?;
        c.get(&key(i))?;
    }
    let mut puts = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        c.put(&key(i), &value)?;
        puts.push(t.elapsed());
    }
    let mut gets = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let v = c.get(&key(i))?;
        gets.push(t.elapsed());
        if v.as_deref() != Some(&value[..]) {
            return Err(format!("wrong value for key {i}").into());
        }
    }
    report("PUT", puts);
    report("GET", gets);
    Ok(())
}
