//! A pool of reusable instances of one function, generic over the instance type: the
//! orchestrator keeps one per function over `reap_vmm`'s `Instance`, the tests here
//! use a dummy.
//!
//! The pool counts *live* instances: the idle ones plus those out on a [`Lease`]. An
//! acquirer gets the most recently idle instance (a warm start), or else a slot to
//! start a new one (a cold start) while fewer than the limit are live; at the limit it
//! waits, up to a time limit, for one to come back. [`Lease::release`] puts an instance
//! back in the idle set; a lease dropped any other way (the instance failed, the
//! holder returned early or panicked) frees its slot. [`Pool::expire_idle`] drops
//! instances idle for the keep-alive or longer.
//!
//! Instances carry the version they run (the function's deployed version): acquiring
//! for another version drops the idle instances of the old one, and an instance of an
//! old version is dropped when its lease comes back.
//!
//! Instances are dropped outside the pool's lock: tearing a microVM down takes a while.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The time the pool dates idle instances with, to expire them after the keep-alive.
/// Waiting for a free instance uses real time whatever the clock.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Instant;
}

/// The monotonic system clock, [`Instant::now`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// Why [`Pool::acquire`] gave no lease.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    /// All instances were busy for the whole wait.
    #[error("all {limit} instances are busy and none became free in time")]
    Busy {
        /// The pool's instance limit.
        limit: usize,
    },
    /// The pool was shut down.
    #[error("the pool is shut down")]
    ShutDown,
}

/// A pool of instances of type `I`; see the module documentation.
pub struct Pool<I> {
    limit: usize,
    keep_alive: Duration,
    clock: Box<dyn Clock>,
    on_live_change: Box<dyn Fn(usize) + Send + Sync>,
    state: Mutex<State<I>>,
    /// Signalled when a slot or an idle instance may have become available, and at
    /// shutdown.
    freed: Condvar,
}

struct State<I> {
    /// The version of the idle instances.
    version: String,
    /// Oldest first.
    idle: Vec<Idle<I>>,
    /// Idle instances plus leases out.
    live: usize,
    /// Acquirers waiting for a free instance.
    waiting: usize,
    shut_down: bool,
}

struct Idle<I> {
    instance: I,
    since: Instant,
}

impl<I> Pool<I> {
    /// An empty pool of at most `limit` live instances, whose idle instances expire
    /// after `keep_alive`, on the system clock.
    pub fn new(limit: usize, keep_alive: Duration) -> Self {
        Self {
            limit,
            keep_alive,
            clock: Box::new(SystemClock),
            on_live_change: Box::new(|_| {}),
            state: Mutex::new(State {
                version: String::new(),
                idle: Vec::new(),
                live: 0,
                waiting: 0,
                shut_down: false,
            }),
            freed: Condvar::new(),
        }
    }

    /// The pool with `clock` for dating idle instances.
    pub fn with_clock(mut self, clock: impl Clock + 'static) -> Self {
        self.clock = Box::new(clock);
        self
    }

