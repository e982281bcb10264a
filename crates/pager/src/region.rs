//! Guest memory regions: where each part of the memory file lives in the owner's
//! address space.

use serde::{Deserialize, Serialize};

/// 4 KiB pages (anonymous memory).
pub const PAGE_4K: u64 = 4096;
/// 2 MiB pages (hugetlbfs-backed Firecracker memory).
pub const PAGE_2M: u64 = 2 << 20;

/// One contiguous piece of guest memory registered with the userfaultfd: `len` bytes at
/// `host_addr` in the owner's address space hold the memory file's bytes
/// `[file_offset, file_offset + len)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Region {
    /// Start of the mapping in the owner's address space.
    pub host_addr: u64,
    /// Length in bytes.
    pub len: u64,
    /// Offset of the region's first byte in the memory file.
    pub file_offset: u64,
    /// Page size of the mapping: [`PAGE_4K`] or [`PAGE_2M`].
    pub page_size: u64,
}

/// A region list that cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegionError {
    /// No regions.
    #[error("no memory regions")]
    Empty,
    /// A page size other than 4 KiB or 2 MiB.
    #[error("region at {host_addr:#x}: unsupported page size {page_size}")]
    PageSize {
        /// The region's address.
        host_addr: u64,
        /// Its page size.
        page_size: u64,
    },
    /// The regions do not all use the same page size.
    #[error("regions mix page sizes {0} and {1}")]
    MixedPageSizes(u64, u64),
    /// Address, length or file offset not a multiple of the page size, or a zero length.
    #[error(
        "region at {host_addr:#x} (len {len:#x}, file offset {file_offset:#x}) is not aligned to its {page_size}-byte pages"
    )]
    Misaligned {
        /// The region's address.
        host_addr: u64,
        /// Its length.
        len: u64,
        /// Its file offset.
        file_offset: u64,
        /// Its page size.
        page_size: u64,
    },
    /// The region wraps around the address space or the file offset range.
    #[error("region at {host_addr:#x} overflows")]
    Overflow {
        /// The region's address.
        host_addr: u64,
    },
    /// Two regions share host addresses.
    #[error("regions at {0:#x} and {1:#x} overlap in the address space")]
    OverlapHost(u64, u64),
    /// Two regions share bytes of the memory file.
    #[error("regions at {0:#x} and {1:#x} overlap in the memory file")]
    OverlapFile(u64, u64),
    /// A region reaches past the end of the memory file.
    #[error(
        "region at {host_addr:#x} needs memory file bytes up to {end:#x}, but the file has {file_len:#x}"
    )]
    BeyondFile {
        /// The region's address.
        host_addr: u64,
        /// One past the last file byte it needs.
        end: u64,
        /// The memory file's length.
        file_len: u64,
    },
}

impl Region {
    /// One past the region's last host address.
    pub fn host_end(&self) -> u64 {
        self.host_addr + self.len
    }

    /// One past the region's last byte in the memory file.
    pub fn file_end(&self) -> u64 {
        self.file_offset + self.len
    }

    /// Checks page size, alignment and overflow of one region.
    pub fn validate(&self) -> Result<(), RegionError> {
        let ps = self.page_size;
        if ps != PAGE_4K && ps != PAGE_2M {
            return Err(RegionError::PageSize {
                host_addr: self.host_addr,
                page_size: ps,
            });
        }
        if self.len == 0
            || !self.host_addr.is_multiple_of(ps)
            || !self.len.is_multiple_of(ps)
            || !self.file_offset.is_multiple_of(ps)
        {
            return Err(RegionError::Misaligned {
                host_addr: self.host_addr,
                len: self.len,
                file_offset: self.file_offset,
                page_size: ps,
            });
        }
        if self.host_addr.checked_add(self.len).is_none()
            || self.file_offset.checked_add(self.len).is_none()
        {
            return Err(RegionError::Overflow {
                host_addr: self.host_addr,
            });
        }
        Ok(())
    }
}

/// A validated region list, sorted by host address, with lookups both ways.
#[derive(Debug, Clone)]
pub(crate) struct Regions {
    by_host: Vec<Region>,
    /// Indexes into `by_host`, sorted by file offset.
    by_file: Vec<usize>,
    page_size: u64,
}

impl Regions {
    /// Validates `regions` against each other and a memory file of `file_len` bytes.
    pub(crate) fn new(mut regions: Vec<Region>, file_len: u64) -> Result<Regions, RegionError> {
        let first = *regions.first().ok_or(RegionError::Empty)?;
        for r in &regions {
            r.validate()?;
            if r.page_size != first.page_size {
                return Err(RegionError::MixedPageSizes(first.page_size, r.page_size));
            }
            if r.file_end() > file_len {
                return Err(RegionError::BeyondFile {
                    host_addr: r.host_addr,
                    end: r.file_end(),
                    file_len,
                });
            }
        }
        regions.sort_by_key(|r| r.host_addr);
        for w in regions.windows(2) {
            if w[0].host_end() > w[1].host_addr {
                return Err(RegionError::OverlapHost(w[0].host_addr, w[1].host_addr));
            }
        }
        let mut by_file: Vec<usize> = (0..regions.len()).collect();
        by_file.sort_by_key(|&i| regions[i].file_offset);
        for w in by_file.windows(2) {
            let (a, b) = (&regions[w[0]], &regions[w[1]]);
            if a.file_end() > b.file_offset {
                return Err(RegionError::OverlapFile(a.host_addr, b.host_addr));
            }
        }
        Ok(Regions {
            by_host: regions,
            by_file,
            page_size: first.page_size,
        })
    }

