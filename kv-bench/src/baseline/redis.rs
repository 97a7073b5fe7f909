//! A small RESP2 client for the same-run Redis baseline: pipelined GET/SET over one
//! non-blocking TCP connection, and starting a throw-away `redis-server`.
//!
//! Replies are parsed defensively: anything malformed or unexpected is an error, never a
//! panic.
use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// A parsed RESP reply (only what GET/SET/PING/INFO produce is kept).
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

/// Longest line or bulk string accepted (Redis's own default proto-max-bulk-len is 512 MB;
/// the bench never stores more than a few KiB).
const MAX_BULK: usize = 64 << 20;

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

fn parse_int(line: &[u8]) -> Result<i64> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("malformed RESP integer {:?}", String::from_utf8_lossy(line)))
}

/// Parses one reply at the start of `buf`: `Ok(None)` if incomplete, else the reply and the
/// bytes it used.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Resp, usize)>> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some(end) = find_crlf(buf) else {
        if buf.len() > MAX_BULK {
            bail!("RESP line longer than {MAX_BULK} bytes");
        }
        return Ok(None);
    };
    let line = &buf[1..end];
    let after = end + 2;
    match kind {
        b'+' => Ok(Some((Resp::Simple(line.to_vec()), after))),
        b'-' => Ok(Some((
            Resp::Error(String::from_utf8_lossy(line).into_owned()),
            after,
        ))),
        b':' => Ok(Some((Resp::Int(parse_int(line)?), after))),
        b'$' => {
            let n = parse_int(line)?;
            if n < 0 {
                return Ok(Some((Resp::Bulk(None), after)));
            }
            let n = usize::try_from(n)?;
            if n > MAX_BULK {
                bail!("RESP bulk string of {n} bytes");
            }
            if buf.len() < after + n + 2 {
                return Ok(None);
            }
            if &buf[after + n..after + n + 2] != b"\r\n" {
                bail!("RESP bulk string not terminated by CRLF");
            }
            Ok(Some((
                Resp::Bulk(Some(buf[after..after + n].to_vec())),
                after + n + 2,
            )))
        }
        b'*' => {
            let n = parse_int(line)?;
            let mut used = after;
            for _ in 0..n.max(0) {
                match parse_reply(&buf[used..])? {
                    Some((_, u)) => used += u,
                    None => return Ok(None),
                }
            }
            Ok(Some((Resp::Array(n), used)))
        }
        other => bail!("unexpected RESP type byte {other:#04x}"),
    }
}

/// Appends a RESP command (array of bulk strings) to `out`.
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
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

/// A `redis-server` started for the run on a free loopback port, without persistence;
/// killed when dropped.
pub struct RedisServer {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `redis-server --version`, first line.
    pub version: String,
}

impl RedisServer {
    /// Starts `redis-server` (error if it is not on PATH) and waits until it answers PING.
    pub fn start() -> Result<Self> {
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
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
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
        let mut out = Vec::new();
        encode_command(&mut out, &[b"SET", b"k", b""]);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n");
    }
}
