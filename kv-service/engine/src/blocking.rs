//! A blocking wrapper: one thread per worker, requests over channels.
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TryRecvError};
use std::thread::JoinHandle;

use super::error::{Error, Result};
use super::recovery::RecoveryStats;
use kv_proto::{Op, Reply};

use super::backend::{Backend, Disk, DiskBackend, Storage};
use super::worker::{Completion, Worker, WorkerStats};
use super::{choose_scan_keys, merge_scan, open_workers_with, EngineConfig, KeyRouter};

enum Request {
    Op(Op, SyncSender<Result<Reply>>),
    /// A scan's first phase: the worker's first keys ≥ start (index only).
    ScanKeys(Vec<u8>, usize, SyncSender<Vec<Vec<u8>>>),
    /// A scan's second phase: read exactly these keys.
    ScanOf(Vec<Vec<u8>>, SyncSender<Result<Reply>>),
    Stats(SyncSender<WorkerStats>),
}

/// The engine behind a blocking API, for tools and tests. Each worker runs on its own
/// thread; calls may come from any number of threads (`Engine` is `Sync`).
///
/// See the [module documentation](crate) for an example.
pub struct Engine<B: Backend = DiskBackend> {
    router: KeyRouter,
    senders: Vec<Sender<Request>>,
    threads: Vec<JoinHandle<()>>,
    recovery: RecoveryStats,
    _backend: std::marker::PhantomData<fn() -> B>,
}

impl Engine {
    /// Opens (creating if needed) the data directory `dir` on the real disk and starts one
    /// thread per worker.
    pub fn open(dir: impl AsRef<Path>, config: EngineConfig) -> Result<Engine> {
        Engine::open_with(&Disk::new(dir), config)
    }
}

impl<B: Backend> Engine<B> {
    /// Opens (creating if needed) a data directory on any [`Storage`] and starts one thread
    /// per worker.
    pub fn open_with<S: Storage<Backend = B>>(storage: &S, config: EngineConfig) -> Result<Self> {
        let opened = open_workers_with(storage, &config)?;
        let mut senders = Vec::new();
        let mut threads = Vec::new();
        for worker in opened.workers {
            let (tx, rx) = mpsc::channel();
            let name = format!("engine-worker-{}", worker.id());
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || serve(worker, rx))
                .map_err(|e| Error::io("spawning a worker thread", e))?;
            senders.push(tx);
            threads.push(handle);
        }
        Ok(Engine {
            router: opened.router,
            senders,
            threads,
            recovery: opened.recovery,
            _backend: std::marker::PhantomData,
        })
    }

    fn call(&self, worker: usize, op: Op) -> Result<Reply> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.senders
            .get(worker)
            .ok_or(Error::Closed)?
            .send(Request::Op(op, tx))
            .map_err(|_| Error::Closed)?;
        rx.recv().map_err(|_| Error::Closed)?
    }

    /// The value of `key`, or `None` if it does not exist.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.call(self.router.partition_of(key), Op::Get { key: key.to_vec() }) {
            Ok(Reply::Value(v)) => Ok(Some(v)),
            Ok(Reply::NotFound) => Ok(None),
            Ok(_) => Err(Error::Closed),
            Err(e) => Err(e),
        }
    }

    /// Inserts or overwrites; returns once the write is acknowledged (durable as the [`Durability`](super::Durability) mode promises).
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let op = Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        };
        self.call(self.router.partition_of(key), op).map(|_| ())
    }

    /// Deletes; returns whether the key existed.
    pub fn delete(&self, key: &[u8]) -> Result<bool> {
        match self.call(
            self.router.partition_of(key),
            Op::Delete { key: key.to_vec() },
        ) {
            Ok(Reply::Deleted) => Ok(true),
            Ok(Reply::NotFound) => Ok(false),
            Ok(_) => Err(Error::Closed),
            Err(e) => Err(e),
        }
    }

    /// Up to `max` items with key ≥ `start`, in lexicographic key order across all workers.
    ///
    /// In two phases: every worker lists its first keys from its index, the first `max` of
    /// them all are chosen, and each worker reads only its chosen ones — no value is read
    /// that the answer does not hold.
    pub fn scan(&self, start: &[u8], max: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        kv_proto::check_key(start)?;
        let mut key_replies = Vec::new();
        for tx in &self.senders {
            let (rtx, rrx) = mpsc::sync_channel(1);
            tx.send(Request::ScanKeys(start.to_vec(), max, rtx))
                .map_err(|_| Error::Closed)?;
            key_replies.push(rrx);
        }
        let mut keys = Vec::with_capacity(key_replies.len());
        for rx in key_replies {
            keys.push(rx.recv().map_err(|_| Error::Closed)?);
        }
        choose_scan_keys(&mut keys, max);
        let mut replies = Vec::new();
        for (tx, keys) in self.senders.iter().zip(keys) {
            if keys.is_empty() {
                continue;
            }
            let (rtx, rrx) = mpsc::sync_channel(1);
            tx.send(Request::ScanOf(keys, rtx))
                .map_err(|_| Error::Closed)?;
            replies.push(rrx);
        }
        let mut parts = Vec::new();
        for rx in replies {
            match rx.recv().map_err(|_| Error::Closed)?? {
                Reply::Items(items) => parts.push(items),
                _ => return Err(Error::Closed),
            }
        }
        Ok(merge_scan(parts, max))
    }

    /// Each worker's counters.
    pub fn stats(&self) -> Result<Vec<WorkerStats>> {
        let mut out = Vec::new();
        for tx in &self.senders {
            let (rtx, rrx) = mpsc::sync_channel(1);
            tx.send(Request::Stats(rtx)).map_err(|_| Error::Closed)?;
            out.push(rrx.recv().map_err(|_| Error::Closed)?);
        }
        Ok(out)
    }

    /// What recovery found at open.
    pub fn recovery_stats(&self) -> RecoveryStats {
        self.recovery
    }

    /// The key → worker function.
    pub fn router(&self) -> KeyRouter {
        self.router
    }

    /// Stops the worker threads after they finish the operations they hold.
    pub fn close(self) {
        drop(self);
    }
}

