//! The image layer: the function's root file system, a read-only directory tree on the
//! host. Every access goes through `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS |
//! RESOLVE_NO_MAGICLINKS)` on an `O_PATH` descriptor of the root: the VMM resolves
//! symbolic links itself (inside the root, see [`super::Vfs::resolve`]), and the host
//! kernel refuses any path that would still leave the tree, so nothing outside it is
//! reachable even if the resolution had a bug.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Why an image cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The root does not exist or cannot be opened.
    #[error("cannot open the root file system {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// The root is not a directory.
    #[error("the root file system {0} is not a directory")]
    NotDirectory(PathBuf),
}

/// The image: an `O_PATH` descriptor of its root directory.
#[derive(Debug)]
pub struct Image {
    root: OwnedFd,
    path: PathBuf,
}

/// What `lstat` tells of an image file.
#[derive(Debug, Clone, Copy)]
pub struct HostStat(pub libc::stat);

/// Image roots opened by another process and handed to this one, by their host path:
/// a jailed instance process cannot open the image by its path.
static PROVIDED: std::sync::Mutex<Vec<(PathBuf, OwnedFd)>> = std::sync::Mutex::new(Vec::new());

/// Makes [`Image::open`] of `path` (an absolute, canonical path, as a snapshot records
/// it) use `root`, an `O_PATH` descriptor of that directory, instead of opening it.
pub fn provide(path: PathBuf, root: OwnedFd) {
    PROVIDED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path, root));
}

/// Takes back what [`provide`] gave for `path`: [`Image::open`] of it opens the
/// directory again (images already open keep their descriptor).
pub fn withdraw(path: &Path) {
    PROVIDED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(p, _)| p != path);
}

impl Image {
    /// Opens the directory `path` as an image (or takes the descriptor
    /// [`provide`]d for it).
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let provided = PROVIDED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(p, _)| p == path)
            .map(|(p, fd)| (p.clone(), fd.try_clone()));
        if let Some((path, fd)) = provided {
            let root = fd.map_err(|e| ImageError::Open(path.clone(), e))?;
            return Ok(Self { root, path });
        }
        let meta = std::fs::metadata(path).map_err(|e| ImageError::Open(path.into(), e))?;
        // Absolute, so that a snapshot finds it again from any working directory.
        let path = &std::fs::canonicalize(path).map_err(|e| ImageError::Open(path.into(), e))?;
        if !meta.is_dir() {
            return Err(ImageError::NotDirectory(path.into()));
        }
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            ImageError::Open(path.into(), std::io::Error::from_raw_os_error(libc::EINVAL))
        })?;
        // SAFETY: `c` is a valid NUL-terminated path; the result is checked.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(ImageError::Open(
                path.into(),
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let root = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            root,
            path: path.to_path_buf(),
        })
    }

    /// The root's host path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opens `path` (a canonical guest path, `/`-separated, without symbolic links
    /// before its last component) inside the root with `flags`; `O_NOFOLLOW` and
    /// `O_CLOEXEC` are always added.
    pub fn open_at(&self, path: &[u8], flags: i32) -> std::io::Result<OwnedFd> {
        let rel: Vec<u8> = match path.strip_prefix(b"/") {
            Some([]) | None if path.is_empty() || path == b"/" => b".".to_vec(),
            Some(rest) => rest.to_vec(),
            None => path.to_vec(),
        };
        let c = CString::new(rel).map_err(|_| std::io::Error::from_raw_os_error(libc::ENOENT))?;
        const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
        const RESOLVE_NO_SYMLINKS: u64 = 0x04;
        const RESOLVE_IN_ROOT: u64 = 0x10;
        // SAFETY: `open_how` is plain data; zero is a valid value.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        how.flags = u64::from((flags | libc::O_NOFOLLOW | libc::O_CLOEXEC).cast_unsigned());
        how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
        // SAFETY: the root descriptor is open, `c` is a NUL-terminated path and `how`
        // a valid `open_how` of the size passed; the result is checked.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| std::io::Error::from_raw_os_error(libc::EBADF))?;
        // SAFETY: `fd` was just opened and is owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// `lstat` of `path` (a canonical guest path), or `None` if it does not exist.
    pub fn lstat(&self, path: &[u8]) -> Result<Option<HostStat>, i32> {
        let fd = match self.open_at(path, libc::O_PATH) {
            Ok(fd) => fd,
            Err(e) => {
                return match e.raw_os_error() {
                    Some(libc::ENOENT) => Ok(None),
                    Some(e) => Err(e),
                    None => Err(libc::EIO),
                };
            }
        };
        fstat(&fd).map(Some)
    }

    /// The target of the symbolic link `path`.
    pub fn readlink(&self, path: &[u8]) -> Result<Vec<u8>, i32> {
        let fd = self
            .open_at(path, libc::O_PATH)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: `fd` is an open O_PATH descriptor of a link, the empty path means the
        // link itself, and `buf` is writable for its length.
        let n = unsafe {
            libc::readlinkat(
                fd.as_raw_fd(),
                c"".as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let n = usize::try_from(n).map_err(|_| last_errno())?;
        buf.truncate(n);
        Ok(buf)
    }

    /// Opens the regular file `path` for reading.
    pub fn open_file(&self, path: &[u8]) -> Result<File, i32> {
        self.open_at(path, libc::O_RDONLY)
            .map(File::from)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
    }

    /// The names, inode numbers and types (`DT_*`) in the directory `path`, without
    /// `.` and `..`.
    pub fn read_dir(&self, path: &[u8]) -> Result<Vec<(Vec<u8>, u64, u8)>, i32> {
        let fd = self
            .open_at(path, libc::O_RDONLY | libc::O_DIRECTORY)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 << 10];
        loop {
            // SAFETY: `fd` is an open directory and `buf` is writable for its length.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_getdents64,
                    fd.as_raw_fd(),
                    buf.as_mut_ptr(),
                    buf.len(),
                )
            };
            let n = usize::try_from(n).map_err(|_| last_errno())?;
            if n == 0 {
                break;
            }
            let mut at = 0;
            while at + 19 <= n {
                let reclen = usize::from(u16::from_le_bytes([buf[at + 16], buf[at + 17]]));
                if reclen == 0 || at + reclen > n {
                    break;
                }
                let kind = buf[at + 18];
                let name = &buf[at + 19..at + reclen];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                let mut ino = [0u8; 8];
                ino.copy_from_slice(&buf[at..at + 8]);
                if name != b"." && name != b".." {
                    out.push((name.to_vec(), u64::from_le_bytes(ino), kind));
                }
                at += reclen;
            }
        }
        Ok(out)
    }
}

/// `fstat` of a host descriptor.
pub fn fstat(fd: &impl AsRawFd) -> Result<HostStat, i32> {
    // SAFETY: `stat` is plain data, zero is a valid value.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open, the empty path with AT_EMPTY_PATH means the descriptor
    // itself, `st` is writable.
    let r = unsafe {
        libc::fstatat(
            fd.as_raw_fd(),
            c"".as_ptr(),
            &mut st,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if r != 0 {
        return Err(last_errno());
    }
    Ok(HostStat(st))
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}
