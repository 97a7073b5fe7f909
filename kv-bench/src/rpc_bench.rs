//! `kv-bench rpc`: latency, throughput and bandwidth of the rpc crate over a transport
//! (`--transport`): kernel UDP or TCP on loopback, or — with the `rdma` feature — InfiniBand
//! UD or RC on the simulated verbs device `SimVerbs` (every figure of those is labelled as a
//! simulation: this machine has no RDMA device). The latency bench measures the same exchange
//! without the rpc layer in the same run, for the ratio: raw UDP sockets, raw TCP sockets, or
//! the verbs transport alone on the same simulated fabric.
//!
//! The server runs on its own thread with one busy-polling Rpc; the client runs on the calling
//! thread, also busy-polling.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hdrhistogram::Histogram;
use rpc::{MsgBuf, Nexus, Rpc, RpcConfig, SessionId};
use serde::Serialize;
use transports::tcp::{TcpConfig, TcpTransport};
use transports::udp::{UdpConfig, UdpTransport};
use transports::Transport;

use crate::baseline::{raw_tcp, raw_udp};
use crate::report::{new_histogram, say, write_json, Latency};

/// The request type the bench server answers: the response size is the request's first
/// 4 bytes (little-endian), or the request size when the request is shorter.
const BENCH_REQ: u8 = 1;

#[derive(clap::Subcommand)]
pub enum RpcCmd {
    /// Small-RPC round-trip latency, with a raw UDP ping-pong in the same run.
    Latency(LatencyArgs),
    /// Small-RPC throughput with many requests in flight.
    Tput(TputArgs),
    /// Open-loop overload: offer a multiple of the measured peak rate and report goodput and
    /// memory (the backlog is bounded, so excess requests are refused at once).
    Overload(OverloadArgs),
    /// Large-message goodput.
    Bw(BwArgs),
}

/// The transport the bench runs the rpc layer over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchTransport {
    /// Kernel UDP on 127.0.0.1.
    Udp,
    /// Kernel TCP on 127.0.0.1.
    Tcp,
    /// InfiniBand UD on the simulated verbs device (a simulation, not an RDMA measurement).
    #[cfg(feature = "rdma")]
    Ud,
    /// InfiniBand RC on the simulated verbs device (a simulation, not an RDMA measurement).
    #[cfg(feature = "rdma")]
    Rc,
}

/// The label of every figure measured on the simulated verbs device.
pub const SIMULATED: &str = "simulated verbs device — not an RDMA measurement";

#[derive(clap::Args)]
pub struct Common {
    /// Seconds to measure.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Write every figure as one JSON object to FILE (`-` for stdout).
    #[arg(long)]
    json: Option<String>,
    /// Transport under the rpc layer: udp, tcp (loopback); ud, rc on the simulated verbs
    /// device (with the `rdma` feature).
    #[arg(long, value_enum, default_value_t = BenchTransport::Udp)]
    transport: BenchTransport,
    /// Largest packet (RPC header + payload). Default: 1472 for UDP (one Ethernet frame),
    /// 8192 for TCP and RC, the port MTU (4096) for UD.
    #[arg(long)]
    mtu: Option<usize>,
    /// Receive without UDP GRO (on by default: coalesced datagrams make receiving a burst
    /// cheap; off shows the per-datagram cost of the kernel stack).
    #[arg(long)]
    no_gro: bool,
}

impl Common {
    fn duration(&self) -> Result<Duration> {
        if !(self.duration > 0.0 && self.duration < 86_400.0) {
            bail!("--duration must be between 0 and 86400 seconds");
        }
        Ok(Duration::from_secs_f64(self.duration))
    }
}

#[derive(clap::Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    common: Common,
    /// Request and response size in bytes.
    #[arg(long, default_value_t = 32)]
    size: usize,
    /// Alternate RPC and raw measurements this many times (reduces drift between the two).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

#[derive(clap::Args)]
pub struct TputArgs {
    #[command(flatten)]
    common: Common,
    /// Client sessions to the server.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Requests in flight per session.
    #[arg(long, default_value_t = 8)]
    window: usize,
    /// Request and response size in bytes.
    #[arg(long, default_value_t = 32)]
    size: usize,
}

