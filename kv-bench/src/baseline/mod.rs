//! Same-run baselines.
pub mod raw_udp;
pub mod redis;
