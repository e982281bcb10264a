//! Memory: `brk`, `mmap`, `munmap`, `mremap`, `mprotect`, `madvise`.

use super::*;

impl GuestOs {
    pub(super) fn discard(mem: &GuestMemory, discards: Discards) -> Result<(), Errno> {
        for (start, end) in discards {
            mem.discard(start, end).map_err(|e| {
                tracing::error!("{e:#}");
                Errno(libc::ENOMEM)
            })?;
        }
        Ok(())
    }

    pub(super) fn brk(&mut self, mem: &GuestMemory, request: u64) -> u64 {
        let (brk, discards) = self.mm.brk(request);
        if Self::discard(mem, discards).is_err() {
            tracing::error!("could not zero memory released by brk");
        }
        if self.sync_page_tables(mem).is_err() {
            tracing::error!("could not update the page tables after brk");
        }
        brk
    }

    #[allow(clippy::too_many_arguments)] // the six arguments of mmap
    pub(super) fn mmap(
        &mut self,
        mem: &GuestMemory,
        addr: u64,
        len: u64,
        prot: u64,
        flags: i32,
        fd: i32,
        offset: u64,
    ) -> SysResult {
        // The file's bytes to copy in, for a file mapping.
        let source = if flags & libc::MAP_ANONYMOUS == 0 {
            Some(self.map_source(fd, prot, flags, offset)?)
        } else {
            None
        };
        if len == 0 {
            return Err(Errno(libc::EINVAL));
        }
        // Exactly one of MAP_SHARED, MAP_PRIVATE and MAP_SHARED_VALIDATE.
        const MAP_TYPE: i32 = 0xf;
        if !(1..=3).contains(&(flags & MAP_TYPE)) {
            return Err(Errno(libc::EINVAL));
        }
        let fixed = flags & libc::MAP_FIXED != 0;
        let noreplace = flags & libc::MAP_FIXED_NOREPLACE != 0;
        let (at, discards) = self.mm.mmap(addr, len, fixed, noreplace)?;
        Self::discard(mem, discards)?;
        // `mm.mmap` accepted the length, so rounding it up cannot overflow.
        let end = at + crate::arch::layout::page_align_up(len).unwrap_or(len);
        if let Some((fd, file_offset)) = source {
            // A file mapping is a copy (MAP_SHARED too: the guest cannot write to the
            // image, and a layer file's pages are not shared with later writes).
            let mut done = 0u64;
            let want = end - at;
            while done < want {
                let n = (want - done).min(IO_CHUNK);
                let data = self.file_bytes(fd, file_offset.saturating_add(done), n)?;
                if data.is_empty() {
                    break;
                }
                mem.write(at + done, &data)?;
                done += data.len() as u64;
                if (data.len() as u64) < n {
                    break;
                }
            }
        }
        if let Some((fd, _)) = source {
            let (_, file) = self.file(fd)?;
            let name = String::from_utf8_lossy(&file.path).into_owned();
            self.mm.name_range(at, end, &name);
        }
        self.mm.set_protection(at, end, Protection::from_prot(prot));
        self.sync_page_tables(mem)?;
        Ok(at)
    }

    pub(super) fn munmap(&mut self, mem: &GuestMemory, addr: u64, len: u64) -> SysResult {
        let discards = self.mm.munmap(addr, len)?;
        Self::discard(mem, discards)?;
        self.sync_page_tables(mem)?;
        Ok(0)
    }

    /// `mprotect(addr, len, prot)`, checked as Linux does. Memory outside user memory
    /// and the stack guard gap count as unmapped (ENOMEM).
    pub(super) fn mprotect(
        &mut self,
        mem: &GuestMemory,
        addr: u64,
        len: u64,
        prot: u64,
    ) -> SysResult {
        let end = check_mprotect(mem, addr, len, prot)?;
        let (guard, guard_end) = self.mm.stack_guard();
        if addr < guard_end && guard < end {
            return Err(Errno(libc::ENOMEM));
        }
        self.mm
            .set_protection(addr, end, Protection::from_prot(prot));
        self.sync_page_tables(mem)?;
        Ok(0)
    }

    /// Writes the page-table entries of the protections the address space changed;
    /// the VMM drops cached translations before the guest runs again if one lost a
    /// permission.
    pub(super) fn sync_page_tables(&mut self, mem: &GuestMemory) -> Result<(), Errno> {
        let writes = self.mm.take_page_table_writes();
        for (addr, value) in writes.entries {
            mem.write_obj(addr, value).map_err(|e| {
                tracing::error!("cannot write a page-table entry: {e}");
                Errno(libc::ENOMEM)
            })?;
        }
        self.lowered.extend(writes.lowered);
        Ok(())
    }

