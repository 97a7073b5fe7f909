//! A deterministic cluster of raft-rs replicas on the thread log, in virtual time.
//!
//! Each node is one server thread: one [`ThreadLog`] on its own [`SimFs`], hosting the
//! replicas that `kv_cluster` places on it, each a `RawNode` over its [`ShardStore`], driven
//! the way a server thread's loop drives them — tick every millisecond, for each replica with
//! a ready: send its messages, record it in the log, apply its committed entries,
//! `advance_append_async`; then **one** `sync` for all of them, `on_persist_ready`, and the
//! persisted messages. The state machine of a replica is the list of values it applied; it
//! checkpoints itself durably every few entries, the log is compacted below the checkpoint,
//! and a follower behind the compaction point gets a snapshot of the state machine.
//!
//! The network delivers each message after a seeded delay, drops some, and honours cuts
//! between nodes; nodes crash (process crash) or lose power and restart from their disks.
//! One seed decides everything.
//!
//! Checked on the fly: at most one leader per shard and term; every replica applies the same
//! entry (term and data) at each index. Checked by the tests at the end: every acknowledged
//! value is applied, every applied value was proposed, replicas converge.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kv_cluster::{Cluster, Node as ClusterNode};
use kv_raft::raft::eraftpb::{ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use kv_raft::raft::{RawNode, SnapshotStatus, StateRole};
use kv_raft::{
    LogDir, LogFile, LogOptions, ReplicaSettings, ShardStore, SimDir, SimFs, SyncPolicy, ThreadLog,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How a simulation is set up.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub nodes: usize,
    pub shards: u32,
    pub replication: usize,
    pub seed: u64,
    pub settings: ReplicaSettings,
    /// A replica checkpoints its state machine every this many applied entries.
    pub checkpoint_every: u64,
    /// Entries kept in the log below the checkpoint (for followers slightly behind).
    pub keep_entries: u64,
    pub segment_bytes: u64,
}

impl SimConfig {
    pub fn new(nodes: usize, shards: u32, seed: u64) -> Self {
        Self {
            nodes,
            shards,
            replication: 3.min(nodes),
            seed,
            settings: ReplicaSettings {
                heartbeat_ticks: 2,
                election_ticks: 10,
                max_size_per_msg: 4096,
                max_inflight_msgs: 64,
            },
            checkpoint_every: 8,
            keep_entries: 4,
            segment_bytes: 8192,
        }
    }
}

/// What the network does to messages.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Chance that a message is lost.
    pub drop: f64,
    /// Delivery delay in ms, uniform in `delay.0..=delay.1`.
    pub delay: (u64, u64),
    /// Directed links that deliver nothing.
    pub cut: BTreeSet<(u64, u64)>,
}

/// Counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimStats {
    pub sent: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub snapshots_sent: u64,
    pub snapshots_applied: u64,
    pub checkpoints: u64,
    pub crashes: u64,
    pub power_cuts: u64,
    pub restarts: u64,
    pub proposals: u64,
    pub acked: u64,
    pub log_syncs: u64,
    /// Readies handled (each with something to persist or send).
    pub readies: u64,
}

/// A replica's state machine: the values it applied, in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sm {
    pub applied: u64,
    pub applied_term: u64,
    pub values: Vec<(u64, Vec<u8>)>,
}

impl Sm {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&self.applied.to_le_bytes());
        b.extend_from_slice(&self.applied_term.to_le_bytes());
        b.extend_from_slice(&(self.values.len() as u32).to_le_bytes());
        for (i, v) in &self.values {
            b.extend_from_slice(&i.to_le_bytes());
            b.extend_from_slice(&(v.len() as u32).to_le_bytes());
            b.extend_from_slice(v);
        }
        b
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let mut r = b;
        let mut take = |n: usize| -> Option<&[u8]> {
            if r.len() < n {
                return None;
            }
            let (a, rest) = r.split_at(n);
            r = rest;
            Some(a)
        };
        let u64_ = |s: &[u8]| u64::from_le_bytes(s.try_into().unwrap());
        let u32_ = |s: &[u8]| u32::from_le_bytes(s.try_into().unwrap());
        let applied = u64_(take(8)?);
        let applied_term = u64_(take(8)?);
        let n = u32_(take(4)?);
        let mut values = Vec::new();
        for _ in 0..n {
            let i = u64_(take(8)?);
            let len = u32_(take(4)?) as usize;
            values.push((i, take(len)?.to_vec()));
        }
        Some(Self {
            applied,
            applied_term,
            values,
        })
    }
}

