//! Reading and writing: `read`, `write`, their vectored forms, and the standard streams.

use super::super::threads::WaitOn;
use super::*;

impl GuestOs {
    /// The open file of `fd` and its id.
    pub(super) fn file(&self, fd: u32) -> Result<(u64, &OpenFile), Errno> {
        let fd = i32::try_from(fd).map_err(|_| Errno(libc::EBADF))?;
        let id = self.vfs.fds.id(fd).map_err(Errno)?;
        let file = self.vfs.fds.files.get(&id).ok_or(Errno(libc::EBADF))?;
        Ok((id, file))
    }

    pub(super) fn read(&mut self, mem: &GuestMemory, fd: u32, buf: u64, count: u64) -> Outcome {
        let r = (|| {
            let (_, file) = self.file(fd)?;
            if !file.readable() {
                return Err(Errno(libc::EBADF));
            }
            let stdin = file.kind == FileKind::Stdin;
            // Linux checks the whole buffer against the user address space first; the
            // bytes actually copied are checked against user memory below.
            access_ok(buf, count)?;
            if count == 0 {
                return Ok(Some(0));
            }
            if stdin {
                if self.stdin.is_empty() && !self.stdin_eof {
                    return Ok(None);
                }
                return self.read_stdin(mem, buf, count).map(Some);
            }
            if self.pipe_would_block(fd) {
                return Ok(None);
            }
            self.read_file(mem, fd, buf, count, None).map(Some)
        })();
        match r {
            Ok(Some(n)) => Outcome::Return(ret(Ok(n))),
            Ok(None) => self.block_on_input(fd),
            Err(e) => Outcome::Return(ret(Err(e))),
        }
    }

    /// Whether a read of `fd` waits: a blocking pipe with nothing in it and a writer.
    pub(super) fn pipe_would_block(&self, fd: u32) -> bool {
        let Ok((_, file)) = self.file(fd) else {
            return false;
        };
        match file.kind {
            FileKind::Pipe { id, write: false } => {
                file.flags & libc::O_NONBLOCK == 0
                    && self.vfs.fds.pipe_has(id, true)
                    && self
                        .vfs
                        .fds
                        .pipes
                        .get(&id)
                        .is_some_and(|p| p.data.is_empty())
            }
            _ => false,
        }
    }

    /// Blocks the calling thread until input may have arrived on `fd` (stdin or a
    /// pipe); the call is then carried out again.
    pub(super) fn block_on_input(&mut self, fd: u32) -> Outcome {
        let stdin = self.file(fd).is_ok_and(|(_, f)| f.kind == FileKind::Stdin);
        self.block(WaitOn::Io { stdin }, None)
    }

