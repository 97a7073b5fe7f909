//! [`ClusterClient`]: a client of a replicated kv-service cluster (`docs/CLUSTER.md`).
//!
//! It reads the same cluster file as the servers and computes the same placement: a key's
//! shard (`fnv1a64(key) mod S`), the shard's replicas and the server thread that runs them.
//! Requests carry the cluster extension (shard, cluster fingerprint, and for writes the
//! client id and sequence number that make a retried write apply once). Per shard it caches
//! the leader (initially the rank-0 replica), follows NOT_LEADER hints, and on a timeout, a
//! failed session or a NOT_LEADER without a hint moves to the shard's next replica, until
//! the request's overall deadline. A node whose attempt timed out or failed is suspected
//! for a while: hints naming it are not followed (the followers of a leader that just died
//! still name it until they elect another), rotation passes over it, and shards whose cached
//! leader it is try another replica first. Scans read every shard and merge the parts in key order.
//!
//! One request at a time (`&mut self`); each write keeps its identity across its retries.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use kv_cluster::{Cluster, NodeId, ShardId};
use kv_proto::{self as protocol, op, ClusterExt, Item, Op, Request, ShardStatus, Status};
use rpc::{Nexus, Rpc, RpcConfig, RpcError, SessionId};
use transports::udp::{UdpConfig, UdpTransport};

use crate::Error;

/// Settings of a [`ClusterClient`].
#[derive(Clone, Debug)]
pub struct ClusterClientConfig {
    /// How long one attempt (to one replica) may take before the next replica is tried.
    pub attempt_timeout: Duration,
    /// How long a request may take over all its attempts.
    pub deadline: Duration,
    /// Opening a session to a node gives up after this long.
    pub connect_timeout: Duration,
    /// Pause before trying again when no replica knows a leader (an election is under way).
    pub election_pause: Duration,
    /// Spin while waiting for an answer (lowest latency) instead of sleeping in the socket's
    /// wait. Default `true`.
    pub busy_poll: bool,
    /// How long a node whose attempt timed out or failed is *suspected*: NOT_LEADER hints
    /// naming it are not followed (the followers of a leader that just died name it until
    /// they elect another) and rotation passes over it. About the longest election: the
    /// default, 500 ms, covers the servers' default 100 ms election timeout (followers
    /// campaign after 100–167 ms, then a pre-vote and a vote round) with room to spare.
    pub suspect_for: Duration,
}

impl Default for ClusterClientConfig {
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_millis(800),
            deadline: Duration::from_secs(15),
            connect_timeout: Duration::from_millis(500),
            election_pause: Duration::from_millis(30),
            busy_poll: true,
            suspect_for: Duration::from_millis(500),
        }
    }
}

/// A client of a kv-service cluster (see the [module documentation](self)).
pub struct ClusterClient {
    cluster: Cluster,
    cfg: ClusterClientConfig,
    rpc: Rpc<UdpTransport, ()>,
    _nexus: Nexus,
    sessions: HashMap<(NodeId, usize), SessionId>,
    /// Per shard, the node the next request goes to.
    target: Vec<NodeId>,
    client_id: u64,
    next_seq: u64,
    buf: Vec<u8>,
    /// NOT_LEADER answers and replica rotations so far (for tests and diagnostics).
    redirects: u64,
    counters: ClusterCounters,
    /// Nodes whose last attempt timed out or failed, and when: a NOT_LEADER hint naming one
    /// is not followed until [`ClusterClientConfig::suspect_for`] has passed or the node
    /// answered (a follower names the leader it last heard from, which may be the node that
    /// just died).
    suspects: HashMap<NodeId, Instant>,
}

/// Why attempts of a [`ClusterClient`] did not end their request, counted since it was made
/// (diagnostics: a benchmark reports them next to its latencies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClusterCounters {
    /// Answered NOT_LEADER naming another replica, which the next attempt went to.
    pub not_leader_hint: u64,
    /// Answered NOT_LEADER without a leader (or SHUTTING_DOWN): the client paused
    /// [`ClusterClientConfig::election_pause`] and tried the next replica.
    pub no_leader: u64,
    /// No answer within [`ClusterClientConfig::attempt_timeout`]: the next replica was tried.
    pub timeouts: u64,
    /// The attempt failed otherwise (session failed or could not be opened): the next
    /// replica was tried.
    pub failures: u64,
}

/// A 64-bit client id unlikely to be any other client's.
fn random_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish() | 1
}

/// What one attempt came to.
enum Attempt {
    Done(Status, Vec<u8>, u16, u32),
    /// Try `Some(node)` next, or the next replica.
    Redirect(Option<NodeId>),
}

