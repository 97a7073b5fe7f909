//! What one server thread knows and does with a request: parse and admit it, run it on the
//! thread's engine worker (or forward it to the key's owner), and answer it — as a response of
//! its own, as an entry of a BATCH response, or as mail to the sibling that forwarded it.
//!
//! The answer's destination ([`Dest`]) is the only thing that depends on where a request came
//! from, so another front-end (a RESP listener, say) adds a destination and a parser, and
//! reuses the rest.

use std::collections::HashMap;

use kv_engine::{self as engine, Backend, DiskBackend, KeyRouter, Worker};
use kv_proto::{self as protocol, op, Op, Reply, Request, Status, ThreadStats, HDR_LEN};
use rpc::{Ctx, ReqHandle, Request as RpcRequest};

use crate::forward::{Letter, Mail, Post, MAX_FORWARDS};
use crate::resp::RespTag;
use crate::resp_ops::{RespKind, RespSide, SetDest, SetOp};

/// Where the answer to one operation goes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Dest {
    /// A request of its own: answered with a response message.
    Single(ReqHandle),
    /// Entry `pos` of BATCH `id` (a key of [`ServerState::batches`]).
    Batch { id: usize, pos: usize },
    /// A request sibling thread `from` forwarded: answered by mail, with `tag`.
    Forwarded { from: usize, tag: u64 },
    /// An operation of a RESP connection of this thread: answered into `resp.done`.
    Resp { tag: RespTag, kind: RespKind },
    /// One partition's part of RESP scan `id` (a key of `resp.scans`).
    RespScan { id: usize },
    /// The read or the write of conditional SET `id` (a key of `resp.sets`), at the owner.
    SetStep { id: usize },
}

/// One entry's answer inside a BATCH response.
#[derive(Default)]
struct Part {
    status: Option<Status>,
    body: Vec<u8>,
}

/// A BATCH whose entries are not all answered yet.
struct PendingBatch {
    handle: ReqHandle,
    left: usize,
    parts: Vec<Part>,
}

/// An operation submitted to the worker, waiting for its completion.
pub(crate) struct PendingOp {
    pub(crate) dest: Dest,
    pub(crate) op: u8,
    /// SCAN: the item count asked for (after the server's cap).
    pub(crate) scan_max: u32,
    /// A write counted in `resp.writing` under this key hash (only while a RESP front-end
    /// may run conditional SETs).
    pub(crate) write_hash: Option<u64>,
}

/// The per-thread state the rpc handlers run on (one per server thread). `B`: the engine's
/// I/O backend.
pub struct ServerState<B: Backend = DiskBackend> {
    pub(crate) id: usize,
    pub(crate) router: KeyRouter,
    pub(crate) worker: Worker<B>,
    pub(crate) next_tag: u64,
    pub(crate) ops: HashMap<u64, PendingOp>,
    /// This thread's forwards outstanding, by tag: where their answers go.
    forwards: HashMap<u64, Dest>,
    batches: slab::Slab<PendingBatch>,
    pub(crate) post: Post,
    /// Answer new requests with SHUTTING_DOWN.
    pub(crate) stopping: bool,
    pub(crate) stats: ThreadStats,
    done: Vec<engine::Completion>,
    scratch: Vec<u8>,
    /// What the RESP front-end needs of the thread (see `resp_ops`).
    pub(crate) resp: RespSide,
    /// Cluster mode: the Raft replicas of this thread's shards (`None`: a single server).
    pub(crate) cluster: Option<Box<crate::cluster::Replicas>>,
}

impl<B: Backend> ServerState<B> {
    pub(crate) fn new(id: usize, router: KeyRouter, worker: Worker<B>, post: Post) -> Self {
        Self {
            id,
            router,
            worker,
            next_tag: 1,
            ops: HashMap::new(),
            forwards: HashMap::new(),
            batches: slab::Slab::new(),
            post,
            stopping: false,
            stats: ThreadStats {
                thread_id: id as u64,
                ..ThreadStats::default()
            },
            done: Vec::new(),
            scratch: Vec::new(),
            resp: RespSide::default(),
            cluster: None,
        }
    }

