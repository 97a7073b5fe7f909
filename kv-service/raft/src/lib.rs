//! `kv-raft`: what the KV service needs to replicate its shards through
//! [raft-rs](https://docs.rs/raft) — the Raft log of a server thread and raft-rs's
//! `Storage` on it.
//!
//! - [`ThreadLog`]: one log per server thread, shared by the shards whose replicas the
//!   thread runs. Segmented, checksummed (CRC32C), group commit (one `fdatasync` per loop
//!   iteration covers every shard's appends), compaction below what the state machine made
//!   durable, recovery that stops at a torn tail and refuses damaged durable data.
//!   On-disk format in [`format`](mod@format).
//! - [`ShardStore`]: one shard's Raft state in memory, implementing [`raft::Storage`],
//!   owned by the shard's `RawNode`; changed only through its thread's log.
//! - [`LogDir`] / [`LogFile`]: the narrow file interface the log writes through, with
//!   [`FsDir`] (a real directory) and [`SimFs`] (live and durable images, power cuts, torn
//!   writes, injected faults) for deterministic tests.
//! - [`sessions`]: (client, sequence) de-duplication of retried writes.
//! - [`wire`]: batches of Raft messages between server threads.
//! - [`ReplicaSettings`]: raft-rs settings, with deterministic election timeouts by rank.
//! - [`raft_logger`]: raft-rs's `slog` output into `tracing`.
//!
//! Driving a replica (what a server thread's loop does for each shard with a ready, then
//! once for all of them):
//!
//! ```
//! use kv_raft::{LogOptions, ReplicaSettings, SimFs, ThreadLog};
//! use raft::eraftpb::ConfState;
//! use raft::RawNode;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let fs = SimFs::new(1);
//! let (mut log, recovered) = ThreadLog::open(fs.dir("thread-0"), LogOptions::default())?;
//! assert!(recovered.shards.is_empty());
//! // A one-replica shard, so that it can elect itself and commit alone.
//! let store = log.bootstrap(7, ConfState::from((vec![1], vec![])))?;
//! let config = ReplicaSettings::default().config(1, 0, 1, 0);
//! let mut node = RawNode::new(&config, store, &kv_raft::raft_logger(7, 1))?;
//! node.campaign()?;
//! let mut committed = Vec::new();
//! for _ in 0..10 {
//!     if node.raft.state == raft::StateRole::Leader && committed.is_empty() {
//!         node.propose(vec![], b"put k v".to_vec())?;
//!     }
//!     if !node.has_ready() {
//!         continue;
//!     }
//!     let mut rd = node.ready();
//!     let _to_send_now = rd.take_messages(); // a leader's appends may leave before its write
//!     log.write_ready(node.mut_store(), &rd)?; // snapshot, entries, hard state: buffered
//!     let _to_send_once_durable = rd.take_persisted_messages();
//!     committed.extend(rd.take_committed_entries()); // apply these
//!     let number = rd.number();
//!     node.advance_append_async(rd);
//!     log.sync()?; // one write and one fdatasync for every shard of the thread
//!     node.on_persist_ready(number);
//!     node.advance_apply(); // applied what was committed
//! }
//! assert!(committed.iter().any(|e| &e.data[..] == b"put k v"));
//! // The entry survives a power cut: it was synced.
//! fs.power_cut();
//! let (_log, recovered) = ThreadLog::open(fs.dir("thread-0"), LogOptions::default())?;
//! let store = &recovered.shards[&7];
//! assert!((store.first()..=store.last()).any(|i| store.entry(i).is_some_and(|e| &e.data[..] == b"put k v")));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

pub mod format;
pub mod fs;
mod log;
mod logger;
mod replica;
pub mod sessions;
pub mod sim;
mod store;
pub mod wire;

pub use format::ShardId;
pub use fs::{AnyDir, FsDir, FsFile, LogDir, LogFile};
pub use log::{
    LogError, LogOptions, LogStats, Recovered, Result, SyncPolicy, ThreadLog,
    DEFAULT_SEGMENT_BYTES, MIN_SEGMENT_BYTES,
};
pub use logger::{raft_logger, TracingDrain};
pub use raft;
pub use replica::ReplicaSettings;
pub use sim::{Fault, SimDir, SimFs, SimFsStats};
pub use store::{Applied, ShardStore, StoreError};
