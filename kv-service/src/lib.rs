//! `kv-service`: a persistent key-value service whose storage engine derives from KVell,
//! served over the `rpc` crate.
#![warn(missing_docs)]

pub mod engine;
