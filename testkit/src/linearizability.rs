//! A linearizability checker for one key-value register, after Wing & Gong (1993) with
//! Lowe's memoization (2017): search for an order of the operations that respects real time
//! (an operation that returned before another was called comes first) and in which every
//! result is what a single register would have answered. Check a key-value store key by
//! key: linearizability is local (Herlihy & Wing), so a history is linearizable iff each
//! key's sub-history is.
//!
//! An operation without a response (the client gave up: timeout, crash) may have taken
//! effect at any time after it was called, or never.
//!
//! ```
//! use testkit::linearizability::{check_register, Call, RegisterOp, RegisterRet};
//! let put = |s, e, v: &str| Call { start: s, end: Some(e), op: RegisterOp::Put(v.into()), ret: RegisterRet::Written };
//! let get = |s, e, v: Option<&str>| Call {
//!     start: s, end: Some(e), op: RegisterOp::Get, ret: RegisterRet::Value(v.map(|v| v.into())),
//! };
//! // Two overlapping puts; a later read may see either, but two later reads must agree.
//! assert!(check_register(&[put(0, 10, "a"), put(5, 15, "b"), get(20, 25, Some("a"))], None).is_ok());
//! assert!(check_register(&[put(0, 10, "a"), put(5, 15, "b"), get(20, 25, Some("a")), get(30, 35, Some("b"))], None).is_err());
//! // A read that starts after a put returned must see it (or a later write).
//! assert!(check_register(&[put(0, 10, "a"), get(11, 12, None)], None).is_err());
//! ```

use std::collections::HashSet;

/// An operation on the register.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// Write a value.
    Put(Vec<u8>),
    /// Remove the value.
    Delete,
    /// Read.
    Get,
}

/// What the operation answered.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterRet {
    /// A put's acknowledgement.
    Written,
    /// A delete's answer: whether there was a value.
    Deleted(bool),
    /// A get's answer.
    Value(Option<Vec<u8>>),
    /// No answer came (the operation may or may not have happened).
    Unknown,
}

/// One operation of a history, with its real-time interval (any clock, any unit).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// When it was called.
    pub start: u64,
    /// When it returned, or `None` if it never did.
    pub end: Option<u64>,
    /// The operation.
    pub op: RegisterOp,
    /// Its result ([`RegisterRet::Unknown`] when `end` is `None`).
    pub ret: RegisterRet,
}

/// Most search states explored before giving up (a history too concurrent to check).
pub const MAX_STATES: usize = 2_000_000;

/// Why a history was not shown linearizable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckError {
    /// No order explains the results; the operations (in history order) that could not be
    /// placed first in any explanation of the rest.
    NotLinearizable(String),
    /// The search gave up after [`MAX_STATES`] states.
    TooComplex,
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckError::NotLinearizable(s) => write!(f, "not linearizable: {s}"),
            CheckError::TooComplex => write!(f, "history too concurrent to check"),
        }
    }
}

/// The register's value after `op`, or `None` if `op` cannot have answered `ret` from
/// `state`.
fn step(state: &Option<Vec<u8>>, op: &RegisterOp, ret: &RegisterRet) -> Option<Option<Vec<u8>>> {
    match (op, ret) {
        (RegisterOp::Put(v), RegisterRet::Written | RegisterRet::Unknown) => Some(Some(v.clone())),
        (RegisterOp::Delete, RegisterRet::Unknown) => Some(None),
        (RegisterOp::Delete, RegisterRet::Deleted(existed)) => {
            (*existed == state.is_some()).then_some(None)
        }
        (RegisterOp::Get, RegisterRet::Value(v)) => (v == state).then(|| state.clone()),
        (RegisterOp::Get, RegisterRet::Unknown) => Some(state.clone()),
        _ => None,
    }
}

