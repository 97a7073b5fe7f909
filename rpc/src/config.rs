//! Run-time configuration of an [`Rpc`](crate::Rpc).

use std::ops::RangeInclusive;
use std::time::Duration;

/// Settings of one Rpc. Every limit of the protocol is here, not a constant.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    /// Request slots per session (requests in flight per session). eRPC: 8.
    pub window: usize,
    /// Packets a client session may have in flight (credits). eRPC: 32.
    pub credits: u32,
    /// Largest message, request or response, in bytes (at most 2^31).
    pub max_msg_size: usize,
    /// Retransmission timeout: a slot with no progress for this long goes back N.
    pub rto: Duration,
    /// Most sessions (client and server ends together) this Rpc holds.
    pub max_sessions: usize,
    /// Requests a client session may queue beyond its window before `enqueue_request`
    /// answers [`RpcError::Overloaded`](crate::RpcError::Overloaded).
    pub backlog_limit: usize,
    /// How long a connect or disconnect may take before it fails.
    pub connect_timeout: Duration,
    /// Interval between retries of an unanswered SM message. eRPC: 100 ms.
    pub sm_retry: Duration,
    /// Bytes of free message buffers each Rpc keeps cached for reuse.
    pub buffer_cache_bytes: usize,
    /// Spin when idle (lowest latency) instead of sleeping in the transport's `wait`.
    pub busy_poll: bool,
    /// Packets processed per event-loop iteration at most (bounds the work per call).
    pub rx_batch: usize,
    /// Seed for session tokens; `None` draws one from the OS.
    pub seed: Option<u64>,
    /// Deadline of a request that names none (`Ctx::enqueue_request`): past it the request
    /// completes with [`RpcError::DeadlineExceeded`](crate::RpcError::DeadlineExceeded).
    /// `None`: no default deadline.
    pub default_deadline: Option<Duration>,
    /// A session whose peer has been silent this long is declared failed: a client end is
    /// reset (every pending request completes with
    /// [`RpcError::PeerFailed`](crate::RpcError::PeerFailed)), a server end is freed. An end
    /// that has not heard from its peer for a quarter of this sends it a ping over the SM
    /// channel. `None` disables failure detection.
    pub failure_timeout: Option<Duration>,
    /// Most server-end sessions one remote Nexus may hold at this Rpc.
    pub max_sessions_per_peer: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            window: 8,
            credits: 32,
            max_msg_size: 8 << 20,
            rto: Duration::from_millis(5),
            max_sessions: 16_384,
            backlog_limit: 4096,
            connect_timeout: Duration::from_secs(2),
            sm_retry: Duration::from_millis(100),
            buffer_cache_bytes: 64 << 20,
            busy_poll: true,
            rx_batch: 64,
            seed: None,
            default_deadline: Some(Duration::from_secs(30)),
            failure_timeout: Some(Duration::from_secs(1)),
            max_sessions_per_peer: 4096,
        }
    }
}

/// Slots a session may have: the client's `window`, which the server adopts.
pub(crate) const WINDOW_LIMITS: RangeInclusive<usize> = 1..=1024;
/// Credits a session may have: the client's `credits`, which the server reserves in its ring.
pub(crate) const CREDIT_LIMITS: RangeInclusive<u32> = 1..=65_536;

/// Checks a session's window and credits against the limits both ends apply (a client to its
/// own configuration, a server to a connect request).
pub(crate) fn check_session_params(window: usize, credits: u32) -> Result<(), String> {
    if !WINDOW_LIMITS.contains(&window) {
        return Err(format!("window {window} not in {WINDOW_LIMITS:?}"));
    }
    if !CREDIT_LIMITS.contains(&credits) {
        return Err(format!("credits {credits} not in {CREDIT_LIMITS:?}"));
    }
    Ok(())
}

impl RpcConfig {
    pub(crate) fn validate(&self) -> Result<(), String> {
        check_session_params(self.window, self.credits)?;
        if self.max_msg_size > (1 << 31) {
            return Err(format!("max_msg_size {} over 2 GiB", self.max_msg_size));
        }
        if self.rto.is_zero()
            || self.sm_retry.is_zero()
            || self.rx_batch == 0
            || self.max_sessions == 0
            || self.max_sessions_per_peer == 0
        {
            return Err(
                "rto, sm_retry, rx_batch, max_sessions and max_sessions_per_peer must be non-zero"
                    .into(),
            );
        }
        if self
            .failure_timeout
            .is_some_and(|t| t < Duration::from_millis(4))
        {
            return Err("failure_timeout under 4 ms".into());
        }
        Ok(())
    }
}
