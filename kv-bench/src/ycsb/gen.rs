//! YCSB workload generators: key distributions (zipfian θ = 0.99 scrambled as YCSB does and
//! unscrambled as KVell does, uniform, latest), the operation mixes of workloads A–F and
//! KVell's production mix, value sizes, and the shuffled load order.
//!
//! Self-contained (std only) so that the criterion benches can include it with `#[path]`.
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// YCSB's zipfian constant.
pub const ZIPF_THETA: f64 = 0.99;

/// xorshift64* generator: fast, good enough for workload generation.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (any value, zero included).
    pub fn new(seed: u64) -> Self {
        Rng(0x9E37_79B9_7F4A_7C15 ^ seed.wrapping_mul(0xA24B_AED4_963E_E407) | 1)
    }
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// FNV-1a 64 over the little-endian bytes of `v` (YCSB scrambles zipfian ranks with FNV).
pub fn fnv64(v: u64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in v.to_le_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Gray et al.'s zipfian generator as YCSB implements it: rank 0 is the most popular item.
/// `grow` extends the item count incrementally (zeta is updated term by term), which the
/// "latest" distribution needs as inserts arrive.
#[derive(Clone, Debug)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta2: f64,
    zetan: f64,
    eta: f64,
}

impl Zipfian {
    /// A generator over ranks `0..n` (`n ≥ 1`) with θ = [`ZIPF_THETA`].
    pub fn new(n: u64) -> Self {
        let n = n.max(1);
        let theta = ZIPF_THETA;
        let zetan = (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta2 = 1.0 + 0.5f64.powf(theta);
        let mut z = Self {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta2,
            zetan,
            eta: 0.0,
        };
        z.update_eta();
        z
    }
    fn update_eta(&mut self) {
        self.eta =
            (1.0 - (2.0 / self.n as f64).powf(1.0 - self.theta)) / (1.0 - self.zeta2 / self.zetan);
    }
    /// Extends the item count to `n` (no-op if not larger).
    pub fn grow(&mut self, n: u64) {
        if n <= self.n {
            return;
        }
        for i in self.n + 1..=n {
            self.zetan += 1.0 / (i as f64).powf(self.theta);
        }
        self.n = n;
        self.update_eta();
    }
    /// A rank in `0..n`.
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.unit();
        let uz = u * self.zetan;
        let rank = if uz < 1.0 {
            0
        } else if uz < self.zeta2 {
            1
        } else {
            ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
        };
        rank.min(self.n - 1)
    }
}

/// Key popularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Distribution {
    /// Zipfian θ = 0.99, ranks scrambled over the key space with FNV (YCSB's default).
    Zipfian,
    /// Zipfian θ = 0.99, rank r = item r (KVell's): the hot items are adjacent.
    ZipfianUnscrambled,
    /// Every item equally likely.
    Uniform,
    /// Zipfian over recency: the most recently inserted items are the most popular (YCSB-D).
    Latest,
}

/// A YCSB workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// 100% reads.
    C,
    /// 95% reads, 5% inserts; "latest" distribution by default.
    D,
    /// 95% scans (length uniform 1–100), 5% inserts.
    E,
    /// 50% reads, 50% read-modify-writes.
    F,
    /// KVell's production mix: 58% updates, 40% reads, 2% scans; values 100 B (1%),
    /// 400 B (81%), 1 KiB (16%), 4 KiB (2%).
    Production,
}

impl Workload {
    /// The distribution YCSB uses when none is given.
    pub fn default_distribution(self) -> Distribution {
        match self {
            Workload::D => Distribution::Latest,
            _ => Distribution::Zipfian,
        }
    }
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Workload::A => "a",
            Workload::B => "b",
            Workload::C => "c",
            Workload::D => "d",
            Workload::E => "e",
            Workload::F => "f",
            Workload::Production => "production",
        }
    }
    /// Whether the mix contains scans.
    pub fn has_scans(self) -> bool {
        matches!(self, Workload::E | Workload::Production)
    }
}

