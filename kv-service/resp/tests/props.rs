//! Properties of the parser, the encoder and the connection, from fixed seeds (testkit).

mod common;

use std::collections::BTreeMap;

use common::*;
use kv_resp::{
    encode_request, glob_match, parse_reply, Config, Connection, Limits, ParseLimits, Parser,
    Protocol, ProtocolError, Shared, Value,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// The parser: a stream split anywhere parses as the whole stream.

/// Pieces a request stream is made of: valid frames of both kinds, empty frames, and junk.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    let arg = prop::collection::vec(any::<u8>(), 0..40);
    prop_oneof![
        4 => prop::collection::vec(arg, 1..6).prop_map(|args| {
            let mut out = Vec::new();
            encode_request(&args, &mut out);
            out
        }),
        2 => prop::collection::vec("[a-z\"' \\\\x0-9]{0,12}", 0..4)
            .prop_map(|w| format!("{}\r\n", w.join(" ")).into_bytes()),
        1 => Just(b"*0\r\n".to_vec()),
        1 => Just(b"*-1\r\n".to_vec()),
        1 => prop::collection::vec(any::<u8>(), 0..24),
        1 => prop::sample::select(vec![
            &b"*2\r\n$3\r\nGET\r\n"[..], b"$3\r\n", b"*99999999999\r\n", b"*1\r\n$70\r\n",
            b"*9\r\n", b"\r", b"\n", b"*", b"$", b"*1\r\n$1\r\nab", b"*1\r\n$-3\r\n",
        ]).prop_map(<[u8]>::to_vec),
    ]
}

fn stream() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(piece(), 0..12).prop_map(|p| p.concat())
}

/// Small limits, so that the bounds are hit too.
const LIMITS: ParseLimits = ParseLimits {
    max_args: 4,
    max_bulk_len: 32,
    max_inline_len: 48,
};

type Parsed = (Vec<Vec<Vec<u8>>>, Option<ProtocolError>, usize);

/// Parses `input` fed in chunks ending at `cuts`: the frames, the error if any, and the
/// bytes left unconsumed.
fn parse_in_chunks(input: &[u8], cuts: &[usize]) -> Parsed {
    let mut p = Parser::new(LIMITS);
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    ends.push(input.len());
    ends.sort_unstable();
    let mut fed = 0;
    for end in ends {
        buf.extend_from_slice(&input[fed..end]);
        fed = end;
        loop {
            match p.parse(&buf) {
                Ok(Some(c)) => {
                    if !c.is_empty() {
                        frames.push(c.to_vec());
                    }
                    let n = c.consumed();
                    buf.drain(..n);
                }
                Ok(None) => break,
                Err(e) => return (frames, Some(e), 0),
            }
        }
    }
    (frames, None, buf.len())
}

proptest! {
    #![proptest_config(testkit::proptest_config(512, "proptest-regressions/props.txt"))]

    #[test]
    fn a_stream_split_anywhere_parses_as_the_whole(
        input in stream(),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        let whole = parse_in_chunks(&input, &[]);
        // Byte by byte, and at the random points.
        let every: Vec<usize> = (0..input.len()).collect();
        prop_assert_eq!(&parse_in_chunks(&input, &every), &whole);
        prop_assert_eq!(&parse_in_chunks(&input, &cuts), &whole);
    }

    #[test]
    fn requests_round_trip(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8)) {
        let mut wire = Vec::new();
        encode_request(&args, &mut wire);
        let mut p = Parser::default();
        let c = p.parse(&wire).unwrap().unwrap();
        prop_assert_eq!(c.consumed(), wire.len());
        prop_assert_eq!(c.to_vec(), args);
    }

    #[test]
    fn replies_round_trip(v in value(3), resp3 in any::<bool>()) {
        let (v, proto) = if resp3 { (v, Protocol::Resp3) } else { (resp2_only(v), Protocol::Resp2) };
        let mut wire = Vec::new();
        v.encode(proto, &mut wire);
        prop_assert_eq!(parse_reply(&wire), Ok(Some((v, wire.len()))));
        // Every strict prefix is incomplete, not an error.
        for cut in 0..wire.len() {
            prop_assert_eq!(parse_reply(&wire[..cut]), Ok(None));
        }
    }

    #[test]
    fn the_reply_reader_never_panics(input in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_reply(&input);
    }
}