    /// No request of this thread is in progress: nothing submitted to the worker, no forward
    /// outstanding, no mail waiting.
    pub(crate) fn is_idle(&self) -> bool {
        self.ops.is_empty()
            && self.forwards.is_empty()
            && self.worker.pending() == 0
            && !self.post.has_mail()
            && self.resp.is_idle()
            && self.cluster.as_ref().is_none_or(|c| c.is_idle())
    }

    /// Requests in progress (for the log).
    pub(crate) fn in_progress(&self) -> usize {
        self.ops.len() + self.forwards.len()
    }

    pub(crate) fn respond(
        &mut self,
        ctx: &mut Ctx,
        h: ReqHandle,
        status: Status,
        flags: u16,
        count: u32,
        body: &[u8],
    ) {
        let mut m = ctx.alloc_msg(HDR_LEN + body.len());
        let buf = m.as_mut_slice();
        protocol::write_resp_header(buf, status, flags, count, body.len());
        if let Some(dst) = buf.get_mut(HDR_LEN..) {
            dst.copy_from_slice(body);
        }
        if status != Status::Ok && status != Status::NotFound {
            self.stats.errors += 1;
        }
        if let Err(e) = ctx.respond(h, m) {
            tracing::debug!(thread = self.id, error = %e, "response not sent");
        }
    }

    /// A parsed request may run: answers a malformed one with its error status (counted in
    /// `bad_requests`) and any one with SHUTTING_DOWN once the server is stopping.
    pub(crate) fn admit<T>(
        &mut self,
        ctx: &mut Ctx,
        dest: Dest,
        parsed: Result<T, protocol::RequestError>,
    ) -> Option<T> {
        match parsed {
            Err(e) => {
                self.stats.bad_requests += 1;
                tracing::debug!(thread = self.id, error = %e, "bad request");
                self.answer(ctx, dest, e.status(), e.to_string().into_bytes());
                None
            }
            Ok(_) if self.stopping => {
                let msg = b"the server is shutting down".to_vec();
                self.answer(ctx, dest, Status::ShuttingDown, msg);
                None
            }
            Ok(r) => Some(r),
        }
    }

    /// The rpc handler of every request type.
    pub(crate) fn on_request(&mut self, ctx: &mut Ctx, req: RpcRequest<'_>) {
        let h = req.handle;
        if self.cluster.is_some() && self.on_cluster_request(ctx, &req) {
            return;
        }
        if req.req_type == op::BATCH {
            self.on_batch(ctx, h, req.data);
            return;
        }
        let parsed = protocol::parse_request(req.req_type, req.data);
        let Some(parsed) = self.admit(ctx, Dest::Single(h), parsed) else {
            return;
        };
        match parsed {
            Request::Info => {
                let info = protocol::ServerInfo {
                    threads: self.router.partitions() as u32,
                    thread_id: self.id as u32,
                    partitioning: protocol::PARTITION_FNV1A64_MOD,
                    max_key: protocol::MAX_KEY_LEN as u32,
                    max_value: protocol::MAX_VALUE_LEN as u32,
                    max_scan: protocol::MAX_SCAN_ITEMS,
                    max_batch: protocol::MAX_BATCH,
                    // Cluster mode answers a write once a quorum has it (and takes no BATCH).
                    flags: if self.cluster.is_none() && self.worker.acks_writes_at_once() {
                        protocol::INFO_WRITES_AT_ONCE
                    } else {
                        0
                    },
                }
                .encode();
                self.respond(ctx, h, Status::Ok, 0, 0, bytemuck::bytes_of(&info));
            }
            Request::Stats => {
                let ws = self.worker.stats();
                let mut s = self.stats;
                s.items = ws.items;
                s.engine_reads = ws.reads;
                s.engine_writes = ws.writes;
                s.cache_hits = ws.cache_hits;
                s.cache_misses = ws.cache_misses;
                s.file_bytes = ws.file_bytes;
                s.index_bytes = ws.index_bytes;
                s.sessions = ctx.num_sessions() as u64;
                s.sessions_reaped = ctx.stats().server_sessions_reaped;
                let body = s.encode();
                self.respond(ctx, h, Status::Ok, 0, 0, bytemuck::bytes_of(&body));
            }
            Request::Op(Op::Scan { max: 0, .. }) => {
                self.stats.scans += 1;
                self.respond(ctx, h, Status::Ok, 0, 0, b"");
            }
            Request::Op(Op::Get { key }) if self.router.partition_of(key) == self.id => {
                self.get_fast(ctx, h, key, req.data);
            }
            Request::Op(o) => self.execute(ctx, Dest::Single(h), o, req.data),
        }
    }

