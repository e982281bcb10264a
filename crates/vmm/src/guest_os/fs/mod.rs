//! The guest's file system: the function's image (a read-only directory tree on the
//! host) seen as `/`, an in-memory writable layer above it, synthetic `/dev`, `/proc`
//! and `/sys` entries, and the descriptor table.
//!
//! Every guest path is resolved here, one component at a time, with chroot semantics:
//! `..` at the root stays at the root, and a symbolic link's target (absolute or not) is
//! resolved inside the root. The host is asked only for canonical paths without links,
//! through `openat2(RESOLVE_IN_ROOT)` ([`image`]), so nothing outside the image is
//! reachable.

pub mod fd;
pub mod hexbytes;
pub mod image;
pub mod layer;
pub mod synthetic;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::fd::{DirEnt, FdTable};
use self::image::{HostStat, Image, ImageError};
use self::layer::{Entry, Layer};
use self::synthetic::{Synth, SynthContext};

/// Most symbolic links one resolution follows (Linux's MAXSYMLINKS).
const MAX_LINKS: u32 = 40;
/// Descriptors a guest with a file system may open.
pub const NOFILE: i32 = 1024;
/// The device number the guest sees for the image and the layer.
pub const DEV: u64 = 0x2a;

/// An errno.
pub type Errno = i32;

/// Where an entry comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The image.
    Image,
    /// The writable layer (a file's inode, 0 for a directory or link).
    Layer(u64),
    /// A synthetic entry.
    Synth(Synth),
}

/// An entry's attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// `st_mode`: type and permissions.
    pub mode: u32,
    /// Size in bytes.
    pub size: u64,
    /// Inode number.
    pub ino: u64,
    /// Link count.
    pub nlink: u64,
    /// Device of a device file.
    pub rdev: u64,
    /// Last modification.
    pub mtime: (i64, i64),
    /// Last access.
    pub atime: (i64, i64),
    /// Last status change.
    pub ctime: (i64, i64),
    /// Where it comes from.
    pub source: Source,
}

impl Meta {
    /// The file type bits.
    pub fn kind(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    /// A directory.
    pub fn is_dir(&self) -> bool {
        self.kind() == libc::S_IFDIR
    }

    /// A symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.kind() == libc::S_IFLNK
    }

    /// The `DT_*` type of a directory entry.
    pub fn dt(&self) -> u8 {
        match self.kind() {
            libc::S_IFDIR => libc::DT_DIR,
            libc::S_IFLNK => libc::DT_LNK,
            libc::S_IFCHR => libc::DT_CHR,
            libc::S_IFIFO => libc::DT_FIFO,
            _ => libc::DT_REG,
        }
    }

    fn synthetic(mode: u32, ino: u64, rdev: u64, s: Synth) -> Self {
        let t = layer::now();
        Self {
            mode,
            size: 0,
            ino,
            nlink: 1,
            rdev,
            mtime: t,
            atime: t,
            ctime: t,
            source: Source::Synth(s),
        }
    }

    fn of_host(st: &HostStat) -> Self {
        let st = &st.0;
        Self {
            mode: st.st_mode,
            size: u64::try_from(st.st_size).unwrap_or(0),
            ino: st.st_ino,
            nlink: st.st_nlink,
            rdev: 0,
            mtime: (st.st_mtime, st.st_mtime_nsec),
            atime: (st.st_atime, st.st_atime_nsec),
            ctime: (st.st_ctime, st.st_ctime_nsec),
            source: Source::Image,
        }
    }
}

/// A path resolved to its canonical form; `meta` is `None` when the last component
/// does not exist (its parent does, and is a directory).
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The canonical guest path (absolute, no `.`, `..` or links before the last
    /// component).
    pub path: Vec<u8>,
    /// The entry, if it exists.
    pub meta: Option<Meta>,
}

/// What an image file was when the guest first opened it: a snapshot depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Size in bytes.
    pub size: u64,
    /// Modification time, seconds and nanoseconds.
    pub mtime: (i64, i64),
}

