//! One RESP connection as a state machine with no I/O: bytes in, operations out to a
//! [`Store`], outcomes in, reply bytes out — in pipeline order.
//!
//! # Driving a connection
//!
//! ```text
//!   socket ──read──▶ read_buf()/received(n) ──▶ process(store) ──submit(id, op)──▶ store
//!   socket ◀─write── output()/sent(n)       ◀── complete(id, outcome) ◀────────── store
//! ```
//!
//! 1. While [`Connection::wants_read`], read from the socket into [`Connection::read_buf`]
//!    and report the count with [`Connection::received`] (end of stream:
//!    [`Connection::input_closed`]).
//! 2. Call [`Connection::process`]: it parses the buffered commands (at most
//!    [`Limits::batch`](crate::Limits::batch) per call), answers those it can at once, and
//!    hands every key-value operation to the store with an [`OpId`].
//! 3. When the store finishes an operation, call [`Connection::complete`] with its id.
//! 4. Write [`Connection::output`] to the socket and report the count with
//!    [`Connection::sent`].
//! 5. Drop the connection when [`Connection::is_finished`] (after QUIT, a protocol error, or
//!    the end of the client's stream once every reply is out).
//!
//! Call `process` again after `complete` and `sent`: they may lift the bounds that stopped
//! it (pipeline depth, unsent output).
//!
//! # Pipeline order
//!
//! Every command that does not complete at once takes a *slot* at the back of a queue; its
//! reply is built in the slot as its operations complete (in any order; a multi-key command
//! reassembles its parts in key order), and replies leave the queue from the front only, so
//! the client reads them in the order it sent the commands. A command that completes at once
//! with nothing queued before it writes straight to the output buffer.
//!
//! # Bounds
//!
//! Unprocessed input is bounded by [`Limits::max_query_buffer`](crate::Limits) (a frame that
//! does not fit is a protocol error), queued commands by `max_pipeline`, and unsent output
//! by `max_output_buffer`: past either of the last two the connection stops reading and
//! running commands (so a client that sends without reading is throttled, not buffered) and
//! resumes when replies complete and leave.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::VecDeque;
use std::sync::Arc;

use crate::config::{Limits, Shared};
use crate::encode::{Encoder, Protocol};
use crate::glob::glob_match;
use crate::order::{InFlight, Touched};
use crate::parse::Parser;
use crate::store::{OpId, Outcome, Store};

/// Bytes a read asks room for at least (Redis reads 16 KiB at a time).
const READ_CHUNK: usize = 16 << 10;
/// Buffers larger than this are freed rather than kept once empty.
const KEEP_CAPACITY: usize = 64 << 10;
/// Reply buffers kept for reuse per connection.
const POOL: usize = 16;

/// Why a connection is closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The client sent QUIT.
    Quit,
    /// The request stream was malformed or over a bound; the error reply is the last.
    ProtocolError,
}

/// Counters of one connection since the last [`Connection::take_stats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Commands run.
    pub commands: u64,
    /// Key reads that found their key.
    pub keyspace_hits: u64,
    /// Key reads that did not.
    pub keyspace_misses: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
}

/// An [`OpId`] the connection is not waiting for (already completed, or never submitted).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("operation {0:?} is not in progress on this connection")]
pub struct UnknownOp(pub OpId);

/// One RESP client connection (see the [module docs](self)).
///
/// ```
/// use kv_resp::{Config, Connection, Figures, KvOp, OpId, Outcome, Shared, Store};
///
/// /// A store that remembers what it was asked, to answer later.
/// #[derive(Default)]
/// struct Recorder(Vec<(OpId, String)>);
/// impl Store for Recorder {
///     fn submit(&mut self, id: OpId, op: KvOp<'_>) {
///         self.0.push((id, format!("{op:?}")));
///     }
///     fn figures(&self) -> Figures { Figures::default() }
/// }
///
/// let mut conn = Connection::new(Shared::new(Config::default()));
/// let mut store = Recorder::default();
/// conn.feed(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n");
/// assert_eq!(conn.process(&mut store), 2);
/// // PING waits behind the GET: nothing is out yet.
/// assert_eq!(conn.output(), b"");
/// let (id, _) = store.0.pop().unwrap();
/// conn.complete(id, Outcome::Value(b"v")).unwrap();
/// assert_eq!(conn.output(), b"$1\r\nv\r\n+PONG\r\n");
/// let n = conn.output().len();
/// conn.sent(n);
/// ```
#[derive(Debug)]
pub struct Connection {
    rx: Rx,
    pub(crate) s: Session,
}

