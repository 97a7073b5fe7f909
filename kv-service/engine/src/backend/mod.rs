//! Storage backends: the narrow interface between the engine and the files of a data
//! directory.
//!
//! Two traits, after redb's `StorageBackend` (read / write / len / set_len / sync) but made for
//! batched asynchronous block I/O:
//!
//! - [`Storage`]: a data directory as a whole — list its files, read and durably write small
//!   files (the manifest), and make one [`Backend`] per worker. Shared by the recovery threads.
//! - [`Backend`]: one worker's files and I/O queue. Files are opened, grown and synced
//!   synchronously (rare); block I/O is asynchronous and **owns its buffers**: [`Backend::submit`]
//!   takes an [`IoRequest`] (an [`AlignedBuf`] with a tag), [`Backend::reap`] gives back
//!   [`IoCompletion`]s (tag, the same buffer, result). No one else can touch a buffer while its
//!   I/O is in flight, so the engine's correctness does not rest on promises about the kernel.
//!
//! Implementations (chosen in one place, [`Disk::backend`] and [`SimDisk`]):
//!
//! | backend | where | what |
//! |---|---|---|
//! | io_uring | `backend/uring.rs` | the default: reads submitted at once, writes in groups; the only `unsafe` I/O code |
//! | pread / pwrite | `backend/sync_io.rs` | synchronous; used by recovery, and chosen at run time (with a warning in the log) where io_uring is unavailable, or forced with [`IoMode::Sync`] |
//! | [`SimDisk`] | [`sim`] | tests: seeded reordered completions, injected EIO / ENOSPC / short and torn writes, and crashes or power cuts that keep only what was made durable |
//!
//! Generic code is monomorphised over the backend (`Worker<B>`), so the data path has no
//! dynamic dispatch; [`DiskBackend`] picks io_uring or pread/pwrite with one `match` per call.

use std::io;

use crate::error::Result;

pub mod aligned;
mod disk;
mod posix;
pub mod sim;
mod sync_io;
mod uring;

pub use aligned::AlignedBuf;
pub use disk::{Disk, DiskBackend};
pub use sim::SimDisk;
pub use uring::{measure_random_io, measure_slab_io, RandomIoResult};

/// A file opened through a [`Backend`]; meaningful to that backend only.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileId(pub u32);

/// Kind of an asynchronous I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoKind {
    /// Read from the file into the buffer.
    Read,
    /// Write the buffer to the file.
    Write,
    /// Make the file's data durable (`fdatasync`): every write completed before the request
    /// was submitted is on stable storage once it completes. No buffer, no offset; the
    /// completion's result is `Ok(0)`.
    Sync,
}

/// How a file is opened ([`Backend::open`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileMode {
    /// `O_DIRECT`: block I/O bypasses the kernel's page cache; a completed write has reached
    /// the device (which may still hold it in a volatile cache). Slab files.
    Direct,
    /// `O_DIRECT | O_DSYNC`: a completed write is on stable storage. The staging area in
    /// [`Durability::Sync`](crate::Durability::Sync).
    DirectSync,
    /// Through the kernel's page cache: a completed write survives the process (the kernel
    /// has it) and is durable after an [`IoKind::Sync`] or [`Backend::sync`]. The staging area
    /// in [`Durability::Periodic`](crate::Durability::Periodic).
    Buffered,
}

/// One asynchronous I/O: `len` bytes at byte `offset` of `file`, into or from the start
/// of `buf`. For block I/O `offset`, `len` and the buffer are multiples of 4 KiB (O_DIRECT)
/// and `len <= buf.len()`; an [`IoKind::Sync`] has no buffer ([`AlignedBuf::empty`]) and
/// `offset == len == 0`.
#[derive(Debug)]
pub struct IoRequest {
    /// Read or write.
    pub kind: IoKind,
    /// The file.
    pub file: FileId,
    /// Byte offset in the file.
    pub offset: u64,
    /// Bytes to transfer.
    pub len: usize,
    /// The buffer, owned by the backend until the completion hands it back.
    pub buf: AlignedBuf,
    /// The caller's tag, returned with the completion.
    pub tag: u64,
}

/// A finished block I/O.
#[derive(Debug)]
pub struct IoCompletion {
    /// The request's tag.
    pub tag: u64,
    /// Read or write.
    pub kind: IoKind,
    /// The request's buffer (for a read: holding the bytes read).
    pub buf: AlignedBuf,
    /// Bytes transferred (fewer than asked is a short transfer), or the error.
    pub result: io::Result<usize>,
}