/// Why a saved file system cannot be brought back.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// The image cannot be opened.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A file the guest needs is not in the image.
    #[error("{what} {path} is not in the image {}: {}", root.display(), std::io::Error::from_raw_os_error(*errno))]
    Missing {
        /// What it is ("the program", "the dynamic loader", ...).
        what: &'static str,
        /// The path in the image.
        path: String,
        /// The image root.
        root: PathBuf,
        /// Why (an errno).
        errno: i32,
    },
    /// An image file the snapshot depends on changed or is gone.
    #[error(
        "the image {root} changed since the snapshot was taken: {path} {what}; take the snapshot again"
    )]
    Changed {
        /// The image root.
        root: PathBuf,
        /// The guest path.
        path: String,
        /// What changed.
        what: String,
    },
}

/// A program in a root file system, as `reap run --rootfs DIR --workdir W -- PROGRAM`
/// names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    /// The image: a directory on the host.
    pub dir: PathBuf,
    /// The program's path in the image (relative paths start at `workdir`).
    pub program: String,
    /// The working directory in the image.
    pub workdir: String,
}

/// What a snapshot keeps of the file system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VfsState {
    /// The image's host path (`None`: no file system).
    pub root: Option<PathBuf>,
    /// The writable layer.
    pub layer: Layer,
    /// The descriptors and open files.
    pub fds: FdTable,
    /// The working directory.
    #[serde(with = "hexbytes")]
    pub cwd: Vec<u8>,
    /// The file mode creation mask.
    pub umask: u32,
    /// The executable's guest path.
    #[serde(with = "hexbytes")]
    pub exe: Vec<u8>,
    /// The image files the guest opened or mapped, as they were.
    #[serde(with = "hexbytes::map")]
    pub fingerprints: BTreeMap<Vec<u8>, Fingerprint>,
}

/// The guest's file system and descriptors.
#[derive(Debug)]
pub struct Vfs {
    image: Option<Image>,
    /// The writable layer.
    pub layer: Layer,
    /// The descriptors and open files.
    pub fds: FdTable,
    /// The working directory (canonical).
    pub cwd: Vec<u8>,
    /// The file mode creation mask.
    pub umask: u32,
    /// The executable's guest path.
    pub exe: Vec<u8>,
    /// Host descriptors of open image files, by open-file id (opened again on demand
    /// after a restore).
    host: BTreeMap<u64, File>,
    /// The image files opened or mapped.
    pub fingerprints: BTreeMap<Vec<u8>, Fingerprint>,
}

impl Vfs {
    /// No file system: only the standard streams; every path is ENOENT.
    pub fn none() -> Self {
        Self {
            image: None,
            layer: Layer::default(),
            fds: FdTable::new(3),
            cwd: b"/".to_vec(),
            umask: 0o022,
            exe: Vec::new(),
            host: BTreeMap::new(),
            fingerprints: BTreeMap::new(),
        }
    }

    /// The file system of `image`, with the working directory `cwd` (canonical).
    pub fn new(image: Image, exe: Vec<u8>, cwd: Vec<u8>) -> Self {
        Self {
            image: Some(image),
            fds: FdTable::new(NOFILE),
            cwd,
            exe,
            ..Self::none()
        }
    }

    /// Opens the image of `root`, sets the working directory and reads the program;
    /// returns the file system, the program's bytes and its canonical path.
    pub fn boot(root: &RootFs) -> Result<(Self, Vec<u8>, String), FsError> {
        let image = Image::open(&root.dir)?;
        let mut vfs = Self::new(image, Vec::new(), b"/".to_vec());
        let missing = |what, path: &str, errno| FsError::Missing {
            what,
            path: path.to_string(),
            root: root.dir.clone(),
            errno,
        };
        let wd = vfs
            .resolve(b"/", root.workdir.as_bytes(), true)
            .map_err(|e| missing("the working directory", &root.workdir, e))?;
        match &wd.meta {
            Some(m) if m.is_dir() => vfs.cwd = wd.path,
            Some(_) => {
                return Err(missing(
                    "the working directory",
                    &root.workdir,
                    libc::ENOTDIR,
                ));
            }
            None => {
                return Err(missing(
                    "the working directory",
                    &root.workdir,
                    libc::ENOENT,
                ));
            }
        }
        let (program, path) = vfs.read_whole(root.program.as_bytes(), "the program")?;
        vfs.exe = path.clone().into_bytes();
        Ok((vfs, program, path))
    }