impl ClusterClient {
    /// A client of `cluster` (sessions are opened on first use).
    pub fn new(cluster: Cluster, cfg: ClusterClientConfig) -> Result<Self, Error> {
        let first = cluster
            .nodes()
            .first()
            .map(|n| n.addr)
            .ok_or_else(|| Error::BadAddress("the cluster has no node".into()))?;
        let local_ip = local_ip_for(first).map_err(|_| Error::BadAddress(first.to_string()))?;
        let nexus: Nexus = Nexus::new(&SocketAddr::new(local_ip, 0).to_string(), 0)?;
        let udp = UdpTransport::new(UdpConfig {
            bind: SocketAddr::new(local_ip, 0),
            max_pkt_size: transports::udp::max_pkt_size_toward(first.ip()),
            ..UdpConfig::default()
        })
        .map_err(RpcError::from)?;
        let rpc_cfg = RpcConfig {
            connect_timeout: cfg.connect_timeout,
            busy_poll: cfg.busy_poll,
            ..RpcConfig::default()
        };
        let rpc = Rpc::new(&nexus, 0, udp, (), rpc_cfg)?;
        let target = (0..cluster.shards())
            .map(|s| cluster.replicas(s).next().unwrap_or(0))
            .collect();
        Ok(Self {
            cluster,
            cfg,
            rpc,
            _nexus: nexus,
            sessions: HashMap::new(),
            target,
            client_id: random_id(),
            next_seq: 1,
            buf: Vec::new(),
            redirects: 0,
            counters: ClusterCounters::default(),
            suspects: HashMap::new(),
        })
    }

    /// The cluster file this client routes by.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// NOT_LEADER answers followed and replicas rotated to so far.
    pub fn redirects(&self) -> u64 {
        self.redirects
    }

    /// Why attempts were retried so far, by cause.
    pub fn counters(&self) -> ClusterCounters {
        self.counters
    }

    /// The node the client would send shard `shard`'s next request to (its cached leader).
    pub fn leader_hint(&self, shard: ShardId) -> Option<NodeId> {
        self.target.get(shard as usize).copied()
    }

