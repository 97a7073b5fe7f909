//! `kv-proto`: what every part of the KV service agrees on, with no I/O — the size limits,
//! which thread owns a key, how scan parts merge, and the wire format carried inside rpc
//! messages (`docs/PROTOCOL.md, Part II`).
//!
//! The engine (`kv-engine`), the client library (`kv-client`) and the server (`kv-service`)
//! all depend on this crate and on nothing of each other's for these facts.
//!
//! - [`operation`]: [`Op`] and [`Reply`], the one vocabulary of operations and outcomes.
//! - [`limits`]: [`MAX_KEY_LEN`], [`MAX_VALUE_LEN`], the SCAN and BATCH caps.
//! - [`partition`]: [`fnv1a64`] and [`KeyRouter`] (key → thread).
//! - [`scan`]: [`merge_scan`] and [`ScanMerge`], the continuation of a scan past the caps.
//! - [`cluster`]: what the replicated service adds: the cluster extension of requests,
//!   NOT_LEADER, CLUSTER_STATUS.
//! - [`wire`]: headers, [`Status`], request / response / BATCH / INFO / STATS encodings. Every
//!   parser is total: any bytes give a value or an error, never a panic.
//!
//! ```
//! use kv_proto::{self as proto, op, Op, Request, Status};
//! let put = Request::Op(Op::Put { key: b"k", value: b"v" });
//! let mut msg = Vec::new();
//! proto::encode_request(&put, &mut msg);
//! assert_eq!(proto::parse_request(op::PUT, &msg), Ok(put));
//! // Garbage is an error, never a panic.
//! assert!(proto::parse_request(op::PUT, b"\x07garbage").is_err());
//! let mut resp = Vec::new();
//! proto::encode_response(Status::NotFound, 0, 0, b"", &mut resp);
//! assert_eq!(proto::parse_response(&resp).unwrap().status, Status::NotFound);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
pub mod limits;
pub mod operation;
pub mod partition;
pub mod scan;
pub mod wire;

pub use cluster::{
    append_request_ext, encode_cluster_status, encode_not_leader, parse_cluster_status,
    parse_not_leader, request_ext, ClusterExt, Role, ShardStatus, CLUSTER_EXT_LEN,
    SHARD_STATUS_LEN,
};
pub use limits::{
    check_key, check_value, LimitError, MAX_BATCH, MAX_KEY_LEN, MAX_SCAN_BODY, MAX_SCAN_ITEMS,
    MAX_VALUE_LEN,
};
pub use operation::{Item, Op, Reply};
pub use partition::{fnv1a64, KeyRouter, PARTITION_FNV1A64_MOD};
pub use scan::{merge_scan, successor, EmptyMorePart, ScanMerge};
pub use wire::*;
