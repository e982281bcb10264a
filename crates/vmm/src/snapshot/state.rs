//! The snapshot state file: a fixed header (magic, format version, payload length,
//! CRC-32 of the payload) followed by a JSON payload. A file that is foreign, of
//! another format version, truncated, corrupt or larger than the cap is refused.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// First bytes of every state file.
pub const MAGIC: [u8; 8] = *b"REAPSNAP";
/// Format version this build writes.
pub const VERSION: u32 = 4;
/// Oldest format version this build reads: version 3 is version 4 without the guest's
/// threads (one thread, blocked reading stdin), and its payload decodes as one.
pub const MIN_VERSION: u32 = 3;
/// Header: magic, version (u32), flags (u32, zero), payload length (u64), CRC-32 of
/// the payload (u32), reserved (u32, zero). Little-endian.
pub const HEADER_LEN: usize = 32;
/// Largest payload this build reads (the writable layer of the guest file system is
/// part of it).
pub const MAX_PAYLOAD: u64 = 64 << 20;

/// Why bytes are not a valid state file.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateFormatError {
    /// The file does not start with the state file's magic.
    #[error("not a reap snapshot state file (bad magic)")]
    BadMagic,
    #[error(
        "state file format version {found} is not supported (this build reads versions {MIN_VERSION} to {VERSION})"
    )]
    /// The format version is not the one this build reads.
    Version {
        /// The file's version.
        found: u32,
    },
    /// A header field is invalid (which one is said).
    #[error("state file header is invalid: {0}")]
    BadHeader(&'static str),
    /// The file is shorter than its header says.
    #[error("state file is truncated ({len} bytes, {expected} expected)")]
    Truncated {
        /// The file's length.
        len: u64,
        /// The length its header implies.
        expected: u64,
    },
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("state file payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte cap")]
    TooLarge(u64),
    /// The payload's checksum does not match.
    #[error("state file is corrupt (checksum mismatch)")]
    Checksum,
    /// Bytes follow the payload.
    #[error("state file has trailing data")]
    Trailing,
    /// The payload does not decode (the decoder's message).
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
    if !(MIN_VERSION..=VERSION).contains(&version) {
        return Err(StateFormatError::Version { found: version });
    }
    if u32_at(12) != 0 {
        return Err(StateFormatError::BadHeader("unknown flags"));
    }
    if u32_at(28) != 0 {
        return Err(StateFormatError::BadHeader("reserved bytes are not zero"));
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
        let mut other = good.clone();
        other[8..12].copy_from_slice(&(VERSION + 1).to_le_bytes());
        assert_eq!(
            decode::<Sample>(&other).unwrap_err(),
            StateFormatError::Version { found: VERSION + 1 }
        );
        other[8..12].copy_from_slice(&(MIN_VERSION - 1).to_le_bytes());
        assert_eq!(
            decode::<Sample>(&other).unwrap_err(),
            StateFormatError::Version {
                found: MIN_VERSION - 1
            }
        );
        // The older version this build still reads.
        other[8..12].copy_from_slice(&MIN_VERSION.to_le_bytes());
        assert_eq!(decode::<Sample>(&other).unwrap(), sample());
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
        // The flags and reserved bytes are not covered by the checksum.
        for at in [12, 15, 28, 31] {
            let mut header = good.clone();
            header[at] = 1;
            assert!(matches!(
                decode::<Sample>(&header),
                Err(StateFormatError::BadHeader(_))
            ));
        }
        // A valid file whose payload is not the expected structure.
        let other = encode(&vec![1, 2, 3]).unwrap();
        assert!(matches!(
            decode::<Sample>(&other),
            Err(StateFormatError::Payload(_))
        ));
    }
}

