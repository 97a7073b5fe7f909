//! The request parser: RESP2 arrays of bulk strings (what every client library, redis-cli and
//! redis-benchmark send) and inline commands (a line of words, what `telnet` or `nc` send).
//!
//! The parser reads from a buffer the caller owns and hands back a [`Command`] whose
//! arguments are slices of that buffer: nothing is copied and nothing is allocated per
//! argument (the argument positions go into one vector the parser reuses; inline commands,
//! whose quoting can change the bytes, are unescaped into one reused scratch buffer).
//!
//! It is incremental: when the buffer ends inside a frame, [`Parser::parse`] returns
//! `Ok(None)` and remembers how far it got, so the next call (with more bytes appended)
//! resumes there instead of starting over; a frame split at any points parses the same as the
//! frame in one piece. Every length is checked against [`ParseLimits`] before anything is
//! reserved for it, and no input can make it panic (the lints below make the compiler check
//! that no indexing can).
//!
//! Grammar accepted (as Redis's `processMultibulkBuffer` and `processInlineBuffer`, a little
//! stricter where Redis skips bytes unchecked):
//!
//! ```text
//! frame      = multibulk / inline
//! multibulk  = "*" count CRLF *( "$" length CRLF <length bytes> CRLF )
//! inline     = <bytes other than LF, not starting with "*"> [CR] LF
//! ```
//!
//! `count` ≤ 0 is an empty frame (ignored, as Redis does); an inline line is split into words
//! like Redis's `sdssplitargs` (blanks separate words; `"..."` with `\n \r \t \b \a \\ \" \xHH`
//! escapes and `'...'` with `\'` quote them).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

/// Bounds the parser enforces on every frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseLimits {
    /// Most arguments in one command (Redis: 1 048 576).
    pub max_args: usize,
    /// Longest bulk string (Redis's `proto-max-bulk-len`, 512 MiB by default).
    pub max_bulk_len: usize,
    /// Longest inline command line, and longest `*`/`$` count line (Redis: 64 KiB).
    pub max_inline_len: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_args: 1 << 20,
            max_bulk_len: 8 << 20,
            max_inline_len: 64 << 10,
        }
    }
}

/// A malformed request stream. The messages follow Redis's (`Protocol error: ...`); after
/// one, the stream cannot be resynchronised and the connection must be closed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The `*` line is not an integer, or is too large.
    #[error("Protocol error: invalid multibulk length")]
    InvalidMultibulkLength,
    /// More arguments than [`ParseLimits::max_args`].
    #[error("Protocol error: {count} arguments exceed the limit of {max}")]
    TooManyArgs {
        /// Arguments announced.
        count: u64,
        /// The limit.
        max: usize,
    },
    /// An array element does not start with `$`.
    #[error("Protocol error: expected '$', got '{}'", char::from(*.0).escape_default())]
    ExpectedBulk(u8),
    /// The `$` line is not a non-negative integer.
    #[error("Protocol error: invalid bulk length")]
    InvalidBulkLength,
    /// A bulk string longer than [`ParseLimits::max_bulk_len`].
    #[error("Protocol error: bulk length {len} exceeds the limit of {max} bytes")]
    BulkTooLarge {
        /// Length announced.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A bulk string not followed by CRLF.
    #[error("Protocol error: expected CRLF after bulk data")]
    MissingCrlf,
    /// A `*` or `$` line whose CR is not followed by LF.
    #[error("Protocol error: expected LF after CR")]
    MissingLf,
    /// A `*` or `$` line longer than [`ParseLimits::max_inline_len`] without its CRLF.
    #[error("Protocol error: too big count string")]
    CountLineTooLong,
    /// An inline command longer than [`ParseLimits::max_inline_len`] without its LF.
    #[error("Protocol error: too big inline request")]
    InlineTooLong,
    /// An inline command with an unterminated quote, or a closing quote not followed by a
    /// blank.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// Where one argument lies in the bytes a [`Command`] refers to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Span {
    start: usize,
    len: usize,
}

