//! `SimDisk`: a simulated data directory for deterministic tests of the engine and the
//! service.
//!
//! It keeps two images of every file, after redb's crash tests: the **live** image (what a
//! read sees: every completed write) and the **durable** image (what survives power loss:
//! writes to files opened with `O_DSYNC`, files after `fsync`, and the directory's entries
//! after an `fsync` of the directory). On top of that:
//!
//! - **Reordered completions.** I/O submitted by a worker is in flight until a reap; each reap
//!   completes each request in flight with a set chance (default ½), and hands the completed
//!   ones back in a shuffled order. One seeded generator decides everything, so a test that
//!   makes the same calls sees the same disk.
//! - **Faults at chosen points** ([`SimDisk::fail_write`], [`SimDisk::fail_read`]): the n-th
//!   read or write issued from now fails with EIO or ENOSPC, transfers only a prefix (a short
//!   write or read), or is torn (some 512-byte sectors land, then EIO); random read and write
//!   errors at a set rate ([`SimDisk::set_random_faults`]); a capacity beyond which growing a
//!   file is `ENOSPC` ([`SimDisk::set_capacity`]).
//! - **Crashes.** [`SimDisk::crash`] is a process crash: completed writes stay (the kernel
//!   has them), each write in flight lands whole or not at all. [`SimDisk::power_cut`] keeps
//!   only the durable image: a file whose directory entry was never made durable is gone, a
//!   write that was completed but not durable survives sector by sector at random, and a
//!   write in flight is torn at 512-byte sectors. Either way the backends in use die (every
//!   later call fails with EIO); open the engine again on the same `SimDisk` to recover.
//!
//! ```
//! use kv_engine::{open_workers_with, Durability, EngineConfig, Op, Reply, SimDisk};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let disk = SimDisk::new(7);
//! let config = EngineConfig {
//!     workers: 1,
//!     durability: Durability::Sync,
//!     stage_bytes: 1 << 20,
//!     ..EngineConfig::default()
//! };
//! let mut opened = open_workers_with(&disk, &config)?;
//! let w = &mut opened.workers[0];
//! w.submit(Op::Put { key: b"k".to_vec(), value: b"v".to_vec() }, 1);
//! let mut done = Vec::new();
//! while done.is_empty() {
//!     w.poll(&mut done);
//!     w.wait()?; // the simulated disk completes something
//! }
//! assert!(matches!(done[0].result, Ok(Reply::Written)));
//! disk.power_cut(); // acknowledged with --sync: it must survive
//! drop(opened);
//! let engine = kv_engine::Engine::open_with(&disk, config)?;
//! assert_eq!(engine.get(b"k")?, Some(b"v".to_vec()));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use super::aligned::AlignedBuf;
use super::{Backend, BackendOptions, FileId, FileMode, IoCompletion, IoKind, IoRequest, Storage};
use crate::error::{Error, Result};

/// Granularity of tearing: a write may land partly, in units of this many bytes.
pub const SECTOR: usize = 512;

/// A fault injected into one read or write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with `EIO`; nothing is transferred.
    Eio,
    /// Fails with `ENOSPC`; nothing is transferred.
    NoSpace,
    /// Transfers only the first `n` bytes and says so (a short read or write).
    Short(usize),
    /// A write lands partly — each 512-byte sector or not, at random — and fails with `EIO`
    /// (for a read: as [`Fault::Eio`]).
    Torn,
}

/// Counters of a [`SimDisk`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Block reads completed (faulty ones included).
    pub reads: u64,
    /// Block writes completed (faulty ones included).
    pub writes: u64,
    /// Faults injected.
    pub faults: u64,
    /// `fsync`s of files.
    pub syncs: u64,
    /// `fsync`s of the directory.
    pub dir_syncs: u64,
    /// Files created.
    pub creates: u64,
    /// Crashes and power cuts.
    pub crashes: u64,
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    live: Vec<u8>,
    durable: Vec<u8>,
    /// Whether the directory entry survives power loss.
    entry_durable: bool,
}

/// An I/O issued to the simulated device.
struct Issued {
    backend: u64,
    file: String,
    dsync: bool,
    fault: Option<Fault>,
    req: IoRequest,
}