    /// The pool calling `f` with the number of live instances whenever it changes
    /// (under the pool's lock: `f` must be quick and must not use the pool).
    pub fn on_live_change(mut self, f: impl Fn(usize) + Send + Sync + 'static) -> Self {
        self.on_live_change = Box::new(f);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State<I>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_live(&self, state: &mut State<I>, live: usize) {
        if state.live != live {
            state.live = live;
            (self.on_live_change)(live);
        }
    }

    /// A lease for an instance of `version`: holding the most recently idle instance
    /// unless `fresh` is set, else a slot for a new one. At the limit, a `fresh`
    /// acquirer retires the oldest idle instance to make room; otherwise it waits up to
    /// `wait` for an instance to come back or a slot to free.
    pub fn acquire(
        &self,
        version: &str,
        fresh: bool,
        wait: Duration,
    ) -> Result<Lease<'_, I>, PoolError> {
        let deadline = Instant::now() + wait;
        let mut dropped: Vec<Idle<I>> = Vec::new();
        let mut state = self.lock();
        let warm = loop {
            if state.shut_down {
                break Err(PoolError::ShutDown);
            }
            if state.version != version {
                dropped = self.take_idle(&mut state);
                state.version = version.to_owned();
                if !dropped.is_empty() {
                    // Their slots are free for other acquirers too.
                    self.freed.notify_all();
                }
            }
            if !fresh && let Some(idle) = state.idle.pop() {
                break Ok(Some(idle.instance));
            }
            if state.live < self.limit {
                let live = state.live + 1;
                self.set_live(&mut state, live);
                break Ok(None);
            }
            if fresh && !state.idle.is_empty() {
                // The retired instance's slot becomes this lease's.
                dropped.push(state.idle.remove(0));
                break Ok(None);
            }
            if !dropped.is_empty() {
                // Tear the old version's instances down before waiting.
                drop(state);
                dropped.clear();
                state = self.lock();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(PoolError::Busy { limit: self.limit });
            }
            state.waiting += 1;
            state = self
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.waiting -= 1;
        };
        drop(state);
        drop(dropped);
        Ok(Lease {
            pool: self,
            version: version.to_owned(),
            warm: warm?,
            released: false,
        })
    }

    /// Takes back a leased instance: idle if its version is the current one, else
    /// dropped.
    fn put_back(&self, version: &str, instance: I) {
        let mut state = self.lock();
        if state.version == version && !state.shut_down {
            let since = self.clock.now();
            state.idle.push(Idle { instance, since });
            drop(state);
        } else {
            let live = state.live.saturating_sub(1);
            self.set_live(&mut state, live);
            drop(state);
            drop(instance);
        }
        self.freed.notify_one();
    }

    /// Frees the slot of a lease that gave back no instance.
    fn free_slot(&self) {
        let mut state = self.lock();
        let live = state.live.saturating_sub(1);
        self.set_live(&mut state, live);
        drop(state);
        self.freed.notify_one();
    }

    /// Removes every idle instance and returns them, to be dropped outside the lock.
    fn take_idle(&self, state: &mut State<I>) -> Vec<Idle<I>> {
        let idle = std::mem::take(&mut state.idle);
        let live = state.live - idle.len();
        self.set_live(state, live);
        idle
    }

    /// Drops the instances idle for the keep-alive or longer. Returns how many.
    pub fn expire_idle(&self) -> usize {
        let mut state = self.lock();
        let now = self.clock.now();
        let (expired, kept): (Vec<Idle<I>>, Vec<Idle<I>>) = std::mem::take(&mut state.idle)
            .into_iter()
            .partition(|i| now.saturating_duration_since(i.since) >= self.keep_alive);
        state.idle = kept;
        let n = expired.len();
        if n == 0 {
            return 0;
        }
        let live = state.live - n;
        self.set_live(&mut state, live);
        drop(state);
        drop(expired);
        self.freed.notify_all();
        n
    }

    /// When the least recently used idle instance went idle, if any.
    pub fn oldest_idle_since(&self) -> Option<Instant> {
        self.lock().idle.first().map(|i| i.since)
    }

    /// Drops the least recently used idle instance, to make room for another
    /// (memory, say). Returns whether there was one.
    pub fn evict_oldest(&self) -> bool {
        let mut state = self.lock();
        if state.idle.is_empty() {
            return false;
        }
        let oldest = state.idle.remove(0);
        let live = state.live - 1;
        self.set_live(&mut state, live);
        drop(state);
        drop(oldest);
        self.freed.notify_one();
        true
    }

    /// Drops the idle instances and forgets the current version, so instances out on
    /// lease are dropped when they come back (the function was removed or redeployed).
    pub fn retire(&self) {
        let mut state = self.lock();
        let idle = self.take_idle(&mut state);
        state.version.clear();
        drop(state);
        drop(idle);
        self.freed.notify_all();
    }

