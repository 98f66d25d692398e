//! How well the success classifier does: the confusion matrix and its scores, per task, suite,
//! source and split, the false-positive rate per negative kind, calibration error. The report
//! is what `rudder eval reward --json` prints.
//!
//! Empty denominators (no NaN ever reaches JSON): a score with nothing to judge counts as
//! perfect when it measures success and as zero when it measures error, i.e. "no evidence of a
//! mistake":
//! - `accuracy` with n = 0: 1.0 (its Wilson interval is then [0, 1]);
//! - `precision` with no predicted positives (tp + fp = 0): 1.0 (no false alarm was raised);
//! - `recall` with no actual positives (tp + fn = 0): 1.0 (no success was missed);
//! - `f1` = 2tp / (2tp + fp + fn), 1.0 when that denominator is 0 (no positives, none said);
//! - `false_positive_rate` with no actual negatives (fp + tn = 0): 0.0.

use std::collections::BTreeMap;

use rudder_robot::stats::wilson95;
use serde::{Deserialize, Serialize};

use crate::calibration::{ece, reliability, ReliabilityBin};
use crate::dataset::SampleMeta;

/// Bins of the ECE and reliability bins in [`report`].
pub const ECE_BINS: usize = 10;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confusion {
    pub tp: usize,
    pub fp: usize,
    pub tn: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
}

fn ratio_or(num: usize, den: usize, empty: f64) -> f64 {
    if den == 0 {
        empty
    } else {
        num as f64 / den as f64
    }
}

impl Confusion {
    /// Counts one decision: `truth` is the label, `said` the classifier's answer.
    pub fn add(&mut self, truth: bool, said: bool) {
        match (truth, said) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (false, false) => self.tn += 1,
            (true, false) => self.fn_ += 1,
        }
    }

    pub fn n(&self) -> usize {
        self.tp + self.fp + self.tn + self.fn_
    }

    pub fn accuracy(&self) -> f64 {
        ratio_or(self.tp + self.tn, self.n(), 1.0)
    }

    pub fn precision(&self) -> f64 {
        ratio_or(self.tp, self.tp + self.fp, 1.0)
    }

    pub fn recall(&self) -> f64 {
        ratio_or(self.tp, self.tp + self.fn_, 1.0)
    }

    pub fn f1(&self) -> f64 {
        ratio_or(2 * self.tp, 2 * self.tp + self.fp + self.fn_, 1.0)
    }

    pub fn false_positive_rate(&self) -> f64 {
        ratio_or(self.fp, self.fp + self.tn, 0.0)
    }
}

/// The scores of one group of samples.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Scores {
    pub n: usize,
    pub accuracy: f64,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub false_positive_rate: f64,
    pub confusion: Confusion,
    /// 95 % Wilson interval of the accuracy.
    pub accuracy_ci95: (f64, f64),
}

impl Scores {
    pub fn from_confusion(c: Confusion) -> Self {
        let [lo, hi] = wilson95(c.tp + c.tn, c.n());
        Self {
            n: c.n(),
            accuracy: c.accuracy(),
            precision: c.precision(),
            recall: c.recall(),
            f1: c.f1(),
            false_positive_rate: c.false_positive_rate(),
            confusion: c,
            accuracy_ci95: (lo, hi),
        }
    }
}

/// What `rudder eval reward --json` prints.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClassifierReport {
    pub n: usize,
    pub positives: usize,
    pub negatives: usize,
    /// At `threshold` on the calibrated probabilities.
    pub overall: Scores,
    pub per_task: BTreeMap<String, Scores>,
    pub per_suite: BTreeMap<String, Scores>,
    /// Keyed by source name (`expert`, `perturbed`, `vla`).
    pub per_source: BTreeMap<String, Scores>,
    /// Keyed by split name (`train`, `val`, `test`, `heldout_task`).
    pub per_split: BTreeMap<String, Scores>,
    /// Over negatives, per frame-kind name: (false positives, negatives of that kind, rate).
    /// Only kinds that occur are listed.
    pub per_kind_false_positive_rate: BTreeMap<String, (usize, usize, f64)>,
    /// ECE ([`ECE_BINS`] bins) of the raw probabilities sigmoid(z) and of the calibrated ones
    /// sigmoid(z / temperature).
    pub ece_raw: f64,
    pub ece_calibrated: f64,
    pub ece_bins: usize,
    pub threshold: f64,
    pub temperature: f64,
    pub reliability_raw: Vec<ReliabilityBin>,
    pub reliability_calibrated: Vec<ReliabilityBin>,
}

