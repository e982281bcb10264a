//! Waits with timeouts the way threaded code does (a parked thread, a condition
//! variable with a timeout, a sleep) and prints how long each took in milliseconds.
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

fn main() {
    let t = Instant::now();
    std::thread::park_timeout(Duration::from_millis(50));
    println!("park_timeout {}", t.elapsed().as_millis());
    let pair = (Mutex::new(false), Condvar::new());
    let t = Instant::now();
    let guard = pair.0.lock().unwrap();
    let _ = pair
        .1
        .wait_timeout(guard, Duration::from_millis(50))
        .unwrap();
    println!("wait_timeout {}", t.elapsed().as_millis());
    let t = Instant::now();
    std::thread::sleep(Duration::from_millis(50));
    println!("sleep {}", t.elapsed().as_millis());
}
