//! Summaries of repeated measurements: median, extremes and spread. Benchmarks report
//! the median (robust to one disturbed repetition) and the spread, so a reader sees how
//! far to trust a ratio.

use serde_json::{json, Value};

/// Median, minimum and maximum of a non-empty set of samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The samples, in the order they were taken.
    pub samples: Vec<f64>,
    /// The middle sample (mean of the two middle ones for an even count).
    pub median: f64,
    /// Smallest sample.
    pub min: f64,
    /// Largest sample.
    pub max: f64,
}

impl Summary {
    /// The summary of `samples`; `None` when there are none.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let middle = sorted.len() / 2;
        let median = if sorted.len() % 2 == 1 {
            sorted[middle]
        } else {
            (sorted[middle - 1] + sorted[middle]) / 2.0
        };
        Some(Summary {
            samples: samples.to_vec(),
            median,
            min: sorted[0],
            max: sorted[sorted.len() - 1],
        })
    }

    /// (max − min) / median: 0.05 means the samples lie within 5 % of the median's size.
    pub fn spread(&self) -> f64 {
        if self.median > 0.0 {
            (self.max - self.min) / self.median
        } else {
            0.0
        }
    }

    /// This summary's median divided by `baseline`'s (`None` when the baseline is 0).
    pub fn ratio_to(&self, baseline: &Summary) -> Option<f64> {
        (baseline.median > 0.0).then(|| self.median / baseline.median)
    }

    /// `{"samples": [...], "median": m, "min": a, "max": b, "spread": s}`.
    pub fn to_json(&self) -> Value {
        json!({
            "samples": self.samples,
            "median": self.median,
            "min": self.min,
            "max": self.max,
            "spread": self.spread(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Summary;

    #[test]
    fn median_of_odd_and_even_counts() {
        let odd = Summary::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((odd.median, odd.min, odd.max), (2.0, 1.0, 3.0));
        assert_eq!(odd.samples, vec![3.0, 1.0, 2.0], "samples keep their order");
        let even = Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(even.median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn spread_and_ratio() {
        let a = Summary::of(&[9.0, 10.0, 11.0]).unwrap();
        assert!((a.spread() - 0.2).abs() < 1e-12);
        let b = Summary::of(&[5.0]).unwrap();
        assert_eq!(b.ratio_to(&a), Some(0.5));
        let zero = Summary::of(&[0.0]).unwrap();
        assert_eq!(zero.spread(), 0.0);
        assert_eq!(a.ratio_to(&zero), None);
    }
}
