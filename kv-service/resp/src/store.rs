//! What a connection asks of the key-value store behind it, and what the store answers.
//!
//! The connection turns commands into [`KvOp`]s (one per key: MGET/MSET/DEL/EXISTS
//! decompose) and hands each to [`Store::submit`] with an [`OpId`]; the store runs it however
//! it likes — at once, on an engine that completes asynchronously, on another thread — and
//! answers with [`Connection::complete`](crate::Connection::complete) and the same id, in any
//! order. The connection puts the replies back in pipeline order.
//!
//! The vocabulary maps one to one onto `kv_proto::Op` (GET, PUT, DELETE, SCAN), plus one
//! compound operation, [`KvOp::Set`], for SET with NX / XX / GET and GETSET: a read and a
//! conditional write of one key that the store must run atomically (the key's owner runs the
//! read and the write with no other write of that key in between).
//!
//! # What the store must guarantee
//!
//! - Writes (PUT, DELETE, SET) of the same key take effect in submission order. Nothing
//!   else is asked about order: a connection never has a read and a write of the same key
//!   in flight together (it waits for the first to answer, see `order.rs`), so operations
//!   in flight together may run and complete in any order.
//! - [`Outcome::Written`] and [`Outcome::Deleted`] mean durable under the store's rule: the
//!   connection acknowledges the write to the client on it.
//! - A [`KvOp::Scan`] covers the whole key space in key order: `max` items from `start`
//!   (inclusive), or fewer with `more: false` when the key space ends. A store may return a
//!   shorter page with `more: true` (at least one item) and the scan continues after it.

/// Identifies one operation of one connection: the command's place in the pipeline and, for
/// a multi-key command, which key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId {
    /// The command's sequence number on its connection.
    pub seq: u64,
    /// The key's position among the command's keys (0 for single-key commands).
    pub part: u32,
}

/// The condition of a [`KvOp::Set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetCond {
    /// Write whatever the key holds (GETSET, SET ... GET).
    Always,
    /// Write only if the key does not exist (NX).
    IfAbsent,
    /// Write only if the key exists (XX).
    IfPresent,
}

/// One key-value operation, borrowing its bytes from the connection's input buffer (copy
/// what must outlive [`Store::submit`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvOp<'a> {
    /// Read a key: [`Outcome::Value`] or [`Outcome::NotFound`].
    Get {
        /// The key.
        key: &'a [u8],
    },
    /// Write a key: [`Outcome::Written`].
    Put {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
    },
    /// Read the key, then write it if `cond` holds, atomically: [`Outcome::Set`].
    Set {
        /// The key.
        key: &'a [u8],
        /// The value.
        value: &'a [u8],
        /// When to write.
        cond: SetCond,
        /// Whether the reply needs the old value.
        get: bool,
    },
    /// Delete a key: [`Outcome::Deleted`] or [`Outcome::NotFound`].
    Delete {
        /// The key.
        key: &'a [u8],
    },
    /// Up to `max` items with key ≥ `start`, in key order: [`Outcome::Items`].
    Scan {
        /// First key (inclusive).
        start: &'a [u8],
        /// Most items wanted (≥ 1).
        max: usize,
    },
}

impl<'a> KvOp<'a> {
    /// The key (a SCAN's start key).
    pub fn key(&self) -> &'a [u8] {
        match *self {
            KvOp::Get { key }
            | KvOp::Put { key, .. }
            | KvOp::Set { key, .. }
            | KvOp::Delete { key } => key,
            KvOp::Scan { start, .. } => start,
        }
    }

    /// Whether the operation may change the store.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            KvOp::Put { .. } | KvOp::Set { .. } | KvOp::Delete { .. }
        )
    }
}

/// A SCAN item: (key, value), as the engine hands them out.
pub type Item = (Vec<u8>, Vec<u8>);

/// The answer to a [`KvOp`], borrowing from the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// GET: the value.
    Value(&'a [u8]),
    /// GET or DELETE: no such key.
    NotFound,
    /// PUT: the write is durable.
    Written,
    /// DELETE: the key is deleted (durably).
    Deleted,
    /// SET with a condition: whether it wrote (durably), and the value before (when the op
    /// asked for it; `None` if the key did not exist).
    Set {
        /// The write happened.
        written: bool,
        /// The value before the operation.
        old: Option<&'a [u8]>,
    },
    /// SCAN: items in key order, and whether the key space may go on past them.
    Items {
        /// The items.
        items: &'a [Item],
        /// More keys may follow the last item.
        more: bool,
    },
    /// The operation failed; sent to the client as `-ERR <message>` (a message that starts
    /// with an upper-case code word and a blank, e.g. `OVERLOADED ...`, keeps its own code).
    Error(&'a str),
}

/// Figures of the whole server for INFO and DBSIZE, as the store knows them at the moment it
/// is asked. Fields the store does not track stay 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Figures {
    /// Keys stored (DBSIZE, INFO keyspace).
    pub keys: u64,
    /// RESP connections open.
    pub connected_clients: u64,
    /// RESP connections accepted since the start.
    pub total_connections_received: u64,
    /// RESP connections refused (connection limit).
    pub rejected_connections: u64,
    /// RESP commands run since the start.
    pub total_commands_processed: u64,
    /// GETs (and reads of multi-key commands) that found their key.
    pub keyspace_hits: u64,
    /// ... that did not.
    pub keyspace_misses: u64,
    /// Bytes received on RESP connections.
    pub total_net_input_bytes: u64,
    /// Bytes sent on RESP connections.
    pub total_net_output_bytes: u64,
    /// Seconds since the server started.
    pub uptime_secs: u64,
    /// Bytes of memory the store accounts for (index and cache).
    pub used_memory: u64,
    /// Bytes of the store's data files.
    pub disk_bytes: u64,
    /// Engine block reads since the start.
    pub engine_reads: u64,
    /// Engine block writes since the start.
    pub engine_writes: u64,
}

/// The key-value store behind RESP connections (implemented by the server).
pub trait Store {
    /// Starts `op`; its outcome comes back through
    /// [`Connection::complete`](crate::Connection::complete) with `id`.
    fn submit(&mut self, id: OpId, op: KvOp<'_>);

    /// Answers a GET at once if the store can without waiting — the key's value is in memory
    /// where the caller runs, or the key is known to be absent — and `None` otherwise (the
    /// connection then [`submit`](Store::submit)s it). The answer must be the one `submit`
    /// would give at this moment. It saves a cached GET the queueing, the copies and the
    /// allocation of the asynchronous path; a store without such a path keeps the default.
    fn get_now(&mut self, key: &[u8]) -> Option<Outcome<'_>> {
        let _ = key;
        None
    }

    /// The server's figures now (INFO, DBSIZE).
    fn figures(&self) -> Figures;

    /// Whether the store takes more operations now. While it does not,
    /// [`Connection::process`](crate::Connection::process) runs no further command (they
    /// stay buffered; call `process` again later). For backpressure inside the server, e.g.
    /// when its queues towards other threads are full.
    fn accepting(&self) -> bool {
        true
    }
}