    /// A GET of this thread's key: answered inside the handler when the engine can answer
    /// without I/O (a cached block or a missing key) — no allocation, the value copied once,
    /// from the cached block into the response; submitted to the worker otherwise.
    fn get_fast(&mut self, ctx: &mut Ctx, h: ReqHandle, key: &[u8], raw: &[u8]) {
        let (status, value) = match self.worker.get_cached(key) {
            engine::CachedGet::Value(v) => (Status::Ok, v),
            engine::CachedGet::NotFound => (Status::NotFound, &[][..]),
            engine::CachedGet::Miss => {
                self.execute(ctx, Dest::Single(h), Op::Get { key }, raw);
                return;
            }
        };
        let mut m = ctx.alloc_msg(HDR_LEN + value.len());
        let buf = m.as_mut_slice();
        protocol::write_resp_header(buf, status, 0, 0, value.len());
        if let Some(dst) = buf.get_mut(HDR_LEN..) {
            dst.copy_from_slice(value);
        }
        self.stats.gets += 1;
        if status == Status::NotFound {
            self.stats.not_found += 1;
        }
        if let Err(e) = ctx.respond(h, m) {
            tracing::debug!(thread = self.id, error = %e, "response not sent");
        }
    }

    /// A BATCH: every entry is checked before any runs (a bad one rejects the whole
    /// message); then each runs like a request of its own (forwarded if another thread owns
    /// its key) and the response goes out when the last entry is answered.
    fn on_batch(&mut self, ctx: &mut Ctx, h: ReqHandle, data: &[u8]) {
        let Some(reqs) = self.admit(ctx, Dest::Single(h), protocol::parse_batch(data)) else {
            return;
        };
        let n = reqs.len();
        let Some(parts) = self.batch_fast(ctx, h, reqs.clone()) else {
            return;
        };
        let answered = parts.len();
        let mut parts = parts;
        parts.resize_with(n, Part::default);
        let id = self.batches.insert(PendingBatch {
            handle: h,
            left: n - answered,
            parts,
        });
        for (pos, (r, raw)) in reqs.enumerate().skip(answered) {
            let dest = Dest::Batch { id, pos };
            match r {
                Request::Op(o) => self.execute(ctx, dest, o, raw),
                // parse_batch admits only GET, PUT and DELETE.
                Request::Info | Request::Stats => {
                    let msg = b"not allowed in a BATCH".to_vec();
                    self.answer(ctx, dest, Status::BadRequest, msg);
                }
            }
        }
    }

