//! The snapshot state file: a fixed header (magic, format version, payload length,
//! CRC-32 of the payload) followed by a JSON payload. A file that is foreign, of
//! another format version, truncated, corrupt or larger than the cap is refused.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"REAPSNAP";
/// Format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Header: magic, version (u32), flags (u32, zero), payload length (u64), CRC-32 of
/// the payload (u32), reserved (u32, zero). Little-endian.
pub const HEADER_LEN: usize = 32;
/// Largest payload this build reads.
pub const MAX_PAYLOAD: u64 = 4 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateFormatError {
    #[error("not a reap snapshot state file (bad magic)")]
    BadMagic,
    #[error(
        "state file format version {found} is not supported (this build reads version {VERSION})"
    )]
    Version { found: u32 },
    #[error("state file is truncated ({len} bytes, {expected} expected)")]
    Truncated { len: u64, expected: u64 },
    #[error("state file payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte cap")]
    TooLarge(u64),
    #[error("state file is corrupt (checksum mismatch)")]
    Checksum,
    #[error("state file has trailing data")]
    Trailing,
    #[error("state file payload is invalid: {0}")]
    Payload(String),
}

/// Encodes `value` as a state file.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StateFormatError> {
    let payload =
        serde_json::to_vec(value).map_err(|e| StateFormatError::Payload(e.to_string()))?;
    if payload.len() as u64 > MAX_PAYLOAD {
        return Err(StateFormatError::TooLarge(payload.len() as u64));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend(MAGIC);
    out.extend(VERSION.to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend((payload.len() as u64).to_le_bytes());
    out.extend(crc32fast::hash(&payload).to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend(payload);
    Ok(out)
}

/// Decodes a state file, checking everything before the payload is parsed.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StateFormatError> {
    let len = bytes.len() as u64;
    if bytes.len() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(StateFormatError::BadMagic);
    }
    if bytes.len() < HEADER_LEN {
        return Err(StateFormatError::Truncated {
            len,
            expected: HEADER_LEN as u64,
        });
    }
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    let version = u32_at(8);
    if version != VERSION {
        return Err(StateFormatError::Version { found: version });
    }
    let payload_len = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    if payload_len > MAX_PAYLOAD {
        return Err(StateFormatError::TooLarge(payload_len));
    }
    let expected = HEADER_LEN as u64 + payload_len;
    if len < expected {
        return Err(StateFormatError::Truncated { len, expected });
    }
    if len > expected {
        return Err(StateFormatError::Trailing);
    }
    let payload = &bytes[HEADER_LEN..];
    if crc32fast::hash(payload) != u32_at(24) {
        return Err(StateFormatError::Checksum);
    }
    serde_json::from_slice(payload).map_err(|e| StateFormatError::Payload(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
    }

    fn sample() -> Sample {
        Sample {
            name: "fn".into(),
            values: vec![1, 2, u64::MAX],
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(&sample()).unwrap();
        assert_eq!(&bytes[..8], b"REAPSNAP");
        assert_eq!(decode::<Sample>(&bytes).unwrap(), sample());
    }

    #[test]
    fn refuses_foreign_truncated_corrupt_and_other_versions() {
        let good = encode(&sample()).unwrap();
        assert_eq!(
            decode::<Sample>(b"\x7fELF....").unwrap_err(),
            StateFormatError::BadMagic
        );
        assert_eq!(
            decode::<Sample>(b"").unwrap_err(),
            StateFormatError::BadMagic
        );
        assert!(matches!(
            decode::<Sample>(&good[..good.len() - 1]),
            Err(StateFormatError::Truncated { .. })
        ));
        assert!(matches!(
            decode::<Sample>(&good[..20]),
            Err(StateFormatError::Truncated { .. })
        ));
        let mut corrupt = good.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        assert_eq!(
            decode::<Sample>(&corrupt).unwrap_err(),
            StateFormatError::Checksum
        );
        let mut v2 = good.clone();
        v2[8] = 2;
        assert_eq!(
            decode::<Sample>(&v2).unwrap_err(),
            StateFormatError::Version { found: 2 }
        );
        let mut huge = good.clone();
        huge[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(matches!(
            decode::<Sample>(&huge),
            Err(StateFormatError::TooLarge(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            decode::<Sample>(&trailing).unwrap_err(),
            StateFormatError::Trailing
        );
        // A valid file whose payload is not the expected structure.
        let other = encode(&vec![1, 2, 3]).unwrap();
        assert!(matches!(
            decode::<Sample>(&other),
            Err(StateFormatError::Payload(_))
        ));
    }
}
