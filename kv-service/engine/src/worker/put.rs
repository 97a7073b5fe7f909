//! A put's way to durability, as a state machine.
//!
//! ```text
//!   Start ──choose the slot──▶ Apply ──record into the cached block──▶ Write
//!                               (waits for the block)   index → new slot   (waits for the write)
//!                                                                             │ completed
//!                         same slot, or a new item ◀──────────────────────────┤
//!                                   │                                         │ moved to another class
//!                                   ▼                                         ▼
//!                                durable()  ◀──completed── Unlinking ◀── Unlink
//!                                                (waits)   tombstone into   (waits for the
//!                                                           the old slot     old block)
//! ```
//!
//! The record goes into its slot in place when the item keeps its size class; otherwise into a
//! new slot (a free one, or appended) and, once that write completed, the old slot gets a
//! tombstone. "The write" is the block's own write in page mode and the record's write to the
//! staging area in the staged modes ([`Core::write_record`](super::Core)); in the staged modes
//! a step that changes a block first waits for room in the staging area.
//! [`PutOp::durable`] is the one place a put is acknowledged. (Before all this, the
//! rare stale copies a failed move left behind are tombstoned: see `Core::stale`.) A crash between the two
//! writes of a move leaves two live copies, which recovery resolves by sequence number. If a
//! write fails, [`PutOp::fail`] undoes what the put changed in memory.

use kv_proto::Reply;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::index::Location;
use crate::record;
use crate::slab::{self, Geometry, MAX_VALUE_LEN};

use super::{Core, OpId, StaleStep, Step, Undo};

/// Where a put stands.
#[derive(Clone, Copy, Debug)]
enum PutState {
    /// A reorganisation move (see `worker/reorg.rs`): the item's current copy `old` is read
    /// (its value becomes the put's) and it goes on as a move to `target`, a slot the
    /// reorganisation took. If the key no longer lives at `old` (a write or delete ran
    /// first), the move is abandoned.
    Fetch { target: Location, old: Location },
    /// Not started: stale copies of the key (see `Core::stale`) are tombstoned first, then the
    /// slot is chosen.
    Start,
    /// A stale copy's tombstone is in the cached block; its write is queued or in flight.
    StaleWriting(Location),
    /// The slot is chosen (`target`; `old`: the item's current copy, if any); waiting for the
    /// target block to be usable. `fresh`: the block was never written (no read needed).
    Apply {
        target: Location,
        fresh: bool,
        old: Option<Location>,
    },
    /// The record is in the cached block and the index points at it; its block write is
    /// queued or in flight.
    Write {
        target: Location,
        old: Option<Location>,
    },
    /// Staged modes, a move: the new record and the old copy's tombstone are staged in one
    /// chunk of the staging area (recovered together or not at all); its write is queued or
    /// in flight.
    Moving { target: Location, old: Location },
    /// The new copy is durable; waiting for the old copy's block to apply a tombstone.
    Unlink { old: Location },
    /// The tombstone is in the cached block; its write is queued or in flight.
    Unlinking { old: Location },
}

/// A put (insert or overwrite).
pub(super) struct PutOp {
    key: Vec<u8>,
    value: Vec<u8>,
    /// Hash of the key, for per-key ordering.
    pub(super) hash: u64,
    /// Sync mode: the key's next write was let run once this one's last record was staged
    /// (see `Worker::advance`).
    pub(super) released: bool,
    /// The key queue let it run (`false` while it waits behind another write of the key).
    pub(super) admitted: bool,
    state: PutState,
    /// Staged modes: the bytes the change in flight replaced, to put back if it fails.
    undo: Undo,
    /// Staged modes, a move: the old copy's bytes the tombstone replaced.
    undo_old: Undo,
    /// Staged modes, a move: the target block, kept cached while the old copy's is loaded.
    held: Option<u32>,
    /// A reorganisation move, not a client's put: nobody is answered when it finishes.
    pub(super) relocation: bool,
    /// A reorganisation move that completed (the item lives at its new slot, the old one is
    /// free); `false` if it was abandoned or failed.
    pub(super) moved: bool,
}

