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
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            heartbeat_ticks: 10,
            election_ticks: 100,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
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

    /// How long a leader whose ticks are `tick_ns` long may trust that no other leader
    /// exists after a quorum answered a heartbeat it sent at time `s`: until `s` plus this
    /// many nanoseconds, measured on its own clock.
    ///
    /// Why it holds: with check-quorum on, raft-rs makes a replica that heard from its
    /// leader refuse votes and pre-votes (other than a leadership transfer's) for
    /// `election_ticks` of its own ticks; a quorum that answered the heartbeat heard from
    /// the leader after `s`, and any new leader needs a vote from one of them. The lease is
    /// one tick shorter (a replica's first tick may come at once after the heartbeat) and
    /// 10% shorter again, for clocks that run at different rates. A replica that restarts
    /// forgets whom it heard from, so it must not vote for `election_ticks` after it starts
    /// (the server drops vote requests that long). Leadership transfers void the lease.
    ///
    /// ```
    /// let s = kv_raft::ReplicaSettings::default();
    /// // 1 ms ticks, the 100-tick election timeout: 89.1 ms.
    /// assert_eq!(s.lease_ns(1_000_000), 89_100_000);
    /// ```
    pub fn lease_ns(&self, tick_ns: u64) -> u64 {
        let ticks = self.election_ticks.saturating_sub(1) as u64;
        ticks.saturating_mul(tick_ns) / 10 * 9
    }

    /// The raft-rs configuration of replica `id` (its node's id), of rank `rank` among the
    /// shard's `replicas`, restarting with `applied` entries applied to its state machine:
    /// pre-vote and check-quorum on, the timeout of its rank, and no append sent only to
    /// announce a new commit index (followers learn it from the next append or heartbeat:
    /// two messages per follower and write fewer, followers apply up to a heartbeat later).
    ///
    /// raft-rs always confirms a read index with a heartbeat round (`ReadOnlyOption::Safe`).
    /// Its `LeaseBased` option is not offered: it answers from the leader's role alone, and
    /// a leader that lost its quorum keeps that role for up to two election timeouts (it
    /// checks the quorum once per timeout) while the others may elect a new one after one.
    /// A server that wants lease reads keeps its own lease (see [`Self::lease_ns`]).
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
            read_only_option: ReadOnlyOption::Safe,
            skip_bcast_commit: true,
            ..Config::default()
        }
    }
}
