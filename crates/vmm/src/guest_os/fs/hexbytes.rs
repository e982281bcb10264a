//! Byte strings (guest paths, file contents) in the snapshot state as hex strings:
//! paths need not be UTF-8, and a JSON array of numbers would take four times the room.

use serde::{Deserialize, Deserializer, Serializer};

/// Serializes bytes as a hex string.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// Deserializes a hex string.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
    hex::decode(s.as_bytes()).map_err(serde::de::Error::custom)
}

/// A map keyed by byte strings, as a list of (hex key, value) pairs.
pub mod map {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Serializes the map as pairs.
    pub fn serialize<S: Serializer, V: Serialize>(
        m: &BTreeMap<Vec<u8>, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter().map(|(k, v)| (hex::encode(k), v)))
    }

    /// Deserializes the pairs.
    pub fn deserialize<'de, D: Deserializer<'de>, V: Deserialize<'de>>(
        d: D,
    ) -> Result<BTreeMap<Vec<u8>, V>, D::Error> {
        let pairs = Vec::<(String, V)>::deserialize(d)?;
        pairs
            .into_iter()
            .map(|(k, v)| {
                hex::decode(k.as_bytes())
                    .map(|k| (k, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}
