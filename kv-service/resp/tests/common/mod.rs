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

#[derive(Default)]
pub struct MemStore {
    pub data: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Answers not yet delivered, in submission order.
    pub pending: Vec<(OpId, Answer)>,
    /// Every operation submitted, as text (for tests that check what was asked).
    pub log: Vec<String>,
    /// Largest page a SCAN answers with (`more` set when cut short).
    pub scan_page: usize,
    /// When set, every operation fails with this message.
    pub fail: Option<String>,
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
        for (id, a) in std::mem::take(&mut self.pending) {
            conn.complete(id, a.outcome()).expect("pending op");
        }
    }

    /// Delivers every pending answer in the order `perm` gives (a permutation seed).
    pub fn deliver_shuffled(&mut self, conn: &mut Connection, seed: u64) {
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

impl Store for MemStore {
    fn submit(&mut self, id: OpId, op: KvOp<'_>) {
        self.log.push(format!("{op:?}"));
        if let Some(msg) = &self.fail {
            self.pending.push((id, Answer::Error(msg.clone())));
            return;
        }
        let answer = match op {
            KvOp::Get { key } => match self.data.get(key) {
                Some(v) => Answer::Value(v.clone()),
                None => Answer::NotFound,
            },
            KvOp::Put { key, value } => {
                self.data.insert(key.to_vec(), value.to_vec());
                Answer::Written
            }
            KvOp::Set {
                key,
                value,
                cond,
                get,
            } => {
                let old = self.data.get(key).cloned();
                let write = match cond {
                    SetCond::Always => true,
                    SetCond::IfAbsent => old.is_none(),
                    SetCond::IfPresent => old.is_some(),
                };
                if write {
                    self.data.insert(key.to_vec(), value.to_vec());
                }
                Answer::Set {
                    written: write,
                    old: if get { old } else { None },
                }
            }
            KvOp::Delete { key } => match self.data.remove(key) {
                Some(_) => Answer::Deleted,
                None => Answer::NotFound,
            },
            KvOp::Scan { start, max } => {
                let take = max.min(self.scan_page);
                let mut items: Vec<Item> = self
                    .data
                    .range(start.to_vec()..)
                    .take(take + 1)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let more = items.len() > take;
                items.truncate(take);
                Answer::Items(items, more)
            }
        };
        self.pending.push((id, answer));
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
    while conn.process(store) > 0 || !store.pending.is_empty() {
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