    /// The value of `key`, read linearizably through the shard's leader.
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        protocol::check_key(key)?;
        let shard = self.cluster.shard_of(key);
        let (status, body, _, _) = self.request(shard, &Request::Op(Op::Get { key }), None)?;
        Ok((status == Status::Ok).then_some(body))
    }

    /// Writes `key` = `value`; returns once a quorum has it and the leader applied it.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        protocol::check_key(key)?;
        protocol::check_value(value, protocol::MAX_VALUE_LEN)?;
        let shard = self.cluster.shard_of(key);
        let seq = self.take_seq();
        self.request(shard, &Request::Op(Op::Put { key, value }), Some(seq))
            .map(|_| ())
    }

    /// Deletes `key`; returns whether it existed (when the delete first applied).
    pub fn delete(&mut self, key: &[u8]) -> Result<bool, Error> {
        protocol::check_key(key)?;
        let shard = self.cluster.shard_of(key);
        let seq = self.take_seq();
        let (status, ..) = self.request(shard, &Request::Op(Op::Delete { key }), Some(seq))?;
        Ok(status == Status::Ok)
    }

    /// Up to `max` items with key ≥ `start`, in key order, from every shard (each shard's
    /// part read linearizably).
    pub fn scan(&mut self, start: &[u8], max: usize) -> Result<Vec<Item>, Error> {
        protocol::check_key(start)?;
        let mut parts = Vec::new();
        for shard in 0..self.cluster.shards() {
            parts.push(self.scan_shard(shard, start, max)?);
        }
        Ok(protocol::merge_scan(parts, max))
    }

    /// Up to `max` items of shard `shard` with key ≥ `start`, in key order.
    pub fn scan_shard(
        &mut self,
        shard: ShardId,
        start: &[u8],
        max: usize,
    ) -> Result<Vec<Item>, Error> {
        let mut out: Vec<Item> = Vec::new();
        let mut cursor = start.to_vec();
        while out.len() < max {
            let want = max - out.len();
            let req = Request::Op(Op::Scan {
                start: &cursor,
                max: want,
            });
            let (_, body, flags, count) = self.request(shard, &req, None)?;
            let items = protocol::parse_scan_items(&body, count)?;
            let Some(last) = items.last().map(|(k, _)| k.clone()) else {
                break;
            };
            let n = items.len();
            out.extend(items);
            if flags & protocol::RESP_FLAG_MORE == 0 || n >= want {
                break;
            }
            cursor = last;
            cursor.push(0);
        }
        Ok(out)
    }

    /// The Raft state of every replica node `node` runs (all its threads).
    pub fn status_of(&mut self, node: NodeId) -> Result<Vec<ShardStatus>, Error> {
        let mut out = Vec::new();
        for thread in 0..self.cluster.threads() {
            let session = self.session(node, thread)?;
            let mut msg = Vec::new();
            protocol::encode_cluster_status(&mut msg);
            let resp = self
                .rpc
                .call(session, op::CLUSTER_STATUS, &msg, self.cfg.attempt_timeout);
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    self.drop_session(node, thread);
                    return Err(Error::from_rpc(e, self.cfg.attempt_timeout));
                }
            };
            let r = protocol::parse_response(resp.as_slice())?;
            if r.status != Status::Ok {
                return Err(Error::from_status(
                    r.status,
                    String::from_utf8_lossy(r.body).into_owned(),
                ));
            }
            out.extend(ShardStatus::parse_all(r.body, r.count)?);
        }
        Ok(out)
    }

    /// Reads `key` from node `node`'s replica as it is, without asking the leader (not
    /// linearizable: to check what each replica holds).
    pub fn get_local(&mut self, node: NodeId, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        protocol::check_key(key)?;
        let shard = self.cluster.shard_of(key);
        let ext = ClusterExt {
            shard,
            fingerprint: self.cluster.fingerprint(),
            local: true,
            ..ClusterExt::default()
        };
        let req = Request::Op(Op::Get { key });
        match self.attempt(node, shard, &req, &ext)? {
            Attempt::Done(Status::Ok, v, ..) => Ok(Some(v)),
            Attempt::Done(..) => Ok(None),
            Attempt::Redirect(_) => Err(Error::Timeout(self.cfg.attempt_timeout)),
        }
    }

    fn take_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Sends `req` for `shard` to its leader, following redirects until the deadline.
    /// Returns an OK or NOT_FOUND answer; other statuses become errors.
    fn request(
        &mut self,
        shard: ShardId,
        req: &Request<'_>,
        seq: Option<u64>,
    ) -> Result<(Status, Vec<u8>, u16, u32), Error> {
        let ext = ClusterExt {
            shard,
            fingerprint: self.cluster.fingerprint(),
            client: seq.map_or(0, |_| self.client_id),
            seq: seq.unwrap_or(0),
            // One request at a time: every earlier one was answered.
            first_unanswered: seq.unwrap_or(0),
            local: false,
        };
        let end = Instant::now() + self.cfg.deadline;
        let mut last_err: Option<Error> = None;
        while Instant::now() < end {
            let cached = self.target.get(shard as usize).copied().unwrap_or(0);
            // A cached leader that just timed out or failed (on this shard or another) is
            // passed over while another replica is not suspected.
            let replicas: Vec<NodeId> = self.cluster.replicas(shard).collect();
            let node = if self.suspected(cached) {
                next_replica(&replicas, cached, |n| self.suspected(n))
            } else {
                cached
            };
            self.set_target(shard, node);
            match self.attempt(node, shard, req, &ext) {
                Ok(Attempt::Done(status, body, flags, count)) => {
                    self.suspects.remove(&node);
                    return match status {
                        Status::Ok | Status::NotFound => Ok((status, body, flags, count)),
                        s => Err(Error::from_status(
                            s,
                            String::from_utf8_lossy(&body).into_owned(),
                        )),
                    };
                }
                Ok(Attempt::Redirect(hint)) => {
                    self.redirects += 1;
                    self.suspects.remove(&node);
                    let hint = hint.filter(|&h| {
                        h != node && self.cluster.hosts(h, shard) && !self.suspected(h)
                    });
                    match hint {
                        Some(h) => {
                            self.counters.not_leader_hint += 1;
                            self.set_target(shard, h);
                        }
                        None => {
                            self.counters.no_leader += 1;
                            self.rotate(shard, node);
                            std::thread::sleep(self.cfg.election_pause);
                        }
                    }
                }
                Err(e) => {
                    self.redirects += 1;
                    if matches!(e, Error::Timeout(_)) {
                        self.counters.timeouts += 1;
                    } else {
                        self.counters.failures += 1;
                    }
                    self.suspects.insert(node, Instant::now());
                    self.rotate(shard, node);
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or(Error::Timeout(self.cfg.deadline)))
    }

    fn set_target(&mut self, shard: ShardId, node: NodeId) {
        if let Some(t) = self.target.get_mut(shard as usize) {
            *t = node;
        }
    }

    /// Whether an attempt at `node` timed out or failed less than `suspect_for` ago.
    fn suspected(&self, node: NodeId) -> bool {
        self.suspects
            .get(&node)
            .is_some_and(|t| t.elapsed() < self.cfg.suspect_for)
    }

    /// Moves shard `shard`'s target from `node` to the next replica not suspected (or the
    /// next one, if all are).
    fn rotate(&mut self, shard: ShardId, node: NodeId) {
        let replicas: Vec<NodeId> = self.cluster.replicas(shard).collect();
        let next = next_replica(&replicas, node, |n| self.suspected(n));
        self.set_target(shard, next);
    }

    /// One try at node `node`.
    fn attempt(
        &mut self,
        node: NodeId,
        shard: ShardId,
        req: &Request<'_>,
        ext: &ClusterExt,
    ) -> Result<Attempt, Error> {
        let thread = self.cluster.thread_of(shard);
        let session = self.session(node, thread)?;
        self.buf.clear();
        protocol::append_request_ext(req, Some(ext), &mut self.buf);
        let resp = self
            .rpc
            .call(session, req.op(), &self.buf, self.cfg.attempt_timeout);
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                self.drop_session(node, thread);
                return Err(Error::from_rpc(e, self.cfg.attempt_timeout));
            }
        };
        let r = protocol::parse_response(resp.as_slice())?;
        Ok(match r.status {
            Status::NotLeader => {
                let hint = protocol::parse_not_leader(r.body)?;
                Attempt::Redirect((hint != 0).then_some(hint))
            }
            Status::ShuttingDown => Attempt::Redirect(None),
            s => Attempt::Done(s, r.body.to_vec(), r.flags, r.count),
        })
    }

    fn session(&mut self, node: NodeId, thread: usize) -> Result<SessionId, Error> {
        if let Some(&s) = self.sessions.get(&(node, thread)) {
            if self.rpc.session_state(s) == Some(rpc::SessionState::Connected) {
                return Ok(s);
            }
            self.drop_session(node, thread);
        }
        let addr = self
            .cluster
            .node(node)
            .map(|n| n.addr.to_string())
            .ok_or_else(|| Error::BadAddress(format!("node {node}")))?;
        let rpc_id = u8::try_from(thread).map_err(|_| Error::Incompatible("thread id".into()))?;
        let s = self
            .rpc
            .connect(&addr, rpc_id)
            .map_err(|e| Error::Unreachable { addr, source: e })?;
        self.sessions.insert((node, thread), s);
        Ok(s)
    }

    fn drop_session(&mut self, node: NodeId, thread: usize) {
        if let Some(s) = self.sessions.remove(&(node, thread)) {
            let _ = self.rpc.destroy_session(s);
        }
    }
}

