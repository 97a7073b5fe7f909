//! Same-run baselines.
pub mod raw_tcp;
pub mod raw_udp;
pub mod redis;
pub mod relay;
pub mod rocksdb;

/// Runs `f` for 100 ms, then longer, until it records a round trip: on a loaded machine
/// (other tests spinning on the same cores) a short run may get no CPU at all, which says
/// nothing about the code. Up to 0.1 + 0.4 + 1.6 + 6.4 s.
#[cfg(test)]
fn until_samples(
    f: impl Fn(std::time::Duration) -> anyhow::Result<hdrhistogram::Histogram<u64>>,
) -> hdrhistogram::Histogram<u64> {
    let mut d = std::time::Duration::from_millis(100);
    loop {
        let h = f(d).unwrap();
        if !h.is_empty() || d > std::time::Duration::from_secs(5) {
            return h;
        }
        d *= 4;
    }
}
