//! Background handlers: jobs sent from an Rpc to the Nexus's worker threads, and their
//! results coming back.
//!
//! Jobs go out on one bounded queue shared by the workers (full: the client gets
//! `RemoteOverloaded`); each result goes back on the bounded queue of the Rpc that sent the
//! job, which responds from its event loop. A handler that panics fails only its own request
//! (`HandlerFailed`).

use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};

use crate::msgbuf::MsgBuf;
use crate::proto::ReqHandle;

use super::handlers::BgHandler;

/// A request for a background handler.
pub(crate) struct BgJob {
    pub handler: BgHandler,
    pub handle: ReqHandle,
    pub req: MsgBuf,
    pub reply: Sender<BgDone>,
}

/// A background handler's result.
pub(crate) struct BgDone {
    pub handle: ReqHandle,
    pub req: MsgBuf,
    /// `None` if the handler panicked.
    pub resp: Option<Vec<u8>>,
}

/// Starts `n` worker threads serving `rx`.
pub(crate) fn start_workers(
    n: usize,
    rx: &Receiver<BgJob>,
) -> Result<Vec<JoinHandle<()>>, std::io::Error> {
    (0..n)
        .map(|i| {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("rpc-bg-{i}"))
                .spawn(move || {
                    for job in rx.iter() {
                        let resp = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            (job.handler)(job.req.as_slice())
                        }))
                        .ok();
                        let _ = job.reply.send(BgDone {
                            handle: job.handle,
                            req: job.req,
                            resp,
                        });
                    }
                })
        })
        .collect()
}
