//! Reading and writing: `read`, `write`, their vectored forms, and the standard streams.

use super::*;

impl GuestOs {
    pub(super) fn read(&mut self, mem: &GuestMemory, fd: u32, buf: u64, count: u64) -> Outcome {
        let r = match fd {
            // Linux checks the whole buffer against the user address space first; the
            // bytes actually copied are checked against user memory below.
            0 if access_ok(buf, count).is_err() => Err(Errno(libc::EFAULT)),
            0 if count == 0 => Ok(0),
            0 if self.stdin.is_empty() && !self.stdin_eof => return Outcome::BlockOnStdin,
            0 => self.read_stdin(mem, buf, count),
            _ => Err(Errno(libc::EBADF)),
        };
        Outcome::Return(ret(r))
    }

    /// Moves up to `count` pending stdin bytes to guest memory at `buf`.
    pub(super) fn read_stdin(&mut self, mem: &GuestMemory, buf: u64, count: u64) -> SysResult {
        let n = count.min(self.stdin.len() as u64).min(IO_CHUNK);
        if n == 0 {
            return Ok(0);
        }
        mem.check_user(buf, n)?;
        let data: Vec<u8> = self.stdin.iter().take(n as usize).copied().collect();
        mem.write_user(buf, &data)?;
        self.stdin.drain(..n as usize);
        Ok(n)
    }

    pub(super) fn readv(&mut self, mem: &GuestMemory, fd: u32, iov: u64, count: u64) -> Outcome {
        // The descriptor and the iovecs are checked before the call blocks, and a
        // zero total length returns at once, as on Linux.
        let iovecs = match fd {
            0 => read_iovecs(mem, iov, count),
            _ => Err(Errno(libc::EBADF)),
        };
        let r = match iovecs {
            Ok(v) if v.iter().all(|v| v.len == 0) => Ok(0),
            Ok(_) if self.stdin.is_empty() && !self.stdin_eof => return Outcome::BlockOnStdin,
            Ok(v) => self.readv_now(mem, &v),
            Err(e) => Err(e),
        };
        Outcome::Return(ret(r))
    }

    /// Fills the buffers in order from stdin. A buffer that is not user memory ends the
    /// call: EFAULT if nothing was read yet, else the bytes read so far (as Linux).
    pub(super) fn readv_now(&mut self, mem: &GuestMemory, iovecs: &[Iovec]) -> SysResult {
        let mut total = 0;
        for v in iovecs {
            let n = match self.read_stdin(mem, v.base, v.len) {
                Ok(n) => n,
                Err(_) if total > 0 => break,
                Err(e) => return Err(e),
            };
            total += n;
            if n < v.len {
                break;
            }
        }
        Ok(total)
    }

    pub(super) fn write(&mut self, mem: &GuestMemory, fd: u32, buf: u64, count: u64) -> SysResult {
        if !(1..=2).contains(&fd) {
            return Err(Errno(libc::EBADF));
        }
        access_ok(buf, count)?;
        if count == 0 {
            return Ok(0);
        }
        mem.check_user(buf, count)?;
        let mut done = 0;
        while done < count {
            let n = (count - done).min(IO_CHUNK);
            let data = mem.read_user(buf + done, n)?;
            self.emit(fd, &data)?;
            done += n;
        }
        Ok(count)
    }

    pub(super) fn writev(&mut self, mem: &GuestMemory, fd: u32, iov: u64, count: u64) -> SysResult {
        if !(1..=2).contains(&fd) {
            return Err(Errno(libc::EBADF));
        }
        let iovecs = read_iovecs(mem, iov, count)?;
        // Unlike Linux, nothing is written unless every buffer is user memory. An empty
        // buffer is never read, so any base will do (as Linux).
        for v in iovecs.iter().filter(|v| v.len > 0) {
            mem.check_user(v.base, v.len)?;
        }
        let mut total = 0u64;
        for v in iovecs {
            total = total
                .checked_add(self.write(mem, fd, v.base, v.len)?)
                .ok_or(Errno(libc::EINVAL))?;
        }
        Ok(total)
    }

    /// Sends guest output to stdout (fd 1) or stderr (fd 2).
    pub(super) fn emit(&mut self, fd: u32, data: &[u8]) -> Result<(), Errno> {
        let sink = if fd == 1 {
            &mut self.stdout
        } else {
            &mut self.stderr
        };
        sink.write_all(data)
            .and_then(|()| sink.flush())
            .map_err(|e| {
                Errno(if e.kind() == std::io::ErrorKind::BrokenPipe {
                    libc::EPIPE
                } else {
                    libc::EIO
                })
            })?;
        if fd == 1 {
            self.counters.stdout_bytes += data.len() as u64;
            let lines = data.iter().filter(|&&b| b == b'\n').count() as u64;
            if lines > 0 {
                self.counters.stdout_lines += lines;
                self.last_line_at = Some(Instant::now());
            }
        } else {
            self.counters.stderr_bytes += data.len() as u64;
        }
        Ok(())
    }
}