    pub(super) fn mremap(
        &mut self,
        mem: &GuestMemory,
        old: u64,
        old_len: u64,
        new_len: u64,
        flags: u64,
        new_addr: u64,
    ) -> SysResult {
        const MAYMOVE: u64 = 1;
        const FIXED: u64 = 2;
        if flags & !(MAYMOVE | FIXED) != 0 {
            return Err(Errno(libc::EINVAL));
        }
        let fixed_to = (flags & FIXED != 0).then_some(new_addr);
        let protection = self.mm.protection_at(old);
        let (at, copy, discards) =
            self.mm
                .mremap(old, old_len, new_len, flags & MAYMOVE != 0, fixed_to)?;
        if let Some((from, to, len)) = copy {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(IO_CHUNK);
                let mut buf = vec![0u8; n as usize];
                mem.read(from + done, &mut buf)?;
                mem.write(to + done, &buf)?;
                done += n;
            }
        }
        let discards_copy = discards.clone();
        Self::discard(mem, discards)?;
        // The ranges that left the mapping are unmapped, the new range has the old one's
        // protection (mremap never splits a mapping's protection: it takes the first).
        for &(start, end) in &discards_copy {
            self.mm.set_protection(start, end, Protection::ReadWrite);
        }
        let new_end = at + crate::arch::layout::page_align_up(new_len).unwrap_or(new_len);
        self.mm.set_protection(at, new_end, protection);
        self.sync_page_tables(mem)?;
        Ok(at)
    }

    pub(super) fn madvise(
        &mut self,
        mem: &GuestMemory,
        addr: u64,
        len: u64,
        advice: i32,
    ) -> SysResult {
        let (start, end) =
            crate::guest_os::mm::AddressSpace::page_range(addr, len).ok_or(Errno(libc::EINVAL))?;
        if matches!(
            advice,
            libc::MADV_DONTNEED | libc::MADV_FREE | libc::MADV_REMOVE
        ) {
            mem.check_user(start, end - start)
                .map_err(|_| Errno(libc::ENOMEM))?;
            Self::discard(mem, vec![(start, end)])?;
        }
        Ok(0)
    }
}

/// Checks `mprotect(addr, len, prot)` as Linux does and returns the end of the range.
/// Memory outside user memory counts as unmapped (ENOMEM).
pub(super) fn check_mprotect(
    mem: &GuestMemory,
    addr: u64,
    len: u64,
    prot: u64,
) -> Result<u64, Errno> {
    if !addr.is_multiple_of(PAGE_SIZE) {
        return Err(Errno(libc::EINVAL));
    }
    if len == 0 {
        return Ok(addr);
    }
    let end = crate::arch::layout::page_align_up(len)
        .and_then(|len| addr.checked_add(len))
        .ok_or(Errno(libc::ENOMEM))?;
    // `prot` is an `unsigned long`: unknown bits anywhere in it are EINVAL.
    const PROT_SEM: i32 = 0x8;
    let grows = u64::from((libc::PROT_GROWSDOWN | libc::PROT_GROWSUP).cast_unsigned());
    let known = u64::from(
        (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC | PROT_SEM).cast_unsigned(),
    ) | grows;
    if prot & !known != 0 || prot & grows == grows {
        return Err(Errno(libc::EINVAL));
    }
    mem.check_user(addr, end - addr)
        .map_err(|_| Errno(libc::ENOMEM))?;
    Ok(end)
}

impl GuestOs {
    /// Checks that `fd` can be mapped with `prot` and `flags` at `offset`; returns the
    /// descriptor and offset to copy from.
    fn map_source(&self, fd: i32, prot: u64, flags: i32, offset: u64) -> Result<(u32, u64), Errno> {
        let ufd = fd.cast_unsigned();
        let (_, file) = self.file(ufd)?;
        match file.kind {
            FileKind::Image | FileKind::Layer(_) | FileKind::Zero | FileKind::Generated(_) => {}
            FileKind::Dir => return Err(Errno(libc::ENODEV)),
            _ => return Err(Errno(libc::ENODEV)),
        }
        if file.flags & libc::O_PATH != 0 {
            return Err(Errno(libc::EBADF));
        }
        if !file.readable() {
            return Err(Errno(libc::EACCES));
        }
        let shared = flags & 0xf != libc::MAP_PRIVATE;
        if shared && prot & u64::from(libc::PROT_WRITE.cast_unsigned()) != 0 && !file.writable() {
            return Err(Errno(libc::EACCES));
        }
        if !offset.is_multiple_of(PAGE_SIZE) {
            return Err(Errno(libc::EINVAL));
        }
        Ok((ufd, offset))
    }

    /// Up to `len` bytes of the file of `fd` from `offset` (fewer at its end).
    fn file_bytes(&mut self, fd: u32, offset: u64, len: u64) -> Result<Vec<u8>, Errno> {
        let (id, file) = self.file(fd)?;
        let n = usize::try_from(len).map_err(|_| Errno(libc::EINVAL))?;
        let at = usize::try_from(offset).unwrap_or(usize::MAX);
        let slice = |d: &[u8]| d[at.min(d.len())..at.saturating_add(n).min(d.len())].to_vec();
        Ok(match &file.kind {
            FileKind::Image => {
                let path = file.path.clone();
                let mut buf = vec![0u8; n];
                let got = self
                    .vfs
                    .read_image(id, &path, offset, &mut buf)
                    .map_err(Errno)?;
                buf.truncate(got);
                buf
            }
            FileKind::Layer(ino) => {
                slice(&self.vfs.layer.inodes.get(ino).ok_or(Errno(libc::EIO))?.data)
            }
            FileKind::Generated(d) => slice(d),
            _ => Vec::new(),
        })
    }
}
