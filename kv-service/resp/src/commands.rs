//! Running one command: look it up, check arity and authentication in Redis's order, parse
//! its options, and either answer at once or queue a reply and submit its operations.
//!
//! Error messages follow Redis 7's wording wherever Redis has the same error, so that client
//! libraries that match on them (and people who know them) are not surprised.
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::fmt::Write as _;

use crate::conn::{Close, Pending, ScanState, Session};
use crate::encode::{Encoder, Protocol};
use crate::glob::literal_prefix;
use crate::info::{config_get, info_text};
use crate::order::{key_hash, Access, Touched};
use crate::parse::{parse_i64, parse_u64, Command};
use crate::store::{KvOp, OpId, SetCond, Store};
use crate::table::{self, Cmd, Spec, COMMANDS};

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
const SYNTAX: &str = "ERR syntax error";
const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
const DEFAULT_USER: &[u8] = b"default";

/// At most `max` characters of `b`, lossily as text (for echoing client bytes in errors).
fn shown(b: &[u8], max: usize) -> String {
    String::from_utf8_lossy(b).chars().take(max).collect()
}

/// Redis 7's unknown-command error: the name and the first arguments, 128 characters each
/// at most.
fn unknown_command(cmd: &Command<'_>) -> String {
    let mut args = String::new();
    for a in cmd.args().skip(1) {
        if args.len() >= 128 {
            break;
        }
        let room = 128 - args.len();
        let _ = write!(args, "'{}' ", shown(a, room));
    }
    format!(
        "ERR unknown command '{}', with args beginning with: {args}",
        shown(cmd.arg(0).unwrap_or_default(), 128)
    )
}

/// Compares passwords in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        let y = b.get(i % b.len().max(1)).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

/// Redis accepts client names and library attributes of printable ASCII without blanks.
fn valid_name(b: &[u8]) -> bool {
    b.iter().all(|&c| (b'!'..=b'~').contains(&c))
}

fn help_lines(e: &mut Encoder<'_>, lines: &[&str]) {
    e.array(lines.len());
    lines.iter().for_each(|l| e.simple(l));
}

impl Session {
    fn limits(&self) -> crate::config::Limits {
        self.shared.config().limits
    }

    fn arity_error(&mut self, spec: &Spec) {
        let msg = format!(
            "ERR wrong number of arguments for '{}' command",
            spec.full_name()
        );
        self.error(&msg);
    }

    /// Whether `key` is within the key limit; answers the command with an error if not.
    fn key_ok(&mut self, key: &[u8]) -> bool {
        let max = self.limits().max_key_len;
        if key.len() > max {
            let msg = format!(
                "ERR key of {} bytes exceeds the limit of {max} bytes",
                key.len()
            );
            self.error(&msg);
            return false;
        }
        true
    }

    fn value_ok(&mut self, value: &[u8]) -> bool {
        let max = self.limits().max_value_len;
        if value.len() > max {
            let msg = format!(
                "ERR value of {} bytes exceeds the limit of {max} bytes",
                value.len()
            );
            self.error(&msg);
            return false;
        }
        true
    }

