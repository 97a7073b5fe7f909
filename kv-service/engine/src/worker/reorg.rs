//! Background reorganisation: rewrites items of neighbouring keys (in index order) onto the
//! same block, so that a scan of neighbours reads few blocks instead of one per item.
//!
//! Items sit unsorted in their slabs (KVell's design). When the worker has no client
//! operation outstanding and the previous round is finished, a round walks the index from a
//! cursor, finds runs of neighbouring keys of one small class that are scattered (each in a
//! block holding fewer than half a block's worth of its neighbours), takes a fresh block at
//! the end of the class's slab for each group of `slots_per_block` of them and moves each
//! item there with a relocation (`PutOp::relocation`): a put of the item's current value to
//! the chosen slot, ordered behind and before the key's other writes by the key queue, ending
//! like a move between classes (new copy with a higher sequence number, index switched, old
//! copy tombstoned, old slot freed). A round moves at most `batch` items, so a client
//! request arriving during a round waits behind at most that much I/O. When a whole pass
//! over the index moved nothing, the reorganisation sleeps until the next client write.

use crate::index::Location;
use crate::slab::Geometry;

use super::blocks::RUN_GAP;

/// The reorganisation state of one worker.
#[derive(Debug, Default)]
pub(super) struct Reorg {
    /// Items moved per round at most; 0: off.
    pub(super) batch: usize,
    /// The first key the next round looks at (empty: the start of the index).
    pub(super) cursor: Vec<u8>,
    /// Relocations of the current round not finished yet.
    pub(super) in_flight: usize,
    /// Items moved in the current pass.
    pub(super) moved_in_pass: u64,
    /// A pass moved nothing (or a slot could not be had): wait for a client write.
    pub(super) paused: bool,
    /// Items moved (relocations that completed).
    pub(super) moved: u64,
    /// Passes over the whole index completed.
    pub(super) passes: u64,
}

impl Reorg {
    /// Whether a round may start now (the worker is otherwise idle).
    pub(super) fn wants_round(&self) -> bool {
        self.batch > 0 && self.in_flight == 0 && !self.paused
    }

    /// A client write happened: there may be something to reorganise again.
    pub(super) fn wake(&mut self) {
        self.paused = false;
    }

    /// The end of the index was reached.
    pub(super) fn pass_done(&mut self) {
        self.passes += 1;
        self.cursor.clear();
        if self.moved_in_pass == 0 {
            self.paused = true;
        }
        self.moved_in_pass = 0;
    }

    /// A relocation finished; `moved`: it completed.
    pub(super) fn finished(&mut self, moved: bool) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if moved {
            self.moved += 1;
            self.moved_in_pass += 1;
        }
    }
}

/// The moves of one round, from `locs` — consecutive keys of the index from the cursor, with
/// their locations — of which `complete` says whether they reach the end of the index.
/// Returns the groups to move (each a range of indices into `locs`, all of one small class,
/// at most one block's worth, to share one fresh block) and how many entries of `locs` the
/// round has dealt with (the next round starts at the first one not dealt with).
///
/// A *run* is a maximal sequence of consecutive keys in one block; a *stretch* is a maximal
/// sequence of consecutive keys of one class, each in the block of the one before or a
/// little past it in the file (at most [`RUN_GAP`] blocks between), which one coalesced read
/// loads. Keys are in place in a stretch of at least a block's worth of items (at least 2)
/// whose blocks are on average at least half full; the others are scattered, and are moved,
/// in groups of a block, if there are at least a block's worth of them in a row — so what is
/// moved is in place afterwards, and a pass after it moves nothing. A few scattered keys
/// among placed neighbours are left: they cost a scan an extra read or two, while moving
/// them would leave a fresh block mostly empty. At most `batch` items are chosen.
///
/// Judging by runs alone (two neighbours sharing a block being in place) would leave a
/// layout of half-full blocks spread over the file — what passes during a load make, as
/// keys arrive between neighbours already moved — where a scan reads a block per two items,
/// each with a read of its own.
pub(super) fn plan(
    locs: &[Location],
    complete: bool,
    batch: usize,
) -> (Vec<std::ops::Range<usize>>, usize) {
    let (groups, dealt) = plan_round(locs, complete, batch);
    if groups.is_empty() && dealt == 0 && !locs.is_empty() {
        // A round that neither moves nor advances would be repeated forever (a scattered
        // row that fills the listing without reaching a multiple of a block at the batch):
        // go on past the first key.
        return (groups, 1);
    }
    (groups, dealt)
}