    /// Reads up to `count` bytes of the file of `fd` into guest memory at `buf`, at
    /// `at` or else at the file offset (which then moves).
    pub(super) fn read_file(
        &mut self,
        mem: &GuestMemory,
        fd: u32,
        buf: u64,
        count: u64,
        at: Option<u64>,
    ) -> SysResult {
        let (id, file) = self.file(fd)?;
        let offset = at.unwrap_or(file.offset);
        let n = usize::try_from(count.min(IO_CHUNK)).map_err(|_| Errno(libc::EINVAL))?;
        let data: Vec<u8> = match file.kind.clone() {
            FileKind::Image => {
                let path = file.path.clone();
                let mut data = vec![0u8; n];
                let got = self
                    .vfs
                    .read_image(id, &path, offset, &mut data)
                    .map_err(Errno)?;
                data.truncate(got);
                data
            }
            FileKind::Layer(ino) => {
                let inode = self.vfs.layer.inodes.get(&ino).ok_or(Errno(libc::EIO))?;
                slice_at(&inode.data, offset, n).to_vec()
            }
            FileKind::Generated(data) => slice_at(&data, offset, n).to_vec(),
            FileKind::Dir => return Err(Errno(libc::EISDIR)),
            FileKind::Null => Vec::new(),
            FileKind::Zero => vec![0u8; n],
            FileKind::Random => {
                let mut data = vec![0u8; n];
                fill_random(&mut data).map_err(|_| Errno(libc::EIO))?;
                data
            }
            FileKind::Pipe { id: pipe, .. } => {
                let nonblock = file.flags & libc::O_NONBLOCK != 0;
                let writers = self.vfs.fds.pipe_has(pipe, true);
                let p = self
                    .vfs
                    .fds
                    .pipes
                    .get_mut(&pipe)
                    .ok_or(Errno(libc::EBADF))?;
                if p.data.is_empty() && writers {
                    // A blocking read waited before it got here (`pipe_would_block`):
                    // this is a non-blocking one, or a later buffer of a `readv` that
                    // emptied the pipe (which returns what it read).
                    return Err(Errno(if nonblock {
                        libc::EAGAIN
                    } else {
                        libc::EDEADLK
                    }));
                }
                let k = n.min(p.data.len());
                mem.check_user(buf, k as u64)?;
                p.data.drain(..k).collect()
            }
            FileKind::Stdin | FileKind::Stdout | FileKind::Stderr => {
                return Err(Errno(libc::EBADF));
            }
        };
        if !data.is_empty() {
            mem.write_user(buf, &data)?;
        }
        let got = data.len() as u64;
        if at.is_none()
            && let Ok(f) = self.vfs.fds.get_mut(i32::try_from(fd).unwrap_or(-1))
            && !matches!(f.kind, FileKind::Pipe { .. })
        {
            f.offset = offset.saturating_add(got);
        }
        Ok(got)
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

    pub(super) fn readv(
        &mut self,
        mem: &GuestMemory,
        fd: u32,
        iov: u64,
        count: u64,
        at: Option<u64>,
    ) -> Outcome {
        // The descriptor and the iovecs are checked before the call blocks, and a
        // zero total length returns at once, as on Linux.
        let kind = match self.file(fd) {
            Ok((_, f)) if f.readable() => Ok(f.kind.clone()),
            Ok(_) | Err(_) => Err(Errno(libc::EBADF)),
        };
        let iovecs = kind.and_then(|k| read_iovecs(mem, iov, count).map(|v| (k, v)));
        let r = match iovecs {
            Ok((_, v)) if v.iter().all(|v| v.len == 0) => Ok(0),
            Ok((FileKind::Stdin, _)) if at.is_some() => Err(Errno(libc::ESPIPE)),
            Ok((FileKind::Stdin, _)) if self.stdin.is_empty() && !self.stdin_eof => {
                return self.block_on_input(fd);
            }
            Ok((FileKind::Pipe { .. }, _)) if at.is_none() && self.pipe_would_block(fd) => {
                return self.block_on_input(fd);
            }
            Ok((kind, v)) => self.readv_now(mem, fd, &kind, &v, at),
            Err(e) => Err(e),
        };
        Outcome::Return(ret(r))
    }

    /// Fills the buffers in order. A buffer that is not user memory ends the call:
    /// EFAULT if nothing was read yet, else the bytes read so far (as Linux).
    pub(super) fn readv_now(
        &mut self,
        mem: &GuestMemory,
        fd: u32,
        kind: &FileKind,
        iovecs: &[Iovec],
        at: Option<u64>,
    ) -> SysResult {
        let mut total = 0u64;
        for v in iovecs {
            let r = if *kind == FileKind::Stdin {
                self.read_stdin(mem, v.base, v.len)
            } else {
                self.read_file(mem, fd, v.base, v.len, at.map(|a| a.saturating_add(total)))
            };
            let n = match r {
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
        self.write_at(mem, fd, buf, count, None)
    }

    /// Writes `count` bytes at `buf` to the file of `fd`, at `at` or else at the file
    /// offset (the end with `O_APPEND`).
    pub(super) fn write_at(
        &mut self,
        mem: &GuestMemory,
        fd: u32,
        buf: u64,
        count: u64,
        at: Option<u64>,
    ) -> SysResult {
        let (_, file) = self.file(fd)?;
        if !file.writable() {
            return Err(Errno(libc::EBADF));
        }
        let kind = file.kind.clone();
        access_ok(buf, count)?;
        if count == 0 {
            return Ok(0);
        }
        mem.check_user(buf, count)?;
        let mut done = 0;
        while done < count {
            let n = (count - done).min(IO_CHUNK);
            let data = mem.read_user(buf + done, n)?;
            let w = self.write_data(fd, &kind, &data, at.map(|a| a.saturating_add(done)));
            match w {
                Ok(k) => {
                    done += k;
                    if k < n {
                        break;
                    }
                }
                Err(_) if done > 0 => break,
                Err(e) => return Err(e),
            }
        }
        Ok(done)
    }

    /// Writes `data` to the file of `fd`; returns the bytes taken.
    fn write_data(
        &mut self,
        fd: u32,
        kind: &FileKind,
        data: &[u8],
        at: Option<u64>,
    ) -> Result<u64, Errno> {
        match *kind {
            FileKind::Stdout => self.emit(1, data).map(|()| data.len() as u64),
            FileKind::Stderr => self.emit(2, data).map(|()| data.len() as u64),
            FileKind::Null | FileKind::Zero | FileKind::Random => Ok(data.len() as u64),
            FileKind::Layer(ino) => {
                let (_, file) = self.file(fd)?;
                let append = file.flags & libc::O_APPEND != 0;
                let offset = file.offset;
                let inode = self
                    .vfs
                    .layer
                    .inodes
                    .get_mut(&ino)
                    .ok_or(Errno(libc::EIO))?;
                let start = match at {
                    Some(a) if !append => a,
                    _ if append => inode.data.len() as u64,
                    _ => offset,
                };
                let start = usize::try_from(start).map_err(|_| Errno(libc::EFBIG))?;
                let end = start.checked_add(data.len()).ok_or(Errno(libc::EFBIG))?;
                if end as u64 > MAX_LAYER_FILE {
                    return Err(Errno(libc::EFBIG));
                }
                if inode.data.len() < end {
                    inode.data.resize(end, 0);
                }
                inode.data[start..end].copy_from_slice(data);
                inode.mtime = crate::guest_os::fs::layer::now();
                if at.is_none() {
                    let f = self
                        .vfs
                        .fds
                        .get_mut(i32::try_from(fd).unwrap_or(-1))
                        .map_err(Errno)?;
                    f.offset = end as u64;
                }
                Ok(data.len() as u64)
            }
            FileKind::Pipe { id, .. } => {
                if !self.vfs.fds.pipe_has(id, false) {
                    return Err(Errno(libc::EPIPE));
                }
                let p = self.vfs.fds.pipes.get_mut(&id).ok_or(Errno(libc::EBADF))?;
                let room = PIPE_CAPACITY.saturating_sub(p.data.len());
                if room == 0 {
                    return Err(Errno(libc::EAGAIN));
                }
                let k = room.min(data.len());
                p.data.extend(&data[..k]);
                Ok(k as u64)
            }
            _ => Err(Errno(libc::EBADF)),
        }
    }

    pub(super) fn writev(
        &mut self,
        mem: &GuestMemory,
        fd: u32,
        iov: u64,
        count: u64,
        at: Option<u64>,
    ) -> SysResult {
        match self.file(fd) {
            Ok((_, f)) if f.writable() => {}
            _ => return Err(Errno(libc::EBADF)),
        }
        let iovecs = read_iovecs(mem, iov, count)?;
        // Unlike Linux, nothing is written unless every buffer is user memory. An empty
        // buffer is never read, so any base will do (as Linux).
        for v in iovecs.iter().filter(|v| v.len > 0) {
            mem.check_user(v.base, v.len)?;
        }
        let mut total = 0u64;
        for v in iovecs {
            let n = self.write_at(mem, fd, v.base, v.len, at.map(|a| a.saturating_add(total)))?;
            total = total.checked_add(n).ok_or(Errno(libc::EINVAL))?;
            if n < v.len {
                break;
            }
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

/// Up to `n` bytes of `data` from `offset`.
fn slice_at(data: &[u8], offset: u64, n: usize) -> &[u8] {
    let start = usize::try_from(offset)
        .unwrap_or(usize::MAX)
        .min(data.len());
    &data[start..start.saturating_add(n).min(data.len())]
}

/// The largest file the writable layer holds.
pub(super) const MAX_LAYER_FILE: u64 = 1 << 30;
