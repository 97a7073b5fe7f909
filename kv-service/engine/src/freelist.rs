//! Per-slab free list: slots that held deleted, moved or corrupt items, reused by the next
//! insert of the same size class before the file is extended.
//!
//! KVell keeps a short list in memory and chains the overflow through tombstones on disk; we
//! keep the whole list in memory (8 bytes per free slot) and rebuild it at recovery, which
//! keeps the on-disk format free of pointers. Reuse is LIFO, so the most recently freed slot
//! (whose page is the most likely to be cached) is taken first.

/// A stack of free slot numbers.
#[derive(Debug, Default)]
pub(crate) struct FreeList {
    slots: Vec<u32>,
}

impl FreeList {
    /// Adds a free slot.
    pub(crate) fn push(&mut self, slot: u32) {
        self.slots.push(slot);
    }

    /// Takes a free slot, if any.
    pub(crate) fn pop(&mut self) -> Option<u32> {
        self.slots.pop()
    }

    /// Number of free slots.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifo() {
        let mut f = FreeList::default();
        assert_eq!(f.pop(), None);
        f.push(3);
        f.push(7);
        assert_eq!(f.len(), 2);
        assert_eq!(f.pop(), Some(7));
        assert_eq!(f.pop(), Some(3));
        assert_eq!(f.pop(), None);
    }
}
