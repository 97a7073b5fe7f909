//! Transport micro-benchmarks on loopback, both endpoints driven by one thread (so the figures
//! are the transports' and the kernel's costs, without thread wake-ups): a 32-byte ping-pong
//! and a one-way burst of 32 packets of 64 bytes, over TCP and UDP.
//!
//! `cargo bench -p transports` (numbers drift with machine load: compare runs made together).
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use transports::tcp::{TcpConfig, TcpTransport};
use transports::udp::{UdpConfig, UdpTransport};
use transports::{RouteId, Transport, TxPkt};

/// Two endpoints with routes to each other, the connection (if any) set up.
fn pair<T: Transport>(mut a: T, mut b: T) -> (T, T, RouteId, RouteId) {
    let (ab, info_a) = a.route_alloc().unwrap();
    let (ba, info_b) = b.route_alloc().unwrap();
    b.resolve(ba, &info_a).unwrap();
    a.resolve(ab, &info_b).unwrap();
    let mut t = (a, b, ab, ba);
    ping(&mut t, &[0; 32]);
    t
}

/// Receives exactly `n` packets at `to`, driving `from` too.
fn recv<T: Transport>(to: &mut T, from: &mut T, n: usize) {
    let mut got = 0;
    let mut spins = 0u64;
    while got < n {
        let k = to.rx_burst();
        got += k;
        to.rx_release(k);
        if k == 0 {
            from.rx_burst();
            spins += 1;
            if spins.is_multiple_of(1024) {
                to.wait(Some(Duration::from_micros(100))).unwrap();
            }
        }
    }
}

fn ping<T: Transport>((a, b, ab, ba): &mut (T, T, RouteId, RouteId), msg: &[u8]) {
    let (hdr, data) = msg.split_at(msg.len().min(32));
    assert_eq!(
        a.tx_burst(&[TxPkt {
            route: *ab,
            hdr,
            data
        }])
        .unwrap(),
        1
    );
    recv(b, a, 1);
    assert_eq!(
        b.tx_burst(&[TxPkt {
            route: *ba,
            hdr,
            data
        }])
        .unwrap(),
        1
    );
    recv(a, b, 1);
}

fn burst<T: Transport>((a, b, ab, _): &mut (T, T, RouteId, RouteId), body: &[u8]) {
    let pkts: Vec<TxPkt<'_>> = (0..32)
        .map(|_| TxPkt {
            route: *ab,
            hdr: &body[..16],
            data: &body[16..],
        })
        .collect();
    assert_eq!(a.tx_burst(&pkts).unwrap(), 32);
    recv(b, a, 32);
}

fn benches(c: &mut Criterion) {
    let mut tcp = pair(
        TcpTransport::new(TcpConfig::default()).unwrap(),
        TcpTransport::new(TcpConfig::default()).unwrap(),
    );
    let mut udp = pair(
        UdpTransport::new(UdpConfig::default()).unwrap(),
        UdpTransport::new(UdpConfig::default()).unwrap(),
    );
    let msg = [7u8; 32];
    let mut g = c.benchmark_group("ping-pong 32 B");
    g.bench_function("tcp", |b| b.iter(|| ping(&mut tcp, &msg)));
    g.bench_function("udp", |b| b.iter(|| ping(&mut udp, &msg)));
    g.finish();
    let body = [9u8; 64];
    let mut g = c.benchmark_group("burst 32 x 64 B");
    g.throughput(Throughput::Elements(32));
    g.bench_function("tcp", |b| b.iter(|| burst(&mut tcp, &body)));
    g.bench_function("udp", |b| b.iter(|| burst(&mut udp, &body)));
    g.finish();
}

criterion_group!(benches_group, benches);
criterion_main!(benches_group);