    /// The fast path of a BATCH: its leading GETs of this thread's keys that the engine
    /// answers without I/O ([`Worker::get_cached`]) are written straight into the response.
    /// `None`: every entry was answered and the response sent (no allocation but the pooled
    /// response buffer). Otherwise the answers so far, as parts, for the slow path to go on
    /// from (rare: a miss, a write, or another thread's key).
    fn batch_fast(
        &mut self,
        ctx: &mut Ctx,
        h: ReqHandle,
        reqs: protocol::BatchRequests<'_>,
    ) -> Option<Vec<Part>> {
        let n = reqs.len();
        // A batch of writes (the client batches reads and writes apart) takes no buffer.
        match reqs.clone().next() {
            Some((Request::Op(Op::Get { key }), _)) if self.router.partition_of(key) == self.id => {
            }
            _ => return Some(Vec::new()),
        }
        // A guess at the size (the buffer grows if values are larger).
        let mut m = ctx.alloc_msg(HDR_LEN + n * (HDR_LEN + 128));
        let mut off = HDR_LEN;
        let mut answered = 0usize;
        let mut not_found = 0u64;
        for (r, _) in reqs {
            let Request::Op(Op::Get { key }) = r else {
                break;
            };
            if self.router.partition_of(key) != self.id {
                break;
            }
            let (status, value) = match self.worker.get_cached(key) {
                engine::CachedGet::Value(v) => (Status::Ok, v),
                engine::CachedGet::NotFound => (Status::NotFound, &[][..]),
                engine::CachedGet::Miss => break,
            };
            let end = off + HDR_LEN + value.len();
            if end > m.len() {
                m.resize(end.max(2 * m.len()));
            }
            if let Some(dst) = m.as_mut_slice().get_mut(off..end) {
                protocol::write_resp_header(dst, status, 0, 0, value.len());
                if let Some(d) = dst.get_mut(HDR_LEN..) {
                    d.copy_from_slice(value);
                }
            }
            off = end;
            answered += 1;
            not_found += u64::from(status == Status::NotFound);
        }
        self.stats.gets += answered as u64;
        self.stats.not_found += not_found;
        if answered == n {
            m.resize(off);
            protocol::write_resp_header(m.as_mut_slice(), Status::Ok, 0, n as u32, off - HDR_LEN);
            if let Err(e) = ctx.respond(h, m) {
                tracing::debug!(thread = self.id, error = %e, "batch response not sent");
            }
            return None;
        }
        // Hand the answers so far to the slow path.
        let mut parts = Vec::with_capacity(n);
        let written = m.as_slice().get(HDR_LEN..off).unwrap_or(&[]);
        if let Ok(rs) = protocol::parse_batch_responses(written, answered as u32) {
            parts.extend(rs.into_iter().map(|r| Part {
                status: Some(r.status),
                body: r.body.to_vec(),
            }));
        }
        ctx.free_msg(m);
        Some(parts)
    }

    /// Picks up the mail from sibling threads: requests to run here, answers to forwards.
    pub(crate) fn on_mail(&mut self, ctx: &mut Ctx) -> bool {
        let mut any = false;
        while let Some(mail) = self.post.receive() {
            any = true;
            match mail {
                Mail::Request {
                    from,
                    tag,
                    req_type,
                    msg,
                } => {
                    let dest = Dest::Forwarded { from, tag };
                    let parsed = protocol::parse_request(req_type, &msg);
                    match self.admit(ctx, dest, parsed) {
                        Some(Request::Op(o)) => self.execute(ctx, dest, o, &msg),
                        Some(Request::Info | Request::Stats) => {
                            let msg = b"only GET, PUT and DELETE are forwarded".to_vec();
                            self.answer(ctx, dest, Status::BadRequest, msg);
                        }
                        None => {}
                    }
                }
                Mail::Reply { tag, resp } => self.on_forwarded(ctx, tag, &resp),
                Mail::SetIf {
                    from,
                    tag,
                    key,
                    value,
                    cond,
                    get,
                } => {
                    let set = SetOp::new(SetDest::Mail { from, tag }, key, value, cond, get);
                    self.start_set(ctx, set);
                }
            }
        }
        any
    }

    /// Runs a GET / PUT / DELETE / SCAN (`raw`: its encoding, for forwarding).
    pub(crate) fn execute(&mut self, ctx: &mut Ctx, dest: Dest, o: Op<&[u8]>, raw: &[u8]) {
        let req_type = o.code();
        let mut scan_max = 0;
        if let Op::Scan { max, .. } = o {
            // One SCAN answers for this thread's partition, capped per response.
            scan_max = u32::try_from(max)
                .unwrap_or(u32::MAX)
                .min(protocol::MAX_SCAN_ITEMS);
        } else {
            let owner = self.router.partition_of(o.key());
            if owner != self.id {
                self.forward(ctx, dest, owner, req_type, raw);
                return;
            }
        }
        if !matches!(o, Op::Scan { .. }) && self.resp.defer(dest, o) {
            // A conditional SET holds the key: this runs after it.
            return;
        }
        let write_hash = if o.is_write() {
            self.resp.count_write(o.key())
        } else {
            None
        };
        let op = match o {
            Op::Scan { start, .. } => Op::Scan {
                start: start.to_vec(),
                max: scan_max as usize,
            },
            other => other.to_vec(),
        };
        self.submit_local(dest, op, req_type, scan_max, write_hash);
    }

