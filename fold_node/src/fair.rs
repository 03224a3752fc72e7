//! Fair read slots: the node's `readers` slots shared among tenants (apps).
//!
//! Rules ([`FairSlots`]):
//!
//! - A tenant alone may use every slot.
//! - While another tenant waits, a tenant holding its share (`share.reads`) or more gets no
//!   new slot until the waiters are served.
//! - Free slots are handed out round robin across the tenants with waiters (deficit round
//!   robin with unit cost), FIFO within one tenant; a tenant under its share goes before
//!   one at or over it.
//! - A slot taken beyond the share while the tenant was alone is given back when another
//!   tenant comes to wait: a long read on the blocking pool checks [`Running::interrupt`]
//!   at each SQLite progress step, and a read over its tenant's share hands its slot over
//!   and parks (connection and snapshot kept) until the slot comes back to it.
//! - A waiter whose future is dropped (its deadline passed) leaves its queue; a slot
//!   handed to it in the meantime is passed on, never leaked.
//!
//! One `std::sync::Mutex` guards the small state; waiters are woken by a `oneshot` each.
//! The uncontended path (a free slot, nobody waiting) is a lock, a hash lookup and two
//! counters, and allocates nothing once the tenant has been seen.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::oneshot;

/// The tenant key of the node's own requests (no app id): its share is every slot.
pub(crate) const NODE_TENANT: &str = "";

/// Idle tenants (holding nothing, waiting for nothing) are kept, so that a tenant's next
/// read allocates nothing; past this many tenants the idle ones are forgotten.
const MAX_IDLE_TENANTS: usize = 1024;

/// How often a parked read looks whether its caller gave up.
const PARK_POLL: Duration = Duration::from_millis(2);

/// The node's read slots, shared fairly among tenants.
pub(crate) struct FairSlots {
    state: Mutex<State>,
    /// Whether any tenant waits; read without the lock by running reads deciding whether
    /// to check for yielding.
    contended: AtomicBool,
}

impl fmt::Debug for FairSlots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("FairSlots")
            .field("total", &s.total)
            .field("free", &s.free)
            .field("tenants", &s.tenants.len())
            .finish()
    }
}

struct State {
    total: usize,
    free: usize,
    /// Slots lent beyond `total` to tenants under their share while others held more
    /// than theirs; paid back by the next slots those give back (see [`FairSlots::acquire`]).
    borrowed: usize,
    tenants: HashMap<Arc<str>, Tenant>,
    /// Tenants with waiters, in round-robin order; each appears once.
    turn: VecDeque<Arc<str>>,
    next_id: u64,
}

struct Tenant {
    held: usize,
    /// The share sent with the tenant's latest request (at least 1).
    share: usize,
    queue: VecDeque<Waiter>,
}

struct Waiter {
    id: u64,
    wake: Wake,
}

enum Wake {
    /// A request waiting for its first slot (an async task).
    Task(oneshot::Sender<()>),
    /// A running read that gave its slot back and parked its thread.
    Thread(std::sync::mpsc::SyncSender<()>),
}

impl Wake {
    /// Hands the slot over; false when the receiver is gone.
    fn send(self) -> bool {
        match self {
            Wake::Task(tx) => tx.send(()).is_ok(),
            Wake::Thread(tx) => tx.try_send(()).is_ok(),
        }
    }
}

