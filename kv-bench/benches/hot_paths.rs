//! Criterion benches of hot paths: the rpc packet header, the rpc buffer pool, a cached
//! engine GET (index lookup + page-cache hit, through the non-blocking Worker API), and the
//! YCSB zipfian generator.
//!
//! `cargo bench -p kv-bench --bench hot_paths` (release); `cargo test` only builds it.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use kv_engine::{open_workers, Completion, EngineConfig, Op};
use rpc::pkthdr::{PktHdr, PktInfo, PktType};
use rpc::BufPool;

#[allow(dead_code)]
#[path = "../src/ycsb/gen.rs"]
mod gen;

fn pkthdr(c: &mut Criterion) {
    let info = PktInfo {
        pkt_type: PktType::Req,
        req_type: 3,
        dest_session: 17,
        pkt_num: 0,
        msg_size: 116,
        req_num: 123_456_789,
        token: 0xDEAD_BEEF,
        status: 0,
    };
    let mut pkt = [0u8; 148];
    c.bench_function("pkthdr/encode", |b| {
        b.iter(|| {
            let h = PktHdr::new(black_box(&info));
            pkt[..32].copy_from_slice(h.as_bytes());
            black_box(&pkt);
        })
    });
    pkt[..32].copy_from_slice(PktHdr::new(&info).as_bytes());
    c.bench_function("pkthdr/parse", |b| {
        b.iter(|| black_box(PktHdr::parse(black_box(&pkt)).map(|(i, p)| (i.req_num, p.len()))))
    });
}

fn bufpool(c: &mut Criterion) {
    let mut pool = BufPool::new(16 << 20);
    for len in [100usize, 4096, 65536] {
        c.bench_function(&format!("bufpool/alloc+free {len} B"), |b| {
            b.iter(|| {
                let m = pool.alloc(black_box(len));
                pool.free(black_box(m));
            })
        });
    }
}

fn engine_get(c: &mut Criterion) {
    let Ok(dir) = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")) else {
        eprintln!("engine_get skipped: no temporary directory");
        return;
    };
    let config = EngineConfig {
        workers: 1,
        cache_bytes: 64 << 20,
        ..EngineConfig::default()
    };
    let mut worker = match open_workers(dir.path(), &config) {
        Ok(mut o) if !o.workers.is_empty() => o.workers.remove(0),
        _ => {
            eprintln!("engine_get skipped: the engine did not open (io_uring?)");
            return;
        }
    };
    let n = 10_000u64;
    let mut done: Vec<Completion> = Vec::new();
    for id in 0..n {
        worker.submit(
            Op::Put {
                key: gen::key_of(id),
                value: vec![7; 100],
            },
            id,
        );
        if id % 64 == 63 {
            while worker.pending() > 0 {
                worker.poll(&mut done);
            }
        }
    }
    while worker.pending() > 0 {
        worker.poll(&mut done);
    }
    done.clear();
    let mut id = 0u64;
    // Cached GET: index lookup + page-cache hit, completed by the next poll (no I/O).
    c.bench_function("engine/get cached 100 B", |b| {
        b.iter_batched(
            || {
                id = (id + 7919) % n;
                gen::key_of(id)
            },
            |key| {
                worker.submit(Op::Get { key }, 0);
                while done.is_empty() {
                    worker.poll(&mut done);
                }
                black_box(done.pop());
            },
            BatchSize::SmallInput,
        )
    });
}

fn zipfian(c: &mut Criterion) {
    let g = gen::OpGen::new(
        gen::Workload::C,
        gen::Distribution::Zipfian,
        1_000_000,
        100,
        gen::InsertCounter::new(1_000_000),
        1,
    );
    let mut scrambled = g.reseed(2);
    c.bench_function("ycsb/zipfian scrambled item (1M)", |b| {
        b.iter(|| black_box(scrambled.item()))
    });
    let mut raw = gen::Zipfian::new(1_000_000);
    let mut rng = gen::Rng::new(3);
    c.bench_function("ycsb/zipfian rank (1M)", |b| {
        b.iter(|| black_box(raw.sample(&mut rng)))
    });
    raw.grow(1_000_001);
    let mut a = gen::OpGen::new(
        gen::Workload::A,
        gen::Distribution::Zipfian,
        1_000_000,
        100,
        gen::InsertCounter::new(1_000_000),
        4,
    );
    c.bench_function("ycsb/workload A next_op", |b| {
        b.iter(|| black_box(a.next_op()))
    });
}

criterion_group!(benches, pkthdr, bufpool, engine_get, zipfian);
criterion_main!(benches);
