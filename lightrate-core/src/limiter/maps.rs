//! The concurrent maps of the hot path (buckets, targets), built one way.

/// The hasher of the hot path's maps.
pub(super) type Hasher = foldhash::fast::RandomState;

/// A map of the hot path (buckets, targets): on `collector`, which the two share so that one
/// epoch guard serves a hit, and resized blocking, not by papaya's default increments: a
/// table left part-copied (no writes after a burst of new keys) makes every read search both
/// tables to the old one's probe limit (BENCHMARKS.md has the cost).
pub(super) fn hot_map<K: Send + 'static, V: Send + 'static>(
    collector: std::sync::Arc<seize::Collector>,
) -> papaya::HashMap<K, V, Hasher> {
    papaya::HashMap::builder()
        .hasher(Hasher::default())
        .shared_collector(collector)
        .resize_mode(papaya::ResizeMode::Blocking)
        .build()
}
