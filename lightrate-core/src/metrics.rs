//! Prometheus metrics, through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): the application installs the exporter it likes (for example
//! `metrics-exporter-prometheus`), and the limiter's figures reach it.
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `lightrate_decisions_total` | counter | `outcome`, `decided_by`, `rule` | requests decided |
//! | `lightrate_source_calls_total` | counter | `result` | calls to the token source |
//! | `lightrate_source_call_duration_seconds` | histogram | | how long each call took |
//! | `lightrate_live_buckets` | gauge | | live (user, rule) buckets |
//! | `lightrate_cached_targets` | gauge | | targets in the target → rule cache |
//! | `lightrate_breaker_open` | gauge | | 1 while the circuit breaker holds calls off |
//! | `lightrate_tokens_leased_total` | counter | | tokens leased into local buckets |
//! | `lightrate_tokens_expired_total` | counter | | leased tokens lost unspent |
//! | `lightrate_evicted_buckets_total` | counter | | buckets forgotten at the cap |
//!
//! - `outcome`: `allowed`, `denied`, `shadow_denied` (would have been denied; let through by
//!   shadow mode), `unavailable` (the source could not answer: the outage policy decided,
//!   letting the request through under `Allow`), `invalid` (no usable user identifier);
//! - `decided_by`: `local` (a local bucket, or an identifier refused in process), `source`
//!   (after a call to the source, or its failure), `denial_cache`;
//! - `rule`: the rule's id, empty when no rule is known (`unavailable`, `invalid`);
//! - `result`: `granted`, `denied`, or the error kind of a failed call (`timeout`, `network`,
//!   `unavailable`, `internal`, `decode`, `unauthorized`, ...).
//!
//! **Off the hot path.** An allowed local hit counts nothing: the limiter derives local hits
//! per rule from what it counts on the slow path (tokens put into the rule's buckets, less
//! those lost, less those held), as [`Stats::local_hits`](crate::Stats::local_hits) is, and
//! publishes them when asked: [`Limiter::publish_metrics`](crate::Limiter::publish_metrics)
//! (call it just before rendering a scrape) or
//! [`Limiter::publish_metrics_every`](crate::Limiter::publish_metrics_every) (a task, for
//! exporters that serve scrapes themselves). Counters and gauges are set at publication;
//! only the call histogram is recorded as calls end. Local hits are counted in tokens (a route
//! costing 3 counts 3), and, like every derived figure, are exact when the limiter is quiet;
//! a publication racing a lease can run a little ahead, and Prometheus counters never go back.
//! The figures are the limiter's: publish one limiter per process (every worker shares it).
//!
//! ```
//! use lightrate::{EmbeddedSource, Limiter, RuleSet};
//!
//! let limiter = Limiter::new(EmbeddedSource::new(RuleSet::demo()));
//! // With an exporter installed (e.g. metrics_exporter_prometheus::PrometheusBuilder::
//! // install_recorder), at each scrape:
//! limiter.publish_metrics();
//! // let text = handle.render();
//! ```

/// `lightrate_decisions_total{outcome, decided_by, rule}`: requests decided.
pub const DECISIONS_TOTAL: &str = "lightrate_decisions_total";
/// `lightrate_source_calls_total{result}`: calls to the token source, by result.
pub const SOURCE_CALLS_TOTAL: &str = "lightrate_source_calls_total";
/// `lightrate_source_call_duration_seconds`: a histogram of how long calls to the source took.
pub const SOURCE_CALL_DURATION: &str = "lightrate_source_call_duration_seconds";
/// `lightrate_live_buckets`: live (user, rule) buckets.
pub const LIVE_BUCKETS: &str = "lightrate_live_buckets";
/// `lightrate_cached_targets`: targets in the target → rule cache.
pub const CACHED_TARGETS: &str = "lightrate_cached_targets";
/// `lightrate_breaker_open`: 1 while the circuit breaker holds calls off (open or probing), else 0.
pub const BREAKER_OPEN: &str = "lightrate_breaker_open";
/// `lightrate_tokens_leased_total`: tokens the source granted into local buckets.
pub const TOKENS_LEASED_TOTAL: &str = "lightrate_tokens_leased_total";
/// `lightrate_tokens_expired_total`: leased tokens lost unspent (past the token horizon, or
/// with their bucket).
pub const TOKENS_EXPIRED_TOTAL: &str = "lightrate_tokens_expired_total";
/// `lightrate_evicted_buckets_total`: buckets forgotten to stay under the cap of live buckets.
pub const EVICTED_BUCKETS_TOTAL: &str = "lightrate_evicted_buckets_total";