    /// Reads the whole regular file `path` (relative to the working directory) for the
    /// VMM (a program, a dynamic loader); returns it and its canonical path.
    pub fn read_whole(
        &mut self,
        path: &[u8],
        what: &'static str,
    ) -> Result<(Vec<u8>, String), FsError> {
        let shown = String::from_utf8_lossy(path).into_owned();
        let root = self.root().map(Path::to_path_buf).unwrap_or_default();
        let missing = |errno| FsError::Missing {
            what,
            path: shown.clone(),
            root: root.clone(),
            errno,
        };
        let cwd = self.cwd.clone();
        let r = self.resolve(&cwd, path, true).map_err(missing)?;
        let meta = r.meta.ok_or_else(|| missing(libc::ENOENT))?;
        if meta.kind() != libc::S_IFREG {
            return Err(missing(libc::EACCES));
        }
        let data = match meta.source {
            Source::Layer(ino) => self
                .layer
                .inodes
                .get(&ino)
                .map(|i| i.data.clone())
                .ok_or_else(|| missing(libc::EIO))?,
            Source::Image => {
                // The snapshot depends on it as on any file the guest opened.
                const VMM_READ: u64 = u64::MAX;
                self.open_image_file(VMM_READ, &r.path).map_err(missing)?;
                let len = usize::try_from(meta.size).map_err(|_| missing(libc::EFBIG))?;
                let mut data = vec![0u8; len];
                let n = self
                    .read_image(VMM_READ, &r.path, 0, &mut data)
                    .map_err(missing)?;
                self.drop_host(VMM_READ);
                data.truncate(n);
                data
            }
            Source::Synth(_) => return Err(missing(libc::EACCES)),
        };
        Ok((data, String::from_utf8_lossy(&r.path).into_owned()))
    }

    /// Whether there is a file system at all.
    pub fn has_root(&self) -> bool {
        self.image.is_some()
    }

    /// What a snapshot keeps.
    pub fn save(&self) -> VfsState {
        VfsState {
            root: self.image.as_ref().map(|i| i.path().to_path_buf()),
            layer: self.layer.clone(),
            fds: self.fds.clone(),
            cwd: self.cwd.clone(),
            umask: self.umask,
            exe: self.exe.clone(),
            fingerprints: self.fingerprints.clone(),
        }
    }

    /// The file system of a snapshot: its image is opened again and every image file
    /// the guest had opened or mapped must be as it was.
    pub fn restore(state: VfsState) -> Result<Self, FsError> {
        let image = state.root.as_deref().map(Image::open).transpose()?;
        if let Some(image) = &image {
            for (path, fp) in &state.fingerprints {
                let shown = String::from_utf8_lossy(path).into_owned();
                let changed = |what: String| FsError::Changed {
                    root: image.path().to_path_buf(),
                    path: shown.clone(),
                    what,
                };
                let now = match image.lstat(path) {
                    Ok(Some(st)) => Meta::of_host(&st),
                    Ok(None) | Err(_) => return Err(changed("is gone".into())),
                };
                if now.size != fp.size {
                    return Err(changed(format!(
                        "was {} bytes, is {} bytes",
                        fp.size, now.size
                    )));
                }
                if now.mtime != fp.mtime {
                    return Err(changed("was modified".into()));
                }
            }
        }
        Ok(Self {
            image,
            layer: state.layer,
            fds: state.fds,
            cwd: state.cwd,
            umask: state.umask,
            exe: state.exe,
            host: BTreeMap::new(),
            fingerprints: state.fingerprints,
        })
    }

