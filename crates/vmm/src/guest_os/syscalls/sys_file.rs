//! Descriptors and paths: `open`/`openat`/`openat2`, `close`, `dup`s, `fcntl`, `ioctl`,
//! `lseek`, `getdents64`, `pipe2`, directories, links, renames, removal, `getcwd`.

use super::*;
use crate::guest_os::fs::synthetic::Synth;
use crate::guest_os::fs::{Meta, Resolved, Source};

/// `openat2`'s `struct open_how`.
#[derive(Clone, Copy, Default)]
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}
const _: () = assert!(size_of::<OpenHow>() == 24);
// SAFETY: plain integers, no padding (size asserted).
unsafe impl vm_memory::ByteValued for OpenHow {}

impl GuestOs {
    /// Reads a path argument; without a file system, every path is ENOENT.
    pub(super) fn guest_path(&self, mem: &GuestMemory, path: u64) -> Result<Vec<u8>, Errno> {
        let p = read_path(mem, path)?;
        if !self.vfs.has_root() {
            return Err(Errno(libc::ENOENT));
        }
        Ok(p)
    }

    /// The directory a relative path starts from: the working directory for
    /// `AT_FDCWD`, else the directory open as `dirfd`.
    pub(super) fn base_dir(&self, dirfd: i32, path: &[u8]) -> Result<Vec<u8>, Errno> {
        if path.starts_with(b"/") || dirfd == libc::AT_FDCWD {
            return Ok(self.vfs.cwd.clone());
        }
        let file = self.vfs.fds.get(dirfd).map_err(Errno)?;
        if file.kind != FileKind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        Ok(file.path.clone())
    }

    /// Resolves the path at `path` relative to `dirfd`.
    pub(super) fn resolve_at(
        &self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        follow: bool,
    ) -> Result<Resolved, Errno> {
        let p = self.guest_path(mem, path)?;
        let base = self.base_dir(dirfd, &p)?;
        self.vfs.resolve(&base, &p, follow).map_err(Errno)
    }

    /// Like [`resolve_at`](Self::resolve_at), and the entry must exist.
    pub(super) fn existing_at(
        &self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        follow: bool,
    ) -> Result<(Vec<u8>, Meta), Errno> {
        let r = self.resolve_at(mem, dirfd, path, follow)?;
        let meta = r.meta.ok_or(Errno(libc::ENOENT))?;
        Ok((r.path, meta))
    }

