//! Client settings.

use std::time::Duration;

/// Client settings.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Longest a request may wait for its answer: its rpc deadline, after which the rpc layer
    /// completes it with `DeadlineExceeded` (answered as [`Error::Timeout`](crate::Error)) and
    /// frees its slot. Default 5 s.
    pub timeout: Duration,
    /// Longest connecting to the server may take (each session's handshake, and the INFO
    /// request). Default 2 s.
    pub connect_timeout: Duration,
    /// Spin while waiting (lowest latency) instead of sleeping in the socket's wait.
    /// Default `true`.
    pub busy_poll: bool,
    /// Pipelined API: most requests [`Client::submit`](crate::Client::submit) coalesces into one BATCH message per
    /// server thread (capped by what the server advertises). Submitted requests wait in a
    /// per-thread buffer until it is full or the next [`Client::poll`](crate::Client::poll) / [`Client::wait`](crate::Client::wait) /
    /// [`Client::flush`](crate::Client::flush), so one message, one response and one trip through both kernels carry
    /// many requests, as Redis pipelining does. A buffer holding a single request goes out as
    /// a plain request. Reads and writes share a BATCH only if the server acknowledges writes
    /// at once (INFO's `INFO_WRITES_AT_ONCE`). `0` or `1` sends every request on its own.
    /// Default 32.
    pub batch: usize,
    /// Receive with UDP GRO (`transports::udp::UdpConfig::gro`). Default `true`.
    pub udp_gro: bool,
    /// Largest packet (rpc header + payload); `None` (default): over UDP the path MTU toward
    /// the server less the headers, at most 8972 (`transports::udp::max_pkt_size_toward`);
    /// over TCP and RC 8192, over UD the port's MTU. A session uses the smaller of this and
    /// the server's.
    pub max_pkt_size: Option<usize>,
    /// Receive ring of the client's socket, in packets (preallocated: times the packet
    /// size). It must hold the credits of one session per server thread (32 each). `None`
    /// (default): 1024 packets, enough for servers of up to 32 threads; for a bigger server
    /// the client reopens its endpoint with a ring sized for it while connecting. A fixed
    /// size too small for the server fails the connect with `Error::Rpc(RingExhausted)`.
    pub rx_ring_size: Option<usize>,
    /// Reconnect a session whose server end failed (the server restarted or died) when the
    /// next request needs it. Requests that were in flight when the failure was detected
    /// complete with `Error::Rpc(PeerFailed)` (they may or may not have run: they are not
    /// retried); later ones go out on the new session, or fail with the connect error while
    /// the server is down. Default `true`.
    pub auto_reconnect: bool,
    /// How often a server that stays unreachable is tried again (with `auto_reconnect`).
    /// Default: from 100 ms, doubling to 2 s, each wait shortened by up to half at random.
    pub reconnect_backoff: Backoff,
}

/// Exponential backoff with jitter between reconnect attempts to a server thread whose
/// session failed.
///
/// The first attempt follows the failure at once (a restarted server is back for the first
/// request). After `n` failed attempts in a row the next waits `min(initial * 2^(n-1), max)`
/// less a random part of up to `jitter` of it (so clients that lost one server together do
/// not come back in step). While a thread waits, requests for it fail at once with
/// [`Error::Unavailable`](crate::Error::Unavailable): no handshake traffic, no spinning. A
/// success resets the count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// Wait after the first failed attempt. Default 100 ms.
    pub initial: Duration,
    /// Longest wait. Default 2 s.
    pub max: Duration,
    /// Fraction (0..=1) of each wait that is randomised away. Default 0.5.
    pub jitter: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            jitter: 0.5,
        }
    }
}

impl Backoff {
    /// The wait after `failures` (≥ 1) failed attempts in a row, before jitter.
    pub fn base(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.initial
            .saturating_mul(1u32 << doublings)
            .min(self.max)
            .max(self.initial.min(self.max))
    }

    /// The wait after `failures` failed attempts, `unit` in `[0, 1)` choosing the jitter.
    pub fn wait(&self, failures: u32, unit: f64) -> Duration {
        let base = self.base(failures);
        let cut = base.mul_f64(self.jitter.clamp(0.0, 1.0) * unit.clamp(0.0, 1.0));
        base.saturating_sub(cut)
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            busy_poll: true,
            batch: 32,
            udp_gro: true,
            max_pkt_size: None,
            rx_ring_size: None,
            auto_reconnect: true,
            reconnect_backoff: Backoff::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_and_jitter_only_shortens() {
        let b = Backoff::default();
        let ms = |d: Duration| d.as_millis();
        assert_eq!(
            (1..=7).map(|n| ms(b.base(n))).collect::<Vec<_>>(),
            [100, 200, 400, 800, 1600, 2000, 2000]
        );
        assert_eq!(b.base(u32::MAX), b.max);
        assert_eq!(b.wait(3, 0.0), b.base(3));
        assert_eq!(ms(b.wait(3, 0.999_999)), 200);
        assert!(b.wait(3, 0.5) < b.base(3) && b.wait(3, 0.5) > b.base(3) / 2);
        let none = Backoff { jitter: 0.0, ..b };
        assert_eq!(none.wait(2, 0.9), none.base(2));
    }
}
