//! What the replicated service (cluster mode, `docs/CLUSTER.md`) adds to the wire format:
//! the cluster extension of GET / PUT / DELETE / SCAN requests, the NOT_LEADER answer, and
//! the CLUSTER_STATUS request (`docs/PROTOCOL.md, Part II`).
//!
//! A request with [`REQ_FLAG_CLUSTER`] carries, between its 16-byte header and its key, a
//! [`ClusterExt`]: the shard the client hashed the key to (for a SCAN: the shard to scan),
//! the fingerprint of the client's cluster file (so a client with another placement is
//! refused instead of misrouted), and for a write its identity (client id, sequence number,
//! lowest unanswered sequence number), which makes a write retried after a failover apply
//! once.
//!
//! ```
//! use kv_proto::{self as proto, op, ClusterExt, Op, Request};
//! let ext = ClusterExt { shard: 3, fingerprint: 0xfeed, client: 9, seq: 4, first_unanswered: 2, local: false };
//! let put = Request::Op(Op::Put { key: b"k", value: b"v" });
//! let mut msg = Vec::new();
//! proto::append_request_ext(&put, Some(&ext), &mut msg);
//! assert_eq!(proto::parse_request(op::PUT, &msg), Ok(put));
//! assert_eq!(proto::request_ext(&msg), Some(ext));
//! ```
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use crate::wire::{
    op, ReqHeader, Request, RequestError, ResponseError, HDR_LEN, REQ_FLAG_CLUSTER, REQ_FLAG_LOCAL,
    VERSION,
};
use crate::wire::{Le16, Le32};

/// Bytes of the cluster extension.
pub const CLUSTER_EXT_LEN: usize = 32;

/// The cluster extension of a request (see the [module documentation](self)).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `shard` (u32) |
/// | 4 | 4 | `fingerprint` of the client's cluster file (u32; 0 = not checked) |
/// | 8 | 8 | `client` id (u64; 0 = none: the write is not de-duplicated) |
/// | 16 | 8 | `seq`: the write's number within the client |
/// | 24 | 8 | `first_unanswered`: the lowest of the client's numbers it has no answer for |
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ClusterExt {
    /// The shard of the key (SCAN: the shard to scan).
    pub shard: u32,
    /// `kv_cluster::Cluster::fingerprint` of the client's cluster file (0: not checked).
    pub fingerprint: u32,
    /// The client's id (0: none).
    pub client: u64,
    /// The write's sequence number within the client.
    pub seq: u64,
    /// The lowest sequence number the client has had no answer for.
    pub first_unanswered: u64,
    /// [`REQ_FLAG_LOCAL`]: read this replica's state without confirming leadership.
    pub local: bool,
}

impl ClusterExt {
    fn encode(&self) -> [u8; CLUSTER_EXT_LEN] {
        let mut b = [0u8; CLUSTER_EXT_LEN];
        let fields: [&[u8]; 5] = [
            &self.shard.to_le_bytes(),
            &self.fingerprint.to_le_bytes(),
            &self.client.to_le_bytes(),
            &self.seq.to_le_bytes(),
            &self.first_unanswered.to_le_bytes(),
        ];
        let mut at = 0;
        for f in fields {
            if let Some(dst) = b.get_mut(at..at + f.len()) {
                dst.copy_from_slice(f);
            }
            at += f.len();
        }
        b
    }

    fn decode(b: &[u8], local: bool) -> Option<Self> {
        let u32_at = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
        };
        let u64_at = |at: usize| -> Option<u64> {
            Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
        };
        Some(Self {
            shard: u32_at(0)?,
            fingerprint: u32_at(4)?,
            client: u64_at(8)?,
            seq: u64_at(16)?,
            first_unanswered: u64_at(24)?,
            local,
        })
    }
}

