//! Checkpoints, compaction and snapshot transfers of a thread's replicas (the design is in
//! the [cluster module documentation](super) and `docs/CLUSTER.md`).

use kv_engine::Backend;
use kv_proto::{Op, Reply, Status};
use kv_raft::raft::eraftpb::{Message, MessageType};
use kv_raft::raft::{SnapshotStatus, StateRole};
use kv_raft::ShardId;
use rpc::Ctx;

use super::snapshot::{self as chunk, ChunkHeader};
use super::{
    after, checkpoint_snapshot, decode_sessions, Capture, Incoming, Replicas, SnapOp, Transfer,
    INCOMING_TIMEOUT_NS, SNAPSHOT_CHUNK_BYTES, SNAPSHOT_DEADLINE_MS, SNAPSHOT_TIMEOUT_NS, SNAP_TAG,
};
use crate::state::ServerState;

impl Replicas {
    fn snap_tag(&mut self) -> u64 {
        let tag = self.next_apply_tag | SNAP_TAG;
        self.next_apply_tag += 1;
        tag
    }

    /// Starts sending the snapshot raft-rs asked to send with `msg` (unless one is being
    /// sent to that follower already: raft-rs waits for its report before asking again).
    pub(super) fn start_transfer(&mut self, shard: ShardId, msg: Message, now: u64) {
        let to = msg.to;
        if self
            .transfers
            .iter()
            .any(|t| t.shard == shard && t.to == to)
        {
            return;
        }
        let index = msg.get_snapshot().get_metadata().index;
        let id = self.next_transfer;
        self.next_transfer += 1;
        self.stats.snapshots_sent += 1;
        tracing::info!(shard, to, index, "sending a snapshot");
        self.transfers.push(Transfer {
            id,
            shard,
            to,
            msg,
            index,
            next_start: Some(Vec::new()),
            queue: Default::default(),
            seq: 0,
            in_flight: false,
            reading: false,
            failed: false,
            retry_at: 0,
            started: now,
        });
    }
}

/// Whether shard `s` is due for a checkpoint (`seg`: the log's active segment).
fn checkpoint_due(c: &super::CompactionSettings, seg: u64, s: &super::Shard) -> bool {
    let since = s.submitted.saturating_sub(s.checkpoint.0);
    since > 0
        && (since >= c.checkpoint_entries
            || s.node.store().entry_bytes() as u64 >= c.checkpoint_bytes
            || s.node.store().snapshot_wanted().is_some()
            || seg > s.checkpoint_seg + 1)
}

/// Takes a checkpoint of shard `s` at its last entry handed to the engine, if due; returns
/// whether it has one whose entries the engine has all completed.
fn capture_and_check(c: &super::CompactionSettings, seg: u64, s: &mut super::Shard) -> bool {
    if s.capture.is_none() && s.incoming.is_none() && checkpoint_due(c, seg, s) {
        let mut data = Vec::new();
        s.sessions.encode(&mut data);
        s.capture = Some(Capture {
            index: s.submitted,
            term: s.last_term,
            data,
        });
    }
    s.capture
        .as_ref()
        .is_some_and(|cap| s.applied() >= cap.index)
}

impl<B: Backend> ServerState<B> {
    /// Records the checkpoints whose entries the engine has all completed: one engine sync
    /// for all of them, then per shard the applied index and sessions in the log, the
    /// snapshot raft-rs may hand out, and the compaction; then one log sync.
    pub(super) fn record_checkpoints(&mut self, c: &mut Replicas) -> bool {
        // Checked every iteration: a few comparisons per shard, no allocation unless due.
        let (comp, seg) = (c.opts.compaction, c.log.active_segment());
        let mut due: Vec<ShardId> = Vec::new();
        for (&id, s) in c.shards.iter_mut() {
            if capture_and_check(&comp, seg, s) {
                due.push(id);
            }
        }
        if due.is_empty() {
            return false;
        }
        // Everything the engine completed (every entry up to each capture) survives a
        // power cut from here on.
        if let Err(e) = self.worker.sync() {
            tracing::error!(thread = c.thread, error = %e, "engine sync failed: no checkpoint");
            for shard in due {
                if let Some(s) = c.shards.get_mut(&shard) {
                    s.capture = None;
                }
            }
            return true;
        }
        for shard in due {
            let Some(cap) = c.shards.get_mut(&shard).and_then(|s| s.capture.take()) else {
                continue;
            };
            let Some(s) = c.shards.get(&shard) else {
                continue;
            };
            let to = c.compaction_point(shard, s, cap.index);
            let Some(s) = c.shards.get_mut(&shard) else {
                continue;
            };
            let store = s.node.mut_store();
            let r = c
                .log
                .record_applied(store, cap.index, cap.term, &cap.data)
                .and_then(|()| {
                    let snap = checkpoint_snapshot(store, cap.index, cap.term, &cap.data);
                    store.set_snapshot(snap);
                    c.log.compact(store, to)
                });
            if let Err(e) = r {
                tracing::error!(thread = c.thread, shard, error = %e, "raft log failed: replicas stop");
                c.failed = true;
                return true;
            }
            s.checkpoint = (cap.index, cap.term);
            s.checkpoint_seg = c.log.active_segment();
            c.stats.checkpoints += 1;
            tracing::debug!(shard, applied = cap.index, compacted = to, "checkpoint");
        }
        if let Err(e) = c.log.sync() {
            tracing::error!(thread = c.thread, error = %e, "raft log sync failed: replicas stop");
            c.failed = true;
        }
        true
    }

