//! Each command's replies, in Redis's shapes, over the in-memory test store.

mod common;

use common::*;
use kv_resp::{Close, Config, Limits, Outcome, ParseLimits, Value};

fn one(conn: &mut kv_resp::Connection, store: &mut MemStore, line: &str) -> Value {
    let mut r = run(conn, store, &cmd(line));
    assert_eq!(r.len(), 1, "{line}: {r:?}");
    r.remove(0)
}

#[test]
fn strings() {
    let (mut c, mut s) = (conn(), MemStore::new());
    assert_eq!(one(&mut c, &mut s, "PING"), simple("PONG"));
    assert_eq!(one(&mut c, &mut s, "ping hi"), bulk("hi"));
    assert_eq!(one(&mut c, &mut s, "ECHO hello"), bulk("hello"));
    assert_eq!(one(&mut c, &mut s, "GET k"), Value::Null);
    assert_eq!(one(&mut c, &mut s, "SET k v1"), simple("OK"));
    assert_eq!(one(&mut c, &mut s, "get k"), bulk("v1"));
    assert_eq!(one(&mut c, &mut s, "STRLEN k"), Value::Integer(2));
    assert_eq!(one(&mut c, &mut s, "STRLEN nokey"), Value::Integer(0));
    assert_eq!(one(&mut c, &mut s, "GETSET k v2"), bulk("v1"));
    assert_eq!(one(&mut c, &mut s, "GETSET new v"), Value::Null);
    assert_eq!(one(&mut c, &mut s, "TYPE k"), simple("string"));
    assert_eq!(one(&mut c, &mut s, "TYPE nokey"), simple("none"));
    assert_eq!(one(&mut c, &mut s, "TTL k"), Value::Integer(-1));
    assert_eq!(one(&mut c, &mut s, "PTTL nokey"), Value::Integer(-2));
    assert_eq!(one(&mut c, &mut s, "DBSIZE"), Value::Integer(2));
}

#[test]
fn set_options() {
    let (mut c, mut s) = (conn(), MemStore::new());
    assert_eq!(one(&mut c, &mut s, "SET k a NX"), simple("OK"));
    assert_eq!(one(&mut c, &mut s, "SET k b NX"), Value::Null);
    assert_eq!(one(&mut c, &mut s, "GET k"), bulk("a"));
    assert_eq!(one(&mut c, &mut s, "SET k c XX"), simple("OK"));
    assert_eq!(one(&mut c, &mut s, "SET nokey c XX"), Value::Null);
    assert_eq!(one(&mut c, &mut s, "EXISTS nokey"), Value::Integer(0));
    assert_eq!(one(&mut c, &mut s, "SET k d GET"), bulk("c"));
    assert_eq!(one(&mut c, &mut s, "SET k e NX GET"), bulk("d"));
    assert_eq!(one(&mut c, &mut s, "GET k"), bulk("d"), "NX did not write");
    assert_eq!(one(&mut c, &mut s, "SET k2 e xx get"), Value::Null);
    assert_eq!(
        one(&mut c, &mut s, "SET k v NX XX"),
        err("ERR syntax error")
    );
    assert_eq!(
        one(&mut c, &mut s, "SET k v BOGUS"),
        err("ERR syntax error")
    );
    assert_eq!(one(&mut c, &mut s, "SET k v EX"), err("ERR syntax error"));
    assert_eq!(
        one(&mut c, &mut s, "SET k v EX ten"),
        err("ERR value is not an integer or out of range")
    );
    assert_eq!(
        one(&mut c, &mut s, "SET k v PX 0"),
        err("ERR invalid expire time in 'set' command")
    );
    let unsupported = err(
        "ERR SET options EX, PX, EXAT, PXAT and KEEPTTL are not supported: kv-service keys do not expire",
    );
    for opts in [
        "EX 10",
        "PX 10",
        "EXAT 10",
        "PXAT 10",
        "KEEPTTL",
        "NX KEEPTTL GET",
    ] {
        assert_eq!(one(&mut c, &mut s, &format!("SET k v {opts}")), unsupported);
    }
    assert_eq!(
        one(&mut c, &mut s, "SET k v EX 1 KEEPTTL"),
        err("ERR syntax error")
    );
    assert_eq!(
        one(&mut c, &mut s, "GET k"),
        bulk("d"),
        "refused SETs wrote nothing"
    );
}

