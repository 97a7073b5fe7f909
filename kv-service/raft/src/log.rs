//! The per-thread Raft log (documented at [`ThreadLog`]).

use std::collections::{BTreeMap, VecDeque};
use std::io;

use raft::eraftpb::{ConfState, Entry, HardState, SnapshotMetadata};
use raft::Ready;

use crate::format::{self, Frame, Header, Record, ShardId, HEADER_LEN, SEAL_LEN};
use crate::fs::{LogDir, LogFile};
use crate::store::{Applied, ShardStore, StoreError};

/// Smallest segment size accepted.
pub const MIN_SEGMENT_BYTES: u64 = 4096;

/// Default segment size: 64 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// When [`ThreadLog::sync`] makes what it wrote durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SyncPolicy {
    /// **Default.** `fdatasync` once per `sync`: what `sync` returned `Ok` for survives power
    /// loss.
    #[default]
    Always,
    /// **Unsafe for durability**: `sync` only writes (to the page cache) and never
    /// `fdatasync`s, except when a segment is sealed. The log survives the process being
    /// killed, but power loss or a kernel crash may take the last writes of every replica at
    /// once, acknowledged writes included. For latency comparison with logs kept in memory.
    Never,
}

/// How a [`ThreadLog`] is set up.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Size of each segment file, preallocated (default [`DEFAULT_SEGMENT_BYTES`], at least
    /// [`MIN_SEGMENT_BYTES`]). An entry may be at most a quarter of it.
    pub segment_bytes: u64,
    /// The owner's identity, written in every segment header and checked at open (e.g. the
    /// cluster's fingerprint, the node id and the thread): a log directory given to the
    /// wrong thread or node is refused instead of replayed.
    pub tag: u64,
    /// When writes become durable.
    pub sync: SyncPolicy,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            tag: 0,
            sync: SyncPolicy::Always,
        }
    }
}

/// Errors of the log.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A file operation failed.
    #[error("raft log: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A write or sync failed earlier: the log accepts nothing more.
    #[error("raft log failed earlier ({0}); restart to recover from the disk")]
    Failed(String),
    /// Durable data is damaged (not a torn tail): refusing to guess.
    #[error("raft log segment {segment:016x} is damaged at byte {offset}: {reason}")]
    Corrupt {
        /// The segment's sequence number.
        segment: u64,
        /// Byte offset in it.
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// A segment belongs to another owner.
    #[error(
        "raft log segment {segment:016x} belongs to owner {found:#x}, not {expected:#x} \
         (another node's or thread's log directory?)"
    )]
    TagMismatch {
        /// The segment.
        segment: u64,
        /// Its tag.
        found: u64,
        /// The tag expected.
        expected: u64,
    },
    /// After replay, a shard's entries do not start right after its compaction point.
    #[error("raft log: shard {shard} misses entries {from}..{to}")]
    MissingEntries {
        /// The shard.
        shard: ShardId,
        /// First missing index.
        from: u64,
        /// First index held.
        to: u64,
    },
    /// A change that does not fit the shard's log.
    #[error("raft log: {0}")]
    Store(#[from] StoreError),
    /// The store is not one of this log's shards.
    #[error("raft log: shard {0} is not in this log")]
    UnknownShard(ShardId),
    /// [`ThreadLog::bootstrap`] of a shard the log already has.
    #[error("raft log: shard {0} exists already")]
    ShardExists(ShardId),
    /// An entry larger than a quarter of a segment.
    #[error("raft log: shard {shard} entry {index} takes {bytes} bytes; at most {max} fit")]
    EntryTooLarge {
        /// The shard.
        shard: ShardId,
        /// The entry's index.
        index: u64,
        /// Its encoded size.
        bytes: usize,
        /// The most allowed.
        max: usize,
    },
    /// A state machine that applied less than the log has compacted away.
    #[error(
        "raft log: shard {shard}'s state machine applied up to {applied}, but the log is \
         compacted to {compacted}: the entries between are gone"
    )]
    StateMachineBehind {
        /// The shard.
        shard: ShardId,
        /// The state machine's applied index.
        applied: u64,
        /// The log's compaction point.
        compacted: u64,
    },
    /// Invalid options.
    #[error("raft log: {0}")]
    Config(String),
}

/// Result of the log's operations.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

