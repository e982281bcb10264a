//! Allocates (and touches) memory in 16 MiB steps until allocation fails.
fn main() {
    let step = 16 << 20;
    let mut held: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut v = Vec::new();
        if v.try_reserve_exact(step).is_err() {
            println!("allocation refused after {} MiB", held.len() * 16);
            break;
        }
        v.resize(step, 1u8);
        held.push(v);
    }
    // Now abort the way an unchecked allocation does.
    let big: Vec<u8> = std::hint::black_box(vec![7; 1 << 30]);
    println!("unreachable {}", big[std::hint::black_box(12345)]);
}
