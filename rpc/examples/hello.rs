//! A complete rpc server and client over UDP on loopback.
//!
//! Run it with `cargo run --example hello -p rpc`.
//!
//! The server registers one handler (request type 1) that greets whoever calls it, runs one Rpc
//! on its own thread, and the client connects a session, makes a blocking call, then pipelines
//! a batch of requests and collects their completions.

use std::time::Duration;

use rpc::{MsgBuf, Nexus, Rpc, RpcConfig};
use transports::udp::{UdpConfig, UdpTransport};

const HELLO: u8 = 1;

/// Per-thread state of the server: how many greetings it gave.
#[derive(Default)]
struct Greeter {
    greeted: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // --- server -------------------------------------------------------------------------
    // One Nexus per process: it owns the handler table and the session-management socket.
    let server_nexus: Nexus<Greeter> = Nexus::new("127.0.0.1:0", 0)?;
    server_nexus.register(HELLO, |state: &mut Greeter, ctx, req| {
        state.greeted += 1;
        let name = String::from_utf8_lossy(req.data);
        let reply = format!("hello, {name}! (greeting #{})", state.greeted);
        // Respond right away; a handler may also keep `req.handle` and respond later.
        if let Err(e) = ctx.respond_with(req.handle, reply.as_bytes()) {
            eprintln!("respond failed: {e}");
        }
    })?;
    let server_uri = server_nexus.uri().to_string();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = std::thread::spawn(move || -> Result<u64, rpc::RpcError> {
        // One Rpc per thread, with its own transport (a UDP socket on an ephemeral port).
        let udp = UdpTransport::new(UdpConfig::default())?;
        let mut rpc = Rpc::new(
            &server_nexus,
            0,
            udp,
            Greeter::default(),
            RpcConfig::default(),
        )?;
        let _ = ready_tx.send(());
        rpc.run_for(Duration::from_millis(500));
        Ok(rpc.state().greeted)
    });
    ready_rx.recv()?;

    // --- client -------------------------------------------------------------------------
    let client_nexus: Nexus = Nexus::new("127.0.0.1:0", 0)?;
    let udp = UdpTransport::new(UdpConfig::default())?;
    let mut rpc = Rpc::new(&client_nexus, 0, udp, (), RpcConfig::default())?;
    let session = rpc.connect(&server_uri, 0)?;

    // A blocking call.
    let resp = rpc.call(session, HELLO, b"world", Duration::from_secs(1))?;
    println!("{}", String::from_utf8_lossy(resp.as_slice()));

    // Many requests in flight: enqueue them all, then run the event loop and collect
    // completions (beyond the window of 8, requests wait in the session's backlog).
    for i in 0..20u64 {
        let req = MsgBuf::from_slice(format!("caller {i}").as_bytes());
        rpc.enqueue_request(session, HELLO, req, i)?;
    }
    let mut done = 0;
    rpc.run_until(
        |rpc| {
            while let Some(c) = rpc.poll_completion() {
                match c.result {
                    Ok(resp) => println!(
                        "#{:>2}: {}",
                        c.tag,
                        String::from_utf8_lossy(resp.as_slice())
                    ),
                    Err(e) => println!("#{:>2} failed: {e}", c.tag),
                }
                done += 1;
            }
            done == 20
        },
        Duration::from_secs(2),
    );
    rpc.disconnect(session)?;
    let greeted = server.join().map_err(|_| "server thread panicked")??;
    println!("the server greeted {greeted} callers");
    Ok(())
}
