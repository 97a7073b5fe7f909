//! Client sessions of a shard's state machine: what makes a retried write apply once.
//!
//! Every write a client sends carries a [`RequestId`]: its client id, a sequence number of
//! its own, and the lowest sequence number it has not had an answer for yet. When a leader
//! fails after committing a write but before answering, the client sends the write again to
//! the next leader with the same id; at apply, the shard finds the id in its [`Sessions`]
//! and answers what the first application answered instead of applying it again.
//!
//! Everything here runs at apply time, in log order, on every replica, so every replica
//! holds the same sessions; they are saved with the state machine (`encode` / `decode`) so
//! that a restart or a snapshot keeps them.
//!
//! A session remembers the answers of its requests from the client's `first_unanswered` on
//! (the client has seen the others and will not retry them), and the
//! [`Sessions::max_clients`] most recently active sessions are kept; a request of a session
//! that was dropped, or older than its window, is [`Dedup::Forgotten`]: the server cannot
//! know whether it was applied, and must say so rather than apply it again.

use std::collections::BTreeMap;

/// A write's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    /// The client (random, 64 bits, chosen at client start).
    pub client: u64,
    /// The request's number within the client, increasing.
    pub seq: u64,
    /// The lowest of the client's request numbers it has had no answer for: it will not
    /// retry any below.
    pub first_unanswered: u64,
}

/// What a shard knows of a request at apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dedup {
    /// Not seen: apply it.
    New,
    /// Applied before, with this answer (a code of the caller's choosing).
    Applied(u8),
    /// Possibly applied, but no longer remembered: do not apply, answer that it is unknown.
    Forgotten,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Session {
    /// Requests below this are answered and forgotten.
    floor: u64,
    /// Answers of the requests from `floor` on.
    answers: BTreeMap<u64, u8>,
    /// Log index of the session's last request (for eviction).
    last_index: u64,
}

/// The sessions of one shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sessions {
    clients: BTreeMap<u64, Session>,
    max_clients: usize,
    /// Answers kept per session at most (a client with more unanswered requests in flight
    /// than this loses the oldest).
    max_answers: usize,
}

/// Default [`Sessions::max_clients`].
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// Default answers kept per session.
pub const DEFAULT_MAX_ANSWERS: usize = 1024;

impl Default for Sessions {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_CLIENTS, DEFAULT_MAX_ANSWERS)
    }
}

/// Why saved sessions do not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("saved client sessions are truncated or damaged")]
pub struct SessionsDecodeError;

impl Sessions {
    /// Sessions keeping at most `max_clients` clients and `max_answers` answers each.
    pub fn new(max_clients: usize, max_answers: usize) -> Self {
        Self {
            clients: BTreeMap::new(),
            max_clients: max_clients.max(1),
            max_answers: max_answers.max(1),
        }
    }

    /// Most sessions kept.
    pub fn max_clients(&self) -> usize {
        self.max_clients
    }

    /// Sessions held.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }

    /// What is known of request `id`.
    ///
    /// ```
    /// use kv_raft::sessions::{Dedup, RequestId, Sessions};
    /// let mut s = Sessions::default();
    /// let id = RequestId { client: 7, seq: 1, first_unanswered: 1 };
    /// assert_eq!(s.check(&id), Dedup::New);
    /// s.record(&id, 42, 10); // applied at log index 10, answered with code 42
    /// assert_eq!(s.check(&id), Dedup::Applied(42)); // a retry gets the same answer
    /// // The client had the answer: it moves its window on, and the answer is dropped.
    /// let next = RequestId { client: 7, seq: 2, first_unanswered: 2 };
    /// s.record(&next, 42, 11);
    /// assert_eq!(s.check(&id), Dedup::Forgotten);
    /// ```
    pub fn check(&self, id: &RequestId) -> Dedup {
        let Some(s) = self.clients.get(&id.client) else {
            // A client seen for the first time, or evicted. While the table is full
            // (sessions are being evicted), a request that says older ones of its client are
            // unanswered may be a retry of an evicted session: forgotten, to be safe. (A new
            // client pipelining past a full table can get that answer too; it then learns the
            // fate of those writes by reading.)
            return if id.first_unanswered < id.seq && self.clients.len() >= self.max_clients {
                Dedup::Forgotten
            } else {
                Dedup::New
            };
        };
        if id.seq < s.floor {
            return Dedup::Forgotten;
        }
        match s.answers.get(&id.seq) {
            Some(&a) => Dedup::Applied(a),
            None => Dedup::New,
        }
    }

    /// Records that request `id` was applied at log index `index` with answer `answer`, and
    /// moves the client's window to its `first_unanswered`.
    pub fn record(&mut self, id: &RequestId, answer: u8, index: u64) {
        let s = self.clients.entry(id.client).or_default();
        s.last_index = index;
        if id.first_unanswered > s.floor {
            s.floor = id.first_unanswered.min(id.seq);
            let floor = s.floor;
            s.answers.retain(|&k, _| k >= floor);
        }
        if id.seq >= s.floor {
            s.answers.insert(id.seq, answer);
        }
        while s.answers.len() > self.max_answers {
            if let Some((&k, _)) = s.answers.iter().next() {
                s.answers.remove(&k);
                s.floor = k + 1;
            }
        }
        if self.clients.len() > self.max_clients {
            // The least recently active session goes: the same one on every replica, as
            // `last_index` comes from the log.
            if let Some((&victim, _)) = self.clients.iter().min_by_key(|(c, s)| (s.last_index, **c))
            {
                self.clients.remove(&victim);
            }
        }
    }

