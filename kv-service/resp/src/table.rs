//! The command table: every command the front-end knows, with what `COMMAND` and
//! `COMMAND DOCS` report about it (arity, flags, key positions, ACL categories, summary,
//! arguments) in Redis 7's shapes, so that redis-cli's hints and help and the key
//! extraction of cluster-aware clients work.

use crate::encode::Encoder;

/// What a command does (dispatch key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmd {
    Ping,
    Echo,
    Get,
    Set,
    GetSet,
    Del,
    Exists,
    MGet,
    MSet,
    Strlen,
    Type,
    Ttl,
    Pttl,
    Scan,
    DbSize,
    Info,
    Command,
    CommandCount,
    CommandDocs,
    CommandInfo,
    CommandList,
    CommandHelp,
    Config,
    ConfigGet,
    ConfigSet,
    ConfigResetStat,
    ConfigRewrite,
    ConfigHelp,
    Client,
    ClientSetName,
    ClientGetName,
    ClientId,
    ClientSetInfo,
    ClientInfo,
    ClientList,
    ClientHelp,
    Select,
    Quit,
    Auth,
    Hello,
}

/// The type of a documented argument (`COMMAND DOCS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArgKind {
    Key,
    Str,
    Integer,
    Pattern,
    PureToken,
    OneOf,
    Block,
}

impl ArgKind {
    fn name(self) -> &'static str {
        match self {
            ArgKind::Key => "key",
            ArgKind::Str => "string",
            ArgKind::Integer => "integer",
            ArgKind::Pattern => "pattern",
            ArgKind::PureToken => "pure-token",
            ArgKind::OneOf => "oneof",
            ArgKind::Block => "block",
        }
    }
}

/// One documented argument.
#[derive(Debug)]
pub(crate) struct Arg {
    name: &'static str,
    kind: ArgKind,
    token: Option<&'static str>,
    optional: bool,
    multiple: bool,
    children: &'static [Arg],
}

const fn arg(name: &'static str, kind: ArgKind) -> Arg {
    Arg {
        name,
        kind,
        token: None,
        optional: false,
        multiple: false,
        children: &[],
    }
}

const fn opt(mut a: Arg) -> Arg {
    a.optional = true;
    a
}

const fn many(mut a: Arg) -> Arg {
    a.multiple = true;
    a
}

const fn tok(name: &'static str, token: &'static str, kind: ArgKind) -> Arg {
    let mut a = arg(name, kind);
    a.token = Some(token);
    a
}

const fn group(name: &'static str, kind: ArgKind, children: &'static [Arg]) -> Arg {
    let mut a = arg(name, kind);
    a.children = children;
    a
}

/// One command (or subcommand, named `parent|sub`).
#[derive(Debug)]
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) cmd: Cmd,
    /// Redis's arity: `n` exactly n arguments (the name included), `-n` at least n.
    pub(crate) arity: i64,
    flags: &'static [&'static str],
    /// First key, last key (-1: the last argument), step.
    keys: (i64, i64, i64),
    acl: &'static [&'static str],
    group: &'static str,
    since: &'static str,
    summary: &'static str,
    complexity: &'static str,
    args: &'static [Arg],
    pub(crate) subcommands: &'static [Spec],
}

impl Spec {
    /// Whether an unauthenticated connection may run it.
    pub(crate) fn no_auth(&self) -> bool {
        self.flags.contains(&"no_auth")
    }

    /// Whether `argc` arguments (the name included) fit the arity.
    pub(crate) fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// The subcommand `name` (matched without case).
    pub(crate) fn subcommand(&self, name: &[u8]) -> Option<&'static Spec> {
        self.subcommands.iter().find(|s| {
            s.name
                .split_once('|')
                .is_some_and(|(_, sub)| sub.as_bytes().eq_ignore_ascii_case(name))
        })
    }

    /// The name a reply shows: `get`, `config|get`.
    pub(crate) fn full_name(&self) -> &'static str {
        self.name
    }

    /// The `COMMAND INFO` entry: name, arity, flags, first key, last key, step, ACL
    /// categories, tips, key specs, subcommands.
    pub(crate) fn encode_info(&self, e: &mut Encoder<'_>) {
        e.array(10);
        e.bulk(self.name.as_bytes());
        e.integer(self.arity);
        e.set(self.flags.len());
        self.flags.iter().for_each(|f| e.simple(f));
        e.integer(self.keys.0);
        e.integer(self.keys.1);
        e.integer(self.keys.2);
        e.set(self.acl.len());
        self.acl.iter().for_each(|c| e.simple(c));
        e.set(0);
        e.array(0);
        e.array(self.subcommands.len());
        self.subcommands.iter().for_each(|s| s.encode_info(e));
    }

    /// The `COMMAND DOCS` entry's value (a map).
    pub(crate) fn encode_docs(&self, e: &mut Encoder<'_>) {
        let subs = !self.subcommands.is_empty();
        e.map(5 + usize::from(subs));
        for (k, v) in [
            ("summary", self.summary),
            ("since", self.since),
            ("group", self.group),
            ("complexity", self.complexity),
        ] {
            e.bulk(k.as_bytes());
            e.bulk(v.as_bytes());
        }
        e.bulk(b"arguments");
        encode_args(self.args, e);
        if subs {
            e.bulk(b"subcommands");
            e.map(self.subcommands.len());
            for s in self.subcommands {
                e.bulk(s.name.as_bytes());
                s.encode_docs(e);
            }
        }
    }
}

