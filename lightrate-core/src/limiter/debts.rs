//! What the reservations of a limiter owe ([`Debts`]): the use of a reservation settled above
//! its estimate that no local bucket held, per (user, rule), until a request of that user pays
//! it to the source (`reserve.rs`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::decision::RuleSummary;
use crate::Target;

/// The most (user, rule) debts a limiter keeps; a debt past it is forgiven (logged).
const MAX_DEBTS: usize = 65_536;

/// What the reservations of a limiter owe, per (user, rule slot).
#[derive(Debug, Default)]
pub(super) struct Debts {
    /// How many (user, rule) owe: the slow path looks no further while it is 0.
    count: AtomicUsize,
    owed: Mutex<HashMap<(Box<str>, u32), Owed>>,
}

/// A debt: tokens, the target to charge them to, and its rule.
#[derive(Debug)]
pub(super) struct Owed {
    pub(super) tokens: u64,
    pub(super) target: Target<'static>,
    pub(super) rule: RuleSummary,
}

impl Debts {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Box<str>, u32), Owed>> {
        self.owed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `tokens` to what (user, slot) owes.
    pub(super) fn add(&self, user: &str, rule: RuleSummary, target: &Target<'_>, tokens: u64) {
        let slot = rule.slot;
        if tokens == 0 {
            return;
        }
        let mut owed = self.lock();
        if let Some(debt) = owed.get_mut(&(Box::from(user), slot)) {
            debt.tokens = debt.tokens.saturating_add(tokens);
            return;
        }
        if owed.len() >= MAX_DEBTS {
            tracing::warn!(
                target: "lightrate",
                tokens,
                "a reservation's overuse was forgiven: too many users owe already"
            );
            return;
        }
        owed.insert(
            (Box::from(user), slot),
            Owed {
                tokens,
                target: target.clone().into_owned(),
                rule,
            },
        );
        self.count.store(owed.len(), Ordering::Release);
    }

    /// Takes what (user, slot) owes, to charge it.
    pub(super) fn take(&self, user: &str, slot: u32) -> Option<Owed> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut owed = self.lock();
        let debt = owed.remove(&(Box::from(user), slot));
        self.count.store(owed.len(), Ordering::Release);
        debt
    }

    /// The rule of what `user` owes on `target`, when the request does not know its rule yet
    /// (it is learned again after `rule_ttl`).
    pub(super) fn rule_of(&self, user: &str, target: &Target<'_>) -> Option<RuleSummary> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        self.lock()
            .iter()
            .find(|((who, _), debt)| &**who == user && debt.target == *target)
            .map(|(_, debt)| debt.rule)
    }

    /// What (user, slot) owes.
    #[cfg(test)]
    pub(super) fn owed(&self, user: &str, slot: u32) -> u64 {
        if self.count.load(Ordering::Acquire) == 0 {
            return 0;
        }
        self.lock()
            .get(&(Box::from(user), slot))
            .map_or(0, |debt| debt.tokens)
    }
}