    pub(crate) fn page_size(&self) -> u64 {
        self.page_size
    }

    pub(crate) fn as_slice(&self) -> &[Region] {
        &self.by_host
    }

    /// The region holding host address `addr`.
    pub(crate) fn by_addr(&self, addr: u64) -> Option<&Region> {
        let i = self.by_host.partition_point(|r| r.host_end() <= addr);
        self.by_host.get(i).filter(|r| r.host_addr <= addr)
    }

    /// The region holding memory-file offset `off`.
    pub(crate) fn by_file_offset(&self, off: u64) -> Option<&Region> {
        let i = self
            .by_file
            .partition_point(|&i| self.by_host[i].file_end() <= off);
        self.by_file
            .get(i)
            .map(|&i| &self.by_host[i])
            .filter(|r| r.file_offset <= off)
    }

    /// The host address of memory-file offset `off`.
    pub(crate) fn host_addr_of(&self, off: u64) -> Option<u64> {
        self.by_file_offset(off)
            .map(|r| r.host_addr + (off - r.file_offset))
    }

    /// The host ranges `[start, end)` whose memory-file bytes are all holes, in whole
    /// pages of the regions' page size (a 2 MiB page that holds any data is not a hole),
    /// sorted by address. `data` is the memory file's data extents: sorted, disjoint
    /// `[start, end)` byte ranges ([`crate::MemoryFile::data_extents`]). A hole that
    /// spans two regions gives one range per region.
    pub(crate) fn hole_ranges(&self, data: &[(u64, u64)]) -> Vec<(u64, u64)> {
        let ps = self.page_size;
        let mut out = Vec::new();
        for r in &self.by_host {
            let (start, end) = (r.file_offset, r.file_end());
            let mut push = |from: u64, to: u64| {
                // Whole pages only; the region's file offset is page aligned.
                let (from, to) = (from.next_multiple_of(ps), to - to % ps);
                if from < to {
                    out.push((r.host_addr + (from - start), r.host_addr + (to - start)));
                }
            };
            let mut at = start;
            let first = data.partition_point(|&(_, e)| e <= start);
            for &(s, e) in data[first..].iter().take_while(|&&(s, _)| s < end) {
                if s > at {
                    push(at, s);
                }
                at = at.max(e);
            }
            if at < end {
                push(at, end);
            }
        }
        out
    }
}