/// Appends the encoding of `req` with the cluster extension `ext` (if any) to `out` (how a
/// cluster client builds its requests, alone or as BATCH entries). INFO and STATS take no
/// extension: `ext` is ignored for them.
pub fn append_request_ext(req: &Request<'_>, ext: Option<&ClusterExt>, out: &mut Vec<u8>) {
    let ext = ext.filter(|_| matches!(req, Request::Op(_)));
    let Some(ext) = ext else {
        crate::wire::append_request(req, out);
        return;
    };
    let start = out.len();
    crate::wire::append_request(req, out);
    let mut flags = REQ_FLAG_CLUSTER;
    if ext.local {
        flags |= REQ_FLAG_LOCAL;
    }
    if let Some(f) = out.get_mut(start + 2..start + 4) {
        f.copy_from_slice(&flags.to_le_bytes());
    }
    let at = start + HDR_LEN;
    let bytes = ext.encode();
    out.splice(at..at, bytes);
}

/// The cluster extension of a request message that [`parse_request`](crate::parse_request)
/// accepted (`None` if it has none).
pub fn request_ext(data: &[u8]) -> Option<ClusterExt> {
    let flags = u16::from_le_bytes(data.get(2..4)?.try_into().ok()?);
    if flags & REQ_FLAG_CLUSTER == 0 {
        return None;
    }
    ClusterExt::decode(
        data.get(HDR_LEN..HDR_LEN + CLUSTER_EXT_LEN)?,
        flags & REQ_FLAG_LOCAL != 0,
    )
}

/// The body of a NOT_LEADER answer: the leader known (node id; 0 = none).
pub fn encode_not_leader(leader: u64) -> [u8; 8] {
    leader.to_le_bytes()
}

/// The leader named by a NOT_LEADER answer's body (0 = none known).
pub fn parse_not_leader(body: &[u8]) -> Result<u64, ResponseError> {
    let b: [u8; 8] = body
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or(ResponseError("NOT_LEADER body shorter than 8 bytes"))?;
    Ok(u64::from_le_bytes(b))
}

/// A CLUSTER_STATUS request message (a bare header).
pub fn encode_cluster_status(out: &mut Vec<u8>) {
    out.clear();
    let hdr = ReqHeader {
        version: VERSION,
        op: op::CLUSTER_STATUS,
        flags: Le16::new(0),
        key_len: Le32::new(0),
        val_len: Le32::new(0),
        count: Le32::new(0),
    };
    out.extend_from_slice(bytemuck::bytes_of(&hdr));
}

/// Checks a CLUSTER_STATUS request message: a header naming it and nothing else.
pub fn parse_cluster_status(data: &[u8]) -> Result<(), RequestError> {
    let hdr_bytes = data
        .get(..HDR_LEN)
        .ok_or(RequestError::Malformed("shorter than the 16-byte header"))?;
    let hdr: &ReqHeader = bytemuck::try_from_bytes(hdr_bytes)
        .map_err(|_| RequestError::Malformed("header not readable"))?;
    if hdr.version != VERSION {
        return Err(RequestError::UnsupportedVersion(hdr.version));
    }
    if hdr.op != op::CLUSTER_STATUS
        || hdr.flags.get() != 0
        || hdr.key_len.get() != 0
        || hdr.val_len.get() != 0
        || hdr.count.get() != 0
        || data.len() != HDR_LEN
    {
        return Err(RequestError::Malformed(
            "CLUSTER_STATUS is a bare header of its type",
        ));
    }
    Ok(())
}

/// A replica's Raft role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Campaigns for leadership.
    Candidate,
    /// Leads the shard: takes its writes and linearizable reads.
    Leader,
    /// Asks whether it could win an election before campaigning (pre-vote).
    PreCandidate,
}

impl Role {
    fn code(self) -> u8 {
        match self {
            Role::Follower => 0,
            Role::Candidate => 1,
            Role::Leader => 2,
            Role::PreCandidate => 3,
        }
    }

    fn from_code(c: u8) -> Option<Role> {
        Some(match c {
            0 => Role::Follower,
            1 => Role::Candidate,
            2 => Role::Leader,
            3 => Role::PreCandidate,
            _ => return None,
        })
    }

