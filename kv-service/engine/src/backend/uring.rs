//! The io_uring block I/O queue: gathers reads and writes, issues them in one system call per
//! batch with a queue-depth limit, and reaps completions without blocking.
//!
//! This is the engine's only `unsafe` I/O code. Its soundness argument is local to this file:
//! a request's buffer is moved into [`Ring`]'s table of requests in flight when its submission
//! entry is pushed, and leaves that table only when the completion carrying the same slot
//! number is reaped — or never, if the ring cannot be drained ([`Ring`]'s `Drop` leaks the
//! table rather than free memory the kernel may still write). An [`AlignedBuf`]'s heap
//! allocation does not move when the value is moved into the table, so the address given to
//! the kernel stays valid and nothing else can reach the bytes meanwhile.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::time::{Duration, Instant};

use io_uring::{opcode, types, IoUring};

use super::aligned::AlignedBuf;
use super::{posix, IoCompletion, IoKind, IoRequest};
use crate::error::{Error, Result};

/// [`Ring::flush`] issues writes once this many are queued...
const WRITE_BATCH: u32 = 16;
/// ... or once the oldest has waited this long.
const WRITE_DELAY: Duration = Duration::from_micros(25);

/// A request the kernel owns: its buffer stays here until its completion is reaped.
struct InFlight {
    tag: u64,
    kind: IoKind,
    buf: AlignedBuf,
}

/// A submission/completion ring with a queue-depth limit that owns the buffers of the
/// requests in flight.
pub(crate) struct Ring {
    ring: IoUring,
    depth: u32,
    /// Requests in flight by slot number (= the entry's `user_data`); `None` = free slot.
    slots: Vec<Option<InFlight>>,
    free: Vec<u32>,
    in_flight: u32,
    unsubmitted: u32,
    /// Reads among the unsubmitted requests.
    unsubmitted_reads: u32,
    /// When the oldest unsubmitted request was pushed.
    oldest_unsubmitted: Option<Instant>,
    /// `io_uring_enter` calls made to submit.
    submits: u64,
}

impl Ring {
    /// Creates a ring allowing `depth` requests in flight.
    pub(crate) fn new(depth: u32) -> Result<Self> {
        let depth = depth.max(1);
        let entries = depth.next_power_of_two();
        let ring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .build(entries)
            .map_err(Error::IoUringUnavailable)?;
        Ok(Self {
            ring,
            depth,
            slots: Vec::new(),
            free: Vec::new(),
            in_flight: 0,
            unsubmitted: 0,
            unsubmitted_reads: 0,
            oldest_unsubmitted: None,
            submits: 0,
        })
    }

