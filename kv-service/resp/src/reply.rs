//! Reading replies, as a client does: every RESP2 and RESP3 type into a [`Value`] tree.
//!
//! [`parse_reply`] is total (any bytes give a value, "need more" or an error) and bounded
//! (nesting depth, bulk and aggregate lengths checked before anything is reserved), so it can
//! read from any server. It re-reads a partial reply from its start when more bytes arrive,
//! which suits clients whose replies are small next to their reads (kv-bench, tests).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use crate::encode::{Encoder, Protocol};
use crate::parse::parse_i64;

/// One reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// `+...`
    Simple(Vec<u8>),
    /// `-...` (RESP3 `!` blob errors too).
    Error(Vec<u8>),
    /// `:...`
    Integer(i64),
    /// `$...`
    Bulk(Vec<u8>),
    /// `$-1`, `*-1`, `_`.
    Null,
    /// `*...`
    Array(Vec<Value>),
    /// RESP3 `%...`
    Map(Vec<(Value, Value)>),
    /// RESP3 `~...`
    Set(Vec<Value>),
    /// RESP3 `>...` (out-of-band push data).
    Push(Vec<Value>),
    /// RESP3 `#t` / `#f`.
    Boolean(bool),
    /// RESP3 `,...`, kept as its text.
    Double(Vec<u8>),
    /// RESP3 `(...`, kept as its text.
    BigNumber(Vec<u8>),
    /// RESP3 `=...`: a three-byte format and the text.
    Verbatim {
        /// `txt`, `mkd`, ...
        format: [u8; 3],
        /// The text after `format:`.
        text: Vec<u8>,
    },
}

