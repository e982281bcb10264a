//! Has a 300 MiB zero-initialized array: larger than the default guest memory.
static mut BIG: [u8; 300 << 20] = [0; 300 << 20];

fn main() {
    // SAFETY: single-threaded access to a static the program owns.
    let v = unsafe { std::ptr::read_volatile(&raw const BIG[std::hint::black_box(5)]) };
    println!("{v}");
}
