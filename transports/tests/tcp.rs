//! Integration tests of the kernel TCP transport on 127.0.0.1: handshake, simultaneous
//! connects, limits, timeouts, malformed input from raw sockets, backpressure and failures.
//! (The behaviour every transport shares is in `tests/conformance.rs`.)
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use transports::tcp::wire::{Handshake, Ident, Kind, RejectReason};
use transports::tcp::{TcpConfig, TcpTransport};
use transports::{RouteId, RoutingInfo, Transport, TransportError, TxPkt};

const LIMIT: Duration = Duration::from_secs(10);

fn cfg() -> TcpConfig {
    TcpConfig::default()
}

fn tcp(c: TcpConfig) -> TcpTransport {
    TcpTransport::new(c).expect("TCP transport on 127.0.0.1")
}

/// `a` gets a route to `b`.
fn route(a: &mut TcpTransport, b: &TcpTransport) -> RouteId {
    let (r, info) = a.route_alloc().unwrap();
    assert_eq!(info, a.routing_info());
    a.resolve(r, &b.routing_info()).unwrap();
    r
}

/// Runs every endpoint's event loop until `done` holds (at most 10 s, then panics).
fn until(
    eps: &mut [&mut TcpTransport],
    what: &str,
    mut done: impl FnMut(&mut [&mut TcpTransport]) -> bool,
) {
    let deadline = Instant::now() + LIMIT;
    loop {
        for t in eps.iter_mut() {
            t.rx_burst();
        }
        if done(eps) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        if let Some(t) = eps.first_mut() {
            t.wait(Some(Duration::from_millis(1))).unwrap();
        }
    }
}

/// Receives `n` packets at `eps[0]` while driving the others; returns copies.
fn recv(eps: &mut [&mut TcpTransport], n: usize) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    until(eps, "packets", |eps| {
        let t = &mut eps[0];
        let k = t.rx_burst();
        for i in 0..k {
            got.push(t.rx_pkt(i).to_vec());
        }
        t.rx_release(k);
        got.len() >= n
    });
    got
}

fn pkt(route: RouteId, b: &[u8]) -> TxPkt<'_> {
    let (hdr, data) = b.split_at(b.len().min(8));
    TxPkt { route, hdr, data }
}

fn body(i: usize, len: usize) -> Vec<u8> {
    (0..len).map(|j| (i * 131 + j * 7) as u8).collect()
}

#[test]
fn round_trip_and_one_connection_per_peer() {
    let mut a = tcp(cfg());
    let mut b = tcp(cfg());
    let ab1 = route(&mut a, &b);
    let ab2 = route(&mut a, &b);
    let ba = route(&mut b, &a);
    assert_eq!(
        a.tx_burst(&[pkt(ab1, b"one"), pkt(ab2, b"two")]).unwrap(),
        2
    );
    assert_eq!(
        recv(&mut [&mut b, &mut a], 2),
        [b"one".to_vec(), b"two".to_vec()]
    );
    assert_eq!(b.tx_burst(&[pkt(ba, b"back")]).unwrap(), 1);
    assert_eq!(recv(&mut [&mut a, &mut b], 1), [b"back".to_vec()]);
    // Two routes from a and one from b: one connection, opened by a.
    assert_eq!((a.connections(), b.connections()), (1, 1));
    assert_eq!((a.tcp_stats().connects, b.tcp_stats().connects), (1, 0));
    assert_eq!(b.tcp_stats().accepted, 1);
    assert!(a.is_reliable());
    assert_eq!(a.poll_route_failure(), None);
}

