//! Cluster mode (`docs/CLUSTER.md`): the Raft replicas of one server thread's shards, driven
//! from the thread's `step(now)` loop.
//!
//! Each iteration (`drive`, called by `ServerThread::step`): keep a session open to the same thread of every peer node,
//! step the messages that came back in answers to its Raft requests, then for each replica: tick on the
//! thread's clock (1 ms ticks), issue one `read_index` for all linearizable reads waiting,
//! handle its ready (send messages at once, buffer entries and hard state in the thread's
//! log, apply committed entries to the engine, note read states), **one** `ThreadLog::sync`
//! for every replica of the thread, then `on_persist_ready` and the persisted messages
//! (votes, append answers: only once durable). Messages for one peer thread go as one
//! batch per iteration: in the answer to that thread's `RAFT` request if one came in this
//! iteration (every such request is held until the end of the iteration), else as a `RAFT`
//! request of their own — a follower's append answers ride back on the leader's request.
//!
//! - **Writes** (PUT, DELETE with the cluster extension) are proposed by the leader only;
//!   others answer NOT_LEADER with the leader raft-rs knows. The entry is the write and its
//!   (client, seq) identity; at apply, on every replica in log order, the shard's
//!   [`Sessions`] decide whether it is new (run on the engine) or a retry (answered as the
//!   first time). The client is answered once the engine completed the write on the leader.
//!   A proposal whose index later holds another term, or pending when the replica stops
//!   leading, is answered NOT_LEADER: the client retries with the same identity.
//! - **Reads** (GET, SCAN) are linearizable through ReadIndex: one round per iteration
//!   covers every read waiting on a shard; each runs on the engine once every entry up to
//!   the read state's index has completed there. With `REQ_FLAG_LOCAL` a replica answers
//!   from its state as it is (diagnostics, tests).
//! - **Checkpoints and compaction**: every [`CompactionSettings::checkpoint_entries`]
//!   applied entries a shard captures its client sessions at the last entry handed to the
//!   engine; once the engine completed that entry, `Worker::sync` makes the engine durable,
//!   the applied index, its term and the sessions are recorded in the thread's log
//!   (`ThreadLog::record_applied`), and the log is compacted below it (a leader keeps up to
//!   [`CompactionSettings::reserve_entries`] more for followers that are behind).
//! - **Restart** replays the log from the recorded applied index on; applying is
//!   idempotent because writes are blind PUT / DELETE replayed in log order (the engine may
//!   hold newer values than the applied index: replaying rewrites them in order), and the
//!   sessions start from the recorded ones and are rebuilt by the same replay.
//! - **Snapshots** (`snapshot.rs` has the chunk format): a follower behind the leader's
//!   compacted log gets the shard's keys and values, streamed from the leader's engine in
//!   key order in `RAFT_SNAPSHOT` chunks, then raft-rs's `MsgSnapshot` (index, term and the
//!   sessions of the leader's last checkpoint). The follower freezes the shard (no ready
//!   handled, nothing applied), writes each chunk's items and deletes its own keys in the
//!   chunk's range that the chunk lacks, and after the last chunk syncs the engine and
//!   steps the `MsgSnapshot`; the ready that follows records the applied index and the
//!   sessions, then the snapshot, in the log. The values streamed are the leader's current
//!   ones (newer than the snapshot index, never older): like a restart, the follower then
//!   replays the entries after the index, which rewrites every key changed since in order.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub(crate) mod entry;
pub(crate) mod snapshot;
#[cfg(test)]
mod tests;
mod transfer;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::Arc;

use kv_cluster::{Cluster, NodeId};
use kv_engine::{self as engine, Backend};
use kv_proto::{self as protocol, op, ClusterExt, Op, Reply, Request, Role, ShardStatus, Status};
use kv_raft::raft::eraftpb::{ConfState, Message, MessageType, Snapshot, SnapshotMetadata};
use kv_raft::raft::{RawNode, StateRole};
use kv_raft::sessions::{Dedup, RequestId, Sessions, DEFAULT_MAX_ANSWERS, DEFAULT_MAX_CLIENTS};
use kv_raft::{
    AnyDir, FsDir, LogOptions, ReplicaSettings, ShardId, ShardStore, SyncPolicy, ThreadLog,
};
use rpc::{Ctx, ReqHandle, Request as RpcRequest, Rpc, SessionId, SessionState};
use transports::Transport;

use crate::config::ServerError;
use crate::state::{Dest, PendingOp, ServerState};

/// Engine tags of writes being applied carry this bit (the server's own tags count up from 1).
const APPLY_TAG: u64 = 1 << 63;
/// Engine tags of snapshot work (reads of a snapshot being sent, writes of one being
/// installed) carry this bit too.
const SNAP_TAG: u64 = 1 << 62;
/// Most bytes of items per snapshot chunk (a chunk holds at least one item).
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Deadline of one RAFT_SNAPSHOT request.
const SNAPSHOT_DEADLINE_MS: u64 = 5_000;
/// A snapshot transfer taking longer than this is abandoned (raft-rs asks again).
const SNAPSHOT_TIMEOUT_NS: u64 = 120_000_000_000;
/// A follower receiving a snapshot that hears no chunk for this long gives it up.
const INCOMING_TIMEOUT_NS: u64 = 10_000_000_000;
/// Pause before resending a chunk the follower could not take yet.
const BUSY_RETRY_NS: u64 = 5_000_000;
/// Nanoseconds per Raft tick.
const TICK_NS: u64 = 1_000_000;
/// Most ticks caught up in one iteration (after a long stall the clock jumps; elections
/// then still take their full timeout of iterations).
const MAX_TICKS: u64 = 20;
/// Raft requests in flight to one peer thread beyond which messages are dropped (Raft
/// resends; the leader is told the peer is unreachable so it probes instead of streaming).
const MAX_PEER_INFLIGHT: usize = 16;
/// Proposals waiting for their entry to apply, per shard, beyond which writes are refused
/// with OVERLOADED.
const MAX_PROPOSALS: usize = 16_384;
/// Reads waiting longer than this for their read state are answered NOT_LEADER (a read
/// index lost with a leader change never comes back).
const READ_TIMEOUT_NS: u64 = 2_000_000_000;
/// Deadline of a RAFT request.
const RAFT_DEADLINE_MS: u64 = 1_000;
/// Wait before reopening a failed session to a peer.
const REDIAL_NS: u64 = 200_000_000;
/// Answer codes kept in the sessions.
const ANSWER_PENDING: u8 = 0;
const ANSWER_WRITTEN: u8 = 1;
const ANSWER_DELETED: u8 = 2;
const ANSWER_NOT_FOUND: u8 = 3;

/// What cluster mode needs to know, the same for every thread of a node.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// The cluster file's contents.
    pub cluster: Arc<Cluster>,
    /// This node's id.
    pub node: NodeId,
    /// raft-rs settings.
    pub settings: ReplicaSettings,
    /// `fdatasync` the Raft log each iteration ([`SyncPolicy::Always`], the default) or never
    /// ([`SyncPolicy::Never`]: **unsafe**, a power cut can lose acknowledged writes on every
    /// replica at once; for latency comparison only).
    pub raft_sync: SyncPolicy,
    /// Segment size of the Raft logs.
    pub segment_bytes: u64,
    /// Where to reach a peer node's rpc endpoint instead of its address in the cluster file
    /// (e.g. `local:NAME` for a simulation on an in-process hub).
    pub peer_uris: BTreeMap<NodeId, String>,
    /// When shards checkpoint and compact their log.
    pub compaction: CompactionSettings,
    /// How a leader confirms linearizable reads (default [`ReadMode::Index`]).
    pub reads: ReadMode,
}

