//! Per-Rpc counters.

/// Counters of one Rpc, readable with [`Rpc::stats`](crate::Rpc::stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RpcStats {
    /// Datapath packets queued for transmission.
    pub tx_pkts: u64,
    /// Datapath packets received and parsed.
    pub rx_pkts: u64,
    /// Requests enqueued by this Rpc as a client.
    pub requests_sent: u64,
    /// Requests completed with a response.
    pub responses_received: u64,
    /// Requests completed with an error.
    pub requests_failed: u64,
    /// Requests handed to a handler (foreground or background).
    pub handlers_run: u64,
    /// Go-back-N retransmission events (one per slot rewind).
    pub retransmissions: u64,
    /// Times a slot had packets to send but no session credit.
    pub credit_stalls: u64,
    /// Packets dropped because their header or size fields were malformed.
    pub dropped_malformed: u64,
    /// Packets dropped because they named no live session or carried a wrong token.
    pub dropped_bad_session: u64,
    /// Well-formed packets dropped as duplicates, stale or out of order.
    pub dropped_unexpected: u64,
    /// Queued packets skipped at transmit time because their buffer was gone.
    pub tx_skipped: u64,
    /// Packets the transport could not send.
    pub tx_dropped: u64,
    /// Packets the transport discarded on receive (empty, truncated, oversized).
    pub rx_dropped_transport: u64,
    /// Requests that completed with `DeadlineExceeded`.
    pub deadline_exceeded: u64,
    /// Requests cancelled.
    pub cancelled: u64,
    /// Client sessions reset because their peer failed.
    pub sessions_reset: u64,
    /// Server sessions freed because their client failed (liveness, or a failed route).
    pub server_sessions_reaped: u64,
    /// Session ends ended at once because the transport reported their route failed
    /// (`Transport::poll_route_failure`): client ends reset (or their connect failed, or
    /// their disconnect cut short), server ends freed. A client end that had failed already
    /// only gives its route back and is not counted.
    pub route_failures: u64,
    /// Liveness pings sent.
    pub pings_sent: u64,
    /// Connect requests refused (limits, mismatches, bad parameters).
    pub connects_refused: u64,
    /// Session-management messages received.
    pub sm_rx: u64,
    /// Session-management messages sent (including retries).
    pub sm_tx: u64,
}

/// Counters and estimates of one client session, from [`Ctx::session_stats`](crate::Ctx::session_stats).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Requests enqueued.
    pub requests: u64,
    /// Requests completed with a response.
    pub completed: u64,
    /// Requests completed with an error.
    pub failed: u64,
    /// Go-back-N rewinds.
    pub retransmissions: u64,
    /// Requests that hit their deadline.
    pub deadline_exceeded: u64,
    /// Times the session was reset after a peer failure.
    pub resets: u64,
    /// Smoothed round-trip estimate (ns) of requests answered without retransmission; 0 until
    /// the first sample.
    pub rtt_ns: u64,
}