#[derive(clap::Args)]
pub struct OverloadArgs {
    #[command(flatten)]
    common: Common,
    /// Client sessions to the server.
    #[arg(long, default_value_t = 4)]
    sessions: usize,
    /// Offered load as a multiple of the peak measured first (closed loop, window 8).
    #[arg(long, default_value_t = 10.0)]
    factor: f64,
    /// Service time of the server's handler in nanoseconds (it spins that long per request
    /// before answering). 0 measures the rpc layer alone, where the client's thread does as
    /// much work per request as the server's and the load generator itself limits the open
    /// loop; a few µs makes the server the bottleneck, the situation overload control is for.
    #[arg(long, default_value_t = 0)]
    work_ns: u64,
}

#[derive(clap::Args)]
pub struct BwArgs {
    #[command(flatten)]
    common: Common,
    /// Message size in bytes (requests carry it; responses are 32 bytes).
    #[arg(long, default_value_t = 8 << 20)]
    size: usize,
    /// Requests in flight.
    #[arg(long, default_value_t = 2)]
    window: usize,
}

impl RpcCmd {
    fn common(&self) -> &Common {
        match self {
            RpcCmd::Latency(a) => &a.common,
            RpcCmd::Tput(a) => &a.common,
            RpcCmd::Overload(a) => &a.common,
            RpcCmd::Bw(a) => &a.common,
        }
    }
}

pub fn run(cmd: RpcCmd) -> Result<()> {
    let c = cmd.common();
    let (transport, mtu, gro) = (c.transport, c.mtu, !c.no_gro);
    match transport {
        BenchTransport::Udp => run_on(cmd, Net::udp(mtu.unwrap_or(1472), gro)),
        BenchTransport::Tcp => run_on(cmd, Net::tcp(mtu.unwrap_or(8192))),
        #[cfg(feature = "rdma")]
        BenchTransport::Ud => run_on(cmd, Net::sim_ud(mtu)),
        #[cfg(feature = "rdma")]
        BenchTransport::Rc => run_on(cmd, Net::sim_rc(mtu.unwrap_or(8192))),
    }
}

fn run_on<T: Transport + Send + 'static>(cmd: RpcCmd, net: Net<T>) -> Result<()> {
    match cmd {
        RpcCmd::Latency(a) => latency(a, &net),
        RpcCmd::Tput(a) => tput(a, &net),
        RpcCmd::Bw(a) => bw(a, &net),
        RpcCmd::Overload(a) => overload(a, &net),
    }
}

/// Makes one endpoint's transport.
type Make<T> = Arc<dyn Fn() -> Result<T> + Send + Sync>;

/// A baseline of the latency bench: (duration, message size) to round-trip times (ns).
type Baseline = Box<dyn Fn(Duration, usize) -> Result<Histogram<u64>>>;

/// What the bench runs over: how to make an endpoint's transport, what to call it, and the
/// exchanges without the rpc layer the latency bench compares with (the first one is the
/// ratio's denominator).
struct Net<T> {
    make: Make<T>,
    /// "UDP on loopback", ...
    label: String,
    /// The largest packet asked for.
    mtu: usize,
    /// On the simulated verbs device: every figure says so.
    simulated: bool,
    baselines: Vec<(String, Baseline)>,
}

impl<T> Net<T> {
    /// `text` with the simulation label in front, if this is a simulation.
    fn tag(&self, text: &str) -> String {
        if self.simulated {
            format!("[{SIMULATED}] {text}")
        } else {
            text.to_string()
        }
    }
}

impl Net<UdpTransport> {
    fn udp(mtu: usize, gro: bool) -> Self {
        let cfg = UdpConfig {
            max_pkt_size: mtu,
            gro,
            ..UdpConfig::default()
        };
        let cfg2 = cfg.clone();
        Self {
            make: Arc::new(move || Ok(UdpTransport::new(cfg.clone())?)),
            label: "UDP on loopback".into(),
            mtu,
            simulated: false,
            baselines: vec![
                (
                    "raw UDP (send_to/recv_from)".into(),
                    Box::new(|d, n| raw_udp::raw_ping_pong(d, n, false)),
                ),
                (
                    "raw UDP (connected)".into(),
                    Box::new(|d, n| raw_udp::raw_ping_pong(d, n, true)),
                ),
                // The same ping-pong through the UDP transport the rpc runs on (same
                // configuration, no rpc layer): splits what the transport adds over raw
                // sockets from what the rpc layer adds over the transport.
                (
                    "UDP transport alone".into(),
                    Box::new(move |d, n| {
                        raw_udp::transport_ping_pong(d, n + rpc::pkthdr::HDR_SIZE, cfg2.clone())
                    }),
                ),
            ],
        }
    }
}

