//! The thread log against its promises: what `sync` returned for survives a power cut,
//! replay gives back exactly a prefix of what was recorded, torn tails are cut and never
//! come back, damage to durable data is refused, segments go once compacted, and
//! raft-rs's `Storage` reads what the log holds.

use std::collections::BTreeMap;

use bytes::Bytes;
use kv_raft::raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use kv_raft::raft::{GetEntriesContext, Storage, StorageError};
use kv_raft::{
    Fault, FsDir, LogDir, LogError, LogOptions, ShardStore, SimFs, StoreError, SyncPolicy,
    ThreadLog,
};

fn opts(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        tag: 0xfeed,
        sync: SyncPolicy::Always,
    }
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState::from((ids.to_vec(), vec![]))
}

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: Bytes::copy_from_slice(data),
        ..Entry::default()
    }
}

fn entries(from: u64, to: u64, term: u64, tag: &str) -> Vec<Entry> {
    (from..=to)
        .map(|i| entry(i, term, format!("{tag}-{i}").as_bytes()))
        .collect()
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..HardState::default()
    }
}

/// Everything observable of a shard's store.
#[derive(Clone, Debug, PartialEq)]
struct State {
    hs: (u64, u64, u64),
    voters: Vec<u64>,
    compacted: (u64, u64),
    entries: Vec<(u64, u64, Vec<u8>)>,
}

fn state(s: &ShardStore) -> State {
    State {
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

fn states(shards: &BTreeMap<u32, ShardStore>) -> BTreeMap<u32, State> {
    shards.iter().map(|(&k, s)| (k, state(s))).collect()
}

fn reopen(fs: &SimFs, o: LogOptions) -> (ThreadLog<kv_raft::SimDir>, BTreeMap<u32, ShardStore>) {
    let (log, rec) = ThreadLog::open(fs.dir("t0"), o).unwrap();
    (log, rec.shards)
}

#[test]
fn a_synced_log_survives_a_power_cut_whole() {
    let fs = SimFs::new(1);
    let (mut log, rec) = ThreadLog::open(fs.dir("t0"), opts(1 << 20)).unwrap();
    assert!(rec.shards.is_empty());
    let mut a = log.bootstrap(1, voters(&[1, 2, 3])).unwrap();
    let mut b = log.bootstrap(2, voters(&[1, 2, 3])).unwrap();
    log.append(&mut a, &entries(1, 5, 1, "a")).unwrap();
    log.append(&mut b, &entries(1, 3, 2, "b")).unwrap();
    log.set_hard_state(&mut a, &hs(1, 1, 4)).unwrap();
    log.set_hard_state(&mut b, &hs(2, 3, 2)).unwrap();
    assert!(log.has_pending());
    let before = fs.stats();
    log.sync().unwrap();
    // Group commit: one write and one fdatasync for both shards' records.
    assert_eq!(fs.stats().writes - before.writes, 1);
    assert_eq!(fs.stats().syncs - before.syncs, 1);
    assert!(!log.has_pending());
    let want: BTreeMap<u32, State> = [(1, state(&a)), (2, state(&b))].into();
    drop(log);
    fs.power_cut();
    let (_log, shards) = reopen(&fs, opts(1 << 20));
    assert_eq!(states(&shards), want);
    assert_eq!(shards[&1].last(), 5);
    assert_eq!(shards[&1].hard_state().commit, 4);
}

#[test]
fn a_conflicting_suffix_replaces_the_old_one_on_replay_too() {
    let fs = SimFs::new(2);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(1 << 20)).unwrap();
    let mut s = log.bootstrap(0, voters(&[1])).unwrap();
    log.append(&mut s, &entries(1, 10, 1, "old")).unwrap();
    log.sync().unwrap();
    log.append(&mut s, &entries(6, 8, 2, "new")).unwrap();
    log.sync().unwrap();
    assert_eq!(s.last(), 8);
    assert_eq!(s.term_of(5), Some(1));
    assert_eq!(s.term_of(6), Some(2));
    let want = state(&s);
    drop(log);
    fs.crash();
    let (_log, shards) = reopen(&fs, opts(1 << 20));
    assert_eq!(state(&shards[&0]), want);
}

#[test]
fn unsynced_records_may_be_lost_but_never_half_applied() {
    // Over many seeds: after a power cut, each shard is at a record boundary between what
    // was synced and what was recorded.
    for seed in testkit::seeds(&[3, 4, 5, 6, 7, 8, 9, 10]) {
        let fs = SimFs::new(seed);
        let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(1 << 20)).unwrap();
        let mut s = log.bootstrap(0, voters(&[1])).unwrap();
        log.append(&mut s, &entries(1, 3, 1, "synced")).unwrap();
        log.sync().unwrap();
        let synced = state(&s);
        let mut later = vec![];
        for i in 4..40 {
            log.append(&mut s, &[entry(i, 1, &[b'x'; 100])]).unwrap();
            later.push(state(&s));
        }
        // Written, not synced: power may cut at any sector.
        log.flush().unwrap();
        drop(log);
        fs.power_cut();
        let (_log, shards) = reopen(&fs, opts(1 << 20));
        let got = state(&shards[&0]);
        assert!(
            got == synced || later.contains(&got),
            "seed {seed}: recovered {} entries, not a record boundary",
            got.entries.len()
        );
    }
}