/// `ranges` (sorted, disjoint `[start, end)`) without the pages of size `page_size` at
/// `keep` (sorted page addresses): the ranges split around every kept page.
pub(crate) fn without_pages(
    ranges: &[(u64, u64)],
    keep: &[u64],
    page_size: u64,
) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(ranges.len());
    let mut k = 0;
    for &(start, end) in ranges {
        let mut at = start;
        while k < keep.len() && keep[k] < start {
            k += 1;
        }
        while k < keep.len() && keep[k] < end {
            if keep[k] > at {
                out.push((at, keep[k]));
            }
            at = at.max(keep[k] + page_size);
            k += 1;
        }
        if at < end {
            out.push((at, end));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(host_addr: u64, len: u64, file_offset: u64) -> Region {
        Region {
            host_addr,
            len,
            file_offset,
            page_size: PAGE_4K,
        }
    }

    #[test]
    fn misaligned_regions_are_refused() {
        assert!(matches!(
            r(0x1000, 0x1800, 0).validate(),
            Err(RegionError::Misaligned { .. })
        ));
        assert!(matches!(
            r(0x1800, 0x1000, 0).validate(),
            Err(RegionError::Misaligned { .. })
        ));
        assert!(matches!(
            r(0x1000, 0x1000, 0x10).validate(),
            Err(RegionError::Misaligned { .. })
        ));
        assert!(matches!(
            r(0x1000, 0, 0).validate(),
            Err(RegionError::Misaligned { .. })
        ));
        let huge = Region {
            host_addr: 0x20_0000,
            len: 0x1000,
            file_offset: 0,
            page_size: PAGE_2M,
        };
        assert!(matches!(
            huge.validate(),
            Err(RegionError::Misaligned { .. })
        ));
        let odd = Region {
            page_size: 8192,
            ..r(0x2000, 0x2000, 0)
        };
        assert!(matches!(odd.validate(), Err(RegionError::PageSize { .. })));
        assert!(matches!(
            r(u64::MAX - 0xfff, 0x2000, 0).validate(),
            Err(RegionError::Overflow { .. })
        ));
    }

    #[test]
    fn overlapping_or_oversized_region_lists_are_refused() {
        let e = Regions::new(
            vec![r(0x10000, 0x4000, 0), r(0x12000, 0x1000, 0x8000)],
            1 << 20,
        );
        assert!(matches!(e, Err(RegionError::OverlapHost(..))));
        let e = Regions::new(
            vec![r(0x10000, 0x4000, 0), r(0x20000, 0x1000, 0x3000)],
            1 << 20,
        );
        assert!(matches!(e, Err(RegionError::OverlapFile(..))));
        let e = Regions::new(vec![r(0x10000, 0x4000, 0x1000)], 0x4000);
        assert!(matches!(e, Err(RegionError::BeyondFile { .. })));
        let mixed = Region {
            host_addr: 0x40_0000,
            len: PAGE_2M,
            file_offset: PAGE_2M,
            page_size: PAGE_2M,
        };
        let e = Regions::new(vec![r(0x10000, 0x4000, 0), mixed], 1 << 30);
        assert!(matches!(e, Err(RegionError::MixedPageSizes(..))));
        assert!(matches!(Regions::new(vec![], 0), Err(RegionError::Empty)));
    }

    #[test]
    fn hole_ranges_are_the_gaps_between_data_extents_in_whole_pages() {
        // Two regions whose file order is the reverse of their address order.
        let regs = Regions::new(
            vec![r(0x80000, 0x8000, 0), r(0x10000, 0x8000, 0x8000)],
            0x10000,
        )
        .unwrap();
        // Data: file pages 1, 3..5 and half of page 9 (0x9000..0x9800), then 0xf000...
        let data = [
            (0x1000, 0x2000),
            (0x3000, 0x5000),
            (0x9000, 0x9800),
            (0xf000, 0x10000),
        ];
        assert_eq!(
            regs.hole_ranges(&data),
            vec![
                // File 0x8000..0x9000 and 0xa000..0xf000 (page 9 holds data), in the
                // region at 0x10000.
                (0x10000, 0x11000),
                (0x12000, 0x17000),
                // File 0..0x1000, 0x2000..0x3000 and 0x5000..0x8000 (the end of the
                // region), in the region at 0x80000.
                (0x80000, 0x81000),
                (0x82000, 0x83000),
                (0x85000, 0x88000),
            ]
        );
        // No data at all: every region is one hole; all data: none.
        assert_eq!(
            regs.hole_ranges(&[]),
            vec![(0x10000, 0x18000), (0x80000, 0x88000)]
        );
        assert!(regs.hole_ranges(&[(0, 0x10000)]).is_empty());
    }

    #[test]
    fn hole_ranges_of_2m_regions_count_only_pages_without_any_data() {
        const M: u64 = PAGE_2M;
        let regs = Regions::new(
            vec![Region {
                host_addr: 0x4000_0000,
                len: 4 * M,
                file_offset: 0,
                page_size: M,
            }],
            4 * M,
        )
        .unwrap();
        // One 4 KiB block of data in huge pages 0 and 3; huge pages 1 and 2 are holes.
        let data = [(0x1000, 0x2000), (4 * M - 0x1000, 4 * M)];
        assert_eq!(
            regs.hole_ranges(&data),
            vec![(0x4000_0000 + M, 0x4000_0000 + 3 * M)]
        );
    }

    #[test]
    fn without_pages_splits_ranges_around_kept_pages() {
        let ranges = [(0x1000, 0x5000), (0x8000, 0x9000), (0xa000, 0xc000)];
        // Kept: before everything, the first page of a range, one in the middle, a
        // whole one-page range, the last page of a range, and one between ranges.
        let keep = [0x0, 0x1000, 0x3000, 0x6000, 0x8000, 0xb000];
        assert_eq!(
            without_pages(&ranges, &keep, 0x1000),
            vec![(0x2000, 0x3000), (0x4000, 0x5000), (0xa000, 0xb000)]
        );
        assert_eq!(without_pages(&ranges, &[], 0x1000), ranges.to_vec());
    }

    #[test]
    fn lookups_map_addresses_and_file_offsets_both_ways() {
        // Two regions whose file order is the reverse of their address order.
        let regs = Regions::new(
            vec![r(0x80000, 0x4000, 0), r(0x10000, 0x2000, 0x4000)],
            0x6000,
        )
        .unwrap();
        assert_eq!(regs.by_addr(0x10fff).map(|r| r.file_offset), Some(0x4000));
        assert_eq!(regs.by_addr(0x12000), None);
        assert_eq!(regs.by_addr(0x83fff).map(|r| r.file_offset), Some(0));
        assert_eq!(regs.host_addr_of(0x1000), Some(0x81000));
        assert_eq!(regs.host_addr_of(0x5000), Some(0x11000));
        assert_eq!(regs.host_addr_of(0x6000), None);
    }
}
