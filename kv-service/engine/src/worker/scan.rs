//! A worker's part of a scan: up to `max` of its keys ≥ `start` from the index, each read by a
//! get of its own (they share block reads like any gets); the items come back in key order.

use kv_proto::{Item, Reply};

use crate::error::{Error, Result};

/// A scan waiting for its gets.
pub(super) struct ScanOp {
    /// One slot per key, in key order; `None` until read (or if the key vanished meanwhile).
    results: Vec<Option<Item>>,
    pending: usize,
    error: Option<Error>,
}

impl ScanOp {
    /// A scan of `keys` (which the caller reads with one get each).
    pub(super) fn new(keys: usize) -> Self {
        Self {
            results: (0..keys).map(|_| None).collect(),
            pending: keys,
            error: None,
        }
    }

    /// The get of key number `pos` finished; the scan's result once every get has.
    pub(super) fn part_done(
        &mut self,
        pos: usize,
        key: Vec<u8>,
        result: Result<Reply>,
    ) -> Option<Result<Reply>> {
        match result {
            Ok(Reply::Value(v)) => {
                if let Some(slot) = self.results.get_mut(pos) {
                    *slot = Some((key, v));
                }
            }
            // Deleted since the index was walked: not part of the scan.
            Ok(_) => {}
            Err(e) => {
                self.error.get_or_insert(e);
            }
        }
        self.pending = self.pending.saturating_sub(1);
        if self.pending > 0 {
            return None;
        }
        Some(match self.error.take() {
            Some(e) => Err(e),
            None => Ok(Reply::Items(
                std::mem::take(&mut self.results)
                    .into_iter()
                    .flatten()
                    .collect(),
            )),
        })
    }
}
