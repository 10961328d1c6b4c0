//! [`Limiter::publish_metrics`]: the limiter's figures, handed to the `metrics` facade.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, Unit};

use super::counters::{read, Counted, NO_RULE};
use super::{BreakerState, Limiter};
use crate::metrics::*;

/// The `outcome` and `decided_by` labels of a counted decision.
fn labels(counted: Counted) -> (&'static str, &'static str) {
    match counted {
        Counted::AllowedBySource => ("allowed", "source"),
        Counted::DeniedBySource => ("denied", "source"),
        Counted::DeniedByCache => ("denied", "denial_cache"),
        Counted::ShadowDeniedBySource => ("shadow_denied", "source"),
        Counted::ShadowDeniedByCache => ("shadow_denied", "denial_cache"),
        Counted::AllowedUnavailable | Counted::DeniedUnavailable => ("unavailable", "source"),
        Counted::Invalid => ("invalid", "local"),
    }
}

fn describe() {
    describe_counter!(
        DECISIONS_TOTAL,
        "Requests decided, by outcome, decider and rule."
    );
    describe_counter!(SOURCE_CALLS_TOTAL, "Calls to the token source, by result.");
    describe_histogram!(
        SOURCE_CALL_DURATION,
        Unit::Seconds,
        "How long calls to the token source took."
    );
    describe_gauge!(LIVE_BUCKETS, "Live (user, rule) local buckets.");
    describe_gauge!(CACHED_TARGETS, "Targets in the target to rule cache.");
    describe_gauge!(
        BREAKER_OPEN,
        "1 while the circuit breaker holds calls to the token source off."
    );
    describe_counter!(
        TOKENS_LEASED_TOTAL,
        "Tokens the token source granted into local buckets."
    );
    describe_counter!(TOKENS_EXPIRED_TOTAL, "Leased tokens lost unspent.");
    describe_counter!(
        EVICTED_BUCKETS_TOTAL,
        "Local buckets forgotten to stay under the cap of live buckets."
    );
}

impl Limiter {
    /// Hands the limiter's figures to the `metrics` facade (feature `metrics`; see
    /// [`lightrate_core::metrics`](crate::metrics) for the names): counters and gauges are
    /// set to their values now. Call it just before an exporter renders a scrape, or run
    /// [`publish_metrics_every`](Self::publish_metrics_every).
    ///
    /// It reads every live bucket once (as [`stats`](Self::stats) does): a scrape's cost, not
    /// a request's.
    pub fn publish_metrics(&self) {
        describe();
        let inner = &*self.inner;
        let stats = self.stats();
        // Tokens held per rule, for the local hits derived per rule.
        let (held, _) = inner.buckets.held();
        let names = inner.routes.ids();
        inner.counters.for_each_rule(|slot, counters| {
            let rule = if slot == NO_RULE {
                String::new()
            } else {
                names.get(&slot).cloned().unwrap_or_default()
            };
            if slot != NO_RULE {
                let local = (read(&counters.deposited) + read(&counters.returned))
                    .saturating_sub(read(&counters.expired))
                    .saturating_sub(held.get(&slot).copied().unwrap_or(0));
                counter!(DECISIONS_TOTAL,
                    "outcome" => "allowed", "decided_by" => "local", "rule" => rule.clone())
                .absolute(local);
            }
            // Both unavailable kinds are one series.
            let mut series: HashMap<(&str, &str), u64> = HashMap::new();
            for counted in Counted::ALL {
                *series.entry(labels(counted)).or_default() += counters.decided(counted);
            }
            for ((outcome, by), count) in series {
                if count > 0 {
                    counter!(DECISIONS_TOTAL,
                        "outcome" => outcome, "decided_by" => by, "rule" => rule.clone())
                    .absolute(count);
                }
            }
        });
        let mut calls: HashMap<&'static str, u64> = HashMap::new();
        inner.counters.for_each_call(|result, count| {
            *calls.entry(result).or_default() += count;
        });
        for (result, count) in calls {
            if count > 0 {
                counter!(SOURCE_CALLS_TOTAL, "result" => result).absolute(count);
            }
        }
        gauge!(LIVE_BUCKETS).set(stats.live_buckets as f64);
        gauge!(CACHED_TARGETS).set(stats.cached_targets as f64);
        let open = stats.breaker != BreakerState::Closed;
        gauge!(BREAKER_OPEN).set(if open { 1.0 } else { 0.0 });
        counter!(TOKENS_LEASED_TOTAL).absolute(stats.leased_tokens);
        counter!(TOKENS_EXPIRED_TOTAL).absolute(stats.expired_tokens);
        counter!(EVICTED_BUCKETS_TOTAL).absolute(stats.evicted_buckets);
    }

    /// A task that [publishes](Self::publish_metrics) the limiter's figures every `period`,
    /// for exporters that serve scrapes themselves. It holds no strong reference: it ends
    /// once every clone of the limiter is dropped. Spawn it on a tokio runtime.
    ///
    /// ```no_run
    /// # use lightrate::{EmbeddedSource, Limiter, RuleSet};
    /// # use std::time::Duration;
    /// # #[tokio::main] async fn main() {
    /// let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
    /// tokio::spawn(limiter.publish_metrics_every(Duration::from_secs(5)));
    /// # }
    /// ```
    pub fn publish_metrics_every(&self, period: Duration) -> impl Future<Output = ()> + Send {
        let weak = Arc::downgrade(&self.inner);
        let period = period.max(Duration::from_millis(1));
        async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                match weak.upgrade() {
                    Some(inner) => Limiter { inner }.publish_metrics(),
                    None => return,
                }
            }
        }
    }
}