/// Where the parse of the current frame stands. Offsets are relative to the start of the
/// buffer given to [`Parser::parse`], which is the frame's first byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// At a frame's first byte; `scanned` bytes were searched for the line end already.
    Start { scanned: usize },
    /// Inside a multibulk of `argc` arguments; the next `$` header starts at `pos`.
    Header {
        argc: usize,
        pos: usize,
        scanned: usize,
    },
    /// Waiting for `len` bytes of bulk data at `data`, then CRLF.
    Bulk {
        argc: usize,
        data: usize,
        len: usize,
    },
}

/// An incremental RESP request parser (one per connection).
///
/// ```
/// use kv_resp::Parser;
/// let mut p = Parser::default();
/// let stream = b"*2\r\n$3\r\nGET\r\n$5\r\nhello\r\nPING\r\n";
/// let mut buf = Vec::new();
/// buf.extend_from_slice(&stream[..10]); // a partial frame
/// assert!(p.parse(&buf).unwrap().is_none());
/// buf.extend_from_slice(&stream[10..]);
/// let cmd = p.parse(&buf).unwrap().unwrap();
/// assert_eq!(cmd.args().collect::<Vec<_>>(), [&b"GET"[..], b"hello"]);
/// let used = cmd.consumed();
/// buf.drain(..used); // the caller consumes the frame
/// let cmd = p.parse(&buf).unwrap().unwrap(); // an inline command
/// assert_eq!(cmd.arg(0), Some(&b"PING"[..]));
/// ```
#[derive(Debug)]
pub struct Parser {
    limits: ParseLimits,
    state: State,
    spans: Vec<Span>,
    scratch: Vec<u8>,
}

impl Default for Parser {
    fn default() -> Self {
        Self::new(ParseLimits::default())
    }
}

/// Longest decimal `*`/`$` count we accept before the CRLF: the sign and 19 digits of an
/// `i64` (anything longer is not a valid count and fails as such).
const MAX_COUNT_DIGITS: usize = 20;

/// Arguments reserved up front at most, whatever the count says (the vector grows with the
/// arguments that really arrive, so a lying count costs nothing).
const RESERVE_ARGS: usize = 64;

