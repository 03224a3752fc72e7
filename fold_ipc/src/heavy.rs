//! Bulk work (large frames, long reads) at the lowest CPU priority, off the async workers.
//!
//! Decoding, hashing for the signature and counting the values of a frame of megabytes, or
//! scanning thousands of rows, takes milliseconds of one core. Run in place on an async
//! worker at normal priority, that time is taken from every other app: its requests wait
//! behind the work in the worker's queue, and then for the core. So bulk work runs
//!
//! - off the async worker ([`tokio::task::block_in_place`] for [`run`]; the node's long
//!   reads are on the blocking pool already), so the worker's other tasks go on on another
//!   thread; and
//! - at nice 19 ([`at_low_priority`]), so that any thread at normal priority, such as a
//!   worker answering another app's point read, preempts it when it wakes. The work loses
//!   nothing when the machine is otherwise idle: the kernel gives a low-priority thread
//!   every cycle nobody else wants.
//!
//! Lowering a thread's priority is always allowed, raising it back needs `CAP_SYS_NICE`
//! (the daemon as root has it). Where the priority cannot be raised back, the work runs on
//! a short-lived thread of its own that lowers itself and ends with the work.

use std::sync::OnceLock;
use tokio::runtime::{Handle, RuntimeFlavor};

/// Input of at least this many bytes is bulk work for [`run`].
pub const HEAVY_BYTES: usize = 64 * 1024;

/// The nice value of bulk work: the lowest priority.
pub const BULK_NICE: i32 = 19;

/// Runs `f`, a step over `bytes` of input: at the lowest priority and off the async worker
/// when the input is at least [`HEAVY_BYTES`] and the runtime is multi-threaded; in place
/// otherwise (a small input costs less than the hand-off, and a current-thread runtime has
/// no other worker to hand its tasks to).
pub fn run<T: Send>(bytes: usize, f: impl FnOnce() -> T + Send) -> T {
    let off_worker = bytes >= HEAVY_BYTES
        && Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if off_worker {
        tokio::task::block_in_place(|| at_low_priority(f))
    } else {
        f()
    }
}

/// Runs `f` at nice [`BULK_NICE`] and returns with the calling thread's priority as it was.
/// Call it only where blocking the thread is fine (a blocking-pool thread, or inside
/// [`tokio::task::block_in_place`]).
pub fn at_low_priority<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let before = rustix::process::getpriority_process(None).unwrap_or(0);
    if before >= BULK_NICE {
        return f();
    }
    if can_raise_priority() {
        let _ = rustix::process::setpriority_process(None, BULK_NICE);
        let _restore = Restore(before);
        return f();
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = rustix::process::setpriority_process(None, BULK_NICE);
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Puts the thread's nice value back when dropped (after `f`, even if it panicked).
struct Restore(i32);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = rustix::process::setpriority_process(None, self.0);
    }
}

/// Whether this process may raise a thread's priority back after lowering it; probed once,
/// on a thread of its own (on Linux the nice value is per thread).
fn can_raise_priority() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| {
            let before = rustix::process::getpriority_process(None).unwrap_or(0);
            rustix::process::setpriority_process(None, before.saturating_add(1).min(BULK_NICE))
                .is_ok()
                && rustix::process::setpriority_process(None, before).is_ok()
        })
        .join()
        .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nice() -> i32 {
        rustix::process::getpriority_process(None).unwrap()
    }

    #[test]
    fn bulk_work_runs_at_the_lowest_priority_and_the_caller_keeps_its_own() {
        let before = nice();
        assert_eq!(at_low_priority(nice), BULK_NICE);
        assert_eq!(nice(), before);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_input_is_bulk_work_and_small_input_runs_in_place() {
        let worker = std::thread::current().id();
        let (nice_large, _) = run(HEAVY_BYTES, || (nice(), std::thread::current().id()));
        assert_eq!(nice_large, BULK_NICE);
        let (nice_small, thread) = run(HEAVY_BYTES - 1, || (nice(), std::thread::current().id()));
        assert_eq!(thread, worker, "small input stays on the worker");
        assert!(nice_small < BULK_NICE);
        assert!(nice() < BULK_NICE, "the worker's priority is back");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_runs_everything_in_place() {
        let me = std::thread::current().id();
        assert_eq!(run(HEAVY_BYTES * 4, || std::thread::current().id()), me);
    }
}