    /// Drops the idle instances, fails acquirers (waiting ones included) with
    /// [`PoolError::ShutDown`], and drops instances out on lease when they come back.
    pub fn shut_down(&self) {
        let mut state = self.lock();
        state.shut_down = true;
        let idle = self.take_idle(&mut state);
        drop(state);
        drop(idle);
        self.freed.notify_all();
    }

    /// Idle instances now.
    pub fn idle(&self) -> usize {
        self.lock().idle.len()
    }

    /// Live instances now: idle ones plus leases out.
    pub fn live(&self) -> usize {
        self.lock().live
    }

    /// Acquirers waiting for a free instance now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }
}

/// A live slot of a [`Pool`], holding a warm instance or room for a new one. Give the
/// instance back with [`release`](Lease::release); dropping the lease instead frees
/// the slot (and drops a warm instance not taken out).
#[must_use = "dropping a lease frees its slot"]
pub struct Lease<'p, I> {
    pool: &'p Pool<I>,
    version: String,
    warm: Option<I>,
    released: bool,
}

impl<I> Lease<'_, I> {
    /// Takes out the idle instance this lease got, if any; `None` means: start a new
    /// instance in this slot.
    pub fn take_warm(&mut self) -> Option<I> {
        self.warm.take()
    }

    /// Gives `instance` back to the pool as idle (or drops it if its version is no
    /// longer the pool's, or the pool was shut down).
    pub fn release(mut self, instance: I) {
        self.released = true;
        self.pool.put_back(&self.version, instance);
    }
}

