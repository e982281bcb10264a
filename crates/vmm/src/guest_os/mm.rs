//! The guest program's address space: the heap (brk) growing up from the end of the
//! program, anonymous mappings handed out top-down below the stack, and the stack at
//! the top of guest memory.
//!
//! Invariant: guest memory outside the program's segments, the stack, the heap and the
//! mappings reads as zero. Whatever leaves the heap or a mapping is reported to the
//! caller as a range to discard (zero), so a later mapping starts out zeroed as Linux
//! guarantees.
//!
//! The address space also keeps each page's protection (`mmap`'s and `mprotect`'s
//! `prot`; read-write where none was asked for) and the stack guard gap below the stack,
//! which is never mapped. The page tables follow: a 2 MiB range with one protection is
//! one large page, a range with several gets a 4 KiB page table from the pool in the
//! system area. The caller writes the entries [`take_page_table_writes`]
//! (AddressSpace::take_page_table_writes) returns into guest memory.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::arch::layout::{
    LARGE_PAGE_SIZE, PAGE_SIZE, PT_POOL_END, PT_POOL_START, STACK_GUARD_GAP, STACK_SIZE,
    SYSTEM_AREA_END, page_align_down, page_align_up,
};
use crate::arch::{self, Protection};

/// A failed memory request, answered to the guest as this errno.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MmError {
    /// EINVAL: misaligned, zero-length or out-of-range request.
    Invalid,
    /// ENOMEM: no room left in guest memory.
    NoMemory,
    /// EEXIST: MAP_FIXED_NOREPLACE over an existing mapping.
    Exists,
    /// EFAULT: the old range of an mremap is not one mapping.
    Fault,
}

/// Page ranges (start, end) that must be made to read as zero.
pub type Discards = Vec<(u64, u64)>;

/// The result of an mremap: the new address, a copy (from, to, len) to make before the
/// discards, and the ranges to zero.
pub type Remap = (u64, Option<(u64, u64, u64)>, Discards);

/// Pages in a 2 MiB range: entries in one page table.
const PAGES_PER_TABLE: usize = 512;
const _: () = assert!(PAGES_PER_TABLE as u64 * PAGE_SIZE == LARGE_PAGE_SIZE);

/// Page-table entries to write after a change of protections.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageTableWrites {
    /// (guest address, value) of each 8-byte entry, in the order to write them.
    pub entries: Vec<(u64, u64)>,
    /// Page ranges where some page lost a permission it had: translations the vCPU
    /// may have cached for them must be dropped before the guest runs again.
    pub lowered: Vec<(u64, u64)>,
}

/// The program's address space: where its heap ends, which ranges it has mapped, and
/// the protection of each page. Only the bookkeeping: guest memory itself (page tables
/// included) is changed by the caller, from the ranges and entries the methods return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressSpace {
    mem_size: u64,
    brk_start: u64,
    brk: u64,
    /// Anonymous mappings: start -> end, non-overlapping, page-aligned.
    mappings: BTreeMap<u64, u64>,
    /// Ranges whose protection is not read-write: start -> (end, protection);
    /// non-overlapping, page-aligned, adjacent ranges of one protection merged. The
    /// stack guard gap is not listed: it is always `Protection::None`.
    protections: BTreeMap<u64, (u64, Protection)>,
    /// The page table of each 2 MiB range that has (or had) pages of different
    /// protections: range start -> table address in the pool. A table stays with its
    /// range for good, so the translations a vCPU caches never mix two ranges.
    page_tables: BTreeMap<u64, u64>,
    /// What `/proc/self/maps` names ranges by (the program, the dynamic loader, file
    /// mappings: their paths): start -> (end, name); non-overlapping, page-aligned.
    #[serde(default)]
    names: BTreeMap<u64, (u64, String)>,
    /// 2 MiB ranges whose entries must be rewritten.
    #[serde(skip)]
    dirty: BTreeSet<u64>,
    /// Ranges where some page lost a permission since the last
    /// `take_page_table_writes`.
    #[serde(skip)]
    lowered: Vec<(u64, u64)>,
}

impl AddressSpace {
    /// `program_end` is the first page after the loaded program.
    /// The page tables must be the ones `arch::write_page_tables` writes (all of guest
    /// memory read-write); the entries for the stack guard gap are pending.
    pub fn new(mem_size: u64, program_end: u64) -> Self {
        let mut space = Self {
            mem_size,
            brk_start: program_end,
            brk: program_end,
            mappings: BTreeMap::new(),
            protections: BTreeMap::new(),
            page_tables: BTreeMap::new(),
            names: BTreeMap::new(),
            dirty: BTreeSet::new(),
            lowered: Vec::new(),
        };
        let (guard, guard_end) = space.stack_guard();
        space.mark_dirty(guard, guard_end);
        space
    }

    /// Size of the guest memory this address space lies in.
    pub fn mem_size(&self) -> u64 {
        self.mem_size
    }

