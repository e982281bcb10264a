//! Guest memory: one host mapping of N MiB that is guest-physical address 0..N, with
//! bounds-checked access for the VMM (through `vm-memory`).

use std::fs::File;
use std::io;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    ByteValued, Bytes, FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion,
};

use crate::arch::layout::{PAGE_SIZE, SYSTEM_AREA_END};

/// Why guest memory could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// The host mapping failed.
    #[error("cannot map {size} bytes of guest memory")]
    Map {
        /// The size asked for.
        size: u64,
        /// Why.
        #[source]
        source: vm_memory::mmap::MmapRegionError,
    },
    /// vm-memory refused the mapping as a guest memory region.
    #[error("guest memory region rejected")]
    Region,
    /// Mapping fresh zero pages over a range failed.
    #[error("cannot replace guest pages {start:#x}..{end:#x} with zero pages")]
    Discard {
        /// The range's first page.
        start: u64,
        /// Its end.
        end: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Changing the host protection of a range (to drop KVM's translations) failed.
    #[error("cannot change the host protection of guest pages {start:#x}..{end:#x}")]
    Protect {
        /// The range's first page.
        start: u64,
        /// Its end.
        end: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A guest address range the guest asked the VMM to access lies (partly) outside the
/// memory it may use: the caller answers EFAULT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad guest address range {addr:#x}+{len:#x}")]
pub struct Efault {
    /// The range's start.
    pub addr: u64,
    /// Its length.
    pub len: u64,
}

/// How the host mapping behind guest memory was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous private memory: zero until written (or filled by a page server).
    Anonymous,
    /// A private, copy-on-write mapping of a snapshot's memory file.
    PrivateFile,
}

/// The guest's memory: guest-physical addresses 0..size, backed by one host mapping.
/// Every access is bounds-checked; the `*_user` accessors also refuse the system area.
pub struct GuestMemory {
    mem: GuestMemoryMmap,
    host: *mut u8,
    size: u64,
    backing: Backing,
}

// SAFETY: `host` points into the mapping owned by `mem`, which lives as long as this
// struct; the mapping itself is plain memory usable from any thread.
unsafe impl Send for GuestMemory {}
// SAFETY: as above; shared access only goes through vm-memory's volatile accessors or
// through `discard`, which replaces pages with an mmap call.
unsafe impl Sync for GuestMemory {}

impl GuestMemory {
    /// Fresh anonymous guest memory of `size` bytes (page-aligned), zero-filled.
    pub fn anonymous(size: u64) -> Result<Self, MemoryError> {
        let region = MmapRegionBuilder::new(size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE)
            .build()
            .map_err(|source| MemoryError::Map { size, source })?;
        Self::from_region(region, size, Backing::Anonymous)
    }

    /// Guest memory mapped privately (copy-on-write) from `file`, which holds `size`
    /// bytes of guest memory: the kernel faults pages in from the file on first touch.
    pub fn private_file(file: File, size: u64) -> Result<Self, MemoryError> {
        let region = MmapRegionBuilder::new(size as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::new(file, 0))
            .build()
            .map_err(|source| MemoryError::Map { size, source })?;
        Self::from_region(region, size, Backing::PrivateFile)
    }

    /// Guest memory over `size` bytes of an existing host mapping at `host` that this
    /// value does not own (a VM shell's, [`super::shell`]): dropping it leaves the
    /// mapping in place.
    ///
    /// # Safety
    ///
    /// `host..host+size` must be one readable and writable mapping that outlives the
    /// returned value, made with the flags `backing` names.
    pub unsafe fn borrowed(
        host: *mut u8,
        size: u64,
        backing: Backing,
    ) -> Result<Self, MemoryError> {
        let flags = match backing {
            Backing::Anonymous => libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            Backing::PrivateFile => libc::MAP_PRIVATE | libc::MAP_NORESERVE,
        };
        // SAFETY: the caller guarantees the mapping (see above).
        let region = unsafe {
            MmapRegion::build_raw(
                host,
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
            )
        }
        .map_err(|source| MemoryError::Map { size, source })?;
        Self::from_region(region, size, backing)
    }

    fn from_region(region: MmapRegion, size: u64, backing: Backing) -> Result<Self, MemoryError> {
        let host = region.as_ptr();
        let region = GuestRegionMmap::new(region, GuestAddress(0)).ok_or(MemoryError::Region)?;
        let mem = GuestMemoryMmap::from_regions(vec![region]).map_err(|_| MemoryError::Region)?;
        Ok(Self {
            mem,
            host,
            size,
            backing,
        })
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// How the host mapping was made.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Host virtual address of guest-physical address 0.
    pub fn host_addr(&self) -> u64 {
        self.host as u64
    }

    /// Checks that `addr..addr+len` is memory the guest program may pass to a system
    /// call: inside guest memory and above the VMM's system area.
    pub fn check_user(&self, addr: u64, len: u64) -> Result<(), Efault> {
        let end = addr.checked_add(len).ok_or(Efault { addr, len })?;
        if addr < SYSTEM_AREA_END || end > self.size {
            return Err(Efault { addr, len });
        }
        Ok(())
    }

    /// Copies guest memory at `addr` into `buf`. Any address in guest memory.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Efault> {
        let len = buf.len() as u64;
        self.mem
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| Efault { addr, len })
    }

    /// Copies `data` into guest memory at `addr`. Any address in guest memory.
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), Efault> {
        let len = data.len() as u64;
        self.mem
            .write_slice(data, GuestAddress(addr))
            .map_err(|_| Efault { addr, len })
    }

    /// Reads a `T` at `addr`. Any address in guest memory.
    pub fn read_obj<T: ByteValued>(&self, addr: u64) -> Result<T, Efault> {
        let len = size_of::<T>() as u64;
        self.mem
            .read_obj(GuestAddress(addr))
            .map_err(|_| Efault { addr, len })
    }

    /// Writes `value` at `addr`. Any address in guest memory.
    pub fn write_obj<T: ByteValued>(&self, addr: u64, value: T) -> Result<(), Efault> {
        let len = size_of::<T>() as u64;
        self.mem
            .write_obj(value, GuestAddress(addr))
            .map_err(|_| Efault { addr, len })
    }

    /// Reads `len` bytes of user memory (checked with [`check_user`](Self::check_user)).
    pub fn read_user(&self, addr: u64, len: u64) -> Result<Vec<u8>, Efault> {
        self.check_user(addr, len)?;
        let mut buf = vec![0; len as usize];
        self.read(addr, &mut buf)?;
        Ok(buf)
    }

    /// Writes `data` to user memory (checked with [`check_user`](Self::check_user)).
    pub fn write_user(&self, addr: u64, data: &[u8]) -> Result<(), Efault> {
        self.check_user(addr, data.len() as u64)?;
        self.write(addr, data)
    }

    /// Reads a `T` from user memory (checked with [`check_user`](Self::check_user)).
    pub fn read_user_obj<T: ByteValued>(&self, addr: u64) -> Result<T, Efault> {
        self.check_user(addr, size_of::<T>() as u64)?;
        self.read_obj(addr)
    }

    /// Writes `value` to user memory (checked with [`check_user`](Self::check_user)).
    pub fn write_user_obj<T: ByteValued>(&self, addr: u64, value: T) -> Result<(), Efault> {
        self.check_user(addr, size_of::<T>() as u64)?;
        self.write_obj(addr, value)
    }

    /// Reads a NUL-terminated string from user memory, without its NUL. `Efault` if
    /// user memory ends before the NUL or the first `max` bytes hold none.
    pub fn read_user_cstr(&self, addr: u64, max: u64) -> Result<Vec<u8>, Efault> {
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        let mut at = addr;
        while (out.len() as u64) < max {
            let want = (chunk.len() as u64)
                .min(self.size.saturating_sub(at))
                .min(max - out.len() as u64);
            if want == 0 {
                break;
            }
            self.check_user(at, want)?;
            self.read(at, &mut chunk[..want as usize])?;
            if let Some(nul) = chunk[..want as usize].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..nul]);
                return Ok(out);
            }
            out.extend_from_slice(&chunk[..want as usize]);
            at += want;
        }
        Err(Efault {
            addr,
            len: out.len() as u64,
        })
    }

    /// Asserts that `start..end` is page-aligned and inside guest memory (callers pass
    /// ranges the address space checked); returns whether it is empty.
    fn page_range(&self, start: u64, end: u64) -> bool {
        assert!(
            start.is_multiple_of(PAGE_SIZE)
                && end.is_multiple_of(PAGE_SIZE)
                && start <= end
                && end <= self.size
        );
        start == end
    }

    /// Makes KVM drop its translations of the pages `start..end` (page aligned, inside
    /// guest memory) without changing them: the host range is made read-only and
    /// read-write again, and the host kernel tells KVM (its MMU notifier) to zap every
    /// mapping of those pages. Needed after the VMM took a permission away in the guest's
    /// page tables: KVM with shadow paging (this host's `kvm_pvm`) notices the guest's
    /// own writes to its page tables but not the VMM's.
    pub fn drop_translations(&self, start: u64, end: u64) -> Result<(), MemoryError> {
        if self.page_range(start, end) {
            return Ok(());
        }
        for prot in [libc::PROT_READ, libc::PROT_READ | libc::PROT_WRITE] {
            // SAFETY: the range lies inside the mapping this struct owns (asserted above);
            // no other thread writes guest memory meanwhile (the vCPU is stopped, and a
            // page server fills pages with UFFDIO_COPY, which a read-only range accepts).
            let ret = unsafe {
                libc::mprotect(
                    self.host.add(start as usize).cast(),
                    (end - start) as usize,
                    prot,
                )
            };
            if ret != 0 {
                return Err(MemoryError::Protect {
                    start,
                    end,
                    source: io::Error::last_os_error(),
                });
            }
        }
        Ok(())
    }

    /// Makes the pages of `start..end` (page-aligned, inside guest memory) read as zero
    /// again, as freshly mapped anonymous memory does, by mapping new anonymous pages
    /// over them. This works for every backing: anonymous, a private file mapping
    /// (where `MADV_DONTNEED` would bring back file contents) and memory served by a
    /// page server (the new pages are no longer registered with it).
    pub fn discard(&self, start: u64, end: u64) -> Result<(), MemoryError> {
        if self.page_range(start, end) {
            return Ok(());
        }
        // SAFETY: the range lies inside the mapping this struct owns (asserted above), so
        // MAP_FIXED only replaces guest pages; nothing holds references into guest memory
        // across this call (all access copies through vm-memory).
        let ret = unsafe {
            libc::mmap(
                self.host.add(start as usize).cast(),
                (end - start) as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ret == libc::MAP_FAILED {
            return Err(MemoryError::Discard {
                start,
                end,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Which pages of guest memory are resident in host memory (`mincore`), one bool
    /// per page; `None` if the kernel cannot tell. A page of anonymous memory that is
    /// not resident has never been written (or was discarded) and reads as zero.
    fn resident_pages(&self) -> Option<Vec<bool>> {
        let pages = (self.size / PAGE_SIZE) as usize;
        let mut vec = vec![0u8; pages];
        // SAFETY: the range is this struct's own mapping and `vec` has one byte per page.
        let rc = unsafe { libc::mincore(self.host.cast(), self.size as usize, vec.as_mut_ptr()) };
        (rc == 0).then(|| vec.iter().map(|b| b & 1 != 0).collect())
    }

    /// Writes all of guest memory to `file` as a sparse file: pages that are entirely
    /// zero are left as holes. Returns the number of data bytes written. For anonymous
    /// memory only resident pages are read: the others are zero.
    pub fn dump_sparse(&self, file: &File) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        file.set_len(self.size)?;
        let resident = match self.backing {
            Backing::Anonymous => self.resident_pages(),
            Backing::PrivateFile => None,
        };
        let mut page = vec![0u8; PAGE_SIZE as usize];
        let mut written = 0;
        for index in 0..self.size / PAGE_SIZE {
            if resident.as_ref().is_some_and(|r| !r[index as usize]) {
                continue;
            }
            let at = index * PAGE_SIZE;
            self.read(at, &mut page).map_err(io::Error::other)?;
            if page.iter().any(|&b| b != 0) {
                file.write_all_at(&page, at)?;
                written += PAGE_SIZE;
            }
        }
        Ok(written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ranges_are_bounds_checked() {
        let mem = GuestMemory::anonymous(16 << 20).unwrap();
        assert!(mem.check_user(SYSTEM_AREA_END, 4096).is_ok());
        assert!(mem.check_user(0, 1).is_err(), "null page");
        assert!(mem.check_user(0x8000, 8).is_err(), "system area");
        assert!(mem.check_user((16 << 20) - 8, 8).is_ok());
        assert!(mem.check_user((16 << 20) - 8, 9).is_err());
        assert!(mem.check_user(u64::MAX - 2, 8).is_err(), "overflow");
        assert!(mem.read_user(0x30_0000, u64::MAX).is_err());
    }

    #[test]
    fn discard_zeroes_pages() {
        let mem = GuestMemory::anonymous(16 << 20).unwrap();
        mem.write(0x40_0000, &[7u8; 8192]).unwrap();
        mem.discard(0x40_0000, 0x40_1000).unwrap();
        assert_eq!(mem.read_obj::<u64>(0x40_0000).unwrap(), 0);
        assert_eq!(
            mem.read_obj::<u64>(0x40_1000).unwrap(),
            0x0707_0707_0707_0707
        );
    }

    #[test]
    fn sparse_dump_keeps_data_and_leaves_zero_pages_as_holes() {
        use std::os::unix::fs::MetadataExt;
        let mem = GuestMemory::anonymous(16 << 20).unwrap();
        mem.write(0x20_0000, b"first").unwrap();
        mem.write(0x90_0fff, b"xy").unwrap(); // spans two pages
        mem.write(0xa0_0000, &[0u8; 4096]).unwrap(); // resident but zero
        let path = std::env::temp_dir().join(format!("reap-dump-{}", std::process::id()));
        let file = File::create(&path).unwrap();
        assert_eq!(mem.dump_sparse(&file).unwrap(), 3 * 4096);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 16 << 20);
        assert_eq!(&bytes[0x20_0000..0x20_0005], b"first");
        assert_eq!(&bytes[0x90_0fff..0x90_1001], b"xy");
        assert!(bytes[..0x20_0000].iter().all(|&b| b == 0));
        assert!(
            std::fs::metadata(&path).unwrap().blocks() * 512 <= 64 * 4096,
            "sparse on disk"
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn cstr_reads_stop_at_nul_and_limit() {
        let mem = GuestMemory::anonymous(16 << 20).unwrap();
        mem.write(0x30_0000, b"/proc/self/exe\0junk").unwrap();
        assert_eq!(
            mem.read_user_cstr(0x30_0000, 100).unwrap(),
            b"/proc/self/exe"
        );
        assert!(mem.read_user_cstr(0x30_0000, 4).is_err());
        assert!(mem.read_user_cstr(0x10, 4).is_err());
    }
}