/// Both ends send before either has connected: one connection survives, nothing is lost.
#[test]
fn simultaneous_connect_ends_with_one_connection() {
    for round in 0..6 {
        let mut a = tcp(cfg());
        let mut b = tcp(cfg());
        let ab = route(&mut a, &b);
        let ba = route(&mut b, &a);
        let from_a: Vec<Vec<u8>> = (0..20).map(|i| body(i, 10 + i)).collect();
        let from_b: Vec<Vec<u8>> = (0..20).map(|i| body(100 + i, 30 + i)).collect();
        let pa: Vec<TxPkt<'_>> = from_a.iter().map(|x| pkt(ab, x)).collect();
        let pb: Vec<TxPkt<'_>> = from_b.iter().map(|x| pkt(ba, x)).collect();
        assert_eq!(a.tx_burst(&pa).unwrap(), 20);
        assert_eq!(b.tx_burst(&pb).unwrap(), 20);
        // Vary who runs first so the frames meet in different orders.
        let mut got_a = Vec::new();
        let mut got_b = Vec::new();
        let deadline = Instant::now() + LIMIT;
        while got_a.len() < 20 || got_b.len() < 20 {
            assert!(Instant::now() < deadline, "round {round}: timed out");
            let order: [&mut TcpTransport; 2] = if round % 2 == 0 {
                [&mut a, &mut b]
            } else {
                [&mut b, &mut a]
            };
            for t in order {
                t.rx_burst();
            }
            for (t, got) in [(&mut a, &mut got_a), (&mut b, &mut got_b)] {
                let k = t.rx_burst();
                for i in 0..k {
                    got.push(t.rx_pkt(i).to_vec());
                }
                t.rx_release(k);
            }
            if round >= 4 {
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        assert_eq!(got_b, from_a, "round {round}");
        assert_eq!(got_a, from_b, "round {round}");
        let (sa, sb) = (a.tcp_stats(), b.tcp_stats());
        assert_eq!(
            sa.connects + sb.connects,
            2,
            "both connected: {sa:?} {sb:?}"
        );
        assert!(sa.simultaneous + sb.simultaneous >= 1, "{sa:?} {sb:?}");
        // Once the loser's connection is closed, each end holds exactly one.
        until(&mut [&mut a, &mut b], "one connection each", |e| {
            e[0].connections() == 1 && e[1].connections() == 1
        });
        assert_eq!(
            (a.poll_route_failure(), b.poll_route_failure()),
            (None, None)
        );
    }
}

#[test]
fn route_to_self() {
    let mut a = tcp(cfg());
    let (r, _) = a.route_alloc().unwrap();
    let me = a.routing_info();
    a.resolve(r, &me).unwrap();
    a.tx_burst(&[pkt(r, b"hello me")]).unwrap();
    assert_eq!(recv(&mut [&mut a], 1), [b"hello me".to_vec()]);
}

/// Sends 3.5 MB in `tx_burst` calls of `burst` packets through a 16 KiB send buffer: the
/// first write that finds it full comes back short (cutting a packet at an arbitrary byte),
/// the rest queue; everything arrives whole and in order.
fn socket_buffer_overflow(burst: usize, rcvbuf: usize) {
    let small = TcpConfig {
        max_pkt_size: 60_000,
        sndbuf: Some(16 << 10),
        rcvbuf: Some(rcvbuf),
        rx_ring_size: 16,
        ..cfg()
    };
    let mut a = tcp(small.clone());
    let mut b = tcp(small);
    let r = route(&mut a, &b);
    let bodies: Vec<Vec<u8>> = (0..120).map(|i| body(i, 1 + (i * 7919) % 60_000)).collect();
    let pkts: Vec<TxPkt<'_>> = bodies.iter().map(|x| pkt(r, x)).collect();
    // Establish first so the bursts go out through partial vectored writes.
    a.tx_burst(&pkts[..1]).unwrap();
    assert_eq!(recv(&mut [&mut b, &mut a], 1), bodies[..1]);
    for group in pkts[1..].chunks(burst) {
        assert_eq!(a.tx_burst(group).unwrap(), group.len());
    }
    // At most the two socket buffers (the kernel doubles what is set) are in flight.
    assert!(
        a.queued_bytes() > 3_000_000 - 2 * (16 << 10) - 2 * rcvbuf,
        "the sockets cannot take 3.5 MB at once"
    );
    let got = recv(&mut [&mut b, &mut a], 119);
    assert_eq!(got, bodies[1..]);
    until(&mut [&mut a, &mut b], "an empty queue", |e| {
        e[0].queued_bytes() == 0
    });
    assert_eq!(a.queued_packets(), 0);
    let s = a.stats();
    assert_eq!((s.tx_pkts, s.tx_dropped), (120, 0));
    assert!(a.tcp_stats().write_calls > 2);
}

#[test]
fn small_frames_copied_into_one_send_survive_short_writes() {
    // Bursts of at most 256 bytes are copied into one buffer before the send; with the
    // receiver not reading, some of those sends come back short.
    let c = TcpConfig {
        sndbuf: Some(16 << 10),
        rcvbuf: Some(256 << 10),
        ..cfg()
    };
    let mut a = tcp(c.clone());
    let mut b = tcp(c);
    let r = route(&mut a, &b);
    a.tx_burst(&[pkt(r, b"hello")]).unwrap();
    assert_eq!(recv(&mut [&mut b, &mut a], 1).len(), 1);
    let bodies: Vec<Vec<u8>> = (0..30_000).map(|i| body(i, 1 + i % 60)).collect();
    let pkts: Vec<TxPkt<'_>> = bodies.iter().map(|x| pkt(r, x)).collect();
    for group in pkts.chunks(3) {
        assert_eq!(a.tx_burst(group).unwrap(), group.len());
    }
    assert!(
        a.queued_bytes() > 0,
        "1 MB cannot fit in the socket buffers"
    );
    let got = recv(&mut [&mut b, &mut a], bodies.len());
    assert_eq!(got, bodies);
    assert_eq!(a.stats().tx_dropped, 0);
}

#[test]
fn bursts_larger_than_the_socket_buffers_arrive_whole_and_in_order() {
    socket_buffer_overflow(119, 16 << 10);
}

#[test]
fn small_bursts_through_full_socket_buffers_arrive_whole_and_in_order() {
    // One and five packets per call take the direct path's smaller iovec arrays. (A
    // receive buffer below loopback's 64 KiB MSS would stall this exchange for the kernel's
    // delayed window updates, so it gets a larger one.)
    socket_buffer_overflow(1, 256 << 10);
    socket_buffer_overflow(5, 256 << 10);
}

#[test]
fn full_send_queue_drops_and_counts_without_blocking() {
    let c = TcpConfig {
        max_pkt_size: 10_000,
        tx_queue_bytes: 100_000,
        sndbuf: Some(8 << 10),
        ..cfg()
    };
    let mut a = tcp(c.clone());
    let b = tcp(c);
    let r = route(&mut a, &b);
    // b never runs: a stays connecting, so everything queues.
    let x = vec![1u8; 9_996];
    let pkts: Vec<TxPkt<'_>> = (0..20).map(|_| pkt(r, &x)).collect();
    let t = Instant::now();
    assert_eq!(a.tx_burst(&pkts).unwrap(), 10);
    assert_eq!(a.stats().tx_dropped, 10);
    assert_eq!(a.tcp_stats().tx_queue_full, 10);
    assert_eq!(a.queued_packets(), 10);
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[test]
fn packets_larger_than_the_peer_accepts_are_dropped_at_the_sender() {
    let mut a = tcp(TcpConfig {
        max_pkt_size: 5000,
        ..cfg()
    });
    let mut b = tcp(TcpConfig {
        max_pkt_size: 1000,
        ..cfg()
    });
    let r = route(&mut a, &b);
    let big = vec![2u8; 3000];
    let ok = vec![3u8; 1000];
    // Queued before the handshake: the oversize one is dropped when b announces 1000.
    assert_eq!(a.tx_burst(&[pkt(r, &big), pkt(r, &ok)]).unwrap(), 2);
    assert_eq!(recv(&mut [&mut b, &mut a], 1), std::slice::from_ref(&ok));
    assert_eq!(a.stats().tx_dropped, 1);
    // Known now: dropped at once.
    assert_eq!(a.tx_burst(&[pkt(r, &big), pkt(r, &ok)]).unwrap(), 1);
    assert_eq!(a.stats().tx_dropped, 2);
    assert_eq!(recv(&mut [&mut b, &mut a], 1), [ok]);
    assert_eq!(b.stats().rx_dropped, 0);
}

#[test]
fn peer_loss_is_reported_once_per_route() {
    let mut a = tcp(cfg());
    let mut b = tcp(cfg());
    let mut c = tcp(cfg());
    let ab1 = route(&mut a, &b);
    let ab2 = route(&mut a, &b);
    let ac = route(&mut a, &c);
    a.tx_burst(&[pkt(ab1, b"x"), pkt(ab2, b"y"), pkt(ac, b"z")])
        .unwrap();
    assert_eq!(recv(&mut [&mut b, &mut a], 2).len(), 2);
    assert_eq!(recv(&mut [&mut c, &mut a], 1).len(), 1);
    drop(b);
    let mut failed = Vec::new();
    until(&mut [&mut a, &mut c], "both route failures", |e| {
        while let Some(r) = e[0].poll_route_failure() {
            failed.push(r);
        }
        failed.len() >= 2
    });
    failed.sort();
    assert_eq!(failed, [ab1, ab2]);
    assert_eq!(a.poll_route_failure(), None);
    // A failed route takes nothing; the route to c still works.
    assert_eq!(a.tx_burst(&[pkt(ab1, b"lost")]).unwrap(), 0);
    assert_eq!(a.tx_burst(&[pkt(ac, b"still")]).unwrap(), 1);
    assert_eq!(recv(&mut [&mut c, &mut a], 1), [b"still".to_vec()]);
    // Resolving again opens a new connection (to nobody here: it fails and is reported).
    let gone = a.tcp_stats().route_failures;
    assert_eq!(gone, 2);
}

#[test]
fn restarted_peer_on_the_same_address_is_another_endpoint() {
    let mut a = tcp(cfg());
    let b = tcp(cfg());
    let old = b.routing_info();
    let addr = b.local_addr();
    drop(b);
    let mut b2 = tcp(TcpConfig {
        bind: addr,
        ..cfg()
    });
    assert_ne!(b2.routing_info(), old);
    let (r, _) = a.route_alloc().unwrap();
    a.resolve(r, &old).unwrap();
    a.tx_burst(&[pkt(r, b"for the old one")]).unwrap();
    let mut failed = None;
    until(&mut [&mut a, &mut b2], "the failure", |e| {
        failed = e[0].poll_route_failure();
        failed.is_some()
    });
    assert_eq!(failed, Some(r));
    assert_eq!(b2.rx_burst(), 0, "the new instance got nothing");
    assert!(a.tcp_stats().rejects >= 1 && b2.tcp_stats().rejects >= 1);
    assert_eq!(a.stats().tx_dropped, 1);
}

#[test]
fn connection_refused_is_a_route_failure() {
    let mut a = tcp(cfg());
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (r, _) = a.route_alloc().unwrap();
    a.resolve(r, &TcpTransport::encode_routing_info(port, 7))
        .unwrap();
    a.tx_burst(&[pkt(r, b"x")]).unwrap();
    let mut failed = None;
    until(&mut [&mut a], "the failure", |e| {
        failed = e[0].poll_route_failure();
        failed.is_some()
    });
    assert_eq!(failed, Some(r));
}

/// A raw socket that speaks the handshake by hand.
/// It claims to be 127.0.0.1:`port`, instance 42.
fn raw_hello(to: &TcpTransport, port: u16, max: u32) -> (TcpStream, Handshake) {
    let mut s = TcpStream::connect(to.local_addr()).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let me = Ident {
        addr: ([127, 0, 0, 1], port).into(),
        instance: 42,
    };
    s.write_all(&Handshake::hello(me, to.instance(), max).to_vec())
        .unwrap();
    (s, Handshake::hello(me, to.instance(), max))
}

/// Reads one handshake frame from a raw socket while driving `t`.
fn raw_reply(s: &mut TcpStream, t: &mut TcpTransport) -> Option<Handshake> {
    s.set_nonblocking(true).unwrap();
    let mut buf = Vec::new();
    let deadline = Instant::now() + LIMIT;
    loop {
        t.rx_burst();
        let mut b = [0u8; 128];
        match s.read(&mut b) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&b[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
        if buf.len() >= 4 {
            let len = Handshake::check_len(buf[..4].try_into().unwrap()).unwrap();
            if buf.len() >= 4 + len {
                return Some(Handshake::parse(&buf[4..4 + len]).unwrap());
            }
        }
        assert!(Instant::now() < deadline, "no reply");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Waits until the raw socket sees the transport close it.
fn raw_closed(s: &mut TcpStream, t: &mut TcpTransport) {
    s.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + LIMIT;
    loop {
        t.rx_burst();
        let mut b = [0u8; 256];
        match s.read(&mut b) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return,
        }
        assert!(
            Instant::now() < deadline,
            "the transport kept the connection"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn a_hand_made_client_can_talk_to_it() {
    let mut b = tcp(cfg());
    let (mut s, _) = raw_hello(&b, 1, 100);
    let reply = raw_reply(&mut s, &mut b).unwrap();
    assert_eq!(reply.kind, Kind::Accept);
    assert_eq!(reply.instance, b.instance());
    assert_eq!(reply.max_pkt_size as usize, b.max_pkt_size());
    s.set_nonblocking(false).unwrap();
    for p in [&b"abc"[..], b"defgh"] {
        s.write_all(&transports::tcp::wire::data_header(p.len()))
            .unwrap();
        s.write_all(p).unwrap();
    }
    assert_eq!(recv(&mut [&mut b], 2), [b"abc".to_vec(), b"defgh".to_vec()]);
    // b can answer over the same connection: resolve the identity the hello gave.
    let (r, _) = b.route_alloc().unwrap();
    b.resolve(
        r,
        &TcpTransport::encode_routing_info("127.0.0.1:1".parse().unwrap(), 42),
    )
    .unwrap();
    b.tx_burst(&[pkt(r, b"reply")]).unwrap();
    b.rx_burst();
    let mut got = [0u8; 9];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"\x05\0\0\0reply");
    assert_eq!(b.connections(), 1);
}

#[test]
fn malformed_handshakes_and_frames_close_that_connection_only() {
    let mut b = tcp(TcpConfig {
        max_pkt_size: 100,
        ..cfg()
    });
    let mut a = tcp(cfg());
    let ab = route(&mut a, &b);
    a.tx_burst(&[pkt(ab, b"first")]).unwrap();
    assert_eq!(recv(&mut [&mut b, &mut a], 1), [b"first".to_vec()]);

    let me = Ident {
        addr: "127.0.0.1:1".parse().unwrap(),
        instance: 5,
    };
    let good = Handshake::hello(me, b.instance(), 100).to_vec();
    let mut bad_magic = good.clone();
    bad_magic[4] = 0;
    let mut bad_version = good.clone();
    bad_version[8] = 9;
    let mut garbage = vec![0xAB; 300];
    garbage[..4].copy_from_slice(&40u32.to_le_bytes());
    let cases: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        u32::MAX.to_le_bytes().to_vec(),
        bad_magic,
        bad_version,
        garbage,
        Handshake::accept(1, 100).to_vec(),
        // A valid hello, then an empty frame / an oversized frame.
        [&good[..], &0u32.to_le_bytes()].concat(),
        [&good[..], &101u32.to_le_bytes(), &[0; 101][..]].concat(),
    ];
    for (i, bytes) in cases.iter().enumerate() {
        let before = b.tcp_stats().malformed;
        let mut s = TcpStream::connect(b.local_addr()).unwrap();
        s.write_all(bytes).unwrap();
        raw_closed(&mut s, &mut b);
        assert_eq!(b.tcp_stats().malformed, before + 1, "case {i}");
        // The good connection is untouched.
        a.tx_burst(&[pkt(ab, b"still here")]).unwrap();
        assert_eq!(
            recv(&mut [&mut b, &mut a], 1),
            [b"still here".to_vec()],
            "case {i}"
        );
    }
    assert_eq!(b.stats().rx_dropped, cases.len() as u64);
    assert_eq!(a.poll_route_failure(), None);
}

#[test]
fn wrong_instance_is_rejected() {
    // One handshake at a time: a rejected hello must stop counting as a handshake, or the
    // second connection (and every later one) would be refused.
    let mut b = tcp(TcpConfig {
        max_handshaking: 1,
        ..cfg()
    });
    for _ in 0..2 {
        let mut s = TcpStream::connect(b.local_addr()).unwrap();
        let me = Ident {
            addr: "127.0.0.1:1".parse().unwrap(),
            instance: 5,
        };
        s.write_all(&Handshake::hello(me, b.instance() ^ 1, 100).to_vec())
            .unwrap();
        let r = raw_reply(&mut s, &mut b).unwrap();
        assert_eq!(
            (r.kind, r.reason, r.instance),
            (
                Kind::Reject,
                Some(RejectReason::WrongInstance),
                b.instance()
            )
        );
        raw_closed(&mut s, &mut b);
        assert_eq!(b.connections(), 0);
    }
    let mut a = tcp(cfg());
    let r = route(&mut a, &b);
    a.tx_burst(&[pkt(r, b"after the rejects")]).unwrap();
    assert_eq!(
        recv(&mut [&mut b, &mut a], 1),
        [b"after the rejects".to_vec()]
    );
}

#[test]
fn silent_connections_time_out() {
    let mut b = tcp(TcpConfig {
        handshake_timeout: Duration::from_millis(100),
        ..cfg()
    });
    let mut s = TcpStream::connect(b.local_addr()).unwrap();
    s.write_all(&[36, 0]).unwrap(); // half a length prefix, then nothing
    raw_closed(&mut s, &mut b);
    assert_eq!(b.tcp_stats().timeouts, 1);
    assert_eq!(b.connections(), 0);
}

#[test]
fn connection_limits_refuse_the_excess() {
    let mut b = tcp(TcpConfig {
        max_connections_per_host: 2,
        ..cfg()
    });
    let mut socks: Vec<TcpStream> = (1..3).map(|port| raw_hello(&b, port, 100).0).collect();
    until(&mut [&mut b], "two connections", |e| {
        e[0].connections() == 2
    });
    let mut third = TcpStream::connect(b.local_addr()).unwrap();
    let r = raw_reply(&mut third, &mut b).unwrap();
    assert_eq!(r.reason, Some(RejectReason::Busy));
    raw_closed(&mut third, &mut b);
    assert_eq!(b.tcp_stats().refused, 1);
    assert_eq!(b.connections(), 2);
    // The admitted ones were accepted.
    for s in &mut socks {
        assert_eq!(raw_reply(s, &mut b).unwrap().kind, Kind::Accept);
    }

    let mut h = tcp(TcpConfig {
        max_handshaking: 1,
        ..cfg()
    });
    let _quiet = TcpStream::connect(h.local_addr()).unwrap();
    until(&mut [&mut h], "one handshaking", |e| {
        e[0].connections() == 1
    });
    let mut second = TcpStream::connect(h.local_addr()).unwrap();
    raw_closed(&mut second, &mut h);
    assert_eq!(h.tcp_stats().refused, 1);
}

#[test]
fn freeing_the_last_route_closes_after_the_linger() {
    let mut a = tcp(TcpConfig {
        linger: Duration::from_millis(50),
        ..cfg()
    });
    let mut b = tcp(cfg());
    let ab = route(&mut a, &b);
    let ba = route(&mut b, &a);
    a.tx_burst(&[pkt(ab, b"x")]).unwrap();
    assert_eq!(recv(&mut [&mut b, &mut a], 1).len(), 1);
    // Freed and re-created at once: the connection stays.
    a.route_free(ab);
    let ab2 = route(&mut a, &b);
    a.tx_burst(&[pkt(ab2, b"y")]).unwrap();
    assert_eq!(recv(&mut [&mut b, &mut a], 1), [b"y".to_vec()]);
    assert_eq!(a.tcp_stats().connects, 1);
    // Freed for good: a closes after 50 ms; b reports its route over it.
    a.route_free(ab2);
    let mut failed = None;
    until(&mut [&mut b, &mut a], "b's failure", |e| {
        failed = e[0].poll_route_failure();
        failed.is_some()
    });
    assert_eq!(failed, Some(ba));
    assert_eq!(a.connections(), 0);
}

#[test]
fn config_and_resolve_errors() {
    for c in [
        TcpConfig {
            bind: "0.0.0.0:0".parse().unwrap(),
            ..cfg()
        },
        TcpConfig {
            max_pkt_size: 0,
            ..cfg()
        },
        TcpConfig {
            max_pkt_size: (1 << 24) + 1,
            ..cfg()
        },
        TcpConfig {
            rx_ring_size: 0,
            ..cfg()
        },
        TcpConfig {
            tx_queue_bytes: 10,
            ..cfg()
        },
    ] {
        assert!(matches!(
            TcpTransport::new(c),
            Err(TransportError::Config(_))
        ));
    }
    let mut a = tcp(cfg());
    let (r, _) = a.route_alloc().unwrap();
    let udp_style = RoutingInfo::new(&[4, 127, 0, 0, 1, 0x1f, 0x90]).unwrap();
    assert!(matches!(
        a.resolve(r, &udp_style),
        Err(TransportError::Resolve(_))
    ));
    assert!(matches!(
        a.resolve(999, &a.routing_info()),
        Err(TransportError::UnknownRoute(999))
    ));
    let (addr, inst) = TcpTransport::decode_routing_info(&a.routing_info()).unwrap();
    assert_eq!((addr, inst), (a.local_addr(), a.instance()));
}

/// Spins `rx_burst` of every endpoint (never `wait`) until `eps[0]` has `n` packets.
fn busy_recv(eps: &mut [&mut TcpTransport], n: usize) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + LIMIT;
    let mut got = Vec::new();
    while got.len() < n {
        assert!(Instant::now() < deadline, "timed out busy-polling");
        for t in eps.iter_mut().skip(1) {
            t.rx_burst();
        }
        let t = &mut eps[0];
        let k = t.rx_burst();
        for i in 0..k {
            got.push(t.rx_pkt(i).to_vec());
        }
        t.rx_release(k);
    }
    got
}

#[test]
fn busy_polled_connections_leave_epoll_and_keep_working() {
    let c = TcpConfig {
        sndbuf: Some(16 << 10),
        max_pkt_size: 60_000,
        ..cfg()
    };
    let mut a = tcp(c.clone());
    let mut b = tcp(c);
    let r = route(&mut a, &b);
    let back = route(&mut b, &a);
    a.tx_burst(&[pkt(r, b"hello")]).unwrap();
    assert_eq!(recv(&mut [&mut b, &mut a], 1).len(), 1);

    // A busy-polling loop: its connections leave epoll, and packets still arrive.
    for i in 0..500u32 {
        let x = i.to_le_bytes();
        a.tx_burst(&[pkt(r, &x)]).unwrap();
        assert_eq!(busy_recv(&mut [&mut b, &mut a], 1), [x.to_vec()]);
        b.tx_burst(&[pkt(back, &x)]).unwrap();
        assert_eq!(busy_recv(&mut [&mut a, &mut b], 1), [x.to_vec()]);
    }
    let (sa, sb) = (a.tcp_stats(), b.tcp_stats());
    assert!(sa.unpolled >= 1 && sb.unpolled >= 1, "{sa:?} {sb:?}");

    // Backpressure: a full socket puts the connection back for its writability report.
    let bodies: Vec<Vec<u8>> = (0..60).map(|i| body(i, 50_000)).collect();
    let pkts: Vec<TxPkt<'_>> = bodies.iter().map(|x| pkt(r, x)).collect();
    assert_eq!(a.tx_burst(&pkts).unwrap(), 60);
    assert!(a.queued_bytes() > 0);
    assert_eq!(busy_recv(&mut [&mut b, &mut a], 60), bodies);
    assert!(a.tcp_stats().repolled > sa.repolled, "{:?}", a.tcp_stats());

    // A loop that sleeps: `wait` puts the connections back and wakes up for a packet.
    for _ in 0..200 {
        b.rx_burst();
    }
    a.tx_burst(&[pkt(r, b"wake up")]).unwrap();
    let t = Instant::now();
    let mut got = Vec::new();
    while got.is_empty() && t.elapsed() < LIMIT {
        b.wait(Some(LIMIT)).unwrap();
        let k = b.rx_burst();
        got.extend((0..k).map(|i| b.rx_pkt(i).to_vec()));
        b.rx_release(k);
    }
    assert_eq!(got, [b"wake up".to_vec()]);
    assert!(t.elapsed() < LIMIT / 2, "wait slept through the packet");

    // A peer that goes away is noticed by the direct reads alone. (Out of epoll again once
    // its last writability report came, which can wait for a delayed ACK: bounded by time.)
    let deadline = Instant::now() + LIMIT;
    while a.tcp_stats().unpolled < 2 && Instant::now() < deadline {
        a.rx_burst();
        b.rx_burst();
    }
    let before = a.tcp_stats().unpolled;
    assert!(before >= 2, "{:?}", a.tcp_stats());
    drop(b);
    let deadline = Instant::now() + LIMIT;
    let failed = loop {
        a.rx_burst();
        if let Some(f) = a.poll_route_failure() {
            break f;
        }
        assert!(Instant::now() < deadline, "the peer's close went unnoticed");
    };
    assert_eq!(failed, r);
}
