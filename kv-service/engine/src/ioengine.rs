//! The io_uring I/O engine: gathers reads and writes, submits them in one call per batch
//! with a queue-depth limit, and reaps completions without blocking.
//!
//! If io_uring cannot be set up the engine fails with
//! [`Error::IoUringUnavailable`]; there is no
//! fallback. This module and `aligned` are the only places with `unsafe`.
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::aligned::AlignedBuf;
use super::error::{Error, Result};

/// A submission/completion ring with a queue-depth limit.
pub(crate) struct Ring {
    ring: IoUring,
    depth: u32,
    in_flight: u32,
    unsubmitted: u32,
    /// Reads among the unsubmitted requests.
    unsubmitted_reads: u32,
    /// When the oldest unsubmitted request was pushed.
    oldest_unsubmitted: Option<Instant>,
    /// Counts `io_uring_enter` calls made for submission.
    pub(crate) submits: u64,
}

/// [`Ring::submit_due`] submits writes once this many are queued...
const WRITE_BATCH: u32 = 16;
/// ... or once the oldest has waited this long.
const WRITE_DELAY: Duration = Duration::from_micros(25);

/// One I/O request: read or write `len` bytes at `offset` of `fd` from/to `buf`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IoRequest {
    pub(crate) write: bool,
    pub(crate) fd: RawFd,
    pub(crate) buf: *mut u8,
    pub(crate) len: u32,
    pub(crate) offset: u64,
    pub(crate) user_data: u64,
}

impl Ring {
    /// Creates a ring allowing `depth` requests in flight.
    pub(crate) fn new(depth: u32) -> Result<Self> {
        let entries = depth.max(1).next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)
            .map_err(Error::IoUringUnavailable)?;
        Ok(Self {
            ring,
            depth: depth.max(1),
            in_flight: 0,
            unsubmitted: 0,
            unsubmitted_reads: 0,
            oldest_unsubmitted: None,
            submits: 0,
        })
    }

    /// Requests pushed and not yet completed.
    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Whether another request may be pushed now.
    pub(crate) fn has_room(&self) -> bool {
        self.in_flight < self.depth
    }

    /// Queues one request in the submission queue (submitted by the next [`Ring::submit`]).
    /// Returns `false` (and queues nothing) when the depth limit is reached.
    ///
    /// # Safety
    /// `req.buf` must point to `req.len` bytes that stay valid, and are neither read nor
    /// written by anyone else, until this request's completion has been reaped.
    pub(crate) unsafe fn push(&mut self, req: IoRequest) -> bool {
        if !self.has_room() {
            return false;
        }
        let fd = types::Fd(req.fd);
        let entry = if req.write {
            opcode::Write::new(fd, req.buf, req.len)
                .offset(req.offset)
                .build()
        } else {
            opcode::Read::new(fd, req.buf, req.len)
                .offset(req.offset)
                .build()
        }
        .user_data(req.user_data);
        // SAFETY: the caller guarantees the buffer outlives the request (see above).
        let pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        if pushed {
            self.in_flight += 1;
            self.unsubmitted += 1;
            self.unsubmitted_reads += u32::from(!req.write);
            self.oldest_unsubmitted.get_or_insert_with(Instant::now);
        }
        pushed
    }

    /// Submits what was pushed if it is worth a system call now: any read (someone waits for
    /// it), or [`WRITE_BATCH`] writes, or a write that has waited [`WRITE_DELAY`].
    ///
    /// On this VM each `io_uring_enter` that issues O_DIRECT writes costs ≈ 35 µs of the
    /// calling thread (the virtio queue kick), whatever the number of writes it carries; one
    /// call per write took a quarter of a kv-service thread at 20 k writes/s and delayed the
    /// reads behind it. Writes are acknowledged only on completion, so they gain little from
    /// going out alone.
    pub(crate) fn submit_due(&mut self) -> io::Result<()> {
        let due = self.unsubmitted_reads > 0
            || self.unsubmitted >= WRITE_BATCH
            || self
                .oldest_unsubmitted
                .is_some_and(|t| t.elapsed() >= WRITE_DELAY);
        if due {
            self.submit()
        } else {
            Ok(())
        }
    }

    /// Submits everything pushed since the last call, in one system call.
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        if self.unsubmitted == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit() {
                Ok(_) => {
                    self.unsubmitted = 0;
                    self.unsubmitted_reads = 0;
                    self.oldest_unsubmitted = None;
                    self.submits += 1;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits pending requests and blocks until at least one completion is available (if
    /// anything is in flight).
    pub(crate) fn wait(&mut self) -> io::Result<()> {
        if self.in_flight == 0 {
            return Ok(());
        }
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {
                    if self.unsubmitted > 0 {
                        self.submits += 1;
                    }
                    self.unsubmitted = 0;
                    self.unsubmitted_reads = 0;
                    self.oldest_unsubmitted = None;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves every available completion `(user_data, result)` into `out`, without blocking.
    pub(crate) fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        let before = out.len();
        out.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        let n = u32::try_from(out.len() - before).unwrap_or(u32::MAX);
        self.in_flight = self.in_flight.saturating_sub(n);
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Buffers handed to the kernel belong to the owner of the ring, which drains the
        // ring before freeing them (see `Worker`'s `Drop`); nothing to do here.
    }
}

/// Opens (creating if needed) `path` for O_DIRECT reads and writes, optionally with O_DSYNC.
pub(crate) fn open_direct(path: &Path, dsync: bool, create: bool) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut flags = libc::O_DIRECT;
    if dsync {
        flags |= libc::O_DSYNC;
    }
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
                Error::io("opening a slab file", e)
            }
        })
}

