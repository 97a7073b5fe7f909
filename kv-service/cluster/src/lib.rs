//! `kv-cluster`: the cluster file of a replicated KV service and where every shard replica
//! lives.
//!
//! A cluster is a fixed set of nodes (each a `kv-service` process with an id and an rpc
//! address), a number of shards, a replication factor and a number of server threads per
//! node. Every key belongs to one shard ([`Cluster::shard_of`]: `fnv1a64(key) mod shards`,
//! the hash the KV protocol partitions with); every shard is a Raft group of `replication` replicas on
//! distinct nodes; and every replica runs on one fixed server thread of its node, the same
//! thread number on every node, so that a shard's Raft traffic always flows between the same
//! threads.
//!
//! The cluster file is TOML:
//!
//! ```toml
//! shards = 6          # Raft groups; a multiple of `threads`
//! replication = 3     # replicas per shard (default 3)
//! threads = 2         # server threads per node (default 2)
//!
//! [[node]]
//! id = 1              # Raft peer id, >= 1, unique
//! addr = "127.0.0.1:31861"
//!
//! [[node]]
//! id = 2
//! addr = "127.0.0.1:31862"
//!
//! [[node]]
//! id = 3
//! addr = "127.0.0.1:31863"
//! ```
//!
//! Placement is a pure function of the file (see [`Cluster::replicas`]), so every node and
//! every client computes the same map without talking to anyone. It is part of the data
//! format: the node ids, `shards`, `replication` and `threads` must not change once data
//! exists ([`Cluster::fingerprint`] covers exactly these); addresses may.
//!
//! ```
//! use kv_cluster::Cluster;
//!
//! let cluster = Cluster::from_toml_str(r#"
//!     shards = 6
//!     threads = 2
//!     [[node]]
//!     id = 1
//!     addr = "127.0.0.1:31861"
//!     [[node]]
//!     id = 2
//!     addr = "127.0.0.1:31862"
//!     [[node]]
//!     id = 3
//!     addr = "127.0.0.1:31863"
//! "#)?;
//! assert_eq!(cluster.replication(), 3);
//! // Shard 4 lives on thread 0 of its nodes; its first replica is the preferred leader.
//! assert_eq!(cluster.thread_of(4), 0);
//! assert_eq!(cluster.replicas(4).collect::<Vec<_>>(), vec![2, 3, 1]);
//! // Node 1 hosts every shard (3 replicas on 3 nodes); on thread 1: shards 1, 3 and 5.
//! assert_eq!(cluster.shards_on(1, 1).collect::<Vec<_>>(), vec![1, 3, 5]);
//! # Ok::<(), kv_cluster::ClusterError>(())
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A node's id: its Raft peer id in every shard it hosts (never 0, which Raft reserves).
pub type NodeId = u64;

/// A shard's number, `0..shards`.
pub type ShardId = u32;

/// Replication factor when the file does not say.
pub const DEFAULT_REPLICATION: usize = 3;

/// Server threads per node when the file does not say (the server's default).
pub const DEFAULT_THREADS: usize = 2;

/// Most shards a cluster may have.
pub const MAX_SHARDS: u32 = 1 << 16;

/// Most nodes a cluster may have.
pub const MAX_NODES: usize = 1024;

/// Most server threads per node (a thread is an rpc endpoint id, one byte).
pub const MAX_THREADS: usize = 255;

/// Largest replication factor: every write goes to this many nodes, and a Raft group of more
/// than 7 buys little availability for its cost.
pub const MAX_REPLICATION: usize = 7;

/// Why a cluster file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The file could not be read.
    #[error("cannot read the cluster file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML of the expected shape (unknown or missing fields, wrong
    /// types).
    #[error("cluster file: {0}")]
    Parse(#[from] toml::de::Error),
    /// The file parses but describes no valid cluster.
    #[error("cluster file: {0}")]
    Invalid(String),
}

/// One node of the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's id (≥ 1).
    pub id: NodeId,
    /// Its rpc session-management address, `IP:PORT`: where clients and the other nodes'
    /// server threads connect.
    pub addr: SocketAddr,
}

/// A validated cluster description and its placement function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cluster {
    /// Sorted by id; placement indexes this order.
    nodes: Vec<Node>,
    shards: u32,
    replication: usize,
    threads: usize,
}

