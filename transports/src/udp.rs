//! Kernel UDP transport (placeholder, being written).