    /// Appends the sessions to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.clients.len() as u64).to_le_bytes());
        for (&c, s) in &self.clients {
            out.extend_from_slice(&c.to_le_bytes());
            out.extend_from_slice(&s.floor.to_le_bytes());
            out.extend_from_slice(&s.last_index.to_le_bytes());
            out.extend_from_slice(&(s.answers.len() as u32).to_le_bytes());
            for (&seq, &a) in &s.answers {
                out.extend_from_slice(&seq.to_le_bytes());
                out.push(a);
            }
        }
    }

    /// Decodes sessions saved by [`Sessions::encode`], with these limits; returns them and
    /// the bytes after them.
    pub fn decode(
        bytes: &[u8],
        max_clients: usize,
        max_answers: usize,
    ) -> Result<(Self, &[u8]), SessionsDecodeError> {
        let mut b = bytes;
        let mut take = |n: usize| -> Result<&[u8], SessionsDecodeError> {
            if b.len() < n {
                return Err(SessionsDecodeError);
            }
            let (a, rest) = b.split_at(n);
            b = rest;
            Ok(a)
        };
        fn u64_of(s: &[u8]) -> u64 {
            let mut a = [0u8; 8];
            a.copy_from_slice(s.get(..8).unwrap_or(&[0; 8]));
            u64::from_le_bytes(a)
        }
        let mut out = Self::new(max_clients, max_answers);
        let n = u64_of(take(8)?);
        for _ in 0..n {
            let c = u64_of(take(8)?);
            let floor = u64_of(take(8)?);
            let last_index = u64_of(take(8)?);
            let mut m = [0u8; 4];
            m.copy_from_slice(take(4)?);
            let count = u32::from_le_bytes(m);
            let mut answers = BTreeMap::new();
            for _ in 0..count {
                let seq = u64_of(take(8)?);
                let a = take(1)?.first().copied().unwrap_or(0);
                answers.insert(seq, a);
            }
            out.clients.insert(
                c,
                Session {
                    floor,
                    answers,
                    last_index,
                },
            );
        }
        Ok((out, b))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    fn id(client: u64, seq: u64, first_unanswered: u64) -> RequestId {
        RequestId {
            client,
            seq,
            first_unanswered,
        }
    }

    #[test]
    fn pipelined_requests_retried_in_any_order_apply_once() {
        let mut s = Sessions::default();
        // Requests 1..=5 in flight; 2 and 4 applied; then all are retried, out of order.
        s.record(&id(1, 2, 1), 2, 10);
        s.record(&id(1, 4, 1), 4, 11);
        for seq in [5, 1, 4, 3, 2] {
            let r = id(1, seq, 1);
            match s.check(&r) {
                Dedup::New => s.record(&r, seq as u8, 20 + seq),
                Dedup::Applied(a) => assert_eq!(a, seq as u8),
                Dedup::Forgotten => panic!("forgot {seq}"),
            }
        }
        for seq in 1..=5 {
            assert_eq!(s.check(&id(1, seq, 1)), Dedup::Applied(seq as u8));
        }
        // Answers for 1..=3 reached the client: it says so, they go.
        s.record(&id(1, 6, 4), 6, 30);
        assert_eq!(s.check(&id(1, 3, 4)), Dedup::Forgotten);
        assert_eq!(s.check(&id(1, 4, 4)), Dedup::Applied(4));
    }

    #[test]
    fn the_least_recently_active_client_is_evicted_the_same_way_everywhere() {
        let mut a = Sessions::new(3, 16);
        for (i, c) in [10, 20, 30, 10, 40].into_iter().enumerate() {
            a.record(&id(c, 1, 1), 0, i as u64);
        }
        // 20 was the least recent when 40 arrived.
        assert_eq!(a.len(), 3);
        assert_eq!(a.check(&id(20, 1, 1)), Dedup::New);
        assert_eq!(a.check(&id(10, 1, 1)), Dedup::Applied(0));
        // An evicted client retrying an old request while the table is full: forgotten.
        assert_eq!(a.check(&id(20, 2, 1)), Dedup::Forgotten);
        let mut bytes = Vec::new();
        a.encode(&mut bytes);
        bytes.extend_from_slice(b"rest");
        let (b, rest) = Sessions::decode(&bytes, 3, 16).unwrap();
        assert_eq!(b, a);
        assert_eq!(rest, b"rest");
        for cut in 0..bytes.len() - 4 {
            assert!(Sessions::decode(&bytes[..cut], 3, 16).is_err());
        }
    }

    #[test]
    fn a_client_with_too_many_unanswered_loses_the_oldest_answers() {
        let mut s = Sessions::new(10, 4);
        for seq in 1..=6 {
            s.record(&id(1, seq, 1), 0, seq);
        }
        assert_eq!(s.check(&id(1, 1, 1)), Dedup::Forgotten);
        assert_eq!(s.check(&id(1, 2, 1)), Dedup::Forgotten);
        assert_eq!(s.check(&id(1, 3, 1)), Dedup::Applied(0));
        assert_eq!(s.check(&id(1, 7, 1)), Dedup::New);
    }
}