fn encode_args(args: &[Arg], e: &mut Encoder<'_>) {
    e.array(args.len());
    for a in args {
        let flags: Vec<&str> = [(a.optional, "optional"), (a.multiple, "multiple")]
            .into_iter()
            .filter_map(|(on, f)| on.then_some(f))
            .collect();
        let n = 2
            + usize::from(a.token.is_some())
            + usize::from(!flags.is_empty())
            + usize::from(!a.children.is_empty());
        e.map(n);
        e.bulk(b"name");
        e.bulk(a.name.as_bytes());
        e.bulk(b"type");
        e.bulk(a.kind.name().as_bytes());
        if let Some(t) = a.token {
            e.bulk(b"token");
            e.bulk(t.as_bytes());
        }
        if !flags.is_empty() {
            e.bulk(b"flags");
            e.set(flags.len());
            flags.iter().for_each(|f| e.simple(f));
        }
        if !a.children.is_empty() {
            e.bulk(b"arguments");
            encode_args(a.children, e);
        }
    }
}

use ArgKind::*;

const KEY: Arg = arg("key", Key);
const KEYS: Arg = many(arg("key", Key));

const SET_CONDITION: Arg = opt(group(
    "condition",
    OneOf,
    &[tok("nx", "NX", PureToken), tok("xx", "XX", PureToken)],
));
const SET_EXPIRATION: Arg = opt(group(
    "expiration",
    OneOf,
    &[
        tok("seconds", "EX", Integer),
        tok("milliseconds", "PX", Integer),
        tok("unix-time-seconds", "EXAT", Integer),
        tok("unix-time-milliseconds", "PXAT", Integer),
        tok("keepttl", "KEEPTTL", PureToken),
    ],
));