/// How a leader confirms that a read sees every write acknowledged before it
/// (`docs/CLUSTER.md`, Reads). Both are linearizable; they differ in what they assume.
///
/// ```
/// assert_eq!(kv_service::ReadMode::default(), kv_service::ReadMode::Index);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadMode {
    /// ReadIndex: the reads waiting on a shard are confirmed by one heartbeat round with a
    /// quorum (one per loop iteration), then run once the engine applied the leader's
    /// commit index. Assumes nothing about clocks.
    #[default]
    Index,
    /// Leases: a leader that a quorum answered less than
    /// [`ReplicaSettings::lease_ns`] ago (89 ms with the default 100 ms election timeout)
    /// runs reads at its commit index without a round; read rounds renew the lease (one
    /// with no reads when half of it is left and reads keep coming), and reads wait for a
    /// round as with `Index` when it has lapsed. Assumes that the nodes' monotonic clocks
    /// run at rates within 10% of each other; a restarted node withholds its vote for one
    /// election timeout, so elections after a restart may take that much longer.
    Lease,
}

/// When a shard checkpoints its state machine and compacts its Raft log
/// (`docs/CLUSTER.md`, Compaction and snapshots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompactionSettings {
    /// A checkpoint is taken once this many entries were applied since the last one
    /// (default 10 000): the engine is synced (`Worker::sync`, blocking the thread for
    /// that long), the applied index and the client sessions are recorded in the log, and
    /// the log is compacted. Restart replays at most about this many entries per shard.
    pub checkpoint_entries: u64,
    /// ... or once the entries the shard holds in memory take this many bytes (default
    /// 64 MiB).
    pub checkpoint_bytes: u64,
    /// A leader compacts only as far as its slowest follower has matched, as long as that
    /// keeps at most this many entries below the checkpoint (default 10 000); a follower
    /// further behind is sent a snapshot.
    pub reserve_entries: u64,
    /// Keys read from the engine per step of a snapshot being sent (default 256); a chunk
    /// carries them, split further to at most 1 MiB of items per chunk.
    pub snapshot_keys: usize,
}

impl Default for CompactionSettings {
    fn default() -> Self {
        Self {
            checkpoint_entries: 10_000,
            checkpoint_bytes: 64 << 20,
            reserve_entries: 10_000,
            snapshot_keys: 256,
        }
    }
}

impl ClusterOptions {
    /// Options for node `node` of `cluster` with the default settings.
    pub fn new(cluster: Cluster, node: NodeId) -> Self {
        Self {
            cluster: Arc::new(cluster),
            node,
            settings: ReplicaSettings::default(),
            raft_sync: SyncPolicy::Always,
            segment_bytes: kv_raft::DEFAULT_SEGMENT_BYTES,
            peer_uris: BTreeMap::new(),
            compaction: CompactionSettings::default(),
            reads: ReadMode::Index,
        }
    }

    fn log_options(&self) -> LogOptions {
        LogOptions {
            sync: self.raft_sync,
            segment_bytes: self.segment_bytes,
            ..LogOptions::default()
        }
    }

    /// The tag recorded in a thread's log: fingerprint, node and thread, so that a log is
    /// never opened by another thread, node or placement.
    fn log_tag(&self, thread: usize) -> u64 {
        (u64::from(self.cluster.fingerprint()) << 32) ^ (self.node << 8) ^ thread as u64
    }
}

/// Checks that `data_dir` belongs to this node of this cluster (records it on first use).
pub(crate) fn check_data_dir(data_dir: &Path, opts: &ClusterOptions) -> Result<(), ServerError> {
    let path = data_dir.join("cluster-id");
    let want = format!(
        "fingerprint {:08x} node {}\n",
        opts.cluster.fingerprint(),
        opts.node
    );
    match std::fs::read_to_string(&path) {
        Ok(have) if have == want => Ok(()),
        Ok(have) => Err(ServerError::Config(format!(
            "{} records {:?}, but this is {:?}: the data directory belongs to another node or \
             cluster layout",
            path.display(),
            have.trim(),
            want.trim()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir)?;
            let tmp = data_dir.join("cluster-id.tmp");
            std::fs::write(&tmp, &want)?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(data_dir)?.sync_all()?;
            Ok(())
        }
        Err(e) => Err(ServerError::Io(e)),
    }
}

/// A read-index round under way.
struct Round {
    /// When it was asked (before its heartbeats left): a quorum answering it heard from
    /// the leader after this.
    asked_at: u64,
    /// The leader's term then.
    term: u64,
    /// The reads it confirms (none: a lease renewal).
    reads: Vec<Read>,
}

/// A read waiting to run.
struct Read {
    dest: Dest,
    op: ReadOp,
    since: u64,
}

enum ReadOp {
    Get(Vec<u8>),
    Scan { start: Vec<u8>, max: u32 },
}

/// A write the engine is applying.
struct Applying {
    shard: ShardId,
    index: u64,
    op: u8,
    id: RequestId,
    /// The client waiting for it (leader only).
    client: Option<Dest>,
}

/// One shard replica.
struct Shard {
    node: RawNode<ShardStore>,
    sessions: Sessions,
    role: StateRole,
    /// Proposals by log index: the term they were proposed in and who waits.
    proposals: BTreeMap<u64, (u64, Dest)>,
    /// Reads waiting for the next read-index round.
    reads_waiting: Vec<Read>,
    /// Read-index rounds under way, by round number.
    reads_asked: HashMap<u64, Round>,
    /// [`ReadMode::Lease`]: the term of the lease and until when it holds (ns).
    lease: Option<(u64, u64)>,
    /// A term in which a leadership transfer was asked: no lease in it (0: none). The
    /// target campaigns when raft-rs's `MsgTimeoutNow` reaches it, however late, and the
    /// others vote for it whatever they heard.
    lease_barred: u64,
    /// Reads with their read state's index, waiting for the engine to catch up.
    reads_ready: Vec<(u64, Read)>,
    /// Every entry up to here is applied or handed to the engine.
    submitted: u64,
    /// Indices handed to the engine and not completed yet.
    in_engine: BTreeSet<u64>,
    /// Term of the entry at `submitted`.
    last_term: u64,
    /// The last checkpoint recorded in the log: (applied index, term).
    checkpoint: (u64, u64),
    /// The log's active segment when it was recorded (a shard with few writes checkpoints
    /// once the log moved on two segments, so that its old entries never keep old segments).
    checkpoint_seg: u64,
    /// A checkpoint waiting for the engine to complete every entry up to its index.
    capture: Option<Capture>,
    /// Entries up to here were committed before the restart (replayed at start).
    replay_until: u64,
    /// A snapshot being received: the shard is frozen (no ready handled) until it is
    /// installed or given up.
    incoming: Option<Incoming>,
    /// Engine writes of snapshot chunks not completed yet.
    install_ops: usize,
    /// One of them failed: the snapshot is not stepped.
    install_failed: bool,
}

/// A checkpoint taken at the last entry handed to the engine.
struct Capture {
    index: u64,
    term: u64,
    /// The sessions at `index`.
    data: Vec<u8>,
}

/// A snapshot being received.
struct Incoming {
    from: NodeId,
    transfer: u64,
    next_seq: u32,
    /// End of the range the chunks so far covered (`None`: none yet).
    prev_end: Option<Vec<u8>>,
    /// The MsgSnapshot, once the last chunk came.
    msg: Option<Message>,
    last_at: u64,
}

/// A snapshot being sent to a follower.
struct Transfer {
    /// Also the tag of its RAFT_SNAPSHOT requests.
    id: u64,
    shard: ShardId,
    to: NodeId,
    msg: Message,
    /// The snapshot's index (the log is not compacted past it while the transfer runs).
    index: u64,
    /// Where the next listing of the shard's keys starts; `None` once the last chunk is
    /// built.
    next_start: Option<Vec<u8>>,
    /// Chunks built and not yet answered OK.
    queue: VecDeque<Vec<u8>>,
    seq: u32,
    in_flight: bool,
    reading: bool,
    failed: bool,
    retry_at: u64,
    started: u64,
}

/// Engine work for snapshots.
enum SnapOp {
    /// A read of keys for a transfer: the last key listed, and whether the listing was
    /// full (more may follow).
    Read {
        transfer: u64,
        listed_last: Option<Vec<u8>>,
        full: bool,
    },
    /// A write of a snapshot being installed.
    Install { shard: ShardId },
}

/// Counters of a thread's replicas (tests, diagnostics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Entries applied at start that were committed before the restart (the replay).
    pub replayed: u64,
    /// Checkpoints recorded.
    pub checkpoints: u64,
    /// Snapshot transfers started (leader).
    pub snapshots_sent: u64,
    /// Snapshot transfers whose every chunk was answered OK (leader).
    pub snapshots_finished: u64,
    /// Snapshot chunks received.
    pub chunks_received: u64,
    /// Snapshots installed (follower: recorded in the log).
    pub snapshots_installed: u64,
    /// Entries the thread's shards hold in memory now (the live log).
    pub entries_held: u64,
    /// Segment files of the thread's log now.
    pub log_segments: u64,
    /// Batches of Raft messages sent as RAFT requests of their own.
    pub raft_requests: u64,
    /// Batches of Raft messages sent in the answer to a peer's RAFT request.
    pub raft_answers: u64,
    /// Read-index rounds asked (leader; lease renewals included).
    pub read_rounds: u64,
    /// Reads run under the leader's lease, without a round of their own.
    pub lease_reads: u64,
    /// Vote and pre-vote requests dropped in the election timeout after the start
    /// ([`ReadMode::Lease`]: this node may have acknowledged another leader's lease before
    /// it restarted).
    pub votes_withheld: u64,
}