struct Replica {
    node: RawNode<ShardStore>,
    sm: Sm,
    /// Applied index of the newest durable checkpoint.
    checkpointed: u64,
}

struct Node {
    fs: SimFs,
    log: Option<ThreadLog<SimDir>>,
    replicas: BTreeMap<u32, Replica>,
}

struct InFlight {
    at: u64,
    seq: u64,
    from: u64,
    to: u64,
    shard: u32,
    msg: Message,
}

/// The simulation.
pub struct Sim {
    pub cluster: Cluster,
    pub cfg: SimConfig,
    pub rng: StdRng,
    /// Virtual time in ms.
    pub now: u64,
    pub faults: Faults,
    pub stats: SimStats,
    nodes: BTreeMap<u64, Node>,
    net: Vec<InFlight>,
    next_seq: u64,
    /// (shard, term) -> the node that led it.
    leaders: BTreeMap<(u32, u64), u64>,
    /// (shard, index) -> (term, data) of the entry applied there (by anyone).
    applied: BTreeMap<(u32, u64), (u64, Vec<u8>)>,
    proposed: BTreeSet<Vec<u8>>,
    /// Proposals waiting for their proposer to apply them: (node, shard, value).
    waiting: BTreeSet<(u64, u32, Vec<u8>)>,
    /// Acknowledged values by shard, in acknowledgement order.
    pub acked: BTreeMap<u32, Vec<Vec<u8>>>,
    next_value: u64,
}

fn log_options() -> LogOptions {
    LogOptions {
        segment_bytes: 8192,
        tag: 0x5151,
        sync: SyncPolicy::Always,
    }
}

fn checkpoint_name(shard: u32, applied: u64) -> String {
    format!("s{shard:04}-{applied:016x}")
}

/// Writes a replica's state machine durably (its own file, synced with its directory
/// entry), then removes the older ones.
fn write_checkpoint(fs: &SimFs, shard: u32, sm: &Sm) {
    let dir = fs.dir("sm");
    let body = sm.encode();
    let mut data = crc32c::crc32c(&body).to_le_bytes().to_vec();
    data.extend_from_slice(&body);
    let name = checkpoint_name(shard, sm.applied);
    let mut f = dir.create(&name).expect("create checkpoint");
    f.write_at(&data, 0).expect("write checkpoint");
    f.sync_data().expect("sync checkpoint");
    dir.sync_dir().expect("sync sm dir");
    let prefix = format!("s{shard:04}-");
    for old in dir.list().expect("list") {
        if old.starts_with(&prefix) && old < name {
            let _ = dir.remove(&old);
        }
    }
}

/// The newest valid checkpoint of a shard.
fn read_checkpoint(fs: &SimFs, shard: u32) -> Sm {
    let dir = fs.dir("sm");
    let prefix = format!("s{shard:04}-");
    let mut names: Vec<String> = dir
        .list()
        .expect("list")
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    names.sort();
    for name in names.iter().rev() {
        let f = dir.open(name).expect("open");
        let mut buf = vec![0u8; f.file_len().expect("len") as usize];
        let n = f.read_at(&mut buf, 0).expect("read");
        buf.truncate(n);
        if buf.len() < 4 {
            continue;
        }
        let (crc, body) = buf.split_at(4);
        if crc32c::crc32c(body).to_le_bytes() == crc {
            if let Some(sm) = Sm::decode(body) {
                return sm;
            }
        }
    }
    Sm::default()
}

