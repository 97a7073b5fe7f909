//! The file-system calls of the real disk: O_DIRECT opens, growth with `fallocate`, `fsync` of
//! files and directories, synchronous `pread` / `pwrite`.
//!
//! `unsafe` is allowed here for the one libc call std does not wrap (`fallocate`).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::aligned::AlignedBuf;
use super::FileMode;
use crate::error::{Error, Result};

/// Opens (creating if `create` and missing) `path` for reads and writes in `mode` (O_DIRECT,
/// O_DIRECT | O_DSYNC, or through the page cache).
pub(crate) fn open_file(path: &Path, mode: FileMode, create: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let flags = match mode {
        FileMode::Direct => libc::O_DIRECT,
        FileMode::DirectSync => libc::O_DIRECT | libc::O_DSYNC,
        FileMode::Buffered => 0,
    };
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .custom_flags(flags)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(libc::EINVAL) {
                Error::DirectIoUnsupported(path.to_path_buf())
            } else {
                Error::io("opening a data file", e)
            }
        })
}

/// Reads into `buf` at `offset` with `pread` (retrying on EINTR), returning the bytes read.
pub(crate) fn pread(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.read_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Writes all of `buf` at `offset` with `pwrite`.
pub(crate) fn pwrite(file: &File, buf: &[u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf, offset)
}

/// Writes `buf` at `offset` with `pwrite`, returning how many bytes were written (an O_DIRECT
/// write is one call; a short count is the caller's error to report).
pub(crate) fn pwrite_once(file: &File, buf: &[u8], offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.write_at(buf, offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Extends `file` to `len` bytes, reserving the space when the file system can (so that a
/// full disk is reported here, as `ENOSPC`, rather than later).
pub(crate) fn grow_file(file: &File, len: u64) -> io::Result<()> {
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: a plain system call on a descriptor `file` keeps open for the call's duration;
    // no memory is passed.
    let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, off_len) };
    if r == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => file.set_len(len),
        _ => Err(err),
    }
}

/// `fdatasync` of a file: its data, and the metadata needed to read it back, are durable.
pub(crate) fn datasync(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// `fsync` of a directory: makes the entries created or renamed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a whole aligned buffer from `file` at `offset` (O_DIRECT), returning the bytes read.
pub(crate) fn pread_aligned(file: &File, buf: &mut AlignedBuf, offset: u64) -> io::Result<usize> {
    pread(file, buf.as_mut_slice(), offset)
}