/// Reads into `buf` at `offset` with one `pread`, returning the number of bytes read.
pub(crate) fn pread(file: &File, buf: &mut AlignedBuf, offset: u64) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    loop {
        match file.read_at(buf.as_mut_slice(), offset) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Writes all of `buf` at `offset` with `pwrite`.
pub(crate) fn pwrite(file: &File, buf: &AlignedBuf, offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    file.write_all_at(buf.as_slice(), offset)
}

/// Extends `file` to `len` bytes, reserving the space when the file system can (so that a
/// full disk is reported here, as `ENOSPC`, rather than later).
pub(crate) fn grow_file(file: &File, len: u64) -> io::Result<()> {
    let Ok(off_len) = libc::off_t::try_from(len) else {
        return Err(io::Error::from_raw_os_error(libc::EFBIG));
    };
    // SAFETY: plain system call on a valid descriptor; no memory is passed.
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

/// Result of [`measure_random_io`].
#[derive(Clone, Copy, Debug, Default)]
pub struct RandomIoResult {
    /// Reads completed.
    pub reads: u64,
    /// Writes completed.
    pub writes: u64,
    /// Measured wall time.
    pub elapsed: Duration,
}

impl RandomIoResult {
    /// Completed I/Os per second.
    pub fn iops(&self) -> f64 {
        (self.reads + self.writes) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Measures the device's limit the way the engine uses it: random 4 KiB O_DIRECT reads and
/// writes through io_uring at queue depth `depth`, a fraction `read_fraction` of them reads,
/// over a file at `path` of `file_bytes` bytes (created, filled with non-zero data so that
/// reads really reach the device, and removed afterwards) for `duration`.
pub fn measure_random_io(
    path: &Path,
    file_bytes: u64,
    read_fraction: f64,
    depth: u32,
    duration: Duration,
) -> Result<RandomIoResult> {
    const PAGE: u64 = 4096;
    let file = open_direct(path, false, true)?;
    let _cleanup = RemoveOnDrop(path);
    let pages = (file_bytes / PAGE).max(1);
    let file_bytes = pages * PAGE;
    grow_file(&file, file_bytes).map_err(|e| Error::io("growing the probe file", e))?;
    // Fill with data: unwritten extents would be answered without touching the device.
    let chunk_len = 4 << 20;
    let mut chunk = AlignedBuf::zeroed(chunk_len);
    chunk.as_mut_slice().fill(0x5A);
    let mut off = 0u64;
    while off < file_bytes {
        let n = (file_bytes - off).min(chunk_len as u64);
        if n == chunk_len as u64 {
            pwrite(&file, &chunk, off).map_err(|e| Error::io("filling the probe file", e))?;
        } else {
            let mut small = AlignedBuf::zeroed(n as usize);
            small.as_mut_slice().fill(0x5A);
            pwrite(&file, &small, off).map_err(|e| Error::io("filling the probe file", e))?;
        }
        off += n;
    }
    let mut ring = Ring::new(depth)?;
    let depth = depth.max(1) as usize;
    let mut bufs: Vec<AlignedBuf> = (0..depth).map(|_| AlignedBuf::zeroed(4096)).collect();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let threshold = (read_fraction.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut result = RandomIoResult::default();
    let mut done = Vec::with_capacity(depth);
    let fd = file.as_raw_fd();
    let start = Instant::now();
    let mut issue = |ring: &mut Ring, i: usize, bufs: &mut [AlignedBuf]| -> bool {
        let write = next() >= threshold;
        let page = next() % pages;
        let Some(buf) = bufs.get_mut(i) else {
            return false;
        };
        let req = IoRequest {
            write,
            fd,
            buf: buf.as_mut_ptr(),
            len: 4096,
            offset: page * PAGE,
            user_data: (i as u64) << 1 | u64::from(write),
        };
        // SAFETY: `bufs` outlives the ring's use of it: the loop below reaps every
        // request before returning, and each buffer index is in flight at most once.
        unsafe { ring.push(req) }
    };
    for i in 0..depth {
        issue(&mut ring, i, &mut bufs);
    }
    let mut stop = false;
    let mut failure = None;
    while ring.in_flight() > 0 {
        if let Err(e) = ring.wait() {
            // Without a working ring nothing more completes; leak the buffers rather than
            // free memory the kernel may still write.
            std::mem::forget(bufs);
            return Err(Error::io("waiting for probe I/O", e));
        }
        done.clear();
        ring.reap(&mut done);
        if !stop && start.elapsed() >= duration {
            stop = true;
            result.elapsed = start.elapsed();
        }
        for &(ud, res) in &done {
            if res < 0 {
                // Keep draining: the buffers must outlive every request.
                failure.get_or_insert(Error::errno("probe I/O", -res));
                stop = true;
            }
            if !stop {
                if ud & 1 == 1 {
                    result.writes += 1;
                } else {
                    result.reads += 1;
                }
                issue(&mut ring, (ud >> 1) as usize, &mut bufs);
            }
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if !stop {
        result.elapsed = start.elapsed();
    }
    Ok(result)
}

struct RemoveOnDrop<'a>(&'a Path);
impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}
