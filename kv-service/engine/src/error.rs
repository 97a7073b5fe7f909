//! The engine's error type.
use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the engine. Every failure is one of these variants; the
/// engine never panics on bad input, bad data on disk or a failing device.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key is longer than [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// Length of the rejected key.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than [`MAX_VALUE_LEN`](crate::MAX_VALUE_LEN).
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Length of the rejected value.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The data directory was created with another number of workers. Keys are placed by
    /// `hash(key) mod W`, so opening with another W would silently lose keys.
    #[error("data directory was created with {on_disk} workers but opened with {requested}")]
    WorkerCountMismatch {
        /// W recorded in the manifest.
        on_disk: u32,
        /// W asked for by the caller.
        requested: u32,
    },
    /// The manifest names a format version this build cannot read (or is not a manifest).
    #[error("unknown data format: {0}")]
    UnknownFormat(String),
    /// The configuration is invalid (zero workers, zero queue depth, ...).
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
    /// io_uring could not be set up (kernel too old, disabled by sysctl or seccomp) and
    /// [`IoMode::Uring`](crate::IoMode::Uring) asked for it ([`IoMode::Auto`](crate::IoMode::Auto)
    /// falls back to pread / pwrite instead).
    #[error("io_uring is unavailable on this system ({0}); it needs Linux >= 5.6, not disabled by kernel.io_uring_disabled or a seccomp filter (IoMode::Auto falls back to pread/pwrite)")]
    IoUringUnavailable(#[source] io::Error),
    /// The file system holding the data directory rejects O_DIRECT (e.g. tmpfs).
    #[error("the file system at {0} does not support O_DIRECT (tmpfs?); put the data directory on a disk file system")]
    DirectIoUnsupported(PathBuf),
    /// A record read back for a live index entry failed its checksum or does not hold the
    /// expected key. The value is never returned.
    #[error("corrupt record in {file} slot {slot}")]
    Corrupt {
        /// Slab file name.
        file: String,
        /// Slot number.
        slot: u64,
    },
    /// An I/O error (disk full, file too large, device error...).
    #[error("I/O error while {context}: {source}")]
    Io {
        /// What the engine was doing.
        context: &'static str,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The engine (or the worker thread serving this key) has shut down.
    #[error("the engine is closed")]
    Closed,
}

impl Error {
    /// Wraps an [`io::Error`] with a context.
    pub(crate) fn io(context: &'static str, source: io::Error) -> Self {
        Error::Io { context, source }
    }
}

impl From<kv_proto::LimitError> for Error {
    fn from(e: kv_proto::LimitError) -> Self {
        match e {
            kv_proto::LimitError::KeyTooLarge { len, max } => Error::KeyTooLarge { len, max },
            kv_proto::LimitError::ValueTooLarge { len, max } => Error::ValueTooLarge { len, max },
        }
    }
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