impl Sim {
    pub fn new(cfg: SimConfig) -> Self {
        let nodes: Vec<ClusterNode> = (1..=cfg.nodes as u64)
            .map(|id| ClusterNode {
                id,
                addr: format!("127.0.0.1:{}", 40000 + id).parse().unwrap(),
            })
            .collect();
        let cluster = Cluster::new(nodes, cfg.shards, cfg.replication, 1).unwrap();
        let mut rng = StdRng::seed_from_u64(cfg.seed);
        let mut sim = Self {
            cluster,
            faults: Faults {
                delay: (1, 2),
                ..Faults::default()
            },
            stats: SimStats::default(),
            nodes: BTreeMap::new(),
            net: Vec::new(),
            next_seq: 0,
            leaders: BTreeMap::new(),
            applied: BTreeMap::new(),
            proposed: BTreeSet::new(),
            waiting: BTreeSet::new(),
            acked: BTreeMap::new(),
            next_value: 0,
            now: 0,
            rng: StdRng::seed_from_u64(rng.gen()),
            cfg,
        };
        for id in sim.node_ids() {
            let fs = SimFs::new(rng.gen());
            sim.nodes.insert(
                id,
                Node {
                    fs,
                    log: None,
                    replicas: BTreeMap::new(),
                },
            );
            sim.start(id);
        }
        sim
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.cluster.nodes().iter().map(|n| n.id).collect()
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.log.is_some())
    }

    /// Opens a node's log and builds its replicas from what it recovered.
    fn start(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap();
        let (mut log, rec) = ThreadLog::open(node.fs.dir("log"), log_options())
            .unwrap_or_else(|e| panic!("node {id}: opening its log: {e}"));
        let mut recovered = rec.shards;
        let r = self.cluster.replication();
        for shard in self.cluster.shards_of(id).collect::<Vec<_>>() {
            let voters: Vec<u64> = self.cluster.replicas(shard).collect();
            let rank = self.cluster.replica_rank(shard, id).unwrap();
            let mut store = match recovered.remove(&shard) {
                Some(s) => s,
                None => log
                    .bootstrap(shard, ConfState::from((voters, vec![])))
                    .unwrap(),
            };
            let sm = read_checkpoint(&node.fs, shard);
            log.align_with_state_machine(&mut store, sm.applied, sm.applied_term)
                .unwrap_or_else(|e| panic!("node {id} shard {shard}: {e}"));
            let config = self.cfg.settings.config(id, rank, r, sm.applied);
            let logger = kv_raft::raft_logger(shard, id);
            let raw = RawNode::new(&config, store, &logger).unwrap();
            node.replicas.insert(
                shard,
                Replica {
                    node: raw,
                    checkpointed: sm.applied,
                    sm,
                },
            );
        }
        assert!(recovered.is_empty(), "node {id}: shards it does not host");
        log.sync().unwrap();
        node.log = Some(log);
    }

    /// Kills a node: a process crash (`power == false`: what it wrote stays) or a power cut.
    pub fn kill(&mut self, id: u64, power: bool) {
        let node = self.nodes.get_mut(&id).unwrap();
        if node.log.is_none() {
            return;
        }
        node.log = None;
        node.replicas.clear();
        if power {
            node.fs.power_cut();
            self.stats.power_cuts += 1;
        } else {
            node.fs.crash();
            self.stats.crashes += 1;
        }
        self.waiting.retain(|w| w.0 != id);
    }

    pub fn restart(&mut self, id: u64) {
        if !self.is_up(id) {
            self.start(id);
            self.stats.restarts += 1;
        }
    }

    /// Cuts every link between `id` and the other nodes, both ways.
    pub fn isolate(&mut self, id: u64) {
        for other in self.node_ids() {
            if other != id {
                self.faults.cut.insert((id, other));
                self.faults.cut.insert((other, id));
            }
        }
    }

    /// Cuts the network into two sides.
    pub fn partition(&mut self, side: &BTreeSet<u64>) {
        self.faults.cut.clear();
        for a in self.node_ids() {
            for b in self.node_ids() {
                if side.contains(&a) != side.contains(&b) {
                    self.faults.cut.insert((a, b));
                }
            }
        }
    }

    pub fn heal(&mut self) {
        self.faults = Faults {
            delay: (1, 2),
            ..Faults::default()
        };
    }

    /// The node leading `shard` with the highest term, among the running ones.
    pub fn leader_of(&self, shard: u32) -> Option<u64> {
        self.nodes
            .iter()
            .filter_map(|(&id, n)| {
                let r = n.replicas.get(&shard)?;
                (r.node.raft.state == StateRole::Leader).then_some((r.node.raft.term, id))
            })
            .max()
            .map(|(_, id)| id)
    }

    /// The term of `shard`'s current leader (0 if none).
    pub fn leader_of_term(&self, shard: u32) -> u64 {
        self.leader_of(shard)
            .and_then(|l| self.nodes[&l].replicas.get(&shard))
            .map_or(0, |r| r.node.raft.term)
    }

    /// Whether node `id` believes it leads `shard`.
    pub fn is_leader(&self, id: u64, shard: u32) -> bool {
        self.nodes
            .get(&id)
            .and_then(|n| n.replicas.get(&shard))
            .is_some_and(|r| r.node.raft.state == StateRole::Leader)
    }

    /// The leader of `shard` with the highest term among the nodes other than `not`.
    pub fn leader_of_excluding(&self, shard: u32, not: u64) -> Option<u64> {
        self.leader_excluding(shard, not).map(|(_, id)| id)
    }

    /// That leader's term (0 if none).
    pub fn leader_term_excluding(&self, shard: u32, not: u64) -> u64 {
        self.leader_excluding(shard, not).map_or(0, |(t, _)| t)
    }

    fn leader_excluding(&self, shard: u32, not: u64) -> Option<(u64, u64)> {
        self.nodes
            .iter()
            .filter(|(&id, _)| id != not)
            .filter_map(|(&id, n)| {
                let r = n.replicas.get(&shard)?;
                (r.node.raft.state == StateRole::Leader).then_some((r.node.raft.term, id))
            })
            .max()
    }

    /// Proposes a fresh value to `shard` through node `id` (if it runs the shard).
    pub fn propose_via(&mut self, id: u64, shard: u32) -> Option<Vec<u8>> {
        let value = format!("s{shard}-v{}", self.next_value).into_bytes();
        let r = self.nodes.get_mut(&id)?.replicas.get_mut(&shard)?;
        self.next_value += 1;
        self.stats.proposals += 1;
        self.proposed.insert(value.clone());
        if r.node.propose(vec![], value.clone()).is_ok() {
            self.waiting.insert((id, shard, value.clone()));
        }
        Some(value)
    }

    /// The counters of node `id`'s log (None while it is down).
    pub fn log_stats(&self, id: u64) -> Option<kv_raft::LogStats> {
        Some(self.nodes.get(&id)?.log.as_ref()?.stats())
    }

    /// Proposes to `shard`'s current leader, if it has one.
    pub fn propose(&mut self, shard: u32) -> Option<Vec<u8>> {
        let leader = self.leader_of(shard)?;
        self.propose_via(leader, shard)
    }

    /// Runs `ms` milliseconds, proposing to a random shard's leader with chance `load` each
    /// millisecond.
    pub fn run(&mut self, ms: u64, load: f64) {
        for _ in 0..ms {
            if load > 0.0 && self.rng.gen_bool(load) {
                let shard = self.rng.gen_range(0..self.cluster.shards());
                self.propose(shard);
            }
            self.step();
        }
    }

    /// Runs until `done` holds or `max_ms` passed; returns whether it held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&Sim) -> bool) -> bool {
        for _ in 0..max_ms {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }

    /// One millisecond: deliver what is due, tick, and run every node's loop iteration.
    pub fn step(&mut self) {
        self.now += 1;
        self.deliver();
        for id in self.node_ids() {
            if let Some(node) = self.nodes.get_mut(&id) {
                for r in node.replicas.values_mut() {
                    r.node.tick();
                }
            }
            // Twice: what the first sync made durable may free committed entries at once.
            self.iterate(id);
            self.iterate(id);
        }
    }

    fn send(&mut self, from: u64, shard: u32, msg: Message) {
        self.stats.sent += 1;
        let to = msg.to;
        if self.rng.gen_bool(self.faults.drop) {
            self.stats.dropped += 1;
            self.undeliverable(from, to, shard, &msg);
            return;
        }
        let (lo, hi) = self.faults.delay;
        let at = self.now + self.rng.gen_range(lo..=hi.max(lo));
        self.next_seq += 1;
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            self.stats.snapshots_sent += 1;
        }
        self.net.push(InFlight {
            at,
            seq: self.next_seq,
            from,
            to,
            shard,
            msg,
        });
    }

    /// Tells a sender what its rpc layer would: the peer is unreachable, and a snapshot
    /// did not arrive.
    fn undeliverable(&mut self, from: u64, to: u64, shard: u32, msg: &Message) {
        let Some(r) = self
            .nodes
            .get_mut(&from)
            .and_then(|n| n.replicas.get_mut(&shard))
        else {
            return;
        };
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            r.node.report_snapshot(to, SnapshotStatus::Failure);
        }
        r.node.report_unreachable(to);
    }

    fn deliver(&mut self) {
        let now = self.now;
        let mut due: Vec<InFlight> = Vec::new();
        let mut rest = Vec::with_capacity(self.net.len());
        for m in self.net.drain(..) {
            if m.at <= now {
                due.push(m);
            } else {
                rest.push(m);
            }
        }
        self.net = rest;
        due.sort_by_key(|m| (m.at, m.seq));
        for m in due {
            let lost = self.faults.cut.contains(&(m.from, m.to)) || !self.is_up(m.to);
            if lost {
                self.stats.dropped += 1;
                self.undeliverable(m.from, m.to, m.shard, &m.msg);
                continue;
            }
            let is_snap = m.msg.get_msg_type() == MessageType::MsgSnapshot;
            let Some(r) = self
                .nodes
                .get_mut(&m.to)
                .and_then(|n| n.replicas.get_mut(&m.shard))
            else {
                continue;
            };
            self.stats.delivered += 1;
            let _ = r.node.step(m.msg);
            if is_snap {
                if let Some(s) = self
                    .nodes
                    .get_mut(&m.from)
                    .and_then(|n| n.replicas.get_mut(&m.shard))
                {
                    s.node.report_snapshot(m.to, SnapshotStatus::Finish);
                }
            }
        }
    }

    /// One loop iteration of node `id`'s thread.
    fn iterate(&mut self, id: u64) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(log) = node.log.as_mut() else {
            return;
        };
        let mut outbox: Vec<(u32, Message)> = Vec::new();
        let mut persisted: Vec<(u32, u64, Vec<Message>)> = Vec::new();
        let mut applied_now: Vec<(u32, Entry)> = Vec::new();
        for (&shard, r) in node.replicas.iter_mut() {
            if !r.node.has_ready() {
                continue;
            }
            let mut rd = r.node.ready();
            self.stats.readies += 1;
            if let Some(ss) = rd.ss() {
                if ss.raft_state == StateRole::Leader {
                    let term = r.node.raft.term;
                    let prev = self.leaders.insert((shard, term), id);
                    assert!(
                        prev.is_none() || prev == Some(id),
                        "shard {shard}: two leaders in term {term}: {prev:?} and {id}"
                    );
                }
            }
            outbox.extend(rd.take_messages().into_iter().map(|m| (shard, m)));
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot();
                let mut sm = Sm::decode(&snap.data).expect("snapshot data");
                let meta = snap.get_metadata();
                assert_eq!((sm.applied, sm.applied_term), (meta.index, meta.term));
                sm.applied = meta.index;
                // The state machine's image is durable before the log records the
                // snapshot, so a restart never finds the log compacted past it.
                write_checkpoint(&node.fs, shard, &sm);
                self.stats.checkpoints += 1;
                self.stats.snapshots_applied += 1;
                r.checkpointed = sm.applied;
                r.sm = sm;
            }
            log.write_ready(r.node.mut_store(), &rd).unwrap();
            for e in rd.take_committed_entries() {
                applied_now.push((shard, e.clone()));
                apply(&mut r.sm, &e);
            }
            persisted.push((shard, rd.number(), rd.take_persisted_messages()));
            r.node.advance_append_async(rd);
        }
        if !persisted.is_empty() || log.has_pending() {
            log.sync().unwrap();
            self.stats.log_syncs += 1;
        }
        for (shard, number, msgs) in persisted {
            let r = node.replicas.get_mut(&shard).unwrap();
            r.node.on_persist_ready(number);
            outbox.extend(msgs.into_iter().map(|m| (shard, m)));
        }
        for (&shard, r) in node.replicas.iter_mut() {
            r.node.advance_apply_to(r.sm.applied);
            if r.sm.applied >= r.checkpointed + self.cfg.checkpoint_every {
                write_checkpoint(&node.fs, shard, &r.sm);
                self.stats.checkpoints += 1;
                r.checkpointed = r.sm.applied;
            }
            // Compact below what the state machine made durable.
            let to = r.checkpointed.saturating_sub(self.cfg.keep_entries);
            if to > r.node.store().compacted().0 {
                let store = r.node.mut_store();
                log.compact(store, to).unwrap();
            }
            if let Some(want) = r.node.store().snapshot_wanted() {
                if r.sm.applied >= want {
                    let mut snap = Snapshot {
                        data: Bytes::from(r.sm.encode()),
                        ..Snapshot::default()
                    };
                    let meta = snap.mut_metadata();
                    meta.index = r.sm.applied;
                    meta.term = r.sm.applied_term;
                    meta.set_conf_state(r.node.store().conf_state().clone());
                    r.node.mut_store().set_snapshot(snap);
                }
            }
        }
        for (shard, e) in applied_now {
            self.record_apply(id, shard, &e);
        }
        for (shard, m) in outbox {
            self.send(id, shard, m);
        }
    }

    fn record_apply(&mut self, id: u64, shard: u32, e: &Entry) {
        let key = (shard, e.index);
        let val = (e.term, e.data.to_vec());
        match self.applied.get(&key) {
            Some(prev) => assert_eq!(
                prev, &val,
                "shard {shard} index {}: node {id} applied another entry",
                e.index
            ),
            None => {
                self.applied.insert(key, val);
            }
        }
        if e.data.is_empty() {
            return;
        }
        assert!(
            self.proposed.contains(&e.data[..]),
            "shard {shard}: applied a value nobody proposed"
        );
        if self.waiting.remove(&(id, shard, e.data.to_vec())) {
            self.acked.entry(shard).or_default().push(e.data.to_vec());
            self.stats.acked += 1;
        }
    }

    /// The state machine of `shard` on node `id`, if it runs.
    pub fn sm(&self, id: u64, shard: u32) -> Option<&Sm> {
        self.nodes.get(&id)?.replicas.get(&shard).map(|r| &r.sm)
    }

    /// Whether every replica of every shard runs and has applied the same entries, up to
    /// its leader's commit index.
    pub fn converged(&self) -> bool {
        (0..self.cluster.shards()).all(|shard| {
            let Some(leader) = self.leader_of(shard) else {
                return false;
            };
            let lr = &self.nodes[&leader].replicas[&shard];
            // A new leader knows what is committed only once an entry of its term is (its
            // commit index may start behind: a commit index is not always written).
            if !lr.node.raft.commit_to_current_term() {
                return false;
            }
            let commit = lr.node.raft.raft_log.committed;
            self.cluster.replicas(shard).all(|id| {
                self.sm(id, shard)
                    .is_some_and(|sm| sm.applied == commit && sm.values == lr.sm.values)
            })
        })
    }

    /// Heals everything, restarts every node and waits for convergence; then checks that
    /// every acknowledged value is applied everywhere, exactly once.
    pub fn settle_and_check(&mut self) {
        self.heal();
        for id in self.node_ids() {
            self.restart(id);
        }
        let settled = self.run_until(20_000, |s| s.converged());
        assert!(
            settled,
            "seed {}: no convergence after healing (t = {} ms)",
            self.cfg.seed, self.now
        );
        for shard in 0..self.cluster.shards() {
            let leader = self.leader_of(shard).unwrap();
            let sm = self.sm(leader, shard).unwrap();
            let values: Vec<&Vec<u8>> = sm.values.iter().map(|(_, v)| v).collect();
            let set: BTreeSet<&Vec<u8>> = values.iter().copied().collect();
            assert_eq!(
                set.len(),
                values.len(),
                "shard {shard}: a value applied twice"
            );
            for v in self.acked.get(&shard).into_iter().flatten() {
                assert!(
                    set.contains(v),
                    "seed {}: shard {shard}: acknowledged {} is lost",
                    self.cfg.seed,
                    String::from_utf8_lossy(v)
                );
            }
            for (i, v) in &sm.values {
                assert!(self.proposed.contains(v));
                assert_eq!(self.applied[&(shard, *i)].1, *v);
            }
        }
    }
}

fn apply(sm: &mut Sm, e: &Entry) {
    if e.index <= sm.applied {
        // Already in the state machine (replayed after a restart from an older
        // checkpoint is fine: those come after it; this is a duplicate delivery).
        return;
    }
    if e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty() {
        sm.values.push((e.index, e.data.to_vec()));
    }
    sm.applied = e.index;
    sm.applied_term = e.term;
}