    pub(super) fn openat(
        &mut self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        flags: i32,
        mode: u32,
    ) -> SysResult {
        let p = self.guest_path(mem, path)?;
        const O_TMPFILE: i32 = 0o20_200_000;
        if flags & O_TMPFILE == O_TMPFILE {
            return Err(Errno(libc::EOPNOTSUPP));
        }
        let creat = flags & libc::O_CREAT != 0;
        let excl = creat && flags & libc::O_EXCL != 0;
        let nofollow = flags & libc::O_NOFOLLOW != 0;
        let opath = flags & libc::O_PATH != 0;
        let write = !opath && flags & libc::O_ACCMODE != libc::O_RDONLY;
        let base = self.base_dir(dirfd, &p)?;
        let r = self
            .vfs
            .resolve(&base, &p, !nofollow && !excl)
            .map_err(Errno)?;
        let meta = match r.meta {
            Some(_) if excl => return Err(Errno(libc::EEXIST)),
            Some(m) => m,
            None if !creat => return Err(Errno(libc::ENOENT)),
            None if p.ends_with(b"/") => return Err(Errno(libc::EISDIR)),
            None => {
                self.vfs.create(&r.path, mode).map_err(Errno)?;
                self.vfs
                    .lookup(&r.path)
                    .map_err(Errno)?
                    .ok_or(Errno(libc::EIO))?
            }
        };
        if meta.is_symlink() && !opath {
            return Err(Errno(libc::ELOOP));
        }
        if flags & libc::O_DIRECTORY != 0 && !meta.is_dir() {
            return Err(Errno(libc::ENOTDIR));
        }
        if meta.is_dir() && (write || creat && !opath) {
            return Err(Errno(libc::EISDIR));
        }
        let trunc = write && flags & libc::O_TRUNC != 0;
        let kind = if meta.is_dir() {
            FileKind::Dir
        } else if opath {
            FileKind::Generated(Vec::new())
        } else {
            match &meta.source {
                Source::Synth(Synth::Null) => FileKind::Null,
                Source::Synth(Synth::Zero) => FileKind::Zero,
                Source::Synth(Synth::Random) => FileKind::Random,
                Source::Synth(Synth::File(g)) if !write => FileKind::Generated(self.generate(*g)),
                Source::Synth(_) => return Err(Errno(libc::EACCES)),
                Source::Layer(_) | Source::Image if meta.kind() != libc::S_IFREG => {
                    return Err(Errno(libc::ENXIO));
                }
                Source::Image if !write => FileKind::Image,
                Source::Layer(_) | Source::Image => {
                    let ino = self.vfs.copy_up(&r.path, &meta).map_err(Errno)?;
                    if trunc && let Some(inode) = self.vfs.layer.inodes.get_mut(&ino) {
                        inode.data.clear();
                        inode.mtime = crate::guest_os::fs::layer::now();
                    }
                    FileKind::Layer(ino)
                }
            }
        };
        let keep = libc::O_ACCMODE
            | libc::O_APPEND
            | libc::O_NONBLOCK
            | libc::O_PATH
            | libc::O_DIRECTORY
            | libc::O_NOFOLLOW
            | libc::O_DIRECT
            | libc::O_NOATIME
            | libc::O_LARGEFILE;
        let image = kind == FileKind::Image;
        let file = OpenFile::new(kind, r.path.clone(), flags & keep | libc::O_LARGEFILE);
        let fd = self
            .vfs
            .fds
            .install(file, 0, flags & libc::O_CLOEXEC != 0)
            .map_err(Errno)?;
        if image {
            let id = self.vfs.fds.id(fd).map_err(Errno)?;
            if let Err(e) = self.vfs.open_image_file(id, &r.path) {
                self.vfs.fds.close(fd);
                return Err(Errno(e));
            }
        }
        Ok(u64::try_from(fd).unwrap_or(0))
    }

    /// `openat2(dirfd, path, how, size)`: the flags and mode of `how`; the resolve
    /// flags are what every path gets here anyway (inside the root), or refused.
    pub(super) fn openat2(
        &mut self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        how: u64,
        size: u64,
    ) -> SysResult {
        if !(24..=4096).contains(&size) {
            return Err(Errno(libc::EINVAL));
        }
        let how: OpenHow = mem.read_user_obj(how)?;
        let flags = i32::try_from(how.flags).map_err(|_| Errno(libc::EINVAL))?;
        let mode = u32::try_from(how.mode).map_err(|_| Errno(libc::EINVAL))?;
        if how.resolve & !0x1f != 0 {
            return Err(Errno(libc::EINVAL));
        }
        self.openat(mem, dirfd, path, flags, mode)
    }

    pub(super) fn close(&mut self, fd: i32) -> SysResult {
        let id = self.vfs.fds.id(fd).map_err(Errno)?;
        if self.vfs.fds.close(fd).is_some() {
            self.vfs.drop_host(id);
            let open = self.vfs.fds.open_inodes();
            self.vfs.layer.collect(&open);
        }
        Ok(0)
    }

