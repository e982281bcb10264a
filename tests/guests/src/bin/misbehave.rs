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

/// The number after `"key":` in the request.
fn number(line: &str, key: &str) -> Option<usize> {
    let rest = line.split(&format!("\"{key}\":")).nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