/// The input side: the receive buffer and the parser reading it.
#[derive(Debug)]
struct Rx {
    parser: Parser,
    /// `buf[start..end]` is received and not yet consumed; `buf` is kept initialised so
    /// that reads can go straight into it.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// The last `process` stopped because the buffered bytes hold no complete frame.
    drained: bool,
}

/// Everything but the input: protocol state, the reply queue and the output buffer.
#[derive(Debug)]
pub(crate) struct Session {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: u64,
    pub(crate) peer: String,
    pub(crate) local: String,
    pub(crate) proto: Protocol,
    pub(crate) authenticated: bool,
    pub(crate) name: Option<Vec<u8>>,
    pub(crate) lib_name: Option<Vec<u8>>,
    pub(crate) lib_ver: Option<Vec<u8>>,
    pub(crate) closing: Option<Close>,
    /// Between a refused MULTI and its EXEC or DISCARD: nothing runs.
    pub(crate) in_refused_multi: bool,
    out: Vec<u8>,
    out_start: usize,
    slots: VecDeque<Slot>,
    /// Sequence number of `slots.front()`.
    head_seq: u64,
    in_flight: usize,
    /// The keys of the operations in flight (see [`crate::order`]).
    pub(crate) order: InFlight,
    /// The next command conflicts with an operation in flight: nothing runs until an
    /// operation answers.
    pub(crate) stalled: bool,
    /// Bytes of reply held in queued slots (finished behind an unfinished one, or partly
    /// built); they count against the output bound like unsent output.
    held: usize,
    read_closed: bool,
    pub(crate) stats: ConnStats,
    pool: Vec<Vec<u8>>,
}

/// A queued reply.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Operations not answered yet.
    left: u32,
    /// Which of the command's operations have answered (each may answer once).
    answered: PartSet,
    /// The keys its operations hold.
    touched: Option<Touched>,
    pending: Pending,
    /// The reply (complete once `pending` is `Ready`).
    buf: Vec<u8>,
    /// The first error an operation answered with; it becomes the whole reply.
    err: Option<String>,
    /// The protocol in force when the command ran.
    proto: Protocol,
}

/// A set of part numbers below a bound: one word for up to 64 parts (every command but
/// large multi-key ones), a vector beyond.
#[derive(Debug)]
enum PartSet {
    Small { parts: u32, bits: u64 },
    Large { parts: u32, words: Vec<u64> },
}

impl PartSet {
    fn new(parts: u32) -> Self {
        if parts <= 64 {
            PartSet::Small { parts, bits: 0 }
        } else {
            PartSet::Large {
                parts,
                words: vec![0; parts.div_ceil(64) as usize],
            }
        }
    }