    /// Hands `op` to the worker; its completion goes to `dest`.
    pub(crate) fn submit_local(
        &mut self,
        dest: Dest,
        op: Op,
        req_type: u8,
        scan_max: u32,
        write_hash: Option<u64>,
    ) {
        let tag = self.next_tag;
        self.next_tag += 1;
        self.ops.insert(
            tag,
            PendingOp {
                dest,
                op: req_type,
                scan_max,
                write_hash,
            },
        );
        self.worker.submit(op, tag);
    }

    /// Answers a GET / PUT / DELETE (no flags, no count): a response of its own, an entry of
    /// a BATCH (sent when it is the last one), or mail to the thread that forwarded it.
    pub(crate) fn answer(&mut self, ctx: &mut Ctx, dest: Dest, status: Status, body: Vec<u8>) {
        if status != Status::Ok && status != Status::NotFound {
            if let Dest::Resp { .. } | Dest::RespScan { .. } | Dest::SetStep { .. } = dest {
                self.stats.errors += 1;
            }
        }
        let id = match dest {
            Dest::Resp { tag, kind } => {
                self.resp.answer(tag, kind, status, body);
                return;
            }
            Dest::RespScan { id } => {
                let msg = String::from_utf8_lossy(&body).into_owned();
                self.resp_scan_part(id, Err(msg));
                return;
            }
            Dest::SetStep { id } => {
                let msg = String::from_utf8_lossy(&body).into_owned();
                self.finish_set(ctx, id, Err(msg));
                return;
            }
            Dest::Single(h) => {
                self.respond(ctx, h, status, 0, 0, &body);
                return;
            }
            Dest::Forwarded { from, tag } => {
                let mut resp = Vec::with_capacity(HDR_LEN + body.len());
                protocol::encode_response(status, 0, 0, &body, &mut resp);
                if status != Status::Ok && status != Status::NotFound {
                    self.stats.errors += 1;
                }
                if self.post.send(from, Mail::Reply { tag, resp }).is_err() {
                    tracing::debug!(thread = self.id, from, "forwarding thread gone");
                }
                return;
            }
            Dest::Batch { id, pos } => {
                let Some(b) = self.batches.get_mut(id) else {
                    return;
                };
                if let Some(p) = b.parts.get_mut(pos) {
                    if p.status.is_none() {
                        b.left -= 1;
                    }
                    *p = Part {
                        status: Some(status),
                        body,
                    };
                }
                if status != Status::Ok && status != Status::NotFound {
                    self.stats.errors += 1;
                }
                if b.left > 0 {
                    return;
                }
                id
            }
        };
        let Some(b) = self.batches.try_remove(id) else {
            return;
        };
        let body_len: usize = b.parts.iter().map(|p| HDR_LEN + p.body.len()).sum();
        let mut m = ctx.alloc_msg(HDR_LEN + body_len);
        let buf = m.as_mut_slice();
        protocol::write_resp_header(buf, Status::Ok, 0, b.parts.len() as u32, body_len);
        let mut off = HDR_LEN;
        for p in &b.parts {
            let status = p.status.unwrap_or(Status::Internal);
            if let Some(dst) = buf.get_mut(off..) {
                protocol::write_resp_header(dst, status, 0, 0, p.body.len());
            }
            off += HDR_LEN;
            if let Some(dst) = buf.get_mut(off..off + p.body.len()) {
                dst.copy_from_slice(&p.body);
            }
            off += p.body.len();
        }
        if let Err(e) = ctx.respond(b.handle, m) {
            tracing::debug!(thread = self.id, error = %e, "batch response not sent");
        }
    }

    /// Hands a request for another thread's key to that thread.
    fn forward(&mut self, ctx: &mut Ctx, dest: Dest, owner: usize, req_type: u8, raw: &[u8]) {
        let msg = raw.to_vec();
        self.forward_mail(ctx, dest, owner, Letter::Request { req_type, msg });
    }

