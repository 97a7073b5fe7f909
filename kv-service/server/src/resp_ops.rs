//! What a server thread does for the RESP front-end, beyond what the rpc path already does:
//!
//! - **Routing.** A RESP GET / PUT / DELETE runs like an rpc request of the same kind: on the
//!   thread's worker if the thread owns the key, else forwarded to the owner — with
//!   [`Dest::Resp`] as the destination, so its answer lands in [`RespSide::done`], which the
//!   thread hands to its front-end after the step.
//! - **Conditional SET** (NX / XX / GET, GETSET) runs at the key's owner (forwarded as
//!   [`Mail::SetIf`] if need be) as a read and then, if the condition holds, a write, with
//!   the key *held* in between: any other operation on the key that reaches the owner meanwhile
//!   — from an rpc client, a BATCH, a sibling, a RESP connection — waits in the hold's queue
//!   and runs, in arrival order, once the SET is done. The read starts only once the writes of
//!   the key already submitted to the worker have completed (the engine lets a read overtake a
//!   queued write of its key), which is why a thread with a RESP front-end counts its writes
//!   in flight per key hash.
//! - **SCAN** fans out to every partition (the local worker, and a forwarded SCAN to each
//!   sibling); the parts are merged as `kv_proto::ScanMerge` does in one round: only items up
//!   to the smallest last key among the parts that were cut are final, and the reply says
//!   there may be more.
//! - **Figures** for INFO and DBSIZE: each thread publishes its item count after every
//!   worker poll (before any answer of that poll leaves, so a client that saw its write
//!   acknowledged counts its key) and its engine counters every so often, on a board all
//!   threads share.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kv_engine::{Backend, WorkerStats};
use kv_proto::{self as protocol, fnv1a64, op, Item, Op, Reply, Request, Status};
use kv_resp::{Figures, KvOp, Outcome, SetCond};
use rpc::Ctx;

use crate::forward::{Letter, Mail, SET_WRITTEN};
use crate::resp::{RespAnswer, RespBackend, RespTag};
use crate::state::{Dest, ServerState};

/// The kind of a RESP single-key operation (how a wire status becomes an outcome).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RespKind {
    Get,
    Put,
    Delete,
    Set,
}