struct State {
    rng: u64,
    epoch: u64,
    next_backend: u64,
    files: BTreeMap<String, SimFile>,
    issued: Vec<Issued>,
    completion_chance: f64,
    /// Backends that must complete at least one I/O at their next reap.
    forced: HashMap<u64, bool>,
    capacity: Option<u64>,
    read_faults: BTreeMap<u64, Fault>,
    write_faults: BTreeMap<u64, Fault>,
    sync_faults: BTreeMap<u64, Fault>,
    reads_issued: u64,
    writes_issued: u64,
    syncs_issued: u64,
    random_read_eio: f64,
    random_write_eio: f64,
    random_sync_eio: f64,
    stats: SimStats,
}

impl State {
    fn next_u64(&mut self) -> u64 {
        // splitmix64.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn coin(&mut self) -> bool {
        self.next_u64() & 1 == 1
    }

    fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.live.len() as u64).sum()
    }

    /// Carries out an issued I/O against the live image (and the durable one for an O_DSYNC
    /// write); returns its completion.
    fn complete(&mut self, io: Issued) -> IoCompletion {
        let Issued {
            file,
            dsync,
            fault,
            mut req,
            ..
        } = io;
        let len = req.len.min(req.buf.len());
        let off = usize::try_from(req.offset).unwrap_or(usize::MAX);
        let result = match req.kind {
            IoKind::Read => {
                self.stats.reads += 1;
                match fault {
                    Some(Fault::Eio | Fault::Torn) => Err(io::Error::from_raw_os_error(libc::EIO)),
                    Some(Fault::NoSpace) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
                    Some(Fault::Short(n)) => Ok(self.read(&file, &mut req.buf, off, n.min(len))),
                    None => Ok(self.read(&file, &mut req.buf, off, len)),
                }
            }
            IoKind::Sync => {
                self.stats.syncs += 1;
                match fault {
                    Some(Fault::NoSpace) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
                    Some(_) => Err(io::Error::from_raw_os_error(libc::EIO)),
                    None => {
                        if let Some(f) = self.files.get_mut(&file) {
                            f.durable = f.live.clone();
                        }
                        Ok(0)
                    }
                }
            }
            IoKind::Write => {
                self.stats.writes += 1;
                let bytes = req.buf.as_slice().get(..len).unwrap_or_default();
                match fault {
                    Some(Fault::Eio) => Err(io::Error::from_raw_os_error(libc::EIO)),
                    Some(Fault::NoSpace) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
                    Some(Fault::Short(n)) => {
                        let n = n.min(len);
                        let part = bytes.get(..n).unwrap_or_default().to_vec();
                        self.write(&file, off, &part, dsync, None);
                        Ok(n)
                    }
                    Some(Fault::Torn) => {
                        let bytes = bytes.to_vec();
                        let mask = self.sector_mask(bytes.len());
                        self.write(&file, off, &bytes, dsync, Some(&mask));
                        Err(io::Error::from_raw_os_error(libc::EIO))
                    }
                    None => {
                        let bytes = bytes.to_vec();
                        self.write(&file, off, &bytes, dsync, None);
                        Ok(len)
                    }
                }
            }
        };
        IoCompletion {
            tag: req.tag,
            kind: req.kind,
            buf: req.buf,
            result,
        }
    }

    fn read(&mut self, file: &str, buf: &mut AlignedBuf, off: usize, len: usize) -> usize {
        let Some(f) = self.files.get(file) else {
            return 0;
        };
        let end = off.saturating_add(len).min(f.live.len());
        let Some(src) = f.live.get(off..end) else {
            return 0;
        };
        if let Some(dst) = buf.as_mut_slice().get_mut(..src.len()) {
            dst.copy_from_slice(src);
        }
        src.len()
    }

    /// A random choice of sectors for `len` bytes.
    fn sector_mask(&mut self, len: usize) -> Vec<bool> {
        (0..len.div_ceil(SECTOR)).map(|_| self.coin()).collect()
    }

    /// Writes `bytes` at `off` of the live image (growing the file as a write past its end
    /// does), only the sectors `mask` selects if given; an O_DSYNC write also reaches the
    /// durable image, with the file's length.
    fn write(&mut self, file: &str, off: usize, bytes: &[u8], dsync: bool, mask: Option<&[bool]>) {
        let Some(f) = self.files.get_mut(file) else {
            return;
        };
        let end = off.saturating_add(bytes.len());
        if f.live.len() < end {
            f.live.resize(end, 0);
        }
        for (i, chunk) in bytes.chunks(SECTOR).enumerate() {
            if mask.is_some_and(|m| !m.get(i).copied().unwrap_or(false)) {
                continue;
            }
            let at = off + i * SECTOR;
            if let Some(dst) = f.live.get_mut(at..at + chunk.len()) {
                dst.copy_from_slice(chunk);
            }
            if dsync {
                if f.durable.len() < f.live.len() {
                    f.durable.resize(f.live.len(), 0);
                }
                if let Some(dst) = f.durable.get_mut(at..at + chunk.len()) {
                    dst.copy_from_slice(chunk);
                }
            }
        }
        if dsync && f.durable.len() < f.live.len() {
            // O_DSYNC makes the metadata needed to read the data back durable: the length.
            f.durable.resize(f.live.len(), 0);
        }
    }
}

