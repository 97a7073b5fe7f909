//! A store for tests: a `BTreeMap` that applies every operation when it is submitted (so
//! the effects are in submission order, as the real store guarantees per key) but answers
//! only when the test delivers the answers, in whatever order the test chooses.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;

use kv_resp::{
    parse_reply, Config, Connection, Figures, Item, KvOp, OpId, Outcome, SetCond, Shared, Store,
    Value,
};

/// An owned [`Outcome`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Value(Vec<u8>),
    NotFound,
    Written,
    Deleted,
    Set { written: bool, old: Option<Vec<u8>> },
    Items(Vec<Item>, bool),
    Error(String),
}

impl Answer {
    pub fn outcome(&self) -> Outcome<'_> {
        match self {
            Answer::Value(v) => Outcome::Value(v),
            Answer::NotFound => Outcome::NotFound,
            Answer::Written => Outcome::Written,
            Answer::Deleted => Outcome::Deleted,
            Answer::Set { written, old } => Outcome::Set {
                written: *written,
                old: old.as_deref(),
            },
            Answer::Items(items, more) => Outcome::Items { items, more: *more },
            Answer::Error(e) => Outcome::Error(e),
        }
    }
}

/// An owned [`KvOp`], kept by a deferred store until it runs.
#[derive(Clone, Debug)]
pub enum OwnedOp {
    Get(Vec<u8>),
    Put(Vec<u8>, Vec<u8>),
    Set(Vec<u8>, Vec<u8>, SetCond, bool),
    Delete(Vec<u8>),
    Scan(Vec<u8>, usize),
}

impl OwnedOp {
    fn of(op: KvOp<'_>) -> Self {
        match op {
            KvOp::Get { key } => OwnedOp::Get(key.to_vec()),
            KvOp::Put { key, value } => OwnedOp::Put(key.to_vec(), value.to_vec()),
            KvOp::Set {
                key,
                value,
                cond,
                get,
            } => OwnedOp::Set(key.to_vec(), value.to_vec(), cond, get),
            KvOp::Delete { key } => OwnedOp::Delete(key.to_vec()),
            KvOp::Scan { start, max } => OwnedOp::Scan(start.to_vec(), max),
        }
    }

    /// The key of a write (writes of one key run in submission order).
    pub fn written_key(&self) -> Option<&[u8]> {
        match self {
            OwnedOp::Put(k, _) | OwnedOp::Set(k, ..) | OwnedOp::Delete(k) => Some(k),
            _ => None,
        }
    }
}

#[derive(Default)]
pub struct MemStore {
    pub data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Answers not yet delivered, in submission order.
    pub pending: Vec<(OpId, Answer)>,
    /// Deferred mode: operations run when delivered, not when submitted (in submission
    /// order).
    pub deferred: bool,
    /// Deferred mode: the operations not yet run.
    pub queued: Vec<(OpId, OwnedOp)>,
    /// Every operation submitted, as text (for tests that check what was asked).
    pub log: Vec<String>,
    /// Largest page a SCAN answers with (`more` set when cut short).
    pub scan_page: usize,
    /// When set, every operation fails with this message.
    pub fail: Option<String>,
    /// Answer GETs at once through [`Store::get_now`] (as the server does for cached keys),
    /// except for a key with a write not yet run.
    pub now: bool,
    /// GETs answered through `get_now`.
    pub now_answered: usize,
}

impl MemStore {
    pub fn new() -> Self {
        Self {
            scan_page: usize::MAX,
            ..Self::default()
        }
    }

    /// Delivers every pending answer, in submission order.
    pub fn deliver_all(&mut self, conn: &mut Connection) {
        for (id, op) in std::mem::take(&mut self.queued) {
            let a = self.apply(&op);
            conn.complete(id, a.outcome()).expect("pending op");
        }
        for (id, a) in std::mem::take(&mut self.pending) {
            conn.complete(id, a.outcome()).expect("pending op");
        }
    }

    /// Delivers every pending answer in an order drawn from `seed`. In deferred mode each
    /// operation runs when delivered, in an order that keeps the writes of one key in
    /// submission order (what the real store guarantees) and nothing else: a read may run
    /// before or after a write of its key submitted earlier.
    pub fn deliver_shuffled(&mut self, conn: &mut Connection, seed: u64) {
        if self.deferred {
            let mut x = seed | 1;
            while !self.queued.is_empty() {
                let eligible: Vec<usize> = (0..self.queued.len())
                    .filter(|&i| match self.queued[i].1.written_key() {
                        None => true,
                        Some(k) => !self.queued[..i]
                            .iter()
                            .any(|(_, o)| o.written_key() == Some(k)),
                    })
                    .collect();
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pick = eligible[(x % eligible.len() as u64) as usize];
                let (id, op) = self.queued.remove(pick);
                let a = self.apply(&op);
                conn.complete(id, a.outcome()).expect("pending op");
            }
            return;
        }
        let mut p = std::mem::take(&mut self.pending);
        // Fisher-Yates with a small xorshift: deterministic per seed.
        let mut x = seed | 1;
        for i in (1..p.len()).rev() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            p.swap(i, (x % (i as u64 + 1)) as usize);
        }
        for (id, a) in p {
            conn.complete(id, a.outcome()).expect("pending op");
        }
    }
}