/// Where a conditional SET's answer goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SetDest {
    /// A RESP connection of this thread.
    Resp(RespTag),
    /// The sibling that forwarded it, by mail.
    Mail { from: usize, tag: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SetPhase {
    /// Holding the key until the writes of it in flight complete.
    WaitWrites,
    Reading,
    Writing,
}

/// A conditional SET at the key's owner.
#[derive(Debug)]
pub(crate) struct SetOp {
    dest: SetDest,
    key: Vec<u8>,
    value: Vec<u8>,
    cond: SetCond,
    get: bool,
    phase: SetPhase,
    old: Option<Vec<u8>>,
}

impl SetOp {
    pub(crate) fn new(
        dest: SetDest,
        key: Vec<u8>,
        value: Vec<u8>,
        cond: SetCond,
        get: bool,
    ) -> Self {
        Self {
            dest,
            key,
            value,
            cond,
            get,
            phase: SetPhase::WaitWrites,
            old: None,
        }
    }
}

/// An operation that reached a held key, to run once the hold ends.
#[derive(Debug)]
enum Deferred {
    Op { dest: Dest, op: Op },
    Set(usize),
}

/// A key held by the conditional SET `set`, and what waits for it.
#[derive(Debug)]
struct Hold {
    set: usize,
    queue: VecDeque<Deferred>,
}

/// A RESP SCAN collecting its partitions' parts.
#[derive(Debug)]
pub(crate) struct RespScan {
    tag: RespTag,
    left: usize,
    max: usize,
    parts: Vec<(Vec<Item>, bool)>,
    error: Option<String>,
}

/// Figures of one thread, published for INFO and DBSIZE.
#[derive(Debug, Default)]
struct ThreadFigures {
    items: AtomicU64,
    used_memory: AtomicU64,
    disk_bytes: AtomicU64,
    reads: AtomicU64,
    writes: AtomicU64,
}

/// The figures every thread of a server publishes (one slot per thread).
#[derive(Debug)]
pub struct Board {
    threads: Vec<ThreadFigures>,
}

impl Board {
    /// A board for `threads` threads.
    pub fn new(threads: usize) -> Arc<Self> {
        Arc::new(Self {
            threads: (0..threads).map(|_| ThreadFigures::default()).collect(),
        })
    }

    /// The sums over the threads.
    pub fn figures(&self) -> Figures {
        let mut f = Figures::default();
        for t in &self.threads {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            f.keys += get(&t.items);
            f.used_memory += get(&t.used_memory);
            f.disk_bytes += get(&t.disk_bytes);
            f.engine_reads += get(&t.reads);
            f.engine_writes += get(&t.writes);
        }
        f
    }
}

/// The RESP state of one server thread (empty and free unless a front-end runs).
#[derive(Debug, Default)]
pub(crate) struct RespSide {
    /// Answers for this thread's front-end, handed over after each step.
    pub(crate) done: Vec<(RespTag, RespAnswer)>,
    sets: slab::Slab<SetOp>,
    holds: HashMap<u64, Hold>,
    /// Writes submitted to the worker and not completed, by key hash (counted only when
    /// `track_writes`).
    writing: HashMap<u64, u32>,
    track_writes: bool,
    scans: slab::Slab<RespScan>,
    board: Option<(Arc<Board>, usize)>,
    /// RESP forwards waiting for a forward slot (thread, destination, letter).
    pub(crate) overflow: VecDeque<(usize, Dest, Letter)>,
}

impl RespSide {
    /// Turns on what a RESP front-end needs: write counting (for conditional SETs) and the
    /// figures board (slot `id`). Every thread of a server with a front-end calls it, since
    /// conditional SETs run at the key's owner, whichever thread that is.
    pub(crate) fn enable(&mut self, board: Arc<Board>, id: usize) {
        self.track_writes = true;
        self.board = Some((board, id));
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.done.is_empty()
            && self.sets.is_empty()
            && self.scans.is_empty()
            && self.overflow.is_empty()
    }

    /// If a conditional SET holds `o`'s key, queues `o` behind it and says so.
    /// Whether a conditional SET holds `key` (operations on it wait for it).
    pub(crate) fn holds_key(&self, key: &[u8]) -> bool {
        !self.holds.is_empty() && self.holds.contains_key(&fnv1a64(key))
    }

    pub(crate) fn defer(&mut self, dest: Dest, o: Op<&[u8]>) -> bool {
        if self.holds.is_empty() {
            return false;
        }
        match self.holds.get_mut(&fnv1a64(o.key())) {
            Some(h) => {
                h.queue.push_back(Deferred::Op {
                    dest,
                    op: o.to_vec(),
                });
                true
            }
            None => false,
        }
    }

    /// A write of `key` goes to the worker: counted, if counting is on (its hash returned).
    pub(crate) fn count_write(&mut self, key: &[u8]) -> Option<u64> {
        if !self.track_writes {
            return None;
        }
        let h = fnv1a64(key);
        *self.writing.entry(h).or_default() += 1;
        Some(h)
    }

    /// A counted write of hash `h` completed: the conditional SET that was waiting for the
    /// key's writes to drain, if this was the last.
    pub(crate) fn write_done(&mut self, h: u64) -> Option<usize> {
        let n = self.writing.get_mut(&h)?;
        *n -= 1;
        if *n > 0 {
            return None;
        }
        self.writing.remove(&h);
        let hold = self.holds.get(&h)?;
        let set = self.sets.get(hold.set)?;
        (set.phase == SetPhase::WaitWrites).then_some(hold.set)
    }

    /// The answer of a RESP single-key operation, from its wire status and body.
    pub(crate) fn answer(&mut self, tag: RespTag, kind: RespKind, status: Status, body: Vec<u8>) {
        let a = match (status, kind) {
            (Status::Ok, RespKind::Get) => RespAnswer::Value(body),
            (Status::Ok, RespKind::Put) => RespAnswer::Written,
            (Status::Ok, RespKind::Delete) => RespAnswer::Deleted,
            (Status::NotFound, RespKind::Get | RespKind::Delete) => RespAnswer::NotFound,
            (s, _) => RespAnswer::Error(error_text(s, &body)),
        };
        self.done.push((tag, a));
    }

    /// The owner's answer to a forwarded conditional SET ([`Mail::SetIf`]).
    pub(crate) fn answer_set_mail(&mut self, tag: RespTag, resp: &[u8]) {
        let a = match protocol::parse_response(resp) {
            Ok(r) if r.status == Status::Ok => RespAnswer::Set {
                written: r.flags & SET_WRITTEN != 0,
                old: (r.count == 1).then(|| r.body.to_vec()),
            },
            Ok(r) => RespAnswer::Error(error_text(r.status, r.body)),
            Err(e) => RespAnswer::Error(format!("forwarded SET: {e}")),
        };
        self.done.push((tag, a));
    }

    /// The thread's live item count, for DBSIZE.
    pub(crate) fn publish_items(&self, items: u64) {
        if let Some((b, id)) = &self.board {
            if let Some(t) = b.threads.get(*id) {
                t.items.store(items, Ordering::Relaxed);
            }
        }
    }

    /// The thread's engine counters, for INFO.
    pub(crate) fn publish_stats(&self, ws: &WorkerStats) {
        if let Some((b, id)) = &self.board {
            if let Some(t) = b.threads.get(*id) {
                t.items.store(ws.items, Ordering::Relaxed);
                t.used_memory
                    .store(ws.index_bytes + ws.cache_bytes, Ordering::Relaxed);
                t.disk_bytes.store(ws.file_bytes, Ordering::Relaxed);
                t.reads.store(ws.reads, Ordering::Relaxed);
                t.writes.store(ws.writes, Ordering::Relaxed);
            }
        }
    }

    fn figures(&self) -> Figures {
        self.board
            .as_ref()
            .map_or_else(Figures::default, |(b, _)| b.figures())
    }
}

/// A wire status and message as a RESP error line (kv-resp adds `ERR` unless the line
/// starts with a code word).
fn error_text(status: Status, body: &[u8]) -> String {
    let msg = String::from_utf8_lossy(body);
    let msg = if msg.is_empty() {
        format!("{status:?}").into()
    } else {
        msg
    };
    match status {
        Status::Overloaded => format!("OVERLOADED {msg}"),
        Status::ShuttingDown => format!("SHUTDOWN {msg}"),
        _ => msg.into_owned(),
    }
}

/// One partition's scan items cut to what a wire response would carry (at most
/// [`MAX_SCAN_BODY`](protocol::MAX_SCAN_BODY) bytes), and whether there may be more.
pub(crate) fn cut_scan(mut items: Vec<Item>, max: u32) -> (Vec<Item>, bool) {
    let mut bytes = 0;
    let mut keep = 0;
    for (k, v) in &items {
        let n = protocol::scan_item_len(k, v);
        if bytes + n > protocol::MAX_SCAN_BODY && keep > 0 {
            break;
        }
        bytes += n;
        keep += 1;
    }
    let cut = keep < items.len();
    items.truncate(keep);
    let more = cut || keep as u64 >= u64::from(max);
    (items, more)
}

/// Merges one round of scan parts: the items in key order up to `max`, keeping only those up
/// to the smallest last key among the parts flagged `more`; whether there may be more.
fn merge_parts(parts: Vec<(Vec<Item>, bool)>, max: usize) -> (Vec<Item>, bool) {
    let bound: Option<Vec<u8>> = parts
        .iter()
        .filter(|(items, more)| *more && !items.is_empty())
        .filter_map(|(items, _)| items.last().map(|(k, _)| k.clone()))
        .min();
    let mut all: Vec<Item> = parts.into_iter().flat_map(|(items, _)| items).collect();
    all.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    let mut more = bound.is_some();
    if let Some(b) = &bound {
        all.retain(|(k, _)| k <= b);
    }
    if all.len() > max {
        all.truncate(max);
        more = true;
    }
    (all, more)
}

impl<B: Backend> ServerState<B> {
    /// Runs one operation of a RESP connection of this thread.
    /// A RESP GET of this thread's key that the engine answers without I/O
    /// ([`Worker::get_cached`](kv_engine::Worker::get_cached)): the value borrowed from the
    /// cached block, for the connection to encode straight into its output. `None` leaves it
    /// to [`ServerState::resp_submit`], which gives the same answer later: when stopping,
    /// for a key over the limits or another thread's, one a conditional SET holds, or a miss.
    pub(crate) fn resp_get_now(&mut self, key: &[u8]) -> Option<Outcome<'_>> {
        let op = Op::Get { key };
        if self.stopping
            || op.check_limits(protocol::MAX_VALUE_LEN).is_err()
            || self.router.partition_of(key) != self.id
            || self.resp.holds_key(key)
        {
            return None;
        }
        let outcome = match self.worker.get_cached(key) {
            kv_engine::CachedGet::Value(v) => Outcome::Value(v),
            kv_engine::CachedGet::NotFound => Outcome::NotFound,
            kv_engine::CachedGet::Miss => return None,
        };
        self.stats.gets += 1;
        if outcome == Outcome::NotFound {
            self.stats.not_found += 1;
        }
        Some(outcome)
    }

    pub(crate) fn resp_submit(&mut self, ctx: &mut Ctx, tag: RespTag, op: KvOp<'_>) {
        if self.stopping {
            let msg = "SHUTDOWN the server is shutting down".to_string();
            self.resp.done.push((tag, RespAnswer::Error(msg)));
            return;
        }
        let (kind, o) = match op {
            KvOp::Get { key } => (RespKind::Get, Op::Get { key }),
            KvOp::Put { key, value } => (RespKind::Put, Op::Put { key, value }),
            KvOp::Delete { key } => (RespKind::Delete, Op::Delete { key }),
            KvOp::Set {
                key,
                value,
                cond,
                get,
            } => return self.resp_set(ctx, tag, key, value, cond, get),
            KvOp::Scan { start, max } => return self.resp_scan(ctx, tag, start, max),
        };
        let dest = Dest::Resp { tag, kind };
        if let Err(e) = o.check_limits(protocol::MAX_VALUE_LEN) {
            self.answer(ctx, dest, Status::BadRequest, e.to_string().into_bytes());
            return;
        }
        let owner = self.router.partition_of(o.key());
        if owner == self.id {
            self.execute(ctx, dest, o, &[]);
        } else {
            let mut msg = Vec::new();
            protocol::encode_request(&Request::Op(o), &mut msg);
            let req_type = o.code();
            self.forward_mail(ctx, dest, owner, Letter::Request { req_type, msg });
        }
    }

    fn resp_set(
        &mut self,
        ctx: &mut Ctx,
        tag: RespTag,
        key: &[u8],
        value: &[u8],
        cond: SetCond,
        get: bool,
    ) {
        let probe = Op::Put { key, value };
        if let Err(e) = probe.check_limits(protocol::MAX_VALUE_LEN) {
            self.resp.done.push((tag, RespAnswer::Error(e.to_string())));
            return;
        }
        let owner = self.router.partition_of(key);
        if owner == self.id {
            let set = SetOp::new(SetDest::Resp(tag), key.to_vec(), value.to_vec(), cond, get);
            self.start_set(ctx, set);
            return;
        }
        let dest = Dest::Resp {
            tag,
            kind: RespKind::Set,
        };
        let (key, value) = (key.to_vec(), value.to_vec());
        let letter = Letter::SetIf {
            key,
            value,
            cond,
            get,
        };
        self.forward_mail(ctx, dest, owner, letter);
    }

    /// A conditional SET at the key's owner: holds the key, then reads it.
    pub(crate) fn start_set(&mut self, ctx: &mut Ctx, set: SetOp) {
        let id = self.resp.sets.insert(set);
        self.begin_set(ctx, id);
    }

    fn begin_set(&mut self, _ctx: &mut Ctx, id: usize) {
        let Some(set) = self.resp.sets.get_mut(id) else {
            return;
        };
        let h = fnv1a64(&set.key);
        if let Some(hold) = self.resp.holds.get_mut(&h) {
            hold.queue.push_back(Deferred::Set(id));
            return;
        }
        self.resp.holds.insert(
            h,
            Hold {
                set: id,
                queue: VecDeque::new(),
            },
        );
        set.phase = SetPhase::WaitWrites;
        if !self.resp.writing.contains_key(&h) {
            self.set_read(id);
        }
    }

    /// The read of conditional SET `id` goes to the worker.
    pub(crate) fn set_read(&mut self, id: usize) {
        let Some(set) = self.resp.sets.get_mut(id) else {
            return;
        };
        set.phase = SetPhase::Reading;
        let key = set.key.clone();
        self.submit_local(Dest::SetStep { id }, Op::Get { key }, op::GET, 0, None);
    }

    /// The worker finished a step of conditional SET `id`.
    pub(crate) fn on_set_step(
        &mut self,
        ctx: &mut Ctx,
        id: usize,
        result: Result<Reply, kv_engine::Error>,
    ) {
        let Some(set) = self.resp.sets.get_mut(id) else {
            return;
        };
        match (set.phase, result) {
            (SetPhase::Reading, Ok(r @ (Reply::Value(_) | Reply::NotFound))) => {
                set.old = match r {
                    Reply::Value(v) => Some(v),
                    _ => None,
                };
                let write = match set.cond {
                    SetCond::Always => true,
                    SetCond::IfAbsent => set.old.is_none(),
                    SetCond::IfPresent => set.old.is_some(),
                };
                if !write {
                    let old = if set.get { set.old.take() } else { None };
                    return self.finish_set(ctx, id, Ok((false, old)));
                }
                set.phase = SetPhase::Writing;
                let op = Op::Put {
                    key: set.key.clone(),
                    value: std::mem::take(&mut set.value),
                };
                let h = self.resp.count_write(op.key());
                self.submit_local(Dest::SetStep { id }, op, op::PUT, 0, h);
            }
            (SetPhase::Writing, Ok(Reply::Written)) => {
                let old = if set.get { set.old.take() } else { None };
                self.finish_set(ctx, id, Ok((true, old)));
            }
            (_, Err(e)) => self.finish_set(ctx, id, Err(e.to_string())),
            (_, Ok(other)) => {
                let msg = format!("internal error: a SET step answered {other:?}");
                self.finish_set(ctx, id, Err(msg));
            }
        }
    }

    /// Conditional SET `id` is over: answers it and lets the key go.
    pub(crate) fn finish_set(
        &mut self,
        ctx: &mut Ctx,
        id: usize,
        result: Result<(bool, Option<Vec<u8>>), String>,
    ) {
        let Some(set) = self.resp.sets.try_remove(id) else {
            return;
        };
        match set.dest {
            SetDest::Resp(tag) => {
                let a = match result {
                    Ok((written, old)) => RespAnswer::Set { written, old },
                    Err(e) => RespAnswer::Error(e),
                };
                self.resp.done.push((tag, a));
            }
            SetDest::Mail { from, tag } => {
                let mut resp = Vec::new();
                match result {
                    Ok((written, old)) => {
                        let flags = if written { SET_WRITTEN } else { 0 };
                        let count = u32::from(old.is_some());
                        let body = old.unwrap_or_default();
                        protocol::encode_response(Status::Ok, flags, count, &body, &mut resp);
                    }
                    Err(e) => {
                        protocol::encode_response(Status::Internal, 0, 0, e.as_bytes(), &mut resp)
                    }
                }
                if self.post.send(from, Mail::Reply { tag, resp }).is_err() {
                    tracing::debug!(thread = self.id, from, "forwarding thread gone");
                }
            }
        }
        self.release_hold(ctx, fnv1a64(&set.key));
    }

    /// Ends the hold of key hash `h`: what waited runs now, in arrival order (a SET among it
    /// holds the key again, and what follows it waits again).
    fn release_hold(&mut self, ctx: &mut Ctx, h: u64) {
        let Some(hold) = self.resp.holds.remove(&h) else {
            return;
        };
        for d in hold.queue {
            match d {
                Deferred::Op { dest, op } => self.execute(ctx, dest, op.view(), &[]),
                Deferred::Set(id) => self.begin_set(ctx, id),
            }
        }
    }

    fn resp_scan(&mut self, ctx: &mut Ctx, tag: RespTag, start: &[u8], max: usize) {
        let w = self.router.partitions();
        let max = max.clamp(1, protocol::MAX_SCAN_ITEMS as usize);
        let id = self.resp.scans.insert(RespScan {
            tag,
            left: w,
            max,
            parts: Vec::with_capacity(w),
            error: None,
        });
        let o = Op::Scan { start, max };
        let mut msg = Vec::new();
        protocol::encode_request(&Request::Op(o), &mut msg);
        for p in 0..w {
            let dest = Dest::RespScan { id };
            if p == self.id {
                self.execute(ctx, dest, o, &msg);
            } else {
                let letter = Letter::Request {
                    req_type: op::SCAN,
                    msg: msg.clone(),
                };
                self.forward_mail(ctx, dest, p, letter);
            }
        }
    }

    /// One partition's part of RESP scan `id` (or why it failed).
    pub(crate) fn resp_scan_part(&mut self, id: usize, part: Result<(Vec<Item>, bool), String>) {
        let Some(s) = self.resp.scans.get_mut(id) else {
            return;
        };
        match part {
            Ok(p) => s.parts.push(p),
            Err(e) => {
                s.error.get_or_insert(e);
            }
        }
        s.left = s.left.saturating_sub(1);
        if s.left > 0 {
            return;
        }
        let Some(s) = self.resp.scans.try_remove(id) else {
            return;
        };
        let a = match s.error {
            Some(e) => RespAnswer::Error(e),
            None => {
                let (items, more) = merge_parts(s.parts, s.max);
                RespAnswer::Items { items, more }
            }
        };
        self.resp.done.push((s.tag, a));
    }
}