#[test]
fn a_torn_tail_is_cut_and_never_comes_back() {
    for seed in testkit::seeds(&[11, 12, 13, 14, 15, 16]) {
        let fs = SimFs::new(seed);
        let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(1 << 16)).unwrap();
        let mut s = log.bootstrap(0, voters(&[1])).unwrap();
        log.append(&mut s, &entries(1, 2, 1, "keep")).unwrap();
        log.sync().unwrap();
        // Term-1 entries 3..30 written but not synced, then power lost.
        log.append(&mut s, &entries(3, 30, 1, "torn")).unwrap();
        log.flush().unwrap();
        drop(log);
        fs.power_cut();
        let (mut log, mut shards) = reopen(&fs, opts(1 << 16));
        let mut s = shards.remove(&0).unwrap();
        let kept = s.last();
        assert!((2..=30).contains(&kept), "seed {seed}: {kept}");
        // A new term overwrites from 3 with fewer, shorter entries, synced.
        log.append(&mut s, &[entry(3, 2, b"n")]).unwrap();
        log.sync().unwrap();
        let want = state(&s);
        drop(log);
        fs.power_cut();
        let (_log, shards) = reopen(&fs, opts(1 << 16));
        // Nothing of the torn term-1 entries after 3 resurfaced.
        assert_eq!(state(&shards[&0]), want, "seed {seed}");
        assert_eq!(shards[&0].last(), 3);
    }
}

#[test]
fn segments_rotate_and_go_once_every_shard_compacted_past_them() {
    let fs = SimFs::new(20);
    let o = opts(4096);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), o.clone()).unwrap();
    let mut a = log.bootstrap(1, voters(&[1])).unwrap();
    let mut b = log.bootstrap(2, voters(&[1])).unwrap();
    let mut next = 1;
    // ~60 KiB of entries over 4 KiB segments.
    for round in 0..40u64 {
        let es: Vec<Entry> = (next..next + 5)
            .map(|i| entry(i, 1, &[round as u8; 150]))
            .collect();
        log.append(&mut a, &es).unwrap();
        log.append(&mut b, &es).unwrap();
        log.set_hard_state(&mut a, &hs(1, 1, next + 4)).unwrap();
        log.sync().unwrap();
        next += 5;
    }
    let many = log.segments();
    assert!(many > 10, "{many} segments");
    assert_eq!(log.stats().segments_removed, 0);
    // Shard 1 compacts everything; shard 2 nothing: every segment still holds entries of 2.
    let end = a.last();
    log.compact(&mut a, end).unwrap();
    log.sync().unwrap();
    assert_eq!(log.segments(), many);
    // Shard 2 compacts half: the older half of the segments goes.
    let half = b.last() / 2;
    log.compact(&mut b, half).unwrap();
    log.sync().unwrap();
    let after = log.segments();
    assert!(after < many && after > 1, "{many} -> {after}");
    assert!(log.stats().segments_removed > 0);
    let on_disk = fs.files().len();
    assert_eq!(on_disk, after, "{:?}", fs.files());
    let want = [(1, state(&a)), (2, state(&b))].into();
    drop(log);
    fs.power_cut();
    let (_log, shards) = reopen(&fs, o);
    assert_eq!(states(&shards), want);
    assert_eq!(shards[&2].first(), half + 1);
    assert_eq!(shards[&1].first(), shards[&1].last() + 1);
    assert_eq!(shards[&1].term_of(shards[&1].last()), Some(1));
}

