//! `kv-bench rpc` (being written).
use anyhow::Result;

#[derive(clap::Subcommand)]
pub enum RpcCmd {
    /// Small-RPC round-trip latency, with a raw UDP ping-pong in the same run.
    Latency,
}

pub fn run(_cmd: RpcCmd) -> Result<()> {
    anyhow::bail!("not implemented yet")
}
