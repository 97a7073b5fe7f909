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
//! tombstone. [`PutOp::durable`] is the one place a put is acknowledged. (Before all this, the
//! rare stale copies a failed move left behind are tombstoned: see `Core::stale`.) A crash between the two
//! writes of a move leaves two live copies, which recovery resolves by sequence number. If a
//! write fails, [`PutOp::fail`] undoes what the put changed in memory.

use kv_proto::Reply;

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::index::Location;
use crate::record;
use crate::slab::{self, Geometry, MAX_VALUE_LEN};

use super::{Core, OpId, Step};

/// Where a put stands.
#[derive(Clone, Copy, Debug)]
enum PutState {
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
    state: PutState,
}

impl PutOp {
    pub(super) fn new(key: Vec<u8>, value: Vec<u8>, hash: u64) -> Self {
        Self {
            key,
            value,
            hash,
            state: PutState::Start,
        }
    }

    /// Runs the put as far as it goes without waiting.
    pub(super) fn step<B: Backend>(&mut self, id: OpId, core: &mut Core<B>) -> Step {
        loop {
            match self.state {
                PutState::Start => {
                    match core.unlink_stale(&self.key, id) {
                        Some(Some(loc)) => {
                            self.state = PutState::StaleWriting(loc);
                            return Step::Wait;
                        }
                        Some(None) => return Step::Wait,
                        None => {}
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
                    let seq = core.take_seq();
                    let used = core
                        .blocks
                        .slot_mut(e, target)
                        .and_then(|b| record::encode_live(b, seq, &self.key, &self.value));
                    let Some(used) = used else {
                        let err = core.corrupt(target);
                        return self.fail(core, err);
                    };
                    core.index.insert(&self.key, target);
                    core.blocks.mark_write(e, target, used, id);
                    self.state = PutState::Write { target, old };
                    return Step::Wait;
                }
                PutState::Unlink { old } => {
                    let (block, _) = Geometry::of(old.class).locate(old.slot);
                    let Some(e) = core.blocks.acquire(old.class, block, id, true, false) else {
                        return Step::Wait;
                    };
                    let seq = core.take_seq();
                    let used = core
                        .blocks
                        .slot_mut(e, old)
                        .and_then(|b| record::encode_tombstone(b, seq))
                        .unwrap_or(record::HEADER_LEN);
                    core.blocks.mark_write(e, old, used, id);
                    self.state = PutState::Unlinking { old };
                    return Step::Wait;
                }
                // Waiting for a write; only `written` moves these on.
                PutState::StaleWriting(_) | PutState::Write { .. } | PutState::Unlinking { .. } => {
                    return Step::Wait
                }
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
            PutState::Unlinking { old } => {
                core.release_slot(old);
                self.durable()
            }
            // No write of ours is outstanding in the other states.
            _ => Step::Wait,
        }
    }

    /// The one point where a put becomes durable and is acknowledged: the write of its record
    /// completed — and, if the item moved class, so did the tombstone of its old copy — so the
    /// item survives what [`SyncMode`](crate::SyncMode) promises (a process crash by default,
    /// power loss with `Dsync`), and no older copy can come back.
    fn durable(&mut self) -> Step {
        Step::Done(Ok(Reply::Written))
    }

    /// The block this put waited for could not be read.
    pub(super) fn read_failed<B: Backend>(&mut self, core: &mut Core<B>, err: Error) -> Step {
        self.fail(core, err)
    }

    /// Fails the put, undoing what it changed in memory: the index entry goes back to the old
    /// copy (or away), and a newly taken slot is freed.
    fn fail<B: Backend>(&mut self, core: &mut Core<B>, err: Error) -> Step {
        match self.state {
            // A stale copy's tombstone failed: it stays remembered; nothing else was changed.
            PutState::Start | PutState::StaleWriting(_) => {}
            PutState::Apply { target, old, .. } => {
                if old != Some(target) {
                    core.release_slot(target);
                }
            }
            PutState::Write { target, old } => {
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