impl Net<TcpTransport> {
    fn tcp(mtu: usize) -> Self {
        let cfg = TcpConfig {
            max_pkt_size: mtu,
            ..TcpConfig::default()
        };
        Self {
            make: Arc::new(move || Ok(TcpTransport::new(cfg.clone())?)),
            label: "TCP on loopback".into(),
            mtu,
            simulated: false,
            baselines: vec![
                (
                    "raw TCP (sockperf-style)".into(),
                    Box::new(raw_tcp::ping_pong),
                ),
                (
                    "TCP transport alone".into(),
                    Box::new(raw_tcp::ping_pong_transport),
                ),
            ],
        }
    }
}

#[cfg(feature = "rdma")]
mod verbs {
    use std::sync::Arc;

    use transports::rdma::rc::{RcConfig, RcTransport};
    use transports::rdma::sim::{SimDevice, SimDeviceConfig, SimVerbs};
    use transports::rdma::ud::{UdConfig, UdTransport};

    use super::{Baseline, Make, Net};
    use crate::baseline::raw_udp::ping_pong_over;

    /// The exchange without the rpc layer: two endpoints of `make` ping-ponging.
    fn alone<T: transports::Transport + Send + 'static>(make: Make<T>) -> Baseline {
        Box::new(move |d, n| ping_pong_over(make()?, make()?, d, n))
    }

    impl Net<UdTransport<SimDevice>> {
        /// UD on a real-time simulated fabric shared by the server's and the client's threads.
        pub(super) fn sim_ud(mtu: Option<usize>) -> Self {
            let fabric = SimVerbs::new_realtime(1);
            let make: Make<UdTransport<SimDevice>> = Arc::new(move || {
                let cfg = UdConfig {
                    max_pkt_size: mtu,
                    ..UdConfig::default()
                };
                Ok(UdTransport::new(
                    fabric.open_device(SimDeviceConfig::default()),
                    cfg,
                )?)
            });
            Self {
                baselines: vec![("UD transport alone".into(), alone(make.clone()))],
                make,
                label: "InfiniBand UD on SimVerbs".into(),
                mtu: mtu.unwrap_or(4096),
                simulated: true,
            }
        }
    }

    impl Net<RcTransport<SimDevice>> {
        /// RC on a real-time simulated fabric shared by the server's and the client's threads.
        pub(super) fn sim_rc(mtu: usize) -> Self {
            let fabric = SimVerbs::new_realtime(1);
            let make: Make<RcTransport<SimDevice>> = Arc::new(move || {
                let cfg = RcConfig {
                    max_pkt_size: mtu,
                    ..RcConfig::default()
                };
                Ok(RcTransport::new(
                    fabric.open_device(SimDeviceConfig::default()),
                    cfg,
                )?)
            });
            Self {
                baselines: vec![("RC transport alone".into(), alone(make.clone()))],
                make,
                label: "InfiniBand RC on SimVerbs".into(),
                mtu,
                simulated: true,
            }
        }
    }
}

/// A bench server on its own thread.
struct Server {
    uri: String,
    stop: Arc<AtomicBool>,
    /// While set, the server thread sleeps instead of spinning: the baselines of `rpc
    /// latency` run then, and a third busy thread on a small machine would preempt their
    /// ping-pong threads (it did: their p99.9 was 4-8 ms, the rpc's 0.1-0.3 ms).
    paused: Arc<AtomicBool>,
    thread: Option<JoinHandle<Result<rpc::RpcStats>>>,
}