fn io_err(op: &'static str) -> impl FnOnce(io::Error) -> LogError {
    move |source| LogError::Io { op, source }
}

/// What [`ThreadLog::open`] found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every shard the log holds, with its state.
    pub shards: BTreeMap<ShardId, ShardStore>,
    /// Segments replayed.
    pub segments: usize,
    /// Records replayed.
    pub records: u64,
    /// Bytes of a torn tail cut off the last segment (0 after a clean stop).
    pub torn_bytes: u64,
}

/// Counters of a [`ThreadLog`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Records encoded.
    pub records: u64,
    /// Bytes written to segments.
    pub bytes_written: u64,
    /// Write calls (one per `sync` with something to write, plus sealing).
    pub writes: u64,
    /// `fdatasync`s.
    pub syncs: u64,
    /// Segments created.
    pub segments_created: u64,
    /// Segments removed after compaction.
    pub segments_removed: u64,
}

/// What the log remembers of each shard to write checkpoints and decide removals.
#[derive(Clone, Debug, Default)]
struct Meta {
    /// The shard's hard state; its commit index may be newer than the log's
    /// (`commit_unwritten`).
    hs: HardState,
    /// A commit index noted by [`ThreadLog::write_ready`] but not recorded yet.
    commit_unwritten: bool,
    cs: ConfState,
    compacted: (u64, u64),
    applied: Option<Applied>,
}

impl Meta {
    fn of(store: &ShardStore) -> Self {
        Self {
            hs: store.hard_state().clone(),
            commit_unwritten: false,
            cs: store.conf_state().clone(),
            compacted: store.compacted(),
            applied: store.applied().cloned(),
        }
    }
}

/// The last segment found at open, when it can take more records.
struct Tail<F> {
    seq: u64,
    file: F,
    /// End of its valid records.
    written: u64,
    max_index: BTreeMap<ShardId, u64>,
}

/// A sealed segment.
#[derive(Debug)]
struct Sealed {
    seq: u64,
    /// Highest entry index of each shard in it.
    max_index: BTreeMap<ShardId, u64>,
}

/// The Raft log of one server thread, shared by the shards whose replicas the
/// thread runs.
///
/// - **One stream, many shards.** Every shard's entries, hard states and compactions go to
///   one append-only sequence of segments (format in [`format`](crate::format)), so one
///   `fdatasync` per loop iteration makes every shard's appends of that iteration durable
///   (group commit). The shards' state lives in memory in their [`ShardStore`]s.
/// - **Buffered until [`ThreadLog::sync`].** Changes are encoded into a buffer; `sync` writes
///   the buffer with one write and makes it durable with one `fdatasync`
///   ([`SyncPolicy::Always`]), then removes the segments compaction emptied.
/// - **Segments.** A record that would not fit in the active segment seals it (a Seal
///   record, then `fdatasync`: a segment is durable to its end before anything is written
///   after it) and opens the next one, which starts with a checkpoint of every shard's state
///   but the entries, made durable with the header before anything else is written there.
///   So the oldest segment can be removed as soon as every shard has compacted past the
///   entries it holds: nothing in it is needed any more.
/// - **Recovery** ([`ThreadLog::open`]) replays the segments in order. A non-final segment
///   must be whole up to its Seal; in the last one, replay stops at the first frame that is
///   not a valid record — a write torn by power loss, never acknowledged — and the tail
///   after it is cut and zeroed before anything new is written there. Damage to a sealed
///   segment, or a bad header in front of records, is an error rather than a guess.
///   (Limit: bit rot inside the last segment's synced records cannot be told from a torn
///   tail there, and is cut like one; a replica that lost entries that way is repaired by
///   its leader only if a quorum still has them.)
///
/// Once a write or a sync fails the log accepts nothing more ([`LogError::Failed`]): after
/// a failed `fdatasync` nothing is known about what reached the disk, and retrying could
/// report as durable what is not. The owner stops its replicas; a restart recovers from
/// what is on disk.
pub struct ThreadLog<D: LogDir> {
    dir: D,
    opts: LogOptions,
    seq: u64,
    file: D::File,
    /// Bytes of the active segment written so far (the next write's offset).
    written: u64,
    /// Encoded records not written yet.
    pending: Vec<u8>,
    /// Written since the last `fdatasync`.
    unsynced: bool,
    active_max: BTreeMap<ShardId, u64>,
    sealed: VecDeque<Sealed>,
    shards: BTreeMap<ShardId, Meta>,
    failed: Option<String>,
    stats: LogStats,
}