/// The file's shape (serde).
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct File {
    shards: u32,
    #[serde(default = "default_replication")]
    replication: usize,
    #[serde(default = "default_threads")]
    threads: usize,
    #[serde(rename = "node", default)]
    nodes: Vec<FileNode>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileNode {
    id: NodeId,
    addr: String,
}

fn default_replication() -> usize {
    DEFAULT_REPLICATION
}

fn default_threads() -> usize {
    DEFAULT_THREADS
}

fn invalid(msg: impl Into<String>) -> ClusterError {
    ClusterError::Invalid(msg.into())
}

impl Cluster {
    /// A cluster of `nodes` with `shards` shards of `replication` replicas, placed on
    /// `threads` server threads per node; validated as [`Cluster::from_toml_str`] does.
    pub fn new(
        mut nodes: Vec<Node>,
        shards: u32,
        replication: usize,
        threads: usize,
    ) -> Result<Self, ClusterError> {
        if nodes.is_empty() {
            return Err(invalid(
                "no nodes: add at least one [[node]] with id and addr",
            ));
        }
        if nodes.len() > MAX_NODES {
            return Err(invalid(format!(
                "{} nodes; at most {MAX_NODES}",
                nodes.len()
            )));
        }
        nodes.sort_by_key(|n| n.id);
        let mut addrs = BTreeSet::new();
        let mut prev = None;
        for n in &nodes {
            if n.id == 0 {
                return Err(invalid(
                    "node id 0 is reserved (Raft's \"no node\"); use ids >= 1",
                ));
            }
            if prev == Some(n.id) {
                return Err(invalid(format!("node id {} appears twice", n.id)));
            }
            prev = Some(n.id);
            if !addrs.insert(n.addr) {
                return Err(invalid(format!("address {} is given to two nodes", n.addr)));
            }
            if n.addr.port() == 0 {
                return Err(invalid(format!(
                    "node {}: port 0 is not an address others can connect to",
                    n.id
                )));
            }
        }
        if threads == 0 || threads > MAX_THREADS {
            return Err(invalid(format!(
                "threads = {threads}; must be 1..={MAX_THREADS}"
            )));
        }
        if shards == 0 || shards > MAX_SHARDS {
            return Err(invalid(format!(
                "shards = {shards}; must be 1..={MAX_SHARDS}"
            )));
        }
        // Shard s runs on thread s mod T and key k is in shard h(k) mod S. With T dividing
        // S, h(k) mod S mod T = h(k) mod T: a key's shard runs on the thread whose engine
        // worker owns the key, so applying never crosses threads.
        if !(shards as usize).is_multiple_of(threads) {
            return Err(invalid(format!(
                "shards = {shards} is not a multiple of threads = {threads}: a shard's keys \
                 must all belong to the engine worker of the thread the shard runs on"
            )));
        }
        if replication == 0 || replication > MAX_REPLICATION {
            return Err(invalid(format!(
                "replication = {replication}; must be 1..={MAX_REPLICATION}"
            )));
        }
        if replication > nodes.len() {
            return Err(invalid(format!(
                "replication = {replication} needs at least that many nodes; the file has {}",
                nodes.len()
            )));
        }
        Ok(Self {
            nodes,
            shards,
            replication,
            threads,
        })
    }

    /// Parses and validates a cluster file's text.
    pub fn from_toml_str(text: &str) -> Result<Self, ClusterError> {
        let file: File = toml::from_str(text)?;
        let mut nodes = Vec::with_capacity(file.nodes.len());
        for n in file.nodes {
            let addr: SocketAddr = n.addr.parse().map_err(|_| {
                invalid(format!(
                    "node {}: address {:?} is not IP:PORT (e.g. \"127.0.0.1:31861\"; host \
                     names are not resolved)",
                    n.id, n.addr
                ))
            })?;
            nodes.push(Node { id: n.id, addr });
        }
        Self::new(nodes, file.shards, file.replication, file.threads)
    }

    /// Reads, parses and validates the cluster file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ClusterError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml_str(&text)
    }

    /// The cluster as a cluster file (parses back to an equal [`Cluster`]).
    ///
    /// ```
    /// # use kv_cluster::{Cluster, Node};
    /// let nodes = (1..=3).map(|id| Node { id, addr: format!("127.0.0.1:{}", 4000 + id).parse().unwrap() });
    /// let c = Cluster::new(nodes.collect(), 4, 3, 2)?;
    /// assert_eq!(Cluster::from_toml_str(&c.to_toml_string())?, c);
    /// # Ok::<(), kv_cluster::ClusterError>(())
    /// ```
    pub fn to_toml_string(&self) -> String {
        let file = File {
            shards: self.shards,
            replication: self.replication,
            threads: self.threads,
            nodes: self
                .nodes
                .iter()
                .map(|n| FileNode {
                    id: n.id,
                    addr: n.addr.to_string(),
                })
                .collect(),
        };
        // Serializing plain integers, strings and an array of tables cannot fail.
        toml::to_string(&file).unwrap_or_default()
    }

    /// The nodes, by increasing id.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The node with id `id`.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes
            .binary_search_by_key(&id, |n| n.id)
            .ok()
            .and_then(|i| self.nodes.get(i))
    }

    /// Number of shards S.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Replicas per shard R.
    pub fn replication(&self) -> usize {
        self.replication
    }

    /// Server threads per node T.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Votes a shard needs to elect a leader or commit a write: a majority of R.
    pub fn quorum(&self) -> usize {
        self.replication / 2 + 1
    }

    /// The shard of `key`: `fnv1a64(key) mod S`, with the hash the KV protocol partitions
    /// keys with ([`kv_proto::fnv1a64`]).
    ///
    /// ```
    /// # let c = kv_cluster::Cluster::new(vec![kv_cluster::Node { id: 1, addr: "127.0.0.1:1".parse().unwrap() }], 4, 1, 2).unwrap();
    /// assert_eq!(c.shard_of(b"k"), (kv_proto::fnv1a64(b"k") % 4) as u32);
    /// ```
    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        self.shard_of_hash(kv_proto::fnv1a64(key))
    }

    /// The shard of a key whose partitioning hash is `hash`: `hash mod S`.
    pub fn shard_of_hash(&self, hash: u64) -> ShardId {
        // Less than S <= MAX_SHARDS, so it fits.
        (hash % u64::from(self.shards)) as ShardId
    }

    /// The server thread (on every node) that runs shard `shard`'s replicas: `shard mod T`.
    pub fn thread_of(&self, shard: ShardId) -> usize {
        shard as usize % self.threads
    }

    /// Index into [`Cluster::nodes`] of shard `shard`'s first replica:
    /// `(shard + shard / L) mod N`, with L = lcm(N, T).
    ///
    /// Without the `shard / L` term this is a plain ring (shard s starts at node s mod N),
    /// which spreads replicas evenly over nodes but, when N and T share a factor, puts all
    /// first replicas of a thread on a few nodes (N = T = 3: every shard of thread 0 would
    /// start at node 0). Within each run of L consecutive shards, thread t's shards start at
    /// the N / gcd(N, T) nodes of one residue class mod gcd(N, T), each once; the shift by
    /// one node per run moves thread t to the next class. So when N divides S every node
    /// holds R S / N replicas, and when N divides S / T every node is first replica
    /// (= preferred leader, see [`Cluster::replica_rank`]) of S / (T N) shards on each
    /// thread.
    fn first_replica(&self, shard: ShardId) -> usize {
        let n = self.nodes.len();
        let run = lcm(n, self.threads);
        let s = shard as usize;
        (s % n + (s / run) % n) % n
    }

    /// The nodes holding shard `shard`'s replicas, in rank order: the first replica's node,
    /// then the next nodes by id, wrapping around. R distinct nodes.
    ///
    /// Rank 0 is the shard's preferred leader: the replication layer gives lower ranks
    /// shorter election timeouts, so with every node up each shard is led by its rank-0
    /// replica and leadership is spread evenly over nodes and threads.
    pub fn replicas(&self, shard: ShardId) -> impl Iterator<Item = NodeId> + '_ {
        let first = self.first_replica(shard);
        let n = self.nodes.len();
        (0..self.replication).filter_map(move |r| self.nodes.get((first + r) % n).map(|x| x.id))
    }

    /// The rank of node `node` among shard `shard`'s replicas, or `None` if it holds none.
    pub fn replica_rank(&self, shard: ShardId, node: NodeId) -> Option<usize> {
        self.replicas(shard).position(|id| id == node)
    }

    /// Whether node `node` holds a replica of shard `shard`.
    pub fn hosts(&self, node: NodeId, shard: ShardId) -> bool {
        self.replica_rank(shard, node).is_some()
    }

    /// The shards whose replicas node `node` runs on its thread `thread`, increasing.
    pub fn shards_on(&self, node: NodeId, thread: usize) -> impl Iterator<Item = ShardId> + '_ {
        let start = u32::try_from(thread).unwrap_or(u32::MAX);
        let step = self.threads;
        (start..self.shards)
            .step_by(step)
            .filter(move |&s| self.hosts(node, s))
    }

    /// The shards node `node` holds a replica of, increasing.
    pub fn shards_of(&self, node: NodeId) -> impl Iterator<Item = ShardId> + '_ {
        (0..self.shards).filter(move |&s| self.hosts(node, s))
    }

    /// A checksum (CRC32C) of everything placement depends on — the node ids, S, R and T;
    /// not the addresses. A data directory records it so that a node restarted with a
    /// cluster file that would move its replicas refuses to start instead of serving the
    /// wrong shards.
    pub fn fingerprint(&self) -> u32 {
        let mut crc = crc32c::crc32c(b"kv-cluster placement v1");
        crc = crc32c::crc32c_append(crc, &self.shards.to_le_bytes());
        crc = crc32c::crc32c_append(crc, &(self.replication as u64).to_le_bytes());
        crc = crc32c::crc32c_append(crc, &(self.threads as u64).to_le_bytes());
        for n in &self.nodes {
            crc = crc32c::crc32c_append(crc, &n.id.to_le_bytes());
        }
        crc
    }
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Least common multiple of two positive numbers (both at most a few thousand here).
fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b).max(1) * b
}
