//! `kv_resp::Connection`: the whole per-connection state machine (parser, command table,
//! pipeline slots, bounds) behind a small in-memory store that answers out of order.
//!
//! Input: byte 0 picks the completion order (bit 0: newest first, bits 1..: a rotation),
//! byte 1 the feed chunk size, the rest is the client's byte stream.
//! Properties: never panics; every operation the store is handed gets completed and
//! `complete` accepts it exactly once; the output is a sequence of well-formed RESP replies;
//! when the stream ends and everything is answered the connection holds nothing
//! (no operation in flight, no queued reply) and is finished; a connection closed for a
//! protocol error sent an error reply last.
#![no_main]

use std::collections::BTreeMap;

use kv_resp::{
    parse_reply, Close, Config, Connection, Figures, Item, KvOp, Limits, OpId, Outcome,
    ParseLimits, SetCond, Shared, Store, Value,
};
use libfuzzer_sys::fuzz_target;

enum Answer {
    Value(Vec<u8>),
    NotFound,
    Written,
    Deleted,
    Set(bool, Option<Vec<u8>>),
    Items(Vec<Item>, bool),
}

#[derive(Default)]
struct Mem {
    data: BTreeMap<Vec<u8>, Vec<u8>>,
    pending: Vec<(OpId, Answer)>,
}

impl Store for Mem {
    fn submit(&mut self, id: OpId, op: KvOp<'_>) {
        let a = match op {
            KvOp::Get { key } => match self.data.get(key) {
                Some(v) => Answer::Value(v.clone()),
                None => Answer::NotFound,
            },
            KvOp::Put { key, value } => {
                self.data.insert(key.to_vec(), value.to_vec());
                Answer::Written
            }
            KvOp::Set { key, value, cond, get } => {
                let old = self.data.get(key).cloned();
                let write = match cond {
                    SetCond::Always => true,
                    SetCond::IfAbsent => old.is_none(),
                    SetCond::IfPresent => old.is_some(),
                };
                if write {
                    self.data.insert(key.to_vec(), value.to_vec());
                }
                Answer::Set(write, if get { old } else { None })
            }
            KvOp::Delete { key } => match self.data.remove(key) {
                Some(_) => Answer::Deleted,
                None => Answer::NotFound,
            },
            KvOp::Scan { start, max } => {
                assert!(max >= 1);
                let mut items: Vec<Item> = self
                    .data
                    .range(start.to_vec()..)
                    .take(max.min(3) + 1)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                let more = items.len() > max.min(3);
                items.truncate(max.min(3));
                Answer::Items(items, more)
            }
        };
        self.pending.push((id, a));
    }

    fn figures(&self) -> Figures {
        Figures {
            keys: self.data.len() as u64,
            ..Figures::default()
        }
    }
}

fn deliver(conn: &mut Connection, store: &mut Mem, order: u8) {
    let mut p = std::mem::take(&mut store.pending);
    if order & 1 == 1 {
        p.reverse();
    }
    if !p.is_empty() {
        let r = usize::from(order >> 1) % p.len();
        p.rotate_left(r);
    }
    for (id, a) in p {
        let outcome = match &a {
            Answer::Value(v) => Outcome::Value(v),
            Answer::NotFound => Outcome::NotFound,
            Answer::Written => Outcome::Written,
            Answer::Deleted => Outcome::Deleted,
            Answer::Set(written, old) => Outcome::Set {
                written: *written,
                old: old.as_deref(),
            },
            Answer::Items(items, more) => Outcome::Items { items, more: *more },
        };
        conn.complete(id, outcome).expect("the connection waits for every submitted op");
        assert!(conn.complete(id, Outcome::NotFound).is_err(), "completed twice");
    }
}

fuzz_target!(|data: &[u8]| {
    let [order, chunk, stream @ ..] = data else {
        return;
    };
    let config = Config {
        password: None,
        limits: Limits {
            parse: ParseLimits {
                max_args: 32,
                max_bulk_len: 256,
                max_inline_len: 128,
            },
            max_query_buffer: 1024,
            max_output_buffer: 512,
            max_pipeline: 8,
            max_key_len: 64,
            max_value_len: 128,
            max_scan_count: 5,
            batch: 4,
        },
        ..Config::default()
    };
    let mut conn = Connection::new(Shared::new(config));
    let mut store = Mem::default();
    let mut out = Vec::new();
    let mut rest = stream;
    let chunk = usize::from(*chunk) + 1;
    // Feed, run, answer and drain until the stream is in and nothing more happens.
    for _ in 0..100_000 {
        let take = rest.len().min(chunk);
        let n = if conn.wants_read() { conn.feed(&rest[..take]) } else { 0 };
        rest = &rest[n..];
        if rest.is_empty() {
            conn.input_closed();
        }
        let ran = conn.process(&mut store);
        let had_ops = !store.pending.is_empty();
        deliver(&mut conn, &mut store, *order);
        let wrote = conn.output().len();
        out.extend_from_slice(conn.output());
        conn.sent(wrote);
        if conn.is_finished() || (rest.is_empty() && ran == 0 && !had_ops && wrote == 0) {
            break;
        }
    }
    assert_eq!(conn.ops_in_flight(), 0);
    assert_eq!(conn.queued_replies(), 0);
    assert!(conn.is_finished());
    let mut pos = 0;
    let mut last = None;
    while pos < out.len() {
        let (v, n) = parse_reply(&out[pos..])
            .expect("well-formed reply")
            .expect("complete reply");
        pos += n;
        last = Some(v);
    }
    if conn.close_reason() == Some(Close::ProtocolError) {
        assert!(matches!(last, Some(Value::Error(_))));
    }
});