#[test]
fn removed_segments_that_come_back_after_a_power_cut_change_nothing() {
    // The directory sync after removing compacted segments fails, then power is lost: the
    // removed segments may reappear, older than the checkpoints that superseded them.
    let mut came_back = 0;
    for seed in testkit::seeds(&[30, 31, 32, 33]) {
        let fs = SimFs::new(seed);
        let o = opts(4096);
        let (mut log, _) = ThreadLog::open(fs.dir("t0"), o.clone()).unwrap();
        let mut s = log.bootstrap(0, voters(&[1])).unwrap();
        for i in 1..=80 {
            log.append(&mut s, &[entry(i, 1 + i / 20, &[i as u8; 120])])
                .unwrap();
            log.sync().unwrap();
        }
        // A new term rewrites the tail, then everything below 70 is compacted.
        log.append(&mut s, &entries(60, 75, 9, "new")).unwrap();
        log.compact(&mut s, 70).unwrap();
        fs.fail_dir_sync(1);
        log.sync().unwrap();
        assert!(log.stats().segments_removed > 0);
        let kept = log.segments();
        let want = state(&s);
        drop(log);
        fs.power_cut();
        came_back += usize::from(fs.files().len() > kept);
        let (_log, shards) = reopen(&fs, o);
        assert_eq!(state(&shards[&0]), want, "seed {seed}");
    }
    assert!(came_back > 0, "no seed brought a removed segment back");
}

#[test]
fn a_snapshot_replaces_the_log() {
    let fs = SimFs::new(21);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(1 << 20)).unwrap();
    let mut s = log.bootstrap(0, voters(&[1, 2, 3])).unwrap();
    log.append(&mut s, &entries(1, 4, 1, "x")).unwrap();
    let meta = SnapshotMetadata {
        index: 50,
        term: 3,
        conf_state: Some(voters(&[1, 2, 3])).into(),
        ..SnapshotMetadata::default()
    };
    log.apply_snapshot(&mut s, &meta).unwrap();
    log.append(&mut s, &entries(51, 52, 3, "y")).unwrap();
    log.sync().unwrap();
    assert_eq!((s.first(), s.last(), s.hard_state().commit), (51, 52, 50));
    assert_eq!(s.term(50).unwrap(), 3);
    let want = state(&s);
    drop(log);
    fs.power_cut();
    let (_log, shards) = reopen(&fs, opts(1 << 20));
    assert_eq!(state(&shards[&0]), want);
}

