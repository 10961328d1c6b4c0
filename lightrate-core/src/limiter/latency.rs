//! The source's latency, as the last calls measured it: a high percentile, not an average, so
//! that refill-ahead starts early enough for a slower answer than usual.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

/// How many recent calls are kept.
const SAMPLES: usize = 64;

/// The percentile read as "slow": one call in fifty is slower.
const PERCENTILE: f64 = 0.98;

/// The latencies of the last [`SAMPLES`] successful calls, in microseconds (0: no sample).
#[derive(Debug)]
pub(crate) struct Latencies {
    samples: [AtomicU32; SAMPLES],
    next: AtomicUsize,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            samples: std::array::from_fn(|_| AtomicU32::new(0)),
            next: AtomicUsize::new(0),
        }
    }
}

impl Latencies {
    /// Records one call's latency.
    pub(crate) fn record(&self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros())
            .unwrap_or(u32::MAX)
            .max(1);
        let at = self.next.fetch_add(1, Ordering::Relaxed) % SAMPLES;
        self.samples[at].store(micros, Ordering::Relaxed);
    }

    /// The 98th percentile of the recent calls (zero before the first).
    pub(crate) fn slow(&self) -> Duration {
        let mut seen: Vec<u32> = self
            .samples
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .filter(|&micros| micros > 0)
            .collect();
        if seen.is_empty() {
            return Duration::ZERO;
        }
        let at = ((seen.len() as f64 * PERCENTILE).ceil() as usize).clamp(1, seen.len()) - 1;
        let (_, slow, _) = seen.select_nth_unstable(at);
        Duration::from_micros(u64::from(*slow))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slow_answer_in_twenty_is_what_counts() {
        let l = Latencies::default();
        assert_eq!(l.slow(), Duration::ZERO);
        l.record(Duration::from_millis(20));
        assert_eq!(l.slow(), Duration::from_millis(20));
        for i in 0..200 {
            let ms = if i % 20 == 0 { 100 } else { 20 };
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.slow(), Duration::from_millis(100));
        // Once the slow answers stop, the last 64 calls forget them.
        for _ in 0..64 {
            l.record(Duration::from_millis(20));
        }
        assert_eq!(l.slow(), Duration::from_millis(20));
    }
}
