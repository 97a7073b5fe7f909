//! Request handlers: what a Nexus registers per request type and each Rpc copies.

use std::sync::Arc;

use crate::proto::ReqHandle;

use super::ctx::Ctx;

/// A request as a handler sees it.
#[derive(Debug)]
pub struct Request<'a> {
    /// Handle to respond with, now or later.
    pub handle: ReqHandle,
    /// The request type.
    pub req_type: u8,
    /// The request data.
    pub data: &'a [u8],
}

/// A foreground handler: runs on the Rpc's thread with its state and context.
pub type FgHandler<S> = Arc<dyn Fn(&mut S, &mut Ctx, Request<'_>) + Send + Sync>;
/// A background handler: runs on a Nexus worker thread; returns the response bytes.
pub type BgHandler = Arc<dyn Fn(&[u8]) -> Vec<u8> + Send + Sync>;

/// A registered request handler.
pub enum Handler<S> {
    /// Runs in the Rpc's event loop; may respond at once or keep the handle and respond later.
    Foreground(FgHandler<S>),
    /// Runs on a Nexus background thread (for handlers that take long); the response is sent
    /// by the Rpc that received the request.
    Background(BgHandler),
}

impl<S> Clone for Handler<S> {
    fn clone(&self) -> Self {
        match self {
            Self::Foreground(f) => Self::Foreground(f.clone()),
            Self::Background(f) => Self::Background(f.clone()),
        }
    }
}

/// The handler table: one entry per request type (256).
pub(crate) type HandlerTable<S> = Vec<Option<Handler<S>>>;

/// An empty table.
pub(crate) fn empty_table<S>() -> HandlerTable<S> {
    (0..256).map(|_| None).collect()
}
