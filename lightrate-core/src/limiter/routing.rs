//! Which rule a target falls under, as learned from the source's answers: the exact target
//! first, then the matchers of known rules.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::decision::RuleSummary;
use super::keys::{TargetKey, TargetRef};
use super::{lock, Inner};
use crate::rules::CompiledRule;
use crate::{Rule, Target};

/// A learned rule.
pub(super) struct RuleEntry {
    pub(super) id: Arc<str>,
    rule: Rule,
    compiled: CompiledRule,
    summary: RuleSummary,
    learned_ms: AtomicU64,
}

/// A learned target → rule mapping.
#[derive(Clone, Debug)]
pub(super) struct TargetEntry {
    pub(super) rule: RuleSummary,
    pub(super) expires_ms: u64,
    /// The target itself, shared by every bucket that leases with it.
    pub(super) key: Arc<TargetKey>,
}

impl Inner {
    /// The rule for `target`, if known (the exact cache, else a single fresh rule whose
    /// matcher matches it), and the shared key of the target.
    pub(super) fn resolve(
        &self,
        target: &Target<'_>,
        now_ms: u64,
    ) -> Option<(RuleSummary, Arc<TargetKey>)> {
        {
            let guard = self.buckets.guard();
            if let Some(entry) = self.targets.get(&TargetRef(target), &guard) {
                if now_ms < entry.expires_ms {
                    return Some((entry.rule, entry.key.clone()));
                }
            }
        }
        let guard = self.rules.guard();
        let mut found: Option<RuleSummary> = None;
        for (_, entry) in self.rules.iter(&guard) {
            let fresh = now_ms < entry.learned_ms.load(Ordering::Relaxed) + self.rule_ttl_ms;
            let matches = if entry.rule.is_default {
                matches!(target, Target::Default)
            } else {
                entry.compiled.matches(target)
            };
            if fresh && matches {
                if found.is_some() {
                    // Two known rules match: only the source knows which comes first.
                    return None;
                }
                found = Some(entry.summary);
            }
        }
        let rule = found?;
        let key = Arc::new(TargetKey::from_target(target));
        self.remember(key.clone(), rule, now_ms);
        Some((rule, key))
    }

    /// Caches target → rule.
    pub(super) fn remember(&self, key: Arc<TargetKey>, rule: RuleSummary, now_ms: u64) {
        let guard = self.buckets.guard();
        if self.targets.len() >= self.max_cached_targets {
            self.trim_targets(now_ms);
        }
        let previous = self.targets.insert(
            (*key).clone(),
            TargetEntry {
                rule,
                expires_ms: now_ms.saturating_add(self.rule_ttl_ms),
                key,
            },
            &guard,
        );
        if previous.is_some_and(|p| p.rule != rule) {
            // A target now falls to another rule (or its rule changed): forget the memos.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Makes room in the target cache: stale entries first, then a tenth of the rest.
    #[cold]
    fn trim_targets(&self, now_ms: u64) {
        let guard = self.buckets.guard();
        self.targets.retain(|_, e| now_ms < e.expires_ms, &guard);
        let excess = (self.targets.len() + 1).saturating_sub(self.max_cached_targets);
        if excess > 0 {
            let drop = excess.max(self.max_cached_targets / 10);
            let victims: Vec<TargetKey> = self
                .targets
                .iter(&guard)
                .take(drop)
                .map(|(k, _)| k.clone())
                .collect();
            for key in victims {
                self.targets.remove(&key, &guard);
            }
            // Entries that had not expired are gone: forget the memos.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Learns a rule from an answer: its slot, refreshed.
    pub(super) fn learn(&self, rule: &Rule, now_ms: u64) -> RuleSummary {
        let mut slots = lock(&self.rule_slots);
        let guard = self.rules.guard();
        let slot = match slots.get(&rule.id) {
            Some(&slot) => {
                if let Some(entry) = self.rules.get(&slot, &guard) {
                    if entry.rule == *rule {
                        entry.learned_ms.fetch_max(now_ms, Ordering::Relaxed);
                        return entry.summary;
                    }
                }
                slot
            }
            None => {
                let slot = self.next_slot.fetch_add(1, Ordering::Relaxed);
                slots.insert(rule.id.clone(), slot);
                slot
            }
        };
        let summary = RuleSummary {
            slot,
            burst_rate: rule.burst_rate,
            refill_rate: rule.refill_rate,
            is_default: rule.is_default,
        };
        self.rules.insert(
            slot,
            Arc::new(RuleEntry {
                id: rule.id.as_str().into(),
                rule: rule.clone(),
                compiled: CompiledRule::new(rule.clone()),
                summary,
                learned_ms: AtomicU64::new(now_ms),
            }),
            &guard,
        );
        summary
    }

    /// The summary of the rule in `slot`, if learned.
    pub(super) fn summary(&self, slot: u32) -> Option<RuleSummary> {
        let guard = self.rules.guard();
        self.rules.get(&slot, &guard).map(|entry| entry.summary)
    }
}
