//! The one message Firecracker sends when it connects: a JSON array of guest memory
//! regions (the userfaultfd travels beside it as `SCM_RIGHTS`, see `peer`).
//!
//! Three shapes exist, all arrays of objects (`docs/firecracker.md` lists what each
//! Firecracker release sends and where that was checked):
//!
//! | shape | fields | page size |
//! |---|---|---|
//! | [`MessageFormat::NoPageSize`] | `base_host_virt_addr`, `size`, `offset` | 4 KiB (no huge pages then) |
//! | [`MessageFormat::PageSizeKib`] | the above + `page_size_kib` | `page_size_kib`, which holds **bytes** |
//! | [`MessageFormat::PageSize`] | the above + `page_size` (+ deprecated `page_size_kib`) | `page_size`, bytes |
//!
//! The message is untrusted input: it is size-capped before parsing, the region count
//! is bounded, every number goes through checked arithmetic, and the regions must be
//! page aligned, non-overlapping (in host addresses and in the memory file) and inside
//! the memory file. Unknown fields are ignored, so a later Firecracker that adds one
//! is still served.

use serde::{Deserialize, Serialize};

use reap_pager::{PAGE_2M, PAGE_4K, Region};

/// Largest message accepted, in bytes. A region is about 130 bytes of JSON; Firecracker
/// sends one per guest memory slot.
pub const MAX_MESSAGE: usize = 256 << 10;

/// Most regions accepted in one message. Firecracker sends one or two (guest memory
/// below and above the 32-bit MMIO gap on x86-64), plus one per plugged hotplug slot in
/// releases with memory hotplug.
pub const MAX_REGIONS: usize = 1024;

/// Which of Firecracker's message shapes a message has (from its first region).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageFormat {
    /// Firecracker 1.1 to 1.6: no page size; 4 KiB pages.
    NoPageSize,
    /// Firecracker 1.7 and later, before `page_size`: `page_size_kib`, in bytes.
    PageSizeKib,
    /// Later releases: `page_size` in bytes (with `page_size_kib` kept beside it).
    PageSize,
}

impl MessageFormat {
    /// A short description for logs.
    pub fn describe(self) -> &'static str {
        match self {
            MessageFormat::NoPageSize => "no page size (Firecracker 1.1-1.6)",
            MessageFormat::PageSizeKib => "page_size_kib (Firecracker 1.7 on)",
            MessageFormat::PageSize => "page_size (newer Firecracker)",
        }
    }
}

/// A message that was understood and fits the memory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake {
    /// The regions, in the order the message listed them.
    pub regions: Vec<Region>,
    /// The message's shape.
    pub format: MessageFormat,
}

impl Handshake {
    /// The page size shared by every region.
    pub fn page_size(&self) -> u64 {
        self.regions.first().map_or(PAGE_4K, |r| r.page_size)
    }

    /// Total bytes of guest memory described.
    pub fn total_len(&self) -> u64 {
        self.regions.iter().map(|r| r.len).sum()
    }
}

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// More bytes than [`MAX_MESSAGE`].
    #[error("message is longer than {MAX_MESSAGE} bytes")]
    TooLong,
    /// The bytes are not a JSON array of region objects.
    #[error("message is not a JSON array of memory regions: {0}")]
    Json(String),
    /// An empty array.
    #[error("message lists no memory regions")]
    NoRegions,
    /// More than [`MAX_REGIONS`] regions.
    #[error("message lists {0} memory regions, more than the {MAX_REGIONS} accepted")]
    TooManyRegions(usize),
    /// `page_size` and `page_size_kib` are both given and differ.
    #[error(
        "region {index}: page_size {page_size} and page_size_kib {page_size_kib} disagree (both hold bytes)"
    )]
    PageSizeConflict {
        /// Index of the region in the message.
        index: usize,
        /// Its `page_size`.
        page_size: u64,
        /// Its `page_size_kib`.
        page_size_kib: u64,
    },
    /// A page size other than 4 KiB or 2 MiB.
    #[error(
        "region {index}: unknown page size {page_size} (only 4096 and 2097152 bytes; page_size_kib also holds bytes)"
    )]
    PageSize {
        /// Index of the region in the message.
        index: usize,
        /// The page size given.
        page_size: u64,
    },
    /// The regions use different page sizes.
    #[error("regions use different page sizes ({0} and {1} bytes)")]
    MixedPageSizes(u64, u64),
    /// Address, size or offset not aligned to the page size, or a zero size.
    #[error(
        "region {index} (address {host_addr:#x}, size {len:#x}, offset {file_offset:#x}) is empty or not aligned to its {page_size}-byte pages"
    )]
    Misaligned {
        /// Index of the region in the message.
        index: usize,
        /// Its address.
        host_addr: u64,
        /// Its size.
        len: u64,
        /// Its file offset.
        file_offset: u64,
        /// Its page size.
        page_size: u64,
    },
    /// Address + size or offset + size overflows 64 bits.
    #[error("region {index} wraps around the address space or the file offsets")]
    Overflow {
        /// Index of the region in the message.
        index: usize,
    },
    /// A region reaches past the end of the memory file.
    #[error(
        "region {index} needs memory file bytes up to {end:#x}, but the memory file has {file_len:#x}"
    )]
    BeyondFile {
        /// Index of the region in the message.
        index: usize,
        /// One past the last file byte it needs.
        end: u64,
        /// The memory file's length.
        file_len: u64,
    },
    /// Two regions share host addresses.
    #[error("regions {0} and {1} overlap in the host address space")]
    OverlapHost(usize, usize),
    /// Two regions share bytes of the memory file.
    #[error("regions {0} and {1} overlap in the memory file")]
    OverlapFile(usize, usize),
}