    /// Checks what the methods rely on, for an address space read from a snapshot:
    /// guest memory holds the system area and the stack; the heap starts on a page
    /// above the system area and its break lies in guest memory; the mappings are
    /// page aligned, not empty, disjoint, and in guest memory above the system area.
    /// (Fixed mappings may cover the program, the heap or the stack.)
    pub fn check(&self) -> Result<(), &'static str> {
        if !self.mem_size.is_multiple_of(LARGE_PAGE_SIZE)
            || self.mem_size < SYSTEM_AREA_END + STACK_GUARD_GAP + STACK_SIZE
        {
            return Err("guest memory cannot hold the system area and the stack");
        }
        if !self.brk_start.is_multiple_of(PAGE_SIZE)
            || self.brk_start < SYSTEM_AREA_END
            || self.brk < self.brk_start
            || self.brk > self.mem_size
        {
            return Err("the heap lies outside guest memory");
        }
        let mut free_from = SYSTEM_AREA_END;
        for (&start, &end) in &self.mappings {
            if !start.is_multiple_of(PAGE_SIZE)
                || !end.is_multiple_of(PAGE_SIZE)
                || start < free_from
                || end <= start
                || end > self.mem_size
            {
                return Err("a mapping is misaligned, empty, overlapping or outside guest memory");
            }
            free_from = end;
        }
        let (guard, guard_end) = self.stack_guard();
        let mut free_from = SYSTEM_AREA_END;
        let mut last = None;
        for (&start, &(end, protection)) in &self.protections {
            if !start.is_multiple_of(PAGE_SIZE)
                || !end.is_multiple_of(PAGE_SIZE)
                || start < free_from
                || end <= start
                || end > self.mem_size
                || (start < guard_end && guard < end)
                || protection == Protection::ReadWrite
                || (start == free_from && last == Some(protection))
            {
                return Err(
                    "a protected range is misaligned, empty, overlapping, unmerged or outside guest memory",
                );
            }
            free_from = end;
            last = Some(protection);
        }
        let mut tables = BTreeSet::new();
        for (&region, &table) in &self.page_tables {
            if !region.is_multiple_of(LARGE_PAGE_SIZE)
                || region < SYSTEM_AREA_END
                || region >= self.mem_size
                || !table.is_multiple_of(PAGE_SIZE)
                || !(PT_POOL_START..PT_POOL_END).contains(&table)
                || !tables.insert(table)
            {
                return Err("a page table is misplaced or shared");
            }
        }
        Ok(())
    }

    /// Top of the area mappings may use: the stack guard gap and the stack are above it.
    fn mmap_top(&self) -> u64 {
        self.mem_size - STACK_SIZE - STACK_GUARD_GAP
    }

    /// The stack guard gap: (start, end). Never mapped.
    pub fn stack_guard(&self) -> (u64, u64) {
        let end = self.mem_size - STACK_SIZE;
        (end - STACK_GUARD_GAP, end)
    }

    /// The protection of the page that holds `addr`.
    pub fn protection_at(&self, addr: u64) -> Protection {
        let (guard, guard_end) = self.stack_guard();
        if (guard..guard_end).contains(&addr) {
            return Protection::None;
        }
        self.protections
            .range(..=addr)
            .next_back()
            .filter(|&(_, &(end, _))| end > addr)
            .map_or(Protection::ReadWrite, |(_, &(_, p))| p)
    }

    /// Sets the protection of the pages `start..end` (page aligned), except those of
    /// the stack guard gap and outside user memory, and marks their page-table entries
    /// for rewriting if it changed.
    pub fn set_protection(&mut self, start: u64, end: u64, protection: Protection) {
        let start = start.max(SYSTEM_AREA_END);
        let end = end.min(self.mem_size);
        let (guard, guard_end) = self.stack_guard();
        for (s, e) in [(start, end.min(guard)), (start.max(guard_end), end)] {
            if s < e {
                self.set_protection_in(s, e, protection);
            }
        }
    }

    fn set_protection_in(&mut self, start: u64, end: u64, protection: Protection) {
        let hit: Vec<(u64, u64, Protection)> = self
            .protections
            .range(..end)
            .filter(|&(_, &(e, _))| e > start)
            .map(|(&s, &(e, p))| (s, e, p))
            .collect();
        let mut listed = 0;
        let mut lowered = false;
        for &(s, e, p) in &hit {
            listed += e.min(end) - s.max(start);
            lowered |= p.loses_to(protection);
        }
        let unlisted = listed < end - start;
        lowered |= unlisted && Protection::ReadWrite.loses_to(protection);
        if lowered {
            self.lowered.push((start, end));
        }
        if !unlisted && hit.iter().all(|&(_, _, p)| p == protection) {
            return;
        }
        if hit.is_empty() && protection == Protection::ReadWrite {
            return;
        }
        for &(s, e, p) in &hit {
            self.protections.remove(&s);
            if s < start {
                self.protections.insert(s, (start, p));
            }
            if e > end {
                self.protections.insert(end, (e, p));
            }
        }
        if protection != Protection::ReadWrite {
            self.protections.insert(start, (end, protection));
            self.mark_dirty(start, end);
        } else {
            // Only the listed parts change: the rest was read-write already.
            for &(s, e, _) in &hit {
                self.mark_dirty(s.max(start), e.min(end));
            }
        }
        // Merge with equal neighbours.
        let mut merged: BTreeMap<u64, (u64, Protection)> = BTreeMap::new();
        for (&s, &(e, p)) in &self.protections {
            if let Some((_, (last_end, last_p))) = merged.iter_mut().next_back()
                && *last_end == s
                && *last_p == p
            {
                *last_end = e;
                continue;
            }
            merged.insert(s, (e, p));
        }
        self.protections = merged;
    }

    fn mark_dirty(&mut self, start: u64, end: u64) {
        let mut region = start - start % LARGE_PAGE_SIZE;
        while region < end {
            self.dirty.insert(region);
            region += LARGE_PAGE_SIZE;
        }
    }

    /// The page-table entries to write for the protections changed since the last call,
    /// and whether cached translations must be dropped. A 2 MiB range of one protection
    /// is one large page; a range of several uses its page table from the pool (taken
    /// the first time). When the pool is empty, the range stays one large page with the
    /// most permissive of its protections (never less than the program asked for).
    pub fn take_page_table_writes(&mut self) -> PageTableWrites {
        let mut entries = Vec::new();
        for region in std::mem::take(&mut self.dirty) {
            let region_end = region + LARGE_PAGE_SIZE;
            let mut pages = [Protection::ReadWrite; PAGES_PER_TABLE];
            let (guard, guard_end) = self.stack_guard();
            let listed = self
                .protections
                .range(..region_end)
                .rev()
                .take_while(|&(_, &(end, _))| end > region)
                .map(|(&start, &(end, p))| (start, end, p));
            for (start, end, p) in listed.chain([(guard, guard_end, Protection::None)]) {
                for (i, page) in pages.iter_mut().enumerate() {
                    let addr = region + i as u64 * PAGE_SIZE;
                    if (start..end).contains(&addr) {
                        *page = p;
                    }
                }
            }
            let first = pages[0];
            let uniform = pages.iter().all(|&p| p == first);
            let table = if uniform {
                None
            } else if let Some(&table) = self.page_tables.get(&region) {
                Some(table)
            } else if let Some(table) = self.free_table() {
                self.page_tables.insert(region, table);
                Some(table)
            } else {
                tracing::warn!(
                    "no page table left for the 2 MiB range at {region:#x}: its protections are not enforced"
                );
                None
            };
            let pde = match table {
                Some(table) => {
                    for (i, &p) in pages.iter().enumerate() {
                        let page = region + i as u64 * PAGE_SIZE;
                        entries.push((arch::pte_addr(table, page), arch::pte(page, p)));
                    }
                    arch::table_pde(table)
                }
                None => {
                    let most = pages.iter().fold(Protection::None, |a, &p| a.union(p));
                    arch::large_pde(region, most)
                }
            };
            entries.push((arch::pde_addr(region), pde));
        }
        PageTableWrites {
            entries,
            lowered: std::mem::take(&mut self.lowered),
        }
    }

    /// The lowest page of the pool no range uses.
    fn free_table(&self) -> Option<u64> {
        let used: BTreeSet<u64> = self.page_tables.values().copied().collect();
        (0..)
            .map(|i| PT_POOL_START + i * PAGE_SIZE)
            .take_while(|&t| t < PT_POOL_END)
            .find(|t| !used.contains(t))
    }

    /// The first page after the heap.
    fn heap_end(&self) -> u64 {
        // The break never exceeds the mmap top, so rounding it up cannot overflow.
        page_align_up(self.brk).unwrap_or(self.brk)
    }

    /// The start of the heap and the current break.
    pub fn brk_range(&self) -> (u64, u64) {
        (self.brk_start, self.brk)
    }

    /// Names `start..end` (page-aligned) by `name` in `/proc/self/maps`, replacing the
    /// names there. A range that is unmapped or mapped over loses its name.
    pub fn name_range(&mut self, start: u64, end: u64, name: &str) {
        self.unname(start, end);
        if start < end {
            self.names.insert(start, (end, name.to_string()));
        }
    }

    /// Removes the names of `start..end`, keeping those of the parts of named ranges
    /// outside it.
    fn unname(&mut self, start: u64, end: u64) {
        let hit: Vec<(u64, u64, String)> = self
            .names
            .range(..end)
            .filter(|(_, (e, _))| *e > start)
            .map(|(&s, (e, n))| (s, *e, n.clone()))
            .collect();
        for (s, e, name) in hit {
            self.names.remove(&s);
            if s < start {
                self.names.insert(s, (start, name.clone()));
            }
            if e > end {
                self.names.insert(end, (e, name));
            }
        }
    }

    fn name_at(&self, addr: u64) -> Option<&str> {
        self.names
            .range(..=addr)
            .next_back()
            .filter(|(_, (e, _))| *e > addr)
            .map(|(_, (_, n))| n.as_str())
    }

    /// Named ranges that are not mappings: the program's segments, below the heap.
    pub fn named_outside_mappings(&self) -> Vec<(u64, u64)> {
        self.names
            .iter()
            .filter(|&(&s, &(e, _))| !self.overlaps(s, e))
            .map(|(&s, &(e, _))| (s, e))
            .collect()
    }

    /// `start..end` as `/proc/self/maps` lists it: one area wherever the protection
    /// or the name changes (Linux splits its VMAs there too).
    pub fn areas(&self, start: u64, end: u64) -> Vec<(u64, u64, Protection, Option<&str>)> {
        let mut cuts = vec![start, end];
        let inside = |s: u64, e: u64| (s.max(start), e.min(end));
        for (&s, &(e, _)) in self
            .protections
            .range(..end)
            .filter(|(_, (e, _))| *e > start)
        {
            let (a, b) = inside(s, e);
            cuts.extend([a, b]);
        }
        for (&s, (e, _)) in self.names.range(..end).filter(|(_, (e, _))| *e > start) {
            let (a, b) = inside(s, *e);
            cuts.extend([a, b]);
        }
        cuts.sort_unstable();
        cuts.dedup();
        let mut out: Vec<(u64, u64, Protection, Option<&str>)> = Vec::new();
        for w in cuts.windows(2) {
            let (a, b) = (w[0], w[1]);
            let (prot, name) = (self.protection_at(a), self.name_at(a));
            match out.last_mut() {
                Some(last) if last.1 == a && last.2 == prot && last.3 == name => last.1 = b,
                _ => out.push((a, b, prot, name)),
            }
        }
        out
    }

    /// The mappings, as (start, end) page ranges in address order.
    pub fn mappings(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.mappings.iter().map(|(&s, &e)| (s, e))
    }

    /// Bytes mapped by the program: heap plus anonymous mappings.
    pub fn mapped_bytes(&self) -> u64 {
        let heap = self.heap_end() - self.brk_start;
        heap + self.mappings.iter().map(|(s, e)| e - s).sum::<u64>()
    }

    /// `brk(2)`: moves the program break to `request` if it fits, and returns the break
    /// in effect afterwards (the old one when the request is refused or zero).
    ///
    /// As on Linux, a request below the start of the heap is refused, and the heap may
    /// grow only into free memory below the stack: not over a mapping. Shrinking releases
    /// the pages above the new break, mappings placed there with `MAP_FIXED` included.
    pub fn brk(&mut self, request: u64) -> (u64, Discards) {
        if request < self.brk_start {
            return (self.brk, Vec::new());
        }
        let Some(new_end) = page_align_up(request) else {
            return (self.brk, Vec::new());
        };
        let old_end = self.heap_end();
        if new_end > old_end && (new_end > self.mmap_top() || self.overlaps(old_end, new_end)) {
            return (self.brk, Vec::new());
        }
        let discards = if new_end < old_end {
            self.remove(new_end, old_end);
            self.set_protection(new_end, old_end, Protection::ReadWrite);
            vec![(new_end, old_end)]
        } else {
            self.set_protection(old_end, new_end, Protection::ReadWrite);
            Vec::new()
        };
        self.brk = request;
        (self.brk, discards)
    }

    /// `mmap(2)` of anonymous memory. `fixed` places it exactly at `addr` (replacing
    /// what was there); `noreplace` fails instead of replacing; otherwise `addr` is a
    /// hint. Returns the address and the ranges to zero.
    pub fn mmap(
        &mut self,
        addr: u64,
        len: u64,
        fixed: bool,
        noreplace: bool,
    ) -> Result<(u64, Discards), MmError> {
        if len == 0 {
            return Err(MmError::Invalid);
        }
        // A length that overflows when rounded up is ENOMEM on Linux.
        let len = page_align_up(len).ok_or(MmError::NoMemory)?;
        if fixed || noreplace {
            if !addr.is_multiple_of(PAGE_SIZE) {
                return Err(MmError::Invalid);
            }
            let end = addr.checked_add(len).ok_or(MmError::NoMemory)?;
            if addr < SYSTEM_AREA_END || end > self.mem_size {
                return Err(MmError::NoMemory);
            }
            if noreplace && self.overlaps_used(addr, end) {
                return Err(MmError::Exists);
            }
            // Nothing is ever mapped in the stack guard gap.
            let (guard, guard_end) = self.stack_guard();
            if addr < guard_end && guard < end {
                return Err(MmError::NoMemory);
            }
            self.remove(addr, end);
            self.insert(addr, end);
            // Whatever was there before reads as zero now.
            return Ok((addr, vec![(addr, end)]));
        }
        let heap_end = self.heap_end();
        if addr != 0
            && addr.is_multiple_of(PAGE_SIZE)
            && let Some(end) = addr.checked_add(len)
            && addr >= heap_end
            && end <= self.mmap_top()
            && !self.overlaps(addr, end)
        {
            self.insert(addr, end);
            return Ok((addr, Vec::new()));
        }
        let start = self.find_gap(len).ok_or(MmError::NoMemory)?;
        self.insert(start, start + len);
        Ok((start, Vec::new()))
    }

    /// `munmap(2)`: removes `addr..addr+len`; unmapping memory that is not mapped is
    /// not an error.
    pub fn munmap(&mut self, addr: u64, len: u64) -> Result<Discards, MmError> {
        if !addr.is_multiple_of(PAGE_SIZE) || len == 0 {
            return Err(MmError::Invalid);
        }
        let end = page_align_up(len)
            .and_then(|l| addr.checked_add(l))
            .ok_or(MmError::Invalid)?;
        self.set_protection(addr, end, Protection::ReadWrite);
        Ok(self.remove(addr, end))
    }

    /// `mremap(2)`. Returns the new address, ranges to copy (from, to, len) before the
    /// discards, and the ranges to zero.
    pub fn mremap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        may_move: bool,
        fixed_to: Option<u64>,
    ) -> Result<Remap, MmError> {
        if !old.is_multiple_of(PAGE_SIZE) {
            return Err(MmError::Invalid);
        }
        let old_len = page_align_up(old_len).ok_or(MmError::Invalid)?;
        let new_len = page_align_up(new_len)
            .filter(|&l| l > 0)
            .ok_or(MmError::Invalid)?;
        // The mapping that holds `old`.
        let Some((&map_start, &map_end)) = self
            .mappings
            .range(..=old)
            .next_back()
            .filter(|&(_, &end)| end > old)
        else {
            return Err(MmError::Fault);
        };
        let old_end = old.checked_add(old_len).ok_or(MmError::Fault)?;
        if fixed_to.is_none() && new_len <= old_len {
            // Shrinking releases the tail, as munmap would (Linux does not require the
            // tail to be one mapping either).
            let discards = self.remove(old + new_len, old_end);
            return Ok((old, None, discards));
        }
        // Growing or moving: the old range must lie inside that one mapping. A zero
        // old_len asks Linux to duplicate a shared mapping, which it refuses for private
        // (here: all) mappings.
        if old_len == 0 {
            return Err(MmError::Invalid);
        }
        if old_end > map_end {
            return Err(MmError::Fault);
        }
        if let Some(to) = fixed_to {
            if !may_move || !to.is_multiple_of(PAGE_SIZE) {
                return Err(MmError::Invalid);
            }
            let to_end = to.checked_add(new_len).ok_or(MmError::Invalid)?;
            if to < old_end && old < to_end {
                return Err(MmError::Invalid);
            }
            let (addr, _) = self.mmap(to, new_len, true, false)?;
            // The copy overwrites the first `copied` bytes of the new range; the rest of
            // it (whatever was there before) and the old range must read as zero.
            let copied = old_len.min(new_len);
            let mut discards = vec![(addr + copied, addr + new_len)];
            discards.retain(|(s, e)| s < e);
            discards.extend(self.remove(old, old_end));
            return Ok((addr, Some((old, addr, copied)), discards));
        }
        let grow_end = old.checked_add(new_len).ok_or(MmError::NoMemory)?;
        if old_end == map_end
            && old_end >= self.heap_end()
            && grow_end <= self.mmap_top()
            && !self.overlaps(old_end, grow_end)
        {
            self.mappings.insert(map_start, grow_end);
            self.coalesce();
            return Ok((old, None, Vec::new()));
        }
        if !may_move {
            return Err(MmError::NoMemory);
        }
        let start = self.find_gap(new_len).ok_or(MmError::NoMemory)?;
        self.insert(start, start + new_len);
        let discards = self.remove(old, old_end);
        Ok((start, Some((old, start, old_len)), discards))
    }

    /// Whether `start..end` overlaps a mapping.
    fn overlaps(&self, start: u64, end: u64) -> bool {
        self.mappings
            .range(..end)
            .next_back()
            .is_some_and(|(_, &e)| e > start)
    }

    /// Whether `start..end` overlaps a mapping, the heap, the program (everything below
    /// the heap) or the stack.
    fn overlaps_used(&self, start: u64, end: u64) -> bool {
        self.overlaps(start, end) || start < self.heap_end() || end > self.mmap_top()
    }

    /// The highest free range of `len` bytes between the heap and the stack.
    fn find_gap(&self, len: u64) -> Option<u64> {
        let floor = self.heap_end();
        let mut top = self.mmap_top();
        // Mappings below the heap's end (placed there with MAP_FIXED) bound no gap: the
        // floor does.
        for (&start, &end) in self.mappings.iter().rev() {
            let bottom = end.max(floor);
            if top >= bottom && top - bottom >= len {
                return Some(top - len);
            }
            top = top.min(start);
            if top <= floor {
                return None;
            }
        }
        (top >= floor && top - floor >= len).then(|| top - len)
    }

    fn insert(&mut self, start: u64, end: u64) {
        self.mappings.insert(start, end);
        self.coalesce();
    }

    /// Removes `start..end` from the mappings and the heap; returns the page ranges
    /// that were in use and must now read as zero.
    fn remove(&mut self, start: u64, end: u64) -> Discards {
        self.unname(start, end);
        let mut discards = Vec::new();
        let hit: Vec<(u64, u64)> = self
            .mappings
            .range(..end)
            .filter(|&(_, &e)| e > start)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in hit {
            self.mappings.remove(&s);
            if s < start {
                self.mappings.insert(s, start);
            }
            if e > end {
                self.mappings.insert(end, e);
            }
            discards.push((s.max(start), e.min(end)));
        }
        discards
    }

    /// Merges adjacent mappings.
    fn coalesce(&mut self) {
        let mut merged: BTreeMap<u64, u64> = BTreeMap::new();
        for (&s, &e) in &self.mappings {
            if let Some((_, last_end)) = merged.iter_mut().next_back()
                && *last_end == s
            {
                *last_end = e;
                continue;
            }
            merged.insert(s, e);
        }
        self.mappings = merged;
    }

    /// Rounds a length the guest passed to whole pages for madvise-style calls.
    pub fn page_range(addr: u64, len: u64) -> Option<(u64, u64)> {
        if !addr.is_multiple_of(PAGE_SIZE) {
            return None;
        }
        let end = page_align_up(addr.checked_add(len)?)?;
        Some((page_align_down(addr), end))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MEM: u64 = 64 << 20;
    const END: u64 = 0x60_0000;

    #[test]
    fn names_and_protections_split_the_areas_and_follow_unmapping() {
        let mut a = space();
        let p = PAGE_SIZE;
        let (at, _) = a.mmap(0, 8 * p, false, false).unwrap();
        a.name_range(at, at + 6 * p, "/lib/libx.so");
        a.set_protection(at, at + 2 * p, Protection::Read);
        a.set_protection(at + 2 * p, at + 4 * p, Protection::ReadExec);
        let name = Some("/lib/libx.so");
        assert_eq!(
            a.areas(at, at + 8 * p),
            vec![
                (at, at + 2 * p, Protection::Read, name),
                (at + 2 * p, at + 4 * p, Protection::ReadExec, name),
                (at + 4 * p, at + 6 * p, Protection::ReadWrite, name),
                (at + 6 * p, at + 8 * p, Protection::ReadWrite, None),
            ]
        );
        // Unmapping the middle keeps the name of what is left on each side; a fresh
        // mapping over a named range has no name.
        a.munmap(at + p, 2 * p).unwrap();
        assert_eq!(
            a.areas(at, at + p),
            vec![(at, at + p, Protection::Read, name)]
        );
        assert_eq!(
            a.areas(at + 3 * p, at + 4 * p),
            vec![(at + 3 * p, at + 4 * p, Protection::ReadExec, name)]
        );
        a.mmap(at + 4 * p, p, true, false).unwrap();
        assert_eq!(
            a.areas(at + 4 * p, at + 6 * p),
            vec![
                (at + 4 * p, at + 5 * p, Protection::ReadWrite, None),
                (at + 5 * p, at + 6 * p, Protection::ReadWrite, name),
            ]
        );
        // A name outside every mapping (the program) is listed as such.
        a.name_range(0x40_0000, END, "/bin/fn");
        assert_eq!(a.named_outside_mappings(), vec![(0x40_0000, END)]);
        // The names are part of the state.
        let back: AddressSpace = serde_json::from_slice(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(back.areas(at, at + p), a.areas(at, at + p));
    }

    fn space() -> AddressSpace {
        AddressSpace::new(MEM, END)
    }

    #[test]
    fn brk_grows_shrinks_and_refuses_nonsense() {
        let mut a = space();
        assert_eq!(a.brk(0).0, END, "query");
        assert_eq!(a.brk(END + 10_000).0, END + 10_000);
        let (b, discards) = a.brk(END + 100);
        assert_eq!(b, END + 100);
        assert_eq!(discards, vec![(END + 4096, END + 12288)]);
        assert_eq!(a.brk(END - 4096).0, END + 100, "below start is refused");
        assert_eq!(a.brk(MEM).0, END + 100, "into the stack is refused");
    }

    #[test]
    fn mmap_is_top_down_and_munmap_zeroes() {
        let mut a = space();
        let (m1, d) = a.mmap(0, 5000, false, false).unwrap();
        assert!(d.is_empty());
        assert_eq!(m1, MEM - STACK_SIZE - STACK_GUARD_GAP - 8192);
        let (m2, _) = a.mmap(0, 4096, false, false).unwrap();
        assert_eq!(m2, m1 - 4096);
        assert_eq!(a.munmap(m1, 4096).unwrap(), vec![(m1, m1 + 4096)]);
        // The freed page is reused for the next fitting request.
        let (m3, _) = a.mmap(0, 4096, false, false).unwrap();
        assert_eq!(m3, m1);
        assert_eq!(
            a.munmap(m1 - 0x10_0000, 4096).unwrap(),
            vec![],
            "unmapped memory is fine"
        );
        assert_eq!(a.munmap(m1 + 1, 4096), Err(MmError::Invalid));
    }

    #[test]
    fn mmap_runs_out_of_memory_and_brk_cannot_cross_mappings() {
        let mut a = space();
        let free = MEM - STACK_SIZE - STACK_GUARD_GAP - END;
        assert_eq!(a.mmap(0, free + 4096, false, false), Err(MmError::NoMemory));
        let (m, _) = a.mmap(0, free - 4096, false, false).unwrap();
        assert_eq!(m, END + 4096);
        assert_eq!(a.brk(END + 8192).0, END, "heap would run into the mapping");
        assert_eq!(a.brk(END + 4096).0, END + 4096);
        assert_eq!(a.mmap(0, 4096, false, false), Err(MmError::NoMemory));
    }

    #[test]
    fn fixed_mappings_replace_and_noreplace_refuses() {
        let mut a = space();
        let (m, _) = a.mmap(0, 3 * 4096, false, false).unwrap();
        let (f, d) = a.mmap(m + 4096, 4096, true, false).unwrap();
        assert_eq!(f, m + 4096);
        assert_eq!(d, vec![(m + 4096, m + 8192)]);
        assert_eq!(a.mmap(m, 4096, false, true), Err(MmError::Exists));
        assert_eq!(
            a.mmap(END - 4096, 4096, false, true),
            Err(MmError::Exists),
            "the program"
        );
        assert_eq!(
            a.mmap(MEM - 4096, 4096, false, true),
            Err(MmError::Exists),
            "the stack"
        );
        assert_eq!(
            a.mmap(0x1000, 4096, true, false),
            Err(MmError::NoMemory),
            "system area"
        );
        assert_eq!(a.mmap(m + 1, 4096, true, false), Err(MmError::Invalid));
    }

    #[test]
    fn mremap_grows_in_place_moves_and_shrinks() {
        let mut a = space();
        let (m, _) = a.mmap(0, 8192, false, false).unwrap();
        // Nothing above m is free (the mmap top), so growing moves it.
        let (n, copy, discards) = a.mremap(m, 8192, 16384, true, None).unwrap();
        assert_ne!(n, m);
        assert_eq!(copy, Some((m, n, 8192)));
        assert_eq!(discards, vec![(m, m + 8192)]);
        // Shrinking stays in place and zeroes the tail.
        let (s, copy, discards) = a.mremap(n, 16384, 4096, false, None).unwrap();
        assert_eq!((s, copy), (n, None));
        assert_eq!(discards, vec![(n + 4096, n + 16384)]);
        // Growing into the freed tail works in place.
        let (g, copy, _) = a.mremap(n, 4096, 8192, false, None).unwrap();
        assert_eq!((g, copy), (n, None));
        assert_eq!(
            a.mremap(0x70_0000, 4096, 8192, true, None),
            Err(MmError::Fault)
        );
    }

    #[test]
    fn mremap_fixed_zeroes_around_the_copy_not_over_it() {
        let mut a = space();
        let (m, _) = a.mmap(0, 2 * 4096, false, false).unwrap();
        let to = END + 0x10_0000;
        let (at, copy, discards) = a.mremap(m, 2 * 4096, 3 * 4096, true, Some(to)).unwrap();
        assert_eq!(at, to);
        assert_eq!(copy, Some((m, to, 2 * 4096)));
        // The copied pages keep the data; only the grown page and the old range zero.
        assert_eq!(
            discards,
            vec![(to + 2 * 4096, to + 3 * 4096), (m, m + 2 * 4096)]
        );
        // Shrinking while moving copies only what fits.
        let (at, copy, discards) = a.mremap(to, 3 * 4096, 4096, true, Some(m)).unwrap();
        assert_eq!((at, copy), (m, Some((to, m, 4096))));
        assert_eq!(discards, vec![(to, to + 3 * 4096)]);
    }

    #[test]
    fn mremap_refuses_zero_old_length_and_ranges_beyond_the_mapping() {
        let mut a = space();
        let (m, _) = a.mmap(0, 2 * 4096, false, false).unwrap();
        assert_eq!(a.mremap(m, 0, 4096, true, None), Err(MmError::Invalid));
        assert_eq!(
            a.mremap(m, 3 * 4096, 4 * 4096, true, None),
            Err(MmError::Fault)
        );
        assert_eq!(
            a.mremap(m + 2 * 4096, 4096, 4096, true, None),
            Err(MmError::Fault),
            "just past the mapping"
        );
        assert_eq!(
            a.mremap(m, 4096, 0, true, None),
            Err(MmError::Invalid),
            "new length 0"
        );
    }

    #[test]
    fn mmap_length_overflow_is_enomem_and_zero_is_einval() {
        let mut a = space();
        assert_eq!(a.mmap(0, 0, false, false), Err(MmError::Invalid));
        assert_eq!(a.mmap(0, u64::MAX, false, false), Err(MmError::NoMemory));
        assert_eq!(
            a.mmap(0, u64::MAX - 4095, false, false),
            Err(MmError::NoMemory)
        );
        assert_eq!(a.mmap(END, u64::MAX, true, false), Err(MmError::NoMemory));
    }

    #[test]
    fn mappings_below_the_heap_neither_block_brk_nor_make_mmap_overlap_the_heap() {
        let mut a = space();
        // A page of the program replaced with MAP_FIXED.
        a.mmap(END - 4096, 4096, true, false).unwrap();
        assert_eq!(
            a.brk(END + 2 * 4096).0,
            END + 2 * 4096,
            "heap grows above it"
        );
        let heap_end = END + 2 * 4096;
        let free = MEM - STACK_SIZE - STACK_GUARD_GAP - heap_end;
        assert_eq!(
            a.mmap(0, free + 4096, false, false),
            Err(MmError::NoMemory),
            "no room above the heap"
        );
        let (m, _) = a.mmap(0, free, false, false).unwrap();
        assert_eq!(m, heap_end);
    }

    #[test]
    fn brk_shrinking_releases_fixed_mappings_inside_the_heap() {
        let mut a = space();
        a.brk(END + 4 * 4096);
        a.mmap(END + 4096, 4096, true, false).unwrap();
        let (b, discards) = a.brk(END);
        assert_eq!(b, END);
        assert_eq!(discards, vec![(END, END + 4 * 4096)]);
        assert_eq!(
            a.mremap(END + 4096, 4096, 8192, true, None),
            Err(MmError::Fault),
            "the mapping went with the heap"
        );
    }

    #[test]
    fn a_mapping_inside_the_heap_moves_rather_than_grow_over_it() {
        let mut a = space();
        a.brk(END + 4 * 4096);
        a.mmap(END + 4096, 4096, true, false).unwrap();
        let (n, copy, _) = a.mremap(END + 4096, 4096, 8192, true, None).unwrap();
        assert!(n >= END + 4 * 4096, "moved above the heap");
        assert_eq!(copy, Some((END + 4096, n, 4096)));
    }

    /// The entries of `writes` as a map, applied over `base`.
    fn apply(base: &mut BTreeMap<u64, u64>, writes: &PageTableWrites) {
        base.extend(writes.entries.iter().copied());
    }

    /// The protection the entries in `tables` give the page at `addr` (above the
    /// system area): the large page's, or the 4 KiB page's.
    fn mapped(tables: &BTreeMap<u64, u64>, addr: u64) -> Protection {
        let pde = tables.get(&arch::pde_addr(addr)).copied().unwrap_or(0);
        let entry = if pde & 1 == 0 || pde & (1 << 7) != 0 {
            pde
        } else {
            let table = pde & !0xfff;
            tables
                .get(&arch::pte_addr(table, addr))
                .copied()
                .unwrap_or(0)
        };
        match (entry & 1 != 0, entry & 2 != 0) {
            (false, _) => Protection::None,
            (true, false) => Protection::Read,
            (true, true) => Protection::ReadWrite,
        }
    }

    /// A fresh address space with its pending entries applied over read-write large pages.
    fn space_and_tables() -> (AddressSpace, BTreeMap<u64, u64>) {
        let mut a = space();
        let mut tables = BTreeMap::new();
        let mut region = SYSTEM_AREA_END;
        while region < MEM {
            tables.insert(
                arch::pde_addr(region),
                arch::large_pde(region, Protection::ReadWrite),
            );
            region += LARGE_PAGE_SIZE;
        }
        let writes = a.take_page_table_writes();
        apply(&mut tables, &writes);
        (a, tables)
    }

    #[test]
    fn the_stack_guard_gap_is_never_mapped() {
        let (mut a, tables) = space_and_tables();
        let (guard, guard_end) = a.stack_guard();
        assert_eq!(guard_end, MEM - STACK_SIZE);
        assert_eq!(guard_end - guard, 256 * PAGE_SIZE);
        for addr in [guard, guard + 0x1234, guard_end - 1] {
            assert_eq!(mapped(&tables, addr), Protection::None, "{addr:#x}");
            assert_eq!(a.protection_at(addr), Protection::None);
        }
        assert_eq!(mapped(&tables, guard - 1), Protection::ReadWrite);
        assert_eq!(
            mapped(&tables, guard_end),
            Protection::ReadWrite,
            "the stack"
        );
        // mmap never places anything there, fixed or not; mprotect cannot open it.
        assert_eq!(
            a.mmap(guard, PAGE_SIZE, true, false),
            Err(MmError::NoMemory)
        );
        assert_eq!(
            a.mmap(guard - PAGE_SIZE, 2 * PAGE_SIZE, true, false),
            Err(MmError::NoMemory)
        );
        let (m, _) = a.mmap(guard, PAGE_SIZE, false, false).unwrap();
        assert!(m + PAGE_SIZE <= guard, "a hint in the gap is not taken");
        a.set_protection(guard, guard_end, Protection::ReadWrite);
        assert_eq!(a.protection_at(guard), Protection::None);
        assert_eq!(
            a.brk(guard + PAGE_SIZE).0,
            END,
            "the heap cannot grow into it"
        );
    }

    #[test]
    fn protections_split_a_large_page_and_merge_back() {
        let (mut a, mut tables) = space_and_tables();
        let m = 0x80_0000 + PAGE_SIZE;
        a.mmap(m, 3 * PAGE_SIZE, true, false).unwrap();
        let region = 0x80_0000;
        let before = a.page_tables.len();
        a.set_protection(m + PAGE_SIZE, m + 2 * PAGE_SIZE, Protection::Read);
        let writes = a.take_page_table_writes();
        assert!(!writes.lowered.is_empty(), "write permission taken away");
        assert_eq!(writes.entries.len(), 513, "one table and its PDE");
        assert_eq!(
            writes.entries.last(),
            Some(&(
                arch::pde_addr(region),
                arch::table_pde(PT_POOL_START + before as u64 * PAGE_SIZE)
            ))
        );
        apply(&mut tables, &writes);
        assert_eq!(mapped(&tables, m), Protection::ReadWrite);
        assert_eq!(mapped(&tables, m + PAGE_SIZE), Protection::Read);
        assert_eq!(mapped(&tables, m + 2 * PAGE_SIZE), Protection::ReadWrite);
        assert_eq!(mapped(&tables, region), Protection::ReadWrite);
        // Back to read-write: one large page again, no flush needed, and the table
        // stays with its range.
        a.set_protection(m + PAGE_SIZE, m + 2 * PAGE_SIZE, Protection::ReadWrite);
        let writes = a.take_page_table_writes();
        assert!(writes.lowered.is_empty());
        assert_eq!(
            writes.entries,
            vec![(
                arch::pde_addr(region),
                arch::large_pde(region, Protection::ReadWrite)
            )]
        );
        apply(&mut tables, &writes);
        assert_eq!(mapped(&tables, m + PAGE_SIZE), Protection::ReadWrite);
        assert_eq!(a.page_tables.len(), before + 1);
        // Nothing changed, nothing to write.
        a.set_protection(m, m + PAGE_SIZE, Protection::ReadWrite);
        assert_eq!(a.take_page_table_writes(), PageTableWrites::default());
        assert_eq!(a.check(), Ok(()));
    }

    #[test]
    fn protections_across_a_2_mib_boundary_and_whole_large_pages() {
        let (mut a, mut tables) = space_and_tables();
        let boundary = 0x100_0000;
        a.set_protection(boundary - PAGE_SIZE, boundary + PAGE_SIZE, Protection::None);
        let writes = a.take_page_table_writes();
        assert!(!writes.lowered.is_empty());
        apply(&mut tables, &writes);
        assert_eq!(
            mapped(&tables, boundary - 2 * PAGE_SIZE),
            Protection::ReadWrite
        );
        assert_eq!(mapped(&tables, boundary - 1), Protection::None);
        assert_eq!(mapped(&tables, boundary), Protection::None);
        assert_eq!(mapped(&tables, boundary + PAGE_SIZE), Protection::ReadWrite);
        // A whole 2 MiB range of one protection is one large page.
        a.set_protection(boundary, boundary + LARGE_PAGE_SIZE, Protection::Read);
        let writes = a.take_page_table_writes();
        assert!(
            !writes.lowered.is_empty(),
            "most of the range loses write permission"
        );
        apply(&mut tables, &writes);
        assert_eq!(mapped(&tables, boundary), Protection::Read);
        assert_eq!(mapped(&tables, boundary - 1), Protection::None);
        assert_eq!(
            tables.get(&arch::pde_addr(boundary)),
            Some(&arch::large_pde(boundary, Protection::Read))
        );
        assert_eq!(a.check(), Ok(()));
    }

    #[test]
    fn munmap_and_brk_leave_no_protection_behind() {
        let (mut a, mut tables) = space_and_tables();
        let (m, _) = a.mmap(0, 2 * PAGE_SIZE, false, false).unwrap();
        a.set_protection(m, m + 2 * PAGE_SIZE, Protection::None);
        apply(&mut tables, &a.take_page_table_writes());
        assert_eq!(mapped(&tables, m), Protection::None);
        a.munmap(m, PAGE_SIZE).unwrap();
        let writes = a.take_page_table_writes();
        assert!(writes.lowered.is_empty());
        apply(&mut tables, &writes);
        assert_eq!(mapped(&tables, m), Protection::ReadWrite);
        assert_eq!(mapped(&tables, m + PAGE_SIZE), Protection::None);
        // The heap: read-only pages released by shrinking come back read-write.
        a.brk(END + 4 * PAGE_SIZE);
        a.set_protection(END, END + 4 * PAGE_SIZE, Protection::Read);
        a.brk(END);
        a.brk(END + 4 * PAGE_SIZE);
        apply(&mut tables, &a.take_page_table_writes());
        assert_eq!(mapped(&tables, END + PAGE_SIZE), Protection::ReadWrite);
        assert_eq!(a.protection_at(END + PAGE_SIZE), Protection::ReadWrite);
    }

    #[test]
    fn without_page_tables_left_a_range_keeps_its_most_permissive_protection() {
        let mem = 2 << 30;
        let mut a = AddressSpace::new(mem, END);
        a.take_page_table_writes();
        let pool = ((PT_POOL_END - PT_POOL_START) / PAGE_SIZE) as usize;
        let mut region = 0x80_0000;
        for _ in 0..pool + 2 {
            a.set_protection(region, region + PAGE_SIZE, Protection::None);
            region += LARGE_PAGE_SIZE;
        }
        let writes = a.take_page_table_writes();
        assert_eq!(a.page_tables.len(), pool, "the guard gap took one");
        let last = region - LARGE_PAGE_SIZE;
        assert!(writes.entries.contains(&(
            arch::pde_addr(last),
            arch::large_pde(last, Protection::ReadWrite)
        )));
        assert_eq!(a.check(), Ok(()));
    }

    #[test]
    fn a_large_munmap_rewrites_only_the_ranges_that_change() {
        let mem = 4 << 30;
        let mut a = AddressSpace::new(mem, END);
        a.take_page_table_writes();
        a.set_protection(0x8000_0000, 0x8000_1000, Protection::None);
        assert_eq!(a.take_page_table_writes().entries.len(), 513);
        let (guard, _) = a.stack_guard();
        a.munmap(SYSTEM_AREA_END, guard - SYSTEM_AREA_END).unwrap();
        let writes = a.take_page_table_writes();
        assert!(writes.lowered.is_empty());
        assert_eq!(
            writes.entries,
            vec![(
                arch::pde_addr(0x8000_0000),
                arch::large_pde(0x8000_0000, Protection::ReadWrite)
            )]
        );
    }

    #[test]
    fn check_refuses_bad_protections_and_tables() {
        let mut a = space();
        a.set_protection(0x80_0000, 0x80_1000, Protection::Read);
        a.take_page_table_writes();
        assert_eq!(a.check(), Ok(()));
        let json = serde_json::to_string(&a).unwrap();
        let back: AddressSpace = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a);
        let mut bad = a.clone();
        bad.protections
            .insert(0x90_0000, (0x90_0800, Protection::None));
        assert!(bad.check().is_err(), "misaligned");
        let mut bad = a.clone();
        let (guard, _) = a.stack_guard();
        bad.protections
            .insert(guard, (guard + PAGE_SIZE, Protection::None));
        assert!(bad.check().is_err(), "in the guard gap");
        let mut bad = a.clone();
        bad.page_tables.insert(0x60_0000, PT_POOL_START);
        assert!(bad.check().is_err(), "shared table");
        let mut bad = a.clone();
        bad.page_tables.insert(0x60_0000, 0x1000);
        assert!(bad.check().is_err(), "table outside the pool");
    }
}
