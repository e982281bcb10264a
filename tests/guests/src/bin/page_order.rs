//! A function whose requests touch the same pages in different orders: at init it
//! fills N MiB (argument 1, default 8) with a pattern, so that every page holds data
//! in the snapshot; then each request line reads one byte from every page, in the
//! order the request names (`"forward"`, `"reverse"`, or `"stride"`: every 7th page,
//! then the rest), and answers with their sum, which does not depend on the order.
use std::io::BufRead;

const PAGE: usize = 4096;

fn main() {
    let mib = reap_test_guests::arg_u64(1, 8) as usize;
    let mut data = vec![0u8; mib << 20];
    for (i, b) in data.iter_mut().enumerate() {
        *b = (i / PAGE * 31 + i % 251) as u8;
    }
    let pages = data.len() / PAGE;
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let order: Vec<usize> = if line.contains("reverse") {
            (0..pages).rev().collect()
        } else if line.contains("stride") {
            (0..pages)
                .filter(|p| p % 7 == 0)
                .chain((0..pages).filter(|p| p % 7 != 0))
                .collect()
        } else {
            (0..pages).collect()
        };
        let mut sum = 0u64;
        for p in order {
            // SAFETY: `p * PAGE + p % PAGE` lies inside `data`; a volatile read so that
            // every page is touched in this order.
            sum += u64::from(unsafe { std::ptr::read_volatile(&data[p * PAGE + p % PAGE]) });
        }
        println!("{{\"pages\":{pages},\"sum\":{sum}}}");
    }
}