#[test]
fn multi_key_commands() {
    let (mut c, mut s) = (conn(), MemStore::new());
    assert_eq!(one(&mut c, &mut s, "MSET a 1 b 2 c 3"), simple("OK"));
    assert_eq!(
        one(&mut c, &mut s, "MGET a nokey c a"),
        Value::Array(vec![bulk("1"), Value::Null, bulk("3"), bulk("1")])
    );
    assert_eq!(one(&mut c, &mut s, "EXISTS a b nokey a"), Value::Integer(3));
    assert_eq!(one(&mut c, &mut s, "DEL a nokey a b"), Value::Integer(2));
    assert_eq!(one(&mut c, &mut s, "DBSIZE"), Value::Integer(1));
    assert_eq!(
        one(&mut c, &mut s, "MSET a 1 b"),
        err("ERR wrong number of arguments for 'mset' command")
    );
}

#[test]
fn mset_writes_each_key_once_with_its_last_value() {
    let (mut c, mut s) = (conn(), MemStore::new());
    assert_eq!(one(&mut c, &mut s, "MSET k a j x k b k c"), simple("OK"));
    assert_eq!(s.log.len(), 2, "one put per key: {:?}", s.log);
    assert_eq!(
        one(&mut c, &mut s, "MGET k j"),
        Value::Array(vec![bulk("c"), bulk("x")])
    );
}

#[test]
fn multi_key_parts_reassemble_in_key_order_whatever_the_completion_order() {
    let (mut c, mut s) = (conn(), MemStore::new());
    run(&mut c, &mut s, &cmd("MSET k0 v0 k1 v1 k2 v2 k3 v3 k4 v4"));
    for seed in 1..20 {
        c.feed(&cmd("MGET k4 k0 nokey k2 k1 k3"));
        c.process(&mut s);
        s.deliver_shuffled(&mut c, seed);
        let want = Value::Array(
            ["v4", "v0", "", "v2", "v1", "v3"]
                .iter()
                .map(|v| if v.is_empty() { Value::Null } else { bulk(v) })
                .collect(),
        );
        assert_eq!(replies(&mut c), vec![want], "seed {seed}");
    }
}

#[test]
fn a_read_waits_for_a_write_of_its_key_and_a_write_for_a_read() {
    let (mut c, mut s) = (conn(), MemStore::new());
    s.deferred = true;
    let mut input = cmd("SET k v1");
    input.extend(cmd("GET other"));
    input.extend(cmd("GET k"));
    input.extend(cmd("PING"));
    c.feed(&input);
    // SET k and GET other are in flight together; GET k must see the SET: it waits, and
    // PING behind it too (commands run in order).
    assert_eq!(c.process(&mut s), 2);
    assert_eq!(s.queued.len(), 2);
    assert!(!c.can_process(), "stalled until an operation answers");
    s.deliver_shuffled(&mut c, 3);
    assert!(c.can_process());
    assert_eq!(c.process(&mut s), 2);
    // Now a write of k waits for the read of k in flight; writes of one key overlap.
    c.feed(&cmd("SET k v2"));
    assert_eq!(c.process(&mut s), 0);
    s.deliver_all(&mut c);
    c.feed(&cmd("SET k v3"));
    assert_eq!(c.process(&mut s), 2, "SET k v2 and SET k v3 overlap");
    assert_eq!(s.queued.len(), 2);
    c.feed(&cmd("DBSIZE"));
    assert_eq!(
        c.process(&mut s),
        0,
        "DBSIZE waits for the writes in flight"
    );
    s.deliver_all(&mut c);
    assert_eq!(c.process(&mut s), 1);
    assert_eq!(
        replies(&mut c),
        vec![
            simple("OK"),
            Value::Null,
            bulk("v1"),
            simple("PONG"),
            simple("OK"),
            simple("OK"),
            Value::Integer(1)
        ]
    );
    assert_eq!(s.data.get(&b"k"[..]), Some(&b"v3".to_vec()));
}

#[test]
fn an_operation_error_is_the_reply_of_its_command() {
    let (mut c, mut s) = (conn(), MemStore::new());
    s.fail = Some("disk on fire".into());
    assert_eq!(one(&mut c, &mut s, "GET k"), err("ERR disk on fire"));
    assert_eq!(one(&mut c, &mut s, "MGET a b"), err("ERR disk on fire"));
    s.fail = Some("OVERLOADED try again".into());
    assert_eq!(one(&mut c, &mut s, "SET a b"), err("OVERLOADED try again"));
    s.fail = None;
    assert_eq!(one(&mut c, &mut s, "PING"), simple("PONG"));
}

