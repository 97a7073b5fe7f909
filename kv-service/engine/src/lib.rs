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
//!   depth 64), pread / pwrite where io_uring is unavailable, [`SimDisk`] in tests.
//! - **Named durability modes** ([`Durability`]): a put or delete is acknowledged after the
//!   O_DIRECT write of its page (`Page`, KVell's), or once its record is in a small staging
//!   ring that is flushed at least every interval (`Periodic`, the default: Redis's
//!   `appendfsync everysec` promise) or on stable storage, group-committed (`Sync`); in the
//!   staged modes pages are written back later, many changes per page write ([`staging`]).
//! - **Recovery** rebuilds everything by reading the slabs sequentially at open, after
//!   applying what the staging area holds.
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
pub mod staging;
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

/// When an acknowledged put or delete is durable: what it survives (`docs/STORAGE.md`,
/// Durability, has the promises in full and the tests that prove them).
///
/// | mode | acknowledged once | process crash (`kill -9`) | power cut |
/// |---|---|---|---|
/// | `Page` | its page's O_DIRECT write completed | survives | no promise (the device's volatile cache) |
/// | `Periodic` | its record is written to the staging area (in the kernel) | survives | loses at most the writes acknowledged since the last completed flush began; a flush begins at most `interval` after the first write it covers |
/// | `Sync` | its record's O_DSYNC write to the staging area completed (one write per group of operations) | survives | survives |
///
/// In every mode a key reads, after a crash, as its last acknowledged value or a newer one
/// (`Periodic` after a power cut: the last one a completed flush covered, or a newer one),
/// never an older one; in `Periodic` and `Sync` a torn page write cannot lose an item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// KVell's: the page holding the item is written in place with O_DIRECT and the write is
    /// acknowledged when that completed. One random page write per change (writes to a page
    /// already queued join it).
    Page,
    /// **Default.** The record goes to the staging area with one buffered write per poll and
    /// is acknowledged at once; the staging area is flushed (`fdatasync`) at most `interval`
    /// after the first write not yet flushed — Redis's `appendonly yes` with `appendfsync
    /// everysec`. Pages are written back later, in batches.
    Periodic {
        /// Longest a write waits for its flush to begin (default 1 s).
        interval: std::time::Duration,
    },
    /// The record goes to the staging area with an O_DIRECT | O_DSYNC write and is
    /// acknowledged when that completed: on stable storage. One write (one device flush) at a
    /// time carries every record that arrived meanwhile (group commit). Redis's
    /// `appendfsync always`.
    Sync,
}

impl Default for Durability {
    fn default() -> Self {
        Durability::Periodic {
            interval: std::time::Duration::from_secs(1),
        }
    }
}

impl Durability {
    /// Whether the mode writes through the staging area (`Periodic`, `Sync`).
    pub fn is_staged(&self) -> bool {
        !matches!(self, Durability::Page)
    }

    /// The mode's name as the `--durability` flag spells it: `page`, `periodic`, `sync`.
    pub fn name(&self) -> &'static str {
        match self {
            Durability::Page => "page",
            Durability::Periodic { .. } => "periodic",
            Durability::Sync => "sync",
        }
    }
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Periodic { interval } => {
                write!(f, "periodic ({interval:?} flush interval)")
            }
            other => f.write_str(other.name()),
        }
    }
}

/// Default size of each worker's staging area ([`EngineConfig::stage_bytes`]).
pub const DEFAULT_STAGE_BYTES: u64 = 64 << 20;

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
    /// When an acknowledged write is durable (default [`Durability::Periodic`], 1 s).
    pub durability: Durability,
    /// Bytes of each worker's staging area in the staged modes (default 64 MiB; 256 KiB to
    /// 1 GiB). A record must fit a quarter of it, up to 4 MiB: the default holds every
    /// record. The staging area is read whole into memory at recovery.
    pub stage_bytes: u64,
    /// Optional cap on each slab file's size in bytes: growing past it fails with an I/O
    /// error (`ENOSPC`), like a full disk. `None` (default) = no cap.
    pub max_file_bytes: Option<u64>,
    /// Block I/O of a real [`Disk`] (default [`IoMode::Auto`]: io_uring if available).
    pub io: IoMode,
    /// Background reorganisation (docs/STORAGE.md): at most this many items a worker moves
    /// next to their neighbours in index order per round, a round starting only when the
    /// worker has no client operation outstanding and the previous round is finished — so a
    /// request arriving meanwhile waits behind at most one round's I/O (about 2.5 block I/Os
    /// per item). Default 0: off; [`DEFAULT_REORG_BATCH`] is the suggested value when on.
    /// [`Worker::set_reorg_batch`] changes it on a running worker.
    pub reorg_batch: usize,
    /// Read neighbouring blocks with one request (default true): reads queued one after
    /// another for blocks of one class lying close together in its slab file — a scan's
    /// missing blocks, in key order, which after the reorganisation is file order — go to the
    /// backend as one read of up to 64 KiB (at most 2 unneeded blocks read through between
    /// two needed ones), each block landing in the page cache as if read alone. False: one
    /// read per block.
    pub coalesce_reads: bool,
}

