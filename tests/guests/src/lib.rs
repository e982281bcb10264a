//! Helpers shared by the test guests.

/// The program's first argument parsed as a number, or `default`.
pub fn arg_u64(index: usize, default: u64) -> u64 {
    std::env::args()
        .nth(index)
        .and_then(|a| a.parse().ok())
        .unwrap_or(default)
}