    /// Requests pushed and not yet reaped.
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight as usize
    }

    /// `io_uring_enter` calls made to submit.
    pub(crate) fn submits(&self) -> u64 {
        self.submits
    }

    /// Queues `req` on the file `fd` (issued by a later [`Ring::flush`] or [`Ring::wait`]),
    /// or hands it back when `depth` requests are in flight.
    ///
    /// `fd` must stay open until the completion is reaped (the backend owns the files and
    /// drops its ring first); a closed descriptor makes the request fail, it cannot corrupt
    /// memory.
    pub(crate) fn push(
        &mut self,
        fd: RawFd,
        mut req: IoRequest,
    ) -> std::result::Result<(), IoRequest> {
        if self.in_flight >= self.depth {
            return Err(req);
        }
        let Ok(len) = u32::try_from(req.len.min(req.buf.len())) else {
            return Err(req);
        };
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                let Ok(s) = u32::try_from(self.slots.len()) else {
                    return Err(req);
                };
                self.slots.push(None);
                s
            }
        };
        let ptr = req.buf.as_mut_ptr();
        let fd = types::Fd(fd);
        let entry = match req.kind {
            IoKind::Write => opcode::Write::new(fd, ptr, len).offset(req.offset).build(),
            IoKind::Read => opcode::Read::new(fd, ptr, len).offset(req.offset).build(),
            IoKind::Sync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        }
        .user_data(u64::from(slot));
        // SAFETY: a read or write entry points to `len <= req.buf.len()` bytes of `req.buf`'s
        // heap allocation (a sync entry points to no memory). Right below, `req.buf` is moved into `self.slots[slot]`, where it stays
        // untouched until the completion with `user_data == slot` is reaped (`reap`), or
        // forever if the ring cannot be drained (`Drop`); moving an `AlignedBuf` does not move
        // its allocation. So the memory the kernel reads or writes is valid and unaliased for
        // as long as the kernel may use it. If the push fails, nothing was handed over.
        let pushed = unsafe { self.ring.submission().push(&entry).is_ok() };
        if !pushed {
            self.free.push(slot);
            return Err(req);
        }
        let kind = req.kind;
        let Some(cell) = self.slots.get_mut(slot as usize) else {
            // Unreachable: `slot` indexes `slots` by construction. Keep the buffer alive
            // forever rather than free memory the kernel now owns.
            std::mem::forget(req.buf);
            return Ok(());
        };
        *cell = Some(InFlight {
            tag: req.tag,
            kind,
            buf: req.buf,
        });
        self.in_flight += 1;
        self.unsubmitted += 1;
        // Someone waits for a read, and for a sync (a group commit): issue them at once.
        self.unsubmitted_reads += u32::from(kind != IoKind::Write);
        self.oldest_unsubmitted.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Submits what was pushed if it is worth a system call now: any read (someone waits for
    /// it), or [`WRITE_BATCH`] writes, or a write that has waited [`WRITE_DELAY`].
    ///
    /// Each `io_uring_enter` that issues O_DIRECT writes costs the calling thread tens of µs on
    /// a virtio disk (the queue kick), whatever the number of writes it carries; writes are
    /// acknowledged only on completion, so they gain little from going out alone.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
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
                    self.submitted();
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn submitted(&mut self) {
        if self.unsubmitted > 0 {
            self.submits += 1;
        }
        self.unsubmitted = 0;
        self.unsubmitted_reads = 0;
        self.oldest_unsubmitted = None;
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
                    self.submitted();
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// Moves every available completion into `out`, without blocking.
    pub(crate) fn reap(&mut self, out: &mut Vec<IoCompletion>) {
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as usize;
            let Some(done) = self.slots.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot as u32);
            self.in_flight -= 1;
            let res = cqe.result();
            out.push(IoCompletion {
                tag: done.tag,
                kind: done.kind,
                buf: done.buf,
                result: if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                },
            });
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // The kernel may still read or write buffers of requests in flight: wait for all.
        let mut done = Vec::new();
        while self.in_flight > 0 {
            if self.wait().is_err() {
                // Cannot be sure the kernel is done with the buffers: leak them.
                std::mem::forget(std::mem::take(&mut self.slots));
                return;
            }
            done.clear();
            self.reap(&mut done);
        }
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
    let file = posix::open_file(path, super::FileMode::Direct, true)?;
    let _cleanup = RemoveOnDrop(path);
    let pages = (file_bytes / PAGE).max(1);
    let file_bytes = pages * PAGE;
    posix::grow_file(&file, file_bytes).map_err(|e| Error::io("growing the probe file", e))?;
    fill(&file, file_bytes)?;
    let mut ring = Ring::new(depth)?;
    let depth = depth.max(1) as usize;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let threshold = (read_fraction.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut result = RandomIoResult::default();
    let fd = file.as_raw_fd();
    let mut issue = |ring: &mut Ring, buf: AlignedBuf| {
        let kind = if next() >= threshold {
            IoKind::Write
        } else {
            IoKind::Read
        };
        let req = IoRequest {
            kind,
            file: super::FileId(0),
            offset: (next() % pages) * PAGE,
            len: PAGE as usize,
            buf,
            tag: 0,
        };
        // Never rejected: one request per buffer and `depth` buffers.
        let _ = ring.push(fd, req);
    };
    let start = Instant::now();
    for _ in 0..depth {
        issue(&mut ring, AlignedBuf::zeroed(PAGE as usize));
    }
    let mut done = Vec::with_capacity(depth);
    let mut stop = false;
    let mut failure = None;
    while ring.in_flight() > 0 {
        // Without a working ring nothing more completes; dropping it leaks the buffers.
        ring.wait()
            .map_err(|e| Error::io("waiting for probe I/O", e))?;
        done.clear();
        ring.reap(&mut done);
        if !stop && start.elapsed() >= duration {
            stop = true;
            result.elapsed = start.elapsed();
        }
        for c in done.drain(..) {
            if let Err(e) = c.result {
                failure.get_or_insert(Error::io("probe I/O", e));
                stop = true;
            }
            if !stop {
                match c.kind {
                    IoKind::Write => result.writes += 1,
                    IoKind::Read => result.reads += 1,
                    IoKind::Sync => {}
                }
                issue(&mut ring, c.buf);
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

/// Measures the device's limit on the engine's own data: random O_DIRECT block I/O through
/// io_uring at queue depth `depth` over the slab files of the data directory `dir`, the way
/// the engine reaches them — a block is picked with a chance proportional to the slots its
/// file holds (a uniform pick of an item), and is read or written whole (the class's block
/// size). A fraction `read_fraction` of the I/Os are reads; each write writes back the bytes a
/// read of the same block just returned, so the files are left as they were (no engine may
/// have them open meanwhile). Writes can be at most half of the I/Os this way: a mix with
/// more writes is measured with half. Returns what it did, and the read fraction it used.
pub fn measure_slab_io(
    dir: &Path,
    read_fraction: f64,
    depth: u32,
    duration: Duration,
) -> Result<(RandomIoResult, f64)> {
    // (file, block size, blocks, slots) per slab file.
    let mut files = Vec::new();
    let listing = std::fs::read_dir(dir).map_err(|e| Error::io("listing the data directory", e))?;
    for entry in listing {
        let entry = entry.map_err(|e| Error::io("listing the data directory", e))?;
        let name = entry.file_name();
        let Some((_, class)) = name.to_str().and_then(crate::slab::parse_file_name) else {
            continue;
        };
        let g = crate::slab::Geometry::of(class);
        let file = posix::open_file(&entry.path(), super::FileMode::Direct, false)?;
        let len = file
            .metadata()
            .map_err(|e| Error::io("reading a slab file's length", e))?
            .len();
        let blocks = len / g.block_size as u64;
        if blocks > 0 {
            let slots = blocks * g.slots_per_block as u64;
            files.push((file, g.block_size, blocks, slots));
        }
    }
    let total_slots: u64 = files.iter().map(|f| f.3).sum();
    if total_slots == 0 {
        return Err(Error::InvalidConfig(format!(
            "no slab data in {} to measure the device on",
            dir.display()
        )));
    }
    let write_fraction = (1.0 - read_fraction.clamp(0.0, 1.0)).min(0.5);
    // After a read, the block is written back with this chance: writes / all = q / (1 + q).
    let q = write_fraction / (1.0 - write_fraction);
    let q_threshold = (q.clamp(0.0, 1.0) * u64::MAX as f64) as u64;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let max_block = files.iter().map(|f| f.1).max().unwrap_or(4096);
    let mut ring = Ring::new(depth)?;
    let depth = depth.max(1) as usize;
    // Per request slot (the tag): which file and offset its buffer holds.
    let mut at: Vec<(usize, u64)> = vec![(0, 0); depth];
    let pick = |next: &mut dyn FnMut() -> u64| -> (usize, u64, usize) {
        let mut item = next() % total_slots;
        for (i, f) in files.iter().enumerate() {
            if item < f.3 {
                let block = (u128::from(item) * u128::from(f.2) / u128::from(f.3)) as u64;
                return (i, block * f.1 as u64, f.1);
            }
            item -= f.3;
        }
        (0, 0, files.first().map_or(4096, |f| f.1))
    };
    let fds: Vec<RawFd> = files.iter().map(|f| f.0.as_raw_fd()).collect();
    let mut result = RandomIoResult::default();
    let start = Instant::now();
    for tag in 0..depth {
        let (fi, off, len) = pick(&mut next);
        if let Some(a) = at.get_mut(tag) {
            *a = (fi, off);
        }
        let req = IoRequest {
            kind: IoKind::Read,
            file: super::FileId(0),
            offset: off,
            len,
            buf: AlignedBuf::zeroed(max_block),
            tag: tag as u64,
        };
        // Never rejected: `depth` requests at most.
        let _ = ring.push(fds.get(fi).copied().unwrap_or(-1), req);
    }
    let mut done = Vec::with_capacity(depth);
    let mut stop = false;
    let mut failure = None;
    while ring.in_flight() > 0 {
        ring.wait()
            .map_err(|e| Error::io("waiting for probe I/O", e))?;
        done.clear();
        ring.reap(&mut done);
        if !stop && start.elapsed() >= duration {
            stop = true;
            result.elapsed = start.elapsed();
        }
        for c in done.drain(..) {
            if let Err(e) = c.result {
                failure.get_or_insert(Error::io("probe I/O", e));
                stop = true;
            }
            if stop {
                continue;
            }
            let tag = c.tag as usize;
            let (fi, off) = at.get(tag).copied().unwrap_or((0, 0));
            let len = files.get(fi).map_or(4096, |f| f.1);
            let req = match c.kind {
                // Write back what was just read, unchanged.
                IoKind::Read if next() < q_threshold => {
                    result.reads += 1;
                    IoRequest {
                        kind: IoKind::Write,
                        file: super::FileId(0),
                        offset: off,
                        len,
                        buf: c.buf,
                        tag: c.tag,
                    }
                }
                kind => {
                    match kind {
                        IoKind::Read => result.reads += 1,
                        IoKind::Write => result.writes += 1,
                        IoKind::Sync => {}
                    }
                    let (fi, off, len) = pick(&mut next);
                    if let Some(a) = at.get_mut(tag) {
                        *a = (fi, off);
                    }
                    IoRequest {
                        kind: IoKind::Read,
                        file: super::FileId(0),
                        offset: off,
                        len,
                        buf: c.buf,
                        tag: c.tag,
                    }
                }
            };
            let fd = fds
                .get(at.get(tag).map_or(0, |a| a.0))
                .copied()
                .unwrap_or(-1);
            let _ = ring.push(fd, req);
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    if !stop {
        result.elapsed = start.elapsed();
    }
    Ok((result, 1.0 - write_fraction))
}

/// Fills the probe file with non-zero data: unwritten extents would be answered without
/// touching the device.
fn fill(file: &File, len: u64) -> Result<()> {
    let chunk_len = 4 << 20;
    let mut chunk = AlignedBuf::zeroed(chunk_len);
    chunk.as_mut_slice().fill(0x5A);
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(chunk_len as u64) as usize;
        let bytes = chunk.as_slice().get(..n).unwrap_or_default();
        posix::pwrite(file, bytes, off).map_err(|e| Error::io("filling the probe file", e))?;
        off += n as u64;
    }
    Ok(())
}

struct RemoveOnDrop<'a>(&'a Path);
impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}