    /// Adds `part`; false if it is out of range or already in.
    fn insert(&mut self, part: u32) -> bool {
        let (parts, word) = match self {
            PartSet::Small { parts, bits } => (*parts, Some(bits)),
            PartSet::Large { parts, words } => (*parts, words.get_mut((part / 64) as usize)),
        };
        let Some(word) = word.filter(|_| part < parts) else {
            return false;
        };
        let bit = 1u64 << (part % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

/// How a queued reply is built from its operations' outcomes.
#[derive(Debug)]
pub(crate) enum Pending {
    /// `buf` holds the finished reply.
    Ready,
    /// GET: the value or null.
    Get,
    /// STRLEN: the value's length or 0.
    Strlen,
    /// TYPE: `string` or `none`.
    Type,
    /// TTL / PTTL: -1 (no expiry) or -2 (no key).
    Ttl,
    /// EXISTS: keys found.
    Exists(i64),
    /// DEL: keys deleted.
    Del(i64),
    /// SET, MSET: `+OK` when every write is acknowledged.
    Ok,
    /// SET with NX / XX / GET, GETSET.
    Set {
        /// Reply with the old value (else `+OK` or null).
        get: bool,
    },
    /// MGET: parts arrive in any order; `next` is the first not yet encoded, `stash` holds
    /// later ones that arrived early.
    MGet {
        next: u32,
        stash: Vec<(u32, Option<Vec<u8>>)>,
    },
    /// SCAN.
    Scan(Box<ScanState>),
}

/// What a SCAN call remembers until its page arrives.
#[derive(Debug)]
pub(crate) struct ScanState {
    /// MATCH pattern (`None`: every key).
    pub(crate) pattern: Option<Vec<u8>>,
    /// The pattern's literal prefix: every match starts with it, so the scan ends at the
    /// first key past it.
    pub(crate) prefix: Vec<u8>,
}

/// The smallest key of at most `max_len` bytes greater than `key`, if any: where a scan
/// resumes after `key`.
pub(crate) fn successor(key: &[u8], max_len: usize) -> Option<Vec<u8>> {
    let mut k = key.to_vec();
    if k.len() < max_len {
        k.push(0);
        return Some(k);
    }
    k.truncate(max_len);
    while let Some(last) = k.pop() {
        if last < u8::MAX {
            k.push(last + 1);
            return Some(k);
        }
    }
    None
}

impl Connection {
    /// A new connection of the server whose shared state is `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        let limits = shared.config().limits;
        let id = shared.next_client_id();
        let authenticated = shared.config().password.is_none();
        Self {
            rx: Rx {
                parser: Parser::new(limits.parse),
                buf: Vec::new(),
                start: 0,
                end: 0,
                drained: true,
            },
            s: Session {
                shared,
                id,
                peer: String::new(),
                local: String::new(),
                proto: Protocol::Resp2,
                authenticated,
                name: None,
                lib_name: None,
                lib_ver: None,
                closing: None,
                in_refused_multi: false,
                out: Vec::new(),
                out_start: 0,
                slots: VecDeque::new(),
                head_seq: 0,
                in_flight: 0,
                order: InFlight::default(),
                stalled: false,
                held: 0,
                read_closed: false,
                stats: ConnStats::default(),
                pool: Vec::new(),
            },
        }
    }

    /// Records the peer's and the local address (shown by `CLIENT INFO`).
    pub fn set_addrs(&mut self, peer: impl std::fmt::Display, local: impl std::fmt::Display) {
        self.s.peer = peer.to_string();
        self.s.local = local.to_string();
    }

    /// The client id (`CLIENT ID`), unique over the server's life.
    pub fn id(&self) -> u64 {
        self.s.id
    }

    /// The reply protocol in force (RESP3 after `HELLO 3`).
    pub fn protocol(&self) -> Protocol {
        self.s.proto
    }

    /// The name set with `CLIENT SETNAME` or `HELLO ... SETNAME`.
    pub fn name(&self) -> Option<&[u8]> {
        self.s.name.as_deref()
    }

    fn limits(&self) -> Limits {
        self.s.shared.config().limits
    }

    /// Room to read into: up to the query buffer bound less what is buffered (empty at the
    /// bound). Report what was read with [`Connection::received`].
    pub fn read_buf(&mut self) -> &mut [u8] {
        let max = self.limits().max_query_buffer;
        let rx = &mut self.rx;
        if rx.start == rx.end {
            rx.start = 0;
            rx.end = 0;
            if rx.buf.len() > KEEP_CAPACITY {
                rx.buf = Vec::new();
            }
        } else if rx.start > 0 && rx.buf.len() - rx.end < READ_CHUNK {
            // Move the partial frame to the front. The parser's offsets are relative to the
            // first unconsumed byte, so they stay valid.
            rx.buf.copy_within(rx.start..rx.end, 0);
            rx.end -= rx.start;
            rx.start = 0;
        }
        let buffered = rx.end - rx.start;
        let allowed = max.saturating_sub(buffered);
        // Room for a whole large bulk at once when the parser knows its size.
        let want = rx
            .parser
            .needed(buffered)
            .saturating_sub(buffered)
            .max(READ_CHUNK)
            .min(allowed);
        let target = rx.end + want;
        if rx.buf.len() < target {
            let grown = rx.buf.len().saturating_mul(2).clamp(target, rx.start + max);
            rx.buf.resize(grown, 0);
        }
        let limit = rx.buf.len().min(rx.start + max);
        rx.buf.get_mut(rx.end..limit).unwrap_or_default()
    }

    /// `n` bytes were read into [`Connection::read_buf`].
    pub fn received(&mut self, n: usize) {
        let rx = &mut self.rx;
        let n = n.min(rx.buf.len() - rx.end);
        rx.end += n;
        if n > 0 {
            rx.drained = false;
        }
        self.s.stats.bytes_in += n as u64;
    }

    /// Copies as much of `data` as the query buffer takes (all of it unless at the bound) and
    /// returns how much: [`Connection::read_buf`] and [`Connection::received`] in one.
    pub fn feed(&mut self, mut data: &[u8]) -> usize {
        let mut taken = 0;
        while !data.is_empty() {
            let room = self.read_buf();
            if room.is_empty() {
                break;
            }
            let n = room.len().min(data.len());
            let (now, later) = data.split_at(n);
            if let Some(dst) = room.get_mut(..n) {
                dst.copy_from_slice(now);
            }
            self.received(n);
            taken += n;
            data = later;
        }
        taken
    }

    /// The client closed its sending side: the commands already received still run and
    /// their replies still go out; then the connection is finished.
    pub fn input_closed(&mut self) {
        self.s.read_closed = true;
    }

    /// Whether to read from the socket now: not closing, input not closed, and no bound
    /// reached (unsent output, queued commands, query buffer).
    pub fn wants_read(&self) -> bool {
        let limits = self.limits();
        self.s.closing.is_none()
            && !self.s.read_closed
            && self.s.can_run(&limits)
            && self.rx.end - self.rx.start < limits.max_query_buffer
    }

    /// Whether replies wait to be written.
    pub fn wants_write(&self) -> bool {
        self.s.out_start < self.s.out.len()
    }

    /// Whether buffered input may still hold commands to run (call
    /// [`Connection::process`]).
    pub fn has_input(&self) -> bool {
        !self.rx.drained && self.s.closing.is_none()
    }

    /// Whether [`Connection::process`] would run something now: buffered input not yet
    /// parsed, and no bound (queued commands, unsent output) in the way.
    pub fn can_process(&self) -> bool {
        self.has_input() && !self.s.stalled && self.s.can_run(&self.limits())
    }

    /// Whether the connection is done: closing (QUIT, protocol error) or its input closed
    /// and processed, with every reply written. Drop it then.
    pub fn is_finished(&self) -> bool {
        let done_reading = self.s.closing.is_some() || (self.s.read_closed && self.rx.drained);
        done_reading && self.s.slots.is_empty() && !self.wants_write()
    }

    /// Why the connection is closing, if it is.
    pub fn close_reason(&self) -> Option<Close> {
        self.s.closing
    }

    /// Operations submitted and not yet completed.
    pub fn ops_in_flight(&self) -> usize {
        self.s.in_flight
    }

    /// Commands whose replies are queued (in progress, or done behind one in progress).
    pub fn queued_replies(&self) -> usize {
        self.s.slots.len()
    }

    /// The counters since the last call, reset.
    pub fn take_stats(&mut self) -> ConnStats {
        std::mem::take(&mut self.s.stats)
    }

    /// Runs the buffered commands (at most [`Limits::batch`](crate::Limits::batch)) and
    /// returns how many ran. Stops early at a bound (queued commands, unsent output), after
    /// QUIT, and at a protocol error, whose reply is then the last.
    pub fn process<S: Store>(&mut self, store: &mut S) -> usize {
        let limits = self.limits();
        let mut ran = 0;
        while ran < limits.batch
            && self.s.closing.is_none()
            && !self.s.stalled
            && self.s.can_run(&limits)
            && store.accepting()
        {
            let buf = self.rx.buf.get(self.rx.start..self.rx.end).unwrap_or(&[]);
            match self.rx.parser.parse(buf) {
                Ok(Some(cmd)) => {
                    let used = cmd.consumed();
                    if !cmd.is_empty() {
                        self.s.run(&cmd, store);
                        if self.s.stalled {
                            // Not consumed: it is parsed again once an operation answers.
                            break;
                        }
                        ran += 1;
                    }
                    self.rx.start += used;
                }
                Ok(None) => {
                    let buffered = self.rx.end - self.rx.start;
                    if self.rx.parser.needed(buffered) > limits.max_query_buffer {
                        let msg = format!(
                            "ERR Protocol error: request larger than the query buffer limit of {} bytes",
                            limits.max_query_buffer
                        );
                        self.s.protocol_error(&msg);
                    }
                    self.rx.drained = true;
                    break;
                }
                Err(e) => {
                    self.s.protocol_error(&format!("ERR {e}"));
                    self.rx.drained = true;
                    break;
                }
            }
        }
        self.s.stats.commands += ran as u64;
        self.s.flush();
        ran
    }

    /// The outcome of operation `id`. Fails (changing nothing) if the connection is not
    /// waiting for it.
    pub fn complete(&mut self, id: OpId, outcome: Outcome<'_>) -> Result<(), UnknownOp> {
        self.s.complete(id, outcome)
    }

    /// Reply bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        self.s.out.get(self.s.out_start..).unwrap_or(&[])
    }

    /// `n` bytes of [`Connection::output`] were written.
    pub fn sent(&mut self, n: usize) {
        let s = &mut self.s;
        let n = n.min(s.out.len() - s.out_start);
        s.out_start += n;
        s.stats.bytes_out += n as u64;
        if s.out_start == s.out.len() {
            s.out.clear();
            s.out_start = 0;
            if s.out.capacity() > KEEP_CAPACITY {
                s.out = Vec::new();
            }
        }
    }
}

impl Session {
    /// Whether another command may run: the pipeline and output bounds allow it.
    fn can_run(&self, limits: &Limits) -> bool {
        self.slots.len() < limits.max_pipeline
            && self.out.len() - self.out_start + self.held < limits.max_output_buffer
    }