impl<B: Backend> Drop for Engine<B> {
    fn drop(&mut self) {
        self.senders.clear();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A worker thread: feeds requests to the worker and answers completions.
fn serve<B: Backend>(mut worker: Worker<B>, rx: Receiver<Request>) {
    let mut replies: Vec<Option<SyncSender<Result<Reply>>>> = Vec::new();
    let mut free: Vec<u64> = Vec::new();
    let mut done: Vec<Completion> = Vec::new();
    let mut closed = false;
    let tag_for = |reply: SyncSender<Result<Reply>>,
                   replies: &mut Vec<Option<SyncSender<Result<Reply>>>>,
                   free: &mut Vec<u64>| match free.pop() {
        Some(t) => {
            if let Some(slot) = replies.get_mut(t as usize) {
                *slot = Some(reply);
            }
            t
        }
        None => {
            replies.push(Some(reply));
            (replies.len() - 1) as u64
        }
    };
    let accept = |req: Request,
                  worker: &mut Worker<B>,
                  replies: &mut Vec<Option<SyncSender<Result<Reply>>>>,
                  free: &mut Vec<u64>| match req {
        Request::Op(op, reply) => {
            let tag = tag_for(reply, replies, free);
            worker.submit(op, tag);
        }
        Request::ScanKeys(start, max, reply) => {
            let _ = reply.send(worker.scan_keys(&start, max));
        }
        Request::ScanOf(keys, reply) => {
            let tag = tag_for(reply, replies, free);
            worker.submit_scan_of(keys, tag);
        }
        Request::Stats(reply) => {
            let _ = reply.send(worker.stats());
        }
    };
    loop {
        let mut got = false;
        loop {
            match rx.try_recv() {
                Ok(req) => {
                    accept(req, &mut worker, &mut replies, &mut free);
                    got = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    closed = true;
                    break;
                }
            }
        }
        worker.poll(&mut done);
        for c in done.drain(..) {
            if let Some(reply) = replies.get_mut(c.tag as usize).and_then(Option::take) {
                let _ = reply.send(c.result);
                free.push(c.tag);
            }
        }
        if worker.pending() == 0 && worker.io_in_flight() == 0 && !worker.reorg_busy() {
            if closed {
                return;
            }
            // Idle: sleep until a request arrives, or until the periodic flush is due.
            let next = match worker.next_deadline() {
                None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
                Some(at) => rx.recv_timeout(at.saturating_sub(worker.now())),
            };
            match next {
                Ok(req) => accept(req, &mut worker, &mut replies, &mut free),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => closed = true,
            }
        } else if !got {
            if let Err(e) = worker.wait() {
                tracing::error!(worker = worker.id(), error = %e, "waiting for I/O failed");
            }
        }
    }
}
