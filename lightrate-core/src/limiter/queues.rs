//! The queues of the requests that wait for their tokens ([`Waiting`]), per (user, target) of
//! their first limit: what [`Limiter::acquire`](super::Limiter::acquire) (`wait.rs`) joins.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::decision::RuleSummary;
use crate::sync::lock;

/// Whose queue: the user and the target (written out) of a request's first limit.
pub(super) type QueueKey = (Box<str>, String);

/// The queues of the requests waiting for their tokens, per (user, target) of their first
/// limit.
#[derive(Debug, Default)]
pub(super) struct Waiting {
    /// How many queues there are: a request looks no further while it is 0.
    count: AtomicUsize,
    queues: Mutex<HashMap<QueueKey, Arc<Queue>>>,
}

/// One queue.
#[derive(Debug, Default)]
pub(super) struct Queue {
    /// Held by the head: tokio's mutex serves its waiters first come, first served.
    pub(super) turn: tokio::sync::Mutex<()>,
    /// The tokens the requests in the queue need.
    tokens: AtomicU64,
    /// The rule its head was last refused by (its refill rate prices the queue), and that
    /// limit's place in the request's list (its cost is what each waiter needs).
    pub(super) rule: Mutex<Option<(RuleSummary, usize)>>,
    /// Told when tokens of the queue's user came back (a reservation settled below its
    /// estimate): the head asks again without waiting out its sleep.
    pub(super) woken: tokio::sync::Notify,
}

/// A request's place in a queue: leaves it when dropped.
pub(super) struct Place<'a> {
    waiting: &'a Waiting,
    key: QueueKey,
    pub(super) queue: Arc<Queue>,
    tokens: u64,
}

impl Waiting {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<QueueKey, Arc<Queue>>> {
        lock(&self.queues)
    }

    /// Whether anyone waits at all (one load).
    #[inline]
    pub(super) fn any(&self) -> bool {
        self.count.load(Ordering::Acquire) != 0
    }

    /// Whether anyone waits on `key`.
    pub(super) fn busy(&self, key: &QueueKey) -> bool {
        self.lock().contains_key(key)
    }

    /// The rule the queue of `key` waits on, and its limit's place, if known.
    pub(super) fn rule_of(&self, key: &QueueKey) -> Option<(RuleSummary, usize)> {
        let queue = self.lock().get(key).cloned()?;
        let rule = *lock(&queue.rule);
        rule
    }

    /// Joins the queue of `key`, needing `tokens`: the place, and the tokens of those before.
    pub(super) fn join(&self, key: QueueKey, tokens: u64) -> (Place<'_>, u64) {
        let queue = {
            let mut queues = self.lock();
            let queue = Arc::clone(queues.entry(key.clone()).or_default());
            self.count.store(queues.len(), Ordering::Release);
            queue
        };
        let before = queue.tokens.fetch_add(tokens, Ordering::AcqRel);
        let place = Place {
            waiting: self,
            key,
            queue,
            tokens,
        };
        (place, before)
    }

    /// Wakes the heads of `user`'s queues: tokens of theirs came back.
    #[inline]
    pub(super) fn wake(&self, user: &str) {
        if self.any() {
            self.wake_queues(user);
        }
    }

    #[cold]
    fn wake_queues(&self, user: &str) {
        for ((who, _), queue) in self.lock().iter() {
            if &**who == user {
                queue.woken.notify_one();
            }
        }
    }

    /// How many queues there are (tests).
    #[cfg(test)]
    pub(super) fn queues(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.tokens.fetch_sub(self.tokens, Ordering::AcqRel);
        let mut queues = self.waiting.lock();
        // The map's and this place's: no one else is in the queue.
        if Arc::strong_count(&self.queue) == 2 {
            queues.remove(&self.key);
            self.waiting.count.store(queues.len(), Ordering::Release);
        }
    }
}
