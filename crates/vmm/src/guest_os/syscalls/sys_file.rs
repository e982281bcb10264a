//! Descriptors and paths: `fcntl`, `getcwd`.

use super::*;

impl GuestOs {
    pub(super) fn fcntl(&mut self, fd: u32, cmd: i32) -> SysResult {
        if fd > 2 {
            return Err(Errno(libc::EBADF));
        }
        match cmd {
            libc::F_GETFD | libc::F_SETFD | libc::F_SETFL => Ok(0),
            libc::F_GETFL => Ok(if fd == 0 {
                libc::O_RDONLY.cast_unsigned().into()
            } else {
                libc::O_WRONLY.cast_unsigned().into()
            }),
            libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => Err(Errno(libc::EMFILE)),
            _ => Err(Errno(libc::EINVAL)),
        }
    }
}

pub(super) fn getcwd(mem: &GuestMemory, buf: u64, size: u64) -> SysResult {
    if size < 2 {
        return Err(Errno(libc::ERANGE));
    }
    mem.write_user(buf, b"/\0")?;
    Ok(2)
}
