//! A server with more threads than the client's default receive ring can hold sessions for
//! (32 credits each, 1024 packets): the client sizes its ring from INFO while connecting.
use std::time::Duration;

use kv_client::{Client, ClientConfig, Error, Op, Reply};
use kv_service::{IdleMode, Server, ServerConfig};
use rpc::RpcError;

#[test]
fn client_sizes_its_ring_for_a_server_with_40_threads() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(ServerConfig {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        threads: 40,
        cache_bytes: 40 << 20,
        idle: IdleMode::SpinThenSleep {
            spin: Duration::from_millis(1),
        },
        max_pkt_size: 1472,
        ..ServerConfig::default()
    })
    .unwrap();
    let addr = server.listen_addr().to_string();

    // 40 server threads share this machine's cores with the test (and, in CI, with other
    // tests): generous bounds, since what is tested is the ring, not the latency.
    let patient = ClientConfig {
        timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(30),
        ..ClientConfig::default()
    };
    // A ring fixed at 1024 packets cannot hold 40 sessions of 32 credits: a clear error.
    let fixed = ClientConfig {
        rx_ring_size: Some(1024),
        ..patient.clone()
    };
    match Client::connect(&addr, fixed) {
        Err(Error::Rpc(RpcError::RingExhausted)) => {}
        other => panic!("expected RingExhausted, got {:?}", other.map(|_| ())),
    }

    // The default sizes the ring itself and reaches every thread.
    let mut c = Client::connect(&addr, patient).unwrap();
    assert_eq!(c.server_info().threads, 40);
    let mut owners = std::collections::HashSet::new();
    for i in 0..400u64 {
        let key = format!("big{i:04}").into_bytes();
        owners.insert(c.thread_for(&key));
        c.submit(
            Op::Put {
                key,
                value: i.to_le_bytes().to_vec(),
            },
            i,
        )
        .unwrap();
    }
    while let Some((tag, r)) = c.wait() {
        assert_eq!(r.unwrap(), Reply::Written, "put {tag}");
    }
    assert!(owners.len() > 30, "keys reached {} threads", owners.len());
    assert_eq!(
        c.get(b"big0123").unwrap(),
        Some(123u64.to_le_bytes().to_vec())
    );
    let items = c.scan(b"big", 1000).unwrap();
    assert_eq!(items.len(), 400);
    assert!(items.windows(2).all(|w| w[0].0 < w[1].0));
    drop(c);
    server.shutdown().unwrap();
}
