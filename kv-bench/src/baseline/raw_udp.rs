//! Raw UDP ping-pong on loopback: the denominator of the RPC latency ratio.
//!
//! [`ping_pong`] is the best a plain socket does on this machine, like
//! `sockperf ping-pong --nonblocked`: two non-blocking sockets on 127.0.0.1, each `connect`ed to
//! the other (the kernel then skips the per-send route lookup), a server thread echoing every
//! datagram and the calling thread timing each round trip, both busy-polling. A short warm-up
//! is excluded. [`ping_pong_transport`] runs the same exchange through
//! [`transports::udp::UdpTransport`] (one packet per burst) to show what the transport adds.
#![allow(dead_code)]

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use transports::udp::{UdpConfig, UdpTransport};
use transports::{Transport, TxPkt};

/// How long a reply may take before the request counts as lost and is sent again.
pub(super) const LOSS_TIMEOUT: Duration = Duration::from_millis(200);
/// Round trips lost in a row before the run gives up.
const MAX_LOSSES: u32 = 20;

/// Warm-up excluded from the histogram: a tenth of the run, at most 200 ms.
pub(super) fn warmup(duration: Duration) -> Duration {
    (duration / 10).min(Duration::from_millis(200))
}

/// Records one round trip (`None`: lost) after the warm-up; fails after `MAX_LOSSES` losses in
/// a row.
pub(super) fn account(
    rtt: Option<Duration>,
    warm: bool,
    hist: &mut Histogram<u64>,
    losses: &mut u32,
    what: &str,
) -> Result<()> {
    match rtt {
        Some(rtt) => {
            *losses = 0;
            if warm {
                record(hist, rtt.as_nanos());
            }
        }
        None => {
            *losses += 1;
            if *losses >= MAX_LOSSES {
                bail!("{MAX_LOSSES} {what} round trips lost in a row");
            }
        }
    }
    Ok(())
}

pub(super) fn record(hist: &mut Histogram<u64>, ns: u128) {
    // Values above the histogram's 10 s range are clamped, not lost.
    hist.saturating_record(ns.min(u64::MAX as u128) as u64);
}

/// Stops and joins the echo thread when dropped (also on error paths).
pub(super) struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<Result<()>>>,
}

