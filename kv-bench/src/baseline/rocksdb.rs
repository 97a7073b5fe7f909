//! RocksDB's `db_bench` (Debian `rocksdb-tools`) as the same-run baseline of
//! `kv-bench engine`: the same item count, key and value sizes, block cache size, direct
//! reads and concurrency as the engine's run, with the workload mapped onto db_bench's
//! closest benchmark.
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};

/// What the engine run used, that the baseline must match.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DbBenchParams {
    /// Workload letter (`a`, `b`, `c`, `e`).
    pub workload: char,
    /// Items loaded.
    pub records: u64,
    /// Key size in bytes.
    pub key_size: usize,
    /// Value size in bytes.
    pub value_size: usize,
    /// Block cache in bytes (the engine's page cache).
    pub cache_bytes: u64,
    /// Concurrent requests: db_bench is synchronous, so one thread per outstanding request.
    pub threads: usize,
    /// Items per scan (workload E; db_bench's `--seek_nexts` is fixed per run, so the mean of
    /// the engine's scan lengths).
    pub seek_nexts: usize,
    /// Measured seconds.
    pub duration: u64,
    /// Database directory.
    pub db: PathBuf,
}

/// The db_bench benchmark and its workload-specific flags for a YCSB workload.
pub fn benchmark_for(workload: char, seek_nexts: usize) -> Result<(&'static str, Vec<String>)> {
    Ok(match workload {
        'a' => (
            "readrandomwriterandom",
            vec!["--readwritepercent=50".into()],
        ),
        'b' => (
            "readrandomwriterandom",
            vec!["--readwritepercent=95".into()],
        ),
        'c' => ("readrandom", Vec::new()),
        'e' => ("seekrandom", vec![format!("--seek_nexts={seek_nexts}")]),
        w => bail!(
            "--baseline rocksdb supports workloads a, b, c and e (db_bench has no equivalent of {w})"
        ),
    })
}

fn common(p: &DbBenchParams) -> Vec<String> {
    vec![
        format!("--db={}", p.db.display()),
        format!("--num={}", p.records),
        format!("--key_size={}", p.key_size),
        format!("--value_size={}", p.value_size),
        format!("--cache_size={}", p.cache_bytes),
        "--use_direct_reads=true".into(),
        "--use_direct_io_for_flush_and_compaction=true".into(),
        // The engine's values are incompressible in effect (it stores them as given).
        "--compression_type=none".into(),
        "--compression_ratio=1".into(),
    ]
}

/// Arguments that load the database: `records` items in random order, then a full
/// compaction, so that the measured run meets RocksDB at its best (sorted files, no L0 backlog)
/// rather than in the middle of its background work.
pub fn load_args(p: &DbBenchParams) -> Vec<String> {
    let mut a = vec!["--benchmarks=fillrandom,compact".to_string()];
    a.extend(common(p));
    a.push("--threads=1".into());
    a
}

/// Arguments of the measured run against the loaded database.
pub fn run_args(p: &DbBenchParams) -> Result<Vec<String>> {
    let (bench, extra) = benchmark_for(p.workload, p.seek_nexts)?;
    let mut a = vec![format!("--benchmarks={bench}")];
    a.extend(common(p));
    a.push("--use_existing_db=true".into());
    a.push(format!("--threads={}", p.threads.max(1)));
    a.push(format!("--duration={}", p.duration.max(1)));
    a.extend(extra);
    Ok(a)
}

/// Operations per second from db_bench's report line for `bench`
/// (`seekrandom :  12.3 micros/op 81234 ops/sec; ...`).
pub fn parse_ops_per_sec(output: &str, bench: &str) -> Option<f64> {
    output.lines().find_map(|line| {
        let rest = line.trim_start().strip_prefix(bench)?;
        let rest = rest.trim_start().strip_prefix(':')?;
        let mut words = rest.split_whitespace();
        while let Some(w) = words.next() {
            if words.clone().next() == Some("ops/sec;") || words.clone().next() == Some("ops/sec") {
                return w.parse().ok();
            }
        }
        None
    })
}

/// `db_bench` on PATH (or `/usr/bin/db_bench`).
fn find_db_bench() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("db_bench"))
        .find(|p| p.is_file())
}

/// Result of one db_bench run.
#[derive(Clone, Debug)]
pub struct DbBenchResult {
    /// The benchmark run.
    pub benchmark: &'static str,
    /// Its operations per second (a seek with its `seek_nexts` nexts is one operation).
    pub ops_per_s: f64,
    /// The command line of the measured run.
    pub command: String,
}