macro_rules! spec {
    ($name:literal, $cmd:ident, $arity:expr, [$($flag:literal),*], $keys:expr, [$($acl:literal),*],
     $group:literal, $since:literal, $summary:literal, $complexity:literal, $args:expr) => {
        spec!($name, $cmd, $arity, [$($flag),*], $keys, [$($acl),*], $group, $since, $summary,
              $complexity, $args, &[])
    };
    ($name:literal, $cmd:ident, $arity:expr, [$($flag:literal),*], $keys:expr, [$($acl:literal),*],
     $group:literal, $since:literal, $summary:literal, $complexity:literal, $args:expr, $subs:expr) => {
        Spec {
            name: $name,
            cmd: Cmd::$cmd,
            arity: $arity,
            flags: &[$($flag),*],
            keys: $keys,
            acl: &[$($acl),*],
            group: $group,
            since: $since,
            summary: $summary,
            complexity: $complexity,
            args: $args,
            subcommands: $subs,
        }
    };
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const ONE_KEY: (i64, i64, i64) = (1, 1, 1);
const ALL_KEYS: (i64, i64, i64) = (1, -1, 1);

static COMMAND_SUBS: [Spec; 5] = [
    spec!(
        "command|count",
        CommandCount,
        2,
        ["loading", "stale"],
        NO_KEYS,
        ["@slow", "@connection"],
        "server",
        "2.8.13",
        "Returns a count of commands.",
        "O(1)",
        &[]
    ),
    spec!(
        "command|docs",
        CommandDocs,
        -2,
        ["loading", "stale"],
        NO_KEYS,
        ["@slow", "@connection"],
        "server",
        "7.0.0",
        "Returns documentary information about one, multiple or all commands.",
        "O(N) where N is the number of commands to look up",
        &[opt(many(arg("command-name", Str)))]
    ),
    spec!(
        "command|info",
        CommandInfo,
        -2,
        ["loading", "stale"],
        NO_KEYS,
        ["@slow", "@connection"],
        "server",
        "2.8.13",
        "Returns information about one, multiple or all commands.",
        "O(N) where N is the number of commands to look up",
        &[opt(many(arg("command-name", Str)))]
    ),
    spec!(
        "command|list",
        CommandList,
        -2,
        ["loading", "stale"],
        NO_KEYS,
        ["@slow", "@connection"],
        "server",
        "7.0.0",
        "Returns a list of command names.",
        "O(N) where N is the total number of commands",
        &[]
    ),
    spec!(
        "command|help",
        CommandHelp,
        2,
        ["loading", "stale"],
        NO_KEYS,
        ["@slow", "@connection"],
        "server",
        "5.0.0",
        "Returns helpful text about the different subcommands.",
        "O(1)",
        &[]
    ),
];

static CONFIG_SUBS: [Spec; 5] = [
    spec!(
        "config|get",
        ConfigGet,
        -3,
        ["admin", "noscript", "loading", "stale"],
        NO_KEYS,
        ["@admin", "@slow", "@dangerous"],
        "server",
        "2.0.0",
        "Returns the effective values of configuration parameters.",
        "O(N) when N is the number of configuration parameters provided",
        &[many(arg("parameter", Str))]
    ),
    spec!(
        "config|set",
        ConfigSet,
        -4,
        ["admin", "noscript", "loading", "stale"],
        NO_KEYS,
        ["@admin", "@slow", "@dangerous"],
        "server",
        "2.0.0",
        "Sets configuration parameters in-flight (not supported by kv-service).",
        "O(N) when N is the number of configuration parameters provided",
        &[many(group(
            "data",
            Block,
            &[arg("parameter", Str), arg("value", Str)]
        ))]
    ),
    spec!(
        "config|resetstat",
        ConfigResetStat,
        2,
        ["admin", "noscript", "loading", "stale"],
        NO_KEYS,
        ["@admin", "@slow", "@dangerous"],
        "server",
        "2.0.0",
        "Resets the server's statistics (not supported by kv-service).",
        "O(1)",
        &[]
    ),
    spec!(
        "config|rewrite",
        ConfigRewrite,
        2,
        ["admin", "noscript", "loading", "stale"],
        NO_KEYS,
        ["@admin", "@slow", "@dangerous"],
        "server",
        "2.8.0",
        "Persists the effective configuration to file (not supported by kv-service).",
        "O(1)",
        &[]
    ),
    spec!(
        "config|help",
        ConfigHelp,
        2,
        ["loading", "stale"],
        NO_KEYS,
        ["@slow"],
        "server",
        "5.0.0",
        "Returns helpful text about the different subcommands.",
        "O(1)",
        &[]
    ),
];

static CLIENT_SUBS: [Spec; 7] = [
    spec!("client|setname", ClientSetName, 3, ["noscript", "loading", "stale"], NO_KEYS,
          ["@slow", "@connection"], "connection", "2.6.9", "Sets the connection name.", "O(1)",
          &[arg("connection-name", Str)]),
    spec!("client|getname", ClientGetName, 2, ["noscript", "loading", "stale"], NO_KEYS,
          ["@slow", "@connection"], "connection", "2.6.9", "Returns the name of the connection.",
          "O(1)", &[]),
    spec!("client|id", ClientId, 2, ["noscript", "loading", "stale"], NO_KEYS,
          ["@slow", "@connection"], "connection", "5.0.0",
          "Returns the unique client ID of the connection.", "O(1)", &[]),
    spec!("client|setinfo", ClientSetInfo, 4, ["noscript", "loading", "stale"], NO_KEYS,
          ["@slow", "@connection"], "connection", "7.2.0",
          "Sets information specific to the client or connection.", "O(1)",
          &[group("attr", OneOf, &[tok("libname", "LIB-NAME", Str), tok("libver", "LIB-VER", Str)])]),
    spec!("client|info", ClientInfo, 2, ["noscript", "loading", "stale"], NO_KEYS,
          ["@slow", "@connection"], "connection", "6.2.0",
          "Returns information about the connection.", "O(1)", &[]),
    spec!("client|list", ClientList, -2, ["admin", "noscript", "loading", "stale"], NO_KEYS,
          ["@admin", "@slow", "@dangerous", "@connection"], "connection", "2.4.0",
          "Lists open connections (not supported by kv-service: its connections are spread over threads).",
          "O(N) where N is the number of client connections", &[]),
    spec!("client|help", ClientHelp, 2, ["loading", "stale"], NO_KEYS, ["@slow", "@connection"],
          "connection", "5.0.0", "Returns helpful text about the different subcommands.", "O(1)",
          &[]),
];

/// Every top-level command, in `COMMAND` order.
pub(crate) static COMMANDS: [Spec; 23] = [
    spec!("ping", Ping, -1, ["fast"], NO_KEYS, ["@fast", "@connection"], "connection", "1.0.0",
          "Returns the server's liveliness response.", "O(1)", &[opt(arg("message", Str))]),
    spec!("echo", Echo, 2, ["fast"], NO_KEYS, ["@fast", "@connection"], "connection", "1.0.0",
          "Returns the given string.", "O(1)", &[arg("message", Str)]),
    spec!("get", Get, 2, ["readonly", "fast"], ONE_KEY, ["@read", "@string", "@fast"], "string",
          "1.0.0", "Returns the string value of a key.", "O(1)", &[KEY]),
    spec!("set", Set, -3, ["write", "denyoom"], ONE_KEY, ["@write", "@string", "@slow"], "string",
          "1.0.0",
          "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.",
          "O(1)",
          &[KEY, arg("value", Str), SET_CONDITION, opt(tok("get", "GET", PureToken)), SET_EXPIRATION]),
    spec!("getset", GetSet, 3, ["write", "denyoom", "fast"], ONE_KEY,
          ["@write", "@string", "@fast"], "string", "1.0.0",
          "Returns the previous string value of a key after setting it to a new value.", "O(1)",
          &[KEY, arg("value", Str)]),
    spec!("del", Del, -2, ["write"], ALL_KEYS, ["@keyspace", "@write", "@slow"], "generic",
          "1.0.0", "Deletes one or more keys.", "O(N) where N is the number of keys that will be removed.",
          &[KEYS]),
    spec!("exists", Exists, -2, ["readonly", "fast"], ALL_KEYS, ["@keyspace", "@read", "@fast"],
          "generic", "1.0.0", "Determines whether one or more keys exist.",
          "O(N) where N is the number of keys to check.", &[KEYS]),
    spec!("mget", MGet, -2, ["readonly", "fast"], ALL_KEYS, ["@read", "@string", "@fast"],
          "string", "1.0.0", "Atomically returns the string values of one or more keys.",
          "O(N) where N is the number of keys to retrieve.", &[KEYS]),
    spec!("mset", MSet, -3, ["write", "denyoom"], (1, -1, 2), ["@write", "@string", "@slow"],
          "string", "1.0.1", "Sets the string values of one or more keys (not atomically in kv-service).",
          "O(N) where N is the number of keys to set.",
          &[many(group("data", Block, &[KEY, arg("value", Str)]))]),
    spec!("strlen", Strlen, 2, ["readonly", "fast"], ONE_KEY, ["@read", "@string", "@fast"],
          "string", "2.2.0", "Returns the length of a string value.", "O(1)", &[KEY]),
    spec!("type", Type, 2, ["readonly", "fast"], ONE_KEY, ["@keyspace", "@read", "@fast"],
          "generic", "1.0.0", "Determines the type of value stored at a key.", "O(1)", &[KEY]),
    spec!("ttl", Ttl, 2, ["readonly", "fast"], ONE_KEY, ["@keyspace", "@read", "@fast"],
          "generic", "1.0.0", "Returns the expiration time in seconds of a key (-1: kv-service keys never expire).",
          "O(1)", &[KEY]),
    spec!("pttl", Pttl, 2, ["readonly", "fast"], ONE_KEY, ["@keyspace", "@read", "@fast"],
          "generic", "2.6.0", "Returns the expiration time in milliseconds of a key (-1: kv-service keys never expire).",
          "O(1)", &[KEY]),
    spec!("scan", Scan, -2, ["readonly"], NO_KEYS, ["@keyspace", "@read", "@slow"], "generic",
          "2.8.0", "Iterates over the key names in the database.",
          "O(1) for every call. O(N) for a complete iteration.",
          &[arg("cursor", Integer), opt(tok("pattern", "MATCH", Pattern)),
            opt(tok("count", "COUNT", Integer)), opt(tok("type", "TYPE", Str))]),
    spec!("dbsize", DbSize, 1, ["readonly", "fast"], NO_KEYS, ["@keyspace", "@read", "@fast"],
          "server", "1.0.0", "Returns the number of keys in the database.", "O(1)", &[]),
    spec!("info", Info, -1, ["loading", "stale"], NO_KEYS, ["@slow", "@dangerous"], "server",
          "1.0.0", "Returns information and statistics about the server.", "O(1)",
          &[opt(many(arg("section", Str)))]),
    spec!("command", Command, -1, ["loading", "stale"], NO_KEYS, ["@slow", "@connection"],
          "server", "2.8.13", "Returns detailed information about all commands.",
          "O(N) where N is the total number of commands", &[], &COMMAND_SUBS),
    spec!("config", Config, -2, [], NO_KEYS, [], "server", "2.0.0",
          "A container for server configuration commands.", "Depends on subcommand.", &[],
          &CONFIG_SUBS),
    spec!("client", Client, -2, [], NO_KEYS, [], "connection", "2.4.0",
          "A container for client connection commands.", "Depends on subcommand.", &[],
          &CLIENT_SUBS),
    spec!("select", Select, 2, ["loading", "stale", "fast"], NO_KEYS, ["@fast", "@connection"],
          "connection", "2.0.0", "Changes the selected database (kv-service has database 0 only).",
          "O(1)", &[arg("index", Integer)]),
    spec!("quit", Quit, -1, ["allow_busy", "noscript", "loading", "stale", "fast", "no_auth"],
          NO_KEYS, ["@fast", "@connection"], "connection", "1.0.0", "Closes the connection.",
          "O(1)", &[]),
    spec!("auth", Auth, -2, ["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"],
          NO_KEYS, ["@fast", "@connection"], "connection", "1.0.0",
          "Authenticates the connection.",
          "O(N) where N is the number of passwords defined for the user",
          &[opt(arg("username", Str)), arg("password", Str)]),
    spec!("hello", Hello, -1, ["noscript", "loading", "stale", "fast", "no_auth", "allow_busy"],
          NO_KEYS, ["@fast", "@connection"], "connection", "6.0.0", "Handshakes with the server.",
          "O(1)",
          &[opt(group("arguments", Block, &[
              arg("protover", Integer),
              opt(group("auth", Block, &[tok("username", "AUTH", Str), arg("password", Str)])),
              opt(tok("clientname", "SETNAME", Str)),
          ]))]),
];

/// The command named `name` (without case), if the table has it.
pub(crate) fn lookup(name: &[u8]) -> Option<&'static Spec> {
    // Upper-case into a stack buffer and match: no allocation, one pass.
    let mut up = [0u8; 8];
    let n = name.len();
    if n > up.len() {
        return None;
    }
    for (d, s) in up.iter_mut().zip(name) {
        *d = s.to_ascii_uppercase();
    }
    let i = match up.get(..n)? {
        b"PING" => 0,
        b"ECHO" => 1,
        b"GET" => 2,
        b"SET" => 3,
        b"GETSET" => 4,
        b"DEL" => 5,
        b"EXISTS" => 6,
        b"MGET" => 7,
        b"MSET" => 8,
        b"STRLEN" => 9,
        b"TYPE" => 10,
        b"TTL" => 11,
        b"PTTL" => 12,
        b"SCAN" => 13,
        b"DBSIZE" => 14,
        b"INFO" => 15,
        b"COMMAND" => 16,
        b"CONFIG" => 17,
        b"CLIENT" => 18,
        b"SELECT" => 19,
        b"QUIT" => 20,
        b"AUTH" => 21,
        b"HELLO" => 22,
        _ => return None,
    };
    COMMANDS.get(i)
}

