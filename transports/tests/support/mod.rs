//! Transport-level checks written against the `Transport` trait alone, plus the driving glue
//! for the simulated verbs fabric. Each `check_*` function states a property every transport
//! must have and takes the transports and a `Net` that makes time pass, so the same checks run
//! over UD and RC on `SimVerbs` (CI), on a real NIC (the `#[ignore]`d device tests), and can
//! be handed to the shared conformance suite once it exists.
#![allow(dead_code)]

use std::collections::HashMap;

use transports::{RouteId, Transport, TxPkt};

/// Makes time pass for the transports under test.
pub trait Net {
    /// Lets the fabric move (a simulator step, or a short sleep on real hardware); `false`
    /// when nothing can ever happen again.
    fn pump(&self) -> bool;
}

#[cfg(feature = "rdma")]
impl Net for transports::rdma::sim::SimVerbs {
    fn pump(&self) -> bool {
        if !self.step() {
            // Nothing scheduled; a device call may still have something to do.
            self.advance(1_000);
            self.progress();
        }
        true
    }
}

/// A simulated RoCE port: Ethernet link layer (GID routing, a GRH on every address handle) and
/// the 1024-byte MTU of a 1500-byte Ethernet.
#[cfg(feature = "rdma")]
pub fn roce() -> transports::rdma::sim::SimDeviceConfig {
    transports::rdma::sim::SimDeviceConfig {
        link_layer: transports::rdma::verbs::LinkLayer::Ethernet,
        active_mtu: transports::rdma::verbs::Mtu::M1024,
        ..Default::default()
    }
}

/// Real hardware: time passes by itself.
pub struct WallClock;

impl Net for WallClock {
    fn pump(&self) -> bool {
        std::thread::sleep(std::time::Duration::from_micros(10));
        true
    }
}

/// The session handshake as the RPC layer does it: `a` allocates a route and sends its info;
/// `b` allocates one, resolves it with `a`'s info and answers with its own; `a` resolves.
/// Returns (a's route to b, b's route to a).
pub fn connect<T: Transport>(a: &mut T, b: &mut T) -> (RouteId, RouteId) {
    let (ra, info_a) = a.route_alloc().expect("route_alloc on a");
    let (rb, info_b) = b.route_alloc().expect("route_alloc on b");
    b.resolve(rb, &info_a).expect("b resolves a");
    a.resolve(ra, &info_b).expect("a resolves b");
    (ra, rb)
}

/// Receives until `n` packets arrived or `budget` pumps passed; returns copies in arrival
/// order (releasing as it goes).
pub fn recv_n<T: Transport>(net: &dyn Net, t: &mut T, n: usize, budget: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..budget {
        let k = t.rx_burst();
        for i in 0..k {
            out.push(t.rx_pkt(i).to_vec());
        }
        t.rx_release(k);
        if out.len() >= n {
            break;
        }
        if !net.pump() {
            break;
        }
    }
    out
}

/// Like [`recv_n`], while the sender's event loop keeps running too (`rx_burst` on it): a
/// transport may need its owner's calls to make progress (RC posts backlogged packets as
/// send completions come back).
pub fn recv_from<T: Transport>(
    net: &dyn Net,
    b: &mut T,
    sender: &mut T,
    n: usize,
    budget: usize,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for _ in 0..budget {
        sender.rx_burst();
        out.extend(recv_n(net, b, usize::MAX, 1));
        if out.len() >= n {
            break;
        }
    }
    out
}

/// Sends every packet, pumping between bursts the transport only partly took (never for
/// longer than `budget` pumps); returns how many were accepted.
pub fn send_all<T: Transport>(
    net: &dyn Net,
    t: &mut T,
    pkts: &[TxPkt<'_>],
    budget: usize,
) -> usize {
    let mut done = 0;
    for _ in 0..budget {
        if done == pkts.len() {
            break;
        }
        done += t.tx_burst(&pkts[done..]).expect("tx_burst");
        if done < pkts.len() {
            net.pump();
        }
    }
    done
}

/// A distinct, checkable payload: 4-byte index then a pattern derived from it.
pub fn payload(i: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len);
    v.extend_from_slice(&i.to_le_bytes()[..len.min(4)]);
    v.extend((4..len).map(|k| (i as usize * 131 + k * 7) as u8));
    v
}

fn index_of(p: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    for (d, s) in b.iter_mut().zip(p) {
        *d = *s;
    }
    u32::from_le_bytes(b)
}

