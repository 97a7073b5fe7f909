//! Integration tests of the kernel UDP transport on 127.0.0.1.
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use transports::udp::{UdpConfig, UdpTransport, MAX_UDP_PAYLOAD};
use transports::{RouteId, RoutingInfo, Transport, TransportError, TxPkt};

fn cfg() -> UdpConfig {
    UdpConfig::default()
}

fn transport(c: UdpConfig) -> UdpTransport {
    UdpTransport::new(c).expect("create UDP transport on 127.0.0.1")
}

/// `a` gets a route to `b`.
fn connect(a: &mut UdpTransport, b: &UdpTransport) -> RouteId {
    let (r, info) = a.route_alloc().unwrap();
    assert_eq!(info, a.routing_info());
    a.resolve(r, &b.routing_info()).unwrap();
    r
}

/// Polls until at least `n` packets are readable or 2 s pass; returns the readable count.
fn recv_at_least(t: &mut UdpTransport, n: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let got = t.rx_burst();
        if got >= n || Instant::now() > deadline {
            return got;
        }
        t.wait(Some(Duration::from_millis(5))).unwrap();
    }
}

/// Receives `n` packets (releasing as it goes, 2 s at most) and returns copies of them.
fn drain(t: &mut UdpTransport, n: usize) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    while out.len() < n && Instant::now() < deadline {
        let k = t.rx_burst();
        for i in 0..k {
            out.push(t.rx_pkt(i).to_vec());
        }
        t.rx_release(k);
        if k == 0 {
            t.wait(Some(Duration::from_millis(5))).unwrap();
        }
    }
    out
}

fn payload(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed * 31 + i * 7) as u8).collect()
}

#[test]
fn single_packet_round_trip() {
    let mut a = transport(cfg());
    let mut b = transport(cfg());
    let ab = connect(&mut a, &b);
    let ba = connect(&mut b, &a);
    let hdr = [0xAAu8; 32];
    let data = [0x55u8; 48];
    let pkt = TxPkt {
        route: ab,
        hdr: &hdr,
        data: &data,
    };
    assert_eq!(a.tx_burst(&[pkt]).unwrap(), 1);
    assert_eq!(recv_at_least(&mut b, 1), 1);
    let p = b.rx_pkt(0).to_vec();
    assert_eq!(&p[..32], &hdr);
    assert_eq!(&p[32..], &data);
    b.rx_release(1);
    assert_eq!(b.rx_burst(), 0);
    let reply = TxPkt {
        route: ba,
        hdr: &p,
        data: &[],
    };
    b.tx_burst(&[reply]).unwrap();
    assert_eq!(drain(&mut a, 1), vec![p]);
    let s = a.stats();
    assert_eq!(
        (s.tx_pkts, s.rx_pkts, s.tx_dropped, s.rx_dropped),
        (1, 1, 0, 0)
    );
}

#[test]
fn batch_of_100_mixed_sizes() {
    for gso in [false, true] {
        let mut a = transport(UdpConfig { gso, ..cfg() });
        let mut b = transport(cfg());
        let r = connect(&mut a, &b);
        // Sizes repeat in runs so that the GSO planner groups some of them.
        let bodies: Vec<Vec<u8>> = (0..100)
            .map(|i| payload(i, [1, 100, 100, 100, 1400, 1440, 17][i % 7] + (i / 20) * 3))
            .collect();
        let pkts: Vec<TxPkt<'_>> = bodies
            .iter()
            .map(|b| {
                let (h, d) = b.split_at(b.len().min(16));
                TxPkt {
                    route: r,
                    hdr: h,
                    data: d,
                }
            })
            .collect();
        assert_eq!(a.tx_burst(&pkts).unwrap(), 100);
        assert_eq!(drain(&mut b, 100), bodies, "gso={gso}");
        assert_eq!(a.stats().tx_dropped, 0);
        assert!(a.stats().tx_batches <= 2, "{:?}", a.stats());
        if gso && a.gso_enabled() {
            assert!(a.udp_stats().gso_datagrams > 0, "{:?}", a.udp_stats());
        }
    }
}

