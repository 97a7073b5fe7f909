//! The staging area's writer: where a put or delete becomes durable in
//! [`Durability::Periodic`](crate::Durability::Periodic) and
//! [`Durability::Sync`](crate::Durability::Sync).
//!
//! Operations append their records ([`Stage::append`]) to an open chunk; at the end of each
//! poll the chunk is written ([`Stage::flush`]) to the ring file at the head:
//!
//! - **periodic**: one buffered `pwrite` (the kernel has the records: they survive the process);
//!   the operations are acknowledged at once. A `fdatasync` of the ring ([`Stage::maybe_sync`])
//!   begins at most `interval` after the first write it covers, so a power cut loses at most
//!   the writes acknowledged since the last completed flush began.
//! - **sync**: one O_DIRECT | O_DSYNC write, asynchronous, one at a time: the operations of a
//!   chunk are acknowledged when it completes, on stable storage; the records that arrive
//!   meanwhile gather in the next chunk (group commit: one device flush covers them all).
//!
//! Positions are LSNs: byte offsets in an endless log, the ring offset being `lsn mod size`.
//! The space before the *tail* (the oldest LSN whose change is not yet in a durable slab
//! write, computed by the caller) is free for reuse.

use std::collections::VecDeque;
use std::io;

use crate::backend::{AlignedBuf, Backend, FileId, IoCompletion, IoKind, IoRequest};
use crate::error::Error;
use crate::staging::{self, CHUNK_HEADER, RING_START, SCAN_ALIGN};

use super::blocks::Event;
use super::{OpId, Tag};

/// A chunk being filled.
struct Open {
    /// The head when it was opened: no entry in it lies before this LSN.
    base: u64,
    buf: AlignedBuf,
    len: usize,
    count: u32,
    waiters: Vec<OpId>,
}

/// A chunk placed in the ring, waiting to be written or being written (its header is
/// written when it is: its number is the next one that was written successfully).
struct Sealed {
    lsn: u64,
    count: u32,
    end: u64,
    buf: AlignedBuf,
    len: usize,
    waiters: Vec<OpId>,
}

/// Counters of the staging area.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StageStats {
    pub(super) chunks: u64,
    pub(super) bytes: u64,
    pub(super) records: u64,
    pub(super) flushes_started: u64,
    pub(super) flushes_completed: u64,
    pub(super) flush_errors: u64,
    /// Times an operation waited for room (a full ring or dirty budget: backpressure).
    pub(super) room_waits: u64,
}

/// One worker's staging area.
pub(super) struct Stage {
    pub(super) file: FileId,
    /// The ring's salt (in every chunk's CRC).
    salt: u64,
    /// [`Durability::Sync`](crate::Durability::Sync): chunks are O_DSYNC writes.
    sync: bool,
    interval_ns: u64,
    cap: u64,
    /// Chunks start at multiples of this (4096 for O_DIRECT).
    align: usize,
    max_chunk: usize,
    /// LSN of the next chunk.
    head: u64,
    open: Option<Open>,
    /// Sync mode: chunks waiting for the one in flight.
    sealed: VecDeque<Sealed>,
    /// Sync mode: the chunk being written (its buffer is with the backend): its end, number,
    /// waiters and length.
    in_flight: Option<(u64, u64, Vec<OpId>, usize)>,
    /// Number of the next chunk written (chunks are numbered from 1; a chunk whose write
    /// failed leaves its number to the next one, so the numbers of the chunks on disk have no
    /// gaps but those a power cut makes).
    next_number: u64,
    /// Number of the last chunk written (periodic: to the kernel).
    written_number: u64,
    /// Every chunk up to this number is on stable storage.
    settled: u64,
    /// Everything before this LSN has been written (periodic: to the kernel).
    written: u64,
    /// Everything before this LSN that was written successfully is on stable storage.
    pub(super) durable: u64,
    /// Periodic: the flush in flight makes everything before this LSN durable, chunks up to
    /// this number.
    sync_in_flight: Option<(u64, u64)>,
    /// Periodic: when the oldest write not covered by a flush was made, in ns.
    oldest_unflushed_ns: Option<u64>,
    spare: Vec<AlignedBuf>,
    /// Operations waiting for room in the ring (or in the cache's dirty budget).
    pub(super) waiters: Vec<OpId>,
    /// Chunk writes that failed so far (a writeback covering one must not be written).
    pub(super) failures: u64,
    /// Periodic: the last flush failed; writes are refused until one succeeds.
    error: Option<io::Error>,
    pub(super) stats: StageStats,
}

