//! The KVell-derived storage engine.
//!
//! Design (after KVell, SOSP'19, with its sharp edges removed; the byte layout is in
//! `docs/STORAGE.md`):
//! - **Shared-nothing workers.** Key `k` belongs to worker [`KeyRouter::partition_of`]`(k)` =
//!   [`fnv1a64`]`(k) mod W`. Each [`Worker`] owns its slab files, index, page cache and I/O
//!   queue; nothing is locked on the common path.
//! - **Items unsorted on disk** in fixed-size slots of slab files, one file per (worker, size
//!   class) ([`slab`]); every record carries a per-worker sequence number and a CRC32C
//!   ([`record`]). No commit log, no compaction.
//! - **Ordered in-memory index** of full keys, lexicographic.
//! - **Batched asynchronous I/O** behind a storage [`backend`]: io_uring by default (queue
//!   depth 64), pread / pwrite where io_uring is unavailable, [`SimDisk`] in tests. A put or
//!   delete completes only after its block write completed; see [`SyncMode`] for power loss.
//! - **Recovery** rebuilds everything by reading the slabs sequentially at open.
//!
//! Two APIs:
//! - [`Engine`]: blocking `get` / `put` / `delete` / `scan`, one thread per worker. For
//!   tools and tests.
//! - [`open_workers`]: the W [`Worker`]s themselves, each to be moved to (and polled by) a
//!   thread that may also run an RPC event loop: [`Worker::submit`] + [`Worker::poll`].
//!
//! Both run on a real directory ([`Disk`]) or on any [`Storage`] ([`open_workers_with`],
//! [`Engine::open_with`]), such as the simulated disk of the tests.
//!
//! ```
//! use kv_engine::{Engine, EngineConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let engine = Engine::open(dir.path(), EngineConfig::default())?;
//! engine.put(b"apple", b"red")?;
//! engine.put(b"banana", b"yellow")?;
//! assert_eq!(engine.get(b"apple")?, Some(b"red".to_vec()));
//! assert_eq!(engine.scan(b"b", 10)?, vec![(b"banana".to_vec(), b"yellow".to_vec())]);
//! assert!(engine.delete(b"apple")?);
//! assert_eq!(engine.get(b"apple")?, None);
//! engine.close();
//! // Everything acknowledged is still there after reopening.
//! let engine = Engine::open(dir.path(), EngineConfig::default())?;
//! assert_eq!(engine.get(b"banana")?, Some(b"yellow".to_vec()));
//! # Ok(()) }
//! ```
//!
//! Requirements: Linux, and a data directory on a file system that supports O_DIRECT (not
//! tmpfs: else [`Error::DirectIoUnsupported`]). io_uring is used where the kernel allows it
//! ([`IoMode`]).
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod backend;
mod blocking;
mod error;
mod freelist;
pub mod index;
pub mod manifest;
mod pagecache;
pub mod record;
mod recovery;
pub mod slab;
mod worker;

use std::path::Path;

pub use backend::{Backend, BackendOptions, Disk, DiskBackend, IoMode, SimDisk, Storage};
pub use blocking::Engine;
pub use error::{Error, Result};
pub use kv_proto::{fnv1a64, merge_scan, KeyRouter, MAX_KEY_LEN, MAX_VALUE_LEN};
pub use kv_proto::{Op, Reply};
pub use manifest::recorded_workers;
pub use recovery::RecoveryStats;
pub use worker::{choose_scan_keys, CachedGet, Completion, Worker, WorkerStats};

/// Durability of acknowledged writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// **Default.** A write is acknowledged when its O_DIRECT block write has completed: it
    /// survives the process being killed, but may sit in a volatile device cache and be
    /// lost on power failure (KVell's behaviour).
    #[default]
    None,
    /// Slab files are opened with `O_DSYNC`, and a new slab file's directory entry is made
    /// durable (`fsync` of the directory) before anything written into it is acknowledged: an
    /// acknowledged write is on stable storage, so it survives power loss too. Slower on
    /// devices with volatile caches.
    Dsync,
}

/// Engine configuration.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Number of workers W (default 2). Recorded in the manifest: reopening with another W
    /// fails with [`Error::WorkerCountMismatch`].
    pub workers: usize,
    /// Total page cache size in bytes, split evenly between workers (default 64 MiB).
    pub cache_bytes: usize,
    /// Maximum I/Os in flight per worker (default 64).
    pub queue_depth: u32,
    /// Durability of acknowledged writes (default [`SyncMode::None`]).
    pub sync: SyncMode,
    /// Optional cap on each slab file's size in bytes: growing past it fails with an I/O
    /// error (`ENOSPC`), like a full disk. `None` (default) = no cap.
    pub max_file_bytes: Option<u64>,
    /// Block I/O of a real [`Disk`] (default [`IoMode::Auto`]: io_uring if available).
    pub io: IoMode,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            cache_bytes: 64 << 20,
            queue_depth: 64,
            sync: SyncMode::None,
            max_file_bytes: None,
            io: IoMode::Auto,
        }
    }
}