/// One region as Firecracker writes it. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
struct WireRegion {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    #[serde(default)]
    page_size: Option<u64>,
    #[serde(default)]
    page_size_kib: Option<u64>,
}

/// Whether `bytes` may be the beginning of a message that is not complete yet (so the
/// caller should wait for more), as opposed to a complete or broken one.
pub fn is_incomplete(bytes: &[u8]) -> bool {
    match serde_json::from_slice::<serde::de::IgnoredAny>(bytes) {
        Ok(_) => false,
        Err(e) => e.is_eof(),
    }
}

/// Parses and checks a message against a memory file of `file_len` bytes.
pub fn parse(bytes: &[u8], file_len: u64) -> Result<Handshake, HandshakeError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(HandshakeError::TooLong);
    }
    let wire: Vec<WireRegion> =
        serde_json::from_slice(bytes).map_err(|e| HandshakeError::Json(e.to_string()))?;
    if wire.is_empty() {
        return Err(HandshakeError::NoRegions);
    }
    if wire.len() > MAX_REGIONS {
        return Err(HandshakeError::TooManyRegions(wire.len()));
    }
    let format = match (wire[0].page_size, wire[0].page_size_kib) {
        (Some(_), _) => MessageFormat::PageSize,
        (None, Some(_)) => MessageFormat::PageSizeKib,
        (None, None) => MessageFormat::NoPageSize,
    };
    let mut regions = Vec::with_capacity(wire.len());
    for (index, w) in wire.iter().enumerate() {
        let page_size = match (w.page_size, w.page_size_kib) {
            (Some(a), Some(b)) if a != b => {
                return Err(HandshakeError::PageSizeConflict {
                    index,
                    page_size: a,
                    page_size_kib: b,
                });
            }
            (Some(p), _) | (None, Some(p)) => p,
            (None, None) => PAGE_4K,
        };
        if page_size != PAGE_4K && page_size != PAGE_2M {
            return Err(HandshakeError::PageSize { index, page_size });
        }
        let region = Region {
            host_addr: w.base_host_virt_addr,
            len: w.size,
            file_offset: w.offset,
            page_size,
        };
        check_region(index, &region, file_len)?;
        regions.push(region);
    }
    let first = regions[0].page_size;
    if let Some(r) = regions.iter().find(|r| r.page_size != first) {
        return Err(HandshakeError::MixedPageSizes(first, r.page_size));
    }
    check_overlaps(&regions)?;
    Ok(Handshake { regions, format })
}