impl MemStore {
    fn apply(&mut self, op: &OwnedOp) -> Answer {
        if let Some(msg) = &self.fail {
            return Answer::Error(msg.clone());
        }
        match op {
            OwnedOp::Get(key) => match self.data.get(key) {
                Some(v) => Answer::Value(v.clone()),
                None => Answer::NotFound,
            },
            OwnedOp::Put(key, value) => {
                self.data.insert(key.clone(), value.clone());
                Answer::Written
            }
            OwnedOp::Set(key, value, cond, get) => {
                let old = self.data.get(key).cloned();
                let write = match cond {
                    SetCond::Always => true,
                    SetCond::IfAbsent => old.is_none(),
                    SetCond::IfPresent => old.is_some(),
                };
                if write {
                    self.data.insert(key.clone(), value.clone());
                }
                Answer::Set {
                    written: write,
                    old: if *get { old } else { None },
                }
            }
            OwnedOp::Delete(key) => match self.data.remove(key) {
                Some(_) => Answer::Deleted,
                None => Answer::NotFound,
            },
            OwnedOp::Scan(start, max) => {
                let take = (*max).min(self.scan_page);
                let mut items: Vec<Item> = self
                    .data
                    .range(start.clone()..)
                    .take(take + 1)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let more = items.len() > take;
                items.truncate(take);
                Answer::Items(items, more)
            }
        }
    }
}

impl Store for MemStore {
    fn submit(&mut self, id: OpId, op: KvOp<'_>) {
        self.log.push(format!("{op:?}"));
        let op = OwnedOp::of(op);
        if self.deferred {
            self.queued.push((id, op));
            return;
        }
        let answer = self.apply(&op);
        self.pending.push((id, answer));
    }

    fn get_now(&mut self, key: &[u8]) -> Option<Outcome<'_>> {
        let writing = self
            .queued
            .iter()
            .any(|(_, o)| o.written_key() == Some(key));
        if !self.now || self.fail.is_some() || writing {
            return None;
        }
        self.now_answered += 1;
        Some(match self.data.get(key) {
            Some(v) => Outcome::Value(v),
            None => Outcome::NotFound,
        })
    }

    fn figures(&self) -> Figures {
        Figures {
            keys: self.data.len() as u64,
            ..Figures::default()
        }
    }
}

/// A connection with the default configuration (or `config`).
pub fn conn() -> Connection {
    Connection::new(Shared::new(Config::default()))
}

pub fn conn_with(config: Config) -> (Connection, Arc<Shared>) {
    let shared = Shared::new(config);
    (Connection::new(shared.clone()), shared)
}

/// A request as RESP.
pub fn req(args: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    kv_resp::encode_request(args, &mut out);
    out
}

/// Splits a command line on blanks into a request.
pub fn cmd(line: &str) -> Vec<u8> {
    let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
    req(&args)
}

/// Takes and parses every reply in the connection's output.
pub fn replies(conn: &mut Connection) -> Vec<Value> {
    let out = conn.output().to_vec();
    conn.sent(out.len());
    let mut pos = 0;
    let mut v = Vec::new();
    while pos < out.len() {
        let (r, n) = parse_reply(&out[pos..])
            .expect("valid RESP")
            .expect("complete reply");
        v.push(r);
        pos += n;
    }
    v
}

/// Runs `input` to completion (answers delivered in order) and returns the replies.
pub fn run(conn: &mut Connection, store: &mut MemStore, input: &[u8]) -> Vec<Value> {
    assert_eq!(conn.feed(input), input.len());
    while conn.process(store) > 0 || !store.pending.is_empty() || !store.queued.is_empty() {
        store.deliver_all(conn);
    }
    replies(conn)
}

pub fn bulk(s: &str) -> Value {
    Value::Bulk(s.as_bytes().to_vec())
}

pub fn simple(s: &str) -> Value {
    Value::Simple(s.as_bytes().to_vec())
}

pub fn err(s: &str) -> Value {
    Value::Error(s.as_bytes().to_vec())
}
