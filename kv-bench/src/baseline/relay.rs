//! The floor of a replicated write with sleeping servers: the same message pattern over plain
//! UDP sockets with no RPC, Raft or engine in the way.
//!
//! `kv-bench cluster` runs its servers with `--spin-ms 0`, so every packet on a request's
//! path wakes a sleeping thread. A single-node GET wakes one thread; a replicated write wakes
//! the leader, both followers (it sends to both; either answer is the quorum) and the leader
//! again. [`sleeping_floor`] times both patterns with threads that sleep in a blocking
//! `recv_from` between packets:
//!
//! - **echo**: the client sends a request to one server thread, which answers it;
//! - **relay**: the client sends a request to a "leader" thread, which sends it on to two
//!   "follower" threads and answers the client on the first follower answer (the second one
//!   is read and dropped when it comes).
//!
//! The ratio relay / echo is what this machine's scheduler alone makes of a replicated write
//! against a single-node read, whatever the software: the floor of the issue's "replicated
//! PUT p50 / single-node GET p50" ratio. The client spins or sleeps as the latency client of
//! the run does.
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use hdrhistogram::Histogram;

use super::raw_udp::{account, Server, LOSS_TIMEOUT};

/// Request and answer sizes: about a 100-byte PUT with its headers, and an empty answer.
const REQUEST: usize = 150;
const ANSWER: usize = 40;
/// A server thread wakes this often to see whether it should stop.
const STOP_POLL: Duration = Duration::from_millis(20);

/// Round trips of the two patterns, in nanoseconds.
pub struct Floor {
    /// One sleeping server thread answering.
    pub echo: Histogram<u64>,
    /// A sleeping leader thread answering after the first of two sleeping followers.
    pub relay: Histogram<u64>,
}

fn blocking_socket() -> Result<UdpSocket> {
    let s = UdpSocket::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    s.set_read_timeout(Some(STOP_POLL))?;
    Ok(s)
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn seq_of(b: &[u8]) -> u64 {
    b.get(..8)
        .and_then(|s| s.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// A server thread on a blocking socket: `on` runs for every datagram received (sender,
/// bytes) until the thread is told to stop.
fn serve(
    name: &str,
    mut on: impl FnMut(&UdpSocket, SocketAddr, &[u8]) + Send + 'static,
) -> Result<(Server, SocketAddr)> {
    let sock = blocking_socket()?;
    let addr = sock.local_addr()?;
    let what = format!("{name} recv");
    let server = Server::spawn(name, move |stop| {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            match sock.recv_from(&mut buf) {
                Ok((n, peer)) => on(&sock, peer, &buf[..n]),
                Err(e) if timed_out(&e) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
                Err(e) => return Err(e).context(what),
            }
        }
        Ok(())
    })?;
    Ok((server, addr))
}

/// A thread answering every datagram with `ANSWER` bytes starting with its first 8 bytes.
fn echo_server(name: &str) -> Result<(Server, SocketAddr)> {
    let mut answer = [0u8; ANSWER];
    serve(name, move |sock, peer, got| {
        let k = got.len().min(8);
        answer[..k].copy_from_slice(&got[..k]);
        // A failed answer is a loss the client sees.
        drop(sock.send_to(&answer, peer));
    })
}

/// The leader thread: a datagram from a follower is an answer (the first for the current
/// sequence number is passed to the client); anything else is a client request, sent on to
/// both followers.
fn leader(followers: [SocketAddr; 2]) -> Result<(Server, SocketAddr)> {
    let mut answer = [0u8; ANSWER];
    // The client waiting and the sequence number it waits for.
    let mut waiting: Option<(SocketAddr, u64)> = None;
    serve("relay-leader", move |sock, peer, got| {
        if !followers.contains(&peer) {
            waiting = Some((peer, seq_of(got)));
            for f in followers {
                drop(sock.send_to(got, f));
            }
        } else if let Some((client, want)) = waiting {
            if seq_of(got) == want {
                answer[..8].copy_from_slice(&want.to_le_bytes());
                drop(sock.send_to(&answer, client));
                waiting = None;
            }
        }
    })
}

/// `requests` timed round trips (after `warmup` untimed ones) to `to`, one in flight; the
/// client spins on a non-blocking socket or sleeps in a blocking one.
fn client(to: SocketAddr, requests: usize, warmup: usize, spin: bool) -> Result<Histogram<u64>> {
    let sock = UdpSocket::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    if spin {
        sock.set_nonblocking(true)?;
    } else {
        sock.set_read_timeout(Some(LOSS_TIMEOUT))?;
    }
    let mut hist = crate::report::new_histogram();
    let mut msg = [0u8; REQUEST];
    let mut buf = [0u8; 2048];
    let mut losses = 0;
    let mut seq = 0u64;
    let mut done = 0;
    while done < warmup + requests {
        seq += 1;
        msg[..8].copy_from_slice(&seq.to_le_bytes());
        let t0 = Instant::now();
        sock.send_to(&msg, to).context("client send")?;
        let answered = loop {
            match sock.recv_from(&mut buf) {
                Ok((n, _)) if seq_of(&buf[..n]) == seq => break true,
                Ok(_) => {}
                Err(e) if timed_out(&e) => {
                    if t0.elapsed() > LOSS_TIMEOUT {
                        break false;
                    }
                    if spin {
                        std::hint::spin_loop();
                    }
                }
                Err(e) => return Err(e).context("client recv"),
            }
        };
        let rtt = answered.then(|| t0.elapsed());
        account(rtt, done >= warmup, &mut hist, &mut losses, "floor")?;
        done += usize::from(answered);
    }
    Ok(hist)
}

/// Times `requests` echo and then `requests` relay round trips (see the module docs).
pub fn sleeping_floor(requests: usize, warmup: usize, client_spins: bool) -> Result<Floor> {
    let (echo_srv, echo_addr) = echo_server("floor-echo")?;
    let echo = client(echo_addr, requests, warmup, client_spins)?;
    echo_srv.finish()?;
    let (f1, a1) = echo_server("relay-follower")?;
    let (f2, a2) = echo_server("relay-follower")?;
    let (l, la) = leader([a1, a2])?;
    let relay = client(la, requests, warmup, client_spins)?;
    l.finish()?;
    f1.finish()?;
    f2.finish()?;
    Ok(Floor { echo, relay })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_round_trip_of_both_patterns_is_recorded() {
        for spin in [false, true] {
            let f = sleeping_floor(200, 20, spin).unwrap();
            assert_eq!(f.echo.len(), 200, "spin {spin}");
            assert_eq!(f.relay.len(), 200, "spin {spin}");
            assert!(f.echo.min() > 0 && f.relay.min() > 0, "spin {spin}");
        }
    }
}