/// Commands of Redis that kv-service deliberately does not run, with the reason given.
pub(crate) fn refused(name: &[u8]) -> Option<&'static str> {
    const NO_TX: &str = "kv-service has no transactions";
    const NO_EXPIRY: &str = "kv-service keys do not expire";
    // MULTI, EXEC and DISCARD are answered before the table is looked at (they change the
    // connection's state: see `Session::transaction`).
    let table: [(&str, &str); 8] = [
        ("watch", NO_TX),
        ("unwatch", NO_TX),
        ("expire", NO_EXPIRY),
        ("pexpire", NO_EXPIRY),
        ("expireat", NO_EXPIRY),
        ("pexpireat", NO_EXPIRY),
        ("setex", NO_EXPIRY),
        ("psetex", NO_EXPIRY),
    ];
    table
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        .map(|(_, why)| *why)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_is_found_by_its_name_in_any_case() {
        for s in &COMMANDS {
            let found = lookup(s.name.as_bytes()).map(|f| f.name);
            assert_eq!(found, Some(s.name));
            let upper = s.name.to_ascii_uppercase();
            assert_eq!(lookup(upper.as_bytes()).map(|f| f.name), Some(s.name));
            for sub in s.subcommands {
                let (parent, short) = sub.name.split_once('|').unwrap_or_default();
                assert_eq!(parent, s.name);
                assert_eq!(
                    s.subcommand(short.as_bytes()).map(|f| f.name),
                    Some(sub.name)
                );
            }
        }
        assert!(lookup(b"nosuchcommand").is_none());
        assert!(lookup(b"").is_none());
    }
}
