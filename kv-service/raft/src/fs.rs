//! The log's file backend: the few file-system operations the Raft log needs, behind two
//! traits, with the real directory ([`FsDir`]) here and a power-cut simulator in
//! [`sim`](crate::sim).
//!
//! After redb's `StorageBackend` (read / write / len / set_len / sync), plus what a segmented
//! log needs of its directory: list, create, remove, and the `fsync` of the directory that
//! makes a created file survive power loss.
//!
//! Why not the storage engine's backend: `kv-engine`'s `Backend` is made for the slab files —
//! O_DIRECT block I/O in 4 KiB multiples through an asynchronous queue that owns aligned
//! buffers — and has no way to remove a file. The log appends byte ranges of any length,
//! needs one `fdatasync` per loop iteration over buffered writes, and drops whole segments
//! once compacted; bending the block interface to that would cost a read-modify-write of the
//! tail block per append and a new operation in every engine backend.
//!
//! Contract (what [`ThreadLog`](crate::ThreadLog) relies on, and [`SimFs`](crate::SimFs)
//! enforces):
//! - [`LogFile::write_at`] puts bytes in the *live* image: readable at once, lost on power
//!   failure until [`LogFile::sync_data`] returns `Ok`. After a failed `sync_data` nothing
//!   is known about what reached the disk (Linux may have dropped the dirty pages): the log
//!   stops writing.
//! - A file created by [`LogDir::create`] or removed by [`LogDir::remove`] may come back or
//!   vanish at power loss until [`LogDir::sync_dir`] returns `Ok`.
//! - A write is torn at power loss at 512-byte sectors at worst: each sector is old or new.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// A directory of log files.
pub trait LogDir: Send + 'static {
    /// A file opened in this directory.
    type File: LogFile;

    /// The names of the files in the directory, sorted.
    fn list(&self) -> io::Result<Vec<String>>;

    /// Opens an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Self::File>;

    /// Creates a file, empty (truncating one that exists), for reading and writing.
    fn create(&self, name: &str) -> io::Result<Self::File>;

    /// Removes a file.
    fn remove(&self, name: &str) -> io::Result<()>;

    /// Makes the directory's entries (files created and removed) durable.
    fn sync_dir(&self) -> io::Result<()>;
}

/// An open log file.
pub trait LogFile: Send + 'static {
    /// The file's length in bytes.
    fn file_len(&self) -> io::Result<u64>;

    /// Reads up to `buf.len()` bytes at `offset`; returns how many (fewer only at the end of
    /// the file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;

    /// Writes all of `buf` at `offset`.
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()>;

    /// Sets the length: shorter drops the bytes past `len`, longer adds zeros.
    fn set_len(&mut self, len: u64) -> io::Result<()>;

    /// Makes the file at least `len` bytes long, reserving the space (so that a full disk is
    /// reported here and not by a later write); new bytes read as zeros.
    fn allocate(&mut self, len: u64) -> io::Result<()>;

    /// Makes the file's data (and the metadata needed to read it back, such as its length)
    /// durable: `fdatasync`.
    fn sync_data(&mut self) -> io::Result<()>;
}

/// A real directory.
#[derive(Debug, Clone)]
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    /// The directory at `path`, created (with its parents) if missing. A newly created
    /// directory is made durable in its parent.
    pub fn open(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        if !path.is_dir() {
            fs::create_dir_all(&path)?;
            if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
                File::open(parent)?.sync_all()?;
            }
        }
        Ok(Self { path })
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl LogDir for FsDir {
    type File = FsFile;

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.path)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                names.push(entry.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn open(&self, name: &str) -> io::Result<FsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join(name))?;
        Ok(FsFile { file })
    }

    fn create(&self, name: &str) -> io::Result<FsFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path.join(name))?;
        Ok(FsFile { file })
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        fs::remove_file(self.path.join(name))
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.path)?.sync_all()
    }
}