/// Most bytes of one chunk (and so of one record, with its headers).
pub(crate) fn max_chunk(cap: u64) -> usize {
    (cap / 4).min(4 << 20) as usize / 4096 * 4096
}

impl Stage {
    /// A writer for the ring of `cap` bytes in `file` (after its header page), whose chunks
    /// carry `salt`; `interval_ns`: the periodic flush interval (`None`: sync mode).
    pub(super) fn new(file: FileId, salt: u64, cap: u64, interval_ns: Option<u64>) -> Self {
        let sync = interval_ns.is_none();
        Self {
            file,
            salt,
            sync,
            interval_ns: interval_ns.unwrap_or(0),
            cap,
            align: if sync { 4096 } else { SCAN_ALIGN },
            max_chunk: max_chunk(cap),
            head: 0,
            open: None,
            sealed: VecDeque::new(),
            in_flight: None,
            next_number: 1,
            written_number: 0,
            settled: 0,
            written: 0,
            durable: 0,
            sync_in_flight: None,
            oldest_unflushed_ns: None,
            spare: Vec::new(),
            waiters: Vec::new(),
            failures: 0,
            error: None,
            stats: StageStats::default(),
        }
    }

    /// LSN of the next chunk: everything staged so far lies before it once sealed.
    pub(super) fn head(&self) -> u64 {
        self.head
    }

    /// Whether no record waits in an open chunk.
    pub(super) fn open_is_empty(&self) -> bool {
        self.open.as_ref().is_none_or(|o| o.count == 0)
    }

    /// Whether every record staged so far has been written (and, in sync mode, is durable).
    pub(super) fn all_written(&self) -> bool {
        self.open_is_empty() && self.sealed.is_empty() && self.in_flight.is_none()
    }

    /// Whether everything written is durable.
    pub(super) fn all_durable(&self) -> bool {
        self.all_written() && self.durable >= self.written && self.sync_in_flight.is_none()
    }

    /// Bytes of the ring in use with the oldest needed LSN at `tail`.
    pub(super) fn used(&self, tail: u64) -> u64 {
        let open = self.open.as_ref().map_or(0, |o| o.len as u64);
        (self.head - tail.min(self.head)) + open
    }

    /// Ring size in bytes.
    pub(super) fn capacity(&self) -> u64 {
        self.cap
    }

    /// Whether a record of `rec_len` bytes can be staged now (with the oldest needed LSN at
    /// `tail`); `Err` if it never can be, or if writes are refused.
    pub(super) fn room(&self, tail: u64, rec_len: usize) -> Result<bool, Error> {
        if let Some(e) = &self.error {
            return Err(Error::io(
                "making the staging area durable (writes are refused until a flush succeeds)",
                clone_io_error(e),
            ));
        }
        let need = staging::entry_len(rec_len);
        if need + CHUNK_HEADER > self.max_chunk {
            return Err(Error::InvalidConfig(format!(
                "a record of {rec_len} bytes does not fit the staging area ({} bytes: raise \
                 EngineConfig::stage_bytes to 4x the largest record)",
                self.cap
            )));
        }
        let used = self.used(tail);
        if used == 0 {
            return Ok(true);
        }
        // Room for the entry, its chunk's alignment, and a chunk's worth of waste at the end
        // of the ring (a chunk never wraps).
        let extra = (need + self.align + CHUNK_HEADER) as u64 + self.max_chunk as u64;
        Ok(used + extra <= self.cap)
    }

