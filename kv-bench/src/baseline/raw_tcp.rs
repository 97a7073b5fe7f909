//! Raw TCP ping-pong on loopback: the denominator of the rpc-over-TCP latency ratio.
//!
//! [`ping_pong`] is what plain sockets do on this machine, like
//! `sockperf ping-pong --tcp --nonblocked`: one connection on 127.0.0.1 with `TCP_NODELAY` on
//! both ends, non-blocking, a server thread echoing every byte it reads and the calling thread
//! timing each round trip of one `msg_size`-byte message, both busy-polling. A short warm-up is
//! excluded. [`ping_pong_transport`] runs the same exchange through
//! [`transports::tcp::TcpTransport`] (one packet per burst) to show what the transport adds.
#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use transports::tcp::{TcpConfig, TcpTransport};

use super::raw_udp::{ping_pong_over, record, warmup, Server};

/// A round trip this slow means the peer is stuck: the run fails instead of hanging.
const STALL: Duration = Duration::from_secs(5);
/// Largest message (one write, one packet of the transport).
pub const MAX_MSG: usize = 1 << 20;

fn check_msg_size(msg_size: usize) -> Result<()> {
    if msg_size == 0 || msg_size > MAX_MSG {
        bail!("msg_size must be 1..={MAX_MSG} bytes, got {msg_size}");
    }
    Ok(())
}

/// Writes all of `buf` to a non-blocking socket, spinning while it would block.
fn write_all(s: &mut TcpStream, buf: &[u8], stop: &AtomicBool) -> Result<()> {
    let mut at = 0;
    while at < buf.len() {
        match s.write(&buf[at..]) {
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                std::hint::spin_loop();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("write"),
        }
    }
    Ok(())
}

/// A connected pair of non-blocking `TCP_NODELAY` sockets on 127.0.0.1.
fn pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    let client = TcpStream::connect(listener.local_addr()?).context("connecting")?;
    let (server, _) = listener.accept().context("accepting")?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
    }
    Ok((client, server))
}

/// Busy-polled TCP ping-pong of `msg_size`-byte messages for `duration`; returns the round
/// trip times in nanoseconds (warm-up excluded).
pub fn ping_pong(duration: Duration, msg_size: usize) -> Result<Histogram<u64>> {
    check_msg_size(msg_size)?;
    let (mut client, mut server_sock) = pair()?;
    let server = Server::spawn("raw-tcp-echo", move |stop| {
        let mut buf = vec![0u8; 65_536];
        while !stop.load(Ordering::Relaxed) {
            match server_sock.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => write_all(&mut server_sock, &buf[..n], &stop)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("echo server read"),
            }
        }
        Ok(())
    })?;

    let never = AtomicBool::new(false);
    let mut hist = crate::report::new_histogram();
    let mut msg = vec![0u8; msg_size];
    let mut buf = vec![0u8; msg_size];
    let start = Instant::now();
    let (warm_end, end) = (start + warmup(duration), start + duration);
    let mut seq: u64 = 0;
    loop {
        seq += 1;
        let tag = seq.to_le_bytes();
        let k = msg_size.min(8);
        msg[..k].copy_from_slice(&tag[..k]);
        let t0 = Instant::now();
        write_all(&mut client, &msg, &never)?;
        let mut got = 0;
        while got < msg_size {
            match client.read(&mut buf[got..]) {
                Ok(0) => bail!("the echo server closed the connection"),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if t0.elapsed() > STALL {
                        bail!("no echo within {STALL:?}");
                    }
                    std::hint::spin_loop();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("client read"),
            }
        }
        let rtt = t0.elapsed();
        if buf[..k] != tag[..k] {
            bail!("the echo does not match the message (a stream never reorders)");
        }
        let now = Instant::now();
        if now >= warm_end {
            record(&mut hist, rtt.as_nanos());
        }
        if now >= end {
            break;
        }
    }
    drop(client);
    server.finish()?;
    Ok(hist)
}

/// The same ping-pong through two [`TcpTransport`]s (default configuration, packets of up to
/// `msg_size.max(8192)` bytes; one packet per `tx_burst`, a 32-byte header plus the rest as
/// payload), busy-polling `rx_burst` (the exchange of [`super::raw_udp::ping_pong_transport`]).
pub fn ping_pong_transport(duration: Duration, msg_size: usize) -> Result<Histogram<u64>> {
    check_msg_size(msg_size)?;
    let cfg = TcpConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        max_pkt_size: msg_size.max(8192),
        ..TcpConfig::default()
    };
    let client = TcpTransport::new(cfg.clone())?;
    let server = TcpTransport::new(cfg)?;
    ping_pong_over(client, server, duration, msg_size)
}

#[cfg(test)]
mod tests {
    use super::super::raw_udp::tests::show;
    use super::*;

    #[test]
    fn short_runs_work() {
        use super::super::until_samples;
        assert!(!until_samples(|d| ping_pong(d, 32)).is_empty());
        assert!(!until_samples(|d| ping_pong(d, 100_000)).is_empty());
        assert!(!until_samples(|d| ping_pong_transport(d, 32)).is_empty());
        assert!(!until_samples(|d| ping_pong_transport(d, 100_000)).is_empty());
        assert!(ping_pong(Duration::from_millis(10), 0).is_err());
        assert!(ping_pong_transport(Duration::from_millis(10), MAX_MSG + 1).is_err());
    }

    /// `cargo test --release -p kv-bench raw_tcp -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement; run in release"]
    fn measure() {
        let d = Duration::from_secs(2);
        for _ in 0..3 {
            show("raw TCP 32B", &ping_pong(d, 32).unwrap());
            show("TCP transport 32B", &ping_pong_transport(d, 32).unwrap());
        }
    }
}
