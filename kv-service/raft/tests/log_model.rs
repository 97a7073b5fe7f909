//! The thread log against a model, under random operations, crashes and power cuts.
//!
//! Property: after a crash or power cut, replay gives back for every shard exactly the
//! state after some prefix of the operations — never less than what the last successful
//! `sync` covered (power cut) or the last write (process crash), never a state that was not
//! reached, never a mix; and the log goes on working from there. Three shards share the log,
//! segments are small (4 KiB) so rotation, checkpoints and the removal of compacted
//! segments happen all the time.

use std::collections::BTreeMap;

use bytes::Bytes;
use kv_raft::raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use kv_raft::{LogOptions, ShardStore, SimDir, SimFs, SyncPolicy, ThreadLog};
use proptest::prelude::*;

const SHARDS: u32 = 3;

#[derive(Clone, Debug)]
enum Op {
    /// Append `n` entries starting `back` entries before the end (a conflicting suffix when
    /// `back > 0`), in the current term or the next.
    Append {
        shard: u32,
        back: u64,
        n: u64,
        next_term: bool,
        size: usize,
    },
    HardState {
        shard: u32,
        next_term: bool,
        vote: u64,
        commit: u8,
    },
    /// Compact to a fraction of the way from the compaction point to the end.
    Compact {
        shard: u32,
        frac: u8,
    },
    Snapshot {
        shard: u32,
        ahead: u64,
    },
    Flush,
    Sync,
    Crash,
    PowerCut,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..SHARDS, 0u64..4, 1u64..6, proptest::bool::weighted(0.2), 0usize..60).prop_map(
            |(shard, back, n, next_term, size)| Op::Append { shard, back, n, next_term, size }
        ),
        3 => (0..SHARDS, proptest::bool::weighted(0.2), 0u64..4, any::<u8>())
            .prop_map(|(shard, next_term, vote, commit)| Op::HardState { shard, next_term, vote, commit }),
        2 => (0..SHARDS, any::<u8>()).prop_map(|(shard, frac)| Op::Compact { shard, frac }),
        1 => (0..SHARDS, 1u64..20).prop_map(|(shard, ahead)| Op::Snapshot { shard, ahead }),
        2 => Just(Op::Flush),
        5 => Just(Op::Sync),
        1 => Just(Op::Crash),
        1 => Just(Op::PowerCut),
    ]
}

/// A shard's log as the model sees it.
#[derive(Clone, Debug, PartialEq, Default)]
struct Model {
    hs: (u64, u64, u64),
    voters: Vec<u64>,
    compacted: (u64, u64),
    entries: Vec<(u64, u64, Vec<u8>)>,
}

impl Model {
    fn last(&self) -> u64 {
        self.entries.last().map_or(self.compacted.0, |e| e.0)
    }

    fn term_of(&self, i: u64) -> u64 {
        if i == self.compacted.0 {
            return self.compacted.1;
        }
        self.entries.iter().find(|e| e.0 == i).map_or(0, |e| e.1)
    }

    fn max_term(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.compacted.1, |e| e.1)
            .max(self.hs.0)
    }
}

fn observe(s: &ShardStore) -> Model {
    Model {
        hs: (
            s.hard_state().term,
            s.hard_state().vote,
            s.hard_state().commit,
        ),
        voters: s.conf_state().voters.clone(),
        compacted: s.compacted(),
        entries: (s.first()..=s.last())
            .filter_map(|i| s.entry(i))
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect(),
    }
}

type World = BTreeMap<u32, Model>;

fn observe_all(stores: &BTreeMap<u32, ShardStore>) -> World {
    stores.iter().map(|(&k, s)| (k, observe(s))).collect()
}

fn options() -> LogOptions {
    LogOptions {
        segment_bytes: 4096,
        tag: 7,
        sync: SyncPolicy::Always,
    }
}

fn open(fs: &SimFs) -> (ThreadLog<SimDir>, BTreeMap<u32, ShardStore>) {
    let (log, rec) = ThreadLog::open(fs.dir("log"), options()).expect("open");
    (log, rec.shards)
}

