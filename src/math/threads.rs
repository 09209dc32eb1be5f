//! How many threads one computation of the head's math ([`super::solver`],
//! [`super::stats`], [`super::woodbury`]) shares its work among, and how work is shared among
//! threads (also the state dir's syncs).

use std::sync::{Mutex, OnceLock};

/// The most threads one computation uses.
const MAX_THREADS: usize = 8;

/// Every core, up to [`MAX_THREADS`], when the work is `worth` it (large enough to repay
/// starting threads); else one.
pub fn cores_if(worth: bool) -> usize {
    if worth {
        cores()
    } else {
        1
    }
}

/// The cores this process may use, up to [`MAX_THREADS`], asked once: the standard library
/// reads the cgroup's CPU quota from files on every call, which a one-sample forget (whose
/// cost model asks) would pay each time.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, |t| t.get().min(MAX_THREADS))
    })
}

/// Runs `work` on every part, the first on this thread and each other on a thread of its own,
/// and returns once all are done. A part whose thread cannot be started (the process is at its
/// limit) runs on this thread after the first: the parts are independent, so only the time
/// changes.
pub fn run_parts<T: Send>(parts: Vec<T>, work: impl Fn(T) + Sync) {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return;
    };
    if parts.len() == 0 {
        // One part: no scope to enter (small products on a forget's path come here).
        work(first);
        return;
    }
    // Each other part waits in a slot for the thread that takes it, or for this one.
    let slots: Vec<Mutex<Option<T>>> = parts.map(|part| Mutex::new(Some(part))).collect();
    let take = |slot: &Mutex<Option<T>>| slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    let work = &work;
    std::thread::scope(|scope| {
        let mut here = Vec::new();
        for slot in &slots {
            let run = move || {
                if let Some(part) = take(slot) {
                    work(part);
                }
            };
            if threads_refused()
                || std::thread::Builder::new()
                    .spawn_scoped(scope, run)
                    .is_err()
            {
                here.push(slot);
            }
        }
        work(first);
        for slot in here {
            if let Some(part) = take(slot) {
                work(part);
            }
        }
    });
}

/// Runs `there` on a thread of its own while `here` runs on this thread, and returns both
/// results once both are done. If no thread can be started, `there` runs on this thread after
/// `here`. A panic in `there` is resumed on this thread once `here` is done.
pub fn beside<A, B: Send>(here: impl FnOnce() -> A, there: impl FnOnce() -> B + Send) -> (A, B) {
    // `there` waits in a slot for the thread that takes it, or for this one.
    let slot = Mutex::new(Some(there));
    let take = || slot.lock().unwrap_or_else(|e| e.into_inner()).take();
    std::thread::scope(|scope| {
        let spawned = match threads_refused() {
            true => None,
            false => std::thread::Builder::new()
                .spawn_scoped(scope, || take().map(|there| there()))
                .ok(),
        };
        let a = here();
        let done = spawned.and_then(|handle| {
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        });
        let b = match done {
            Some(b) => b,
            None => (take().expect("nobody ran it"))(),
        };
        (a, b)
    })
}

/// Marks this thread as batch work (Linux's `SCHED_BATCH`): when it is woken it does not
/// preempt the thread running on its core, but waits for the next scheduling tick, and it keeps
/// the callers' priority, so its share of the cores is theirs. For the head's background:
/// woken at the end of a call, it would otherwise take the caller's core before the call
/// returns. (The lowest priority, nice 19, does that too but starves it while the callers keep
/// every core busy, and calls that wait for its re-solve would wait on a starved thread.)
pub fn batch_this_thread() {
    #[cfg(target_os = "linux")]
    // SAFETY: a plain system call on this thread (`pid` = 0) that reads the parameter it is
    // given and writes no memory of this process; SCHED_BATCH at priority 0 needs no
    // privilege.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        if libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) != 0 {
            tracing::debug!(
                "the background could not be marked as batch work: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(not(test))]
fn threads_refused() -> bool {
    false
}

#[cfg(test)]
fn threads_refused() -> bool {
    tests::REFUSED.with(std::cell::Cell::get)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    thread_local! {
        /// A test hook: [`run_parts`] called on this thread starts no thread, as when the
        /// process is at its limit.
        pub(crate) static REFUSED: Cell<bool> = const { Cell::new(false) };
    }

    /// Every part runs exactly once, whether its thread starts or not.
    #[test]
    fn every_part_runs_once() {
        for refused in [false, true] {
            REFUSED.with(|r| r.set(refused));
            for n in [0, 1, 2, 5] {
                let runs: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                run_parts((0..n).collect(), |i: usize| {
                    runs[i].fetch_add(1, Ordering::SeqCst);
                });
                assert!(
                    runs.iter().all(|r| r.load(Ordering::SeqCst) == 1),
                    "{n} parts"
                );
            }
        }
        REFUSED.with(|r| r.set(false));
    }

    /// Both sides of [`beside`] run once, at the same time when a thread starts (each waits
    /// for the other to begin), and `there` after `here` when none can; a panic on the other
    /// thread reaches the caller.
    #[test]
    fn both_sides_run_once() {
        let started = AtomicUsize::new(0);
        let meet = || {
            started.fetch_add(1, Ordering::SeqCst);
            while started.load(Ordering::SeqCst) < 2 {
                std::hint::spin_loop();
            }
        };
        assert_eq!(beside(|| (meet(), 1).1, || (meet(), 2).1), (1, 2));
        REFUSED.with(|r| r.set(true));
        let order = Mutex::new(Vec::new());
        let push = |side| order.lock().unwrap().push(side);
        beside(|| push("here"), || push("there"));
        REFUSED.with(|r| r.set(false));
        assert_eq!(*order.lock().unwrap(), ["here", "there"]);
        let panicked = std::panic::catch_unwind(|| beside(|| 1, || panic!("there")));
        assert!(panicked.is_err());
    }
}
