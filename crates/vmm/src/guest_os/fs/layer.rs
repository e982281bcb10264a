//! The writable layer: everything the guest creates, writes, renames or removes, held
//! in memory above the read-only image. An entry here hides the image's entry of the
//! same path: a file (copied up from the image when opened for writing), a directory
//! (opaque when it replaced one the guest removed), a symbolic link, or a whiteout (the
//! path was removed). A whiteout or an opaque directory hides everything the image has
//! below it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hexbytes;

/// An entry of the layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    /// A regular file: its inode.
    File(u64),
    /// A directory. An opaque one shows nothing of the image below it.
    Dir {
        /// Permission bits.
        mode: u32,
        /// Hides the image's directory of the same path.
        opaque: bool,
    },
    /// A symbolic link.
    Symlink(#[serde(with = "hexbytes")] Vec<u8>),
    /// Removed: the image's entry (and all below it) is hidden.
    Whiteout,
}

/// A regular file's contents and attributes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inode {
    /// The contents.
    #[serde(with = "hexbytes")]
    pub data: Vec<u8>,
    /// Permission bits.
    pub mode: u32,
    /// Last modification, seconds and nanoseconds since the epoch.
    pub mtime: (i64, i64),
}

/// The writable layer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    /// Entries by canonical guest path.
    #[serde(with = "hexbytes::map")]
    pub entries: BTreeMap<Vec<u8>, Entry>,
    /// File contents by inode number.
    pub inodes: BTreeMap<u64, Inode>,
    /// The next inode number.
    pub next_ino: u64,
}

/// Inode numbers of the layer start here (image inode numbers are the host's).
pub const FIRST_INO: u64 = 1 << 40;

impl Layer {
    /// A new, empty inode with `data`; returns its number.
    pub fn new_inode(&mut self, data: Vec<u8>, mode: u32) -> u64 {
        let ino = FIRST_INO + self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(
            ino,
            Inode {
                data,
                mode,
                mtime: now(),
            },
        );
        ino
    }

    /// What the layer says about `path`: `Some(entry)` if it has one, `None` if the
    /// image decides. A path below a whiteout or an opaque directory reads as a
    /// whiteout when the layer has nothing for it.
    pub fn lookup(&self, path: &[u8]) -> Option<&Entry> {
        if let Some(e) = self.entries.get(path) {
            return Some(e);
        }
        let mut at = path;
        while let Some(i) = at.iter().rposition(|&b| b == b'/') {
            at = &path[..i];
            let key: &[u8] = if at.is_empty() { b"/" } else { at };
            match self.entries.get(key) {
                Some(Entry::Whiteout | Entry::Dir { opaque: true, .. }) => {
                    return Some(&Entry::Whiteout);
                }
                Some(Entry::File(_) | Entry::Symlink(_)) => return Some(&Entry::Whiteout),
                _ => {}
            }
            if at.is_empty() {
                break;
            }
        }
        None
    }

    /// The layer's entries directly inside the directory `dir`.
    pub fn children<'a>(&'a self, dir: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a Entry)> {
        let prefix: Vec<u8> = if dir == b"/" {
            b"/".to_vec()
        } else {
            [dir, b"/"].concat()
        };
        let start = prefix.clone();
        self.entries
            .range(start..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter_map(move |(k, e)| {
                let name = &k[if dir == b"/" { 1 } else { dir.len() + 1 }..];
                (!name.contains(&b'/')).then_some((name, e))
            })
    }

    /// Drops the inodes no entry and no open file (`open`) refers to.
    pub fn collect(&mut self, open: &[u64]) {
        let used: std::collections::BTreeSet<u64> = self
            .entries
            .values()
            .filter_map(|e| match e {
                Entry::File(ino) => Some(*ino),
                _ => None,
            })
            .chain(open.iter().copied())
            .collect();
        self.inodes.retain(|ino, _| used.contains(ino));
    }

    /// Moves every entry below `from` to below `to` (a directory rename).
    pub fn move_tree(&mut self, from: &[u8], to: &[u8]) {
        let prefix = [from, b"/"].concat();
        let moved: Vec<Vec<u8>> = self
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for k in moved {
            if let Some(e) = self.entries.remove(&k) {
                let new = [to, &k[from.len()..]].concat();
                self.entries.insert(new, e);
            }
        }
    }
}

/// The time now, as (seconds, nanoseconds) since the epoch.
pub fn now() -> (i64, i64) {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (
        i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        i64::from(d.subsec_nanos()),
    )
}
