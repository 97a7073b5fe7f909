//! `kv-service`: the persistent key-value server — engine workers (`kv-engine`) served over
//! the `rpc` crate in the wire format of `kv-proto` — and the binaries `kv-service` and
//! `kv-cli` (built on `kv-client`).
//!
//! - [`Server`]: the server behind the `kv-service` binary, over UDP, TCP or (feature `rdma`)
//!   InfiniBand UD / RC ([`DataTransport`]): one OS thread per engine worker, each stepping its
//!   own [`ServerThread`] (`docs/KV-SERVICE.md`).
//! - [`ServerThread`]: one server thread as a state machine (`step(now)`: serving, draining,
//!   stopped), generic over the transport and the engine's storage backend, so a whole server
//!   runs under deterministic simulation ([`build_threads`]; see `tests/sim_service.rs`).
//! - [`resp`]: the RESP (Redis protocol) front-end each thread runs when
//!   [`ServerConfig::resp`] is set (`kv-service --resp ADDR`): its share of the TCP
//!   connections, served from the same step loop, on top of the sans-IO `kv-resp` crate.
//!
//! # Example: a server and a client in one process
//!
//! Usually the server is the `kv-service` binary and only the client is in your program.
//!
//! ```
//! use kv_client::{Client, ClientConfig, Op, Reply};
//! use kv_service::{Server, ServerConfig};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let server = Server::start(ServerConfig {
//!     listen: "127.0.0.1:0".into(), // port 0: pick a free port
//!     data_dir: dir.path().to_path_buf(),
//!     threads: 2,
//!     ..ServerConfig::default()
//! })?;
//! let addr = server.listen_addr().to_string();
//!
//! let mut client = Client::connect(&addr, ClientConfig::default())?;
//! client.put(b"apple", b"red")?;
//! client.put(b"banana", b"yellow")?;
//! assert_eq!(client.get(b"apple")?, Some(b"red".to_vec()));
//! assert_eq!(client.scan(b"b", 10)?, vec![(b"banana".to_vec(), b"yellow".to_vec())]);
//! assert!(client.delete(b"apple")?);
//! assert_eq!(client.get(b"apple")?, None);
//!
//! // Pipelined: many requests in flight, each answer carries its tag.
//! for i in 0..64u64 {
//!     let cmd = Op::Put { key: format!("key-{i:02}").into_bytes(), value: vec![b'x'; 100] };
//!     client.submit(cmd, i)?;
//! }
//! let mut answered = 0;
//! while let Some((_tag, reply)) = client.wait() {
//!     assert_eq!(reply?, Reply::Written);
//!     answered += 1;
//! }
//! assert_eq!(answered, 64);
//! let items: u64 = client.stats()?.iter().map(|s| s.items).sum();
//! assert_eq!(items, 65);
//!
//! drop(client);
//! server.shutdown()?; // graceful: finishes in-flight requests, closes the engine
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cluster;
mod config;
mod data;
mod forward;
pub mod resp;
mod resp_ops;
mod server;
mod state;
mod thread;

pub use cluster::{ClusterOptions, CompactionSettings, ReadMode, ReplicaStats, Replicas};
pub use config::{DataTransport, IdleMode, ServerConfig, ServerError};
pub use server::Server;
pub use state::ServerState;
pub use thread::{build_threads, register_handlers, Phase, ServerThread, Shutdown, LINGER};