impl Server {
    pub(super) fn spawn(
        name: &str,
        f: impl FnOnce(Arc<AtomicBool>) -> Result<()> + Send + 'static,
    ) -> Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = thread::Builder::new()
            .name(name.into())
            .spawn(move || f(s))
            .context("spawning the echo thread")?;
        Ok(Self {
            stop,
            handle: Some(handle),
        })
    }

    pub(super) fn finish(mut self) -> Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        match self.handle.take().map(thread::JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("echo thread panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn nonblocking_pair(connected: bool) -> Result<(UdpSocket, UdpSocket)> {
    let a = UdpSocket::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let b = UdpSocket::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    if connected {
        a.connect(b.local_addr()?)?;
        b.connect(a.local_addr()?)?;
    }
    a.set_nonblocking(true)?;
    b.set_nonblocking(true)?;
    Ok((a, b))
}

/// A ping-pong message must fit one UDP datagram.
fn check_msg_size(msg_size: usize) -> Result<()> {
    if msg_size == 0 || msg_size > transports::udp::MAX_UDP_PAYLOAD {
        bail!("msg_size must be 1..=65507 bytes, got {msg_size}");
    }
    Ok(())
}

/// Busy-polled UDP ping-pong of `msg_size`-byte datagrams for `duration`; returns the round
/// trip times in nanoseconds (warm-up excluded).
pub fn ping_pong(duration: Duration, msg_size: usize) -> Result<Histogram<u64>> {
    raw_ping_pong(duration, msg_size, true)
}

/// [`ping_pong`] with `connect`ed sockets (`send`/`recv`) or unconnected ones
/// (`send_to`/`recv_from`, as an RPC server that talks to many peers must use).
pub fn raw_ping_pong(
    duration: Duration,
    msg_size: usize,
    connected: bool,
) -> Result<Histogram<u64>> {
    check_msg_size(msg_size)?;
    let (client, server_sock) = nonblocking_pair(connected)?;
    let server_addr = server_sock.local_addr()?;
    let server = Server::spawn("raw-udp-echo", move |stop| {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            let got = if connected {
                server_sock.recv(&mut buf).map(|n| (n, None))
            } else {
                server_sock.recv_from(&mut buf).map(|(n, a)| (n, Some(a)))
            };
            match got {
                // Loopback never fills the socket buffer in a ping-pong; a failed echo is seen
                // by the client as a loss.
                Ok((n, None)) => drop(server_sock.send(&buf[..n])),
                Ok((n, Some(peer))) => drop(server_sock.send_to(&buf[..n], peer)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e).context("echo server recv"),
            }
        }
        Ok(())
    })?;

    let mut hist = crate::report::new_histogram();
    let mut msg = vec![0u8; msg_size];
    let mut buf = vec![0u8; msg_size.max(64) + 64];
    let start = Instant::now();
    let (warm_end, end) = (start + warmup(duration), start + duration);
    let mut seq: u64 = 0;
    let mut losses = 0;
    loop {
        seq += 1;
        let tag = seq.to_le_bytes();
        let k = msg_size.min(8);
        msg[..k].copy_from_slice(&tag[..k]);
        let t0 = Instant::now();
        if connected {
            client.send(&msg).context("client send")?;
        } else {
            client.send_to(&msg, server_addr).context("client send")?;
        }
        let rtt = loop {
            let got = if connected {
                client.recv(&mut buf)
            } else {
                client.recv_from(&mut buf).map(|(n, _)| n)
            };
            match got {
                // Ignore a late echo of an earlier (timed-out) request.
                Ok(n) if n == msg_size && buf[..k] == tag[..k] => break Some(t0.elapsed()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if t0.elapsed() > LOSS_TIMEOUT {
                        break None;
                    }
                    std::hint::spin_loop();
                }
                Err(e) => return Err(e).context("client recv"),
            }
        };
        let now = Instant::now();
        account(rtt, now >= warm_end, &mut hist, &mut losses, "ping-pong")?;
        if now >= end {
            break;
        }
    }
    server.finish()?;
    Ok(hist)
}

/// The same ping-pong through two [`UdpTransport`]s (default configuration: GSO on, GRO off; one
/// packet per `tx_burst`; each packet is a 32-byte header plus the rest as payload), busy-polling
/// `rx_burst`.
pub fn ping_pong_transport(duration: Duration, msg_size: usize) -> Result<Histogram<u64>> {
    let cfg = UdpConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        max_pkt_size: msg_size.max(1472),
        ..UdpConfig::default()
    };
    transport_ping_pong(duration, msg_size, cfg)
}

/// [`ping_pong_transport`] with a given transport configuration (both ends).
pub fn transport_ping_pong(
    duration: Duration,
    msg_size: usize,
    cfg: UdpConfig,
) -> Result<Histogram<u64>> {
    check_msg_size(msg_size)?;
    let client = UdpTransport::new(cfg.clone())?;
    let server = UdpTransport::new(cfg)?;
    ping_pong_over(client, server, duration, msg_size)
}