fn check_region(index: usize, r: &Region, file_len: u64) -> Result<(), HandshakeError> {
    let ps = r.page_size;
    if r.len == 0
        || !r.host_addr.is_multiple_of(ps)
        || !r.len.is_multiple_of(ps)
        || !r.file_offset.is_multiple_of(ps)
    {
        return Err(HandshakeError::Misaligned {
            index,
            host_addr: r.host_addr,
            len: r.len,
            file_offset: r.file_offset,
            page_size: ps,
        });
    }
    let (Some(_), Some(file_end)) = (
        r.host_addr.checked_add(r.len),
        r.file_offset.checked_add(r.len),
    ) else {
        return Err(HandshakeError::Overflow { index });
    };
    if file_end > file_len {
        return Err(HandshakeError::BeyondFile {
            index,
            end: file_end,
            file_len,
        });
    }
    Ok(())
}

/// Refuses regions that share host addresses or memory file bytes (the ends were
/// checked for overflow already).
fn check_overlaps(regions: &[Region]) -> Result<(), HandshakeError> {
    let mut order: Vec<usize> = (0..regions.len()).collect();
    order.sort_unstable_by_key(|&i| regions[i].host_addr);
    for w in order.windows(2) {
        let (a, b) = (&regions[w[0]], &regions[w[1]]);
        if a.host_addr + a.len > b.host_addr {
            return Err(HandshakeError::OverlapHost(w[0].min(w[1]), w[0].max(w[1])));
        }
    }
    order.sort_unstable_by_key(|&i| regions[i].file_offset);
    for w in order.windows(2) {
        let (a, b) = (&regions[w[0]], &regions[w[1]]);
        if a.file_offset + a.len > b.file_offset {
            return Err(HandshakeError::OverlapFile(w[0].min(w[1]), w[0].max(w[1])));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn region(host_addr: u64, len: u64, file_offset: u64, page_size: u64) -> Region {
        Region {
            host_addr,
            len,
            file_offset,
            page_size,
        }
    }

    #[test]
    fn firecracker_1_1_message_without_page_size_means_4k_pages() {
        // Two regions, as Firecracker on x86-64 sends for guest memory larger than the
        // space below the 32-bit MMIO gap.
        let m = br#"[{"base_host_virt_addr":139637976727552,"size":8192,"offset":0},
                    {"base_host_virt_addr":139639050469376,"size":4096,"offset":8192}]"#;
        let h = parse(m, 3 * 4096).unwrap();
        assert_eq!(h.format, MessageFormat::NoPageSize);
        assert_eq!(
            h.regions,
            vec![
                region(0x7f00_0000_0000, 8192, 0, PAGE_4K),
                region(0x7f00_4000_0000, 4096, 8192, PAGE_4K)
            ]
        );
        assert_eq!(h.page_size(), PAGE_4K);
        assert_eq!(h.total_len(), 3 * 4096);
    }

    #[test]
    fn firecracker_1_7_page_size_kib_holds_bytes() {
        let m = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4096}]"#;
        let h = parse(m, 4096).unwrap();
        assert_eq!(h.format, MessageFormat::PageSizeKib);
        assert_eq!(h.regions, vec![region(4096, 4096, 0, PAGE_4K)]);

        let m = format!(
            r#"[{{"base_host_virt_addr":{a},"size":{s},"offset":0,"page_size_kib":2097152}}]"#,
            a = 4 * MIB,
            s = 4 * MIB
        );
        let h = parse(m.as_bytes(), 4 * MIB).unwrap();
        assert_eq!(h.regions, vec![region(4 * MIB, 4 * MIB, 0, PAGE_2M)]);
    }

    #[test]
    fn page_size_kib_read_as_kibibytes_is_refused_as_unknown() {
        // A sender that put 4 (KiB) there would otherwise be served with 4-byte pages.
        let m = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size_kib":4}]"#;
        assert_eq!(
            parse(m, 4096),
            Err(HandshakeError::PageSize {
                index: 0,
                page_size: 4
            })
        );
    }

    #[test]
    fn newer_message_with_page_size_and_the_deprecated_field() {
        let m = br#"[{"base_host_virt_addr":4096,"size":8192,"offset":4096,"page_size":4096,"page_size_kib":4096}]"#;
        let h = parse(m, 3 * 4096).unwrap();
        assert_eq!(h.format, MessageFormat::PageSize);
        assert_eq!(h.regions, vec![region(4096, 8192, 4096, PAGE_4K)]);
        // page_size alone (a release that dropped the old field) is fine too.
        let m = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]"#;
        assert_eq!(parse(m, 4096).unwrap().format, MessageFormat::PageSize);
    }

    #[test]
    fn disagreeing_page_size_fields_are_refused() {
        let m = br#"[{"base_host_virt_addr":0,"size":2097152,"offset":0,"page_size":2097152,"page_size_kib":4096}]"#;
        assert!(matches!(
            parse(m, 2 * MIB),
            Err(HandshakeError::PageSizeConflict { index: 0, .. })
        ));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let m = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096,"guest_phys_addr":0,"x":[1,{}]}]"#;
        assert_eq!(parse(m, 4096).unwrap().regions.len(), 1);
    }

    #[test]
    fn malformed_json_is_refused() {
        for m in [
            &b""[..],
            b"not json",
            b"{\"base_host_virt_addr\":0,\"size\":4096,\"offset\":0}",
            b"[{\"base_host_virt_addr\":0,\"size\":4096}]",
            b"[{\"base_host_virt_addr\":-4096,\"size\":4096,\"offset\":0}]",
            b"[{\"base_host_virt_addr\":4096.5,\"size\":4096,\"offset\":0}]",
            b"[{\"base_host_virt_addr\":\"4096\",\"size\":4096,\"offset\":0}]",
            b"[{\"base_host_virt_addr\":18446744073709551616,\"size\":4096,\"offset\":0}]",
            b"[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0,\"offset\":0}]",
            b"[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0}] trailing",
            b"[{\"base_host_virt_addr\":4096,\"size\":4096,\"offset\":0}",
            b"\xff\xfe[]",
        ] {
            assert!(
                matches!(parse(m, 1 << 30), Err(HandshakeError::Json(_))),
                "{:?} was not refused as JSON: {:?}",
                String::from_utf8_lossy(m),
                parse(m, 1 << 30)
            );
        }
    }

    #[test]
    fn incomplete_messages_are_told_apart_from_broken_ones() {
        let full = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0}]"#;
        for cut in 0..full.len() {
            assert!(is_incomplete(&full[..cut]), "cut at {cut}");
        }
        assert!(!is_incomplete(full));
        assert!(!is_incomplete(b"[}"));
        assert!(!is_incomplete(b"nope"));
    }

    #[test]
    fn empty_and_oversized_messages_are_refused() {
        assert_eq!(parse(b"[]", 4096), Err(HandshakeError::NoRegions));
        assert_eq!(
            parse(&vec![b' '; MAX_MESSAGE + 1], 4096),
            Err(HandshakeError::TooLong)
        );
        let one = r#"{"base_host_virt_addr":4096,"size":4096,"offset":0}"#;
        let many = format!("[{}]", vec![one; MAX_REGIONS + 1].join(","));
        assert!(many.len() <= MAX_MESSAGE);
        assert_eq!(
            parse(many.as_bytes(), 1 << 30),
            Err(HandshakeError::TooManyRegions(MAX_REGIONS + 1))
        );
    }

    #[test]
    fn regions_must_be_aligned_and_not_empty() {
        for (addr, size, offset) in [
            (4097, 4096, 0),
            (4096, 4095, 0),
            (4096, 4096, 1),
            (4096, 0, 0),
        ] {
            let m =
                format!(r#"[{{"base_host_virt_addr":{addr},"size":{size},"offset":{offset}}}]"#);
            assert!(
                matches!(
                    parse(m.as_bytes(), 1 << 30),
                    Err(HandshakeError::Misaligned { index: 0, .. })
                ),
                "{m}"
            );
        }
        // 2 MiB pages need 2 MiB alignment.
        let m = br#"[{"base_host_virt_addr":4096,"size":2097152,"offset":0,"page_size":2097152}]"#;
        assert!(matches!(
            parse(m, 4 * MIB),
            Err(HandshakeError::Misaligned { .. })
        ));
    }

    #[test]
    fn regions_that_wrap_around_are_refused() {
        let top = u64::MAX - 4095;
        let m = format!(r#"[{{"base_host_virt_addr":{top},"size":8192,"offset":0}}]"#);
        assert_eq!(
            parse(m.as_bytes(), 1 << 30),
            Err(HandshakeError::Overflow { index: 0 })
        );
        let m = format!(r#"[{{"base_host_virt_addr":4096,"size":8192,"offset":{top}}}]"#);
        assert_eq!(
            parse(m.as_bytes(), u64::MAX),
            Err(HandshakeError::Overflow { index: 0 })
        );
    }

    #[test]
    fn regions_beyond_the_memory_file_are_refused() {
        let m = br#"[{"base_host_virt_addr":4096,"size":4096,"offset":0},
                    {"base_host_virt_addr":65536,"size":8192,"offset":4096}]"#;
        assert_eq!(
            parse(m, 8192),
            Err(HandshakeError::BeyondFile {
                index: 1,
                end: 12288,
                file_len: 8192
            })
        );
        assert!(parse(m, 12288).is_ok());
    }

    #[test]
    fn overlapping_regions_are_refused() {
        // Host addresses overlap, listed out of address order.
        let m = br#"[{"base_host_virt_addr":65536,"size":8192,"offset":0},
                    {"base_host_virt_addr":61440,"size":8192,"offset":8192}]"#;
        assert_eq!(parse(m, 1 << 20), Err(HandshakeError::OverlapHost(0, 1)));
        // Touching is fine.
        let m = br#"[{"base_host_virt_addr":65536,"size":8192,"offset":0},
                    {"base_host_virt_addr":57344,"size":8192,"offset":8192}]"#;
        assert!(parse(m, 1 << 20).is_ok());
        // File bytes overlap.
        let m = br#"[{"base_host_virt_addr":65536,"size":8192,"offset":0},
                    {"base_host_virt_addr":131072,"size":8192,"offset":4096}]"#;
        assert_eq!(parse(m, 1 << 20), Err(HandshakeError::OverlapFile(0, 1)));
    }

    #[test]
    fn mixed_page_sizes_are_refused() {
        let m = format!(
            r#"[{{"base_host_virt_addr":{a},"size":{s},"offset":0,"page_size":2097152}},
                {{"base_host_virt_addr":4096,"size":4096,"offset":{s},"page_size":4096}}]"#,
            a = 4 * MIB,
            s = 2 * MIB
        );
        assert_eq!(
            parse(m.as_bytes(), 4 * MIB),
            Err(HandshakeError::MixedPageSizes(PAGE_2M, PAGE_4K))
        );
    }

    #[test]
    fn checked_regions_are_accepted_by_the_page_server() {
        // What this module accepts, the engine's own checks accept too.
        let m = br#"[{"base_host_virt_addr":1048576,"size":65536,"offset":65536},
                    {"base_host_virt_addr":4194304,"size":65536,"offset":0}]"#;
        let h = parse(m, 1 << 17).unwrap();
        for r in &h.regions {
            r.validate().unwrap();
        }
    }
}