/// Scores `samples` given the raw and calibrated probabilities of "done" (one per sample, same
/// order); a sample is judged positive when its calibrated probability is >= `threshold`
/// (a NaN probability is judged negative). `temperature` is recorded, not applied.
///
/// Panics if the three slices differ in length (a caller's bug, not a data problem).
pub fn report(
    samples: &[&SampleMeta],
    p_raw: &[f64],
    p_cal: &[f64],
    threshold: f64,
    temperature: f64,
) -> ClassifierReport {
    assert_eq!(
        samples.len(),
        p_raw.len(),
        "report: {} samples but {} raw probabilities",
        samples.len(),
        p_raw.len()
    );
    assert_eq!(
        samples.len(),
        p_cal.len(),
        "report: {} samples but {} calibrated probabilities",
        samples.len(),
        p_cal.len()
    );
    let mut overall = Confusion::default();
    let mut per_task: BTreeMap<String, Confusion> = BTreeMap::new();
    let mut per_suite: BTreeMap<String, Confusion> = BTreeMap::new();
    let mut per_source: BTreeMap<String, Confusion> = BTreeMap::new();
    let mut per_split: BTreeMap<String, Confusion> = BTreeMap::new();
    let mut per_kind: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (s, &p) in samples.iter().zip(p_cal) {
        let said = p >= threshold; // false for NaN
        let truth = s.label;
        overall.add(truth, said);
        per_task.entry(s.task.clone()).or_default().add(truth, said);
        per_suite
            .entry(s.suite.clone())
            .or_default()
            .add(truth, said);
        per_source
            .entry(s.source.name().to_string())
            .or_default()
            .add(truth, said);
        per_split
            .entry(s.split.name().to_string())
            .or_default()
            .add(truth, said);
        if !truth {
            let e = per_kind.entry(s.kind.name().to_string()).or_default();
            e.0 += said as usize;
            e.1 += 1;
        }
    }
    let scores = |m: BTreeMap<String, Confusion>| -> BTreeMap<String, Scores> {
        m.into_iter()
            .map(|(k, c)| (k, Scores::from_confusion(c)))
            .collect()
    };
    let labels: Vec<bool> = samples.iter().map(|s| s.label).collect();
    let positives = labels.iter().filter(|&&y| y).count();
    ClassifierReport {
        n: samples.len(),
        positives,
        negatives: samples.len() - positives,
        overall: Scores::from_confusion(overall),
        per_task: scores(per_task),
        per_suite: scores(per_suite),
        per_source: scores(per_source),
        per_split: scores(per_split),
        per_kind_false_positive_rate: per_kind
            .into_iter()
            .map(|(k, (fp, n))| (k, (fp, n, fp as f64 / n as f64)))
            .collect(),
        ece_raw: ece(p_raw, &labels, ECE_BINS),
        ece_calibrated: ece(p_cal, &labels, ECE_BINS),
        ece_bins: ECE_BINS,
        threshold,
        temperature,
        reliability_raw: reliability(p_raw, &labels, ECE_BINS),
        reliability_calibrated: reliability(p_cal, &labels, ECE_BINS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_conventions_are_finite() {
        let c = Confusion::default();
        assert_eq!(c.accuracy(), 1.0);
        assert_eq!(c.precision(), 1.0);
        assert_eq!(c.recall(), 1.0);
        assert_eq!(c.f1(), 1.0);
        assert_eq!(c.false_positive_rate(), 0.0);
        let s = Scores::from_confusion(c);
        assert_eq!(s.accuracy_ci95, (0.0, 1.0));
        let all_wrong = Confusion {
            tp: 0,
            fp: 3,
            tn: 0,
            fn_: 2,
        };
        assert_eq!(all_wrong.f1(), 0.0);
        assert_eq!(all_wrong.precision(), 0.0);
    }

    #[test]
    fn fn_is_serialised_as_fn() {
        let c = Confusion {
            tp: 1,
            fp: 2,
            tn: 3,
            fn_: 4,
        };
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(j, r#"{"tp":1,"fp":2,"tn":3,"fn":4}"#);
        assert_eq!(serde_json::from_str::<Confusion>(&j).unwrap(), c);
    }
}