impl FairSlots {
    /// `total` slots (at least 1).
    pub(crate) fn new(total: usize) -> Arc<FairSlots> {
        Arc::new(FairSlots {
            state: Mutex::new(State {
                total: total.max(1),
                free: total.max(1),
                borrowed: 0,
                tenants: HashMap::new(),
                turn: VecDeque::new(),
                next_id: 0,
            }),
            contended: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a slot for `tenant` (`None`: the node itself, whose share is every slot),
    /// whose share is `share` slots. Dropping the future leaves the queue.
    pub(crate) async fn acquire(self: &Arc<Self>, tenant: Option<&str>, share: u32) -> Slot {
        let (key, id, rx) = {
            let mut s = self.lock();
            let total = s.total;
            let share = match tenant {
                None => total,
                Some(_) => (share as usize).max(1),
            };
            let key = s.tenant(tenant.unwrap_or(NODE_TENANT));
            // Nobody waits whenever a slot is free (each release hands it on at once).
            if s.free > 0 {
                let t = s.tenants.get_mut(&*key).expect("tenant just added");
                t.share = share;
                t.held += 1;
                s.free -= 1;
                return Slot {
                    slots: Arc::clone(self),
                    key,
                    held: true,
                };
            }
            // Every slot is taken, and some by tenants over their share: rather than wait
            // for those reads to reach their next progress check (which, on a busy
            // machine, waits for their threads to be scheduled), a tenant under its share
            // borrows a slot at once, and the over-share reads pay it back when they yield.
            if s.tenants[&*key].held < share && s.excess() > s.borrowed {
                let t = s.tenants.get_mut(&*key).expect("tenant just added");
                t.share = share;
                t.held += 1;
                s.borrowed += 1;
                self.contended.store(true, Ordering::Relaxed);
                return Slot {
                    slots: Arc::clone(self),
                    key,
                    held: true,
                };
            }
            let (tx, rx) = oneshot::channel();
            let id = s.enqueue(&key, share, Wake::Task(tx), false);
            self.contended.store(true, Ordering::Relaxed);
            (key, id, rx)
        };
        let mut waiting = Waiting {
            slots: self,
            key: Some(key),
            id,
        };
        // The sender leaves the queue only to hand a slot over (the queue lives as long
        // as `self`), so an error here would be a bug: the read then runs holding nothing.
        let held = rx.await.is_ok();
        let key = waiting.key.take().expect("still waiting");
        Slot {
            slots: Arc::clone(self),
            key,
            held,
        }
    }

    /// Gives one slot of `key` back and hands free slots to waiters.
    fn release(&self, key: &str) {
        let mut s = self.lock();
        if let Some(t) = s.tenants.get_mut(key) {
            t.held -= 1;
        }
        s.give_back();
        self.contended.store(s.contended(), Ordering::Relaxed);
    }

    /// A waiter gives up: it leaves its queue, or, if a slot was handed to it meanwhile,
    /// that slot goes to the next waiter.
    fn cancel(&self, key: &str, id: u64) {
        let mut s = self.lock();
        let Some(t) = s.tenants.get_mut(key) else {
            return;
        };
        if let Some(pos) = t.queue.iter().position(|w| w.id == id) {
            t.queue.remove(pos);
            if t.queue.is_empty() {
                s.turn.retain(|k| &**k != key);
            }
        } else {
            t.held -= 1;
            s.give_back();
        }
        self.contended.store(s.contended(), Ordering::Relaxed);
    }

    /// Slots free now, and slots held by `tenant` (for tests).
    #[cfg(test)]
    fn counts(&self, tenant: &str) -> (usize, usize) {
        let s = self.lock();
        (s.free, s.tenants.get(tenant).map_or(0, |t| t.held))
    }
}

impl State {
    /// A slot comes back: it pays a borrowed one back first, else it is free and handed on.
    fn give_back(&mut self) {
        if self.borrowed > 0 {
            self.borrowed -= 1;
        } else {
            self.free += 1;
            self.dispatch();
        }
    }

    /// Whether a read over its share should look whether to yield.
    fn contended(&self) -> bool {
        !self.turn.is_empty() || self.borrowed > 0
    }

    /// Slots held beyond their tenants' shares.
    fn excess(&self) -> usize {
        self.tenants
            .values()
            .map(|t| t.held.saturating_sub(t.share))
            .sum()
    }

    /// The key of `name`'s entry, added if missing.
    fn tenant(&mut self, name: &str) -> Arc<str> {
        if let Some((key, _)) = self.tenants.get_key_value(name) {
            return Arc::clone(key);
        }
        if self.tenants.len() >= MAX_IDLE_TENANTS {
            self.tenants
                .retain(|_, t| t.held > 0 || !t.queue.is_empty());
        }
        let key: Arc<str> = Arc::from(name);
        self.tenants.insert(
            Arc::clone(&key),
            Tenant {
                held: 0,
                share: 1,
                queue: VecDeque::new(),
            },
        );
        key
    }

    /// Queues a waiter of `key` (at the front of its queue when `first`); its id.
    fn enqueue(&mut self, key: &Arc<str>, share: usize, wake: Wake, first: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let t = self.tenants.get_mut(&**key).expect("known tenant");
        t.share = share;
        if t.queue.is_empty() {
            self.turn.push_back(Arc::clone(key));
        }
        let waiter = Waiter { id, wake };
        if first {
            t.queue.push_front(waiter);
        } else {
            t.queue.push_back(waiter);
        }
        id
    }

    /// Hands free slots to waiters: round robin over the tenants with waiters, the first
    /// in turn that is under its share, else (all are at or over it) the first in turn.
    fn dispatch(&mut self) {
        while self.free > 0 && !self.turn.is_empty() {
            let pos = self
                .turn
                .iter()
                .position(|k| self.tenants.get(k).is_some_and(|t| t.held < t.share))
                .unwrap_or(0);
            let key = self.turn.remove(pos).expect("position in range");
            let Some(t) = self.tenants.get_mut(&key) else {
                continue;
            };
            let Some(waiter) = t.queue.pop_front() else {
                continue;
            };
            if !t.queue.is_empty() {
                self.turn.push_back(key);
            }
            if waiter.wake.send() {
                t.held += 1;
                self.free -= 1;
            }
        }
    }

    /// Whether a read of `key` should hand its slot over: it holds more than its share
    /// while a slot is owed (borrowed) or another tenant, under its own share, waits.
    fn should_yield(&self, key: &str) -> bool {
        let Some(t) = self.tenants.get(key) else {
            return false;
        };
        t.held > t.share
            && (self.borrowed > 0
                || self
                    .turn
                    .iter()
                    .any(|k| &**k != key && self.tenants.get(k).is_some_and(|o| o.held < o.share)))
    }
}

/// Removes a waiter from its queue when its future is dropped before it got a slot.
struct Waiting<'a> {
    slots: &'a Arc<FairSlots>,
    key: Option<Arc<str>>,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(key) = &self.key {
            self.slots.cancel(key, self.id);
        }
    }
}

/// One read slot, given back when dropped.
pub(crate) struct Slot {
    slots: Arc<FairSlots>,
    key: Arc<str>,
    /// False while a parked read waits to get a slot back, and after it gave up.
    held: bool,
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("tenant", &self.key)
            .field("held", &self.held)
            .finish()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.held {
            self.slots.release(&self.key);
        }
    }
}

