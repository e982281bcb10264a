//! Checked conversions between the crate's integer types: offsets, lengths and counts
//! are `u64` (the type of the kernel's interfaces and of the file formats), buffers and
//! slices are indexed with `usize`, times are reported in `u64` nanoseconds.

use std::time::Duration;

/// Nanoseconds in `d`, saturating (at 584 years).
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `v`, an offset or length inside a buffer or bitmap this process holds in memory, as
/// an index. It fits: the buffer's own length is a `usize`. Page sizes (4 KiB or 2 MiB,
/// checked where regions and WS headers are validated) fit too.
pub(crate) fn in_memory(v: u64) -> usize {
    usize::try_from(v).expect("an offset inside a buffer held in memory fits in a usize")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nanos_saturates_and_in_memory_keeps_values() {
        assert_eq!(nanos(Duration::from_micros(3)), 3000);
        assert_eq!(nanos(Duration::MAX), u64::MAX);
        assert_eq!(in_memory(2 << 20), 2 << 20);
    }
}
