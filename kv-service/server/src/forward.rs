//! Forwarding between the server's own threads, in process.
//!
//! A GET / PUT / DELETE that reached a thread other than its key's owner is handed to the
//! owner through the owner's mailbox, and the owner's answer (a complete response message)
//! comes back through the sender's mailbox. Nothing crosses the kernel; a thread picks up its
//! mail at every step, so forwarding stays deterministic under simulation.
//!
//! The mailboxes are unbounded channels; what bounds them is the sender's admission: a thread
//! keeps at most [`MAX_FORWARDS`] of its forwards outstanding (beyond that the request is
//! answered OVERLOADED), so a mailbox holds at most that many requests per sibling and as many
//! replies as its thread has forwards outstanding.

use crossbeam_channel::{Receiver, Sender};

/// Most forwards one thread keeps outstanding.
pub(crate) const MAX_FORWARDS: usize = 4096;

/// Mail between server threads.
pub(crate) enum Mail {
    /// Thread `from` asks this thread to run one request (its whole encoding, as a client
    /// would have sent it) and to answer with `tag`.
    Request {
        from: usize,
        tag: u64,
        req_type: u8,
        msg: Vec<u8>,
    },
    /// The answer to this thread's forward `tag`: a complete response message.
    Reply { tag: u64, resp: Vec<u8> },
    /// Thread `from` asks this thread, the key's owner, to run a conditional SET of the RESP
    /// front-end (read the key, write it if `cond` holds, atomically) and to answer with
    /// `tag`: a response whose flags carry [`SET_WRITTEN`] and whose body is the old value
    /// when `get` asked for it and the key existed (count 1).
    SetIf {
        from: usize,
        tag: u64,
        key: Vec<u8>,
        value: Vec<u8>,
        cond: kv_resp::SetCond,
        get: bool,
    },
}

/// A request for another thread before it is posted (it gets its sender and tag then).
#[derive(Debug)]
pub(crate) enum Letter {
    /// Becomes [`Mail::Request`].
    Request { req_type: u8, msg: Vec<u8> },
    /// Becomes [`Mail::SetIf`].
    SetIf {
        key: Vec<u8>,
        value: Vec<u8>,
        cond: kv_resp::SetCond,
        get: bool,
    },
}

impl Letter {
    /// The mail, from thread `from`, answered with `tag`.
    pub(crate) fn seal(self, from: usize, tag: u64) -> Mail {
        match self {
            Letter::Request { req_type, msg } => Mail::Request {
                from,
                tag,
                req_type,
                msg,
            },
            Letter::SetIf {
                key,
                value,
                cond,
                get,
            } => Mail::SetIf {
                from,
                tag,
                key,
                value,
                cond,
                get,
            },
        }
    }
}

/// Response flag of a [`Mail::SetIf`] answer: the write happened. In-process only, never on
/// the wire.
pub(crate) const SET_WRITTEN: u16 = 1 << 15;

/// A thread's end of the mesh: its mailbox and every sibling's address.
pub(crate) struct Post {
    inbox: Receiver<Mail>,
    siblings: Vec<Sender<Mail>>,
}

/// Why a letter could not be posted.
#[derive(Debug)]
pub(crate) struct Undeliverable;

impl Post {
    /// One post per thread, each able to reach every other.
    pub(crate) fn mesh(threads: usize) -> Vec<Post> {
        let (txs, rxs): (Vec<_>, Vec<_>) =
            (0..threads).map(|_| crossbeam_channel::unbounded()).unzip();
        rxs.into_iter()
            .map(|inbox| Post {
                inbox,
                siblings: txs.clone(),
            })
            .collect()
    }

    /// Sends `mail` to thread `to`. Fails only if that thread is gone.
    pub(crate) fn send(&self, to: usize, mail: Mail) -> Result<(), Undeliverable> {
        self.siblings
            .get(to)
            .ok_or(Undeliverable)?
            .send(mail)
            .map_err(|_| Undeliverable)
    }

    /// The next letter, if any (never blocks).
    pub(crate) fn receive(&self) -> Option<Mail> {
        // Empty, or every sender gone (the server is stopping): nothing to read either way.
        self.inbox.try_recv().ok()
    }

    /// Whether letters are waiting.
    pub(crate) fn has_mail(&self) -> bool {
        !self.inbox.is_empty()
    }
}
