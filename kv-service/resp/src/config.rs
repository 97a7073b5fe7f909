//! The settings every RESP connection of a server shares, and the state they share: the
//! SCAN cursor table and the client id counter.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::parse::ParseLimits;

/// Bounds of one connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Parser bounds: arguments per command, bulk length, inline line length.
    pub parse: ParseLimits,
    /// Most bytes of received, unprocessed input one connection holds. A frame that does not
    /// fit is a protocol error (Redis: `client-query-buffer-limit`).
    pub max_query_buffer: usize,
    /// When a connection's unsent replies reach this many bytes it stops reading and running
    /// commands until the client has read some (a client that sends without reading is
    /// throttled rather than allowed to grow memory).
    pub max_output_buffer: usize,
    /// Most commands of one connection in progress or with unsent replies; past it the
    /// connection stops reading until replies complete.
    pub max_pipeline: usize,
    /// Longest key a command may name (longer: an error reply, nothing submitted).
    pub max_key_len: usize,
    /// Longest value SET / MSET / GETSET may write.
    pub max_value_len: usize,
    /// Most keys one SCAN call asks the store for (a larger COUNT is capped).
    pub max_scan_count: usize,
    /// Most commands one [`Connection::process`](crate::Connection::process) call runs,
    /// so that one busy connection cannot starve the others of its thread.
    pub batch: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            parse: ParseLimits::default(),
            max_query_buffer: 64 << 20,
            max_output_buffer: 16 << 20,
            max_pipeline: 1024,
            max_key_len: 1024,
            max_value_len: 1 << 20,
            max_scan_count: 1000,
            batch: 256,
        }
    }
}

/// Facts about the server that INFO, HELLO, CONFIG GET and COMMAND report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFacts {
    /// `redis_version` reported to clients: the Redis protocol and command level the front-end
    /// follows (some clients check it before using a command).
    pub redis_version: String,
    /// The server's own name and version (INFO `kv_service_version`).
    pub server_version: String,
    /// The RESP listening port.
    pub tcp_port: u16,
    /// Server threads (each serving its share of connections).
    pub threads: usize,
    /// Process id.
    pub process_id: u32,
    /// The data directory.
    pub data_dir: String,
    /// Whether a write is on stable storage before it is acknowledged (the engine's sync
    /// mode); otherwise it is in the OS page cache.
    pub sync_writes: bool,
    /// The Redis `appendfsync` setting whose promise the engine's durability mode keeps
    /// (`always`, `everysec` or `no`), for CONFIG GET.
    pub appendfsync: &'static str,
    /// The engine's I/O backend (`io_uring`, `pread/pwrite`, ...).
    pub io_backend: String,
    /// Most RESP connections at once.
    pub max_clients: usize,
    /// Seconds after which an idle connection is closed (0: never).
    pub idle_timeout_secs: u64,
}

impl Default for ServerFacts {
    fn default() -> Self {
        Self {
            redis_version: "7.0.0".into(),
            server_version: env!("CARGO_PKG_VERSION").into(),
            tcp_port: 0,
            threads: 1,
            process_id: std::process::id(),
            data_dir: String::new(),
            sync_writes: false,
            appendfsync: "no",
            io_backend: String::new(),
            max_clients: 10_000,
            idle_timeout_secs: 0,
        }
    }
}

/// Everything a connection is configured with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The password of `AUTH` / `HELLO ... AUTH` (`requirepass`). With one, a connection
    /// that has not authenticated gets `-NOAUTH` for everything but AUTH, HELLO and QUIT.
    pub password: Option<Vec<u8>>,
    /// Bounds.
    pub limits: Limits,
    /// What INFO and friends report.
    pub facts: ServerFacts,
}

/// What the connections of one server share: the [`Config`], the SCAN cursor table and the
/// client id counter. Create one per server with [`Shared::new`] and give every
/// [`Connection`](crate::Connection) a clone of the `Arc`.
#[derive(Debug)]
pub struct Shared {
    config: Config,
    cursors: Mutex<ScanCursors>,
    next_client_id: AtomicU64,
}

impl Shared {
    /// Shared state for the connections of one server.
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            config,
            cursors: Mutex::new(ScanCursors::new(DEFAULT_CURSORS)),
            next_client_id: AtomicU64::new(1),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The SCAN cursor table (a lock only SCAN takes).
    pub fn cursors(&self) -> MutexGuard<'_, ScanCursors> {
        // A panic while holding the lock cannot leave the table inconsistent (each method
        // completes its update before returning), so a poisoned lock is still usable.
        self.cursors.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new client id (`CLIENT ID`): 1, 2, 3, ... over the server's life.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Cursors the table remembers by default; the oldest is forgotten past that.
pub const DEFAULT_CURSORS: usize = 65_536;

/// SCAN cursors: Redis clients parse a cursor as an unsigned 64-bit integer (redis-cli with
/// `strtoull`, redis-py with `int()`), but a resume point here is a key of up to 1 KiB, so a
/// cursor names an entry of this table holding the key the next call starts at (the
/// successor of the last key returned). Cursors are shared by
/// all the connections of a server (a client may continue a scan on another connection of
/// its pool); the table forgets the oldest past its capacity, and a forgotten or unknown
/// cursor is answered with `ERR invalid cursor`.
///
/// ```
/// let mut t = kv_resp::ScanCursors::new(2);
/// let a = t.save(b"apple".to_vec());
/// assert_ne!(a, 0); // 0 means "start" and "done"
/// assert_eq!(t.get(a), Some(&b"apple"[..]));
/// t.save(b"b".to_vec());
/// t.save(b"c".to_vec());
/// assert_eq!(t.get(a), None); // forgotten: capacity 2
/// ```
#[derive(Debug)]
pub struct ScanCursors {
    by_id: HashMap<u64, Vec<u8>>,
    order: VecDeque<u64>,
    next: u64,
    capacity: usize,
}

impl ScanCursors {
    /// A table remembering up to `capacity` cursors (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            by_id: HashMap::new(),
            order: VecDeque::new(),
            next: 1,
            capacity: capacity.max(1),
        }
    }

    /// Remembers `key` (where the next SCAN call starts) and names it; never 0. Ids stay
    /// below 2^63 so that clients reading them as signed 64-bit integers cope too.
    pub fn save(&mut self, key: Vec<u8>) -> u64 {
        let id = self.next;
        self.next = if self.next >= (1 << 63) - 1 {
            1
        } else {
            self.next + 1
        };
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_id.remove(&old);
                }
                None => break,
            }
        }
        self.by_id.insert(id, key);
        self.order.push_back(id);
        id
    }

    /// The key cursor `id` stands for (kept: a client may retry a call).
    pub fn get(&self, id: u64) -> Option<&[u8]> {
        self.by_id.get(&id).map(Vec::as_slice)
    }

    /// Cursors remembered.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