fn plan_round(
    locs: &[Location],
    complete: bool,
    batch: usize,
) -> (Vec<std::ops::Range<usize>>, usize) {
    let mut groups = Vec::new();
    let mut chosen = 0usize;
    // Scattered keys in a row not yet grouped: [start, i) of one class.
    let mut pending: Option<(usize, u8)> = None;
    let mut i = 0usize;
    let flush = |groups: &mut Vec<std::ops::Range<usize>>,
                 chosen: &mut usize,
                 start: usize,
                 end: usize,
                 class: u8| {
        let spb = Geometry::of(class).slots_per_block;
        if end - start < threshold(spb) {
            return;
        }
        let mut s = start;
        while s < end {
            let e = (s + spb).min(end);
            groups.push(s..e);
            *chosen += e - s;
            s = e;
        }
    };
    while i < locs.len() {
        let Some(&first) = locs.get(i) else { break };
        let g = Geometry::of(first.class);
        let block = g.locate(first.slot).0;
        let mut j = i + 1;
        while locs
            .get(j)
            .is_some_and(|l| l.class == first.class && g.locate(l.slot).0 == block)
        {
            j += 1;
        }
        if j == locs.len() && !complete {
            // The last run may go on past what was listed: leave it to the next round.
            break;
        }
        let spb = g.slots_per_block;
        let (stretch_end, blocks) = stretch(locs, i);
        let keys = stretch_end - i;
        let placed = spb == 1 || (keys >= threshold(spb) && keys * 2 >= blocks * spb);
        if placed {
            if stretch_end == locs.len() && !complete && i > 0 {
                // It may go on past what was listed: the next round starts with it. The
                // scattered keys before it end here.
                if let Some((s, c)) = pending {
                    flush(&mut groups, &mut chosen, s, i, c);
                }
                return (groups, i);
            }
            j = stretch_end;
        }
        let scattered = !placed;
        match pending {
            Some((s, c)) if scattered && c == first.class => {
                // Stop at a block's multiple once the round has enough.
                let n = i - s;
                if chosen + n >= batch && n.is_multiple_of(spb) && n > 0 {
                    flush(&mut groups, &mut chosen, s, i, c);
                    return (groups, i);
                }
            }
            Some((s, c)) => {
                flush(&mut groups, &mut chosen, s, i, c);
                pending = scattered.then_some((i, first.class));
                if chosen >= batch {
                    return (groups, i);
                }
            }
            None => pending = scattered.then_some((i, first.class)),
        }
        i = j;
    }
    if let Some((s, c)) = pending {
        if (i == locs.len() && complete) || s == 0 {
            // The end of the index; or the row fills the whole listing (the next round
            // would start where this one did): move what was listed.
            flush(&mut groups, &mut chosen, s, i, c);
        } else {
            // The scattered keys in a row may go on: the next round starts with them.
            return (groups, s);
        }
    }
    (groups, i)
}

/// The end of the stretch starting at `locs[i]` (see [`plan`]) and how many blocks hold its
/// keys.
fn stretch(locs: &[Location], i: usize) -> (usize, usize) {
    let Some(&first) = locs.get(i) else {
        return (i, 0);
    };
    let g = Geometry::of(first.class);
    let mut last = g.locate(first.slot).0;
    let (mut j, mut blocks) = (i + 1, 1);
    while let Some(l) = locs.get(j) {
        let b = g.locate(l.slot).0;
        if l.class != first.class || b < last || b - last > RUN_GAP + 1 {
            break;
        }
        blocks += usize::from(b != last);
        last = b;
        j += 1;
    }
    (j, blocks)
}