/// Ping-pong of `msg_size`-byte packets (a 32-byte header plus the rest as payload, one per
/// `tx_burst`) between two transports for `duration`, both busy-polling `rx_burst`, the
/// server end echoing from a thread of its own; a reply that takes longer than 200 ms counts
/// as lost and the request is sent again. Routes are set up as an rpc connect does.
pub(crate) fn ping_pong_over<T: Transport + Send + 'static>(
    mut client: T,
    mut server_t: T,
    duration: Duration,
    msg_size: usize,
) -> Result<Histogram<u64>> {
    let (to_server, client_info) = client.route_alloc()?;
    let (to_client, server_info) = server_t.route_alloc()?;
    server_t.resolve(to_client, &client_info)?;
    client.resolve(to_server, &server_info)?;
    let name = format!("{}-transport-echo", client.kind());
    let server = Server::spawn(&name, move |stop| {
        let mut t = server_t;
        let mut echo = vec![0u8; msg_size];
        while !stop.load(Ordering::Relaxed) {
            let n = t.rx_burst();
            if n == 0 {
                std::hint::spin_loop();
                continue;
            }
            for i in 0..n {
                let p = t.rx_pkt(i);
                let len = p.len().min(echo.len());
                echo[..len].copy_from_slice(&p[..len]);
                let (hdr, data) = echo[..len].split_at(len.min(32));
                t.tx_burst(&[TxPkt {
                    route: to_client,
                    hdr,
                    data,
                }])?;
            }
            t.rx_release(n);
        }
        Ok(())
    })?;

    let mut hist = crate::report::new_histogram();
    let mut msg = vec![0u8; msg_size];
    let start = Instant::now();
    let (warm_end, end) = (start + warmup(duration), start + duration);
    let mut seq: u64 = 0;
    let mut losses = 0;
    loop {
        seq += 1;
        let tag = seq.to_le_bytes();
        let k = msg_size.min(8);
        msg[..k].copy_from_slice(&tag[..k]);
        let (hdr, data) = msg.split_at(msg_size.min(32));
        let t0 = Instant::now();
        client.tx_burst(&[TxPkt {
            route: to_server,
            hdr,
            data,
        }])?;
        let rtt = 'wait: loop {
            let n = client.rx_burst();
            for i in 0..n {
                let p = client.rx_pkt(i);
                if p.len() == msg_size && p[..k] == tag[..k] {
                    let rtt = t0.elapsed();
                    client.rx_release(n);
                    break 'wait Some(rtt);
                }
            }
            client.rx_release(n);
            if client.poll_route_failure().is_some() {
                bail!("the connection to the echo server failed");
            }
            if n == 0 {
                if t0.elapsed() > LOSS_TIMEOUT {
                    break None;
                }
                std::hint::spin_loop();
            }
        };
        let now = Instant::now();
        account(
            rtt,
            now >= warm_end,
            &mut hist,
            &mut losses,
            "transport ping-pong",
        )?;
        if now >= end {
            break;
        }
    }
    server.finish()?;
    Ok(hist)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn show(name: &str, h: &Histogram<u64>) {
        println!(
            "{name}: n={} p50={:.2}us p99={:.2}us p99.9={:.2}us mean={:.2}us",
            h.len(),
            h.value_at_quantile(0.5) as f64 / 1e3,
            h.value_at_quantile(0.99) as f64 / 1e3,
            h.value_at_quantile(0.999) as f64 / 1e3,
            h.mean() / 1e3
        );
    }

    #[test]
    fn short_runs_work() {
        let h = super::super::until_samples(|d| raw_ping_pong(d, 32, false));
        assert!(!h.is_empty());
        let h = super::super::until_samples(|d| ping_pong(d, 32));
        assert!(!h.is_empty());
        let h = super::super::until_samples(|d| ping_pong_transport(d, 1000));
        assert!(!h.is_empty());
        assert!(ping_pong(Duration::from_millis(10), 0).is_err());
    }

    /// `cargo test --release -p kv-bench raw_udp -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement; run in release"]
    fn measure() {
        let d = Duration::from_secs(2);
        let gro = UdpConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            gro: true,
            ..UdpConfig::default()
        };
        for _ in 0..3 {
            show("raw connected 32B", &ping_pong(d, 32).unwrap());
            show("raw unconnected 32B", &raw_ping_pong(d, 32, false).unwrap());
            show("transport 32B", &ping_pong_transport(d, 32).unwrap());
            let h = transport_ping_pong(d, 32, gro.clone()).unwrap();
            show("transport GRO 32B", &h);
        }
    }
}