#[test]
fn damage_to_a_sealed_segment_is_refused() {
    let fs = SimFs::new(22);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(4096)).unwrap();
    let mut s = log.bootstrap(0, voters(&[1])).unwrap();
    for i in 1..=60 {
        log.append(&mut s, &[entry(i, 1, &[7; 100])]).unwrap();
        log.sync().unwrap();
    }
    assert!(log.segments() >= 2);
    drop(log);
    let first = fs.files()[0].0.clone();
    fs.corrupt(&first, 300, b"rot");
    match ThreadLog::open(fs.dir("t0"), opts(4096)) {
        Err(LogError::Corrupt { segment: 1, .. }) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn another_owners_log_is_refused() {
    let fs = SimFs::new(23);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(1 << 20)).unwrap();
    log.bootstrap(0, voters(&[1])).unwrap();
    log.sync().unwrap();
    drop(log);
    let mut other = opts(1 << 20);
    other.tag = 0xbeef;
    match ThreadLog::open(fs.dir("t0"), other) {
        Err(e @ LogError::TagMismatch { .. }) => assert!(e.to_string().contains("0xfeed")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_write_or_sync_stops_the_log_and_a_restart_recovers_what_was_synced() {
    for fault in [
        None,
        Some(Fault::Eio),
        Some(Fault::Torn),
        Some(Fault::NoSpace),
    ] {
        let fs = SimFs::new(24);
        let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(1 << 20)).unwrap();
        let mut s = log.bootstrap(0, voters(&[1])).unwrap();
        log.append(&mut s, &entries(1, 3, 1, "ok")).unwrap();
        log.sync().unwrap();
        let synced = state(&s);
        match fault {
            Some(f) => fs.fail_write(1, f),
            None => fs.fail_sync(1),
        }
        log.append(&mut s, &entries(4, 6, 1, "lost")).unwrap();
        assert!(matches!(log.sync(), Err(LogError::Io { .. })), "{fault:?}");
        assert!(log.is_failed());
        // Nothing more is accepted: a later "success" could not be trusted.
        assert!(matches!(log.sync(), Err(LogError::Failed(_))));
        assert!(matches!(
            log.append(&mut s, &entries(7, 7, 1, "x")),
            Err(LogError::Failed(_))
        ));
        drop(log);
        fs.power_cut();
        let (_log, shards) = reopen(&fs, opts(1 << 20));
        let got = state(&shards[&0]);
        assert!(
            got.entries.len() == 3 || got.entries.len() == 6,
            "{fault:?}"
        );
        assert_eq!(got.entries[..3], synced.entries[..], "{fault:?}");
    }
}

#[test]
fn a_segment_whose_creation_was_cut_short_is_rewritten() {
    let fs = SimFs::new(25);
    let o = opts(4096);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), o.clone()).unwrap();
    let mut s = log.bootstrap(0, voters(&[1])).unwrap();
    let mut i = 1;
    let mut before = state(&s);
    while log.segments() < 2 {
        before = state(&s);
        log.append(&mut s, &[entry(i, 1, &[1; 200])]).unwrap();
        log.sync().unwrap();
        i += 1;
    }
    drop(log);
    let last = fs.files().last().unwrap().0.clone();
    // A damaged header in front of records is damage, not an interrupted creation.
    fs.corrupt(&last, 0, b"XX");
    assert!(matches!(
        ThreadLog::open(fs.dir("t0"), o.clone()),
        Err(LogError::Corrupt { segment: 2, .. })
    ));
    // Power lost while the next segment was being set up: its header and checkpoint are
    // written together, and a sector of the checkpoint did not make it.
    let img = fs.live_image(&last).unwrap();
    let mut cut = img.clone();
    cut[60..].fill(0);
    fs.corrupt(&last, 0, &cut);
    let (log, shards) = reopen(&fs, o.clone());
    assert_eq!(state(&shards[&0]), before);
    drop((log, shards));
    // Or its header did not.
    fs.corrupt(&last, 0, &img);
    fs.corrupt(&last, 0, &[0; 4096]);
    let (mut log, shards) = reopen(&fs, o.clone());
    assert_eq!(state(&shards[&0]), before);
    let mut s = shards.into_values().next().unwrap();
    log.append(&mut s, &[entry(i - 1, 1, b"after")]).unwrap();
    log.sync().unwrap();
    let want = state(&s);
    drop(log);
    fs.power_cut();
    let (_log, shards) = reopen(&fs, o);
    assert_eq!(state(&shards[&0]), want);
}