#[test]
fn mismatched_outcomes_and_stray_ids_are_reported_not_panics() {
    let (mut c, mut s) = (conn(), MemStore::new());
    c.feed(&cmd("GET k"));
    c.process(&mut s);
    let (id, _) = s.pending.pop().unwrap();
    c.complete(id, Outcome::Deleted).unwrap();
    assert!(c.complete(id, Outcome::NotFound).is_err(), "already done");
    assert!(c
        .complete(kv_resp::OpId { seq: 99, part: 0 }, Outcome::NotFound)
        .is_err());
    match &replies(&mut c)[..] {
        [Value::Error(e)] => assert!(e.starts_with(b"ERR internal error"), "{e:?}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn each_part_of_a_multi_key_command_is_accepted_once() {
    let (mut c, mut s) = (conn(), MemStore::new());
    c.feed(&cmd("DEL a b"));
    c.process(&mut s);
    let (first, _) = s.pending[0];
    c.complete(first, Outcome::Deleted).unwrap();
    assert!(c.complete(first, Outcome::Deleted).is_err(), "part 0 again");
    let beyond = kv_resp::OpId {
        seq: first.seq,
        part: 2,
    };
    assert!(c.complete(beyond, Outcome::Deleted).is_err(), "no part 2");
    assert_eq!(c.ops_in_flight(), 1);
    let (second, _) = s.pending[1];
    c.complete(second, Outcome::NotFound).unwrap();
    assert_eq!(replies(&mut c), vec![Value::Integer(1)]);
    // Wide commands keep count past one word of parts.
    let keys: Vec<String> = (0..150).map(|i| format!("k{i}")).collect();
    let line = format!("EXISTS {}", keys.join(" "));
    s.pending.clear();
    c.feed(&cmd(&line));
    c.process(&mut s);
    let ids: Vec<_> = s.pending.iter().map(|(id, _)| *id).collect();
    for id in &ids {
        c.complete(*id, Outcome::Value(b"v")).unwrap();
        assert!(c.complete(*id, Outcome::Value(b"v")).is_err());
    }
    assert_eq!(replies(&mut c), vec![Value::Integer(150)]);
}

#[test]
fn limits_on_keys_and_values_are_errors_that_submit_nothing() {
    let config = Config {
        limits: Limits {
            max_key_len: 4,
            max_value_len: 8,
            ..Limits::default()
        },
        ..Config::default()
    };
    let (mut c, _) = conn_with(config);
    let mut s = MemStore::new();
    assert_eq!(
        one(&mut c, &mut s, "GET abcde"),
        err("ERR key of 5 bytes exceeds the limit of 4 bytes")
    );
    assert_eq!(
        one(&mut c, &mut s, "MSET a 1 b 123456789"),
        err("ERR value of 9 bytes exceeds the limit of 8 bytes")
    );
    assert_eq!(
        one(&mut c, &mut s, "DEL a abcde"),
        err("ERR key of 5 bytes exceeds the limit of 4 bytes")
    );
    assert!(s.log.is_empty(), "{:?}", s.log);
}

#[test]
fn unknown_commands_and_arity_errors_have_redis_shapes() {
    let (mut c, mut s) = (conn(), MemStore::new());
    assert_eq!(
        one(&mut c, &mut s, "FOO a b"),
        err("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ")
    );
    assert_eq!(
        one(&mut c, &mut s, "FLUSHALL"),
        err("ERR unknown command 'FLUSHALL', with args beginning with: ")
    );
    let long = "x".repeat(300);
    match one(&mut c, &mut s, &format!("FOO {long} y")) {
        Value::Error(e) => {
            let e = String::from_utf8(e).unwrap();
            // The first argument is cut at 128 characters, and no more follow.
            assert!(e.ends_with(&format!("'{}' ", "x".repeat(128))), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        one(&mut c, &mut s, "GET"),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        one(&mut c, &mut s, "get a b"),
        err("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        one(&mut c, &mut s, "PING a b"),
        err("ERR wrong number of arguments for 'ping' command")
    );
    assert_eq!(
        one(&mut c, &mut s, "CONFIG GET"),
        err("ERR wrong number of arguments for 'config|get' command")
    );
    assert_eq!(
        one(&mut c, &mut s, "CONFIG BOGUS"),
        err("ERR unknown subcommand 'BOGUS'. Try CONFIG HELP.")
    );
    assert_eq!(
        one(&mut c, &mut s, "WATCH k"),
        err("ERR WATCH is not supported: kv-service has no transactions")
    );
    // An error line never carries CR or LF.
    let mut input = req(&[b"FOO", b"a\r\nb"]);
    input.extend_from_slice(&cmd("PING"));
    assert_eq!(
        run(&mut c, &mut s, &input),
        vec![
            err("ERR unknown command 'FOO', with args beginning with: 'a  b' "),
            simple("PONG")
        ]
    );
}

#[test]
fn auth_gates_everything_but_auth_hello_and_quit() {
    let config = Config {
        password: Some(b"s3cret".to_vec()),
        ..Config::default()
    };
    let (mut c, shared) = conn_with(config);
    let mut s = MemStore::new();
    let noauth = err("NOAUTH Authentication required.");
    assert_eq!(one(&mut c, &mut s, "GET k"), noauth);
    assert_eq!(one(&mut c, &mut s, "PING"), noauth);
    assert_eq!(one(&mut c, &mut s, "CONFIG GET save"), noauth);
    assert_eq!(one(&mut c, &mut s, "MULTI"), noauth);
    assert_eq!(one(&mut c, &mut s, "WATCH k"), noauth);
    // Unknown commands and arity errors come first, as in Redis.
    assert_eq!(
        one(&mut c, &mut s, "NOPE"),
        err("ERR unknown command 'NOPE', with args beginning with: ")
    );
    assert!(
        matches!(one(&mut c, &mut s, "HELLO 3"), Value::Error(e) if e.starts_with(b"NOAUTH HELLO must be called"))
    );
    let wrong = err("WRONGPASS invalid username-password pair or user is disabled.");
    assert_eq!(one(&mut c, &mut s, "AUTH nope"), wrong);
    assert_eq!(one(&mut c, &mut s, "AUTH other s3cret"), wrong);
    assert_eq!(one(&mut c, &mut s, "AUTH a b c"), err("ERR syntax error"));
    assert!(s.log.is_empty());
    assert_eq!(one(&mut c, &mut s, "AUTH s3cret"), simple("OK"));
    assert_eq!(one(&mut c, &mut s, "GET k"), Value::Null);

    // HELLO with AUTH authenticates and switches protocol in one step.
    let mut c2 = kv_resp::Connection::new(shared.clone());
    match one(&mut c2, &mut s, "HELLO 3 AUTH default s3cret SETNAME app") {
        Value::Map(m) => assert!(m.contains(&(bulk("proto"), Value::Integer(3)))),
        other => panic!("{other:?}"),
    }
    assert_eq!(c2.name(), Some(&b"app"[..]));
    assert_eq!(one(&mut c2, &mut s, "GET k"), Value::Null);
    let mut c3 = kv_resp::Connection::new(shared);
    assert_eq!(one(&mut c3, &mut s, "AUTH default s3cret"), simple("OK"));
    assert_eq!(one(&mut c3, &mut s, "QUIT"), simple("OK"));
}

#[test]
fn a_refused_transaction_runs_nothing_of_itself() {
    let (mut c, mut s) = (conn(), MemStore::new());
    // As a client library pipelines a transaction: MULTI, the commands, EXEC.
    let mut input = cmd("MULTI");
    input.extend(cmd("SET tx 1"));
    input.extend(cmd("GET tx"));
    input.extend(cmd("EXEC"));
    input.extend(cmd("GET tx"));
    let r = run(&mut c, &mut s, &input);
    assert_eq!(r.len(), 5);
    assert!(matches!(&r[0], Value::Error(e) if e.starts_with(b"ERR MULTI is not supported")));
    for not_run in &r[1..3] {
        assert!(
            matches!(not_run, Value::Error(e) if e.starts_with(b"ERR not run")),
            "{not_run:?}"
        );
    }
    assert_eq!(
        r[3],
        err("EXECABORT Transaction discarded: kv-service does not run MULTI transactions")
    );
    assert_eq!(r[4], Value::Null, "the SET inside never ran");
    assert!(s.data.is_empty());
    let mut input = cmd("MULTI");
    input.extend(cmd("MULTI"));
    input.extend(cmd("DISCARD"));
    input.extend(cmd("SET after 1"));
    input.extend(cmd("EXEC"));
    input.extend(cmd("DISCARD"));
    let r = run(&mut c, &mut s, &input);
    assert_eq!(r[1], err("ERR MULTI calls can not be nested"));
    assert_eq!(r[2], simple("OK"));
    assert_eq!(
        r[3],
        simple("OK"),
        "out of the refused MULTI, commands run again"
    );
    assert_eq!(r[4], err("ERR EXEC without MULTI"));
    assert_eq!(r[5], err("ERR DISCARD without MULTI"));
}

#[test]
fn auth_without_a_password_configured() {
    let (mut c, mut s) = (conn(), MemStore::new());
    assert_eq!(
        one(&mut c, &mut s, "AUTH x"),
        err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
    );
    assert_eq!(one(&mut c, &mut s, "AUTH default anything"), simple("OK"));
    assert_eq!(
        one(&mut c, &mut s, "AUTH bob x"),
        err("WRONGPASS invalid username-password pair or user is disabled.")
    );
}

#[test]
fn hello_switches_to_resp3_and_back() {
    let (mut c, mut s) = (conn(), MemStore::new());
    match one(&mut c, &mut s, "HELLO") {
        Value::Array(a) => assert!(a.contains(&bulk("proto")) && a.contains(&Value::Integer(2))),
        other => panic!("RESP2 HELLO replies with a flat array: {other:?}"),
    }
    assert!(matches!(one(&mut c, &mut s, "HELLO 3"), Value::Map(_)));
    c.feed(&cmd("GET nokey"));
    c.process(&mut s);
    s.deliver_all(&mut c);
    assert_eq!(c.output(), b"_\r\n", "RESP3 null");
    replies(&mut c);
    match one(&mut c, &mut s, "INFO keyspace") {
        Value::Verbatim { format, text } => {
            assert_eq!(&format, b"txt");
            assert_eq!(text, b"# Keyspace\r\n");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        one(&mut c, &mut s, "CONFIG GET save"),
        Value::Map(_)
    ));
    assert_eq!(
        one(&mut c, &mut s, "HELLO 4"),
        err("NOPROTO unsupported protocol version")
    );
    assert_eq!(
        one(&mut c, &mut s, "HELLO 3 FOO"),
        err("ERR Syntax error in HELLO option 'FOO'")
    );
    assert!(matches!(one(&mut c, &mut s, "HELLO 2"), Value::Array(_)));
    c.feed(&cmd("GET nokey"));
    c.process(&mut s);
    s.deliver_all(&mut c);
    assert_eq!(c.output(), b"$-1\r\n");
}

#[test]
fn a_reply_keeps_the_protocol_of_the_moment_its_command_ran() {
    let (mut c, mut s) = (conn(), MemStore::new());
    let mut input = cmd("GET nokey");
    input.extend(cmd("HELLO 3"));
    input.extend(cmd("GET nokey"));
    c.feed(&input);
    c.process(&mut s);
    s.deliver_shuffled(&mut c, 7);
    let out = c.output().to_vec();
    assert!(
        out.starts_with(b"$-1\r\n%7\r\n"),
        "{:?}",
        String::from_utf8_lossy(&out)
    );
    assert!(out.ends_with(b"_\r\n"));
}

#[test]
fn client_select_and_quit() {
    let (mut c, mut s) = (conn(), MemStore::new());
    c.set_addrs("127.0.0.1:5555", "127.0.0.1:6380");
    assert_eq!(one(&mut c, &mut s, "CLIENT GETNAME"), Value::Null);
    assert_eq!(one(&mut c, &mut s, "CLIENT SETNAME worker-1"), simple("OK"));
    assert_eq!(one(&mut c, &mut s, "client getname"), bulk("worker-1"));
    assert_eq!(
        run(&mut c, &mut s, &req(&[b"CLIENT", b"SETNAME", b"a b"])),
        vec![err(
            "ERR Client names cannot contain spaces, newlines or special characters."
        )]
    );
    assert_eq!(
        one(&mut c, &mut s, "CLIENT ID"),
        Value::Integer(c.id() as i64)
    );
    assert_eq!(
        one(&mut c, &mut s, "CLIENT SETINFO LIB-NAME redis-py"),
        simple("OK")
    );
    assert_eq!(
        one(&mut c, &mut s, "CLIENT SETINFO lib-ver 5.0.1"),
        simple("OK")
    );
    assert_eq!(
        one(&mut c, &mut s, "CLIENT SETINFO color red"),
        err("ERR Unrecognized option 'color'")
    );
    match one(&mut c, &mut s, "CLIENT INFO") {
        Value::Bulk(line) => {
            let line = String::from_utf8(line).unwrap();
            for part in [
                "addr=127.0.0.1:5555",
                "laddr=127.0.0.1:6380",
                "name=worker-1",
                "lib-name=redis-py",
                "lib-ver=5.0.1",
                "resp=2",
            ] {
                assert!(line.contains(part), "{part} in {line}");
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(one(&mut c, &mut s, "SELECT 0"), simple("OK"));
    assert_eq!(
        one(&mut c, &mut s, "SELECT 1"),
        err("ERR DB index is out of range")
    );
    assert_eq!(
        one(&mut c, &mut s, "SELECT x"),
        err("ERR value is not an integer or out of range")
    );
    // QUIT answers, and nothing after it runs.
    let mut input = cmd("QUIT");
    input.extend(cmd("SET after quit"));
    assert_eq!(run(&mut c, &mut s, &input), vec![simple("OK")]);
    assert_eq!(c.close_reason(), Some(Close::Quit));
    assert!(c.is_finished());
    assert!(s.data.is_empty());
}

#[test]
fn quit_waits_for_the_replies_before_it() {
    let (mut c, mut s) = (conn(), MemStore::new());
    let mut input = cmd("SET k v");
    input.extend(cmd("QUIT"));
    c.feed(&input);
    c.process(&mut s);
    assert!(!c.is_finished(), "the SET is still in progress");
    s.deliver_all(&mut c);
    assert_eq!(c.output(), b"+OK\r\n+OK\r\n");
    assert!(!c.is_finished(), "replies not written yet");
    c.sent(c.output().len());
    assert!(c.is_finished());
}

#[test]
fn command_introspection_is_what_redis_cli_reads() {
    let (mut c, mut s) = (conn(), MemStore::new());
    let Value::Integer(count) = one(&mut c, &mut s, "COMMAND COUNT") else {
        panic!()
    };
    let Value::Array(all) = one(&mut c, &mut s, "COMMAND") else {
        panic!()
    };
    assert_eq!(all.len() as i64, count);
    // COMMAND INFO: name, arity, flags, first key, last key, step, ...
    match one(&mut c, &mut s, "COMMAND INFO mset nosuch") {
        Value::Array(v) => {
            assert_eq!(v.len(), 2);
            assert_eq!(v[1], Value::Null);
            let Value::Array(mset) = &v[0] else { panic!() };
            assert_eq!(mset[0], bulk("mset"));
            assert_eq!(mset[1], Value::Integer(-3));
            assert_eq!(
                mset[3..6],
                [Value::Integer(1), Value::Integer(-1), Value::Integer(2)]
            );
            assert_eq!(mset.len(), 10);
        }
        other => panic!("{other:?}"),
    }
    // COMMAND DOCS: a map (flat in RESP2) of name → doc map with summary/since/group and
    // an arguments array; containers have subcommands.
    let Value::Array(docs) = one(&mut c, &mut s, "COMMAND DOCS") else {
        panic!()
    };
    assert_eq!(docs.len() as i64, 2 * count);
    let pos = docs.iter().position(|d| *d == bulk("config")).unwrap();
    let Value::Array(config_doc) = &docs[pos + 1] else {
        panic!()
    };
    assert!(config_doc.contains(&bulk("subcommands")));
    let Value::Array(set_doc) = one(&mut c, &mut s, "COMMAND DOCS set") else {
        panic!()
    };
    assert_eq!(set_doc[0], bulk("set"));
    let Value::Array(fields) = &set_doc[1] else {
        panic!()
    };
    for f in ["summary", "since", "group", "complexity", "arguments"] {
        assert!(fields.contains(&bulk(f)), "{f}");
    }
    let Value::Array(names) = one(&mut c, &mut s, "COMMAND LIST") else {
        panic!()
    };
    assert!(names.contains(&bulk("get")) && names.contains(&bulk("config|get")));
    assert!(matches!(
        one(&mut c, &mut s, "COMMAND HELP"),
        Value::Array(_)
    ));
}

#[test]
fn config_get_answers_what_redis_benchmark_asks() {
    let (mut c, mut s) = (conn(), MemStore::new());
    assert_eq!(
        one(&mut c, &mut s, "CONFIG GET save"),
        Value::Array(vec![bulk("save"), bulk("")])
    );
    assert_eq!(
        one(&mut c, &mut s, "CONFIG GET appendonly"),
        Value::Array(vec![bulk("appendonly"), bulk("yes")])
    );
    assert_eq!(
        one(&mut c, &mut s, "CONFIG GET nosuch"),
        Value::Array(vec![])
    );
    assert_eq!(
        one(&mut c, &mut s, "CONFIG SET save 1"),
        err("ERR CONFIG SET is not supported: kv-service is configured by its command line")
    );
}

#[test]
fn info_sections() {
    let (mut c, mut s) = (conn(), MemStore::new());
    run(&mut c, &mut s, &cmd("SET k v"));
    let Value::Bulk(all) = one(&mut c, &mut s, "INFO") else {
        panic!()
    };
    let all = String::from_utf8(all).unwrap();
    for want in [
        "# Server\r\n",
        "redis_version:",
        "# Clients\r\n",
        "# Persistence\r\n",
        "loading:0\r\n",
        "# Stats\r\n",
        "# Keyspace\r\ndb0:keys=1,expires=0,avg_ttl=0\r\n",
    ] {
        assert!(all.contains(want), "{want:?} in {all}");
    }
    let Value::Bulk(two) = one(&mut c, &mut s, "INFO server CLIENTS") else {
        panic!()
    };
    let two = String::from_utf8(two).unwrap();
    assert!(two.starts_with("# Server\r\n") && two.contains("\r\n\r\n# Clients\r\n"));
    assert!(!two.contains("# Stats"));
}

#[test]
fn inline_commands_work_like_telnet() {
    let (mut c, mut s) = (conn(), MemStore::new());
    assert_eq!(
        run(
            &mut c,
            &mut s,
            b"set greeting \"hello world\"\r\nget greeting\n\r\n"
        ),
        vec![simple("OK"), bulk("hello world")]
    );
}

#[test]
fn a_protocol_error_is_answered_after_the_replies_before_it_and_closes() {
    let (mut c, mut s) = (conn(), MemStore::new());
    let mut input = cmd("SET k v");
    input.extend_from_slice(b"*1\r\n:oops\r\n");
    input.extend(cmd("GET k"));
    c.feed(&input);
    c.process(&mut s);
    assert_eq!(c.close_reason(), Some(Close::ProtocolError));
    assert!(!c.wants_read());
    s.deliver_all(&mut c);
    assert_eq!(
        replies(&mut c),
        vec![
            simple("OK"),
            err("ERR Protocol error: expected '$', got ':'")
        ]
    );
    assert!(c.is_finished());
    assert_eq!(s.log.len(), 1, "the GET after the error never ran");
}

#[test]
fn a_frame_over_the_query_buffer_is_refused_before_it_arrives() {
    let config = Config {
        limits: Limits {
            max_query_buffer: 1024,
            parse: ParseLimits {
                max_bulk_len: 1 << 20,
                ..ParseLimits::default()
            },
            ..Limits::default()
        },
        ..Config::default()
    };
    let (mut c, _) = conn_with(config);
    let mut s = MemStore::new();
    c.feed(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5000\r\n");
    c.process(&mut s);
    assert_eq!(c.close_reason(), Some(Close::ProtocolError));
    assert_eq!(
        replies(&mut c),
        vec![err(
            "ERR Protocol error: request larger than the query buffer limit of 1024 bytes"
        )]
    );
    // Within the bound, a large bulk is received in as many reads as it takes.
    let config = Config {
        limits: Limits {
            max_query_buffer: 256 << 10,
            ..Limits::default()
        },
        ..Config::default()
    };
    let (mut c, _) = conn_with(config);
    let value = vec![b'x'; 100_000];
    let input = req(&[b"SET", b"big", &value]);
    for chunk in input.chunks(4096) {
        assert_eq!(c.feed(chunk), chunk.len());
        c.process(&mut s);
    }
    s.deliver_all(&mut c);
    assert_eq!(replies(&mut c), vec![simple("OK")]);
    assert_eq!(s.data.get(&b"big"[..]).map(Vec::len), Some(100_000));
}

#[test]
fn a_client_that_does_not_read_is_throttled() {
    let config = Config {
        limits: Limits {
            max_output_buffer: 1000,
            ..Limits::default()
        },
        ..Config::default()
    };
    let (mut c, _) = conn_with(config);
    let mut s = MemStore::new();
    run(&mut c, &mut s, &req(&[b"SET", b"k", &[b'v'; 300]]));
    let mut batch = Vec::new();
    for _ in 0..10 {
        batch.extend(cmd("GET k"));
    }
    // The first ten run (their replies are not known until they complete) ...
    c.feed(&batch);
    assert_eq!(c.process(&mut s), 10);
    s.deliver_all(&mut c);
    // ... and their 3 070 unread bytes stop everything after them.
    c.feed(&batch);
    assert_eq!(c.process(&mut s), 0);
    assert!(!c.wants_read());
    assert!(c.has_input());
    // The client reads: the rest runs.
    assert_eq!(replies(&mut c).len(), 10);
    assert!(c.wants_read());
    assert_eq!(c.process(&mut s), 10);
    s.deliver_all(&mut c);
    assert_eq!(replies(&mut c).len(), 10);
}

#[test]
fn replies_held_behind_a_slow_one_count_against_the_output_bound() {
    let config = Config {
        limits: Limits {
            max_output_buffer: 1000,
            ..Limits::default()
        },
        ..Config::default()
    };
    let (mut c, _) = conn_with(config);
    let mut s = MemStore::new();
    let mut input = cmd("GET slow");
    let big = "e".repeat(300);
    for _ in 0..50 {
        input.extend(cmd(&format!("ECHO {big}")));
    }
    c.feed(&input);
    // The GET waits on the store; ECHO replies queue behind it until 1000 bytes are held.
    assert_eq!(c.process(&mut s), 5);
    assert!(!c.wants_read());
    assert_eq!(c.output(), b"");
    s.deliver_all(&mut c);
    assert_eq!(replies(&mut c).len(), 5);
    let mut total = 5;
    while total < 51 {
        assert!(c.process(&mut s) > 0);
        total += replies(&mut c).len();
    }
    assert_eq!(total, 51);
}

#[test]
fn the_pipeline_depth_is_bounded() {
    let config = Config {
        limits: Limits {
            max_pipeline: 8,
            ..Limits::default()
        },
        ..Config::default()
    };
    let (mut c, _) = conn_with(config);
    let mut s = MemStore::new();
    let mut input = Vec::new();
    for i in 0..20 {
        input.extend(cmd(&format!("SET k{i} v")));
    }
    c.feed(&input);
    assert_eq!(c.process(&mut s), 8);
    assert_eq!(c.ops_in_flight(), 8);
    assert!(!c.wants_read());
    assert_eq!(c.process(&mut s), 0);
    s.deliver_all(&mut c);
    assert_eq!(c.process(&mut s), 8);
}

#[test]
fn half_closed_input_still_gets_its_replies() {
    let (mut c, mut s) = (conn(), MemStore::new());
    c.feed(&cmd("SET k v"));
    c.input_closed();
    assert!(!c.is_finished(), "the SET has not run");
    c.process(&mut s);
    assert!(!c.is_finished());
    s.deliver_all(&mut c);
    assert_eq!(replies(&mut c), vec![simple("OK")]);
    assert!(c.is_finished());
}

#[test]
fn a_get_the_store_answers_at_once_keeps_its_place_in_the_pipeline() {
    let (mut c, mut s) = (conn(), MemStore::new());
    s.data.insert(b"a".to_vec(), b"1".to_vec());
    s.deferred = true;
    s.now = true;
    let mut input = cmd("SET k v");
    input.extend(cmd("GET a"));
    input.extend(cmd("MGET a nope"));
    input.extend(cmd("GET k"));
    c.feed(&input);
    // GET a and MGET are answered inside `process` but wait behind the SET in flight;
    // GET k must see the SET: it stalls.
    assert_eq!(c.process(&mut s), 3);
    assert_eq!(s.now_answered, 3, "GET a, and both keys of the MGET");
    assert_eq!(
        s.log,
        vec![r#"Put { key: [107], value: [118] }"#.to_string()]
    );
    assert_eq!(replies(&mut c), vec![], "nothing may overtake the SET");
    s.deliver_all(&mut c);
    assert_eq!(c.process(&mut s), 1);
    assert_eq!(s.now_answered, 4, "GET k, once the write has run");
    assert_eq!(
        replies(&mut c),
        vec![
            simple("OK"),
            bulk("1"),
            Value::Array(vec![bulk("1"), Value::Null]),
            bulk("v"),
        ]
    );
    assert_eq!(c.ops_in_flight(), 0);
}
