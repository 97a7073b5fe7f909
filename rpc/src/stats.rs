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
    /// Session-management messages received.
    pub sm_rx: u64,
    /// Session-management messages sent (including retries).
    pub sm_tx: u64,
}
