//! Loops forever without a system call: only the time limit ends it.
fn main() {
    println!("spinning");
    let mut x = 0u64;
    loop {
        x = std::hint::black_box(x.wrapping_add(1));
    }
}
