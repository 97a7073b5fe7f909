//! Synchronous block I/O with `pread` / `pwrite`: each request is carried out when it is
//! submitted and its completion waits for the next reap. One system call per I/O and no
//! overlap between them — the fallback where io_uring is unavailable.

use std::collections::VecDeque;
use std::fs::File;
use std::io;

use super::{posix, IoCompletion, IoKind, IoRequest};

/// A queue of completions of I/O already carried out.
#[derive(Default)]
pub(crate) struct SyncIo {
    done: VecDeque<IoCompletion>,
    calls: u64,
}

impl SyncIo {
    /// Carries out `req` on `file` now.
    pub(crate) fn run(&mut self, file: &File, mut req: IoRequest) {
        self.calls += 1;
        let len = req.len.min(req.buf.len());
        let result = match req.kind {
            IoKind::Read => match req.buf.as_mut_slice().get_mut(..len) {
                Some(bytes) => posix::pread(file, bytes, req.offset),
                None => Err(io::Error::from(io::ErrorKind::InvalidInput)),
            },
            IoKind::Write => match req.buf.as_slice().get(..len) {
                Some(bytes) => posix::pwrite_once(file, bytes, req.offset),
                None => Err(io::Error::from(io::ErrorKind::InvalidInput)),
            },
            // Synchronous here: the calling thread waits for the device's flush.
            IoKind::Sync => posix::datasync(file).map(|()| 0),
        };
        self.done.push_back(IoCompletion {
            tag: req.tag,
            kind: req.kind,
            buf: req.buf,
            result,
        });
    }

    /// Completes a request that could not be carried out (e.g. an unknown file).
    pub(crate) fn fail(&mut self, req: IoRequest, e: io::Error) {
        self.done.push_back(IoCompletion {
            tag: req.tag,
            kind: req.kind,
            buf: req.buf,
            result: Err(e),
        });
    }

    pub(crate) fn reap(&mut self, out: &mut Vec<IoCompletion>) {
        out.extend(self.done.drain(..));
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.done.len()
    }

    pub(crate) fn calls(&self) -> u64 {
        self.calls
    }
}
