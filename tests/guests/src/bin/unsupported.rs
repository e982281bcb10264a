//! Makes system calls the microVM does not offer and reports their errors.
fn main() {
    // SAFETY: system call 999 does not exist; socket() only creates a descriptor.
    let r = unsafe { libc::syscall(999) };
    println!(
        "syscall 999: {r} errno {}",
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    );
    // SAFETY: as above.
    let r = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    println!(
        "socket: {r} errno {}",
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    );
    match std::thread::Builder::new().spawn(|| 1) {
        Ok(_) => println!("thread: spawned"),
        Err(e) => println!("thread: refused ({})", e.raw_os_error().unwrap_or(0)),
    }
    match std::fs::read("/etc/hostname") {
        Ok(_) => println!("open: succeeded"),
        Err(e) => println!("open: {:?}", e.kind()),
    }
    println!("done");
}