impl Slot {
    /// If this slot's tenant holds more than its share while another tenant waits, hands
    /// the slot over and blocks the thread until it is this read's turn again. False
    /// when `abandoned` was raised meanwhile: the read holds no slot then and must stop.
    fn yield_if_over_share(&mut self, abandoned: &AtomicBool) -> bool {
        if !self.held {
            return false;
        }
        if !self.slots.contended.load(Ordering::Relaxed) {
            return true;
        }
        let (id, rx) = {
            let mut s = self.slots.lock();
            if !s.should_yield(&self.key) {
                return true;
            }
            let share = s.tenants.get(&*self.key).map_or(1, |t| t.share);
            if let Some(t) = s.tenants.get_mut(&*self.key) {
                t.held -= 1;
            }
            self.held = false;
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            // At the front of its tenant's queue: it is older than the tenant's waiters.
            let id = s.enqueue(&self.key, share, Wake::Thread(tx), true);
            s.give_back();
            self.slots.contended.store(s.contended(), Ordering::Relaxed);
            (id, rx)
        };
        loop {
            match rx.recv_timeout(PARK_POLL) {
                Ok(()) => {
                    self.held = true;
                    return true;
                }
                Err(RecvTimeoutError::Timeout) => {
                    if abandoned.load(Ordering::Relaxed) {
                        self.slots.cancel(&self.key, id);
                        return false;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return false,
            }
        }
    }
}

/// A read running on the blocking pool, shared by its future, its thread and its SQLite
/// progress handler: whether its caller gave up, and its slot while it runs.
pub(crate) struct Running {
    abandoned: AtomicBool,
    slots: Arc<FairSlots>,
    slot: Mutex<Option<Slot>>,
}

impl fmt::Debug for Running {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Running")
            .field("abandoned", &self.abandoned.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Running {
    /// A read that holds `slot`.
    pub(crate) fn new(slot: Slot) -> Arc<Running> {
        Arc::new(Running {
            abandoned: AtomicBool::new(false),
            slots: Arc::clone(&slot.slots),
            slot: Mutex::new(Some(slot)),
        })
    }

    /// Its caller stopped waiting.
    pub(crate) fn abandon(&self) {
        self.abandoned.store(true, Ordering::Relaxed);
    }

    /// The progress check: true to interrupt the statement (its caller gave up). Hands
    /// the slot over first when the tenant holds more than its share while another
    /// tenant waits, and parks until it is this read's turn again.
    pub(crate) fn interrupt(&self) -> bool {
        if self.abandoned.load(Ordering::Relaxed) {
            return true;
        }
        if !self.slots.contended.load(Ordering::Relaxed) {
            return false;
        }
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        match slot.as_mut() {
            Some(slot) => !slot.yield_if_over_share(&self.abandoned),
            None => false,
        }
    }

    /// The read ended: its slot is given back.
    pub(crate) fn finish(&self) {
        drop(
            self.slot
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    type Pending<'a> = Pin<Box<dyn Future<Output = Slot> + 'a>>;

    fn wait<'a>(slots: &'a Arc<FairSlots>, tenant: &'a str, share: u32) -> Pending<'a> {
        let mut f: Pending<'a> = Box::pin(slots.acquire(Some(tenant), share));
        assert!(poll(&mut f).is_none(), "{tenant} was meant to wait");
        f
    }

    fn poll(f: &mut Pending<'_>) -> Option<Slot> {
        match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(slot) => Some(slot),
            Poll::Pending => None,
        }
    }

    fn now(slots: &Arc<FairSlots>, tenant: &str, share: u32) -> Slot {
        let mut f: Pending<'_> = Box::pin(slots.acquire(Some(tenant), share));
        poll(&mut f).expect("a free slot")
    }

    /// Which of `waiters` got a slot (polling each once); their slots.
    fn granted(waiters: &mut [(&str, Option<Pending<'_>>)]) -> Vec<(String, Slot)> {
        let mut out = Vec::new();
        for (name, f) in waiters.iter_mut() {
            if let Some(slot) = f.as_mut().and_then(poll) {
                *f = None;
                out.push(((*name).to_string(), slot));
            }
        }
        out
    }

    #[test]
    fn a_tenant_alone_uses_every_slot() {
        let slots = FairSlots::new(4);
        let mut held: Vec<Slot> = (0..4).map(|_| now(&slots, "a", 1)).collect();
        assert_eq!(slots.counts("a"), (0, 4));
        let mut fifth = wait(&slots, "a", 1);
        held.pop();
        let fifth = poll(&mut fifth).expect("the freed slot");
        assert_eq!(slots.counts("a"), (0, 4));
        drop(fifth);
        assert_eq!(slots.counts("a"), (1, 3));
        drop(held);
    }

    #[test]
    fn free_slots_go_round_robin_across_tenants_and_fifo_within_one() {
        let slots = FairSlots::new(1);
        let mut holder = Some(now(&slots, "x", 1));
        let mut waiters: Vec<(&str, Option<Pending<'_>>)> = vec![
            ("a1", Some(wait(&slots, "a", 1))),
            ("a2", Some(wait(&slots, "a", 1))),
            ("a3", Some(wait(&slots, "a", 1))),
            ("b1", Some(wait(&slots, "b", 1))),
            ("b2", Some(wait(&slots, "b", 1))),
            ("c1", Some(wait(&slots, "c", 1))),
        ];
        let mut order = Vec::new();
        while let Some(slot) = holder.take() {
            drop(slot);
            let mut got = granted(&mut waiters);
            assert!(got.len() <= 1, "one slot, one grant");
            if let Some((name, slot)) = got.pop() {
                order.push(name);
                holder = Some(slot);
            }
        }
        assert_eq!(order, ["a1", "b1", "c1", "a2", "b2", "a3"]);
        assert_eq!(slots.counts("a"), (1, 0));
    }

    #[test]
    fn a_tenant_at_its_share_gets_no_new_slot_while_another_waits() {
        let slots = FairSlots::new(2);
        // h and v each hold their share (1); v waits for more, so does h.
        let h = now(&slots, "h", 1);
        let v = now(&slots, "v", 1);
        let mut waiters: Vec<(&str, Option<Pending<'_>>)> = vec![
            ("h2", Some(wait(&slots, "h", 1))),
            ("h3", Some(wait(&slots, "h", 1))),
            ("v2", Some(wait(&slots, "v", 1))),
        ];
        // h's slot comes back: h (0 held) is under its share, v (1) is not.
        drop(h);
        let got = granted(&mut waiters);
        assert_eq!(got.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(), ["h2"]);
        // v's comes back: both at their share now, round robin gives it to v.
        drop(v);
        let got2 = granted(&mut waiters);
        assert_eq!(
            got2.iter().map(|g| g.0.as_str()).collect::<Vec<_>>(),
            ["v2"]
        );
        drop((got, got2));
        assert!(granted(&mut waiters).iter().any(|g| g.0 == "h3"));
        assert_eq!(slots.counts("h"), (2, 0));
    }

    #[test]
    fn a_tenant_under_its_share_borrows_a_slot_from_one_over_its_share() {
        let slots = FairSlots::new(4);
        // The hostile tenant (share 2) was alone and took every slot.
        let mut hostile: Vec<Slot> = (0..4).map(|_| now(&slots, "h", 2)).collect();
        // The victim does not wait for h's reads to notice: it borrows at once, up to h's
        // excess (2) and its own share (2).
        let v1 = now(&slots, "v", 2);
        let v2 = now(&slots, "v", 2);
        let mut v3 = wait(&slots, "v", 2);
        let mut h5 = wait(&slots, "h", 2);
        assert_eq!(slots.lock().borrowed, 2);
        // h's first two slots back pay the loans; nothing is handed on.
        hostile.pop();
        hostile.pop();
        assert_eq!(slots.lock().borrowed, 0);
        assert!(poll(&mut v3).is_none() && poll(&mut h5).is_none());
        assert_eq!(slots.counts("h"), (0, 2));
        // The next is free, and h (1 held) is under its share: it goes to h.
        hostile.pop();
        let h5 = poll(&mut h5).expect("h under its share");
        assert!(poll(&mut v3).is_none());
        drop(v1);
        let v3 = poll(&mut v3).expect("v's own slot back");
        drop((v2, v3, h5, hostile));
        assert_eq!(slots.counts("h"), (4, 0));
    }

    #[test]
    fn nobody_borrows_while_no_tenant_is_over_its_share() {
        let slots = FairSlots::new(2);
        let _h = now(&slots, "h", 1);
        let _v = now(&slots, "v", 1);
        let _w = wait(&slots, "w", 1);
        assert_eq!(slots.lock().borrowed, 0);
    }

    #[test]
    fn a_dropped_waiter_leaves_its_queue_without_leaking_a_slot() {
        let slots = FairSlots::new(1);
        let holder = now(&slots, "x", 1);
        // Dropped while queued (its deadline passed).
        let gone = wait(&slots, "a", 1);
        let mut next = wait(&slots, "b", 1);
        drop(gone);
        drop(holder);
        let b = poll(&mut next).expect("the slot skips the dropped waiter");
        // Dropped after the slot was handed to it, before it ran.
        let granted_then_gone = wait(&slots, "a", 1);
        drop(b);
        assert_eq!(slots.counts("a"), (0, 1), "handed to the waiter");
        drop(granted_then_gone);
        assert_eq!(slots.counts("a"), (1, 0), "given back, not leaked");
        let again = now(&slots, "c", 1);
        drop(again);
        assert_eq!(slots.counts("c"), (1, 0));
    }

    #[test]
    fn the_node_itself_is_not_capped() {
        let slots = FairSlots::new(2);
        let mut f: Pending<'_> = Box::pin(slots.acquire(None, 0));
        let n1 = poll(&mut f).unwrap();
        let mut n2f: Pending<'_> = Box::pin(slots.acquire(None, 0));
        let n2 = poll(&mut n2f).unwrap();
        let mut v = wait(&slots, "v", 1);
        let mut n3: Pending<'_> = Box::pin(slots.acquire(None, 0));
        assert!(poll(&mut n3).is_none());
        drop(n1);
        // v queued first and round robin starts with it; the node's share is every slot.
        assert!(poll(&mut v).is_some());
        drop(n2);
        assert!(poll(&mut n3).is_some());
    }

    #[test]
    fn a_running_read_over_its_share_hands_its_slot_over_and_resumes() {
        let slots = FairSlots::new(2);
        let first = Running::new(now(&slots, "h", 1));
        let second = Running::new(now(&slots, "h", 1));
        assert!(!first.interrupt(), "alone: keeps running");
        // The victim borrows a slot at once; the progress check of one of h's reads
        // parks it and pays the loan back with its slot.
        let v = now(&slots, "v", 1);
        let parked = std::thread::spawn({
            let first = Arc::clone(&first);
            move || first.interrupt()
        });
        while slots.counts("h").1 != 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(slots.counts("h"), (0, 1));
        assert_eq!(slots.lock().borrowed, 0);
        // h holds its share (1): its other read keeps its slot.
        assert!(!second.interrupt());
        drop(v);
        assert!(!parked.join().unwrap(), "resumed, not interrupted");
        assert_eq!(slots.counts("h"), (0, 2));
        first.finish();
        second.finish();
        assert_eq!(slots.counts("h"), (2, 0));
    }

    #[test]
    fn a_parked_read_whose_caller_gives_up_stops_holding_nothing() {
        let slots = FairSlots::new(1);
        let read = Running::new(now(&slots, "h", 1));
        let mut v = wait(&slots, "v", 1);
        // h holds 1 = its share: it does not yield, v waits.
        assert!(!read.interrupt());
        assert!(poll(&mut v).is_none());
        drop(v);

        let slots = FairSlots::new(2);
        let a = Running::new(now(&slots, "h", 1));
        let b = now(&slots, "h", 1);
        let v1 = now(&slots, "v", 1);
        let mut v2 = wait(&slots, "v", 1);
        let parked = std::thread::spawn({
            let a = Arc::clone(&a);
            move || a.interrupt()
        });
        while slots.counts("h").1 != 1 {
            std::thread::sleep(Duration::from_millis(1));
        }
        a.abandon();
        assert!(
            parked.join().unwrap(),
            "abandoned while parked: interrupted"
        );
        a.finish();
        drop(b);
        assert!(poll(&mut v2).is_some(), "h's slot went to v");
        drop(v1);
        assert_eq!(slots.counts("h"), (2, 0));
    }
}