    pub(super) fn dup(&mut self, fd: i32) -> SysResult {
        let n = self.vfs.fds.dup_from(fd, 0, false).map_err(Errno)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(super) fn dup3(&mut self, old: i32, new: i32, flags: i32, dup2: bool) -> SysResult {
        if !dup2 && (old == new || flags & !libc::O_CLOEXEC != 0) {
            return Err(Errno(libc::EINVAL));
        }
        if dup2 && old == new {
            self.vfs.fds.id(old).map_err(Errno)?;
            return Ok(u64::try_from(new).unwrap_or(0));
        }
        let n = self
            .vfs
            .fds
            .dup_to(old, new, flags & libc::O_CLOEXEC != 0)
            .map_err(Errno)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub(super) fn fcntl(&mut self, mem: &GuestMemory, fd: u32, cmd: i32, arg: u64) -> SysResult {
        let fd = i32::try_from(fd).map_err(|_| Errno(libc::EBADF))?;
        let id = self.vfs.fds.id(fd).map_err(Errno)?;
        match cmd {
            libc::F_GETFD => Ok(u64::from(self.vfs.fds.fds[&fd].cloexec)),
            libc::F_SETFD => {
                if let Some(d) = self.vfs.fds.fds.get_mut(&fd) {
                    d.cloexec = arg & 1 != 0;
                }
                Ok(0)
            }
            libc::F_GETFL => {
                let flags = self.vfs.fds.files[&id].flags;
                Ok(u64::from(flags.cast_unsigned()))
            }
            libc::F_SETFL => {
                let change = libc::O_APPEND | libc::O_NONBLOCK | libc::O_NOATIME | libc::O_DIRECT;
                if let Some(f) = self.vfs.fds.files.get_mut(&id) {
                    f.flags = f.flags & !change | int(arg) & change;
                }
                Ok(0)
            }
            libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
                let min = int(arg);
                if min < 0 {
                    return Err(Errno(libc::EINVAL));
                }
                let n = self
                    .vfs
                    .fds
                    .dup_from(fd, min, cmd == libc::F_DUPFD_CLOEXEC)
                    .map_err(Errno)?;
                Ok(u64::try_from(n).unwrap_or(0))
            }
            // Locks: one process, nothing to lock against.
            libc::F_GETLK | libc::F_OFD_GETLK => {
                // struct flock: l_type (short) first; F_UNLCK = 2.
                // F_UNLCK is 2: it fits.
                mem.write_user_obj(arg, i16::try_from(libc::F_UNLCK).unwrap_or(2))?;
                Ok(0)
            }
            libc::F_SETLK | libc::F_SETLKW | libc::F_OFD_SETLK | libc::F_OFD_SETLKW => Ok(0),
            libc::F_GETPIPE_SZ => Ok(PIPE_CAPACITY as u64),
            _ => Err(Errno(libc::EINVAL)),
        }
    }

    pub(super) fn ioctl(&mut self, mem: &GuestMemory, fd: u32, req: u32, arg: u64) -> SysResult {
        const FIONREAD: u32 = 0x541b;
        const FIONBIO: u32 = 0x5421;
        const FIONCLEX: u32 = 0x5450;
        const FIOCLEX: u32 = 0x5451;
        let (_, file) = self.file(fd)?;
        let fdi = i32::try_from(fd).map_err(|_| Errno(libc::EBADF))?;
        match req {
            FIONREAD => {
                let n = match &file.kind {
                    FileKind::Stdin => self.stdin.len() as u64,
                    FileKind::Pipe { id, .. } => self
                        .vfs
                        .fds
                        .pipes
                        .get(id)
                        .map_or(0, |p| p.data.len() as u64),
                    FileKind::Layer(ino) => self
                        .vfs
                        .layer
                        .inodes
                        .get(ino)
                        .map_or(0, |i| (i.data.len() as u64).saturating_sub(file.offset)),
                    FileKind::Generated(d) => (d.len() as u64).saturating_sub(file.offset),
                    FileKind::Image => {
                        let size = self
                            .vfs
                            .lookup(&file.path)
                            .ok()
                            .flatten()
                            .map_or(0, |m| m.size);
                        size.saturating_sub(file.offset)
                    }
                    FileKind::Dir => return Err(Errno(libc::ENOTTY)),
                    _ => 0,
                };
                let n = i32::try_from(n).unwrap_or(i32::MAX);
                mem.write_user_obj(arg, n)?;
                Ok(0)
            }
            FIONBIO => {
                let on: i32 = mem.read_user_obj(arg)?;
                let f = self.vfs.fds.get_mut(fdi).map_err(Errno)?;
                if on != 0 {
                    f.flags |= libc::O_NONBLOCK;
                } else {
                    f.flags &= !libc::O_NONBLOCK;
                }
                Ok(0)
            }
            FIOCLEX | FIONCLEX => {
                if let Some(d) = self.vfs.fds.fds.get_mut(&fdi) {
                    d.cloexec = req == FIOCLEX;
                }
                Ok(0)
            }
            // No descriptor is a terminal (TCGETS, TIOCGWINSZ, ...).
            _ => Err(Errno(libc::ENOTTY)),
        }
    }

    pub(super) fn lseek(&mut self, fd: u32, offset: u64, whence: u32) -> SysResult {
        let (_, file) = self.file(fd)?;
        let size = match &file.kind {
            FileKind::Stdin | FileKind::Stdout | FileKind::Stderr | FileKind::Pipe { .. } => {
                return Err(Errno(libc::ESPIPE));
            }
            FileKind::Null | FileKind::Zero | FileKind::Random => 0,
            FileKind::Layer(ino) => self
                .vfs
                .layer
                .inodes
                .get(ino)
                .map_or(0, |i| i.data.len() as u64),
            FileKind::Generated(d) => d.len() as u64,
            FileKind::Dir => 0,
            FileKind::Image => self
                .vfs
                .lookup(&file.path)
                .map_err(Errno)?
                .map_or(0, |m| m.size),
        };
        let offset = offset.cast_signed();
        let base = match int(u64::from(whence)) {
            libc::SEEK_SET => 0,
            libc::SEEK_CUR => file.offset,
            libc::SEEK_END => size,
            libc::SEEK_DATA if u64::try_from(offset).is_ok_and(|o| o < size) => 0,
            libc::SEEK_HOLE if u64::try_from(offset).is_ok_and(|o| o < size) => {
                let new = size;
                self.vfs
                    .fds
                    .get_mut(i32::try_from(fd).unwrap_or(-1))
                    .map_err(Errno)?
                    .offset = new;
                return Ok(new);
            }
            libc::SEEK_DATA | libc::SEEK_HOLE => return Err(Errno(libc::ENXIO)),
            _ => return Err(Errno(libc::EINVAL)),
        };
        let new = i64::try_from(base)
            .ok()
            .and_then(|b| b.checked_add(offset))
            .and_then(|n| u64::try_from(n).ok())
            .ok_or(Errno(libc::EINVAL))?;
        let f = self
            .vfs
            .fds
            .get_mut(i32::try_from(fd).unwrap_or(-1))
            .map_err(Errno)?;
        if f.kind == FileKind::Dir {
            f.listing = None;
        }
        f.offset = new;
        Ok(new)
    }

    pub(super) fn getdents64(
        &mut self,
        mem: &GuestMemory,
        fd: u32,
        buf: u64,
        count: u64,
    ) -> SysResult {
        let (id, file) = self.file(fd)?;
        if file.kind != FileKind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        if file.flags & libc::O_PATH != 0 {
            return Err(Errno(libc::EBADF));
        }
        let listing = match &file.listing {
            Some(l) => l.clone(),
            None => {
                let l = self.vfs.list(&file.path).map_err(Errno)?;
                if let Some(f) = self.vfs.fds.files.get_mut(&id) {
                    f.listing = Some(l.clone());
                }
                l
            }
        };
        let start = self.vfs.fds.files[&id].offset;
        let count = count.min(IO_CHUNK);
        let mut out = Vec::new();
        let mut next = start;
        for (i, e) in listing
            .iter()
            .enumerate()
            .skip(usize::try_from(start).unwrap_or(usize::MAX))
        {
            let reclen = (19 + e.name.len() + 1).next_multiple_of(8);
            if (out.len() + reclen) as u64 > count {
                break;
            }
            next = i as u64 + 1;
            out.extend(e.ino.to_le_bytes());
            out.extend(i64::try_from(next).unwrap_or(i64::MAX).to_le_bytes());
            out.extend(u16::try_from(reclen).unwrap_or(u16::MAX).to_le_bytes());
            out.push(e.kind);
            out.extend(&e.name);
            out.resize(out.len() + reclen - 19 - e.name.len(), 0);
        }
        if out.is_empty() && start < listing.len() as u64 {
            return Err(Errno(libc::EINVAL));
        }
        if !out.is_empty() {
            mem.write_user(buf, &out)?;
        }
        if let Some(f) = self.vfs.fds.files.get_mut(&id) {
            f.offset = next.max(start);
        }
        Ok(out.len() as u64)
    }

    pub(super) fn pipe2(&mut self, mem: &GuestMemory, fds: u64, flags: i32) -> SysResult {
        if flags & !(libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_DIRECT) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        mem.check_user(fds, 8)?;
        let id = self.vfs.fds.new_id();
        self.vfs.fds.pipes.insert(id, Default::default());
        let cloexec = flags & libc::O_CLOEXEC != 0;
        let status = flags & libc::O_NONBLOCK;
        let r = self.vfs.fds.install(
            OpenFile::new(
                FileKind::Pipe { id, write: false },
                Vec::new(),
                libc::O_RDONLY | status,
            ),
            0,
            cloexec,
        );
        let r = r.and_then(|rfd| {
            self.vfs
                .fds
                .install(
                    OpenFile::new(
                        FileKind::Pipe { id, write: true },
                        Vec::new(),
                        libc::O_WRONLY | status,
                    ),
                    0,
                    cloexec,
                )
                .map(|wfd| (rfd, wfd))
                .inspect_err(|_| {
                    self.vfs.fds.close(rfd);
                })
        });
        let (rfd, wfd) = r.map_err(|e| {
            self.vfs.fds.pipes.remove(&id);
            Errno(e)
        })?;
        mem.write_user_obj(fds, [rfd, wfd])?;
        Ok(0)
    }

    pub(super) fn getcwd(&self, mem: &GuestMemory, buf: u64, size: u64) -> SysResult {
        let mut cwd = self.vfs.cwd.clone();
        cwd.push(0);
        if size < cwd.len() as u64 {
            return Err(Errno(libc::ERANGE));
        }
        mem.write_user(buf, &cwd)?;
        Ok(cwd.len() as u64)
    }

    pub(super) fn chdir(&mut self, mem: &GuestMemory, path: u64) -> SysResult {
        let (p, meta) = self.existing_at(mem, libc::AT_FDCWD, path, true)?;
        if !meta.is_dir() {
            return Err(Errno(libc::ENOTDIR));
        }
        self.vfs.cwd = p;
        Ok(0)
    }

    pub(super) fn fchdir(&mut self, fd: u32) -> SysResult {
        let (_, file) = self.file(fd)?;
        if file.kind != FileKind::Dir {
            return Err(Errno(libc::ENOTDIR));
        }
        self.vfs.cwd = file.path.clone();
        Ok(0)
    }

    pub(super) fn readlinkat(
        &self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        buf: u64,
        size: u64,
    ) -> SysResult {
        if int(size) <= 0 {
            return Err(Errno(libc::EINVAL));
        }
        let (p, meta) = self.existing_at(mem, dirfd, path, false)?;
        let target = self.vfs.readlink(&p, &meta).map_err(Errno)?;
        let n = target
            .len()
            .min(usize::try_from(size).unwrap_or(usize::MAX));
        mem.write_user(buf, &target[..n])?;
        Ok(n as u64)
    }

    pub(super) fn faccessat(
        &self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        mode: i32,
        flags: i32,
    ) -> SysResult {
        if mode & !(libc::R_OK | libc::W_OK | libc::X_OK) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
        let p = self.guest_path(mem, path)?;
        let meta = if p.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
            let f = self.vfs.fds.get(dirfd).map_err(Errno)?;
            self.vfs
                .lookup(&f.path)
                .map_err(Errno)?
                .ok_or(Errno(libc::ENOENT))?
        } else {
            self.existing_at(mem, dirfd, path, follow)?.1
        };
        // The guest is root: anything may be read or written (writes go to the
        // layer); executing needs an execute bit.
        if mode & libc::X_OK != 0 && !meta.is_dir() && meta.mode & 0o111 == 0 {
            return Err(Errno(libc::EACCES));
        }
        if mode & libc::W_OK != 0 && matches!(meta.source, Source::Synth(Synth::File(_))) {
            return Err(Errno(libc::EACCES));
        }
        Ok(0)
    }