impl Server {
    fn start<T: Transport + 'static>(net: &Net<T>) -> Result<Self> {
        Self::start_with_work(net, Duration::ZERO)
    }

    /// A server whose handler spins `work` per request before answering.
    fn start_with_work<T: Transport + 'static>(net: &Net<T>, work: Duration) -> Result<Self> {
        let nexus: Nexus = Nexus::new("127.0.0.1:0", 0)?;
        nexus.register(BENCH_REQ, move |_, ctx, req| {
            if !work.is_zero() {
                let t = Instant::now();
                while t.elapsed() < work {
                    std::hint::spin_loop();
                }
            }
            let size = match req.data.get(..4) {
                Some(b) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize,
                None => req.data.len(),
            };
            let resp = ctx.alloc_msg(size.min(8 << 20));
            let _ = ctx.respond(req.handle, resp);
        })?;
        let uri = nexus.uri().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let stop = stop.clone();
            let paused = paused.clone();
            let make = net.make.clone();
            std::thread::Builder::new()
                .name("bench-server".into())
                .spawn(move || -> Result<rpc::RpcStats> {
                    let mut rpc = Rpc::new(&nexus, 0, make()?, (), rpc_config())?;
                    let _ = ready_tx.send(());
                    while !stop.load(Ordering::Relaxed) {
                        if paused.load(Ordering::Relaxed) {
                            std::thread::sleep(Duration::from_micros(200));
                            continue;
                        }
                        for _ in 0..64 {
                            rpc.run_once();
                        }
                    }
                    Ok(rpc.stats())
                })?
        };
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .map_err(|_| anyhow!("bench server did not start"))?;
        Ok(Self {
            uri,
            stop,
            paused,
            thread: Some(thread),
        })
    }

    /// Makes the server thread sleep (`true`) or spin again (`false`); it notices within
    /// 64 loop iterations, and the baselines leave their first tenth out as warm-up.
    fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::Relaxed);
    }

    fn finish(mut self) -> Result<rpc::RpcStats> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| anyhow!("bench server panicked"))?,
            None => bail!("bench server already stopped"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rpc_config() -> RpcConfig {
    RpcConfig {
        busy_poll: true,
        ..RpcConfig::default()
    }
}

struct Client<T: Transport> {
    rpc: Rpc<T>,
    _nexus: Nexus,
}

impl<T: Transport + 'static> Client<T> {
    fn connect(server: &Server, net: &Net<T>, sessions: usize) -> Result<(Self, Vec<SessionId>)> {
        let nexus: Nexus = Nexus::new("127.0.0.1:0", 0)?;
        let mut rpc = Rpc::new(&nexus, 0, (net.make)()?, (), rpc_config())?;
        let mut ids = Vec::with_capacity(sessions);
        for _ in 0..sessions {
            ids.push(
                rpc.connect(&server.uri, 0)
                    .with_context(|| format!("connecting to {}", server.uri))?,
            );
        }
        Ok((Self { rpc, _nexus: nexus }, ids))
    }
}

fn request(size: usize, resp_size: usize) -> MsgBuf {
    let mut m = MsgBuf::new(size.max(4));
    m.as_mut_slice()[..4].copy_from_slice(&(resp_size as u32).to_le_bytes());
    m.resize(size.max(4));
    m
}

#[derive(Serialize)]
struct Named {
    name: String,
    latency: Latency,
}

#[derive(Serialize)]
struct LatencyReport {
    bench: &'static str,
    transport: String,
    /// Measured on the simulated verbs device: a simulation, not an RDMA measurement.
    simulated: bool,
    note: Option<&'static str>,
    size: usize,
    mtu: usize,
    duration_s: f64,
    p50_us: f64,
    p99_us: f64,
    p999_us: f64,
    rpc: Latency,
    /// The baseline the ratio divides by: the same exchange without the rpc layer (UDP:
    /// unconnected sockets, `send_to`/`recv_from`, as a server talking to many peers, and the
    /// rpc transport, must use; TCP: plain non-blocking `TCP_NODELAY` sockets; the verbs
    /// transports: the transport alone on the same simulated fabric).
    baseline: String,
    raw_p50_us: f64,
    raw_p99_us: f64,
    raw: Latency,
    /// Every baseline measured, the ratio's first.
    baselines: Vec<Named>,
    /// UDP: raw ping-pong with both sockets `connect`ed (no per-packet route lookup).
    raw_connected: Option<Latency>,
    ratio: f64,
    ratio_p99: f64,
    ratio_vs_connected: Option<f64>,
}