#[test]
fn bad_changes_are_errors_not_panics() {
    let fs = SimFs::new(26);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(4096)).unwrap();
    let mut s = log.bootstrap(0, voters(&[1])).unwrap();
    assert!(matches!(
        log.bootstrap(0, voters(&[1])),
        Err(LogError::ShardExists(0))
    ));
    log.append(&mut s, &entries(1, 3, 1, "a")).unwrap();
    // A gap, and non-consecutive entries.
    assert!(matches!(
        log.append(&mut s, &entries(5, 6, 1, "gap")),
        Err(LogError::Store(StoreError::NotContiguous { .. }))
    ));
    assert!(matches!(
        log.append(&mut s, &[entry(4, 1, b""), entry(6, 1, b"")]),
        Err(LogError::Store(StoreError::NotContiguous { .. }))
    ));
    assert!(matches!(
        log.compact(&mut s, 9),
        Err(LogError::Store(StoreError::CompactPastEnd { .. }))
    ));
    log.compact(&mut s, 2).unwrap();
    assert!(matches!(
        log.append(&mut s, &entries(2, 2, 1, "compacted")),
        Err(LogError::Store(StoreError::NotContiguous { .. }))
    ));
    assert!(matches!(
        log.append(&mut s, &[entry(4, 1, &[0; 2000])]),
        Err(LogError::EntryTooLarge { .. })
    ));
    // A store of another log.
    let fs2 = SimFs::new(1);
    let (mut other, _) = ThreadLog::open(fs2.dir("t0"), opts(4096)).unwrap();
    let mut foreign = other.bootstrap(9, voters(&[1])).unwrap();
    assert!(matches!(
        log.append(&mut foreign, &entries(1, 1, 1, "f")),
        Err(LogError::UnknownShard(9))
    ));
    assert!(matches!(
        ThreadLog::open(fs.dir("t1"), opts(100)),
        Err(LogError::Config(_))
    ));
    // None of that reached the log or the store.
    assert_eq!((s.first(), s.last()), (3, 3));
    log.sync().unwrap();
}