/// A simulated data directory (cheap to clone: clones share the disk). See the
/// [module documentation](self).
#[derive(Clone)]
pub struct SimDisk {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDisk")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl SimDisk {
    /// An empty disk whose random choices come from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                rng: seed,
                epoch: 0,
                next_backend: 0,
                files: BTreeMap::new(),
                issued: Vec::new(),
                completion_chance: 0.5,
                forced: HashMap::new(),
                capacity: None,
                read_faults: BTreeMap::new(),
                write_faults: BTreeMap::new(),
                sync_faults: BTreeMap::new(),
                reads_issued: 0,
                writes_issued: 0,
                syncs_issued: 0,
                random_read_eio: 0.0,
                random_write_eio: 0.0,
                random_sync_eio: 0.0,
                stats: SimStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panicking test thread leaves consistent state behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The chance that a reap completes a given request in flight (default 0.5; 1.0 completes
    /// everything at once, still in shuffled order).
    pub fn set_completion_chance(&self, p: f64) {
        self.lock().completion_chance = p.clamp(0.0, 1.0);
    }

    /// Total bytes the files may occupy: growing past it is `ENOSPC`. `None`: unlimited.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// The `nth` block write issued from now (1 = the next one) gets `fault`.
    pub fn fail_write(&self, nth: u64, fault: Fault) {
        let mut s = self.lock();
        let at = s.writes_issued + nth.max(1);
        s.write_faults.insert(at, fault);
    }

    /// The `nth` block read issued from now (1 = the next one) gets `fault`.
    pub fn fail_read(&self, nth: u64, fault: Fault) {
        let mut s = self.lock();
        let at = s.reads_issued + nth.max(1);
        s.read_faults.insert(at, fault);
    }

    /// The `nth` asynchronous sync ([`IoKind::Sync`]) issued from now
    /// gets `fault` (any fault but [`Fault::NoSpace`] fails it with EIO); nothing is made
    /// durable.
    pub fn fail_sync(&self, nth: u64, fault: Fault) {
        let mut s = self.lock();
        let at = s.syncs_issued + nth.max(1);
        s.sync_faults.insert(at, fault);
    }

    /// Every block read fails with EIO with chance `read`, every write with chance `write`
    /// (nothing transferred).
    pub fn set_random_faults(&self, read: f64, write: f64) {
        let mut s = self.lock();
        s.random_read_eio = read;
        s.random_write_eio = write;
    }

    /// Every asynchronous sync ([`IoKind::Sync`]) fails with EIO with
    /// chance `p` (nothing is made durable).
    pub fn set_random_sync_faults(&self, p: f64) {
        self.lock().random_sync_eio = p;
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.lock().stats
    }

    /// Block I/Os issued to the device and not completed yet, over all backends.
    pub fn in_flight(&self) -> usize {
        self.lock().issued.len()
    }

    /// The files and their live lengths, by name.
    pub fn files(&self) -> Vec<(String, u64)> {
        self.lock()
            .files
            .iter()
            .map(|(n, f)| (n.clone(), f.live.len() as u64))
            .collect()
    }

    /// The live image of a file (what a read sees now).
    pub fn live_image(&self, name: &str) -> Option<Vec<u8>> {
        self.lock().files.get(name).map(|f| f.live.clone())
    }

    /// Overwrites bytes of a file's live and durable images (a bit rot, for tests).
    pub fn corrupt(&self, name: &str, offset: usize, bytes: &[u8]) {
        if let Some(f) = self.lock().files.get_mut(name) {
            for img in [&mut f.live, &mut f.durable] {
                if let Some(dst) = img.get_mut(offset..offset + bytes.len()) {
                    dst.copy_from_slice(bytes);
                }
            }
        }
    }

    /// A process crash: every completed write stays; each write in flight lands whole or not
    /// at all; the backends in use die.
    pub fn crash(&self) {
        let mut s = self.lock();
        let issued = std::mem::take(&mut s.issued);
        for io in issued {
            if io.req.kind == IoKind::Write && s.coin() {
                let len = io.req.len.min(io.req.buf.len());
                let bytes = io
                    .req
                    .buf
                    .as_slice()
                    .get(..len)
                    .unwrap_or_default()
                    .to_vec();
                let off = usize::try_from(io.req.offset).unwrap_or(usize::MAX);
                s.write(&io.file, off, &bytes, io.dsync, None);
            }
        }
        s.epoch += 1;
        s.stats.crashes += 1;
    }

    /// A power cut: only the durable image survives, and what was on its way there survives
    /// in part (see the [module documentation](self)); the backends in use die.
    pub fn power_cut(&self) {
        let mut s = self.lock();
        let issued = std::mem::take(&mut s.issued);
        let names: Vec<String> = s.files.keys().cloned().collect();
        for name in names {
            let Some(f) = s.files.get(&name).cloned() else {
                continue;
            };
            if !f.entry_durable {
                s.files.remove(&name);
                continue;
            }
            // The length: durable, or the newer one if its metadata happened to reach the disk.
            let len = if f.durable.len() != f.live.len() && s.coin() {
                f.live.len()
            } else {
                f.durable.len()
            };
            let mut image = f.durable.clone();
            image.resize(len, 0);
            // Completed but not durable: each sector may or may not have been written back.
            for start in (0..len).step_by(SECTOR) {
                let end = (start + SECTOR).min(len);
                let (Some(new), Some(old)) = (f.live.get(start..end), image.get(start..end)) else {
                    continue;
                };
                if new != old && s.coin() {
                    let new = new.to_vec();
                    if let Some(dst) = image.get_mut(start..end) {
                        dst.copy_from_slice(&new);
                    }
                }
            }
            // In flight: torn at sectors.
            for io in issued.iter().filter(|io| io.file == name) {
                if io.req.kind != IoKind::Write {
                    continue;
                }
                let n = io.req.len.min(io.req.buf.len());
                let off = usize::try_from(io.req.offset).unwrap_or(usize::MAX);
                let bytes = io.req.buf.as_slice().get(..n).unwrap_or_default();
                for (i, chunk) in bytes.chunks(SECTOR).enumerate() {
                    let at = off.saturating_add(i * SECTOR);
                    if s.coin() {
                        if let Some(dst) = image.get_mut(at..at + chunk.len()) {
                            dst.copy_from_slice(chunk);
                        }
                    }
                }
            }
            s.files.insert(
                name,
                SimFile {
                    live: image.clone(),
                    durable: image,
                    entry_durable: true,
                },
            );
        }
        s.epoch += 1;
        s.stats.crashes += 1;
    }
}

impl Storage for SimDisk {
    type Backend = SimBackend;

