//! [`Routes`]: which rule a target falls under, as learned from the source's answers: the
//! exact target first (a per-thread memo of the last few, then a lock-free map), then the
//! matchers of known rules.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::decision::RuleSummary;
use super::keys::{TargetKey, TargetRef};
use super::maps::{hot_map, Hasher};
use super::memo::{self, Resolved};
use crate::rules::CompiledRule;
use crate::sync::lock;
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
    /// The target itself, shared by the memos and the leases made for it.
    pub(super) key: Arc<TargetKey>,
}

/// The targets and rules a limiter has learned.
pub(super) struct Routes {
    /// Unique per limiter, for the per-thread memo of targets.
    id: u64,
    /// Bumped whenever a cached target → rule mapping may change (invalidates the memos).
    generation: AtomicU64,
    /// Target → rule. Shares its epoch collector with the buckets: one guard serves a hit.
    targets: papaya::HashMap<TargetKey, TargetEntry, Hasher>,
    /// Rule slot → rule.
    rules: papaya::HashMap<u32, Arc<RuleEntry>>,
    /// Rule id → slot (the next slot is the count).
    slots: Mutex<HashMap<String, u32>>,
}

impl Routes {
    pub(super) fn new(collector: Arc<seize::Collector>) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        Routes {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            generation: AtomicU64::new(0),
            targets: hot_map(collector),
            rules: papaya::HashMap::default(),
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// This limiter's id and its targets' generation: what this thread's memos are read at.
    #[inline]
    pub(super) fn memo_key(&self) -> (u64, u64) {
        (self.id, self.generation.load(Ordering::Acquire))
    }

    /// The rule of a target known exactly and fresh at `now_ms`, from the map (remembered in
    /// this thread's memo).
    pub(super) fn lookup(
        &self,
        target: &Target<'_>,
        now_ms: u64,
        guard: &papaya::LocalGuard<'_>,
    ) -> Option<RuleSummary> {
        let generation = self.generation.load(Ordering::Acquire);
        let entry = self.fresh(target, now_ms, guard)?;
        let resolved = Resolved {
            rule: entry.rule,
            expires_ms: entry.expires_ms,
        };
        memo::remember(self.id, generation, resolved, &entry.key);
        Some(entry.rule)
    }

    /// The cache's entry for `target`, if it is fresh at `now_ms`: the one lookup of the map.
    fn fresh<'g>(
        &self,
        target: &Target<'_>,
        now_ms: u64,
        guard: &'g papaya::LocalGuard<'_>,
    ) -> Option<&'g TargetEntry> {
        self.targets
            .get(&TargetRef(target), guard)
            .filter(|entry| now_ms < entry.expires_ms)
    }

    /// The shared key of a target known exactly (for a lease made for it).
    pub(super) fn key(
        &self,
        target: &Target<'_>,
        now_ms: u64,
        guard: &papaya::LocalGuard<'_>,
    ) -> Option<Arc<TargetKey>> {
        self.fresh(target, now_ms, guard)
            .map(|entry| entry.key.clone())
    }

    /// The rule for `target`, if known, with the target's shared key: the exact cache, else
    /// the single fresh rule whose matcher matches it (remembered). `rule_ttl_ms` is how long
    /// a learned rule is trusted.
    pub(super) fn resolve(
        &self,
        target: &Target<'_>,
        now_ms: u64,
        rule_ttl_ms: u64,
        max_targets: usize,
        guard: &papaya::LocalGuard<'_>,
    ) -> Option<(RuleSummary, Arc<TargetKey>)> {
        if let Some(entry) = self.fresh(target, now_ms, guard) {
            return Some((entry.rule, entry.key.clone()));
        }
        let rules = self.rules.guard();
        let mut found: Option<RuleSummary> = None;
        for (_, entry) in self.rules.iter(&rules) {
            let fresh = now_ms < entry.learned_ms.load(Ordering::Relaxed) + rule_ttl_ms;
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
        self.remember(key.clone(), rule, now_ms, rule_ttl_ms, max_targets, guard);
        Some((rule, key))
    }

    /// Caches target → rule for `ttl_ms`, within `max_targets` entries.
    pub(super) fn remember(
        &self,
        key: Arc<TargetKey>,
        rule: RuleSummary,
        now_ms: u64,
        ttl_ms: u64,
        max_targets: usize,
        guard: &papaya::LocalGuard<'_>,
    ) {
        if self.targets.len() >= max_targets {
            self.trim(now_ms, max_targets, guard);
        }
        let entry = TargetEntry {
            rule,
            expires_ms: now_ms.saturating_add(ttl_ms),
            key: key.clone(),
        };
        let previous = self.targets.insert((*key).clone(), entry, guard);
        if previous.is_some_and(|p| p.rule != rule) {
            // A target now falls to another rule (or its rule changed): forget the memos.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Makes room in the target cache: stale entries first, then a tenth of the rest.
    #[cold]
    fn trim(&self, now_ms: u64, max_targets: usize, guard: &papaya::LocalGuard<'_>) {
        self.targets.retain(|_, e| now_ms < e.expires_ms, guard);
        let excess = (self.targets.len() + 1).saturating_sub(max_targets);
        if excess > 0 {
            let drop = excess.max(max_targets / 10);
            let victims: Vec<TargetKey> = self
                .targets
                .iter(guard)
                .take(drop)
                .map(|(k, _)| k.clone())
                .collect();
            for key in victims {
                self.targets.remove(&key, guard);
            }
            // Entries that had not expired are gone: forget the memos.
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Forgets the targets stale at `now_ms`.
    pub(super) fn sweep(&self, now_ms: u64, guard: &papaya::LocalGuard<'_>) {
        self.targets.retain(|_, e| now_ms < e.expires_ms, guard);
    }

    /// Learns a rule from an answer: its slot, refreshed.
    pub(super) fn learn(&self, rule: &Rule, now_ms: u64) -> RuleSummary {
        let mut slots = lock(&self.slots);
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
                let slot = u32::try_from(slots.len()).unwrap_or(u32::MAX - 1);
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

    /// The id of the rule in `slot`, if learned.
    pub(super) fn id_of(&self, slot: u32) -> Option<Arc<str>> {
        let guard = self.rules.guard();
        self.rules.get(&slot, &guard).map(|entry| entry.id.clone())
    }

    /// Rule slot → rule id, for every rule learned.
    #[cfg_attr(not(feature = "metrics"), allow(dead_code))]
    pub(super) fn ids(&self) -> HashMap<u32, String> {
        lock(&self.slots)
            .iter()
            .map(|(id, slot)| (*slot, id.clone()))
            .collect()
    }

    /// How many targets are cached, and rules learned.
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.targets.len(), self.rules.len())
    }
}