impl PutOp {
    pub(super) fn new(key: Vec<u8>, value: Vec<u8>, hash: u64) -> Self {
        Self {
            key,
            value,
            hash,
            released: false,
            admitted: false,
            state: PutState::Start,
            undo: Undo::default(),
            undo_old: Undo::default(),
            held: None,
            relocation: false,
            moved: false,
        }
    }

    /// A reorganisation move of `key` from `old` to `target` (a slot of the same class, taken
    /// for it). It runs as a put of the key's current value to `target` — through the key's
    /// write queue, so a write of the key submitted later runs after it and wins — and then
    /// ends like a move between classes: new copy written, index switched, old copy
    /// tombstoned, old slot freed.
    pub(super) fn relocation(key: Vec<u8>, hash: u64, old: Location, target: Location) -> Self {
        let mut p = Self::new(key, Vec::new(), hash);
        p.relocation = true;
        p.state = PutState::Fetch { target, old };
        p
    }

    /// Whether the put's last record is staged and it only waits for that record's write
    /// (staged modes: an overwrite in place, a new item or a move).
    pub(super) fn staged_final(&self) -> bool {
        matches!(self.state, PutState::Write { .. } | PutState::Moving { .. })
    }

    /// Sync mode: the key's earlier write, which this put ran behind, failed and was undone,
    /// so a slot chosen from what it had left is stale: give it back and start again.
    /// Returns whether the put should run again (it had not staged anything yet).
    pub(super) fn restart<B: Backend>(&mut self, core: &mut Core<B>) -> bool {
        match self.state {
            PutState::Start => true,
            PutState::Fetch { target, .. } => {
                core.release_slot(target);
                self.state = PutState::Start;
                true
            }
            PutState::Apply { target, old, .. } => {
                self.unhold(core);
                if old != Some(target) {
                    core.release_slot(target);
                }
                self.state = PutState::Start;
                true
            }
            _ => false,
        }
    }

    /// Lets the block [`PutOp::held`] go.
    fn unhold<B: Backend>(&mut self, core: &mut Core<B>) {
        if let Some(e) = self.held.take() {
            core.blocks.release(e);
        }
    }