#[cfg(test)]
mod proptests {
    //! Property tests of the handshake parser, which reads whatever a client of the
    //! socket sends: messages of every shape round-trip; arbitrary bytes and damaged
    //! messages (as bytes and as JSON values) are refused, or accepted only as regions
    //! that are aligned, inside the memory file and disjoint; never a panic.

    use super::*;
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::Value;

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    /// A valid message: its regions, the memory file's length, and how it is written.
    #[derive(Debug, Clone)]
    struct Message {
        regions: Vec<Region>,
        file_len: u64,
        format: MessageFormat,
        /// `page_size_kib` beside `page_size` (newer releases send both).
        both: bool,
        /// Unknown fields added to each region.
        unknown: bool,
        /// Spaces and newlines between tokens.
        spaced: bool,
        /// Rotation of each region's field order.
        order: Vec<Index>,
    }

    fn message() -> impl Strategy<Value = Message> {
        let page = prop_oneof![Just(PAGE_4K), Just(PAGE_2M)];
        // Per region: length and gaps (in pages) before it in the file and in memory.
        let sizes = prop::collection::vec((1..16u64, 0..3u64, 0..3u64), 1..8);
        (page, sizes, any::<u64>(), 0..3u64, 0..3u8)
            .prop_flat_map(|(ps, sizes, host_seed, spare, shape)| {
                let n = sizes.len();
                let host_order: Vec<usize> = (0..n).collect();
                (
                    Just((ps, sizes, host_seed, spare, shape)),
                    Just(host_order).prop_shuffle(),
                    any::<(bool, bool, bool)>(),
                    prop::collection::vec(any::<Index>(), n),
                )
            })
            .prop_map(
                |(
                    (ps, sizes, host_seed, spare, shape),
                    host_order,
                    (both, unknown, spaced),
                    order,
                )| {
                    let n = sizes.len();
                    // File offsets in message order, host addresses in a shuffled order.
                    let mut file = 0;
                    let mut offsets = Vec::with_capacity(n);
                    for &(len, gap, _) in &sizes {
                        file += gap * ps;
                        offsets.push(file);
                        file += len * ps;
                    }
                    let mut host = vec![0; n];
                    let mut addr = (host_seed % (1 << 46)) / PAGE_2M * PAGE_2M;
                    for &i in &host_order {
                        addr += sizes[i].2 * ps;
                        host[i] = addr;
                        addr += sizes[i].0 * ps;
                    }
                    let regions = (0..n)
                        .map(|i| Region {
                            host_addr: host[i],
                            len: sizes[i].0 * ps,
                            file_offset: offsets[i],
                            page_size: ps,
                        })
                        .collect();
                    let format = match (shape, ps) {
                        (0, PAGE_4K) => MessageFormat::NoPageSize,
                        (0 | 1, _) => MessageFormat::PageSizeKib,
                        _ => MessageFormat::PageSize,
                    };
                    Message {
                        regions,
                        file_len: file + spare * ps,
                        format,
                        both,
                        unknown,
                        spaced,
                        order,
                    }
                },
            )
    }