    fn synth_context<R>(&self, f: impl FnOnce(&SynthContext<'_>) -> R) -> R {
        let fds = |n: i32| -> Option<Vec<u8>> {
            let file = self.fds.get(n).ok()?;
            Some(match &file.kind {
                fd::FileKind::Stdin | fd::FileKind::Pipe { .. } => {
                    format!("pipe:[{}]", n).into_bytes()
                }
                fd::FileKind::Stdout | fd::FileKind::Stderr => format!("pipe:[{}]", n).into_bytes(),
                _ => file.path.clone(),
            })
        };
        let list = || self.fds.fds.keys().copied().collect::<Vec<i32>>();
        f(&SynthContext {
            exe: &self.exe,
            cwd: &self.cwd,
            fds: &fds,
            fd_list: &list,
        })
    }

    /// The entry at the canonical path `path`, or `None`.
    pub fn lookup(&self, path: &[u8]) -> Result<Option<Meta>, Errno> {
        let Some(image) = &self.image else {
            return Ok(None);
        };
        if let Some(s) = self.synth_context(|cx| synthetic::lookup(path, cx)) {
            let ino = 0x1000 + hash(path);
            let meta = match &s {
                Synth::Dir => Meta::synthetic(libc::S_IFDIR | 0o555, ino, 0, s),
                Synth::Null => Meta::synthetic(libc::S_IFCHR | 0o666, ino, 0x103, s),
                Synth::Zero => Meta::synthetic(libc::S_IFCHR | 0o666, ino, 0x105, s),
                Synth::Random => Meta::synthetic(libc::S_IFCHR | 0o666, ino, 0x109, s),
                Synth::Symlink(_) => Meta::synthetic(libc::S_IFLNK | 0o777, ino, 0, s),
                Synth::File(_) => Meta::synthetic(libc::S_IFREG | 0o444, ino, 0, s),
            };
            return Ok(Some(meta));
        }
        match self.layer.lookup(path) {
            Some(Entry::Whiteout) => return Ok(None),
            Some(Entry::File(ino)) => {
                let inode = self.layer.inodes.get(ino).ok_or(libc::EIO)?;
                return Ok(Some(Meta {
                    mode: libc::S_IFREG | inode.mode,
                    size: inode.data.len() as u64,
                    ino: *ino,
                    nlink: 1,
                    rdev: 0,
                    mtime: inode.mtime,
                    atime: inode.mtime,
                    ctime: inode.mtime,
                    source: Source::Layer(*ino),
                }));
            }
            Some(Entry::Dir { mode, .. }) => {
                let t = layer::now();
                return Ok(Some(Meta {
                    mode: libc::S_IFDIR | mode,
                    size: 4096,
                    ino: layer::FIRST_INO - 1 - hash(path),
                    nlink: 2,
                    rdev: 0,
                    mtime: t,
                    atime: t,
                    ctime: t,
                    source: Source::Layer(0),
                }));
            }
            Some(Entry::Symlink(target)) => {
                let t = layer::now();
                return Ok(Some(Meta {
                    mode: libc::S_IFLNK | 0o777,
                    size: target.len() as u64,
                    ino: layer::FIRST_INO - 1 - hash(path),
                    nlink: 1,
                    rdev: 0,
                    mtime: t,
                    atime: t,
                    ctime: t,
                    source: Source::Layer(0),
                }));
            }
            None => {}
        }
        if synthetic::owns(path) && path != b"/dev/shm" {
            return Ok(None);
        }
        Ok(image.lstat(path)?.map(|st| Meta::of_host(&st)))
    }

    /// The target of the symbolic link `path` whose entry is `meta`.
    pub fn readlink(&self, path: &[u8], meta: &Meta) -> Result<Vec<u8>, Errno> {
        if !meta.is_symlink() {
            return Err(libc::EINVAL);
        }
        match &meta.source {
            Source::Synth(Synth::Symlink(t)) => Ok(t.clone()),
            Source::Layer(_) => match self.layer.entries.get(path) {
                Some(Entry::Symlink(t)) => Ok(t.clone()),
                _ => Err(libc::EINVAL),
            },
            Source::Image => self.image.as_ref().ok_or(libc::ENOENT)?.readlink(path),
            Source::Synth(_) => Err(libc::EINVAL),
        }
    }

    /// Resolves `path` relative to the canonical directory `base` (ignored for an
    /// absolute path). The last component's link is followed if `follow`; a trailing
    /// `/` requires a directory.
    pub fn resolve(&self, base: &[u8], path: &[u8], follow: bool) -> Result<Resolved, Errno> {
        if path.is_empty() {
            return Err(libc::ENOENT);
        }
        let mut stack: Vec<Vec<u8>> = if path.starts_with(b"/") {
            Vec::new()
        } else {
            components(base)
        };
        let trailing_slash = path.ends_with(b"/");
        let mut pending: std::collections::VecDeque<Vec<u8>> = components(path).into();
        let mut links = 0;
        let follow = follow || trailing_slash;
        while let Some(c) = pending.pop_front() {
            if c == b".." {
                stack.pop();
                continue;
            }
            let last = pending.is_empty();
            stack.push(c);
            let cand = join(&stack);
            let Some(meta) = self.lookup(&cand)? else {
                if last {
                    return Ok(Resolved {
                        path: cand,
                        meta: None,
                    });
                }
                return Err(libc::ENOENT);
            };
            if meta.is_symlink() && (!last || follow) {
                links += 1;
                if links > MAX_LINKS {
                    return Err(libc::ELOOP);
                }
                let target = self.readlink(&cand, &meta)?;
                if target.is_empty() {
                    return Err(libc::ENOENT);
                }
                stack.pop();
                if target.starts_with(b"/") {
                    stack.clear();
                }
                for t in components(&target).into_iter().rev() {
                    pending.push_front(t);
                }
                continue;
            }
            if !last && !meta.is_dir() {
                return Err(libc::ENOTDIR);
            }
            if last {
                if trailing_slash && !meta.is_dir() {
                    return Err(libc::ENOTDIR);
                }
                return Ok(Resolved {
                    path: cand,
                    meta: Some(meta),
                });
            }
        }
        // All components were `.` or `..` (or links to directories already walked).
        let p = join(&stack);
        let meta = self.lookup(&p)?;
        if meta.is_none() {
            return Err(libc::ENOENT);
        }
        Ok(Resolved { path: p, meta })
    }

    /// The entries of the directory `path` (canonical), merged from the image, the
    /// layer and the synthetic entries, with `.` and `..` first.
    pub fn list(&self, path: &[u8]) -> Result<Vec<DirEnt>, Errno> {
        let meta = self.lookup(path)?.ok_or(libc::ENOENT)?;
        if !meta.is_dir() {
            return Err(libc::ENOTDIR);
        }
        let mut merged: BTreeMap<Vec<u8>, (u64, u8)> = BTreeMap::new();
        let synth = matches!(meta.source, Source::Synth(_));
        if synth {
            for (name, kind) in self.synth_context(|cx| synthetic::children(path, cx)) {
                let child = child_path(path, &name);
                merged.insert(name, (0x1000 + hash(&child), kind));
            }
        } else {
            let opaque = matches!(
                self.layer.entries.get(path),
                Some(Entry::Dir { opaque: true, .. })
            ) || self.layer.lookup(path).is_some()
                && !matches!(self.layer.entries.get(path), Some(Entry::Dir { .. }));
            let in_image = !opaque
                && self
                    .image
                    .as_ref()
                    .is_some_and(|i| matches!(i.lstat(path), Ok(Some(_))));
            if in_image && let Some(image) = &self.image {
                for (name, ino, kind) in image.read_dir(path)? {
                    merged.insert(name, (ino, kind));
                }
            }
        }
        for (name, entry) in self.layer.children(path) {
            if let Entry::Whiteout = entry {
                merged.remove(name);
                continue;
            }
            let child = child_path(path, name);
            if let Some(m) = self.lookup(&child)? {
                merged.insert(name.to_vec(), (m.ino, m.dt()));
            }
        }
        let mut out = vec![
            DirEnt {
                name: b".".to_vec(),
                ino: meta.ino,
                kind: libc::DT_DIR,
            },
            DirEnt {
                name: b"..".to_vec(),
                ino: 2,
                kind: libc::DT_DIR,
            },
        ];
        out.extend(
            merged
                .into_iter()
                .map(|(name, (ino, kind))| DirEnt { name, ino, kind }),
        );
        Ok(out)
    }

    /// Whether the image has an entry at `path` (so removing it needs a whiteout).
    fn in_image(&self, path: &[u8]) -> bool {
        self.image
            .as_ref()
            .is_some_and(|i| matches!(i.lstat(path), Ok(Some(_))))
    }

    /// Checks that the parent of `path` is a directory the guest may change.
    fn check_parent(&self, path: &[u8]) -> Result<(), Errno> {
        let parent = parent_of(path);
        let meta = self.lookup(parent)?.ok_or(libc::ENOENT)?;
        if !meta.is_dir() {
            return Err(libc::ENOTDIR);
        }
        if matches!(meta.source, Source::Synth(_)) && parent != b"/dev/shm" {
            return Err(libc::EACCES);
        }
        Ok(())
    }

    /// Creates an empty regular file at the canonical `path` (which does not exist);
    /// returns its inode.
    pub fn create(&mut self, path: &[u8], mode: u32) -> Result<u64, Errno> {
        self.check_parent(path)?;
        let ino = self
            .layer
            .new_inode(Vec::new(), mode & 0o7777 & !self.umask);
        self.layer.entries.insert(path.to_vec(), Entry::File(ino));
        Ok(ino)
    }

    /// The layer inode of the regular file at `path` (`meta` its entry), copied up
    /// from the image if it is there.
    pub fn copy_up(&mut self, path: &[u8], meta: &Meta) -> Result<u64, Errno> {
        match meta.source {
            Source::Layer(ino) if ino != 0 => Ok(ino),
            Source::Image if meta.kind() == libc::S_IFREG => {
                let file = self.image.as_ref().ok_or(libc::ENOENT)?.open_file(path)?;
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut &file, &mut data).map_err(|_| libc::EIO)?;
                let ino = self.layer.new_inode(data, meta.mode & 0o7777);
                self.layer.entries.insert(path.to_vec(), Entry::File(ino));
                Ok(ino)
            }
            _ => Err(libc::EACCES),
        }
    }