    /// Makes sure the next `bytes` of entries go into the open chunk (sealing it first if
    /// they would not fit), so that they are written — and recovered — together.
    pub(super) fn reserve(&mut self, bytes: usize) {
        if self
            .open
            .as_ref()
            .is_some_and(|o| o.len + bytes > self.max_chunk)
        {
            self.seal();
        }
    }

    /// Appends a record for `(class, slot)`; operation `waiter` gets an [`Event::Written`]
    /// once its chunk is written (periodic) or durable (sync). Returns an LSN no later than
    /// the record's. The caller checked [`Stage::room`].
    pub(super) fn append(&mut self, class: u8, slot: u32, rec: &[u8], waiter: Option<OpId>) -> u64 {
        let need = staging::entry_len(rec.len());
        self.reserve(need);
        if self.open.is_none() {
            let buf = self
                .spare
                .pop()
                .unwrap_or_else(|| AlignedBuf::zeroed(self.max_chunk));
            self.open = Some(Open {
                base: self.head,
                buf,
                len: CHUNK_HEADER,
                count: 0,
                waiters: Vec::new(),
            });
        }
        let Some(o) = self.open.as_mut() else {
            return self.head;
        };
        let lsn = o.base + o.len as u64;
        if let Some(n) = staging::put_entry(o.buf.as_mut_slice(), o.len, class, slot, rec) {
            o.len += n;
            o.count += 1;
        }
        o.waiters.extend(waiter);
        self.stats.records += 1;
        lsn
    }

    /// Sync mode: operation `waiter` gets an [`Event::Written`] once everything staged so far
    /// is durable (with the last chunk that holds any of it), without a record of its own.
    /// `false` if nothing staged is pending: it may answer at once.
    pub(super) fn barrier(&mut self, waiter: OpId) -> bool {
        if let Some(o) = self.open.as_mut().filter(|o| o.count > 0) {
            o.waiters.push(waiter);
        } else if let Some(s) = self.sealed.back_mut() {
            s.waiters.push(waiter);
        } else if let Some((_, _, waiters, _)) = self.in_flight.as_mut() {
            waiters.push(waiter);
        } else {
            return false;
        }
        true
    }

    /// Closes the open chunk now (sync mode: it is written after the one in flight), so that
    /// everything staged so far lies before [`Stage::head`].
    pub(super) fn seal_now(&mut self) {
        self.seal();
    }

    /// Places the open chunk in the ring (never across its end) and seals it.
    fn seal(&mut self) {
        let Some(mut o) = self.open.take() else {
            return;
        };
        if o.count == 0 {
            self.spare.push(o.buf);
            return;
        }
        let padded = (o.len.div_ceil(self.align) * self.align) as u64;
        let mut lsn = self.head;
        let at = lsn % self.cap;
        if at + padded > self.cap {
            lsn += self.cap - at;
        }
        // The padding must not carry stale bytes a later scan could misread as entries.
        if let Some(pad) = o.buf.as_mut_slice().get_mut(o.len..padded as usize) {
            pad.fill(0);
        }
        self.head = lsn + padded;
        self.stats.chunks += 1;
        self.stats.bytes += padded;
        self.sealed.push_back(Sealed {
            lsn,
            count: o.count,
            end: self.head,
            buf: o.buf,
            len: o.len,
            waiters: o.waiters,
        });
    }

    /// Writes the header of chunk `c`, about to be written, with the next number.
    fn number(&self, c: &mut Sealed) -> u64 {
        let id = staging::ChunkId {
            lsn: c.lsn,
            number: self.next_number,
            settled: self.settled,
        };
        if staging::seal(c.buf.as_mut_slice(), self.salt, id, c.len, c.count).is_none() {
            // Unreachable: the chunk was built within its buffer.
            tracing::error!("a staging chunk could not be sealed");
        }
        id.number
    }