    /// Writes `m` as the Firecracker release of its shape would.
    fn encode(m: &Message) -> String {
        let sp = if m.spaced { " \n" } else { "" };
        let objects: Vec<String> = m
            .regions
            .iter()
            .zip(&m.order)
            .map(|(r, turn)| {
                let mut fields = vec![
                    format!("\"base_host_virt_addr\":{sp}{}", r.host_addr),
                    format!("\"size\":{sp}{}", r.len),
                    format!("\"offset\":{sp}{}", r.file_offset),
                ];
                match m.format {
                    MessageFormat::NoPageSize => {}
                    MessageFormat::PageSizeKib => {
                        fields.push(format!("\"page_size_kib\":{}", r.page_size))
                    }
                    MessageFormat::PageSize => {
                        fields.push(format!("\"page_size\":{}", r.page_size));
                        if m.both {
                            fields.push(format!("\"page_size_kib\":{}", r.page_size));
                        }
                    }
                }
                if m.unknown {
                    fields.push(format!("\"guest_phys_addr\":{sp}{{\"x\":[1,null,\"y\"]}}"));
                }
                let k = turn.index(fields.len());
                fields.rotate_left(k);
                format!("{{{sp}{}{sp}}}", fields.join(&format!(",{sp}")))
            })
            .collect();
        format!("{sp}[{}]{sp}", objects.join(&format!(",{sp}")))
    }