fn latency<T: Transport + 'static>(a: LatencyArgs, net: &Net<T>) -> Result<()> {
    let json = a.common.json.clone();
    let json = json.as_deref();
    let total = a.common.duration()?;
    let mtu = net.mtu;
    if a.size + rpc::pkthdr::HDR_SIZE > mtu {
        bail!("--size {} does not fit one packet of --mtu {mtu}", a.size);
    }
    let rounds = a.rounds.max(1);
    let slices = 1 + net.baselines.len() as u32;
    let slice = total / (slices * rounds);
    let server = Server::start(net)?;
    let (mut client, sessions) = Client::connect(&server, net, 1)?;
    let session = sessions[0];
    let mut h_rpc = new_histogram();
    let mut h_base: Vec<Histogram<u64>> = net.baselines.iter().map(|_| new_histogram()).collect();
    for _ in 0..rounds {
        rpc_pingpong(&mut client.rpc, session, a.size, slice, &mut h_rpc)?;
        server.pause(true);
        for ((name, run), h) in net.baselines.iter().zip(h_base.iter_mut()) {
            h.add(run(slice, a.size).with_context(|| format!("baseline {name}"))?)?;
        }
        server.pause(false);
    }
    server.finish()?;
    let rpc = Latency::from_ns(&h_rpc);
    let base: Vec<Latency> = h_base.iter().map(Latency::from_ns).collect();
    let raw = base.first().copied().unwrap_or_default();
    let connected = (net.label.starts_with("UDP"))
        .then(|| base.get(1).copied())
        .flatten();
    let report = LatencyReport {
        bench: "rpc latency",
        transport: net.label.clone(),
        simulated: net.simulated,
        note: net.simulated.then_some(SIMULATED),
        size: a.size,
        mtu,
        duration_s: total.as_secs_f64(),
        p50_us: rpc.p50_us,
        p99_us: rpc.p99_us,
        p999_us: rpc.p999_us,
        rpc,
        baseline: net
            .baselines
            .first()
            .map(|b| b.0.clone())
            .unwrap_or_default(),
        raw_p50_us: raw.p50_us,
        raw_p99_us: raw.p99_us,
        raw,
        baselines: net
            .baselines
            .iter()
            .zip(&base)
            .map(|(b, l)| Named {
                name: b.0.clone(),
                latency: *l,
            })
            .collect(),
        raw_connected: connected,
        ratio: rpc.p50_us / raw.p50_us,
        ratio_p99: rpc.p99_us / raw.p99_us,
        ratio_vs_connected: connected.map(|c| rpc.p50_us / c.p50_us),
    };
    say!(
        json,
        "{}",
        net.tag(&format!(
            "rpc latency, {} B request/response, busy-polling, {} ({} samples)",
            a.size, net.label, rpc.samples
        ))
    );
    say!(
        json,
        "  {:<30} {:>9} {:>9} {:>9}",
        "",
        "p50 µs",
        "p99 µs",
        "p99.9 µs"
    );
    let rows = std::iter::once(("rpc".to_string(), rpc)).chain(
        net.baselines
            .iter()
            .map(|b| b.0.clone())
            .zip(base.iter().copied()),
    );
    for (name, l) in rows {
        let name = if net.simulated {
            format!("{name} (simulated)")
        } else {
            name
        };
        say!(
            json,
            "  {:<30} {:>9.2} {:>9.2} {:>9.2}",
            name,
            l.p50_us,
            l.p99_us,
            l.p999_us
        );
    }
    let target = match (net.simulated, net.label.starts_with("UDP")) {
        (true, _) => String::new(),
        (false, true) => " (target <= 1.10)".into(),
        (false, false) => " (target <= 1.20)".into(),
    };
    let mut ratios = format!(
        "ratio rpc / {} p50 {:.3}{target}, p99 {:.3}",
        report.baseline, report.ratio, report.ratio_p99
    );
    if let Some(r) = report.ratio_vs_connected {
        ratios.push_str(&format!("; vs connected sockets p50 {r:.3}"));
    }
    say!(json, "  {}", net.tag(&ratios));
    write_json(json, &report)
}

/// One request at a time, timing each round trip.
fn rpc_pingpong<T: Transport>(
    rpc: &mut Rpc<T>,
    session: SessionId,
    size: usize,
    d: Duration,
    hist: &mut Histogram<u64>,
) -> Result<()> {
    let warm = Instant::now() + d / 10;
    let end = Instant::now() + d;
    let mut req = Some(request(size, size));
    let mut tag = 0u64;
    loop {
        let t0 = Instant::now();
        let m = req.take().unwrap_or_else(|| request(size, size));
        rpc.enqueue_request(session, BENCH_REQ, m, tag)?;
        let c = loop {
            rpc.run_once();
            if let Some(c) = rpc.poll_completion() {
                break c;
            }
            if t0.elapsed() > Duration::from_secs(5) {
                bail!("no response within 5 s");
            }
        };
        let now = Instant::now();
        let resp = c.result.context("rpc failed")?;
        if resp.len() != size {
            bail!("response of {} bytes, expected {size}", resp.len());
        }
        rpc.ctx().free_msg(resp);
        req = Some(c.req);
        if now >= warm {
            hist.saturating_record((now - t0).as_nanos() as u64);
        }
        tag += 1;
        if now >= end {
            return Ok(());
        }
    }
}