/// Sessions own routes of their own; a burst that interleaves two routes to one peer still
/// goes out as GSO runs (and in order), while a route to another peer breaks the run.
#[test]
fn gso_coalesces_across_routes_to_one_peer() {
    let mut a = transport(cfg());
    let mut b = transport(cfg());
    let mut c = transport(cfg());
    let r1 = connect(&mut a, &b);
    let r2 = connect(&mut a, &b);
    let rc = connect(&mut a, &c);
    assert_ne!(r1, r2);
    let bodies: Vec<Vec<u8>> = (0..40).map(|i| payload(i, 64)).collect();
    // 0..20 alternate r1/r2 (to b), 20 goes to c, 21..40 alternate again.
    let route = |i: usize| {
        if i == 20 {
            rc
        } else if i.is_multiple_of(2) {
            r1
        } else {
            r2
        }
    };
    let pkts: Vec<TxPkt<'_>> = bodies
        .iter()
        .enumerate()
        .map(|(i, b)| TxPkt {
            route: route(i),
            hdr: &b[..32],
            data: &b[32..],
        })
        .collect();
    assert_eq!(a.tx_burst(&pkts).unwrap(), 40);
    let to_b: Vec<Vec<u8>> = bodies
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != 20)
        .map(|(_, b)| b.clone())
        .collect();
    assert_eq!(drain(&mut b, 39), to_b);
    assert_eq!(drain(&mut c, 1), vec![bodies[20].clone()]);
    if a.gso_enabled() {
        let u = a.udp_stats();
        // Two runs to b (20 + 19 packets) and a lone packet to c.
        assert_eq!((u.gso_datagrams, u.gso_segments), (2, 39), "{u:?}");
    }
}

/// 64 equal segments plus a shorter last one, to receivers with and without GRO.
#[test]
fn gso_super_datagram_arrives_as_separate_packets() {
    for gro in [false, true] {
        let mut a = transport(cfg());
        if !a.gso_enabled() {
            println!("skipping GSO test: this kernel does not support UDP_SEGMENT");
            return;
        }
        let mut b = transport(UdpConfig { gro, ..cfg() });
        let r = connect(&mut a, &b);
        let mut bodies: Vec<Vec<u8>> = (0..64).map(|i| payload(i, 1000)).collect();
        bodies.push(payload(99, 123));
        let hdrs: Vec<[u8; 8]> = (0..65u64).map(|i| i.to_le_bytes()).collect();
        let pkts: Vec<TxPkt<'_>> = bodies
            .iter()
            .zip(&hdrs)
            .map(|(b, h)| TxPkt {
                route: r,
                hdr: h,
                data: &b[8..],
            })
            .collect();
        let want: Vec<Vec<u8>> = bodies
            .iter()
            .zip(&hdrs)
            .map(|(b, h)| [&h[..], &b[8..]].concat())
            .collect();
        assert_eq!(a.tx_burst(&pkts).unwrap(), 65);
        if !a.gso_enabled() {
            println!("skipping GSO checks: the kernel rejected UDP_SEGMENT at send time");
            assert_eq!(drain(&mut b, 65), want);
            return;
        }
        // 64 segments of 1000 bytes in one datagram; the 123-byte one starts the next.
        let us = a.udp_stats();
        assert_eq!((us.gso_datagrams, us.gso_segments), (1, 64), "{us:?}");
        assert_eq!(a.stats().tx_batches, 1);
        assert_eq!(drain(&mut b, 65), want, "gro={gro}");
        let bs = b.udp_stats();
        println!("gro={gro} (enabled: {}): receiver {bs:?}", b.gro_enabled());
        if b.gro_enabled() {
            assert!(
                bs.gro_datagrams >= 1,
                "loopback keeps the GSO datagram whole"
            );
        } else {
            assert_eq!(bs.gro_datagrams, 0);
        }
        assert_eq!(b.stats().rx_pkts, 65);
    }
}

#[test]
fn max_size_packets() {
    for gro in [false, true] {
        let c = UdpConfig {
            max_pkt_size: MAX_UDP_PAYLOAD,
            rx_ring_size: 16,
            gro,
            ..cfg()
        };
        let mut a = transport(c.clone());
        let mut b = transport(c);
        let r = connect(&mut a, &b);
        let bodies: Vec<Vec<u8>> = (0..4).map(|i| payload(i, MAX_UDP_PAYLOAD)).collect();
        let pkts: Vec<TxPkt<'_>> = bodies
            .iter()
            .map(|b| TxPkt {
                route: r,
                hdr: &b[..40],
                data: &b[40..],
            })
            .collect();
        assert_eq!(a.tx_burst(&pkts).unwrap(), 4);
        assert_eq!(drain(&mut b, 4), bodies, "gro={gro}");
    }
}