impl Parser {
    /// A parser enforcing `limits`.
    pub fn new(limits: ParseLimits) -> Self {
        Self {
            limits,
            state: State::Start { scanned: 0 },
            spans: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &ParseLimits {
        &self.limits
    }

    /// Parses the next frame from `buf`, which must start at the first byte not yet consumed.
    ///
    /// - `Ok(Some(cmd))`: a complete frame; the caller consumes [`Command::consumed`] bytes
    ///   before the next call. A frame may be empty (`*0\r\n`, a blank line): consume it and
    ///   go on.
    /// - `Ok(None)`: `buf` ends inside a frame. Call again with the same bytes and more
    ///   appended; the parse resumes where it stopped.
    /// - `Err(e)`: the stream is malformed; the parser is reset, but the stream cannot be
    ///   resynchronised.
    pub fn parse<'a>(&'a mut self, buf: &'a [u8]) -> Result<Option<Command<'a>>, ProtocolError> {
        match self.advance(buf) {
            Ok(Some(done)) => Ok(Some(self.command(buf, done))),
            Ok(None) => Ok(None),
            Err(e) => {
                self.reset();
                Err(e)
            }
        }
    }

    /// Forgets the frame in progress.
    pub fn reset(&mut self) {
        self.state = State::Start { scanned: 0 };
        self.spans.clear();
    }

    /// Whether a frame is partly parsed.
    pub fn in_frame(&self) -> bool {
        self.state != State::Start { scanned: 0 }
    }

    /// The buffer length the current frame needs at least (from its first byte): known
    /// exactly while waiting for bulk data, otherwise `buffered + 1`. A caller uses it to
    /// size its buffer for a large argument, and to refuse a frame larger than its bound
    /// before receiving it.
    pub fn needed(&self, buffered: usize) -> usize {
        match self.state {
            State::Bulk { data, len, .. } => data.saturating_add(len).saturating_add(2),
            _ => buffered.saturating_add(1),
        }
    }

    fn command<'a>(&'a self, buf: &'a [u8], done: Done) -> Command<'a> {
        Command {
            src: if done.inline { &self.scratch } else { buf },
            spans: &self.spans,
            consumed: done.consumed,
        }
    }

    /// Runs the state machine as far as `buf` allows.
    fn advance(&mut self, buf: &[u8]) -> Result<Option<Done>, ProtocolError> {
        loop {
            match self.state {
                State::Start { scanned } => {
                    let Some(&first) = buf.first() else {
                        return Ok(None);
                    };
                    if first != b'*' {
                        return self.inline(buf, scanned);
                    }
                    let Some((count, next)) = self.count_line(buf, 1, scanned)? else {
                        return Ok(None);
                    };
                    let count = count.ok_or(ProtocolError::InvalidMultibulkLength)?;
                    if count > i64::from(i32::MAX) {
                        return Err(ProtocolError::InvalidMultibulkLength);
                    }
                    self.spans.clear();
                    if count <= 0 {
                        self.state = State::Start { scanned: 0 };
                        return Ok(Some(Done::multibulk(next)));
                    }
                    let argc = count as usize;
                    if argc > self.limits.max_args {
                        return Err(ProtocolError::TooManyArgs {
                            count: count as u64,
                            max: self.limits.max_args,
                        });
                    }
                    self.spans.reserve(argc.min(RESERVE_ARGS));
                    self.state = State::Header {
                        argc,
                        pos: next,
                        scanned: next,
                    };
                }
                State::Header { argc, pos, scanned } => {
                    let Some(&b) = buf.get(pos) else {
                        return Ok(None);
                    };
                    if b != b'$' {
                        return Err(ProtocolError::ExpectedBulk(b));
                    }
                    let Some((len, data)) = self.count_line(buf, pos + 1, scanned)? else {
                        return Ok(None);
                    };
                    let len = len
                        .filter(|&l| l >= 0)
                        .ok_or(ProtocolError::InvalidBulkLength)?;
                    let len = len as u64;
                    if len > self.limits.max_bulk_len as u64 {
                        return Err(ProtocolError::BulkTooLarge {
                            len,
                            max: self.limits.max_bulk_len,
                        });
                    }
                    self.state = State::Bulk {
                        argc,
                        data,
                        len: len as usize,
                    };
                }
                State::Bulk { argc, data, len } => {
                    let end = data + len;
                    let Some(crlf) = buf.get(end..end + 2) else {
                        return Ok(None);
                    };
                    if crlf != b"\r\n" {
                        return Err(ProtocolError::MissingCrlf);
                    }
                    self.spans.push(Span { start: data, len });
                    let pos = end + 2;
                    if self.spans.len() == argc {
                        self.state = State::Start { scanned: 0 };
                        return Ok(Some(Done::multibulk(pos)));
                    }
                    self.state = State::Header {
                        argc,
                        pos,
                        scanned: pos,
                    };
                }
            }
        }
    }

    /// Reads a `*`/`$` count line whose digits start at `from`: `Ok(None)` if its CRLF has
    /// not arrived (remembering how far was searched), else the value (`None` if it is not
    /// an integer as Redis's `string2ll` reads one) and the offset past the CRLF.
    fn count_line(
        &mut self,
        buf: &[u8],
        from: usize,
        scanned: usize,
    ) -> Result<Option<(Option<i64>, usize)>, ProtocolError> {
        let search_from = scanned.max(from);
        let window_end = buf
            .len()
            .min(from.saturating_add(self.limits.max_inline_len));
        let hay = buf.get(search_from..window_end).unwrap_or(&[]);
        let Some(i) = memchr::memchr(b'\r', hay) else {
            if window_end - from >= self.limits.max_inline_len {
                return Err(ProtocolError::CountLineTooLong);
            }
            self.set_scanned(window_end);
            return Ok(None);
        };
        let cr = search_from + i;
        match buf.get(cr + 1) {
            None => {
                // The CR is here, its LF is not: search from the CR again next time.
                self.set_scanned(cr);
                Ok(None)
            }
            Some(b'\n') => {
                let digits = buf.get(from..cr).unwrap_or(&[]);
                Ok(Some((parse_i64(digits), cr + 2)))
            }
            Some(_) => Err(ProtocolError::MissingLf),
        }
    }

    fn set_scanned(&mut self, to: usize) {
        match &mut self.state {
            State::Start { scanned } | State::Header { scanned, .. } => *scanned = to,
            State::Bulk { .. } => {}
        }
    }

    /// An inline command: everything up to LF, split into words.
    fn inline(&mut self, buf: &[u8], scanned: usize) -> Result<Option<Done>, ProtocolError> {
        let window_end = buf.len().min(self.limits.max_inline_len.saturating_add(1));
        let hay = buf.get(scanned..window_end).unwrap_or(&[]);
        let Some(i) = memchr::memchr(b'\n', hay) else {
            if buf.len() > self.limits.max_inline_len {
                return Err(ProtocolError::InlineTooLong);
            }
            self.state = State::Start { scanned: buf.len() };
            return Ok(None);
        };
        let nl = scanned + i;
        let mut line = buf.get(..nl).unwrap_or(&[]);
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        self.state = State::Start { scanned: 0 };
        split_args(
            line,
            self.limits.max_args,
            &mut self.scratch,
            &mut self.spans,
        )?;
        Ok(Some(Done {
            consumed: nl + 1,
            inline: true,
        }))
    }
}

/// A complete frame: its length, and whether its arguments are in the scratch buffer.
#[derive(Clone, Copy)]
struct Done {
    consumed: usize,
    inline: bool,
}

impl Done {
    fn multibulk(consumed: usize) -> Self {
        Self {
            consumed,
            inline: false,
        }
    }
}

/// Parses a signed decimal integer exactly as Redis's `string2ll`: no sign but `-`, no
/// leading zeros (except `0` itself), no blanks, no overflow.
pub fn parse_i64(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > MAX_COUNT_DIGITS {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    // Accumulate negatively so that i64::MIN parses.
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_sub(i64::from(d - b'0'))?;
    }
    if neg {
        Some(v)
    } else {
        v.checked_neg()
    }
}

/// Parses an unsigned decimal integer with the same strictness as [`parse_i64`].
pub fn parse_u64(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > MAX_COUNT_DIGITS {
        return None;
    }
    if s == b"0" {
        return Some(0);
    }
    match s.first() {
        Some(b'1'..=b'9') => {}
        _ => return None,
    }
    let mut v: u64 = 0;
    for &d in s {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(v)
}

fn is_hex(b: u8) -> bool {
    b.is_ascii_hexdigit()
}

fn hex_val(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => 0,
    }
}

/// Splits an inline line into words the way Redis's `sdssplitargs` does, writing the words
/// into `out` (cleared first) and their positions into `spans`; more than `max_args` words
/// is an error. Redis works on a C string, so a NUL byte ends the line there.
fn split_args(
    line: &[u8],
    max_args: usize,
    out: &mut Vec<u8>,
    spans: &mut Vec<Span>,
) -> Result<(), ProtocolError> {
    out.clear();
    spans.clear();
    let line = match memchr::memchr(0, line) {
        Some(nul) => line.get(..nul).unwrap_or(&[]),
        None => line,
    };
    let at = |i: usize| line.get(i).copied();
    // sdssplitargs skips with isspace(): blank, \t, \n, \v, \f, \r.
    let is_space = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let mut p = 0;
    loop {
        while at(p).is_some_and(is_space) {
            p += 1;
        }
        if at(p).is_none() {
            return Ok(());
        }
        let start = out.len();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            let Some(c) = at(p) else {
                if in_dq || in_sq {
                    return Err(ProtocolError::UnbalancedQuotes);
                }
                break;
            };
            if in_dq {
                if c == b'\\'
                    && at(p + 1) == Some(b'x')
                    && at(p + 2).is_some_and(is_hex)
                    && at(p + 3).is_some_and(is_hex)
                {
                    let (h, l) = (at(p + 2).unwrap_or(0), at(p + 3).unwrap_or(0));
                    out.push(hex_val(h) * 16 + hex_val(l));
                    p += 4;
                } else if c == b'\\' && at(p + 1).is_some() {
                    let e = at(p + 1).unwrap_or(0);
                    out.push(match e {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        other => other,
                    });
                    p += 2;
                } else if c == b'"' {
                    // The closing quote must be followed by a blank or the end.
                    if at(p + 1).is_some_and(|n| !is_space(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else {
                    out.push(c);
                    p += 1;
                }
            } else if in_sq {
                if c == b'\\' && at(p + 1) == Some(b'\'') {
                    out.push(b'\'');
                    p += 2;
                } else if c == b'\'' {
                    if at(p + 1).is_some_and(|n| !is_space(n)) {
                        return Err(ProtocolError::UnbalancedQuotes);
                    }
                    p += 1;
                    break;
                } else {
                    out.push(c);
                    p += 1;
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' => {
                        p += 1;
                        break;
                    }
                    b'"' => in_dq = true,
                    b'\'' => in_sq = true,
                    other => out.push(other),
                }
                p += 1;
            }
        }
        if spans.len() == max_args {
            return Err(ProtocolError::TooManyArgs {
                count: spans.len() as u64 + 1,
                max: max_args,
            });
        }
        spans.push(Span {
            start,
            len: out.len() - start,
        });
    }
}

/// One parsed command: its arguments (the name first) as slices of the parsed buffer.
///
/// It borrows the buffer and the parser, so it must be used (or copied out) before the
/// caller consumes the frame and parses the next.
#[derive(Clone, Copy, Debug)]
pub struct Command<'a> {
    src: &'a [u8],
    spans: &'a [Span],
    consumed: usize,
}

impl<'a> Command<'a> {
    /// Bytes of the buffer this frame took.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// Number of arguments, the command name included (0 for an empty frame).
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether the frame was empty (`*0`, a blank line).
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Argument `i` (0 is the command name).
    pub fn arg(&self, i: usize) -> Option<&'a [u8]> {
        let s = self.spans.get(i)?;
        self.src.get(s.start..s.start + s.len)
    }

    /// The arguments in order, the name first.
    pub fn args(&self) -> impl ExactSizeIterator<Item = &'a [u8]> + Clone + 'a {
        let src = self.src;
        self.spans
            .iter()
            .map(move |s| src.get(s.start..s.start + s.len).unwrap_or(&[]))
    }

    /// The arguments copied out.
    pub fn to_vec(&self) -> Vec<Vec<u8>> {
        self.args().map(<[u8]>::to_vec).collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    /// Every frame of `input` (parsed whole), or the error that stopped the parse.
    fn parse_all(input: &[u8], limits: ParseLimits) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>) {
        let mut p = Parser::new(limits);
        let mut pos = 0;
        let mut out = Vec::new();
        loop {
            match p.parse(&input[pos..]) {
                Ok(Some(c)) => {
                    pos += c.consumed();
                    if !c.is_empty() {
                        out.push(c.to_vec());
                    }
                }
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    fn words(v: &[&str]) -> Vec<Vec<u8>> {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    #[test]
    fn multibulk_and_inline() {
        let (cmds, err) = parse_all(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\nPING\r\nget  k\n*0\r\n\r\n*-1\r\n",
            ParseLimits::default(),
        );
        assert_eq!(err, None);
        assert_eq!(
            cmds,
            vec![
                words(&["SET", "k", ""]),
                words(&["PING"]),
                words(&["get", "k"])
            ]
        );
    }

    #[test]
    fn binary_bulk_data_is_kept_as_is() {
        let (cmds, err) = parse_all(b"*1\r\n$4\r\n\r\n\0\xff\r\n", ParseLimits::default());
        assert_eq!(err, None);
        assert_eq!(cmds, vec![vec![b"\r\n\0\xff".to_vec()]]);
    }

    #[test]
    fn inline_quoting_follows_sdssplitargs() {
        let (cmds, err) = parse_all(
            b"set \"a b\" 'c\\'d' \"\\x41\\n\\q\" e\"f g\"h\r\n",
            ParseLimits::default(),
        );
        // e"f g"h: a quote inside a word opens a quoted part, whose closing quote must be
        // followed by a blank.
        assert_eq!(err, Some(ProtocolError::UnbalancedQuotes));
        assert!(cmds.is_empty());
        let (cmds, err) = parse_all(
            b"set \"a b\" 'c\\'d' \"\\x41\\n\\q\" e\"f g\"\r\n",
            ParseLimits::default(),
        );
        assert_eq!(err, None);
        assert_eq!(
            cmds,
            vec![vec![
                b"set".to_vec(),
                b"a b".to_vec(),
                b"c'd".to_vec(),
                b"A\nq".to_vec(),
                b"ef g".to_vec()
            ]]
        );
        let (_, err) = parse_all(b"get \"abc\n", ParseLimits::default());
        assert_eq!(err, Some(ProtocolError::UnbalancedQuotes));
        // A NUL ends the line, as in Redis (it splits a C string).
        let (cmds, _) = parse_all(b"get a\0b c\n", ParseLimits::default());
        assert_eq!(cmds, vec![words(&["get", "a"])]);
    }

    #[test]
    fn errors_name_the_problem() {
        let l = ParseLimits::default();
        let cases: &[(&[u8], ProtocolError)] = &[
            (b"*x\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*01\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*+1\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*3000000000\r\n", ProtocolError::InvalidMultibulkLength),
            (b"*1\r\n:1\r\n", ProtocolError::ExpectedBulk(b':')),
            (b"*1\r\n$-1\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$\r\n", ProtocolError::InvalidBulkLength),
            (b"*1\r\n$1\r\nab\r\n", ProtocolError::MissingCrlf),
            (b"*1\r\n$1\rx", ProtocolError::MissingLf),
        ];
        for (input, want) in cases {
            assert_eq!(parse_all(input, l).1.as_ref(), Some(want), "{input:?}");
        }
        let tight = ParseLimits {
            max_args: 2,
            max_bulk_len: 4,
            max_inline_len: 8,
        };
        assert_eq!(
            parse_all(b"*3\r\n", tight).1,
            Some(ProtocolError::TooManyArgs { count: 3, max: 2 })
        );
        assert_eq!(
            parse_all(b"*1\r\n$5\r\n", tight).1,
            Some(ProtocolError::BulkTooLarge { len: 5, max: 4 })
        );
        assert_eq!(
            parse_all(b"get abcdefgh", tight).1,
            Some(ProtocolError::InlineTooLong)
        );
        assert_eq!(parse_all(b"get abc", tight).1, None, "not too long yet");
        assert_eq!(
            parse_all(b"a b c\n", tight).1,
            Some(ProtocolError::TooManyArgs { count: 3, max: 2 })
        );
        assert_eq!(
            parse_all(b"*123456789", tight).1,
            Some(ProtocolError::CountLineTooLong)
        );
        assert_eq!(
            ProtocolError::ExpectedBulk(b'\n').to_string(),
            "Protocol error: expected '$', got '\\n'"
        );
    }

    #[test]
    fn a_partial_frame_resumes_and_reports_what_it_needs() {
        let mut p = Parser::default();
        let frame = b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
        assert!(p.parse(&frame[..18]).unwrap().is_none());
        assert!(p.in_frame());
        // The 10-byte bulk starts at offset 18: the frame needs 18 + 10 + 2 bytes.
        assert_eq!(p.needed(18), 30);
        let c = p.parse(frame).unwrap().unwrap();
        assert_eq!(c.consumed(), frame.len());
        assert_eq!(c.to_vec(), words(&["GET", "0123456789"]));
        assert!(!p.in_frame());
    }

    #[test]
    fn an_empty_frame_fed_byte_by_byte_does_not_hide_the_next() {
        // The `*0` line is searched in pieces; the next frame's search starts afresh.
        let input = b"*0\r\n*1\r\n$1\r\na\r\n";
        let mut p = Parser::default();
        let mut buf = Vec::new();
        let mut frames = Vec::new();
        for &b in input {
            buf.push(b);
            while let Some(c) = p.parse(&buf).unwrap() {
                frames.push(c.to_vec());
                let n = c.consumed();
                buf.drain(..n);
            }
        }
        assert_eq!(frames, vec![vec![], words(&["a"])]);
    }

    #[test]
    fn integers_parse_like_string2ll() {
        assert_eq!(parse_i64(b"0"), Some(0));
        assert_eq!(parse_i64(b"-1"), Some(-1));
        assert_eq!(parse_i64(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        for bad in [
            &b""[..],
            b"-",
            b"-0",
            b"00",
            b"+1",
            b" 1",
            b"1 ",
            b"9223372036854775808",
            b"1a",
        ] {
            assert_eq!(parse_i64(bad), None, "{bad:?}");
        }
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"-1"), None);
    }
}
