//! The cluster file: what parses, what is refused with which message, and the placement
//! function's promises (distinct replicas, fixed threads, balance, stability).

use std::collections::{BTreeMap, BTreeSet};

use kv_cluster::{Cluster, ClusterError, Node};
use proptest::prelude::*;

fn nodes(ids: &[u64]) -> Vec<Node> {
    ids.iter()
        .map(|&id| Node {
            id,
            addr: format!("127.0.0.1:{}", 20000 + id).parse().unwrap(),
        })
        .collect()
}

fn invalid(text: &str) -> String {
    match Cluster::from_toml_str(text) {
        Err(ClusterError::Invalid(m)) => m,
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

const THREE: &str = r#"
    [[node]]
    id = 1
    addr = "127.0.0.1:31861"
    [[node]]
    id = 2
    addr = "127.0.0.1:31862"
    [[node]]
    id = 3
    addr = "127.0.0.1:31863"
"#;

#[test]
fn the_shipped_local_cluster_is_three_nodes_on_loopback() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/cluster-local.toml"
    );
    let c = Cluster::load(path).unwrap();
    let got: Vec<(u64, String)> = c
        .nodes()
        .iter()
        .map(|n| (n.id, n.addr.to_string()))
        .collect();
    assert_eq!(
        got,
        vec![
            (1, "127.0.0.1:31861".to_string()),
            (2, "127.0.0.1:31862".to_string()),
            (3, "127.0.0.1:31863".to_string()),
        ]
    );
    assert_eq!(c.replication(), 3);
    assert!((c.shards() as usize).is_multiple_of(c.threads()));
    // Three replicas on three nodes: every node holds every shard.
    for n in 1..=3 {
        assert_eq!(c.shards_of(n).count(), c.shards() as usize);
    }
}

#[test]
fn defaults_are_three_replicas_and_two_threads() {
    let c = Cluster::from_toml_str(&format!("shards = 4\n{THREE}")).unwrap();
    assert_eq!((c.replication(), c.threads(), c.quorum()), (3, 2, 2));
}

#[test]
fn nodes_are_sorted_by_id_whatever_the_file_order() {
    let c = Cluster::from_toml_str(
        r#"shards = 2
        replication = 1
        [[node]]
        id = 9
        addr = "127.0.0.1:9"
        [[node]]
        id = 4
        addr = "127.0.0.1:4"
        "#,
    )
    .unwrap();
    assert_eq!(c.nodes().iter().map(|n| n.id).collect::<Vec<_>>(), [4, 9]);
    assert_eq!(c.node(9).unwrap().addr.port(), 9);
    assert!(c.node(5).is_none());
}

#[test]
fn bad_files_are_refused_with_a_reason() {
    // Not TOML of the right shape: serde's message names the problem.
    for (text, needle) in [
        ("shards = 4\nreplicas = 3\n", "unknown field"),
        (THREE, "missing field `shards`"),
        ("shards = \"four\"\n", "invalid type"),
        ("shards = 4\n[[node]]\nid = 1\n", "missing field `addr`"),
        ("shards = -1\n", "invalid value"),
    ] {
        match Cluster::from_toml_str(text) {
            Err(ClusterError::Parse(e)) => {
                assert!(e.to_string().contains(needle), "{text:?}: {e}")
            }
            other => panic!("{text:?}: expected a parse error, got {other:?}"),
        }
    }
    // Valid TOML, invalid cluster.
    assert!(invalid("shards = 4\n").contains("no nodes"));
    assert!(invalid(&format!("shards = 5\nthreads = 2\n{THREE}")).contains("not a multiple"));
    assert!(invalid(&format!("shards = 0\n{THREE}")).contains("shards = 0"));
    assert!(invalid(&format!("shards = 4\nthreads = 0\n{THREE}")).contains("threads = 0"));
    assert!(invalid(&format!("shards = 4\nreplication = 4\n{THREE}")).contains("needs at least"));
    assert!(invalid(&format!("shards = 4\nreplication = 0\n{THREE}")).contains("replication = 0"));
    assert!(invalid(&format!("shards = 4\nthreads = 256\n{THREE}")).contains("threads = 256"));
    let dup_id = "shards = 2\nreplication = 1\n[[node]]\nid = 1\naddr = \"127.0.0.1:1\"\n\
                  [[node]]\nid = 1\naddr = \"127.0.0.1:2\"\n";
    assert!(invalid(dup_id).contains("appears twice"));
    let dup_addr = "shards = 2\nreplication = 1\n[[node]]\nid = 1\naddr = \"127.0.0.1:1\"\n\
                    [[node]]\nid = 2\naddr = \"127.0.0.1:1\"\n";
    assert!(invalid(dup_addr).contains("two nodes"));
    let zero = "shards = 2\nreplication = 1\n[[node]]\nid = 0\naddr = \"127.0.0.1:1\"\n";
    assert!(invalid(zero).contains("reserved"));
    let host = "shards = 2\nreplication = 1\n[[node]]\nid = 1\naddr = \"localhost:1\"\n";
    assert!(invalid(host).contains("not IP:PORT"));
    let port0 = "shards = 2\nreplication = 1\n[[node]]\nid = 1\naddr = \"127.0.0.1:0\"\n";
    assert!(invalid(port0).contains("port 0"));
}