/// Reply trees of every type, `depth` levels deep at most.
fn value(depth: u32) -> impl Strategy<Value = Value> {
    let text = prop::collection::vec(
        any::<u8>().prop_filter("no CR/LF", |b| *b != b'\r' && *b != b'\n'),
        0..16,
    );
    let leaf = prop_oneof![
        text.clone().prop_map(Value::Simple),
        text.clone().prop_map(Value::Error),
        any::<i64>().prop_map(Value::Integer),
        prop::collection::vec(any::<u8>(), 0..32).prop_map(Value::Bulk),
        Just(Value::Null),
        any::<bool>().prop_map(Value::Boolean),
        "-?[0-9]{1,5}\\.[0-9]{1,3}".prop_map(|d| Value::Double(d.into_bytes())),
        "[0-9]{1,30}".prop_map(|d| Value::BigNumber(d.into_bytes())),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(|text| Value::Verbatim {
            format: *b"txt",
            text
        }),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(|text| Value::Verbatim {
            format: *b"mkd",
            text
        }),
    ];
    leaf.prop_recursive(depth, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Set),
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Push),
            prop::collection::vec((inner.clone(), inner), 0..4).prop_map(Value::Map),
        ]
    })
}

/// The RESP2 view of a value: what a RESP2 encoding of it reads back as.
fn resp2_only(v: Value) -> Value {
    match v {
        Value::Boolean(b) => Value::Integer(i64::from(b)),
        Value::Double(d) | Value::BigNumber(d) => Value::Bulk(d),
        Value::Verbatim { text, .. } => Value::Bulk(text),
        Value::Array(a) | Value::Set(a) | Value::Push(a) => {
            Value::Array(a.into_iter().map(resp2_only).collect())
        }
        Value::Map(m) => Value::Array(
            m.into_iter()
                .flat_map(|(k, v)| [resp2_only(k), resp2_only(v)])
                .collect(),
        ),
        other => other,
    }
}

// ---------------------------------------------------------------------------------------
// The connection: replies equal a sequential model's, whatever the completion order.

#[derive(Clone, Debug)]
enum Cmd {
    Get(String),
    Set(String, Vec<u8>, u8),
    GetSet(String, Vec<u8>),
    Del(Vec<String>),
    Exists(Vec<String>),
    MGet(Vec<String>),
    MSet(Vec<(String, Vec<u8>)>),
    Strlen(String),
    Ping,
    Echo(Vec<u8>),
    DbSize,
    Bogus,
}

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "key:1", "key:2"]).prop_map(String::from)
}

fn cmd_strategy() -> impl Strategy<Value = Cmd> {
    let val = || prop::collection::vec(any::<u8>(), 0..12);
    let keys = || prop::collection::vec(key(), 1..5);
    prop_oneof![
        3 => key().prop_map(Cmd::Get),
        3 => (key(), val(), 0u8..6).prop_map(|(k, v, o)| Cmd::Set(k, v, o)),
        1 => (key(), val()).prop_map(|(k, v)| Cmd::GetSet(k, v)),
        1 => keys().prop_map(Cmd::Del),
        1 => keys().prop_map(Cmd::Exists),
        2 => keys().prop_map(Cmd::MGet),
        1 => prop::collection::vec((key(), val()), 1..4).prop_map(Cmd::MSet),
        1 => key().prop_map(Cmd::Strlen),
        1 => Just(Cmd::Ping),
        1 => val().prop_map(Cmd::Echo),
        1 => Just(Cmd::DbSize),
        1 => Just(Cmd::Bogus),
    ]
}

/// SET options by number: none, NX, XX, GET, NX GET, XX GET.
const SET_OPTS: [&[&str]; 6] = [
    &[],
    &["NX"],
    &["XX"],
    &["GET"],
    &["NX", "GET"],
    &["XX", "GET"],
];

