//! The KVell-derived storage engine (being written).