#[test]
fn oversize_packets_are_rejected_and_counted() {
    for gro in [false, true] {
        let c = UdpConfig {
            max_pkt_size: 1000,
            gro,
            ..cfg()
        };
        let mut a = transport(c.clone());
        let mut b = transport(c);
        let r = connect(&mut a, &b);
        let big = vec![7u8; 1001];
        let ok = vec![8u8; 1000];
        let pkts = [
            TxPkt {
                route: r,
                hdr: &big[..1],
                data: &big[1..],
            },
            TxPkt {
                route: r,
                hdr: &ok,
                data: &[],
            },
        ];
        assert_eq!(a.tx_burst(&pkts).unwrap(), 1);
        assert_eq!(a.stats().tx_dropped, 1);
        assert_eq!(drain(&mut b, 1), vec![ok.clone()]);

        // A plain socket sends b a datagram larger than b accepts: dropped, counted.
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        plain.send_to(&[1u8; 5000], b.local_addr()).unwrap();
        plain.send_to(&ok, b.local_addr()).unwrap();
        assert_eq!(drain(&mut b, 1), vec![ok]);
        assert_eq!(b.stats().rx_dropped, 1, "gro={gro}");
    }
}

fn send_one(t: &mut UdpTransport, route: RouteId) -> usize {
    t.tx_burst(&[TxPkt {
        route,
        hdr: b"x",
        data: &[],
    }])
    .unwrap()
}

#[test]
fn routes_alloc_free_resolve_errors() {
    let mut a = transport(cfg());
    let b = transport(cfg());
    let (r0, _) = a.route_alloc().unwrap();
    let (r1, _) = a.route_alloc().unwrap();
    assert_ne!(r0, r1);
    for bad in [
        &[][..],
        &[4, 127, 0, 0, 1][..],
        &[4, 127, 0, 0, 1, 0, 0][..],
        &[4, 0, 0, 0, 0, 0x1f, 0x90][..],
        &[9, 127, 0, 0, 1, 0x1f, 0x90][..],
        &[6; 23][..],
        &[0xff; 64][..],
    ] {
        let info = RoutingInfo::new(bad).unwrap();
        assert!(
            matches!(a.resolve(r0, &info), Err(TransportError::Resolve(_))),
            "{bad:?}"
        );
    }
    // An IPv6 peer for an IPv4 socket.
    let v6 = UdpTransport::encode_routing_info("[::1]:4000".parse().unwrap());
    assert!(matches!(
        a.resolve(r0, &v6),
        Err(TransportError::Resolve(_))
    ));
    // Unknown route ids.
    assert!(matches!(
        a.resolve(999, &b.routing_info()),
        Err(TransportError::UnknownRoute(999))
    ));
    a.resolve(r0, &b.routing_info()).unwrap();
    assert_eq!(send_one(&mut a, r0), 1);
    // Sending on an allocated but unresolved route (or an unknown one) drops and counts.
    assert_eq!(send_one(&mut a, r1), 0);
    assert_eq!(send_one(&mut a, 777), 0);
    assert_eq!(a.stats().tx_dropped, 2);
    // Freed ids are recycled; a freed route can be neither resolved nor used.
    a.route_free(r0);
    a.route_free(r0);
    a.route_free(12345);
    assert!(matches!(
        a.resolve(r0, &b.routing_info()),
        Err(TransportError::UnknownRoute(_))
    ));
    assert_eq!(send_one(&mut a, r0), 0);
    let (r2, _) = a.route_alloc().unwrap();
    assert_eq!(r2, r0);
    let (r3, _) = a.route_alloc().unwrap();
    assert_eq!(r3, 2);
    assert_eq!(
        UdpTransport::decode_routing_info(&b.routing_info()).unwrap(),
        b.local_addr()
    );
}

