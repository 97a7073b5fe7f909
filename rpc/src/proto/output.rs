//! The queues transitions write into, drained by the `poll_*` methods.
//!
//! Session transitions get `&mut Out` next to the session they change, so they queue packets,
//! events and SM messages, take and return buffers and count, without looking anything up
//! again. Datapath packets are queued as descriptors ([`TxItem`]) that name the buffer their
//! payload lives in; the payload is found only when the packet is handed to the transport, so
//! nothing is copied, and a packet whose buffer went away meanwhile (its slot completed or
//! moved on) is skipped (`tx_skipped`).

use std::collections::VecDeque;

use transports::{RouteId, TxPkt};

use crate::msgbuf::BufPool;
use crate::pkthdr::PktHdr;
use crate::sm::{SmAddr, SmMsg};
use crate::stats::RpcStats;

use super::event::{Completion, Event, SmTransmit};
use super::server::ServerSlotState;
use super::session::{Session, SessionId, SessionTable};

/// Descriptors handed to the transport per `tx_burst` call, at most: as many datagrams as
/// the UDP transport sends with one `sendmmsg`, and as many segments as one GSO datagram holds.
pub(crate) const TX_BATCH: usize = 64;

/// Where a queued packet's payload lives.
#[derive(Clone, Copy)]
pub(crate) enum DataRef {
    /// A header-only packet (credit return, RFR).
    None,
    /// Payload from a slot's message: `resp = false` is a client's request buffer,
    /// `resp = true` a server's response buffer. `pkt0` sends header and data as one slice
    /// from the buffer's headroom.
    Msg {
        session: SessionId,
        slot: u32,
        req_num: u64,
        resp: bool,
        off: usize,
        len: usize,
        pkt0: bool,
    },
}

/// One queued datapath packet.
pub(crate) struct TxItem {
    pub route: RouteId,
    pub hdr: PktHdr,
    pub data: DataRef,
}

/// Everything transitions produce, and the pool and counters they use.
pub(crate) struct Out {
    pub txq: Vec<TxItem>,
    pub sm: VecDeque<SmTransmit>,
    pub events: VecDeque<Event>,
    pub pool: BufPool,
    pub stats: RpcStats,
}

impl Out {
    pub(crate) fn new(buffer_cache_bytes: usize) -> Self {
        Self {
            txq: Vec::with_capacity(256),
            sm: VecDeque::new(),
            events: VecDeque::new(),
            pool: BufPool::new(buffer_cache_bytes),
            stats: RpcStats::default(),
        }
    }

    /// Queues a datapath packet.
    pub(crate) fn transmit(&mut self, route: RouteId, hdr: PktHdr, data: DataRef) {
        self.stats.tx_pkts += 1;
        self.txq.push(TxItem { route, hdr, data });
    }

    /// Queues an SM message.
    pub(crate) fn send_sm(&mut self, to: SmAddr, msg: SmMsg) {
        self.stats.sm_tx += 1;
        self.sm.push_back(SmTransmit { to, msg });
    }

    /// Queues an event.
    pub(crate) fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    /// Queues a request's completion and counts it.
    pub(crate) fn complete(&mut self, completion: Completion, internal: bool) {
        if completion.result.is_ok() {
            self.stats.responses_received += 1;
        } else {
            self.stats.requests_failed += 1;
        }
        self.events.push_back(Event::Completion {
            completion,
            internal,
        });
    }
}

/// Resolves a queued packet into (header bytes, payload bytes); `None` if its buffer is gone.
fn view<'a>(sessions: &'a SessionTable, item: &'a TxItem) -> Option<(&'a [u8], &'a [u8])> {
    match item.data {
        DataRef::None => Some((item.hdr.as_bytes(), &[])),
        DataRef::Msg {
            session,
            slot,
            req_num,
            resp,
            off,
            len,
            pkt0,
        } => {
            let buf = match sessions.get(session)? {
                Session::Client(c) if !resp => {
                    let s = c.slots.get(slot as usize)?;
                    if !s.active || s.req_num != req_num {
                        return None;
                    }
                    s.req.as_ref()?
                }
                Session::Server(sv) if resp => {
                    let s = sv.slots.get(slot as usize)?;
                    if s.req_num != req_num || s.state != ServerSlotState::Responded {
                        return None;
                    }
                    s.resp.as_ref()?
                }
                _ => return None,
            };
            if pkt0 {
                Some((&[], buf.pkt0(len)))
            } else {
                Some((item.hdr.as_bytes(), buf.range(off, len)?))
            }
        }
    }
}

/// Hands every queued packet to `send` in batches of at most [`TX_BATCH`], in queue order,
/// then empties the queue. Returns how many were skipped.
pub(crate) fn drain_transmits(
    sessions: &SessionTable,
    txq: &mut Vec<TxItem>,
    mut send: impl FnMut(&[TxPkt<'_>]),
) -> u64 {
    // A short queue (a lone packet on the latency path) does not pay for filling a batch
    // array of `TX_BATCH` descriptors; the batches handed out are the same either way.
    let skipped = match txq.len() {
        1 => drain_in::<1>(sessions, txq, &mut send),
        2..=32 => drain_in::<32>(sessions, txq, &mut send),
        _ => drain_in::<TX_BATCH>(sessions, txq, &mut send),
    };
    txq.clear();
    skipped
}

/// [`drain_transmits`] with batches of at most `N` descriptors.
fn drain_in<const N: usize>(
    sessions: &SessionTable,
    txq: &[TxItem],
    send: &mut impl FnMut(&[TxPkt<'_>]),
) -> u64 {
    let mut skipped = 0;
    let mut items = txq.iter();
    loop {
        let mut pkts = [TxPkt {
            route: 0,
            hdr: &[],
            data: &[],
        }; N];
        let mut n = 0;
        for item in items.by_ref() {
            match view(sessions, item) {
                Some((hdr, data)) => {
                    if let Some(p) = pkts.get_mut(n) {
                        *p = TxPkt {
                            route: item.route,
                            hdr,
                            data,
                        };
                        n += 1;
                    }
                    if n == N {
                        break;
                    }
                }
                None => skipped += 1,
            }
        }
        if n == 0 {
            return skipped;
        }
        send(pkts.get(..n).unwrap_or(&[]));
    }
}