/// Packets sent in bursts of every size from 1 to 40 arrive complete, intact and in order
/// (on a fault-free fabric; for UD that is the fabric's property, for RC the transport's),
/// header and payload concatenated.
pub fn check_order_and_batching<T: Transport>(net: &dyn Net, a: &mut T, b: &mut T, route: RouteId) {
    let max = a.max_pkt_size().min(b.max_pkt_size());
    let mut all = Vec::new();
    let mut i = 0u32;
    for burst in 1..=40usize {
        let bodies: Vec<Vec<u8>> = (0..burst)
            .map(|k| payload(i + k as u32, 8 + (i as usize * 37 + k * 11) % (max - 8)))
            .collect();
        let pkts: Vec<TxPkt> = bodies
            .iter()
            .map(|b| TxPkt {
                route,
                hdr: &b[..4],
                data: &b[4..],
            })
            .collect();
        assert_eq!(
            send_all(net, a, &pkts, 10_000),
            burst,
            "burst {burst} accepted"
        );
        i += burst as u32;
        all.extend(bodies);
        // Drain as we go so the receive ring never overflows.
        let got = recv_from(net, b, a, burst, 10_000);
        assert_eq!(got.len(), burst, "burst {burst} delivered");
        let start = all.len() - burst;
        for (k, g) in got.iter().enumerate() {
            assert_eq!(g, &all[start + k], "burst {burst} packet {k}");
        }
    }
    let s = a.stats();
    assert_eq!(s.tx_pkts as usize, all.len());
    assert!(
        s.tx_batches >= 40 && (s.tx_batches as usize) < all.len(),
        "{s:?}: batched"
    );
    assert_eq!(b.stats().rx_pkts as usize, all.len());
}

/// A packet of exactly `max_pkt_size` arrives intact; one byte more is refused and counted
/// (the caller's `tx_burst` sees it not taken).
pub fn check_large_packets<T: Transport>(net: &dyn Net, a: &mut T, b: &mut T, route: RouteId) {
    let max = a.max_pkt_size();
    let big = payload(7, max);
    let (hdr, data) = big.split_at(32.min(max));
    assert_eq!(a.tx_burst(&[TxPkt { route, hdr, data }]).unwrap(), 1);
    let got = recv_from(net, b, a, 1, 10_000);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0], big);
    let too_big = vec![1u8; max + 1];
    let dropped = a.stats().tx_dropped;
    assert_eq!(
        a.tx_burst(&[TxPkt {
            route,
            hdr: &[],
            data: &too_big
        }])
        .unwrap(),
        0
    );
    assert_eq!(a.stats().tx_dropped, dropped + 1);
}

/// Once `tx_burst` returns, the caller may reuse its buffers: what arrives is what was
/// passed, for inline-sized and staged packets alike, even across many send-queue wraps.
pub fn check_caller_buffers_reusable<T: Transport>(
    net: &dyn Net,
    a: &mut T,
    b: &mut T,
    route: RouteId,
) {
    let max = a.max_pkt_size();
    let sizes = [1usize, 20, 60, 61, 200, max];
    let mut expect = Vec::new();
    let mut buf = vec![0u8; max];
    for round in 0..300u32 {
        let len = sizes[round as usize % sizes.len()];
        let p = payload(round, len);
        buf[..len].copy_from_slice(&p);
        assert_eq!(
            send_all(
                net,
                a,
                &[TxPkt {
                    route,
                    hdr: &[],
                    data: &buf[..len]
                }],
                10_000
            ),
            1
        );
        buf.fill(0xEE); // scribble over the caller's buffer at once
        expect.push(p);
        if round % 16 == 15 {
            let got = recv_from(net, b, a, 16, 10_000);
            let start = expect.len() - 16;
            assert_eq!(got, expect[start..].to_vec(), "round {round}");
        }
    }
}

/// One server, `clients.len()` clients: each client sends `per` requests on its route; the
/// server answers each on the route the request's client id maps to. Everyone gets exactly
/// their own packets.
pub fn check_many_routes<T: Transport>(net: &dyn Net, server: &mut T, clients: &mut [T], per: u32) {
    let mut to_client: HashMap<u32, RouteId> = HashMap::new();
    let mut to_server = Vec::new();
    for (c, client) in clients.iter_mut().enumerate() {
        let (rc, rs) = connect(client, server);
        to_client.insert(c as u32, rs);
        to_server.push(rc);
    }
    let mut answered = 0u32;
    let total = clients.len() as u32 * per;
    for n in 0..per {
        for (c, client) in clients.iter_mut().enumerate() {
            let body = [&(c as u32).to_le_bytes()[..], &n.to_le_bytes()[..]].concat();
            assert_eq!(
                send_all(
                    net,
                    client,
                    &[TxPkt {
                        route: to_server[c],
                        hdr: b"REQ",
                        data: &body
                    }],
                    10_000
                ),
                1
            );
        }
        for _ in 0..10_000 {
            let k = server.rx_burst();
            let mut replies = Vec::new();
            for i in 0..k {
                let p = server.rx_pkt(i);
                assert_eq!(&p[..3], b"REQ");
                let c = index_of(&p[3..7]);
                let mut r = b"REP".to_vec();
                r.extend_from_slice(&p[3..]);
                replies.push((c, r));
            }
            server.rx_release(k);
            let pkts: Vec<TxPkt> = replies
                .iter()
                .map(|(c, r)| TxPkt {
                    route: to_client[c],
                    hdr: &r[..3],
                    data: &r[3..],
                })
                .collect();
            assert_eq!(send_all(net, server, &pkts, 10_000), pkts.len());
            answered += k as u32;
            if answered == (n + 1) * clients.len() as u32 {
                break;
            }
            for client in clients.iter_mut() {
                client.rx_burst(); // their event loops keep running (no release: replies wait)
            }
            net.pump();
        }
    }
    assert_eq!(answered, total);
    for (c, client) in clients.iter_mut().enumerate() {
        let got = recv_from(net, client, server, per as usize, 10_000);
        assert_eq!(got.len(), per as usize, "client {c}");
        for g in &got {
            assert_eq!(&g[..3], b"REP");
            assert_eq!(
                index_of(&g[3..7]),
                c as u32,
                "client {c} got someone else's reply"
            );
        }
    }
}