    /// A chunk of a snapshot from the shard's leader: written to the engine (its items, and
    /// deletes of this replica's keys in the chunk's range that it lacks); the shard is
    /// frozen from the first chunk until the snapshot is installed.
    pub(super) fn receive_chunk(
        &mut self,
        c: &mut Replicas,
        data: &[u8],
        now: u64,
    ) -> Result<(), (Status, String)> {
        let bad = |why: String| (Status::BadRequest, why);
        let ch = chunk::decode_chunk(data).map_err(|e| bad(e.to_string()))?;
        let cluster = c.opts.cluster.clone();
        let shard = ch.shard;
        let Some(s) = c.shards.get_mut(&shard) else {
            return Err(bad(format!("no replica of shard {shard} here")));
        };
        if s.node.raft.state == StateRole::Leader {
            return Err(bad(format!("shard {shard}: this replica leads")));
        }
        if ch.items.iter().any(|(k, _)| cluster.shard_of(k) != shard) {
            return Err(bad(format!("a key of the snapshot is not shard {shard}'s")));
        }
        if ch.seq == 0 {
            // Nothing of the shard may be on its way to the engine: a write applied after
            // a chunk could put back an older value, a delete computed from the index
            // could miss a key still being written.
            if !s.in_engine.is_empty() || s.install_ops > 0 {
                return Err((Status::Overloaded, "busy applying; send again".into()));
            }
            if s.incoming.is_some() {
                tracing::info!(shard, "a new snapshot replaces the one being received");
            }
            s.incoming = Some(Incoming {
                from: ch.from,
                transfer: ch.transfer,
                next_seq: 0,
                prev_end: None,
                msg: None,
                last_at: now,
            });
            s.install_failed = false;
            s.capture = None;
        }
        let Some(inc) = s.incoming.as_mut() else {
            return Err(bad("a snapshot chunk without its start".into()));
        };
        if (inc.from, inc.transfer, inc.next_seq) != (ch.from, ch.transfer, ch.seq)
            || inc.msg.is_some()
        {
            return Err(bad(format!(
                "unexpected snapshot chunk {} of transfer {} from node {}",
                ch.seq, ch.transfer, ch.from
            )));
        }
        if let Some(m) = &ch.msg {
            if m.get_msg_type() != MessageType::MsgSnapshot || m.from != ch.from {
                return Err(bad("the last chunk does not carry its MsgSnapshot".into()));
            }
        }
        let start = inc.prev_end.as_deref().map(after).unwrap_or_default();
        let items = &ch.items;
        let keep = |k: &[u8]| {
            cluster.shard_of(k) == shard && items.binary_search_by(|(ik, _)| (*ik).cmp(k)).is_err()
        };
        let stale = self
            .worker
            .keys_between_where(&start, ch.end, usize::MAX, &keep);
        inc.prev_end = ch.end.map(<[u8]>::to_vec);
        inc.next_seq += 1;
        inc.last_at = now;
        inc.msg = ch.msg;
        let n = stale.len() + ch.items.len();
        s.install_ops += n;
        c.stats.chunks_received += 1;
        for k in stale {
            let tag = c.next_apply_tag | SNAP_TAG;
            c.next_apply_tag += 1;
            c.snap_ops.insert(tag, SnapOp::Install { shard });
            self.worker.submit(Op::Delete { key: k.into_vec() }, tag);
        }
        for (k, v) in ch.items {
            let tag = c.next_apply_tag | SNAP_TAG;
            c.next_apply_tag += 1;
            c.snap_ops.insert(tag, SnapOp::Install { shard });
            self.worker.submit(
                Op::Put {
                    key: k.to_vec(),
                    value: v.to_vec(),
                },
                tag,
            );
        }
        Ok(())
    }

