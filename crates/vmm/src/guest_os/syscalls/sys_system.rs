//! The system: `uname`, `getrandom`.

use super::*;

impl GuestOs {
    pub(super) fn getrandom(
        &mut self,
        mem: &GuestMemory,
        buf: u64,
        len: u64,
        flags: u32,
    ) -> SysResult {
        const GRND_NONBLOCK: u32 = 1;
        const GRND_RANDOM: u32 = 2;
        const GRND_INSECURE: u32 = 4;
        if flags & !(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE) != 0
            || flags & (GRND_RANDOM | GRND_INSECURE) == GRND_RANDOM | GRND_INSECURE
        {
            return Err(Errno(libc::EINVAL));
        }
        // Linux caps a request at INT_MAX bytes before checking it.
        access_ok(buf, len.min(i32::MAX as u64))?;
        let n = len.min(IO_CHUNK);
        if n == 0 {
            return Ok(0);
        }
        mem.check_user(buf, n)?;
        let mut bytes = vec![0u8; n as usize];
        fill_random(&mut bytes).map_err(|_| Errno(libc::EIO))?;
        mem.write_user(buf, &bytes)?;
        Ok(n)
    }
}

/// Fills `buf` from the host's entropy source.
pub(super) fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: the pointer and length describe the unfilled tail of `buf`.
        let n = unsafe { libc::getrandom(buf[done..].as_mut_ptr().cast(), buf.len() - done, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        // Not negative (checked above), and at most the length asked for.
        done += n.unsigned_abs();
    }
    Ok(())
}

pub(super) fn uname(mem: &GuestMemory, buf: u64) -> SysResult {
    let u = Utsname::new([
        "Linux",
        "reap",
        "6.1.0",
        "#1 SMP reap microVM",
        "x86_64",
        "(none)",
    ]);
    mem.write_user_obj(buf, u)?;
    Ok(0)
}
