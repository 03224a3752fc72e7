//! CPU priority: bulk work (large frames, long reads) at idle priority, off the async
//! workers; the threads that serve requests with a short scheduler slice.
//!
//! Decoding, hashing for the signature and counting the values of a frame of megabytes, or
//! scanning thousands of rows, takes milliseconds of one core. Run in place on an async
//! worker at normal priority, that time is taken from every other app: its requests wait
//! behind the work in the worker's queue, and then for the core. So bulk work runs
//!
//! - off the async worker ([`tokio::task::block_in_place`] for [`run`]; the node's long
//!   reads are on the blocking pool already), so the worker's other tasks go on on another
//!   thread; and
//! - under `SCHED_IDLE` ([`at_low_priority`]). Linux's fair scheduler (EEVDF, 6.6 on) does
//!   not let a waking thread preempt the running one just because the running one has a
//!   higher nice value: a nice-19 scan keeps the core until its slice ends, which without
//!   a high-resolution tick is the next 4 ms tick on a `HZ=250` kernel. A waking thread of
//!   any other policy always preempts a `SCHED_IDLE` one. The work loses nothing when the
//!   machine is otherwise idle: the kernel gives an idle-policy thread every cycle nobody
//!   else wants.
//!
//! The threads that serve requests ([`serving_thread`]) ask for a short slice (0.1 ms,
//! kernel 6.12 on): the scheduler lets a waking thread with a shorter slice preempt one
//! with a longer one, so a worker woken by another app's point read takes the core from a
//! process at the default slice (an app's own computation) instead of waiting for it to
//! use up its 3 ms.
//!
//! Lowering a thread's priority is always allowed, raising it back needs `CAP_SYS_NICE`
//! (the daemon as root has it). Where the priority cannot be raised back, the work runs on
//! a short-lived thread of its own that lowers itself and ends with the work.

use std::sync::OnceLock;
use tokio::runtime::{Handle, RuntimeFlavor};

/// Input of at least this many bytes is bulk work for [`run`].
pub const HEAVY_BYTES: usize = 64 * 1024;

/// The scheduler slice of a serving thread ([`serving_thread`]): the kernel's minimum.
pub const SERVING_SLICE_NS: u64 = 100_000;

/// Runs `f`, a step over `bytes` of input. When the input is at least [`HEAVY_BYTES`], it
/// runs under `SCHED_IDLE`: off the async worker on a multi-threaded runtime, so the
/// worker's other tasks go on elsewhere; in place on a current-thread runtime (a lane of
/// the daemon, which serves one app: the work holds up only that app's requests) or
/// outside any runtime. A small input runs in place as it is (it costs less than the
/// hand-off).
pub fn run<T: Send>(bytes: usize, f: impl FnOnce() -> T + Send) -> T {
    if bytes < HEAVY_BYTES {
        return f();
    }
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(|| at_low_priority(f))
        }
        _ => at_low_priority(f),
    }
}

/// Runs `f` under `SCHED_IDLE` and returns with the calling thread's
/// scheduling as it was. Call it only where blocking the thread is fine (a blocking-pool
/// thread, or inside [`tokio::task::block_in_place`]).
pub fn at_low_priority<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    if can_raise_priority() {
        return idle_then_back(f);
    }
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(before) = sched::get() {
                sched::set(&before.idle());
            }
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// Awaits `io`, the reading or writing of a frame of `bytes`, with each of its polls under
/// `SCHED_IDLE` when the frame is at least [`HEAVY_BYTES`]: the copies between the socket
/// and memory happen in those polls, and for a frame of megabytes they add up to
/// milliseconds. Between polls the thread runs as it was. Where the priority could not be
/// raised back, `io` runs as it is.
pub async fn io<F: std::future::Future>(bytes: usize, io: F) -> F::Output {
    if bytes < HEAVY_BYTES || !can_raise_priority() {
        return io.await;
    }
    let mut io = std::pin::pin!(io);
    std::future::poll_fn(|cx| idle_then_back(|| io.as_mut().poll(cx))).await
}

/// Runs `f` under `SCHED_IDLE` on the calling thread and puts its scheduling back after
/// (even if `f` panics); where the thread is idle already or its attributes cannot be
/// read, `f` runs as it is. Needs [`can_raise_priority`].
fn idle_then_back<T>(f: impl FnOnce() -> T) -> T {
    match sched::get() {
        Some(before) if before.policy != sched::IDLE => {
            sched::set(&before.idle());
            let _restore = Restore(before);
            f()
        }
        _ => f(),
    }
}

/// Gives the calling thread a short scheduler slice ([`SERVING_SLICE_NS`]), for the threads
/// that answer requests (the daemon's and the node's async workers, blocking pool and
/// writer: call it from `on_thread_start`). Kernels before 6.12 ignore the slice; nothing
/// else about the thread changes.
pub fn serving_thread() {
    if let Some(mut attr) = sched::get() {
        if attr.policy == sched::OTHER {
            attr.runtime_ns = SERVING_SLICE_NS;
            sched::set(&attr);
        }
    }
}

/// A multi-threaded runtime with I/O and timers whose threads (workers and blocking pool)
/// are [`serving_thread`]s: the runtime of a daemon or node.
///
/// # Errors
///
/// The runtime could not start its threads.
pub fn serving_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_start(serving_thread)
        .build()
}

/// Puts the thread's scheduling back when dropped (after `f`, even if it panicked).
struct Restore(sched::Attr);

impl Drop for Restore {
    fn drop(&mut self) {
        sched::set(&self.0);
    }
}