#[derive(Serialize)]
struct TputReport {
    bench: &'static str,
    transport: String,
    simulated: bool,
    sessions: usize,
    window: usize,
    size: usize,
    mtu: usize,
    duration_s: f64,
    requests: u64,
    mrps: f64,
    latency: Latency,
    client_retransmissions: u64,
    client_credit_stalls: u64,
    server_handlers_run: u64,
}

/// Keeps `window` requests in flight on every session for `d`; returns (completions, latency).
fn closed_loop<T: Transport>(
    rpc: &mut Rpc<T>,
    sessions: &[SessionId],
    window: usize,
    size: usize,
    resp_size: usize,
    d: Duration,
) -> Result<(u64, f64, Histogram<u64>)> {
    let mut sent_at: Vec<Instant> = Vec::new();
    let start = Instant::now();
    for (si, &s) in sessions.iter().enumerate() {
        for w in 0..window {
            let tag = (si * window + w) as u64;
            sent_at.push(Instant::now());
            rpc.enqueue_request(s, BENCH_REQ, request(size, resp_size), tag)?;
        }
    }
    let mut hist = new_histogram();
    let warm = start + d / 10;
    let end = start + d;
    let mut done = 0u64;
    let mut measured_start = None;
    loop {
        rpc.run_once();
        let now = Instant::now();
        while let Some(c) = rpc.poll_completion() {
            let resp = c.result.context("rpc failed")?;
            rpc.ctx().free_msg(resp);
            let tag = c.tag as usize;
            let Some(t) = sent_at.get_mut(tag) else {
                bail!("completion with unknown tag {tag}");
            };
            if now >= warm {
                if measured_start.is_none() {
                    measured_start = Some(now);
                }
                hist.saturating_record((now - *t).as_nanos() as u64);
                done += 1;
            }
            *t = now;
            let session = sessions[tag / window];
            rpc.enqueue_request(session, BENCH_REQ, c.req, c.tag)?;
        }
        if now >= end {
            let secs = measured_start.map_or(0.0, |s| (now - s).as_secs_f64());
            // Drain what is in flight so the server sees no stray requests.
            let _ = rpc.run_until(
                |r| sessions.iter().all(|&s| r.ctx().pending_requests(s) == 0),
                Duration::from_secs(2),
            );
            return Ok((done, secs, hist));
        }
    }
}

fn tput<T: Transport + 'static>(a: TputArgs, net: &Net<T>) -> Result<()> {
    let json = a.common.json.clone();
    let json = json.as_deref();
    let d = a.common.duration()?;
    let mtu = net.mtu;
    if a.sessions == 0 || a.window == 0 {
        bail!("--sessions and --window must be at least 1");
    }
    let server = Server::start(net)?;
    let (mut client, sessions) = Client::connect(&server, net, a.sessions)?;
    let (done, secs, hist) = closed_loop(&mut client.rpc, &sessions, a.window, a.size, a.size, d)?;
    let cstats = client.rpc.stats();
    drop(client);
    let sstats = server.finish()?;
    tracing::info!(?cstats, ?sstats, "rpc stats");
    let report = TputReport {
        bench: "rpc tput",
        transport: net.label.clone(),
        simulated: net.simulated,
        sessions: a.sessions,
        window: a.window,
        size: a.size,
        mtu,
        duration_s: secs,
        requests: done,
        mrps: done as f64 / secs.max(1e-9) / 1e6,
        latency: Latency::from_ns(&hist),
        client_retransmissions: cstats.retransmissions,
        client_credit_stalls: cstats.credit_stalls,
        server_handlers_run: sstats.handlers_run,
    };
    say!(json, "{}", net.tag(&format!(
        "rpc tput over {}: {} sessions x {} in flight, {} B: {:.3} M requests/s; latency p50 {:.1} µs p99 {:.1} µs; {} retransmissions",
        net.label, a.sessions, a.window, a.size, report.mrps, report.latency.p50_us, report.latency.p99_us,
        report.client_retransmissions
    )));
    write_json(json, &report)
}

#[derive(Serialize)]
struct BwReport {
    bench: &'static str,
    transport: String,
    simulated: bool,
    size: usize,
    window: usize,
    mtu: usize,
    duration_s: f64,
    messages: u64,
    gbit_per_s: f64,
    latency: Latency,
    client_retransmissions: u64,
    client_tx_dropped: u64,
}

