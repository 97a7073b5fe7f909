//! The raft-rs settings of a replica.
//!
//! **Election timeouts by rank.** raft-rs draws each election timeout from the thread's
//! random generator, which no test can seed. Instead each replica gets a fixed timeout from
//! its rank in the shard's replica list (see `kv_cluster::Cluster::replicas`): rank `r` of
//! `R` waits `E + r·E/R` ticks, so timeouts differ by at least `E/R` ticks within a shard
//! (no split votes between replicas that lost their leader at the same moment), the rank-0
//! replica — which placement spreads evenly over nodes and threads — is the one that usually
//! wins, and a simulation is deterministic. raft-rs is given the one-value range
//! `[t, t + 1)` so that its own draw is always `t`.

use raft::{Config, ReadOnlyOption};

/// Settings shared by every replica of a node.
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    /// Ticks between heartbeats (default 10: with 1 ms ticks, every 10 ms).
    pub heartbeat_ticks: usize,
    /// Base election timeout E in ticks (default 100): a follower that hears no leader for
    /// `E..2E` ticks, by rank, campaigns; a leader that hears no quorum for E steps down.
    pub election_ticks: usize,
    /// Most bytes of entries per append message (default 1 MiB; raft-rs's default 0 sends
    /// one entry per message).
    pub max_size_per_msg: u64,
    /// Most append messages in flight to one follower (default 256).
    pub max_inflight_msgs: usize,
    /// How reads are confirmed (default [`ReadOnlyOption::Safe`]: ReadIndex, one heartbeat
    /// round with a quorum; `LeaseBased` trusts clocks to advance at the same rate).
    pub read_only: ReadOnlyOption,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            heartbeat_ticks: 10,
            election_ticks: 100,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            read_only: ReadOnlyOption::Safe,
        }
    }
}

impl ReplicaSettings {
    /// The election timeout in ticks of the replica of rank `rank` among `replicas`.
    ///
    /// ```
    /// let s = kv_raft::ReplicaSettings::default();
    /// assert_eq!((0..3).map(|r| s.election_timeout(r, 3)).collect::<Vec<_>>(), [100, 133, 166]);
    /// ```
    pub fn election_timeout(&self, rank: usize, replicas: usize) -> usize {
        let e = self.election_ticks;
        e + rank.min(replicas.saturating_sub(1)) * e / replicas.max(1)
    }

    /// The raft-rs configuration of replica `id` (its node's id), of rank `rank` among the
    /// shard's `replicas`, restarting with `applied` entries applied to its state machine:
    /// pre-vote and check-quorum on, the timeout of its rank, and no append sent only to
    /// announce a new commit index (followers learn it from the next append or heartbeat:
    /// two messages per follower and write fewer, followers apply up to a heartbeat later).
    pub fn config(&self, id: u64, rank: usize, replicas: usize, applied: u64) -> Config {
        let t = self.election_timeout(rank, replicas);
        Config {
            id,
            election_tick: self.election_ticks,
            heartbeat_tick: self.heartbeat_ticks,
            min_election_tick: t,
            max_election_tick: t + 1,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            read_only_option: self.read_only,
            skip_bcast_commit: true,
            ..Config::default()
        }
    }
}