/// Whether this process may raise a thread's priority back after lowering it; probed once,
/// on a thread of its own (on Linux scheduling is per thread).
fn can_raise_priority() -> bool {
    static CAN: OnceLock<bool> = OnceLock::new();
    *CAN.get_or_init(|| {
        std::thread::spawn(|| {
            sched::get().is_some_and(|before| {
                sched::set(&before.idle()) && sched::set(&before) && sched::get() == Some(before)
            })
        })
        .join()
        .unwrap_or(false)
    })
}

/// The calling thread's scheduling attributes, through `sched_getattr(2)` and
/// `sched_setattr(2)` (neither `nix` nor `rustix` wraps them; the C library has no
/// wrapper either).
#[allow(unsafe_code)]
mod sched {
    /// `SCHED_OTHER`, the default policy.
    pub const OTHER: u32 = libc::SCHED_OTHER as u32;
    /// `SCHED_IDLE`.
    pub const IDLE: u32 = libc::SCHED_IDLE as u32;

    /// `struct sched_attr` (`SCHED_ATTR_SIZE_VER1`, Linux 5.3).
    #[repr(C)]
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
    pub struct Attr {
        /// Size of the structure, for the kernel's versioning.
        pub size: u32,
        /// Scheduling policy.
        pub policy: u32,
        /// `SCHED_FLAG_*`.
        pub flags: u64,
        /// Nice value (fair policies).
        pub nice: i32,
        /// Static priority (real-time policies).
        pub priority: u32,
        /// The slice requested (fair policies, kernel 6.12 on), or a deadline task's runtime.
        pub runtime_ns: u64,
        /// A deadline task's deadline.
        pub deadline_ns: u64,
        /// A deadline task's period.
        pub period_ns: u64,
        /// Utilisation clamp, minimum.
        pub util_min: u32,
        /// Utilisation clamp, maximum.
        pub util_max: u32,
    }

    impl Attr {
        /// These attributes as bulk work's: `SCHED_IDLE` (whose weight is fixed: the nice
        /// value does not count), the default slice.
        pub fn idle(&self) -> Attr {
            Attr {
                policy: IDLE,
                runtime_ns: 0,
                flags: 0,
                ..*self
            }
        }
    }

    const SIZE: u32 = std::mem::size_of::<Attr>() as u32;

    /// The calling thread's attributes; `None` where the kernel refuses (seccomp, or a
    /// kernel before 3.14).
    pub fn get() -> Option<Attr> {
        let mut attr = Attr::default();
        // SAFETY: the kernel writes at most SIZE bytes into `attr`, a live, properly sized
        // and aligned `struct sched_attr`; pid 0 is the calling thread.
        let r = unsafe {
            libc::syscall(
                libc::SYS_sched_getattr,
                0,
                std::ptr::from_mut(&mut attr),
                SIZE,
                0,
            )
        };
        (r == 0).then_some(Attr { size: SIZE, ..attr })
    }

    /// Sets the calling thread's attributes; whether the kernel took them.
    pub fn set(attr: &Attr) -> bool {
        let attr = Attr {
            size: SIZE,
            ..*attr
        };
        // SAFETY: the kernel reads `size` bytes from `attr`, a live `struct sched_attr`;
        // pid 0 is the calling thread.
        let r = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, std::ptr::from_ref(&attr), 0) };
        r == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> u32 {
        sched::get().expect("sched_getattr").policy
    }

    #[test]
    fn bulk_work_runs_under_sched_idle_and_the_caller_keeps_its_own() {
        let before = sched::get().unwrap();
        assert_eq!(at_low_priority(policy), sched::IDLE);
        assert_eq!(sched::get().unwrap(), before);
    }

    #[test]
    fn a_serving_thread_asks_for_the_short_slice_and_bulk_work_gives_it_back() {
        std::thread::spawn(|| {
            serving_thread();
            let serving = sched::get().unwrap();
            assert_eq!(serving.policy, sched::OTHER);
            // Kernels before 6.12 report no slice of a fair thread.
            assert!(serving.runtime_ns == SERVING_SLICE_NS || serving.runtime_ns == 0);
            assert_eq!(at_low_priority(policy), sched::IDLE);
            assert_eq!(sched::get().unwrap(), serving);
        })
        .join()
        .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn large_input_is_bulk_work_and_small_input_runs_in_place() {
        let worker = std::thread::current().id();
        let (large, _) = run(HEAVY_BYTES, || (policy(), std::thread::current().id()));
        assert_eq!(large, sched::IDLE);
        let (small, thread) = run(HEAVY_BYTES - 1, || (policy(), std::thread::current().id()));
        assert_eq!(thread, worker, "small input stays on the worker");
        assert_eq!(small, sched::OTHER);
        assert_eq!(policy(), sched::OTHER, "the worker's policy is back");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn large_io_is_polled_at_low_priority_and_small_io_as_it_is() {
        let polled = |n| io(n, async { policy() });
        assert_eq!(polled(HEAVY_BYTES).await, sched::IDLE);
        assert_eq!(polled(HEAVY_BYTES - 1).await, sched::OTHER);
        assert_eq!(policy(), sched::OTHER);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_current_thread_runtime_runs_bulk_work_in_place_at_low_priority() {
        let me = std::thread::current().id();
        let (thread, large) = run(HEAVY_BYTES * 4, || (std::thread::current().id(), policy()));
        assert_eq!((thread, large), (me, sched::IDLE));
        assert_eq!(policy(), sched::OTHER);
    }
}
