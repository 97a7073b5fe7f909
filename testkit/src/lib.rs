//! Test-only helpers shared by the workspace's crates: where randomized tests get their seeds
//! and case counts, and a linearizability checker for key-value histories
//! ([`linearizability`]).
//!
//! Every randomized test in the workspace is deterministic by default: `cargo test` (and so
//! `ci/test`) runs each property test from [`CI_SEED`] with the case count written in the test,
//! and each seeded simulation from the seed written in the test. Exploration is opt-in through
//! the environment, which is what `ci/soak` sets:
//!
//! | variable | effect |
//! |---|---|
//! | `PROPTEST_RNG_SEED=N` | proptest's own variable: property tests start from seed `N` instead of [`CI_SEED`] |
//! | `PROPTEST_CASE_FACTOR=K` | every property test runs `K` times its written case count |
//! | `TEST_SEEDS=a,b,c` | seeded simulations ([`seeds`]) run with these seeds instead of the written ones |
//!
//! A property test that fails writes its minimal input to the file given to [`proptest_config`]
//! (a path under the crate's `proptest-regressions/`, relative to the crate root, where
//! `cargo test` runs); committed, that file makes every later run try the case first.
//!
//! ```
//! use proptest::prelude::*;
//!
//! // In a test: 64 cases from the CI seed, failures saved beside the crate's other regressions.
//! let config = testkit::proptest_config(64, "proptest-regressions/doc_example.txt");
//! proptest!(config, |(a in any::<u32>(), b in any::<u32>())| {
//!     prop_assert_eq!(a.wrapping_add(b), b.wrapping_add(a));
//! });
//! // Inside `proptest! { ... }` blocks: #![proptest_config(testkit::proptest_config(64, "..."))]
//! ```
#![forbid(unsafe_code)]

pub mod linearizability;

use proptest::test_runner::{Config, FileFailurePersistence, RngSeed};

/// The seed every property test starts from unless `PROPTEST_RNG_SEED` says otherwise.
pub const CI_SEED: u64 = 0x6b76_2d72_7063_0001;

/// Environment variable multiplying every property test's case count (see the crate doc).
pub const CASE_FACTOR_VAR: &str = "PROPTEST_CASE_FACTOR";

/// Environment variable replacing the seeds of seeded simulations (see [`seeds`]).
pub const SEEDS_VAR: &str = "TEST_SEEDS";

/// A proptest configuration for `cases` cases from a fixed seed, saving failures to
/// `regressions` (a path relative to the crate root).
///
/// `PROPTEST_RNG_SEED` (a fresh seed) and `PROPTEST_CASE_FACTOR` (more cases) override the
/// defaults; ci/soak sets both. An unparsable value is a panic with the variable's name, so a
/// soak run never silently falls back to the CI seed.
pub fn proptest_config(cases: u32, regressions: &'static str) -> Config {
    // `Config::default()` reads the PROPTEST_* variables, PROPTEST_RNG_SEED included.
    let mut c = Config::default();
    if std::env::var_os("PROPTEST_RNG_SEED").is_none() {
        c.rng_seed = RngSeed::Fixed(CI_SEED);
    }
    c.cases = cases.saturating_mul(case_factor());
    c.failure_persistence = Some(Box::new(FileFailurePersistence::Direct(regressions)));
    c
}

/// The case multiplier from `PROPTEST_CASE_FACTOR` (1 when unset).
pub fn case_factor() -> u32 {
    match std::env::var(CASE_FACTOR_VAR) {
        Ok(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|&k| k > 0)
            .unwrap_or_else(|| panic!("{CASE_FACTOR_VAR}={v:?} is not a positive integer")),
        Err(_) => 1,
    }
}

/// The seeds a seeded simulation should run with: `written` unless `TEST_SEEDS` lists others
/// (comma-separated, decimal or `0x` hex). A test prints the seed it runs so that a failure
/// names the seed to reproduce it with.
pub fn seeds(written: &[u64]) -> Vec<u64> {
    match std::env::var(SEEDS_VAR) {
        Ok(v) => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| parse_seed(s).unwrap_or_else(|| panic!("{SEEDS_VAR}: {s:?} is not a seed")))
            .collect(),
        Err(_) => written.to_vec(),
    }
}

fn parse_seed(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_parse_decimal_and_hex() {
        assert_eq!(parse_seed("42"), Some(42));
        assert_eq!(parse_seed("0xff"), Some(255));
        assert_eq!(parse_seed("x"), None);
    }
}