impl Cmd {
    fn wire(&self) -> Vec<u8> {
        let b = |s: &str| s.as_bytes().to_vec();
        let args: Vec<Vec<u8>> = match self {
            Cmd::Get(k) => vec![b("GET"), b(k)],
            Cmd::Set(k, v, o) => {
                let mut a = vec![b("SET"), b(k), v.clone()];
                a.extend(SET_OPTS[*o as usize].iter().map(|s| b(s)));
                a
            }
            Cmd::GetSet(k, v) => vec![b("GETSET"), b(k), v.clone()],
            Cmd::Del(ks) => std::iter::once(b("DEL"))
                .chain(ks.iter().map(|k| b(k)))
                .collect(),
            Cmd::Exists(ks) => std::iter::once(b("EXISTS"))
                .chain(ks.iter().map(|k| b(k)))
                .collect(),
            Cmd::MGet(ks) => std::iter::once(b("MGET"))
                .chain(ks.iter().map(|k| b(k)))
                .collect(),
            Cmd::MSet(kvs) => std::iter::once(b("MSET"))
                .chain(kvs.iter().flat_map(|(k, v)| [b(k), v.clone()]))
                .collect(),
            Cmd::Strlen(k) => vec![b("STRLEN"), b(k)],
            Cmd::Ping => vec![b("PING")],
            Cmd::Echo(v) => vec![b("ECHO"), v.clone()],
            Cmd::DbSize => vec![b("DBSIZE")],
            Cmd::Bogus => vec![b("BOGUS")],
        };
        let mut out = Vec::new();
        encode_request(&args, &mut out);
        out
    }

    /// The reply Redis gives, run against `m`.
    fn model(&self, m: &mut BTreeMap<String, Vec<u8>>) -> Value {
        let val = |v: Option<&Vec<u8>>| v.map_or(Value::Null, |v| Value::Bulk(v.clone()));
        match self {
            Cmd::Get(k) => val(m.get(k)),
            Cmd::Set(k, v, o) => {
                let old = m.get(k).cloned();
                let (nx, xx, get) = match o {
                    0 => (false, false, false),
                    1 => (true, false, false),
                    2 => (false, true, false),
                    3 => (false, false, true),
                    4 => (true, false, true),
                    _ => (false, true, true),
                };
                let write = !(nx && old.is_some() || xx && old.is_none());
                if write {
                    m.insert(k.clone(), v.clone());
                }
                if get {
                    val(old.as_ref())
                } else if write {
                    Value::Simple(b"OK".to_vec())
                } else {
                    Value::Null
                }
            }
            Cmd::GetSet(k, v) => val(m.insert(k.clone(), v.clone()).as_ref()),
            Cmd::Del(ks) => {
                Value::Integer(ks.iter().filter(|k| m.remove(*k).is_some()).count() as i64)
            }
            Cmd::Exists(ks) => {
                Value::Integer(ks.iter().filter(|k| m.contains_key(*k)).count() as i64)
            }
            Cmd::MGet(ks) => Value::Array(ks.iter().map(|k| val(m.get(k))).collect()),
            Cmd::MSet(kvs) => {
                for (k, v) in kvs {
                    m.insert(k.clone(), v.clone());
                }
                Value::Simple(b"OK".to_vec())
            }
            Cmd::Strlen(k) => Value::Integer(m.get(k).map_or(0, Vec::len) as i64),
            Cmd::Ping => Value::Simple(b"PONG".to_vec()),
            Cmd::Echo(v) => Value::Bulk(v.clone()),
            Cmd::DbSize => Value::Integer(m.len() as i64),
            Cmd::Bogus => {
                Value::Error(b"ERR unknown command 'BOGUS', with args beginning with: ".to_vec())
            }
        }
    }
}

