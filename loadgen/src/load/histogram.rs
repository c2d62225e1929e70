//! A latency histogram that many tasks record into at once without a lock:
//! log-linear buckets over microseconds (exact below 64 µs, then 32 buckets
//! per power of two, so a percentile is off by at most about 3 %).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

/// Values below this are their own bucket.
const LINEAR: u64 = 64;
/// Buckets per power of two above [`LINEAR`] (2^5).
const SUB_BITS: u32 = 5;
/// The largest value kept apart (about 12.7 days in µs); above it, clamped.
const MAX_VALUE: u64 = 1 << 40;
const BUCKETS: usize = bucket_of(MAX_VALUE) + 1;

const fn bucket_of(value: u64) -> usize {
    if value < LINEAR {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros();
    let mantissa = (value >> (exponent - SUB_BITS)) & ((1 << SUB_BITS) - 1);
    (LINEAR + ((exponent as u64 - 6) << SUB_BITS) + mantissa) as usize
}

/// The middle of a bucket's range, in µs.
fn value_of(bucket: usize) -> u64 {
    let bucket = bucket as u64;
    if bucket < LINEAR {
        return bucket;
    }
    let exponent = (bucket - LINEAR) / (1 << SUB_BITS) + 6;
    let mantissa = (bucket - LINEAR) % (1 << SUB_BITS);
    let width = 1_u64 << (exponent - u64::from(SUB_BITS));
    ((1 << SUB_BITS) + mantissa) * width + width / 2
}

/// Counts of values, recorded from any thread.
#[derive(Debug)]
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), max: AtomicU64::new(0) }
    }
}

impl Histogram {
    /// Records one value in µs.
    pub fn record_micros(&self, micros: u64) {
        let value = micros.min(MAX_VALUE);
        self.counts[bucket_of(value)].fetch_add(1, Ordering::Relaxed);
        self.max.fetch_max(value, Ordering::Relaxed);
    }

    /// Records one duration.
    pub fn record(&self, duration: Duration) {
        self.record_micros(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX));
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1), in µs; 0 when empty.
    pub fn quantile_micros(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64 * q).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return value_of(bucket).min(self.max.load(Ordering::Relaxed));
            }
        }
        self.max.load(Ordering::Relaxed)
    }

    /// p50, p90, p99 and max, in ms.
    pub fn summary(&self) -> Latency {
        let ms = |micros: u64| (micros as f64 / 10.0).round() / 100.0;
        Latency {
            count: self.count(),
            p50_ms: ms(self.quantile_micros(0.50)),
            p90_ms: ms(self.quantile_micros(0.90)),
            p99_ms: ms(self.quantile_micros(0.99)),
            max_ms: ms(self.max.load(Ordering::Relaxed)),
        }
    }
}

/// Percentiles of a histogram, in ms (two decimals).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// The largest value.
    pub max_ms: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_within_three_percent() {
        for value in [0, 1, 63, 64, 65, 100, 1_000, 12_345, 1_000_000, 987_654_321] {
            let back = value_of(bucket_of(value));
            let error = back.abs_diff(value) as f64 / (value.max(1) as f64);
            assert!(error <= 0.03, "{value} came back as {back}");
        }
        assert_eq!(bucket_of(MAX_VALUE), BUCKETS - 1);
    }

    #[test]
    fn quantiles() {
        let histogram = Histogram::default();
        for micros in 1..=1000 {
            histogram.record_micros(micros * 10);
        }
        let summary = histogram.summary();
        assert_eq!(summary.count, 1000);
        assert!((summary.p50_ms - 5.0).abs() < 0.2, "{summary:?}");
        assert!((summary.p99_ms - 9.9).abs() < 0.3, "{summary:?}");
        assert!((summary.max_ms - 10.0).abs() < f64::EPSILON, "{summary:?}");
        assert_eq!(Histogram::default().summary(), Latency::default());
    }
}
