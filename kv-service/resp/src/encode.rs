//! Writing RESP: replies (server side, RESP2 or RESP3) and requests (client side).
//!
//! Every function appends to a `Vec<u8>` and cannot fail. Simple strings and errors must not
//! contain CR or LF (RESP has no escape for them), so [`Encoder::simple`] and
//! [`Encoder::error`] replace them with blanks, as Redis does for error messages.

/// The reply protocol a connection speaks: RESP2 until the client says `HELLO 3`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// RESP2: nulls are `$-1`, maps and sets are flat arrays.
    #[default]
    Resp2,
    /// RESP3: `_` null, `%` maps, `~` sets, `=` verbatim strings.
    Resp3,
}

impl Protocol {
    /// The number `HELLO` names it by.
    pub fn version(self) -> i64 {
        match self {
            Protocol::Resp2 => 2,
            Protocol::Resp3 => 3,
        }
    }
}

/// Appends replies to a buffer in one protocol version.
///
/// ```
/// use kv_resp::{Encoder, Protocol};
/// let mut out = Vec::new();
/// let mut e = Encoder::new(&mut out, Protocol::Resp2);
/// e.array(2);
/// e.bulk(b"v");
/// e.null();
/// e.error("ERR bad\r\nthing");
/// assert_eq!(out, b"*2\r\n$1\r\nv\r\n$-1\r\n-ERR bad  thing\r\n");
/// ```
#[derive(Debug)]
pub struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    proto: Protocol,
}

impl<'a> Encoder<'a> {
    /// An encoder appending to `out`.
    pub fn new(out: &'a mut Vec<u8>, proto: Protocol) -> Self {
        Self { out, proto }
    }

    /// The protocol version it writes.
    pub fn protocol(&self) -> Protocol {
        self.proto
    }

    /// `+OK`.
    pub fn ok(&mut self) {
        self.out.extend_from_slice(b"+OK\r\n");
    }

    /// A simple string (CR and LF become blanks).
    pub fn simple(&mut self, s: &str) {
        self.line(b'+', s.as_bytes());
    }

    /// An error: `msg` starts with its code (`ERR`, `NOAUTH`, ...). CR and LF become blanks.
    pub fn error(&mut self, msg: &str) {
        self.line(b'-', msg.as_bytes());
    }

    /// An integer.
    pub fn integer(&mut self, v: i64) {
        self.out.push(b':');
        self.number(v);
    }

    /// A bulk string.
    pub fn bulk(&mut self, b: &[u8]) {
        self.out.reserve(b.len() + 16);
        self.out.push(b'$');
        self.number(b.len() as i64);
        self.out.extend_from_slice(b);
        self.out.extend_from_slice(b"\r\n");
    }

    /// A bulk string holding the decimal form of `v`.
    pub fn bulk_u64(&mut self, v: u64) {
        let mut b = itoa::Buffer::new();
        self.bulk(b.format(v).as_bytes());
    }

    /// The null reply: `$-1` (RESP2), `_` (RESP3).
    pub fn null(&mut self) {
        match self.proto {
            Protocol::Resp2 => self.out.extend_from_slice(b"$-1\r\n"),
            Protocol::Resp3 => self.out.extend_from_slice(b"_\r\n"),
        }
    }

    /// An array header: `len` replies follow.
    pub fn array(&mut self, len: usize) {
        self.header(b'*', len);
    }

    /// A map header: `len` key/value pairs follow (RESP2: an array of `2 * len`).
    pub fn map(&mut self, len: usize) {
        match self.proto {
            Protocol::Resp2 => self.header(b'*', len.saturating_mul(2)),
            Protocol::Resp3 => self.header(b'%', len),
        }
    }

    /// A set header: `len` replies follow (RESP2: an array).
    pub fn set(&mut self, len: usize) {
        match self.proto {
            Protocol::Resp2 => self.header(b'*', len),
            Protocol::Resp3 => self.header(b'~', len),
        }
    }

    /// Text meant for people (INFO): a verbatim string of format `txt` in RESP3, a bulk
    /// string in RESP2.
    pub fn verbatim(&mut self, text: &[u8]) {
        match self.proto {
            Protocol::Resp2 => self.bulk(text),
            Protocol::Resp3 => {
                self.out.push(b'=');
                self.number(text.len() as i64 + 4);
                self.out.extend_from_slice(b"txt:");
                self.out.extend_from_slice(text);
                self.out.extend_from_slice(b"\r\n");
            }
        }
    }

    fn header(&mut self, kind: u8, len: usize) {
        self.out.push(kind);
        self.number(i64::try_from(len).unwrap_or(i64::MAX));
    }

    fn number(&mut self, v: i64) {
        let mut b = itoa::Buffer::new();
        self.out.extend_from_slice(b.format(v).as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn line(&mut self, kind: u8, s: &[u8]) {
        self.out.reserve(s.len() + 3);
        self.out.push(kind);
        self.out.extend(
            s.iter()
                .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
        );
        self.out.extend_from_slice(b"\r\n");
    }
}

/// Appends a request (an array of bulk strings), as a client sends it.
///
/// ```
/// let mut out = Vec::new();
/// kv_resp::encode_request(&[&b"GET"[..], b"k"], &mut out);
/// assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
/// ```
pub fn encode_request<A: AsRef<[u8]>>(args: &[A], out: &mut Vec<u8>) {
    let mut e = Encoder::new(out, Protocol::Resp2);
    e.array(args.len());
    for a in args {
        e.bulk(a.as_ref());
    }
}