/// A server thread's state and rpc context, as its RESP front-end's backend.
pub(crate) struct RespDriver<'a, B: Backend> {
    pub(crate) st: &'a mut ServerState<B>,
    pub(crate) ctx: &'a mut Ctx,
}

impl<B: Backend> RespBackend for RespDriver<'_, B> {
    fn submit(&mut self, tag: RespTag, op: KvOp<'_>) {
        self.st.resp_submit(self.ctx, tag, op);
    }

    fn get_now(&mut self, key: &[u8]) -> Option<Outcome<'_>> {
        self.st.resp_get_now(key)
    }

    fn figures(&self) -> Figures {
        self.st.resp.figures()
    }

    fn accepting(&self) -> bool {
        self.st.resp.overflow.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(k: &str) -> Item {
        (k.as_bytes().to_vec(), b"v".to_vec())
    }

    #[test]
    fn parts_merge_up_to_the_smallest_cut() {
        let (items, more) = merge_parts(
            vec![
                (vec![item("a"), item("c")], true),
                (vec![item("b"), item("d")], false),
            ],
            10,
        );
        assert_eq!(items, vec![item("a"), item("b"), item("c")]);
        assert!(more, "partition 0 was cut at c");
        let (items, more) = merge_parts(
            vec![
                (vec![item("a")], false),
                (vec![item("b"), item("d")], false),
            ],
            2,
        );
        assert_eq!(items, vec![item("a"), item("b")]);
        assert!(more, "cut to max");
        let (items, more) = merge_parts(vec![(vec![], false), (vec![item("x")], false)], 5);
        assert_eq!((items, more), (vec![item("x")], false));
    }

    #[test]
    fn a_part_is_cut_at_the_body_limit_and_at_max() {
        let big = vec![0u8; protocol::MAX_SCAN_BODY / 2];
        let items = vec![
            (b"a".to_vec(), big.clone()),
            (b"b".to_vec(), big.clone()),
            (b"c".to_vec(), big),
        ];
        let (kept, more) = cut_scan(items, 10);
        assert_eq!(kept.len(), 1);
        assert!(more);
        let (kept, more) = cut_scan(vec![item("a"), item("b")], 2);
        assert_eq!(kept.len(), 2);
        assert!(more, "all asked for were given: there may be more");
        let (_, more) = cut_scan(vec![item("a")], 2);
        assert!(!more);
    }
}
