//! The vCPU watchdog: a run's time limit and the guest threads' time slices. When the
//! deadline passes, or a time slice ends while several guest threads share the vCPU,
//! the vCPU thread is sent a signal that makes a blocking `KVM_RUN` return `EINTR`; the
//! run loop then stops the guest (deadline) or runs the next thread (slice).
//!
//! The run loop blocks that signal outside `KVM_RUN` ([`KickMask`]) and lets KVM
//! unblock it inside (`KVM_SET_SIGNAL_MASK`): a kick that arrives while the VMM carries
//! out a system call stays pending and ends the next `KVM_RUN` at once, and never
//! interrupts the VMM's own system calls.

use std::sync::{Arc, Condvar, Mutex, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Interrupts `KVM_RUN` on the vCPU thread when a run's deadline passes, by sending it
/// a signal (and again every few milliseconds until the run loop notices, so a signal
/// that arrives between two `KVM_RUN`s is not lost).
///
/// One thread per watchdog, started at the first armed run and stopped when the
/// watchdog is dropped.
pub(crate) struct Watchdog {
    shared: Arc<(Mutex<WatchState>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct WatchState {
    /// The vCPU thread while a run is under way, and the run's deadline.
    armed: Option<(Option<Instant>, libc::pthread_t)>,
    /// The time slice, while several guest threads share the vCPU.
    slice: Option<Duration>,
    /// When the current slice ends.
    slice_end: Option<Instant>,
    shutdown: bool,
}

/// An armed watchdog: disarms it when dropped (when the run returns). Crate-private:
/// the watchdog signals the arming thread until this is dropped, so it must never be
/// leaked past the end of the run.
#[must_use = "the watchdog is disarmed when this is dropped"]
pub(crate) struct Armed(Arc<(Mutex<WatchState>, Condvar)>);

impl Drop for Armed {
    fn drop(&mut self) {
        let (lock, cvar) = &*self.0;
        lock.lock().unwrap_or_else(|e| e.into_inner()).armed = None;
        cvar.notify_all();
    }
}

/// The signal that interrupts `KVM_RUN`: `SIGRTMIN + 4`, handled by a handler that does
/// nothing, installed without `SA_RESTART`.
pub(crate) fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 4
}

extern "C" fn on_kick(_: libc::c_int) {}

impl Watchdog {
    /// A watchdog with no thread yet.
    pub(crate) fn new() -> Self {
        Self {
            shared: Arc::new((Mutex::new(WatchState::default()), Condvar::new())),
            thread: None,
        }
    }

    /// Arms the watchdog for the calling thread (the vCPU thread) until `deadline`.
    /// The watchdog thread is started when there is a deadline or a time slice. An
    /// error if it cannot be started (the process is at its task or memory limit).
    pub(crate) fn arm(&mut self, deadline: Option<Instant>) -> std::io::Result<Armed> {
        install_kick_handler();
        let slice = {
            let (lock, _) = &*self.shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).slice
        };
        if deadline.is_some() || slice.is_some() {
            self.start()?;
        }
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        state.armed = Some((deadline, me));
        state.slice_end = slice.map(|s| Instant::now() + s);
        cvar.notify_all();
        Ok(Armed(Arc::clone(&self.shared)))
    }

    /// Kicks the vCPU every `slice` while armed (several guest threads share it), or
    /// stops doing so (`None`).
    pub(crate) fn set_slice(&mut self, slice: Option<Duration>) -> std::io::Result<()> {
        if slice.is_some() {
            install_kick_handler();
            self.start()?;
        }
        let (lock, cvar) = &*self.shared;
        let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
        state.slice = slice;
        state.slice_end = slice.map(|s| Instant::now() + s);
        cvar.notify_all();
        Ok(())
    }

    fn start(&mut self) -> std::io::Result<()> {
        if self.thread.is_none() {
            let shared = Arc::clone(&self.shared);
            self.thread = Some(
                std::thread::Builder::new()
                    .name("vcpu-watchdog".into())
                    .spawn(move || watch(&shared))?,
            );
        }
        Ok(())
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        {
            let (lock, cvar) = &*self.shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).shutdown = true;
            cvar.notify_all();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &(Mutex<WatchState>, Condvar)) {
    let (lock, cvar) = shared;
    let mut state = lock.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if state.shutdown {
            return;
        }
        let wait = match state.armed {
            None => Duration::from_secs(3600),
            Some((deadline, thread)) => {
                let now = Instant::now();
                let mut kick = false;
                let mut wait = Duration::from_secs(3600);
                match deadline {
                    Some(d) if now >= d => {
                        kick = true;
                        wait = Duration::from_millis(5);
                    }
                    Some(d) => wait = d - now,
                    None => {}
                }
                if let (Some(slice), Some(end)) = (state.slice, state.slice_end) {
                    let end = if now >= end {
                        kick = true;
                        now + slice
                    } else {
                        end
                    };
                    state.slice_end = Some(end);
                    wait = wait.min(end - now);
                }
                if kick {
                    // SAFETY: the target thread armed the watchdog and is still inside
                    // `MicroVm::run`, which holds the `Armed` guard as a local and never
                    // leaks it: `Armed::drop` disarms under this lock before `run`
                    // returns, so the thread is alive.
                    unsafe { libc::pthread_kill(thread, kick_signal()) };
                }
                wait
            }
        };
        state = cvar
            .wait_timeout(state, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// Blocks the kick signal in the calling thread (the vCPU thread) while it lives, and
/// tells KVM to unblock it inside `KVM_RUN`: a kick then ends the next (or current)
/// `KVM_RUN` and nothing else. Restores the thread's signal mask when dropped.
pub(crate) struct KickMask {
    old: libc::sigset_t,
}

impl KickMask {
    /// Blocks the kick signal; `set_run_mask` is given the 64-bit mask KVM should run
    /// the guest with (the thread's mask without the kick signal).
    pub(crate) fn block<E>(set_run_mask: impl FnOnce(u64) -> Result<(), E>) -> Result<Self, E> {
        install_kick_handler();
        // SAFETY: the sigset_t values are initialized by sigemptyset/pthread_sigmask
        // before use; pthread_sigmask only changes the calling thread's mask.
        let old = unsafe {
            let mut kick: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut kick);
            libc::sigaddset(&mut kick, kick_signal());
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &kick, &mut old);
            old
        };
        let mut run_mask = 0u64;
        for sig in 1..=64 {
            // SAFETY: `old` is an initialized sigset_t; `sig` is a valid signal number.
            if sig != kick_signal() && unsafe { libc::sigismember(&old, sig) } == 1 {
                run_mask |= 1 << (sig - 1);
            }
        }
        let mask = Self { old };
        set_run_mask(run_mask)?;
        Ok(mask)
    }
}

impl KickMask {
    /// Consumes a pending kick. A kick that ended `KVM_RUN` stays pending (it is
    /// blocked outside `KVM_RUN`) and would end every later `KVM_RUN` at once; the run
    /// loop takes it after each interrupted exit.
    pub(crate) fn take_pending(&self) {
        // SAFETY: the sigset_t is initialized by sigemptyset/sigaddset; the zero
        // timeout makes sigtimedwait return at once, with the signal or EAGAIN.
        unsafe {
            let mut kick: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut kick);
            libc::sigaddset(&mut kick, kick_signal());
            let zero = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            libc::sigtimedwait(&kick, std::ptr::null_mut(), &zero);
        }
    }
}

impl Drop for KickMask {
    fn drop(&mut self) {
        // SAFETY: restores the mask this thread had, saved by `block`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}

fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: installs a handler that does nothing, without SA_RESTART, so that a
        // blocking KVM_RUN returns EINTR; the sigaction struct is fully initialized.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn a_blocking_system_call_is_interrupted_at_the_deadline() {
        let (rx, _tx) = std::io::pipe().unwrap();
        let mut watchdog = Watchdog::new();
        let start = Instant::now();
        let armed = watchdog
            .arm(Some(start + Duration::from_millis(20)))
            .unwrap();
        let mut byte = 0u8;
        // SAFETY: reads at most one byte into `byte` from a pipe this test owns.
        let n = unsafe { libc::read(rx.as_raw_fd(), (&raw mut byte).cast(), 1) };
        let err = std::io::Error::last_os_error();
        drop(armed);
        assert_eq!(n, -1);
        assert_eq!(err.raw_os_error(), Some(libc::EINTR));
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[test]
    fn without_a_deadline_no_thread_is_started() {
        let mut watchdog = Watchdog::new();
        drop(watchdog.arm(None).unwrap());
        assert!(watchdog.thread.is_none());
    }
}
