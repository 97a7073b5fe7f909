//! The runtime around the protocol core: the [`Nexus`] (handler table, SM socket, background
//! threads), the per-thread [`Rpc`] event loop that drives the core, the [`Ctx`] handle that
//! handlers and continuations use, the table of live sessions the Nexus answers pings from, and
//! the clocks.
//!
//! | file | what |
//! |---|---|
//! | `rpc.rs` | `Rpc`: the event loop — feeds the core, carries out its outputs; blocking helpers |
//! | `ctx.rs` | `Ctx`: the handler-facing handle (respond, enqueue, buffers) |
//! | `nexus.rs` | `Nexus`: per process; registration of handlers; owns the SM socket and the workers |
//! | `handlers.rs` | handler types and the per-request-type table |
//! | `background.rs` | background-handler jobs and worker threads |
//! | `sm_socket.rs` | the SM channel (UDP socket or `LocalHub`), the SM thread and the router |
//! | `liveness.rs` | the live-session table pings are answered from |
//! | `clock.rs` | wall clock and `VirtualClock` |

mod background;
pub(crate) mod clock;
mod ctx;
mod handlers;
mod liveness;
mod nexus;
mod rpc;
mod sm_socket;

pub use clock::VirtualClock;
pub use ctx::Ctx;
pub use handlers::{BgHandler, FgHandler, Handler, Request};
pub use nexus::Nexus;
pub use rpc::{Continuation, Rpc};
pub use sm_socket::LocalHub;
