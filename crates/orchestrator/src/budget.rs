//! The memory budget of all instances together: a cold start is admitted only if its
//! charge (guest memory plus [`INSTANCE_OVERHEAD_MIB`]) fits in what remains.
//!
//! [`MemoryBudget::admit`] charges at once when the charge fits; else it asks its
//! caller to evict an idle instance (the orchestrator drops the least recently used
//! idle instance of any function) and tries again; with nothing left to evict it waits,
//! up to a time limit and with at most [`MAX_WAITING`] waiters, for charges to be
//! released. A charge larger than the whole budget fails at once. A [`Charge`] is
//! released when dropped, on every path (a panic included).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// What an instance costs besides its guest memory, in MiB: the VMM's own memory per
/// instance (the vCPU's kernel state and `kvm_run`, KVM's page tables, the page
/// server's bitmaps and buffers, thread stacks). Measured with 32 idle helloworld
/// instances: 0.25 MiB of the server's RSS and 0.1 to 1.3 MiB of the host's
/// `MemAvailable` each; 8 MiB leaves room for a busy instance's buffers and larger
/// working sets (docs/orchestrator.md gives the figures).
pub const INSTANCE_OVERHEAD_MIB: u64 = 8;

/// Most acquirers waiting for memory at once; more fail at once.
pub const MAX_WAITING: usize = 64;

/// Why [`MemoryBudget::admit`] gave no charge.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The charge did not fit for the whole wait (or too many were waiting).
    #[error("needs {needed_mib} MiB, {charged_mib} MiB of the budget of {budget_mib} MiB in use")]
    Full {
        /// The charge asked for.
        needed_mib: u64,
        /// The charges held when giving up.
        charged_mib: u64,
        /// The whole budget.
        budget_mib: u64,
    },
    /// The charge is larger than the whole budget: it can never fit.
    #[error("needs {needed_mib} MiB, more than the whole budget of {budget_mib} MiB")]
    TooLarge {
        /// The charge asked for.
        needed_mib: u64,
        /// The whole budget.
        budget_mib: u64,
    },
}

/// The memory budget; see the module documentation.
pub struct MemoryBudget {
    budget_mib: u64,
    on_change: Box<dyn Fn(u64) + Send + Sync>,
    state: Mutex<State>,
    /// Signalled when a charge is released or an instance went idle.
    released: Condvar,
}

struct State {
    charged_mib: u64,
    waiting: usize,
}

impl MemoryBudget {
    /// A budget of `budget_mib` MiB with nothing charged.
    pub fn new(budget_mib: u64) -> Self {
        Self {
            budget_mib,
            on_change: Box::new(|_| {}),
            state: Mutex::new(State {
                charged_mib: 0,
                waiting: 0,
            }),
            released: Condvar::new(),
        }
    }

