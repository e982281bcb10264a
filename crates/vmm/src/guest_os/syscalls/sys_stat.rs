//! File attributes: `fstat`, `newfstatat`.

use super::*;

impl GuestOs {
    pub(super) fn fstat(&mut self, mem: &GuestMemory, fd: u32, buf: u64) -> SysResult {
        if fd > 2 {
            return Err(Errno(libc::EBADF));
        }
        let stat = Stat {
            mode: libc::S_IFIFO | 0o600,
            nlink: 1,
            blksize: 4096,
            ..Default::default()
        };
        mem.write_user_obj(buf, stat)?;
        Ok(0)
    }

    pub(super) fn newfstatat(
        &mut self,
        mem: &GuestMemory,
        dirfd: i32,
        path: u64,
        buf: u64,
        flags: i32,
    ) -> SysResult {
        let path = read_path(mem, path)?;
        if path.is_empty() && flags & libc::AT_EMPTY_PATH != 0 {
            // A negative descriptor is no descriptor, as a large unsigned one.
            return self.fstat(mem, dirfd.cast_unsigned(), buf);
        }
        Err(Errno(libc::ENOENT))
    }
}