    fn take_buf(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() > 0 && buf.capacity() <= KEEP_CAPACITY && self.pool.len() < POOL {
            buf.clear();
            self.pool.push(buf);
        }
    }

    /// A reply known at once: written out directly if nothing is queued before it.
    pub(crate) fn reply(&mut self, f: impl FnOnce(&mut Encoder<'_>)) {
        if self.slots.is_empty() {
            f(&mut Encoder::new(&mut self.out, self.proto));
        } else {
            let mut buf = self.take_buf();
            f(&mut Encoder::new(&mut buf, self.proto));
            self.held += buf.len();
            self.slots.push_back(Slot {
                left: 0,
                answered: PartSet::new(0),
                touched: None,
                pending: Pending::Ready,
                buf,
                err: None,
                proto: self.proto,
            });
        }
    }

    /// An error reply (`msg` starts with its code).
    pub(crate) fn error(&mut self, msg: &str) {
        self.reply(|e| e.error(msg));
    }

    /// The last reply of a connection whose stream went wrong.
    fn protocol_error(&mut self, msg: &str) {
        self.error(msg);
        self.closing = Some(Close::ProtocolError);
    }

    /// Queues a command waiting for `parts` operations on the keys `touched` (held until
    /// they answer); returns its sequence number. `init` may write the reply's head (an
    /// array header).
    pub(crate) fn begin(
        &mut self,
        pending: Pending,
        parts: u32,
        touched: Touched,
        init: impl FnOnce(&mut Encoder<'_>),
    ) -> u64 {
        self.order.hold(&touched);
        let seq = self.head_seq + self.slots.len() as u64;
        let mut buf = self.take_buf();
        init(&mut Encoder::new(&mut buf, self.proto));
        self.held += buf.len();
        self.slots.push_back(Slot {
            left: parts,
            answered: PartSet::new(parts),
            touched: Some(touched),
            pending,
            buf,
            err: None,
            proto: self.proto,
        });
        self.in_flight += parts as usize;
        seq
    }

    pub(crate) fn complete(&mut self, id: OpId, outcome: Outcome<'_>) -> Result<(), UnknownOp> {
        let idx = id
            .seq
            .checked_sub(self.head_seq)
            .and_then(|d| usize::try_from(d).ok())
            .ok_or(UnknownOp(id))?;
        let slot = self.slots.get_mut(idx).ok_or(UnknownOp(id))?;
        if slot.left == 0 || !slot.answered.insert(id.part) {
            return Err(UnknownOp(id));
        }
        slot.left -= 1;
        self.in_flight -= 1;
        if let Some(t) = &slot.touched {
            self.order.release(t, id.part);
        }
        // A command waiting for a conflicting operation may run now.
        self.stalled = false;
        let before = slot.buf.len();
        slot.apply(id.part, outcome, &self.shared, &mut self.stats);
        let done = slot.left == 0;
        if done {
            slot.finish();
        }
        // `finish` may replace a partial reply by a shorter error.
        self.held = (self.held + slot.buf.len()).saturating_sub(before);
        if done && idx == 0 {
            self.flush();
        }
        Ok(())
    }

    /// Moves the finished replies at the front of the queue to the output buffer.
    fn flush(&mut self) {
        while self
            .slots
            .front()
            .is_some_and(|s| matches!(s.pending, Pending::Ready))
        {
            let Some(slot) = self.slots.pop_front() else {
                break;
            };
            self.head_seq += 1;
            let mut buf = slot.buf;
            self.held = self.held.saturating_sub(buf.len());
            if self.out_start == self.out.len() {
                // Nothing unsent: the reply's buffer becomes the output buffer (no copy).
                self.out.clear();
                self.out_start = 0;
                std::mem::swap(&mut self.out, &mut buf);
            } else {
                self.out.extend_from_slice(&buf);
            }
            self.recycle(buf);
        }
    }
}

/// The error line for a store's message: its own code if it starts with one (an upper-case
/// word and a blank), else `ERR`.
fn error_line(msg: &str) -> String {
    let has_code = msg
        .split_once(' ')
        .is_some_and(|(w, _)| w.len() >= 2 && w.bytes().all(|b| b.is_ascii_uppercase()));
    if has_code {
        msg.to_string()
    } else {
        format!("ERR {msg}")
    }
}

impl Slot {
    fn enc(&mut self) -> Encoder<'_> {
        Encoder::new(&mut self.buf, self.proto)
    }

    /// Takes one operation's outcome into the reply.
    fn apply(&mut self, part: u32, outcome: Outcome<'_>, shared: &Shared, stats: &mut ConnStats) {
        if let Outcome::Error(msg) = outcome {
            if self.err.is_none() {
                self.err = Some(error_line(msg));
            }
            return;
        }
        match outcome {
            Outcome::Value(_) => stats.keyspace_hits += 1,
            Outcome::NotFound if matches!(self.pending, Pending::Del(_)) => {}
            Outcome::NotFound => stats.keyspace_misses += 1,
            _ => {}
        }
        let proto = self.proto;
        match (&mut self.pending, outcome) {
            (Pending::Get, Outcome::Value(v)) => self.enc().bulk(v),
            (Pending::Get, Outcome::NotFound) => self.enc().null(),
            (Pending::Strlen, Outcome::Value(v)) => self.enc().integer(v.len() as i64),
            (Pending::Strlen, Outcome::NotFound) => self.enc().integer(0),
            (Pending::Type, Outcome::Value(_)) => self.enc().simple("string"),
            (Pending::Type, Outcome::NotFound) => self.enc().simple("none"),
            (Pending::Ttl, Outcome::Value(_)) => self.enc().integer(-1),
            (Pending::Ttl, Outcome::NotFound) => self.enc().integer(-2),
            (Pending::Exists(n), Outcome::Value(_)) => *n += 1,
            (Pending::Exists(_), Outcome::NotFound) => {}
            (Pending::Del(n), Outcome::Deleted) => *n += 1,
            (Pending::Del(_), Outcome::NotFound) => {}
            (Pending::Ok, Outcome::Written) => {}
            (Pending::Set { get }, Outcome::Set { written, old }) => {
                let get = *get;
                let mut e = self.enc();
                match (get, old) {
                    (true, Some(v)) => e.bulk(v),
                    (true, None) => e.null(),
                    (false, _) if written => e.ok(),
                    (false, _) => e.null(),
                }
            }
            (Pending::MGet { next, stash }, o @ (Outcome::Value(_) | Outcome::NotFound)) => {
                let value = match o {
                    Outcome::Value(v) => Some(v),
                    _ => None,
                };
                if part != *next {
                    if part > *next && !stash.iter().any(|(p, _)| *p == part) {
                        stash.push((part, value.map(<[u8]>::to_vec)));
                    }
                    return;
                }
                let mut e = Encoder::new(&mut self.buf, proto);
                match value {
                    Some(v) => e.bulk(v),
                    None => e.null(),
                }
                *next += 1;
                while let Some(i) = stash.iter().position(|(p, _)| *p == *next) {
                    let (_, v) = stash.swap_remove(i);
                    match v {
                        Some(v) => e.bulk(&v),
                        None => e.null(),
                    }
                    *next += 1;
                }
            }
            (Pending::Scan(sc), Outcome::Items { items, more }) => {
                let mut keys: Vec<&[u8]> = Vec::new();
                let mut last: Option<&[u8]> = None;
                let mut past_prefix = false;
                for (k, _) in items {
                    last = Some(k);
                    if !k.starts_with(&sc.prefix) {
                        // Keys come in order from a start ≥ the prefix: none after this one
                        // can match.
                        past_prefix = true;
                        break;
                    }
                    if sc.pattern.as_deref().is_none_or(|p| glob_match(p, k)) {
                        keys.push(k);
                    }
                }
                let max_key = shared.config().limits.max_key_len;
                let resume = match last {
                    Some(k) if more && !past_prefix => successor(k, max_key),
                    _ => None,
                };
                let cursor = match resume {
                    Some(k) => shared.cursors().save(k),
                    None => 0,
                };
                let mut e = Encoder::new(&mut self.buf, proto);
                e.array(2);
                e.bulk_u64(cursor);
                e.array(keys.len());
                keys.iter().for_each(|k| e.bulk(k));
            }
            (_, o) => {
                if self.err.is_none() {
                    let what = match o {
                        Outcome::Value(_) => "a value",
                        Outcome::NotFound => "not found",
                        Outcome::Written => "written",
                        Outcome::Deleted => "deleted",
                        Outcome::Set { .. } => "a conditional set",
                        Outcome::Items { .. } => "scan items",
                        Outcome::Error(_) => "an error",
                    };
                    self.err = Some(format!(
                        "ERR internal error: the store answered this command with {what}"
                    ));
                }
            }
        }
    }

    /// All operations answered: completes the reply.
    fn finish(&mut self) {
        if let Some(msg) = self.err.take() {
            self.buf.clear();
            self.enc().error(&msg);
        } else {
            match self.pending {
                Pending::Exists(n) | Pending::Del(n) => self.enc().integer(n),
                Pending::Ok => self.enc().ok(),
                Pending::MGet { ref stash, .. } if !stash.is_empty() => {
                    self.buf.clear();
                    self.enc()
                        .error("ERR internal error: MGET parts were answered out of range");
                }
                _ => {}
            }
        }
        self.pending = Pending::Ready;
    }
}

#[cfg(test)]
mod tests {
    use super::successor;

    #[test]
    fn successor_is_the_next_key_within_the_length_limit() {
        assert_eq!(successor(b"a", 4), Some(b"a\0".to_vec()));
        assert_eq!(successor(b"abcd", 4), Some(b"abce".to_vec()));
        assert_eq!(successor(b"ab\xff\xff", 4), Some(b"ac".to_vec()));
        assert_eq!(successor(b"\xff\xff", 2), None);
        assert_eq!(successor(b"", 0), None);
    }
}
