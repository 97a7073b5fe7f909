//! Scans across partitions: merging the per-partition parts and continuing past the
//! per-response caps (`docs/PROTOCOL.md, Part II`, "Partitioning, routing, scans").
//!
//! Each partition answers a SCAN with its own items ≥ the start key, in key order, at most
//! [`MAX_SCAN_ITEMS`](crate::MAX_SCAN_ITEMS) of them and at most
//! [`MAX_SCAN_BODY`](crate::MAX_SCAN_BODY) bytes, flagging `MORE` when it may hold more. A
//! full scan therefore runs in rounds: every partition is asked from the same cursor, the
//! parts are merged, and only the merged items up to the smallest last key among the parts
//! flagged `MORE` (the *bound*) are final — above it, a partition that was cut may still hold
//! smaller keys than what the others returned. The next round starts just after the bound.
//! [`ScanMerge`] is that procedure as a state machine with no I/O.
//!
//! ```
//! use kv_proto::ScanMerge;
//! // Two partitions; the caller wants 3 items from "a". Partition 0 returns 2 items and is
//! // cut (MORE); partition 1 returns everything it has.
//! let mut scan = ScanMerge::new(b"a".to_vec(), 3);
//! let (start, count) = scan.next_round(2).unwrap();
//! assert_eq!((start, count), (&b"a"[..], 2));
//! let item = |k: &str| (k.as_bytes().to_vec(), b"v".to_vec());
//! scan.add_part(vec![item("a"), item("c")], true).unwrap();
//! scan.add_part(vec![item("b"), item("d")], false).unwrap();
//! scan.end_round();
//! // Only a, b, c are final (c is the bound); that is all 3 wanted.
//! assert!(scan.next_round(2).is_none());
//! assert_eq!(scan.finish(), vec![item("a"), item("b"), item("c")]);
//! ```

use crate::limits::MAX_KEY_LEN;
use crate::operation::Item;

/// Merges per-partition scan parts (each sorted, keys disjoint across parts) into the first
/// `max` items in lexicographic key order.
pub fn merge_scan(parts: Vec<Vec<Item>>, max: usize) -> Vec<Item> {
    let mut all: Vec<_> = parts.into_iter().flatten().collect();
    all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    all.truncate(max);
    all
}

/// The smallest key (of at most [`MAX_KEY_LEN`] bytes) greater than `key`, if any.
///
/// ```
/// assert_eq!(kv_proto::successor(b"a"), Some(b"a\0".to_vec()));
/// ```
pub fn successor(key: &[u8]) -> Option<Vec<u8>> {
    let mut k = key.to_vec();
    if k.len() < MAX_KEY_LEN {
        k.push(0);
        return Some(k);
    }
    while let Some(&last) = k.last() {
        if last == u8::MAX {
            k.pop();
        } else {
            if let Some(b) = k.last_mut() {
                *b += 1;
            }
            return Some(k);
        }
    }
    None
}

/// A part that violates the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SCAN answer flagged more items but holds none")]
pub struct EmptyMorePart;

/// One scan across all partitions, in rounds (see the [module documentation](self)).
#[derive(Debug)]
pub struct ScanMerge {
    max: usize,
    cursor: Option<Vec<u8>>,
    out: Vec<Item>,
    parts: Vec<Vec<Item>>,
    /// Smallest last key among this round's parts flagged MORE.
    bound: Option<Vec<u8>>,
}

impl ScanMerge {
    /// A scan for up to `max` items with key ≥ `start`.
    pub fn new(start: Vec<u8>, max: usize) -> Self {
        Self {
            max,
            cursor: Some(start),
            out: Vec::new(),
            parts: Vec::new(),
            bound: None,
        }
    }

    /// The next round's request to every partition — (start key, item count, at most
    /// `cap`, the server's per-response cap) — or `None` when the scan is complete.
    pub fn next_round(&mut self, cap: u32) -> Option<(&[u8], u32)> {
        if self.out.len() >= self.max {
            return None;
        }
        let want = self.max - self.out.len();
        let count = u32::try_from(want).unwrap_or(u32::MAX).min(cap.max(1));
        self.parts.clear();
        self.bound = None;
        self.cursor.as_deref().map(|c| (c, count))
    }

    /// One partition's answer to the current round: its items (sorted) and whether it
    /// flagged `MORE`.
    pub fn add_part(&mut self, items: Vec<Item>, more: bool) -> Result<(), EmptyMorePart> {
        if more {
            let Some((last, _)) = items.last() else {
                return Err(EmptyMorePart);
            };
            if !matches!(&self.bound, Some(b) if b <= last) {
                self.bound = Some(last.clone());
            }
        }
        self.parts.push(items);
        Ok(())
    }

    /// Ends the current round (every partition answered): keeps the items that are final and
    /// moves the cursor past them. Returns whether another round is needed.
    pub fn end_round(&mut self) -> bool {
        let parts = std::mem::take(&mut self.parts);
        let mut merged = merge_scan(parts, self.max - self.out.len().min(self.max));
        // Below the bound every partition returned all its items; above it, some did not.
        if let Some(b) = &self.bound {
            merged.retain(|(k, _)| k <= b);
        }
        self.out.extend(merged);
        self.cursor = self.bound.as_deref().and_then(successor);
        self.cursor.is_some() && self.out.len() < self.max
    }

    /// Items collected so far.
    pub fn len(&self) -> usize {
        self.out.len()
    }

    /// Whether no item was collected yet.
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }

    /// The scan's items, in key order.
    pub fn finish(self) -> Vec<Item> {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successor_is_the_next_key() {
        assert_eq!(successor(b"a"), Some(b"a\0".to_vec()));
        let max = vec![7u8; MAX_KEY_LEN];
        let mut next = max.clone();
        if let Some(b) = next.last_mut() {
            *b = 8;
        }
        assert_eq!(successor(&max), Some(next));
        let mut ff = vec![1u8; MAX_KEY_LEN];
        ff[MAX_KEY_LEN - 1] = 0xff;
        ff[MAX_KEY_LEN - 2] = 0xff;
        let mut want = vec![1u8; MAX_KEY_LEN - 2];
        want[MAX_KEY_LEN - 3] = 2;
        assert_eq!(successor(&ff), Some(want));
        assert_eq!(successor(&vec![0xffu8; MAX_KEY_LEN]), None);
    }

    #[test]
    fn a_part_flagged_more_must_hold_items() {
        let mut s = ScanMerge::new(Vec::new(), 10);
        assert!(s.next_round(4).is_some());
        assert_eq!(s.add_part(Vec::new(), true), Err(EmptyMorePart));
    }
}
