//! An app's lane: the thread of its own on which the daemon serves the app's connections.
//!
//! The kernel's scheduler is fair between threads, not between the tasks of an async
//! runtime. On shared async workers, a request of one app waits behind whatever the worker
//! it landed on is doing for another app, and, when that worker is preempted or runnable
//! behind a busy thread, behind the kernel's tick as well (a runnable thread is rarely moved
//! to an idle core within a millisecond of having run). With a lane per app, each app is a
//! scheduling entity of its own: an app that keeps the daemon busy keeps its own lane busy,
//! and another app's lane, waking for a point read, preempts it as any waking thread with
//! lag preempts one that has used more than its share.
//!
//! A lane is a current-thread runtime on a thread named `fold_client-app`, a serving
//! thread (`fold_ipc::heavy::serving_thread`). It starts with the app's first connection
//! and stops when the last one ends, so an installed app that is not connected costs no
//! thread. Bulk work of the app's own (a large frame, a long read) runs on the lane itself,
//! under `SCHED_IDLE` (`fold_ipc::heavy::run`): it delays only the app's own requests.

use std::sync::{Arc, Mutex, PoisonError, Weak};
use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// The name of every lane's thread (at most 15 bytes: the kernel's limit).
pub const LANE_THREAD: &str = "fold_client-app";

/// A running lane. Cloned into every task spawned on it; the lane stops when the last
/// clone is dropped.
#[derive(Debug)]
pub struct Lane {
    handle: Handle,
    /// Dropped with the lane: the thread's `block_on` returns and the runtime shuts down.
    _stop: oneshot::Sender<()>,
}

impl Lane {
    /// Starts a lane on a thread of its own.
    ///
    /// # Errors
    ///
    /// The runtime or the thread could not be created (out of threads or memory).
    pub fn start() -> std::io::Result<Arc<Lane>> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name(LANE_THREAD)
            .on_thread_start(fold_ipc::heavy::serving_thread)
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(LANE_THREAD.into())
            .spawn(move || {
                fold_ipc::heavy::serving_thread();
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // Reads still running on the lane's blocking pool were abandoned by their
                // callers and stop at their next progress check; do not wait for them.
                runtime.shutdown_background();
            })?;
        Ok(Arc::new(Lane {
            handle,
            _stop: stop,
        }))
    }

    /// Runs `task` on the lane; the lane lives at least as long as the task.
    pub fn spawn<F>(self: &Arc<Self>, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let keep = Arc::clone(self);
        self.handle.spawn(async move {
            task.await;
            drop(keep);
        });
    }
}

/// The lane of one app, started on demand: the app's connections share it while any is
/// open.
#[derive(Debug, Default)]
pub struct LaneSlot {
    current: Mutex<Weak<Lane>>,
}

impl LaneSlot {
    /// The app's running lane, or a new one.
    ///
    /// # Errors
    ///
    /// A new lane was needed and could not be started.
    pub fn get(&self) -> std::io::Result<Arc<Lane>> {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lane) = current.upgrade() {
            return Ok(lane);
        }
        let lane = Lane::start()?;
        *current = Arc::downgrade(&lane);
        Ok(lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn thread_name() -> String {
        std::thread::current()
            .name()
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn connections_of_one_app_share_its_lane_and_it_stops_after_the_last() {
        let slot = LaneSlot::default();
        let (tx, rx) = std::sync::mpsc::channel();
        let (release, hold) = tokio::sync::oneshot::channel::<()>();
        let first = slot.get().unwrap();
        let tx1 = tx.clone();
        first.spawn(async move {
            tx1.send((thread_name(), std::thread::current().id()))
                .unwrap();
            let _ = hold.await;
        });
        let second = slot.get().unwrap();
        assert!(Arc::ptr_eq(&first, &second), "one lane while a task runs");
        second.spawn(async move {
            tx.send((thread_name(), std::thread::current().id()))
                .unwrap();
        });
        let (name_a, thread_a) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        let (name_b, thread_b) = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            (name_a.as_str(), name_b.as_str()),
            (LANE_THREAD, LANE_THREAD)
        );
        assert_eq!(thread_a, thread_b);
        assert_ne!(thread_a, std::thread::current().id());
        drop((first, second));
        // The first task still holds the lane.
        assert!(slot.current.lock().unwrap().upgrade().is_some());
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while slot.current.lock().unwrap().upgrade().is_some() {
            assert!(
                std::time::Instant::now() < deadline,
                "the lane did not stop"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        // A later connection gets a fresh lane.
        let third = slot.get().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        third.spawn(async move { tx.send(std::thread::current().id()).unwrap() });
        assert_ne!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), thread_a);
    }
}