    fn prepare(&self) -> Result<()> {
        Ok(())
    }

    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().files.keys().cloned().collect())
    }

    fn read_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.lock().files.get(name).map(|f| f.live.clone()))
    }

    fn write_file_durably(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let mut s = self.lock();
        s.stats.creates += 1;
        s.stats.syncs += 1;
        s.stats.dir_syncs += 1;
        s.files.insert(
            name.to_string(),
            SimFile {
                live: data.to_vec(),
                durable: data.to_vec(),
                entry_durable: true,
            },
        );
        Ok(())
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        self.lock().files.remove(name);
        Ok(())
    }

    fn backend(&self, _worker: usize, opts: BackendOptions) -> Result<SimBackend> {
        let mut s = self.lock();
        let id = s.next_backend;
        s.next_backend += 1;
        Ok(SimBackend {
            disk: self.clone(),
            id,
            epoch: s.epoch,
            files: Vec::new(),
            depth: opts.queue_depth.max(1) as usize,
            queued: Vec::new(),
            issued: 0,
            dead: Vec::new(),
            calls: 0,
        })
    }
}

/// One worker's view of a [`SimDisk`].
pub struct SimBackend {
    disk: SimDisk,
    id: u64,
    epoch: u64,
    /// Open files: name and whether it was opened with O_DSYNC.
    files: Vec<(String, bool)>,
    depth: usize,
    /// Accepted, not issued yet.
    queued: Vec<IoRequest>,
    /// Issued and not reaped.
    issued: usize,
    /// Accepted after the disk died: they complete with EIO.
    dead: Vec<IoRequest>,
    calls: u64,
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(libc::EIO)
}

