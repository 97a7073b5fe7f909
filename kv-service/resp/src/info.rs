//! The text of INFO and the parameters CONFIG GET knows, from the server's facts and
//! figures.

use std::fmt::Write as _;

use crate::config::Config;
use crate::glob::glob_match;
use crate::store::Figures;

/// INFO's sections, in output order.
const SECTIONS: [&str; 7] = [
    "server",
    "clients",
    "memory",
    "persistence",
    "stats",
    "replication",
    "keyspace",
];

/// The INFO text for the sections asked (none, `default`, `all`, `everything`: every
/// section; names match without case; unknown names add nothing, as in Redis).
pub(crate) fn info_text<'a>(
    config: &Config,
    fig: &Figures,
    asked: impl Iterator<Item = &'a [u8]> + Clone,
) -> String {
    let all = asked.clone().next().is_none()
        || asked.clone().any(|a| {
            [&b"default"[..], b"all", b"everything"]
                .iter()
                .any(|w| a.eq_ignore_ascii_case(w))
        });
    let mut out = String::new();
    for name in SECTIONS {
        if !all
            && !asked
                .clone()
                .any(|a| a.eq_ignore_ascii_case(name.as_bytes()))
        {
            continue;
        }
        if !out.is_empty() {
            out.push_str("\r\n");
        }
        section(&mut out, name, config, fig);
    }
    out
}

fn section(out: &mut String, name: &str, config: &Config, fig: &Figures) {
    let f = &config.facts;
    let l = &config.limits;
    let mut title = name.to_string();
    if let Some(first) = title.get_mut(..1) {
        first.make_ascii_uppercase();
    }
    // Writing to a String cannot fail.
    let _ = write!(out, "# {title}\r\n");
    let mut kv = |k: &str, v: &dyn std::fmt::Display| {
        let _ = write!(out, "{k}:{v}\r\n");
    };
    match name {
        "server" => {
            kv("redis_version", &f.redis_version);
            kv("redis_mode", &"standalone");
            kv("os", &std::env::consts::OS);
            kv("arch_bits", &(usize::BITS));
            kv("process_id", &f.process_id);
            kv("tcp_port", &f.tcp_port);
            kv("uptime_in_seconds", &fig.uptime_secs);
            kv("uptime_in_days", &(fig.uptime_secs / 86_400));
            kv("kv_service_version", &f.server_version);
            kv("kv_threads", &f.threads);
            kv("kv_io_backend", &f.io_backend);
        }
        "clients" => {
            kv("connected_clients", &fig.connected_clients);
            kv("maxclients", &f.max_clients);
            kv("client_idle_timeout", &f.idle_timeout_secs);
            kv("client_query_buffer_limit", &l.max_query_buffer);
            kv("client_output_buffer_limit", &l.max_output_buffer);
            kv("blocked_clients", &0);
        }
        "memory" => {
            kv("used_memory", &fig.used_memory);
            kv("used_memory_human", &human(fig.used_memory));
            kv("maxmemory", &0);
            kv("maxmemory_policy", &"noeviction");
        }
        "persistence" => {
            kv("loading", &0);
            kv("async_loading", &0);
            kv("rdb_bgsave_in_progress", &0);
            kv("rdb_last_bgsave_status", &"ok");
            // Every acknowledged write is in the engine's log-structured slab files: the
            // closest Redis notion is an always-on append-only file.
            kv("aof_enabled", &1);
            kv("aof_rewrite_in_progress", &0);
            kv("aof_last_write_status", &"ok");
            kv("kv_sync_writes", &u8::from(f.sync_writes));
            kv("kv_data_dir", &f.data_dir);
            kv("kv_disk_bytes", &fig.disk_bytes);
        }
        "stats" => {
            kv(
                "total_connections_received",
                &fig.total_connections_received,
            );
            kv("total_commands_processed", &fig.total_commands_processed);
            kv("total_net_input_bytes", &fig.total_net_input_bytes);
            kv("total_net_output_bytes", &fig.total_net_output_bytes);
            kv("rejected_connections", &fig.rejected_connections);
            kv("expired_keys", &0);
            kv("evicted_keys", &0);
            kv("keyspace_hits", &fig.keyspace_hits);
            kv("keyspace_misses", &fig.keyspace_misses);
            kv("kv_engine_reads", &fig.engine_reads);
            kv("kv_engine_writes", &fig.engine_writes);
        }
        "replication" => {
            kv("role", &"master");
            kv("connected_slaves", &0);
        }
        _ => {
            if fig.keys > 0 {
                kv(
                    "db0",
                    &format_args!("keys={},expires=0,avg_ttl=0", fig.keys),
                );
            }
        }
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    let unit = UNITS.get(u).copied().unwrap_or("B");
    if u == 0 {
        format!("{bytes}{unit}")
    } else {
        format!("{v:.2}{unit}")
    }
}

/// The parameters CONFIG GET answers, with their values (what redis-benchmark asks for —
/// `save`, `appendonly` — and what describes this server's bounds). `requirepass` is
/// deliberately absent: it is not handed to clients.
pub(crate) fn config_params(config: &Config) -> Vec<(&'static str, String)> {
    let f = &config.facts;
    let l = &config.limits;
    vec![
        ("save", String::new()),
        ("appendonly", "yes".into()),
        ("appendfsync", f.appendfsync.into()),
        ("databases", "1".into()),
        ("port", f.tcp_port.to_string()),
        ("dir", f.data_dir.clone()),
        ("maxclients", f.max_clients.to_string()),
        ("timeout", f.idle_timeout_secs.to_string()),
        ("maxmemory", "0".into()),
        ("maxmemory-policy", "noeviction".into()),
        ("proto-max-bulk-len", l.parse.max_bulk_len.to_string()),
        ("client-query-buffer-limit", l.max_query_buffer.to_string()),
        ("io-threads", f.threads.to_string()),
        ("cluster-enabled", "no".into()),
    ]
}

/// The parameters matching any of `patterns` (globs, without case), each once, in table
/// order.
pub(crate) fn config_get<'a>(
    config: &Config,
    patterns: impl Iterator<Item = &'a [u8]> + Clone,
) -> Vec<(&'static str, String)> {
    config_params(config)
        .into_iter()
        .filter(|(name, _)| {
            patterns
                .clone()
                .any(|p| glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_chosen_by_name() {
        let c = Config::default();
        let fig = Figures {
            keys: 3,
            ..Figures::default()
        };
        let all = info_text(&c, &fig, std::iter::empty());
        for s in [
            "# Server\r\n",
            "# Keyspace\r\n",
            "db0:keys=3,expires=0,avg_ttl=0\r\n",
        ] {
            assert!(all.contains(s), "{s:?} in {all}");
        }
        let one = info_text(&c, &fig, [&b"KEYSPACE"[..]].into_iter());
        assert_eq!(one, "# Keyspace\r\ndb0:keys=3,expires=0,avg_ttl=0\r\n");
        assert_eq!(info_text(&c, &fig, [&b"nosuch"[..]].into_iter()), "");
        assert_eq!(human(1536), "1.50K");
        assert_eq!(human(12), "12B");
    }

    #[test]
    fn config_get_matches_globs_without_case() {
        let c = Config::default();
        let got: Vec<_> = config_get(&c, [&b"SAVE"[..], b"append*"].into_iter())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(got, ["save", "appendonly", "appendfsync"]);
        assert!(config_get(&c, [&b"requirepass"[..]].into_iter()).is_empty());
    }
}
