//! Makes N getppid() system calls (argument 1, default 10000) and prints the time
//! per call as measured inside the program.
fn main() {
    let n = reap_test_guests::arg_u64(1, 10_000);
    let start = std::time::Instant::now();
    for _ in 0..n {
        // SAFETY: getppid has no arguments and no side effects.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    println!("{{\"calls\":{n},\"ns_per_call\":{ns:.0}}}");
}