    /// Runs the put as far as it goes without waiting.
    pub(super) fn step<B: Backend>(&mut self, id: OpId, core: &mut Core<B>) -> Step {
        loop {
            match self.state {
                PutState::Fetch { target, old } => {
                    // Abandoned when the key moved or went away meanwhile, or has stale
                    // copies (its next client write deals with those).
                    if core.index.get(&self.key) != Some(old) || core.stale.contains_key(&self.key)
                    {
                        core.release_slot(target);
                        return Step::Done(Ok(Reply::Written));
                    }
                    let (block, _) = Geometry::of(old.class).locate(old.slot);
                    let Some(e) = core.blocks.acquire(old.class, block, id, false, false) else {
                        return Step::Wait;
                    };
                    match core.blocks.slot(e, old).map(record::decode) {
                        Some(record::Slot::Live { key, value, .. })
                            if key == self.key.as_slice() =>
                        {
                            self.value = value.to_vec();
                        }
                        _ => {
                            core.release_slot(target);
                            return Step::Done(Err(core.corrupt(old)));
                        }
                    }
                    // The target block lies past everything written, but another move of
                    // the same round may have written and (page mode) evicted it: read it.
                    self.state = PutState::Apply {
                        target,
                        fresh: false,
                        old: Some(old),
                    };
                }
                // A relocation sent back to the start (its key's earlier write failed in sync
                // mode) is abandoned: its slot was given back.
                PutState::Start if self.relocation => return Step::Done(Ok(Reply::Written)),
                PutState::Start => {
                    match core.unlink_stale(&self.key, id) {
                        StaleStep::Started(loc, undo) => {
                            self.undo = undo;
                            self.state = PutState::StaleWriting(loc);
                            return Step::Wait;
                        }
                        StaleStep::Wait => return Step::Wait,
                        StaleStep::Failed(e) => return Step::Done(Err(e)),
                        StaleStep::None => {}
                    }
                    match self.choose_slot(core) {
                        Ok(next) => self.state = next,
                        Err(e) => return Step::Done(Err(e)),
                    }
                }
                PutState::Apply { target, fresh, old } => {
                    let (block, _) = Geometry::of(target.class).locate(target.slot);
                    let Some(e) = core.blocks.acquire(target.class, block, id, true, fresh) else {
                        return Step::Wait;
                    };
                    // Staged modes: a move's two records go into one chunk of the staging area
                    // (a power cut keeps both or neither), so the old copy's block is needed
                    // now too.
                    let moving = old.filter(|&o| core.stage.is_some() && o != target);
                    let old_block = match moving {
                        Some(o) => {
                            // Both blocks are needed at once: loading the old one must not
                            // evict the target (a small cache would thrash forever).
                            if self.held.is_none() {
                                core.blocks.hold(e);
                                self.held = Some(e);
                            }
                            let (b, _) = Geometry::of(o.class).locate(o.slot);
                            let Some(eo) = core.blocks.acquire(o.class, b, id, true, false) else {
                                return Step::Wait;
                            };
                            Some((o, eo))
                        }
                        None => None,
                    };
                    let len = record::encoded_len(self.key.len(), self.value.len());
                    let mut room = core.room(e, target.class, len, id);
                    if let (Ok(true), Some((o, eo))) = (&room, old_block) {
                        room = core.room(eo, o.class, record::HEADER_LEN, id);
                    }
                    match room {
                        Ok(true) => {}
                        Ok(false) => return Step::Wait,
                        Err(err) => return self.fail(core, err),
                    }
                    self.unhold(core);
                    if old_block.is_some() {
                        core.reserve(&[len, record::HEADER_LEN]);
                    }
                    let (key, value) = (&self.key, &self.value);
                    let written = core.write_record(e, target, Some(id), |b, seq| {
                        record::encode_live(b, seq, key, value)
                    });
                    let Some(undo) = written else {
                        let err = core.corrupt(target);
                        return self.fail(core, err);
                    };
                    self.undo = undo;
                    core.index.insert(&self.key, target);
                    self.state = PutState::Write { target, old };
                    if let Some((o, eo)) = old_block {
                        // The chunk's write answers for both records: no second waiter.
                        match core.write_record(eo, o, None, record::encode_tombstone) {
                            Some(undo) => self.undo_old = undo,
                            None => {
                                let err = core.corrupt(o);
                                return self.fail(core, err);
                            }
                        }
                        self.state = PutState::Moving { target, old: o };
                    }
                    return Step::Wait;
                }
                PutState::Unlink { old } => {
                    let (block, _) = Geometry::of(old.class).locate(old.slot);
                    let Some(e) = core.blocks.acquire(old.class, block, id, true, false) else {
                        return Step::Wait;
                    };
                    match core.room(e, old.class, record::HEADER_LEN, id) {
                        Ok(true) => {}
                        Ok(false) => return Step::Wait,
                        Err(err) => return self.fail(core, err),
                    }
                    let Some(undo) = core.write_record(e, old, Some(id), record::encode_tombstone)
                    else {
                        let err = core.corrupt(old);
                        return self.fail(core, err);
                    };
                    self.undo = undo;
                    self.state = PutState::Unlinking { old };
                    return Step::Wait;
                }
                // Waiting for a write; only `written` moves these on.
                PutState::StaleWriting(_)
                | PutState::Write { .. }
                | PutState::Moving { .. }
                | PutState::Unlinking { .. } => return Step::Wait,
            }
        }
    }

