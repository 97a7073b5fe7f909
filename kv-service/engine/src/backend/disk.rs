//! The real data directory: files opened with O_DIRECT, block I/O through io_uring (or
//! pread / pwrite where io_uring is unavailable).

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use super::aligned::AlignedBuf;
use super::sync_io::SyncIo;
use super::uring::Ring;
use super::{
    posix, Backend, BackendOptions, FileId, FileMode, IoCompletion, IoMode, IoRequest, Storage,
};
use crate::error::{Error, Result};

/// A data directory on a real file system (one that supports O_DIRECT: not tmpfs).
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    /// Whether the "io_uring unavailable" warning was logged (once per `Disk`).
    warned: AtomicBool,
}

impl Disk {
    /// The data directory at `dir` (created by [`Storage::prepare`] if missing).
    pub fn new(dir: impl AsRef<Path>) -> Self {
        Self {
            dir: dir.as_ref().to_path_buf(),
            warned: AtomicBool::new(false),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Storage for Disk {
    type Backend = DiskBackend;

    fn prepare(&self) -> Result<()> {
        fs::create_dir_all(&self.dir).map_err(|e| Error::io("creating the data directory", e))
    }

    fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn read_file(&self, name: &str) -> io::Result<Option<Vec<u8>>> {
        match fs::read(self.dir.join(name)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn write_file_durably(&self, name: &str, data: &[u8]) -> io::Result<()> {
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, self.dir.join(name))?;
        posix::sync_dir(&self.dir)
    }

    fn remove_file(&self, name: &str) -> io::Result<()> {
        match fs::remove_file(self.dir.join(name)) {
            Ok(()) => posix::sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// io_uring unless [`IoMode::Sync`]; with [`IoMode::Auto`], where the kernel refuses
    /// io_uring (too old, `kernel.io_uring_disabled`, a seccomp filter) the worker uses
    /// pread / pwrite and a warning says so once.
    fn backend(&self, worker: usize, opts: BackendOptions) -> Result<DiskBackend> {
        let io = match opts.io {
            IoMode::Sync => DiskIo::Sync(SyncIo::default()),
            IoMode::Uring => DiskIo::Uring(Ring::new(opts.queue_depth)?),
            IoMode::Auto => match Ring::new(opts.queue_depth) {
                Ok(r) => DiskIo::Uring(r),
                Err(e) => {
                    if !self.warned.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            worker,
                            error = %e,
                            "io_uring is unavailable: block I/O falls back to synchronous \
                             pread/pwrite (one system call per I/O, no overlap; slower)"
                        );
                    }
                    DiskIo::Sync(SyncIo::default())
                }
            },
        };
        Ok(DiskBackend {
            io,
            files: Vec::new(),
            dir: self.dir.clone(),
        })
    }
}

// One per worker: its size does not matter, and boxing the ring would add a pointer chase
// to every I/O.
#[allow(clippy::large_enum_variant)]
enum DiskIo {
    Uring(Ring),
    Sync(SyncIo),
}

/// A worker's files on a real disk and its block I/O queue.
pub struct DiskBackend {
    // Declared before `files`: dropping the ring first waits for the kernel to finish with
    // every request, so no request outlives its file descriptor.
    io: DiskIo,
    files: Vec<File>,
    dir: PathBuf,
}

impl DiskBackend {
    fn file(&self, f: FileId) -> io::Result<&File> {
        self.files
            .get(f.0 as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

impl Backend for DiskBackend {
    fn name(&self) -> &'static str {
        match self.io {
            DiskIo::Uring(_) => "io_uring",
            DiskIo::Sync(_) => "pread/pwrite",
        }
    }

    fn open(&mut self, name: &str, create: bool, mode: FileMode) -> Result<FileId> {
        let file = posix::open_file(&self.dir.join(name), mode, create)?;
        let id = u32::try_from(self.files.len())
            .map_err(|_| Error::InvalidConfig("too many open files".into()))?;
        self.files.push(file);
        Ok(FileId(id))
    }

    fn file_len(&mut self, file: FileId) -> io::Result<u64> {
        Ok(self.file(file)?.metadata()?.len())
    }

    fn grow(&mut self, file: FileId, len: u64) -> io::Result<()> {
        posix::grow_file(self.file(file)?, len)
    }

    fn sync(&mut self, file: FileId) -> io::Result<()> {
        self.file(file)?.sync_all()
    }

    fn sync_dir(&mut self) -> io::Result<()> {
        posix::sync_dir(&self.dir)
    }

    fn read_at(&mut self, file: FileId, buf: &mut AlignedBuf, offset: u64) -> io::Result<usize> {
        posix::pread_aligned(self.file(file)?, buf, offset)
    }

    fn write_at(
        &mut self,
        file: FileId,
        buf: &AlignedBuf,
        len: usize,
        offset: u64,
    ) -> io::Result<()> {
        let bytes = buf
            .as_slice()
            .get(..len)
            .ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
        posix::pwrite(self.file(file)?, bytes, offset)
    }

    fn submit(&mut self, io: IoRequest) -> std::result::Result<(), IoRequest> {
        let Some(file) = self.files.get(io.file.0 as usize) else {
            match &mut self.io {
                DiskIo::Sync(s) => s.fail(io, io::Error::from_raw_os_error(libc::EBADF)),
                // The ring cannot complete what it never saw: refuse it.
                DiskIo::Uring(_) => return Err(io),
            }
            return Ok(());
        };
        match &mut self.io {
            DiskIo::Uring(r) => {
                use std::os::fd::AsRawFd;
                r.push(file.as_raw_fd(), io)
            }
            DiskIo::Sync(s) => {
                s.run(file, io);
                Ok(())
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.io {
            DiskIo::Uring(r) => r.flush(),
            DiskIo::Sync(_) => Ok(()),
        }
    }

    fn flush_all(&mut self) -> io::Result<()> {
        match &mut self.io {
            DiskIo::Uring(r) => r.submit(),
            DiskIo::Sync(_) => Ok(()),
        }
    }

    fn reap(&mut self, out: &mut Vec<IoCompletion>) {
        match &mut self.io {
            DiskIo::Uring(r) => r.reap(out),
            DiskIo::Sync(s) => s.reap(out),
        }
    }

    fn wait(&mut self) -> io::Result<()> {
        match &mut self.io {
            DiskIo::Uring(r) => r.wait(),
            DiskIo::Sync(_) => Ok(()),
        }
    }

    fn in_flight(&self) -> usize {
        match &self.io {
            DiskIo::Uring(r) => r.in_flight(),
            DiskIo::Sync(s) => s.in_flight(),
        }
    }

    fn submit_calls(&self) -> u64 {
        match &self.io {
            DiskIo::Uring(r) => r.submits(),
            DiskIo::Sync(s) => s.calls(),
        }
    }
}