impl Value {
    /// The bytes of a bulk, simple or verbatim string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(b) | Value::Simple(b) | Value::Verbatim { text: b, .. } => Some(b),
            _ => None,
        }
    }

    /// Whether the reply is an error.
    pub fn is_error(&self) -> bool {
        matches!(self, Value::Error(_))
    }

    /// Appends the reply's encoding in `proto`. RESP3-only types (maps, sets, pushes,
    /// booleans, doubles, big numbers, verbatim strings) are written as RESP3 whatever
    /// `proto` says, except maps, sets and verbatim strings, which [`Encoder`] flattens to
    /// RESP2 arrays and bulk strings.
    pub fn encode(&self, proto: Protocol, out: &mut Vec<u8>) {
        let raw = |out: &mut Vec<u8>, kind: u8, b: &[u8]| {
            out.push(kind);
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        };
        match self {
            Value::Simple(s) => raw(out, b'+', s),
            Value::Error(s) => raw(out, b'-', s),
            Value::Integer(i) => Encoder::new(out, proto).integer(*i),
            Value::Bulk(b) => Encoder::new(out, proto).bulk(b),
            Value::Null => Encoder::new(out, proto).null(),
            Value::Array(items) => {
                Encoder::new(out, proto).array(items.len());
                items.iter().for_each(|v| v.encode(proto, out));
            }
            Value::Map(pairs) => {
                Encoder::new(out, proto).map(pairs.len());
                for (k, v) in pairs {
                    k.encode(proto, out);
                    v.encode(proto, out);
                }
            }
            Value::Set(items) => {
                Encoder::new(out, proto).set(items.len());
                items.iter().for_each(|v| v.encode(proto, out));
            }
            Value::Push(items) => {
                raw(out, b'>', items.len().to_string().as_bytes());
                items.iter().for_each(|v| v.encode(proto, out));
            }
            Value::Boolean(b) => raw(out, b'#', if *b { b"t" } else { b"f" }),
            Value::Double(d) => raw(out, b',', d),
            Value::BigNumber(n) => raw(out, b'(', n),
            Value::Verbatim { format, text } => {
                if *format == *b"txt" {
                    Encoder::new(out, proto).verbatim(text);
                } else {
                    let mut body = format.to_vec();
                    body.push(b':');
                    body.extend_from_slice(text);
                    raw(out, b'=', body.len().to_string().as_bytes());
                    out.extend_from_slice(&body);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
    }
}

/// A reply stream that is not RESP.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// A type byte RESP does not define.
    #[error("unknown reply type byte 0x{0:02x}")]
    UnknownType(u8),
    /// A length or integer line that is not an integer in range.
    #[error("invalid length or integer in reply")]
    BadNumber,
    /// A bulk string or aggregate over the reader's bounds.
    #[error("reply length {0} over the bound")]
    TooLong(i64),
    /// Aggregates nested deeper than [`MAX_DEPTH`].
    #[error("reply nested deeper than {MAX_DEPTH}")]
    TooDeep,
    /// A line or bulk string not ended by CRLF, or a malformed RESP3 scalar.
    #[error("malformed reply framing")]
    Framing,
}

/// Deepest nesting of aggregates [`parse_reply`] accepts.
pub const MAX_DEPTH: usize = 64;
/// Longest bulk string [`parse_reply`] accepts (Redis's largest).
pub const MAX_BULK: i64 = 512 << 20;
/// Most elements of one aggregate [`parse_reply`] accepts.
pub const MAX_ELEMENTS: i64 = 1 << 24;
/// Longest simple line (status, error, number) [`parse_reply`] accepts.
pub const MAX_LINE: usize = 64 << 10;

/// Parses one reply from the start of `buf`: `Ok(Some((value, consumed)))`, `Ok(None)` if
/// `buf` ends inside it, or the error.
///
/// ```
/// use kv_resp::{parse_reply, Value};
/// let r = parse_reply(b"*2\r\n$1\r\nv\r\n$-1\r\n:7").unwrap().unwrap();
/// assert_eq!(r, (Value::Array(vec![Value::Bulk(b"v".to_vec()), Value::Null]), 16));
/// assert_eq!(parse_reply(b"$5\r\nhel").unwrap(), None);
/// assert!(parse_reply(b"?").is_err());
/// ```
pub fn parse_reply(buf: &[u8]) -> Result<Option<(Value, usize)>, ReplyError> {
    match value(buf, 0, 0)? {
        Some((v, end)) => Ok(Some((v, end))),
        None => Ok(None),
    }
}

type Step<T> = Result<Option<(T, usize)>, ReplyError>;

/// The line starting at `pos` (without its CRLF) and the offset past it.
fn line(buf: &[u8], pos: usize) -> Step<&[u8]> {
    let rest = buf.get(pos..).unwrap_or(&[]);
    match memchr::memchr(b'\n', rest) {
        Some(i) => {
            let l = rest.get(..i).unwrap_or(&[]);
            let l = l.strip_suffix(b"\r").ok_or(ReplyError::Framing)?;
            Ok(Some((l, pos + i + 1)))
        }
        None if rest.len() > MAX_LINE => Err(ReplyError::Framing),
        None => Ok(None),
    }
}

fn number(buf: &[u8], pos: usize) -> Step<i64> {
    let Some((l, next)) = line(buf, pos)? else {
        return Ok(None);
    };
    Ok(Some((parse_i64(l).ok_or(ReplyError::BadNumber)?, next)))
}

/// `len` bytes at `pos` then CRLF.
fn blob(buf: &[u8], pos: usize, len: i64) -> Step<Vec<u8>> {
    if !(0..=MAX_BULK).contains(&len) {
        return Err(ReplyError::TooLong(len));
    }
    let end = pos + len as usize;
    let (Some(data), Some(crlf)) = (buf.get(pos..end), buf.get(end..end + 2)) else {
        return Ok(None);
    };
    if crlf != b"\r\n" {
        return Err(ReplyError::Framing);
    }
    Ok(Some((data.to_vec(), end + 2)))
}

fn elements(buf: &[u8], mut pos: usize, n: i64, depth: usize) -> Step<Vec<Value>> {
    if !(0..=MAX_ELEMENTS).contains(&n) {
        return Err(ReplyError::TooLong(n));
    }
    let mut items = Vec::with_capacity((n as usize).min(1024));
    for _ in 0..n {
        let Some((v, next)) = value(buf, pos, depth + 1)? else {
            return Ok(None);
        };
        items.push(v);
        pos = next;
    }
    Ok(Some((items, pos)))
}

fn value(buf: &[u8], pos: usize, depth: usize) -> Step<Value> {
    if depth > MAX_DEPTH {
        return Err(ReplyError::TooDeep);
    }
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let at = pos + 1;
    macro_rules! need {
        ($e:expr) => {
            match $e? {
                Some(x) => x,
                None => return Ok(None),
            }
        };
    }
    let v = match kind {
        b'+' | b'-' | b',' | b'(' => {
            let (l, next) = need!(line(buf, at));
            let l = l.to_vec();
            let v = match kind {
                b'+' => Value::Simple(l),
                b'-' => Value::Error(l),
                b',' => Value::Double(l),
                _ => Value::BigNumber(l),
            };
            (v, next)
        }
        b':' => {
            let (n, next) = need!(number(buf, at));
            (Value::Integer(n), next)
        }
        b'#' => {
            let (l, next) = need!(line(buf, at));
            let b = match l {
                b"t" => true,
                b"f" => false,
                _ => return Err(ReplyError::Framing),
            };
            (Value::Boolean(b), next)
        }
        b'_' => {
            let (l, next) = need!(line(buf, at));
            if !l.is_empty() {
                return Err(ReplyError::Framing);
            }
            (Value::Null, next)
        }
        b'$' | b'!' | b'=' => {
            let (len, next) = need!(number(buf, at));
            if len == -1 && kind == b'$' {
                (Value::Null, next)
            } else {
                let (data, end) = need!(blob(buf, next, len));
                let v = match kind {
                    b'$' => Value::Bulk(data),
                    b'!' => Value::Error(data),
                    _ => {
                        let (fmt, text) = data.split_at_checked(4).ok_or(ReplyError::Framing)?;
                        let format: [u8; 3] = fmt
                            .get(..3)
                            .and_then(|f| f.try_into().ok())
                            .ok_or(ReplyError::Framing)?;
                        if fmt.get(3) != Some(&b':') {
                            return Err(ReplyError::Framing);
                        }
                        Value::Verbatim {
                            format,
                            text: text.to_vec(),
                        }
                    }
                };
                (v, end)
            }
        }
        b'*' | b'~' | b'>' => {
            let (n, next) = need!(number(buf, at));
            if n == -1 && kind == b'*' {
                (Value::Null, next)
            } else {
                let (items, end) = need!(elements(buf, next, n, depth));
                let v = match kind {
                    b'*' => Value::Array(items),
                    b'~' => Value::Set(items),
                    _ => Value::Push(items),
                };
                (v, end)
            }
        }
        b'%' | b'|' => {
            let (n, next) = need!(number(buf, at));
            let (flat, end) = need!(elements(buf, next, n.saturating_mul(2), depth));
            let mut pairs = Vec::with_capacity(flat.len() / 2);
            let mut it = flat.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                pairs.push((k, v));
            }
            if kind == b'|' {
                // Attributes describe the reply that follows; a client that does not ask for
                // them skips them.
                return value(buf, end, depth);
            }
            (Value::Map(pairs), end)
        }
        other => return Err(ReplyError::UnknownType(other)),
    };
    Ok(Some(v))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn resp3_types() {
        let input = b"%2\r\n+a\r\n#t\r\n=8\r\ntxt:abcd\r\n~1\r\n,1.5\r\n";
        let (v, n) = parse_reply(input).unwrap().unwrap();
        assert_eq!(n, input.len());
        assert_eq!(
            v,
            Value::Map(vec![
                (Value::Simple(b"a".to_vec()), Value::Boolean(true)),
                (
                    Value::Verbatim {
                        format: *b"txt",
                        text: b"abcd".to_vec()
                    },
                    Value::Set(vec![Value::Double(b"1.5".to_vec())])
                ),
            ])
        );
        // An attribute is skipped.
        let (v, _) = parse_reply(b"|1\r\n+k\r\n+v\r\n:3\r\n").unwrap().unwrap();
        assert_eq!(v, Value::Integer(3));
    }

    #[test]
    fn bounds_and_framing() {
        assert_eq!(parse_reply(b"$-2\r\n"), Err(ReplyError::TooLong(-2)));
        assert_eq!(parse_reply(b"*-2\r\n"), Err(ReplyError::TooLong(-2)));
        assert_eq!(parse_reply(b"$1\r\nabc"), Err(ReplyError::Framing));
        assert_eq!(parse_reply(b":1\n"), Err(ReplyError::Framing));
        assert_eq!(parse_reply(b"#x\r\n"), Err(ReplyError::Framing));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert_eq!(parse_reply(deep.as_bytes()), Err(ReplyError::TooDeep));
        // A huge announced length reserves nothing and waits for the elements.
        assert_eq!(parse_reply(b"*16777216\r\n"), Ok(None));
    }
}
