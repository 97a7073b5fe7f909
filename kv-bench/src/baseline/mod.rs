//! Same-run baselines.
