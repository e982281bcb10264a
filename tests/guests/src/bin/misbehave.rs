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
                let mib = line
                    .split("\"mib\":")
                    .nth(1)
                    .and_then(|s| s.trim_end_matches('}').parse::<usize>().ok());
                let end = (mib.unwrap_or(1) << 20).min(table.len());
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
            _ => {}
        }
        writeln!(out, "{{\"echo\":{line}}}").unwrap();
        out.flush().unwrap();
    }
}
