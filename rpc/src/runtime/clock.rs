//! The clocks an [`Rpc`](crate::Rpc) can read: the wall clock (the default) and a
//! [`VirtualClock`] for deterministic simulation.
//!
//! The protocol core never reads a clock: the runtime reads one once per event-loop iteration
//! (and once per command from outside the loop) and passes the time in. Both clocks count
//! nanoseconds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Virtual time in nanoseconds that moves only when told to: one clock shared (it is a cheap
/// handle; clones see the same time) by the Rpcs of a simulation and, through
/// [`VirtualClock::reader`], by a simulated fabric.
///
/// ```
/// use rpc::VirtualClock;
/// use transports::sim::SimFabric;
///
/// let clock = VirtualClock::new();
/// let fabric = SimFabric::with_clock(1, clock.reader());
/// clock.advance(1_000);
/// assert_eq!(fabric.now_ns(), 1_000);
/// clock.advance_to(500); // never backwards
/// assert_eq!(clock.now_ns(), 1_000);
/// ```
#[derive(Clone, Debug, Default)]
pub struct VirtualClock(Arc<AtomicU64>);

impl VirtualClock {
    /// A clock at time 0.
    pub fn new() -> Self {
        Self::default()
    }

    /// The current virtual time in nanoseconds.
    pub fn now_ns(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    /// Moves time forward by `ns`.
    pub fn advance(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::AcqRel);
    }

    /// Moves time to `ns` if that is later than now.
    pub fn advance_to(&self, ns: u64) {
        self.0.fetch_max(ns, Ordering::AcqRel);
    }

    /// A function that reads this clock, for whoever shares its time (e.g.
    /// `transports::sim::SimFabric::with_clock`).
    pub fn reader(&self) -> impl Fn() -> u64 + Send + Sync + 'static {
        let c = self.clone();
        move || c.now_ns()
    }
}

/// The clock an Rpc reads.
pub(crate) enum Clock {
    /// Nanoseconds since the Rpc was created.
    Wall(Instant),
    /// A shared virtual clock.
    Virtual(VirtualClock),
}

impl Clock {
    /// The wall clock, starting now.
    pub(crate) fn wall() -> Self {
        Clock::Wall(Instant::now())
    }

    /// The current time in nanoseconds.
    pub(crate) fn now(&self) -> u64 {
        match self {
            Clock::Wall(t) => t.elapsed().as_nanos() as u64,
            Clock::Virtual(c) => c.now_ns(),
        }
    }
}
