//! An eRPC-style, low-latency RPC framework.
//!
//! * A [`Nexus`] (one per process) holds the request-handler table — one handler per
//!   one-byte request type — and the session-management endpoint.
//! * An [`Rpc`] (one per thread) owns a [`transports::Transport`], its sessions and buffers,
//!   and runs the event loop: [`Rpc::run_once`], [`Rpc::run_for`], [`Rpc::run_until`].
//! * A client opens a session to a remote Rpc ([`Rpc::connect`]) and issues requests with
//!   [`Rpc::enqueue_request`]; each request gets a [`Completion`] with its response or error,
//!   delivered to the Rpc's continuation or through [`Rpc::poll_completion`].
//! * Handlers are closures. A foreground handler runs in the event loop and gets the Rpc's
//!   per-thread state `S`, the [`Ctx`] and the [`Request`]; it responds at once or keeps the
//!   [`ReqHandle`] and responds later from the same thread. Background handlers run on the
//!   Nexus's worker threads.
//!
//! The protocol follows eRPC: per-session windows of request slots with a backlog, client-held
//! credits with explicit credit returns and requests-for-response for multi-packet messages,
//! receive-ring admission, go-back-N retransmission, and at-most-once execution (the server
//! keeps each slot's last response). The wire format is in `docs/PROTOCOL.md`.
//!
//! # Layout
//!
//! * [`proto`] — the protocol core, [`proto::Endpoint`]: a state machine with no I/O and no
//!   clock. Packets, SM messages and time go in (`handle_*`), the application's commands go in
//!   (`connect`, `enqueue_request`, `respond`, ...), and what to do comes out (`poll_*`:
//!   events, packets, SM messages, the next timeout). Tests drive two endpoints against each
//!   other directly, in virtual time.
//! * the runtime — [`Nexus`], the [`Rpc`] event loop (the core's driver: transport, SM
//!   socket, handlers, background threads, clock) and [`Ctx`], the handle handlers use.
//! * the wire formats, [`pkthdr`] and [`sm`]; [`MsgBuf`] and its pool; configuration,
//!   counters and errors.
//!
//! # Example: a UDP echo server and client
//!
//! ```
//! use std::time::Duration;
//! use rpc::{Nexus, Rpc, RpcConfig};
//! use transports::udp::{UdpConfig, UdpTransport};
//!
//! const ECHO: u8 = 1;
//! let server_nexus: Nexus = Nexus::new("127.0.0.1:0", 0).unwrap();
//! server_nexus
//!     .register(ECHO, |_state, ctx, req| {
//!         ctx.respond_with(req.handle, req.data).unwrap();
//!     })
//!     .unwrap();
//! let uri = server_nexus.uri().to_string();
//! let (ready_tx, ready_rx) = std::sync::mpsc::channel();
//! let server = std::thread::spawn(move || {
//!     let udp = UdpTransport::new(UdpConfig::default()).unwrap();
//!     let mut rpc = Rpc::new(&server_nexus, 0, udp, (), RpcConfig::default()).unwrap();
//!     ready_tx.send(()).unwrap(); // the Rpc exists: sessions to it can be opened
//!     rpc.run_for(Duration::from_millis(500));
//! });
//! ready_rx.recv().unwrap();
//!
//! let client_nexus: Nexus = Nexus::new("127.0.0.1:0", 0).unwrap();
//! let udp = UdpTransport::new(UdpConfig::default()).unwrap();
//! let mut rpc = Rpc::new(&client_nexus, 0, udp, (), RpcConfig::default()).unwrap();
//! let session = rpc.connect(&uri, 0).unwrap();
//! let resp = rpc.call(session, ECHO, b"hello", Duration::from_secs(1)).unwrap();
//! assert_eq!(resp.as_slice(), b"hello");
//! server.join().unwrap();
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod config;
mod error;
mod msgbuf;
pub mod pkthdr;
pub mod proto;
mod runtime;
pub mod sm;
mod stats;

pub use config::RpcConfig;
pub use error::RpcError;
pub use msgbuf::{BufPool, MsgBuf};
pub use proto::{Completion, ConnectFailure, ReqHandle, SessionId, SessionState};
pub use runtime::{
    BgHandler, Continuation, Ctx, FgHandler, Handler, LocalHub, Nexus, Request, Rpc, VirtualClock,
};
pub use stats::{RpcStats, SessionStats};
