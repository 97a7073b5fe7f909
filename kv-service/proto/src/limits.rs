//! Size limits every layer agrees on: the engine stores, the server accepts and the client
//! checks exactly these.

/// Largest key, in bytes.
pub const MAX_KEY_LEN: usize = 1024;

/// Largest value, in bytes (1 MiB).
pub const MAX_VALUE_LEN: usize = 1 << 20;

/// Most items one SCAN response holds; a client wanting more continues past the last key.
pub const MAX_SCAN_ITEMS: u32 = 1024;

/// Largest SCAN response body a server builds (bytes): it stops adding items before this and
/// sets the `MORE` flag. Below the rpc crate's default 8 MiB message limit.
pub const MAX_SCAN_BODY: usize = 4 << 20;

/// Most requests in one BATCH message.
pub const MAX_BATCH: u32 = 256;

/// A key or value over its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    /// The key is longer than [`MAX_KEY_LEN`].
    #[error("key of {len} bytes exceeds the limit of {max} bytes")]
    KeyTooLarge {
        /// Length of the rejected key.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The value is longer than [`MAX_VALUE_LEN`].
    #[error("value of {len} bytes exceeds the limit of {max} bytes")]
    ValueTooLarge {
        /// Length of the rejected value.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Checks a key against [`MAX_KEY_LEN`].
pub fn check_key(key: &[u8]) -> Result<(), LimitError> {
    if key.len() > MAX_KEY_LEN {
        return Err(LimitError::KeyTooLarge {
            len: key.len(),
            max: MAX_KEY_LEN,
        });
    }
    Ok(())
}

/// Checks a value against `max` (a server may advertise less than [`MAX_VALUE_LEN`]).
pub fn check_value(value: &[u8], max: usize) -> Result<(), LimitError> {
    if value.len() > max {
        return Err(LimitError::ValueTooLarge {
            len: value.len(),
            max,
        });
    }
    Ok(())
}
