//! A function (one JSON request per line) that misbehaves on demand: the request's
//! `do` field says how. Anything else is echoed back as `{"echo": REQUEST}`.
use std::io::{BufRead, Write};

fn main() {
    // State built during init, so the snapshot holds it: 16 MiB of non-zero data.
    let table: Vec<u8> = (0..16usize << 20).map(|i| (i % 251) as u8 + 1).collect();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.unwrap_or_default();
        let action = line
            .split("\"do\":\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("");
        match action {
            "crash" => {
                let p = std::hint::black_box(std::ptr::null::<u64>());
                // SAFETY: deliberately unsound: this request exists to crash the guest.
                println!("{}", unsafe { std::ptr::read_volatile(p) });
            }
            "loop" => loop {
                std::hint::spin_loop();
            },
            "exit" => std::process::exit(3),
            "two_lines" => write!(out, "{{\"a\":1}}\n{{\"b\":2}}\n").unwrap(),
            "silent" => continue,
            "read" => {
                // Sums the first `mib` MiB of the table: touches that many pages.
                let end = (number(&line, "mib").unwrap_or(1) << 20).min(table.len());
                let sum: u64 = table[..end]
                    .iter()
                    .step_by(4096)
                    .map(|&b| u64::from(b))
                    .sum();
                writeln!(out, "{{\"sum\":{sum}}}").unwrap();
                out.flush().unwrap();
                continue;
            }
            "log" => eprintln!("log line for {line}"),
            // Recurses until the stack runs into its guard gap.
            "overflow" => {
                writeln!(out, "{{\"depth\":{}}}", recurse(0)).unwrap();
            }
            // A write to a page mprotected read-only.
            "write_ro" => {
                let page = protected_page(libc::PROT_READ);
                writeln!(out, "{{\"page\":\"{page:p}\"}}").unwrap();
                out.flush().unwrap();
                // SAFETY: deliberately faults: the page is mapped read-only.
                unsafe { std::ptr::write_volatile(page, 2) };
            }
            // A read of a page mprotected PROT_NONE.
            "read_none" => {
                let page = protected_page(libc::PROT_NONE);
                writeln!(out, "{{\"page\":\"{page:p}\"}}").unwrap();
                out.flush().unwrap();
                // SAFETY: deliberately faults: the page is mapped PROT_NONE.
                let v = unsafe { std::ptr::read_volatile(page) };
                writeln!(out, "{{\"read\":{v}}}").unwrap();
            }
            // A write to a whole 2 MiB range (one large page) mprotected read-only
            // after every page of it was written.
            "write_ro_2m" => {
                let len = 4 << 20;
                // SAFETY: a fresh anonymous private mapping; no existing memory is affected.
                let base = unsafe {
                    libc::mmap(
                        std::ptr::null_mut(),
                        len,
                        libc::PROT_READ | libc::PROT_WRITE,
                        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                        -1,
                        0,
                    )
                };
                assert_ne!(base, libc::MAP_FAILED);
                let base = base.cast::<u8>();
                for i in (0..len).step_by(4096) {
                    // SAFETY: inside the read-write mapping above.
                    unsafe { std::ptr::write_volatile(base.add(i), 1) };
                }
                let huge = ((base as usize + (2 << 20) - 1) & !((2 << 20) - 1)) as *mut u8;
                // SAFETY: a 2 MiB-aligned range inside the 4 MiB mapping.
                let rc = unsafe { libc::mprotect(huge.cast(), 2 << 20, libc::PROT_READ) };
                assert_eq!(rc, 0);
                let page = huge.wrapping_add(12345 * 8);
                writeln!(out, "{{\"page\":\"{page:p}\"}}").unwrap();
                out.flush().unwrap();
                // SAFETY: deliberately faults: the range is mapped read-only.
                unsafe { std::ptr::write_volatile(page, 2) };
            }
            // Runs a `ret` written into a data page: read-write only faults, with
            // PROT_EXEC added it returns.
            "exec_data" | "exec_rwx" => {
                let page = protected_page(libc::PROT_READ | libc::PROT_WRITE);
                // SAFETY: the page is mapped read-write.
                unsafe { std::ptr::write_volatile(page.cast::<u8>(), 0xc3) };
                if action == "exec_rwx" {
                    let rwx = libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC;
                    // SAFETY: `page` is the start of a one-page mapping.
                    assert_eq!(unsafe { libc::mprotect(page.cast(), 4096, rwx) }, 0);
                }
                writeln!(out, "{{\"page\":\"{page:p}\"}}").unwrap();
                out.flush().unwrap();
                // SAFETY: the page holds one `ret`; without PROT_EXEC this deliberately
                // faults.
                let f: extern "C" fn() = unsafe { std::mem::transmute(page) };
                f();
                writeln!(out, "{{\"exec\":\"ok\"}}").unwrap();
                out.flush().unwrap();
                continue;
            }
            // A write to the program's own code (a read-only segment).
            "write_text" => {
                let code = recurse as *const () as *mut u8;
                writeln!(out, "{{\"page\":\"{code:p}\"}}").unwrap();
                out.flush().unwrap();
                // SAFETY: deliberately faults: the text segment is mapped read-only.
                unsafe { std::ptr::write_volatile(code, 0xc3) };
            }
            // Read-only, then read-write again: the write works and reads back.
            "protect_rw" => {
                let page = protected_page(libc::PROT_READ);
                // SAFETY: the page is mapped readable.
                let before = unsafe { std::ptr::read_volatile(page) };
                // SAFETY: `page` is the start of a page-aligned mapping of one page.
                let rc = unsafe {
                    libc::mprotect(page.cast(), 4096, libc::PROT_READ | libc::PROT_WRITE)
                };
                assert_eq!(rc, 0);
                // SAFETY: the page is mapped read-write again.
                unsafe { std::ptr::write_volatile(page, before + 41) };
                // SAFETY: as above.
                let after = unsafe { std::ptr::read_volatile(page) };
                writeln!(out, "{{\"before\":{before},\"after\":{after}}}").unwrap();
                out.flush().unwrap();
                continue;
            }
            "spew" => {
                // Writes `mib` MiB to stderr, 1 MiB at a time.
                let chunk = vec![b'e'; 1 << 20];
                let mut err = std::io::stderr().lock();
                for _ in 0..number(&line, "mib").unwrap_or(1) {
                    err.write_all(&chunk).unwrap();
                }
            }
            "syscalls" => {
                // Makes `n` calls of distinct unknown system call numbers from 1000 up.
                for nr in 0..number(&line, "n").unwrap_or(1) {
                    // SAFETY: numbers from 1000 up are no system calls: ENOSYS.
                    unsafe { libc::syscall(1000 + nr as libc::c_long) };
                }
            }
            _ => {}
        }
        writeln!(out, "{{\"echo\":{line}}}").unwrap();
        out.flush().unwrap();
    }
}

/// Recurses with a 4 KiB frame per call until the stack overflows.
#[inline(never)]
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth as u8; 4096]);
    if std::hint::black_box(true) {
        return recurse(depth + 1) + u64::from(frame[100]);
    }
    depth
}

/// A fresh page, written once while read-write (so the vCPU has it mapped writable),
/// then given `prot`.
fn protected_page(prot: i32) -> *mut u64 {
    // SAFETY: an anonymous private mapping of one page; no existing memory is affected.
    let page = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(page, libc::MAP_FAILED);
    let page = page.cast::<u64>();
    // SAFETY: the page was just mapped read-write.
    unsafe { std::ptr::write_volatile(page, 1) };
    // SAFETY: `page` is the start of the one-page mapping above.
    assert_eq!(unsafe { libc::mprotect(page.cast(), 4096, prot) }, 0);
    page
}

/// The number after `"key":` in the request.
fn number(line: &str, key: &str) -> Option<usize> {
    let rest = line.split(&format!("\"{key}\":")).nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