/// `rx_burst` counts unreleased packets too; `rx_release(k)` frees the oldest `k`; an index
/// out of range reads as empty; unknown routes are dropped and counted.
pub fn check_ring_semantics<T: Transport>(net: &dyn Net, a: &mut T, b: &mut T, route: RouteId) {
    let bodies: Vec<Vec<u8>> = (0..5).map(|i| payload(i, 10)).collect();
    let pkts: Vec<TxPkt> = bodies
        .iter()
        .map(|p| TxPkt {
            route,
            hdr: &[],
            data: p,
        })
        .collect();
    assert_eq!(send_all(net, a, &pkts, 10_000), 5);
    let mut n = 0;
    for _ in 0..10_000 {
        a.rx_burst();
        n = b.rx_burst();
        if n == 5 {
            break;
        }
        net.pump();
    }
    assert_eq!(n, 5);
    assert_eq!(b.rx_burst(), 5, "still held");
    b.rx_release(2);
    assert_eq!(b.rx_burst(), 3);
    assert_eq!(b.rx_pkt(0), &bodies[2][..]);
    assert_eq!(b.rx_pkt(3), b"", "out of range");
    b.rx_release(100);
    assert_eq!(b.rx_burst(), 0);
    let dropped = a.stats().tx_dropped;
    assert_eq!(
        a.tx_burst(&[TxPkt {
            route: 9_999,
            hdr: b"x",
            data: b""
        }])
        .unwrap(),
        0
    );
    assert_eq!(a.stats().tx_dropped, dropped + 1);
}

#[cfg(feature = "rdma")]
pub mod node;

/// `server` echoes every packet back on `route` until `stop` is set; for tests that run
/// endpoints on several threads (a real-time fabric or real hardware).
pub fn echo_until<T: Transport>(
    server: &mut T,
    route: RouteId,
    stop: &std::sync::atomic::AtomicBool,
) {
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let k = server.rx_burst();
        let got: Vec<Vec<u8>> = (0..k).map(|i| server.rx_pkt(i).to_vec()).collect();
        server.rx_release(k);
        let pkts: Vec<TxPkt> = got
            .iter()
            .map(|p| TxPkt {
                route,
                hdr: &[],
                data: p,
            })
            .collect();
        let mut done = 0;
        while done < pkts.len() && !stop.load(std::sync::atomic::Ordering::Acquire) {
            done += server.tx_burst(&pkts[done..]).expect("tx_burst");
        }
        if k == 0 {
            server
                .wait(Some(std::time::Duration::from_micros(100)))
                .expect("wait");
        }
    }
}

/// Sends `n` packets one at a time from `client` on `route` and waits for each echo (up to
/// `deadline`); returns the echoes. Lost packets (a datagram transport) are resent.
pub fn ping_pong<T: Transport>(
    client: &mut T,
    route: RouteId,
    n: u32,
    deadline: std::time::Instant,
) -> Vec<Vec<u8>> {
    let mut echoes = Vec::new();
    for i in 0..n {
        let p = payload(i, 64 + (i as usize * 97) % 3000);
        'resend: loop {
            assert!(
                std::time::Instant::now() < deadline,
                "ping {i}: no echo before the deadline"
            );
            let sent = client
                .tx_burst(&[TxPkt {
                    route,
                    hdr: &[],
                    data: &p,
                }])
                .expect("tx_burst");
            let until = std::time::Instant::now() + std::time::Duration::from_millis(200);
            while std::time::Instant::now() < until {
                let k = client.rx_burst();
                let got: Vec<Vec<u8>> = (0..k).map(|j| client.rx_pkt(j).to_vec()).collect();
                client.rx_release(k);
                for g in got {
                    if g == p {
                        echoes.push(g);
                        break 'resend;
                    }
                }
                if sent == 0 {
                    break;
                }
                client
                    .wait(Some(std::time::Duration::from_micros(100)))
                    .expect("wait");
            }
        }
    }
    echoes
}