#[test]
fn bad_configs_are_rejected() {
    for c in [
        UdpConfig {
            bind: "0.0.0.0:0".parse().unwrap(),
            ..cfg()
        },
        UdpConfig {
            max_pkt_size: 0,
            ..cfg()
        },
        UdpConfig {
            max_pkt_size: MAX_UDP_PAYLOAD + 1,
            ..cfg()
        },
        UdpConfig {
            rx_ring_size: 0,
            ..cfg()
        },
        UdpConfig {
            rx_batch: 0,
            ..cfg()
        },
    ] {
        assert!(matches!(
            UdpTransport::new(c),
            Err(TransportError::Config(_))
        ));
    }
    let t = transport(UdpConfig {
        sndbuf: Some(1 << 20),
        rcvbuf: Some(2 << 20),
        ..cfg()
    });
    let (snd, rcv) = t.socket_buffers();
    assert!(snd >= 1 << 20 && rcv >= 2 << 20, "granted {snd} / {rcv}");
}

#[test]
fn garbage_and_truncated_datagrams_do_not_panic() {
    for gro in [false, true] {
        let mut b = transport(UdpConfig {
            max_pkt_size: 256,
            gro,
            ..cfg()
        });
        let plain = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sizes = [0usize, 1, 2, 255, 256, 257, 3000, 0, 17];
        for (i, &n) in sizes.iter().enumerate() {
            plain.send_to(&payload(i, n), b.local_addr()).unwrap();
        }
        // Readable: 1, 2, 255, 256, 17 bytes; dropped: the two empty ones, 257 and 3000.
        let got = drain(&mut b, 5);
        let want: Vec<Vec<u8>> = [1usize, 2, 255, 256, 17]
            .iter()
            .map(|&n| {
                let i = sizes.iter().position(|&s| s == n).unwrap();
                payload(i, n)
            })
            .collect();
        assert_eq!(got, want, "gro={gro}");
        assert_eq!(b.stats().rx_dropped, 4, "gro={gro}");
        assert_eq!(b.rx_pkt(0), b"");
        assert_eq!(b.rx_pkt(usize::MAX), b"");
        b.rx_release(usize::MAX);
        assert_eq!(b.rx_burst(), 0);
    }
}

#[test]
fn ring_full_keeps_the_rest_in_the_socket() {
    for gro in [false, true] {
        let mut a = transport(cfg());
        let mut b = transport(UdpConfig {
            rx_ring_size: 8,
            rx_batch: 4,
            gro,
            ..cfg()
        });
        let r = connect(&mut a, &b);
        let bodies: Vec<Vec<u8>> = (0..20).map(|i| payload(i, 10 + i)).collect();
        for body in &bodies {
            let pkt = TxPkt {
                route: r,
                hdr: body,
                data: &[],
            };
            assert_eq!(a.tx_burst(&[pkt]).unwrap(), 1);
        }
        // Without GRO the ring fills up to rx_ring_size. With GRO each (uncoalesced) datagram
        // takes a 64 KiB chunk and this tiny ring has only max(rx_batch, 8 * 1472 / 64 KiB)
        // = 4 chunks: fewer are readable at once, the rest wait in the socket buffer.
        let cap = if b.gro_enabled() { 4 } else { 8 };
        assert_eq!(recv_at_least(&mut b, cap), cap);
        assert_eq!(b.rx_burst(), cap, "the ring holds at most rx_ring_size");
        assert_eq!(b.rx_pkt(cap), b"");
        assert_eq!(b.rx_pkt(cap - 1), &bodies[cap - 1][..]);
        b.rx_release(3);
        assert_eq!(b.rx_pkt(0), &bodies[3][..]);
        let mut got: Vec<Vec<u8>> = bodies[..3].to_vec();
        got.extend(drain(&mut b, 17));
        assert_eq!(got, bodies, "gro={gro}");
        assert_eq!(b.stats().rx_dropped, 0);
    }
}

