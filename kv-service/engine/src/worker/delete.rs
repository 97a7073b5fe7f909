//! A delete: the index entry goes, a tombstone goes into the slot, and once that write
//! completed the slot is freed and the delete acknowledged.
//!
//! First, though, every stale copy of the key (left live on disk by a move whose tombstone
//! failed) gets a tombstone: otherwise, once the key's current copy is tombstoned, the stale
//! copy would be its only live record at the next recovery and come back. Stale copies go
//! first so that a crash at any point leaves either the key's current value or nothing.
//! (Puts do the same.)

use kv_proto::Reply;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::index::Location;
use crate::record;
use crate::slab::Geometry;

use super::{Core, OpId, StaleStep, Step, Undo};

/// Where a delete stands.
#[derive(Clone, Copy, Debug)]
enum DeleteState {
    /// Next: tombstone a stale copy if there is one, else the key's copy (waiting for its
    /// block if need be).
    Start,
    /// The key's tombstone is in the cached block; its write is queued or in flight.
    Writing(Location),
    /// A stale copy's tombstone is in the cached block; its write is queued or in flight.
    StaleWriting(Location),
    /// Sync mode, the key is missing: the answer waits until everything staged before it is
    /// durable (an earlier write of the key, let run ahead, may still be in flight).
    Barrier,
}

/// A delete.
pub(super) struct DeleteOp {
    key: Vec<u8>,
    /// Hash of the key, for per-key ordering.
    pub(super) hash: u64,
    /// Sync mode: the key's next write was let run once this delete's tombstone was staged.
    pub(super) released: bool,
    /// The key queue let it run (`false` while it waits behind another write of the key).
    pub(super) admitted: bool,
    state: DeleteState,
    /// Staged modes: the bytes the tombstone in flight replaced, to put back if it fails.
    undo: Undo,
}

impl DeleteOp {
    /// Whether the delete's tombstone is staged and it only waits for that write.
    pub(super) fn staged_final(&self) -> bool {
        matches!(self.state, DeleteState::Writing(_) | DeleteState::Barrier)
    }

    pub(super) fn new(key: Vec<u8>, hash: u64) -> Self {
        Self {
            key,
            hash,
            released: false,
            admitted: false,
            state: DeleteState::Start,
            undo: Undo::default(),
        }
    }

    /// A missing key answers at once, without I/O (unless it has stale copies to tombstone).
    pub(super) fn step<B: Backend>(&mut self, id: OpId, core: &mut Core<B>) -> Step {
        if !matches!(self.state, DeleteState::Start) {
            return Step::Wait;
        }
        match core.unlink_stale(&self.key, id) {
            StaleStep::Started(loc, undo) => {
                self.undo = undo;
                self.state = DeleteState::StaleWriting(loc);
                return Step::Wait;
            }
            StaleStep::Wait => return Step::Wait,
            StaleStep::Failed(e) => return Step::Done(Err(e)),
            StaleStep::None => {}
        }
        let Some(loc) = core.index.get(&self.key) else {
            if let Some(st) = core.stage.as_mut().filter(|s| s.is_sync()) {
                if st.barrier(id) {
                    self.state = DeleteState::Barrier;
                    return Step::Wait;
                }
            }
            return Step::Done(Ok(Reply::NotFound));
        };
        let (block, _) = Geometry::of(loc.class).locate(loc.slot);
        let Some(e) = core.blocks.acquire(loc.class, block, id, true, false) else {
            return Step::Wait;
        };
        match core.room(e, loc.class, record::HEADER_LEN, id) {
            Ok(true) => {}
            Ok(false) => return Step::Wait,
            Err(err) => return Step::Done(Err(err)),
        }
        let Some(undo) = core.write_record(e, loc, Some(id), record::encode_tombstone) else {
            return Step::Done(Err(core.corrupt(loc)));
        };
        self.undo = undo;
        core.index.remove(&self.key);
        self.state = DeleteState::Writing(loc);
        Step::Wait
    }

    /// A tombstone's write completed, or failed (the key's own: its index entry comes back; a
    /// stale copy's: it stays remembered for the next delete, and the key is untouched).
    pub(super) fn written<B: Backend>(
        &mut self,
        id: OpId,
        core: &mut Core<B>,
        result: Result<()>,
    ) -> Step {
        let undo = std::mem::take(&mut self.undo);
        match (self.state, result) {
            (DeleteState::Writing(loc), Ok(())) => {
                core.release_slot(loc);
                Step::Done(Ok(Reply::Deleted))
            }
            (DeleteState::Writing(loc), Err(e)) => {
                core.restore_slot(loc, undo);
                core.index.insert(&self.key, loc);
                Step::Done(Err(e))
            }
            (DeleteState::StaleWriting(loc), Ok(())) => {
                core.remove_stale(&self.key, loc);
                self.state = DeleteState::Start;
                self.step(id, core)
            }
            (DeleteState::StaleWriting(loc), Err(e)) => {
                core.restore_slot(loc, undo);
                Step::Done(Err(e))
            }
            (DeleteState::Barrier, Ok(())) => Step::Done(Ok(Reply::NotFound)),
            (DeleteState::Barrier, Err(e)) => Step::Done(Err(e)),
            // No write of ours is outstanding in the other states.
            _ => Step::Wait,
        }
    }

    /// A block could not be read; nothing of the key was changed yet (stale copies already
    /// tombstoned stay so: they were no part of the key's value).
    pub(super) fn read_failed(&mut self, err: Error) -> Step {
        Step::Done(Err(err))
    }
}
