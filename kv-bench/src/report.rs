//! Shared report helpers: latency summaries and `--json` output.
use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
    pub samples: u64,
}

impl Latency {
    /// Summarises a histogram recorded in nanoseconds.
    pub fn from_ns(h: &Histogram<u64>) -> Self {
        let us = |v: u64| v as f64 / 1000.0;
        Self {
            p50_us: us(h.value_at_quantile(0.50)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
            samples: h.len(),
        }
    }
}

/// A histogram for nanosecond latencies up to 10 s.
pub fn new_histogram() -> Histogram<u64> {
    // 3 significant digits up to 10 s cannot fail to construct.
    Histogram::new_with_bounds(1, 10_000_000_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!()))
}

/// `println!` for the human-readable report, which goes to stderr when `--json -` claims
/// stdout for the JSON object.
macro_rules! say {
    ($json:expr, $($arg:tt)*) => {
        if $json == Some("-") {
            eprintln!($($arg)*)
        } else {
            println!($($arg)*)
        }
    };
}
pub(crate) use say;

/// Writes `value` as one JSON object to `path` (`-` = stdout) when a path is given.
pub fn write_json<T: Serialize>(path: Option<&str>, value: &T) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let text = serde_json::to_string_pretty(value)?;
    if path == "-" {
        println!("{text}");
    } else {
        std::fs::write(path, text + "\n").with_context(|| format!("writing {path}"))?;
    }
    Ok(())
}