fn run(bin: &Path, args: &[String]) -> Result<String> {
    let out = Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "db_bench {} failed ({}): {}",
            args.first().map(String::as_str).unwrap_or(""),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(text)
}

/// Loads the database if `p.db` does not hold one yet, then runs the measured benchmark.
pub fn load_and_run(p: &DbBenchParams) -> Result<DbBenchResult> {
    let bin = find_db_bench().ok_or_else(|| {
        anyhow!(
            "db_bench is not on PATH: install it (Debian: apt-get install rocksdb-tools) \
             or run without --baseline rocksdb"
        )
    })?;
    if !p.db.join("CURRENT").is_file() {
        eprintln!(
            "db_bench: loading {} items into {} ...",
            p.records,
            p.db.display()
        );
        run(&bin, &load_args(p))?;
    }
    let args = run_args(p)?;
    let (benchmark, _) = benchmark_for(p.workload, p.seek_nexts)?;
    eprintln!("db_bench: {benchmark} for {} s ...", p.duration);
    let out = run(&bin, &args)?;
    let ops_per_s = parse_ops_per_sec(&out, benchmark)
        .ok_or_else(|| anyhow!("no `{benchmark} : ... ops/sec` line in db_bench's output"))?;
    Ok(DbBenchResult {
        benchmark,
        ops_per_s,
        command: format!("{} {}", bin.display(), args.join(" ")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(workload: char) -> DbBenchParams {
        DbBenchParams {
            workload,
            records: 1_000_000,
            key_size: 8,
            value_size: 992,
            cache_bytes: 128 << 20,
            threads: 16,
            seek_nexts: 50,
            duration: 30,
            db: PathBuf::from("/tmp/x"),
        }
    }

    fn has(args: &[String], flag: &str) -> bool {
        args.iter().any(|a| a == flag)
    }

    #[test]
    fn workloads_map_to_db_bench_benchmarks() {
        let e = run_args(&params('e')).unwrap();
        assert!(has(&e, "--benchmarks=seekrandom"), "{e:?}");
        assert!(has(&e, "--seek_nexts=50"), "{e:?}");
        let a = run_args(&params('a')).unwrap();
        assert!(has(&a, "--benchmarks=readrandomwriterandom"), "{a:?}");
        assert!(has(&a, "--readwritepercent=50"), "{a:?}");
        let b = run_args(&params('b')).unwrap();
        assert!(has(&b, "--readwritepercent=95"), "{b:?}");
        let c = run_args(&params('c')).unwrap();
        assert!(has(&c, "--benchmarks=readrandom"), "{c:?}");
        assert!(!c.iter().any(|x| x.starts_with("--seek_nexts")), "{c:?}");
        assert!(run_args(&params('f')).is_err());
    }

    #[test]
    fn run_matches_the_engine_run() {
        for w in ['a', 'c', 'e'] {
            let r = run_args(&params(w)).unwrap();
            for flag in [
                "--num=1000000",
                "--key_size=8",
                "--value_size=992",
                "--cache_size=134217728",
                "--use_direct_reads=true",
                "--threads=16",
                "--duration=30",
                "--use_existing_db=true",
                "--db=/tmp/x",
            ] {
                assert!(has(&r, flag), "{w}: {flag} missing from {r:?}");
            }
        }
        let l = load_args(&params('e'));
        assert!(has(&l, "--benchmarks=fillrandom,compact"), "{l:?}");
        assert!(
            has(&l, "--num=1000000") && has(&l, "--value_size=992"),
            "{l:?}"
        );
        assert!(!has(&l, "--use_existing_db=true"), "{l:?}");
    }

    #[test]
    fn parses_db_bench_report_lines() {
        let out = "RocksDB:    version 7.8.3\n\
                   Keys:       8 bytes each\n\
                   DB path: [/tmp/x]\n\
                   seekrandom   :     126.771 micros/op 7888 ops/sec 30.004 seconds 236656 operations; (236431 of 236656 found)\n";
        assert_eq!(parse_ops_per_sec(out, "seekrandom"), Some(7888.0));
        assert_eq!(parse_ops_per_sec(out, "readrandom"), None);
        let rw = "readrandomwriterandom :      21.0 micros/op 47600 ops/sec 30.0 seconds 1428000 operations; ( reads:714000 writes:714000 total:1428000 found:714000)\n";
        assert_eq!(
            parse_ops_per_sec(rw, "readrandomwriterandom"),
            Some(47600.0)
        );
        // `readrandom` must not match the `readrandomwriterandom` line.
        assert_eq!(parse_ops_per_sec(rw, "readrandom"), None);
    }
}
