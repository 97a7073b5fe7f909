//! Glob patterns as Redis matches them (`stringmatchlen` in Redis's `util.c`), for
//! `SCAN ... MATCH` and `CONFIG GET`.
//!
//! `*` any run of bytes, `?` any one byte, `[abc]` `[^abc]` `[a-z]` a class (ranges may be
//! written backwards, `\` escapes inside a class), `\x` the byte `x`. Redis's corner cases are
//! kept: an unterminated class extends to the end of the pattern, `[]` matches nothing,
//! `[^]` any byte, a trailing lone `\` is a literal backslash, and no pattern but the empty
//! one matches the empty string (Redis only reaches a `*` while bytes remain).
//!
//! Matching is iterative (backtracking to the last `*` only), so it takes O(pattern ×
//! string) time at worst and no stack, whatever the pattern.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

/// Whether `s` matches the glob `pattern`.
///
/// ```
/// use kv_resp::glob_match;
/// assert!(glob_match(b"user:*", b"user:42"));
/// assert!(glob_match(b"h?llo", b"hello"));
/// assert!(glob_match(b"h[^e]llo", b"hallo"));
/// assert!(!glob_match(b"h[a-b]llo", b"hello"));
/// assert!(glob_match(b"a\\*", b"a*"));
/// ```
pub fn glob_match(pattern: &[u8], s: &[u8]) -> bool {
    if s.is_empty() {
        return pattern.is_empty();
    }
    let (mut p, mut i) = (0usize, 0usize);
    // After the last `*` seen: where the pattern resumes and where in `s` the star's match
    // currently ends.
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pattern.get(p) == Some(&b'*') {
            while pattern.get(p) == Some(&b'*') {
                p += 1;
            }
            if p == pattern.len() {
                return true;
            }
            star = Some((p, i));
            continue;
        }
        let Some(&c) = s.get(i) else {
            while pattern.get(p) == Some(&b'*') {
                p += 1;
            }
            return p == pattern.len();
        };
        if p < pattern.len() {
            let (matched, next) = match_one(pattern, p, c);
            if matched {
                p = next;
                i += 1;
                continue;
            }
        }
        match star {
            Some((sp, si)) => {
                // Let the star take one more byte and retry the rest from there.
                star = Some((sp, si + 1));
                p = sp;
                i = si + 1;
            }
            None => return false,
        }
    }
}

/// Whether byte `c` matches the single-byte element (not `*`) at `p`, and where the element
/// ends.
fn match_one(pattern: &[u8], p: usize, c: u8) -> (bool, usize) {
    match pattern.get(p) {
        Some(b'?') => (true, p + 1),
        Some(b'[') => match_class(pattern, p + 1, c),
        Some(b'\\') if p + 1 < pattern.len() => (pattern.get(p + 1) == Some(&c), p + 2),
        Some(&lit) => (lit == c, p + 1),
        None => (false, p),
    }
}

/// A class whose body starts at `p` (just after `[`).
fn match_class(pattern: &[u8], mut p: usize, c: u8) -> (bool, usize) {
    let negate = pattern.get(p) == Some(&b'^');
    if negate {
        p += 1;
    }
    let mut hit = false;
    loop {
        let rest = pattern.len().saturating_sub(p);
        match pattern.get(p) {
            Some(b'\\') if rest >= 2 => {
                p += 1;
                hit |= pattern.get(p) == Some(&c);
            }
            Some(b']') => break,
            None => {
                // Unterminated: the class runs to the end of the pattern.
                return (hit != negate, pattern.len());
            }
            Some(&start) if rest >= 3 && pattern.get(p + 1) == Some(&b'-') => {
                let end = pattern.get(p + 2).copied().unwrap_or(start);
                let (lo, hi) = if start <= end {
                    (start, end)
                } else {
                    (end, start)
                };
                hit |= (lo..=hi).contains(&c);
                p += 2;
            }
            Some(&lit) => hit |= lit == c,
        }
        p += 1;
    }
    (hit != negate, p + 1)
}

/// The bytes every match of `pattern` starts with (up to its first `*`, `?` or `[`, escapes
/// resolved). SCAN starts at this prefix and stops past it.
///
/// ```
/// assert_eq!(kv_resp::literal_prefix(b"user:\\*x*"), b"user:*x");
/// assert_eq!(kv_resp::literal_prefix(b"*"), b"");
/// ```
pub fn literal_prefix(pattern: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut p = 0;
    while let Some(&b) = pattern.get(p) {
        match b {
            b'*' | b'?' | b'[' => break,
            b'\\' if p + 1 < pattern.len() => {
                if let Some(&e) = pattern.get(p + 1) {
                    out.push(e);
                }
                p += 2;
            }
            other => {
                out.push(other);
                p += 1;
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn redis_corner_cases() {
        let cases: &[(&[u8], &[u8], bool)] = &[
            (b"*", b"", false),
            (b"", b"", true),
            (b"*", b"anything", true),
            (b"a*", b"a", true),
            (b"*a", b"ba", true),
            (b"*a", b"ab", false),
            (b"a*b*c", b"aXbYc", true),
            (b"a*b*c", b"aXbY", false),
            (b"[]", b"a", false),
            (b"[^]", b"a", true),
            (b"[abc", b"b", true),
            (b"[abc", b"bx", false),
            (b"[z-a]", b"m", true),
            (b"[a-]", b"-", false),
            // "a-]" is the range ]..a (backwards); the class is then unterminated.
            (b"[a-]", b"_", true),
            (b"[\\]]", b"]", true),
            (b"\\", b"\\", true),
            (b"a\\", b"a\\", true),
            (b"\\?", b"?", true),
            (b"\\?", b"x", false),
            (b"?", b"", false),
            (b"*?*", b"x", true),
            (b"[^a-c]x", b"dx", true),
            (b"[^a-c]x", b"bx", false),
        ];
        for &(p, s, want) in cases {
            assert_eq!(
                glob_match(p, s),
                want,
                "{:?} ~ {:?}",
                String::from_utf8_lossy(p),
                String::from_utf8_lossy(s)
            );
        }
    }

    #[test]
    fn many_stars_stay_fast() {
        // The classic exponential case for recursive matchers.
        let p = b"a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b";
        let s = [b'a'; 200];
        assert!(!glob_match(p, &s));
    }
}