    /// Creates the directory `path` (which does not exist).
    pub fn mkdir(&mut self, path: &[u8], mode: u32) -> Result<(), Errno> {
        self.check_parent(path)?;
        let opaque = self.in_image(path);
        self.layer.entries.insert(
            path.to_vec(),
            Entry::Dir {
                mode: mode & 0o7777 & !self.umask,
                opaque,
            },
        );
        Ok(())
    }

    /// Creates the symbolic link `path` to `target`.
    pub fn symlink(&mut self, target: &[u8], path: &[u8]) -> Result<(), Errno> {
        self.check_parent(path)?;
        self.layer
            .entries
            .insert(path.to_vec(), Entry::Symlink(target.to_vec()));
        Ok(())
    }

    /// Removes the entry `path` (`meta`): a file or link, or an empty directory if
    /// `dir`.
    pub fn remove(&mut self, path: &[u8], meta: &Meta, dir: bool) -> Result<(), Errno> {
        self.check_parent(path)?;
        if matches!(meta.source, Source::Synth(_)) {
            return Err(libc::EACCES);
        }
        if dir {
            if !meta.is_dir() {
                return Err(libc::ENOTDIR);
            }
            if path == b"/" {
                return Err(libc::EBUSY);
            }
            if self.list(path)?.len() > 2 {
                return Err(libc::ENOTEMPTY);
            }
            let prefix = [path, b"/"].concat();
            self.layer.entries.retain(|k, _| !k.starts_with(&prefix));
        } else if meta.is_dir() {
            return Err(libc::EISDIR);
        }
        if self.in_image(path) {
            self.layer.entries.insert(path.to_vec(), Entry::Whiteout);
        } else {
            self.layer.entries.remove(path);
        }
        let open = self.fds.open_inodes();
        self.layer.collect(&open);
        Ok(())
    }

