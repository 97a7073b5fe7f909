//! Unit tests of the replicas of one thread that need no rpc endpoint: messages stepped
//! straight into [`Replicas`].
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use super::*;
use kv_raft::SimFs;

/// One shard on three nodes, one thread each.
fn cluster() -> Cluster {
    let mut toml = String::from("shards = 1\nreplication = 3\nthreads = 1\n");
    for n in 1..=3 {
        toml.push_str(&format!(
            "\n[[node]]\nid = {n}\naddr = \"127.0.0.1:{}\"\n",
            31860 + n
        ));
    }
    Cluster::from_toml_str(&toml).unwrap()
}

/// Node 2's replicas, freshly (re)started, reading in `reads` mode.
fn replicas(reads: ReadMode) -> Replicas {
    let mut opts = ClusterOptions::new(cluster(), 2);
    opts.reads = reads;
    let fs = SimFs::new(1);
    Replicas::open_in(AnyDir::new(fs.dir("t0")), &opts, 0).unwrap()
}

/// A vote (or pre-vote) request of node 3 for shard 0, one term ahead, with a log far
/// ahead of the replica's: raft-rs grants it unless it is withheld.
fn campaign(r: &Replicas, kind: MessageType) -> Vec<u8> {
    let term = r.shards[&0].node.raft.term;
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = 3;
    m.to = 2;
    m.term = term + 1;
    m.log_term = term + 50;
    m.index = 1_000;
    let mut out = Vec::new();
    kv_raft::wire::encode_batch(3, std::iter::once((0, &m)), &mut out);
    out
}

/// Whether the replica of shard 0 has answered node 3's campaign with a granted vote.
fn granted(r: &Replicas, kind: MessageType) -> bool {
    r.shards[&0]
        .node
        .raft
        .msgs
        .iter()
        .any(|m| m.get_msg_type() == kind && m.to == 3 && !m.reject)
}

const MS: u64 = 1_000_000;

/// A restarted node may have answered a leader's heartbeat just before it went down, and
/// that leader may be serving reads under a lease resting on that answer; raft-rs forgot
/// the leader, so it would vote for anyone at once. In lease mode the node drops vote and
/// pre-vote requests for one election timeout after its first tick, then votes normally.
#[test]
fn with_lease_reads_a_restarted_node_withholds_votes_for_one_election_timeout() {
    let grace = ReplicaSettings::default().election_ticks as u64 * TICK_NS;
    let kinds = [
        (
            MessageType::MsgRequestPreVote,
            MessageType::MsgRequestPreVoteResponse,
        ),
        (
            MessageType::MsgRequestVote,
            MessageType::MsgRequestVoteResponse,
        ),
    ];
    for (ask, answer) in kinds {
        let start = 5_000 * MS;
        let mut r = replicas(ReadMode::Lease);
        r.tick(start);
        let term = r.shards[&0].node.raft.term;
        for at in [start, start + MS, start + grace - 1] {
            let batch = campaign(&r, ask);
            assert_eq!(r.step_batch(&batch, None, at).unwrap(), 3);
            assert!(!granted(&r, answer), "{ask:?} granted {} ns in", at - start);
        }
        assert_eq!(r.stats.votes_withheld, 3, "{ask:?}");
        assert_eq!(r.shards[&0].node.raft.term, term, "{ask:?} moved the term");
        // One election timeout after the first tick the replica votes again.
        let batch = campaign(&r, ask);
        r.step_batch(&batch, None, start + grace).unwrap();
        assert!(granted(&r, answer), "{ask:?} not granted after the grace");
        assert_eq!(r.stats.votes_withheld, 3);
    }
}

/// With ReadIndex no leader relies on a lease: a restarted node votes at once.
#[test]
fn with_read_index_a_restarted_node_votes_at_once() {
    let mut r = replicas(ReadMode::Index);
    r.tick(5_000 * MS);
    let batch = campaign(&r, MessageType::MsgRequestPreVote);
    r.step_batch(&batch, None, 5_000 * MS + MS).unwrap();
    assert!(granted(&r, MessageType::MsgRequestPreVoteResponse));
    assert_eq!(r.stats.votes_withheld, 0);
}

/// A leadership transfer ends leases for the rest of the term: raft-rs's `MsgTimeoutNow`
/// may reach the target however late, and the others then vote for it whatever they heard.
#[test]
fn a_leadership_transfer_ends_the_lease_for_the_term() {
    let mut r = replicas(ReadMode::Lease);
    r.tick(5_000 * MS);
    let term = r.shards[&0].node.raft.term;
    r.shards.get_mut(&0).unwrap().lease = Some((term, u64::MAX));
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgTransferLeader);
    m.from = 3;
    m.to = 2;
    m.term = term;
    let mut batch = Vec::new();
    kv_raft::wire::encode_batch(3, std::iter::once((0, &m)), &mut batch);
    r.step_batch(&batch, None, 5_001 * MS).unwrap();
    let s = &r.shards[&0];
    assert_eq!((s.lease, s.lease_barred), (None, term));
}
