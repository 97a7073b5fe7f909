//! Black-box test of cluster mode: three `kv-service` processes on 127.0.0.1 (ports picked
//! at run time, temporary data directories) replicate six shards. Writes go through the
//! cluster client; part-way the node leading the most shards is killed with SIGKILL; writing
//! goes on until new leaders take the writes; the node is restarted and catches up; then
//! every acknowledged key is read back through the leaders (linearizable reads) and from
//! each replica's own state.
//!
//! No timing is asserted: the failover time is printed, the waits are generous bounds.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kv_client::{ClusterClient, ClusterClientConfig};
use kv_cluster::Cluster;
use kv_proto::Role;

const SERVER: &str = env!("CARGO_BIN_EXE_kv-service");
const CLI: &str = env!("CARGO_BIN_EXE_kv-cli");

struct Node {
    id: u64,
    dir: PathBuf,
    child: Option<Child>,
}

impl Node {
    fn start(&mut self, cluster_file: &Path) {
        let mut child = Command::new(SERVER)
            .arg("--cluster")
            .arg(cluster_file)
            .arg("--node")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--log-level")
            .arg("warn")
            // Sleep as soon as idle: six server threads spinning on a shared 2-core machine
            // starve each other past Raft's timeouts.
            .args(["--spin-ms", "0"])
            // A generous election timeout: a loaded CI machine can deschedule a thread for
            // 100 ms, which would only cause needless elections (and retries).
            .args(["--raft-election-ms", "300"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn kv-service");
        let out = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(out).lines();
        let mut seen = Vec::new();
        loop {
            match lines.next() {
                Some(Ok(l)) => {
                    let ready = l.starts_with("ready");
                    seen.push(l);
                    if ready {
                        break;
                    }
                }
                _ => panic!("node {} did not start: {seen:?}", self.id),
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill(); // SIGKILL
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn free_ports(n: usize) -> Vec<u16> {
    // Held together so they differ; released just before the servers bind them.
    let socks: Vec<UdpSocket> = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    socks
        .iter()
        .map(|s| s.local_addr().expect("addr").port())
        .collect()
}

fn value_of(key: &str) -> Vec<u8> {
    format!("value-of-{key}-{}", key.len() * 7).into_bytes()
}

/// Waits until every replica on `node` has applied everything its shard's leader
/// committed when asked.
fn wait_caught_up(client: &mut ClusterClient, node: u64, bound: Duration) {
    let end = Instant::now() + bound;
    loop {
        let mut leaders_commit = BTreeMap::new();
        let ids: Vec<u64> = client.cluster().nodes().iter().map(|n| n.id).collect();
        for n in ids {
            if let Ok(st) = client.status_of(n) {
                for s in st.iter().filter(|s| s.role == Role::Leader) {
                    leaders_commit.insert(s.shard, s.commit);
                }
            }
        }
        let mine = client.status_of(node).unwrap_or_default();
        let shards = client.cluster().shards_of(node).count();
        let done = leaders_commit.len() == client.cluster().shards() as usize
            && mine.len() == shards
            && mine.iter().all(|s| {
                leaders_commit
                    .get(&s.shard)
                    .is_some_and(|&c| s.applied >= c)
            });
        if done {
            return;
        }
        assert!(
            Instant::now() < end,
            "node {node} did not catch up within {bound:?}: {mine:?} vs leaders {leaders_commit:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn kill_the_leader_keep_writing_restart_and_read_everything_back() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ports = free_ports(3);
    let mut toml = String::from("shards = 6\nreplication = 3\nthreads = 2\n");
    for (i, p) in ports.iter().enumerate() {
        toml.push_str(&format!(
            "\n[[node]]\nid = {}\naddr = \"127.0.0.1:{p}\"\n",
            i + 1
        ));
    }
    let file = tmp.path().join("cluster.toml");
    std::fs::write(&file, &toml).expect("write cluster file");
    let cluster = Cluster::from_toml_str(&toml).expect("cluster file");
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| Node {
            id,
            dir: tmp.path().join(format!("node{id}")),
            child: None,
        })
        .collect();
    for n in &mut nodes {
        n.start(&file);
    }
    let mut client =
        ClusterClient::new(cluster.clone(), ClusterClientConfig::default()).expect("client");
    let t0 = Instant::now();
    let mut acked: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for i in 0..120 {
        let k = format!("key-{i:04}");
        let v = value_of(&k);
        client
            .put(k.as_bytes(), &v)
            .expect("put before the failure");
        acked.insert(k, v);
    }
    // Some overwrites and deletes, acknowledged too.
    for i in (0..120).step_by(10) {
        let k = format!("key-{i:04}");
        let v = format!("second-{i}").into_bytes();
        client.put(k.as_bytes(), &v).expect("overwrite");
        acked.insert(k, v);
    }
    let mut deleted = Vec::new();
    for i in (5..120).step_by(20) {
        let k = format!("key-{i:04}");
        assert!(client.delete(k.as_bytes()).expect("delete"), "{k} existed");
        acked.remove(&k);
        deleted.push(k);
    }

    // The node leading the most shards goes down hard.
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for n in 1..=3u64 {
        let st = client.status_of(n).expect("status");
        led.insert(n, st.iter().filter(|s| s.role == Role::Leader).count());
    }
    let victim = led
        .iter()
        .max_by_key(|(_, c)| **c)
        .map(|(&n, _)| n)
        .expect("a leader");
    let victim_shards: Vec<u32> = {
        let st = client.status_of(victim).expect("status");
        st.iter()
            .filter(|s| s.role == Role::Leader)
            .map(|s| s.shard)
            .collect()
    };
    assert!(!victim_shards.is_empty(), "someone leads: {led:?}");
    eprintln!("phase: first writes done after {:?}", t0.elapsed());
    let killed_at = Instant::now();
    nodes[(victim - 1) as usize].kill9();

    // Keep writing: every write must be acknowledged (through new leaders).
    let mut first_ack_on_victim_shard = None;
    for i in 120..240 {
        let k = format!("key-{i:04}");
        let v = value_of(&k);
        client
            .put(k.as_bytes(), &v)
            .unwrap_or_else(|e| panic!("put {k} after killing node {victim}: {e}"));
        if first_ack_on_victim_shard.is_none()
            && victim_shards.contains(&cluster.shard_of(k.as_bytes()))
        {
            first_ack_on_victim_shard = Some(killed_at.elapsed());
        }
        acked.insert(k, v);
    }
    eprintln!(
        "node {victim} (leader of shards {victim_shards:?}) killed; first write acknowledged on \
         one of its shards after {first_ack_on_victim_shard:?} (debug build, shared machine)"
    );
    for (k, v) in &acked {
        assert_eq!(
            client
                .get(k.as_bytes())
                .expect("get with a node down")
                .as_ref(),
            Some(v),
            "{k} while node {victim} is down"
        );
    }

    eprintln!(
        "phase: writes and reads with a node down done after {:?}",
        t0.elapsed()
    );
    // Restart it; it catches up from the others.
    nodes[(victim - 1) as usize].start(&file);
    wait_caught_up(&mut client, victim, Duration::from_secs(60));

    eprintln!("phase: caught up after {:?}", t0.elapsed());
    // Every acknowledged write, through the leaders and on every replica.
    for (k, v) in &acked {
        assert_eq!(
            client.get(k.as_bytes()).expect("get").as_ref(),
            Some(v),
            "{k}"
        );
        for n in 1..=3u64 {
            assert_eq!(
                client
                    .get_local(n, k.as_bytes())
                    .expect("local get")
                    .as_ref(),
                Some(v),
                "{k} on node {n}"
            );
        }
    }
    for k in &deleted {
        assert_eq!(
            client.get(k.as_bytes()).expect("get"),
            None,
            "{k} was deleted"
        );
        for n in 1..=3u64 {
            assert_eq!(
                client.get_local(n, k.as_bytes()).expect("local get"),
                None,
                "{k} on {n}"
            );
        }
    }
    // A scan merged across shards returns exactly the acknowledged state, in key order.
    let items = client.scan(b"key-", 1000).expect("scan");
    let want: Vec<(Vec<u8>, Vec<u8>)> = acked
        .iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
        .collect();
    assert_eq!(items, want);

    // kv-cli speaks to the cluster too.
    let out = Command::new(CLI)
        .arg("--cluster")
        .arg(&file)
        .args(["get", "key-0001"])
        .output()
        .expect("kv-cli");
    assert!(out.status.success(), "kv-cli: {out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&acked["key-0001"])
    );
}