    /// A short name, e.g. `"leader"`.
    pub fn name(self) -> &'static str {
        match self {
            Role::Follower => "follower",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
            Role::PreCandidate => "pre-candidate",
        }
    }
}

/// Bytes of one [`ShardStatus`] in a CLUSTER_STATUS response body.
pub const SHARD_STATUS_LEN: usize = 64;

/// One shard replica's state, as a CLUSTER_STATUS response reports it (`count` of them in
/// the body, each [`SHARD_STATUS_LEN`] bytes).
///
/// | offset | size | field |
/// |---|---|---|
/// | 0 | 4 | `shard` |
/// | 4 | 1 | `role`: 0 follower, 1 candidate, 2 leader, 3 pre-candidate |
/// | 5 | 3 | reserved, 0 |
/// | 8 | 8 | `node`: the answering node's id |
/// | 16 | 8 | `term` |
/// | 24 | 8 | `leader`: the leader it knows (0 = none) |
/// | 32 | 8 | `commit`: highest index known committed |
/// | 40 | 8 | `applied`: highest index whose entries, and all before, the engine completed |
/// | 48 | 8 | `last_index`: the last entry of its log |
/// | 56 | 8 | `compacted`: the last index compacted away (its log starts after it) |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardStatus {
    /// The shard.
    pub shard: u32,
    /// The replica's role.
    pub role: Role,
    /// The node the replica runs on.
    pub node: u64,
    /// Its current term.
    pub term: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Highest index it knows committed.
    pub commit: u64,
    /// Highest index applied (completed by the engine, with everything before it).
    pub applied: u64,
    /// Last index of its log.
    pub last_index: u64,
    /// Last index compacted away.
    pub compacted: u64,
}

