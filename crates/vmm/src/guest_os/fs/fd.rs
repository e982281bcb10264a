//! The descriptor table: descriptors point at open files (shared by `dup`), open files
//! keep what they are, their path, offset and status flags.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::hexbytes;

/// What an open file reads from or writes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// The function's stdin (the request queue).
    Stdin,
    /// The function's stdout.
    Stdout,
    /// The function's stderr.
    Stderr,
    /// A regular file of the image, read-only.
    Image,
    /// A regular file of the writable layer: its inode.
    Layer(u64),
    /// A directory (listed on the first `getdents64`).
    Dir,
    /// `/dev/null`.
    Null,
    /// `/dev/zero`.
    Zero,
    /// `/dev/random`, `/dev/urandom`.
    Random,
    /// A synthetic file generated at open (`/proc/...`).
    Generated(#[serde(with = "hexbytes")] Vec<u8>),
    /// One end of a pipe.
    Pipe {
        /// The pipe.
        id: u64,
        /// The write end.
        write: bool,
    },
}

/// One entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEnt {
    /// The name.
    #[serde(with = "hexbytes")]
    pub name: Vec<u8>,
    /// The inode number.
    pub ino: u64,
    /// `DT_*`.
    pub kind: u8,
}

/// An open file description.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenFile {
    /// What it is.
    pub kind: FileKind,
    /// The canonical guest path it was opened by (empty for streams and pipes).
    #[serde(with = "hexbytes")]
    pub path: Vec<u8>,
    /// The file offset (for a directory: the index of the next entry).
    pub offset: u64,
    /// The access mode and status flags (`O_ACCMODE`, `O_APPEND`, `O_NONBLOCK`, ...).
    pub flags: i32,
    /// The listing of a directory, taken on the first `getdents64`.
    pub listing: Option<Vec<DirEnt>>,
}

impl OpenFile {
    /// A file of `kind` at `path` with `flags`, offset 0.
    pub fn new(kind: FileKind, path: Vec<u8>, flags: i32) -> Self {
        Self {
            kind,
            path,
            offset: 0,
            flags,
            listing: None,
        }
    }

    /// Opened for reading.
    pub fn readable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_WRONLY && self.flags & libc::O_PATH == 0
    }

    /// Opened for writing.
    pub fn writable(&self) -> bool {
        self.flags & libc::O_ACCMODE != libc::O_RDONLY && self.flags & libc::O_PATH == 0
    }
}

/// A descriptor: its open file and its close-on-exec flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fd {
    /// The open file's id.
    pub file: u64,
    /// `FD_CLOEXEC`.
    pub cloexec: bool,
}

/// A pipe's buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pipe {
    /// Bytes written and not yet read.
    pub data: VecDeque<u8>,
}

/// A pipe holds at most this much (Linux's default pipe size).
pub const PIPE_CAPACITY: usize = 64 << 10;

/// The descriptor table and the open files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdTable {
    /// Descriptors by number.
    pub fds: BTreeMap<i32, Fd>,
    /// Open files by id.
    pub files: BTreeMap<u64, OpenFile>,
    /// Pipes by id.
    pub pipes: BTreeMap<u64, Pipe>,
    /// The next open-file or pipe id.
    pub next_id: u64,
    /// Descriptors are below this (RLIMIT_NOFILE).
    pub limit: i32,
}

impl FdTable {
    /// A table with stdin, stdout and stderr as descriptors 0, 1 and 2, and room for
    /// descriptors below `limit`.
    pub fn new(limit: i32) -> Self {
        let mut t = Self {
            fds: BTreeMap::new(),
            files: BTreeMap::new(),
            pipes: BTreeMap::new(),
            next_id: 0,
            limit,
        };
        for (kind, flags) in [
            (FileKind::Stdin, libc::O_RDONLY),
            (FileKind::Stdout, libc::O_WRONLY),
            (FileKind::Stderr, libc::O_WRONLY),
        ] {
            let _ = t.install(OpenFile::new(kind, Vec::new(), flags), 0, false);
        }
        t
    }

    /// A new id for an open file or a pipe.
    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Adds `file` under the lowest free descriptor at or above `min`; EMFILE if none.
    pub fn install(&mut self, file: OpenFile, min: i32, cloexec: bool) -> Result<i32, i32> {
        let fd = self.lowest_free(min)?;
        let id = self.new_id();
        self.files.insert(id, file);
        self.fds.insert(fd, Fd { file: id, cloexec });
        Ok(fd)
    }

    /// The lowest free descriptor at or above `min`.
    pub fn lowest_free(&self, min: i32) -> Result<i32, i32> {
        let mut fd = min.max(0);
        for (&used, _) in self.fds.range(fd..) {
            if used != fd {
                break;
            }
            fd += 1;
        }
        if fd >= self.limit {
            return Err(libc::EMFILE);
        }
        Ok(fd)
    }

    /// The open file id of descriptor `fd`; EBADF if it is not open.
    pub fn id(&self, fd: i32) -> Result<u64, i32> {
        self.fds.get(&fd).map(|d| d.file).ok_or(libc::EBADF)
    }

    /// The open file of descriptor `fd`.
    pub fn get(&self, fd: i32) -> Result<&OpenFile, i32> {
        let id = self.id(fd)?;
        self.files.get(&id).ok_or(libc::EBADF)
    }

    /// The open file of descriptor `fd`, to change.
    pub fn get_mut(&mut self, fd: i32) -> Result<&mut OpenFile, i32> {
        let id = self.id(fd)?;
        self.files.get_mut(&id).ok_or(libc::EBADF)
    }

    /// Makes `new` a copy of `old` (closing what `new` was); `dup2`/`dup3`.
    pub fn dup_to(&mut self, old: i32, new: i32, cloexec: bool) -> Result<i32, i32> {
        let file = self.id(old)?;
        if new < 0 || new >= self.limit {
            return Err(libc::EBADF);
        }
        if old != new {
            self.close(new);
            self.fds.insert(new, Fd { file, cloexec });
        }
        Ok(new)
    }

    /// Makes the lowest free descriptor at or above `min` a copy of `old`.
    pub fn dup_from(&mut self, old: i32, min: i32, cloexec: bool) -> Result<i32, i32> {
        let file = self.id(old)?;
        let fd = self.lowest_free(min)?;
        self.fds.insert(fd, Fd { file, cloexec });
        Ok(fd)
    }

    /// Closes `fd`; returns the open file if this was its last descriptor.
    pub fn close(&mut self, fd: i32) -> Option<OpenFile> {
        let d = self.fds.remove(&fd)?;
        if self.fds.values().any(|o| o.file == d.file) {
            return None;
        }
        let file = self.files.remove(&d.file)?;
        if let FileKind::Pipe { id, .. } = file.kind
            && !self
                .files
                .values()
                .any(|f| matches!(f.kind, FileKind::Pipe { id: other, .. } if other == id))
        {
            self.pipes.remove(&id);
        }
        Some(file)
    }

    /// Whether the pipe `id` still has an open end of the kind `write`.
    pub fn pipe_has(&self, id: u64, write: bool) -> bool {
        self.files
            .values()
            .any(|f| f.kind == FileKind::Pipe { id, write })
    }

    /// The layer inodes open files refer to.
    pub fn open_inodes(&self) -> Vec<u64> {
        self.files
            .values()
            .filter_map(|f| match f.kind {
                FileKind::Layer(ino) => Some(ino),
                _ => None,
            })
            .collect()
    }
}