    /// Checks accepted regions against the rules, independently of the parser.
    fn assert_sound(h: &Handshake, file_len: u64) -> Result<(), TestCaseError> {
        prop_assert!(!h.regions.is_empty() && h.regions.len() <= MAX_REGIONS);
        let ps = h.page_size();
        prop_assert!(ps == PAGE_4K || ps == PAGE_2M);
        for r in &h.regions {
            prop_assert_eq!(r.page_size, ps);
            prop_assert!(r.len > 0);
            prop_assert!(r.host_addr % ps == 0 && r.len % ps == 0 && r.file_offset % ps == 0);
            prop_assert!(r.host_addr.checked_add(r.len).is_some());
            prop_assert!(
                r.file_offset
                    .checked_add(r.len)
                    .is_some_and(|e| e <= file_len)
            );
            prop_assert!(r.validate().is_ok());
        }
        for (i, a) in h.regions.iter().enumerate() {
            for b in &h.regions[i + 1..] {
                let apart = |x: u64, y: u64| x + a.len <= y || y + b.len <= x;
                prop_assert!(apart(a.host_addr, b.host_addr), "{:?} {:?}", a, b);
                prop_assert!(apart(a.file_offset, b.file_offset), "{:?} {:?}", a, b);
            }
        }
        prop_assert!(h.total_len() <= file_len);
        Ok(())
    }

