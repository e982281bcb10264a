//! A multi-threaded function on Rust's std threads, and the failure cases of threads.
//!
//! `threads` (no argument) serves requests `{"n":N}`: at start it spawns a pool of
//! worker threads that wait on a condition variable and a ticker thread that sleeps in
//! a loop, then reads stdin (so its ready point has all of them parked). Each request
//! is answered with figures every thread helped compute: a sum split across the pool,
//! a mutex-protected counter bumped by threads that meet at a barrier, a condition
//! variable ping-pong, thread-local storage, scoped threads, and a thread that spins
//! until another one stops it (which needs preemption with one vCPU).
//!
//! Other modes (the first argument): `cycles N` creates and joins N threads one after
//! the other, then reads stdin to its end; `deadlock` joins a thread that waits forever; `crash` has a thread
//! dereference a null pointer; `abort` has a thread call `abort()`; `spin` has a thread
//! spin forever while the main thread joins it; `bench` prints thread costs.
use std::cell::Cell;
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

const WORKERS: u64 = 4;

type Job = Box<dyn FnOnce() + Send>;

/// A fixed pool of threads taking jobs from a queue.
struct Pool {
    queue: Arc<(Mutex<VecDeque<Job>>, Condvar)>,
}

impl Pool {
    fn new(n: u64) -> Self {
        let queue: Arc<(Mutex<VecDeque<Job>>, Condvar)> = Arc::default();
        for _ in 0..n {
            let q = Arc::clone(&queue);
            std::thread::spawn(move || {
                loop {
                    let job = {
                        let mut jobs = q.0.lock().unwrap();
                        loop {
                            if let Some(job) = jobs.pop_front() {
                                break job;
                            }
                            jobs = q.1.wait(jobs).unwrap();
                        }
                    };
                    job();
                }
            });
        }
        Self { queue }
    }

    fn submit(&self, job: Job) {
        self.queue.0.lock().unwrap().push_back(job);
        self.queue.1.notify_one();
    }
}

thread_local! {
    static LOCAL: Cell<u64> = const { Cell::new(0) };
}

fn answer(pool: &Pool, n: u64, ticks: &AtomicU64) -> String {
    // A sum of squares split across the pool.
    let (tx, rx) = mpsc::channel();
    for w in 0..WORKERS {
        let tx = tx.clone();
        pool.submit(Box::new(move || {
            let part: u64 = (0..=n).filter(|i| i % WORKERS == w).map(|i| i * i).sum();
            tx.send(part).unwrap();
        }));
    }
    drop(tx);
    let sum: u64 = rx.iter().sum();

    // Eight threads meet at a barrier, then bump a shared counter; each keeps its own
    // thread-local count.
    let counter = Arc::new(Mutex::new(0u64));
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let counter = Arc::clone(&counter);
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                for _ in 0..1000 {
                    *counter.lock().unwrap() += 1;
                    LOCAL.with(|l| l.set(l.get() + 1));
                }
                LOCAL.with(|l| l.get())
            })
        })
        .collect();
    let tls_ok = handles.into_iter().all(|h| h.join().unwrap() == 1000);
    let counter = *counter.lock().unwrap();

    // A condition variable ping-pong.
    let turn = Arc::new((Mutex::new(0u64), Condvar::new()));
    let t2 = Arc::clone(&turn);
    let ponger = std::thread::spawn(move || {
        for round in 0..100 {
            let mut t = t2.0.lock().unwrap();
            while *t != round * 2 + 1 {
                t = t2.1.wait(t).unwrap();
            }
            *t += 1;
            t2.1.notify_all();
        }
    });
    for round in 0..100 {
        let mut t = turn.0.lock().unwrap();
        while *t != round * 2 {
            t = turn.1.wait(t).unwrap();
        }
        *t += 1;
        turn.1.notify_all();
    }
    ponger.join().unwrap();
    let pingpong = *turn.0.lock().unwrap();

    // Scoped threads over a borrowed slice.
    let data: Vec<u64> = (1..=n).collect();
    let scoped: u64 = std::thread::scope(|s| {
        let halves = data.split_at(data.len() / 2);
        let a = s.spawn(|| halves.0.iter().sum::<u64>());
        let b = s.spawn(|| halves.1.iter().sum::<u64>());
        a.join().unwrap() + b.join().unwrap()
    });

    // This thread spins until a new one spins too, then stops it: with one vCPU each
    // needs the other preempted.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicBool::new(false));
    let (s2, st2) = (Arc::clone(&stop), Arc::clone(&started));
    let spinner = std::thread::spawn(move || {
        let mut spins = 0u64;
        while !s2.load(Ordering::Relaxed) {
            spins = std::hint::black_box(spins + 1);
            st2.store(true, Ordering::Relaxed);
        }
        spins > 0
    });
    while !started.load(Ordering::Relaxed) {
        std::hint::spin_loop();
    }
    std::thread::sleep(Duration::from_millis(5));
    stop.store(true, Ordering::Relaxed);
    let spun = spinner.join().unwrap();
    let ticked = ticks.load(Ordering::Relaxed) > 0;

    format!(
        "{{\"n\":{n},\"sum\":{sum},\"counter\":{counter},\"tls\":{tls_ok},\"pingpong\":{pingpong},\"scoped\":{scoped},\"spun\":{spun},\"ticked\":{ticked}}}"
    )
}

