//! Signature verification in batches: an app's requests that are ready together share one
//! batch verification (`fold_ipc::signing::verify_all`, about half the cost per signature
//! of `verify_strict` from eight signatures on), with `verify_strict`'s verdicts for every
//! signature but one deliberately malformed by the key's own holder (see `verify_all`).
//!
//! No extra task and no hand-off: the first request to arrive while the app's queue is
//! empty leads. It queues its own signature, yields once to the scheduler (so that requests
//! already decoded and waiting to run can queue theirs), then verifies everything queued,
//! in batches of at most [`MAX_BATCH`], on its own thread, and hands each request its
//! verdict. A request with nothing else in flight (the daemon's counters say so) verifies
//! at once, without the yield, so a lone request's latency is `verify_strict`'s. The queue
//! belongs to one app (like its nonce cache), so there is no daemon-wide lock on the
//! request path.

use crate::metrics::Metrics;
use ed25519_dalek::{Signature, VerifyingKey};
use fold_ipc::signing::{self, BatchItem, SignatureError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::sync::oneshot;

/// Most signatures verified in one batch.
pub const MAX_BATCH: usize = 64;

static BATCHING: AtomicBool = AtomicBool::new(true);

/// Turns batching on (the default) or off for the whole process; off, every signature is
/// verified alone with `verify_strict` as the request arrives. For measurements
/// (`fold_bench` compares both in one run); the verdicts are the same either way.
pub fn set_batching(on: bool) {
    BATCHING.store(on, Ordering::Relaxed);
}

/// One app's queue of signatures waiting for a batch.
#[derive(Debug, Default)]
pub struct Verifier {
    queue: Mutex<Vec<Job>>,
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
    /// Verifies `signature` over `message` (canonical bytes) with `key`, as
    /// `verify_strict` does, batched with the app's other requests that are ready now;
    /// `alone` (nothing else is in flight) verifies at once.
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
        alone: bool,
    ) -> Result<(), SignatureError> {
        if alone || !BATCHING.load(Ordering::Relaxed) {
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
        let verifier = Arc::new(Verifier::default());
        let metrics = Arc::new(Metrics::default());
        let mut tasks = Vec::new();
        for i in 0..40u8 {
            let (verifier, metrics) = (Arc::clone(&verifier), Arc::clone(&metrics));
            tasks.push(tokio::spawn(async move {
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
        let verifier = Verifier::default();
        let metrics = Metrics::default();
        let (key, message, signature) = job(1, true);
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
}