    pub(super) fn mkdirat(
        &mut self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        mode: u32,
    ) -> SysResult {
        let r = self.resolve_at(mem, dirfd, path, false)?;
        if r.meta.is_some() {
            return Err(Errno(libc::EEXIST));
        }
        self.vfs.mkdir(&r.path, mode).map_err(Errno)?;
        Ok(0)
    }

    pub(super) fn unlinkat(
        &mut self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        flags: i32,
    ) -> SysResult {
        if flags & !libc::AT_REMOVEDIR != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let (p, meta) = self.existing_at(mem, dirfd, path, false)?;
        self.vfs
            .remove(&p, &meta, flags & libc::AT_REMOVEDIR != 0)
            .map_err(Errno)?;
        Ok(0)
    }

    pub(super) fn symlinkat(
        &mut self,
        mem: &GuestMemory,
        target: u64,
        dirfd: i32,
        path: u64,
    ) -> SysResult {
        let target = self.guest_path(mem, target)?;
        if target.is_empty() {
            return Err(Errno(libc::ENOENT));
        }
        let r = self.resolve_at(mem, dirfd, path, false)?;
        if r.meta.is_some() {
            return Err(Errno(libc::EEXIST));
        }
        self.vfs.symlink(&target, &r.path).map_err(Errno)?;
        Ok(0)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn renameat2(
        &mut self,
        mem: &GuestMemory,
        olddir: i32,
        old: u64,
        newdir: i32,
        new: u64,
        flags: u32,
    ) -> SysResult {
        const RENAME_NOREPLACE: u32 = 1;
        if flags & !RENAME_NOREPLACE != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let (from, meta) = self.existing_at(mem, olddir, old, false)?;
        let to = self.resolve_at(mem, newdir, new, false)?;
        if flags & RENAME_NOREPLACE != 0 && to.meta.is_some() {
            return Err(Errno(libc::EEXIST));
        }
        self.vfs
            .rename(&from, &meta, &to.path, to.meta.as_ref())
            .map_err(Errno)?;
        Ok(0)
    }

    /// `ftruncate` (`fd`) or `truncate` (`path`).
    pub(super) fn truncate(
        &mut self,
        mem: &GuestMemory,
        target: Result<u32, u64>,
        len: u64,
    ) -> SysResult {
        if len.cast_signed() < 0 {
            return Err(Errno(libc::EINVAL));
        }
        if len > MAX_LAYER_FILE {
            return Err(Errno(libc::EFBIG));
        }
        let ino = match target {
            Ok(fd) => {
                let (_, file) = self.file(fd)?;
                match file.kind {
                    FileKind::Layer(ino) if file.writable() => ino,
                    FileKind::Dir | FileKind::Layer(_) | FileKind::Image => {
                        return Err(Errno(libc::EINVAL));
                    }
                    _ => return Err(Errno(libc::EINVAL)),
                }
            }
            Err(path) => {
                let (p, meta) = self.existing_at(mem, libc::AT_FDCWD, path, true)?;
                if meta.is_dir() {
                    return Err(Errno(libc::EISDIR));
                }
                self.vfs.copy_up(&p, &meta).map_err(Errno)?
            }
        };
        let inode = self
            .vfs
            .layer
            .inodes
            .get_mut(&ino)
            .ok_or(Errno(libc::EIO))?;
        inode
            .data
            .resize(usize::try_from(len).map_err(|_| Errno(libc::EFBIG))?, 0);
        inode.mtime = crate::guest_os::fs::layer::now();
        Ok(0)
    }

    /// `chmod`-like calls on an existing path: permissions are not kept; the entry must
    /// exist.
    pub(super) fn touch_path(
        &self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        follow: bool,
    ) -> SysResult {
        if path == 0 {
            // utimensat(fd, NULL, ...) changes the file of fd.
            self.vfs.fds.get(dirfd).map_err(Errno)?;
            return Ok(0);
        }
        let p = self.guest_path(mem, path)?;
        if p.is_empty() {
            self.vfs.fds.get(dirfd).map_err(Errno)?;
            return Ok(0);
        }
        self.existing_at(mem, dirfd, path, follow)?;
        Ok(0)
    }
}
