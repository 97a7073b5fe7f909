//! Timers: a small table per session end, and one queue that orders the sessions by their
//! earliest timer, so `poll_timeout` is a peek and `handle_timeout` visits only the sessions
//! whose time has come — never a scan of every session.
//!
//! A session's timers may be armed *early*: work that moves a deadline later (a slot making
//! progress, a packet from a silent peer) does not touch the timer, which then fires at the
//! old time, finds less to do than planned, and is set again for the true time. So the hot
//! path never updates a timer for progress, and a busy session wakes about once per
//! retransmission timeout and once per liveness interval. Times are nanoseconds; `u64::MAX`
//! means "not armed".

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::session::SessionId;

/// The timers of one session end, in the order `handle_timeout` services them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// The earliest request deadline (slots and backlog) of a client end.
    Deadline = 0,
    /// The next liveness check (ping or failure) of a live end.
    Liveness = 1,
    /// The earliest go-back-N timeout of a client end's slots.
    Retransmit = 2,
    /// The next retry or the deadline of a connect or disconnect.
    Handshake = 3,
}

const TIMERS: usize = 4;
const NEVER: u64 = u64::MAX;

/// The timers of one session end.
#[derive(Clone, Copy, Debug)]
pub(crate) struct TimerTable {
    at: [u64; TIMERS],
    /// `min(at)`.
    next: u64,
    /// The time this session is queued for in the [`TimerQueue`] (`NEVER`: not queued).
    queued: u64,
}

impl Default for TimerTable {
    fn default() -> Self {
        Self {
            at: [NEVER; TIMERS],
            next: NEVER,
            queued: NEVER,
        }
    }
}

impl TimerTable {
    /// Arms `t` for `at` unless it is armed earlier already.
    pub(crate) fn arm(&mut self, t: Timer, at: u64) {
        if let Some(slot) = self.at.get_mut(t as usize) {
            if at < *slot {
                *slot = at;
                self.next = self.next.min(at);
            }
        }
    }

    /// Sets `t` to exactly `at` (`u64::MAX`: stopped).
    pub(crate) fn set(&mut self, t: Timer, at: u64) {
        if let Some(slot) = self.at.get_mut(t as usize) {
            *slot = at;
        }
        self.next = self.at.iter().copied().min().unwrap_or(NEVER);
    }

    /// Stops `t`.
    pub(crate) fn stop(&mut self, t: Timer) {
        self.set(t, NEVER);
    }

    /// Stops every timer armed for `now` or earlier; whether there was one. After a
    /// session's due timers were serviced none should be left: one would fire again at once.
    pub(crate) fn stop_expired(&mut self, now: u64) -> bool {
        let mut any = false;
        for at in self.at.iter_mut() {
            if *at <= now {
                *at = NEVER;
                any = true;
            }
        }
        if any {
            self.next = self.at.iter().copied().min().unwrap_or(NEVER);
        }
        any
    }

    /// Whether `t` is armed for `now` or earlier.
    pub(crate) fn expired(&self, t: Timer, now: u64) -> bool {
        self.at.get(t as usize).is_some_and(|&at| at <= now)
    }

    /// When `t` fires (`u64::MAX`: not armed).
    #[cfg(test)]
    pub(crate) fn get(&self, t: Timer) -> u64 {
        self.at.get(t as usize).copied().unwrap_or(NEVER)
    }

    /// The earliest armed timer (`u64::MAX`: none).
    #[cfg(test)]
    pub(crate) fn next(&self) -> u64 {
        self.next
    }
}

/// The sessions with armed timers, earliest first.
///
/// Entries are `(time, session)`. A session has at most one *current* entry: the one at its
/// table's `queued` time. Arming a timer earlier than that pushes a new entry and leaves the
/// old one behind, stale; stale entries (and entries of freed sessions) are dropped when they
/// come up, so nothing is ever searched for or removed from the middle.
#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<(u64, SessionId)>>,
}

impl TimerQueue {
    /// Queues `session` for its table's earliest timer if it is not queued that early already.
    #[inline]
    pub(crate) fn schedule(&mut self, session: SessionId, table: &mut TimerTable) {
        let next = table.next;
        if next < table.queued {
            table.queued = next;
            self.heap.push(Reverse((next, session)));
        }
    }

    /// The earliest queued time, after dropping the stale entries at the front
    /// (`current(session, time)` says whether an entry is still the session's current one).
    pub(crate) fn peek(&mut self, current: impl Fn(SessionId, u64) -> bool) -> Option<u64> {
        while let Some(&Reverse((at, sid))) = self.heap.peek() {
            if current(sid, at) {
                return Some(at);
            }
            self.heap.pop();
        }
        None
    }

    /// The earliest entry's time, stale or not: never later than [`TimerQueue::peek`].
    #[inline]
    pub(crate) fn front(&self) -> Option<u64> {
        self.heap.peek().map(|&Reverse((at, _))| at)
    }

    /// Takes the earliest entry due at `now`, if any (it may be stale: check it).
    pub(crate) fn pop_due(&mut self, now: u64) -> Option<(u64, SessionId)> {
        match self.heap.peek() {
            Some(&Reverse((at, _))) if at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Entries queued, stale ones included (for tests of the queue's growth).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }
}

/// Whether an entry `(at, ..)` is the current one of a session whose table is `table`.
pub(crate) fn is_current(table: &TimerTable, at: u64) -> bool {
    table.queued == at
}

/// Marks a table's entry as taken off the queue (before its session is serviced).
pub(crate) fn dequeued(table: &mut TimerTable) {
    table.queued = NEVER;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_keeps_the_earliest() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), u64::MAX);
        t.arm(Timer::Retransmit, 50);
        t.arm(Timer::Retransmit, 80); // later: ignored
        t.arm(Timer::Liveness, 70);
        assert_eq!(t.next(), 50);
        assert!(t.expired(Timer::Retransmit, 50));
        assert!(!t.expired(Timer::Liveness, 50));
        t.set(Timer::Retransmit, 90);
        assert_eq!(t.next(), 70);
        t.stop(Timer::Liveness);
        assert_eq!(t.next(), 90);
        assert_eq!(t.get(Timer::Deadline), u64::MAX);
    }

    #[test]
    fn queue_orders_sessions_and_drops_stale_entries() {
        let mut q = TimerQueue::default();
        let mut a = TimerTable::default();
        let mut b = TimerTable::default();
        a.arm(Timer::Liveness, 100);
        q.schedule(1, &mut a);
        b.arm(Timer::Liveness, 60);
        q.schedule(2, &mut b);
        // `a` moves earlier: a second entry, the first one goes stale.
        a.arm(Timer::Deadline, 40);
        q.schedule(1, &mut a);
        // Scheduling again without a change pushes nothing.
        q.schedule(1, &mut a);
        assert_eq!(q.len(), 3);
        let tables = |sid: SessionId, at: u64| {
            let t = if sid == 1 { &a } else { &b };
            is_current(t, at)
        };
        assert_eq!(q.peek(tables), Some(40));
        assert_eq!(q.pop_due(39), None);
        assert_eq!(q.pop_due(1000), Some((40, 1)));
        dequeued(&mut a);
        assert_eq!(q.pop_due(1000), Some((60, 2)));
        // The stale entry of `a` comes up last and is recognised as such.
        let (at, sid) = q.pop_due(1000).unwrap_or_default();
        assert_eq!((at, sid), (100, 1));
        assert!(!is_current(&a, at));
    }
}
