//! A small RESP2 client for the same-run Redis baseline and `kv-bench ycsb --target
//! resp=ADDR` (any RESP server: Redis, kv-service's RESP port): pipelined GET/SET over one
//! non-blocking TCP connection, and starting a throw-away `redis-server`.
//!
//! Requests are encoded and replies read with `kv_resp` (the same code kv-service's RESP
//! front-end is tested with): anything malformed or unexpected is an error, never a panic.
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use kv_resp::Value;

/// A RESP reply as the bench uses it (only what GET/SET/PING/INFO produce is kept).
#[derive(Debug, PartialEq, Eq)]
pub enum Resp {
    /// `+...`
    Simple(Vec<u8>),
    /// `-...`
    Error(String),
    /// `:n`
    Int(i64),
    /// `$n` ... (`None` for `$-1`)
    Bulk(Option<Vec<u8>>),
    /// `*n` (elements parsed and dropped; only the count is kept)
    Array(i64),
}

/// Parses one reply at the start of `buf` (with `kv_resp`'s reader): `Ok(None)` if
/// incomplete, else the reply and the bytes it used. RESP3-only types are errors: the
/// connection never asks for RESP3.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Resp, usize)>> {
    let Some((v, used)) = kv_resp::parse_reply(buf).context("malformed RESP reply")? else {
        return Ok(None);
    };
    let r = match v {
        Value::Simple(s) => Resp::Simple(s),
        Value::Error(e) => Resp::Error(String::from_utf8_lossy(&e).into_owned()),
        Value::Integer(i) => Resp::Int(i),
        Value::Bulk(b) => Resp::Bulk(Some(b)),
        Value::Null => Resp::Bulk(None),
        Value::Array(items) => Resp::Array(items.len() as i64),
        other => bail!("unexpected RESP3 reply {other:?} on a RESP2 connection"),
    };
    Ok(Some((r, used)))
}

/// Appends a RESP command (array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    kv_resp::encode_request(args, out);
}

/// One pipelined connection. Commands are buffered by [`RedisConn::send`] and written by
/// [`RedisConn::poll`]; replies come back in order, each with the tag it was sent with.
pub struct RedisConn {
    stream: TcpStream,
    wbuf: Vec<u8>,
    wpos: usize,
    rbuf: Vec<u8>,
    rpos: usize,
    tags: VecDeque<u64>,
}

impl RedisConn {
    /// Connects (TCP_NODELAY, non-blocking) and checks the server with PING.
    pub fn connect(addr: &str) -> Result<Self> {
        let sa = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .ok_or_else(|| anyhow!("no address for {addr}"))?;
        let stream = TcpStream::connect_timeout(&sa, Duration::from_secs(2))
            .with_context(|| format!("connecting to Redis at {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_nonblocking(true)?;
        let mut c = Self {
            stream,
            wbuf: Vec::with_capacity(64 << 10),
            wpos: 0,
            rbuf: Vec::with_capacity(64 << 10),
            rpos: 0,
            tags: VecDeque::new(),
        };
        match c.call(&[b"PING"])? {
            Resp::Simple(s) if s == b"PONG" => Ok(c),
            other => bail!("unexpected answer to PING from {addr}: {other:?}"),
        }
    }

    /// Queues a command; its reply comes out of [`RedisConn::poll`] with `tag`.
    pub fn send(&mut self, args: &[&[u8]], tag: u64) {
        encode_command(&mut self.wbuf, args);
        self.tags.push_back(tag);
    }

    /// Writes what is buffered, reads what has arrived, and appends every complete reply to
    /// `out`. Never blocks.
    pub fn poll(&mut self, out: &mut Vec<(u64, Resp)>) -> Result<()> {
        while self.wpos < self.wbuf.len() {
            match self.stream.write(&self.wbuf[self.wpos..]) {
                Ok(0) => bail!("Redis closed the connection"),
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("writing to Redis"),
            }
        }
        if self.wpos == self.wbuf.len() {
            self.wbuf.clear();
            self.wpos = 0;
        }
        if self.tags.is_empty() {
            return Ok(());
        }
        let mut chunk = [0u8; 64 << 10];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => bail!("Redis closed the connection"),
                Ok(n) => {
                    self.rbuf.extend_from_slice(&chunk[..n]);
                    if n < chunk.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).context("reading from Redis"),
            }
        }
        while let Some((reply, used)) = parse_reply(&self.rbuf[self.rpos..])? {
            self.rpos += used;
            let tag = self
                .tags
                .pop_front()
                .ok_or_else(|| anyhow!("Redis sent a reply nobody asked for"))?;
            out.push((tag, reply));
        }
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > (1 << 20) {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        Ok(())
    }

    /// Sends one command and waits (≤ 5 s) for its reply. Only when nothing else is in flight.
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Resp> {
        if !self.tags.is_empty() {
            bail!("RedisConn::call with requests in flight");
        }
        self.send(args, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut out = Vec::new();
        loop {
            self.poll(&mut out)?;
            if let Some((_, r)) = out.pop() {
                return Ok(r);
            }
            if Instant::now() > deadline {
                bail!("no answer from Redis within 5 s");
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }
}

/// Where `redis-server` is on PATH, if it is.
pub fn find_redis_server() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("redis-server"))
        .find(|p| p.is_file())
}

/// What a started `redis-server` persists, so that every ratio names the durability it
/// compares against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RedisPersistence {
    /// `--appendonly no --save ""`: nothing (in-memory only).
    None,
    /// `--appendonly yes --appendfsync everysec`: survives a process crash; a power cut loses
    /// up to the last second (Redis's recommended setting; kv-service's `periodic`).
    AofEverysec,
    /// `--appendonly yes --appendfsync always`: every acknowledged write is fsynced
    /// (kv-service's `sync`).
    AofAlways,
}

impl RedisPersistence {
    /// The baseline's name in reports: `redis`, `redis-aof`, `redis-sync`.
    pub fn system_name(self) -> &'static str {
        match self {
            RedisPersistence::None => "redis",
            RedisPersistence::AofEverysec => "redis-aof",
            RedisPersistence::AofAlways => "redis-sync",
        }
    }