impl<D: LogDir> std::fmt::Debug for ThreadLog<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadLog")
            .field("seq", &self.seq)
            .field("written", &self.written)
            .field("pending", &self.pending.len())
            .field("sealed", &self.sealed.len())
            .field("shards", &self.shards.len())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Reads a whole file.
fn read_all<F: LogFile>(file: &F) -> io::Result<Vec<u8>> {
    let len = usize::try_from(file.file_len()?).map_err(|_| io::Error::other("file too large"))?;
    let mut buf = vec![0u8; len];
    let n = file.read_at(&mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// Whether the valid records of a segment (from the header on, up to the first frame that is
/// not one) are all checkpoint records.
fn only_checkpoint(buf: &[u8], seq: u64) -> bool {
    let mut pos = HEADER_LEN;
    while let Frame::Record { payload, next } = format::read_frame(buf, pos, seq) {
        if !matches!(
            format::decode_record(payload),
            Ok(Record::ShardMeta { .. } | Record::Applied { .. })
        ) {
            return false;
        }
        pos = next;
    }
    true
}

/// Replays one record into the shards.
fn replay(
    shards: &mut BTreeMap<ShardId, ShardStore>,
    max_index: &mut BTreeMap<ShardId, u64>,
    rec: Record,
) {
    match rec {
        Record::Entries { shard, entries, .. } => {
            let st = shards
                .entry(shard)
                .or_insert_with(|| ShardStore::new(shard));
            st.append(&entries);
            if let Some(last) = entries.last() {
                let m = max_index.entry(shard).or_insert(0);
                *m = (*m).max(last.index);
            }
        }
        Record::HardState { shard, hs } => shards
            .entry(shard)
            .or_insert_with(|| ShardStore::new(shard))
            .set_hard_state(hs),
        Record::ConfState { shard, cs } => shards
            .entry(shard)
            .or_insert_with(|| ShardStore::new(shard))
            .set_conf_state(cs),
        Record::Compact { shard, index, term } => shards
            .entry(shard)
            .or_insert_with(|| ShardStore::new(shard))
            .compact(index, term),
        Record::Snapshot {
            shard,
            index,
            term,
            cs,
        } => shards
            .entry(shard)
            .or_insert_with(|| ShardStore::new(shard))
            .apply_snapshot(index, term, cs),
        Record::ShardMeta {
            shard,
            hs,
            cs,
            compacted_index,
            compacted_term,
        } => shards
            .entry(shard)
            .or_insert_with(|| ShardStore::new(shard))
            .set_meta(hs, cs, (compacted_index, compacted_term)),
        Record::Applied {
            shard,
            index,
            term,
            data,
        } => shards
            .entry(shard)
            .or_insert_with(|| ShardStore::new(shard))
            .set_applied(Applied { index, term, data }),
        Record::Seal => {}
    }
}

impl<D: LogDir> ThreadLog<D> {
    /// Opens the log in `dir` (creating it if empty), replays it and returns the log, ready
    /// to append, and every shard's recovered state.
    pub fn open(dir: D, opts: LogOptions) -> Result<(Self, Recovered)> {
        if opts.segment_bytes < MIN_SEGMENT_BYTES || opts.segment_bytes > (1 << 40) {
            return Err(LogError::Config(format!(
                "segment_bytes = {}; must be {MIN_SEGMENT_BYTES}..=2^40",
                opts.segment_bytes
            )));
        }
        let mut seqs: Vec<u64> = dir
            .list()
            .map_err(io_err("listing the log directory"))?
            .iter()
            .filter_map(|n| format::parse_segment_name(n))
            .collect();
        seqs.sort_unstable();
        let mut rec = Recovered::default();
        let mut sealed = VecDeque::new();
        // The last segment, if it can take more records.
        let mut active: Option<Tail<D::File>> = None;
        let mut reinit: Option<(u64, D::File)> = None;
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let name = format::segment_name(seq);
            let mut file = dir.open(&name).map_err(io_err("opening a segment"))?;
            let buf = read_all(&file).map_err(io_err("reading a segment"))?;
            rec.segments += 1;
            match format::decode_header(&buf) {
                Ok(Header { seq: s, tag }) => {
                    if s != seq {
                        return Err(LogError::Corrupt {
                            segment: seq,
                            offset: 16,
                            reason: format!("header says segment {s:016x}"),
                        });
                    }
                    if tag != opts.tag {
                        return Err(LogError::TagMismatch {
                            segment: seq,
                            found: tag,
                            expected: opts.tag,
                        });
                    }
                }
                Err(e @ format::FormatError::Version(_)) => {
                    return Err(LogError::Corrupt {
                        segment: seq,
                        offset: 0,
                        reason: e.to_string(),
                    })
                }
                Err(e) => {
                    // A segment's header and checkpoint are synced before anything else is
                    // written in it, so a bad header followed by nothing but checkpoint
                    // records is a creation cut short.
                    if !last || !only_checkpoint(&buf, seq) {
                        return Err(LogError::Corrupt {
                            segment: seq,
                            offset: 0,
                            reason: format!("header: {e}"),
                        });
                    }
                    tracing::warn!(segment = seq, error = %e, "raft log: rewriting a segment whose creation was cut short");
                    reinit = Some((seq, file));
                    continue;
                }
            }
            let mut pos = HEADER_LEN;
            let mut is_sealed = false;
            let mut only_meta = true;
            let mut max_index = BTreeMap::new();
            let stop = loop {
                match format::read_frame(&buf, pos, seq) {
                    Frame::Record { payload, next } => {
                        let r = format::decode_record(payload).map_err(|e| LogError::Corrupt {
                            segment: seq,
                            offset: pos as u64,
                            reason: e.to_string(),
                        })?;
                        rec.records += 1;
                        pos = next;
                        if r == Record::Seal {
                            is_sealed = true;
                            break None;
                        }
                        only_meta &= matches!(r, Record::ShardMeta { .. });
                        replay(&mut rec.shards, &mut max_index, r);
                    }
                    Frame::End => break None,
                    Frame::Invalid(e) => break Some(e),
                }
            };
            if !last {
                if !is_sealed {
                    return Err(LogError::Corrupt {
                        segment: seq,
                        offset: pos as u64,
                        reason: stop.map_or_else(
                            || "ends before its seal".to_string(),
                            |e| format!("{e} before the segment's seal"),
                        ),
                    });
                }
                sealed.push_back(Sealed { seq, max_index });
                continue;
            }
            if is_sealed {
                sealed.push_back(Sealed { seq, max_index });
                continue;
            }
            if only_meta {
                // Nothing but (part of) its checkpoint: its creation may have been cut short
                // before the checkpoint was durable. Rewritten whole from what replay found.
                reinit = Some((seq, file));
                continue;
            }
            let tail = buf.get(pos..).unwrap_or_default();
            if tail.iter().any(|&b| b != 0) {
                // Torn by power loss: never acknowledged. Cut it so that nothing left of it
                // can follow what is written next.
                rec.torn_bytes = tail.len() as u64;
                tracing::warn!(
                    segment = seq,
                    offset = pos,
                    reason = %stop.map_or_else(|| "data after the end".to_string(), |e| e.to_string()),
                    "raft log: cutting a torn tail"
                );
                file.set_len(pos as u64)
                    .map_err(io_err("cutting a torn tail"))?;
            }
            file.allocate(opts.segment_bytes)
                .map_err(io_err("preallocating a segment"))?;
            file.sync_data().map_err(io_err("syncing a segment"))?;
            active = Some(Tail {
                seq,
                file,
                written: pos as u64,
                max_index,
            });
        }
        for (&shard, st) in &rec.shards {
            if !st.is_contiguous() {
                return Err(LogError::MissingEntries {
                    shard,
                    from: st.first(),
                    to: st.first_held().unwrap_or(st.first()),
                });
            }
        }
        let shards: BTreeMap<ShardId, Meta> = rec
            .shards
            .iter()
            .map(|(&s, st)| (s, Meta::of(st)))
            .collect();
        let next_seq = seqs.last().map_or(1, |s| s + 1);
        let (seq, file, written, active_max, fresh) = match (active, reinit) {
            (Some(t), _) => (t.seq, t.file, t.written, t.max_index, false),
            (None, Some((seq, file))) => (seq, file, 0, BTreeMap::new(), true),
            (None, None) => {
                let file = dir
                    .create(&format::segment_name(next_seq))
                    .map_err(io_err("creating a segment"))?;
                (next_seq, file, 0, BTreeMap::new(), true)
            }
        };
        let mut log = Self {
            dir,
            opts,
            seq,
            file,
            written,
            pending: Vec::new(),
            unsynced: false,
            active_max,
            sealed,
            shards,
            failed: None,
            stats: LogStats::default(),
        };
        if fresh {
            log.init_active()?;
        }
        Ok((log, rec))
    }

    /// Prepares the just-created (or rewritten) active segment: preallocated, then its
    /// header and a checkpoint of every shard's state but the entries, written and made
    /// durable with its directory entry before anything else goes in it. (So the segments
    /// before it can go once compacted, and a creation cut short shows as a segment holding
    /// nothing but its checkpoint, or less.)
    fn init_active(&mut self) -> Result<()> {
        let mut buf = format::encode_header(Header {
            seq: self.seq,
            tag: self.opts.tag,
        })
        .to_vec();
        for (&shard, m) in &mut self.shards {
            format::put_shard_meta(&mut buf, self.seq, shard, &m.hs, &m.cs, m.compacted);
            m.commit_unwritten = false;
            self.stats.records += 1;
            if let Some(a) = &m.applied {
                format::put_applied(&mut buf, self.seq, shard, a.index, a.term, &a.data);
                self.stats.records += 1;
            }
        }
        if buf.len() as u64 > self.opts.segment_bytes / 2 {
            let n = self.shards.len();
            return Err(self.fail(format!(
                "segment_bytes = {} is too small for the checkpoint of {n} shards ({} bytes)",
                self.opts.segment_bytes,
                buf.len()
            )));
        }
        let r = (|| {
            self.file.set_len(0)?;
            self.file.allocate(self.opts.segment_bytes)?;
            self.file.write_at(&buf, 0)?;
            self.file.sync_data()?;
            self.dir.sync_dir()
        })();
        self.fail_on(r, "creating a segment")?;
        self.stats.segments_created += 1;
        self.stats.writes += 1;
        self.stats.bytes_written += buf.len() as u64;
        self.stats.syncs += 1;
        self.written = buf.len() as u64;
        self.active_max.clear();
        Ok(())
    }

    fn fail(&mut self, why: String) -> LogError {
        tracing::error!(error = %why, "raft log: failed; accepting nothing more");
        self.failed = Some(why.clone());
        LogError::Failed(why)
    }

    fn fail_on<T>(&mut self, r: io::Result<T>, op: &'static str) -> Result<T> {
        r.map_err(|source| {
            let why = format!("{op}: {source}");
            tracing::error!(error = %why, "raft log: I/O failed; accepting nothing more");
            self.failed = Some(why);
            LogError::Io { op, source }
        })
    }

    fn check(&self) -> Result<()> {
        match &self.failed {
            Some(why) => Err(LogError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn check_shard(&self, store: &ShardStore) -> Result<()> {
        self.check()?;
        if self.shards.contains_key(&store.shard()) {
            Ok(())
        } else {
            Err(LogError::UnknownShard(store.shard()))
        }
    }

    /// The most bytes one record may take.
    fn max_record(&self) -> usize {
        usize::try_from(self.opts.segment_bytes / 4).unwrap_or(usize::MAX)
    }

    /// Encodes one record with `put` (given the buffer and the segment's seq); seals the
    /// active segment first if the record does not fit in it.
    fn push(&mut self, put: impl FnOnce(&mut Vec<u8>, u64)) -> Result<()> {
        let start = self.pending.len();
        put(&mut self.pending, self.seq);
        self.stats.records += 1;
        let end = self.written + self.pending.len() as u64 + SEAL_LEN as u64;
        if end <= self.opts.segment_bytes {
            return Ok(());
        }
        let rec = self.pending.split_off(start);
        self.rotate()?;
        let start = self.pending.len();
        self.pending.extend_from_slice(&rec);
        format::finish_record(&mut self.pending, start, self.seq);
        Ok(())
    }

    /// Seals the active segment (durably) and starts the next one.
    fn rotate(&mut self) -> Result<()> {
        format::put_seal(&mut self.pending, self.seq);
        let r = self.file.write_at(&self.pending, self.written);
        self.fail_on(r, "writing a segment")?;
        self.stats.writes += 1;
        self.stats.bytes_written += self.pending.len() as u64;
        self.written += self.pending.len() as u64;
        self.pending.clear();
        // Durable to its seal before anything goes to the next segment, so that only the
        // last segment can ever have a torn tail — under SyncPolicy::Never too.
        let r = self.file.sync_data();
        self.fail_on(r, "syncing a sealed segment")?;
        self.stats.syncs += 1;
        self.unsynced = false;
        self.sealed.push_back(Sealed {
            seq: self.seq,
            max_index: std::mem::take(&mut self.active_max),
        });
        self.seq += 1;
        let r = self.dir.create(&format::segment_name(self.seq));
        self.file = self.fail_on(r, "creating a segment")?;
        self.init_active()
    }

    /// Records a new shard with its conf state (its voters) and returns its store, for its
    /// `RawNode`. Durable at the next [`ThreadLog::sync`].
    pub fn bootstrap(&mut self, shard: ShardId, cs: ConfState) -> Result<ShardStore> {
        self.check()?;
        if self.shards.contains_key(&shard) {
            return Err(LogError::ShardExists(shard));
        }
        self.push(|b, seq| format::put_conf_state_record(b, seq, shard, &cs))?;
        let mut store = ShardStore::new(shard);
        store.set_conf_state(cs);
        self.shards.insert(shard, Meta::of(&store));
        Ok(store)
    }

    /// Appends entries to a shard's log (replacing its entries from the first one given
    /// on, as Raft does with a conflicting suffix).
    pub fn append(&mut self, store: &mut ShardStore, entries: &[Entry]) -> Result<()> {
        self.check_shard(store)?;
        if entries.is_empty() {
            return Ok(());
        }
        store.check_append(entries)?;
        let shard = store.shard();
        let max = self.max_record();
        let mut from = 0;
        while from < entries.len() {
            let mut size = format::ENTRIES_OVERHEAD;
            let mut to = from;
            while let Some(e) = entries.get(to) {
                let s = format::entry_size(e);
                if size + s > max {
                    if to == from {
                        return Err(LogError::EntryTooLarge {
                            shard,
                            index: e.index,
                            bytes: s + format::ENTRIES_OVERHEAD,
                            max,
                        });
                    }
                    break;
                }
                size += s;
                to += 1;
            }
            let chunk = entries.get(from..to).unwrap_or_default();
            self.push(|b, seq| format::put_entries(b, seq, shard, chunk))?;
            if let Some(last) = chunk.last() {
                let m = self.active_max.entry(shard).or_insert(0);
                *m = (*m).max(last.index);
            }
            from = to;
        }
        store.append(entries);
        Ok(())
    }

    /// Records a shard's new hard state.
    pub fn set_hard_state(&mut self, store: &mut ShardStore, hs: &HardState) -> Result<()> {
        self.check_shard(store)?;
        let shard = store.shard();
        self.push(|b, seq| format::put_hard_state_record(b, seq, shard, hs))?;
        store.set_hard_state(hs.clone());
        if let Some(m) = self.shards.get_mut(&shard) {
            m.hs = hs.clone();
            m.commit_unwritten = false;
        }
        Ok(())
    }

    /// Records that a snapshot at `meta.index` was applied to the shard's state machine:
    /// its log is empty, compacted to the snapshot.
    pub fn apply_snapshot(
        &mut self,
        store: &mut ShardStore,
        meta: &SnapshotMetadata,
    ) -> Result<()> {
        self.check_shard(store)?;
        let shard = store.shard();
        let (index, term) = (meta.index, meta.term);
        let cs = meta.get_conf_state();
        self.push(|b, seq| format::put_snapshot(b, seq, shard, index, term, cs))?;
        store.apply_snapshot(index, term, cs.clone());
        self.shards.insert(shard, Meta::of(store));
        Ok(())
    }

    /// Drops the shard's entries up to `index` (no-op if already compacted that far).
    ///
    /// The caller's promise: the state machine has made everything up to `index` durable
    /// (it will not need these entries to recover), and a follower that still needs them
    /// can be sent a snapshot.
    pub fn compact(&mut self, store: &mut ShardStore, index: u64) -> Result<()> {
        self.check_shard(store)?;
        if index <= store.compacted().0 {
            return Ok(());
        }
        let shard = store.shard();
        let Some(term) = store.term_of(index).filter(|_| index <= store.last()) else {
            return Err(StoreError::CompactPastEnd {
                shard,
                index,
                last_index: store.last(),
            }
            .into());
        };
        self.push(|b, seq| format::put_compact(b, seq, shard, index, term))?;
        store.compact(index, term);
        if let Some(m) = self.shards.get_mut(&shard) {
            m.compacted = (index, term);
        }
        Ok(())
    }

    /// Records that the shard's state machine has made everything up to `index` (an entry
    /// of `term`) durable, with `data`, the owner's own state at that index (the server's
    /// client sessions), which [`ShardStore::applied`] returns after a restart. Durable at
    /// the next [`ThreadLog::sync`]; kept in every later segment's checkpoint, so it
    /// survives the removal of the segment it was written in.
    ///
    /// The caller's promise: the state machine's image at `index` (or a later one, for a
    /// state machine whose replay of the entries after `index` is idempotent) survives a
    /// power cut. Then [`ThreadLog::compact`] up to `index` is allowed.
    pub fn record_applied(
        &mut self,
        store: &mut ShardStore,
        index: u64,
        term: u64,
        data: &[u8],
    ) -> Result<()> {
        self.check_shard(store)?;
        let shard = store.shard();
        let size = format::applied_size(data.len());
        // It goes into every checkpoint too, and a checkpoint must leave room in a segment.
        let max = self.max_record() / 2;
        if size > max {
            return Err(LogError::EntryTooLarge {
                shard,
                index,
                bytes: size,
                max,
            });
        }
        // A checkpoint's commit index is never older than its applied index on disk.
        if let Some(m) = self.shards.get(&shard).filter(|m| m.commit_unwritten) {
            let hs = m.hs.clone();
            self.set_hard_state(store, &hs)?;
        }
        self.push(|b, seq| format::put_applied(b, seq, shard, index, term, data))?;
        let a = Applied {
            index,
            term,
            data: bytes::Bytes::copy_from_slice(data),
        };
        store.set_applied(a.clone());
        if let Some(m) = self.shards.get_mut(&shard) {
            if m.applied.as_ref().is_none_or(|old| index >= old.index) {
                m.applied = Some(a);
            }
        }
        Ok(())
    }

    /// Makes a recovered shard's log agree with its state machine, which has applied (and
    /// made durable) everything up to `applied`, an entry of term `applied_term`. Call it
    /// at start-up, before the shard's `RawNode` is made (with `Config::applied = applied`).
    ///
    /// - The state machine may be ahead of the log: it made a snapshot durable whose
    ///   Snapshot record did not reach the log before a crash. The log then records that
    ///   snapshot now.
    /// - Its applied index may be past the durable commit index (the hard state recording
    ///   the commit was not synced yet): what was applied was committed, so the commit index
    ///   is raised to it.
    /// - A state machine behind the log's compaction point cannot be brought up to date
    ///   from this log: [`LogError::StateMachineBehind`] (the log is compacted only below
    ///   what the state machine made durable, so this means data lost outside the log).
    pub fn align_with_state_machine(
        &mut self,
        store: &mut ShardStore,
        applied: u64,
        applied_term: u64,
    ) -> Result<()> {
        self.check_shard(store)?;
        if applied == 0 {
            return Ok(());
        }
        let (compacted, _) = store.compacted();
        if applied < compacted {
            return Err(LogError::StateMachineBehind {
                shard: store.shard(),
                applied,
                compacted,
            });
        }
        if store.term_of(applied) != Some(applied_term) {
            let meta = SnapshotMetadata {
                index: applied,
                term: applied_term,
                conf_state: Some(store.conf_state().clone()).into(),
                ..SnapshotMetadata::default()
            };
            self.apply_snapshot(store, &meta)?;
        }
        if store.hard_state().commit < applied {
            let mut hs = store.hard_state().clone();
            hs.commit = applied;
            self.set_hard_state(store, &hs)?;
        }
        Ok(())
    }

    /// Records what a `Ready` asks to persist — its snapshot, its entries, its hard state,
    /// in that order — into the shard's log. Durable at the next [`ThreadLog::sync`]; then
    /// call `RawNode::on_persist_ready` (after `advance_append_async`) and send the ready's
    /// persisted messages.
    ///
    /// A ready that only moves the commit index (no entries, no snapshot, the same term
    /// and vote) writes nothing: the new commit index is recorded with the shard's next
    /// entries or hard state, or in the next segment's shard meta. Raft does not need the
    /// commit index to be durable — a restarted replica learns it again from its leader,
    /// and re-applying the entries between the two is what a restart does anyway — while
    /// recording it on its own would cost a leader one more write and `fdatasync` per
    /// commit, on the way to its client's answer.
    pub fn write_ready(&mut self, store: &mut ShardStore, rd: &Ready) -> Result<()> {
        if !rd.snapshot().is_empty() {
            self.apply_snapshot(store, rd.snapshot().get_metadata())?;
        }
        self.append(store, rd.entries())?;
        self.check_shard(store)?;
        let shard = store.shard();
        let Some(m) = self.shards.get_mut(&shard) else {
            return Err(LogError::UnknownShard(shard));
        };
        let nothing_else = rd.entries().is_empty() && rd.snapshot().is_empty();
        match rd.hs() {
            Some(hs) if nothing_else && hs.term == m.hs.term && hs.vote == m.hs.vote => {
                m.hs = hs.clone();
                m.commit_unwritten = true;
                store.set_hard_state(hs.clone());
                Ok(())
            }
            Some(hs) => self.set_hard_state(store, hs),
            // Entries are written anyway: the commit index noted earlier rides along.
            None if m.commit_unwritten && !rd.entries().is_empty() => {
                let hs = m.hs.clone();
                self.set_hard_state(store, &hs)
            }
            None => Ok(()),
        }
    }

    /// Whether records wait for [`ThreadLog::sync`].
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || self.unsynced
    }

    /// Writes everything recorded since the last write with one write, without making it
    /// durable (it reaches the page cache: it survives the process, not power loss).
    /// [`ThreadLog::sync`] does this first.
    pub fn flush(&mut self) -> Result<()> {
        self.check()?;
        if !self.pending.is_empty() {
            let r = self.file.write_at(&self.pending, self.written);
            self.fail_on(r, "writing a segment")?;
            self.stats.writes += 1;
            self.stats.bytes_written += self.pending.len() as u64;
            self.written += self.pending.len() as u64;
            self.pending.clear();
            self.unsynced = true;
        }
        Ok(())
    }

    /// Writes everything recorded since the last call with one write and, under
    /// [`SyncPolicy::Always`], makes it durable with one `fdatasync`: the group commit of
    /// one loop iteration. Then removes the oldest segments no shard needs any more.
    pub fn sync(&mut self) -> Result<()> {
        self.flush()?;
        if self.unsynced && self.opts.sync == SyncPolicy::Always {
            let r = self.file.sync_data();
            self.fail_on(r, "syncing a segment")?;
            self.stats.syncs += 1;
            self.unsynced = false;
        }
        self.remove_compacted();
        Ok(())
    }

    /// Removes sealed segments, oldest first, while every shard has compacted past all the
    /// entries in them. (Their other records are superseded by the checkpoint at the start
    /// of the next segment.) Only a prefix goes, so replay never skips a segment that
    /// overwrote entries of an older one it keeps.
    fn remove_compacted(&mut self) {
        let mut removed = false;
        while let Some(front) = self.sealed.front() {
            let needed = front
                .max_index
                .iter()
                .any(|(s, &max)| self.shards.get(s).is_some_and(|m| max > m.compacted.0));
            if needed {
                break;
            }
            let name = format::segment_name(front.seq);
            if let Err(e) = self.dir.remove(&name) {
                // Harmless to keep: replay skips what it holds. Tried again next time.
                tracing::warn!(segment = front.seq, error = %e, "raft log: cannot remove a compacted segment");
                break;
            }
            self.sealed.pop_front();
            self.stats.segments_removed += 1;
            removed = true;
        }
        if removed {
            if let Err(e) = self.dir.sync_dir() {
                tracing::warn!(error = %e, "raft log: cannot sync the directory after removing segments");
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> LogStats {
        self.stats
    }

    /// Segment files in use (sealed ones kept and the active one).
    pub fn segments(&self) -> usize {
        self.sealed.len() + 1
    }

    /// The active segment's sequence number.
    pub fn active_segment(&self) -> u64 {
        self.seq
    }

    /// The shards the log holds.
    pub fn shards(&self) -> impl Iterator<Item = ShardId> + '_ {
        self.shards.keys().copied()
    }

    /// Whether an earlier failure stopped the log.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }
}
