//! Per-key ordering: writes (puts, deletes) of one key run one at a time, in submission
//! order, so a delete can never overtake the tombstone of an earlier move of the same key. A
//! write holds its key until it completes — in sync mode only until its records are staged
//! (the worker then releases the key early: see `Worker::advance`).
//!
//! Keys are told apart by their 64-bit hash; two keys with the same hash are merely
//! serialised with each other, which is harmless.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;

use crate::pagecache::KeyHasher;

use super::OpId;

/// The writes waiting behind the one running, per key hash.
#[derive(Default)]
pub(super) struct KeyQueue {
    busy: HashMap<u64, VecDeque<OpId>, BuildHasherDefault<KeyHasher>>,
    /// The write of each busy key that runs now (the one admitted or released last).
    running: HashMap<u64, OpId, BuildHasherDefault<KeyHasher>>,
}

impl KeyQueue {
    /// A write of the key with this hash arrives: `true` if it may run now, `false` if it was
    /// queued behind the running one.
    pub(super) fn admit(&mut self, hash: u64, id: OpId) -> bool {
        match self.busy.get_mut(&hash) {
            Some(queue) => {
                queue.push_back(id);
                false
            }
            None => {
                self.busy.insert(hash, VecDeque::new());
                self.running.insert(hash, id);
                true
            }
        }
    }

    /// Whether a write of the key with this hash is running or queued (`hash` is computed
    /// only if some write is).
    pub(super) fn is_busy(&self, hash: impl FnOnce() -> u64) -> bool {
        !self.busy.is_empty() && self.busy.contains_key(&hash())
    }

    /// The write of this key that runs now, if any.
    pub(super) fn running(&self, hash: u64) -> Option<OpId> {
        self.running.get(&hash).copied()
    }

    /// The running write of this key finished: the next one to run, if any.
    pub(super) fn release(&mut self, hash: u64) -> Option<OpId> {
        let next = self.busy.get_mut(&hash)?.pop_front();
        match next {
            Some(id) => {
                self.running.insert(hash, id);
            }
            None => {
                self.busy.remove(&hash);
                self.running.remove(&hash);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_of_one_key_run_in_order_others_at_once() {
        let mut q = KeyQueue::default();
        assert!(q.admit(1, 10));
        assert!(!q.admit(1, 11));
        assert!(!q.admit(1, 12));
        assert!(q.admit(2, 20), "another key is not held up");
        assert_eq!(q.release(1), Some(11));
        assert_eq!(q.release(1), Some(12));
        assert_eq!(q.release(1), None);
        assert!(q.admit(1, 13), "the key is free again");
    }
}