/// A suggested [`EngineConfig::reorg_batch`] (what `kv-bench engine --reorganise 64`
/// measured): 16 blocks of 1 KiB items per round.
pub const DEFAULT_REORG_BATCH: usize = 64;

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            cache_bytes: 64 << 20,
            queue_depth: 64,
            durability: Durability::default(),
            stage_bytes: DEFAULT_STAGE_BYTES,
            max_file_bytes: None,
            io: IoMode::Auto,
            reorg_batch: 0,
            coalesce_reads: true,
        }
    }
}

/// Creates worker `id`'s staging file (`ring` bytes after its header page), durably: its
/// length, its header and its directory entry are on stable storage before anything in it
/// is acknowledged.
fn create_stage<B: Backend>(
    backend: &mut B,
    id: usize,
    ring: u64,
    interval_ns: Option<u64>,
) -> Result<worker::StageFile> {
    use std::hash::{BuildHasher, Hasher};
    let ring = ring / 4096 * 4096;
    let mode = if interval_ns.is_some() {
        backend::FileMode::Buffered
    } else {
        backend::FileMode::DirectSync
    };
    let name = staging::file_name(id);
    let file = backend.open(&name, true, mode)?;
    let ctx = "creating the staging file";
    backend
        .grow(file, staging::RING_START + ring)
        .map_err(|e| Error::io(ctx, e))?;
    // The salt: random (the hasher's keys come from the OS), so no value written through the
    // engine can hold a chunk with the right CRC.
    let salt = {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_usize(id);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        h.finish()
    };
    let mut page = backend::AlignedBuf::zeroed(staging::RING_START as usize);
    if let Some(dst) = page.as_mut_slice().get_mut(..40) {
        dst.copy_from_slice(&staging::encode_header(salt, ring));
    }
    backend
        .write_at(file, &page, staging::RING_START as usize, 0)
        .map_err(|e| Error::io(ctx, e))?;
    backend.sync(file).map_err(|e| Error::io(ctx, e))?;
    backend.sync_dir().map_err(|e| Error::io(ctx, e))?;
    Ok(worker::StageFile {
        file,
        salt,
        ring,
        interval_ns,
    })
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
    if !(256 << 10..=1 << 30).contains(&config.stage_bytes) {
        return Err(Error::InvalidConfig(format!(
            "stage_bytes must be 256 KiB to 1 GiB, got {}",
            config.stage_bytes
        )));
    }
    let interval_ns = match config.durability {
        Durability::Periodic { interval } if interval.is_zero() => {
            return Err(Error::InvalidConfig(
                "the periodic flush interval must be positive".into(),
            ))
        }
        Durability::Periodic { interval } => {
            Some(u64::try_from(interval.as_nanos()).unwrap_or(u64::MAX))
        }
        _ => None,
    };
    let staged = config.durability.is_staged();
    storage.prepare()?;
    manifest::check_or_create(storage, w as u32, staged)?;
    let mut per_worker: Vec<Vec<u8>> = vec![Vec::new(); w];
    let mut stage_files = vec![false; w];
    let listing = storage
        .list()
        .map_err(|e| Error::io("listing the data directory", e))?;
    for name in listing {
        if let Some(wid) = staging::parse_file_name(&name) {
            match stage_files.get_mut(wid) {
                Some(s) => *s = true,
                None => {
                    return Err(Error::UnknownFormat(format!(
                        "staging file {name} belongs to worker {wid} but W = {w}"
                    )))
                }
            }
            continue;
        }
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
    let opts = BackendOptions {
        queue_depth: config.queue_depth,
        io: config.io,
    };
    let start = std::time::Instant::now();
    let recovered = std::thread::scope(|s| {
        let handles: Vec<_> = per_worker
            .iter()
            .zip(&stage_files)
            .enumerate()
            .map(|(i, (classes, &has_stage))| {
                s.spawn(move || -> Result<_> {
                    let mut backend = storage.backend(i, opts)?;
                    let rec = recovery::recover_worker(
                        &mut backend,
                        i,
                        classes,
                        config.max_file_bytes,
                        has_stage,
                    )?;
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
        let (rec, mut backend) = r?;
        stats.merge(&rec.stats);
        // What the old staging file held is in the slabs now (synced): start afresh.
        if stage_files.get(id).copied().unwrap_or(false) {
            storage
                .remove_file(&staging::file_name(id))
                .map_err(|e| Error::io("removing an applied staging file", e))?;
        }
        let stage = match staged {
            true => Some(create_stage(
                &mut backend,
                id,
                config.stage_bytes,
                interval_ns,
            )?),
            false => None,
        };
        let params = worker::WorkerParams {
            id,
            max_file_bytes: config.max_file_bytes,
            cache_bytes: cache_per_worker,
            queue_depth: config.queue_depth,
            stage,
            reorg_batch: config.reorg_batch,
            coalesce_reads: config.coalesce_reads,
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