    /// Snapshots received whole and written: the engine synced, then the MsgSnapshot
    /// stepped (the ready that follows records it). Snapshots whose leader went quiet are
    /// given up (the shard's state is then newer than its applied index in places, which
    /// the replay of the following entries repairs, as after a restart).
    pub(super) fn finish_installs(&mut self, c: &mut Replicas, now: u64) -> bool {
        let mut ready = Vec::new();
        for (&shard, s) in c.shards.iter_mut() {
            let Some(inc) = &s.incoming else {
                continue;
            };
            if inc.msg.is_some() && s.install_ops == 0 {
                ready.push(shard);
            } else if s.install_ops == 0 && now.saturating_sub(inc.last_at) > INCOMING_TIMEOUT_NS {
                tracing::warn!(
                    shard,
                    from = inc.from,
                    "snapshot transfer went quiet; given up"
                );
                s.incoming = None;
            }
        }
        if ready.is_empty() {
            return false;
        }
        let synced = self.worker.sync();
        if let Err(e) = &synced {
            tracing::error!(thread = c.thread, error = %e, "engine sync failed: snapshot not installed");
        }
        for shard in ready {
            let Some(s) = c.shards.get_mut(&shard) else {
                continue;
            };
            let Some(msg) = s.incoming.take().and_then(|i| i.msg) else {
                continue;
            };
            if synced.is_err() || s.install_failed {
                continue;
            }
            if let Err(e) = s.node.step(msg) {
                tracing::warn!(shard, error = %e, "snapshot message refused");
            }
        }
        true
    }

    /// A ready carries a snapshot (stepped by [`ServerState::finish_installs`], its data
    /// already durable in the engine): the applied index and the sessions go to the log
    /// before the snapshot does (so a torn write never leaves a log compacted past what it
    /// says the state machine applied).
    pub(super) fn install_snapshot(
        &mut self,
        c: &mut Replicas,
        shard: ShardId,
        snap: &kv_raft::raft::eraftpb::Snapshot,
    ) -> Result<(), String> {
        let meta = snap.get_metadata();
        let sessions = decode_sessions(&snap.data).map_err(|e| e.to_string())?;
        let Some(s) = c.shards.get_mut(&shard) else {
            return Ok(());
        };
        let store = s.node.mut_store();
        c.log
            .record_applied(store, meta.index, meta.term, &snap.data)
            .map_err(|e| e.to_string())?;
        store.set_snapshot(snap.clone());
        s.sessions = sessions;
        s.submitted = meta.index;
        s.last_term = meta.term;
        s.checkpoint = (meta.index, meta.term);
        s.checkpoint_seg = c.log.active_segment();
        s.capture = None;
        c.stats.snapshots_installed += 1;
        tracing::info!(shard, index = meta.index, "snapshot installed");
        Ok(())
    }