impl Distribution {
    /// Kebab-case name.
    pub fn name(self) -> &'static str {
        match self {
            Distribution::Zipfian => "zipfian",
            Distribution::ZipfianUnscrambled => "zipfian-unscrambled",
            Distribution::Uniform => "uniform",
            Distribution::Latest => "latest",
        }
    }
}

/// Production value sizes and their weights in percent (KVell).
pub const PRODUCTION_SIZES: [(usize, u64); 4] = [(100, 1), (400, 81), (1024, 16), (4096, 2)];

/// A production-mix value size from a uniform draw in `0..100`.
fn production_size(p: u64) -> usize {
    let mut acc = 0;
    for (size, weight) in PRODUCTION_SIZES {
        acc += weight;
        if p < acc {
            return size;
        }
    }
    PRODUCTION_SIZES[PRODUCTION_SIZES.len() - 1].0
}

/// The value size of item `id` at load time.
pub fn load_value_size(workload: Workload, value_size: usize, id: u64) -> usize {
    if workload == Workload::Production {
        production_size(fnv64(id ^ 0x5EED) % 100)
    } else {
        value_size
    }
}

/// Operation kinds, for per-kind statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// GET.
    Read,
    /// PUT of an existing item.
    Update,
    /// PUT of a new item.
    Insert,
    /// Ordered scan.
    Scan,
    /// GET then PUT of the same item.
    Rmw,
}

impl OpKind {
    /// Every kind, in report order.
    pub const ALL: [OpKind; 5] = [
        OpKind::Read,
        OpKind::Update,
        OpKind::Insert,
        OpKind::Scan,
        OpKind::Rmw,
    ];
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Read => "read",
            OpKind::Update => "update",
            OpKind::Insert => "insert",
            OpKind::Scan => "scan",
            OpKind::Rmw => "rmw",
        }
    }
    /// Index into [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// One generated operation: item ids, sizes and scan lengths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Read item `id`.
    Read(u64),
    /// Overwrite item `id` with a value of `size` bytes.
    Update(u64, usize),
    /// Insert new item `id`.
    Insert(u64, usize),
    /// Scan `len` items from item `id`.
    Scan(u64, usize),
    /// Read item `id`, then write it back with `size` bytes.
    Rmw(u64, usize),
}

impl Op {
    /// The kind.
    pub fn kind(&self) -> OpKind {
        match self {
            Op::Read(_) => OpKind::Read,
            Op::Update(..) => OpKind::Update,
            Op::Insert(..) => OpKind::Insert,
            Op::Scan(..) => OpKind::Scan,
            Op::Rmw(..) => OpKind::Rmw,
        }
    }
}

/// Inserted-item counters shared by every generator of a run (workloads D and E insert).
///
/// Like YCSB's acknowledged-counter generator, "latest" reads draw from the items whose insert
/// has been *acknowledged* (every id below [`InsertCounter::acked`]), not from every id handed
/// out: with many inserts in flight, reading an id whose insert is still on its way would
/// measure a miss that no client could have expected to hit.
#[derive(Debug)]
pub struct InsertCounter {
    /// Next id to insert.
    pub next: AtomicU64,
    /// Every id below this has been acknowledged.
    acked: AtomicU64,
    /// Acknowledged ids above `acked` (out-of-order completions).
    early: Mutex<BTreeSet<u64>>,
}

impl InsertCounter {
    /// Ids `records..` are free for inserts.
    pub fn new(records: u64) -> Arc<Self> {
        Arc::new(Self {
            next: AtomicU64::new(records),
            acked: AtomicU64::new(records),
            early: Mutex::new(BTreeSet::new()),
        })
    }

    /// Records that the insert of `id` completed (successfully or not).
    pub fn ack(&self, id: u64) {
        if id < self.acked.load(Ordering::Acquire) {
            return;
        }
        let Ok(mut early) = self.early.lock() else {
            return;
        };
        early.insert(id);
        let mut limit = self.acked.load(Ordering::Acquire);
        while early.first() == Some(&limit) {
            early.pop_first();
            limit += 1;
        }
        self.acked.store(limit, Ordering::Release);
    }