/// The replica after `node` in `replicas` (rank order, wrapping) that is not `suspected`;
/// the one right after `node` if every other one is; `node` if it is the only one.
fn next_replica(replicas: &[NodeId], node: NodeId, suspected: impl Fn(NodeId) -> bool) -> NodeId {
    let n = replicas.len().max(1);
    let at = replicas.iter().position(|&r| r == node).unwrap_or(0);
    let after = |k: usize| replicas.get((at + k) % n).copied();
    (1..n)
        .filter_map(after)
        .find(|&r| !suspected(r))
        .or_else(|| after(1))
        .unwrap_or(node)
}

fn local_ip_for(server: SocketAddr) -> std::io::Result<std::net::IpAddr> {
    let any: SocketAddr = if server.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    };
    let s = UdpSocket::bind(any)?;
    s.connect(server)?;
    Ok(s.local_addr()?.ip())
}

#[cfg(test)]
mod tests {
    use super::next_replica;

    #[test]
    fn rotation_passes_over_suspected_replicas_unless_all_are() {
        let r = [1, 2, 3];
        assert_eq!(next_replica(&r, 1, |_| false), 2);
        assert_eq!(next_replica(&r, 3, |_| false), 1, "wraps");
        assert_eq!(next_replica(&r, 1, |n| n == 2), 3, "skips a suspect");
        assert_eq!(
            next_replica(&r, 1, |n| n == 1),
            2,
            "the suspect itself moves on"
        );
        // Every other replica suspected: the next in turn, not the node itself.
        assert_eq!(next_replica(&r, 1, |n| n != 1), 2);
        assert_eq!(next_replica(&r, 2, |_| true), 3);
        assert_eq!(next_replica(&[4], 4, |_| true), 4, "a single replica");
        assert_eq!(
            next_replica(&r, 9, |_| false),
            2,
            "an unknown node counts as rank 0"
        );
    }
}
