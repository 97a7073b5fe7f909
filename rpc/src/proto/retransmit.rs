//! Loss recovery: go-back-N per slot.
//!
//! A slot that has packets in flight (`num_tx > num_rx`) and made no progress for one
//! retransmission timeout (`RpcConfig::rto`) takes back the credits of those packets, rewinds
//! to the first unanswered item (`num_tx = num_rx`) and sends again: request packets from
//! `num_rx`, or RFRs once response packet 0 is in. Receivers accept strictly in order, so a
//! rewind resends exactly what was not acknowledged; the server answers repeats from its slot
//! (`server.rs`) without running the handler again.
//!
//! A slot's progress clock restarts whenever it goes from nothing in flight to something in
//! flight (a new request, a rewind, the end of a wait for credits): the timeout measures
//! silence while packets are out, never time spent waiting to send. The retransmit timer of a
//! session is armed when a slot sends (at that slot's `progress + rto`), and not moved when a
//! slot progresses: when it fires it rewinds the slots that are really stalled and is set
//! again for the earliest `progress + rto` left, which is always later than now.
//!
//! On a reliable transport (`LocalEnd::reliable`: TCP, InfiniBand RC) the timer is never
//! armed: what the transport took arrives exactly once and in order unless the route fails,
//! and a failed route ends its session (`Endpoint::handle_route_failure`). Credits still pace
//! the slots; a request that never completes ends at its deadline, or when liveness declares
//! the peer failed.

use super::client::ClientSession;
use super::output::Out;
use super::timer::Timer;
use super::Params;

impl ClientSession {
    /// The retransmit timer fired at `now`: go back N on every stalled slot.
    pub(crate) fn on_retransmit_timer(&mut self, now: u64, prm: &Params, out: &mut Out) {
        if !self.is_connected() || self.active_slots == 0 {
            self.timers.stop(Timer::Retransmit);
            return;
        }
        let mut rewound = false;
        for slot in self.slots.iter_mut() {
            if slot.active && slot.in_flight() > 0 && now.saturating_sub(slot.progress) >= prm.rto {
                self.credits.give_back(slot.in_flight());
                slot.num_tx = slot.num_rx;
                slot.progress = now;
                slot.retransmitted = true;
                self.stats.retransmissions += 1;
                out.stats.retransmissions += 1;
                rewound = true;
            }
        }
        if rewound {
            self.pump_all(now, prm, out);
        }
        let next = self
            .slots
            .iter()
            .filter(|s| s.active && s.in_flight() > 0)
            .map(|s| s.progress.saturating_add(prm.rto))
            .min()
            .unwrap_or(u64::MAX);
        self.timers.set(Timer::Retransmit, next);
    }
}
