//! A deterministic workload for instruction counting (`valgrind --tool=callgrind`): a client
//! and a server Rpc over UDP on loopback, driven alternately from one thread, complete a
//! fixed number of 32-byte requests. Unlike `kv-bench rpc tput` (two busy-polling threads,
//! which valgrind serialises, so the count depends on scheduling and retransmissions), every
//! run does the same work, so the instructions per request of two builds can be compared.
//!
//! ```text
//! cargo build --release -p rpc --example cg_loop
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect='cg_loop::measure' \
//!     target/release/examples/cg_loop SESSIONS WINDOW REQUESTS
//! ```
//!
//! Instructions per request = the `Collected` total / REQUESTS (client and server together,
//! user space only; the program prints its own request count and loop iterations).

use std::time::{Duration, Instant};

use rpc::{MsgBuf, Nexus, Rpc, RpcConfig, SessionId, SessionState};
use transports::tcp::{TcpConfig, TcpTransport};
use transports::udp::{UdpConfig, UdpTransport};
use transports::Transport;

const BENCH_REQ: u8 = 1;
const SIZE: usize = 32;

fn config() -> RpcConfig {
    RpcConfig {
        busy_poll: true,
        ..RpcConfig::default()
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<u64>());
    let sessions = args.next().unwrap_or(Ok(4))? as usize;
    let window = args.next().unwrap_or(Ok(8))? as usize;
    let requests = args.next().unwrap_or(Ok(100_000))?;
    // Receive without UDP GRO (a plain `recvfrom` per datagram instead of `recvmsg` with a
    // control message), to see what GRO costs per receive.
    let gro = std::env::var_os("CG_NO_GRO").is_none();
    if std::env::var_os("CG_TCP").is_some() {
        run(
            || TcpTransport::new(TcpConfig::default()),
            sessions,
            window,
            requests,
        )
    } else {
        let udp = UdpConfig {
            gro,
            ..UdpConfig::default()
        };
        run(
            || UdpTransport::new(udp.clone()),
            sessions,
            window,
            requests,
        )
    }
}

fn run<T: Transport, E: std::error::Error + 'static>(
    make: impl Fn() -> Result<T, E>,
    sessions: usize,
    window: usize,
    requests: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let server_nexus: Nexus = Nexus::new("127.0.0.1:0", 0)?;
    server_nexus.register(BENCH_REQ, |_, ctx, req| {
        let resp = ctx.alloc_msg(req.data.len());
        let _ = ctx.respond(req.handle, resp);
    })?;
    let mut server = Rpc::new(&server_nexus, 0, make()?, (), config())?;
    let client_nexus: Nexus = Nexus::new("127.0.0.1:0", 0)?;
    let mut client = Rpc::new(&client_nexus, 0, make()?, (), config())?;
    let mut ids = Vec::new();
    for _ in 0..sessions {
        ids.push(client.create_session(server_nexus.uri(), 0)?);
    }
    let t = Instant::now();
    while !ids
        .iter()
        .all(|&s| client.session_state(s) == Some(SessionState::Connected))
    {
        client.run_once();
        server.run_once();
        if t.elapsed() > Duration::from_secs(10) {
            return Err("sessions did not connect".into());
        }
    }
    // Warm the buffer pools and the branch history, then measure.
    closed_loop(&mut client, &mut server, &ids, window, requests / 10 + 1)?;
    let t = Instant::now();
    let loops = measure(&mut client, &mut server, &ids, window, requests)?;
    let el = t.elapsed();
    println!(
        "{requests} requests, {sessions} sessions x {window}: {loops} loop iterations, {:.3} s",
        el.as_secs_f64()
    );
    Ok(())
}

/// The measured part (callgrind toggles collection on this function).
#[inline(never)]
fn measure<T: Transport>(
    client: &mut Rpc<T>,
    server: &mut Rpc<T>,
    ids: &[SessionId],
    window: usize,
    n: u64,
) -> Result<u64, rpc::RpcError> {
    closed_loop(client, server, ids, window, n)
}

/// Keeps `window` requests in flight on every session until `n` completed; returns the loop
/// iterations. Every request completes before this returns.
#[inline(always)]
fn closed_loop<T: Transport>(
    client: &mut Rpc<T>,
    server: &mut Rpc<T>,
    ids: &[SessionId],
    window: usize,
    n: u64,
) -> Result<u64, rpc::RpcError> {
    let mut issued = 0u64;
    let mut done = 0u64;
    for (si, &s) in ids.iter().enumerate() {
        for w in 0..window {
            if issued < n {
                client.enqueue_request(
                    s,
                    BENCH_REQ,
                    MsgBuf::new(SIZE),
                    (si * window + w) as u64,
                )?;
                issued += 1;
            }
        }
    }
    let mut loops = 0u64;
    while done < n {
        loops += 1;
        client.run_once();
        server.run_once();
        while let Some(c) = client.poll_completion() {
            let resp = c.result?;
            client.ctx().free_msg(resp);
            done += 1;
            if issued < n {
                let s = ids[c.tag as usize / window];
                client.enqueue_request(s, BENCH_REQ, c.req, c.tag)?;
                issued += 1;
            } else {
                client.ctx().free_msg(c.req);
            }
        }
    }
    Ok(loops)
}