impl SimBackend {
    /// The shared state, or `None` once a crash killed this backend.
    fn alive(&self) -> Option<MutexGuard<'_, State>> {
        let s = self.disk.lock();
        (s.epoch == self.epoch).then_some(s)
    }

    fn name_of(&self, f: FileId) -> io::Result<String> {
        self.files
            .get(f.0 as usize)
            .map(|(n, _)| n.clone())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }

    fn dsync_of(&self, f: FileId) -> bool {
        self.files.get(f.0 as usize).is_some_and(|&(_, d)| d)
    }
}

impl Backend for SimBackend {
    fn name(&self) -> &'static str {
        "sim"
    }

    fn open(&mut self, name: &str, create: bool, mode: FileMode) -> Result<FileId> {
        let mut s = self
            .alive()
            .ok_or_else(|| Error::io("opening a slab file", eio()))?;
        if !s.files.contains_key(name) {
            if !create {
                return Err(Error::io(
                    "opening a slab file",
                    io::Error::from(io::ErrorKind::NotFound),
                ));
            }
            s.stats.creates += 1;
            s.files.insert(name.to_string(), SimFile::default());
        }
        drop(s);
        let id = u32::try_from(self.files.len())
            .map_err(|_| Error::InvalidConfig("too many open files".into()))?;
        self.files
            .push((name.to_string(), mode == FileMode::DirectSync));
        Ok(FileId(id))
    }

    fn file_len(&mut self, file: FileId) -> io::Result<u64> {
        let name = self.name_of(file)?;
        let s = self.alive().ok_or_else(eio)?;
        s.files
            .get(&name)
            .map(|f| f.live.len() as u64)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))
    }

    fn grow(&mut self, file: FileId, len: u64) -> io::Result<()> {
        let name = self.name_of(file)?;
        let mut s = self.alive().ok_or_else(eio)?;
        let cur = s.files.get(&name).map_or(0, |f| f.live.len() as u64);
        if len <= cur {
            return Ok(());
        }
        if s.capacity
            .is_some_and(|cap| s.used_bytes() + (len - cur) > cap)
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let len = usize::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
        if let Some(f) = s.files.get_mut(&name) {
            f.live.resize(len, 0);
        }
        Ok(())
    }

    fn sync(&mut self, file: FileId) -> io::Result<()> {
        let name = self.name_of(file)?;
        let mut s = self.alive().ok_or_else(eio)?;
        s.stats.syncs += 1;
        if let Some(f) = s.files.get_mut(&name) {
            f.durable = f.live.clone();
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        let mut s = self.alive().ok_or_else(eio)?;
        s.stats.dir_syncs += 1;
        for f in s.files.values_mut() {
            f.entry_durable = true;
        }
        Ok(())
    }

    fn read_at(&mut self, file: FileId, buf: &mut AlignedBuf, offset: u64) -> io::Result<usize> {
        let name = self.name_of(file)?;
        let mut s = self.alive().ok_or_else(eio)?;
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        let len = buf.len();
        Ok(s.read(&name, buf, off, len))
    }

    fn write_at(
        &mut self,
        file: FileId,
        buf: &AlignedBuf,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        let name = self.name_of(file)?;
        let dsync = self.dsync_of(file);
        let bytes = buf
            .as_slice()
            .get(..len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut s = self.alive().ok_or_else(eio)?;
        let off = usize::try_from(offset).unwrap_or(usize::MAX);
        // A synchronous write is a write issued to the device like any other: it counts for
        // `fail_write` and the random faults.
        s.writes_issued += 1;
        let n = s.writes_issued;
        let random = s.random_write_eio;
        let fault = s
            .write_faults
            .remove(&n)
            .or_else(|| s.chance(random).then_some(Fault::Eio));
        if fault.is_some() {
            s.stats.faults += 1;
        }
        s.stats.writes += 1;
        match fault {
            None => {
                s.write(&name, off, bytes, dsync, None);
                Ok(())
            }
            Some(Fault::Eio) => Err(eio()),
            Some(Fault::NoSpace) => Err(io::Error::from_raw_os_error(libc::ENOSPC)),
            Some(Fault::Short(k)) => {
                let part = bytes.get(..k.min(bytes.len())).unwrap_or_default().to_vec();
                s.write(&name, off, &part, dsync, None);
                Err(io::Error::from(io::ErrorKind::WriteZero))
            }
            Some(Fault::Torn) => {
                let bytes = bytes.to_vec();
                let mask = s.sector_mask(bytes.len());
                s.write(&name, off, &bytes, dsync, Some(&mask));
                Err(eio())
            }
        }
    }

    fn submit(&mut self, io: IoRequest) -> std::result::Result<(), IoRequest> {
        if self.alive().is_none() {
            self.dead.push(io);
            return Ok(());
        }
        if self.queued.len() + self.issued >= self.depth {
            return Err(io);
        }
        self.queued.push(io);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let queued = std::mem::take(&mut self.queued);
        let names: Vec<io::Result<String>> = queued.iter().map(|r| self.name_of(r.file)).collect();
        let Some(mut s) = self.alive() else {
            drop(names);
            self.dead.extend(queued);
            return Ok(());
        };
        let mut failed = Vec::new();
        let mut issued = 0;
        for (req, name) in queued.into_iter().zip(names) {
            let Ok(file) = name else {
                failed.push(req);
                continue;
            };
            let planned = match req.kind {
                IoKind::Read => {
                    s.reads_issued += 1;
                    let n = s.reads_issued;
                    s.read_faults.remove(&n)
                }
                IoKind::Write => {
                    s.writes_issued += 1;
                    let n = s.writes_issued;
                    s.write_faults.remove(&n)
                }
                IoKind::Sync => {
                    s.syncs_issued += 1;
                    let n = s.syncs_issued;
                    s.sync_faults.remove(&n)
                }
            };
            let random = match req.kind {
                IoKind::Read => s.random_read_eio,
                IoKind::Write => s.random_write_eio,
                IoKind::Sync => s.random_sync_eio,
            };
            let fault = planned.or_else(|| s.chance(random).then_some(Fault::Eio));
            if fault.is_some() {
                s.stats.faults += 1;
            }
            let dsync = self.dsync_of(req.file);
            s.issued.push(Issued {
                backend: self.id,
                file,
                dsync,
                fault,
                req,
            });
            issued += 1;
        }
        drop(s);
        self.issued += issued;
        self.calls += 1;
        // A request naming no file of this backend fails like a bad descriptor.
        self.dead.extend(failed);
        Ok(())
    }

    fn flush_all(&mut self) -> io::Result<()> {
        self.flush()
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>) {
        for req in self.dead.drain(..) {
            out.push(IoCompletion {
                tag: req.tag,
                kind: req.kind,
                buf: req.buf,
                result: Err(eio()),
            });
        }
        let Some(mut s) = self.alive() else {
            // The disk died with our I/O on it: it never completes.
            self.issued = 0;
            self.queued.clear();
            return;
        };
        let force = s.forced.remove(&self.id).unwrap_or(false);
        let chance = s.completion_chance;
        let mut done = Vec::new();
        let mut i = 0;
        while i < s.issued.len() {
            let mine = s.issued.get(i).is_some_and(|io| io.backend == self.id);
            if mine && (s.chance(chance) || (force && done.is_empty())) {
                done.push(s.issued.remove(i));
            } else {
                i += 1;
            }
        }
        // Shuffle (Fisher-Yates): completions come back in any order.
        for j in (1..done.len()).rev() {
            let k = (s.next_u64() % (j as u64 + 1)) as usize;
            done.swap(j, k);
        }
        let n = done.len();
        for io in done {
            let c = s.complete(io);
            out.push(c);
        }
        drop(s);
        self.issued -= n.min(self.issued);
    }

    fn wait(&mut self) -> io::Result<()> {
        self.flush()?;
        let id = self.id;
        if let Some(mut s) = self.alive() {
            if s.issued.iter().any(|io| io.backend == id) {
                s.forced.insert(id, true);
            }
        }
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.queued.len() + self.issued + self.dead.len()
    }

    fn submit_calls(&self) -> u64 {
        self.calls
    }
}
