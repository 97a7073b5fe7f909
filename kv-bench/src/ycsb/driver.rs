//! The closed-loop driver shared by `kv-bench ycsb` and `kv-bench compare`: one thread
//! drives several sessions (a kv-service `Client`, a Redis connection, or the engine
//! in-process), each with `window` requests in flight, and records per-kind latencies.
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use kv_client::{Client, Reply};
use kv_engine::{merge_scan, KeyRouter, Worker};
use transports::udp::UdpTransport;
use transports::Transport;

use super::gen::{key_of, load_value_size, value_of, Op, OpKind, Workload};
use crate::baseline::redis::{RedisConn, Resp};
use crate::report::new_histogram;

/// A request as every system understands it: the KV service's own operation vocabulary.
pub type Req = kv_proto::Op;

/// A successful answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// GET found the key.
    Found,
    /// GET did not find the key.
    NotFound,
    /// SET done.
    Written,
    /// Scan returned this many items.
    Items(usize),
    /// The system cannot do this request (Redis scans): not counted.
    Skipped,
}

/// Per-request outcome; `Err` is a failed request (counted, the run goes on).
pub type Done = (u64, std::result::Result<Outcome, String>);

/// One session of a system under test. `poll` never blocks; an `Err` from it is fatal.
pub trait Backend {
    /// Sends a request; its outcome comes out of `poll` with `tag`.
    fn submit(&mut self, req: Req, tag: u64);
    /// Appends finished requests to `out`.
    fn poll(&mut self, out: &mut Vec<Done>) -> Result<()>;
}

/// A kv-service client connection (one rpc session per server thread), over any transport.
pub struct KvBackend<T: Transport = UdpTransport> {
    client: Client<T>,
    local: Vec<Done>,
}

impl<T: Transport> KvBackend<T> {
    /// Wraps a connected client.
    pub fn new(client: Client<T>) -> Self {
        Self {
            client,
            local: Vec::new(),
        }
    }
}

impl<T: Transport> Backend for KvBackend<T> {
    fn submit(&mut self, req: Req, tag: u64) {
        if let Err(e) = self.client.submit(req, tag) {
            self.local.push((tag, Err(e.to_string())));
        }
    }

    fn poll(&mut self, out: &mut Vec<Done>) -> Result<()> {
        out.append(&mut self.local);
        while let Some((tag, r)) = self.client.poll() {
            let r = match r {
                Ok(Reply::Value(_)) => Ok(Outcome::Found),
                Ok(Reply::NotFound) => Ok(Outcome::NotFound),
                Ok(Reply::Written) => Ok(Outcome::Written),
                Ok(Reply::Items(items)) => Ok(Outcome::Items(items.len())),
                Ok(other) => Err(format!("unexpected reply {other:?}")),
                Err(e) => Err(e.to_string()),
            };
            out.push((tag, r));
        }
        Ok(())
    }
}

/// A Redis connection: GET/SET pipelined; scans are skipped (Redis has no ordered scan
/// over plain string keys).
pub struct RedisBackend {
    conn: RedisConn,
    local: Vec<Done>,
    buf: Vec<(u64, Resp)>,
}

impl RedisBackend {
    /// Connects.
    pub fn connect(addr: &str) -> Result<Self> {
        Ok(Self {
            conn: RedisConn::connect(addr)?,
            local: Vec::new(),
            buf: Vec::new(),
        })
    }
}

impl Backend for RedisBackend {
    fn submit(&mut self, req: Req, tag: u64) {
        match req {
            Req::Get { key } => self.conn.send(&[b"GET", &key], tag),
            Req::Put { key, value } => self.conn.send(&[b"SET", &key, &value], tag),
            Req::Delete { key } => self.conn.send(&[b"DEL", &key], tag),
            Req::Scan { .. } => self.local.push((tag, Ok(Outcome::Skipped))),
        }
    }

    fn poll(&mut self, out: &mut Vec<Done>) -> Result<()> {
        out.append(&mut self.local);
        self.conn.poll(&mut self.buf)?;
        for (tag, resp) in self.buf.drain(..) {
            let r = match resp {
                Resp::Bulk(Some(_)) => Ok(Outcome::Found),
                Resp::Bulk(None) => Ok(Outcome::NotFound),
                Resp::Simple(s) if s == b"OK" => Ok(Outcome::Written),
                Resp::Error(e) => Err(format!("Redis: {e}")),
                other => Err(format!("unexpected Redis reply {other:?}")),
            };
            out.push((tag, r));
        }
        Ok(())
    }
}