fn run(seed: u64, ops: &[Op]) -> Result<(), TestCaseError> {
    let fs = SimFs::new(seed);
    let (mut log, _) = open(&fs);
    let mut stores = BTreeMap::new();
    let mut world = World::new();
    for shard in 0..SHARDS {
        let cs = ConfState::from((vec![1, 2, 3], vec![]));
        stores.insert(shard, log.bootstrap(shard, cs).expect("bootstrap"));
        world.insert(
            shard,
            Model {
                voters: vec![1, 2, 3],
                ..Model::default()
            },
        );
    }
    log.sync().expect("sync");
    // States since the last recovery, one per operation; `synced` / `written`: the index
    // of the last one a sync / a write covered.
    let mut history = vec![world.clone()];
    let mut synced = 0;
    let mut written = 0;
    for (step, op) in ops.iter().enumerate() {
        match *op {
            Op::Append {
                shard,
                back,
                n,
                next_term,
                size,
            } => {
                let m = world.get_mut(&shard).expect("shard");
                let start = (m.last() + 1).saturating_sub(back).max(m.compacted.0 + 1);
                let term = m.max_term().max(1) + u64::from(next_term);
                let es: Vec<Entry> = (start..start + n)
                    .map(|i| Entry {
                        index: i,
                        term,
                        data: Bytes::from(vec![(i % 251) as u8; size]),
                        ..Entry::default()
                    })
                    .collect();
                log.append(stores.get_mut(&shard).expect("store"), &es)
                    .expect("append");
                m.entries.retain(|e| e.0 < start);
                m.entries
                    .extend(es.iter().map(|e| (e.index, e.term, e.data.to_vec())));
            }
            Op::HardState {
                shard,
                next_term,
                vote,
                commit,
            } => {
                let m = world.get_mut(&shard).expect("shard");
                let hs = (
                    m.hs.0 + u64::from(next_term),
                    vote,
                    m.last() * u64::from(commit) / 255,
                );
                let h = HardState {
                    term: hs.0,
                    vote: hs.1,
                    commit: hs.2,
                    ..HardState::default()
                };
                log.set_hard_state(stores.get_mut(&shard).expect("store"), &h)
                    .expect("hard state");
                m.hs = hs;
            }
            Op::Compact { shard, frac } => {
                let m = world.get_mut(&shard).expect("shard");
                let span = m.last() - m.compacted.0;
                let index = m.compacted.0 + span * u64::from(frac) / 255;
                log.compact(stores.get_mut(&shard).expect("store"), index)
                    .expect("compact");
                if index > m.compacted.0 {
                    let term = m.term_of(index);
                    m.entries.retain(|e| e.0 > index);
                    m.compacted = (index, term);
                }
            }
            Op::Snapshot { shard, ahead } => {
                let m = world.get_mut(&shard).expect("shard");
                let index = m.last() + ahead;
                let term = m.max_term().max(1);
                let meta = SnapshotMetadata {
                    index,
                    term,
                    conf_state: Some(ConfState::from((vec![1, 2, 3], vec![]))).into(),
                    ..SnapshotMetadata::default()
                };
                log.apply_snapshot(stores.get_mut(&shard).expect("store"), &meta)
                    .expect("snapshot");
                m.entries.clear();
                m.compacted = (index, term);
                m.hs.2 = m.hs.2.max(index);
                m.hs.0 = m.hs.0.max(term);
            }
            Op::Flush => {
                log.flush().expect("flush");
                written = history.len();
            }
            Op::Sync => {
                log.sync().expect("sync");
                written = history.len();
                synced = history.len();
            }
            Op::Crash | Op::PowerCut => {
                let floor = if matches!(op, Op::Crash) {
                    written
                } else {
                    synced
                };
                drop(log);
                if matches!(op, Op::Crash) {
                    fs.crash();
                } else {
                    fs.power_cut();
                }
                let (l, recovered) = open(&fs);
                let got = observe_all(&recovered);
                // history[j]: the state after the j-th operation since the last recovery.
                let candidates = history.get(floor..).unwrap_or_default();
                prop_assert!(
                    candidates.contains(&got),
                    "step {}: {:?} recovered a state that is not between the last {} and now:\n{:#?}",
                    step,
                    op,
                    if matches!(op, Op::Crash) { "write" } else { "sync" },
                    got
                );
                log = l;
                stores = recovered;
                world = got;
                history = vec![];
                synced = 0;
                written = 0;
            }
        }
        prop_assert_eq!(
            &observe_all(&stores),
            &world,
            "step {}: store != model",
            step
        );
        history.push(world.clone());
    }
    log.sync().expect("sync");
    drop(log);
    fs.power_cut();
    let (_log, recovered) = open(&fs);
    prop_assert_eq!(observe_all(&recovered), world, "after a final sync");
    Ok(())
}

proptest! {
    #![proptest_config(testkit::proptest_config(256, "proptest-regressions/log_model.txt"))]

    #[test]
    fn replay_gives_back_a_prefix_no_shorter_than_what_was_synced(
        seed in any::<u64>(),
        ops in proptest::collection::vec(arb_op(), 1..160),
    ) {
        run(seed, &ops)?;
    }
}