impl ShardStatus {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.shard.to_le_bytes());
        out.extend_from_slice(&[self.role.code(), 0, 0, 0]);
        for v in [
            self.node,
            self.term,
            self.leader,
            self.commit,
            self.applied,
            self.last_index,
            self.compacted,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }

    /// Parses a CLUSTER_STATUS response body of `count` entries.
    pub fn parse_all(body: &[u8], count: u32) -> Result<Vec<ShardStatus>, ResponseError> {
        if body.len() != count as usize * SHARD_STATUS_LEN {
            return Err(ResponseError("CLUSTER_STATUS body size"));
        }
        body.chunks_exact(SHARD_STATUS_LEN)
            .map(|c| {
                let u64_at = |at: usize| -> Result<u64, ResponseError> {
                    c.get(at..at + 8)
                        .and_then(|b| b.try_into().ok())
                        .map(u64::from_le_bytes)
                        .ok_or(ResponseError("CLUSTER_STATUS entry"))
                };
                let shard = c
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(u32::from_le_bytes)
                    .ok_or(ResponseError("CLUSTER_STATUS entry"))?;
                let role = c
                    .get(4)
                    .copied()
                    .and_then(Role::from_code)
                    .ok_or(ResponseError("CLUSTER_STATUS: unknown role"))?;
                if c.get(5..8) != Some(&[0, 0, 0][..]) {
                    return Err(ResponseError("CLUSTER_STATUS: reserved bytes not zero"));
                }
                Ok(ShardStatus {
                    shard,
                    role,
                    node: u64_at(8)?,
                    term: u64_at(16)?,
                    leader: u64_at(24)?,
                    commit: u64_at(32)?,
                    applied: u64_at(40)?,
                    last_index: u64_at(48)?,
                    compacted: u64_at(56)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::operation::Op;
    use crate::wire::{parse_batch, parse_request};

    #[test]
    fn extended_requests_round_trip_alone_and_in_batches() {
        let ext = ClusterExt {
            shard: 7,
            fingerprint: 0xabcd_0123,
            client: u64::MAX,
            seq: 3,
            first_unanswered: 1,
            local: false,
        };
        let reqs = [
            Request::Op(Op::Put {
                key: b"key",
                value: b"value",
            }),
            Request::Op(Op::Delete { key: b"" }),
            Request::Op(Op::Get { key: b"g" }),
        ];
        let mut batch = Vec::new();
        crate::wire::begin_batch(&mut batch);
        for r in &reqs {
            let mut one = Vec::new();
            append_request_ext(r, Some(&ext), &mut one);
            assert_eq!(one.len(), r.encoded_len() + CLUSTER_EXT_LEN);
            assert_eq!(parse_request(r.op(), &one), Ok(*r));
            assert_eq!(request_ext(&one), Some(ext));
            batch.extend_from_slice(&one);
        }
        crate::wire::finish_batch(&mut batch, reqs.len() as u32);
        let parsed: Vec<_> = parse_batch(&batch).unwrap().collect();
        assert_eq!(parsed.len(), 3);
        for ((r, raw), want) in parsed.iter().zip(&reqs) {
            assert_eq!(r, want);
            assert_eq!(request_ext(raw), Some(ext));
        }
        // A local read.
        let local = ClusterExt { local: true, ..ext };
        let mut m = Vec::new();
        append_request_ext(
            &Request::Op(Op::Scan {
                start: b"a",
                max: 5,
            }),
            Some(&local),
            &mut m,
        );
        assert!(parse_request(op::SCAN, &m).is_ok());
        assert_eq!(request_ext(&m), Some(local));
        // Without the extension nothing changes.
        let mut plain = Vec::new();
        append_request_ext(&reqs[0], None, &mut plain);
        assert_eq!(request_ext(&plain), None);
    }

    #[test]
    fn misused_flags_and_short_extensions_are_bad_requests() {
        let ext = ClusterExt::default();
        let mut m = Vec::new();
        append_request_ext(&Request::Op(Op::Get { key: b"k" }), Some(&ext), &mut m);
        for cut in 1..=CLUSTER_EXT_LEN {
            let e = parse_request(op::GET, &m[..m.len() - cut]).unwrap_err();
            assert_eq!(e.status(), crate::Status::BadRequest);
        }
        // LOCAL on a write, LOCAL without the extension.
        let mut put = Vec::new();
        let local = ClusterExt { local: true, ..ext };
        append_request_ext(
            &Request::Op(Op::Put {
                key: b"k",
                value: b"v",
            }),
            Some(&local),
            &mut put,
        );
        assert!(parse_request(op::PUT, &put).is_err());
        let mut get = Vec::new();
        crate::wire::append_request(&Request::Op(Op::Get { key: b"k" }), &mut get);
        get[2] = REQ_FLAG_LOCAL as u8;
        assert!(parse_request(op::GET, &get).is_err());
    }

    #[test]
    fn status_entries_and_not_leader_round_trip() {
        let s = ShardStatus {
            shard: 5,
            role: Role::Leader,
            node: 2,
            term: 9,
            leader: 2,
            commit: 100,
            applied: 99,
            last_index: 101,
            compacted: 40,
        };
        let mut body = Vec::new();
        s.encode(&mut body);
        ShardStatus {
            role: Role::Follower,
            ..s
        }
        .encode(&mut body);
        assert_eq!(body.len(), 2 * SHARD_STATUS_LEN);
        let all = ShardStatus::parse_all(&body, 2).unwrap();
        assert_eq!(all[0], s);
        assert_eq!(all[1].role, Role::Follower);
        assert!(ShardStatus::parse_all(&body, 3).is_err());
        body[4] = 9;
        assert!(ShardStatus::parse_all(&body, 2).is_err());
        assert_eq!(parse_not_leader(&encode_not_leader(3)), Ok(3));
        assert!(parse_not_leader(b"abc").is_err());
        let mut st = Vec::new();
        encode_cluster_status(&mut st);
        assert!(parse_cluster_status(&st).is_ok());
        st.push(0);
        assert!(parse_cluster_status(&st).is_err());
    }
}
