//! RDMA verbs transports (behind the cargo feature `rdma`): InfiniBand/RoCE unreliable
//! datagram ([`ud`]) and reliable connection ([`rc`]), over a [`verbs::VerbsDevice`] — a real
//! NIC through libibverbs ([`ibv`]) or the in-process simulated fabric ([`sim`]).
#![deny(unsafe_code)]

mod common;
pub mod dma;
pub mod ibv;
pub mod rc;
pub mod sim;
pub mod ud;
pub mod verbs;
