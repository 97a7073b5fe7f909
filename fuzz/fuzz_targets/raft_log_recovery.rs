//! `kv_raft::ThreadLog::open` on a damaged log: recovery reads segments from disk.
//!
//! Input: byte 0 = number of operations (mod 64), then one byte per operation building a
//! valid log of 2 shards on 4 KiB segments (appends, hard states, compactions, syncs), then
//! the rest as (file, offset hi, offset lo, value) quadruples written over the segments.
//!
//! Properties: `open` never panics; if it succeeds, the log takes an append and a sync, and
//! opening it again gives back exactly the shards' state after that sync.
#![no_main]

use bytes::Bytes;
use kv_raft::raft::eraftpb::{ConfState, Entry, HardState};
use kv_raft::{LogOptions, ShardStore, SimFs, ThreadLog};
use libfuzzer_sys::fuzz_target;

fn opts() -> LogOptions {
    LogOptions { segment_bytes: 4096, tag: 1, ..LogOptions::default() }
}

fn state(s: &ShardStore) -> (u64, u64, (u64, u64), Vec<(u64, u64, Vec<u8>)>) {
    let entries = (s.first()..=s.last())
        .filter_map(|i| s.entry(i))
        .map(|e| (e.index, e.term, e.data.to_vec()))
        .collect();
    (s.hard_state().term, s.hard_state().commit, s.compacted(), entries)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 64) as usize;
    let (ops, flips) = rest.split_at(n.min(rest.len()));
    let fs = SimFs::new(1);
    let (mut log, _) = ThreadLog::open(fs.dir("t"), opts()).unwrap();
    let cs = ConfState::from((vec![1, 2, 3], vec![]));
    let mut stores = [log.bootstrap(0, cs.clone()).unwrap(), log.bootstrap(1, cs).unwrap()];
    for &op in ops {
        let s = &mut stores[(op & 1) as usize];
        match op >> 5 {
            0..=3 => {
                let start = s.last() + 1 - u64::from(op >> 1 & 3).min(s.last() + 1 - s.first());
                let es: Vec<Entry> = (start..start + u64::from(op >> 3 & 3) + 1)
                    .map(|i| Entry {
                        index: i,
                        term: 1 + u64::from(op >> 6),
                        data: Bytes::from(vec![op; 40]),
                        ..Entry::default()
                    })
                    .collect();
                log.append(s, &es).unwrap();
            }
            4 => {
                let hs = HardState { term: 2, vote: 1, commit: s.last(), ..HardState::default() };
                log.set_hard_state(s, &hs).unwrap();
            }
            5 => {
                let to = s.compacted().0 + (s.last() - s.compacted().0) / 2;
                log.compact(s, to).unwrap();
            }
            _ => log.sync().unwrap(),
        }
    }
    log.sync().unwrap();
    drop(log);
    let files = fs.files();
    for q in flips.chunks_exact(4) {
        let Some((name, len)) = files.get(q[0] as usize % files.len().max(1)) else {
            break;
        };
        let off = (usize::from(q[1]) << 8 | usize::from(q[2])) % (*len as usize).max(1);
        fs.corrupt(name, off, &[q[3]]);
    }
    let Ok((mut log, rec)) = ThreadLog::open(fs.dir("t"), opts()) else {
        return;
    };
    let mut shards = rec.shards;
    let Some(s) = shards.values_mut().next() else {
        return;
    };
    let e = Entry { index: s.last() + 1, term: s.hard_state().term.max(1), ..Entry::default() };
    log.append(s, &[e]).unwrap();
    log.sync().unwrap();
    let want: Vec<_> = shards.values().map(state).collect();
    drop(log);
    fs.power_cut();
    let (_log, rec) = ThreadLog::open(fs.dir("t"), opts()).expect("a log that opened and synced opens again");
    let got: Vec<_> = rec.shards.values().map(state).collect();
    assert_eq!(got, want);
});
