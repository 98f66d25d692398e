//! Calibration of the classifier's confidence: temperature scaling (Guo et al. 2017) on the
//! yes-vs-no logit margin z = logit_yes - logit_no, so that p = sigmoid(z / T); the expected
//! calibration error and reliability bins; the decision threshold; a reliability diagram (PNG).
//!
//! Non-finite inputs: margins that are not finite are ignored by [`fit_temperature`];
//! probabilities are clamped to [0, 1] and a NaN probability counts as 0.5 in [`ece`] and
//! [`reliability`].

use std::path::Path;

use image::{Rgb, RgbImage};
use rudder_tune::checkpoint::write_atomic;
use serde::{Deserialize, Serialize};

use crate::dataset::DatasetError;
use crate::RewardError;

/// The range [`fit_temperature`] searches.
pub const T_MIN: f64 = 0.05;
pub const T_MAX: f64 = 20.0;

/// The logistic function, without overflow for any finite or infinite `z`.
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// ln(1 + e^s), stable.
fn softplus(s: f64) -> f64 {
    s.max(0.0) + (-s.abs()).exp().ln_1p()
}

/// Mean binary negative log-likelihood of `labels` under p = sigmoid(margin / t).
pub fn nll(margins: &[f64], labels: &[bool], t: f64) -> f64 {
    let mut sum = 0.0;
    let mut n = 0usize;
    for (&z, &y) in margins.iter().zip(labels) {
        if !z.is_finite() {
            continue;
        }
        let s = z / t;
        // -log sigmoid(s) = softplus(-s); -log(1 - sigmoid(s)) = softplus(s).
        sum += if y { softplus(-s) } else { softplus(s) };
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        sum / n as f64
    }
}

/// The temperature T in [[`T_MIN`], [`T_MAX`]] that minimises the mean binary NLL of `labels`
/// under p = sigmoid(margin / T): golden-section search on log T (the NLL is convex in 1/T, so
/// unimodal in log T). Deterministic; 1.0 for empty input (no finite margin). Pairs beyond the
/// shorter of the two slices are ignored.
pub fn fit_temperature(margins: &[f64], labels: &[bool]) -> f64 {
    if !margins.iter().zip(labels).any(|(z, _)| z.is_finite()) {
        return 1.0;
    }
    let f = |log_t: f64| nll(margins, labels, log_t.exp());
    let phi = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (T_MIN.ln(), T_MAX.ln());
    let mut c = b - phi * (b - a);
    let mut d = a + phi * (b - a);
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..80 {
        if fc <= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - phi * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + phi * (b - a);
            fd = f(d);
        }
    }
    let mut best = (a + b) / 2.0;
    // The ends themselves (the search only converges towards them).
    for end in [T_MIN.ln(), T_MAX.ln()] {
        if f(end) < f(best) {
            best = end;
        }
    }
    best.exp().clamp(T_MIN, T_MAX)
}

fn clean(p: f64) -> f64 {
    if p.is_nan() {
        0.5
    } else {
        p.clamp(0.0, 1.0)
    }
}

fn bin_of(p: f64, bins: usize) -> usize {
    ((p * bins as f64).floor() as usize).min(bins - 1)
}

/// One equal-width bin of a reliability diagram.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct ReliabilityBin {
    pub lo: f64,
    pub hi: f64,
    pub count: usize,
    /// Mean predicted probability in the bin (the bin's centre when it is empty).
    pub mean_p: f64,
    /// Fraction of positives in the bin (0 when it is empty).
    pub frac_pos: f64,
}

/// `bins` equal-width bins over [0, 1] (p = 1 falls in the last), every bin listed, empty ones
/// with `count` 0. `bins` of 0 is taken as 1.
pub fn reliability(probs: &[f64], labels: &[bool], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut count = vec![0usize; bins];
    let mut sum_p = vec![0.0f64; bins];
    let mut pos = vec![0usize; bins];
    for (&p, &y) in probs.iter().zip(labels) {
        let p = clean(p);
        let b = bin_of(p, bins);
        count[b] += 1;
        sum_p[b] += p;
        pos[b] += y as usize;
    }
    (0..bins)
        .map(|b| {
            let lo = b as f64 / bins as f64;
            let hi = (b + 1) as f64 / bins as f64;
            let n = count[b];
            ReliabilityBin {
                lo,
                hi,
                count: n,
                mean_p: if n == 0 {
                    (lo + hi) / 2.0
                } else {
                    sum_p[b] / n as f64
                },
                frac_pos: if n == 0 {
                    0.0
                } else {
                    pos[b] as f64 / n as f64
                },
            }
        })
        .collect()
}