    /// Picks the slot: the current one if the item keeps its class, else a free or appended
    /// slot of the new class (creating the class's file if needed).
    fn choose_slot<B: Backend>(&self, core: &mut Core<B>) -> Result<PutState> {
        let Some(class) = slab::class_for(self.key.len(), self.value.len()) else {
            return Err(Error::ValueTooLarge {
                len: self.value.len(),
                max: MAX_VALUE_LEN,
            });
        };
        let old = core.index.get(&self.key);
        if let Some(o) = old.filter(|o| o.class == class) {
            return Ok(PutState::Apply {
                target: o,
                fresh: false,
                old,
            });
        }
        let a = core.allocate(class)?;
        Ok(PutState::Apply {
            target: Location {
                class,
                slot: a.slot,
            },
            fresh: a.fresh_block,
            old,
        })
    }

    /// The block write carrying this put's change completed, or failed.
    pub(super) fn written<B: Backend>(
        &mut self,
        id: OpId,
        core: &mut Core<B>,
        result: Result<()>,
    ) -> Step {
        if let Err(e) = result {
            return self.fail(core, e);
        }
        self.undo = Undo::default();
        self.undo_old = Undo::default();
        match self.state {
            PutState::StaleWriting(loc) => {
                core.remove_stale(&self.key, loc);
                self.state = PutState::Start;
                self.step(id, core)
            }
            PutState::Write {
                target,
                old: Some(old),
            } if old != target => {
                self.state = PutState::Unlink { old };
                self.step(id, core)
            }
            PutState::Write { .. } => self.durable(),
            PutState::Moving { old, .. } | PutState::Unlinking { old } => {
                core.release_slot(old);
                self.durable()
            }
            // No write of ours is outstanding in the other states.
            _ => Step::Wait,
        }
    }

    /// The one point where a put becomes durable and is acknowledged: the write of its record
    /// completed — and, if the item moved class, so did the tombstone of its old copy — so the
    /// item survives what the [`Durability`](crate::Durability) mode promises (a process crash
    /// in every mode; power loss with `Sync`, and with `Periodic` once the next flush is
    /// done), and no older copy can come back.
    fn durable(&mut self) -> Step {
        self.moved = self.relocation;
        Step::Done(Ok(Reply::Written))
    }

    /// The block this put waited for could not be read.
    pub(super) fn read_failed<B: Backend>(&mut self, core: &mut Core<B>, err: Error) -> Step {
        self.fail(core, err)
    }

    /// Fails the put, undoing what it changed in memory: the slot's bytes (staged modes; in
    /// page mode the failed write dropped the block from the cache), the index entry goes
    /// back to the old copy (or away), and a newly taken slot is freed.
    fn fail<B: Backend>(&mut self, core: &mut Core<B>, err: Error) -> Step {
        self.unhold(core);
        let undo = std::mem::take(&mut self.undo);
        match self.state {
            PutState::Start => {}
            PutState::Fetch { target, .. } => core.release_slot(target),
            // A stale copy's tombstone failed: it stays remembered; nothing else was changed.
            PutState::StaleWriting(loc) => core.restore_slot(loc, undo),
            PutState::Apply { target, old, .. } => {
                if old != Some(target) {
                    core.release_slot(target);
                }
            }
            PutState::Moving { target, old } => {
                core.restore_slot(target, undo);
                core.restore_slot(old, std::mem::take(&mut self.undo_old));
                core.index.insert(&self.key, old);
                core.release_slot(target);
            }
            PutState::Write { target, old } => {
                core.restore_slot(target, undo);
                match old {
                    Some(o) => {
                        core.index.insert(&self.key, o);
                    }
                    None => {
                        core.index.remove(&self.key);
                    }
                }
                if old != Some(target) {
                    core.release_slot(target);
                }
            }
            PutState::Unlink { old } | PutState::Unlinking { old } => {
                core.restore_slot(old, undo);
                // The new copy is durable; the old one keeps its slot (not reused), loses to
                // the newer sequence at the next recovery, and is tombstoned by the key's next
                // delete.
                core.add_stale(&self.key, old);
                tracing::error!(
                    worker = core.id,
                    class = old.class,
                    slot = old.slot,
                    error = %err,
                    "could not tombstone the old copy of a moved item"
                );
            }
        }
        Step::Done(Err(err))
    }
}
