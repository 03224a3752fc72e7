//! Signature verification in batches: an app's requests that are ready together share one
//! batch verification (`fold_ipc::signing::verify_all`, about half the cost per signature
//! of `verify_strict` from eight signatures on), with `verify_strict`'s verdicts for every
//! signature but one deliberately malformed by the key's own holder (see `verify_all`).
//!
//! No extra task and no hand-off: the first request to arrive while the app's queue is
//! empty leads. It queues its own signature, yields once to the scheduler (so that requests
//! already decoded and waiting to run can queue theirs), then verifies everything queued,
//! in batches of at most [`MAX_BATCH`], on its own thread, and hands each request its
//! verdict. Whether to wait for company is decided from what the daemon itself sees: the
//! connection's word that more of the app's requests had already arrived behind this one
//! (`fold_ipc::server::Arrival`), and the verifier's own count of the app's requests
//! between their arrival and their answer ([`Verifier::arrive`]). A request with neither
//! verifies at once, without the yield, so a lone request's latency is `verify_strict`'s. With batching off in the config
//! (`batch_signatures = false`) every request verifies at once. The queue and the count
//! belong to one app (like its nonce cache), so there is no daemon-wide lock or counter on
//! the request path.

use crate::metrics::Metrics;
use ed25519_dalek::{Signature, VerifyingKey};
use fold_ipc::signing::{self, BatchItem, SignatureError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

/// Most signatures verified in one batch.
pub const MAX_BATCH: usize = 64;

/// One app's queue of signatures waiting for a batch, and its count of requests being
/// answered.
#[derive(Debug)]
pub struct Verifier {
    /// Whether requests that are ready together are verified in one batch
    /// (`Config::batch_signatures`).
    batching: bool,
    /// The app's requests that have arrived and are not answered yet.
    answering: AtomicUsize,
    queue: Mutex<Vec<Job>>,
}

/// One request of the app, from its arrival at the handler until it is dropped with the
/// answer; see [`Verifier::arrive`].
#[derive(Debug)]
pub struct Answering<'a> {
    verifier: &'a Verifier,
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.verifier.answering.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
struct Job {
    key: VerifyingKey,
    message: Vec<u8>,
    signature: Signature,
    done: oneshot::Sender<Result<(), SignatureError>>,
}

/// Verifies what is queued if the leader is dropped before it did (its request was
/// cancelled), so the requests queued behind it are never left waiting.
struct Lead<'a> {
    verifier: &'a Verifier,
    metrics: &'a Metrics,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        self.verifier.run_queued(self.metrics);
    }
}

impl Verifier {
    /// A verifier that batches when `batching` is set.
    pub fn new(batching: bool) -> Verifier {
        Verifier {
            batching,
            answering: AtomicUsize::new(0),
            queue: Mutex::new(Vec::new()),
        }
    }