/// Expected calibration error of the positive-class probability: equal-width bins over [0, 1],
/// sum over bins of |B|/n * |mean(label) - mean(p)|. 0 for empty input.
pub fn ece(probs: &[f64], labels: &[bool], bins: usize) -> f64 {
    let rel = reliability(probs, labels, bins);
    let n: usize = rel.iter().map(|b| b.count).sum();
    if n == 0 {
        return 0.0;
    }
    rel.iter()
        .filter(|b| b.count > 0)
        .map(|b| b.count as f64 / n as f64 * (b.frac_pos - b.mean_p).abs())
        .sum()
}

/// The precision a threshold is calibrated to reach on the validation split unless asked for
/// another: the success classifier's precision target (a false "yes" ends a forward task early
/// in reset-free RL, so precision is what the threshold buys; a stricter one costs recall).
pub const DEFAULT_MIN_PRECISION: f64 = 0.97;

/// The temperature fitted on `margins` and the threshold of the calibrated probabilities that
/// reaches `min_precision` ([`fit_temperature`], then [`pick_threshold`]).
pub(crate) fn fit_calibration(margins: &[f64], labels: &[bool], min_precision: f64) -> (f64, f64) {
    let t = fit_temperature(margins, labels);
    let p: Vec<f64> = margins.iter().map(|z| sigmoid(z / t)).collect();
    (t, pick_threshold(&p, labels, min_precision))
}

/// Checks a stored temperature (0.01..=100) and threshold ([0, 1)); `path` names the file.
pub(crate) fn check_temperature_threshold(
    path: &Path,
    temperature: f64,
    threshold: f64,
) -> Result<(), RewardError> {
    if !(temperature.is_finite() && (0.01..=100.0).contains(&temperature)) {
        return Err(RewardError::field(
            path,
            "temperature",
            format!("{temperature} must be in 0.01..=100"),
        ));
    }
    if !(threshold.is_finite() && (0.0..1.0).contains(&threshold)) {
        return Err(RewardError::field(
            path,
            "threshold",
            format!("{threshold} must be in [0, 1)"),
        ));
    }
    Ok(())
}

/// The decision threshold on calibrated probabilities (say "done" when p >= t): the lowest t in
/// {0.50, 0.51, ..., 0.99} whose precision on the given (validation) data is >= `min_precision`;
/// if none reaches it, the t with the best precision (ties: the lowest t). A threshold at which
/// nothing is predicted positive has no precision and is never chosen; if that holds for every
/// t (no p >= 0.5), the answer is 0.5.
pub fn pick_threshold(probs: &[f64], labels: &[bool], min_precision: f64) -> f64 {
    let mut best: Option<(f64, f64)> = None; // (precision, t)
    for k in 50..=99u32 {
        let t = k as f64 / 100.0;
        let (mut tp, mut fp) = (0usize, 0usize);
        for (&p, &y) in probs.iter().zip(labels) {
            if !p.is_nan() && p >= t {
                if y {
                    tp += 1;
                } else {
                    fp += 1;
                }
            }
        }
        if tp + fp == 0 {
            continue;
        }
        let precision = tp as f64 / (tp + fp) as f64;
        if precision >= min_precision {
            return t;
        }
        if best.is_none_or(|(bp, _)| precision > bp) {
            best = Some((precision, t));
        }
    }
    best.map_or(0.5, |(_, t)| t)
}

const PANEL: u32 = 400;
const MARGIN: u32 = 30;

fn fill_rect(img: &mut RgbImage, x0: i64, y0: i64, x1: i64, y1: i64, c: Rgb<u8>) {
    let (w, h) = (img.width() as i64, img.height() as i64);
    for y in y0.max(0)..y1.min(h) {
        for x in x0.max(0)..x1.min(w) {
            img.put_pixel(x as u32, y as u32, c);
        }
    }
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>, dash: u32) {
    let steps = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as u32).max(1);
    for i in 0..=steps {
        if dash > 0 && (i / dash) % 2 == 1 {
            continue;
        }
        let f = i as f64 / steps as f64;
        let x = (x0 + f * (x1 - x0)).round() as i64;
        let y = (y0 + f * (y1 - y0)).round() as i64;
        fill_rect(img, x, y, x + 2, y + 2, c);
    }
}