fn serve() {
    let pool = Pool::new(WORKERS);
    let ticks = Arc::new(AtomicU64::new(0));
    let t = Arc::clone(&ticks);
    std::thread::spawn(move || {
        loop {
            t.fetch_add(1, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(2));
        }
    });
    // Let the ticker tick once before the first request.
    while ticks.load(Ordering::Relaxed) == 0 {
        std::thread::yield_now();
    }
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let n: u64 = line
            .chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap_or(0);
        writeln!(out, "{}", answer(&pool, n, &ticks)).unwrap();
        out.flush().unwrap();
    }
}

fn bench() {
    let rounds = 2000u32;
    let start = Instant::now();
    for _ in 0..rounds {
        std::thread::spawn(|| {}).join().unwrap();
    }
    let create = start.elapsed() / rounds;

    // Wake-to-run: one thread wakes the other through a condition variable and waits
    // for the answer; half a round trip is one wake-to-run.
    let pair = Arc::new((Mutex::new(0u64), Condvar::new()));
    let p2 = Arc::clone(&pair);
    let rounds = 2000u64;
    let peer = std::thread::spawn(move || {
        for round in 0..rounds {
            let mut v = p2.0.lock().unwrap();
            while *v != round * 2 + 1 {
                v = p2.1.wait(v).unwrap();
            }
            *v += 1;
            p2.1.notify_one();
        }
    });
    let start = Instant::now();
    for round in 0..rounds {
        let mut v = pair.0.lock().unwrap();
        *v += 1;
        pair.1.notify_one();
        while *v != round * 2 + 2 {
            v = pair.1.wait(v).unwrap();
        }
    }
    let wake = start.elapsed() / (2 * rounds as u32);
    peer.join().unwrap();

    // Context switch: two threads yield to each other.
    let rounds = 5000u32;
    let other = std::thread::spawn(move || {
        for _ in 0..rounds {
            std::thread::yield_now();
        }
    });
    let start = Instant::now();
    for _ in 0..rounds {
        std::thread::yield_now();
    }
    let switch = start.elapsed() / (2 * rounds);
    other.join().unwrap();
    println!(
        "create_join_us {:.2} wake_to_run_us {:.2} yield_switch_us {:.2}",
        create.as_secs_f64() * 1e6,
        wake.as_secs_f64() * 1e6,
        switch.as_secs_f64() * 1e6
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        None => serve(),
        Some("cycles") => {
            let n = reap_test_guests::arg_u64(2, 10_000);
            let mut total = 0u64;
            for i in 0..n {
                total += std::thread::spawn(move || i).join().unwrap();
            }
            println!("cycles {n} total {total}");
            // Then wait for stdin to end: the microVM's test looks at the threads left
            // at this ready point.
            let lines = std::io::stdin().lock().lines().count();
            println!("read {lines} lines");
        }
        Some("deadlock") => {
            let pair = Arc::new((Mutex::new(false), Condvar::new()));
            let p2 = Arc::clone(&pair);
            let t = std::thread::spawn(move || {
                let mut ready = p2.0.lock().unwrap();
                while !*ready {
                    ready = p2.1.wait(ready).unwrap();
                }
            });
            println!("waiting");
            t.join().unwrap();
        }
        Some("crash") => {
            let t = std::thread::spawn(|| {
                // SAFETY: none: the null read is the point (the program must die
                // with SIGSEGV).
                unsafe { std::ptr::read_volatile(std::hint::black_box(std::ptr::null::<u64>())) }
            });
            println!("{}", t.join().unwrap());
        }
        Some("abort") => {
            let t = std::thread::spawn(|| std::process::abort());
            t.join().unwrap();
        }
        Some("spin") => {
            let t = std::thread::spawn(|| {
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            });
            println!("spinning");
            t.join().unwrap();
        }
        Some("bench") => bench(),
        Some(other) => {
            eprintln!("unknown mode {other}");
            std::process::exit(2);
        }
    }
}