    /// Runs one non-empty command.
    pub(crate) fn run<S: Store>(&mut self, cmd: &Command<'_>, store: &mut S) {
        let name = cmd.arg(0).unwrap_or_default();
        if self.authenticated {
            if self.transaction(name) {
                return;
            }
        } else if [&b"multi"[..], b"exec", b"discard"]
            .iter()
            .any(|w| name.eq_ignore_ascii_case(w))
        {
            return self.error(NOAUTH);
        }
        let Some(top) = table::lookup(name) else {
            match table::refused(name) {
                Some(_) if !self.authenticated => self.error(NOAUTH),
                Some(why) => {
                    let msg = format!(
                        "ERR {} is not supported: {why}",
                        shown(name, 32).to_ascii_uppercase()
                    );
                    self.error(&msg);
                }
                None => self.error(&unknown_command(cmd)),
            }
            return;
        };
        if !top.arity_ok(cmd.len()) {
            return self.arity_error(top);
        }
        let spec = if top.subcommands.is_empty() || (top.cmd == Cmd::Command && cmd.len() == 1) {
            top
        } else {
            let sub = cmd.arg(1).unwrap_or_default();
            match top.subcommand(sub) {
                Some(s) if s.arity_ok(cmd.len()) => s,
                Some(s) => return self.arity_error(s),
                None => {
                    let msg = format!(
                        "ERR unknown subcommand '{}'. Try {} HELP.",
                        shown(sub, 128),
                        top.name.to_ascii_uppercase()
                    );
                    return self.error(&msg);
                }
            }
        };
        if !self.authenticated && !spec.no_auth() {
            return self.error(NOAUTH);
        }
        let arg = |i: usize| cmd.arg(i).unwrap_or_default();
        match spec.cmd {
            Cmd::Ping => match cmd.len() {
                1 => self.reply(|e| e.simple("PONG")),
                2 => self.reply(|e| e.bulk(arg(1))),
                _ => self.arity_error(spec),
            },
            Cmd::Echo => self.reply(|e| e.bulk(arg(1))),
            Cmd::Get => self.read_one(Pending::Get, arg(1), store),
            Cmd::Strlen => self.read_one(Pending::Strlen, arg(1), store),
            Cmd::Type => self.read_one(Pending::Type, arg(1), store),
            Cmd::Ttl | Cmd::Pttl => self.read_one(Pending::Ttl, arg(1), store),
            Cmd::Set => self.set(cmd, store),
            Cmd::GetSet => self.write_one(arg(1), arg(2), Some((SetCond::Always, true)), store),
            Cmd::Del => self.multi_key(cmd, Pending::Del(0), store),
            Cmd::Exists => self.multi_key(cmd, Pending::Exists(0), store),
            Cmd::MGet => self.multi_key(
                cmd,
                Pending::MGet {
                    next: 0,
                    stash: Vec::new(),
                },
                store,
            ),
            Cmd::MSet => self.mset(cmd, spec, store),
            Cmd::Scan => self.scan(cmd, store),
            Cmd::DbSize if self.order.writes_in_flight() => self.stalled = true,
            Cmd::Info if self.order.writes_in_flight() => self.stalled = true,
            Cmd::DbSize => {
                let keys = store.figures().keys;
                self.reply(|e| e.integer(i64::try_from(keys).unwrap_or(i64::MAX)));
            }
            Cmd::Info => {
                let text = info_text(self.shared.config(), &store.figures(), cmd.args().skip(1));
                self.reply(|e| e.verbatim(text.as_bytes()));
            }
            Cmd::Command => self.reply(|e| {
                e.array(COMMANDS.len());
                COMMANDS.iter().for_each(|s| s.encode_info(e));
            }),
            Cmd::CommandCount => self.reply(|e| e.integer(COMMANDS.len() as i64)),
            Cmd::CommandInfo => self.command_info(cmd),
            Cmd::CommandDocs => self.command_docs(cmd),
            Cmd::CommandList => {
                if cmd.len() > 2 {
                    return self.error(SYNTAX);
                }
                let names: Vec<&str> = COMMANDS
                    .iter()
                    .flat_map(|s| {
                        std::iter::once(s.name).chain(s.subcommands.iter().map(|c| c.name))
                    })
                    .collect();
                self.reply(|e| {
                    e.array(names.len());
                    names.iter().for_each(|n| e.bulk(n.as_bytes()));
                });
            }
            Cmd::CommandHelp => self.reply(|e| {
                help_lines(
                    e,
                    &[
                        "COMMAND <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                        "(no subcommand)",
                        "    Return details about all commands.",
                        "COUNT",
                        "    Return the total number of commands.",
                        "DOCS [<command-name> ...]",
                        "    Return documentation details about commands (all if none named).",
                        "INFO [<command-name> ...]",
                        "    Return details about the named commands (all if none named).",
                        "LIST",
                        "    Return the names of all commands.",
                        "HELP",
                        "    Print this help.",
                    ],
                )
            }),
            Cmd::ConfigGet => {
                let found = config_get(self.shared.config(), cmd.args().skip(2));
                self.reply(|e| {
                    e.map(found.len());
                    for (k, v) in &found {
                        e.bulk(k.as_bytes());
                        e.bulk(v.as_bytes());
                    }
                });
            }
            Cmd::ConfigSet | Cmd::ConfigResetStat | Cmd::ConfigRewrite => {
                let msg = format!(
                    "ERR CONFIG {} is not supported: kv-service is configured by its command line",
                    shown(arg(1), 32).to_ascii_uppercase()
                );
                self.error(&msg);
            }
            Cmd::ConfigHelp => self.reply(|e| {
                help_lines(
                    e,
                    &[
                        "CONFIG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                        "GET <pattern> [<pattern> ...]",
                        "    Return parameters matching the glob-like <pattern>s and their values.",
                        "HELP",
                        "    Print this help.",
                    ],
                )
            }),
            Cmd::ClientSetName => {
                let name = arg(2);
                if !valid_name(name) {
                    return self.error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.name = (!name.is_empty()).then(|| name.to_vec());
                self.reply(|e| e.ok());
            }
            Cmd::ClientGetName => {
                let name = self.name.clone();
                self.reply(|e| match &name {
                    Some(n) => e.bulk(n),
                    None => e.null(),
                });
            }
            Cmd::ClientId => {
                let id = self.id;
                self.reply(|e| e.integer(i64::try_from(id).unwrap_or(i64::MAX)));
            }
            Cmd::ClientSetInfo => {
                let (attr, value) = (arg(2), arg(3));
                let is_name = attr.eq_ignore_ascii_case(b"lib-name");
                if !is_name && !attr.eq_ignore_ascii_case(b"lib-ver") {
                    let msg = format!("ERR Unrecognized option '{}'", shown(attr, 128));
                    return self.error(&msg);
                }
                if !valid_name(value) {
                    let msg = format!(
                        "ERR {} cannot contain spaces, newlines or special characters.",
                        shown(attr, 16)
                    );
                    return self.error(&msg);
                }
                let v = (!value.is_empty()).then(|| value.to_vec());
                if is_name {
                    self.lib_name = v;
                } else {
                    self.lib_ver = v;
                }
                self.reply(|e| e.ok());
            }
            Cmd::ClientInfo => {
                let line = self.client_line();
                self.reply(|e| e.verbatim(line.as_bytes()));
            }
            Cmd::ClientList => self.error(
                "ERR CLIENT LIST is not supported: kv-service spreads its connections over \
                 threads; use CLIENT INFO for this one",
            ),
            Cmd::ClientHelp => self.reply(|e| {
                help_lines(
                    e,
                    &[
                        "CLIENT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                        "GETNAME",
                        "    Return the name of the current connection.",
                        "ID",
                        "    Return the ID of the current connection.",
                        "INFO",
                        "    Return information about the current client connection.",
                        "SETINFO <option> <value>",
                        "    Set client meta attr. Options are: LIB-NAME, LIB-VER.",
                        "SETNAME <name>",
                        "    Assign the name <name> to the current connection.",
                        "HELP",
                        "    Print this help.",
                    ],
                )
            }),
            Cmd::Select => match parse_i64(arg(1)) {
                Some(0) => self.reply(|e| e.ok()),
                Some(_) => self.error("ERR DB index is out of range"),
                None => self.error(NOT_INTEGER),
            },
            Cmd::Quit => {
                self.reply(|e| e.ok());
                self.closing = Some(Close::Quit);
            }
            Cmd::Auth => match cmd.len() {
                2 if self.shared.config().password.is_none() => self.error(
                    "ERR AUTH <password> called without any password configured for the \
                     default user. Are you sure your configuration is correct?",
                ),
                2 => self.auth(None, arg(1)),
                3 => self.auth(Some(arg(1)), arg(2)),
                _ => self.error(SYNTAX),
            },
            Cmd::Hello => self.hello(cmd),
            // Containers always resolve to a subcommand above.
            Cmd::Config | Cmd::Client => self.arity_error(spec),
        }
    }

    /// MULTI / EXEC / DISCARD, and every command between them: whether `name` was handled
    /// here.
    ///
    /// kv-service has no transactions: running the commands between MULTI and EXEC one by
    /// one would give a client that pipelines a transaction half of it, unisolated, with an
    /// error. So MULTI is refused, and — as Redis does with a transaction it discards — the
    /// commands up to EXEC or DISCARD are not run either: each is answered with an error, and
    /// EXEC with EXECABORT. Nothing of the transaction happens.
    fn transaction(&mut self, name: &[u8]) -> bool {
        let is = |w: &str| name.eq_ignore_ascii_case(w.as_bytes());
        if !self.in_refused_multi {
            if is("multi") {
                self.in_refused_multi = true;
                self.error(
                    "ERR MULTI is not supported: kv-service has no transactions; the commands up \
                     to EXEC or DISCARD will not run (send them as a plain pipeline instead, \
                     e.g. redis-py's pipeline(transaction=False))",
                );
                return true;
            }
            if is("exec") || is("discard") {
                let msg = format!("ERR {} without MULTI", shown(name, 8).to_ascii_uppercase());
                self.error(&msg);
                return true;
            }
            return false;
        }
        if is("exec") {
            self.in_refused_multi = false;
            self.error(
                "EXECABORT Transaction discarded: kv-service does not run MULTI transactions",
            );
        } else if is("discard") {
            self.in_refused_multi = false;
            self.reply(|e| e.ok());
        } else if is("quit") {
            return false;
        } else if is("multi") {
            self.error("ERR MULTI calls can not be nested");
        } else {
            self.error(
                "ERR not run: this connection is inside a MULTI that kv-service refused; \
                 send EXEC or DISCARD to end it",
            );
        }
        true
    }

    /// Checks a password (and user: only `default` exists).
    fn check_auth(&self, user: Option<&[u8]>, pass: &[u8]) -> bool {
        let user_ok = user.is_none_or(|u| u == DEFAULT_USER);
        match &self.shared.config().password {
            // Without a password the default user takes any (Redis's `nopass`).
            None => user_ok,
            Some(p) => user_ok & same_secret(pass, p),
        }
    }

    fn auth(&mut self, user: Option<&[u8]>, pass: &[u8]) {
        if self.check_auth(user, pass) {
            self.authenticated = true;
            self.reply(|e| e.ok());
        } else {
            self.error(WRONGPASS);
        }
    }

    /// `HELLO [protover [AUTH username password] [SETNAME clientname]]`.
    fn hello(&mut self, cmd: &Command<'_>) {
        let arg = |i: usize| cmd.arg(i).unwrap_or_default();
        let mut proto = self.proto;
        if cmd.len() >= 2 {
            proto = match parse_i64(arg(1)) {
                Some(2) => Protocol::Resp2,
                Some(3) => Protocol::Resp3,
                Some(_) => return self.error("NOPROTO unsupported protocol version"),
                None => {
                    return self.error("ERR Protocol version is not an integer or out of range")
                }
            };
        }
        let (mut creds, mut setname) = (None, None);
        let mut i = 2;
        while i < cmd.len() {
            let opt = arg(i);
            let more = cmd.len() - i - 1;
            if opt.eq_ignore_ascii_case(b"AUTH") && more >= 2 {
                creds = Some((arg(i + 1), arg(i + 2)));
                i += 3;
            } else if opt.eq_ignore_ascii_case(b"SETNAME") && more >= 1 {
                setname = Some(arg(i + 1));
                i += 2;
            } else {
                let msg = format!("ERR Syntax error in HELLO option '{}'", shown(opt, 128));
                return self.error(&msg);
            }
        }
        if let Some((user, pass)) = creds {
            if !self.check_auth(Some(user), pass) {
                return self.error(WRONGPASS);
            }
            self.authenticated = true;
        }
        if !self.authenticated {
            return self.error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time",
            );
        }
        if let Some(name) = setname {
            if !valid_name(name) {
                return self.error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                );
            }
            self.name = (!name.is_empty()).then(|| name.to_vec());
        }
        self.proto = proto;
        let facts = &self.shared.config().facts;
        let version = facts.redis_version.clone();
        let id = i64::try_from(self.id).unwrap_or(i64::MAX);
        self.reply(|e| {
            e.map(7);
            e.bulk(b"server");
            e.bulk(b"redis");
            e.bulk(b"version");
            e.bulk(version.as_bytes());
            e.bulk(b"proto");
            e.integer(proto.version());
            e.bulk(b"id");
            e.integer(id);
            e.bulk(b"mode");
            e.bulk(b"standalone");
            e.bulk(b"role");
            e.bulk(b"master");
            e.bulk(b"modules");
            e.array(0);
        });
    }

    fn client_line(&self) -> String {
        let text = |b: &Option<Vec<u8>>| b.as_deref().map(|b| shown(b, 256)).unwrap_or_default();
        format!(
            "id={} addr={} laddr={} name={} db=0 user=default resp={} lib-name={} lib-ver={} cmd=client|info\n",
            self.id,
            self.peer,
            self.local,
            text(&self.name),
            self.proto.version(),
            text(&self.lib_name),
            text(&self.lib_ver),
        )
    }

    fn command_info(&mut self, cmd: &Command<'_>) {
        let names: Vec<&[u8]> = cmd.args().skip(2).collect();
        self.reply(|e| {
            if names.is_empty() {
                e.array(COMMANDS.len());
                COMMANDS.iter().for_each(|s| s.encode_info(e));
                return;
            }
            e.array(names.len());
            for n in &names {
                match find_spec(n) {
                    Some(s) => s.encode_info(e),
                    None => e.null(),
                }
            }
        });
    }

    fn command_docs(&mut self, cmd: &Command<'_>) {
        let specs: Vec<&Spec> = if cmd.len() == 2 {
            COMMANDS.iter().collect()
        } else {
            cmd.args().skip(2).filter_map(find_spec).collect()
        };
        self.reply(|e| {
            e.map(specs.len());
            for s in &specs {
                e.bulk(s.name.as_bytes());
                s.encode_docs(e);
            }
        });
    }

    /// GET, STRLEN, TYPE, TTL: one read.
    fn read_one<S: Store>(&mut self, pending: Pending, key: &[u8], store: &mut S) {
        if !self.key_ok(key) {
            return;
        }
        let touched = Touched::One(key_hash(key), Access::Read);
        if self.order.blocks(&touched) {
            self.stalled = true;
            return;
        }
        let seq = self.begin(pending, 1, touched, |_| {});
        self.read(OpId { seq, part: 0 }, key, store);
    }

    /// The read `id` of a command just begun: answered here if the store can at once
    /// ([`Store::get_now`]), submitted otherwise.
    fn read<S: Store>(&mut self, id: OpId, key: &[u8], store: &mut S) {
        match store.get_now(key) {
            Some(outcome) => {
                let waiting = self.complete(id, outcome);
                debug_assert!(waiting.is_ok(), "a command just begun waits for its reads");
            }
            None => store.submit(id, KvOp::Get { key }),
        }
    }

    /// SET / GETSET: a plain write, or a conditional one (`cond`: the condition and whether
    /// the old value is wanted).
    fn write_one<S: Store>(
        &mut self,
        key: &[u8],
        value: &[u8],
        cond: Option<(SetCond, bool)>,
        store: &mut S,
    ) {
        if !self.key_ok(key) || !self.value_ok(value) {
            return;
        }
        let (pending, op, access) = match cond {
            None => (Pending::Ok, KvOp::Put { key, value }, Access::Write),
            Some((cond, get)) => (
                Pending::Set { get },
                KvOp::Set {
                    key,
                    value,
                    cond,
                    get,
                },
                Access::ReadWrite,
            ),
        };
        let touched = Touched::One(key_hash(key), access);
        if self.order.blocks(&touched) {
            self.stalled = true;
            return;
        }
        let seq = self.begin(pending, 1, touched, |_| {});
        store.submit(OpId { seq, part: 0 }, op);
    }

    /// `SET key value [NX | XX] [GET] [EX s | PX ms | EXAT t | PXAT t | KEEPTTL]`.
    fn set<S: Store>(&mut self, cmd: &Command<'_>, store: &mut S) {
        let arg = |i: usize| cmd.arg(i).unwrap_or_default();
        let (mut nx, mut xx, mut get, mut expiry, mut keepttl) =
            (false, false, false, false, false);
        let mut i = 3;
        while i < cmd.len() {
            let a = arg(i);
            let has_next = i + 1 < cmd.len();
            if a.eq_ignore_ascii_case(b"NX") && !xx {
                nx = true;
            } else if a.eq_ignore_ascii_case(b"XX") && !nx {
                xx = true;
            } else if a.eq_ignore_ascii_case(b"GET") {
                get = true;
            } else if a.eq_ignore_ascii_case(b"KEEPTTL") && !expiry {
                keepttl = true;
            } else if [&b"EX"[..], b"PX", b"EXAT", b"PXAT"]
                .iter()
                .any(|o| a.eq_ignore_ascii_case(o))
                && !expiry
                && !keepttl
                && has_next
            {
                expiry = true;
                i += 1;
                match parse_i64(arg(i)) {
                    None => return self.error(NOT_INTEGER),
                    Some(t) if t <= 0 => {
                        return self.error("ERR invalid expire time in 'set' command")
                    }
                    Some(_) => {}
                }
            } else {
                return self.error(SYNTAX);
            }
            i += 1;
        }
        if expiry || keepttl {
            return self.error(
                "ERR SET options EX, PX, EXAT, PXAT and KEEPTTL are not supported: \
                 kv-service keys do not expire",
            );
        }
        let cond = match (nx, xx, get) {
            (false, false, false) => None,
            (true, _, _) => Some((SetCond::IfAbsent, get)),
            (_, true, _) => Some((SetCond::IfPresent, get)),
            (false, false, true) => Some((SetCond::Always, true)),
        };
        self.write_one(arg(1), arg(2), cond, store);
    }

    /// DEL, EXISTS, MGET: one operation per key, one reply.
    fn multi_key<S: Store>(&mut self, cmd: &Command<'_>, pending: Pending, store: &mut S) {
        let keys = cmd.args().skip(1);
        if keys.clone().any(|k| k.len() > self.limits().max_key_len) {
            if let Some(k) = keys.clone().find(|k| k.len() > self.limits().max_key_len) {
                self.key_ok(k);
            }
            return;
        }
        let n = keys.len();
        let is_mget = matches!(pending, Pending::MGet { .. });
        let is_del = matches!(pending, Pending::Del(_));
        let access = if is_del { Access::Write } else { Access::Read };
        let touched = Touched::Many(keys.clone().map(|k| (key_hash(k), access)).collect());
        if self.order.blocks(&touched) {
            self.stalled = true;
            return;
        }
        let seq = self.begin(pending, n as u32, touched, |e| {
            if is_mget {
                e.array(n);
            }
        });
        for (part, key) in keys.enumerate() {
            let id = OpId {
                seq,
                part: part as u32,
            };
            if is_del {
                store.submit(id, KvOp::Delete { key });
            } else {
                self.read(id, key, store);
            }
        }
    }

    /// `MSET key value [key value ...]`: one write per pair; `+OK` once all are durable.
    fn mset<S: Store>(&mut self, cmd: &Command<'_>, spec: &Spec, store: &mut S) {
        if cmd.len().is_multiple_of(2) {
            return self.arity_error(spec);
        }
        let args: Vec<&[u8]> = cmd.args().skip(1).collect();
        for pair in args.chunks(2) {
            if let [k, v] = pair {
                if !self.key_ok(k) || !self.value_ok(v) {
                    return;
                }
            }
        }
        // A key named twice ends with its last value (MSET is atomic: nobody sees the one
        // before), so only that pair is written: one engine write per key, never a chain
        // of writes of one key, which the engine runs one after another.
        let mut seen = std::collections::HashSet::new();
        let mut pairs: Vec<(&[u8], &[u8])> = args
            .chunks(2)
            .rev()
            .filter_map(|p| match *p {
                [k, v] => seen.insert(k).then_some((k, v)),
                _ => None,
            })
            .collect();
        pairs.reverse();
        let touched = Touched::Many(
            pairs
                .iter()
                .map(|(k, _)| (key_hash(k), Access::Write))
                .collect(),
        );
        if self.order.blocks(&touched) {
            self.stalled = true;
            return;
        }
        let seq = self.begin(Pending::Ok, pairs.len() as u32, touched, |_| {});
        for (part, &(key, value)) in pairs.iter().enumerate() {
            let id = OpId {
                seq,
                part: part as u32,
            };
            store.submit(id, KvOp::Put { key, value });
        }
    }

    /// `SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]`.
    fn scan<S: Store>(&mut self, cmd: &Command<'_>, store: &mut S) {
        let arg = |i: usize| cmd.arg(i).unwrap_or_default();
        let Some(cursor) = parse_u64(arg(1)) else {
            return self.error("ERR invalid cursor");
        };
        let (mut pattern, mut count, mut other_type) = (None, 10usize, false);
        let mut i = 2;
        while i < cmd.len() {
            let (opt, value) = (arg(i), cmd.arg(i + 1));
            let Some(value) = value else {
                return self.error(SYNTAX);
            };
            if opt.eq_ignore_ascii_case(b"COUNT") {
                match parse_i64(value) {
                    None => return self.error(NOT_INTEGER),
                    Some(c) if c < 1 => return self.error(SYNTAX),
                    Some(c) => count = usize::try_from(c).unwrap_or(usize::MAX),
                }
            } else if opt.eq_ignore_ascii_case(b"MATCH") {
                // `*` matches everything: no filtering needed.
                pattern = (value != b"*").then(|| value.to_vec());
            } else if opt.eq_ignore_ascii_case(b"TYPE") {
                other_type = !value.eq_ignore_ascii_case(b"string");
            } else {
                return self.error(SYNTAX);
            }
            i += 2;
        }
        if other_type {
            // Every key holds a string: a scan for another type is over at once.
            return self.reply(|e| {
                e.array(2);
                e.bulk(b"0");
                e.array(0);
            });
        }
        let prefix = pattern.as_deref().map(literal_prefix).unwrap_or_default();
        let resume = if cursor == 0 {
            Vec::new()
        } else {
            let saved = self.shared.cursors().get(cursor).map(<[u8]>::to_vec);
            match saved {
                Some(k) => k,
                None => return self.error("ERR invalid cursor"),
            }
        };
        // Start at the resume key or the pattern's prefix, whichever is later.
        let start = if resume > prefix {
            resume
        } else {
            prefix.clone()
        };
        let max = count.min(self.limits().max_scan_count);
        let state = ScanState { pattern, prefix };
        if self.order.blocks(&Touched::Scan) {
            self.stalled = true;
            return;
        }
        let seq = self.begin(Pending::Scan(Box::new(state)), 1, Touched::Scan, |_| {});
        store.submit(OpId { seq, part: 0 }, KvOp::Scan { start: &start, max });
    }
}

/// A command or subcommand by name (`get`, `config|get`, `CONFIG` ...).
fn find_spec(name: &[u8]) -> Option<&'static Spec> {
    let text = std::str::from_utf8(name).ok()?;
    match text.split_once('|') {
        Some((parent, sub)) => table::lookup(parent.as_bytes())?.subcommand(sub.as_bytes()),
        None => table::lookup(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_only() {
        assert!(same_secret(b"hunter2", b"hunter2"));
        assert!(!same_secret(b"hunter2", b"hunter3"));
        assert!(!same_secret(b"hunter2", b"hunter22"));
        assert!(!same_secret(b"", b"x"));
        assert!(same_secret(b"", b""));
    }
}
