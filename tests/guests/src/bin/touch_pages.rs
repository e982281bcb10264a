//! Maps N MiB (argument 1, default 64), touches one byte per 4 KiB page, and prints the
//! time per page as measured inside the program.
fn main() {
    let mib = reap_test_guests::arg_u64(1, 64) as usize;
    let len = mib << 20;
    // SAFETY: a private anonymous mapping owned by this function.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let pages = len / 4096;
    let start = std::time::Instant::now();
    for i in 0..pages {
        // SAFETY: inside the mapping.
        unsafe { std::ptr::write_volatile((p as *mut u8).add(i * 4096), 1) };
    }
    let ns = start.elapsed().as_nanos() as f64 / pages as f64;
    println!("{{\"pages\":{pages},\"ns_per_page\":{ns:.0}}}");
}
