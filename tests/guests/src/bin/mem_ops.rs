//! Exercises brk, mmap, munmap, mremap and madvise and checks the results (prints OK
//! lines; a mismatch panics).
fn main() {
    // SAFETY: plain anonymous mappings that this function owns and unmaps.
    unsafe {
        let len = 1 << 20;
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        let s = std::slice::from_raw_parts_mut(p as *mut u8, len);
        assert!(s.iter().all(|&b| b == 0), "fresh mapping is zero");
        s.fill(0xab);
        assert_eq!(libc::munmap(p, len), 0);
        let q = libc::mmap(
            p,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        );
        assert_eq!(q, p);
        let s = std::slice::from_raw_parts_mut(q as *mut u8, len);
        assert!(s.iter().all(|&b| b == 0), "remapped memory is zero");
        println!("OK mmap/munmap zeroes");
        s[..4096].fill(0x5a);
        let r = libc::mremap(q, len, 4 * len, libc::MREMAP_MAYMOVE);
        assert_ne!(r, libc::MAP_FAILED);
        let s = std::slice::from_raw_parts_mut(r as *mut u8, 4 * len);
        assert!(
            s[..4096].iter().all(|&b| b == 0x5a),
            "mremap keeps contents"
        );
        assert!(s[len..].iter().all(|&b| b == 0), "mremap growth is zero");
        println!("OK mremap");
        s[..8192].fill(1);
        assert_eq!(libc::madvise(r, 4096, libc::MADV_DONTNEED), 0);
        assert!(
            s[..4096].iter().all(|&b| b == 0) && s[4096] == 1,
            "MADV_DONTNEED zeroes"
        );
        println!("OK madvise");
        let brk0 = libc::sbrk(0);
        assert_ne!(libc::sbrk(1 << 20), -1isize as *mut libc::c_void);
        std::slice::from_raw_parts_mut(brk0 as *mut u8, 1 << 20).fill(3);
        assert_ne!(libc::sbrk(-(1 << 20)), -1isize as *mut libc::c_void);
        assert_ne!(libc::sbrk(1 << 20), -1isize as *mut libc::c_void);
        assert!(
            std::slice::from_raw_parts(brk0 as *const u8, 1 << 20)
                .iter()
                .skip(4096)
                .all(|&b| b == 0),
            "regrown heap is zero"
        );
        println!("OK brk");
        let noreplace = libc::mmap(
            r,
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        assert_eq!(noreplace, libc::MAP_FAILED);
        println!("OK noreplace");
    }
}