#[test]
fn storage_reads_what_the_log_holds() {
    let fs = SimFs::new(27);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(1 << 20)).unwrap();
    let mut s = log.bootstrap(0, voters(&[1, 2])).unwrap();
    log.append(&mut s, &entries(1, 10, 2, "e")).unwrap();
    log.compact(&mut s, 3).unwrap();
    log.set_hard_state(&mut s, &hs(2, 1, 7)).unwrap();
    let st = s.initial_state().unwrap();
    assert_eq!(st.hard_state.commit, 7);
    assert_eq!(st.conf_state.voters, vec![1, 2]);
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (4, 10));
    assert_eq!(s.term(3).unwrap(), 2);
    assert_eq!(
        s.term(2),
        Err(kv_raft::raft::Error::Store(StorageError::Compacted))
    );
    assert!(s.term(11).is_err());
    let all = s
        .entries(4, 11, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.index).collect::<Vec<_>>(),
        (4..=10).collect::<Vec<_>>()
    );
    // max_size: at least one entry, then as many as fit.
    let one = s
        .entries(4, 11, Some(0), GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(one.len(), 1);
    let size = {
        use protobuf::Message as _;
        u64::from(all[0].compute_size())
    };
    let three = s
        .entries(4, 11, Some(3 * size), GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(three.len(), 3);
    assert_eq!(
        s.entries(2, 5, None, GetEntriesContext::empty(false)),
        Err(kv_raft::raft::Error::Store(StorageError::Compacted))
    );
    assert!(s
        .entries(4, 12, None, GetEntriesContext::empty(false))
        .is_err());
    // Snapshots: unavailable until the owner provides one recent enough.
    assert_eq!(
        s.snapshot(5, 2),
        Err(kv_raft::raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    );
    assert_eq!(s.snapshot_wanted(), Some(5));
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 7;
    snap.mut_metadata().term = 2;
    snap.data = Bytes::from_static(b"image");
    s.set_snapshot(snap.clone());
    assert_eq!(s.snapshot_wanted(), None);
    assert_eq!(s.snapshot(5, 2).unwrap(), snap);
    assert!(s.snapshot(8, 2).is_err());
    assert_eq!(s.snapshot_wanted(), Some(8));
    // One older than the compaction point is never handed out.
    log.compact(&mut s, 8).unwrap();
    s.set_snapshot(snap);
    assert!(s.snapshot(0, 2).is_err());
    assert_eq!(s.snapshot_wanted(), Some(8));
}

#[test]
fn a_state_machine_ahead_of_the_log_is_recorded_as_a_snapshot() {
    let fs = SimFs::new(29);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), opts(1 << 20)).unwrap();
    let mut s = log.bootstrap(0, voters(&[1, 2, 3])).unwrap();
    log.append(&mut s, &entries(1, 10, 2, "e")).unwrap();
    log.set_hard_state(&mut s, &hs(2, 1, 6)).unwrap();
    // Applied up to 8 (committed, but the hard state saying so was not synced).
    log.align_with_state_machine(&mut s, 8, 2).unwrap();
    assert_eq!(
        (s.compacted(), s.last(), s.hard_state().commit),
        ((0, 0), 10, 8)
    );
    // Applied a snapshot at 40 that the log never heard of.
    log.align_with_state_machine(&mut s, 40, 5).unwrap();
    assert_eq!(
        (s.compacted(), s.last(), s.hard_state().commit),
        ((40, 5), 40, 40)
    );
    assert_eq!(s.term(40).unwrap(), 5);
    // Nothing to do when they agree.
    log.align_with_state_machine(&mut s, 40, 5).unwrap();
    log.append(&mut s, &entries(41, 45, 5, "f")).unwrap();
    log.compact(&mut s, 43).unwrap();
    assert!(matches!(
        log.align_with_state_machine(&mut s, 42, 5),
        Err(LogError::StateMachineBehind {
            applied: 42,
            compacted: 43,
            ..
        })
    ));
    log.sync().unwrap();
    let want = state(&s);
    drop(log);
    fs.power_cut();
    let (_log, shards) = reopen(&fs, opts(1 << 20));
    assert_eq!(state(&shards[&0]), want);
}

#[test]
fn never_sync_writes_without_fdatasync_and_survives_a_process_crash() {
    let fs = SimFs::new(28);
    let mut o = opts(1 << 20);
    o.sync = SyncPolicy::Never;
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), o.clone()).unwrap();
    let mut s = log.bootstrap(0, voters(&[1])).unwrap();
    let syncs = fs.stats().syncs;
    for i in 1..=20 {
        log.append(&mut s, &[entry(i, 1, b"v")]).unwrap();
        log.sync().unwrap();
    }
    assert_eq!(fs.stats().syncs, syncs, "no fdatasync in Never mode");
    let want = state(&s);
    drop(log);
    fs.crash();
    let (_log, shards) = reopen(&fs, o);
    assert_eq!(state(&shards[&0]), want);
}