#[test]
fn a_missing_file_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let err = Cluster::load(&path).unwrap_err();
    assert!(matches!(err, ClusterError::Io { .. }));
    assert!(err.to_string().contains("nope.toml"), "{err}");
}

/// The placement function is part of the data format: a change to it moves replicas away
/// from the data. These values pin it.
#[test]
fn placement_is_pinned() {
    let c = Cluster::new(nodes(&[1, 2, 3]), 6, 3, 2).unwrap();
    let table: Vec<(usize, Vec<u64>)> = (0..6)
        .map(|s| (c.thread_of(s), c.replicas(s).collect()))
        .collect();
    assert_eq!(
        table,
        vec![
            (0, vec![1, 2, 3]),
            (1, vec![2, 3, 1]),
            (0, vec![3, 1, 2]),
            (1, vec![1, 2, 3]),
            (0, vec![2, 3, 1]),
            (1, vec![3, 1, 2]),
        ]
    );
    let c = Cluster::new(nodes(&[10, 20, 30, 40, 50]), 10, 3, 1).unwrap();
    assert_eq!(c.replicas(0).collect::<Vec<_>>(), [10, 20, 30]);
    assert_eq!(c.replicas(3).collect::<Vec<_>>(), [40, 50, 10]);
    assert_eq!(c.replicas(9).collect::<Vec<_>>(), [10, 20, 30]);
    assert_eq!(c.shards_on(10, 0).collect::<Vec<_>>(), [0, 3, 4, 7, 8, 9]);
    assert_eq!(c.replica_rank(3, 10), Some(2));
    assert_eq!(c.replica_rank(3, 20), None);
    assert_eq!(c.shard_of_hash(123), 3);
    assert_eq!(c.fingerprint(), 0x1ec8_9bac);
}

#[test]
fn the_fingerprint_covers_placement_and_not_addresses() {
    let base = Cluster::new(nodes(&[1, 2, 3]), 6, 3, 2).unwrap();
    let mut moved = nodes(&[1, 2, 3]);
    moved[1].addr = "10.0.0.7:9999".parse().unwrap();
    assert_eq!(
        Cluster::new(moved, 6, 3, 2).unwrap().fingerprint(),
        base.fingerprint()
    );
    for other in [
        Cluster::new(nodes(&[1, 2, 4]), 6, 3, 2).unwrap(),
        Cluster::new(nodes(&[1, 2, 3]), 12, 3, 2).unwrap(),
        Cluster::new(nodes(&[1, 2, 3]), 6, 1, 2).unwrap(),
        Cluster::new(nodes(&[1, 2, 3]), 6, 3, 3).unwrap(),
        Cluster::new(nodes(&[1, 2, 3, 4]), 6, 3, 2).unwrap(),
    ] {
        assert_ne!(other.fingerprint(), base.fingerprint(), "{other:?}");
    }
}

