//! `kv-bench engine` (being written).
use anyhow::Result;

/// Arguments of `kv-bench engine`.
#[derive(clap::Args)]
pub struct EngineArgs {}

pub fn run(_args: EngineArgs) -> Result<()> {
    anyhow::bail!("kv-bench engine is not implemented yet")
}