    #[test]
    fn messages_of_every_shape_round_trip() {
        TestRunner::new(config(2048))
            .run(&message(), |m| {
                let bytes = encode(&m);
                let h = parse(bytes.as_bytes(), m.file_len)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {bytes}")))?;
                prop_assert_eq!(&h.regions, &m.regions);
                prop_assert_eq!(h.format, m.format);
                assert_sound(&h, m.file_len)?;
                prop_assert!(!is_incomplete(bytes.as_bytes()));
                // One page less of memory file: the last file page is needed, unless
                // spare pages follow it.
                let needed = m
                    .regions
                    .iter()
                    .map(|r| r.file_offset + r.len)
                    .max()
                    .unwrap();
                let short = parse(bytes.as_bytes(), needed - 1);
                prop_assert!(
                    matches!(short, Err(HandshakeError::BeyondFile { .. })),
                    "{:?}",
                    short
                );
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn every_cut_of_a_message_is_incomplete_and_refused() {
        let cases = (message(), any::<Index>());
        TestRunner::new(config(2048))
            .run(&cases, |(m, at)| {
                let bytes = encode(&m);
                // Anywhere before the closing bracket.
                let end = bytes.trim_end().len();
                let cut = &bytes.as_bytes()[..at.index(end)];
                prop_assert!(is_incomplete(cut));
                prop_assert!(matches!(
                    parse(cut, m.file_len),
                    Err(HandshakeError::Json(_))
                ));
                Ok(())
            })
            .unwrap();
    }

    /// Numbers on the checks' boundaries, and any number.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(vec![
                0,
                1,
                4,
                1024,
                PAGE_4K - 1,
                PAGE_4K,
                PAGE_4K + 1,
                PAGE_2M,
                2 * PAGE_2M,
                1 << 32,
                1 << 46,
                1 << 60,
                u64::MAX - PAGE_4K + 1,
                u64::MAX - PAGE_2M + 1,
                u64::MAX,
            ]),
            (0..64u64).prop_map(|p| p * PAGE_4K),
            any::<u64>(),
        ]
    }

    /// A change to one member of one region object, or to the array.
    #[derive(Debug, Clone)]
    enum Change {
        /// Another number.
        Number(u64),
        /// A negative number, a fraction, a number too large for a u64.
        Signed(i64),
        Float(f64),
        Huge,
        /// Another type.
        Text(String),
        Null,
        /// The member is removed.
        Remove,
        /// `page_size` or `page_size_kib` is added with this value.
        PageSize(bool, u64),
        /// The region is listed again, or removed.
        Repeat,
        Drop,
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            6 => number().prop_map(Change::Number),
            1 => any::<i64>().prop_map(Change::Signed),
            1 => any::<f64>().prop_map(Change::Float),
            1 => Just(Change::Huge),
            1 => ".{0,6}".prop_map(Change::Text),
            1 => Just(Change::Null),
            1 => Just(Change::Remove),
            2 => (any::<bool>(), number()).prop_map(|(k, v)| Change::PageSize(k, v)),
            1 => Just(Change::Repeat),
            1 => Just(Change::Drop),
        ]
    }

    /// Applies `change` to member `member` of region `region` of the message `v`.
    fn apply(v: &mut Value, region: Index, member: Index, change: &Change) {
        let Some(regions) = v.as_array_mut() else {
            return;
        };
        if regions.is_empty() {
            return;
        }
        let at = region.index(regions.len());
        match change {
            Change::Repeat => {
                let r = regions[at].clone();
                regions.insert(at, r);
                return;
            }
            Change::Drop => {
                regions.remove(at);
                return;
            }
            _ => {}
        }
        let Some(obj) = regions[at].as_object_mut() else {
            return;
        };
        if let Change::PageSize(kib, n) = change {
            let key = if *kib { "page_size_kib" } else { "page_size" };
            obj.insert(key.into(), Value::from(*n));
            return;
        }
        if obj.is_empty() {
            return;
        }
        let key = obj
            .keys()
            .nth(member.index(obj.len()))
            .cloned()
            .unwrap_or_default();
        let new = match change {
            Change::Number(n) => Value::from(*n),
            Change::Signed(n) => Value::from(*n),
            Change::Float(f) => Value::from(*f),
            Change::Huge => serde_json::from_str("18446744073709551616").unwrap_or_default(),
            Change::Text(s) => Value::from(s.clone()),
            Change::Null => Value::Null,
            Change::Remove => {
                obj.remove(&key);
                return;
            }
            Change::PageSize(..) | Change::Repeat | Change::Drop => return,
        };
        obj.insert(key, new);
    }

    #[test]
    fn changed_messages_are_refused_or_sound() {
        let changes = prop::collection::vec((any::<Index>(), any::<Index>(), change()), 1..4);
        let cases = (message(), changes, prop::option::of(number()));
        TestRunner::new(config(4096))
            .run(&cases, |(m, changes, file_len)| {
                let mut v: Value = serde_json::from_str(&encode(&m)).unwrap();
                for (region, member, c) in &changes {
                    apply(&mut v, *region, *member, c);
                }
                let bytes = v.to_string();
                let file_len = file_len.unwrap_or(m.file_len);
                if let Ok(h) = parse(bytes.as_bytes(), file_len) {
                    assert_sound(&h, file_len)?;
                }
                let _ = is_incomplete(bytes.as_bytes());
                Ok(())
            })
            .unwrap();
    }

    /// One change to the bytes of a message.
    #[derive(Debug, Clone)]
    enum Edit {
        /// XOR a byte with a non-zero mask.
        Flip(Index, u8),
        /// Insert bytes.
        Insert(Index, Vec<u8>),
        /// Remove up to 16 bytes.
        Delete(Index, u8),
        /// Cut the message.
        Truncate(Index),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        let token = prop_oneof![
            prop::collection::vec(any::<u8>(), 1..8),
            prop::sample::select(vec![
                b"[".to_vec(),
                b"]".to_vec(),
                b"{".to_vec(),
                b"}".to_vec(),
                b",".to_vec(),
                b":".to_vec(),
                b"\"".to_vec(),
                b"-".to_vec(),
                b"9".to_vec(),
                b"e9".to_vec(),
                b".5".to_vec(),
                b"null".to_vec(),
                b"\\u0000".to_vec(),
                b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[".to_vec(),
            ]),
        ];
        prop_oneof![
            (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Edit::Flip(i, m)),
            (any::<Index>(), token).prop_map(|(i, b)| Edit::Insert(i, b)),
            (any::<Index>(), 1..16u8).prop_map(|(i, n)| Edit::Delete(i, n)),
            any::<Index>().prop_map(Edit::Truncate),
        ]
    }

    fn edit_bytes(b: &mut Vec<u8>, edit: &Edit) {
        match edit {
            Edit::Flip(i, mask) if !b.is_empty() => {
                let at = i.index(b.len());
                b[at] ^= mask;
            }
            Edit::Insert(i, bytes) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, bytes.iter().copied());
            }
            Edit::Delete(i, n) if !b.is_empty() => {
                let at = i.index(b.len());
                let end = (at + usize::from(*n)).min(b.len());
                b.drain(at..end);
            }
            Edit::Truncate(i) => b.truncate(i.index(b.len() + 1)),
            _ => {}
        }
    }

    #[test]
    fn damaged_messages_are_refused_or_sound() {
        let cases = (message(), prop::collection::vec(edit(), 1..5));
        TestRunner::new(config(4096))
            .run(&cases, |(m, edits)| {
                let mut bytes = encode(&m).into_bytes();
                for e in &edits {
                    edit_bytes(&mut bytes, e);
                }
                if let Ok(h) = parse(&bytes, m.file_len) {
                    assert_sound(&h, m.file_len)?;
                }
                let _ = is_incomplete(&bytes);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn arbitrary_bytes_are_refused() {
        let bytes = prop_oneof![
            prop::collection::vec(any::<u8>(), 0..512),
            "[\\[\\]{}\":,0-9a-z .eE+-]{0,256}".prop_map(String::into_bytes),
        ];
        TestRunner::new(config(8192))
            .run(&(bytes, number()), |(bytes, file_len)| {
                if let Ok(h) = parse(&bytes, file_len) {
                    assert_sound(&h, file_len)?;
                }
                let _ = is_incomplete(&bytes);
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn messages_over_the_cap_are_refused_before_parsing() {
        // Whatever follows, a message longer than the cap is refused by its length.
        let cases = (message(), 1..4096usize, any::<u8>());
        TestRunner::new(config(64))
            .run(&cases, |(m, extra, fill)| {
                let mut bytes = encode(&m).into_bytes();
                bytes.resize(MAX_MESSAGE + extra, fill);
                prop_assert_eq!(parse(&bytes, m.file_len), Err(HandshakeError::TooLong));
                Ok(())
            })
            .unwrap();
    }
}
