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
    /// a plain request. `0` or `1` sends every request on its own. Default 32.
    pub batch: usize,
    /// Receive with UDP GRO (`transports::udp::UdpConfig::gro`). Default `true`.
    pub udp_gro: bool,
    /// Largest UDP packet; `None` (default): the path MTU toward the server less the
    /// headers, at most 8972 (`transports::udp::max_pkt_size_toward`). A session uses the
    /// smaller of this and the server's.
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
        }
    }
}
