//! File attributes: `fstat`, `stat`, `lstat`, `newfstatat`, `statx`, `statfs`,
//! `fstatfs`.

use super::*;
use crate::guest_os::fs::{DEV, Meta};

impl GuestOs {
    /// The attributes of the open file `fd`.
    fn fd_meta(&self, fd: u32) -> Result<Meta, Errno> {
        let (_, file) = self.file(fd)?;
        let pipe = |ino| Meta {
            mode: libc::S_IFIFO | 0o600,
            size: 0,
            ino,
            nlink: 1,
            rdev: 0,
            mtime: (0, 0),
            atime: (0, 0),
            ctime: (0, 0),
            source: crate::guest_os::fs::Source::Layer(0),
        };
        match &file.kind {
            FileKind::Stdin | FileKind::Stdout | FileKind::Stderr => Ok(pipe(0)),
            FileKind::Pipe { id, .. } => Ok(pipe(*id)),
            FileKind::Layer(ino) => {
                let inode = self.vfs.layer.inodes.get(ino).ok_or(Errno(libc::EIO))?;
                Ok(Meta {
                    mode: libc::S_IFREG | inode.mode,
                    size: inode.data.len() as u64,
                    ino: *ino,
                    nlink: 1,
                    rdev: 0,
                    mtime: inode.mtime,
                    atime: inode.mtime,
                    ctime: inode.mtime,
                    source: crate::guest_os::fs::Source::Layer(*ino),
                })
            }
            _ => {
                let mut m = self
                    .vfs
                    .lookup(&file.path)
                    .map_err(Errno)?
                    .ok_or(Errno(libc::ENOENT))?;
                if let FileKind::Generated(d) = &file.kind {
                    m.size = d.len() as u64;
                }
                Ok(m)
            }
        }
    }

    pub(super) fn fstat(&mut self, mem: &GuestMemory, fd: u32, buf: u64) -> SysResult {
        let meta = self.fd_meta(fd)?;
        mem.write_user_obj(buf, stat_of(&meta))?;
        Ok(0)
    }

    /// The attributes `path` (relative to `dirfd`) names, or `dirfd`'s own with an
    /// empty path and `AT_EMPTY_PATH`.
    fn meta_at(&self, mem: &GuestMemory, dirfd: i32, path: u64, flags: i32) -> Result<Meta, Errno> {
        let p = read_path(mem, path)?;
        if p.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
            // A negative descriptor is no descriptor, as a large unsigned one.
            return self.fd_meta(dirfd.cast_unsigned());
        }
        let follow = flags & libc::AT_SYMLINK_NOFOLLOW == 0;
        Ok(self.existing_at(mem, dirfd, path, follow)?.1)
    }

    pub(super) fn newfstatat(
        &mut self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        buf: u64,
        flags: i32,
    ) -> SysResult {
        let meta = self.meta_at(mem, dirfd, path, flags)?;
        mem.write_user_obj(buf, stat_of(&meta))?;
        Ok(0)
    }

    /// `statx(dirfd, path, flags, mask, buf)`: every basic field, whatever the mask.
    pub(super) fn statx(
        &mut self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        flags: i32,
        buf: u64,
    ) -> SysResult {
        let meta = self.meta_at(mem, dirfd, path, flags)?;
        const STATX_BASIC_STATS: u32 = 0x7ff;
        let mut b = Vec::with_capacity(256);
        b.extend(STATX_BASIC_STATS.to_le_bytes());
        b.extend(4096u32.to_le_bytes()); // blksize
        b.extend(0u64.to_le_bytes()); // attributes
        b.extend(u32::try_from(meta.nlink).unwrap_or(u32::MAX).to_le_bytes());
        b.extend(0u32.to_le_bytes()); // uid
        b.extend(0u32.to_le_bytes()); // gid
        b.extend(u16::try_from(meta.mode & 0xffff).unwrap_or(0).to_le_bytes());
        b.extend([0u8; 2]);
        b.extend(meta.ino.to_le_bytes());
        b.extend(meta.size.to_le_bytes());
        b.extend(meta.size.div_ceil(512).to_le_bytes());
        b.extend(0u64.to_le_bytes()); // attributes_mask
        for t in [meta.atime, meta.ctime, meta.ctime, meta.mtime] {
            // atime, btime, ctime, mtime
            b.extend(t.0.to_le_bytes());
            b.extend(u32::try_from(t.1).unwrap_or(0).to_le_bytes());
            b.extend(0u32.to_le_bytes());
        }
        let (rmaj, rmin) = (meta.rdev >> 8, meta.rdev & 0xff);
        b.extend(u32::try_from(rmaj).unwrap_or(0).to_le_bytes());
        b.extend(u32::try_from(rmin).unwrap_or(0).to_le_bytes());
        b.extend(0u32.to_le_bytes()); // dev major
        b.extend(u32::try_from(DEV).unwrap_or(0).to_le_bytes());
        b.resize(256, 0);
        mem.write_user(buf, &b)?;
        Ok(0)
    }

    /// `statfs(path, buf)` (`Ok(path)`) or `fstatfs(fd, buf)` (`Err(fd)`): an overlay
    /// file system as large as guest memory.
    pub(super) fn statfs(
        &mut self,
        mem: &GuestMemory,
        target: Result<u64, u32>,
        buf: u64,
    ) -> SysResult {
        match target {
            Ok(path) => {
                self.existing_at(mem, libc::AT_FDCWD, path, true)?;
            }
            Err(fd) => {
                self.file(fd)?;
            }
        }
        const OVERLAYFS_SUPER_MAGIC: u64 = 0x794c_7630;
        let blocks = mem.size() / 4096;
        let free = blocks.saturating_sub(self.mm.mapped_bytes() / 4096);
        let words: [u64; 15] = [
            OVERLAYFS_SUPER_MAGIC,
            4096,   // bsize
            blocks, // blocks
            free,   // bfree
            free,   // bavail
            1 << 20,
            1 << 19,
            0,    // fsid
            255,  // namelen
            4096, // frsize
            0x20, // flags: ST_NOATIME... (relatime-like)
            0,
            0,
            0,
            0,
        ];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        mem.write_user(buf, &bytes)?;
        Ok(0)
    }
}

/// The `struct stat` of an entry.
fn stat_of(m: &Meta) -> Stat {
    let t = |(sec, nsec): (i64, i64)| Timespec { sec, nsec };
    Stat {
        dev: DEV,
        ino: m.ino,
        nlink: m.nlink,
        mode: m.mode,
        uid: 0,
        gid: 0,
        pad0: 0,
        rdev: m.rdev,
        size: i64::try_from(m.size).unwrap_or(i64::MAX),
        blksize: 4096,
        blocks: i64::try_from(m.size.div_ceil(512)).unwrap_or(i64::MAX),
        atime: t(m.atime),
        mtime: t(m.mtime),
        ctime: t(m.ctime),
        unused: [0; 3],
    }
}
