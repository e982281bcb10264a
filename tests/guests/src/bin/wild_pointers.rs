//! Passes bad pointers to system calls, prints each result, and goes on.
fn errno_of(ret: isize) -> String {
    if ret < 0 {
        std::io::Error::last_os_error()
            .raw_os_error()
            .map_or("?".into(), |e| e.to_string())
    } else {
        format!("ok {ret}")
    }
}

fn main() {
    let cases: [(&str, *const u8, usize); 4] = [
        ("null", std::ptr::null(), 8),
        ("page0", 0x10 as *const u8, 8),
        ("beyond", 0x7fff_0000_0000 as *const u8, 8),
        ("system", 0x8000 as *const u8, 8),
    ];
    for (name, ptr, len) in cases {
        // SAFETY: write(2) only reads `len` bytes at `ptr`; a bad pointer makes it fail
        // with EFAULT, which is what this program checks.
        let ret = unsafe { libc::write(1, ptr.cast(), len) };
        println!("write {name}: {}", errno_of(ret));
    }
    // A length that runs off the end of guest memory.
    let buf = [b'x'; 16];
    // SAFETY: as above, the kernel (here: the VMM) checks the whole range.
    let ret = unsafe { libc::write(1, buf.as_ptr().cast(), usize::MAX / 2) };
    println!("write huge: {}", errno_of(ret));
    // The system call itself: glibc's clock_gettime goes through the vDSO, which (as
    // Linux's) writes through the pointer in the program, where a null one faults.
    // SAFETY: clock_gettime(2) into a null buffer fails with EFAULT.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clock_gettime,
            libc::CLOCK_MONOTONIC,
            std::ptr::null_mut::<libc::timespec>(),
        )
    };
    println!("clock_gettime null: {}", errno_of(ret as isize));
    // SAFETY: a zero-length write reads nothing, whatever the pointer.
    let ret = unsafe { libc::write(1, std::ptr::null(), 0) };
    println!("write empty null: {}", errno_of(ret));
    println!("still alive");
}