    /// Posts `letter` to thread `owner` and remembers that its answer goes to `dest`. Past
    /// [`MAX_FORWARDS`] outstanding, an rpc request is answered OVERLOADED (its client
    /// retries); a RESP operation waits in `resp.overflow` instead (RESP clients expect
    /// backpressure, not errors), and the front-end runs no command until that drains.
    pub(crate) fn forward_mail(&mut self, ctx: &mut Ctx, dest: Dest, owner: usize, letter: Letter) {
        if self.forwards.len() >= MAX_FORWARDS {
            if let Dest::Resp { .. } | Dest::RespScan { .. } = dest {
                self.resp.overflow.push_back((owner, dest, letter));
                return;
            }
            let msg = b"forwarding queue full".to_vec();
            self.answer(ctx, dest, Status::Overloaded, msg);
            return;
        }
        let tag = self.next_tag;
        self.next_tag += 1;
        let mail = letter.seal(self.id, tag);
        match self.post.send(owner, mail) {
            Ok(()) => {
                self.stats.forwarded += 1;
                self.forwards.insert(tag, dest);
            }
            Err(_) => {
                let msg = format!("thread {owner}, which owns the key, is gone");
                self.answer(ctx, dest, Status::Internal, msg.into_bytes());
            }
        }
    }

    /// The owner's answer to one of this thread's forwards (a complete response message).
    fn on_forwarded(&mut self, ctx: &mut Ctx, tag: u64, resp: &[u8]) {
        let Some(dest) = self.forwards.remove(&tag) else {
            return;
        };
        // A forward slot is free: RESP operations waiting for one go first.
        if let Some((owner, d, letter)) = self.resp.overflow.pop_front() {
            self.forward_mail(ctx, d, owner, letter);
        }
        match dest {
            // Relayed unchanged.
            Dest::Single(h) => {
                if let Err(e) = ctx.respond_with(h, resp) {
                    tracing::debug!(thread = self.id, error = %e, "forwarded response not sent");
                }
            }
            Dest::Resp {
                tag,
                kind: RespKind::Set,
            } => self.resp.answer_set_mail(tag, resp),
            Dest::RespScan { id } => {
                let part = protocol::parse_response(resp)
                    .map_err(|e| format!("forwarded scan: {e}"))
                    .and_then(|r| match r.status {
                        Status::Ok => protocol::parse_scan_items(r.body, r.count)
                            .map(|items| (items, r.flags & protocol::RESP_FLAG_MORE != 0))
                            .map_err(|e| format!("forwarded scan: {e}")),
                        s => Err(format!("{s:?}: {}", String::from_utf8_lossy(r.body))),
                    });
                self.resp_scan_part(id, part);
            }
            Dest::Batch { .. }
            | Dest::Forwarded { .. }
            | Dest::Resp { .. }
            | Dest::SetStep { .. } => {
                let (status, body) = match protocol::parse_response(resp) {
                    Ok(r) => (r.status, r.body.to_vec()),
                    Err(e) => (
                        Status::Internal,
                        format!("forwarded request: {e}").into_bytes(),
                    ),
                };
                self.answer(ctx, dest, status, body);
            }
        }
    }

    /// Polls the worker at `now` (ns on the thread's Rpc clock: the engine's periodic flush
    /// runs on it) and answers what it finished; returns whether anything did.
    pub(crate) fn poll_worker(&mut self, ctx: &mut Ctx, now: u64) -> bool {
        let mut done = std::mem::take(&mut self.done);
        let any = self.worker.poll_at(now, &mut done) > 0;
        // Before any answer leaves: a client that saw its write acknowledged and then asks
        // how many keys there are counts its key.
        self.resp.publish_items(self.worker.len() as u64);
        for c in done.drain(..) {
            self.on_engine_done(ctx, c);
        }
        self.done = done;
        any
    }