/// Draws one panel whose plot area has its top-left corner at (ox, oy).
fn panel(img: &mut RgbImage, ox: u32, oy: u32, bins: &[ReliabilityBin], bar: Rgb<u8>) {
    let (ox, oy, s) = (ox as f64, oy as f64, PANEL as f64);
    let px = |p: f64| ox + p.clamp(0.0, 1.0) * s;
    let py = |p: f64| oy + (1.0 - p.clamp(0.0, 1.0)) * s;
    let grid = Rgb([225, 225, 225]);
    for k in 1..10 {
        let v = k as f64 / 10.0;
        line(img, (px(v), py(0.0)), (px(v), py(1.0)), grid, 0);
        line(img, (px(0.0), py(v)), (px(1.0), py(v)), grid, 0);
    }
    // Bars: the fraction of positives per bin; a gap of one pixel between bars.
    for b in bins.iter().filter(|b| b.count > 0) {
        fill_rect(
            img,
            px(b.lo) as i64 + 1,
            py(b.frac_pos) as i64,
            px(b.hi) as i64 - 1,
            py(0.0) as i64,
            bar,
        );
    }
    // The ideal: a dashed diagonal.
    line(
        img,
        (px(0.0), py(0.0)),
        (px(1.0), py(1.0)),
        Rgb([90, 90, 90]),
        6,
    );
    // Points: (mean predicted p, fraction positive) per non-empty bin.
    for b in bins.iter().filter(|b| b.count > 0) {
        let (x, y) = (px(b.mean_p) as i64, py(b.frac_pos) as i64);
        fill_rect(img, x - 4, y - 4, x + 5, y + 5, Rgb([200, 30, 30]));
    }
    // Axes and frame.
    let black = Rgb([0, 0, 0]);
    line(img, (px(0.0), py(0.0)), (px(1.0), py(0.0)), black, 0);
    line(img, (px(0.0), py(0.0)), (px(0.0), py(1.0)), black, 0);
    line(
        img,
        (px(0.0), py(1.0)),
        (px(1.0), py(1.0)),
        Rgb([160, 160, 160]),
        0,
    );
    line(
        img,
        (px(1.0), py(0.0)),
        (px(1.0), py(1.0)),
        Rgb([160, 160, 160]),
        0,
    );
    // Ticks every 0.1 below and left of the axes, longer at 0.5 and 1.
    for k in 0..=10 {
        let v = k as f64 / 10.0;
        let len = if k % 5 == 0 { 10 } else { 5 };
        let (x, y) = (px(v) as i64, py(v) as i64);
        fill_rect(img, x, py(0.0) as i64, x + 2, py(0.0) as i64 + len, black);
        fill_rect(img, px(0.0) as i64 - len, y, px(0.0) as i64, y + 2, black);
    }
}

/// A reliability diagram as PNG: two panels side by side, before calibration (left, blue bars)
/// and after (right, orange bars). In each, x is the predicted probability and y the fraction
/// of positives, both 0..1 with ticks every 0.1; bars show each bin's fraction of positives
/// over the bin's width, red squares sit at (mean p, fraction positive), the dashed diagonal is
/// perfect calibration. No text: captions belong to whoever shows the figure. Written
/// atomically.
pub fn reliability_png(
    path: &Path,
    before: &[ReliabilityBin],
    after: &[ReliabilityBin],
) -> Result<(), DatasetError> {
    let w = 3 * MARGIN + 2 * PANEL + MARGIN;
    let h = 2 * MARGIN + PANEL;
    let mut img = RgbImage::from_pixel(w, h, Rgb([255, 255, 255]));
    panel(&mut img, MARGIN, MARGIN, before, Rgb([110, 150, 215]));
    panel(
        &mut img,
        3 * MARGIN + PANEL,
        MARGIN,
        after,
        Rgb([240, 165, 80]),
    );
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(
            &mut std::io::Cursor::new(&mut bytes),
            image::ImageFormat::Png,
        )
        .map_err(|e| DatasetError::File {
            path: path.to_path_buf(),
            problem: format!("cannot encode PNG: {e}"),
        })?;
    write_atomic(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_stable_and_symmetric() {
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert!(sigmoid(f64::NEG_INFINITY) == 0.0 && sigmoid(f64::INFINITY) == 1.0);
        for z in [0.1, 1.0, 5.0, 30.0] {
            assert!((sigmoid(z) + sigmoid(-z) - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn empty_inputs() {
        assert_eq!(fit_temperature(&[], &[]), 1.0);
        assert_eq!(fit_temperature(&[f64::NAN], &[true]), 1.0);
        assert_eq!(ece(&[], &[], 10), 0.0);
        assert_eq!(reliability(&[], &[], 4).len(), 4);
        assert_eq!(pick_threshold(&[0.1, 0.2], &[true, false], 0.9), 0.5);
    }

    #[test]
    fn one_class_pushes_temperature_to_the_bound() {
        let t = fit_temperature(&[1.0, 2.0, 3.0], &[true, true, true]);
        assert!((t - T_MIN).abs() < 1e-6, "{t}");
    }

    #[test]
    fn reliability_bins_edges() {
        let r = reliability(&[0.0, 1.0, 0.25, f64::NAN], &[false, true, true, false], 4);
        assert_eq!(r[0].count, 1);
        assert_eq!(r[3].count, 1);
        assert_eq!(r[1].count, 1);
        assert_eq!(r[2].count, 1); // NaN counts as 0.5
        assert_eq!(r[1].frac_pos, 1.0);
    }
}
