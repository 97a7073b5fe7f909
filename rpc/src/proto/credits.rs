//! Flow control: a client session's credits, and the receive-ring admission that reserves
//! them at both ends.
//!
//! Credits bound the packets a client session has in flight: every request packet or RFR it
//! queues spends one, every credit return or response packet it accepts in order gives one
//! back, and a slot that completes or rewinds (go-back-N) gives back the credits of the packets
//! it still had out (`num_tx - num_rx`). The server holds none: it answers each request packet
//! with one credit return or response packet 0 and each RFR with one response packet, so the
//! client's credits bound both directions. Every change of a credit count is a method here.
//!
//! Admission makes the bound hold at the receiver: a session end is admitted only if the
//! Rpc's receive ring can reserve the session's credits, so the ring never has to hold more
//! than it was sized for (go-back-N duplicates aside, see `docs/PROTOCOL.md` §5.4).

/// The credits of one client session.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Credits {
    available: u32,
    /// A slot could not send for lack of credits: the next credit back must pump every slot,
    /// not only the one it belongs to.
    stalled: bool,
}

impl Credits {
    /// A full set of `n` credits.
    pub(crate) fn new(n: u32) -> Self {
        Self {
            available: n,
            stalled: false,
        }
    }

    /// Credits not spent.
    pub(crate) fn available(&self) -> u32 {
        self.available
    }

    /// Spends one credit for a packet to send; `false` (and the session counts as stalled)
    /// when none is left.
    pub(crate) fn try_spend(&mut self) -> bool {
        if self.available == 0 {
            self.stalled = true;
            return false;
        }
        self.available -= 1;
        true
    }

    /// Takes back `n` credits: packets answered, or given up on (completion, rewind).
    pub(crate) fn give_back(&mut self, n: u32) {
        self.available = self.available.saturating_add(n);
    }

    /// Whether a slot is waiting for credits.
    pub(crate) fn is_stalled(&self) -> bool {
        self.stalled
    }

    /// Clears the stall mark, before every slot is pumped.
    pub(crate) fn clear_stall(&mut self) {
        self.stalled = false;
    }
}

/// The receive-ring entries one Rpc has reserved for its session ends.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RingBudget {
    size: usize,
    reserved: usize,
}

impl RingBudget {
    /// A ring of `size` entries, nothing reserved.
    pub(crate) fn new(size: usize) -> Self {
        Self { size, reserved: 0 }
    }

    /// Whether `credits` more entries fit.
    pub(crate) fn fits(&self, credits: u32) -> bool {
        self.reserved.saturating_add(credits as usize) <= self.size
    }

    /// Reserves `credits` entries (the caller checked [`RingBudget::fits`]).
    pub(crate) fn reserve(&mut self, credits: u32) {
        self.reserved = self.reserved.saturating_add(credits as usize);
    }

    /// Releases `credits` entries.
    pub(crate) fn release(&mut self, credits: u32) {
        self.reserved = self.reserved.saturating_sub(credits as usize);
    }

    /// Entries reserved.
    pub(crate) fn reserved(&self) -> usize {
        self.reserved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spend_until_stalled_then_give_back() {
        let mut c = Credits::new(2);
        assert!(c.try_spend() && c.try_spend());
        assert!(!c.is_stalled());
        assert!(!c.try_spend());
        assert!(c.is_stalled());
        c.give_back(1);
        assert_eq!(c.available(), 1);
        c.clear_stall();
        assert!(!c.is_stalled());
    }

    #[test]
    fn ring_admission() {
        let mut r = RingBudget::new(64);
        assert!(r.fits(32));
        r.reserve(32);
        r.reserve(32);
        assert!(!r.fits(1));
        r.release(32);
        assert!(r.fits(32));
        assert_eq!(r.reserved(), 32);
    }
}
