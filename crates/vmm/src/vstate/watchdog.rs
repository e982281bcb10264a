//! The vCPU watchdog: a run's time limit. When the deadline passes, the vCPU thread is
//! sent a signal that makes a blocking `KVM_RUN` return `EINTR`; the run loop then sees
//! the deadline and stops the guest.

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
    armed: Option<(Instant, libc::pthread_t)>,
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

    /// Arms the watchdog for the calling thread (the vCPU thread) until `deadline`; with
    /// no deadline nothing is armed and no thread is started. An error if the watchdog
    /// thread cannot be started (the process is at its task or memory limit).
    pub(crate) fn arm(&mut self, deadline: Option<Instant>) -> std::io::Result<Armed> {
        if let Some(deadline) = deadline {
            install_kick_handler();
            if self.thread.is_none() {
                let shared = Arc::clone(&self.shared);
                self.thread = Some(
                    std::thread::Builder::new()
                        .name("vcpu-watchdog".into())
                        .spawn(move || watch(&shared))?,
                );
            }
            // SAFETY: pthread_self has no preconditions.
            let me = unsafe { libc::pthread_self() };
            let (lock, cvar) = &*self.shared;
            lock.lock().unwrap_or_else(|e| e.into_inner()).armed = Some((deadline, me));
            cvar.notify_all();
        }
        Ok(Armed(Arc::clone(&self.shared)))
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
                if now >= deadline {
                    // SAFETY: the target thread armed the watchdog and is still inside
                    // `MicroVm::run`, which holds the `Armed` guard as a local and never
                    // leaks it: `Armed::drop` disarms under this lock before `run`
                    // returns, so the thread is alive.
                    unsafe { libc::pthread_kill(thread, kick_signal()) };
                    Duration::from_millis(5)
                } else {
                    deadline - now
                }
            }
        };
        state = cvar
            .wait_timeout(state, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
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