/// A scan in progress: parts still to come, parts received, max items, first error.
type ScanParts = (usize, Vec<Vec<(Vec<u8>, Vec<u8>)>>, usize, Option<String>);

/// The engine in-process through its non-blocking `Worker` API: no network, no threads
/// crossed (the driver thread polls the workers itself).
pub struct EngineBackend {
    workers: Vec<Worker>,
    router: KeyRouter,
    done: Vec<kv_engine::Completion>,
    scans: HashMap<u64, ScanParts>,
}

impl EngineBackend {
    /// Wraps opened workers.
    pub fn new(workers: Vec<Worker>, router: KeyRouter) -> Self {
        Self {
            workers,
            router,
            done: Vec::new(),
            scans: HashMap::new(),
        }
    }
}

impl Backend for EngineBackend {
    fn submit(&mut self, req: Req, tag: u64) {
        if let Req::Scan { start, max } = req {
            self.scans
                .insert(tag, (self.workers.len(), Vec::new(), max, None));
            for w in &mut self.workers {
                let part = Req::Scan {
                    start: start.clone(),
                    max,
                };
                w.submit(part, tag);
            }
            return;
        }
        let w = self.router.partition_of(req.key());
        self.workers[w].submit(req, tag);
    }

    fn poll(&mut self, out: &mut Vec<Done>) -> Result<()> {
        for w in &mut self.workers {
            w.poll(&mut self.done);
        }
        for c in self.done.drain(..) {
            if let Some(scan) = self.scans.get_mut(&c.tag) {
                match c.result {
                    Ok(Reply::Items(items)) => scan.1.push(items),
                    Ok(_) => scan.3 = Some("unexpected scan output".into()),
                    Err(e) => scan.3 = Some(e.to_string()),
                }
                scan.0 -= 1;
                if scan.0 == 0 {
                    if let Some((_, parts, max, err)) = self.scans.remove(&c.tag) {
                        let r = match err {
                            Some(e) => Err(e),
                            None => Ok(Outcome::Items(merge_scan(parts, max).len())),
                        };
                        out.push((c.tag, r));
                    }
                }
                continue;
            }
            let r = match c.result {
                Ok(Reply::Value(_)) => Ok(Outcome::Found),
                Ok(Reply::Written) => Ok(Outcome::Written),
                Ok(Reply::NotFound) => Ok(Outcome::NotFound),
                Ok(_) => Err("unexpected engine output".into()),
                Err(e) => Err(e.to_string()),
            };
            out.push((c.tag, r));
        }
        Ok(())
    }
}

/// Makes one connection; called on the driver thread that uses it (a kv-service `Client`
/// is bound to its thread).
pub type Factory = std::sync::Arc<dyn Fn() -> Result<Box<dyn Backend>> + Send + Sync>;

/// A system's connections.
pub enum Conns {
    /// Connected anew on each driver thread for each phase.
    Connect {
        /// Makes one connection.
        factory: Factory,
        /// Driver threads.
        threads: usize,
        /// Connections per thread.
        sessions: usize,
    },
    /// Kept across phases (the in-process engine).
    Owned(Vec<Vec<Box<dyn Backend + Send>>>),
}

/// Per-thread (and merged) results of a phase.
pub struct Stats {
    /// Latency in ns per [`OpKind`] index.
    pub hists: Vec<Histogram<u64>>,
    /// All kinds together.
    pub all: Histogram<u64>,
    /// Failed requests.
    pub errors: u64,
    /// The first failure's message.
    pub first_error: Option<String>,
    /// Reads (and RMW reads) that found no key.
    pub not_found: u64,
    /// Requests the system could not do (not counted as operations).
    pub skipped: u64,
    /// Wall time of the phase (the slowest thread).
    pub elapsed: Duration,
}