fn bw<T: Transport + 'static>(a: BwArgs, net: &Net<T>) -> Result<()> {
    let json = a.common.json.clone();
    let json = json.as_deref();
    let d = a.common.duration()?;
    let mtu = net.mtu;
    if a.size > 8 << 20 || a.window == 0 {
        bail!("--size must be at most 8 MiB and --window at least 1");
    }
    let server = Server::start(net)?;
    let (mut client, sessions) = Client::connect(&server, net, 1)?;
    let (done, secs, hist) = closed_loop(&mut client.rpc, &sessions, a.window, a.size, 32, d)?;
    let cstats = client.rpc.stats();
    drop(client);
    server.finish()?;
    let gbit = done as f64 * a.size as f64 * 8.0 / secs.max(1e-9) / 1e9;
    let report = BwReport {
        bench: "rpc bw",
        transport: net.label.clone(),
        simulated: net.simulated,
        size: a.size,
        window: a.window,
        mtu,
        duration_s: secs,
        messages: done,
        gbit_per_s: gbit,
        latency: Latency::from_ns(&hist),
        client_retransmissions: cstats.retransmissions,
        client_tx_dropped: cstats.tx_dropped,
    };
    say!(json, "{}", net.tag(&format!(
        "rpc bw over {}: {} B messages, {} in flight, packets of {} B: {:.2} Gbit/s goodput ({} messages); {} retransmissions",
        net.label, a.size, a.window, mtu, gbit, done, report.client_retransmissions
    )));
    write_json(json, &report)
}

#[derive(Serialize)]
struct OverloadReport {
    bench: &'static str,
    transport: String,
    simulated: bool,
    sessions: usize,
    factor: f64,
    peak_mrps: f64,
    offered_mrps: f64,
    accepted_mrps: f64,
    goodput_mrps: f64,
    goodput_ratio: f64,
    refused_overloaded: u64,
    failed: u64,
    rss_mb_start: f64,
    rss_mb_end: f64,
    latency: Latency,
    work_ns: u64,
    /// Each round's closed-loop rate and open-loop goodput.
    phases: Vec<Phase>,
}

#[derive(Serialize)]
struct Phase {
    closed_mrps: f64,
    open_goodput_mrps: f64,
}

/// Resident set size of this process in MiB (Linux), 0 if unknown.
fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<f64>().ok())
        })
        .map_or(0.0, |pages| pages * 4096.0 / (1 << 20) as f64)
}

/// Counters of the open-loop phases.
#[derive(Default)]
struct OpenLoop {
    offered: u64,
    accepted: u64,
    refused: u64,
    good: u64,
    failed: u64,
    secs: f64,
}

