//! The one vocabulary of key-value operations and their outcomes, shared by the wire format
//! (borrowed: `Op<&[u8]>` inside a [`Request`](crate::Request)), the client library, the
//! engine and kv-cli (owned: `Op<Vec<u8>>`).

use crate::limits::{check_key, check_value, LimitError};
use crate::wire::op;

/// A SCAN item: (key, value).
pub type Item = (Vec<u8>, Vec<u8>);

/// One key-value operation. `B` holds the bytes: `Vec<u8>` (the default) to own them, `&[u8]`
/// to borrow them from a received message.
///
/// ```
/// use kv_proto::Op;
/// let put = Op::Put { key: b"k".to_vec(), value: b"v".to_vec() };
/// assert!(put.is_write());
/// assert_eq!(put.key(), b"k");
/// assert_eq!(put.view(), Op::Put { key: &b"k"[..], value: &b"v"[..] });
/// assert_eq!(put.view().to_vec(), put);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op<B = Vec<u8>> {
    /// Read a key. Answered with [`Reply::Value`] or [`Reply::NotFound`].
    Get {
        /// The key.
        key: B,
    },
    /// Insert or overwrite a key. Answered with [`Reply::Written`] once durable.
    Put {
        /// The key.
        key: B,
        /// The value.
        value: B,
    },
    /// Delete a key. Answered with [`Reply::Deleted`] once durable, or [`Reply::NotFound`].
    Delete {
        /// The key.
        key: B,
    },
    /// Up to `max` items with key ≥ `start`, in key order. Answered with [`Reply::Items`].
    /// On the wire a SCAN asks one server thread for its partition's part (at most
    /// [`MAX_SCAN_ITEMS`](crate::MAX_SCAN_ITEMS) per response); the client library and the
    /// engine answer it for the whole key space.
    Scan {
        /// First key (inclusive).
        start: B,
        /// Most items wanted.
        max: usize,
    },
}

impl<B: AsRef<[u8]>> Op<B> {
    /// The key (SCAN: the start key).
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Delete { key } => key.as_ref(),
            Op::Scan { start, .. } => start.as_ref(),
        }
    }

    /// The value of a PUT (empty for the others).
    pub fn value(&self) -> &[u8] {
        match self {
            Op::Put { value, .. } => value.as_ref(),
            _ => &[],
        }
    }

    /// The rpc request type of this operation ([`op`]).
    pub fn code(&self) -> u8 {
        match self {
            Op::Get { .. } => op::GET,
            Op::Put { .. } => op::PUT,
            Op::Delete { .. } => op::DELETE,
            Op::Scan { .. } => op::SCAN,
        }
    }

    /// Whether the operation changes the store (PUT, DELETE).
    pub fn is_write(&self) -> bool {
        matches!(self, Op::Put { .. } | Op::Delete { .. })
    }

    /// Checks the key against [`MAX_KEY_LEN`](crate::MAX_KEY_LEN) and a PUT's value against
    /// `max_value`.
    pub fn check_limits(&self, max_value: usize) -> Result<(), LimitError> {
        check_key(self.key())?;
        check_value(self.value(), max_value)
    }

    /// The same operation, borrowing the bytes.
    pub fn view(&self) -> Op<&[u8]> {
        match self {
            Op::Get { key } => Op::Get { key: key.as_ref() },
            Op::Put { key, value } => Op::Put {
                key: key.as_ref(),
                value: value.as_ref(),
            },
            Op::Delete { key } => Op::Delete { key: key.as_ref() },
            Op::Scan { start, max } => Op::Scan {
                start: start.as_ref(),
                max: *max,
            },
        }
    }

    /// The same operation, owning copies of the bytes.
    pub fn to_vec(&self) -> Op<Vec<u8>> {
        match self {
            Op::Get { key } => Op::Get {
                key: key.as_ref().to_vec(),
            },
            Op::Put { key, value } => Op::Put {
                key: key.as_ref().to_vec(),
                value: value.as_ref().to_vec(),
            },
            Op::Delete { key } => Op::Delete {
                key: key.as_ref().to_vec(),
            },
            Op::Scan { start, max } => Op::Scan {
                start: start.as_ref().to_vec(),
                max: *max,
            },
        }
    }
}

/// The successful outcome of an [`Op`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// GET: the value.
    Value(Vec<u8>),
    /// GET or DELETE: the key does not exist.
    NotFound,
    /// PUT: the write is durable.
    Written,
    /// DELETE: the key was deleted (durably).
    Deleted,
    /// SCAN: the items, in key order.
    Items(Vec<Item>),
}