    /// The budget calling `f` with the MiB charged whenever it changes (under the
    /// budget's lock: `f` must be quick and must not use the budget).
    pub fn on_change(mut self, f: impl Fn(u64) + Send + Sync + 'static) -> Self {
        self.on_change = Box::new(f);
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The whole budget, in MiB.
    pub fn budget_mib(&self) -> u64 {
        self.budget_mib
    }

    /// The MiB charged now.
    pub fn charged_mib(&self) -> u64 {
        self.lock().charged_mib
    }

    /// Acquirers waiting for memory now.
    pub fn waiting(&self) -> usize {
        self.lock().waiting
    }

    /// A charge of `mib` MiB. While it does not fit, calls `evict` (without the
    /// budget's lock held) to drop an idle instance, whose charge goes back to the
    /// budget; `evict` returns false when it found none. Then waits up to `wait` for
    /// other charges to be released.
    pub fn admit(
        self: &Arc<Self>,
        mib: u64,
        wait: Duration,
        mut evict: impl FnMut() -> bool,
    ) -> Result<Charge, BudgetError> {
        if mib > self.budget_mib {
            return Err(BudgetError::TooLarge {
                needed_mib: mib,
                budget_mib: self.budget_mib,
            });
        }
        let deadline = Instant::now() + wait;
        let mut can_evict = true;
        let mut state = self.lock();
        loop {
            if state.charged_mib + mib <= self.budget_mib {
                state.charged_mib += mib;
                (self.on_change)(state.charged_mib);
                return Ok(Charge {
                    budget: Arc::clone(self),
                    mib,
                });
            }
            if can_evict {
                drop(state);
                can_evict = evict();
                state = self.lock();
                continue;
            }
            let now = Instant::now();
            if now >= deadline || state.waiting >= MAX_WAITING {
                return Err(BudgetError::Full {
                    needed_mib: mib,
                    charged_mib: state.charged_mib,
                    budget_mib: self.budget_mib,
                });
            }
            state.waiting += 1;
            state = self
                .released
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
            state.waiting -= 1;
            // Instances may have gone idle meanwhile.
            can_evict = true;
        }
    }

    /// Wakes the acquirers waiting for memory to try evicting again: an instance went
    /// idle, so it can be evicted.
    pub fn instance_went_idle(&self) {
        let _state = self.lock();
        self.released.notify_all();
    }

    fn release(&self, mib: u64) {
        let mut state = self.lock();
        state.charged_mib = state.charged_mib.saturating_sub(mib);
        (self.on_change)(state.charged_mib);
        drop(state);
        self.released.notify_all();
    }
}

/// Memory charged to a [`MemoryBudget`], released when dropped.
#[must_use = "dropping a charge releases it"]
pub struct Charge {
    budget: Arc<MemoryBudget>,
    mib: u64,
}

impl Charge {
    /// The MiB this charge holds.
    pub fn mib(&self) -> u64 {
        self.mib
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        self.budget.release(self.mib);
    }
}

/// The default budget: 75% of the host's RAM (`MemTotal` in `/proc/meminfo`) minus
/// [`SERVER_RESERVE_MIB`] for the server itself; `None` if `/proc/meminfo` cannot be
/// read.
pub fn default_budget_mib() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib = mem_total_kib(&meminfo)?;
    Some((total_kib / 1024 * 3 / 4).saturating_sub(SERVER_RESERVE_MIB))
}

/// What the default budget leaves to the server itself (its code, the HTTP stack,
/// uploads in flight), in MiB.
pub const SERVER_RESERVE_MIB: u64 = 256;

fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_WAIT: Duration = Duration::ZERO;
    const LONG: Duration = Duration::from_secs(60);

    fn never_evict() -> bool {
        false
    }

    #[test]
    fn a_charge_that_fits_is_admitted_and_released_when_dropped() {
        let budget = Arc::new(MemoryBudget::new(100));
        let a = budget.admit(60, NO_WAIT, never_evict).unwrap();
        let b = budget.admit(40, NO_WAIT, never_evict).unwrap();
        assert_eq!((a.mib(), b.mib(), budget.charged_mib()), (60, 40, 100));
        drop(a);
        assert_eq!(budget.charged_mib(), 40);
        drop(b);
        assert_eq!(budget.charged_mib(), 0);
    }

    #[test]
    fn idle_instances_are_evicted_least_recently_used_first_until_it_fits() {
        let budget = Arc::new(MemoryBudget::new(100));
        // Three idle instances, the oldest first.
        let mut idle: Vec<(&str, Charge)> = ["old", "middle", "new"]
            .into_iter()
            .map(|n| (n, budget.admit(30, NO_WAIT, never_evict).unwrap()))
            .collect();
        let mut evicted = Vec::new();
        let charge = budget
            .admit(50, NO_WAIT, || {
                if idle.is_empty() {
                    return false;
                }
                let (name, charge) = idle.remove(0);
                evicted.push(name);
                drop(charge);
                true
            })
            .unwrap();
        assert_eq!(
            evicted,
            ["old", "middle"],
            "only as many as needed, oldest first"
        );
        assert_eq!(budget.charged_mib(), 80);
        drop(charge);
    }

    #[test]
    fn a_waiter_is_admitted_when_another_charge_is_released() {
        let budget = Arc::new(MemoryBudget::new(100));
        let held = budget.admit(80, NO_WAIT, never_evict).unwrap();
        let waiter = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || budget.admit(50, LONG, never_evict).map(|c| c.mib()))
        };
        let deadline = Instant::now() + LONG;
        while budget.waiting() == 0 {
            assert!(Instant::now() < deadline, "the waiter never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        drop(held);
        assert_eq!(waiter.join().unwrap(), Ok(50));
        assert_eq!(budget.charged_mib(), 0);
    }

    #[test]
    fn a_waiter_evicts_an_instance_that_went_idle_meanwhile() {
        let budget = Arc::new(MemoryBudget::new(100));
        // A busy instance's charge, which becomes evictable when it goes idle.
        let idle: Arc<Mutex<Option<Charge>>> = Arc::default();
        let busy = budget.admit(80, NO_WAIT, never_evict).unwrap();
        let waiter = {
            let (budget, idle) = (Arc::clone(&budget), Arc::clone(&idle));
            std::thread::spawn(move || {
                let started = Instant::now();
                let charge = budget.admit(50, LONG, || idle.lock().unwrap().take().is_some());
                (charge.map(|c| c.mib()), started.elapsed())
            })
        };
        let deadline = Instant::now() + LONG;
        while budget.waiting() == 0 {
            assert!(Instant::now() < deadline, "the waiter never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        *idle.lock().unwrap() = Some(busy);
        budget.instance_went_idle();
        let (charge, waited) = waiter.join().unwrap();
        assert_eq!(charge, Ok(50));
        assert!(
            waited < LONG / 2,
            "woken when the instance went idle: {waited:?}"
        );
    }

    #[test]
    fn a_charge_that_never_fits_in_time_fails_with_the_figures() {
        let budget = Arc::new(MemoryBudget::new(100));
        let _held = budget.admit(80, NO_WAIT, never_evict).unwrap();
        let started = Instant::now();
        let err = budget
            .admit(50, Duration::from_millis(50), never_evict)
            .map(|c| c.mib())
            .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(
            err,
            BudgetError::Full {
                needed_mib: 50,
                charged_mib: 80,
                budget_mib: 100
            }
        );
        assert_eq!(
            err.to_string(),
            "needs 50 MiB, 80 MiB of the budget of 100 MiB in use"
        );
        assert_eq!((budget.charged_mib(), budget.waiting()), (80, 0));
    }

    #[test]
    fn a_charge_over_the_whole_budget_fails_at_once() {
        let budget = Arc::new(MemoryBudget::new(100));
        let started = Instant::now();
        let mut evicted = false;
        let err = budget
            .admit(101, LONG, || {
                evicted = true;
                false
            })
            .map(|c| c.mib())
            .unwrap_err();
        assert!(started.elapsed() < LONG / 2);
        assert!(
            !evicted,
            "nothing is evicted for a charge that can never fit"
        );
        assert_eq!(
            err,
            BudgetError::TooLarge {
                needed_mib: 101,
                budget_mib: 100
            }
        );
    }

    #[test]
    fn a_charge_is_released_when_its_holder_panics() {
        let budget = Arc::new(MemoryBudget::new(100));
        let holder = {
            let budget = Arc::clone(&budget);
            std::thread::spawn(move || {
                let _charge = budget.admit(70, NO_WAIT, never_evict).unwrap();
                panic!("the holder fails");
            })
        };
        assert!(holder.join().is_err());
        assert_eq!(budget.charged_mib(), 0);
        let all = budget.admit(100, NO_WAIT, never_evict).unwrap();
        assert_eq!(all.mib(), 100, "the whole budget is free again");
    }

    #[test]
    fn the_changes_are_reported() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let budget = Arc::new(MemoryBudget::new(100).on_change({
            let seen = Arc::clone(&seen);
            move |mib| seen.lock().unwrap().push(mib)
        }));
        let a = budget.admit(10, NO_WAIT, never_evict).unwrap();
        let b = budget.admit(20, NO_WAIT, never_evict).unwrap();
        drop(a);
        drop(b);
        assert_eq!(*seen.lock().unwrap(), [10, 30, 20, 0]);
    }

    #[test]
    fn mem_total_is_read_from_meminfo() {
        let meminfo = "MemTotal:        8148668 kB\nMemFree:         1000000 kB\n";
        assert_eq!(mem_total_kib(meminfo), Some(8_148_668));
        assert_eq!(mem_total_kib("MemFree: 1 kB\n"), None);
    }
}