    /// Every id below this has been inserted and acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::Acquire)
    }
}

/// Generates one client's operations.
pub struct OpGen {
    rng: Rng,
    workload: Workload,
    distribution: Distribution,
    records: u64,
    value_size: usize,
    zipf: Option<Zipfian>,
    inserts: Arc<InsertCounter>,
}

impl OpGen {
    /// A generator over `records` loaded items. Building the zipfian table costs O(records)
    /// once: clone the generator (and [`OpGen::reseed`]) rather than building many.
    pub fn new(
        workload: Workload,
        distribution: Distribution,
        records: u64,
        value_size: usize,
        inserts: Arc<InsertCounter>,
        seed: u64,
    ) -> Self {
        let records = records.max(1);
        let zipf = match distribution {
            Distribution::Uniform => None,
            _ => Some(Zipfian::new(records)),
        };
        Self {
            rng: Rng::new(seed),
            workload,
            distribution,
            records,
            value_size,
            zipf,
            inserts,
        }
    }

    /// The insert counter this generator shares.
    pub fn inserts(&self) -> Arc<InsertCounter> {
        self.inserts.clone()
    }

    /// A copy with another random seed (shares the insert counter).
    pub fn reseed(&self, seed: u64) -> Self {
        Self {
            rng: Rng::new(seed),
            workload: self.workload,
            distribution: self.distribution,
            records: self.records,
            value_size: self.value_size,
            zipf: self.zipf.clone(),
            inserts: self.inserts.clone(),
        }
    }

    /// An existing item id according to the distribution.
    pub fn item(&mut self) -> u64 {
        match self.distribution {
            Distribution::Uniform => self.rng.below(self.records),
            Distribution::Zipfian => {
                let rank = self.zipf_rank(self.records);
                fnv64(rank) % self.records
            }
            Distribution::ZipfianUnscrambled => self.zipf_rank(self.records),
            Distribution::Latest => {
                // Ids below `acked` exist; rank 0 = the newest.
                let max = self.inserts.acked().max(1);
                let rank = self.zipf_rank(max);
                max - 1 - rank.min(max - 1)
            }
        }
    }

    fn zipf_rank(&mut self, n: u64) -> u64 {
        match &mut self.zipf {
            Some(z) => {
                z.grow(n);
                z.sample(&mut self.rng)
            }
            None => self.rng.below(n),
        }
    }

    fn value_len(&mut self) -> usize {
        if self.workload == Workload::Production {
            production_size(self.rng.below(100))
        } else {
            self.value_size
        }
    }

    fn insert(&mut self) -> Op {
        let id = self.inserts.next.fetch_add(1, Ordering::Relaxed);
        Op::Insert(id, self.value_len())
    }

    /// The next operation.
    pub fn next_op(&mut self) -> Op {
        let p = self.rng.below(100);
        match self.workload {
            Workload::A if p < 50 => Op::Read(self.item()),
            Workload::A => Op::Update(self.item(), self.value_len()),
            Workload::B if p < 95 => Op::Read(self.item()),
            Workload::B => Op::Update(self.item(), self.value_len()),
            Workload::C => Op::Read(self.item()),
            Workload::D if p < 95 => Op::Read(self.item()),
            Workload::D => self.insert(),
            Workload::E if p < 95 => {
                let len = 1 + self.rng.below(100) as usize;
                Op::Scan(self.item(), len)
            }
            Workload::E => self.insert(),
            Workload::F if p < 50 => Op::Read(self.item()),
            Workload::F => Op::Rmw(self.item(), self.value_len()),
            Workload::Production if p < 58 => Op::Update(self.item(), self.value_len()),
            Workload::Production if p < 98 => Op::Read(self.item()),
            Workload::Production => {
                let len = 1 + self.rng.below(100) as usize;
                Op::Scan(self.item(), len)
            }
        }
    }
}