    /// The settings, as the report states them.
    pub fn describe(self) -> &'static str {
        match self {
            RedisPersistence::None => "no persistence (appendonly no, save \"\")",
            RedisPersistence::AofEverysec => "appendonly yes, appendfsync everysec",
            RedisPersistence::AofAlways => "appendonly yes, appendfsync always",
        }
    }

    fn args(self) -> &'static [&'static str] {
        match self {
            RedisPersistence::None => &["--save", "", "--appendonly", "no"],
            RedisPersistence::AofEverysec => &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
            ],
            RedisPersistence::AofAlways => &[
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ],
        }
    }
}

/// A `redis-server` started for the run on a free loopback port, with the persistence asked
/// for (its files in a directory of the caller's); killed when dropped.
pub struct RedisServer {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `redis-server --version`, first line.
    pub version: String,
}

impl RedisServer {
    /// Starts `redis-server` (error if it is not on PATH) with `persistence`, its append-only
    /// file under `dir` (which should be on the disk under test, not tmpfs), and waits until
    /// it answers PING.
    pub fn start_with(
        persistence: RedisPersistence,
        dir: Option<&std::path::Path>,
    ) -> Result<Self> {
        let bin = find_redis_server().ok_or_else(|| {
            anyhow!(
                "redis-server is not on PATH: install it (Debian: apt-get install redis-server) \
                 or give a running server with --baseline redis=HOST:PORT"
            )
        })?;
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(persistence.args())
            .args(["--protected-mode", "no"]);
        if let Some(d) = dir {
            cmd.arg("--dir").arg(d);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut server = Self {
            child,
            addr: format!("127.0.0.1:{port}"),
            version,
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                bail!("redis-server exited at start ({status})");
            }
            if RedisConn::connect(&server.addr).is_ok() {
                return Ok(server);
            }
            if Instant::now() > deadline {
                bail!("redis-server did not answer on {} within 5 s", server.addr);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_replies_and_rejects_garbage() {
        assert_eq!(parse_reply(b"").unwrap(), None);
        assert_eq!(
            parse_reply(b"+OK\r\n").unwrap(),
            Some((Resp::Simple(b"OK".to_vec()), 5))
        );
        assert_eq!(
            parse_reply(b"$-1\r\n").unwrap(),
            Some((Resp::Bulk(None), 5))
        );
        assert_eq!(
            parse_reply(b"$3\r\nab\r\r\n+OK").unwrap(),
            Some((Resp::Bulk(Some(b"ab\r".to_vec())), 9))
        );
        assert_eq!(parse_reply(b"$3\r\nab").unwrap(), None);
        assert_eq!(parse_reply(b"+OK").unwrap(), None);
        assert_eq!(parse_reply(b":42\r\n").unwrap(), Some((Resp::Int(42), 5)));
        assert_eq!(
            parse_reply(b"*2\r\n$1\r\na\r\n:1\r\n").unwrap(),
            Some((Resp::Array(2), 15))
        );
        assert_eq!(parse_reply(b"*2\r\n$1\r\na\r\n").unwrap(), None);
        assert!(matches!(
            parse_reply(b"-ERR x\r\n").unwrap(),
            Some((Resp::Error(_), 8))
        ));
        assert!(parse_reply(b"?\r\n").is_err());
        assert!(parse_reply(b"$x\r\n").is_err());
        assert!(parse_reply(b"$2\r\nabcd").is_err());
        assert!(parse_reply(b"$99999999999\r\n").is_err());
        assert!(parse_reply(b"%1\r\n+a\r\n+b\r\n").is_err(), "RESP3 map");
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }
}
