//! `kv-resp`: the RESP (Redis serialization protocol) front-end of kv-service as a sans-IO
//! core — no sockets, no clock, no threads.
//!
//! - [`Parser`]: an incremental RESP2 request parser (arrays of bulk strings and inline
//!   commands) reading from the caller's buffer, with [`ParseLimits`] and typed
//!   [`ProtocolError`]s.
//! - [`Encoder`]: replies in RESP2 or RESP3 ([`Protocol`]); [`encode_request`] for clients.
//! - [`parse_reply`] and [`Value`]: replies read back, for clients and tests.
//! - [`glob_match`]: Redis's glob matching (SCAN MATCH, CONFIG GET).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod encode;
pub mod glob;
pub mod parse;
pub mod reply;

pub use encode::{encode_request, Encoder, Protocol};
pub use glob::{glob_match, literal_prefix};
pub use parse::{Command, ParseLimits, Parser, ProtocolError};
pub use reply::{parse_reply, ReplyError, Value};