    /// Writes what was staged: periodic — every chunk now, its operations' events into
    /// `events`; sync — the next chunk, unless one is in flight.
    pub(super) fn flush<B: Backend>(
        &mut self,
        backend: &mut B,
        now_ns: u64,
        events: &mut Vec<Event>,
    ) {
        if self.sync {
            // While a chunk is in flight, the open one keeps gathering records: they go out
            // together when it completes (group commit).
            if self.in_flight.is_none() {
                if self.sealed.is_empty() {
                    self.seal();
                }
                self.submit_next(backend);
            }
            return;
        }
        self.seal();
        while let Some(mut c) = self.sealed.pop_front() {
            let at = RING_START + c.lsn % self.cap;
            let number = self.number(&mut c);
            let r = backend.write_at(self.file, &c.buf, c.len, at);
            self.written = c.end;
            match r {
                Ok(()) => {
                    self.next_number = number + 1;
                    self.written_number = number;
                    self.oldest_unflushed_ns.get_or_insert(now_ns);
                    events.extend(c.waiters.iter().map(|&id| Event::Written(id, Ok(()))));
                }
                Err(e) => {
                    self.failures += 1;
                    for &id in &c.waiters {
                        let err = Error::io("writing the staging area", clone_io_error(&e));
                        events.push(Event::Written(id, Err(err)));
                    }
                }
            }
            self.recycle(c.buf);
        }
    }

    /// Sync mode: hands the next sealed chunk to the backend if none is in flight.
    fn submit_next<B: Backend>(&mut self, backend: &mut B) {
        if self.in_flight.is_some() {
            return;
        }
        let Some(mut c) = self.sealed.pop_front() else {
            return;
        };
        let number = self.number(&mut c);
        let padded = c.len.div_ceil(self.align) * self.align;
        let req = IoRequest {
            kind: IoKind::Write,
            file: self.file,
            offset: RING_START + c.lsn % self.cap,
            len: padded,
            buf: c.buf,
            tag: Tag::Chunk.encode(0),
        };
        match backend.submit(req) {
            Ok(()) => {
                self.stats.flushes_started += 1;
                self.in_flight = Some((c.end, number, c.waiters, padded));
                if let Err(e) = backend.flush_all() {
                    tracing::warn!(error = %e, "submitting a staging write failed; will retry");
                }
            }
            Err(req) => self.sealed.push_front(Sealed { buf: req.buf, ..c }),
        }
    }

    /// Sync mode: the chunk write in flight completed (the next one, if sealed already, goes
    /// out at once; else the open chunk goes at the end of this poll).
    pub(super) fn on_chunk_done<B: Backend>(
        &mut self,
        backend: &mut B,
        c: IoCompletion,
        events: &mut Vec<Event>,
    ) {
        let Some((end, number, waiters, len)) = self.in_flight.take() else {
            self.recycle(c.buf);
            return;
        };

        let failure = match c.result {
            Ok(n) if n == len => None,
            Ok(_) => Some(io::Error::from(io::ErrorKind::UnexpectedEof)),
            Err(e) => Some(e),
        };
        self.written = end;
        self.durable = end;
        match failure {
            None => {
                self.next_number = number + 1;
                self.written_number = number;
                self.settled = number;
                self.stats.flushes_completed += 1;
                events.extend(waiters.iter().map(|&id| Event::Written(id, Ok(()))));
            }
            Some(e) => {
                self.failures += 1;
                // Every operation staged after the failed chunk fails with it, its chunk never
                // written: a key's next write may have been applied on top of a failed one
                // (see `Worker::advance`). Their events go newest first, so that each undo
                // puts back the bytes the one before it left.
                let mut failed = waiters;
                for s in self.sealed.drain(..) {
                    failed.extend(s.waiters);
                    if s.buf.len() == self.max_chunk && self.spare.len() < 4 {
                        self.spare.push(s.buf);
                    }
                }
                if let Some(o) = self.open.take() {
                    failed.extend(o.waiters);
                    if o.buf.len() == self.max_chunk && self.spare.len() < 4 {
                        self.spare.push(o.buf);
                    }
                }
                self.written = self.head;
                self.durable = self.head;
                for &id in failed.iter().rev() {
                    let err = Error::io("writing the staging area", clone_io_error(&e));
                    events.push(Event::Written(id, Err(err)));
                }
            }
        }
        self.recycle(c.buf);
        self.submit_next(backend);
    }