    fn on_engine_done(&mut self, ctx: &mut Ctx, c: engine::Completion) {
        if self.cluster.as_ref().is_some_and(|cl| cl.owns_tag(c.tag)) {
            self.on_cluster_engine_done(ctx, c);
            return;
        }
        let Some(p) = self.ops.remove(&c.tag) else {
            return;
        };
        match p.op {
            op::GET => self.stats.gets += 1,
            op::PUT => self.stats.puts += 1,
            op::DELETE => self.stats.deletes += 1,
            _ => self.stats.scans += 1,
        }
        if let Some(h) = p.write_hash {
            if let Some(waiting) = self.resp.write_done(h) {
                self.set_read(waiting);
            }
        }
        let result = match (c.result, p.dest) {
            (Ok(Reply::Items(items)), Dest::Single(h)) => {
                self.respond_scan(ctx, h, &items, p.scan_max);
                return;
            }
            (Ok(Reply::Items(items)), Dest::Forwarded { from, tag }) => {
                let (body, count, more) = self.scan_body(&items, p.scan_max);
                let flags = if more { protocol::RESP_FLAG_MORE } else { 0 };
                let mut resp = Vec::with_capacity(HDR_LEN + body.len());
                protocol::encode_response(Status::Ok, flags, count, &body, &mut resp);
                self.recycle_scratch(body);
                if self.post.send(from, Mail::Reply { tag, resp }).is_err() {
                    tracing::debug!(thread = self.id, from, "forwarding thread gone");
                }
                return;
            }
            (r, Dest::RespScan { id }) => {
                let part = match r {
                    Ok(Reply::Items(items)) => Ok(crate::resp_ops::cut_scan(items, p.scan_max)),
                    Ok(_) => Err("scan answered with something else".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                self.resp_scan_part(id, part);
                return;
            }
            (r, Dest::SetStep { id }) => {
                self.on_set_step(ctx, id, r);
                return;
            }
            (r, _) => r,
        };
        let (status, body) = match result {
            Ok(Reply::Value(v)) => (Status::Ok, v),
            Ok(Reply::Written | Reply::Deleted) => (Status::Ok, Vec::new()),
            Ok(Reply::NotFound) => {
                self.stats.not_found += 1;
                (Status::NotFound, Vec::new())
            }
            Ok(Reply::Items(_)) => (Status::Internal, b"scan inside a batch".to_vec()),
            Err(e) => {
                let status = status_of(&e);
                if status == Status::Internal {
                    tracing::warn!(thread = self.id, error = %e, "engine error");
                }
                (status, e.to_string().into_bytes())
            }
        };
        self.answer(ctx, p.dest, status, body);
    }

    fn respond_scan(&mut self, ctx: &mut Ctx, h: ReqHandle, items: &[protocol::Item], max: u32) {
        let (body, count, more) = self.scan_body(items, max);
        let flags = if more { protocol::RESP_FLAG_MORE } else { 0 };
        self.respond(ctx, h, Status::Ok, flags, count, &body);
        self.recycle_scratch(body);
    }

    /// A SCAN response body of `items` (in the scratch buffer): at most
    /// [`MAX_SCAN_BODY`](protocol::MAX_SCAN_BODY) bytes; its item count, and whether there
    /// may be more (cut short, or all `max` items asked for given).
    fn scan_body(&mut self, items: &[protocol::Item], max: u32) -> (Vec<u8>, u32, bool) {
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        let mut count = 0u32;
        let mut more = false;
        for (k, v) in items {
            if body.len() + protocol::scan_item_len(k, v) > protocol::MAX_SCAN_BODY && count > 0 {
                more = true;
                break;
            }
            protocol::encode_scan_item(k, v, &mut body);
            count += 1;
        }
        // The client got all the items it asked for: there may be more.
        more |= count >= max;
        (body, count, more)
    }

    fn recycle_scratch(&mut self, mut body: Vec<u8>) {
        body.clear();
        if body.capacity() <= protocol::MAX_SCAN_BODY {
            self.scratch = body;
        }
    }
}

/// The status answering an engine error: the one mapping from engine errors to the wire.
pub(crate) fn status_of(e: &engine::Error) -> Status {
    match e {
        engine::Error::KeyTooLarge { .. } => Status::KeyTooLarge,
        engine::Error::ValueTooLarge { .. } => Status::ValueTooLarge,
        engine::Error::Closed => Status::ShuttingDown,
        _ => Status::Internal,
    }
}