/// Keys in a row from which a stretch is in place, and scattered ones are moved.
fn threshold(slots_per_block: usize) -> usize {
    slots_per_block.max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Class 5 is 1024-byte slots: 4 per block.
    fn at(slot: u32) -> Location {
        Location { class: 5, slot }
    }

    #[test]
    fn class_five_has_four_slots_per_block() {
        assert_eq!(Geometry::of(5).slots_per_block, 4);
    }

    #[test]
    fn scattered_keys_are_grouped_by_block() {
        let locs: Vec<Location> = [40, 8, 100, 12, 60, 1, 33].into_iter().map(at).collect();
        let (groups, done) = plan(&locs, true, 64);
        assert_eq!(groups, vec![0..4, 4..7]);
        assert_eq!(done, 7);
    }

    #[test]
    fn placed_runs_are_left_and_lone_strays_too() {
        // 0..4 in block 0; a stray; 4 keys in block 5.
        let locs: Vec<Location> = [0, 1, 2, 3, 77, 20, 21, 22, 23]
            .into_iter()
            .map(at)
            .collect();
        let (groups, done) = plan(&locs, true, 64);
        assert!(groups.is_empty());
        assert_eq!(done, 9);
    }

    #[test]
    fn half_full_blocks_spread_over_the_file_are_moved_and_adjacent_ones_left() {
        // Pairs of neighbours in blocks 0, 10, 20, ...: a read per pair, so scattered.
        let spread: Vec<Location> = (0..16).map(|i| at((i / 2) * 40 + i % 2)).collect();
        let (groups, done) = plan(&spread, true, 64);
        assert_eq!(groups, vec![0..4, 4..8, 8..12, 12..16]);
        assert_eq!(done, 16);
        // Full blocks with gaps of two between them: one stretch (one read), in place.
        let adjacent: Vec<Location> = (0..16).map(|i| at((i / 4) * 12 + i % 4)).collect();
        let (groups, done) = plan(&adjacent, true, 64);
        assert!(groups.is_empty());
        assert_eq!(done, 16);
        // What a round moved (fresh blocks in a row) is in place for the next pass.
        let moved: Vec<Location> = (0..16).map(|i| at(400 + i)).collect();
        assert!(plan(&moved, true, 64).0.is_empty());
    }

    #[test]
    fn a_round_stops_at_its_batch_and_an_unfinished_listing_is_resumed() {
        // One key every fifth block: nothing shares a block or a read.
        let locs: Vec<Location> = (0..20).map(|i| at(i * 20)).collect();
        let (groups, done) = plan(&locs, true, 8);
        assert_eq!(groups, vec![0..4, 4..8]);
        assert_eq!(done, 8);
        // Not the end of the index: scattered keys at the end wait for the next round...
        let mut placed: Vec<Location> = (0..4).map(|i| at(2000 + i)).collect();
        placed.extend_from_slice(&locs[..9]);
        let (groups, done) = plan(&placed, false, 64);
        assert!(groups.is_empty());
        assert_eq!(done, 4);
        // ... unless they are all the round listed: then they are moved.
        let (groups, done) = plan(&locs[..9], false, 64);
        // (The last key may have neighbours past the listing: it waits.)
        assert_eq!(groups, vec![0..4, 4..8]);
        assert_eq!(done, 8);
    }

    #[test]
    fn every_round_moves_something_or_goes_on() {
        // Scattered keys, then a stretch in place that reaches the end of the listing.
        let mut locs: Vec<Location> = (0..6).map(|i| at(i * 40)).collect();
        locs.extend((0..8).map(|i| at(1000 + i)));
        let (groups, done) = plan(&locs, false, 64);
        assert_eq!(groups, vec![0..4, 4..6]);
        assert_eq!(done, 6);
        // A scattered row of 1-, 2- and 3-item runs filling the listing, never at a
        // multiple of a block when past the batch.
        let mut odd = Vec::new();
        for r in 0..30u32 {
            for k in 0..(1 + r % 3) {
                odd.push(at(r * 40 + k));
            }
        }
        let (groups, done) = plan(&odd, false, 4);
        assert!(!groups.is_empty() || done > 0);
        for n in 1..odd.len() {
            let (groups, done) = plan(&odd[..n], false, 64);
            assert!(!groups.is_empty() || done > 0, "{n} keys");
        }
    }

    #[test]
    fn large_classes_are_never_moved() {
        let locs: Vec<Location> = (0..6)
            .map(|i| Location {
                class: 12,
                slot: i * 3,
            })
            .collect();
        let (groups, done) = plan(&locs, true, 64);
        assert!(groups.is_empty());
        assert_eq!(done, 6);
    }
}