proptest! {
    #![proptest_config(testkit::proptest_config(256, "proptest-regressions/props.txt"))]

    #[test]
    fn replies_match_the_model_in_order_whatever_the_completion_order(
        cmds in prop::collection::vec(cmd_strategy(), 1..40),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        seed in any::<u64>(),
        depth in 1usize..12,
        now in any::<bool>(),
    ) {
        let mut model = BTreeMap::new();
        let want: Vec<Value> = cmds.iter().map(|c| c.model(&mut model)).collect();
        let wire: Vec<u8> = cmds.iter().flat_map(Cmd::wire).collect();
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
        ends.push(wire.len());
        ends.sort_unstable();
        // A shallow pipeline bound makes the connection stop and resume too.
        let config = Config {
            limits: Limits { max_pipeline: depth, ..Limits::default() },
            ..Config::default()
        };
        let mut conn = Connection::new(Shared::new(config));
        // Operations run when answered, in any order but one key's writes in submission
        // order: the connection alone must keep its commands' effects in order.
        let mut store = MemStore::new();
        store.deferred = true;
        // Cached GETs answered inside `process`, between operations still in flight.
        store.now = now;
        let mut got = Vec::new();
        let mut fed = 0;
        let mut round = seed;
        for end in ends {
            prop_assert_eq!(conn.feed(&wire[fed..end]), end - fed);
            fed = end;
            loop {
                let ran = conn.process(&mut store);
                let answers = !store.queued.is_empty();
                round = round.wrapping_add(1);
                store.deliver_shuffled(&mut conn, round);
                got.extend(replies(&mut conn));
                if ran == 0 && !answers {
                    break;
                }
            }
        }
        prop_assert!(store.queued.is_empty());
        prop_assert_eq!(got, want);
        prop_assert_eq!(conn.ops_in_flight(), 0);
        prop_assert_eq!(conn.queued_replies(), 0);
    }

    #[test]
    fn garbage_never_panics_and_every_reply_is_resp(
        input in prop::collection::vec(prop_oneof![
            3 => piece(),
            1 => cmd_strategy().prop_map(|c| c.wire()),
        ], 0..16).prop_map(|p| p.concat()),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
        seed in any::<u64>(),
    ) {
        let config = Config {
            limits: Limits { parse: LIMITS, max_query_buffer: 256, ..Limits::default() },
            ..Config::default()
        };
        let mut conn = Connection::new(Shared::new(config));
        let mut store = MemStore::new();
        let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        ends.push(input.len());
        ends.sort_unstable();
        let mut fed = 0;
        let mut out = Vec::new();
        for end in ends {
            while fed < end {
                let n = conn.feed(&input[fed..end]);
                fed += n;
                conn.process(&mut store);
                store.deliver_shuffled(&mut conn, seed ^ fed as u64);
                out.extend_from_slice(conn.output());
                conn.sent(conn.output().len());
                if n == 0 {
                    break;
                }
            }
        }
        conn.input_closed();
        conn.process(&mut store);
        store.deliver_all(&mut conn);
        out.extend_from_slice(conn.output());
        conn.sent(conn.output().len());
        let mut pos = 0;
        let mut last = None;
        while pos < out.len() {
            let (v, n) = parse_reply(&out[pos..]).unwrap().unwrap();
            pos += n;
            last = Some(v);
        }
        if conn.close_reason().is_some() {
            prop_assert!(conn.is_finished());
            if let Some(kv_resp::Close::ProtocolError) = conn.close_reason() {
                let is_protocol_error = matches!(&last, Some(Value::Error(e)) if e.starts_with(b"ERR Protocol error"));
                prop_assert!(is_protocol_error, "{:?}", last);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// SCAN: a full iteration returns every matching key once.

proptest! {
    #![proptest_config(testkit::proptest_config(128, "proptest-regressions/props.txt"))]

    #[test]
    fn a_full_scan_returns_every_matching_key_once(
        keys in prop::collection::btree_set("[abk:]{0,4}[0-9]{0,2}", 0..60),
        pattern in prop::option::of(prop::sample::select(vec![
            "*", "a*", "k:*", "*1", "?", "[ab]*", "k:[0-4]*", "b\\*", "zz*", "",
        ])),
        count in 1usize..20,
        page in 1usize..8,
    ) {
        let (mut conn, _) = conn_with(Config::default());
        let mut store = MemStore::new();
        store.scan_page = page;
        for k in &keys {
            store.data.insert(k.as_bytes().to_vec(), b"v".to_vec());
        }
        let mut seen = Vec::new();
        let mut cursor = "0".to_string();
        for _ in 0..=keys.len() + 2 {
            let mut args = vec!["SCAN".to_string(), cursor.clone(), "COUNT".into(), count.to_string()];
            if let Some(p) = pattern {
                args.extend(["MATCH".to_string(), p.to_string()]);
            }
            let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
            let mut r = run(&mut conn, &mut store, &req(&args));
            let Some(Value::Array(mut parts)) = r.pop() else { panic!("SCAN reply") };
            let Value::Array(found) = parts.pop().unwrap() else { panic!() };
            let Value::Bulk(next) = parts.pop().unwrap() else { panic!() };
            seen.extend(found.into_iter().map(|v| String::from_utf8(v.as_bytes().unwrap().to_vec()).unwrap()));
            cursor = String::from_utf8(next).unwrap();
            if cursor == "0" {
                break;
            }
        }
        prop_assert_eq!(&cursor, "0", "the iteration ends");
        let want: Vec<String> = keys
            .iter()
            // As in Redis, MATCH * is no pattern at all (the glob `*` alone would not match
            // the empty key).
            .filter(|k| pattern.is_none_or(|p| p == "*" || glob_match(p.as_bytes(), k.as_bytes())))
            .cloned()
            .collect();
        prop_assert_eq!(seen, want);
    }
}

// ---------------------------------------------------------------------------------------
// Glob: the iterative matcher agrees with Redis's recursive stringmatchlen.

/// A transcription of the recursion of Redis's `stringmatchlen` (util.c), as the reference.
fn redis_match(p: &[u8], s: &[u8]) -> bool {
    let (mut p, mut s) = (p, s);
    while !p.is_empty() && !s.is_empty() {
        match p[0] {
            b'*' => {
                while p.len() > 1 && p[1] == b'*' {
                    p = &p[1..];
                }
                if p.len() == 1 {
                    return true;
                }
                while !s.is_empty() {
                    if redis_match(&p[1..], s) {
                        return true;
                    }
                    s = &s[1..];
                }
                return false;
            }
            b'?' => s = &s[1..],
            b'[' => {
                p = &p[1..];
                let not = p.first() == Some(&b'^');
                if not {
                    p = &p[1..];
                }
                let mut hit = false;
                loop {
                    if p.first() == Some(&b'\\') && p.len() >= 2 {
                        p = &p[1..];
                        hit |= p[0] == s[0];
                    } else if p.first() == Some(&b']') || p.is_empty() {
                        // The class ends (unterminated: at the end of the pattern).
                        break;
                    } else if p.len() >= 3 && p[1] == b'-' {
                        let (lo, hi) = (p[0].min(p[2]), p[0].max(p[2]));
                        hit |= (lo..=hi).contains(&s[0]);
                        p = &p[2..];
                    } else {
                        hit |= p[0] == s[0];
                    }
                    p = &p[1..];
                }
                if hit == not {
                    return false;
                }
                s = &s[1..];
                // `p` is at the `]` (or at the end of an unterminated class).
                if p.is_empty() {
                    return s.is_empty();
                }
            }
            b'\\' if p.len() >= 2 => {
                if p[1] != s[0] {
                    return false;
                }
                p = &p[1..];
                s = &s[1..];
            }
            c => {
                if c != s[0] {
                    return false;
                }
                s = &s[1..];
            }
        }
        p = &p[1..];
        if s.is_empty() {
            while p.first() == Some(&b'*') {
                p = &p[1..];
            }
            break;
        }
    }
    p.is_empty() && s.is_empty()
}

proptest! {
    #![proptest_config(testkit::proptest_config(2048, "proptest-regressions/props.txt"))]

    #[test]
    fn glob_agrees_with_redis(
        pattern in prop::collection::vec(prop::sample::select(b"ab*?[]^-\\".to_vec()), 0..8),
        s in prop::collection::vec(prop::sample::select(b"ab-]\\^".to_vec()), 0..6),
    ) {
        prop_assert_eq!(glob_match(&pattern, &s), redis_match(&pattern, &s),
            "{:?} ~ {:?}", String::from_utf8_lossy(&pattern), String::from_utf8_lossy(&s));
    }
}