    /// Periodic: starts a flush (`fdatasync` of the ring) if one is due — `interval` after the
    /// oldest write it would cover — or if `force`d and there is something to flush. Returns
    /// the LSN it makes durable.
    pub(super) fn maybe_sync<B: Backend>(
        &mut self,
        backend: &mut B,
        now_ns: u64,
        force: bool,
    ) -> Option<u64> {
        if self.sync || self.sync_in_flight.is_some() || self.written <= self.durable {
            return None;
        }
        let due = self
            .oldest_unflushed_ns
            .is_some_and(|t| now_ns.saturating_sub(t) >= self.interval_ns);
        // After a failed flush, retry once an interval has passed (or when forced).
        if !(due || force) {
            return None;
        }
        let req = IoRequest {
            kind: IoKind::Sync,
            file: self.file,
            offset: 0,
            len: 0,
            buf: AlignedBuf::empty(),
            tag: Tag::StageSync.encode(0),
        };
        if backend.submit(req).is_err() {
            return None;
        }
        if let Err(e) = backend.flush_all() {
            tracing::warn!(error = %e, "submitting a staging flush failed; will retry");
        }
        self.sync_in_flight = Some((self.written, self.written_number));
        self.oldest_unflushed_ns = None;
        self.stats.flushes_started += 1;
        Some(self.written)
    }

    /// Periodic: the flush in flight completed.
    pub(super) fn on_sync_done(&mut self, c: &IoCompletion, now_ns: u64) {
        let Some((point, number)) = self.sync_in_flight.take() else {
            return;
        };
        match &c.result {
            Ok(_) => {
                self.durable = self.durable.max(point);
                self.settled = self.settled.max(number);
                self.stats.flushes_completed += 1;
                if self.error.take().is_some() {
                    tracing::warn!("the staging area is durable again: writes are accepted");
                }
            }
            Err(e) => {
                self.stats.flush_errors += 1;
                tracing::error!(
                    error = %e,
                    "flushing the staging area failed: writes are refused until a flush succeeds"
                );
                self.error = Some(clone_io_error(e));
                // What it should have covered still is not durable: retry an interval on.
                self.oldest_unflushed_ns = Some(now_ns);
            }
        }
    }

    /// Periodic: when the next flush is due, if one will be (ns on the worker's clock).
    pub(super) fn next_deadline(&self) -> Option<u64> {
        if self.sync || self.sync_in_flight.is_some() {
            return None;
        }
        self.oldest_unflushed_ns
            .map(|t| t.saturating_add(self.interval_ns))
    }

    /// Whether this is sync mode.
    pub(super) fn is_sync(&self) -> bool {
        self.sync
    }

    fn recycle(&mut self, buf: AlignedBuf) {
        if buf.len() == self.max_chunk && self.spare.len() < 4 {
            self.spare.push(buf);
        }
    }

    /// Periodic: makes everything written so far durable, synchronously (sync mode: it is).
    pub(super) fn sync_blocking<B: Backend>(&mut self, backend: &mut B) -> io::Result<()> {
        if self.sync || self.written <= self.durable {
            return Ok(());
        }
        let (point, number) = (self.written, self.written_number);
        backend.sync(self.file)?;
        self.durable = self.durable.max(point);
        self.settled = self.settled.max(number);
        Ok(())
    }

    /// At close (periodic): makes everything written durable, synchronously.
    pub(super) fn close<B: Backend>(&mut self, backend: &mut B) {
        if let Err(e) = self.sync_blocking(backend) {
            tracing::error!(error = %e, "flushing the staging area at close failed");
        }
    }
}

/// A copy of an I/O error (an OS error keeps its code).
pub(super) fn clone_io_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}
