//! Reads through a null pointer: the guest must end with a page fault at address 0.
fn main() {
    eprintln!("about to dereference null");
    let p = std::hint::black_box(std::ptr::null::<u64>());
    // SAFETY: deliberately unsound: this program exists to crash.
    let v = unsafe { std::ptr::read_volatile(p) };
    println!("read {v}");
}
