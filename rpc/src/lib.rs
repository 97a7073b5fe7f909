//! eRPC-style RPC (being written).
