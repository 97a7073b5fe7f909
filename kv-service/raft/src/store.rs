//! One shard's Raft state in memory, as raft-rs's [`Storage`]: hard state, conf state, the
//! compaction point and the entries after it.
//!
//! A `ShardStore` is owned by its shard's `RawNode` (no sharing, no locks); every change
//! goes through the thread's [`ThreadLog`](crate::ThreadLog), which records it in the log
//! and applies it here with the same functions recovery replays records with — so what
//! raft-rs reads is exactly what the log holds.
//!
//! All live entries stay in memory: the log is compacted below what the state machine made
//! durable, so what stays is the tail not yet applied durably (plus what the server keeps for
//! slow followers); a follower further behind gets a snapshot.

use std::cell::Cell;
use std::collections::VecDeque;

use bytes::Bytes;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

use crate::format::ShardId;

/// What a shard's state machine last made durable, as recorded in the log
/// ([`ThreadLog::record_applied`](crate::ThreadLog::record_applied)): restart replays the
/// log from `index + 1`, and the log may be compacted up to `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Every entry up to here is applied and durable in the state machine.
    pub index: u64,
    /// The term of entry `index`.
    pub term: u64,
    /// The owner's own state at `index` that lives outside its state machine's data (the
    /// server keeps its client sessions here).
    pub data: Bytes,
}

/// A shard's Raft state as raft-rs reads it.
#[derive(Debug)]
pub struct ShardStore {
    shard: ShardId,
    hard_state: HardState,
    conf_state: ConfState,
    /// (index, term) of the last entry compacted away: entries start after it.
    compacted: (u64, u64),
    /// Consecutive entries from `compacted.0 + 1`.
    entries: VecDeque<Entry>,
    /// Bytes of the entries' data and context.
    entry_bytes: usize,
    /// What [`Storage::snapshot`] hands out, set by the state machine's owner.
    snapshot: Option<Snapshot>,
    /// The index raft-rs last asked a snapshot for and could not get one.
    snapshot_wanted: Cell<Option<u64>>,
    /// The state machine's last durable point.
    applied: Option<Applied>,
}

/// Why a change to a shard's log was refused (raft-rs never asks for these; a caller that
/// does has a bug).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Entries that do not follow on from the log, or are not consecutive.
    #[error("shard {shard}: entries from {first} do not follow the log (first {first_index}, last {last_index})")]
    NotContiguous {
        /// The shard.
        shard: ShardId,
        /// The first index given.
        first: u64,
        /// The log's first index.
        first_index: u64,
        /// The log's last index.
        last_index: u64,
    },
    /// Compaction past the last entry.
    #[error("shard {shard}: cannot compact to {index}, the log ends at {last_index}")]
    CompactPastEnd {
        /// The shard.
        shard: ShardId,
        /// The index asked for.
        index: u64,
        /// The last index.
        last_index: u64,
    },
}

impl ShardStore {
    pub(crate) fn new(shard: ShardId) -> Self {
        Self {
            shard,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            compacted: (0, 0),
            entries: VecDeque::new(),
            entry_bytes: 0,
            snapshot: None,
            snapshot_wanted: Cell::new(None),
            applied: None,
        }
    }

    /// What the state machine last made durable (recorded with
    /// [`ThreadLog::record_applied`](crate::ThreadLog::record_applied)), if anything.
    pub fn applied(&self) -> Option<&Applied> {
        self.applied.as_ref()
    }

    /// The snapshot [`ShardStore::set_snapshot`] set, if any.
    pub fn current_snapshot(&self) -> Option<&Snapshot> {
        self.snapshot.as_ref()
    }

    /// The shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The hard state (term, vote, commit).
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    /// The conf state (the shard's voters).
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// (index, term) of the last entry compacted away ((0, 0) for a new log).
    pub fn compacted(&self) -> (u64, u64) {
        self.compacted
    }

    /// The first index held (compacted + 1).
    pub fn first(&self) -> u64 {
        self.compacted.0 + 1
    }

    /// The last index held (the compacted index if no entries).
    pub fn last(&self) -> u64 {
        self.entries.back().map_or(self.compacted.0, |e| e.index)
    }

    /// Index of the first entry held, if any (after recovery and every change: `first()`).
    pub fn first_held(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no entries are held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of data and context held in entries.
    pub fn entry_bytes(&self) -> usize {
        self.entry_bytes
    }

    /// The entry at `index`, if held.
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let i = index.checked_sub(self.held_from())?;
        self.entries.get(usize::try_from(i).ok()?)
    }

    /// Index of `entries[0]`. Equal to `first()` except transiently during replay (see
    /// [`ShardStore::append`]).
    fn held_from(&self) -> u64 {
        self.entries
            .front()
            .map_or(self.compacted.0 + 1, |e| e.index)
    }

    /// The term of entry `index`, if known (held, or the compacted one).
    pub fn term_of(&self, index: u64) -> Option<u64> {
        if index == self.compacted.0 {
            return Some(self.compacted.1);
        }
        self.entry(index).map(|e| e.term)
    }

    /// Sets what [`Storage::snapshot`] returns from now on: the state machine's image at
    /// `snapshot.metadata.index` (its data, or a descriptor the server streams in chunks).
    /// Clears [`ShardStore::snapshot_wanted`] if it covers the index asked for.
    pub fn set_snapshot(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        if self.snapshot_wanted.get().is_some_and(|w| index >= w) {
            self.snapshot_wanted.set(None);
        }
        self.snapshot = Some(snapshot);
    }

