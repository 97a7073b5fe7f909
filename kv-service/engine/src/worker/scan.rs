//! A worker's part of a scan: a list of keys known in advance (from this worker's index, or
//! chosen by the caller across workers, see [`Worker::scan_keys`](super::Worker::scan_keys)),
//! read by one operation. Items in cached blocks are copied out at once; the blocks that miss
//! are all queued in the same step, in key order, so they go to the backend in one
//! submission — neighbouring blocks as one coalesced read (`blocks.rs`) — and each block is
//! read once however many of the scan's items it holds. The items come back in the order of
//! the keys.
//!
//! Invariant: the scan is registered as a waiter on a block at most once at a time
//! (`waiting_on` lists those registrations, `waits` counts the ones not answered yet), and it
//! finishes only once every registration has been answered, so that no
//! [`Event`](super::blocks::Event) for its id can arrive after its id has been reused. Each
//! answer ([`ScanOp::loaded`]) names its block, so a step looks up again only the keys whose
//! block has arrived, and the scan runs once for all the answers of one batch of completions.

use kv_proto::{Item, Reply};

use crate::backend::Backend;
use crate::error::Error;
use crate::pagecache::{block_key, BlockKey};
use crate::record::Slot;
use crate::slab::Geometry;

use super::{Core, OpId, Step};

/// One key of a scan.
enum Part {
    /// Not read yet; `wait`: the block it was found in last, if the scan registered on it.
    Pending {
        key: Vec<u8>,
        wait: Option<BlockKey>,
    },
    /// Read: the item.
    Found(Item),
    /// Not in the index any more (deleted since the keys were chosen).
    Gone,
}

/// A block the scan registered on.
struct Wait {
    block: BlockKey,
    /// Its registration was answered: the block was loaded.
    answered: bool,
}

/// A scan of known keys.
pub(super) struct ScanOp {
    parts: Vec<Part>,
    /// Parts still `Pending`.
    pending: usize,
    /// Blocks the scan is registered on; at most one entry per block.
    waiting_on: Vec<Wait>,
    /// Registrations not yet answered.
    waits: usize,
    /// The scan is in the worker's runnable queue (it is, when it starts).
    queued: bool,
    /// The first step has run.
    started: bool,
    error: Option<Error>,
    /// Items whose block was not cached (or not loaded yet) when the scan first looked for
    /// them.
    pub(super) uncached: u64,
}

impl ScanOp {
    /// A scan of `keys`, in the order given (key order for a scan's answer).
    pub(super) fn new(keys: Vec<Vec<u8>>) -> Self {
        let pending = keys.len();
        Self {
            parts: keys
                .into_iter()
                .map(|key| Part::Pending { key, wait: None })
                .collect(),
            pending,
            waiting_on: Vec::new(),
            waits: 0,
            queued: true,
            started: false,
            error: None,
            uncached: 0,
        }
    }

    /// The registration on `block` was answered: the block is loaded. Returns whether the
    /// scan must be put in the runnable queue (it is not there yet).
    pub(super) fn loaded(&mut self, block: BlockKey) -> bool {
        if let Some(w) = self
            .waiting_on
            .iter_mut()
            .find(|w| w.block == block && !w.answered)
        {
            w.answered = true;
            self.waits = self.waits.saturating_sub(1);
        }
        !std::mem::replace(&mut self.queued, true)
    }

    /// Reads what is cached or has arrived, queues one read per missing block, and finishes
    /// once every key is answered.
    pub(super) fn step<B: Backend>(&mut self, id: OpId, core: &mut Core<B>) -> Step {
        self.queued = false;
        let first = !self.started;
        self.started = true;
        loop {
            if self.error.is_none() {
                self.read_parts(id, core, first);
            }
            if self.waits > 0 {
                return Step::Wait;
            }
            if let Some(e) = self.error.take() {
                return Step::Done(Err(e));
            }
            if self.pending == 0 {
                return Step::Done(Ok(Reply::Items(self.take_items())));
            }
            // Every registration answered, yet keys remain: their blocks were loaded and
            // evicted again before this step. Register afresh.
            self.waiting_on.clear();
        }
    }