fn arb_cluster() -> impl Strategy<Value = Cluster> {
    (1usize..=9, 1usize..=6, 1u32..=6)
        .prop_flat_map(|(n, t, k)| (Just(n), Just(t), Just(k), 1..=n.min(7)))
        .prop_flat_map(|(n, t, k, r)| {
            // Distinct ids, not necessarily consecutive.
            (
                proptest::collection::btree_set(1u64..1000, n),
                Just(t),
                Just(k),
                Just(r),
            )
        })
        .prop_map(|(ids, t, k, r)| {
            let ids: Vec<u64> = ids.into_iter().collect();
            Cluster::new(nodes(&ids), k * t as u32, r, t).unwrap()
        })
}

proptest! {
    #![proptest_config(testkit::proptest_config(256, "proptest-regressions/cluster_file.txt"))]

    /// Every shard has R distinct replicas on known nodes, runs on a thread < T, and
    /// `shards_on` / `shards_of` / `hosts` / `replica_rank` agree with `replicas`.
    #[test]
    fn placement_is_consistent(c in arb_cluster()) {
        let ids: BTreeSet<u64> = c.nodes().iter().map(|n| n.id).collect();
        let mut on: BTreeMap<(u64, usize), Vec<u32>> = BTreeMap::new();
        for s in 0..c.shards() {
            let reps: Vec<u64> = c.replicas(s).collect();
            prop_assert_eq!(reps.len(), c.replication());
            prop_assert_eq!(reps.iter().collect::<BTreeSet<_>>().len(), reps.len());
            prop_assert!(reps.iter().all(|r| ids.contains(r)));
            prop_assert!(c.thread_of(s) < c.threads());
            for (rank, &n) in reps.iter().enumerate() {
                prop_assert_eq!(c.replica_rank(s, n), Some(rank));
                on.entry((n, c.thread_of(s))).or_default().push(s);
            }
        }
        for &n in &ids {
            let mut all = Vec::new();
            for t in 0..c.threads() {
                let listed: Vec<u32> = c.shards_on(n, t).collect();
                prop_assert_eq!(&listed, &on.get(&(n, t)).cloned().unwrap_or_default());
                all.extend(listed);
            }
            all.sort_unstable();
            prop_assert_eq!(all, c.shards_of(n).collect::<Vec<_>>());
        }
        // Round trip through the file format.
        prop_assert_eq!(&Cluster::from_toml_str(&c.to_toml_string()).unwrap(), &c);
    }

    /// Keys of a shard belong to the engine worker of the shard's thread: with T dividing
    /// S, (h mod S) mod T = h mod T for every hash h — the engine's own key routing.
    #[test]
    fn a_keys_shard_runs_on_the_thread_owning_the_key(
        c in arb_cluster(),
        key in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let shard = c.shard_of(&key);
        prop_assert!(shard < c.shards());
        let engine_worker = kv_proto::KeyRouter::new(c.threads()).partition_of(&key);
        prop_assert_eq!(c.thread_of(shard), engine_worker);
    }

    /// Balance: when N divides S / T, every node is the first replica (preferred leader) of
    /// S / (T N) shards on each thread, and holds R S / N replicas; otherwise the counts
    /// differ by at most one per thread.
    #[test]
    fn leaders_and_replicas_are_spread_evenly(c in arb_cluster()) {
        let n = c.nodes().len();
        let per_thread = c.shards() as usize / c.threads();
        for t in 0..c.threads() {
            let mut first: BTreeMap<u64, usize> = c.nodes().iter().map(|x| (x.id, 0)).collect();
            for s in (0..c.shards()).filter(|&s| c.thread_of(s) == t) {
                if let Some(f) = c.replicas(s).next() {
                    *first.entry(f).or_default() += 1;
                }
            }
            let min = first.values().min().copied().unwrap_or(0);
            let max = first.values().max().copied().unwrap_or(0);
            prop_assert!(max - min <= 1, "thread {}: {:?}", t, first);
            if per_thread.is_multiple_of(n) {
                prop_assert_eq!(max, per_thread / n);
            }
        }
        if (c.shards() as usize).is_multiple_of(n) {
            for x in c.nodes() {
                prop_assert_eq!(c.shards_of(x.id).count(), c.replication() * c.shards() as usize / n);
            }
        }
    }
}
