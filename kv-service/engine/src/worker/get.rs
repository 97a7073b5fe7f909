//! A get: index lookup, then the block (from the cache, or one read), then the record.

use kv_proto::Reply;

use crate::backend::Backend;
use crate::error::Error;
use crate::record::Slot;
use crate::slab::Geometry;

use super::{Core, OpId, Step};

/// What [`Worker::get_cached`](super::Worker::get_cached) found.
#[derive(Debug, PartialEq, Eq)]
pub enum CachedGet<'a> {
    /// The value, borrowed from the cached block (valid until the worker is used again).
    Value(&'a [u8]),
    /// The key does not exist.
    NotFound,
    /// No answer without waiting (the block is not cached or still loading, a write of the
    /// key is in progress, or the record does not check out): submit an [`Op::Get`](kv_proto::Op::Get).
    Miss,
}

/// The cached-key case of a get, answered in place: index lookup, cache lookup, record.
pub(super) fn get_cached<'a, B: Backend>(core: &'a mut Core<B>, key: &[u8]) -> CachedGet<'a> {
    let Some(loc) = core.index.get(key) else {
        return CachedGet::NotFound;
    };
    let (block, _) = Geometry::of(loc.class).locate(loc.slot);
    let Some(e) = core.blocks.loaded_lookup(loc.class, block) else {
        return CachedGet::Miss;
    };
    match core.blocks.decode_slot(e, loc) {
        Some(Slot::Live { key: k, value, .. }) if k == key => CachedGet::Value(value),
        // The slow path reports the corruption.
        _ => CachedGet::Miss,
    }
}

/// A get.
pub(super) struct GetOp {
    pub(super) key: Vec<u8>,
}

impl GetOp {
    /// A missing key answers at once, without I/O. Otherwise the block must be loaded (a read
    /// in flight for it is shared); a write in flight for it does not hold the get up: the get
    /// sees the block as the last applied change left it.
    pub(super) fn step<B: Backend>(&mut self, id: OpId, core: &mut Core<B>) -> Step {
        let Some(loc) = core.index.get(&self.key) else {
            return Step::Done(Ok(Reply::NotFound));
        };
        let (block, _) = Geometry::of(loc.class).locate(loc.slot);
        let Some(e) = core.blocks.acquire(loc.class, block, id, false, false) else {
            return Step::Wait;
        };
        match core.blocks.decode_slot(e, loc) {
            Some(Slot::Live { key, value, .. }) if key == self.key.as_slice() => {
                Step::Done(Ok(Reply::Value(value.to_vec())))
            }
            // Never a wrong value: a record that does not hold the key is an error.
            _ => Step::Done(Err(core.corrupt(loc))),
        }
    }

    /// The block could not be read.
    pub(super) fn read_failed(&mut self, err: Error) -> Step {
        Step::Done(Err(err))
    }
}
