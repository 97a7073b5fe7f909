//! The manifest: a 24-byte file `MANIFEST` in the data directory recording the format
//! version and the number of workers W.
//!
//! ```text
//! offset size field
//!      0    8 magic    b"KVELLRS\n"
//!      8    4 version  u32 LE, currently 2 (1 is read too)
//!     12    4 workers  u32 LE (W)
//!     16    4 reserved zero
//!     20    4 crc32c   CRC32C of bytes 0..20, LE
//! ```
//!
//! Written once, when a directory is first opened, through a temporary file, `fsync` and
//! `rename`. A manifest with another magic, version or a bad checksum is
//! [`Error::UnknownFormat`]; another W is [`Error::WorkerCountMismatch`].
#![deny(
    clippy::indexing_slicing,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
use super::backend::Storage;
use super::error::{Error, Result};

/// File name of the manifest.
pub const MANIFEST_FILE: &str = "MANIFEST";
/// Magic bytes at the start of the manifest.
pub const MAGIC: &[u8; 8] = b"KVELLRS\n";
/// Format version written by this build. Version history: 1 = the initial format
/// (20-byte record header with CRC32C, slab names `worker-NNNN-class-SIZE.slab`); 2 = adds the
/// staging files `worker-NNNN.stage` ([`staging`](crate::staging)), which hold acknowledged
/// writes a version-1 reader would ignore. This build reads both; it writes 2 for a new
/// directory, and upgrades a version-1 directory to 2 before it creates a staging file.
pub const FORMAT_VERSION: u32 = 2;
/// The oldest format version this build reads.
pub const OLDEST_VERSION: u32 = 1;
/// Manifest length in bytes.
pub const MANIFEST_LEN: usize = 24;

/// Encodes a manifest of the current [`FORMAT_VERSION`].
pub fn encode(workers: u32) -> [u8; MANIFEST_LEN] {
    encode_versioned(FORMAT_VERSION, workers)
}

/// Encodes a manifest of format `version`.
pub fn encode_versioned(version: u32, workers: u32) -> [u8; MANIFEST_LEN] {
    let mut b = [0u8; MANIFEST_LEN];
    b[0..8].copy_from_slice(MAGIC);
    b[8..12].copy_from_slice(&version.to_le_bytes());
    b[12..16].copy_from_slice(&workers.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..20]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Decodes a manifest and returns W.
pub fn decode(b: &[u8]) -> Result<u32> {
    decode_versioned(b).map(|(_, w)| w)
}

/// Decodes a manifest and returns its format version and W.
pub fn decode_versioned(b: &[u8]) -> Result<(u32, u32)> {
    let field = |r: std::ops::Range<usize>| -> Result<[u8; 4]> {
        b.get(r)
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| Error::UnknownFormat("manifest too short".into()))
    };
    if b.len() != MANIFEST_LEN || b.get(0..8) != Some(&MAGIC[..]) {
        return Err(Error::UnknownFormat(
            "MANIFEST is not a manifest of this engine".into(),
        ));
    }
    let crc = u32::from_le_bytes(field(20..24)?);
    if crc32c::crc32c(b.get(0..20).unwrap_or_default()) != crc {
        return Err(Error::UnknownFormat("MANIFEST checksum mismatch".into()));
    }
    if b.get(16..20) != Some(&[0u8; 4][..]) {
        // Found by fuzzing: a later format using these bytes must bump the version.
        return Err(Error::UnknownFormat(
            "MANIFEST reserved bytes not zero".into(),
        ));
    }
    let version = u32::from_le_bytes(field(8..12)?);
    if !(OLDEST_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(Error::UnknownFormat(format!(
            "format version {version}, this build reads versions {OLDEST_VERSION} to {FORMAT_VERSION}"
        )));
    }
    Ok((version, u32::from_le_bytes(field(12..16)?)))
}

/// The number of workers W recorded in the data directory, or `None` if it has no manifest
/// (a new directory).
pub fn recorded_workers<S: Storage>(storage: &S) -> Result<Option<u32>> {
    match storage
        .read_file(MANIFEST_FILE)
        .map_err(|e| Error::io("reading the manifest", e))?
    {
        Some(bytes) => decode(&bytes).map(Some),
        None => Ok(None),
    }
}

/// Checks the manifest of `storage` against `workers`, writing one if the directory has
/// none. `staging`: the engine will create staging files, so a version-1 manifest is
/// upgraded to the current version first.
pub(crate) fn check_or_create<S: Storage>(storage: &S, workers: u32, staging: bool) -> Result<()> {
    let recorded = match storage
        .read_file(MANIFEST_FILE)
        .map_err(|e| Error::io("reading the manifest", e))?
    {
        Some(bytes) => Some(decode_versioned(&bytes)?),
        None => None,
    };
    match recorded {
        Some((_, on_disk)) if on_disk != workers => Err(Error::WorkerCountMismatch {
            on_disk,
            requested: workers,
        }),
        Some((version, _)) if staging && version < FORMAT_VERSION => storage
            .write_file_durably(MANIFEST_FILE, &encode(workers))
            .map_err(|e| Error::io("upgrading the manifest", e)),
        Some(_) => Ok(()),
        None => {
            let has_slabs = storage
                .list()
                .map_err(|e| Error::io("listing the data directory", e))?
                .iter()
                .any(|n| n.ends_with(".slab"));
            if has_slabs {
                return Err(Error::UnknownFormat("slab files without a MANIFEST".into()));
            }
            storage
                .write_file_durably(MANIFEST_FILE, &encode(workers))
                .map_err(|e| Error::io("writing the manifest", e))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn nonzero_reserved_bytes_are_refused_even_with_a_valid_crc() {
        // The input the fuzzer found: reserved bytes set, CRC recomputed.
        let mut b = encode(1);
        b[16] = 0x26;
        let crc = crc32c::crc32c(&b[0..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&b), Err(Error::UnknownFormat(_))));
        assert_eq!(decode(&encode(1)).unwrap(), 1);
    }

    #[test]
    fn golden_manifest() {
        let b = encode(4);
        assert_eq!(&b[0..8], b"KVELLRS\n");
        assert_eq!(&b[8..20], &[2, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_versioned(&b).ok(), Some((2, 4)));
        // Version 1 (no staging files) is still read.
        let v1 = encode_versioned(1, 4);
        assert_eq!(&v1[8..12], &[1, 0, 0, 0]);
        assert_eq!(decode_versioned(&v1).ok(), Some((1, 4)));
        for v in [0, 3] {
            let bad = encode_versioned(v, 4);
            assert!(
                matches!(decode(&bad), Err(Error::UnknownFormat(_))),
                "version {v}"
            );
        }
        assert!(matches!(decode(&b[..10]), Err(Error::UnknownFormat(_))));
    }
}