/// Checks that `history` (any order) is linearizable for a register starting at `initial`.
pub fn check_register(history: &[Call], initial: Option<Vec<u8>>) -> Result<(), CheckError> {
    // Reads without an answer constrain nothing.
    let mut ops: Vec<&Call> = history
        .iter()
        .filter(|c| !(c.op == RegisterOp::Get && c.ret == RegisterRet::Unknown))
        .collect();
    ops.sort_by_key(|c| (c.start, c.end.unwrap_or(u64::MAX)));
    let n = ops.len();
    let words = n.div_ceil(64).max(1);
    let must = ops.iter().filter(|c| c.end.is_some()).count();
    // Depth-first search over (placed set, register value), memoized.
    let mut seen: HashSet<(Vec<u64>, Option<Vec<u8>>)> = HashSet::new();
    let mut stack: Vec<(Vec<u64>, Option<Vec<u8>>, usize)> = vec![(vec![0; words], initial, 0)];
    let is_set = |b: &[u64], i: usize| b.get(i / 64).is_some_and(|w| w >> (i % 64) & 1 == 1);
    let mut deepest = 0;
    while let Some((placed, state, done)) = stack.pop() {
        if done == must {
            return Ok(());
        }
        if !seen.insert((placed.clone(), state.clone())) {
            continue;
        }
        if seen.len() > MAX_STATES {
            return Err(CheckError::TooComplex);
        }
        deepest = deepest.max(done);
        // Whatever goes next must have been called before every unplaced operation that
        // has returned, returned.
        let horizon = ops
            .iter()
            .enumerate()
            .filter(|(i, _)| !is_set(&placed, *i))
            .filter_map(|(_, c)| c.end)
            .min()
            .unwrap_or(u64::MAX);
        for (i, c) in ops.iter().enumerate() {
            if c.start > horizon {
                break;
            }
            if is_set(&placed, i) {
                continue;
            }
            if let Some(next) = step(&state, &c.op, &c.ret) {
                let mut p = placed.clone();
                if let Some(w) = p.get_mut(i / 64) {
                    *w |= 1 << (i % 64);
                }
                let d = done + usize::from(c.end.is_some());
                stack.push((p, next, d));
            }
        }
    }
    Err(CheckError::NotLinearizable(format!(
        "{n} operations; at most {deepest} of the {must} that returned can be explained in order"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: u64, e: u64, v: &str) -> Call {
        Call {
            start: s,
            end: Some(e),
            op: RegisterOp::Put(v.into()),
            ret: RegisterRet::Written,
        }
    }

    fn get(s: u64, e: u64, v: Option<&str>) -> Call {
        Call {
            start: s,
            end: Some(e),
            op: RegisterOp::Get,
            ret: RegisterRet::Value(v.map(Into::into)),
        }
    }

    fn del(s: u64, e: u64, existed: bool) -> Call {
        Call {
            start: s,
            end: Some(e),
            op: RegisterOp::Delete,
            ret: RegisterRet::Deleted(existed),
        }
    }

    fn lost_put(s: u64, v: &str) -> Call {
        Call {
            start: s,
            end: None,
            op: RegisterOp::Put(v.into()),
            ret: RegisterRet::Unknown,
        }
    }

    #[test]
    fn sequential_histories() {
        assert!(check_register(&[], None).is_ok());
        let h = [
            put(0, 1, "a"),
            get(2, 3, Some("a")),
            del(4, 5, true),
            get(6, 7, None),
        ];
        assert!(check_register(&h, None).is_ok());
        assert!(check_register(&[del(0, 1, true)], None).is_err());
        assert!(check_register(&[del(0, 1, true)], Some(b"x".to_vec())).is_ok());
        assert!(check_register(&[get(0, 1, Some("a"))], None).is_err());
    }

    #[test]
    fn real_time_order_is_respected() {
        // The read overlaps the put: old or new value.
        assert!(check_register(&[put(0, 10, "a"), get(5, 6, None)], None).is_ok());
        assert!(check_register(&[put(0, 10, "a"), get(5, 6, Some("a"))], None).is_ok());
        // Once a read saw the new value, a later read cannot see the old one.
        let h = [put(0, 10, "a"), get(1, 2, Some("a")), get(3, 4, None)];
        assert!(check_register(&h, None).is_err());
    }

    #[test]
    fn unanswered_writes_may_or_may_not_happen_but_only_after_their_call() {
        assert!(check_register(&[lost_put(0, "a"), get(5, 6, None)], None).is_ok());
        assert!(check_register(&[lost_put(0, "a"), get(5, 6, Some("a"))], None).is_ok());
        assert!(check_register(&[get(0, 1, Some("a")), lost_put(5, "a")], None).is_err());
        // Flickering is not allowed: once seen, a lost put cannot be unseen without a write.
        let h = [lost_put(0, "a"), get(5, 6, Some("a")), get(7, 8, None)];
        assert!(check_register(&h, None).is_err());
    }

    #[test]
    fn a_value_never_written_is_never_explained() {
        let h = [put(0, 1, "a"), put(2, 3, "b"), get(4, 5, Some("c"))];
        assert!(matches!(
            check_register(&h, None),
            Err(CheckError::NotLinearizable(_))
        ));
    }

    /// A history made by running operations at a point inside their intervals is
    /// linearizable; the same history with one read answering a value nobody wrote is not.
    #[test]
    fn histories_executed_at_points_inside_their_intervals_check() {
        use proptest::prelude::*;
        let config = crate::proptest_config(128, "proptest-regressions/linearizability.txt");
        let op = (0u64..1000, 1u64..60, 0u64..100, 0u8..10, 0u8..4);
        proptest!(config, |(ops in proptest::collection::vec(op, 1..40), lose in any::<u8>())| {
            // (start, length, where inside, kind, value); executed in linearization-point order.
            let mut order: Vec<(u64, usize)> = ops
                .iter()
                .enumerate()
                .map(|(i, &(s, len, at, _, _))| (s + len * at / 100, i))
                .collect();
            order.sort_unstable();
            let mut reg: Option<Vec<u8>> = None;
            let mut h = vec![None; ops.len()];
            for &(_, i) in &order {
                let (s, len, _, kind, v) = ops[i];
                let val = vec![b'a' + v];
                let (op, ret) = match kind {
                    0..=3 => (RegisterOp::Put(val.clone()), RegisterRet::Written),
                    4 => (RegisterOp::Delete, RegisterRet::Deleted(reg.is_some())),
                    _ => (RegisterOp::Get, RegisterRet::Value(reg.clone())),
                };
                match &op {
                    RegisterOp::Put(_) => reg = Some(val),
                    RegisterOp::Delete => reg = None,
                    RegisterOp::Get => {}
                }
                // Some puts lose their answer: the client never learns.
                let lost = matches!(op, RegisterOp::Put(_)) && (i as u8) % 7 == lose % 7;
                h[i] = Some(Call {
                    start: s,
                    end: (!lost).then_some(s + len),
                    op,
                    ret: if lost { RegisterRet::Unknown } else { ret },
                });
            }
            let h: Vec<Call> = h.into_iter().flatten().collect();
            prop_assert_eq!(check_register(&h, None), Ok(()));
            if let Some(i) = h.iter().position(|c| c.op == RegisterOp::Get) {
                let mut bad = h.clone();
                bad[i].ret = RegisterRet::Value(Some(b"never".to_vec()));
                prop_assert!(check_register(&bad, None).is_err());
            }
        });
    }
}
