//! `SimFs`: simulated log directories for deterministic crash tests.
//!
//! Every file has two images, as in redb's crash tests and the engine's `SimDisk`: the
//! **live** image (what reads see: every completed write) and the **durable** image (what
//! survives power loss: the live image as of the file's last successful `sync_data`), and a
//! directory entry that survives power loss only once its directory was synced. On top:
//!
//! - **Faults at chosen points**: the n-th write from now fails with EIO or ENOSPC, or is
//!   torn (some 512-byte sectors land, then EIO) ([`SimFs::fail_write`]); the n-th
//!   `sync_data` fails with EIO and makes nothing durable ([`SimFs::fail_sync`]), and so
//!   does the n-th `sync_dir` ([`SimFs::fail_dir_sync`]); a capacity
//!   past which files cannot grow ([`SimFs::set_capacity`]).
//! - **Process crash** ([`SimFs::crash`]): everything written stays (the kernel has it).
//! - **Power cut** ([`SimFs::power_cut`]): each file keeps its durable image, and each
//!   512-byte sector written since its last sync lands or not, at random; a file whose
//!   directory entry was never synced is gone; a file removed since the last sync of its
//!   directory may come back; the length is the durable one or the newer one.
//!
//! Either way every handle opened before dies (its calls fail with EIO); open the log again
//! through [`SimFs::dir`]. One seeded generator decides everything, so the same calls see the
//! same disk.
//!
//! ```
//! use kv_raft::{LogDir, LogFile, SimFs};
//! let fs = SimFs::new(1);
//! let dir = fs.dir("t0");
//! let mut f = dir.create("a")?;
//! f.write_at(b"durable", 0)?;
//! f.sync_data()?;
//! dir.sync_dir()?;
//! f.write_at(b"not yet", 7)?;
//! fs.power_cut();
//! let dir = fs.dir("t0");
//! let f = dir.open("a")?;
//! let mut buf = vec![0; 14];
//! let n = f.read_at(&mut buf, 0)?;
//! assert_eq!(&buf[..7], b"durable"); // what was synced survives; the rest may or may not
//! assert!(n == 7 || n == 14);
//! # Ok::<(), std::io::Error>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::fs::{LogDir, LogFile};

/// Granularity of tearing: a write lands partly in units of this many bytes.
pub const SECTOR: usize = 512;

/// A fault injected into one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Fails with EIO; nothing is written.
    Eio,
    /// Fails with ENOSPC; nothing is written.
    NoSpace,
    /// Some 512-byte sectors land (each or not, at random), then EIO.
    Torn,
}

/// Counters of a [`SimFs`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimFsStats {
    /// Writes (faulty ones included).
    pub writes: u64,
    /// Bytes written by successful writes.
    pub bytes_written: u64,
    /// `sync_data` calls (failed ones included).
    pub syncs: u64,
    /// `sync_dir` calls.
    pub dir_syncs: u64,
    /// Files created.
    pub creates: u64,
    /// Files removed.
    pub removes: u64,
    /// Faults injected.
    pub faults: u64,
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

struct State {
    rng: StdRng,
    epoch: u64,
    /// By path `dir/name`.
    files: BTreeMap<String, SimFile>,
    /// Removed files whose removal is not durable yet: power loss may bring them back.
    removed: BTreeMap<String, SimFile>,
    writes_issued: u64,
    syncs_issued: u64,
    write_faults: BTreeMap<u64, Fault>,
    sync_faults: BTreeSet<u64>,
    dir_syncs_issued: u64,
    dir_sync_faults: BTreeSet<u64>,
    capacity: Option<u64>,
    stats: SimFsStats,
}

impl State {
    fn used(&self) -> u64 {
        self.files.values().map(|f| f.live.len() as u64).sum()
    }

    fn check_growth(&self, cur: usize, new: usize) -> io::Result<()> {
        match self.capacity {
            Some(cap) if new > cur && self.used() + (new - cur) as u64 > cap => Err(
                io::Error::from_raw_os_error(rustix::io::Errno::NOSPC.raw_os_error()),
            ),
            _ => Ok(()),
        }
    }
}

/// A simulated disk holding any number of log directories; a cheap handle (clones share
/// it).
#[derive(Clone)]
pub struct SimFs {
    inner: Arc<Mutex<State>>,
}

impl std::fmt::Debug for SimFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimFs")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

fn eio() -> io::Error {
    io::Error::from_raw_os_error(rustix::io::Errno::IO.raw_os_error())
}

fn enoent() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

