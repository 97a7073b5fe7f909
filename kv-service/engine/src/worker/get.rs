//! A get: index lookup, then the block (from the cache, or one read), then the record.

use kv_proto::Reply;

use crate::backend::Backend;
use crate::error::Error;
use crate::record::{self, Slot};
use crate::slab::Geometry;

use super::{Core, OpId, Step};

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
        match core.blocks.slot(e, loc).map(record::decode) {
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
