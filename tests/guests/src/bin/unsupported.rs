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
    // SAFETY: fork() is refused in a microVM; were it not, the child exits at once.
    let r = unsafe { libc::fork() };
    if r == 0 {
        // SAFETY: ends the child without running anything of the parent's.
        unsafe { libc::_exit(0) };
    }
    println!(
        "fork: {r} errno {}",
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    );
    match std::fs::read("/etc/hostname") {
        Ok(_) => println!("open: succeeded"),
        Err(e) => println!("open: {:?}", e.kind()),
    }
    println!("done");
}
