//! Liveness in the runtime: the table of live session ends a Nexus answers pings from.
//!
//! The protocol core decides when to ping and when a peer has failed (`proto/liveness.rs`);
//! what the runtime adds is the answer on the peer's side, given by the Nexus's SM thread
//! rather than by the Rpc, so that an Rpc whose thread is busy elsewhere for a while still
//! counts as alive. This table is that answer's only source: each Rpc applies its core's
//! [`Event::SessionUp`] / [`Event::SessionDown`] / [`Event::SessionReset`] to it
//! ([`LiveTable::apply`]), the SM router asks it ([`LiveTable::answer`]), and an Rpc that goes
//! away is forgotten ([`LiveTable::forget_rpc`]).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::proto::{answer_ping, ping_target, Event};
use crate::sm::SmMsg;

/// Live session ends of one Nexus's Rpcs: (rpc id, session) → token.
#[derive(Default)]
pub(crate) struct LiveTable {
    live: Mutex<HashMap<(u8, u32), u32>>,
}

impl LiveTable {
    fn lock(&self) -> MutexGuard<'_, HashMap<(u8, u32), u32>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies a liveness event of Rpc `rpc_id`'s core; other events are ignored. Returns
    /// whether the event was a liveness event.
    pub(crate) fn apply(&self, rpc_id: u8, event: &Event) -> bool {
        match *event {
            Event::SessionUp { session, token } => {
                self.lock().insert((rpc_id, session), token);
            }
            Event::SessionDown { session } | Event::SessionReset { session } => {
                self.lock().remove(&(rpc_id, session));
            }
            _ => return false,
        }
        true
    }

    /// Forgets every session end of Rpc `rpc_id` (it went away).
    pub(crate) fn forget_rpc(&self, rpc_id: u8) {
        self.lock().retain(|(r, _), _| *r != rpc_id);
    }

    /// The pong for `ping`, given whether the addressed Rpc exists.
    pub(crate) fn answer(&self, ping: &SmMsg, rpc_exists: bool) -> SmMsg {
        let (rpc, session, _) = ping_target(ping);
        let token = self.lock().get(&(rpc, session)).copied();
        answer_ping(ping, rpc_exists, token)
    }
}
