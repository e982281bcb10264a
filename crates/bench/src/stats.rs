//! Summary statistics of benchmark samples.

use serde::{Deserialize, Serialize};

/// The median of `samples` (the mean of the two middle values for an even count), or
/// `None` for no samples.
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

/// The 90th percentile of `samples`, or `None` for no samples.
pub fn p90(samples: &[f64]) -> Option<f64> {
    percentile(samples, 90.0)
}

/// The `p`th percentile (0 to 100) of `samples`, interpolated linearly between the
/// two nearest ranks (numpy's default): rank `p / 100 * (n - 1)` of the sorted samples.
/// `None` for no samples; NaNs sort last.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = p.clamp(0.0, 100.0) / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    let frac = rank - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

/// The geometric mean of `values`, or `None` if there are none or any is not a
/// positive finite number.
pub fn geomean(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| !v.is_finite() || *v <= 0.0) {
        return None;
    }
    let mean_ln = values.iter().map(|v| v.ln()).sum::<f64>() / values.len() as f64;
    Some(mean_ln.exp())
}

/// Median, 90th percentile and range of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of samples.
    pub n: usize,
    /// The median.
    pub median: f64,
    /// The 90th percentile.
    pub p90: f64,
    /// The smallest sample.
    pub min: f64,
    /// The largest sample.
    pub max: f64,
}

impl Summary {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        Some(Summary {
            n: samples.len(),
            median: median(samples)?,
            p90: p90(samples)?,
            min: samples.iter().copied().fold(f64::INFINITY, f64::min),
            max: samples.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        })
    }

    /// The summary of `samples` in microseconds, converted to milliseconds.
    pub fn of_us_as_ms(samples_us: &[u64]) -> Option<Summary> {
        Summary::of(
            &samples_us
                .iter()
                .map(|&us| us as f64 / 1e3)
                .collect::<Vec<_>>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_count_is_the_middle_value() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    }

    #[test]
    fn median_of_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    }

    #[test]
    fn median_of_one_sample_is_that_sample() {
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(p90(&[7.0]), Some(7.0));
    }

    #[test]
    fn statistics_of_nothing_are_none() {
        assert_eq!(median(&[]), None);
        assert_eq!(p90(&[]), None);
        assert_eq!(geomean(&[]), None);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn p90_interpolates_between_ranks() {
        // 1..=10: rank 0.9 * 9 = 8.1 -> 9 + 0.1 * (10 - 9).
        let s: Vec<f64> = (1..=10).map(f64::from).collect();
        assert!((p90(&s).unwrap() - 9.1).abs() < 1e-12);
        // 0..=100: rank 90 exactly.
        let s: Vec<f64> = (0..=100).rev().map(f64::from).collect();
        assert_eq!(p90(&s), Some(90.0));
    }

    #[test]
    fn percentile_ends_are_min_and_max() {
        let s = [3.0, 9.0, 1.0];
        assert_eq!(percentile(&s, 0.0), Some(1.0));
        assert_eq!(percentile(&s, 100.0), Some(9.0));
    }

    #[test]
    fn geomean_of_ratios() {
        assert!((geomean(&[2.0, 8.0]).unwrap() - 4.0).abs() < 1e-12);
        assert!((geomean(&[1.0, 10.0, 100.0]).unwrap() - 10.0).abs() < 1e-9);
        assert!((geomean(&[3.5]).unwrap() - 3.5).abs() < 1e-12);
    }

    #[test]
    fn geomean_refuses_non_positive_values() {
        assert_eq!(geomean(&[1.0, 0.0]), None);
        assert_eq!(geomean(&[1.0, -2.0]), None);
        assert_eq!(geomean(&[f64::NAN]), None);
    }

    #[test]
    fn summary_in_ms_from_us() {
        let s = Summary::of_us_as_ms(&[1000, 3000, 2000]).unwrap();
        assert_eq!(s.n, 3);
        assert_eq!(s.median, 2.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 3.0);
    }
}
