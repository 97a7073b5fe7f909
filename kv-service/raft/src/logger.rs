//! raft-rs logs through `slog`; this drain hands its records to `tracing` (target `raft`),
//! with the logger's and the record's key-values appended to the message.
//!
//! raft-rs reports every election step at `info`; they arrive here at `debug` so that a
//! server's log shows what the server says about leadership, not each vote.

use std::fmt::Write as _;

use slog::{Drain, Key, OwnedKVList, Record, Serializer, KV};

/// A `slog::Logger` for one replica whose records go to `tracing`, tagged with `shard`
/// and the replica's Raft id.
pub fn raft_logger(shard: u32, id: u64) -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!("shard" => shard, "raft_id" => id))
}

/// The drain behind [`raft_logger`].
#[derive(Clone, Copy, Debug, Default)]
pub struct TracingDrain;

struct Line(String);

impl Serializer for Line {
    fn emit_arguments(&mut self, key: Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

fn enabled(level: slog::Level) -> bool {
    match level {
        slog::Level::Critical | slog::Level::Error => {
            tracing::enabled!(target: "raft", tracing::Level::ERROR)
        }
        slog::Level::Warning => tracing::enabled!(target: "raft", tracing::Level::WARN),
        slog::Level::Info | slog::Level::Debug => {
            tracing::enabled!(target: "raft", tracing::Level::DEBUG)
        }
        slog::Level::Trace => tracing::enabled!(target: "raft", tracing::Level::TRACE),
    }
}

impl Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), slog::Never> {
        if !enabled(record.level()) {
            return Ok(());
        }
        let mut line = Line(record.msg().to_string());
        let _ = record.kv().serialize(record, &mut line);
        let _ = values.serialize(record, &mut line);
        let msg = line.0;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info | slog::Level::Debug => tracing::debug!(target: "raft", "{msg}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}