impl SimFs {
    /// An empty disk whose random choices come from `seed`.
    pub fn new(seed: u64) -> Self {
        Self {
            inner: Arc::new(Mutex::new(State {
                rng: StdRng::seed_from_u64(seed),
                epoch: 0,
                files: BTreeMap::new(),
                removed: BTreeMap::new(),
                writes_issued: 0,
                syncs_issued: 0,
                write_faults: BTreeMap::new(),
                sync_faults: BTreeSet::new(),
                dir_syncs_issued: 0,
                dir_sync_faults: BTreeSet::new(),
                capacity: None,
                stats: SimFsStats::default(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a test failing; its state is still usable.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The directory `name` (a namespace; it exists as soon as a file is created in it).
    /// Handles opened before the next crash or power cut die with it.
    pub fn dir(&self, name: &str) -> SimDir {
        SimDir {
            fs: self.clone(),
            prefix: format!("{name}/"),
            epoch: self.lock().epoch,
        }
    }

    /// The `nth` write from now (1 = the next one) gets `fault`.
    pub fn fail_write(&self, nth: u64, fault: Fault) {
        let mut s = self.lock();
        let at = s.writes_issued + nth.max(1);
        s.write_faults.insert(at, fault);
    }

    /// The `nth` `sync_data` from now (1 = the next one) fails with EIO, making nothing
    /// durable.
    pub fn fail_sync(&self, nth: u64) {
        let mut s = self.lock();
        let at = s.syncs_issued + nth.max(1);
        s.sync_faults.insert(at);
    }

    /// The `nth` `sync_dir` from now (1 = the next one) fails with EIO, making no entry
    /// change durable.
    pub fn fail_dir_sync(&self, nth: u64) {
        let mut s = self.lock();
        let at = s.dir_syncs_issued + nth.max(1);
        s.dir_sync_faults.insert(at);
    }

    /// Total bytes the files may occupy: growing past it is ENOSPC. `None`: unlimited.
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.lock().capacity = bytes;
    }

    /// Counters.
    pub fn stats(&self) -> SimFsStats {
        self.lock().stats
    }

    /// Paths (`dir/name`) and live lengths of the files.
    pub fn files(&self) -> Vec<(String, u64)> {
        self.lock()
            .files
            .iter()
            .map(|(n, f)| (n.clone(), f.live.len() as u64))
            .collect()
    }

    /// The live image of the file at `path` (`dir/name`).
    pub fn live_image(&self, path: &str) -> Option<Vec<u8>> {
        self.lock().files.get(path).map(|f| f.live.clone())
    }

    /// Overwrites bytes of both images of the file at `path` (bit rot, for tests); bytes past
    /// the end are ignored.
    pub fn corrupt(&self, path: &str, offset: usize, bytes: &[u8]) {
        if let Some(f) = self.lock().files.get_mut(path) {
            for img in [&mut f.live, &mut f.durable] {
                for (i, b) in bytes.iter().enumerate() {
                    if let Some(d) = img.get_mut(offset + i) {
                        *d = *b;
                    }
                }
            }
        }
    }

    /// A process crash: everything written stays; open handles die.
    pub fn crash(&self) {
        let mut s = self.lock();
        s.removed.clear();
        s.epoch += 1;
        s.stats.crashes += 1;
    }

    /// A power cut: only what was made durable survives for sure (see the
    /// [module documentation](self)); open handles die.
    pub fn power_cut(&self) {
        let mut s = self.lock();
        let files = std::mem::take(&mut s.files);
        let removed = std::mem::take(&mut s.removed);
        let mut out = BTreeMap::new();
        for (name, f) in removed {
            if s.rng.gen_bool(0.5) {
                out.insert(name, f);
            }
        }
        for (name, f) in files {
            if !f.entry_durable {
                continue;
            }
            out.insert(name, f);
        }
        for f in out.values_mut() {
            let len = if f.live.len() != f.durable.len() && s.rng.gen_bool(0.5) {
                f.live.len()
            } else {
                f.durable.len()
            };
            let mut image = std::mem::take(&mut f.durable);
            image.resize(len, 0);
            for start in (0..len).step_by(SECTOR) {
                let end = (start + SECTOR).min(len);
                let (Some(new), Some(old)) = (f.live.get(start..end), image.get_mut(start..end))
                else {
                    continue;
                };
                if new != old && s.rng.gen_bool(0.5) {
                    old.copy_from_slice(new);
                }
            }
            f.live = image.clone();
            f.durable = image;
            f.entry_durable = true;
        }
        s.files = out;
        s.epoch += 1;
        s.stats.crashes += 1;
    }
}

/// A directory of a [`SimFs`].
#[derive(Clone, Debug)]
pub struct SimDir {
    fs: SimFs,
    prefix: String,
    epoch: u64,
}

impl SimDir {
    fn alive(&self) -> io::Result<MutexGuard<'_, State>> {
        let s = self.fs.lock();
        if s.epoch == self.epoch {
            Ok(s)
        } else {
            Err(eio())
        }
    }

    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn file(&self, path: String) -> SimFileHandle {
        SimFileHandle {
            fs: self.fs.clone(),
            path,
            epoch: self.epoch,
        }
    }
}

impl LogDir for SimDir {
    type File = SimFileHandle;

    fn list(&self) -> io::Result<Vec<String>> {
        let s = self.alive()?;
        Ok(s.files
            .keys()
            .filter_map(|k| k.strip_prefix(&self.prefix))
            .map(str::to_string)
            .collect())
    }

    fn open(&self, name: &str) -> io::Result<SimFileHandle> {
        let path = self.path(name);
        if !self.alive()?.files.contains_key(&path) {
            return Err(enoent());
        }
        Ok(self.file(path))
    }

    fn create(&self, name: &str) -> io::Result<SimFileHandle> {
        let path = self.path(name);
        let mut s = self.alive()?;
        s.stats.creates += 1;
        s.files.entry(path.clone()).or_default().live.clear();
        drop(s);
        Ok(self.file(path))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        let path = self.path(name);
        let mut s = self.alive()?;
        let f = s.files.remove(&path).ok_or_else(enoent)?;
        s.stats.removes += 1;
        if f.entry_durable {
            s.removed.insert(path, f);
        }
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.alive()?;
        s.stats.dir_syncs += 1;
        s.dir_syncs_issued += 1;
        let n = s.dir_syncs_issued;
        if s.dir_sync_faults.remove(&n) {
            s.stats.faults += 1;
            return Err(eio());
        }
        let prefix = self.prefix.clone();
        s.removed.retain(|k, _| !k.starts_with(&prefix));
        for (k, f) in s.files.iter_mut() {
            if k.starts_with(&prefix) {
                f.entry_durable = true;
            }
        }
        Ok(())
    }
}

/// A file of a [`SimDir`].
#[derive(Debug)]
pub struct SimFileHandle {
    fs: SimFs,
    path: String,
    epoch: u64,
}

impl SimFileHandle {
    fn with<T>(&self, f: impl FnOnce(&mut State, &str) -> io::Result<T>) -> io::Result<T> {
        let mut s = self.fs.lock();
        if s.epoch != self.epoch {
            return Err(eio());
        }
        if !s.files.contains_key(&self.path) {
            // Removed while open: the handle's data is unreachable to later opens anyway.
            return Err(enoent());
        }
        f(&mut s, &self.path)
    }
}

fn file_mut<'a>(s: &'a mut State, path: &str) -> io::Result<&'a mut SimFile> {
    s.files.get_mut(path).ok_or_else(enoent)
}

impl LogFile for SimFileHandle {
    fn file_len(&self) -> io::Result<u64> {
        self.with(|s, p| Ok(file_mut(s, p)?.live.len() as u64))
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.with(|s, p| {
            let f = file_mut(s, p)?;
            let off = usize::try_from(offset).unwrap_or(usize::MAX);
            let avail = f.live.get(off..).unwrap_or_default();
            let n = avail.len().min(buf.len());
            if let (Some(dst), Some(src)) = (buf.get_mut(..n), avail.get(..n)) {
                dst.copy_from_slice(src);
            }
            Ok(n)
        })
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.with(|s, p| {
            s.writes_issued += 1;
            s.stats.writes += 1;
            let n = s.writes_issued;
            let fault = s.write_faults.remove(&n);
            let off = usize::try_from(offset).map_err(|_| eio())?;
            let end = off.checked_add(buf.len()).ok_or_else(eio)?;
            let cur = file_mut(s, p)?.live.len();
            match fault {
                Some(Fault::Eio) => {
                    s.stats.faults += 1;
                    return Err(eio());
                }
                Some(Fault::NoSpace) => {
                    s.stats.faults += 1;
                    return Err(io::Error::from_raw_os_error(
                        rustix::io::Errno::NOSPC.raw_os_error(),
                    ));
                }
                _ => {}
            }
            s.check_growth(cur, end)?;
            let mask: Option<Vec<bool>> = (fault == Some(Fault::Torn)).then(|| {
                (0..buf.len().div_ceil(SECTOR))
                    .map(|_| s.rng.gen_bool(0.5))
                    .collect()
            });
            let f = file_mut(s, p)?;
            if f.live.len() < end {
                f.live.resize(end, 0);
            }
            for (i, chunk) in buf.chunks(SECTOR).enumerate() {
                if mask
                    .as_ref()
                    .is_some_and(|m| !m.get(i).copied().unwrap_or(false))
                {
                    continue;
                }
                let at = off + i * SECTOR;
                if let Some(dst) = f.live.get_mut(at..at + chunk.len()) {
                    dst.copy_from_slice(chunk);
                }
            }
            if mask.is_some() {
                s.stats.faults += 1;
                return Err(eio());
            }
            s.stats.bytes_written += buf.len() as u64;
            Ok(())
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with(|s, p| {
            let len = usize::try_from(len).map_err(|_| eio())?;
            let cur = file_mut(s, p)?.live.len();
            s.check_growth(cur, len)?;
            file_mut(s, p)?.live.resize(len, 0);
            Ok(())
        })
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        self.with(|s, p| {
            let len = usize::try_from(len).map_err(|_| eio())?;
            let cur = file_mut(s, p)?.live.len();
            if len <= cur {
                return Ok(());
            }
            s.check_growth(cur, len)?;
            file_mut(s, p)?.live.resize(len, 0);
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.with(|s, p| {
            s.syncs_issued += 1;
            s.stats.syncs += 1;
            let n = s.syncs_issued;
            if s.sync_faults.remove(&n) {
                s.stats.faults += 1;
                return Err(eio());
            }
            let f = file_mut(s, p)?;
            f.durable.clone_from(&f.live);
            Ok(())
        })
    }
}
