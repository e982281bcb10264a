//! Executes an `out` instruction of its own (allowed at IOPL 3): the VMM must end it.
fn main() {
    println!("about to write to port 0x80");
    // SAFETY: deliberately executes a privileged-looking instruction the VMM refuses.
    unsafe { std::arch::asm!("out 0x80, al", in("al") 0u8) };
    println!("unreachable");
}