impl Stats {
    /// Empty statistics.
    pub fn new() -> Self {
        Self {
            hists: OpKind::ALL.iter().map(|_| new_histogram()).collect(),
            all: new_histogram(),
            errors: 0,
            first_error: None,
            not_found: 0,
            skipped: 0,
            elapsed: Duration::ZERO,
        }
    }
    /// Completed operations (errors included, skipped not).
    pub fn ops(&self) -> u64 {
        self.all.len() + self.errors
    }
    /// Operations per second.
    pub fn ops_per_s(&self) -> f64 {
        self.ops() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Adds `other` in (elapsed: added, for phases run one after the other; use
    /// [`Stats::merge_parallel`] for threads of one phase).
    pub fn merge_serial(&mut self, other: &Stats) -> Result<()> {
        self.merge(other)?;
        self.elapsed += other.elapsed;
        Ok(())
    }
    /// Adds the results of a thread that ran at the same time.
    pub fn merge_parallel(&mut self, other: &Stats) -> Result<()> {
        self.merge(other)?;
        self.elapsed = self.elapsed.max(other.elapsed);
        Ok(())
    }
    fn merge(&mut self, o: &Stats) -> Result<()> {
        for (a, b) in self.hists.iter_mut().zip(&o.hists) {
            a.add(b).context("merging histograms")?;
        }
        self.all.add(&o.all).context("merging histograms")?;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.not_found += o.not_found;
        self.skipped += o.skipped;
        Ok(())
    }
}

/// How a phase ends, shared by its threads.
pub struct Control {
    /// Stop issuing at this instant (duration mode).
    pub deadline: Option<Instant>,
    /// Stop issuing after this many operations in total (ops mode).
    pub ops_limit: Option<u64>,
    /// Operations issued so far (ops mode).
    pub issued: AtomicU64,
    /// Operations completed so far (for the progress bar).
    pub completed: AtomicU64,
}

impl Control {
    /// A control for `ops` operations or `duration`.
    pub fn new(ops: Option<u64>, duration: Option<Duration>) -> Self {
        Self {
            deadline: duration.map(|d| Instant::now() + d),
            ops_limit: ops,
            issued: AtomicU64::new(0),
            completed: AtomicU64::new(0),
        }
    }
    /// Whether another operation may be issued.
    pub fn may_issue(&self) -> bool {
        if let Some(d) = self.deadline {
            if Instant::now() >= d {
                return false;
            }
        }
        if let Some(limit) = self.ops_limit {
            return self.issued.fetch_add(1, Ordering::Relaxed) < limit;
        }
        true
    }
}

struct Slot {
    start: Instant,
    op: Op,
    rmw_write_pending: bool,
}

/// Runs a closed loop on one thread: every session keeps `window` requests in flight
/// while `next` yields operations; returns when all have completed. `inserted` is told the
/// id of every insert that completed (for the "latest" distribution).
pub fn drive<B: Backend + ?Sized>(
    sessions: &mut [Box<B>],
    window: usize,
    next: &mut dyn FnMut() -> Option<Op>,
    inserted: &dyn Fn(u64),
    ctl: &Control,
    salt: u64,
) -> Result<Stats> {
    let mut stats = Stats::new();
    let mut slots: Vec<Vec<Option<Slot>>> = sessions
        .iter()
        .map(|_| (0..window).map(|_| None).collect())
        .collect();
    let mut free: Vec<Vec<usize>> = sessions
        .iter()
        .map(|_| (0..window).rev().collect())
        .collect();
    let mut outstanding = 0usize;
    let mut exhausted = false;
    let mut out: Vec<Done> = Vec::new();
    let mut unreported = 0u64;
    let start = Instant::now();
    let value_len = |op: &Op| match *op {
        Op::Update(_, s) | Op::Insert(_, s) | Op::Rmw(_, s) => s,
        _ => 0,
    };
    loop {
        if !exhausted {
            'fill: for (s, backend) in sessions.iter_mut().enumerate() {
                while let Some(k) = free[s].pop() {
                    let Some(op) = next() else {
                        free[s].push(k);
                        exhausted = true;
                        break 'fill;
                    };
                    let req = match op {
                        Op::Read(id) | Op::Rmw(id, _) => Req::Get { key: key_of(id) },
                        Op::Update(id, len) | Op::Insert(id, len) => Req::Put {
                            key: key_of(id),
                            value: value_of(id, len, salt),
                        },
                        Op::Scan(id, len) => Req::Scan {
                            start: key_of(id),
                            max: len,
                        },
                    };
                    slots[s][k] = Some(Slot {
                        start: Instant::now(),
                        op,
                        rmw_write_pending: matches!(op, Op::Rmw(..)),
                    });
                    outstanding += 1;
                    backend.submit(req, k as u64);
                }
            }
        }
        if exhausted && outstanding == 0 {
            break;
        }
        for (s, backend) in sessions.iter_mut().enumerate() {
            backend.poll(&mut out)?;
            for (tag, r) in out.drain(..) {
                let k = tag as usize;
                let Some(slot) = slots.get_mut(s).and_then(|v| v.get_mut(k)) else {
                    bail!("completion with unknown tag {tag}");
                };
                let Some(sl) = slot.as_mut() else {
                    bail!("completion for an idle slot {tag}");
                };
                match r {
                    Ok(outcome) => {
                        if outcome == Outcome::NotFound {
                            stats.not_found += 1;
                        }
                        if sl.rmw_write_pending {
                            // Read-modify-write: the read is back, now the write.
                            sl.rmw_write_pending = false;
                            if let Op::Rmw(id, _) = sl.op {
                                let len = value_len(&sl.op);
                                let put = Req::Put {
                                    key: key_of(id),
                                    value: value_of(id, len, salt),
                                };
                                backend.submit(put, tag);
                                continue;
                            }
                        }
                        if outcome == Outcome::Skipped {
                            stats.skipped += 1;
                        } else {
                            let ns = sl.start.elapsed().as_nanos() as u64;
                            let _ = stats.hists[sl.op.kind().index()].record(ns.max(1));
                            let _ = stats.all.record(ns.max(1));
                        }
                    }
                    Err(e) => {
                        stats.errors += 1;
                        if stats.first_error.is_none() {
                            stats.first_error = Some(e);
                        }
                    }
                }
                if let Op::Insert(id, _) = sl.op {
                    inserted(id);
                }
                *slot = None;
                free[s].push(k);
                outstanding -= 1;
                unreported += 1;
            }
        }
        if unreported >= 64 || (exhausted && outstanding == 0) {
            ctl.completed.fetch_add(unreported, Ordering::Relaxed);
            unreported = 0;
        }
    }
    ctl.completed.fetch_add(unreported, Ordering::Relaxed);
    stats.elapsed = start.elapsed();
    Ok(stats)
}

/// The load phase's operations of one thread: its share of the shuffled order, as inserts.
pub fn load_ops(
    ids: Vec<u64>,
    workload: Workload,
    value_size: usize,
) -> impl Iterator<Item = Op> + Send {
    ids.into_iter()
        .map(move |id| Op::Insert(id, load_value_size(workload, value_size, id)))
}

/// Makes one driver thread's connections, on that thread.
type Maker = Box<dyn FnOnce() -> Result<Vec<Box<dyn Backend>>> + Send>;

/// A phase's work for one driver thread.
pub type Job = Box<dyn FnOnce(&mut Vec<Box<dyn Backend>>) + Send>;

/// Long-lived driver threads, each owning its connections for the whole run (a kv-service
/// `Client` is bound to the thread that made it, and reconnecting per phase would leave
/// sessions behind on the server).
pub struct Pool {
    jobs: Vec<mpsc::Sender<Job>>,
    handles: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts one thread per connection group and connects (errors are returned here).
    pub fn start(conns: Conns) -> Result<Self> {
        let makers: Vec<Maker> = match conns {
            Conns::Connect {
                factory,
                threads,
                sessions,
            } => (0..threads)
                .map(|_| {
                    let f = factory.clone();
                    Box::new(move || (0..sessions).map(|_| f()).collect::<Result<Vec<_>>>())
                        as Maker
                })
                .collect(),
            Conns::Owned(groups) => groups
                .into_iter()
                .map(|g| {
                    Box::new(move || {
                        Ok(g.into_iter()
                            .map(|b| b as Box<dyn Backend>)
                            .collect::<Vec<_>>())
                    }) as Maker
                })
                .collect(),
        };
        let mut pool = Pool {
            jobs: Vec::new(),
            handles: Vec::new(),
        };
        let mut readies = Vec::new();
        for (t, make) in makers.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel::<Job>();
            let (ready_tx, ready_rx) = mpsc::channel::<Result<()>>();
            let handle = std::thread::Builder::new()
                .name(format!("kv-bench-driver-{t}"))
                .spawn(move || match make() {
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                    Ok(mut conns) => {
                        let _ = ready_tx.send(Ok(()));
                        while let Ok(job) = rx.recv() {
                            job(&mut conns);
                        }
                    }
                })
                .context("spawning a driver thread")?;
            pool.jobs.push(tx);
            pool.handles.push(handle);
            readies.push(ready_rx);
        }
        for r in readies {
            r.recv()
                .map_err(|_| anyhow!("a driver thread died while connecting"))??;
        }
        Ok(pool)
    }

    /// Driver threads.
    pub fn threads(&self) -> usize {
        self.jobs.len()
    }

    /// Gives thread `t` a job.
    pub fn send(&self, t: usize, job: Job) -> Result<()> {
        self.jobs
            .get(t)
            .ok_or_else(|| anyhow!("no driver thread {t}"))?
            .send(job)
            .map_err(|_| anyhow!("driver thread {t} is gone"))
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}