    /// The index raft-rs asked a snapshot for and was told to wait (its owner should call
    /// [`ShardStore::set_snapshot`] with one at least that recent; never older than the
    /// compaction point).
    pub fn snapshot_wanted(&self) -> Option<u64> {
        self.snapshot_wanted.get()
    }

    // Changes, applied by the ThreadLog (live) and by recovery (replay).

    pub(crate) fn set_hard_state(&mut self, hs: HardState) {
        self.hard_state = hs;
    }

    pub(crate) fn set_conf_state(&mut self, cs: ConfState) {
        self.conf_state = cs;
    }

    /// Records the state machine's durable point (never moving it back: records replay in
    /// the order they were written, and a newer one supersedes).
    pub(crate) fn set_applied(&mut self, a: Applied) {
        if self.applied.as_ref().is_none_or(|old| a.index >= old.index) {
            self.applied = Some(a);
        }
    }

    /// Checks that `entries` can be appended: consecutive, starting within
    /// `first..=last + 1`.
    pub(crate) fn check_append(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(head) = entries.first() else {
            return Ok(());
        };
        let bad = || StoreError::NotContiguous {
            shard: self.shard,
            first: head.index,
            first_index: self.first(),
            last_index: self.last(),
        };
        if head.index < self.first() || head.index > self.last() + 1 {
            return Err(bad());
        }
        if entries
            .iter()
            .enumerate()
            .any(|(i, e)| e.index != head.index + i as u64)
        {
            return Err(bad());
        }
        Ok(())
    }

    /// Appends consecutive entries, replacing the held ones from the first index on.
    /// Replay tolerates what a removed segment leaves: entries at or below the compaction
    /// point are skipped, and entries after a gap replace everything held (the gap is below
    /// a later compaction; recovery checks that in the end).
    pub(crate) fn append(&mut self, entries: &[Entry]) {
        for e in entries {
            if e.index <= self.compacted.0 {
                continue;
            }
            if e.index < self.held_from() {
                // Below what replay holds after a gap: restart from here.
                self.clear_entries();
            } else if e.index <= self.last() {
                let keep = usize::try_from(e.index - self.held_from())
                    .unwrap_or(usize::MAX)
                    .min(self.entries.len());
                for old in self.entries.drain(keep..) {
                    self.entry_bytes -= old.data.len() + old.context.len();
                }
            } else if e.index > self.last() + 1 {
                self.clear_entries();
            }
            self.entry_bytes += e.data.len() + e.context.len();
            self.entries.push_back(e.clone());
        }
    }

    fn clear_entries(&mut self) {
        self.entries.clear();
        self.entry_bytes = 0;
    }

    /// Drops entries up to `index`, remembering `term` as index's.
    pub(crate) fn compact(&mut self, index: u64, term: u64) {
        if index <= self.compacted.0 {
            return;
        }
        while self.entries.front().is_some_and(|e| e.index <= index) {
            if let Some(old) = self.entries.pop_front() {
                self.entry_bytes -= old.data.len() + old.context.len();
            }
        }
        self.compacted = (index, term);
    }

    /// A snapshot at (index, term) replaces the log.
    pub(crate) fn apply_snapshot(&mut self, index: u64, term: u64, cs: ConfState) {
        self.clear_entries();
        self.compacted = (index, term);
        self.conf_state = cs;
        if self.hard_state.commit < index {
            self.hard_state.commit = index;
        }
        if self.hard_state.term < term {
            self.hard_state.term = term;
        }
    }

    /// A checkpoint: the whole state but the entries.
    pub(crate) fn set_meta(&mut self, hs: HardState, cs: ConfState, compacted: (u64, u64)) {
        self.hard_state = hs;
        self.conf_state = cs;
        // Checkpoints replay in the order they were written, so this never lowers it.
        self.compact(compacted.0, compacted.1);
    }

    /// After replay: whether the entries held start right after the compaction point.
    pub(crate) fn is_contiguous(&self) -> bool {
        self.entries
            .front()
            .is_none_or(|e| e.index == self.compacted.0 + 1)
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl Storage for ShardStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(unavailable());
        }
        let max = max_size.into();
        let from = usize::try_from(low.saturating_sub(self.held_from())).unwrap_or(usize::MAX);
        let count = (high - low) as usize;
        let mut out = Vec::with_capacity(count.min(64));
        let mut size = 0u64;
        for e in self.entries.iter().skip(from).take(count) {
            // raft-rs's own rule (util::limit_size): at least one entry, then while the
            // total stays within max_size.
            size += u64::from(protobuf_size(e));
            if !out.is_empty() && max.is_some_and(|m| m != raft::NO_LIMIT && size > m) {
                break;
            }
            out.push(e.clone());
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx < self.compacted.0 {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        self.term_of(idx).ok_or_else(unavailable)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        // A snapshot older than the compaction point is useless: the follower would then
        // need entries this log no longer has.
        let at_least = request_index.max(self.compacted.0);
        match &self.snapshot {
            Some(s) if s.get_metadata().index >= at_least => Ok(s.clone()),
            _ => {
                self.snapshot_wanted
                    .set(Some(at_least.max(self.snapshot_wanted.get().unwrap_or(0))));
                Err(raft::Error::Store(
                    StorageError::SnapshotTemporarilyUnavailable,
                ))
            }
        }
    }
}

/// The protobuf-encoded size raft-rs limits messages by.
fn protobuf_size(e: &Entry) -> u32 {
    use protobuf::Message as _;
    e.compute_size()
}