impl Shard {
    /// Every entry up to this index has completed on the engine.
    fn applied(&self) -> u64 {
        self.in_engine
            .first()
            .map_or(self.submitted, |&i| i.saturating_sub(1))
    }

    fn leader(&self) -> u64 {
        self.node.raft.leader_id
    }
}

/// A peer node's same-numbered thread.
struct Peer {
    node: NodeId,
    uri: String,
    session: Option<SessionId>,
    not_before: u64,
}

/// The replicas of one server thread (see the [module documentation](self)).
pub struct Replicas {
    opts: ClusterOptions,
    thread: usize,
    log: ThreadLog<AnyDir>,
    shards: BTreeMap<ShardId, Shard>,
    peers: Vec<Peer>,
    last_tick: Option<u64>,
    /// Time of the first tick: with [`ReadMode::Lease`], no vote for an election timeout.
    started: Option<u64>,
    next_round: u64,
    applying: HashMap<u64, Applying>,
    next_apply_tag: u64,
    outbox: BTreeMap<NodeId, Vec<(ShardId, Message)>>,
    /// RAFT requests from peers not answered yet, with the node that sent them: answered at
    /// the end of the iteration, each carrying the messages this iteration has for its
    /// sender (a follower's append and heartbeat answers ride back on the leader's request
    /// instead of costing a request and a response of their own).
    held: Vec<(NodeId, ReqHandle)>,
    scratch: Vec<u8>,
    /// The log failed: the replicas stopped (a restart recovers from the disk).
    failed: bool,
    transfers: Vec<Transfer>,
    snap_ops: HashMap<u64, SnapOp>,
    next_transfer: u64,
    stats: ReplicaStats,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("node", &self.opts.node)
            .field("thread", &self.thread)
            .field("shards", &self.shards.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn raft_err(shard: ShardId, e: impl std::fmt::Display) -> ServerError {
    ServerError::Config(format!("shard {shard}: {e}"))
}

/// The sessions saved with a checkpoint or a snapshot (none saved: empty).
fn decode_sessions(data: &[u8]) -> Result<Sessions, kv_raft::sessions::SessionsDecodeError> {
    if data.is_empty() {
        return Ok(Sessions::default());
    }
    Sessions::decode(data, DEFAULT_MAX_CLIENTS, DEFAULT_MAX_ANSWERS).map(|(s, _)| s)
}

/// What `Storage::snapshot` hands raft-rs for a checkpoint: its index, term, the shard's
/// conf state and the sessions; the keys and values are streamed from the engine when it
/// is sent.
fn checkpoint_snapshot(store: &ShardStore, index: u64, term: u64, data: &[u8]) -> Snapshot {
    Snapshot {
        data: data.to_vec().into(),
        metadata: Some(SnapshotMetadata {
            index,
            term,
            conf_state: Some(store.conf_state().clone()).into(),
            ..SnapshotMetadata::default()
        })
        .into(),
        ..Snapshot::default()
    }
}

/// `key` followed by a zero byte: the smallest key after it.
fn after(key: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(key.len() + 1);
    v.extend_from_slice(key);
    v.push(0);
    v
}

impl Replicas {
    /// Opens thread `thread`'s Raft log in `DIR/raft/t{thread}` of a real directory and
    /// builds its replicas.
    pub fn open(
        data_dir: &Path,
        opts: &ClusterOptions,
        thread: usize,
    ) -> Result<Self, ServerError> {
        let dir = data_dir.join("raft").join(format!("t{thread}"));
        std::fs::create_dir_all(&dir)?;
        let fs = FsDir::open(&dir)?;
        Self::open_in(AnyDir::new(fs), opts, thread)
    }

    /// Opens thread `thread`'s Raft log in `dir` (a real or simulated directory) and builds
    /// a replica for every shard the cluster places on this node and thread.
    pub fn open_in(dir: AnyDir, opts: &ClusterOptions, thread: usize) -> Result<Self, ServerError> {
        let cluster = &opts.cluster;
        if cluster.node(opts.node).is_none() {
            return Err(ServerError::Config(format!(
                "node {} is not in the cluster file",
                opts.node
            )));
        }
        let mut lo = opts.log_options();
        lo.tag = opts.log_tag(thread);
        let (mut log, recovered) = ThreadLog::open(dir, lo)
            .map_err(|e| ServerError::Config(format!("raft log of thread {thread}: {e}")))?;
        let mut recovered = recovered.shards;
        let mut shards = BTreeMap::new();
        let mut peer_nodes = BTreeSet::new();
        for shard in cluster.shards_on(opts.node, thread).collect::<Vec<_>>() {
            let voters: Vec<u64> = cluster.replicas(shard).collect();
            peer_nodes.extend(voters.iter().copied().filter(|&n| n != opts.node));
            let rank = cluster.replica_rank(shard, opts.node).unwrap_or(0);
            let store = match recovered.remove(&shard) {
                Some(s) => s,
                None => log
                    .bootstrap(shard, ConfState::from((voters.clone(), vec![])))
                    .map_err(|e| raft_err(shard, e))?,
            };
            let mut store = store;
            // The state machine restarts from its last checkpoint: the engine made every
            // entry up to it durable, and the sessions are the ones at it.
            let (applied, applied_term, sessions) = match store.applied().cloned() {
                Some(a) => {
                    let sessions = decode_sessions(&a.data).map_err(|e| raft_err(shard, e))?;
                    (a.index, a.term, sessions)
                }
                None => (0, 0, Sessions::default()),
            };
            log.align_with_state_machine(&mut store, applied, applied_term)
                .map_err(|e| raft_err(shard, e))?;
            if let Some(a) = store.applied().cloned() {
                store.set_snapshot(checkpoint_snapshot(&store, a.index, a.term, &a.data));
            }
            let replay_until = store.hard_state().commit;
            let config = opts.settings.config(opts.node, rank, voters.len(), applied);
            let logger = kv_raft::raft_logger(shard, opts.node);
            let node = RawNode::new(&config, store, &logger).map_err(|e| raft_err(shard, e))?;
            shards.insert(
                shard,
                Shard {
                    node,
                    sessions,
                    role: StateRole::Follower,
                    proposals: BTreeMap::new(),
                    reads_waiting: Vec::new(),
                    reads_asked: HashMap::new(),
                    lease: None,
                    lease_barred: 0,
                    reads_ready: Vec::new(),
                    submitted: applied,
                    in_engine: BTreeSet::new(),
                    last_term: applied_term,
                    checkpoint: (applied, applied_term),
                    checkpoint_seg: log.active_segment(),
                    capture: None,
                    replay_until,
                    incoming: None,
                    install_ops: 0,
                    install_failed: false,
                },
            );
        }
        if let Some(stray) = recovered.keys().next() {
            return Err(ServerError::Config(format!(
                "the raft log of thread {thread} holds shard {stray}, which this node's thread \
                 does not host: was the cluster file changed?"
            )));
        }
        log.sync()
            .map_err(|e| ServerError::Config(format!("raft log of thread {thread}: {e}")))?;
        let peers = peer_nodes
            .into_iter()
            .filter_map(|n| {
                cluster.node(n).map(|node| Peer {
                    node: n,
                    uri: opts
                        .peer_uris
                        .get(&n)
                        .cloned()
                        .unwrap_or_else(|| node.addr.to_string()),
                    session: None,
                    not_before: 0,
                })
            })
            .collect();
        Ok(Self {
            opts: opts.clone(),
            thread,
            log,
            shards,
            peers,
            last_tick: None,
            started: None,
            next_round: 1,
            applying: HashMap::new(),
            next_apply_tag: APPLY_TAG,
            outbox: BTreeMap::new(),
            held: Vec::new(),
            scratch: Vec::new(),
            failed: false,
            transfers: Vec::new(),
            snap_ops: HashMap::new(),
            next_transfer: 1,
            stats: ReplicaStats::default(),
        })
    }

    /// Counters.
    pub fn stats(&self) -> ReplicaStats {
        let mut st = self.stats;
        st.entries_held = self
            .shards
            .values()
            .map(|s| s.node.store().len() as u64)
            .sum();
        st.log_segments = self.log.segments() as u64;
        st
    }

    /// Whether engine tag `tag` is one of a write being applied.
    pub(crate) fn owns_tag(&self, tag: u64) -> bool {
        tag & APPLY_TAG != 0
    }

    /// Whether a replica has work for the next iteration (a ready, reads waiting for a
    /// read-index round): a sleeping thread wakes for it.
    pub(crate) fn wants_step(&self) -> bool {
        !self.held.is_empty()
            || self.shards.values().any(|s| {
                (s.node.has_ready() && s.incoming.is_none())
                    || (!s.reads_waiting.is_empty() && s.node.raft.commit_to_current_term())
                    || s.incoming
                        .as_ref()
                        .is_some_and(|i| i.msg.is_some() && s.install_ops == 0)
            })
            || self.transfers.iter().any(|t| !t.in_flight && !t.reading)
    }

    /// Nothing handed to the engine is outstanding.
    pub(crate) fn is_idle(&self) -> bool {
        self.applying.is_empty() && self.snap_ops.is_empty()
    }

    /// The shards of this thread.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.shards.keys().copied()
    }

    /// The state of each replica (what CLUSTER_STATUS answers).
    pub fn status(&self) -> Vec<ShardStatus> {
        self.shards
            .iter()
            .map(|(&shard, s)| {
                let r = &s.node.raft;
                ShardStatus {
                    shard,
                    role: match r.state {
                        StateRole::Follower => Role::Follower,
                        StateRole::Candidate => Role::Candidate,
                        StateRole::Leader => Role::Leader,
                        StateRole::PreCandidate => Role::PreCandidate,
                    },
                    node: self.opts.node,
                    term: r.term,
                    leader: r.leader_id,
                    commit: r.raft_log.committed,
                    applied: s.applied(),
                    last_index: r.raft_log.last_index(),
                    compacted: s.node.store().compacted().0,
                }
            })
            .collect()
    }

    /// The answer to a snapshot chunk sent by transfer `id`.
    fn on_chunk_answer(&mut self, id: u64, result: &Result<rpc::MsgBuf, rpc::RpcError>, now: u64) {
        let Some(t) = self.transfers.iter_mut().find(|t| t.id == id) else {
            return;
        };
        t.in_flight = false;
        let status = match result {
            Ok(resp) => {
                protocol::parse_response(resp.as_slice()).map(|r| (r.status, r.body.to_vec()))
            }
            Err(e) => {
                tracing::debug!(shard = t.shard, to = t.to, error = %e, "snapshot chunk lost");
                t.failed = true;
                return;
            }
        };
        match status {
            Ok((Status::Ok, _)) => {
                t.queue.pop_front();
            }
            Ok((Status::Overloaded, _)) => t.retry_at = now + BUSY_RETRY_NS,
            Ok((status, body)) => {
                tracing::warn!(shard = t.shard, to = t.to, ?status, why = %String::from_utf8_lossy(&body), "snapshot chunk refused");
                t.failed = true;
            }
            Err(e) => {
                tracing::warn!(shard = t.shard, to = t.to, error = %e, "bad answer to a snapshot chunk");
                t.failed = true;
            }
        }
    }

    /// The compaction point of shard `shard` after a checkpoint at `checkpoint`: the
    /// checkpoint, but on a leader no further than its slowest follower matched unless that
    /// is more than `reserve_entries` below, and never past a snapshot being sent.
    fn compaction_point(&self, shard: ShardId, s: &Shard, checkpoint: u64) -> u64 {
        let mut to = checkpoint;
        if s.node.raft.state == StateRole::Leader {
            let me = self.opts.node;
            let slowest = s
                .node
                .raft
                .prs()
                .iter()
                .filter(|(&id, _)| id != me)
                .map(|(_, p)| p.matched)
                .min();
            if let Some(m) = slowest {
                let floor = checkpoint.saturating_sub(self.opts.compaction.reserve_entries);
                to = to.min(m.max(floor));
            }
        }
        for t in self.transfers.iter().filter(|t| t.shard == shard) {
            to = to.min(t.index);
        }
        to
    }

    /// The answer to a RAFT request of ours on `session`: the messages its receiver had for
    /// this thread when it answered. A malformed one is dropped (Raft resends).
    fn on_raft_answer(&mut self, session: SessionId, data: &[u8], now: u64) {
        let Some(peer) = self.peers.iter().find(|p| p.session == Some(session)) else {
            return;
        };
        let peer = peer.node;
        let body = match protocol::parse_response(data) {
            Ok(r) if r.status == Status::Ok => r.body,
            Ok(r) => {
                tracing::debug!(peer, status = ?r.status, "raft request refused");
                return;
            }
            Err(e) => {
                tracing::warn!(peer, error = %e, "malformed answer to a raft request");
                return;
            }
        };
        if body.is_empty() {
            return;
        }
        match self.step_batch(body, Some(peer), now) {
            Ok(from) if from == peer => {}
            Ok(from) => tracing::warn!(peer, from, "raft answer from another node: dropped"),
            Err(e) => tracing::warn!(peer, error = %e, "malformed raft answer"),
        }
    }

    /// Steps the messages of a RAFT batch (a peer's request, or the answer to one of ours)
    /// into their replicas; returns the sender's node id. Messages for a shard not here, or
    /// claiming another sender than the batch, are dropped; a snapshot comes only in
    /// RAFT_SNAPSHOT chunks, after its data. With `sender`, a batch from another node is
    /// not stepped at all.
    fn step_batch(
        &mut self,
        data: &[u8],
        sender: Option<NodeId>,
        now: u64,
    ) -> Result<NodeId, kv_raft::wire::WireError> {
        let (from, msgs) = kv_raft::wire::decode_batch(data)?;
        if sender.is_some_and(|p| p != from) {
            return Ok(from);
        }
        let withhold_votes = self.withholds_votes(now);
        for (shard, m) in msgs {
            let Some(s) = self.shards.get_mut(&shard) else {
                continue;
            };
            if m.from != from || m.get_msg_type() == MessageType::MsgSnapshot {
                continue;
            }
            if withhold_votes
                && matches!(
                    m.get_msg_type(),
                    MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
                )
            {
                self.stats.votes_withheld += 1;
                continue;
            }
            if m.get_msg_type() == MessageType::MsgTransferLeader {
                s.lease = None;
                s.lease_barred = s.node.raft.term;
            }
            if let Err(e) = s.node.step(m) {
                tracing::debug!(shard, error = %e, "raft message refused");
            }
        }
        Ok(from)
    }

    /// [`ReadMode::Lease`]: before this node has run one election timeout, it may have
    /// answered a leader's heartbeat just before it (re)started, and that leader may hold a
    /// lease on the strength of it; raft-rs forgets the leader at restart and would vote.
    fn withholds_votes(&self, now: u64) -> bool {
        if self.opts.reads != ReadMode::Lease {
            return false;
        }
        let grace = (self.opts.settings.election_ticks as u64).saturating_mul(TICK_NS);
        self.started.is_none_or(|t| now < t.saturating_add(grace))
    }

    fn tick(&mut self, now: u64) {
        self.started.get_or_insert(now);
        let last = *self.last_tick.get_or_insert(now);
        let ticks = now.saturating_sub(last) / TICK_NS;
        if ticks == 0 {
            return;
        }
        self.last_tick = Some(last + ticks * TICK_NS);
        for s in self.shards.values_mut() {
            for _ in 0..ticks.min(MAX_TICKS) {
                s.node.tick();
            }
        }
    }
}

/// One iteration of the replicas of `rpc`'s thread (if it runs in cluster mode): sessions to
/// peers, completions of Raft requests, then [`ServerState::cluster_iteration`].
pub(crate) fn drive<T: Transport, B: Backend>(rpc: &mut Rpc<T, ServerState<B>>, now: u64) -> bool {
    let Some(mut c) = rpc.state_mut().cluster.take() else {
        return false;
    };
    let mut work = false;
    for p in &mut c.peers {
        let state = p.session.and_then(|s| rpc.session_state(s));
        match state {
            Some(SessionState::Connected | SessionState::Connecting) => {}
            Some(SessionState::Failed(_)) | None => {
                if let Some(s) = p.session.take() {
                    let _ = rpc.destroy_session(s);
                    p.not_before = now + REDIAL_NS;
                    work = true;
                }
                if now >= p.not_before {
                    match rpc.create_session(&p.uri, c.thread as u8) {
                        Ok(s) => p.session = Some(s),
                        Err(e) => {
                            tracing::debug!(peer = p.node, error = %e, "cannot open a session");
                            p.not_before = now + REDIAL_NS;
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
    while let Some(done) = rpc.poll_completion() {
        work = true;
        if done.req_type == op::RAFT_SNAPSHOT {
            c.on_chunk_answer(done.tag, &done.result, now);
        }
        if done.req_type == op::RAFT {
            if let Ok(resp) = &done.result {
                c.on_raft_answer(done.session, resp.as_slice(), now);
            }
        }
        let ctx = rpc.ctx();
        ctx.free_msg(done.req);
        if let Ok(resp) = done.result {
            ctx.free_msg(resp);
        }
    }
    // A fresh reading: a lease is checked against it (the loop's `now` was read before
    // this iteration's receive and handlers ran).
    let now = rpc.now_ns();
    let (st, ctx) = rpc.split();
    work |= st.cluster_iteration(&mut c, ctx, now);
    // Whatever the iteration did not answer (it stops early when the log failed).
    for (_, h) in std::mem::take(&mut c.held) {
        st.respond(ctx, h, Status::Ok, 0, 0, b"");
    }
    st.cluster = Some(c);
    work
}

impl<B: Backend> ServerState<B> {
    /// A request in cluster mode: Raft traffic, CLUSTER_STATUS, and GET / PUT / DELETE /
    /// SCAN. Returns whether it was handled here (INFO, STATS go the usual way).
    pub(crate) fn on_cluster_request(&mut self, ctx: &mut Ctx, req: &RpcRequest<'_>) -> bool {
        let Some(mut c) = self.cluster.take() else {
            return false;
        };
        let handled = self.cluster_request(&mut c, ctx, req);
        self.cluster = Some(c);
        handled
    }

    fn cluster_request(&mut self, c: &mut Replicas, ctx: &mut Ctx, req: &RpcRequest<'_>) -> bool {
        let h = req.handle;
        let dest = Dest::Single(h);
        match req.req_type {
            op::RAFT => {
                match c.step_batch(req.data, None, ctx.now_ns()) {
                    // Answered at the end of the iteration, with what it has for the sender.
                    Ok(from) if c.peers.iter().any(|p| p.node == from) => c.held.push((from, h)),
                    Ok(_) => self.respond(ctx, h, Status::Ok, 0, 0, b""),
                    Err(e) => {
                        self.stats.bad_requests += 1;
                        let msg = format!("bad raft batch: {e}");
                        self.respond(ctx, h, Status::BadRequest, 0, 0, msg.as_bytes());
                    }
                }
                return true;
            }
            op::RAFT_SNAPSHOT => {
                let now = ctx.now_ns();
                match self.receive_chunk(c, req.data, now) {
                    Ok(()) => self.respond(ctx, h, Status::Ok, 0, 0, b""),
                    Err((status, why)) => {
                        if status == Status::BadRequest {
                            self.stats.bad_requests += 1;
                            tracing::warn!(error = %why, "snapshot chunk refused");
                        }
                        self.respond(ctx, h, status, 0, 0, why.as_bytes());
                    }
                }
                return true;
            }
            op::CLUSTER_STATUS => {
                if let Err(e) = protocol::parse_cluster_status(req.data) {
                    self.stats.bad_requests += 1;
                    self.respond(ctx, h, e.status(), 0, 0, e.to_string().as_bytes());
                    return true;
                }
                let st = c.status();
                let mut body = Vec::with_capacity(st.len() * protocol::SHARD_STATUS_LEN);
                for s in &st {
                    s.encode(&mut body);
                }
                self.respond(ctx, h, Status::Ok, 0, st.len() as u32, &body);
                return true;
            }
            op::GET | op::PUT | op::DELETE | op::SCAN | op::BATCH => {}
            _ => return false,
        }
        if req.req_type == op::BATCH {
            let msg = b"cluster mode takes no BATCH yet: send requests one by one".to_vec();
            self.answer(ctx, dest, Status::BadRequest, msg);
            return true;
        }
        let parsed = protocol::parse_request(req.req_type, req.data);
        let Some(parsed) = self.admit(ctx, dest, parsed) else {
            return true;
        };
        let Request::Op(o) = parsed else {
            return false;
        };
        let Some(ext) = protocol::request_ext(req.data) else {
            let msg = b"cluster mode: GET, PUT, DELETE and SCAN need the cluster extension \
                        (use a cluster client, e.g. kv-cli --cluster FILE)"
                .to_vec();
            self.answer(ctx, dest, Status::BadRequest, msg);
            return true;
        };
        self.cluster_op(c, ctx, dest, o, &ext);
        true
    }

    fn cluster_op(
        &mut self,
        c: &mut Replicas,
        ctx: &mut Ctx,
        dest: Dest,
        o: Op<&[u8]>,
        ext: &ClusterExt,
    ) {
        let cluster = c.opts.cluster.clone();
        if ext.fingerprint != 0 && ext.fingerprint != cluster.fingerprint() {
            let msg = format!(
                "the client's cluster file (fingerprint {:08x}) is not this cluster's ({:08x})",
                ext.fingerprint,
                cluster.fingerprint()
            );
            self.answer(ctx, dest, Status::BadRequest, msg.into_bytes());
            return;
        }
        let shard = ext.shard;
        if !matches!(o, Op::Scan { .. }) && cluster.shard_of(o.key()) != shard {
            let msg = format!(
                "the key belongs to shard {}, not {shard}",
                cluster.shard_of(o.key())
            );
            self.answer(ctx, dest, Status::BadRequest, msg.into_bytes());
            return;
        }
        if c.failed {
            let msg = b"this thread's raft log failed; the replicas are stopped".to_vec();
            self.answer(ctx, dest, Status::Internal, msg);
            return;
        }
        let Some(s) = c.shards.get_mut(&shard) else {
            let msg = format!(
                "shard {shard} has no replica on node {} thread {}",
                c.opts.node, c.thread
            );
            self.answer(ctx, dest, Status::BadRequest, msg.into_bytes());
            return;
        };
        let now = ctx.now_ns();
        match o {
            Op::Get { key } if ext.local => {
                self.run_read(dest, shard, ReadOp::Get(key.to_vec()), &cluster)
            }
            Op::Scan { start, max } if ext.local => {
                let max = cap_scan(max);
                self.run_read(
                    dest,
                    shard,
                    ReadOp::Scan {
                        start: start.to_vec(),
                        max,
                    },
                    &cluster,
                )
            }
            Op::Get { .. } | Op::Scan { .. } if s.node.raft.state != StateRole::Leader => {
                let leader = s.leader();
                self.not_leader(ctx, dest, leader);
            }
            Op::Get { key } => s.reads_waiting.push(Read {
                dest,
                op: ReadOp::Get(key.to_vec()),
                since: now,
            }),
            Op::Scan { start, max } => s.reads_waiting.push(Read {
                dest,
                op: ReadOp::Scan {
                    start: start.to_vec(),
                    max: cap_scan(max),
                },
                since: now,
            }),
            Op::Put { .. } | Op::Delete { .. } if s.node.raft.state != StateRole::Leader => {
                let leader = s.leader();
                self.not_leader(ctx, dest, leader);
            }
            Op::Put { .. } | Op::Delete { .. } if s.proposals.len() >= MAX_PROPOSALS => {
                let msg = b"too many writes waiting on this shard".to_vec();
                self.answer(ctx, dest, Status::Overloaded, msg);
            }
            Op::Put { key, value } => self.propose(c, ctx, dest, shard, op::PUT, key, value, ext),
            Op::Delete { key } => self.propose(c, ctx, dest, shard, op::DELETE, key, b"", ext),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn propose(
        &mut self,
        c: &mut Replicas,
        ctx: &mut Ctx,
        dest: Dest,
        shard: ShardId,
        code: u8,
        key: &[u8],
        value: &[u8],
        ext: &ClusterExt,
    ) {
        let Some(s) = c.shards.get_mut(&shard) else {
            return;
        };
        let id = RequestId {
            client: ext.client,
            seq: ext.seq,
            first_unanswered: ext.first_unanswered,
        };
        let data = entry::encode(code, &id, key, value);
        let before = s.node.raft.raft_log.last_index();
        match s.node.propose(Vec::new(), data) {
            Ok(()) => {
                let index = s.node.raft.raft_log.last_index();
                if index == before {
                    let leader = s.leader();
                    self.not_leader(ctx, dest, leader);
                    return;
                }
                s.proposals.insert(index, (s.node.raft.term, dest));
            }
            Err(e) => {
                tracing::debug!(shard, error = %e, "proposal dropped");
                let leader = s.leader();
                self.not_leader(ctx, dest, leader);
            }
        }
    }

    fn not_leader(&mut self, ctx: &mut Ctx, dest: Dest, leader: u64) {
        self.answer(
            ctx,
            dest,
            Status::NotLeader,
            protocol::encode_not_leader(leader).to_vec(),
        );
    }

    /// Runs a read on the engine now; its answer goes out through the usual completion path.
    fn run_read(&mut self, dest: Dest, shard: ShardId, op: ReadOp, cluster: &Cluster) {
        let tag = self.next_tag;
        self.next_tag += 1;
        match op {
            ReadOp::Get(key) => {
                self.ops.insert(
                    tag,
                    PendingOp {
                        dest,
                        op: op::GET,
                        scan_max: 0,
                        write_hash: None,
                    },
                );
                self.worker.submit(Op::Get { key }, tag);
            }
            ReadOp::Scan { start, max } => {
                self.ops.insert(
                    tag,
                    PendingOp {
                        dest,
                        op: op::SCAN,
                        scan_max: max,
                        write_hash: None,
                    },
                );
                let keep = |k: &[u8]| cluster.shard_of(k) == shard;
                self.worker
                    .submit_scan_where(&start, max as usize, &keep, tag);
            }
        }
    }

    /// One iteration of the replicas (see the [module documentation](self)).
    pub(crate) fn cluster_iteration(&mut self, c: &mut Replicas, ctx: &mut Ctx, now: u64) -> bool {
        if c.failed {
            return false;
        }
        let mut work = false;
        c.tick(now);
        let cluster = c.opts.cluster.clone();
        // Reads first, right after `now` was read (a lease is checked against it): under a
        // lease at once, else one read-index round per shard for everything waiting; stale
        // rounds fail.
        let lease_mode = c.opts.reads == ReadMode::Lease;
        let lease_ns = c.opts.settings.lease_ns(TICK_NS);
        let mut answers: Vec<(Dest, u64)> = Vec::new();
        let mut stopping: Vec<Dest> = Vec::new();
        for s in c.shards.values_mut() {
            if self.stopping {
                stopping.extend(s.reads_waiting.drain(..).map(|r| r.dest));
                stopping.extend(s.proposals.values().map(|&(_, d)| d));
                s.proposals.clear();
            }
            // raft-rs drops (silently) a read index asked of a leader that has not yet
            // committed an entry of its term: the reads wait here until it has (its first
            // entry commits one round trip after the election), or time out below.
            if !s.reads_waiting.is_empty() && s.node.raft.commit_to_current_term() {
                work = true;
                let r = &s.node.raft;
                let lease_left = match s.lease {
                    Some((term, until))
                        if lease_mode
                            && term == r.term
                            && term != s.lease_barred
                            && r.state == StateRole::Leader
                            && r.lead_transferee.is_none() =>
                    {
                        until.saturating_sub(now)
                    }
                    _ => 0,
                };
                let ask = if lease_left > 0 {
                    // No other leader can have committed anything: the reads see every
                    // write up to this commit index once the engine applied it.
                    let index = r.raft_log.committed;
                    c.stats.lease_reads += s.reads_waiting.len() as u64;
                    s.reads_ready
                        .extend(s.reads_waiting.drain(..).map(|read| (index, read)));
                    // Renewed ahead of time while reads keep coming: one round, no reads.
                    (lease_left < lease_ns / 2 && s.reads_asked.is_empty()).then(Vec::new)
                } else {
                    Some(std::mem::take(&mut s.reads_waiting))
                };
                if let Some(reads) = ask {
                    let round = c.next_round;
                    c.next_round += 1;
                    c.stats.read_rounds += 1;
                    let term = s.node.raft.term;
                    s.node.read_index(round.to_le_bytes().to_vec());
                    s.reads_asked.insert(
                        round,
                        Round {
                            asked_at: now,
                            term,
                            reads,
                        },
                    );
                }
            }
            let leader = s.leader();
            if s.reads_waiting
                .first()
                .is_some_and(|r| now.saturating_sub(r.since) > READ_TIMEOUT_NS)
            {
                answers.extend(s.reads_waiting.drain(..).map(|r| (r.dest, leader)));
            }
            s.reads_asked.retain(|_, round| {
                let stale = now.saturating_sub(round.asked_at) > READ_TIMEOUT_NS;
                if stale {
                    answers.extend(round.reads.drain(..).map(|r| (r.dest, leader)));
                }
                !stale
            });
        }
        work |= self.finish_installs(c, now);
        for (dest, leader) in answers.drain(..) {
            self.not_leader(ctx, dest, leader);
        }
        for dest in stopping {
            let msg = b"the server is shutting down".to_vec();
            self.answer(ctx, dest, Status::ShuttingDown, msg);
        }
        // Readies.
        let mut persisted: Vec<(ShardId, u64, Vec<Message>)> = Vec::new();
        let shard_ids: Vec<ShardId> = c.shards.keys().copied().collect();
        for shard in shard_ids {
            let Some(s) = c.shards.get_mut(&shard) else {
                continue;
            };
            // A shard receiving a snapshot is frozen: nothing applied until it is installed.
            if !s.node.has_ready() || s.incoming.is_some() {
                continue;
            }
            work = true;
            let mut rd = s.node.ready();
            if let Some(ss) = rd.ss() {
                let was_leader = s.role == StateRole::Leader;
                s.role = ss.raft_state;
                if was_leader && ss.raft_state != StateRole::Leader {
                    let leader = ss.leader_id;
                    for (_, (_, d)) in std::mem::take(&mut s.proposals) {
                        answers.push((d, leader));
                    }
                    for r in s.reads_waiting.drain(..) {
                        answers.push((r.dest, leader));
                    }
                    for (_, round) in s.reads_asked.drain() {
                        answers.extend(round.reads.into_iter().map(|r| (r.dest, leader)));
                    }
                    s.lease = None;
                    for (_, r) in s.reads_ready.drain(..) {
                        answers.push((r.dest, leader));
                    }
                }
                if ss.raft_state == StateRole::Leader && !was_leader {
                    tracing::info!(shard, node = c.opts.node, term = s.node.raft.term, "leader");
                }
            }
            for m in rd.take_messages() {
                c.outbox.entry(m.to).or_default().push((shard, m));
            }
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                if let Err(e) = self.install_snapshot(c, shard, &snap) {
                    tracing::error!(thread = c.thread, shard, error = %e, "installing a snapshot failed: replicas stop");
                    c.failed = true;
                    return work;
                }
            }
            let Some(s) = c.shards.get_mut(&shard) else {
                continue;
            };
            if let Err(e) = c.log.write_ready(s.node.mut_store(), &rd) {
                tracing::error!(thread = c.thread, error = %e, "raft log failed: replicas stop");
                c.failed = true;
                return work;
            }
            for rs in rd.take_read_states() {
                let round = rs
                    .request_ctx
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .map_or(0, u64::from_le_bytes);
                if let Some(asked) = s.reads_asked.remove(&round) {
                    // A quorum heard from this leader after the round was asked.
                    if lease_mode
                        && asked.term == s.node.raft.term
                        && asked.term != s.lease_barred
                        && s.node.raft.state == StateRole::Leader
                    {
                        let until = asked.asked_at.saturating_add(lease_ns);
                        let held = s.lease.filter(|&(t, _)| t == asked.term);
                        let until = held.map_or(until, |(_, u)| u.max(until));
                        s.lease = Some((asked.term, until));
                    }
                    s.reads_ready
                        .extend(asked.reads.into_iter().map(|r| (rs.index, r)));
                }
            }
            let committed = rd.take_committed_entries();
            persisted.push((shard, rd.number(), rd.take_persisted_messages()));
            s.node.advance_append_async(rd);
            for e in committed {
                self.apply_entry(c, ctx, shard, &e, &mut answers);
            }
        }
        for (dest, leader) in answers.drain(..) {
            self.not_leader(ctx, dest, leader);
        }
        if !persisted.is_empty() || c.log.has_pending() {
            if let Err(e) = c.log.sync() {
                tracing::error!(thread = c.thread, error = %e, "raft log sync failed: replicas stop");
                c.failed = true;
                return true;
            }
        }
        for (shard, number, msgs) in persisted {
            if let Some(s) = c.shards.get_mut(&shard) {
                s.node.on_persist_ready(number);
                for m in msgs {
                    c.outbox.entry(m.to).or_default().push((shard, m));
                }
            }
        }
        // Reads whose state the engine has caught up with.
        let mut run: Vec<(ShardId, Read)> = Vec::new();
        for (&shard, s) in c.shards.iter_mut() {
            s.node.advance_apply_to(s.submitted);
            let applied = s.applied();
            if s.reads_ready.iter().any(|(i, _)| *i <= applied) {
                let (ready, wait): (Vec<_>, Vec<_>) =
                    s.reads_ready.drain(..).partition(|(i, _)| *i <= applied);
                s.reads_ready = wait;
                run.extend(ready.into_iter().map(|(_, r)| (shard, r)));
            }
        }
        for (shard, r) in run {
            work = true;
            self.run_read(r.dest, shard, r.op, &cluster);
        }
        work |= self.record_checkpoints(c);
        work |= self.pump_transfers(c, ctx, now);
        work |= self.send_raft(c, ctx);
        work
    }

    /// Applies one committed entry: de-duplication, then the engine (or nothing).
    fn apply_entry(
        &mut self,
        c: &mut Replicas,
        ctx: &mut Ctx,
        shard: ShardId,
        e: &kv_raft::raft::eraftpb::Entry,
        answers: &mut Vec<(Dest, u64)>,
    ) {
        let Some(s) = c.shards.get_mut(&shard) else {
            return;
        };
        if e.index <= s.submitted {
            return;
        }
        s.submitted = e.index;
        s.last_term = e.term;
        if e.index <= s.replay_until {
            c.stats.replayed += 1;
        }
        // Who waits for this index: the proposer, if the entry is the one it proposed.
        let mut client = None;
        while let Some((&i, &(term, d))) = s.proposals.first_key_value() {
            if i > e.index {
                break;
            }
            s.proposals.remove(&i);
            if i == e.index && term == e.term {
                client = Some(d);
            } else {
                // Its index holds another term's entry (or was skipped): not applied.
                answers.push((d, s.leader()));
            }
        }
        let Some(w) = entry::decode(&e.data) else {
            if !e.data.is_empty() {
                tracing::error!(shard, index = e.index, "undecodable entry skipped");
            }
            if let Some(d) = client {
                self.answer(ctx, d, Status::Internal, b"undecodable entry".to_vec());
            }
            return;
        };
        if w.id.client != 0 {
            match s.sessions.check(&w.id) {
                Dedup::New => s.sessions.record(&w.id, ANSWER_PENDING, e.index),
                Dedup::Applied(code) => {
                    if let Some(d) = client {
                        let status = if code == ANSWER_NOT_FOUND {
                            Status::NotFound
                        } else {
                            Status::Ok
                        };
                        self.answer(ctx, d, status, Vec::new());
                    }
                    return;
                }
                Dedup::Forgotten => {
                    if let Some(d) = client {
                        let msg = b"a retried write too old to tell whether it was applied: \
                                    read the key to find out"
                            .to_vec();
                        self.answer(ctx, d, Status::Internal, msg);
                    }
                    return;
                }
            }
        }
        let tag = c.next_apply_tag;
        c.next_apply_tag += 1;
        s.in_engine.insert(e.index);
        c.applying.insert(
            tag,
            Applying {
                shard,
                index: e.index,
                op: w.op,
                id: w.id,
                client,
            },
        );
        let op = if w.op == op::PUT {
            Op::Put {
                key: w.key,
                value: w.value,
            }
        } else {
            Op::Delete { key: w.key }
        };
        self.worker.submit(op, tag);
    }

    /// The engine completed a write being applied.
    pub(crate) fn on_cluster_engine_done(&mut self, ctx: &mut Ctx, done: engine::Completion) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        if c.snap_ops.contains_key(&done.tag) {
            let Some(mut c) = self.cluster.take() else {
                return;
            };
            self.on_snap_done(&mut c, done.tag, done.result);
            self.cluster = Some(c);
            return;
        }
        let Some(a) = c.applying.remove(&done.tag) else {
            return;
        };
        if let Some(s) = c.shards.get_mut(&a.shard) {
            s.in_engine.remove(&a.index);
            if a.id.client != 0 {
                let code = match &done.result {
                    Ok(Reply::NotFound) => ANSWER_NOT_FOUND,
                    Ok(Reply::Deleted) => ANSWER_DELETED,
                    _ => ANSWER_WRITTEN,
                };
                if s.sessions.check(&a.id) == Dedup::Applied(ANSWER_PENDING) {
                    s.sessions.record(&a.id, code, a.index);
                }
            }
        }
        match a.op {
            op::PUT => self.stats.puts += 1,
            _ => self.stats.deletes += 1,
        }
        let (status, body) = match done.result {
            Ok(Reply::NotFound) => (Status::NotFound, Vec::new()),
            Ok(_) => (Status::Ok, Vec::new()),
            Err(e) => {
                // The replicas' state machines now differ from the log: a restart replays it.
                tracing::error!(shard = a.shard, index = a.index, error = %e, "applying a write failed");
                (crate::state::status_of(&e), e.to_string().into_bytes())
            }
        };
        if let Some(d) = a.client {
            self.answer(ctx, d, status, body);
        }
    }

    /// Sends the iteration's Raft messages: one RAFT request per peer thread.
    fn send_raft(&mut self, c: &mut Replicas, ctx: &mut Ctx) -> bool {
        if c.outbox.is_empty() {
            return false;
        }
        let now = ctx.now_ns();
        let outbox = std::mem::take(&mut c.outbox);
        for (to, mut msgs) in outbox {
            // Snapshots go as a transfer of chunks, their data first.
            if msgs
                .iter()
                .any(|(_, m)| m.get_msg_type() == MessageType::MsgSnapshot)
            {
                let (snaps, rest): (Vec<_>, Vec<_>) = msgs
                    .into_iter()
                    .partition(|(_, m)| m.get_msg_type() == MessageType::MsgSnapshot);
                for (shard, m) in snaps {
                    c.start_transfer(shard, m, now);
                }
                msgs = rest;
                if msgs.is_empty() {
                    continue;
                }
            }
            c.scratch.clear();
            kv_raft::wire::encode_batch(
                c.opts.node,
                msgs.iter().map(|(s, m)| (*s, m)),
                &mut c.scratch,
            );
            // The answer to a request of `to`'s, if one waits: no request of our own.
            if let Some(i) = c.held.iter().position(|&(n, _)| n == to) {
                let (_, h) = c.held.swap_remove(i);
                self.respond(ctx, h, Status::Ok, 0, 0, &c.scratch);
                c.stats.raft_answers += 1;
                continue;
            }
            let session = c
                .peers
                .iter()
                .find(|p| p.node == to)
                .and_then(|p| p.session)
                .filter(|&s| ctx.pending_requests(s) < MAX_PEER_INFLIGHT);
            let Some(session) = session else {
                // Dropped: Raft resends. A leader probes the peer instead of streaming to it.
                for (shard, _) in &msgs {
                    if let Some(s) = c.shards.get_mut(shard) {
                        if s.node.raft.state == StateRole::Leader {
                            s.node.report_unreachable(to);
                        }
                    }
                }
                continue;
            };
            let m = ctx.msg_from(&c.scratch);
            // A short deadline: Raft resends what is lost, and requests stuck on a peer that
            // went away must not hold the window.
            let deadline = Some(std::time::Duration::from_millis(RAFT_DEADLINE_MS));
            match ctx.enqueue_request_with_deadline(session, op::RAFT, m, 0, deadline) {
                Ok(()) => c.stats.raft_requests += 1,
                Err(e) => tracing::debug!(peer = to, error = %e, "raft messages not sent"),
            }
        }
        true
    }
}

fn cap_scan(max: usize) -> u32 {
    u32::try_from(max)
        .unwrap_or(u32::MAX)
        .min(protocol::MAX_SCAN_ITEMS)
}