/// The opened workers of a data directory.
pub struct OpenedWorkers<B: Backend = DiskBackend> {
    /// One per worker, `workers[i].id() == i`.
    pub workers: Vec<Worker<B>>,
    /// The key → worker function.
    pub router: KeyRouter,
    /// What recovery found (summed over workers).
    pub recovery: RecoveryStats,
}

/// Opens (creating if needed) the data directory `dir` on the real disk; see
/// [`open_workers_with`].
///
/// Driving a worker by hand, as a thread that also serves the network would:
///
/// ```
/// use kv_engine::{open_workers, EngineConfig, Op, Reply};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dir = tempfile::tempdir()?;
/// let config = EngineConfig { workers: 1, ..EngineConfig::default() };
/// let mut opened = open_workers(dir.path(), &config)?;
/// let worker = &mut opened.workers[0];
/// worker.submit(Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }, 1);
/// worker.submit(Op::Get { key: b"nope".to_vec() }, 2);
/// let mut done = Vec::new();
/// while done.len() < 2 {
///     worker.poll(&mut done); // non-blocking: reap, run, submit one batch
///     if done.len() < 2 {
///         worker.wait()?; // nothing else to do: sleep until an I/O completes
///     }
/// }
/// done.sort_by_key(|c| c.tag);
/// assert!(matches!(done[0].result, Ok(Reply::Written)));
/// assert!(matches!(done[1].result, Ok(Reply::NotFound)));
/// # Ok(()) }
/// ```
pub fn open_workers(dir: impl AsRef<Path>, config: &EngineConfig) -> Result<OpenedWorkers> {
    open_workers_with(&Disk::new(dir), config)
}

/// Opens (creating if needed) a data directory: checks or writes the manifest, recovers every
/// worker (in parallel, each through its own backend) and returns the workers, ready to be
/// moved to their threads.
pub fn open_workers_with<S: Storage>(
    storage: &S,
    config: &EngineConfig,
) -> Result<OpenedWorkers<S::Backend>> {
    let w = config.workers;
    if w == 0 || w > 4096 {
        return Err(Error::InvalidConfig(format!(
            "workers must be 1..=4096, got {w}"
        )));
    }
    if config.queue_depth == 0 || config.queue_depth > 4096 {
        return Err(Error::InvalidConfig(format!(
            "queue_depth must be 1..=4096, got {}",
            config.queue_depth
        )));
    }
    storage.prepare()?;
    manifest::check_or_create(storage, w as u32)?;
    let mut per_worker: Vec<Vec<u8>> = vec![Vec::new(); w];
    let listing = storage
        .list()
        .map_err(|e| Error::io("listing the data directory", e))?;
    for name in listing {
        if !name.ends_with(".slab") {
            continue;
        }
        let Some((wid, class)) = slab::parse_file_name(&name) else {
            return Err(Error::UnknownFormat(format!("unexpected slab file {name}")));
        };
        match per_worker.get_mut(wid) {
            Some(v) => v.push(class),
            None => {
                return Err(Error::UnknownFormat(format!(
                    "slab file {name} belongs to worker {wid} but W = {w}"
                )))
            }
        }
    }
    let dsync = config.sync == SyncMode::Dsync;
    let opts = BackendOptions {
        queue_depth: config.queue_depth,
        dsync,
        io: config.io,
    };
    let start = std::time::Instant::now();
    let recovered = std::thread::scope(|s| {
        let handles: Vec<_> = per_worker
            .iter()
            .enumerate()
            .map(|(i, classes)| {
                s.spawn(move || -> Result<_> {
                    let mut backend = storage.backend(i, opts)?;
                    let rec =
                        recovery::recover_worker(&mut backend, i, classes, config.max_file_bytes)?;
                    Ok((rec, backend))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Error::InvalidConfig("a recovery thread panicked".into()))
                })
            })
            .collect::<Vec<_>>()
    });
    let cache_per_worker = config.cache_bytes / w;
    let mut workers = Vec::with_capacity(w);
    let mut stats = RecoveryStats::default();
    for (id, r) in recovered.into_iter().enumerate() {
        let (rec, backend) = r?;
        stats.merge(&rec.stats);
        let params = worker::WorkerParams {
            id,
            dsync,
            max_file_bytes: config.max_file_bytes,
            cache_bytes: cache_per_worker,
            queue_depth: config.queue_depth,
        };
        workers.push(Worker::new(params, rec, backend));
    }
    stats.elapsed = start.elapsed();
    let secs = stats.elapsed.as_secs_f64();
    tracing::info!(
        workers = w,
        backend = workers.first().map_or("", |w| w.stats().backend),
        items = stats.live,
        corrupt = stats.corrupt,
        mb = stats.bytes_read as f64 / 1e6,
        secs,
        mb_per_s = stats.bytes_read as f64 / 1e6 / secs.max(1e-9),
        "engine recovered"
    );
    Ok(OpenedWorkers {
        workers,
        router: KeyRouter::new(w),
        recovery: stats,
    })
}