    /// Renames `from` (`meta`) to `to` (`to_meta` if it exists). A directory of the
    /// image cannot move (EXDEV, as overlayfs answers: programs copy instead).
    pub fn rename(
        &mut self,
        from: &[u8],
        meta: &Meta,
        to: &[u8],
        to_meta: Option<&Meta>,
    ) -> Result<(), Errno> {
        self.check_parent(from)?;
        self.check_parent(to)?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(from) && to.get(from.len()) == Some(&b'/') {
            return Err(libc::EINVAL);
        }
        if matches!(meta.source, Source::Synth(_)) {
            return Err(libc::EACCES);
        }
        if let Some(t) = to_meta {
            if matches!(t.source, Source::Synth(_)) {
                return Err(libc::EACCES);
            }
            match (meta.is_dir(), t.is_dir()) {
                (false, true) => return Err(libc::EISDIR),
                (true, false) => return Err(libc::ENOTDIR),
                (true, true) if self.list(to)?.len() > 2 => return Err(libc::ENOTEMPTY),
                _ => {}
            }
        }
        let entry = match (&meta.source, meta.kind()) {
            (Source::Image, libc::S_IFDIR) => return Err(libc::EXDEV),
            (Source::Image, libc::S_IFLNK) => Entry::Symlink(self.readlink(from, meta)?),
            (Source::Image, libc::S_IFREG) => Entry::File(self.copy_up(from, meta)?),
            (Source::Image, _) => return Err(libc::EXDEV),
            _ => self.layer.entries.get(from).cloned().ok_or(libc::ENOENT)?,
        };
        let entry = match entry {
            Entry::Dir { mode, .. } => Entry::Dir { mode, opaque: true },
            e => e,
        };
        let prefix = [to, b"/"].concat();
        self.layer.entries.retain(|k, _| !k.starts_with(&prefix));
        self.layer.move_tree(from, to);
        self.layer.entries.insert(to.to_vec(), entry);
        if self.in_image(from) {
            self.layer.entries.insert(from.to_vec(), Entry::Whiteout);
        } else {
            self.layer.entries.remove(from);
        }
        let open = self.fds.open_inodes();
        self.layer.collect(&open);
        Ok(())
    }