/// The key of item `id`: 8 bytes big-endian (KVell's keys; key order = id order, so scans
/// walk consecutive ids).
pub fn key_of(id: u64) -> Vec<u8> {
    id.to_be_bytes().to_vec()
}

/// A value of `len` bytes for item `id`.
pub fn value_of(id: u64, len: usize, salt: u64) -> Vec<u8> {
    vec![(id ^ salt) as u8 | 1; len]
}

/// Every id in `0..records` exactly once, shuffled (Fisher–Yates with a fixed seed).
pub fn load_order(records: u64, seed: u64) -> Vec<u64> {
    let mut ids: Vec<u64> = (0..records).collect();
    let mut rng = Rng::new(seed);
    for i in (1..ids.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        ids.swap(i, j);
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn mix(workload: Workload, dist: Distribution, n: usize) -> HashMap<OpKind, f64> {
        let mut g = OpGen::new(workload, dist, 10_000, 100, InsertCounter::new(10_000), 7);
        let mut counts: HashMap<OpKind, usize> = HashMap::new();
        for _ in 0..n {
            *counts.entry(g.next_op().kind()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(k, c)| (k, c as f64 / n as f64))
            .collect()
    }

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() < 0.01
    }

    #[test]
    fn operation_mixes_match_their_definitions() {
        use OpKind::*;
        let cases: [(Workload, &[(OpKind, f64)]); 7] = [
            (Workload::A, &[(Read, 0.5), (Update, 0.5)]),
            (Workload::B, &[(Read, 0.95), (Update, 0.05)]),
            (Workload::C, &[(Read, 1.0)]),
            (Workload::D, &[(Read, 0.95), (Insert, 0.05)]),
            (Workload::E, &[(Scan, 0.95), (Insert, 0.05)]),
            (Workload::F, &[(Read, 0.5), (Rmw, 0.5)]),
            (
                Workload::Production,
                &[(Update, 0.58), (Read, 0.40), (Scan, 0.02)],
            ),
        ];
        for (w, want) in cases {
            let got = mix(w, w.default_distribution(), 200_000);
            let total: f64 = want.iter().map(|(_, f)| f).sum();
            assert!(close(total, 1.0));
            assert_eq!(got.len(), want.len(), "{w:?}: {got:?}");
            for (kind, f) in want {
                let g = got.get(kind).copied().unwrap_or(0.0);
                assert!(close(g, *f), "{w:?} {kind:?}: {g} vs {f}");
            }
        }
    }

    #[test]
    fn production_value_sizes_follow_the_mix() {
        let mut g = OpGen::new(
            Workload::Production,
            Distribution::Uniform,
            1000,
            100,
            InsertCounter::new(1000),
            3,
        );
        let mut sizes: HashMap<usize, usize> = HashMap::new();
        let mut n = 0;
        while n < 200_000 {
            if let Op::Update(_, s) = g.next_op() {
                *sizes.entry(s).or_default() += 1;
                n += 1;
            }
        }
        for (size, pct) in PRODUCTION_SIZES {
            let f = sizes.get(&size).copied().unwrap_or(0) as f64 / n as f64;
            assert!(close(f, pct as f64 / 100.0), "{size}: {f}");
        }
        let load: usize = (0..100_000)
            .filter(|&id| load_value_size(Workload::Production, 0, id) == 400)
            .count();
        assert!((load as f64 / 100_000.0 - 0.81).abs() < 0.01);
    }

    /// Share of the draws that hit the most popular 1% of the items.
    fn top1_share(dist: Distribution) -> f64 {
        let n = 100_000u64;
        let mut g = OpGen::new(Workload::C, dist, n, 100, InsertCounter::new(n), 11);
        let mut hits = vec![0u32; n as usize];
        let draws = 1_000_000;
        for _ in 0..draws {
            hits[g.item() as usize] += 1;
        }
        hits.sort_unstable_by(|a, b| b.cmp(a));
        hits[..(n / 100) as usize]
            .iter()
            .map(|&h| h as f64)
            .sum::<f64>()
            / draws as f64
    }

    #[test]
    fn zipfian_skew_matches_theory() {
        // Theoretical share of the top 1% (1000 of 100,000 ranks) at θ = 0.99:
        // zeta(1000) / zeta(100000).
        let zeta = |n: u64| {
            (1..=n)
                .map(|i| 1.0 / (i as f64).powf(ZIPF_THETA))
                .sum::<f64>()
        };
        let want = zeta(1000) / zeta(100_000);
        let unscrambled = top1_share(Distribution::ZipfianUnscrambled);
        assert!((unscrambled - want).abs() < 0.03, "{unscrambled} vs {want}");
        // Scrambling hashes ranks onto items (with some collisions): about the same skew.
        let scrambled = top1_share(Distribution::Zipfian);
        assert!((scrambled - want).abs() < 0.05, "{scrambled} vs {want}");
        let uniform = top1_share(Distribution::Uniform);
        assert!(uniform < 0.02, "{uniform}");
    }

    #[test]
    fn unscrambled_hot_items_are_the_low_ids_and_latest_the_newest() {
        let mut g = OpGen::new(
            Workload::C,
            Distribution::ZipfianUnscrambled,
            10_000,
            100,
            InsertCounter::new(10_000),
            5,
        );
        let low = (0..10_000).filter(|_| g.item() < 100).count();
        assert!(low > 4_500, "{low}");
        let inserts = InsertCounter::new(10_000);
        let mut g = OpGen::new(
            Workload::D,
            Distribution::Latest,
            10_000,
            100,
            inserts.clone(),
            5,
        );
        let high = (0..10_000).filter(|_| g.item() >= 9_900).count();
        assert!(high > 4_500, "{high}");
        // Inserts handed out but not acknowledged are not read; acknowledged ones are, even
        // when they complete out of order.
        inserts.next.store(20_000, Ordering::Relaxed);
        assert!((0..1_000).all(|_| g.item() < 10_000));
        for id in (10_000..20_000).rev() {
            inserts.ack(id);
        }
        assert_eq!(inserts.acked(), 20_000);
        let newest = (0..10_000).filter(|_| g.item() >= 19_900).count();
        assert!(newest > 4_500, "{newest}");
        assert!((0..10_000).all(|_| g.item() < 20_000));
    }

    #[test]
    fn scan_lengths_are_in_range() {
        let mut g = OpGen::new(
            Workload::E,
            Distribution::Zipfian,
            10_000,
            100,
            InsertCounter::new(10_000),
            9,
        );
        let (mut min, mut max) = (usize::MAX, 0);
        for _ in 0..100_000 {
            if let Op::Scan(id, len) = g.next_op() {
                assert!(id < 10_000);
                min = min.min(len);
                max = max.max(len);
            }
        }
        assert_eq!((min, max), (1, 100));
    }

    #[test]
    fn inserts_take_fresh_ids() {
        let inserts = InsertCounter::new(500);
        let mut g = OpGen::new(
            Workload::E,
            Distribution::Zipfian,
            500,
            100,
            inserts.clone(),
            1,
        );
        let mut h = g.reseed(2);
        let mut ids = Vec::new();
        for _ in 0..10_000 {
            for gen in [&mut g, &mut h] {
                if let Op::Insert(id, _) = gen.next_op() {
                    ids.push(id);
                }
            }
        }
        let n = ids.len() as u64;
        ids.sort_unstable();
        assert_eq!(ids, (500..500 + n).collect::<Vec<_>>());
    }

    #[test]
    fn load_order_covers_every_key_exactly_once() {
        let order = load_order(100_003, 42);
        assert_eq!(order.len(), 100_003);
        let mut seen = vec![false; 100_003];
        for &id in &order {
            assert!(!seen[id as usize], "{id} twice");
            seen[id as usize] = true;
        }
        assert!(seen.iter().all(|&s| s));
        // Shuffled: far from the identity.
        let in_place = order
            .iter()
            .enumerate()
            .filter(|(i, &id)| *i as u64 == id)
            .count();
        assert!(in_place < 100, "{in_place}");
        assert!(load_order(0, 1).is_empty());
    }
}