/// A file of an [`FsDir`]: buffered I/O (the page cache gathers one iteration's appends) and
/// `fdatasync`.
#[derive(Debug)]
pub struct FsFile {
    file: File,
}

impl LogFile for FsFile {
    fn file_len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut done = 0;
        while done < buf.len() {
            let Some(rest) = buf.get_mut(done..) else {
                break;
            };
            match self.file.read_at(rest, offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.file.write_all_at(buf, offset)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn allocate(&mut self, len: u64) -> io::Result<()> {
        if self.file_len()? >= len {
            return Ok(());
        }
        match rustix::fs::fallocate(&self.file, rustix::fs::FallocateFlags::empty(), 0, len) {
            Ok(()) => Ok(()),
            // File systems without fallocate (some network and FUSE ones): a sparse
            // extension, so a full disk shows at a write instead.
            Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS => {
                self.file.set_len(len)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Any [`LogDir`] behind one type (its files boxed), for owners that choose the backend at
/// run time — a server on real directories, the same server under simulation on a
/// [`SimFs`](crate::SimFs) — without a type parameter for it.
///
/// ```
/// use kv_raft::{AnyDir, LogOptions, SimFs, ThreadLog};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let fs = SimFs::new(1);
/// let (mut log, _) = ThreadLog::open(AnyDir::new(fs.dir("t0")), LogOptions::default())?;
/// log.sync()?;
/// let real = tempfile::tempdir()?;
/// let (_log, _) = ThreadLog::open(AnyDir::new(kv_raft::FsDir::open(real.path())?), LogOptions::default())?;
/// # Ok(()) }
/// ```
pub struct AnyDir(Box<dyn DynDir>);

/// The object-safe face of a cloneable [`LogDir`].
trait DynDir: Send {
    fn list(&self) -> io::Result<Vec<String>>;
    fn open(&self, name: &str) -> io::Result<Box<dyn LogFile>>;
    fn create(&self, name: &str) -> io::Result<Box<dyn LogFile>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    fn sync_dir(&self) -> io::Result<()>;
    fn clone_box(&self) -> Box<dyn DynDir>;
}

impl<D: LogDir + Clone> DynDir for D {
    fn list(&self) -> io::Result<Vec<String>> {
        LogDir::list(self)
    }
    fn open(&self, name: &str) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(LogDir::open(self, name)?))
    }
    fn create(&self, name: &str) -> io::Result<Box<dyn LogFile>> {
        Ok(Box::new(LogDir::create(self, name)?))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        LogDir::remove(self, name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        LogDir::sync_dir(self)
    }
    fn clone_box(&self) -> Box<dyn DynDir> {
        Box::new(self.clone())
    }
}

impl AnyDir {
    /// Wraps `dir`.
    pub fn new<D: LogDir + Clone>(dir: D) -> Self {
        Self(Box::new(dir))
    }
}

impl Clone for AnyDir {
    fn clone(&self) -> Self {
        Self(self.0.clone_box())
    }
}

impl std::fmt::Debug for AnyDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnyDir")
    }
}

impl LogDir for AnyDir {
    type File = Box<dyn LogFile>;

    fn list(&self) -> io::Result<Vec<String>> {
        self.0.list()
    }
    fn open(&self, name: &str) -> io::Result<Self::File> {
        self.0.open(name)
    }
    fn create(&self, name: &str) -> io::Result<Self::File> {
        self.0.create(name)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.0.remove(name)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.0.sync_dir()
    }
}

impl LogFile for Box<dyn LogFile> {
    fn file_len(&self) -> io::Result<u64> {
        (**self).file_len()
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        (**self).read_at(buf, offset)
    }
    fn write_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        (**self).write_at(buf, offset)
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        (**self).set_len(len)
    }
    fn allocate(&mut self, len: u64) -> io::Result<()> {
        (**self).allocate(len)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        (**self).sync_data()
    }
}