/// Tiny socket buffers never make `tx_burst` block, and every packet is either sent or counted
/// as dropped. (On loopback a UDP send rarely sees `EAGAIN`: the receiver drops instead.)
#[test]
fn full_send_buffer_drops_without_blocking() {
    let mut a = transport(UdpConfig {
        sndbuf: Some(4096),
        gso: false,
        ..cfg()
    });
    let b = transport(UdpConfig {
        rcvbuf: Some(4096),
        ..cfg()
    });
    let r = connect(&mut a, &b);
    let body = vec![1u8; 1400];
    let pkts: Vec<TxPkt<'_>> = (0..64)
        .map(|_| TxPkt {
            route: r,
            hdr: &body,
            data: &[],
        })
        .collect();
    let t = Instant::now();
    let mut sent = 0;
    for _ in 0..200 {
        sent += a.tx_burst(&pkts).unwrap();
    }
    let s = a.stats();
    assert_eq!(s.tx_pkts as usize, sent);
    assert_eq!(s.tx_pkts + s.tx_dropped, 200 * 64);
    assert!(t.elapsed() < Duration::from_secs(5));
    println!("full-buffer test: {s:?}");
}

#[test]
fn wait_times_out_and_wakes() {
    let mut a = transport(cfg());
    let mut b = transport(cfg());
    let r = connect(&mut a, &b);
    let t = Instant::now();
    b.wait(Some(Duration::from_millis(20))).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(15));
    assert_eq!(send_one(&mut a, r), 1);
    let t = Instant::now();
    b.wait(Some(Duration::from_secs(5))).unwrap();
    assert!(t.elapsed() < Duration::from_secs(1));
    assert_eq!(b.rx_burst(), 1);
    // With packets already in the ring, wait returns at once.
    b.wait(None).unwrap();
}

#[test]
fn single_peer_connection_follows_the_routes() {
    let mut server = transport(cfg());
    let mut a = transport(cfg());
    let mut b = transport(cfg());
    let port = server.local_addr().port();
    let to_a = connect(&mut server, &a);
    assert_eq!(server.connected_peer(), Some(a.local_addr()));
    // While connected to `a`, the kernel drops datagrams from anyone else.
    let stranger = UdpSocket::bind("127.0.0.1:0").unwrap();
    stranger.send_to(b"noise", server.local_addr()).unwrap();
    let a_to_s = connect(&mut a, &server);
    a.tx_burst(&[TxPkt {
        route: a_to_s,
        hdr: b"from ",
        data: b"a",
    }])
    .unwrap();
    assert_eq!(drain(&mut server, 1), vec![b"from a".to_vec()]);

    // A second peer: the socket is disconnected, keeps its port, and hears both.
    let to_b = connect(&mut server, &b);
    assert_eq!(server.connected_peer(), None);
    assert_eq!(server.local_addr().port(), port);
    let b_to_s = connect(&mut b, &server);
    b.tx_burst(&[TxPkt {
        route: b_to_s,
        hdr: b"from ",
        data: b"b",
    }])
    .unwrap();
    a.tx_burst(&[TxPkt {
        route: a_to_s,
        hdr: b"from ",
        data: b"a",
    }])
    .unwrap();
    let mut got = drain(&mut server, 2);
    got.sort();
    assert_eq!(got, vec![b"from a".to_vec(), b"from b".to_vec()]);
    server
        .tx_burst(&[
            TxPkt {
                route: to_a,
                hdr: b"to ",
                data: b"a",
            },
            TxPkt {
                route: to_b,
                hdr: b"to ",
                data: b"b",
            },
        ])
        .unwrap();
    assert_eq!(drain(&mut a, 1), vec![b"to a".to_vec()]);
    assert_eq!(drain(&mut b, 1), vec![b"to b".to_vec()]);

    // Back to one peer: connected again, and sends still reach it.
    server.route_free(to_a);
    assert_eq!(server.connected_peer(), Some(b.local_addr()));
    server
        .tx_burst(&[TxPkt {
            route: to_b,
            hdr: b"again",
            data: b"",
        }])
        .unwrap();
    assert_eq!(drain(&mut b, 1), vec![b"again".to_vec()]);
    server.route_free(to_b);
    assert_eq!(server.connected_peer(), None);
    assert_eq!(server.local_addr().port(), port);

    // Turned off: never connected.
    let mut plain = transport(UdpConfig {
        connect_single_peer: false,
        ..cfg()
    });
    connect(&mut plain, &a);
    assert_eq!(plain.connected_peer(), None);
}
