//! Same-run baselines.
pub mod raw_tcp;
pub mod raw_udp;
pub mod redis;
pub mod rocksdb;