/// Which block I/O backend a [`Disk`] gives its workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IoMode {
    /// io_uring if the kernel allows it, else pread / pwrite with a warning in the log.
    #[default]
    Auto,
    /// io_uring only: opening fails with [`Error::IoUringUnavailable`](crate::Error) without it.
    Uring,
    /// Synchronous pread / pwrite: one system call per I/O, no overlap.
    Sync,
}

/// What a worker's [`Backend`] is made with.
#[derive(Clone, Copy, Debug)]
pub struct BackendOptions {
    /// Most I/Os in flight.
    pub queue_depth: u32,
    /// Which block I/O to use ([`Disk`] only).
    pub io: IoMode,
}

/// One worker's files and block I/O queue. Every method is non-blocking except the file
/// operations, [`Backend::read_at`] / [`Backend::write_at`] and [`Backend::wait`].
///
/// Contract of the data path: every request accepted by [`Backend::submit`] comes back exactly
/// once from [`Backend::reap`], with its buffer, in any order; [`Backend::in_flight`] counts
/// the accepted requests not yet reaped. A backend's `Drop` does not return while the kernel
/// may still use a buffer.
pub trait Backend: Send + 'static {
    /// A short name for logs: `"io_uring"`, `"pread/pwrite"`, `"sim"`.
    fn name(&self) -> &'static str;

    /// Opens the file `name` of the data directory in `mode`, creating it (empty) if `create`
    /// and it does not exist.
    fn open(&mut self, name: &str, create: bool, mode: FileMode) -> Result<FileId>;

    /// The file's length in bytes.
    fn file_len(&mut self, file: FileId) -> io::Result<u64>;

    /// Extends the file to `len` bytes (reserving the space where the file system can, so a
    /// full disk is reported here as `ENOSPC`).
    fn grow(&mut self, file: FileId, len: u64) -> io::Result<()>;

    /// Makes the file's data and metadata durable (`fsync`).
    fn sync(&mut self, file: FileId) -> io::Result<()>;

    /// Makes the data directory's entries durable (`fsync` of the directory): a file created
    /// since the last call survives power loss only after this.
    fn sync_dir(&mut self) -> io::Result<()>;

    /// Reads `buf.len()` bytes at `offset` synchronously; returns the bytes read (fewer at the
    /// end of the file).
    fn read_at(&mut self, file: FileId, buf: &mut AlignedBuf, offset: u64) -> io::Result<usize>;

    /// Writes the first `len` bytes of `buf` at `offset` synchronously (for a
    /// [`FileMode::Direct`] file `len` is a multiple of 4 KiB).
    fn write_at(
        &mut self,
        file: FileId,
        buf: &AlignedBuf,
        len: usize,
        offset: u64,
    ) -> io::Result<()>;

    /// Accepts an asynchronous I/O, or hands it back when [`Backend::in_flight`] is at the
    /// queue depth.
    fn submit(&mut self, io: IoRequest) -> std::result::Result<(), IoRequest>;

    /// Issues accepted I/O that is due (a backend may hold writes back briefly to issue them
    /// in groups).
    fn flush(&mut self) -> io::Result<()>;

    /// Issues everything accepted, now (someone is waiting for it: a group commit).
    fn flush_all(&mut self) -> io::Result<()>;

    /// Appends every finished I/O to `out`, without blocking.
    fn reap(&mut self, out: &mut Vec<IoCompletion>);

    /// Issues everything accepted and blocks until at least one I/O finishes (returns at once
    /// if none is in flight).
    fn wait(&mut self) -> io::Result<()>;

    /// Requests accepted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// System calls made to issue I/O (for the statistics).
    fn submit_calls(&self) -> u64;
}

/// A data directory: its file listing, its small files, and one [`Backend`] per worker.
pub trait Storage: Sync {
    /// The workers' backend.
    type Backend: Backend;

    /// Makes sure the data directory exists.
    fn prepare(&self) -> Result<()>;

    /// Names of the files in the data directory.
    fn list(&self) -> io::Result<Vec<String>>;

    /// The whole content of a small file, or `None` if it does not exist.
    fn read_file(&self, name: &str) -> io::Result<Option<Vec<u8>>>;

    /// Writes a small file so that, once this returns, it is durable with exactly `data` —
    /// never a partial file, even across power loss (temporary file, `fsync`, `rename`,
    /// `fsync` of the directory).
    fn write_file_durably(&self, name: &str, data: &[u8]) -> io::Result<()>;

    /// Removes a file and makes the removal durable (`fsync` of the directory). Removing a
    /// file that does not exist is not an error.
    fn remove_file(&self, name: &str) -> io::Result<()>;

    /// Worker `worker`'s backend.
    fn backend(&self, worker: usize, opts: BackendOptions) -> Result<Self::Backend>;
}
