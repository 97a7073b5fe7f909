//! `kv-resp`: the RESP (Redis serialization protocol) front-end of kv-service as a sans-IO
//! core — no sockets, no clock, no threads. A server feeds each connection's bytes in and
//! writes its bytes out; the connection turns commands into key-value operations on a
//! [`Store`] the server implements, and puts the replies back in pipeline order however the
//! operations complete.
//!
//! - [`Parser`]: an incremental RESP2 request parser (arrays of bulk strings and inline
//!   commands) reading from the caller's buffer, with [`ParseLimits`] and typed
//!   [`ProtocolError`]s.
//! - [`Encoder`]: replies in RESP2 or RESP3 ([`Protocol`]); [`encode_request`] for clients.
//! - [`Connection`]: one client connection as a state machine (bytes in → [`KvOp`]s out →
//!   [`Outcome`]s in → reply bytes out), with the command table: PING, ECHO, GET, SET,
//!   GETSET, DEL, EXISTS, MGET, MSET, STRLEN, TYPE, TTL, PTTL, SCAN, DBSIZE, INFO, COMMAND,
//!   CONFIG GET, CLIENT, SELECT, QUIT, AUTH, HELLO.
//! - [`parse_reply`] and [`Value`]: replies read back, for clients and tests.
//! - [`glob_match`]: Redis's glob matching (SCAN MATCH, CONFIG GET).
//!
//! # Example: a connection over an in-memory store
//!
//! ```
//! use std::collections::BTreeMap;
//! use kv_resp::{Config, Connection, Figures, KvOp, OpId, Outcome, Shared, Store};
//!
//! /// Runs every operation at once, but answers only when asked to (as an engine would).
//! #[derive(Default)]
//! struct Mem {
//!     data: BTreeMap<Vec<u8>, Vec<u8>>,
//!     done: Vec<(OpId, Option<Option<Vec<u8>>>)>, // None: written; Some(v): a GET's value
//! }
//! impl Store for Mem {
//!     fn submit(&mut self, id: OpId, op: KvOp<'_>) {
//!         let answer = match op {
//!             KvOp::Put { key, value } => {
//!                 self.data.insert(key.to_vec(), value.to_vec());
//!                 None
//!             }
//!             KvOp::Get { key } => Some(self.data.get(key).cloned()),
//!             _ => unimplemented!("not needed here"),
//!         };
//!         self.done.push((id, answer));
//!     }
//!     fn figures(&self) -> Figures {
//!         Figures { keys: self.data.len() as u64, ..Figures::default() }
//!     }
//! }
//! impl Mem {
//!     fn answer(&mut self, conn: &mut Connection) {
//!         // Newest first: the replies still come out in pipeline order.
//!         while let Some((id, answer)) = self.done.pop() {
//!             let outcome = match &answer {
//!                 None => Outcome::Written,
//!                 Some(Some(v)) => Outcome::Value(v),
//!                 Some(None) => Outcome::NotFound,
//!             };
//!             conn.complete(id, outcome).unwrap();
//!         }
//!     }
//! }
//!
//! let mut conn = Connection::new(Shared::new(Config::default()));
//! let mut store = Mem::default();
//! // SET a, GET b, GET a, pipelined and split in the middle of a frame.
//! conn.feed(b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$2\r\nv");
//! conn.process(&mut store);
//! conn.feed(b"1\r\n*2\r\n$3\r\nGET\r\n$1\r\nb\r\nGET a\r\n");
//! conn.process(&mut store);
//! // GET a must see the SET before it: it waits until the SET has answered.
//! assert_eq!(store.done.len(), 2);
//! store.answer(&mut conn);
//! conn.process(&mut store);
//! store.answer(&mut conn);
//! assert_eq!(conn.output(), b"+OK\r\n$-1\r\n$2\r\nv1\r\n");
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod commands;
pub mod config;
pub mod conn;
pub mod encode;
pub mod glob;
mod info;
mod order;
pub mod parse;
pub mod reply;
pub mod store;
mod table;

pub use config::{Config, Limits, ScanCursors, ServerFacts, Shared};
pub use conn::{Close, ConnStats, Connection, UnknownOp};
pub use encode::{encode_request, Encoder, Protocol};
pub use glob::{glob_match, literal_prefix};
pub use parse::{Command, ParseLimits, Parser, ProtocolError};
pub use reply::{parse_reply, ReplyError, Value};
pub use store::{Figures, Item, KvOp, OpId, Outcome, SetCond, Store};