    /// Counts one of the app's requests as being answered until the guard is dropped:
    /// hold it from the request's arrival to its answer.
    pub fn arrive(&self) -> Answering<'_> {
        self.answering.fetch_add(1, Ordering::Relaxed);
        Answering { verifier: self }
    }

    /// Verifies `signature` over `message` (canonical bytes) with `key`, as
    /// `verify_strict` does, batched with the app's other requests that are ready now.
    /// `more_arrived` says the connection had already received more requests behind this
    /// one. A request without that and without another of the app's requests being
    /// answered (or any request, with batching off) verifies at once.
    ///
    /// # Errors
    ///
    /// [`SignatureError::Invalid`] when the signature does not verify.
    pub async fn verify(
        &self,
        key: VerifyingKey,
        message: Vec<u8>,
        signature: Signature,
        metrics: &Metrics,
        more_arrived: bool,
    ) -> Result<(), SignatureError> {
        let company = more_arrived || self.answering.load(Ordering::Relaxed) > 1;
        if !self.batching || !company {
            metrics.verified(1);
            return signing::verify_bytes(&key, &message, &signature);
        }
        let (done, verdict) = oneshot::channel();
        let leads = {
            let mut queue = lock(&self.queue);
            queue.push(Job {
                key,
                message,
                signature,
                done,
            });
            queue.len() == 1
        };
        if leads {
            let lead = Lead {
                verifier: self,
                metrics,
            };
            tokio::task::yield_now().await;
            drop(lead);
        }
        verdict.await.unwrap_or(Err(SignatureError::Invalid))
    }

    fn run_queued(&self, metrics: &Metrics) {
        let mut jobs = std::mem::take(&mut *lock(&self.queue));
        while !jobs.is_empty() {
            let rest = jobs.split_off(jobs.len().min(MAX_BATCH));
            let batch = std::mem::replace(&mut jobs, rest);
            metrics.verified(batch.len());
            if let [job] = &batch[..] {
                let verdict = signing::verify_bytes(&job.key, &job.message, &job.signature);
                if let Some(job) = batch.into_iter().next() {
                    let _ = job.done.send(verdict);
                }
                continue;
            }
            let items: Vec<BatchItem<'_>> = batch
                .iter()
                .map(|j| (&j.key, j.message.as_slice(), &j.signature))
                .collect();
            let verdicts = signing::verify_all(&items);
            drop(items);
            for (job, verdict) in batch.into_iter().zip(verdicts) {
                let _ = job.done.send(verdict);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use std::future::Future;
    use std::sync::Arc;

    fn job(i: u8, good: bool) -> (VerifyingKey, Vec<u8>, Signature) {
        let key = SigningKey::from_bytes(&[i + 1; 32]);
        let message = vec![i; 50];
        let mut signature = key.sign(&message).to_bytes();
        if !good {
            signature[3] ^= 1;
        }
        (
            key.verifying_key(),
            message,
            Signature::from_bytes(&signature),
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_requests_get_their_own_verdicts() {
        let verifier = Arc::new(Verifier::new(true));
        let metrics = Arc::new(Metrics::default());
        let mut tasks = Vec::new();
        for i in 0..40u8 {
            let (verifier, metrics) = (Arc::clone(&verifier), Arc::clone(&metrics));
            tasks.push(tokio::spawn(async move {
                let _arrival = verifier.arrive();
                let (key, message, signature) = job(i, i % 7 != 3);
                let verdict = verifier
                    .verify(key, message, signature, &metrics, false)
                    .await;
                (i, verdict)
            }));
        }
        for task in tasks {
            let (i, verdict) = task.await.unwrap();
            assert_eq!(verdict.is_ok(), i % 7 != 3, "request {i}");
        }
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.signatures, 40);
        assert!(snapshot.batches >= 1 && snapshot.batches <= 40);
    }

    #[tokio::test]
    async fn a_cancelled_leader_still_answers_the_queue() {
        let verifier = Verifier::new(true);
        let metrics = Metrics::default();
        let (key, message, signature) = job(1, true);
        let _arrivals = (verifier.arrive(), verifier.arrive());
        // The leader queues and is dropped at its yield, before verifying.
        {
            let lead = verifier.verify(key, message.clone(), signature, &metrics, false);
            let mut lead = Box::pin(lead);
            let waker = futures::task::noop_waker();
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(lead.as_mut().poll(&mut cx).is_pending());
            // A follower queues behind it.
            let follower = verifier.verify(key, message.clone(), signature, &metrics, false);
            let mut follower = Box::pin(follower);
            assert!(follower.as_mut().poll(&mut cx).is_pending());
            drop(lead);
            assert_eq!(follower.await, Ok(()));
        }
        assert!(lock(&verifier.queue).is_empty());
    }

    /// Polls `verify` once: `Some(verdict)` when it answered without waiting.
    fn first_poll(verifier: &Verifier, metrics: &Metrics, good: bool, more: bool) -> Option<bool> {
        let (key, message, signature) = job(9, good);
        let mut verify = Box::pin(verifier.verify(key, message, signature, metrics, more));
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        match verify.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(verdict) => Some(verdict.is_ok()),
            std::task::Poll::Pending => None,
        }
    }

    #[test]
    fn a_lone_request_verifies_at_once_and_company_waits_for_a_batch() {
        let verifier = Verifier::new(true);
        let metrics = Metrics::default();
        let first = verifier.arrive();
        assert_eq!(first_poll(&verifier, &metrics, true, false), Some(true));
        assert_eq!(first_poll(&verifier, &metrics, false, false), Some(false));
        assert_eq!(
            first_poll(&verifier, &metrics, true, true),
            None,
            "more had arrived behind it: waits for company"
        );
        let _second = verifier.arrive();
        assert_eq!(
            first_poll(&verifier, &metrics, true, false),
            None,
            "another of the app's requests is being answered: waits for company"
        );
        drop(first);
    }

    #[test]
    fn with_batching_off_every_request_verifies_at_once() {
        let verifier = Verifier::new(false);
        let metrics = Metrics::default();
        let _arrivals: Vec<_> = (0..8).map(|_| verifier.arrive()).collect();
        assert_eq!(first_poll(&verifier, &metrics, true, true), Some(true));
        assert_eq!(first_poll(&verifier, &metrics, false, true), Some(false));
        assert_eq!(metrics.snapshot().signatures, 2);
        assert!(lock(&verifier.queue).is_empty());
    }
}
