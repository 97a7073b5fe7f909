//! `kv_resp::Parser`: every byte a RESP client sends (arrays of bulk strings and inline
//! commands).
//!
//! Input: byte 0 sets the chunk size the stream is fed in (1..=256), the rest is the stream.
//! Properties: never panics; feeding the stream in chunks gives the same frames, the same
//! error and the same unconsumed tail as parsing it whole; every frame's `args()` and
//! `arg(i)` agree and hold `len()` arguments within the limits; `needed()` never asks for
//! less than is buffered.
#![no_main]

use kv_resp::{ParseLimits, Parser, ProtocolError};
use libfuzzer_sys::fuzz_target;

const LIMITS: ParseLimits = ParseLimits {
    max_args: 16,
    max_bulk_len: 512,
    max_inline_len: 256,
};

type Parsed = (Vec<Vec<Vec<u8>>>, Option<ProtocolError>, usize);

fn parse(stream: &[u8], chunk: usize) -> Parsed {
    let mut p = Parser::new(LIMITS);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match p.parse(&buf) {
                Ok(Some(c)) => {
                    assert_eq!(c.args().len(), c.len());
                    assert!(c.len() <= LIMITS.max_args);
                    for (i, a) in c.args().enumerate() {
                        assert_eq!(c.arg(i), Some(a));
                    }
                    assert_eq!(c.arg(c.len()), None);
                    assert!(c.consumed() > 0 && c.consumed() <= buf.len());
                    if !c.is_empty() {
                        frames.push(c.to_vec());
                    }
                    let n = c.consumed();
                    buf.drain(..n);
                }
                Ok(None) => {
                    assert!(p.needed(buf.len()) > buf.len());
                    break;
                }
                Err(e) => return (frames, Some(e), 0),
            }
        }
    }
    (frames, None, buf.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, stream)) = data.split_first() else {
        return;
    };
    let whole = parse(stream, stream.len().max(1));
    let chunked = parse(stream, usize::from(mode) + 1);
    assert_eq!(whole, chunked);
});
