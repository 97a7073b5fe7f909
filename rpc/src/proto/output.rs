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
    /// Scratch for grouping `txq` by route when it is drained.
    pub tx_order: Vec<u64>,
    pub sm: VecDeque<SmTransmit>,
    pub events: VecDeque<Event>,
    pub pool: BufPool,
    pub stats: RpcStats,
}

impl Out {
    pub(crate) fn new(buffer_cache_bytes: usize) -> Self {
        Self {
            txq: Vec::with_capacity(256),
            tx_order: Vec::with_capacity(256),
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

/// Hands every queued packet to `send` in batches of at most [`TX_BATCH`], grouped by route
/// (queue order within a route), then empties the queue. Returns how many were skipped.
///
/// Grouping is what lets one client's responses of an iteration leave as one message: the
/// UDP transport sends a run of consecutive equal-size packets to one route as a single GSO
/// datagram (and the receiver's GRO reads it with one call), but completions are queued in
/// the order they happen, interleaving clients. Order across routes carries no meaning;
/// order within a route (a session's packets) is kept. `order` is a reusable scratch
/// permutation, so grouping allocates nothing once it has grown to the usual queue length.
pub(crate) fn drain_transmits(
    sessions: &SessionTable,
    txq: &mut Vec<TxItem>,
    order: &mut Vec<u64>,
    mut send: impl FnMut(&[TxPkt<'_>]),
) -> u64 {
    let grouped = txq.windows(2).all(|w| match w {
        [a, b] => a.route <= b.route,
        _ => true,
    });
    let skipped = if grouped {
        // A short queue (a lone packet on the latency path) does not pay for filling a batch
        // array of `TX_BATCH` descriptors; the batches handed out are the same either way.
        match txq.len() {
            1 => drain_in::<1>(sessions, txq.iter(), &mut send),
            2..=32 => drain_in::<32>(sessions, txq.iter(), &mut send),
            _ => drain_in::<TX_BATCH>(sessions, txq.iter(), &mut send),
        }
    } else {
        // Sort keys: route in the high half, queue position in the low half (queues never
        // approach 2^32 packets: they are drained every iteration).
        order.clear();
        order.extend(
            txq.iter()
                .enumerate()
                .map(|(i, item)| (u64::from(item.route) << 32) | (i as u64 & 0xffff_ffff)),
        );
        order.sort_unstable();
        let items = order
            .iter()
            .filter_map(|k| txq.get((k & 0xffff_ffff) as usize));
        if txq.len() <= 32 {
            drain_in::<32>(sessions, items, &mut send)
        } else {
            drain_in::<TX_BATCH>(sessions, items, &mut send)
        }
    };
    txq.clear();
    skipped
}

/// [`drain_transmits`] with batches of at most `N` descriptors.
fn drain_in<'a, const N: usize>(
    sessions: &'a SessionTable,
    mut items: impl Iterator<Item = &'a TxItem>,
    send: &mut impl FnMut(&[TxPkt<'_>]),
) -> u64 {
    let mut skipped = 0;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pkthdr::{PktInfo, PktType};

    fn item(route: RouteId, req_num: u64) -> TxItem {
        let hdr = PktHdr::new(&PktInfo {
            pkt_type: PktType::CreditReturn,
            req_type: 0,
            dest_session: 0,
            pkt_num: 0,
            msg_size: 0,
            req_num,
            token: 0,
            status: 0,
        });
        TxItem {
            route,
            hdr,
            data: DataRef::None,
        }
    }

    /// Drains `routes` (one packet each, numbered in queue order) and returns the batches as
    /// (route, packet number) pairs.
    fn drain(routes: &[RouteId]) -> Vec<Vec<(RouteId, u64)>> {
        let sessions = SessionTable::default();
        let mut txq: Vec<TxItem> = (0u64..).zip(routes).map(|(n, &r)| item(r, n)).collect();
        let mut order = Vec::new();
        let mut batches = Vec::new();
        let skipped = drain_transmits(&sessions, &mut txq, &mut order, |pkts| {
            batches.push(
                pkts.iter()
                    .map(|p| {
                        let num = PktHdr::parse(p.hdr).map_or(u64::MAX, |(info, _)| info.req_num);
                        (p.route, num)
                    })
                    .collect(),
            )
        });
        assert_eq!(skipped, 0);
        assert!(txq.is_empty());
        batches
    }

    #[test]
    fn packets_leave_grouped_by_route_in_queue_order_within_a_route() {
        // 300 packets over 7 routes, interleaved as completions of many clients are.
        let routes: Vec<RouteId> = (0..300u32).map(|i| (i * 5 + i / 7) % 7).collect();
        let batches = drain(&routes);
        assert!(batches.iter().all(|b| !b.is_empty() && b.len() <= TX_BATCH));
        let sent: Vec<(RouteId, u64)> = batches.concat();
        assert_eq!(sent.len(), routes.len());
        // Each route's packets form one contiguous run, in the order they were queued.
        let mut seen = std::collections::BTreeSet::new();
        for w in sent.windows(2) {
            let [(ra, na), (rb, nb)] = w else { continue };
            if ra != rb {
                assert!(seen.insert(*ra), "route {ra} sent in two runs");
            } else {
                assert!(na < nb, "route {ra} reordered");
            }
        }
        let mut numbers: Vec<u64> = sent.iter().map(|&(_, n)| n).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (0..300).collect::<Vec<u64>>());
        for (r, n) in sent {
            let want = usize::try_from(n).ok().and_then(|i| routes.get(i));
            assert_eq!(want, Some(&r), "packet {n} went to the wrong route");
        }
    }

    #[test]
    fn an_already_grouped_queue_leaves_as_queued() {
        let routes = [3, 3, 5, 5, 5, 9];
        let sent = drain(&routes).concat();
        assert_eq!(sent, vec![(3, 0), (3, 1), (5, 2), (5, 3), (5, 4), (9, 5)]);
    }
}
