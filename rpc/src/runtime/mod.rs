//! The runtime around the protocol core: clocks, and the event loop that drives the core.

pub(crate) mod clock;

pub use clock::VirtualClock;