    /// Opens the image file `path` for reading and records its fingerprint.
    pub fn open_image_file(&mut self, id: u64, path: &[u8]) -> Result<(), Errno> {
        let image = self.image.as_ref().ok_or(libc::ENOENT)?;
        let file = image.open_file(path)?;
        let st = image::fstat(&file)?;
        let meta = Meta::of_host(&st);
        self.fingerprints
            .entry(path.to_vec())
            .or_insert(Fingerprint {
                size: meta.size,
                mtime: meta.mtime,
            });
        self.host.insert(id, file);
        Ok(())
    }

    /// Reads from the image file of open file `id` (at `path`) at `offset`.
    pub fn read_image(
        &mut self,
        id: u64,
        path: &[u8],
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Errno> {
        if !self.host.contains_key(&id) {
            self.open_image_file(id, path)?;
        }
        let file = self.host.get(&id).ok_or(libc::EBADF)?;
        let mut done = 0;
        while done < buf.len() {
            let at = offset.checked_add(done as u64).ok_or(libc::EINVAL)?;
            match file.read_at(&mut buf[done..], at) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
            }
        }
        Ok(done)
    }

    /// Forgets the host descriptor of open file `id` (closed).
    pub fn drop_host(&mut self, id: u64) {
        self.host.remove(&id);
    }

    /// The image's host path.
    pub fn root(&self) -> Option<&Path> {
        self.image.as_ref().map(Image::path)
    }
}

/// The path's components, without empty ones and `.`.
fn components(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&b| b == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(<[u8]>::to_vec)
        .collect()
}

/// The canonical path of `components`.
fn join(components: &[Vec<u8>]) -> Vec<u8> {
    if components.is_empty() {
        return b"/".to_vec();
    }
    let mut p = Vec::new();
    for c in components {
        p.push(b'/');
        p.extend_from_slice(c);
    }
    p
}

/// The canonical parent of a canonical path (`/` for `/`).
pub fn parent_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) | None => b"/",
        Some(i) => &path[..i],
    }
}

/// `dir/name`.
pub fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir == b"/" {
        [b"/", name].concat()
    } else {
        [dir, b"/", name].concat()
    }
}

/// A small stable hash of a path, for inode numbers of entries that have none.
fn hash(path: &[u8]) -> u64 {
    path.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) & 0xff_ffff_ffff
}

#[cfg(test)]
mod tests;