#[test]
fn a_real_directory_round_trips_and_cuts_a_torn_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("raft").join("t0");
    let o = opts(1 << 16);
    let (mut log, _) = ThreadLog::open(FsDir::open(&path).unwrap(), o.clone()).unwrap();
    let mut s = log.bootstrap(3, voters(&[1, 2, 3])).unwrap();
    log.append(&mut s, &entries(1, 50, 4, "disk")).unwrap();
    log.set_hard_state(&mut s, &hs(4, 2, 40)).unwrap();
    log.sync().unwrap();
    let want = state(&s);
    drop(log);
    // Garbage where the next record would go: a torn write.
    let dir = FsDir::open(&path).unwrap();
    let names = dir.list().unwrap();
    assert_eq!(names.len(), 1);
    let seg = path.join(&names[0]);
    let len = std::fs::metadata(&seg).unwrap().len();
    assert_eq!(len, 1 << 16, "preallocated");
    let img = std::fs::read(&seg).unwrap();
    let end = img.iter().rposition(|&b| b != 0).unwrap() + 1;
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
        // (Past the last record's own trailing zero bytes.)
        f.write_all_at(&[0x5a; 700], end as u64 + 64).unwrap();
    }
    let (_log, rec) = ThreadLog::open(dir, o).unwrap();
    assert_eq!(state(&rec.shards[&3]), want);
    assert!(rec.torn_bytes > 0);
    let img = std::fs::read(&seg).unwrap();
    assert!(
        img[end..].iter().all(|&b| b == 0),
        "the torn tail was zeroed"
    );
}

#[test]
fn the_applied_point_survives_power_cuts_and_the_removal_of_the_segment_it_was_written_in() {
    let fs = SimFs::new(21);
    let o = opts(4096);
    let (mut log, _) = ThreadLog::open(fs.dir("t0"), o.clone()).unwrap();
    let mut a = log.bootstrap(1, voters(&[1])).unwrap();
    log.append(&mut a, &entries(1, 10, 1, "a")).unwrap();
    log.set_hard_state(&mut a, &hs(1, 1, 10)).unwrap();
    log.sync().unwrap();
    log.record_applied(&mut a, 8, 1, b"sessions@8").unwrap();
    log.compact(&mut a, 8).unwrap();
    // Recorded but not synced: a power cut may lose it, never half of it.
    fs.power_cut();
    drop(log);
    let (mut log, mut shards) = reopen(&fs, o.clone());
    let mut a = shards.remove(&1).unwrap();
    match a.applied() {
        None => assert_eq!(a.compacted().0, 0),
        Some(p) => {
            assert_eq!((p.index, p.term, &p.data[..]), (8, 1, &b"sessions@8"[..]));
        }
    }
    // Synced: it survives, and is carried into every new segment's checkpoint, so the
    // removal of the segment holding the record keeps it.
    let from = a.last() + 1;
    log.append(&mut a, &entries(from, 12, 1, "b")).unwrap();
    log.record_applied(&mut a, 10, 1, b"sessions@10").unwrap();
    log.compact(&mut a, 10).unwrap();
    log.sync().unwrap();
    let first_seg = log.active_segment();
    let mut next = a.last() + 1;
    while log.stats().segments_removed == 0 || log.active_segment() < first_seg + 3 {
        let es: Vec<Entry> = (next..next + 5).map(|i| entry(i, 2, &[7u8; 150])).collect();
        log.append(&mut a, &es).unwrap();
        next += 5;
        log.compact(&mut a, next - 3).unwrap();
        log.sync().unwrap();
        assert!(next < 2000, "segments never removed");
    }
    let gone = kv_raft::format::segment_name(first_seg);
    assert!(!fs.files().iter().any(|(n, _)| n.ends_with(&gone)));
    drop(log);
    fs.power_cut();
    let (_log, shards) = reopen(&fs, o.clone());
    let p = shards[&1].applied().unwrap();
    assert_eq!((p.index, p.term, &p.data[..]), (10, 1, &b"sessions@10"[..]));
    // An older point never replaces a newer one.
    let (mut log, mut shards) = reopen(&fs, o.clone());
    let mut a = shards.remove(&1).unwrap();
    log.record_applied(&mut a, 9, 1, b"old").unwrap();
    assert_eq!(a.applied().unwrap().index, 10);
    // Too large for a checkpoint: refused, not written.
    let big = vec![0u8; 4096];
    assert!(matches!(
        log.record_applied(&mut a, 11, 2, &big),
        Err(LogError::EntryTooLarge { .. })
    ));
}
