//! A delete: the index entry goes, a tombstone goes into the slot, and once that write
//! completed the slot is freed and the delete acknowledged.

use kv_proto::Reply;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::index::Location;
use crate::record;
use crate::slab::Geometry;

use super::{Core, OpId, Step};

/// A delete.
pub(super) struct DeleteOp {
    key: Vec<u8>,
    /// Hash of the key, for per-key ordering.
    pub(super) hash: u64,
    /// The slot whose tombstone is in the cached block, its write queued or in flight.
    writing: Option<Location>,
}

impl DeleteOp {
    pub(super) fn new(key: Vec<u8>, hash: u64) -> Self {
        Self {
            key,
            hash,
            writing: None,
        }
    }

    /// A missing key answers at once, without I/O.
    pub(super) fn step<B: Backend>(&mut self, id: OpId, core: &mut Core<B>) -> Step {
        if self.writing.is_some() {
            return Step::Wait;
        }
        let Some(target) = core.index.get(&self.key) else {
            return Step::Done(Ok(Reply::NotFound));
        };
        let (block, _) = Geometry::of(target.class).locate(target.slot);
        let Some(e) = core.blocks.acquire(target.class, block, id, true, false) else {
            return Step::Wait;
        };
        let seq = core.take_seq();
        let used = core
            .blocks
            .slot_mut(e, target)
            .and_then(|b| record::encode_tombstone(b, seq))
            .unwrap_or(record::HEADER_LEN);
        core.index.remove(&self.key);
        core.blocks.mark_write(e, target, used, id);
        self.writing = Some(target);
        Step::Wait
    }

    /// The tombstone's write completed (the delete is durable), or failed (the index entry
    /// comes back).
    pub(super) fn written<B: Backend>(&mut self, core: &mut Core<B>, result: Result<()>) -> Step {
        let Some(loc) = self.writing.take() else {
            return Step::Wait;
        };
        match result {
            Ok(()) => {
                core.release_slot(loc);
                Step::Done(Ok(Reply::Deleted))
            }
            Err(e) => {
                core.index.insert(&self.key, loc);
                Step::Done(Err(e))
            }
        }
    }

    /// The block could not be read (nothing was changed yet).
    pub(super) fn read_failed(&mut self, err: Error) -> Step {
        Step::Done(Err(err))
    }
}