impl<I> Drop for Lease<'_, I> {
    fn drop(&mut self) {
        if !self.released {
            drop(self.warm.take());
            self.pool.free_slot();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An instance that counts how many of its kind exist.
    struct Dummy {
        id: usize,
        alive: Arc<AtomicUsize>,
    }

    impl Dummy {
        fn new(id: usize, alive: &Arc<AtomicUsize>) -> Self {
            alive.fetch_add(1, Ordering::SeqCst);
            Dummy {
                id,
                alive: Arc::clone(alive),
            }
        }
    }

    impl Drop for Dummy {
        fn drop(&mut self) {
            self.alive.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// A clock that moves only when told to.
    #[derive(Clone)]
    struct ManualClock(Arc<Mutex<Instant>>);

    impl ManualClock {
        fn new() -> Self {
            ManualClock(Arc::new(Mutex::new(Instant::now())))
        }

        fn advance(&self, by: Duration) {
            *self.0.lock().unwrap() += by;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            *self.0.lock().unwrap()
        }
    }

    const NO_WAIT: Duration = Duration::ZERO;
    /// Longer than any test should take: reaching it is a failure, not a timing margin.
    const LONG: Duration = Duration::from_secs(60);

    fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + LONG;
        while !cond() {
            assert!(Instant::now() < deadline, "{what} never happened");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_released_instance_is_reused_warm() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(2, LONG);
        let mut lease = pool.acquire("v1", false, NO_WAIT).unwrap();
        assert!(lease.take_warm().is_none(), "an empty pool gives a slot");
        lease.release(Dummy::new(1, &alive));
        assert_eq!((pool.idle(), pool.live()), (1, 1));

        let mut lease = pool.acquire("v1", false, NO_WAIT).unwrap();
        let warm = lease.take_warm().expect("the idle instance");
        assert_eq!(warm.id, 1);
        assert_eq!((pool.idle(), pool.live()), (0, 1));
        lease.release(warm);
        assert_eq!(alive.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn the_limit_holds_under_concurrent_acquirers() {
        const LIMIT: usize = 3;
        let alive = Arc::new(AtomicUsize::new(0));
        let leased = AtomicUsize::new(0);
        let most_leased = AtomicUsize::new(0);
        let most_alive = AtomicUsize::new(0);
        let created = AtomicUsize::new(0);
        let pool = Pool::new(LIMIT, LONG);
        std::thread::scope(|s| {
            for _ in 0..12 {
                s.spawn(|| {
                    for round in 0..200 {
                        // Every fourth round asks for a new instance.
                        let mut lease = pool.acquire("v1", round % 4 == 0, LONG).unwrap();
                        let now = leased.fetch_add(1, Ordering::SeqCst) + 1;
                        most_leased.fetch_max(now, Ordering::SeqCst);
                        let instance = lease.take_warm().unwrap_or_else(|| {
                            Dummy::new(created.fetch_add(1, Ordering::SeqCst), &alive)
                        });
                        most_alive.fetch_max(alive.load(Ordering::SeqCst), Ordering::SeqCst);
                        std::thread::yield_now();
                        leased.fetch_sub(1, Ordering::SeqCst);
                        if round % 7 == 0 {
                            drop(instance);
                            drop(lease);
                        } else {
                            lease.release(instance);
                        }
                    }
                });
            }
        });
        assert!(most_leased.load(Ordering::SeqCst) <= LIMIT);
        // A retired instance goes before its slot's new instance is started.
        assert!(most_alive.load(Ordering::SeqCst) <= LIMIT);
        assert!(pool.live() <= LIMIT);
        assert_eq!(pool.live(), pool.idle());
        assert_eq!(alive.load(Ordering::SeqCst), pool.idle());
        assert!(
            created.load(Ordering::SeqCst) < 12 * 200,
            "instances were reused"
        );
    }

    #[test]
    fn a_waiter_gets_the_instance_another_thread_releases() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool: Pool<Dummy> = Pool::new(1, LONG);
        let mut lease = pool.acquire("v1", false, NO_WAIT).unwrap();
        assert!(lease.take_warm().is_none());
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                let mut lease = pool.acquire("v1", false, LONG).unwrap();
                lease.take_warm().map(|i| i.id)
            });
            wait_until("the waiter waiting", || pool.waiting() == 1);
            lease.release(Dummy::new(7, &alive));
            assert_eq!(waiter.join().unwrap(), Some(7));
        });
        assert_eq!(pool.live(), 0, "the waiter dropped its lease");
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_waiter_gets_the_slot_of_a_dropped_lease() {
        let pool: Pool<Dummy> = Pool::new(1, LONG);
        let lease = pool.acquire("v1", false, NO_WAIT).unwrap();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| pool.acquire("v1", false, LONG).map(|_| ()));
            wait_until("the waiter waiting", || pool.waiting() == 1);
            drop(lease);
            assert_eq!(waiter.join().unwrap(), Ok(()));
        });
    }

    #[test]
    fn acquire_times_out_when_no_instance_frees_up() {
        let pool: Pool<Dummy> = Pool::new(1, LONG);
        let _held = pool.acquire("v1", false, NO_WAIT).unwrap();
        assert_eq!(
            pool.acquire("v1", false, NO_WAIT).err(),
            Some(PoolError::Busy { limit: 1 })
        );
        assert_eq!(
            pool.acquire("v1", false, Duration::from_millis(20)).err(),
            Some(PoolError::Busy { limit: 1 })
        );
        assert_eq!((pool.live(), pool.waiting()), (1, 0));
    }

    #[test]
    fn idle_instances_expire_after_the_keep_alive() {
        let alive = Arc::new(AtomicUsize::new(0));
        let clock = ManualClock::new();
        let pool = Pool::new(4, Duration::from_secs(60)).with_clock(clock.clone());
        let (a, b) = (
            pool.acquire("v1", false, NO_WAIT).unwrap(),
            pool.acquire("v1", false, NO_WAIT).unwrap(),
        );
        a.release(Dummy::new(1, &alive));
        clock.advance(Duration::from_secs(30));
        b.release(Dummy::new(2, &alive));

        clock.advance(Duration::from_secs(29));
        assert_eq!(pool.expire_idle(), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(pool.expire_idle(), 1, "the first is 60 s idle");
        assert_eq!((pool.idle(), pool.live()), (1, 1));
        assert_eq!(alive.load(Ordering::SeqCst), 1);

        // Using an instance makes it young again.
        let mut lease = pool.acquire("v1", false, NO_WAIT).unwrap();
        let warm = lease.take_warm().unwrap();
        assert_eq!(warm.id, 2);
        clock.advance(Duration::from_secs(45));
        lease.release(warm);
        clock.advance(Duration::from_secs(59));
        assert_eq!(pool.expire_idle(), 0);
        clock.advance(Duration::from_secs(1));
        assert_eq!(pool.expire_idle(), 1);
        assert_eq!((pool.idle(), pool.live()), (0, 0));
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_dropped_lease_frees_its_slot_and_drops_its_instance() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(1, LONG);
        let lease = pool.acquire("v1", false, NO_WAIT).unwrap();
        lease.release(Dummy::new(1, &alive));
        // A failed invocation: the warm instance is taken out, then dropped with the lease.
        let mut lease = pool.acquire("v1", false, NO_WAIT).unwrap();
        let warm = lease.take_warm().unwrap();
        drop(warm);
        drop(lease);
        assert_eq!((pool.idle(), pool.live()), (0, 0));
        // A lease dropped with its warm instance still in it.
        let lease = pool.acquire("v1", false, NO_WAIT).unwrap();
        lease.release(Dummy::new(2, &alive));
        drop(pool.acquire("v1", false, NO_WAIT).unwrap());
        assert_eq!((pool.idle(), pool.live()), (0, 0));
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        assert!(pool.acquire("v1", false, NO_WAIT).is_ok());
    }

    #[test]
    fn a_panicking_holder_frees_its_slot() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool: Pool<Dummy> = Pool::new(1, LONG);
        std::thread::scope(|s| {
            let holder = s.spawn(|| {
                let _lease = pool.acquire("v1", false, NO_WAIT).unwrap();
                let _instance = Dummy::new(1, &alive);
                panic!("the holder fails mid-invocation");
            });
            assert!(holder.join().is_err());
        });
        assert_eq!((pool.idle(), pool.live()), (0, 0));
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        assert!(pool.acquire("v1", false, NO_WAIT).is_ok());
    }

    #[test]
    fn shutdown_wakes_waiters_with_an_error() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(2, LONG);
        let first = pool.acquire("v1", false, NO_WAIT).unwrap();
        let second = pool.acquire("v1", false, NO_WAIT).unwrap();
        std::thread::scope(|s| {
            let waiters: Vec<_> = (0..3)
                .map(|_| s.spawn(|| pool.acquire("v1", false, LONG).err()))
                .collect();
            wait_until("three waiters waiting", || pool.waiting() == 3);
            pool.shut_down();
            for w in waiters {
                assert_eq!(w.join().unwrap(), Some(PoolError::ShutDown));
            }
        });
        assert_eq!(pool.live(), 2, "the leases are still out");
        first.release(Dummy::new(1, &alive));
        drop(second);
        assert_eq!((pool.idle(), pool.live()), (0, 0), "dropped on return");
        assert_eq!(alive.load(Ordering::SeqCst), 0);
        assert_eq!(
            pool.acquire("v1", false, NO_WAIT).err(),
            Some(PoolError::ShutDown)
        );
    }

    #[test]
    fn shutdown_drops_the_idle_instances() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(2, LONG);
        pool.acquire("v1", false, NO_WAIT)
            .unwrap()
            .release(Dummy::new(1, &alive));
        pool.shut_down();
        assert_eq!((pool.idle(), pool.live()), (0, 0));
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_new_version_drops_the_old_instances() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(3, LONG);
        let (a, b) = (
            pool.acquire("v1", false, NO_WAIT).unwrap(),
            pool.acquire("v1", false, NO_WAIT).unwrap(),
        );
        a.release(Dummy::new(1, &alive));
        let mut c = pool.acquire("v2", false, NO_WAIT).unwrap();
        assert!(c.take_warm().is_none(), "no warm instance of v2");
        assert_eq!(alive.load(Ordering::SeqCst), 0, "the idle v1 instance went");
        assert_eq!(pool.live(), 2);
        b.release(Dummy::new(2, &alive));
        assert_eq!(
            pool.live(),
            1,
            "the busy v1 instance went when it came back"
        );
        c.release(Dummy::new(3, &alive));
        assert_eq!((pool.idle(), pool.live()), (1, 1));
        assert_eq!(alive.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn retire_drops_idle_instances_and_those_coming_back() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(3, LONG);
        let (a, b) = (
            pool.acquire("v1", false, NO_WAIT).unwrap(),
            pool.acquire("v1", false, NO_WAIT).unwrap(),
        );
        a.release(Dummy::new(1, &alive));
        pool.retire();
        assert_eq!((pool.idle(), pool.live()), (0, 1));
        b.release(Dummy::new(2, &alive));
        assert_eq!((pool.idle(), pool.live()), (0, 0));
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_fresh_acquire_at_the_limit_retires_the_oldest_idle_instance() {
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(2, LONG);
        let (a, b) = (
            pool.acquire("v1", false, NO_WAIT).unwrap(),
            pool.acquire("v1", false, NO_WAIT).unwrap(),
        );
        a.release(Dummy::new(1, &alive));
        b.release(Dummy::new(2, &alive));
        let mut fresh = pool.acquire("v1", true, NO_WAIT).unwrap();
        assert!(fresh.take_warm().is_none());
        assert_eq!((pool.idle(), pool.live()), (1, 2));
        let mut warm = pool.acquire("v1", false, NO_WAIT).unwrap();
        assert_eq!(
            warm.take_warm().map(|i| i.id),
            Some(2),
            "instance 1 was retired"
        );
        assert_eq!(alive.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn the_live_count_is_reported_on_every_change() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let alive = Arc::new(AtomicUsize::new(0));
        let pool = Pool::new(2, Duration::ZERO).on_live_change({
            let seen = Arc::clone(&seen);
            move |n| seen.lock().unwrap().push(n)
        });
        let (a, b) = (
            pool.acquire("v1", false, NO_WAIT).unwrap(),
            pool.acquire("v1", false, NO_WAIT).unwrap(),
        );
        a.release(Dummy::new(1, &alive));
        drop(b);
        assert_eq!(pool.expire_idle(), 1);
        assert_eq!(*seen.lock().unwrap(), [1, 2, 1, 0]);
    }

    #[test]
    fn evicting_drops_the_least_recently_used_idle_instance() {
        let alive = Arc::new(AtomicUsize::new(0));
        let clock = ManualClock::new();
        let pool = Pool::new(3, LONG).with_clock(clock.clone());
        let mut a = pool.acquire("v1", false, NO_WAIT).unwrap();
        let mut b = pool.acquire("v1", false, NO_WAIT).unwrap();
        assert!(a.take_warm().is_none() && b.take_warm().is_none());
        let first = clock.now();
        a.release(Dummy::new(1, &alive));
        clock.advance(Duration::from_secs(1));
        b.release(Dummy::new(2, &alive));
        assert_eq!(pool.oldest_idle_since(), Some(first));

        assert!(pool.evict_oldest());
        assert_eq!(
            (pool.idle(), pool.live(), alive.load(Ordering::SeqCst)),
            (1, 1, 1)
        );
        let mut lease = pool.acquire("v1", false, NO_WAIT).unwrap();
        assert_eq!(
            lease.take_warm().map(|d| d.id),
            Some(2),
            "the newer one stays"
        );
        drop(lease);
        assert!(!pool.evict_oldest(), "nothing idle is left");
        assert_eq!(pool.oldest_idle_since(), None);
    }
}