#[cfg(test)]
mod proptests {
    //! Property tests of the state-file decoder, which reads untrusted bytes: arbitrary
    //! bytes and damaged copies of real files are refused, never a panic; a file is
    //! only accepted when its header, length and checksum hold. Values round-trip.

    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestRunner};

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Sample {
        name: String,
        values: Vec<u64>,
        pairs: Vec<(i64, Option<String>)>,
        flag: bool,
    }

    fn sample() -> impl Strategy<Value = Sample> {
        (
            ".{0,24}",
            prop::collection::vec(any::<u64>(), 0..32),
            prop::collection::vec((any::<i64>(), prop::option::of(".{0,8}")), 0..8),
            any::<bool>(),
        )
            .prop_map(|(name, values, pairs, flag)| Sample {
                name,
                values,
                pairs,
                flag,
            })
    }

    /// Numbers on the decoder's boundaries, and any number.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(vec![
                0,
                1,
                HEADER_LEN as u64,
                MAX_PAYLOAD - 1,
                MAX_PAYLOAD,
                MAX_PAYLOAD + 1,
                1 << 32,
                1 << 60,
                u64::MAX - HEADER_LEN as u64,
                u64::MAX,
            ]),
            0..4096u64,
            any::<u64>(),
        ]
    }

    /// One change to a file.
    #[derive(Debug, Clone)]
    enum Edit {
        /// XOR a byte with a non-zero mask.
        Flip(Index, u8),
        /// Cut the file.
        Truncate(Index),
        /// Append bytes.
        Extend(Vec<u8>),
        /// Overwrite the payload length.
        Length(u64),
        /// Overwrite one of the 4-byte header fields (version, flags, CRC, reserved).
        Field(Index, u32),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
            any::<Index>().prop_map(Edit::Truncate),
            prop::collection::vec(any::<u8>(), 1..16).prop_map(Edit::Extend),
            number().prop_map(Edit::Length),
            (any::<Index>(), any::<u32>()).prop_map(|(i, v)| Edit::Field(i, v)),
        ]
    }

    fn apply(file: &mut Vec<u8>, edit: &Edit) {
        match edit {
            Edit::Flip(i, mask) if !file.is_empty() => {
                let at = i.index(file.len());
                file[at] ^= mask;
            }
            Edit::Truncate(i) => file.truncate(i.index(file.len() + 1)),
            Edit::Extend(b) => file.extend_from_slice(b),
            Edit::Length(v) if file.len() >= 24 => file[16..24].copy_from_slice(&v.to_le_bytes()),
            Edit::Field(i, v) => {
                let at = [8, 12, 24, 28][i.index(4)];
                if file.len() >= at + 4 {
                    file[at..at + 4].copy_from_slice(&v.to_le_bytes());
                }
            }
            _ => {}
        }
    }

    /// Rewrites the payload length and checksum after an edit, so that the checks
    /// after them (and the JSON parser) are reached.
    fn reseal(file: &mut [u8]) {
        if file.len() >= HEADER_LEN {
            let payload_len = (file.len() - HEADER_LEN) as u64;
            file[16..24].copy_from_slice(&payload_len.to_le_bytes());
            let crc = crc32fast::hash(&file[HEADER_LEN..]);
            file[24..28].copy_from_slice(&crc.to_le_bytes());
        }
    }

    #[test]
    fn values_round_trip() {
        TestRunner::new(config(1024))
            .run(&sample(), |value| {
                let file = encode(&value).unwrap();
                prop_assert_eq!(
                    file.len(),
                    HEADER_LEN + serde_json::to_vec(&value).unwrap().len()
                );
                prop_assert_eq!(decode::<Sample>(&file).unwrap(), value);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn damaged_files_are_refused() {
        let cases = (sample(), prop::collection::vec(edit(), 1..4), any::<bool>());
        TestRunner::new(config(4096))
            .run(&cases, |(value, edits, resealed)| {
                let file = encode(&value).unwrap();
                let mut damaged = file.clone();
                for e in &edits {
                    apply(&mut damaged, e);
                }
                if resealed {
                    reseal(&mut damaged);
                }
                match decode::<Sample>(&damaged) {
                    // Only the payload may have changed, into another valid value,
                    // and only with a new checksum.
                    Ok(decoded) => {
                        prop_assert!(damaged == file || resealed, "accepted {:?}", decoded);
                        prop_assert_eq!(&damaged[..16], &file[..16]);
                        prop_assert_eq!(&damaged[28..32], &file[28..32]);
                        prop_assert_eq!(
                            decode::<Sample>(&encode(&decoded).unwrap()).unwrap(),
                            decoded
                        );
                    }
                    Err(e) => prop_assert!(damaged != file, "valid file refused: {}", e),
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn arbitrary_bytes_are_refused() {
        // Bytes after a valid start (magic, version, flags), or from scratch; resealed
        // or not, so that the JSON parser sees arbitrary payloads too.
        let start = [&MAGIC[..], &VERSION.to_le_bytes(), &[0; 4]].concat();
        let cases = (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(any::<u8>(), 0..256),
        );
        TestRunner::new(config(4096))
            .run(&cases, |(with_start, resealed, mut b)| {
                if with_start {
                    let n = start.len().min(b.len());
                    b[..n].copy_from_slice(&start[..n]);
                }
                if resealed {
                    reseal(&mut b);
                }
                let _ = decode::<Sample>(&b);
                let _ = decode::<serde_json::Value>(&b);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn payload_length_past_the_cap_is_refused_from_the_header() {
        let cases = (sample(), MAX_PAYLOAD + 1.., any::<bool>());
        TestRunner::new(config(1024))
            .run(&cases, |(value, claimed, resealed)| {
                let mut file = encode(&value).unwrap();
                if resealed {
                    reseal(&mut file);
                }
                file[16..24].copy_from_slice(&claimed.to_le_bytes());
                prop_assert_eq!(
                    decode::<Sample>(&file),
                    Err(StateFormatError::TooLarge(claimed))
                );
                Ok(())
            })
            .unwrap();
    }
}