    /// Moves the snapshot transfers on: reads the next keys from the engine, sends the next
    /// chunk once the previous one was answered, reports the outcome to raft-rs.
    pub(super) fn pump_transfers(&mut self, c: &mut Replicas, ctx: &mut Ctx, now: u64) -> bool {
        if c.transfers.is_empty() {
            return false;
        }
        let mut work = false;
        let mut ended: Vec<(u64, bool)> = Vec::new();
        let cluster = c.opts.cluster.clone();
        let max_keys = c.opts.compaction.snapshot_keys.max(1);
        for i in 0..c.transfers.len() {
            let Some(t) = c.transfers.get(i) else { break };
            let leads = c
                .shards
                .get(&t.shard)
                .is_some_and(|s| s.node.raft.state == StateRole::Leader);
            if t.failed || !leads || now.saturating_sub(t.started) > SNAPSHOT_TIMEOUT_NS {
                ended.push((t.id, false));
                continue;
            }
            if t.in_flight || t.reading || now < t.retry_at {
                continue;
            }
            if let Some(body) = t.queue.front() {
                let session = c
                    .peers
                    .iter()
                    .find(|p| p.node == t.to)
                    .and_then(|p| p.session);
                let Some(session) = session else {
                    ended.push((t.id, false));
                    continue;
                };
                let m = ctx.msg_from(body);
                let deadline = Some(std::time::Duration::from_millis(SNAPSHOT_DEADLINE_MS));
                let id = t.id;
                let sent = ctx.enqueue_request_with_deadline(
                    session,
                    kv_proto::op::RAFT_SNAPSHOT,
                    m,
                    id,
                    deadline,
                );
                if sent.is_err() {
                    ended.push((id, false));
                } else if let Some(t) = c.transfers.get_mut(i) {
                    t.in_flight = true;
                }
                work = true;
            } else if let Some(start) = t.next_start.clone() {
                let shard = t.shard;
                let id = t.id;
                let keep = |k: &[u8]| cluster.shard_of(k) == shard;
                let keys: Vec<Vec<u8>> = self
                    .worker
                    .keys_where(&start, max_keys, &keep)
                    .into_iter()
                    .map(<[u8]>::into_vec)
                    .collect();
                let tag = c.snap_tag();
                c.snap_ops.insert(
                    tag,
                    SnapOp::Read {
                        transfer: id,
                        listed_last: keys.last().cloned(),
                        full: keys.len() >= max_keys,
                    },
                );
                self.worker.submit_scan_of(keys, tag);
                if let Some(t) = c.transfers.get_mut(i) {
                    t.reading = true;
                }
                work = true;
            } else {
                ended.push((t.id, true));
            }
        }
        for (id, ok) in ended {
            let Some(pos) = c.transfers.iter().position(|t| t.id == id) else {
                continue;
            };
            let t = c.transfers.swap_remove(pos);
            if ok {
                c.stats.snapshots_finished += 1;
                tracing::info!(shard = t.shard, to = t.to, index = t.index, "snapshot sent");
            } else {
                tracing::info!(shard = t.shard, to = t.to, "snapshot transfer failed");
            }
            if let Some(s) = c.shards.get_mut(&t.shard) {
                if s.node.raft.state == StateRole::Leader {
                    let st = if ok {
                        SnapshotStatus::Finish
                    } else {
                        SnapshotStatus::Failure
                    };
                    s.node.report_snapshot(t.to, st);
                }
            }
            work = true;
        }
        work
    }

    /// The engine completed snapshot work (`tag` is one of [`Replicas::snap_ops`]).
    pub(super) fn on_snap_done(
        &mut self,
        c: &mut Replicas,
        tag: u64,
        result: kv_engine::Result<Reply>,
    ) {
        let Some(op) = c.snap_ops.remove(&tag) else {
            return;
        };
        match op {
            SnapOp::Install { shard } => {
                if let Some(s) = c.shards.get_mut(&shard) {
                    s.install_ops = s.install_ops.saturating_sub(1);
                    if let Err(e) = result {
                        tracing::error!(shard, error = %e, "writing a snapshot failed");
                        s.install_failed = true;
                    }
                }
            }
            SnapOp::Read {
                transfer,
                listed_last,
                full,
            } => {
                let from = c.opts.node;
                let Some(t) = c.transfers.iter_mut().find(|t| t.id == transfer) else {
                    return;
                };
                t.reading = false;
                let items = match result {
                    Ok(Reply::Items(items)) => items,
                    other => {
                        tracing::warn!(shard = t.shard, result = ?other.err(), "reading a snapshot failed");
                        t.failed = true;
                        return;
                    }
                };
                let mut batch: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
                let mut size = 0usize;
                for item in items {
                    let n = item.0.len() + item.1.len() + 8;
                    if !batch.is_empty() && size + n > SNAPSHOT_CHUNK_BYTES {
                        let end = batch.last().map(|(k, _)| k.clone()).unwrap_or_default();
                        let h = ChunkHeader {
                            from,
                            shard: t.shard,
                            transfer: t.id,
                            seq: t.seq,
                        };
                        t.queue
                            .push_back(chunk::encode_chunk(&h, Some(&end), &batch, None));
                        t.seq += 1;
                        batch.clear();
                        size = 0;
                    }
                    size += n;
                    batch.push(item);
                }
                let h = ChunkHeader {
                    from,
                    shard: t.shard,
                    transfer: t.id,
                    seq: t.seq,
                };
                t.seq += 1;
                match listed_last.filter(|_| full) {
                    Some(end) => {
                        t.queue
                            .push_back(chunk::encode_chunk(&h, Some(&end), &batch, None));
                        t.next_start = Some(after(&end));
                    }
                    None => {
                        t.queue
                            .push_back(chunk::encode_chunk(&h, None, &batch, Some(&t.msg)));
                        t.next_start = None;
                    }
                }
            }
        }
    }
}