    fn read_parts<B: Backend>(&mut self, id: OpId, core: &mut Core<B>, first: bool) {
        for part in self.parts.iter_mut() {
            let Part::Pending { key, wait } = part else {
                continue;
            };
            // Still loading: nothing to look at (its key is looked up again once it arrives).
            if let Some(bk) = *wait {
                if self.waiting_on.iter().any(|w| w.block == bk && !w.answered) {
                    continue;
                }
            }
            let Some(loc) = core.index.get(key) else {
                *part = Part::Gone;
                self.pending -= 1;
                continue;
            };
            let (block, _) = Geometry::of(loc.class).locate(loc.slot);
            let bk = block_key(loc.class, block);
            let entry = match self.waiting_on.iter().find(|w| w.block == bk) {
                // Registered and loaded: usable unless evicted again meanwhile.
                Some(w) if w.answered => core.blocks.loaded(loc.class, block),
                Some(_) => None,
                None => match core.blocks.acquire(loc.class, block, id, false, false) {
                    Some(e) => Some(e),
                    None => {
                        self.waiting_on.push(Wait {
                            block: bk,
                            answered: false,
                        });
                        self.waits += 1;
                        None
                    }
                },
            };
            let Some(e) = entry else {
                if first {
                    self.uncached += 1;
                }
                *wait = Some(bk);
                continue;
            };
            let value = match core.blocks.decode_slot(e, loc) {
                Some(Slot::Live { key: k, value, .. }) if k == key.as_slice() => value.to_vec(),
                // Never a wrong value: a record that does not hold the key is an error.
                _ => {
                    self.error.get_or_insert(core.corrupt(loc));
                    return;
                }
            };
            let key = std::mem::take(key);
            *part = Part::Found((key, value));
            self.pending -= 1;
        }
    }

    fn take_items(&mut self) -> Vec<Item> {
        std::mem::take(&mut self.parts)
            .into_iter()
            .filter_map(|p| match p {
                Part::Found(item) => Some(item),
                Part::Pending { .. } | Part::Gone => None,
            })
            .collect()
    }

    /// A block the scan waited for could not be read: the scan fails once its other
    /// registrations are answered.
    pub(super) fn read_failed(&mut self, err: Error) -> Step {
        self.waits = self.waits.saturating_sub(1);
        self.error.get_or_insert(err);
        if self.waits > 0 {
            Step::Wait
        } else {
            Step::Done(Err(self.error.take().unwrap_or(Error::Closed)))
        }
    }
}

/// Keeps, of each worker's first keys of a scan ([`Worker::scan_keys`](super::Worker::scan_keys),
/// each list sorted, the lists disjoint), only those among the first `max` keys of all of them:
/// afterwards the lists together hold exactly the keys the scan returns, each list still a
/// prefix of what it was. Allocates one counter per list.
///
/// ```
/// let mut parts = vec![
///     vec![b"a".to_vec(), b"d".to_vec(), b"e".to_vec()],
///     vec![b"b".to_vec(), b"c".to_vec(), b"f".to_vec()],
/// ];
/// kv_engine::choose_scan_keys(&mut parts, 3);
/// assert_eq!(parts, vec![vec![b"a".to_vec()], vec![b"b".to_vec(), b"c".to_vec()]]);
/// ```
pub fn choose_scan_keys(parts: &mut [Vec<Vec<u8>>], max: usize) {
    let mut taken = vec![0usize; parts.len()];
    for _ in 0..max {
        let mut best: Option<(usize, &[u8])> = None;
        for (w, part) in parts.iter().enumerate() {
            let Some(k) = taken.get(w).and_then(|&t| part.get(t)) else {
                continue;
            };
            if best.is_none_or(|(_, b)| k.as_slice() < b) {
                best = Some((w, k));
            }
        }
        let Some((w, _)) = best else { break };
        if let Some(t) = taken.get_mut(w) {
            *t += 1;
        }
    }
    for (part, t) in parts.iter_mut().zip(taken) {
        part.truncate(t);
    }
}