/// Offers `rate` requests/s for `d` (see `overload`), then drains what is still queued.
fn open_loop<T: Transport>(
    rpc: &mut Rpc<T>,
    sessions: &[SessionId],
    rate: f64,
    d: Duration,
    hist: &mut Histogram<u64>,
    st: &mut OpenLoop,
) -> Result<()> {
    // A request's tag is its send time (ns since `start`): no per-request bookkeeping.
    let start = Instant::now();
    let end = start + d;
    let mut offered = 0u64;
    let mut good_at_end = None;
    let mut full: Vec<bool> = Vec::with_capacity(sessions.len());
    loop {
        let now = Instant::now();
        if now >= end && good_at_end.is_none() {
            good_at_end = Some(st.good);
            st.secs += (now - start).as_secs_f64();
        }
        if good_at_end.is_some() {
            // Drain: the next phase starts with empty sessions (these completions are not
            // counted as goodput).
            if sessions.iter().all(|&s| rpc.ctx().pending_requests(s) == 0) {
                break;
            }
        } else {
            let due = (rate * (now - start).as_secs_f64()) as u64;
            // Offer what is due, session by session. A session that answers Overloaded
            // refuses the rest of its share of this round too, as a client backing off would.
            full.clear();
            full.resize(sessions.len(), false);
            while offered < due {
                let i = (offered % sessions.len() as u64) as usize;
                offered += 1;
                st.offered += 1;
                if full[i] {
                    st.refused += 1;
                    if full.iter().all(|&f| f) {
                        st.refused += due - offered;
                        st.offered += due - offered;
                        offered = due;
                    }
                    continue;
                }
                // The same request and response as the closed loop's: 32 B each.
                let mut req = rpc.ctx().alloc_msg(32);
                if let Some(h) = req.as_mut_slice().get_mut(..4) {
                    h.copy_from_slice(&32u32.to_le_bytes());
                }
                let tag = (now - start).as_nanos() as u64;
                match rpc.enqueue_request(sessions[i], BENCH_REQ, req, tag) {
                    Ok(()) => st.accepted += 1,
                    Err(rpc::RpcError::Overloaded) => {
                        st.refused += 1;
                        full[i] = true;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        rpc.run_once();
        let now = Instant::now();
        while let Some(c) = rpc.poll_completion() {
            let age = (now - start).as_nanos() as u64;
            hist.saturating_record(age.saturating_sub(c.tag));
            rpc.ctx().free_msg(c.req);
            match c.result {
                Ok(m) => {
                    if good_at_end.is_none() {
                        st.good += 1;
                    }
                    rpc.ctx().free_msg(m);
                }
                Err(_) => st.failed += 1,
            }
        }
    }
    Ok(())
}

fn overload<T: Transport + 'static>(a: OverloadArgs, net: &Net<T>) -> Result<()> {
    let json = a.common.json.clone();
    let json = json.as_deref();
    let d = a.common.duration()?;
    if a.sessions == 0 || !(a.factor > 0.0 && a.factor <= 1000.0) {
        bail!("--sessions must be at least 1 and --factor in (0, 1000]");
    }
    let server = Server::start_with_work(net, Duration::from_nanos(a.work_ns))?;
    let (mut client, sessions) = Client::connect(&server, net, a.sessions)?;
    let rpc = &mut client.rpc;
    // Alternate closed-loop (peak) and open-loop (factor x peak) phases, 3 rounds, so machine
    // drift hits both alike.
    let rounds = 3;
    let phase = d / (2 * rounds);
    let rss_start = rss_mb();
    let mut hist = new_histogram();
    let mut st = OpenLoop::default();
    let (mut peak_done, mut peak_secs) = (0u64, 0f64);
    let mut phases = Vec::new();
    for _ in 0..rounds {
        let (done, secs, _) = closed_loop(rpc, &sessions, 8, 32, 32, phase)?;
        peak_done += done;
        peak_secs += secs;
        let peak = peak_done as f64 / peak_secs.max(1e-9);
        let (good, secs0) = (st.good, st.secs);
        open_loop(rpc, &sessions, peak * a.factor, phase, &mut hist, &mut st)?;
        phases.push(Phase {
            closed_mrps: done as f64 / secs.max(1e-9) / 1e6,
            open_goodput_mrps: (st.good - good) as f64 / (st.secs - secs0).max(1e-9) / 1e6,
        });
    }
    let peak = peak_done as f64 / peak_secs.max(1e-9);
    let (offered, accepted, refused, good, failed) =
        (st.offered, st.accepted, st.refused, st.good, st.failed);
    let secs = st.secs;
    let rss_end = rss_mb();
    drop(client);
    server.finish()?;
    let report = OverloadReport {
        bench: "rpc overload",
        transport: net.label.clone(),
        simulated: net.simulated,
        sessions: a.sessions,
        factor: a.factor,
        peak_mrps: peak / 1e6,
        offered_mrps: offered as f64 / secs / 1e6,
        accepted_mrps: accepted as f64 / secs / 1e6,
        goodput_mrps: good as f64 / secs / 1e6,
        goodput_ratio: good as f64 / secs / peak.max(1e-9),
        refused_overloaded: refused,
        failed,
        rss_mb_start: rss_start,
        rss_mb_end: rss_end,
        latency: Latency::from_ns(&hist),
        work_ns: a.work_ns,
        phases,
    };
    let line = format!(
        "rpc overload over {}: peak {:.3} M/s; offered {:.3} M/s ({}x); goodput {:.3} M/s = {:.2} of peak; {} refused (Overloaded), {} failed; latency p50 {:.0} µs p99 {:.0} µs; client RSS {:.1} -> {:.1} MiB",
        net.label,
        report.peak_mrps,
        report.offered_mrps,
        a.factor,
        report.goodput_mrps,
        report.goodput_ratio,
        refused,
        failed,
        report.latency.p50_us,
        report.latency.p99_us,
        rss_start,
        rss_end
    );
    say!(json, "{}", net.tag(&line));
    write_json(json, &report)
}
